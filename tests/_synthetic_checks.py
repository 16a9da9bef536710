"""What the tests of both synthetic face families measure: a set's files, a mid-range palsy of a grade, and the
left-right difference of the crops the network reads."""
from __future__ import annotations

from pathlib import Path

import numpy as np

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
