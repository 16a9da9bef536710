"""Run folders: the files a training run owns in ``--save_dir`` / ``--log_dir``, the run's identity (``run_id``,
stored in each checkpoint and log), and the rule that a run never writes into a folder holding another run:
``guard_run_folders`` moves an earlier run aside (or refuses) before the slow work, holds the files an
``--overwrite`` replaces until the new run's first checkpoint is written (``RunFolders.commit``), and puts them back
when the run fails before that (``RunFolders.restore``). ``disk_estimate`` says what the checkpoints will take.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

import Model
from utils import UserError, format_bytes, same_path

# run folders

RUN_CHECKPOINTS = ('best_model.pth', 'last.pth')  # and the progress marks epoch_<N>.pth
# fold_result.json: how a cross-validation fold ended (engine.FOLD_RESULT), which rank 0 reads under torchrun
RUN_LOGS = ('summary.csv', 'training_history.json', 'training_curves.png', 'args.yaml', 'test_metrics.json',
            'skipped_images.csv', 'baseline_metrics.json', 'fold_result.json')
CV_LOGS = ('cv_summary.json', 'cv_predictions.csv', 'cv_folds.png', 'args.yaml', 'skipped_images.csv')
# a folder holds a run worth keeping once it holds one of these; the args.yaml and skipped_images.csv of a run
# that stopped before its first epoch are simply written again
RUN_RECORDS = ('best_model.pth', 'last.pth', 'summary.csv', 'training_history.json', 'test_metrics.json',
               'cv_summary.json')
OVERWRITE_HOLDER = '.overwritten-'  # hidden folder holding an earlier run until the new one's first checkpoint
_EPOCH_FILE = re.compile(r'epoch_(\d+)\.pth')
_FOLD_FOLDER = re.compile(r'fold_(\d+)')


def new_run_id() -> str:
    """A fresh run's identity, stored in each of its checkpoints and logs: start time and six random hex digits
    (``20261201-184848-3fa2c1``)."""
    return f'{time.strftime("%Y%m%d-%H%M%S")}-{secrets.token_hex(3)}'


def _unique(paths) -> list[Path]:
    seen, out = set(), []
    for path in paths:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            out.append(Path(path))
    return out


def run_files(save_dir: str | os.PathLike, log_dir: str | os.PathLike) -> list[Path]:
    """The files of a training run found in ``save_dir`` / ``log_dir``: ``best_model.pth``, ``last.pth``,
    ``epoch_<N>.pth`` and the logs the training writes; a user's other files there are never listed."""
    save_dir, log_dir = Path(save_dir), Path(log_dir)
    found = [save_dir / name for name in RUN_CHECKPOINTS]
    if save_dir.is_dir():
        marks = [p for p in save_dir.iterdir() if _EPOCH_FILE.fullmatch(p.name)]
        found += sorted(marks, key=lambda p: int(_EPOCH_FILE.fullmatch(p.name).group(1)))
    found += [log_dir / name for name in RUN_LOGS]
    return _unique(path for path in found if path.is_file())


def cv_run_files(save_dir: str | os.PathLike, log_dir: str | os.PathLike) -> list[Path]:
    """The files of a cross-validation: its summary files and every ``fold_<k>`` run."""
    save_dir, log_dir = Path(save_dir), Path(log_dir)
    found = [log_dir / name for name in CV_LOGS if (log_dir / name).is_file()]
    folds = {p.name for base in (save_dir, log_dir) if base.is_dir() for p in base.iterdir()
             if p.is_dir() and _FOLD_FOLDER.fullmatch(p.name)}
    for name in sorted(folds, key=lambda n: int(_FOLD_FOLDER.fullmatch(n).group(1))):
        found += run_files(save_dir / name, log_dir / name)
    return _unique(found)


def run_id_of(path: str | os.PathLike) -> str | None:
    """The ``run_id`` a checkpoint or a JSON log of this toolkit stores; None when it stores none (earlier
    versions) or cannot be read. A checkpoint is memory-mapped, so a large one costs no time to ask."""
    path = Path(path)
    try:
        if path.suffix == '.json':
            value = json.loads(path.read_text()).get('run_id')
        else:
            try:
                value = torch.load(path, map_location='cpu', weights_only=True, mmap=True).get('run_id')
            except RuntimeError:  # files of the old (pre-zip) format cannot be memory-mapped
                value = torch.load(path, map_location='cpu', weights_only=True).get('run_id')
    except Exception:  # unreadable, foreign or not a dict: no identity to compare
        return None
    return str(value) if value else None


def _records_in(files: Sequence[Path], folder: Path) -> list[Path]:
    return [p for p in files if p.parent == folder and p.name in RUN_RECORDS]


def run_ids_in(save_dir: str | os.PathLike, log_dir: str | os.PathLike) -> set[str]:
    """Every run identity stored in the checkpoints and logs of ``save_dir`` / ``log_dir``."""
    files = run_files(save_dir, log_dir)
    return {run_id for run_id in map(run_id_of, [p for p in files if p.name in RUN_RECORDS]) if run_id}


def _other_run(files: Sequence[Path], save_dir: Path, log_dir: Path, resume: str | os.PathLike,
               checkpoint: Mapping[str, Any]) -> str | None:
    """How ``save_dir`` / ``log_dir`` hold a run other than the one ``resume`` continues (None when they hold
    that run). Run identities decide; folders of earlier versions, whose files store none, must be the ones the
    resumed checkpoint was written to or read from."""
    resumed_id = checkpoint.get('run_id')
    written = checkpoint.get('args') or {}
    own = {'--save_dir': (Path(resume).parent, written.get('save_dir')), '--log_dir': (written.get('log_dir'),)}
    for flag, folder in (('--save_dir', save_dir), ('--log_dir', log_dir)):
        records = _records_in(files, folder)
        if not records:
            continue
        ids = sorted({run_id for run_id in map(run_id_of, records) if run_id})
        if ids and ids != [resumed_id]:
            return f'{flag} {folder} holds run {ids[0]}'
        if not ids and not any(same_path(folder, path) for path in own[flag]):
            return f'{flag} {folder} holds files of another run'
    return None


def _free_name(path: Path) -> Path:
    candidate, count = path, 1
    while candidate.exists():
        count += 1
        candidate = path.with_name(f'{path.name}-{count}')
    return candidate


def _root_of(path: Path, roots: Sequence[Path]) -> Path:
    """The deepest of ``roots`` holding ``path``."""
    holding = [root for root in roots if Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))]
    return max(holding, key=lambda root: len(Path(os.path.realpath(root)).parts))


def _remove_empty_folders(folder: Path) -> None:
    """Remove ``folder`` and the folders under it that hold nothing."""
    if not folder.is_dir():
        return
    for path in sorted(folder.rglob('*'), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    if not any(folder.iterdir()):
        folder.rmdir()


@dataclass
class RunFolders:
    """The output folders of a run and where an earlier run's files went: ``moves`` holds (original path, where it
    is now). ``commit()`` once this run's first checkpoint is written: files set aside by ``--overwrite`` are
    deleted then, files moved to ``<folder>.previous-<time>`` stay there. ``restore()`` when the run stops before
    that: its partial files go and the earlier ones come back, so a failed start loses nothing."""
    save_dir: Path
    log_dir: Path
    cv: bool = False
    moves: list[tuple[Path, Path]] = field(default_factory=list)
    holders: list[Path] = field(default_factory=list)
    overwrite: bool = False
    settled: bool = False

    def where(self, path: str | os.PathLike | None) -> str | None:
        """Where a file of the earlier run is now (``path`` itself when it was not moved)."""
        for original, now in self.moves:
            if path is not None and same_path(original, path):
                return str(now)
        return None if path is None else str(path)

    def commit(self) -> None:
        if self.settled:
            return
        self.settled = True
        if self.overwrite and self.moves:
            for holder in self.holders:
                shutil.rmtree(holder, ignore_errors=True)
            print(f'--overwrite: removed the {len(self.moves)} files of the earlier run now that this run\'s '
                  f'first checkpoint is written')

    def restore(self) -> None:
        if self.settled:
            return
        self.settled = True
        if not self.moves:
            return
        for path in (cv_run_files if self.cv else run_files)(self.save_dir, self.log_dir):
            path.unlink(missing_ok=True)  # this run's partial files: the earlier run's were all moved
        for original, now in reversed(self.moves):
            original.parent.mkdir(parents=True, exist_ok=True)
            os.replace(now, original)
        for holder in self.holders:
            _remove_empty_folders(holder)
        folders = ' and '.join(sorted({str(self.save_dir), str(self.log_dir)}))
        print(f'this run stopped before its first checkpoint: the earlier run\'s {len(self.moves)} files are back '
              f'in {folders}')


def _note_unfinished_overwrites(folders: Sequence[Path]) -> None:
    for folder in _unique(f for f in folders if f.is_dir()):
        for holder in sorted(folder.glob(f'{OVERWRITE_HOLDER}*')):
            print(f'note: {holder} holds the files of a run that an --overwrite set aside and never finished '
                  f'replacing; move them back or delete the folder')


def guard_run_folders(save_dir: str | os.PathLike, log_dir: str | os.PathLike, *, overwrite: bool = False,
                      resume: str | os.PathLike | None = None, resume_checkpoint: Mapping[str, Any] | None = None,
                      cv: bool = False, keep: Sequence[str | None] = ()) -> RunFolders:
    """Make ``save_dir`` / ``log_dir`` free for a run before any slow work, losing nothing.

    Folders that hold no earlier run are used as they are, and so are the folders of the run ``resume``
    continues. A folder that holds another run is refused for ``resume`` (one line naming both) unless
    ``overwrite``. Otherwise the earlier run's files (only those a training writes) move: with ``overwrite`` into
    a hidden ``<folder>/.overwritten-<time>/``, deleted once the new run's first checkpoint is written; without it
    to ``<folder>.previous-<time>/`` beside the folder, where they stay. Either way ``RunFolders.restore`` puts
    them back if the new run stops before its first checkpoint. ``keep`` lists files the run still has to read
    (``--pretrained_path``), which ``overwrite`` must not delete."""
    save_dir, log_dir = Path(save_dir), Path(log_dir)
    what = 'cross-validation' if cv else 'run'
    folders = RunFolders(save_dir, log_dir, cv=cv, overwrite=overwrite)
    _note_unfinished_overwrites([save_dir, log_dir])
    files = (cv_run_files if cv else run_files)(save_dir, log_dir)
    if not any(path.name in RUN_RECORDS for path in files):
        return folders
    if resume is not None:
        other = _other_run(files, save_dir, log_dir, resume, resume_checkpoint or {})
        if other is None:
            if overwrite:
                print(f'note: --overwrite ignored: {save_dir} holds the run that --resume {resume} continues')
                folders.overwrite = False
            return folders
        resumed_id = (resume_checkpoint or {}).get('run_id')
        ours = f'run {resumed_id}' if resumed_id else 'a checkpoint without a run id'
        if not overwrite:
            raise UserError(f'{other}, not the one --resume {resume} continues ({ours}); resume into '
                            f'{Path(resume).parent} or an empty folder, or add --overwrite to replace that run')
    if overwrite:
        for path in keep:
            if path is not None and any(same_path(path, file) for file in files):
                raise UserError(f'{path} would be removed by --overwrite; copy it out of {save_dir} first or choose '
                                f'another --save_dir')
    stamp = time.strftime('%Y%m%d-%H%M%S')
    roots = _unique([save_dir, log_dir])
    holders: dict[Path, Path] = {}
    for root in roots:
        if overwrite:
            holders[root] = _free_name(root / f'{OVERWRITE_HOLDER}{stamp}')
        else:
            named = root if root.name not in ('', '.', '..') else Path(os.path.realpath(root))
            holders[root] = _free_name(named.with_name(f'{named.name}.previous-{stamp}'))
    try:
        for path in files:
            root = _root_of(path, roots)
            target = holders[root] / Path(os.path.realpath(path)).relative_to(os.path.realpath(root))
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            folders.moves.append((path, target))
    except OSError as err:
        folders.restore()
        raise UserError(f'cannot move the earlier {what}\'s files out of the way ({err.strerror or err}); '
                        f'choose another --save_dir/--log_dir') from None
    folders.holders = [holders[root] for root in roots if holders[root].exists()]
    for root in roots:  # fold_<k> folders left empty by the move
        for sub in ([p for p in root.iterdir() if p.is_dir() and _FOLD_FOLDER.fullmatch(p.name)] if cv else []):
            _remove_empty_folders(sub)
    if overwrite:
        print(f'--overwrite: the earlier {what}\'s {len(files)} files wait in '
              f'{" and ".join(str(h) for h in folders.holders)} until this run\'s first checkpoint is written')
    else:
        moved = ', '.join(f'{root} -> {holders[root]}' for root in roots if holders[root].exists())
        print(f'moved the earlier {what}\'s {len(files)} files out of the way, keeping them: {moved} (--resume '
              f'continues a run, --overwrite replaces it)')
    return folders


def disk_estimate(model_args: Mapping[str, Any], first_epoch: int, epochs: int, save_interval: int,
                  runs: int | None = 1, ema: bool = False) -> tuple[int, str]:
    """Bytes the checkpoints of a run training ``first_epoch..epochs`` take (times ``runs`` cross-validation
    folds; None: a number not known yet, counted once), and a line saying so: ``best_model.pth`` and ``last.pth``
    with AdamW's state (weights, 4 bytes per value, and two moments, 8 more per parameter) plus the weights-only
    ``epoch_<N>.pth``; with ``ema`` (``--ema``) both full files also hold the raw training weights beside the
    averaged ones. The network is built on the ``meta`` device, which allocates nothing, just to count."""
    with torch.device('meta'):
        network = Model.build_model(dict(model_args))
    weights = sum(t.numel() * t.element_size() for t in network.state_dict().values())
    full = (2 if ema else 1) * weights + 8 * sum(p.numel() for p in network.parameters() if p.requires_grad)
    marks = sum(1 for epoch in range(first_epoch, epochs + 1) if save_interval and epoch % save_interval == 0)
    one_run = 2 * full + marks * weights
    parts = (f'best_model.pth and last.pth of {format_bytes(full)} each with the optimizer state'
             + (' and the EMA\'s training weights' if ema else '')) + (
        f', {marks} epoch_N.pth of {format_bytes(weights)} each, weights only' if marks else '')
    if runs is None:
        return one_run, f'disk: about {format_bytes(one_run)} of checkpoints per fold ({parts})'
    fold_text = f' for {runs} folds' if runs > 1 else ''
    return runs * one_run, f'disk: about {format_bytes(runs * one_run)} of checkpoints{fold_text} ({parts})'
