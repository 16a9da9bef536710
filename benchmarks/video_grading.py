"""Video grading benchmark: is a clip graded better from its rest -> apex movement (a flow model) or from its apex
frame alone (a single-photo model)?

Synthetic examination clips (``prepare_dataset.py --dataset_type synthetic --video``, face family a: rest -> brow
raise, eye closure or smile -> rest, with head motion, blinks and camera noise) are turned into rest / apex pairs by
``prepare_dataset.py --dataset_type video``, that is by the apex finder (``video.find_apex``), not by the true apex
of ``clips.csv``, with subject-disjoint train / val / test splits (70/15/15 of the subjects of each grade). On the
same pairs CSV, so on the same subjects and splits, two models are trained with the CPU quick-start recipe (the
``cpu_quickstart`` profile of config_examples.yaml, its 60 epochs; about a minute a run on one CPU thread):

* flow: ``--input_mode flow``, the optical flow from the rest frame to the apex frame;
* photo: the default regions mode, the apex frame alone (the ``image_path`` of the pairs).

Both are evaluated on the held-out test subjects with ``evaluate_facial_palsy.py`` (photo level = one clip, patient
level = the mean of a subject's clips), for each training seed. Printed and written: mean +- sd over seeds of QWK,
macro F1 and MAE at both levels, and how often the apex finder landed within one frame of the true apex.

    python benchmarks/video_grading.py                     # 72 subjects x 3 clips, 3 seeds
    python benchmarks/video_grading.py --subjects 12 --seeds 0 --epochs 1 --name smoke   # a quick look

Clips, pairs and runs go to ``--work_dir`` (default ./benchmarks/runs/video_grading; drawn and prepared once, and a
run whose evaluation exists is not repeated). Results: ``benchmarks/results/video_grading.json`` (every number, the
command and the commit) and ``.md`` (the table); with ``--name`` they are ``video_grading_<name>.*``.
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

MODELS = {'flow': ['--input_mode', 'flow'], 'photo': ['--input_mode', 'regions']}
MODEL_LABELS = {'flow': 'flow (rest -> apex pair)', 'photo': 'photo (apex frame)'}
CLIP_SEED = 4004   # other subjects than the other benchmarks' sets
SPLIT_SEED = 7
RECIPE = ['--config', str(ROOT / 'config_examples.yaml'), '--profile', 'cpu_quickstart']


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--subjects', type=int, default=72, help='synthetic subjects (default: 72)')
    parser.add_argument('--clips', type=int, default=3, help='clips per subject, one movement each (default: 3)')
    parser.add_argument('--image_size', type=int, default=256, help='frame size in pixels (default: 256)')
    parser.add_argument('--clip_frames', type=int, default=32, help='frames per clip (default: 32)')
    parser.add_argument('--epochs', type=int, default=60,
                        help='training epochs (default: 60, the cpu_quickstart profile\'s)')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2], help='training seeds (default: 0 1 2)')
    parser.add_argument('--models', nargs='+', default=list(MODELS), choices=list(MODELS),
                        help='flow: the rest -> apex pair; photo: the apex frame alone (default: both)')
    parser.add_argument('--jobs', type=int, default=1, help='runs at once, one thread each (default: 1)')
    parser.add_argument('--name', default=None, help='name of this benchmark run in the results file names')
    parser.add_argument('--work_dir', type=Path, default=ROOT / 'benchmarks' / 'runs' / 'video_grading',
                        help='clips, pairs, checkpoints and evaluations (kept: what is done is not repeated)')
    parser.add_argument('--results_dir', type=Path, default=ROOT / 'benchmarks' / 'results',
                        help='where video_grading.json / .md go')
    return parser


# data

def prepare_data(args: argparse.Namespace) -> tuple[Path, Path, dict]:
    """Draw the clips and prepare their rest / apex pairs (once per work folder and settings); returns the frames
    folder (the --data_root of training), the pairs CSV and how well the finder found the true apex."""
    data = args.work_dir / f'data_{args.subjects}x{args.clips}_{args.image_size}px_{args.clip_frames}f'
    clips, pairs = data / 'clips', data / 'pairs.csv'
    frames = data / 'pairs_frames'
    if not pairs.is_file():
        run([sys.executable, 'prepare_dataset.py', '--dataset_type', 'synthetic', '--video', '--family', 'a',
             '--output_root', str(clips), '--num_subjects', str(args.subjects), '--images_per_subject',
             str(args.clips), '--image_size', str(args.image_size), '--clip_frames', str(args.clip_frames),
             '--seed', str(CLIP_SEED), '--overwrite', '--quiet'], log=data / 'prepare.log', threads=1)
        run([sys.executable, 'prepare_dataset.py', '--dataset_type', 'video', '--data_root', str(clips),
             '--output_csv', str(pairs), '--frames_dir', str(frames), '--split_ratio', '0.7', '0.15', '0.15',
             '--seed', str(SPLIT_SEED), '--device', 'cpu', '--overwrite', '--quiet'],
            log=data / 'prepare.log', threads=1)
    table = pd.read_csv(pairs)
    truth = pd.read_csv(clips / 'clips.csv').set_index('clip_path')['apex_frame']
    error = (table['apex_frame'] - table['clip_path'].map(truth)).abs()
    finder = {'clips': int(len(truth)), 'pairs': int(len(table)), 'left_out': int(len(truth) - len(table)),
              'within_one_frame': float((error <= 1).mean()), 'mean_abs_error_frames': float(error.mean()),
              'test_subjects': int(table.loc[table['split'] == 'test', 'subject'].nunique()),
              'test_clips': int((table['split'] == 'test').sum())}
    return frames, pairs, finder


# runs

def one_run(model: str, seed: int, args: argparse.Namespace, frames: Path, pairs: Path) -> dict:
    """Train one model on the train subjects and evaluate it on the test subjects; returns ``metrics.json``."""
    folder = args.work_dir / f'{pairs.parent.name}_e{args.epochs}' / f'{model}_seed{seed}'
    metrics = folder / 'eval' / 'metrics.json'
    if metrics.is_file():
        return json.loads(metrics.read_text())
    log, checkpoint = folder / 'run.log', folder / 'checkpoints' / 'best_model.pth'
    cache = args.work_dir / 'landmark_cache'
    if not checkpoint.is_file():
        run([sys.executable, 'train_facial_palsy.py', *RECIPE, *MODELS[model], '--data_root', str(frames),
             '--train_csv', str(pairs), '--val_csv', str(pairs), '--test_csv', str(pairs), '--epochs', str(args.epochs),
             '--seed', str(seed),
             '--save_dir', str(folder / 'checkpoints'), '--log_dir', str(folder / 'logs'), '--cache_dir', str(cache),
             '--threads', '1', '--save_interval', '0', '--device', 'cpu', '--overwrite'], log=log, threads=1)
    run([sys.executable, 'evaluate_facial_palsy.py', '--model_path', str(checkpoint), '--data_root', str(frames),
         '--test_csv', str(pairs), '--split', 'test', '--output_dir', str(folder / 'eval'), '--cache_dir', str(cache),
         '--device', 'cpu', '--overwrite'], log=log, threads=1)
    return json.loads(metrics.read_text())


# summary

def values(payload: dict) -> dict[str, float]:
    """Flat numbers of one evaluation: clip_<metric> (one clip = one pair or apex frame) and patient_<metric>."""
    out = {f'clip_{name}': payload['metrics'][name]['value'] for name in METRICS}
    patients = payload.get('subject_metrics')
    out.update({f'patient_{name}': patients['metrics'][name]['value'] if patients else float('nan')
                for name in METRICS})
    return out


def summarise(results: dict[tuple[str, int], dict]) -> list[dict]:
    """One row per model: mean and sample sd over seeds of every value."""
    rows = []
    for model in [m for m in MODELS if any(k[0] == m for k in results)]:
        seeds = sorted(k[1] for k in results if k[0] == model)
        table = pd.DataFrame([values(results[(model, s)]) for s in seeds])
        rows.append({'model': model, 'seeds': seeds, 'mean': table.mean().to_dict(),
                     'sd': table.std(ddof=1).fillna(0.0).to_dict(), 'per_seed': table.to_dict(orient='list')})
    return rows


def markdown(rows: list[dict], finder: dict, args: argparse.Namespace) -> str:
    def cell(row: dict, key: str) -> str:
        mean, sd = row['mean'][key], row['sd'][key]
        return '-' if np.isnan(mean) else f'{mean:.3f} +- {sd:.3f}'

    keys = ('clip_qwk', 'clip_macro_f1', 'clip_mae', 'patient_qwk', 'patient_macro_f1', 'patient_mae')
    lines = ['| model | seeds | clip QWK | clip macro F1 | clip MAE | patient QWK | patient macro F1 | patient MAE |',
             '| --- | --- |' + ' --- |' * len(keys)]
    for row in rows:
        lines.append(f'| {MODEL_LABELS[row["model"]]} | {len(row["seeds"])} | '
                     + ' | '.join(cell(row, k) for k in keys) + ' |')
    lines.append('')
    lines.append(f'{finder["clips"]} synthetic clips (family a, {args.subjects} subjects x {args.clips}, '
                 f'{args.image_size} px, {args.clip_frames} frames, head motion); the apex finder left out '
                 f'{finder["left_out"]} and was within one frame of the true apex for '
                 f'{100 * finder["within_one_frame"]:.0f}% of the rest (mean error {finder["mean_abs_error_frames"]:.2f} '
                 f'frames). Test: {finder["test_clips"]} clips of {finder["test_subjects"]} held-out subjects; '
                 f'cpu_quickstart recipe, {args.epochs} epochs; mean +- sd over seeds.')
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    args = get_args_parser().parse_args(argv)
    args.work_dir = args.work_dir.resolve()
    started = time.time()
    frames, pairs, finder = prepare_data(args)
    print(f'data ready ({time.time() - started:.0f} s): {finder}', flush=True)
    jobs = [(model, seed) for seed in args.seeds for model in args.models]
    results: dict[tuple[str, int], dict] = {}
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {job: pool.submit(one_run, *job, args, frames, pairs) for job in jobs}
        for (model, seed), future in futures.items():
            try:
                results[(model, seed)] = future.result()
                print(f'{model}, seed {seed}: done ({time.time() - started:.0f} s)', flush=True)
            except RuntimeError as error:
                print(f'{model}, seed {seed}: {error}', file=sys.stderr, flush=True)
    rows = summarise(results)
    table = markdown(rows, finder, args)
    command = shlex.join(['python', 'benchmarks/video_grading.py', *(argv if argv is not None else sys.argv[1:])])
    name = 'video_grading' + (f'_{args.name}' if args.name else '')
    record = {'command': command, 'commit': commit(), 'recipe': 'cpu_quickstart', 'epochs': args.epochs,
              'subjects': args.subjects, 'clips_per_subject': args.clips, 'image_size': args.image_size,
              'clip_frames': args.clip_frames, 'clip_seed': CLIP_SEED, 'split_seed': SPLIT_SEED,
              'apex_finder': finder, 'seconds': round(time.time() - started), 'work_dir': str(args.work_dir),
              'rows': rows}
    write_results(args.results_dir, name, record, table)
    print(f'({time.time() - started:.0f} s; {command})')
    return rows


if __name__ == '__main__':
    main()
