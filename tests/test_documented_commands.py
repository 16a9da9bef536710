"""Every command line shown in the docs runs as written.

The ``python ...`` lines of the ```bash blocks of every documentation page run in a scratch folder laid out as after
``bash quick_start.sh``: synthetic faces in ./datasets/facial_palsy/FNP, the annotation CSV, a checkpoint in
./checkpoints/fnp, ./test_image.jpg, ./test_images/, micro-expression data in the original layout under ./datasets
and its weights in ./ourmodel_threedatasets_weights. For the pages on rest / expression pairs and clips also: a flow
checkpoint of synthetic photo pairs in ./checkpoints/fnp_flow (where ``quick_start.sh --profile flow_pairs`` puts
it), a rest photo beside every test photo (./test_image_rest.jpg, ./test_images/<name>_rest.jpg) with ./pairs.csv
naming the same pairs, and the reader's own films: the clips of one sitting in ./examination/
(``P001_brow_raise.mp4``, ``P001_eye_closure.mp4``, ``P001_smile.mp4``; synthetic, 24 frames), whose smile is also
./smile.mp4. The pages are README.md, README_zh-CN.md,
README_FACIAL_PALSY.md, README_CN.md, MIGRATION_SUMMARY.md (which carries the original usage examples verbatim) and
every page under docs/ (English first, in reading order, then Chinese); a command shown twice runs once, where it
first appears, so a page may use what an earlier page's command made (the ensemble of ./checkpoints/fnp_seed1 after
its training). Each command is parsed exactly as written; only the size of the work is cut (a tiny network, one
epoch, a few photos) by flags appended after it, which argparse lets win. A block whose first line is
``# needs: ...`` asks for data that cannot be made here (real CK+ frames) and is skipped.
"""
from __future__ import annotations

import csv as csv_module
import filecmp
import importlib
import py_compile
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from micro_expression_fixture import make_micro_expression_fixture

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL = ('README.md', 'README_zh-CN.md', 'README_FACIAL_PALSY.md', 'README_CN.md', 'MIGRATION_SUMMARY.md')
# the reading order of the guide's pages; pages not named here follow, sorted
READING_ORDER = ('get_started', 'own_data', 'data', 'train', 'evaluate_and_infer', 'beyond_the_grade',
                 'attention_maps', 'video', 'distributed', 'legacy', 'troubleshooting', 'reference')


def doc_pages() -> list[Path]:
    """Every documentation page: the top-level ones, then docs/en, docs/zh_CN and any other page under docs/."""
    docs = ROOT / 'docs'
    order = {name: rank for rank, name in enumerate(READING_ORDER)}

    def ordered(folder: Path) -> list[Path]:
        return sorted(folder.glob('*.md'), key=lambda p: (order.get(p.stem, len(order)), p.name))

    language_pages = [*ordered(docs / 'en'), *ordered(docs / 'zh_CN')]
    others = sorted(p for p in docs.rglob('*.md') if p not in language_pages)
    return [*(ROOT / name for name in TOP_LEVEL), *language_pages, *others]


DOCS = doc_pages()
TINY = ['--dim', '16', '--heads', '1', '--block_repeats', '1', '1', '1']
# flags appended to each script's documented command: the same command, less work
SHRINK = {
    'train_facial_palsy.py': [*TINY, '--epochs', '1', '--batch_size', '8', '--warmup_epochs', '0', '--device', 'cpu'],
    'main_HTNet.py': [*TINY, '--epochs', '1', '--batch_size', '16', '--device', 'cpu', '--no_plots'],
    'prepare_dataset.py': [],
    'evaluate_facial_palsy.py': ['--n_boot', '50', '--device', 'cpu'],
    'demo_inference.py': ['--device', 'cpu'],
    'visualize_attention.py': ['--device', 'cpu', '--dpi', '50'],
    'tests/micro_expression_fixture.py': [],
    'benchmarks/bench_model.py': ['--preset', 'palsy-small', '--batch_size', '2', '--steps', '1', '--warmup', '0',
                                  '--repeats', '1', '--device', 'cpu'],
}
SYNTHETIC_SHRINK = ['--num_subjects', '36', '--images_per_subject', '1', '--image_size', '128',
                    '--detection_check', '0', '--quiet']


def page_commands(path: Path) -> list[str]:
    """The ``python`` lines of the ```bash blocks of one page, continuation lines joined, in order (blocks whose
    first line is ``# needs: ...`` left out)."""
    commands = []
    for block in re.findall(r'```(?:bash|sh|shell)\n(.*?)```', path.read_text(), flags=re.S):
        lines = block.strip().splitlines()
        if lines and lines[0].lstrip().startswith('# needs:'):
            continue
        for line in re.sub(r'\\\n\s*', ' ', block).splitlines():
            command = line.split(' #')[0].strip()
            if command.startswith('python '):
                commands.append(command)
    return commands


def source_name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def documented_commands() -> list[tuple[str, str]]:
    """(source, command) for every documented ``python`` line, each command once, where it first appears."""
    found, seen = [], set()
    for path in DOCS:
        if not path.is_file():
            continue
        for command in page_commands(path):
            if command not in seen:
                seen.add(command)
                found.append((source_name(path), command))
    return found


COMMANDS = documented_commands()


def add_photo_pairs(faces: str, csv: str) -> None:
    """A tiny flow checkpoint in ./checkpoints/fnp_flow, trained on synthetic rest / expression pairs drawn into
    ``faces`` (``csv``: their annotation CSV), and a rest photo beside every test photo, named by the file-name rule
    of inference (``<name>_rest.<ext>``: ./test_image_rest.jpg, ./test_images/<name>_rest.jpg), as the quick start of
    pairs lays them out; ./pairs.csv names the same pairs (``image_path``, ``neutral_path``, relative to its folder).
    The rest photos are those of the pairs set's test split, so they show other people than the photos beside them;
    that changes the grades, not how the commands read a pair."""
    import prepare_dataset
    import train_facial_palsy

    prepare_dataset.main(['--dataset_type', 'synthetic', '--pairs', '--output_root', faces, *SYNTHETIC_SHRINK])
    prepare_dataset.main(['--dataset_type', 'FNP', '--data_root', faces, '--output_csv', csv, '--quiet'])
    train_facial_palsy.main(['--input_mode', 'flow', '--data_root', faces, '--train_csv', csv, '--val_csv', csv,
                             '--save_dir', './checkpoints/fnp_flow', '--log_dir', './logs/fnp_flow',
                             *SHRINK['train_facial_palsy.py']])
    with open(csv, newline='') as handle:
        rests = [Path(faces) / row['neutral_path'] for row in csv_module.DictReader(handle) if row['split'] == 'test']
    photos = sorted(Path('test_images').iterdir())
    listed = ['image_path,neutral_path']
    for photo, rest in zip(photos, rests):
        paired = photo.with_name(f'{photo.stem}_rest{rest.suffix}')
        shutil.copy(rest, paired)
        listed.append(f'{photo.as_posix()},{paired.as_posix()}')
        if filecmp.cmp(photo, 'test_image.jpg', shallow=False):
            shutil.copy(rest, 'test_image_rest.jpg')
    Path('pairs.csv').write_text('\n'.join(listed) + '\n')
    assert Path('test_image_rest.jpg').is_file()


def add_examination_clips(scratch: Path) -> None:
    """./examination/: one synthetic patient's three clips (brow raise, eye closure, smile; 128 pixels, 24 frames)
    named ``P001_<movement>.mp4``, and its smile as ./smile.mp4. Drawn in ``scratch``, as a reader films them."""
    import synthetic_video

    table = synthetic_video.generate_clips(scratch, num_subjects=1, clips_per_subject=3, image_size=128, seed=3,
                                           num_frames=24, progress=False)
    folder = Path('examination')
    folder.mkdir()
    for clip, movement in zip(table['clip_path'], table['expression']):
        shutil.copy(scratch / clip, folder / f'P001_{movement}.mp4')
    shutil.copy(folder / 'P001_smile.mp4', 'smile.mp4')


def _load_script(relative: str):
    folder = str((ROOT / relative).parent)
    if folder not in sys.path:
        sys.path.append(folder)
    return importlib.import_module(Path(relative).stem)


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    """A folder laid out as after quick_start.sh, with tiny data and tiny models."""
    import main_HTNet
    import prepare_dataset
    import train_facial_palsy

    work = tmp_path_factory.mktemp('documented')
    shutil.copy(ROOT / 'config_examples.yaml', work / 'config_examples.yaml')
    fixture = make_micro_expression_fixture(work)  # ./datasets/... and ./combined_3_class2_for_optical_flow.csv
    monkey = pytest.MonkeyPatch()
    monkey.chdir(work)
    try:
        faces, csv = './datasets/facial_palsy/FNP', './datasets/facial_palsy/fnp_annotation.csv'
        prepare_dataset.main(['--dataset_type', 'synthetic', '--output_root', faces, *SYNTHETIC_SHRINK])
        prepare_dataset.main(['--dataset_type', 'FNP', '--data_root', faces, '--output_csv', csv, '--quiet'])
        train_facial_palsy.main(['--data_root', faces, '--train_csv', csv, '--val_csv', csv, '--test_csv', csv,
                                 *SHRINK['train_facial_palsy.py']])
        main_HTNet.main(['--train', 'True', '--save_full_model', '--subjects', *fixture.subjects[:2],
                         *SHRINK['main_HTNet.py']])
        test_rows = [line.split(',')[0] for line in Path(csv).read_text().splitlines()[1:] if ',test,' in line]
        Path('test_images').mkdir()
        for relative in test_rows[:3]:
            shutil.copy(Path(faces) / relative, Path('test_images') / Path(relative).name)
        shutil.copy(Path(faces) / test_rows[0], 'test_image.jpg')
        add_photo_pairs('./datasets/facial_palsy/FNP_pairs', './datasets/facial_palsy/fnp_pairs_annotation.csv')
        add_examination_clips(tmp_path_factory.mktemp('filmed'))
        yield work
    finally:
        monkey.undo()


def test_the_docs_show_commands():
    sources = {source for source, _ in COMMANDS}
    assert {'MIGRATION_SUMMARY.md', 'docs/en/get_started.md', 'docs/en/own_data.md', 'docs/en/train.md'} <= sources
    assert any('train_facial_palsy.py' in command for _, command in COMMANDS)
    # rest / expression pairs and clips at inference are shown, and so run
    shown = {token for _, command in COMMANDS for token in shlex.split(command)}
    assert {'--rest', '--pairs_csv', '--video', '--video_dir'} <= shown
    # every page under docs/ (both languages) is read, however deep
    assert {ROOT / 'docs' / 'en' / 'own_data.md', ROOT / 'docs' / 'zh_CN' / 'own_data.md'} <= set(DOCS)


@pytest.mark.parametrize('source, command', COMMANDS, ids=[f'{s}:{c[7:60]}' for s, c in COMMANDS])
def test_documented_command_runs_as_written(source, command, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    tokens = shlex.split(command)
    if tokens[1:3] == ['-m', 'py_compile']:
        for name in tokens[3:]:
            py_compile.compile(str(ROOT / name), doraise=True)
        return
    script, argv = tokens[1], tokens[2:]
    assert script in SHRINK, f'{source}: a command of an unknown script: {command}'
    extra = list(SHRINK[script])
    if script == 'prepare_dataset.py':
        extra += SYNTHETIC_SHRINK if 'synthetic' in argv else []
        extra += ['--overwrite']
    if script in ('train_facial_palsy.py', 'main_HTNet.py') and '--resume' not in argv:
        extra += ['--overwrite']
    monkeypatch.setattr(sys, 'argv', [script, *argv, *extra])
    module = _load_script(script)
    result = module.main(argv + extra)
    assert result in (None, 0) or isinstance(result, (dict, list)), f'{command} returned {result!r}'
