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
import json
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

import Model
import annotations
import checkpoints
import run_folders
import data_augmentation as DA
import distributed
import engine
import facial_palsy_dataset as fpd
import losses
import metrics as M
import symmetry
import training_data
import training_setup
import utils
from utils import UserError

LOG_BYTES = 10 ** 7  # room the logs and curves of a run need, checked with the checkpoints' before any slow work


# arguments

class HelpFormatter(utils.HelpFormatter, argparse.RawDescriptionHelpFormatter):
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

  # a moving average of the weights (validated, selected and stored); pick the epoch by patient, not by photo
  python train_facial_palsy.py ... --ema 0.99 --select_metric subject_macro_f1

  # multi-task: a second head predicts the affected side (left / right / none) from the same features
  python train_facial_palsy.py ... --multitask --side_loss_weight 0.5

  # mirror half the training photos and swap their side label (a left palsy mirrored is a right palsy)
  python train_facial_palsy.py ... --multitask --flip_swap_side

  # also fit the landmark symmetry baseline on the training photos and compare it with HTNet on val and test
  python train_facial_palsy.py ... --test_csv ./datasets/facial_palsy/fnp_annotation.csv --baseline symmetry

  # subject-wise 5-fold cross-validation over the train + val rows (grade-stratified; each fold picks its best
  # epoch on validation subjects carved from its own training subjects, then scores its held-out subjects once)
  python train_facial_palsy.py --data_root ./datasets/facial_palsy/FNP \\
      --train_csv ./datasets/facial_palsy/fnp_annotation.csv --cv 5 --epochs 30 \\
      --save_dir ./checkpoints/fnp_cv --log_dir ./logs/fnp_cv

  # leave one subject out (one fold per patient; long): a quick look at the first 3 folds only
  python train_facial_palsy.py --data_root ./datasets/facial_palsy/FNP \\
      --train_csv ./datasets/facial_palsy/fnp_annotation.csv --cv loso --cv_folds_limit 3 \\
      --save_dir ./checkpoints/fnp_loso --log_dir ./logs/fnp_loso

  # more than one process (docs/en/distributed.md): one run with DistributedDataParallel over 4 GPUs, global
  # batch 4 x 32 = 128 photos a step; then the 5 folds of a cross-validation spread over the 4 processes
  torchrun --standalone --nproc_per_node 4 train_facial_palsy.py ... --batch_size 32
  torchrun --standalone --nproc_per_node 4 train_facial_palsy.py ... --cv 5

outputs: <save_dir>/best_model.pth (best validation --select_metric; with "ood", the statistics of its features on
the training photos that flag unfamiliar photos), last.pth (the last completed epoch, with the optimizer state to
--resume from), epoch_N.pth (weights only);
<log_dir>/summary.csv, training_history.json, training_curves.png, args.yaml, test_metrics.json (with --test_csv),
skipped_images.csv (photos that could not be used), baseline_metrics.json (with --baseline symmetry);
with --cv: <save_dir>/fold_<k>/ and <log_dir>/fold_<k>/ as above for each fold, then <log_dir>/cv_summary.json,
cv_predictions.csv (path, subject, fold, true, predicted) and cv_folds.png; <log_dir>/fold_<k>/fold_result.json
says how each fold ended. Under torchrun rank 0 writes these, except each fold's own files, which the process
that ran the fold writes.
An earlier run in --save_dir / --log_dir is moved to <dir>.previous-<time> (--overwrite replaces it instead,
once the new run's first checkpoint is written; --resume continues it).
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
    data.add_argument('--one_photo_per_subject', action='store_true',
                      help='every photo shows a different person: a photo whose subject comes from its file name is '
                           'its own subject, and the check that stops camera-counter names is skipped')
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
    data.add_argument('--augmentation', default=DA.DEFAULT_AUGMENTATION,
                      choices=list(DA.AUGMENTATION_NAMES),
                      help='training augmentation from data_augmentation.py (none of them flips: left-right '
                           'asymmetry is the signal; see --flip_swap_side); validation and test images are never '
                           'augmented')
    data.add_argument('--flip_swap_side', action=argparse.BooleanOptionalAction, default=None,
                      help='mirror each training photo with probability 0.5 and swap its affected side (left <-> '
                           'right; none stays none; the grade is unchanged), before --augmentation: the mirror of '
                           'a left-sided palsy is a right-sided one, so this doubles the faces without blurring the '
                           'asymmetry. Default: on for photos (it grades faces of another kind better: '
                           'benchmarks/generalisation.py), off for --input_mode flow, which reads photo pairs; '
                           '--no-flip_swap_side turns it off')
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
                            'any checkpoint; tensors that do not fit (the head) are skipped and listed. A file '
                            'that fits fewer than half of the network\'s tensors (the heads aside) is refused')
    model.add_argument('--allow_partial_pretrained', action='store_true',
                       help='with --pretrained_path: start from a file even when fewer than half of the tensors fit')
    model.add_argument('--pos_emb', default='interpolate', choices=['interpolate', 'skip'],
                       help='with --pretrained_path: resize positional embeddings of another input size, or skip them')
    model.add_argument('--multitask', action='store_true',
                       help='add a second head that predicts the affected side (left / right / none) from the same '
                            'features; photos whose side is unknown add nothing to its loss. Logs '
                            'val_side_accuracy and the side confusion matrix of the best epoch')
    model.add_argument('--side_loss_weight', type=float, default=0.5,
                       help='with --multitask: weight of the side cross-entropy added to the grade loss')

    optim = parser.add_argument_group('optimisation')
    optim.add_argument('--batch_size', type=int, default=32,
                       help='images per training step of each process (as torchvision and DeiT): under torchrun '
                            'with N processes a step reads N x --batch_size images, the global batch (printed and '
                            'logged); the learning rate is not scaled with it')
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
    optim.add_argument('--loss', default='ordinal', choices=list(losses.CRITERIA),
                       help='ce: cross-entropy (grades unordered); ordinal: cumulative-probability loss on the same '
                            'logits (losses.py), so a grade far off costs more than one next to it; its grade is '
                            'the median of the predicted distribution (stored as the checkpoint\'s "prediction")')
    optim.add_argument('--class_weights', action='store_true',
                       help='weight the loss by inverse grade frequency of the training split (for imbalance)')
    optim.add_argument('--early_stopping', type=int, default=0, metavar='N',
                       help='stop after N epochs without a better validation --select_metric; 0 = never')
    optim.add_argument('--select_metric', default='macro_f1', choices=list(M.SELECT_METRIC_NAMES),
                       help='validation metric that picks best_model.pth (mae: lower is better). subject_<metric> '
                            '(subject_macro_f1, subject_qwk, subject_mae...) scores patients instead of photos: each '
                            'validation subject\'s photo probabilities averaged and read with the run\'s prediction '
                            'rule, as evaluation grades a patient; it needs subjects with several photos. The '
                            'val_subject_* columns are logged whenever the validation photos have such subjects')
    optim.add_argument('--ema', type=float, default=0.0, metavar='DECAY',
                       help='keep an exponential moving average of the weights, updated after every optimiser step '
                            '(ema = DECAY * ema + (1 - DECAY) * weights; 0 = off). It averages over the last '
                            '~1/(1 - DECAY) steps, so DECAY is per step, not per epoch: with ~30 steps an epoch, '
                            '0.99 averages over ~3 epochs and 0.999 over ~30. Validation, the best epoch, the test '
                            'score and the weights of best_model.pth are then the averaged ones; last.pth also keeps '
                            'the raw weights to resume from')

    run = parser.add_argument_group('run')
    run.add_argument('--save_dir', default='./checkpoints/fnp',
                     help='folder of best_model.pth, last.pth, epoch_N.pth; an earlier run there is moved to '
                          '<save_dir>.previous-<time> unless --resume or --overwrite is given')
    run.add_argument('--log_dir', default='./logs/fnp',
                     help='folder of summary.csv, training_history.json, args.yaml, training_curves.png')
    run.add_argument('--save_interval', type=int, default=10,
                     help='also keep epoch_N.pth (weights only) every N epochs; 0 = never')
    run.add_argument('--resume', default=None, metavar='PATH',
                     help='continue from a checkpoint (e.g. <save_dir>/last.pth, which always holds a completed '
                          'epoch) at its next epoch, with optimizer and scheduler state; with the same --seed the '
                          'remaining epochs repeat those of an uninterrupted run exactly (on CPU). Resumes into '
                          'the run\'s own folders or empty ones. Under torchrun every process loads it and rank 0 '
                          'writes')
    run.add_argument('--overwrite', action='store_true',
                     help='replace the checkpoints and logs of an earlier run in --save_dir / --log_dir; they are '
                          'set aside until the new run\'s first checkpoint is written, and come back if it fails '
                          'before that')
    run.add_argument('--device', default='auto',
                     help='auto (CUDA when available), cpu, cuda or cuda:N; under torchrun each process of a CUDA '
                          'run takes cuda:LOCAL_RANK')
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
                         '<log_dir>/cv_summary.json, cv_predictions.csv, cv_folds.png. A fold that fails is named '
                         'and the others go on (exit status 1). Under torchrun the folds are spread over the '
                         'processes (fold k on rank (k - 1) %% N, each alone on its device) with the numbers of a '
                         'single process, and rank 0 writes the summary')
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
    training_setup.validate_args(args)
    return args


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
    side_head = {'num_side_classes': len(annotations.SIDE_CLASSES)} if getattr(args, 'multitask', False) else {}
    return Model.model_args_from(image_size=input_size, patch_size=args.patch_size, num_classes=args.num_classes,
                                 dim=args.dim, heads=args.heads, num_hierarchies=args.num_hierarchies,
                                 block_repeats=args.block_repeats, dropout=args.dropout, **side_head)


# outputs

def load_resume(args: argparse.Namespace, model_args: dict[str, Any], preprocess: dict[str, Any]) -> dict | None:
    """The ``--resume`` checkpoint, checked against this run's network and settings (None without --resume).
    A checkpoint of the last epoch is accepted when the run's best_model.pth beside it has no out-of-distribution
    statistics yet: the run stopped before its closing steps, which the resume then completes."""
    if not args.resume:
        return None
    checkpoint = checkpoints.load_checkpoint(args.resume)
    best_path = Path(args.resume).parent / 'best_model.pth'
    finish = int(checkpoint.get('epoch', -1)) == args.epochs and best_path.is_file()
    if finish:
        best = checkpoints.load_checkpoint(best_path)
        finish = 'ood' not in best and best.get('run_id') == checkpoint.get('run_id')
    checkpoints.check_resume(checkpoint, args.resume, model_args=model_args, preprocess=preprocess,
                             prediction=losses.prediction_for(args.loss), select_metric=args.select_metric,
                             epochs=args.epochs, ema=args.ema, finish=finish,
                             training={k: getattr(args, k) for k in checkpoints.RESUME_TRAINING_FLAGS})
    return checkpoint


def prepare_run_folders(args: argparse.Namespace, model_args: dict[str, Any], epochs_done: int = 0,
                        resume_checkpoint: dict | None = None, runs: int | None = 1,
                        cv: bool = False) -> run_folders.RunFolders:
    """Before any slow work: make --save_dir / --log_dir free (``run_folders.guard_run_folders``: an earlier run
    is moved aside, replaced with --overwrite, or continued with --resume), print the disk the checkpoints will
    take and check both folders can be written and have that room. The caller restores the earlier run if this
    one stops before its first checkpoint (``RunFolders.restore``)."""
    save_dir, log_dir = Path(args.save_dir), Path(args.log_dir)
    need, text = run_folders.disk_estimate(model_args, epochs_done + 1, args.epochs, args.save_interval, runs,
                                             ema=bool(args.ema))
    folders = run_folders.guard_run_folders(save_dir, log_dir, overwrite=args.overwrite, resume=args.resume,
                                            resume_checkpoint=resume_checkpoint, cv=cv, keep=[args.pretrained_path])
    try:
        replaced = [save_dir / name for name in run_folders.RUN_CHECKPOINTS] if not folders.moves else []
        need = max(need - sum(path.stat().st_size for path in replaced if path.is_file()),
                   need // (2 * (runs or 1)))  # a checkpoint is written next to the one it replaces
        print(f'{text} in {save_dir}')
        utils.check_writable(save_dir, '--save_dir', need_bytes=need)
        utils.check_writable(log_dir, '--log_dir', need_bytes=LOG_BYTES)
    except BaseException:
        folders.restore()
        raise
    return folders


# main

def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse ``argv`` and train (one run, or --cv folds). Under torchrun (several processes) one run trains with
    DistributedDataParallel and --cv spreads its folds over the processes; rank 0 prints and writes the shared
    files, and its return value is the run's result (the other processes return what they ran)."""
    with distributed.only_main_prints():
        args = parse_args(argv)
        utils.seed_everything(args.seed)
        device = training_setup.setup_device(args)
        with distributed.process_group(device):
            if args.cv is not None:
                return run_cross_validation(args, device)
            return run_single(args, device)


def run_single(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """One train / val run (``main`` without --cv): every check first, then ``train_run``."""
    # everything that can be refused is checked here, before the earlier run is touched and before any slow work
    detector = fpd.LandmarkDetector(device=device, cache_dir=args.cache_dir, progress=True)
    preprocess = run_preprocess(args, detector)
    model_args = model_args_for(args, fpd.model_input_size(preprocess))
    resume_checkpoint = load_resume(args, model_args, preprocess)
    utils.seed_everything(args.seed)  # the initial weights depend on the seed alone
    model = training_setup.build_model(model_args, args)  # --pretrained_path is judged here
    done = int(resume_checkpoint['epoch']) if resume_checkpoint is not None else 0
    folders = prepare_folders_on_main(args, model_args, epochs_done=done, resume_checkpoint=resume_checkpoint)
    try:
        return train_run(args, device, detector, preprocess, model_args, model, resume_checkpoint, folders)
    finally:
        folders.restore()  # nothing to do once the run's first checkpoint is written


def prepare_folders_on_main(args: argparse.Namespace, model_args: dict[str, Any], **kwargs: Any
                            ) -> run_folders.RunFolders:
    """``prepare_run_folders`` on rank 0 alone; the other processes of a torchrun run wait for it and write into
    the folders it made free, with nothing of their own to commit or restore."""
    folders = distributed.run_on_main(lambda: prepare_run_folders(args, model_args, **kwargs))
    if folders is None:
        folders = run_folders.RunFolders(Path(args.save_dir), Path(args.log_dir), settled=True)
    return folders


def train_run(args: argparse.Namespace, device: torch.device, detector: fpd.LandmarkDetector,
              preprocess: dict[str, Any], model_args: dict[str, Any], model: nn.Module,
              resume_checkpoint: dict | None, folders: run_folders.RunFolders) -> dict[str, Any]:
    """The slow part of ``main``: landmarks, splits, the epochs, and the test split scored once at the end.
    Under torchrun every process trains its share of each batch, rank 0 writes and scores."""
    save_dir, log_dir = Path(args.save_dir), Path(args.log_dir)
    autocast, scaler = utils.amp_context(device, args.amp)
    class_names = annotations.grade_names(args.num_classes)
    run_id = distributed.broadcast_object((resume_checkpoint or {}).get('run_id') or run_folders.new_run_id())
    writes = distributed.is_main()
    with distributed.main_first():  # rank 0 fills the landmark cache, the others read it
        datasets = training_data.build_datasets(args, detector, preprocess)
    training_data.check_subject_overlap(datasets)
    val_subjects = training_data.validation_subjects(datasets['val'], args.select_metric)
    split_summary = training_data.describe_splits(datasets, class_names)
    if writes:
        log_dir.mkdir(parents=True, exist_ok=True)
        save_dir.mkdir(parents=True, exist_ok=True)
        training_data.write_skipped(datasets, log_dir)
        utils.save_args(args, log_dir / 'args.yaml')
    baseline = None
    if args.baseline == 'symmetry':  # fitted first, so that every checkpoint carries it for evaluation
        baseline = symmetry.fit_baseline(training_data.split_landmarks(datasets['train']),
                                         training_data.split_labels(datasets['train']), args.num_classes,
                                         seed=args.seed)
    processes = distributed.world_size()
    loaders = training_data.build_loaders(datasets, args, device, seed=args.seed,  # each epoch reseeds it
                                          shard=(distributed.rank(), processes))

    model, ctx = training_setup.make_train_context(model_args, args, datasets, loaders, device, autocast, scaler,
                                                   model=model, ddp=True)
    print(f'HTNet: {Model.count_parameters(model) / 1e6:.3f}M parameters; input {model_args["image_size"]}x'
          f'{model_args["image_size"]} ({args.input_mode}; face {args.image_size}px, regions {args.region_size}px); '
          f'{len(loaders["train"])} steps per epoch; run {run_id}')
    batch = batch_sizes(args.batch_size, processes)
    print(f'batch: {batch["global"]} photos per optimiser step' + (
        f' ({args.batch_size} per process x {processes} processes, DistributedDataParallel)' if processes > 1
        else ''))
    if args.scheduler != 'cosine' and args.warmup_epochs:
        print('note: --warmup_epochs only applies to --scheduler cosine')
    log_extras = {'warnings': training_setup.warn_size(model, len(datasets['train']), args), 'batch': batch}

    start_epoch, best, history = 1, engine.BestTracker(args.select_metric), []
    if resume_checkpoint is not None:
        done, best.value, best.epoch, history = checkpoints.restore_training(
            resume_checkpoint, args.resume, model, ctx.optimizer, ctx.scheduler, ctx.scaler, ctx.ema)
        best.metrics = resume_checkpoint.get('best_val_metrics')
        shown = f'{best.value:.4f} at epoch {best.epoch}' if best.value is not None else 'none yet'
        print(f'resumed run {run_id} from {args.resume}: epoch {done} done; best validation {best.name} {shown}'
              + ('; every epoch is done: completing the closing steps' if done >= args.epochs else ''))
        start_epoch = done + 1
        if writes:
            carry_best_checkpoint(Path(args.resume).parent, save_dir, best.epoch, resume_checkpoint.get('run_id'))

    state = checkpoint_maker(model, ctx, model_args, preprocess, args, best, history, baseline, run_id)
    outcome = engine.fit(ctx, loaders, args, start_epoch, best, history, state, run_id=run_id,
                         on_saved=lambda epoch: folders.commit(), val_subjects=val_subjects, log_extras=log_extras)
    results: dict[str, Any] = {
        'best_epoch': best.epoch, 'best_metric': best.value, 'select_metric': best.name,
        'best_val_metrics': outcome['best_val_metrics'], 'last_epoch': outcome['last_epoch'],
        'epochs_run': outcome['last_epoch'] - start_epoch + 1, 'interrupted': outcome['interrupted'],
        'stopped_early': outcome['stopped_early'], 'splits': split_summary, 'save_dir': str(save_dir),
        'log_dir': str(log_dir), 'history': history, 'test_metrics': None, 'run_id': run_id,
        'warnings': log_extras['warnings'], 'ood': None,
    }
    if best.epoch:
        print(f'best epoch {best.epoch}: validation {best.name} {best.value:.4f} -> {save_dir / "best_model.pth"}')
    if not writes:  # the closing steps read and write rank 0's files
        return results
    if not outcome['interrupted'] and best.epoch:
        results['ood'] = log_extras['ood'] = training_setup.store_ood_statistics(
            save_dir / 'best_model.pth', datasets, args, device, autocast)
        engine.write_logs(history, log_dir, best, plot=False, run_id=run_id, extras=log_extras)
    if 'test' in loaders and not outcome['interrupted'] and best.epoch:
        results['test_metrics'] = score_test(loaders['test'], save_dir / 'best_model.pth', device, autocast,
                                             class_names, log_dir, ood=results['ood'])
    if baseline is not None and not outcome['interrupted']:
        results['baseline_metrics'] = report_baseline(baseline, datasets, args, log_dir,
                                                      outcome['best_val_metrics'], results['test_metrics'])
    return results


def batch_sizes(per_process: int, processes: int) -> dict[str, int]:
    """--batch_size is per process (as torchvision and DeiT): a step of ``processes`` processes reads
    ``per_process x processes`` photos, whose mean gradient DistributedDataParallel applies on every process."""
    return {'per_process': per_process, 'processes': processes, 'global': per_process * processes}


def carry_best_checkpoint(source_dir: Path, save_dir: Path, best_epoch: int, run_id: str | None) -> None:
    """A run resumed into a new folder brings its best checkpoint along, so that the test split is scored with
    the best epoch even when it came before the resume."""
    source, target = source_dir / 'best_model.pth', save_dir / 'best_model.pth'
    if not best_epoch or target.is_file() or not source.is_file():
        return
    stored = checkpoints.load_checkpoint(source)
    if int(stored.get('epoch', -1)) == best_epoch and stored.get('run_id') == run_id:
        utils.atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))
        print(f'copied the best checkpoint so far (epoch {best_epoch}) from {source} to {target}')


def run_preprocess(args: argparse.Namespace, detector: fpd.LandmarkDetector) -> dict[str, Any]:
    """How this run turns photos into network inputs (stored in every checkpoint), built once."""
    return fpd.default_preprocess(input_mode=args.input_mode, image_size=args.image_size,
                                  region_size=args.region_size, detector=detector.settings)


def checkpoint_maker(model: nn.Module, ctx: engine.TrainContext, model_args: dict[str, Any],
                     preprocess: dict[str, Any], args: argparse.Namespace, best: engine.BestTracker,
                     history: list[dict], baseline: symmetry.SymmetryBaseline | None = None,
                     run_id: str | None = None) -> Callable[[int, dict | None], dict]:
    """``state(epoch, val_metrics)``: the checkpoint dict of the run at that moment
    (``checkpoints.build_checkpoint``)."""
    stored_baseline = None if baseline is None else baseline.to_dict()  # fitted once, before the epochs

    def state(epoch: int, val_metrics: dict | None) -> dict[str, Any]:
        return checkpoints.build_checkpoint(
            model=model, model_args=model_args, preprocess=preprocess, epoch=epoch, optimizer=ctx.optimizer,
            scheduler=ctx.scheduler, best_metric=best.value, best_epoch=best.epoch, select_metric=best.name,
            prediction=ctx.prediction, args=vars(args), history=history, val_metrics=val_metrics,
            best_val_metrics=best.metrics, run_id=run_id, scaler=ctx.scaler,
            symmetry_baseline=stored_baseline, ema=ctx.ema)
    return state


def score_checkpoint(path: Path, loader: DataLoader, device: torch.device, autocast: Any, desc: str
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Predictions over ``loader`` of the trained model in ``path`` (``checkpoints.load_trained``): returns the
    ``engine.predict`` output and the checkpoint."""
    trained = checkpoints.load_trained(path, device)
    out = engine.predict(trained.model, loader, device, autocast, desc, prediction=trained.prediction,
                         multitask=bool(trained.sides))
    return out, trained.checkpoint


def score_test(loader: DataLoader, checkpoint_path: Path, device: torch.device, autocast: Any,
               class_names: Sequence[str], log_dir: Path, ood: str | None = None) -> dict[str, Any]:
    """Score the held-out test split once with the best checkpoint and save ``<log_dir>/test_metrics.json``
    (with ``ood``, the description of the checkpoint's out-of-distribution threshold, when it has one)."""
    out, checkpoint = score_checkpoint(checkpoint_path, loader, device, autocast, 'test')
    test = engine.metrics_of(out, len(class_names))
    payload = {'split': 'test', 'note': 'held-out test split, scored once with best_model.pth; never used for '
                                        'model selection',
               'checkpoint': str(checkpoint_path), 'epoch': int(checkpoint['epoch']),
               'run_id': checkpoint.get('run_id'), 'class_names': list(class_names),
               'prediction': checkpoint.get('prediction', 'argmax'), 'metrics': test, 'ood': ood}
    utils.atomic_write_text(log_dir / 'test_metrics.json', json.dumps(utils.to_plain(payload), indent=2))
    print(f'TEST (held out, epoch {checkpoint["epoch"]}): n {test["n"]} | {M.format_metrics(test)}'
          f'{engine.side_text(test)} -> {log_dir / "test_metrics.json"}')
    return test


# symmetry baseline

def report_baseline(baseline: symmetry.SymmetryBaseline, datasets: dict[str, Dataset], args: argparse.Namespace,
                    log_dir: Path, htnet_val: dict | None, htnet_test: dict | None) -> dict[str, Any]:
    """Score the fitted symmetry baseline on val (and test) with the metrics HTNet gets, print both side by side
    and write ``<log_dir>/baseline_metrics.json``."""
    splits = {name: (training_data.split_landmarks(datasets[name]), training_data.split_labels(datasets[name]))
              for name in ('val', 'test') if name in datasets}
    scores = symmetry.score_baseline(baseline, splits, args.num_classes)
    payload = {'baseline': 'symmetry', 'note': 'landmark symmetry baseline (symmetry.py) fitted on the training '
                                               'photos; scored with the same metrics as HTNet',
               'n_train': len(datasets['train']), 'val': scores.get('val'), 'test': scores.get('test'),
               'htnet': {'val': htnet_val, 'test': htnet_test}, 'fitted_baseline': baseline.to_dict()}
    utils.atomic_write_text(log_dir / 'baseline_metrics.json', json.dumps(utils.to_plain(payload), indent=2))
    print(symmetry.comparison_table({'val': htnet_val, 'test': htnet_test}, scores))
    print(f'symmetry baseline -> {log_dir / "baseline_metrics.json"}')
    return scores


# cross-validation

def run_fold(fold: int, dataset: Dataset, train_idx: list[int], heldout_idx: list[int], args: argparse.Namespace,
             device: torch.device, model_args: dict, preprocess: dict, run_id: str | None = None,
             on_saved: Callable[[int], None] | None = None) -> engine.FoldResult | None:
    """Train one fold as a normal run in ``<save_dir>/fold_<k>`` and ``<log_dir>/fold_<k>`` (validation carved
    from the fold's training subjects, epochs seeded from (seed, fold, epoch)), then score its held-out subjects
    once with the fold's best checkpoint. Returns None when the fold was interrupted before any best checkpoint
    existed."""
    fold_args = copy.copy(args)
    fold_args.save_dir = str(Path(args.save_dir) / f'fold_{fold}')
    fold_args.log_dir = str(Path(args.log_dir) / f'fold_{fold}')
    save_dir, log_dir = Path(fold_args.save_dir), Path(fold_args.log_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    labels, subjects = training_data.split_labels(dataset), training_data.split_subjects(dataset)
    try:
        fit_pos, val_pos = training_data.carve_validation([labels[i] for i in train_idx],
                                                          [subjects[i] for i in train_idx], args.val_fraction,
                                                          args.seed + fold)
    except UserError as err:
        raise UserError(f'fold {fold}: {err} (validation subjects come from the fold\'s training subjects; '
                        f'use fewer folds or a larger --val_fraction)') from err
    datasets = {'train': Subset(DA.with_transform(dataset, DA.get_augmentation_pipeline(args.augmentation)),
                                [train_idx[p] for p in fit_pos]),
                'val': Subset(dataset, [train_idx[p] for p in val_pos]),
                'test': Subset(dataset, heldout_idx)}
    training_data.check_subject_overlap(datasets)
    val_subjects = training_data.validation_subjects(datasets['val'], args.select_metric)
    utils.save_args(fold_args, log_dir / 'args.yaml')
    utils.seed_everything(args.seed + fold)
    loaders = training_data.build_loaders(datasets, fold_args, device, seed=args.seed + fold)
    autocast, scaler = utils.amp_context(device, args.amp)
    model, ctx = training_setup.make_train_context(model_args, fold_args, datasets, loaders, device, autocast,
                                                   scaler)
    best, history = engine.BestTracker(args.select_metric), []
    log_extras = {'warnings': training_setup.warn_size(model, len(datasets['train']), args, show=fold == 1)}
    state = checkpoint_maker(model, ctx, model_args, preprocess, fold_args, best, history, run_id=run_id)
    outcome = engine.fit(ctx, loaders, fold_args, 1, best, history, state, seed=(args.seed, fold), run_id=run_id,
                         on_saved=on_saved, val_subjects=val_subjects, log_extras=log_extras)
    summary = {'fold': fold, 'heldout_subjects': sorted(set(training_data.split_subjects(datasets['test']))),
               'val_subjects': sorted(set(training_data.split_subjects(datasets['val']))),
               'n_train': len(datasets['train']), 'n_val': len(datasets['val']), 'n_heldout': len(heldout_idx),
               'best_epoch': best.epoch, 'best_val_metric': best.value, 'select_metric': best.name,
               'interrupted': outcome['interrupted'], 'checkpoint': str(save_dir / 'best_model.pth')}
    if not best.epoch:
        return None
    if not outcome['interrupted']:
        summary['ood'] = log_extras['ood'] = training_setup.store_ood_statistics(
            save_dir / 'best_model.pth', datasets, fold_args, device, autocast)
        engine.write_logs(history, log_dir, best, plot=False, run_id=run_id, extras=log_extras)
    out, _ = score_checkpoint(save_dir / 'best_model.pth', loaders['test'], device, autocast,
                              f'fold {fold} held out')
    summary['metrics'] = engine.metrics_of(out, args.num_classes)
    return engine.FoldResult(fold=fold, indices=list(heldout_idx), true=out['true'], pred=out['pred'],
                      side_true=out.get('side_true'), side_pred=out.get('side_pred'), summary=summary)


def run_cross_validation(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """``--cv K`` / ``--cv loso``: detect the pool's landmarks once, train one run per fold on index subsets of
    that dataset, pool every held-out prediction and write ``cv_summary.json``, ``cv_predictions.csv`` and
    ``cv_folds.png`` in --log_dir. Returns the summary dict. Under torchrun the folds are spread over the
    processes (``cross_validate``)."""
    if args.val_fraction is None:
        args.val_fraction = training_data.DEFAULT_VAL_FRACTION
    detector = fpd.LandmarkDetector(device=device, cache_dir=args.cache_dir, progress=True)
    preprocess = run_preprocess(args, detector)
    model_args = model_args_for(args, fpd.model_input_size(preprocess))
    if args.pretrained_path:
        training_setup.build_model(model_args, args)  # judged once, before any slow work; every fold reads it again
    folds_planned = args.cv_folds_limit or (None if args.cv == 'loso' else args.cv)
    folders = prepare_folders_on_main(args, model_args, runs=folds_planned, cv=True)
    # read by every fold, wherever rank 0 moved it
    args.pretrained_path = distributed.broadcast_object(folders.where(args.pretrained_path))
    try:
        return cross_validate(args, device, detector, preprocess, model_args, folders)
    finally:
        folders.restore()  # nothing to do once the first fold's first checkpoint is written


def cross_validate(args: argparse.Namespace, device: torch.device, detector: fpd.LandmarkDetector,
                   preprocess: dict[str, Any], model_args: dict[str, Any], folders: run_folders.RunFolders
                   ) -> dict[str, Any]:
    """The slow part of ``run_cross_validation``: the pool's landmarks, the folds, the pooled summary.

    Under torchrun fold k runs on rank (k - 1) % processes, alone on that process's device (no
    DistributedDataParallel inside a fold), and every fold leaves ``<log_dir>/fold_<k>/fold_result.json``, from
    which rank 0 pools the folds of the others into the files a single process writes: a fold's numbers depend
    on the seed and the fold alone, not on the process that ran it nor on what that process ran before. A fold
    that fails is named and the others go on; the summary lists it (and ``exit_status`` is then 1)."""
    save_dir, log_dir = Path(args.save_dir), Path(args.log_dir)
    class_names = annotations.grade_names(args.num_classes)
    run_id = distributed.broadcast_object(run_folders.new_run_id())

    with distributed.main_first():  # rank 0 fills the landmark cache, the others read it
        dataset, pool = training_data.build_cv_pool(args, detector, preprocess)
    labels, subjects = training_data.split_labels(dataset), training_data.split_subjects(dataset)
    folds = training_data.assign_folds([labels[i] for i in pool], [subjects[i] for i in pool], args.cv, args.seed)
    num_folds = max(folds.values())
    to_run = min(num_folds, args.cv_folds_limit or num_folds)
    if distributed.is_main():
        log_dir.mkdir(parents=True, exist_ok=True)
        save_dir.mkdir(parents=True, exist_ok=True)
        training_data.write_skipped({'pool': dataset}, log_dir)
        utils.save_args(args, log_dir / 'args.yaml')
    counts = Counter(labels[i] for i in pool)
    print(f'cross-validation ({"leave one subject out" if args.cv == "loso" else f"{args.cv}-fold, by subject"}): '
          f'{len(pool)} images of {len(folds)} subjects ('
          + ', '.join(f'{class_names[k]}: {counts.get(k, 0)}' for k in range(len(class_names))) + ')')
    print(f'{num_folds} folds' + (f'; running the first {to_run} (--cv_folds_limit)' if to_run < num_folds else ''))

    planned = list(range(1, to_run + 1))
    mine = distributed.my_share(planned)
    processes = distributed.world_size()
    if processes > 1:
        print(f'folds spread over {processes} processes (fold k on rank (k - 1) % {processes}), each on its own '
              f'device; this process (rank 0) runs folds {", ".join(map(str, mine))} and pools them all')

    def run(fold: int) -> engine.FoldResult | None:
        heldout = [i for i in pool if folds[subjects[i]] == fold]
        training = [i for i in pool if folds[subjects[i]] != fold]
        print(f'\n=== fold {fold}/{num_folds}: {len(heldout)} held-out images of '
              f'{len({subjects[i] for i in heldout})} subjects ===')
        return run_fold(fold, dataset, training, heldout, args, device, model_args, preprocess,
                        run_id=f'{run_id}-fold_{fold}', on_saved=lambda epoch: folders.commit())

    outcomes = run_folds_of_process(mine, run, log_dir, run_id, tell_others=processes > 1)
    if not distributed.is_main():
        return {'rank': distributed.rank(), 'folds': {k: payload['status'] for k, (payload, _) in outcomes.items()},
                'interrupted': any(payload['status'] == 'interrupted' for payload, _ in outcomes.values())}
    others = [fold for fold in planned if fold not in outcomes]
    published = distributed.wait_for_published(
        [log_dir / f'fold_{fold}' / engine.FOLD_RESULT for fold in others], what='folds',
        accept=lambda payload: payload.get('run_id') == f'{run_id}-fold_{payload.get("fold")}')
    for payload in sorted(published.values(), key=lambda p: p['fold']):
        result = engine.fold_result(payload)
        outcomes[payload['fold']] = (payload, result)
        if result is not None:
            print(f'fold {payload["fold"]} (rank {distributed.owner_of(payload["fold"] - 1)}) held out '
                  f'{fold_line(result)}')

    results: list[engine.FoldResult] = []
    failed: list[dict[str, Any]] = []
    interrupted = False
    for fold in planned:
        payload, result = outcomes[fold]
        if payload['status'] == 'failed':
            failed.append({'fold': fold, 'error': payload['error']})
        interrupted = interrupted or payload['status'] in ('interrupted', 'not_run')
        if result is not None:
            results.append(result)
    if not results:
        if failed:
            raise UserError('no fold finished: ' + '; '.join(f'fold {f["fold"]}: {f["error"]}' for f in failed))
        raise UserError('cross-validation interrupted before any fold finished; nothing to summarise')
    folders.commit()  # a fold of another process may have written the first checkpoint
    return engine.summarise_cv(results, dataset, folds, num_folds, len(pool), interrupted, args, log_dir,
                               class_names, losses.prediction_for(args.loss), failed=failed)


def fold_line(result: engine.FoldResult) -> str:
    """``(best epoch 3): n 12 | acc ...``: how a fold did on its held-out subjects."""
    metrics = result.summary['metrics']
    return (f'(best epoch {result.summary["best_epoch"]}): n {len(result.indices)} | {M.format_metrics(metrics)}'
            f'{engine.side_text(metrics)}')


def run_folds_of_process(folds: Sequence[int], run: Callable[[int], engine.FoldResult | None], log_dir: Path,
                         run_id: str, tell_others: bool = False
                         ) -> dict[int, tuple[dict[str, Any], engine.FoldResult | None]]:
    """Run this process's ``folds`` in order with ``run(fold)`` and leave each one's ``fold_result.json``
    (``engine.fold_outcome``). A fold that raises is named on standard error and the next one starts; Ctrl-C
    (an interrupted fold) stops the rest, which with ``tell_others`` (under torchrun) are marked ``not_run`` so
    that rank 0 does not wait for them. Returns fold -> (outcome payload, result or None)."""
    outcomes: dict[int, tuple[dict[str, Any], engine.FoldResult | None]] = {}
    started, stopped = time.time(), False
    for index, fold in enumerate(folds):
        fold_run_id, path = f'{run_id}-fold_{fold}', log_dir / f'fold_{fold}' / engine.FOLD_RESULT
        if stopped:
            if tell_others:
                distributed.publish(path, engine.fold_outcome(fold, fold_run_id, 'not_run'))
            continue
        try:
            result = run(fold)
        except Exception as err:  # noqa: BLE001 - one fold's failure must not cost the others
            text = distributed.report_failure(f'fold {fold}', err, 'folds')
            payload, result = engine.fold_outcome(fold, fold_run_id, 'failed', error=text), None
        else:
            stopped = result is None or bool(result.summary['interrupted'])
            payload = engine.fold_outcome(fold, fold_run_id, 'interrupted' if stopped else 'done', result)
            if result is not None:
                print(f'fold {fold} held out {fold_line(result)}')
            if stopped:
                print(f'cross-validation stopped at fold {fold}; the completed folds are summarised')
        distributed.publish(path, payload)
        outcomes[fold] = (payload, result)
        left_folds = len(folds) - index - 1
        if index == 0 and left_folds and not stopped:
            per_fold = time.time() - started
            left = per_fold * left_folds
            print(f'fold {fold} took {per_fold:.0f} s; the remaining {left_folds} folds'
                  + (' of this process' if tell_others else '') + ' need about '
                  + (f'{left / 60:.1f} min' if left >= 120 else f'{left:.0f} s'))
    return outcomes


def exit_status(results: dict[str, Any]) -> int:
    """The command's exit status: 1 when a cross-validation fold failed, 130 when Ctrl-C stopped the run, else 0."""
    if results.get('failed_folds'):
        return 1
    return 130 if results.get('interrupted') else 0


if __name__ == '__main__':
    utils.run_cli(lambda argv: exit_status(main(argv)))
