"""The clinical semantics every synthetic face family shares: grades, severities, sides and the examination series.

A face family (``synthetic_family_a``, ``synthetic_family_b``) decides how a face looks; this module decides what
a House-Brackmann grade means for it, so that the grade of a photo means the same whichever family drew it:

* ``Palsy`` - the subject's grade (0-5 = HB I-VI), the patient's affected side and a severity in [0, 1] drawn
  inside the grade's interval ``SEVERITY_RANGE``;
* ``Expression`` - voluntary movement (smile, eye closure, brow raise, each 0-1; all 0 = rest); the affected side
  follows it only by ``1 - severity``;
* ``EXPRESSION_PROTOCOL`` - the photo series of a facial nerve examination (rest, brow raise, eye closure, smile).

Side convention: ``side`` is the *patient's* side. In a frontal photo the patient's left is the image right, so a
``side='left'`` palsy changes the features at the image-right landmarks (``eye_r``/``mouth_r`` columns).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ['SEVERITY_RANGE', 'Palsy', 'Expression', 'EXPRESSION_PROTOCOL', 'EXPRESSION_MODES', 'PAIR_EXPRESSIONS',
           'affected_image_side', 'side_severity', 'sample_palsy', 'sample_expression', 'photo_expressions',
           'pair_expressions']

# Severity drawn per subject inside its grade's interval: intervals do not overlap, so every sign is monotone in
# the grade, while subjects of one grade still differ a little (as patients do).
SEVERITY_RANGE = ((0.0, 0.0), (0.17, 0.23), (0.37, 0.43), (0.57, 0.63), (0.77, 0.83), (0.95, 1.0))
# The clinical photo series of a facial nerve examination: House-Brackmann grades are read mostly from voluntary
# movement (grades II-IV can look nearly symmetric at rest), so each subject's photos cycle through these.
EXPRESSION_PROTOCOL = ('rest', 'brow_raise', 'eye_closure', 'smile')
EXPRESSION_MODES = ('protocol', 'rest')
# Rest / expression pairs: the expression photo of a pair is one of the movements (a rest-rest pair shows none).
PAIR_EXPRESSIONS = EXPRESSION_PROTOCOL[1:]


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


def affected_image_side(side: str) -> int | None:
    """Image side (0 = image left, 1 = image right) of the patient's affected ``side``: in a frontal photo the
    patient's left is the image right."""
    return {'left': 1, 'right': 0}.get(side)


def side_severity(palsy: Palsy) -> np.ndarray:
    """Severity on each image side, ``(2,)``: index 0 = image left. ``1 - side_severity`` is how much of a voluntary
    movement each side still makes."""
    severity = np.zeros(2)
    affected = affected_image_side(palsy.side)
    if affected is not None:
        severity[affected] = palsy.severity
    return severity


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
