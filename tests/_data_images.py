"""Small generated images and layouts for the data pipeline tests (drawn with OpenCV, no downloads)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

# five points (left eye, right eye, nose, left mouth corner, right mouth corner) on a 200x200 photo
POINTS_200 = np.array([[70, 80], [130, 80], [100, 110], [76, 140], [124, 140]], dtype=np.float32)
# one distinct colour per point (RGB), far from the grey background
POINT_COLOURS = [(255, 0, 0), (0, 0, 255), (255, 255, 0), (0, 255, 0), (255, 0, 255)]


def write_rgb(path: Path, image: np.ndarray) -> Path:
    """Save an RGB uint8 image (PNG/JPEG by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(image[:, :, ::-1])), path
    return path


def coloured_points_photo(points: np.ndarray = POINTS_200, size: tuple[int, int] = (200, 200),
                          radius: int = 6) -> np.ndarray:
    """A flat grey photo (no face for MTCNN) with a filled square of a distinct colour at each point."""
    height, width = size
    image = np.full((height, width, 3), 128, dtype=np.uint8)
    for (x, y), colour in zip(np.round(points).astype(int), POINT_COLOURS):
        image[max(y - radius, 0):y + radius + 1, max(x - radius, 0):x + radius + 1] = colour
    return image


def face_like(size: int = 256, seed: int = 0) -> np.ndarray:
    """A drawn cartoon face (skin ellipse, eyes with pupils, brows, nose line, mouth) on a plain background."""
    rng = np.random.default_rng(seed)
    s = size
    image = np.empty((s, s, 3), dtype=np.uint8)
    image[:] = rng.integers(150, 230, 3)
    cx, cy = s // 2 + int(rng.integers(-s // 20, s // 20 + 1)), s // 2
    cv2.ellipse(image, (cx, cy), (int(s * .3), int(s * .4)), 0, 0, 360, (224, 172, 140), -1)
    for dx in (-1, 1):
        eye = (cx + dx * int(s * .12), cy - int(s * .08))
        cv2.ellipse(image, eye, (int(s * .05), int(s * .025)), 0, 0, 360, (255, 255, 255), -1)
        cv2.circle(image, eye, int(s * .02), (40, 30, 20), -1)
        cv2.line(image, (cx + dx * int(s * .07), cy - int(s * .15)), (cx + dx * int(s * .18), cy - int(s * .16)),
                 (60, 40, 30), 3)
    cv2.line(image, (cx, cy - int(s * .05)), (cx - int(s * .02), cy + int(s * .07)), (180, 120, 100), 2)
    cv2.ellipse(image, (cx, cy + int(s * .17)), (int(s * .09), int(s * .03)), 0, 0, 360, (150, 50, 60), -1)
    return image


def write_csv(path: Path, rows: Iterable[dict], columns: Sequence[str] | None = None) -> Path:
    rows = list(rows)
    columns = list(columns or rows[0].keys())
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'w', newline='') as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction='ignore')
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_csv(path: Path) -> list[dict]:
    with open(path, newline='') as handle:
        return list(csv.DictReader(handle))


def landmark_columns(points: np.ndarray) -> dict:
    """The annotation CSV's ten landmark columns for (5, 2) points."""
    names = ['eye_l', 'eye_r', 'nose', 'mouth_l', 'mouth_r']
    row = {}
    for name, (x, y) in zip(names, points):
        row[f'{name}_x'], row[f'{name}_y'] = float(x), float(y)
    return row
