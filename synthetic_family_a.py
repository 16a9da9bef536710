"""Face family "a": flat, illustrated faces drawn with anti-aliased OpenCV shapes (the toolkit's original demo faces).

Per-subject and per-photo parameters are kept apart, so that one person can be drawn in many photos:

* ``Identity`` - fixed per synthetic subject: face shape, skin tone, eyes, brows, nose, lips, hair (a fringe may
  reach the brows), background, and for some subjects glasses, a beard or stubble, and age lines.
* ``PhotoConditions`` - per photo: pose (roll, scale, shift, and yaw / pitch as a tilt of the picture plane seen in
  perspective), lighting, blur, noise, gaze, JPEG quality, an occluder (``synthetic_photo``) and an ``Expression``
  (smile, eye closure, brow raise, each 0-1; all 0 = rest).

How a grade shows (severity ``s`` from ``synthetic_palsy.SEVERITY_RANGE``), on the affected side only:

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
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from synthetic_palsy import Expression, Palsy, sample_expression, side_severity
from synthetic_photo import (DEFAULT_JPEG_QUALITY, Occluder, apply_camera, draw_occluder, sample_jpeg_quality,
                             sample_occluder)

__all__ = ['REFERENCE_SIZE', 'Identity', 'PhotoConditions', 'FaceGeometry', 'sample_identity', 'sample_photo',
           'face_geometry', 'render_face', 'frontal_photo', 'move_head', 'DESCRIPTION', 'SIGNS', 'SIGN_UNITS']

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
# What the dataset README says about this family: its look, and how each sign shows (px = pixels of a 256-pixel
# photo, each sign times the severity s).
DESCRIPTION = ('flat, illustrated faces drawn with anti-aliased shapes. Each subject has its own face shape, skin '
               'tone (very light to very dark), eyes, brows, nose, lips, hair (some with a fringe), background, and '
               'some wear glasses, a beard or stubble, or show age lines; each photo varies pose (roll, yaw and '
               'pitch as a tilted picture plane, scale, shift), lighting direction and strength, blur, noise, gaze '
               'and JPEG quality, and a few show a hand, an object or a strong shadow over part of the face.')
SIGN_UNITS = 'px = pixels of a 256-pixel photo'
SIGNS = (
    f'the brow droops by up to {BROW_DROOP_PX:g} px (the lateral end most) and flattens, and forehead lines (where '
    'the subject has them) fade',
    f'the lower eyelid droops by up to {LOWER_LID_DROOP_PX:g} px and the upper lid retracts by up to '
    f'{UPPER_LID_RETRACTION_PX:g} px (a wider eye: incomplete closure)',
    f'the mouth corner droops by up to {MOUTH_DROOP_PX:g} px, the mouth is pulled towards the healthy side and the '
    'corner does not lift with the smile',
    'the nasolabial fold and cheek flatten',
)


# palettes (RGB)
_SKIN_TONES = np.array([(255, 236, 222), (255, 224, 196), (241, 194, 167), (224, 172, 140), (198, 134, 103),
                        (161, 102, 72), (120, 75, 50), (92, 58, 40), (66, 43, 31)], dtype=np.float32)
_BEARDS = ('none', 'stubble', 'full')
# perspective of the yaw / pitch tilt: focal length in multiples of the photo size (a portrait lens)
_FOCAL = 3.0
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
    fringe_depth: float = 0.0       # how much further a 'fringe' falls over the forehead, reference pixels
    glasses: tuple[float, float, float] | None = None  # frame colour
    beard: str = 'none'             # 'none', 'stubble' or 'full'
    age: float = 0.0                # 0 .. 1: forehead lines and crow's feet


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
    yaw: float = 0.0                        # degrees: the picture plane turned about its vertical axis
    pitch: float = 0.0                      # degrees: ... about its horizontal axis
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    occluder: Occluder | None = None


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
        fringe_depth=float(u(0, 12)),
        # dark to mid-tone frames: light rims on dark skin would outshine the lids around them
        glasses=tuple(float(v) for v in rng.uniform(15, 90) * u(0.8, 1.2, size=3)) if u() < 0.25 else None,
        beard=_BEARDS[int(rng.choice(3, p=[0.72, 0.16, 0.12]))],
        age=float(u(0, 1) ** 1.5),
    )


def sample_photo(rng: np.random.Generator, expression: Expression | None = None) -> PhotoConditions:
    """Draw the conditions of one photo: mild pose, lighting and camera variation; at rest unless an
    ``expression`` is given."""
    u = rng.uniform
    if expression is None:
        expression = sample_expression('rest', rng)
    return PhotoConditions(
        rotation=float(np.clip(rng.normal(0, 5.0), -14, 14)),
        scale=float(u(0.9, 1.06)),
        shift=(float(u(-8, 8)), float(u(-7, 7))),
        brightness=float(u(0.72, 1.2)),
        light_angle=float(u(0, 2 * math.pi)),
        light_strength=float(u(0.0, 0.45)),
        tint=tuple(float(v) for v in u(0.9, 1.1, size=3)),
        blur=float(u(0.0, 1.2) ** 2),
        noise=float(u(0.0, 6.0)),
        gaze=(float(rng.normal(0, 0.8)), float(rng.normal(0, 0.4))),
        expression=expression,
        jitter=tuple(float(v) for v in rng.normal(0, 0.2, size=4)),
        yaw=float(np.clip(rng.normal(0, 7.0), -18, 18)),
        pitch=float(np.clip(rng.normal(0, 5.0), -12, 12)),
        jpeg_quality=sample_jpeg_quality(rng),
        occluder=sample_occluder(rng),
    )


def frontal_photo(expression: Expression) -> PhotoConditions:
    """A photo without pose, lighting or camera effects (for contact sheets)."""
    return PhotoConditions(expression=expression)


def move_head(photo: PhotoConditions, *, shift: Sequence[float] = (0.0, 0.0), rotation: float = 0.0,
              scale: float = 1.0, yaw: float = 0.0, pitch: float = 0.0) -> PhotoConditions:
    """``photo`` with the head moved, as between the frames of a clip: ``shift`` (x, y) in fractions of the photo
    size, ``rotation`` in degrees counter-clockwise, ``scale`` a factor, ``yaw`` / ``pitch`` in degrees added to the
    pose. The face, the light and the camera stay as they are."""
    moved = (photo.shift[0] + shift[0] * REFERENCE_SIZE, photo.shift[1] + shift[1] * REFERENCE_SIZE)
    return replace(photo, shift=moved,
                   rotation=photo.rotation + rotation, scale=photo.scale * scale, yaw=photo.yaw + yaw,
                   pitch=photo.pitch + pitch)


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
    severity = side_severity(palsy)
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
        front = np.stack([cx + xs * (hw + 5), hairline_y + 14 + idt.fringe_depth * (1 - xs ** 2)
                          + 6 * xs ** 2 + 1.5 * np.sin(xs * 20)], axis=1)
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


def _draw_age_lines(canvas: _Canvas, idt: Identity, geo: FaceGeometry, photo: PhotoConditions) -> None:
    """Forehead lines (deeper with a brow raise, fading where the frontalis is paralysed) and crow's feet."""
    if idt.age <= 0.05:
        return
    skin = np.asarray(idt.skin)
    cx = idt.face_centre[0]
    top = float(min(geo.brow_outer[:, 1].min(), geo.brow_inner[:, 1].min())) - 9.0
    movement = 1 - geo.side_severity
    for k, outward in ((0, -1.0), (1, 1.0)):
        depth = float(idt.age * movement[k] * (0.45 + 0.55 * photo.expression.brow_raise))
        for j in range(3):
            xs = cx + outward * np.linspace(1.0, 0.36 * idt.face_half_width, 8)
            ys = top - 6.5 * j + 1.5 * np.sin((xs - cx) / 9.0 + j)
            canvas.polyline(np.stack([xs, ys], axis=1), 0.9, _shade(skin, 0.62), alpha=0.6 * depth, soften=0.5)
        ex, ey = geo.eye_centre[k]
        corner = ex + outward * (geo.eye_half_width + 2.5)
        for slope in (-0.45, 0.0, 0.45):
            line = np.array([[corner, ey], [corner + outward * 7.0, ey + slope * 7.0]])
            canvas.polyline(line, 0.8, _shade(skin, 0.65), alpha=0.45 * idt.age, soften=0.4)


def _draw_beard(canvas: _Canvas, idt: Identity, geo: FaceGeometry) -> None:
    """Stubble or a full beard over the jaw, chin and upper lip (the lips and folds are drawn over it)."""
    if idt.beard == 'none':
        return
    cx = idt.face_centre[0]
    tx, ty = geo.nose_tip
    outline = _face_outline(idt)
    lower = outline[(outline[:, 1] > ty) & (np.arange(len(outline)) < len(outline) // 2)]
    hw, nw = idt.face_half_width, idt.nose_half_width
    upper = np.array([[cx - hw * 0.95, ty], [cx - hw * 0.6, ty + 8], [cx - nw - 3, ty + 7], [cx + nw + 3, ty + 7],
                      [cx + hw * 0.6, ty + 8], [cx + hw * 0.95, ty]])
    # beards are darker than the skin even where the hair is fair
    colour = np.minimum(np.asarray(idt.hair_colour) * 0.7, np.asarray(idt.skin) * 0.8 + 10)
    if idt.beard == 'stubble':
        canvas.polygon(np.vstack([lower, upper]), colour, alpha=0.3, soften=2.5)
    else:
        canvas.polygon(np.vstack([lower + [0, 4], upper]), colour, alpha=0.88, soften=1.5)


def _draw_glasses(canvas: _Canvas, idt: Identity, geo: FaceGeometry) -> None:
    """Round-oval frames around both eyes with a bridge and the temples running to the face's edge."""
    if idt.glasses is None:
        return
    rims = []
    for k, outward in ((0, -1.0), (1, 1.0)):
        ex, ey = geo.eye_centre[k]
        centre = (ex + outward * 1.5, ey + 0.5)  # the rims stay clear of the lids and the brow's droop
        axes = (geo.eye_half_width * 1.55, 15.0)
        canvas.ellipse(centre, axes, (205, 220, 235), alpha=0.1)
        canvas.polyline(np.vstack([_ellipse_points(centre, axes, n=48)] * 1)[list(range(48)) + [0]], 1.8,
                        idt.glasses)
        rims.append((centre, axes))
        temple = np.array([[centre[0] + outward * axes[0], ey - 3.0],
                           [idt.face_centre[0] + outward * idt.face_half_width * 0.98, ey - 4.0]])
        canvas.polyline(temple, 1.6, idt.glasses)
    (left, la), (right, ra) = rims
    bridge = _quad(np.array([left[0] + la[0], left[1] - 2]), np.array([idt.face_centre[0], left[1] - 6]),
                   np.array([right[0] - ra[0], right[1] - 2]), 8)
    canvas.polyline(bridge, 1.6, idt.glasses)


def _draw_face(identity: Identity, geo: FaceGeometry, photo: PhotoConditions, size: int) -> np.ndarray:
    canvas = _Canvas(size * SUPERSAMPLE)
    _draw_background_and_body(canvas, identity)
    _draw_head(canvas, identity)
    _draw_highlights(canvas, identity, geo)
    _draw_age_lines(canvas, identity, geo, photo)
    _draw_beard(canvas, identity, geo)
    _draw_folds(canvas, identity, geo)
    _draw_nose(canvas, identity, geo)
    for k in (0, 1):
        _draw_eye(canvas, identity, geo, photo, k)
        _draw_brow(canvas, identity, geo, k)
    _draw_mouth(canvas, identity, geo)
    _draw_glasses(canvas, identity, geo)
    return cv2.resize(canvas.pixels, (size, size), interpolation=cv2.INTER_AREA)


def _pose_matrix(idt: Identity, photo: PhotoConditions, size: int) -> np.ndarray:
    """3x3 homography (output pixels): rotate and scale about the face centre, shift, then tilt the picture plane
    by ``yaw`` / ``pitch`` about the posed face centre, seen through a portrait lens."""
    unit = size / REFERENCE_SIZE
    centre = (idt.face_centre[0] * unit, idt.face_centre[1] * unit)
    affine = np.eye(3)
    affine[:2] = cv2.getRotationMatrix2D(centre, photo.rotation, photo.scale)
    affine[:2, 2] += np.asarray(photo.shift) * unit
    if photo.yaw == 0 and photo.pitch == 0:
        return affine
    yaw, pitch = math.radians(photo.yaw), math.radians(photo.pitch)
    turn = (np.array([[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0], [-math.sin(yaw), 0, math.cos(yaw)]])
            @ np.array([[1, 0, 0], [0, math.cos(pitch), math.sin(pitch)], [0, -math.sin(pitch), math.cos(pitch)]]))
    focal = _FOCAL * size
    tilt = np.array([[turn[0, 0], turn[0, 1], 0], [turn[1, 0], turn[1, 1], 0],
                     [-turn[2, 0] / focal, -turn[2, 1] / focal, 1]])
    posed = affine @ np.array([centre[0], centre[1], 1.0])
    to_centre, back = np.eye(3), np.eye(3)
    to_centre[:2, 2], back[:2, 2] = -posed[:2], posed[:2]
    return back @ tilt @ to_centre @ affine


def render_face(identity: Identity, palsy: Palsy, photo: PhotoConditions, image_size: int = 256,
                noise_rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, FaceGeometry]:
    """Draw one photo. Returns ``(image HxWx3 uint8 RGB, landmarks (5, 2) float32 in image pixels, geometry)``.

    The landmarks are the drawn eye centres (iris centre at rest gaze), nose tip and mouth corners, moved by the
    same pose as the pixels: the ground truth for checking a detector.
    """
    geo = face_geometry(identity, palsy, photo)
    canvas = _draw_face(identity, geo, photo, image_size)
    matrix = _pose_matrix(identity, photo, image_size)
    if np.allclose(matrix[2], [0, 0, 1]):
        posed = cv2.warpAffine(canvas, matrix[:2], (image_size, image_size), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)
    else:
        posed = cv2.warpPerspective(canvas, matrix, (image_size, image_size), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REPLICATE)
    points = geo.landmarks() * (image_size / REFERENCE_SIZE)
    mapped = np.column_stack([points, np.ones(len(points))]) @ matrix.T
    landmarks = (mapped[:, :2] / mapped[:, 2:]).astype(np.float32)
    if photo.occluder is not None:
        posed = draw_occluder(posed, photo.occluder, landmarks)
    image = apply_camera(posed, brightness=photo.brightness, light_angle=photo.light_angle,
                         light_strength=photo.light_strength, tint=photo.tint, blur=photo.blur, noise=photo.noise,
                         noise_rng=noise_rng if noise_rng is not None else np.random.default_rng(0))
    return image, landmarks, geo
