"""The annotation contract every script shares: columns, grades, sides, splits, grade folders, CK+ grade mappings
and the one subject-disjoint splitter.

An annotation CSV (``prepare_dataset.py`` writes it, every other script reads it) has one row per photo:
``image_path`` (relative to the data root, or absolute), ``grade`` (0-5 = House-Brackmann I-VI), ``side`` (the
patient's affected side: left / right / none / unknown), ``split`` (train / val / test) and optionally ``subject``,
``neutral_path`` (the rest photo of a rest / expression pair), MTCNN's five landmarks ``eye_l_x ... mouth_r_y``
(``_l`` = image left) and the rest photo's ``neutral_eye_l_x ... neutral_mouth_r_y``.

Without a CSV, photos are read from ``grade_0 .. grade_5`` folders, the subject being the file name before the
first ``_``. CK+ sequences are graded by a mapping CSV (``subject`` and/or ``sequence``, ``grade``, ``side``).

Everything here is plain Python, numpy and pandas (no torch), so that preparing data never loads the network.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from utils import UserError

__all__ = [
    'HB_GRADES', 'HB_DESCRIPTIONS', 'SIMPLIFIED_GRADES', 'GRADE_6_TO_3', 'GRADE_3_TO_6', 'grade_names',
    'REQUIRED_COLUMNS', 'LANDMARK_COLUMNS', 'NEUTRAL_LANDMARK_COLUMNS', 'COLUMN_ORDER', 'order_columns',
    'SPLITS', 'SPLIT_ALIASES', 'normalise_split', 'SIDES', 'SIDE_CLASSES', 'SIDE_ALIASES', 'side_of', 'normalise_side',
    'grade_problem', 'parse_grade', 'parse_grades', 'IMAGE_EXTENSIONS', 'GRADE_FOLDER_PATTERN', 'grade_folders',
    'image_files', 'DEFAULT_SUBJECT_REGEX', 'compile_subject_regex', 'subject_from_name', 'read_table',
    'row_number', 'require_columns', 'row_landmarks', 'SampleRecord', 'read_annotation_csv', 'scan_grade_folders',
    'ck_key', 'ck_sequence_key', 'read_grade_mapping', 'scan_ckplus', 'subject_grades', 'split_sizes',
    'split_subjects',
]

# grades

# House-Brackmann grades I-VI are stored as labels 0-5.
HB_GRADES = ('I', 'II', 'III', 'IV', 'V', 'VI')
HB_DESCRIPTIONS = ('normal', 'mild dysfunction', 'moderate dysfunction', 'moderately severe dysfunction',
                   'severe dysfunction', 'total paralysis')
# Simplified 3-class scale: I normal; II-III mild / moderate; IV-VI severe.
SIMPLIFIED_GRADES = ('normal (I)', 'mild-moderate (II-III)', 'severe (IV-VI)')
GRADE_6_TO_3 = (0, 1, 1, 2, 2, 2)
# 3 -> 6 is lossy: each simplified class maps to its lowest House-Brackmann grade.
GRADE_3_TO_6 = (0, 1, 3)


def grade_names(num_classes: int) -> list[str]:
    """Display names of the class indices: HB I-VI for 6 classes, the simplified scale for 3."""
    if num_classes == 6:
        return [f'HB {g}' for g in HB_GRADES]
    if num_classes == 3:
        return list(SIMPLIFIED_GRADES)
    return [f'class {i}' for i in range(num_classes)]


def _scale(num_classes: int) -> str:
    if num_classes == 6:
        return '0-5 (House-Brackmann I-VI)'
    return f'0-{num_classes - 1} (the simplified scale)' if num_classes == 3 else f'0-{num_classes - 1}'


def grade_problem(value: Any, num_classes: int = 6) -> tuple[int | None, str]:
    """``(grade, '')`` for an integer 0 .. num_classes - 1 (``'3'``, ``'3.0'``, ``3``), else ``(None, why)``.
    Grades are numbers: names such as ``HB III`` are refused rather than guessed."""
    text = str(value).strip()
    if not text:
        return None, 'grade is empty'
    try:
        number = float(text)
    except ValueError:
        return None, f'grade {text!r} is not a number'
    if not number.is_integer() or not 0 <= number < num_classes:
        return None, f'grade {text!r} is outside {_scale(num_classes)}'
    return int(number), ''


def parse_grade(value: Any, num_classes: int = 6) -> int:
    """One grade as an int 0 .. num_classes - 1; anything else is a ``ValueError`` saying why."""
    grade, problem = grade_problem(value, num_classes)
    if grade is None:
        raise ValueError(problem)
    return grade


def parse_grades(values: pd.Series, path: str | os.PathLike, num_classes: int = 6, *, column: str = 'grade',
                 hint: str = '') -> pd.Series:
    """A column of grades as ints, or one ``UserError`` naming the CSV, the first bad rows (spreadsheet numbers:
    ``row_number``) and their values. ``hint`` is appended to the message."""
    parsed = [grade_problem(v, num_classes)[0] for v in values]
    bad = [(index, value) for index, value, grade in zip(values.index, values, parsed) if grade is None]
    if bad:
        rows = ', '.join(f'row {row_number(index)} ({value!r})' for index, value in bad[:5])
        more = f' and {len(bad) - 5} more' if len(bad) > 5 else ''
        raise UserError(f'{path}: {column} must be an integer {_scale(num_classes)}{hint}; bad: {rows}{more}')
    return pd.Series(parsed, index=values.index, dtype=int)


# columns

REQUIRED_COLUMNS = ['image_path', 'grade', 'side', 'split']
# MTCNN's five points in its order; "l" is image left (the patient's right side when they face the camera).
LANDMARK_COLUMNS = ['eye_l_x', 'eye_l_y', 'eye_r_x', 'eye_r_y', 'nose_x', 'nose_y',
                    'mouth_l_x', 'mouth_l_y', 'mouth_r_x', 'mouth_r_y']
# the rest photo's landmarks of a rest / expression pair (the fallback when MTCNN misses the rest photo)
NEUTRAL_LANDMARK_COLUMNS = [f'neutral_{c}' for c in LANDMARK_COLUMNS]
# the order prepare_dataset.py writes; other columns follow in their own order
COLUMN_ORDER = ['image_path', 'grade', 'side', 'split', 'subject', 'neutral_path', *LANDMARK_COLUMNS,
                *NEUTRAL_LANDMARK_COLUMNS]


def order_columns(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with the ``COLUMN_ORDER`` columns first."""
    first = [c for c in COLUMN_ORDER if c in table.columns]
    return table[first + [c for c in table.columns if c not in first]]


# splits and sides

SPLITS = ('train', 'val', 'test')
SPLIT_ALIASES = {'training': 'train', 'valid': 'val', 'validation': 'val', 'dev': 'val', 'testing': 'test'}


def normalise_split(split: Any) -> str | None:
    """``train`` / ``val`` / ``test`` (aliases such as ``validation`` accepted, any case); None for None, ``''``,
    ``all`` and ``*`` (every row). Other names are returned lower-cased."""
    if split is None:
        return None
    split = str(split).strip().lower()
    if split in ('', 'all', '*'):
        return None
    return SPLIT_ALIASES.get(split, split)


# the patient's affected side; 'unknown' where it is not recorded
SIDES = ('left', 'right', 'none', 'unknown')
# the sides a side head predicts, in its class order (unknown is not a class)
SIDE_CLASSES = ('left', 'right', 'none')
# Bilateral palsy has no one affected side: it reads as unknown, as does an unrecorded side of a palsied face.
SIDE_ALIASES = {'l': 'left', 'r': 'right', 'n': 'none', 'no': 'none', 'normal': 'none', 'bilateral': 'unknown'}


def side_of(value: Any, grade: int | None = None) -> tuple[str, bool]:
    """``(side, recognised)``: one of ``SIDES`` (aliases accepted, any case). An empty side is ``none`` for grade
    0 (HB I, a normal face) and ``unknown`` otherwise; an unrecognised value is ``unknown`` with
    ``recognised=False``."""
    text = '' if value is None else str(value).strip().lower()
    if not text:
        return ('none' if grade == 0 else 'unknown'), True
    side = SIDE_ALIASES.get(text, text)
    return (side, True) if side in SIDES else ('unknown', False)


def normalise_side(value: Any, grade: int | None = None) -> str:
    """The side ``side_of`` reads in ``value``."""
    return side_of(value, grade)[0]


# files and subjects

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
# grade_3, grade-3, grade 3, Grade3: the House-Brackmann label 3 (HB IV)
GRADE_FOLDER_PATTERN = re.compile(r'grade[_\- ]?(\d+)')
DEFAULT_SUBJECT_REGEX = r'^([^_]+)'


def grade_folders(base: str | os.PathLike, num_classes: int = 6) -> list[tuple[int | None, Path]]:
    """``(grade, folder)`` for every grade folder directly inside ``base`` (sorted by name); ``grade`` is None for
    a folder outside 0 .. num_classes - 1."""
    base = Path(base)
    if not base.is_dir():
        return []
    found = []
    for folder in sorted(base.iterdir()):
        match = GRADE_FOLDER_PATTERN.fullmatch(folder.name.lower())
        if match and folder.is_dir():
            grade = int(match.group(1))
            found.append((grade if 0 <= grade < num_classes else None, folder))
    return found


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The photos in a folder (``IMAGE_EXTENSIONS``, any case; hidden files left out), sorted by name."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith('.') and p.is_file())


def compile_subject_regex(text: str) -> re.Pattern:
    try:
        return re.compile(text)
    except re.error as err:
        raise UserError(f'--subject_regex {text!r}: not a valid regular expression ({err})') from None


_DEFAULT_SUBJECT_PATTERN = re.compile(DEFAULT_SUBJECT_REGEX)


def subject_from_name(name: str | os.PathLike, pattern: re.Pattern | None = None) -> str | None:
    """The subject of a photo: the regex's first group (or whole match) on the file name without extension
    (default ``DEFAULT_SUBJECT_REGEX``: the part before the first ``_``); None where it finds none."""
    pattern = _DEFAULT_SUBJECT_PATTERN if pattern is None else pattern
    match = pattern.search(Path(name).stem)
    if match is None:
        return None
    subject = match.group(1) if pattern.groups else match.group(0)
    return subject or None


# reading tables

def read_table(path: str | os.PathLike, what: str = 'annotation CSV') -> pd.DataFrame:
    """A CSV as strings with stripped, lower-case column names and blank rows left out. The index keeps each row's
    place in the file (``row_number`` gives its spreadsheet number). A missing, empty or unreadable file, or one
    without rows, is a one-line ``UserError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f'{path}: {what} not found')
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise UserError(f'{path}: {what} is empty') from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f'{path}: {what} is not a readable CSV ({first})') from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    table = table[[any(str(v).strip() for v in row) for row in table.itertuples(index=False)]]
    if table.empty:
        raise UserError(f'{path}: {what} has no rows')
    return table


def row_number(index: int) -> int:
    """The spreadsheet number of table row ``index`` (the header is row 1)."""
    return int(index) + 2


def require_columns(table: pd.DataFrame, columns: Sequence[str], path: str | os.PathLike,
                    what: str = 'annotation CSV') -> None:
    """A one-line ``UserError`` naming the file and the missing columns, unless ``table`` has all ``columns``."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise UserError(f'{path}: {what} lacks the column(s) {", ".join(missing)} '
                        f'(it has: {", ".join(table.columns) or "none"})')


def row_landmarks(row: Mapping[str, Any], columns: Sequence[str] = LANDMARK_COLUMNS) -> np.ndarray | None:
    """The (5, 2) float32 landmarks in a row's ``columns``; None where one is missing or not a finite number."""
    try:
        values = np.array([float(row[c]) for c in columns], dtype=np.float32)
    except (ValueError, KeyError, TypeError):
        return None
    return values.reshape(5, 2) if np.all(np.isfinite(values)) else None


# records: labelled photos before their landmarks are known

@dataclass
class SampleRecord:
    """One labelled photo before its landmarks are known. ``grade`` is 0-5 (House-Brackmann I-VI)."""
    path: str
    grade: int
    side: str = 'unknown'
    subject: str = ''
    neutral_path: str | None = None
    annotation: np.ndarray | None = None  # (5, 2) landmarks from the annotation, original pixels
    origin: str = ''  # where the label came from, e.g. "fnp.csv row 4"
    neutral_annotation: np.ndarray | None = None  # (5, 2) landmarks of the neutral (rest) photo, if annotated


def _subject_of(path: str | os.PathLike) -> str:
    return subject_from_name(path) or Path(path).stem


def read_annotation_csv(csv_file: str | os.PathLike, data_root: str | os.PathLike, split: str | None = None
                        ) -> tuple[list[SampleRecord], list[tuple[str, str]]]:
    """Rows of an annotation CSV for one split (None / ``all``: every row, and then no ``split`` column is needed).

    Returns ``(records, skipped)``; a row with an empty image path or a grade that is not an integer 0-5 is
    skipped and listed with its row number. A CSV without a required column, or without a row of ``split``, is a
    ``UserError`` naming the CSV.
    """
    csv_file, data_root, split = Path(csv_file), Path(data_root), normalise_split(split)
    table = read_table(csv_file, 'annotation CSV')
    required = REQUIRED_COLUMNS if split is not None else [c for c in REQUIRED_COLUMNS if c != 'split']
    require_columns(table, required, csv_file, 'annotation CSV')
    if 'split' not in table.columns:
        table['split'] = ''
    has_landmarks = all(c in table.columns for c in LANDMARK_COLUMNS)
    has_neutral_landmarks = all(c in table.columns for c in NEUTRAL_LANDMARK_COLUMNS)
    records, skipped = [], []
    splits_seen = Counter()
    rows_in_split = 0
    for index, row in zip(table.index, table.to_dict('records')):
        row_split = normalise_split(row['split']) or ''
        splits_seen[row_split or '(empty)'] += 1
        if split is not None and row_split != split:
            continue
        rows_in_split += 1
        where = f'{csv_file} row {row_number(index)}'
        image_path = str(row['image_path']).strip()
        if not image_path:
            skipped.append((f'{csv_file}:row {row_number(index)}', f'{where}: image_path is empty'))
            continue
        path = Path(image_path)
        path = path if path.is_absolute() else data_root / path
        grade, problem = grade_problem(row['grade'])
        if grade is None:
            skipped.append((str(path), f'{where}: {problem}'))
            continue
        neutral = str(row.get('neutral_path', '') or '').strip()
        if neutral and not Path(neutral).is_absolute():
            neutral = str(data_root / neutral)
        records.append(SampleRecord(
            path=str(path), grade=grade, side=normalise_side(row['side'], grade),
            subject=str(row.get('subject', '') or '').strip() or _subject_of(path),
            neutral_path=neutral or None, annotation=row_landmarks(row) if has_landmarks else None, origin=where,
            neutral_annotation=(row_landmarks(row, NEUTRAL_LANDMARK_COLUMNS)
                                if has_neutral_landmarks and neutral else None)))
    if rows_in_split == 0:
        present = ', '.join(f'{name} ({count})' for name, count in sorted(splits_seen.items())) or 'no rows at all'
        raise UserError(f'{csv_file}: no rows with split "{split or "all"}" (splits present: {present})')
    return records, skipped


def scan_grade_folders(data_root: str | os.PathLike, split: str | None = None, verbose: bool = True
                       ) -> tuple[list[SampleRecord], list[tuple[str, str]]]:
    """Photos in ``data_root/grade_0 .. grade_5`` (or ``data_root/<split>/grade_N`` where such folders exist); the
    subject comes from the file name (``subject_from_name``). Photos in a folder outside 0-5 are skipped and
    listed. Returns ``(records, skipped)``."""
    data_root, split = Path(data_root), normalise_split(split)
    if split is not None and grade_folders(data_root / split):
        bases = [data_root / split]
    elif grade_folders(data_root):
        bases = [data_root]
        if split is not None and verbose:
            print(f'note: {data_root} has no {split}/ folder; every image in its grade_N folders is used for '
                  f'split "{split}"')
    else:
        split_dirs = [d for d in sorted(data_root.iterdir()) if d.is_dir() and grade_folders(d)] \
            if data_root.is_dir() else []
        if split is None and split_dirs:
            bases = split_dirs
        elif split_dirs:
            raise UserError(f'{data_root}: no {split}/ folder with grade_N folders (found: '
                            f'{", ".join(d.name for d in split_dirs)})')
        else:
            raise UserError(f'{data_root}: no annotation CSV given and no grade_0 .. grade_5 folders inside')
    records, skipped = [], []
    for base in bases:
        for grade, folder in grade_folders(base):
            images = image_files(folder)
            if grade is None:
                skipped.extend((str(p), f'folder {folder.name}: grade outside 0-5') for p in images)
                continue
            records.extend(SampleRecord(path=str(p), grade=grade, side=normalise_side('', grade),
                                        subject=_subject_of(p), origin=f'{folder}') for p in images)
    if not records and not skipped:
        raise UserError(f'{data_root}: the grade_N folders hold no images ({", ".join(IMAGE_EXTENSIONS)})')
    return records, skipped


# CK+

def ck_key(text: str) -> str:
    """``S5`` / ``s005`` -> ``S005``; ``1`` -> ``001``: CK+ names are zero-padded, hand-made mappings often not."""
    text = str(text).strip().upper()
    match = re.fullmatch(r'S0*(\d+)', text)
    if match:
        return f'S{int(match.group(1)):03d}'
    return f'{int(text):03d}' if text.isdigit() else text


def ck_sequence_key(text: str) -> tuple[str, str] | None:
    """``S005/001``, ``S5_1`` -> ``('S005', '001')``; None without two parts."""
    parts = [p for p in re.split(r'[/\\_]', str(text).strip()) if p]
    return (ck_key(parts[0]), ck_key(parts[1])) if len(parts) >= 2 else None


@dataclass
class GradeMapping:
    """A CK+ grade mapping CSV: entries (``grade``, ``side``, ``split`` or None, ``where``) by sequence key and by
    subject key (a sequence's row wins over its subject's), the rows skipped and whether a split column exists."""
    by_sequence: dict[tuple[str, str], dict[str, Any]]
    by_subject: dict[str, dict[str, Any]]
    skipped: list[tuple[str, str]]
    has_split: bool

    def entry(self, subject: str, sequence: str) -> dict[str, Any] | None:
        key = (ck_key(subject), ck_key(sequence))
        return self.by_sequence.get(key) or self.by_subject.get(key[0])


def read_grade_mapping(path: str | os.PathLike) -> GradeMapping:
    """Read a CK+ grade mapping CSV: ``subject`` (S005) and/or ``sequence`` (S005/001), ``grade`` (0-5), optional
    ``side`` and ``split``. A row with a bad grade or neither key is skipped and listed; the first row of a key
    wins."""
    path = Path(path)
    table = read_table(path, 'grade mapping CSV')
    columns = list(table.columns)
    missing = [c for c in ('grade',) if c not in columns]
    if 'subject' not in columns and 'sequence' not in columns:
        missing.append('subject or sequence')
    if missing:
        raise UserError(f'{path}: grade mapping CSV lacks the column(s) {", ".join(missing)} '
                        f'(it has: {", ".join(columns) or "none"})')
    mapping = GradeMapping({}, {}, [], 'split' in columns)
    for index, row in zip(table.index, table.to_dict('records')):
        where = f'{path} row {row_number(index)}'
        grade, problem = grade_problem(row['grade'])
        if grade is None:
            mapping.skipped.append((f'{path}:row {row_number(index)}', f'{where}: {problem}'))
            continue
        entry = {'grade': grade, 'side': normalise_side(row.get('side', ''), grade), 'where': where,
                 'split': normalise_split(row.get('split', '')) if mapping.has_split else None}
        sequence = str(row.get('sequence', '')).strip()
        sequence_key = ck_sequence_key(sequence) if sequence else None
        if sequence_key is not None:
            mapping.by_sequence.setdefault(sequence_key, entry)
        elif str(row.get('subject', '')).strip():
            mapping.by_subject.setdefault(ck_key(row['subject']), entry)
        else:
            mapping.skipped.append((f'{path}:row {row_number(index)}', f'{where}: neither subject nor sequence given'))
    return mapping


def _ck_images_root(data_root: Path) -> Path:
    nested = data_root / 'cohn-kanade-images'
    return nested if nested.is_dir() else data_root


def _ck_sequences(images_root: Path) -> list[tuple[str, str, list[Path]]]:
    """(subject, sequence, frames sorted by name) for every folder that holds frames, two levels down."""
    sequences = []
    for subject in sorted(p for p in images_root.iterdir() if p.is_dir() and not p.name.startswith('.')):
        for sequence in sorted(p for p in subject.iterdir() if p.is_dir() and not p.name.startswith('.')):
            frames = image_files(sequence)
            if frames:
                sequences.append((subject.name, sequence.name, frames))
    return sequences


def _ck_landmarks(data_root: Path, subject: str, sequence: str, frame: Path) -> np.ndarray | None:
    """Five points from CK+'s 68-point AAM landmarks of a frame, where the release's Landmarks folder is present:
    image-left eye = mean of points 36-41, image-right eye = 42-47, nose tip 30, mouth corners 48 and 54."""
    path = data_root / 'Landmarks' / subject / sequence / f'{frame.stem}_landmarks.txt'
    try:
        points = np.loadtxt(path, dtype=np.float32).reshape(-1, 2)
    except (OSError, ValueError):
        return None
    if len(points) != 68 or not np.all(np.isfinite(points)):
        return None
    return np.stack([points[36:42].mean(0), points[42:48].mean(0), points[30], points[48], points[54]])


def scan_ckplus(data_root: str | os.PathLike, grade_mapping_csv: str | os.PathLike | None, split: str | None = None,
                verbose: bool = True) -> tuple[list[SampleRecord], list[tuple[str, str]]]:
    """The peak (last) frame of each CK+ sequence, graded by a mapping CSV (``read_grade_mapping``); its first
    frame is the neutral one.

    Layout: ``data_root/cohn-kanade-images/S005/001/S005_001_00000001.png`` or the subject folders directly under
    ``data_root``. A mapping with an ``image_path`` column is read as an annotation CSV instead. CK+ carries no
    palsy grades, so without a mapping this is a ``UserError`` rather than every face labelled normal.
    """
    data_root, split = Path(data_root), normalise_split(split)
    if grade_mapping_csv is None:
        raise UserError(f'{data_root}: CK+ images carry no palsy grades; give a grade mapping CSV (columns subject or '
                        f'sequence, grade, side) such as the one prepare_dataset.py writes')
    mapping_csv = Path(grade_mapping_csv)
    if 'image_path' in read_table(mapping_csv, 'grade mapping CSV').columns:  # an annotation CSV of CK+ frames
        return read_annotation_csv(mapping_csv, data_root, split)
    mapping = read_grade_mapping(mapping_csv)
    skipped = list(mapping.skipped)
    images_root = _ck_images_root(data_root)
    sequences = _ck_sequences(images_root) if images_root.is_dir() else []
    if not sequences:
        raise UserError(f'{data_root}: no CK+ sequences found (expected cohn-kanade-images/S005/001/*.png or '
                        f'S005/001/*.png)')
    if split is not None and not mapping.has_split and verbose:
        print(f'note: {mapping_csv} has no split column; every graded sequence is used for split "{split}"')
    records, used = [], set()
    unmapped = 0
    for subject, sequence, frames in sequences:
        entry = mapping.entry(subject, sequence)
        if entry is None:
            unmapped += 1
            skipped.append((str(frames[-1]), f'no grade for {subject}/{sequence} in {mapping_csv}'))
            continue
        used.add(entry['where'])
        if split is not None and entry['split'] is not None and entry['split'] != split:
            continue
        records.append(SampleRecord(
            path=str(frames[-1]), grade=entry['grade'], side=entry['side'], subject=subject,
            neutral_path=str(frames[0]), annotation=_ck_landmarks(data_root, subject, sequence, frames[-1]),
            origin=entry['where'], neutral_annotation=_ck_landmarks(data_root, subject, sequence, frames[0])))
    unused = [e['where'] for e in (*mapping.by_sequence.values(), *mapping.by_subject.values())
              if e['where'] not in used]
    if verbose and unused:
        print(f'note: {len(unused)} row(s) of {mapping_csv} match no sequence under {images_root} '
              f'(first: {unused[0]})')
    if verbose and unmapped:
        print(f'note: {unmapped} CK+ sequence(s) have no grade in {mapping_csv} and are left out')
    if not records and split is not None and mapping.has_split:
        raise UserError(f'{mapping_csv}: no graded sequence with split "{split}"')
    return records, skipped


# subject-disjoint splits

def subject_grades(subjects: Iterable[Any], grades: Iterable[int]) -> dict[Any, int]:
    """Each subject's grade for stratification, from per-photo sequences: its most frequent grade, ties -> the
    higher grade. Subjects come out sorted."""
    counts: dict[Any, Counter] = {}
    for subject, grade in zip(subjects, grades):
        counts.setdefault(subject, Counter())[int(grade)] += 1
    result = {}
    for subject in sorted(counts, key=str):
        top = max(counts[subject].values())
        result[subject] = max(g for g, c in counts[subject].items() if c == top)
    return result


def _check_ratios(ratios: Sequence[float]) -> list[float]:
    ratios = [float(r) for r in ratios]
    total = sum(ratios)
    if not ratios or any(not np.isfinite(r) or r < 0 for r in ratios) or total <= 0:
        raise ValueError(f'split ratios {ratios}: need one or more ratios >= 0 with a positive sum')
    return ratios if abs(total - 1.0) <= 1e-9 else [r / total for r in ratios]


def split_sizes(count: int, ratios: Sequence[float], dealt: Sequence[int] | None = None) -> list[int]:
    """How many of ``count`` subjects (of one grade) go to each part, by the rule of ``split_subjects``;
    ``dealt`` are the subjects each part already holds (earlier grades), which only break ties."""
    ratios = _check_ratios(ratios)
    dealt = [0] * len(ratios) if dealt is None else [int(d) for d in dealt]
    total = sum(dealt)
    exact = [count * r for r in ratios]
    sizes = [int(np.floor(e)) for e in exact]
    # ties in the remainder (rounded: equal shares must tie exactly) go to the part furthest below its share of
    # the subjects dealt so far, then to the lower index
    order = sorted(range(len(ratios)), key=lambda i: (-round(exact[i] - sizes[i], 9), dealt[i] - ratios[i] * total, i))
    for i in order[:count - sum(sizes)]:
        sizes[i] += 1
    for i in range(len(ratios)):
        if ratios[i] > 0 and sizes[i] == 0:
            donor = max(range(len(sizes)), key=lambda j: sizes[j])  # the largest part, the lower index on ties
            if sizes[donor] < 2:
                break
            sizes[donor] -= 1
            sizes[i] += 1
    return sizes


def split_subjects(subjects: Iterable[Any], grades: Iterable[int], ratios: Sequence[float], seed: int
                   ) -> dict[Any, int]:
    """Subject -> part index (0-based) of a subject-disjoint split stratified by grade, from per-photo sequences of
    subjects and grades. One rule for every split of the toolkit (train / val / test, validation subjects,
    cross-validation folds):

    1. Each subject is stratified by its grade (``subject_grades``: most frequent, ties -> the higher).
    2. Grades are dealt in ascending order. A grade's subjects are sorted, then shuffled by one permutation of
       ``np.random.default_rng(seed)`` (one generator for all grades, so a seed fixes the whole split).
    3. Part sizes (``split_sizes``): ``floor(n * ratio)`` each, the rest one each to the largest remainders; equal
       remainders go to the part furthest below its ratio's share of the subjects dealt so far (earlier grades),
       then to the lower index. Then each part with ratio > 0 that got none takes one from the largest part (the
       lower index on ties) while that part has two or more: with at least as many subjects as such parts, every
       one of them gets a subject of the grade.
    4. The shuffled subjects are cut into contiguous blocks of those sizes in part order.

    With K equal ratios every remainder ties, so each grade's extra subjects go to the parts with the fewest
    subjects so far: fold sizes differ by at most one subject in total. Ratios need not sum to 1 (they are
    normalised).
    """
    ratios = _check_ratios(ratios)
    by_subject = subject_grades(subjects, grades)
    rng = np.random.default_rng(seed)
    dealt = [0] * len(ratios)
    part_of: dict[Any, int] = {}
    for grade in sorted(set(by_subject.values())):
        members = sorted((s for s, g in by_subject.items() if g == grade), key=str)
        members = [members[i] for i in rng.permutation(len(members))]
        start = 0
        for part, size in enumerate(split_sizes(len(members), ratios, dealt)):
            part_of.update({s: part for s in members[start:start + size]})
            start += size
            dealt[part] += size
    return part_of
