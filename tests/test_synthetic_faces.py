"""The synthetic palsy faces: determinism, annotation, how the grade shows, and that MTCNN finds the faces."""
from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

import synthetic_faces as sf
from _synthetic_checks import crop_asymmetry, files_of, mid_palsy
import synthetic_photo
from utils import UserError

SMALL = dict(num_subjects=6, images_per_subject=2, image_size=96, progress=False)
# sha256 over (relative path, bytes) of every file of generate_dataset(seed=3, **SMALL), recorded at generator
# version 2: options added later (pairs, families) must never change the default output.
DEFAULT_OUTPUT_SHA256 = '61d28596b94021968d9d073682dbd14c8336df9a724810ee0e96b701c158be1f'


def test_same_seed_gives_the_same_bytes_and_another_seed_differs(tmp_path):
    sf.generate_dataset(tmp_path / 'a', seed=3, **SMALL)
    sf.generate_dataset(tmp_path / 'b', seed=3, **SMALL)
    sf.generate_dataset(tmp_path / 'c', seed=4, **SMALL)
    a, b, c = (files_of(tmp_path / name) for name in 'abc')
    assert a == b
    assert len(a) == 6 * 2 + 4  # photos + annotation.csv, preview.jpg, manifest, README.md
    photos = [k for k in a if k.endswith('.jpg') and k != 'preview.jpg']
    assert all(a[k] != c.get(k) for k in photos)  # another seed draws other people


def test_annotation_columns_grades_sides_and_landmarks(tmp_path):
    table = sf.generate_dataset(tmp_path, seed=0, **SMALL)
    written = pd.read_csv(tmp_path / 'annotation.csv')
    assert list(written.columns[:4]) == ['image_path', 'grade', 'side', 'subject']
    assert set(sf.LANDMARK_COLUMNS) <= set(written.columns)
    assert len(written) == len(table) == 12
    assert sorted(written.groupby('subject')['grade'].first()) == [0, 1, 2, 3, 4, 5]  # balanced grades
    assert (written.loc[written.grade == 0, 'side'] == 'none').all()
    assert written.loc[written.grade > 0, 'side'].isin(['left', 'right']).all()
    for row in written.itertuples():
        assert row.image_path == f'grade_{row.grade}/{row.subject}_{row.image_path[-6:-4]}.jpg'
        assert (tmp_path / row.image_path).is_file()
    points = written[sf.LANDMARK_COLUMNS].to_numpy().reshape(-1, 5, 2)
    assert points.min() > 0 and points.max() < 96
    assert (points[:, 0, 0] < points[:, 1, 0]).all() and (points[:, 3, 0] < points[:, 4, 0]).all()
    assert (points[:, 2, 1] > points[:, 0, 1]).all() and (points[:, 3, 1] > points[:, 2, 1]).all()
    assert set(written['expression']) <= set(sf.EXPRESSION_PROTOCOL)
    manifest = json.loads((tmp_path / 'synthetic_faces.json').read_text())
    assert manifest['seed'] == 0 and sorted(manifest['files']) == sorted(written['image_path'])
    assert 'grade' in (tmp_path / 'README.md').read_text() and sf.is_synthetic_dataset(tmp_path)


def test_patient_left_palsy_shows_on_the_image_right():
    identity = sf.sample_identity(np.random.default_rng(1))
    geo = sf.face_geometry(identity, mid_palsy(4, 'left'), sf.PhotoConditions())
    assert geo.eye_aperture[1] > geo.eye_aperture[0] + 2
    assert geo.mouth_corner[1, 1] > geo.mouth_corner[0, 1] + 2  # image-right corner lower
    assert geo.fold[1] < geo.fold[0]
    mirrored = sf.face_geometry(identity, mid_palsy(4, 'right'), sf.PhotoConditions())
    assert mirrored.eye_aperture[0] > mirrored.eye_aperture[1] + 2


def test_drawn_signs_grow_with_the_grade():
    identity = sf.sample_identity(np.random.default_rng(2))
    rest = sf.PhotoConditions()
    geos = [sf.face_geometry(identity, mid_palsy(g), rest) for g in range(6)]
    aperture_ratio = [g.eye_aperture[1] / g.eye_aperture[0] for g in geos]
    corner_drop = [g.mouth_corner[1, 1] - g.mouth_corner[0, 1] for g in geos]
    brow_drop = [g.brow_outer[1, 1] - g.brow_outer[0, 1] for g in geos]
    fold = [g.fold[1] for g in geos]
    assert np.all(np.diff(aperture_ratio) > 0.05)
    assert np.all(np.diff(corner_drop) > 1.0)
    assert np.all(np.diff(brow_drop) > 0.5)
    assert np.all(np.diff(fold) < 0)
    assert abs(aperture_ratio[0] - 1) < 0.1 and abs(corner_drop[0]) < 1.5  # grade 0: natural asymmetry only


def test_affected_side_moves_less_in_expressions():
    identity = sf.sample_identity(np.random.default_rng(3))
    closing = sf.PhotoConditions(expression=sf.Expression(eye_closure=1.0))
    smiling = sf.PhotoConditions(expression=sf.Expression(smile=1.0))
    for grade, healthy_closes in ((0, True), (5, False)):
        rest = sf.face_geometry(identity, mid_palsy(grade), sf.PhotoConditions())
        closed = sf.face_geometry(identity, mid_palsy(grade), closing)
        assert closed.eye_aperture[0] < 0.3 * rest.eye_aperture[0]  # the healthy (image-left) eye closes
        assert (closed.eye_aperture[1] < 0.3 * rest.eye_aperture[1]) == healthy_closes
        smile = sf.face_geometry(identity, mid_palsy(grade), smiling)
        lift = rest.mouth_corner[:, 1] - smile.mouth_corner[:, 1]
        assert lift[0] > 4 and (lift[1] > 4) == healthy_closes


def test_asymmetry_inside_the_network_crops_grows_with_the_grade():
    """Averaged over a few subjects at rest, the left/right difference within the 28-pixel crops rises with every
    grade: the signs are where the network looks."""
    identities = [sf.sample_identity(np.random.default_rng(10 + i)) for i in range(4)]
    photo = sf.PhotoConditions()
    asymmetry = []
    for grade in range(6):
        values = []
        for identity in identities:
            image, landmarks, _ = sf.render_face(identity, mid_palsy(grade), photo, 256)
            values.append(crop_asymmetry(image, landmarks))
        asymmetry.append(np.mean(values))
    assert np.all(np.diff(asymmetry) > 0), asymmetry
    assert asymmetry[5] > 2 * asymmetry[0]


def test_render_is_deterministic_and_landmarks_follow_the_pose():
    rng = np.random.default_rng(5)
    identity, palsy = sf.sample_identity(rng), mid_palsy(3)
    centred = sf.PhotoConditions()
    shifted = sf.PhotoConditions(shift=(10.0, -6.0))
    image, points, _ = sf.render_face(identity, palsy, centred, 128)
    again, _, _ = sf.render_face(identity, palsy, centred, 128)
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8
    assert np.array_equal(image, again)
    _, moved, _ = sf.render_face(identity, palsy, shifted, 128)
    np.testing.assert_allclose(moved - points, np.tile([5.0, -3.0], (5, 1)), atol=1e-3)  # 128 / 256 scale


def test_remove_generated_files_keeps_what_a_user_added(tmp_path):
    sf.generate_dataset(tmp_path, seed=1, **SMALL)
    own = tmp_path / 'grade_0' / 'my_note.jpg'
    own.write_bytes(b'not generated')
    assert sf.remove_generated_files(tmp_path) == 12
    assert own.is_file()
    assert not any(p.suffix == '.jpg' and p != own for p in tmp_path.glob('grade_*/*'))


def test_bad_sizes_are_user_errors(tmp_path):
    with pytest.raises(UserError, match='at least one subject'):
        sf.generate_dataset(tmp_path, num_subjects=0, progress=False)
    with pytest.raises(UserError, match='64 pixels'):
        sf.generate_dataset(tmp_path, num_subjects=1, image_size=32, progress=False)
    with pytest.raises(ValueError, match='0-5'):
        sf.sample_palsy(6, np.random.default_rng(0))


def test_mtcnn_finds_at_least_90_percent_of_the_faces(tmp_path):
    table = sf.generate_dataset(tmp_path / 'faces', num_subjects=8, images_per_subject=2, image_size=256, seed=7,
                                progress=False)
    result = sf.check_detection(tmp_path / 'faces', table, cache_dir=tmp_path / 'cache', progress=False)
    assert result['checked'] == 16
    assert result['rate'] >= 0.9, result['missed']
    assert result['near'] >= 0.9 * result['detected']
    assert result['mean_error'] < 0.2


def folder_hash(root) -> str:
    digest = hashlib.sha256()
    for rel, data in files_of(root).items():
        digest.update(rel.encode() + b'\0' + data)
    return digest.hexdigest()


def test_default_output_is_unchanged_by_the_pairs_option(tmp_path):
    sf.generate_dataset(tmp_path, seed=3, **SMALL)
    assert not (tmp_path / sf.REST_FOLDER).exists()
    assert 'neutral_path' not in pd.read_csv(tmp_path / 'annotation.csv').columns
    assert folder_hash(tmp_path) == DEFAULT_OUTPUT_SHA256


def test_pairs_write_rest_photos_outside_the_grade_folders(tmp_path):
    import prepare_dataset
    from annotations import scan_grade_folders

    table = sf.generate_dataset(tmp_path, seed=2, pairs=True, **SMALL)
    written = pd.read_csv(tmp_path / 'annotation.csv')
    assert list(written.columns[:4]) == ['image_path', 'grade', 'side', 'subject']
    assert {'neutral_path', *sf.NEUTRAL_LANDMARK_COLUMNS} <= set(written.columns) and len(written) == len(table) == 12
    assert set(written['expression']) <= set(sf.PAIR_EXPRESSIONS)  # every pair shows a movement
    for row in written.itertuples():
        assert row.neutral_path == f'rest/grade_{row.grade}/{row.image_path[8:-4]}_rest.jpg'
        assert (tmp_path / row.neutral_path).is_file() and (tmp_path / row.image_path).is_file()
    # the grade-folder scans of prepare_dataset.py and the dataset see the expression photos only
    scanned = prepare_dataset.scan_grade_folders(tmp_path)
    assert sorted(scanned['image_path']) == sorted(written['image_path'])
    records, _ = scan_grade_folders(tmp_path, verbose=False)
    assert len(records) == 12 and not any(r.path.endswith('_rest.jpg') for r in records)
    manifest = json.loads((tmp_path / 'synthetic_faces.json').read_text())
    assert manifest['pairs'] is True
    assert sorted(manifest['files']) == sorted([*written['image_path'], *written['neutral_path']])
    assert 'rest/grade_N' in (tmp_path / 'README.md').read_text()
    # same subjects as without pairs
    plain = sf.generate_dataset(tmp_path / 'plain', seed=2, **SMALL)
    per_subject = ['subject', 'grade', 'side', 'severity']
    assert table[per_subject].drop_duplicates().reset_index(drop=True).equals(
        plain[per_subject].drop_duplicates().reset_index(drop=True))
    # regenerating replaces every generated file, rest photos and their folders included
    assert sf.remove_generated_files(tmp_path) == 24
    assert not (tmp_path / sf.REST_FOLDER).exists()


def test_pairs_are_deterministic(tmp_path):
    sf.generate_dataset(tmp_path / 'a', seed=5, pairs=True, **SMALL)
    sf.generate_dataset(tmp_path / 'b', seed=5, pairs=True, **SMALL)
    assert files_of(tmp_path / 'a') == files_of(tmp_path / 'b')


def test_render_pair_keeps_the_sitting_and_moves_only_the_face():
    rng = np.random.default_rng(8)
    identity, palsy = sf.sample_identity(rng), mid_palsy(5, 'left')
    photo = sf.sample_photo(rng)
    pair = sf.render_pair(identity, palsy, photo, sf.Expression(smile=1.0), 128, noise_rng=np.random.default_rng(1))
    again = sf.render_pair(identity, palsy, photo, sf.Expression(smile=1.0), 128, noise_rng=np.random.default_rng(1))
    assert all(np.array_equal(a, b) for a, b in zip(pair, again))
    assert pair.rest.shape == pair.expression.shape == (128, 128, 3)
    np.testing.assert_allclose(pair.rest_landmarks[:3], pair.expression_landmarks[:3], atol=1e-4)  # same pose
    lift = pair.rest_landmarks[3:, 1] - pair.expression_landmarks[3:, 1]
    assert lift[0] > 1.5 and abs(lift[1]) < 0.3 * lift[0]  # the image-right (patient-left) corner hardly lifts
    # no movement at all: the photos differ by their own sensor noise only
    noisy = replace(photo, noise=4.0, blur=0.0)
    still = sf.render_pair(identity, palsy, noisy, noisy.expression, 128, noise_rng=np.random.default_rng(2))
    difference = still.rest.astype(float) - still.expression.astype(float)
    assert 0 < np.abs(difference).mean() < 6 and abs(difference.mean()) < 0.5


def test_pairs_need_the_movement_protocol(tmp_path):
    with pytest.raises(UserError, match='pairs need --expressions protocol'):
        sf.generate_dataset(tmp_path, seed=0, expressions='rest', pairs=True, **SMALL)


def test_landmarks_follow_roll_yaw_and_pitch_onto_the_drawn_pupils():
    """The true eye landmarks sit on the dark pupils whatever the pose: the pixels and the points are moved by the
    same homography."""
    identity = replace(sf.sample_identity(np.random.default_rng(6)), glasses=None, skin=(225.0, 180.0, 150.0))
    frontal = sf.PhotoConditions()
    _, straight, _ = sf.render_face(identity, mid_palsy(2), frontal, 192)
    for pose in (dict(yaw=16.0), dict(yaw=-16.0, pitch=10.0), dict(pitch=-11.0, rotation=12.0)):
        image, points, _ = sf.render_face(identity, mid_palsy(2), sf.PhotoConditions(**pose), 192)
        grey = image.astype(np.float32).mean(axis=2)
        assert not np.allclose(points, straight, atol=1.0), pose
        for x, y in np.round(points[:2]).astype(int):
            assert grey[y - 1:y + 2, x - 1:x + 2].min() < 0.35 * np.median(grey), pose
    turned = sf.render_face(identity, mid_palsy(2), sf.PhotoConditions(yaw=16.0), 192)[1]
    assert np.linalg.norm(turned[1] - turned[0]) < np.linalg.norm(straight[1] - straight[0])  # foreshortened


def test_family_a_varies_widely_over_subjects_and_photos():
    photos = [sf.sample_photo(np.random.default_rng(i)) for i in range(80)]
    assert np.std([p.yaw for p in photos]) > 4 and np.std([p.pitch for p in photos]) > 3
    assert np.std([p.rotation for p in photos]) > 3
    qualities = [p.jpeg_quality for p in photos]
    assert min(qualities) < 50 and max(qualities) > 85
    assert all(synthetic_photo.JPEG_QUALITY_RANGE[0] <= q <= synthetic_photo.JPEG_QUALITY_RANGE[1] for q in qualities)
    assert np.ptp([p.light_strength for p in photos]) > 0.3 and np.ptp([p.blur for p in photos]) > 0.8
    occluded = [p.occluder for p in photos if p.occluder is not None]
    assert 0 < len(occluded) < 0.35 * len(photos)
    identities = [sf.sample_identity(np.random.default_rng(i)) for i in range(80)]
    for has in (lambda i: i.glasses is not None, lambda i: i.beard != 'none', lambda i: i.age > 0.5,
                lambda i: i.hair_style == 'fringe' and i.fringe_depth > 6):
        assert 0 < sum(map(has, identities)) < len(identities)
    lightness = [np.mean(i.skin) for i in identities]
    assert min(lightness) < 80 and max(lightness) > 200  # very dark to very light skin


def test_occluders_rarely_reach_the_eye_and_mouth_corner_crops():
    """An occluder hides part of the face; fewer than one in six of them touches a crop the network reads."""
    landmarks = np.array([[100, 110], [156, 110], [128, 140], [106, 172], [150, 172]], dtype=np.float32)
    half = int(round(2.75 * 62 * 14 / 224))
    blank = np.full((256, 256, 3), 100.0, dtype=np.float32)
    rng = np.random.default_rng(0)
    kinds, touching = set(), 0
    for _ in range(150):
        occluder = synthetic_photo.sample_occluder(rng, probability=1.0)
        kinds.add(occluder.kind)
        changed = np.abs(synthetic_photo.draw_occluder(blank, occluder, landmarks) - blank).max(axis=2) > 8
        assert changed.any()
        touching += any(changed[int(y) - half:int(y) + half, int(x) - half:int(x) + half].any()
                        for x, y in landmarks[[0, 1, 3, 4]])
    assert kinds == set(synthetic_photo.OCCLUDER_KINDS)
    assert touching < 150 / 6, touching
    assert synthetic_photo.sample_occluder(np.random.default_rng(0), probability=0.0) is None
