#!/usr/bin/env bash
# Knowledge distillation (docs/original.md 7): trains MODEL (any preset or class of
# the zoo) on the teacher records of run_scripts/prediction2tfrecord.sh with the
# loss (1 - p) * CE(hard labels) + p * CE(teacher), p = DISTILL_PROB.
# TEACHER_NORMALIZATION: none (teacher scores are probabilities: an averaged
# ensemble, the default of this pipeline), max, or sum_to_members with
# TEACHER_NUM_MEMBERS (a CSV that summed N members, as the original's /5.0).
# WARM_START: optional checkpoint or model dir whose model variables start a
# fresh run (the global step and Adam state start anew).
# Rerunning the same command resumes from the latest checkpoint in TRAIN_DIR.
#
# Usage: WORK_DIR=~/yt8m_work MODEL=GRUModel run_scripts/distillation.sh [--flag=value ...]
# Extra flags go to `python -m distillation.train` (every training.train flag:
# --batch_size, --base_learning_rate, --max_steps, --num_gpu, model hyper-parameters, ...).
# Then SWA / bfloat16 / ensemble the student like any trained model.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

WORK_DIR=${WORK_DIR:-$HOME/yt8m_work}
MODEL=${MODEL:-GRUModel}
TEACHER_RECORDS=${TEACHER_RECORDS:-$WORK_DIR/teacher_records/train*.tfrecord}
TRAIN_DIR=${TRAIN_DIR:-$WORK_DIR/distill/$MODEL}
DISTILL_PROB=${DISTILL_PROB:-0.5}
TEACHER_NORMALIZATION=${TEACHER_NORMALIZATION:-none}
TEACHER_NUM_MEMBERS=${TEACHER_NUM_MEMBERS:-}
WARM_START=${WARM_START:-}
NUM_CLASSES=${NUM_CLASSES:-3862}

args=(--num_classes="$NUM_CLASSES" --distill_prob="$DISTILL_PROB"
      --teacher_normalization="$TEACHER_NORMALIZATION")
if [[ -n "$TEACHER_NUM_MEMBERS" ]]; then
  args+=(--teacher_num_members="$TEACHER_NUM_MEMBERS")
fi
if [[ -n "$WARM_START" ]]; then
  args+=(--warm_start_checkpoint="$(absolute "$WARM_START")")
fi

TRAIN_MODULE=distillation.train TRAIN_PATTERN="$TEACHER_RECORDS" TRAIN_DIR="$TRAIN_DIR" \
  MATMUL_DTYPE=${MATMUL_DTYPE:-float32} exec "$(dirname "$0")/train_model.sh" "$MODEL" \
  "${args[@]}" "$@"
