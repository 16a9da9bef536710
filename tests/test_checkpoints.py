"""checkpoints.py: atomic saving, weights-only loading with one-line errors, the training checkpoint dict, the resume
refusals and the one loader of a trained model (also of checkpoints written by earlier versions)."""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys

import pytest
import torch

import annotations
import checkpoints
import run_folders
import Model
from facial_palsy_dataset import upgrade_preprocess
from utils import UserError

TINY_MODEL_ARGS = Model.model_args_from(image_size=56, patch_size=7, num_classes=6, dim=16, heads=1,
                                        num_hierarchies=3, block_repeats=[1, 1, 1])
# a preprocess as checkpoints of earlier versions stored it: the face square is called image_size
OLD_PREPROCESS = {'input_mode': 'regions', 'image_size': 200, 'region_size': 28, 'input_size': 56, 'channels': 'RGB',
                  'mean': [0.5, 0.5, 0.5], 'std': [0.5, 0.5, 0.5]}


def tiny_model(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return Model.build_model({**TINY_MODEL_ARGS, **overrides})


def training_checkpoint(model=None, **overrides) -> dict:
    model = model or tiny_model()
    model_args = {**TINY_MODEL_ARGS, **{k: v for k, v in overrides.items() if k in Model.MODEL_ARG_NAMES}}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    settings = dict(model=model, model_args=model_args, preprocess=upgrade_preprocess(None), epoch=2,
                    optimizer=optimizer, scheduler=scheduler, best_metric=0.5, best_epoch=1, select_metric='macro_f1',
                    args=argparse.Namespace(loss='ce', epochs=5), history=[{'epoch': 1}, {'epoch': 2}, {'epoch': 3}])
    settings.update({k: v for k, v in overrides.items() if k not in Model.MODEL_ARG_NAMES})
    return checkpoints.build_checkpoint(**settings)


# files

def test_save_is_atomic_and_leaves_no_temporary_file(tmp_path):
    path = checkpoints.save_checkpoint({'model': tiny_model().state_dict(), 'epoch': 1}, tmp_path / 'a' / 'm.pth')
    assert path.is_file() and os.listdir(path.parent) == ['m.pth']
    before = path.read_bytes()
    with pytest.raises(Exception):
        checkpoints.save_checkpoint({'unpicklable': lambda: None}, path)
    assert path.read_bytes() == before and os.listdir(path.parent) == ['m.pth']


def test_load_is_weights_only_and_wraps_a_bare_state_dict(tmp_path):
    model = tiny_model()
    torch.save(model.state_dict(), tmp_path / 'bare.pth')
    loaded = checkpoints.load_checkpoint(tmp_path / 'bare.pth')
    assert set(loaded) == {'model'} and set(loaded['model']) == set(model.state_dict())


@pytest.mark.parametrize('content, message', [
    ('missing', 'checkpoint not found'),
    ('corrupt', 'not a readable PyTorch checkpoint'),
    ('foreign', 'holds Python objects (argparse.Namespace), not only tensors'),   # a pickled object: refused
    ('list', 'expected a checkpoint dict or state_dict, found list'),
])
def test_unusable_file_is_one_line_naming_it(tmp_path, content, message):
    path = tmp_path / 'model.pth'
    if content == 'corrupt':
        path.write_bytes(b'not a checkpoint')
    elif content == 'foreign':
        torch.save({'model': {}, 'args': argparse.Namespace(lr=1)}, path)
    elif content == 'list':
        torch.save([torch.zeros(1)], path)
    with pytest.raises(UserError) as error:
        checkpoints.load_checkpoint(path)
    assert str(error.value).startswith(str(path)) and message in str(error.value)
    assert len(str(error.value).splitlines()) == 1
    assert 'weights_only' not in str(error.value)  # never the advice to open the file unsafely


def test_load_pretrained_reads_a_file_and_names_a_corrupt_one(tmp_path):
    source = tiny_model(num_classes=3, image_size=28)
    torch.save(source.state_dict(), tmp_path / 'micro.pth')
    report = checkpoints.load_pretrained(tiny_model(), tmp_path / 'micro.pth', verbose=False)
    assert {name for name, _ in report['skipped']} == {'mlp_head.2.weight', 'mlp_head.2.bias'}
    bad = tmp_path / 'weights.pth'
    bad.write_bytes(b'not a checkpoint')
    with pytest.raises(UserError, match='weights.pth: not a readable PyTorch checkpoint'):
        checkpoints.load_pretrained(tiny_model(), bad)


# the training checkpoint

def test_build_checkpoint_is_plain_and_stores_num_classes_once(tmp_path):
    model = tiny_model(num_side_classes=3)
    checkpoint = training_checkpoint(model, num_side_classes=3, prediction='ordinal_median')
    path = checkpoints.save_checkpoint(checkpoint, tmp_path / 'best_model.pth')
    opened = torch.load(path, weights_only=True)
    assert {'model', 'optimizer', 'scheduler', 'epoch', 'best_metric', 'best_epoch', 'select_metric', 'model_args',
            'preprocess', 'class_names', 'prediction', 'side_names', 'args', 'history', 'val_metrics',
            'best_val_metrics', 'run_id'} == set(opened)
    assert 'num_classes' not in opened and opened['model_args']['num_classes'] == 6
    assert opened['class_names'] == annotations.grade_names(6)
    assert opened['side_names'] == list(annotations.SIDE_CLASSES)
    assert opened['prediction'] == 'ordinal_median' and opened['args'] == {'loss': 'ce', 'epochs': 5}
    assert all(t.device.type == 'cpu' for t in opened['model'].values())
    assert 'side_names' not in training_checkpoint()


def test_build_checkpoint_without_a_best_value_stores_nan_and_refuses_an_unknown_rule():
    assert math.isnan(training_checkpoint(best_metric=None)['best_metric'])
    with pytest.raises(UserError, match="unknown prediction rule 'mode'"):
        training_checkpoint(prediction='mode')


def test_symmetry_baseline_goes_into_the_checkpoint():
    checkpoint = training_checkpoint(symmetry_baseline={'coef': (1.0, 2.0)})
    assert checkpoint['symmetry_baseline'] == {'coef': [1.0, 2.0]}


# resume

def resume_settings(**overrides) -> dict:
    settings = dict(model_args=dict(TINY_MODEL_ARGS), preprocess=upgrade_preprocess(None), prediction='argmax',
                    select_metric='macro_f1', epochs=5)
    settings.update(overrides)
    return settings


def test_resume_accepts_the_same_settings_also_from_an_old_preprocess():
    checkpoint = training_checkpoint()
    checkpoints.check_resume(checkpoint, 'last.pth', **resume_settings())
    old = {**checkpoint, 'preprocess': {**OLD_PREPROCESS, 'image_size': 224}}
    checkpoints.check_resume(old, 'last.pth', **resume_settings())


@pytest.mark.parametrize('change, message', [
    ({'drop': 'model_args'}, 'not a training checkpoint'),
    ({'drop': 'optimizer'}, 'a progress mark of epoch 2 with the weights only'),
    ({'settings': {'model_args': {**TINY_MODEL_ARGS, 'dim': 32}}}, 'dim 16 in the checkpoint vs 32 now'),
    ({'settings': {'preprocess': upgrade_preprocess({**OLD_PREPROCESS, 'image_size': 224, 'region_size': 21,
                                                     'input_size': 42})}}, 'region_size 28 in the checkpoint'),
    ({'settings': {'prediction': 'ordinal_median'}}, 'same --loss'),
    ({'settings': {'select_metric': 'accuracy'}}, 'not --select_metric accuracy'),
    ({'settings': {'epochs': 2}}, 'already trained 2 epochs'),
])
def test_resume_refuses_other_settings(change, message):
    checkpoint = training_checkpoint()
    if 'drop' in change:
        checkpoint.pop(change['drop'])
    with pytest.raises(UserError, match=message) as error:
        checkpoints.check_resume(checkpoint, 'last.pth', **resume_settings(**change.get('settings', {})))
    assert str(error.value).startswith('last.pth: ')


def test_a_run_at_its_last_epoch_is_resumed_only_to_finish_it():
    checkpoint = training_checkpoint()  # epoch 2
    checkpoints.check_resume(checkpoint, 'last.pth', **resume_settings(epochs=2, finish=True))
    with pytest.raises(UserError, match='already trained 2 epochs'):
        checkpoints.check_resume(checkpoint, 'last.pth', **resume_settings(epochs=1, finish=True))


def test_resume_repeats_the_training_flags_even_when_a_default_changed():
    # a run trained with the earlier defaults (no mirroring, another augmentation): resuming it with the new
    # defaults would change what its remaining epochs see, so the flags to repeat are named
    checkpoint = {**training_checkpoint(),
                  'args': {'augmentation': 'asymmetry_preserving', 'flip_swap_side': False, 'mixup': 0.0}}
    now = {'augmentation': 'robust', 'flip_swap_side': True, 'mixup': 0.0}
    with pytest.raises(UserError) as error:
        checkpoints.check_resume(checkpoint, 'last.pth', **resume_settings(training=now))
    assert str(error.value) == ('last.pth: trained with --augmentation asymmetry_preserving --no-flip_swap_side '
                                '(now --augmentation robust --flip_swap_side); resume with the same flags: '
                                '--augmentation asymmetry_preserving --no-flip_swap_side')
    checkpoints.check_resume(checkpoint, 'last.pth',
                             **resume_settings(training={**now, 'augmentation': 'asymmetry_preserving',
                                                         'flip_swap_side': False}))
    # a checkpoint whose args do not record a flag is not held to it
    checkpoints.check_resume(training_checkpoint(), 'last.pth', **resume_settings(training=now))


def test_restore_training_returns_epoch_best_and_history():
    trained = tiny_model()
    checkpoint = training_checkpoint(trained)
    model = tiny_model()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    epoch, best, best_epoch, history = checkpoints.restore_training(checkpoint, 'last.pth', model, optimizer,
                                                                    scheduler)
    assert (epoch, best, best_epoch) == (2, 0.5, 1) and history == [{'epoch': 1}, {'epoch': 2}]
    torch.testing.assert_close(model.state_dict(), trained.state_dict())
    assert checkpoints.restore_training(training_checkpoint(best_metric=None), 'last.pth', model, optimizer,
                                        scheduler)[1] is None


# trained models

def test_load_trained_reads_an_old_format_checkpoint(tmp_path, capsys):
    model = tiny_model()
    path = checkpoints.save_checkpoint({'model': model.state_dict(), 'model_args': TINY_MODEL_ARGS, 'epoch': 3,
                                        'num_classes': 6, 'class_names': annotations.grade_names(6),
                                        'preprocess': OLD_PREPROCESS}, tmp_path / 'old.pth')
    trained = checkpoints.load_trained(path)
    assert trained.path == path and not trained.model.training and trained.num_classes == 6
    assert trained.preprocess['face_size'] == 200 and trained.preprocess['input_size'] == 56
    assert upgrade_preprocess(trained.preprocess) == trained.preprocess   # complete: nothing left to fill in
    assert trained.grades == list(annotations.HB_GRADES) and trained.class_names == annotations.grade_names(6)
    assert trained.prediction == 'argmax' and trained.sides == [] and trained.checkpoint['epoch'] == 3
    torch.testing.assert_close(trained.model.state_dict(), model.state_dict())


def test_load_trained_fills_in_a_missing_preprocess_with_a_note(tmp_path, capsys):
    path = checkpoints.save_checkpoint({'model': tiny_model().state_dict(), 'model_args': TINY_MODEL_ARGS},
                                       tmp_path / 'bare.pth')
    trained = checkpoints.load_trained(path)
    assert 'stores no preprocess settings' in capsys.readouterr().out
    assert trained.preprocess == upgrade_preprocess(None)


def test_load_trained_of_a_new_checkpoint_with_a_side_head(tmp_path):
    model = tiny_model(num_side_classes=3, num_classes=3)
    path = checkpoints.save_checkpoint(training_checkpoint(model, num_side_classes=3, num_classes=3,
                                                           prediction='ordinal_median'), tmp_path / 'side.pth')
    trained = checkpoints.load_trained(path)
    assert trained.sides == list(annotations.SIDE_CLASSES) and trained.prediction == 'ordinal_median'
    assert trained.num_classes == 3 and trained.grades == list(annotations.SIMPLIFIED_GRADES)


@pytest.mark.parametrize('change, message', [
    ({'prediction': 'mode'}, "unknown prediction rule 'mode'"),
    ({'num_classes': 3}, 'says num_classes 3 but its network has 6 outputs'),
    ({'preprocess': {**OLD_PREPROCESS, 'region_size': 14, 'input_size': 28}}, 'makes 28x28 inputs'),
    ({'model_args': {**TINY_MODEL_ARGS, 'dim': 32}}, 'do not match the network'),
    ({'model_args': None}, 'stores no model_args'),
])
def test_load_trained_refuses_what_would_give_wrong_grades(tmp_path, change, message):
    state = {'model': tiny_model().state_dict(), 'model_args': TINY_MODEL_ARGS, 'preprocess': OLD_PREPROCESS,
             **change}
    path = checkpoints.save_checkpoint(state, tmp_path / 'm.pth')
    with pytest.raises(UserError, match=message) as error:
        checkpoints.load_trained(path)
    assert str(error.value).startswith(str(path)) and len(str(error.value).splitlines()) == 1


def test_prediction_rule_of_a_checkpoint():
    assert checkpoints.prediction_rule({}, 'm.pth') == 'argmax'
    assert checkpoints.prediction_rule({'prediction': 'ordinal_median'}, 'm.pth') == 'ordinal_median'
    with pytest.raises(UserError, match="m.pth: unknown prediction rule 'mode'"):
        checkpoints.prediction_rule({'prediction': 'mode'}, 'm.pth')


def test_state_dict_mismatches_name_every_kind():
    state = dict(tiny_model().state_dict())
    state['extra'] = torch.zeros(1)
    del state['mlp_head.2.bias']
    state['mlp_head.2.weight'] = torch.zeros(3, 64)
    mismatches = checkpoints.state_dict_mismatches(state, tiny_model())
    assert mismatches == {'shape': ['mlp_head.2.weight (3, 64) in the file vs (6, 64)'],
                          'missing': ['mlp_head.2.bias'], 'unexpected': ['extra']}
    assert checkpoints.describe_mismatches(mismatches).endswith('3 tensor(s) in all')
    assert not any(checkpoints.state_dict_mismatches(tiny_model().state_dict(), tiny_model()).values())


def test_utils_imports_neither_torch_nor_the_checkpoints():
    """Torch-free modules (the annotation contract) build on utils; checkpoint files are this module's alone."""
    code = ('import sys, utils; utils.to_plain({"a": (1, 2)}); '
            'assert "torch" not in sys.modules and "checkpoints" not in sys.modules, sorted(sys.modules)')
    subprocess.run([sys.executable, '-c', code], check=True, cwd=os.path.dirname(checkpoints.__file__))


# run folders


def test_run_id_of_reads_checkpoints_and_logs_and_none_otherwise(tmp_path):
    path = checkpoints.save_checkpoint(training_checkpoint(run_id='20260101-000000-abcdef'), tmp_path / 'last.pth')
    assert run_folders.run_id_of(path) == '20260101-000000-abcdef'
    (tmp_path / 'training_history.json').write_text('{"run_id": "r1"}')
    assert run_folders.run_id_of(tmp_path / 'training_history.json') == 'r1'
    (tmp_path / 'broken.pth').write_bytes(b'not a checkpoint')
    assert run_folders.run_id_of(tmp_path / 'broken.pth') is None
    assert run_folders.run_id_of(checkpoints.save_checkpoint(training_checkpoint(), tmp_path / 'old.pth')) is None
    assert run_folders.run_ids_in(tmp_path, tmp_path) == {'20260101-000000-abcdef', 'r1'}


# the weight average

def test_an_ema_checkpoint_stores_the_average_as_model_and_restores_both_exactly():
    import engine
    raw = tiny_model()
    ema = engine.ModelEma(raw, decay=0.9)
    ema.update_parameters(raw)
    with torch.no_grad():
        for parameter in raw.parameters():
            parameter.add_(1.0)
    ema.update_parameters(raw)  # the average now lies 0.1 of the way towards the moved weights
    checkpoint = training_checkpoint(raw, ema=ema)
    assert checkpoint['ema']['decay'] == 0.9 and checkpoint['ema']['updates'] == 2
    torch.testing.assert_close(checkpoint['model'], ema.module.state_dict())
    torch.testing.assert_close(checkpoint['ema']['training_weights'], raw.state_dict())
    assert not torch.equal(checkpoint['model']['mlp_head.2.weight'], raw.state_dict()['mlp_head.2.weight'])

    model = tiny_model()
    fresh = engine.ModelEma(model, decay=0.9)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    checkpoints.restore_training(checkpoint, 'last.pth', model, optimizer, None, ema=fresh)
    torch.testing.assert_close(model.state_dict(), raw.state_dict())
    torch.testing.assert_close(fresh.module.state_dict(), ema.module.state_dict())
    assert int(fresh.n_averaged) == 2

    checkpoints.check_resume(checkpoint, 'last.pth', **resume_settings(ema=0.9))
    with pytest.raises(UserError, match='last.pth: trained with --ema 0.9, not --ema 0; resume with the same --ema'):
        checkpoints.check_resume(checkpoint, 'last.pth', **resume_settings())
    with pytest.raises(UserError, match='trained with --ema 0, not --ema 0.99'):
        checkpoints.check_resume(training_checkpoint(), 'last.pth', **resume_settings(ema=0.99))
