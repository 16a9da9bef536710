"""demo_inference.py: the predictor's results, batching, folder CSV rows per file, overlays and clear errors."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import demo_inference as demo
import Model
import annotations
import checkpoints
import utils
from facial_palsy_dataset import FaceLandmarks, default_preprocess
from symmetry import MEASUREMENT_NAMES

TINY_MODEL_ARGS = Model.model_args_from(image_size=56, patch_size=7, num_classes=6, dim=16, heads=1,
                                        num_hierarchies=3, block_repeats=[1, 1, 1])
RESULT_KEYS = {'path', 'grade_index', 'grade', 'confidence', 'probabilities', 'face_box', 'landmarks',
               'face_detected', 'landmark_source', 'status', 'error', 'side', 'side_confidence',
               'side_probabilities', 'symmetry', 'ood_score', 'ood_flag'}
CSV_COLUMNS = ['path', 'status', 'grade_index', 'grade', 'confidence', 'p_I', 'p_II', 'p_III', 'p_IV', 'p_V', 'p_VI',
               'face_detected', 'error', *(f'sym_{name}' for name in MEASUREMENT_NAMES),
               'sym_more_affected_image_side', 'ood_score', 'ood_flag', 'tta', 'models']


def save_tiny_checkpoint(path: Path, model_args: dict | None = None, weights_from: dict | None = None) -> Path:
    model_args = dict(model_args or TINY_MODEL_ARGS)
    torch.manual_seed(0)
    model = Model.build_model(weights_from or model_args)
    num_classes = model_args['num_classes']
    return checkpoints.save_checkpoint({'model': model.state_dict(), 'epoch': 1, 'model_args': model_args,
                                  'preprocess': default_preprocess(), 'num_classes': num_classes,
                                  'class_names': annotations.grade_names(num_classes)}, path)


class FixedDetector:
    """Stands in for MTCNN: finds the given face on photos of ``face_shape`` only, and records its calls."""

    def __init__(self, face: FaceLandmarks, face_shape: tuple[int, ...]):
        self.face, self.face_shape, self.calls = face, face_shape, []

    def detect_images(self, images):
        self.calls.append(len(images))
        return [FaceLandmarks(self.face.points.copy(), self.face.box.copy(), 'detected', 0.99)
                if image.shape == self.face_shape else None for image in images]


@pytest.fixture(scope='module')
def photos(synthetic_dataset, tmp_path_factory) -> dict[str, Path]:
    """A folder with a synthetic face, a blank photo, a corrupt JPEG, a text file and a hidden file."""
    folder = tmp_path_factory.mktemp('inference_photos')
    face = sorted(synthetic_dataset.root.glob('grade_*/*.jpg'))[0]
    paths = {'face': folder / 'a_face.jpg', 'blank': folder / 'b_blank.png', 'corrupt': folder / 'c_corrupt.jpg',
             'text': folder / 'd_notes.txt'}
    shutil.copy(face, paths['face'])
    Image.fromarray(np.full((96, 112, 3), 128, dtype=np.uint8)).save(paths['blank'])
    paths['corrupt'].write_bytes(paths['face'].read_bytes()[:300])  # cut short, as by an interrupted copy
    paths['text'].write_text('grading notes, not a photo\n')
    (folder / '.hidden').write_bytes(b'\x00')
    return paths


@pytest.fixture(scope='module')
def predictor(tiny_checkpoint) -> demo.FacialPalsyPredictor:
    return demo.FacialPalsyPredictor(tiny_checkpoint.path, device='cpu')


def test_blank_photo_is_graded_on_template_landmarks(predictor, photos):
    result = predictor.predict(photos['blank'])
    assert set(result) == RESULT_KEYS
    assert result['status'] == 'no_face_fallback' and result['error'] is None
    assert result['face_detected'] is False and result['face_box'] is None
    assert result['landmark_source'] == 'template'
    assert np.asarray(result['landmarks']).shape == (5, 2)
    probabilities = result['probabilities']
    assert list(probabilities) == list(annotations.HB_GRADES)
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert result['grade'] == annotations.HB_GRADES[result['grade_index']]
    assert result['confidence'] == pytest.approx(max(probabilities.values()))
    assert probabilities[result['grade']] == result['confidence']


def test_path_pil_image_and_array_give_the_same_result(predictor, photos):
    from_path = predictor.predict(photos['blank'])
    with Image.open(photos['blank']) as image:
        from_pil = predictor.predict(image)
        from_array = predictor.predict(np.asarray(image.convert('RGB')))
    for other in (from_pil, from_array):
        assert other['path'] is None
        np.testing.assert_allclose(list(other['probabilities'].values()),
                                   list(from_path['probabilities'].values()), atol=1e-6)


def test_batch_gives_the_same_probabilities_as_one_by_one(predictor, photos):
    batch = predictor.predict_batch([photos['face'], photos['blank']])
    singles = [predictor.predict(photos['face']), predictor.predict(photos['blank'])]
    for together, alone in zip(batch, singles):
        assert together['status'] == alone['status']
        np.testing.assert_allclose(list(together['probabilities'].values()),
                                   list(alone['probabilities'].values()), atol=1e-5)


def test_unreadable_photo_does_not_stop_a_batch(predictor, photos):
    corrupt, text, blank = predictor.predict_batch([photos['corrupt'], photos['text'], photos['blank']])
    for result, path in ((corrupt, photos['corrupt']), (text, photos['text'])):
        assert result['status'] == 'unreadable'
        assert result['error'].startswith(str(path))
        assert result['probabilities'] is None and result['grade'] is None
    assert blank['status'] == 'no_face_fallback'


def test_detected_face_is_used_and_detection_is_batched(tiny_checkpoint):
    photo = np.random.default_rng(0).integers(0, 255, (120, 100, 3), dtype=np.uint8)
    face = FaceLandmarks(points=[[35, 50], [65, 50], [50, 65], [38, 85], [62, 85]], box=[20, 25, 80, 100])
    detector = FixedDetector(face, photo.shape)
    predictor = demo.FacialPalsyPredictor(tiny_checkpoint.path, device='cpu', detector=detector)
    found, missed = predictor.predict_batch([photo, np.zeros((90, 90, 3), dtype=np.uint8)])
    assert detector.calls == [2]
    assert found['status'] == 'ok' and found['face_detected'] is True and found['landmark_source'] == 'detected'
    assert found['face_box'] == [20.0, 25.0, 80.0, 100.0]
    np.testing.assert_allclose(found['landmarks'], face.points)
    assert missed['status'] == 'no_face_fallback'


def test_three_class_checkpoint_names_the_simplified_grades(tmp_path):
    model_path = save_tiny_checkpoint(tmp_path / 'three.pth', {**TINY_MODEL_ARGS, 'num_classes': 3})
    detector = FixedDetector(FaceLandmarks(points=np.zeros((5, 2)), box=[0, 0, 1, 1]), (0, 0, 0))
    predictor = demo.FacialPalsyPredictor(model_path, device='cpu', detector=detector)
    result = predictor.predict(np.full((64, 64, 3), 200, dtype=np.uint8))
    assert list(result['probabilities']) == list(annotations.SIMPLIFIED_GRADES)
    assert result['grade'] in annotations.SIMPLIFIED_GRADES
    assert [demo.probability_column(g) for g in predictor.grades] == \
        ['p_normal_I', 'p_mild-moderate_II-III', 'p_severe_IV-VI']


def test_folder_gives_one_row_per_file(tiny_checkpoint, photos, tmp_path, capsys):
    output_csv = tmp_path / 'predictions.csv'
    overlay_dir = tmp_path / 'overlays'
    result = demo.main(['--model_path', str(tiny_checkpoint.path), '--image_dir', str(photos['face'].parent),
                        '--output_csv', str(output_csv), '--overlay_dir', str(overlay_dir), '--device', 'cpu',
                        '--batch_size', '2'])
    table = pd.read_csv(output_csv, keep_default_na=False)
    assert list(table.columns) == CSV_COLUMNS
    assert table['path'].tolist() == [str(photos[k]) for k in ('face', 'blank', 'corrupt', 'text')]
    status = dict(zip(table['path'], table['status']))
    assert status[str(photos['corrupt'])] == 'unreadable' and status[str(photos['text'])] == 'unreadable'
    assert status[str(photos['face'])] in ('ok', 'no_face_fallback')
    assert status[str(photos['blank'])] == 'no_face_fallback'
    unreadable = table[table['status'] == 'unreadable']
    assert (unreadable['error'].str.len() > 0).all() and (unreadable['grade'] == '').all()
    graded = table[table['status'] != 'unreadable']
    probabilities = graded[[c for c in CSV_COLUMNS if c.startswith('p_')]].astype(float).to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    assert sorted(p.name for p in overlay_dir.iterdir()) == ['a_face_prediction.png', 'b_blank_prediction.png']
    assert result['counts']['unreadable'] == 2
    assert 'unreadable 2' in capsys.readouterr().out


def test_single_photo_writes_an_overlay_beside_it(tiny_checkpoint, photos, tmp_path, capsys):
    photo = tmp_path / 'patient.png'
    shutil.copy(photos['blank'], photo)
    before = photo.read_bytes()
    result = demo.main(['--model_path', str(tiny_checkpoint.path), '--image_path', str(photo), '--device', 'cpu'])
    overlay = tmp_path / 'patient_prediction.png'
    assert result['overlay'] == str(overlay)
    with Image.open(overlay) as image:
        assert image.format == 'PNG' and image.size[0] > 400
    assert photo.read_bytes() == before
    out = capsys.readouterr().out
    assert 'HB ' in out and 'no face detected' in out


def test_overlay_never_replaces_the_photo(tiny_checkpoint, photos, tmp_path):
    photo = tmp_path / 'patient.png'
    shutil.copy(photos['blank'], photo)
    with pytest.raises(utils.UserError, match='is the input photo'):
        demo.main(['--model_path', str(tiny_checkpoint.path), '--image_path', str(photo),
                   '--output_path', str(photo), '--device', 'cpu'])


def test_unreadable_single_photo_is_one_clear_line(tiny_checkpoint, photos, capsys):
    with pytest.raises(SystemExit) as exit_info:
        utils.run_cli(demo.main, ['--model_path', str(tiny_checkpoint.path), '--image_path', str(photos['corrupt']),
                                 '--device', 'cpu'])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and str(photos['corrupt']) in message


def test_checkpoint_of_another_shape_is_refused(tmp_path):
    wrong = save_tiny_checkpoint(tmp_path / 'wrong.pth', {**TINY_MODEL_ARGS, 'heads': 2},
                                 weights_from={**TINY_MODEL_ARGS, 'dim': 32})
    with pytest.raises(utils.UserError, match='do not match'):
        demo.FacialPalsyPredictor(wrong, device='cpu')


def test_overlays_of_photos_sharing_a_name_do_not_collide():
    names = demo.folder_overlay_names([Path('a.jpg'), Path('a.png'), Path('b.jpg')])
    assert names == {Path('a.jpg'): 'a_jpg_prediction.png', Path('a.png'): 'a_png_prediction.png',
                     Path('b.jpg'): 'b_prediction.png'}


def test_a_file_the_script_did_not_write_is_never_replaced(tiny_checkpoint, photos, synthetic_dataset, tmp_path,
                                                           capsys):
    """--output_csv pointing at the annotation CSV (or any file of the user's) is refused before any grading and
    left as it was; the script's own earlier predictions are refreshed; --overwrite replaces the user's file."""
    annotation = tmp_path / 'annotation.csv'
    annotation.write_bytes(synthetic_dataset.csv.read_bytes())
    before = hashlib.sha256(annotation.read_bytes()).hexdigest()
    argv = ['--model_path', str(tiny_checkpoint.path), '--image_dir', str(photos['face'].parent), '--device', 'cpu']
    with pytest.raises(SystemExit) as exit_info:
        utils.run_cli(demo.main, [*argv, '--output_csv', str(annotation)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (f'error: {annotation} exists and was not written by this script; choose another --output_csv '
                   f'or pass --overwrite to replace it')
    assert hashlib.sha256(annotation.read_bytes()).hexdigest() == before

    ours = tmp_path / 'predictions.csv'
    demo.main([*argv, '--output_csv', str(ours)])
    demo.main([*argv, '--output_csv', str(ours)])  # an earlier run's CSV: refreshed
    assert 'replacing' in capsys.readouterr().out
    demo.main([*argv, '--output_csv', str(annotation), '--overwrite'])
    assert list(pd.read_csv(annotation).columns[:2]) == ['path', 'status']

    photo = photos['face']
    user_picture = tmp_path / 'mine.png'
    user_picture.write_bytes(photo.read_bytes())
    with pytest.raises(utils.UserError, match='mine.png exists and was not written by this script'):
        demo.main(['--model_path', str(tiny_checkpoint.path), '--image_path', str(photo), '--device', 'cpu',
                   '--output_path', str(user_picture)])
    assert user_picture.read_bytes() == photo.read_bytes()


def test_folder_of_several_photos_per_patient_gets_a_grade_per_patient(tiny_checkpoint, synthetic_dataset, tmp_path,
                                                                       capsys):
    """P001_a.jpg, P001_b.jpg ...: <output_csv>_subjects.csv grades each patient from the mean of their photos."""
    photos = sorted(synthetic_dataset.root.rglob('*.jpg'))[:6]
    folder = tmp_path / 'visit'
    folder.mkdir()
    for k, photo in enumerate(photos):
        shutil.copy(photo, folder / f'P{k // 2 + 1:03d}_{k % 2}.jpg')
    output_csv = tmp_path / 'predictions.csv'
    result = demo.main(['--model_path', str(tiny_checkpoint.path), '--image_dir', str(folder), '--output_csv',
                        str(output_csv), '--device', 'cpu'])
    photo_rows = pd.read_csv(output_csv)
    patients = pd.read_csv(tmp_path / 'predictions_subjects.csv')
    assert patients['subject'].tolist() == ['P001', 'P002', 'P003'] and patients['n_photos'].tolist() == [2, 2, 2]
    columns = [c for c in photo_rows.columns if c.startswith('p_')]
    photo_rows['subject'] = photo_rows['path'].map(lambda p: Path(p).stem.split('_')[0])
    mean = photo_rows.groupby('subject')[columns].mean()
    np.testing.assert_allclose(mean.to_numpy(), patients[columns].to_numpy(), atol=1e-5)
    assert (mean.to_numpy().argmax(axis=1) == patients['grade_index'].to_numpy()).all()
    assert len(result['subjects']) == 3 and 'per patient (3 subjects' in capsys.readouterr().out

    single = tmp_path / 'single'
    single.mkdir()
    shutil.copy(photos[0], single / 'A_0.jpg')
    shutil.copy(photos[1], single / 'B_0.jpg')
    result = demo.main(['--model_path', str(tiny_checkpoint.path), '--image_dir', str(single), '--output_csv',
                        str(tmp_path / 'one.csv'), '--device', 'cpu'])
    assert result['subjects'] is None and not (tmp_path / 'one_subjects.csv').exists()
