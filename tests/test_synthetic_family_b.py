"""Face family b (shaded 3-D heads): determinism, how the grade shows, the side convention, expressions, the
variation it draws, and that its subjects never merge with family a's."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import synthetic_faces as sf
from _synthetic_checks import crop_asymmetry, files_of, mid_palsy
import synthetic_family_b as fb

SMALL = dict(num_subjects=6, images_per_subject=2, image_size=96, progress=False, family='b')


def test_family_b_is_deterministic_and_named_apart_from_family_a(tmp_path):
    sf.generate_dataset(tmp_path / 'one', seed=3, **SMALL)
    sf.generate_dataset(tmp_path / 'two', seed=3, **SMALL)
    one = files_of(tmp_path / 'one')
    assert one == files_of(tmp_path / 'two')
    table = pd.read_csv(tmp_path / 'one' / 'annotation.csv')
    assert table['subject'].str.fullmatch(r'synb\d{4}').all()
    assert sorted(table.groupby('subject')['grade'].first()) == [0, 1, 2, 3, 4, 5]  # every grade drawn
    for row in table.itertuples():
        assert row.image_path == f'grade_{row.grade}/{row.subject}_{row.image_path[-6:-4]}.jpg'
    points = table[sf.LANDMARK_COLUMNS].to_numpy().reshape(-1, 5, 2)
    assert points.min() > 0 and points.max() < 96
    assert (points[:, 0, 0] < points[:, 1, 0]).all() and (points[:, 3, 0] < points[:, 4, 0]).all()
    assert (points[:, 2, 1] > points[:, 0:2, 1].max(1)).all() and (points[:, 3:5, 1].min(1) > points[:, 2, 1]).all()
    manifest = json.loads((tmp_path / 'one' / 'synthetic_faces.json').read_text())
    assert manifest['family'] == 'b' and manifest['version'] == sf.GENERATOR_VERSION
    assert 'family b' in (tmp_path / 'one' / 'README.md').read_text()
    # the same seed in family a: other people, other names, so a merged table never joins subjects
    family_a = sf.generate_dataset(tmp_path / 'a', seed=3, **{**SMALL, 'family': 'a'})
    assert not set(family_a['subject']) & set(table['subject'])
    assert json.loads((tmp_path / 'a' / 'synthetic_faces.json').read_text())['family'] == 'a'


def test_unknown_family_is_a_user_error(tmp_path):
    from utils import UserError

    with pytest.raises(UserError, match='family'):
        sf.generate_dataset(tmp_path, **{**SMALL, 'family': 'c'})
    assert sf.FACE_FAMILIES == ('a', 'b')


def test_signs_grow_with_the_grade_on_the_affected_side_only():
    identity = fb.sample_identity(np.random.default_rng(2))
    rest = fb.frontal_photo(sf.Expression())
    geos = [fb.face_geometry(identity, mid_palsy(g, 'left'), rest) for g in range(6)]
    aperture = np.array([g.eye_aperture for g in geos])         # (grade, image side)
    corner_y = np.array([g.mouth_corner[:, 1] for g in geos])
    brow_y = np.array([g.brow_outer[:, 1] for g in geos])
    fold = np.array([g.fold for g in geos])
    # patient left = image right (index 1) changes, the image-left side stays as it is
    assert np.all(np.diff(aperture[:, 1]) > 0) and np.ptp(aperture[:, 0]) < 1e-9
    assert np.all(np.diff(corner_y[:, 1]) > 0) and np.ptp(corner_y[:, 0]) < 1e-9
    # the brow falls with the grade until it rests on the upper lid, never rising again
    assert np.all(np.diff(brow_y[:, 1]) >= 0) and np.all(np.diff(brow_y[:3, 1]) > 0)
    assert brow_y[5, 1] - brow_y[0, 1] > 0.04 and np.ptp(brow_y[:, 0]) < 1e-9
    assert np.all(np.diff(fold[:, 1]) < 0) and np.ptp(fold[:, 0]) < 1e-9
    assert aperture[5, 1] > 1.4 * aperture[5, 0]


def test_true_landmarks_of_the_drawn_photo_show_the_mouth_droop_on_the_patient_side():
    identity = fb.sample_identity(np.random.default_rng(4))
    photo = fb.frontal_photo(sf.Expression())
    drops = {}
    for side in ('left', 'right'):
        _, points, _ = sf.render_face(identity, mid_palsy(5, side), photo, 128)
        drops[side] = points[4, 1] - points[3, 1]  # image-right corner below the image-left one: > 0
    _, healthy, _ = sf.render_face(identity, mid_palsy(0), photo, 128)
    assert drops['left'] > 3 and drops['right'] < -3
    assert abs(healthy[4, 1] - healthy[3, 1]) < 1.5


def test_affected_side_moves_less_in_expressions():
    identity = fb.sample_identity(np.random.default_rng(3))
    for grade, healthy_moves in ((0, True), (5, False)):
        palsy = mid_palsy(grade, 'left')
        rest = fb.face_geometry(identity, palsy, fb.frontal_photo(sf.Expression()))
        closed = fb.face_geometry(identity, palsy, fb.frontal_photo(sf.Expression(eye_closure=1.0)))
        assert closed.eye_aperture[0] < 0.3 * rest.eye_aperture[0]  # the healthy (image-left) eye closes
        assert (closed.eye_aperture[1] < 0.3 * rest.eye_aperture[1]) == healthy_moves
        smile = fb.face_geometry(identity, palsy, fb.frontal_photo(sf.Expression(smile=1.0)))
        lift = rest.mouth_corner[:, 1] - smile.mouth_corner[:, 1]
        assert lift[0] > 0.05 and (lift[1] > 0.05) == healthy_moves
        raised = fb.face_geometry(identity, palsy, fb.frontal_photo(sf.Expression(brow_raise=1.0)))
        brow_lift = rest.brow_outer[:, 1] - raised.brow_outer[:, 1]
        assert brow_lift[0] > 0.03 and (brow_lift[1] > 0.03) == healthy_moves


def test_asymmetry_inside_the_network_crops_grows_with_the_grade():
    identities = [fb.sample_identity(np.random.default_rng(20 + i)) for i in range(3)]
    identities = [replace(i, glasses=None, beard='none', fringe=0.0) for i in identities]
    photo = fb.frontal_photo(sf.Expression())
    asymmetry = []
    for grade in (0, 2, 5):
        values = []
        for identity in identities:
            image, landmarks, _ = sf.render_face(identity, mid_palsy(grade), photo, 192)
            values.append(crop_asymmetry(image, landmarks))
        asymmetry.append(np.mean(values))
    assert np.all(np.diff(asymmetry) > 0), asymmetry
    assert asymmetry[-1] > 2 * asymmetry[0], asymmetry


def test_pairs_move_the_healthy_mouth_corner_and_keep_the_sitting(tmp_path):
    rng = np.random.default_rng(8)
    identity, photo = fb.sample_identity(rng), fb.sample_photo(rng)
    pair = sf.render_pair(identity, mid_palsy(5, 'left'), photo, sf.Expression(smile=1.0), 128,
                          noise_rng=np.random.default_rng(1))
    np.testing.assert_allclose(pair.rest_landmarks[:3], pair.expression_landmarks[:3], atol=1e-3)  # same pose
    lift = pair.rest_landmarks[3:, 1] - pair.expression_landmarks[3:, 1]
    assert lift[0] > 1.5 and abs(lift[1]) < 0.3 * lift[0]  # the image-right (patient-left) corner hardly lifts
    table = sf.generate_dataset(tmp_path, seed=2, pairs=True, **SMALL)
    assert set(table['expression']) <= set(sf.PAIR_EXPRESSIONS)
    assert all((tmp_path / p).is_file() for p in table['neutral_path'])


def test_photos_vary_in_pose_light_and_jpeg_quality(tmp_path):
    photos = [fb.sample_photo(np.random.default_rng(i)) for i in range(60)]
    assert np.std([p.yaw for p in photos]) > 4 and np.std([p.pitch for p in photos]) > 2
    assert np.std([p.roll for p in photos]) > 2
    qualities = [p.jpeg_quality for p in photos]
    assert min(qualities) < 55 and max(qualities) > 85 and all(35 <= q <= 95 for q in qualities)
    lights = np.array([p.light for p in photos])
    assert np.ptp(lights[:, 0]) > 0.5 and np.ptp(lights[:, 1]) > 0.5  # light from many directions
    identities = [fb.sample_identity(np.random.default_rng(i)) for i in range(60)]
    assert any(i.glasses is not None for i in identities) and any(i.glasses is None for i in identities)
    assert any(i.beard != 'none' for i in identities) and any(i.fringe > 0 for i in identities)
    lightness = [np.mean(i.skin) for i in identities]
    assert max(lightness) - min(lightness) > 100  # very light to very dark skin
    # the written files carry the per-photo quality: their JPEG quantisation tables differ
    table = sf.generate_dataset(tmp_path, seed=1, **SMALL)
    tables = {tuple(Image.open(tmp_path / p).quantization[0][:8]) for p in table['image_path']}
    assert len(tables) > 3
