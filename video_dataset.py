"""Clips into rest / apex pairs: the work behind ``prepare_dataset.py --dataset_type video`` and ``--apex auto``.

A clip of one examination movement becomes one rest / expression pair, the input of ``--input_mode flow``: the
apex finder (``video.find_apex``) picks the rest frame and the apex, and both are written as lossless PNG images in
the layout of the synthetic pairs (``synthetic_faces.rest_photo_path``)::

    FRAMES/grade_N/<clip>.png            the apex frame (image_path)
    FRAMES/rest/grade_N/<clip>_rest.png  the rest frame (neutral_path)

so that ``FRAMES`` is the ``--data_root`` of training. The rows carry where the frames came from (``clip_path``,
``rest_frame``, ``apex_frame``, ``fps``, ``peak_frames``) and the landmarks the finder used (MTCNN's on the rest
frame, carried to the apex frame by the tracked head motion) as the fallback landmark columns. A clip that cannot
be used (unreadable, empty, a single frame, no face) is left out with its reason; the run goes on.

The table of clips (grade folders or an input CSV), subjects, sides and splits are ``prepare_dataset.py``'s, shared
with the photo datasets; this module only knows clips. ``ckplus_apex`` picks the apex of CK+ sequences with the
same finder instead of taking their last frame.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

import synthetic_faces
import synthetic_video
from annotations import GRADE_FOLDER_PATTERN, LANDMARK_COLUMNS, NEUTRAL_LANDMARK_COLUMNS, SampleRecord, normalise_split
from face_detection import LandmarkDetector
from utils import UserError, atomic_write_bytes, atomic_write_text
from video import VIDEO_SUFFIXES, ApexResult, find_apex, is_clip, natural_key, read_clip, save_motion_figure

__all__ = ['CLIP_COLUMNS', 'CLIP_TABLE', 'CLIP_TABLE_COLUMNS', 'FRAMES_MANIFEST', 'DEFAULT_MAX_FRAMES',
           'grade_folder_clips', 'clip_column', 'default_frames_dir', 'check_frames_dir', 'extract_pairs',
           'ckplus_apex']

# the input CSV's clip column: the first of these it has
CLIP_COLUMNS = ('clip_path', 'clip', 'video', 'image_path')
# the synthetic clips' table (synthetic_video) and the columns a preparation takes over from it
CLIP_TABLE = synthetic_video.CLIP_TABLE
CLIP_TABLE_COLUMNS = ('subject', 'side', 'expression')
FRAMES_MANIFEST = 'video_frames.json'
# Clips are read whole into memory; this many frames (30 s at 30 frames/s, ~5 GB of 1080p) is where reading stops.
DEFAULT_MAX_FRAMES = 900


# finding clips

def grade_folder_clips(folder: str | os.PathLike) -> list[tuple[Path, str | None]]:
    """``(clip, patient)`` for the clips of one grade folder: videos (``video.VIDEO_SUFFIXES``) and folders of
    frame images directly inside (``patient`` None: the subject comes from the name), and those inside a patient
    folder (``grade_3/P001/smile.mp4``: ``P001``). Hidden files and folders are left out; sorted by name."""
    found: list[tuple[Path, str | None]] = []
    for entry in _entries(Path(folder)):
        if is_clip(entry):
            found.append((entry, None))
        elif entry.is_dir():
            found.extend((inner, entry.name) for inner in _entries(entry) if is_clip(inner))
    return found


def _entries(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if not p.name.startswith('.')), key=lambda p: natural_key(p.name))


def clip_column(columns: Sequence[str], source: str | os.PathLike) -> str:
    """The column of an input CSV that names the clips (``CLIP_COLUMNS``), or a ``UserError`` listing them."""
    for name in CLIP_COLUMNS:
        if name in columns:
            return name
    raise UserError(f'{source}: no clip column (one of {", ".join(CLIP_COLUMNS)}; it has: '
                    f'{", ".join(columns) or "none"})')


# outputs

def default_frames_dir(output_csv: str | os.PathLike) -> Path:
    """Where the frames of ``OUT.csv`` go without ``--frames_dir``: ``OUT_frames/`` beside it."""
    output_csv = Path(output_csv)
    return output_csv.with_name(f'{output_csv.stem}_frames')


def check_frames_dir(frames_dir: Path, overwrite: bool) -> dict[str, Any] | None:
    """Refuse, before any slow work, a frames folder that holds files this preparation did not write (without ``overwrite``).
    Returns the manifest of an earlier preparation into it (its frames are this tool's to replace), or None."""
    if frames_dir.exists() and not frames_dir.is_dir():
        raise UserError(f'--frames_dir {frames_dir}: is a file, not a folder')
    manifest = _read_frames_manifest(frames_dir)
    if manifest is None and frames_dir.is_dir() and any(frames_dir.iterdir()) and not overwrite:
        raise UserError(f'--frames_dir {frames_dir} is not empty and holds no frames of an earlier preparation; '
                        f'choose an empty or new folder (or pass --overwrite to write into it anyway)')
    return manifest


def _read_frames_manifest(frames_dir: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((frames_dir / FRAMES_MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get('files'), list) else None


def _frame_stem(relative: str, taken: set[str]) -> str:
    """A file name for the frames of a clip: its path below the grade / split folders, ``/`` -> ``_``
    (``grade_3/P001/smile.mp4`` -> ``P001_smile``), made unique with ``-2``, ``-3`` ..."""
    parts = [p for p in PurePosixPath(relative.replace('\\', '/')).parts if p not in ('/', '..', '.')]
    parts = parts[-2:] if Path(relative).is_absolute() else parts
    parts = [p for p in parts[:-1] if not (GRADE_FOLDER_PATTERN.fullmatch(p.lower()) or normalise_split(p))] + \
        [PurePosixPath(parts[-1]).stem if PurePosixPath(parts[-1]).suffix.lower() in VIDEO_SUFFIXES else parts[-1]]
    stem = '_'.join(parts) or 'clip'
    name, number = stem, 1
    while name.lower() in taken:
        number += 1
        name = f'{stem}-{number}'
    taken.add(name.lower())
    return name


def _write_png(path: Path, image: np.ndarray) -> None:
    ok, data = cv2.imencode('.png', cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise UserError(f'{path}: the frame could not be encoded as PNG')
    atomic_write_bytes(path, data.tobytes())


def _reason(error: UserError, path: Path) -> str:
    text = str(error)
    return text[len(f'{path}: '):] if text.startswith(f'{path}: ') else text


# clips -> pairs

def extract_pairs(table: pd.DataFrame, data_root: Path | None, frames_dir: Path, detector: LandmarkDetector, *,
                  fps: float | None = None, max_frames: int | None = DEFAULT_MAX_FRAMES,
                  settings: Mapping[str, Any] | None = None, figures: bool = False, progress: bool = True
                  ) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Find the rest frame and the apex of every clip of ``table`` (its ``image_path`` column names the clips,
    relative to ``data_root`` or absolute; ``grade``, ``side``, ``subject`` and any other columns are kept) and
    write the two frames into ``frames_dir``. Returns ``(pairs, skipped)``: one row per usable clip with
    ``image_path`` / ``neutral_path`` (relative to ``frames_dir``), ``clip_path``, ``rest_frame``, ``apex_frame``,
    ``fps``, ``num_frames``, ``peak_frames``, ``apex_measure`` / ``apex_contrast`` (``video.ApexResult``) and the
    landmark columns; and ``(clip, reason)`` for
    each clip left out. With ``figures`` the motion over time of each clip goes to ``frames_dir/motion/``.
    ``fps`` is the frame rate of folders of frames (and overrides the videos'); ``settings`` override
    ``video.APEX_SETTINGS``."""
    previous = _read_frames_manifest(frames_dir) or {'files': []}
    frames_dir.mkdir(parents=True, exist_ok=True)
    rows, skipped, written, taken = [], [], [], set()
    truncated, still = [], []
    for record in tqdm(table.to_dict('records'), desc='finding apex frames', unit='clip', disable=not progress,
                       dynamic_ncols=True):
        relative = str(record['image_path'])
        path = Path(relative) if Path(relative).is_absolute() or data_root is None else data_root / relative
        try:
            clip = read_clip(path, fps=fps, max_frames=max_frames)
            result = find_apex(clip, detector, settings=settings)
        except UserError as err:
            skipped.append((relative, _reason(err, path)))
            continue
        image_path = f'grade_{int(record["grade"])}/{_frame_stem(relative, taken)}.png'
        neutral_path = synthetic_faces.rest_photo_path(image_path)
        _write_png(frames_dir / image_path, clip.frames[result.apex_frame])
        _write_png(frames_dir / neutral_path, clip.frames[result.rest_frame])
        written += [image_path, neutral_path]
        if figures:
            figure = f'motion/{Path(image_path).stem}.png'
            save_motion_figure(result, frames_dir / figure, title=f'{relative}: rest frame {result.rest_frame}, '
                                                                  f'apex frame {result.apex_frame}')
            written.append(figure)
        truncated += [relative] if clip.truncated else []
        still += [relative] if result.still else []
        rows.append(_pair_row(record, relative, image_path, neutral_path, clip.fps, len(clip), result))
    _write_frames_manifest(frames_dir, data_root, written, previous)
    if truncated:
        print(f'note: {len(truncated)} clip(s) are longer than --max_frames {max_frames} and were read up to there '
              f'(first: {truncated[0]})')
    if still:
        print(f'note: {len(still)} clip(s) show hardly any movement (their apex stands out little from the '
              f'frame-to-frame noise), so their apex is uncertain: {", ".join(still[:3])}'
              f'{" ..." if len(still) > 3 else ""}')
    return pd.DataFrame(rows), skipped


def _pair_row(record: Mapping[str, Any], relative: str, image_path: str, neutral_path: str, fps: float,
              num_frames: int, result: ApexResult) -> dict[str, Any]:
    row = {key: value for key, value in record.items()
           if key not in ('image_path', *LANDMARK_COLUMNS, *NEUTRAL_LANDMARK_COLUMNS)}
    row.update({'image_path': image_path, 'neutral_path': neutral_path, 'clip_path': relative,
                'rest_frame': result.rest_frame, 'apex_frame': result.apex_frame, 'fps': round(fps, 3),
                'num_frames': num_frames, 'peak_frames': ';'.join(str(f) for f in result.peak_frames),
                'apex_measure': result.measure, 'apex_contrast': round(result.contrast, 1)})
    row.update(zip(LANDMARK_COLUMNS, np.round(result.apex_landmarks.reshape(-1).astype(float), 2)))
    row.update(zip(NEUTRAL_LANDMARK_COLUMNS, np.round(result.rest_landmarks.points.reshape(-1).astype(float), 2)))
    return row


def _write_frames_manifest(frames_dir: Path, data_root: Path | None, written: list[str],
                           previous: Mapping[str, Any]) -> None:
    """List this preparation's frames in the folder, and remove those an earlier preparation wrote that this one
    did not (a clip since removed): what is listed is this tool's, and nothing else is touched."""
    keep = set(written)
    root = frames_dir.resolve()
    for relative in previous.get('files', []):
        path = frames_dir / str(relative)
        if relative not in keep and path.is_file() and path.resolve().is_relative_to(root):
            path.unlink()
    manifest = {'generator': 'prepare_dataset.py --dataset_type video', 'data_root': str(data_root or ''),
                'files': written}
    atomic_write_text(frames_dir / FRAMES_MANIFEST, json.dumps(manifest, indent=1) + '\n')


# CK+

def ckplus_apex(records: Sequence[SampleRecord], detector: LandmarkDetector, *, progress: bool = True,
                settings: Mapping[str, Any] | None = None) -> tuple[list[SampleRecord], list[tuple[str, str]]]:
    """CK+ records (``annotations.scan_ckplus``: last frame = peak, first = neutral) with the peak frame chosen by
    ``video.find_apex`` over the sequence's frames instead, the neutral frame kept as the rest frame. A sequence
    the finder cannot read keeps its last frame; it is returned as ``(frame, reason)``. The CK+ landmarks belong to
    the last frame, so a record whose apex moved drops them (MTCNN finds the apex frame's)."""
    chosen, kept = [], []
    for record in tqdm(records, desc='finding CK+ apex frames', unit='sequence', disable=not progress,
                       dynamic_ncols=True):
        folder = Path(record.path).parent
        try:
            clip = read_clip(folder)
            paths = [str(p) for p in clip.frame_paths or []]
            rest = paths.index(str(record.neutral_path)) if record.neutral_path in paths else 0
            result = find_apex(clip, detector, rest_frame=rest, settings=settings)
        except UserError as err:
            kept.append((record.path, f'{_reason(err, folder)}; the last frame is kept'))
            chosen.append(record)
            continue
        apex = paths[result.apex_frame]
        chosen.append(record if apex == record.path else replace(record, path=apex, annotation=None))
    return chosen, kept
