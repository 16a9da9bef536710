"""Where a benchmark's numbers come from: the commit they were measured at, recorded in every results file."""
from __future__ import annotations

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
