"""Training beyond one process: distributed.py on its own, and torchrun runs of two CPU processes (gloo) of
train_facial_palsy.py and main_HTNet.py checked against a single process.

- ``--cv 4`` spread over 2 processes gives exactly the fold results of one process;
- a 2-process DistributedDataParallel run writes one set of outputs, ``--resume`` continues it, and 2 processes x
  batch 2 train the network 1 process x batch 4 trains: the same logits to 1e-5 and the same weights to 5e-5
  (AdamW at lr 2e-3, 6 steps; a step moves a weight by ~2e-3, so any other sample order shows);
- main_HTNet.py's subjects spread over 2 processes give the results.json and tables of one process;
- a fold that fails on one process is named, the other folds finish, the summary lists it, the status is 1.

The subprocesses run with one thread each (OMP_NUM_THREADS=1, --threads 1), as the single-process references
do: a fold's numbers on the CPU depend on the thread count.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import checkpoints
import distributed
import engine
import main_HTNet
import prepare_dataset
import train_facial_palsy as train
from micro_expression_fixture import make_micro_expression_fixture

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2']
TIMEOUT = 240  # seconds for one torchrun launch on a busy 2-core machine
WEIGHT_TOLERANCE, LOGIT_TOLERANCE = 5e-5, 1e-5
ME_TINY = ['--dim', '16', '--heads', '1', '--block_repeats', '1', '1', '1']


def torchrun(*argv: str) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc_per_node 2 <argv>`` from the repository root."""
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg',
           'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')])}
    return subprocess.run([*TORCHRUN, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def succeeded(process: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    return process


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# distributed.py on its own

def test_the_sampler_splits_the_single_process_shuffle_batch_by_batch():
    data = TensorDataset(torch.arange(12))
    single = DataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(5))
    expected = [sorted(batch[0].tolist()) for batch in single]
    steps = []
    for rank in (0, 1):
        generator = torch.Generator().manual_seed(5)
        sampler = distributed.EpochShuffleSampler(data, generator, num_replicas=2, rank=rank)
        assert isinstance(sampler, DistributedSampler)
        steps.append([batch[0].tolist() for batch in DataLoader(data, batch_size=2, sampler=sampler,
                                                                  generator=generator)])
    assert [sorted(a + b) for a, b in zip(*steps)] == expected  # every step reads the single-process batch
    # a set that does not split evenly repeats its first photos so that both processes take as many steps
    odd = distributed.EpochShuffleSampler(TensorDataset(torch.arange(5)), None, num_replicas=2, rank=1)
    odd.set_epoch(3)
    assert len(list(odd)) == len(odd) == 3


def test_an_epoch_seeds_the_shuffle_alike_and_the_augmentations_apart_on_each_process():
    data = TensorDataset(torch.arange(8))

    def epoch(rank):
        generator = torch.Generator()
        sampler = distributed.EpochShuffleSampler(data, generator, num_replicas=2, rank=rank)
        loader = DataLoader(data, batch_size=2, sampler=sampler, generator=generator)
        engine.seed_epoch(loader, 7, 3)
        return sampler.epoch, [b[0].tolist() for b in loader], float(torch.rand(()))

    alone = DataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator())
    engine.seed_epoch(alone, 7, 3)
    order, draw = [b[0].tolist() for b in alone], float(torch.rand(()))
    (epoch_0, batches_0, draw_0), (epoch_1, batches_1, draw_1) = epoch(0), epoch(1)
    assert epoch_0 == epoch_1 == 3
    assert [sorted(a + b) for a, b in zip(batches_0, batches_1)] == [sorted(b) for b in order]
    assert draw_0 == draw and draw_1 != draw  # rank 0 augments as one process does, rank 1 otherwise


def test_without_torchrun_every_helper_acts_for_one_process(capsys):
    assert not distributed.launched() and not distributed.active()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.my_share(['a', 'b', 'c']) == ['a', 'b', 'c']
    assert distributed.broadcast_object({'x': 1}) == {'x': 1}
    assert [a.tolist() for a in distributed.all_gather_arrays([1.0, 2.0])] == [[1.0, 2.0]]
    assert distributed.run_on_main(lambda: 5) == 5
    device = torch.device('cpu')
    assert distributed.device_for_process(device) == device
    with distributed.process_group(device), distributed.only_main_prints():
        print('shown')
    assert capsys.readouterr().out == 'shown\n'


def test_a_process_other_than_rank_0_runs_its_share_and_prints_nothing(monkeypatch, capfd):
    monkeypatch.setenv('WORLD_SIZE', '3')
    monkeypatch.setenv('RANK', '1')
    assert distributed.launched() and not distributed.is_main()
    assert distributed.my_share(list(range(1, 8))) == [2, 5]
    assert [distributed.owner_of(i) for i in range(4)] == [0, 1, 2, 0]
    with distributed.only_main_prints():
        print('hidden')
        print('hidden too', file=sys.stderr)
        print('error: fold 2 failed', file=distributed.error_stream())
    out, err = capfd.readouterr()
    assert 'hidden' not in out + err and 'error: fold 2 failed' in err


def test_a_fold_outcome_survives_its_file(tmp_path):
    result = engine.FoldResult(fold=3, indices=[4, 9], true=np.array([1, 2]), pred=np.array([1, 1]),
                               side_true=np.array([0, -100]), side_pred=np.array([0, 2]),
                               summary={'fold': 3, 'best_val_metric': 0.1 + 0.2, 'metrics': {'qwk': float('nan')}})
    path = distributed.publish(tmp_path / 'fold_3' / engine.FOLD_RESULT, engine.fold_outcome(3, 'r-fold_3', 'done',
                                                                                           result))
    [payload] = distributed.wait_for_published([path]).values()
    back = engine.fold_result(payload)
    assert back.indices == result.indices and back.summary['best_val_metric'] == 0.1 + 0.2
    for name in ('true', 'pred', 'side_true', 'side_pred'):
        assert np.array_equal(getattr(back, name), getattr(result, name))
    assert engine.fold_result(engine.fold_outcome(2, 'r-fold_2', 'failed', error='boom')) is None


# torchrun: cross-validation folds spread over the processes

def cv_args(data, folder: Path, *extra: str) -> list[str]:
    return ['--data_root', str(data.root), '--train_csv', str(data.csv), '--cache_dir', str(data.cache_dir),
            '--save_dir', str(folder / 'c'), '--log_dir', str(folder / 'l'), '--device', 'cpu',
            '--batch_size', '8', '--learning_rate', '2e-3', '--augmentation', 'none', '--threads', '1',
            '--epochs', '1', '--cv', '4', *data.tiny_flags, *extra]


def fold_records(folder: Path) -> dict[int, dict]:
    """Each fold's record in cv_summary.json, without the checkpoint path (which names the folder)."""
    summary = json.loads((folder / 'l' / 'cv_summary.json').read_text())
    return {fold['fold']: {k: v for k, v in fold.items() if k != 'checkpoint'} for fold in summary['folds']}


def read_rows(path: Path) -> list[dict]:
    with open(path, newline='') as handle:
        return list(csv.DictReader(handle))


def same_weights(path_a: Path, path_b: Path) -> bool:
    """The two files hold equal weights (a checkpoint's ``model``, or a plain state_dict)."""
    a, b = (checkpoints.load_checkpoint(p)['model'] for p in (path_a, path_b))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope='module')
def single_process_cv(synthetic_dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp('cv_single')
    results = train.main(cv_args(synthetic_dataset, folder))
    assert results['folds_run'] == 4 and not results['failed_folds']
    return folder


def test_folds_spread_over_two_processes_give_the_single_process_results(single_process_cv, synthetic_dataset,
                                                                          tmp_path):
    process = succeeded(torchrun('train_facial_palsy.py', *cv_args(synthetic_dataset, tmp_path)))
    assert 'this process (rank 0) runs folds 1, 3' in process.stdout
    assert process.stdout.count('POOLED (4-fold') == 1  # the summary is printed once, by rank 0
    ours = json.loads((tmp_path / 'l' / 'cv_summary.json').read_text())
    reference = json.loads((single_process_cv / 'l' / 'cv_summary.json').read_text())
    assert fold_records(tmp_path) == fold_records(single_process_cv)
    for key in ('pooled', 'fold_mean', 'fold_std', 'fold_assignment', 'folds_run', 'partial', 'failed_folds'):
        assert ours[key] == reference[key], key
    assert read_rows(tmp_path / 'l' / 'cv_predictions.csv') == read_rows(single_process_cv / 'l' /
                                                                         'cv_predictions.csv')
    assert (tmp_path / 'l' / 'cv_folds.png').stat().st_size > 0
    for fold in (1, 2, 3, 4):  # fold 2 and 4 trained on rank 1: each fold's own folders and files
        assert same_weights(tmp_path / 'c' / f'fold_{fold}' / 'best_model.pth',
                            single_process_cv / 'c' / f'fold_{fold}' / 'best_model.pth')
        outcome = json.loads((tmp_path / 'l' / f'fold_{fold}' / engine.FOLD_RESULT).read_text())
        assert outcome['status'] == 'done' and outcome['run_id'].endswith(f'-fold_{fold}')


FAILING_FOLD = '''
import sys
import train_facial_palsy, utils
real = train_facial_palsy.run_fold
def run_fold(fold, *args, **kwargs):
    if fold == 2:
        raise RuntimeError('a fault put into fold 2')
    return real(fold, *args, **kwargs)
train_facial_palsy.run_fold = run_fold
utils.run_cli(lambda argv: train_facial_palsy.exit_status(train_facial_palsy.main(argv)), sys.argv[1:])
'''


def test_a_failing_fold_is_named_and_the_others_finish(single_process_cv, synthetic_dataset, tmp_path):
    script = tmp_path / 'failing_fold.py'
    script.write_text(FAILING_FOLD)
    process = torchrun(str(script), *cv_args(synthetic_dataset, tmp_path))
    assert process.returncode != 0
    assert 'error: fold 2 failed: RuntimeError: a fault put into fold 2; the other folds go on' in process.stderr
    summary = json.loads((tmp_path / 'l' / 'cv_summary.json').read_text())
    assert summary['failed_folds'] == [{'fold': 2, 'error': 'RuntimeError: a fault put into fold 2'}]
    assert summary['folds_run'] == 3 and summary['partial'] and 'FAILED: fold(s) 2' in summary['note']
    reference = fold_records(single_process_cv)
    assert fold_records(tmp_path) == {k: reference[k] for k in (1, 3, 4)}  # fold 4 ran after the failure
    assert 'FAILED fold 2: RuntimeError: a fault put into fold 2' in process.stdout


# torchrun: DistributedDataParallel

def ddp_args(data, folder: Path, batch_size: int, *extra: str) -> list[str]:
    """Every random draw off but the shuffle (no augmentation, mirror, MixUp, dropout), so that 2 processes x
    batch b and 1 process x batch 2b meet the same photos in each step."""
    return ['--data_root', str(data.root), '--train_csv', str(data.csv), '--val_csv', str(data.csv),
            '--test_csv', str(data.csv), '--cache_dir', str(data.cache_dir), '--save_dir', str(folder / 'c'),
            '--log_dir', str(folder / 'l'), '--device', 'cpu', '--threads', '1', '--learning_rate', '2e-3',
            '--augmentation', 'none', '--no-flip_swap_side', '--dropout', '0', '--mixup', '0', '--ema', '0.5',
            '--save_interval', '1', '--batch_size', str(batch_size), *data.tiny_flags, *extra]


def train_rows(data) -> int:
    return sum(row['split'] == 'train' for row in read_rows(data.csv))


def network_gap(path_a: Path, path_b: Path) -> tuple[float, float]:
    """(max |logit difference| on fixed inputs, max |weight difference| over the tensors the outputs depend on).
    A tensor whose gradient is zero up to rounding (the top level's position embedding, which the layer norm
    after it cancels) takes no defined AdamW step: the update divides the rounding noise by its own size, +-lr
    whichever sign the noise has, so it is left out of the weights and judged through the logits."""
    a, b = checkpoints.load_trained(path_a).model, checkpoints.load_trained(path_b).model
    images = torch.randn(8, 3, a.image_size, a.image_size, generator=torch.Generator().manual_seed(0))
    a.zero_grad()
    logits = a(images)
    torch.nn.functional.cross_entropy(logits, torch.arange(8) % a.num_classes).backward()
    largest = max(p.grad.abs().max() for p in a.parameters())
    with torch.no_grad():
        logit_gap = float((logits - b(images)).abs().max())
    weights_b = dict(b.named_parameters())
    weight_gap = max(float((p.detach() - weights_b[name].detach()).abs().max()) for name, p in a.named_parameters()
                     if p.grad.abs().max() > 1e-6 * largest)
    return logit_gap, weight_gap


def test_two_process_ddp_trains_one_run_that_resumes_and_matches_one_process_with_the_global_batch(
        synthetic_dataset, tmp_path):
    data, ddp = synthetic_dataset, tmp_path / 'ddp'
    assert train_rows(data) % 4 == 0  # every step a full global batch: no photo repeated to even out the shares
    first = succeeded(torchrun('train_facial_palsy.py', *ddp_args(data, ddp, 2, '--epochs', '1')))
    assert first.stdout.count('batch: 4 photos per optimiser step (2 per process x 2 processes') == 1
    assert first.stdout.count('epoch 1/1 |') == 1 and first.stdout.count('TEST (held out') == 1
    assert sorted(p.name for p in (ddp / 'c').iterdir()) == ['best_model.pth', 'epoch_1.pth', 'last.pth']
    history = json.loads((ddp / 'l' / 'training_history.json').read_text())
    assert history['batch'] == {'per_process': 2, 'processes': 2, 'global': 4}
    run_id = torch.load(ddp / 'c' / 'last.pth', weights_only=True)['run_id']

    resumed = succeeded(torchrun('train_facial_palsy.py', *ddp_args(data, ddp, 2, '--epochs', '2', '--resume',
                                                                    str(ddp / 'c' / 'last.pth'))))
    assert f'resumed run {run_id}' in resumed.stdout and resumed.stdout.count('epoch 2/2 |') == 1
    assert [int(r['epoch']) for r in read_rows(ddp / 'l' / 'summary.csv')] == [1, 2]
    last = torch.load(ddp / 'c' / 'last.pth', weights_only=True)
    assert last['epoch'] == 2 and last['run_id'] == run_id and last['ema']['updates'] == 2 * 3
    assert 'ood' in torch.load(ddp / 'c' / 'best_model.pth', weights_only=True)
    assert not list(tmp_path.rglob('*.previous-*')) and (ddp / 'l' / 'test_metrics.json').is_file()

    single = tmp_path / 'single'
    reference = train.main(ddp_args(data, single, 4, '--epochs', '2'))
    for name in ('epoch_1.pth', 'last.pth'):
        logit_gap, weight_gap = network_gap(single / 'c' / name, ddp / 'c' / name)
        assert logit_gap < LOGIT_TOLERANCE and weight_gap < WEIGHT_TOLERANCE, (name, logit_gap, weight_gap)
    ours = read_rows(ddp / 'l' / 'summary.csv')
    for row, expected in zip(ours, reference['history']):
        assert float(row['train_loss']) == pytest.approx(expected['train_loss'], abs=1e-5)
        assert float(row['val_macro_f1']) == pytest.approx(expected['val_macro_f1'], abs=1e-6)
        assert float(row['val_loss']) == pytest.approx(expected['val_loss'], abs=1e-5)


# torchrun: main_HTNet.py's subjects spread over the processes

def final_tables(output: str) -> str:
    """The per-subject lines and the UF1 / UAR tables a run prints (progress bars aside)."""
    lines = [line for line in output.replace('\r', '\n').splitlines()
             if line.startswith(('subject ', '  ', 'Final evaluation')) or line.endswith(':')]
    return '\n'.join(line for line in lines if 'epoch/s' not in line and 'img/s' not in line)


def test_subjects_spread_over_two_processes_give_the_single_process_results(tmp_path):
    fixture = make_micro_expression_fixture(tmp_path / 'data')
    common = ['--train', 'True', '--data_dir', str(fixture.data_dir), '--csv', str(fixture.csv), '--epochs', '2',
              '--learning_rate', '3e-3', '--device', 'cpu', *ME_TINY]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main_HTNet.main([*common, '--weights_dir', str(tmp_path / 'one')]) == 0
    process = succeeded(torchrun('main_HTNet.py', *common, '--weights_dir', str(tmp_path / 'two')))
    one, two = (json.loads((tmp_path / name / 'results.json').read_text()) for name in ('one', 'two'))
    for key in ('metrics', 'subjects', 'skipped', 'landmarks', 'model_args', 'parameters'):
        assert one[key] == two[key], key
    assert list(two['subjects']) == sorted(fixture.subjects) and len(two['subjects']) == 4
    assert (tmp_path / 'one' / 'summary.csv').read_text() == (tmp_path / 'two' / 'summary.csv').read_text()
    assert final_tables(process.stdout) == final_tables(out.getvalue()) and 'composite  UF1' in process.stdout
    for subject in fixture.subjects:  # each subject's weights, from whichever process trained it
        assert same_weights(tmp_path / 'one' / f'{subject}.pth', tmp_path / 'two' / f'{subject}.pth')
    assert not (tmp_path / 'two' / '.subject_results').exists()


# scripts/gpu_check.sh, whose GPU part cannot run here

def gpu_check(tmp_path: Path, listing: str, *argv: str) -> subprocess.CompletedProcess:
    """Run the script with a stand-in for ``nvidia-smi -L`` that prints ``listing`` (or fails when empty)."""
    fake = tmp_path / 'nvidia-smi'
    fake.write_text('#!/bin/sh\n' + (f"printf '{listing}'\n" if listing else 'exit 9\n'))
    fake.chmod(0o755)
    env = {**os.environ, 'NVIDIA_SMI': str(fake), 'PYTHON': sys.executable, 'GPU_CHECK_DIR': str(tmp_path / 'w')}
    return subprocess.run(['bash', str(ROOT / 'scripts' / 'gpu_check.sh'), *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def test_the_gpu_check_refuses_without_a_gpu_and_its_commands_parse(tmp_path):
    refused = gpu_check(tmp_path, '')
    assert refused.returncode == 2 and refused.stdout == '' and refused.stderr.count('\n') == 1
    assert refused.stderr.startswith('error: no NVIDIA GPU found') and '--dry_run' in refused.stderr
    assert not (tmp_path / 'w').exists()

    dry = gpu_check(tmp_path, 'GPU 0: H200 (UUID: a)\\nGPU 1: H200 (UUID: b)\\n', '--dry_run')
    assert dry.returncode == 0, dry.stderr
    commands = [shlex.split(line[2:]) for line in dry.stdout.splitlines() if line.startswith('+ ')]
    scripts = [next(token for token in command if token.endswith('.py')) for command in commands]
    assert scripts.count('benchmarks/bench_model.py') == 3 and scripts.count('train_facial_palsy.py') == 4
    torchrun_lines = [c for c in commands if 'torch.distributed.run' in c]
    assert len(torchrun_lines) == 2 and all(c[c.index('--nproc_per_node') + 1] == '2' for c in torchrun_lines)
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    try:
        import bench_model
    finally:
        sys.path.remove(str(ROOT / 'benchmarks'))
    parsers = {'train_facial_palsy.py': train.get_args_parser(),
               'prepare_dataset.py': prepare_dataset.get_args_parser(),
               'benchmarks/bench_model.py': bench_model.get_args_parser()}
    for command, script in zip(commands, scripts):  # every flag it passes exists
        parsers[script].parse_args(command[command.index(script) + 1:])
    compiled = [c for c in commands if '--compile' in c]
    assert any('--amp' in c and 'train_facial_palsy.py' in c for c in compiled) and len(compiled) == 3
