"""Small helpers shared by every script: the one-line user error, seeding, devices, mixed precision, the help
formatter, YAML configs, atomic writes and figures.

Kept in one place so that the training, evaluation, inference, attention and legacy scripts never import each
other's internals (as DeiT keeps ``utils.py`` beside ``main.py``). This module imports no other module of the
project, and torch only inside the functions that need it, so that torch-free modules can use it. Checkpoint files
live in ``checkpoints.py``, grades and sides in ``annotations.py``.
"""
from __future__ import annotations

import argparse
import errno
import os
import random
import re
import shutil
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import yaml

if TYPE_CHECKING:
    import torch

class UserError(Exception):
    """A problem with the user's input (file, CSV, checkpoint, flag) described in one line; scripts print it and
    exit with status 2 instead of a traceback."""


def run_cli(main, argv: Sequence[str] | None = None) -> None:
    """Run a script's ``main(argv)``: a ``UserError`` prints one line on stderr and exits 2; Ctrl-C exits 130.
    ``main`` may return an exit code or any result (a dict for tests), which counts as success."""
    try:
        code = main(argv)
    except UserError as err:
        print(f'error: {err}', file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) and not isinstance(code, bool) else 0)


# seeding and devices

def seed_everything(seed: int) -> None:
    """Seed ``random``, numpy and torch (CPU and every GPU)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


DEVICE_CHOICES = 'auto, cpu, cuda or cuda:N'


def resolve_device(name: str = 'auto') -> torch.device:
    """``auto`` picks CUDA when available, else CPU. Any other name than cpu, cuda or cuda:N (``gpu``, ``tpu``,
    ``mps``...) and a CUDA device that is not there are one-line ``UserError`` s."""
    import torch

    name = str(name or 'auto').strip().lower()
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if not re.fullmatch(r'cpu|cuda(:\d+)?', name):
        raise UserError(f'--device {name}: choose {DEVICE_CHOICES}')
    device = torch.device(name)
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise UserError(f'--device {name}: no CUDA device is available here (use --device auto or cpu)')
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f'--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)')
    return device


def amp_context(device: torch.device, amp: str | None):
    """One autocast context, built once and reused (nanoGPT): ``nullcontext()`` on CPU or without ``amp``,
    ``torch.autocast('cuda', dtype)`` on CUDA. Returns ``(context, scaler)``; the GradScaler is only enabled for
    float16. ``amp`` is ``None``/``'none'``, ``'bf16'`` or ``'fp16'``."""
    import torch

    amp = None if amp in (None, False, 'none', 'off') else ('bf16' if amp is True else amp)
    if amp is not None and amp not in ('bf16', 'fp16'):
        raise UserError(f'--amp {amp}: choose bf16 or fp16')
    if amp is not None and device.type != 'cuda':
        print(f'note: --amp {amp} is ignored on {device.type}; running in float32')
        amp = None
    scaler = torch.amp.GradScaler('cuda', enabled=(amp == 'fp16'))
    if amp is None:
        return nullcontext(), scaler
    dtype = torch.bfloat16 if amp == 'bf16' else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype), scaler


# command line

class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each flag's default, said once: nothing is appended where there is no default to show (the
    help says what leaving the flag out means) or where the help text already states it ("(default: ...)",
    "; default ..."), so no flag reads "default X (default: None)"."""

    # a default the help text states itself: "(default ...", "default: ..." or "; default ..." / ". Default ..."
    STATED_DEFAULT = re.compile(r'\(default\b|\bdefault:|(?:^|[;.]\s*)default\b|%\(default\)', re.IGNORECASE)

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ''
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return help_text
        if self.STATED_DEFAULT.search(help_text):
            return help_text
        return super()._get_help_string(action)


# configuration files

def add_config_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('configuration file')
    group.add_argument('--config', default=None, metavar='FILE',
                       help='YAML file of defaults, e.g. config_examples.yaml; flags given on the command line win')
    group.add_argument('--profile', default=None, metavar='NAME',
                       help='profile (top-level section) of --config to use; needed when the file holds several')


def load_config(path: str | os.PathLike, profile: str | None = None) -> dict[str, Any]:
    """Read one profile of a YAML config. A file whose top level is a mapping of mappings holds profiles; any
    other mapping is a single flat profile. Keys in ``defaults:`` apply to every profile; ``description:`` is
    documentation only."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f'--config {path}: file not found')
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f'--config {path}: not valid YAML ({err})') from err
    if not isinstance(data, dict):
        raise UserError(f'--config {path}: expected a mapping of options or of profiles')
    profiles = {k: v for k, v in data.items() if isinstance(v, dict) and k != 'defaults'}
    is_profiled = bool(profiles) and len(profiles) == len([k for k in data if k != 'defaults'])
    if not is_profiled:
        if profile:
            raise UserError(f'--config {path} has no profiles, so --profile {profile} cannot be chosen')
        config = dict(data)
    else:
        if profile is None:
            if len(profiles) > 1:
                raise UserError(f'--config {path} holds several profiles; choose one with --profile '
                                f'({", ".join(profiles)})')
            profile = next(iter(profiles))
        if profile not in profiles:
            raise UserError(f'--profile {profile}: not in {path} (profiles: {", ".join(profiles)})')
        config = {**(data.get('defaults') or {}), **profiles[profile]}
    config.pop('description', None)
    return config


def parse_args_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None,
                           quiet: bool = False) -> argparse.Namespace:
    """Parse ``argv`` with ``--config FILE --profile NAME`` supplying defaults (timm ``train.py``): a YAML key
    sets the default of the flag with the same destination, and flags given on the command line win. Keys this
    script does not take (another script's options in a shared profile) are listed once and ignored."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument('--config', default=None)
    pre.add_argument('--profile', default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        config = load_config(known.config, known.profile)
        dests = {action.dest: action for action in parser._actions}
        used = {k: v for k, v in config.items() if k in dests and k not in ('config', 'profile', 'help')}
        unused = sorted(k for k in config if k not in used)
        for key, value in used.items():
            used[key] = config_value(dests[key], value, f'{known.config}' + (f' (profile {known.profile})'
                                                                              if known.profile else ''))
        parser.set_defaults(**used)
        if unused and not quiet:
            print(f'note: {known.config}: keys not used by this script: {", ".join(unused)}')
    elif known.profile:
        parser.error('--profile needs --config FILE')
    return parser.parse_args(argv)


def config_value(action: argparse.Action, value: Any, source: str) -> Any:
    """A config file's value for one flag, through the flag's own type and choices (as if typed on the command
    line): a wrong value is a one-line ``UserError`` naming the file, the key and what is allowed."""
    key = action.dest

    def convert(item: Any) -> Any:
        if item is None or isinstance(item, bool) or action.type is None:
            return item
        try:
            return action.type(str(item))  # as typed on the command line: 2.5 is no int
        except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
            kind = getattr(action.type, '__name__', 'value')
            raise UserError(f'{source}: {key}: {item!r} is not a valid {kind} ({err})') from None

    if value is None:
        return None
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise UserError(f'{source}: {key}: {value!r} must be true or false')
        bad = []
    elif action.nargs in ('+', '*') or (isinstance(action.nargs, int) and action.nargs > 0):
        items = value if isinstance(value, list) else [value]
        value = [convert(item) for item in items]
        bad = [item for item in value if action.choices is not None and item not in action.choices]
    elif action.const is not None and action.nargs == '?' and value is True:
        value, bad = action.const, []
    else:
        if isinstance(value, (list, dict)):
            raise UserError(f'{source}: {key}: expected one value, got {value!r}')
        value = convert(value)
        bad = [value] if action.choices is not None and value not in action.choices else []
    if bad:
        allowed = ', '.join(str(c) for c in action.choices)
        raise UserError(f'{source}: {key}: {bad[0]!r} is not allowed (choose {allowed})')
    return value


def to_plain(value: Any) -> Any:
    """Make a value YAML/JSON/``weights_only`` friendly: tuples -> lists, paths -> str, numpy -> python."""
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    torch = sys.modules.get('torch')  # a torch.device can only exist once torch is imported
    if torch is not None and isinstance(value, torch.device):
        return str(value)
    return value


def save_args(args: argparse.Namespace | dict, path: str | os.PathLike) -> None:
    """Write the resolved arguments as YAML beside the outputs, so a run can be repeated with ``--config``."""
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    atomic_write_text(path, yaml.safe_dump(to_plain(values), sort_keys=True))


# files

def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """``write(temporary path)``, then ``os.replace`` onto ``path``: an interrupted run never leaves half a file in
    place of an old one. The file gets the permissions of a plain ``open`` (``0o666`` less the umask, so
    colleagues can read it), and a full disk or a folder that cannot be written is a one-line ``UserError``
    naming the file, never a half-written one."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
        os.close(fd)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        problem = _write_problem(err)
        if problem:
            raise UserError(f'{path}: cannot write ({problem})') from err
        raise
    return path


def _write_problem(err: BaseException) -> str | None:
    """What a failed write means for the user, or None when it is not a file-system problem. torch.save reports a
    full disk as a RuntimeError ('... enforce fail ...' / 'file write failed'), so its text is read too."""
    chain = [err, err.__cause__, err.__context__]
    for item in chain:
        if isinstance(item, OSError):
            if item.errno == errno.ENOSPC or item.errno == errno.EDQUOT:
                return 'the disk is full'
            if item.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                return 'no permission to write there'
            return item.strerror or str(item)
    text = str(err).lower()
    if isinstance(err, RuntimeError) and ('file write failed' in text or 'enforce fail' in text
                                          or 'no space left' in text):
        return 'the disk is full or the file could not be written'
    return None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """``atomic_write`` of ``data``."""
    def write(tmp: str) -> None:
        with open(tmp, 'wb') as handle:
            handle.write(data)
    return atomic_write(path, write)


def same_path(a: str | os.PathLike | None, b: str | os.PathLike | None) -> bool:
    """Whether two paths (neither None) name the same file or folder, links and ``..`` resolved."""
    return a is not None and b is not None and os.path.realpath(a) == os.path.realpath(b)


def write_skipped(path: str | os.PathLike, skipped: Sequence[tuple[str, str]]) -> Path:
    """The photos a script left out, one ``path, reason`` row each, so nothing disappears silently."""
    return atomic_write_csv(path, ['path', 'reason'], [{'path': str(p), 'reason': str(r)} for p, r in skipped])


def check_writable(folder: str | os.PathLike, what: str, need_bytes: int = 0) -> Path:
    """Make sure ``folder`` can take the outputs before any slow work: it can be created, a file can be written
    in it, and (with ``need_bytes``) the disk has that much free. Each problem is a one-line ``UserError``."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f'{what} {folder}: cannot create the folder (a file is in the way)') from None
    except OSError as err:
        raise UserError(f'{what} {folder}: cannot create the folder ({err.strerror or err})') from None
    if not folder.is_dir():
        raise UserError(f'{what} {folder}: not a folder')
    atomic_write_bytes(folder / '.write_check', b'ok')  # a write problem is a one-line UserError naming the file
    (folder / '.write_check').unlink(missing_ok=True)
    if need_bytes:
        free = shutil.disk_usage(folder).free
        if free < need_bytes:
            raise UserError(f'{what} {folder}: {format_bytes(free)} free on its disk, but this run needs about '
                            f'{format_bytes(need_bytes)}')
    return folder


def format_bytes(count: float) -> str:
    """``1.7 GB``, ``640 MB``, ``12 KB``."""
    for unit in ('B', 'KB', 'MB', 'GB', 'TB'):
        if abs(count) < 1000 or unit == 'TB':
            return f'{count:.0f} {unit}' if unit in ('B', 'KB') else f'{count:.1f} {unit}'
        count /= 1000
    return f'{count:.1f} TB'



def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode('utf-8'))


def atomic_write_csv(path: str | os.PathLike, columns: Sequence[str], rows) -> Path:
    """Write dict rows as CSV atomically, so an interrupted run never leaves half a CSV in place of an earlier one."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns))
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())


def save_figure(figure, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Render a ``matplotlib.figure.Figure`` to PNG with the Agg canvas (no pyplot, so no figure is left open) and
    write it atomically. The PNG carries ``TOOL_MARK`` in its metadata, so a later run knows it may refresh it."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format='png', dpi=dpi, metadata={'Software': TOOL_MARK})
    return atomic_write_bytes(path, buffer.getvalue())


# outputs a user made are never replaced silently

TOOL_MARK = 'HTNet facial palsy toolkit'


def png_made_here(path: str | os.PathLike) -> bool:
    """Whether a PNG carries ``TOOL_MARK`` (written by ``save_figure``)."""
    try:
        with open(path, 'rb') as handle:
            head = handle.read(4096)
    except OSError:
        return False
    return head.startswith(b'\x89PNG') and TOOL_MARK.encode() in head


def csv_header(path: str | os.PathLike) -> list[str]:
    """The column names of a CSV's first line ([] for an unreadable or binary file)."""
    import csv

    try:
        with open(path, newline='', encoding='utf-8') as handle:
            return [c.strip() for c in next(csv.reader(handle), [])]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def guard_outputs(paths: Sequence[str | os.PathLike], made_here: Callable[[Path], bool], overwrite: bool,
                  what: str = 'output') -> list[Path]:
    """Nothing a user made is replaced without ``--overwrite``: of the ``paths`` a script is about to write, those
    that exist must be its own earlier outputs (``made_here``), else this is a one-line ``UserError`` naming the
    first. Returns the existing paths that will be refreshed (announced by the caller). Call it before slow work."""
    existing = [Path(p) for p in paths if Path(p).exists()]
    for path in existing:
        if path.is_dir():
            raise UserError(f'{path} is a folder; the {what} must be a file')
        if not overwrite and not made_here(path):
            raise UserError(f'{path} exists and was not written by this script; choose another {what} or pass '
                            f'--overwrite to replace it')
    return existing
