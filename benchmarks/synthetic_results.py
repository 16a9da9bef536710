"""The results table of README.md: HTNet variants beside the symmetry baseline on the built-in synthetic faces.

Each variant is trained with the ``cpu_quickstart`` profile of config_examples.yaml (selection on the validation
subjects), then scored once on the test subjects by ``evaluate_facial_palsy.py``; the symmetry baseline is fitted on
the same training photos (``train_facial_palsy.py --baseline symmetry``). Run after ``bash quick_start.sh``:

    python benchmarks/synthetic_results.py
    python benchmarks/synthetic_results.py --variants regions-ce regions-ordinal --epochs 10

Writes ``benchmarks/results/synthetic_results.md`` (the table) and ``synthetic_results.json`` (every number).
Flow variants need the rest / expression pairs set (``prepare_dataset.py --dataset_type synthetic --pairs``) given
with ``--pairs_root`` and ``--pairs_csv``; they are skipped, and say so, when it is not there.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# name -> (input mode, extra training flags, needs the pairs set)
VARIANTS = {
    'regions-ce': ('regions', ['--baseline', 'symmetry'], False),
    'regions-ordinal': ('regions', ['--loss', 'ordinal'], False),
    'regions-ce-multitask': ('regions', ['--multitask'], False),
    'face-ce': ('face', [], False),
    'face-ordinal': ('face', ['--loss', 'ordinal'], False),
    'flow-ce': ('flow', [], True),
    'flow-ordinal': ('flow', ['--loss', 'ordinal'], True),
}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data_root', default='./datasets/facial_palsy/FNP')
    parser.add_argument('--csv', default='./datasets/facial_palsy/fnp_annotation.csv')
    parser.add_argument('--pairs_root', default='./datasets/facial_palsy/FNP_pairs')
    parser.add_argument('--pairs_csv', default='./datasets/facial_palsy/fnp_pairs_annotation.csv')
    parser.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument('--profile', default='cpu_quickstart', help='profile of config_examples.yaml')
    parser.add_argument('--epochs', type=int, default=None, help='override the profile\'s epochs')
    parser.add_argument('--output_dir', default=str(ROOT / 'benchmarks' / 'results'))
    parser.add_argument('--work_dir', default='./synthetic_results', help='checkpoints, logs and evaluations')
    return parser


def run(command: list[str]) -> None:
    print('$', ' '.join(command), flush=True)
    subprocess.run(command, check=True)


def run_variant(name: str, args: argparse.Namespace) -> dict:
    mode, extra, needs_pairs = VARIANTS[name]
    data_root, csv = (args.pairs_root, args.pairs_csv) if needs_pairs else (args.data_root, args.csv)
    work = Path(args.work_dir) / name
    train = [sys.executable, str(ROOT / 'train_facial_palsy.py'), '--config', str(ROOT / 'config_examples.yaml'),
             '--profile', args.profile, '--data_root', data_root, '--train_csv', csv, '--val_csv', csv,
             '--test_csv', csv, '--input_mode', mode, '--save_dir', str(work / 'checkpoints'),
             '--log_dir', str(work / 'logs'), '--overwrite', *extra]
    if args.epochs:
        train += ['--epochs', str(args.epochs)]
    run(train)
    run([sys.executable, str(ROOT / 'evaluate_facial_palsy.py'), '--model_path', str(work / 'checkpoints' / 'best_model.pth'),
         '--data_root', data_root, '--test_csv', csv, '--output_dir', str(work / 'evaluation')])
    result = json.loads((work / 'evaluation' / 'metrics.json').read_text())
    row = {'variant': name, 'input': mode, 'loss': 'ordinal' if '--loss' in extra else 'cross-entropy',
           'metrics': result['metrics'], 'side_accuracy': result.get('side_accuracy'), 'n': result.get('n')}
    baseline_file = work / 'logs' / 'baseline_metrics.json'
    if baseline_file.is_file():
        row['baseline'] = json.loads(baseline_file.read_text())
    return row


def interval(entry: dict | None) -> str:
    if not entry:
        return '-'
    return f'{entry["value"]:.3f} ({entry["ci_low"]:.3f}-{entry["ci_high"]:.3f})'


def table(rows: list[dict]) -> str:
    lines = ['| model | input | loss | test macro F1 (95% CI) | test QWK (95% CI) | side accuracy (95% CI) |',
             '| --- | --- | --- | --- | --- | --- |']
    for row in rows:
        model = 'HTNet + side head' if 'multitask' in row['variant'] else 'HTNet'
        lines.append(f'| {model} | {row["input"]} | {row["loss"]} | {interval(row["metrics"].get("macro_f1"))} | '
                     f'{interval(row["metrics"].get("qwk"))} | {interval(row.get("side_accuracy"))} |')
        baseline = row.get('baseline')
        if baseline and baseline.get('test'):
            test = baseline['test']
            lines.append(f'| symmetry baseline (logistic regression on 5-landmark measurements) | landmarks | '
                         f'cross-entropy | {test["macro_f1"]:.3f} | {test["qwk"]:.3f} | - |')
    return '\n'.join(lines)


def main(argv=None) -> list[dict]:
    args = get_args_parser().parse_args(argv)
    rows = []
    for name in args.variants:
        if VARIANTS[name][2] and not Path(args.pairs_csv).is_file():
            print(f'skipping {name}: no rest / expression pairs at {args.pairs_csv} (prepare_dataset.py '
                  f'--dataset_type synthetic --pairs)')
            continue
        rows.append(run_variant(name, args))
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / 'synthetic_results.json').write_text(json.dumps(rows, indent=2))
    (output / 'synthetic_results.md').write_text(table(rows) + '\n')
    print(table(rows))
    return rows


if __name__ == '__main__':
    main()
