#!/usr/bin/env bash
# Set up a working copy: virtualenv in .venv with the tested versions (constraints.txt) and the
# torch backend (the `torch` extra), and Debian's
# Fashion-MNIST package when apt is usable (the default study's offline dataset).
# Idempotent: a second run only checks. Usage: scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# --no-deps check first: reinstalling the pinned set takes minutes, verifying it takes seconds.
if ! .venv/bin/python -c "import ablations, pytest, xdist, dvc, mlflow, keras, torch, playwright, statsmodels" 2>/dev/null; then
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -c constraints.txt -e ".[torch,test]"
fi

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo -n"
  if command -v apt-get >/dev/null && { [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; }; then
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null \
      || echo "warning: could not install dataset-fashion-mnist; set ABLATIONS_DATA_MIRROR" >&2
  else
    echo "note: apt not usable; put Fashion-MNIST files in \$ABLATIONS_DATA_MIRROR or allow download" >&2
  fi
fi

# Chromium for the report's browser tests (tests/test_report.py skips them without it);
# Playwright drives this system copy: its own browser download needs the internet.
if ! command -v chromium >/dev/null && [ ! -x /usr/bin/chromium ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo -n"
  if command -v apt-get >/dev/null && { [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; }; then
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null \
      || echo "warning: could not install chromium; the report's browser tests will be skipped" >&2
  else
    echo "note: apt not usable; install Chromium for the report's browser tests" >&2
  fi
fi
