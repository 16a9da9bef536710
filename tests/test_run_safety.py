"""train_facial_palsy.py never loses work: a run stopped by Ctrl-C or SIGKILL and resumed ends with the numbers of
the uninterrupted run; a run never writes into a folder holding another run; --overwrite replaces an earlier run
only once the new run's first checkpoint is written; an earlier run is otherwise moved aside; the output folders
are checked before any slow work; every bad value is one line; quick_start.sh replaces only what it made."""
from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import Model
import checkpoints
import run_folders
import engine
import train_facial_palsy as train
import training_data
import training_setup
import utils
from utils import UserError

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 4
# every source of randomness in a training epoch: shuffling, photo augmentation, MixUp, the side-swapping mirror
# and dropout; plateau halving with no patience makes the scheduler's state matter too
RANDOM_FLAGS = ('--augmentation', 'standard', '--mixup', '0.4', '--flip_swap_side', '--multitask', '--dropout', '0.1',
                '--lr_patience', '0')


def run_args(data, save_dir, log_dir, *extra):
    return ['--data_root', str(data.root), '--train_csv', str(data.csv), '--val_csv', str(data.csv),
            '--test_csv', str(data.csv), '--cache_dir', str(data.cache_dir), '--save_dir', str(save_dir),
            '--log_dir', str(log_dir), '--device', 'cpu', '--batch_size', '8', '--learning_rate', '2e-3',
            '--threads', '1', '--seed', '3', *data.tiny_flags, *extra]


# the training settings of the shared tiny_checkpoint run, which a resume of it must repeat
AS_TINY = ('--loss', 'ce', '--no-flip_swap_side', '--augmentation', 'none')


def exact_args(data, folder, *extra):
    return run_args(data, folder / 'c', folder / 'l', '--epochs', str(EPOCHS), '--save_interval', '1',
                    *RANDOM_FLAGS, *extra)


def epoch_numbers(history):
    """Every per-epoch number except the wall-clock time."""
    return [{k: v for k, v in row.items() if k != 'epoch_time_s'} for row in history]


def summary_rows(log_dir):
    with open(log_dir / 'summary.csv', newline='') as handle:
        return [{k: v for k, v in row.items() if k != 'epoch_time_s'} for row in csv.DictReader(handle)]


def same_weights(path_a, path_b):
    a, b = (torch.load(p, weights_only=True)['model'] for p in (path_a, path_b))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def assert_same_run_numbers(results, reference):
    assert epoch_numbers(results['history']) == epoch_numbers(reference['history'])
    assert (results['best_epoch'], results['best_metric']) == (reference['best_epoch'], reference['best_metric'])
    assert results['test_metrics'] == reference['test_metrics']
    assert results['best_val_metrics'] == reference['best_val_metrics']


@pytest.fixture(scope='module')
def reference_run(synthetic_dataset, tmp_path_factory):
    """The uninterrupted run the interrupted ones must repeat."""
    folder = tmp_path_factory.mktemp('uninterrupted')
    results = train.main(exact_args(synthetic_dataset, folder))
    assert not results['interrupted'] and results['last_epoch'] == EPOCHS
    return results, folder


@pytest.fixture
def earlier_run(reference_run, tmp_path, tree_hashes):
    """A copy of the reference run's folders (plus a user's own file among them) and their hashes."""
    _, folder = reference_run
    for name in ('c', 'l'):
        shutil.copytree(folder / name, tmp_path / name)
    (tmp_path / 'c' / 'notes.txt').write_text('my notes')
    return {name: tree_hashes(tmp_path / name) for name in ('c', 'l')}


def unchanged(tmp_path, before, tree_hashes):
    return {name: tree_hashes(tmp_path / name) for name in ('c', 'l')} == before


def no_slow_work(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError('photos were read before the refusal')
    monkeypatch.setattr(training_data, 'build_datasets', refuse)
    monkeypatch.setattr(training_data, 'build_cv_pool', refuse)


# exact resume

def test_ctrl_c_mid_epoch_then_resume_repeats_the_uninterrupted_run(reference_run, synthetic_dataset, tmp_path,
                                                                    monkeypatch, capsys):
    reference, ref_folder = reference_run
    steps, real = [], engine.training_loss

    def ctrl_c_in_epoch_3(*args, **kwargs):  # 2 steps per epoch: the 6th is the last step of epoch 3
        steps.append(1)
        if len(steps) == 6:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, 'training_loss', ctrl_c_in_epoch_3)
    stopped = train.main(exact_args(synthetic_dataset, tmp_path))
    monkeypatch.setattr(engine, 'training_loss', real)
    last = tmp_path / 'c' / 'last.pth'
    assert stopped['interrupted'] and stopped['last_epoch'] == 2 and stopped['test_metrics'] is None
    assert (f'interrupted during epoch 3: {last} holds epoch 2, the last completed one; continue with '
            f'--resume {last}') in capsys.readouterr().out
    # the weights of the completed epoch 2, not the half-trained epoch 3
    assert torch.load(last, weights_only=True)['epoch'] == 2
    assert same_weights(last, ref_folder / 'c' / 'epoch_2.pth')
    assert [int(row['epoch']) for row in summary_rows(tmp_path / 'l')] == [1, 2]

    resumed = train.main(exact_args(synthetic_dataset, tmp_path, '--resume', str(last)))
    assert resumed['epochs_run'] == EPOCHS - 2 and resumed['run_id'] == stopped['run_id']
    assert_same_run_numbers(resumed, reference)
    assert summary_rows(tmp_path / 'l') == summary_rows(ref_folder / 'l')
    assert same_weights(tmp_path / 'c' / 'best_model.pth', ref_folder / 'c' / 'best_model.pth')
    assert same_weights(last, ref_folder / 'c' / 'last.pth')


@pytest.fixture(scope='module')
def reference_ema_run(synthetic_dataset, tmp_path_factory):
    """The uninterrupted run with a moving average of the weights."""
    folder = tmp_path_factory.mktemp('uninterrupted_ema')
    results = train.main(exact_args(synthetic_dataset, folder, '--ema', '0.7'))
    assert not results['interrupted'] and results['last_epoch'] == EPOCHS
    return results, folder


def test_ctrl_c_then_resume_with_ema_repeats_the_uninterrupted_run(reference_ema_run, synthetic_dataset, tmp_path,
                                                                   monkeypatch):
    reference, ref_folder = reference_ema_run
    steps, real = [], engine.training_loss

    def ctrl_c_in_epoch_3(*args, **kwargs):
        steps.append(1)
        if len(steps) == 6:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, 'training_loss', ctrl_c_in_epoch_3)
    stopped = train.main(exact_args(synthetic_dataset, tmp_path, '--ema', '0.7'))
    monkeypatch.setattr(engine, 'training_loss', real)
    last = tmp_path / 'c' / 'last.pth'
    assert stopped['interrupted'] and stopped['last_epoch'] == 2
    saved = torch.load(last, weights_only=True)
    assert saved['ema']['updates'] == 4 and same_weights(last, ref_folder / 'c' / 'epoch_2.pth')
    with pytest.raises(UserError, match='trained with --ema 0.7, not --ema 0; resume with the same --ema'):
        train.main(exact_args(synthetic_dataset, tmp_path, '--resume', str(last)))

    resumed = train.main(exact_args(synthetic_dataset, tmp_path, '--ema', '0.7', '--resume', str(last)))
    assert_same_run_numbers(resumed, reference)
    assert summary_rows(tmp_path / 'l') == summary_rows(ref_folder / 'l')
    for name in ('best_model.pth', 'last.pth'):
        assert same_weights(tmp_path / 'c' / name, ref_folder / 'c' / name)
    ours, theirs = (torch.load(folder / 'c' / 'last.pth', weights_only=True)['ema']
                    for folder in (tmp_path, ref_folder))
    assert ours['updates'] == theirs['updates'] == 2 * EPOCHS
    raw = theirs['training_weights']
    assert all(torch.equal(ours['training_weights'][k], raw[k]) for k in raw)


SLOW_EPOCHS = '''
import sys, time
import engine
real = engine.train_one_epoch
def slowly(*args, **kwargs):  # time to kill the process between two epochs or inside one
    time.sleep(0.4)
    return real(*args, **kwargs)
engine.train_one_epoch = slowly
import train_facial_palsy, utils
utils.run_cli(train_facial_palsy.main, sys.argv[1:])
'''


def test_sigkill_then_resume_repeats_the_uninterrupted_run(reference_run, synthetic_dataset, tmp_path):
    reference, _ = reference_run
    last = tmp_path / 'c' / 'last.pth'
    process = subprocess.Popen([sys.executable, '-c', SLOW_EPOCHS, *exact_args(synthetic_dataset, tmp_path)],
                               cwd=ROOT, env={**os.environ, 'MPLBACKEND': 'Agg'}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not last.exists():  # last.pth appears only once an epoch is complete
            assert process.poll() is None and time.time() < deadline, 'the run ended before its first checkpoint'
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    killed_at = torch.load(last, weights_only=True)['epoch']
    assert 1 <= killed_at < EPOCHS
    resumed = train.main(exact_args(synthetic_dataset, tmp_path, '--resume', str(last)))
    assert resumed['epochs_run'] == EPOCHS - killed_at
    assert_same_run_numbers(resumed, reference)


def test_a_progress_mark_holds_weights_only_and_is_not_resumed(reference_run, synthetic_dataset, tmp_path):
    _, folder = reference_run
    mark = folder / 'c' / 'epoch_2.pth'
    assert 'optimizer' not in torch.load(mark, weights_only=True)
    assert checkpoints.load_trained(mark).checkpoint['epoch'] == 2
    with pytest.raises(UserError, match=f'{mark}: a progress mark of epoch 2 with the weights only'):
        train.main(exact_args(synthetic_dataset, tmp_path, '--resume', str(mark), '--epochs', '5'))


# one run per folder

def test_resume_refuses_a_folder_holding_another_run(tiny_checkpoint, earlier_run, synthetic_dataset, tmp_path,
                                                     monkeypatch, tree_hashes):
    no_slow_work(monkeypatch)
    other = tiny_checkpoint.save_dir / 'last.pth'
    theirs = torch.load(tmp_path / 'c' / 'last.pth', weights_only=True)['run_id']
    ours = torch.load(other, weights_only=True)['run_id']
    assert theirs != ours
    with pytest.raises(UserError) as error:
        train.main(run_args(synthetic_dataset, tmp_path / 'c', tmp_path / 'l', '--epochs', '3', *AS_TINY,
                            '--resume', str(other)))
    assert str(error.value) == (f'--save_dir {tmp_path / "c"} holds run {theirs}, not the one --resume {other} '
                                f'continues (run {ours}); resume into {other.parent} or an empty folder, or add '
                                f'--overwrite to replace that run')
    with pytest.raises(UserError, match=f'--log_dir {tmp_path / "l"} holds run {theirs}, not the one'):
        train.main(run_args(synthetic_dataset, tmp_path / 'empty', tmp_path / 'l', '--epochs', '3', *AS_TINY,
                            '--resume', str(other)))
    assert unchanged(tmp_path, earlier_run, tree_hashes)


def test_checkpoints_without_a_run_id_are_told_apart_by_their_folders(tiny_checkpoint, synthetic_dataset, tmp_path,
                                                                      monkeypatch, tree_hashes):
    for name in ('a', 'b'):  # two runs written by an earlier version: no run id anywhere
        shutil.copytree(tiny_checkpoint.save_dir, tmp_path / name / 'c')
        shutil.copytree(tiny_checkpoint.log_dir, tmp_path / name / 'l')
        for path in (tmp_path / name / 'c').glob('*.pth'):
            checkpoint = torch.load(path, weights_only=True)
            checkpoint.pop('run_id')
            checkpoint['args'] = {**(checkpoint.get('args') or {}), 'save_dir': str(tmp_path / name / 'c'),
                                  'log_dir': str(tmp_path / name / 'l')}
            torch.save(checkpoint, path)
        (tmp_path / name / 'l' / 'training_history.json').write_text('{}')
        (tmp_path / name / 'l' / 'test_metrics.json').write_text('{}')
    before = tree_hashes(tmp_path / 'b')
    with monkeypatch.context() as patch:
        no_slow_work(patch)
        with pytest.raises(UserError, match=f'--save_dir {tmp_path / "b" / "c"} holds files of another run, not '
                                            f'the one --resume {tmp_path / "a" / "c" / "last.pth"} continues '
                                            f'\\(a checkpoint without a run id\\)'):
            train.main(run_args(synthetic_dataset, tmp_path / 'b' / 'c', tmp_path / 'b' / 'l', '--epochs', '3',
                                *AS_TINY, '--resume', str(tmp_path / 'a' / 'c' / 'last.pth')))
    assert tree_hashes(tmp_path / 'b') == before
    # its own folders continue it
    resumed = train.main(run_args(synthetic_dataset, tmp_path / 'a' / 'c', tmp_path / 'a' / 'l', '--epochs', '3',
                                  '--augmentation', 'none', *AS_TINY,
                                  '--resume', str(tmp_path / 'a' / 'c' / 'last.pth')))
    assert resumed['last_epoch'] == 3 and not list(tmp_path.glob('a/*.previous-*'))


# --overwrite

@pytest.mark.parametrize('flags, message', [
    (['--patch_size', '5'], 'which --patch_size 5 does not divide'),
    (['--train_csv', 'missing.csv'], '--train_csv missing.csv: file not found'),
    (['--weight_decay', 'nan'], '--weight_decay must be a number of at least 0, got nan'),
    (['--resume', 'TINY', '--dim', '32', '--epochs', '9'], 'dim 16 in the checkpoint vs 32 now'),
    (['--config', 'CONFIG'], "epochs: 'two' is not a valid int"),
    (['--config', 'CONFIG', '--epochs', '2'], "epochs: 'two' is not a valid int"),
    (['--pretrained_path', 'PARTIAL'], r'tensors \(the heads aside\) fit'),
    (['--pretrained_path', 'EARLIER'], 'best_model.pth would be removed by --overwrite; copy it out of'),
])
def test_overwrite_checks_everything_before_touching_the_earlier_run(flags, message, earlier_run, tiny_checkpoint,
                                                                     synthetic_dataset, tmp_path, monkeypatch,
                                                                     tree_hashes):
    no_slow_work(monkeypatch)
    config = tmp_path / 'bad.yaml'
    config.write_text(yaml.safe_dump({'epochs': 'two'}))
    replace = {'TINY': str(tiny_checkpoint.save_dir / 'last.pth'), 'CONFIG': str(config),
               'PARTIAL': str(partial_weights(tmp_path / 'partial.pth')),
               'EARLIER': str(tmp_path / 'c' / 'best_model.pth')}
    flags = [replace.get(flag, flag) for flag in flags]
    with pytest.raises(UserError, match=message):
        train.main(run_args(synthetic_dataset, tmp_path / 'c', tmp_path / 'l', '--epochs', '1', '--overwrite',
                            *flags))
    assert unchanged(tmp_path, earlier_run, tree_hashes)


def test_overwrite_puts_the_earlier_run_back_when_the_new_one_stops_before_its_first_checkpoint(
        earlier_run, synthetic_dataset, tmp_path, monkeypatch, tree_hashes, capsys):
    seen = []

    def stopped_in_epoch_1(ctx, loader, epoch, epochs):
        seen.append(sorted(p.name for p in (tmp_path / 'c').glob('.overwritten-*/*')))
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, 'train_one_epoch', stopped_in_epoch_1)
    results = train.main(run_args(synthetic_dataset, tmp_path / 'c', tmp_path / 'l', '--epochs', '1',
                                  '--overwrite'))
    assert results['interrupted'] and 'last.pth' in seen[0]  # set aside, not deleted, while the epoch ran
    out = capsys.readouterr().out
    assert 'interrupted during epoch 1: no epoch completed, so nothing was saved; start the run again' in out
    moved = len(earlier_run['c']) - 1 + len(earlier_run['l'])  # the user's notes.txt never moves
    assert f"this run stopped before its first checkpoint: the earlier run's {moved} files are back in" in out
    assert unchanged(tmp_path, earlier_run, tree_hashes)

    def bad_photos(*args, **kwargs):
        raise UserError('the train split has no usable images')
    monkeypatch.setattr(training_data, 'build_datasets', bad_photos)
    with pytest.raises(UserError, match='no usable images'):
        train.main(run_args(synthetic_dataset, tmp_path / 'c', tmp_path / 'l', '--epochs', '1', '--overwrite'))
    assert unchanged(tmp_path, earlier_run, tree_hashes)


def test_overwrite_replaces_the_earlier_run_once_the_first_checkpoint_is_written(earlier_run, synthetic_dataset,
                                                                                  tmp_path, capsys):
    earlier_id = torch.load(tmp_path / 'c' / 'last.pth', weights_only=True)['run_id']
    results = train.main(run_args(synthetic_dataset, tmp_path / 'c', tmp_path / 'l', '--epochs', '1',
                                  '--overwrite', '--save_interval', '0'))
    assert results['run_id'] != earlier_id and 'removed the' in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / 'c').iterdir()) == ['best_model.pth', 'last.pth', 'notes.txt']
    assert not list(tmp_path.rglob('.overwritten-*')) and not list(tmp_path.glob('*.previous-*'))
    assert run_folders.run_ids_in(tmp_path / 'c', tmp_path / 'l') == {results['run_id']}


# no flag: the earlier run moves aside

def test_an_earlier_run_is_moved_aside_without_resume_or_overwrite(earlier_run, synthetic_dataset, tmp_path,
                                                                  tree_hashes, capsys):
    # starting from the earlier run's weights is fine: they are read before its files move
    results = train.main(run_args(synthetic_dataset, tmp_path / 'c', tmp_path / 'l', '--epochs', '1',
                                  '--pretrained_path', str(tmp_path / 'c' / 'best_model.pth')))
    out = capsys.readouterr().out
    [kept_c] = tmp_path.glob('c.previous-*')
    [kept_l] = tmp_path.glob('l.previous-*')
    assert f'{tmp_path / "c"} -> {kept_c}, {tmp_path / "l"} -> {kept_l}' in out
    assert tree_hashes(kept_c) == {k: v for k, v in earlier_run['c'].items() if k != 'notes.txt'}
    assert tree_hashes(kept_l) == earlier_run['l']
    assert (tmp_path / 'c' / 'notes.txt').read_text() == 'my notes'  # a user's own file stays where it was
    assert run_folders.run_ids_in(tmp_path / 'c', tmp_path / 'l') == {results['run_id']}


# room and permissions, before any slow work

def test_a_full_disk_is_one_line_before_any_slow_work(earlier_run, synthetic_dataset, tmp_path, monkeypatch,
                                                      tree_hashes, capsys):
    no_slow_work(monkeypatch)
    monkeypatch.setattr(utils.shutil, 'disk_usage', lambda path: shutil._ntuple_diskusage(10 ** 9, 10 ** 9, 1000))
    with pytest.raises(SystemExit) as exit_info:
        utils.run_cli(train.main, run_args(synthetic_dataset, tmp_path / 'c', tmp_path / 'l', '--epochs', '30'))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and '\n' not in err
    assert err.startswith(f'error: --save_dir {tmp_path / "c"}: 1 KB free on its disk, but this run needs about')
    assert unchanged(tmp_path, earlier_run, tree_hashes) and not list(tmp_path.glob('*.previous-*'))


def test_an_output_folder_that_cannot_be_made_is_one_line(synthetic_dataset, tmp_path, monkeypatch, capsys):
    no_slow_work(monkeypatch)
    (tmp_path / 'file').write_text('a file, not a folder')
    with pytest.raises(SystemExit) as exit_info:
        utils.run_cli(train.main, run_args(synthetic_dataset, tmp_path / 'file' / 'c', tmp_path / 'l', '--epochs',
                                           '1'))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and '\n' not in err
    assert err.startswith(f'error: --save_dir {tmp_path / "file" / "c"}: cannot create the folder')


def test_the_disk_a_run_takes_is_estimated_from_the_parameter_count():
    paper = Model.model_args_from(image_size=56, patch_size=7, num_classes=6, dim=256, heads=3, num_hierarchies=3,
                                  block_repeats=[2, 2, 10])
    parameters = 139_586_066
    total, text = run_folders.disk_estimate(paper, 1, 100, 10)
    assert total == 2 * 12 * parameters + 10 * 4 * parameters
    assert text == ('disk: about 8.9 GB of checkpoints (best_model.pth and last.pth of 1.7 GB each with the '
                    'optimizer state, 10 epoch_N.pth of 558.3 MB each, weights only)')
    resumed, _ = run_folders.disk_estimate(paper, 51, 100, 10)
    assert resumed == 2 * 12 * parameters + 5 * 4 * parameters
    assert run_folders.disk_estimate(paper, 1, 100, 0, runs=5)[0] == 5 * 2 * 12 * parameters
    with_ema, text = run_folders.disk_estimate(paper, 1, 100, 0, ema=True)  # the raw weights travel beside the EMA
    assert with_ema == 2 * 16 * parameters and 'EMA' in text


# one-line errors

def partial_weights(path):
    """A file that fits only the patch embedding of the tiny network."""
    model = Model.build_model(Model.model_args_from(image_size=56, patch_size=7, num_classes=6, dim=16, heads=1,
                                                    num_hierarchies=3, block_repeats=[1, 1, 1]))
    torch.save({k: v for k, v in model.state_dict().items() if k.startswith('to_patch_embedding')}, path)
    return path


def test_pretrained_weights_that_mostly_do_not_fit_are_refused_unless_allowed(tmp_path):
    path = partial_weights(tmp_path / 'partial.pth')
    model = Model.build_model(Model.model_args_from(image_size=56, patch_size=7, num_classes=6, dim=16, heads=1,
                                                    num_hierarchies=3, block_repeats=[1, 1, 1]))
    body = len([name for name in model.state_dict() if not name.startswith(('mlp_head.', 'side_head.'))])
    with pytest.raises(UserError) as error:
        training_setup.load_pretrained_weights(model, str(path), 'interpolate')
    assert str(error.value).startswith(f'{path}: only 2 of the network\'s {body} tensors (the heads aside) fit; '
                                       f'first mismatches: none in the file;')
    assert str(error.value).endswith('pass --allow_partial_pretrained to start from it anyway')
    report = training_setup.load_pretrained_weights(model, str(path), 'interpolate', allow_partial=True)
    assert len(report['loaded']) == 2


@pytest.mark.parametrize('flag, value', [
    ('--weight_decay', 'nan'), ('--dropout', 'nan'), ('--mixup', 'nan'), ('--label_smoothing', 'nan'),
    ('--learning_rate', 'nan'), ('--val_fraction', 'nan'), ('--side_loss_weight', 'nan'), ('--warmup_epochs', 'nan'),
    ('--learning_rate', 'inf'), ('--weight_decay', 'inf'), ('--mixup', '-0.1'),
])
def test_every_bad_number_is_one_line_and_exit_code_2(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        utils.run_cli(train.main, ['--data_root', str(tmp_path), flag, value])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and '\n' not in err and err.startswith(f'error: {flag} ') and value in err


def test_a_nan_from_a_config_file_is_refused_like_the_flag(tmp_path):
    config = tmp_path / 'config.yaml'
    config.write_text('dropout: .nan\n')
    with pytest.raises(UserError, match='--dropout must be a number of at least 0, got nan'):
        train.parse_args(['--config', str(config), '--data_root', str(tmp_path)])


# quick_start.sh

def quick_start(tmp_path, snippet):
    """Run ``snippet`` in bash after sourcing quick_start.sh (which then only defines its functions), with its
    folders pointed into ``tmp_path``."""
    env = {**os.environ, 'PATH': f'{Path(sys.executable).parent}{os.pathsep}{os.environ["PATH"]}'}
    setup = (f'source {ROOT / "quick_start.sh"}; SAVE_DIR={tmp_path}/c; LOG_DIR={tmp_path}/l; '
             f'CSV={tmp_path}/annotation.csv; CSV_MARK={tmp_path}/.annotation.csv.quick_start; ')
    return subprocess.run(['bash', '-c', setup + snippet], cwd=ROOT, env=env, capture_output=True, text=True)


def test_quick_start_overwrites_only_its_own_run_and_csv(earlier_run, tmp_path, tree_hashes):
    run_id = torch.load(tmp_path / 'c' / 'last.pth', weights_only=True)['run_id']
    flags = quick_start(tmp_path, 'overwrite_flag; echo "|"; mark_run; overwrite_flag; echo "|"; '
                                  'echo 20260101-000000-abcdef > "$SAVE_DIR/$RUN_MARK"; overwrite_flag')
    # a user's run (no mark): no --overwrite, so the training moves it aside; its own run: --overwrite; a mark
    # left beside another run than the one it names: no --overwrite
    assert [part.strip() for part in flags.stdout.split('|')] == ['', '--overwrite', ''], flags.stderr
    assert (tmp_path / 'c' / '.quick_start_run').read_text().strip() == '20260101-000000-abcdef' != run_id

    # a CSV of the user's is used as it is, never prepared again over it
    (tmp_path / 'annotation.csv').write_text('image_path,grade\nmine.jpg,0\n')
    result = quick_start(tmp_path, 'prepare_csv')
    assert result.returncode == 0 and 'was not written by quick_start.sh: using it as it is' in result.stdout
    assert (tmp_path / 'annotation.csv').read_text() == 'image_path,grade\nmine.jpg,0\n'
    owned = quick_start(tmp_path, 'set +e; own_csv; echo "$?|"; digest "$CSV" > "$CSV_MARK"; own_csv; echo "$?|"; '
                                  'echo edited >> "$CSV"; own_csv; echo "$?"')
    assert [part.strip() for part in owned.stdout.split('|')] == ['1', '0', '1']  # edited since: the user's now


# run_folders.py on its own

def test_run_files_are_only_those_a_training_writes(tmp_path):
    save_dir, log_dir = tmp_path / 'c', tmp_path / 'l'
    for path in (save_dir / 'last.pth', save_dir / 'epoch_10.pth', save_dir / 'epoch_9.pth', save_dir / 'mine.pth',
                 save_dir / 'epoch_best.pth', log_dir / 'summary.csv', log_dir / 'notes.csv'):
        path.parent.mkdir(exist_ok=True)
        path.write_text('x')
    assert run_folders.run_files(save_dir, log_dir) == [save_dir / 'last.pth', save_dir / 'epoch_9.pth',
                                                       save_dir / 'epoch_10.pth', log_dir / 'summary.csv']


def test_a_moved_run_comes_back_when_the_new_one_fails_and_goes_when_it_commits(tmp_path, tree_hashes):
    save_dir = tmp_path / 'c'
    save_dir.mkdir()
    (save_dir / 'last.pth').write_text('earlier')
    (save_dir / 'epoch_5.pth').write_text('earlier mark')
    before = tree_hashes(save_dir)
    folders = run_folders.guard_run_folders(save_dir, save_dir, overwrite=True)
    assert not (save_dir / 'last.pth').exists() and len(folders.moves) == 2
    (save_dir / 'epoch_1.pth').write_text('partial new run')
    folders.restore()
    assert tree_hashes(save_dir) == before  # the partial file is gone, the earlier ones are back
    folders = run_folders.guard_run_folders(save_dir, save_dir, overwrite=True)
    (save_dir / 'last.pth').write_text('new')
    folders.commit()
    folders.restore()  # settled: nothing to undo
    assert tree_hashes(save_dir) == {'last.pth': tree_hashes(save_dir)['last.pth']}
    assert (save_dir / 'last.pth').read_text() == 'new'
