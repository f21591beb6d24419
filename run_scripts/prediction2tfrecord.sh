#!/usr/bin/env bash
# Teacher records for distillation (docs/original.md 8): every SequenceExample of
# INPUT_PATTERN copied unchanged into OUTPUT_DIR (same file names) plus the
# context feature ensemble_labels = the teacher's scores as raw float32[NUM_CLASSES].
# Teacher: TEACHER_CSV (a submission CSV of the teacher run over INPUT_PATTERN,
# all 20 pairs encoded) if set, else TEACHER_DIR (the ensemble dir of
# run_scripts/pipeline.sh, or any model dir: full prediction vectors).
# Shards already in OUTPUT_DIR are skipped: rerun to continue after a crash.
#
# Usage: DATA_DIR=/data/yt8m/frame WORK_DIR=~/yt8m_work run_scripts/prediction2tfrecord.sh [--flag=value ...]
# Parallel runs: NUM_SHARD_GROUPS=4 SHARD_INDEX=0..3 (one run per index), or the
# original's --bstart=/--bend= slice of the sorted file list.
# Extra flags go to `python -m prediction2tfrecord.write`, e.g. --skip_missing, --batch_size=64.
# Next step: run_scripts/distillation.sh.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DATA_DIR=${DATA_DIR:-/path/to/yt8m/frame}
WORK_DIR=${WORK_DIR:-$HOME/yt8m_work}
INPUT_PATTERN=${INPUT_PATTERN:-$DATA_DIR/train*.tfrecord}
OUTPUT_DIR=${OUTPUT_DIR:-$WORK_DIR/teacher_records}
TEACHER_CSV=${TEACHER_CSV:-}                         # set to use a CSV teacher
TEACHER_DIR=${TEACHER_DIR:-$WORK_DIR/ensembled_models}
NUM_CLASSES=${NUM_CLASSES:-3862}
NUM_SHARD_GROUPS=${NUM_SHARD_GROUPS:-1}
SHARD_INDEX=${SHARD_INDEX:-0}

INPUT_PATTERN=$(absolute "$INPUT_PATTERN")
OUTPUT_DIR=$(absolute "$OUTPUT_DIR")
if [[ -n "$TEACHER_CSV" ]]; then
  teacher=(--teacher_csv="$(absolute "$TEACHER_CSV")")
else
  teacher=(--teacher_dir="$(absolute "$TEACHER_DIR")")
fi

cd "$REPO_ROOT"

"$PYTHON" -m prediction2tfrecord.write \
  --input_data_pattern="$INPUT_PATTERN" \
  --output_dir="$OUTPUT_DIR" \
  "${teacher[@]}" \
  --num_classes="$NUM_CLASSES" \
  --num_shard_groups="$NUM_SHARD_GROUPS" \
  --shard_index="$SHARD_INDEX" \
  "$@"
