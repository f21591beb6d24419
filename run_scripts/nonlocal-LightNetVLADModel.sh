#!/usr/bin/env bash
# Trains nonlocal-LightNetVLADModel: Late-fusion LightVLAD with a non-local block, MoE-4 + probability gating (docs/original.md 1.5).
# Its hyper-parameters and the original run script's schedule (batch, learning
# rate, decay, steps; docs/original.md 1.9) are the record of models/presets.py:
# this script passes only the preset name.
#
# Usage: DATA_DIR=/data/yt8m/frame TRAIN_DIR=~/models/nonlocal-LightNetVLADModel run_scripts/nonlocal-LightNetVLADModel.sh [--flag=value ...]
# Extra flags are passed to `python -m training.train` and override the preset's
# (e.g. --num_gpu=4, --start_new_model, --size=tiny, or a hyper-parameter such as --moe_l2=1e-6).
# Rerunning the same command resumes from the latest checkpoint in TRAIN_DIR.
set -euo pipefail

DATA_DIR=${DATA_DIR:-/path/to/yt8m/frame}
TRAIN_DIR=${TRAIN_DIR:-$HOME/yt8m_models/nonlocal-LightNetVLADModel}
export DATA_DIR TRAIN_DIR

exec "$(dirname "$0")/train_model.sh" nonlocal-LightNetVLADModel "$@"
