"""Knowing when not to trust a grade: an out-of-distribution (OOD) score from the features the grade head reads.

A network trained on one kind of face grades any photo it is given, a face unlike its training photos included,
and its softmax confidence says nothing about that. So the checkpoint keeps statistics of its training photos'
features, and every graded photo gets a distance to them:

* the features are the pooled, normalised last-level features that the grade head reads
  (``model.forward_head(model.forward_features(x), pre_logits=True)``);
* the statistics are one mean per grade and one shared covariance (the class-conditional Gaussian of Lee et al.,
  "A simple unified framework for detecting out-of-distribution samples and adversarial attacks", NeurIPS 2018),
  the covariance shrunk towards a scaled identity (Ledoit-Wolf) because a few hundred photos cannot pin down a
  full covariance of 128-1024 features;
* a photo's distance is its Mahalanobis distance to the nearest grade mean;
* the threshold is the ``1 - false_alarm`` quantile of the distances of the *validation* photos (subjects the
  network never trained on, from the same source as the training photos), so about ``false_alarm`` of such
  photos are flagged by design; that measured rate is stored beside the threshold. Without validation photos the
  training photos set the threshold, which flags fewer unfamiliar photos (training features sit closer to their
  own means), and the description says so.

``ood_score`` is the distance divided by the threshold: 1.0 is the threshold, and a photo above it is "unlike the
training photos". The statistics are a plain dict of tensors, numbers and strings under the checkpoint key
``ood``, so ``torch.load(weights_only=True)`` opens it.

What the score can and cannot say: it measures how far a photo's *features* lie from those of the training
photos. A face from another camera, generator or population that the network maps near its training features is
not flagged, and a flag does not say the grade is wrong, only that nothing in training vouches for it.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

__all__ = ['OOD_VERSION', 'DEFAULT_FALSE_ALARM', 'pre_logit_features', 'collect_features', 'fit_ood',
           'ood_distance', 'ood_score', 'describe_threshold', 'check_stats']

OOD_VERSION = 1
DEFAULT_FALSE_ALARM = 0.05
_KEYS = ('version', 'method', 'means', 'precision', 'threshold', 'false_alarm', 'false_alarm_measured',
         'threshold_source', 'n_train', 'n_threshold', 'feature_dim')


def pre_logit_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``(B, D)`` float32: the pooled features the grade head (and the side head) read."""
    return model.forward_head(model.forward_features(images), pre_logits=True).float()


@torch.no_grad()
def collect_features(model: nn.Module, loader: Iterable, device: torch.device | str,
                     autocast: AbstractContextManager | None = None, desc: str = 'features'
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Features ``(N, D)`` and grade labels ``(N,)`` of every photo of a loader whose batches hold
    ``(images, grades[, sides])``. The model is put in eval mode."""
    model.eval()
    features, labels = [], []
    for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=None):
        images = batch[0].to(device, non_blocking=True)
        with autocast if autocast is not None else nullcontext():
            features.append(pre_logit_features(model, images).cpu())
        labels.append(torch.as_tensor(batch[1]).reshape(-1).cpu())
    if not features:
        return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.int64)
    return torch.cat(features).numpy(), torch.cat(labels).numpy().astype(np.int64)


def _as_features(features: torch.Tensor | np.ndarray) -> np.ndarray:
    array = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    array = array.astype(np.float64, copy=False)
    if array.ndim != 2:
        raise ValueError(f'expected features of shape (N, D), got {array.shape}')
    return array


def _shrunk_precision(centred: np.ndarray) -> np.ndarray:
    """Inverse of the Ledoit-Wolf covariance of already centred rows."""
    from sklearn.covariance import ledoit_wolf

    covariance, _ = ledoit_wolf(centred, assume_centered=True)
    # the shrinkage keeps it positive definite; pinvh also survives a degenerate set (e.g. constant features)
    from scipy.linalg import pinvh
    return pinvh(covariance)


def _distances(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Mahalanobis distance of each row to the nearest of ``means`` under one shared ``precision``."""
    diff = features[:, None, :] - means[None, :, :]                      # (N, K, D)
    squared = np.einsum('nkd,de,nke->nk', diff, precision, diff)
    return np.sqrt(np.clip(squared.min(axis=1), 0.0, None))


def fit_ood(train_features: torch.Tensor | np.ndarray, train_labels: Iterable[int],
            val_features: torch.Tensor | np.ndarray | None = None,
            false_alarm: float = DEFAULT_FALSE_ALARM) -> dict[str, Any]:
    """Statistics of the training photos' features and the flag threshold (see the module docstring).

    ``train_labels`` are the grade indices; grades without photos get no mean. The threshold comes from
    ``val_features`` when given (at least 10 photos), else from the training features."""
    if not 0.0 < false_alarm < 1.0:
        raise ValueError(f'false_alarm must lie in (0, 1), got {false_alarm}')
    train = _as_features(train_features)
    labels = np.asarray(list(train_labels), dtype=np.int64).reshape(-1)
    if len(train) != len(labels):
        raise ValueError(f'{len(train)} feature rows but {len(labels)} labels')
    if len(train) < 2:
        raise ValueError(f'need at least 2 training photos for OOD statistics, got {len(train)}')
    if not np.isfinite(train).all():
        raise ValueError('the training features hold NaN or infinite values')
    grades = np.unique(labels)
    means = np.stack([train[labels == g].mean(axis=0) for g in grades])
    centred = train - means[np.searchsorted(grades, labels)]
    precision = _shrunk_precision(centred)
    reference, source = train, 'training'
    if val_features is not None:
        val = _as_features(val_features)
        if len(val) >= 10 and np.isfinite(val).all():
            reference, source = val, 'validation'
    distances = _distances(reference, means, precision)
    threshold = float(np.quantile(distances, 1.0 - false_alarm))
    if not np.isfinite(threshold) or threshold <= 0:
        raise ValueError(f'degenerate OOD threshold {threshold} (the features do not vary)')
    return {
        'version': OOD_VERSION,
        'method': 'mahalanobis_tied_covariance',
        'means': torch.as_tensor(means, dtype=torch.float32),
        'grades': torch.as_tensor(grades, dtype=torch.int64),
        'precision': torch.as_tensor(precision, dtype=torch.float32),
        'threshold': threshold,
        'false_alarm': float(false_alarm),
        'false_alarm_measured': float(np.mean(distances > threshold)),
        'threshold_source': source,
        'n_train': int(len(train)),
        'n_threshold': int(len(reference)),
        'feature_dim': int(train.shape[1]),
    }


def check_stats(stats: Any) -> dict[str, Any] | None:
    """The stats dict when it is one this version reads, else None (older checkpoints have none)."""
    if not isinstance(stats, dict) or any(key not in stats for key in _KEYS):
        return None
    if int(stats['version']) > OOD_VERSION:
        return None
    return stats


def ood_distance(stats: dict[str, Any], features: torch.Tensor | np.ndarray) -> np.ndarray:
    """Mahalanobis distance ``(N,)`` of each feature row to the nearest training grade mean."""
    array = _as_features(features)
    means = stats['means'].double().numpy() if isinstance(stats['means'], torch.Tensor) else np.asarray(stats['means'])
    precision = (stats['precision'].double().numpy() if isinstance(stats['precision'], torch.Tensor)
                 else np.asarray(stats['precision']))
    if array.shape[1] != means.shape[1]:
        raise ValueError(f'features of width {array.shape[1]} do not fit OOD statistics of width {means.shape[1]}')
    return _distances(array, means.astype(np.float64), precision.astype(np.float64))


def ood_score(stats: dict[str, Any], features: torch.Tensor | np.ndarray) -> np.ndarray:
    """Distance divided by the threshold: 1.0 is the threshold, above it the photo is unlike the training photos."""
    return ood_distance(stats, features) / float(stats['threshold'])


def describe_threshold(stats: dict[str, Any]) -> str:
    """One line: what the flag means and how often it fires on photos like the training ones."""
    measured = 100.0 * float(stats['false_alarm_measured'])
    source = stats['threshold_source']
    text = (f'OOD flag above score 1.0 (Mahalanobis distance {float(stats["threshold"]):.2f} to the nearest grade '
            f'mean of {int(stats["n_train"])} training photos): {measured:.1f}% of the {int(stats["n_threshold"])} '
            f'{source} photos are flagged')
    if source == 'training':
        text += ' (no validation photos: photos of new subjects will be flagged more often than this)'
    return text
