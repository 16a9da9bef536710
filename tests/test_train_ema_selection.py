"""train_facial_palsy.py: --ema (the averaged weights are validated, selected and stored), patient-level
--select_metric subject_*, the warning for a network far too large for its training photos, and the
out-of-distribution statistics stored in best_model.pth."""
import csv
import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import checkpoints
import data_augmentation as DA
import engine
import facial_palsy_dataset as fpd
import ood
import train_facial_palsy as train
import training_setup
from annotations import subject_grades
from metrics import METRIC_NAMES, compute_metrics
from utils import UserError


def run_args(data, tmp_path, *extra):
    return ['--data_root', str(data.root), '--train_csv', str(data.csv), '--val_csv', str(data.csv),
            '--test_csv', str(data.csv), '--cache_dir', str(data.cache_dir), '--save_dir', str(tmp_path / 'c'),
            '--log_dir', str(tmp_path / 'l'), '--device', 'cpu', '--batch_size', '8', '--learning_rate', '2e-3',
            '--threads', '1', '--seed', '1', *data.tiny_flags, *extra]


def split_loader(data, split, sides=False):
    """The photos of one split read plainly (no augmentation, no mirror), in the CSV's order."""
    dataset = fpd.FacialPalsyDataset(data.root, data.csv, split=split, cache_dir=data.cache_dir, verbose=False)
    return dataset, DataLoader(DA.SideLabelled(dataset) if sides else dataset, batch_size=8)


def summary_rows(log_dir):
    with open(log_dir / 'summary.csv', newline='') as handle:
        return list(csv.DictReader(handle))


# the weight average and the out-of-distribution statistics

def test_ema_weights_are_validated_selected_and_stored_with_ood_statistics(synthetic_dataset, tmp_path,
                                                                          monkeypatch):
    raw, real = [], engine.ModelEma.update_parameters

    def recording(self, model):  # the training weights after each optimiser step, as the average receives them
        raw.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        real(self, model)

    monkeypatch.setattr(engine.ModelEma, 'update_parameters', recording)
    decay, epochs = 0.6, 3
    results = train.main(run_args(synthetic_dataset, tmp_path, '--ema', str(decay), '--epochs', str(epochs),
                                  '--augmentation', 'standard', '--multitask', '--flip_swap_side'))
    steps = len(raw) // epochs
    assert steps >= 2 and len(raw) == steps * epochs

    def average_after(step):
        average = raw[0]
        for weights in raw[1:step]:
            average = {k: decay * average[k] + (1 - decay) * weights[k] for k in average}
        return average

    best = torch.load(tmp_path / 'c' / 'best_model.pth', weights_only=True)
    last = torch.load(tmp_path / 'c' / 'last.pth', weights_only=True)
    assert best['epoch'] == results['best_epoch'] and best['args']['ema'] == decay
    torch.testing.assert_close(best['model'], average_after(results['best_epoch'] * steps))
    torch.testing.assert_close(last['model'], average_after(len(raw)))
    assert all(torch.equal(last['ema']['training_weights'][k], raw[-1][k]) for k in raw[-1])
    assert last['ema']['updates'] == len(raw) and last['ema']['decay'] == decay
    assert not all(torch.equal(last['model'][k], raw[-1][k]) for k in raw[-1])

    # validation read the averaged weights: best_model.pth scores the logged validation numbers again
    trained = checkpoints.load_trained(tmp_path / 'c' / 'best_model.pth')
    _, val_loader = split_loader(synthetic_dataset, 'val', sides=True)
    again = engine.evaluate(trained.model, val_loader, torch.device('cpu'), torch.autocast('cpu', enabled=False), 6,
                            multitask=True)
    assert again['loss'] == pytest.approx(results['best_val_metrics']['loss'], rel=1e-5)
    assert again['confusion_matrix'] == results['best_val_metrics']['confusion_matrix']

    # the statistics come from the plain training photos (no augmentation, no mirror) of the best weights
    stats = ood.check_stats(best['ood'])
    assert stats is not None and stats['threshold_source'] == 'validation'
    _, train_loader = split_loader(synthetic_dataset, 'train')
    features, labels = ood.collect_features(trained.model, train_loader, 'cpu')
    val_features, _ = ood.collect_features(trained.model, val_loader, 'cpu')
    refit = ood.fit_ood(features, labels, val_features)
    torch.testing.assert_close(stats['means'], refit['means'])
    assert stats['threshold'] == pytest.approx(refit['threshold'], rel=1e-4)
    described = ood.describe_threshold(stats)
    assert results['ood'] == described
    assert json.loads((tmp_path / 'l' / 'test_metrics.json').read_text())['ood'] == described
    assert json.loads((tmp_path / 'l' / 'training_history.json').read_text())['ood'] == described
    assert 'ood' not in last and best['optimizer'] is not None  # every other key of the best checkpoint kept


# patient-level model selection

def test_subject_metric_selects_the_epoch_with_the_best_patient_score(synthetic_dataset, tmp_path):
    results = train.main(run_args(synthetic_dataset, tmp_path, '--select_metric', 'subject_mae', '--epochs', '3',
                                  '--augmentation', 'none', '--ema', '0.5', '--learning_rate', '5e-3'))
    rows = summary_rows(tmp_path / 'l')
    assert {f'val_subject_{name}' for name in METRIC_NAMES} <= set(rows[0])
    maes = [float(row['val_subject_mae']) for row in rows]
    assert results['select_metric'] == 'subject_mae' and results['best_epoch'] == 1 + maes.index(min(maes))
    assert [row['is_best'] for row in rows].count('True') >= 1
    history = json.loads((tmp_path / 'l' / 'training_history.json').read_text())
    assert history['select_metric'] == 'subject_mae' and history['val_subject_mae'] == pytest.approx(maes, rel=1e-5)

    # the logged patient scores are the best checkpoint's grades of each validation subject's mean photo
    trained = checkpoints.load_trained(tmp_path / 'c' / 'best_model.pth')
    val_set, val_loader = split_loader(synthetic_dataset, 'val')
    with torch.no_grad():
        probabilities = torch.cat([torch.softmax(trained.model(images), 1) for images, _ in val_loader]).numpy()
    subjects = [str(s) for s in val_set.subjects]
    names = sorted(set(subjects))
    mean = np.stack([probabilities[[s == name for s in subjects]].mean(0) for name in names])
    truth = subject_grades(subjects, val_set.labels)
    expected = compute_metrics([truth[name] for name in names], mean.argmax(1), 6)
    best_row = rows[results['best_epoch'] - 1]
    for name in ('mae', 'macro_f1', 'qwk'):
        assert float(best_row[f'val_subject_{name}']) == pytest.approx(expected[name], abs=1e-5)
    assert results['best_val_metrics']['subject_n'] == len(names) < len(subjects)


def test_a_subject_metric_without_shared_subjects_is_refused(synthetic_dataset, tmp_path):
    with open(synthetic_dataset.csv, newline='') as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:  # every photo its own subject
        row['subject'] = row['image_path'].replace('/', '_')
    single = tmp_path / 'one_photo_each.csv'
    with open(single, 'w', newline='') as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    args = run_args(synthetic_dataset, tmp_path, '--select_metric', 'subject_qwk', '--epochs', '1')
    args[args.index('--train_csv') + 1] = args[args.index('--val_csv') + 1] = str(single)
    args[args.index('--test_csv') + 1] = str(single)
    with pytest.raises(UserError, match=r'--select_metric subject_qwk grades each validation subject from the mean '
                                        r'of its photos, but the \d+ validation photos name no subject with two or '
                                        r'more photos .*choose --select_metric qwk'):
        train.main(args)
    assert not (tmp_path / 'c' / 'last.pth').exists()


# a network far too large for its photos

def test_size_warning_names_parameters_per_photo_for_a_large_network_on_a_small_set():
    text = training_setup.size_warning(139_586_066, 420)
    assert text.startswith('warning: HTNet with 139.6M parameters on 420 training photos: about 332,000 '
                           'parameters per photo; a network this size memorises a set this small')
    assert 'training accuracy near 1' in text and 'cpu_quickstart (0.56M parameters)' in text
    assert text.endswith(', or --pretrained_path')
    assert not training_setup.size_warning(139_586_066, 420, pretrained=True).endswith('--pretrained_path')
    assert training_setup.size_warning(556_690, 420) is None  # the quick-start size
    assert training_setup.size_warning(139_586_066, 5_000) is None  # enough photos
    assert training_setup.size_warning(10_000_001, 1_999) is not None


def test_size_warning_is_logged_a_failed_ood_fit_keeps_the_model_and_a_resume_completes_it(
        synthetic_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(training_setup, 'LARGE_MODEL_PARAMETERS', 1_000)  # the tiny network counts as large

    def singular(*args, **kwargs):
        raise np.linalg.LinAlgError('Singular matrix')

    real_fit = ood.fit_ood
    monkeypatch.setattr(ood, 'fit_ood', singular)
    flags = ('--epochs', '1', '--augmentation', 'none')
    results = train.main(run_args(synthetic_dataset, tmp_path, *flags))
    out = capsys.readouterr().out
    assert out.count('parameters per photo') == 1
    history = json.loads((tmp_path / 'l' / 'training_history.json').read_text())
    assert len(history['warnings']) == 1 and 'training photos: about' in history['warnings'][0]
    assert results['warnings'] == history['warnings']

    best_path = tmp_path / 'c' / 'best_model.pth'
    assert (f'out-of-distribution statistics not stored in {best_path}: LinAlgError: Singular matrix') in out
    assert 'ood' not in torch.load(best_path, weights_only=True) and results['ood'] is None
    assert results['test_metrics'] is not None and checkpoints.load_trained(best_path).checkpoint['epoch'] == 1

    # resuming the finished run completes its closing steps without training again; then it is refused
    monkeypatch.setattr(ood, 'fit_ood', real_fit)
    last = tmp_path / 'c' / 'last.pth'
    finished = train.main(run_args(synthetic_dataset, tmp_path, *flags, '--resume', str(last)))
    assert finished['epochs_run'] == 0 and finished['run_id'] == results['run_id']
    assert finished['ood'] == ood.describe_threshold(torch.load(best_path, weights_only=True)['ood'])
    assert finished['test_metrics'] == results['test_metrics'] and finished['history'] == results['history']
    with pytest.raises(UserError, match='already trained 1 epochs'):
        train.main(run_args(synthetic_dataset, tmp_path, *flags, '--resume', str(last)))


def test_a_small_network_gets_no_warning(tiny_checkpoint):
    history = json.loads((tiny_checkpoint.log_dir / 'training_history.json').read_text())
    assert history['warnings'] == [] and tiny_checkpoint.results['warnings'] == []
    assert ood.check_stats(torch.load(tiny_checkpoint.path, weights_only=True)['ood']) is not None
