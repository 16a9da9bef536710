"""Print the Markdown table of the project's files with their sizes, for MIGRATION_SUMMARY.md.

    python scripts/file_table.py
"""
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    files = subprocess.run(['git', 'ls-files'], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    print('| file | size |')
    print('| --- | --- |')
    for name in sorted(files, key=lambda n: (n.count('/'), n)):
        size = (ROOT / name).stat().st_size
        print(f'| `{name}` | {size / 1024:.1f} KB |')


if __name__ == '__main__':
    main()
