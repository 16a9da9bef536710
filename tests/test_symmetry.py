"""symmetry.py: signs and invariances of the landmark measurements, degenerate input, the drawing, and the
baseline grader (learning, serialisation, errors), with the synthetic faces as a known ground truth."""
from __future__ import annotations

import json
import math
import warnings

import matplotlib.pyplot as plt  # conftest.py selects the Agg back-end
import numpy as np
import pandas as pd
import pytest

import symmetry as S

# a frontal, perfectly symmetric face: IOD 40 px, eyes at y=50, nose on the midline, mouth 30 px wide
SYMMETRIC = np.array([[40.0, 50.0], [80.0, 50.0], [60.0, 75.0], [45.0, 100.0], [75.0, 100.0]])
IOD = 40.0
LEVELLED = ('mouth_corner_height_diff', 'eye_mouth_ratio', 'eye_mouth_log_ratio', 'nose_offset', 'mouth_roll_deg',
            'droop_score', 'asymmetry_index')


def droop(points: np.ndarray, corner: int, amount_iod: float) -> np.ndarray:
    """Lower mouth corner ``corner`` (3 = image left, 4 = image right) by ``amount_iod`` inter-ocular distances."""
    out = points.copy()
    out[corner, 1] += amount_iod * IOD
    return out


def rotate(points: np.ndarray, degrees: float, centre=(60.0, 75.0)) -> np.ndarray:
    """Rotate in image coordinates (y down): positive angles lower the image-right side."""
    t = math.radians(degrees)
    matrix = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    return (points - centre) @ matrix.T + centre


def test_symmetric_face_measures_zero_everywhere():
    m = S.symmetry_measurements(SYMMETRIC)
    for name in S.SIGNED_MEASUREMENTS:
        assert m[name] == pytest.approx(0.0, abs=1e-9), name
    assert m['eye_mouth_ratio'] == pytest.approx(1.0)
    assert m['asymmetry_index'] == pytest.approx(0.0, abs=1e-9)
    assert m['more_affected_image_side'] == 'none'


def test_drooping_image_right_corner_is_positive_and_reads_right():
    m = S.symmetry_measurements(droop(SYMMETRIC, 4, 0.1))
    assert m['mouth_corner_height_diff'] == pytest.approx(0.1)
    assert m['mouth_roll_deg'] > 0
    assert m['eye_mouth_ratio'] < 1 and m['eye_mouth_log_ratio'] < 0   # the right eye-to-corner distance grows
    assert m['droop_score'] > 0
    assert m['eye_line_roll_deg'] == pytest.approx(0.0)
    assert m['more_affected_image_side'] == 'right'
    assert S.patient_side(m['more_affected_image_side']) == 'left'    # frontal photo: image right = patient left
    # the documented scale: a 0.1 IOD droop is about 1 on the asymmetry index
    assert 0.7 < m['asymmetry_index'] < 1.3


def test_drooping_image_left_corner_mirrors_the_signs():
    right = S.symmetry_measurements(droop(SYMMETRIC, 4, 0.08))
    left = S.symmetry_measurements(droop(SYMMETRIC, 3, 0.08))
    assert left['more_affected_image_side'] == 'left'
    for name in ('mouth_corner_height_diff', 'mouth_roll_deg', 'eye_mouth_log_ratio', 'droop_score'):
        assert left[name] == pytest.approx(-right[name]), name
    assert left['asymmetry_index'] == pytest.approx(right['asymmetry_index'])


def test_slight_natural_asymmetry_reads_as_no_side():
    m = S.symmetry_measurements(droop(SYMMETRIC, 4, 0.005))
    assert 0 < m['asymmetry_index'] < S.SIDE_THRESHOLD
    assert m['more_affected_image_side'] == 'none'


def test_asymmetry_index_grows_with_the_droop():
    index = [S.symmetry_measurements(droop(SYMMETRIC, 4, d))['asymmetry_index'] for d in (0, 0.02, 0.05, 0.1, 0.2)]
    assert np.all(np.diff(index) > 0), index


def test_rotation_changes_roll_but_no_levelled_measurement():
    face = droop(SYMMETRIC, 4, 0.07)
    face[2, 0] += 3  # nose off the midline, so nose_offset is not trivially 0
    upright = S.symmetry_measurements(face)
    tilted = S.symmetry_measurements(rotate(face, 20.0))
    assert upright['eye_line_roll_deg'] == pytest.approx(0.0, abs=1e-9)
    assert tilted['eye_line_roll_deg'] == pytest.approx(20.0)              # image-right eye now lower
    assert S.symmetry_measurements(rotate(face, -15.0))['eye_line_roll_deg'] == pytest.approx(-15.0)
    for name in LEVELLED:
        assert tilted[name] == pytest.approx(upright[name], abs=1e-9), name
    assert upright['nose_offset'] == pytest.approx(3 / IOD)
    # without levelling, the image-space corner heights would differ by far more than the droop
    image_height_diff = (rotate(face, 20.0)[4, 1] - rotate(face, 20.0)[3, 1]) / IOD
    assert abs(image_height_diff - upright['mouth_corner_height_diff']) > 0.2


def test_scale_and_translation_invariance():
    face = rotate(droop(SYMMETRIC, 3, 0.06), 7.0)
    small = S.symmetry_measurements(face)
    large = S.symmetry_measurements(face * 3.7 + np.array([512.0, -40.0]))
    for name in S.MEASUREMENT_NAMES:
        assert large[name] == pytest.approx(small[name], abs=1e-9), name
    assert large['more_affected_image_side'] == small['more_affected_image_side'] == 'left'


@pytest.mark.parametrize('points', [
    np.full((5, 2), np.nan),
    np.where(np.arange(10).reshape(5, 2) == 3, np.nan, SYMMETRIC),       # one NaN coordinate
    np.vstack([[60.0, 50.0], [60.0, 50.0], SYMMETRIC[2:]]),               # coincident eyes
    np.vstack([SYMMETRIC[:4], [np.inf, 100.0]]),
])
def test_degenerate_landmarks_give_nan_not_an_exception(points):
    m = S.symmetry_measurements(points)
    assert all(math.isnan(m[name]) for name in S.MEASUREMENT_NAMES)
    assert m['more_affected_image_side'] == 'unknown'


def test_wrong_number_of_landmarks_is_a_clear_error():
    with pytest.raises(ValueError, match='5 landmarks'):
        S.symmetry_measurements(np.zeros((4, 2)))


def test_measurements_table_columns_rows_and_inputs():
    from facial_palsy_dataset import FaceLandmarks

    faces = [SYMMETRIC, droop(SYMMETRIC, 4, 0.1).reshape(-1), None,
             FaceLandmarks(points=droop(SYMMETRIC, 3, 0.1), source='annotation')]
    table = S.measurements_table(faces, index=['a.jpg', 'b.jpg', 'c.jpg', 'd.jpg'])
    assert list(table.columns) == [*S.MEASUREMENT_NAMES, 'more_affected_image_side']
    assert list(table.index) == ['a.jpg', 'b.jpg', 'c.jpg', 'd.jpg']
    assert all(table[name].dtype == np.float64 for name in S.MEASUREMENT_NAMES)
    assert table['more_affected_image_side'].tolist() == ['none', 'right', 'unknown', 'left']
    assert table.loc['c.jpg', list(S.MEASUREMENT_NAMES)].isna().all()
    stacked = S.measurements_table(np.stack([SYMMETRIC, droop(SYMMETRIC, 4, 0.1)]))
    pd.testing.assert_frame_equal(stacked, table.iloc[:2].reset_index(drop=True))


def test_asymmetry_index_and_side_follow_the_synthetic_grades(tmp_path):
    import synthetic_faces as sf

    annotation = sf.generate_dataset(tmp_path, num_subjects=12, images_per_subject=4, image_size=64, seed=0,
                                     progress=False)
    landmarks = annotation[sf.LANDMARK_COLUMNS].to_numpy(np.float64).reshape(-1, 5, 2)
    table = S.measurements_table(landmarks)
    by_grade = table.groupby(annotation['grade'])['asymmetry_index'].mean()
    assert np.all(np.diff(by_grade.to_numpy()) > 0), by_grade.to_dict()
    assert by_grade[0] < 0.15 < 0.7 < by_grade[5]
    patient = table['more_affected_image_side'].map(S.patient_side)
    assert (patient == annotation['side']).mean() >= 0.85


def test_draw_measurements_on_an_image_and_on_an_axis():
    image = np.full((150, 120, 3), 90, dtype=np.uint8)
    face = droop(SYMMETRIC, 4, 0.1)
    ax = S.draw_measurements(image, face)
    try:
        assert len(ax.images) == 1
        assert len(ax.lines) >= 4                           # eye line, mouth parallel, mouth line, midline
        text = ' '.join(t.get_text() for t in ax.texts)
        assert 'asymmetry index' in text and 'image right droops (patient left)' in text
        assert ax.get_xlim() == pytest.approx((-0.5, 119.5))  # lines do not widen the view of the photo
    finally:
        plt.close(ax.figure)
    fig, ax = plt.subplots()
    try:
        ax.imshow(image)
        S.draw_measurements(ax, np.full((5, 2), np.nan))   # a face without landmarks still gets its caption
        assert 'degenerate' in ' '.join(t.get_text() for t in ax.texts)
        assert len(ax.lines) == 0
    finally:
        plt.close(fig)


# baseline

def droop_dataset(count: int, rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
    """Faces whose mouth-corner droop grows with the grade (0.025 IOD per grade, noisy, random side), under random
    roll, scale and position: a monotone relation the baseline must find."""
    faces, grades = [], rng.integers(0, 6, size=count)
    for grade in grades:
        face = droop(SYMMETRIC, int(rng.integers(3, 5)), 0.025 * grade + rng.normal(0, 0.006))
        face = rotate(face, rng.normal(0, 6)) * rng.uniform(0.5, 4) + rng.uniform(0, 300, size=2)
        faces.append(face)
    return faces, grades


@pytest.fixture(scope='module')
def droop_data():
    rng = np.random.default_rng(0)
    return droop_dataset(150, rng), droop_dataset(90, rng)


def test_baseline_learns_a_monotone_droop_to_grade_relation(droop_data):
    (train_x, train_y), (test_x, test_y) = droop_data
    baseline = S.fit_baseline(train_x, train_y, num_classes=6)
    result = S.score_baseline(baseline, {'test': (test_x, test_y)}, num_classes=6)['test']
    assert result['accuracy'] > 0.6          # chance is about 1/6
    assert result['qwk'] > 0.85
    assert result['n'] == 90
    table = S.comparison_table({'test': {'accuracy': 0.5}}, {'test': result})
    assert 'baseline test' in table and f'{result["accuracy"]:.4f}' in table


def test_baseline_that_cannot_be_fitted_is_a_note(capsys):
    assert S.fit_baseline([SYMMETRIC, SYMMETRIC], [2, 2], num_classes=6) is None
    assert 'symmetry baseline not fitted' in capsys.readouterr().out


def test_baseline_round_trips_through_json_with_identical_predictions(droop_data):
    (train_x, train_y), (test_x, _) = droop_data
    baseline = S.SymmetryBaseline(num_classes=6, seed=1).fit(train_x, train_y)
    data = json.loads(json.dumps(baseline.to_dict()))
    restored = S.SymmetryBaseline.from_dict(data)
    assert restored.num_classes == 6 and restored.seed == 1
    np.testing.assert_array_equal(restored.predict_proba(test_x), baseline.predict_proba(test_x))
    np.testing.assert_array_equal(restored.predict(test_x), baseline.predict(test_x))
    # the numpy prediction reproduces scikit-learn's own probabilities
    standard = (S.baseline_features(test_x) - baseline.params['mean']) / baseline.params['scale']
    np.testing.assert_allclose(baseline.predict_proba(test_x), baseline.estimator.predict_proba(standard),
                               atol=1e-9)


def test_baseline_with_missing_grades_and_two_classes():
    rng = np.random.default_rng(3)
    faces, grades = droop_dataset(60, rng)
    keep = np.isin(grades, [0, 5])
    faces = [f for f, k in zip(faces, keep) if k]
    baseline = S.SymmetryBaseline(num_classes=6).fit(faces, grades[keep])
    proba = S.SymmetryBaseline.from_dict(baseline.to_dict()).predict_proba(faces)
    assert proba.shape == (len(faces), 6)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert np.all(proba[:, 1:5] == 0)                      # grades never seen get no probability
    assert (baseline.predict(faces) == grades[keep]).mean() > 0.9


def test_baseline_skips_degenerate_faces_with_a_warning(droop_data):
    (train_x, train_y), _ = droop_data
    faces = [np.full((5, 2), np.nan), *train_x]
    with pytest.warns(UserWarning, match='1 of 151 faces have degenerate landmarks'):
        baseline = S.SymmetryBaseline().fit(faces, [3, *train_y])
    with pytest.warns(UserWarning, match='degenerate'):
        predictions = baseline.predict([None, train_x[0]])
    assert predictions.shape == (2,) and 0 <= predictions[0] < 6


def test_baseline_errors_are_clear():
    with pytest.raises(ValueError, match='at least two grades'):
        S.SymmetryBaseline().fit([SYMMETRIC, SYMMETRIC], [2, 2])
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with pytest.raises(ValueError, match='at least two grades'):
            S.SymmetryBaseline().fit([np.full((5, 2), np.nan)] * 3, [0, 1, 2])
    with pytest.raises(ValueError, match='labels'):
        S.SymmetryBaseline(num_classes=3).fit([SYMMETRIC, SYMMETRIC], [0, 4])
    with pytest.raises(ValueError, match='2 faces but 3 labels'):
        S.SymmetryBaseline().fit([SYMMETRIC, SYMMETRIC], [0, 1, 2])
    with pytest.raises(ValueError, match='not fitted'):
        S.SymmetryBaseline().predict([SYMMETRIC])
    with pytest.raises(ValueError, match='reads logreg'):
        S.SymmetryBaseline.from_dict({'format': 'symmetry_baseline/1', 'model': 'gbm', 'num_classes': 6,
                                      'features': list(S.BASELINE_FEATURES), 'params': {}})
    with pytest.raises(ValueError, match='not a saved symmetry baseline'):
        S.SymmetryBaseline.from_dict({'format': 'something else'})
    with pytest.raises(ValueError, match='incomplete'):
        S.SymmetryBaseline.from_dict({'format': 'symmetry_baseline/1', 'model': 'logreg', 'num_classes': 6,
                                      'features': list(S.BASELINE_FEATURES), 'params': {'mean': [0.0] * 6}})
