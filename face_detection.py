"""Reading face photos and finding their five facial landmarks: the first two steps of every HTNet input.

``load_image`` decodes any photo (grayscale, RGBA, 16-bit, palette, EXIF-rotated, very large) to RGB uint8.
``LandmarkDetector`` finds MTCNN's five points (left eye, right eye, nose, left and right mouth corner; left = image
left) on batches of photos and caches them on disk, so a photo is read by MTCNN once, ever. A photo without a
detected face falls back to the annotation's landmarks, then to HTNet's 28x28 template scaled to it.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from utils import UserError, atomic_write_text, resolve_device

__all__ = ['LANDMARK_NAMES', 'LANDMARK_SOURCES', 'TEMPLATE_LANDMARKS_28', 'DEFAULT_CACHE_DIR', 'DETECT_MAX_SIDE',
           'DEFAULT_DETECTOR_SETTINGS', 'ImageReadError', 'load_image', 'as_rgb_image', 'FaceLandmarks',
           'template_landmarks', 'LandmarkDetector']

# MTCNN's order; "left" is image left (the patient's right side when they face the camera).
LANDMARK_NAMES = ('left_eye', 'right_eye', 'nose', 'left_mouth', 'right_mouth')
LANDMARK_SOURCES = ('detected', 'annotation', 'template')

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
_MTCNN_FIXED = {'keep_all': False, 'select_largest': True, 'post_process': False}
DEFAULT_DETECTOR_SETTINGS = {'min_face_size': 20, 'thresholds': [0.6, 0.7, 0.7], 'factor': 0.709,
                             'max_side': DETECT_MAX_SIDE}
_CACHE_VERSION = 1


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
    from PIL import Image, ImageOps, UnidentifiedImageError

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
    except UnidentifiedImageError:  # its text repeats the path
        raise ImageReadError(f'{path}: not a readable image (unknown format or corrupt data)') from None
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


def as_rgb_image(image: Any) -> np.ndarray:
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
        prepared = [_detection_copy(as_rgb_image(image), self.settings['max_side']) for image in images]
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
