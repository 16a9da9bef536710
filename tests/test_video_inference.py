"""Grading clips: demo_inference.py --video grades a clip on the frames it names and writes its frame table, summary
and figure, bad clips are one line naming them, a folder run goes on past them and lists them, and
visualize_attention.py --video draws the apex."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import demo_inference as demo
import prepare_dataset
import synthetic_video
import train_facial_palsy
import utils
import video
import video_inference
import visualize_attention as va
from inference import FacialPalsyPredictor
from losses import decode_probabilities

TINY_MODEL_FLAGS = ('--dim', '16', '--heads', '1', '--block_repeats', '1', '1', '1')
GRADES = ('I', 'II', 'III', 'IV', 'V', 'VI')
FRAME_COLUMNS = ['frame', 'time_s', 'motion', 'is_rest', 'is_apex', 'is_peak', 'grades_clip', 'status', 'grade',
                 'expected_grade', *[f'p_{g}' for g in GRADES], 'ood_score']
SUMMARY_KEYS = {'clip_path', 'status', 'grade', 'grade_index', 'confidence', 'probabilities', 'graded_on',
                'graded_frames', 'rest_frame', 'apex_frame', 'rest_time_s', 'apex_time_s', 'peak_frames', 'fps',
                'num_frames', 'ood_score', 'ood_flag', 'tta', 'models', 'notes', 'outputs'}


@dataclass(frozen=True)
class ClipRun:
    clips: list[Path]   # synthetic clips whose apex the finder found (128 px, 16 frames)
    flow: Path          # a tiny flow checkpoint trained one epoch on their rest / apex pairs


@pytest.fixture(scope='module')
def run(tmp_path_factory) -> ClipRun:
    """12 synthetic clips, turned into rest / apex pairs by prepare_dataset.py --dataset_type video (the apex
    finder), and a tiny flow checkpoint trained on them."""
    base = tmp_path_factory.mktemp('video_inference')
    root, pairs = base / 'clips', base / 'pairs.csv'
    prepare_dataset.main(['--dataset_type', 'synthetic', '--video', '--output_root', str(root), '--num_subjects', '12',
                          '--images_per_subject', '1', '--image_size', '128', '--clip_frames', '16', '--seed', '3',
                          '--quiet'])
    prepare_dataset.main(['--dataset_type', 'video', '--data_root', str(root), '--output_csv', str(pairs),
                          '--split_ratio', '0.5', '0.25', '0.25', '--seed', '0', '--device', 'cpu', '--quiet'])
    frames = base / 'pairs_frames'
    train_facial_palsy.main([
        '--input_mode', 'flow', '--data_root', str(frames), '--train_csv', str(pairs), '--val_csv', str(pairs),
        '--cache_dir', str(base / 'landmark_cache'), '--save_dir', str(base / 'checkpoints'), '--log_dir',
        str(base / 'logs'), '--epochs', '1', '--batch_size', '4', '--device', 'cpu', '--augmentation', 'none',
        '--seed', '0', *TINY_MODEL_FLAGS])
    table = pd.read_csv(pairs)
    return ClipRun(clips=[root / path for path in table['clip_path']], flow=base / 'checkpoints' / 'best_model.pth')


@pytest.fixture(scope='module')
def flow_predictor(run) -> FacialPalsyPredictor:
    return FacialPalsyPredictor(run.flow, device='cpu')


def probabilities(mapping: dict) -> np.ndarray:
    return np.array([mapping[g] for g in GRADES])


def broken_clips(folder: Path, good_clip: Path) -> dict[str, Path]:
    """A video cut short, a one-frame clip (a folder holding one frame), and a clip of noise frames (no face)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = good_clip.read_bytes()
    truncated = folder / 'cut_short.mp4'
    truncated.write_bytes(data[:len(data) // 2])
    one_frame = folder / 'one_frame'
    one_frame.mkdir()
    Image.fromarray(video.read_clip(good_clip).frames[0]).save(one_frame / '0001.png')
    rng = np.random.default_rng(0)
    noise = synthetic_video.write_video(folder / 'noise.mp4', [rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
                                                               for _ in range(12)], 30.0)
    return {'truncated': truncated, 'one_frame': one_frame, 'noise': noise}


# the rule of the grade curve

def test_the_curve_grades_every_frame_of_a_short_clip_and_a_bounded_number_of_a_long_one():
    assert video_inference.curve_frames(16) == list(range(16))
    long = video_inference.curve_frames(900)
    assert len(long) == video_inference.CURVE_POINTS and long[0] == 0 and long[-1] == 899
    assert video_inference.curve_frames(10, grade_every=3) == [0, 3, 6, 9]
    assert video_inference.curve_frames(10, grade_every=0) == []
    with pytest.raises(utils.UserError, match='--grade_every -1'):
        video_inference.curve_frames(10, grade_every=-1)


# one clip

def test_a_flow_clip_is_graded_on_the_rest_and_apex_frames_it_names(run, flow_predictor, tmp_path):
    clip_path = run.clips[0]
    outputs = {'csv': tmp_path / 'frames.csv', 'json': tmp_path / 'clip.json', 'png': tmp_path / 'clip.png'}
    argv = ['--model_path', str(run.flow), '--video', str(clip_path), '--output_csv', str(outputs['csv']),
            '--output_json', str(outputs['json']), '--output_path', str(outputs['png']), '--device', 'cpu']
    returned = demo.main(argv)
    summary = json.loads(outputs['json'].read_text())
    assert SUMMARY_KEYS <= set(summary) and summary == returned['clip']
    clip = video.read_clip(clip_path)
    rest, apex = summary['rest_frame'], summary['apex_frame']
    assert summary['num_frames'] == len(clip) and summary['fps'] == pytest.approx(clip.fps)
    assert summary['apex_time_s'] == pytest.approx(apex / clip.fps, abs=1e-4) and rest != apex

    # the clip's grade is the predictor's on the two frames the summary names
    expected = flow_predictor.predict_pair(clip.frames[rest], clip.frames[apex])
    np.testing.assert_allclose(probabilities(summary['probabilities']), probabilities(expected['probabilities']),
                               atol=1e-6)
    assert summary['grade'] == expected['grade'] and summary['graded_frames'] == [apex]
    assert summary['confidence'] == pytest.approx(summary['probabilities'][summary['grade']])

    table = pd.read_csv(outputs['csv'])
    assert list(table.columns) == FRAME_COLUMNS and table['frame'].tolist() == list(range(len(clip)))
    np.testing.assert_allclose(table['time_s'], np.arange(len(clip)) / clip.fps, atol=1e-4)
    assert table.index[table['is_rest']].tolist() == [rest] and table.index[table['is_apex']].tolist() == [apex]
    assert table.index[table['grades_clip']].tolist() == [apex]
    assert set(table.index[table['is_peak']]) == set(summary['peak_frames'])
    # a 16-frame clip is graded frame by frame for the curve; each row's expected grade is its probabilities'
    p = table[[f'p_{g}' for g in GRADES]].to_numpy()
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p[apex], probabilities(summary['probabilities']), atol=1e-6)
    np.testing.assert_allclose(table['expected_grade'], p @ np.arange(6), atol=1e-3)
    assert utils.png_made_here(outputs['png'])
    with Image.open(outputs['png']) as image:
        assert image.width > 2 * image.height

    # its own outputs are refreshed without --overwrite; with --grade_every 0 only the grading frame has numbers
    demo.main([*argv, '--grade_every', '0', '--no_overlay'])
    table = pd.read_csv(outputs['csv'])
    assert table.index[table['p_I'].notna()].tolist() == [apex]


def test_a_photo_checkpoint_grades_the_apex_frame_or_the_mean_of_the_peak_frames(run, tiny_checkpoint, tmp_path):
    clip_path = Path(shutil.copy(run.clips[1], tmp_path / 'P007_clip.mp4'))
    returned = demo.main(['--model_path', str(tiny_checkpoint.path), '--video', str(clip_path), '--grade_frames',
                          'apex', '--grade_every', '0', '--device', 'cpu'])
    # the outputs go beside the clip, named after it
    written = {kind: tmp_path / f'P007_clip{suffix}' for kind, suffix in video_inference.OUTPUT_SUFFIXES.items()}
    assert all(path.is_file() for path in written.values())
    summary = json.loads(written['json'].read_text())
    assert summary['graded_on'] == 'the apex frame' and summary['graded_frames'] == [summary['apex_frame']]
    predictor = FacialPalsyPredictor(tiny_checkpoint.path, device='cpu')
    clip = video.read_clip(clip_path)
    apex_frame = predictor.predict(clip.frames[summary['apex_frame']])
    np.testing.assert_allclose(probabilities(summary['probabilities']), probabilities(apex_frame['probabilities']),
                               atol=1e-6)
    assert returned['results'][0]['grade'] == apex_frame['grade']

    # several peak frames: their probabilities averaged, then read with the checkpoint's rule
    apex = video.find_apex(clip, predictor.detector)
    top = apex.apex_frame
    peak = [f for f in (top - 2, top, top + 1) if 0 <= f < len(clip) and f != apex.rest_frame]
    graded = video_inference.grade_clip(predictor, clip, replace(apex, peak_frames=peak), grade_every=0)
    alone = np.array([probabilities(r['probabilities']) for r in predictor.predict_batch([clip.frames[f]
                                                                                          for f in peak])])
    mean = alone.mean(axis=0)
    np.testing.assert_allclose(probabilities(graded.result['probabilities']), mean, atol=1e-6)
    assert graded.result['grade_index'] == decode_probabilities(mean[None], predictor.prediction)[0]
    assert graded.grading_frames == peak and sorted(graded.frames) == peak
    assert graded.result['confidence'] == pytest.approx(mean[graded.result['grade_index']])


def test_a_bad_clip_is_one_line_naming_it(run, tmp_path, capsys):
    bad = broken_clips(tmp_path / 'bad', run.clips[0])
    bad['empty'] = tmp_path / 'bad' / 'empty.mov'
    bad['empty'].write_bytes(b'')
    for kind, path in bad.items():
        out = tmp_path / kind
        with pytest.raises(SystemExit) as stopped:
            utils.run_cli(demo.main, ['--model_path', str(run.flow), '--video', str(path), '--output_csv',
                                      str(out / 'f.csv'), '--output_json', str(out / 'f.json'), '--device', 'cpu'])
        err = capsys.readouterr().err.strip()
        assert stopped.value.code == 2, kind
        assert err.startswith(f'error: {path}') and '\n' not in err, (kind, err)
        assert not (out / 'f.csv').exists() and not (out / 'f.json').exists()
    # misplaced flags are refused before any work
    with pytest.raises(utils.UserError, match='--output_json goes with --video'):
        demo.main(['--model_path', str(run.flow), '--image_path', str(run.clips[0]), '--output_json', 'x.json'])


# a folder of clips

def test_a_folder_run_goes_on_past_bad_clips_and_lists_them(run, tmp_path, capsys):
    folder = tmp_path / 'clips'
    bad = broken_clips(folder, run.clips[0])
    good = [Path(shutil.copy(path, folder / path.name)) for path in run.clips[:2]]
    (folder / 'notes.txt').write_text('not a clip\n')
    output_dir = tmp_path / 'graded'
    result = demo.main(['--model_path', str(run.flow), '--video_dir', str(folder), '--output_dir', str(output_dir),
                        '--device', 'cpu'])
    table = pd.read_csv(output_dir / 'clips.csv', keep_default_na=False).set_index('clip_path')
    assert sorted(table.index) == sorted(str(p) for p in [*good, *bad.values()])
    assert table.loc[str(bad['truncated']), 'status'] == 'unreadable'
    assert table.loc[str(bad['one_frame']), 'status'] == 'unreadable'
    assert table.loc[str(bad['noise']), 'status'] == 'no_face'
    for path in bad.values():
        assert table.loc[str(path), 'error'].startswith(str(path)) and table.loc[str(path), 'grade'] == ''
    for path in good:
        row = table.loc[str(path)]
        assert row['status'] in ('ok', 'no_face_fallback') and row['error'] == ''
        summary = json.loads((output_dir / f'{path.stem}_grade.json').read_text())
        assert summary['grade'] == row['grade'] and summary['apex_frame'] == int(row['apex_frame'])
        assert (output_dir / f'{path.stem}_frames.csv').is_file()
        assert utils.png_made_here(output_dir / f'{path.stem}_prediction.png')
    assert not any(output_dir.glob('noise*')) and result['counts']['unreadable'] == 2
    out = capsys.readouterr().out
    assert 'ok 2' in out or 'no_face_fallback' in out
    assert 'notes.txt' in out  # not a clip: named, not graded

    # a file of the user's where a clip's output would go is refused before any grading
    (output_dir / f'{good[0].stem}_grade.json').write_text('{"mine": true}\n')
    with pytest.raises(utils.UserError, match='was not written by this script'):
        demo.main(['--model_path', str(run.flow), '--video_dir', str(folder), '--output_dir', str(output_dir),
                   '--device', 'cpu'])


# the attention viewer

def test_the_attention_of_a_clip_is_drawn_on_its_apex(run, flow_predictor, tiny_checkpoint, tmp_path):
    clip_path = run.clips[0]
    stem = clip_path.stem
    for checkpoint, pair in ((run.flow, True), (tiny_checkpoint.path, False)):
        output_dir = tmp_path / ('flow' if pair else 'regions')
        result = va.main(['--model_path', str(checkpoint), '--video', str(clip_path), '--output_dir',
                          str(output_dir), '--device', 'cpu'])
        names = {path.name for path in result['outputs'][str(clip_path)]}
        assert names == {f'{stem}_level{i}.png' for i in range(3)} | {f'{stem}_summary.png', f'{stem}_motion.png',
                                                                       f'{stem}_attention.npz'}
        assert all(utils.png_made_here(output_dir / name) for name in names if name.endswith('.png'))
        with np.load(output_dir / f'{stem}_attention.npz') as arrays:
            assert ('rest_to_photo' in arrays.files) == pair
        apex, analysis = result['apex'], result['analyses'][str(clip_path)]
        if pair:  # the maps belong to the pair the clip is graded on (the viewer runs MTCNN on one frame at a
            # time, the predictor on both at once: the landmarks, and so the grade, agree to rounding)
            clip = video.read_clip(clip_path)
            expected = flow_predictor.predict_pair(clip.frames[apex.rest_frame], clip.frames[apex.apex_frame])
            np.testing.assert_allclose(probabilities(analysis['probabilities']),
                                       probabilities(expected['probabilities']), atol=1e-3)
