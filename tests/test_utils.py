"""utils.py: config values checked like flags, device names, atomic writes with the umask's permissions and a
full disk as one line, writable-folder checks and the guard that never replaces a user's file silently."""
import argparse
import errno
import hashlib
import os
import stat

import pytest
import yaml

import train_facial_palsy
import utils
from utils import UserError


def digest(path) -> str:
    return hashlib.sha256(open(path, 'rb').read()).hexdigest()


def config_args(tmp_path, values: dict, *argv: str) -> argparse.Namespace:
    path = tmp_path / 'config.yaml'
    path.write_text(yaml.safe_dump(values))
    return utils.parse_args_with_config(train_facial_palsy.get_args_parser(), ['--config', str(path), *argv])


@pytest.mark.parametrize('values, message', [
    ({'epochs': 'two'}, "epochs: 'two' is not a valid int"),
    ({'epochs': 2.5}, "epochs: 2.5 is not a valid int"),
    ({'scheduler': 'bogus'}, "scheduler: 'bogus' is not allowed (choose plateau, cosine, none)"),
    ({'loss': 'bogus'}, "loss: 'bogus' is not allowed (choose ce, ordinal)"),
    ({'class_weights': 'yes'}, "class_weights: 'yes' must be true or false"),
    ({'block_repeats': [1, 'x']}, "block_repeats: 'x' is not a valid int"),
    ({'num_classes': 4}, 'num_classes: 4 is not allowed (choose 6, 3)'),
    ({'learning_rate': [1, 2]}, 'learning_rate: expected one value'),
])
def test_config_values_pass_the_flags_checks(tmp_path, values, message):
    with pytest.raises(UserError) as error:
        config_args(tmp_path, values, '--epochs', '3')  # a flag given on the command line does not hide a bad key
    text = str(error.value)
    assert text.startswith(str(tmp_path / 'config.yaml')) and message in text and '\n' not in text


def test_good_config_values_are_converted_as_on_the_command_line(tmp_path):
    args = config_args(tmp_path, {'epochs': 4, 'learning_rate': '1e-3', 'block_repeats': [1, 1, 2],
                                  'class_weights': True, 'amp': True, 'scheduler': 'cosine'})
    assert args.epochs == 4 and args.learning_rate == 1e-3 and args.block_repeats == [1, 1, 2]
    assert args.class_weights is True and args.amp == 'bf16' and args.scheduler == 'cosine'
    assert config_args(tmp_path, {'epochs': 4}, '--epochs', '7').epochs == 7  # the command line wins


@pytest.mark.parametrize('name', ['tpu', 'gpu', 'mps', 'cuda0', 'cpu:x'])
def test_unknown_device_names_are_one_line(name):
    with pytest.raises(UserError, match=f'--device {name}: choose auto, cpu, cuda or cuda:N'):
        utils.resolve_device(name)


def test_absent_cuda_is_one_line():
    import torch
    if torch.cuda.is_available():
        pytest.skip('this machine has CUDA')
    with pytest.raises(UserError, match='no CUDA device'):
        utils.resolve_device('cuda:1')
    assert utils.resolve_device('CPU').type == 'cpu' and utils.resolve_device('auto').type == 'cpu'


@pytest.mark.parametrize('umask, mode', [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_writes_respect_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = utils.atomic_write_text(tmp_path / 'a.txt', 'hello')
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode and path.read_text() == 'hello'


def test_a_full_disk_is_one_line_and_keeps_the_earlier_file(tmp_path):
    target = tmp_path / 'summary.csv'
    target.write_text('earlier\n')

    def full(tmp):
        with open(tmp, 'wb') as handle:
            handle.write(b'half')
        raise OSError(errno.ENOSPC, 'No space left on device')

    with pytest.raises(UserError, match=r'summary.csv: cannot write \(the disk is full\)'):
        utils.atomic_write(target, full)
    assert target.read_text() == 'earlier\n'
    assert [p.name for p in tmp_path.iterdir()] == ['summary.csv']  # no temporary file left behind

    def torch_full(tmp):  # torch.save reports a full disk this way
        raise RuntimeError('[enforce fail at inline_container.cc:626] . unexpected pos 123 vs 456')

    with pytest.raises(UserError, match='the disk is full or the file could not be written'):
        utils.atomic_write(target, torch_full)
    assert target.read_text() == 'earlier\n'


def test_check_writable_refuses_before_any_work(tmp_path):
    blocker = tmp_path / 'file.txt'
    blocker.write_text('x')
    with pytest.raises(UserError, match=r'--save_dir .*file.txt/run: cannot create the folder \(a file is in the way'):
        utils.check_writable(blocker / 'run', '--save_dir')
    with pytest.raises(UserError, match='free on its disk, but this run needs about'):
        utils.check_writable(tmp_path / 'ok', '--save_dir', need_bytes=10 ** 18)
    assert utils.check_writable(tmp_path / 'ok', '--save_dir', need_bytes=1).is_dir()
    assert list((tmp_path / 'ok').iterdir()) == []  # the probe file is gone
    assert utils.format_bytes(1_700_000_000) == '1.7 GB' and utils.format_bytes(512) == '512 B'


def test_guard_outputs_refreshes_its_own_files_only(tmp_path):
    mine, theirs = tmp_path / 'mine.csv', tmp_path / 'annotation.csv'
    mine.write_text('path,status,grade_index,grade\n')
    theirs.write_text('image_path,grade,side,split\n')
    before = digest(theirs)

    def made_here(path):
        return utils.csv_header(path)[:2] == ['path', 'status']

    assert utils.guard_outputs([mine, tmp_path / 'new.csv'], made_here, overwrite=False) == [mine]
    with pytest.raises(UserError, match='annotation.csv exists and was not written by this script; .*--overwrite'):
        utils.guard_outputs([mine, theirs], made_here, overwrite=False, what='--output_csv')
    assert digest(theirs) == before
    assert utils.guard_outputs([theirs], made_here, overwrite=True) == [theirs]


def test_figures_carry_the_toolkit_mark(tmp_path):
    from matplotlib.figure import Figure

    figure = Figure()
    figure.add_subplot().plot([0, 1])
    drawn = utils.save_figure(figure, tmp_path / 'curve.png')
    assert utils.png_made_here(drawn)
    (tmp_path / 'photo.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'\x00' * 64)
    assert not utils.png_made_here(tmp_path / 'photo.png') and not utils.png_made_here(tmp_path / 'missing.png')
