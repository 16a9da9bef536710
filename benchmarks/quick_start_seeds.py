"""The quick start's expected range: its recipe trained with several seeds on its own data and split.

``bash quick_start.sh`` trains once (seed 42) and scores the test subjects; one run of one seed is not a result,
so this script repeats the quick start's training and evaluation for several seeds on the same annotation CSV and
writes mean +- sd of the photo- and patient-level test metrics. ``quick_start.sh`` prints that range beside its
own run. Run after ``bash quick_start.sh`` (it needs the quick start's data and CSV):

    python benchmarks/quick_start_seeds.py                  # seeds 42 1 2 3 4, profile cpu_quickstart
    python benchmarks/quick_start_seeds.py --seeds 42 1 2

Writes ``benchmarks/results/quick_start_seeds.json`` (every number, the command and the commit); runs go to
``--work_dir`` (default ./benchmarks/runs/quick_start_seeds) and a seed whose evaluation exists is not repeated.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.provenance import METRICS, commit, run  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--seeds', type=int, nargs='+', default=[42, 1, 2, 3, 4],
                        help='training seeds (default: 42 1 2 3 4; 42 is the quick start\'s own)')
    parser.add_argument('--profile', default='cpu_quickstart', help='profile of config_examples.yaml')
    parser.add_argument('--data_root', default='./datasets/facial_palsy/FNP', help='the quick start\'s photos')
    parser.add_argument('--csv', default='./datasets/facial_palsy/fnp_annotation.csv',
                        help='the quick start\'s annotation CSV (its split column is used as it is)')
    parser.add_argument('--work_dir', type=Path, default=ROOT / 'benchmarks' / 'runs' / 'quick_start_seeds',
                        help='checkpoints, logs and evaluations of every seed')
    parser.add_argument('--output', type=Path, default=ROOT / 'benchmarks' / 'results' / 'quick_start_seeds.json',
                        help='the summary JSON that quick_start.sh reads')
    return parser


def one_seed(seed: int, args: argparse.Namespace) -> dict:
    folder = args.work_dir / args.profile / f'seed{seed}'
    metrics = folder / 'evaluation' / 'metrics.json'
    if not metrics.is_file():
        checkpoint = folder / 'checkpoints' / 'best_model.pth'
        if not checkpoint.is_file():
            run([sys.executable, 'train_facial_palsy.py', '--config', 'config_examples.yaml', '--profile',
                 args.profile, '--data_root', args.data_root, '--train_csv', args.csv, '--val_csv', args.csv,
                 '--seed', str(seed), '--save_dir', str(folder / 'checkpoints'), '--log_dir', str(folder / 'logs'),
                 '--save_interval', '0', '--overwrite'], log=folder / 'run.log')
        run([sys.executable, 'evaluate_facial_palsy.py', '--model_path', str(checkpoint), '--data_root',
             args.data_root, '--test_csv', args.csv, '--output_dir', str(folder / 'evaluation'), '--overwrite'],
            log=folder / 'run.log')
    payload = json.loads(metrics.read_text())
    row = {f'photo_{name}': payload['metrics'][name]['value'] for name in METRICS}
    patients = payload.get('subject_metrics')
    row.update({f'patient_{name}': patients['metrics'][name]['value'] if patients else None for name in METRICS})
    return row


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    args.work_dir = args.work_dir.resolve()
    rows = {seed: one_seed(seed, args) for seed in args.seeds}
    table = pd.DataFrame.from_dict(rows, orient='index')
    command = shlex.join(['python', 'benchmarks/quick_start_seeds.py', *(argv if argv is not None else sys.argv[1:])])
    record = {'profile': args.profile, 'seeds': args.seeds, 'command': command, 'commit': commit(),
              'mean': table.mean().to_dict(), 'sd': table.std(ddof=1).to_dict(),
              'per_seed': {str(seed): row for seed, row in rows.items()}}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + '\n')
    for name in table.columns:
        print(f'{name:<20} {table[name].mean():.3f} +- {table[name].std(ddof=1):.3f}   '
              + ' '.join(f'{v:.3f}' for v in table[name]))
    print(f'({len(rows)} seeds; {command} at {record["commit"]})')
    return record


if __name__ == '__main__':
    main()
