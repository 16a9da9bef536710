"""config_examples.yaml: every profile loads through --config/--profile in each script that takes it, uses only
known keys, and describes a network whose sizes fit together."""
from pathlib import Path

import pytest
import torch
import yaml

import data_augmentation
import demo_inference
import evaluate_facial_palsy
import facial_palsy_dataset as fpd
import main_HTNet
import prepare_dataset
import train_facial_palsy
import visualize_attention
from Model import HTNet, count_parameters
from utils import UserError, load_config, parse_args_with_config

CONFIG = Path(__file__).resolve().parents[1] / 'config_examples.yaml'
PARSERS = {
    'train_facial_palsy.py': train_facial_palsy.get_args_parser,
    'evaluate_facial_palsy.py': evaluate_facial_palsy.get_args_parser,
    'demo_inference.py': demo_inference.get_args_parser,
    'visualize_attention.py': visualize_attention.get_args_parser,
    'main_HTNet.py': main_HTNet.get_args_parser,
    'prepare_dataset.py': prepare_dataset.get_args_parser,
}
# the minimum each script needs besides the profile
REQUIRED = {
    'train_facial_palsy.py': [],
    'evaluate_facial_palsy.py': ['--model_path', 'model.pth'],
    'demo_inference.py': ['--model_path', 'model.pth', '--image_path', 'x.jpg'],
    'visualize_attention.py': ['--model_path', 'model.pth', '--image_path', 'x.jpg'],
    'main_HTNet.py': [],
}
RAW = yaml.safe_load(CONFIG.read_text())
PROFILES = [name for name in RAW if name != 'defaults']
PALSY_PROFILES = [name for name in PROFILES if name != 'micro_expression_paper']


def _dests(parser_factory):
    return {action.dest for action in parser_factory()._actions}


def test_at_least_the_seed_templates_a_standard_one_and_the_quick_start_profile():
    expected = {'fnp_6class', 'fnp_3class', 'ckplus', 'transfer_learning', 'large', 'small', 'combined_fnp_ckplus',
                'standard', 'cpu_quickstart'}
    assert expected <= set(PROFILES)
    assert len(PROFILES) >= 8
    assert all(RAW[name].get('description') for name in PROFILES)


@pytest.mark.parametrize('profile', PROFILES)
def test_every_key_is_a_flag_of_some_script(profile):
    known = set().union(*(_dests(factory) for factory in PARSERS.values()))
    unknown = set(load_config(CONFIG, profile)) - known
    assert not unknown, f'{profile}: keys no script takes: {sorted(unknown)}'


@pytest.mark.parametrize('profile', PALSY_PROFILES)
def test_palsy_profiles_describe_consistent_networks(profile, capsys):
    args = parse_args_with_config(train_facial_palsy.get_args_parser(), ['--config', str(CONFIG), '--profile', profile])
    assert capsys.readouterr().out == '', 'every key of a palsy profile should be a training flag'
    assert args.num_classes in (3, 6)
    assert args.augmentation in data_augmentation.AUGMENTATION_NAMES
    assert len(args.block_repeats) in (1, args.num_hierarchies)
    assert args.scheduler != 'cosine' or args.warmup_epochs < args.epochs
    preprocess = fpd.default_preprocess(args.input_mode, args.image_size, args.region_size)
    model_args = train_facial_palsy.model_args_for(args, fpd.model_input_size(preprocess))
    with torch.device('meta'):  # shapes only: the large profiles would not fit a test machine's memory budget
        model = HTNet(**model_args)
        logits = model(torch.empty(2, 3, model_args['image_size'], model_args['image_size']))
    assert logits.shape == (2, args.num_classes)
    if profile == 'cpu_quickstart':
        assert count_parameters(model) < 1_000_000
    if profile == 'transfer_learning':  # must match the micro-expression network it starts from
        micro = main_HTNet.get_args_parser().parse_args([])
        assert (args.dim, args.heads, list(args.block_repeats)) == (micro.dim, micro.heads, list(micro.block_repeats))


@pytest.mark.parametrize('script', sorted(REQUIRED))
@pytest.mark.parametrize('profile', PROFILES)
def test_profiles_load_in_every_script_that_takes_a_config(script, profile):
    args = parse_args_with_config(PARSERS[script](), ['--config', str(CONFIG), '--profile', profile,
                                                      *REQUIRED[script]])
    config = load_config(CONFIG, profile)
    for key, value in config.items():
        if hasattr(args, key) and value is not None:
            got = getattr(args, key)
            assert got == value or str(got) == str(value) or list(got) == list(value), (script, key)


def test_flags_given_on_the_command_line_win():
    args = parse_args_with_config(train_facial_palsy.get_args_parser(),
                                  ['--config', str(CONFIG), '--profile', 'small', '--epochs', '3', '--dim', '48'])
    assert (args.epochs, args.dim, args.heads) == (3, 48, 2)


def test_profile_errors_are_one_clear_line(tmp_path):
    with pytest.raises(UserError, match='choose one with --profile'):
        load_config(CONFIG)
    with pytest.raises(UserError, match='--profile nope: not in'):
        load_config(CONFIG, 'nope')
    broken = tmp_path / 'broken.yaml'
    broken.write_text('small: [unclosed\n')
    with pytest.raises(UserError, match='not valid YAML'):
        load_config(broken, 'small')
