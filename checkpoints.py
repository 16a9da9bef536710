"""Checkpoint files: saving and opening them, the dict a training checkpoint holds, the checks before a run
resumes, and rebuilding a ready model from a trained checkpoint.

A checkpoint is a plain dict (timm ``checkpoint_saver.py``, nanoGPT ``ckpt.pt``), so ``torch.load(path,
weights_only=True)`` opens it: ``model`` (the state_dict, on the CPU), ``optimizer``, ``scheduler``, ``epoch``,
``best_metric`` / ``best_epoch`` / ``select_metric``, ``model_args`` (enough to rebuild the network, and the one
place ``num_classes`` is stored), ``preprocess`` (how photos became network inputs), ``class_names``,
``prediction`` (how grade logits become a grade, ``losses.PREDICTION_RULES``), ``side_names`` (with a side head),
``args``, ``history``, ``val_metrics``, ``best_val_metrics``, ``run_id`` (which run wrote it), ``scaler`` (with
float16 mixed precision) and, after ``--baseline symmetry``, ``symmetry_baseline``. A progress mark
(``epoch_<N>.pth``) keeps only what ``load_trained`` needs (``weights_only``).

With ``--ema`` the ``model`` key holds the moving average of the weights, so every consumer of a checkpoint grades
with the averaged network unchanged, and ``ema`` holds what an exact resume needs besides: ``decay``, ``updates``
(optimiser steps averaged) and ``training_weights`` (the raw state_dict the optimizer state belongs to). At the end
of a run ``best_model.pth`` gains ``ood``, the out-of-distribution statistics of ``ood.fit_ood``.

Which folder a run may write into is ``run_folders.py``'s job.

Checkpoints of earlier versions still load: a top-level ``num_classes`` is checked against the network, and a
preprocess whose face-square size is called ``image_size`` is read through
``facial_palsy_dataset.upgrade_preprocess``.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

import Model
from facial_palsy_dataset import model_input_size, upgrade_preprocess
from losses import check_prediction_rule
from annotations import HB_GRADES, SIDE_CLASSES, SIMPLIFIED_GRADES, grade_names
from utils import UserError, atomic_write, to_plain

__all__ = ['save_checkpoint', 'load_checkpoint', 'state_dict_mismatches', 'describe_mismatches', 'load_pretrained',
           'build_checkpoint', 'weights_only', 'check_resume', 'restore_training', 'load_model', 'TrainedModel',
           'load_trained', 'prediction_rule', 'grade_labels', 'check_input_size']


# files

def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Save a plain-dict checkpoint atomically (``utils.atomic_write``: temporary file + ``os.replace``, the
    umask's permissions, a full disk as one line): a crash never leaves half a file, and
    ``torch.load(path, weights_only=True)`` opens it."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = 'cpu') -> dict[str, Any]:
    """Open a checkpoint with ``weights_only=True``; a missing, corrupt or foreign file is a one-line
    ``UserError`` naming it. A bare state_dict is returned as ``{'model': state_dict}``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f'{path}: checkpoint not found')
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # pickle, zip and unpickler errors all mean "not a checkpoint we can open"
        detail = _unpickler_detail(str(err)) or type(err).__name__
        if detail.lower().startswith('unsupported global'):
            found = re.search(r'GLOBAL ([\w.]+)', detail)
            what = f' ({found.group(1)})' if found else ''
            raise UserError(f'{path}: holds Python objects{what}, not only tensors and plain values; refused, '
                            f'since opening it would run code from the file') from None
        raise UserError(f'{path}: not a readable PyTorch checkpoint ({detail})') from None
    if not isinstance(obj, dict):
        raise UserError(f'{path}: expected a checkpoint dict or state_dict, found {type(obj).__name__}')
    if 'model' not in obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        obj = {'model': obj}
    return obj


def _unpickler_detail(text: str) -> str:
    """The line of a ``torch.load`` error that says what is wrong (torch's own text around it is advice to load
    the file unsafely, which this toolkit never does)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if 'WeightsUnpickler error:' in line:
            rest = line.split('WeightsUnpickler error:', 1)[1].strip()
            return rest or (lines[index + 1] if index + 1 < len(lines) else '')
    return lines[0] if lines else ''


# weights

def state_dict_mismatches(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, list[str]]:
    """How ``state`` fails to fit ``model`` exactly: ``shape`` (``name (file shape) in the file vs (model
    shape)``), ``missing`` and ``unexpected`` tensor names; every list empty when it fits."""
    target = model.state_dict()
    return {
        'shape': [f'{k} {tuple(v.shape)} in the file vs {tuple(target[k].shape)}'
                  for k, v in state.items() if k in target and v.shape != target[k].shape],
        'missing': [k for k in target if k not in state],
        'unexpected': [k for k in state if k not in target],
    }


def describe_mismatches(mismatches: Mapping[str, list[str]], limit: int = 3) -> str:
    """The first ``limit`` mismatches of each kind and how many there are in all, in one line."""
    count = sum(len(names) for names in mismatches.values())
    parts = [f'{label}: {", ".join(mismatches[kind][:limit])}'
             for kind, label in (('shape', 'shape differs'), ('missing', 'missing'), ('unexpected', 'unexpected'))
             if mismatches.get(kind)]
    return f'{"; ".join(parts)}; {count} tensor(s) in all'


def load_pretrained(model: nn.Module, path: str | os.PathLike, pos_emb: str = 'interpolate',
                    verbose: bool = True) -> dict[str, list]:
    """``Model.load_pretrained`` from a file (a checkpoint of ``main_HTNet.py`` or ``train_facial_palsy.py``, or a
    plain state_dict): every tensor whose name and shape fit is loaded, positional embeddings are resized, the
    rest is reported."""
    checkpoint = load_checkpoint(path)
    try:
        return Model.load_pretrained(model, checkpoint, pos_emb=pos_emb, verbose=verbose)
    except ValueError as err:
        raise UserError(f'{path}: {err}') from err


# training checkpoints

def _to_cpu(value: Any) -> Any:
    """Every tensor inside nested dicts / lists, copied to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def build_checkpoint(*, model: nn.Module, model_args: Mapping[str, Any], preprocess: Mapping[str, Any], epoch: int,
                     optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                     best_metric: float | None = None, best_epoch: int = 0, select_metric: str | None = None,
                     prediction: str = 'argmax', args: Any = None, history: list[dict] | None = None,
                     val_metrics: dict | None = None, best_val_metrics: dict | None = None,
                     run_id: str | None = None, scaler: Any = None,
                     symmetry_baseline: dict | None = None, ema: Any = None) -> dict[str, Any]:
    """The plain dict every training .pth holds; ``torch.load(path, weights_only=True)`` opens it, also on a
    machine without the GPU it was trained on (tensors are stored on the CPU). ``args`` is an
    ``argparse.Namespace`` or a dict; ``best_metric`` None is stored as NaN (no validation yet). Everything that
    carries from one epoch to the next is here (weights, optimizer, scheduler, best epoch and its metrics,
    history, the float16 loss scale), so a resumed run replays the epochs the interrupted one did not finish.
    With ``ema`` (an ``engine.ModelEma`` of ``model``) ``model`` stores the averaged weights and ``ema`` the raw
    ones with the decay and step count."""
    model_args = to_plain(dict(model_args))
    if args is not None and not isinstance(args, Mapping):
        args = vars(args)
    checkpoint = {
        'model': _to_cpu((ema.module if ema is not None else model).state_dict()),
        'optimizer': _to_cpu(optimizer.state_dict()) if optimizer is not None else None,
        'scheduler': scheduler.state_dict() if scheduler is not None else None,
        'epoch': int(epoch),
        'best_metric': float(best_metric) if best_metric is not None else float('nan'),
        'best_epoch': int(best_epoch),
        'select_metric': select_metric,
        'model_args': model_args,
        'preprocess': to_plain(dict(preprocess)),
        'class_names': grade_names(int(model_args['num_classes'])),
        'prediction': check_prediction_rule(prediction, 'build_checkpoint'),
        **({'side_names': list(SIDE_CLASSES)} if model_args.get('num_side_classes') else {}),
        'args': to_plain(dict(args)) if args is not None else None,
        'history': to_plain(history or []),
        'val_metrics': to_plain(val_metrics) if val_metrics is not None else None,
        'best_val_metrics': to_plain(best_val_metrics) if best_val_metrics is not None else None,
        'run_id': run_id,
    }
    if scaler is not None and scaler.is_enabled():
        checkpoint['scaler'] = _to_cpu(scaler.state_dict())
    if symmetry_baseline is not None:
        checkpoint['symmetry_baseline'] = to_plain(symmetry_baseline)
    if ema is not None:
        checkpoint['ema'] = {'decay': float(ema.decay), 'updates': int(ema.n_averaged),
                             'training_weights': _to_cpu(model.state_dict())}
    return checkpoint


# what a progress mark (epoch_<N>.pth) keeps: enough for load_trained, not the optimizer state
WEIGHTS_ONLY_KEYS = ('model', 'model_args', 'preprocess', 'class_names', 'prediction', 'side_names', 'epoch',
                     'run_id', 'select_metric', 'symmetry_baseline', 'ood')


def weights_only(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a training checkpoint that grades photos (``load_trained`` opens it): a third of the size of
    one with AdamW's state, which a run never resumes from."""
    return {key: checkpoint[key] for key in WEIGHTS_ONLY_KEYS if key in checkpoint}


# preprocess entries that change what the network sees; a resumed run must make its inputs the same way
RESUME_PREPROCESS_KEYS = ('input_mode', 'face_size', 'region_size', 'input_size')


# training flags that change what each epoch sees: a resumed run must repeat them (checked when the checkpoint's
# args record them), also when a default changed between the run and its resume
RESUME_TRAINING_FLAGS = ('augmentation', 'flip_swap_side', 'mixup')


def _flag(name: str, value: Any) -> str:
    """A flag as it is typed: ``--augmentation robust``, ``--flip_swap_side`` / ``--no-flip_swap_side``."""
    if isinstance(value, bool):
        return f'--{name}' if value else f'--no-{name}'
    return f'--{name} {value}'


def check_resume(checkpoint: Mapping[str, Any], path: str | os.PathLike, *, model_args: Mapping[str, Any],
                 preprocess: Mapping[str, Any], prediction: str, select_metric: str, epochs: int,
                 ema: float = 0.0, finish: bool = False, training: Mapping[str, Any] | None = None) -> None:
    """Refuse, before any slow work, to resume from a checkpoint that is not a training checkpoint, or was made
    for another network, preprocessing, prediction rule, selection metric, weight average (``ema`` decay, 0 =
    none) or ``training`` flags (``RESUME_TRAINING_FLAGS``), or has already run ``epochs`` (exactly ``epochs`` is
    accepted with ``finish``: a run stopped after its last epoch, before its closing steps)."""
    stored = checkpoint.get('model_args')
    if stored is not None and 'epoch' in checkpoint and 'optimizer' not in checkpoint:
        raise UserError(f'{path}: a progress mark of epoch {checkpoint["epoch"]} with the weights only (no '
                        f'optimizer state); resume from {Path(path).parent / "last.pth"}, or start from its '
                        f'weights with --pretrained_path')
    if stored is None or 'epoch' not in checkpoint or 'optimizer' not in checkpoint:
        raise UserError(f'{path}: not a training checkpoint of this script (no model_args/epoch/optimizer); '
                        f'use --pretrained_path to start from its weights')
    differs = {k: (stored.get(k), v) for k, v in model_args.items() if to_plain(stored.get(k)) != to_plain(v)}
    if checkpoint.get('preprocess'):
        saved, now = upgrade_preprocess(checkpoint['preprocess']), upgrade_preprocess(preprocess)
        for key in RESUME_PREPROCESS_KEYS:
            if to_plain(saved.get(key)) != to_plain(now.get(key)):
                differs[key] = (saved.get(key), now.get(key))
    if differs:
        shown = ', '.join(f'{k} {a} in the checkpoint vs {b} now' for k, (a, b) in differs.items())
        raise UserError(f'{path}: trained with other settings ({shown}); resume with the same flags')
    stored_rule = checkpoint.get('prediction') or 'argmax'
    if stored_rule != prediction:
        raise UserError(f'{path}: trained for {stored_rule} predictions, not {prediction} ones; resume with the '
                        f'same --loss')
    if (checkpoint.get('select_metric') or select_metric) != select_metric:
        raise UserError(f'{path}: selected by {checkpoint["select_metric"]}, not --select_metric {select_metric}')
    stored_ema = float((checkpoint.get('ema') or {}).get('decay', 0.0))
    if stored_ema != float(ema):
        raise UserError(f'{path}: trained with --ema {stored_ema:g}, not --ema {float(ema):g}; resume with the same '
                        f'--ema')
    recorded = checkpoint.get('args') or {}
    other = {name: recorded[name] for name, value in (training or {}).items()
             if name in recorded and recorded[name] is not None and to_plain(recorded[name]) != to_plain(value)}
    if other:
        raise UserError(f'{path}: trained with {" ".join(_flag(k, v) for k, v in other.items())} (now '
                        f'{" ".join(_flag(k, training[k]) for k in other)}); resume with the same flags: '
                        f'{" ".join(_flag(k, v) for k, v in other.items())}')
    if int(checkpoint['epoch']) > epochs or (int(checkpoint['epoch']) == epochs and not finish):
        raise UserError(f'{path}: already trained {checkpoint["epoch"]} epochs; raise --epochs to train further')


def restore_training(checkpoint: Mapping[str, Any], path: str | os.PathLike, model: nn.Module,
                     optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any = None, ema: Any = None
                     ) -> tuple[int, float | None, int, list[dict]]:
    """Load the weights, optimizer, scheduler (and float16 loss-scale) state of a checkpoint passed by
    ``check_resume``; with ``ema`` (an ``engine.ModelEma``) the raw weights into ``model`` and the averaged ones
    into ``ema``. Returns the last completed epoch, the best validation value so far (None before any), its epoch
    and the history rows up to the last completed epoch."""
    if ema is not None:
        stored = checkpoint.get('ema') or {}
        if 'training_weights' not in stored:
            raise UserError(f'{path}: holds no weight average (trained without --ema); resume without --ema')
        model.load_state_dict(stored['training_weights'])
        ema.module.load_state_dict(Model.extract_state_dict(checkpoint))
        ema.n_averaged.fill_(int(stored.get('updates', 0)))
    else:
        model.load_state_dict(Model.extract_state_dict(checkpoint))
    try:
        optimizer.load_state_dict(checkpoint['optimizer'])
        if scheduler is not None and checkpoint.get('scheduler'):
            scheduler.load_state_dict(checkpoint['scheduler'])
        if scaler is not None and scaler.is_enabled() and checkpoint.get('scaler'):
            scaler.load_state_dict(checkpoint['scaler'])
    except (ValueError, KeyError) as err:
        raise UserError(f'{path}: optimizer/scheduler state does not fit ({err}); '
                        f'was it trained with another --scheduler?') from err
    epoch = int(checkpoint['epoch'])
    best_value = checkpoint.get('best_metric')
    best_value = None if best_value is None or math.isnan(best_value) else float(best_value)
    history = [row for row in (checkpoint.get('history') or []) if row.get('epoch', 0) <= epoch]
    return epoch, best_value, int(checkpoint.get('best_epoch', 0)), history


# trained models

def load_model(path: str | os.PathLike, device: str | torch.device = 'cpu',
               model_overrides: Mapping[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network a checkpoint describes (its ``model_args``) and load its weights; returns ``(model in
    eval mode on device, checkpoint dict)``. ``model_overrides`` replace stored ``model_args`` entries. Weights that
    do not fit the rebuilt network are a one-line ``UserError`` listing the first mismatches, never a half-loaded
    model. Any HTNet checkpoint of this toolkit (also ``main_HTNet.py``'s) loads; ``load_trained`` adds what a
    palsy checkpoint says about reading its inputs and outputs."""
    checkpoint = load_checkpoint(path, map_location='cpu')
    model_args = dict(checkpoint.get('model_args') or {})
    model_args.update({k: v for k, v in (model_overrides or {}).items() if v is not None})
    if not model_args:
        raise UserError(f'{path}: the checkpoint stores no model_args; it was not written by this toolkit '
                        f'(load it with checkpoints.load_pretrained into a model you build)')
    try:
        model = Model.build_model(model_args)
    except (TypeError, ValueError, AssertionError) as err:
        raise UserError(f'{path}: cannot build HTNet from model_args {model_args}: {err}') from err
    state = Model.extract_state_dict(checkpoint)
    mismatches = state_dict_mismatches(state, model)
    if any(mismatches.values()):
        raise UserError(f'{path}: weights do not match the network described by its model_args '
                        f'({describe_mismatches(mismatches)})')
    model.load_state_dict(state)
    return model.to(device).eval(), checkpoint


def prediction_rule(checkpoint: Mapping[str, Any], path: str | os.PathLike) -> str:
    """The checkpoint's grade decoding (``argmax`` when it names none); an unknown one is a ``UserError``."""
    return check_prediction_rule(checkpoint.get('prediction'), str(path))


def grade_labels(num_classes: int, class_names: list[str] | None = None) -> list[str]:
    """Short names of the predicted classes: HB roman numerals I-VI for 6 classes, the simplified scale's names
    for 3, else the checkpoint's class names."""
    if num_classes == len(HB_GRADES):
        return list(HB_GRADES)
    if num_classes == len(SIMPLIFIED_GRADES):
        return list(SIMPLIFIED_GRADES)
    return list(class_names or grade_names(num_classes))


def check_input_size(preprocess: Mapping[str, Any], model: nn.Module, path: str | os.PathLike,
                     hint: str = '') -> None:
    """A preprocess must make inputs of the size the network takes; ``hint`` says what the user can change."""
    size = model_input_size(preprocess)
    if size != model.image_size:
        raise UserError(f'{path}: its preprocess makes {size}x{size} inputs but the network takes '
                        f'{model.image_size}x{model.image_size}{hint}')


def _side_names(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """The side head's classes (``SIDE_CLASSES``: the patient's left, right, none), [] without one. A head of
    another size cannot be read as sides: it is left unused, with a note."""
    size = int(getattr(model, 'num_side_classes', 0) or 0)
    if size and size != len(SIDE_CLASSES):
        print(f'note: {path} has a side head of {size} classes, not the {len(SIDE_CLASSES)} sides '
              f'({", ".join(SIDE_CLASSES)}); no side is predicted')
        return []
    return list(SIDE_CLASSES) if size else []


@dataclass
class TrainedModel:
    """A trained palsy checkpoint, ready to grade: ``model`` (eval mode, on its device), the ``checkpoint`` dict
    and its ``path``, the complete ``preprocess`` that makes its inputs, ``class_names`` (display names),
    ``grades`` (short labels: HB I-VI numerals or the simplified names), ``prediction`` (the decoding rule of
    ``losses.decode_grades``), ``sides`` (the side head's classes, [] without one) and ``num_classes``."""
    model: nn.Module
    checkpoint: dict[str, Any]
    path: Path
    preprocess: dict[str, Any]
    class_names: list[str]
    grades: list[str]
    prediction: str
    sides: list[str]
    num_classes: int


def load_trained(path: str | os.PathLike, device: str | torch.device = 'cpu') -> TrainedModel:
    """Rebuild a trained checkpoint into a ready model with everything needed to read its inputs and outputs.

    A checkpoint without a ``preprocess`` gets the defaults (with a note); the preprocess must make inputs of the
    network's size; a top-level ``num_classes`` (earlier versions) must agree with the network; an unknown
    ``prediction`` rule is refused."""
    path = Path(path)
    model, checkpoint = load_model(path, device)
    num_classes = int(model.num_classes)
    stored_classes = checkpoint.get('num_classes')
    if stored_classes is not None and int(stored_classes) != num_classes:
        raise UserError(f'{path}: says num_classes {stored_classes} but its network has {num_classes} outputs')
    if not checkpoint.get('preprocess'):
        print(f'note: {path} stores no preprocess settings; using the defaults')
    preprocess = upgrade_preprocess(checkpoint.get('preprocess'))
    check_input_size(preprocess, model, path)
    stored_names = list(checkpoint.get('class_names') or [])
    class_names = stored_names if len(stored_names) == num_classes else grade_names(num_classes)
    return TrainedModel(model=model, checkpoint=checkpoint, path=path, preprocess=preprocess,
                        class_names=class_names, grades=grade_labels(num_classes, class_names),
                        prediction=prediction_rule(checkpoint, path), sides=_side_names(model, path),
                        num_classes=num_classes)
