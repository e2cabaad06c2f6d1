#!/usr/bin/env bash
# Set up, then run the test suite: scripts/test.sh [pytest args]
# On 2 pytest-xdist workers, each test file on one worker, so a module's fixture (a `dvc repro`)
# is built once; `-n 0` after them runs in this process (a single test, a debugger).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH" MLFLOW_DISABLE_TELEMETRY=true TF_CPP_MIN_LOG_LEVEL=2
python -m pytest -n 2 --dist loadfile "$@"
