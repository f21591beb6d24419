#!/usr/bin/env bash
# Runs the test suite in ./.venv (created on first use). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source run_scripts/setup_env.sh
exec "$PYTHON" -m pytest -q "$@" tests
