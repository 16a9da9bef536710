"""train_facial_palsy.py: --loss ordinal, --multitask, --flip_swap_side and --baseline symmetry on synthetic faces."""
import csv
import json

import numpy as np
import pytest
import torch

import annotations
import checkpoints
import facial_palsy_dataset as fpd
import losses
import train_facial_palsy as train
import utils
from metrics import METRIC_NAMES, compute_metrics


def run_args(data, tmp_path, *extra):
    return ['--data_root', str(data.root), '--train_csv', str(data.csv), '--val_csv', str(data.csv),
            '--cache_dir', str(data.cache_dir), '--save_dir', str(tmp_path / 'c'), '--log_dir', str(tmp_path / 'l'),
            '--device', 'cpu', '--batch_size', '8', '--learning_rate', '2e-3', '--augmentation', 'none',
            '--threads', '1', *data.tiny_flags, *extra]


def split_dataset(data, split, transform=None):
    return fpd.FacialPalsyDataset(data.root, data.csv, split=split, cache_dir=data.cache_dir, verbose=False,
                                  transform=transform)


def test_ordinal_loss_checkpoint_predicts_the_median_grade(synthetic_dataset, tmp_path):
    results = train.main(run_args(synthetic_dataset, tmp_path, '--epochs', '1', '--loss', 'ordinal',
                                  '--test_csv', str(synthetic_dataset.csv)))
    best = torch.load(tmp_path / 'c' / 'best_model.pth', weights_only=True)
    assert best['prediction'] == 'ordinal_median' and best['args']['loss'] == 'ordinal'

    # the test metrics were computed with ordinal_predict, not argmax: recompute them from the file alone
    model, _ = checkpoints.load_model(tmp_path / 'c' / 'best_model.pth')
    test_set = split_dataset(synthetic_dataset, 'test')
    with torch.no_grad():
        logits = model(torch.stack([test_set[i][0] for i in range(len(test_set))]))
    expected = compute_metrics(test_set.labels, losses.ordinal_predict(logits).tolist(), 6)
    assert results['test_metrics']['confusion_matrix'] == expected['confusion_matrix']
    saved = json.loads((tmp_path / 'l' / 'test_metrics.json').read_text())
    assert saved['prediction'] == 'ordinal_median'

    # resuming with the other loss would mix two prediction rules in one run
    with pytest.raises(utils.UserError, match='same --loss'):
        train.main(run_args(synthetic_dataset, tmp_path, '--epochs', '2', '--loss', 'ce',
                            '--resume', str(tmp_path / 'c' / 'last.pth')))


def test_cross_entropy_checkpoint_keeps_argmax(tiny_checkpoint):
    best = torch.load(tiny_checkpoint.path, weights_only=True)
    assert best['prediction'] == 'argmax' and 'num_side_classes' not in best['model_args']


def test_multitask_with_side_swapping_flips_logs_side_accuracy(synthetic_dataset, tmp_path):
    results = train.main(run_args(synthetic_dataset, tmp_path, '--epochs', '2', '--multitask',
                                  '--side_loss_weight', '0.5', '--flip_swap_side', '--mixup', '0.4'))
    model, checkpoint = checkpoints.load_model(tmp_path / 'c' / 'best_model.pth')
    assert checkpoint['model_args']['num_side_classes'] == 3 and model.side_head is not None
    assert checkpoint['side_names'] == list(annotations.SIDE_CLASSES) and checkpoint['args']['flip_swap_side']
    grade_logits, side_logits = model.forward_multitask(torch.zeros(2, 3, 56, 56))
    assert grade_logits.shape == (2, 6) and side_logits.shape == (2, 3)

    val_set = split_dataset(synthetic_dataset, 'val')
    known = sum(side in annotations.SIDE_CLASSES for side in val_set.sides)
    assert known > 0
    with open(tmp_path / 'l' / 'summary.csv', newline='') as handle:
        rows = list(csv.DictReader(handle))
    assert [0.0 <= float(r['val_side_accuracy']) <= 1.0 for r in rows] == [True, True]
    history = json.loads((tmp_path / 'l' / 'training_history.json').read_text())
    matrix = np.array(history['side_confusion_matrix'])
    assert matrix.shape == (3, 3) and matrix.sum() == known
    best_row = results['history'][results['best_epoch'] - 1]
    assert np.trace(matrix) / known == pytest.approx(best_row['val_side_accuracy'])


def test_symmetry_baseline_is_scored_on_val_and_test(synthetic_dataset, tmp_path, capsys):
    results = train.main(run_args(synthetic_dataset, tmp_path, '--epochs', '1', '--baseline', 'symmetry',
                                  '--test_csv', str(synthetic_dataset.csv)))
    saved = json.loads((tmp_path / 'l' / 'baseline_metrics.json').read_text())
    for split in ('val', 'test'):
        assert set(METRIC_NAMES) <= set(saved[split])
        assert saved[split]['n'] == results['splits'][split]['images']
        assert set(METRIC_NAMES) <= set(saved['htnet'][split])
    assert saved['n_train'] == results['splits']['train']['images']

    # the stored baseline predicts what was scored
    import symmetry
    baseline = symmetry.SymmetryBaseline.from_dict(saved['fitted_baseline'])
    test_set = split_dataset(synthetic_dataset, 'test')
    again = compute_metrics(test_set.labels, baseline.predict(test_set.landmarks), 6)
    assert again['confusion_matrix'] == saved['test']['confusion_matrix']
    out = capsys.readouterr().out
    assert 'baseline test' in out and 'macro_f1' in out

    # evaluation scores the stored baseline beside HTNet on the same test photos
    import evaluate_facial_palsy
    evaluated = evaluate_facial_palsy.main([
        '--model_path', str(tmp_path / 'c' / 'best_model.pth'), '--data_root', str(synthetic_dataset.root),
        '--test_csv', str(synthetic_dataset.csv), '--cache_dir', str(synthetic_dataset.cache_dir),
        '--output_dir', str(tmp_path / 'eval'), '--n_boot', '20', '--device', 'cpu'])
    stored = json.loads((tmp_path / 'eval' / 'metrics.json').read_text())['symmetry_baseline']['metrics']
    assert stored['macro_f1']['value'] == pytest.approx(saved['test']['macro_f1'])
    assert stored['accuracy']['ci_low'] <= stored['accuracy']['value'] <= stored['accuracy']['ci_high']
    assert 'symmetry baseline' in capsys.readouterr().out and evaluated['metrics']['symmetry_baseline']


def test_new_flags_are_documented_and_checked(tmp_path):
    help_text = train.get_args_parser().format_help()
    for flag in ('--loss', '--multitask', '--side_loss_weight', '--flip_swap_side', '--baseline', '--ema',
                 'subject_macro_f1'):
        assert flag in help_text and flag in train.EPILOG
    assert 'per step' in help_text
    with pytest.raises(utils.UserError, match='side_loss_weight'):
        train.parse_args(['--data_root', str(tmp_path), '--side_loss_weight', '-1'])
    for bad in ('1', '-0.1', 'nan'):
        with pytest.raises(utils.UserError, match=r'--ema must lie in \[0, 1\)'):
            train.parse_args(['--data_root', str(tmp_path), '--ema', bad])
    assert train.parse_args(['--data_root', str(tmp_path)]).ema == 0.0
    args = train.parse_args(['--data_root', str(tmp_path), '--multitask'])
    assert train.model_args_for(args, 56)['num_side_classes'] == 3


def test_flip_swap_side_is_refused_for_flow_inputs(synthetic_dataset, tmp_path):
    with pytest.raises(utils.UserError, match="--flip_swap_side"):
        train.main(['--data_root', str(synthetic_dataset.root), '--train_csv', str(synthetic_dataset.csv),
                    '--input_mode', 'flow', '--flip_swap_side', '--save_dir', str(tmp_path / 'c'),
                    '--log_dir', str(tmp_path / 'l')])
