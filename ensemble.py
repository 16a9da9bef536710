"""Grading with more than one look: test-time augmentation (TTA), ensembles of checkpoints and the
out-of-distribution (OOD) score, shared by evaluation, inference and the attention viewer.

- TTA views are photo transforms ``(face square, landmarks) -> (face square, landmarks)``, the protocol of a
  dataset ``transform``, applied to the face square before the regions are cut. ``mirror`` grades the face and
  its mirror image (``data_augmentation.mirror_face``, which also puts the left / right points back in mosaic
  order); ``mirror_shift`` adds crops moved by ``TTA_SHIFT_PIXELS`` face-square pixels, of both. Mirroring swaps
  the face's sides: the grade stays, but the side head's left and right are swapped back before averaging.
- An ensemble is a list of trained checkpoints (``load_members``) that read the same inputs and predict the same
  classes; a single checkpoint is an ensemble of one.
- The softmax probabilities of every view of every member are averaged, and the mean is decoded with the
  checkpoints' prediction rule (``decode_probabilities``, as a patient's photos are averaged).
- The OOD score (``ood.py``) is read on the original view only; an ensemble's score is the mean of its members'.

The ``flow`` input mode (a rest / expression pair) takes no TTA: a mirrored or shifted photo pair would need its
optical flow recomputed for each view, which this toolkit does not do.
"""
from __future__ import annotations

import math
import os
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch

import ood
import utils
from annotations import SIDE_CLASSES
from checkpoints import TrainedModel, load_trained
from data_augmentation import mirror_face
from losses import decode_probabilities

__all__ = ['DEFAULT_TTA', 'TTA_MODES', 'TTA_SHIFT_PIXELS', 'TTA_SHIFTS', 'MEMBER_PREPROCESS_KEYS', 'OOD_WARNING',
           'MODEL_PATHS_HELP',
           'View', 'tta_views', 'check_tta', 'describe_tta', 'swap_sides',
           'checkpoint_files', 'Member', 'Ensemble', 'load_members', 'check_members_agree', 'finite_or_none']

# the TTA every script uses unless told otherwise (the three scripts' --tta flags default to it)
DEFAULT_TTA = 'none'
TTA_MODES = ('none', 'mirror', 'mirror_shift')
TTA_SHIFT_PIXELS = 2  # face-square pixels (224 by default): about a tenth of a 28-pixel region crop
TTA_SHIFTS = tuple((sx * TTA_SHIFT_PIXELS, sy * TTA_SHIFT_PIXELS) for sx, sy in ((1, 1), (-1, -1), (1, -1), (-1, 1)))
# preprocess entries that decide what a network reads: every member of an ensemble must share them
MEMBER_PREPROCESS_KEYS = ('input_mode', 'face_size', 'region_size', 'input_size', 'mean', 'std', 'face_margin',
                          'landmark_face_scale', 'detector', 'flow')
OOD_WARNING = 'unlike the training photos: the grade may not be trustworthy'
# the start of every script's --model_path help (each says what it does with several checkpoints)
MODEL_PATHS_HELP = ('checkpoint written by train_facial_palsy.py (best_model.pth); the network and its preprocessing '
                    'are rebuilt from it. Several checkpoints, or a folder (a --cv run\'s save folder: its '
                    'fold_*/best_model.pth; a run\'s save folder: its best_model.pth; else the *.pth inside)')


# test-time augmentation

@dataclass(frozen=True)
class View:
    """One TTA view, a photo transform ``(image, landmarks) -> (image, landmarks)`` of the face square (a dataset
    ``transform``): mirrored or not, then the crop moved by ``shift`` = (dx, dy) face-square pixels. In the
    ``regions`` mode the landmarks move, so each region crop moves; in the ``face`` mode (whose crop does not
    follow the points) the image moves the other way instead. Plain data, so DataLoader workers can pickle it."""
    mirrored: bool = False
    shift: tuple[int, int] = (0, 0)
    input_mode: str = 'regions'

    @property
    def identity(self) -> bool:
        return not self.mirrored and self.shift == (0, 0)

    @property
    def name(self) -> str:
        parts = ['mirror'] if self.mirrored else []
        if self.shift != (0, 0):
            parts.append(f'shift{self.shift[0]:+d}{self.shift[1]:+d}')
        return '+'.join(parts) or 'original'

    def __call__(self, image: np.ndarray, landmarks: Any) -> tuple[np.ndarray, np.ndarray]:
        points = np.asarray(landmarks, dtype=np.float32).reshape(5, 2)
        if self.mirrored:
            image, points = mirror_face(image, points)
        dx, dy = self.shift
        if dx or dy:
            if self.input_mode == 'face':
                matrix = np.float32([[1, 0, -dx], [0, 1, -dy]])
                image = cv2.warpAffine(np.ascontiguousarray(image), matrix, (image.shape[1], image.shape[0]),
                                       flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
            else:
                points = points + np.float32([dx, dy])
        return np.ascontiguousarray(image), points


def check_tta(tta: str | None, input_mode: str = 'regions') -> str:
    """``tta`` if it is one of ``TTA_MODES`` and the input mode takes it (None = ``DEFAULT_TTA``); else a
    one-line ``UserError``."""
    tta = DEFAULT_TTA if tta is None else str(tta)
    if tta not in TTA_MODES:
        raise utils.UserError(f'--tta {tta}: choose one of {", ".join(TTA_MODES)}')
    if tta != 'none' and input_mode == 'flow':
        raise utils.UserError(f'--tta {tta}: test-time augmentation is not available for input_mode flow (each '
                              'mirrored or shifted view of a photo pair would need its optical flow computed '
                              'again); use --tta none')
    return tta


def tta_views(tta: str, input_mode: str = 'regions') -> list[View]:
    """The views of a TTA setting, the original view first: ``none`` 1, ``mirror`` 2, ``mirror_shift`` 10 (the
    photo and its mirror, each as it is and with the crop moved by the four ``TTA_SHIFTS``)."""
    tta = check_tta(tta, input_mode)
    views = [View(input_mode=input_mode)]
    if tta in ('mirror', 'mirror_shift'):
        views.append(View(mirrored=True, input_mode=input_mode))
    if tta == 'mirror_shift':
        views += [View(mirrored=mirrored, shift=shift, input_mode=input_mode)
                  for mirrored in (False, True) for shift in TTA_SHIFTS]
    return views


def describe_tta(tta: str, views: Sequence[View] | None = None) -> str:
    """One line for titles and printouts: ``TTA mirror (2 views averaged)`` or ``no TTA``."""
    if tta == 'none':
        return 'no TTA'
    count = len(views) if views is not None else len(tta_views(tta))
    return f'TTA {tta} ({count} views averaged)'


def swap_sides(side_probabilities: np.ndarray, sides: Sequence[str] = SIDE_CLASSES) -> np.ndarray:
    """Side probabilities ``(N, len(sides))`` with the ``left`` and ``right`` columns exchanged: what a mirrored
    view's side prediction says about the unmirrored face."""
    order = list(range(len(sides)))
    if 'left' in sides and 'right' in sides:
        left, right = list(sides).index('left'), list(sides).index('right')
        order[left], order[right] = right, left
    return np.asarray(side_probabilities)[:, order]


# members

def checkpoint_files(model_paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The checkpoint files named by ``--model_path``: each file as given; a folder gives its own
    ``best_model.pth`` (a training run's save folder: not its ``last.pth`` or ``epoch_N.pth``), else the
    ``best_model.pth`` files one level down (a ``--cv`` run's ``fold_*/best_model.pth``, or several runs), else the
    ``*.pth`` files directly inside (printed, so the user sees which were taken). A folder with none is a
    ``UserError``."""
    if isinstance(model_paths, (str, os.PathLike)):
        model_paths = [model_paths]
    files: list[Path] = []
    for given in map(Path, model_paths):
        if not given.is_dir():
            files.append(given)
            continue
        found = ([given / 'best_model.pth'] if (given / 'best_model.pth').is_file() else
                 sorted(given.glob('*/best_model.pth')) or sorted(p for p in given.glob('*.pth') if p.is_file()))
        if not found:
            raise utils.UserError(f'--model_path {given}: a folder without checkpoints (neither */best_model.pth '
                                  f'nor *.pth inside)')
        print(f'note: --model_path {given}: {len(found)} checkpoint(s) taken: '
              f'{", ".join(str(p.relative_to(given)) for p in found)}')
        files.extend(found)
    if not files:
        raise utils.UserError('--model_path: no checkpoint given')
    return files


@dataclass
class Member:
    """One checkpoint of an ensemble: the ``TrainedModel`` and its OOD statistics (None when it has none)."""
    trained: TrainedModel
    ood_stats: dict[str, Any] | None

    @property
    def path(self) -> Path:
        return self.trained.path

    @property
    def model(self) -> torch.nn.Module:
        return self.trained.model


def _member_signature(trained: TrainedModel) -> dict[str, Any]:
    """What members must share: the classes they predict, the rule that reads them, the side head's classes and
    the preprocessing that makes their inputs."""
    signature = {'num_classes': trained.num_classes, 'class names': list(trained.class_names),
                 'prediction rule': trained.prediction, 'side classes': list(trained.sides)}
    signature.update({f'preprocess {key}': utils.to_plain(trained.preprocess.get(key))
                      for key in MEMBER_PREPROCESS_KEYS})
    return signature


def check_members_agree(members: Sequence[TrainedModel]) -> None:
    """Refuse, with one line naming the file, a member that reads or predicts differently from the first."""
    if not members:
        return
    reference = _member_signature(members[0])
    for member in members[1:]:
        signature = _member_signature(member)
        for key, value in reference.items():
            if signature[key] != value:
                raise utils.UserError(f'{member.path}: its {key} ({signature[key]}) differs from {members[0].path} '
                                      f'({value}); the checkpoints of an ensemble must read the same inputs and '
                                      f'predict the same classes')


def load_members(model_paths: str | os.PathLike | Sequence[str | os.PathLike], device: torch.device | str = 'cpu',
                 load: Callable[..., TrainedModel] = load_trained) -> tuple[list[Member], list[tuple[str, str]]]:
    """Open every checkpoint of ``model_paths`` (files or folders, see ``checkpoint_files``). With one checkpoint a
    failure is its ``UserError``; with several, a checkpoint that cannot be opened is announced in one line and
    skipped (returned as ``(path, reason)``), and only none left is an error. Members that disagree on inputs or
    classes are refused (``check_members_agree``)."""
    files = checkpoint_files(model_paths)
    loaded: list[TrainedModel] = []
    skipped: list[tuple[str, str]] = []
    for path in files:
        try:
            loaded.append(load(path, device))
        except utils.UserError as err:
            if len(files) == 1:
                raise
            reason = str(err)
            print(f'skipped checkpoint: {reason}')
            skipped.append((str(path), reason))
    if not loaded:
        raise utils.UserError(f'none of the {len(files)} checkpoints could be opened: '
                              f'{"; ".join(reason for _, reason in skipped)}')
    check_members_agree(loaded)
    members = [Member(trained, ood.check_stats(trained.checkpoint.get('ood'))) for trained in loaded]
    without = [str(m.path) for m in members if m.ood_stats is None]
    if without:
        print(f'note: {", ".join(without)}: no OOD statistics in the checkpoint (trained before they were '
              f'kept); {"its" if len(without) == 1 else "their"} photos get no OOD score or flag')
    return members, skipped


# the grading arithmetic

@dataclass
class Ensemble:
    """The members, their TTA views and how their outputs are combined. ``forward`` runs every member on one
    view's inputs; ``combine`` averages the views and members and decodes the grades."""
    members: list[Member]
    tta: str = DEFAULT_TTA
    skipped: list[tuple[str, str]] = field(default_factory=list)
    input_mode: str | None = None  # default: the members' (evaluation may override it)

    def __post_init__(self):
        first = self.members[0].trained
        self.input_mode = self.input_mode or first.preprocess.get('input_mode', 'regions')
        self.tta = check_tta(self.tta, self.input_mode)
        self.views = tta_views(self.tta, self.input_mode)
        self.prediction, self.sides, self.num_classes = first.prediction, list(first.sides), first.num_classes

    @classmethod
    def load(cls, model_paths: str | os.PathLike | Sequence[str | os.PathLike], device: torch.device | str = 'cpu',
             tta: str | None = None) -> 'Ensemble':
        """``load_members`` and the TTA views of ``tta`` (checked against the input mode before any work)."""
        members, skipped = load_members(model_paths, device)
        return cls(members, DEFAULT_TTA if tta is None else tta, skipped)

    @property
    def paths(self) -> list[str]:
        return [str(m.path) for m in self.members]

    @property
    def has_ood(self) -> bool:
        return any(m.ood_stats is not None for m in self.members)

    def describe(self) -> str:
        """One line for figure notes and printouts: the TTA and how many checkpoints grade."""
        who = (f'ensemble of {len(self.members)} checkpoints' if len(self.members) > 1
               else f'checkpoint {self.members[0].path.name}')
        return f'{who}, {describe_tta(self.tta, self.views)}'

    def ood_description(self) -> str:
        """What the OOD flag means for these members (``ood.describe_threshold`` of the first with statistics)."""
        stats = next((m.ood_stats for m in self.members if m.ood_stats is not None), None)
        if stats is None:
            return 'no OOD statistics in the checkpoint(s): no photo is scored or flagged'
        text = ood.describe_threshold(stats)
        scored = sum(m.ood_stats is not None for m in self.members)
        if len(self.members) > 1:
            text += (f'; the score is the mean over the {scored} of {len(self.members)} checkpoints that have OOD '
                     f'statistics (the threshold described is the first one\'s)')
        return text

    @torch.inference_mode()
    def forward(self, inputs: torch.Tensor, device: torch.device, with_ood: bool = False,
                autocast: Any = None) -> dict[str, np.ndarray | None]:
        """Every member on a batch of one view's inputs ``(B, 3, S, S)``: ``grade`` (M, B, C) and ``side`` (M, B,
        3) softmax probabilities (side None without a side head) and, with ``with_ood``, ``ood`` (M, B) scores
        (NaN for a member without statistics)."""
        grade, side, scores = [], [], []
        inputs = inputs.to(device)
        for member in self.members:
            with autocast if autocast is not None else nullcontext():
                grade_logits, side_logits = member.model.forward_multitask(inputs)
                features = (ood.pre_logit_features(member.model, inputs)
                            if with_ood and member.ood_stats is not None else None)
            grade.append(torch.softmax(grade_logits.float(), dim=1).cpu().numpy())
            if self.sides and side_logits is not None:
                side.append(torch.softmax(side_logits.float(), dim=1).cpu().numpy())
            if with_ood:
                scores.append(np.full(len(inputs), np.nan) if features is None
                              else ood.ood_score(member.ood_stats, features.cpu()))
        return {'grade': np.stack(grade).astype(np.float64),
                'side': np.stack(side).astype(np.float64) if side else None,
                'ood': np.stack(scores).astype(np.float64) if with_ood else None}

    def combine(self, outputs: Sequence[dict[str, np.ndarray | None]]) -> dict[str, np.ndarray | None]:
        """Average ``forward`` outputs, one per view in ``views`` order: the views of each member (a mirrored
        view's sides swapped back), then the members. Returns ``probabilities`` (N, C), ``predictions`` (N,)
        decoded with the prediction rule, ``side_probabilities`` (N, 3) or None, ``ood_score`` (N,) (the mean of
        the members' original-view scores; NaN without statistics) and ``ood_flag`` (N,) (score > 1)."""
        if len(outputs) != len(self.views):
            raise ValueError(f'{len(outputs)} view outputs for {len(self.views)} views')
        probabilities = np.mean([out['grade'] for out in outputs], axis=(0, 1))
        side = None
        if outputs[0]['side'] is not None:
            side = np.mean([swap_sides(member, self.sides) if view.mirrored else member
                            for out, view in zip(outputs, self.views) for member in out['side']], axis=0)
        count = probabilities.shape[0]
        scores = outputs[0]['ood']
        if scores is None or not np.isfinite(scores).any():
            score = np.full(count, np.nan)
        else:
            with warnings.catch_warnings():  # a photo no member could score stays NaN, without a warning
                warnings.simplefilter('ignore', RuntimeWarning)
                score = np.nanmean(np.where(np.isfinite(scores), scores, np.nan), axis=0)
        return {'probabilities': probabilities, 'predictions': decode_probabilities(probabilities, self.prediction),
                'side_probabilities': side, 'ood_score': score,
                'ood_flag': np.nan_to_num(score, nan=0.0) > 1.0}


def finite_or_none(value: float | None) -> float | None:
    """A score for JSON and CSV: None instead of NaN."""
    return None if value is None or not math.isfinite(float(value)) else float(value)
