#!/usr/bin/env bash
# Shared body of the six model scripts (GRUModel.sh, nonlocal-*.sh, Soft-DBoF-*.sh):
#   train_model.sh PRESET [extra training flags...]
# Paths come from DATA_DIR and TRAIN_DIR; the schedule and hyper-parameters come
# from the preset's record (models/presets.py); extra flags override them.
# MATMUL_DTYPE=bfloat16 trains with bfloat16 weight products (mixed precision,
# float32 variables and checkpoints; README "Training throughput").
set -euo pipefail
model=$1
shift
DATA_DIR=${DATA_DIR:-/path/to/yt8m/frame}
TRAIN_DIR=${TRAIN_DIR:-$HOME/yt8m_models/$model}
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
PYTHON=${PYTHON:-python}
MATMUL_DTYPE=${MATMUL_DTYPE:-float32}

cd "$(dirname "$0")/.."

"$PYTHON" -m training.train \
  --train_dir="$TRAIN_DIR" \
  --train_data_pattern="$DATA_DIR/train*.tfrecord" \
  --model="$model" \
  --frame_features=True \
  --feature_names=rgb,audio \
  --feature_sizes=1024,128 \
  --matmul_dtype="$MATMUL_DTYPE" \
  "$@"
