"""input_mode flow: the optical flow between the rest and the expression photo of a pair cut to the rest photo's
face square (zero for a still face, the right sign and size for a known shift, alignment that removes head
movement, less movement on the paralysed side, the network input), and HTNet on synthetic pairs from
prepare_dataset.py --pairs through FacialPalsyDataset to a one-epoch training run."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

import facial_palsy_dataset as fpd
import optical_flow as of
import synthetic_faces as sf
import train_facial_palsy
from _data_images import FLOW_POINTS as POINTS, palsy_pair, textured_photo
from _synthetic_checks import make_pairs_set
from utils import UserError

TINY_MODEL_FLAGS = ('--dim', '16', '--heads', '1', '--block_repeats', '1', '1', '1')


# the flow image of a pair

def face_scale(points: np.ndarray, face_size: int = 224) -> float:
    """Face-square pixels per photo pixel."""
    x0, _, x1, _ = fpd.face_square_bounds(points)
    return face_size / float(x1 - x0)


def test_identical_photos_give_zero_flow():
    rng = np.random.default_rng(3)
    image, points, _ = sf.render_face(sf.sample_identity(rng), sf.Palsy(4, 'left', 0.8), sf.sample_photo(rng), 256,
                                      noise_rng=rng)
    flow_img, face_points = fpd.flow_face(image, image.copy(), points, points)
    assert flow_img.shape == (224, 224, 3) and flow_img.dtype == np.uint8
    assert (flow_img[..., :2] == 128).all() and (flow_img[..., 2] == 0).all()
    motion = fpd.region_motion(flow_img, face_points)
    assert all(motion[name] == 0 for name in ('left_eye', 'left_mouth', 'right_eye', 'right_mouth'))
    assert motion['movement_asymmetry'] == {'eye': 0.0, 'mouth': 0.0}


@pytest.mark.parametrize('dx, dy', [(3, 0), (0, -2), (-2, 1)])
def test_known_shift_gives_flow_of_that_size_and_sign(dx, dy):
    photo = textured_photo()
    moved = cv2.warpAffine(photo, np.float32([[1, 0, dx], [0, 1, dy]]), (256, 256), borderMode=cv2.BORDER_REFLECT)
    flow, strain = of.decode_flow(fpd.flow_image(photo, moved, POINTS))
    inner = (slice(40, -40), slice(40, -40))
    scale = face_scale(POINTS)
    assert np.median(flow[inner][..., 0]) == pytest.approx(dx * scale, abs=0.3)
    assert np.median(flow[inner][..., 1]) == pytest.approx(dy * scale, abs=0.3)
    assert np.median(strain[inner]) < 0.05  # a rigid shift does not deform the skin


def test_alignment_on_eyes_and_nose_removes_head_movement():
    photo = textured_photo(seed=1)
    # the head turns 4 degrees and comes 5 % closer between the shots
    matrix = cv2.getRotationMatrix2D((128.0, 128.0), 4.0, 1.05)
    moved = cv2.warpAffine(photo, matrix, (256, 256), borderMode=cv2.BORDER_REFLECT)
    moved_points = POINTS @ matrix[:, :2].T.astype(np.float32) + matrix[:, 2].astype(np.float32)
    inner = (slice(40, -40), slice(40, -40))
    raw, _ = of.decode_flow(fpd.flow_image(photo, moved, POINTS))
    aligned, _ = of.decode_flow(fpd.flow_image(photo, moved, POINTS, moved_points))
    assert np.median(np.linalg.norm(raw[inner], axis=2)) > 3
    assert np.median(np.linalg.norm(aligned[inner], axis=2)) < 0.2


@pytest.mark.parametrize('side, sign', [('left', 1), ('right', -1)])
def test_paralysed_side_mouth_moves_less_in_a_smile(side, sign):
    """A patient-left palsy (image right) at grade V: the image-right mouth corner hardly follows the smile; at
    grade 0 both corners move alike."""
    smile = sf.Expression(smile=0.9)
    motion = {}
    for grade in (0, 4):
        pair = palsy_pair(grade, side, smile)
        flow_img, face_points = fpd.flow_face(pair.rest, pair.expression, pair.rest_landmarks,
                                              pair.expression_landmarks)
        motion[grade] = fpd.region_motion(flow_img, face_points)
    healthy, affected = ('left_mouth', 'right_mouth') if side == 'left' else ('right_mouth', 'left_mouth')
    assert motion[4][healthy] > 2.0  # pixels of a 224 face square
    assert motion[4][affected] < 0.4 * motion[4][healthy]
    assert sign * motion[4]['movement_asymmetry']['mouth'] > 0.4
    assert abs(motion[0]['movement_asymmetry']['mouth']) < 0.1
    assert motion[0]['left_mouth'] > 2.0 and motion[0]['right_mouth'] > 2.0


def test_flow_is_deterministic_and_uses_the_fixed_scale():
    pair = palsy_pair(5, 'left', sf.Expression(eye_closure=0.9), seed=4)
    first = fpd.flow_image(pair.rest, pair.expression, pair.rest_landmarks, pair.expression_landmarks)
    again = fpd.flow_image(pair.rest, pair.expression, pair.rest_landmarks, pair.expression_landmarks)
    assert np.array_equal(first, again)
    # a larger max_flow halves the encoded deviation from 128: the scale is fixed, not stretched per image
    wide = fpd.flow_image(pair.rest, pair.expression, pair.rest_landmarks, pair.expression_landmarks,
                          settings={'max_flow': 2 * of.FLOW_SETTINGS['max_flow']})
    deviation = np.abs(first[..., :2].astype(int) - 128).max(), np.abs(wide[..., :2].astype(int) - 128).max()
    assert deviation[0] > 20 and deviation[1] == pytest.approx(deviation[0] / 2, abs=1.5)


def test_flow_input_is_the_normalised_mosaic_of_the_flow_image():
    pair = palsy_pair(3, 'right', sf.Expression(smile=0.8), seed=6)
    preprocess = fpd.flow_preprocess(fpd.default_preprocess())
    assert preprocess['input_kind'] == 'flow' and preprocess['flow']['max_flow'] == of.FLOW_SETTINGS['max_flow']
    json.dumps(preprocess)  # storable in a checkpoint as it is
    tensor = fpd.make_flow_input(pair.rest, pair.expression, pair.rest_landmarks, pair.expression_landmarks,
                                 preprocess)
    flow_img, face_points = fpd.flow_face(pair.rest, pair.expression, pair.rest_landmarks, pair.expression_landmarks)
    expected = fpd.to_tensor(fpd.region_mosaic(flow_img, face_points, 28), preprocess)
    assert tensor.shape == (3, 56, 56) and tensor.dtype.is_floating_point
    assert np.array_equal(tensor.numpy(), expected.numpy())
    still = fpd.make_flow_input(pair.rest, pair.rest, pair.rest_landmarks, None, fpd.default_preprocess())
    np.testing.assert_allclose(still[:2].numpy(), (128 / 255 - 0.5) / 0.5, atol=1e-6)
    np.testing.assert_allclose(still[2].numpy(), -1.0)


def test_bad_images_are_user_errors():
    photo = textured_photo(64)
    with pytest.raises(UserError, match='expression photo'):
        fpd.flow_image(photo, np.zeros((5,), np.uint8), POINTS / 4)
    with pytest.raises(UserError, match='NaN'):
        fpd.flow_image(photo, photo, np.full((5, 2), np.nan), POINTS)


def test_registration_absorbs_landmark_jitter():
    """Detected landmarks jitter by a few pixels between two photos; aligning on them alone paints flow over the
    whole face, the image registration that follows removes it again."""
    pair = palsy_pair(5, 'left', sf.Expression(smile=0.9))
    jittered = pair.expression_landmarks + np.array([[3, -2], [-2, 3], [2, 2], [0, 0], [0, 0]], np.float32)
    motion = {}
    for refine in ('ecc', 'none'):
        flow_img, face_points = fpd.flow_face(pair.rest, pair.expression, pair.rest_landmarks, jittered,
                                              settings={'refine': refine})
        motion[refine] = fpd.region_motion(flow_img, face_points)
    assert motion['ecc']['movement_asymmetry']['mouth'] > 0.75
    assert motion['none']['movement_asymmetry']['mouth'] < motion['ecc']['movement_asymmetry']['mouth'] - 0.2
    assert motion['ecc']['right_eye'] < 0.5 < motion['none']['right_eye']


# the flow input mode of the dataset


@dataclass(frozen=True)
class PairData:
    root: Path
    csv: Path
    cache_dir: Path


@pytest.fixture(scope='module')
def pairs(tmp_path_factory) -> PairData:
    """12 synthetic subjects (two per grade) x 1 rest / expression pair at 128 px; MTCNN runs on both photos of
    every pair while preparing, so the landmark cache holds all 24."""
    base = tmp_path_factory.mktemp('flow_pairs')
    root, csv_path, cache_dir = make_pairs_set(base)
    return PairData(root=root, csv=csv_path, cache_dir=cache_dir)


def flow_dataset(data: PairData, csv: Path | None = None, **kwargs) -> fpd.FacialPalsyDataset:
    kwargs.setdefault('cache_dir', data.cache_dir)
    return fpd.FacialPalsyDataset(data.root, csv or data.csv, split='all', input_mode='flow', verbose=False,
                                  **kwargs)


def test_prepared_csv_carries_the_rest_photos_and_their_landmarks(pairs):
    table = pd.read_csv(pairs.csv)
    assert len(table) == 12
    assert table['neutral_path'].str.startswith('rest/grade_').all()
    assert all((pairs.root / p).is_file() for p in table['neutral_path'])
    assert {'neutral_eye_l_x', 'neutral_mouth_r_y'} <= set(table.columns)
    assert table['neutral_eye_l_x'].notna().all()


def test_flow_items_are_normalised_56_pixel_mosaics_of_the_pair(pairs):
    dataset = flow_dataset(pairs)
    assert len(dataset) == 12 and not dataset.skipped
    assert dataset.preprocess['input_mode'] == 'flow' and dataset.preprocess['input_kind'] == 'flow'
    assert dataset.preprocess['flow']['max_flow'] > 0 and dataset.preprocess['input_size'] == 56
    image, label = dataset[0]
    assert image.shape == (3, 56, 56) and image.dtype == torch.float32 and torch.isfinite(image).all()
    assert label == dataset.labels[0]

    # the item is exactly make_flow_input of the two photos with their landmarks, as inference will call it
    rest_face, face = dataset.neutral_landmarks[0], dataset.landmarks[0]
    expected = fpd.make_flow_input(fpd.load_image(dataset.neutral_paths[0]), fpd.load_image(dataset.paths[0]),
                                   rest_face, face, dataset.preprocess)
    assert torch.equal(image, expected)
    assert torch.equal(dataset[0][0], image)  # kept in memory: the same tensor again

    # the movement is in the input: flow of a pair differs from flow of the rest photo onto itself
    rest = fpd.load_image(dataset.neutral_paths[0])
    still = fpd.make_flow_input(rest, rest, rest_face, rest_face, dataset.preprocess)
    assert (image - still).abs().max() > 0.1

    sample = dataset.get_sample(0)
    assert sample['neutral_landmarks'].shape == (5, 2) and sample['neutral_landmark_source'] in fpd.LANDMARK_SOURCES


def test_missing_or_absent_rest_photo_is_skipped_and_listed(pairs, tmp_path):
    table = pd.read_csv(pairs.csv)
    lost, absent = table.loc[0, 'image_path'], table.loc[1, 'image_path']
    table.loc[0, 'neutral_path'] = 'rest/grade_0/nobody_rest.jpg'
    table.loc[1, 'neutral_path'] = np.nan
    csv_path = tmp_path / 'broken.csv'
    table.to_csv(csv_path, index=False)
    dataset = flow_dataset(pairs, csv_path)
    assert len(dataset) == 10
    reasons = dict(dataset.skipped)
    assert 'nobody_rest.jpg: file not found' in reasons[str(pairs.root / lost)]
    assert 'no neutral_path' in reasons[str(pairs.root / absent)]
    listed = pd.read_csv(dataset.skipped_csv)
    assert set(listed['path']) == {str(pairs.root / lost), str(pairs.root / absent)}


def test_a_second_build_reads_both_photos_from_the_cache(pairs, monkeypatch):
    def refuse(self):
        raise AssertionError('MTCNN was built although every photo is cached')

    monkeypatch.setattr(fpd.LandmarkDetector, '_build_mtcnn', refuse)
    detector = fpd.LandmarkDetector(cache_dir=pairs.cache_dir, progress=False)
    dataset = flow_dataset(pairs, detector=detector)
    assert detector.mtcnn_calls == 0 and len(dataset) == 12
    # synthetic faces are found by MTCNN: the cache holds detections for the rest photos too, not fallbacks
    assert sum(face.source == 'detected' for face in dataset.neutral_landmarks) >= 10


def test_rest_landmark_columns_are_the_fallback_when_no_face_is_found(pairs, tmp_path, monkeypatch):
    class Blind:
        def detect(self, batch, landmarks=True):
            none = np.array([None] * len(batch), dtype=object)
            return none, np.array([[None]] * len(batch), dtype=object), none

    monkeypatch.setattr(fpd.LandmarkDetector, '_build_mtcnn', lambda self: Blind())
    dataset = flow_dataset(pairs, cache_dir=tmp_path / 'empty_cache')
    table = pd.read_csv(pairs.csv).set_index('image_path')
    row = table.loc[Path(dataset.paths[0]).relative_to(pairs.root).as_posix()]
    assert dataset.neutral_landmarks[0].source == 'annotation'
    expected = row[fpd.NEUTRAL_LANDMARK_COLUMNS].to_numpy(np.float32).reshape(5, 2)
    np.testing.assert_allclose(dataset.neutral_landmarks[0].points, expected)


def test_flow_takes_no_transform_and_single_photo_inputs_are_refused(pairs):
    def transform(image, landmarks):
        raise AssertionError('a transform was applied to a flow input')

    dataset = flow_dataset(pairs, transform=transform)
    plain = flow_dataset(pairs)
    assert torch.equal(dataset[1][0], plain[1][0])
    preprocess = dataset.preprocess
    with pytest.raises(UserError, match='rest and an expression photo'):
        fpd.make_input(np.zeros((64, 64, 3), np.uint8), fpd.template_landmarks(64, 64), preprocess)
    with pytest.raises(UserError, match='input_mode'):
        fpd.default_preprocess('motion')


def test_one_epoch_of_training_on_flow(pairs, tmp_path):
    save_dir, log_dir = tmp_path / 'checkpoints', tmp_path / 'logs'
    results = train_facial_palsy.main([
        '--input_mode', 'flow', '--data_root', str(pairs.root), '--train_csv', str(pairs.csv),
        '--val_csv', str(pairs.csv), '--cache_dir', str(pairs.cache_dir),
        '--save_dir', str(save_dir), '--log_dir', str(log_dir), '--epochs', '1', '--batch_size', '4',
        '--device', 'cpu', '--augmentation', 'none', '--seed', '0', *TINY_MODEL_FLAGS])
    assert results['epochs_run'] == 1
    assert np.isfinite(results['history'][0]['train_loss'])
    checkpoint = torch.load(save_dir / 'best_model.pth', weights_only=True)
    assert checkpoint['preprocess']['input_mode'] == 'flow'
    assert checkpoint['preprocess']['flow']['method'] == 'farneback'
