#!/usr/bin/env bash
# Run the test suite: creates .venv from requirements.txt when missing, then pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_venv.sh
export MPLBACKEND=Agg
python -m pytest -q "$@"
