#!/usr/bin/env bash
# The lint (ruff, ruff.toml) and the test suite, in ./.venv (created on first
# use). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source run_scripts/setup_env.sh
"$VENV/bin/ruff" check .
exec "$PYTHON" -m pytest -q "$@" tests
