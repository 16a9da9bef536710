"""Optical flow between a rest photo and an expression photo: HTNet's original motion input, for palsy grading.

HTNet (Wang et al., Neurocomputing 2024) read micro-expressions as the dense optical flow between the onset and
the apex frame: horizontal flow ``u``, vertical flow ``v`` and the optical strain, stacked as a 3-channel image and
cut into the eye / mouth-corner region mosaic (the STSNet preprocessing it builds on). For facial palsy the natural
pair is a rest photo and an expression photo (brow raise, eye closure, smile) of one person: the paralysed side
moves less, so the flow shows the movement deficit directly instead of leaving the network to infer it from a
single posed photo.

This module is the flow maths on arrays: aligning the expression frame onto the rest frame (a similarity on the
eyes and nose, refined by ECC image registration, since head motion between the shots is not facial movement),
Farneback dense flow, the optical strain, and their encoding on a fixed scale (``FLOW_SETTINGS``), never per-image
min-max, so that a weak movement stays weak and magnitudes compare across photos and subjects. Cutting the frames
to the face square and into the region mosaic lives with the other crops in ``facial_palsy_dataset``
(``flow_face``, ``make_flow_input``, ``region_motion``); ``show_flow.py`` draws the flow of one pair.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

from utils import UserError

__all__ = ['FLOW_SETTINGS', 'REFERENCE_FACE_SIZE', 'ALIGN_POINTS', 'landmark_points', 'similarity_transform',
           'align_to_rest', 'refine_alignment', 'dense_flow', 'optical_strain', 'encode_flow', 'decode_flow',
           'flow_between', 'box_motion', 'movement_asymmetry', 'flow_picture']

# helpers

# Flow scales are set for a 224-pixel face square (the default face_size of the preprocess) and scale with it.
REFERENCE_FACE_SIZE = 224
# The expression photo is aligned on the eyes and the nose: points the protocol's movements hardly shift (the
# mouth corners move with a smile, so using them would cancel the very movement being measured).
ALIGN_POINTS = (0, 1, 2)

FLOW_SETTINGS: dict[str, Any] = {
    # cv2.calcOpticalFlowFarneback: a 3-level pyramid halving each level follows movements of ~10-20 pixels
    # (a full smile in a 224 face); 15-pixel windows average over a lid or lip edge; poly_n 5 / sigma 1.2 is
    # OpenCV's recommended pair for small neighbourhoods. These are the usual values of the OpenCV example and of
    # micro-expression flow preprocessing.
    'method': 'farneback',
    'pyr_scale': 0.5,
    'levels': 3,
    'winsize': 15,
    'iterations': 3,
    'poly_n': 5,
    'poly_sigma': 1.2,
    # OpenCV's Farneback treats the outermost rows and columns specially: even two identical frames get up to
    # ~0.1 px of flow there. Frames are padded by reflection by this many pixels first (winsize + 1 is enough
    # to bring that below 1e-5 px) and the flow is cropped back.
    'border': 16,
    # u and v are clipped to +-max_flow pixels of a 224-pixel face square and mapped to 1..255, 128 = no motion
    # (a full synthetic smile moves a corner ~9 px; real ones up to ~15 px).
    'max_flow': 16.0,
    # strain e = sqrt(ux^2 + vy^2 + 0.5 (uy + vx)^2) (dimensionless: pixels of relative movement per pixel) is
    # clipped to max_strain and mapped to 0..255. A lifting lip line reaches 0.5-1.5 in its last percent of pixels;
    # sensor noise alone stays below ~0.15.
    'max_strain': 1.0,
    # movement_asymmetry divides by max(left + right, min_motion) pixels (224 scale): below half a pixel of
    # movement on both sides together, noise would otherwise pass for a large asymmetry.
    'min_motion': 0.5,
    'reference_size': REFERENCE_FACE_SIZE,
    'channels': ['u', 'v', 'strain'],
    'align': 'similarity on the eye centres and the nose (expression photo onto the rest photo)',
    # Detected landmarks jitter by 2-5 pixels between two photos, which alone would paint flow over the whole face
    # (measured on synthetic pairs: the grade V mouth asymmetry fell from 0.9 to 0.3-0.5). The landmark alignment
    # is therefore refined by ECC image registration (cv2.findTransformECC, affine) of the two face squares,
    # blurred by refine_blur pixels: the face is mostly still skin, so the best global fit is the head's motion.
    # 'none' keeps the landmark alignment only.
    'refine': 'ecc',
    'refine_blur': 1.5,
    'refine_iterations': 100,
    'refine_eps': 1e-5,
    'frame': 'face square of the rest photo landmarks',
}


def _settings(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    return {**FLOW_SETTINGS, **(settings or {})}


def landmark_points(landmarks: Any) -> np.ndarray:
    """Five (x, y) points as a (5, 2) float64 array, from an array or anything with ``points`` (``FaceLandmarks``);
    NaN or infinite values are a ``UserError``."""
    points = getattr(landmarks, 'points', landmarks)
    points = np.asarray(points, dtype=np.float64).reshape(5, 2)
    if not np.all(np.isfinite(points)):
        raise UserError('landmarks contain NaN or infinite values')
    return points


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2x3 least-squares similarity (rotation, uniform scale, shift; no shear, no mirroring) taking ``source``
    points (N, 2) onto ``target`` points (Umeyama 1991). Closed form rather than OpenCV's RANSAC estimator, so the
    same points always give the same matrix."""
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    assert source.shape == target.shape and source.shape[0] >= 2, 'need two or more matching (x, y) points'
    mean_s, mean_t = source.mean(axis=0), target.mean(axis=0)
    s, t = source - mean_s, target - mean_t
    variance = float((s ** 2).sum())
    if variance <= 1e-12:
        raise UserError('the expression landmarks coincide; cannot align the photos')
    # a similarity is x' = a x - b y + c, y' = b x + a y + d
    a = float((s * t).sum()) / variance
    b = float((s[:, 0] * t[:, 1] - s[:, 1] * t[:, 0]).sum()) / variance
    rotation_scale = np.array([[a, -b], [b, a]])
    shift = mean_t - rotation_scale @ mean_s
    return np.hstack([rotation_scale, shift[:, None]])


def align_to_rest(expression_rgb: np.ndarray, expression_landmarks: Any, rest_landmarks: Any,
                  rest_shape: tuple[int, int]) -> np.ndarray:
    """The expression photo moved onto the rest photo's frame (``rest_shape`` = its height, width) by the
    similarity that takes its eyes and nose onto the rest photo's. Edges are replicated: a black border would
    read as strong motion."""
    index = list(ALIGN_POINTS)
    matrix = similarity_transform(landmark_points(expression_landmarks)[index], landmark_points(rest_landmarks)[index])
    height, width = rest_shape
    return cv2.warpAffine(expression_rgb, matrix, (int(width), int(height)), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def dense_flow(rest_gray: np.ndarray, expression_gray: np.ndarray, settings: Mapping[str, Any] | None = None
               ) -> np.ndarray:
    """Farneback flow (H, W, 2) float32 from the rest to the expression frame, in pixels: a point at (x, y) at
    rest is at (x + u, y + v) in the expression photo (u > 0: moved to the image right, v > 0: moved down)."""
    cfg = _settings(settings)
    assert rest_gray.shape == expression_gray.shape and rest_gray.ndim == 2, 'two grayscale frames of one size'
    pad = int(cfg.get('border', 0))
    if pad > 0:
        rest_gray, expression_gray = (cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
                                      for frame in (rest_gray, expression_gray))
    flow = cv2.calcOpticalFlowFarneback(rest_gray, expression_gray, None, cfg['pyr_scale'], int(cfg['levels']),
                                        int(cfg['winsize']), int(cfg['iterations']), int(cfg['poly_n']),
                                        cfg['poly_sigma'], 0)
    return np.ascontiguousarray(flow[pad:flow.shape[0] - pad, pad:flow.shape[1] - pad])


def optical_strain(flow: np.ndarray) -> np.ndarray:
    """Optical strain magnitude (H, W) float32 of a flow field, as in STSNet / HTNet preprocessing:
    ``sqrt(ux^2 + vy^2 + 0.5 (uy + vx)^2)`` with central-difference gradients (dimensionless: pixels per pixel).
    It is high where neighbouring skin moves differently (a lid edge, a lifting lip) and zero for a rigid shift."""
    u, v = flow[..., 0].astype(np.float32), flow[..., 1].astype(np.float32)
    uy, ux = np.gradient(u)
    vy, vx = np.gradient(v)
    return np.sqrt(ux ** 2 + vy ** 2 + 0.5 * (uy + vx) ** 2).astype(np.float32)


def _max_flow_pixels(size: int, cfg: Mapping[str, Any]) -> float:
    return float(cfg['max_flow']) * size / float(cfg.get('reference_size', REFERENCE_FACE_SIZE))


def encode_flow(flow: np.ndarray, strain: np.ndarray, settings: Mapping[str, Any] | None = None) -> np.ndarray:
    """u, v and strain as one (H, W, 3) uint8 image on the fixed scale of ``FLOW_SETTINGS``: u and v clipped to
    +-max_flow (scaled to the image size) onto 1..255 with 128 = no motion, strain clipped to max_strain onto
    0..255. Fixed rather than per-image min-max, so that a weak movement is not stretched to look like a strong
    one."""
    cfg = _settings(settings)
    limit = _max_flow_pixels(flow.shape[0], cfg)
    uv = 128.0 + 127.0 * np.clip(flow.astype(np.float32) / limit, -1.0, 1.0)
    e = 255.0 * np.clip(strain.astype(np.float32) / float(cfg['max_strain']), 0.0, 1.0)
    return np.rint(np.dstack([uv, e])).astype(np.uint8)


def decode_flow(flow_img: np.ndarray, settings: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``encode_flow`` up to clipping and rounding: ``(flow (H, W, 2) pixels, strain (H, W))``."""
    cfg = _settings(settings)
    values = np.asarray(flow_img, dtype=np.float32)
    limit = _max_flow_pixels(values.shape[0], cfg)
    flow = (values[..., :2] - 128.0) / 127.0 * limit
    strain = values[..., 2] / 255.0 * float(cfg['max_strain'])
    return flow, strain


def refine_alignment(rest_face: np.ndarray, expression_face: np.ndarray, settings: Mapping[str, Any] | None = None
                     ) -> np.ndarray:
    """The expression face square moved by the affine ECC registration onto the rest face square (see
    ``FLOW_SETTINGS['refine']``); returned unchanged where ECC does not converge or finds an implausible motion
    (more than 10 % of the square in shift or scale), so a refinement never makes the landmark alignment worse."""
    cfg = _settings(settings)
    if cfg.get('refine', 'none') != 'ecc':
        return expression_face
    sigma = float(cfg['refine_blur'])
    rest, moved = (cv2.GaussianBlur(cv2.cvtColor(face, cv2.COLOR_RGB2GRAY).astype(np.float32), (0, 0), sigma)
                   for face in (rest_face, expression_face))
    warp = np.eye(2, 3, dtype=np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, int(cfg['refine_iterations']),
                float(cfg['refine_eps']))
    try:
        _, warp = cv2.findTransformECC(rest, moved, warp, cv2.MOTION_AFFINE, criteria, None, 1)
    except cv2.error:  # no convergence (e.g. a flat image): keep the landmark alignment
        return expression_face
    size = rest_face.shape[0]
    if not np.all(np.isfinite(warp)) or np.abs(warp[:, :2] - np.eye(2)).max() > 0.1 \
            or np.abs(warp[:, 2]).max() > 0.1 * size:
        return expression_face
    return cv2.warpAffine(expression_face, warp, (rest_face.shape[1], rest_face.shape[0]),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)


# flow images

def flow_between(rest_face: np.ndarray, expression_face: np.ndarray, settings: Mapping[str, Any] | None = None
                 ) -> np.ndarray:
    """The encoded u, v, strain image (uint8) between two registered RGB frames of one size."""
    flow = dense_flow(cv2.cvtColor(rest_face, cv2.COLOR_RGB2GRAY), cv2.cvtColor(expression_face, cv2.COLOR_RGB2GRAY),
                      settings)
    return encode_flow(flow, optical_strain(flow), settings)


# motion summaries

def box_motion(flow_img: np.ndarray, boxes: np.ndarray, settings: Mapping[str, Any] | None = None) -> list[float]:
    """Mean flow magnitude (pixels of the flow image) inside each box ``[x0, y0, x1, y1]`` (integers) of an
    encoded flow image."""
    flow, _ = decode_flow(flow_img, settings)
    magnitude = np.linalg.norm(flow, axis=2)
    return [float(magnitude[y0:y1, x0:x1].mean()) for x0, y0, x1, y1 in np.asarray(boxes, dtype=int)]


def movement_asymmetry(left: float, right: float, size: int, settings: Mapping[str, Any] | None = None) -> float:
    """``(left - right) / max(left + right, min_motion)``: near 0 for a symmetric movement, towards +1 when the
    right side hardly moves, towards -1 for the left. ``min_motion`` (``FLOW_SETTINGS``, scaled to a ``size``-pixel
    face square) keeps the noise between two still photos near 0 instead of any ratio."""
    cfg = _settings(settings)
    floor = float(cfg['min_motion']) * size / float(cfg.get('reference_size', REFERENCE_FACE_SIZE))
    return float((left - right) / max(left + right, floor, 1e-6))


def flow_picture(rest_face: np.ndarray, expression_face: np.ndarray, flow_img: np.ndarray,
                 settings: Mapping[str, Any] | None = None) -> np.ndarray:
    """A side-by-side RGB picture: rest face, expression face, flow as colour (hue = direction, brightness =
    speed on the fixed max_flow scale) and strain, for looking at a pair rather than reading numbers."""
    flow, strain = decode_flow(flow_img, settings)
    cfg = _settings(settings)
    magnitude, angle = cv2.cartToPolar(flow[..., 0], flow[..., 1], angleInDegrees=True)
    hsv = np.zeros(flow_img.shape[:2] + (3,), dtype=np.uint8)
    hsv[..., 0] = (angle / 2).astype(np.uint8)  # OpenCV hue is 0-179
    hsv[..., 1] = 255
    hsv[..., 2] = np.clip(magnitude / _max_flow_pixels(flow_img.shape[0], cfg) * 255 * 2, 0, 255).astype(np.uint8)
    colour = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    strain_rgb = cv2.applyColorMap(np.ascontiguousarray(flow_img[..., 2]), cv2.COLORMAP_INFERNO)[..., ::-1]
    tiles = [rest_face, expression_face, colour, strain_rgb]
    labels = ('rest', 'expression', 'flow (hue = direction)', 'strain')
    out = []
    for tile, label in zip(tiles, labels):
        tile = np.ascontiguousarray(tile).copy()
        cv2.putText(tile, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
        out.append(tile)
    return np.hstack(out)
