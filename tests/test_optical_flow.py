"""Optical flow between rest and expression photos: zero for a still face, the right sign and size for a known
shift, alignment that removes head movement, less movement on the paralysed side, and the network input."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

import optical_flow as of
import synthetic_faces as sf
from facial_palsy_dataset import default_preprocess, face_square_bounds, region_mosaic, to_tensor
from utils import UserError

# five points of a face roughly filling a 256-pixel photo (eyes, nose, mouth corners)
POINTS = np.array([[90, 100], [166, 100], [128, 135], [100, 170], [156, 170]], dtype=np.float32)


def textured_photo(size: int = 256, seed: int = 0) -> np.ndarray:
    """Smooth random texture: every pixel has gradients, so flow is defined everywhere."""
    noise = np.random.default_rng(seed).uniform(0, 255, (size // 4, size // 4)).astype(np.float32)
    grey = np.clip(cv2.GaussianBlur(cv2.resize(noise, (size, size)), (0, 0), 2.0) * 1.5 - 64, 0, 255)
    return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)


def face_scale(points: np.ndarray, image_size: int = 224) -> float:
    """Face-square pixels per photo pixel."""
    x0, _, x1, _ = face_square_bounds(points)
    return image_size / float(x1 - x0)


def palsy_pair(grade: int, side: str, expression: sf.Expression, seed: int = 11) -> sf.PhotoPair:
    rng = np.random.default_rng(seed)
    identity, photo = sf.sample_identity(rng), sf.sample_photo(rng)
    low, high = sf.SEVERITY_RANGE[grade]
    palsy = sf.Palsy(grade, side if grade else 'none', (low + high) / 2)
    return sf.render_pair(identity, palsy, photo, expression, 256, noise_rng=rng)


def test_identical_photos_give_zero_flow():
    rng = np.random.default_rng(3)
    image, points, _ = sf.render_face(sf.sample_identity(rng), sf.Palsy(4, 'left', 0.8), sf.sample_photo(rng), 256,
                                      noise_rng=rng)
    flow_img, face_points = of.flow_face(image, image.copy(), points, points)
    assert flow_img.shape == (224, 224, 3) and flow_img.dtype == np.uint8
    assert (flow_img[..., :2] == 128).all() and (flow_img[..., 2] == 0).all()
    motion = of.region_motion(flow_img, face_points)
    assert all(motion[name] == 0 for name in ('left_eye', 'left_mouth', 'right_eye', 'right_mouth'))
    assert motion['movement_asymmetry'] == {'eye': 0.0, 'mouth': 0.0}


@pytest.mark.parametrize('dx, dy', [(3, 0), (0, -2), (-2, 1)])
def test_known_shift_gives_flow_of_that_size_and_sign(dx, dy):
    photo = textured_photo()
    moved = cv2.warpAffine(photo, np.float32([[1, 0, dx], [0, 1, dy]]), (256, 256), borderMode=cv2.BORDER_REFLECT)
    flow, strain = of.decode_flow(of.flow_image(photo, moved, POINTS))
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
    raw, _ = of.decode_flow(of.flow_image(photo, moved, POINTS))
    aligned, _ = of.decode_flow(of.flow_image(photo, moved, POINTS, moved_points))
    assert np.median(np.linalg.norm(raw[inner], axis=2)) > 3
    assert np.median(np.linalg.norm(aligned[inner], axis=2)) < 0.2


def test_similarity_transform_recovers_rotation_scale_and_shift():
    matrix = cv2.getRotationMatrix2D((40.0, 60.0), -12.0, 0.9)
    matrix[:, 2] += (7.0, -3.0)
    source = POINTS[:3].astype(np.float64)
    target = source @ matrix[:, :2].T + matrix[:, 2]
    np.testing.assert_allclose(of.similarity_transform(source, target), matrix, atol=1e-9)
    with pytest.raises(UserError, match='coincide'):
        of.similarity_transform(np.ones((3, 2)), target)


@pytest.mark.parametrize('side, sign', [('left', 1), ('right', -1)])
def test_paralysed_side_mouth_moves_less_in_a_smile(side, sign):
    """A patient-left palsy (image right) at grade V: the image-right mouth corner hardly follows the smile; at
    grade 0 both corners move alike."""
    smile = sf.Expression(smile=0.9)
    motion = {}
    for grade in (0, 4):
        pair = palsy_pair(grade, side, smile)
        flow_img, face_points = of.flow_face(pair.rest, pair.expression, pair.rest_landmarks,
                                             pair.expression_landmarks)
        motion[grade] = of.region_motion(flow_img, face_points)
    healthy, affected = ('left_mouth', 'right_mouth') if side == 'left' else ('right_mouth', 'left_mouth')
    assert motion[4][healthy] > 2.0  # pixels of a 224 face square
    assert motion[4][affected] < 0.4 * motion[4][healthy]
    assert sign * motion[4]['movement_asymmetry']['mouth'] > 0.4
    assert abs(motion[0]['movement_asymmetry']['mouth']) < 0.1
    assert motion[0]['left_mouth'] > 2.0 and motion[0]['right_mouth'] > 2.0


def test_flow_is_deterministic_and_uses_the_fixed_scale():
    pair = palsy_pair(5, 'left', sf.Expression(eye_closure=0.9), seed=4)
    first = of.flow_image(pair.rest, pair.expression, pair.rest_landmarks, pair.expression_landmarks)
    again = of.flow_image(pair.rest, pair.expression, pair.rest_landmarks, pair.expression_landmarks)
    assert np.array_equal(first, again)
    # a larger max_flow halves the encoded deviation from 128: the scale is fixed, not stretched per image
    wide = of.flow_image(pair.rest, pair.expression, pair.rest_landmarks, pair.expression_landmarks,
                         settings={'max_flow': 2 * of.FLOW_SETTINGS['max_flow']})
    deviation = np.abs(first[..., :2].astype(int) - 128).max(), np.abs(wide[..., :2].astype(int) - 128).max()
    assert deviation[0] > 20 and deviation[1] == pytest.approx(deviation[0] / 2, abs=1.5)


def test_encoding_clips_and_round_trips():
    flow = np.zeros((224, 224, 2), np.float32)
    flow[0, 0] = (100.0, -100.0)
    flow[1, 1] = (2.0, -3.0)
    strain = np.zeros((224, 224), np.float32)
    strain[0, 0] = 50.0
    encoded = of.encode_flow(flow, strain)
    assert tuple(encoded[0, 0]) == (255, 1, 255) and tuple(encoded[5, 5]) == (128, 128, 0)
    decoded, _ = of.decode_flow(encoded)
    np.testing.assert_allclose(decoded[1, 1], (2.0, -3.0), atol=of.FLOW_SETTINGS['max_flow'] / 254 + 1e-6)


def test_flow_input_is_the_normalised_mosaic_of_the_flow_image():
    pair = palsy_pair(3, 'right', sf.Expression(smile=0.8), seed=6)
    preprocess = of.flow_preprocess(default_preprocess())
    assert preprocess['input_kind'] == 'flow' and preprocess['flow']['max_flow'] == of.FLOW_SETTINGS['max_flow']
    json.dumps(preprocess)  # storable in a checkpoint as it is
    tensor = of.flow_input(pair.rest, pair.expression, pair.rest_landmarks, preprocess, pair.expression_landmarks)
    flow_img, face_points = of.flow_face(pair.rest, pair.expression, pair.rest_landmarks, pair.expression_landmarks)
    expected = to_tensor(region_mosaic(flow_img, face_points, 28), preprocess)
    assert tensor.shape == (3, 56, 56) and tensor.dtype.is_floating_point
    assert np.array_equal(tensor.numpy(), expected.numpy())
    still = of.flow_input(pair.rest, pair.rest, pair.rest_landmarks, default_preprocess())
    np.testing.assert_allclose(still[:2].numpy(), (128 / 255 - 0.5) / 0.5, atol=1e-6)
    np.testing.assert_allclose(still[2].numpy(), -1.0)


def test_bad_images_are_user_errors():
    photo = textured_photo(64)
    with pytest.raises(UserError, match='expression photo'):
        of.flow_image(photo, np.zeros((5,), np.uint8), POINTS / 4)
    with pytest.raises(UserError, match='NaN'):
        of.flow_image(photo, photo, np.full((5, 2), np.nan), POINTS)


def test_command_line_writes_flow_panel_and_motion(tmp_path):
    pair = palsy_pair(4, 'left', sf.Expression(smile=0.9))
    rest, smile = tmp_path / 'S1_rest.jpg', tmp_path / 'S1_smile.jpg'
    cv2.imwrite(str(rest), cv2.cvtColor(pair.rest, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(smile), cv2.cvtColor(pair.expression, cv2.COLOR_RGB2BGR))
    out = tmp_path / 'flow'
    argv = ['--rest', str(rest), '--expression', str(smile), '--output_dir', str(out), '--device', 'cpu',
            '--cache_dir', str(tmp_path / 'cache')]
    report = of.main(argv)
    assert {p.name for p in out.iterdir()} == {'flow.png', 'flow_panel.png', 'motion.json'}
    assert cv2.imread(str(out / 'flow_panel.png')).shape == (224, 4 * 224, 3)
    written = json.loads((out / 'motion.json').read_text())
    assert written['movement_asymmetry']['mouth'] == pytest.approx(report['movement_asymmetry']['mouth'])
    assert written['movement_asymmetry']['mouth'] > 0.3  # detected landmarks, same verdict as the true ones
    with pytest.raises(UserError, match='already exists'):
        of.main(argv)
    with pytest.raises(UserError, match='missing.jpg'):
        of.main(['--rest', str(tmp_path / 'missing.jpg'), '--expression', str(smile), '--output_dir',
                 str(tmp_path / 'other')])


def test_registration_absorbs_landmark_jitter():
    """Detected landmarks jitter by a few pixels between two photos; aligning on them alone paints flow over the
    whole face, the image registration that follows removes it again."""
    pair = palsy_pair(5, 'left', sf.Expression(smile=0.9))
    jittered = pair.expression_landmarks + np.array([[3, -2], [-2, 3], [2, 2], [0, 0], [0, 0]], np.float32)
    motion = {}
    for refine in ('ecc', 'none'):
        flow_img, face_points = of.flow_face(pair.rest, pair.expression, pair.rest_landmarks, jittered,
                                             settings={'refine': refine})
        motion[refine] = of.region_motion(flow_img, face_points)
    assert motion['ecc']['movement_asymmetry']['mouth'] > 0.75
    assert motion['none']['movement_asymmetry']['mouth'] < motion['ecc']['movement_asymmetry']['mouth'] - 0.2
    assert motion['ecc']['right_eye'] < 0.5 < motion['none']['right_eye']
