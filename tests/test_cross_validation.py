"""train_facial_palsy.py --cv K / --cv loso: subject-disjoint folds, pooled held-out scores, refusals."""
import csv
import json
import shutil

import pytest
import torch

import ood
import train_facial_palsy as train
import training_data
from utils import UserError


def cv_args(data, tmp_path, *extra):
    return ['--data_root', str(data.root), '--train_csv', str(data.csv), '--cache_dir', str(data.cache_dir),
            '--save_dir', str(tmp_path / 'c'), '--log_dir', str(tmp_path / 'l'), '--device', 'cpu',
            '--batch_size', '8', '--learning_rate', '2e-3', '--augmentation', 'none', '--threads', '1',
            '--epochs', '1', *data.tiny_flags, *extra]


def read_rows(path):
    with open(path, newline='') as handle:
        return list(csv.DictReader(handle))


def pool_rows(data):
    """(path, subject) of the train and val rows of the annotation CSV: the cross-validation pool."""
    return [row for row in read_rows(data.csv) if row['split'] in ('train', 'val')]


@pytest.fixture(scope='module')
def three_fold_run(synthetic_dataset, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp('cv3')
    results = train.main(cv_args(synthetic_dataset, tmp_path, '--cv', '3', '--test_csv', str(synthetic_dataset.csv)))
    return results, tmp_path


def test_three_folds_hold_out_every_subject_once(three_fold_run, synthetic_dataset):
    results, tmp_path = three_fold_run
    log_dir, save_dir = tmp_path / 'l', tmp_path / 'c'
    pool = pool_rows(synthetic_dataset)
    pool_subjects = {row['subject'] for row in pool}
    test_subjects = {row['subject'] for row in read_rows(synthetic_dataset.csv) if row['split'] == 'test'}

    summary = json.loads((log_dir / 'cv_summary.json').read_text())
    assert summary['cv'] == 3 and summary['num_folds'] == summary['folds_run'] == 3 and not summary['partial']
    assert set(summary['fold_assignment']) == pool_subjects and not pool_subjects & test_subjects
    assert sorted(set(summary['fold_assignment'].values())) == [1, 2, 3]
    assert summary['pooled']['metrics']['n'] == len(pool) == summary['pool']['images']
    for name in ('macro_f1', 'qwk'):
        interval = summary['pooled']['ci95'][name]
        assert interval['ci_low'] <= interval['value'] <= interval['ci_high']
    assert set(summary['fold_mean']) == set(summary['fold_std']) and 'macro_f1' in summary['fold_mean']

    predictions = read_rows(log_dir / 'cv_predictions.csv')
    assert list(predictions[0]) == ['path', 'subject', 'fold', 'true', 'predicted']
    assert len(predictions) == len(pool)
    held_out_by = {}
    for row in predictions:
        held_out_by.setdefault(row['subject'], set()).add(int(row['fold']))
    assert set(held_out_by) == pool_subjects
    assert all(len(folds) == 1 for folds in held_out_by.values())  # every subject in exactly one held-out fold
    assert {s: f.pop() for s, f in held_out_by.items()} == summary['fold_assignment']

    for fold in summary['folds']:
        k = fold['fold']
        held = set(fold['heldout_subjects'])
        assert held == {s for s, f in summary['fold_assignment'].items() if f == k}
        assert fold['metrics']['n'] == fold['n_heldout']
        best = torch.load(save_dir / f'fold_{k}' / 'best_model.pth', weights_only=True)
        assert ood.check_stats(best['ood']) is not None and fold['ood'] == ood.describe_threshold(best['ood'])
        assert (log_dir / f'fold_{k}' / 'summary.csv').is_file()
        assert fold['n_train'] + fold['n_val'] + fold['n_heldout'] == len(pool)
    assert (log_dir / 'cv_folds.png').stat().st_size > 0
    assert results['folds_run'] == 3 and results['pooled']['metrics']['n'] == len(pool)


def test_fold_training_and_validation_subjects_are_disjoint_from_the_held_out_ones(three_fold_run):
    _, tmp_path = three_fold_run
    import torch
    summary = json.loads((tmp_path / 'l' / 'cv_summary.json').read_text())
    for fold in summary['folds']:
        # the validation subjects are carved from the fold's training subjects with the fold's seed
        checkpoint = torch.load(tmp_path / 'c' / f'fold_{fold["fold"]}' / 'best_model.pth', weights_only=True)
        assert checkpoint['args']['save_dir'].endswith(f'fold_{fold["fold"]}')
    datasets = _fold_datasets(tmp_path, summary)
    for fold, parts in datasets.items():
        held = set(summary['folds'][fold - 1]['heldout_subjects'])
        assert parts['train'] and parts['val']
        assert not held & parts['train'] and not held & parts['val'] and not parts['train'] & parts['val']
        assert parts['val'] == set(summary['folds'][fold - 1]['val_subjects'])


def _fold_datasets(tmp_path, summary):
    """Rebuild each fold's train / val subjects the way run_fold does, from the recorded assignment."""
    rows = read_rows(tmp_path / 'l' / 'cv_predictions.csv')
    labels = {row['subject']: int(row['true']) for row in rows}
    out = {}
    for fold in summary['folds']:
        k = fold['fold']
        training = [row for row in rows if int(row['fold']) != k]
        fit_pos, val_pos = training_data.carve_validation([int(r['true']) for r in training],
                                                  [r['subject'] for r in training], summary['val_fraction'],
                                                  summary['seed'] + k)
        out[k] = {'train': {training[p]['subject'] for p in fit_pos}, 'val': {training[p]['subject'] for p in val_pos}}
        assert len(fit_pos) + len(val_pos) == fold['n_train'] + fold['n_val'] and len(val_pos) == fold['n_val']
    assert labels
    return out


def test_an_earlier_cross_validation_is_moved_aside_not_overwritten(three_fold_run, synthetic_dataset, tmp_path,
                                                                   tree_hashes, capsys):
    _, earlier = three_fold_run
    shutil.copytree(earlier / 'c', tmp_path / 'c')
    shutil.copytree(earlier / 'l', tmp_path / 'l')
    (tmp_path / 'c' / 'notes.txt').write_text('mine')
    before = {name: tree_hashes(tmp_path / name) for name in ('c', 'l')}
    results = train.main(cv_args(synthetic_dataset, tmp_path, '--cv', '3', '--cv_folds_limit', '1'))
    out = capsys.readouterr().out
    assert results['folds_run'] == 1 and (tmp_path / 'c' / 'notes.txt').read_text() == 'mine'
    for name in ('c', 'l'):
        [moved] = tmp_path.glob(f'{name}.previous-*')
        assert f'{tmp_path / name} -> {moved}' in out
        kept = dict(tree_hashes(moved), **({'notes.txt': before['c']['notes.txt']} if name == 'c' else {}))
        assert kept == before[name]  # every file of the earlier 3 folds, unchanged
    assert not (tmp_path / 'c' / 'fold_3').exists() and not (tmp_path / 'l' / 'fold_2').exists()


def test_loso_with_a_folds_limit_is_partial(synthetic_dataset, tmp_path, capsys):
    results = train.main(cv_args(synthetic_dataset, tmp_path, '--cv', 'loso', '--cv_folds_limit', '2',
                                 '--multitask', '--loss', 'ordinal', '--ema', '0.5',
                                 '--select_metric', 'subject_qwk'))
    out = capsys.readouterr().out
    pool_subjects = {row['subject'] for row in pool_rows(synthetic_dataset)}
    summary = json.loads((tmp_path / 'l' / 'cv_summary.json').read_text())
    assert summary['cv'] == 'loso' and summary['num_folds'] == len(pool_subjects)
    assert summary['folds_run'] == 2 and summary['partial'] and 'PARTIAL' in summary['note']
    assert [len(f['heldout_subjects']) for f in summary['folds']] == [1, 1]
    assert summary['prediction'] == 'ordinal_median' and 'side_accuracy' in summary['pooled']['metrics']
    assert f'{len(pool_subjects)} folds' in out and 'remaining 1 folds need about' in out
    predictions = read_rows(tmp_path / 'l' / 'cv_predictions.csv')
    assert {int(r['fold']) for r in predictions} == {1, 2}
    assert {'side_true', 'side_predicted'} <= set(predictions[0])
    assert not (tmp_path / 'c' / 'fold_3').exists() and results['partial']
    for fold in (1, 2):  # each fold selected on its validation patients with the averaged weights
        rows = read_rows(tmp_path / 'l' / f'fold_{fold}' / 'summary.csv')
        chosen = summary['folds'][fold - 1]['best_val_metric']
        assert float(rows[0]['val_subject_qwk']) == pytest.approx(chosen, abs=1e-5)
        best = torch.load(tmp_path / 'c' / f'fold_{fold}' / 'best_model.pth', weights_only=True)
        assert best['select_metric'] == 'subject_qwk' and best['ema']['decay'] == 0.5


@pytest.mark.parametrize('flags, message', [
    (['--cv', '1'], 'at least 2 folds'),
    (['--cv', 'abc'], 'number of folds'),
    (['--cv', '50'], 'only'),
    (['--cv_folds_limit', '2'], 'needs --cv'),
    (['--cv', '3', '--cv_folds_limit', '0'], 'at least 1'),
])
def test_bad_cv_values_are_one_line_errors(synthetic_dataset, tmp_path, flags, message):
    with pytest.raises(UserError, match=message) as err:
        train.main(cv_args(synthetic_dataset, tmp_path, *flags))
    assert '\n' not in str(err.value)




def test_a_failing_fold_is_named_the_others_run_and_the_status_says_so(synthetic_dataset, tmp_path, monkeypatch,
                                                                      capsys):
    real = train.run_fold

    def first_fold_fails(fold, *args, **kwargs):
        if fold == 1:
            raise UserError('no usable photos in this fold')
        return real(fold, *args, **kwargs)

    monkeypatch.setattr(train, 'run_fold', first_fold_fails)
    results = train.main(cv_args(synthetic_dataset, tmp_path, '--cv', '3', '--cv_folds_limit', '2'))
    assert 'error: fold 1 failed: no usable photos in this fold; the other folds go on' in capsys.readouterr().err
    assert results['failed_folds'] == [{'fold': 1, 'error': 'no usable photos in this fold'}]
    assert [fold['fold'] for fold in results['folds']] == [2] and results['partial'] and 'FAILED' in results['note']
    assert train.exit_status(results) == 1 and train.exit_status({'interrupted': True}) == 130
    outcomes = {k: json.loads((tmp_path / 'l' / f'fold_{k}' / 'fold_result.json').read_text()) for k in (1, 2)}
    assert outcomes[1]['status'] == 'failed' and outcomes[1]['result'] is None
    assert outcomes[2]['status'] == 'done' and outcomes[2]['result']['indices']

    def every_fold_fails(fold, *args, **kwargs):
        raise RuntimeError('out of memory')

    monkeypatch.setattr(train, 'run_fold', every_fold_fails)
    with pytest.raises(UserError, match='no fold finished: fold 1: RuntimeError: out of memory; fold 2: '):
        train.main(cv_args(synthetic_dataset, tmp_path / 'again', '--cv', '3', '--cv_folds_limit', '2'))
