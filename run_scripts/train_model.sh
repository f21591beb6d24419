#!/usr/bin/env bash
# Shared body of the six model scripts (GRUModel.sh, nonlocal-*.sh, Soft-DBoF-*.sh)
# and of distillation.sh:
#   train_model.sh MODEL [extra training flags...]
# Paths come from TRAIN_DIR and TRAIN_PATTERN (default DATA_DIR/train*.tfrecord);
# the schedule and hyper-parameters come from the preset's record
# (models/presets.py); extra flags override them. TRAIN_MODULE (default
# training.train) is the Python entry point (distillation.sh: distillation.train).
# MATMUL_DTYPE=bfloat16 trains with bfloat16 weight products (mixed precision,
# float32 variables and checkpoints; docs/benchmarks.md "Training throughput").
# RECORD_KIND (default frame) is the records' layout, recorded in
# model_flags.json: frame, video, frame2017 or video2017 (training.record_layouts;
# the features and, for the 2017 kinds, the 4716 classes are the kind's).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
model=$1
shift
DATA_DIR=${DATA_DIR:-/path/to/yt8m/frame}
TRAIN_PATTERN=${TRAIN_PATTERN:-$DATA_DIR/train*.tfrecord}
TRAIN_DIR=${TRAIN_DIR:-$HOME/yt8m_models/$model}
TRAIN_MODULE=${TRAIN_MODULE:-training.train}
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
MATMUL_DTYPE=${MATMUL_DTYPE:-float32}
RECORD_KIND=${RECORD_KIND:-frame}
TRAIN_PATTERN=$(absolute "$TRAIN_PATTERN")
TRAIN_DIR=$(absolute "$TRAIN_DIR")

cd "$REPO_ROOT"

"$PYTHON" -m "$TRAIN_MODULE" \
  --train_dir="$TRAIN_DIR" \
  --train_data_pattern="$TRAIN_PATTERN" \
  --model="$model" \
  --record_kind="$RECORD_KIND" \
  --matmul_dtype="$MATMUL_DTYPE" \
  "$@"
