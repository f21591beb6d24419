#!/usr/bin/env bash
# Shared body of the six model scripts (GRUModel.sh, nonlocal-*.sh, Soft-DBoF-*.sh):
#   train_model.sh MODEL BATCH_SIZE LR_DECAY MAX_STEPS [extra training flags...]
# Paths come from DATA_DIR and TRAIN_DIR; extra flags override the ones below.
# MATMUL_DTYPE=bfloat16 trains with bfloat16 weight products (mixed precision,
# float32 variables and checkpoints; README "Training throughput").
set -euo pipefail
model=$1 batch_size=$2 decay=$3 max_steps=$4
shift 4
DATA_DIR=${DATA_DIR:-/path/to/yt8m/frame}
TRAIN_DIR=${TRAIN_DIR:-$HOME/yt8m_models/$model}
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
PYTHON=${PYTHON:-python}
MATMUL_DTYPE=${MATMUL_DTYPE:-float32}

cd "$(dirname "$0")/.."

# --max_steps: the original wrote --max_step, which absl rejects (ORIGINAL.md 12.1).
# --num_epochs=100: large enough never to end training before --max_steps (the original's
# default of 5 epochs silently stopped it early, ORIGINAL.md 12.2).
# Learning rate 2e-4, decayed every 4,000,000 examples, as in every original run script.
"$PYTHON" -m training.train \
  --train_dir="$TRAIN_DIR" \
  --train_data_pattern="$DATA_DIR/train*.tfrecord" \
  --model="$model" \
  --frame_features=True \
  --feature_names=rgb,audio \
  --feature_sizes=1024,128 \
  --batch_size="$batch_size" \
  --base_learning_rate=2e-4 \
  --learning_rate_decay="$decay" \
  --learning_rate_decay_examples=4000000 \
  --max_steps="$max_steps" \
  --num_epochs=100 \
  --matmul_dtype="$MATMUL_DTYPE" \
  "$@"
