"""quick_start.sh --profile NAME: for every profile of config_examples.yaml it either plans a run whose commands fit
that profile (a --cv run is graded as the ensemble of its folds, a flow profile reads rest / expression pairs, and one
whose data_root is the frames folder of its CSV makes those pairs from examination clips) or refuses in one line
before any slow work. Checked with --dry_run, which prints the plan and runs nothing, in a scratch
copy of the script and the YAML (no .venv there, so nothing could be installed or trained)."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import demo_inference
import evaluate_facial_palsy
import prepare_dataset
import train_facial_palsy
import visualize_attention
from utils import parse_args_with_config
from video_dataset import default_frames_dir

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / 'config_examples.yaml').read_text())
PROFILES = [name for name in CONFIG if name != 'defaults']
TRAIN_KEYS = {action.dest for action in train_facial_palsy.get_args_parser()._actions}
QUICK_START_SAVE_DIR = './checkpoints/fnp'


@pytest.fixture
def scratch(tmp_path):
    shutil.copy(ROOT / 'quick_start.sh', tmp_path / 'quick_start.sh')
    shutil.copy(ROOT / 'config_examples.yaml', tmp_path / 'config_examples.yaml')
    return tmp_path


def quick_start(folder: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != 'HTNET_PROFILE'}
    return subprocess.run(['bash', str(folder / 'quick_start.sh'), *args], cwd=folder, capture_output=True,
                          text=True, timeout=60, env={**environment, **(env or {})})


def settings(profile: str) -> dict:
    return {**(CONFIG.get('defaults') or {}), **CONFIG[profile]}


def planned_commands(stdout: str) -> dict[str, list[list[str]]]:
    """script -> the argument lists of every python command of the plan, in order."""
    commands: dict[str, list[list[str]]] = {}
    for line in stdout.splitlines():
        if 'python ' not in line:
            continue
        tokens = shlex.split(line[line.index('python '):])
        commands.setdefault(tokens[1], []).append(tokens[2:])
    return commands


def flag(argv: list[str], name: str) -> list[str]:
    """The values after ``name`` up to the next flag."""
    start = argv.index(name) + 1
    end = next((i for i in range(start, len(argv)) if argv[i].startswith('--')), len(argv))
    return argv[start:end]


def is_micro_expression(profile: str) -> bool:
    return not set(settings(profile)) - {'description'} <= TRAIN_KEYS


def reads_clips(profile: str) -> bool:
    """A flow profile whose data_root is where prepare_dataset.py --dataset_type video writes the frames of its CSV."""
    wanted = settings(profile)
    return (wanted.get('input_mode') == 'flow'
            and Path(wanted['data_root']) == default_frames_dir(wanted['train_csv']))


@pytest.mark.parametrize('profile', PROFILES)
def test_every_profile_is_planned_or_refused_in_one_line(profile, scratch, monkeypatch):
    result = quick_start(scratch, '--profile', profile, '--dry_run')
    wanted = settings(profile)
    missing_weights = wanted.get('pretrained_path') and not (scratch / wanted['pretrained_path']).is_file()
    if is_micro_expression(profile) or missing_weights:
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stdout == '' and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith(f'quick_start.sh: --profile {profile} ')
        assert ('main_HTNet.py' if is_micro_expression(profile) else wanted['pretrained_path']) in result.stderr
        return

    assert result.returncode == 0, result.stderr
    assert 'skipped' not in result.stdout  # every profile that runs grades its own kind of test data
    commands = planned_commands(result.stdout)
    flow, cv, clips = wanted.get('input_mode') == 'flow', wanted.get('cv') is not None, reads_clips(profile)
    synthetic, prepare = commands['prepare_dataset.py']
    train, = commands['train_facial_palsy.py']
    evaluate, = commands['evaluate_facial_palsy.py']

    # the profile trains; a --cv or flow run keeps to its own folders, the others to the quick start's
    assert flag(train, '--profile') == [profile]
    save_dir = wanted['save_dir'] if (flow or cv) else QUICK_START_SAVE_DIR
    assert flag(train, '--save_dir') == [save_dir]
    # a --cv run keeps fold_<k>/best_model.pth only: its folder is the ensemble the later steps read
    model_path = save_dir if cv else f'{save_dir}/best_model.pth'
    assert flag(evaluate, '--model_path') == [model_path]

    # a flow profile reads rest / expression pairs in its own data folder: drawn with --pairs, or made of clips (drawn
    # with --video into a folder of their own, their rest and apex frames written into the profile's data_root)
    data_root = flag(train, '--data_root')[0]
    assert flag(synthetic, '--output_root') == flag(prepare, '--data_root')
    assert ('--pairs' in synthetic) == (flow and not clips) and ('--video' in synthetic) == clips
    assert flag(prepare, '--dataset_type') == ['video' if clips else 'FNP']
    assert flag(prepare, '--output_csv') == flag(train, '--train_csv') == flag(evaluate, '--test_csv')
    if clips:
        assert flag(prepare, '--frames_dir') == [data_root] and flag(synthetic, '--output_root') != [data_root]
    else:
        assert flag(synthetic, '--output_root') == [data_root]
    if flow:
        assert data_root == wanted['data_root'] and flag(train, '--train_csv') == [wanted['train_csv']]
    else:
        assert data_root == './datasets/facial_palsy/FNP'

    # the test data are graded with the checkpoint the evaluation read: a folder, then one of them alone, then the
    # attention maps of that one (a pair: the expression photo and its rest photo; a clip: its rest and apex frames)
    grade_folder, grade_one = commands['demo_inference.py']
    attention, = commands['visualize_attention.py']
    assert all(flag(argv, '--model_path') == [model_path] for argv in (grade_folder, grade_one, attention))
    if clips:
        assert flag(grade_folder, '--video_dir') == ['./test_clips/']
        assert flag(grade_one, '--video') == flag(attention, '--video') == ['./test_clip.mp4']
    else:
        assert flag(grade_folder, '--image_dir') == ['./test_images/']
        assert flag(grade_one, '--image_path') == flag(attention, '--image_path') == ['./test_image.jpg']
        rest = ['./test_image_rest.jpg'] if flow else None
        assert all((flag(argv, '--rest') if '--rest' in argv else None) == rest for argv in (grade_one, attention))

    # every planned command parses with its script as written, the profile resolving through the scratch YAML
    monkeypatch.chdir(scratch)
    parse_args_with_config(train_facial_palsy.get_args_parser(), train)
    evaluate_facial_palsy.get_args_parser().parse_args(evaluate)
    prepare_dataset.get_args_parser().parse_args(synthetic)
    prepare_dataset.get_args_parser().parse_args(prepare)
    for argv in (grade_folder, grade_one):
        demo_inference.get_args_parser().parse_args(argv)
    visualize_attention.get_args_parser().parse_args(attention)


def test_flow_profiles_grade_pairs_and_clips_in_their_plans(scratch):
    """flow_video is read as a clip profile by prepare_dataset.py's own frames-folder rule, flow_pairs is not; the
    plans grade pairs by name in ./test_images/ and the test clips in ./test_clips/."""
    assert reads_clips('flow_video') and not reads_clips('flow_pairs')
    pairs = quick_start(scratch, '--profile', 'flow_pairs', '--dry_run')
    video = quick_start(scratch, '--profile', 'flow_video', '--dry_run')
    assert pairs.returncode == video.returncode == 0, pairs.stderr + video.stderr
    assert 'grade the test pairs' in pairs.stdout and '<name>_rest.<ext>' in pairs.stdout
    assert 'grade the test clips' in video.stdout and './test_clips/' in video.stdout
    synthetic, _ = planned_commands(video.stdout)['prepare_dataset.py']
    assert flag(synthetic, '--output_root') == ['./datasets/facial_palsy/FNP_clips']


def test_transfer_learning_runs_once_its_weights_exist(scratch):
    profile = next(name for name in PROFILES if settings(name).get('pretrained_path'))
    weights = scratch / settings(profile)['pretrained_path']
    assert quick_start(scratch, '--profile', profile, '--dry_run').returncode == 2
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b'weights')
    result = quick_start(scratch, '--profile', profile, '--dry_run')
    assert result.returncode == 0 and f'--profile {profile}' in result.stdout, result.stderr


def test_a_refusal_comes_before_any_slow_work(scratch):
    """Without --dry_run too: the refusal is the first thing printed, and no .venv is set up."""
    micro = next(name for name in PROFILES if is_micro_expression(name))
    result = quick_start(scratch, '--profile', micro)
    assert result.returncode == 2 and result.stdout == ''
    assert result.stderr.startswith(f'quick_start.sh: --profile {micro} ')
    assert not (scratch / '.venv').exists() and not (scratch / 'datasets').exists()


def test_an_unknown_profile_is_refused_with_the_list_of_profiles(scratch):
    result = quick_start(scratch, '--profile', 'nope', '--dry_run')
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert 'nope' in result.stderr and all(name in result.stderr for name in PROFILES)
    env_result = quick_start(scratch, '--dry_run', env={'HTNET_PROFILE': 'nope'})
    assert env_result.returncode == 2 and env_result.stderr == result.stderr


def test_the_default_plan_is_the_cpu_or_gpu_quick_start(scratch):
    result = quick_start(scratch, '--dry_run')
    assert result.returncode == 0, result.stderr
    train, = planned_commands(result.stdout)['train_facial_palsy.py']
    assert flag(train, '--profile')[0] in ('cpu_quickstart', 'standard')
    assert flag(train, '--save_dir') == [QUICK_START_SAVE_DIR]
    assert 'nothing was run' in result.stdout and not (scratch / '.venv').exists()


def test_help_names_the_dry_run(scratch):
    result = quick_start(scratch, '--help')
    assert result.returncode == 0 and '--dry_run' in result.stdout and '--profile' in result.stdout
