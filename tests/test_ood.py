"""ood.py: the out-of-distribution statistics a checkpoint keeps, and the score every graded photo gets."""
import io

import numpy as np
import pytest
import torch

import ood
from Model import build_model, model_args_from


def _clusters(rng, n, shift=0.0, dim=16):
    """Six grade clusters along the diagonal; ``shift`` moves every photo across it (half the features up, half
    down), away from every grade."""
    labels = rng.integers(0, 6, n)
    across = np.where(np.arange(dim) < dim // 2, 1.0, -1.0)
    return rng.normal(size=(n, dim)) + labels[:, None] * 0.8 + shift * across, labels


def test_threshold_flags_the_requested_share_of_validation_photos_and_far_ones():
    rng = np.random.default_rng(0)
    train, labels = _clusters(rng, 400)
    val, _ = _clusters(rng, 200)
    stats = ood.fit_ood(train, labels, val, false_alarm=0.1)
    assert stats['threshold_source'] == 'validation' and stats['n_threshold'] == 200
    assert abs(stats['false_alarm_measured'] - 0.1) < 0.02
    assert abs(np.mean(ood.ood_score(stats, val) > 1.0) - 0.1) < 0.02
    # new photos from the same source: flagged about as often; shifted ones: nearly always
    fresh, _ = _clusters(rng, 400)
    assert np.mean(ood.ood_score(stats, fresh) > 1.0) < 0.2
    far, _ = _clusters(rng, 100, shift=2.0)
    assert np.mean(ood.ood_score(stats, far) > 1.0) > 0.9
    assert '10.0% of the 200 validation photos' in ood.describe_threshold(stats)


def test_distance_is_to_the_nearest_grade_mean():
    train = np.array([[0.0, 0.0], [0.1, 0.0], [-0.1, 0.0], [10.0, 0.0], [10.1, 0.0], [9.9, 0.0]]) + \
        np.array([[0, 0.05], [0, -0.05], [0, 0.0]] * 2)
    stats = ood.fit_ood(train, [0, 0, 0, 1, 1, 1])
    near_each = ood.ood_distance(stats, np.array([[0.0, 0.0], [10.0, 0.0]]))
    between = ood.ood_distance(stats, np.array([[5.0, 0.0]]))
    assert near_each.max() < between.min()
    assert stats['threshold_source'] == 'training' and 'no validation photos' in ood.describe_threshold(stats)


def test_stats_survive_a_weights_only_checkpoint_and_old_ones_read_as_none():
    rng = np.random.default_rng(1)
    train, labels = _clusters(rng, 100)
    stats = ood.fit_ood(train, labels, train[:20])
    buffer = io.BytesIO()
    torch.save({'ood': stats}, buffer)
    buffer.seek(0)
    loaded = ood.check_stats(torch.load(buffer, weights_only=True)['ood'])
    assert loaded is not None
    np.testing.assert_allclose(ood.ood_score(loaded, train[:5]), ood.ood_score(stats, train[:5]), rtol=1e-5)
    assert ood.check_stats(None) is None and ood.check_stats({'threshold': 1.0}) is None


def test_bad_inputs_are_refused_with_a_reason():
    with pytest.raises(ValueError, match='labels'):
        ood.fit_ood(np.zeros((4, 3)), [0, 1])
    with pytest.raises(ValueError, match='NaN'):
        ood.fit_ood(np.full((4, 3), np.nan), [0, 1, 0, 1])
    with pytest.raises(ValueError, match='do not vary'):
        ood.fit_ood(np.zeros((20, 3)), [0] * 20)
    stats = ood.fit_ood(np.random.default_rng(2).normal(size=(30, 3)), [0, 1, 2] * 10)
    with pytest.raises(ValueError, match='width'):
        ood.ood_score(stats, np.zeros((2, 5)))


def test_features_come_from_the_model_the_head_reads():
    torch.manual_seed(0)
    model = build_model(model_args_from(image_size=56, patch_size=7, num_classes=6, dim=8, heads=1,
                                        num_hierarchies=3, block_repeats=(1, 1, 1)))
    images = torch.randn(5, 3, 56, 56)
    loader = [(images[:3], torch.tensor([0, 1, 2])), (images[3:], torch.tensor([3, 4]))]
    features, labels = ood.collect_features(model, loader, 'cpu')
    assert features.shape == (5, 32) and labels.tolist() == [0, 1, 2, 3, 4]
    with torch.no_grad():
        logits = model.mlp_head[2](torch.as_tensor(features))
        np.testing.assert_allclose(logits.numpy(), model(images).numpy(), rtol=1e-4, atol=1e-5)
