"""Shared fixtures: one small synthetic palsy dataset per test session, and a tiny checkpoint trained on it.

Generating faces and running MTCNN over them is the slow part of the data tests, so it happens once per session;
the landmark cache in ``cache_dir`` makes every later dataset build over these photos read the cache instead.
Any test file may use them::

    def test_something(synthetic_dataset, tiny_checkpoint):
        dataset = FacialPalsyDataset(synthetic_dataset.root, synthetic_dataset.csv, split='test',
                                     cache_dir=synthetic_dataset.cache_dir)
        trained = checkpoints.load_trained(tiny_checkpoint.path)
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault('MPLBACKEND', 'Agg')

# a network small enough to train in about a second on a busy CPU
TINY_MODEL_FLAGS = ('--dim', '16', '--heads', '1', '--block_repeats', '1', '1', '1')
NUM_SUBJECTS = 18  # three per grade: one each for train, val and test
IMAGES_PER_SUBJECT = 2
SYNTHETIC_IMAGE_SIZE = 128
SEED = 0


@dataclass(frozen=True)
class SyntheticData:
    root: Path            # data_root: grade_0 .. grade_5 folders of JPEG faces
    csv: Path             # annotation CSV (image_path, grade, side, split, subject, landmark columns)
    cache_dir: Path       # landmark cache, already filled for every photo
    num_subjects: int
    images_per_subject: int
    tiny_flags: tuple[str, ...] = TINY_MODEL_FLAGS


@dataclass(frozen=True)
class TinyCheckpoint:
    path: Path            # best_model.pth
    save_dir: Path        # best_model.pth, last.pth
    log_dir: Path         # summary.csv, training_history.json, args.yaml, training_curves.png, test_metrics.json
    results: dict         # what train_facial_palsy.main returned


@pytest.fixture(scope='session')
def synthetic_dataset(tmp_path_factory) -> SyntheticData:
    """18 synthetic subjects x 2 photos (three subjects per grade), split by subject into train / val / test by
    ``prepare_dataset.py``, with the landmarks of every photo detected once and cached."""
    import prepare_dataset
    from facial_palsy_dataset import FacialPalsyDataset

    base = tmp_path_factory.mktemp('synthetic_palsy')
    root, csv_path, cache_dir = base / 'faces', base / 'annotation.csv', base / 'landmark_cache'
    prepare_dataset.main(['--dataset_type', 'synthetic', '--output_root', str(root), '--num_subjects',
                          str(NUM_SUBJECTS), '--images_per_subject', str(IMAGES_PER_SUBJECT), '--seed', str(SEED),
                          '--image_size', str(SYNTHETIC_IMAGE_SIZE), '--detection_check', 'all',
                          '--cache_dir', str(cache_dir), '--device', 'cpu', '--quiet'])
    prepare_dataset.main(['--dataset_type', 'FNP', '--data_root', str(root), '--output_csv', str(csv_path),
                          '--split_ratio', '0.4', '0.3', '0.3', '--seed', str(SEED), '--quiet'])
    FacialPalsyDataset(root, csv_path, split='all', cache_dir=cache_dir, verbose=False)  # reads (or fills) the cache
    return SyntheticData(root=root, csv=csv_path, cache_dir=cache_dir, num_subjects=NUM_SUBJECTS,
                         images_per_subject=IMAGES_PER_SUBJECT)


@pytest.fixture(scope='session')
def tiny_checkpoint(synthetic_dataset, tmp_path_factory) -> TinyCheckpoint:
    """A tiny HTNet trained for 2 epochs on ``synthetic_dataset`` by ``train_facial_palsy.main`` (test split
    scored, ``epoch_1.pth`` and ``epoch_2.pth`` kept; cross-entropy, no mirroring, no augmentation: plain argmax
    grades), for the training, evaluation, inference and attention tests. Treat its folders as read-only: other
    tests share them."""
    import train_facial_palsy

    base = tmp_path_factory.mktemp('tiny_checkpoint')
    save_dir, log_dir = base / 'checkpoints', base / 'logs'
    results = train_facial_palsy.main([
        '--data_root', str(synthetic_dataset.root), '--train_csv', str(synthetic_dataset.csv),
        '--val_csv', str(synthetic_dataset.csv), '--test_csv', str(synthetic_dataset.csv),
        '--cache_dir', str(synthetic_dataset.cache_dir), '--save_dir', str(save_dir), '--log_dir', str(log_dir),
        '--epochs', '2', '--batch_size', '8', '--learning_rate', '2e-3', '--device', 'cpu', '--seed', str(SEED),
        '--augmentation', 'none', '--loss', 'ce', '--no-flip_swap_side', '--save_interval', '1', *TINY_MODEL_FLAGS])
    return TinyCheckpoint(path=save_dir / 'best_model.pth', save_dir=save_dir, log_dir=log_dir, results=results)


def file_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by path relative to it: equal before and after means nothing in
    the folder was lost or changed."""
    folder = Path(folder)
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob('*')) if path.is_file()}


@pytest.fixture
def tree_hashes():
    """``file_hashes`` for tests that check an earlier run survived."""
    return file_hashes
