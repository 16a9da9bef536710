"""train_facial_palsy.py: a real two-epoch run on synthetic faces, resume, checkpoints, logs, refusals and parts."""
import csv
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import Model
import annotations
import checkpoints
import engine
import facial_palsy_dataset as fpd
import losses
import train_facial_palsy as train
import training_setup
import utils
from metrics import METRIC_NAMES, compute_metrics
from utils import UserError

CONTRACT_KEYS = {'model', 'optimizer', 'scheduler', 'epoch', 'best_metric', 'select_metric', 'model_args',
                 'preprocess', 'class_names', 'args'}


def run_args(data, save_dir, log_dir, *extra):
    """The flags of the shared ``tiny_checkpoint`` run (cross-entropy, no mirroring), so its last.pth resumes."""
    return ['--data_root', str(data.root), '--train_csv', str(data.csv), '--val_csv', str(data.csv),
            '--cache_dir', str(data.cache_dir), '--save_dir', str(save_dir), '--log_dir', str(log_dir),
            '--device', 'cpu', '--batch_size', '8', '--learning_rate', '2e-3', '--augmentation', 'none',
            '--loss', 'ce', '--no-flip_swap_side', *data.tiny_flags, *extra]


def _read_rows(path):
    with open(path, newline='') as handle:
        return list(csv.DictReader(handle))


def read_summary(path):
    with open(path, newline='') as handle:
        return list(csv.DictReader(handle))


# the whole loop on generated faces

@pytest.fixture(scope='module')
def two_epoch_run(tiny_checkpoint):
    """conftest's session checkpoint: 2 epochs through ``main([...])`` with --test_csv and --save_interval 1."""
    return tiny_checkpoint.results, tiny_checkpoint.save_dir, tiny_checkpoint.log_dir


def test_two_epochs_write_checkpoints_and_logs(two_epoch_run, synthetic_dataset):
    results, save_dir, log_dir = two_epoch_run
    assert results['last_epoch'] == 2 and results['epochs_run'] == 2 and not results['interrupted']
    history = results['history']
    assert [row['epoch'] for row in history] == [1, 2]
    for row in history:
        assert math.isfinite(row['train_loss']) and math.isfinite(row['val_loss'])
        assert 0 <= row['val_accuracy'] <= 1 and -1 <= row['val_qwk'] <= 1

    # the best epoch is the first one with the highest validation macro F1, whatever the test split says
    val_f1 = [row['val_macro_f1'] for row in history]
    assert results['best_epoch'] == 1 + int(np.argmax(val_f1))
    assert results['best_metric'] == pytest.approx(max(val_f1))

    for name in ('best_model.pth', 'last.pth'):
        checkpoint = torch.load(save_dir / name, weights_only=True)
        assert CONTRACT_KEYS <= set(checkpoint), name
        assert checkpoint['run_id'] == results['run_id']
    for epoch in (1, 2):  # progress marks: weights and what grading needs, no optimizer state
        mark = torch.load(save_dir / f'epoch_{epoch}.pth', weights_only=True)
        assert set(mark) == {'model', 'model_args', 'preprocess', 'class_names', 'prediction', 'epoch', 'run_id',
                             'select_metric'}
        assert mark['epoch'] == epoch and mark['run_id'] == results['run_id']
        assert checkpoints.load_trained(save_dir / f'epoch_{epoch}.pth').num_classes == 6
    assert (save_dir / 'epoch_2.pth').stat().st_size * 2 < (save_dir / 'last.pth').stat().st_size
    last = torch.load(save_dir / 'last.pth', weights_only=True)
    best = torch.load(save_dir / 'best_model.pth', weights_only=True)
    assert last['epoch'] == 2 and best['epoch'] == results['best_epoch']
    assert best['select_metric'] == 'macro_f1' and best['best_metric'] == pytest.approx(results['best_metric'])
    assert best['model_args']['image_size'] == 56 and best['model_args']['dim'] == 16
    assert best['preprocess']['input_size'] == 56 and best['preprocess']['input_mode'] == 'regions'
    assert best['class_names'] == annotations.grade_names(6) and best['model_args']['num_classes'] == 6
    assert 'num_classes' not in best  # stored once, in model_args
    assert best['args']['epochs'] == 2 and best['scheduler'] is not None

    rows = read_summary(log_dir / 'summary.csv')
    assert [int(r['epoch']) for r in rows] == [1, 2]
    assert {'lr', 'train_loss', 'val_loss', *(f'val_{m}' for m in METRIC_NAMES)} <= set(rows[0])
    history_json = json.loads((log_dir / 'training_history.json').read_text())
    assert len(history_json['train_loss']) == len(history_json['val_f1']) == 2
    assert history_json['best_epoch'] == results['best_epoch'] and history_json['run_id'] == results['run_id']
    assert yaml.safe_load((log_dir / 'args.yaml').read_text())['dim'] == 16
    assert (log_dir / 'training_curves.png').read_bytes()[:4] == b'\x89PNG'


def test_test_split_is_scored_once_with_the_best_checkpoint(two_epoch_run, synthetic_dataset):
    results, save_dir, log_dir = two_epoch_run
    saved = json.loads((log_dir / 'test_metrics.json').read_text())
    assert saved['split'] == 'test' and saved['epoch'] == results['best_epoch']
    assert saved['metrics']['n'] == results['splits']['test']['images'] > 0
    assert results['test_metrics']['macro_f1'] == pytest.approx(saved['metrics']['macro_f1'])

    # evaluate and predict again from the file alone: same predictions, same numbers
    trained = checkpoints.load_trained(save_dir / 'best_model.pth', 'cpu')
    model, pre = trained.model, trained.preprocess
    test_set = fpd.FacialPalsyDataset(synthetic_dataset.root, synthetic_dataset.csv, split='test', preprocess=pre,
                                      cache_dir=synthetic_dataset.cache_dir, verbose=False)
    with torch.no_grad():
        logits = model(torch.stack([test_set[i][0] for i in range(len(test_set))]))
    again = compute_metrics(test_set.labels, losses.decode_grades(logits, trained.prediction).tolist(), 6)
    assert again['confusion_matrix'] == saved['metrics']['confusion_matrix']

    sample = test_set.get_sample(0)
    photo = fpd.load_image(sample['path'])
    x = fpd.make_input(photo, sample['landmarks'], pre, box=sample['box'])
    with torch.no_grad():
        probabilities = model(x[None]).softmax(-1)[0]
    assert probabilities.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert probabilities.argmax().item() == logits[0].argmax().item()


def test_resume_continues_at_the_next_epoch(two_epoch_run, synthetic_dataset, tmp_path):
    _results, save_dir, log_dir = two_epoch_run
    before = torch.load(save_dir / 'last.pth', weights_only=True)
    # resume into copies so the other tests keep their files
    resumed_dir, resumed_logs = tmp_path / 'checkpoints', tmp_path / 'logs'
    results = train.main(run_args(synthetic_dataset, resumed_dir, resumed_logs, '--epochs', '3',
                                  '--resume', str(save_dir / 'last.pth')))
    assert results['epochs_run'] == 1 and results['last_epoch'] == 3
    assert [row['epoch'] for row in results['history']] == [1, 2, 3]
    assert [int(r['epoch']) for r in read_summary(resumed_logs / 'summary.csv')] == [1, 2, 3]
    after = torch.load(resumed_dir / 'last.pth', weights_only=True)
    assert after['epoch'] == 3
    steps = lambda ckpt: int(next(iter(ckpt['optimizer']['state'].values()))['step'])  # noqa: E731
    steps_per_epoch = steps(before) // 2
    assert steps(after) == 3 * steps_per_epoch  # Adam moments and step count carried over, not restarted
    assert after['scheduler'] is not None
    # the best epoch so far came along, so the new folder's best_model.pth is this run's best in any case
    best = torch.load(resumed_dir / 'best_model.pth', weights_only=True)
    assert best['epoch'] == results['best_epoch'] and best['run_id'] == before['run_id'] == results['run_id']


def test_resume_refuses_another_network_before_reading_photos(two_epoch_run, synthetic_dataset, tmp_path):
    _results, save_dir, _log_dir = two_epoch_run
    argv = run_args(synthetic_dataset, tmp_path / 'c', tmp_path / 'l', '--epochs', '5',
                    '--resume', str(save_dir / 'last.pth'), '--dim', '32')
    with pytest.raises(UserError, match='dim 16 in the checkpoint vs 32 now'):
        train.main(argv)
    argv = run_args(synthetic_dataset, tmp_path / 'c', tmp_path / 'l', '--epochs', '2',
                    '--resume', str(save_dir / 'last.pth'))
    with pytest.raises(UserError, match='already trained 2 epochs'):
        train.main(argv)


def test_command_line_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        utils.run_cli(train.main, ['--data_root', str(tmp_path / 'missing')])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and 'missing: folder not found' in err


def test_interrupt_keeps_the_last_completed_epoch(synthetic_dataset, tmp_path, monkeypatch, capsys):
    calls = []
    real = engine.train_one_epoch

    def interrupted_on_second_epoch(ctx, loader, epoch, epochs):
        calls.append(epoch)
        if epoch == 2:
            raise KeyboardInterrupt
        return real(ctx, loader, epoch, epochs)

    monkeypatch.setattr(engine, 'train_one_epoch', interrupted_on_second_epoch)
    results = train.main(run_args(synthetic_dataset, tmp_path / 'c', tmp_path / 'l', '--epochs', '4',
                                  '--test_csv', str(synthetic_dataset.csv)))
    assert calls == [1, 2] and results['interrupted'] and results['last_epoch'] == 1
    assert results['test_metrics'] is None  # an interrupted run is not scored on test
    last = torch.load(tmp_path / 'c' / 'last.pth', weights_only=True)
    assert last['epoch'] == 1 and len(last['history']) == 1
    assert (f'interrupted during epoch 2: {tmp_path / "c" / "last.pth"} holds epoch 1, the last completed one; '
            f'continue with --resume {tmp_path / "c" / "last.pth"}') in capsys.readouterr().out


def test_folder_layout_with_carved_validation_and_options(synthetic_dataset, tmp_path):
    """No CSV: grade folders, validation subjects held out by --val_fraction; the optional features run."""
    argv = ['--data_root', str(synthetic_dataset.root), '--val_fraction', '0.3', '--cache_dir',
            str(synthetic_dataset.cache_dir), '--save_dir', str(tmp_path / 'c'), '--log_dir', str(tmp_path / 'l'),
            '--device', 'cpu', '--epochs', '2', '--batch_size', '8', '--num_classes', '3', '--class_weights',
            '--scheduler', 'cosine', '--warmup_epochs', '1', '--mixup', '0.4', '--label_smoothing', '0.1',
            '--augmentation', 'standard', '--select_metric', 'mae', '--save_interval', '0',
            *synthetic_dataset.tiny_flags]
    results = train.main(argv)
    splits = results['splits']
    assert splits['train']['subjects'] + splits['val']['subjects'] == synthetic_dataset.num_subjects
    assert len(splits['train']['grade_counts']) == 3
    maes = [row['val_mae'] for row in results['history']]
    assert results['best_epoch'] == 1 + int(np.argmin(maes))  # lower is better for mae
    assert not list((tmp_path / 'c').glob('epoch_*.pth'))
    lrs = [row['lr'] for row in results['history']]
    assert lrs[0] < lrs[1] or lrs[0] == pytest.approx(lrs[1])  # warm-up first


# refusals that keep results honest

def _rewrite_csv(source, target, change):
    table = pd.read_csv(source)
    change(table)
    table.to_csv(target, index=False)
    return target


def test_subject_in_two_splits_is_refused(synthetic_dataset, tmp_path):
    def leak(table):
        val_subject = table.loc[table['split'] == 'val', 'subject'].iloc[0]
        first_row = table.index[table['subject'] == val_subject][0]
        table.loc[first_row, 'split'] = 'train'
    leaky = _rewrite_csv(synthetic_dataset.csv, tmp_path / 'leaky.csv', leak)
    argv = run_args(synthetic_dataset, tmp_path / 'c', tmp_path / 'l', '--epochs', '1')
    argv[argv.index('--train_csv') + 1] = argv[argv.index('--val_csv') + 1] = str(leaky)
    with pytest.raises(UserError, match='appear in both train and val'):
        train.main(argv)


def test_missing_validation_rows_hold_out_training_subjects(synthetic_dataset, tmp_path, capsys):
    no_val = _rewrite_csv(synthetic_dataset.csv, tmp_path / 'no_val.csv',
                          lambda t: t.__setitem__('split', t['split'].replace('val', 'train')))
    argv = run_args(synthetic_dataset, tmp_path / 'c', tmp_path / 'l', '--epochs', '1')
    argv[argv.index('--train_csv') + 1] = argv[argv.index('--val_csv') + 1] = str(no_val)
    results = train.main(argv)
    assert 'no split=val rows' in capsys.readouterr().out
    splits = results['splits']
    assert splits['val']['subjects'] >= 1 and splits['train']['subjects'] >= 1
    total = splits['train']['subjects'] + splits['val']['subjects']
    assert total == len({row['subject'] for row in _read_rows(no_val) if row['split'] in ('train', 'val')})


@pytest.mark.parametrize('flags, message', [
    (['--patch_size', '5'], 'does not divide'),
    (['--patch_size', '28', '--num_hierarchies', '3'], 'cannot be split into 4x4 blocks'),
    (['--block_repeats', '1', '1'], 'takes 1 or --num_hierarchies'),
    (['--epochs', '0'], 'at least 1'),
    (['--val_fraction', '1.5'], 'between 0 and 1'),
])
def test_bad_settings_are_one_line_errors(synthetic_dataset, tmp_path, flags, message):
    with pytest.raises(UserError, match=message):
        train.main(run_args(synthetic_dataset, tmp_path / 'c', tmp_path / 'l', '--epochs', '1', *flags))


# flags and configuration

def test_seed_usage_example_flags_parse():
    args = train.parse_args([
        '--data_root', '.', '--train_csv', __file__, '--val_csv', __file__, '--dataset_type', 'FNP',
        '--num_classes', '6', '--image_size', '224', '--patch_size', '7', '--dim', '256', '--heads', '3',
        '--num_hierarchies', '3', '--block_repeats', '2', '2', '10', '--batch_size', '32', '--epochs', '100',
        '--learning_rate', '0.00005', '--weight_decay', '0.01', '--num_workers', '0', '--pretrained_path', __file__,
        '--save_dir', 'c', '--log_dir', 'l', '--save_interval', '10', '--amp'])
    assert args.block_repeats == [2, 2, 10] and args.learning_rate == 5e-5 and args.amp == 'bf16'
    assert train.model_args_for(args, 56)['image_size'] == 56  # --image_size 224 builds a 56x56 HTNet
    assert train.parse_args(['--data_root', '.', '--dataset_type', 'ckplus']).dataset_type == 'CK+'


def test_config_profile_sets_defaults_and_flags_win(tmp_path):
    config = tmp_path / 'config.yaml'
    config.write_text(yaml.safe_dump({
        'small': {'dim': 32, 'heads': 2, 'block_repeats': [1, 1, 2], 'epochs': 20, 'scheduler': 'cosine'},
        'large': {'dim': 512}}))
    args = train.parse_args(['--config', str(config), '--profile', 'small', '--data_root', '.', '--epochs', '3'])
    assert (args.dim, args.heads, args.block_repeats, args.scheduler) == (32, 2, [1, 1, 2], 'cosine')
    assert args.epochs == 3


# parts

def test_class_weights_are_inverse_frequency():
    weights = training_setup.class_weights_for([0, 0, 0, 1, 2, 2], 4)
    # n / (present classes * count): 6/(3*3), 6/(3*1), 6/(3*2); an absent grade keeps weight 1
    assert weights.tolist() == pytest.approx([2 / 3, 2.0, 1.0, 1.0])


def test_pretrained_micro_expression_weights_transfer(tmp_path):
    # a main_HTNet.py weight file: plain state_dict of a 3-class 28x28 HTNet
    source = Model.build_model(dict(image_size=28, patch_size=7, num_classes=3, dim=16, heads=1,
                                    num_hierarchies=3, block_repeats=[1, 1, 1]))
    torch.save(source.state_dict(), tmp_path / 'sub01.pth')
    target = Model.build_model(dict(image_size=56, patch_size=7, num_classes=6, dim=16, heads=1,
                                    num_hierarchies=3, block_repeats=[1, 1, 1]))
    report = training_setup.load_pretrained_weights(target, str(tmp_path / 'sub01.pth'), 'interpolate')
    assert 'to_patch_embedding.1.weight' in report['loaded']
    assert torch.equal(target.state_dict()['to_patch_embedding.1.weight'],
                       source.state_dict()['to_patch_embedding.1.weight'])
    assert 'mlp_head.2.weight' in dict(report['skipped'])  # 3 emotions -> 6 grades: the head starts fresh
    assert report['interpolated']

    other = Model.build_model(dict(image_size=56, patch_size=7, num_classes=6, dim=24, heads=1,
                                   num_hierarchies=3, block_repeats=[1, 1, 1]))
    with pytest.raises(UserError, match='no tensor fits'):
        training_setup.load_pretrained_weights(other, str(tmp_path / 'sub01.pth'), 'interpolate')
    (tmp_path / 'broken.pth').write_bytes(b'not a checkpoint')
    with pytest.raises(UserError, match='broken.pth'):
        training_setup.load_pretrained_weights(target, str(tmp_path / 'broken.pth'), 'interpolate')


def test_the_batch_is_per_process_and_the_global_batch_is_logged(two_epoch_run):
    _results, _save_dir, log_dir = two_epoch_run
    history = json.loads((log_dir / 'training_history.json').read_text())
    assert history['batch'] == {'per_process': 8, 'processes': 1, 'global': 8}  # one process: the same number
    assert train.batch_sizes(32, 4) == {'per_process': 32, 'processes': 4, 'global': 128}
    batch_help = next(a.help for a in train.get_args_parser()._actions if a.dest == 'batch_size')
    assert 'of each process' in batch_help and 'global batch' in batch_help
