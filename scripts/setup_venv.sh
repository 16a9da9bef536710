# Sourced by quick_start.sh and tests/run.sh: make sure ./.venv exists and holds requirements.txt, then put it
# first on PATH. Re-installs only when requirements.txt changed since the last install.
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_venv="$_root/.venv"
_stamp="$_venv/.requirements.sha256"
_want="$(sha256sum "$_root/requirements.txt" | cut -d' ' -f1)"
if [ ! -x "$_venv/bin/python" ]; then
    _py="${PYTHON:-python3}"
    if ! "$_py" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 12)))' 2>/dev/null; then
        echo "warning: $("$_py" --version 2>&1) found; this toolkit is tested on Python 3.10-3.12" >&2
    fi
    echo "Creating .venv with $("$_py" --version 2>&1) (one-time install of requirements.txt; a few minutes)"
    "$_py" -m venv "$_venv"
fi
if [ ! -f "$_stamp" ] || [ "$(cat "$_stamp")" != "$_want" ]; then
    "$_venv/bin/python" -m pip install --quiet --upgrade pip
    "$_venv/bin/python" -m pip install --quiet -r "$_root/requirements.txt"
    echo "$_want" > "$_stamp"
fi
export PATH="$_venv/bin:$PATH"
export VIRTUAL_ENV="$_venv"
unset _root _venv _stamp _want _py
