"""The synthetic palsy faces: determinism, annotation, how the grade shows, and that MTCNN finds the faces."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import synthetic_faces as sf
from utils import UserError

SMALL = dict(num_subjects=6, images_per_subject=2, image_size=96, progress=False)


def files_of(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


def mid_palsy(grade: int, side: str = 'left') -> sf.Palsy:
    low, high = sf.SEVERITY_RANGE[grade]
    return sf.Palsy(grade, side if grade else 'none', (low + high) / 2)


def crop_asymmetry(image: np.ndarray, landmarks: np.ndarray) -> float:
    """Mean |left crop - mirrored right crop| over the eye and mouth-corner crops the network reads: 28 pixels of
    a 224 face square, whose side is about 2.75 x the eye-to-mouth distance."""
    grey = image.astype(np.float32).mean(axis=2)
    eyes, mouth = landmarks[[0, 1]].mean(0), landmarks[[3, 4]].mean(0)
    half = int(round(2.75 * np.linalg.norm(mouth - eyes) * 14 / 224))

    def crop(point):
        x, y = np.round(point).astype(int)
        return grey[y - half:y + half, x - half:x + half]

    pairs = ((0, 1), (3, 4))  # eyes, mouth corners: image left vs mirrored image right
    return float(np.mean([np.abs(crop(landmarks[a]) - crop(landmarks[b])[:, ::-1]).mean() for a, b in pairs]))


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
