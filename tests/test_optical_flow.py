"""optical_flow.py, the flow maths on arrays: zero flow between identical frames, the right sign and size for a
known shift, alignment that removes head movement, the fixed encoding, motion per box and its asymmetry; and no
dependence on the dataset module."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import optical_flow as of
from _data_images import FLOW_POINTS as POINTS, textured_photo
from utils import UserError


def grey(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def test_identical_frames_give_zero_flow_and_strain():
    photo = textured_photo(224, seed=2)
    flow = of.dense_flow(grey(photo), grey(photo))
    assert flow.shape == (224, 224, 2) and np.abs(flow).max() < 1e-4
    encoded = of.flow_between(photo, photo.copy())
    assert (encoded[..., :2] == 128).all() and (encoded[..., 2] == 0).all()


@pytest.mark.parametrize('dx, dy', [(3, 0), (0, -2)])
def test_known_shift_gives_flow_of_that_size_and_sign(dx, dy):
    photo = textured_photo(224)
    moved = cv2.warpAffine(photo, np.float32([[1, 0, dx], [0, 1, dy]]), (224, 224), borderMode=cv2.BORDER_REFLECT)
    flow = of.dense_flow(grey(photo), grey(moved))
    inner = (slice(40, -40), slice(40, -40))
    assert np.median(flow[inner][..., 0]) == pytest.approx(dx, abs=0.3)
    assert np.median(flow[inner][..., 1]) == pytest.approx(dy, abs=0.3)
    assert np.median(of.optical_strain(flow)[inner]) < 0.05  # a rigid shift does not deform the skin


def test_similarity_transform_recovers_rotation_scale_and_shift():
    matrix = cv2.getRotationMatrix2D((40.0, 60.0), -12.0, 0.9)
    matrix[:, 2] += (7.0, -3.0)
    source = POINTS[:3].astype(np.float64)
    target = source @ matrix[:, :2].T + matrix[:, 2]
    np.testing.assert_allclose(of.similarity_transform(source, target), matrix, atol=1e-9)
    with pytest.raises(UserError, match='coincide'):
        of.similarity_transform(np.ones((3, 2)), target)


def test_align_to_rest_undoes_a_head_turn():
    photo = textured_photo(seed=1)
    matrix = cv2.getRotationMatrix2D((128.0, 128.0), 4.0, 1.05)
    moved = cv2.warpAffine(photo, matrix, (256, 256), borderMode=cv2.BORDER_REFLECT)
    moved_points = POINTS @ matrix[:, :2].T.astype(np.float32) + matrix[:, 2].astype(np.float32)
    back = of.align_to_rest(moved, moved_points, POINTS, photo.shape[:2])
    inner = (slice(60, -60), slice(60, -60))
    assert np.abs(back[inner].astype(int) - photo[inner]).mean() < 3
    assert np.abs(moved[inner].astype(int) - photo[inner]).mean() > 10
    with pytest.raises(UserError, match='NaN'):
        of.align_to_rest(moved, np.full((5, 2), np.nan), POINTS, photo.shape[:2])


def test_encoding_clips_and_round_trips():
    flow = np.zeros((224, 224, 2), np.float32)
    flow[0, 0] = (100.0, -100.0)
    flow[1, 1] = (2.0, -3.0)
    strain = np.zeros((224, 224), np.float32)
    strain[0, 0] = 50.0
    encoded = of.encode_flow(flow, strain)
    assert tuple(encoded[0, 0]) == (255, 1, 255) and tuple(encoded[5, 5]) == (128, 128, 0)
    decoded, _ = of.decode_flow(encoded)
    np.testing.assert_allclose(decoded[1, 1], (2.0, -3.0), atol=of.FLOW_SETTINGS['max_flow'] / 254 + 1e-6)


def test_box_motion_and_movement_asymmetry():
    flow = np.zeros((224, 224, 2), np.float32)
    flow[:, :112, 0] = 4.0  # the image-left half moves 4 px to the right, the other half stays
    encoded = of.encode_flow(flow, np.zeros((224, 224), np.float32))
    left, right = of.box_motion(encoded, np.array([[0, 0, 50, 50], [150, 0, 200, 50]]))
    assert left == pytest.approx(4.0, abs=0.1) and right == 0.0
    assert of.movement_asymmetry(left, right, 224) == pytest.approx(1.0)
    assert of.movement_asymmetry(right, left, 224) == pytest.approx(-1.0)
    assert of.movement_asymmetry(0.1, 0.0, 224) == pytest.approx(0.2)  # below min_motion: noise, not asymmetry


def test_optical_flow_does_not_import_the_dataset_module():
    code = 'import optical_flow, sys; assert "facial_palsy_dataset" not in sys.modules'
    subprocess.run([sys.executable, '-c', code], check=True, cwd=Path(of.__file__).parent)
