"""Grade facial palsy on new photos with a trained HTNet checkpoint.

``FacialPalsyPredictor`` (``inference.py``) rebuilds the network from a checkpoint (``checkpoints.load_trained``)
and turns photos into network inputs with the checkpoint's ``preprocess`` through ``facial_palsy_dataset`` (MTCNN
landmarks, face square, 2x2 region mosaic), so a photo is read exactly as it was in training. Many photos are
detected and classified in batches. A photo without a detectable face is still graded on the template landmarks of
the original code (status ``no_face_fallback``); a file that cannot be read gets status ``unreadable`` and never
stops a batch.

Next to the grade every photo gets the ``symmetry`` measurements of the landmarks it was graded with (``sym_*``
columns of the folder CSV, a line of the printout, drawn on the overlay); a checkpoint with a side head also
predicts the affected side (the patient's left / right / none). A checkpoint whose ``prediction`` entry is
``ordinal_median`` reads its grade as the median of the predicted distribution (``losses.ordinal_predict``), the
others as the most probable grade; the probabilities are the softmax either way.

Several checkpoints (``--model_path a.pth b.pth``, or a folder such as a ``--cv`` run's save folder) grade as an
ensemble, the mean of their probabilities; ``--tta mirror`` / ``mirror_shift`` also average mirrored and shifted
views of each photo. Every photo gets an out-of-distribution score (``ood_score``, 1.0 = the threshold; NaN for a
checkpoint without OOD statistics) and ``ood_flag``: a flagged photo is unlike the training photos and its grade
may not be trustworthy. The folder CSV records the TTA and the checkpoints in its ``tta`` and ``models`` columns.

A checkpoint trained with ``--input_mode flow`` grades a rest / expression pair: ``--rest`` gives the rest photo of
``--image_path``; in a folder each expression photo finds its rest photo in ``--pairs_csv`` (``image_path``,
``neutral_path``) or, without one, by its name (``inference.PAIRING_RULE``: ``<name>_rest.<ext>`` beside
``<name>.<ext>``). The folder CSV then has ``rest_path`` and ``rest_face_detected`` columns; an expression photo
without a rest photo gets the status ``no_rest_photo``.

A clip of the examination (``--video``: a video file or a folder of frames, rest -> expression -> rest) is read,
its rest frame and apex found (``video.find_apex``) and graded (``video_inference.grade_clip``): a flow checkpoint
grades the rest -> apex pair, a checkpoint of single photos the peak frames around the apex (their probabilities
averaged) or the apex frame alone (``--grade_frames apex``). It writes a table with one row per frame (motion, rest
/ apex / peak marks, the probabilities of the frames graded on their own for the curve over time), a JSON summary
of the clip's grade and a figure of motion and grade over time. ``--video_dir`` grades every clip of a folder into
``--output_dir`` with one row per clip in a summary CSV; a clip that cannot be graded gets its status there and the
run goes on.

Usage::

    python demo_inference.py --model_path ./checkpoints/fnp/best_model.pth --image_path ./test_image.jpg
    python demo_inference.py --model_path ./checkpoints/fnp/best_model.pth --image_dir ./test_images/ \\
        --output_csv ./predictions.csv
    python demo_inference.py --model_path ./checkpoints/fnp_flow/best_model.pth --image_path ./smile.jpg \\
        --rest ./rest.jpg
    python demo_inference.py --model_path ./checkpoints/fnp_flow/best_model.pth --video ./smile.mp4
    python demo_inference.py --model_path ./checkpoints/fnp_flow/best_model.pth --video_dir ./clips/ \\
        --output_dir ./clip_predictions

This is a research tool, not a clinical diagnosis.
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

import utils
from annotations import subject_from_name
from ensemble import DEFAULT_TTA, MODEL_PATHS_HELP, TTA_MODES, finite_or_none
from facial_palsy_dataset import ImageReadError
from inference import (PAIR_STATUSES, PAIRS_CSV_HELP, STATUSES, SYMMETRY_COLUMNS, FacialPalsyPredictor,
                       check_pair_flags, display_grade, missing_face_line, ood_line, probability_column,
                       symmetry_line, symmetry_row)
from losses import subject_grades_from_photos
from utils import check_writable, csv_header, guard_outputs, png_made_here
from video import VIDEO_SUFFIXES
from video_dataset import DEFAULT_MAX_FRAMES
from video_inference import (CURVE_POINTS, GRADE_FRAMES, OUTPUT_SUFFIXES, clip_outputs, clip_stem, clip_stems,
                             format_clip, format_counts, grade_clip, grade_clips, guard_clip_outputs, list_clips,
                             load_clip, summary_columns, summary_csv_made_here, write_clip_outputs)

__all__ = ['FacialPalsyPredictor', 'get_args_parser', 'main']

OVERLAY_SUFFIX = '_prediction.png'
DEFAULT_OUTPUT_CSV = './predictions.csv'
DEFAULT_CLIP_OUTPUT_DIR = './clip_predictions'


# command line

def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Grade facial palsy (House-Brackmann) on one photo or a folder of photos, or on a clip of the '
                    'examination or a folder of clips, with a trained HTNet checkpoint. A research tool, not a '
                    'clinical diagnosis.',
        formatter_class=utils.HelpFormatter)
    parser.add_argument('--model_path', required=True, nargs='+',
                        help=MODEL_PATHS_HELP + ' grade as an ensemble (their probabilities averaged); one '
                                                 'that cannot be opened is skipped with a note')
    parser.add_argument('--tta', default=DEFAULT_TTA, choices=list(TTA_MODES),
                        help='test-time augmentation: none; mirror (the photo and its mirror image, the side '
                             'prediction swapped back); mirror_shift (also crops moved by 2 face-square pixels). '
                             'The softmax probabilities of the views are averaged')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--image_path', default=None,
                        help='one photo: prints the grade and writes an overlay PNG (with --rest: the expression '
                             'photo of a pair)')
    source.add_argument('--image_dir', default=None,
                        help='a folder: every file in it (not sub-folders) gets one row in --output_csv; files '
                             'that are not readable images get status "unreadable". For a flow checkpoint, every '
                             'expression photo with its rest photo (see --pairs_csv)')
    source.add_argument('--video', default=None, metavar='CLIP',
                        help='one clip of the examination (a video: ' + ' '.join(VIDEO_SUFFIXES) + '; or a folder of '
                             'frame images): its rest frame and apex are found and the clip graded (a flow '
                             'checkpoint: the rest -> apex pair; a checkpoint of single photos: see --grade_frames). '
                             'Writes --output_csv (one row per frame), --output_json (the clip\'s grade) and the '
                             '--output_path figure; a clip that cannot be read, or shows no face, is a one-line error')
    source.add_argument('--video_dir', default=None, metavar='DIR',
                        help='every clip directly in a folder (videos and folders of frames): each one\'s frame '
                             f'table, summary and figure go to --output_dir (<clip name>{OUTPUT_SUFFIXES["frames_csv"]}, '
                             f'{OUTPUT_SUFFIXES["json"]}, {OUTPUT_SUFFIXES["figure"]}), one row per clip to '
                             '--output_csv; a clip that cannot be graded gets its status (unreadable, no_face) and the '
                             'reason there, and the run goes on')
    parser.add_argument('--rest', default=None, metavar='REST',
                        help='with --image_path and a checkpoint trained with --input_mode flow: the rest photo of '
                             'the same sitting; --image_path is then the expression photo and the pair is graded '
                             'on the optical flow between them. A checkpoint of single photos does not use it')
    parser.add_argument('--pairs_csv', default=None, metavar='CSV',
                        help=PAIRS_CSV_HELP.format(verb='graded'))
    parser.add_argument('--output_path', default=None,
                        help=f'overlay PNG for --image_path, never the photo itself; for --video the figure of the '
                             f'clip: motion over time with the rest and apex frames marked, the expected grade of the '
                             f'frames graded alone (see --grade_every), thumbnails of the rest and apex frames, the '
                             f'clip\'s probabilities (default: <photo or clip name>{OVERLAY_SUFFIX} beside it)')
    parser.add_argument('--output_csv', default=None,
                        help=f'(default: {DEFAULT_OUTPUT_CSV} for --image_dir, <output_dir>/clips.csv for '
                             f'--video_dir, <clip name>{OUTPUT_SUFFIXES["frames_csv"]} beside the clip for --video) '
                             f'For --video the per-frame table: frame, time_s, motion, is_rest, is_apex, is_peak, '
                             f'grades_clip, then for the frames graded on their own status, grade, expected_grade, '
                             f'p_<grade> and ood_score (empty for the others). For --video_dir one row per clip: '
                             f'clip_path, status, grade, probabilities, rest and apex frames, error. For --image_dir: '
                             'path, status, grade_index, grade, confidence, one p_<grade> '
                             'column per class, face_detected, error, then the sym_<measurement> symmetry columns, '
                             'ood_score and ood_flag, for a checkpoint with a side head predicted_side, '
                             'side_confidence and side_p_<left|right|none>, then tta and models (the checkpoints, '
                             '";"-separated); for a flow checkpoint rest_path and rest_face_detected follow '
                             'face_detected, and a photo without a rest photo gets status "no_rest_photo". When the '
                             'file names name patients (the part before the first "_", e.g. P001_smile.jpg) and a '
                             'patient has several photos, <name>_subjects.csv '
                             'beside it grades each patient from the mean of their photo probabilities')
    clips = parser.add_argument_group('clips (--video, --video_dir)')
    clips.add_argument('--output_json', default=None,
                       help=f'--video: the clip\'s grade as JSON (default: <clip name>{OUTPUT_SUFFIXES["json"]} beside '
                            'the clip): grade, confidence (the predicted grade\'s probability), probabilities, '
                            'graded_on, graded_frames, rest_frame, apex_frame, rest_time_s, apex_time_s, peak_frames, '
                            'fps, num_frames, ood_score and ood_flag (null without OOD statistics), tta, models, notes')
    clips.add_argument('--output_dir', default=None,
                       help=f'--video_dir: where each clip\'s table, summary and figure go (default: '
                            f'{DEFAULT_CLIP_OUTPUT_DIR})')
    clips.add_argument('--grade_frames', default=GRADE_FRAMES[0], choices=list(GRADE_FRAMES),
                       help='which frames grade a clip for a checkpoint of single photos: peak (the frames around the '
                            'apex that move at least 90%% as much, their probabilities averaged and read with the '
                            'checkpoint\'s rule, as a patient\'s photos are) or apex (the apex frame alone). A flow '
                            'checkpoint always grades the rest -> apex pair')
    clips.add_argument('--grade_every', type=int, default=None, metavar='K',
                       help=f'frames graded on their own for the grade over time (the table and the figure): every '
                            f'K-th frame (1: all; 0: none but those that grade the clip). Without it at most '
                            f'{CURVE_POINTS} frames evenly over the clip, the first and last included. A photo '
                            f'checkpoint grades the frame, a flow checkpoint the pair rest frame -> frame')
    clips.add_argument('--fps', type=float, default=None,
                       help='frames per second of a folder of frames (default 30) and, when given, of every clip')
    clips.add_argument('--max_frames', type=int, default=DEFAULT_MAX_FRAMES,
                       help='frames of a clip read at most (a clip is held in memory while it is graded)')
    parser.add_argument('--overlay_dir', default=None,
                        help=f'with --image_dir, also write an overlay PNG per readable photo here '
                             f'(<photo name>{OVERLAY_SUFFIX})')
    parser.add_argument('--no_overlay', action='store_true',
                        help='with --image_path, only print the result; with --video / --video_dir, no figure')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace an existing --output_csv / --output_path / --output_json (or a clip\'s output '
                             'in --output_dir) that this script did not write (its own earlier outputs are refreshed '
                             'without it)')
    parser.add_argument('--batch_size', type=int, default=32,
                        help='photos read, detected and classified together')
    parser.add_argument('--device', default='auto', help='auto (CUDA when available), cpu, cuda or cuda:N')
    utils.add_config_args(parser)
    return parser


def list_folder(image_dir: Path, exclude: Sequence[Path] = ()) -> tuple[list[Path], list[Path]]:
    """Every file directly inside ``image_dir``, sorted; hidden files and earlier overlays are left out (returned
    separately so they can be reported). Non-image files stay in: they get an ``unreadable`` row rather than
    vanishing from the results."""
    excluded = {p.resolve() for p in exclude}
    files, overlays = [], []
    for path in sorted(image_dir.iterdir()):
        if path.name.startswith('.') or not path.is_file() or path.resolve() in excluded:
            continue
        (overlays if path.name.endswith(OVERLAY_SUFFIX) else files).append(path)
    return files, overlays


def default_overlay_path(image_path: Path) -> Path:
    return image_path.with_name(image_path.stem + OVERLAY_SUFFIX)


def predictions_csv_made_here(path: Path) -> bool:
    """An earlier folder CSV of this script (its first columns), which may be refreshed."""
    return csv_header(path)[:4] == ['path', 'status', 'grade_index', 'grade']


def csv_row(result: dict[str, Any], grades: Sequence[str], sides: Sequence[str] = (),
            settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """One folder-CSV row of a result; ``settings`` (``tta``, ``models``) fill the last columns."""
    row = {'path': result['path'], 'status': result['status'], 'grade_index': result['grade_index'],
           'grade': result['grade'],
           'confidence': None if result['confidence'] is None else round(result['confidence'], 6)}
    for name in grades:
        p = (result['probabilities'] or {}).get(name)
        row[probability_column(name)] = None if p is None else round(p, 6)
    row['face_detected'] = result['face_detected']
    if 'rest_path' in result:  # a rest / expression pair
        row.update({'rest_path': result['rest_path'], 'rest_face_detected': result['rest_face_detected']})
    row['error'] = result['error']
    row.update(symmetry_row(result.get('symmetry')))
    score = finite_or_none(result.get('ood_score'))
    row.update({'ood_score': None if score is None else round(score, 6), 'ood_flag': result.get('ood_flag')})
    if sides:
        side_probabilities = result.get('side_probabilities') or {}
        row.update({'predicted_side': result.get('side'),
                    'side_confidence': None if result.get('side_confidence') is None
                    else round(result['side_confidence'], 6)})
        for name in sides:
            p = side_probabilities.get(name)
            row[f'side_p_{name}'] = None if p is None else round(p, 6)
    row.update(settings or {})
    return row


def csv_columns(grades: Sequence[str], sides: Sequence[str], pairs: bool = False) -> list[str]:
    """Columns of the folder CSV: the grade columns (with ``pairs``, the rest photo's after ``face_detected``),
    then symmetry, then side columns when there is a side head."""
    rest = ['rest_path', 'rest_face_detected'] if pairs else []
    columns = ['path', 'status', 'grade_index', 'grade', 'confidence', *[probability_column(g) for g in grades],
               'face_detected', *rest, 'error', *SYMMETRY_COLUMNS, 'ood_score', 'ood_flag']
    if sides:
        columns += ['predicted_side', 'side_confidence', *(f'side_p_{name}' for name in sides)]
    return columns + ['tta', 'models']


def run_settings(predictor: FacialPalsyPredictor) -> dict[str, Any]:
    """The ``tta`` and ``models`` columns: how the photos were graded and by which checkpoint(s)."""
    return {'tta': predictor.tta, 'models': ';'.join(predictor.model_paths)}


def format_result(result: dict[str, Any]) -> str:
    """A few readable lines for the terminal."""
    if result['probabilities'] is None:
        return f'{result["path"]}: {result["status"].replace("_", " ")} ({result["error"]})'
    lines = [f'{result["path"] or "photo"}: {display_grade(result["grade"])} (class {result["grade_index"]}), '
             f'confidence {result["confidence"]:.3f}']
    if 'rest_path' in result:
        lines.append(f'  rest photo {result["rest_path"] or "(array)"}: {result["rest_landmark_source"]} landmarks')
        if missing_face_line(result):
            lines.append(f'  {missing_face_line(result)}')
    if result['status'] == 'no_face_fallback' and 'rest_path' not in result:
        lines.append('  no face detected: graded on template landmarks, treat with caution')
    elif result['face_detected']:
        box = ', '.join(f'{v:.1f}' for v in result['face_box']) if result['face_box'] else 'none'
        lines.append(f'  face box ({box}), {result["landmark_source"]} landmarks')
    lines.append('  probabilities: ' + ', '.join(f'{g} {p:.3f}' for g, p in result['probabilities'].items()))
    if result.get('side') is not None:
        lines.append(f'  affected side: patient {result["side"]} ({result["side_confidence"]:.3f}; '
                     + ', '.join(f'{s} {p:.3f}' for s, p in result['side_probabilities'].items()) + ')')
    lines.append('  ' + symmetry_line(result.get('symmetry')))
    if ood_line(result):
        lines.append('  ' + ood_line(result))
    return '\n'.join(lines)


def predict_one(predictor: FacialPalsyPredictor, args: argparse.Namespace) -> dict[str, Any]:
    """``--image_path`` (and ``--rest`` for a flow checkpoint): print the grade and write the overlay."""
    image_path = Path(args.image_path)
    if not image_path.is_file():
        raise utils.UserError(f'--image_path {image_path}: file not found')
    rest_path = predictor.rest_photo(args.rest)
    output_path = Path(args.output_path) if args.output_path else default_overlay_path(image_path)
    if not args.no_overlay:
        for photo, flag in ((image_path, '--image_path'), (rest_path, '--rest')):
            if photo is not None and output_path.resolve() == photo.resolve():
                raise utils.UserError(f'--output_path {output_path} is the input photo ({flag}); choose another '
                                      f'file')
    replaced = [] if args.no_overlay else guard_outputs([output_path], png_made_here, args.overwrite, 'overlay')
    if not args.no_overlay:
        check_writable(output_path.parent, '--output_path folder')
    result = predictor.predict(image_path) if rest_path is None else predictor.predict_pair(rest_path, image_path)
    if result['status'] == 'unreadable':
        raise utils.UserError(result['error'])
    print(f'graded by {predictor.describe()}')
    print(format_result(result))
    if not args.no_overlay:
        if replaced:
            print(f'note: replacing {output_path} (an earlier overlay)')
        if rest_path is None:
            predictor.save_overlay(image_path, result, output_path)
        else:
            predictor.save_pair_overlay(rest_path, image_path, result, output_path)
        print(f'overlay written to {output_path}')
    return {'results': [result], 'overlay': None if args.no_overlay else str(output_path),
            **run_settings(predictor), 'skipped_models': predictor.skipped_models}


def predict_folder(predictor: FacialPalsyPredictor, args: argparse.Namespace) -> dict[str, Any]:
    """``--image_dir``: one CSV row per file (per expression photo for a flow checkpoint, its rest photo found by
    ``--pairs_csv`` or by name), a progress bar, and a count per status at the end."""
    image_dir = Path(args.image_dir)
    if not image_dir.is_dir():
        raise utils.UserError(f'--image_dir {image_dir}: not a folder')
    output_csv = Path(args.output_csv or DEFAULT_OUTPUT_CSV)
    if output_csv.is_dir():
        raise utils.UserError(f'--output_csv {output_csv} is a folder; give a file name')
    files, overlays = list_folder(image_dir, exclude=[output_csv])
    folders = [p for p in image_dir.iterdir() if p.is_dir() and not p.name.startswith('.')]
    if folders:
        print(f'note: {len(folders)} sub-folder(s) of {image_dir} are not searched')
    if overlays:
        print(f'note: {len(overlays)} earlier overlay file(s) (*{OVERLAY_SUFFIX}) in {image_dir} are not graded')
    if not files:
        raise utils.UserError(f'--image_dir {image_dir}: no files to grade')
    paired = predictor.folder_pairs(files, args.pairs_csv)
    pairs = None if paired is None else {pair.expression: pair for pair in paired.pairs}
    if pairs is not None:
        files = list(pairs)
        if not files:
            raise utils.UserError(f'--image_dir {image_dir}: only rest photos, no expression photo to grade')
    overlay_dir = Path(args.overlay_dir) if args.overlay_dir else None
    overlay_names = folder_overlay_names(files)
    subjects_csv = subjects_csv_path(output_csv)
    replaced = guard_outputs([output_csv], predictions_csv_made_here, args.overwrite, '--output_csv')
    guard_outputs([subjects_csv], lambda path: csv_header(path)[:2] == ['subject', 'n_photos'], args.overwrite,
                  'per-patient CSV')
    check_writable(output_csv.parent, '--output_csv folder')
    if overlay_dir is not None:
        guard_outputs([overlay_dir / name for name in overlay_names.values()], png_made_here, args.overwrite,
                      'overlay')
        check_writable(overlay_dir, '--overlay_dir')

    results: list[dict[str, Any]] = []
    noun = 'pair' if pairs is not None else 'photo'
    with tqdm(total=len(files), desc='grading', unit=noun) as bar:
        for start in range(0, len(files), predictor.batch_size):
            chunk = files[start:start + predictor.batch_size]
            if pairs is None:
                chunk_results = predictor.predict_batch(chunk)
            else:
                chunk_results = predictor.predict_folder_pairs([pairs[path] for path in chunk])
            if overlay_dir is not None:
                for path, result in zip(chunk, chunk_results):
                    write_folder_overlay(predictor, path, result, overlay_dir / overlay_names[path],
                                         None if pairs is None else pairs[path].rest)
            results.extend(chunk_results)
            bar.update(len(chunk))

    columns = csv_columns(predictor.grades, predictor.sides, pairs=pairs is not None)
    if replaced:
        print(f'note: replacing {output_csv} (earlier predictions of this script)')
    settings = run_settings(predictor)
    utils.atomic_write_csv(output_csv, columns, [csv_row(r, predictor.grades, predictor.sides, settings)
                                                 for r in results])
    counts = Counter(r['status'] for r in results)
    for result in results:
        if result['probabilities'] is None:
            print(f'{result["status"]}: {result["error"]}')
        elif pairs is not None and missing_face_line(result):
            print(f'{result["path"]}: {missing_face_line(result)}')
    print(f'graded by {predictor.describe()}')
    statuses = PAIR_STATUSES if pairs is not None else STATUSES
    print(f'{len(results)} {"expression photos" if pairs is not None else "files"} -> {output_csv}: '
          + ', '.join(f'{s} {counts.get(s, 0)}' for s in statuses))
    print(ood_count_line(results, predictor))
    subjects = write_subject_table(predictor, results, subjects_csv)
    return {'results': results, 'csv': str(output_csv), 'counts': dict(counts), 'subjects': subjects, **settings,
            'skipped_models': predictor.skipped_models}


def ood_count_line(results: Sequence[dict[str, Any]], predictor: FacialPalsyPredictor) -> str:
    """How many graded photos were flagged as unlike the training photos (or that none could be scored)."""
    graded = [r for r in results if r['probabilities'] is not None]
    noun = 'pairs' if predictor.reads_pairs else 'photos'
    if not predictor.ensemble.has_ood:
        return f'OOD: no statistics in the checkpoint(s); no {noun[:-1]} scored or flagged'
    flagged = sum(bool(r['ood_flag']) for r in graded)
    return (f'OOD: {flagged} of {len(graded)} graded {noun} flagged as unlike the training {noun} '
            f'({predictor.ensemble.ood_description()})')


def subjects_csv_path(output_csv: Path) -> Path:
    return output_csv.with_name(output_csv.stem + '_subjects.csv')


def write_subject_table(predictor: FacialPalsyPredictor, results: Sequence[dict[str, Any]], path: Path,
                        unit: str = 'photos') -> list[dict[str, Any]] | None:
    """A grade per patient when the file names name patients (the part before the first ``_``, as
    ``prepare_dataset.py`` reads them) and some patient has several graded photos: the mean of their photo
    probabilities, read with the checkpoint's rule, printed and written to ``path``. None (and nothing written)
    otherwise. ``unit`` names what was graded in the printout (photos, clips); the column stays ``n_photos``."""
    graded = [r for r in results if r['probabilities'] is not None]
    subjects = [subject_from_name(r['path']) or Path(r['path']).stem for r in graded]
    if not graded or len(set(subjects)) == len(subjects):
        return None
    probabilities = np.array([[r['probabilities'][g] for g in predictor.grades] for r in graded])
    names, counts, mean, grade_index = subject_grades_from_photos(subjects, probabilities, predictor.prediction)
    rows = []
    for name, count, probs, index in zip(names, counts, mean, grade_index):
        row = {'subject': name, 'n_photos': int(count), 'grade_index': int(index),
               'grade': predictor.grades[index], 'confidence': round(float(probs[index]), 6)}
        row.update({probability_column(g): round(float(p), 6) for g, p in zip(predictor.grades, probs)})
        rows.append(row)
    utils.atomic_write_csv(path, list(rows[0]), rows)
    print(f'per patient ({len(rows)} subjects from the file names; the mean of each one\'s {unit}) -> {path}:')
    for row in rows:
        print(f'  {row["subject"]}: {display_grade(row["grade"])} ({row["confidence"]:.3f}, '
              f'{row["n_photos"]} {unit})')
    return rows


def folder_overlay_names(files: Sequence[Path]) -> dict[Path, str]:
    """``<stem>_prediction.png`` per photo; photos sharing a stem (``a.jpg``, ``a.png``) keep their extension in
    the name so that one overlay never replaces another."""
    stems = Counter(path.stem for path in files)
    return {path: (path.stem if stems[path.stem] == 1 else f'{path.stem}_{path.suffix.lstrip(".")}') + OVERLAY_SUFFIX
            for path in files}


def write_folder_overlay(predictor: FacialPalsyPredictor, path: Path, result: dict[str, Any],
                         overlay_path: Path, rest_path: Path | None = None) -> None:
    """One overlay per graded photo (or pair, with ``rest_path``); a drawing failure is noted in the row's
    ``error`` rather than stopping."""
    if result['probabilities'] is None:
        return
    try:
        if rest_path is None:
            predictor.save_overlay(path, result, overlay_path)
        else:
            predictor.save_pair_overlay(rest_path, path, result, overlay_path)
    except (ImageReadError, OSError, ValueError) as err:
        result['error'] = f'overlay not written: {err}'


# clips

def check_clip_flags(args: argparse.Namespace) -> None:
    """The flags of clips, in one line each when misplaced: ``--output_json`` goes with ``--video``,
    ``--output_dir`` with ``--video_dir`` (whose figures go there, not to ``--output_path``)."""
    misplaced = [('--output_json', args.output_json, args.video, '--video'),
                 ('--output_dir', args.output_dir, args.video_dir, '--video_dir'),
                 ('--output_path', args.output_path, not args.video_dir, '--image_path or --video'),
                 ('--overlay_dir', args.overlay_dir, not (args.video or args.video_dir), '--image_dir')]
    for flag, value, fits, where in misplaced:
        if value is not None and not fits:
            raise utils.UserError(f'{flag} goes with {where}')
    if (args.video or args.video_dir) and args.max_frames < 2:
        raise utils.UserError(f'--max_frames {args.max_frames}: a clip needs at least two frames (rest and apex)')


def predict_clip(predictor: FacialPalsyPredictor, args: argparse.Namespace) -> dict[str, Any]:
    """``--video``: grade one clip, print it, and write its per-frame table, its summary JSON and its figure."""
    clip_path = Path(args.video)
    if not clip_path.exists():
        raise utils.UserError(f'--video {clip_path}: file not found')
    defaults = clip_outputs(clip_path.parent, clip_stem(clip_path), figure=not args.no_overlay)
    given = {'frames_csv': args.output_csv, 'json': args.output_json, 'figure': args.output_path}
    outputs = {kind: None if default is None else Path(given[kind] or default) for kind, default in defaults.items()}
    replaced = guard_clip_outputs(outputs, args.overwrite, clip_path)
    for folder in {path.parent for path in outputs.values() if path is not None}:
        check_writable(folder, 'output folder')
    graded = grade_clip(predictor, *load_clip(clip_path, predictor.detector, args.fps, args.max_frames),
                        args.grade_frames, args.grade_every, progress=True)
    if replaced:
        print(f'note: replacing {", ".join(map(str, replaced))} (earlier outputs of this script)')
    summary = write_clip_outputs(graded, outputs)
    print(f'graded by {predictor.describe()}')
    print(format_clip(graded))
    print('written: ' + ', '.join(str(path) for path in summary['outputs'].values() if path))
    return {'results': [graded.result], 'clip': summary, 'outputs': summary['outputs'], **run_settings(predictor),
            'skipped_models': predictor.skipped_models}


def predict_clip_folder(predictor: FacialPalsyPredictor, args: argparse.Namespace) -> dict[str, Any]:
    """``--video_dir``: every clip of a folder graded into ``--output_dir``, one summary row per clip (a clip that
    cannot be graded too, with its status and reason), a progress bar, and a count per status at the end."""
    video_dir, output_dir = Path(args.video_dir), Path(args.output_dir or DEFAULT_CLIP_OUTPUT_DIR)
    if not video_dir.is_dir():
        raise utils.UserError(f'--video_dir {video_dir}: not a folder')
    summary_csv = Path(args.output_csv) if args.output_csv else output_dir / 'clips.csv'
    clips, others = list_clips(video_dir, exclude=[output_dir])
    if others:
        print(f'note: {len(others)} entries of {video_dir} are neither videos nor folders of frames and are not '
              f'graded: {", ".join(p.name for p in others[:5])}{", ..." if len(others) > 5 else ""}')
    if not clips:
        raise utils.UserError(f'--video_dir {video_dir}: no clips (videos {" ".join(VIDEO_SUFFIXES)} or folders of '
                              f'frame images)')
    stems = clip_stems(clips)
    outputs = {clip: clip_outputs(output_dir, stems[clip], figure=not args.no_overlay) for clip in clips}
    subjects_csv = subjects_csv_path(summary_csv)
    replaced = guard_outputs([summary_csv], summary_csv_made_here, args.overwrite, '--output_csv')
    guard_outputs([subjects_csv], lambda path: csv_header(path)[:2] == ['subject', 'n_photos'], args.overwrite,
                  'per-patient CSV')
    for clip in clips:
        replaced += guard_clip_outputs(outputs[clip], args.overwrite)
    check_writable(output_dir, '--output_dir')
    check_writable(summary_csv.parent, '--output_csv folder')
    if replaced:
        print(f'note: replacing {len(replaced)} earlier output(s) of this script')

    rows, results = grade_clips(predictor, clips, outputs, stems, fps=args.fps, max_frames=args.max_frames,
                                grade_frames=args.grade_frames, grade_every=args.grade_every)
    utils.atomic_write_csv(summary_csv, summary_columns(predictor.grades), rows)
    print(f'graded by {predictor.describe()}')
    print(f'{len(rows)} clips -> {summary_csv} ({format_counts(rows)}); each graded clip\'s table, summary and '
          f'figure in {output_dir}')
    print(ood_count_line(results, predictor))
    subjects = write_subject_table(predictor, results, subjects_csv, unit='clips')
    return {'results': results, 'rows': rows, 'csv': str(summary_csv), 'output_dir': str(output_dir),
            'counts': dict(Counter(row['status'] for row in rows)), 'subjects': subjects, **run_settings(predictor),
            'skipped_models': predictor.skipped_models}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = utils.parse_args_with_config(get_args_parser(), argv)
    if args.batch_size < 1:
        raise utils.UserError(f'--batch_size {args.batch_size}: must be at least 1')
    check_pair_flags(args.image_path, args.image_dir, args.rest, args.pairs_csv)
    check_clip_flags(args)
    predictor = FacialPalsyPredictor(args.model_path, device=args.device, batch_size=args.batch_size, tta=args.tta)
    if args.video:
        return predict_clip(predictor, args)
    if args.video_dir:
        return predict_clip_folder(predictor, args)
    if args.image_path:
        return predict_one(predictor, args)
    return predict_folder(predictor, args)


if __name__ == '__main__':
    utils.run_cli(main)
