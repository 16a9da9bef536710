"""Face family "b": shaded 3-D heads, designed independently of family a to test how grading carries across styles.

The head is an ellipsoid (semi-axes ``1 x height x depth`` in head units: the half-width is the unit) with a relief
(brow ridge, eye sockets, nose, cheeks, nasolabial folds, lips) added as a height field. Every output pixel is cast
onto the turned ellipsoid (yaw, pitch, roll; orthographic camera), so each pixel knows the head-surface point it
shows, and its normal. Features are painted per pixel as functions of that surface point: cubic-Bezier lids and lip
lines, radially graded irises, tapered brows with strands, hair by a hairline function with a strand texture. The
painted albedo is lit with wrap-around Lambert + ambient + a little specular sheen from a random light direction,
the relief entering through bump-mapped normals. Colours come from a pigment model: skin from melanin and
haemoglobin absorbances, hair from eumelanin and pheomelanin.

Only the clinical semantics come from ``synthetic_palsy`` (grades, severity, side convention, expressions). On the
affected side (severity ``s``): the brow droops (the tail more) and the forehead lines fade, the lower lid droops
and the upper lid retracts (a wider palpebral fissure, incomplete closure), the mouth corner droops and moves
medially while the mouth shifts to the healthy side, and the nasolabial fold flattens; every expression moves that
side only ``1 - s`` as far.

Subjects vary widely: skin tone, head shape, eye/brow/nose/lip proportions, hair style and colour, fringes, glasses,
beards and stubble, age lines; photos vary head yaw / pitch / roll, light direction and strength, light colour,
exposure, blur, noise and JPEG quality.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Sequence

import cv2
import numpy as np

from synthetic_palsy import Expression, Palsy, sample_expression, side_severity
from synthetic_photo import (DEFAULT_JPEG_QUALITY, Occluder, apply_camera, draw_occluder, sample_jpeg_quality,
                             sample_occluder)

__all__ = ['Identity', 'PhotoConditions', 'FaceGeometry', 'sample_identity', 'sample_photo', 'frontal_photo',
           'face_geometry', 'render_face', 'move_head', 'DESCRIPTION', 'SIGNS', 'SIGN_UNITS']

# How far each sign moves at full severity, in head units (the head's half-width is 1). At the default framing a
# unit is about 0.23 x the photo size, so 0.1 units are about 6 pixels of a 256-pixel photo.
BROW_DROOP = 0.105
LOWER_LID_DROOP = 0.075
UPPER_LID_RETRACTION = 0.022
MOUTH_DROOP = 0.12
MOUTH_SHIFT = 0.045
CORNER_MEDIAL = 0.035
# Voluntary movement of a healthy side at full effort, head units.
BROW_LIFT = 0.085
SMILE_LIFT = 0.10
SMILE_WIDEN = 0.05

DESCRIPTION = ('shaded 3-D heads (an ellipsoid with a relief, features painted on its surface, Lambert + ambient '
               'lighting from a random direction). Subjects vary in skin tone (a melanin / haemoglobin model), head '
               'shape, features, hair, fringes, glasses, beards and age lines; photos vary head yaw, pitch and '
               'roll, light direction, strength and colour, exposure, blur, noise and JPEG quality.')
SIGN_UNITS = 'units = the head\'s half-width, about 0.23 x the photo size'
SIGNS = (
    f'the brow droops by up to {BROW_DROOP:g} units (the tail most) and the forehead lines fade',
    f'the lower eyelid droops by up to {LOWER_LID_DROOP:g} units and the upper lid retracts by up to '
    f'{UPPER_LID_RETRACTION:g} (a wider eye: incomplete closure)',
    f'the mouth corner droops by up to {MOUTH_DROOP:g} units and moves {CORNER_MEDIAL:g} medially, the mouth '
    f'shifts {MOUTH_SHIFT:g} towards the healthy side and the corner does not lift with the smile',
    'the nasolabial fold flattens',
)

_HAIR_STYLES = ('crop', 'long', 'bald', 'curly', 'parted')
_BEARDS = ('none', 'stubble', 'full')
# pigment absorbances per RGB channel (skin: melanin, haemoglobin, base; hair: eumelanin, pheomelanin)
_MELANIN = np.array([1.0, 1.28, 1.55])
_HAEMOGLOBIN = np.array([0.0, 0.22, 0.18])
_SKIN_BASE = np.array([0.03, 0.10, 0.17])
_EUMELANIN = np.array([1.6, 1.75, 1.9])
_PHEOMELANIN = np.array([0.25, 0.9, 1.6])


# parameters

@dataclass(frozen=True)
class Identity:
    """What stays the same in every photo of one subject (head units; colours RGB 0-255)."""
    head_height: float              # ellipsoid semi-axis along y (the half-width is 1)
    head_depth: float               # semi-axis along z
    skin: tuple[float, float, float]
    lip_colour: tuple[float, float, float]
    eye_y: float
    eye_x: float                    # half the distance between the eye centres
    eye_half_width: float
    upper_lid: float
    lower_lid: float
    eye_tilt: float                 # outer corner above the inner one
    iris_radius: float
    iris_inner: tuple[float, float, float]
    iris_outer: tuple[float, float, float]
    brow_gap: float                 # brow centre line above the eye line
    brow_thickness: float
    brow_arch: float
    brow_colour: tuple[float, float, float]
    nose_y: float
    nose_half_width: float
    nose_height: float              # relief of the nose
    mouth_y: float
    mouth_half_width: float
    upper_lip: float
    lower_lip: float
    fold_depth: float               # nasolabial fold at rest, 0-1
    hair_style: str
    hair_colour: tuple[float, float, float]
    hairline: float                 # y of the hairline's middle
    fringe: float                   # 0 = none .. 1 = down to the brows
    beard: str
    glasses: tuple[float, float, float] | None  # frame colour, or None
    glasses_round: bool
    age: float                      # 0 .. 1: depth of forehead lines and crow's feet
    background: tuple[tuple[float, float, float], tuple[float, float, float]]
    background_angle: float
    shirt: tuple[float, float, float]
    # natural asymmetry (image left, image right), head units
    brow_asymmetry: tuple[float, float] = (0.0, 0.0)
    lid_asymmetry: tuple[float, float] = (0.0, 0.0)
    mouth_asymmetry: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class PhotoConditions:
    """What changes from photo to photo of one subject."""
    yaw: float = 0.0                        # degrees, head turned towards the image right for > 0
    pitch: float = 0.0                      # degrees, chin up for > 0
    roll: float = 0.0                       # degrees, counter-clockwise in the image
    scale: float = 0.23                     # head half-width as a fraction of the photo size
    centre: tuple[float, float] = (0.5, 0.52)  # head centre as a fraction of the photo size
    light: tuple[float, float, float] = (0.0, -0.35, 1.0)  # direction towards the light (camera frame)
    diffuse: float = 0.75
    ambient: float = 0.35
    light_colour: tuple[float, float, float] = (1.0, 1.0, 1.0)
    exposure: float = 1.0
    blur: float = 0.0                       # Gaussian sigma, output pixels
    noise: float = 0.0                      # Gaussian sigma, grey levels
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    gaze: tuple[float, float] = (0.0, 0.0)  # iris offset, head units
    expression: Expression = field(default_factory=Expression)
    jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # brow l, brow r, mouth l, mouth r
    occluder: Occluder | None = None


@dataclass
class FaceGeometry:
    """Feature positions on the head (head units, before the pose); index 0 of each pair is the image left."""
    eye_centre: np.ndarray      # (2, 2)
    eye_half_width: float
    upper_lid: np.ndarray       # (2,)
    lower_lid: np.ndarray       # (2,)
    brow_inner: np.ndarray      # (2, 2)
    brow_outer: np.ndarray      # (2, 2)
    nose_tip: np.ndarray        # (2,)
    mouth_corner: np.ndarray    # (2, 2)
    mouth_centre: np.ndarray    # (2,)
    fold: np.ndarray            # (2,) nasolabial fold depth
    forehead_lines: np.ndarray  # (2,) visibility of the forehead lines per side
    side_severity: np.ndarray   # (2,)

    @property
    def eye_aperture(self) -> np.ndarray:
        """Vertical eye opening per image side (head units): widens with the grade on the affected side."""
        return self.upper_lid + self.lower_lid

    def landmarks(self) -> np.ndarray:
        """Left eye, right eye, nose tip, left and right mouth corner (image sides), head-plane x, y."""
        return np.array([self.eye_centre[0], self.eye_centre[1], self.nose_tip, self.mouth_corner[0],
                         self.mouth_corner[1]], dtype=np.float64)


# sampling

def _pigment(absorbance: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(v) for v in 255.0 * np.exp(-absorbance))


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw one synthetic person."""
    u = rng.uniform
    melanin = 1.3 * u(0, 1) ** 1.5       # from very light to very dark skin, evenly in lightness
    haemoglobin = u(0.15, 0.7)
    skin = _pigment(melanin * _MELANIN + haemoglobin * _HAEMOGLOBIN + _SKIN_BASE)
    lips = _pigment(melanin * 1.1 * _MELANIN + (haemoglobin + u(1.0, 1.8)) * _HAEMOGLOBIN * 1.6 + _SKIN_BASE)
    if u() < 0.12:  # grey or white hair
        grey = u(0.15, 0.6)
        hair = _pigment(np.full(3, grey))
    else:
        hair = _pigment(u(0.2, 2.6) * _EUMELANIN + u(0.0, 1.2) * _PHEOMELANIN)
    brow = tuple(float(min(h * 0.7, s * 0.45)) for h, s in zip(hair, skin))
    iris_melanin = u(0, 1)
    iris_outer = _pigment(iris_melanin * np.array([1.6, 2.0, 2.5]) + (1 - iris_melanin) * np.array([1.5, 1.0, 0.6])
                          + 0.35)
    iris_inner = tuple(float(min(255.0, c * 1.35 + 10)) for c in iris_outer)
    light_background = u(70, 235, size=3)
    background = (tuple(float(v) for v in light_background),
                  tuple(float(v) for v in np.clip(light_background * u(0.45, 0.95) + u(-20, 20, size=3), 0, 255)))
    beard = _BEARDS[int(rng.choice(3, p=[0.7, 0.18, 0.12]))]
    glasses = tuple(float(v) for v in rng.choice([u(10, 50, 3), u(90, 200, 3)])) if u() < 0.25 else None
    return Identity(
        head_height=u(1.22, 1.42), head_depth=u(0.86, 1.02), skin=skin, lip_colour=lips,
        eye_y=u(-0.16, -0.08), eye_x=u(0.34, 0.40), eye_half_width=u(0.15, 0.185), upper_lid=u(0.062, 0.082),
        lower_lid=u(0.040, 0.055), eye_tilt=u(-0.01, 0.025), iris_radius=u(0.060, 0.070),
        iris_inner=iris_inner, iris_outer=iris_outer,
        brow_gap=u(0.165, 0.2), brow_thickness=u(0.035, 0.06), brow_arch=u(0.015, 0.045), brow_colour=brow,
        nose_y=u(0.24, 0.32), nose_half_width=u(0.10, 0.135), nose_height=u(0.06, 0.11),
        mouth_y=u(0.54, 0.62), mouth_half_width=u(0.22, 0.28), upper_lip=u(0.03, 0.05), lower_lip=u(0.04, 0.065),
        fold_depth=u(0.6, 1.0),
        hair_style=_HAIR_STYLES[int(rng.integers(0, len(_HAIR_STYLES)))], hair_colour=hair,
        hairline=u(-0.95, -0.72), fringe=float(u(0.3, 1.0)) if u() < 0.25 else 0.0, beard=beard,
        glasses=glasses, glasses_round=bool(u() < 0.5), age=float(u(0, 1) ** 1.5),
        background=background, background_angle=u(0, 2 * math.pi), shirt=tuple(float(v) for v in u(25, 225, 3)),
        brow_asymmetry=tuple(float(v) for v in rng.normal(0, 0.005, 2)),
        lid_asymmetry=tuple(float(v) for v in rng.normal(0, 0.0025, 2)),
        mouth_asymmetry=tuple(float(v) for v in rng.normal(0, 0.004, 2)),
    )


def sample_photo(rng: np.random.Generator, expression: Expression | None = None) -> PhotoConditions:
    """Draw the conditions of one photo: head pose, light, camera; at rest unless an ``expression`` is given."""
    u = rng.uniform
    if expression is None:
        expression = sample_expression('rest', rng)
    azimuth, elevation = u(0, 2 * math.pi), math.radians(u(8, 50))
    light = (math.sin(elevation) * math.cos(azimuth), math.sin(elevation) * math.sin(azimuth) - 0.2,
             math.cos(elevation))
    warmth = u(-1, 1)
    return PhotoConditions(
        yaw=float(np.clip(rng.normal(0, 8), -22, 22)), pitch=float(np.clip(rng.normal(0, 5), -14, 14)),
        roll=float(np.clip(rng.normal(0, 4), -12, 12)), scale=u(0.205, 0.25),
        centre=(0.5 + u(-0.04, 0.04), 0.52 + u(-0.03, 0.03)), light=light, diffuse=u(0.45, 0.85),
        ambient=u(0.28, 0.5), light_colour=(1 + 0.06 * warmth, 1.0, 1 - 0.08 * warmth), exposure=u(0.85, 1.15),
        blur=float(u(0, 1.2) ** 2), noise=u(0, 6), jpeg_quality=sample_jpeg_quality(rng),
        gaze=(float(rng.normal(0, 0.012)), float(rng.normal(0, 0.006))), expression=expression,
        jitter=tuple(float(v) for v in rng.normal(0, 0.003, 4)), occluder=sample_occluder(rng))


def frontal_photo(expression: Expression) -> PhotoConditions:
    """A frontal, evenly lit photo without camera effects (for contact sheets)."""
    return PhotoConditions(expression=expression)


def move_head(photo: PhotoConditions, *, shift: Sequence[float] = (0.0, 0.0), rotation: float = 0.0,
              scale: float = 1.0, yaw: float = 0.0, pitch: float = 0.0) -> PhotoConditions:
    """``photo`` with the head moved, as between the frames of a clip: ``shift`` (x, y) in fractions of the photo
    size, ``rotation`` in degrees counter-clockwise (roll), ``scale`` a factor, ``yaw`` / ``pitch`` in degrees added
    to the pose. The face, the light and the camera stay as they are."""
    return replace(photo, centre=(photo.centre[0] + shift[0], photo.centre[1] + shift[1]), roll=photo.roll + rotation,
                   scale=photo.scale * scale, yaw=photo.yaw + yaw, pitch=photo.pitch + pitch)


# geometry

def face_geometry(identity: Identity, palsy: Palsy, photo: PhotoConditions) -> FaceGeometry:
    """Place every feature for this subject, condition and photo (head units, before the pose): all palsy signs are
    computed here, so the painting stays free of clinical logic."""
    idt, expr = identity, photo.expression
    severity = side_severity(palsy)
    movement = 1.0 - severity
    outward = np.array([-1.0, 1.0])
    eye_x = outward * idt.eye_x
    eye_centre = np.stack([eye_x, np.full(2, idt.eye_y)], axis=1)
    lid = np.asarray(idt.lid_asymmetry)
    closing = expr.eye_closure * movement
    upper_open = idt.upper_lid + lid + UPPER_LID_RETRACTION * severity + 0.012 * expr.brow_raise * movement
    lower_open = idt.lower_lid - 0.5 * lid + LOWER_LID_DROOP * severity
    lower_open = lower_open * (1 - 0.15 * expr.smile * movement)
    # closing lowers the upper lid past the eye line onto a slightly raised lower lid
    lower = lower_open * (1 - 0.4 * closing)
    upper = upper_open * (1 - closing) - 0.6 * idt.lower_lid * closing

    lift = BROW_LIFT * expr.brow_raise * movement + np.asarray(idt.brow_asymmetry) + np.asarray(photo.jitter[:2])
    base = idt.eye_y - idt.brow_gap - lift
    # a fallen brow rests on the resting upper lid (not the retracted one: the brow must keep falling with the
    # grade, and not the closing one: closing the eye does not pull the brow down)
    ceiling = idt.eye_y - idt.upper_lid - 0.5 * idt.brow_thickness - 0.012
    inner_y = np.minimum(base + 0.5 * BROW_DROOP * severity, ceiling)
    outer_y = np.minimum(base + BROW_DROOP * severity + idt.eye_tilt, ceiling)
    brow_inner = np.stack([eye_x - outward * 0.9 * idt.eye_half_width, inner_y], axis=1)
    brow_outer = np.stack([eye_x + outward * 1.35 * idt.eye_half_width, outer_y], axis=1)

    mouth_x = MOUTH_SHIFT * (severity[0] - severity[1])   # pulled towards the healthy side
    corner_x = mouth_x + outward * (idt.mouth_half_width + SMILE_WIDEN * expr.smile * movement
                                    - CORNER_MEDIAL * severity)
    corner_y = (idt.mouth_y + MOUTH_DROOP * severity - SMILE_LIFT * expr.smile * movement
                + np.asarray(idt.mouth_asymmetry) + np.asarray(photo.jitter[2:]))
    fold = np.clip(idt.fold_depth * movement * (1 + 0.6 * expr.smile), 0, 1.4)
    forehead = movement * (0.35 + 0.65 * expr.brow_raise)
    return FaceGeometry(
        eye_centre=eye_centre, eye_half_width=idt.eye_half_width, upper_lid=upper, lower_lid=lower,
        brow_inner=brow_inner, brow_outer=brow_outer, nose_tip=np.array([0.0, idt.nose_y]),
        mouth_corner=np.stack([corner_x, corner_y], axis=1), mouth_centre=np.array([mouth_x, idt.mouth_y]),
        fold=fold, forehead_lines=forehead, side_severity=severity)


# the head

def _rotation(photo: PhotoConditions) -> np.ndarray:
    """Head-to-camera rotation (x right, y down, z towards the camera): pitch, then yaw, then roll."""
    p, y, r = (math.radians(a) for a in (photo.pitch, photo.yaw, photo.roll))
    pitch = np.array([[1, 0, 0], [0, math.cos(p), math.sin(p)], [0, -math.sin(p), math.cos(p)]])
    yaw = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    roll = np.array([[math.cos(r), math.sin(r), 0], [-math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return roll @ yaw @ pitch


def _surface_z(idt: Identity, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    inside = np.clip(1 - x ** 2 - (y / idt.head_height) ** 2, 0, None)
    return idt.head_depth * np.sqrt(inside)


def _project(idt: Identity, photo: PhotoConditions, points: np.ndarray, size: int,
             depth: np.ndarray | None = None) -> np.ndarray:
    """Image pixels of head-plane points ``(n, 2)`` lying on the head's surface (plus ``depth``)."""
    z = _surface_z(idt, points[:, 0], points[:, 1]) + (0 if depth is None else depth)
    camera = np.column_stack([points, z]) @ _rotation(photo).T
    unit = photo.scale * size
    return np.column_stack([photo.centre[0] * size + unit * camera[:, 0], photo.centre[1] * size + unit * camera[:, 1]])


def _soft(distance: np.ndarray, pixel: float) -> np.ndarray:
    """Anti-aliased coverage of the region where ``distance`` (head units) is positive."""
    return np.clip(0.5 + distance / pixel, 0.0, 1.0)


def _bezier(t: np.ndarray, p0: float, p1: float, p2: float, p3: float) -> np.ndarray:
    """A cubic Bezier curve with evenly spaced control abscissae, as a function of t in [0, 1]."""
    s = 1 - t
    return s * s * s * p0 + 3 * s * s * t * p1 + 3 * s * t * t * p2 + t * t * t * p3


def _hash(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A fixed pseudo-random value in [0, 1) per surface position (stubble, skin grain)."""
    v = np.sin(x.astype(np.float64) * 1271.1 + y.astype(np.float64) * 3117.7) * 43758.5453
    return (v - np.floor(v)).astype(np.float32)


def _blend(albedo: np.ndarray, alpha: np.ndarray, colour) -> None:
    alpha = alpha[..., None]
    albedo *= 1 - alpha
    albedo += alpha * np.asarray(colour, dtype=np.float32)


class _Patch:
    """A rectangle of pixels of the head's window: the head-plane point ``x, y`` each pixel shows, and views into
    the albedo and relief being painted (so painting a patch paints the head)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, albedo: np.ndarray, relief: np.ndarray, pixel: float):
        self.x, self.y, self.albedo, self.relief, self.pixel = x, y, albedo, relief, pixel

    def gauss(self, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
        return np.exp(-0.5 * (((self.x - cx) / sx) ** 2 + ((self.y - cy) / sy) ** 2))


class _Head(_Patch):
    """Per-pixel head-surface coordinates inside the head's window: ``x, y`` (head plane), the camera-frame
    normal, the silhouette coverage, and the albedo and relief being painted. Features paint a ``patch`` around
    themselves only, which keeps drawing fast."""

    def __init__(self, idt: Identity, photo: PhotoConditions, size: int):
        rotation = _rotation(photo)
        unit = photo.scale * size
        reach = 1.08 * max(1.0, idt.head_height)
        cx, cy = photo.centre[0] * size, photo.centre[1] * size
        self.x0, self.y0 = max(int(cx - reach * unit), 0), max(int(cy - reach * unit), 0)
        self.x1, self.y1 = min(int(cx + reach * unit) + 2, size), min(int(cy + reach * unit) + 2, size)
        cols = (np.arange(self.x0, self.x1, dtype=np.float32) + 0.5 - cx) / unit
        rows = (np.arange(self.y0, self.y1, dtype=np.float32) + 0.5 - cy) / unit
        X, Y = np.meshgrid(cols, rows)
        axes = np.array([1.0, idt.head_height, idt.head_depth])
        inverse = 1 / axes ** 2
        d = rotation[2]                              # the camera ray (0, 0, 1) in head coordinates
        qx, qy = rotation[0], rotation[1]            # head coordinates of camera x and y
        a = float(np.sum(d * d * inverse))
        qd = X * float(np.sum(qx * d * inverse)) + Y * float(np.sum(qy * d * inverse))
        qq = (X * X * float(np.sum(qx * qx * inverse)) + 2 * X * Y * float(np.sum(qx * qy * inverse))
              + Y * Y * float(np.sum(qy * qy * inverse)))
        inside = qd * qd / a - qq + 1                # 1 - the silhouette's quadratic form
        self.pixel = 1.0 / unit
        self.coverage = _soft(0.55 * inside, self.pixel)
        t = (-qd + np.sqrt(np.clip(inside * a, 0, None))) / a
        hx = X * qx[0] + Y * qy[0] + t * d[0]
        hy = X * qx[1] + Y * qy[1] + t * d[1]
        hz = X * qx[2] + Y * qy[2] + t * d[2]
        self.x, self.y, self.z = hx.astype(np.float32), hy.astype(np.float32), hz.astype(np.float32)
        normal = np.stack([hx * inverse[0], hy * inverse[1], hz * inverse[2]], axis=-1) @ rotation.T
        self.normal = (normal / np.linalg.norm(normal, axis=-1, keepdims=True)).astype(np.float32)
        self.relief = np.zeros_like(self.x)
        self.albedo = np.empty((*self.x.shape, 3), dtype=np.float32)
        self.albedo[:] = np.asarray(idt.skin, dtype=np.float32)
        self.unit = unit
        self._identity, self._photo, self._size = idt, photo, size

    def patch(self, x0: float, y0: float, x1: float, y1: float) -> _Patch:
        """The pixels showing the head-plane box ``x0..x1, y0..y1`` (found by projecting a grid of its points)."""
        gx, gy = np.meshgrid(np.linspace(x0, x1, 5), np.linspace(y0, y1, 5))
        corners = _project(self._identity, self._photo, np.column_stack([gx.ravel(), gy.ravel()]), self._size)
        left = int(np.clip(np.floor(corners[:, 0].min()) - 2 - self.x0, 0, self.x.shape[1]))
        right = int(np.clip(np.ceil(corners[:, 0].max()) + 3 - self.x0, left, self.x.shape[1]))
        top = int(np.clip(np.floor(corners[:, 1].min()) - 2 - self.y0, 0, self.x.shape[0]))
        bottom = int(np.clip(np.ceil(corners[:, 1].max()) + 3 - self.y0, top, self.x.shape[0]))
        window = (slice(top, bottom), slice(left, right))
        return _Patch(self.x[window], self.y[window], self.albedo[window], self.relief[window], self.pixel)


def _curve_distance(head: _Head, points: np.ndarray) -> np.ndarray:
    """Distance (head units) from every pixel's surface point to a polyline given by dense ``points``."""
    dx = head.x[..., None] - points[:, 0].astype(np.float32)
    dy = head.y[..., None] - points[:, 1].astype(np.float32)
    return np.sqrt((dx * dx + dy * dy).min(axis=-1))


# painting (head units, on the surface)

def _paint_skin(head: _Head, idt: Identity, geo: FaceGeometry) -> None:
    cheeks = sum(head.gauss(o * 0.5, idt.nose_y + 0.02, 0.16, 0.12) for o in (-1, 1))
    _blend(head.albedo, 0.18 * cheeks, np.asarray(idt.lip_colour) * 0.6 + np.asarray(idt.skin) * 0.4)
    head.albedo *= (0.97 + 0.06 * _hash(head.x, head.y))[..., None]
    head.relief += 0.05 * head.gauss(0, geo.eye_centre[0, 1] - 0.2, 0.6, 0.08)       # brow ridge
    head.relief += 0.10 * head.gauss(0, idt.mouth_y + 0.55, 0.35, 0.2)               # chin
    for k, o in enumerate((-1, 1)):
        head.relief += 0.05 * head.gauss(o * 0.52, idt.nose_y - 0.05, 0.18, 0.12)    # cheekbones
        ex, ey = geo.eye_centre[k]
        head.relief -= 0.05 * head.gauss(ex, ey - 0.01, geo.eye_half_width * 1.25, 0.1)  # eye socket
    if idt.age > 0:
        _paint_age_lines(head, idt, geo)


def _paint_age_lines(head: _Head, idt: Identity, geo: FaceGeometry) -> None:
    """Horizontal forehead lines (fading on a paralysed side, deepening with a brow raise) and crow's feet."""
    top = float(min(geo.brow_inner[:, 1].min(), geo.brow_outer[:, 1].min())) - 0.08
    full, head = head, head.patch(-0.62, top - 0.18, 0.62, top + 0.03)
    side = np.clip(0.5 + head.x / 0.1, 0, 1)  # 0 on the image left, 1 on the image right
    strength = idt.age * (geo.forehead_lines[0] * (1 - side) + geo.forehead_lines[1] * side)
    span = _soft(0.5 - np.abs(head.x), 0.08)
    for j in range(3):
        y = top - 0.065 * j + 0.012 * np.sin(5 * head.x + j)
        line = np.exp(-0.5 * ((head.y - y) / 0.008) ** 2) * span * strength
        head.relief -= 0.012 * line
        _blend(head.albedo, 0.35 * line, np.asarray(idt.skin) * 0.6)
    for k, o in enumerate((-1, 1)):
        ex, ey = geo.eye_centre[k]
        corner = ex + o * (geo.eye_half_width + 0.03)
        head = full.patch(min(corner, corner + o * 0.1), ey - 0.06, max(corner, corner + o * 0.1), ey + 0.06)
        u, v = (head.x - corner) * o, head.y - ey
        for slope in (-0.5, 0.0, 0.5):
            line = np.exp(-0.5 * ((v - slope * u) / 0.006) ** 2) * _soft(u, 0.01) * _soft(0.07 - u, 0.02)
            _blend(head.albedo, 0.3 * idt.age * line, np.asarray(idt.skin) * 0.65)


def _paint_beard(head: _Head, idt: Identity, geo: FaceGeometry) -> None:
    if idt.beard == 'none':
        return
    hair = np.asarray(idt.hair_colour) * 0.8
    head = head.patch(-1.0, idt.nose_y - 0.25, 1.0, idt.head_height)
    # from just under the nose, rising over the cheeks towards the sideburns
    top = idt.nose_y + 0.06 - 0.2 * np.clip(np.abs(head.x) - 0.45, 0, None)
    region = _soft(head.y - top, 0.04)
    lips = np.exp(-0.5 * (((head.x - geo.mouth_centre[0]) / (idt.mouth_half_width * 0.95)) ** 4
                          + ((head.y - idt.mouth_y) / 0.06) ** 4))
    region = region * (1 - 0.9 * lips)
    grain = _hash(head.x * 3.1, head.y * 2.7)
    density = 0.35 if idt.beard == 'stubble' else 0.85
    _blend(head.albedo, region * density * (0.7 + 0.3 * grain), hair)
    if idt.beard == 'full':
        head.relief += 0.02 * region


def _paint_eye(head: _Head, idt: Identity, geo: FaceGeometry, photo: PhotoConditions, k: int) -> None:
    o = (-1.0, 1.0)[k]
    ex, ey = geo.eye_centre[k]
    w = geo.eye_half_width
    up, low = float(geo.upper_lid[k]), float(geo.lower_lid[k])
    head = head.patch(ex - 1.25 * w, ey - 0.16, ex + 1.25 * w, ey + 0.2)
    u, v = (head.x - ex) * o, head.y - ey
    t = np.clip((u / w + 1) / 2, 0, 1)
    tilt_in, tilt_out = 0.1 * idt.eye_tilt, -idt.eye_tilt
    upper = _bezier(t, tilt_in, -1.42 * up, -1.25 * up, tilt_out)
    lower = _bezier(t, tilt_in, 1.2 * low, 1.45 * low, tilt_out)
    across = _soft(w - np.abs(u), head.pixel)
    opening = _soft(np.minimum(v - upper, lower - v), head.pixel) * across
    skin = np.asarray(idt.skin)
    # lid crease and a darker upper lid
    crease = np.exp(-0.5 * ((v - (upper * 1.25 - 0.035)) / 0.01) ** 2) * _soft(w * 1.05 - np.abs(u), 0.02)
    _blend(head.albedo, 0.35 * crease, skin * 0.6)
    # sclera, shaded towards the corners and under the upper lid
    shade = 1 - 0.25 * (2 * t - 1) ** 4 - 0.3 * np.exp(-np.clip(v - upper, 0, None) / 0.018)
    sclera = np.asarray((238, 234, 228), dtype=np.float32)
    head.albedo += opening[..., None] * (sclera * shade[..., None] - head.albedo)
    gx, gy = photo.gaze
    r = np.hypot(head.x - (ex + gx), head.y - (ey + gy))
    ri = idt.iris_radius
    iris = _soft(ri - r, head.pixel) * opening
    ratio = np.clip(r / ri, 0, 1)[..., None]
    colour = (np.asarray(idt.iris_inner) * (1 - ratio ** 1.5) + np.asarray(idt.iris_outer) * ratio ** 1.5) \
        * (1 - 0.45 * np.clip((ratio - 0.82) / 0.18, 0, 1))
    head.albedo += iris[..., None] * (colour - head.albedo)
    _blend(head.albedo, _soft(0.42 * ri - r, head.pixel) * opening, (14, 12, 12))
    glint = np.hypot(head.x - (ex + gx - 0.35 * ri), head.y - (ey + gy - 0.35 * ri))
    _blend(head.albedo, 0.85 * _soft(0.16 * ri - glint, head.pixel) * opening, (250, 250, 250))
    # lash line along the upper lid (thicker outwards), thin lower lid margin
    lash = _soft(0.011 + 0.009 * t - np.abs(v - upper), head.pixel) * _soft(w * 1.04 - np.abs(u), head.pixel)
    _blend(head.albedo, 0.92 * lash, (22, 18, 18))
    margin = _soft(0.006 - np.abs(v - lower), head.pixel) * across
    _blend(head.albedo, 0.55 * margin, skin * 0.5)
    head.relief += 0.012 * head.gauss(ex, ey - up - 0.025, 0.9 * w, 0.035)  # the upper lid's bulge


def _paint_brow(head: _Head, idt: Identity, geo: FaceGeometry, k: int) -> None:
    o = (-1.0, 1.0)[k]
    (ix, iy), (ox, oy) = geo.brow_inner[k], geo.brow_outer[k]
    head = head.patch(min(ix, ox) - 0.03, min(iy, oy) - 0.09, max(ix, ox) + 0.03, max(iy, oy) + 0.05)
    length = abs(ox - ix)
    t = np.clip((head.x - ix) * o / length, -0.1, 1.1)
    centre = iy + (oy - iy) * t - idt.brow_arch * _bezier(np.clip(t, 0, 1), 0.0, 1.2, 1.3, 0.2)
    half = 0.5 * idt.brow_thickness * (1.15 - 0.6 * np.clip(t, 0, 1))
    ends = _soft(np.minimum(t, 1 - t) * length, head.pixel)
    strands = 0.78 + 0.22 * np.sin(260 * (head.x * 0.8 * o + head.y * 0.6))
    alpha = _soft(half - np.abs(head.y - centre), head.pixel) * ends * strands
    _blend(head.albedo, 0.9 * alpha, idt.brow_colour)


def _paint_nose(head: _Head, idt: Identity, geo: FaceGeometry) -> None:
    tip_y, nw, nh = idt.nose_y, idt.nose_half_width, idt.nose_height
    eye_y = float(geo.eye_centre[:, 1].mean())
    head = head.patch(-nw - 0.12, eye_y, nw + 0.12, tip_y + 0.12)
    along = np.clip((head.y - eye_y) / (tip_y - eye_y), 0, 1)
    head.relief += nh * np.exp(-0.5 * (head.x / 0.05) ** 2) * along ** 1.3 * _soft(tip_y + 0.02 - head.y, 0.03)
    head.relief += 0.7 * nh * head.gauss(0, tip_y - 0.02, 0.06, 0.05)
    for o in (-1, 1):
        head.relief += 0.35 * nh * head.gauss(o * nw * 0.8, tip_y + 0.01, 0.04, 0.035)
        nostril = head.gauss(o * nw * 0.45, tip_y + 0.045, 0.032, 0.014)
        _blend(head.albedo, 0.85 * np.clip(nostril * 1.6, 0, 1), np.asarray(idt.skin) * 0.3)


def _paint_folds(head: _Head, idt: Identity, geo: FaceGeometry) -> None:
    t = np.linspace(0, 1, 14)[:, None]
    full = head
    for k, o in enumerate((-1, 1)):
        depth = float(geo.fold[k])
        start = np.array([o * (idt.nose_half_width + 0.035), idt.nose_y - 0.03])
        end = geo.mouth_corner[k] + np.array([o * 0.05, 0.05])
        bend = np.array([start[0] + o * 0.1, 0.5 * (start[1] + end[1])])
        curve = (1 - t) ** 2 * start + 2 * (1 - t) * t * bend + t ** 2 * end
        low, high = curve.min(axis=0) - 0.08, curve.max(axis=0) + 0.08
        head = full.patch(low[0] - 0.12 * (o < 0), low[1] - 0.05, high[0] + 0.12 * (o > 0), high[1])
        distance = _curve_distance(head, curve)
        head.relief -= 0.03 * depth * np.exp(-0.5 * (distance / 0.02) ** 2)
        _blend(head.albedo, 0.12 * min(depth, 1.0) * np.exp(-0.5 * (distance / 0.01) ** 2), np.asarray(idt.skin) * 0.6)
        head.relief += 0.035 * depth * head.gauss(bend[0] + o * 0.1, bend[1] - 0.04, 0.08, 0.07)


def _paint_mouth(head: _Head, idt: Identity, geo: FaceGeometry) -> None:
    (lx, ly), (rx, ry) = geo.mouth_corner
    my = idt.mouth_y
    head = head.patch(lx - 0.06, min(ly, ry, my) - 0.1, rx + 0.06, max(ly, ry, my) + 0.12)
    width = rx - lx
    t = (head.x - lx) / width
    tc = np.clip(t, 0, 1)
    line = _bezier(tc, ly, my, my, ry)
    body = (4 * tc * (1 - tc)).clip(0, None)
    bow = 1 - 0.35 * np.exp(-0.5 * ((t - 0.5 - geo.mouth_centre[0] / width) / 0.05) ** 2)
    upper_edge = line - idt.upper_lip * body ** 0.75 * bow
    lower_edge = line + idt.lower_lip * body ** 0.9
    inside = _soft(np.minimum(t, 1 - t) * width, head.pixel)
    lip = np.asarray(idt.lip_colour)
    _blend(head.albedo, _soft(np.minimum(head.y - upper_edge, line - head.y), head.pixel) * inside, lip * 0.85)
    lower = _soft(np.minimum(head.y - line, lower_edge - head.y), head.pixel) * inside
    _blend(head.albedo, lower, lip)
    head.relief += 0.02 * lower * body
    # the lip line runs a little past the corners, where the commissure darkens
    beyond = _soft(np.minimum(t + 0.03, 1.03 - t) * width, head.pixel)
    _blend(head.albedo, 0.9 * _soft(0.009 - np.abs(head.y - line), head.pixel) * beyond, lip * 0.3)
    for cx, cy in geo.mouth_corner:
        _blend(head.albedo, 0.6 * head.gauss(cx, cy, 0.018, 0.012), lip * 0.3)


def _paint_hair(head: _Head, idt: Identity, geo: FaceGeometry) -> np.ndarray:
    """Hair on the head's surface above the hairline (and a fringe); returns its coverage."""
    x, y = head.x, head.y
    hairline = idt.hairline + 0.22 * x ** 4
    if idt.hair_style == 'parted':
        hairline = hairline + 0.08 * np.clip(x + 0.3, 0, None)
    if idt.hair_style == 'curly':
        hairline = hairline + 0.025 * np.sin(24 * x)
    ear_y = 0.5 * (idt.eye_y + idt.nose_y)
    cover = _soft(hairline - y, head.pixel * 1.5)
    # hair at the temples ends in a slanted edge above the ear (long hair falls further down the sides)
    bottom = idt.mouth_y if idt.hair_style == 'long' else ear_y - 0.1
    reach = 0.2 if idt.hair_style == 'long' else 0.4  # long hair frames the face without covering the eyes
    temples = _soft(np.abs(x) - (0.98 - reach * np.clip((bottom - y) / 0.4, 0, 1)), head.pixel * 2)
    cover = np.maximum(cover, temples)
    if idt.hair_style == 'bald':  # a fringe of hair around the back of the head only
        cover = _soft(np.abs(x) - 0.9, head.pixel * 2) * _soft(y + 0.6, 0.05) * _soft(ear_y - 0.05 - y, 0.05)
    if idt.fringe > 0:
        brow_top = float(min(geo.brow_inner[:, 1].min(), geo.brow_outer[:, 1].min()))
        edge = (brow_top - 0.17 + idt.fringe * 0.15 + 0.02 * np.abs(np.sin(31 * x))
                - 1.2 * np.clip(np.abs(x) - 0.4, 0, None) ** 1.5)
        cover = np.maximum(cover, _soft(edge - y, head.pixel))
    parting = -0.3 if idt.hair_style == 'parted' else 0.0
    angle = np.arctan2(x - parting, y + idt.head_height * 1.2)
    strands = 0.86 + 0.08 * np.sin(90 * angle) + 0.06 * np.sin(233 * angle + 3 * y)
    if idt.hair_style == 'curly':
        strands = 0.75 + 0.25 * np.sin(70 * x) * np.sin(70 * y)
    colour = np.asarray(idt.hair_colour, dtype=np.float32) * strands[..., None]
    head.albedo += cover[..., None] * (colour - head.albedo)
    head.relief += 0.03 * cover
    return cover


def _paint_glasses(head: _Head, idt: Identity, geo: FaceGeometry) -> None:
    if idt.glasses is None:
        return
    power = 2.0 if idt.glasses_round else 5.0
    eye_y = float(geo.eye_centre[:, 1].mean())
    head = head.patch(-1.0, eye_y - 0.2, 1.0, eye_y + 0.2)
    a, b = geo.eye_half_width * 1.45, 0.115
    rims = np.zeros_like(head.x)
    for k, o in enumerate((-1, 1)):
        ex, ey = geo.eye_centre[k]
        u, v = (head.x - ex - o * 0.02) / a, (head.y - ey - 0.01) / b
        radius = (np.abs(u) ** power + np.abs(v) ** power) ** (1 / power)
        rims = np.maximum(rims, _soft(0.012 - np.abs(radius - 1) * b, head.pixel))
        _blend(head.albedo, 0.12 * _soft((1 - radius) * b, head.pixel), (200, 215, 230))
        temple = (_soft(0.008 - np.abs(head.y - (ey - 0.03)), head.pixel)
                  * _soft((head.x - ex) * o - a - 0.02, head.pixel))
        rims = np.maximum(rims, temple)
    inner = geo.eye_centre[1, 0] - a + 0.02
    bridge = _soft(0.009 - np.abs(head.y - (geo.eye_centre[:, 1].mean() - 0.03)), head.pixel) \
        * _soft(inner - np.abs(head.x), head.pixel)
    _blend(head.albedo, np.maximum(rims, bridge), idt.glasses)


# the photo

def _background(idt: Identity, size: int) -> np.ndarray:
    """A studio backdrop: a two-colour gradient in a random direction with a vignette (smooth, so drawn coarse
    and resized)."""
    coarse = 32
    coords = (np.arange(coarse, dtype=np.float32) + 0.5) / coarse - 0.5
    along = math.cos(idt.background_angle) * coords[None, :] + math.sin(idt.background_angle) * coords[:, None]
    radial = coords[None, :] ** 2 + coords[:, None] ** 2
    mix = np.clip(0.5 + along, 0, 1)[..., None]
    a, b = (np.asarray(c, dtype=np.float32) for c in idt.background)
    small = (a * (1 - mix) + b * mix) * (1 - 0.5 * radial)[..., None]
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)


def _fill(image: np.ndarray, polygon: np.ndarray, colour) -> None:
    """Blend an anti-aliased polygon (image pixels) into ``image``, inside the polygon's bounding box only."""
    size = image.shape[0]
    x0, y0 = np.clip(np.floor(polygon.min(axis=0)).astype(int) - 1, 0, size)
    x1, y1 = np.clip(np.ceil(polygon.max(axis=0)).astype(int) + 2, 0, size)
    if x1 <= x0 or y1 <= y0:
        return
    layer = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    cv2.fillPoly(layer, [np.round((polygon - [x0, y0]) * 16).astype(np.int32)], 255, cv2.LINE_AA, 4)
    _blend(image[y0:y1, x0:x1], layer.astype(np.float32) / 255, colour)


def _oval(centre: np.ndarray, axes: tuple[float, float], angle: float, start: float = 0.0,
          stop: float = 2 * math.pi) -> np.ndarray:
    t = np.linspace(start, stop, 40)
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    x, y = axes[0] * np.cos(t), axes[1] * np.sin(t)
    return np.column_stack([centre[0] + c * x - s * y, centre[1] + s * x + c * y])


def _body(image: np.ndarray, idt: Identity, photo: PhotoConditions, size: int) -> None:
    """Neck, shoulders, the hair behind the head and the ears, drawn before the head in image space."""
    unit = photo.scale * size
    chin = _project(idt, photo, np.array([[0.0, idt.head_height * 0.9]]), size)[0]
    neck_top = _project(idt, photo, np.array([[-0.42, idt.head_height * 0.5], [0.42, idt.head_height * 0.5]]), size)
    neck = np.array([neck_top[0], neck_top[1], [neck_top[1][0] + 0.05 * unit, size + 5],
                     [neck_top[0][0] - 0.05 * unit, size + 5]])
    _fill(image, _oval(chin + [0, 1.05 * unit], (2.1 * unit, 0.75 * unit), -0.3 * photo.roll), idt.shirt)
    _fill(image, neck, np.asarray(idt.skin) * (photo.ambient + 0.5 * photo.diffuse))
    if idt.hair_style in ('long', 'curly'):
        crown = _project(idt, photo, np.array([[0.0, -0.1]]), size, depth=np.array([-0.5]))[0] + [0, 0.2 * unit]
        length = 1.9 if idt.hair_style == 'long' else 1.2
        volume = 1.16 if idt.hair_style == 'long' else 1.3
        shell = np.vstack([_oval(crown, (volume * unit, length * unit), -photo.roll, 0, math.pi),
                           _oval(crown, (volume * unit, 0.55 * length * unit), -photo.roll, math.pi, 2 * math.pi)])
        _fill(image, shell, np.asarray(idt.hair_colour) * (photo.ambient + 0.4))
    for o in (-1, 1):  # ears, hidden behind the head where it turns away
        ear = _project(idt, photo, np.array([[o * 0.97, 0.5 * (idt.eye_y + idt.nose_y)]]), size,
                       depth=np.array([-0.05]))[0]
        _fill(image, _oval(ear, (0.13 * unit, 0.24 * unit), -photo.roll),
              np.asarray(idt.skin) * (photo.ambient + 0.45 * photo.diffuse))


def _shade(head: _Head, photo: PhotoConditions, hair: np.ndarray) -> np.ndarray:
    """Light the painted head: bump-mapped normals, wrap-around Lambert + ambient, a little specular sheen."""
    gy, gx = np.gradient(head.relief)
    normal = head.normal.copy()
    normal[..., 0] -= gx * head.unit
    normal[..., 1] -= gy * head.unit
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    light = np.asarray(photo.light, dtype=np.float32)
    light /= np.linalg.norm(light)
    facing = normal @ light
    wrap = 0.25
    diffuse = np.clip((facing + wrap) / (1 + wrap), 0, None)
    half = light + np.array([0, 0, 1], dtype=np.float32)
    half /= np.linalg.norm(half)
    sheen = (0.08 * (1 - hair)) * np.clip(normal @ half, 0, None) ** 24
    intensity = photo.ambient + photo.diffuse * diffuse
    colour = head.albedo * intensity[..., None] + 255 * sheen[..., None]
    return colour * np.asarray(photo.light_colour, dtype=np.float32)


def render_face(identity: Identity, palsy: Palsy, photo: PhotoConditions, image_size: int = 256,
                noise_rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, FaceGeometry]:
    """Draw one photo. Returns ``(image HxWx3 uint8 RGB, landmarks (5, 2) float32 in image pixels, geometry)``:
    the landmarks are the eye centres (iris centre at rest gaze), nose tip and mouth corners on the head's
    surface, projected with the same pose as the pixels."""
    idt = identity
    geo = face_geometry(idt, palsy, photo)
    image = _background(idt, image_size)
    _body(image, idt, photo, image_size)
    head = _Head(idt, photo, image_size)
    _paint_skin(head, idt, geo)
    _paint_beard(head, idt, geo)
    _paint_folds(head, idt, geo)
    _paint_nose(head, idt, geo)
    for k in (0, 1):
        _paint_eye(head, idt, geo, photo, k)
    _paint_mouth(head, idt, geo)
    for k in (0, 1):
        _paint_brow(head, idt, geo, k)
    hair = _paint_hair(head, idt, geo)  # a fringe may fall over the brows
    _paint_glasses(head, idt, geo)
    lit = _shade(head, photo, hair)
    window = image[head.y0:head.y1, head.x0:head.x1]
    window += head.coverage[..., None] * (lit - window)
    landmarks = _project(idt, photo, geo.landmarks(), image_size).astype(np.float32)
    image = draw_occluder(image, photo.occluder, landmarks)
    image = apply_camera(image * photo.exposure, blur=photo.blur, noise=photo.noise,
                         noise_rng=noise_rng if noise_rng is not None else np.random.default_rng(0))
    return image, landmarks, geo
