"""Out-of-family benchmark: does a training recipe grade faces unlike the ones it was trained on?

The toolkit draws two independently designed families of synthetic faces (``prepare_dataset.py --dataset_type
synthetic --family a|b``). A recipe is trained on one family and tested on the other (both directions), on its own
family's test subjects, and trained and tested on the mix of both, each over several training seeds. Every number
is a subject-disjoint test: the cross-family test takes every subject of the other family, which no run sees; the
in-family and mix tests take the test split of ``prepare_dataset.py`` (subjects never used for training or for the
choice of the best epoch). Printed and written: mean +- sd over seeds of photo-level and patient-level QWK, macro
F1 and MAE, and the share of photos the out-of-distribution flag raises.

    # today's quick-start recipe (the cpu_quickstart profile of config_examples.yaml), 3 seeds
    python benchmarks/generalisation.py
    # the same with extra training / evaluation flags, under a name of its own
    python benchmarks/generalisation.py --name ema --train_flags="--ema 0.99"
    # a quick screen: 2 seeds, the cross-family directions only
    python benchmarks/generalisation.py --name wd01 --train_flags="--weight_decay 0.1" --seeds 0 1 --train_on a b

Faces, splits and runs go to ``--work_dir`` (default ./benchmarks/runs/generalisation); a run whose evaluation
exists is not repeated, so adding seeds or recipes costs only the new runs. Results: ``benchmarks/results/
generalisation_<name>.json`` (every number, the commands and the commit) and ``.md`` (the table).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.provenance import METRICS, commit, run, write_results  # noqa: E402

FAMILIES = ('a', 'b')
FAMILY_SEEDS = {'a': 1001, 'b': 2002}   # face seeds: other subjects than the quick start's set (seed 42)
SPLIT_SEED = 7
TRAIN_ON = ('a', 'b', 'mix')
REAL_PHOTOS = ('grace_hopper.jpg',)   # shipped with matplotlib
# the quick-start recipe as it stood before this benchmark chose one: every setting explicit, so later changes of
# the defaults never move it
RECIPES = {
    'quickstart_v1': {
        'train': ['--dim', '32', '--heads', '2', '--block_repeats', '1', '1', '2', '--batch_size', '16',
                  '--epochs', '30', '--learning_rate', '0.001', '--weight_decay', '0.05', '--scheduler', 'cosine',
                  '--warmup_epochs', '1',
                  '--augmentation', 'standard', '--label_smoothing', '0', '--select_metric', 'macro_f1',
                  '--loss', 'ce', '--no-flip_swap_side', '--ema', '0'],
        'evaluate': ['--tta', 'none'],
    },
    'cpu_quickstart': {'train': ['--config', str(ROOT / 'config_examples.yaml'), '--profile', 'cpu_quickstart'],
                       'evaluate': []},
}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--recipe', default='cpu_quickstart', choices=list(RECIPES),
                        help='base recipe: cpu_quickstart (the profile as it is now) or quickstart_v1 (the earlier '
                             'quick-start recipe, every flag explicit) (default: cpu_quickstart)')
    parser.add_argument('--name', default=None, help='name of this recipe in the results (default: --recipe)')
    parser.add_argument('--train_flags', default='',
                        help='extra train_facial_palsy.py flags as one string: --train_flags="--ema 0.99"')
    parser.add_argument('--eval_flags', default='',
                        help='extra evaluate_facial_palsy.py (and demo_inference.py) flags as one string: '
                             '--eval_flags="--tta mirror"')
    parser.add_argument('--checkpoints_from', default=None, metavar='NAME',
                        help='evaluate the models trained under another --name instead of training (e.g. to measure '
                             '--eval_flags="--tta mirror" on the same models)')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2], help='training seeds (default: 0 1 2)')
    parser.add_argument('--train_on', nargs='+', default=list(TRAIN_ON), choices=TRAIN_ON,
                        help='a: train on family a (tests: a, b); b: likewise; mix: both (test: the mix)')
    parser.add_argument('--subjects', type=int, default=120, help='subjects per family (default: 120)')
    parser.add_argument('--photos', type=int, default=4, help='photos per subject (default: 4)')
    parser.add_argument('--jobs', type=int, default=2, help='runs at once, one thread each (default: 2)')
    parser.add_argument('--work_dir', type=Path, default=ROOT / 'benchmarks' / 'runs' / 'generalisation',
                        help='faces, splits, checkpoints, logs and evaluations (kept: runs done are not repeated)')
    parser.add_argument('--results_dir', type=Path, default=ROOT / 'benchmarks' / 'results',
                        help='where generalisation_<name>.json / .md go')
    return parser


# data

def prepare_data(args: argparse.Namespace) -> dict[str, Path]:
    """Both families drawn and split (subject-disjoint 70/15/15); CSVs whose paths are relative to ``data``:
    ``a``, ``b`` (with splits), ``mix`` (both), ``a_all`` / ``b_all`` (every photo as test)."""
    data = args.work_dir / 'data'
    csvs, manifests = {}, {}
    for family in FAMILIES:
        faces = data / f'faces_{family}'
        split_csv = data / f'split_{family}.csv'
        if not (split_csv.is_file() and (faces / 'synthetic_faces.json').is_file()):  # a work dir keeps its faces
            run([sys.executable, 'prepare_dataset.py', '--dataset_type', 'synthetic', '--family', family,
                 '--output_root', str(faces), '--num_subjects', str(args.subjects), '--images_per_subject',
                 str(args.photos), '--seed', str(FAMILY_SEEDS[family])], log=data / 'prepare.log')
            split_csv.unlink(missing_ok=True)
            run([sys.executable, 'prepare_dataset.py', '--dataset_type', 'FNP', '--data_root', str(faces),
                 '--output_csv', str(split_csv), '--split_ratio', '0.7', '0.15', '0.15', '--seed', str(SPLIT_SEED)],
                log=data / 'prepare.log')
        manifests[family] = json.loads((faces / 'synthetic_faces.json').read_text())
        table = pd.read_csv(split_csv)
        table['image_path'] = f'faces_{family}/' + table['image_path'].astype(str)
        csvs[family] = data / f'{family}.csv'
        table.to_csv(csvs[family], index=False)
        everything = table.assign(split='test')
        csvs[f'{family}_all'] = data / f'{family}_all.csv'
        everything.to_csv(csvs[f'{family}_all'], index=False)
    mix = pd.concat([pd.read_csv(csvs[f]) for f in FAMILIES], ignore_index=True)
    csvs['mix'] = data / 'mix.csv'
    mix.to_csv(csvs['mix'], index=False)
    real = data / 'real_photos'  # real, healthy faces: the OOD flag should call them unlike the training photos
    real.mkdir(exist_ok=True)
    for name in REAL_PHOTOS:
        target = real / name
        if not target.is_file():
            import matplotlib.cbook
            with matplotlib.cbook.get_sample_data(name) as source:
                target.write_bytes(source.read())
    args.generator = {f: {k: m.get(k) for k in ('generator', 'version', 'family', 'seed')}
                      for f, m in manifests.items()}
    return csvs


# runs

def tests_of(train_on: str) -> dict[str, str]:
    """test name -> CSV key for a model trained on ``train_on``."""
    if train_on == 'mix':
        return {'mix': 'mix'}
    other = 'b' if train_on == 'a' else 'a'
    return {train_on: train_on, other: f'{other}_all'}


def one_run(train_on: str, seed: int, args: argparse.Namespace, csvs: dict[str, Path]) -> dict:
    """Train once and evaluate on each test of ``train_on``; returns {test: metrics.json payload}."""
    recipe = RECIPES[args.recipe]
    folder = args.work_dir / args.name / f'train_{train_on}_seed{seed}'
    tests = tests_of(train_on)
    done = {test: folder / f'eval_{test}' / 'metrics.json' for test in tests}
    real_csv = folder / 'eval_real' / 'predictions.csv'
    if all(path.is_file() for path in done.values()) and real_csv.is_file():
        return collect(done, real_csv)
    data = args.work_dir / 'data'
    log = folder / 'run.log'
    trained = args.work_dir / args.checkpoints_from / folder.name if args.checkpoints_from else folder
    checkpoint = trained / 'checkpoints' / 'best_model.pth'
    if args.checkpoints_from and not checkpoint.is_file():
        raise RuntimeError(f'--checkpoints_from {args.checkpoints_from}: no {checkpoint}')
    if not checkpoint.is_file():
        train = [sys.executable, 'train_facial_palsy.py', *recipe['train'], '--data_root', str(data),
                 '--train_csv', str(csvs[train_on]), '--val_csv', str(csvs[train_on]), '--test_csv',
                 str(csvs[train_on]), '--seed', str(seed),
                 '--save_dir', str(folder / 'checkpoints'), '--log_dir', str(folder / 'logs'),
                 '--cache_dir', str(args.work_dir / 'landmark_cache'), '--threads', '1', '--save_interval', '0',
                 '--overwrite', *shlex.split(args.train_flags)]
        run(train, log=log, threads=1)
    for test, key in tests.items():
        if done[test].is_file():
            continue
        run([sys.executable, 'evaluate_facial_palsy.py', '--model_path', str(checkpoint), '--data_root', str(data),
             '--test_csv', str(csvs[key]), '--split', 'test', '--output_dir', str(folder / f'eval_{test}'),
             '--cache_dir', str(args.work_dir / 'landmark_cache'), '--overwrite', *recipe['evaluate'],
             *shlex.split(args.eval_flags)], log=log, threads=1)
    if not real_csv.is_file():
        run([sys.executable, 'demo_inference.py', '--model_path', str(checkpoint), '--image_dir',
             str(data / 'real_photos'), '--output_csv', str(real_csv), '--overwrite', *recipe['evaluate'],
             *shlex.split(args.eval_flags)], log=log, threads=1)
    return collect(done, real_csv)


def collect(done: dict[str, Path], real_csv: Path) -> dict:
    """{test: metrics.json payload}, each with the OOD flags of the real photos under ``real_photos``."""
    real = pd.read_csv(real_csv)
    flags = real['ood_flag'].astype(str).str.lower().isin(['true', '1']) if 'ood_flag' in real else None
    payloads = {test: json.loads(path.read_text()) for test, path in done.items()}
    for payload in payloads.values():
        payload['real_photos'] = {'n': len(real), 'flagged': None if flags is None else int(flags.sum()),
                                  'grades': real['grade'].astype(str).tolist() if 'grade' in real else []}
    return payloads


# summary

def values(payload: dict) -> dict[str, float]:
    """Flat numbers of one evaluation: photo_<metric>, patient_<metric>, ood_flagged."""
    out = {}
    for name in METRICS:
        out[f'photo_{name}'] = payload['metrics'][name]['value']
        patients = payload.get('subject_metrics')
        out[f'patient_{name}'] = patients['metrics'][name]['value'] if patients else float('nan')
    ood = payload.get('ood') or {}
    share = ood.get('flagged_share')
    out['ood_flagged'] = float(share) if isinstance(share, (int, float)) else float('nan')
    real = payload.get('real_photos') or {}
    known = real.get('flagged') is not None and real.get('n')
    out['real_flagged'] = real['flagged'] / real['n'] if known else float('nan')
    return out


def summarise(results: dict[tuple[str, str, int], dict]) -> list[dict]:
    """One row per (trained on, tested on): mean and sd over seeds of every value."""
    rows = []
    for train_on, test in sorted({(k[0], k[1]) for k in results}, key=lambda k: (TRAIN_ON.index(k[0]), k[1])):
        seeds = sorted(k[2] for k in results if k[:2] == (train_on, test))
        table = pd.DataFrame([values(results[(train_on, test, s)]) for s in seeds])
        kind = 'mix' if train_on == 'mix' else ('in-family' if train_on == test else 'cross-family')
        rows.append({'train_on': train_on, 'test_on': test, 'kind': kind, 'seeds': seeds,
                     'mean': table.mean().to_dict(), 'sd': table.std(ddof=1).fillna(0.0).to_dict(),
                     'per_seed': table.to_dict(orient='list')})
    return rows


def markdown(rows: list[dict], name: str) -> str:
    def cell(row: dict, key: str) -> str:
        mean, sd = row['mean'][key], row['sd'][key]
        if np.isnan(mean):
            return '-'
        if key in ('ood_flagged', 'real_flagged'):
            return f'{100 * mean:.0f}%'
        return f'{mean:.3f} +- {sd:.3f}'

    lines = [f'| {name}: trained on -> tested on | seeds | photo QWK | photo macro F1 | photo MAE | patient QWK | '
             f'patient macro F1 | patient MAE | test photos OOD-flagged | real photo OOD-flagged |',
             '| --- | --- |' + ' --- |' * 8]
    for row in rows:
        label = f'{row["train_on"]} -> {row["test_on"]} ({row["kind"]})'
        lines.append(f'| {label} | {len(row["seeds"])} | ' + ' | '.join(
            cell(row, k) for k in ('photo_qwk', 'photo_macro_f1', 'photo_mae', 'patient_qwk', 'patient_macro_f1',
                                   'patient_mae', 'ood_flagged', 'real_flagged')) + ' |')
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    args = get_args_parser().parse_args(argv)
    args.name = args.name or args.recipe
    args.work_dir = args.work_dir.resolve()
    started = time.time()
    csvs = prepare_data(args)
    jobs = [(train_on, seed) for seed in args.seeds for train_on in args.train_on]
    results: dict[tuple[str, str, int], dict] = {}
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {job: pool.submit(one_run, *job, args, csvs) for job in jobs}
        for (train_on, seed), future in futures.items():
            try:
                for test, payload in future.result().items():
                    results[(train_on, test, seed)] = payload
                print(f'{args.name}: trained on {train_on}, seed {seed}: done ({time.time() - started:.0f} s)',
                      flush=True)
            except RuntimeError as error:
                print(f'{args.name}: trained on {train_on}, seed {seed}: {error}', file=sys.stderr, flush=True)
    rows = summarise(results)
    table = markdown(rows, args.name)
    command = shlex.join(['python', 'benchmarks/generalisation.py', *(argv if argv is not None else sys.argv[1:])])
    record = {'name': args.name, 'recipe': args.recipe, 'train_flags': args.train_flags,
              'checkpoints_from': args.checkpoints_from,
              'eval_flags': args.eval_flags, 'command': command, 'commit': commit(), 'subjects_per_family':
              args.subjects, 'photos_per_subject': args.photos, 'family_seeds': FAMILY_SEEDS, 'faces': args.generator,
              'work_dir': str(args.work_dir), 'rows': rows}
    write_results(args.results_dir, f'generalisation_{args.name}', record, table)
    print(f'({time.time() - started:.0f} s; {command})')
    return rows


if __name__ == '__main__':
    main()
