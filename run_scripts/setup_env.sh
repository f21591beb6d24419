#!/usr/bin/env bash
# Creates ./.venv with requirements.txt and requirements-dev.txt installed
# (once; again only when either changes). Sourced by quickstart.sh and test.sh.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO_ROOT/.venv}"
PYTHON_BIN="${PYTHON_BIN:-python3}"
stamp="$VENV/.requirements.sha256"
want="$(cat "$REPO_ROOT/requirements.txt" "$REPO_ROOT/requirements-dev.txt" | sha256sum | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "setup: creating $VENV" >&2
  "$PYTHON_BIN" -m venv "$VENV"
fi
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "setup: installing requirements.txt and requirements-dev.txt into $VENV" >&2
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
  "$VENV/bin/python" -m pip install --quiet -r "$REPO_ROOT/requirements.txt" \
    -r "$REPO_ROOT/requirements-dev.txt" >&2
  echo "$want" > "$stamp"
fi
export PYTHON="$VENV/bin/python"
