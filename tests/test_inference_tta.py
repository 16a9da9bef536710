"""Test-time augmentation, ensembles of checkpoints and the out-of-distribution score, in the predictor, the
evaluation, folder inference and the attention maps."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import annotations
import checkpoints
import demo_inference as demo
import ensemble
import evaluate_facial_palsy as evaluate
import Model
import ood
import utils
import visualize_attention as attention
from data_augmentation import mirror_face
from facial_palsy_dataset import FaceLandmarks, default_preprocess, make_input
from inference import FacialPalsyPredictor

MODEL_ARGS = Model.model_args_from(image_size=56, patch_size=7, num_classes=6, dim=16, heads=1, num_hierarchies=3,
                                   block_repeats=[1, 1, 1], num_side_classes=3)
POINTS = np.array([[40, 52], [82, 50], [61, 72], [45, 94], [78, 92]], dtype=np.float32)
BOX = np.array([18, 22, 104, 118], dtype=np.float32)


def save_checkpoint(path: Path, seed: int = 0, model_args: dict | None = None, **extra) -> Path:
    """A checkpoint in the training format with random weights (``seed``), with a side head by default."""
    model_args = dict(model_args or MODEL_ARGS)
    torch.manual_seed(seed)
    model = Model.build_model(model_args)
    num_classes = model_args['num_classes']
    state = {'model': model.state_dict(), 'epoch': 1, 'model_args': model_args, 'preprocess': default_preprocess(),
             'class_names': annotations.grade_names(num_classes), **extra}
    if model_args.get('num_side_classes'):
        state['side_names'] = list(annotations.SIDE_CLASSES)
    path.parent.mkdir(parents=True, exist_ok=True)
    return checkpoints.save_checkpoint(state, path)


def feature_width(model_args: dict | None = None) -> int:
    model = Model.build_model(dict(model_args or MODEL_ARGS)).eval()
    with torch.no_grad():
        return int(ood.pre_logit_features(model, torch.zeros(1, 3, 56, 56)).shape[1])


def random_stats(seed: int = 0, threshold: float | None = None) -> dict:
    """OOD statistics fitted on random features of the network's width; ``threshold`` replaces the fitted one."""
    rng = np.random.default_rng(seed)
    width = feature_width()
    stats = ood.fit_ood(rng.normal(size=(60, width)), rng.integers(0, 6, 60), rng.normal(size=(30, width)))
    if threshold is not None:
        stats['threshold'] = float(threshold)
    return stats


class FixedDetector:
    """Stands in for MTCNN: the same face on every photo."""

    def detect_images(self, images):
        return [FaceLandmarks(POINTS.copy(), BOX.copy(), 'detected', 0.99) for _ in images]


def photo(seed: int = 0) -> np.ndarray:
    """A photo whose two sides differ (a gradient plus noise), so mirroring changes what the network sees."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 160, 120)[None, :, None]
    return np.clip(rng.integers(0, 90, (140, 120, 3)) + ramp, 0, 255).astype(np.uint8)


def predictor(model_path, tta: str = 'none') -> FacialPalsyPredictor:
    return FacialPalsyPredictor(model_path, device='cpu', detector=FixedDetector(), tta=tta)


def probabilities(result: dict) -> np.ndarray:
    return np.array(list(result['probabilities'].values()))


def sides(result: dict) -> np.ndarray:
    return np.array([result['side_probabilities'][s] for s in annotations.SIDE_CLASSES])


@pytest.fixture(scope='module')
def model_a(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp('members') / 'a.pth', seed=0)


@pytest.fixture(scope='module')
def model_b(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp('members') / 'b.pth', seed=1)


# test-time augmentation

def test_original_view_is_the_training_input(model_a):
    graded = predictor(model_a, 'mirror_shift')
    image = photo()
    _infos, views = graded.prepare_views([image])
    assert len(views) == len(graded.views) == 10 and graded.views[0].identity
    torch.testing.assert_close(views[0][0], make_input(image, POINTS, graded.preprocess, box=BOX))


def test_mirror_view_is_the_mirrored_mosaic_in_order(model_a):
    """The mirrored view's mosaic keeps [left eye | left mouth] over [right eye | right mouth]: its image-left eye
    crop is the mirror of the original image-right eye crop, and so on."""
    graded = predictor(model_a, 'mirror')
    original, mirrored = (batch[0] for batch in graded.prepare_views([photo()])[1])
    half = original.shape[-1] // 2
    top, bottom = slice(0, half), slice(half, 2 * half)
    for row_mirrored, row_original in ((top, bottom), (bottom, top)):
        for column in (slice(0, half), slice(half, 2 * half)):
            torch.testing.assert_close(mirrored[:, row_mirrored, column],
                                       original[:, row_original, column].flip(-1))


def test_mirror_tta_averages_the_photo_and_its_mirror_with_sides_swapped_back(model_a):
    plain, tta = predictor(model_a, 'none'), predictor(model_a, 'mirror')
    image = photo()
    result = tta.predict(image)
    original, mirrored = tta.prepare_views([image])[1]
    on_original = plain.photo_results(plain.grade([original]))[0]
    on_mirror = plain.photo_results(plain.grade([mirrored]))[0]
    np.testing.assert_allclose(probabilities(on_original), probabilities(plain.predict(image)), atol=1e-6)
    np.testing.assert_allclose(probabilities(result), (probabilities(on_original) + probabilities(on_mirror)) / 2,
                               atol=1e-6)
    swapped = sides(on_mirror)[[1, 0, 2]]  # left <-> right, none stays
    np.testing.assert_allclose(sides(result), (sides(on_original) + swapped) / 2, atol=1e-6)
    assert not np.allclose(sides(result), (sides(on_original) + sides(on_mirror)) / 2, atol=1e-4)
    assert result['grade_index'] == int(probabilities(result).argmax())


def test_shift_views_change_the_input_and_are_all_averaged(model_a):
    graded = predictor(model_a, 'mirror_shift')
    views = [batch[0] for batch in graded.prepare_views([photo()])[1]]
    for k in range(len(views)):
        for j in range(k):
            assert not torch.allclose(views[k], views[j]), (graded.views[k].name, graded.views[j].name)
    face, points = np.zeros((224, 224, 3), dtype=np.uint8), POINTS * 2
    moved = ensemble.View(shift=(2, -2))(face, points)[1]
    np.testing.assert_allclose(moved - points, np.tile([2, -2], (5, 1)))
    # the face input mode crops the whole square: the image moves instead of the points
    image = np.arange(224 * 224 * 3, dtype=np.uint8).reshape(224, 224, 3)
    shifted, same = ensemble.View(shift=(2, 2), input_mode='face')(image, points)
    np.testing.assert_array_equal(same, points)
    np.testing.assert_array_equal(shifted[10:20, 10:20], image[12:22, 12:22])


def test_mirror_view_reuses_mirror_face():
    face, points = photo()[:112, :112], POINTS
    expected_image, expected_points = mirror_face(face, points)
    image, moved = ensemble.View(mirrored=True)(face, points)
    np.testing.assert_array_equal(image, expected_image)
    np.testing.assert_allclose(moved, expected_points)


def test_ordinal_checkpoint_decodes_the_averaged_distribution_by_its_median(tmp_path):
    path = save_checkpoint(tmp_path / 'ordinal.pth', prediction='ordinal_median')
    result = predictor(path, 'mirror').predict(photo())
    cumulative = np.cumsum(probabilities(result))
    assert result['grade_index'] == int(np.argmax(cumulative >= 0.5))


def test_unknown_tta_and_flow_tta_are_refused():
    with pytest.raises(utils.UserError, match='choose one of none, mirror, mirror_shift'):
        ensemble.check_tta('flip')
    with pytest.raises(utils.UserError, match='not available for input_mode flow'):
        ensemble.check_tta('mirror', 'flow')
    assert ensemble.check_tta(None) == ensemble.DEFAULT_TTA


# ensembles

def test_two_copies_of_one_checkpoint_give_its_probabilities(model_a, tmp_path):
    copy = tmp_path / 'copy.pth'
    shutil.copy(model_a, copy)
    single = predictor(model_a).predict(photo())
    pair = predictor([model_a, copy])
    assert pair.model_paths == [str(model_a), str(copy)]
    np.testing.assert_allclose(probabilities(pair.predict(photo())), probabilities(single), atol=1e-6)


def test_two_checkpoints_are_averaged(model_a, model_b):
    image = photo()
    first, second = predictor(model_a).predict(image), predictor(model_b).predict(image)
    both = predictor([model_a, model_b]).predict(image)
    assert not np.allclose(probabilities(first), probabilities(second))
    np.testing.assert_allclose(probabilities(both), (probabilities(first) + probabilities(second)) / 2, atol=1e-6)
    np.testing.assert_allclose(sides(both), (sides(first) + sides(second)) / 2, atol=1e-6)


def test_members_that_predict_differently_are_refused_naming_the_file(model_a, tmp_path):
    three = save_checkpoint(tmp_path / 'three_classes.pth', model_args={**MODEL_ARGS, 'num_classes': 3})
    with pytest.raises(utils.UserError, match=r'three_classes\.pth: its num_classes \(3\) differs'):
        predictor([model_a, three])
    ordinal = save_checkpoint(tmp_path / 'ordinal.pth', prediction='ordinal_median')
    with pytest.raises(utils.UserError, match=r'ordinal\.pth: its prediction rule'):
        predictor([model_a, ordinal])


def test_corrupt_member_is_skipped_and_recorded(model_a, model_b, tmp_path, capsys):
    corrupt = tmp_path / 'corrupt.pth'
    corrupt.write_bytes(model_a.read_bytes()[:500])
    graded = predictor([model_a, corrupt, model_b])
    assert graded.model_paths == [str(model_a), str(model_b)]
    assert [path for path, _ in graded.skipped_models] == [str(corrupt)]
    assert f'skipped checkpoint: {corrupt}' in capsys.readouterr().out
    with pytest.raises(utils.UserError, match='none of the 2 checkpoints could be opened'):
        predictor([corrupt, tmp_path / 'missing.pth'])
    with pytest.raises(utils.UserError, match='corrupt.pth'):
        predictor(corrupt)


def test_cv_save_folder_and_folder_of_checkpoints_are_accepted(model_a, model_b, tmp_path, capsys):
    cv = tmp_path / 'cv'
    for fold, source in enumerate((model_a, model_b)):
        (cv / f'fold_{fold}').mkdir(parents=True)
        shutil.copy(source, cv / f'fold_{fold}' / 'best_model.pth')
        shutil.copy(source, cv / f'fold_{fold}' / 'last.pth')
    graded = predictor(cv)
    assert graded.model_paths == [str(cv / 'fold_0' / 'best_model.pth'), str(cv / 'fold_1' / 'best_model.pth')]
    assert '2 checkpoint(s) taken: fold_0/best_model.pth, fold_1/best_model.pth' in capsys.readouterr().out
    flat = tmp_path / 'flat'
    flat.mkdir()
    shutil.copy(model_a, flat / 'one.pth')
    shutil.copy(model_b, flat / 'two.pth')
    assert predictor(flat).model_paths == [str(flat / 'one.pth'), str(flat / 'two.pth')]
    run = tmp_path / 'run'  # a training run's save folder: its best model, not last.pth or epoch_N.pth
    run.mkdir()
    for name in ('best_model.pth', 'last.pth', 'epoch_10.pth'):
        shutil.copy(model_a, run / name)
    assert predictor(run).model_paths == [str(run / 'best_model.pth')]
    (tmp_path / 'empty').mkdir()
    with pytest.raises(utils.UserError, match='a folder without checkpoints'):
        predictor(tmp_path / 'empty')


# out-of-distribution score

def test_checkpoint_without_statistics_scores_nan_and_flags_nothing(model_a, capsys):
    result = predictor(model_a).predict(photo())
    assert np.isnan(result['ood_score']) and result['ood_flag'] is False
    assert 'no OOD statistics' in capsys.readouterr().out


def test_ood_score_and_flag_of_one_checkpoint_and_of_an_ensemble(tmp_path):
    stats = random_stats()
    with_stats = save_checkpoint(tmp_path / 'ood.pth', ood=stats)
    image = photo()
    graded = predictor(with_stats)
    result = graded.predict(image)
    features = ood.pre_logit_features(graded.model, graded.prepare([image])[1])
    assert result['ood_score'] == pytest.approx(float(ood.ood_score(stats, features)[0]), rel=1e-5)
    assert result['ood_flag'] == (result['ood_score'] > 1)
    # on the original view only: TTA does not change the score
    assert predictor(with_stats, 'mirror').predict(image)['ood_score'] == pytest.approx(result['ood_score'])
    strict = save_checkpoint(tmp_path / 'strict.pth', ood={**stats, 'threshold': stats['threshold'] / 1e4})
    flagged = predictor(strict).predict(image)
    assert flagged['ood_flag'] is True and flagged['ood_score'] > 1
    both = predictor([with_stats, strict]).predict(image)
    assert both['ood_score'] == pytest.approx((result['ood_score'] + flagged['ood_score']) / 2, rel=1e-5)
    # a member without statistics does not pull the mean towards anything
    mixed = predictor([with_stats, save_checkpoint(tmp_path / 'plain.pth')]).predict(image)
    assert mixed['ood_score'] == pytest.approx(result['ood_score'], rel=1e-5)


def test_flagged_photo_carries_the_warning_on_its_overlay(tmp_path):
    stats = random_stats(threshold=1e-6)
    path = save_checkpoint(tmp_path / 'strict.pth', ood=stats)
    graded = predictor(path, 'mirror')
    image_path = tmp_path / 'face.png'
    Image.fromarray(photo()).save(image_path)
    result = graded.predict(image_path)
    assert result['ood_flag'] is True
    assert 'may not be trustworthy' in demo.format_result(result)
    from inference import ood_line
    assert ood_line(result).endswith(ensemble.OOD_WARNING)
    written = graded.save_overlay(image_path, result, tmp_path / 'overlay.png')
    assert written.stat().st_size > 0


# the scripts

def test_folder_csv_records_tta_models_and_ood(model_a, tmp_path, capsys):
    strict = save_checkpoint(tmp_path / 'strict.pth', ood=random_stats(threshold=1e-6))
    folder = tmp_path / 'photos'
    folder.mkdir()
    for k in range(2):
        Image.fromarray(photo(k)).save(folder / f'P{k}_a.png')
    output_csv = tmp_path / 'predictions.csv'
    result = demo.main(['--model_path', str(strict), str(model_a), '--image_dir', str(folder), '--output_csv',
                        str(output_csv), '--device', 'cpu', '--tta', 'mirror'])
    table = pd.read_csv(output_csv)
    assert list(table.columns[-2:]) == ['tta', 'models']
    assert (table['tta'] == 'mirror').all() and (table['models'] == f'{strict};{model_a}').all()
    assert table['ood_flag'].all() and (table['ood_score'] > 1).all()
    assert result['tta'] == 'mirror'
    out = capsys.readouterr().out
    assert 'OOD: 2 of 2 graded photos flagged' in out and 'ensemble of 2 checkpoints, TTA mirror' in out


def test_flags_default_to_the_one_tta_constant():
    for parser in (demo.get_args_parser(), evaluate.get_args_parser(), attention.get_args_parser()):
        tta = next(action for action in parser._actions if action.dest == 'tta')
        assert tta.default == ensemble.DEFAULT_TTA and tuple(tta.choices) == ensemble.TTA_MODES


def test_attention_maps_of_an_ensemble_with_tta_say_whose_maps_they_are(model_a, model_b, tmp_path):
    visualizer = attention.AttentionVisualizer([model_a, model_b], device='cpu', detector=FixedDetector(),
                                               tta='mirror')
    image_path = tmp_path / 'face.png'
    Image.fromarray(photo()).save(image_path)
    paths, analysis = visualizer.visualize_and_analyse(image_path, tmp_path / 'maps')
    both = predictor([model_a, model_b], 'mirror').predict(image_path)
    np.testing.assert_allclose(probabilities(analysis), probabilities(both), atol=1e-6)
    assert analysis['grading_note'] == ('grade: the average over 2 TTA views (mirror) x 2 checkpoints; maps: the '
                                        'original view of the first checkpoint (a.pth)')
    assert np.isnan(analysis['ood_score']) and analysis['tta'] == 'mirror'
    assert all(Path(p).exists() for p in paths)
    with np.load(tmp_path / 'maps' / 'face_attention.npz') as arrays:
        assert np.isnan(arrays['ood_score'])


@pytest.fixture(scope='module')
def small_dataset(tmp_path_factory) -> tuple[Path, Path, Path]:
    """Eight test photos of four subjects with their landmarks in the CSV (MTCNN finds no face in noise, so the
    annotated points are used)."""
    root = tmp_path_factory.mktemp('tta_data')
    rows = []
    for k in range(8):
        name = f'S{k // 2}_{k % 2}.png'
        Image.fromarray(photo(10 + k)).save(root / name)
        row = {'image_path': name, 'grade': k % 6, 'side': ('left', 'right')[k % 2], 'split': 'test',
               'subject': f'S{k // 2}'}
        row.update(dict(zip(annotations.LANDMARK_COLUMNS, POINTS.reshape(-1).tolist())))
        rows.append(row)
    csv_path = root / 'annotation.csv'
    pd.DataFrame(rows).to_csv(csv_path, index=False)
    return root, csv_path, root / 'cache'


def evaluate_args(dataset, model_paths, output_dir, *extra) -> list[str]:
    root, csv_path, cache = dataset
    return ['--model_path', *map(str, model_paths), '--data_root', str(root), '--test_csv', str(csv_path),
            '--cache_dir', str(cache), '--output_dir', str(output_dir), '--n_boot', '20', '--device', 'cpu',
            '--batch_size', '4', *extra]


def test_evaluation_records_tta_members_and_ood_flags(small_dataset, model_a, tmp_path, capsys):
    stats = random_stats()
    scored = save_checkpoint(tmp_path / 'scored.pth', ood={**stats, 'threshold': 1.0})
    first = evaluate.main(evaluate_args(small_dataset, [scored], tmp_path / 'raw'))
    distances = first['predictions']['ood_score'].to_numpy()
    assert np.isfinite(distances).all()
    # a threshold between the photos' distances flags some of them
    threshold = float(np.sort(distances)[len(distances) // 2 - 1] + np.sort(distances)[len(distances) // 2]) / 2
    split = save_checkpoint(tmp_path / 'split.pth', ood={**stats, 'threshold': threshold})
    output_dir = tmp_path / 'out'
    result = evaluate.main(evaluate_args(small_dataset, [split, model_a], output_dir, '--tta', 'mirror'))
    payload = json.loads((output_dir / 'metrics.json').read_text())
    assert payload['tta'] == 'mirror' and payload['tta_views'] == ['original', 'mirror']
    assert payload['models'] == [str(split), str(model_a)] and payload['skipped_models'] == []
    table = pd.read_csv(output_dir / 'predictions.csv')
    # the ensemble's score is the mean of its members': model_a has none, so it is split.pth's alone
    np.testing.assert_allclose(table['ood_score'], distances / threshold, rtol=1e-4)
    flagged = table['ood_flag'].to_numpy(dtype=bool)
    assert flagged.sum() == payload['ood']['n_flagged'] == len(table) // 2
    assert payload['ood']['unflagged']['n'] == len(table) - flagged.sum()
    unflagged_accuracy = table.loc[~flagged, 'correct'].mean()
    assert payload['ood']['unflagged']['metrics']['accuracy']['value'] == pytest.approx(unflagged_accuracy)
    assert f'OOD: {flagged.sum()} of {len(table)} photos flagged' in capsys.readouterr().out
    assert result['metrics']['ood']['n_scored'] == len(table)


def test_evaluation_tta_matches_the_predictor_and_keeps_plain_defaults(small_dataset, model_a, tmp_path):
    plain = evaluate.main(evaluate_args(small_dataset, [model_a], tmp_path / 'plain'))
    payload = plain['metrics']
    assert payload['tta'] == 'none' and payload['models'] == [str(model_a)]
    assert payload['ood']['n_scored'] == 0 and 'unflagged' not in payload['ood']
    assert plain['predictions']['ood_score'].isna().all() and not plain['predictions']['ood_flag'].any()
    mirrored = evaluate.main(evaluate_args(small_dataset, [model_a], tmp_path / 'mirror', '--tta', 'mirror'))
    root = small_dataset[0]
    graded = FacialPalsyPredictor(model_a, device='cpu', tta='mirror', detector=AnnotatedDetector())
    for _, row in mirrored['predictions'].iterrows():
        expected = probabilities(graded.predict(root / Path(row['path']).name))
        np.testing.assert_allclose(row[[f'p_{g}' for g in annotations.HB_GRADES]].astype(float), expected,
                                   atol=1e-5)


class AnnotatedDetector:
    """The annotated points without a face box, as the evaluation's dataset falls back to them."""

    def detect_images(self, images):
        return [FaceLandmarks(POINTS.copy(), None, 'annotation') for _ in images]
