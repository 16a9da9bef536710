"""face_detection.py: decoding every kind of photo, refusing bad files by name, MTCNN's landmarks in batches, the
fallbacks and the landmark cache."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import face_detection as fd
from _data_images import POINTS_200, ColourMTCNN, coloured_points_photo, write_rgb
from utils import UserError


@pytest.fixture
def fake_mtcnn(monkeypatch):
    fake = ColourMTCNN()
    monkeypatch.setattr(fd.LandmarkDetector, '_build_mtcnn', lambda self: fake)
    return fake


# reading images

def _save_16bit(path, image):
    cv2.imwrite(str(path), (image[:, :, 0].astype(np.uint16) * 257))


def _save_rgba(path, image):
    alpha = np.full(image.shape[:2], 255, np.uint8)
    alpha[:, :10] = 0  # transparent strip
    Image.fromarray(np.dstack([image, alpha]), 'RGBA').save(path)


def _save_exif_rotated(path, image):
    pil = Image.fromarray(image)
    exif = pil.getexif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    pil.save(path, exif=exif.tobytes(), quality=95)


@pytest.mark.parametrize('kind', ['grayscale', 'rgba', '16bit', 'palette', 'exif', 'gif'])
def test_load_image_converts_every_format_to_rgb_uint8(tmp_path, kind):
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, 30:] = 200
    path = tmp_path / {'exif': 'x.jpg', 'gif': 'x.gif'}.get(kind, 'x.png')
    {'grayscale': lambda: Image.fromarray(image[:, :, 0]).save(path),
     'rgba': lambda: _save_rgba(path, image),
     '16bit': lambda: _save_16bit(path, image),
     'palette': lambda: Image.fromarray(image).convert('P').save(path),
     'exif': lambda: _save_exif_rotated(path, image),
     'gif': lambda: Image.fromarray(image).save(path)}[kind]()

    loaded = fd.load_image(path)

    assert loaded.dtype == np.uint8 and loaded.ndim == 3 and loaded.shape[2] == 3
    if kind == 'exif':  # displayed upright: 60 wide photo stored sideways becomes 40 wide, 60 tall
        assert loaded.shape[:2] == (60, 40)
        assert loaded[5, 20].mean() < 50 and loaded[55, 20].mean() > 150  # the dark half moved to the top
        return
    assert loaded.shape[:2] == (40, 60)
    assert loaded[20, 45].mean() == pytest.approx(200, abs=6)  # palettes quantise a little
    if kind == 'rgba':
        assert tuple(loaded[20, 5]) == (255, 255, 255)  # transparent pixels lie over white
    else:
        assert loaded[20, 5].max() < 5


def test_load_image_refuses_bad_files_naming_them(tmp_path):
    good = write_rgb(tmp_path / 'good.jpg', coloured_points_photo())
    data = good.read_bytes()
    (tmp_path / 'truncated.jpg').write_bytes(data[:len(data) // 2])
    (tmp_path / 'junk.png').write_bytes(b'this is not an image at all')
    (tmp_path / 'empty.jpg').write_bytes(b'')
    assert not fd._jpeg_is_truncated(data) and not fd._jpeg_is_truncated(data + b'\0' * 5000 + b'trailer')
    assert fd._jpeg_is_truncated(data[:len(data) // 2]) and fd._jpeg_is_truncated(data[:40])
    reasons = {'truncated.jpg': 'truncated', 'junk.png': 'not a readable image', 'empty.jpg': 'empty',
               'missing.png': 'not found'}
    for name, reason in reasons.items():
        with pytest.raises(fd.ImageReadError, match=reason) as info:
            fd.load_image(tmp_path / name)
        assert str(info.value).startswith(str(tmp_path / name))
        assert isinstance(info.value, UserError)


# the fallback template

def test_template_landmarks_is_the_original_template_scaled():
    assert np.allclose(fd.template_landmarks(28, 28), fd.TEMPLATE_LANDMARKS_28)
    scaled = fd.template_landmarks(280, 56)
    assert np.allclose(scaled, fd.TEMPLATE_LANDMARKS_28 * [10, 2])
    assert scaled[0, 0] < scaled[1, 0] and scaled[3, 0] < scaled[4, 0]  # left points on the image left


# landmark detection and its cache

def test_detect_images_batches_by_size_and_scales_large_photos_back(fake_mtcnn):
    small = coloured_points_photo()
    large = cv2.resize(coloured_points_photo(radius=8), (3000, 3000), interpolation=cv2.INTER_NEAREST)
    other = coloured_points_photo(POINTS_200 + 10, size=(210, 210))  # padded to share a batch
    detector = fd.LandmarkDetector(cache_dir=False, progress=False, batch_size=8)

    faces = detector.detect_images([small, large, small, other, np.full((100, 100, 3), 128, np.uint8)])

    assert all(max(shape[1:3]) <= fd.DETECT_MAX_SIDE for shape in fake_mtcnn.batches)  # large one downscaled
    assert sorted(shape[0] for shape in fake_mtcnn.batches) == [1, 1, 3]  # same-sized photos share a batch
    assert np.allclose(faces[0].points, POINTS_200 + 0.5, atol=0.01)
    assert np.allclose(faces[1].points, (POINTS_200 + 0.5) * 15, atol=15)  # back in the 3000-pixel photo
    assert faces[1].image_size == (3000, 3000)
    assert np.allclose(faces[3].points, POINTS_200 + 10.5, atol=0.01)
    assert faces[4] is None
    assert all(f.source == 'detected' and f.box.shape == (4,) for f in faces[:4])


def test_detect_paths_falls_back_to_annotation_then_template(tmp_path, fake_mtcnn):
    with_face = write_rgb(tmp_path / 'a.png', coloured_points_photo())
    no_face = write_rgb(tmp_path / 'b.png', np.full((100, 140, 3), 90, np.uint8))
    detector = fd.LandmarkDetector(cache_dir=tmp_path / 'cache', progress=False)
    annotation = POINTS_200 / 2

    faces = detector.detect_paths([with_face, no_face, no_face], fallback=[None, annotation, None])

    assert [f.source for f in faces] == ['detected', 'annotation', 'template']
    assert np.allclose(faces[1].points, annotation) and faces[1].box is None
    assert np.allclose(faces[2].points, fd.template_landmarks(140, 100))
    with pytest.raises(fd.ImageReadError, match='missing.png: file not found'):
        detector.detect_paths([with_face, tmp_path / 'missing.png'])
    assert detector.detect_paths([tmp_path / 'missing.png'], on_error='skip') == [None]
    assert detector.errors == {str(tmp_path / 'missing.png'): 'file not found'}


def test_damaged_cache_entry_is_detected_again(tmp_path, fake_mtcnn):
    photo = write_rgb(tmp_path / 'a.png', coloured_points_photo())
    cache = tmp_path / 'cache'
    fd.LandmarkDetector(cache_dir=cache, progress=False).detect_paths([photo])
    (entry,) = cache.glob('*.json')
    entry.write_text('{"width": ')
    (face,) = fd.LandmarkDetector(cache_dir=cache, progress=False).detect_paths([photo])
    assert face.source == 'detected' and len(fake_mtcnn.batches) == 2


def test_real_mtcnn_finds_a_real_face(tmp_path):
    from matplotlib import cbook
    try:
        photo = Path(cbook.get_sample_data('grace_hopper.jpg', asfileobj=False))
    except (OSError, ValueError):
        pytest.skip("matplotlib's sample photo is not installed")
    small = tmp_path / 'hopper.png'  # half size: MTCNN's pyramid is 4x cheaper and the face is still 90 px
    write_rgb(small, cv2.resize(fd.load_image(photo), (256, 300), interpolation=cv2.INTER_AREA))
    (face,) = fd.LandmarkDetector(cache_dir=tmp_path, progress=False).detect_paths([small])
    assert face.source == 'detected' and face.score > 0.9
    x1, y1, x2, y2 = face.box
    assert np.all((face.points >= [x1, y1]) & (face.points <= [x2, y2]))
    left_eye, right_eye, nose, left_mouth, right_mouth = face.points
    assert left_eye[0] < nose[0] < right_eye[0] and left_mouth[0] < right_mouth[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1])
