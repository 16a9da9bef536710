"""visualize_attention.py: attention laid out on the mosaic and the photo, hooks removed, the files the CLI writes."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import Model
import synthetic_faces
import annotations
import checkpoints
import utils
import attention_figures as af
import visualize_attention as va
from inference import FacialPalsyPredictor
from facial_palsy_dataset import REGION_NAMES, FaceLandmarks, default_preprocess

# 56x56 input, 7-pixel patches, three levels: 8x8, 4x4 and 2x2 tokens in 4x4, 2x2 and 1x1 windows of 2x2 tokens
TINY_MODEL_ARGS = Model.model_args_from(image_size=56, patch_size=7, num_classes=6, dim=16, heads=1,
                                        num_hierarchies=3, block_repeats=[1, 1, 2])


def save_checkpoint(path, preprocess: dict, image_size: int = 56):
    model_args = {**TINY_MODEL_ARGS, 'image_size': image_size}
    torch.manual_seed(0)
    model = Model.build_model(model_args)
    return checkpoints.save_checkpoint({'model': model.state_dict(), 'model_args': model_args, 'preprocess': preprocess,
                                  'num_classes': 6, 'class_names': annotations.grade_names(6)}, path)


class FixedDetector:
    """Stands in for MTCNN: the same face on every photo."""

    def __init__(self, points: np.ndarray, box: np.ndarray):
        self.points, self.box = points, box

    def detect_images(self, images):
        return [FaceLandmarks(self.points.copy(), self.box.copy(), 'detected', 0.99) for _ in images]


def uniform_maps(windows: int, tokens: int, heads: int = 1) -> np.ndarray:
    n = tokens * tokens
    return np.full((windows * windows, heads, n, n), 1.0 / n, dtype=np.float32)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """Checkpoints (56x56 regions, 28x28 regions, 56x56 face), a drawn face with its true landmarks, a blank photo
    and a corrupt JPEG."""
    base = tmp_path_factory.mktemp('attention')
    rng = np.random.default_rng(3)
    face, points, _ = synthetic_faces.render_face(synthetic_faces.sample_identity(rng),
                                                  synthetic_faces.sample_palsy(3, rng),
                                                  synthetic_faces.sample_photo(rng), image_size=160)
    photos = base / 'photos'
    photos.mkdir()
    Image.fromarray(face).save(photos / 'face.jpg')
    Image.fromarray(np.full((96, 112, 3), 128, dtype=np.uint8)).save(photos / 'blank.png')
    (photos / 'broken.jpg').write_bytes((photos / 'face.jpg').read_bytes()[:300])  # cut short by a bad copy
    return {
        'regions': save_checkpoint(base / 'regions.pth', default_preprocess()),
        'small': save_checkpoint(base / 'small.pth', default_preprocess(region_size=14), image_size=28),
        'face_mode': save_checkpoint(base / 'face.pth', default_preprocess('face')),
        'photos': photos, 'face': face, 'points': points,
        'detector': FixedDetector(points, np.array([35, 30, 125, 140], dtype=np.float32)),
    }


# attention_to_mosaic on hand-made maps

def test_a_window_attending_to_one_token_lights_only_its_cell():
    stage0 = uniform_maps(windows=4, tokens=2)
    stage0[5] = 0.0
    stage0[5, :, :, 0] = 1.0  # window (row 1, col 1): every query looks at its token 0
    maps = [[stage0], [uniform_maps(2, 2)], [uniform_maps(1, 2)]]
    stages = va.attention_to_mosaic(maps, input_size=56, patch_size=7)
    assert [s.shape for s in stages] == [(1, 56, 56)] * 3
    heat = stages[0][0]
    # window (1, 1) covers tokens (2..3, 2..3) of the 8x8 grid, each 7x7 pixels; token 0 is its top-left one
    expected = np.ones((56, 56), dtype=np.float32)
    expected[14:28, 14:28] = 0.0
    expected[14:21, 14:21] = 4.0
    np.testing.assert_array_equal(heat, expected)
    np.testing.assert_allclose(stages[1][0], 1.0)


def test_heads_are_averaged_and_kept_apart_with_per_head():
    stage2 = np.zeros((1, 2, 4, 4), dtype=np.float32)
    stage2[0, 0, :, 1] = 1.0  # head 0: the top-right token (left mouth corner)
    stage2[0, 1, :, 2] = 1.0  # head 1: the bottom-left token (right eye)
    maps = [[uniform_maps(4, 2)], [uniform_maps(2, 2)], [stage2, stage2]]
    mean = va.attention_to_mosaic(maps, 56, 7)[2]
    per_head = va.attention_to_mosaic(maps, 56, 7, per_head=True)[2]
    assert mean.shape == (2, 56, 56) and per_head.shape == (2, 2, 56, 56)
    # the last level has one 2x2 window: each token is one 28x28 quadrant = one facial region
    np.testing.assert_allclose(va.quadrant_means(mean[0]), [0.0, 2.0, 2.0, 0.0])
    np.testing.assert_allclose(va.quadrant_means(per_head[0, 0]), [0.0, 4.0, 0.0, 0.0])
    np.testing.assert_allclose(va.quadrant_means(per_head[1, 1]), [0.0, 0.0, 4.0, 0.0])
    assert dict(zip(REGION_NAMES, va.quadrant_means(per_head[0, 0])))['left_mouth'] == 4.0


def test_recorder_output_with_a_batch_axis_is_accepted_and_batches_are_refused():
    one = va.attention_to_mosaic([[torch.full((1, 1, 1, 4, 4), 0.25)]], input_size=14, patch_size=7)
    np.testing.assert_allclose(one[0], 1.0)
    with pytest.raises(ValueError, match='one image'):
        va.attention_to_mosaic([[np.full((2, 1, 1, 4, 4), 0.25)]], input_size=14, patch_size=7)


def test_maps_that_do_not_tile_the_token_grid_are_refused():
    with pytest.raises(ValueError, match='do not tile'):
        va.attention_to_mosaic([[uniform_maps(windows=2, tokens=2)]], input_size=56, patch_size=7)
    with pytest.raises(ValueError, match='not a square'):
        va.attention_to_mosaic([[np.full((3, 1, 4, 4), 0.25)]], input_size=56, patch_size=7)


# from the mosaic to the photo

def test_each_quadrant_lands_in_its_crop_box_on_the_photo():
    heat = np.zeros((56, 56), dtype=np.float32)
    for value, (row, col) in enumerate(af.MOSAIC_QUADRANTS, start=1):
        heat[row * 28:(row + 1) * 28, col * 28:(col + 1) * 28] = value
    boxes = np.array([[10, 10, 40, 40], [12, 60, 42, 90], [60, 10, 90, 40], [62, 60, 92, 90]], dtype=np.float32)
    photo = af.mosaic_to_photo(heat, boxes, (100, 120, 3))
    assert photo.shape == (100, 120)
    for value, (x0, y0, x1, y1) in enumerate(boxes.astype(int), start=1):
        np.testing.assert_array_equal(photo[y0:y1, x0:x1], value)
    inside = np.zeros((100, 120), dtype=bool)
    for x0, y0, x1, y1 in boxes.astype(int):
        inside[y0:y1, x0:x1] = True
    assert np.isnan(photo[~inside]).all()


def test_face_mode_turns_the_map_back_by_the_eye_angle():
    heat = np.zeros((56, 56), dtype=np.float32)
    heat[:, 28:] = 1.0  # the image-right half of the levelled face
    photo = af.mosaic_to_photo(heat, np.array([[20, 20, 80, 80]]), (100, 100), input_mode='face', angle=180.0)
    assert np.nanmean(photo[30:70, 22:45]) == pytest.approx(1.0)  # upside down: right half now on the left
    assert np.nanmean(photo[30:70, 55:78]) == pytest.approx(0.0)
    assert np.isnan(photo[:15]).all()


# the visualizer

def test_hooks_are_removed_and_maps_belong_to_the_graded_input(files):
    visualizer = va.AttentionVisualizer(files['regions'], device='cpu', detector=files['detector'])
    analysis = visualizer.analyse(files['face'])
    model = visualizer.model
    assert all(not module._forward_hooks for module in model.modules())
    assert all(module.fused for module in model.modules() if isinstance(module, Model.Attention))
    # the plain softmax path used while recording grades the photo exactly as the fused path does
    predictor = FacialPalsyPredictor(files['regions'], device='cpu', detector=files['detector'])
    expected = predictor.predict(files['face'])
    for grade, p in expected['probabilities'].items():
        assert analysis['probabilities'][grade] == pytest.approx(p, abs=1e-5)
    assert analysis['grade'] == expected['grade'] and analysis['status'] == 'ok'
    assert [len(blocks) for blocks in analysis['attention']] == [1, 1, 2]
    assert [m.shape for m in analysis['maps']] == [(1, 56, 56), (1, 56, 56), (2, 56, 56)]
    for stage, layout in zip(analysis['maps'], analysis['stages']):
        window = 56 // layout.windows
        cells = stage.reshape(len(stage), layout.windows, window, layout.windows, window)
        np.testing.assert_allclose(cells.mean(axis=(2, 4)), 1.0, atol=1e-5)  # each window's tokens average to 1
    assert analysis['attention_informative'] is True
    assert sum(analysis['region_attention'].values()) == pytest.approx(4.0, abs=1e-4)
    assert sum(analysis['region_saliency'].values()) == pytest.approx(1.0)
    assert analysis['saliency'].shape == (56, 56) and analysis['saliency'].min() >= 0
    assert analysis['saliency'].max() > 0
    assert np.asarray(analysis['region_boxes']).shape == (4, 4)
    assert all(p.grad is None for p in model.parameters())


def test_hooks_come_off_when_the_forward_pass_fails(files):
    model, _ = checkpoints.load_model(files['regions'])
    with pytest.raises(AssertionError):
        va.record_attention(model, torch.zeros(1, 3, 30, 30))
    assert all(not module._forward_hooks for module in model.modules())
    assert all(module.fused for module in model.modules() if isinstance(module, Model.Attention))


def test_one_token_windows_are_flagged_uniform_and_saliency_is_drawn(files, tmp_path):
    visualizer = va.AttentionVisualizer(files['small'], device='cpu', detector=files['detector'])
    assert [s.tokens for s in visualizer.stages] == [1, 1, 1] and all(s.trivial for s in visualizer.stages)
    analysis = visualizer.analyse(files['face'])
    for stage in analysis['maps']:
        np.testing.assert_allclose(stage, 1.0, atol=1e-6)
    assert analysis['attention_informative'] is False
    assert analysis['saliency'].shape == (28, 28) and analysis['saliency'].max() > 0
    path = va.save_figure(va.summary_figure(analysis, 'face.jpg'), tmp_path / 'summary.png')
    assert Image.open(path).size[0] > 500


def test_face_input_mode_maps_onto_the_face_square(files, tmp_path):
    visualizer = va.AttentionVisualizer(files['face_mode'], device='cpu', detector=files['detector'])
    analysis = visualizer.analyse(files['face'])
    assert analysis['input_mode'] == 'face' and tuple(analysis['region_attention']) == va.FACE_QUADRANT_NAMES
    (x0, y0, x1, y1), = np.round(analysis['region_boxes']).astype(int)
    photo_heat = af.mosaic_to_photo(analysis['stage_means'][-1], analysis['region_boxes'], files['face'].shape,
                                    'face', analysis['rotation'])
    seen = np.argwhere(np.isfinite(photo_heat))
    assert seen[:, 0].min() >= max(y0, 0) and seen[:, 0].max() < y1
    assert seen[:, 1].min() >= max(x0, 0) and seen[:, 1].max() < x1
    assert np.isfinite(photo_heat).sum() > 0.8 * (min(x1, 160) - max(x0, 0)) * (min(y1, 160) - max(y0, 0))
    for figure in (va.summary_figure(analysis), va.regions_figure(analysis)):
        assert va.save_figure(figure, tmp_path / 'figure.png').stat().st_size > 0
    arrays = va.attention_arrays(analysis)
    assert arrays['region_boxes'].shape == (1, 4)
    assert list(arrays['region_names']) == list(va.FACE_QUADRANT_NAMES)


# command line

def test_cli_single_photo_writes_every_figure_and_the_raw_maps(files, tmp_path, capsys):
    output_dir = tmp_path / 'attention_visualizations'
    results = va.main(['--model_path', str(files['regions']), '--image_path', str(files['photos'] / 'face.jpg'),
                       '--output_dir', str(output_dir), '--visualize_regions', '--device', 'cpu'])
    names = {'face_level0.png', 'face_level1.png', 'face_level2.png', 'face_summary.png', 'face_regions.png',
             'face_attention.npz', 'args.yaml'}
    assert {p.name for p in output_dir.iterdir()} == names
    for name in names - {'face_attention.npz', 'args.yaml'}:
        with Image.open(output_dir / name) as image:
            assert image.format == 'PNG' and min(image.size) > 200
    with np.load(output_dir / 'face_attention.npz', allow_pickle=False) as arrays:
        assert arrays['stage0_block0'].shape == (16, 1, 4, 4)   # 4x4 windows, 1 head, 2x2 tokens
        assert arrays['stage2_block1'].shape == (1, 4, 4, 4)    # 1 window, 4 heads
        assert arrays['stage2_maps'].shape == (2, 56, 56) and arrays['stage2_heads'].shape == (4, 56, 56)
        assert arrays['saliency'].shape == (56, 56) and arrays['network_image'].shape == (56, 56, 3)
        assert arrays['probabilities'].sum() == pytest.approx(1.0, abs=1e-5)
        assert list(arrays['grades']) == list(annotations.HB_GRADES)
        assert list(arrays['region_names']) == list(REGION_NAMES)
    analysis = results['analyses'][str(files['photos'] / 'face.jpg')]
    assert analysis['face_detected'] is True  # MTCNN finds the drawn face
    np.testing.assert_allclose(analysis['landmarks'], files['points'], atol=4)
    assert 'predicted HB' in capsys.readouterr().out


def test_cli_folder_skips_the_corrupt_file_and_lists_it(files, tmp_path, capsys):
    folder = tmp_path / 'photos'
    folder.mkdir()
    for name in ('blank.png', 'broken.jpg'):
        (folder / name).write_bytes((files['photos'] / name).read_bytes())
    output_dir = tmp_path / 'out'
    results = va.main(['--model_path', str(files['regions']), '--image_dir', str(folder),
                       '--output_dir', str(output_dir), '--device', 'cpu'])
    assert list(results['outputs']) == [str(folder / 'blank.png')]
    skipped = pd.read_csv(output_dir / 'skipped.csv')
    assert list(skipped['path']) == [str(folder / 'broken.jpg')]
    assert 'truncated' in skipped['reason'][0]
    assert f'skipped {folder / "broken.jpg"}' in capsys.readouterr().out
    summary = pd.read_csv(output_dir / 'attention_summary.csv')
    assert list(summary['status']) == ['no_face_fallback']  # no face: graded on template landmarks
    assert (output_dir / 'blank_summary.png').is_file() and not (output_dir / 'blank_regions.png').exists()
    assert not any(p.name.startswith('broken') for p in output_dir.iterdir())


def test_unreadable_single_photo_is_one_clear_error(files, tmp_path):
    broken = files['photos'] / 'broken.jpg'
    with pytest.raises(utils.UserError, match='broken.jpg'):
        va.main(['--model_path', str(files['regions']), '--image_path', str(broken),
                 '--output_dir', str(tmp_path / 'out'), '--device', 'cpu'])
    assert not (tmp_path / 'out').exists() or not any((tmp_path / 'out').iterdir())


def test_earlier_outputs_in_the_photo_folder_are_not_drawn_again(tmp_path):
    for name in ('a.jpg', 'a.png', 'a_summary.png', 'a_level2.png', 'a_attention.npz', 'skipped.csv', '.hidden'):
        (tmp_path / name).write_bytes(b'x')
    photos, earlier = va.list_photos(tmp_path, tmp_path)
    assert [p.name for p in photos] == ['a.jpg', 'a.png']
    assert len(earlier) == 4
    assert va.output_stems(photos) == {tmp_path / 'a.jpg': 'a_jpg', tmp_path / 'a.png': 'a_png'}
    # a separate output folder: every file of the photo folder is someone's photo
    assert len(va.list_photos(tmp_path, tmp_path / 'out')[0]) == 6


def test_a_picture_the_script_did_not_draw_is_never_replaced(files, tmp_path):
    """A user's PNG with an output's name is refused before any drawing; the script's own figures are refreshed."""
    output_dir = tmp_path / 'attention'
    argv = ['--model_path', str(files['regions']), '--image_path', str(files['photos'] / 'face.jpg'),
            '--output_dir', str(output_dir), '--device', 'cpu']
    va.main(argv)
    va.main(argv)  # its own earlier figures: refreshed
    mine = output_dir / 'face_summary.png'
    photo = (files['photos'] / 'face.jpg').read_bytes()
    mine.write_bytes(photo)
    with pytest.raises(utils.UserError, match='face_summary.png exists and was not written by this script'):
        va.main(argv)
    assert mine.read_bytes() == photo
    va.main([*argv, '--overwrite'])
    assert mine.read_bytes() != photo
