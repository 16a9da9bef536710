"""Grading a clip of the examination with a trained checkpoint: what ``demo_inference.py --video`` and
``visualize_attention.py --video`` share.

A clip films one movement (rest -> brow raise, eye closure or smile -> rest). ``load_clip`` reads it and finds its
rest frame and apex (``video.read_clip``, ``video.find_apex``, with the predictor's MTCNN); ``grade_clip`` grades it:

* a checkpoint trained with ``--input_mode flow`` grades the (rest frame, apex frame) pair with
  ``FacialPalsyPredictor.predict_pair``: the pair ``prepare_dataset.py --dataset_type video`` makes of a clip for
  training, read the way training read it;
* a checkpoint of single photos grades the peak frames (``ApexResult.peak_frames``: the frames around the apex that
  move at least 90 % as much as it does; the default, ``grade_frames='peak'``), their probabilities averaged and
  read with the checkpoint's prediction rule as a patient's photos are (``losses.subject_grades_from_photos``), or
  the apex frame alone (``grade_frames='apex'``). Their OOD score is the mean of the frames'.

For the grade over time a few more frames are graded on their own (``curve_frames``): by default at most
``CURVE_POINTS`` frames evenly spread over the clip (a long clip costs no more than a short one), or every K-th
frame (``grade_every``); a photo checkpoint grades each frame, a flow checkpoint each (rest frame, frame) pair.
Their expected grade is drawn over the motion curve. What is written of a graded clip: the per-frame table
(``frame_columns``), the clip's summary as JSON (``clip_summary``) and the figure (``clip_figure``); a folder run
writes one ``summary_row`` per clip, a clip that cannot be graded included with its status and reason.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

import utils
from annotations import HB_GRADES
from ensemble import finite_or_none
from face_detection import LandmarkDetector
from inference import FacialPalsyPredictor, display_grade, draw_probabilities, ood_line, probability_column
from losses import expected_grade, subject_grades_from_photos
from video import ApexResult, Clip, draw_motion, find_apex, is_clip, natural_key, read_clip
from video_dataset import DEFAULT_MAX_FRAMES

__all__ = ['GRADE_FRAMES', 'CURVE_POINTS', 'CLIP_STATUSES', 'OUTPUT_SUFFIXES', 'ClipError', 'ClipGrade', 'load_clip',
           'curve_frames', 'grade_clip', 'expected_grades', 'frame_columns', 'frame_rows', 'clip_summary',
           'format_clip', 'clip_figure', 'write_clip_outputs', 'clip_stem', 'clip_outputs', 'clip_stems',
           'list_clips', 'guard_clip_outputs', 'summary_columns', 'summary_row', 'failed_row', 'grade_clips',
           'format_counts', 'frames_csv_made_here', 'clip_json_made_here', 'summary_csv_made_here']

# which frames grade a clip for a checkpoint of single photos (a flow checkpoint always grades the rest -> apex pair)
GRADE_FRAMES = ('peak', 'apex')
# frames graded for the curve over time, evenly over the clip, unless every K-th is asked for
CURVE_POINTS = 24
# ok / no_face_fallback as a photo's (MTCNN missed the face on a graded frame: template landmarks); a clip that
# cannot be read, or on whose frames the apex finder finds no face, is not graded
CLIP_STATUSES = ('ok', 'no_face_fallback', 'unreadable', 'no_face')
# the outputs of one clip, named <clip name><suffix>; the figure is named as the photo overlays are
OUTPUT_SUFFIXES = {'frames_csv': '_frames.csv', 'json': '_grade.json', 'figure': '_prediction.png'}
FRAME_TABLE_START = ['frame', 'time_s', 'motion']
SUMMARY_START = ['clip_path', 'status']
GRADED_ON = {'pair': 'the rest -> apex pair', 'apex': 'the apex frame', 'peak': 'the mean of the peak frames'}


class ClipError(utils.UserError):
    """A clip that cannot be graded, in one line naming it; ``status`` is ``unreadable`` (missing, empty, corrupt,
    a single frame) or ``no_face`` (the apex finder found no face on its frames)."""

    def __init__(self, message: str, status: str):
        super().__init__(message)
        self.status = status


# reading and grading

def load_clip(path: str | os.PathLike, detector: LandmarkDetector, fps: float | None = None,
              max_frames: int | None = DEFAULT_MAX_FRAMES) -> tuple[Clip, ApexResult]:
    """Read a clip (a video file or a folder of frames) and find its rest frame and apex with ``detector`` (the
    predictor's MTCNN). ``fps`` is the frame rate of a folder of frames (and overrides a video's); reading stops at
    ``max_frames``. A clip that cannot be used raises ``ClipError``."""
    try:
        clip = read_clip(path, fps=fps, max_frames=max_frames)
    except utils.UserError as err:
        raise ClipError(str(err), 'unreadable') from None
    try:
        return clip, find_apex(clip, detector)
    except utils.UserError as err:
        raise ClipError(str(err), 'no_face') from None


def curve_frames(count: int, grade_every: int | None = None) -> list[int]:
    """The frames graded for the curve over time: every ``grade_every``-th frame from the first (0: none), or
    without it at most ``CURVE_POINTS`` frames evenly spread over the clip, the first and the last included."""
    if grade_every is not None:
        if grade_every < 0:
            raise utils.UserError(f'--grade_every {grade_every}: must be 0 (no curve) or more')
        return [] if grade_every == 0 else list(range(0, count, grade_every))
    if count <= CURVE_POINTS:
        return list(range(count))
    return sorted({int(round(v)) for v in np.linspace(0, count - 1, CURVE_POINTS)})


def expected_grades(probabilities: np.ndarray) -> np.ndarray:
    """The expected grade index ``sum_k k p_k`` (``losses.expected_grade``) of probability rows ``(N, C)``."""
    logits = torch.log(torch.as_tensor(np.asarray(probabilities, dtype=np.float64)).clamp_min(1e-12))
    return expected_grade(logits).numpy()


@dataclass
class ClipGrade:
    """A graded clip: the ``clip`` and its ``apex`` (``video.ApexResult``), the clip's ``result`` (the keys of a
    predictor result: ``grade_index``, ``grade``, ``confidence``, ``probabilities``, ``status``, ``ood_score``,
    ``ood_flag``, ``side`` ...), ``graded_on`` (``pair``, ``apex`` or ``peak``) and ``grading_frames`` (the frames
    whose probabilities make the grade), the predictor result of every frame graded on its own (``frames``: the
    grading frames and the curve's; for a flow checkpoint each is the pair rest frame -> that frame), and how it was
    graded (``grades``, ``models``, ``tta``, ``settings``). ``notes`` are lines for the user (a clip cut at
    ``max_frames``, hardly any movement)."""
    clip: Clip
    apex: ApexResult
    result: dict[str, Any]
    graded_on: str
    grading_frames: list[int]
    frames: dict[int, dict[str, Any]]
    grades: list[str]
    models: list[str]
    tta: str
    settings: str
    notes: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return Path(self.clip.path)

    def time(self, frame: int) -> float:
        return float(frame / self.clip.fps)

    def frame_probabilities(self) -> np.ndarray:
        """``(num_frames, C)``: each frame's probabilities where it was graded on its own, NaN elsewhere."""
        table = np.full((len(self.clip), len(self.grades)), np.nan)
        for frame, result in self.frames.items():
            if result.get('probabilities') is not None:
                table[frame] = [result['probabilities'][g] for g in self.grades]
        return table


def _grade_frames(predictor: FacialPalsyPredictor, clip: Clip, rest: int, frames: Sequence[int],
                  progress: bool = False) -> dict[int, dict[str, Any]]:
    """Each frame graded on its own (a flow checkpoint: the pair rest frame -> frame), in the predictor's
    batches."""
    results: dict[int, dict[str, Any]] = {}
    chunks = [list(frames[i:i + predictor.batch_size]) for i in range(0, len(frames), predictor.batch_size)]
    with tqdm(total=len(frames), desc='grading frames', unit='frame', leave=False,
              disable=not progress or len(chunks) < 2) as bar:
        for chunk in chunks:
            if predictor.reads_pairs:
                graded = predictor.predict_pairs([(clip.frames[rest], clip.frames[i]) for i in chunk])
            else:
                graded = predictor.predict_batch([clip.frames[i] for i in chunk])
            results.update(zip(chunk, graded))
            bar.update(len(chunk))
    return results


def _mean_result(predictor: FacialPalsyPredictor, frames: Sequence[dict[str, Any]], base: dict[str, Any]
                 ) -> dict[str, Any]:
    """One result of several frames' (the peak frames of a photo checkpoint): probabilities averaged and decoded
    as a patient's photos are, the side's averaged, the OOD score the mean of the frames' finite scores; landmarks
    and the rest are ``base``'s (the apex frame's)."""
    probabilities = np.array([[r['probabilities'][g] for g in predictor.grades] for r in frames])
    _, _, mean, index = subject_grades_from_photos(['clip'] * len(frames), probabilities, predictor.prediction)
    grade_index = int(index[0])
    scores = [s for s in (finite_or_none(r.get('ood_score')) for r in frames) if s is not None]
    score = float(np.mean(scores)) if scores else float('nan')
    result = {**base, 'grade_index': grade_index, 'grade': predictor.grades[grade_index],
              'confidence': float(mean[0][grade_index]),
              'probabilities': {g: float(p) for g, p in zip(predictor.grades, mean[0])},
              'ood_score': score, 'ood_flag': bool(scores) and score > 1.0,
              'status': 'ok' if all(r['status'] == 'ok' for r in frames) else 'no_face_fallback'}
    if frames[0].get('side_probabilities') is not None:
        side = np.mean([[r['side_probabilities'][s] for s in predictor.sides] for r in frames], axis=0)
        result.update({'side': predictor.sides[int(side.argmax())], 'side_confidence': float(side.max()),
                       'side_probabilities': {s: float(p) for s, p in zip(predictor.sides, side)}})
    return result


def grade_clip(predictor: FacialPalsyPredictor, clip: Clip, apex: ApexResult, grade_frames: str = 'peak',
               grade_every: int | None = None, progress: bool = False) -> ClipGrade:
    """Grade a clip whose rest frame and apex were found (``load_clip``): see the module docstring. The frames
    that make the grade are graded exactly as ``predict_pair`` / ``predict_batch`` grade them alone; the curve's
    frames (``curve_frames(len(clip), grade_every)``) after them, in batches, with a progress bar when
    ``progress`` and there are many."""
    if grade_frames not in GRADE_FRAMES:
        raise utils.UserError(f'grade_frames {grade_frames!r}: choose one of {", ".join(GRADE_FRAMES)}')
    rest, top = apex.rest_frame, apex.apex_frame
    if predictor.reads_pairs:
        graded_on, grading = 'pair', [top]
        frames = {top: predictor.predict_pair(clip.frames[rest], clip.frames[top])}
        result = dict(frames[top])
    else:
        graded_on = grade_frames
        grading = [top] if grade_frames == 'apex' else sorted({*apex.peak_frames, top})
        frames = dict(zip(grading, predictor.predict_batch([clip.frames[i] for i in grading])))
        result = (dict(frames[top]) if len(grading) == 1
                  else _mean_result(predictor, [frames[i] for i in grading], frames[top]))
    others = [i for i in curve_frames(len(clip), grade_every) if i not in frames]
    frames.update(_grade_frames(predictor, clip, rest, others, progress))
    result.update(path=str(clip.path), error=None)
    notes = []
    if clip.truncated:
        notes.append(f'{clip.path}: longer than {len(clip)} frames; only these were read (max_frames)')
    if apex.still:
        notes.append(f'{clip.path}: hardly any movement (the apex stands out little from the frame-to-frame noise), '
                     f'so the apex is uncertain')
    if result['status'] == 'no_face_fallback':
        notes.append(f'{clip.path}: MTCNN found no face on a graded frame; it was read on template landmarks, treat '
                     f'the grade with caution')
    return ClipGrade(clip=clip, apex=apex, result=result, graded_on=graded_on, grading_frames=sorted(grading),
                     frames=dict(sorted(frames.items())), grades=list(predictor.grades),
                     models=list(predictor.model_paths), tta=predictor.tta, settings=predictor.describe(),
                     notes=notes)


# tables

def _rounded(value: Any, digits: int = 6) -> float | None:
    value = finite_or_none(value)
    return None if value is None else round(value, digits)


def frame_columns(grades: Sequence[str]) -> list[str]:
    """Columns of the per-frame table: ``frame``, ``time_s``, ``motion`` (the face's own movement relative to the
    rest frame, ``video.ApexResult.motion``; empty where the face was lost), ``is_rest``, ``is_apex``, ``is_peak``, ``grades_clip`` (the
    frame's probabilities make the clip's grade), then for the frames graded on their own ``status``, ``grade``,
    ``expected_grade`` (index, 0 = the first class), one ``p_<grade>`` per class and ``ood_score`` (empty for the
    others)."""
    return [*FRAME_TABLE_START, 'is_rest', 'is_apex', 'is_peak', 'grades_clip', 'status', 'grade', 'expected_grade',
            *[probability_column(g) for g in grades], 'ood_score']


def frame_rows(graded: ClipGrade) -> list[dict[str, Any]]:
    """One row per frame of the clip (``frame_columns``)."""
    apex, probabilities = graded.apex, graded.frame_probabilities()
    expected = expected_grades(np.nan_to_num(probabilities))
    peak, grading = set(apex.peak_frames), set(graded.grading_frames)
    rows = []
    for frame in range(len(graded.clip)):
        row = {'frame': frame, 'time_s': round(graded.time(frame), 4), 'motion': _rounded(apex.motion[frame], 4),
               'is_rest': frame == apex.rest_frame, 'is_apex': frame == apex.apex_frame, 'is_peak': frame in peak,
               'grades_clip': frame in grading}
        result = graded.frames.get(frame)
        if result is not None and result.get('probabilities') is not None:
            row.update({'status': result['status'], 'grade': result['grade'],
                        'expected_grade': round(float(expected[frame]), 4),
                        **{probability_column(g): round(result['probabilities'][g], 6) for g in graded.grades},
                        'ood_score': _rounded(result.get('ood_score'))})
        rows.append(row)
    return rows


def clip_summary(graded: ClipGrade, outputs: Mapping[str, Path | None] | None = None) -> dict[str, Any]:
    """The clip's grade and where it came from, for JSON: ``clip_path``, ``status``, ``grade``, ``grade_index``,
    ``confidence`` (the predicted grade's probability), ``probabilities``, ``graded_on`` and ``graded_frames``,
    ``rest_frame``, ``apex_frame``, ``rest_time_s``, ``apex_time_s``, ``peak_frames``, ``peak_motion`` and ``still``
    (``video.ApexResult``'s: the apex's motion, and whether it hardly stands out from the noise), ``fps``,
    ``num_frames``, ``truncated``, ``face_detected`` (on the apex frame; a pair also ``rest_face_detected``), the
    side where the checkpoint predicts one, ``ood_score`` / ``ood_flag`` (null without OOD statistics), ``tta``,
    ``models``, ``curve_frames`` (the frames graded on their own), ``notes`` and ``outputs``."""
    result, apex = graded.result, graded.apex
    score = finite_or_none(result.get('ood_score'))
    summary = {
        'tool': utils.TOOL_MARK, 'clip_path': str(graded.path), 'status': result['status'],
        'grade': result['grade'], 'grade_index': result['grade_index'], 'confidence': result['confidence'],
        'probabilities': result['probabilities'], 'graded_on': GRADED_ON[graded.graded_on],
        'graded_frames': graded.grading_frames, 'rest_frame': apex.rest_frame, 'apex_frame': apex.apex_frame,
        'rest_time_s': round(graded.time(apex.rest_frame), 4), 'apex_time_s': round(graded.time(apex.apex_frame), 4),
        'peak_frames': list(apex.peak_frames), 'peak_motion': round(apex.peak_motion, 4), 'still': bool(apex.still),
        'fps': graded.clip.fps,
        'num_frames': len(graded.clip), 'truncated': graded.clip.truncated,
        'face_detected': result.get('face_detected')}
    if 'rest_face_detected' in result:
        summary['rest_face_detected'] = result['rest_face_detected']
    if result.get('side') is not None:
        summary.update({key: result[key] for key in ('side', 'side_confidence', 'side_probabilities')})
    summary.update({'ood_score': score, 'ood_flag': None if score is None else bool(result.get('ood_flag')),
                    'tta': graded.tta, 'models': graded.models, 'curve_frames': sorted(graded.frames),
                    'notes': graded.notes,
                    'outputs': {k: None if v is None else str(v) for k, v in (outputs or {}).items()}})
    return summary


def format_clip(graded: ClipGrade) -> str:
    """A few readable lines for the terminal."""
    result, apex, clip = graded.result, graded.apex, graded.clip
    frames = (f'frames {apex.rest_frame} -> {apex.apex_frame}' if graded.graded_on == 'pair'
              else f'frame{"s" if len(graded.grading_frames) > 1 else ""} '
                   f'{", ".join(map(str, graded.grading_frames))}')
    lines = [f'{clip.path}: {display_grade(result["grade"])} (class {result["grade_index"]}), confidence '
             f'{result["confidence"]:.3f}, graded on {GRADED_ON[graded.graded_on]} ({frames})',
             f'  rest frame {apex.rest_frame} ({graded.time(apex.rest_frame):.2f} s), apex frame {apex.apex_frame} '
             f'({graded.time(apex.apex_frame):.2f} s) of {len(clip)} frames at {clip.fps:g} frames/s; peak frames '
             f'{apex.peak_frames[0]}-{apex.peak_frames[-1]}',
             '  probabilities: ' + ', '.join(f'{g} {p:.3f}' for g, p in result['probabilities'].items())]
    if result.get('side') is not None:
        lines.append(f'  affected side: patient {result["side"]} ({result["side_confidence"]:.3f})')
    lines += [f'  {text}' for text in (ood_line(result), *graded.notes) if text]
    return '\n'.join(lines)


# the figure

def clip_figure(graded: ClipGrade, title: str | None = None):
    """Motion over time (``video.draw_motion``: the rest and apex frames, the peak frames) with the expected grade
    of the frames graded on their own joined by a line, thumbnails of the rest and apex frames with their
    landmarks, and the clip's probabilities. A matplotlib Figure (no pyplot state)."""
    from matplotlib.figure import Figure

    apex, clip = graded.apex, graded.clip
    figure = Figure(figsize=(15.5, 4.2), layout='constrained')
    grid = figure.add_gridspec(1, 4, width_ratios=[3.6, 1.25, 1.25, 1.4])
    ax_motion = figure.add_subplot(grid[0, 0])
    probabilities = graded.frame_probabilities()
    known = np.flatnonzero(np.isfinite(probabilities[:, 0]))
    curve = None
    if len(known) > 1:  # a line through the graded frames, none beyond them
        expected = expected_grades(probabilities[known])
        frames = np.arange(len(clip))
        curve = np.interp(frames, known, expected)
        curve[(frames < known[0]) | (frames > known[-1])] = np.nan
    six = list(graded.grades) == list(HB_GRADES)
    draw_motion(ax_motion, apex, curve if six else None)
    if curve is not None and not six:  # another scale than House-Brackmann's: labelled with the checkpoint's names
        twin = ax_motion.twinx()
        twin.plot(np.arange(len(clip)) / clip.fps, curve, color='tab:purple', linewidth=1.6, label='grade')
        twin.set_ylim(-0.3, len(graded.grades) - 0.7)
        twin.set_yticks(range(len(graded.grades)), [display_grade(g) for g in graded.grades], fontsize=7)
    ax_motion.set_title('motion over time' + (f'; expected grade of {len(known)} frames graded alone'
                                              if curve is not None else ''), fontsize=9)
    for column, (label, frame, points) in enumerate((('rest', apex.rest_frame, apex.rest_landmarks.points),
                                                     ('apex', apex.apex_frame, apex.apex_landmarks)), start=1):
        ax = figure.add_subplot(grid[0, column])
        ax.imshow(clip.frames[frame])
        points = np.asarray(points)
        ax.scatter(points[:, 0], points[:, 1], s=10, c='yellow', edgecolors='black', linewidths=0.4)
        ax.set_title(f'{label}: frame {frame} ({graded.time(frame):.2f} s)', fontsize=9)
        ax.set_axis_off()
    result = graded.result
    draw_probabilities(figure.add_subplot(grid[0, 3]), result, graded.grades,
                       title=f'clip: {display_grade(result["grade"])} ({result["confidence"]:.0%})\n'
                             f'{GRADED_ON[graded.graded_on]}')
    notes = [text for text in (graded.settings, ood_line(result)) if text]
    heading = title or f'{graded.path.name}: predicted {display_grade(result["grade"])} - research tool, not a diagnosis'
    figure.suptitle('\n'.join([heading, *notes]), fontsize=9.5,
                    color='tab:red' if result.get('ood_flag') else 'black')
    return figure


# outputs

def clip_stem(path: str | os.PathLike) -> str:
    """The name a clip's outputs start with: a video's name without its extension, a folder of frames' name."""
    path = Path(path)
    return path.name if path.is_dir() else path.stem


def clip_outputs(folder: str | os.PathLike, stem: str, figure: bool = True) -> dict[str, Path | None]:
    """The outputs of one clip in ``folder``: ``frames_csv``, ``json`` and ``figure`` (None without ``figure``),
    named ``<stem>`` + ``OUTPUT_SUFFIXES``."""
    folder = Path(folder)
    paths: dict[str, Path | None] = {kind: folder / f'{stem}{suffix}' for kind, suffix in OUTPUT_SUFFIXES.items()}
    if not figure:
        paths['figure'] = None
    return paths


def clip_stems(clips: Sequence[Path]) -> dict[Path, str]:
    """``clip_stem`` per clip of a folder; clips sharing one (``a.mp4``, ``a.avi``, a folder ``a``) keep their
    extension (or ``frames``) in it, so that no clip's outputs replace another's."""
    counts = Counter(clip_stem(path) for path in clips)
    return {path: clip_stem(path) if counts[clip_stem(path)] == 1
            else f'{clip_stem(path)}_{path.suffix.lstrip(".") if not path.is_dir() else "frames"}' for path in clips}


def list_clips(folder: str | os.PathLike, exclude: Sequence[Path] = ()) -> tuple[list[Path], list[Path]]:
    """The clips directly in ``folder`` (``video.is_clip``: videos by extension, whatever their state, and
    folders holding frame images), in natural order, and the other entries (hidden ones and ``exclude``, e.g. the
    output folder, left out of both)."""
    excluded = {os.path.realpath(p) for p in exclude}
    clips, others = [], []
    for path in sorted(Path(folder).iterdir(), key=lambda p: natural_key(p.name)):
        if path.name.startswith('.') or os.path.realpath(path) in excluded:
            continue
        (clips if is_clip(path) else others).append(path)
    return clips, others


def frames_csv_made_here(path: Path) -> bool:
    return utils.csv_header(path)[:len(FRAME_TABLE_START)] == FRAME_TABLE_START


def summary_csv_made_here(path: Path) -> bool:
    return utils.csv_header(path)[:len(SUMMARY_START)] == SUMMARY_START


def clip_json_made_here(path: Path) -> bool:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get('tool') == utils.TOOL_MARK and 'clip_path' in data


MADE_HERE = {'frames_csv': frames_csv_made_here, 'json': clip_json_made_here, 'figure': utils.png_made_here}
WHAT = {'frames_csv': '--output_csv', 'json': '--output_json', 'figure': 'figure'}


def guard_clip_outputs(outputs: Mapping[str, Path | None], overwrite: bool, clip: Path | None = None) -> list[Path]:
    """``utils.guard_outputs`` of a clip's outputs, each by its kind; none of them may be the clip itself (or lie
    inside a folder clip, where a file would become a frame). Returns the earlier outputs that will be refreshed."""
    replaced = []
    for kind, path in outputs.items():
        if path is None:
            continue
        if clip is not None and (utils.same_path(path, clip) or
                                 (clip.is_dir() and utils.same_path(Path(path).parent, clip))):
            raise utils.UserError(f'{WHAT[kind]} {path}: would be written {"over" if not clip.is_dir() else "into"} '
                                  f'the clip {clip}; choose another file')
        replaced += utils.guard_outputs([path], MADE_HERE[kind], overwrite, WHAT[kind])
    return replaced


def write_clip_outputs(graded: ClipGrade, outputs: Mapping[str, Path | None], dpi: int = 110) -> dict[str, Any]:
    """Write the per-frame table (``frames_csv``), the summary (``json``) and the figure (``figure``, skipped when
    None), each atomically; returns the summary. A figure that cannot be drawn is noted in it, not raised."""
    utils.atomic_write_csv(outputs['frames_csv'], frame_columns(graded.grades), frame_rows(graded))
    written = dict(outputs)
    if outputs.get('figure') is not None:
        try:
            utils.save_figure(clip_figure(graded), outputs['figure'], dpi=dpi)
        except (OSError, ValueError) as err:
            graded.notes.append(f'figure not written: {err}')
            written['figure'] = None
    summary = clip_summary(graded, written)
    utils.atomic_write_text(outputs['json'], json.dumps(summary, indent=2) + '\n')
    return summary


# a folder of clips

def summary_columns(grades: Sequence[str]) -> list[str]:
    """Columns of a folder run's table, one row per clip: the clip, its status, grade and probabilities, where
    its rest and apex frames are, its OOD score, the stem of its outputs, the reason it was not graded, how it
    was graded."""
    return [*SUMMARY_START, 'grade_index', 'grade', 'confidence', *[probability_column(g) for g in grades],
            'graded_on', 'rest_frame', 'apex_frame', 'rest_time_s', 'apex_time_s', 'fps', 'num_frames',
            'peak_motion', 'ood_score', 'ood_flag', 'outputs', 'error', 'tta', 'models']


def summary_row(graded: ClipGrade, stem: str) -> dict[str, Any]:
    """The folder row of a graded clip; a figure that could not be drawn is its ``error``."""
    result, apex = graded.result, graded.apex
    row = {'clip_path': str(graded.path), 'status': result['status'], 'grade_index': result['grade_index'],
           'grade': result['grade'], 'confidence': round(result['confidence'], 6),
           **{probability_column(g): round(result['probabilities'][g], 6) for g in graded.grades},
           'graded_on': GRADED_ON[graded.graded_on], 'rest_frame': apex.rest_frame, 'apex_frame': apex.apex_frame,
           'rest_time_s': round(graded.time(apex.rest_frame), 4),
           'apex_time_s': round(graded.time(apex.apex_frame), 4), 'fps': graded.clip.fps,
           'num_frames': len(graded.clip), 'peak_motion': round(apex.peak_motion, 4),
           'ood_score': _rounded(result.get('ood_score')), 'ood_flag': result.get('ood_flag'), 'outputs': stem,
           'error': next((n for n in graded.notes if n.startswith('figure not written')), None)}
    return {**row, 'tta': graded.tta, 'models': ';'.join(graded.models)}


def failed_row(path: Path, error: ClipError, predictor: FacialPalsyPredictor) -> dict[str, Any]:
    """The folder row of a clip that could not be graded: its status and the one-line reason."""
    return {'clip_path': str(path), 'status': error.status, 'error': str(error), 'tta': predictor.tta,
            'models': ';'.join(predictor.model_paths)}


def grade_clips(predictor: FacialPalsyPredictor, clips: Sequence[Path], outputs: Mapping[Path, Mapping[str, Any]],
                stems: Mapping[Path, str], *, fps: float | None = None, max_frames: int | None = DEFAULT_MAX_FRAMES,
                grade_frames: str = 'peak', grade_every: int | None = None, dpi: int = 110
                ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Grade every clip of a folder run and write its outputs (``outputs[clip]``, ``clip_outputs``), with a
    progress bar; a clip that cannot be graded is a ``failed_row`` with one line printed, and the run goes on.
    Returns the summary rows (one per clip, in order) and the results of the graded clips."""
    rows, results = [], []
    for clip in tqdm(clips, desc='grading clips', unit='clip'):
        try:
            graded = grade_clip(predictor, *load_clip(clip, predictor.detector, fps, max_frames), grade_frames,
                                grade_every)
        except ClipError as err:
            rows.append(failed_row(clip, err, predictor))
            tqdm.write(f'{err.status}: {err}')
            continue
        write_clip_outputs(graded, outputs[clip], dpi)
        rows.append(summary_row(graded, stems[clip]))
        results.append(graded.result)
        for note in graded.notes:
            tqdm.write(note)
    return rows, results


def format_counts(rows: Sequence[Mapping[str, Any]]) -> str:
    """``ok 3, no_face_fallback 0, unreadable 1, no_face 1``."""
    counts = Counter(row['status'] for row in rows)
    return ', '.join(f'{status} {counts.get(status, 0)}' for status in CLIP_STATUSES)

