"""Tests of data_augmentation.py: no augmentation swaps the sides of the face, landmarks move with the image,
erased patches stay inside one mosaic quadrant, runs are reproducible, and the named pipelines build."""
from __future__ import annotations

import argparse
import math
import pickle

import cv2
import numpy as np
import pytest
import torch

import data_augmentation as da
import annotations
import facial_palsy_dataset as fpd
from utils import UserError, seed_everything

# A 160x160 synthetic "photo": dark image-left half, light image-right half, and a coloured disc on each of the
# five MTCNN points (left eye, right eye, nose, left mouth corner, right mouth corner; left = image left).
SIZE = 160
LANDMARKS = np.array([[55, 60], [105, 60], [80, 85], [60, 112], [100, 112]], dtype=np.float32)
COLOURS = np.array([[230, 30, 30], [30, 230, 30], [30, 30, 230], [230, 230, 30], [30, 230, 230]], dtype=np.uint8)
BLOB_RADIUS = 5
DARK, LIGHT = 50, 200


def make_photo() -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    image = np.where(xx[..., None] < SIZE // 2, DARK, LIGHT).astype(np.uint8).repeat(3, axis=2)
    for (x, y), colour in zip(LANDMARKS, COLOURS):
        image[(xx - x) ** 2 + (yy - y) ** 2 <= BLOB_RADIUS ** 2] = colour
    return image


def colour_class(pixel: np.ndarray) -> frozenset[int]:
    """Which channels are 'on': survives brightness, contrast, gamma, saturation and lighting changes, all of which
    keep the order of a pixel's channels."""
    pixel = pixel.astype(float)
    threshold = (pixel.max() + pixel.min()) / 2
    if pixel.max() - pixel.min() < 30:
        return frozenset()  # grey: background, not a landmark disc
    return frozenset(int(c) for c in np.flatnonzero(pixel > threshold))


EXPECTED_CLASSES = [colour_class(c) for c in COLOURS]


def pixel_at(image: np.ndarray, point: np.ndarray) -> np.ndarray:
    x, y = (int(round(float(v))) for v in point)
    return image[y, x]


def no_photometric(**kwargs) -> dict:
    return dict(brightness=0.0, contrast=0.0, gamma=0.0, saturation=0.0, lighting=0.0, blur=0.0, **kwargs)


PHOTO_PIPELINES = ('standard', 'asymmetry_preserving', 'strong')


# sides are never swapped, landmarks move with the image

def test_synthetic_photo_classes_are_distinct():
    # guards the tests below: each disc must be recognisable and the background must not look like a disc
    image = make_photo()
    assert len(set(EXPECTED_CLASSES)) == 5
    assert [colour_class(pixel_at(image, p)) for p in LANDMARKS] == EXPECTED_CLASSES
    assert colour_class(image[5, 5]) == frozenset() and colour_class(image[5, -5]) == frozenset()


@pytest.mark.parametrize('name', PHOTO_PIPELINES)
def test_no_pipeline_swaps_sides(name):
    transform = da.get_augmentation_pipeline(name, seed=0)
    photo = make_photo()
    for _ in range(40):
        image, points = transform(photo, LANDMARKS)
        assert image.shape == photo.shape and image.dtype == np.uint8
        # each disc is still found under its own (moved) landmark
        assert [colour_class(pixel_at(image, p)) for p in points] == EXPECTED_CLASSES
        # image-left features stay left of their right-side partners
        assert points[0, 0] < points[1, 0] and points[3, 0] < points[4, 0]
        # image-left content stays on the image left: a mirror would put the light half on the left
        grey = image.astype(float).mean(axis=2)
        assert grey[:, :SIZE // 4].mean() + 40 < grey[:, -SIZE // 4:].mean()


def test_landmarks_move_with_the_image():
    transform = da.FacialPalsyAugmentation(max_rotation=25.0, scale=(0.8, 1.2), max_shift=0.2, seed=1,
                                           **no_photometric())
    photo = make_photo()
    moved = 0
    for _ in range(30):
        image, points = transform(photo, LANDMARKS)
        assert points.dtype == np.float32 and points.shape == (5, 2)
        assert [colour_class(pixel_at(image, p)) for p in points] == EXPECTED_CLASSES
        # where a point moved further than the disc radius, the old position now shows something else
        for old, new, expected in zip(LANDMARKS, points, EXPECTED_CLASSES):
            if np.linalg.norm(new - old) > BLOB_RADIUS + 2:
                moved += 1
                assert colour_class(pixel_at(image, old)) != expected
    assert moved > 30, 'the draws hardly moved the landmarks, so this test would not notice unmoved landmarks'


def test_known_rotation_moves_points_as_the_image():
    transform = da.FacialPalsyAugmentation(**no_photometric())
    params = da.PhotoParams(angle=20.0)
    image, points, box = transform.apply(make_photo(), LANDMARKS, box=np.array([30, 30, 130, 140]), params=params)
    centre = LANDMARKS.mean(axis=0)
    theta = math.radians(20.0)  # counter-clockwise as seen on screen, where y points down
    rotation = np.array([[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]])
    np.testing.assert_allclose(points, (LANDMARKS - centre) @ rotation.T + centre, atol=1e-3)
    assert [colour_class(pixel_at(image, p)) for p in points] == EXPECTED_CLASSES
    # the box grows to hold its rotated corners and still holds every landmark
    assert box[0] < 30 and box[2] > 130
    assert np.all(points >= box[:2]) and np.all(points <= box[2:])


def test_caller_arrays_are_not_changed():
    photo, landmarks = make_photo(), LANDMARKS.copy()
    da.get_augmentation_pipeline('standard', seed=3)(photo, landmarks)
    np.testing.assert_array_equal(photo, make_photo())
    np.testing.assert_array_equal(landmarks, LANDMARKS)


def test_asymmetry_preserving_keeps_eye_line_roll_and_lights_both_sides_alike():
    def roll(points):
        return math.degrees(math.atan2(points[1, 1] - points[0, 1], points[1, 0] - points[0, 0]))

    flat = np.full((SIZE, SIZE, 3), 128, dtype=np.uint8)
    preserving = da.AsymmetryPreservingAugmentation(seed=2)
    standard = da.FacialPalsyAugmentation(p_lighting=1.0, seed=2)
    rolls, standard_contrast = [], []
    for _ in range(40):
        image, points = preserving(flat, LANDMARKS)
        rolls.append(abs(roll(points) - roll(LANDMARKS)))
        # an evenly lit face stays evenly lit: no side is made brighter than the other
        assert np.ptp(image) <= 1
        image, _ = standard(flat, LANDMARKS)
        grey = image.astype(float).mean(axis=2)
        standard_contrast.append(np.ptp(grey))
    assert max(rolls) <= preserving.max_rotation + 1e-3 and max(rolls) > 0.5
    # the standard pipeline does light one side more (so the flat-image check above can tell the two apart)
    assert np.median(standard_contrast) > 10


def test_asymmetry_preserving_refuses_large_rotations():
    with pytest.raises(ValueError, match='roll of the eye line'):
        da.AsymmetryPreservingAugmentation(max_rotation=15)
    with pytest.raises(ValueError, match='max_rotation'):
        da.FacialPalsyAugmentation(max_rotation=60)
    with pytest.raises(ValueError, match='scale'):
        da.FacialPalsyAugmentation(scale=(-1.0, 1.0))  # a negative scale would mirror the face


def test_bad_inputs_are_named():
    transform = da.FacialPalsyAugmentation()
    with pytest.raises(ValueError, match='uint8'):
        transform(make_photo().astype(np.float32), LANDMARKS)
    with pytest.raises(ValueError, match=r'\(5, 2\)'):
        transform(make_photo(), LANDMARKS[:3])


def test_quadrants_of_the_region_mosaic_keep_their_side():
    fpd = pytest.importorskip('facial_palsy_dataset')
    if not hasattr(fpd, 'region_mosaic'):
        pytest.skip('facial_palsy_dataset has no region_mosaic')
    transform = da.get_augmentation_pipeline('asymmetry_preserving', seed=5)
    # mosaic layout: [left eye | left mouth corner] over [right eye | right mouth corner], never mirrored
    quadrant_landmark = {(0, 0): 0, (0, 1): 3, (1, 0): 1, (1, 1): 4}
    for _ in range(5):
        image, points = transform(make_photo(), LANDMARKS)
        mosaic = np.asarray(fpd.region_mosaic(image, points, region_size=28))
        assert mosaic.shape == (56, 56, 3)
        for (row, col), k in quadrant_landmark.items():
            assert colour_class(mosaic[row * 28 + 14, col * 28 + 14]) == EXPECTED_CLASSES[k]


# reproducibility

def run_pipeline(transform, n: int = 3) -> list[np.ndarray]:
    outputs = []
    for _ in range(n):
        image, points = transform(make_photo(), LANDMARKS)
        outputs += [image, points]
    return outputs


def test_same_seed_same_augmentations():
    first = run_pipeline(da.get_augmentation_pipeline('standard', seed=7))
    again = run_pipeline(da.get_augmentation_pipeline('standard', seed=7))
    other = run_pipeline(da.get_augmentation_pipeline('standard', seed=8))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other))
    rng_run = run_pipeline(da.FacialPalsyAugmentation(rng=np.random.default_rng(7)))
    assert any(not np.array_equal(a, b) for a, b in zip(rng_run[::2], rng_run[2::2])), 'draws must vary'
    legacy = [run_pipeline(da.get_augmentation_pipeline('strong', rng=np.random.RandomState(7))) for _ in range(2)]
    for a, b in zip(*legacy):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match='rng or seed'):
        da.CutOut(rng=np.random.default_rng(0), seed=0)


def test_global_numpy_state_seeded_by_seed_everything():
    transform = da.get_augmentation_pipeline('asymmetry_preserving')
    seed_everything(11)
    first = run_pipeline(transform)
    seed_everything(11)
    again = run_pipeline(transform)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)


class _PhotoDataset(torch.utils.data.Dataset):
    def __init__(self, transform):
        self.transform = transform

    def __len__(self):
        return 4

    def __getitem__(self, index):
        image, points = self.transform(make_photo(), LANDMARKS)
        return torch.from_numpy(points)


def load_points(transform) -> torch.Tensor:
    loader = torch.utils.data.DataLoader(_PhotoDataset(transform), batch_size=1, num_workers=2)
    return torch.cat(list(loader))


def test_seeded_transform_draws_differently_in_each_worker_and_epoch():
    transform = da.FacialPalsyAugmentation(seed=0, **no_photometric())
    torch.manual_seed(0)
    first = load_points(transform)
    next_epoch = load_points(transform)
    torch.manual_seed(0)
    again = load_points(transform)
    # items 0 and 1 are the first draw of worker 0 and of worker 1: copies of one generator must not repeat
    assert not torch.equal(first[0], first[1])
    assert not torch.equal(first, next_epoch)
    assert torch.equal(first, again)


# the robust pipeline (faces unlike the training faces)

STILL_GEOMETRY = dict(max_rotation=0.0, scale=(1.0, 1.0), max_shift=0.0, aspect=0.0)
NO_CAMERA = dict(p_blur=0.0, p_downscale=0.0, p_noise=0.0, p_jpeg=0.0, p_grayscale=0.0)


def inter_ocular(points: np.ndarray) -> float:
    return float(np.linalg.norm(points[1] - points[0]))


def symmetric_photo() -> np.ndarray:
    """A textured, coloured face square equal to its own mirror (``LANDMARKS`` are mirror-symmetric too)."""
    rng = np.random.default_rng(0)
    half = cv2.GaussianBlur(rng.integers(0, 256, (SIZE, SIZE // 2, 3), dtype=np.uint8), (0, 0), 2)
    return np.ascontiguousarray(np.concatenate([half, half[:, ::-1]], axis=1))


def mirror_asymmetry(image: np.ndarray, block: int = 20) -> float:
    """Largest difference between the mean colours of a block and of its mirror block: pixel-level JPEG and noise
    differences average out, a change that treats one side differently does not."""
    mirrored = image[:, ::-1].astype(float)
    n = SIZE // block
    means = image.astype(float).reshape(n, block, n, block, 3).mean(axis=(1, 3))
    return float(np.abs(means - mirrored.reshape(n, block, n, block, 3).mean(axis=(1, 3))).max())


def test_robust_is_reproducible_with_a_seed_and_after_pickling():
    first = run_pipeline(da.get_augmentation_pipeline('robust', seed=7, strength=1.5), n=6)
    again = run_pipeline(da.get_augmentation_pipeline('robust', seed=7, strength=1.5), n=6)
    other = run_pipeline(da.get_augmentation_pipeline('robust', seed=8, strength=1.5), n=6)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other))
    assert any(not np.array_equal(a, b) for a, b in zip(first[::2], first[2::2])), 'draws must vary'
    # DataLoader workers receive a pickled copy: it draws the same stream as the original
    fresh = da.get_augmentation_pipeline('robust', seed=7, strength=1.5)
    copied = pickle.loads(pickle.dumps(fresh))
    for a, b in zip(run_pipeline(copied, n=6), first):
        np.testing.assert_array_equal(a, b)
    assert copied.strength == 1.5


def test_robust_jitters_each_landmark_within_the_bound_and_leaves_the_image():
    jitter = 0.03
    transform = da.RobustAugmentation(landmark_jitter=jitter, brightness=0.0, contrast=0.0, gamma=0.0,
                                      saturation=0.0, hue=0.0, white_balance=0.0, **STILL_GEOMETRY, **NO_CAMERA,
                                      seed=0)
    photo = make_photo()
    bound = jitter * inter_ocular(LANDMARKS)
    offsets = []
    for _ in range(200):
        image, points = transform(photo, LANDMARKS)
        np.testing.assert_array_equal(image, photo)  # only the points move, not the face
        offsets.append(points - LANDMARKS)
    offsets = np.array(offsets)  # (draws, 5, 2)
    distances = np.linalg.norm(offsets, axis=2)
    assert distances.max() <= bound + 1e-4
    assert distances.max() > 0.9 * bound, 'the jitter should reach close to its bound'
    # each point moves on its own: not one common shift of all five
    assert np.abs(offsets - offsets.mean(axis=1, keepdims=True)).max() > 0.5 * bound
    # and in every direction: no drift towards one side of the face
    assert np.abs(offsets.reshape(-1, 2).mean(axis=0)).max() < 0.15 * bound


def test_robust_keeps_a_symmetric_face_symmetric():
    photo = symmetric_photo()
    mirrored, mirrored_points = da.mirror_face(photo, LANDMARKS)
    assert np.array_equal(mirrored, photo) and np.array_equal(mirrored_points, LANDMARKS)
    # geometry and jitter off; every camera change frequent, so each is met in the draws below
    camera = dict(p_blur=0.4, p_downscale=0.4, p_noise=1.0, p_jpeg=1.0, p_grayscale=0.3)
    transform = da.RobustAugmentation(strength=1.5, landmark_jitter=0.0, **STILL_GEOMETRY, **camera, seed=1)
    exact = da.RobustAugmentation(strength=1.5, landmark_jitter=0.0, **STILL_GEOMETRY,
                                  **dict(camera, p_noise=0.0, p_jpeg=0.0), seed=1)
    draws = [transform.sample_params() for _ in range(40)]
    assert any(d.blur > 0 for d in draws) and any(d.downscale < 1 for d in draws)
    assert any(d.grayscale for d in draws) and all(d.noise > 0 and d.jpeg_quality < 100 for d in draws)
    for params in draws:
        image, points, _ = transform.apply(photo, LANDMARKS, params=params)
        assert not np.array_equal(image, photo)
        np.testing.assert_allclose(da.mirror_face(image, points)[1], points, atol=1e-4)
        assert mirror_asymmetry(image) < 8.0  # JPEG blocks and per-pixel noise, averaged over 20x20 blocks
    for _ in range(40):
        # without JPEG and noise every change (colour, blur, resolution, grayscale) mirrors to the pixel
        image, _ = exact(photo, LANDMARKS)
        assert np.abs(image.astype(int) - image[:, ::-1]).max() <= 2
    # the measure does see a change that lights one side more than the other
    lit, _, _ = da.FacialPalsyAugmentation().apply(photo, LANDMARKS, params=da.PhotoParams(lighting=0.1))
    assert mirror_asymmetry(lit) > 15.0


def test_robust_stretch_moves_the_points_with_the_face_and_keeps_its_symmetry():
    """The stretch along each image axis: the points move exactly as the face (about the points' centre), a
    symmetric face stays symmetric, and the draws stay within exp(+-aspect) and reach close to it."""
    photo = symmetric_photo()
    still = da.RobustAugmentation(landmark_jitter=0.0, brightness=0.0, contrast=0.0, gamma=0.0, saturation=0.0,
                                  hue=0.0, white_balance=0.0, **dict(STILL_GEOMETRY, aspect=0.15), **NO_CAMERA)
    stretch = np.array([1.12, 0.9])
    image, points, _ = still.apply(photo, LANDMARKS, params=da.RobustParams(aspect=tuple(stretch)))
    centre = LANDMARKS.mean(axis=0)
    np.testing.assert_allclose(points, centre + (LANDMARKS - centre) * stretch, atol=1e-3)
    assert not np.array_equal(image, photo)
    assert np.abs(image.astype(int) - image[:, ::-1]).max() <= 2
    draws = np.array([still.sample_params().aspect for _ in range(300)])
    assert draws.min() >= math.exp(-0.15) - 1e-9 and draws.max() <= math.exp(0.15) + 1e-9
    assert draws.min() < math.exp(-0.14) and draws.max() > math.exp(0.14)
    assert da.RobustAugmentation(strength=0.0).sample_params().aspect == (1.0, 1.0)


@pytest.mark.parametrize('shape', [(SIZE, SIZE), (224, 224), (150, 190)])
def test_robust_output_dtype_and_shape(shape):
    transform = da.RobustAugmentation(strength=2.0, p_blur=0.3, p_downscale=0.7, p_noise=1.0, p_jpeg=1.0,
                                      p_grayscale=0.5, seed=2)
    photo = cv2.resize(make_photo(), shape[::-1])
    landmarks = LANDMARKS * np.array([shape[1], shape[0]], dtype=np.float32) / SIZE
    for _ in range(5):
        image, points, box = transform.apply(photo, landmarks, box=np.array([10, 10, 100, 120]))
        assert image.shape == photo.shape and image.dtype == np.uint8 and image.flags['C_CONTIGUOUS']
        assert points.shape == (5, 2) and points.dtype == np.float32 and np.all(np.isfinite(points))
        assert box.shape == (4,)
    image, points = transform(photo, None)  # a photo without landmarks is still augmented
    assert image.shape == photo.shape and points is None


def test_robust_strength_zero_changes_nothing():
    transform = da.get_augmentation_pipeline('robust', strength=0.0, seed=0)
    assert transform.p_grayscale == 0.0 and transform.jpeg_quality == (100.0, 100.0)
    photo = make_photo()
    for _ in range(30):
        assert transform.sample_params().is_geometric_identity
        image, points = transform(photo, LANDMARKS)
        np.testing.assert_array_equal(image, photo)
        np.testing.assert_array_equal(points, LANDMARKS)


def test_robust_strength_scales_every_range():
    base, double = da.RobustAugmentation(), da.RobustAugmentation(strength=2.0)
    for name in ('max_shift', 'landmark_jitter', 'brightness', 'contrast', 'gamma', 'hue', 'white_balance', 'blur',
                 'noise', 'p_grayscale'):
        assert getattr(double, name) == pytest.approx(2 * getattr(base, name)), name
    assert double.scale == pytest.approx((0.9, 1.1))
    assert double.jpeg_quality == pytest.approx((da.MIN_JPEG_QUALITY, 80.0))  # 100 - 2 * 70 is no JPEG quality
    assert double.min_downscale == pytest.approx(da.MIN_DOWNSCALE)
    assert double.max_rotation == da.MAX_ASYMMETRY_PRESERVING_ROTATION  # the roll of the eye line stays a sign
    assert double.saturation == 0.8 and da.RobustAugmentation(strength=4.0).saturation == 1.0
    # a stronger pipeline changes the photo more
    photo = make_photo()  # the photo run_pipeline augments
    change = {strength: np.mean([np.abs(image.astype(int) - photo).mean() for image in
                                 run_pipeline(da.RobustAugmentation(strength=strength, **STILL_GEOMETRY,
                                                                    seed=3), n=20)[::2]])
              for strength in (0.5, 1.0, 2.0)}
    assert change[0.5] < change[1.0] < change[2.0]
    with pytest.raises(ValueError, match='strength'):
        da.RobustAugmentation(strength=-1.0)
    with pytest.raises(ValueError, match='roll of the eye line'):
        da.RobustAugmentation(max_rotation=10.0)
    with pytest.raises(ValueError, match='p_blur \\+ p_downscale'):
        da.RobustAugmentation(p_blur=0.6, p_downscale=0.6)


def test_robust_jpeg_quality_stays_in_its_range():
    transform = da.RobustAugmentation(p_jpeg=1.0, seed=4)
    qualities = [transform.sample_params().jpeg_quality for _ in range(300)]
    assert min(qualities) >= 30 and max(qualities) <= 90
    assert min(qualities) <= 33 and max(qualities) >= 87, 'the draws should cover the whole range'
    assert da.RobustAugmentation(strength=0.5).jpeg_quality == (65.0, 95.0)
    # the photo is re-compressed at the drawn quality, and only then
    only_jpeg = da.RobustAugmentation(jpeg_quality=(50, 50), brightness=0.0, contrast=0.0, gamma=0.0,
                                      saturation=0.0, hue=0.0, white_balance=0.0, landmark_jitter=0.0,
                                      **STILL_GEOMETRY, **dict(NO_CAMERA, p_jpeg=1.0), seed=0)
    photo = symmetric_photo()
    image, _ = only_jpeg(photo, LANDMARKS)

    def jpeg(quality: int) -> np.ndarray:
        ok, data = cv2.imencode('.jpg', cv2.cvtColor(photo, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(image, jpeg(50))
    assert not np.array_equal(image, jpeg(90))
    with pytest.raises(ValueError, match='jpeg_quality'):
        da.RobustAugmentation(jpeg_quality=(0, 90))


def test_robust_never_swaps_sides():
    transform = da.RobustAugmentation(p_grayscale=0.0, seed=0)  # grey discs could not be told apart
    photo = make_photo()
    for _ in range(40):
        image, points = transform(photo, LANDMARKS)
        assert [colour_class(pixel_at(image, p)) for p in points] == EXPECTED_CLASSES
        assert points[0, 0] < points[1, 0] and points[3, 0] < points[4, 0]
        grey = image.astype(float).mean(axis=2)
        assert grey[:, :SIZE // 4].mean() + 40 < grey[:, -SIZE // 4:].mean()


# CutOut and RandomErasing on the mosaic

def quadrants_touched(mask: torch.Tensor) -> set[int]:
    rows, cols = torch.nonzero(mask, as_tuple=True)
    half_h, half_w = mask.shape[0] // 2, mask.shape[1] // 2
    return {int(r >= half_h) * 2 + int(c >= half_w) for r, c in zip(rows.tolist(), cols.tolist())}


def test_cutout_patch_stays_in_one_quadrant():
    cutout = da.CutOut(n_holes=1, size=0.5, p=1.0, value=0.0, seed=0)
    mosaic = torch.ones(3, 56, 56)
    seen, clipped = set(), 0
    for _ in range(200):
        out = cutout(mosaic)
        mask = (out != 1).any(dim=0)
        touched = quadrants_touched(mask)
        assert len(touched) == 1
        seen |= touched
        assert 0 < int(mask.sum()) <= 14 * 14
        clipped += int(mask.sum()) < 14 * 14
    assert seen == {0, 1, 2, 3}
    assert clipped > 0, 'patches near a quadrant edge are clipped to it, so some must be smaller'
    assert torch.equal(mosaic, torch.ones(3, 56, 56)), 'the input tensor is left as it was'


def test_cutout_several_holes_and_probability():
    mosaic = torch.ones(3, 56, 56)
    assert torch.equal(da.CutOut(p=0.0, seed=0)(mosaic), mosaic)
    out = da.CutOut(n_holes=4, size=0.25, p=1.0, seed=1)(mosaic)
    erased = int((out != 1).any(dim=0).sum())
    assert 7 * 7 < erased <= 4 * 7 * 7


@pytest.mark.parametrize('value', [0.0, 'random'])
def test_random_erasing_rectangle_stays_in_one_quadrant(value):
    erasing = da.RandomErasing(p=1.0, area=(0.02, 0.33), value=value, seed=3)
    mosaic = torch.full((3, 56, 56), 5.0)
    seen = set()
    for _ in range(200):
        out = erasing(mosaic)
        mask = (out != 5.0).any(dim=0)
        touched = quadrants_touched(mask)
        assert len(touched) == 1
        seen |= touched
        rows, cols = torch.nonzero(mask, as_tuple=True)
        box_area = (int(rows.max()) - int(rows.min()) + 1) * (int(cols.max()) - int(cols.min()) + 1)
        assert int(mask.sum()) == box_area, 'the erased region is one solid rectangle'
        assert box_area <= 0.4 * 28 * 28
    assert seen == {0, 1, 2, 3}
    if value == 'random':
        assert abs(float(out[:, mask].mean())) < 1.0  # noise on the normalised input's scale


def test_mosaic_transforms_reject_batches():
    with pytest.raises(ValueError, match=r'\(C, H, W\)'):
        da.CutOut(p=1.0)(torch.ones(2, 3, 56, 56))


# MixUp

def test_mixup_blends_images_and_labels_alike():
    mixup = da.MixUp(alpha=0.4, seed=0)
    labels = torch.arange(8)
    images = labels.float().view(8, 1, 1, 1).expand(8, 3, 56, 56).clone()
    lams = []
    for _ in range(20):
        mixed, labels_a, labels_b, lam = mixup(images, labels)
        assert mixed.shape == images.shape and labels_a.shape == labels_b.shape == (8,)
        assert 0.0 <= lam <= 1.0 and isinstance(lam, float)
        assert torch.equal(labels_a, labels) and sorted(labels_b.tolist()) == list(range(8))
        expected = lam * labels_a.float() + (1 - lam) * labels_b.float()
        assert torch.allclose(mixed[:, 0, 0, 0], expected, atol=1e-5)
        lams.append(lam)
    assert np.std(lams) > 0.05


def test_mixup_loss_and_disabled_mixing():
    logits = torch.randn(4, 6)
    a, b = torch.tensor([0, 1, 2, 3]), torch.tensor([5, 4, 3, 2])
    criterion = torch.nn.CrossEntropyLoss()
    assert torch.allclose(da.mixup_loss(criterion, logits, a, b, 0.3),
                          0.3 * criterion(logits, a) + 0.7 * criterion(logits, b))
    assert da.MixUp.loss is da.mixup_loss
    images = torch.randn(4, 3, 8, 8)
    for mixup in (da.MixUp(alpha=0.0), da.MixUp(alpha=1.0, p=0.0)):
        mixed, labels_a, labels_b, lam = mixup(images, a)
        assert lam == 1.0 and torch.equal(mixed, images) and torch.equal(labels_a, labels_b)
    with pytest.raises(ValueError, match='labels'):
        da.MixUp()(images, a[:3])


def test_mixup_is_reproducible():
    images, labels = torch.randn(6, 3, 8, 8), torch.arange(6)
    first = da.MixUp(alpha=1.0, seed=4)(images, labels)
    again = da.MixUp(alpha=1.0, seed=4)(images, labels)
    assert first[3] == again[3] and torch.equal(first[0], again[0]) and torch.equal(first[2], again[2])


# named pipelines

def test_every_named_pipeline_builds_and_runs():
    assert da.AUGMENTATION_NAMES == ('none', 'standard', 'asymmetry_preserving', 'strong', 'robust')
    assert da.DEFAULT_AUGMENTATION in da.AUGMENTATION_NAMES
    assert da.get_augmentation_pipeline('none') is None
    assert isinstance(da.get_augmentation_pipeline('asymmetry_preserving'), da.AsymmetryPreservingAugmentation)
    assert type(da.get_augmentation_pipeline('standard')) is da.FacialPalsyAugmentation
    assert type(da.get_augmentation_pipeline('robust')) is da.RobustAugmentation
    for name in PHOTO_PIPELINES + ('robust',):
        transform = da.get_augmentation_pipeline(name, seed=0)
        image, points = transform(make_photo(), LANDMARKS)
        assert image.shape == (SIZE, SIZE, 3) and points.shape == (5, 2)
        assert (transform.mosaic_transform is not None) == (name == 'strong')
        assert repr(transform).startswith(type(transform).__name__ + '(')
    strong = da.get_augmentation_pipeline('strong', seed=0).mosaic_transform
    assert [type(t) for t in strong.transforms] == [da.CutOut, da.RandomErasing]
    assert strong(torch.zeros(3, 56, 56)).shape == (3, 56, 56)


def test_pipeline_keyword_arguments_reach_their_parts():
    still = da.get_augmentation_pipeline('asymmetry_preserving', max_rotation=0.0, scale=(1.0, 1.0), max_shift=0.0,
                                         brightness=0.0, contrast=0.0, gamma=0.0, saturation=0.0, blur=0.0)
    image, points = still(make_photo(), LANDMARKS)
    np.testing.assert_array_equal(image, make_photo())
    np.testing.assert_array_equal(points, LANDMARKS)
    strong = da.get_augmentation_pipeline('strong', cutout_p=1.0, cutout_size=1.0, cutout_value=-9.0, erasing_p=0.0,
                                          seed=0)
    assert int((strong.mosaic_transform(torch.zeros(3, 56, 56)) == -9.0).sum()) > 0
    assert da.get_augmentation_pipeline('Asymmetry-Preserving') is not None
    with pytest.raises(TypeError):
        da.get_augmentation_pipeline('standard', no_such_option=1)


def test_unknown_pipeline_name_lists_the_choices():
    with pytest.raises(UserError) as info:
        da.get_augmentation_pipeline('hflip')
    message = str(info.value)
    assert 'hflip' in message and all(name in message for name in da.AUGMENTATION_NAMES)


def test_names_work_as_argparse_choices():
    parser = argparse.ArgumentParser()
    parser.add_argument('--augmentation', choices=da.AUGMENTATION_NAMES, default=da.DEFAULT_AUGMENTATION)
    assert parser.parse_args([]).augmentation == 'robust'
    assert parser.parse_args(['--augmentation', 'strong']).augmentation == 'strong'
    with pytest.raises(SystemExit):
        parser.parse_args(['--augmentation', 'flip'])


# mirror with side swap (--flip_swap_side)

def test_flipped_sample_is_the_mirrored_face_with_the_side_swapped(synthetic_dataset):
    dataset = fpd.FacialPalsyDataset(synthetic_dataset.root, synthetic_dataset.csv, split='train',
                                     cache_dir=synthetic_dataset.cache_dir, verbose=False)
    plain = da.SideLabelled(dataset)
    flipped = da.SideLabelled(dataset, flip_probability=1.0)
    swap = {'left': 'right', 'right': 'left', 'none': 'none'}
    region = 28
    for index in range(4):
        image, label, side = plain[index]
        mirror_image, mirror_label, mirror_side = flipped[index]
        assert mirror_label == label == dataset.labels[index]
        assert annotations.SIDE_CLASSES[side] == dataset.sides[index]
        assert annotations.SIDE_CLASSES[mirror_side] == swap[dataset.sides[index]]
        assert not torch.equal(image, mirror_image)  # the two halves of the face differ
        # the mirrored face's image-left crops are the mirrors of the original image-right crops, and vice versa
        top, bottom = image[:, :region], image[:, region:]
        expected = torch.cat([
            torch.cat([bottom[..., :region].flip(-1), bottom[..., region:].flip(-1)], dim=-1),
            torch.cat([top[..., :region].flip(-1), top[..., region:].flip(-1)], dim=-1)], dim=1)
        assert torch.equal(mirror_image, expected)

    # and it is the mosaic of the mirrored face square read as usual
    face, points = dataset._face(0)
    mirrored_face, mirrored_points = da.mirror_face(face, points)
    assert np.array_equal(mirrored_face, face[:, ::-1])
    assert np.allclose(mirrored_points[0], [face.shape[1] - points[1, 0], points[1, 1]])
    direct = fpd.to_tensor(fpd.network_image_from_face(mirrored_face, mirrored_points, dataset.preprocess),
                           dataset.preprocess)
    assert torch.equal(flipped[0][0], direct)


def test_flip_comes_before_the_augmentation_and_keeps_its_mosaic_transform():
    calls = []

    def augmentation(image, points):
        calls.append((image.copy(), np.asarray(points).copy()))
        return image, points
    augmentation.mosaic_transform = lambda tensor: tensor

    face = np.zeros((8, 8, 3), dtype=np.uint8)
    face[:, :2] = 255
    points = np.array([[2, 3], [6, 3], [4, 5], [2, 7], [6, 7]], dtype=np.float32)
    mirror = da.MirrorThen(augmentation)
    assert mirror.mosaic_transform is augmentation.mosaic_transform
    out_image, out_points = mirror(face, points)
    seen_image, seen_points = calls[0]
    assert seen_image[:, -2:].min() == 255 and seen_image[:, :-2].max() == 0  # it saw the mirrored face
    assert seen_points.tolist() == [[2, 3], [6, 3], [4, 5], [2, 7], [6, 7]]  # symmetric points map onto each other
