"""Training criteria for House-Brackmann grading: cross-entropy, an ordinal loss on the usual logits, and a
grade + affected-side multi-task loss.

Cross-entropy treats the grades as unordered: calling an HB I face HB II costs as much as calling it HB VI. The
ordinal loss here keeps the network's K grade logits (so models and checkpoints keep their shape and can be scored
by the same code) and reads them as a distribution over ordered grades. From the softmax ``p`` it forms the
cumulative probabilities ``P(y > k) = 1 - sum_{j <= k} p_j`` for the K - 1 thresholds ``k = 0 .. K-2`` and scores
each against ``1[y > k]`` with binary cross-entropy (Cao et al., "Rank consistent ordinal regression for neural
networks", CORAL, 2020, use the same per-threshold binary targets). Because the cumulative probabilities come from
one softmax they are rank-consistent by construction (``P(y > 0) >= P(y > 1) >= ...``), which CORAL obtains with
shared weights. Probability mass far from the true grade crosses more thresholds and so costs more than the same
mass one grade off.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from annotations import SIDE_CLASSES
from utils import UserError

__all__ = ['CRITERIA', 'PREDICTION_RULES', 'LOSS_PREDICTION', 'SIDE_IGNORE_INDEX', 'cumulative_log_probs',
           'ordinal_loss', 'OrdinalLoss', 'ordinal_predict', 'expected_grade', 'side_targets', 'MultiTaskLoss',
           'build_criterion', 'prediction_for', 'check_prediction_rule', 'decode_grades', 'decode_probabilities',
           'subject_grades_from_photos']

CRITERIA = ('ce', 'ordinal')
# how grade logits become a grade (a checkpoint's ``prediction`` entry; ``argmax`` when it names none)
PREDICTION_RULES = ('argmax', 'ordinal_median')
# the rule each training loss is fitted for: the ordinal loss gets the median grade right
LOSS_PREDICTION = {'ce': 'argmax', 'ordinal': 'ordinal_median'}
SIDE_IGNORE_INDEX = -100   # nn.CrossEntropyLoss's default ignore_index: photos whose affected side is unknown
_SIDE_INDEX = {name: i for i, name in enumerate(SIDE_CLASSES)}   # left 0, right 1, none 2 (the patient's side)
_UNKNOWN_SIDES = frozenset({'unknown', '', 'nan'})


# helpers

def _as_weights(class_weights: Sequence[float] | torch.Tensor | None) -> torch.Tensor | None:
    if class_weights is None:
        return None
    weights = torch.as_tensor(class_weights, dtype=torch.float32).reshape(-1).clone()
    if not torch.all(torch.isfinite(weights)) or torch.any(weights < 0):
        raise ValueError(f'class weights must be finite and non-negative, got {weights.tolist()}')
    return weights


def _check_targets(logits: torch.Tensor, target: torch.Tensor, num_classes: int | None) -> int:
    assert logits.dim() == 2, f'expected (batch, classes) logits, got shape {tuple(logits.shape)}'
    classes = logits.shape[1]
    if num_classes is not None and classes != num_classes:
        raise ValueError(f'logits have {classes} classes but num_classes is {num_classes}')
    if classes < 2:
        raise ValueError('an ordinal loss needs at least two grades')
    if target.shape != logits.shape[:1]:
        raise ValueError(f'target shape {tuple(target.shape)} does not match {logits.shape[0]} logit rows')
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= classes):
        raise ValueError(f'grade targets must lie in 0..{classes - 1}, got {sorted(set(target.tolist()))[:6]}')
    return classes


def cumulative_log_probs(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log P(y <= k), log P(y > k))`` for ``k = 0 .. K-2``, each ``(B, K-1)``, from the softmax of ``logits``.

    Computed with log-sum-exp over the log-softmax instead of ``1 - cumsum(softmax)``, so a confident prediction
    gives tiny tail probabilities without the cancellation that would make their log ``-inf``.
    """
    log_p = F.log_softmax(logits.float(), dim=1)                      # (B, K); float32 even under autocast
    log_at_most = torch.logcumsumexp(log_p, dim=1)[:, :-1]            # log P(y <= k)
    log_above = torch.logcumsumexp(log_p.flip(1), dim=1).flip(1)[:, 1:]  # log P(y >= k + 1) = log P(y > k)
    return log_at_most, log_above


# ordinal loss

def ordinal_loss(logits: torch.Tensor, target: torch.Tensor, num_classes: int | None = None, *,
                 class_weights: Sequence[float] | torch.Tensor | None = None, label_smoothing: float = 0.0,
                 ce_weight: float = 0.0, reduction: str = 'mean') -> torch.Tensor:
    """Cumulative-probability ordinal loss on the usual K grade logits (see the module docstring).

    Per sample: the mean over the K - 1 thresholds of ``BCE(P(y > k), 1[y > k])``, where ``P(y > k) = 1 -
    cumsum(softmax(logits))[k]``. ``label_smoothing`` moves each binary target ``eps / 2`` towards 0.5.
    ``ce_weight`` adds that multiple of the (equally weighted and smoothed) cross-entropy, which keeps the argmax
    sharp. ``class_weights`` weigh each sample by its true grade; with ``reduction='mean'`` the result is the
    weighted mean, as in ``nn.CrossEntropyLoss``. ``reduction`` is ``'mean'``, ``'sum'`` or ``'none'``.
    """
    classes = _check_targets(logits, target, num_classes)
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f'label_smoothing must lie in [0, 1), got {label_smoothing}')
    log_at_most, log_above = cumulative_log_probs(logits)
    thresholds = torch.arange(classes - 1, device=logits.device)
    above = (target[:, None] > thresholds[None, :]).float()           # (B, K-1) 1[y > k]
    above = above * (1.0 - label_smoothing) + 0.5 * label_smoothing
    per_sample = -(above * log_above + (1.0 - above) * log_at_most).mean(dim=1)   # (B,)
    if ce_weight:
        per_sample = per_sample + ce_weight * F.cross_entropy(logits.float(), target, reduction='none',
                                                              label_smoothing=label_smoothing)
    weights = None
    if class_weights is not None:
        weights = torch.as_tensor(class_weights, dtype=per_sample.dtype, device=per_sample.device)
        if weights.numel() != classes:
            raise ValueError(f'{weights.numel()} class weights for {classes} grades')
        weights = weights[target]
        per_sample = per_sample * weights
    if reduction == 'none':
        return per_sample
    if reduction == 'sum':
        return per_sample.sum()
    if reduction != 'mean':
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return per_sample.sum() / weights.sum() if weights is not None else per_sample.mean()


class OrdinalLoss(nn.Module):
    """``ordinal_loss`` as a module (a drop-in for ``nn.CrossEntropyLoss(weight, label_smoothing)``); the class
    weights are a buffer, so ``.to(device)`` moves them with the model."""

    def __init__(self, class_weights: Sequence[float] | torch.Tensor | None = None, label_smoothing: float = 0.0,
                 ce_weight: float = 0.0, num_classes: int | None = None):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f'label_smoothing must lie in [0, 1), got {label_smoothing}')
        if ce_weight < 0:
            raise ValueError(f'ce_weight must be non-negative, got {ce_weight}')
        self.label_smoothing = float(label_smoothing)
        self.ce_weight = float(ce_weight)
        self.num_classes = num_classes
        self.register_buffer('class_weights', _as_weights(class_weights))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ordinal_loss(logits, target, self.num_classes, class_weights=self.class_weights,
                            label_smoothing=self.label_smoothing, ce_weight=self.ce_weight)

    def extra_repr(self) -> str:
        return f'label_smoothing={self.label_smoothing}, ce_weight={self.ce_weight}'


def ordinal_predict(logits: torch.Tensor) -> torch.Tensor:
    """The median grade of the predicted distribution: the smallest ``k`` with ``P(y <= k) >= 0.5``, ``(B,)`` int64.

    The median, not the rounded expected grade, because it minimises the expected absolute grade error (the MAE
    reported by ``metrics``) and is the grade the K - 1 threshold decisions ``P(y > k) > 0.5`` agree on. It equals
    the argmax when one grade holds more than half the mass.
    """
    log_at_most, _ = cumulative_log_probs(logits)
    return (log_at_most < math.log(0.5)).sum(dim=1)


def expected_grade(logits: torch.Tensor) -> torch.Tensor:
    """The expected grade ``sum_k k * p_k`` as a float ``(B,)``: a continuous severity for plots and correlations."""
    probs = F.softmax(logits.float(), dim=1)
    return probs @ torch.arange(logits.shape[1], dtype=probs.dtype, device=probs.device)


# affected side

def side_targets(sides: Iterable[Any]) -> torch.LongTensor:
    """Side class indices for ``MultiTaskLoss``: the patient's ``left`` 0, ``right`` 1, ``none`` 2
    (``annotations.SIDE_CLASSES`` order); ``unknown``, an empty value, ``None`` or NaN give ``SIDE_IGNORE_INDEX``
    (-100), which the loss skips. Integers already in that coding pass through. Any other value is a ``ValueError``
    naming it."""
    indices = []
    for side in sides:
        if side is None or (isinstance(side, float) and math.isnan(side)):
            indices.append(SIDE_IGNORE_INDEX)
        elif isinstance(side, (int,)) and not isinstance(side, bool):
            if side not in (*range(len(SIDE_CLASSES)), SIDE_IGNORE_INDEX):
                raise ValueError(f'side index {side} is not one of 0..{len(SIDE_CLASSES) - 1} or '
                                 f'{SIDE_IGNORE_INDEX}')
            indices.append(int(side))
        elif isinstance(side, str) and side.strip().lower() in _SIDE_INDEX:
            indices.append(_SIDE_INDEX[side.strip().lower()])
        elif isinstance(side, str) and side.strip().lower() in _UNKNOWN_SIDES:
            indices.append(SIDE_IGNORE_INDEX)
        else:
            raise ValueError(f'unknown affected side {side!r}; expected one of {", ".join(SIDE_CLASSES)} or '
                             f'unknown')
    return torch.tensor(indices, dtype=torch.long)


class MultiTaskLoss(nn.Module):
    """Grade loss plus ``side_weight`` x cross-entropy on the affected side (left / right / none).

    Call with the model's output, either the grade logits alone or ``Model.HTNet.forward_multitask``'s
    ``(grade_logits, side_logits)``, the grade targets and optionally the side targets from ``side_targets``.
    Without side logits or side targets only the grade loss is returned, so the same criterion serves models
    with and without a side head. Photos with an unknown side (-100) add nothing to the side term; a batch
    without any known side adds zero (not NaN).
    """

    def __init__(self, grade_criterion: nn.Module | None = None, side_weight: float = 0.5,
                 side_class_weights: Sequence[float] | torch.Tensor | None = None):
        super().__init__()
        if side_weight < 0:
            raise ValueError(f'side_weight must be non-negative, got {side_weight}')
        self.grade_criterion = grade_criterion if grade_criterion is not None else nn.CrossEntropyLoss()
        self.side_weight = float(side_weight)
        self.register_buffer('side_class_weights', _as_weights(side_class_weights))

    def components(self, output: torch.Tensor | tuple[torch.Tensor, torch.Tensor | None], grade_target: torch.Tensor,
                   side_target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``{'grade', 'side', 'total'}`` loss tensors (``side`` is 0 when there is nothing to score), for logging
        the two terms apart."""
        grade_logits, side_logits = output if isinstance(output, (tuple, list)) else (output, None)
        grade = self.grade_criterion(grade_logits, grade_target)
        side = grade.new_zeros(())
        if side_logits is not None and side_target is not None and self.side_weight > 0:
            side_target = side_target.to(side_logits.device)
            known = side_target != SIDE_IGNORE_INDEX
            if bool(known.any()):
                side = F.cross_entropy(side_logits.float(), side_target, weight=self.side_class_weights,
                                       ignore_index=SIDE_IGNORE_INDEX)
            else:
                side = side_logits.sum() * 0.0   # keeps the side head in the graph: DDP expects every grad
        return {'grade': grade, 'side': side, 'total': grade + self.side_weight * side}

    def forward(self, output: torch.Tensor | tuple[torch.Tensor, torch.Tensor | None], grade_target: torch.Tensor,
                side_target: torch.Tensor | None = None) -> torch.Tensor:
        return self.components(output, grade_target, side_target)['total']


# factory

def build_criterion(name: str = 'ce', class_weights: Sequence[float] | torch.Tensor | None = None,
                    label_smoothing: float = 0.0, ce_weight: float = 0.0) -> nn.Module:
    """The grade criterion named by ``--loss``: ``'ce'`` (``nn.CrossEntropyLoss``) or ``'ordinal'``
    (``OrdinalLoss``; ``ce_weight`` adds cross-entropy to it). Both take per-grade ``class_weights`` and
    ``label_smoothing``; wrap the result in ``MultiTaskLoss`` for a model with a side head."""
    if name not in CRITERIA:
        raise ValueError(f'unknown loss {name!r}; choose one of {", ".join(CRITERIA)}')
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f'label_smoothing must lie in [0, 1), got {label_smoothing}')
    weights = _as_weights(class_weights)
    if name == 'ce':
        if ce_weight:
            raise ValueError('ce_weight only applies to the ordinal loss')
        return nn.CrossEntropyLoss(weight=weights, label_smoothing=label_smoothing)
    return OrdinalLoss(class_weights=weights, label_smoothing=label_smoothing, ce_weight=ce_weight)


# prediction rules

def prediction_for(loss: str) -> str:
    """The ``prediction`` rule a network trained with ``--loss loss`` is read with."""
    if loss not in LOSS_PREDICTION:
        raise ValueError(f'unknown loss {loss!r}; choose one of {", ".join(CRITERIA)}')
    return LOSS_PREDICTION[loss]


def check_prediction_rule(rule: str | None, source: str) -> str:
    """``rule`` (``argmax`` when None or empty) if it is one of ``PREDICTION_RULES``; an unknown rule is a
    ``UserError`` naming ``source`` (a checkpoint path), never a silent argmax, since it would change every grade."""
    rule = rule or 'argmax'
    if rule not in PREDICTION_RULES:
        raise UserError(f'{source}: unknown prediction rule {rule!r} (expected one of {", ".join(PREDICTION_RULES)})')
    return str(rule)


def decode_grades(logits: torch.Tensor, rule: str = 'argmax') -> torch.Tensor:
    """``(N,)`` int64 grades of ``(N, C)`` logits by a checkpoint's ``prediction`` rule: the most probable grade, or
    for ``ordinal_median`` the median of the predicted distribution, which is what an ordinally trained network was
    fitted to get right (it minimises the expected absolute grade error). Any other rule is a ``ValueError``."""
    if rule == 'ordinal_median':
        return ordinal_predict(logits)
    if rule != 'argmax':
        raise ValueError(f'unknown prediction rule {rule!r}; expected one of {", ".join(PREDICTION_RULES)}')
    return logits.argmax(dim=1)


def decode_probabilities(probabilities: np.ndarray, rule: str) -> np.ndarray:
    """Grade indices ``(N,)`` of averaged probability distributions ``(N, C)`` (TTA views, ensemble members, a
    patient's photos) by a checkpoint's prediction rule (``decode_grades``; the median grade for
    ``ordinal_median``)."""
    # decode_grades reads logits through a softmax; the log of a distribution gives that distribution back
    logits = torch.log(torch.as_tensor(np.asarray(probabilities, dtype=np.float64)).clamp_min(1e-12))
    return decode_grades(logits, rule).numpy().astype(np.int64)


def subject_grades_from_photos(subjects: Sequence[str], probabilities: np.ndarray, rule: str
                               ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """A grade per patient from the photos of one sitting: each subject's photo probabilities averaged and read with
    the checkpoint's prediction ``rule``. Returns ``(subjects sorted, photos per subject, mean probabilities
    (S, C), grade indices (S,))``."""
    names = sorted(set(map(str, subjects)))
    row_of = {name: k for k, name in enumerate(names)}
    rows = np.array([row_of[str(s)] for s in subjects], dtype=np.int64)
    counts = np.bincount(rows, minlength=len(names))
    mean = np.zeros((len(names), np.shape(probabilities)[1]))
    np.add.at(mean, rows, np.asarray(probabilities, dtype=np.float64))
    mean /= np.maximum(counts, 1)[:, None]
    return names, counts, mean, decode_probabilities(mean, rule)
