"""evaluate_facial_palsy.py: every output file, metrics with intervals, predictions per photo, clear errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import evaluate_facial_palsy as evaluate
import metrics as M
import Model
import annotations
import checkpoints
import utils
from facial_palsy_dataset import LANDMARK_SOURCES, default_preprocess
from symmetry import MEASUREMENT_NAMES

TINY_MODEL_ARGS = Model.model_args_from(image_size=56, patch_size=7, num_classes=6, dim=16, heads=1,
                                        num_hierarchies=3, block_repeats=[1, 1, 1])
PREDICTION_COLUMNS = ['path', 'subject', 'side', 'true_label', 'true_grade', 'pred_label', 'pred_grade', 'correct',
                      'confidence', 'p_I', 'p_II', 'p_III', 'p_IV', 'p_V', 'p_VI', 'landmark_source',
                      *(f'sym_{name}' for name in MEASUREMENT_NAMES), 'sym_more_affected_image_side',
                      'ood_score', 'ood_flag']


def save_tiny_checkpoint(path: Path, model_args: dict | None = None, weights_from: dict | None = None,
                         **extra) -> Path:
    """A checkpoint in the training format; ``weights_from`` builds the weights from other model_args."""
    model_args = dict(model_args or TINY_MODEL_ARGS)
    torch.manual_seed(0)
    model = Model.build_model(weights_from or model_args)
    num_classes = model_args['num_classes']
    state = {'model': model.state_dict(), 'epoch': 1, 'model_args': model_args, 'preprocess': default_preprocess(),
             'class_names': annotations.grade_names(num_classes), 'num_classes': num_classes, **extra}
    return checkpoints.save_checkpoint(state, path)


def base_args(synthetic_dataset, model_path, csv_path, output_dir) -> list[str]:
    return ['--model_path', str(model_path), '--data_root', str(synthetic_dataset.root), '--test_csv', str(csv_path),
            '--dataset_type', 'FNP', '--cache_dir', str(synthetic_dataset.cache_dir),
            '--output_dir', str(output_dir), '--n_boot', '200', '--device', 'cpu', '--batch_size', '4']


@pytest.fixture(scope='module')
def test_csv(synthetic_dataset, tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """The synthetic annotation plus one test row whose photo is corrupt."""
    folder = tmp_path_factory.mktemp('evaluate_csv')
    broken = folder / 'broken.jpg'
    broken.write_bytes(b'\xff\xd8\xff\xe0 this is not really a JPEG')
    table = pd.read_csv(synthetic_dataset.csv)
    extra = {'image_path': str(broken), 'grade': 2, 'side': 'left', 'split': 'test', 'subject': 'S999'}
    table = pd.concat([table, pd.DataFrame([extra])], ignore_index=True)
    path = folder / 'annotation.csv'
    table.to_csv(path, index=False)
    return path, table


@pytest.fixture(scope='module')
def evaluation(synthetic_dataset, tiny_checkpoint, test_csv, tmp_path_factory):
    csv_path, table = test_csv
    output_dir = tmp_path_factory.mktemp('evaluation') / 'results'
    result = evaluate.main([*base_args(synthetic_dataset, tiny_checkpoint.path, csv_path, output_dir),
                            '--num_classes', '6'])
    return result, output_dir, table


def test_writes_every_output_file(evaluation):
    result, output_dir, _ = evaluation
    for name in ('metrics.json', 'confusion_matrix.png', 'per_class_accuracy.png', 'classification_report.txt',
                 'predictions.csv', 'predictions.npz', 'args.yaml', 'skipped.csv', 'symmetry_by_grade.csv',
                 'asymmetry_by_grade.png'):
        assert (output_dir / name).is_file(), name
        assert (output_dir / name).stat().st_size > 0, name
    for name in ('confusion_matrix.png', 'per_class_accuracy.png', 'asymmetry_by_grade.png'):
        with Image.open(output_dir / name) as image:
            assert image.format == 'PNG' and min(image.size) > 100
    assert set(result['files']) >= {'metrics.json', 'predictions.csv', 'predictions.npz'}


def test_metrics_json_has_every_metric_with_an_interval_around_it(evaluation):
    _, output_dir, table = evaluation
    payload = json.loads((output_dir / 'metrics.json').read_text())
    assert set(payload['metrics']) == set(M.METRIC_NAMES)
    for name, entry in payload['metrics'].items():
        assert entry['ci_low'] <= entry['value'] <= entry['ci_high'], name
    readable_test_rows = int((table['split'] == 'test').sum()) - 1
    assert payload['n'] == readable_test_rows
    assert payload['bootstrap']['resampled_by'] == 'subject'
    assert payload['bootstrap']['n_groups'] == table.loc[table['split'] == 'test', 'subject'].nunique() - 1
    assert list(payload['per_class_accuracy']) == annotations.grade_names(6)
    for name, entry in payload['per_class_accuracy'].items():
        if entry['n']:
            assert entry['ci_low'] <= entry['value'] <= entry['ci_high'], name
        else:
            assert entry['value'] is None
    assert sum(map(sum, payload['confusion_matrix'])) == payload['n']


def test_predictions_csv_has_one_row_per_scored_photo(evaluation, synthetic_dataset):
    _, output_dir, table = evaluation
    predictions = pd.read_csv(output_dir / 'predictions.csv')
    assert list(predictions.columns) == PREDICTION_COLUMNS
    expected = {str(synthetic_dataset.root / p) for p in table.loc[table['split'] == 'test', 'image_path']
                if not Path(p).is_absolute()}
    assert set(predictions['path']) == expected
    probabilities = predictions[[c for c in predictions.columns if c.startswith('p_')]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(probabilities.argmax(axis=1), predictions['pred_label'])
    # confidence means what it means in inference: the probability of the predicted grade
    np.testing.assert_allclose(predictions['confidence'],
                               probabilities[np.arange(len(predictions)), predictions['pred_label']], atol=1e-6)
    assert set(predictions['landmark_source']) <= set(LANDMARK_SOURCES)
    grades = dict(zip((str(synthetic_dataset.root / p) for p in table['image_path']), table['grade']))
    assert [grades[p] for p in predictions['path']] == predictions['true_label'].tolist()
    assert set(predictions['true_grade']) <= set(annotations.HB_GRADES)


def test_metrics_agree_with_the_predictions(evaluation):
    _, output_dir, _ = evaluation
    payload = json.loads((output_dir / 'metrics.json').read_text())
    predictions = pd.read_csv(output_dir / 'predictions.csv')
    errors = (predictions['true_label'] - predictions['pred_label']).abs()
    assert payload['metrics']['accuracy']['value'] == pytest.approx(predictions['correct'].mean())
    assert payload['metrics']['mae']['value'] == pytest.approx(errors.mean())
    assert payload['metrics']['within_one']['value'] == pytest.approx((errors <= 1).mean())


def test_npz_opens_without_pickle_and_matches_the_csv(evaluation):
    _, output_dir, _ = evaluation
    predictions = pd.read_csv(output_dir / 'predictions.csv')
    with np.load(output_dir / 'predictions.npz', allow_pickle=False) as data:
        assert data['probabilities'].shape == (len(predictions), 6)
        np.testing.assert_array_equal(data['labels'], predictions['true_label'])
        np.testing.assert_array_equal(data['predictions'], predictions['pred_label'])
        np.testing.assert_array_equal(data['predictions'], data['probabilities'].argmax(axis=1))
        assert data['paths'].tolist() == predictions['path'].tolist()
        assert data['class_names'].tolist() == annotations.grade_names(6)


def test_corrupt_photo_is_listed_not_fatal(evaluation):
    result, output_dir, _ = evaluation
    skipped = pd.read_csv(output_dir / 'skipped.csv')
    assert list(skipped.columns) == ['path', 'reason']
    assert skipped['path'].str.endswith('broken.jpg').any()
    assert json.loads((output_dir / 'metrics.json').read_text())['skipped'] == len(skipped)


def test_report_names_the_house_brackmann_grades(evaluation):
    _, output_dir, _ = evaluation
    report = (output_dir / 'classification_report.txt').read_text()
    assert 'HB I ' in report and 'confusion matrix' in report and '95% interval' in report


def test_split_all_scores_every_row_and_says_what_it_replaces(evaluation, synthetic_dataset, tiny_checkpoint,
                                                             test_csv, capsys):
    _, output_dir, table = evaluation
    csv_path, _ = test_csv
    result = evaluate.main([*base_args(synthetic_dataset, tiny_checkpoint.path, csv_path, output_dir),
                            '--split', 'all', '--n_boot', '50'])
    assert 'note: replacing' in capsys.readouterr().out
    assert result['metrics']['n'] == len(table) - 1
    assert len(pd.read_csv(output_dir / 'predictions.csv')) == len(table) - 1


def test_three_class_checkpoint_scores_simplified_grades(synthetic_dataset, test_csv, tmp_path):
    model_path = save_tiny_checkpoint(tmp_path / 'three.pth', {**TINY_MODEL_ARGS, 'num_classes': 3})
    csv_path, table = test_csv
    result = evaluate.main([*base_args(synthetic_dataset, model_path, csv_path, tmp_path / 'out'), '--n_boot', '50'])
    predictions = result['predictions']
    assert [c for c in predictions.columns if c.startswith('p_')] == \
        ['p_normal_I', 'p_mild-moderate_II-III', 'p_severe_IV-VI']
    grades = dict(zip((str(synthetic_dataset.root / p) for p in table['image_path']), table['grade']))
    assert predictions['true_label'].tolist() == [annotations.GRADE_6_TO_3[grades[p]] for p in predictions['path']]
    assert list(result['metrics']['per_class_accuracy']) == list(annotations.SIMPLIFIED_GRADES)


def test_num_classes_other_than_the_checkpoints_is_refused(synthetic_dataset, tiny_checkpoint, test_csv, tmp_path):
    csv_path, _ = test_csv
    with pytest.raises(utils.UserError, match='--num_classes 3'):
        evaluate.main([*base_args(synthetic_dataset, tiny_checkpoint.path, csv_path, tmp_path), '--num_classes', '3'])
    assert not (tmp_path / 'metrics.json').exists()


def test_checkpoint_of_another_shape_is_one_clear_line(synthetic_dataset, test_csv, tmp_path, capsys):
    wrong = save_tiny_checkpoint(tmp_path / 'wrong.pth', {**TINY_MODEL_ARGS, 'dim': 32},
                                 weights_from=TINY_MODEL_ARGS)
    csv_path, _ = test_csv
    with pytest.raises(SystemExit) as exit_info:
        utils.run_cli(evaluate.main, base_args(synthetic_dataset, wrong, csv_path, tmp_path / 'out'))
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1
    assert str(wrong) in message and 'do not match' in message


def test_training_checkpoint_opens_with_weights_only(tiny_checkpoint):
    """What evaluation rebuilds the network from is plain data: no pickled classes are needed to open it."""
    checkpoint = torch.load(tiny_checkpoint.path, map_location='cpu', weights_only=True)
    Model.build_model(checkpoint['model_args']).load_state_dict(checkpoint['model'], strict=True)
    assert checkpoint['preprocess']['input_size'] == 56
    assert checkpoint['class_names'] == annotations.grade_names(checkpoint['model_args']['num_classes'])
    assert 'num_classes' not in checkpoint  # stored once, in model_args


@pytest.mark.parametrize('content', ['corrupt', 'pickled_object'])
def test_unreadable_checkpoint_is_refused(synthetic_dataset, test_csv, tmp_path, content):
    """Checkpoints open with weights_only=True: a file holding arbitrary Python objects is refused, not run."""
    path = tmp_path / 'model.pth'
    if content == 'corrupt':
        path.write_bytes(b'not a checkpoint')
    else:
        torch.save({'model': {}, 'args': pd.Timestamp('2024-01-01')}, path)
    csv_path, _ = test_csv
    message = 'not a readable PyTorch checkpoint' if content == 'corrupt' else 'holds Python objects'
    with pytest.raises(utils.UserError, match=message):
        evaluate.main(base_args(synthetic_dataset, path, csv_path, tmp_path / 'out'))


def test_bootstrap_resamples_subjects_only_when_they_repeat():
    assert evaluate.bootstrap_groups(['a', 'a', 'b']) == (['a', 'a', 'b'], 'subject')
    assert evaluate.bootstrap_groups(['a', 'b', 'c']) == (None, 'image')
    assert evaluate.bootstrap_groups(['a', '', 'a']) == (None, 'image')


def test_ckplus_layout_is_scored(tiny_checkpoint, tmp_path):
    """CK+ sequences: the last frame of each sequence, graded through a mapping CSV."""
    root = tmp_path / 'ckplus'
    for subject, shade in (('S005', 90), ('S010', 160), ('S011', 200)):
        sequence = root / 'cohn-kanade-images' / subject / '001'
        sequence.mkdir(parents=True)
        for frame in (1, 2):
            Image.fromarray(np.full((64, 64, 3), shade + frame, dtype=np.uint8)).save(
                sequence / f'{subject}_001_{frame:08d}.png')
    mapping = tmp_path / 'ck_mapping.csv'
    mapping.write_text('subject,grade,side,split\nS005,0,none,test\nS010,3,left,test\nS011,5,right,train\n')
    result = evaluate.main(['--model_path', str(tiny_checkpoint.path), '--data_root', str(root), '--test_csv',
                            str(mapping), '--dataset_type', 'CK+', '--cache_dir', str(tmp_path / 'cache'),
                            '--output_dir', str(tmp_path / 'out'), '--n_boot', '50', '--device', 'cpu'])
    predictions = result['predictions']
    assert [Path(p).name for p in predictions['path']] == ['S005_001_00000002.png', 'S010_001_00000002.png']
    assert predictions['true_label'].tolist() == [0, 3]
    assert predictions['subject'].tolist() == ['S005', 'S010']
    assert (tmp_path / 'out' / 'metrics.json').is_file()


def test_files_of_another_kind_in_the_output_folder_are_not_replaced(synthetic_dataset, tiny_checkpoint, test_csv,
                                                                     tmp_path):
    """A folder holding a user's predictions.csv (no earlier evaluation there) is refused before any scoring."""
    csv_path, _ = test_csv
    output_dir = tmp_path / 'results'
    output_dir.mkdir()
    (output_dir / 'predictions.csv').write_text('my,own,table\n1,2,3\n')
    argv = [*base_args(synthetic_dataset, tiny_checkpoint.path, csv_path, output_dir), '--n_boot', '20']
    with pytest.raises(utils.UserError, match=r'predictions.csv exists and was not written by this script; choose '
                                              r'another file in --output_dir or pass --overwrite'):
        evaluate.main(argv)
    assert (output_dir / 'predictions.csv').read_text() == 'my,own,table\n1,2,3\n'
    assert sorted(p.name for p in output_dir.iterdir()) == ['predictions.csv']
    evaluate.main([*argv, '--overwrite'])
    assert (output_dir / 'metrics.json').is_file() and 'my,own' not in (output_dir / 'predictions.csv').read_text()


def test_patient_level_grades_average_each_subjects_photos(synthetic_dataset, tiny_checkpoint, tmp_path):
    """subject_metrics: each subject's photo probabilities averaged and argmax-ed (the tiny checkpoint's rule),
    scored against its grade, with intervals from resampling subjects; subject_predictions.csv has one row each."""
    output_dir = tmp_path / 'results'
    result = evaluate.main([*base_args(synthetic_dataset, tiny_checkpoint.path, synthetic_dataset.csv, output_dir),
                            '--n_boot', '50'])
    photos = pd.read_csv(output_dir / 'predictions.csv')
    subjects = pd.read_csv(output_dir / 'subject_predictions.csv')
    assert sorted(subjects['subject']) == sorted(photos['subject'].unique())
    assert subjects['n_photos'].sum() == len(photos) and subjects['n_photos'].max() > 1
    columns = [c for c in photos.columns if c.startswith('p_')]
    mean = photos.groupby('subject')[columns].mean().loc[subjects['subject']]
    np.testing.assert_allclose(mean.to_numpy(), subjects[columns].to_numpy(), atol=1e-5)
    assert (mean.to_numpy().argmax(axis=1) == subjects['pred_label'].to_numpy()).all()
    assert (photos.groupby('subject')['true_label'].max().loc[subjects['subject']].to_numpy()
            == subjects['true_label'].to_numpy()).all()  # one grade per subject here
    expected = M.compute_metrics(subjects['true_label'], subjects['pred_label'], 6)
    stored = json.loads((output_dir / 'metrics.json').read_text())['subject_metrics']
    assert stored['n_subjects'] == len(subjects) and stored['bootstrap']['resampled_by'] == 'subject'
    for name in M.METRIC_NAMES:
        entry = stored['metrics'][name]
        assert entry['value'] == pytest.approx(expected[name])
        assert entry['ci_low'] <= entry['value'] <= entry['ci_high']
    assert result['metrics']['subject_metrics']['n_subjects'] == len(subjects)
