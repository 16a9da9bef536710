"""input_mode flow: HTNet on the optical flow between the rest and the expression photo of a synthetic pair, from
prepare_dataset.py --pairs through FacialPalsyDataset to a one-epoch training run."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import facial_palsy_dataset as fpd
import prepare_dataset
import train_facial_palsy
from utils import UserError

TINY_MODEL_FLAGS = ('--dim', '16', '--heads', '1', '--block_repeats', '1', '1', '1')


@dataclass(frozen=True)
class PairData:
    root: Path
    csv: Path
    cache_dir: Path


@pytest.fixture(scope='module')
def pairs(tmp_path_factory) -> PairData:
    """12 synthetic subjects (two per grade) x 1 rest / expression pair at 128 px; MTCNN runs on both photos of
    every pair while preparing, so the landmark cache holds all 24."""
    base = tmp_path_factory.mktemp('flow_pairs')
    root, csv_path, cache_dir = base / 'FNP_pairs', base / 'pairs.csv', base / 'landmark_cache'
    prepare_dataset.main(['--dataset_type', 'synthetic', '--pairs', '--output_root', str(root), '--num_subjects',
                          '12', '--images_per_subject', '1', '--image_size', '128', '--seed', '3',
                          '--detection_check', 'all', '--cache_dir', str(cache_dir), '--device', 'cpu', '--quiet'])
    prepare_dataset.main(['--dataset_type', 'FNP', '--data_root', str(root), '--output_csv', str(csv_path),
                          '--split_ratio', '0.5', '0.25', '0.25', '--seed', '0', '--quiet'])
    return PairData(root=root, csv=csv_path, cache_dir=cache_dir)


def flow_dataset(data: PairData, csv: Path | None = None, **kwargs) -> fpd.FacialPalsyDataset:
    kwargs.setdefault('cache_dir', data.cache_dir)
    return fpd.FacialPalsyDataset(data.root, csv or data.csv, split='all', input_mode='flow', verbose=False,
                                  **kwargs)


def test_prepared_csv_carries_the_rest_photos_and_their_landmarks(pairs):
    table = pd.read_csv(pairs.csv)
    assert len(table) == 12
    assert table['neutral_path'].str.startswith('rest/grade_').all()
    assert all((pairs.root / p).is_file() for p in table['neutral_path'])
    assert {'neutral_eye_l_x', 'neutral_mouth_r_y'} <= set(table.columns)
    assert table['neutral_eye_l_x'].notna().all()


def test_flow_items_are_normalised_56_pixel_mosaics_of_the_pair(pairs):
    dataset = flow_dataset(pairs)
    assert len(dataset) == 12 and not dataset.skipped
    assert dataset.preprocess['input_mode'] == 'flow' and dataset.preprocess['input_kind'] == 'flow'
    assert dataset.preprocess['flow']['max_flow'] > 0 and dataset.preprocess['input_size'] == 56
    image, label = dataset[0]
    assert image.shape == (3, 56, 56) and image.dtype == torch.float32 and torch.isfinite(image).all()
    assert label == dataset.labels[0]

    # the item is exactly make_flow_input of the two photos with their landmarks, as inference will call it
    rest_face, face = dataset.neutral_landmarks[0], dataset.landmarks[0]
    expected = fpd.make_flow_input(fpd.load_image(dataset.neutral_paths[0]), fpd.load_image(dataset.paths[0]),
                                   rest_face, face, dataset.preprocess)
    assert torch.equal(image, expected)
    assert torch.equal(dataset[0][0], image)  # kept in memory: the same tensor again

    # the movement is in the input: flow of a pair differs from flow of the rest photo onto itself
    rest = fpd.load_image(dataset.neutral_paths[0])
    still = fpd.make_flow_input(rest, rest, rest_face, rest_face, dataset.preprocess)
    assert (image - still).abs().max() > 0.1

    sample = dataset.get_sample(0)
    assert sample['neutral_landmarks'].shape == (5, 2) and sample['neutral_landmark_source'] in fpd.LANDMARK_SOURCES


def test_missing_or_absent_rest_photo_is_skipped_and_listed(pairs, tmp_path):
    table = pd.read_csv(pairs.csv)
    lost, absent = table.loc[0, 'image_path'], table.loc[1, 'image_path']
    table.loc[0, 'neutral_path'] = 'rest/grade_0/nobody_rest.jpg'
    table.loc[1, 'neutral_path'] = np.nan
    csv_path = tmp_path / 'broken.csv'
    table.to_csv(csv_path, index=False)
    dataset = flow_dataset(pairs, csv_path)
    assert len(dataset) == 10
    reasons = dict(dataset.skipped)
    assert 'nobody_rest.jpg: file not found' in reasons[str(pairs.root / lost)]
    assert 'no neutral_path' in reasons[str(pairs.root / absent)]
    listed = pd.read_csv(dataset.skipped_csv)
    assert set(listed['path']) == {str(pairs.root / lost), str(pairs.root / absent)}


def test_a_second_build_reads_both_photos_from_the_cache(pairs, monkeypatch):
    def refuse(self):
        raise AssertionError('MTCNN was built although every photo is cached')

    monkeypatch.setattr(fpd.LandmarkDetector, '_build_mtcnn', refuse)
    detector = fpd.LandmarkDetector(cache_dir=pairs.cache_dir, progress=False)
    dataset = flow_dataset(pairs, detector=detector)
    assert detector.mtcnn_calls == 0 and len(dataset) == 12
    # synthetic faces are found by MTCNN: the cache holds detections for the rest photos too, not fallbacks
    assert sum(face.source == 'detected' for face in dataset.neutral_landmarks) >= 10


def test_rest_landmark_columns_are_the_fallback_when_no_face_is_found(pairs, tmp_path, monkeypatch):
    class Blind:
        def detect(self, batch, landmarks=True):
            none = np.array([None] * len(batch), dtype=object)
            return none, np.array([[None]] * len(batch), dtype=object), none

    monkeypatch.setattr(fpd.LandmarkDetector, '_build_mtcnn', lambda self: Blind())
    dataset = flow_dataset(pairs, cache_dir=tmp_path / 'empty_cache')
    table = pd.read_csv(pairs.csv).set_index('image_path')
    row = table.loc[Path(dataset.paths[0]).relative_to(pairs.root).as_posix()]
    assert dataset.neutral_landmarks[0].source == 'annotation'
    expected = row[fpd.NEUTRAL_LANDMARK_COLUMNS].to_numpy(np.float32).reshape(5, 2)
    np.testing.assert_allclose(dataset.neutral_landmarks[0].points, expected)


def test_flow_takes_no_transform_and_single_photo_inputs_are_refused(pairs):
    def transform(image, landmarks):
        raise AssertionError('a transform was applied to a flow input')

    dataset = flow_dataset(pairs, transform=transform)
    plain = flow_dataset(pairs)
    assert torch.equal(dataset[1][0], plain[1][0])
    preprocess = dataset.preprocess
    with pytest.raises(UserError, match='rest and an expression photo'):
        fpd.make_input(np.zeros((64, 64, 3), np.uint8), fpd.template_landmarks(64, 64), preprocess)
    with pytest.raises(UserError, match='input_mode'):
        fpd.default_preprocess('motion')


def test_one_epoch_of_training_on_flow(pairs, tmp_path):
    save_dir, log_dir = tmp_path / 'checkpoints', tmp_path / 'logs'
    results = train_facial_palsy.main([
        '--input_mode', 'flow', '--data_root', str(pairs.root), '--train_csv', str(pairs.csv),
        '--val_csv', str(pairs.csv), '--cache_dir', str(pairs.cache_dir),
        '--save_dir', str(save_dir), '--log_dir', str(log_dir), '--epochs', '1', '--batch_size', '4',
        '--device', 'cpu', '--augmentation', 'none', '--seed', '0', *TINY_MODEL_FLAGS])
    assert results['epochs_run'] == 1
    assert np.isfinite(results['history'][0]['train_loss'])
    checkpoint = torch.load(save_dir / 'best_model.pth', weights_only=True)
    assert checkpoint['preprocess']['input_mode'] == 'flow'
    assert checkpoint['preprocess']['flow']['method'] == 'farneback'
