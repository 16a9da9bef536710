"""What a run of ``train_facial_palsy.py`` sets up around the epoch loop of ``engine.py``: the checks of its flags,
the device, the network (with --pretrained_path weights), its criterion, optimiser, schedule and weight EMA, the
warning when a network is far too large for its training photos, and at the end the out-of-distribution
statistics of the best epoch (``ood.py``) stored in ``best_model.pth``.

Nothing here reads photos: the script builds the datasets (``training_data.py``) and passes them in.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import Model
import annotations
import checkpoints
import data_augmentation as DA
import distributed
import engine
import losses
import ood
import training_data
import utils
from utils import UserError

# A network above LARGE_MODEL_PARAMETERS trained on fewer than SMALL_TRAINING_SET photos fits them by heart: the
# paper-size HTNet (139.6M parameters) on a few hundred photos is hundreds of thousands of parameters per photo.
LARGE_MODEL_PARAMETERS = 10_000_000
SMALL_TRAINING_SET = 2_000


# arguments

def validate_args(args: argparse.Namespace) -> None:
    """Refuse impossible settings up front with one clear line, before any slow landmark detection. Settles
    ``--flip_swap_side`` when not given: on for photos, off for ``--input_mode flow`` (which reads pairs)."""
    if getattr(args, 'flip_swap_side', None) is None:
        args.flip_swap_side = args.input_mode != 'flow'
    if args.flip_swap_side and args.input_mode == 'flow':
        raise UserError('--flip_swap_side mirrors photos, which --input_mode flow does not read one at a time; '
                        'drop one of them')
    positive = {'epochs': args.epochs, 'batch_size': args.batch_size, 'image_size': args.image_size,
                'region_size': args.region_size, 'patch_size': args.patch_size, 'dim': args.dim,
                'heads': args.heads, 'num_hierarchies': args.num_hierarchies}
    for name, value in positive.items():
        if value < 1:
            raise UserError(f'--{name} must be at least 1, got {value}')
    if not 0 < args.learning_rate < math.inf:  # written so that NaN fails too
        raise UserError(f'--learning_rate must be a positive number, got {args.learning_rate}')
    for name in ('weight_decay', 'mixup', 'dropout', 'warmup_epochs', 'num_workers', 'save_interval',
                 'early_stopping', 'lr_patience', 'threads', 'side_loss_weight'):
        if not 0 <= getattr(args, name) < math.inf:
            raise UserError(f'--{name} must be a number of at least 0, got {getattr(args, name)}')
    if not 0 <= args.label_smoothing < 1:
        raise UserError(f'--label_smoothing must lie in [0, 1), got {args.label_smoothing}')
    if not 0 <= args.ema < 1:
        raise UserError(f'--ema must lie in [0, 1) (0 = off; 0.99-0.999 per optimiser step), got {args.ema}')
    if not args.dropout < 1:
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
    if (args.val_csv is not None and args.train_csv is not None
            and not utils.same_path(args.val_csv, args.train_csv)):
        raise UserError('--cv pools the train and val rows of --train_csv and carves validation subjects from '
                        'each fold; a separate --val_csv does not fit: drop it or put its rows into --train_csv')


# device, model and optimisation

def setup_device(args: argparse.Namespace) -> torch.device:
    """The ``--device`` (with ``--threads`` applied), printed once; under torchrun ``cuda:LOCAL_RANK`` for a CUDA
    run (``distributed.device_for_process``)."""
    device = distributed.device_for_process(utils.resolve_device(args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f'device: {device}' + (f' ({torch.cuda.get_device_name(device)})' if device.type == 'cuda' else
                                 f' ({torch.get_num_threads()} threads)'))
    return device


def build_model(model_args: dict[str, Any], args: argparse.Namespace) -> nn.Module:
    """A fresh HTNet from ``model_args``, started from the --pretrained_path weights when given."""
    model = Model.build_model(model_args)
    if args.pretrained_path:
        load_pretrained_weights(model, args.pretrained_path, args.pos_emb, args.allow_partial_pretrained)
    return model


HEAD_PREFIXES = ('mlp_head.', 'side_head.')  # the heads start fresh whenever the classes differ


def load_pretrained_weights(model: nn.Module, path: str, pos_emb: str, allow_partial: bool = False
                            ) -> dict[str, list]:
    """Transfer every tensor that fits. A file from which nothing fits is refused, and so is one that fits fewer
    than half of the network's tensors (the heads aside) unless ``allow_partial``: such a start is mostly random
    weights, which the user should choose knowingly."""
    print(f'pretrained weights: {path}')
    report = checkpoints.load_pretrained(model, path, pos_emb=pos_emb, verbose=True)
    mismatches = "; ".join(f"{n}: {r}" for n, r in report["skipped"][:3]) or 'none in the file'
    if not [name for name in report['loaded'] if not name.endswith('pos_emb')]:  # positions alone transfer nothing
        raise UserError(f'{path}: no tensor fits this network (different --dim/--heads/--num_hierarchies?); '
                        f'first mismatches: {mismatches}')
    body = [name for name in model.state_dict() if not name.startswith(HEAD_PREFIXES)]
    fitted = len([name for name in report['loaded'] + report['interpolated'] if not name.startswith(HEAD_PREFIXES)])
    if fitted * 2 < len(body) and not allow_partial:
        raise UserError(f'{path}: only {fitted} of the network\'s {len(body)} tensors (the heads aside) fit; first '
                        f'mismatches: {mismatches}; check --dim/--heads/--block_repeats, or pass '
                        f'--allow_partial_pretrained to start from it anyway')
    return report


def maybe_compile(model: nn.Module, enabled: bool, device: torch.device) -> nn.Module:
    """``torch.compile`` on CUDA; the returned module shares its parameters with ``model``, whose state_dict
    (without ``_orig_mod.`` prefixes) is what checkpoints store."""
    if not enabled:
        return model
    if device.type != 'cuda':
        print(f'note: --compile is ignored on {device.type}')
        return model
    return torch.compile(model)


def class_weights_for(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights ``n / (K_present * count)``; a grade absent from training gets weight 1."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.ones(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


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


def make_train_context(model_args: dict[str, Any], args: argparse.Namespace, datasets: dict[str, Dataset],
                       loaders: dict[str, DataLoader], device: torch.device, autocast: Any,
                       scaler: torch.amp.GradScaler, model: nn.Module | None = None, ddp: bool = False
                       ) -> tuple[nn.Module, engine.TrainContext]:
    """The network (``model``, or a fresh one with --pretrained_path weights), its criterion (class weights from
    this training split), optimizer, schedule and, with ``--ema``, the moving average of its weights (of the
    uncompiled module, which the compiled one shares its parameters with). With ``ddp`` under torchrun the
    training network is wrapped in DistributedDataParallel before it is compiled (the order torch.compile
    expects). Returns the uncompiled model (what checkpoints store) and the context ``engine.fit`` runs."""
    model = (model if model is not None else build_model(model_args, args)).to(device)
    shared = ddp and distributed.active()
    train_model = model
    if shared:
        train_model = distributed.wrap_ddp(model, device, 'forward_multitask' if args.multitask else 'forward')
    train_model = maybe_compile(train_model, args.compile, device)
    criterion = build_criterion(args, training_data.split_labels(datasets['train']),
                                annotations.grade_names(args.num_classes), device)
    optimizer, scheduler, step_per_batch = engine.build_optimizer(model, args, len(loaders['train']))
    mixup = DA.MixUp(args.mixup) if args.mixup > 0 else None
    ema = engine.ModelEma(model, args.ema) if args.ema else None
    if ema is not None:
        steps = 1 / (1 - args.ema)
        print(f'weight average (--ema {args.ema:g}): about the last {steps:.0f} optimiser steps, '
              f'{steps / max(1, len(loaders["train"])):.1f} epochs of {len(loaders["train"])} steps')
    ctx = engine.TrainContext(model=train_model, criterion=criterion, optimizer=optimizer, device=device,
                              autocast=autocast, scaler=scaler, scheduler=scheduler, step_per_batch=step_per_batch,
                              mixup=mixup, multitask=args.multitask, prediction=losses.prediction_for(args.loss),
                              ema=ema, module=model if shared else None,
                              rank=distributed.rank() if shared else 0,
                              world_size=distributed.world_size() if shared else 1)
    return model, ctx


# warnings

def size_warning(num_parameters: int, num_photos: int, pretrained: bool = False) -> str | None:
    """Why a network far larger than its training set will disappoint, or None when the sizes are reasonable:
    more than ``LARGE_MODEL_PARAMETERS`` parameters on fewer than ``SMALL_TRAINING_SET`` training photos."""
    if num_parameters <= LARGE_MODEL_PARAMETERS or num_photos >= SMALL_TRAINING_SET:
        return None
    per_photo = float(f'{num_parameters / max(num_photos, 1):.3g}')  # three significant digits
    advice = 'Start from --profile small (2.2M parameters) or cpu_quickstart (0.56M parameters)'
    return (f'warning: HTNet with {num_parameters / 1e6:.1f}M parameters on {num_photos} training photos: about '
            f'{per_photo:,.0f} parameters per photo; a network this size memorises a set this small (training '
            f'accuracy near 1, validation far below). {advice}' + ('' if pretrained else ', or --pretrained_path'))


def warn_size(model: nn.Module, num_photos: int, args: argparse.Namespace, show: bool = True) -> list[str]:
    """Print ``size_warning`` (when ``show``) and return it as the run's list of warnings for its logs."""
    text = size_warning(Model.count_parameters(model), num_photos, pretrained=bool(args.pretrained_path))
    if text is None:
        return []
    if show:
        print(text)
    return [text]


# out-of-distribution statistics

def store_ood_statistics(checkpoint_path: Path, datasets: dict[str, Dataset], args: argparse.Namespace,
                         device: torch.device, autocast: Any) -> str | None:
    """Fit ``ood.fit_ood`` on the features the best checkpoint's network gives the training photos (without
    augmentation or mirroring), its threshold on the validation photos, and store them under the key ``ood`` of
    ``checkpoint_path`` (rewritten atomically, every other key kept). Returns ``ood.describe_threshold`` of them,
    printed; a failure (e.g. a degenerate covariance) is one printed line and None, and leaves the file as it was,
    so the trained model is never lost to it."""
    try:
        trained = checkpoints.load_trained(checkpoint_path, device)
        train_loader = training_data.evaluation_loader(training_data.unaugmented(datasets['train']), args, device)
        val_loader = training_data.evaluation_loader(datasets['val'], args, device)
        train_features, train_labels = ood.collect_features(trained.model, train_loader, device, autocast,
                                                            desc='features train')
        val_features, _ = ood.collect_features(trained.model, val_loader, device, autocast, desc='features val')
        stats = ood.fit_ood(train_features, train_labels, val_features)
        text = ood.describe_threshold(stats)
        checkpoint = {key: value for key, value in trained.checkpoint.items() if key != 'ood'}
        checkpoints.save_checkpoint({**checkpoint, 'ood': stats}, checkpoint_path)
    except Exception as err:  # noqa: BLE001 - the statistics are an extra; the trained model must survive them
        print(f'out-of-distribution statistics not stored in {checkpoint_path}: {type(err).__name__}: {err}')
        return None
    print(f'{text} (stored in {checkpoint_path} under "ood")')
    return text
