"""Reading face photos into HTNet inputs for House-Brackmann palsy grading.

Everything that turns a photo into a network input lives here, once, and is shared by training, evaluation,
inference and the attention viewer:

1. ``load_image`` decodes any photo (grayscale, RGBA, 16-bit, palette, EXIF-rotated, very large) to RGB uint8.
2. ``LandmarkDetector`` finds MTCNN's five points (left eye, right eye, nose, left and right mouth corner; left =
   image left) on batches of photos and caches them on disk, so a photo is read by MTCNN once, ever. A photo
   without a detected face falls back to the annotation's landmarks, then to HTNet's 28x28 template scaled to it.
3. ``face_square`` cuts a square around the face and resizes it to ``image_size``; ``region_mosaic`` cuts a
   ``region_size`` square around each eye and mouth corner and lays the four out as a 2x2 mosaic, as HTNet does for
   micro-expressions. The two sides of the face stay apart and are never mirrored, because in palsy the difference
   between them is the signal.
4. ``make_input`` chains these into the normalised ``(3, S, S)`` tensor (``S = 2 * region_size``, 56 by default).
   ``make_flow_input`` does the same for the ``flow`` input mode: the optical flow (u, v, strain) between a rest
   photo and an expression photo of one person (``optical_flow.py``), cut into the same mosaic.

``FacialPalsyDataset`` reads an annotation CSV (``image_path, grade, side, split``) or ``grade_N`` folders;
``CKPlusFacialPalsyDataset`` reads the CK+ sequence layout with a grade mapping made by ``prepare_dataset.py``.
Both check every image once when they are built, list unusable ones in ``<cache_dir>/skipped_<type>_<split>.csv``
and yield ``(tensor, label)`` like the original HTNet loader.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from utils import GRADE_6_TO_3, UserError, atomic_write_text, grade_names, resolve_device

__all__ = [
    'LANDMARK_COLUMNS', 'REQUIRED_COLUMNS', 'LANDMARK_NAMES', 'REGION_NAMES', 'LANDMARK_SOURCES', 'INPUT_MODES',
    'PHOTO_INPUT_MODES', 'NEUTRAL_LANDMARK_COLUMNS',
    'TEMPLATE_LANDMARKS_28', 'DEFAULT_CACHE_DIR', 'IMAGE_EXTENSIONS',
    'ImageReadError', 'load_image', 'FaceLandmarks', 'LandmarkDetector', 'template_landmarks',
    'default_preprocess', 'model_input_size', 'face_square_bounds', 'face_square', 'aligned_face',
    'region_boxes', 'region_mosaic', 'network_image', 'network_image_from_face', 'to_tensor', 'to_image',
    'make_input', 'make_flow_input', 'make_flow_network_image', 'SampleRecord', 'read_annotation_csv', 'scan_grade_folders', 'scan_ckplus',
    'FacialPalsyDataset', 'CKPlusFacialPalsyDataset',
]

# the shared data contract

REQUIRED_COLUMNS = ['image_path', 'grade', 'side', 'split']
LANDMARK_COLUMNS = ['eye_l_x', 'eye_l_y', 'eye_r_x', 'eye_r_y', 'nose_x', 'nose_y',
                    'mouth_l_x', 'mouth_l_y', 'mouth_r_x', 'mouth_r_y']
# MTCNN's order; "left" is image left (the patient's right side when they face the camera).
LANDMARK_NAMES = ('left_eye', 'right_eye', 'nose', 'left_mouth', 'right_mouth')
# Mosaic order: [left_eye | left_mouth] over [right_eye | right_mouth]; indices into LANDMARK_NAMES.
REGION_NAMES = ('left_eye', 'left_mouth', 'right_eye', 'right_mouth')
_REGION_POINTS = (0, 3, 1, 4)
# the rest photo's landmarks in an annotation CSV (synthetic pairs write them; used when MTCNN misses the face)
NEUTRAL_LANDMARK_COLUMNS = [f'neutral_{c}' for c in LANDMARK_COLUMNS]
LANDMARK_SOURCES = ('detected', 'annotation', 'template')
# regions: the eye / mouth-corner mosaic of one photo; face: the whole aligned face; flow: the region mosaic of the
# optical flow between a rest and an expression photo of one sitting (HTNet's original motion input)
INPUT_MODES = ('regions', 'face', 'flow')
PHOTO_INPUT_MODES = ('regions', 'face')  # the modes that read one photo (make_input); flow reads a pair
SIDES = ('left', 'right', 'none', 'unknown')
SPLIT_ALIASES = {'training': 'train', 'valid': 'val', 'validation': 'val', 'dev': 'val', 'testing': 'test'}
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')

# HTNet's fallback when MTCNN finds no face on its 28x28 inputs (main_HTNet.py), kept for faithful results.
TEMPLATE_LANDMARKS_28 = np.array([[9.528073, 11.062551], [21.396168, 10.919773], [15.380184, 17.380562],
                                  [10.255435, 22.121233], [20.583706, 22.25584]], dtype=np.float32)

DEFAULT_CACHE_DIR = Path('.cache') / 'landmarks'
# Photos are detected on a copy whose longest side is at most this: MTCNN's pyramid on a 24-megapixel photo costs
# seconds and finds nothing a 1024-pixel copy misses (faces smaller than ~20 px there are not gradable anyway).
DETECT_MAX_SIDE = 1024
# Images in a detection batch must share one size; copies are padded (black, bottom/right, so coordinates do not
# move) up to a multiple of this, which batches photos of nearly the same size together.
_DETECT_BUCKET = 32
_DETECT_BATCH_PIXELS = 8 * 1024 * 1024
# The face square: side = max(box width, height) * (1 + margin) around an MTCNN box; without a box,
# LANDMARK_FACE_SCALE * max(inter-ocular distance, eye-to-mouth distance) * (1 + margin), which matches the box
# MTCNN draws on a frontal face (forehead to chin is about 2.5 eye-to-mouth distances).
FACE_MARGIN = 0.1
LANDMARK_FACE_SCALE = 2.5
FACE_CROP_RULE = ('square centred on the MTCNN face box with side max(box width, box height) * (1 + face_margin); '
                  'without a box, centred midway between the eye centre and the mouth centre with side '
                  'landmark_face_scale * max(inter-ocular distance, eye-to-mouth distance) * (1 + face_margin); '
                  'parts outside the photo are black; resized to image_size (area interpolation when shrinking)')
_MTCNN_FIXED = {'keep_all': False, 'select_largest': True, 'post_process': False}
DEFAULT_DETECTOR_SETTINGS = {'min_face_size': 20, 'thresholds': [0.6, 0.7, 0.7], 'factor': 0.709,
                             'max_side': DETECT_MAX_SIDE}
_CACHE_VERSION = 1
_FLOW_TRANSFORM_NOTED = False  # the note that flow inputs take no transform is printed once per run


# reading images

class ImageReadError(UserError):
    """An image that cannot be used: missing, empty, corrupt, truncated or of an unknown format. The message
    starts with the file's path."""


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read a photo as ``HxWx3`` uint8 RGB, or raise ``ImageReadError('<path>: <reason>')``.

    JPEGs are decoded by OpenCV with their EXIF orientation applied (phones store portraits sideways); other
    formats keep their depth and alpha so that 16-bit images are scaled rather than clipped and transparent pixels
    are laid over white rather than left as whatever colour they hide. Formats OpenCV cannot read (GIF, palette
    oddities) go through Pillow. A JPEG cut short (an interrupted copy) is refused instead of being returned with a
    grey lower half.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)  # fromfile + imdecode also reads non-ASCII paths on Windows
    except FileNotFoundError:
        raise ImageReadError(f'{path}: file not found') from None
    except IsADirectoryError:
        raise ImageReadError(f'{path}: is a folder, not an image') from None
    except OSError as err:
        raise ImageReadError(f'{path}: cannot be read ({err.strerror or err})') from None
    if data.size == 0:
        raise ImageReadError(f'{path}: empty file')
    image = _decode_with_opencv(path, data)
    if image is None:
        image = _decode_with_pillow(path)
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageReadError(f'{path}: image has no pixels')
    return image


def _decode_with_opencv(path: Path, data: np.ndarray) -> np.ndarray | None:
    is_jpeg = data.size > 3 and data[0] == 0xFF and data[1] == 0xD8
    if is_jpeg and _jpeg_is_truncated(data.tobytes()):
        raise ImageReadError(f'{path}: truncated JPEG (the file ends before the image data does)')
    try:
        if is_jpeg:
            image = cv2.imdecode(data, cv2.IMREAD_COLOR)  # applies EXIF orientation; grey and CMYK -> BGR
            return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None
    return None if image is None else _to_rgb8(image, bgr=True)


def _jpeg_is_truncated(data: bytes) -> bool:
    """Walk the JPEG segments up to the first scan; the file is whole if an end-of-image marker follows it. Bytes
    after the end marker (phone "motion photos" append a video) are allowed."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return False  # not where a marker should be: leave the verdict to the decoder
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0xDA:  # start of scan: entropy-coded data never contains FF D9 (0xFF is stuffed)
            return data.find(b'\xff\xd9', i) < 0
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:
            i += 2
        else:
            i += 2 + ((data[i + 2] << 8) | data[i + 3])
    return True


def _decode_with_pillow(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            if image.mode in ('I;16', 'I;16B', 'I;16L', 'I', 'F'):
                array = np.asarray(image)
                if image.mode == 'I' and array.max(initial=0) > 65535:
                    array = array >> 16
                return _to_rgb8(array.astype(np.uint16) if image.mode != 'F' else array, bgr=False)
            if image.mode in ('RGBA', 'LA', 'PA') or (image.mode == 'P' and 'transparency' in image.info):
                return _to_rgb8(np.asarray(image.convert('RGBA')), bgr=False)
            return np.array(image.convert('RGB'))
    except Image.DecompressionBombError as err:
        raise ImageReadError(f'{path}: too many pixels to decode safely ({err})') from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f'{path}: not a readable image ({err})') from None


def _to_rgb8(image: np.ndarray, bgr: bool) -> np.ndarray:
    """Any decoded array (grey, grey+alpha, 3 or 4 channels; uint8/uint16/float) -> HxWx3 uint8 RGB."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)  # 257 * v -> v exactly
    elif image.dtype != np.uint8:
        image = image.astype(np.float32)
        if image.size and float(np.nanmax(image)) <= 1.0:
            image = image * 255.0
        image = np.clip(np.nan_to_num(image), 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = image[:, :, None]
    channels = image.shape[2]
    alpha = None
    if channels in (2, 4):
        alpha, image = image[:, :, -1], image[:, :, :-1]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif bgr:
        image = image[:, :, ::-1]
    if alpha is not None and alpha.min() < 255:
        weight = alpha[:, :, None].astype(np.float32) / 255.0
        image = image.astype(np.float32) * weight + 255.0 * (1.0 - weight)  # transparent -> white
        image = np.rint(image)
    return np.ascontiguousarray(image, dtype=np.uint8)


def _as_rgb_image(image: Any) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        return image
    if image.ndim not in (2, 3):
        raise ValueError(f'expected an HxW or HxWxC image, got shape {image.shape}')
    return _to_rgb8(image, bgr=False)


# landmarks

@dataclass
class FaceLandmarks:
    """MTCNN's five points of one face, in original-image pixels.

    ``points`` (5, 2) float32 (x, y): left eye, right eye, nose, left mouth corner, right mouth corner (left =
    image left). ``box`` (4,) float32 ``x1, y1, x2, y2`` or None. ``source``: ``detected`` (MTCNN), ``annotation``
    (the CSV's landmark columns) or ``template`` (HTNet's template scaled to the photo). ``image_size`` is the
    photo's ``(width, height)`` when known.
    """
    points: np.ndarray
    box: np.ndarray | None = None
    source: str = 'detected'
    score: float | None = None
    image_size: tuple[int, int] | None = None

    def __post_init__(self):
        self.points = np.asarray(self.points, dtype=np.float32).reshape(5, 2)
        if self.box is not None:
            self.box = np.asarray(self.box, dtype=np.float32).reshape(4)
        if self.source not in LANDMARK_SOURCES:
            raise ValueError(f'landmark source {self.source!r} is not one of {LANDMARK_SOURCES}')


def template_landmarks(width: int, height: int) -> np.ndarray:
    """HTNet's 28x28 fallback landmarks scaled to a ``width x height`` image: (5, 2) float32."""
    return TEMPLATE_LANDMARKS_28 * np.array([width / 28.0, height / 28.0], dtype=np.float32)


@lru_cache(maxsize=1)
def _facenet_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version('facenet-pytorch')
    except PackageNotFoundError:
        return 'unknown'


def _detection_copy(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float, float]:
    """A copy with the longest side at most ``max_side``, and the factors that take its points back."""
    height, width = image.shape[:2]
    longest = max(height, width)
    if longest <= max_side:
        return image, 1.0, 1.0
    scale = max_side / longest
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return small, width / size[0], height / size[1]


class LandmarkDetector:
    """MTCNN five-point landmarks for photos, batched and cached on disk.

    MTCNN (facenet-pytorch, weights shipped inside the package) is built once, lazily: a run whose photos are all
    in the cache never loads it. Settings: ``MTCNN(keep_all=False, select_largest=True, post_process=False)`` and
    the tunables ``min_face_size``, ``thresholds``, ``factor`` (MTCNN's) and ``max_side`` (photos are detected on a
    copy at most this long and the points scaled back). The largest face of a photo is used.

    The cache (``cache_dir``; default ``./.cache/landmarks``; ``False`` turns it off) holds one small JSON file per
    photo, keyed by its resolved path, size and modification time (ns) and by the detector settings, so an edited
    photo or a change of settings is detected afresh and nothing stale is reused.
    """

    def __init__(self, device: str | torch.device = 'cpu', cache_dir: str | os.PathLike | bool | None = None,
                 batch_size: int = 16, progress: bool = True, **mtcnn_settings: Any):
        self.device = resolve_device(str(device))
        self.cache_dir = None if cache_dir is False else Path(DEFAULT_CACHE_DIR if cache_dir in (None, True)
                                                              else cache_dir)
        self.batch_size = max(1, int(batch_size))
        self.progress = progress
        self.settings = self._check_settings(mtcnn_settings)
        self.errors: dict[str, str] = {}  # path -> reason, for the photos of the last detect_paths call
        self.mtcnn_calls = 0  # batches run through MTCNN by this detector
        self._mtcnn = None
        self._cache_warned = False
        self._cache_tag = json.dumps({**self.settings, **_MTCNN_FIXED, 'facenet_pytorch': _facenet_version(),
                                      'version': _CACHE_VERSION}, sort_keys=True)

    @staticmethod
    def _check_settings(given: Mapping[str, Any]) -> dict[str, Any]:
        settings = dict(DEFAULT_DETECTOR_SETTINGS)
        for key, value in given.items():
            if key in _MTCNN_FIXED:
                if value != _MTCNN_FIXED[key]:
                    raise ValueError(f'LandmarkDetector always runs MTCNN with {key}={_MTCNN_FIXED[key]}')
            elif key not in settings:
                raise TypeError(f'unknown MTCNN setting {key!r}; LandmarkDetector takes {sorted(settings)}')
            else:
                settings[key] = value
        settings['min_face_size'] = int(settings['min_face_size'])
        settings['thresholds'] = [float(t) for t in settings['thresholds']]
        settings['factor'] = float(settings['factor'])
        settings['max_side'] = int(settings['max_side'])
        if len(settings['thresholds']) != 3 or not 0 < settings['factor'] < 1 or settings['min_face_size'] < 1:
            raise ValueError(f'invalid MTCNN settings {settings}')
        return settings

    # MTCNN

    @property
    def mtcnn(self):
        if self._mtcnn is None:
            self._mtcnn = self._build_mtcnn()
        return self._mtcnn

    def _build_mtcnn(self):
        try:
            from facenet_pytorch import MTCNN
        except ImportError as err:
            raise UserError(f'face detection needs facenet-pytorch (pip install facenet-pytorch==2.5.3): {err}') \
                from err
        return MTCNN(keep_all=False, select_largest=True, post_process=False, device=self.device,
                     min_face_size=self.settings['min_face_size'], thresholds=self.settings['thresholds'],
                     factor=self.settings['factor'])

    def detect_images(self, images: Sequence[np.ndarray]) -> list[FaceLandmarks | None]:
        """Detect the largest face in each image (RGB arrays of any sizes); None where MTCNN finds none. No cache."""
        prepared = [_detection_copy(_as_rgb_image(image), self.settings['max_side']) for image in images]
        return self._detect_prepared(prepared, [tuple(np.asarray(im).shape[1::-1]) for im in images])

    def _detect_prepared(self, prepared: Sequence[tuple[np.ndarray, float, float]],
                         sizes: Sequence[tuple[int, int]], bar=None) -> list[FaceLandmarks | None]:
        results: list[FaceLandmarks | None] = [None] * len(prepared)
        buckets: dict[tuple[int, int], list[int]] = {}
        for index, (copy, _, _) in enumerate(prepared):
            height, width = copy.shape[:2]
            if min(height, width) < self.settings['min_face_size']:
                if bar is not None:
                    bar.update(1)
                continue  # smaller than the smallest face MTCNN looks for (its pyramid would be empty)
            key = (-(-height // _DETECT_BUCKET) * _DETECT_BUCKET, -(-width // _DETECT_BUCKET) * _DETECT_BUCKET)
            buckets.setdefault(key, []).append(index)
        for (height, width), indices in buckets.items():
            per_batch = max(1, min(self.batch_size, _DETECT_BATCH_PIXELS // (height * width)))
            for start in range(0, len(indices), per_batch):
                chunk = indices[start:start + per_batch]
                batch = np.zeros((len(chunk), height, width, 3), dtype=np.uint8)
                for row, index in enumerate(chunk):
                    copy = prepared[index][0]
                    batch[row, :copy.shape[0], :copy.shape[1]] = copy
                for index, face in zip(chunk, self._run_mtcnn(batch)):
                    if face is not None:
                        _, sx, sy = prepared[index]
                        face.points *= np.array([sx, sy], dtype=np.float32)
                        face.box *= np.array([sx, sy, sx, sy], dtype=np.float32)
                        face.image_size = tuple(int(v) for v in sizes[index])
                    results[index] = face
                if bar is not None:
                    bar.update(len(chunk))
        return results

    def _run_mtcnn(self, batch: np.ndarray) -> list[FaceLandmarks | None]:
        try:
            self.mtcnn_calls += 1
            boxes, probs, points = self.mtcnn.detect(batch, landmarks=True)
        except (RuntimeError, ValueError) as err:
            if len(batch) > 1:  # e.g. out of memory: try one at a time
                return [face for single in batch for face in self._run_mtcnn(single[None])]
            warnings.warn(f'face detection failed on one image ({err}); using fallback landmarks')
            return [None]
        faces = []
        for box, prob, point in zip(boxes, probs, points):
            if box is None or point is None or len(box) == 0:
                faces.append(None)
                continue
            box = np.asarray(box, dtype=np.float32).reshape(-1, 4)[0]
            point = np.asarray(point, dtype=np.float32).reshape(-1, 5, 2)[0]
            score = np.asarray(prob, dtype=np.float32).reshape(-1)[0]
            faces.append(FaceLandmarks(points=point.copy(), box=box.copy(), source='detected', score=float(score)))
        return faces

    # files and the cache

    def detect_paths(self, paths: Sequence[str | os.PathLike], fallback: Sequence[Any] | None = None, *,
                     on_error: str = 'raise') -> list[FaceLandmarks | None]:
        """Landmarks of the photos at ``paths``, from the cache or from MTCNN (batched, with a progress bar).

        Where no face is found, ``fallback[i]`` (annotation points (5, 2) in original pixels, or None) is used,
        else ``template_landmarks``. An unreadable photo raises ``ImageReadError`` (``on_error='raise'``, after the
        others are cached) or gives None with its reason in ``self.errors`` (``on_error='skip'``).
        """
        if on_error not in ('raise', 'skip'):
            raise ValueError("on_error must be 'raise' or 'skip'")
        paths = [str(p) for p in paths]
        fallback = list(fallback) if fallback is not None else [None] * len(paths)
        if len(fallback) != len(paths):
            raise ValueError(f'{len(fallback)} fallback landmarks for {len(paths)} paths')
        self.errors = {}
        raw: list[dict | None] = [None] * len(paths)
        keys: list[str | None] = [None] * len(paths)
        misses = []
        for index, path in enumerate(paths):
            try:
                stat = os.stat(path)
            except OSError as err:
                self.errors[path] = 'file not found' if isinstance(err, FileNotFoundError) else \
                    f'cannot be read ({err.strerror or err})'
                continue
            keys[index] = self._cache_key(path, stat)
            raw[index] = self._read_cache(keys[index])
            if raw[index] is None:
                misses.append(index)
        if misses:
            self._detect_misses(paths, misses, keys, raw)
        if self.errors and on_error == 'raise':
            first = next(iter(self.errors.items()))
            more = f' (and {len(self.errors) - 1} more)' if len(self.errors) > 1 else ''
            raise ImageReadError(f'{first[0]}: {first[1]}{more}')
        return [None if entry is None else _resolve_landmarks(entry, fallback[i]) for i, entry in enumerate(raw)]

    def _detect_misses(self, paths: list[str], misses: list[int], keys: list[str | None],
                       raw: list[dict | None]) -> None:
        chunk_size = self.batch_size * 4  # photos decoded at once: bounds the memory a run of large photos takes
        workers = max(1, min(4, os.cpu_count() or 1))
        with tqdm(total=len(misses), desc='detecting faces', unit='img', disable=not self.progress,
                  dynamic_ncols=True) as bar, ThreadPoolExecutor(max_workers=workers) as pool:
            for start in range(0, len(misses), chunk_size):
                chunk = misses[start:start + chunk_size]
                loaded = list(pool.map(lambda i: self._load_for_detection(paths[i]), chunk))
                ready = [(index, item) for index, item in zip(chunk, loaded) if not isinstance(item, str)]
                for index, item in zip(chunk, loaded):
                    if isinstance(item, str):
                        self.errors[paths[index]] = item
                        bar.update(1)
                faces = self._detect_prepared([item[0] for _, item in ready], [item[1] for _, item in ready], bar)
                for (index, (_, size)), face in zip(ready, faces):
                    entry = {'width': size[0], 'height': size[1], 'points': None, 'box': None, 'score': None}
                    if face is not None:
                        entry.update(points=face.points.tolist(), box=face.box.tolist(), score=face.score)
                    raw[index] = entry
                    self._write_cache(keys[index], paths[index], entry)

    def _load_for_detection(self, path: str):
        """(detection copy, (width, height)) or the reason the photo cannot be used."""
        try:
            image = load_image(path)
        except ImageReadError as err:
            message = str(err)
            return message[len(path) + 2:] if message.startswith(f'{path}: ') else message
        return _detection_copy(image, self.settings['max_side']), (image.shape[1], image.shape[0])

    def _cache_key(self, path: str, stat: os.stat_result) -> str:
        text = json.dumps([os.path.realpath(path), stat.st_size, stat.st_mtime_ns, self._cache_tag])
        return hashlib.sha1(text.encode('utf-8')).hexdigest()

    def _read_cache(self, key: str) -> dict | None:
        if self.cache_dir is None:
            return None
        try:
            with open(self.cache_dir / f'{key}.json', encoding='utf-8') as handle:
                entry = json.load(handle)
            if entry.get('version') != _CACHE_VERSION or int(entry['width']) < 1:
                return None
            return entry
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None  # absent or damaged: detect again

    def _write_cache(self, key: str | None, path: str, entry: dict) -> None:
        if self.cache_dir is None or key is None:
            return
        try:
            atomic_write_text(self.cache_dir / f'{key}.json',
                              json.dumps({**entry, 'version': _CACHE_VERSION, 'path': path}))
        except OSError as err:
            if not self._cache_warned:
                print(f'warning: cannot write the landmark cache in {self.cache_dir} ({err.strerror or err}); '
                      f'faces will be detected again next time')
                self._cache_warned = True


def _resolve_landmarks(entry: Mapping[str, Any], fallback: Any) -> FaceLandmarks:
    """Detected points, else the annotation's, else the template: the order every script uses."""
    size = (int(entry['width']), int(entry['height']))
    if entry.get('points') is not None:
        return FaceLandmarks(points=entry['points'], box=entry.get('box'), source='detected',
                             score=entry.get('score'), image_size=size)
    if fallback is not None:
        return FaceLandmarks(points=fallback, source='annotation', image_size=size)
    return FaceLandmarks(points=template_landmarks(*size), source='template', image_size=size)


# from a photo to the network input

def default_preprocess(input_mode: str = 'regions', image_size: int = 224, region_size: int = 28, *,
                       detector: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """How photos become network inputs, as a plain dict stored in every checkpoint as ``preprocess``.

    ``regions``: the 2x2 mosaic of ``region_size`` crops from the face square (``input_size = 2 * region_size``).
    ``face``: the whole face square, rotated so the eyes are level, resized to the same ``input_size``.
    ``flow``: the ``regions`` mosaic of the optical flow image (u, v, strain) between a rest photo and an expression
    photo; the flow settings (``optical_flow.FLOW_SETTINGS``) are stored under ``flow`` so that evaluation and
    inference rebuild the same motion images.
    """
    if input_mode not in INPUT_MODES:
        raise UserError(f'input_mode {input_mode!r}: choose one of {", ".join(INPUT_MODES)}')
    image_size, region_size = int(image_size), int(region_size)
    if region_size < 2 or image_size < region_size:
        raise UserError(f'image_size {image_size} / region_size {region_size}: need 2 <= region_size <= image_size')
    settings = dict(DEFAULT_DETECTOR_SETTINGS)
    settings.update(detector or {})
    preprocess = {
        'input_mode': input_mode, 'image_size': image_size, 'region_size': region_size,
        'input_size': 2 * region_size, 'channels': 'RGB', 'mean': [0.5, 0.5, 0.5], 'std': [0.5, 0.5, 0.5],
        'regions': list(REGION_NAMES), 'face_crop': FACE_CROP_RULE, 'face_margin': FACE_MARGIN,
        'landmark_face_scale': LANDMARK_FACE_SCALE, 'detector': settings,
    }
    if input_mode == 'flow':
        import optical_flow  # imported here: optical_flow builds on this module

        preprocess = optical_flow.flow_preprocess(preprocess)
    return preprocess


def model_input_size(preprocess: Mapping[str, Any]) -> int:
    """Side of the network input: 56 for the default 28-pixel regions mosaic."""
    return int(preprocess.get('input_size') or 2 * int(preprocess.get('region_size', 28)))


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


def face_square(image: np.ndarray, landmarks: Any, box: Any = None, image_size: int = 224, *,
                margin: float = FACE_MARGIN, landmark_scale: float = LANDMARK_FACE_SCALE
                ) -> tuple[np.ndarray, np.ndarray]:
    """Cut the face square out of a photo and resize it: ``(image_size x image_size x 3 uint8, landmarks (5, 2) in
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
    interpolation = cv2.INTER_AREA if side > image_size else cv2.INTER_LINEAR
    face = cv2.resize(crop, (image_size, image_size), interpolation=interpolation)
    scale = image_size / side
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
        size = int(preprocess.get('image_size', 224))
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
    face, points = face_square(image, landmarks, box, int(preprocess.get('image_size', 224)),
                               margin=preprocess.get('face_margin', FACE_MARGIN),
                               landmark_scale=preprocess.get('landmark_face_scale', LANDMARK_FACE_SCALE))
    return network_image_from_face(face, points, preprocess)


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
    return to_tensor(network_image(_as_rgb_image(image), landmarks, preprocess, box), preprocess)


def make_flow_network_image(rest_image: np.ndarray, expression_image: np.ndarray, rest_landmarks: Any,
                            expression_landmarks: Any, preprocess: Mapping[str, Any]) -> np.ndarray:
    """The un-normalised ``flow`` network image ``(S, S, 3)`` uint8 of a pair (see ``make_flow_input``)."""
    import optical_flow

    flow_settings = preprocess if preprocess.get('input_mode') == 'flow' else default_preprocess(
        'flow', int(preprocess.get('image_size', 224)), int(preprocess.get('region_size', 28)))
    return optical_flow.flow_network_image(_as_rgb_image(rest_image), _as_rgb_image(expression_image),
                                           rest_landmarks, flow_settings, expression_landmarks)


def make_flow_input(rest_image: np.ndarray, expression_image: np.ndarray, rest_landmarks: Any,
                    expression_landmarks: Any, preprocess: Mapping[str, Any]) -> torch.Tensor:
    """The normalised network input ``(3, S, S)`` of the ``flow`` mode: the optical flow (u, v, strain) from a rest
    photo to an expression photo of one person, in the rest photo's face square, cut into the region mosaic at the
    rest landmarks (``optical_flow.flow_input``). Both photos are HxWx3 uint8 RGB; the landmarks are (5, 2) arrays
    or ``FaceLandmarks`` in each photo's own pixels (the expression photo is aligned onto the rest photo on the eyes
    and nose; ``expression_landmarks=None`` trusts the two photos to share the framing). The dataset uses the same
    images, so inference on a pair reuses exactly the training inputs."""
    return to_tensor(make_flow_network_image(rest_image, expression_image, rest_landmarks, expression_landmarks,
                                             preprocess), preprocess)


# annotations

@dataclass
class SampleRecord:
    """One labelled photo before its landmarks are known. ``grade`` is 0-5 (House-Brackmann I-VI)."""
    path: str
    grade: int
    side: str = 'unknown'
    subject: str = ''
    neutral_path: str | None = None
    annotation: np.ndarray | None = None  # (5, 2) landmarks from the annotation, original pixels
    origin: str = ''  # where the label came from, e.g. "fnp.csv row 4"
    neutral_annotation: np.ndarray | None = None  # (5, 2) landmarks of the neutral (rest) photo, if annotated


def _normalise_split(split: str | None) -> str | None:
    if split is None:
        return None
    split = str(split).strip().lower()
    if split in ('', 'all', '*'):
        return None
    return SPLIT_ALIASES.get(split, split)


def _normalise_side(value: Any) -> str:
    side = str(value).strip().lower()
    side = {'l': 'left', 'r': 'right', 'n': 'none', 'no': 'none', 'normal': 'none', 'bilateral': 'unknown'}.get(
        side, side)
    return side if side in SIDES else 'unknown'


def _parse_grade(value: Any) -> tuple[int | None, str]:
    text = str(value).strip()
    if not text:
        return None, 'grade is empty'
    try:
        number = float(text)
    except ValueError:
        return None, f'grade {text!r} is not a number'
    if not number.is_integer() or not 0 <= number <= 5:
        return None, f'grade {text!r} is outside 0-5 (House-Brackmann I-VI)'
    return int(number), ''


def _subject_of(path: str | os.PathLike) -> str:
    return Path(path).stem.split('_', 1)[0]


def _read_table(csv_file: Path, what: str) -> pd.DataFrame:
    """A CSV as strings with stripped, lower-case column names; problems are a one-line ``UserError``."""
    if not csv_file.is_file():
        raise UserError(f'{csv_file}: {what} not found')
    try:
        table = pd.read_csv(csv_file, dtype=str, keep_default_na=False, skip_blank_lines=False,
                            skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise UserError(f'{csv_file}: {what} is empty') from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f'{csv_file}: {what} is not a readable CSV ({first})') from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    return table


def _missing_columns(csv_file: Path, columns: Sequence[str], required: Sequence[str], what: str) -> None:
    missing = [c for c in required if c not in columns]
    if missing:
        raise UserError(f'{csv_file}: {what} lacks the column(s) {", ".join(missing)} '
                        f'(it has: {", ".join(columns) or "none"})')


def _row_landmarks(row: Mapping[str, str], columns: Sequence[str] = LANDMARK_COLUMNS) -> np.ndarray | None:
    try:
        values = np.array([float(row[c]) for c in columns], dtype=np.float32)
    except (ValueError, KeyError):
        return None
    return values.reshape(5, 2) if np.all(np.isfinite(values)) else None


def read_annotation_csv(csv_file: str | os.PathLike, data_root: str | os.PathLike, split: str | None = None
                        ) -> tuple[list[SampleRecord], list[tuple[str, str]]]:
    """Rows of an annotation CSV (``image_path, grade, side, split`` + optional ``subject``, ``neutral_path``,
    landmark columns and the neutral photo's ``neutral_eye_l_x ... neutral_mouth_r_y``) for one split (None /
    ``all``: every row).

    Returns ``(records, skipped)``; a row with a grade that is not a number 0-5 is skipped and listed with its row
    number (the header is row 1, as a spreadsheet shows it). A CSV without a required column, or without a row of
    ``split``, is a ``UserError`` naming the CSV.
    """
    csv_file, data_root, split = Path(csv_file), Path(data_root), _normalise_split(split)
    table = _read_table(csv_file, 'annotation CSV')
    # a CSV without a split column can still give every row (a separate --val_csv / --test_csv)
    required = REQUIRED_COLUMNS if split is not None else [c for c in REQUIRED_COLUMNS if c != 'split']
    _missing_columns(csv_file, list(table.columns), required, 'annotation CSV')
    if 'split' not in table.columns:
        table['split'] = ''
    has_landmarks = all(c in table.columns for c in LANDMARK_COLUMNS)
    has_neutral_landmarks = all(c in table.columns for c in NEUTRAL_LANDMARK_COLUMNS)
    records, skipped = [], []
    splits_seen = Counter()
    rows_in_split = 0
    for index, row in enumerate(table.to_dict('records')):
        row_number = index + 2
        if not any(str(v).strip() for v in row.values()):
            continue  # blank line
        row_split = _normalise_split(row['split']) or ''
        splits_seen[row_split or '(empty)'] += 1
        if split is not None and row_split != split:
            continue
        rows_in_split += 1
        where = f'{csv_file} row {row_number}'
        image_path = str(row['image_path']).strip()
        if not image_path:
            skipped.append((f'{csv_file}:row {row_number}', f'{where}: image_path is empty'))
            continue
        path = Path(image_path)
        path = path if path.is_absolute() else data_root / path
        grade, problem = _parse_grade(row['grade'])
        if grade is None:
            skipped.append((str(path), f'{where}: {problem}'))
            continue
        neutral = str(row.get('neutral_path', '') or '').strip()
        if neutral and not Path(neutral).is_absolute():
            neutral = str(data_root / neutral)
        records.append(SampleRecord(
            path=str(path), grade=grade, side=_normalise_side(row['side']),
            subject=str(row.get('subject', '') or '').strip() or _subject_of(path),
            neutral_path=neutral or None, annotation=_row_landmarks(row) if has_landmarks else None, origin=where,
            neutral_annotation=(_row_landmarks(row, NEUTRAL_LANDMARK_COLUMNS)
                                if has_neutral_landmarks and neutral else None)))
    if rows_in_split == 0:
        present = ', '.join(f'{name} ({count})' for name, count in sorted(splits_seen.items())) or 'no rows at all'
        raise UserError(f'{csv_file}: no rows with split "{split or "all"}" (splits present: {present})')
    return records, skipped


def _grade_folders(base: Path) -> list[tuple[int | None, Path]]:
    found = []
    if not base.is_dir():
        return found
    for folder in sorted(base.iterdir()):
        match = re.fullmatch(r'grade[_\- ]?(\d+)', folder.name.lower())
        if match and folder.is_dir():
            grade = int(match.group(1))
            found.append((grade if 0 <= grade <= 5 else None, folder))
    return found


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith('.') and p.is_file())


def scan_grade_folders(data_root: str | os.PathLike, split: str | None = None, verbose: bool = True
                       ) -> tuple[list[SampleRecord], list[tuple[str, str]]]:
    """Images in ``data_root/grade_0 .. grade_5`` (or ``data_root/<split>/grade_N`` where such folders exist); the
    subject is the file name before the first ``_``. Returns ``(records, skipped)``."""
    data_root, split = Path(data_root), _normalise_split(split)
    if split is not None and _grade_folders(data_root / split):
        bases = [data_root / split]
    elif _grade_folders(data_root):
        bases = [data_root]
        if split is not None and verbose:
            print(f'note: {data_root} has no {split}/ folder; every image in its grade_N folders is used for '
                  f'split "{split}"')
    else:
        split_dirs = [d for d in sorted(data_root.iterdir()) if d.is_dir() and _grade_folders(d)] \
            if data_root.is_dir() else []
        if split is None and split_dirs:
            bases = split_dirs
        elif split_dirs:
            raise UserError(f'{data_root}: no {split}/ folder with grade_N folders (found: '
                            f'{", ".join(d.name for d in split_dirs)})')
        else:
            raise UserError(f'{data_root}: no annotation CSV given and no grade_0 .. grade_5 folders inside')
    records, skipped = [], []
    for base in bases:
        for grade, folder in _grade_folders(base):
            images = _image_files(folder)
            if grade is None:
                skipped.extend((str(p), f'folder {folder.name}: grade outside 0-5') for p in images)
                continue
            records.extend(SampleRecord(path=str(p), grade=grade, side='none' if grade == 0 else 'unknown',
                                        subject=_subject_of(p), origin=f'{folder}') for p in images)
    if not records and not skipped:
        raise UserError(f'{data_root}: the grade_N folders hold no images ({", ".join(IMAGE_EXTENSIONS)})')
    return records, skipped


# CK+

def _ck_key(text: str) -> str:
    """``S5`` / ``s005`` -> ``S005``; ``1`` -> ``001``: CK+ names are zero-padded, hand-made mappings often not."""
    text = str(text).strip().upper()
    match = re.fullmatch(r'S0*(\d+)', text)
    if match:
        return f'S{int(match.group(1)):03d}'
    return f'{int(text):03d}' if text.isdigit() else text


def _ck_sequence_key(text: str) -> tuple[str, str] | None:
    parts = [p for p in re.split(r'[/\\_]', str(text).strip()) if p]
    return (_ck_key(parts[0]), _ck_key(parts[1])) if len(parts) >= 2 else None


def _ck_images_root(data_root: Path) -> Path:
    nested = data_root / 'cohn-kanade-images'
    return nested if nested.is_dir() else data_root


def _ck_sequences(images_root: Path) -> list[tuple[str, str, list[Path]]]:
    """(subject, sequence, frames sorted by name) for every folder that holds frames, two levels down."""
    sequences = []
    for subject in sorted(p for p in images_root.iterdir() if p.is_dir() and not p.name.startswith('.')):
        for sequence in sorted(p for p in subject.iterdir() if p.is_dir() and not p.name.startswith('.')):
            frames = _image_files(sequence)
            if frames:
                sequences.append((subject.name, sequence.name, frames))
    return sequences


def _ck_landmarks(data_root: Path, subject: str, sequence: str, frame: Path) -> np.ndarray | None:
    """Five points from CK+'s 68-point AAM landmarks of a frame, where the release's Landmarks folder is present:
    image-left eye = mean of points 36-41, image-right eye = 42-47, nose tip 30, mouth corners 48 and 54."""
    path = data_root / 'Landmarks' / subject / sequence / f'{frame.stem}_landmarks.txt'
    try:
        points = np.loadtxt(path, dtype=np.float32).reshape(-1, 2)
    except (OSError, ValueError):
        return None
    if len(points) != 68 or not np.all(np.isfinite(points)):
        return None
    return np.stack([points[36:42].mean(0), points[42:48].mean(0), points[30], points[48], points[54]])


def scan_ckplus(data_root: str | os.PathLike, grade_mapping_csv: str | os.PathLike | None, split: str | None = None,
                verbose: bool = True) -> tuple[list[SampleRecord], list[tuple[str, str]]]:
    """The peak (last) frame of each CK+ sequence, graded by a mapping CSV; its first frame is the neutral one.

    Layout: ``data_root/cohn-kanade-images/S005/001/S005_001_00000001.png`` or the subject folders directly under
    ``data_root``. Mapping columns: ``subject`` (S005) and/or ``sequence`` (S005/001; wins over its subject's row),
    ``grade`` (0-5), optional ``side`` and ``split``. CK+ carries no palsy grades, so without a mapping this is a
    ``UserError`` rather than every face labelled normal.
    """
    data_root, split = Path(data_root), _normalise_split(split)
    if grade_mapping_csv is None:
        raise UserError(f'{data_root}: CK+ images carry no palsy grades; give a grade mapping CSV (columns subject or '
                        f'sequence, grade, side) such as the one prepare_dataset.py writes')
    mapping_csv = Path(grade_mapping_csv)
    table = _read_table(mapping_csv, 'grade mapping CSV')
    columns = list(table.columns)
    if 'image_path' in columns:  # a full annotation CSV made for CK+ frames
        return read_annotation_csv(mapping_csv, data_root, split)
    missing = [c for c in ('grade',) if c not in columns]
    if 'subject' not in columns and 'sequence' not in columns:
        missing.append('subject or sequence')
    if missing:
        raise UserError(f'{mapping_csv}: grade mapping CSV lacks the column(s) {", ".join(missing)} '
                        f'(it has: {", ".join(columns) or "none"})')
    skipped: list[tuple[str, str]] = []
    by_sequence: dict[tuple[str, str], dict] = {}
    by_subject: dict[str, dict] = {}
    for index, row in enumerate(table.to_dict('records')):
        row_number = index + 2
        if not any(str(v).strip() for v in row.values()):
            continue
        where = f'{mapping_csv} row {row_number}'
        grade, problem = _parse_grade(row['grade'])
        if grade is None:
            skipped.append((f'{mapping_csv}:row {row_number}', f'{where}: {problem}'))
            continue
        entry = {'grade': grade, 'side': _normalise_side(row.get('side', '')), 'where': where,
                 'split': _normalise_split(row.get('split', '')) if 'split' in columns else None}
        sequence_key = _ck_sequence_key(row.get('sequence', '')) if str(row.get('sequence', '')).strip() else None
        if sequence_key is not None:
            by_sequence.setdefault(sequence_key, entry)
        elif str(row.get('subject', '')).strip():
            by_subject.setdefault(_ck_key(row['subject']), entry)
        else:
            skipped.append((f'{mapping_csv}:row {row_number}', f'{where}: neither subject nor sequence given'))
    images_root = _ck_images_root(data_root)
    sequences = _ck_sequences(images_root) if images_root.is_dir() else []
    if not sequences:
        raise UserError(f'{data_root}: no CK+ sequences found (expected cohn-kanade-images/S005/001/*.png or '
                        f'S005/001/*.png)')
    if split is not None and 'split' not in columns and verbose:
        print(f'note: {mapping_csv} has no split column; every graded sequence is used for split "{split}"')
    records, used = [], set()
    unmapped = 0
    for subject, sequence, frames in sequences:
        key = (_ck_key(subject), _ck_key(sequence))
        entry = by_sequence.get(key) or by_subject.get(key[0])
        if entry is None:
            unmapped += 1
            skipped.append((str(frames[-1]), f'no grade for {subject}/{sequence} in {mapping_csv}'))
            continue
        used.add(entry['where'])
        if split is not None and entry['split'] is not None and entry['split'] != split:
            continue
        records.append(SampleRecord(
            path=str(frames[-1]), grade=entry['grade'], side=entry['side'], subject=subject,
            neutral_path=str(frames[0]), annotation=_ck_landmarks(data_root, subject, sequence, frames[-1]),
            origin=entry['where'], neutral_annotation=_ck_landmarks(data_root, subject, sequence, frames[0])))
    unused = [e['where'] for e in (*by_sequence.values(), *by_subject.values()) if e['where'] not in used]
    if verbose and unused:
        print(f'note: {len(unused)} row(s) of {mapping_csv} match no sequence under {images_root} '
              f'(first: {unused[0]})')
    if verbose and unmapped:
        print(f'note: {unmapped} CK+ sequence(s) have no grade in {mapping_csv} and are left out')
    if not records and split is not None and 'split' in columns:
        raise UserError(f'{mapping_csv}: no graded sequence with split "{split}"')
    return records, skipped


# datasets

def _dataset_kind(dataset_type: str | None) -> str:
    text = re.sub(r'[^a-z0-9+]', '', str(dataset_type or 'FNP').lower())
    return 'CK+' if text in ('ck+', 'ckplus', 'ck', 'cohnkanade') else str(dataset_type or 'FNP')


def _slug(text: str) -> str:
    return re.sub(r'[^a-z0-9]+', '', text.lower().replace('+', 'plus')) or 'data'


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
    through ``utils.GRADE_6_TO_3``.

    ``transform(image, landmarks) -> (image, landmarks)`` receives the face square (``image_size`` pixels, uint8
    RGB) with its five points before the regions are cut, so geometric changes move the regions along; a
    ``transform.mosaic_transform`` (if not None) is then applied to the network input tensor. ``preload=True``
    keeps every face square in memory (``len * image_size**2 * 3`` bytes) for photos that are slow to decode.

    ``input_mode='flow'``: each sample is a pair, the photo (``image_path``, the expression) and its rest photo
    (``neutral_path``; CK+ uses the first frame of the sequence). The landmarks of both come from the same detector
    and cache (fallbacks: the ``neutral_*`` / landmark columns, then the template); rows without a usable rest photo
    are skipped and listed. The input is ``make_flow_input`` of the pair. No ``transform`` is applied in this mode
    (a photo augmentation would have to move both photos identically, and a changed photo reads as motion); the
    flow mosaic of a sample is therefore fixed, and is computed once and kept in memory (``len * S**2 * 3`` bytes;
    ``preload=True`` computes them all while building).
    """

    def __init__(self, data_root: str | os.PathLike, csv_file: str | os.PathLike | None = None,
                 dataset_type: str = 'FNP', image_size: int = 224, transform: Callable | None = None,
                 split: str | None = 'train', *, region_size: int = 28, input_mode: str = 'regions',
                 num_classes: int = 6, cache_dir: str | os.PathLike | bool | None = None,
                 device: str | torch.device = 'cpu', verbose: bool = True, preload: bool = False,
                 detector: LandmarkDetector | None = None):
        super().__init__()
        self.data_root = Path(data_root)
        if not self.data_root.is_dir():
            raise UserError(f'data_root {self.data_root}: folder not found')
        if int(num_classes) not in (3, 6):
            raise UserError(f'num_classes {num_classes}: choose 6 (House-Brackmann I-VI) or 3 (simplified)')
        self.csv_file = None if csv_file in (None, '') else self._find_csv(csv_file)
        self.dataset_type = _dataset_kind(dataset_type)
        self.split = _normalise_split(split)
        self.num_classes = int(num_classes)
        self.class_names = grade_names(self.num_classes)
        self.input_mode = input_mode  # before the transform, whose setter reads it
        self.transform = transform
        self.verbose = verbose
        self.image_size = int(image_size)
        self.region_size = int(region_size)
        detector = detector or LandmarkDetector(device=device, cache_dir=cache_dir, progress=verbose)
        self.preprocess = default_preprocess(input_mode, image_size, region_size, detector=detector.settings)
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
                columns = _read_table(self.csv_file, 'grade mapping CSV').columns
                if 'image_path' not in columns:
                    return scan_ckplus(self.data_root, self.csv_file, self.split, self.verbose)
            elif not _grade_folders(self.data_root):
                return scan_ckplus(self.data_root, None, self.split, self.verbose)
        if self.csv_file is not None:
            return read_annotation_csv(self.csv_file, self.data_root, self.split)
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
        faces = np.empty((len(self), self.image_size, self.image_size, 3), dtype=np.uint8)
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
        return face_square(self._load(index), face.points, face.box, self.preprocess['image_size'],
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
                 dataset_type: str = 'CK+', image_size: int = 224, transform: Callable | None = None,
                 split: str | None = 'train', *, csv_file: str | os.PathLike | None = None, **kwargs: Any):
        mapping = grade_mapping_csv if grade_mapping_csv is not None else csv_file
        super().__init__(data_root, mapping, dataset_type='CK+', image_size=image_size, transform=transform,
                         split=split, **kwargs)

    def _read_records(self) -> tuple[list[SampleRecord], list[tuple[str, str]]]:
        return scan_ckplus(self.data_root, self.csv_file, self.split, self.verbose)
