"""Optical flow between a rest photo and an expression photo: HTNet's original motion input, for palsy grading.

HTNet (Wang et al., Neurocomputing 2024) read micro-expressions as the dense optical flow between the onset and
the apex frame: horizontal flow ``u``, vertical flow ``v`` and the optical strain, stacked as a 3-channel image and
cut into the eye / mouth-corner region mosaic (the STSNet preprocessing it builds on). For facial palsy the natural
pair is a rest photo and an expression photo (brow raise, eye closure, smile) of one person: the paralysed side
moves less, so the flow shows the movement deficit directly instead of leaving the network to infer it from a
single posed photo.

``flow_image`` cuts both photos to the face square of the *rest* photo's landmarks (so both frames share one
coordinate system: the region crops of the rest landmarks see the same skin in both), optionally aligns the
expression photo first (head motion between the shots is not facial movement), runs Farneback dense flow and
encodes ``u``, ``v`` and strain on a fixed scale (``FLOW_SETTINGS``), never per-image min-max, so that a weak
movement stays weak and magnitudes compare across photos and subjects. ``flow_input`` turns that into the network
tensor with ``facial_palsy_dataset``'s own mosaic and normalisation; ``region_motion`` summarises it per region with
an interpretable left/right ``movement_asymmetry``.

Run as a script it writes the flow picture and the motion summary of one pair::

    python optical_flow.py --rest rest.jpg --expression smile.jpg --output_dir flow_out
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from facial_palsy_dataset import (FACE_MARGIN, LANDMARK_FACE_SCALE, REGION_NAMES, FaceLandmarks, face_square,
                                  load_image, network_image_from_face, region_boxes, to_tensor)
from utils import UserError, atomic_write_text, run_cli

__all__ = ['FLOW_SETTINGS', 'REFERENCE_FACE_SIZE', 'ALIGN_POINTS', 'similarity_transform', 'align_to_rest', 'refine_alignment', 'aligned_faces', 'flow_between',
           'dense_flow', 'optical_strain', 'encode_flow', 'decode_flow', 'flow_face', 'flow_image', 'flow_input',
           'flow_preprocess', 'region_motion', 'flow_picture', 'get_args_parser', 'main']

# helpers

# Flow scales are set for a 224-pixel face square (the dataset's default image_size) and scale with it.
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


def _points(landmarks: Any) -> np.ndarray:
    points = landmarks.points if isinstance(landmarks, FaceLandmarks) else landmarks
    points = np.asarray(points, dtype=np.float64).reshape(5, 2)
    if not np.all(np.isfinite(points)):
        raise UserError('landmarks contain NaN or infinite values')
    return points


def _as_rgb(image: np.ndarray, what: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.shape[0] < 2 or image.shape[1] < 2:
        raise UserError(f'{what}: expected an HxWx3 RGB image, got shape {image.shape}')
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8, copy=False)


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
    matrix = similarity_transform(_points(expression_landmarks)[index], _points(rest_landmarks)[index])
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
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, int(cfg['refine_iterations']), float(cfg['refine_eps']))
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


# flow images and network inputs

def aligned_faces(rest_rgb: np.ndarray, expression_rgb: np.ndarray, rest_landmarks: Any,
                  expression_landmarks: Any = None, image_size: int = 224, *, margin: float = FACE_MARGIN,
                  landmark_scale: float = LANDMARK_FACE_SCALE, settings: Mapping[str, Any] | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both photos cut to the rest photo's face square (the expression photo aligned first when its landmarks
    are given): ``(rest face, expression face, rest landmarks in the square)``. The two frames flow is read
    between."""
    rest_rgb = _as_rgb(rest_rgb, 'rest photo')
    expression_rgb = _as_rgb(expression_rgb, 'expression photo')
    _points(rest_landmarks)
    if expression_landmarks is not None:
        expression_rgb = align_to_rest(expression_rgb, expression_landmarks, rest_landmarks, rest_rgb.shape[:2])
    # both photos are cut by the rest photo's face square: one frame, so a flow vector is skin movement
    rest_face, face_points = face_square(rest_rgb, rest_landmarks, None, image_size, margin=margin,
                                         landmark_scale=landmark_scale)
    expression_face, _ = face_square(expression_rgb, rest_landmarks, None, image_size, margin=margin,
                                     landmark_scale=landmark_scale)
    if expression_landmarks is not None:
        expression_face = refine_alignment(rest_face, expression_face, settings)
    return rest_face, expression_face, face_points


def flow_face(rest_rgb: np.ndarray, expression_rgb: np.ndarray, rest_landmarks: Any, expression_landmarks: Any = None,
              image_size: int = 224, *, margin: float = FACE_MARGIN, landmark_scale: float = LANDMARK_FACE_SCALE,
              settings: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``flow_image`` plus the rest landmarks in its frame: ``(flow image (S, S, 3) uint8, landmarks (5, 2))``,
    ready for ``facial_palsy_dataset.region_mosaic``."""
    rest_face, expression_face, face_points = aligned_faces(
        rest_rgb, expression_rgb, rest_landmarks, expression_landmarks, image_size, margin=margin,
        landmark_scale=landmark_scale, settings=settings)
    return flow_between(rest_face, expression_face, settings), face_points


def flow_between(rest_face: np.ndarray, expression_face: np.ndarray, settings: Mapping[str, Any] | None = None
                 ) -> np.ndarray:
    """The encoded u, v, strain image (uint8) between two registered RGB frames of one size."""
    flow = dense_flow(cv2.cvtColor(rest_face, cv2.COLOR_RGB2GRAY), cv2.cvtColor(expression_face, cv2.COLOR_RGB2GRAY),
                      settings)
    return encode_flow(flow, optical_strain(flow), settings)


def flow_image(rest_rgb: np.ndarray, expression_rgb: np.ndarray, rest_landmarks: Any,
               expression_landmarks: Any = None, image_size: int = 224, **options: Any) -> np.ndarray:
    """The HTNet motion image of a rest / expression pair: (image_size, image_size, 3) uint8 holding u, v and the
    optical strain (encoding: ``encode_flow``), in the face square of the rest photo's landmarks.

    ``rest_landmarks`` are the rest photo's five points (array or ``FaceLandmarks``; its box, if any, sets the
    square). With ``expression_landmarks`` the expression photo is first aligned to the rest photo on the eyes and
    nose, which removes head movement between the shots, then refined by image registration
    (``refine_alignment``); without them the two photos must share the framing
    (a tripod, or one video). ``options``: ``margin``, ``landmark_scale`` (the face-square rule) and ``settings``
    (overrides of ``FLOW_SETTINGS``).
    """
    return flow_face(rest_rgb, expression_rgb, rest_landmarks, expression_landmarks, image_size, **options)[0]


def flow_preprocess(preprocess: Mapping[str, Any], settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A checkpoint's ``preprocess`` for flow inputs: the photo preprocess plus ``input_kind='flow'`` and the
    ``flow`` settings used, so that evaluation and inference rebuild exactly the same motion images."""
    return {**preprocess, 'input_kind': 'flow', 'flow': _settings(settings)}


def flow_network_image(rest_rgb: np.ndarray, expression_rgb: np.ndarray, rest_landmarks: Any,
                       preprocess: Mapping[str, Any], expression_landmarks: Any = None) -> np.ndarray:
    """The un-normalised network image (S, S, 3) uint8 of a rest / expression pair: the flow image in the rest face
    square (size, margin and flow settings from ``preprocess``, its ``flow`` entry if present), cut into the region
    mosaic (or aligned face) at the rest landmarks."""
    flow_img, face_points = flow_face(
        rest_rgb, expression_rgb, rest_landmarks, expression_landmarks, int(preprocess.get('image_size', 224)),
        margin=preprocess.get('face_margin', FACE_MARGIN),
        landmark_scale=preprocess.get('landmark_face_scale', LANDMARK_FACE_SCALE), settings=preprocess.get('flow'))
    return network_image_from_face(flow_img, face_points, preprocess)


def flow_input(rest_rgb: np.ndarray, expression_rgb: np.ndarray, rest_landmarks: Any,
               preprocess: Mapping[str, Any], expression_landmarks: Any = None) -> torch.Tensor:
    """``flow_network_image`` as the normalised network input (3, S, S) float32, exactly like
    ``facial_palsy_dataset.make_input``."""
    return to_tensor(flow_network_image(rest_rgb, expression_rgb, rest_landmarks, preprocess, expression_landmarks),
                     preprocess)


# motion summaries

def region_motion(flow_img: np.ndarray, face_landmarks: Any, region_size: int = 28,
                  settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Mean flow magnitude (face-square pixels) in each network region and the left/right movement asymmetry.

    Returns ``{'left_eye', 'left_mouth', 'right_eye', 'right_mouth': float, 'movement_asymmetry': {'eye': float,
    'mouth': float}}`` where ``movement_asymmetry = (left - right) / max(left + right, min_motion)``
    (``FLOW_SETTINGS['min_motion']``, so noise between two still photos stays near 0 instead of any ratio): near 0
    for a symmetric movement, towards +1 when the image-right side (the patient's left) hardly moves, towards
    -1 for the image-left side (the patient's right). ``face_landmarks`` are the rest landmarks in the flow image's
    frame (``flow_face`` returns them); ``left`` / ``right`` are image sides, as in ``REGION_NAMES``.
    """
    cfg = _settings(settings)
    flow, _ = decode_flow(flow_img, cfg)
    floor = float(cfg['min_motion']) * flow.shape[0] / float(cfg.get('reference_size', REFERENCE_FACE_SIZE))
    magnitude = np.linalg.norm(flow, axis=2)
    boxes = region_boxes(np.asarray(flow_img), _points(face_landmarks).astype(np.float32), int(region_size))
    motion: dict[str, Any] = {}
    for name, (x0, y0, x1, y1) in zip(REGION_NAMES, boxes.astype(int)):
        motion[name] = float(magnitude[y0:y1, x0:x1].mean())
    motion['movement_asymmetry'] = {
        feature: float((motion[f'left_{feature}'] - motion[f'right_{feature}'])
                       / max(motion[f'left_{feature}'] + motion[f'right_{feature}'], floor, 1e-6))
        for feature in ('eye', 'mouth')}
    return motion


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


# command line

def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Optical flow (u, v, strain) between a rest photo and an expression photo of one person, as '
                    'HTNet reads it, with the movement per eye / mouth-corner region and its left/right asymmetry.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--rest', type=Path, required=True, help='the photo at rest')
    parser.add_argument('--expression', type=Path, required=True,
                        help='the photo of the movement (brow raise, eye closure or smile), same sitting')
    parser.add_argument('--output_dir', type=Path, default=Path('flow_output'),
                        help='folder for flow.png (the network\'s motion image), flow_panel.png (rest, expression, '
                             'flow colours, strain) and motion.json')
    parser.add_argument('--image_size', type=int, default=224, help='side of the face square the flow is computed in')
    parser.add_argument('--region_size', type=int, default=28, help='side of each region crop for the motion summary')
    parser.add_argument('--no_align', action='store_true',
                        help='do not align the expression photo on the eyes and nose (photos already registered)')
    parser.add_argument('--device', default='auto', help='device for MTCNN landmark detection: auto, cpu or cuda')
    parser.add_argument('--cache_dir', default=None,
                        help='landmark cache folder (default: facial_palsy_dataset\'s ./.cache/landmarks)')
    parser.add_argument('--overwrite', action='store_true', help='replace outputs already in --output_dir')
    return parser


def detect_pair(rest_path: Path, expression_path: Path, device: str, cache_dir: str | None
                ) -> tuple[FaceLandmarks, FaceLandmarks]:
    """MTCNN landmarks of both photos (cached); a photo without a detected face is a user error naming it."""
    from facial_palsy_dataset import LandmarkDetector

    detector = LandmarkDetector(device=device, cache_dir=cache_dir, progress=False)
    found = detector.detect_paths([str(rest_path), str(expression_path)])
    for path, result in zip((rest_path, expression_path), found):
        if result is None or result.source != 'detected':
            reason = detector.errors.get(str(path), 'no face found')
            raise UserError(f'{path}: {reason}')
    return found[0], found[1]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    outputs = [args.output_dir / name for name in ('flow.png', 'flow_panel.png', 'motion.json')]
    existing = [str(p) for p in outputs if p.exists()]
    if existing and not args.overwrite:
        raise UserError(f'{existing[0]} already exists; choose another --output_dir or pass --overwrite')
    rest, expression = load_image(args.rest), load_image(args.expression)
    rest_points, expression_points = detect_pair(args.rest, args.expression, args.device, args.cache_dir)
    rest_face, expression_face, face_points = aligned_faces(
        rest, expression, rest_points, None if args.no_align else expression_points, args.image_size)
    flow_img = flow_between(rest_face, expression_face)
    motion = region_motion(flow_img, face_points, args.region_size)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(outputs[0]), cv2.cvtColor(flow_img, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(outputs[1]), cv2.cvtColor(flow_picture(rest_face, expression_face, flow_img), cv2.COLOR_RGB2BGR))
    report = {'rest': str(args.rest), 'expression': str(args.expression), 'aligned': not args.no_align,
              'motion_pixels': {k: v for k, v in motion.items() if k != 'movement_asymmetry'},
              'movement_asymmetry': motion['movement_asymmetry'], 'flow_settings': FLOW_SETTINGS}
    atomic_write_text(outputs[2], json.dumps(report, indent=1) + '\n')
    asym = motion['movement_asymmetry']
    print(f'movement asymmetry (left - right) / (left + right), image sides: eye {asym["eye"]:+.2f}, '
          f'mouth {asym["mouth"]:+.2f}; outputs in {args.output_dir}')
    return report


if __name__ == '__main__':
    run_cli(main)
