#!/usr/bin/env bash
# The lint (ruff, ruff.toml), the type check (mypy, mypy.ini: every package)
# and the test suite, in ./.venv (created on first use), on every core
# (pytest-xdist). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source run_scripts/setup_env.sh
"$VENV/bin/ruff" check .
"$VENV/bin/mypy"
# One worker per core (TEST_WORKERS=0: all in this process), each taking whole test
# files (their module fixtures are built once). Without a path, the whole of tests/
# (pytest.ini); the fast inner loop: -m "not slow"; one kind: tests/unit (docs/architecture.md
# "Tests").
exec "$PYTHON" -m pytest -q -n "${TEST_WORKERS:-auto}" --dist loadfile "$@"
