"""annotations.py: the one subject-disjoint splitter (stratified, exact shares, balanced folds, deterministic, the
at-least-one rule, ties) and every case of the annotation contract (columns, aliases, sides, grades, grade folders,
CK+ mappings, bad values as one-line errors naming the file). Imports no torch."""
from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import annotations as ann
from utils import UserError

ROOT = Path(ann.__file__).parent


def photos(subjects_per_grade: dict[int, int], per_subject: int = 2) -> tuple[list[str], list[int]]:
    """Per-photo subject and grade sequences: ``per_subject`` photos of each subject."""
    subjects, grades = [], []
    for grade, count in subjects_per_grade.items():
        for k in range(count):
            subjects += [f'G{grade}S{k:02d}'] * per_subject
            grades += [grade] * per_subject
    return subjects, grades


def parts_per_grade(part_of: dict[str, int], subjects, grades) -> Counter:
    by_subject = ann.subject_grades(subjects, grades)
    return Counter((by_subject[s], p) for s, p in part_of.items())


# the contract needs no torch

def test_annotations_imports_no_torch():
    code = 'import annotations, sys; assert "torch" not in sys.modules, "annotations imported torch"'
    subprocess.run([sys.executable, '-c', code], check=True, cwd=ROOT)


# one subject splitter

def test_subject_grades_most_frequent_ties_to_the_higher():
    grades = ann.subject_grades(['A', 'A', 'A', 'B', 'B', 'C'], [2, 2, 3, 1, 4, 0])
    assert grades == {'A': 2, 'B': 4, 'C': 0}
    assert list(grades) == ['A', 'B', 'C']


def test_split_is_stratified_subject_disjoint_and_covers_every_subject():
    subjects, grades = photos({0: 20, 1: 20, 2: 7, 5: 3})
    part_of = ann.split_subjects(subjects, grades, (0.7, 0.15, 0.15), seed=1)
    assert set(part_of) == set(subjects) and set(part_of.values()) == {0, 1, 2}
    counts = parts_per_grade(part_of, subjects, grades)
    assert [counts[(0, p)] for p in range(3)] == [14, 3, 3]
    assert [counts[(1, p)] for p in range(3)] == [14, 3, 3]
    assert [counts[(5, p)] for p in range(3)] == [1, 1, 1]  # every part gets one when there are enough
    assert sum(counts[(2, p)] for p in range(3)) == 7 and all(counts[(2, p)] >= 1 for p in range(3))


def test_split_is_the_seeded_shuffle_of_the_sorted_subjects_per_grade():
    """Grades ascending, one generator: the documented procedure written out by hand."""
    subjects, grades = photos({0: 20, 3: 20})
    ratios = (0.7, 0.15, 0.15)
    part_of = ann.split_subjects(subjects, grades, ratios, seed=42)
    rng = np.random.default_rng(42)
    expected = {}
    for grade in (0, 3):
        members = sorted({s for s, g in zip(subjects, grades) if g == grade})
        members = [members[i] for i in rng.permutation(len(members))]
        expected.update({s: 0 for s in members[:14]}, **{s: 1 for s in members[14:17]},
                        **{s: 2 for s in members[17:]})
    assert part_of == expected


def test_split_is_deterministic_for_a_seed():
    subjects, grades = photos({g: 9 for g in range(6)})
    first = ann.split_subjects(subjects, grades, (0.6, 0.2, 0.2), seed=7)
    assert first == ann.split_subjects(subjects, grades, (0.6, 0.2, 0.2), seed=7)
    assert first != ann.split_subjects(subjects, grades, (0.6, 0.2, 0.2), seed=8)
    # the order of the photos does not matter
    order = np.random.default_rng(0).permutation(len(subjects))
    assert first == ann.split_subjects([subjects[i] for i in order], [grades[i] for i in order], (0.6, 0.2, 0.2), 7)


@pytest.mark.parametrize('k', [2, 3, 5, 7])
@pytest.mark.parametrize('counts', [{0: 1, 1: 2, 2: 3, 3: 4, 4: 5, 5: 6}, {0: 11, 2: 13, 4: 1}, {1: 4, 3: 4}])
def test_equal_ratios_give_folds_that_differ_by_at_most_one_subject(k, counts):
    subjects, grades = photos(counts)
    part_of = ann.split_subjects(subjects, grades, [1 / k] * k, seed=3)
    sizes = Counter(part_of.values())
    fold_sizes = [sizes.get(p, 0) for p in range(k)]
    assert max(fold_sizes) - min(fold_sizes) <= 1 and sum(fold_sizes) == sum(counts.values())
    per_grade = parts_per_grade(part_of, subjects, grades)
    for grade, count in counts.items():  # and within each grade too
        spread = [per_grade[(grade, p)] for p in range(k)]
        assert max(spread) - min(spread) <= 1


@pytest.mark.parametrize('count, expected', [(20, [14, 3, 3]), (3, [1, 1, 1]), (2, [1, 1, 0]), (1, [1, 0, 0]),
                                             (7, [5, 1, 1]), (0, [0, 0, 0])])
def test_split_sizes_give_every_part_a_subject_when_possible(count, expected):
    assert ann.split_sizes(count, (0.7, 0.15, 0.15)) == expected


def test_split_sizes_ties_go_to_the_part_furthest_below_its_share_then_the_lower_index():
    assert ann.split_sizes(1, (0.5, 0.5)) == [1, 0]  # nothing dealt yet: the lower index
    assert ann.split_sizes(1, (0.5, 0.5), dealt=[3, 2]) == [0, 1]  # part 1 is further below its share
    assert ann.split_sizes(2, (1 / 3,) * 3, dealt=[4, 3, 3]) == [0, 1, 1]
    assert ann.split_sizes(5, (0.9, 0.1)) == [4, 1]  # validation carving keeps one subject back
    assert ann.split_sizes(1, (0.9, 0.1)) == [1, 0]
    assert ann.split_sizes(4, (2, 1, 1)) == [2, 1, 1]  # ratios are normalised


def test_zero_ratio_parts_get_nobody_and_bad_ratios_are_refused():
    subjects, grades = photos({0: 5, 1: 5})
    part_of = ann.split_subjects(subjects, grades, (0.8, 0.0, 0.2), seed=0)
    assert 1 not in part_of.values()
    for ratios in [(), (-0.1, 1.1), (0, 0), (float('nan'), 1)]:
        with pytest.raises(ValueError, match='ratio'):
            ann.split_sizes(3, ratios)


def test_quick_start_split_matches_the_one_prepare_has_always_written():
    """120 synthetic subjects (20 per grade), 0.7 / 0.15 / 0.15, seed 42: every grade divides exactly."""
    subjects, grades = photos({g: 20 for g in range(6)}, per_subject=5)
    part_of = ann.split_subjects(subjects, grades, (0.7, 0.15, 0.15), seed=42)
    counts = parts_per_grade(part_of, subjects, grades)
    assert all([counts[(g, p)] for p in range(3)] == [14, 3, 3] for g in range(6))


# grades

@pytest.mark.parametrize('value, grade', [('3', 3), (' 0 ', 0), ('5.0', 5), (2, 2)])
def test_grades_are_integers_0_to_5(value, grade):
    assert ann.parse_grade(value) == grade


@pytest.mark.parametrize('value, problem', [('', 'empty'), ('HB III', 'not a number'), ('III', 'not a number'),
                                            ('6', 'outside 0-5'), ('-1', 'outside'), ('2.5', 'outside')])
def test_bad_grades_say_why(value, problem):
    with pytest.raises(ValueError, match=problem):
        ann.parse_grade(value)


def test_three_class_grades_and_the_column_error_names_file_rows_and_values():
    assert ann.parse_grade('2', num_classes=3) == 2
    with pytest.raises(ValueError, match='simplified scale'):
        ann.parse_grade('3', num_classes=3)
    values = pd.Series(['1', 'x', '7', '2'], index=[0, 1, 3, 4])  # a blank row 2 was dropped: numbers stay true
    with pytest.raises(UserError, match=r"^grades\.csv: grade must be an integer 0-5 .*row 3 \('x'\), row 5 \('7'\)$"):
        ann.parse_grades(values, 'grades.csv')
    assert ann.parse_grades(pd.Series(['1', '4.0']), 'g.csv').tolist() == [1, 4]


def test_grade_constants_and_names():
    assert ann.grade_names(6) == ['HB I', 'HB II', 'HB III', 'HB IV', 'HB V', 'HB VI']
    assert ann.grade_names(3) == list(ann.SIMPLIFIED_GRADES) and ann.grade_names(4)[3] == 'class 3'
    assert [ann.GRADE_6_TO_3[g] for g in ann.GRADE_3_TO_6] == [0, 1, 2]
    assert len(ann.HB_GRADES) == len(ann.HB_DESCRIPTIONS) == len(ann.GRADE_6_TO_3) == 6


# sides and splits

@pytest.mark.parametrize('value, grade, side, recognised', [
    ('Left', 2, 'left', True), ('r', 1, 'right', True), ('normal', 0, 'none', True), ('no', 0, 'none', True),
    ('n', 3, 'none', True), ('bilateral', 5, 'unknown', True), ('', 0, 'none', True), ('', 3, 'unknown', True),
    (None, None, 'unknown', True), ('unknown', 2, 'unknown', True), ('upper', 2, 'unknown', False)])
def test_sides_and_their_aliases(value, grade, side, recognised):
    assert ann.side_of(value, grade) == (side, recognised)
    assert ann.normalise_side(value, grade) == side
    assert side in ann.SIDES and set(ann.SIDE_CLASSES) < set(ann.SIDES)


@pytest.mark.parametrize('value, split', [('Training', 'train'), ('validation', 'val'), ('dev', 'val'),
                                          ('TEST', 'test'), ('all', None), ('', None), (None, None), ('*', None),
                                          ('holdout', 'holdout')])
def test_splits_and_their_aliases(value, split):
    assert ann.normalise_split(value) == split


def test_subjects_from_file_names():
    assert ann.subject_from_name('grade_2/P07_smile.jpg') == 'P07'
    assert ann.subject_from_name('_odd.jpg') is None
    pattern = ann.compile_subject_regex(r'^(patient\d+)')
    assert ann.subject_from_name('patient12-left-3.png', pattern) == 'patient12'
    with pytest.raises(UserError, match='not a valid regular expression'):
        ann.compile_subject_regex('([')


# tables

def test_read_table_strips_names_drops_blank_rows_and_keeps_row_numbers(tmp_path):
    path = tmp_path / 'a.csv'
    path.write_text(' Image_Path , GRADE\nx.jpg, 1\n\n,\ny.jpg,2\n')
    table = ann.read_table(path)
    assert list(table.columns) == ['image_path', 'grade'] and table['grade'].tolist() == ['1', '2']
    assert [ann.row_number(i) for i in table.index] == [2, 5]


@pytest.mark.parametrize('content, message', [(None, 'a.csv: annotation CSV not found'),
                                              ('', 'a.csv: annotation CSV is empty'),
                                              ('image_path,grade\n\n,\n', 'a.csv: annotation CSV has no rows'),
                                              ('a,b\n1,2,3,4\n"x', 'a.csv: annotation CSV is not a readable CSV')])
def test_unreadable_tables_are_one_line_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / 'a.csv'
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=message) as info:
        ann.read_table(path)
    assert '\n' not in str(info.value)


def test_missing_columns_name_the_file_and_the_columns(tmp_path):
    table = pd.DataFrame({'path': ['x'], 'grade': ['1']})
    with pytest.raises(UserError, match=r'^t\.csv: annotation CSV lacks the column\(s\) image_path, split '
                                        r'\(it has: path, grade\)$'):
        ann.require_columns(table, ['image_path', 'grade', 'split'], 't.csv')
    ann.require_columns(table, ['grade'], 't.csv')


def test_order_columns_puts_the_contract_first():
    table = pd.DataFrame(columns=['extra', 'split', 'eye_l_x', 'image_path', 'grade', 'side', 'subject'])
    assert list(ann.order_columns(table).columns) == ['image_path', 'grade', 'side', 'split', 'subject', 'eye_l_x',
                                                      'extra']
    assert ann.NEUTRAL_LANDMARK_COLUMNS[0] == 'neutral_eye_l_x' and len(ann.LANDMARK_COLUMNS) == 10


def test_annotation_csv_rows_aliases_and_skipped_bad_rows(tmp_path):
    landmarks = ','.join(str(v) for v in range(10))
    (tmp_path / 'a.csv').write_text(
        'image_path,grade,side,split,' + ','.join(ann.LANDMARK_COLUMNS) + '\n'
        f'grade_1/P1_a.jpg,1,L,Training,{landmarks}\n'
        f'grade_0/P2_a.jpg,0,,train,{",".join([""] * 10)}\n'
        '\n'
        f'grade_4/P3_a.jpg,HB V,bilateral,train,{landmarks}\n'
        f',2,left,train,{landmarks}\n'
        f'/abs/P4_b.jpg,5,right,validation,{landmarks}\n')
    records, skipped = ann.read_annotation_csv(tmp_path / 'a.csv', tmp_path / 'data', 'train')
    assert [(r.grade, r.side, r.subject) for r in records] == [(1, 'left', 'P1'), (0, 'none', 'P2')]
    assert records[0].path == str(tmp_path / 'data' / 'grade_1/P1_a.jpg')
    np.testing.assert_allclose(records[0].annotation, np.arange(10).reshape(5, 2))
    assert records[1].annotation is None
    assert skipped[0][1] == f"{tmp_path / 'a.csv'} row 5: grade 'HB V' is not a number"
    assert skipped[1][1] == f"{tmp_path / 'a.csv'} row 6: image_path is empty"
    (val,), _ = ann.read_annotation_csv(tmp_path / 'a.csv', tmp_path / 'data', 'val')
    assert val.path == '/abs/P4_b.jpg' and val.side == 'right'
    with pytest.raises(UserError, match=r'a\.csv: no rows with split "test" \(splits present: train \(4\), val'):
        ann.read_annotation_csv(tmp_path / 'a.csv', tmp_path / 'data', 'test')


# grade folders

def test_grade_folders_and_their_photos(tmp_path):
    for name in ('grade_0', 'Grade-3', 'grade 5', 'grade_7', 'grades', 'other'):
        (tmp_path / name).mkdir()
    for name in ('P1_a.JPG', 'P1_b.png', '.hidden.jpg', 'notes.txt', 'P2_a.webp'):
        (tmp_path / 'grade_0' / name).write_bytes(b'x')
    found = ann.grade_folders(tmp_path)
    assert [(g, f.name) for g, f in found] == [(3, 'Grade-3'), (5, 'grade 5'), (0, 'grade_0'), (None, 'grade_7')]
    assert [p.name for p in ann.image_files(tmp_path / 'grade_0')] == ['P1_a.JPG', 'P1_b.png', 'P2_a.webp']
    assert ann.grade_folders(tmp_path / 'absent') == []


def test_scan_grade_folders_reads_subjects_sides_and_lists_outside_grades(tmp_path):
    for folder, name in (('grade_0', 'P1_a.png'), ('grade_2', 'P2_a.png'), ('grade_9', 'P3_a.png')):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).write_bytes(b'x')
    records, skipped = ann.scan_grade_folders(tmp_path, verbose=False)
    assert [(r.grade, r.side, r.subject) for r in records] == [(0, 'none', 'P1'), (2, 'unknown', 'P2')]
    assert skipped == [(str(tmp_path / 'grade_9' / 'P3_a.png'), 'folder grade_9: grade outside 0-5')]
    with pytest.raises(UserError, match='no grade_0 .. grade_5 folders'):
        ann.scan_grade_folders(tmp_path / 'grade_0', verbose=False)


# CK+

def test_ck_keys_are_zero_padded():
    assert ann.ck_key('s5') == 'S005' and ann.ck_key('7') == '007' and ann.ck_key('S010') == 'S010'
    assert ann.ck_sequence_key('S5/1') == ('S005', '001') and ann.ck_sequence_key('S005_002') == ('S005', '002')
    assert ann.ck_sequence_key('S005') is None


def test_grade_mapping_sequences_win_over_subjects_and_bad_rows_are_listed(tmp_path):
    path = tmp_path / 'map.csv'
    path.write_text('subject,sequence,grade,side,split\nS5,,3,l,train\n,S5/2,1,,val\nS6,,x,,\n,,2,,\n')
    mapping = ann.read_grade_mapping(path)
    assert mapping.entry('S005', '001')['grade'] == 3 and mapping.entry('S005', '001')['side'] == 'left'
    assert mapping.entry('S005', '002')['grade'] == 1 and mapping.entry('S005', '002')['split'] == 'val'
    assert mapping.entry('S007', '001') is None and mapping.has_split
    assert [reason for _, reason in mapping.skipped] == [f"{path} row 4: grade 'x' is not a number",
                                                         f'{path} row 5: neither subject nor sequence given']
    (tmp_path / 'bad.csv').write_text('name,grade\nS5,1\n')
    with pytest.raises(UserError, match=r'bad\.csv: grade mapping CSV lacks the column\(s\) subject or sequence'):
        ann.read_grade_mapping(tmp_path / 'bad.csv')
    with pytest.raises(UserError, match='CK\\+ images carry no palsy grades'):
        ann.scan_ckplus(tmp_path, None)


# photos listed more than once

def test_repeated_photos_are_duplicates_or_conflicts():
    keys = ['a', 'b', 'a', 'c', 'b', 'a', 'c']
    repeats = ann.find_repeated_photos(keys, [1, 2, 1, 3, 4, 1, 3], [f'row {i + 2}' for i in range(7)],
                                       splits=['train', 'train', 'train', 'train', 'train', 'train', 'test'])
    assert repeats.dropped == {2: 0, 5: 0}  # a: same grade and split, read once (the first row wins)
    assert repeats.conflicts == [[1, 4], [3, 6]]  # b: two grades; c: two splits
    assert repeats.describe_conflict([1, 4]) == 'b: row 3 (grade 2), row 6 (grade 4)'
    assert repeats.describe_conflict([3, 6]) == 'c: row 5 (grade 3, train), row 8 (grade 3, test)'
    assert repeats.duplicate_note('x.csv') == ('note: x.csv: 2 duplicate row(s) dropped (a photo listed again with '
                                               'the same grade): row 4 (as row 2: a), row 7 (as row 2: a)')
    assert ann.find_repeated_photos(keys, [1, 2, 1, 3, 4, 1, 3], keys).conflicts == [[1, 4]]  # splits not compared
    assert ann.photo_key('./grade_1/../grade_1/x.jpg', '/d') == ann.photo_key('grade_1/x.jpg', '/d')


def test_annotation_csv_drops_duplicate_rows_once_and_skips_photos_with_two_grades(tmp_path, capsys):
    csv = tmp_path / 'a.csv'
    csv.write_text('image_path,grade,side,split\n'
                   'grade_1/P1_a.jpg,1,left,train\n'      # row 2
                   'grade_2/P2_a.jpg,2,left,train\n'      # row 3
                   './grade_1/P1_a.jpg,1,left,train\n'    # row 4: row 2 again
                   'grade_2/P2_a.jpg,3,left,train\n'      # row 5: row 3 with another grade
                   'grade_4/P4_a.jpg,4,right,train\n'     # row 6
                   'grade_4/P4_a.jpg,4,right,test\n'      # row 7: row 6 in another split
                   'grade_5/P5_a.jpg,5,left,val\n')
    records, skipped = ann.read_annotation_csv(csv, tmp_path, 'train')
    assert [Path(r.path).name for r in records] == ['P1_a.jpg']
    out = capsys.readouterr().out.splitlines()
    assert f'note: {csv}: 1 duplicate row(s) dropped (a photo listed again with the same grade): row 4 (as row 2: ' \
           f'./grade_1/P1_a.jpg)' in out
    warning = [line for line in out if line.startswith('warning:')]
    assert warning == [f'warning: {csv}: 2 photo(s) listed with different grades or splits: grade_2/P2_a.jpg: row 3 '
                       f'(grade 2), row 5 (grade 3); grade_4/P4_a.jpg: row 6 (grade 4, train), row 7 (grade 4, test); '
                       f'every row of them is left out (listed with the skipped images)']
    reasons = {reason for _, reason in skipped}
    assert reasons == {f'{csv}: listed with different grades, so neither is used: grade_2/P2_a.jpg: row 3 (grade 2), '
                       f'row 5 (grade 3)',
                       f'{csv}: listed with different splits, so neither is used: grade_4/P4_a.jpg: row 6 (grade 4, '
                       f'train), row 7 (grade 4, test)'}
    assert len(skipped) == 3  # rows 3, 5 and 6: every train row of both photos
    (val,), _ = ann.read_annotation_csv(csv, tmp_path, 'val')  # other splits are not touched
    assert val.grade == 5 and capsys.readouterr().out == ''  # the table's notes are said once


def test_backslash_paths_are_read_with_slashes_or_named_in_the_not_found_reason(tmp_path, capsys):
    (tmp_path / 'grade_3').mkdir()
    (tmp_path / 'grade_3' / 'P001_a.jpg').write_bytes(b'x')
    csv = tmp_path / 'win.csv'
    csv.write_text('image_path,grade,side,split\ngrade_3\\P001_a.jpg,3,left,train\ngrade_3\\P002_a.jpg,3,left,train\n')
    records, skipped = ann.read_annotation_csv(csv, tmp_path, 'train')
    assert [r.path for r in records] == [str(tmp_path / 'grade_3' / 'P001_a.jpg')] and records[0].subject == 'P001'
    assert capsys.readouterr().out.strip() == (f'note: {csv}: 1 image path(s) with backslashes (written on '
                                               f'Windows?) are read with / (first: grade_3\\P001_a.jpg -> '
                                               f'grade_3/P001_a.jpg)')
    assert skipped == [(str(tmp_path / 'grade_3\\P002_a.jpg'), f'{csv} row 3: file not found (the path has '
                                                              f'backslashes \\ and the file is not there with / '
                                                              f'either)')]
    paths, changed = ann.fix_backslash_paths(['grade_3\\P001_a.jpg', 'grade_3/P001_a.jpg'], tmp_path)
    assert paths == ['grade_3/P001_a.jpg', 'grade_3/P001_a.jpg'] and changed == [0]


# subjects

def test_patient_folders_inside_grade_folders_give_the_subject(tmp_path):
    for path in ('grade_2/P001/rest.jpg', 'grade_2/P001/smile.jpg', 'grade_2/P001/visit2/eyes.jpg',
                 'grade_2/P002/rest.jpg', 'grade_2/S9_a.jpg', 'grade_2/.git/x.jpg', 'grade_7/P003/rest.jpg'):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(b'x')
    records, skipped = ann.scan_grade_folders(tmp_path, verbose=False)
    found = [(Path(r.path).relative_to(tmp_path).as_posix(), r.subject, r.subject_source) for r in records]
    assert found == [('grade_2/P001/rest.jpg', 'P001', 'folder'), ('grade_2/P001/smile.jpg', 'P001', 'folder'),
                     ('grade_2/P001/visit2/eyes.jpg', 'P001', 'folder'), ('grade_2/P002/rest.jpg', 'P002', 'folder'),
                     ('grade_2/S9_a.jpg', 'S9', 'name')]
    assert skipped == [(str(tmp_path / 'grade_7/P003/rest.jpg'), 'folder grade_7: grade outside 0-5')]


def test_a_csv_folder_part_gives_the_subject_but_one_shared_folder_does_not(tmp_path):
    assert ann.subjects_of_paths(['P001/rest.jpg', 'P001/smile.jpg', 'P002/rest.jpg']) == (
        ['P001', 'P001', 'P002'], ['folder'] * 3)
    assert ann.subjects_of_paths(['grade_3/P001/rest.jpg', 'grade_3\\P002\\rest.jpg'])[0] == ['P001', 'P002']
    # grade and split folders and one folder holding every photo are places, not patients
    assert ann.subjects_of_paths(['images/S001_01.jpg', 'images/S002_01.jpg']) == (['S001', 'S002'], ['name'] * 2)
    assert ann.subjects_of_paths(['train/grade_1/S1_a.jpg', 'test/grade_2/S2_a.jpg', 'S3_a.jpg'])[0] == \
        ['S1', 'S2', 'S3']
    csv = tmp_path / 'rows.csv'
    csv.write_text('image_path,grade,side,split,subject\nP001/rest.jpg,1,left,train,\nP002/rest.jpg,2,left,train,\n'
                   'P003/rest.jpg,2,left,train,Ann\n')
    records, _ = ann.read_annotation_csv(csv, tmp_path, 'train')
    assert [(r.subject, r.subject_source) for r in records] == [('P001', 'folder'), ('P002', 'folder'),
                                                                ('Ann', 'column')]


@pytest.mark.parametrize('names, reason', [
    ([f'DSC{1000 + i:05d}.jpg' for i in range(12)], 'each of them is a subject of its own (12 subjects)'),
    ([f'{i:04d}.jpg' for i in range(4)], 'each of them is a subject of its own'),
    ([f'P10{i:05d}.JPG' for i in range(3)], 'camera-counter file names (P1000000, P1000001, P1000002, ...)'),
    ([f'IMG_{i:04d}.jpg' for i in range(5)], "their subjects are camera prefixes or dates (IMG)"),
    ([f'2024010{i % 3}_1234{i:02d}.jpg' for i in range(9)], 'camera prefixes or dates (20240100, 20240101'),
    ([f'patient_{i:02d}_rest.jpg' for i in range(10)], "subject 'patient' (from the file names) holds 10 of the 10"),
])
def test_subjects_from_camera_names_or_one_common_word_are_refused(names, reason):
    subjects, sources = ann.subjects_of_paths([f'grade_1/{n}' for n in names])
    with pytest.raises(UserError) as err:
        ann.check_subjects(subjects, names, sources, where='my.csv', fixes='a subject column')
    message = str(err.value)
    assert reason in message and message.startswith('my.csv: ') and '\n' not in message
    assert message.endswith('; give each photo its patient: a subject column')


@pytest.mark.parametrize('names, sources', [
    ([f'S{i:03d}_01.jpg' for i in range(36)], None),                       # the synthetic set, one photo each
    ([f'S{i // 5:03d}_{i % 5:02d}.jpg' for i in range(600)], None),        # the quick start
    ([f'patient{i}-rest.jpg' for i in range(12)], None),                     # one photo per named patient
    ([f'{i // 3:04d}_{i % 3}.jpg' for i in range(30)], None),               # numeric patient ids, three photos each
    ([f'DSC{1000 + i:05d}.jpg' for i in range(12)], ['column'] * 12),       # a subject column is the user's word
    ([f'IMG_{i:04d}.jpg' for i in range(12)], ['folder'] * 12),             # so is a patient folder
    ([f'patient_{i:02d}_rest.jpg' for i in range(9)], None),                 # too few photos to judge the spread
])
def test_subjects_that_look_right_pass(names, sources):
    subjects, derived = ann.subjects_of_paths(names)
    assert ann.subject_problem(subjects, names, sources or derived) is None
