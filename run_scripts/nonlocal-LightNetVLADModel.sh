#!/usr/bin/env bash
# Trains nonlocal-LightNetVLADModel: Late-fusion LightVLAD with a non-local block, MoE-4 + probability gating (ORIGINAL.md 1.5).
# Hyper-parameters of the original run script (ORIGINAL.md 1.9): batch 80,
# learning rate 2e-4 decayed by 0.8 every 4,000,000 examples (50,000 steps),
# 700,000 steps, on one GPU.
#
# Usage: DATA_DIR=/data/yt8m/frame TRAIN_DIR=~/models/nonlocal-LightNetVLADModel run_scripts/nonlocal-LightNetVLADModel.sh [--flag=value ...]
# Extra flags are passed to `python -m training.train` and override the ones below
# (e.g. --num_gpu=4, --start_new_model, or any model hyper-parameter such as --moe_l2=1e-6).
# Rerunning the same command resumes from the latest checkpoint in TRAIN_DIR.
set -euo pipefail

DATA_DIR=${DATA_DIR:-/path/to/yt8m/frame}
TRAIN_DIR=${TRAIN_DIR:-$HOME/yt8m_models/nonlocal-LightNetVLADModel}
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
PYTHON=${PYTHON:-python}

cd "$(dirname "$0")/.."

# --max_steps: the original wrote --max_step, which absl rejects (ORIGINAL.md 12.1).
# --num_epochs=100: large enough never to end training before --max_steps (the original's
# default of 5 epochs silently stopped it early, ORIGINAL.md 12.2).
"$PYTHON" -m training.train \
  --train_dir="$TRAIN_DIR" \
  --train_data_pattern="$DATA_DIR/train*.tfrecord" \
  --model=nonlocal-LightNetVLADModel \
  --frame_features=True \
  --feature_names=rgb,audio \
  --feature_sizes=1024,128 \
  --batch_size=80 \
  --base_learning_rate=2e-4 \
  --learning_rate_decay=0.8 \
  --learning_rate_decay_examples=4000000 \
  --max_steps=700000 \
  --num_epochs=100 \
  "$@"
