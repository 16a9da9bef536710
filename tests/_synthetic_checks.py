"""What the tests of both synthetic face families measure: a set's files, a mid-range palsy of a grade, and the
left-right difference of the crops the network reads; and the small rest / expression pairs set of the flow tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np

import prepare_dataset
import synthetic_faces as sf


def files_of(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path: equal dicts mean byte-identical sets."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


def mid_palsy(grade: int, side: str = 'left') -> sf.Palsy:
    """A palsy in the middle of the grade's severity range (no side for grade 0)."""
    low, high = sf.SEVERITY_RANGE[grade]
    return sf.Palsy(grade, side if grade else 'none', (low + high) / 2)


def crop_asymmetry(image: np.ndarray, landmarks: np.ndarray) -> float:
    """Mean |left crop - mirrored right crop| over the eye and mouth-corner crops the network reads: 28 pixels of
    a 224 face square, whose side is about 2.75 x the eye-to-mouth distance."""
    grey = image.astype(np.float32).mean(axis=2)
    eyes, mouth = landmarks[[0, 1]].mean(0), landmarks[[3, 4]].mean(0)
    half = int(round(2.75 * np.linalg.norm(mouth - eyes) * 14 / 224))

    def crop(point):
        x, y = np.round(point).astype(int)
        return grey[y - half:y + half, x - half:x + half]

    pairs = ((0, 1), (3, 4))  # eyes, mouth corners: image left vs mirrored image right
    return float(np.mean([np.abs(crop(landmarks[a]) - crop(landmarks[b])[:, ::-1]).mean() for a, b in pairs]))


def make_pairs_set(base: Path) -> tuple[Path, Path, Path]:
    """12 synthetic subjects (two per grade) x 1 rest / expression pair at 128 px under ``base``, their annotation
    CSV (split 0.5 / 0.25 / 0.25) and a landmark cache holding both photos of every pair (MTCNN runs on all 24
    while preparing). Returns ``(root, csv, cache_dir)``."""
    root, csv_path, cache_dir = base / 'FNP_pairs', base / 'pairs.csv', base / 'landmark_cache'
    prepare_dataset.main(['--dataset_type', 'synthetic', '--pairs', '--output_root', str(root), '--num_subjects',
                          '12', '--images_per_subject', '1', '--image_size', '128', '--seed', '3',
                          '--detection_check', 'all', '--cache_dir', str(cache_dir), '--device', 'cpu', '--quiet'])
    prepare_dataset.main(['--dataset_type', 'FNP', '--data_root', str(root), '--output_csv', str(csv_path),
                          '--split_ratio', '0.5', '0.25', '0.25', '--seed', '0', '--quiet'])
    return root, csv_path, cache_dir
