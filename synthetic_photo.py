"""Photo effects shared by every synthetic face family: lighting gradient, tint, lens blur, sensor noise, JPEG
quality, and things that get between the camera and a face (a hand, an object, a strong shadow).

What a camera or a cluttered scene does to a photo is not part of a face's design, so both families
(``synthetic_family_a``, ``synthetic_family_b``) pass their drawn faces through the same functions here.
Occluders are placed in a face frame built from the true landmarks (origin between the eyes, unit = the inter-eye
distance, v pointing towards the mouth), mostly away from the eye and mouth-corner crops the network reads, so a
grade stays readable; now and then one reaches into them, as in real photos.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

__all__ = ['DEFAULT_JPEG_QUALITY', 'JPEG_QUALITY_RANGE', 'OCCLUDER_KINDS', 'Occluder', 'apply_camera', 'encode_jpeg',
           'sample_jpeg_quality', 'sample_occluder', 'draw_occluder']

# The quality of a photo drawn without a per-photo quality (and of contact sheets).
DEFAULT_JPEG_QUALITY = 92
# Per-photo JPEG quality: from heavily compressed messenger photos to clinic camera files.
JPEG_QUALITY_RANGE = (35, 95)
OCCLUDER_KINDS = ('hand', 'object', 'shadow')
# Where an occluder's centre goes, in the face frame (u across, v down; unit = inter-eye distance; the eyes sit at
# v = 0, u = -/+0.5, the mouth corners near v = 1.1, u = -/+0.45): chin, jaw, forehead and temple.
# The last region reaches the mouth-corner crop: drawn rarely, so most photos keep every sign in sight.
_REGIONS = (((-0.5, 0.5), (2.0, 2.25)), ((1.2, 1.5), (1.4, 1.9)), ((-0.7, 0.7), (-1.3, -1.0)),
            ((1.1, 1.4), (-1.0, -0.5)), ((0.6, 0.85), (1.4, 1.6)))
_REGION_WEIGHTS = (0.3, 0.3, 0.18, 0.16, 0.06)


@dataclass(frozen=True)
class Occluder:
    """Something between the camera and the face: ``kind`` (hand / object / shadow) centred at ``(u, v)`` in the
    face frame, ``size`` in inter-eye distances, turned by ``angle`` (radians), in ``colour`` (RGB; for a shadow
    ``strength`` is how much light it takes away)."""
    kind: str
    u: float
    v: float
    size: float
    angle: float
    colour: tuple[float, float, float]
    strength: float = 1.0


def sample_jpeg_quality(rng: np.random.Generator) -> int:
    """A JPEG quality drawn uniformly from ``JPEG_QUALITY_RANGE``."""
    return int(rng.integers(JPEG_QUALITY_RANGE[0], JPEG_QUALITY_RANGE[1] + 1))


def sample_occluder(rng: np.random.Generator, probability: float = 0.15) -> Occluder | None:
    """An occluder for one photo with ``probability``, else None. The same number of values is drawn either way,
    so what follows in ``rng`` does not depend on the outcome."""
    present, region, a, b, size, angle, strength, tone = rng.uniform(size=8)
    colour = tuple(float(c) for c in rng.uniform(30, 230, size=3))
    if present >= probability:
        return None
    (u0, u1), (v0, v1) = _REGIONS[int(np.searchsorted(np.cumsum(_REGION_WEIGHTS), region * sum(_REGION_WEIGHTS)))]
    u = (u0 + (u1 - u0) * a) * (1 if b < 0.5 else -1)
    v = v0 + (v1 - v0) * (2 * b % 1)
    kind = OCCLUDER_KINDS[min(int(3 * tone), 2)]
    if kind == 'hand':  # a skin tone of its own, light to dark
        colour = tuple(float(c) for c in np.array([236.0, 196.0, 170.0]) * (0.35 + 0.65 * strength))
    return Occluder(kind=kind, u=float(u), v=float(v), size=float(0.55 + 0.5 * size),
                    angle=float(2 * math.pi * angle), colour=colour, strength=float(0.35 + 0.35 * strength))


def _capsule(start: np.ndarray, end: np.ndarray, radius: float, n: int = 10) -> np.ndarray:
    """Outline of a stadium (a finger) from ``start`` to ``end``."""
    axis = end - start
    angle = math.atan2(axis[1], axis[0])
    t1 = np.linspace(angle + math.pi / 2, angle + 3 * math.pi / 2, n)
    t2 = np.linspace(angle - math.pi / 2, angle + math.pi / 2, n)
    return np.vstack([start + radius * np.column_stack([np.cos(t1), np.sin(t1)]),
                      end + radius * np.column_stack([np.cos(t2), np.sin(t2)])])


def _occluder_shapes(occluder: Occluder) -> list[np.ndarray]:
    """Polygons of the occluder in its own frame (unit = inter-eye distance, centred at 0, pointing along +x)."""
    size = occluder.size
    if occluder.kind == 'hand':  # a palm with four fingers reaching in
        t = np.linspace(0, 2 * math.pi, 28, endpoint=False)
        palm = np.column_stack([-0.25 * size + 0.42 * size * np.cos(t), 0.36 * size * np.sin(t)])
        fingers = [_capsule(np.array([0.05 * size, y * size]), np.array([(0.55 - 0.12 * abs(y) * 4) * size,
                                                                          y * size * 1.1]), 0.085 * size)
                   for y in (-0.27, -0.09, 0.09, 0.27)]
        return [palm, *fingers]
    if occluder.kind == 'object':  # a rounded box: a phone, a cup, a sheet of paper
        t = np.linspace(0, 2 * math.pi, 32, endpoint=False)
        c, s = np.cos(t), np.sin(t)
        return [np.column_stack([0.5 * size * np.sign(c) * np.abs(c) ** 0.3,
                                 0.3 * size * np.sign(s) * np.abs(s) ** 0.3])]
    t = np.linspace(0, 2 * math.pi, 24, endpoint=False)  # a shadow: a broad soft blot
    return [np.column_stack([0.8 * size * np.cos(t), 0.45 * size * np.sin(t)])]


def draw_occluder(image: np.ndarray, occluder: Occluder | None, landmarks: np.ndarray) -> np.ndarray:
    """Draw ``occluder`` over a float or uint8 RGB ``image`` (returns float32) in the face frame of the true
    ``landmarks`` (5, 2): origin between the eyes, unit = the inter-eye distance."""
    image = image.astype(np.float32, copy=False)
    if occluder is None:
        return image
    eyes = landmarks[:2].astype(np.float64)
    across = eyes[1] - eyes[0]
    unit = float(np.linalg.norm(across))
    if unit < 1e-3:
        return image
    ex = across / unit
    ey = np.array([-ex[1], ex[0]])
    centre = eyes.mean(axis=0) + unit * (occluder.u * ex + occluder.v * ey)
    angle = occluder.angle
    if occluder.kind == 'hand':  # fingers reach towards the middle of the face, give or take
        angle = math.atan2(0.6 - occluder.v, -occluder.u) + 0.3 * (occluder.angle - math.pi) / math.pi
    c, s = math.cos(angle), math.sin(angle)
    turn = np.array([[c, -s], [s, c]])
    size = image.shape[0]
    mask = np.zeros(image.shape[:2], dtype=np.uint8)
    for shape in _occluder_shapes(occluder):
        points = centre + unit * (shape @ turn.T) @ np.stack([ex, ey])
        cv2.fillPoly(mask, [np.round(points * 16).astype(np.int32)], 255, cv2.LINE_AA, 4)
    weight = mask.astype(np.float32) / 255
    if occluder.kind == 'shadow':
        weight = cv2.GaussianBlur(weight, (0, 0), max(0.25 * unit, 1.0))
        return image * (1 - occluder.strength * weight)[..., None]
    # a little shading across the occluder, so it reads as an object rather than a hole
    ramp = (np.arange(size, dtype=np.float32) / size - 0.5)[None, :] * c + (np.arange(size, dtype=np.float32)
                                                                            / size - 0.5)[:, None] * s
    fill = np.asarray(occluder.colour, dtype=np.float32) * (1 - 0.3 * ramp)[..., None]
    weight = weight[..., None]
    return image * (1 - weight) + fill * weight


def apply_camera(image: np.ndarray, *, brightness: float = 1.0, light_angle: float = 0.0,
                 light_strength: float = 0.0, tint: Sequence[float] = (1.0, 1.0, 1.0), blur: float = 0.0,
                 noise: float = 0.0, noise_rng: np.random.Generator | None = None) -> np.ndarray:
    """Lighting gradient, colour tint, lens blur and sensor noise on an RGB image; returns uint8.

    ``light_strength`` is the relative brightness change across the photo along ``light_angle`` (radians),
    ``blur`` a Gaussian sigma and ``noise`` a Gaussian sigma in grey levels (drawn from ``noise_rng``).
    """
    size = image.shape[0]
    coords = (np.arange(size, dtype=np.float32) - size / 2) / size
    gradient = (math.cos(light_angle) * coords[None, :] + math.sin(light_angle) * coords[:, None])
    gain = brightness * (1 + 2 * light_strength * gradient)
    image = image.astype(np.float32) * gain[..., None] * np.asarray(tint, dtype=np.float32)
    if blur > 0.05:
        image = cv2.GaussianBlur(image, (0, 0), blur)
    if noise > 0:
        rng = noise_rng if noise_rng is not None else np.random.default_rng(0)
        image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(noise)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def encode_jpeg(image: np.ndarray, quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """JPEG bytes of an RGB uint8 image."""
    ok, buffer = cv2.imencode('.jpg', cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError('JPEG encoding failed')
    return buffer.tobytes()
