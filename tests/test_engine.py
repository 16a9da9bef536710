"""engine.py: one epoch, prediction and metrics, best-epoch tracking, logs, the epoch loop and the CV reports, on
in-memory tensors (no photos, no landmarks)."""
import argparse
import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import Model
import engine
import losses
import utils

TINY = dict(image_size=28, patch_size=7, num_classes=3, dim=16, heads=1, num_hierarchies=2, block_repeats=[1, 1])


def separable_data(n: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose class is written into the first channel: a tiny HTNet learns them in a few epochs."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = torch.randn(n, 3, 28, 28, generator=generator) * 0.3
    images[:, 0] += labels[:, None, None].float() - 1
    return images, labels


def make_context(model: torch.nn.Module, lr: float = 5e-3) -> engine.TrainContext:
    autocast, scaler = utils.amp_context(torch.device('cpu'), None)
    return engine.TrainContext(model=model, criterion=torch.nn.CrossEntropyLoss(),
                               optimizer=torch.optim.AdamW(model.parameters(), lr=lr), device=torch.device('cpu'),
                               autocast=autocast, scaler=scaler)


def test_training_loop_learns_separable_in_memory_data():
    """train_one_epoch / evaluate on in-memory tensors whose class is written into the pixels."""
    torch.manual_seed(0)
    images, labels = separable_data()
    loader = DataLoader(TensorDataset(images, labels), batch_size=16, shuffle=True)
    model = Model.build_model(TINY)
    ctx = make_context(model)
    first = engine.train_one_epoch(ctx, loader, 1, 8)
    for epoch in range(2, 9):
        last = engine.train_one_epoch(ctx, loader, epoch, 8)
    assert last['loss'] < first['loss'] * 0.5
    metrics = engine.evaluate(model, DataLoader(TensorDataset(images, labels), batch_size=16), torch.device('cpu'),
                              ctx.autocast, 3)
    assert metrics['accuracy'] > 0.9 and metrics['n'] == 48 and metrics['loss'] > 0


def test_non_finite_loss_stops_with_advice():
    images, labels = separable_data(8)
    images[0, 0, 0, 0] = float('nan')
    ctx = make_context(Model.build_model(TINY))
    with pytest.raises(utils.UserError, match='lower --learning_rate'):
        engine.train_one_epoch(ctx, DataLoader(TensorDataset(images, labels), batch_size=8), 1, 1)


def test_cosine_schedule_warms_up_then_decays():
    factor = engine.cosine_with_warmup(total_steps=100, warmup_steps=10)
    warm = [factor(s) for s in range(10)]
    assert warm == sorted(warm) and warm[-1] == pytest.approx(1.0)
    decay = [factor(s) for s in range(10, 101)]
    assert decay == sorted(decay, reverse=True)
    assert decay[-1] == pytest.approx(0.01)


@pytest.mark.parametrize('name, values, best_epoch', [('macro_f1', [0.2, 0.5, 0.4], 2), ('mae', [1.0, 0.5, 0.7], 2),
                                                      ('qwk', [0.3, 0.3, 0.2], 1)])
def test_best_tracker_follows_the_direction_of_the_metric(name, values, best_epoch):
    best = engine.BestTracker(name)
    improved = [best.update(value, epoch) for epoch, value in enumerate(values, start=1)]
    assert best.epoch == best_epoch and best.value == values[best_epoch - 1]
    assert improved[0] and sum(improved) == (2 if best_epoch == 2 else 1)  # a tie is no improvement


def test_metrics_of_adds_loss_and_side_scores():
    out = {'true': np.array([0, 1, 2, 2]), 'pred': np.array([0, 1, 1, 2]), 'loss': 0.5,
           'side_true': np.array([0, 1, losses.SIDE_IGNORE_INDEX, 2]), 'side_pred': np.array([0, 0, 1, 2])}
    result = engine.metrics_of(out, 3)
    assert result['accuracy'] == pytest.approx(0.75) and result['loss'] == 0.5 and result['n'] == 4
    assert result['side_n'] == 3 and result['side_accuracy'] == pytest.approx(2 / 3)  # the unknown side is ignored
    assert np.asarray(result['side_confusion_matrix']).sum() == 3


def fit_args(tmp_path, **overrides) -> argparse.Namespace:
    values = dict(save_dir=str(tmp_path / 'ckpt'), log_dir=str(tmp_path / 'logs'), epochs=3, num_classes=3,
                  select_metric='macro_f1', save_interval=2, early_stopping=0, seed=0)
    values.update(overrides)
    return argparse.Namespace(**values)


def test_fit_selects_on_validation_and_writes_checkpoints_and_logs(tmp_path):
    torch.manual_seed(0)
    images, labels = separable_data()
    loaders = {'train': DataLoader(TensorDataset(images, labels), batch_size=16, shuffle=True),
               'val': DataLoader(TensorDataset(images[:24], labels[:24]), batch_size=16)}
    model = Model.build_model(TINY)
    ctx = make_context(model)
    args = fit_args(tmp_path)
    best, history = engine.BestTracker(args.select_metric), []

    def state(epoch, val_metrics):
        return {'model': model.state_dict(), 'epoch': epoch, 'best_epoch': best.epoch, 'val': val_metrics}

    outcome = engine.fit(ctx, loaders, args, 1, best, history, state)
    assert outcome['last_epoch'] == 3 and not outcome['interrupted'] and not outcome['stopped_early']
    assert [row['epoch'] for row in history] == [1, 2, 3] and sum(row['is_best'] for row in history) >= 1
    saved = {p.name for p in (tmp_path / 'ckpt').iterdir()}
    assert saved == {'best_model.pth', 'last.pth', 'epoch_2.pth'}
    best_file = torch.load(tmp_path / 'ckpt' / 'best_model.pth', weights_only=True)
    assert best_file['epoch'] == best.epoch == best_file['best_epoch']
    assert torch.load(tmp_path / 'ckpt' / 'last.pth', weights_only=True)['epoch'] == 3
    assert outcome['best_val_metrics']['macro_f1'] == pytest.approx(best.value)

    with open(tmp_path / 'logs' / 'summary.csv', newline='') as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r['epoch']) for r in rows] == [1, 2, 3]
    assert {'lr', 'train_loss', 'train_accuracy', 'val_loss', 'val_macro_f1', 'val_qwk', 'is_best'} <= set(rows[0])
    assert 'val_per_class_accuracy' not in rows[0]  # lists stay in the JSON history
    history_json = json.loads((tmp_path / 'logs' / 'training_history.json').read_text())
    assert history_json['best_epoch'] == best.epoch and len(history_json['val_f1']) == 3
    assert (tmp_path / 'logs' / 'training_curves.png').stat().st_size > 0


def test_fit_stops_early_when_validation_stalls(tmp_path):
    images, labels = separable_data(24)
    loaders = {'train': DataLoader(TensorDataset(images, labels), batch_size=24),
               'val': DataLoader(TensorDataset(images, labels), batch_size=24)}
    model = Model.build_model(TINY)
    ctx = make_context(model, lr=0.0)  # nothing changes, so validation never improves after epoch 1
    args = fit_args(tmp_path, epochs=10, early_stopping=2, save_interval=0)
    best = engine.BestTracker(args.select_metric)
    outcome = engine.fit(ctx, loaders, args, 1, best, [], lambda epoch, val: {'epoch': epoch})
    assert outcome['stopped_early'] and outcome['last_epoch'] == 3 and best.epoch == 1


def test_cv_reports_pool_folds_and_write_their_files(tmp_path):
    dataset = SimpleNamespace(paths=[f'p{i}.jpg' for i in range(6)], subjects=['a', 'a', 'b', 'b', 'c', 'c'])
    results = [engine.FoldResult(fold=k + 1, indices=[2 * k, 2 * k + 1], true=np.array([k, k]),
                                 pred=np.array([k, min(k + 1, 2)]), side_true=None, side_pred=None,
                                 summary={'n_heldout': 2, 'best_epoch': 1,
                                          'metrics': engine.metrics_of({'true': np.array([k, k]),
                                                                        'pred': np.array([k, min(k + 1, 2)]),
                                                                        'loss': 0.0}, 3)})
               for k in range(3)]
    mean, std = engine.fold_statistics(results)
    assert mean['accuracy'] == pytest.approx((0.5 + 0.5 + 1.0) / 3) and std['accuracy'] > 0
    args = argparse.Namespace(cv=3, num_classes=3, multitask=False, seed=0, select_metric='macro_f1',
                              val_fraction=0.15)
    summary = engine.summarise_cv(results, dataset, {'a': 1, 'b': 2, 'c': 3}, 3, 6, False, args, tmp_path,
                                  ['HB I', 'HB II', 'HB III'], 'argmax')
    assert summary['pooled']['metrics']['n'] == 6 and not summary['partial']
    assert summary['pooled']['metrics']['accuracy'] == pytest.approx(4 / 6)
    with open(tmp_path / 'cv_predictions.csv', newline='') as handle:
        rows = list(csv.DictReader(handle))
    assert [r['subject'] for r in rows] == ['a', 'a', 'b', 'b', 'c', 'c'] and rows[1]['predicted'] == '1'
    assert json.loads((tmp_path / 'cv_summary.json').read_text())['folds_run'] == 3
    assert (tmp_path / 'cv_folds.png').stat().st_size > 0


def test_each_epoch_is_seeded_from_the_seed_and_the_epoch_alone():
    images, labels = separable_data(16)
    loader = DataLoader(TensorDataset(images, labels), batch_size=4, shuffle=True,
                        generator=torch.Generator().manual_seed(0))

    def epoch_draws(*keys):
        engine.seed_epoch(loader, *keys)
        return [batch[1].tolist() for batch in loader], float(np.random.rand()), float(torch.rand(()))

    first = epoch_draws(7, 3)
    torch.rand(100), np.random.rand(100)  # whatever ran before the epoch
    assert epoch_draws(7, 3) == first
    assert epoch_draws(7, 4) != first and epoch_draws(8, 3) != first
    assert engine.epoch_seed(7, 3) != engine.epoch_seed(3, 7)


def test_an_interrupted_epoch_leaves_last_pth_at_the_completed_one(tmp_path, capsys):
    torch.manual_seed(0)
    images, labels = separable_data()
    loaders = {'train': DataLoader(TensorDataset(images, labels), batch_size=16, shuffle=True,
                                   generator=torch.Generator()),
               'val': DataLoader(TensorDataset(images[:24], labels[:24]), batch_size=16)}
    model = Model.build_model(TINY)
    ctx = make_context(model)
    real, calls, saved = engine.training_loss, [], []

    def ctrl_c_in_epoch_2(*args):
        calls.append(1)
        if len(calls) == 5:  # 3 steps per epoch: the second step of epoch 2
            raise KeyboardInterrupt
        return real(*args)

    args = fit_args(tmp_path, save_interval=0)
    best, history = engine.BestTracker(args.select_metric), []
    engine.training_loss = ctrl_c_in_epoch_2
    try:
        outcome = engine.fit(ctx, loaders, args, 1, best, history,
                             lambda epoch, val: {'model': {k: v.clone() for k, v in model.state_dict().items()},
                                                 'epoch': epoch}, on_saved=saved.append)
    finally:
        engine.training_loss = real
    assert outcome['interrupted'] and outcome['last_epoch'] == 1 and saved == [1]
    assert [row['epoch'] for row in history] == [1] and best.epoch == 1
    last = torch.load(tmp_path / 'ckpt' / 'last.pth', weights_only=True)
    assert last['epoch'] == 1
    assert not all(torch.equal(last['model'][k], v) for k, v in model.state_dict().items())  # not mid-epoch weights
    assert 'holds epoch 1, the last completed one' in capsys.readouterr().out


def test_weight_average_follows_every_optimiser_step_and_is_what_validation_reads(tmp_path):
    torch.manual_seed(0)
    images, labels = separable_data()
    loader = DataLoader(TensorDataset(images, labels), batch_size=16)  # 3 steps
    model = Model.build_model(TINY)
    ctx = make_context(model)
    ctx.ema = engine.ModelEma(model, decay=0.5)
    raw = []  # the weights after each optimiser step, recorded apart from the average
    ctx.optimizer.register_step_post_hook(
        lambda *_: raw.append({k: v.detach().clone() for k, v in model.state_dict().items()}))
    engine.train_one_epoch(ctx, loader, 1, 1)
    assert len(raw) == 3 and int(ctx.ema.n_averaged) == 3
    expected = raw[0]  # the first step copies the weights, each later one moves halfway towards them
    for weights in raw[1:]:
        expected = {k: 0.5 * expected[k] + 0.5 * weights[k] for k in expected}
    torch.testing.assert_close(ctx.ema.module.state_dict(), expected)
    assert not torch.equal(ctx.ema.module.mlp_head[-1].weight, model.mlp_head[-1].weight)
    assert ctx.eval_model is ctx.ema.module and make_context(model).eval_model is model


def test_subject_metrics_grade_each_patient_from_the_mean_of_its_photos():
    # subject a: photos read 0 and 1, their mean reads 1 (its true grade); subject b: one photo of grade 2
    out = {'true': np.array([1, 1, 2]), 'pred': np.array([0, 1, 2]), 'loss': 0.3,
           'probabilities': np.array([[0.6, 0.4, 0.0], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])}
    result = engine.metrics_of(out, 3, subjects=['a', 'a', 'b'])
    assert result['accuracy'] == pytest.approx(2 / 3) and result['subject_accuracy'] == 1.0
    assert result['subject_n'] == 2 and result['subject_mae'] == 0.0
    assert 'subject_accuracy' not in engine.metrics_of(out, 3)
    row = engine.history_row(1, 1e-3, {'loss': 1.0, 'accuracy': 0.5}, result, 1.0, True)
    assert row['val_subject_macro_f1'] == result['subject_macro_f1'] and row['val_accuracy'] == result['accuracy']
    # the ordinal rule reads the mean distribution by its median, not its mode
    skewed = {**out, 'probabilities': np.array([[0.45, 0.0, 0.55], [0.45, 0.0, 0.55], [0.1, 0.1, 0.8]])}
    assert engine.subject_metrics(skewed, ['a', 'a', 'b'], 3, 'argmax')['accuracy'] == 0.5
    assert engine.subject_metrics(skewed, ['a', 'a', 'b'], 3, 'ordinal_median')['mae'] == 0.5
