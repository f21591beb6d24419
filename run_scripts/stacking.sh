#!/usr/bin/env bash
# Stacking (docs/original.md 9): learns non-negative member weights (summing to 1)
# that minimise the cross-entropy of the weighted mean on held-out labelled
# data, and writes WEIGHTS_FILE for `ensemble.build --weights_file`.
# MODEL_DIRS: comma-separated frozen model dirs (default: every
# $WORK_DIR/ensemble_models/*-bfloat16 dir that run_scripts/pipeline.sh wrote).
#
# Usage: DATA_DIR=/data/yt8m/frame WORK_DIR=~/yt8m_work run_scripts/stacking.sh [--flag=value ...]
# Extra flags go to `python -m stacking.fit`, e.g. --tile_num=10 (fit on the tiled
# predictions the ensemble makes), --batch_size=32, --max_iterations=1000.
# Memory: MAX_VIDEOS x members x NUM_CLASSES x 4 bytes (20000 x 6 x 3862: 1.9 GB).
# Then: python -m ensemble.build --weights_file="$WEIGHTS_FILE" --output_dir=... --tile_num=10
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DATA_DIR=${DATA_DIR:-/path/to/yt8m/frame}
WORK_DIR=${WORK_DIR:-$HOME/yt8m_work}
VALIDATE_PATTERN=${VALIDATE_PATTERN:-$DATA_DIR/validate*.tfrecord}
MODEL_DIRS=${MODEL_DIRS:-}
WEIGHTS_FILE=${WEIGHTS_FILE:-$WORK_DIR/stacking_weights.json}
PARAMETERIZATION=${PARAMETERIZATION:-simplex}
MAX_VIDEOS=${MAX_VIDEOS:-20000}

if [[ -z "$MODEL_DIRS" ]]; then
  dirs=()
  for dir in "$WORK_DIR"/ensemble_models/*-bfloat16; do
    if [[ -d "$dir" ]]; then dirs+=("$(absolute "$dir")"); fi
  done
  if [[ ${#dirs[@]} -eq 0 ]]; then
    echo "error: MODEL_DIRS: not set and no $WORK_DIR/ensemble_models/*-bfloat16 dir" >&2
    exit 2
  fi
  MODEL_DIRS=$(IFS=,; echo "${dirs[*]}")
fi
MODEL_DIRS=$(absolute_list "$MODEL_DIRS")
VALIDATE_PATTERN=$(absolute "$VALIDATE_PATTERN")
WEIGHTS_FILE=$(absolute "$WEIGHTS_FILE")

cd "$REPO_ROOT"

"$PYTHON" -m stacking.fit \
  --model_dirs="$MODEL_DIRS" \
  --data_pattern="$VALIDATE_PATTERN" \
  --output_file="$WEIGHTS_FILE" \
  --parameterization="$PARAMETERIZATION" \
  --max_videos="$MAX_VIDEOS" \
  "$@"
