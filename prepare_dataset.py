"""Prepare facial palsy datasets: annotation CSVs with subject-disjoint splits, CK+ conversion, 6 <-> 3 classes,
examination clips turned into rest / apex pairs, and the built-in synthetic demo faces and clips.

The annotation CSV this writes is what every other script reads (its contract: ``annotations.py``): ``image_path``
(relative to the data root), ``grade`` (0-5 = House-Brackmann I-VI), ``side`` (the patient's affected side:
left / right / none / unknown), ``split`` (train / val / test), ``subject`` and, where known, ``neutral_path`` and
the landmark columns ``eye_l_x ... mouth_r_y``.

Splits are subject-disjoint (no person in two splits, or a model would be graded on faces it has seen) and
stratified by grade (each split gets its share of every grade): ``annotations.split_subjects``, the rule training
uses for its validation subjects and cross-validation folds too.

Clips (``--dataset_type video``) are listed like photos (grade folders or a CSV; subjects, sides and splits by the
same rules) and turned into rest / apex frame pairs by ``video_dataset`` (the apex finder: ``video.py``).
"""
from __future__ import annotations

import argparse
import math
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

import synthetic_faces
import synthetic_video
import video_dataset
from annotations import (BACKSLASH_NOT_FOUND, DEFAULT_SUBJECT_REGEX, GRADE_3_TO_6, GRADE_6_TO_3, HB_GRADES,
                         LANDMARK_COLUMNS, NEUTRAL_LANDMARK_COLUMNS, SIMPLIFIED_GRADES, SPLITS, backslash_note,
                         check_subjects, compile_subject_regex, find_repeated_photos, fix_backslash_paths,
                         grade_folder_photos, grade_folders, normalise_split, order_columns, parse_grades, photo_key,
                         read_table, require_columns, row_number, scan_ckplus, side_of, split_subjects,
                         subject_from_name, subjects_of_paths)
from face_detection import ImageReadError, LandmarkDetector, load_image
from utils import (UserError, add_config_args, atomic_write_text, check_writable, parse_args_with_config, run_cli,
                   same_path, write_skipped as write_skipped_csv)

# columns taken over from a generator's <data_root>/annotation.csv
MERGED_COLUMNS = ('subject', 'side', 'neutral_path', *LANDMARK_COLUMNS, *NEUTRAL_LANDMARK_COLUMNS)
# what gives each photo its patient when the subjects look wrong (annotations.check_subjects)
SUBJECT_FIXES = ("a subject column in --input_csv, --subject_regex (e.g. '^(patient\\d+)'), one folder per patient "
                 "(grade_N/PATIENT/photo.jpg), or --one_photo_per_subject if every photo shows a different person")
# the patient folder of a photo in grade_N/PATIENT/ (scan_grade_folders), until fill_subjects reads it
PATIENT_COLUMN = '_patient_folder'

EPILOG = """\
examples:
  # the built-in synthetic demo set, then its subject-disjoint annotation CSV
  python prepare_dataset.py --dataset_type synthetic --output_root ./datasets/facial_palsy/FNP
  python prepare_dataset.py --dataset_type FNP --data_root ./datasets/facial_palsy/FNP \\
      --output_csv ./datasets/facial_palsy/fnp_annotation.csv --split_ratio 0.7 0.15 0.15

  # the second face family (shaded 3-D heads), to test a model trained on family a out of family
  python prepare_dataset.py --dataset_type synthetic --family b --output_root ./datasets/facial_palsy/FNP_b

  # synthetic rest / expression pairs (rest photos in rest/grade_N/, neutral_path in the CSV) for --input_mode flow
  python prepare_dataset.py --dataset_type synthetic --pairs --output_root ./datasets/facial_palsy/FNP_pairs
  python prepare_dataset.py --dataset_type FNP --data_root ./datasets/facial_palsy/FNP_pairs \\
      --output_csv ./datasets/facial_palsy/fnp_pairs_annotation.csv

  # your own photos in grade_0 .. grade_5 folders (subject = file name before the first _, or the patient
  # folder of grade_N/PATIENT/photo.jpg)
  python prepare_dataset.py --dataset_type FNP --data_root ./my_photos --output_csv ./my_photos.csv
  # subjects named like 'patient12-left-3.jpg'
  python prepare_dataset.py --dataset_type FNP --data_root ./my_photos --output_csv ./my_photos.csv \\
      --subject_regex '^(patient\\d+)'
  # camera file names (DSC01234.jpg) where every photo really shows a different person
  python prepare_dataset.py --dataset_type FNP --data_root ./my_photos --output_csv ./my_photos.csv \\
      --one_photo_per_subject

  # CK+ with a grade mapping (columns subject or sequence, grade, side): copies of the peak frames ...
  python prepare_dataset.py --dataset_type CK+ --data_root ./CK+ --grade_mapping ./ck_grades.csv \\
      --output_root ./datasets/facial_palsy/CK_graded
  # ... or a CSV pointing at the original frames (neutral_path = first frame, image_path = peak frame)
  python prepare_dataset.py --dataset_type CK+ --data_root ./CK+ --grade_mapping ./ck_grades.csv \\
      --output_csv ./ck_annotation.csv

  # examination clips (grade_N/*.mp4 or folders of frames): the rest and apex frame of each clip as a pair for
  # --input_mode flow; the frames go to ./clips_annotation_frames (the --data_root of training)
  python prepare_dataset.py --dataset_type video --data_root ./clips --output_csv ./clips_annotation.csv
  # synthetic clips with a known apex frame (clips.csv), both face families
  python prepare_dataset.py --dataset_type synthetic --video --output_root ./datasets/facial_palsy/clips
  # CK+ with the apex picked by the same finder instead of the last frame
  python prepare_dataset.py --dataset_type CK+ --data_root ./CK+ --grade_mapping ./ck_grades.csv \\
      --output_csv ./ck_annotation.csv --apex auto

  # FNP + CK+ in one CSV (absolute paths; subjects prefixed with the CSV's name; each row keeps its split)
  python prepare_dataset.py --dataset_type merge \\
      --input_csv ./datasets/facial_palsy/fnp_annotation.csv ./ck_annotation.csv \\
      --data_root ./datasets/facial_palsy/FNP ./CK+ --output_csv ./datasets/facial_palsy/combined_annotation.csv

  # 6 <-> 3 classes on an annotation CSV
  python prepare_dataset.py --convert_classes 6to3 --input_csv fnp_annotation.csv --output_csv fnp_3class.csv

6 <-> 3 classes: 6 -> 3 maps HB I -> normal (0), HB II-III -> mild/moderate (1), HB IV-VI -> severe (2).
3 -> 6 is lossy: each simplified class becomes its lowest grade (0 -> HB I, 1 -> HB II, 2 -> HB IV).
"""


# helpers

# photos decoded at once when checking them (OpenCV's decoder releases the GIL)
DECODE_THREADS = 4


def check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    if len(ratios) != 3:
        raise UserError(f'--split_ratio needs three numbers (train val test), got {len(ratios)}')
    if not all(math.isfinite(r) and r >= 0 for r in ratios) or ratios[0] <= 0:
        raise UserError(f'--split_ratio {" ".join(map(str, ratios))}: ratios must be >= 0 and train > 0')
    if abs(sum(ratios) - 1.0) > 1e-6:
        raise UserError(f'--split_ratio {" ".join(map(str, ratios))}: the ratios sum to {sum(ratios):g}, not 1')
    return tuple(float(r) for r in ratios)


def image_problem(path: Path) -> str | None:
    """Why a photo cannot be used (missing, empty, truncated, not an image), from decoding it whole as training
    will (``face_detection.load_image``); None for a usable photo."""
    try:
        load_image(path)
    except ImageReadError as err:
        text = str(err)
        return text[len(f'{path}: '):] if text.startswith(f'{path}: ') else text
    return None


def write_table_safely(table: pd.DataFrame, path: Path, overwrite: bool, what: str = 'annotation CSV') -> str:
    """Write ``table`` as CSV unless a different file is already there (then ``--overwrite`` is needed).
    Returns 'written', 'replaced' or 'unchanged'."""
    text = table.to_csv(index=False)
    if path.exists():
        if path.is_dir():
            raise UserError(f'{path}: is a folder; --output_csv needs a file name')
        try:
            unchanged = path.read_text() == text
        except (OSError, UnicodeDecodeError):
            unchanged = False
        if unchanged:
            return 'unchanged'
        if not overwrite:
            raise UserError(f'{path} exists and differs from the new {what}; pass --overwrite to replace it '
                            f'or choose another --output_csv')
    status = 'replaced' if path.exists() else 'written'
    atomic_write_text(path, text)
    return status


def write_skipped(skipped: list[tuple[str, str]], output: Path) -> Path | None:
    """List the photos left out (path, reason) beside the output, and say so: nothing disappears silently."""
    if not skipped:
        return None
    target = output.with_name(f'{output.stem}_skipped.csv') if output.suffix else output / 'skipped.csv'
    write_skipped_csv(target, skipped)
    print(f'warning: {len(skipped)} image(s) left out, listed in {target}; first: {skipped[0][0]} '
          f'({skipped[0][1]})')
    return target


# splitting

def assign_splits(table: pd.DataFrame, ratios: Sequence[float], seed: int) -> pd.Series:
    """A split per row: subject-disjoint, stratified by each subject's grade, reproducible for ``seed``
    (``annotations.split_subjects``)."""
    grades = table.groupby('subject', sort=True)['grade'].unique()
    mixed = [f'{subject} (grades {", ".join(str(g) for g in sorted(values))})'
             for subject, values in grades.items() if len(values) > 1]
    if mixed:
        print(f'note: {len(mixed)} subject(s) have photos of different grades; each is stratified by its most '
              f'frequent grade (ties: the higher): {", ".join(mixed[:5])}{" ..." if len(mixed) > 5 else ""}')
    part_of = split_subjects(table['subject'], table['grade'], ratios, seed)
    splits = table['subject'].map(lambda subject: SPLITS[part_of[subject]])
    empty = [name for name, ratio in zip(SPLITS, ratios) if ratio > 0 and not (splits == name).any()]
    if empty:
        print(f'warning: {" and ".join(empty)} received no subject ({len(part_of)} subjects are too few for '
              f'--split_ratio {" ".join(f"{r:g}" for r in ratios)})')
    return splits


def split_summary(table: pd.DataFrame) -> str:
    """Images/subjects per grade (rows) and split (columns), as a small text table."""
    header = ['grade'] + [s for s in SPLITS if s in set(table['split'])] + ['total']
    rows = []
    for grade in sorted(table['grade'].unique()):
        part = table[table['grade'] == grade]
        rows.append(_summary_row(f'{grade} (HB {HB_GRADES[grade]})', part, header[1:-1]))
    rows.append(_summary_row('total', table, header[1:-1]))
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = ['  '.join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [header] + rows]
    return 'images / subjects per grade and split:\n' + '\n'.join('  ' + line for line in lines)


def _summary_row(label: str, part: pd.DataFrame, splits: Sequence[str]) -> list[str]:
    cells = [label]
    for name in splits:
        chunk = part[part['split'] == name]
        cells.append(f'{len(chunk)} / {chunk["subject"].nunique()}')
    cells.append(f'{len(part)} / {part["subject"].nunique()}')
    return cells


# FNP (grade folders or a CSV)

def scan_grade_folders(data_root: Path, clips: bool = False) -> pd.DataFrame:
    """``image_path`` (relative, posix) and ``grade`` of every photo in ``data_root/grade_0 .. grade_5``, directly
    or in patient folders (``grade_3/P001/rest.jpg``; then ``PATIENT_COLUMN`` holds the patient); with ``clips``,
    of every clip instead (``video_dataset.grade_folder_clips``: videos and folders of frames)."""
    what, listed = ('clips', video_dataset.grade_folder_clips) if clips else ('images', grade_folder_photos)
    if not data_root.is_dir():
        raise UserError(f'--data_root {data_root}: folder not found')
    folders = grade_folders(data_root)
    outside = [folder.name for grade, folder in folders if grade is None]
    if outside:
        raise UserError(f'{data_root}: folder(s) {", ".join(outside)} are outside House-Brackmann grades 0-5 '
                        f'(grade_0 = HB I .. grade_5 = HB VI); rename or move them')
    rows = [{'image_path': p.relative_to(data_root).as_posix(), 'grade': grade, PATIENT_COLUMN: patient or ''}
            for grade, folder in folders for p, patient in listed(folder)]
    if not rows:
        raise UserError(f'{data_root}: ' + (f'the grade_N folders hold no {what}' if folders else
                                            'no grade_0 .. grade_5 folders inside (or give --input_csv)'))
    table = pd.DataFrame(rows)
    return table if table[PATIENT_COLUMN].ne('').any() else table.drop(columns=[PATIENT_COLUMN])


def read_input_csv(path: Path, data_root: Path, clips: bool = False) -> pd.DataFrame:
    """The rows of an input CSV: grades checked, backslash paths read with / where only that file exists, a row
    repeating an earlier row's photo and grade dropped with one note; a photo listed with two grades is refused
    with its rows named (``annotations.find_repeated_photos``). With ``clips`` the clip column
    (``video_dataset.clip_column``) is read into ``image_path``."""
    table = read_table(path, 'input CSV')
    if clips:
        column = video_dataset.clip_column(list(table.columns), path)
        if column != 'image_path':
            table = table.drop(columns=['image_path'], errors='ignore').rename(columns={column: 'image_path'})
    require_columns(table, ['image_path', 'grade'], path, 'input CSV')
    table['grade'] = parse_grades(table['grade'], path)
    table['image_path'] = table['image_path'].astype(str).str.strip()
    empty = table.index[table['image_path'] == '']
    if len(empty):
        raise UserError(f'{path}: image_path is empty in row {row_number(empty[0])}')
    table = fix_table_backslashes(table, data_root, path)
    table = drop_repeated_rows(table, path, data_root, [f'row {row_number(i)}' for i in table.index])
    return table.reset_index(drop=True)


def fix_table_backslashes(table: pd.DataFrame, data_root: Path, source: Path) -> pd.DataFrame:
    """``image_path`` and ``neutral_path`` written on Windows, read with / where only that file exists (one note
    for the table)."""
    for column in ('image_path', 'neutral_path'):
        if column not in table.columns:
            continue
        written = table[column].fillna('').astype(str).tolist()
        fixed, changed = fix_backslash_paths(written, data_root)
        if changed:
            table[column] = fixed
            if column == 'image_path':
                print(backslash_note(source, written[changed[0]], fixed[changed[0]], len(changed)))
    return table


def drop_repeated_rows(table: pd.DataFrame, source: Path | str, data_root: Path | None, where: Sequence[str],
                       compare_splits: bool = False) -> pd.DataFrame:
    """``table`` without the rows that repeat an earlier row's photo and grade (one note); a photo listed with two
    grades (or, with ``compare_splits``, in two splits) is a ``UserError`` naming its rows. Grade folders cannot
    list a photo twice; tables can."""
    splits = [normalise_split(s) or '' for s in table['split']] if compare_splits else None
    repeats = find_repeated_photos([photo_key(p, data_root) for p in table['image_path']], table['grade'].tolist(),
                                   where, table['image_path'].tolist(), splits)
    conflicts = repeats.conflict_message(source)
    if conflicts:
        raise UserError(f'{conflicts}; keep one row per photo')
    note = repeats.duplicate_note(source)
    if note:
        print(note)
    return table.drop(index=table.index[sorted(repeats.dropped)])


def merge_generator_annotation(table: pd.DataFrame, data_root: Path, name: str = 'annotation.csv',
                               key: str = 'image_path', merged: Sequence[str] = MERGED_COLUMNS) -> pd.DataFrame:
    """Take subject, side, neutral_path, landmark and neutral (rest photo) landmark columns from
    ``<data_root>/annotation.csv`` (which the synthetic generator and the CK+ conversion write) for the photos it
    lists; values already in ``table`` win. Clips take ``video_dataset.CLIP_TABLE_COLUMNS`` from the synthetic
    clips' table instead (``name``, matched on its ``key`` column)."""
    path = data_root / name
    if not path.is_file():
        return table
    try:
        extra = read_table(path, 'annotation CSV')
    except UserError as err:  # an extra, not the input: the split can still be made without it
        print(f'warning: {err}; its columns are not merged')
        return table
    if key not in extra.columns:
        print(f'note: {path} has no {key} column; not merged')
        return table
    columns = [c for c in merged if c in extra.columns]
    extra = extra.assign(**{key: extra[key].map(lambda p: Path(p).as_posix())})
    extra = extra.drop_duplicates(key).set_index(key)[columns]
    keys = table['image_path'].map(lambda p: Path(p).as_posix())
    matched = int(keys.isin(extra.index).sum())
    for column in columns:
        values = keys.map(extra[column]).fillna('')
        if column in table.columns:
            current = table[column].astype(str).str.strip()
            table[column] = current.where(current != '', values)
        else:
            table[column] = values
    names = [c for c in columns if c not in LANDMARK_COLUMNS and c not in NEUTRAL_LANDMARK_COLUMNS]
    names += ['landmark'] if any(c in LANDMARK_COLUMNS for c in columns) else []
    names += ['rest photo landmark'] if any(c in NEUTRAL_LANDMARK_COLUMNS for c in columns) else []
    print(f'merged {", ".join(names) or "no"} columns from {path} ({matched} of {len(table)} listed there)')
    return table


def fill_subjects(table: pd.DataFrame, pattern: re.Pattern, one_photo_per_subject: bool = False,
                  where: str | Path = '') -> pd.DataFrame:
    """A subject for every row: the ``subject`` column where given; else the patient folder (``grade_N/PATIENT/``,
    or the folder part of a CSV's ``P001/rest.jpg``) unless ``--subject_regex`` was set; else ``--subject_regex``
    on the file name, else the whole file name (each photo its own subject, which keeps splits disjoint but says
    so). With ``one_photo_per_subject`` every photo without a given subject or patient folder is its own subject.
    Subjects taken from file names that look wrong stop here (``annotations.check_subjects``), naming ``where``."""
    given = table['subject'].fillna('').astype(str).str.strip() if 'subject' in table.columns \
        else pd.Series('', index=table.index)
    patients = table.pop(PATIENT_COLUMN) if PATIENT_COLUMN in table.columns else pd.Series('', index=table.index)
    explicit_regex = pattern.pattern != DEFAULT_SUBJECT_REGEX
    derived, sources = subjects_of_paths(table['image_path'].tolist(), pattern, folders=not explicit_regex)
    derived = pd.Series(derived, index=table.index)
    sources = pd.Series(sources, index=table.index)
    from_folder = patients.ne('') | sources.eq('folder')
    derived = patients.where(patients.ne(''), derived)
    stems = table['image_path'].map(lambda p: Path(str(p).replace('\\', '/')).stem)
    if one_photo_per_subject:
        derived = derived.where(from_folder, stems)
    else:
        unmatched = given.eq('') & ~from_folder & table['image_path'].map(
            lambda p: subject_from_name(Path(str(p).replace('\\', '/')).name, pattern) is None)
        if unmatched.any():
            print(f'warning: --subject_regex {pattern.pattern!r} found no subject in {int(unmatched.sum())} file '
                  f'name(s) (e.g. {table.loc[unmatched, "image_path"].iloc[0]}); each of those photos counts as its '
                  f'own subject')
    table['subject'] = given.where(given != '', derived)
    if not one_photo_per_subject:
        origin = ['column' if g else ('folder' if f else 'name') for g, f in zip(given, from_folder)]
        check_subjects(table['subject'].tolist(), table['image_path'].tolist(), origin, where=where,
                       fixes=SUBJECT_FIXES)
    return table


def drop_unusable(table: pd.DataFrame, data_root: Path, progress: bool = True
                  ) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Rows whose photo is missing, truncated or not an image (each decoded whole, on a few threads) are left out
    and listed."""
    paths = [Path(rel) if Path(rel).is_absolute() else data_root / rel for rel in table['image_path']]
    with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
        problems = list(tqdm(pool.map(image_problem, paths), total=len(paths), desc='checking images', unit='img',
                             disable=not progress or len(table) < 200))
    problems = [BACKSLASH_NOT_FOUND if problem == 'file not found' and '\\' in str(rel) else problem
                for rel, problem in zip(table['image_path'], problems)]
    bad = pd.Series([p is not None for p in problems], index=table.index)
    skipped = [(str(rel), reason) for rel, reason in zip(table['image_path'], problems) if reason is not None]
    kept = table[~bad].reset_index(drop=True)
    if kept.empty:
        raise UserError(f'{data_root}: none of the {len(table)} listed images can be read '
                        f'(first: {skipped[0][0]}: {skipped[0][1]})')
    return kept, skipped


def labelled_table(data_root: Path | None, input_csv: Path | None, subject_regex: str,
                   one_photo_per_subject: bool = False, clips: bool = False) -> tuple[pd.DataFrame, Path]:
    """The photos (or, with ``clips``, the clips) of grade folders or an input CSV with grade, side and subject,
    before any file is opened. Returns ``(table, data_root)``."""
    pattern = compile_subject_regex(subject_regex)
    if input_csv is not None:
        if data_root is None:
            data_root = input_csv.parent
            print(f'note: {"clip" if clips else "image"} paths in {input_csv} are read relative to its folder '
                  f'{data_root}' + ('' if clips else ' (pass the same --data_root to training)'))
        elif not data_root.is_dir():
            raise UserError(f'--data_root {data_root}: folder not found')
        table = read_input_csv(input_csv, data_root, clips)
    else:
        if data_root is None:
            raise UserError(f'--dataset_type {"video" if clips else "FNP"} needs --data_root (grade_0 .. grade_5 '
                            f'folders) or --input_csv')
        table = scan_grade_folders(data_root, clips)
    table = merge_generator_annotation(table, data_root, video_dataset.CLIP_TABLE, 'clip_path',
                                       video_dataset.CLIP_TABLE_COLUMNS) if clips else \
        merge_generator_annotation(table, data_root)
    if 'split' in table.columns:
        print('note: the input split column is kept as original_split; split is recomputed subject-disjointly')
        table = table.rename(columns={'split': 'original_split'})
    table = fill_subjects(table, pattern, one_photo_per_subject, input_csv or data_root)
    sides = table['side'] if 'side' in table.columns else pd.Series('', index=table.index)
    read = [side_of(side, grade) for side, grade in zip(sides, table['grade'])]
    table['side'] = [side for side, _ in read]
    odd = sum(not recognised for _, recognised in read)
    if odd:
        print(f'note: {odd} side value(s) were not left / right / none and are written as unknown')
    return table, data_root


def build_fnp_table(data_root: Path | None, input_csv: Path | None, subject_regex: str, ratios: Sequence[float],
                    seed: int, progress: bool = True, one_photo_per_subject: bool = False
                    ) -> tuple[pd.DataFrame, list[tuple[str, str]], Path]:
    """The annotation table of an FNP-style dataset (grade folders or an input CSV) with subject-disjoint,
    grade-stratified splits. Returns ``(table, skipped photos, data_root)``."""
    ratios = check_ratios(ratios)
    table, data_root = labelled_table(data_root, input_csv, subject_regex, one_photo_per_subject)
    table, skipped = drop_unusable(table, data_root, progress)
    table['split'] = assign_splits(table, ratios, seed)
    return order_columns(table), skipped, data_root


def run_fnp(args: argparse.Namespace) -> pd.DataFrame:
    if args.output_csv is None:
        raise UserError('--dataset_type FNP needs --output_csv (where to write the annotation CSV)')
    table, skipped, data_root = build_fnp_table(args.data_root, args.input_csv, args.subject_regex,
                                                args.split_ratio, args.seed, progress=not args.quiet,
                                                one_photo_per_subject=args.one_photo_per_subject)
    table = apply_class_conversion(table, args.convert_classes, args.output_csv)
    status = write_table_safely(table, args.output_csv, args.overwrite)
    write_skipped(skipped, args.output_csv)
    print(split_summary(table))
    print(f'{args.output_csv}: {status} ({len(table)} images of {table["subject"].nunique()} subjects; paths '
          f'relative to {data_root}; split seed {args.seed})')
    return table


# video clips

def run_video(args: argparse.Namespace) -> pd.DataFrame:
    """Clips (grade folders or --input_csv) -> their rest and apex frames in --frames_dir and a pairs CSV for
    --input_mode flow (``video_dataset.extract_pairs``); a clip that cannot be used is named and left out."""
    if args.output_csv is None:
        raise UserError('--dataset_type video needs --output_csv (where to write the pairs CSV)')
    frames_dir = args.frames_dir or video_dataset.default_frames_dir(args.output_csv)
    if same_path(frames_dir, args.data_root):
        raise UserError(f'--frames_dir {frames_dir} is the --data_root; the frames need a folder of their own')
    check_writable(frames_dir, '--frames_dir')
    video_dataset.check_frames_dir(frames_dir, args.overwrite)
    ratios = check_ratios(args.split_ratio)
    table, data_root = labelled_table(args.data_root, args.input_csv, args.subject_regex,
                                      args.one_photo_per_subject, clips=True)
    detector = LandmarkDetector(device=args.device, cache_dir=False, progress=False)
    pairs, skipped = video_dataset.extract_pairs(table, data_root, frames_dir, detector, fps=args.fps,
                                                 max_frames=args.max_frames, figures=args.motion_figures,
                                                 progress=not args.quiet)
    for clip, reason in skipped[:10]:
        print(f'warning: {clip}: {reason}; left out')
    if pairs.empty:
        raise UserError(f'{data_root}: none of the {len(table)} clips can be used (first: {skipped[0][0]}: '
                        f'{skipped[0][1]})')
    pairs['split'] = assign_splits(pairs, ratios, args.seed)
    pairs = apply_class_conversion(order_columns(pairs), args.convert_classes, args.output_csv)
    status = write_table_safely(pairs, args.output_csv, args.overwrite)
    write_skipped(skipped, args.output_csv)
    print(split_summary(pairs))
    print(f'{args.output_csv}: {status} ({len(pairs)} rest / apex pairs of {pairs["subject"].nunique()} subjects; '
          f'frames in {frames_dir}, the --data_root of training; split seed {args.seed})')
    print(f'next: python train_facial_palsy.py --input_mode flow --data_root {frames_dir} --train_csv '
          f'{args.output_csv} --val_csv {args.output_csv} --test_csv {args.output_csv}')
    return pairs


# 6 <-> 3 classes

def convert_classes(table: pd.DataFrame, direction: str, path: Path) -> pd.DataFrame:
    """6to3: add ``grade_3`` (0 normal: HB I; 1 mild/moderate: HB II-III; 2 severe: HB IV-VI) and keep ``grade``
    on the House-Brackmann scale, which every script reads (train with ``--num_classes 3`` to use 3 classes).
    3to6: a 3-class ``grade`` (0-2; or ``grade_3`` where present) becomes HB grade 0 / 1 / 3, the lowest grade
    of each class; the mapping is lossy and the 3-class value is kept in ``grade_3``."""
    table = table.copy()
    if direction == '6to3':
        grades = parse_grades(table['grade'], path)
        table['grade'] = grades
        table['grade_3'] = grades.map(lambda g: GRADE_6_TO_3[g])
        table['grade_3_name'] = table['grade_3'].map(lambda c: SIMPLIFIED_GRADES[c])
        print('6 -> 3 classes: HB I -> 0 normal; HB II-III -> 1 mild/moderate; HB IV-VI -> 2 severe '
              '(written to grade_3; grade keeps the House-Brackmann value)')
    elif direction == '3to6':
        source = 'grade_3' if 'grade_3' in table.columns else 'grade'
        classes = parse_grades(table[source], path, 3, column=source,
                               hint='; this CSV looks like it is already on the 6-grade scale')
        table['grade_3'] = classes
        table['grade'] = classes.map(lambda c: GRADE_3_TO_6[c])
        table = table.drop(columns=['grade_3_name'], errors='ignore')
        print('3 -> 6 classes is lossy: each class becomes its lowest grade (0 -> HB I, 1 -> HB II, 2 -> HB IV); '
              'the simplified class is kept in grade_3')
    else:
        raise UserError(f'--convert_classes {direction}: choose 6to3 or 3to6')
    counts = table['grade_3'].value_counts().sort_index()
    print('  ' + ', '.join(f'{SIMPLIFIED_GRADES[c]}: {n}' for c, n in counts.items()))
    return order_columns(table)


def apply_class_conversion(table: pd.DataFrame, direction: str | None, path: Path) -> pd.DataFrame:
    return table if direction is None else convert_classes(table, direction, path)


def run_convert(args: argparse.Namespace) -> pd.DataFrame:
    if args.input_csv is None or args.output_csv is None:
        raise UserError('--convert_classes needs --input_csv (an annotation CSV) and --output_csv')
    if args.input_csv.resolve() == args.output_csv.resolve():
        raise UserError(f'--output_csv {args.output_csv} is the input CSV; write the converted table to a new file')
    table = read_table(args.input_csv, 'annotation CSV')
    require_columns(table, ['image_path', 'grade'], args.input_csv, 'annotation CSV')
    table = convert_classes(table, args.convert_classes, args.input_csv)
    status = write_table_safely(table, args.output_csv, args.overwrite)
    print(f'{args.output_csv}: {status} ({len(table)} rows)')
    return table


# CK+

def ckplus_records(data_root: Path, grade_mapping: Path | None):
    """Peak-frame records of the graded CK+ sequences (``annotations.scan_ckplus``, which also reads the
    dataset for training, so the layout and mapping rules live in one place)."""
    if not data_root.is_dir():
        raise UserError(f'--data_root {data_root}: folder not found')
    if grade_mapping is None:
        raise UserError(f'{data_root}: CK+ has no palsy grades; give --grade_mapping CSV with columns subject '
                        f'(e.g. S005) or sequence (e.g. S005/001), grade (0-5) and optionally side')
    records, skipped = scan_ckplus(data_root, grade_mapping, split=None, verbose=True)
    if not records:
        raise UserError(f'{grade_mapping}: no CK+ sequence under {data_root} received a grade '
                        f'(first problem: {skipped[0][1] if skipped else "none listed"})')
    return records, [(path, reason) for path, reason in skipped]


def _copy_unique(source: Path, target: Path, overwrite: bool) -> str:
    """Copy (never move) a frame; an existing different file is only replaced with ``--overwrite``."""
    if target.exists():
        if target.read_bytes() == source.read_bytes():
            return 'same'
        if not overwrite:
            raise UserError(f'{target} exists and differs from {source}; pass --overwrite to replace it')
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)
    return 'copied'


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def run_ckplus(args: argparse.Namespace) -> pd.DataFrame:
    if args.output_root is None and args.output_csv is None:
        raise UserError('--dataset_type CK+ needs --output_root (grade folders of copied peak frames) '
                        'and/or --output_csv (an annotation CSV)')
    data_root = args.data_root
    if data_root is None:
        raise UserError('--dataset_type CK+ needs --data_root (the CK+ folder)')
    records, skipped = ckplus_records(data_root, args.grade_mapping)
    if args.apex == 'auto':
        detector = LandmarkDetector(device=args.device, cache_dir=False, progress=False)
        chosen, kept = video_dataset.ckplus_apex(records, detector, progress=not args.quiet)
        for path, reason in kept:
            print(f'warning: {path}: {reason}')
        moved = sum(new.path != old.path for new, old in zip(chosen, records))
        print(f'--apex auto: the apex finder chose another frame than the last for {moved} of {len(records)} '
              f'sequences')
        records = chosen
    rows = []
    for record in records:
        row = {'peak': Path(record.path), 'neutral': Path(record.neutral_path or record.path), 'grade': record.grade,
               'side': record.side, 'subject': record.subject}
        if record.annotation is not None:
            row.update(dict(zip(LANDMARK_COLUMNS, np.asarray(record.annotation, dtype=float).reshape(-1))))
        rows.append(row)
    frames = pd.DataFrame(rows)
    root = data_root
    if args.output_root is not None:
        root = args.output_root
        if root.resolve() == data_root.resolve():
            raise UserError('--output_root must differ from --data_root: the CK+ originals are never changed')
        copied = same = 0
        image_paths, neutral_paths = [], []
        for row in tqdm(frames.itertuples(index=False), total=len(frames), desc='copying peak frames',
                        disable=args.quiet):
            peak_target = root / f'grade_{row.grade}' / row.peak.name
            neutral_target = root / 'neutral' / row.neutral.name
            for source, target in ((row.peak, peak_target), (row.neutral, neutral_target)):
                outcome = _copy_unique(source, target, args.overwrite)
                copied += outcome == 'copied'
                same += outcome == 'same'
            image_paths.append(_relative(peak_target, root))
            neutral_paths.append(_relative(neutral_target, root))
        frames['image_path'], frames['neutral_path'] = image_paths, neutral_paths
        annotation = order_columns(frames.drop(columns=['peak', 'neutral']))
        status = write_table_safely(annotation, root / 'annotation.csv', args.overwrite, 'CK+ annotation')
        print(f'{root}: {copied} frame(s) copied, {same} already there; annotation.csv {status} '
              f'(peak frames in grade_N/, first frames in neutral/)')
    else:
        frames['image_path'] = [_relative(p, root) for p in frames['peak']]
        frames['neutral_path'] = [_relative(p, root) for p in frames['neutral']]
    table = order_columns(frames.drop(columns=['peak', 'neutral']))
    if args.output_csv is not None:
        table['split'] = assign_splits(table, check_ratios(args.split_ratio), args.seed)
        table = apply_class_conversion(order_columns(table), args.convert_classes, args.output_csv)
        status = write_table_safely(table, args.output_csv, args.overwrite)
        print(split_summary(table))
        print(f'{args.output_csv}: {status} ({len(table)} sequences; paths relative to {root})')
    write_skipped(skipped, args.output_csv or (args.output_root / 'annotation.csv'))
    return table


# synthetic

def synthetic_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings that decide whether an existing synthetic set is the one asked for (as its manifest stores
    them; ``pairs`` is False where a manifest has no entry, as generate_dataset writes it only for pairs)."""
    if args.video:
        return {'generator': 'synthetic_video.py', 'version': synthetic_video.GENERATOR_VERSION, 'seed': args.seed,
                'num_subjects': args.num_subjects, 'clips_per_subject': args.images_per_subject,
                'image_size': args.image_size, 'fps': float(args.fps or synthetic_video.DEFAULT_FPS),
                'clip_frames': args.clip_frames, 'family': args.family}
    return {'generator': 'synthetic_faces.py', 'version': synthetic_faces.GENERATOR_VERSION, 'seed': args.seed,
            'num_subjects': args.num_subjects, 'images_per_subject': args.images_per_subject,
            'image_size': args.image_size, 'expressions': args.expressions, 'pairs': bool(args.pairs),
            'family': args.family}


# what a manifest without the entry means: written before the option existed, or (pairs) without it
_MANIFEST_DEFAULTS = {'pairs': False, 'family': 'a'}


def _synthetic_is_current(root: Path, settings: dict[str, Any], video: bool = False) -> bool:
    manifest = (synthetic_video if video else synthetic_faces).read_manifest(root)
    if manifest is None or any(manifest.get(k, _MANIFEST_DEFAULTS.get(k)) != v for k, v in settings.items()):
        return False
    table = synthetic_video.CLIP_TABLE if video else 'annotation.csv'
    return (root / table).is_file() and all((root / f).is_file() for f in manifest.get('files', []))


def parse_detection_check(text: str) -> int | None:
    """``all`` -> None (every photo), else a count (0 = skip)."""
    if str(text).lower() == 'all':
        return None
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a number of photos or "all", got {text!r}') from None
    if count < 0:
        raise argparse.ArgumentTypeError('must be >= 0')
    return count


def run_synthetic(args: argparse.Namespace) -> pd.DataFrame:
    root = args.output_root
    if root is None:
        raise UserError('--dataset_type synthetic needs --output_root (the folder to draw the faces into)')
    if root.exists() and not root.is_dir():
        raise UserError(f'--output_root {root}: is a file, not a folder')
    if args.pairs and args.expressions != 'protocol':  # before anything already there is removed
        raise UserError(f'--pairs needs --expressions protocol (with {args.expressions} the expression photo of a '
                        f'pair would not move)')
    if args.video and args.pairs:
        raise UserError('--video and --pairs: choose one (clips become rest / apex pairs with --dataset_type video)')
    if args.video and args.clip_frames < synthetic_video.MIN_CLIP_FRAMES:
        raise UserError(f'--clip_frames {args.clip_frames}: a clip needs at least {synthetic_video.MIN_CLIP_FRAMES} '
                        f'frames (rest, rise, apex, fall)')
    generator = synthetic_video if args.video else synthetic_faces
    settings = synthetic_settings(args)
    what = 'clips' if args.video else 'rest / expression pairs' if args.pairs else 'photos'
    previous = generator.read_manifest(root) if root.is_dir() else None
    if previous is not None and not args.overwrite and _synthetic_is_current(root, settings, args.video):
        print(f'{root}: already holds this synthetic set (family {args.family}, seed {args.seed}, '
              f'{args.num_subjects} subjects x {args.images_per_subject} {what}); nothing to do (--overwrite draws '
              f'it again)')
        table = pd.read_csv(root / (synthetic_video.CLIP_TABLE if args.video else 'annotation.csv'))
    else:
        if previous is not None:
            removed = generator.remove_generated_files(root)
            print(f'{root}: replacing a previous synthetic set (family {previous.get("family", "a")}, seed '
                  f'{previous.get("seed")}, {previous.get("num_subjects")} subjects; {removed} '
                  f'{"clips" if args.video else "photos"} removed)')
        elif root.is_dir() and any(root.iterdir()):
            if not args.overwrite:
                raise UserError(f'--output_root {root} is not empty and holds no synthetic dataset; choose an empty '
                                f'or new folder (or pass --overwrite to write into it anyway)')
            print(f'note: writing into the non-empty folder {root} (--overwrite); files with the same names are '
                  f'replaced')
        if args.video:
            table = synthetic_video.generate_clips(root, args.num_subjects, args.images_per_subject, args.image_size,
                                                   args.seed, args.family, settings['fps'], args.clip_frames,
                                                   progress=not args.quiet)
            print(f'{root}: {len(table)} synthetic clips of {args.num_subjects} subjects written (grade_N/*.mp4, '
                  f'{synthetic_video.CLIP_TABLE} with the true apex frames, README.md)')
        else:
            table = synthetic_faces.generate_dataset(root, args.num_subjects, args.images_per_subject,
                                                     args.image_size, args.seed, progress=not args.quiet,
                                                     expressions=args.expressions, pairs=args.pairs,
                                                     family=args.family)
            rest = f', rest photos in {synthetic_faces.REST_FOLDER}/grade_N/' if args.pairs else ''
            print(f'{root}: {len(table)} synthetic {what} of {args.num_subjects} subjects written '
                  f'(grade_N/{rest}, annotation.csv, preview.jpg, README.md)')
            check_synthetic_detection(root, table, args)
    if args.output_csv is not None:
        (run_video if args.video else run_fnp)(argparse.Namespace(**{**vars(args), 'data_root': root,
                                                                     'input_csv': None}))
    elif args.video:
        print(f'next: python prepare_dataset.py --dataset_type video --data_root {root} '
              f'--output_csv {root.parent / f"{root.name}_pairs.csv"}')
    else:
        print(f'next: python prepare_dataset.py --dataset_type FNP --data_root {root} '
              f'--output_csv {root.parent / "fnp_annotation.csv"}')
    return table


def check_synthetic_detection(root: Path, table: pd.DataFrame, args: argparse.Namespace) -> dict | None:
    """MTCNN on (a spread sample of) the new photos: the rate goes on screen and into README.md. With
    facial_palsy_dataset's detector the landmarks land in its cache, so training does not detect them again."""
    if args.detection_check == 0:
        return None
    result = synthetic_faces.check_detection(root, table, max_images=args.detection_check, device=args.device,
                                             cache_dir=args.cache_dir, progress=not args.quiet)
    synthetic_faces.record_detection(root, {k: v for k, v in result.items() if k != 'missed'})
    print(synthetic_faces.format_detection(result))
    if result['rate'] < 0.9:
        print(f'warning: the detection rate is below 90%; photos without a detected face fall back to the true '
              f'landmarks in annotation.csv. Missed: {", ".join(result["missed"][:5])}')
    if args.detection_check is None and 'neutral_path' in table.columns:
        cache_rest_photos(root, table, args)
    return result


def cache_rest_photos(root: Path, table: pd.DataFrame, args: argparse.Namespace) -> None:
    """Detect the rest photos of pairs into the landmark cache as well, so that flow training finds both photos
    of every pair there."""
    from face_detection import LandmarkDetector

    detector = LandmarkDetector(device=args.device, cache_dir=args.cache_dir, progress=not args.quiet)
    paths = [str(root / p) for p in table['neutral_path'] if isinstance(p, str) and p]
    found = detector.detect_paths(paths, on_error='skip')
    detected = sum(1 for face in found if face is not None and face.source == 'detected')
    print(f'MTCNN found a face in {detected}/{len(paths)} rest photos (cached for training)')


# merging datasets

def _absolute(paths: pd.Series, root: Path) -> pd.Series:
    def one(value: Any) -> Any:
        if pd.isna(value) or str(value).strip() == '':
            return value
        path = Path(str(value).strip())
        return str(path if path.is_absolute() else (root / path).resolve())
    return paths.map(one)


def run_merge(args: argparse.Namespace) -> pd.DataFrame:
    """Concatenate annotation CSVs of several datasets (e.g. FNP and CK+) into one that training reads as it is:
    image paths become absolute, subjects are prefixed with the CSV's name so that two datasets' ``S005`` stay two
    people, and each row keeps its split (each input was split subject-disjointly on its own)."""
    csvs = list(args.input_csv or [])
    if len(csvs) < 2 or args.output_csv is None:
        raise UserError('--dataset_type merge needs --input_csv A.csv B.csv [...] and --output_csv')
    roots = list(args.data_root or [])
    if roots and len(roots) != len(csvs):
        raise UserError(f'--data_root: give one folder per --input_csv ({len(csvs)}), or none to resolve paths '
                        f'against each CSV\'s own folder')
    roots = [Path(r) for r in roots] or [Path(c).parent for c in csvs]
    for root in roots:
        if not root.is_dir():
            raise UserError(f'--data_root {root}: folder not found')
    names = [Path(c).stem for c in csvs]
    names = [f'{n}{i}' if names.count(n) > 1 else n for i, n in enumerate(names)]
    pattern = compile_subject_regex(args.subject_regex)
    tables = []
    for csv_path, root, name in zip(csvs, roots, names):
        csv_path = Path(csv_path)
        if not csv_path.is_file():
            raise UserError(f'--input_csv {csv_path}: file not found')
        table = read_table(csv_path, 'annotation CSV')
        require_columns(table, ['image_path', 'grade', 'split'], csv_path, 'annotation CSV')
        table['grade'] = parse_grades(table['grade'], csv_path)
        table['image_path'] = table['image_path'].astype(str).str.strip()
        table = fix_table_backslashes(table, root, csv_path)
        table['_where'] = [f'{csv_path} row {row_number(i)}' for i in table.index]
        table = table.reset_index(drop=True)
        if 'subject' in table.columns:
            table['subject'] = table['subject'].fillna('').astype(str)
        table = fill_subjects(table, pattern, args.one_photo_per_subject, csv_path)
        table['subject'] = name + ':' + table['subject'].astype(str)
        table['image_path'] = _absolute(table['image_path'], root)
        if 'neutral_path' in table.columns:
            table['neutral_path'] = _absolute(table['neutral_path'], root)
        table['source'] = name
        tables.append(table)
        print(f'{csv_path}: {len(table)} rows, {table["subject"].nunique()} subjects (as {name}:...)')
    combined = pd.concat(tables, ignore_index=True)
    combined = drop_repeated_rows(combined, 'the merged CSVs', None, combined.pop('_where').tolist(),
                                  compare_splits=True)
    combined = order_columns(combined.reset_index(drop=True))
    status = write_table_safely(combined, Path(args.output_csv), args.overwrite)
    print(split_summary(combined))
    print(f'{args.output_csv}: {status} ({len(combined)} rows from {len(csvs)} datasets)')
    return combined


# command line

def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Prepare facial palsy datasets: annotation CSVs with subject-disjoint, grade-stratified\n'
                    'train/val/test splits (FNP-style grade folders or a CSV), CK+ conversion, 6 <-> 3 class\n'
                    'conversion, examination clips -> rest / apex pairs, and the built-in synthetic demo faces\n'
                    'and clips.',
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dataset_type', choices=['FNP', 'CK+', 'synthetic', 'merge', 'video'], default=None,
                        help='FNP: grade_0 .. grade_5 folders under --data_root (or --input_csv) -> --output_csv. '
                             'CK+: CK+ sequences + --grade_mapping -> --output_root and/or --output_csv. '
                             'synthetic: draw the demo faces (or, with --video, clips) into --output_root. '
                             'video: clips in grade_0 .. grade_5 folders (or --input_csv) -> their rest and apex '
                             'frames in --frames_dir and a pairs CSV --output_csv for --input_mode flow. '
                             'merge: several annotation CSVs (--input_csv A B, --data_root ROOT_A ROOT_B) -> one '
                             '--output_csv with absolute paths, e.g. FNP + CK+')
    io = parser.add_argument_group('inputs and outputs')
    io.add_argument('--data_root', type=Path, nargs='+', default=None,
                    help='dataset folder: grade_N folders (FNP) or the CK+ folder (with cohn-kanade-images/ or '
                         'the subject folders S005/ ... directly inside); merge: one per --input_csv')
    io.add_argument('--input_csv', type=Path, nargs='+', default=None,
                    help='FNP: a CSV with image_path (relative to --data_root, default its own folder) and grade '
                         '(0-5), optional subject, side; video: the same with a clip column (clip_path or clip) '
                         'naming videos or folders of frames; --convert_classes: the annotation CSV to convert')
    io.add_argument('--output_csv', type=Path, default=None,
                    help='annotation CSV to write (image_path, grade, side, split, subject, ...)')
    io.add_argument('--output_root', type=Path, default=None,
                    help='folder to write: the synthetic faces, or CK+ peak frames as grade_N/ folders')
    io.add_argument('--overwrite', action='store_true',
                    help='replace an existing output CSV or copied frame that differs, or write the synthetic set '
                         'into a non-empty folder that does not hold one; without it such outputs are refused')
    io.add_argument('--quiet', action='store_true', help='no progress bars')
    splits = parser.add_argument_group('splits')
    splits.add_argument('--split_ratio', type=float, nargs=3, default=[0.7, 0.15, 0.15],
                       metavar=('TRAIN', 'VAL', 'TEST'),
                       help='fractions of subjects per grade for train, val and test; must sum to 1 '
                            '(default: 0.7 0.15 0.15)')
    splits.add_argument('--seed', type=int, default=42,
                       help='random seed of the split and of the synthetic faces (default: 42)')
    splits.add_argument('--subject_regex', default=DEFAULT_SUBJECT_REGEX,
                       help='regular expression whose first group (or whole match) on the file name without '
                            'extension is the subject, used where there is no subject column (and, when given, '
                            'instead of patient folders) '
                            f'(default: {DEFAULT_SUBJECT_REGEX!r}, the part before the first _)')
    splits.add_argument('--one_photo_per_subject', action='store_true',
                       help='every photo shows a different person: a photo without a subject column value or '
                            'patient folder is its own subject, and the check that stops on subjects that look '
                            'wrong (camera-counter file names, one subject holding most photos) is skipped')
    ck = parser.add_argument_group('CK+')
    ck.add_argument('--grade_mapping', type=Path, default=None,
                    help='CSV mapping CK+ subjects or sequences to palsy grades: columns subject (S005) and/or '
                         'sequence (S005/001; wins over its subject), grade (0-5), optional side')
    ck.add_argument('--apex', choices=['last', 'auto'], default='last',
                    help='the peak frame of a CK+ sequence: last (its last frame, as CK+ is recorded) or auto (the '
                         'apex finder of video.py, the same as for clips; a sequence it cannot read keeps its last '
                         'frame)')
    clips = parser.add_argument_group('video clips')
    clips.add_argument('--frames_dir', type=Path, default=None,
                       help='video: where the rest and apex frames are written (grade_N/<clip>.png, '
                            'rest/grade_N/<clip>_rest.png); the --data_root of training (default: <output_csv '
                            'without .csv>_frames beside it)')
    clips.add_argument('--fps', type=float, default=None,
                       help='frames per second: of folders of frames (default 30) and, when given, of every clip '
                            'read; of the synthetic clips drawn with --video (default 30)')
    clips.add_argument('--max_frames', type=int, default=video_dataset.DEFAULT_MAX_FRAMES,
                       help='video: frames of a clip read at most (clips are held in memory while their apex is '
                            'found)')
    clips.add_argument('--motion_figures', action='store_true',
                       help='video: also write the motion over time of each clip, rest and apex marked, to '
                            '<frames_dir>/motion/<clip>.png')
    clips.add_argument('--video', action='store_true',
                       help='synthetic: draw examination clips instead of photos: grade_N/<subject>_<n>_<expression>'
                            '.mp4 (rest -> brow raise, eye closure or smile -> rest, with head motion, blinks and '
                            'camera noise) and clips.csv with the true apex frames; --images_per_subject clips per '
                            'subject')
    clips.add_argument('--clip_frames', type=int, default=synthetic_video.DEFAULT_CLIP_FRAMES,
                       help='synthetic --video: frames per clip')
    conv = parser.add_argument_group('classes')
    conv.add_argument('--convert_classes', choices=['6to3', '3to6'], default=None,
                      help='6to3: add grade_3 (HB I -> 0 normal, II-III -> 1 mild/moderate, IV-VI -> 2 severe) '
                           'and keep grade on the House-Brackmann scale that training reads (use --num_classes 3 '
                           'there); 3to6: a 3-class grade 0-2 becomes HB I / II / IV - lossy, each class maps to '
                           'its lowest grade. Alone it converts --input_csv to --output_csv; with --dataset_type it '
                           'applies to the CSV being written')
    synth = parser.add_argument_group('synthetic faces')
    synth.add_argument('--family', choices=synthetic_faces.FACE_FAMILIES, default='a',
                       help='face family to draw: a = flat, illustrated faces (the original demo set); b = shaded 3-D '
                            'heads designed independently of a (own head, features and colours; only the grades, '
                            'sides and expressions mean the same). Train on one and test on the other to see whether '
                            'a model reads the signs of palsy or the style of the faces; subject names differ '
                            '(S001 / synb0001), so sets of both can be merged (default: a)')
    synth.add_argument('--num_subjects', type=int, default=120,
                       help='synthetic subjects, spread evenly over the six grades (default: 120)')
    synth.add_argument('--images_per_subject', type=int, default=None,
                       help='photos (or clips, with --video) per subject (default: 5 photos, 3 clips)')
    synth.add_argument('--image_size', type=int, default=256, help='photo size in pixels (default: 256)')
    synth.add_argument('--expressions', choices=synthetic_faces.EXPRESSION_MODES, default='protocol',
                       help='protocol: each subject\'s photos cycle through rest, brow raise, eye closure and smile '
                            '(the affected side moves less), as in a facial nerve examination; rest: resting faces '
                            'only (default: protocol)')
    synth.add_argument('--pairs', action='store_true',
                       help='draw rest / expression pairs for --input_mode flow: every photo in grade_N/ is a '
                            'movement (brow raise, eye closure, smile) and its rest photo of the same sitting goes to '
                            'rest/grade_N/; annotation.csv gains neutral_path and the rest landmarks neutral_eye_l_x '
                            '... (needs --expressions protocol)')
    synth.add_argument('--detection_check', type=parse_detection_check, default=None, metavar='N|all',
                       help='run MTCNN on the new photos (all), on N of them spread over the set, or not at all (0), '
                            'and report how many faces and landmarks it finds; the landmarks go into the cache '
                            'that training reads, so this moves rather than adds detection time (default: all)')
    synth.add_argument('--device', default='auto',
                       help='device for MTCNN (the detection check, and the apex finder of video / --apex auto): '
                            'auto, cpu or cuda')
    synth.add_argument('--cache_dir', type=Path, default=None,
                       help='landmark cache of the MTCNN check (default: the one training uses, .cache/landmarks)')
    add_config_args(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parse_args_with_config(parser, argv)
    if args.dataset_type is None and args.convert_classes is None:
        parser.error('choose --dataset_type FNP|CK+|synthetic|merge|video, or --convert_classes 6to3|3to6')
    if args.images_per_subject is None:
        args.images_per_subject = 3 if args.video else 5
    if args.num_subjects < 1 or args.images_per_subject < 1:
        raise UserError('--num_subjects and --images_per_subject must be at least 1')
    check_ratios(args.split_ratio)
    for flag, folder in (('--output_csv', args.output_csv and args.output_csv.parent),
                         ('--output_root', args.output_root)):
        if folder is not None:  # before any slow work (decoding every photo, drawing faces)
            check_writable(folder, f'{flag} folder' if flag == '--output_csv' else flag)
    if args.dataset_type == 'merge':
        run_merge(args)
        return 0
    for name in ('data_root', 'input_csv'):  # one folder / CSV except when merging
        values = getattr(args, name)
        if values is not None and len(values) > 1:
            raise UserError(f'--{name} takes one path with --dataset_type {args.dataset_type} '
                            f'(several only with --dataset_type merge)')
        setattr(args, name, values[0] if values else None)
    if args.dataset_type == 'FNP':
        if args.input_csv is not None and not args.input_csv.is_file():
            raise UserError(f'--input_csv {args.input_csv}: file not found')
        run_fnp(args)
    elif args.dataset_type == 'CK+':
        run_ckplus(args)
    elif args.dataset_type == 'synthetic':
        run_synthetic(args)
    elif args.dataset_type == 'video':
        if args.input_csv is not None and not args.input_csv.is_file():
            raise UserError(f'--input_csv {args.input_csv}: file not found')
        run_video(args)
    else:
        run_convert(args)
    return 0


if __name__ == '__main__':
    run_cli(main)
