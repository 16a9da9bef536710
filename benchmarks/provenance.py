"""Where a benchmark's numbers come from: the commit they were measured at, recorded in every results file, and
the results files themselves (the raw record as JSON, the table with its command and commit as Markdown)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commit() -> str:
    """The short hash of HEAD, with ``+uncommitted`` when tracked files differ from it; ``unknown`` outside git."""
    try:
        head = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return head + ('+uncommitted' if dirty else '')
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'


def write_results(results_dir: Path, name: str, record: dict, table: str) -> None:
    """``<name>.json`` (``record``, which holds ``command`` and ``commit``) and ``<name>.md`` (``table``, then the
    command and the commit) in ``results_dir``; the table is printed too."""
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f'{name}.json').write_text(json.dumps(record, indent=2) + '\n')
    (results_dir / f'{name}.md').write_text(f'{table}\n\n`{record["command"]}` at {record["commit"]}\n')
    print(table)
