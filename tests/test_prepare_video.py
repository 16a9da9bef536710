"""prepare_dataset.py --dataset_type video (clips -> rest / apex pairs), --dataset_type synthetic --video and CK+
--apex auto: the pairs CSV and its frames, clips that cannot be used named and listed while the run goes on, and
one epoch of --input_mode flow training on the result."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

import prepare_dataset
import synthetic_video
import train_facial_palsy
import video
from annotations import SPLITS
from utils import UserError

TINY_MODEL_FLAGS = ['--dim', '16', '--heads', '1', '--block_repeats', '1', '1', '1']
PAIR_COLUMNS = ['image_path', 'neutral_path', 'grade', 'side', 'subject', 'split', 'rest_frame', 'apex_frame']
BROKEN = {'grade_2/S901_01_smile.mp4': 'cannot be opened', 'grade_3/S902_01_smile.mp4': 'single frame'}


@dataclass(frozen=True)
class ClipData:
    root: Path            # grade_N/*.mp4 (and one folder of frames), clips.csv
    csv: Path             # the pairs CSV prepared with the clips (--dataset_type synthetic --video --output_csv)
    frames: Path          # its frames: the --data_root of training
    base: Path


@pytest.fixture(scope='module')
def clip_data(tmp_path_factory) -> ClipData:
    """12 synthetic clips (two subjects per grade, 128 px, 14 frames) drawn and turned into pairs in one command."""
    base = tmp_path_factory.mktemp('video_pairs')
    root, csv = base / 'clips', base / 'pairs.csv'
    prepare_dataset.main(['--dataset_type', 'synthetic', '--video', '--output_root', str(root), '--output_csv',
                          str(csv), '--num_subjects', '12', '--images_per_subject', '1', '--image_size', '128',
                          '--clip_frames', '14', '--seed', '1', '--split_ratio', '0.5', '0.25', '0.25',
                          '--device', 'cpu', '--quiet'])
    return ClipData(root=root, csv=csv, frames=base / 'pairs_frames', base=base)


def test_synthetic_clips_become_a_pairs_csv_with_frames_and_subject_disjoint_splits(clip_data):
    table = pd.read_csv(clip_data.csv)
    clips = pd.read_csv(clip_data.root / synthetic_video.CLIP_TABLE)
    assert set(PAIR_COLUMNS) <= set(table.columns) and {'clip_path', 'fps', 'peak_frames'} <= set(table.columns)
    assert len(table) >= 10 and set(table['clip_path']) <= set(clips['clip_path'])
    for row in table.to_dict('records'):
        assert (clip_data.frames / row['image_path']).is_file() and (clip_data.frames / row['neutral_path']).is_file()
        assert row['image_path'].startswith(f'grade_{row["grade"]}/')
        assert row['neutral_path'] == f'rest/grade_{row["grade"]}/{Path(row["image_path"]).stem}_rest.png'
        assert 0 <= row['rest_frame'] < row['apex_frame'] < row['num_frames']
    # the apex frame on disk is the clip's frame at apex_frame, losslessly
    row = table.iloc[0]
    clip = video.read_clip(clip_data.root / row['clip_path'])
    apex = cv2.cvtColor(cv2.imread(str(clip_data.frames / row['image_path'])), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(apex, clip.frames[row['apex_frame']])
    # sides and subjects come from clips.csv; no subject is in two splits
    truth = clips.set_index('clip_path')
    assert (table['side'].to_numpy() == truth.loc[table['clip_path'], 'side'].to_numpy()).all()
    assert table.groupby('subject')['split'].nunique().max() == 1 and set(table['split']) <= set(SPLITS)


def test_a_broken_clip_is_named_listed_and_the_run_goes_on(clip_data, tmp_path, capsys):
    root = tmp_path / 'clips'
    for clip in sorted(clip_data.root.glob('grade_[0-4]/*.mp4'))[::2]:  # a few good clips
        (root / clip.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(clip, root / clip.parent.name / clip.name)
    (root / 'grade_2' / 'S901_01_smile.mp4').write_bytes(b'not a video' * 100)
    synthetic_video.write_video(root / 'grade_3' / 'S902_01_smile.mp4', [np.zeros((64, 64, 3), np.uint8)], 30)
    # one clip as a folder of frames, as cameras and CK+ store them
    source = sorted((root / 'grade_4').glob('*.mp4'))[0]
    folder = root / 'grade_4' / f'S903_{source.stem.split("_", 1)[1]}'
    folder.mkdir()
    for index, frame in enumerate(video.read_clip(source).frames):
        cv2.imwrite(str(folder / f'frame{index + 1}.png'), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    csv = tmp_path / 'pairs.csv'
    prepare_dataset.main(['--dataset_type', 'video', '--data_root', str(root), '--output_csv', str(csv),
                          '--device', 'cpu', '--quiet'])
    out = capsys.readouterr().out
    for clip, says in BROKEN.items():
        lines = [line for line in out.splitlines() if line.startswith(f'warning: {clip}:')]
        assert len(lines) == 1 and says in lines[0]
    skipped = pd.read_csv(tmp_path / 'pairs_skipped.csv')
    assert set(BROKEN) <= set(skipped['path'])
    table = pd.read_csv(csv)
    assert not set(BROKEN) & set(table['clip_path'])
    assert f'grade_4/{folder.name}' in set(table['clip_path'])  # the folder of frames is a clip too
    assert len(table) >= 5 and (tmp_path / 'pairs_frames' / 'video_frames.json').is_file()

    # the same command again: nothing differs, so nothing needs --overwrite
    prepare_dataset.main(['--dataset_type', 'video', '--data_root', str(root), '--output_csv', str(csv),
                          '--device', 'cpu', '--quiet'])
    assert 'unchanged' in capsys.readouterr().out


def test_clips_listed_in_a_csv_and_frames_in_a_folder_of_ones_choice(clip_data, tmp_path):
    clips = pd.read_csv(clip_data.root / synthetic_video.CLIP_TABLE).head(4)
    listed = clips.rename(columns={'clip_path': 'clip'})[['clip', 'grade', 'side', 'subject']]
    listed.loc[0, 'side'] = 'right' if listed.loc[0, 'side'] == 'left' else 'left'  # the CSV's side wins
    listed.to_csv(tmp_path / 'clips.csv', index=False)
    frames = tmp_path / 'my_frames'
    table = prepare_dataset.main(['--dataset_type', 'video', '--input_csv', str(tmp_path / 'clips.csv'),
                                  '--data_root', str(clip_data.root), '--output_csv', str(tmp_path / 'out.csv'),
                                  '--frames_dir', str(frames), '--device', 'cpu', '--quiet'])
    assert table == 0
    out = pd.read_csv(tmp_path / 'out.csv').set_index('clip_path')
    assert set(out.index) <= set(listed['clip']) and len(out) >= 3
    first = listed.loc[0, 'clip']
    if first in out.index:
        assert out.loc[first, 'side'] == listed.loc[0, 'side']
    assert all((frames / p).is_file() for p in out['image_path'])


def test_a_frames_folder_of_other_files_is_refused_before_any_work(clip_data, tmp_path):
    frames = tmp_path / 'busy'
    frames.mkdir()
    (frames / 'holiday.jpg').write_bytes(b'mine')
    with pytest.raises(UserError, match='not empty') as raised:
        prepare_dataset.main(['--dataset_type', 'video', '--data_root', str(clip_data.root), '--output_csv',
                              str(tmp_path / 'out.csv'), '--frames_dir', str(frames), '--quiet'])
    assert '\n' not in str(raised.value) and (frames / 'holiday.jpg').read_bytes() == b'mine'
    with pytest.raises(UserError, match='clip column'):
        (tmp_path / 'bad.csv').write_text('photo,grade\na.mp4,1\n')
        prepare_dataset.main(['--dataset_type', 'video', '--input_csv', str(tmp_path / 'bad.csv'), '--output_csv',
                              str(tmp_path / 'out.csv'), '--quiet'])


def test_the_pairs_train_one_epoch_with_flow_input(clip_data, tmp_path):
    results = train_facial_palsy.main([
        '--input_mode', 'flow', '--data_root', str(clip_data.frames), '--train_csv', str(clip_data.csv),
        '--val_csv', str(clip_data.csv), '--cache_dir', str(tmp_path / 'cache'), '--save_dir', str(tmp_path / 'ckpt'),
        '--log_dir', str(tmp_path / 'logs'), '--epochs', '1', '--batch_size', '4', '--device', 'cpu',
        '--augmentation', 'none', '--seed', '0', *TINY_MODEL_FLAGS])
    assert results['epochs_run'] == 1 and np.isfinite(results['history'][0]['train_loss'])
    checkpoint = torch.load(tmp_path / 'ckpt' / 'best_model.pth', weights_only=True)
    assert checkpoint['preprocess']['input_mode'] == 'flow'


def test_ckplus_apex_auto_picks_the_apex_instead_of_the_last_frame(tmp_path):
    table = synthetic_video.generate_clips(tmp_path / 'source', 1, 1, 192, seed=2, num_frames=20, progress=False)
    row = table.iloc[0]
    sequence = tmp_path / 'CK+' / 'cohn-kanade-images' / 'S005' / '001'
    sequence.mkdir(parents=True)
    for index, frame in enumerate(video.read_clip(tmp_path / 'source' / row['clip_path']).frames):
        cv2.imwrite(str(sequence / f'S005_001_{index + 1:08d}.png'), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    (tmp_path / 'grades.csv').write_text('subject,grade,side\nS005,3,left\n')
    chosen = {}
    for apex in ('last', 'auto'):
        csv = tmp_path / f'ck_{apex}.csv'
        prepare_dataset.main(['--dataset_type', 'CK+', '--data_root', str(tmp_path / 'CK+'), '--grade_mapping',
                              str(tmp_path / 'grades.csv'), '--output_csv', str(csv), '--apex', apex,
                              '--device', 'cpu', '--quiet'])
        written = pd.read_csv(csv).iloc[0]
        assert written['neutral_path'].endswith('S005_001_00000001.png')
        chosen[apex] = int(Path(written['image_path']).stem.rsplit('_', 1)[1]) - 1
    assert chosen['last'] == 19
    assert abs(chosen['auto'] - row['apex_frame']) <= 1
