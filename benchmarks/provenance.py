"""Where a benchmark's numbers come from: the commit they were measured at, recorded in every results file, and
the results files themselves (the raw record as JSON, the table with its command and commit as Markdown),
the runner of the toolkit's scripts that writes each command into its log, and the metrics the benchmarks report."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the test metrics every benchmark reads from an evaluation's metrics.json
METRICS = ('qwk', 'macro_f1', 'mae', 'accuracy')


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


def run(command: list[str], log: Path | None = None, threads: int | None = None) -> None:
    """Run a command of the toolkit from the repository root (``threads``: its OpenMP / MKL threads); its output
    goes to ``log`` when given. Fails with the log's tail."""
    env = dict(os.environ, MPLBACKEND='Agg')
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if log is None:
        print('$', shlex.join(command), flush=True)
        subprocess.run(command, check=True, env=env, cwd=ROOT)
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, 'a') as handle:
        handle.write('$ ' + shlex.join(command) + '\n')
        handle.flush()
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if done.returncode:
        tail = ''.join(log.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f'failed ({done.returncode}): {shlex.join(command)}\n{tail}')
