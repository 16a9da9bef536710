"""video.py: reading clips (mp4 and folders of frames), one-line errors for clips that cannot be used, and the apex
finder on synthetic clips with head motion, blinks and camera noise whose apex frame is known."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

import synthetic_faces
import synthetic_video
import video
from annotations import LANDMARK_COLUMNS, NEUTRAL_LANDMARK_COLUMNS
from face_detection import LandmarkDetector
from synthetic_palsy import sample_palsy
from utils import UserError, png_made_here

# a loaded CI machine (the benchmark asks 15 frames/s of the motion pass on 2 cores; this leaves room)
MIN_FRAMES_PER_SECOND = 5.0


@pytest.fixture(scope='module')
def detector() -> LandmarkDetector:
    return LandmarkDetector(device='cpu', cache_dir=False, progress=False)


@pytest.fixture(scope='module')
def clips(tmp_path_factory) -> list[tuple[Path, dict]]:
    """Five synthetic clips per face family (192 px, 24 frames at 30 frames/s) and their rows of clips.csv."""
    found = []
    for family in synthetic_faces.FACE_FAMILIES:
        root = tmp_path_factory.mktemp(f'clips_{family}')
        table = synthetic_video.generate_clips(root, 5, 1, 192, seed=0, family=family, num_frames=24, progress=False)
        found += [(root / row['clip_path'], row) for row in table.to_dict('records')]
    return found


def write_frames(folder: Path, names_and_levels: list[tuple[str, int]], size: int = 32) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, level in names_and_levels:
        cv2.imwrite(str(folder / name), np.full((size, size, 3), level, np.uint8))


# reading clips

def test_an_mp4_round_trips_through_read_clip(tmp_path):
    frames = [np.full((48, 64, 3), (10 * i, 100, 200 - 10 * i), np.uint8) for i in range(12)]
    path = synthetic_video.write_video(tmp_path / 'clip.mp4', frames, fps=25.0)
    clip = video.read_clip(path)
    assert len(clip) == 12 and clip.fps == pytest.approx(25.0)
    assert clip.frames[0].shape == (48, 64, 3) and clip.frames[0].dtype == np.uint8
    assert np.abs(clip.frames[5].astype(float) - frames[5]).mean() < 4  # RGB order kept, only codec losses
    np.testing.assert_allclose(clip.times, np.arange(12) / 25.0)
    assert video.read_clip(path, fps=50).fps == 50 and len(video.read_clip(path, max_frames=5)) == 5
    assert video.read_clip(path, max_frames=5).truncated and not clip.truncated


def test_a_folder_of_frames_is_read_in_natural_order(tmp_path):
    write_frames(tmp_path / 'clip', [('frame10.png', 30), ('frame2.png', 20), ('frame1.png', 10),
                                      ('.hidden.png', 99)])
    (tmp_path / 'clip' / 'notes.txt').write_text('not a frame')
    clip = video.read_clip(tmp_path / 'clip')
    assert [int(f[0, 0, 0]) for f in clip.frames] == [10, 20, 30]
    assert [p.name for p in clip.frame_paths] == ['frame1.png', 'frame2.png', 'frame10.png']
    assert clip.fps == video.DEFAULT_FOLDER_FPS and video.read_clip(tmp_path / 'clip', fps=12).fps == 12
    assert video.is_clip(tmp_path / 'clip') and not video.is_clip(tmp_path / 'clip' / 'notes.txt')


def _bad_clips(folder: Path) -> dict[str, Path]:
    (folder / 'empty.mp4').write_bytes(b'')
    (folder / 'garbage.mp4').write_bytes(b'this is no video at all' * 50)
    synthetic_video.write_video(folder / 'single.mp4', [np.zeros((32, 32, 3), np.uint8)], fps=30)
    (folder / 'no_frames').mkdir()
    (folder / 'notes.txt').write_text('text')
    write_frames(folder / 'mixed_sizes', [('1.png', 0)], size=32)
    write_frames(folder / 'mixed_sizes', [('2.png', 0)], size=40)
    write_frames(folder / 'broken_frame', [('1.png', 0)])
    (folder / 'broken_frame' / '2.png').write_bytes(b'\x89PNG\r\n\x1a\n broken')
    return {'missing': folder / 'missing.mp4', 'empty': folder / 'empty.mp4', 'garbage': folder / 'garbage.mp4',
            'single': folder / 'single.mp4', 'no_frames': folder / 'no_frames', 'not_a_video': folder / 'notes.txt',
            'mixed_sizes': folder / 'mixed_sizes', 'broken_frame': folder / 'broken_frame'}


@pytest.mark.parametrize('kind, says', [('missing', 'not found'), ('empty', 'empty'), ('garbage', 'cannot be opened'),
                                        ('single', 'single frame'), ('no_frames', 'without frame images'),
                                        ('not_a_video', 'not a video'), ('mixed_sizes', 'pixels'),
                                        ('broken_frame', '2.png')])
def test_a_clip_that_cannot_be_used_is_a_one_line_error_naming_it(tmp_path, kind, says):
    path = _bad_clips(tmp_path)[kind]
    with pytest.raises(UserError) as raised:
        video.read_clip(path)
    message = str(raised.value)
    assert str(path) in message and says in message and '\n' not in message


def test_a_clip_without_a_face_is_a_one_line_error_naming_it(tmp_path, detector):
    path = synthetic_video.write_video(tmp_path / 'wall.mp4', [np.full((64, 64, 3), 120 + i, np.uint8)
                                                               for i in range(4)], fps=30)
    with pytest.raises(UserError, match='no face') as raised:
        video.find_apex(video.read_clip(path), detector)
    assert str(path) in str(raised.value) and '\n' not in str(raised.value)


# the apex finder

def test_the_apex_is_found_within_one_frame_despite_head_motion_and_blinks(clips, detector):
    hits, frames, seconds = [], 0, 0.0
    for path, row in clips:
        result = video.find_apex(video.read_clip(path), detector)
        hits.append(abs(result.apex_frame - row['apex_frame']) <= 1)
        frames += len(result.motion)
        seconds += result.motion_seconds
        assert result.rest_frame == row['rest_frame'] == 0
        assert result.apex_frame in result.peak_frames and result.peak_frames == list(
            range(result.peak_frames[0], result.peak_frames[-1] + 1))
        assert result.motion.shape == result.envelope.shape == (len(result.motion),) and result.motion[0] == 0
        assert result.measure in ('flow', 'appearance') and not result.still
        # the tracked head motion carries the rest landmarks onto the apex frame's true eyes and nose
        true_apex = np.array([row[c] for c in LANDMARK_COLUMNS], dtype=float).reshape(5, 2)
        true_rest = np.array([row[c] for c in NEUTRAL_LANDMARK_COLUMNS], dtype=float).reshape(5, 2)
        eye_distance = np.linalg.norm(true_rest[1] - true_rest[0])
        moved = np.abs(result.apex_landmarks[2] - result.rest_landmarks.points[2]).max()
        tracked = np.abs((result.apex_landmarks[2] - result.rest_landmarks.points[2])
                         - (true_apex[2] - true_rest[2])).max()
        assert tracked < 0.1 * eye_distance, f'{path}: nose moved {moved:.1f} px, tracked off by {tracked:.1f}'
    assert np.mean(hits) >= 0.9, f'apex within one frame in {sum(hits)} of {len(hits)} clips'
    assert frames / seconds >= MIN_FRAMES_PER_SECOND, f'motion pass at {frames / seconds:.1f} frames/s'


def test_a_blink_is_not_taken_for_the_apex(tmp_path, detector):
    module = synthetic_faces.family_module('a')
    rng = np.random.default_rng(11)
    identity, palsy = module.sample_identity(rng), sample_palsy(0, rng)
    plan = synthetic_video.sample_clip_plan('smile', rng, num_frames=30)
    plan = replace(plan, onset=12, apex=20, end=28, blinks=((3, 5),))  # a blink far larger than the smile
    frames, _ = synthetic_video.render_clip(identity, palsy, module.sample_photo(rng), plan, 256, noise_rng=rng)
    path = synthetic_video.write_video(tmp_path / 'blink.mp4', frames, fps=30)
    result = video.find_apex(video.read_clip(path), detector)
    assert abs(result.apex_frame - 20) <= 1
    assert max(result.motion[3:8]) > result.motion[result.apex_frame]  # the blink moved more, and was passed over


def test_the_motion_over_time_figure_is_written_with_a_grade_curve(clips, detector, tmp_path):
    path, row = clips[0]
    result = video.find_apex(video.read_clip(path), detector)
    grades = np.linspace(0, 5, len(result.motion))
    target = video.save_motion_figure(result, tmp_path / 'motion.png', grades=grades, true_apex=row['apex_frame'])
    assert target.is_file() and png_made_here(target)
    assert video.save_motion_figure(result, tmp_path / 'plain.png').is_file()
    with pytest.raises(ValueError, match='one value per frame'):
        video.save_motion_figure(result, tmp_path / 'bad.png', grades=[1, 2, 3])


def test_the_rest_frame_can_be_given(clips, detector):
    path, row = clips[1]
    clip = video.read_clip(path)
    result = video.find_apex(clip, detector, rest_frame=2)
    assert result.rest_frame == 2 and result.motion[2] == 0 and abs(result.apex_frame - row['apex_frame']) <= 1
    with pytest.raises(UserError, match='outside'):
        video.find_apex(clip, detector, rest_frame=len(clip))
