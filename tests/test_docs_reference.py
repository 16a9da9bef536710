"""The docs agree with the code: the generated reference is current, every flag the docs mention exists, every default a
table states is the parser's, every parameter count a page states is Model.py's, every relative link and anchor
resolves, the English and Chinese pages cover the same pages and commands, and --help says each default once."""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pytest
import torch

import utils
from Model import HTNet, count_parameters

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'scripts'))
sys.path.insert(0, str(ROOT / 'tests'))

import docs_reference  # noqa: E402
from test_documented_commands import DOCS, page_commands  # noqa: E402

PAGES = [path for path in DOCS if path.is_file()]
EN, ZH = ROOT / 'docs' / 'en', ROOT / 'docs' / 'zh_CN'
# pages that the guides link while their own text is written apart from these pages; checked once they exist
LINKED_AHEAD = {EN / 'video.md', ZH / 'video.md', EN / 'distributed.md', ZH / 'distributed.md'}
# flags of other programs that the docs may name (torchrun, pytest, pip)
OTHER_PROGRAMS_FLAGS = {
    '--nproc_per_node', '--nproc-per-node', '--nnodes', '--node_rank', '--node-rank', '--master_addr',
    '--master-addr', '--master_port', '--master-port', '--standalone', '--rdzv_backend', '--rdzv-backend',
    '--rdzv_endpoint', '--rdzv-endpoint', '--rdzv_id', '--rdzv-id', '--max_restarts', '--max-restarts',
    '--maxfail', '--durations', '--collect-only', '--lf', '--upgrade', '--index-url', '--extra-index-url',
    '--no-cache-dir', '--user', '--version',
}
FLAG = re.compile(r'(?<![\w-])--[A-Za-z][A-Za-z0-9_-]*')


# what the code says

def script_files() -> list[Path]:
    return sorted([*ROOT.glob('*.py'), *(ROOT / 'benchmarks').glob('*.py'), *(ROOT / 'scripts').glob('*.py'),
                   ROOT / 'tests' / 'micro_expression_fixture.py'])


def parsers() -> dict[str, argparse.ArgumentParser]:
    """Every script's parser that ``get_args_parser()`` builds, by path relative to the repository."""
    found = {}
    for path in script_files():
        if re.search(r'^def get_args_parser\(', path.read_text(), flags=re.M):
            relative = str(path.relative_to(ROOT))
            found[relative] = docs_reference.load_script(relative).get_args_parser()
    return found


PARSERS = parsers()


def known_flags() -> set[str]:
    flags = {option for parser in PARSERS.values() for action in parser._actions for option in action.option_strings}
    for path in script_files():  # parsers built inside main() (the micro-expression fixture)
        flags |= set(re.findall(r"add_argument\(\s*'(--[\w-]+)'", path.read_text()))
    quick_start = (ROOT / 'quick_start.sh').read_text()
    flags |= set(re.findall(r'^\s*(?:-\w\|)?(--[\w-]+)(?:=\*)?\)', quick_start, flags=re.M))
    return flags


def page_text_outside_code(text: str) -> str:
    """The prose of a page: fenced blocks and inline code removed."""
    text = re.sub(r'```.*?```', '', text, flags=re.S)
    return re.sub(r'`[^`\n]*`', '', text)


# the generated reference

def test_the_reference_pages_are_generated_from_the_current_code():
    stale = [str(path.relative_to(ROOT)) for path, text in docs_reference.expected_pages().items()
             if not path.is_file() or path.read_text() != text]
    assert not stale, (f'{", ".join(stale)} differ from what the code gives (a parser, profile, output table or '
                       f'checkpoint changed): run python scripts/docs_reference.py')


def test_the_generated_reference_documents_every_flag_of_every_script():
    page = (EN / 'reference.md').read_text()
    block = page[page.index(docs_reference.BEGIN):page.index(docs_reference.END)]
    for name in docs_reference.SCRIPTS:
        for _, actions in docs_reference.documented_actions(PARSERS[name]):
            for action in actions:
                assert action.option_strings[0] in block, f'{name} {action.option_strings[0]} missing'
    for column in docs_reference.inference_columns()[0]:
        assert f'`{column}`' in block


def test_the_generator_replaces_only_the_text_between_its_markers():
    page = f'# mine\n\nhand-written\n\n{docs_reference.BEGIN}\nold\n{docs_reference.END}\n\nmore of mine\n'
    rendered = docs_reference.render(page, f'{docs_reference.BEGIN}\nnew\n{docs_reference.END}')
    assert rendered == f'# mine\n\nhand-written\n\n{docs_reference.BEGIN}\nnew\n{docs_reference.END}\n\nmore of mine\n'
    assert docs_reference.render(rendered, f'{docs_reference.BEGIN}\nnew\n{docs_reference.END}') == rendered


# flags and defaults named in the docs

def test_every_flag_the_docs_mention_exists_in_some_script():
    known = known_flags() | OTHER_PROGRAMS_FLAGS
    unknown = {}
    for path in PAGES:
        for flag in set(FLAG.findall(path.read_text())):
            flag = flag.rstrip('-')
            if flag not in known:
                unknown.setdefault(flag, []).append(str(path.relative_to(ROOT)))
    assert not unknown, f'flags no script takes (renamed or removed?): {unknown}'


def test_the_flag_check_finds_flags_and_can_fail():
    assert {'--profile', '--dry_run', '--multitask', '--no-flip_swap_side', '--pairs', '--cv_folds_limit'} <= known_flags()
    assert FLAG.findall('use `--tta mirror` or --train_flags=--mixup 0.2 (not ---- or a-b--c)') == \
        ['--tta', '--train_flags', '--mixup']
    assert '--no_such_flag' not in known_flags()


def markdown_tables(text: str):
    """(text before the table, header cells, rows of cells) of every table outside fenced blocks."""
    text = re.sub(r'```.*?```', '', text, flags=re.S)
    lines, start = text.splitlines(), 0
    index = 0
    while index < len(lines):
        if lines[index].startswith('|') and index + 1 < len(lines) and re.match(r'^\|\s*-', lines[index + 1]):
            end = index + 2
            while end < len(lines) and lines[end].startswith('|'):
                end += 1
            split = [[cell.strip() for cell in re.split(r'(?<!\\)\|', line)[1:-1]] for line in lines[index:end]]
            yield '\n'.join(lines[start:index]), split[0], split[2:]
            start = index = end
        else:
            index += 1


def stated_matches(stated: str, expected: str) -> bool:
    stated, expected = stated.replace('`', '').strip(), expected.strip()
    if stated == expected:
        return True
    try:
        return [float(a) for a in stated.split()] == [float(b) for b in expected.split()]
    except ValueError:
        return False


def table_default_mismatches(text: str, name: str) -> list[str]:
    """Rows of flag / default tables whose default is not the parser's, for the script the text before the
    table names last (any script that takes the flag when it names none)."""
    scripts = sorted(PARSERS, key=len, reverse=True)
    bad = []
    for before, header, rows in markdown_tables(text):
        lowered = [cell.replace('`', '').lower() for cell in header]
        flag_col = next((i for i, c in enumerate(lowered) if c in ('flag', 'flags', '参数')), None)
        default_col = next((i for i, c in enumerate(lowered) if c in ('default', '默认值')), None)
        if flag_col is None or default_col is None:
            continue
        named = [(before.rfind(Path(s).name), s) for s in scripts if Path(s).name in before]
        context = max(named)[1] if named else None
        for row in rows:
            flags = FLAG.findall(row[flag_col])
            if not flags:
                continue
            candidates = [PARSERS[context]] if context else list(PARSERS.values())
            expected = [docs_reference.flag_defaults(p)[flags[0]] for p in candidates
                        if flags[0] in docs_reference.flag_defaults(p)]
            # an unset default ('') lets the table describe what leaving the flag out does
            if not expected or '' in expected or any(stated_matches(row[default_col], e) for e in expected):
                continue
            bad.append(f'{name}: {flags[0]} stated {row[default_col]!r}, the parser says {expected}')
    return bad


def test_every_default_a_table_states_is_the_parsers():
    bad = [line for path in PAGES for line in table_default_mismatches(path.read_text(), str(path.relative_to(ROOT)))]
    assert not bad, 'defaults that differ from the code:\n' + '\n'.join(bad)


def test_the_default_check_catches_a_wrong_default():
    page = ('Flags of `train_facial_palsy.py`:\n\n| flag | default | meaning |\n| --- | --- | --- |\n'
            '| `--epochs` | 100 | ok |\n| `--batch_size` | 16 | wrong |\n| `--multitask` | off | ok |\n')
    assert table_default_mismatches(page, 'page') == ["page: --batch_size stated '16', the parser says ['32']"]


# numbers in the docs

SIZE = re.compile(r'dim (\d+)[,、]\s*heads (\d+)(?:[,、]\s*\d+ (?:levels|层))?[,、]\s*blocks ((?:\d+ )*\d+)'
                  r'[;,，；]\s*([\d.]+)M ?(?:parameters|参数)')


def test_every_stated_network_size_is_counted_from_model_py():
    found = []
    for path in [*PAGES, ROOT / 'config_examples.yaml']:
        for dim, heads, blocks, stated in SIZE.findall(path.read_text()):
            with torch.device('meta'):
                model = HTNet(image_size=56, patch_size=7, num_classes=6, dim=int(dim), heads=int(heads),
                              num_hierarchies=3, block_repeats=tuple(int(b) for b in blocks.split()))
            decimals = len(stated.split('.')[1]) if '.' in stated else 0
            counted = round(count_parameters(model) / 1e6, decimals)
            found.append(path)
            assert counted == float(stated), (f'{path.relative_to(ROOT)}: dim {dim}, heads {heads}, blocks {blocks} '
                                              f'has {counted}M parameters, not {stated}M')
    assert len(found) >= 4  # the check reads real statements, in the docs and in config_examples.yaml


# links

def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')


def anchors(path: Path) -> set[str]:
    text = re.sub(r'```.*?```', '', path.read_text(), flags=re.S)
    seen: dict[str, int] = {}
    result = set()
    for heading in re.findall(r'^#{1,6}\s+(.*)$', text, flags=re.M):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f'{base}-{count}')
    return result


def test_every_relative_link_and_anchor_resolves():
    broken = []
    for path in PAGES:
        text = re.sub(r'```.*?```', '', path.read_text(), flags=re.S)
        for target in re.findall(r'\]\(([^)\s]+)\)', text):
            if re.match(r'^[a-z]+:', target):
                continue
            file_part, _, anchor = target.partition('#')
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                if linked not in LINKED_AHEAD:
                    broken.append(f'{path.relative_to(ROOT)}: {target} (no such file)')
                continue
            if anchor and linked.suffix == '.md' and anchor not in anchors(linked):
                broken.append(f'{path.relative_to(ROOT)}: {target} (no such heading)')
    assert not broken, 'broken links:\n' + '\n'.join(broken)


def test_the_slug_follows_githubs_rule():
    assert slug('Affected side: `--multitask`') == 'affected-side---multitask'
    assert slug('3. 受试者：谁是谁') == '3-受试者谁是谁'
    assert slug('Configuration profiles (config_examples.yaml)') == 'configuration-profiles-config_examplesyaml'


# the two languages

def test_english_and_chinese_docs_have_the_same_pages_and_commands():
    english = sorted(p.name for p in EN.glob('*.md'))
    chinese = sorted(p.name for p in ZH.glob('*.md'))
    assert english == chinese, f'pages in one language only: {sorted(set(english) ^ set(chinese))}'
    assert {'get_started.md', 'own_data.md', 'data.md', 'train.md', 'evaluate_and_infer.md', 'beyond_the_grade.md',
            'legacy.md', 'troubleshooting.md', 'reference.md'} <= set(english)
    for name in english:
        en, zh = EN / name, ZH / name
        assert f'../zh_CN/{name}' in en.read_text(), f'docs/en/{name} does not link its Chinese page'
        assert f'../en/{name}' in zh.read_text(), f'docs/zh_CN/{name} does not link its English page'
        assert page_commands(en) == page_commands(zh), f'{name}: the two languages show different commands'
    for english_page, chinese_page in (('README.md', 'README_zh-CN.md'), ('README_FACIAL_PALSY.md', 'README_CN.md')):
        assert chinese_page in (ROOT / english_page).read_text().split('\n\n')[1], \
            f'{english_page} links {chinese_page} in its first lines'
        assert english_page in (ROOT / chinese_page).read_text().split('\n\n')[1]


def test_the_chinese_docs_use_one_term_for_each_thing():
    forbidden = {'眼线': '双眼连线', '配置档': '配置文件 / 配置', '序数': '有序', '95 %': '95%',
                 '95% 区间': '95% 置信区间'}
    pages = [ROOT / 'README_zh-CN.md', ROOT / 'README_CN.md', *ZH.glob('*.md')]
    bad = []
    for path in pages:
        text = path.read_text()
        if docs_reference.BEGIN in text:  # the generated flag tables keep the scripts' English help
            text = text[:text.index(docs_reference.BEGIN)] + text[text.index(docs_reference.END):]
        bad += [f'{path.relative_to(ROOT)}: {word} (use {use})' for word, use in forbidden.items() if word in text]
        if re.search(r'(?<![\w:])note(?![\w:])', page_text_outside_code(text)):
            bad.append(f'{path.relative_to(ROOT)}: a bare "note" (write `note:` 提示)')
    assert not bad, '\n'.join(bad)


# --help

def stated_defaults(help_text: str) -> int:
    return len(re.findall(r'\(default\b|\bdefault:|(?:^|[;.]\s*)default\b', help_text, flags=re.I))


def test_the_help_formatter_states_each_default_once():
    parser = argparse.ArgumentParser(formatter_class=utils.HelpFormatter)
    parser.add_argument('--plain', type=int, default=5, help='a number')
    parser.add_argument('--stated', default='x', help='a folder (default: the one of --plain)')
    parser.add_argument('--sentence', default='y', help='a file; default y beside the data')
    parser.add_argument('--unset', default=None, help='nothing')
    parser.add_argument('--switch', action='store_true', help='a switch')
    parser.add_argument('--its_default', type=int, default=0, help='0 keeps its default (one per core)')
    text = {a.dest: parser._get_formatter()._get_help_string(a) for a in parser._actions}
    assert text['plain'] == 'a number (default: %(default)s)'
    assert text['stated'] == 'a folder (default: the one of --plain)'
    assert text['sentence'] == 'a file; default y beside the data'
    assert text['unset'] == 'nothing' and text['switch'] == 'a switch'
    assert text['its_default'].endswith('(default: %(default)s)')  # "its default" is not the flag's


# the scripts whose --help utils.HelpFormatter writes (the others write their defaults into the help text by hand)
HELP_FORMATTED = sorted(name for name, parser in PARSERS.items()
                        if issubclass(parser.formatter_class, utils.HelpFormatter))


def test_the_main_scripts_format_their_help_with_the_shared_formatter():
    assert {'train_facial_palsy.py', 'evaluate_facial_palsy.py', 'demo_inference.py',
            'visualize_attention.py'} <= set(HELP_FORMATTED)


@pytest.mark.parametrize('name', HELP_FORMATTED)
def test_help_says_each_default_once(name):
    parser = PARSERS[name]
    formatter = parser._get_formatter()
    twice = [action.option_strings[0] for action in parser._actions if action.help and action.option_strings
             and stated_defaults(formatter._expand_help(action)) > 1]
    assert not twice, f'{name} --help states a default twice for {twice}'
    parser.format_help()  # every help text expands (no stray % or unknown %(name)s)
