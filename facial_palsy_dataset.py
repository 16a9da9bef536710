"""Reading face photos into HTNet inputs for House-Brackmann palsy grading.

Everything that turns a photo into a network input lives here, once, and is shared by training, evaluation,
inference and the attention viewer:

1. ``face_detection.load_image`` decodes a photo; ``face_detection.LandmarkDetector`` finds (and caches) MTCNN's
   five points (left eye, right eye, nose, left and right mouth corner; left = image left).
2. ``face_square`` cuts a square around the face and resizes it to ``face_size``; ``region_mosaic`` cuts a
   ``region_size`` square around each eye and mouth corner and lays the four out as a 2x2 mosaic, as HTNet does for
   micro-expressions. The two sides of the face stay apart and are never mirrored, because in palsy the difference
   between them is the signal.
3. ``make_input`` chains these into the normalised ``(3, S, S)`` tensor (``S = 2 * region_size``, 56 by default).
   ``make_flow_input`` does the same for the ``flow`` input mode: the optical flow (u, v, strain; the maths in
   ``optical_flow.py``) between a rest photo and an expression photo of one person, both cut to the rest photo's
   face square, then into the same mosaic.

How photos become inputs is one plain dict, ``preprocess`` (``default_preprocess``; ``upgrade_preprocess`` reads
any stored one), kept in every checkpoint. ``FacialPalsyDataset`` reads an annotation CSV or ``grade_N`` folders
(the contract: ``annotations.py``); ``CKPlusFacialPalsyDataset`` reads the CK+ sequence layout with a grade
mapping. Both check every image once when they are built, list unusable ones in
``<cache_dir>/skipped_<type>_<split>.csv`` and yield ``(tensor, label)`` like the original HTNet loader.
"""
from __future__ import annotations

import copy
import csv
import io
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

import optical_flow
# the dataset's readers and the detector are re-exported (``__all__``): a user of the datasets needs no other import
from annotations import (GRADE_6_TO_3, IMAGE_EXTENSIONS, LANDMARK_COLUMNS, NEUTRAL_LANDMARK_COLUMNS,  # noqa: F401
                         REQUIRED_COLUMNS, SampleRecord, grade_names, normalise_split, grade_folders,
                         read_annotation_csv, read_table, scan_ckplus, scan_grade_folders)
from face_detection import (DEFAULT_CACHE_DIR, DEFAULT_DETECTOR_SETTINGS,  # noqa: F401
                            LANDMARK_NAMES, LANDMARK_SOURCES, TEMPLATE_LANDMARKS_28, FaceLandmarks, ImageReadError,
                            LandmarkDetector, as_rgb_image, load_image, template_landmarks)
from utils import UserError, atomic_write_text

__all__ = [
    'LANDMARK_COLUMNS', 'REQUIRED_COLUMNS', 'LANDMARK_NAMES', 'REGION_NAMES', 'LANDMARK_SOURCES', 'INPUT_MODES',
    'PHOTO_INPUT_MODES', 'NEUTRAL_LANDMARK_COLUMNS', 'TEMPLATE_LANDMARKS_28', 'DEFAULT_CACHE_DIR', 'IMAGE_EXTENSIONS',
    'ImageReadError', 'load_image', 'FaceLandmarks', 'LandmarkDetector', 'template_landmarks',
    'default_preprocess', 'upgrade_preprocess', 'model_input_size', 'face_square_bounds', 'face_square',
    'aligned_face', 'region_boxes', 'region_mosaic', 'network_image', 'network_image_from_face', 'to_tensor',
    'to_image', 'make_input', 'aligned_faces', 'flow_face', 'flow_image', 'flow_preprocess', 'region_motion',
    'make_flow_input', 'make_flow_network_image', 'SampleRecord', 'read_annotation_csv', 'scan_grade_folders',
    'scan_ckplus', 'FacialPalsyDataset', 'CKPlusFacialPalsyDataset',
]

# Mosaic order: [left_eye | left_mouth] over [right_eye | right_mouth]; indices into LANDMARK_NAMES.
REGION_NAMES = ('left_eye', 'left_mouth', 'right_eye', 'right_mouth')
_REGION_POINTS = (0, 3, 1, 4)
# regions: the eye / mouth-corner mosaic of one photo; face: the whole aligned face; flow: the region mosaic of the
# optical flow between a rest and an expression photo of one sitting (HTNet's original motion input)
INPUT_MODES = ('regions', 'face', 'flow')
PHOTO_INPUT_MODES = ('regions', 'face')  # the modes that read one photo (make_input); flow reads a pair
# The face square: side = max(box width, height) * (1 + margin) around an MTCNN box; without a box,
# LANDMARK_FACE_SCALE * max(inter-ocular distance, eye-to-mouth distance) * (1 + margin), which matches the box
# MTCNN draws on a frontal face (forehead to chin is about 2.5 eye-to-mouth distances).
FACE_MARGIN = 0.1
LANDMARK_FACE_SCALE = 2.5
FACE_CROP_RULE = ('square centred on the MTCNN face box with side max(box width, box height) * (1 + face_margin); '
                  'without a box, centred midway between the eye centre and the mouth centre with side '
                  'landmark_face_scale * max(inter-ocular distance, eye-to-mouth distance) * (1 + face_margin); '
                  'parts outside the photo are black; resized to face_size (area interpolation when shrinking)')
DEFAULT_FACE_SIZE = 224
DEFAULT_REGION_SIZE = 28
_FLOW_TRANSFORM_NOTED = False  # the note that flow inputs take no transform is printed once per run


# the preprocess dict

def default_preprocess(input_mode: str = 'regions', face_size: int | None = None, region_size: int | None = None, *,
                       image_size: int | None = None, detector: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """How photos become network inputs, as a plain dict stored in every checkpoint as ``preprocess``.

    ``face_size`` (224) is the side of the face square cut from the photo (``image_size`` is its former name, still
    accepted); the network input is ``input_size = 2 * region_size`` (56).
    ``regions``: the 2x2 mosaic of ``region_size`` crops from the face square.
    ``face``: the whole face square, rotated so the eyes are level, resized to ``input_size``.
    ``flow``: the ``regions`` mosaic of the optical flow image (u, v, strain) between a rest photo and an expression
    photo; the flow settings (``optical_flow.FLOW_SETTINGS``) are stored under ``flow`` so that evaluation and
    inference rebuild the same motion images.
    """
    if face_size is not None and image_size is not None and int(face_size) != int(image_size):
        raise TypeError(f'default_preprocess: face_size {face_size} and image_size {image_size} name the same size')
    if input_mode not in INPUT_MODES:
        raise UserError(f'input_mode {input_mode!r}: choose one of {", ".join(INPUT_MODES)}')
    face_size = int(next((s for s in (face_size, image_size) if s is not None), DEFAULT_FACE_SIZE))
    region_size = int(DEFAULT_REGION_SIZE if region_size is None else region_size)
    if region_size < 2 or face_size < region_size:
        raise UserError(f'image_size {face_size} / region_size {region_size}: need 2 <= region_size <= image_size')
    preprocess = {
        'input_mode': input_mode, 'face_size': face_size, 'region_size': region_size,
        'input_size': 2 * region_size, 'channels': 'RGB', 'mean': [0.5, 0.5, 0.5], 'std': [0.5, 0.5, 0.5],
        'regions': list(REGION_NAMES), 'face_crop': FACE_CROP_RULE, 'face_margin': FACE_MARGIN,
        'landmark_face_scale': LANDMARK_FACE_SCALE, 'detector': {**DEFAULT_DETECTOR_SETTINGS, **(detector or {})},
    }
    return flow_preprocess(preprocess) if input_mode == 'flow' else preprocess


def upgrade_preprocess(preprocess: Mapping[str, Any] | None) -> dict[str, Any]:
    """Any stored preprocess as a complete current one: None gives the defaults; a face-square size stored as
    ``image_size`` (older checkpoints) becomes ``face_size``; missing entries (detector settings, flow settings,
    normalisation, ...) take their defaults; stored values win. A current dict comes back equal."""
    stored = copy.deepcopy(dict(preprocess or {}))
    if 'image_size' in stored:
        size = stored.pop('image_size')
        stored.setdefault('face_size', size)
    mode = stored.get('input_mode') or 'regions'
    complete = default_preprocess(mode, stored.get('face_size'), stored.get('region_size'),
                                  detector=stored.get('detector'))
    if mode == 'flow':
        stored['flow'] = {**optical_flow.FLOW_SETTINGS, **(stored.get('flow') or {})}
    stored.pop('detector', None)
    return {**complete, **stored, 'input_mode': mode}


def flow_preprocess(preprocess: Mapping[str, Any], settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A photo ``preprocess`` for flow inputs: plus ``input_kind='flow'`` and the ``flow`` settings used, so that
    evaluation and inference rebuild exactly the same motion images."""
    return {**preprocess, 'input_kind': 'flow', 'flow': {**optical_flow.FLOW_SETTINGS, **(settings or {})}}


def model_input_size(preprocess: Mapping[str, Any]) -> int:
    """Side of the network input: 56 for the default 28-pixel regions mosaic."""
    return int(preprocess.get('input_size') or 2 * int(preprocess.get('region_size', DEFAULT_REGION_SIZE)))


def _face_size(preprocess: Mapping[str, Any]) -> int:
    return int(preprocess.get('face_size', preprocess.get('image_size', DEFAULT_FACE_SIZE)))


# face squares and region crops

def _check_preprocess(preprocess: Mapping[str, Any]) -> None:
    mode = preprocess.get('input_mode', 'regions')
    if mode not in INPUT_MODES:
        raise UserError(f'preprocess input_mode {mode!r} is not one of {", ".join(INPUT_MODES)}')


def _points_of(landmarks: Any, box: Any) -> tuple[np.ndarray, np.ndarray | None]:
    if isinstance(landmarks, FaceLandmarks):
        box = landmarks.box if box is None else box
        landmarks = landmarks.points
    points = np.asarray(landmarks, dtype=np.float32).reshape(5, 2)
    return points, None if box is None else np.asarray(box, dtype=np.float32).reshape(4)


def face_square_bounds(landmarks: Any, box: Any = None, *, margin: float = FACE_MARGIN,
                       landmark_scale: float = LANDMARK_FACE_SCALE) -> np.ndarray:
    """The face square ``[x0, y0, x1, y1]`` in photo pixels (integers, may reach outside the photo); the rule is
    ``FACE_CROP_RULE``."""
    points, box = _points_of(landmarks, box)
    if box is not None and np.all(np.isfinite(box)) and box[2] > box[0] and box[3] > box[1]:
        centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], dtype=np.float64)
        side = max(box[2] - box[0], box[3] - box[1])
    else:
        eyes, mouth = points[[0, 1]].mean(axis=0), points[[3, 4]].mean(axis=0)
        centre = ((eyes + mouth) / 2).astype(np.float64)
        side = landmark_scale * max(float(np.linalg.norm(points[1] - points[0])), float(np.linalg.norm(mouth - eyes)))
    length = max(2, round(float(side) * (1.0 + margin)))
    x0, y0 = (math.floor(c - length / 2 + 0.5) for c in centre)  # rounded half up: no float-noise jitter
    return np.array([x0, y0, x0 + length, y0 + length], dtype=np.int64)


def face_square(image: np.ndarray, landmarks: Any, box: Any = None, face_size: int = DEFAULT_FACE_SIZE, *,
                margin: float = FACE_MARGIN, landmark_scale: float = LANDMARK_FACE_SCALE
                ) -> tuple[np.ndarray, np.ndarray]:
    """Cut the face square out of a photo and resize it: ``(face_size x face_size x 3 uint8, landmarks (5, 2) in
    it)``. ``landmarks`` is a (5, 2) array in photo pixels or a ``FaceLandmarks`` (whose box is used)."""
    points, box = _points_of(landmarks, box)
    x0, y0, x1, y1 = (int(v) for v in face_square_bounds(points, box, margin=margin, landmark_scale=landmark_scale))
    height, width = image.shape[:2]
    crop = image[max(y0, 0):min(y1, height), max(x0, 0):min(x1, width)]
    pads = (max(0, -y0), max(0, y1 - height), max(0, -x0), max(0, x1 - width))
    if crop.size == 0:
        crop = np.zeros((y1 - y0, x1 - x0, 3), dtype=np.uint8)
    elif any(pads):
        crop = cv2.copyMakeBorder(crop, *pads, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    side = x1 - x0
    interpolation = cv2.INTER_AREA if side > face_size else cv2.INTER_LINEAR
    face = cv2.resize(crop, (face_size, face_size), interpolation=interpolation)
    scale = face_size / side
    return face, ((points - np.array([x0, y0], dtype=np.float32)) * scale).astype(np.float32)


def aligned_face(face_image: np.ndarray, face_landmarks: Any, output_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The face rotated about its centre so that the eye line is level, resized to ``output_size`` (the ``face``
    input mode). Returns ``(image, landmarks in it)``; nothing is mirrored."""
    points = np.asarray(face_landmarks, dtype=np.float32).reshape(5, 2)
    height, width = face_image.shape[:2]
    dx, dy = points[1] - points[0]
    angle = math.degrees(math.atan2(float(dy), float(dx))) if (dx or dy) else 0.0
    matrix = cv2.getRotationMatrix2D((width / 2.0, height / 2.0), angle, 1.0)
    rotated = cv2.warpAffine(face_image, matrix, (width, height), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    points = points @ matrix[:, :2].T.astype(np.float32) + matrix[:, 2].astype(np.float32)
    interpolation = cv2.INTER_AREA if max(width, height) > output_size else cv2.INTER_LINEAR
    resized = cv2.resize(rotated, (output_size, output_size), interpolation=interpolation)
    scale = np.array([output_size / width, output_size / height], dtype=np.float32)
    return resized, (points * scale).astype(np.float32)


def _crop_origins(shape: tuple[int, int], points: np.ndarray, region_size: int) -> np.ndarray:
    """Top-left corners (x, y) of the four region crops, centred on their points and clamped inside the image."""
    height, width = shape
    centres = points[list(_REGION_POINTS)]
    origins = np.floor(centres - region_size / 2 + 0.5)
    origins = np.nan_to_num(origins)
    origins[:, 0] = np.clip(origins[:, 0], 0, max(width - region_size, 0))
    origins[:, 1] = np.clip(origins[:, 1], 0, max(height - region_size, 0))
    return origins.astype(np.int64)


def region_boxes(image: np.ndarray | tuple[int, int], landmarks: Any, region_size: int | Mapping[str, Any] = 28,
                 box: Any = None) -> np.ndarray:
    """The four crop boxes ``[x0, y0, x1, y1]`` (4, 4) float32 in ``REGION_NAMES`` order, for drawing overlays.

    With an int ``region_size``, ``image`` (an array or its ``(height, width)``) is the face image the crops are
    cut from and ``landmarks`` its points. With a ``preprocess`` dict instead, ``image`` is the original photo and
    the boxes are returned in its pixels (for the ``face`` mode: the face square, shape (1, 4)).
    """
    shape = tuple(image.shape[:2]) if isinstance(image, np.ndarray) else tuple(image)
    if isinstance(region_size, Mapping):
        preprocess = region_size
        points, box = _points_of(landmarks, box)
        bounds = face_square_bounds(points, box, margin=preprocess.get('face_margin', FACE_MARGIN),
                                    landmark_scale=preprocess.get('landmark_face_scale', LANDMARK_FACE_SCALE))
        if preprocess.get('input_mode', 'regions') == 'face':
            return bounds.astype(np.float32)[None]
        size = _face_size(preprocess)
        scale = size / float(bounds[2] - bounds[0])
        face_points = (points - bounds[:2].astype(np.float32)) * scale
        face_boxes = region_boxes((size, size), face_points, int(preprocess.get('region_size', 28)))
        return (face_boxes / scale + np.tile(bounds[:2], 2)).astype(np.float32)
    points = np.asarray(landmarks.points if isinstance(landmarks, FaceLandmarks) else landmarks,
                        dtype=np.float32).reshape(5, 2)
    origins = _crop_origins(shape, points, int(region_size))
    return np.concatenate([origins, origins + int(region_size)], axis=1).astype(np.float32)


def region_mosaic(face_image: np.ndarray, face_landmarks: Any, region_size: int = 28) -> np.ndarray:
    """The 2x2 region mosaic ``(2R, 2R, 3)`` uint8 (R = ``region_size``) that HTNet reads::

        +-----------+-------------+
        | left eye  | left mouth  |      left = image left: crops centred on MTCNN points 0 and 3
        +-----------+-------------+
        | right eye | right mouth |      right = image right: points 1 and 4
        +-----------+-------------+

    Each crop is an R x R square centred on its point and shifted inside the image where it would cross an edge
    (as HTNet clamps its centres). Nothing is mirrored: the two sides of the face differ in palsy and the network
    must see each as it is.
    """
    region_size = int(region_size)
    points = np.asarray(face_landmarks, dtype=np.float32).reshape(5, 2)
    height, width = face_image.shape[:2]
    if height < region_size or width < region_size:  # a transform may have shrunk the face: pad, never fail
        face_image = cv2.copyMakeBorder(face_image, 0, max(0, region_size - height), 0,
                                        max(0, region_size - width), cv2.BORDER_CONSTANT, value=(0, 0, 0))
    origins = _crop_origins(face_image.shape[:2], points, region_size)
    crops = [face_image[y:y + region_size, x:x + region_size] for x, y in origins]
    top = np.concatenate([crops[0], crops[1]], axis=1)     # left eye | left mouth corner
    bottom = np.concatenate([crops[2], crops[3]], axis=1)  # right eye | right mouth corner
    return np.ascontiguousarray(np.concatenate([top, bottom], axis=0))


def network_image_from_face(face_image: np.ndarray, face_landmarks: Any, preprocess: Mapping[str, Any]
                            ) -> np.ndarray:
    """The un-normalised network input ``(S, S, 3)`` uint8 from a face square and its landmarks."""
    _check_preprocess(preprocess)
    if preprocess.get('input_mode', 'regions') == 'face':
        return aligned_face(face_image, face_landmarks, model_input_size(preprocess))[0]
    return region_mosaic(face_image, face_landmarks, int(preprocess.get('region_size', 28)))


def network_image(image: np.ndarray, landmarks: Any, preprocess: Mapping[str, Any], box: Any = None) -> np.ndarray:
    """The un-normalised network input ``(S, S, 3)`` uint8 of a photo (for pictures and overlays)."""
    face, points = face_square(image, landmarks, box, _face_size(preprocess),
                               margin=preprocess.get('face_margin', FACE_MARGIN),
                               landmark_scale=preprocess.get('landmark_face_scale', LANDMARK_FACE_SCALE))
    return network_image_from_face(face, points, preprocess)


# tensors

@lru_cache(maxsize=8)
def _normalisation(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std as (C, 1, 1) tensors, built once per setting rather than per sample."""
    return (torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1),
            torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))


def _normalisation_of(preprocess: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    return _normalisation(tuple(preprocess.get('mean', (0.5,) * 3)), tuple(preprocess.get('std', (0.5,) * 3)))


def to_tensor(image: np.ndarray, preprocess: Mapping[str, Any]) -> torch.Tensor:
    """uint8 ``(S, S, 3)`` -> float32 ``(3, S, S)``: scaled to [0, 1], then ``(x - mean) / std``."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    mean, std = _normalisation_of(preprocess)
    return tensor.sub_(mean).div_(std).contiguous()


def to_image(tensor: torch.Tensor, preprocess: Mapping[str, Any]) -> np.ndarray:
    """Inverse of ``to_tensor``: a network input ``(3, S, S)`` back to uint8 ``(S, S, 3)`` for display."""
    mean, std = _normalisation_of(preprocess)
    values = (tensor.detach().float().cpu() * std + mean).clamp(0, 1).mul(255).round()
    return values.byte().permute(1, 2, 0).numpy()


def make_input(image: np.ndarray, landmarks: Any, preprocess: Mapping[str, Any], box: Any = None) -> torch.Tensor:
    """A photo (HxWx3 uint8 RGB) and its five landmarks (array or ``FaceLandmarks``) -> the normalised network
    input ``(3, S, S)`` float32. Training, evaluation, inference and the attention viewer all call this, so a
    model always sees its inputs made the same way. A ``flow`` preprocess needs two photos: ``make_flow_input``."""
    if preprocess.get('input_mode') == 'flow':
        raise UserError('this model reads the optical flow between a rest and an expression photo '
                        '(input_mode flow); give both photos (make_flow_input) rather than one')
    return to_tensor(network_image(as_rgb_image(image), landmarks, preprocess, box), preprocess)



# flow inputs: the optical flow of a rest / expression pair, in the rest photo's face square

def _as_rgb(image: np.ndarray, what: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.shape[0] < 2 or image.shape[1] < 2:
        raise UserError(f'{what}: expected an HxWx3 RGB image, got shape {image.shape}')
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8, copy=False)


def aligned_faces(rest_rgb: np.ndarray, expression_rgb: np.ndarray, rest_landmarks: Any,
                  expression_landmarks: Any = None, face_size: int = DEFAULT_FACE_SIZE, *,
                  margin: float = FACE_MARGIN, landmark_scale: float = LANDMARK_FACE_SCALE,
                  settings: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both photos cut to the rest photo's face square (the expression photo aligned first when its landmarks
    are given, ``optical_flow.align_to_rest`` then ``refine_alignment``): ``(rest face, expression face, rest
    landmarks in the square)``. The two frames flow is read between."""
    rest_rgb = _as_rgb(rest_rgb, 'rest photo')
    expression_rgb = _as_rgb(expression_rgb, 'expression photo')
    optical_flow.landmark_points(rest_landmarks)
    if expression_landmarks is not None:
        expression_rgb = optical_flow.align_to_rest(expression_rgb, expression_landmarks, rest_landmarks,
                                                    rest_rgb.shape[:2])
    # both photos are cut by the rest photo's face square: one frame, so a flow vector is skin movement
    rest_face, face_points = face_square(rest_rgb, rest_landmarks, None, face_size, margin=margin,
                                         landmark_scale=landmark_scale)
    expression_face, _ = face_square(expression_rgb, rest_landmarks, None, face_size, margin=margin,
                                     landmark_scale=landmark_scale)
    if expression_landmarks is not None:
        expression_face = optical_flow.refine_alignment(rest_face, expression_face, settings)
    return rest_face, expression_face, face_points


def flow_face(rest_rgb: np.ndarray, expression_rgb: np.ndarray, rest_landmarks: Any, expression_landmarks: Any = None,
              face_size: int = DEFAULT_FACE_SIZE, *, margin: float = FACE_MARGIN,
              landmark_scale: float = LANDMARK_FACE_SCALE, settings: Mapping[str, Any] | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """``flow_image`` plus the rest landmarks in its frame: ``(flow image (S, S, 3) uint8, landmarks (5, 2))``,
    ready for ``region_mosaic``."""
    rest_face, expression_face, face_points = aligned_faces(
        rest_rgb, expression_rgb, rest_landmarks, expression_landmarks, face_size, margin=margin,
        landmark_scale=landmark_scale, settings=settings)
    return optical_flow.flow_between(rest_face, expression_face, settings), face_points


def flow_image(rest_rgb: np.ndarray, expression_rgb: np.ndarray, rest_landmarks: Any,
               expression_landmarks: Any = None, face_size: int = DEFAULT_FACE_SIZE, **options: Any) -> np.ndarray:
    """The HTNet motion image of a rest / expression pair: (face_size, face_size, 3) uint8 holding u, v and the
    optical strain (encoding: ``optical_flow.encode_flow``), in the face square of the rest photo's landmarks.

    ``rest_landmarks`` are the rest photo's five points (array or ``FaceLandmarks``; its box, if any, sets the
    square). With ``expression_landmarks`` the expression photo is first aligned to the rest photo on the eyes and
    nose, which removes head movement between the shots, then refined by image registration; without them the two
    photos must share the framing (a tripod, or one video). ``options``: ``margin``, ``landmark_scale`` (the
    face-square rule) and ``settings`` (overrides of ``optical_flow.FLOW_SETTINGS``).
    """
    return flow_face(rest_rgb, expression_rgb, rest_landmarks, expression_landmarks, face_size, **options)[0]


def region_motion(flow_img: np.ndarray, face_landmarks: Any, region_size: int = DEFAULT_REGION_SIZE,
                  settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Mean flow magnitude (face-square pixels) in each network region and the left/right movement asymmetry.

    Returns ``{'left_eye', 'left_mouth', 'right_eye', 'right_mouth': float, 'movement_asymmetry': {'eye': float,
    'mouth': float}}`` where ``movement_asymmetry = (left - right) / max(left + right, min_motion)``
    (``optical_flow.FLOW_SETTINGS['min_motion']``, so noise between two still photos stays near 0 instead of any
    ratio): near 0 for a symmetric movement, towards +1 when the image-right side (the patient's left) hardly
    moves, towards -1 for the image-left side (the patient's right). ``face_landmarks`` are the rest landmarks in
    the flow image's frame (``flow_face`` returns them); ``left`` / ``right`` are image sides, as in
    ``REGION_NAMES``.
    """
    boxes = region_boxes(np.asarray(flow_img), optical_flow.landmark_points(face_landmarks).astype(np.float32),
                         int(region_size))
    means = optical_flow.box_motion(flow_img, boxes.astype(int), settings)
    motion: dict[str, Any] = dict(zip(REGION_NAMES, means))
    motion['movement_asymmetry'] = {
        feature: optical_flow.movement_asymmetry(motion[f'left_{feature}'], motion[f'right_{feature}'],
                                                 flow_img.shape[0], settings)
        for feature in ('eye', 'mouth')}
    return motion


def make_flow_network_image(rest_image: np.ndarray, expression_image: np.ndarray, rest_landmarks: Any,
                            expression_landmarks: Any, preprocess: Mapping[str, Any]) -> np.ndarray:
    """The un-normalised ``flow`` network image ``(S, S, 3)`` uint8 of a pair (see ``make_flow_input``): the flow
    image in the rest face square (size, margin and flow settings from ``preprocess``; a photo preprocess gets the
    default flow settings), cut into the region mosaic (or aligned face) at the rest landmarks."""
    if preprocess.get('input_mode') != 'flow':
        preprocess = default_preprocess('flow', _face_size(preprocess), preprocess.get('region_size'))
    flow_img, face_points = flow_face(
        as_rgb_image(rest_image), as_rgb_image(expression_image), rest_landmarks, expression_landmarks,
        _face_size(preprocess), margin=preprocess.get('face_margin', FACE_MARGIN),
        landmark_scale=preprocess.get('landmark_face_scale', LANDMARK_FACE_SCALE), settings=preprocess.get('flow'))
    return network_image_from_face(flow_img, face_points, preprocess)


def make_flow_input(rest_image: np.ndarray, expression_image: np.ndarray, rest_landmarks: Any,
                    expression_landmarks: Any, preprocess: Mapping[str, Any]) -> torch.Tensor:
    """The normalised network input ``(3, S, S)`` of the ``flow`` mode: the optical flow (u, v, strain) from a rest
    photo to an expression photo of one person, in the rest photo's face square, cut into the region mosaic at the
    rest landmarks. Both photos are HxWx3 uint8 RGB; the landmarks are (5, 2) arrays or ``FaceLandmarks`` in each
    photo's own pixels (the expression photo is aligned onto the rest photo on the eyes and nose;
    ``expression_landmarks=None`` trusts the two photos to share the framing). The dataset uses the same images,
    so inference on a pair reuses exactly the training inputs."""
    return to_tensor(make_flow_network_image(rest_image, expression_image, rest_landmarks, expression_landmarks,
                                             preprocess), preprocess)


# datasets


def _dataset_kind(dataset_type: str | None) -> str:
    text = re.sub(r'[^a-z0-9+]', '', str(dataset_type or 'FNP').lower())
    return 'CK+' if text in ('ck+', 'ckplus', 'ck', 'cohnkanade') else str(dataset_type or 'FNP')


def _slug(text: str) -> str:
    return re.sub(r'[^a-z0-9]+', '', text.lower().replace('+', 'plus')) or 'data'


def _check_agrees(preprocess: Mapping[str, Any], **given: Any) -> None:
    """Dataset keywords given beside a ``preprocess`` must say what it says."""
    stored = {'input_mode': preprocess.get('input_mode', 'regions'), 'face_size': _face_size(preprocess),
              'region_size': int(preprocess.get('region_size', DEFAULT_REGION_SIZE))}
    for key, value in given.items():
        if value is not None and str(value) != str(stored[key]):
            name = 'image_size' if key == 'face_size' else key
            raise UserError(f'{name} {value} differs from the preprocess given with it ({key} {stored[key]}); '
                            f'give one of the two')


class FacialPalsyDataset(Dataset):
    """Facial palsy photos with House-Brackmann grades as HTNet inputs: items are ``(tensor (3, S, S), label)``.

    Sources: the annotation CSV ``csv_file`` (rows of ``split``; None / ``all`` takes every row), else the folders
    ``data_root/grade_0 .. grade_5`` (or ``data_root/<split>/grade_N``). With ``dataset_type='CK+'`` and a CSV that
    has no ``image_path`` column (a CK+ grade mapping) or no CSV, the CK+ layout is read as by
    ``CKPlusFacialPalsyDataset``.

    Building the dataset reads every photo once (MTCNN's pass; later builds read the landmark cache instead, which
    records that the unchanged file was readable), so an epoch never meets a bad file. Photos that cannot be used
    are left out and listed with the reason in ``skipped`` and in ``skipped_csv``
    (``<cache_dir>/skipped_<type>_<split>.csv``). Labels are the grades 0-5, or with ``num_classes=3`` mapped
    through ``annotations.GRADE_6_TO_3``.

    How inputs are made: ``preprocess`` (a dict as ``default_preprocess`` builds it, e.g. a checkpoint's), taken as
    it is; without one it is built from ``input_mode``, ``image_size`` (the face square's side, 224) and
    ``region_size`` (28), which otherwise must agree with it. The landmark detector is made from its ``detector``
    settings unless ``detector`` is given.

    ``transform(image, landmarks) -> (image, landmarks)`` receives the face square (``face_size`` pixels, uint8
    RGB) with its five points before the regions are cut, so geometric changes move the regions along; a
    ``transform.mosaic_transform`` (if not None) is then applied to the network input tensor. ``preload=True``
    keeps every face square in memory (``len * face_size**2 * 3`` bytes) for photos that are slow to decode.

    ``input_mode='flow'``: each sample is a pair, the photo (``image_path``, the expression) and its rest photo
    (``neutral_path``; CK+ uses the first frame of the sequence). The landmarks of both come from the same detector
    and cache (fallbacks: the ``neutral_*`` / landmark columns, then the template); rows without a usable rest photo
    are skipped and listed. The input is ``make_flow_input`` of the pair. No ``transform`` is applied in this mode
    (a photo augmentation would have to move both photos identically, and a changed photo reads as motion); the
    flow mosaic of a sample is therefore fixed, and is computed once and kept in memory (``len * S**2 * 3`` bytes;
    ``preload=True`` computes them all while building).
    """

    def __init__(self, data_root: str | os.PathLike, csv_file: str | os.PathLike | None = None,
                 dataset_type: str = 'FNP', image_size: int | None = None, transform: Callable | None = None,
                 split: str | None = 'train', *, region_size: int | None = None, input_mode: str | None = None,
                 num_classes: int = 6, cache_dir: str | os.PathLike | bool | None = None,
                 device: str | torch.device = 'cpu', verbose: bool = True, preload: bool = False,
                 detector: LandmarkDetector | None = None, preprocess: Mapping[str, Any] | None = None):
        super().__init__()
        self.data_root = Path(data_root)
        if not self.data_root.is_dir():
            raise UserError(f'data_root {self.data_root}: folder not found')
        if int(num_classes) not in (3, 6):
            raise UserError(f'num_classes {num_classes}: choose 6 (House-Brackmann I-VI) or 3 (simplified)')
        self.csv_file = None if csv_file in (None, '') else self._find_csv(csv_file)
        self.dataset_type = _dataset_kind(dataset_type)
        self.split = normalise_split(split)
        self.num_classes = int(num_classes)
        self.class_names = grade_names(self.num_classes)
        if preprocess is None:
            detector = detector or LandmarkDetector(device=device, cache_dir=cache_dir, progress=verbose)
            preprocess = default_preprocess(input_mode or 'regions', image_size, region_size,
                                            detector=detector.settings)
        else:
            _check_agrees(preprocess, input_mode=input_mode, face_size=image_size, region_size=region_size)
            detector = detector or LandmarkDetector(device=device, cache_dir=cache_dir, progress=verbose,
                                                    **dict(preprocess.get('detector') or {}))
        self.preprocess = dict(preprocess)
        self.input_mode = self.preprocess.get('input_mode', 'regions')  # before the transform, whose setter reads it
        self.face_size = _face_size(self.preprocess)
        self.image_size = self.face_size  # the former name of face_size
        self.region_size = int(self.preprocess.get('region_size', DEFAULT_REGION_SIZE))
        self.transform = transform
        self.verbose = verbose
        self.cache_dir = detector.cache_dir
        # network images (uint8) that never change: every flow image, and every image of a split read without a
        # transform (validation, test); computed on first use, so later epochs skip reading and cropping the photo
        self._network_images: dict[int, np.ndarray] = {}
        records, skipped = self._read_records()
        self._build(records, skipped, detector)
        self._faces = self._preload() if preload else None

    @property
    def transform(self) -> Callable | None:
        return self._transform

    @transform.setter
    def transform(self, transform: Callable | None) -> None:
        global _FLOW_TRANSFORM_NOTED
        self._transform = transform
        if transform is not None and self.input_mode == 'flow' and not _FLOW_TRANSFORM_NOTED:
            _FLOW_TRANSFORM_NOTED = True
            print('note: input_mode flow applies no augmentation or mirroring (the transform is ignored): a photo '
                  'change would read as motion, and both photos of a pair would have to change alike')

    # reading the annotations

    def _find_csv(self, csv_file: str | os.PathLike) -> Path:
        path = Path(csv_file)
        if not path.is_file() and not path.is_absolute() and (self.data_root / path).is_file():
            return self.data_root / path  # a CSV named relative to data_root
        return path

    def _read_records(self) -> tuple[list[SampleRecord], list[tuple[str, str]]]:
        if self.dataset_type == 'CK+':
            if self.csv_file is not None:
                columns = read_table(self.csv_file, 'grade mapping CSV').columns
                if 'image_path' not in columns:
                    return scan_ckplus(self.data_root, self.csv_file, self.split, self.verbose)
            elif not grade_folders(self.data_root):
                return scan_ckplus(self.data_root, None, self.split, self.verbose)
        if self.csv_file is not None:
            return read_annotation_csv(self.csv_file, self.data_root, self.split, self.verbose)
        return scan_grade_folders(self.data_root, self.split, self.verbose)

    # landmarks, bookkeeping and the skipped list

    def _build(self, records: list[SampleRecord], skipped: list[tuple[str, str]], detector: LandmarkDetector
               ) -> None:
        if self.input_mode == 'flow':
            kept, neutral_faces = self._detect_pairs(records, skipped, detector)
        else:
            faces = detector.detect_paths([r.path for r in records], [r.annotation for r in records],
                                          on_error='skip')
            kept, neutral_faces = [], None
            for record, face in zip(records, faces):
                if face is None:
                    skipped.append((record.path, detector.errors.get(record.path, 'unreadable')))
                else:
                    kept.append((record, face))
        self.records = [record for record, _ in kept]
        self.landmarks = [face for _, face in kept]
        # flow mode: the rest photo's landmarks, aligned with self.records; None in the other modes
        self.neutral_landmarks = neutral_faces
        self.paths = [r.path for r in self.records]
        self.grades = [r.grade for r in self.records]
        self.labels = [GRADE_6_TO_3[g] if self.num_classes == 3 else g for g in self.grades]
        self.sides = [r.side for r in self.records]
        self.subjects = [r.subject for r in self.records]
        # where each subject came from: column (the CSV's subject), folder (a patient folder) or name (the file name)
        self.subject_sources = [r.subject_source for r in self.records]
        self.neutral_paths = [r.neutral_path for r in self.records]
        self.skipped = skipped
        counts = Counter(face.source for face in self.landmarks)
        self.landmark_counts = {source: counts.get(source, 0) for source in LANDMARK_SOURCES}
        self.skipped_csv = self._write_skipped()
        if self.verbose:
            self._print_summary()
        if not self.records:
            source = self.csv_file or self.data_root
            listed = f'; reasons in {self.skipped_csv}' if self.skipped_csv else ''
            raise UserError(f'{source}: no usable image for split "{self.split or "all"}" '
                            f'({len(skipped)} skipped{listed})')

    def _detect_pairs(self, records: list[SampleRecord], skipped: list[tuple[str, str]],
                      detector: LandmarkDetector) -> tuple[list[tuple[SampleRecord, FaceLandmarks]],
                                                           list[FaceLandmarks]]:
        """Landmarks of the expression and the rest photo of every pair, in one batched and cached pass; pairs
        with no rest photo, or one of the two photos unusable, go to ``skipped`` with the reason."""
        paired = []
        for record in records:
            if record.neutral_path:
                paired.append(record)
            else:
                skipped.append((record.path, 'no neutral_path (rest photo), which input_mode flow needs'))
        count = len(paired)
        faces = detector.detect_paths([r.path for r in paired] + [r.neutral_path for r in paired],
                                      [r.annotation for r in paired] + [r.neutral_annotation for r in paired],
                                      on_error='skip')
        kept, neutral_faces = [], []
        for record, face, neutral_face in zip(paired, faces[:count], faces[count:]):
            if face is None:
                skipped.append((record.path, detector.errors.get(record.path, 'unreadable')))
            elif neutral_face is None:
                reason = detector.errors.get(record.neutral_path, 'unreadable')
                skipped.append((record.path, f'rest photo {record.neutral_path}: {reason}'))
            else:
                kept.append((record, face))
                neutral_faces.append(neutral_face)
        return kept, neutral_faces

    def _write_skipped(self) -> Path | None:
        if self.cache_dir is None:
            return None
        path = self.cache_dir / f'skipped_{_slug(self.dataset_type)}_{self.split or "all"}.csv'
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(['path', 'reason'])
        writer.writerows(self.skipped)
        try:
            atomic_write_text(path, buffer.getvalue())
        except OSError as err:
            print(f'warning: cannot write {path} ({err.strerror or err})')
            return None
        return path

    def _print_summary(self) -> None:
        counts = ', '.join(f'{source} {self.landmark_counts[source]}' for source in LANDMARK_SOURCES)
        missed = self.landmark_counts['annotation'] + self.landmark_counts['template']
        print(f'{self.dataset_type} {self.split or "all"}: {len(self)} images; landmarks: {counts}; '
              f'faces not detected: {missed}')
        if self.neutral_landmarks is not None:
            rest = Counter(face.source for face in self.neutral_landmarks)
            print(f'  rest photos of the pairs: landmarks: '
                  f'{", ".join(f"{source} {rest.get(source, 0)}" for source in LANDMARK_SOURCES)}')
        if self.skipped:
            print(f'  skipped {len(self.skipped)} (listed in {self.skipped_csv or "dataset.skipped"}); first: '
                  f'{self.skipped[0][0]}: {self.skipped[0][1]}')

    def _preload(self) -> np.ndarray | None:
        if self.input_mode == 'flow':
            for index in tqdm(range(len(self)), desc='computing optical flow', unit='pair',
                              disable=not self.verbose):
                self._network_images[index] = self._network_image(index)
            return None
        faces = np.empty((len(self), self.face_size, self.face_size, 3), dtype=np.uint8)
        points = np.empty((len(self), 5, 2), dtype=np.float32)
        for index in tqdm(range(len(self)), desc='loading faces', unit='img', disable=not self.verbose):
            faces[index], points[index] = self._face_from_disk(index)
        self._face_points = points
        return faces

    # items

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, index: int) -> np.ndarray:
        return self._load_checked(self.paths[index], self.landmarks[index])

    @staticmethod
    def _load_checked(path: str, landmarks: FaceLandmarks) -> np.ndarray:
        try:
            image = load_image(path)
        except ImageReadError as err:
            raise ImageReadError(f'{err} (it was readable when the dataset was built; has it changed?)') from None
        expected = landmarks.image_size
        if expected is not None and (image.shape[1], image.shape[0]) != tuple(expected):
            raise ImageReadError(f'{path}: changed after the dataset was built (was {expected[0]}x{expected[1]}, '
                                 f'now {image.shape[1]}x{image.shape[0]}); build the dataset again')
        return image

    def _face_from_disk(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        face = self.landmarks[index]
        return face_square(self._load(index), face.points, face.box, self.face_size,
                           margin=self.preprocess['face_margin'],
                           landmark_scale=self.preprocess['landmark_face_scale'])

    def _face(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if getattr(self, '_faces', None) is not None:
            return self._faces[index].copy(), self._face_points[index].copy()
        return self._face_from_disk(index)

    def _network_image(self, index: int) -> np.ndarray:
        """The un-normalised network image (uint8) of photo or pair ``index`` without any transform."""
        if self.input_mode == 'flow':
            rest_face = self.neutral_landmarks[index]
            rest = self._load_checked(self.neutral_paths[index], rest_face)
            return make_flow_network_image(rest, self._load(index), rest_face, self.landmarks[index], self.preprocess)
        return network_image_from_face(*self._face(index), self.preprocess)

    def _input(self, index: int) -> torch.Tensor:
        if self.input_mode == 'flow' or self.transform is None:
            image = self._network_images.get(index)
            if image is None:
                image = self._network_images[index] = self._network_image(index)
            return to_tensor(image, self.preprocess)
        face, points = self._face(index)
        result = self.transform(face, points)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise TypeError('transform(image, landmarks) must return (image, landmarks)')
        face, points = np.ascontiguousarray(result[0]), np.asarray(result[1], dtype=np.float32)
        tensor = to_tensor(network_image_from_face(face, points, self.preprocess), self.preprocess)
        mosaic_transform = getattr(self.transform, 'mosaic_transform', None)
        return mosaic_transform(tensor) if mosaic_transform is not None else tensor

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self._input(index), self.labels[index]

    def get_sample(self, index: int) -> dict[str, Any]:
        """Item ``index`` with everything known about it: ``image`` (the network input), ``label``, ``grade``
        (0-5), ``side``, ``subject``, ``path``, ``neutral_path``, ``landmark_source``, ``landmarks`` (5, 2) and
        ``box`` in original-photo pixels, ``score`` (MTCNN's confidence or None); in flow mode also the rest
        photo's ``neutral_landmarks`` and ``neutral_landmark_source``."""
        face = self.landmarks[index]
        sample = {'image': self._input(index), 'label': self.labels[index], 'grade': self.grades[index],
                  'side': self.sides[index], 'subject': self.subjects[index], 'path': self.paths[index],
                  'neutral_path': self.neutral_paths[index], 'landmark_source': face.source,
                  'landmarks': face.points.copy(), 'box': None if face.box is None else face.box.copy(),
                  'score': face.score}
        if self.neutral_landmarks is not None:
            rest = self.neutral_landmarks[index]
            sample.update(neutral_landmark_source=rest.source, neutral_landmarks=rest.points.copy())
        return sample

    def __repr__(self) -> str:
        return (f'{type(self).__name__}({self.dataset_type}, split={self.split or "all"}, {len(self)} images, '
                f'{self.num_classes} classes, input {self.preprocess["input_mode"]} '
                f'{model_input_size(self.preprocess)}px)')


class CKPlusFacialPalsyDataset(FacialPalsyDataset):
    """CK+ sequences as palsy samples: the peak (last) frame of each sequence, graded by ``grade_mapping_csv``
    (see ``scan_ckplus``), with the neutral (first) frame's path kept in ``neutral_paths``. Same interface as
    ``FacialPalsyDataset``; without a mapping it refuses with a ``UserError``."""

    def __init__(self, data_root: str | os.PathLike, grade_mapping_csv: str | os.PathLike | None = None,
                 dataset_type: str = 'CK+', image_size: int | None = None, transform: Callable | None = None,
                 split: str | None = 'train', *, csv_file: str | os.PathLike | None = None, **kwargs: Any):
        mapping = grade_mapping_csv if grade_mapping_csv is not None else csv_file
        super().__init__(data_root, mapping, dataset_type='CK+', image_size=image_size, transform=transform,
                         split=split, **kwargs)

    def _read_records(self) -> tuple[list[SampleRecord], list[tuple[str, str]]]:
        return scan_ckplus(self.data_root, self.csv_file, self.split, self.verbose)
