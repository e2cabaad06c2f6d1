#!/usr/bin/env bash
# Set up, then run every stage of the default study offline: scripts/run-study.sh [dvc repro args]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH" MLFLOW_DISABLE_TELEMETRY=true TF_CPP_MIN_LOG_LEVEL=2
dvc repro "$@"
dvc metrics show
