"""facial_palsy_dataset.py: the face square, the region mosaic, the preprocess dict, the datasets (with the landmark
cache seen through them), bad input."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import facial_palsy_dataset as fpd
from _data_images import (POINT_COLOURS, POINTS_200, ColourMTCNN, coloured_points_photo, landmark_columns, read_csv,
                          write_csv, write_rgb)
from utils import UserError

# helpers


@pytest.fixture
def fake_mtcnn(monkeypatch):
    fake = ColourMTCNN()
    monkeypatch.setattr(fpd.LandmarkDetector, '_build_mtcnn', lambda self: fake)
    return fake


def _refuse_mtcnn(self):
    raise AssertionError('MTCNN was built although nothing needed detecting')


@pytest.fixture
def no_mtcnn(monkeypatch):
    """Fails the test if anything builds MTCNN."""
    monkeypatch.setattr(fpd.LandmarkDetector, '_build_mtcnn', _refuse_mtcnn)


def annotated_csv(root: Path, rows: list[dict], name: str = 'annotations.csv') -> Path:
    columns = ['image_path', 'grade', 'side', 'split', 'subject', *fpd.LANDMARK_COLUMNS]
    return write_csv(root / name, rows, columns)


def grade_folders(root: Path, per_grade: int = 1, grades=range(6)) -> Path:
    for grade in grades:
        for k in range(per_grade):
            write_rgb(root / f'grade_{grade}' / f'P{grade}{k}_smile.png', coloured_points_photo())
    return root


def quadrant_colours(image: np.ndarray) -> list[tuple[int, ...]]:
    """Colour at the centre of each quadrant: top-left, top-right, bottom-left, bottom-right."""
    half = image.shape[0] // 2
    return [tuple(int(v) for v in image[y, x]) for y, x in
            [(half // 2, half // 2), (half // 2, half + half // 2), (half + half // 2, half // 2),
             (half + half // 2, half + half // 2)]]


EXPECTED_QUADRANTS = [POINT_COLOURS[0], POINT_COLOURS[3], POINT_COLOURS[1], POINT_COLOURS[4]]


# geometry

def test_region_mosaic_puts_each_region_in_its_quadrant_unmirrored():
    face = coloured_points_photo(POINTS_200, radius=10)
    face[:, :, 1] = np.arange(200, dtype=np.uint8)[None, :]  # green grows left to right
    mosaic = fpd.region_mosaic(face, POINTS_200, region_size=20)

    assert mosaic.shape == (40, 40, 3) and mosaic.dtype == np.uint8
    assert [c[0::2] for c in quadrant_colours(mosaic)] == [c[0::2] for c in EXPECTED_QUADRANTS]
    assert mosaic[0, 19, 1] > mosaic[0, 0, 1]  # still increasing to the right inside a crop: not mirrored
    boxes = fpd.region_boxes(face, POINTS_200, 20)
    assert boxes.shape == (4, 4)
    assert np.array_equal(mosaic[:20, :20], face[int(boxes[0, 1]):int(boxes[0, 3]), int(boxes[0, 0]):int(boxes[0, 2])])


def test_region_crops_are_clamped_inside_the_image():
    points = np.array([[0, 0], [199, 0], [100, 100], [0, 199], [199, 199]], dtype=np.float32)
    boxes = fpd.region_boxes((200, 200), points, 28)
    assert boxes.min() >= 0 and boxes.max() <= 200
    assert np.all(boxes[:, 2] - boxes[:, 0] == 28) and np.all(boxes[:, 3] - boxes[:, 1] == 28)
    assert fpd.region_mosaic(np.zeros((200, 200, 3), np.uint8), points, 28).shape == (56, 56, 3)


def test_face_square_follows_the_box_and_moves_landmarks_along():
    photo = np.zeros((300, 400, 3), np.uint8)
    photo[100:200, 150:250] = 255  # the "face"
    box = np.array([150, 100, 250, 200], np.float32)
    points = np.array([[175, 130], [225, 130], [200, 150], [180, 175], [220, 175]], np.float32)

    face, face_points = fpd.face_square(photo, points, box, face_size=110, margin=0.1)

    assert face.shape == (110, 110, 3)
    assert face[55, 55].min() == 255 and face[2, 2].max() == 0  # white face centred, black margin
    assert np.allclose(face_points, (points - [145, 95]), atol=0.6)  # side 110 -> scale 1
    # a box hanging over the photo edge is padded, not shifted
    edge_face, edge_points = fpd.face_square(photo, points - [150, 100], box - [150, 100] * 2, face_size=110)
    assert edge_face.shape == (110, 110, 3) and np.allclose(edge_points, face_points, atol=0.6)


def test_face_mode_rotates_the_eyes_level():
    face = np.full((200, 200, 3), 128, np.uint8)
    points = POINTS_200.copy()
    angle = np.radians(15)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], np.float32)
    points = (points - 100) @ rotation.T + 100  # a tilted face
    for (x, y), colour in zip(points.round().astype(int), POINT_COLOURS):
        cv2.circle(face, (int(x), int(y)), 5, colour, -1)

    aligned, aligned_points = fpd.aligned_face(face, points, 56)

    assert aligned.shape == (56, 56, 3)
    assert aligned_points[0, 1] == pytest.approx(aligned_points[1, 1], abs=0.01)
    assert aligned_points[0, 0] < aligned_points[1, 0]  # left eye still on the left: rotated, not mirrored
    for point, colour in zip(aligned_points[[0, 1]], POINT_COLOURS[:2]):
        x, y = point.round().astype(int)
        assert np.abs(aligned[y, x].astype(int) - colour).max() < 60


def test_make_input_shapes_modes_and_normalisation():
    photo = coloured_points_photo()
    for mode in fpd.PHOTO_INPUT_MODES:  # flow reads pairs: tests/test_flow_input.py
        preprocess = fpd.default_preprocess(mode, image_size=112, region_size=14)
        tensor = fpd.make_input(photo, POINTS_200, preprocess)
        assert fpd.model_input_size(preprocess) == 28
        assert tensor.shape == (3, 28, 28) and tensor.dtype == torch.float32
        assert tensor.min() >= -1 and tensor.max() <= 1 and torch.isfinite(tensor).all()
        assert np.abs(fpd.to_image(tensor, preprocess).astype(int)
                      - fpd.network_image(photo, POINTS_200, preprocess)).max() <= 1
    assert fpd.model_input_size(fpd.default_preprocess()) == 56
    with pytest.raises(UserError, match='input_mode'):
        fpd.default_preprocess('mirror')


def test_region_boxes_in_photo_pixels_surround_the_landmarks():
    preprocess = fpd.default_preprocess(image_size=224, region_size=28)
    photo = np.zeros((600, 500, 3), np.uint8)
    points = POINTS_200 * 2
    boxes = fpd.region_boxes(photo, points, preprocess)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    assert np.allclose(centres, points[[0, 3, 1, 4]], atol=3)


# the landmark cache through the dataset

def test_second_build_reads_the_cache_without_mtcnn(tmp_path, monkeypatch, fake_mtcnn):
    root = grade_folders(tmp_path / 'data', per_grade=2)
    cache = tmp_path / 'cache'
    first = fpd.FacialPalsyDataset(root, split='all', cache_dir=cache, verbose=False)
    assert first.landmark_counts == {'detected': 12, 'annotation': 0, 'template': 0}
    assert sum(shape[0] for shape in fake_mtcnn.batches) == 12

    monkeypatch.setattr(fpd.LandmarkDetector, '_build_mtcnn', _refuse_mtcnn)
    second = fpd.FacialPalsyDataset(root, split='all', cache_dir=cache, verbose=False)
    assert second.landmark_counts == first.landmark_counts
    assert all(np.array_equal(a.points, b.points) for a, b in zip(first.landmarks, second.landmarks))

    # an edited photo (new size / mtime) is detected again, alone
    fake = ColourMTCNN()
    monkeypatch.setattr(fpd.LandmarkDetector, '_build_mtcnn', lambda self: fake)
    edited = Path(second.paths[0])
    write_rgb(edited, coloured_points_photo(POINTS_200 + 5, size=(210, 210)))
    third = fpd.FacialPalsyDataset(root, split='all', cache_dir=cache, verbose=False)
    assert sum(shape[0] for shape in fake.batches) == 1
    assert np.allclose(third.landmarks[third.paths.index(str(edited))].points, POINTS_200 + 5.5)
    # other detector settings do not reuse entries made with these
    fpd.LandmarkDetector(cache_dir=cache, progress=False, min_face_size=40).detect_paths([edited])
    assert sum(shape[0] for shape in fake.batches) == 2


# datasets

def test_annotated_points_land_in_their_quadrants_through_the_dataset(tmp_path, capsys):
    """End to end with the real MTCNN: a grey photo holds no face, so the annotation's points are used."""
    write_rgb(tmp_path / 'img' / 'S01_rest.png', coloured_points_photo(radius=12))
    rows = [{'image_path': 'img/S01_rest.png', 'grade': 3, 'side': 'left', 'split': 'train',
             **landmark_columns(POINTS_200)}]
    csv_file = annotated_csv(tmp_path, rows)

    dataset = fpd.FacialPalsyDataset(tmp_path, csv_file, split='train', image_size=112, region_size=14,
                                     cache_dir=tmp_path / 'cache')

    sample = dataset.get_sample(0)
    assert sample['landmark_source'] == 'annotation' and sample['box'] is None
    assert (sample['label'], sample['grade'], sample['side'], sample['subject']) == (3, 3, 'left', 'S01')
    mosaic = fpd.to_image(sample['image'], dataset.preprocess)
    assert mosaic.shape == (28, 28, 3)
    for found, expected in zip(quadrant_colours(mosaic), EXPECTED_QUADRANTS):
        assert np.abs(np.array(found) - expected).max() <= 2
    assert 'faces not detected: 1' in capsys.readouterr().out


def test_folder_layout_without_csv_gives_tensor_label_items(tmp_path, fake_mtcnn):
    root = grade_folders(tmp_path / 'data')
    (root / 'grade_2' / 'notes.txt').write_text('not an image')
    dataset = fpd.FacialPalsyDataset(root, split=None, cache_dir=tmp_path / 'cache', verbose=False)

    assert len(dataset) == 6 and dataset.labels == [0, 1, 2, 3, 4, 5]
    assert dataset.subjects == ['P00', 'P10', 'P20', 'P30', 'P40', 'P50']
    assert dataset.sides[0] == 'none' and dataset.class_names == [f'HB {g}' for g in 'I II III IV V VI'.split()]
    image, label = dataset[4]
    assert image.shape == (3, 56, 56) and image.dtype == torch.float32 and label == 4
    loader = torch.utils.data.DataLoader(dataset, batch_size=3)
    images, labels = next(iter(loader))
    assert images.shape == (3, 3, 56, 56) and labels.tolist() == [0, 1, 2]


def test_folder_layout_with_split_folders(tmp_path, fake_mtcnn):
    grade_folders(tmp_path / 'data' / 'train', grades=[0, 1])
    grade_folders(tmp_path / 'data' / 'val', grades=[4])
    kwargs = dict(cache_dir=tmp_path / 'cache', verbose=False)
    assert fpd.FacialPalsyDataset(tmp_path / 'data', split='val', **kwargs).labels == [4]
    assert len(fpd.FacialPalsyDataset(tmp_path / 'data', split='all', **kwargs)) == 3
    with pytest.raises(UserError, match='no test/ folder'):
        fpd.FacialPalsyDataset(tmp_path / 'data', split='test', **kwargs)
    with pytest.raises(UserError, match='no annotation CSV given and no grade_0'):
        fpd.FacialPalsyDataset(tmp_path / 'data' / 'train' / 'grade_0', **kwargs)


def test_three_classes_map_house_brackmann_grades(tmp_path, fake_mtcnn):
    root = grade_folders(tmp_path / 'data')
    dataset = fpd.FacialPalsyDataset(root, split='all', num_classes=3, cache_dir=tmp_path / 'cache', verbose=False)
    assert dataset.grades == [0, 1, 2, 3, 4, 5]
    assert dataset.labels == [0, 1, 1, 2, 2, 2] and dataset.num_classes == 3 and len(dataset.class_names) == 3
    assert [dataset[i][1] for i in range(6)] == [0, 1, 1, 2, 2, 2]
    with pytest.raises(UserError, match='num_classes'):
        fpd.FacialPalsyDataset(root, split='all', num_classes=4, cache_dir=tmp_path / 'cache', verbose=False)


def _ckplus_tree(root: Path, nested: bool) -> Path:
    images = root / 'cohn-kanade-images' if nested else root
    for subject, sequences in {'S005': ['001'], 'S010': ['002', '004'], 'S011': ['001']}.items():
        for sequence in sequences:
            for frame in (1, 2, 3):
                name = f'{subject}_{sequence}_{frame:08d}.png'
                write_rgb(images / subject / sequence / name, coloured_points_photo(POINTS_200 + frame))
    return root


@pytest.mark.parametrize('nested', [True, False], ids=['cohn-kanade-images', 'subjects-at-root'])
def test_ckplus_layout_with_grade_mapping(tmp_path, fake_mtcnn, nested):
    root = _ckplus_tree(tmp_path / 'ck', nested)
    mapping = write_csv(tmp_path / 'ck_mapping.csv', [
        {'subject': 'S005', 'sequence': '', 'grade': 2, 'side': 'right'},
        {'subject': 'S10', 'sequence': '', 'grade': 4, 'side': 'left'},
        {'subject': '', 'sequence': 'S010/004', 'grade': 0, 'side': 'none'},  # a sequence row wins
    ])
    # a peak frame MTCNN misses, with the release's 68-point landmarks: its five points come from them
    write_rgb(next((root / 'cohn-kanade-images' if nested else root).glob('S010/004/*3.png')),
              np.full((200, 200, 3), 128, np.uint8))
    aam = np.zeros((68, 2), np.float32)
    aam[36:42], aam[42:48], aam[30], aam[48], aam[54] = (60, 70), (140, 72), (100, 110), (75, 150), (125, 152)
    (root / 'Landmarks' / 'S010' / '004').mkdir(parents=True)
    np.savetxt(root / 'Landmarks' / 'S010' / '004' / 'S010_004_00000003_landmarks.txt', aam, fmt='%.7e')

    dataset = fpd.CKPlusFacialPalsyDataset(root, mapping, split='all', cache_dir=tmp_path / 'cache', verbose=False)

    assert [Path(p).name for p in dataset.paths] == ['S005_001_00000003.png', 'S010_002_00000003.png',
                                                     'S010_004_00000003.png']  # peak = last frame
    assert [Path(p).name for p in dataset.neutral_paths] == ['S005_001_00000001.png', 'S010_002_00000001.png',
                                                             'S010_004_00000001.png']
    assert dataset.labels == [2, 4, 0] and dataset.sides == ['right', 'left', 'none']
    assert dataset.subjects == ['S005', 'S010', 'S010']
    assert np.allclose(dataset.landmarks[0].points, POINTS_200 + 3.5)
    assert dataset.landmarks[2].source == 'annotation'
    assert np.allclose(dataset.landmarks[2].points, [(60, 70), (140, 72), (100, 110), (75, 150), (125, 152)])
    assert any('S011/001' in reason for _, reason in dataset.skipped)  # no grade for it: listed, not guessed
    assert dataset[0][0].shape == (3, 56, 56)
    # the generic class reads the same layout when told the dataset type
    same = fpd.FacialPalsyDataset(root, mapping, dataset_type='CK+', split='all', cache_dir=tmp_path / 'cache',
                                  verbose=False)
    assert same.paths == dataset.paths and same.labels == dataset.labels


def test_ckplus_without_mapping_refuses(tmp_path, no_mtcnn):
    root = _ckplus_tree(tmp_path / 'ck', nested=True)
    with pytest.raises(UserError, match='carry no palsy grades'):
        fpd.CKPlusFacialPalsyDataset(root, cache_dir=tmp_path / 'cache', verbose=False)
    with pytest.raises(UserError, match='carry no palsy grades'):
        fpd.FacialPalsyDataset(root, dataset_type='CK+', cache_dir=tmp_path / 'cache', verbose=False)
    bad = write_csv(tmp_path / 'bad_mapping.csv', [{'subject': 'S005', 'side': 'left'}])
    with pytest.raises(UserError, match=r'bad_mapping.csv.*grade'):
        fpd.CKPlusFacialPalsyDataset(root, bad, cache_dir=tmp_path / 'cache', verbose=False)


# bad input

def test_csv_missing_columns_names_csv_and_columns(tmp_path, no_mtcnn):
    csv_file = write_csv(tmp_path / 'labels.csv', [{'image_path': 'a.png', 'grade': 1}])
    with pytest.raises(UserError, match=r'labels\.csv.*side, split'):
        fpd.FacialPalsyDataset(tmp_path, csv_file, cache_dir=tmp_path / 'cache', verbose=False)
    (tmp_path / 'garbage.csv').write_bytes(b'\xff\xfe\x00\x81binary\x00')
    with pytest.raises(UserError, match='garbage.csv'):
        fpd.FacialPalsyDataset(tmp_path, tmp_path / 'garbage.csv', cache_dir=tmp_path / 'cache', verbose=False)
    with pytest.raises(UserError, match='nowhere.csv'):
        fpd.FacialPalsyDataset(tmp_path, tmp_path / 'nowhere.csv', cache_dir=tmp_path / 'cache', verbose=False)


def test_empty_split_names_csv_and_split(tmp_path, no_mtcnn):
    write_rgb(tmp_path / 'a.png', coloured_points_photo())
    csv_file = annotated_csv(tmp_path, [{'image_path': 'a.png', 'grade': 1, 'side': 'left', 'split': 'train'}])
    with pytest.raises(UserError, match=r'annotations\.csv: no rows with split "test"'):
        fpd.FacialPalsyDataset(tmp_path, csv_file, split='test', cache_dir=tmp_path / 'cache', verbose=False)


def test_bad_rows_and_unusable_images_are_skipped_and_listed(tmp_path, fake_mtcnn):
    photo = coloured_points_photo()
    write_rgb(tmp_path / 'ok.png', photo)
    write_rgb(tmp_path / 'big.png', cv2.resize(coloured_points_photo(radius=10), (2400, 2400),
                                                interpolation=cv2.INTER_NEAREST))
    write_rgb(tmp_path / 'photo.jpg', photo)
    Image.fromarray(photo[:, :, 0]).save(tmp_path / 'grey.png')
    Image.fromarray(np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)]), 'RGBA').save(tmp_path / 'rgba.png')
    cv2.imwrite(str(tmp_path / 'deep.png'), photo[:, :, ::-1].astype(np.uint16) * 257)
    (tmp_path / 'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n not really')
    jpeg = (tmp_path / 'photo.jpg').read_bytes()
    (tmp_path / 'cut.jpg').write_bytes(jpeg[:len(jpeg) // 3])
    rows = [{'image_path': name, 'grade': 2, 'side': 'right', 'split': 'train'}
            for name in ['ok.png', 'big.png', 'grey.png', 'rgba.png', 'deep.png', 'corrupt.png', 'cut.jpg',
                         'missing.png']]
    rows += [{'image_path': 'ok.png', 'grade': 'III', 'side': 'left', 'split': 'train'},   # row 10
             {'image_path': 'ok.png', 'grade': 7, 'side': 'left', 'split': 'train'},       # row 11
             {'image_path': 'photo.jpg', 'grade': 1, 'side': 'left', 'split': 'val'}]
    csv_file = annotated_csv(tmp_path, rows)
    cache = tmp_path / 'cache'
    val = fpd.FacialPalsyDataset(tmp_path, csv_file, split='val', cache_dir=cache, verbose=False)

    train = fpd.FacialPalsyDataset(tmp_path, csv_file, split='train', cache_dir=cache, verbose=False)

    kept = [Path(p).name for p in train.paths]
    assert kept == ['ok.png', 'big.png', 'grey.png', 'rgba.png', 'deep.png']  # converted, not skipped
    assert train.landmark_counts['template'] == 1  # grey.png: no colours, so no face; listed as template
    assert train.landmarks[1].image_size == (2400, 2400)
    assert np.allclose(train.landmarks[1].points, POINTS_200 * 12, atol=12)
    listed = {Path(row['path']).name: row['reason'] for row in read_csv(train.skipped_csv)}
    assert set(listed) == {'corrupt.png', 'cut.jpg', 'missing.png', 'ok.png'}
    assert 'not a readable image' in listed['corrupt.png'] and 'truncated' in listed['cut.jpg']
    assert listed['missing.png'] == 'file not found'
    reasons = [reason for path, reason in train.skipped if Path(path).name == 'ok.png']
    assert any('row 10' in r and "'III' is not a number" in r for r in reasons)
    assert any('row 11' in r and 'outside 0-5' in r for r in reasons)
    assert val.skipped_csv != train.skipped_csv and val.skipped_csv.is_file()  # each split keeps its own list
    assert read_csv(val.skipped_csv) == []
    assert all(train[i][0].shape == (3, 56, 56) for i in range(len(train)))


def test_every_image_unusable_is_a_user_error(tmp_path, fake_mtcnn):
    (tmp_path / 'corrupt.png').write_bytes(b'nope')
    csv_file = annotated_csv(tmp_path, [{'image_path': 'corrupt.png', 'grade': 1, 'side': 'left', 'split': 'train'}])
    with pytest.raises(UserError, match=r'no usable image for split "train".*skipped_fnp_train\.csv'):
        fpd.FacialPalsyDataset(tmp_path, csv_file, cache_dir=tmp_path / 'cache', verbose=False)


def test_getitem_names_a_file_removed_after_building(tmp_path, fake_mtcnn):
    root = grade_folders(tmp_path / 'data', grades=[1, 2])
    dataset = fpd.FacialPalsyDataset(root, split='all', cache_dir=tmp_path / 'cache', verbose=False)
    os.remove(dataset.paths[1])
    assert dataset[0][1] == 1
    with pytest.raises(fpd.ImageReadError, match=str(dataset.paths[1]).replace('\\', '\\\\')):
        dataset[1]
    write_rgb(Path(dataset.paths[1]), np.zeros((50, 60, 3), np.uint8))
    with pytest.raises(fpd.ImageReadError, match='changed'):
        dataset[1]


# augmentation interface and consistency

class RecordingTransform:
    """Shifts the face 3 px right and moves the landmarks along; zeroes the network input afterwards."""

    def __init__(self):
        self.seen = []
        self.mosaic_transform = lambda tensor: tensor * 0

    def __call__(self, image, landmarks):
        self.seen.append((image.shape, np.array(landmarks)))
        shifted = np.zeros_like(image)
        shifted[:, 3:] = image[:, :-3]
        return shifted, landmarks + [3, 0]


def test_transform_gets_face_and_landmarks_and_mosaic_transform_runs(tmp_path, fake_mtcnn):
    root = grade_folders(tmp_path / 'data', grades=[3])
    dataset = fpd.FacialPalsyDataset(root, split='all', cache_dir=tmp_path / 'cache', verbose=False, preload=True)
    plain = dataset[0][0]
    transform = RecordingTransform()
    dataset.transform = transform

    image, label = dataset[0]

    (shape, points), = transform.seen
    assert shape == (224, 224, 3) and points.shape == (5, 2)
    assert label == 3 and torch.count_nonzero(image) == 0
    transform.mosaic_transform = None
    assert torch.allclose(dataset[0][0], plain)  # the 3 px shift moved the landmarks along: same crops


def test_dataset_items_equal_make_input_on_the_photo(tmp_path, fake_mtcnn):
    """Training and inference share make_input: the same photo and landmarks give the same tensor."""
    root = grade_folders(tmp_path / 'data', grades=[2])
    for mode in fpd.PHOTO_INPUT_MODES:  # flow reads pairs: tests/test_flow_input.py
        dataset = fpd.FacialPalsyDataset(root, split='all', input_mode=mode, cache_dir=tmp_path / 'cache',
                                         verbose=False)
        sample = dataset.get_sample(0)
        photo = fpd.load_image(sample['path'])
        expected = fpd.make_input(photo, sample['landmarks'], dataset.preprocess, box=sample['box'])
        assert torch.equal(sample['image'], expected)
        assert dataset.preprocess['input_mode'] == mode and dataset.preprocess['input_size'] == 56


def test_preprocess_is_a_plain_checkpoint_friendly_dict(tmp_path):
    preprocess = fpd.default_preprocess()
    torch.save({'preprocess': preprocess}, tmp_path / 'p.pt')
    assert torch.load(tmp_path / 'p.pt', weights_only=True)['preprocess'] == preprocess
    detector = fpd.LandmarkDetector(cache_dir=False, progress=False, **preprocess['detector'])
    assert detector.settings == preprocess['detector']
    assert set(preprocess) >= {'input_mode', 'face_size', 'region_size', 'input_size', 'mean', 'std',
                               'face_crop', 'detector'}


def test_csv_without_split_column_gives_every_row_but_no_named_split(tmp_path):
    import cv2
    from facial_palsy_dataset import read_annotation_csv
    cv2.imwrite(str(tmp_path / 'a_1.jpg'), np.full((64, 64, 3), 120, np.uint8))
    (tmp_path / 'rows.csv').write_text('image_path,grade,side\na_1.jpg,2,left\n')
    records, _ = read_annotation_csv(tmp_path / 'rows.csv', tmp_path, split=None)
    assert len(records) == 1
    with pytest.raises(UserError, match='split'):
        read_annotation_csv(tmp_path / 'rows.csv', tmp_path, split='val')


def test_annotation_csv_gives_the_rest_photo_and_its_landmarks(tmp_path):
    points = POINTS_200
    row = {'image_path': 'grade_2/a_1.jpg', 'grade': 2, 'side': 'left', 'split': 'train',
           'neutral_path': 'rest/grade_2/a_1_rest.jpg', **landmark_columns(points),
           **{f'neutral_{k}': v + 1.0 for k, v in landmark_columns(points).items()}}
    plain = {**{k: v for k, v in row.items() if not k.startswith('neutral')}, 'image_path': 'grade_2/b_1.jpg'}
    csv_path = write_csv(tmp_path / 'pairs.csv', [row, plain])
    records, skipped = fpd.read_annotation_csv(csv_path, tmp_path, 'train')
    assert not skipped and len(records) == 2
    assert records[0].neutral_path == str(tmp_path / 'rest/grade_2/a_1_rest.jpg')
    np.testing.assert_allclose(records[0].neutral_annotation, np.asarray(points, np.float32) + 1.0)
    np.testing.assert_allclose(records[0].annotation, points)
    assert records[1].neutral_path is None and records[1].neutral_annotation is None


def test_photo_modes_keep_their_preprocess_and_flow_adds_its_settings():
    regions = fpd.default_preprocess('regions')
    assert 'flow' not in regions and 'input_kind' not in regions and regions['channels'] == 'RGB'
    flow = fpd.default_preprocess('flow', 128, 16)
    assert {k: v for k, v in flow.items() if k not in ('flow', 'input_kind', 'input_mode')} == \
        {k: v for k, v in fpd.default_preprocess('regions', 128, 16).items() if k != 'input_mode'}
    assert flow['input_mode'] == 'flow' and flow['input_size'] == 32 and flow['flow']['method'] == 'farneback'


def test_upgrade_preprocess_completes_old_partial_and_missing_dicts():
    assert fpd.upgrade_preprocess(None) == fpd.default_preprocess()
    for mode in fpd.INPUT_MODES:  # a current dict comes back equal
        current = fpd.default_preprocess(mode, 128, 16, detector={'min_face_size': 30})
        assert fpd.upgrade_preprocess(current) == current
    old = {'input_mode': 'regions', 'image_size': 112, 'region_size': 14, 'input_size': 28, 'mean': [0.5] * 3}
    upgraded = fpd.upgrade_preprocess(old)
    assert 'image_size' not in upgraded and upgraded == fpd.default_preprocess('regions', 112, 14)
    assert old['image_size'] == 112  # the stored dict is left as it was
    flow = fpd.upgrade_preprocess({'input_mode': 'flow', 'image_size': 224, 'flow': {'max_flow': 8.0}})
    assert flow['face_size'] == 224 and flow['input_kind'] == 'flow' and flow['flow']['max_flow'] == 8.0
    assert flow['flow']['winsize'] == fpd.optical_flow.FLOW_SETTINGS['winsize']
    assert fpd.upgrade_preprocess({'input_mode': 'face'})['detector'] == fpd.DEFAULT_DETECTOR_SETTINGS
    assert fpd.upgrade_preprocess({'region_size': 20})['input_size'] == 40


def test_default_preprocess_takes_face_size_or_its_former_name():
    assert fpd.default_preprocess(image_size=112) == fpd.default_preprocess(face_size=112) \
        == fpd.default_preprocess('regions', 112)
    assert fpd.default_preprocess(input_mode='face', image_size=96, region_size=20)['face_size'] == 96
    with pytest.raises(TypeError, match='same size'):
        fpd.default_preprocess(face_size=112, image_size=224)
    with pytest.raises(UserError, match='region_size'):
        fpd.default_preprocess(face_size=20, region_size=28)


def test_dataset_takes_a_preprocess_as_it_is(tmp_path, fake_mtcnn):
    root = grade_folders(tmp_path / 'data', grades=[1, 3])
    preprocess = fpd.default_preprocess('face', 112, 14)
    given = fpd.FacialPalsyDataset(root, split='all', preprocess=preprocess, cache_dir=tmp_path / 'cache',
                                   verbose=False)
    assert given.preprocess == preprocess and given.face_size == 112 and given.input_mode == 'face'
    built = fpd.FacialPalsyDataset(root, split='all', input_mode='face', image_size=112, region_size=14,
                                   cache_dir=tmp_path / 'cache', verbose=False)
    assert built.preprocess == preprocess and torch.equal(given[0][0], built[0][0])
    assert given[0][0].shape == (3, 28, 28)
    agreeing = fpd.FacialPalsyDataset(root, split='all', preprocess=preprocess, image_size=112, input_mode='face',
                                      cache_dir=tmp_path / 'cache', verbose=False)
    assert agreeing.preprocess == preprocess
    with pytest.raises(UserError, match='image_size 224 differs from the preprocess'):
        fpd.FacialPalsyDataset(root, split='all', preprocess=preprocess, image_size=224,
                               cache_dir=tmp_path / 'cache', verbose=False)
    with pytest.raises(UserError, match='input_mode regions differs'):
        fpd.FacialPalsyDataset(root, split='all', preprocess=preprocess, input_mode='regions',
                               cache_dir=tmp_path / 'cache', verbose=False)


# photos listed twice, Windows paths and patient folders

def test_duplicate_rows_are_read_once_and_a_photo_with_two_grades_is_skipped_with_both_rows(tmp_path, fake_mtcnn,
                                                                                            capsys):
    for name in ('a.png', 'b.png', 'c.png'):
        write_rgb(tmp_path / 'grade_1' / name, coloured_points_photo())
    rows = [{'image_path': 'grade_1/a.png', 'grade': 1, 'side': 'left', 'split': 'train'},   # row 2
            {'image_path': 'grade_1/b.png', 'grade': 1, 'side': 'left', 'split': 'train'},   # row 3
            {'image_path': 'grade_1/a.png', 'grade': 1, 'side': 'left', 'split': 'train'},   # row 4: row 2 again
            {'image_path': 'grade_1/b.png', 'grade': 4, 'side': 'left', 'split': 'train'},   # row 5: b, another grade
            {'image_path': 'grade_1\\c.png', 'grade': 1, 'side': 'left', 'split': 'train'}]  # made on Windows
    csv_file = annotated_csv(tmp_path, rows)
    dataset = fpd.FacialPalsyDataset(tmp_path, csv_file, split='train', cache_dir=tmp_path / 'cache')
    assert [Path(p).name for p in dataset.paths] == ['a.png', 'c.png'] and dataset.subjects == ['a', 'c']
    out = capsys.readouterr().out
    assert f'note: {csv_file}: 1 duplicate row(s) dropped (a photo listed again with the same grade): row 4 (as ' \
           f'row 2: grade_1/a.png)' in out
    assert f'warning: {csv_file}: 1 photo(s) listed with different grades or splits: grade_1/b.png: row 3 (grade ' \
           f'1), row 5 (grade 4); every row of them is left out' in out
    assert f'note: {csv_file}: 1 image path(s) with backslashes' in out
    listed = read_csv(dataset.skipped_csv)
    assert [row['reason'] for row in listed] == [f'{csv_file}: listed with different grades, so neither is used: '
                                                 f'grade_1/b.png: row 3 (grade 1), row 5 (grade 4)'] * 2


def test_patient_folders_inside_grade_folders_are_read_with_their_subject(tmp_path, fake_mtcnn):
    for path in ('grade_1/P001/rest.png', 'grade_1/P001/smile.png', 'grade_3/P002/rest.png', 'grade_3/S7_a.png'):
        write_rgb(tmp_path / 'data' / path, coloured_points_photo())
    dataset = fpd.FacialPalsyDataset(tmp_path / 'data', split='all', cache_dir=tmp_path / 'cache', verbose=False)
    assert dataset.subjects == ['P001', 'P001', 'P002', 'S7'] and dataset.labels == [1, 1, 3, 3]
    assert dataset.subject_sources == ['folder', 'folder', 'folder', 'name']
