"""Procedurally drawn faces with a one-sided facial palsy of known House-Brackmann grade: the built-in demo data.

No downloads and no real people: every face is drawn with numpy/OpenCV from random parameters, so the whole
pipeline (prepare -> train -> evaluate -> infer -> attention) can be tried in minutes and tested offline.

Per-subject and per-photo parameters are kept apart, so that one person can be drawn in many photos:

* ``Identity`` - fixed per synthetic subject: face shape, skin tone, eyes, brows, nose, lips, hair, background.
* ``Palsy`` - fixed per subject: the grade (0-5 = HB I-VI), the patient's affected side and a severity in [0, 1].
* ``PhotoConditions`` - per photo: pose (rotation, scale, shift), lighting, blur, noise, gaze and an
  ``Expression`` (smile, eye closure, brow raise, each 0-1; all 0 = rest).

A subject's photos follow the clinical examination series ``EXPRESSION_PROTOCOL`` (rest, brow raise, eye closure,
smile), because House-Brackmann grades are read mostly from voluntary movement; ``expressions='rest'`` draws
resting faces only. Rest / expression pairs of one sitting (``render_pair``; ``generate_dataset(pairs=True)``
writes them with a ``neutral_path`` column) share pose and lighting and differ in ``expression`` only: the input
of optical-flow models, which read how far each side moves between the two photos.

How a grade shows (severity ``s`` grows with the grade, ``s = 0`` for grade 0; see ``SEVERITY_RANGE``), on the
affected side only:

* brow droop (the lateral end more) and a flatter brow arch;
* a wider palpebral fissure: lower eyelid droop (white sclera shows below the iris) and upper lid retraction,
  i.e. the incomplete eye closure of a paralysed orbicularis oculi;
* mouth corner droop, a slightly medial corner and the mouth pulled towards the healthy side;
* a flatter nasolabial fold and cheek;
* reduced movement in every expression: the affected side follows a smile, an eye closure or a brow raise only
  by ``1 - s`` (hardly any movement for grade VI), so the affected eye stays open when the other closes.

The signs are sized to be visible inside the 28x28 crops of a 224x224 face square that the network reads around
the eye and mouth-corner landmarks. Grade 0 faces are symmetric up to a small natural per-subject and per-photo
asymmetry.

Side convention: ``side`` is the *patient's* side. In a frontal photo the patient's left is the image right, so a
``side='left'`` palsy changes the features at the image-right landmarks (``eye_r``/``mouth_r`` columns).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from annotations import HB_DESCRIPTIONS, HB_GRADES, LANDMARK_COLUMNS, NEUTRAL_LANDMARK_COLUMNS
from utils import UserError, atomic_write_text

__all__ = [
    'GENERATOR_VERSION', 'LANDMARK_COLUMNS', 'SEVERITY_RANGE', 'Identity', 'Palsy', 'Expression', 'PhotoConditions',
    'FaceGeometry', 'EXPRESSION_PROTOCOL', 'affected_image_side', 'sample_identity', 'sample_palsy',
    'sample_expression', 'photo_expressions', 'sample_photo', 'face_geometry', 'render_face', 'generate_dataset',
    'preview_sheet', 'check_detection', 'PhotoPair', 'render_pair', 'PAIR_EXPRESSIONS', 'pair_expressions',
    'NEUTRAL_LANDMARK_COLUMNS', 'REST_FOLDER', 'rest_photo_path', 'format_detection', 'is_synthetic_dataset',
    'read_manifest', 'record_detection', 'remove_generated_files',
]

GENERATOR_VERSION = 1
MANIFEST_NAME = 'synthetic_faces.json'
# Severity drawn per subject inside its grade's interval: intervals do not overlap, so every sign is monotone in
# the grade, while subjects of one grade still differ a little (as patients do).
SEVERITY_RANGE = ((0.0, 0.0), (0.17, 0.23), (0.37, 0.43), (0.57, 0.63), (0.77, 0.83), (0.95, 1.0))
# Geometry is designed on a 256-pixel reference photo and scaled to the requested size.
REFERENCE_SIZE = 256.0
# Drawing happens at this multiple of the output size, then INTER_AREA downsampling anti-aliases every edge.
SUPERSAMPLE = 2
_SHIFT = 4  # fixed-point bits for sub-pixel OpenCV drawing
# How far each sign moves at full severity, in reference pixels.
BROW_DROOP_PX = 6.5
LOWER_LID_DROOP_PX = 6.0
UPPER_LID_RETRACTION_PX = 1.2
MOUTH_DROOP_PX = 8.0
MOUTH_MIDLINE_SHIFT_PX = 3.0
MOUTH_CORNER_MEDIAL_PX = 2.5
# The clinical photo series of a facial nerve examination: House-Brackmann grades are read mostly from voluntary
# movement (grades II-IV can look nearly symmetric at rest), so each subject's photos cycle through these.
EXPRESSION_PROTOCOL = ('rest', 'brow_raise', 'eye_closure', 'smile')
EXPRESSION_MODES = ('protocol', 'rest')
# Rest / expression pairs: the expression photo of a pair is one of the movements (a rest-rest pair shows none).
PAIR_EXPRESSIONS = EXPRESSION_PROTOCOL[1:]
# The rest photo of a pair lives in <root>/rest/grade_N/: grade folder scanners only read grade_N folders directly
# under the root, so rest photos are never taken for extra training photos.
REST_FOLDER = 'rest'

# palettes (RGB)
_SKIN_TONES = np.array([(255, 224, 196), (241, 194, 167), (224, 172, 140), (198, 134, 103), (161, 102, 72),
                        (120, 75, 50), (92, 58, 40)], dtype=np.float32)
_HAIR_COLOURS = np.array([(28, 24, 22), (58, 40, 30), (98, 68, 44), (176, 142, 96), (134, 62, 36),
                          (150, 148, 146), (215, 210, 200)], dtype=np.float32)
_IRIS_COLOURS = np.array([(86, 54, 32), (52, 36, 26), (118, 88, 52), (78, 106, 70), (70, 108, 156),
                          (108, 118, 128)], dtype=np.float32)
_HAIR_STYLES = ('short', 'long', 'fringe', 'receding')


# parameters

@dataclass(frozen=True)
class Identity:
    """What stays the same in every photo of one synthetic subject (reference-pixel units, RGB colours)."""
    face_centre: tuple[float, float]
    face_half_width: float
    face_half_height: float
    jaw: float                      # 1 = oval, smaller = narrower chin
    skin: tuple[float, float, float]
    eye_level: float                # fraction of face height from the top of the face oval
    eye_spacing: float              # half the inter-pupil distance
    eye_half_width: float
    upper_lid: float                # upper lid height above the eye line
    lower_lid: float                # lower lid depth below the eye line
    eye_tilt: float                 # outer corner raise
    iris_radius: float
    iris_colour: tuple[float, float, float]
    brow_gap: float                 # brow above the eye line
    brow_thickness: float
    brow_arch: float
    brow_colour: tuple[float, float, float]
    nose_level: float
    nose_half_width: float
    mouth_level: float
    mouth_half_width: float
    upper_lip: float
    lower_lip: float
    lip_colour: tuple[float, float, float]
    fold_strength: float            # depth of the nasolabial fold at rest, 0-1
    hair_style: str
    hair_colour: tuple[float, float, float]
    hairline: float                 # fraction of face height
    background: tuple[tuple[float, float, float], tuple[float, float, float]]
    shirt: tuple[float, float, float]
    # natural asymmetry of a healthy face (image left, image right offsets), reference pixels
    brow_asymmetry: tuple[float, float] = (0.0, 0.0)
    lid_asymmetry: tuple[float, float] = (0.0, 0.0)
    mouth_asymmetry: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class Palsy:
    """The subject's condition: ``grade`` 0-5 (HB I-VI), the patient's affected ``side`` and its ``severity``."""
    grade: int
    side: str          # 'left' / 'right' (the patient's) or 'none'
    severity: float    # 0 (normal) .. 1 (total paralysis)


@dataclass(frozen=True)
class Expression:
    """Voluntary movement of a healthy face, each 0 (rest) .. 1 (full); the affected side moves ``1 - severity``
    as much."""
    smile: float = 0.0
    eye_closure: float = 0.0
    brow_raise: float = 0.0


@dataclass(frozen=True)
class PhotoConditions:
    """What changes from photo to photo of the same subject."""
    rotation: float = 0.0                   # degrees, counter-clockwise
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)  # reference pixels
    brightness: float = 1.0
    light_angle: float = 0.0                # radians; direction of the brightness gradient
    light_strength: float = 0.0             # relative brightness change across the photo
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    blur: float = 0.0                       # Gaussian sigma, output pixels
    noise: float = 0.0                      # Gaussian sigma, grey levels
    gaze: tuple[float, float] = (0.0, 0.0)  # iris offset, reference pixels
    expression: Expression = field(default_factory=Expression)
    # per-photo natural asymmetry (image left, image right), reference pixels
    jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # brow l, brow r, mouth l, mouth r


@dataclass
class FaceGeometry:
    """Key shapes of one drawn face in reference pixels before the pose. Index 0 of each pair is the image left."""
    eye_centre: np.ndarray      # (2, 2)
    eye_half_width: float
    upper_lid: np.ndarray       # (2,)
    lower_lid: np.ndarray       # (2,)
    eye_tilt: float
    brow_inner: np.ndarray      # (2, 2) x, y
    brow_outer: np.ndarray      # (2, 2)
    brow_arch: np.ndarray       # (2,)
    nose_tip: np.ndarray        # (2,)
    mouth_centre: np.ndarray    # (2,)
    mouth_corner: np.ndarray    # (2, 2)
    fold: np.ndarray            # (2,) nasolabial fold depth 0-1
    side_severity: np.ndarray   # (2,) severity on each image side

    @property
    def eye_aperture(self) -> np.ndarray:
        """Vertical eye opening per image side (reference pixels): widens with the grade on the affected side."""
        return self.upper_lid + self.lower_lid

    def landmarks(self) -> np.ndarray:
        """MTCNN's five points: left eye, right eye, nose, left mouth corner, right mouth corner (image sides)."""
        return np.array([self.eye_centre[0], self.eye_centre[1], self.nose_tip,
                         self.mouth_corner[0], self.mouth_corner[1]], dtype=np.float32)


# sampling

def affected_image_side(side: str) -> int | None:
    """Image side (0 = image left, 1 = image right) of the patient's affected ``side``: in a frontal photo the
    patient's left is the image right."""
    return {'left': 1, 'right': 0}.get(side)


def _mix(palette: np.ndarray, rng: np.random.Generator) -> tuple[float, float, float]:
    """A colour between two neighbouring palette entries, so tones vary continuously."""
    i = rng.integers(0, len(palette) - 1)
    t = rng.uniform(0, 1)
    return tuple(float(v) for v in palette[i] * (1 - t) + palette[i + 1] * t)


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw one synthetic person."""
    u = rng.uniform
    half_width = u(57, 66)
    skin = np.array(_mix(_SKIN_TONES, rng))
    hair = np.array(_HAIR_COLOURS[rng.integers(0, len(_HAIR_COLOURS))]) * u(0.85, 1.15)
    hair = np.clip(hair, 0, 255)
    # brows are darker than light hair and clearly darker than the skin (grey/white hair keeps darker brows)
    brow = np.minimum(hair * u(0.6, 0.9), skin * 0.4)
    lip = skin * u(0.55, 0.7) + np.array([150.0, 40.0, 50.0]) * u(0.25, 0.4)
    background_a = np.array([u(60, 230), u(60, 230), u(60, 230)])
    background_b = np.clip(background_a * u(0.65, 1.0), 0, 255)
    return Identity(
        face_centre=(128.0 + u(-2, 2), 134.0 + u(-3, 3)),
        face_half_width=half_width,
        face_half_height=half_width * u(1.24, 1.38),
        jaw=u(0.70, 0.90),
        skin=tuple(float(v) for v in skin),
        eye_level=u(0.405, 0.44),
        eye_spacing=half_width * u(0.46, 0.52),
        eye_half_width=u(12.5, 15.0),
        upper_lid=u(5.0, 6.2),
        lower_lid=u(3.4, 4.4),
        eye_tilt=u(-1.0, 1.5),
        iris_radius=u(5.0, 5.8),
        iris_colour=tuple(float(v) for v in _IRIS_COLOURS[rng.integers(0, len(_IRIS_COLOURS))]),
        brow_gap=u(13.0, 15.5),
        brow_thickness=u(2.8, 4.6),
        brow_arch=u(2.0, 4.5),
        brow_colour=tuple(float(v) for v in brow),
        nose_level=u(0.63, 0.67),
        nose_half_width=u(10.0, 13.0),
        mouth_level=u(0.78, 0.815),
        mouth_half_width=u(19.0, 24.0),
        upper_lip=u(3.2, 5.0),
        lower_lip=u(4.0, 6.5),
        lip_colour=tuple(float(v) for v in np.clip(lip, 0, 255)),
        fold_strength=u(0.65, 1.0),
        hair_style=_HAIR_STYLES[rng.integers(0, len(_HAIR_STYLES))],
        hair_colour=tuple(float(v) for v in hair),
        hairline=u(0.10, 0.19),
        background=(tuple(float(v) for v in background_a), tuple(float(v) for v in background_b)),
        shirt=tuple(float(v) for v in rng.uniform(30, 220, size=3)),
        brow_asymmetry=tuple(float(v) for v in rng.normal(0, 0.3, size=2)),
        lid_asymmetry=tuple(float(v) for v in rng.normal(0, 0.15, size=2)),
        mouth_asymmetry=tuple(float(v) for v in rng.normal(0, 0.25, size=2)),
    )


def sample_palsy(grade: int, rng: np.random.Generator) -> Palsy:
    """The condition of a subject of House-Brackmann ``grade`` (0-5): a random affected side for grade > 0."""
    if not 0 <= grade < len(SEVERITY_RANGE):
        raise ValueError(f'grade must be 0-5, got {grade}')
    if grade == 0:
        return Palsy(grade=0, side='none', severity=0.0)
    low, high = SEVERITY_RANGE[grade]
    return Palsy(grade=grade, side=('left', 'right')[int(rng.integers(0, 2))], severity=float(rng.uniform(low, high)))


def sample_expression(kind: str, rng: np.random.Generator) -> Expression:
    """One expression of the protocol at a random effort (a healthy face's full movement is 1)."""
    if kind == 'rest':  # a faint resting smile: people rarely sit perfectly still
        return Expression(smile=float(rng.uniform(0.0, 0.15)))
    effort = float(rng.uniform(0.6, 1.0))
    if kind == 'smile':
        return Expression(smile=effort)
    if kind == 'eye_closure':
        return Expression(eye_closure=effort)
    if kind == 'brow_raise':
        return Expression(brow_raise=effort)
    raise ValueError(f'unknown expression {kind!r}; choose from {EXPRESSION_PROTOCOL}')


def photo_expressions(count: int, mode: str, rng: np.random.Generator) -> list[str]:
    """The expression of each of a subject's ``count`` photos: the protocol from a random start (so that sets of
    one or two photos per subject still mix expressions), or rest only."""
    if mode == 'rest':
        return ['rest'] * count
    if mode != 'protocol':
        raise ValueError(f'expressions must be one of {EXPRESSION_MODES}, got {mode!r}')
    start = int(rng.integers(0, len(EXPRESSION_PROTOCOL)))
    return [EXPRESSION_PROTOCOL[(start + n) % len(EXPRESSION_PROTOCOL)] for n in range(count)]


def pair_expressions(count: int, rng: np.random.Generator) -> list[str]:
    """The expression photo of each of a subject's ``count`` rest / expression pairs: the movements of the protocol
    (brow raise, eye closure, smile) from a random start, so every pair shows movement."""
    start = int(rng.integers(0, len(PAIR_EXPRESSIONS)))
    return [PAIR_EXPRESSIONS[(start + n) % len(PAIR_EXPRESSIONS)] for n in range(count)]


def sample_photo(rng: np.random.Generator, expression: Expression | None = None) -> PhotoConditions:
    """Draw the conditions of one photo: mild pose, lighting and camera variation; at rest unless an
    ``expression`` is given."""
    u = rng.uniform
    if expression is None:
        expression = sample_expression('rest', rng)
    return PhotoConditions(
        rotation=float(rng.normal(0, 3.0)),
        scale=float(u(0.92, 1.06)),
        shift=(float(u(-7, 7)), float(u(-6, 6))),
        brightness=float(u(0.8, 1.15)),
        light_angle=float(u(0, 2 * math.pi)),
        light_strength=float(u(0.0, 0.28)),
        tint=tuple(float(v) for v in u(0.93, 1.07, size=3)),
        blur=float(u(0.0, 0.9)),
        noise=float(u(0.0, 5.0)),
        gaze=(float(rng.normal(0, 0.8)), float(rng.normal(0, 0.4))),
        expression=expression,
        jitter=tuple(float(v) for v in rng.normal(0, 0.2, size=4)),
    )


# geometry

def face_geometry(identity: Identity, palsy: Palsy, photo: PhotoConditions) -> FaceGeometry:
    """Place every feature for this subject, condition and photo (reference pixels, before the pose).

    All palsy signs are computed here, so that the drawing code stays free of clinical logic and a measured
    asymmetry (``eye_aperture``, ``mouth_corner``) can be checked against the grade.
    """
    idt, expr = identity, photo.expression
    cx, cy = idt.face_centre
    top = cy - idt.face_half_height
    height = 2 * idt.face_half_height
    eye_y = top + idt.eye_level * height
    severity = np.zeros(2)
    affected = affected_image_side(palsy.side)
    if affected is not None:
        severity[affected] = palsy.severity
    movement = 1.0 - severity          # how much of a voluntary movement each side still makes
    outward = np.array([-1.0, 1.0])    # image-left features lie towards smaller x

    eye_x = cx + outward * idt.eye_spacing
    eye_centre = np.stack([eye_x, np.full(2, eye_y)], axis=1)
    lid_asym = np.asarray(idt.lid_asymmetry)
    upper = (idt.upper_lid + lid_asym + UPPER_LID_RETRACTION_PX * severity) * (1 - 0.92 * expr.eye_closure * movement)
    lower = (idt.lower_lid - 0.5 * lid_asym + LOWER_LID_DROOP_PX * severity) * (1 - 0.6 * expr.eye_closure * movement)

    brow_lift = 5.0 * expr.brow_raise * movement + np.asarray(idt.brow_asymmetry) + np.asarray(photo.jitter[:2])
    brow_base = eye_y - idt.brow_gap - brow_lift
    # a paralysed frontalis lets the brow fall, the lateral end most, at worst down onto the upper lid
    inner_y = np.minimum(brow_base + 0.6 * BROW_DROOP_PX * severity, eye_y - upper - 2.0)
    outer_y = np.minimum(brow_base + BROW_DROOP_PX * severity - 0.5 * idt.eye_tilt, eye_y - upper - 1.0)
    brow_inner = np.stack([eye_x - outward * 0.95 * idt.eye_half_width, inner_y], axis=1)
    brow_outer = np.stack([eye_x + outward * 1.25 * idt.eye_half_width, outer_y], axis=1)
    brow_arch = idt.brow_arch * (1 - 0.6 * severity) + 1.5 * expr.brow_raise * movement

    nose_tip = np.array([cx, top + idt.nose_level * height])
    mouth_y = top + idt.mouth_level * height
    # the healthy side pulls the mouth towards itself
    mouth_cx = cx + MOUTH_MIDLINE_SHIFT_PX * (severity[0] - severity[1])
    corner_x = mouth_cx + outward * (idt.mouth_half_width + 3.0 * expr.smile * movement
                                     - MOUTH_CORNER_MEDIAL_PX * severity)
    corner_y = (mouth_y + MOUTH_DROOP_PX * severity - 6.0 * expr.smile * movement
                + np.asarray(idt.mouth_asymmetry) + np.asarray(photo.jitter[2:]))
    mouth_corner = np.stack([corner_x, corner_y], axis=1)
    fold = np.clip(idt.fold_strength * movement * (1 + 0.6 * expr.smile), 0, 1.3)
    return FaceGeometry(
        eye_centre=eye_centre, eye_half_width=idt.eye_half_width, upper_lid=upper, lower_lid=lower,
        eye_tilt=idt.eye_tilt, brow_inner=brow_inner, brow_outer=brow_outer, brow_arch=brow_arch,
        nose_tip=nose_tip, mouth_centre=np.array([mouth_cx, mouth_y]), mouth_corner=mouth_corner, fold=fold,
        side_severity=severity)


# drawing helpers

class _Canvas:
    """An RGB uint8 image drawn in reference coordinates with sub-pixel, anti-aliased OpenCV shapes.

    Opaque shapes go straight onto the pixels (OpenCV blends their anti-aliased edges); translucent or softened
    ones (shadows, folds, highlights) are rasterised as a mask inside their bounding box, blurred and
    alpha-blended. Large soft masks are blurred at reduced resolution: same look, a fraction of the time.
    """

    def __init__(self, size: int):
        self.size = size
        self.unit = size / REFERENCE_SIZE
        self.pixels = np.zeros((size, size, 3), dtype=np.uint8)

    def _fixed(self, points: np.ndarray, origin: np.ndarray) -> np.ndarray:
        return np.round((np.asarray(points, dtype=np.float64) * self.unit - origin) * (1 << _SHIFT)).astype(np.int32)

    def _box(self, bounds: np.ndarray, pad: float) -> tuple[int, int, int, int] | None:
        x0, y0, x1, y1 = bounds
        x0 = max(int(math.floor((x0 - pad) * self.unit)), 0)
        y0 = max(int(math.floor((y0 - pad) * self.unit)), 0)
        x1 = min(int(math.ceil((x1 + pad) * self.unit)) + 1, self.size)
        y1 = min(int(math.ceil((y1 + pad) * self.unit)) + 1, self.size)
        return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None

    def paint(self, draw: Callable[[np.ndarray, Callable[[np.ndarray], np.ndarray], float, Any], None],
              bounds: np.ndarray, colour: Sequence[float], alpha: float = 1.0, soften: float = 0.0,
              direct: bool = True) -> None:
        """Rasterise ``draw(image, to_fixed, unit, colour)`` inside ``bounds`` (reference x0, y0, x1, y1) in
        ``colour`` (RGB) with opacity ``alpha``; ``soften`` is a blur sigma in reference pixels. ``direct=False``
        forces the mask path (for draw functions that build their own mask)."""
        if alpha <= 0:
            return
        colour = tuple(float(c) for c in colour)
        if direct and alpha >= 1 and soften <= 0:
            draw(self.pixels, lambda pts: self._fixed(pts, np.zeros(2)), self.unit, colour)
            return
        box = self._box(bounds, 3 * soften + 1)
        if box is None:
            return
        x0, y0, x1, y1 = box
        mask = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
        origin = np.array([x0, y0], dtype=np.float64)
        draw(mask, lambda pts: self._fixed(pts, origin), self.unit, 255)
        weight = mask.astype(np.float32) * (alpha / 255.0)
        sigma = soften * self.unit
        if sigma > 6:  # blur a 4x smaller mask: a wide Gaussian hides the resampling
            small = cv2.resize(weight, ((x1 - x0 + 3) // 4, (y1 - y0 + 3) // 4), interpolation=cv2.INTER_AREA)
            weight = cv2.resize(cv2.GaussianBlur(small, (0, 0), sigma / 4), (x1 - x0, y1 - y0),
                                interpolation=cv2.INTER_LINEAR)
        elif sigma > 0:
            weight = cv2.GaussianBlur(weight, (0, 0), sigma)
        region = self.pixels[y0:y1, x0:x1]
        fill = np.empty_like(region)
        fill[:] = np.rint(np.clip(colour, 0, 255)).astype(np.uint8)
        np.clip(weight, 0.0, 1.0, out=weight)
        region[:] = cv2.blendLinear(region, fill, 1.0 - weight, weight)

    # shapes in reference coordinates

    def polygon(self, points: np.ndarray, colour, alpha: float = 1.0, soften: float = 0.0) -> None:
        points = np.asarray(points, dtype=np.float64)
        self.paint(lambda img, f, u, c: cv2.fillPoly(img, [f(points)], c, cv2.LINE_AA, _SHIFT),
                   _bounds(points), colour, alpha, soften)

    def polyline(self, points: np.ndarray, thickness: float, colour, alpha: float = 1.0, soften: float = 0.0) -> None:
        points = np.asarray(points, dtype=np.float64)
        self.paint(lambda img, f, u, c: cv2.polylines(img, [f(points)], False, c, max(int(round(thickness * u)), 1),
                                                      cv2.LINE_AA, _SHIFT),
                   _bounds(points, thickness), colour, alpha, soften)

    def ellipse(self, centre: Sequence[float], axes: Sequence[float], colour, alpha: float = 1.0,
                soften: float = 0.0, angle: float = 0.0) -> None:
        self.polygon(_ellipse_points(centre, axes, angle), colour, alpha, soften)


def _ellipse_points(centre: Sequence[float], axes: Sequence[float], angle: float = 0.0, n: int = 72) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    theta = math.radians(angle)
    x, y = axes[0] * np.cos(t), axes[1] * np.sin(t)
    return np.stack([centre[0] + x * math.cos(theta) - y * math.sin(theta),
                     centre[1] + x * math.sin(theta) + y * math.cos(theta)], axis=1)


def _bounds(points: np.ndarray, margin: float = 0.0) -> np.ndarray:
    return np.array([points[:, 0].min() - margin, points[:, 1].min() - margin,
                     points[:, 0].max() + margin, points[:, 1].max() + margin])


def _quad(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, n: int = 16) -> np.ndarray:
    """Points of a quadratic Bezier curve (smooth lids, lips and folds)."""
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2


def _shade(colour: Sequence[float], factor: float) -> np.ndarray:
    return np.clip(np.asarray(colour, dtype=np.float32) * factor, 0, 255)


# drawing

def _face_outline(idt: Identity, n: int = 72) -> np.ndarray:
    """Face oval whose lower half narrows towards the chin by ``jaw``."""
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    below = np.clip(np.sin(t), 0, None)
    x = idt.face_centre[0] + idt.face_half_width * np.cos(t) * (1 - (1 - idt.jaw) * below ** 2)
    y = idt.face_centre[1] + idt.face_half_height * np.sin(t)
    return np.stack([x, y], axis=1)


def _draw_background_and_body(canvas: _Canvas, idt: Identity) -> None:
    size = canvas.size
    ramp = np.linspace(0, 1, size, dtype=np.float32)[:, None]
    a, b = (np.asarray(c, dtype=np.float32) for c in idt.background)
    canvas.pixels[:] = np.rint(a * (1 - ramp) + b * ramp).astype(np.uint8)[:, None, :]
    cx, cy = idt.face_centre
    chin = cy + idt.face_half_height
    if idt.hair_style == 'long':  # hair falling behind the shoulders, rounded over the crown
        hw = idt.face_half_width
        crown = _ellipse_points((cx, cy - 20), (hw + 13, idt.face_half_height * 0.95), n=48)
        crown = crown[crown[:, 1] <= cy - 20]
        crown = crown[np.argsort(-crown[:, 0])]
        canvas.polygon(np.vstack([[[cx - hw - 22, chin + 28], [cx + hw + 22, chin + 28]], crown]), idt.hair_colour)
    neck_w = idt.face_half_width * 0.55
    canvas.polygon(np.array([[cx - neck_w, chin - 30], [cx + neck_w, chin - 30], [cx + neck_w + 4, 262],
                             [cx - neck_w - 4, 262]]), _shade(idt.skin, 0.82))
    canvas.ellipse((cx, chin + 62), (idt.face_half_width * 1.9, 48), idt.shirt)
    canvas.ellipse((cx, chin + 8), (neck_w * 1.1, 10), _shade(idt.skin, 0.6), alpha=0.5, soften=4)


def _draw_head(canvas: _Canvas, idt: Identity) -> None:
    cx, cy = idt.face_centre
    hw, hh = idt.face_half_width, idt.face_half_height
    top = cy - hh
    hair = np.asarray(idt.hair_colour)
    if idt.hair_style != 'receding':
        canvas.ellipse((cx, top + 0.42 * hh), (hw + 7, 0.62 * hh), hair)  # hair mass behind the crown
    # ears at eye-to-nose height
    ear_y = top + 2 * hh * 0.53
    for side in (-1, 1):
        canvas.ellipse((cx + side * (hw * 0.97), ear_y), (7.5, 14.5), _shade(idt.skin, 0.9))
        canvas.ellipse((cx + side * (hw * 0.99), ear_y), (3.5, 8.5), _shade(idt.skin, 0.7), alpha=0.6, soften=1.2)
    outline = _face_outline(idt)
    canvas.polygon(outline, idt.skin)
    # soft shading towards the face border gives the oval depth (and MTCNN a face-like luminance pattern)
    canvas.polygon(outline, _shade(idt.skin, 0.72), alpha=0.55, soften=7.0)
    canvas.ellipse((cx, cy + 0.05 * hh), (hw * 0.78, hh * 0.8), idt.skin, alpha=0.85, soften=9.0)
    # hair over the forehead: below the crown's outline, above a curved hairline
    crown = _ellipse_points((cx, top + 0.42 * hh), (hw + 7, 0.62 * hh), n=48)
    crown = crown[crown[:, 1] <= top + 0.42 * hh]
    crown = crown[np.argsort(-crown[:, 0])]  # right to left over the top
    hairline_y = top + 2 * hh * idt.hairline
    xs = np.linspace(-1, 1, 25)
    if idt.hair_style in ('short', 'long'):
        front = np.stack([cx + xs * (hw + 7), hairline_y + 9 * xs ** 2 - 2 * np.cos(xs * 9)], axis=1)
        canvas.polygon(np.vstack([front, crown]), hair)
        if idt.hair_style == 'long':
            for side in (-1, 1):
                canvas.polygon(np.array([[cx + side * (hw + 7), top + 0.3 * hh], [cx + side * (hw - 4), hairline_y + 6],
                                         [cx + side * (hw - 1), ear_y - 12], [cx + side * (hw + 9), ear_y + 30]]),
                               hair)
    elif idt.hair_style == 'fringe':
        front = np.stack([cx + xs * (hw + 5), hairline_y + 14 + 6 * xs ** 2 + 1.5 * np.sin(xs * 20)], axis=1)
        canvas.polygon(np.vstack([front, crown]), hair)
    else:  # receding: short hair only above the ears
        for side in (-1, 1):
            canvas.ellipse((cx + side * (hw + 1), top + 0.62 * hh), (5.5, 0.28 * hh), hair, alpha=0.9,
                           angle=-side * 8)


def _skin_darkness(skin: Sequence[float]) -> float:
    """0 for light skin .. 1 for the darkest tones: how much extra highlight the face needs so that its
    features keep the contrast a detector (and a viewer) relies on, as studio lighting would give."""
    luminance = 0.299 * skin[0] + 0.587 * skin[1] + 0.114 * skin[2]
    return float(np.clip((185.0 - luminance) / 110.0, 0.0, 1.0))


def _draw_highlights(canvas: _Canvas, idt: Identity, geo: FaceGeometry) -> None:
    """Light on the forehead, nose bridge and cheekbones; stronger on darker skin."""
    strength = 0.15 + 0.35 * _skin_darkness(idt.skin)
    light = np.clip(np.asarray(idt.skin) * 1.45 + 25, 0, 255)
    cx = idt.face_centre[0]
    eye_y = float(geo.eye_centre[0, 1])
    tx, ty = geo.nose_tip
    canvas.ellipse((cx, eye_y - 28), (idt.face_half_width * 0.5, 9), light, alpha=strength, soften=5.0)
    canvas.polyline(np.array([[tx, eye_y + 2], [tx, ty - 5]]), 2.5, light, alpha=1.3 * strength, soften=1.5)
    canvas.ellipse((tx, ty - 3), (3.5, 3), light, alpha=1.3 * strength, soften=1.2)
    for k in (0, 1):
        ex = float(geo.eye_centre[k, 0])
        canvas.ellipse((ex + (-1, 1)[k] * 4, eye_y + 17), (10, 5), light, alpha=strength, soften=3.5)


def _draw_eye(canvas: _Canvas, idt: Identity, geo: FaceGeometry, photo: PhotoConditions, k: int) -> None:
    outward = (-1.0, 1.0)[k]
    ex, ey = geo.eye_centre[k]
    w = geo.eye_half_width
    up, low = geo.upper_lid[k], geo.lower_lid[k]
    tilt = geo.eye_tilt
    inner = np.array([ex - outward * w, ey + 0.4 * tilt])
    outer = np.array([ex + outward * w, ey - 0.6 * tilt])
    apex_up = np.array([ex - outward * 0.1 * w, ey - 2 * up])      # control points: the curve peaks at ~ up
    apex_low = np.array([ex + outward * 0.1 * w, ey + 2 * low])
    upper = _quad(inner, apex_up, outer, 20)
    lower = _quad(outer, apex_low, inner, 20)
    almond = np.vstack([upper, lower])
    skin = np.asarray(idt.skin)
    # eye socket shadow and lid crease
    canvas.ellipse((ex, ey - 2.5), (w * 1.3, 9.5), _shade(skin, 0.7), alpha=0.55, soften=3.0)
    canvas.polyline(_quad(inner + [0, -2], apex_up + [0, -5.5], outer + [0, -2.5], 16), 1.0, _shade(skin, 0.55),
                    alpha=0.45, soften=0.6)
    # sclera, then the iris clipped to it
    canvas.polygon(almond, (236, 232, 226))
    iris_c = (ex + photo.gaze[0], ey + photo.gaze[1])
    r = idt.iris_radius

    def clipped_disc(radius: float):
        def draw(mask, fixed, unit, value):
            disc = np.zeros_like(mask)
            cv2.fillPoly(disc, [fixed(_ellipse_points(iris_c, (radius, radius), n=36))], 255, cv2.LINE_AA, _SHIFT)
            cv2.fillPoly(mask, [fixed(almond)], 255, cv2.LINE_AA, _SHIFT)
            np.minimum(mask, disc, out=mask)
        return draw

    bounds = np.array([iris_c[0] - r, iris_c[1] - r, iris_c[0] + r, iris_c[1] + r])
    canvas.paint(clipped_disc(r), bounds, idt.iris_colour, direct=False)
    canvas.paint(clipped_disc(r * 0.45), bounds, (12, 10, 10), direct=False)
    glint = (iris_c[0] - 0.35 * r, iris_c[1] - 0.35 * r)
    canvas.ellipse(glint, (0.2 * r, 0.2 * r), (250, 250, 250), alpha=0.8)
    # upper lid margin with lashes, thinner lower lid margin, shadow of the upper lid on the eyeball
    canvas.polyline(upper, 1.2, _shade(skin, 0.55), alpha=0.35, soften=0.8)
    canvas.polyline(upper, 1.9, (25, 20, 20), alpha=0.95)
    canvas.polyline(lower, 0.9, _shade(skin, 0.45), alpha=0.7)


def _draw_brow(canvas: _Canvas, idt: Identity, geo: FaceGeometry, k: int) -> None:
    inner, outer = geo.brow_inner[k], geo.brow_outer[k]
    peak = inner + 0.62 * (outer - inner) + np.array([0.0, -2.0 * geo.brow_arch[k]])
    centre = _quad(inner, peak, outer, 18)
    # thick at the head of the brow, tapering to the tail
    thickness = idt.brow_thickness * np.linspace(1.15, 0.45, len(centre))[:, None]
    polygon = np.vstack([centre - [0, 1] * thickness * 0.5, (centre + [0, 1] * thickness * 0.5)[::-1]])
    canvas.polygon(polygon, idt.brow_colour, alpha=0.92, soften=0.5)


def _draw_nose(canvas: _Canvas, idt: Identity, geo: FaceGeometry) -> None:
    skin = np.asarray(idt.skin)
    tx, ty = geo.nose_tip
    nw = idt.nose_half_width
    eye_y = geo.eye_centre[0, 1]
    for side in (-1, 1):  # shadows along the bridge
        bridge = np.array([[tx + side * 4.5, eye_y + 2], [tx + side * 5.5, ty - 10], [tx + side * (nw - 1), ty - 2]])
        canvas.polyline(bridge, 2.2, _shade(skin, 0.7), alpha=0.45, soften=1.8)
        canvas.polyline(_quad(np.array([tx + side * (nw - 3), ty - 6]), np.array([tx + side * (nw + 2), ty]),
                              np.array([tx + side * (nw - 4), ty + 4])), 1.4, _shade(skin, 0.55), alpha=0.7, soften=0.6)
        canvas.ellipse((tx + side * nw * 0.42, ty + 3.0), (3.2, 1.7), _shade(skin, 0.3), alpha=0.85, soften=0.4,
                       angle=side * 12)
    canvas.ellipse((tx, ty + 6), (nw * 0.9, 2.5), _shade(skin, 0.65), alpha=0.4, soften=1.5)


def _draw_folds(canvas: _Canvas, idt: Identity, geo: FaceGeometry) -> None:
    """Nasolabial folds from the nose wing to just beside the mouth corner, with the cheek bulge above them; their
    depth ``geo.fold`` flattens on the paralysed side."""
    skin = np.asarray(idt.skin)
    tx, ty = geo.nose_tip
    for k, outward in ((0, -1.0), (1, 1.0)):
        depth = float(geo.fold[k])
        corner = geo.mouth_corner[k]
        start = np.array([tx + outward * (idt.nose_half_width + 2.0), ty - 2.0])
        end = corner + np.array([outward * 4.5, 2.5])
        bend = np.array([start[0] + outward * 7.0, (start[1] + end[1]) / 2])
        fold = _quad(start, bend, end, 16)
        canvas.polyline(fold, 1.6, _shade(skin, 0.55), alpha=0.85 * min(depth, 1.0), soften=0.9)
        canvas.ellipse(tuple(bend + [outward * 9.0, -4.0]), (8.0, 9.0), _shade(skin, 1.1),
                       alpha=0.5 * min(depth, 1.0), soften=3.0)


def _draw_mouth(canvas: _Canvas, idt: Identity, geo: FaceGeometry) -> None:
    left, right = geo.mouth_corner
    centre = geo.mouth_centre
    # the lip line runs level through the middle and bends towards each corner, so a drooping corner shows as a
    # downward slope right at the corner (inside the mouth-corner crop)
    halves = []
    for corner in (left, right):
        knee = np.array([centre[0] + 0.55 * (corner[0] - centre[0]), centre[1]])
        halves.append(_quad(centre, knee, corner, 14))
    line = np.vstack([halves[0][::-1], halves[1][1:]])
    t = (line[:, 0] - left[0]) / max(right[0] - left[0], 1e-6)
    taper = np.sin(np.clip(t, 0, 1) * math.pi) ** 0.6
    bow = 1.0 - 0.25 * np.exp(-((line[:, 0] - centre[0]) / 3.0) ** 2)  # cupid's bow dip
    upper_edge = line - np.stack([np.zeros_like(t), idt.upper_lip * taper * bow], axis=1)
    lower_edge = line + np.stack([np.zeros_like(t), idt.lower_lip * taper], axis=1)
    lip = np.asarray(idt.lip_colour)
    canvas.polygon(np.vstack([upper_edge, line[::-1]]), _shade(lip, 0.88))
    canvas.polygon(np.vstack([line, lower_edge[::-1]]), lip)
    canvas.ellipse(tuple(centre + [0, idt.lower_lip * 0.45]), (6.0, 1.3), _shade(lip, 1.25), alpha=0.45, soften=1.0)
    canvas.ellipse(tuple(centre + [0, idt.lower_lip + 4.0]), (8.0, 2.5), _shade(idt.skin, 0.7), alpha=0.4, soften=1.5)
    canvas.polyline(line, 1.3, _shade(lip, 0.35), alpha=0.95)
    for corner in (left, right):  # the commissure shadow marks the corner
        canvas.ellipse(tuple(corner), (1.6, 1.3), _shade(lip, 0.3), alpha=0.8, soften=0.5)


def _draw_face(identity: Identity, geo: FaceGeometry, photo: PhotoConditions, size: int) -> np.ndarray:
    canvas = _Canvas(size * SUPERSAMPLE)
    _draw_background_and_body(canvas, identity)
    _draw_head(canvas, identity)
    _draw_highlights(canvas, identity, geo)
    _draw_folds(canvas, identity, geo)
    _draw_nose(canvas, identity, geo)
    for k in (0, 1):
        _draw_eye(canvas, identity, geo, photo, k)
        _draw_brow(canvas, identity, geo, k)
    _draw_mouth(canvas, identity, geo)
    return cv2.resize(canvas.pixels, (size, size), interpolation=cv2.INTER_AREA)


def _pose_matrix(idt: Identity, photo: PhotoConditions, size: int) -> np.ndarray:
    """2x3 affine (output pixels) rotating and scaling about the face centre, then shifting."""
    unit = size / REFERENCE_SIZE
    centre = (idt.face_centre[0] * unit, idt.face_centre[1] * unit)
    matrix = cv2.getRotationMatrix2D(centre, photo.rotation, photo.scale)
    matrix[:, 2] += np.asarray(photo.shift) * unit
    return matrix


def _camera(image: np.ndarray, photo: PhotoConditions, noise_rng: np.random.Generator) -> np.ndarray:
    """Lighting gradient, colour tint, lens blur and sensor noise on a float RGB image."""
    size = image.shape[0]
    coords = (np.arange(size, dtype=np.float32) - size / 2) / size
    gradient = (math.cos(photo.light_angle) * coords[None, :] + math.sin(photo.light_angle) * coords[:, None])
    gain = photo.brightness * (1 + 2 * photo.light_strength * gradient)
    image = image.astype(np.float32) * gain[..., None] * np.asarray(photo.tint, dtype=np.float32)
    if photo.blur > 0.05:
        image = cv2.GaussianBlur(image, (0, 0), photo.blur)
    if photo.noise > 0:
        image += noise_rng.standard_normal(image.shape, dtype=np.float32) * np.float32(photo.noise)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def render_face(identity: Identity, palsy: Palsy, photo: PhotoConditions, image_size: int = 256,
                noise_rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, FaceGeometry]:
    """Draw one photo. Returns ``(image HxWx3 uint8 RGB, landmarks (5, 2) float32 in image pixels, geometry)``.

    The landmarks are the drawn eye centres (iris centre at rest gaze), nose tip and mouth corners, moved by the
    same pose as the pixels: the ground truth for checking a detector.
    """
    geo = face_geometry(identity, palsy, photo)
    canvas = _draw_face(identity, geo, photo, image_size)
    matrix = _pose_matrix(identity, photo, image_size)
    posed = cv2.warpAffine(canvas, matrix, (image_size, image_size), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
    image = _camera(posed, photo, noise_rng if noise_rng is not None else np.random.default_rng(0))
    points = geo.landmarks() * (image_size / REFERENCE_SIZE)
    landmarks = (points @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)
    return image, landmarks, geo


class PhotoPair(NamedTuple):
    """A rest photo and an expression photo of one sitting, each ``HxWx3`` uint8 RGB with its true landmarks
    ``(5, 2)`` float32 in image pixels."""
    rest: np.ndarray
    rest_landmarks: np.ndarray
    expression: np.ndarray
    expression_landmarks: np.ndarray


def render_pair(identity: Identity, palsy: Palsy, photo: PhotoConditions, expression: Expression,
                image_size: int = 256, noise_rng: np.random.Generator | None = None) -> PhotoPair:
    """Draw a rest photo and an expression photo of one sitting: the rest photo with ``photo`` as given (its
    ``expression`` is the resting one, e.g. ``sample_photo``'s faint smile), then the same pose, lighting, gaze and
    camera with ``expression`` instead. Only the face moves between the two, the affected side ``1 - severity`` as
    far, while the sensor noise of each photo is drawn on its own (from ``noise_rng``, rest first), as two
    exposures would have it."""
    noise_rng = noise_rng if noise_rng is not None else np.random.default_rng(0)
    rest, rest_points, _ = render_face(identity, palsy, photo, image_size, noise_rng=noise_rng)
    moved, moved_points, _ = render_face(identity, palsy, replace(photo, expression=expression), image_size,
                                         noise_rng=noise_rng)
    return PhotoPair(rest, rest_points, moved, moved_points)


# datasets

def subject_name(index: int) -> str:
    """``S001``, ``S002``, ...: no ``_`` inside, so the file-name rule 'subject = text before the first _' holds."""
    return f'S{index + 1:03d}'


def balanced_grades(num_subjects: int, rng: np.random.Generator) -> np.ndarray:
    """Grades 0-5 as evenly as the count allows, in random order, so every grade is present for stratified
    splits."""
    return rng.permutation(np.arange(num_subjects) % len(HB_GRADES))


def _subject_rng(seed: int, *key: int) -> np.random.Generator:
    """A generator that depends only on (seed, subject, photo): adding subjects never changes earlier ones."""
    return np.random.default_rng(np.random.SeedSequence([seed, *key]))


def _encode_jpeg(image: np.ndarray, quality: int = 92) -> bytes:
    ok, buffer = cv2.imencode('.jpg', cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError('JPEG encoding failed')
    return buffer.tobytes()


def generate_dataset(output_root: str | Path, num_subjects: int = 120, images_per_subject: int = 5,
                     image_size: int = 256, seed: int = 0, progress: bool = True,
                     expressions: str = 'protocol', pairs: bool = False) -> pd.DataFrame:
    """Write ``<output_root>/grade_N/<subject>_<n>.jpg``, ``annotation.csv``, ``preview.jpg``,
    ``synthetic_faces.json`` and ``README.md``; returns the annotation table.

    ``pairs=True`` draws rest / expression pairs instead: every ``grade_N/<subject>_<n>.jpg`` is a movement of the
    protocol (brow raise, eye closure, smile) and its rest photo of the same sitting goes to
    ``rest/grade_N/<subject>_<n>_rest.jpg`` (outside the grade folders, so grade-folder scans never take it for a
    photo of its own); annotation.csv gains ``neutral_path`` and the rest photo's true landmarks
    ``neutral_eye_l_x ... neutral_mouth_r_y``. Subjects (identity, grade, side, severity) are the same as without
    pairs for the same seed.

    The same arguments give byte-identical files. ``output_root`` is created if needed; the caller decides
    whether writing there is allowed (``prepare_dataset.py`` refuses folders it did not create).
    """
    if num_subjects < 1 or images_per_subject < 1:
        raise UserError(f'need at least one subject and one image per subject '
                        f'(got {num_subjects} subjects x {images_per_subject} images)')
    if image_size < 64:
        raise UserError(f'--image_size {image_size}: synthetic faces need at least 64 pixels')
    if expressions not in EXPRESSION_MODES:
        raise UserError(f'--expressions {expressions}: choose one of {", ".join(EXPRESSION_MODES)}')
    if pairs and expressions != 'protocol':
        raise UserError(f'rest / expression pairs need --expressions protocol (with {expressions} the expression '
                        f'photo would not move)')
    root = Path(output_root)
    root.mkdir(parents=True, exist_ok=True)
    grades = balanced_grades(num_subjects, np.random.default_rng(np.random.SeedSequence([seed, 0xFACE])))
    rows = []
    bar = tqdm(total=num_subjects * images_per_subject, desc='drawing synthetic faces' + (' (pairs)' if pairs else ''),
               unit='pair' if pairs else 'img', disable=not progress)
    for index in range(num_subjects):
        subject_rng = _subject_rng(seed, index)
        identity = sample_identity(subject_rng)
        palsy = sample_palsy(int(grades[index]), subject_rng)
        kinds = (pair_expressions(images_per_subject, subject_rng) if pairs
                 else photo_expressions(images_per_subject, expressions, subject_rng))
        folder = root / f'grade_{palsy.grade}'
        folder.mkdir(exist_ok=True)
        for n, kind in enumerate(kinds):
            photo_rng = _subject_rng(seed, index, n + 1)
            photo = sample_photo(photo_rng, sample_expression(kind, photo_rng))
            name = f'{subject_name(index)}_{n + 1:02d}.jpg'
            row = {'image_path': f'grade_{palsy.grade}/{name}', 'grade': palsy.grade, 'side': palsy.side,
                   'subject': subject_name(index), 'expression': kind, 'severity': round(palsy.severity, 4)}
            if pairs:
                image, landmarks = _write_pair(root, row['image_path'], identity, palsy, photo, image_size,
                                               photo_rng, row)
            else:
                image, landmarks, _ = render_face(identity, palsy, photo, image_size, noise_rng=photo_rng)
            (folder / name).write_bytes(_encode_jpeg(image))
            row.update({col: round(float(v), 2) for col, v in zip(LANDMARK_COLUMNS, landmarks.reshape(-1))})
            rows.append(row)
            bar.update()
    bar.close()
    columns = ['image_path', 'grade', 'side', 'subject', *LANDMARK_COLUMNS, 'expression', 'severity']
    if pairs:
        columns += ['neutral_path', *NEUTRAL_LANDMARK_COLUMNS]
    table = pd.DataFrame(rows, columns=columns)
    atomic_write_text(root / 'annotation.csv', table.to_csv(index=False, float_format='%.2f'))
    (root / 'preview.jpg').write_bytes(_encode_jpeg(preview_sheet(seed, image_size=min(image_size, 160)), 90))
    settings = {'generator': 'synthetic_faces.py', 'version': GENERATOR_VERSION, 'seed': seed,
                'num_subjects': num_subjects, 'images_per_subject': images_per_subject, 'image_size': image_size,
                'expressions': expressions}
    if pairs:  # only then, so that manifests written without pairs stay as they always were
        settings['pairs'] = True
    write_manifest(root, settings, table)
    return table


def rest_photo_path(image_path: str) -> str:
    """Where the rest photo of the pair whose expression photo is ``grade_N/<name>.jpg`` is written (relative to
    the dataset root): ``rest/grade_N/<name>_rest.jpg``."""
    path = Path(image_path)
    return (Path(REST_FOLDER) / path.parent / f'{path.stem}_rest{path.suffix}').as_posix()


def _write_pair(root: Path, image_path: str, identity: Identity, palsy: Palsy, photo: PhotoConditions,
                image_size: int, photo_rng: np.random.Generator, row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Draw a pair for ``photo`` (whose expression is the movement), write its rest photo and fill the row's
    ``neutral_*`` fields; returns the expression photo and its landmarks."""
    rest = replace(photo, expression=sample_expression('rest', photo_rng))
    pair = render_pair(identity, palsy, rest, photo.expression, image_size, noise_rng=photo_rng)
    neutral_path = rest_photo_path(image_path)
    target = root / neutral_path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(_encode_jpeg(pair.rest))
    row['neutral_path'] = neutral_path
    row.update({col: round(float(v), 2) for col, v in zip(NEUTRAL_LANDMARK_COLUMNS, pair.rest_landmarks.reshape(-1))})
    return pair.expression, pair.expression_landmarks


def preview_sheet(seed: int = 0, image_size: int = 160) -> np.ndarray:
    """A contact sheet: one row per grade (HB I at the top), one column per protocol expression (rest, brow raise,
    eye closure, smile) of one subject per row, all with a left-sided palsy (image right) at the middle of the
    grade's severity interval, so grades and expressions can be compared at a glance."""
    rows = []
    for grade in range(len(HB_GRADES)):
        rng = _subject_rng(seed, 0xBEEF, grade)
        identity = sample_identity(rng)
        low, high = SEVERITY_RANGE[grade]
        palsy = Palsy(grade, 'left' if grade else 'none', (low + high) / 2)
        tiles = []
        for kind in EXPRESSION_PROTOCOL:
            expression = Expression(smile=0.05) if kind == 'rest' else Expression(**{kind: 0.9})
            image, _, _ = render_face(identity, palsy, PhotoConditions(expression=expression), image_size)
            image = image.copy()
            label = f'HB {HB_GRADES[grade]}: {kind.replace("_", " ")}'
            (width, height), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
            cv2.rectangle(image, (0, 0), (width + 6, height + 8), (0, 0, 0), -1)
            cv2.putText(image, label, (3, height + 3), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
                        cv2.LINE_AA)
            tiles.append(image)
        rows.append(np.hstack(tiles))
    return np.vstack(rows)


# manifest and README

def read_manifest(root: str | Path) -> dict[str, Any] | None:
    """The settings a previous ``generate_dataset`` wrote into ``root``, or None if it is not such a folder."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get('generator') == 'synthetic_faces.py' else None


def is_synthetic_dataset(root: str | Path) -> bool:
    return read_manifest(root) is not None


def write_manifest(root: Path, settings: dict[str, Any], table: pd.DataFrame,
                   detection: dict[str, Any] | None = None) -> None:
    """Write ``synthetic_faces.json`` (settings, file list, detection check) and the human-readable README."""
    files = table['image_path'].tolist()
    if 'neutral_path' in table.columns:  # rest photos of pairs: removed and checked with the rest
        files += [p for p in table['neutral_path'].tolist() if isinstance(p, str) and p]
    manifest = {**settings, 'files': files}
    if detection is not None:
        manifest['detection'] = detection
    atomic_write_text(root / MANIFEST_NAME, json.dumps(manifest, indent=1) + '\n')
    atomic_write_text(root / 'README.md', readme_text(settings, table, detection))


def record_detection(root: str | Path, detection: dict[str, Any]) -> None:
    """Add a detection check's result to the manifest and README of a generated dataset."""
    root = Path(root)
    manifest = read_manifest(root)
    if manifest is None:
        return
    table = pd.read_csv(root / 'annotation.csv')
    settings = {k: v for k, v in manifest.items() if k not in ('files', 'detection')}
    write_manifest(root, settings, table, detection)


def readme_text(settings: dict[str, Any], table: pd.DataFrame, detection: dict[str, Any] | None = None) -> str:
    counts = table.groupby('grade').agg(images=('image_path', 'size'), subjects=('subject', 'nunique'))
    counts = counts.reindex(range(len(HB_GRADES)), fill_value=0)
    if settings.get('pairs'):
        regenerate = (f'    python prepare_dataset.py --dataset_type synthetic --pairs --output_root <this folder> '
                      f'--num_subjects {settings["num_subjects"]} --images_per_subject '
                      f'{settings["images_per_subject"]} --image_size {settings["image_size"]} '
                      f'--seed {settings["seed"]} --overwrite')
        series = ('Each photo of a subject is a movement of the examination series (brow raise, eye closure, smile '
                  'in turn from a random start, random effort 0.6-1) with its own rest photo. ')
    else:
        regenerate = (f'    python prepare_dataset.py --dataset_type synthetic --output_root <this folder> '
                      f'--num_subjects {settings["num_subjects"]} --images_per_subject '
                      f'{settings["images_per_subject"]} --image_size {settings["image_size"]} '
                      f'--seed {settings["seed"]} --overwrite')
        series = ('The photos of a subject cycle through the examination series rest, brow raise, eye closure and '
                  'smile (random effort 0.6-1), from a random start. '
                  if settings.get('expressions', 'protocol') == 'protocol'
                  else 'All photos are at rest (a faint smile at most). ')
    lines = [
        '# Synthetic facial palsy faces',
        '',
        f'Drawn by `synthetic_faces.py` (version {settings["version"]}) with seed {settings["seed"]}: '
        f'{settings["num_subjects"]} synthetic subjects x {settings["images_per_subject"]} photos, '
        f'{settings["image_size"]}x{settings["image_size"]} pixels. No real person is shown; the same seed '
        'gives the same files.',
        '',
        'Regenerate with:',
        '',
        regenerate,
        '',
        '## Files',
        '',
        '- `grade_N/<subject>_<n>.jpg`: photos of House-Brackmann grade N+1 (labels 0-5 = HB I-VI).',
        '- `annotation.csv`: `image_path` (relative to this folder), `grade`, `side` (the patient\'s affected '
        'side: left / right / none), `subject`, the true landmarks `eye_l_x ... mouth_r_y` (image pixels, `_l` = '
        'image left), the photo\'s `expression` and the drawn `severity` (0-1).',
    ]
    if settings.get('pairs'):
        lines += [
            '- `rest/grade_N/<subject>_<n>_rest.jpg`: the rest photo taken in the same sitting as '
            '`grade_N/<subject>_<n>.jpg` (same pose, lighting and camera; only the face moves), kept outside the '
            'grade folders so that it is never read as a photo of its own. annotation.csv gives it as '
            '`neutral_path`, with its true landmarks `neutral_eye_l_x ... neutral_mouth_r_y`; every expression '
            'photo is then a brow raise, eye closure or smile.',
        ]
    lines += [
        '- `preview.jpg`: one row per grade (HB I at the top), one column per expression, all with a left-sided '
        'palsy (it shows on the image right).',
        '',
        '## What each grade does',
        '',
        'Each subject has its own face shape, skin tone, eyes, brows, nose, lips, hair and background; each photo '
        'varies pose (rotation, scale, shift), lighting, blur, noise and gaze. '
        + series
        + 'A subject of grade > 0 has a random affected side and a severity s drawn inside the grade\'s interval; '
        'on that side:',
        '',
        f'- the brow droops by up to {BROW_DROOP_PX:g} px (the lateral end most) and flattens;',
        f'- the lower eyelid droops by up to {LOWER_LID_DROOP_PX:g} px and the upper lid retracts by up to '
        f'{UPPER_LID_RETRACTION_PX:g} px (a wider eye: incomplete closure);',
        f'- the mouth corner droops by up to {MOUTH_DROOP_PX:g} px, the mouth is pulled towards the healthy side '
        'and the corner does not lift with the smile;',
        '- the nasolabial fold and cheek flatten;',
        '- a smile, eye closure or brow raise moves that side only 1 - s as far (the eye stays open).',
        '',
        '(px = pixels of a 256-pixel photo, each sign times s.) Patient side vs image side: in a frontal photo '
        'the patient\'s left is the image right, so `side=left` changes the image-right eye and mouth corner.',
        '',
        '| grade | HB | severity s | subjects | images |',
        '|---|---|---|---|---|',
    ]
    for grade in range(len(HB_GRADES)):
        low, high = SEVERITY_RANGE[grade]
        subjects, images = int(counts.at[grade, 'subjects']), int(counts.at[grade, 'images'])
        lines.append(f'| {grade} | {HB_GRADES[grade]} ({HB_DESCRIPTIONS[grade]}) | {low:.2f}-{high:.2f} | '
                     f'{subjects} | {images} |')
    if detection is not None:
        lines += ['', '## Face detection check', '',
                  f'MTCNN (facenet-pytorch) found a face in {detection["detected"]} of {detection["checked"]} '
                  f'checked photos ({100 * detection["rate"]:.1f}%); {detection["near"]} of the '
                  f'{detection["detected"]} detections put all five landmarks within {detection["tolerance"]:g} x '
                  f'the inter-eye distance of the true ones (mean largest-point error {detection["mean_error"]:.3f} '
                  f'x inter-eye distance).']
    return '\n'.join(lines) + '\n'


# detection check

def check_detection(root: str | Path, table: pd.DataFrame | None = None, max_images: int | None = None,
                    device: str = 'cpu', cache_dir: str | Path | None = None, tolerance: float = 0.25,
                    progress: bool = True) -> dict[str, Any]:
    """Run MTCNN on the generated photos and compare with the true landmarks.

    Returns ``{checked, detected, rate, near, tolerance, mean_error, missed}``: ``near`` counts detections whose
    five points all lie within ``tolerance`` x the true inter-eye distance; ``mean_error`` is the mean point
    error in the same unit; ``missed`` lists the photos without a detection. ``max_images`` checks an evenly
    spread subset (None = all).
    """
    root = Path(root)
    if table is None:
        table = pd.read_csv(root / 'annotation.csv')
    if max_images is not None and 0 < max_images < len(table):
        table = table.iloc[np.linspace(0, len(table) - 1, max_images).round().astype(int)]
    paths = [root / p for p in table['image_path']]
    truth = table[LANDMARK_COLUMNS].to_numpy(np.float32).reshape(-1, 5, 2)
    # the toolkit's detector: the landmarks land in the cache that training reads
    from face_detection import LandmarkDetector

    results = LandmarkDetector(device=device, cache_dir=cache_dir, progress=progress).detect_paths(
        [str(p) for p in paths])
    points = [np.asarray(r.points, dtype=np.float32) if r is not None and r.source == 'detected' else None
              for r in results]
    errors = []
    for found, true in zip(points, truth):
        if found is not None:
            eye_distance = float(np.linalg.norm(true[1] - true[0]))
            errors.append(float(np.linalg.norm(found - true, axis=1).max()) / eye_distance)
    errors_arr = np.asarray(errors)
    checked = len(paths)
    return {
        'checked': checked,
        'detected': len(errors),
        'rate': len(errors) / checked if checked else 0.0,
        'near': int((errors_arr <= tolerance).sum()),
        'tolerance': tolerance,
        'mean_error': float(errors_arr.mean()) if len(errors) else float('nan'),
        'missed': [str(p.relative_to(root)) for p, f in zip(paths, points) if f is None],
    }


def format_detection(result: dict[str, Any]) -> str:
    return (f'MTCNN found a face in {result["detected"]}/{result["checked"]} photos ({100 * result["rate"]:.1f}%); '
            f'{result["near"]}/{result["detected"]} detections have all five landmarks within '
            f'{result["tolerance"]:g} x inter-eye distance of the truth (mean max-point error '
            f'{result["mean_error"]:.3f})')


def remove_generated_files(root: str | Path) -> int:
    """Delete the photos a previous run listed in its manifest (and only those) before regenerating; returns how
    many were removed. Files a user added to the folder stay."""
    root = Path(root)
    manifest = read_manifest(root)
    removed = 0
    for rel in (manifest or {}).get('files', []):
        path = root / rel
        if path.is_file() and path.resolve().is_relative_to(root.resolve()):
            path.unlink()
            removed += 1
    for folder in [*root.glob('grade_*'), *(root / REST_FOLDER).glob('grade_*'), root / REST_FOLDER]:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return removed
