#!/usr/bin/env bash
# The GPU acceptance check (bench/gpu_acceptance.py) in ./.venv with TensorFlow's CUDA build;
# --require_gpu: no visible GPU (a broken CUDA set-up) fails with exit 1.
set -euo pipefail; cd "$(dirname "$0")/.."; GPU=1 source run_scripts/setup_env.sh; exec "$PYTHON" -m bench.gpu_acceptance --require_gpu "$@"
