#!/usr/bin/env bash
# Creates ./.venv with requirements.txt and requirements-dev.txt installed
# (once; again only when either changes). Sourced by quickstart.sh and test.sh.
# GPU=1 installs TensorFlow's CUDA build instead of the CPU one.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO_ROOT/.venv}"
PYTHON_BIN="${PYTHON_BIN:-python3}"
stamp="$VENV/.requirements.sha256"
# GPU=1: TensorFlow's CUDA build (tensorflow[and-cuda]) instead of tensorflow-cpu.
GPU=${GPU:-0}
requirements="$REPO_ROOT/requirements.txt"
if [[ "$GPU" == 1 ]]; then
  requirements="$(mktemp)"
  sed 's/^tensorflow-cpu==/tensorflow[and-cuda]==/' "$REPO_ROOT/requirements.txt" > "$requirements"
fi
want="$(cat "$requirements" "$REPO_ROOT/requirements-dev.txt" | sha256sum | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "setup: creating $VENV" >&2
  "$PYTHON_BIN" -m venv "$VENV"
fi
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "setup: installing $( [[ "$GPU" == 1 ]] && echo "the CUDA build of TensorFlow and " )requirements into $VENV" >&2
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
  # The CPU and CUDA builds both provide `tensorflow`: remove the other one.
  other=$( [[ "$GPU" == 1 ]] && echo tensorflow-cpu || echo tensorflow )
  "$VENV/bin/python" -m pip uninstall --quiet -y "$other" > /dev/null 2>&1 || true
  "$VENV/bin/python" -m pip install --quiet -r "$requirements" \
    -r "$REPO_ROOT/requirements-dev.txt" >&2
  echo "$want" > "$stamp"
fi
if [[ "$GPU" == 1 ]]; then rm -f "$requirements"; fi
export PYTHON="$VENV/bin/python"
