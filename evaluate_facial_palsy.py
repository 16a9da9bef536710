"""Score a trained HTNet checkpoint on the held-out photos of an annotation CSV (House-Brackmann grades).

The network is rebuilt from the checkpoint's ``model_args`` and photos are read with its ``preprocess`` (the same
landmarks, face square and region mosaic as in training; flags given only override). Everything lands in
``--output_dir``:

- ``metrics.json``: accuracy, macro / weighted F1, per-class accuracy, mean class accuracy, quadratic weighted
  kappa, mean absolute grade error and accuracy within one grade, each with a 95% bootstrap interval. Photos of
  one patient are not independent, so whole subjects are resampled when the CSV names them.
- ``confusion_matrix.png`` (counts and row-normalised), ``per_class_accuracy.png``,
- ``classification_report.txt``, ``predictions.csv`` (one row per photo with its class probabilities, where
  its landmarks came from and the ``sym_*`` symmetry measurements of those landmarks; with a side head also the
  predicted side and its probabilities), ``predictions.npz`` (labels, predictions, probabilities), ``args.yaml``, and
  ``skipped.csv`` when photos could not be used.
- ``symmetry_by_grade.csv`` (mean of each symmetry measurement per true grade) and ``asymmetry_by_grade.png``
  (box plot of the asymmetry index per true grade): does the geometry the network sees grow with the grade?
- Patient-level grades when the photos name their subjects (a ``subject`` column, or the file-name rule) and some
  subject has several: ``subject_metrics`` in ``metrics.json`` (the same metrics, from the mean of each subject's
  photo probabilities, with intervals from resampling subjects), a second block of the printed table, and
  ``subject_predictions.csv`` (one row per subject).

Several checkpoints (``--model_path a.pth b.pth``, or a ``--cv`` run's save folder) are scored as an ensemble: the
mean of their probabilities. ``--tta mirror`` / ``mirror_shift`` also average mirrored and shifted views of every
photo (``ensemble.py``). ``metrics.json`` records ``models``, ``skipped_models``, ``tta`` and ``tta_views``.

Every photo gets an out-of-distribution score (``ood.py``: distance to the training photos' features, 1.0 = the
threshold; the mean over an ensemble's members) and flag in ``predictions.csv`` (``ood_score``, ``ood_flag``);
``metrics.json``'s ``ood`` block says what the flag means, how many photos were flagged and, when some were, the
metrics of the photos that were not. A checkpoint without OOD statistics gives NaN scores and no flags.

A checkpoint with a side head adds ``side_accuracy`` (over photos whose side is known, with its bootstrap
interval) and the side confusion matrix to ``metrics.json``. A checkpoint whose ``prediction`` entry is
``ordinal_median`` is scored on the median grade of its predicted distribution (``losses.ordinal_predict``).

Usage::

    python evaluate_facial_palsy.py --model_path ./checkpoints/fnp/best_model.pth \\
        --data_root ./datasets/facial_palsy/FNP --test_csv ./datasets/facial_palsy/fnp_annotation.csv \\
        --dataset_type FNP --num_classes 6
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import metrics as M
import utils
from annotations import SIDE_CLASSES, grade_names, subject_grades
from checkpoints import check_input_size
from ensemble import (DEFAULT_TTA, MODEL_PATHS_HELP, OOD_WARNING, TTA_MODES, Ensemble, finite_or_none,
                      load_members)
from facial_palsy_dataset import (INPUT_MODES, CKPlusFacialPalsyDataset, FacialPalsyDataset, ImageReadError,
                                  LandmarkDetector)
from inference import SYMMETRY_COLUMNS, face_symmetry, probability_column, symmetry_row
from losses import subject_grades_from_photos
from symmetry import MEASUREMENT_NAMES

CONFIDENCE = 0.95
OUTPUT_FILES = ('metrics.json', 'confusion_matrix.png', 'per_class_accuracy.png', 'classification_report.txt',
                'predictions.csv', 'predictions.npz', 'args.yaml', 'skipped.csv', 'symmetry_by_grade.csv',
                'asymmetry_by_grade.png', 'subject_predictions.csv')
# flag -> the preprocess entry it may override (the face square, the regions; the network must still fit)
PREPROCESS_FLAGS = {'image_size': 'face_size', 'region_size': 'region_size', 'input_mode': 'input_mode'}


# command line

def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Evaluate a trained HTNet facial palsy checkpoint: metrics with 95% bootstrap intervals, '
                    'confusion matrix, classification report and per-photo predictions.',
        formatter_class=utils.HelpFormatter)
    utils.add_config_args(parser)
    parser.add_argument('--model_path', required=True, nargs='+',
                        help=MODEL_PATHS_HELP + ' are scored as an ensemble: their probabilities are '
                                                 'averaged. They must predict the same classes from the same '
                                                 'inputs; one that cannot be opened is skipped and recorded')
    parser.add_argument('--tta', default=DEFAULT_TTA, choices=list(TTA_MODES),
                        help='test-time augmentation: none; mirror (the photo and its mirror image, the side '
                             'prediction swapped back); mirror_shift (also crops moved by 2 face-square pixels). '
                             'The softmax probabilities of the views are averaged. Not for input_mode flow')

    data = parser.add_argument_group('data')
    data.add_argument('--data_root', default=None,
                      help='folder the CSV image paths are relative to, or of grade_0..grade_5 folders when no '
                           'CSV is given (default: the folder of --test_csv)')
    data.add_argument('--test_csv', default=None,
                      help='annotation CSV (image_path, grade, side, split[, subject]); its --split rows are '
                           'scored. For CK+: the grade mapping CSV')
    data.add_argument('--split', default='test', choices=['test', 'val', 'train', 'all'],
                      help='rows of the CSV to score; all = every row')
    data.add_argument('--dataset_type', default='FNP', choices=['FNP', 'CK+'],
                      help='FNP: annotation CSV or grade_N folders; CK+: the CK+ layout with a grade mapping CSV')
    data.add_argument('--num_classes', type=int, default=None, choices=[6, 3],
                      help="the checkpoint's number of classes (6 = HB I-VI, 3 = simplified); only checked, "
                           'since a network scores the classes it was trained for (default: the checkpoint\'s)')
    data.add_argument('--cache_dir', default=None,
                      help='landmark cache shared with training (default: ./.cache/landmarks)')

    override = parser.add_argument_group("preprocessing overrides (default: the checkpoint's; change only to "
                                         'study their effect)')
    override.add_argument('--image_size', type=int, default=None,
                          help='side of the square face crop before the regions are cut from it')
    override.add_argument('--region_size', type=int, default=None,
                          help='side of each region crop (the network input is twice this and must fit it)')
    override.add_argument('--input_mode', default=None, choices=list(INPUT_MODES),
                          help='regions: 2x2 eye / mouth-corner mosaic; face: the whole face')

    run = parser.add_argument_group('run')
    run.add_argument('--output_dir', default='./evaluation_results',
                     help='folder of the metrics, plots, report and predictions (files of an earlier evaluation '
                          'there are replaced, and listed when they are)')
    run.add_argument('--overwrite', action='store_true',
                     help='replace files of the same names in --output_dir that are not an earlier evaluation\'s')
    run.add_argument('--batch_size', type=int, default=64, help='photos per forward pass')
    run.add_argument('--num_workers', type=int, default=0, help='DataLoader worker processes')
    run.add_argument('--n_boot', type=int, default=1000,
                     help='bootstrap resamples for the 95%% intervals (resampling subjects when known)')
    run.add_argument('--seed', type=int, default=0, help='seed of the bootstrap resampling')
    run.add_argument('--device', default='auto', help='auto (CUDA when available), cpu, cuda or cuda:N')
    run.add_argument('--amp', nargs='?', const='bf16', default='none', choices=['none', 'bf16', 'fp16'],
                     help='mixed precision on CUDA (--amp alone = bf16); ignored on CPU')
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Refuse impossible settings with one line before anything slow runs."""
    if args.batch_size < 1:
        raise utils.UserError(f'--batch_size {args.batch_size}: must be at least 1')
    if args.n_boot < 1:
        raise utils.UserError(f'--n_boot {args.n_boot}: must be at least 1')
    if args.data_root is None:
        if args.test_csv is None:
            raise utils.UserError('give --data_root (and usually --test_csv)')
        args.data_root = str(Path(args.test_csv).parent)
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise utils.UserError(f'--output_dir {output_dir} is a file, not a folder')


# checkpoint and data

def resolve_preprocess(preprocess: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The checkpoint's preprocessing with the override flags applied (each one announced)."""
    preprocess = dict(preprocess)
    for flag, key in PREPROCESS_FLAGS.items():
        value = getattr(args, flag)
        if value is not None and value != preprocess.get(key):
            print(f'note: --{flag} {value} overrides the checkpoint\'s {key} {preprocess.get(key)}')
            preprocess[key] = value
    if args.region_size is not None:
        preprocess['input_size'] = 2 * int(preprocess['region_size'])
    return preprocess


def check_num_classes(num_classes: int, args: argparse.Namespace) -> None:
    """``--num_classes`` is only a check: a network scores the classes it was trained for."""
    if args.num_classes is not None and args.num_classes != num_classes:
        raise utils.UserError(f'--num_classes {args.num_classes}: {model_label(args)} was trained for {num_classes} '
                              f'classes ({", ".join(grade_names(num_classes))}); drop the flag or evaluate a '
                              f'{args.num_classes}-class checkpoint')


def model_label(args: argparse.Namespace) -> str:
    """``--model_path`` as one string (its checkpoints joined when there are several)."""
    paths = args.model_path if isinstance(args.model_path, (list, tuple)) else [args.model_path]
    return ' '.join(map(str, paths))


def load_ensemble(args: argparse.Namespace, device: torch.device) -> tuple[Ensemble, dict[str, Any]]:
    """The checkpoint(s) of ``--model_path`` as an ensemble with the ``--tta`` views, and the preprocess with the
    override flags applied (every member must take its inputs)."""
    members, skipped = load_members(args.model_path, device)
    first = members[0].trained
    check_num_classes(first.num_classes, args)
    preprocess = resolve_preprocess(first.preprocess, args)
    for member in members:
        check_input_size(preprocess, member.model, member.path, hint='; drop --region_size / --input_mode')
    ensemble = Ensemble(members, args.tta, skipped, input_mode=preprocess.get('input_mode', 'regions'))
    return ensemble, preprocess


def ood_summary(ensemble: Ensemble, outputs: dict[str, Any], groups: list[str] | None, num_classes: int,
                args: argparse.Namespace) -> dict[str, Any]:
    """The ``ood`` block of ``metrics.json``: what the flag means, how many photos were scored and flagged, and
    the metrics (with 95% intervals) of the photos not flagged when some were."""
    scores, flags = outputs['ood_score'], outputs['ood_flag']
    scored = np.isfinite(scores)
    block: dict[str, Any] = {'description': ensemble.ood_description(), 'warning': OOD_WARNING,
                             'n_scored': int(scored.sum()), 'n_flagged': int(flags.sum()),
                             'flagged_share': float(flags.mean()) if len(flags) else 0.0,
                             'mean_score': finite_or_none(np.nanmean(scores)) if scored.any() else None}
    keep = ~flags
    if flags.any() and keep.any():
        labels, predictions = outputs['labels'][keep], outputs['predictions'][keep]
        subset_groups = None if groups is None else [g for g, k in zip(groups, keep) if k]
        intervals = M.bootstrap_metrics(labels, predictions, num_classes, groups=subset_groups, n_boot=args.n_boot,
                                        seed=args.seed, alpha=1.0 - CONFIDENCE)
        block['unflagged'] = {'n': int(keep.sum()),
                              'metrics': {name: intervals[name] for name in M.METRIC_NAMES}}
    return block


def build_dataset(args: argparse.Namespace, preprocess: dict[str, Any], num_classes: int,
                  device: torch.device) -> FacialPalsyDataset:
    """The rows to score, read exactly as in training: the checkpoint's detector settings and preprocessing."""
    detector = LandmarkDetector(device=device, cache_dir=args.cache_dir, progress=True,
                                **dict(preprocess.get('detector') or {}))
    common = dict(preprocess=preprocess, num_classes=num_classes, split=args.split, detector=detector, verbose=True)
    if args.dataset_type == 'CK+':
        return CKPlusFacialPalsyDataset(args.data_root, grade_mapping_csv=args.test_csv, **common)
    return FacialPalsyDataset(args.data_root, csv_file=args.test_csv, dataset_type=args.dataset_type, **common)


class IndexedSamples(Dataset):
    """A dataset's items with their index; a photo that fails to load now (changed since the dataset was built)
    comes back as its error instead of stopping the evaluation."""

    def __init__(self, dataset: FacialPalsyDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            image, label = self.dataset[index]
        except ImageReadError as err:
            return {'index': index, 'error': str(err)}
        return {'index': index, 'image': image, 'label': int(label)}


def collate_samples(items: list[dict[str, Any]]) -> dict[str, Any]:
    good = [item for item in items if 'error' not in item]
    return {'images': torch.stack([item['image'] for item in good]) if good else None,
            'labels': torch.tensor([item['label'] for item in good], dtype=torch.long),
            'indices': [item['index'] for item in good],
            'failed': [(item['index'], item['error']) for item in items if 'error' in item]}


def predict(ensemble: Ensemble, dataset: FacialPalsyDataset, args: argparse.Namespace,
            device: torch.device) -> dict[str, Any]:
    """Over the dataset, every TTA view of every member of ``ensemble``: ``indices``, ``labels``,
    ``probabilities`` (N, C) softmax averaged over views and members, ``predictions`` (N,) decoded with the
    checkpoints' rule, ``side_probabilities`` (N, 3) or None, ``ood_score`` / ``ood_flag`` (N,) (original view)
    and ``failed`` [(index, reason)]. A view is the dataset's photo transform, so it is cut as in training."""
    autocast, _ = utils.amp_context(device, args.amp)
    per_view: list[dict[int, dict[str, np.ndarray | None]]] = []
    labels_of: dict[int, int] = {}
    failed: dict[int, str] = {}
    try:
        for position, view in enumerate(ensemble.views):
            dataset.transform = None if view.identity else view
            loader = DataLoader(IndexedSamples(dataset), batch_size=args.batch_size, shuffle=False,
                                num_workers=args.num_workers, collate_fn=collate_samples,
                                pin_memory=device.type == 'cuda')
            rows: dict[int, dict[str, np.ndarray | None]] = {}
            label = 'evaluating' if len(ensemble.views) == 1 else f'evaluating ({view.name})'
            for batch in tqdm(loader, desc=label, unit='batch', dynamic_ncols=True):
                failed.update(dict(batch['failed']))
                if batch['images'] is None:
                    continue
                out = ensemble.forward(batch['images'], device, with_ood=position == 0, autocast=autocast)
                for row, (index, label_value) in enumerate(zip(batch['indices'], batch['labels'].tolist())):
                    labels_of[index] = int(label_value)
                    rows[index] = {key: None if value is None else value[:, row] for key, value in out.items()}
            per_view.append(rows)
    finally:
        dataset.transform = None
    # a photo that failed in any view is left out of all of them, so every view averages the same photos
    indices = sorted(index for index in per_view[0] if index not in failed and all(index in v for v in per_view))
    if not indices:
        raise utils.UserError(f'no photo of split "{args.split}" could be read; see the skipped list')
    outputs = [{key: (None if rows[indices[0]][key] is None else np.stack([rows[i][key] for i in indices], axis=1))
                for key in ('grade', 'side', 'ood')} for rows in per_view]
    combined = ensemble.combine(outputs)
    return {'indices': np.asarray(indices), 'labels': np.array([labels_of[i] for i in indices], dtype=np.int64),
            'probabilities': combined['probabilities'].astype(np.float64),
            'predictions': combined['predictions'].astype(np.int64),
            'side_probabilities': combined['side_probabilities'],
            'ood_score': combined['ood_score'], 'ood_flag': combined['ood_flag'],
            'failed': sorted(failed.items())}


# scoring

def bootstrap_groups(subjects: Sequence[str]) -> tuple[list[str] | None, str]:
    """Subjects to resample, or None (photos) when the data names no subjects or every photo is its own."""
    groups = M.subject_groups(subjects)
    return groups, 'subject' if groups else 'image'


def score(labels: np.ndarray, predictions: np.ndarray, groups: list[str] | None, num_classes: int,
          args: argparse.Namespace) -> dict[str, Any]:
    """Point estimates and 95% bootstrap intervals of every metric.

    Per-class accuracy is the accuracy among the photos of that true class, so its interval is the accuracy
    interval of that subset, resampling its subjects."""
    alpha = 1.0 - CONFIDENCE
    point = M.compute_metrics(labels, predictions, num_classes)
    intervals = M.bootstrap_metrics(labels, predictions, num_classes, groups=groups, n_boot=args.n_boot,
                                    seed=args.seed, alpha=alpha)
    per_class = []
    for k in range(num_classes):
        mask = labels == k
        if not mask.any():
            per_class.append({'value': None, 'ci_low': None, 'ci_high': None, 'n': 0})
            continue
        subset_groups = None if groups is None else [g for g, m in zip(groups, mask) if m]
        interval = M.bootstrap_metrics(labels[mask], predictions[mask], num_classes, groups=subset_groups,
                                       n_boot=args.n_boot, seed=args.seed, alpha=alpha)['accuracy']
        per_class.append({**interval, 'n': int(mask.sum())})
    return {'point': point, 'intervals': intervals, 'per_class': per_class}


def subject_scores(groups: list[str] | None, labels: np.ndarray, probabilities: np.ndarray, grades: Sequence[str],
                   rule: str, args: argparse.Namespace) -> tuple[dict[str, Any] | None, pd.DataFrame | None]:
    """Patient-level grades, as a clinician grades a patient from several photos of one sitting: each subject's
    photo probabilities are averaged and read with the checkpoint's prediction rule; the subject's true grade is
    its most frequent photo grade (ties: the higher, ``annotations.subject_grades``). Returns the metrics with 95%
    intervals from resampling subjects (None when the data names no repeated subjects) and one row per subject."""
    if groups is None:
        return None, None
    names, counts, mean, pred = subject_grades_from_photos(groups, probabilities, rule)
    true_of = subject_grades(groups, labels)
    true = np.array([true_of[name] for name in names], dtype=np.int64)
    num_classes = probabilities.shape[1]
    intervals = M.bootstrap_metrics(true, pred, num_classes, groups=None, n_boot=args.n_boot, seed=args.seed,
                                    alpha=1.0 - CONFIDENCE)
    point = M.compute_metrics(true, pred, num_classes)
    payload = {'n_subjects': len(names), 'photos_per_subject': float(counts.mean()),
               'rule': 'mean of the photo probabilities of each subject, read with the checkpoint\'s prediction rule',
               'metrics': {name: intervals[name] for name in M.METRIC_NAMES},
               'confusion_matrix': point['confusion_matrix'],
               'bootstrap': {'n_boot': args.n_boot, 'seed': args.seed, 'resampled_by': 'subject'}}
    table = pd.DataFrame({'subject': names, 'n_photos': counts, 'true_label': true,
                          'true_grade': [grades[k] for k in true], 'pred_label': pred,
                          'pred_grade': [grades[k] for k in pred], 'correct': true == pred})
    for k, name in enumerate(grades):
        table[probability_column(name)] = mean[:, k].round(6)
    return payload, table


def score_symmetry_baseline(checkpoint: dict, dataset, indices: Sequence[int], labels: np.ndarray,
                            groups: list[str] | None, num_classes: int, args: argparse.Namespace) -> dict | None:
    """The interpretable baseline stored by ``train_facial_palsy.py --baseline symmetry``, scored on the same photos
    and landmarks as HTNet, with the same intervals; None when the checkpoint holds none."""
    stored = checkpoint.get('symmetry_baseline')
    if not stored:
        return None
    from symmetry import SymmetryBaseline  # local import: only checkpoints with a baseline need it

    baseline = SymmetryBaseline.from_dict(stored)
    predictions = np.asarray(baseline.predict([dataset.landmarks[i] for i in indices]), dtype=np.int64)
    intervals = M.bootstrap_metrics(labels, predictions, num_classes, groups=groups, n_boot=args.n_boot,
                                    seed=args.seed, alpha=1.0 - CONFIDENCE)
    return {'note': 'logistic regression on the five-landmark symmetry measurements (symmetry.py), fitted on the '
                    'training photos; scored on the same photos as HTNet',
            'metrics': {name: intervals[name] for name in M.METRIC_NAMES}}


def side_score(true_sides: Sequence[str], side_probabilities: np.ndarray, groups: list[str] | None,
               args: argparse.Namespace) -> dict[str, Any]:
    """Side accuracy over the photos whose side is known (left / right / none), with a 95% bootstrap interval
    resampling subjects as for the grades, and the side confusion matrix (rows = true side)."""
    known = np.array([str(side) in SIDE_CLASSES for side in true_sides], dtype=bool)
    matrix = np.zeros((len(SIDE_CLASSES), len(SIDE_CLASSES)), dtype=np.int64)
    entry: dict[str, Any] = {'value': None, 'ci_low': None, 'ci_high': None, 'n': int(known.sum())}
    if known.any():
        true = np.array([SIDE_CLASSES.index(str(s)) for s, k in zip(true_sides, known) if k], dtype=np.int64)
        predicted = side_probabilities[known].argmax(axis=1).astype(np.int64)
        matrix = M.confusion_matrix(true, predicted, len(SIDE_CLASSES))
        subset_groups = None if groups is None else [g for g, k in zip(groups, known) if k]
        interval = M.bootstrap_metrics(true, predicted, len(SIDE_CLASSES), groups=subset_groups, n_boot=args.n_boot,
                                       seed=args.seed, alpha=1.0 - CONFIDENCE)['accuracy']
        entry.update(interval)
    return {'side_accuracy': entry, 'side_classes': list(SIDE_CLASSES), 'side_confusion_matrix': matrix.tolist()}


def predictions_table(dataset: FacialPalsyDataset, indices: np.ndarray, labels: np.ndarray,
                      probabilities: np.ndarray, grades: Sequence[str], predictions: np.ndarray | None = None,
                      side_probabilities: np.ndarray | None = None, ood_score: np.ndarray | None = None,
                      ood_flag: np.ndarray | None = None) -> pd.DataFrame:
    """One row per scored photo: who, the true and predicted grade, every class probability, where its
    landmarks came from (a template fallback is worth a look), the symmetry measurements of those landmarks,
    the OOD score and flag (NaN / False without OOD statistics) and, with a side head, the predicted side.
    ``predictions`` default to the most probable grades."""
    predictions = probabilities.argmax(axis=1) if predictions is None else np.asarray(predictions)
    table = pd.DataFrame({
        'path': [dataset.paths[i] for i in indices],
        'subject': [dataset.subjects[i] for i in indices],
        'side': [dataset.sides[i] for i in indices],
        'true_label': labels, 'true_grade': [grades[k] for k in labels],
        'pred_label': predictions, 'pred_grade': [grades[k] for k in predictions],
        'correct': labels == predictions,
        # as in inference: the probability of the predicted grade (for an ordinal checkpoint the median grade,
        # which need not be the most probable one)
        'confidence': probabilities[np.arange(len(predictions)), predictions].round(6)})
    for k, name in enumerate(grades):
        table[probability_column(name)] = probabilities[:, k].round(6)
    table['landmark_source'] = [dataset.landmarks[i].source for i in indices]
    measurements = pd.DataFrame(
        [symmetry_row(face_symmetry(dataset.landmarks[i].points, dataset.landmarks[i].source)) for i in indices],
        columns=list(SYMMETRY_COLUMNS))
    for column in SYMMETRY_COLUMNS:
        table[column] = measurements[column].to_numpy()
    table['ood_score'] = (np.full(len(table), np.nan) if ood_score is None else np.asarray(ood_score)).round(6)
    table['ood_flag'] = np.zeros(len(table), dtype=bool) if ood_flag is None else np.asarray(ood_flag, dtype=bool)
    if side_probabilities is not None:
        side_index = side_probabilities.argmax(axis=1)
        table['predicted_side'] = [SIDE_CLASSES[k] for k in side_index]
        table['side_confidence'] = side_probabilities.max(axis=1).round(6)
        for k, side in enumerate(SIDE_CLASSES):
            table[f'side_p_{side}'] = side_probabilities[:, k].round(6)
    return table


def symmetry_by_grade(table: pd.DataFrame, grades: Sequence[str]) -> pd.DataFrame:
    """Mean of each symmetry measurement per true grade (NaN measurements, i.e. template landmarks, left out),
    with the photo count and how many of them could be measured."""
    columns = [f'sym_{name}' for name in MEASUREMENT_NAMES]
    rows = []
    for k, grade in enumerate(grades):
        subset = table.loc[table['true_label'] == k, columns].astype(float)
        row = {'true_label': k, 'true_grade': grade, 'n': len(subset),
               'n_measured': int(subset['sym_asymmetry_index'].notna().sum())}
        row.update({column: subset[column].mean() if len(subset) else np.nan for column in columns})
        rows.append(row)
    return pd.DataFrame(rows, columns=['true_label', 'true_grade', 'n', 'n_measured', *columns])


def metrics_payload(scores: dict[str, Any], class_names: Sequence[str], args: argparse.Namespace,
                    checkpoint: dict[str, Any], resampled_by: str, groups: list[str] | None,
                    dataset: FacialPalsyDataset, skipped: list[tuple[str, str]], rule: str = 'argmax',
                    side: dict[str, Any] | None = None) -> dict[str, Any]:
    point = scores['point']
    return {
        'model_path': model_label(args), 'epoch': checkpoint.get('epoch'),
        'data_root': str(args.data_root), 'test_csv': args.test_csv, 'dataset_type': args.dataset_type,
        'split': args.split, 'num_classes': len(class_names), 'class_names': list(class_names),
        'n': point['n'], 'skipped': len(skipped),
        'landmark_counts': dict(dataset.landmark_counts),
        'bootstrap': {'n_boot': args.n_boot, 'seed': args.seed, 'confidence': CONFIDENCE, 'method': 'percentile',
                      'resampled_by': resampled_by,
                      'n_groups': len(set(groups)) if groups is not None else point['n']},
        'metrics': {name: scores['intervals'][name] for name in M.METRIC_NAMES},
        'per_class_accuracy': {name: entry for name, entry in zip(class_names, scores['per_class'])},
        'confusion_matrix': point['confusion_matrix'],
        'prediction': rule,
        **(side or {}),
    }


# reports and plots

def metrics_table(payload: dict[str, Any]) -> str:
    """The metrics with their intervals as an aligned text table."""
    level = f'{payload["bootstrap"]["confidence"]:.0%}'
    lines = [f'{"metric":<22}{"value":>8}   {level} interval',
             '-' * 46]
    for name, entry in payload['metrics'].items():
        lines.append(f'{name:<22}{entry["value"]:>8.4f}   [{entry["ci_low"]:.4f}, {entry["ci_high"]:.4f}]')
    for name, entry in payload['per_class_accuracy'].items():
        label = f'  acc {name} (n={entry["n"]})'
        if entry['value'] is None:
            lines.append(f'{label:<22}{"-":>8}   (no photos of this grade)')
        else:
            lines.append(f'{label:<22}{entry["value"]:>8.4f}   [{entry["ci_low"]:.4f}, {entry["ci_high"]:.4f}]')
    side = payload.get('side_accuracy')
    if side is not None:
        label = f'side_accuracy (n={side["n"]})'
        if side['value'] is None:
            lines.append(f'{label:<22}{"-":>8}   (no photo with a known side)')
        else:
            lines.append(f'{label:<22}{side["value"]:>8.4f}   [{side["ci_low"]:.4f}, {side["ci_high"]:.4f}]')
    boot = payload['bootstrap']
    lines.append(f'({boot["n_boot"]} bootstrap resamples of {boot["n_groups"]} {boot["resampled_by"]}s)')
    patients = payload.get('subject_metrics')
    if patients:
        lines += ['', f'patient level: {patients["n_subjects"]} subjects, the mean of each one\'s '
                      f'{patients["photos_per_subject"]:.1f} photos on average', '-' * 46]
        for name, entry in patients['metrics'].items():
            lines.append(f'{name:<22}{entry["value"]:>8.4f}   [{entry["ci_low"]:.4f}, {entry["ci_high"]:.4f}]')
    return '\n'.join(lines)


def classification_report_text(labels: np.ndarray, predictions: np.ndarray, class_names: Sequence[str],
                               payload: dict[str, Any]) -> str:
    from sklearn.metrics import classification_report

    # the grades seen in the truth or the predictions, so the macro average matches metrics.json's macro_f1
    present = sorted(set(labels.tolist()) | set(predictions.tolist()))
    report = classification_report(labels, predictions, labels=present,
                                   target_names=[class_names[k] for k in present], digits=4, zero_division=0)
    absent = [name for k, name in enumerate(class_names) if k not in present]
    if absent:
        report += f'\nnot in the truth nor the predictions: {", ".join(absent)}\n'
    matrix = np.asarray(payload['confusion_matrix'])
    width = max(len(n) for n in class_names) + 2
    rows = [' ' * width + ''.join(f'{n:>{width}}' for n in class_names)]
    rows += [f'{name:<{width}}' + ''.join(f'{v:>{width}d}' for v in row) for name, row in zip(class_names, matrix)]
    return '\n'.join([
        f'model: {payload["model_path"]} (epoch {payload["epoch"]})',
        f'data: {payload["test_csv"] or payload["data_root"]} ({payload["dataset_type"]}, split {payload["split"]}, '
        f'{payload["n"]} photos, {payload["skipped"]} skipped)',
        f'landmarks: {", ".join(f"{k} {v}" for k, v in payload["landmark_counts"].items())}',
        '', report, 'confusion matrix (rows = true grade, columns = predicted grade)', *rows, '',
        metrics_table(payload), ''])


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], path: Path, title: str) -> None:
    """Counts beside row-normalised rates (each true grade's row sums to 1; a grade without photos stays blank)."""
    import seaborn as sns
    from matplotlib.figure import Figure

    matrix = np.asarray(matrix, dtype=np.int64)
    with np.errstate(invalid='ignore', divide='ignore'):
        rates = matrix / matrix.sum(axis=1, keepdims=True)
    size = 3.2 + 0.55 * len(class_names)
    figure = Figure(figsize=(2 * size + 1.0, size), layout='constrained')
    ax_counts, ax_rates = figure.subplots(1, 2)
    sns.heatmap(matrix, annot=True, fmt='d', cmap='Blues', cbar=False, square=True, ax=ax_counts,
                xticklabels=class_names, yticklabels=class_names)
    sns.heatmap(rates, annot=True, fmt='.2f', cmap='Blues', vmin=0, vmax=1, square=True, ax=ax_rates,
                mask=np.isnan(rates), xticklabels=class_names, yticklabels=class_names,
                cbar_kws={'label': 'share of the true grade'})
    for row in np.flatnonzero(matrix.sum(axis=1) == 0):
        ax_rates.text(len(class_names) / 2, row + 0.5, 'no photos of this grade', ha='center', va='center',
                      fontsize=8, color='gray')
    for ax, name in ((ax_counts, 'counts'), (ax_rates, 'row-normalised')):
        ax.set_xlabel('predicted grade')
        ax.set_ylabel('true grade')
        ax.set_title(name)
        ax.tick_params(axis='x', labelrotation=45)
        ax.tick_params(axis='y', labelrotation=0)
    figure.suptitle(title)
    utils.save_figure(figure, path, dpi=120)


def plot_per_class(per_class: Sequence[dict[str, Any]], class_names: Sequence[str], path: Path, title: str) -> None:
    """Accuracy of each true grade with its bootstrap interval; grades without photos are marked."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(1.2 + 0.9 * len(class_names), 3.8), layout='constrained')
    ax = figure.subplots()
    positions = np.arange(len(class_names))
    values = np.array([np.nan if e['value'] is None else e['value'] for e in per_class], dtype=float)
    low = np.array([np.nan if e['ci_low'] is None else e['ci_low'] for e in per_class], dtype=float)
    high = np.array([np.nan if e['ci_high'] is None else e['ci_high'] for e in per_class], dtype=float)
    errors = np.nan_to_num(np.stack([values - low, high - values]).clip(min=0))
    ax.bar(positions, np.nan_to_num(values), color='tab:blue', yerr=errors, capsize=4)
    for position, entry in zip(positions, per_class):
        text = 'no photos' if entry['value'] is None else f'{entry["value"]:.2f}'
        ax.text(position, 1.02, text, ha='center', va='bottom', fontsize=8)
    ax.set_xticks(positions, [f'{n}\n(n={e["n"]})' for n, e in zip(class_names, per_class)], fontsize=8)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel('accuracy (recall) with 95% interval')
    ax.set_title(title, fontsize=10)
    utils.save_figure(figure, path, dpi=120)


def plot_asymmetry_by_grade(table: pd.DataFrame, grades: Sequence[str], path: Path, title: str) -> None:
    """Box plot of the asymmetry index per true grade (measured photos only); grades without any are marked."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(1.6 + 0.8 * len(grades), 3.6), layout='constrained')
    ax = figure.subplots()
    values = [table.loc[table['true_label'] == k, 'sym_asymmetry_index'].astype(float).dropna().to_numpy()
              for k in range(len(grades))]
    filled = [k for k, v in enumerate(values) if len(v)]
    if filled:
        ax.boxplot([values[k] for k in filled], positions=filled, widths=0.6)
    for k, v in enumerate(values):
        if not len(v):
            ax.text(k, 0.5, 'no measured\nphotos', ha='center', va='center', fontsize=7, color='gray',
                    transform=ax.get_xaxis_transform())
    ax.set_xticks(range(len(grades)), [f'{g}\n(n={len(v)})' for g, v in zip(grades, values)], fontsize=8)
    ax.set_xlim(-0.6, len(grades) - 0.4)
    ax.set_xlabel('true grade')
    ax.set_ylabel('asymmetry index (0 = symmetric)')
    ax.set_title(title, fontsize=10)
    utils.save_figure(figure, path, dpi=120)


def write_csv_table(table: pd.DataFrame, path: Path) -> None:
    utils.atomic_write_text(path, table.to_csv(index=False))


def evaluation_made_here(output_dir: Path) -> bool:
    """Whether ``output_dir`` holds an earlier evaluation of this script (its ``metrics.json``), whose files may be
    refreshed."""
    try:
        payload = json.loads((output_dir / 'metrics.json').read_text())
    except (OSError, ValueError):
        return False
    return isinstance(payload, dict) and {'model_path', 'class_names', 'metrics'} <= set(payload)


def check_output_dir(output_dir: Path, overwrite: bool) -> list[str]:
    """Before any slow work: the folder can be written, and the files this evaluation writes there are either new
    or an earlier evaluation's (anything else needs --overwrite). Returns the names that will be replaced."""
    utils.check_writable(output_dir, '--output_dir')
    ours = evaluation_made_here(output_dir)
    existing = utils.guard_outputs([output_dir / name for name in OUTPUT_FILES], lambda path: ours, overwrite,
                                   'file in --output_dir')
    if existing:
        print(f'note: replacing {len(existing)} file(s) of an earlier evaluation in {output_dir}: '
              f'{", ".join(p.name for p in existing)}')
    return [p.name for p in existing]


def write_outputs(output_dir: Path, args: argparse.Namespace, payload: dict[str, Any], table: pd.DataFrame,
                  labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str],
                  skipped: list[tuple[str, str]], predictions: np.ndarray | None = None,
                  grades: Sequence[str] | None = None, subject_table: pd.DataFrame | None = None) -> dict[str, str]:
    """Every output file; returns name -> path. ``predictions`` default to the most probable grades;
    ``subject_table`` (patient-level grades) is written as ``subject_predictions.csv`` when there is one."""
    predictions = probabilities.argmax(axis=1) if predictions is None else np.asarray(predictions)
    grades = list(grades or class_names)
    models = payload.get('models') or [model_label(args)]
    who = Path(models[0]).name if len(models) == 1 else f'ensemble of {len(models)}'
    tta = f', TTA {payload["tta"]}' if payload.get('tta', 'none') != 'none' else ''
    title = f'{who}{tta} on {payload["split"]} ({payload["n"]} photos)'
    written = {}

    def target(name: str) -> Path:
        written[name] = str(output_dir / name)
        return output_dir / name

    utils.atomic_write_text(target('metrics.json'), json.dumps(utils.to_plain(payload), indent=2) + '\n')
    utils.atomic_write_text(target('classification_report.txt'),
                            classification_report_text(labels, predictions, class_names, payload))
    write_csv_table(table, target('predictions.csv'))
    np.savez_compressed(target('predictions.npz'), labels=labels.astype(np.int64),
                        predictions=predictions.astype(np.int64), probabilities=probabilities.astype(np.float32),
                        paths=np.asarray(table['path'].astype(str).tolist(), dtype=str),
                        subjects=np.asarray(table['subject'].astype(str).tolist(), dtype=str),
                        class_names=np.asarray(list(class_names), dtype=str))
    plot_confusion(np.asarray(payload['confusion_matrix']), class_names, target('confusion_matrix.png'), title)
    plot_per_class(list(payload['per_class_accuracy'].values()), class_names, target('per_class_accuracy.png'),
                   title)
    write_csv_table(symmetry_by_grade(table, grades), target('symmetry_by_grade.csv'))
    if subject_table is not None:
        write_csv_table(subject_table, target('subject_predictions.csv'))
    plot_asymmetry_by_grade(table, grades, target('asymmetry_by_grade.png'), title)
    utils.save_args(args, target('args.yaml'))
    if skipped:
        utils.write_skipped(target('skipped.csv'), skipped)
    return written


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = utils.parse_args_with_config(get_args_parser(), argv)
    check_args(args)
    device = utils.resolve_device(args.device)
    ensemble, preprocess = load_ensemble(args, device)
    trained = ensemble.members[0].trained
    checkpoint, num_classes = trained.checkpoint, trained.num_classes
    class_names, grades, rule = trained.class_names, trained.grades, trained.prediction
    with_side = bool(trained.sides)

    output_dir = Path(args.output_dir)
    replaced = check_output_dir(output_dir, args.overwrite)

    dataset = build_dataset(args, preprocess, num_classes, device)
    outputs = predict(ensemble, dataset, args, device)
    indices, labels, probabilities = outputs['indices'], outputs['labels'], outputs['probabilities']
    predictions = outputs['predictions']
    side_probabilities = outputs['side_probabilities'] if with_side else None
    skipped = list(dataset.skipped) + [(dataset.paths[i], reason) for i, reason in outputs['failed']]
    groups, resampled_by = bootstrap_groups([dataset.subjects[i] for i in indices])
    scores = score(labels, predictions, groups, num_classes, args)
    side = None if side_probabilities is None else side_score(
        [dataset.sides[i] for i in indices], side_probabilities, groups, args)
    payload = metrics_payload(scores, class_names, args, checkpoint, resampled_by, groups, dataset, skipped,
                              rule=rule, side=side)
    payload.update({'models': ensemble.paths,
                    'skipped_models': [{'path': path, 'reason': reason} for path, reason in ensemble.skipped],
                    'tta': ensemble.tta, 'tta_views': [view.name for view in ensemble.views],
                    'ood': ood_summary(ensemble, outputs, groups, num_classes, args)})
    baseline = score_symmetry_baseline(checkpoint, dataset, indices, labels, groups, num_classes, args)
    if baseline is not None:
        payload['symmetry_baseline'] = baseline
    table = predictions_table(dataset, indices, labels, probabilities, grades, predictions, side_probabilities,
                              outputs['ood_score'], outputs['ood_flag'])
    subject_metrics, subject_table = subject_scores(groups, labels, probabilities, grades, rule, args)
    if subject_metrics is not None:
        payload['subject_metrics'] = subject_metrics

    for name in ('skipped.csv', 'subject_predictions.csv'):  # would otherwise describe an earlier evaluation
        (output_dir / name).unlink(missing_ok=True)
    written = write_outputs(output_dir, args, payload, table, labels, probabilities, class_names, skipped,
                            predictions=predictions, grades=grades, subject_table=subject_table)

    print()
    print(f'graded by {ensemble.describe()}')
    print(metrics_table(payload))
    if baseline is not None:
        print('symmetry baseline (fitted in training on the training photos\' landmarks), same photos: ' +
              ', '.join(f'{name} {baseline["metrics"][name]["value"]:.3f}' for name in ('accuracy', 'macro_f1', 'qwk')))
    print(ood_report(payload['ood'], payload['n']))
    if ensemble.skipped:
        print(f'{len(ensemble.skipped)} checkpoint(s) skipped (recorded in metrics.json): '
              f'{", ".join(p for p, _ in ensemble.skipped)}')
    if skipped:
        print(f'{len(skipped)} photo(s) skipped, listed in {output_dir / "skipped.csv"}')
    print(f'results written to {output_dir}: {", ".join(written)}')
    return {'metrics': payload, 'files': written, 'replaced': replaced, 'predictions': table,
            'skipped': skipped}


def ood_report(block: dict[str, Any], count: int) -> str:
    """The printed lines of the ``ood`` block: how many photos were flagged, and the metrics without them."""
    if not block['n_scored']:
        return f'OOD: {block["description"]}'
    lines = [f'OOD: {block["n_flagged"]} of {count} photos flagged ({block["description"]})']
    unflagged = block.get('unflagged')
    if unflagged:
        lines.append(f'  the {unflagged["n"]} photos not flagged: ' + ', '.join(
            f'{name} {unflagged["metrics"][name]["value"]:.3f}' for name in ('accuracy', 'macro_f1', 'qwk')))
    return '\n'.join(lines)


if __name__ == '__main__':
    utils.run_cli(main)
