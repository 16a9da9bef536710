"""Train HTNet to grade facial palsy on the House-Brackmann scale (6 grades, or 3 simplified ones).

Layout after torchvision's ``references/classification/train.py``: ``get_args_parser()`` builds the flags,
``main(argv)`` runs and returns a dict of results, and the work is split into small functions.

Honest-results rules enforced here:
- the best epoch is chosen on the validation split only (``--select_metric``, macro F1 by default);
- ``--test_csv`` is scored once, at the end, with ``best_model.pth``, and never influences training;
- a subject found in two splits stops the run, because photos of one patient in train and test inflate scores.

``python train_facial_palsy.py --help`` lists every flag with its default and ends with worked examples.
"""
from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import math
import random
import time
from collections import Counter
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

import Model
import data_augmentation
import facial_palsy_dataset as fpd
import losses
import metrics as M
import symmetry
import utils
from utils import SIDES, UserError

CHECKPOINT_NAMES = ('best_model.pth', 'last.pth')
# share of the training subjects held out for validation when the data gives no validation split
DEFAULT_VAL_FRACTION = 0.15
LOG_NAMES = ('summary.csv', 'training_history.json', 'training_curves.png', 'args.yaml', 'test_metrics.json',
             'skipped_images.csv', 'baseline_metrics.json')
PLOT_EVERY = 5  # epochs between redraws of training_curves.png during training (matplotlib is slow); always at the end
SCALAR_COLUMNS = M.METRIC_NAMES
# how a checkpoint's logits become a grade, by --loss: the ordinal loss is trained for the median of the softmax
PREDICTION_RULES = {'ce': 'argmax', 'ordinal': 'ordinal_median'}
NUM_SIDE_CLASSES = len(SIDES)  # the side head's classes: the patient's left, right, none (utils.SIDES order)
# MTCNN point order after a horizontal mirror: the eyes (0, 1) and the mouth corners (3, 4) trade places
MIRRORED_POINT_ORDER = (1, 0, 2, 4, 3)
# side index after a mirror: left <-> right, none stays none, unknown (ignored) stays unknown
MIRRORED_SIDE = {0: 1, 1: 0, 2: 2, losses.SIDE_IGNORE_INDEX: losses.SIDE_IGNORE_INDEX}


# arguments

class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each flag's help, and the examples epilog kept as written."""


EPILOG = '''examples:
  # basic training: one annotation CSV whose split column gives train and val
  python train_facial_palsy.py --data_root ./datasets/facial_palsy/FNP \\
      --train_csv ./datasets/facial_palsy/fnp_annotation.csv --val_csv ./datasets/facial_palsy/fnp_annotation.csv \\
      --dataset_type FNP --num_classes 6 --batch_size 32 --epochs 100

  # a small CPU model (0.56M parameters; about 2 s an epoch on 2 cores for the 420 training photos of the
  # default synthetic set), scored once on the held-out test rows at the end
  python train_facial_palsy.py --data_root ./datasets/facial_palsy/FNP \\
      --train_csv ./datasets/facial_palsy/fnp_annotation.csv --test_csv ./datasets/facial_palsy/fnp_annotation.csv \\
      --dim 32 --heads 2 --block_repeats 1 1 2 --batch_size 16 --epochs 30 --learning_rate 1e-3 \\
      --scheduler cosine --warmup_epochs 1 --augmentation standard --threads 1

  # transfer from micro-expression weights of main_HTNet.py; continue an interrupted run
  python train_facial_palsy.py ... --pretrained_path ./ourmodel_threedatasets_weights/sub01.pth --learning_rate 5e-5
  python train_facial_palsy.py ... --resume ./checkpoints/fnp/last.pth

  # ordinal loss: a grade two steps off costs more than one step off; the checkpoint predicts the median grade
  python train_facial_palsy.py ... --loss ordinal --select_metric mae

  # multi-task: a second head predicts the affected side (left / right / none) from the same features
  python train_facial_palsy.py ... --multitask --side_loss_weight 0.5

  # mirror half the training photos and swap their side label (a left palsy mirrored is a right palsy)
  python train_facial_palsy.py ... --multitask --flip_swap_side

  # also fit the landmark symmetry baseline on the training photos and compare it with HTNet on val and test
  python train_facial_palsy.py ... --test_csv ./datasets/facial_palsy/fnp_annotation.csv --baseline symmetry

  # subject-wise 5-fold cross-validation over the train + val rows (grade-stratified; each fold picks its best
  # epoch on validation subjects carved from its own training subjects, then scores its held-out subjects once)
  python train_facial_palsy.py --data_root ./datasets/facial_palsy/FNP \
      --train_csv ./datasets/facial_palsy/fnp_annotation.csv --cv 5 --epochs 30 \
      --save_dir ./checkpoints/fnp_cv --log_dir ./logs/fnp_cv

  # leave one subject out (one fold per patient; long): a quick look at the first 3 folds only
  python train_facial_palsy.py --data_root ./datasets/facial_palsy/FNP \
      --train_csv ./datasets/facial_palsy/fnp_annotation.csv --cv loso --cv_folds_limit 3 \
      --save_dir ./checkpoints/fnp_loso --log_dir ./logs/fnp_loso

outputs: <save_dir>/best_model.pth (best validation --select_metric), last.pth, epoch_N.pth;
<log_dir>/summary.csv, training_history.json, training_curves.png, args.yaml, test_metrics.json (with --test_csv),
skipped_images.csv (photos that could not be used), baseline_metrics.json (with --baseline symmetry);
with --cv: <save_dir>/fold_<k>/ and <log_dir>/fold_<k>/ as above for each fold, then <log_dir>/cv_summary.json,
cv_predictions.csv (path, subject, fold, true, predicted) and cv_folds.png
'''


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Train HTNet on facial palsy photos (House-Brackmann grades). The best epoch is chosen on '
                    'validation; --test_csv is scored once at the end.',
        epilog=EPILOG, formatter_class=HelpFormatter, add_help=add_help)
    utils.add_config_args(parser)

    data = parser.add_argument_group('data')
    data.add_argument('--data_root', default=None,
                      help='folder the CSV image paths are relative to, or a folder of grade_0..grade_5 sub-folders '
                           'when no CSV is given (default: the folder of --train_csv)')
    data.add_argument('--train_csv', default=None,
                      help='annotation CSV (image_path, grade, side, split); its split=train rows train the model')
    data.add_argument('--val_csv', default=None,
                      help='CSV of the validation rows (split=val); may be the same file as --train_csv; '
                           'default: the split=val rows of --train_csv')
    data.add_argument('--test_csv', default=None,
                      help='CSV whose split=test rows are scored once at the end with best_model.pth '
                           '(written to <log_dir>/test_metrics.json; never used to choose the model)')
    data.add_argument('--val_fraction', type=float, default=None,
                      help='when no validation rows exist, move this fraction of the training subjects (whole '
                           'subjects, stratified by grade) to validation; 0.15 when not given')
    data.add_argument('--dataset_type', default='FNP', type=dataset_type,
                      help='FNP: an annotation CSV or grade_0..grade_5 folders; CK+ (or CKPlus): the CK+ sequence '
                           'layout graded by the mapping CSV given as --train_csv')
    data.add_argument('--num_classes', type=int, default=6, choices=[6, 3],
                      help='6 = House-Brackmann I-VI; 3 = normal / mild-moderate / severe')
    data.add_argument('--image_size', type=int, default=224,
                      help='side of the square face crop (pixels) before the regions are cut from it')
    data.add_argument('--region_size', type=int, default=28,
                      help='side of each of the four region crops; the 2x2 mosaic fed to HTNet is twice this')
    data.add_argument('--input_mode', default='regions', choices=list(fpd.INPUT_MODES),
                      help='regions: 2x2 mosaic of eyes and mouth corners (as HTNet); face: the whole face resized '
                           'to the mosaic size')
    data.add_argument('--cache_dir', default=None,
                      help='folder caching detected landmarks between runs, so MTCNN reads each photo once '
                           '(default: ./.cache/landmarks)')
    data.add_argument('--preload', action='store_true',
                      help='keep every face square in memory (image_size^2 x 3 bytes per photo) instead of '
                           'decoding the photos again each epoch')
    data.add_argument('--augmentation', default=data_augmentation.DEFAULT_AUGMENTATION,
                      choices=list(data_augmentation.AUGMENTATION_NAMES),
                      help='training augmentation from data_augmentation.py (none of them flips: left-right '
                           'asymmetry is the signal; see --flip_swap_side); validation and test images are never '
                           'augmented')
    data.add_argument('--flip_swap_side', action='store_true',
                      help='mirror each training photo with probability 0.5 and swap its affected side (left <-> '
                           'right; none stays none; the grade is unchanged), before --augmentation: the mirror of '
                           'a left-sided palsy is a right-sided one, so this doubles the faces without blurring the '
                           'asymmetry')
    data.add_argument('--mixup', type=float, default=0.0, metavar='ALPHA',
                      help='MixUp Beta(alpha, alpha) on training batches; 0 turns it off')
    data.add_argument('--num_workers', type=int, default=0,
                      help='DataLoader worker processes; 0 loads in the main process, which is fastest for small '
                           'CPU runs since the photos are decoded once and the crops are cheap')

    model = parser.add_argument_group('model (defaults: the paper-size HTNet on the 56x56 region mosaic)')
    model.add_argument('--patch_size', type=int, default=7, help='side of the patches embedded as tokens')
    model.add_argument('--dim', type=int, default=256, help='channels of the first hierarchy (doubled at each level)')
    model.add_argument('--heads', type=int, default=3, help='attention heads of the first hierarchy (doubled likewise)')
    model.add_argument('--num_hierarchies', type=int, default=3, help='levels of block-local transformers')
    model.add_argument('--block_repeats', type=int, nargs='+', default=[2, 2, 10],
                       help='transformer depth per level: one int for all levels or one per level')
    model.add_argument('--dropout', type=float, default=0.0, help='dropout in attention and feed-forward layers')
    model.add_argument('--pretrained_path', default=None,
                       help='weights to start from: a micro-expression file of main_HTNet.py (3 classes, 28x28) or '
                            'any checkpoint; tensors that do not fit (the head) are skipped and listed')
    model.add_argument('--pos_emb', default='interpolate', choices=['interpolate', 'skip'],
                       help='with --pretrained_path: resize positional embeddings of another input size, or skip them')
    model.add_argument('--multitask', action='store_true',
                       help='add a second head that predicts the affected side (left / right / none) from the same '
                            'features; photos whose side is unknown add nothing to its loss. Logs '
                            'val_side_accuracy and the side confusion matrix of the best epoch')
    model.add_argument('--side_loss_weight', type=float, default=0.5,
                       help='with --multitask: weight of the side cross-entropy added to the grade loss')

    optim = parser.add_argument_group('optimisation')
    optim.add_argument('--batch_size', type=int, default=32, help='images per training step')
    optim.add_argument('--epochs', type=int, default=100, help='total epochs (also when resuming)')
    optim.add_argument('--learning_rate', type=float, default=1e-4, help='AdamW learning rate')
    optim.add_argument('--weight_decay', type=float, default=0.05,
                       help='AdamW decoupled weight decay (0.05 as DeiT; transformers on small data need it)')
    optim.add_argument('--scheduler', default='plateau', choices=['plateau', 'cosine', 'none'],
                       help='plateau: halve the rate when the validation --select_metric stalls for --lr_patience '
                            'epochs; cosine: per-step cosine decay after --warmup_epochs of linear warm-up')
    optim.add_argument('--lr_patience', type=int, default=5, help='plateau: epochs without improvement before halving')
    optim.add_argument('--warmup_epochs', type=float, default=0.0, help='cosine: epochs of linear warm-up')
    optim.add_argument('--label_smoothing', type=float, default=0.0, help='cross-entropy label smoothing')
    optim.add_argument('--loss', default='ce', choices=list(losses.CRITERIA),
                       help='ce: cross-entropy (grades unordered); ordinal: cumulative-probability loss on the same '
                            'logits (losses.py), so a grade far off costs more than one next to it; its grade is '
                            'the median of the predicted distribution (stored as the checkpoint\'s "prediction")')
    optim.add_argument('--class_weights', action='store_true',
                       help='weight the loss by inverse grade frequency of the training split (for imbalance)')
    optim.add_argument('--early_stopping', type=int, default=0, metavar='N',
                       help='stop after N epochs without a better validation --select_metric; 0 = never')
    optim.add_argument('--select_metric', default='macro_f1', choices=list(M.METRIC_NAMES),
                       help='validation metric that picks best_model.pth (mae: lower is better)')

    run = parser.add_argument_group('run')
    run.add_argument('--save_dir', default='./checkpoints/fnp', help='folder of best_model.pth, last.pth, epoch_N.pth')
    run.add_argument('--log_dir', default='./logs/fnp',
                     help='folder of summary.csv, training_history.json, args.yaml, training_curves.png')
    run.add_argument('--save_interval', type=int, default=10, help='also keep epoch_N.pth every N epochs; 0 = never')
    run.add_argument('--resume', default=None, metavar='PATH',
                     help='continue from a checkpoint (e.g. <save_dir>/last.pth) at its next epoch, with optimizer '
                          'and scheduler state')
    run.add_argument('--overwrite', action='store_true',
                     help='replace the checkpoints and logs of an earlier run in --save_dir / --log_dir')
    run.add_argument('--device', default='auto', help='auto (CUDA when available), cpu, cuda or cuda:N')
    run.add_argument('--amp', nargs='?', const='bf16', default='none', choices=['none', 'bf16', 'fp16'],
                     help='mixed precision on CUDA (--amp alone = bf16); ignored on CPU')
    run.add_argument('--compile', action='store_true', help='torch.compile the network (CUDA only; slow first epoch)')
    run.add_argument('--seed', type=int, default=42, help='seed of python, numpy and torch')
    run.add_argument('--baseline', default=None, choices=['symmetry'],
                     help='symmetry: after training, fit the landmark symmetry baseline (symmetry.py) on the '
                          'training photos, score it on val (and --test_csv) with the same metrics, print it beside '
                          'HTNet and write <log_dir>/baseline_metrics.json')
    cv = parser.add_argument_group('cross-validation (instead of one train / val run)')
    cv.add_argument('--cv', default=None, metavar='K|loso',
                    help='K (2 or more): subject-wise K-fold cross-validation, stratified by each subject\'s grade, '
                         'over every non-test row (train + val rows of the CSV, or the grade folders); loso: leave '
                         'one subject out (one fold per subject). Each fold selects its best epoch on validation '
                         'subjects carved from its training subjects (--val_fraction), never on the held-out fold, '
                         'which is scored once with that best checkpoint. --test_csv rows stay out of every fold '
                         'and are not scored. Writes <save_dir>/fold_<k>/, <log_dir>/fold_<k>/ and '
                         '<log_dir>/cv_summary.json, cv_predictions.csv, cv_folds.png')
    cv.add_argument('--cv_folds_limit', type=int, default=None, metavar='N',
                    help='with --cv: run only the first N folds (a quick look; cv_summary.json is marked partial)')
    run.add_argument('--threads', type=int, default=0,
                     help='CPU threads for PyTorch; 0 keeps its default (one per core). Small models on a busy or '
                          'small CPU often train fastest with 1, since threads of one operation wait for each other')
    return parser


def dataset_type(text: str) -> str:
    """``FNP`` or ``CK+``; spellings such as ``ckplus`` or ``CK`` are accepted."""
    key = ''.join(ch for ch in str(text).lower() if ch.isalnum() or ch == '+')
    if key == 'fnp':
        return 'FNP'
    if key in ('ck+', 'ckplus', 'ck'):
        return 'CK+'
    raise argparse.ArgumentTypeError(f'{text!r}: choose FNP or CK+')


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    args = utils.parse_args_with_config(get_args_parser(), argv)
    validate_args(args)
    return args


def validate_args(args: argparse.Namespace) -> None:
    """Refuse impossible settings up front with one clear line, before any slow landmark detection."""
    if args.flip_swap_side and args.input_mode == 'flow':
        raise UserError('--flip_swap_side mirrors photos, which --input_mode flow does not read one at a time; '
                        'drop one of them')
    positive = {'epochs': args.epochs, 'batch_size': args.batch_size, 'image_size': args.image_size,
                'region_size': args.region_size, 'patch_size': args.patch_size, 'dim': args.dim,
                'heads': args.heads, 'num_hierarchies': args.num_hierarchies}
    for name, value in positive.items():
        if value < 1:
            raise UserError(f'--{name} must be at least 1, got {value}')
    if not args.learning_rate > 0:
        raise UserError(f'--learning_rate must be positive, got {args.learning_rate}')
    for name in ('weight_decay', 'mixup', 'dropout', 'warmup_epochs', 'num_workers', 'save_interval',
                 'early_stopping', 'lr_patience', 'threads', 'side_loss_weight'):
        if getattr(args, name) < 0:
            raise UserError(f'--{name} cannot be negative, got {getattr(args, name)}')
    if not 0 <= args.label_smoothing < 1:
        raise UserError(f'--label_smoothing must lie in [0, 1), got {args.label_smoothing}')
    if args.dropout >= 1:
        raise UserError(f'--dropout must be below 1, got {args.dropout}')
    if args.val_fraction is not None and not 0 < args.val_fraction < 1:
        raise UserError(f'--val_fraction must lie between 0 and 1, got {args.val_fraction}')
    if len(args.block_repeats) not in (1, args.num_hierarchies):
        raise UserError(f'--block_repeats takes 1 or --num_hierarchies ({args.num_hierarchies}) numbers, '
                        f'got {len(args.block_repeats)}: {args.block_repeats}')
    if min(args.block_repeats) < 1:
        raise UserError(f'--block_repeats must be at least 1 each, got {args.block_repeats}')
    if args.scheduler == 'cosine' and args.warmup_epochs >= args.epochs:
        raise UserError(f'--warmup_epochs {args.warmup_epochs} leaves no epoch of cosine decay in --epochs '
                        f'{args.epochs}')
    validate_cv_args(args)
    if args.train_csv is None and args.val_csv is not None:
        raise UserError('--val_csv needs --train_csv (or drop it and use --val_fraction with a grade folder layout)')
    if args.data_root is None and args.train_csv is None:
        raise UserError('give --data_root (a folder of grade_0..grade_5) or --train_csv (an annotation CSV)')
    if args.data_root is None:
        args.data_root = str(Path(args.train_csv).parent)
        print(f'note: --data_root not given; image paths are read relative to {args.data_root}')
    if not Path(args.data_root).is_dir():
        raise UserError(f'--data_root {args.data_root}: folder not found')
    for name in ('train_csv', 'val_csv', 'test_csv', 'resume', 'pretrained_path', 'config'):
        value = getattr(args, name, None)
        if value is not None and not Path(value).is_file():
            raise UserError(f'--{name} {value}: file not found')


def parse_cv(value: Any) -> int | str | None:
    """``--cv`` as a fold count (2 or more) or ``'loso'``; None when cross-validation is off."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in ('loso', 'leave-one-subject-out', 'leave_one_subject_out'):
        return 'loso'
    try:
        folds = int(text)
    except ValueError:
        raise UserError(f'--cv {value}: give a number of folds (2 or more) or loso') from None
    if folds < 2:
        raise UserError(f'--cv {value}: cross-validation needs at least 2 folds (or loso)')
    return folds


def validate_cv_args(args: argparse.Namespace) -> None:
    """Check the --cv flags and the ones that do not combine with it, before any landmark detection."""
    args.cv = parse_cv(getattr(args, 'cv', None))
    limit = getattr(args, 'cv_folds_limit', None)
    if args.cv is None:
        if limit is not None:
            raise UserError('--cv_folds_limit needs --cv K or --cv loso')
        return
    if limit is not None and limit < 1:
        raise UserError(f'--cv_folds_limit must be at least 1, got {limit}')
    if args.resume:
        raise UserError('--resume continues one run; it does not combine with --cv (start the cross-validation '
                        'again, or resume a single fold without --cv)')
    if args.baseline:
        raise UserError('--baseline does not combine with --cv; run it on a single train / val split')
    if args.dataset_type == 'CK+':
        raise UserError('--cv reads FNP data (an annotation CSV or grade folders); convert CK+ with '
                        'prepare_dataset.py first')
    if args.val_csv is not None and args.train_csv is not None and not _same_file(args.val_csv, args.train_csv):
        raise UserError('--cv pools the train and val rows of --train_csv and carves validation subjects from '
                        'each fold; a separate --val_csv does not fit: drop it or put its rows into --train_csv')


def model_args_for(args: argparse.Namespace, input_size: int) -> dict[str, Any]:
    """HTNet's arguments for an ``input_size`` mosaic, checked so a bad combination is one line, not an assert."""
    if input_size % args.patch_size:
        raise UserError(f'the network input is {input_size}x{input_size} (from --region_size {args.region_size}, '
                        f'--input_mode {args.input_mode}), which --patch_size {args.patch_size} does not divide')
    grid, blocks = input_size // args.patch_size, 2 ** (args.num_hierarchies - 1)
    if grid % blocks:
        raise UserError(f'{input_size}/{args.patch_size} = {grid} patches per side cannot be split into '
                        f'{blocks}x{blocks} blocks for --num_hierarchies {args.num_hierarchies}; '
                        f'choose --patch_size or --num_hierarchies so that {grid} is divisible by {blocks}')
    side_head = {'num_side_classes': NUM_SIDE_CLASSES} if getattr(args, 'multitask', False) else {}
    return Model.model_args_from(image_size=input_size, patch_size=args.patch_size, num_classes=args.num_classes,
                                 dim=args.dim, heads=args.heads, num_hierarchies=args.num_hierarchies,
                                 block_repeats=args.block_repeats, dropout=args.dropout, **side_head)


def prediction_rule(args: argparse.Namespace) -> str:
    """``argmax`` or ``ordinal_median``: how evaluation and inference must read this run's logits."""
    return PREDICTION_RULES[getattr(args, 'loss', 'ce')]


# data

@dataclass
class SplitSource:
    """Where one split's rows come from: a CSV (or the grade folders when ``csv`` is None) and its split value."""
    csv: str | None
    split: str | None  # None: every row of the file


def _read_split_counts(csv_path: str) -> Counter | None:
    """Counts of the ``split`` column of an annotation CSV (``validation``/``dev`` read as ``val``, as the dataset
    reads them), or None when it has no such column."""
    import pandas as pd

    try:
        frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except Exception as err:  # pandas raises several parser/encoding errors; all mean "not a readable CSV"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f'{csv_path}: not a readable CSV ({first})') from err
    columns = {str(c).strip().lower(): c for c in frame.columns}
    if 'split' not in columns:
        return None
    values = (str(v).strip().lower() for v in frame[columns['split']])
    return Counter(fpd.SPLIT_ALIASES.get(v, v) for v in values if v)


def _same_file(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()


def _has_split_folder(data_root: str, split: str) -> bool:
    folder = Path(data_root) / split
    return folder.is_dir() and any(p.is_dir() and p.name.lower().startswith('grade') for p in folder.iterdir())


def resolve_split_sources(args: argparse.Namespace) -> tuple[dict[str, SplitSource], bool]:
    """Decide where the train / val / test rows come from. Returns the sources and whether validation must be
    carved out of the training subjects (``--val_fraction``).

    One CSV for train and val: its split column decides. Separate CSVs: each gives its own split's rows (all
    rows when it has no split column). Grade folders: ``data_root/train|val/grade_N`` when present. Anything
    else needs ``--val_fraction``. Test rows are only read from ``--test_csv``.
    """
    if args.train_csv is None:
        if args.dataset_type == 'CK+':
            raise UserError('CK+ photos carry no palsy grades: give the grade mapping CSV as --train_csv '
                            '(prepare_dataset.py writes one)')
        if _has_split_folder(args.data_root, 'val'):
            if args.val_fraction is not None:
                print(f'note: --val_fraction ignored: {Path(args.data_root) / "val"} holds the validation images')
            return {'train': SplitSource(None, 'train'), 'val': SplitSource(None, 'val')}, False
        if args.val_fraction is None:
            args.val_fraction = DEFAULT_VAL_FRACTION
            print(f'note: {args.data_root} holds grade folders without a split: holding out '
                  f'{DEFAULT_VAL_FRACTION:.0%} of the subjects for validation (--val_fraction; no test set, so no '
                  f'test metrics: prepare_dataset.py writes a CSV with train / val / test subjects)')
        return {'train': SplitSource(None, None)}, True

    train_counts = _read_split_counts(args.train_csv)
    sources = {'train': SplitSource(args.train_csv, 'train' if train_counts is not None else None)}
    if train_counts is not None and train_counts.get('train', 0) == 0:
        raise UserError(f'{args.train_csv} has no split=train rows (splits: {_fmt_counts(train_counts)})')
    carve = False
    if args.val_csv is None or _same_file(args.val_csv, args.train_csv):
        if train_counts is None or train_counts.get('val', 0) == 0:
            if args.val_fraction is None:
                found = 'has no split column' if train_counts is None else \
                    f'has no split=val rows (splits: {_fmt_counts(train_counts)})'
                args.val_fraction = DEFAULT_VAL_FRACTION
                print(f'note: {args.train_csv} {found}: holding out {DEFAULT_VAL_FRACTION:.0%} of its training '
                      f'subjects for validation (--val_fraction)')
            carve = True
        else:
            sources['val'] = SplitSource(args.train_csv, 'val')
            if args.val_fraction is not None:
                print(f'note: --val_fraction ignored: {args.train_csv} has split=val rows')
    else:
        sources['val'] = _separate_source(args.val_csv, 'val')
        if args.val_fraction is not None:
            print('note: --val_fraction ignored: --val_csv gives the validation rows')

    if args.test_csv is not None:
        sources['test'] = _separate_source(args.test_csv, 'test')
    elif train_counts is not None and train_counts.get('test', 0):
        print(f'note: the {train_counts["test"]} split=test rows of {args.train_csv} are not used; pass '
              f'--test_csv to score them once at the end')
    return sources, carve


def _separate_source(csv_path: str, split: str) -> SplitSource:
    counts = _read_split_counts(csv_path)
    if counts is None:
        return SplitSource(csv_path, None)
    if counts.get(split, 0) == 0:
        raise UserError(f'{csv_path} has no split={split} rows (splits: {_fmt_counts(counts)})')
    return SplitSource(csv_path, split)


def _fmt_counts(counts: Counter | dict) -> str:
    return ', '.join(f'{k} {v}' for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))) or 'none'


def make_dataset(args: argparse.Namespace, source: SplitSource, detector: fpd.LandmarkDetector,
                 transform: Callable | None = None) -> Dataset:
    """One split as a ``FacialPalsyDataset`` (or the CK+ variant); all splits share one landmark detector."""
    common = dict(image_size=args.image_size, transform=transform, split=source.split or 'all',
                  region_size=args.region_size, input_mode=args.input_mode, num_classes=args.num_classes,
                  verbose=True, preload=args.preload, detector=detector)
    if args.dataset_type == 'CK+':
        return fpd.CKPlusFacialPalsyDataset(args.data_root, grade_mapping_csv=source.csv, **common)
    return fpd.FacialPalsyDataset(args.data_root, csv_file=source.csv, dataset_type=args.dataset_type, **common)


def with_transform(dataset: Dataset, transform: Callable | None) -> Dataset:
    """A second view of an already loaded dataset (landmarks detected once) that applies ``transform``."""
    view = copy.copy(dataset)
    view.transform = transform
    return view


def base_dataset(dataset: Dataset) -> Dataset:
    return dataset.dataset if isinstance(dataset, Subset) else dataset


def split_labels(dataset: Dataset) -> list[int]:
    if isinstance(dataset, Subset):
        return [int(dataset.dataset.labels[i]) for i in dataset.indices]
    return [int(v) for v in dataset.labels]


def split_subjects(dataset: Dataset) -> list[str]:
    if isinstance(dataset, Subset):
        return [str(dataset.dataset.subjects[i]) for i in dataset.indices]
    return [str(s) for s in dataset.subjects]


def carve_validation(labels: Sequence[int], subjects: Sequence[str], fraction: float,
                     seed: int) -> tuple[list[int], list[int]]:
    """Split sample indices into train / val by whole subjects, stratified by each subject's most common grade,
    so that no patient has photos on both sides and every grade with two or more subjects reaches validation."""
    by_subject: dict[str, list[int]] = {}
    for index, subject in enumerate(subjects):
        by_subject.setdefault(subject, []).append(index)
    by_grade: dict[int, list[str]] = {}
    for subject, indices in sorted(by_subject.items()):
        grade = Counter(labels[i] for i in indices).most_common(1)[0][0]
        by_grade.setdefault(grade, []).append(subject)
    rng = random.Random(seed)
    val_subjects: set[str] = set()
    for grade in sorted(by_grade):
        members = by_grade[grade]
        rng.shuffle(members)
        take = round(len(members) * fraction)
        if len(members) >= 2:
            take = min(max(take, 1), len(members) - 1)
        val_subjects.update(members[:take])
    if not val_subjects or len(val_subjects) == len(by_subject):
        raise UserError(f'--val_fraction {fraction}: {len(by_subject)} subjects cannot be split into training and '
                        f'validation subjects')
    train_idx = [i for i, s in enumerate(subjects) if s not in val_subjects]
    val_idx = [i for i, s in enumerate(subjects) if s in val_subjects]
    return train_idx, val_idx


def build_datasets(args: argparse.Namespace, device: torch.device) -> dict[str, Dataset]:
    """The train (augmented), val and optional test datasets, after the split rules of ``resolve_split_sources``."""
    sources, carve = resolve_split_sources(args)
    transform = data_augmentation.get_augmentation_pipeline(args.augmentation)
    detector = fpd.LandmarkDetector(device=device, cache_dir=args.cache_dir, progress=True)
    datasets: dict[str, Dataset] = {}
    plain_train = make_dataset(args, sources['train'], detector)
    if carve:
        train_idx, val_idx = carve_validation(split_labels(plain_train), split_subjects(plain_train),
                                              args.val_fraction, args.seed)
        print(f'validation: {len(val_idx)} images of whole subjects held out of the training rows '
              f'(--val_fraction {args.val_fraction})')
        datasets['train'] = Subset(with_transform(plain_train, transform), train_idx)
        datasets['val'] = Subset(plain_train, val_idx)
    else:
        datasets['train'] = with_transform(plain_train, transform)
        datasets['val'] = make_dataset(args, sources['val'], detector)
    if 'test' in sources:
        datasets['test'] = make_dataset(args, sources['test'], detector)
    for name, dataset in datasets.items():
        if len(dataset) == 0:
            raise UserError(f'the {name} split has no usable images (see the skipped images above)')
    return datasets


def check_subject_overlap(datasets: dict[str, Dataset]) -> None:
    """Stop when a subject appears in two splits: the scores would measure recognising people, not grading."""
    subjects = {name: set(split_subjects(ds)) for name, ds in datasets.items()}
    names = list(subjects)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            shared = sorted(subjects[first] & subjects[second])
            if shared:
                shown = ', '.join(shared[:5]) + (f' and {len(shared) - 5} more' if len(shared) > 5 else '')
                raise UserError(f'{len(shared)} subjects appear in both {first} and {second}: {shown}; '
                                f'split by subject so results stay honest')


def describe_splits(datasets: dict[str, Dataset], class_names: Sequence[str]) -> dict[str, dict]:
    """Print and return images, subjects and grade counts per split (a missing grade is worth noticing early)."""
    summary = {}
    for name, dataset in datasets.items():
        labels = split_labels(dataset)
        counts = Counter(labels)
        summary[name] = {'images': len(labels), 'subjects': len(set(split_subjects(dataset))),
                         'grade_counts': [counts.get(k, 0) for k in range(len(class_names))]}
        grades = ', '.join(f'{class_names[k]}: {counts.get(k, 0)}' for k in range(len(class_names)))
        print(f'{name:>5}: {len(labels)} images of {summary[name]["subjects"]} subjects ({grades})')
        landmark_counts = getattr(base_dataset(dataset), 'landmark_counts', None)
        if landmark_counts and landmark_counts.get('template'):
            print(f'       note: {landmark_counts["template"]} images use template landmarks (no face detected)')
    return summary


def write_skipped(datasets: dict[str, Dataset], log_dir: Path) -> int:
    """List every image a dataset skipped (unreadable, no face...) in ``<log_dir>/skipped_images.csv``."""
    rows = []
    seen: set[int] = set()
    for name, dataset in datasets.items():
        skipped = getattr(base_dataset(dataset), 'skipped', None) or []
        if id(skipped) in seen:  # train and a carved-out validation share one dataset's list
            continue
        seen.add(id(skipped))
        rows.extend((name, str(path), str(reason)) for path, reason in skipped)
    target = log_dir / 'skipped_images.csv'
    if rows:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(['split', 'path', 'reason'])
        writer.writerows(rows)
        utils.atomic_write_text(target, buffer.getvalue())
        print(f'{len(rows)} images skipped; listed in {target}')
    return len(rows)


def mirror_face(image: np.ndarray, landmarks: Any) -> tuple[np.ndarray, np.ndarray]:
    """The face square mirrored left-right and its five points moved with it: x becomes ``width - x`` (pixel
    edges, the convention of the region crops, so each mirrored crop is exactly the mirror of a crop) and the
    left / right eye and mouth-corner points trade places, so point 0 is again the image-left eye."""
    width = image.shape[1]
    points = np.asarray(landmarks, dtype=np.float32).reshape(5, 2)[list(MIRRORED_POINT_ORDER)].copy()
    points[:, 0] = width - points[:, 0]
    return np.ascontiguousarray(image[:, ::-1]), points


class MirrorThen:
    """Photo transform ``(image, landmarks) -> (image, landmarks)``: ``mirror_face``, then ``then`` (the chosen
    augmentation, whose ``mosaic_transform`` is passed on so the dataset still applies it)."""

    def __init__(self, then: Callable | None = None):
        self.then = then
        self.mosaic_transform = getattr(then, 'mosaic_transform', None)

    def __call__(self, image: np.ndarray, landmarks: Any) -> tuple[np.ndarray, np.ndarray]:
        image, points = mirror_face(image, landmarks)
        return self.then(image, points) if self.then is not None else (image, points)


class SideLabelled(Dataset):
    """``(image, label, side index)`` items of a split (a ``FacialPalsyDataset`` or a ``Subset`` of one), the side
    coded by ``losses.side_targets`` (unknown = -100, ignored by the loss).

    With ``flip_probability`` each item is, with that probability, read through a second view of the dataset whose
    photo transform mirrors the face before the augmentation, and its side is swapped. The coin is drawn here, per
    item, so the image and its side label can never disagree, and no state is shared between calls (safe with
    DataLoader workers, which seed torch per worker).
    """

    def __init__(self, dataset: Dataset, flip_probability: float = 0.0):
        if not 0.0 <= flip_probability <= 1.0:
            raise ValueError(f'flip_probability must lie in [0, 1], got {flip_probability}')
        self.source = dataset
        self.base = base_dataset(dataset)
        self.indices = list(dataset.indices) if isinstance(dataset, Subset) else list(range(len(dataset)))
        self.sides = losses.side_targets(self.base.sides[i] for i in self.indices).tolist()
        self.flip_probability = float(flip_probability)
        self.mirrored = with_transform(self.base, MirrorThen(self.base.transform)) if flip_probability > 0 else None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int, int]:
        index, side = self.indices[item], self.sides[item]
        if self.mirrored is not None and float(torch.rand(())) < self.flip_probability:
            image, label = self.mirrored[index]
            return image, label, MIRRORED_SIDE[side]
        image, label = self.base[index]
        return image, label, side


def loader_dataset(dataset: Dataset, args: argparse.Namespace, train: bool) -> Dataset:
    """The split as the loader reads it: with sides (and, for training, side-swapping mirrors) when the run
    needs them, else unchanged."""
    flip = 0.5 if train and args.flip_swap_side else 0.0
    if args.multitask or flip:
        return SideLabelled(dataset, flip_probability=flip)
    return dataset


def build_loaders(datasets: dict[str, Dataset], args: argparse.Namespace, device: torch.device,
                  seed: int) -> dict[str, DataLoader]:
    generator = torch.Generator().manual_seed(seed)
    common = dict(batch_size=args.batch_size, num_workers=args.num_workers, pin_memory=device.type == 'cuda',
                  persistent_workers=args.num_workers > 0)
    loaders = {'train': DataLoader(loader_dataset(datasets['train'], args, train=True), shuffle=True,
                                   generator=generator, **common)}
    for name in ('val', 'test'):
        if name in datasets:
            loaders[name] = DataLoader(loader_dataset(datasets[name], args, train=False), shuffle=False, **common)
    return loaders


def unpack_batch(batch: Sequence[torch.Tensor], device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(images, labels, sides or None)`` on ``device`` from a loader batch of 2 or 3 tensors."""
    images = batch[0].to(device, non_blocking=True)
    labels = batch[1].to(device, non_blocking=True)
    sides = batch[2].to(device, non_blocking=True) if len(batch) > 2 else None
    return images, labels, sides


# model and optimisation

def build_model(model_args: dict[str, Any], args: argparse.Namespace) -> nn.Module:
    model = Model.build_model(model_args)
    if args.pretrained_path:
        load_pretrained_weights(model, args.pretrained_path, args.pos_emb)
    return model


def load_pretrained_weights(model: nn.Module, path: str, pos_emb: str) -> dict[str, list]:
    """Transfer every tensor that fits; a file from which nothing fits is refused rather than silently ignored."""
    checkpoint = utils.load_checkpoint(path)
    print(f'pretrained weights: {path}')
    try:
        report = Model.load_pretrained(model, checkpoint, pos_emb=pos_emb, verbose=True)
    except ValueError as err:
        raise UserError(f'{path}: {err}') from err
    if not [name for name in report['loaded'] if not name.endswith('pos_emb')]:  # positions alone transfer nothing
        raise UserError(f'{path}: no tensor fits this network (different --dim/--heads/--num_hierarchies?); '
                        f'first mismatches: {"; ".join(f"{n}: {r}" for n, r in report["skipped"][:3])}')
    return report


def setup_device(args: argparse.Namespace) -> torch.device:
    device = utils.resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f'device: {device}' + (f' ({torch.cuda.get_device_name(device)})' if device.type == 'cuda' else
                                 f' ({torch.get_num_threads()} threads)'))
    return device


def maybe_compile(model: nn.Module, enabled: bool, device: torch.device) -> nn.Module:
    """``torch.compile`` on CUDA; the returned module shares its parameters with ``model``, whose state_dict
    (without ``_orig_mod.`` prefixes) is what checkpoints store."""
    if not enabled:
        return model
    if device.type != 'cuda':
        print(f'note: --compile is ignored on {device.type}')
        return model
    return torch.compile(model)


def build_criterion(args: argparse.Namespace, train_labels: Sequence[int], class_names: Sequence[str],
                    device: torch.device) -> nn.Module:
    """The ``--loss`` grade criterion (cross-entropy or ordinal) with optional inverse-frequency class weights
    and label smoothing; with ``--multitask`` wrapped in ``losses.MultiTaskLoss`` (grade + weighted side term)."""
    weights = class_weights_for(train_labels, args.num_classes) if args.class_weights else None
    if weights is not None:
        print('class weights: ' + ', '.join(f'{n} {w:.2f}' for n, w in zip(class_names, weights.tolist())))
    criterion = losses.build_criterion(args.loss, class_weights=weights, label_smoothing=args.label_smoothing)
    if args.multitask:
        criterion = losses.MultiTaskLoss(criterion, side_weight=args.side_loss_weight)
    return criterion.to(device)


def class_weights_for(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights ``n / (K_present * count)``; a grade absent from training gets weight 1."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.ones(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def build_optimizer(model: nn.Module, args: argparse.Namespace, steps_per_epoch: int
                    ) -> tuple[torch.optim.Optimizer, Any, bool]:
    """AdamW and the learning-rate schedule. Returns ``(optimizer, scheduler, step_per_batch)``."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    if args.scheduler == 'plateau':
        mode = 'max' if M.higher_is_better(args.select_metric) else 'min'
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=0.5,
                                                               patience=args.lr_patience)
        return optimizer, scheduler, False
    if args.scheduler == 'cosine':
        total = max(1, args.epochs * steps_per_epoch)
        warmup = int(round(args.warmup_epochs * steps_per_epoch))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(total, warmup))
        return optimizer, scheduler, True
    return optimizer, None, False


def cosine_with_warmup(total_steps: int, warmup_steps: int, floor: float = 0.01) -> Callable[[int], float]:
    """Learning-rate factor per step: linear warm-up, then cosine decay to ``floor`` of the base rate."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


# one epoch

@dataclass
class TrainContext:
    """What every training step needs, built once (the autocast context and scaler included, as in nanoGPT)."""
    model: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    autocast: AbstractContextManager
    scaler: torch.amp.GradScaler
    scheduler: Any = None
    step_per_batch: bool = False
    mixup: Any = None
    multitask: bool = False       # the model has a side head and the criterion is a losses.MultiTaskLoss
    prediction: str = 'argmax'    # PREDICTION_RULES value: how the training accuracy reads the logits


def model_outputs(model: nn.Module, images: torch.Tensor, multitask: bool
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(grade logits, side logits or None)``; one pass over the features either way."""
    if multitask:
        return model.forward_multitask(images)
    return model(images), None


def training_loss(ctx: TrainContext, images: torch.Tensor, labels: torch.Tensor, sides: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, grade logits)`` of one batch, with MixUp when configured. MixUp blends the side targets like the
    grades: labels and sides travel through it as one ``(B, 2)`` tensor, so both follow the same permutation."""
    if ctx.multitask:
        def criterion(out: tuple, targets: torch.Tensor) -> torch.Tensor:
            return ctx.criterion(out, targets[:, 0], targets[:, 1])
        targets = torch.stack([labels, sides], dim=1)
    else:
        criterion, targets = ctx.criterion, labels
    if ctx.mixup is not None:
        images, targets_a, targets_b, lam = ctx.mixup(images, targets)
    output = model_outputs(ctx.model, images, ctx.multitask)
    output = output if ctx.multitask else output[0]
    if ctx.mixup is not None:
        loss = data_augmentation.mixup_loss(criterion, output, targets_a, targets_b, lam)
    else:
        loss = criterion(output, targets)
    return loss, (output[0] if ctx.multitask else output)


def train_one_epoch(ctx: TrainContext, loader: DataLoader, epoch: int, epochs: int) -> dict[str, float]:
    """One pass over the training loader; returns the mean ``loss`` and the ``accuracy`` on the (possibly mixed)
    training batches. A non-finite loss stops the run with advice instead of silently ruining the weights."""
    ctx.model.train()
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(loader, desc=f'epoch {epoch}/{epochs} train', leave=False, dynamic_ncols=True, disable=None)
    for step, batch in enumerate(bar):
        images, labels, sides = unpack_batch(batch, ctx.device)
        if ctx.multitask and sides is None:
            raise UserError('--multitask needs batches with the affected side (image, label, side)')
        with ctx.autocast:
            loss, logits = training_loss(ctx, images, labels, sides)
        loss_value = loss.item()  # one device sync per step
        if not math.isfinite(loss_value):
            raise UserError(f'the training loss became {loss_value} at epoch {epoch}, step {step + 1}; '
                            f'lower --learning_rate or drop --amp fp16')
        ctx.optimizer.zero_grad(set_to_none=True)
        ctx.scaler.scale(loss).backward()
        ctx.scaler.step(ctx.optimizer)
        ctx.scaler.update()
        if ctx.step_per_batch and ctx.scheduler is not None:
            ctx.scheduler.step()
        batch = labels.shape[0]
        total_loss += loss_value * batch
        correct += (losses.decode_grades(logits.detach(), ctx.prediction) == labels).sum().item()
        seen += batch
        bar.set_postfix(loss=f'{total_loss / seen:.4f}', acc=f'{correct / seen:.3f}')
    return {'loss': total_loss / max(seen, 1), 'accuracy': correct / max(seen, 1)}


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device, autocast: AbstractContextManager,
            desc: str = 'eval', prediction: str = 'argmax', multitask: bool = False) -> dict[str, Any]:
    """Over a loader: ``true`` and ``pred`` grades (by the ``prediction`` rule), the mean unweighted
    cross-entropy ``loss`` (comparable across --loss choices), and with ``multitask`` the ``side_true`` /
    ``side_pred`` indices (side_true -100 = unknown)."""
    model.eval()
    true, pred, side_true, side_pred, total_loss, seen = [], [], [], [], 0.0, 0
    for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=None):
        images, labels, sides = unpack_batch(batch, device)
        with autocast:
            logits, side_logits = model_outputs(model, images, multitask)
        total_loss += nn.functional.cross_entropy(logits.float(), labels, reduction='sum').item()
        seen += labels.shape[0]
        true.append(labels.cpu())
        pred.append(losses.decode_grades(logits, prediction).cpu())
        if side_logits is not None and sides is not None:
            side_true.append(sides.cpu())
            side_pred.append(side_logits.argmax(dim=1).cpu())
    if not seen:
        raise UserError(f'{desc}: no images to evaluate')
    out = {'true': torch.cat(true).numpy(), 'pred': torch.cat(pred).numpy(), 'loss': total_loss / seen}
    if side_true:
        out['side_true'], out['side_pred'] = torch.cat(side_true).numpy(), torch.cat(side_pred).numpy()
    return out


def side_metrics(side_true: np.ndarray, side_pred: np.ndarray) -> dict[str, Any]:
    """Accuracy over the photos whose side is known, and the (true x predicted) confusion matrix in
    ``utils.SIDES`` order; accuracy is NaN when no side is known."""
    known = side_true != losses.SIDE_IGNORE_INDEX
    matrix = M.confusion_matrix(side_true[known], side_pred[known], NUM_SIDE_CLASSES)
    accuracy = float((side_true[known] == side_pred[known]).mean()) if known.any() else float('nan')
    return {'side_accuracy': accuracy, 'side_n': int(known.sum()), 'side_confusion_matrix': matrix.tolist()}


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, autocast: AbstractContextManager,
             num_classes: int, desc: str = 'val', prediction: str = 'argmax', multitask: bool = False
             ) -> dict[str, Any]:
    """Every metric of ``metrics.compute_metrics`` plus the mean ``loss``; with ``multitask`` also
    ``side_accuracy``, ``side_n`` and ``side_confusion_matrix`` (``side_metrics``)."""
    out = predict(model, loader, device, autocast, desc, prediction, multitask)
    result = M.compute_metrics(out['true'], out['pred'], num_classes)
    result['loss'] = out['loss']
    if 'side_true' in out:
        result.update(side_metrics(out['side_true'], out['side_pred']))
    return result


# checkpoints and logs

def checkpoint_state(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, epoch: int,
                     best: 'BestTracker', model_args: dict, preprocess: dict, args: argparse.Namespace,
                     history: list[dict], val_metrics: dict | None) -> dict[str, Any]:
    """The plain dict every .pth holds; ``torch.load(path, weights_only=True)`` opens it, also on a machine
    without the GPU it was trained on (tensors are stored on the CPU)."""
    return {
        'model': to_cpu(model.state_dict()),
        'optimizer': to_cpu(optimizer.state_dict()),
        'scheduler': scheduler.state_dict() if scheduler is not None else None,
        'epoch': int(epoch),
        'best_metric': float(best.value) if best.value is not None else float('nan'),
        'best_epoch': int(best.epoch),
        'select_metric': best.name,
        'model_args': utils.to_plain(model_args),
        'preprocess': utils.to_plain(preprocess),
        'class_names': utils.grade_names(model_args['num_classes']),
        'num_classes': int(model_args['num_classes']),
        'prediction': prediction_rule(args),
        **({'side_names': list(SIDES)} if model_args.get('num_side_classes') else {}),
        'args': utils.to_plain(vars(args)),
        'history': utils.to_plain(history),
        'val_metrics': utils.to_plain(val_metrics) if val_metrics is not None else None,
    }


def to_cpu(value: Any) -> Any:
    """Copy every tensor inside nested dicts / lists to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return value


@dataclass
class BestTracker:
    """Best validation value of the selection metric and the epoch that reached it."""
    name: str
    value: float | None = None
    epoch: int = 0

    def update(self, value: float, epoch: int) -> bool:
        if M.is_improvement(self.name, value, self.value):
            self.value, self.epoch = float(value), int(epoch)
            return True
        return False


def history_row(epoch: int, lr: float, train: dict, val: dict, seconds: float, is_best: bool) -> dict[str, Any]:
    row = {'epoch': epoch, 'lr': lr, 'train_loss': train['loss'], 'train_accuracy': train['accuracy'],
           'val_loss': val['loss']}
    row.update({f'val_{name}': val[name] for name in SCALAR_COLUMNS})
    row['val_per_class_accuracy'] = val['per_class_accuracy']
    if 'side_accuracy' in val:
        row['val_side_accuracy'] = val['side_accuracy']
        row['val_side_confusion_matrix'] = val['side_confusion_matrix']
    row['epoch_time_s'] = round(seconds, 2)
    row['is_best'] = bool(is_best)
    return row


def write_logs(history: list[dict], log_dir: Path, best: BestTracker, plot: bool = True) -> None:
    """Rewrite summary.csv, training_history.json and (with ``plot``) the curves from the whole history, so a
    resumed run's logs continue the interrupted ones."""
    columns = [k for k in history[0] if not isinstance(history[0][k], list)]  # per-class / confusion lists
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction='ignore')
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f'{v:.6g}' if isinstance(v, float) else v) for k, v in row.items() if k in columns})
    utils.atomic_write_text(log_dir / 'summary.csv', buffer.getvalue())

    series = {key: [row[key] for row in history] for key in history[0]}
    # the first five keys are the ones of the original training script
    payload = {'train_loss': series['train_loss'], 'train_acc': series['train_accuracy'],
               'val_loss': series['val_loss'], 'val_acc': series['val_accuracy'], 'val_f1': series['val_macro_f1'],
               **{k: v for k, v in series.items() if k not in ('train_loss', 'val_loss')},
               'select_metric': best.name, 'best_epoch': best.epoch, 'best_metric': best.value}
    best_row = next((row for row in history if row['epoch'] == best.epoch), None)
    if best_row is not None and 'val_side_confusion_matrix' in best_row:
        payload['side_names'] = list(SIDES)
        payload['side_confusion_matrix'] = best_row['val_side_confusion_matrix']  # rows true, columns predicted
    utils.atomic_write_text(log_dir / 'training_history.json', json.dumps(utils.to_plain(payload), indent=2))
    if plot:
        plot_curves(history, log_dir / 'training_curves.png', best)


def plot_curves(history: list[dict], path: Path, best: BestTracker) -> None:
    """Loss, accuracy, macro F1 and QWK per epoch; the chosen epoch is marked."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    epochs = [row['epoch'] for row in history]
    panels = [('loss', [('train_loss', 'train'), ('val_loss', 'val')]),
              ('accuracy', [('train_accuracy', 'train'), ('val_accuracy', 'val')]),
              ('macro F1', [('val_macro_f1', 'val')]),
              ('quadratic weighted kappa', [('val_qwk', 'val')])]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    for ax, (title, lines) in zip(axes.flat, panels):
        for key, label in lines:
            ax.plot(epochs, [row[key] for row in history], marker='o', markersize=3, label=label)
        if best.epoch:
            ax.axvline(best.epoch, color='grey', linestyle='--', linewidth=1, label=f'best (epoch {best.epoch})')
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel('epoch')
    fig.suptitle(f'training curves (best epoch chosen by validation {best.name})')
    fig.tight_layout()
    try:
        utils.save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)


def earlier_outputs(save_dir: Path, log_dir: Path) -> list[Path]:
    """Files an earlier run of this script left in ``save_dir`` / ``log_dir``."""
    found = [save_dir / n for n in CHECKPOINT_NAMES if (save_dir / n).is_file()]
    found += sorted(save_dir.glob('epoch_*.pth'))
    found += [log_dir / n for n in LOG_NAMES if (log_dir / n).is_file()]
    return found


def clear_earlier_outputs(found: list[Path], save_dir: Path, log_dir: Path, args: argparse.Namespace,
                          what: str = 'run', advice: str = '') -> None:
    """Never replace an earlier run's checkpoints or logs without being told to; with ``--overwrite`` remove them
    all up front, so no stale epoch_N.pth or test_metrics.json sits beside the new run's files."""
    if not found:
        return
    if not args.overwrite:
        raise UserError(f'{found[0]} is from an earlier {what}; {advice}replace it with --overwrite, or choose '
                        f'another --save_dir/--log_dir')
    if args.pretrained_path and any(_same_file(args.pretrained_path, str(path)) for path in found):
        raise UserError(f'--pretrained_path {args.pretrained_path} would be removed by --overwrite; copy it out of '
                        f'{save_dir} first or choose another --save_dir')
    for path in found:
        path.unlink()
    print(f'--overwrite: removed {len(found)} files of an earlier {what} from {save_dir} and {log_dir}')


def check_outputs_free(save_dir: Path, log_dir: Path, args: argparse.Namespace) -> None:
    if not args.resume:
        clear_earlier_outputs(earlier_outputs(save_dir, log_dir), save_dir, log_dir, args, 'run',
                              f'continue it with --resume {save_dir / "last.pth"}, ')


# resume

def load_resume_checkpoint(path: str, model_args: dict, preprocess: dict, args: argparse.Namespace) -> dict:
    """Open ``--resume`` and refuse, before any slow work, a checkpoint of another network, preprocessing or
    selection metric, or one that has already run ``--epochs``."""
    checkpoint = utils.load_checkpoint(path)
    stored = checkpoint.get('model_args')
    if stored is None or 'epoch' not in checkpoint or 'optimizer' not in checkpoint:
        raise UserError(f'{path}: not a training checkpoint of this script (no model_args/epoch/optimizer); '
                        f'use --pretrained_path to start from its weights')
    differs = {k: (stored.get(k), v) for k, v in model_args.items() if utils.to_plain(stored.get(k)) != v}
    for key in ('input_mode', 'image_size', 'region_size'):
        saved = (checkpoint.get('preprocess') or {}).get(key)
        if saved is not None and saved != preprocess.get(key):
            differs[key] = (saved, preprocess.get(key))
    if differs:
        shown = ', '.join(f'{k} {a} in the checkpoint vs {b} now' for k, (a, b) in differs.items())
        raise UserError(f'{path}: trained with other settings ({shown}); resume with the same flags')
    if checkpoint.get('prediction', 'argmax') != prediction_rule(args):
        raise UserError(f'{path}: trained for {checkpoint.get("prediction", "argmax")} predictions, not those of '
                        f'--loss {args.loss}; resume with the same --loss')
    if checkpoint.get('select_metric', args.select_metric) != args.select_metric:
        raise UserError(f'{path}: selected by {checkpoint["select_metric"]}, not --select_metric '
                        f'{args.select_metric}')
    if int(checkpoint['epoch']) >= args.epochs:
        raise UserError(f'{path}: already trained {checkpoint["epoch"]} epochs; raise --epochs to train further')
    return checkpoint


def restore(checkpoint: dict, path: str, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
            select_metric: str) -> tuple[int, BestTracker, list[dict]]:
    """Load weights, optimizer and scheduler state. Returns (last completed epoch, best so far, history)."""
    model.load_state_dict(Model.extract_state_dict(checkpoint))
    try:
        optimizer.load_state_dict(checkpoint['optimizer'])
        if scheduler is not None and checkpoint.get('scheduler'):
            scheduler.load_state_dict(checkpoint['scheduler'])
    except (ValueError, KeyError) as err:
        raise UserError(f'{path}: optimizer/scheduler state does not fit ({err}); '
                        f'was it trained with another --scheduler?') from err
    epoch = int(checkpoint['epoch'])
    best_value = checkpoint.get('best_metric')
    best = BestTracker(select_metric, None if best_value is None or math.isnan(best_value) else float(best_value),
                       int(checkpoint.get('best_epoch', 0)))
    history = [row for row in (checkpoint.get('history') or []) if row.get('epoch', 0) <= epoch]
    shown = f'{best.value:.4f} at epoch {best.epoch}' if best.value is not None else 'none yet'
    print(f'resumed from {path}: epoch {epoch} done; best validation {select_metric} {shown}')
    return epoch, best, history


# main

def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    utils.seed_everything(args.seed)
    device = setup_device(args)
    if args.cv is not None:
        return run_cross_validation(args, device)
    autocast, scaler = utils.amp_context(device, args.amp)
    save_dir, log_dir = Path(args.save_dir), Path(args.log_dir)
    check_outputs_free(save_dir, log_dir, args)

    preprocess = fpd.default_preprocess(input_mode=args.input_mode, image_size=args.image_size,
                                        region_size=args.region_size)
    input_size = fpd.model_input_size(preprocess)
    model_args = model_args_for(args, input_size)
    class_names = utils.grade_names(args.num_classes)
    resume_checkpoint = load_resume_checkpoint(args.resume, model_args, preprocess, args) if args.resume else None

    datasets = build_datasets(args, device)
    preprocess = dict(getattr(base_dataset(datasets['train']), 'preprocess', None) or preprocess)
    check_subject_overlap(datasets)
    split_summary = describe_splits(datasets, class_names)
    log_dir.mkdir(parents=True, exist_ok=True)
    save_dir.mkdir(parents=True, exist_ok=True)
    write_skipped(datasets, log_dir)
    utils.save_args(args, log_dir / 'args.yaml')
    done = int(resume_checkpoint['epoch']) if resume_checkpoint is not None else 0
    utils.seed_everything(args.seed + done)  # a resumed run draws fresh but repeatable batches and augmentations
    loaders = build_loaders(datasets, args, device, seed=args.seed + done)

    model, ctx = make_train_context(model_args, args, datasets, loaders, device, autocast, scaler)
    optimizer, scheduler = ctx.optimizer, ctx.scheduler
    print(f'HTNet: {Model.count_parameters(model) / 1e6:.3f}M parameters; input {input_size}x{input_size} '
          f'({args.input_mode}; face {args.image_size}px, regions {args.region_size}px); '
          f'{len(loaders["train"])} steps per epoch')
    if args.scheduler != 'cosine' and args.warmup_epochs:
        print('note: --warmup_epochs only applies to --scheduler cosine')

    start_epoch, best, history = 1, BestTracker(args.select_metric), []
    if resume_checkpoint is not None:
        done, best, history = restore(resume_checkpoint, args.resume, model, optimizer, scheduler,
                                      args.select_metric)
        del resume_checkpoint
        start_epoch = done + 1

    def state(epoch: int, val_metrics: dict | None) -> dict[str, Any]:
        return checkpoint_state(model, optimizer, scheduler, epoch, best, model_args, preprocess, args, history,
                                val_metrics)

    outcome = fit(ctx, loaders, args, start_epoch, best, history, state)
    results: dict[str, Any] = {
        'best_epoch': best.epoch, 'best_metric': best.value, 'select_metric': best.name,
        'best_val_metrics': outcome['best_val_metrics'], 'last_epoch': outcome['last_epoch'],
        'epochs_run': outcome['last_epoch'] - start_epoch + 1, 'interrupted': outcome['interrupted'],
        'stopped_early': outcome['stopped_early'], 'splits': split_summary, 'save_dir': str(save_dir),
        'log_dir': str(log_dir), 'history': history, 'test_metrics': None,
    }
    if best.epoch:
        print(f'best epoch {best.epoch}: validation {best.name} {best.value:.4f} -> {save_dir / "best_model.pth"}')
    if 'test' in loaders and not outcome['interrupted'] and best.epoch:
        results['test_metrics'] = score_test(model, loaders['test'], save_dir / 'best_model.pth', device, autocast,
                                             args.num_classes, class_names, log_dir, prediction=ctx.prediction,
                                             multitask=args.multitask)
    if args.baseline == 'symmetry' and not outcome['interrupted']:
        results['baseline_metrics'] = run_symmetry_baseline(datasets, args, log_dir, outcome['best_val_metrics'],
                                                            results['test_metrics'])
    return results


def make_train_context(model_args: dict[str, Any], args: argparse.Namespace, datasets: dict[str, Dataset],
                       loaders: dict[str, DataLoader], device: torch.device, autocast: AbstractContextManager,
                       scaler: torch.amp.GradScaler) -> tuple[nn.Module, TrainContext]:
    """A fresh network (with --pretrained_path weights), its criterion (class weights from this training split),
    optimizer and schedule. Returns the uncompiled model (what checkpoints store) and the context ``fit`` runs."""
    model = build_model(model_args, args).to(device)
    train_model = maybe_compile(model, args.compile, device)
    criterion = build_criterion(args, split_labels(datasets['train']), utils.grade_names(args.num_classes), device)
    optimizer, scheduler, step_per_batch = build_optimizer(model, args, len(loaders['train']))
    mixup = data_augmentation.MixUp(args.mixup) if args.mixup > 0 else None
    ctx = TrainContext(model=train_model, criterion=criterion, optimizer=optimizer, device=device,
                       autocast=autocast, scaler=scaler, scheduler=scheduler, step_per_batch=step_per_batch,
                       mixup=mixup, multitask=args.multitask, prediction=prediction_rule(args))
    return model, ctx


def fit(ctx: TrainContext, loaders: dict[str, DataLoader], args: argparse.Namespace, start_epoch: int,
        best: BestTracker, history: list[dict], state: Callable[[int, dict | None], dict]) -> dict[str, Any]:
    """The epoch loop: train, validate, select on validation, checkpoint, log. Ctrl-C saves ``last.pth`` (the
    weights of the interrupted epoch, labelled with the last completed one) and returns normally."""
    save_dir, log_dir = Path(args.save_dir), Path(args.log_dir)
    last_epoch, interrupted, stopped_early = start_epoch - 1, False, False
    best_val_metrics = None
    try:
        for epoch in range(start_epoch, args.epochs + 1):
            started, lr = time.time(), ctx.optimizer.param_groups[0]['lr']
            train_stats = train_one_epoch(ctx, loaders['train'], epoch, args.epochs)
            val_metrics = evaluate(ctx.model, loaders['val'], ctx.device, ctx.autocast, args.num_classes, 'val',
                                   prediction=ctx.prediction, multitask=ctx.multitask)
            if ctx.scheduler is not None and not ctx.step_per_batch:
                ctx.scheduler.step(val_metrics[args.select_metric])
            improved = best.update(val_metrics[args.select_metric], epoch)
            history.append(history_row(epoch, lr, train_stats, val_metrics, time.time() - started, improved))
            last_epoch = epoch
            snapshot = state(epoch, val_metrics)  # built once, written up to three times
            if improved:
                best_val_metrics = val_metrics
                utils.save_checkpoint(snapshot, save_dir / 'best_model.pth')
            utils.save_checkpoint(snapshot, save_dir / 'last.pth')
            if args.save_interval and epoch % args.save_interval == 0:
                utils.save_checkpoint(snapshot, save_dir / f'epoch_{epoch}.pth')
            write_logs(history, log_dir, best, plot=epoch % PLOT_EVERY == 0)
            print(f'epoch {epoch}/{args.epochs} | lr {lr:.2e} | train loss {train_stats["loss"]:.4f} '
                  f'acc {train_stats["accuracy"]:.3f} | val loss {val_metrics["loss"]:.4f} '
                  f'{M.format_metrics(val_metrics)}{side_text(val_metrics)}{" | best" if improved else ""}')
            if args.early_stopping and epoch - best.epoch >= args.early_stopping:
                print(f'early stopping: no better validation {args.select_metric} for {args.early_stopping} epochs')
                stopped_early = True
                break
    except KeyboardInterrupt:
        interrupted = True
        utils.save_checkpoint(state(last_epoch, None), save_dir / 'last.pth')
        print(f'\ninterrupted: saved {save_dir / "last.pth"} (epoch {last_epoch} completed); continue with '
              f'--resume {save_dir / "last.pth"}')
    if history:
        write_logs(history, log_dir, best, plot=True)
    if best_val_metrics is None:  # the best epoch came before a resume: its row of the history
        row = next((r for r in history if r['epoch'] == best.epoch), None)
        best_val_metrics = {k[len('val_'):]: v for k, v in row.items() if k.startswith('val_')} if row else None
    return {'last_epoch': last_epoch, 'interrupted': interrupted, 'stopped_early': stopped_early,
            'best_val_metrics': best_val_metrics}


def side_text(metrics: dict[str, Any]) -> str:
    """`` | side acc 0.750 (n 8)`` for a multi-task evaluation, else nothing."""
    if 'side_accuracy' not in metrics:
        return ''
    return f' | side acc {metrics["side_accuracy"]:.3f} (n {metrics["side_n"]})'


def score_test(model: nn.Module, loader: DataLoader, checkpoint_path: Path, device: torch.device,
               autocast: AbstractContextManager, num_classes: int, class_names: Sequence[str],
               log_dir: Path, prediction: str = 'argmax', multitask: bool = False) -> dict[str, Any]:
    """Score the held-out test split once with the best checkpoint and save ``<log_dir>/test_metrics.json``."""
    checkpoint = utils.load_checkpoint(checkpoint_path, map_location='cpu')
    model.load_state_dict(Model.extract_state_dict(checkpoint))
    test = evaluate(model.to(device), loader, device, autocast, num_classes, desc='test', prediction=prediction,
                    multitask=multitask)
    payload = {'split': 'test', 'note': 'held-out test split, scored once with best_model.pth; never used for '
                                        'model selection',
               'checkpoint': str(checkpoint_path), 'epoch': int(checkpoint['epoch']), 'class_names': list(class_names),
               'prediction': prediction, 'metrics': test}
    utils.atomic_write_text(log_dir / 'test_metrics.json', json.dumps(utils.to_plain(payload), indent=2))
    print(f'TEST (held out, epoch {checkpoint["epoch"]}): n {test["n"]} | {M.format_metrics(test)}{side_text(test)} '
          f'-> {log_dir / "test_metrics.json"}')
    return test


# symmetry baseline

def split_landmarks(dataset: Dataset) -> list[Any]:
    """The landmarks the dataset used for each photo of the split (``FaceLandmarks``, original-photo pixels)."""
    if isinstance(dataset, Subset):
        return [dataset.dataset.landmarks[i] for i in dataset.indices]
    return list(dataset.landmarks)


def run_symmetry_baseline(datasets: dict[str, Dataset], args: argparse.Namespace, log_dir: Path,
                          htnet_val: dict | None, htnet_test: dict | None) -> dict[str, Any] | None:
    """Fit ``symmetry.SymmetryBaseline`` on the training photos' landmarks and grades, score it on val (and
    test) with the metrics HTNet gets, print both side by side and write ``<log_dir>/baseline_metrics.json``.
    A training split the baseline cannot be fitted on (fewer than two grades with usable landmarks) is a note,
    not a failed run: HTNet's results are already saved."""
    baseline = symmetry.SymmetryBaseline(num_classes=args.num_classes, model='logreg', seed=args.seed)
    try:
        baseline.fit(split_landmarks(datasets['train']), split_labels(datasets['train']))
    except ValueError as err:
        print(f'note: symmetry baseline not fitted: {err}')
        return None
    scores: dict[str, Any] = {}
    for name in ('val', 'test'):
        if name in datasets:
            labels = split_labels(datasets[name])
            scores[name] = M.compute_metrics(labels, baseline.predict(split_landmarks(datasets[name])),
                                             args.num_classes)
    payload = {'baseline': 'symmetry', 'note': 'landmark symmetry baseline (symmetry.py) fitted on the training '
                                               'photos; scored with the same metrics as HTNet',
               'n_train': len(datasets['train']), 'val': scores.get('val'), 'test': scores.get('test'),
               'htnet': {'val': htnet_val, 'test': htnet_test}, 'fitted_baseline': baseline.to_dict()}
    utils.atomic_write_text(log_dir / 'baseline_metrics.json', json.dumps(utils.to_plain(payload), indent=2))
    best_path = Path(args.save_dir) / 'best_model.pth'
    if best_path.is_file():  # evaluate_facial_palsy.py then scores the baseline beside HTNet on the same photos
        checkpoint = utils.load_checkpoint(best_path)
        checkpoint['symmetry_baseline'] = utils.to_plain(baseline.to_dict())
        utils.save_checkpoint(checkpoint, best_path)
    print(comparison_table({'val': htnet_val, 'test': htnet_test}, scores))
    print(f'symmetry baseline -> {log_dir / "baseline_metrics.json"}')
    return scores


def comparison_table(htnet: dict[str, dict | None], baseline: dict[str, dict]) -> str:
    """A plain-text table: one row per metric, HTNet and the baseline side by side for each scored split."""
    splits = [name for name in ('val', 'test') if baseline.get(name) is not None]
    header = f'{"metric":<20}' + ''.join(f'{f"HTNet {s}":>12}{f"baseline {s}":>14}' for s in splits)
    lines = [header, '-' * len(header)]
    for metric in M.METRIC_NAMES:
        cells = ''
        for split in splits:
            mine = (htnet.get(split) or {}).get(metric)
            cells += (f'{mine:>12.4f}' if mine is not None else f'{"-":>12}') + f'{baseline[split][metric]:>14.4f}'
        lines.append(f'{metric:<20}{cells}')
    return '\n'.join(lines)


# cross-validation

CV_FILES = ('cv_summary.json', 'cv_predictions.csv', 'cv_folds.png')


def cv_earlier_outputs(save_dir: Path, log_dir: Path) -> list[Path]:
    """Files an earlier cross-validation left: every ``fold_<k>`` run and the pooled summary files."""
    found = [log_dir / name for name in CV_FILES if (log_dir / name).is_file()]
    folds = sorted({p.name for base in (save_dir, log_dir) if base.is_dir() for p in base.glob('fold_*') if p.is_dir()})
    for name in folds:
        found += earlier_outputs(save_dir / name, log_dir / name)
    return found


def check_cv_outputs_free(save_dir: Path, log_dir: Path, args: argparse.Namespace) -> None:
    """Refuse to replace an earlier cross-validation, or clear it with --overwrite, before any fold starts (so no
    stale fold of a larger K is mistaken for this run's)."""
    clear_earlier_outputs(cv_earlier_outputs(save_dir, log_dir), save_dir, log_dir, args, 'cross-validation')


def _csv_paths(csv_path: str, data_root: str, split: str | None) -> set[str]:
    """Photo paths of one split of an annotation CSV, as the dataset resolves them (no photo is opened)."""
    records, _ = fpd.read_annotation_csv(csv_path, data_root, split)
    return {record.path for record in records}


def _under_folder(path: str, root: Path, folder: str) -> bool:
    try:
        return Path(path).relative_to(root).parts[:1] == (folder,)
    except ValueError:
        return False


def build_cv_pool(args: argparse.Namespace, device: torch.device) -> tuple[Dataset, list[int]]:
    """One dataset over every photo of the training data (landmarks detected once, for all folds) and the indices
    of the pool: the train and val rows of the CSV (every row when it has no split column), or every grade
    folder except ``test/``. Rows of --test_csv never enter the pool."""
    source = SplitSource(args.train_csv, None)
    dataset = make_dataset(args, source, fpd.LandmarkDetector(device=device, cache_dir=args.cache_dir, progress=True))
    paths = [str(p) for p in dataset.paths]
    keep = [True] * len(paths)
    if args.train_csv is not None:
        counts = _read_split_counts(args.train_csv)
        if counts is not None:
            allowed = set().union(*(_csv_paths(args.train_csv, args.data_root, split)
                                    for split in ('train', 'val') if counts.get(split, 0)))
            if not allowed:
                raise UserError(f'{args.train_csv} has no split=train or split=val rows (splits: '
                                f'{_fmt_counts(counts)})')
            keep = [path in allowed for path in paths]
            if counts.get('test', 0):
                print(f'note: the {counts["test"]} split=test rows of {args.train_csv} stay out of every fold')
    else:
        root = Path(args.data_root)
        keep = [not _under_folder(path, root, 'test') for path in paths]
    if args.test_csv is not None:
        counts = _read_split_counts(args.test_csv)
        test_paths = _csv_paths(args.test_csv, args.data_root, 'test' if counts is not None else None)
        keep = [k and path not in test_paths for k, path in zip(keep, paths)]
        print(f'note: --test_csv is not scored with --cv; its {len(test_paths)} rows stay out of every fold '
              f'(score them with a final model trained without --cv)')
    pool = [i for i, k in enumerate(keep) if k]
    if not pool:
        raise UserError('no usable training photos left for cross-validation (see the skipped images above)')
    return dataset, pool


def subject_grades(labels: Sequence[int], subjects: Sequence[str]) -> dict[str, int]:
    """Each subject's most common grade (ties: the lower grade), the stratum of its fold."""
    by_subject: dict[str, Counter] = {}
    for label, subject in zip(labels, subjects):
        by_subject.setdefault(str(subject), Counter())[int(label)] += 1
    return {subject: min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]
            for subject, counts in sorted(by_subject.items())}


def assign_folds(labels: Sequence[int], subjects: Sequence[str], cv: int | str, seed: int) -> dict[str, int]:
    """Subject -> fold (1-based). K-fold: the subjects of each grade are shuffled and dealt to the folds in turn,
    the deal carrying on from grade to grade, so folds differ by at most one subject and every grade spreads over
    as many folds as it has subjects. ``loso``: one fold per subject, in sorted order."""
    grades = subject_grades(labels, subjects)
    if cv == 'loso':
        return {subject: k + 1 for k, subject in enumerate(sorted(grades))}
    if cv > len(grades):
        raise UserError(f'--cv {cv}: the pool has only {len(grades)} subjects; choose at most {len(grades)} folds '
                        f'(or --cv loso)')
    rng = random.Random(seed)
    folds, turn = {}, 0
    for grade in sorted(set(grades.values())):
        members = sorted(s for s, g in grades.items() if g == grade)
        rng.shuffle(members)
        for subject in members:
            folds[subject] = turn % cv + 1
            turn += 1
    return dict(sorted(folds.items()))


@dataclass
class FoldResult:
    """One fold's held-out predictions (base-dataset indices, in loader order) and its selection record."""
    fold: int
    indices: list[int]
    true: np.ndarray
    pred: np.ndarray
    side_true: np.ndarray | None
    side_pred: np.ndarray | None
    summary: dict[str, Any]


def run_fold(fold: int, dataset: Dataset, train_idx: list[int], heldout_idx: list[int], args: argparse.Namespace,
             device: torch.device, model_args: dict, preprocess: dict) -> FoldResult | None:
    """Train one fold as a normal run in ``<save_dir>/fold_<k>`` and ``<log_dir>/fold_<k>`` (validation carved
    from the fold's training subjects), then score its held-out subjects once with the fold's best checkpoint.
    Returns None when the fold was interrupted before any best checkpoint existed."""
    fold_args = copy.copy(args)
    fold_args.save_dir = str(Path(args.save_dir) / f'fold_{fold}')
    fold_args.log_dir = str(Path(args.log_dir) / f'fold_{fold}')
    save_dir, log_dir = Path(fold_args.save_dir), Path(fold_args.log_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    labels, subjects = split_labels(dataset), split_subjects(dataset)
    try:
        fit_pos, val_pos = carve_validation([labels[i] for i in train_idx], [subjects[i] for i in train_idx],
                                            args.val_fraction, args.seed + fold)
    except UserError as err:
        raise UserError(f'fold {fold}: {err} (validation subjects come from the fold\'s training subjects; '
                        f'use fewer folds or a larger --val_fraction)') from err
    datasets = {'train': Subset(with_transform(dataset, data_augmentation.get_augmentation_pipeline(args.augmentation)),
                                [train_idx[p] for p in fit_pos]),
                'val': Subset(dataset, [train_idx[p] for p in val_pos]),
                'test': Subset(dataset, heldout_idx)}
    check_subject_overlap(datasets)
    utils.save_args(fold_args, log_dir / 'args.yaml')
    utils.seed_everything(args.seed + fold)
    loaders = build_loaders(datasets, fold_args, device, seed=args.seed + fold)
    autocast, scaler = utils.amp_context(device, args.amp)
    model, ctx = make_train_context(model_args, fold_args, datasets, loaders, device, autocast, scaler)
    best, history = BestTracker(args.select_metric), []

    def state(epoch: int, val_metrics: dict | None) -> dict[str, Any]:
        return checkpoint_state(model, ctx.optimizer, ctx.scheduler, epoch, best, model_args, preprocess, fold_args,
                                history, val_metrics)

    outcome = fit(ctx, loaders, fold_args, 1, best, history, state)
    summary = {'fold': fold, 'heldout_subjects': sorted(set(split_subjects(datasets['test']))),
               'val_subjects': sorted(set(split_subjects(datasets['val']))),
               'n_train': len(datasets['train']), 'n_val': len(datasets['val']), 'n_heldout': len(heldout_idx),
               'best_epoch': best.epoch, 'best_val_metric': best.value, 'select_metric': best.name,
               'interrupted': outcome['interrupted'], 'checkpoint': str(save_dir / 'best_model.pth')}
    if not best.epoch:
        return None
    checkpoint = utils.load_checkpoint(save_dir / 'best_model.pth', map_location='cpu')
    model.load_state_dict(Model.extract_state_dict(checkpoint))
    out = predict(model.to(device), loaders['test'], device, autocast, desc=f'fold {fold} held out',
                  prediction=ctx.prediction, multitask=args.multitask)
    summary['metrics'] = M.compute_metrics(out['true'], out['pred'], args.num_classes)
    if 'side_true' in out:
        summary['metrics'].update(side_metrics(out['side_true'], out['side_pred']))
    return FoldResult(fold=fold, indices=list(heldout_idx), true=out['true'], pred=out['pred'],
                      side_true=out.get('side_true'), side_pred=out.get('side_pred'), summary=summary)


def fold_statistics(results: Sequence[FoldResult]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and sample standard deviation over folds of each scalar metric (NaN folds left out)."""
    mean, std = {}, {}
    for name in M.METRIC_NAMES:
        values = np.array([r.summary['metrics'][name] for r in results], dtype=np.float64)
        values = values[np.isfinite(values)]
        mean[name] = float(values.mean()) if values.size else float('nan')
        std[name] = float(values.std(ddof=1)) if values.size > 1 else float('nan')
    return mean, std


def write_cv_predictions(results: Sequence[FoldResult], dataset: Dataset, path: Path, multitask: bool) -> None:
    """One row per held-out photo: ``path, subject, fold, true, predicted`` (+ the sides with --multitask)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(['path', 'subject', 'fold', 'true', 'predicted'] +
                    (['side_true', 'side_predicted'] if multitask else []))
    for result in results:
        for row, index in enumerate(result.indices):
            cells = [dataset.paths[index], dataset.subjects[index], result.fold, int(result.true[row]),
                     int(result.pred[row])]
            if multitask and result.side_true is not None:
                side = int(result.side_true[row])
                cells += [SIDES[side] if 0 <= side < len(SIDES) else 'unknown', SIDES[int(result.side_pred[row])]]
            writer.writerow(cells)
    utils.atomic_write_text(path, buffer.getvalue())


def plot_cv_folds(results: Sequence[FoldResult], pooled: dict[str, Any], path: Path, title: str) -> None:
    """Per-fold macro F1 and QWK as bars, the pooled values over all held-out photos as lines."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    folds = np.arange(len(results))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(results) + 3), 4))
    width = 0.4
    for offset, (name, label, color) in zip((-width / 2, width / 2), (('macro_f1', 'macro F1', 'tab:blue'),
                                                                      ('qwk', 'QWK', 'tab:orange'))):
        ax.bar(folds + offset, [r.summary['metrics'][name] for r in results], width, label=f'{label} per fold',
               color=color, alpha=0.7)
        ax.axhline(pooled[name], color=color, linestyle='--', linewidth=1.5,
                   label=f'{label} pooled {pooled[name]:.3f}')
    ax.set_xticks(folds, [str(r.fold) for r in results])
    ax.set_xlabel('fold')
    ax.set_ylabel('score on the held-out subjects')
    ax.set_title(title)
    ax.grid(axis='y', alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        utils.save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)


def cv_table(results: Sequence[FoldResult], pooled: dict[str, Any], mean: dict, std: dict) -> str:
    """The per-fold table printed at the end, then mean +- std over folds and the pooled line."""
    names = ('accuracy', 'macro_f1', 'qwk', 'mae', 'within_one')
    header = f'{"fold":>6}{"n":>6}{"best ep":>9}' + ''.join(f'{n:>12}' for n in names)
    lines = [header, '-' * len(header)]
    for r in results:
        lines.append(f'{r.fold:>6}{r.summary["n_heldout"]:>6}{r.summary["best_epoch"]:>9}' +
                     ''.join(f'{r.summary["metrics"][n]:>12.4f}' for n in names))
    lines.append(f'{"mean":>6}{"":>6}{"":>9}' + ''.join(f'{mean[n]:>12.4f}' for n in names))
    lines.append(f'{"std":>6}{"":>6}{"":>9}' + ''.join(f'{std[n]:>12.4f}' for n in names))
    lines.append(f'{"pooled":>6}{pooled["n"]:>6}{"":>9}' + ''.join(f'{pooled[n]:>12.4f}' for n in names))
    return '\n'.join(lines)


def run_cross_validation(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """``--cv K`` / ``--cv loso``: detect the pool's landmarks once, train one run per fold on index subsets of
    that dataset, pool every held-out prediction and write ``cv_summary.json``, ``cv_predictions.csv`` and
    ``cv_folds.png`` in --log_dir. Returns the summary dict."""
    save_dir, log_dir = Path(args.save_dir), Path(args.log_dir)
    check_cv_outputs_free(save_dir, log_dir, args)
    if args.val_fraction is None:
        args.val_fraction = DEFAULT_VAL_FRACTION
    preprocess = fpd.default_preprocess(input_mode=args.input_mode, image_size=args.image_size,
                                        region_size=args.region_size)
    model_args = model_args_for(args, fpd.model_input_size(preprocess))
    class_names = utils.grade_names(args.num_classes)

    dataset, pool = build_cv_pool(args, device)
    preprocess = dict(getattr(dataset, 'preprocess', None) or preprocess)
    labels, subjects = split_labels(dataset), split_subjects(dataset)
    folds = assign_folds([labels[i] for i in pool], [subjects[i] for i in pool], args.cv, args.seed)
    num_folds = max(folds.values())
    to_run = min(num_folds, args.cv_folds_limit or num_folds)
    log_dir.mkdir(parents=True, exist_ok=True)
    save_dir.mkdir(parents=True, exist_ok=True)
    write_skipped({'pool': dataset}, log_dir)
    utils.save_args(args, log_dir / 'args.yaml')
    counts = Counter(labels[i] for i in pool)
    print(f'cross-validation ({"leave one subject out" if args.cv == "loso" else f"{args.cv}-fold, by subject"}): '
          f'{len(pool)} images of {len(folds)} subjects ('
          + ', '.join(f'{class_names[k]}: {counts.get(k, 0)}' for k in range(len(class_names))) + ')')
    print(f'{num_folds} folds' + (f'; running the first {to_run} (--cv_folds_limit)' if to_run < num_folds else ''))

    results: list[FoldResult] = []
    interrupted, started = False, time.time()
    for fold in range(1, to_run + 1):
        heldout = [i for i in pool if folds[subjects[i]] == fold]
        training = [i for i in pool if folds[subjects[i]] != fold]
        print(f'\n=== fold {fold}/{num_folds}: {len(heldout)} held-out images of '
              f'{len({subjects[i] for i in heldout})} subjects ===')
        result = run_fold(fold, dataset, training, heldout, args, device, model_args, preprocess)
        if result is not None:
            results.append(result)
            print(f'fold {fold} held out (best epoch {result.summary["best_epoch"]}): n {len(heldout)} | '
                  f'{M.format_metrics(result.summary["metrics"])}{side_text(result.summary["metrics"])}')
        if result is None or result.summary['interrupted']:
            interrupted = True
            print(f'cross-validation stopped at fold {fold}; the completed folds are summarised')
            break
        if fold == 1 and to_run > 1:
            per_fold = time.time() - started
            left = per_fold * (to_run - 1)
            print(f'fold 1 took {per_fold:.0f} s; the remaining {to_run - 1} folds need about '
                  + (f'{left / 60:.1f} min' if left >= 120 else f'{left:.0f} s'))
    if not results:
        raise UserError('cross-validation interrupted before any fold finished; nothing to summarise')
    return summarise_cv(results, dataset, folds, num_folds, len(pool), interrupted, args, log_dir, class_names)


def summarise_cv(results: Sequence[FoldResult], dataset: Dataset, folds: dict[str, int], num_folds: int,
                 pool_size: int, interrupted: bool, args: argparse.Namespace, log_dir: Path,
                 class_names: Sequence[str]) -> dict[str, Any]:
    """Pool the held-out predictions of every fold run: metrics with subject-resampled 95% bootstrap intervals,
    mean and std over folds; write the summary, the predictions and the plot, and print the table."""
    true = np.concatenate([r.true for r in results])
    pred = np.concatenate([r.pred for r in results])
    groups = [dataset.subjects[i] for r in results for i in r.indices]
    pooled = M.compute_metrics(true, pred, args.num_classes)
    if args.multitask and all(r.side_true is not None for r in results):
        pooled.update(side_metrics(np.concatenate([r.side_true for r in results]),
                                   np.concatenate([r.side_pred for r in results])))
    intervals = M.bootstrap_metrics(true, pred, args.num_classes, groups=groups, seed=args.seed)
    mean, std = fold_statistics(results)
    partial = len(results) < num_folds
    summary = {
        'cv': args.cv, 'num_folds': num_folds, 'folds_run': len(results), 'partial': partial,
        'interrupted': interrupted,
        'note': ('held-out folds are whole subjects; each fold chose its best epoch on validation subjects carved '
                 'from its own training subjects and scored its held-out subjects once; --test_csv rows are in '
                 'no fold and not scored' + ('; PARTIAL: not every fold was run, so the pooled metrics cover only '
                                            'the subjects of the folds run' if partial else '')),
        'select_metric': args.select_metric, 'prediction': prediction_rule(args), 'class_names': list(class_names),
        'val_fraction': args.val_fraction, 'seed': args.seed,
        'pool': {'images': pool_size, 'subjects': len(folds)},
        'pooled': {'metrics': pooled, 'ci95': intervals, 'bootstrap': 'subjects resampled, 1000 draws'},
        'fold_mean': mean, 'fold_std': std,
        'folds': [r.summary for r in results],
        'fold_assignment': folds,
    }
    utils.atomic_write_text(log_dir / 'cv_summary.json', json.dumps(utils.to_plain(summary), indent=2))
    write_cv_predictions(results, dataset, log_dir / 'cv_predictions.csv', args.multitask)
    label = f'{"leave one subject out" if args.cv == "loso" else f"{args.cv}-fold"} cross-validation'
    plot_cv_folds(results, pooled, log_dir / 'cv_folds.png',
                  f'{label}' + (f' (partial: {len(results)} of {num_folds} folds)' if partial else ''))
    print('\n' + cv_table(results, pooled, mean, std))
    ci = intervals
    print(f'POOLED ({label}{", partial" if partial else ""}; n {pooled["n"]} held-out images of '
          f'{len(set(groups))} subjects): {M.format_metrics(pooled)}{side_text(pooled)} | macro_f1 95% CI '
          f'[{ci["macro_f1"]["ci_low"]:.3f}, {ci["macro_f1"]["ci_high"]:.3f}] | qwk 95% CI '
          f'[{ci["qwk"]["ci_low"]:.3f}, {ci["qwk"]["ci_high"]:.3f}] -> {log_dir / "cv_summary.json"}')
    return {**summary, 'summary_path': str(log_dir / 'cv_summary.json'),
            'predictions_path': str(log_dir / 'cv_predictions.csv'), 'plot_path': str(log_dir / 'cv_folds.png'),
            'interrupted': interrupted}


def _cli(argv: Sequence[str] | None = None) -> int:
    results = main(argv)
    return 130 if results.get('interrupted') else 0


if __name__ == '__main__':
    utils.run_cli(_cli)
