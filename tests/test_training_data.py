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


# subjects that look wrong stop the run before any split is made

def _args(root, **extra):
    import argparse
    return argparse.Namespace(data_root=str(root), train_csv=None, val_csv=None, test_csv=None, dataset_type='FNP',
                              num_classes=6, preload=False, augmentation='none', val_fraction=0.25, seed=0,
                              **extra)


@pytest.fixture
def camera_photos(tmp_path, monkeypatch):
    """12 photos with camera-counter names in grade folders, read with a stand-in for MTCNN."""
    import facial_palsy_dataset as fpd
    from _data_images import ColourMTCNN, coloured_points_photo, write_rgb

    fake = ColourMTCNN()
    monkeypatch.setattr(fpd.LandmarkDetector, '_build_mtcnn', lambda self: fake)
    for k in range(12):
        write_rgb(tmp_path / 'data' / f'grade_{k % 6}' / f'IMG_{k:04d}.png', coloured_points_photo())
    detector = fpd.LandmarkDetector(cache_dir=tmp_path / 'cache', progress=False)
    return tmp_path / 'data', detector, fpd.default_preprocess()


def test_camera_names_stop_training_with_the_fix(camera_photos):
    root, detector, preprocess = camera_photos
    with pytest.raises(UserError) as err:
        training_data.build_datasets(_args(root), detector, preprocess)
    message = str(err.value)
    assert message == (f'{root}: 12 of 12 photos have camera-counter file names (IMG_0000, IMG_0006, IMG_0001, ...) '
                       f'and their subjects are camera prefixes or dates (IMG), so one patient\'s photos can land in '
                       f'train and test alike; give each photo its patient: {training_data.SUBJECT_FIXES}')
    assert '--one_photo_per_subject' in message and 'subject column' in message
    with pytest.raises(UserError, match='camera-counter file names'):
        training_data.build_cv_pool(_args(root), detector, preprocess)


def test_one_photo_per_subject_makes_each_photo_its_own_subject(camera_photos):
    root, detector, preprocess = camera_photos
    datasets = training_data.build_datasets(_args(root, one_photo_per_subject=True), detector, preprocess)
    train, val = (set(training_data.split_subjects(datasets[name])) for name in ('train', 'val'))
    assert len(train) + len(val) == 12 and not train & val
    assert train | val == {f'IMG_{k:04d}' for k in range(12)}


def test_validation_subjects_refuse_a_subject_metric_without_shared_subjects():
    from types import SimpleNamespace
    shared = SimpleNamespace(subjects=['p1', 'p1', 'p2', 'p2'])
    assert training_data.validation_subjects(shared, 'subject_qwk') == ['p1', 'p1', 'p2', 'p2']
    alone = SimpleNamespace(subjects=['p1', 'p2', 'p3'])
    assert training_data.validation_subjects(alone, 'macro_f1') is None  # photo metrics need no subjects
    with pytest.raises(UserError, match='--select_metric subject_mae grades each validation subject from the mean '
                                        'of its photos, but the 3 validation photos name no subject with two or '
                                        r'more photos \(3 subjects\); choose --select_metric mae'):
        training_data.validation_subjects(alone, 'subject_mae')
