"""benchmarks/generalisation.py: which model is tested on which faces, and how seeds become mean +- sd."""
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))
import generalisation  # noqa: E402


def payload(f1, qwk, patient_qwk=None, flagged=None, real=None):
    metrics = {name: {'value': value} for name, value in
               (('qwk', qwk), ('macro_f1', f1), ('mae', 1 - qwk), ('accuracy', f1))}
    out = {'metrics': metrics, 'n': 10}
    if patient_qwk is not None:
        out['subject_metrics'] = {'metrics': {name: {'value': patient_qwk} for name in generalisation.METRICS}}
    if flagged is not None:
        out['ood'] = {'flagged_share': flagged}
    if real is not None:
        out['real_photos'] = {'n': 1, 'flagged': real}
    return out


def test_a_model_is_tested_on_its_own_test_split_and_on_every_photo_of_the_other_family():
    assert generalisation.tests_of('a') == {'a': 'a', 'b': 'b_all'}
    assert generalisation.tests_of('b') == {'b': 'b', 'a': 'a_all'}
    assert generalisation.tests_of('mix') == {'mix': 'mix'}


def test_seeds_are_summarised_as_mean_and_sample_sd_per_direction():
    results = {('a', 'b', 0): payload(0.4, 0.8, 0.9, 0.5, 1), ('a', 'b', 1): payload(0.6, 0.9, 0.95, 0.7, 0),
               ('a', 'a', 0): payload(0.7, 0.95), ('a', 'a', 1): payload(0.9, 0.97)}
    rows = {(r['train_on'], r['test_on']): r for r in generalisation.summarise(results)}
    cross, own = rows[('a', 'b')], rows[('a', 'a')]
    assert cross['kind'] == 'cross-family' and own['kind'] == 'in-family' and cross['seeds'] == [0, 1]
    assert cross['mean']['photo_macro_f1'] == pytest.approx(0.5)
    assert cross['sd']['photo_macro_f1'] == pytest.approx(math.sqrt(0.02))  # sample sd of 0.4 and 0.6
    assert cross['mean']['patient_qwk'] == pytest.approx(0.925)
    assert cross['mean']['ood_flagged'] == pytest.approx(0.6) and cross['mean']['real_flagged'] == pytest.approx(0.5)
    assert math.isnan(own['mean']['patient_qwk'])  # no subjects named: no patient-level numbers, not zeros
    table = generalisation.markdown(list(rows.values()), 'recipe')
    assert '| a -> b (cross-family) | 2 | 0.850 +- 0.071 | 0.500 +- 0.141 |' in table
    assert '| a -> a (in-family) | 2 |' in table and table.count('\n') == 3
