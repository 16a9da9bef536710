"""Rest / expression pairs at inference: a flow checkpoint grades a pair exactly as evaluation does, folders pair
their photos by a pairs CSV or by name, bad pairs are listed without stopping a folder run, a regions checkpoint
says the rest photo is unused, and the attention viewer draws a pair."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import annotations
import attention_figures as af
import checkpoints
import demo_inference as demo
import evaluate_facial_palsy
import Model
import ood
import train_facial_palsy
import utils
import visualize_attention as va
from _synthetic_checks import make_pairs_set
from facial_palsy_dataset import default_preprocess, load_image
from inference import (PAIR_STATUSES, FacialPalsyPredictor, PhotoPair, pair_by_name, pair_folder,
                       rest_to_expression)

TINY_MODEL_FLAGS = ('--dim', '16', '--heads', '1', '--block_repeats', '1', '1', '1')


@dataclass(frozen=True)
class FlowRun:
    root: Path          # the synthetic pairs: grade_N/<subject>_01.jpg, rest/grade_N/<subject>_01_rest.jpg
    csv: Path           # their annotation CSV (image_path, neutral_path, ...), paths relative to root
    cache_dir: Path     # landmark cache filled while preparing
    checkpoint: Path    # a tiny flow checkpoint trained one epoch on them
    regions: Path       # a tiny regions checkpoint (random weights)
    table: pd.DataFrame

    def pair(self, index: int) -> tuple[Path, Path]:
        """(rest photo, expression photo) of row ``index``."""
        row = self.table.iloc[index]
        return self.root / row['neutral_path'], self.root / row['image_path']


@pytest.fixture(scope='module')
def flow(tmp_path_factory) -> FlowRun:
    """12 synthetic subjects x 1 rest / expression pair at 128 px and a tiny flow checkpoint trained on them."""
    base = tmp_path_factory.mktemp('flow_inference')
    root, csv_path, cache_dir = make_pairs_set(base)
    save_dir = base / 'checkpoints'
    train_facial_palsy.main([
        '--input_mode', 'flow', '--data_root', str(root), '--train_csv', str(csv_path), '--val_csv', str(csv_path),
        '--cache_dir', str(cache_dir), '--save_dir', str(save_dir), '--log_dir', str(base / 'logs'),
        '--epochs', '1', '--batch_size', '4', '--device', 'cpu', '--augmentation', 'none', '--seed', '0',
        *TINY_MODEL_FLAGS])
    model_args = Model.model_args_from(image_size=56, patch_size=7, num_classes=6, dim=16, heads=1,
                                       num_hierarchies=3, block_repeats=[1, 1, 1])
    torch.manual_seed(0)
    regions = checkpoints.save_checkpoint(
        {'model': Model.build_model(model_args).state_dict(), 'epoch': 1, 'model_args': model_args,
         'preprocess': default_preprocess(), 'class_names': annotations.grade_names(6)}, base / 'regions.pth')
    return FlowRun(root=root, csv=csv_path, cache_dir=cache_dir, checkpoint=save_dir / 'best_model.pth',
                   regions=regions, table=pd.read_csv(csv_path))


@pytest.fixture(scope='module')
def predictor(flow) -> FacialPalsyPredictor:
    return FacialPalsyPredictor(flow.checkpoint, device='cpu')


def probabilities(result: dict) -> np.ndarray:
    return np.array(list(result['probabilities'].values()))


def grey_photo(path: Path) -> Path:
    """A flat grey photo: MTCNN finds no face on it."""
    Image.fromarray(np.full((128, 128, 3), 128, dtype=np.uint8)).save(path)
    return path


# grading one pair

def test_a_pair_is_graded_exactly_as_evaluation_grades_it(flow, predictor, tmp_path):
    """evaluate_facial_palsy.py on a one-pair CSV (its landmarks detected afresh, as inference detects them) and
    the predictor give the same probabilities and grade; the command line prints the grade and draws the pair."""
    one_row = tmp_path / 'one_pair.csv'
    flow.table.iloc[[4]].to_csv(one_row, index=False)
    evaluated = evaluate_facial_palsy.main([
        '--model_path', str(flow.checkpoint), '--data_root', str(flow.root), '--test_csv', str(one_row),
        '--split', 'all', '--cache_dir', str(tmp_path / 'fresh_cache'), '--output_dir', str(tmp_path / 'eval'),
        '--n_boot', '2', '--device', 'cpu'])
    expected = np.load(tmp_path / 'eval' / 'predictions.npz')['probabilities'][0]
    row = evaluated['predictions'].iloc[0]

    rest, expression = flow.pair(4)
    result = predictor.predict_pair(rest, expression)
    assert result['status'] == 'ok' and result['rest_face_detected'] and result['face_detected']
    assert result['path'] == str(expression) and result['rest_path'] == str(rest)
    np.testing.assert_allclose(probabilities(result), expected, atol=1e-5)
    assert result['grade'] == row['pred_grade'] and result['grade_index'] == row['pred_label']
    assert np.isfinite(result['symmetry']['asymmetry_index'])

    # two RGB arrays (frames of a clip) grade the same pair without files
    from_arrays = predictor.predict_pair(load_image(rest), load_image(expression))
    assert from_arrays['path'] is None and from_arrays['rest_path'] is None
    np.testing.assert_array_equal(probabilities(from_arrays), probabilities(result))

    overlay = tmp_path / 'pair.png'
    printed = demo.main(['--model_path', str(flow.checkpoint), '--image_path', str(expression), '--rest', str(rest),
                         '--output_path', str(overlay), '--device', 'cpu'])
    np.testing.assert_allclose(probabilities(printed['results'][0]), expected, atol=1e-5)
    with Image.open(overlay) as image:
        assert image.format == 'PNG' and image.size[0] > 1000  # expression photo, rest photo, mosaic, bars


def test_the_pair_overlay_carries_the_rest_regions_onto_the_expression_photo(flow, predictor):
    rest, expression = flow.pair(0)
    result = predictor.predict_pair(rest, expression)
    matrix = rest_to_expression(result['rest_landmarks'], result['landmarks'])
    moved = np.asarray(result['rest_landmarks']) @ matrix[:, :2].T + matrix[:, 2]
    # the eyes and the nose, which the alignment is fitted on, land near the expression photo's
    np.testing.assert_allclose(moved[:3], np.asarray(result['landmarks'])[:3], atol=3)


def test_flow_checkpoints_refuse_one_photo_and_tta_and_regions_ones_refuse_pairs(flow, predictor, capsys):
    _, expression = flow.pair(0)
    with pytest.raises(SystemExit) as exit_info:
        utils.run_cli(demo.main, ['--model_path', str(flow.checkpoint), '--image_path', str(expression),
                                  '--device', 'cpu'])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and 'rest photo is needed' in message and '--rest' in message
    with pytest.raises(utils.UserError, match='input_mode flow'):
        FacialPalsyPredictor(flow.checkpoint, device='cpu', tta='mirror')
    with pytest.raises(utils.UserError, match='--rest'):
        predictor.predict(expression)
    with pytest.raises(utils.UserError, match='reads single photos'):
        FacialPalsyPredictor(flow.regions, device='cpu').predict_pair(expression, expression)


def test_a_regions_checkpoint_says_the_rest_photo_is_unused(flow, tmp_path, capsys):
    rest, expression = flow.pair(1)
    result = demo.main(['--model_path', str(flow.regions), '--image_path', str(expression), '--rest', str(rest),
                        '--no_overlay', '--device', 'cpu'])
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if 'not used' in line]
    assert len(notes) == 1 and str(rest) in notes[0] and 'single photos' in notes[0]
    alone = FacialPalsyPredictor(flow.regions, device='cpu').predict(expression)
    assert 'rest_path' not in result['results'][0]
    np.testing.assert_array_equal(probabilities(result['results'][0]), probabilities(alone))


def test_an_ensemble_of_flow_checkpoints_scores_the_pair_out_of_distribution(flow, predictor, tmp_path):
    state = checkpoints.load_checkpoint(flow.checkpoint)
    rest, expression = flow.pair(2)
    rest_image, image = load_image(rest), load_image(expression)
    _, inputs = predictor.prepare_pairs([rest_image], [image])
    features = ood.pre_logit_features(predictor.model, inputs)
    rng = np.random.default_rng(0)
    width = features.shape[1]
    state['ood'] = ood.fit_ood(rng.normal(size=(60, width)), rng.integers(0, 6, 60), rng.normal(size=(30, width)))
    with_stats = checkpoints.save_checkpoint(state, tmp_path / 'with_ood.pth')
    both = FacialPalsyPredictor([flow.checkpoint, with_stats], device='cpu')
    result = both.predict_pair(rest_image, image)
    # the same weights twice: the ensemble's probabilities are the one checkpoint's
    np.testing.assert_allclose(probabilities(result), probabilities(predictor.predict_pair(rest, expression)),
                               atol=1e-6)
    assert result['ood_score'] == pytest.approx(float(ood.ood_score(state['ood'], features)[0]), rel=1e-5)
    assert result['ood_flag'] == (result['ood_score'] > 1)


# folders

def copy_pairs(flow: FlowRun, folder: Path, rows: dict[str, int], rest_folder: Path | None = None) -> None:
    """Copy the pairs of ``rows`` (new stem -> table row) into ``folder``; rest photos as ``<stem>_rest.jpg``
    beside them, or into ``rest_folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem, index in rows.items():
        rest, expression = flow.pair(index)
        shutil.copy(expression, folder / f'{stem}.jpg')
        shutil.copy(rest, (rest_folder or folder) / f'{stem}_rest.jpg')


def test_folder_pairs_photos_by_name_and_lists_what_it_cannot_grade(flow, predictor, tmp_path, capsys):
    folder = tmp_path / 'visit'
    copy_pairs(flow, folder, {'P001_0': 0, 'P001_1': 1, 'P002_0': 2})
    shutil.copy(flow.pair(3)[1], folder / 'P003_0.jpg')                       # no rest photo
    shutil.copy(flow.pair(4)[1], folder / 'P004_0.jpg')
    (folder / 'P004_0_rest.jpg').write_bytes(flow.pair(4)[0].read_bytes()[:300])  # a rest photo cut short
    grey_photo(folder / 'P005_0.png')                                        # a pair with no face
    grey_photo(folder / 'P005_0_rest.png')
    grey_photo(folder / 'P009_0_rest.png')                                   # a rest photo on its own
    output_csv = tmp_path / 'predictions.csv'
    result = demo.main(['--model_path', str(flow.checkpoint), '--image_dir', str(folder), '--output_csv',
                        str(output_csv), '--overlay_dir', str(tmp_path / 'overlays'), '--batch_size', '1',
                        '--device', 'cpu'])
    table = pd.read_csv(output_csv, keep_default_na=False)
    assert 'rest_path' in table.columns and 'rest_face_detected' in table.columns
    assert list(table.columns[:4]) == ['path', 'status', 'grade_index', 'grade']
    rows = table.set_index('path')
    expression_photos = ['P001_0.jpg', 'P001_1.jpg', 'P002_0.jpg', 'P003_0.jpg', 'P004_0.jpg', 'P005_0.png']
    assert list(table['path']) == [str(folder / name) for name in expression_photos]
    for name in ('P001_0', 'P001_1', 'P002_0'):
        row = rows.loc[str(folder / f'{name}.jpg')]
        assert row['status'] == 'ok' and row['rest_path'] == str(folder / f'{name}_rest.jpg')
    status = {Path(path).name: value for path, value in zip(table['path'], table['status'])}
    assert status['P003_0.jpg'] == 'no_rest_photo' and status['P004_0.jpg'] == 'unreadable'
    assert status['P005_0.png'] == 'no_face_fallback'
    assert 'truncated' in rows.loc[str(folder / 'P004_0.jpg'), 'error']

    # in batches of one the folder run detects and grades each pair as a predictor of batch size 1 does
    graded = rows.loc[str(folder / 'P001_1.jpg')]
    alone = FacialPalsyPredictor(flow.checkpoint, device='cpu', batch_size=1).predict_pair(
        folder / 'P001_1_rest.jpg', folder / 'P001_1.jpg')
    np.testing.assert_allclose([float(graded[f'p_{g}']) for g in predictor.grades], probabilities(alone),
                               atol=1e-6)  # the CSV rounds to 6 decimals

    out = capsys.readouterr().out
    for name, words in (('P003_0.jpg', 'no rest photo'), ('P004_0_rest.jpg', 'truncated'),
                        ('P005_0_rest.png', 'no face found'), ('P009_0_rest.png', 'without their expression')):
        lines = [line for line in out.splitlines() if name in line and words in line]
        assert len(lines) == 1, (name, out)
    assert result['counts'] == {'ok': 3, 'no_rest_photo': 1, 'unreadable': 1, 'no_face_fallback': 1}
    assert all(f'{s} ' in out for s in PAIR_STATUSES)
    # a grade per patient from the pairs' probabilities
    patients = pd.read_csv(tmp_path / 'predictions_subjects.csv')
    assert patients.set_index('subject').loc['P001', 'n_photos'] == 2
    assert sorted(p.name for p in (tmp_path / 'overlays').iterdir()) == \
        ['P001_0_prediction.png', 'P001_1_prediction.png', 'P002_0_prediction.png', 'P005_0_prediction.png']


def test_folder_pairs_photos_by_a_pairs_csv(flow, tmp_path):
    """Paths relative to the CSV's folder, rest photos outside the graded folder; a photo without a row, one with
    an empty neutral_path and one whose rest photo is missing are listed."""
    folder, rest_folder = tmp_path / 'expressions', tmp_path / 'rest_photos'
    rest_folder.mkdir()
    copy_pairs(flow, folder, {'A': 5, 'B': 6, 'C': 7, 'D': 8}, rest_folder=rest_folder)
    shutil.copy(flow.pair(9)[1], folder / 'E.jpg')
    (rest_folder / 'C_rest.jpg').unlink()
    pairs_csv = tmp_path / 'pairs.csv'
    pd.DataFrame({'image_path': ['expressions/A.jpg', str(folder / 'B.jpg'), 'expressions/C.jpg',
                                 'expressions/D.jpg', 'expressions/gone.jpg'],
                  'neutral_path': ['rest_photos/A_rest.jpg', str(rest_folder / 'B_rest.jpg'),
                                   'rest_photos/C_rest.jpg', '', 'rest_photos/gone_rest.jpg']}
                 ).to_csv(pairs_csv, index=False)
    output_csv = tmp_path / 'predictions.csv'
    demo.main(['--model_path', str(flow.checkpoint), '--image_dir', str(folder), '--pairs_csv', str(pairs_csv),
               '--output_csv', str(output_csv), '--device', 'cpu'])
    table = pd.read_csv(output_csv, keep_default_na=False).set_index('path')
    assert table.loc[str(folder / 'A.jpg'), 'rest_path'] == str(tmp_path / 'rest_photos' / 'A_rest.jpg')
    assert table.loc[str(folder / 'B.jpg'), 'rest_path'] == str(rest_folder / 'B_rest.jpg')
    assert table.loc[str(folder / 'A.jpg'), 'status'] == 'ok' and table.loc[str(folder / 'B.jpg'), 'status'] == 'ok'
    assert table.loc[str(folder / 'C.jpg'), 'status'] == 'unreadable'
    assert 'C_rest.jpg: file not found' in table.loc[str(folder / 'C.jpg'), 'error']
    assert table.loc[str(folder / 'D.jpg'), 'status'] == 'no_rest_photo'
    assert 'neutral_path is empty' in table.loc[str(folder / 'D.jpg'), 'error']
    assert table.loc[str(folder / 'E.jpg'), 'status'] == 'no_rest_photo'
    assert 'not listed in' in table.loc[str(folder / 'E.jpg'), 'error']

    no_rest_column = tmp_path / 'photos_only.csv'
    pd.DataFrame({'image_path': ['expressions/A.jpg']}).to_csv(no_rest_column, index=False)
    with pytest.raises(utils.UserError, match='lacks the column'):
        pair_folder([folder / 'A.jpg'], no_rest_column)


def test_the_file_name_rule():
    files = [Path(name) for name in ('a.jpg', 'a_rest.jpg', 'b.png', 'b_rest.jpg', 'c.jpg', 'c_rest.jpg',
                                     'c_rest.png', 'd.jpg', 'e_rest.jpg', 'f.jpg', 'f_rest.png', 'f_rest.tif')]
    paired = pair_by_name(files)
    found = {pair.expression.name: pair for pair in paired.pairs}
    assert list(found) == ['a.jpg', 'b.png', 'c.jpg', 'd.jpg', 'f.jpg']
    assert found['a.jpg'] == PhotoPair(Path('a.jpg'), Path('a_rest.jpg'))
    assert found['b.png'].rest == Path('b_rest.jpg')      # the only b_rest file, though another extension
    assert found['c.jpg'].rest == Path('c_rest.jpg')      # the same extension first
    assert found['d.jpg'].rest is None and 'd_rest.jpg' in found['d.jpg'].problem
    assert found['f.jpg'].rest is None and 'several possible rest photos' in found['f.jpg'].problem
    assert [p.name for p in paired.rest_photos] == ['a_rest.jpg', 'b_rest.jpg', 'c_rest.jpg', 'c_rest.png',
                                                    'e_rest.jpg', 'f_rest.png', 'f_rest.tif']
    assert any('e_rest.jpg' in note for note in paired.notes)


# the attention viewer

def test_attention_of_a_pair_is_drawn_on_the_flow_mosaic_and_the_expression_photo(flow, predictor, tmp_path, capsys):
    rest, expression = flow.pair(3)
    output_dir = tmp_path / 'attention'
    results = va.main(['--model_path', str(flow.checkpoint), '--image_path', str(expression), '--rest', str(rest),
                       '--output_dir', str(output_dir), '--visualize_regions', '--dpi', '50', '--device', 'cpu'])
    stem = expression.stem
    names = {f'{stem}_level0.png', f'{stem}_level1.png', f'{stem}_level2.png', f'{stem}_summary.png',
             f'{stem}_regions.png', f'{stem}_attention.npz', 'args.yaml'}
    assert {p.name for p in output_dir.iterdir()} == names
    for name in names - {f'{stem}_attention.npz', 'args.yaml'}:
        with Image.open(output_dir / name) as image:
            assert image.format == 'PNG' and min(image.size) > 100
    analysis = results['analyses'][str(expression)]
    assert analysis['rest_path'] == str(rest)
    # the viewer detects one photo at a time: so does a predictor of batch size 1, and then every number agrees
    one_by_one = FacialPalsyPredictor(flow.checkpoint, device='cpu', batch_size=1)
    np.testing.assert_array_equal(list(analysis['probabilities'].values()),
                                  probabilities(one_by_one.predict_pair(rest, expression)))
    _, inputs = one_by_one.prepare_pairs([load_image(rest)], [load_image(expression)])
    np.testing.assert_array_equal(analysis['network_image'],
                                  va.to_image(inputs[0], predictor.preprocess))  # the flow mosaic
    with np.load(output_dir / f'{stem}_attention.npz', allow_pickle=False) as arrays:
        assert arrays['rest_to_photo'].shape == (2, 3) and arrays['rest_landmarks'].shape == (5, 2)
    # the last level's map lands on the expression photo, inside the crops carried over from the rest photo
    photo_map = af._photo_heat(analysis, analysis['stage_means'][-1], analysis['image'], 1.0, smooth=False)
    assert photo_map.shape == analysis['image'].shape[:2] and np.isfinite(photo_map).any()
    assert 'rest photo' in capsys.readouterr().out

    with pytest.raises(utils.UserError, match='--rest'):
        va.main(['--model_path', str(flow.checkpoint), '--image_path', str(expression),
                 '--output_dir', str(tmp_path / 'alone'), '--device', 'cpu'])


def test_attention_folder_of_pairs_skips_and_lists_photos_without_a_rest_photo(flow, tmp_path):
    folder = tmp_path / 'visit'
    copy_pairs(flow, folder, {'P001_0': 10})
    shutil.copy(flow.pair(11)[1], folder / 'P002_0.jpg')
    output_dir = tmp_path / 'attention'
    results = va.main(['--model_path', str(flow.checkpoint), '--image_dir', str(folder), '--output_dir',
                       str(output_dir), '--dpi', '50', '--device', 'cpu'])
    assert list(results['outputs']) == [str(folder / 'P001_0.jpg')]
    skipped = pd.read_csv(output_dir / 'skipped.csv')
    assert list(skipped['path']) == [str(folder / 'P002_0.jpg')] and 'no rest photo' in skipped['reason'][0]
    summary = pd.read_csv(output_dir / 'attention_summary.csv')
    assert list(summary['rest_path']) == [str(folder / 'P001_0_rest.jpg')]
