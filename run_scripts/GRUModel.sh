#!/usr/bin/env bash
# Trains GRUModel: Two stacked GRUs of 1200 units, MoE-2 (ORIGINAL.md 1.8).
# Hyper-parameters of the original run script (ORIGINAL.md 1.9): batch 128,
# learning rate 2e-4 decayed by 0.9 every 4,000,000 examples (31,250 steps),
# 300,000 steps, on one GPU.
#
# Usage: DATA_DIR=/data/yt8m/frame TRAIN_DIR=~/models/GRUModel run_scripts/GRUModel.sh [--flag=value ...]
# Extra flags are passed to `python -m training.train` and override the ones below
# (e.g. --num_gpu=4, --start_new_model, or any model hyper-parameter such as --moe_l2=1e-6).
# Rerunning the same command resumes from the latest checkpoint in TRAIN_DIR.
set -euo pipefail

DATA_DIR=${DATA_DIR:-/path/to/yt8m/frame}
TRAIN_DIR=${TRAIN_DIR:-$HOME/yt8m_models/GRUModel}
export DATA_DIR TRAIN_DIR

#                                          model  batch decay  max_steps
exec "$(dirname "$0")/train_model.sh" GRUModel 128 0.9 300000 "$@"
