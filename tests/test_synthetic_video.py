"""synthetic_video.py: the timing of a clip (rest -> expression -> rest, blinks clear of the apex), head motion, the
affected side moving less, and the clips and clips.csv it writes (mp4 that read_clip reads back)."""
from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

import synthetic_faces
import synthetic_video
import video
from synthetic_palsy import Expression, Palsy
from utils import UserError


@pytest.mark.parametrize('expression', synthetic_video.CLIP_EXPRESSIONS)
@pytest.mark.parametrize('num_frames', [synthetic_video.MIN_CLIP_FRAMES, 24, 40])
def test_a_clip_goes_from_rest_to_its_apex_and_back(expression, num_frames):
    for seed in range(6):
        plan = synthetic_video.sample_clip_plan(expression, np.random.default_rng(seed), num_frames)
        movement = plan.movement()
        assert 0 < plan.onset < plan.apex < plan.end <= num_frames - 1
        assert movement[plan.apex] == pytest.approx(1.0) and np.all(movement[:plan.onset + 1] == 0)
        assert movement[plan.end] == pytest.approx(0.0, abs=1e-9) and np.argmax(movement) == plan.apex
        assert np.all(np.diff(movement[:plan.apex + 1]) >= 0) and np.all(np.diff(movement[plan.apex:]) <= 0)
        assert 0.6 <= plan.effort <= 1.0
        clearance = math.ceil(synthetic_video.TIMING_SECONDS['blink_clearance'] * plan.fps)
        start = math.ceil(synthetic_video.TIMING_SECONDS['start_clearance'] * plan.fps)
        for frame in plan.blink_frames():
            assert frame >= start and abs(frame - plan.apex) > clearance - 1
        blink = plan.blink()
        assert blink.max() <= 1 and (blink > 0).sum() == len(plan.blink_frames())


def test_the_head_drifts_within_its_bounds_from_the_first_frame():
    motion = synthetic_video.HEAD_MOTION
    drifts = []
    for seed in range(10):
        head = synthetic_video.sample_clip_plan('smile', np.random.default_rng(seed), 32).head
        assert head.shape == (32, 6)
        np.testing.assert_allclose(head[0], [0, 0, 0, 1, 0, 0])
        assert np.abs(head[:, :2]).max() <= motion['shift'] + 5 * motion['shake']
        assert np.abs(head[:, 2]).max() <= motion['rotation'] and np.abs(head[:, 3] - 1).max() <= motion['scale']
        assert np.abs(head[:, 4]).max() <= motion['yaw'] and np.abs(head[:, 5]).max() <= motion['pitch']
        drifts.append(np.abs(head[-1, :3]).max())
    assert max(drifts) > 0  # the head does move


def test_a_clip_is_too_short_below_the_minimum_and_must_film_a_movement():
    with pytest.raises(UserError, match='at least'):
        synthetic_video.sample_clip_plan('smile', np.random.default_rng(0), synthetic_video.MIN_CLIP_FRAMES - 1)
    with pytest.raises(ValueError, match='rest'):
        synthetic_video.sample_clip_plan('rest', np.random.default_rng(0))


@pytest.mark.parametrize('family', synthetic_faces.FACE_FAMILIES)
def test_move_head_shifts_turns_and_scales_the_face(family):
    module = synthetic_faces.family_module(family)
    identity = module.sample_identity(np.random.default_rng(4))
    palsy = Palsy(0, 'none', 0.0)
    photo = module.frontal_photo(Expression())
    size = 200

    def points(moved):
        return synthetic_faces.render_face(identity, palsy, moved, size)[1].astype(float)

    def eye_line(p):
        return math.degrees(math.atan2(p[1, 1] - p[0, 1], p[1, 0] - p[0, 0])), np.linalg.norm(p[1] - p[0])

    before = points(photo)
    shifted = points(synthetic_faces.move_head(photo, shift=(0.05, -0.03)))
    np.testing.assert_allclose(shifted - before, np.tile([0.05 * size, -0.03 * size], (5, 1)), atol=0.5)
    angle, distance = eye_line(before)
    turned_angle, _ = eye_line(points(synthetic_faces.move_head(photo, rotation=8.0)))
    assert turned_angle - angle == pytest.approx(-8.0, abs=1.0)  # counter-clockwise on screen: y points down
    _, scaled_distance = eye_line(points(synthetic_faces.move_head(photo, scale=1.1)))
    assert scaled_distance / distance == pytest.approx(1.1, abs=0.02)
    assert synthetic_faces.move_head(photo) == photo
    with pytest.raises(TypeError):
        synthetic_faces.move_head(object())


@pytest.mark.parametrize('family', synthetic_faces.FACE_FAMILIES)
def test_the_affected_side_moves_less_in_a_smile(family):
    module = synthetic_faces.family_module(family)
    identity = module.sample_identity(np.random.default_rng(8))
    plan = synthetic_video.sample_clip_plan('smile', np.random.default_rng(8), 16)
    plan = replace(plan, head=np.tile([0.0, 0, 0, 1, 0, 0], (16, 1)), blinks=())
    photo = module.frontal_photo(Expression())
    for side, affected in (('left', 4), ('right', 3)):  # the patient's left is the image right (mouth_r)
        _, landmarks = synthetic_video.render_clip(identity, Palsy(5, side, 1.0), photo, plan, 160)
        travel = np.linalg.norm(landmarks[plan.apex] - landmarks[0], axis=1)
        healthy = 7 - affected
        assert travel[healthy] > 1.0 and travel[affected] < 0.3 * travel[healthy]


def test_frames_are_drawn_with_blinks_noise_and_the_resting_expression():
    module = synthetic_faces.family_module('a')
    rng = np.random.default_rng(2)
    identity, photo = module.sample_identity(rng), module.sample_photo(rng)
    plan = synthetic_video.sample_clip_plan('brow_raise', rng, 32)
    started = time.perf_counter()
    frames, landmarks = synthetic_video.render_clip(identity, Palsy(0, 'none', 0.0), photo, plan, 256,
                                                    noise_rng=np.random.default_rng(0))
    assert time.perf_counter() - started < 4.0  # ~0.6 s on one free core
    assert len(frames) == 32 and frames[0].shape == (256, 256, 3) and frames[0].dtype == np.uint8
    assert landmarks.shape == (32, 5, 2)
    assert not np.array_equal(frames[0], frames[1])  # fresh camera noise (and drift) in every frame
    rest = Expression(smile=0.1)
    shut = synthetic_video.frame_expression(rest, plan, movement=0.0, blink=1.0)
    assert shut.eye_closure == 1.0 and shut.smile == 0.1 and shut.brow_raise == 0.0
    peak = synthetic_video.frame_expression(rest, plan, movement=1.0, blink=0.0)
    assert peak.brow_raise == pytest.approx(plan.effort) and peak.smile == 0.1


def test_generate_clips_writes_grade_folders_clips_csv_and_mp4_that_read_back(tmp_path):
    root = tmp_path / 'clips'
    table = synthetic_video.generate_clips(root, 6, 2, 96, seed=5, family='b', num_frames=12, progress=False)
    assert len(table) == 12 and sorted(table['grade'].unique()) == list(range(6))
    assert list(table.columns[:8]) == ['clip_path', 'grade', 'side', 'subject', 'expression', 'apex_frame',
                                       'rest_frame', 'fps']
    assert table['subject'].str.startswith('synb').all() and (table['rest_frame'] == 0).all()
    assert table['clip_path'].str.fullmatch(r'grade_[0-5]/synb\d{4}_0[12]_(brow_raise|eye_closure|smile)\.mp4').all()
    assert ((table['apex_frame'] > 0) & (table['apex_frame'] < 12)).all()
    written = pd.read_csv(root / synthetic_video.CLIP_TABLE)
    assert list(written.columns) == list(table.columns)
    numbers = ['grade', 'apex_frame', 'rest_frame', 'num_frames', 'onset_frame', 'end_frame']
    pd.testing.assert_frame_equal(written[['clip_path', *numbers]], table[['clip_path', *numbers]])
    for row in table.head(3).to_dict('records'):
        clip = video.read_clip(root / row['clip_path'])
        assert len(clip) == row['num_frames'] == 12 and clip.fps == 30 and clip.frames[0].shape == (96, 96, 3)
    manifest = synthetic_video.read_manifest(root)
    assert manifest['family'] == 'b' and sorted(manifest['files']) == sorted(table['clip_path'])
    assert 'python prepare_dataset.py --dataset_type synthetic --video --family b' in (root / 'README.md').read_text()

    again = synthetic_video.generate_clips(tmp_path / 'again', 6, 1, 96, seed=5, family='b', num_frames=12,
                                           progress=False)  # the same seed: the same subjects, and first clips
    pd.testing.assert_frame_equal(again, table[table['clip_path'].str.contains('_01_')].reset_index(drop=True))

    (root / 'grade_0' / 'mine.mp4').write_bytes(b'a user file')
    assert synthetic_video.remove_generated_files(root) == 12
    assert (root / 'grade_0' / 'mine.mp4').is_file() and not any((root / 'grade_1').glob('*'))
