"""The annotation contract every script shares: columns, grades, sides, splits, grade folders, CK+ grade mappings
and the one subject-disjoint splitter.

An annotation CSV (``prepare_dataset.py`` writes it, every other script reads it) has one row per photo:
``image_path`` (relative to the data root, or absolute), ``grade`` (0-5 = House-Brackmann I-VI), ``side`` (the
patient's affected side: left / right / none / unknown), ``split`` (train / val / test) and optionally ``subject``,
``neutral_path`` (the rest photo of a rest / expression pair), MTCNN's five landmarks ``eye_l_x ... mouth_r_y``
(``_l`` = image left) and the rest photo's ``neutral_eye_l_x ... neutral_mouth_r_y``.

Without a CSV, photos are read from ``grade_0 .. grade_5`` folders, the subject being the file name before the
first ``_``, or the patient folder for ``grade_N/PATIENT/photo.jpg``. CK+ sequences are graded by a mapping CSV
(``subject`` and/or ``sequence``, ``grade``, ``side``).

A photo listed twice with the same grade is read once; one listed with two grades (or in two splits) is never
guessed (``find_repeated_photos``). Subjects that look wrong (camera counters as names, one subject holding most
photos) stop preparation and training before a patient can reach two splits (``check_subjects``).

Everything here is plain Python, numpy and pandas (no torch), so that preparing data never loads the network.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
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
    'split_subjects', 'grade_folder_photos', 'folder_subjects', 'subjects_of_paths', 'fix_backslash_paths',
    'backslash_note', 'BACKSLASH_NOT_FOUND', 'RepeatedPhotos', 'find_repeated_photos', 'CAMERA_NAME_PATTERN',
    'MIN_PHOTOS_FOR_SUBJECT_CHECK', 'subject_problem', 'check_subjects',
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


def grade_folder_photos(folder: str | os.PathLike) -> list[tuple[Path, str | None]]:
    """``(photo, patient)`` for the photos of one grade folder: those directly inside (``patient`` None: the subject
    comes from the file name) and those anywhere inside a patient folder (``grade_3/P001/rest.jpg``: ``P001``).
    Hidden files and folders are left out; sorted by path."""
    found: list[tuple[Path, str | None]] = [(p, None) for p in image_files(folder)]
    for patient in sorted(p for p in Path(folder).iterdir() if p.is_dir() and not p.name.startswith('.')):
        found.extend((p, patient.name) for p in sorted(patient.rglob('*'))
                     if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                     and not any(part.startswith('.') for part in p.relative_to(patient).parts))
    return sorted(found, key=lambda item: item[0])


def _is_layout_folder(name: str) -> bool:
    """A folder that says nothing about the patient: a grade folder, a split folder, ``.`` or ``..``."""
    name = name.strip().lower()
    return (not name or name in ('.', '..') or GRADE_FOLDER_PATTERN.fullmatch(name) is not None
            or normalise_split(name) in SPLITS)


def folder_subjects(paths: Sequence[str]) -> list[str | None]:
    """The patient folder of each photo path as written in a table (``P001/rest.jpg``, ``grade_3/P001/rest.jpg``:
    ``P001``), or None where the photo's own folder is a grade or split folder or there is none. The folders count
    only when the photos lie in two or more of them: one folder holding every photo (``images/S001_01.jpg``) is a
    place, not a patient, and the file names decide."""
    parents = []
    for text in paths:
        parent = PurePosixPath(str(text).strip().replace('\\', '/')).parent.name
        parents.append(None if _is_layout_folder(parent) else parent)
    return parents if len({p for p in parents if p is not None}) >= 2 else [None] * len(parents)


def subjects_of_paths(paths: Sequence[str], pattern: re.Pattern | None = None, *, folders: bool = True
                      ) -> tuple[list[str], list[str]]:
    """``(subjects, sources)`` of photos without a subject column: the patient folder (source ``folder``,
    ``folder_subjects``) where ``folders`` allows it, else the file-name rule ``subject_from_name`` (source
    ``name``; a name it finds nothing in is its own subject)."""
    from_folders = folder_subjects(paths) if folders else [None] * len(paths)
    subjects, sources = [], []
    for text, folder in zip(paths, from_folders):
        if folder is not None:
            subjects.append(folder)
            sources.append('folder')
        else:
            name = PurePosixPath(str(text).strip().replace('\\', '/')).name
            subjects.append(subject_from_name(name, pattern) or Path(name).stem)
            sources.append('name')
    return subjects, sources


# paths written on Windows

BACKSLASH_NOT_FOUND = 'file not found (the path has backslashes \\ and the file is not there with / either)'


def fix_backslash_paths(paths: Sequence[str], data_root: str | os.PathLike) -> tuple[list[str], list[int]]:
    """Image paths of a table made on Windows (``grade_3\\P001.jpg``), read with ``/`` where the file is not there
    as written but is with ``/``. Returns the paths and the positions changed. Paths that are neither stay as they
    are; the caller says ``BACKSLASH_NOT_FOUND`` for them. Nothing changes where ``\\`` is the separator."""
    root = Path(data_root)
    fixed, changed = [], []
    for position, text in enumerate(paths):
        text = str(text)
        if '\\' in text and os.sep == '/':
            written = Path(text) if Path(text).is_absolute() else root / text
            slashed = text.replace('\\', '/')
            candidate = Path(slashed) if Path(slashed).is_absolute() else root / slashed
            if not written.exists() and candidate.exists():
                fixed.append(slashed)
                changed.append(position)
                continue
        fixed.append(text)
    return fixed, changed


def backslash_note(source: str | os.PathLike, before: str, after: str, count: int) -> str:
    return (f'note: {source}: {count} image path(s) with backslashes (written on Windows?) are read with / '
            f'(first: {before} -> {after})')


# photos listed more than once

@dataclass
class RepeatedPhotos:
    """Rows that list a photo already listed (``find_repeated_photos``). ``dropped``: positions of rows that repeat
    an earlier row's photo, grade (and split), read once. ``conflicts``: groups of positions of rows that list one
    photo with different grades (or in different splits): neither row can be trusted."""
    dropped: dict[int, int]  # position -> position of the row it repeats
    conflicts: list[list[int]]
    names: list[str]
    where: list[str]
    grades: list[int]
    splits: list[str] | None

    @property
    def conflicting(self) -> dict[int, list[int]]:
        """Position -> its conflict group."""
        return {position: group for group in self.conflicts for position in group}

    def describe_conflict(self, group: Sequence[int]) -> str:
        """``grade_1/a.jpg: row 2 (grade 1), row 7 (grade 3)``; splits are named where they differ."""
        splits = self.splits is not None and len({self.splits[i] for i in group}) > 1
        rows = ', '.join(f'{self.where[i]} (grade {self.grades[i]}'
                         + (f', {self.splits[i] or "no split"})' if splits else ')') for i in group)
        return f'{self.names[group[0]]}: {rows}'

    def conflict_reason(self, position: int) -> str:
        group = self.conflicting[position]
        what = 'different grades' if len({self.grades[i] for i in group}) > 1 else 'different splits'
        return f'listed with {what}, so neither is used: {self.describe_conflict(group)}'

    def duplicate_note(self, source: str | os.PathLike, positions: Sequence[int] | None = None) -> str | None:
        """One line for the dropped rows (all, or those at ``positions``): how many, the first few with their rows."""
        dropped = sorted(self.dropped if positions is None else [p for p in positions if p in self.dropped])
        if not dropped:
            return None
        shown = ', '.join(f'{self.where[p]} (as {self.where[self.dropped[p]]}: {self.names[p]})' for p in dropped[:3])
        more = f' and {len(dropped) - 3} more' if len(dropped) > 3 else ''
        return (f'note: {source}: {len(dropped)} duplicate row(s) dropped (a photo listed again with the same grade): '
                f'{shown}{more}')

    def conflict_message(self, source: str | os.PathLike, positions: Sequence[int] | None = None) -> str | None:
        """One line for the conflicting photos (all, or those with a row at ``positions``)."""
        wanted = None if positions is None else set(positions)
        groups = [g for g in self.conflicts if wanted is None or wanted & set(g)]
        if not groups:
            return None
        shown = '; '.join(self.describe_conflict(g) for g in groups[:3])
        more = f'; and {len(groups) - 3} more' if len(groups) > 3 else ''
        return f'{source}: {len(groups)} photo(s) listed with different grades or splits: {shown}{more}'


def photo_key(path: str | os.PathLike, data_root: str | os.PathLike | None = None) -> str:
    """One spelling per file (``./a/../grade_1/x.jpg`` = ``grade_1/x.jpg``), for finding repeated rows."""
    path = Path(path)
    if data_root is not None and not path.is_absolute():
        path = Path(data_root) / path
    return os.path.normpath(str(path))


def find_repeated_photos(keys: Sequence[str], grades: Sequence[int], where: Sequence[str],
                         names: Sequence[str] | None = None, splits: Sequence[str] | None = None
                         ) -> RepeatedPhotos:
    """The one rule for a photo listed more than once (``keys``: ``photo_key`` per row; ``where``: how to name each
    row, e.g. ``row 7``; ``names``: the path as written). Rows with the same photo, grade and split as an earlier
    row are duplicates, read once (the first row wins). A photo listed with different grades, or in different
    splits (``splits`` None: splits are not compared), is a conflict: the caller skips or refuses every row of it,
    never picks one."""
    names = list(names if names is not None else keys)
    by_key: dict[str, list[int]] = {}
    for position, key in enumerate(keys):
        by_key.setdefault(key, []).append(position)
    dropped: dict[int, int] = {}
    conflicts: list[list[int]] = []
    for positions in by_key.values():
        if len(positions) < 2:
            continue
        labels = {(int(grades[p]), splits[p] if splits is not None else '') for p in positions}
        if len(labels) > 1:
            conflicts.append(positions)
        else:
            dropped.update({p: positions[0] for p in positions[1:]})
    return RepeatedPhotos(dropped, conflicts, [str(n) for n in names], [str(w) for w in where],
                          [int(g) for g in grades], None if splits is None else [str(s) for s in splits])


# subjects that look wrong

# File names that a camera, phone or scanner counts up: they carry no patient (DSC01234, IMG_0001,
# IMG-20240101-WA0001, PXL_20240101_123456789, P1010001, 20240101_123456, 0001).
_CAMERA_PREFIXES = r'(?:img|image|dsc[nf]?|pxl|mvimg|gopr|dji|pict|cimg|dcp|photo|screenshot)'
CAMERA_NAME_PATTERN = re.compile(rf'_?{_CAMERA_PREFIXES}[_\- ]?\d[\w\-. ()]*|p\d{{7}}|\d[\d_\-. ()]*', re.IGNORECASE)
# a subject a file-name rule cut out of such a name: the camera's prefix or a date
_CAMERA_SUBJECT_PATTERN = re.compile(rf'_?{_CAMERA_PREFIXES}|(?:19|20)\d{{2}}[-_.]?\d{{2}}[-_.]?\d{{2}}',
                                     re.IGNORECASE)
# fewer photos than this say too little about how subjects are spread
MIN_PHOTOS_FOR_SUBJECT_CHECK = 10


def subject_problem(subjects: Sequence[str], paths: Sequence[str], sources: Sequence[str]) -> str | None:
    """Why the subjects of a table look wrong, or None. Only subjects taken from file names (``sources`` ``name``)
    are judged: a subject column and patient folders are the user's word.

    (a) Most of those photos have camera-counter names (``CAMERA_NAME_PATTERN``) and each is a subject of its own,
        or their subjects are the camera's prefix or a date: nothing in such a name tells patients apart, so one
        patient's photos can land in train and test alike.
    (b) With at least ``MIN_PHOTOS_FOR_SUBJECT_CHECK`` photos, one subject from file names holds more than half of
        them: the rule cuts a common word (``patient_01.jpg`` -> ``patient``) rather than the patient.
    """
    total = len(subjects)
    named = [i for i, source in enumerate(sources) if source == 'name']
    if not named:
        return None
    counts = Counter(subjects)
    stems = [PurePosixPath(str(paths[i]).replace('\\', '/')).stem for i in named]
    camera = [stem for stem in stems if CAMERA_NAME_PATTERN.fullmatch(stem)]
    if len(named) >= 2 and len(camera) * 2 > len(named):
        named_subjects = {subjects[i] for i in named}
        one_each = all(counts[s] == 1 for s in named_subjects)
        camera_subjects = sorted(s for s in named_subjects if _CAMERA_SUBJECT_PATTERN.fullmatch(str(s)))
        if one_each or camera_subjects:
            examples = ', '.join(camera[:3])
            if one_each:
                how = f'each of them is a subject of its own ({len(named_subjects)} subjects)'
            else:
                how = f'their subjects are camera prefixes or dates ({", ".join(camera_subjects[:3])})'
            return (f'{len(camera)} of {len(named)} photos have camera-counter file names ({examples}, ...) and '
                    f'{how}, so one patient\'s photos can land in train and test alike')
    if total >= MIN_PHOTOS_FOR_SUBJECT_CHECK:
        subject, count = Counter(subjects[i] for i in named).most_common(1)[0]
        if count * 2 > total:
            return (f'subject {subject!r} (from the file names) holds {count} of the {total} photos, so the split '
                    f'would not be by patient')
    return None


def check_subjects(subjects: Sequence[str], paths: Sequence[str], sources: Sequence[str], *,
                   where: str | os.PathLike, fixes: str) -> None:
    """A one-line ``UserError`` naming ``where``, the reason (``subject_problem``) and ``fixes`` (the column, flags
    or layout that give each photo its patient), unless the subjects look right. Called by ``prepare_dataset.py``
    before it splits and by training before it carves validation subjects or folds."""
    problem = subject_problem(subjects, paths, sources)
    if problem is not None:
        raise UserError(f'{where}: {problem}; give each photo its patient: {fixes}')


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
    subject_source: str = 'name'  # column (the table's subject), folder (a patient folder) or name (the file name)


# notes about a whole table already printed in this process (one table is read once per split)
_TABLE_NOTES_SAID: set[str] = set()


def read_annotation_csv(csv_file: str | os.PathLike, data_root: str | os.PathLike, split: str | None = None,
                        verbose: bool = True) -> tuple[list[SampleRecord], list[tuple[str, str]]]:
    """Rows of an annotation CSV for one split (None / ``all``: every row, and then no ``split`` column is needed).

    Returns ``(records, skipped)``; a row with an empty image path or a grade that is not an integer 0-5 is
    skipped and listed with its row number. A CSV without a required column, or without a row of ``split``, is a
    ``UserError`` naming the CSV. Across the whole CSV (``find_repeated_photos``), a row repeating another's photo,
    grade and split is dropped; every row of a photo listed with different grades or splits is skipped and listed
    with the rows named. Backslash paths are read with ``/`` where only that file exists (``fix_backslash_paths``).
    Each of these is one line for the whole table, printed once per process however many splits are read. A row
    without a subject takes its patient folder, else its file name (``subjects_of_paths``).
    """
    csv_file, data_root, split = Path(csv_file), Path(data_root), normalise_split(split)
    table = read_table(csv_file, 'annotation CSV')
    required = REQUIRED_COLUMNS if split is not None else [c for c in REQUIRED_COLUMNS if c != 'split']
    require_columns(table, required, csv_file, 'annotation CSV')
    if 'split' not in table.columns:
        table['split'] = ''
    has_landmarks = all(c in table.columns for c in LANDMARK_COLUMNS)
    has_neutral_landmarks = all(c in table.columns for c in NEUTRAL_LANDMARK_COLUMNS)
    rows = table.to_dict('records')
    written = [str(row['image_path']).strip() for row in rows]
    paths, changed = fix_backslash_paths(written, data_root)
    neutrals = [str(row.get('neutral_path', '') or '').strip() for row in rows]
    neutrals = fix_backslash_paths(neutrals, data_root)[0]
    given = [str(row.get('subject', '') or '').strip() for row in rows]
    derived, derived_from = subjects_of_paths(paths)
    row_splits = [normalise_split(row['split']) or '' for row in rows]
    grades = [grade_problem(row['grade']) for row in rows]
    valid = [p for p in range(len(rows)) if paths[p] and grades[p][0] is not None]
    repeats = find_repeated_photos([photo_key(paths[p], data_root) for p in valid], [grades[p][0] for p in valid],
                                   [f'row {row_number(table.index[p])}' for p in valid],
                                   [paths[p] for p in valid], [row_splits[p] for p in valid])
    dropped = {valid[p] for p in repeats.dropped}
    conflicting = {valid[p]: p for p in repeats.conflicting}
    records, skipped = [], []
    splits_seen = Counter()
    rows_in_split = []
    for position, (index, row) in enumerate(zip(table.index, rows)):
        row_split = row_splits[position]
        splits_seen[row_split or '(empty)'] += 1
        if split is not None and row_split != split:
            continue
        rows_in_split.append(position)
        where = f'{csv_file} row {row_number(index)}'
        if not paths[position]:
            skipped.append((f'{csv_file}:row {row_number(index)}', f'{where}: image_path is empty'))
            continue
        path = Path(paths[position])
        path = path if path.is_absolute() else data_root / path
        grade, problem = grades[position]
        if grade is None:
            skipped.append((str(path), f'{where}: {problem}'))
            continue
        if position in dropped:
            continue
        if position in conflicting:
            skipped.append((str(path), f'{csv_file}: {repeats.conflict_reason(conflicting[position])}'))
            continue
        if '\\' in paths[position] and os.sep == '/' and not path.exists():
            skipped.append((str(path), f'{where}: {BACKSLASH_NOT_FOUND}'))
            continue
        neutral = neutrals[position]
        if neutral and not Path(neutral).is_absolute():
            neutral = str(data_root / neutral)
        records.append(SampleRecord(
            path=str(path), grade=grade, side=normalise_side(row['side'], grade),
            subject=given[position] or derived[position],
            neutral_path=neutral or None, annotation=row_landmarks(row) if has_landmarks else None, origin=where,
            neutral_annotation=(row_landmarks(row, NEUTRAL_LANDMARK_COLUMNS)
                                if has_neutral_landmarks and neutral else None),
            subject_source='column' if given[position] else derived_from[position]))
    if not rows_in_split:
        present = ', '.join(f'{name} ({count})' for name, count in sorted(splits_seen.items())) or 'no rows at all'
        raise UserError(f'{csv_file}: no rows with split "{split or "all"}" (splits present: {present})')
    if verbose:  # about the whole table, so said once however many splits are read from it
        lines = [repeats.duplicate_note(csv_file)]
        if changed:
            lines.insert(0, backslash_note(csv_file, written[changed[0]], paths[changed[0]], len(changed)))
        conflicts = repeats.conflict_message(csv_file)
        if conflicts:
            lines.append(f'warning: {conflicts}; every row of them is left out (listed with the skipped images)')
        for line in lines:
            if line is not None and line not in _TABLE_NOTES_SAID:
                _TABLE_NOTES_SAID.add(line)
                print(line)
    return records, skipped


def scan_grade_folders(data_root: str | os.PathLike, split: str | None = None, verbose: bool = True
                       ) -> tuple[list[SampleRecord], list[tuple[str, str]]]:
    """Photos in ``data_root/grade_0 .. grade_5`` (or ``data_root/<split>/grade_N`` where such folders exist),
    directly or in patient folders (``grade_3/P001/rest.jpg``, ``grade_folder_photos``); the subject is the patient
    folder, else comes from the file name (``subject_from_name``). Photos in a folder outside 0-5 are skipped and
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
            photos = grade_folder_photos(folder)
            if grade is None:
                skipped.extend((str(p), f'folder {folder.name}: grade outside 0-5') for p, _ in photos)
                continue
            records.extend(SampleRecord(path=str(p), grade=grade, side=normalise_side('', grade),
                                        subject=patient or subject_from_name(p) or p.stem, origin=f'{folder}',
                                        subject_source='folder' if patient else 'name')
                           for p, patient in photos)
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
        return read_annotation_csv(mapping_csv, data_root, split, verbose)
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
            origin=entry['where'], neutral_annotation=_ck_landmarks(data_root, subject, sequence, frames[0]),
            subject_source='folder'))
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
