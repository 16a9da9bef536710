"""Interpretable left-right symmetry measurements from MTCNN's five facial landmarks, and a baseline grader on them.

The five points are (x, y) image pixels in MTCNN's order: left eye, right eye, nose, left mouth corner, right mouth
corner, where "left" is the *image* left (the patient's right in a frontal photo). Every measurement is divided by
the inter-ocular distance (IOD), so it does not depend on the photo's size, and all but ``eye_line_roll_deg`` are
read in the *levelled frame*: the face rotated about the eye centre until the eye line is horizontal (x to the
image right, y down, unit = IOD; the eyes sit at (-0.5, 0) and (+0.5, 0)). A tilted head therefore changes the
roll but none of the levelled measurements.

Sign convention: every signed measurement except ``eye_mouth_ratio`` / ``eye_mouth_log_ratio`` is positive when the
image-right side is lower (or, for ``nose_offset``, further right). A drooping image-right mouth corner gives a
positive ``mouth_corner_height_diff``, ``mouth_roll_deg`` and ``droop_score`` and a negative ``eye_mouth_log_ratio``
(the right eye-to-corner distance grows).

These are research heuristics for reading a model's inputs and for a transparent baseline, not a clinical score:
five points cannot see eye closure, brow movement or the nasolabial fold, from which House-Brackmann grades are
mostly read, and head yaw shifts several of them.

``SymmetryBaseline`` grades from the absolute values of the measurements (the grade depends on how much one side
droops, not on which side) with a logistic regression, and serialises to plain JSON-able data so it can sit in a
checkpoint or a ``.json`` file without pickle. ``fit_baseline`` / ``score_baseline`` / ``comparison_table`` are what
training's ``--baseline symmetry`` runs.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

import metrics as M

__all__ = [
    'MEASUREMENT_NAMES', 'SIGNED_MEASUREMENTS', 'ASYMMETRY_SCALES', 'SIDE_THRESHOLD', 'IMAGE_SIDES',
    'BASELINE_FEATURES', 'landmark_points', 'symmetry_measurements', 'measurements_table', 'patient_side',
    'draw_measurements', 'baseline_features', 'SymmetryBaseline', 'fit_baseline', 'score_baseline',
    'comparison_table',
]

# the numeric measurements, in the column order of measurements_table
MEASUREMENT_NAMES = ('eye_line_roll_deg', 'mouth_corner_height_diff', 'eye_mouth_ratio', 'eye_mouth_log_ratio',
                     'nose_offset', 'mouth_roll_deg', 'droop_score', 'asymmetry_index')
# the measurements that are 0 on a perfectly symmetric, upright face (the ratio is 1 there)
SIGNED_MEASUREMENTS = ('eye_line_roll_deg', 'mouth_corner_height_diff', 'eye_mouth_log_ratio', 'nose_offset',
                       'mouth_roll_deg', 'droop_score')
# What counts as "clearly visible" for each term of the asymmetry index: 0.1 IOD is about 6 mm on an adult face
# (IOD ~ 62 mm); a 0.1 IOD corner droop raises the eye-to-corner distance by ~10 % (log ratio ~0.1) and tilts a
# mouth of ~0.7 IOD width by ~8 degrees, so the three terms agree on one droop.
ASYMMETRY_SCALES = {'mouth_corner_height_diff': 0.1, 'eye_mouth_log_ratio': 0.1, 'mouth_roll_deg': 10.0}
# |droop_score| below this reads as no side (about a 0.02 IOD corner droop, ~1.2 mm: natural asymmetry)
SIDE_THRESHOLD = 0.2
IMAGE_SIDES = ('left', 'right', 'none', 'unknown')
_MIN_IOD_PX = 1e-6      # eyes closer than this are coincident: nothing can be normalised
_MIN_LENGTH = 1e-6      # in IOD units: a shorter mouth or eye-to-corner segment has no direction


# measurements

def landmark_points(landmarks: Any) -> np.ndarray:
    """The (5, 2) float64 points of ``landmarks``: an array of 10 values or 5 (x, y) pairs, or any object with a
    ``points`` attribute (``facial_palsy_dataset.FaceLandmarks``). ``None`` gives all-NaN points."""
    if landmarks is None:
        return np.full((5, 2), np.nan)
    if hasattr(landmarks, 'points'):
        landmarks = landmarks.points
    points = np.asarray(landmarks, dtype=np.float64)
    if points.size != 10:
        raise ValueError(f'expected 5 landmarks as (x, y) pairs (10 numbers), got shape {points.shape}')
    return points.reshape(5, 2)


def _levelled(points: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Points in the levelled frame (eye centre at the origin, eye line along +x, unit = IOD), the roll (radians,
    positive = image-right eye lower, since image y points down) and the IOD in pixels."""
    eye_vector = points[1] - points[0]
    iod = float(np.hypot(*eye_vector))
    roll = math.atan2(eye_vector[1], eye_vector[0])
    cos, sin = math.cos(roll), math.sin(roll)
    unrotate = np.array([[cos, sin], [-sin, cos]])  # rotation by -roll
    centred = points - (points[0] + points[1]) / 2
    return centred @ unrotate.T / iod, roll, iod


def _nan_measurements() -> dict[str, float | str]:
    values: dict[str, float | str] = {name: math.nan for name in MEASUREMENT_NAMES}
    values['more_affected_image_side'] = 'unknown'
    return values


def _asymmetry_terms(values: Mapping[str, float]) -> dict[str, float]:
    """Each index term in "clearly visible" units, signed so that positive = the image-right side droops."""
    # the log ratio falls when the image-right eye-to-corner distance grows, hence its minus sign
    signs = {'mouth_corner_height_diff': 1.0, 'eye_mouth_log_ratio': -1.0, 'mouth_roll_deg': 1.0}
    return {name: signs[name] * values[name] / scale for name, scale in ASYMMETRY_SCALES.items()}


def _side_from_score(droop_score: float, threshold: float) -> str:
    if not math.isfinite(droop_score):
        return 'unknown'
    if abs(droop_score) < threshold:
        return 'none'
    return 'right' if droop_score > 0 else 'left'


def symmetry_measurements(landmarks: Any, side_threshold: float = SIDE_THRESHOLD) -> dict[str, float | str]:
    """Symmetry measurements of one face (see the module docstring for the frame and signs).

    Keys (``MEASUREMENT_NAMES`` are floats, NaN where the landmarks do not define them):

    - ``eye_line_roll_deg``: angle of the eye line to the image horizontal, degrees, positive = image-right eye
      lower. Mostly head pose, which is why nothing else depends on it.
    - ``mouth_corner_height_diff``: image-right corner height minus image-left corner height in the levelled frame,
      / IOD; positive = the image-right corner hangs lower.
    - ``eye_mouth_ratio``: |left eye - left mouth corner| / |right eye - right mouth corner| (1 = symmetric);
      ``eye_mouth_log_ratio`` is its natural log (0 = symmetric, negative = image-right distance longer).
    - ``nose_offset``: horizontal distance of the nose tip from the midline through the eye centre and the mouth
      centre, at the nose's height in the levelled frame, / IOD; positive = nose right of the midline (head yaw
      or a mouth pulled sideways).
    - ``mouth_roll_deg``: angle of the mouth line to the eye line, degrees, positive = image-right corner lower.
    - ``droop_score``: mean of the three signed droop terms ``mouth_corner_height_diff / 0.1``,
      ``-eye_mouth_log_ratio / 0.1`` and ``mouth_roll_deg / 10``; positive = the image right droops.
    - ``asymmetry_index``: the mean of the absolute values of those three terms (``ASYMMETRY_SCALES``).
      0 = perfectly symmetric, ~1 = a clearly visible droop of about 0.1 IOD (~6 mm) on one side, growing
      linearly beyond. Eye-line roll and nose offset are left out because head tilt and yaw move them as much as
      palsy does. A research heuristic for ranking and plotting faces, not a clinical score.
    - ``more_affected_image_side``: ``'right'`` / ``'left'`` when ``droop_score`` is above ``side_threshold`` /
      below ``-side_threshold``, ``'none'`` in between, ``'unknown'`` for degenerate landmarks. This is the
      *image* side; ``patient_side`` converts it.

    Degenerate landmarks (NaN, infinite, coincident eyes) give NaN for every measurement instead of raising, so a
    table of many faces survives one bad detection.
    """
    points = landmark_points(landmarks)
    if not np.all(np.isfinite(points)) or float(np.hypot(*(points[1] - points[0]))) <= _MIN_IOD_PX:
        return _nan_measurements()
    level, roll, _ = _levelled(points)
    nose, mouth_left, mouth_right = level[2], level[3], level[4]
    eye_left, eye_right = level[0], level[1]

    mouth_vector = mouth_right - mouth_left
    mouth_width = float(np.hypot(*mouth_vector))
    mouth_roll = math.degrees(math.atan2(mouth_vector[1], mouth_vector[0])) if mouth_width > _MIN_LENGTH else math.nan

    left_length = float(np.hypot(*(mouth_left - eye_left)))
    right_length = float(np.hypot(*(mouth_right - eye_right)))
    ratio = left_length / right_length if min(left_length, right_length) > _MIN_LENGTH else math.nan

    # midline from the eye centre (the origin) through the mouth centre, evaluated at the nose's height
    mouth_centre = (mouth_left + mouth_right) / 2
    if abs(mouth_centre[1]) > _MIN_LENGTH:
        nose_offset = float(nose[0] - mouth_centre[0] * nose[1] / mouth_centre[1])
    else:
        nose_offset = math.nan

    values: dict[str, float | str] = {
        'eye_line_roll_deg': math.degrees(roll),
        'mouth_corner_height_diff': float(mouth_right[1] - mouth_left[1]),
        'eye_mouth_ratio': ratio,
        'eye_mouth_log_ratio': math.log(ratio) if math.isfinite(ratio) and ratio > 0 else math.nan,
        'nose_offset': nose_offset,
        'mouth_roll_deg': mouth_roll,
    }
    terms = np.array(list(_asymmetry_terms(values).values()))
    values['droop_score'] = float(terms.mean())
    values['asymmetry_index'] = float(np.abs(terms).mean())
    values['more_affected_image_side'] = _side_from_score(values['droop_score'], side_threshold)
    return values


def measurements_table(landmarks_list: Sequence[Any] | np.ndarray, index: Sequence[Any] | None = None,
                       side_threshold: float = SIDE_THRESHOLD) -> pd.DataFrame:
    """One row per face: the ``MEASUREMENT_NAMES`` columns (float, NaN for degenerate landmarks) then
    ``more_affected_image_side``. ``landmarks_list`` holds anything ``landmark_points`` reads (``None`` for a face
    without landmarks) or is an ``(N, 5, 2)`` / ``(N, 10)`` array; ``index`` labels the rows (e.g. image paths)."""
    if isinstance(landmarks_list, np.ndarray):
        landmarks_list = landmarks_list.reshape(len(landmarks_list), -1) if landmarks_list.size else []
    rows = [symmetry_measurements(landmarks, side_threshold) for landmarks in landmarks_list]
    columns = [*MEASUREMENT_NAMES, 'more_affected_image_side']
    table = pd.DataFrame(rows, columns=columns, index=None if index is None else list(index))
    return table.astype({name: np.float64 for name in MEASUREMENT_NAMES})


def patient_side(image_side: str) -> str:
    """The patient's side (``annotations.SIDE_CLASSES``) of an image side: in a frontal, unmirrored photo the patient's left is
    the image right."""
    mapping = {'left': 'right', 'right': 'left', 'none': 'none', 'unknown': 'unknown'}
    if image_side not in mapping:
        raise ValueError(f'image side must be one of {IMAGE_SIDES}, got {image_side!r}')
    return mapping[image_side]


# drawing

def _line_through(ax, centre: np.ndarray, direction: np.ndarray, half_length: float, **style) -> None:
    ends = np.stack([centre - direction * half_length, centre + direction * half_length])
    ax.plot(ends[:, 0], ends[:, 1], **style)


def _measurement_text(measurements: Mapping[str, Any]) -> str:
    if not math.isfinite(float(measurements.get('asymmetry_index', math.nan))):
        return 'landmarks degenerate:\nno symmetry measurements'
    side = measurements.get('more_affected_image_side', 'unknown')
    side_text = {'none': 'no side droops', 'unknown': 'side unknown'}.get(side, f'image {side} droops (patient {patient_side(side)})')
    return '\n'.join([
        f'asymmetry index {measurements["asymmetry_index"]:.2f}',
        f'{side_text} (droop score {measurements["droop_score"]:+.2f})',
        f'eye roll {measurements["eye_line_roll_deg"]:+.1f} deg',
        f'mouth roll {measurements["mouth_roll_deg"]:+.1f} deg',
        f'corner height diff {measurements["mouth_corner_height_diff"]:+.3f} IOD',
        f'eye-mouth ratio {measurements["eye_mouth_ratio"]:.3f}',
        f'nose offset {measurements["nose_offset"]:+.3f} IOD',
    ])


def draw_measurements(ax_or_image: Any, landmarks: Any, measurements: Mapping[str, Any] | None = None,
                      fontsize: float = 7.0):
    """Draw the geometry behind the measurements over a photo and list the numbers in a corner.

    ``ax_or_image`` is a matplotlib axis that already shows the photo (inference overlays) or an image array,
    which is shown on a new figure. Drawn in image pixels: the landmarks, the eye line (cyan), a dashed parallel
    to it through the mouth centre (a drooping corner falls below it), the mouth line (yellow) and the midline
    through the eye and mouth centres (magenta). ``measurements`` defaults to ``symmetry_measurements(landmarks)``.
    Returns the axis (its figure is ``ax.figure``).
    """
    import matplotlib.pyplot as plt  # local import: measuring needs no plotting back-end

    if isinstance(ax_or_image, np.ndarray):
        fig, ax = plt.subplots(figsize=(4, 4 * ax_or_image.shape[0] / max(ax_or_image.shape[1], 1)))
        ax.imshow(ax_or_image, cmap='gray' if ax_or_image.ndim == 2 else None)
        ax.set_axis_off()
        fig.tight_layout()
    else:
        ax = ax_or_image
    measurements = symmetry_measurements(landmarks) if measurements is None else measurements
    points = landmark_points(landmarks)
    if np.all(np.isfinite(points)):
        ax.scatter(points[:, 0], points[:, 1], s=12, c=['cyan', 'cyan', 'magenta', 'yellow', 'yellow'], zorder=3)
    if math.isfinite(float(measurements.get('eye_line_roll_deg', math.nan))) and np.all(np.isfinite(points)):
        limits = ax.get_xlim(), ax.get_ylim()
        eye_vector = points[1] - points[0]
        iod = float(np.hypot(*eye_vector))
        along = eye_vector / iod
        eye_centre, mouth_centre = points[:2].mean(axis=0), points[3:].mean(axis=0)
        _line_through(ax, eye_centre, along, 0.9 * iod, color='cyan', lw=1.2)
        _line_through(ax, mouth_centre, along, 0.7 * iod, color='white', lw=0.8, ls='--')
        ax.plot(points[3:, 0], points[3:, 1], color='yellow', lw=1.2)
        midline = mouth_centre - eye_centre
        if np.hypot(*midline) > _MIN_LENGTH * iod:
            ax.plot(*np.stack([eye_centre - 0.3 * midline, mouth_centre + 0.3 * midline]).T, color='magenta', lw=0.8)
        ax.set_xlim(*limits[0])  # the lines must not widen the view of the photo
        ax.set_ylim(*limits[1])
    ax.text(0.02, 0.98, _measurement_text(measurements), transform=ax.transAxes, va='top', ha='left',
            fontsize=fontsize, family='monospace', color='white',
            bbox={'facecolor': 'black', 'alpha': 0.55, 'pad': 2, 'edgecolor': 'none'})
    return ax


# baseline grader

# Absolute values: the grade depends on how strongly one side droops, not on which side; the sign is side
# information and would cancel out across left- and right-sided patients in a linear model.
BASELINE_FEATURES = ('abs_eye_line_roll_deg', 'abs_mouth_corner_height_diff', 'abs_eye_mouth_log_ratio',
                     'abs_nose_offset', 'abs_mouth_roll_deg', 'asymmetry_index')
_FORMAT = 'symmetry_baseline/1'


def baseline_features(landmarks_list: Sequence[Any] | np.ndarray) -> np.ndarray:
    """``(N, len(BASELINE_FEATURES))`` float64 features of the baseline; NaN rows for degenerate landmarks."""
    table = measurements_table(landmarks_list)
    columns = [table[name[4:]].abs() if name.startswith('abs_') else table[name] for name in BASELINE_FEATURES]
    if not len(table):
        return np.zeros((0, len(BASELINE_FEATURES)))
    return np.stack([c.to_numpy(np.float64) for c in columns], axis=1)


def _softmax(raw: np.ndarray) -> np.ndarray:
    shifted = raw - raw.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


class SymmetryBaseline:
    """A transparent grader on the landmark symmetry measurements: what five points alone can tell.

    Standardised features -> multinomial logistic regression. Predictions are computed from the stored parameters
    (coefficients and scaler) with numpy, so a baseline rebuilt by ``from_dict`` predicts exactly what the fitted
    one did, without pickle and without scikit-learn.

    Faces with degenerate landmarks are left out of fitting (with a warning) and predicted from the training
    feature means (also with a warning), so every input still gets a grade. Grades absent from training get
    probability 0.
    """

    def __init__(self, num_classes: int = 6, seed: int = 0):
        if num_classes < 2:
            raise ValueError(f'num_classes must be at least 2, got {num_classes}')
        self.num_classes = int(num_classes)
        self.seed = int(seed)
        self.params: dict[str, Any] | None = None
        self.estimator = None   # the fitted scikit-learn model (not serialised; predictions do not use it)

    # fitting

    def _training_data(self, landmarks_list: Sequence[Any], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        features = baseline_features(landmarks_list)
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != len(features):
            raise ValueError(f'{len(features)} faces but {len(labels)} labels')
        if labels.size and (not np.all(np.equal(np.mod(labels, 1), 0)) or labels.min() < 0
                            or labels.max() >= self.num_classes):
            raise ValueError(f'labels must be integers in 0..{self.num_classes - 1}')
        valid = np.all(np.isfinite(features), axis=1)
        if not valid.all():
            bad = np.flatnonzero(~valid)
            warnings.warn(f'symmetry baseline: {len(bad)} of {len(valid)} faces have degenerate landmarks and are '
                          f'left out of fitting (rows {bad[:10].tolist()}{" ..." if len(bad) > 10 else ""})',
                          stacklevel=3)
        features, labels = features[valid], labels[valid].astype(np.int64)
        if len(np.unique(labels)) < 2:
            raise ValueError(f'cannot fit the symmetry baseline: need faces of at least two grades with usable '
                             f'landmarks, got {len(labels)} faces of grades {sorted(set(labels.tolist()))}')
        return features, labels

    def fit(self, landmarks_list: Sequence[Any], labels: Sequence[int]) -> 'SymmetryBaseline':
        """Fit on one landmark set per face and its grade (0..num_classes-1). Raises ``ValueError`` when fewer
        than two grades remain after dropping degenerate faces."""
        features, labels = self._training_data(landmarks_list, labels)
        mean = features.mean(axis=0)
        scale = features.std(axis=0)
        scale = np.where(scale > 1e-12, scale, 1.0)  # a constant feature must not divide by zero
        standard = (features - mean) / scale
        params: dict[str, Any] = {'mean': mean, 'scale': scale, 'classes': np.unique(labels)}
        params.update(self._fit_logreg(standard, labels))
        self.params = params
        return self

    def _fit_logreg(self, standard: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        from sklearn.linear_model import LogisticRegression

        self.estimator = LogisticRegression(C=1.0, max_iter=2000, random_state=self.seed).fit(standard, labels)
        coef, intercept = self.estimator.coef_, self.estimator.intercept_
        if coef.shape[0] == 1:  # two grades: sklearn keeps one logit; softmax([0, z]) is the same sigmoid
            coef = np.vstack([np.zeros_like(coef), coef])
            intercept = np.array([0.0, intercept[0]])
        return {'coef': coef, 'intercept': intercept}

    # prediction

    def _check_fitted(self) -> dict[str, Any]:
        if self.params is None:
            raise ValueError('the symmetry baseline is not fitted: call fit() or from_dict() first')
        return self.params

    def _standard_features(self, landmarks_list: Sequence[Any]) -> np.ndarray:
        params = self._check_fitted()
        features = baseline_features(landmarks_list)
        invalid = ~np.all(np.isfinite(features), axis=1)
        if invalid.any():
            warnings.warn(f'symmetry baseline: {int(invalid.sum())} of {len(features)} faces have degenerate '
                          f'landmarks; they are graded as an average training face', stacklevel=3)
            features[invalid] = params['mean']
        return (features - params['mean']) / params['scale']

    def _raw_scores(self, standard: np.ndarray) -> np.ndarray:
        params = self._check_fitted()
        return standard @ np.asarray(params['coef']).T + params['intercept']

    def predict_proba(self, landmarks_list: Sequence[Any]) -> np.ndarray:
        """``(N, num_classes)`` grade probabilities (0 for grades absent from training)."""
        params = self._check_fitted()
        standard = self._standard_features(landmarks_list)
        proba = np.zeros((len(standard), self.num_classes))
        if len(standard):
            proba[:, np.asarray(params['classes'], dtype=np.int64)] = _softmax(self._raw_scores(standard))
        return proba

    def predict(self, landmarks_list: Sequence[Any]) -> np.ndarray:
        """``(N,)`` int64 most probable grades."""
        return self.predict_proba(landmarks_list).argmax(axis=1).astype(np.int64)

    # serialisation

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, floats, ints, strings): ``json.dumps`` and ``torch.load(weights_only=True)`` both
        take it."""
        params = self._check_fitted()
        return {'format': _FORMAT, 'model': 'logreg', 'num_classes': self.num_classes, 'seed': self.seed,
                'features': list(BASELINE_FEATURES),
                'params': {key: np.asarray(value).tolist() for key, value in params.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> 'SymmetryBaseline':
        """Rebuild a baseline from ``to_dict()``; a dict of another format or feature set is a ``ValueError``."""
        if not isinstance(data, Mapping) or data.get('format') != _FORMAT:
            found = data.get('format') if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(f'not a saved symmetry baseline (format {found!r}, expected {_FORMAT!r})')
        if list(data.get('features', [])) != list(BASELINE_FEATURES):
            raise ValueError(f'saved symmetry baseline uses features {data.get("features")}, this version computes '
                             f'{list(BASELINE_FEATURES)}')
        if data.get('model', 'logreg') != 'logreg':
            raise ValueError(f'saved symmetry baseline of model {data.get("model")!r}; this version reads logreg')
        params = dict(data.get('params') or {})
        missing = [key for key in ('mean', 'scale', 'classes', 'coef', 'intercept') if key not in params]
        if 'num_classes' not in data or missing:
            raise ValueError(f'saved symmetry baseline is incomplete (missing {missing or ["num_classes"]})')
        baseline = cls(num_classes=int(data['num_classes']), seed=int(data.get('seed', 0)))
        baseline.params = {key: np.asarray(value, dtype=np.int64 if key == 'classes' else np.float64)
                           for key, value in params.items()}
        return baseline


def fit_baseline(landmarks_list: Sequence[Any], labels: Sequence[int], num_classes: int,
                 seed: int = 0) -> SymmetryBaseline | None:
    """A ``SymmetryBaseline`` fitted on the training photos' landmarks and grades, or None (with a note) when it
    cannot be fitted (fewer than two grades with usable landmarks): a training run then goes on without it."""
    try:
        return SymmetryBaseline(num_classes=num_classes, seed=seed).fit(landmarks_list, labels)
    except ValueError as err:
        print(f'note: symmetry baseline not fitted: {err}')
        return None


def score_baseline(baseline: SymmetryBaseline, splits: Mapping[str, tuple[Sequence[Any], Sequence[int]]],
                   num_classes: int) -> dict[str, dict[str, Any]]:
    """``metrics.compute_metrics`` of the baseline on each named split of ``(landmarks, grades)``."""
    return {name: M.compute_metrics(np.asarray(labels).reshape(-1), baseline.predict(landmarks), num_classes)
            for name, (landmarks, labels) in splits.items()}


def comparison_table(htnet: Mapping[str, Mapping | None], baseline: Mapping[str, Mapping]) -> str:
    """A plain-text table: one row per metric, HTNet and the baseline side by side for each scored split."""
    splits = [name for name in ('val', 'test') if baseline.get(name) is not None]
    header = f'{"metric":<20}' + ''.join(f'{f"HTNet {s}":>12}{f"baseline {s}":>14}' for s in splits)
    lines = [header, '-' * len(header)]
    for metric in M.METRIC_NAMES:
        cells = ''
        for split in splits:
            mine = (htnet.get(split) or {}).get(metric)
            cells += (f'{mine:>12.4f}' if mine is not None else f'{"-":>12}') + f'{baseline[split][metric]:>14.4f}'
        lines.append(f'{metric:<20}{cells}')
    return '\n'.join(lines)
