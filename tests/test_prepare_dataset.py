"""prepare_dataset.py: subject-disjoint stratified splits, the synthetic and CK+ paths, 6 <-> 3 classes, refusing
to overwrite, and one-line errors for bad input."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import prepare_dataset as prep
import utils
import synthetic_faces as sf
from annotations import GRADE_6_TO_3
from utils import UserError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def faces(tmp_path_factory) -> Path:
    """18 synthetic subjects (3 per grade) x 2 small photos, drawn once for the module."""
    root = tmp_path_factory.mktemp('faces') / 'FNP'
    assert prep.main(['--dataset_type', 'synthetic', '--output_root', str(root), '--num_subjects', '18',
                      '--images_per_subject', '2', '--image_size', '64', '--detection_check', '0', '--quiet']) == 0
    return root


def fnp(root: Path, csv: Path, *extra: str) -> pd.DataFrame:
    prep.main(['--dataset_type', 'FNP', '--data_root', str(root), '--output_csv', str(csv), '--quiet', *extra])
    return pd.read_csv(csv)


def grade_table(subjects_per_grade: int, images: int = 3) -> pd.DataFrame:
    rows = [{'image_path': f'grade_{g}/P{g}x{s}_{i}.jpg', 'grade': g, 'subject': f'P{g}x{s}'}
            for g in range(6) for s in range(subjects_per_grade) for i in range(images)]
    return pd.DataFrame(rows)


def test_seed_commands_give_a_subject_disjoint_stratified_csv(faces, tmp_path):
    table = fnp(faces, tmp_path / 'fnp_annotation.csv', '--split_ratio', '0.7', '0.15', '0.15')
    assert list(table.columns[:5]) == ['image_path', 'grade', 'side', 'split', 'subject']
    assert set(sf.LANDMARK_COLUMNS) <= set(table.columns)  # merged from the generator's annotation.csv
    assert len(table) == 36 and table['subject'].nunique() == 18
    assert table.groupby('subject')['split'].nunique().max() == 1
    for name in prep.SPLITS:  # 3 subjects per grade -> one in each split
        assert sorted(table.loc[table.split == name, 'grade'].unique()) == [0, 1, 2, 3, 4, 5]
    truth = pd.read_csv(faces / 'annotation.csv').set_index('image_path')
    assert (table.set_index('image_path')['side'] == truth.loc[table['image_path'], 'side']).all()
    assert all((faces / p).is_file() for p in table['image_path'])


def test_split_follows_the_ratios_per_grade_and_the_seed():
    table = grade_table(subjects_per_grade=20)
    splits = prep.assign_splits(table, (0.7, 0.15, 0.15), seed=1)
    per_grade = table.assign(split=splits).groupby(['grade', 'split'])['subject'].nunique().unstack()
    assert (per_grade['train'] == 14).all() and (per_grade['val'] == 3).all() and (per_grade['test'] == 3).all()
    assert table.assign(split=splits).groupby('subject')['split'].nunique().max() == 1
    assert splits.equals(prep.assign_splits(table, (0.7, 0.15, 0.15), seed=1))
    assert not splits.equals(prep.assign_splits(table, (0.7, 0.15, 0.15), seed=2))


def test_mixed_grade_subject_is_stratified_by_its_most_frequent_grade(capsys):
    table = pd.DataFrame({'subject': ['A', 'A', 'A', 'B', 'B'], 'grade': [2, 2, 3, 1, 4],
                          'image_path': list('abcde')})
    splits = prep.assign_splits(table, (0.7, 0.15, 0.15), seed=0)
    assert 'most frequent grade' in capsys.readouterr().out
    assert splits.groupby(table['subject']).nunique().max() == 1


def test_refuses_to_overwrite_a_different_csv(faces, tmp_path):
    csv = tmp_path / 'out.csv'
    first = fnp(faces, csv, '--seed', '1')
    fnp(faces, csv, '--seed', '1')  # same content: left as it is
    with pytest.raises(UserError, match='--overwrite'):
        fnp(faces, csv, '--seed', '2')
    pd.testing.assert_frame_equal(pd.read_csv(csv), first)
    second = fnp(faces, csv, '--seed', '2', '--overwrite')
    assert not second['split'].equals(first['split'])


def test_convert_6_to_3_and_lossy_3_to_6(tmp_path, capsys):
    six = tmp_path / 'six.csv'
    pd.DataFrame({'image_path': [f'{g}.jpg' for g in range(6)], 'grade': range(6), 'side': 'left',
                  'split': 'train'}).to_csv(six, index=False)
    prep.main(['--convert_classes', '6to3', '--input_csv', str(six), '--output_csv', str(tmp_path / 'three.csv')])
    three = pd.read_csv(tmp_path / 'three.csv')
    assert three['grade_3'].tolist() == list(GRADE_6_TO_3) == [0, 1, 1, 2, 2, 2]
    assert three['grade'].tolist() == list(range(6))  # the House-Brackmann grade stays readable
    simple = tmp_path / 'simple.csv'
    pd.DataFrame({'image_path': ['a.jpg', 'b.jpg', 'c.jpg'], 'grade': [0, 1, 2]}).to_csv(simple, index=False)
    prep.main(['--convert_classes', '3to6', '--input_csv', str(simple), '--output_csv', str(tmp_path / 'back.csv')])
    back = pd.read_csv(tmp_path / 'back.csv')
    assert back['grade'].tolist() == [0, 1, 3] and back['grade_3'].tolist() == [0, 1, 2]
    assert 'lossy' in capsys.readouterr().out
    with pytest.raises(UserError, match='simplified scale'):
        prep.main(['--convert_classes', '3to6', '--input_csv', str(six), '--output_csv', str(tmp_path / 'x.csv')])
    help_text = prep.get_args_parser().format_help()
    assert 'IV-VI' in help_text and 'lossy' in help_text


def write_ckplus(root: Path) -> None:
    """Two subjects, three sequences of three grey frames each, in the CK+ release layout."""
    for subject, sequences in (('S005', ['001']), ('S010', ['001', '002'])):
        for sequence in sequences:
            for frame in range(1, 4):
                path = root / 'cohn-kanade-images' / subject / sequence / f'{subject}_{sequence}_{frame:08d}.png'
                path.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(path), np.full((24, 32), 40 * frame, dtype=np.uint8))


def test_ckplus_copies_peak_frames_and_writes_neutral_paths(tmp_path):
    write_ckplus(tmp_path / 'CK+')
    before = {p: p.read_bytes() for p in (tmp_path / 'CK+').rglob('*.png')}
    mapping = tmp_path / 'grades.csv'
    mapping.write_text('subject,sequence,grade,side\nS005,,3,left\nS010,,0,none\n,S010/002,5,right\n')
    out = tmp_path / 'graded'
    prep.main(['--dataset_type', 'CK+', '--data_root', str(tmp_path / 'CK+'), '--grade_mapping', str(mapping),
               '--output_root', str(out), '--quiet'])
    assert {p.relative_to(out).as_posix() for p in out.glob('grade_*/*.png')} == {
        'grade_3/S005_001_00000003.png', 'grade_0/S010_001_00000003.png', 'grade_5/S010_002_00000003.png'}
    assert (out / 'neutral' / 'S010_002_00000001.png').read_bytes() == before[
        tmp_path / 'CK+' / 'cohn-kanade-images' / 'S010' / '002' / 'S010_002_00000001.png']
    assert {p: p.read_bytes() for p in (tmp_path / 'CK+').rglob('*.png')} == before  # originals untouched
    annotation = pd.read_csv(out / 'annotation.csv')
    assert set(annotation['side']) == {'left', 'none', 'right'}

    csv = tmp_path / 'ck.csv'
    prep.main(['--dataset_type', 'CK+', '--data_root', str(tmp_path / 'CK+'), '--grade_mapping', str(mapping),
               '--output_csv', str(csv), '--quiet'])
    table = pd.read_csv(csv).set_index('image_path')
    row = table.loc['cohn-kanade-images/S010/002/S010_002_00000003.png']
    assert row['neutral_path'] == 'cohn-kanade-images/S010/002/S010_002_00000001.png'
    assert row['grade'] == 5 and row['subject'] == 'S010' and row['split'] in prep.SPLITS
    assert table.groupby('subject')['split'].nunique().max() == 1


def test_ckplus_without_a_mapping_is_a_clear_error(tmp_path):
    write_ckplus(tmp_path / 'CK+')
    with pytest.raises(UserError, match='--grade_mapping'):
        prep.main(['--dataset_type', 'CK+', '--data_root', str(tmp_path / 'CK+'), '--output_csv',
                   str(tmp_path / 'ck.csv')])


def test_synthetic_refuses_a_foreign_non_empty_folder(tmp_path, capsys):
    folder = tmp_path / 'mine'
    folder.mkdir()
    (folder / 'thesis.txt').write_text('keep me')
    args = ['--dataset_type', 'synthetic', '--output_root', str(folder), '--num_subjects', '2',
            '--images_per_subject', '1', '--image_size', '64', '--detection_check', '0', '--quiet']
    with pytest.raises(UserError, match='not empty'):
        prep.main(args)
    prep.main(args + ['--overwrite'])
    assert (folder / 'thesis.txt').read_text() == 'keep me' and sf.is_synthetic_dataset(folder)
    capsys.readouterr()
    prep.main(args)  # the same set again: nothing to redraw
    assert 'nothing to do' in capsys.readouterr().out
    prep.main(args[:-5] + ['--seed', '9', '--detection_check', '0', '--quiet'])  # another set replaces ours
    assert 'replacing' in capsys.readouterr().out
    assert sf.read_manifest(folder)['seed'] == 9


def test_missing_and_corrupt_images_are_left_out_and_listed(tmp_path):
    root = tmp_path / 'data'
    (root / 'grade_1').mkdir(parents=True)
    cv2.imwrite(str(root / 'grade_1' / 'p1_a.png'), np.zeros((8, 8, 3), np.uint8))
    (root / 'grade_1' / 'p2_a.jpg').write_bytes(b'not a jpeg')
    csv = tmp_path / 'in.csv'
    pd.DataFrame({'image_path': ['grade_1/p1_a.png', 'grade_1/p2_a.jpg', 'grade_1/p3_gone.jpg'],
                  'grade': [1, 1, 1]}).to_csv(csv, index=False)
    out = tmp_path / 'out.csv'
    prep.main(['--dataset_type', 'FNP', '--input_csv', str(csv), '--data_root', str(root), '--output_csv', str(out),
               '--quiet'])
    assert pd.read_csv(out)['image_path'].tolist() == ['grade_1/p1_a.png']
    skipped = pd.read_csv(tmp_path / 'out_skipped.csv')
    assert skipped['path'].tolist() == ['grade_1/p2_a.jpg', 'grade_1/p3_gone.jpg']
    assert skipped['reason'].tolist() == ['not a readable image (unknown format or corrupt data)', 'file not found']


def test_subject_regex_and_side_defaults(tmp_path):
    root = tmp_path / 'data'
    for grade, name in ((0, 'patient1-rest.png'), (0, 'patient1-smile.png'), (2, 'patient2-rest.png'),
                        (2, 'odd.png')):
        (root / f'grade_{grade}').mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / f'grade_{grade}' / name), np.zeros((8, 8, 3), np.uint8))
    table = fnp(root, tmp_path / 'out.csv', '--subject_regex', r'^(patient\d+)')
    subjects = dict(zip(table['image_path'], table['subject']))
    assert subjects['grade_0/patient1-smile.png'] == 'patient1' and subjects['grade_2/odd.png'] == 'odd'
    assert dict(zip(table['grade'], table['side'])) == {0: 'none', 2: 'unknown'}


@pytest.mark.parametrize('make, args, message', [
    (lambda d: None, ['--data_root', '{d}/absent'], 'folder not found'),
    (lambda d: (d / 'photos').mkdir(), ['--data_root', '{d}/photos'], 'no grade_0'),
    (lambda d: (d / 'g' / 'grade_7').mkdir(parents=True), ['--data_root', '{d}/g'], 'outside House-Brackmann'),
    (lambda d: (d / 'g' / 'grade_2').mkdir(parents=True), ['--data_root', '{d}/g'], 'hold no images'),
    (lambda d: (d / 'a.csv').write_text('path,grade\nx.jpg,1\n'), ['--input_csv', '{d}/a.csv'], 'image_path'),
    (lambda d: (d / 'a.csv').write_text('image_path,grade\nx.jpg,7\n'), ['--input_csv', '{d}/a.csv'],
     r"row 2 \('7'\)"),
    (lambda d: (d / 'a.csv').write_text(''), ['--input_csv', '{d}/a.csv'], 'empty'),
    (lambda d: None, ['--data_root', '{d}', '--split_ratio', '0.7', '0.2', '0.2'], 'sum to 1.1'),
    (lambda d: None, ['--data_root', '{d}', '--subject_regex', '(['], 'not a valid regular expression'),
])
def test_bad_input_is_one_clear_error(tmp_path, make, args, message):
    make(tmp_path)
    argv = ['--dataset_type', 'FNP', '--output_csv', str(tmp_path / 'out.csv')]
    argv += [a.format(d=tmp_path) for a in args]
    with pytest.raises(UserError, match=message):
        prep.main(argv)
    assert not (tmp_path / 'out.csv').exists()


def test_command_line_error_is_one_line_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, 'prepare_dataset.py', '--dataset_type', 'FNP', '--data_root',
                             str(tmp_path / 'absent'), '--output_csv', str(tmp_path / 'out.csv')],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f'error: --data_root {tmp_path / "absent"}: folder not found']


def test_merge_keeps_splits_makes_paths_absolute_and_subjects_distinct(tmp_path):
    from prepare_dataset import main
    roots = []
    for name in ('fnp', 'ck'):
        root = tmp_path / name
        (root / 'grade_1').mkdir(parents=True)
        (root / 'grade_1' / 'S005_1.jpg').write_bytes(b'x')
        (root / 'grade_1' / 'S006_1.jpg').write_bytes(b'x')
        (root / f'{name}.csv').write_text('image_path,grade,side,split,subject\n'
                                          'grade_1/S005_1.jpg,1,left,train,S005\n'
                                          'grade_1/S006_1.jpg,1,right,test,S006\n')
        roots.append(root)
    out = tmp_path / 'combined.csv'
    assert main(['--dataset_type', 'merge', '--input_csv', str(roots[0] / 'fnp.csv'), str(roots[1] / 'ck.csv'),
                 '--data_root', str(roots[0]), str(roots[1]), '--output_csv', str(out)]) == 0
    table = pd.read_csv(out)
    assert len(table) == 4 and table['subject'].nunique() == 4
    assert set(table['subject']) == {'fnp:S005', 'fnp:S006', 'ck:S005', 'ck:S006'}
    assert list(table['split']) == ['train', 'test', 'train', 'test']
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in table['image_path'])
    with pytest.raises(UserError, match='one folder per --input_csv'):
        main(['--dataset_type', 'merge', '--input_csv', str(roots[0] / 'fnp.csv'), str(roots[1] / 'ck.csv'),
              '--data_root', str(roots[0]), '--output_csv', str(tmp_path / 'x.csv')])
    with pytest.raises(UserError, match='takes one path'):
        main(['--dataset_type', 'FNP', '--data_root', str(roots[0]), str(roots[1]), '--output_csv', str(out)])


def test_pairs_are_part_of_the_settings_and_their_columns_reach_the_csv(tmp_path, capsys):
    root = tmp_path / 'pairs'
    args = ['--dataset_type', 'synthetic', '--output_root', str(root), '--num_subjects', '6',
            '--images_per_subject', '1', '--image_size', '64', '--detection_check', '0', '--quiet']
    prep.main(args + ['--pairs'])
    assert sf.read_manifest(root)['pairs'] is True
    capsys.readouterr()
    prep.main(args + ['--pairs'])
    assert 'nothing to do' in capsys.readouterr().out
    prep.main(args)  # the same subjects without pairs is another set: drawn again, rest photos removed
    assert 'replacing' in capsys.readouterr().out
    assert 'pairs' not in sf.read_manifest(root) and not list(root.glob('rest/grade_*/*.jpg'))
    prep.main(args)
    assert 'nothing to do' in capsys.readouterr().out
    prep.main(args + ['--pairs'])
    assert 'replacing' in capsys.readouterr().out

    table = fnp(root, tmp_path / 'pairs.csv')
    generated = pd.read_csv(root / 'annotation.csv').set_index('image_path')
    assert list(table.columns[:6]) == ['image_path', 'grade', 'side', 'split', 'subject', 'neutral_path']
    for column in ('neutral_path', *sf.NEUTRAL_LANDMARK_COLUMNS):
        assert column in table.columns
        assert table[column].tolist() == generated.loc[table['image_path'], column].tolist()


def test_face_family_is_recorded_and_part_of_the_settings(tmp_path, capsys):
    root = tmp_path / 'family'
    args = ['--dataset_type', 'synthetic', '--output_root', str(root), '--num_subjects', '6',
            '--images_per_subject', '1', '--image_size', '64', '--detection_check', '0', '--quiet']
    prep.main(args + ['--family', 'b'])
    assert sf.read_manifest(root)['family'] == 'b'
    assert pd.read_csv(root / 'annotation.csv')['subject'].str.startswith('synb').all()
    assert '--family b' in (root / 'README.md').read_text()
    capsys.readouterr()
    prep.main(args + ['--family', 'b'])
    assert 'nothing to do' in capsys.readouterr().out
    prep.main(args)  # family a is another set: drawn again
    out = capsys.readouterr().out
    assert 'replacing a previous synthetic set (family b' in out
    assert sf.read_manifest(root)['family'] == 'a'
    assert pd.read_csv(root / 'annotation.csv')['subject'].str.fullmatch(r'S\d{3}').all()
    assert not list(root.glob('grade_*/synb*'))  # family b's photos removed
    with pytest.raises(SystemExit):
        prep.main(args + ['--family', 'c'])
    assert "--family" in capsys.readouterr().err


def test_pairs_refuse_resting_expressions_before_touching_the_folder(tmp_path):
    root = tmp_path / 'kept'
    prep.main(['--dataset_type', 'synthetic', '--output_root', str(root), '--num_subjects', '2',
               '--images_per_subject', '1', '--image_size', '64', '--detection_check', '0', '--quiet'])
    before = sorted(p.name for p in root.rglob('*.jpg'))
    with pytest.raises(UserError, match='--pairs needs --expressions protocol'):
        prep.main(['--dataset_type', 'synthetic', '--output_root', str(root), '--num_subjects', '2',
                   '--images_per_subject', '1', '--image_size', '64', '--pairs', '--expressions', 'rest',
                   '--detection_check', '0', '--quiet'])
    assert sorted(p.name for p in root.rglob('*.jpg')) == before


# bad data never passes silently

def small_photos(root: Path, paths: list[str]) -> Path:
    for rel in paths:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), np.full((8, 8, 3), 90, np.uint8))
    return root


def prepare_csv(tmp_path: Path, root: Path, text: str, *extra: str) -> tuple[Path, Path]:
    source, out = tmp_path / 'in.csv', tmp_path / 'out.csv'
    source.write_text(text)
    prep.main(['--dataset_type', 'FNP', '--input_csv', str(source), '--data_root', str(root), '--output_csv',
               str(out), '--quiet', *extra])
    return source, out


def test_duplicate_rows_are_dropped_once_and_named(tmp_path, capsys):
    root = small_photos(tmp_path / 'data', [f'grade_{g}/P{g}{k}_a.png' for g in (1, 2) for k in range(3)])
    rows = ''.join(f'grade_{g}/P{g}{k}_a.png,{g}\n' for g in (1, 2) for k in range(3))
    source, out = prepare_csv(tmp_path, root, 'image_path,grade\n' + rows + 'grade_1/P10_a.png,1\n'
                              './grade_2/P21_a.png,2\n')
    assert (f'note: {source}: 2 duplicate row(s) dropped (a photo listed again with the same grade): row 8 (as '
            f'row 2: grade_1/P10_a.png), row 9 (as row 6: ./grade_2/P21_a.png)') in capsys.readouterr().out
    table = pd.read_csv(out)
    assert sorted(table['image_path']) == sorted(f'grade_{g}/P{g}{k}_a.png' for g in (1, 2) for k in range(3))


def test_a_photo_with_two_grades_is_refused_naming_both_rows(tmp_path):
    root = small_photos(tmp_path / 'data', ['grade_1/P1_a.png', 'grade_2/P2_a.png'])
    with pytest.raises(UserError) as err:
        prepare_csv(tmp_path, root, 'image_path,grade\ngrade_1/P1_a.png,1\ngrade_2/P2_a.png,2\ngrade_1/P1_a.png,3\n')
    assert str(err.value) == (f'{tmp_path / "in.csv"}: 1 photo(s) listed with different grades or splits: '
                              f'grade_1/P1_a.png: row 2 (grade 1), row 4 (grade 3); keep one row per photo')
    assert not (tmp_path / 'out.csv').exists()


def test_merge_drops_duplicates_and_refuses_a_photo_in_two_splits(tmp_path, capsys):
    root = small_photos(tmp_path / 'fnp', ['grade_1/S1_a.png', 'grade_1/S2_a.png'])
    first, second, out = tmp_path / 'a.csv', tmp_path / 'b.csv', tmp_path / 'merged.csv'
    first.write_text('image_path,grade,split,subject\ngrade_1/S1_a.png,1,train,S1\ngrade_1/S2_a.png,1,test,S2\n')
    second.write_text('image_path,grade,split,subject\ngrade_1/S1_a.png,1,train,S1\n')
    merge = ['--dataset_type', 'merge', '--input_csv', str(first), str(second), '--data_root', str(root), str(root),
             '--output_csv', str(out)]
    prep.main(merge)
    assert (f'note: the merged CSVs: 1 duplicate row(s) dropped (a photo listed again with the same grade): {second} '
            f'row 2 (as {first} row 2: {root.resolve() / "grade_1/S1_a.png"})') in capsys.readouterr().out
    assert len(pd.read_csv(out)) == 2
    second.write_text('image_path,grade,split,subject\ngrade_1/S2_a.png,1,train,S2\n')
    with pytest.raises(UserError, match=rf'photo\(s\) listed with different grades or splits: .*S2_a.png: '
                                        rf'{first} row 3 \(grade 1, test\), {second} row 2 \(grade 1, train\)'):
        prep.main(merge + ['--overwrite'])


def test_truncated_jpegs_are_decoded_and_left_out(tmp_path):
    root = small_photos(tmp_path / 'data', ['grade_1/P1_a.jpg', 'grade_1/P2_a.jpg'])
    whole = (root / 'grade_1' / 'P2_a.jpg').read_bytes()
    (root / 'grade_1' / 'P2_a.jpg').write_bytes(whole[:len(whole) - 40])  # the header still reads
    table = fnp(root, tmp_path / 'out.csv')
    assert table['image_path'].tolist() == ['grade_1/P1_a.jpg']
    skipped = pd.read_csv(tmp_path / 'out_skipped.csv')
    assert skipped.values.tolist() == [['grade_1/P2_a.jpg', 'truncated JPEG (the file ends before the image data '
                                                            'does)']]


def test_backslash_paths_are_read_with_slashes_and_hinted_when_missing(tmp_path, capsys):
    root = small_photos(tmp_path / 'data', ['grade_3/P1_a.png', 'grade_3/P1_b.png'])
    _, out = prepare_csv(tmp_path, root, 'image_path,grade\ngrade_3\\P1_a.png,3\ngrade_3\\P1_b.png,3\n'
                                         'grade_3\\P9_a.png,3\n')
    assert pd.read_csv(out)['image_path'].tolist() == ['grade_3/P1_a.png', 'grade_3/P1_b.png']
    skipped = pd.read_csv(tmp_path / 'out_skipped.csv')
    assert skipped.values.tolist() == [['grade_3\\P9_a.png', 'file not found (the path has backslashes \\ and the '
                                                             'file is not there with / either)']]


def test_backslash_note_is_one_line_for_the_table(tmp_path, capsys):
    root = small_photos(tmp_path / 'data', ['grade_3/P1_a.png', 'grade_3/P1_b.png'])
    source, _ = prepare_csv(tmp_path, root, 'image_path,grade\ngrade_3\\P1_a.png,3\ngrade_3\\P1_b.png,3\n')
    notes = [line for line in capsys.readouterr().out.splitlines() if 'backslashes' in line]
    assert notes == [f'note: {source}: 2 image path(s) with backslashes (written on Windows?) are read with / '
                     f'(first: grade_3\\P1_a.png -> grade_3/P1_a.png)']


def test_patient_folders_give_the_subject_in_grade_folders(tmp_path):
    paths = [f'grade_{g}/P{g}{k}/{view}.png' for g in (1, 4) for k in range(3) for view in ('rest', 'smile')]
    table = fnp(small_photos(tmp_path / 'data', paths), tmp_path / 'out.csv')
    assert sorted(table['image_path']) == sorted(paths)
    assert dict(zip(table['image_path'], table['subject']))['grade_4/P42/smile.png'] == 'P42'
    assert table['subject'].nunique() == 6 and table.groupby('subject')['split'].nunique().max() == 1
    assert '_patient_folder' not in table.columns


def test_a_csv_of_patient_folders_takes_the_subject_from_the_folder(tmp_path):
    paths = [f'P{k:03d}/{view}.png' for k in range(6) for view in ('rest', 'smile', 'eyes')]
    root = small_photos(tmp_path / 'data', paths)
    rows = ''.join(f'{p},{int(p[1:4]) % 3}\n' for p in paths)
    _, out = prepare_csv(tmp_path, root, 'image_path,grade\n' + rows)
    table = pd.read_csv(out)
    assert dict(zip(table['image_path'], table['subject'])) == {p: p[:4] for p in paths}
    assert table.groupby('subject')['split'].nunique().max() == 1


def test_camera_names_stop_preparation_until_the_user_says_one_photo_per_subject(tmp_path):
    paths = [f'grade_{k % 6}/DSC{1000 + k:05d}.JPG' for k in range(12)]
    root = small_photos(tmp_path / 'data', paths)
    with pytest.raises(UserError) as err:
        fnp(root, tmp_path / 'out.csv')
    message = str(err.value)
    assert message.startswith(f'{root}: 12 of 12 photos have camera-counter file names (DSC01000, DSC01006, '
                              f'DSC01001, ...) and each of them is a subject of its own (12 subjects), so one '
                              f'patient\'s photos can land in train and test alike; give each photo its patient: ')
    assert message.endswith(prep.SUBJECT_FIXES) and '\n' not in message
    assert '--one_photo_per_subject' in message and '--subject_regex' in message and 'subject column' in message
    assert not (tmp_path / 'out.csv').exists()
    table = fnp(root, tmp_path / 'out.csv', '--one_photo_per_subject')
    assert sorted(table['subject']) == sorted(Path(p).stem for p in paths)


def test_one_subject_holding_most_photos_stops_preparation(tmp_path):
    paths = [f'grade_{k % 6}/patient_{k:02d}_rest.png' for k in range(12)]
    root = small_photos(tmp_path / 'data', paths)
    with pytest.raises(UserError, match=r"subject 'patient' \(from the file names\) holds 12 of the 12 photos, so "
                                        r"the split would not be by patient; give each photo its patient: a subject "
                                        r"column in --input_csv, --subject_regex"):
        fnp(root, tmp_path / 'out.csv')
    table = fnp(root, tmp_path / 'out.csv', '--subject_regex', r'^patient_(\d+)')
    assert table['subject'].nunique() == 12


def test_an_explicit_subject_regex_wins_over_folders(tmp_path):
    paths = [f'session{s}/P{k}_{view}.png' for s in (1, 2) for k in range(4) for view in ('rest', 'smile')]
    root = small_photos(tmp_path / 'data', paths)
    rows = ''.join(f'{p},{int(p.split("/P")[1][0]) % 2}\n' for p in paths)
    _, out = prepare_csv(tmp_path, root, 'image_path,grade\n' + rows, '--subject_regex', r'^(P\d+)')
    assert sorted(pd.read_csv(out)['subject'].unique()) == ['P0', 'P1', 'P2', 'P3']


@pytest.mark.parametrize('flags, message', [
    (['--split_ratio', 'nan', '0.15', '0.15'], '--split_ratio nan 0.15 0.15: ratios must be >= 0 and train > 0'),
    (['--output_csv', '{blocker}/out.csv'], 'cannot create the folder (a file is in the way)'),
])
def test_bad_ratios_and_unwritable_outputs_stop_before_any_work(tmp_path, capsys, flags, message):
    blocker = tmp_path / 'blocker'
    blocker.write_text('a file, not a folder')
    argv = ['--dataset_type', 'FNP', '--data_root', str(tmp_path / 'nowhere'), '--output_csv', str(tmp_path / 'a.csv')]
    argv += [flag.replace('{blocker}', str(blocker)) for flag in flags]
    with pytest.raises(SystemExit) as exit_info:
        utils.run_cli(prep.main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count('\n') == 0
    assert blocker.read_text() == 'a file, not a folder'
