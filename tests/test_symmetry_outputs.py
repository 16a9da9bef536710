"""Symmetry measurements, side prediction and ordinal decoding in the outputs of evaluation and inference."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import annotations
import checkpoints
import demo_inference as demo
import evaluate_facial_palsy as evaluate
import inference
import Model
from facial_palsy_dataset import FaceLandmarks, default_preprocess
from symmetry import MEASUREMENT_NAMES, symmetry_measurements

TINY_MODEL_ARGS = Model.model_args_from(image_size=56, patch_size=7, num_classes=6, dim=16, heads=1,
                                        num_hierarchies=3, block_repeats=[1, 1, 1])
SIDE_MODEL_ARGS = {**TINY_MODEL_ARGS, 'num_side_classes': 3}
SYMMETRY_COLUMNS = [*(f'sym_{name}' for name in MEASUREMENT_NAMES), 'sym_more_affected_image_side']
SIDE_COLUMNS = ['predicted_side', 'side_confidence', 'side_p_left', 'side_p_right', 'side_p_none']
# grade probabilities whose most probable grade (I) is not their median (III): 0.4 + 0 < 0.5 <= 0.4 + 0 + 0.3
SPLIT_PROBABILITIES = [0.4, 1e-6, 0.3, 0.3 - 3e-6, 1e-6, 1e-6]
# a face whose image-right mouth corner hangs 0.2 IOD (6 px) below the left one
DROOPING_FACE = FaceLandmarks(points=[[35, 50], [65, 50], [50, 65], [38, 82], [62, 88]], box=[20, 25, 80, 100])


def save_checkpoint(path: Path, model_args: dict, grade_probabilities: list[float] | None = None, **extra) -> Path:
    """A checkpoint in the training format. With ``grade_probabilities`` the grade head ignores the photo and
    always gives those probabilities (zero weights, log-probability biases)."""
    torch.manual_seed(0)
    model = Model.build_model(model_args)
    if grade_probabilities is not None:
        head = model.mlp_head[2]
        with torch.no_grad():
            head.weight.zero_()
            head.bias.copy_(torch.log(torch.tensor(grade_probabilities)))
    state = {'model': model.state_dict(), 'epoch': 1, 'model_args': model_args, 'preprocess': default_preprocess(),
             'class_names': annotations.grade_names(model_args['num_classes']), **extra}
    return checkpoints.save_checkpoint(state, path)


class FixedDetector:
    """Finds ``face`` on photos of ``face_shape`` only (stands in for MTCNN)."""

    def __init__(self, face: FaceLandmarks, face_shape: tuple[int, ...]):
        self.face, self.face_shape = face, face_shape

    def detect_images(self, images):
        return [FaceLandmarks(self.face.points.copy(), self.face.box.copy(), 'detected', 0.99)
                if image.shape == self.face_shape else None for image in images]


def evaluation_args(synthetic_dataset, model_path: Path, output_dir: Path) -> list[str]:
    return ['--model_path', str(model_path), '--data_root', str(synthetic_dataset.root), '--test_csv',
            str(synthetic_dataset.csv), '--dataset_type', 'FNP', '--cache_dir', str(synthetic_dataset.cache_dir),
            '--output_dir', str(output_dir), '--n_boot', '50', '--device', 'cpu', '--batch_size', '8']


@pytest.fixture(scope='module')
def photo() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (120, 100, 3), dtype=np.uint8)


@pytest.fixture(scope='module')
def side_checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp('side') / 'side.pth', SIDE_MODEL_ARGS)


@pytest.fixture(scope='module')
def side_evaluation(synthetic_dataset, side_checkpoint, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp('side_evaluation') / 'results'
    return evaluate.main(evaluation_args(synthetic_dataset, side_checkpoint, output_dir)), output_dir


# ordinal decoding

@pytest.mark.parametrize('rule, expected', [(None, 0), ('ordinal_median', 2)])
def test_predictor_follows_the_checkpoints_prediction_rule(tmp_path, photo, rule, expected):
    extra = {} if rule is None else {'prediction': rule}
    path = save_checkpoint(tmp_path / 'fixed.pth', TINY_MODEL_ARGS, SPLIT_PROBABILITIES, **extra)
    predictor = demo.FacialPalsyPredictor(path, device='cpu', detector=FixedDetector(DROOPING_FACE, photo.shape))
    result = predictor.predict(photo)
    assert result['grade_index'] == expected and result['grade'] == annotations.HB_GRADES[expected]
    np.testing.assert_allclose(list(result['probabilities'].values()), SPLIT_PROBABILITIES, atol=1e-5)
    assert result['confidence'] == pytest.approx(SPLIT_PROBABILITIES[expected], abs=1e-5)


def test_evaluation_scores_the_median_grade_of_an_ordinal_checkpoint(synthetic_dataset, tmp_path):
    path = save_checkpoint(tmp_path / 'ordinal.pth', TINY_MODEL_ARGS, SPLIT_PROBABILITIES,
                           prediction='ordinal_median')
    result = evaluate.main(evaluation_args(synthetic_dataset, path, tmp_path / 'out'))
    table = result['predictions']
    assert (table['pred_label'] == 2).all() and (table[['p_I', 'p_III']].to_numpy().argmax(axis=1) == 0).all()
    assert result['metrics']['prediction'] == 'ordinal_median'
    assert result['metrics']['metrics']['accuracy']['value'] == pytest.approx((table['true_label'] == 2).mean())
    with np.load(tmp_path / 'out' / 'predictions.npz') as data:
        assert (data['predictions'] == 2).all()


# side head

def test_evaluation_with_a_side_head_scores_the_side(side_evaluation, synthetic_dataset):
    result, output_dir = side_evaluation
    table = pd.read_csv(output_dir / 'predictions.csv', keep_default_na=False)
    assert list(table.columns[-len(SIDE_COLUMNS):]) == SIDE_COLUMNS
    assert set(table['predicted_side']) <= set(annotations.SIDE_CLASSES)
    side_p = table[['side_p_left', 'side_p_right', 'side_p_none']].astype(float).to_numpy()
    np.testing.assert_allclose(side_p.sum(axis=1), 1.0, atol=1e-4)
    assert [annotations.SIDE_CLASSES[k] for k in side_p.argmax(axis=1)] == table['predicted_side'].tolist()

    payload = json.loads((output_dir / 'metrics.json').read_text())
    known = table[table['side'].isin(annotations.SIDE_CLASSES)]
    assert len(known) > 0
    entry = payload['side_accuracy']
    assert entry['n'] == len(known)
    assert entry['value'] == pytest.approx((known['side'] == known['predicted_side']).mean())
    assert entry['ci_low'] <= entry['value'] <= entry['ci_high']
    assert payload['side_classes'] == list(annotations.SIDE_CLASSES)
    matrix = np.asarray(payload['side_confusion_matrix'])
    assert matrix.shape == (3, 3) and matrix.sum() == len(known)
    assert np.trace(matrix) == (known['side'] == known['predicted_side']).sum()
    assert set(payload['metrics']) == set(evaluate.M.METRIC_NAMES)  # the grade metrics are unchanged
    assert 'side_accuracy' in (output_dir / 'classification_report.txt').read_text()


def test_evaluation_without_a_side_head_has_no_side_columns(synthetic_dataset, tiny_checkpoint, tmp_path):
    result = evaluate.main(evaluation_args(synthetic_dataset, tiny_checkpoint.path, tmp_path / 'out'))
    assert not set(SIDE_COLUMNS) & set(result['predictions'].columns)
    assert 'side_accuracy' not in result['metrics'] and result['metrics']['prediction'] == 'argmax'


def test_predictor_with_a_side_head_reports_the_side(side_checkpoint, photo, tmp_path, capsys):
    predictor = demo.FacialPalsyPredictor(side_checkpoint, device='cpu',
                                          detector=FixedDetector(DROOPING_FACE, photo.shape))
    result = predictor.predict(photo)
    assert result['side'] in annotations.SIDE_CLASSES
    assert list(result['side_probabilities']) == list(annotations.SIDE_CLASSES)
    assert sum(result['side_probabilities'].values()) == pytest.approx(1.0, abs=1e-5)
    assert result['side_confidence'] == pytest.approx(max(result['side_probabilities'].values()))
    text = demo.format_result(result)
    assert f'affected side: patient {result["side"]}' in text and 'symmetry: asymmetry index' in text


def test_predictor_without_a_side_head_reports_no_side(tiny_checkpoint, photo):
    predictor = demo.FacialPalsyPredictor(tiny_checkpoint.path, device='cpu',
                                          detector=FixedDetector(DROOPING_FACE, photo.shape))
    result = predictor.predict(photo)
    assert result['side'] is None and result['side_confidence'] is None and result['side_probabilities'] is None
    assert 'affected side' not in demo.format_result(result)


def test_folder_csv_has_symmetry_and_side_columns(side_checkpoint, synthetic_dataset, tmp_path):
    folder = tmp_path / 'photos'
    folder.mkdir()
    face = sorted(synthetic_dataset.root.glob('grade_*/*.jpg'))[0]
    (folder / 'a_face.jpg').write_bytes(face.read_bytes())
    Image.fromarray(np.full((80, 80, 3), 128, dtype=np.uint8)).save(folder / 'b_blank.png')
    (folder / 'c_notes.txt').write_text('not a photo\n')
    output_csv = tmp_path / 'predictions.csv'
    demo.main(['--model_path', str(side_checkpoint), '--image_dir', str(folder), '--output_csv', str(output_csv),
               '--device', 'cpu'])
    table = pd.read_csv(output_csv)
    assert list(table.columns) == demo.csv_columns(annotations.HB_GRADES, annotations.SIDE_CLASSES)
    assert set(SYMMETRY_COLUMNS + SIDE_COLUMNS) <= set(table.columns)
    rows = table.set_index(table['path'].map(lambda p: Path(p).name))
    assert rows.loc['b_blank.png', 'status'] == 'no_face_fallback'
    assert rows.loc['b_blank.png', 'sym_more_affected_image_side'] == 'unknown'  # template: not the patient's face
    assert math.isnan(rows.loc['b_blank.png', 'sym_asymmetry_index'])
    assert rows.loc['c_notes.txt', 'status'] == 'unreadable' and pd.isna(rows.loc['c_notes.txt', 'predicted_side'])
    if rows.loc['a_face.jpg', 'status'] == 'ok':
        assert np.isfinite(rows.loc['a_face.jpg', [f'sym_{n}' for n in MEASUREMENT_NAMES]].astype(float)).all()
    assert rows.loc['b_blank.png', 'predicted_side'] in annotations.SIDE_CLASSES


# symmetry measurements

def test_detected_face_gets_the_measurements_of_its_landmarks(tiny_checkpoint, photo):
    predictor = demo.FacialPalsyPredictor(tiny_checkpoint.path, device='cpu',
                                          detector=FixedDetector(DROOPING_FACE, photo.shape))
    found, missed = predictor.predict_batch([photo, np.zeros((90, 90, 3), dtype=np.uint8)])
    expected = symmetry_measurements(DROOPING_FACE.points)
    for name in MEASUREMENT_NAMES:
        assert math.isfinite(found['symmetry'][name]), name
        assert found['symmetry'][name] == pytest.approx(expected[name]), name
    assert found['symmetry']['mouth_corner_height_diff'] == pytest.approx(0.2)
    assert found['symmetry']['more_affected_image_side'] == 'right'
    row = demo.csv_row(found, predictor.grades)
    assert row['sym_mouth_corner_height_diff'] == pytest.approx(0.2)
    assert all(math.isnan(missed['symmetry'][name]) for name in MEASUREMENT_NAMES)
    assert 'no measurements' in demo.format_result(missed)


def test_evaluation_writes_symmetry_per_photo_and_per_grade(side_evaluation):
    result, output_dir = side_evaluation
    table = pd.read_csv(output_dir / 'predictions.csv')
    assert set(SYMMETRY_COLUMNS) <= set(table.columns)
    measured = table[table['landmark_source'] != 'template']
    assert len(measured) > 0
    assert np.isfinite(measured[[f'sym_{n}' for n in MEASUREMENT_NAMES]].to_numpy(dtype=float)).all()
    assert set(measured['sym_more_affected_image_side']) <= {'left', 'right', 'none'}

    by_grade = pd.read_csv(output_dir / 'symmetry_by_grade.csv')
    assert by_grade['true_grade'].tolist() == list(annotations.HB_GRADES)
    assert by_grade['n'].sum() == len(table)
    means = table.groupby('true_label')['sym_asymmetry_index'].mean()
    for label, mean in means.items():
        assert by_grade.loc[by_grade['true_label'] == label, 'sym_asymmetry_index'].item() == pytest.approx(mean)
    with Image.open(output_dir / 'asymmetry_by_grade.png') as image:
        assert image.format == 'PNG' and min(image.size) > 100
    assert {'symmetry_by_grade.csv', 'asymmetry_by_grade.png'} <= set(result['files'])


def test_overlay_draws_the_measurements(side_checkpoint, photo, tmp_path, monkeypatch):
    drawn = []
    original = inference.draw_measurements

    def recording(ax, landmarks, measurements=None, fontsize=7.0):
        drawn.append(measurements)
        return original(ax, landmarks, measurements, fontsize=fontsize)

    monkeypatch.setattr(inference, 'draw_measurements', recording)
    predictor = demo.FacialPalsyPredictor(side_checkpoint, device='cpu',
                                          detector=FixedDetector(DROOPING_FACE, photo.shape))
    result = predictor.predict(photo)
    overlay = predictor.save_overlay(photo, result, tmp_path / 'overlay.png')
    with Image.open(overlay) as image:
        assert image.format == 'PNG' and image.size[0] > 400
    assert len(drawn) == 1 and drawn[0]['asymmetry_index'] == result['symmetry']['asymmetry_index']
