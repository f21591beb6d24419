#!/usr/bin/env bash
# Segment fine-tuning (docs/segments.md "Segment fine-tuning"): a video-level
# model (SOURCE_DIR: a train, SWA, bfloat16 or int8 dir of any preset) trained
# a few steps on the rated 5-frame segments of 2019 segment-rated records
# (TRAIN_PATTERN: the fitting files), into a new train dir TRAIN_DIR with the
# source's model record. The loss: CE on each rated (segment, class) pair plus
# NEGATIVE_WEIGHT times CE pushing to 0 every class not among the video's labels.
# Rerunning the same command resumes from the latest checkpoint in TRAIN_DIR.
#
# Usage: SOURCE_DIR=~/yt8m_work/swa/GRUModel TRAIN_PATTERN='/data/3/frame/validate0*.tfrecord' \
#          run_scripts/segment_finetune.sh [--flag=value ...]
# Extra flags go to `python -m segment_finetune.train`: --max_steps (300),
# --batch_size (64 segments), --base_learning_rate (2e-4, constant),
# --save_checkpoint_steps (25), --num_epochs, --seed, ...
# Next: swa.average --last_n=N on TRAIN_DIR, bfloat16_patch.convert, and
# training.eval --segment_labels on the held-out segment files.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

WORK_DIR=${WORK_DIR:-$HOME/yt8m_work}
MODEL=${MODEL:-GRUModel}
SOURCE_DIR=${SOURCE_DIR:-$WORK_DIR/swa/$MODEL}
TRAIN_PATTERN=${TRAIN_PATTERN:-/path/to/yt8m/3/frame/validate*.tfrecord}
TRAIN_DIR=${TRAIN_DIR:-$WORK_DIR/segment_finetune/$MODEL}
NEGATIVE_WEIGHT=${NEGATIVE_WEIGHT:-1.0}

SOURCE_DIR=$(absolute "$SOURCE_DIR")
TRAIN_PATTERN=$(absolute_list "$TRAIN_PATTERN")
TRAIN_DIR=$(absolute "$TRAIN_DIR")

cd "$REPO_ROOT"

"$PYTHON" -m segment_finetune.train --source_dir="$SOURCE_DIR" --train_dir="$TRAIN_DIR" \
  --train_data_pattern="$TRAIN_PATTERN" --negative_weight="$NEGATIVE_WEIGHT" "$@"
