"""training_data.py: validation carved from whole training subjects and subject-wise cross-validation folds."""
import pytest

import training_data
from utils import UserError


def test_carved_validation_holds_out_whole_subjects_of_every_grade():
    subjects = [f's{i}' for i in range(12) for _ in range(3)]
    labels = [i % 6 for i in range(12) for _ in range(3)]
    train_idx, val_idx = training_data.carve_validation(labels, subjects, 0.3, seed=0)
    assert sorted(train_idx + val_idx) == list(range(36))
    train_subjects = {subjects[i] for i in train_idx}
    val_subjects = {subjects[i] for i in val_idx}
    assert not train_subjects & val_subjects
    assert {labels[i] for i in val_idx} == set(range(6))  # two subjects per grade: one goes to validation
    assert training_data.carve_validation(labels, subjects, 0.3, seed=0) == (train_idx, val_idx)
    with pytest.raises(UserError, match='cannot be split'):
        training_data.carve_validation([0, 0], ['a', 'a'], 0.5, seed=0)


def test_assign_folds_is_subject_wise_and_stratified():
    subjects = [f's{i:02d}' for i in range(12) for _ in range(2)]
    labels = [i % 3 for i in range(12) for _ in range(2)]
    folds = training_data.assign_folds(labels, subjects, 4, seed=0)
    assert set(folds) == set(subjects) and sorted(set(folds.values())) == [1, 2, 3, 4]
    sizes = [list(folds.values()).count(k) for k in (1, 2, 3, 4)]
    assert max(sizes) - min(sizes) <= 1
    grade_of = {s: int(s[1:]) % 3 for s in folds}
    for grade in range(3):  # four subjects per grade over four folds: one in each
        assert sorted(folds[s] for s in folds if grade_of[s] == grade) == [1, 2, 3, 4]
    loso = training_data.assign_folds(labels, subjects, 'loso', seed=0)
    assert loso == {s: k + 1 for k, s in enumerate(sorted(folds))}
    with pytest.raises(UserError, match='only 12 subjects'):
        training_data.assign_folds(labels, subjects, 13, seed=0)
