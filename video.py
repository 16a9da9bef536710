"""Examination clips: reading them, and finding the rest frame and the apex of the movement they film.

A facial nerve examination is filmed as a series of movements (brow raise, eye closure, smile), each from rest to
its peak and back. HTNet's motion input wants two frames of such a movement, the rest frame and the apex (the frame
where the expression peaks; the onset and apex frames of the micro-expression sets HTNet was made for), so that
``--input_mode flow`` reads the movement between them. This module is the one home of

* reading a clip (``read_clip`` -> ``Clip``): a video file through OpenCV, or a folder of frame images;
* the apex finder (``find_apex`` -> ``ApexResult``);
* the figure of motion over time with the rest and apex frames marked (``save_motion_figure``, ``draw_motion``),
  shared by preparation, the benchmark and inference.

How the apex is found. MTCNN finds the face on the rest frame and on a few key frames (every ``key_seconds``); it
is too slow, and its landmarks jitter too much, to run on every frame. Every other frame is registered onto the
rest frame's face square by a similarity (shift, rotation, scale), starting from the neighbouring frame's: the
Farneback flow (``optical_flow.dense_flow``) between the rest face square and the frame's registered square is fit
by a similarity on its most textured points (hair, face outline, nose, eye corners), trimming the points that move
more than the rest (the expression) and fitting again (``optical_flow.similarity_transform``). Head motion and
camera shake are thereby taken out; a key frame whose MTCNN landmarks disagree with the tracked ones is registered
from them too, and the registration that leaves less movement is kept.

What the similarity leaves is the face's own movement, read inside an ellipse over brows, eyes and mouth in two
ways: the flow left unexplained (how far features moved: a brow, a mouth corner; pixels of a 224-pixel face square,
``optical_flow.REFERENCE_FACE_SIZE``, whatever the clip's size) and the grey-level change between the registered
squares (how different the face looks: a lid sliding over an iris hides what flow could follow, and flow misreads
it). Each clip is read with the one in which its movement stands out more from its frame-to-frame noise. A blink is
a movement too, but a short one: a morphological opening of the curve over ``blink_seconds`` removes every
excursion shorter than that, which leaves the expression's window; the apex is the frame of greatest (lightly
smoothed) movement inside it. A blink within about ``blink_seconds`` of the apex can still be taken for it.
"""
from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

import optical_flow
from annotations import HB_GRADES, IMAGE_EXTENSIONS
from face_detection import FaceLandmarks, ImageReadError, LandmarkDetector, load_image
from facial_palsy_dataset import face_square_bounds
from utils import UserError, save_figure

__all__ = ['VIDEO_SUFFIXES', 'FRAME_SUFFIXES', 'DEFAULT_FOLDER_FPS', 'APEX_SETTINGS', 'Clip', 'read_clip',
           'is_clip', 'natural_key', 'ApexResult', 'find_apex', 'draw_motion', 'save_motion_figure']

# helpers

VIDEO_SUFFIXES = ('.mp4', '.avi', '.mov', '.mkv', '.m4v', '.webm', '.mpg', '.mpeg', '.wmv')
FRAME_SUFFIXES = IMAGE_EXTENSIONS
# A folder of frames carries no frame rate; cameras and the CK+ recordings film at about this.
DEFAULT_FOLDER_FPS = 30.0
# A video whose container reports a rate outside this range (0, NaN, 90000 ticks) is read at DEFAULT_FOLDER_FPS.
_PLAUSIBLE_FPS = (1.0, 1000.0)

APEX_SETTINGS: dict[str, Any] = {
    # the rest frame's face square (facial_palsy_dataset.face_square_bounds) is registered and measured at this
    # side in pixels: enough for a lid or a lip corner to move several pixels, small enough for the motion pass to
    # run at 50-100 frames/s on two busy cores
    'work_size': 128,
    # Farneback on the 128-pixel square: the values of optical_flow.FLOW_SETTINGS, the window scaled from 15
    # pixels of a 224 square to ~9 of a 128 one (odd, a little wider for noise)
    'flow': {'pyr_scale': 0.5, 'levels': 3, 'winsize': 11, 'iterations': 3, 'poly_n': 5, 'poly_sigma': 1.1,
             'border': 12},
    # the similarity is fit on a grid of points every fit_step pixels, the fit_share most textured of them
    # (Shi-Tomasi score): flow is only trustworthy where the image has structure in two directions
    'fit_step': 4,
    'fit_share': 0.5,
    # points whose residual exceeds fit_trim x the median residual (and fit_trim_floor pixels) are trimmed as
    # moving with the expression, and the similarity is fit again, twice
    'fit_trim': 2.5,
    'fit_trim_floor': 0.3,
    # each frame is registered twice: the flow read at the neighbour's registration corrects it, and the flow read
    # again at the corrected one (Farneback is most accurate on small motions) is fit and measured
    'passes': 2,
    # a correction beyond this share of the square means the face was lost in this frame (a cut, a hand): the
    # frame keeps its neighbour's registration and no motion value
    'lost_shift': 0.25,
    # MTCNN looks at the first frame and every key_seconds; the rest frame is the first with a face, looked for
    # over the first rest_seconds where the first frame has none (MTCNN misses a face now and then). With three or
    # more faces found, one whose box differs from their median by more than face_consistency (share of the
    # median side, in size or position) is a false face (a patch of beard or hair) and does not count
    'key_seconds': 0.5,
    'rest_seconds': 0.5,
    'face_consistency': 0.4,
    # a key frame whose MTCNN eyes and nose lie further than this x the inter-eye distance from the tracked ones
    # is registered from its landmarks too, and the registration that leaves less motion is kept (MTCNN now and
    # then finds a small false face, so its landmarks do not simply win); landmarks implying a head scaled beyond
    # these bounds from the rest frame's are not tried
    'track_tolerance': 0.15,
    'track_scale': (0.7, 1.4),
    # excursions of the motion curve shorter than this are blinks or twitches, not the expression (a blink lasts
    # 0.1-0.2 s, a voluntary movement of the examination rises over 0.3 s or more)
    'blink_seconds': 0.2,
    # peak_frames: the frames around the apex whose motion is at least this share of the apex's (above the clip's
    # resting level)
    'peak_fraction': 0.9,
    # the appearance change is read between the registered squares blurred by this sigma (work pixels): sensor
    # noise and codec blocks apart, a lid over an iris stays
    'appearance_blur': 1.0,
    # each measure's frame-to-frame noise is taken as at least this (224-face pixels of flow, grey levels), so a
    # noise-free clip does not divide by zero
    'noise_floor': {'flow': 0.01, 'appearance': 0.05},
    # a clip whose apex stands less than this many times its noise above its resting level shows hardly any
    # movement (ApexResult.still)
    'still_contrast': 8.0,
    # the ellipse where motion is measured, in inter-eye distances: across, and above the eyes / below the mouth
    'face_ellipse': {'across': 0.95, 'above_eyes': 0.6, 'below_mouth': 0.35},
}


def _settings(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    merged = {**APEX_SETTINGS, **(settings or {})}
    merged['flow'] = {**optical_flow.FLOW_SETTINGS, **APEX_SETTINGS['flow'], **(settings or {}).get('flow', {})}
    return merged


def natural_key(name: str) -> list[Any]:
    """Sort key that orders ``frame2`` before ``frame10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r'(\d+)', str(name))]


def is_clip(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like a clip: a video file (``VIDEO_SUFFIXES``) or a folder holding frame images."""
    path = Path(path)
    if path.is_dir():
        return any(_frame_files(path))
    return path.suffix.lower() in VIDEO_SUFFIXES


def _frame_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and not p.name.startswith('.')
                   and p.is_file()), key=lambda p: natural_key(p.name))


# reading clips

@dataclass
class Clip:
    """The frames of one clip: ``frames`` (each ``HxWx3`` uint8 RGB, all one size), ``fps`` (frames per second)
    and, for a folder of frames, ``frame_paths`` (the image of each frame). ``truncated`` says that reading stopped
    at ``max_frames``."""
    path: Path
    frames: list[np.ndarray]
    fps: float
    frame_paths: list[Path] | None = None
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def times(self) -> np.ndarray:
        """The time of each frame in seconds from the first."""
        return np.arange(len(self.frames), dtype=np.float64) / self.fps


def read_clip(path: str | os.PathLike, fps: float | None = None, max_frames: int | None = None) -> Clip:
    """Read a clip: a video file (``VIDEO_SUFFIXES``, decoded by OpenCV) or a folder of frame images
    (``FRAME_SUFFIXES``, in natural order of their names: ``2.png`` before ``10.png``).

    ``fps`` overrides the frame rate; a folder has none of its own and gets ``DEFAULT_FOLDER_FPS`` unless given.
    ``max_frames`` stops reading there (``Clip.truncated``), which bounds the memory a long clip takes. A clip that
    is missing, empty, unreadable, of frames of different sizes, or of a single frame is a one-line ``UserError``
    naming the file.
    """
    path = Path(path)
    if fps is not None and not (math.isfinite(float(fps)) and float(fps) > 0):
        raise UserError(f'{path}: the frame rate must be a positive number of frames per second, not {fps}')
    if max_frames is not None and int(max_frames) < 2:
        raise UserError(f'{path}: max_frames {max_frames}: a clip needs at least two frames (rest and apex)')
    if not path.exists():
        raise UserError(f'{path}: file not found')
    clip = _read_frame_folder(path, fps, max_frames) if path.is_dir() else _read_video(path, fps, max_frames)
    if not clip.frames:
        raise UserError(f'{path}: the clip holds no frames')
    if len(clip.frames) == 1:
        raise UserError(f'{path}: the clip holds a single frame; a rest and an expression frame are needed')
    return clip


def _read_video(path: Path, fps: float | None, max_frames: int | None) -> Clip:
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise UserError(f'{path}: not a video ({" ".join(VIDEO_SUFFIXES)}) or a folder of frames')
    try:
        size = path.stat().st_size
    except OSError as err:
        raise UserError(f'{path}: cannot be read ({err.strerror or err})') from None
    if size == 0:
        raise UserError(f'{path}: empty file')
    # FFmpeg prints its own complaint about a broken file ('moov atom not found') on stderr, and the UserError below
    # says it in one line: FFmpeg keeps to fatal errors unless the user set its level (read when it first opens one)
    os.environ.setdefault('OPENCV_FFMPEG_LOGLEVEL', '8')
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise UserError(f'{path}: cannot be opened as a video (corrupt, cut short or an unknown codec)')
        rate = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        frames: list[np.ndarray] = []
        truncated = False
        while True:
            if max_frames is not None and len(frames) >= int(max_frames):
                truncated = capture.grab()  # one more frame exists
                break
            ok, frame = capture.read()
            if not ok or frame is None:
                break
            if frames and frame.shape != frames[0].shape:
                raise UserError(f'{path}: frame {len(frames)} is {frame.shape[1]}x{frame.shape[0]} pixels, the first '
                                f'{frames[0].shape[1]}x{frames[0].shape[0]}')
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if frame.ndim == 3 else
                          cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB))
    finally:
        capture.release()
    if fps is None:
        fps = rate if _PLAUSIBLE_FPS[0] <= rate <= _PLAUSIBLE_FPS[1] else DEFAULT_FOLDER_FPS
    return Clip(path=path, frames=frames, fps=float(fps), truncated=truncated)


def _read_frame_folder(path: Path, fps: float | None, max_frames: int | None) -> Clip:
    try:
        files = _frame_files(path)
    except OSError as err:
        raise UserError(f'{path}: cannot be read ({err.strerror or err})') from None
    if not files:
        raise UserError(f'{path}: a folder without frame images ({" ".join(FRAME_SUFFIXES)})')
    truncated = max_frames is not None and len(files) > int(max_frames)
    files = files[:int(max_frames)] if truncated else files
    frames = []
    for file in files:
        try:
            frame = load_image(file)
        except ImageReadError as err:
            raise UserError(f'{err} (a frame of the clip {path})') from None
        if frames and frame.shape != frames[0].shape:
            raise UserError(f'{file}: {frame.shape[1]}x{frame.shape[0]} pixels, but the first frame of the clip is '
                            f'{frames[0].shape[1]}x{frames[0].shape[0]}')
        frames.append(frame)
    return Clip(path=path, frames=frames, fps=float(fps or DEFAULT_FOLDER_FPS), frame_paths=files, truncated=truncated)


# the apex finder

@dataclass
class ApexResult:
    """Where a clip's movement rests and peaks.

    ``rest_frame`` and ``apex_frame`` are frame indices. ``motion`` (N,) is the face's own movement in each frame
    relative to the rest frame, head motion taken out, as read by ``measure`` and counted in multiples of that
    measure's frame-to-frame noise (0 at the rest frame; NaN where the face was lost): ``flow_motion`` (N,) is how
    far the face's features moved (root mean square of the flow the head motion leaves unexplained, pixels of a
    224-pixel face square), ``appearance_change`` (N,) how different the face looks (root mean square grey-level
    change); ``measure`` names the one in which this clip's movement stands out more (``contrast`` times its noise
    above rest), ``still`` says it hardly stands out at all. ``envelope`` (N,) is ``motion`` with blinks removed,
    which locates the expression; ``peak_frames`` are the frames around the apex moving at least ``peak_fraction``
    as much (for averaging predictions over the peak). ``rest_landmarks`` are MTCNN's on the rest frame;
    ``alignments`` (N, 2, 3) take rest-frame pixels to each frame's (the tracked head motion). ``motion_seconds``
    is the time of the motion pass (registration, flow, measures), ``detect_seconds`` that of MTCNN.
    """
    clip_path: Path
    fps: float
    rest_frame: int
    apex_frame: int
    motion: np.ndarray
    envelope: np.ndarray
    peak_frames: list[int]
    rest_landmarks: FaceLandmarks
    alignments: np.ndarray
    measure: str = 'flow'
    flow_motion: np.ndarray | None = None
    appearance_change: np.ndarray | None = None
    contrast: float = 0.0
    still: bool = False
    detected_frames: list[int] = field(default_factory=list)
    motion_seconds: float = 0.0
    detect_seconds: float = 0.0

    @property
    def peak_motion(self) -> float:
        """The apex frame's ``motion`` (multiples of the frame-to-frame noise)."""
        return float(np.nan_to_num(self.motion[self.apex_frame]))

    @property
    def frames_per_second(self) -> float:
        """Speed of the motion pass: frames registered and measured per second."""
        return len(self.motion) / max(self.motion_seconds, 1e-9)

    def landmarks_at(self, frame: int) -> np.ndarray:
        """The rest frame's five landmarks carried into ``frame`` by the tracked head motion: (5, 2) float32."""
        points = optical_flow.landmark_points(self.rest_landmarks)
        return (points @ self.alignments[frame][:, :2].T + self.alignments[frame][:, 2]).astype(np.float32)

    @property
    def apex_landmarks(self) -> np.ndarray:
        return self.landmarks_at(self.apex_frame)


def _to3(matrix: np.ndarray) -> np.ndarray:
    return np.vstack([np.asarray(matrix, dtype=np.float64).reshape(2, 3), [0.0, 0.0, 1.0]])


def _gray(frame: np.ndarray, levels: int) -> np.ndarray:
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    for _ in range(levels):
        gray = cv2.pyrDown(gray)
    return gray


@dataclass
class _Square:
    """The rest frame's face square as the motion pass sees it: ``to_work`` (3x3) takes rest-frame pixels to the
    ``size``-pixel work square, ``levels`` pyramid halvings are applied to frames first (faces much larger than the
    square), and the fit points and the measuring ellipse live in work pixels."""
    size: int
    levels: int
    to_work: np.ndarray
    rest: np.ndarray
    rest_blurred: np.ndarray
    fit_points: np.ndarray
    ellipse: np.ndarray
    inter_eye: float

    def crop(self, gray: np.ndarray, alignment: np.ndarray) -> np.ndarray:
        """The frame (already reduced by ``levels``) cut to the work square through ``alignment`` (3x3, rest-frame
        pixels -> frame pixels): the frame's face where the rest face is."""
        reduce = np.diag([0.5 ** self.levels, 0.5 ** self.levels, 1.0])
        work_to_frame = reduce @ alignment @ np.linalg.inv(self.to_work)
        return cv2.warpAffine(gray, work_to_frame[:2], (self.size, self.size),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)


def _face_square(frame: np.ndarray, landmarks: FaceLandmarks, cfg: Mapping[str, Any]) -> _Square:
    size = int(cfg['work_size'])
    x0, y0, x1, y1 = (float(v) for v in face_square_bounds(landmarks.points, landmarks.box))
    side = x1 - x0
    scale = size / side
    to_work = np.array([[scale, 0.0, -scale * x0], [0.0, scale, -scale * y0], [0.0, 0.0, 1.0]])
    levels = max(0, int(math.floor(math.log2(max(side / size, 1.0)))))
    square = _Square(size=size, levels=levels, to_work=to_work, rest=np.empty(0), rest_blurred=np.empty(0),
                     fit_points=np.empty(0), ellipse=np.empty(0), inter_eye=0.0)
    square.rest = square.crop(_gray(frame, levels), np.eye(3))
    square.rest_blurred = _blurred(square.rest, cfg)
    points = optical_flow.landmark_points(landmarks) * scale - np.array([scale * x0, scale * y0])
    square.inter_eye = float(np.linalg.norm(points[1] - points[0])) / scale
    # fit points: the most textured of a regular grid
    step = int(cfg['fit_step'])
    score = cv2.cornerMinEigenVal(square.rest, blockSize=5, ksize=3)
    grid = np.arange(step // 2, size, step)
    gx, gy = np.meshgrid(grid, grid)
    texture = score[gy, gx].ravel()
    keep = texture >= np.quantile(texture, 1.0 - float(cfg['fit_share']))
    square.fit_points = np.column_stack([gx.ravel()[keep], gy.ravel()[keep]]).astype(np.float64)
    # the measuring ellipse over brows, eyes and mouth, turned with the eye line
    eyes, mouth = points[:2].mean(axis=0), points[3:].mean(axis=0)
    across = points[1] - points[0]
    eye_distance = max(float(np.linalg.norm(across)), 1.0)
    ex = across / eye_distance
    ey = np.array([-ex[1], ex[0]])
    drop = max(float((mouth - eyes) @ ey), 0.5 * eye_distance)
    shape = cfg['face_ellipse']
    top, bottom = -shape['above_eyes'] * eye_distance, drop + shape['below_mouth'] * eye_distance
    centre = eyes + ey * (top + bottom) / 2
    half_across, half_down = shape['across'] * eye_distance, (bottom - top) / 2
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    du, dv = (xx - centre[0]) * ex[0] + (yy - centre[1]) * ex[1], (xx - centre[0]) * ey[0] + (yy - centre[1]) * ey[1]
    square.ellipse = (du / half_across) ** 2 + (dv / half_down) ** 2 <= 1.0
    return square


def _blurred(gray: np.ndarray, cfg: Mapping[str, Any]) -> np.ndarray:
    return cv2.GaussianBlur(gray.astype(np.float32), (0, 0), float(cfg['appearance_blur']))


def _fit_similarity(flow: np.ndarray, square: _Square, cfg: Mapping[str, Any]) -> np.ndarray:
    """The similarity (3x3, work pixels) that best explains ``flow`` at the fit points, trimming the points that
    move with the expression."""
    source = square.fit_points
    ix, iy = source[:, 0].astype(int), source[:, 1].astype(int)
    target = source + flow[iy, ix].astype(np.float64)
    keep = np.ones(len(source), dtype=bool)
    matrix = np.eye(3)
    for _ in range(3):
        if keep.sum() < 6:
            break
        matrix = _to3(optical_flow.similarity_transform(source[keep], target[keep]))
        residual = np.linalg.norm(source @ matrix[:2, :2].T + matrix[:2, 2] - target, axis=1)
        keep = residual <= max(float(cfg['fit_trim']) * float(np.median(residual[keep])),
                               float(cfg['fit_trim_floor']))
    return matrix


def _corner_shift(matrix: np.ndarray, size: int) -> float:
    """How far (pixels) a similarity moves the corners of a ``size`` square: the size of a correction."""
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], dtype=np.float64)
    return float(np.abs(corners @ matrix[:2, :2].T + matrix[:2, 2] - corners).max())


def _register(gray: np.ndarray, alignment: np.ndarray, square: _Square, cfg: Mapping[str, Any]
              ) -> tuple[np.ndarray, float, float]:
    """Refine ``alignment`` (3x3, rest-frame -> frame pixels) of one frame and measure its own movement inside the
    ellipse: returns ``(alignment, flow, appearance)``, the root mean square of the flow the similarity leaves
    unexplained (work pixels) and of the grey-level change between the registered squares. Root mean squares
    rather than means, because an expression moves a few features far while noise moves every pixel a little.
    Both are NaN where the face was lost."""
    from_work = np.linalg.inv(square.to_work)
    for _ in range(max(1, int(cfg['passes']))):
        flow = optical_flow.dense_flow(square.rest, square.crop(gray, alignment), cfg['flow'])
        correction = _fit_similarity(flow, square, cfg)
        if _corner_shift(correction, square.size) > float(cfg['lost_shift']) * square.size:
            return alignment, float('nan'), float('nan')
        alignment = alignment @ from_work @ correction @ square.to_work
    yy, xx = np.nonzero(square.ellipse)
    moved = np.column_stack([xx, yy]) + flow[yy, xx]
    explained = np.column_stack([xx, yy]) @ correction[:2, :2].T + correction[:2, 2]
    change = _blurred(square.crop(gray, alignment), cfg)[square.ellipse] - square.rest_blurred[square.ellipse]
    return (alignment, float(np.sqrt(((moved - explained) ** 2).sum(axis=1).mean())),
            float(np.sqrt((change ** 2).mean())))


def _opening(values: np.ndarray, width: int) -> np.ndarray:
    """Grey-scale opening (a running minimum, then a running maximum) over ``width`` frames: every excursion
    narrower than ``width`` is removed, wider ones keep their shape except for a flattened top."""
    if width < 2 or len(values) < width:
        return values.copy()
    before, after = (width - 1) // 2, width // 2
    windows = np.lib.stride_tricks.sliding_window_view
    eroded = windows(np.pad(values, (before, after), mode='edge'), width).min(axis=1)
    return windows(np.pad(eroded, (after, before), mode='edge'), width).max(axis=1)


def _key_frames(count: int, fps: float, rest_frame: int | None, cfg: Mapping[str, Any]) -> list[int]:
    step = max(1, int(round(float(cfg['key_seconds']) * fps)))
    keys = set(range(0, count, step)) | {int(rest_frame or 0)}
    if count - 1 - max(keys) >= step / 2:
        keys.add(count - 1)
    return sorted(keys)


def _consistent(faces: dict[int, FaceLandmarks | None], tolerance: float) -> dict[int, FaceLandmarks | None]:
    """``faces`` with the ones unlike the others set to None: with three or more boxes, a box whose side or centre
    differs from their median by more than ``tolerance`` x the median side."""
    boxes = {i: np.asarray(f.box, dtype=np.float64) for i, f in faces.items() if f is not None and f.box is not None}
    if len(boxes) < 3:
        return faces
    sides = {i: max(b[2] - b[0], b[3] - b[1]) for i, b in boxes.items()}
    centres = {i: (b[:2] + b[2:]) / 2 for i, b in boxes.items()}
    side = float(np.median(list(sides.values())))
    centre = np.median(np.array(list(centres.values())), axis=0)
    unlike = {i for i in boxes if abs(sides[i] - side) > tolerance * side
              or np.linalg.norm(centres[i] - centre) > tolerance * side}
    return {i: None if i in unlike else f for i, f in faces.items()}


def _choose_rest(clip: Clip, faces: dict[int, FaceLandmarks | None], rest_frame: int | None) -> int:
    if rest_frame is not None:
        if faces.get(rest_frame) is None:
            raise UserError(f'{clip.path}: no face found in the rest frame {rest_frame}')
        return int(rest_frame)
    found = [index for index in sorted(faces) if faces[index] is not None]
    if not found:
        raise UserError(f'{clip.path}: no face found in the clip (MTCNN looked at {len(faces)} of its '
                        f'{len(clip)} frames)')
    return found[0]


def _blink_width(fps: float, cfg: Mapping[str, Any]) -> int:
    """The opening's width in frames: odd, at least 3."""
    return max(3, int(round(float(cfg['blink_seconds']) * fps)) | 1)


def _smooth(curve: np.ndarray) -> np.ndarray:
    # a 5-tap binomial: video codecs update a slowly changing patch in steps, a frame or two late
    return np.convolve(np.pad(curve, 2, mode='edge'), np.array([1, 4, 6, 4, 1]) / 16, mode='valid')


def _contrast(curve: np.ndarray, width: int, floor: float) -> tuple[float, float]:
    """``(contrast, noise)`` of a measure over a clip: its frame-to-frame noise (the median distance of a frame
    from its smoothed neighbourhood, at least ``floor``) and how many times that the blink-free peak stands above
    the clip's resting level (its 10th percentile)."""
    noise = max(float(np.median(np.abs(curve - _smooth(curve)))), floor)
    envelope = _opening(curve, width)
    return (float(envelope.max()) - float(np.percentile(envelope, 10))) / noise, noise


def _filled(curve: np.ndarray) -> np.ndarray:
    """``curve`` with the frames where the face was lost (NaN) interpolated from their neighbours."""
    lost = ~np.isfinite(curve)
    if not lost.any():
        return curve
    frames = np.arange(len(curve))
    filled = curve.copy()
    filled[lost] = np.interp(frames[lost], frames[~lost], curve[~lost])
    return filled


def _apex_from_motion(motion: np.ndarray, fps: float, rest: int, cfg: Mapping[str, Any]
                      ) -> tuple[int, np.ndarray, list[int]]:
    """``(apex frame, envelope, peak frames)`` of a motion curve (no NaN): the opening finds the expression's
    window on the raw curve (smoothing first would widen a blink past the opening), the apex is the frame of
    greatest smoothed motion inside it."""
    envelope = _opening(motion, _blink_width(fps, cfg))
    smooth = _smooth(motion)
    candidates = envelope.copy()
    candidates[rest] = -np.inf
    top = int(np.argmax(candidates))
    level = envelope[top] - 1e-9 * max(1.0, abs(envelope[top]))
    low, high = top, top
    while low > 0 and envelope[low - 1] >= level:
        low -= 1
    while high < len(envelope) - 1 and envelope[high + 1] >= level:
        high += 1
    low, high = max(0, low - 1), min(len(envelope) - 1, high + 1)
    window = smooth[low:high + 1].copy()
    if low <= rest <= high:
        window[rest - low] = -np.inf
    apex = low + int(np.argmax(window))
    base = float(np.percentile(envelope, 10))
    threshold = base + float(cfg['peak_fraction']) * (smooth[apex] - base)
    first, last = apex, apex
    while first > low and smooth[first - 1] >= threshold and first - 1 != rest:
        first -= 1
    while last < high and smooth[last + 1] >= threshold and last + 1 != rest:
        last += 1
    return apex, envelope, list(range(first, last + 1))


def find_apex(clip: Clip, detector: LandmarkDetector, *, rest_frame: int | None = None,
              settings: Mapping[str, Any] | None = None) -> ApexResult:
    """Find the rest frame and the apex of the movement a clip films (the method: this module's docstring).

    ``detector`` is a ``face_detection.LandmarkDetector`` (e.g. ``LandmarkDetector(device='cpu', cache_dir=False,
    progress=False)``); only its ``detect_images`` is used, on the rest frame and the key frames. The rest frame is
    the first frame in which MTCNN finds a face (clips start at rest; see ``rest_seconds``), or ``rest_frame``.
    ``settings`` override ``APEX_SETTINGS``. A clip without a face is a ``UserError`` naming it.
    """
    cfg = _settings(settings)
    count = len(clip.frames)
    if count < 2:
        raise UserError(f'{clip.path}: the clip holds {count} frame(s); a rest and an expression frame are needed')
    if rest_frame is not None and not 0 <= int(rest_frame) < count:
        raise UserError(f'{clip.path}: rest frame {rest_frame} is outside the clip\'s {count} frames')
    started = time.perf_counter()
    keys = _key_frames(count, clip.fps, rest_frame, cfg)
    found = dict(zip(keys, detector.detect_images([clip.frames[i] for i in keys])))
    consistency = float(cfg['face_consistency'])
    faces = _consistent(found, consistency)
    if rest_frame is None and faces[0] is None:
        early = [i for i in range(1, min(count, max(3, round(float(cfg['rest_seconds']) * clip.fps))))
                 if i not in found]
        found.update(zip(early, detector.detect_images([clip.frames[i] for i in early])))
        faces = _consistent(found, consistency)
        keys = sorted(found)
    detect_seconds = time.perf_counter() - started
    rest = _choose_rest(clip, faces, rest_frame)
    rest_landmarks = faces[rest]

    started = time.perf_counter()
    square = _face_square(clip.frames[rest], rest_landmarks, cfg)
    rest_points = optical_flow.landmark_points(rest_landmarks)[list(optical_flow.ALIGN_POINTS)]
    tolerance = float(cfg['track_tolerance']) * max(square.inter_eye, 1.0)
    alignments = np.repeat(np.eye(3)[None], count, axis=0)
    readings = np.zeros((count, 2), dtype=np.float64)  # flow, appearance
    low_scale, high_scale = cfg['track_scale']
    for order in (range(rest + 1, count), range(rest - 1, -1, -1)):  # outwards from the rest frame
        alignment = np.eye(3)
        for index in order:
            gray = _gray(clip.frames[index], square.levels)
            tracked, *values = _register(gray, alignment, square, cfg)
            face = faces.get(index)
            if face is not None:  # a key frame: where MTCNN disagrees with the tracking, try its landmarks too
                found = optical_flow.landmark_points(face)[list(optical_flow.ALIGN_POINTS)]
                guess = rest_points @ alignment[:2, :2].T + alignment[:2, 2]
                start = _to3(optical_flow.similarity_transform(rest_points, found))
                scale = math.sqrt(abs(np.linalg.det(start[:2, :2])))
                if np.linalg.norm(found - guess, axis=1).max() > tolerance and low_scale <= scale <= high_scale:
                    other, *other_values = _register(gray, start, square, cfg)
                    if other_values[0] < values[0] or (np.isnan(values[0]) and not np.isnan(other_values[0])):
                        tracked, values = other, other_values
            alignment = tracked
            alignments[index], readings[index] = alignment, values
    readings[:, 0] *= optical_flow.REFERENCE_FACE_SIZE / square.size
    lost = ~np.isfinite(readings[:, 0])
    curves = {'flow': _filled(readings[:, 0]), 'appearance': _filled(readings[:, 1])}
    width = _blink_width(clip.fps, cfg)
    scored = {name: _contrast(curve, width, float(cfg['noise_floor'][name])) for name, curve in curves.items()}
    measure = max(scored, key=lambda name: scored[name][0])
    contrast, noise = scored[measure]
    apex, envelope, peak = _apex_from_motion(curves[measure] / noise, clip.fps, rest, cfg)
    motion = np.where(lost, np.nan, curves[measure] / noise)
    motion_seconds = time.perf_counter() - started
    return ApexResult(clip_path=Path(clip.path), fps=float(clip.fps), rest_frame=rest, apex_frame=apex,
                      motion=motion, envelope=envelope, peak_frames=peak, rest_landmarks=rest_landmarks,
                      alignments=alignments[:, :2, :].copy(), measure=measure,
                      flow_motion=np.where(lost, np.nan, readings[:, 0]),
                      appearance_change=np.where(lost, np.nan, readings[:, 1]), contrast=contrast,
                      still=contrast < float(cfg['still_contrast']), detected_frames=keys,
                      motion_seconds=motion_seconds, detect_seconds=detect_seconds)


# figures

def draw_motion(axes: Any, result: ApexResult, grades: Sequence[float] | np.ndarray | None = None,
                true_apex: int | None = None) -> None:
    """Draw motion over time on matplotlib ``axes``: the motion of each frame, the blink-free envelope, the rest and
    apex frames and the peak frames; with ``grades`` (one value per frame, 0-5 = HB I-VI, NaN where none) a grade
    curve on a second axis; with ``true_apex`` the known apex (synthetic clips) as a dotted line."""
    times = np.arange(len(result.motion)) / result.fps
    axes.plot(times, result.motion, color='0.55', linewidth=1, marker='.', markersize=3, label='motion')
    axes.plot(times, result.envelope, color='tab:blue', linewidth=1.8, label='without blinks')
    if result.peak_frames:
        axes.axvspan(times[result.peak_frames[0]] - 0.5 / result.fps, times[result.peak_frames[-1]] + 0.5 / result.fps,
                     color='tab:orange', alpha=0.15, label='peak frames')
    axes.axvline(times[result.rest_frame], color='tab:green', linestyle='--', label=f'rest (frame {result.rest_frame})')
    axes.axvline(times[result.apex_frame], color='tab:red', linestyle='--', label=f'apex (frame {result.apex_frame})')
    if true_apex is not None:
        axes.axvline(times[true_apex], color='black', linestyle=':', label=f'true apex (frame {true_apex})')
    axes.set_xlabel('time (s)')
    axes.set_ylabel(f'face {"motion" if result.measure == "flow" else "change"} (x frame noise)')
    axes.set_ylim(bottom=0)
    handles, labels = axes.get_legend_handles_labels()
    if grades is not None:
        values = np.asarray(grades, dtype=np.float64)
        if values.shape != (len(result.motion),):
            raise ValueError(f'grades: one value per frame ({len(result.motion)}), got shape {values.shape}')
        twin = axes.twinx()
        twin.plot(times, values, color='tab:purple', linewidth=1.6, label='grade')
        twin.set_ylim(-0.3, len(HB_GRADES) - 0.7)
        twin.set_yticks(range(len(HB_GRADES)), [f'HB {g}' for g in HB_GRADES])
        extra_handles, extra_labels = twin.get_legend_handles_labels()
        handles, labels = handles + extra_handles, labels + extra_labels
    axes.legend(handles, labels, loc='best', fontsize=7, framealpha=0.8)


def save_motion_figure(result: ApexResult, path: str | os.PathLike,
                       grades: Sequence[float] | np.ndarray | None = None, title: str | None = None,
                       true_apex: int | None = None) -> Path:
    """Write the motion-over-time figure of ``draw_motion`` as a PNG (``utils.save_figure``: atomic, marked as this
    toolkit's); returns its path."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 3.4), layout='constrained')
    axes = figure.add_subplot()
    draw_motion(axes, result, grades, true_apex)
    axes.set_title(title or f'{Path(result.clip_path).name}: rest frame {result.rest_frame}, apex frame '
                            f'{result.apex_frame} ({result.apex_frame / result.fps:.2f} s)', fontsize=9)
    return save_figure(figure, path)
