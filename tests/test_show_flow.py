"""show_flow.py: the flow picture and motion summary of one rest / expression pair, and its one-line errors."""
from __future__ import annotations

import json

import cv2
import pytest

import show_flow
import synthetic_faces as sf
from _data_images import palsy_pair
from utils import UserError


def test_command_line_writes_flow_panel_and_motion(tmp_path):
    pair = palsy_pair(4, 'left', sf.Expression(smile=0.9))
    rest, smile = tmp_path / 'S1_rest.jpg', tmp_path / 'S1_smile.jpg'
    cv2.imwrite(str(rest), cv2.cvtColor(pair.rest, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(smile), cv2.cvtColor(pair.expression, cv2.COLOR_RGB2BGR))
    out = tmp_path / 'flow'
    argv = ['--rest', str(rest), '--expression', str(smile), '--output_dir', str(out), '--device', 'cpu',
            '--cache_dir', str(tmp_path / 'cache')]
    report = show_flow.main(argv)
    assert {p.name for p in out.iterdir()} == {'flow.png', 'flow_panel.png', 'motion.json'}
    assert cv2.imread(str(out / 'flow_panel.png')).shape == (224, 4 * 224, 3)
    written = json.loads((out / 'motion.json').read_text())
    assert written['movement_asymmetry']['mouth'] == pytest.approx(report['movement_asymmetry']['mouth'])
    assert written['movement_asymmetry']['mouth'] > 0.3  # detected landmarks, same verdict as the true ones
    with pytest.raises(UserError, match='already exists'):
        show_flow.main(argv)
    with pytest.raises(UserError, match='missing.jpg'):
        show_flow.main(['--rest', str(tmp_path / 'missing.jpg'), '--expression', str(smile), '--output_dir',
                        str(tmp_path / 'other')])
