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


class ColourMTCNN:
    """Stands in for MTCNN: "finds" a face where the five POINT_COLOURS squares are, reports their centres as
    landmarks, and nothing where one is missing. Records the shape of every batch it is given."""

    def __init__(self):
        self.batches: list[tuple[int, ...]] = []

    def detect(self, batch, landmarks=True):
        assert landmarks and batch.ndim == 4 and batch.dtype == np.uint8
        self.batches.append(batch.shape)
        boxes, probs, points = [], [], []
        for image in batch:
            centres = []
            for colour in POINT_COLOURS:
                ys, xs = np.nonzero(np.all(image == np.array(colour, dtype=np.uint8), axis=2))
                centres.append((xs.mean() + 0.5, ys.mean() + 0.5) if len(xs) else None)
            if any(c is None for c in centres):
                boxes.append(None), probs.append([None]), points.append(None)
                continue
            pts = np.array(centres, dtype=np.float32)
            lo, hi = pts.min(0) - 20, pts.max(0) + 20
            boxes.append(np.array([[lo[0], lo[1], hi[0], hi[1]]])), probs.append(np.array([0.99]))
            points.append(pts[None])
        return np.array(boxes, dtype=object), np.array(probs, dtype=object), np.array(points, dtype=object)


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


# rest / expression pairs for the optical flow tests

# five points of a face roughly filling a 256-pixel photo (eyes, nose, mouth corners)
FLOW_POINTS = np.array([[90, 100], [166, 100], [128, 135], [100, 170], [156, 170]], dtype=np.float32)


def textured_photo(size: int = 256, seed: int = 0) -> np.ndarray:
    """Smooth random texture: every pixel has gradients, so flow is defined everywhere."""
    noise = np.random.default_rng(seed).uniform(0, 255, (size // 4, size // 4)).astype(np.float32)
    grey = np.clip(cv2.GaussianBlur(cv2.resize(noise, (size, size)), (0, 0), 2.0) * 1.5 - 64, 0, 255)
    return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)


def palsy_pair(grade: int, side: str, expression, seed: int = 11):
    """A synthetic rest / expression pair (``synthetic_faces.PhotoPair``) at 256 px, severity mid-grade."""
    import synthetic_faces as sf

    rng = np.random.default_rng(seed)
    identity, photo = sf.sample_identity(rng), sf.sample_photo(rng)
    low, high = sf.SEVERITY_RANGE[grade]
    palsy = sf.Palsy(grade, side if grade else 'none', (low + high) / 2)
    return sf.render_pair(identity, palsy, photo, expression, 256, noise_rng=rng)
