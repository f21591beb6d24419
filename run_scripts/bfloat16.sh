#!/usr/bin/env bash
# bfloat16 conversion (docs/original.md 5): SWA_DIR's latest model.ckpt-* (what
# run_scripts/swa.sh writes) -> BF16_DIR, every floating tensor stored as
# bfloat16 (round to nearest even), integers untouched, optimizer slots dropped,
# model_flags.json marked "checkpoint_dtype": "bfloat16". Nothing in the
# TensorFlow installation is modified; training.eval, the ensemble and
# inference load the result through training.precision (bf16 getters).
#
# Usage: SWA_DIR=~/yt8m_models/Soft-DBoF-4k-swa BF16_DIR=~/ensemble_models/Soft-DBoF-4k run_scripts/bfloat16.sh [--flag=value ...]
# Extra flags go to `python -m bfloat16_patch.convert`, e.g. --checkpoint_file=..., --overwrite,
# --dtype=int8 (large matrices as int8 with a scale per column; --int8_min_values,
# --target_bytes=N: only the fewest, largest that bring the checkpoint under N bytes).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

TRAIN_DIR=${TRAIN_DIR:-$HOME/yt8m_models/Soft-DBoF-4k}
SWA_DIR=${SWA_DIR:-$TRAIN_DIR-swa}
BF16_DIR=${BF16_DIR:-$SWA_DIR-bfloat16}

SWA_DIR=$(absolute "$SWA_DIR")
BF16_DIR=$(absolute "$BF16_DIR")

cd "$REPO_ROOT"

"$PYTHON" -m bfloat16_patch.convert --input_dir="$SWA_DIR" --output_dir="$BF16_DIR" "$@"
