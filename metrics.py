"""Classification and ordinal-grading metrics for House-Brackmann predictions, with bootstrap confidence intervals.

Every scalar metric is computed from the confusion matrix alone (rows = true grade, columns = predicted grade), so
the same code scores one evaluation and a thousand bootstrap resamples: a resample is a sum of per-sample (or
per-subject) confusion matrices, which keeps ``bootstrap_metrics`` fast enough for every evaluation run.

The grades are ordinal (HB I < II < ... < VI, and normal < mild-moderate < severe on the simplified scale), so next
to accuracy and F1 we report the quadratic weighted kappa (the usual agreement measure between graders), the mean
absolute grade error and the share of predictions within one grade of the truth.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ['METRIC_NAMES', 'SUBJECT_PREFIX', 'SELECT_METRIC_NAMES', 'higher_is_better', 'is_improvement',
           'is_subject_metric', 'subject_groups', 'confusion_matrix', 'compute_metrics', 'metrics_from_confusion',
           'bootstrap_metrics', 'format_metrics']

# scalar metrics: the ones bootstrap_metrics gives intervals for, and the photo-level choices of --select_metric
METRIC_NAMES = ('accuracy', 'macro_f1', 'weighted_f1', 'mean_class_accuracy', 'qwk', 'mae', 'within_one')
# the same metrics over patients (each subject graded from the mean of its photos' probabilities)
SUBJECT_PREFIX = 'subject_'
SELECT_METRIC_NAMES = METRIC_NAMES + tuple(SUBJECT_PREFIX + name for name in METRIC_NAMES)
_LOWER_IS_BETTER = frozenset({'mae'})


def is_subject_metric(name: str) -> bool:
    """Whether a selection metric is scored over subjects (``subject_macro_f1``...) rather than photos."""
    return name.startswith(SUBJECT_PREFIX) and name[len(SUBJECT_PREFIX):] in METRIC_NAMES


def higher_is_better(name: str) -> bool:
    """Direction of a metric for model selection (only the mean absolute grade error falls as models improve,
    over photos or over subjects)."""
    if name not in SELECT_METRIC_NAMES:
        raise ValueError(f'unknown metric {name!r}; choose one of {", ".join(SELECT_METRIC_NAMES)}')
    return (name[len(SUBJECT_PREFIX):] if is_subject_metric(name) else name) not in _LOWER_IS_BETTER


def subject_groups(subjects: Sequence[Any]) -> list[str] | None:
    """The subjects as strings when they group photos, or None when a photo names no subject or every photo is
    its own subject (then patient-level scores and subject-resampled intervals equal the photo-level ones)."""
    named = [str(s).strip() for s in subjects]
    if not named or any(not s or s.lower() == 'nan' for s in named) or len(set(named)) == len(named):
        return None
    return named


def is_improvement(name: str, value: float, best: float | None) -> bool:
    """Whether ``value`` beats ``best`` for metric ``name`` (ties keep the earlier epoch)."""
    if best is None or (isinstance(best, float) and math.isnan(best)):
        return True
    return value > best if higher_is_better(name) else value < best


# helpers

def _as_labels(values: Sequence[int] | np.ndarray, num_classes: int, what: str) -> np.ndarray:
    array = np.asarray(values).reshape(-1)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.equal(np.mod(array, 1), 0)):
            raise ValueError(f'{what} must hold integer class labels')
        array = array.astype(np.int64)
    array = array.astype(np.int64, copy=False)
    if array.size and (array.min() < 0 or array.max() >= num_classes):
        raise ValueError(f'{what} holds labels outside 0..{num_classes - 1}: '
                         f'{sorted(set(array[(array < 0) | (array >= num_classes)].tolist()))[:5]}')
    return array


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """``(num_classes, num_classes)`` int64 counts; rows are true grades, columns predicted grades."""
    true = _as_labels(y_true, num_classes, 'y_true')
    pred = _as_labels(y_pred, num_classes, 'y_pred')
    if true.shape != pred.shape:
        raise ValueError(f'y_true has {true.size} labels but y_pred has {pred.size}')
    return np.bincount(true * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide='ignore', invalid='ignore'):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def metrics_from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Scalar metrics of one confusion matrix ``(K, K)`` or a stack of them ``(..., K, K)``.

    Conventions (they match scikit-learn with its default label set):
    - macro F1 averages over the classes that occur in the truth or the predictions, so a grade missing from a
      small validation split does not count as a zero;
    - weighted F1 weights each class by its true count;
    - mean class accuracy (balanced accuracy) averages recall over the classes present in the truth;
    - QWK uses weights ``(i - j)**2``; when both truth and predictions sit in one single grade the chance
      agreement is total and kappa is 0/0: we return 1.0 (perfect agreement) instead of NaN.
    """
    cm = np.asarray(cm, dtype=np.float64)
    num_classes = cm.shape[-1]
    n = cm.sum(axis=(-2, -1))
    true_counts = cm.sum(axis=-1)   # (..., K) support per class
    pred_counts = cm.sum(axis=-2)   # (..., K)
    hits = np.diagonal(cm, axis1=-2, axis2=-1)

    grades = np.arange(num_classes)
    distance = np.abs(grades[:, None] - grades[None, :]).astype(np.float64)  # (K, K) grade error of each cell

    f1 = _safe_divide(2 * hits, true_counts + pred_counts)          # NaN for classes seen nowhere
    seen = (true_counts + pred_counts) > 0
    recall = _safe_divide(hits, true_counts)                          # NaN for classes absent from the truth

    observed = (cm * distance ** 2).sum(axis=(-2, -1))
    expected_cm = true_counts[..., :, None] * pred_counts[..., None, :] / np.where(n > 0, n, 1)[..., None, None]
    expected = (expected_cm * distance ** 2).sum(axis=(-2, -1))
    qwk = np.where(expected > 0, 1 - observed / np.where(expected > 0, expected, 1), 1.0)

    with np.errstate(invalid='ignore', divide='ignore'):
        return {
            'accuracy': hits.sum(axis=-1) / n,
            'macro_f1': np.nansum(f1, axis=-1) / seen.sum(axis=-1),
            'weighted_f1': np.nansum(np.nan_to_num(f1) * true_counts, axis=-1) / n,
            'mean_class_accuracy': np.nanmean(np.where(true_counts > 0, recall, np.nan), axis=-1),
            'qwk': qwk,
            'mae': (cm * distance).sum(axis=(-2, -1)) / n,
            'within_one': (cm * (distance <= 1)).sum(axis=(-2, -1)) / n,
            'per_class_accuracy': recall,
        }


def compute_metrics(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> dict[str, Any]:
    """All metrics of one set of predictions as plain Python values (JSON, YAML and ``weights_only`` friendly).

    Keys: ``n``, the scalar ``METRIC_NAMES``, ``per_class_accuracy`` (one entry per class, ``None`` where the class
    has no true sample) and ``confusion_matrix`` (list of rows, rows = true grade).
    """
    cm = confusion_matrix(y_true, y_pred, num_classes)
    n = int(cm.sum())
    if n == 0:
        raise ValueError('no predictions to score')
    values = metrics_from_confusion(cm)
    result: dict[str, Any] = {'n': n}
    result.update({name: float(values[name]) for name in METRIC_NAMES})
    result['per_class_accuracy'] = [None if math.isnan(v) else float(v) for v in values['per_class_accuracy']]
    result['confusion_matrix'] = cm.tolist()
    return result


def bootstrap_metrics(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int,
                      groups: Sequence[Any] | None = None, n_boot: int = 1000, seed: int = 0,
                      alpha: float = 0.05) -> dict[str, dict[str, float]]:
    """Percentile bootstrap intervals for every scalar metric: ``{name: {'value', 'ci_low', 'ci_high'}}``.

    With ``groups`` (one subject id per sample) whole subjects are resampled, because photos of one patient are
    not independent: resampling photos would give intervals that are too narrow. A resample whose metric is
    undefined (e.g. no true class at all) is left out of that metric's interval.
    """
    if not 0 < alpha < 1:
        raise ValueError(f'alpha must lie in (0, 1), got {alpha}')
    if n_boot < 1:
        raise ValueError(f'n_boot must be at least 1, got {n_boot}')
    true = _as_labels(y_true, num_classes, 'y_true')
    pred = _as_labels(y_pred, num_classes, 'y_pred')
    if true.shape != pred.shape:
        raise ValueError(f'y_true has {true.size} labels but y_pred has {pred.size}')
    if true.size == 0:
        raise ValueError('no predictions to score')
    if groups is None:
        group_index = np.arange(true.size)
    else:
        if len(groups) != true.size:
            raise ValueError(f'groups has {len(groups)} entries but there are {true.size} predictions')
        _, group_index = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    num_groups = int(group_index.max()) + 1

    # one flattened confusion matrix per group: (G, K*K)
    cells = true * num_classes + pred
    group_cms = np.zeros((num_groups, num_classes * num_classes), dtype=np.float64)
    np.add.at(group_cms, (group_index, cells), 1.0)

    rng = np.random.default_rng(seed)
    draws = rng.integers(0, num_groups, size=(n_boot, num_groups))
    multiplicity = np.zeros((n_boot, num_groups), dtype=np.float64)  # how often each group is drawn
    np.add.at(multiplicity, (np.repeat(np.arange(n_boot), num_groups), draws.reshape(-1)), 1.0)
    boot_cms = (multiplicity @ group_cms).reshape(n_boot, num_classes, num_classes)

    point = compute_metrics(true, pred, num_classes)
    boot = metrics_from_confusion(boot_cms)
    result = {}
    for name in METRIC_NAMES:
        samples = boot[name][np.isfinite(boot[name])]
        low, high = (np.quantile(samples, [alpha / 2, 1 - alpha / 2]) if samples.size else (math.nan, math.nan))
        result[name] = {'value': point[name], 'ci_low': float(low), 'ci_high': float(high)}
    return result


def format_metrics(metrics: dict[str, Any], names: Sequence[str] = ('accuracy', 'macro_f1', 'qwk', 'mae',
                                                                      'within_one')) -> str:
    """One readable line, e.g. ``acc 0.812 | macro_f1 0.790 | qwk 0.901 | mae 0.21 | within_one 0.98``."""
    short = {'accuracy': 'acc', 'mean_class_accuracy': 'mca'}
    parts = []
    for name in names:
        value = metrics.get(name)
        if value is None:
            continue
        parts.append(f'{short.get(name, name)} {value:.3f}')
    return ' | '.join(parts)
