"""Data augmentation for facial palsy grading: transforms that keep the two sides of the face apart, and one
mirror that swaps them together with the side label.

In palsy the signal *is* the difference between the patient's left and right side (a drooping mouth corner, an eye
that does not close), and the region mosaic keeps the sides apart: the top row holds the image-left eye and mouth
corner, the bottom row the image-right ones. A plain horizontal flip, the default augmentation of most vision
pipelines, would turn a left-sided palsy into a right-sided one while its side label still says left, so the
photo transforms here never flip. The one exception is explicit: ``SideLabelled`` (``--flip_swap_side``) mirrors
the face *and* swaps its affected-side label in the same step (a mirrored left palsy is a right palsy of the same
grade), so image and label never disagree.

Where each class acts:

* ``FacialPalsyAugmentation`` (``standard``), ``AsymmetryPreservingAugmentation`` (``asymmetry_preserving``, the
  recommended default) and ``RobustAugmentation`` (``robust``) act on the **face image before the regions are cut**
  (``FacialPalsyDataset`` hands over the face square with its five points):
  ``transform(image HxWx3 uint8, landmarks (5, 2)) -> (image, landmarks)``. The geometric part is one similarity
  transform (rotation about the face centre, isotropic scale, shift) done with a single ``cv2.warpAffine``; the same
  2x3 matrix moves the five MTCNN points, so the regions are cut where the features now are. The photometric part
  (brightness, contrast, gamma, saturation, blur) follows. The standard one may also light one side of the face
  more than the other (a lighting gradient); the asymmetry-preserving one changes the whole face alike and rotates
  only a little, because the roll of the eye line is itself a palsy sign.
* ``RobustAugmentation`` (``robust``) prepares a model for faces unlike the training faces (another face
  generator, another camera, another landmark detector): the asymmetry-preserving geometry and a stretch of the whole
  face along each image axis (faces differ in proportions, signs in size), then each landmark
  jittered on its own (the image stays, so the regions are cut a little off-centre, as a detector places its points
  on an unfamiliar face), wider brightness / contrast / gamma / saturation / hue / white-balance changes, and camera
  effects (blur or resolution loss, sensor noise, JPEG re-compression, now and then grayscale). All of it acts on the
  whole face alike, never on one side; ``strength`` (``get_augmentation_pipeline('robust', strength=...)``) scales
  every range, 0 changing nothing.
* ``CutOut`` and ``RandomErasing`` act on the **network input**, the normalised ``(3, S, S)`` mosaic tensor. Every
  erased patch lies inside one quadrant (one facial region), so it never spans the left and right regions. They are
  attached to a photo augmentation as its ``mosaic_transform`` (the ``strong`` pipeline), which the dataset applies
  after ``make_input``.
* ``SideLabelled`` wraps a split as ``(image, grade, side)`` items; with a flip probability it reads some photos
  through ``MirrorThen`` (``mirror_face``, then the chosen augmentation) and swaps their side label.
* ``MixUp`` acts on a **batch** in the training loop: ``MixUp(alpha)(images, labels) -> (mixed, labels_a,
  labels_b, lam)``, with ``mixup_loss`` for the mixed loss.

Randomness comes from the ``rng`` (a numpy ``Generator`` or ``RandomState``) or ``seed`` given to a class, or else
from numpy's global state, which ``utils.seed_everything`` seeds (and PyTorch's DataLoader re-seeds per worker).
An object with its own ``rng``/``seed`` draws a separate, reproducible stream in every DataLoader worker and epoch,
derived from the worker seed PyTorch hands out, so workers never repeat each other's augmentations.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Union

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Subset

import losses
from synthetic_photo import encode_jpeg
from utils import UserError

__all__ = [
    'AUGMENTATION_NAMES', 'DEFAULT_AUGMENTATION', 'FacialPalsyAugmentation', 'AsymmetryPreservingAugmentation',
    'RobustAugmentation', 'CutOut', 'RandomErasing', 'MosaicCompose', 'MixUp', 'mixup_loss',
    'get_augmentation_pipeline', 'PhotoParams', 'RobustParams', 'transform_points', 'transform_box',
]

AUGMENTATION_NAMES = ('none', 'standard', 'asymmetry_preserving', 'strong', 'robust')
DEFAULT_AUGMENTATION = 'robust'

# Rotations beyond this could tilt a face far enough for the eye line to read as a different roll than the
# patient's; the asymmetry-preserving pipeline refuses them.
MAX_ASYMMETRY_PRESERVING_ROTATION = 5.0
# Near 90 degrees the eye line stands upright and beyond it the left eye lands right of the right eye; 30 degrees
# covers the head roll of ordinary photos with a wide margin.
MAX_ROTATION = 30.0

RandomGenerator = Union[np.random.Generator, np.random.RandomState]


# helpers

class _RandomSource:
    """Hands out the random generator for one augmentation object.

    Without ``rng``/``seed`` this is numpy's global state (seeded by ``utils.seed_everything``, re-seeded by the
    DataLoader in each worker). With one, a private generator: inside a DataLoader worker it is replaced, on first
    use, by a generator seeded from the worker's own seed, because every worker (and, without persistent workers,
    every epoch) receives a pickled copy of the same generator and would otherwise draw identical augmentations.
    """

    def __init__(self, rng: RandomGenerator | None = None, seed: int | None = None):
        if rng is not None and seed is not None:
            raise ValueError('give either rng or seed, not both')
        if rng is not None and not isinstance(rng, (np.random.Generator, np.random.RandomState)):
            raise TypeError(f'rng must be a numpy Generator or RandomState, not {type(rng).__name__}')
        self._generator = rng if rng is not None else (None if seed is None else np.random.default_rng(seed))
        self._worker_seed: int | None = None

    def get(self):
        if self._generator is None:
            return np.random  # the module functions draw from the global RandomState
        worker = torch.utils.data.get_worker_info()
        if worker is not None and worker.seed != self._worker_seed:
            self._worker_seed = worker.seed
            base = int(_randint(self._generator, 0, 2 ** 62))
            self._generator = np.random.default_rng([base, worker.seed])
        return self._generator


def _randint(gen, low: int, high: int) -> int:
    """An integer in ``[low, high)`` from a Generator, a RandomState or the ``np.random`` module."""
    if isinstance(gen, np.random.Generator):
        return int(gen.integers(low, high))
    return int(gen.randint(low, high))


def _check_range(name: str, value: float, low: float, high: float) -> float:
    value = float(value)
    if not low <= value <= high:
        raise ValueError(f'{name}={value} is outside [{low}, {high}]')
    return value


def _check_probability(name: str, value: float) -> float:
    return _check_range(name, value, 0.0, 1.0)


def _check_interval(name: str, value: Sequence[float], low: float, high: float) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError) as err:
        raise ValueError(f'{name} must be a pair (min, max), got {value!r}') from err
    if not low <= a <= b <= high:
        raise ValueError(f'{name}={value!r} must satisfy {low} <= min <= max <= {high}')
    return a, b


def _check_eye_line_rotation(max_rotation: float) -> None:
    if float(max_rotation) > MAX_ASYMMETRY_PRESERVING_ROTATION:
        raise ValueError(f'max_rotation={max_rotation} is too large to preserve the roll of the eye line; '
                         f'use at most {MAX_ASYMMETRY_PRESERVING_ROTATION} degrees (or the standard pipeline)')


def _face_reference(landmarks: np.ndarray | None, width: int, height: int) -> tuple[np.ndarray, float]:
    """Face centre and size (inter-ocular distance, in pixels) that scale the geometric and lighting changes, so
    they mean the same on a 4000-pixel photo as on a 224-pixel face crop."""
    if landmarks is None:
        return np.array([width / 2.0, height / 2.0], dtype=np.float64), 0.3 * min(width, height)
    centre = landmarks.mean(axis=0).astype(np.float64)
    inter_ocular = float(np.linalg.norm(landmarks[1] - landmarks[0]))
    return centre, max(inter_ocular, 0.05 * min(width, height), 1.0)


def _as_landmarks(landmarks: Any) -> np.ndarray | None:
    if landmarks is None:
        return None
    points = np.array(landmarks, dtype=np.float32)  # a copy: the caller's array is never changed
    if points.shape != (5, 2):
        raise ValueError(f'landmarks must have shape (5, 2) (MTCNN order: left eye, right eye, nose, left mouth '
                         f'corner, right mouth corner), got {points.shape}')
    return points


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix (as given to ``cv2.warpAffine``) to ``(N, 2)`` points."""
    points = np.asarray(points, dtype=np.float64)
    return (points @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)


def transform_box(box: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The axis-aligned box ``x1, y1, x2, y2`` around the four moved corners of ``box``."""
    x1, y1, x2, y2 = np.asarray(box, dtype=np.float64)
    corners = transform_points(np.array([[x1, y1], [x2, y1], [x1, y2], [x2, y2]]), matrix)
    return np.concatenate([corners.min(axis=0), corners.max(axis=0)]).astype(np.float32)


@dataclasses.dataclass
class PhotoParams:
    """One draw of a photo augmentation (kept so a draw can be inspected or replayed)."""
    angle: float = 0.0          # degrees, counter-clockwise as cv2.getRotationMatrix2D
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)   # in units of the inter-ocular distance
    brightness: float = 0.0     # added, fraction of the full range
    contrast: float = 1.0       # factor about the mean intensity
    gamma: float = 1.0
    saturation: float = 1.0     # 0 grey, 1 unchanged
    lighting: float = 0.0       # relative brightness change at one side of the face (0 = none)
    lighting_direction: float = 0.0   # radians; 0 brightens image-right, pi image-left
    blur: float = 0.0           # Gaussian sigma in units of the inter-ocular distance

    @property
    def is_geometric_identity(self) -> bool:
        return self.angle == 0.0 and self.scale == 1.0 and self.shift == (0.0, 0.0)


def _tone_curve(image: np.ndarray, params: PhotoParams) -> np.ndarray:
    """Brightness, contrast and gamma of a draw: one per-value curve, so one ``cv2.LUT`` does all three."""
    if params.brightness == 0.0 and params.contrast == 1.0 and params.gamma == 1.0:
        return image
    mean = (float(np.mean(cv2.mean(image)[:3])) / 255.0) ** params.gamma
    values = (np.arange(256, dtype=np.float64) / 255.0) ** params.gamma
    values = (values - mean) * params.contrast + mean + params.brightness
    lut = np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)
    return cv2.LUT(image, lut)


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    if sigma < 0.3:  # below this a Gaussian kernel changes nothing visible
        return image
    return cv2.GaussianBlur(image, (0, 0), sigma)


# classes: photo augmentations (before cropping)

class FacialPalsyAugmentation:
    """Standard augmentation of a face photo before the regions are cut: a random similarity transform (landmarks
    moved along) followed by photometric changes, including an optional lighting gradient across the face.

    Never flips: a mirrored face would show the palsy on the other side and fill each mosaic slot with the other
    side's region. Geometric amounts are relative to the inter-ocular distance, so they act alike on any photo size.

    Args:
        max_rotation: rotations are drawn from ``[-max_rotation, max_rotation]`` degrees about the face centre.
        scale: isotropic scale range ``(min, max)``; always positive (a negative scale would mirror).
        max_shift: shift in each axis, as a fraction of the inter-ocular distance.
        brightness: added brightness drawn from ``[-brightness, brightness]`` (fraction of the 0-255 range).
        contrast: contrast factor drawn from ``[1 - contrast, 1 + contrast]``.
        gamma: gamma drawn log-uniformly from ``[exp(-gamma), exp(gamma)]``.
        saturation: saturation factor drawn from ``[1 - saturation, 1 + saturation]``.
        lighting: largest relative brightness change at the edge of the face from a lighting gradient in a random
            direction (0 disables it); this changes one side of the face more than the other.
        p_lighting: probability of applying the lighting gradient.
        blur: largest Gaussian blur sigma, as a fraction of the inter-ocular distance.
        p_blur: probability of blurring.
        mosaic_transform: optional callable applied by the dataset to the network input tensor (CutOut etc.).
        rng, seed: source of randomness (default: numpy's global state).
    """

    def __init__(self, *, max_rotation: float = 10.0, scale: Sequence[float] = (0.9, 1.1), max_shift: float = 0.05,
                 brightness: float = 0.2, contrast: float = 0.2, gamma: float = 0.2, saturation: float = 0.2,
                 lighting: float = 0.3, p_lighting: float = 0.5, blur: float = 0.03, p_blur: float = 0.2,
                 mosaic_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 rng: RandomGenerator | None = None, seed: int | None = None):
        self.max_rotation = _check_range('max_rotation', max_rotation, 0.0, MAX_ROTATION)
        self.scale = _check_interval('scale', scale, 0.5, 2.0)
        self.max_shift = _check_range('max_shift', max_shift, 0.0, 1.0)
        self.brightness = _check_range('brightness', brightness, 0.0, 1.0)
        self.contrast = _check_range('contrast', contrast, 0.0, 0.9)
        self.gamma = _check_range('gamma', gamma, 0.0, 1.0)
        self.saturation = _check_range('saturation', saturation, 0.0, 1.0)
        self.lighting = _check_range('lighting', lighting, 0.0, 0.9)
        self.p_lighting = _check_probability('p_lighting', p_lighting)
        self.blur = _check_range('blur', blur, 0.0, 0.5)
        self.p_blur = _check_probability('p_blur', p_blur)
        self.mosaic_transform = mosaic_transform
        self._random = _RandomSource(rng, seed)

    # drawing

    def _whole_face_params(self, u: np.ndarray) -> dict[str, Any]:
        """The geometry and tone of the whole face from 8 uniform draws in [-1, 1] (shared by the subclasses)."""
        lo, hi = self.scale
        return dict(angle=float(u[0] * self.max_rotation), scale=float(lo + (u[1] + 1.0) / 2.0 * (hi - lo)),
                    shift=(float(u[2] * self.max_shift), float(u[3] * self.max_shift)),
                    brightness=float(u[4] * self.brightness), contrast=float(1.0 + u[5] * self.contrast),
                    gamma=float(math.exp(u[6] * self.gamma)), saturation=float(1.0 + u[7] * self.saturation))

    def sample_params(self) -> PhotoParams:
        """Draw one set of parameters. Every call draws the same number of values, so a seeded stream stays
        aligned whatever the outcome of each coin flip."""
        gen = self._random.get()
        u = gen.uniform(-1.0, 1.0, size=8)
        v = gen.uniform(0.0, 1.0, size=5)  # coins and magnitudes of the optional lighting and blur
        return PhotoParams(
            **self._whole_face_params(u),
            lighting=float(v[1] * self.lighting) if v[0] < self.p_lighting else 0.0,
            lighting_direction=float(v[2] * 2.0 * math.pi),
            blur=float(v[4] * self.blur) if v[3] < self.p_blur else 0.0,
        )

    # applying

    def __call__(self, image: np.ndarray, landmarks: Any) -> tuple[np.ndarray, np.ndarray | None]:
        image, landmarks, _ = self.apply(image, landmarks)
        return image, landmarks

    def apply(self, image: np.ndarray, landmarks: Any, box: Any = None,
              params: PhotoParams | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Augment a photo; the landmarks and the face box (``x1, y1, x2, y2``, if given) move with the image.

        ``params`` replays a draw from ``sample_params`` instead of drawing a new one.
        """
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
                and image.shape[2] == 3):
            raise ValueError(f'expected an HxWx3 uint8 RGB image, got '
                             f'{getattr(image, "dtype", type(image).__name__)} {getattr(image, "shape", "")}')
        points = _as_landmarks(landmarks)
        params = self.sample_params() if params is None else params
        height, width = image.shape[:2]
        centre, face_size = _face_reference(points, width, height)

        if not params.is_geometric_identity:
            matrix = self.affine_matrix(params, centre, face_size)
            image = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_REPLICATE)
            if points is not None:
                points = transform_points(points, matrix)
                centre = points.mean(axis=0).astype(np.float64)
            if box is not None:
                box = transform_box(box, matrix)
        elif box is not None:
            box = np.asarray(box, dtype=np.float32).copy()
        image = self._photometric(image, params, centre, face_size)
        return np.ascontiguousarray(image), points, box

    @staticmethod
    def affine_matrix(params: PhotoParams, centre: np.ndarray, face_size: float) -> np.ndarray:
        """The 2x3 matrix of a draw: rotation and scale about the face centre, then the shift."""
        matrix = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), params.angle, params.scale)
        matrix[:, 2] += np.asarray(params.shift, dtype=np.float64) * face_size
        return matrix

    def _photometric(self, image: np.ndarray, params: PhotoParams, centre: np.ndarray,
                     face_size: float) -> np.ndarray:
        image = _tone_curve(image, params)
        if params.saturation != 1.0:
            grey = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
            image = cv2.addWeighted(image, params.saturation, grey, 1.0 - params.saturation, 0.0)
        if params.lighting > 0.0:
            image = self._lighting_gradient(image, params, centre, face_size)
        return _gaussian_blur(image, params.blur * face_size)

    @staticmethod
    def _lighting_gradient(image: np.ndarray, params: PhotoParams, centre: np.ndarray,
                           face_size: float) -> np.ndarray:
        """Light from one direction: brightness changes linearly across the face (about 3 inter-ocular distances
        wide) and stays constant beyond it."""
        height, width = image.shape[:2]
        radius = 1.5 * face_size
        dx, dy = math.cos(params.lighting_direction), math.sin(params.lighting_direction)
        xs = (np.arange(width, dtype=np.float32) - np.float32(centre[0])) * np.float32(dx / radius)
        ys = (np.arange(height, dtype=np.float32) - np.float32(centre[1])) * np.float32(dy / radius)
        gain = ys[:, None] + xs[None, :]  # (H, W) float32, in place below: this runs on the full photo
        np.clip(gain, -1.0, 1.0, out=gain)
        gain *= np.float32(params.lighting)
        gain += np.float32(1.0)
        # cv2 rounds and saturates to uint8 in one pass, several times faster than numpy on a full photo
        return cv2.multiply(image.astype(np.float32), cv2.cvtColor(gain, cv2.COLOR_GRAY2RGB), dtype=cv2.CV_8U)

    _REPR_FIELDS = ('max_rotation', 'scale', 'max_shift', 'brightness', 'contrast', 'gamma', 'saturation',
                    'lighting', 'p_lighting', 'blur', 'p_blur', 'mosaic_transform')

    def __repr__(self) -> str:
        return f'{type(self).__name__}({", ".join(f"{k}={getattr(self, k)!r}" for k in self._REPR_FIELDS)})'


class AsymmetryPreservingAugmentation(FacialPalsyAugmentation):
    """The recommended augmentation for palsy grading: only changes that leave the face's asymmetry as it was.

    * no flip and no left/right landmark swap (as everywhere in this module);
    * small rotations only (at most ``MAX_ASYMMETRY_PRESERVING_ROTATION`` degrees), because the roll of the eye line
      is itself a palsy sign;
    * a similarity transform only (isotropic scale, no shear), so distances on the two sides keep their ratio;
    * photometric changes act on the whole face alike: no lighting gradient, which would make one side look
      different from the other.
    """

    def __init__(self, *, max_rotation: float = 3.0, scale: Sequence[float] = (0.95, 1.05), max_shift: float = 0.03,
                 brightness: float = 0.1, contrast: float = 0.1, gamma: float = 0.1, saturation: float = 0.1,
                 blur: float = 0.02, p_blur: float = 0.1,
                 mosaic_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 rng: RandomGenerator | None = None, seed: int | None = None):
        _check_eye_line_rotation(max_rotation)
        super().__init__(max_rotation=max_rotation, scale=scale, max_shift=max_shift, brightness=brightness,
                         contrast=contrast, gamma=gamma, saturation=saturation, lighting=0.0, p_lighting=0.0,
                         blur=blur, p_blur=p_blur, mosaic_transform=mosaic_transform, rng=rng, seed=seed)


@dataclasses.dataclass
class RobustParams(PhotoParams):
    """One draw of ``RobustAugmentation``: the changes of ``PhotoParams`` plus landmark jitter, colour and camera."""
    landmark_offsets: tuple[tuple[float, float], ...] = ((0.0, 0.0),) * 5  # per point, in inter-ocular distances
    temperature: float = 0.0    # log gain of red over blue: > 0 a warmer light, < 0 a colder one
    tint: float = 0.0           # log gain of green over red and blue
    hue: float = 0.0            # degrees of rotation of every colour about the grey axis
    grayscale: bool = False
    downscale: float = 1.0      # side of the intermediate image as a fraction of the photo's (1 = full resolution)
    noise: float = 0.0          # sensor-noise sigma, fraction of the 0-255 range
    noise_offset: tuple[float, float] = (0.0, 0.0)  # where the noise window lies in the fixed noise field (0-1)
    jpeg_quality: int = 100     # 100 = not re-compressed
    aspect: tuple[float, float] = (1.0, 1.0)  # horizontal and vertical stretch of the face about its centre

    @property
    def is_geometric_identity(self) -> bool:
        return super().is_geometric_identity and self.aspect == (1.0, 1.0)


# RGB weights of luma (ITU-R BT.601, those of cv2.COLOR_RGB2GRAY): the colour changes keep grey grey and keep the
# luma of grey.
_LUMA = np.array([0.299, 0.587, 0.114])
# The robust pipeline's strongest degradations: below these a photo stops looking like one from another camera.
MIN_JPEG_QUALITY = 5
MIN_DOWNSCALE = 0.1
MAX_ROBUST_STRENGTH = 4.0
# The robust pipeline's stretch along each image axis (a log factor; see RobustAugmentation), and its largest.
ROBUST_ASPECT = 0.15
MAX_ASPECT = 0.5
_NOISE_FIELD_SEED = 1729
_NOISE_FIELD_MIN_SIDE = 512


@functools.lru_cache(maxsize=2)
def _noise_field(side: int) -> np.ndarray:
    """A fixed ``(side, side, 3)`` field of standard-normal noise. Drawing fresh noise for a 224x224 face costs
    about 1.5 ms, more than the rest of the robust pipeline together; a window at a random place of one field
    costs nothing and is as unpredictable to the network. Built once per process from a fixed seed, so every
    DataLoader worker holds the same field and a draw replays anywhere."""
    return np.random.default_rng(_NOISE_FIELD_SEED).standard_normal((side, side, 3), dtype=np.float32)


def _colour_matrix(params: RobustParams) -> np.ndarray | None:
    """White balance, saturation (0 for grayscale) and hue of a draw as one 3x3 RGB matrix for ``cv2.transform``
    (``None`` when it would change nothing). Every pixel is changed by the same matrix, wherever it lies."""
    saturation = 0.0 if params.grayscale else params.saturation
    if params.temperature == 0.0 and params.tint == 0.0 and saturation == 1.0 and params.hue == 0.0:
        return None
    gains = np.exp([params.temperature, params.tint, -params.temperature])
    white_balance = np.diag(gains / (_LUMA @ gains))
    desaturate = saturation * np.eye(3) + (1.0 - saturation) * np.outer(np.ones(3), _LUMA)
    angle = math.radians(params.hue)
    cross = np.array([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]])  # cross product with (1, 1, 1)
    hue = (math.cos(angle) * np.eye(3) + (1.0 - math.cos(angle)) / 3.0 * np.ones((3, 3))
           + math.sin(angle) / math.sqrt(3.0) * cross)
    return (hue @ desaturate @ white_balance).astype(np.float32)


def _resolution_loss(image: np.ndarray, factor: float) -> np.ndarray:
    """Down to ``factor`` of the side and back up: the detail a lower-resolution camera never recorded."""
    height, width = image.shape[:2]
    # Down to half size, bilinear interpolation already averages neighbours and is several times faster than
    # INTER_AREA at fractional factors; below half it would skip pixels, so INTER_AREA averages them.
    small = cv2.resize(image, (max(1, round(width * factor)), max(1, round(height * factor))),
                       interpolation=cv2.INTER_LINEAR if factor >= 0.5 else cv2.INTER_AREA)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def _sensor_noise(image: np.ndarray, sigma: float, offset: tuple[float, float], grayscale: bool) -> np.ndarray:
    height, width = image.shape[:2]
    side = max(_NOISE_FIELD_MIN_SIDE, -(-2 * max(height, width) // 256) * 256)
    top, left = (int(f * (side - n + 1)) for f, n in zip(offset, (height, width)))
    noise = _noise_field(side)[top:top + height, left:left + width]
    if grayscale:  # a grayscale sensor's noise has no colour either
        noise = cv2.cvtColor(np.ascontiguousarray(noise[..., 0]), cv2.COLOR_GRAY2RGB)
    # cv2 rounds and saturates to uint8 in one pass
    return cv2.addWeighted(image, 1.0, noise, 255.0 * sigma, 0.0, dtype=cv2.CV_8U)


def _recompress_jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    data = np.frombuffer(encode_jpeg(image, quality), dtype=np.uint8)
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


class RobustAugmentation(AsymmetryPreservingAugmentation):
    """Augmentation for faces unlike the training faces (another face generator, another camera, another landmark
    detector), still leaving the left-right signal as it is: every change acts on the whole face alike.

    * geometry: the asymmetry-preserving similarity transform (small rotation, isotropic scale, shift), then a
      stretch about the face centre by up to ``exp(+-aspect)`` along each image axis: faces differ in proportions
      and the same sign is larger or smaller in pixels from one person, family of faces or camera to the next. Both
      sides are stretched alike, so what one side does against the other stays as it was;
    * landmark jitter: each of the five points moved on its own by up to ``landmark_jitter`` inter-ocular
      distances, the image left where it is, so the regions are cut a little off-centre, as a detector places its
      points on a face unlike those it was trained on;
    * photometric: brightness, contrast, gamma, saturation, hue and white balance (colour temperature and tint),
      wider than the asymmetry-preserving pipeline's;
    * camera: a Gaussian blur or a resolution loss (down- and upscaling), sensor noise, JPEG re-compression, each
      with its own probability, and a rare grayscale conversion.

    No lighting gradient and no flip: nothing here treats the image-left half differently from the image-right
    half (the noise is independent per pixel, the same on both sides in distribution).

    ``strength`` multiplies every range: the sizes of the changes (for ``scale`` its distance from 1, for
    ``min_downscale`` the lost fraction ``1 - min_downscale``, for ``jpeg_quality`` the loss ``100 - quality``) and
    the probability of the grayscale conversion, the one change without a size. Strength 0 changes nothing (the
    geometric identity, no jitter, no re-compression); above 1 each range stops where its change stops making sense
    (rotation at ``MAX_ASYMMETRY_PRESERVING_ROTATION``, contrast at 0.9, saturation at 1, JPEG quality at
    ``MIN_JPEG_QUALITY``, downscaling at ``MIN_DOWNSCALE``). The attributes hold the ranges after ``strength``.

    Args:
        strength: factor on every range, in ``[0, MAX_ROBUST_STRENGTH]``.
        max_rotation, scale, max_shift: the geometry, as in ``AsymmetryPreservingAugmentation``.
        landmark_jitter: largest distance each landmark moves, as a fraction of the inter-ocular distance.
        brightness, contrast, gamma, saturation: as in ``FacialPalsyAugmentation``.
        hue: largest hue rotation in degrees.
        white_balance: largest log gain of the colour temperature (red against blue) and, at half of it, of the
            tint (green against red and blue).
        blur: largest Gaussian sigma, as a fraction of the inter-ocular distance; with probability ``p_blur``.
        min_downscale: smallest side of the intermediate image of a resolution loss, as a fraction of the photo's;
            with probability ``p_downscale`` (never together with the blur: ``p_blur + p_downscale <= 1``).
        noise: largest sensor-noise sigma, as a fraction of the 0-255 range; with probability ``p_noise``.
        jpeg_quality: range ``(min, max)`` of the JPEG quality; with probability ``p_jpeg``.
        p_grayscale: probability of a grayscale photo.
        aspect: largest log stretch along each image axis (0.15: by 0.86-1.16).
        mosaic_transform: optional callable applied by the dataset to the network input tensor.
        rng, seed: source of randomness (default: numpy's global state).
    """

    _REPR_FIELDS = ('strength', 'max_rotation', 'scale', 'max_shift', 'landmark_jitter', 'brightness', 'contrast',
                    'gamma', 'saturation', 'hue', 'white_balance', 'blur', 'p_blur', 'min_downscale', 'p_downscale',
                    'noise', 'p_noise', 'jpeg_quality', 'p_jpeg', 'p_grayscale', 'aspect',
                    'mosaic_transform')

    def __init__(self, *, strength: float = 1.0, max_rotation: float = 3.0, scale: Sequence[float] = (0.95, 1.05),
                 max_shift: float = 0.03, landmark_jitter: float = 0.03, brightness: float = 0.15,
                 contrast: float = 0.3, gamma: float = 0.3, saturation: float = 0.4, hue: float = 10.0,
                 white_balance: float = 0.15, blur: float = 0.03, p_blur: float = 0.25, min_downscale: float = 0.5,
                 p_downscale: float = 0.25, noise: float = 0.02, p_noise: float = 0.3,
                 jpeg_quality: Sequence[float] = (30, 90), p_jpeg: float = 0.5, p_grayscale: float = 0.05,
                 aspect: float = ROBUST_ASPECT, mosaic_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 rng: RandomGenerator | None = None, seed: int | None = None):
        strength = _check_range('strength', strength, 0.0, MAX_ROBUST_STRENGTH)

        def scaled(name: str, value: float, high: float) -> float:
            return min(_check_range(name, value, 0.0, high) * strength, high)

        _check_eye_line_rotation(max_rotation)
        scale = tuple(min(max(1.0 + strength * (s - 1.0), 0.5), 2.0)
                      for s in _check_interval('scale', scale, 0.5, 2.0))
        super().__init__(max_rotation=scaled('max_rotation', max_rotation, MAX_ASYMMETRY_PRESERVING_ROTATION),
                         scale=scale, max_shift=scaled('max_shift', max_shift, 1.0),
                         brightness=scaled('brightness', brightness, 1.0), contrast=scaled('contrast', contrast, 0.9),
                         gamma=scaled('gamma', gamma, 1.0), saturation=scaled('saturation', saturation, 1.0),
                         blur=scaled('blur', blur, 0.5), p_blur=p_blur, mosaic_transform=mosaic_transform, rng=rng,
                         seed=seed)
        self.strength = strength
        self.landmark_jitter = scaled('landmark_jitter', landmark_jitter, 0.25)
        self.hue = scaled('hue', hue, 180.0)
        self.white_balance = scaled('white_balance', white_balance, 1.0)
        lost = 1.0 - _check_range('min_downscale', min_downscale, MIN_DOWNSCALE, 1.0)
        self.min_downscale = max(1.0 - strength * lost, MIN_DOWNSCALE)
        self.p_downscale = _check_probability('p_downscale', p_downscale)
        if self.p_blur + self.p_downscale > 1.0:
            raise ValueError(f'p_blur + p_downscale = {self.p_blur + self.p_downscale} must be at most 1 (a photo is '
                             f'either blurred or downscaled)')
        self.noise = scaled('noise', noise, 0.2)
        self.p_noise = _check_probability('p_noise', p_noise)
        self.jpeg_quality = tuple(max(100.0 - strength * (100.0 - q), float(MIN_JPEG_QUALITY))
                                  for q in _check_interval('jpeg_quality', jpeg_quality, MIN_JPEG_QUALITY, 100))
        self.p_jpeg = _check_probability('p_jpeg', p_jpeg)
        self.p_grayscale = min(_check_probability('p_grayscale', p_grayscale) * strength, 1.0)
        self.aspect = scaled('aspect', aspect, MAX_ASPECT)

    # drawing

    def sample_params(self) -> RobustParams:
        """Draw one set of parameters; every call draws the same number of values (see the base class)."""
        gen = self._random.get()
        u = gen.uniform(-1.0, 1.0, size=13)
        v = gen.uniform(0.0, 1.0, size=19)  # landmark jitter (10), then the coins and magnitudes of the camera
        radius = self.landmark_jitter * np.sqrt(v[:5])  # uniform over the disc, not crowded at its centre
        direction = 2.0 * math.pi * v[5:10]
        offsets = tuple((float(r * math.cos(a)), float(r * math.sin(a))) for r, a in zip(radius, direction))
        resolution = v[10]  # one coin: a blur below p_blur, a resolution loss in the next p_downscale
        blurred = resolution < self.p_blur
        downscaled = not blurred and resolution < self.p_blur + self.p_downscale
        q_lo, q_hi = self.jpeg_quality
        return RobustParams(
            **self._whole_face_params(u),
            hue=float(u[8] * self.hue),
            temperature=float(u[9] * self.white_balance),
            tint=float(u[10] * self.white_balance / 2.0),
            landmark_offsets=offsets,
            blur=float(v[11] * self.blur) if blurred else 0.0,
            downscale=float(1.0 - v[11] * (1.0 - self.min_downscale)) if downscaled else 1.0,
            noise=float(v[13] * self.noise) if v[12] < self.p_noise else 0.0,
            noise_offset=(float(v[14]), float(v[15])),
            jpeg_quality=int(round(q_lo + v[17] * (q_hi - q_lo))) if v[16] < self.p_jpeg else 100,
            grayscale=bool(v[18] < self.p_grayscale),
            aspect=(float(math.exp(u[11] * self.aspect)), float(math.exp(u[12] * self.aspect))),
        )

    # applying

    def affine_matrix(self, params: PhotoParams, centre: np.ndarray, face_size: float) -> np.ndarray:
        """The similarity of the base class, then the face stretched about its centre by ``params.aspect``."""
        matrix = super().affine_matrix(params, centre, face_size)
        aspect = np.asarray(getattr(params, 'aspect', (1.0, 1.0)), dtype=np.float64)
        if (aspect == 1.0).all():
            return matrix
        moved_centre = matrix[:, :2] @ np.asarray(centre, dtype=np.float64) + matrix[:, 2]
        stretched = matrix * aspect[:, None]
        stretched[:, 2] += moved_centre * (1.0 - aspect)
        return stretched

    def apply(self, image: np.ndarray, landmarks: Any, box: Any = None,
              params: PhotoParams | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Augment a photo as the base class does, then jitter the moved landmarks (the box is not jittered)."""
        if params is None:
            params = self.sample_params()
        elif not isinstance(params, RobustParams):
            params = RobustParams(**dataclasses.asdict(params))
        image, points, box = super().apply(image, landmarks, box, params)
        if points is not None:
            face_size = _face_reference(points, image.shape[1], image.shape[0])[1]
            points = (points + np.asarray(params.landmark_offsets, dtype=np.float64) * face_size).astype(np.float32)
        return image, points, box

    def _photometric(self, image: np.ndarray, params: PhotoParams, centre: np.ndarray,
                     face_size: float) -> np.ndarray:
        image = _tone_curve(image, params)
        matrix = _colour_matrix(params)
        if matrix is not None:
            image = cv2.transform(image, matrix)
        image = _gaussian_blur(image, params.blur * face_size)
        if params.downscale < 1.0:
            image = _resolution_loss(image, params.downscale)
        if params.noise > 0.0:
            image = _sensor_noise(image, params.noise, params.noise_offset, params.grayscale)
        if params.jpeg_quality < 100:
            image = _recompress_jpeg(image, params.jpeg_quality)
        return image


# classes: mosaic augmentations (network input tensor)

def _quadrant_bounds(height: int, width: int, quadrant: int) -> tuple[int, int, int, int]:
    """Rows ``[top, bottom)`` and columns ``[left, right)`` of quadrant 0-3 (row-major) of the 2x2 mosaic."""
    half_h, half_w = height // 2, width // 2
    row, col = divmod(quadrant, 2)
    top, bottom = (0, half_h) if row == 0 else (half_h, height)
    left, right = (0, half_w) if col == 0 else (half_w, width)
    return top, bottom, left, right


def _check_mosaic(tensor: torch.Tensor) -> None:
    if not (isinstance(tensor, torch.Tensor) and tensor.ndim == 3 and tensor.shape[1] >= 2 and tensor.shape[2] >= 2):
        raise ValueError(f'expected a (C, H, W) mosaic tensor, got {getattr(tensor, "shape", type(tensor).__name__)}')


class CutOut:
    """CutOut (DeVries & Taylor, 2017) on the 2x2 region mosaic: square patches set to ``value`` (0 is the mean
    colour once the input is normalised), each one kept inside a single quadrant so no patch covers both a left
    and a right region.

    Args:
        n_holes: patches per image.
        size: side of a patch as a fraction of the quadrant side; the centre falls anywhere in the quadrant and the
            patch is clipped to it, as the original clips to the image.
        p: probability of erasing anything in a given image.
        value: fill value.
    """

    def __init__(self, n_holes: int = 1, size: float = 0.5, p: float = 0.5, value: float = 0.0,
                 rng: RandomGenerator | None = None, seed: int | None = None):
        if int(n_holes) < 1:
            raise ValueError(f'n_holes={n_holes} must be at least 1')
        self.n_holes = int(n_holes)
        self.size = _check_range('size', size, 0.0, 1.0)
        self.p = _check_probability('p', p)
        self.value = float(value)
        self._random = _RandomSource(rng, seed)

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        _check_mosaic(tensor)
        gen = self._random.get()
        if gen.uniform(0.0, 1.0) >= self.p:
            return tensor
        out = tensor.clone()
        height, width = tensor.shape[1:]
        for _ in range(self.n_holes):
            top, bottom, left, right = _quadrant_bounds(height, width, _randint(gen, 0, 4))
            side_h = max(1, round(self.size * (bottom - top)))
            side_w = max(1, round(self.size * (right - left)))
            cy, cx = _randint(gen, top, bottom), _randint(gen, left, right)
            y1, y2 = max(top, cy - side_h // 2), min(bottom, cy - side_h // 2 + side_h)
            x1, x2 = max(left, cx - side_w // 2), min(right, cx - side_w // 2 + side_w)
            out[:, y1:y2, x1:x2] = self.value
        return out

    def __repr__(self) -> str:
        return f'CutOut(n_holes={self.n_holes}, size={self.size}, p={self.p}, value={self.value})'


class RandomErasing:
    """Random Erasing (Zhong et al., AAAI 2020) on the 2x2 region mosaic: one rectangle of random area and aspect
    ratio, filled with noise or a constant, placed wholly inside one quadrant.

    Args:
        p: probability of erasing.
        area: range of the erased area as a fraction of the quadrant's area.
        ratio: range of the aspect ratio (height / width), drawn log-uniformly.
        value: ``'random'`` for standard-normal noise (the normalised input's scale) or a constant.
        max_attempts: draws tried before giving up when a rectangle does not fit in the quadrant.
    """

    def __init__(self, p: float = 0.5, area: Sequence[float] = (0.02, 0.33), ratio: Sequence[float] = (0.3, 3.3),
                 value: float | str = 'random', max_attempts: int = 10,
                 rng: RandomGenerator | None = None, seed: int | None = None):
        self.p = _check_probability('p', p)
        self.area = _check_interval('area', area, 0.0, 1.0)
        self.ratio = _check_interval('ratio', ratio, 1e-3, 1e3)
        if not (value == 'random' or isinstance(value, (int, float))):
            raise ValueError(f"value must be 'random' or a number, got {value!r}")
        self.value = value
        self.max_attempts = max(1, int(max_attempts))
        self._random = _RandomSource(rng, seed)

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        _check_mosaic(tensor)
        gen = self._random.get()
        if gen.uniform(0.0, 1.0) >= self.p:
            return tensor
        top, bottom, left, right = _quadrant_bounds(*tensor.shape[1:], _randint(gen, 0, 4))
        quad_h, quad_w = bottom - top, right - left
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(self.max_attempts):
            target = gen.uniform(*self.area) * quad_h * quad_w
            aspect = math.exp(gen.uniform(*log_ratio))
            h, w = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < h <= quad_h and 0 < w <= quad_w:
                y1 = top + _randint(gen, 0, quad_h - h + 1)
                x1 = left + _randint(gen, 0, quad_w - w + 1)
                out = tensor.clone()
                if self.value == 'random':
                    noise = gen.standard_normal((tensor.shape[0], h, w)).astype(np.float32)
                    out[:, y1:y1 + h, x1:x1 + w] = torch.from_numpy(noise).to(out)
                else:
                    out[:, y1:y1 + h, x1:x1 + w] = float(self.value)
                return out
        return tensor

    def __repr__(self) -> str:
        return f'RandomErasing(p={self.p}, area={self.area}, ratio={self.ratio}, value={self.value!r})'


class MosaicCompose:
    """Apply mosaic transforms one after another (the ``mosaic_transform`` of the ``strong`` pipeline)."""

    def __init__(self, transforms: Sequence[Callable[[torch.Tensor], torch.Tensor]]):
        self.transforms = list(transforms)

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        for transform in self.transforms:
            tensor = transform(tensor)
        return tensor

    def __repr__(self) -> str:
        return f'MosaicCompose([{", ".join(repr(t) for t in self.transforms)}])'


# classes: batch augmentation (training loop)

def mixup_loss(criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], logits: torch.Tensor,
               labels_a: torch.Tensor, labels_b: torch.Tensor, lam: float) -> torch.Tensor:
    """The MixUp loss: ``lam * criterion(logits, labels_a) + (1 - lam) * criterion(logits, labels_b)``."""
    return lam * criterion(logits, labels_a) + (1.0 - lam) * criterion(logits, labels_b)


class MixUp:
    """MixUp (Zhang et al., ICLR 2018) on a batch: each input is blended with another input of the same batch with
    weight ``lam ~ Beta(alpha, alpha)``, and the loss blends the two labels alike (``mixup_loss``). Inputs are mixed
    slot by slot, so a left region is only ever blended with another left region.

    Args:
        alpha: Beta distribution parameter; 0 disables mixing (``lam = 1``).
        p: probability of mixing a given batch.
    """

    loss = staticmethod(mixup_loss)

    def __init__(self, alpha: float = 0.2, p: float = 1.0, rng: RandomGenerator | None = None, seed: int | None = None):
        if float(alpha) < 0.0:
            raise ValueError(f'alpha={alpha} must be >= 0')
        self.alpha = float(alpha)
        self.p = _check_probability('p', p)
        self._random = _RandomSource(rng, seed)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor | Sequence[int]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """Returns ``(mixed images, labels_a, labels_b, lam)`` with ``labels_a`` the batch's own labels."""
        labels = torch.as_tensor(labels, device=images.device)
        if labels.shape[:1] != images.shape[:1]:
            raise ValueError(f'{images.shape[0]} images but {labels.shape[0] if labels.ndim else 0} labels')
        gen = self._random.get()
        coin = gen.uniform(0.0, 1.0)
        if self.alpha == 0.0 or coin >= self.p or images.shape[0] < 2:
            return images, labels, labels, 1.0
        lam = float(gen.beta(self.alpha, self.alpha))
        perm = torch.as_tensor(gen.permutation(images.shape[0]), device=images.device)
        mixed = lam * images + (1.0 - lam) * images[perm]
        return mixed, labels, labels[perm], lam

    def __repr__(self) -> str:
        return f'MixUp(alpha={self.alpha}, p={self.p})'


# pipelines

def get_augmentation_pipeline(name: str | None, **kwargs: Any) -> FacialPalsyAugmentation | None:
    """Build a named augmentation for ``FacialPalsyDataset(transform=...)``.

    ``none`` gives ``None``; ``standard`` a ``FacialPalsyAugmentation``; ``asymmetry_preserving`` (recommended)
    an ``AsymmetryPreservingAugmentation``; ``strong`` the standard one plus CutOut and RandomErasing on the mosaic;
    ``robust`` a ``RobustAugmentation`` (for faces unlike the training faces; ``strength=`` scales it).
    Keyword arguments go to the photo augmentation; for ``strong``, ``cutout_<arg>`` and ``erasing_<arg>`` go to
    ``CutOut`` and ``RandomErasing``. ``rng``/``seed`` seed every part of the pipeline from one stream.
    """
    key = str(name).strip().lower().replace('-', '_') if name is not None else 'none'
    if key not in AUGMENTATION_NAMES:
        raise UserError(f'unknown augmentation {name!r}; choose one of: {", ".join(AUGMENTATION_NAMES)}')
    if key == 'none':
        return None
    rng, seed = kwargs.pop('rng', None), kwargs.pop('seed', None)
    if seed is not None and rng is None:
        rng = np.random.default_rng(seed)  # one stream shared by the parts, so the pipeline replays as a whole
    elif seed is not None:
        raise ValueError('give either rng or seed, not both')
    if key == 'asymmetry_preserving':
        return AsymmetryPreservingAugmentation(rng=rng, **kwargs)
    if key == 'standard':
        return FacialPalsyAugmentation(rng=rng, **kwargs)
    if key == 'robust':
        return RobustAugmentation(rng=rng, **kwargs)
    cutout_args = {k[len('cutout_'):]: kwargs.pop(k) for k in list(kwargs) if k.startswith('cutout_')}
    erasing_args = {k[len('erasing_'):]: kwargs.pop(k) for k in list(kwargs) if k.startswith('erasing_')}
    mosaic = MosaicCompose([CutOut(rng=rng, **cutout_args), RandomErasing(rng=rng, **erasing_args)])
    return FacialPalsyAugmentation(rng=rng, mosaic_transform=mosaic, **kwargs)


# mirror with side swap

# the five points after a left-right mirror: the eyes trade places, the nose stays, the mouth corners trade places
MIRRORED_POINT_ORDER = (1, 0, 2, 4, 3)
# side class after a mirror (losses.side_targets codes): the patient's left <-> right; none and unknown stay
MIRRORED_SIDE = {0: 1, 1: 0, 2: 2, losses.SIDE_IGNORE_INDEX: losses.SIDE_IGNORE_INDEX}


def with_transform(dataset: Dataset, transform: Callable | None) -> Dataset:
    """A second view of an already loaded dataset (landmarks detected once) that applies ``transform``."""
    view = copy.copy(dataset)
    view.transform = transform
    return view


def base_dataset(dataset: Dataset) -> Dataset:
    """The dataset under a ``Subset`` (the dataset itself otherwise)."""
    return dataset.dataset if isinstance(dataset, Subset) else dataset


def mirror_face(image: np.ndarray, landmarks: Any) -> tuple[np.ndarray, np.ndarray]:
    """The face square mirrored left-right and its five points moved with it: x becomes ``width - x`` (pixel
    edges, the convention of the region crops, so each mirrored crop is exactly the mirror of a crop) and the
    left / right eye and mouth-corner points trade places, so point 0 is again the image-left eye."""
    width = image.shape[1]
    points = np.asarray(landmarks, dtype=np.float32).reshape(5, 2)[list(MIRRORED_POINT_ORDER)].copy()
    points[:, 0] = width - points[:, 0]
    return np.ascontiguousarray(image[:, ::-1]), points


class MirrorThen:
    """Photo transform ``(image, landmarks) -> (image, landmarks)``: ``mirror_face``, then ``then`` (the chosen
    augmentation, whose ``mosaic_transform`` is passed on so the dataset still applies it)."""

    def __init__(self, then: Callable | None = None):
        self.then = then
        self.mosaic_transform = getattr(then, 'mosaic_transform', None)

    def __call__(self, image: np.ndarray, landmarks: Any) -> tuple[np.ndarray, np.ndarray]:
        image, points = mirror_face(image, landmarks)
        return self.then(image, points) if self.then is not None else (image, points)


class SideLabelled(Dataset):
    """``(image, label, side index)`` items of a split (a ``FacialPalsyDataset`` or a ``Subset`` of one), the side
    coded by ``losses.side_targets`` (unknown = -100, ignored by the loss).

    With ``flip_probability`` each item is, with that probability, read through a second view of the dataset whose
    photo transform mirrors the face before the augmentation, and its side is swapped. The coin is drawn here, per
    item, so the image and its side label can never disagree, and no state is shared between calls (safe with
    DataLoader workers, which seed torch per worker).
    """

    def __init__(self, dataset: Dataset, flip_probability: float = 0.0):
        if not 0.0 <= flip_probability <= 1.0:
            raise ValueError(f'flip_probability must lie in [0, 1], got {flip_probability}')
        self.source = dataset
        self.base = base_dataset(dataset)
        self.indices = list(dataset.indices) if isinstance(dataset, Subset) else list(range(len(dataset)))
        self.sides = losses.side_targets(self.base.sides[i] for i in self.indices).tolist()
        self.flip_probability = float(flip_probability)
        self.mirrored = with_transform(self.base, MirrorThen(self.base.transform)) if flip_probability > 0 else None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int, int]:
        index, side = self.indices[item], self.sides[item]
        if self.mirrored is not None and float(torch.rand(())) < self.flip_probability:
            image, label = self.mirrored[index]
            return image, label, MIRRORED_SIDE[side]
        image, label = self.base[index]
        return image, label, side

