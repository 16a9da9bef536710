"""metrics.py: hand-checked values of the ordinal metrics, agreement with scikit-learn, bootstrap intervals."""
import json
import warnings

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, f1_score

from metrics import (METRIC_NAMES, SELECT_METRIC_NAMES, bootstrap_metrics, compute_metrics, confusion_matrix,
                     format_metrics, higher_is_better, is_improvement, is_subject_metric, subject_groups)


def test_perfect_predictions():
    y = [0, 1, 2, 3, 4, 5, 5]
    m = compute_metrics(y, y, 6)
    assert m['n'] == 7
    for name in ('accuracy', 'macro_f1', 'weighted_f1', 'mean_class_accuracy', 'qwk', 'within_one'):
        assert m[name] == pytest.approx(1.0), name
    assert m['mae'] == 0.0
    assert m['confusion_matrix'][5][5] == 2


def test_mae_and_within_one_by_hand():
    # errors: 1, 3, 0, 0 grades
    m = compute_metrics([0, 0, 5, 3], [1, 3, 5, 3], 6)
    assert m['mae'] == pytest.approx(1.0)
    assert m['within_one'] == pytest.approx(0.75)
    assert m['accuracy'] == pytest.approx(0.5)


def test_qwk_by_hand():
    # fully reversed ranking of three grades: observed disagreement 2/3, chance disagreement 1/3 -> kappa = -1
    assert compute_metrics([0, 1, 2], [2, 1, 0], 3)['qwk'] == pytest.approx(-1.0)
    # one error of one grade among four, K = 4: O = 1/4 * 1/9, E from histograms true [1,1,1,1], pred [1,0,2,1]
    true, pred = [0, 1, 2, 3], [0, 2, 2, 3]
    hist_t, hist_p = np.array([1, 1, 1, 1]), np.array([1, 0, 2, 1])
    w = np.subtract.outer(np.arange(4), np.arange(4)) ** 2
    expected_disagreement = (w * np.outer(hist_t, hist_p) / 16).sum()
    kappa = 1 - (1 / 4) / expected_disagreement
    assert compute_metrics(true, pred, 4)['qwk'] == pytest.approx(kappa)
    # near misses are penalised less than far misses, unlike plain accuracy
    near = compute_metrics([0, 2, 4, 5], [1, 2, 4, 5], 6)
    far = compute_metrics([0, 2, 4, 5], [5, 2, 4, 5], 6)
    assert near['accuracy'] == far['accuracy']
    assert near['qwk'] > far['qwk']
    assert near['mae'] < far['mae']


def test_single_grade_everywhere_counts_as_agreement():
    m = compute_metrics([2, 2, 2], [2, 2, 2], 6)
    assert m['qwk'] == 1.0 and m['accuracy'] == 1.0


def test_absent_classes():
    # grades 4 and 5 occur nowhere: they are None per class and do not drag macro F1 down
    m = compute_metrics([0, 0, 1, 2, 3], [0, 1, 1, 2, 2], 6)
    assert m['per_class_accuracy'][4] is None and m['per_class_accuracy'][5] is None
    assert m['per_class_accuracy'][:4] == pytest.approx([0.5, 1.0, 1.0, 0.0])
    assert m['mean_class_accuracy'] == pytest.approx(np.mean([0.5, 1.0, 1.0, 0.0]))
    assert m['macro_f1'] == pytest.approx(f1_score([0, 0, 1, 2, 3], [0, 1, 1, 2, 2], average='macro'))


def test_confusion_matrix_rows_are_true_grades():
    cm = confusion_matrix([0, 0, 2], [1, 1, 2], 3)
    assert cm.tolist() == [[0, 2, 0], [0, 0, 0], [0, 0, 1]]


@pytest.mark.parametrize('seed', range(8))
def test_agrees_with_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    k = 6 if seed % 2 else 3
    n = int(rng.integers(5, 60))
    true = rng.integers(0, k, n)
    pred = np.where(rng.random(n) < 0.6, true, rng.integers(0, k, n))
    m = compute_metrics(true, pred, k)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        assert m['macro_f1'] == pytest.approx(f1_score(true, pred, average='macro', zero_division=0))
        assert m['weighted_f1'] == pytest.approx(f1_score(true, pred, average='weighted', zero_division=0))
        assert m['mean_class_accuracy'] == pytest.approx(balanced_accuracy_score(true, pred))
        assert m['qwk'] == pytest.approx(cohen_kappa_score(true, pred, weights='quadratic', labels=list(range(k))))


def test_plain_python_values():
    m = compute_metrics(np.array([0, 1, 1]), np.array([0, 1, 0]), 3)
    assert all(type(m[name]) is float for name in METRIC_NAMES)
    assert type(m['n']) is int
    json.dumps(m)  # NaN-free and serialisable


def test_bad_labels_are_refused():
    with pytest.raises(ValueError, match='outside 0..5'):
        compute_metrics([0, 6], [0, 1], 6)
    with pytest.raises(ValueError, match='2 labels'):
        compute_metrics([0, 1], [0], 6)
    with pytest.raises(ValueError, match='no predictions'):
        compute_metrics([], [], 6)


def test_direction_of_metrics():
    assert higher_is_better('macro_f1') and higher_is_better('qwk')
    assert not higher_is_better('mae')
    assert is_improvement('mae', 0.4, 0.5) and not is_improvement('mae', 0.6, 0.5)
    assert is_improvement('macro_f1', 0.1, None)
    assert not is_improvement('accuracy', 0.5, 0.5)  # ties keep the earlier epoch
    with pytest.raises(ValueError, match='unknown metric'):
        higher_is_better('auc')


def test_subject_metrics_are_selectable_with_the_direction_of_their_photo_metric():
    assert set(SELECT_METRIC_NAMES) == set(METRIC_NAMES) | {f'subject_{name}' for name in METRIC_NAMES}
    assert is_subject_metric('subject_qwk') and not is_subject_metric('qwk')
    assert higher_is_better('subject_qwk') and not higher_is_better('subject_mae')
    assert is_improvement('subject_mae', 0.2, 0.3) and not is_improvement('subject_macro_f1', 0.2, 0.3)
    with pytest.raises(ValueError, match='unknown metric'):
        higher_is_better('subject_auc')


def test_subject_groups_only_when_photos_share_named_subjects():
    assert subject_groups(['a', 'a', 'b']) == ['a', 'a', 'b']
    assert subject_groups([1, 1, 2]) == ['1', '1', '2']
    assert subject_groups(['a', 'b', 'c']) is None  # every photo its own subject: the photo-level scores
    assert subject_groups(['a', 'a', '']) is None and subject_groups(['a', 'a', float('nan')]) is None
    assert subject_groups([]) is None


def test_bootstrap_interval_brackets_value_and_is_repeatable():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 6, 200)
    pred = np.where(rng.random(200) < 0.7, true, rng.integers(0, 6, 200))
    first = bootstrap_metrics(true, pred, 6, n_boot=300, seed=1)
    again = bootstrap_metrics(true, pred, 6, n_boot=300, seed=1)
    assert first == again
    assert set(first) == set(METRIC_NAMES)
    for name, ci in first.items():
        assert ci['ci_low'] <= ci['value'] <= ci['ci_high'], name
        assert ci['ci_low'] < ci['ci_high'], name


def test_bootstrap_by_subject_is_wider_than_by_photo():
    # 10 identical photos per subject: resampling photos pretends there are 10x more independent cases
    rng = np.random.default_rng(3)
    subjects = 30
    true_s = rng.integers(0, 6, subjects)
    pred_s = np.where(rng.random(subjects) < 0.6, true_s, rng.integers(0, 6, subjects))
    true, pred = np.repeat(true_s, 10), np.repeat(pred_s, 10)
    groups = np.repeat([f'subject{i}' for i in range(subjects)], 10)
    by_photo = bootstrap_metrics(true, pred, 6, n_boot=400, seed=0)['accuracy']
    by_subject = bootstrap_metrics(true, pred, 6, groups=groups, n_boot=400, seed=0)['accuracy']
    assert by_subject['value'] == by_photo['value']
    width = lambda ci: ci['ci_high'] - ci['ci_low']  # noqa: E731
    assert width(by_subject) > 2 * width(by_photo)


def test_bootstrap_of_perfect_predictions_is_degenerate():
    y = [0, 1, 2, 3, 4, 5] * 3
    ci = bootstrap_metrics(y, y, 6, n_boot=50)
    assert ci['accuracy'] == {'value': 1.0, 'ci_low': 1.0, 'ci_high': 1.0}
    assert ci['mae'] == {'value': 0.0, 'ci_low': 0.0, 'ci_high': 0.0}


def test_bootstrap_refuses_mismatched_groups():
    with pytest.raises(ValueError, match='groups'):
        bootstrap_metrics([0, 1], [0, 1], 6, groups=['a'])


def test_format_metrics_line():
    line = format_metrics({'accuracy': 0.5, 'macro_f1': 0.25, 'qwk': 0.1, 'mae': 1.0, 'within_one': 0.75})
    assert line == 'acc 0.500 | macro_f1 0.250 | qwk 0.100 | mae 1.000 | within_one 0.750'
