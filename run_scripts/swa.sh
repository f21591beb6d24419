#!/usr/bin/env bash
# Checkpoint averaging ("SWA", docs/original.md 4): the uniform mean of the model
# variables of every checkpoint of TRAIN_DIR from step SWA_START on, written to
# a new dir SWA_DIR (model.ckpt-<last step>, model_flags.json, swa.json).
# TRAIN_DIR is only read (the original overwrote its `checkpoint` file).
#
# Usage: TRAIN_DIR=~/yt8m_models/Soft-DBoF-4k SWA_START=300020 run_scripts/swa.sh [--flag=value ...]
# Extra flags go to `python -m swa.average`, e.g. --last_n=5 (with SWA_START=""),
# --swa_end=..., --bn_statistics=recompute --train_data_pattern=... --recompute_batches=200,
# --eval_data_pattern=... to evaluate the result, --overwrite.
# Next step: run_scripts/bfloat16.sh (SWA_DIR -> BF16_DIR).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

TRAIN_DIR=${TRAIN_DIR:-$HOME/yt8m_models/Soft-DBoF-4k}
SWA_DIR=${SWA_DIR:-$TRAIN_DIR-swa}
BF16_DIR=${BF16_DIR:-$SWA_DIR-bfloat16}   # used by run_scripts/bfloat16.sh
SWA_START=${SWA_START-300020}             # the original avg_eval.sh value; "" to omit
BN_STATISTICS=${BN_STATISTICS:-last}      # last (the original) | average | recompute
EVAL_DATA_PATTERN=${EVAL_DATA_PATTERN:-}  # optional: evaluate the averaged model

TRAIN_DIR=$(absolute "$TRAIN_DIR")
SWA_DIR=$(absolute "$SWA_DIR")

cd "$REPO_ROOT"

args=(--train_dir="$TRAIN_DIR" --output_dir="$SWA_DIR" --bn_statistics="$BN_STATISTICS")
if [[ -n "$SWA_START" ]]; then
  args+=(--swa_start="$SWA_START")
fi
if [[ -n "$EVAL_DATA_PATTERN" ]]; then
  args+=(--eval_data_pattern="$EVAL_DATA_PATTERN")
fi
"$PYTHON" -m swa.average "${args[@]}" "$@"
