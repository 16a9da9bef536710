"""Wall-clock time of a cross-validation on this machine's CPU cores: ``train_facial_palsy.py --cv 4`` with its
folds spread over 2 processes by torchrun (1 thread each), against 1 process with 1 thread and 1 process with 2
threads.

    python benchmarks/fold_parallel.py                         # about 6 minutes on 2 idle cores
    python benchmarks/fold_parallel.py --repeats 1 --epochs 2  # a quick look

A synthetic face set is made once (benchmarks/runs/fold_parallel/, landmarks cached), then the three
configurations run in turn, interleaved so that background load touches each alike, ``--repeats`` times. The
commands, the seconds of every run, the means, the speed-ups, the machine's load (``uptime``) around each run and
the commit go to benchmarks/results/fold_parallel.json. The two 1-thread configurations must give identical fold
results (a fold depends on the seed and the fold alone); that is checked and recorded too.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / 'benchmarks' / 'runs' / 'fold_parallel'
OUTPUT = ROOT / 'benchmarks' / 'results' / 'fold_parallel.json'
CONFIGS = ('torchrun_2x1_threads', 'one_process_1_thread', 'one_process_2_threads')
SHARED_LOAD = 2.5  # 1-minute load average above which other work ran beside the benchmark on 2 cores


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--repeats', type=int, default=2, help='runs of each configuration (the mean is reported)')
    parser.add_argument('--folds', type=int, default=4, help='--cv K')
    parser.add_argument('--epochs', type=int, default=40, help='epochs per fold (about 0.6 s each on one core)')
    parser.add_argument('--subjects', type=int, default=48, help='synthetic subjects (2 photos each)')
    parser.add_argument('--output', type=Path, default=OUTPUT, help='where the JSON record goes')
    return parser


def machine_load() -> dict[str, Any]:
    """The load averages (1, 5, 15 min) and ``uptime``'s line: how busy the machine was."""
    try:
        line = subprocess.run(['uptime'], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        line = ''
    return {'loadavg': [round(v, 2) for v in os.getloadavg()], 'uptime': line}


def git(*argv: str) -> str:
    try:
        return subprocess.run(['git', *argv], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ''


def make_data(subjects: int) -> tuple[Path, Path, Path]:
    """A synthetic face set and its annotation CSV under RUNS (made once; its landmarks cached)."""
    faces, csv, cache = RUNS / 'faces', RUNS / 'annotation.csv', RUNS / 'landmarks'
    marker = RUNS / f'.made_{subjects}_subjects'
    if not marker.is_file():
        subprocess.run([sys.executable, 'prepare_dataset.py', '--dataset_type', 'synthetic', '--output_root',
                        str(faces), '--num_subjects', str(subjects), '--images_per_subject', '2', '--image_size',
                        '128', '--detection_check', '0', '--cache_dir', str(cache), '--device', 'cpu', '--quiet',
                        '--overwrite'], cwd=ROOT, check=True)
        subprocess.run([sys.executable, 'prepare_dataset.py', '--dataset_type', 'FNP', '--data_root', str(faces),
                        '--output_csv', str(csv), '--quiet', '--overwrite'], cwd=ROOT, check=True)
        marker.write_text('ok\n')
    return faces, csv, cache


def commands(args: argparse.Namespace, data: tuple[Path, Path, Path]) -> dict[str, list[str]]:
    """The command of each configuration (its own --save_dir / --log_dir are added per run)."""
    faces, csv, cache = data
    common = ['train_facial_palsy.py', '--data_root', str(faces), '--train_csv', str(csv), '--cache_dir', str(cache),
              '--cv', str(args.folds), '--epochs', str(args.epochs), '--dim', '32', '--heads', '2',
              '--block_repeats', '1', '1', '2', '--batch_size', '16', '--learning_rate', '1e-3', '--device', 'cpu',
              '--save_interval', '0', '--overwrite']
    return {
        'torchrun_2x1_threads': [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node',
                                 '2', *common, '--threads', '1'],
        'one_process_1_thread': [sys.executable, *common, '--threads', '1'],
        'one_process_2_threads': [sys.executable, *common, '--threads', '2'],
    }


def fold_records(log_dir: Path) -> list[dict[str, Any]]:
    summary = json.loads((log_dir / 'cv_summary.json').read_text())
    return [{k: v for k, v in fold.items() if k != 'checkpoint'} for fold in summary['folds']]


def timed_run(name: str, command: Sequence[str], repeat: int) -> dict[str, Any]:
    folder = RUNS / f'{name}_{repeat}'
    argv = [*command, '--save_dir', str(folder / 'c'), '--log_dir', str(folder / 'l')]
    threads = '1' if name != 'one_process_2_threads' else '2'
    env = {**os.environ, 'OMP_NUM_THREADS': threads, 'MPLBACKEND': 'Agg'}
    before = machine_load()
    started = time.perf_counter()
    with open(RUNS / f'{name}_{repeat}.log', 'w') as log:
        process = subprocess.run(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f'{name} failed (exit {process.returncode}); see {RUNS / f"{name}_{repeat}.log"}')
    print(f'{name} #{repeat}: {seconds:.1f} s (load before {before["loadavg"]})', flush=True)
    return {'seconds': round(seconds, 2), 'load_before': before, 'load_after': machine_load(),
            'log_dir': str((folder / 'l').relative_to(ROOT))}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    RUNS.mkdir(parents=True, exist_ok=True)
    data = make_data(args.subjects)
    runs = commands(args, data)
    start_load = machine_load()
    timings: dict[str, list[dict[str, Any]]] = {name: [] for name in CONFIGS}
    for repeat in range(1, args.repeats + 1):
        for name in CONFIGS:
            timings[name].append(timed_run(name, runs[name], repeat))
    mean = {name: round(sum(t['seconds'] for t in timings[name]) / len(timings[name]), 2) for name in CONFIGS}
    same = all(fold_records(ROOT / a['log_dir']) == fold_records(ROOT / b['log_dir'])
               for a, b in zip(timings['torchrun_2x1_threads'], timings['one_process_1_thread']))
    busiest = max(max(t['load_before']['loadavg'][0], t['load_after']['loadavg'][0])
                  for name in CONFIGS for t in timings[name])
    record = {
        'what': f'wall-clock seconds of train_facial_palsy.py --cv {args.folds} ({args.epochs} epochs per fold, '
                f'{args.subjects} synthetic subjects x 2 photos, dim 32 / heads 2 / block_repeats 1 1 2, batch 16) '
                f'on the CPU, mean of {args.repeats} runs each, interleaved',
        'commands': {name: ' '.join('python' if c == sys.executable else c.replace(f'{ROOT}/', '')
                                    for c in runs[name]) for name in CONFIGS},
        'environment': {'OMP_NUM_THREADS': '1 for the 1-thread runs, 2 for the 2-thread run'},
        'seconds': {name: [t['seconds'] for t in timings[name]] for name in CONFIGS},
        'mean_seconds': mean,
        'speedup_of_torchrun_2x1': {'vs_one_process_1_thread': round(mean['one_process_1_thread']
                                                                    / mean['torchrun_2x1_threads'], 2),
                                    'vs_one_process_2_threads': round(mean['one_process_2_threads']
                                                                      / mean['torchrun_2x1_threads'], 2)},
        'speedup_of_2_threads_vs_1_thread': round(mean['one_process_1_thread'] / mean['one_process_2_threads'], 2),
        'same_fold_results_torchrun_and_1_thread': same,
        'machine': {'cpus': os.cpu_count(), 'platform': platform.platform(), 'python': platform.python_version(),
                    'torch': __import__('torch').__version__, 'load_at_start': start_load,
                    'busiest_load_1min': busiest,
                    # the benchmark keeps both cores busy (a load of about 2); more than that is other work on the machine
                    'shared': busiest > SHARED_LOAD,
                    'note': ('the machine was shared while measuring: other work pushed the 1-minute load above the '
                             'benchmark\'s own; the figures are what this machine gave then'
                             if busiest > SHARED_LOAD else 'measured with little other load')},
        'runs': timings,
        'commit': git('rev-parse', 'HEAD'),
        'uncommitted_changes': bool(git('status', '--porcelain')),
        'date': time.strftime('%Y-%m-%d %H:%M:%S %Z'),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + '\n')
    print(json.dumps({k: record[k] for k in ('mean_seconds', 'speedup_of_torchrun_2x1',
                                              'speedup_of_2_threads_vs_1_thread',
                                              'same_fold_results_torchrun_and_1_thread')}, indent=2))
    print(f'-> {args.output}')
    return record


if __name__ == '__main__':
    main()
