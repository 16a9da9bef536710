"""The epoch loop of ``train_facial_palsy.py`` (DeiT's ``engine.py``): one training epoch, prediction and
evaluation over a loader (per photo, and per patient from the mean of each subject's photo probabilities), the moving
average of the weights (``--ema``), best-epoch tracking, the per-epoch logs and curves, and ``fit``, which runs the
epochs, selects on validation and writes the checkpoints.

Each epoch starts from random state seeded by (seed, epoch) (``seed_epoch``), and ``last.pth`` is written only
when an epoch is complete, so a run resumed from it repeats exactly the epochs an uninterrupted run would have.

Under torchrun the loop trains the network wrapped in DistributedDataParallel (``TrainContext.world_size`` > 1):
every process trains on its share of each global batch (``distributed.EpochShuffleSampler``), rank 0 alone scores
validation, on the whole split with the batches a single process reads, so that the numbers are those of a single
process with the same weights (sharding the split and gathering its predictions would change the batches, and
DistributedSampler repeats photos to even out the shares), and hands them to the others, which thus step the
plateau schedule and stop early as rank 0 does; rank 0 alone writes checkpoints and logs.

Nothing here parses arguments or builds datasets: the training script passes in what it built.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

import checkpoints
import data_augmentation
import distributed
from annotations import SIDE_CLASSES, subject_grades
import losses
import metrics as M
import utils
from utils import UserError

PLOT_EVERY = 5  # epochs between redraws of training_curves.png during training (matplotlib is slow); always at the end
SCALAR_COLUMNS = M.METRIC_NAMES


# optimisation


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


class ModelEma(AveragedModel):
    """Exponential moving average of a model's weights (timm ``ModelEmaV2``, ``torch.optim.swa_utils``): after every
    optimiser step ``ema = decay * ema + (1 - decay) * weights`` (the first step copies them), buffers copied.
    Averaging the last ~1 / (1 - decay) steps smooths the noise of small batches, so the averaged weights usually
    validate better and more steadily than the raw ones. ``module`` is the averaged network; ``n_averaged`` counts
    the steps."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)
        self.decay = float(decay)
        self.module.eval().requires_grad_(False)


def cosine_with_warmup(total_steps: int, warmup_steps: int, floor: float = 0.01) -> Callable[[int], float]:
    """Learning-rate factor per step: linear warm-up, then cosine decay to ``floor`` of the base rate."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


# one epoch

def epoch_seed(*keys: int) -> int:
    """A 63-bit seed drawn from ``keys`` (the run's seed, the epoch...) by numpy's ``SeedSequence``, so nearby
    keys give unrelated streams."""
    entropy = [int(key) % 2 ** 64 for key in keys]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))


def seed_epoch(loader: DataLoader, *keys: int) -> int:
    """Seed python, numpy, torch and the loader's generator from ``keys`` (the last one the epoch) at the start of
    an epoch: the shuffle, augmentations, MixUp, the side-swapping mirror and dropout of that epoch then depend on
    nothing before it, and a resumed run replays them. A loader with workers derives their seeds from the
    generator when the epoch's workers start; persistent workers would keep the random state of the first epoch
    instead. With a ``DistributedSampler`` (torchrun) the sampler is told the epoch, every process draws the same
    shuffle, and a process of rank r > 0 draws its augmentations and dropout from ``(*keys, r)``, so no two
    processes augment alike while rank 0 draws what a single process draws."""
    seed = epoch_seed(*keys)
    sampler = getattr(loader, 'sampler', None)
    rank = 0
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(keys[-1])
        rank = sampler.rank
    utils.seed_everything(epoch_seed(*keys, rank) if rank else seed)
    if getattr(loader, 'generator', None) is not None:
        loader.generator.manual_seed(seed)
    return seed


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
    ema: ModelEma | None = None   # with --ema: the averaged weights, which validation and checkpoints use
    module: nn.Module | None = None  # under torchrun: the network inside the DistributedDataParallel ``model``
    rank: int = 0                 # this process among the ``world_size`` that train the network together
    world_size: int = 1

    @property
    def eval_model(self) -> nn.Module:
        """The network validation scores and the best checkpoint keeps: the averaged one with --ema; the one
        inside DistributedDataParallel under torchrun (rank 0 scores alone, which the wrapper does not allow)."""
        if self.ema is not None:
            return self.ema.module
        return self.module if self.module is not None else self.model


def unpack_batch(batch: Sequence[torch.Tensor], device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(images, labels, sides or None)`` on ``device`` from a loader batch of 2 or 3 tensors."""
    images = batch[0].to(device, non_blocking=True)
    labels = batch[1].to(device, non_blocking=True)
    sides = batch[2].to(device, non_blocking=True) if len(batch) > 2 else None
    return images, labels, sides


# model and optimisation


def model_outputs(model: nn.Module, images: torch.Tensor, multitask: bool
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(grade logits, side logits or None)``; one pass over the features either way. A DistributedDataParallel
    wrapper has no ``forward_multitask``: its forward is that pass (``distributed.wrap_ddp``)."""
    if multitask:
        forward = getattr(model, 'forward_multitask', None)
        return forward(images) if forward is not None else model(images)
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
    training batches, over the photos of every process under torchrun. A non-finite loss stops the run with
    advice instead of silently ruining the weights."""
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
        if ctx.ema is not None:
            ctx.ema.update_parameters(ctx.model)  # a compiled model yields the parameters of the module it wraps
        if ctx.step_per_batch and ctx.scheduler is not None:
            ctx.scheduler.step()
        batch = labels.shape[0]
        total_loss += loss_value * batch
        correct += (losses.decode_grades(logits.detach(), ctx.prediction) == labels).sum().item()
        seen += batch
        bar.set_postfix(loss=f'{total_loss / seen:.4f}', acc=f'{correct / seen:.3f}')
    if ctx.world_size > 1:
        total_loss, correct, seen = np.sum(distributed.all_gather_arrays([total_loss, correct, seen]), axis=0)
    return {'loss': float(total_loss / max(seen, 1)), 'accuracy': float(correct / max(seen, 1))}


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device, autocast: AbstractContextManager,
            desc: str = 'eval', prediction: str = 'argmax', multitask: bool = False) -> dict[str, Any]:
    """Over a loader: ``true`` and ``pred`` grades (by the ``prediction`` rule), the grade ``probabilities``
    (softmax, ``(N, C)``), the mean unweighted cross-entropy ``loss`` (comparable across --loss choices), and with
    ``multitask`` the ``side_true`` / ``side_pred`` indices (side_true -100 = unknown)."""
    model.eval()
    true, pred, probabilities, side_true, side_pred, total_loss, seen = [], [], [], [], [], 0.0, 0
    for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=None):
        images, labels, sides = unpack_batch(batch, device)
        with autocast:
            logits, side_logits = model_outputs(model, images, multitask)
        total_loss += nn.functional.cross_entropy(logits.float(), labels, reduction='sum').item()
        seen += labels.shape[0]
        true.append(labels.cpu())
        pred.append(losses.decode_grades(logits, prediction).cpu())
        probabilities.append(torch.softmax(logits.float(), dim=1).cpu())
        if side_logits is not None and sides is not None:
            side_true.append(sides.cpu())
            side_pred.append(side_logits.argmax(dim=1).cpu())
    if not seen:
        raise UserError(f'{desc}: no images to evaluate')
    out = {'true': torch.cat(true).numpy(), 'pred': torch.cat(pred).numpy(),
           'probabilities': torch.cat(probabilities).numpy(), 'loss': total_loss / seen}
    if side_true:
        out['side_true'], out['side_pred'] = torch.cat(side_true).numpy(), torch.cat(side_pred).numpy()
    return out


def side_metrics(side_true: np.ndarray, side_pred: np.ndarray) -> dict[str, Any]:
    """Accuracy over the photos whose side is known, and the (true x predicted) confusion matrix in
    ``annotations.SIDE_CLASSES`` order; accuracy is NaN when no side is known."""
    known = side_true != losses.SIDE_IGNORE_INDEX
    matrix = M.confusion_matrix(side_true[known], side_pred[known], len(SIDE_CLASSES))
    accuracy = float((side_true[known] == side_pred[known]).mean()) if known.any() else float('nan')
    return {'side_accuracy': accuracy, 'side_n': int(known.sum()), 'side_confusion_matrix': matrix.tolist()}


def subject_metrics(out: dict[str, Any], subjects: Sequence[str], num_classes: int, prediction: str
                    ) -> dict[str, Any]:
    """``metrics.compute_metrics`` over patients: each subject's photo probabilities averaged and read with the
    run's ``prediction`` rule (``losses.subject_grades_from_photos``, as evaluation grades a patient), its true
    grade its most frequent photo grade (``annotations.subject_grades``). ``subjects`` follow the loader order."""
    if len(subjects) != len(out['true']):
        raise ValueError(f'{len(subjects)} subjects for {len(out["true"])} predictions')
    names, _, _, pred = losses.subject_grades_from_photos(subjects, out['probabilities'], prediction)
    true_of = subject_grades([str(s) for s in subjects], out['true'])
    return M.compute_metrics([true_of[name] for name in names], pred, num_classes)


def metrics_of(out: dict[str, Any], num_classes: int, subjects: Sequence[str] | None = None,
               prediction: str = 'argmax') -> dict[str, Any]:
    """Every metric of ``metrics.compute_metrics`` of a ``predict`` output plus its mean ``loss``; with side
    predictions also ``side_accuracy``, ``side_n`` and ``side_confusion_matrix`` (``side_metrics``); with the
    photos' ``subjects`` also ``subject_<metric>`` for each scalar metric and ``subject_n`` (``subject_metrics``)."""
    result = M.compute_metrics(out['true'], out['pred'], num_classes)
    result['loss'] = out['loss']
    if 'side_true' in out:
        result.update(side_metrics(out['side_true'], out['side_pred']))
    if subjects is not None:
        patients = subject_metrics(out, subjects, num_classes, prediction)
        result.update({M.SUBJECT_PREFIX + name: patients[name] for name in ('n', *M.METRIC_NAMES)})
    return result


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, autocast: AbstractContextManager,
             num_classes: int, desc: str = 'val', prediction: str = 'argmax', multitask: bool = False,
             subjects: Sequence[str] | None = None) -> dict[str, Any]:
    """``metrics_of`` the model's predictions over a loader (with patient-level metrics when ``subjects``)."""
    return metrics_of(predict(model, loader, device, autocast, desc, prediction, multitask), num_classes,
                      subjects, prediction)


def validate(ctx: TrainContext, loader: DataLoader, num_classes: int,
             subjects: Sequence[str] | None = None) -> dict[str, Any]:
    """``evaluate`` of ``ctx.eval_model`` on the validation loader; under torchrun rank 0 scores the whole split
    and every other process receives its numbers."""
    metrics = None
    if ctx.rank == 0:
        metrics = evaluate(ctx.eval_model, loader, ctx.device, ctx.autocast, num_classes, 'val',
                           prediction=ctx.prediction, multitask=ctx.multitask, subjects=subjects)
    return distributed.broadcast_object(metrics) if ctx.world_size > 1 else metrics


# best epoch and logs

@dataclass
class BestTracker:
    """Best validation value of the selection metric, the epoch that reached it and that epoch's metrics."""
    name: str
    value: float | None = None
    epoch: int = 0
    metrics: dict | None = None

    def update(self, value: float, epoch: int, metrics: dict | None = None) -> bool:
        if M.is_improvement(self.name, value, self.value):
            self.value, self.epoch, self.metrics = float(value), int(epoch), metrics
            return True
        return False


def history_row(epoch: int, lr: float, train: dict, val: dict, seconds: float, is_best: bool) -> dict[str, Any]:
    row = {'epoch': epoch, 'lr': lr, 'train_loss': train['loss'], 'train_accuracy': train['accuracy'],
           'val_loss': val['loss']}
    row.update({f'val_{name}': val[name] for name in SCALAR_COLUMNS})
    row.update({f'val_{M.SUBJECT_PREFIX}{name}': val[M.SUBJECT_PREFIX + name] for name in SCALAR_COLUMNS
                if M.SUBJECT_PREFIX + name in val})
    row['val_per_class_accuracy'] = val['per_class_accuracy']
    if 'side_accuracy' in val:
        row['val_side_accuracy'] = val['side_accuracy']
        row['val_side_confusion_matrix'] = val['side_confusion_matrix']
    row['epoch_time_s'] = round(seconds, 2)
    row['is_best'] = bool(is_best)
    return row


def write_logs(history: list[dict], log_dir: Path, best: BestTracker, plot: bool = True,
               run_id: str | None = None, extras: dict[str, Any] | None = None) -> None:
    """Rewrite summary.csv, training_history.json (with the ``run_id`` and the ``extras``, e.g. the run's
    ``warnings``) and (with ``plot``) the curves from the whole history, so a resumed run's logs continue the
    interrupted ones."""
    columns = [k for k in history[0] if not isinstance(history[0][k], list)]  # per-class / confusion lists
    utils.atomic_write_csv(log_dir / 'summary.csv', columns,
                           ({k: (f'{v:.6g}' if isinstance(v, float) else v) for k, v in row.items() if k in columns}
                            for row in history))

    series = {key: [row[key] for row in history] for key in history[0]}
    # the first five keys are the ones of the original training script
    payload = {'train_loss': series['train_loss'], 'train_acc': series['train_accuracy'],
               'val_loss': series['val_loss'], 'val_acc': series['val_accuracy'], 'val_f1': series['val_macro_f1'],
               **{k: v for k, v in series.items() if k not in ('train_loss', 'val_loss')},
               'select_metric': best.name, 'best_epoch': best.epoch, 'best_metric': best.value,
               'run_id': run_id, **(extras or {})}
    best_row = next((row for row in history if row['epoch'] == best.epoch), None)
    if best_row is not None and 'val_side_confusion_matrix' in best_row:
        payload['side_names'] = list(SIDE_CLASSES)
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


# the epoch loop

def fit(ctx: TrainContext, loaders: dict[str, DataLoader], args: argparse.Namespace, start_epoch: int,
        best: BestTracker, history: list[dict], state: Callable[[int, dict | None], dict], *,
        seed: Sequence[int] | None = None, run_id: str | None = None,
        on_saved: Callable[[int], None] | None = None, val_subjects: Sequence[str] | None = None,
        log_extras: dict[str, Any] | None = None) -> dict[str, Any]:
    """The epoch loop: train, validate (the averaged weights with --ema; per patient too with ``val_subjects``,
    the subject of each validation photo), select on validation, checkpoint, log (``log_extras`` go into
    training_history.json).

    Each epoch is seeded from ``(*seed, epoch)`` (default ``(args.seed,)``). At its end the files are written in
    an order that loses nothing when the process dies between two of them: ``best_model.pth``, ``epoch_<N>.pth``
    (weights only), the logs, and last ``last.pth``, which thus always holds a completed epoch; ``on_saved(epoch)``
    follows. Ctrl-C stops at once without saving the unfinished epoch, says which epoch ``last.pth`` holds and
    returns normally with ``interrupted`` set. Under torchrun every process runs the loop and rank 0 alone
    validates (``validate``) and writes."""
    save_dir, log_dir = Path(args.save_dir), Path(args.log_dir)
    writes = ctx.rank == 0
    seed = tuple(seed) if seed is not None else (args.seed,)
    saved, interrupted, stopped_early = start_epoch - 1, False, False
    saved_best = (best.value, best.epoch, best.metrics)
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, args.epochs + 1):
            seed_epoch(loaders['train'], *seed, epoch)
            started, lr = time.time(), ctx.optimizer.param_groups[0]['lr']
            train_stats = train_one_epoch(ctx, loaders['train'], epoch, args.epochs)
            val_metrics = validate(ctx, loaders['val'], args.num_classes, val_subjects)
            if ctx.scheduler is not None and not ctx.step_per_batch:
                ctx.scheduler.step(val_metrics[args.select_metric])
            improved = best.update(val_metrics[args.select_metric], epoch, val_metrics)
            history.append(history_row(epoch, lr, train_stats, val_metrics, time.time() - started, improved))
            if writes:
                snapshot = state(epoch, val_metrics)  # built once, written up to three times
                if improved:
                    checkpoints.save_checkpoint(snapshot, save_dir / 'best_model.pth')
                if args.save_interval and epoch % args.save_interval == 0:
                    checkpoints.save_checkpoint(checkpoints.weights_only(snapshot), save_dir / f'epoch_{epoch}.pth')
                write_logs(history, log_dir, best, plot=epoch % PLOT_EVERY == 0, run_id=run_id, extras=log_extras)
                checkpoints.save_checkpoint(snapshot, save_dir / 'last.pth')
            saved, saved_best = epoch, (best.value, best.epoch, best.metrics)
            if on_saved is not None:
                on_saved(epoch)
            print(f'epoch {epoch}/{args.epochs} | lr {lr:.2e} | train loss {train_stats["loss"]:.4f} '
                  f'acc {train_stats["accuracy"]:.3f} | val loss {val_metrics["loss"]:.4f} '
                  f'{M.format_metrics(val_metrics)}{side_text(val_metrics)}{selected_text(val_metrics, best.name)}'
                  f'{" | best" if improved else ""}')
            if args.early_stopping and epoch - best.epoch >= args.early_stopping:
                print(f'early stopping: no better validation {args.select_metric} for {args.early_stopping} epochs')
                stopped_early = True
                break
    except KeyboardInterrupt:
        interrupted = True
        history[:] = [row for row in history if row['epoch'] <= saved]  # the unfinished epoch leaves no trace
        best.value, best.epoch, best.metrics = saved_best
        print('\n' + interrupted_note(epoch, saved, start_epoch, save_dir, getattr(args, 'resume', None)))
    if history and writes:
        write_logs(history, log_dir, best, plot=True, run_id=run_id, extras=log_extras)
    best_val_metrics = best.metrics
    if best_val_metrics is None:  # a checkpoint of an earlier version: the best epoch's row of the history
        row = next((r for r in history if r['epoch'] == best.epoch), None)
        best_val_metrics = {k[len('val_'):]: v for k, v in row.items() if k.startswith('val_')} if row else None
    return {'last_epoch': saved, 'interrupted': interrupted, 'stopped_early': stopped_early,
            'best_val_metrics': best_val_metrics}


def interrupted_note(epoch: int, saved: int, start_epoch: int, save_dir: Path, resumed_from: str | None) -> str:
    """What Ctrl-C during ``epoch`` left: which completed epoch ``last.pth`` holds and how to continue."""
    if saved >= start_epoch:
        return (f'interrupted during epoch {epoch}: {save_dir / "last.pth"} holds epoch {saved}, the last completed '
                f'one; continue with --resume {save_dir / "last.pth"}')
    if resumed_from:
        return (f'interrupted during epoch {epoch}: no epoch completed since the resume; continue again with '
                f'--resume {resumed_from}')
    return f'interrupted during epoch {epoch}: no epoch completed, so nothing was saved; start the run again'


def selected_text(metrics: dict[str, Any], name: str) -> str:
    """`` | subject_qwk 0.812`` when the selection metric is a patient-level one (the photo-level ones are shown
    already), else nothing."""
    return f' | {name} {metrics[name]:.3f}' if M.is_subject_metric(name) and name in metrics else ''


def side_text(metrics: dict[str, Any]) -> str:
    """`` | side acc 0.750 (n 8)`` for a multi-task evaluation, else nothing."""
    if 'side_accuracy' not in metrics:
        return ''
    return f' | side acc {metrics["side_accuracy"]:.3f} (n {metrics["side_n"]})'


# cross-validation reports

FOLD_RESULT = 'fold_result.json'  # in <log_dir>/fold_<k>/: how the fold ended and its held-out predictions


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


def _listed(values: np.ndarray | None) -> list[int] | None:
    return None if values is None else [int(v) for v in values]


def fold_outcome(fold: int, run_id: str | None, status: str, result: FoldResult | None = None,
                 error: str | None = None) -> dict[str, Any]:
    """What ``<log_dir>/fold_<k>/fold_result.json`` holds: the fold, the run identity of the fold
    (``<run id>-fold_<k>``), its ``status`` (``done``, ``interrupted``, ``failed`` with the ``error``, or
    ``not_run``: its process was interrupted before it) and its held-out predictions and record when it has them.
    Under torchrun rank 0 reads the folds of the other processes from these files (``fold_result``)."""
    payload: dict[str, Any] = {'fold': int(fold), 'run_id': run_id, 'status': status, 'error': error,
                               'result': None}
    if result is not None:
        payload['result'] = {'indices': [int(i) for i in result.indices], 'true': _listed(result.true),
                             'pred': _listed(result.pred), 'side_true': _listed(result.side_true),
                             'side_pred': _listed(result.side_pred), 'summary': utils.to_plain(result.summary)}
    return payload


def fold_result(payload: dict[str, Any]) -> FoldResult | None:
    """The ``FoldResult`` a ``fold_outcome`` payload holds (None when it holds none)."""
    stored = payload.get('result')
    if stored is None:
        return None

    def array(values: list[int] | None) -> np.ndarray | None:
        return None if values is None else np.asarray(values, dtype=np.int64)
    return FoldResult(fold=int(payload['fold']), indices=[int(i) for i in stored['indices']],
                      true=array(stored['true']), pred=array(stored['pred']), side_true=array(stored['side_true']),
                      side_pred=array(stored['side_pred']), summary=stored['summary'])


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
    columns = ['path', 'subject', 'fold', 'true', 'predicted'] + (['side_true', 'side_predicted'] if multitask else [])
    rows = []
    for result in results:
        for row, index in enumerate(result.indices):
            cells = [dataset.paths[index], dataset.subjects[index], result.fold, int(result.true[row]),
                     int(result.pred[row])]
            if multitask and result.side_true is not None:
                side = int(result.side_true[row])
                cells += [SIDE_CLASSES[side] if 0 <= side < len(SIDE_CLASSES) else 'unknown',
                          SIDE_CLASSES[int(result.side_pred[row])]]
            rows.append(dict(zip(columns, cells)))
    utils.atomic_write_csv(path, columns, rows)


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


def summarise_cv(results: Sequence[FoldResult], dataset: Dataset, folds: dict[str, int], num_folds: int,
                 pool_size: int, interrupted: bool, args: argparse.Namespace, log_dir: Path,
                 class_names: Sequence[str], prediction: str, failed: Sequence[dict] = ()) -> dict[str, Any]:
    """Pool the held-out predictions of every fold run: metrics with subject-resampled 95% bootstrap intervals,
    mean and std over folds; write the summary, the predictions and the plot, and print the table. ``failed``
    lists the folds that stopped with an error (``{'fold': k, 'error': text}``): they are named in the summary,
    which is then partial."""
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
                                            'the subjects of the folds run' if partial else '')
                 + (f'; FAILED: fold(s) {", ".join(str(f["fold"]) for f in failed)} stopped with an error'
                    if failed else '')),
        'select_metric': args.select_metric, 'prediction': prediction, 'class_names': list(class_names),
        'val_fraction': args.val_fraction, 'seed': args.seed,
        'pool': {'images': pool_size, 'subjects': len(folds)},
        'pooled': {'metrics': pooled, 'ci95': intervals, 'bootstrap': 'subjects resampled, 1000 draws'},
        'fold_mean': mean, 'fold_std': std,
        'folds': [r.summary for r in results],
        'failed_folds': list(failed),
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
    for failure in failed:
        print(f'FAILED fold {failure["fold"]}: {failure["error"]}')
    return {**summary, 'summary_path': str(log_dir / 'cv_summary.json'),
            'predictions_path': str(log_dir / 'cv_predictions.csv'), 'plot_path': str(log_dir / 'cv_folds.png'),
            'interrupted': interrupted}


