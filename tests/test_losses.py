"""losses.py: the ordinal loss against a direct formula, its ordering property, median prediction, side targets,
the multi-task loss with unknown sides, class weights and the criterion factory."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import losses as L
from utils import UserError


def logits_from_probs(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64).clamp_min(1e-12).log()


def reference_ordinal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The textbook form: P(y > k) = 1 - cumsum(softmax)[k], BCE per threshold, mean over thresholds and batch."""
    above = 1 - torch.softmax(logits.double(), dim=1).cumsum(dim=1)[:, :-1]
    thresholds = torch.arange(logits.shape[1] - 1)
    return F.binary_cross_entropy(above.clamp(0, 1), (target[:, None] > thresholds).double(), reduction='none'
                                  ).mean(dim=1).mean()


def test_ordinal_loss_matches_the_cumulative_formula():
    torch.manual_seed(0)
    logits, target = torch.randn(16, 6) * 2, torch.randint(0, 6, (16,))
    assert L.ordinal_loss(logits, target, 6).item() == pytest.approx(reference_ordinal_loss(logits, target).item(),
                                                                     rel=1e-5)


def test_gradients_flow_and_stay_finite_even_for_extreme_logits():
    torch.manual_seed(0)
    for scale in (1.0, 1e4):
        logits = (torch.randn(8, 6) * scale).requires_grad_()
        target = torch.randint(0, 6, (8,))
        loss = L.OrdinalLoss()(logits, target)
        loss.backward()
        assert torch.isfinite(loss) and loss > 0
        assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_one_grade_off_costs_less_than_four_grades_off_unlike_cross_entropy():
    # true grade 0 with 0.3 probability; the other 0.7 sits on grade 1 or on grade 4
    near = logits_from_probs([0.3, 0.7, 0, 0, 0, 0])
    far = logits_from_probs([0.3, 0, 0, 0, 0.7, 0])
    target = torch.tensor([0])
    assert F.cross_entropy(near, target).item() == pytest.approx(F.cross_entropy(far, target).item())
    near_loss, far_loss = L.ordinal_loss(near, target, 6).item(), L.ordinal_loss(far, target, 6).item()
    assert near_loss < far_loss
    assert far_loss == pytest.approx(4 * near_loss, rel=1e-3)   # the wrong mass crosses four thresholds, not one


def test_perfect_logits_give_near_zero_loss_and_confident_wrong_ones_a_large_loss():
    target = torch.arange(6)
    perfect = 30.0 * F.one_hot(target, 6).float()
    assert L.ordinal_loss(perfect, target).item() < 1e-6
    wrong = 30.0 * F.one_hot(5 - target, 6).float()
    assert L.ordinal_loss(wrong, target).item() > 5


def test_label_smoothing_and_ce_weight_raise_the_loss_of_perfect_logits():
    target = torch.arange(6)
    perfect = 30.0 * F.one_hot(target, 6).float()
    assert L.OrdinalLoss(label_smoothing=0.1)(perfect, target).item() > 0.05
    plain, with_ce = L.OrdinalLoss(), L.OrdinalLoss(ce_weight=0.5)
    logits = torch.randn(6, 6)
    expected = plain(logits, target) + 0.5 * F.cross_entropy(logits, target)
    assert with_ce(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)


def test_targets_and_shapes_are_checked():
    with pytest.raises(ValueError, match='0..5'):
        L.ordinal_loss(torch.zeros(2, 6), torch.tensor([0, 6]))
    with pytest.raises(ValueError, match='num_classes is 3'):
        L.ordinal_loss(torch.zeros(2, 6), torch.tensor([0, 1]), num_classes=3)


def test_ordinal_predict_takes_the_median_grade():
    # cumulative 0.3, 0.4, 0.55, 1.0: the median is grade 2 while the argmax is grade 3
    logits = logits_from_probs([0.3, 0.1, 0.15, 0.45], [0.05, 0.9, 0.05, 0.0])
    assert L.ordinal_predict(logits).tolist() == [2, 1]
    assert logits.argmax(dim=1).tolist() == [3, 1]
    assert L.expected_grade(logits).tolist() == pytest.approx([1.75, 1.0])


def test_a_model_trained_with_the_ordinal_loss_ranks_the_grades():
    torch.manual_seed(0)
    grades = torch.randint(0, 6, (240,))
    severity = (grades.float() / 5 + 0.03 * torch.randn(240))[:, None]
    head = nn.Linear(1, 6)
    optimiser = torch.optim.Adam(head.parameters(), lr=0.2)
    criterion = L.build_criterion('ordinal')
    for _ in range(60):
        optimiser.zero_grad()
        criterion(head(severity), grades).backward()
        optimiser.step()
    with torch.no_grad():
        predicted = L.ordinal_predict(head(severity))
    assert (predicted == grades).float().mean() > 0.8
    assert (predicted - grades).abs().max() <= 1


def test_class_weights_weigh_samples_by_their_true_grade():
    torch.manual_seed(0)
    logits, target = torch.randn(4, 6), torch.tensor([0, 1, 1, 4])
    weights = torch.tensor([0.0, 1.0, 1.0, 1.0, 3.0, 1.0])
    per_sample = L.ordinal_loss(logits, target, reduction='none')
    expected = (per_sample * weights[target]).sum() / weights[target].sum()
    weighted = L.build_criterion('ordinal', class_weights=weights)
    assert weighted(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    assert weighted(logits, target).item() != pytest.approx(L.ordinal_loss(logits, target).item(), rel=1e-3)
    # a weight of zero removes grade-0 samples entirely
    changed = logits.clone()
    changed[0] = torch.randn(6) * 5
    assert weighted(changed, target).item() == pytest.approx(weighted(logits, target).item(), rel=1e-6)
    ce = L.build_criterion('ce', class_weights=weights.tolist())
    assert ce(logits, target).item() == pytest.approx(F.cross_entropy(logits, target, weight=weights).item())


def test_class_weights_move_with_the_criterion():
    criterion = L.build_criterion('ordinal', class_weights=[1.0] * 6)
    assert 'class_weights' in dict(criterion.named_buffers())
    with pytest.raises(ValueError, match='6 class weights for 3 grades'):
        criterion(torch.zeros(2, 3), torch.tensor([0, 1]))


def test_build_criterion_choices():
    assert isinstance(L.build_criterion(), nn.CrossEntropyLoss)
    assert L.build_criterion('ce', label_smoothing=0.1).label_smoothing == pytest.approx(0.1)
    assert isinstance(L.build_criterion('ordinal', label_smoothing=0.1), L.OrdinalLoss)
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        L.build_criterion('focal')
    with pytest.raises(ValueError, match='label_smoothing'):
        L.build_criterion('ordinal', label_smoothing=1.0)
    with pytest.raises(ValueError, match='non-negative'):
        L.build_criterion('ce', class_weights=[1.0, -1.0])


def test_side_targets_follow_utils_sides_and_ignore_unknown():
    sides = ['left', 'Right', ' none', 'unknown', None, math.nan, '', 2, -100]
    targets = L.side_targets(sides)
    assert targets.dtype == torch.long
    assert targets.tolist() == [0, 1, 2, -100, -100, -100, -100, 2, -100]
    with pytest.raises(ValueError, match="'middle'"):
        L.side_targets(['left', 'middle'])
    with pytest.raises(ValueError, match='side index 7'):
        L.side_targets([7])


def test_multitask_loss_adds_weighted_side_cross_entropy_over_known_sides():
    torch.manual_seed(0)
    grade_logits = torch.randn(4, 6, requires_grad=True)
    side_logits = torch.randn(4, 3, requires_grad=True)
    grades = torch.tensor([0, 2, 3, 5])
    sides = L.side_targets(['none', 'left', 'unknown', 'right'])
    criterion = L.MultiTaskLoss(nn.CrossEntropyLoss(), side_weight=0.5)
    parts = criterion.components((grade_logits, side_logits), grades, sides)
    known = sides != -100
    expected_side = F.cross_entropy(side_logits[known], sides[known])
    assert parts['side'].item() == pytest.approx(expected_side.item(), rel=1e-6)
    assert parts['total'].item() == pytest.approx((F.cross_entropy(grade_logits, grades) + 0.5 * expected_side).item(),
                                                  rel=1e-6)
    parts['total'].backward()
    assert torch.all(side_logits.grad[2] == 0)          # the unknown side teaches the side head nothing
    assert side_logits.grad[known].abs().sum() > 0 and grade_logits.grad.abs().sum() > 0


def test_multitask_loss_without_sides_is_the_grade_loss():
    torch.manual_seed(0)
    grade_logits, grades = torch.randn(3, 6), torch.tensor([1, 2, 3])
    side_logits = torch.randn(3, 3, requires_grad=True)
    criterion = L.MultiTaskLoss(L.build_criterion('ordinal'), side_weight=0.5)
    grade_only = L.ordinal_loss(grade_logits, grades).item()
    assert criterion(grade_logits, grades).item() == pytest.approx(grade_only)
    assert criterion((grade_logits, None), grades, L.side_targets(['left'] * 3)).item() == pytest.approx(grade_only)
    all_unknown = criterion((grade_logits, side_logits), grades, L.side_targets(['unknown'] * 3))
    assert torch.isfinite(all_unknown) and all_unknown.item() == pytest.approx(grade_only)
    all_unknown.backward()
    assert side_logits.grad is not None and torch.all(side_logits.grad == 0)


def test_prediction_rules_have_one_home():
    logits = torch.tensor([[3.0, 0.0, 2.9], [0.0, 1.0, 0.0]])
    assert L.decode_grades(logits, 'argmax').tolist() == [0, 1]
    assert torch.equal(L.decode_grades(logits, 'ordinal_median'), L.ordinal_predict(logits))
    with pytest.raises(ValueError, match="unknown prediction rule 'mode'"):
        L.decode_grades(logits, 'mode')
    assert [L.prediction_for(loss) for loss in L.CRITERIA] == ['argmax', 'ordinal_median']
    assert set(L.LOSS_PREDICTION.values()) == set(L.PREDICTION_RULES)
    assert L.check_prediction_rule(None, 'm.pth') == 'argmax'
    with pytest.raises(UserError, match="m.pth: unknown prediction rule 'mode'"):
        L.check_prediction_rule('mode', 'm.pth')
