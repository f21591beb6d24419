#!/usr/bin/env bash
# Trains Soft-DBoF-4k: Late-fusion Soft-DBoF, 4000 video / 500 audio clusters, MoE-2 (docs/original.md 1.7).
# Its hyper-parameters and the original run script's schedule (batch, learning
# rate, decay, steps; docs/original.md 1.9) are the record of models/presets.py:
# this script passes only the preset name.
#
# Usage: DATA_DIR=/data/yt8m/frame TRAIN_DIR=~/models/Soft-DBoF-4k run_scripts/Soft-DBoF-4k.sh [--flag=value ...]
# Extra flags are passed to `python -m training.train` and override the preset's
# (e.g. --num_gpu=4, --start_new_model, --size=tiny, or a hyper-parameter such as --moe_l2=1e-6).
# Rerunning the same command resumes from the latest checkpoint in TRAIN_DIR.
set -euo pipefail

DATA_DIR=${DATA_DIR:-/path/to/yt8m/frame}
TRAIN_DIR=${TRAIN_DIR:-$HOME/yt8m_models/Soft-DBoF-4k}
export DATA_DIR TRAIN_DIR

# The original also passed --start_new_model, which deleted TRAIN_DIR on every start;
# here a rerun resumes instead, and --start_new_model can still be given explicitly.
exec "$(dirname "$0")/train_model.sh" Soft-DBoF-4k "$@"
