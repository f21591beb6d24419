#!/usr/bin/env bash
# Writes the Kaggle submission CSV with the exported ensemble (docs/original.md 6.5)
# and checks it; optionally writes the model upload .tgz.
#
# Usage: MODEL_DIR=~/yt8m_work/ensembled_models TEST_PATTERN='/data/yt8m/frame/test*.tfrecord' \
#          run_scripts/ensemble_infer.sh [--flag=value ...]
# MODEL_DIR may also be a single model dir (model.ckpt-*), MODEL_TGZ an
# uploaded .tgz to read instead. OUTPUT_MODEL_TGZ, if set, writes the upload.
# Extra flags go to `python -m ensemble.inference`.
#
# NUM_WORKERS processes share the test files (default: one per visible GPU,
# each pinned with CUDA_VISIBLE_DEVICES; 1 on a CPU, whose cores the workers
# divide). Each writes one part per input file into OUTPUT_FILE.parts/, then
# ensemble.merge writes the CSV. Rerun the same command after a crash: the
# finished parts are kept, only the rest is predicted.
# LABEL_NAMES, if set, is a vocabulary CSV (Index,Name,... or label_id,label_name): the
# workers check it before predicting and the merge also writes each video's top 5 labels
# with their names to OUTPUT_FILE without .csv + .top5.tsv.
# BATCH_SIZE: videos per batch; a 10-tile ensemble runs 10x as many, so keep it
# near the original bf16 scripts' 80 (the starter's 8192 does not fit in memory).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

MODEL_DIR=${MODEL_DIR:-./ensemble_models/ensembled_models}
MODEL_TGZ=${MODEL_TGZ:-}
TEST_PATTERN=${TEST_PATTERN:-/path/to/yt8m/frame/test*.tfrecord}
OUTPUT_FILE=${OUTPUT_FILE:-./submission.csv}
OUTPUT_MODEL_TGZ=${OUTPUT_MODEL_TGZ:-}
LABEL_NAMES=${LABEL_NAMES:-}
BATCH_SIZE=${BATCH_SIZE:-64}
TOP_K=${TOP_K:-20}
NUM_CLASSES=${NUM_CLASSES:-3862}
NUM_WORKERS=${NUM_WORKERS:-auto}
PROGRESS_SECONDS=${PROGRESS_SECONDS:-60}    # a whole-job progress line every N (even) seconds

num_gpus=0
if command -v nvidia-smi > /dev/null 2>&1; then
  num_gpus=$(nvidia-smi -L 2> /dev/null | grep -c '^GPU' || true)
fi
if [[ "$NUM_WORKERS" == auto ]]; then
  NUM_WORKERS=$(( num_gpus > 0 ? num_gpus : 1 ))
fi
threads=0                                  # on a CPU the workers divide the cores
if (( num_gpus == 0 && NUM_WORKERS > 1 )); then
  threads=$(( $(nproc) / NUM_WORKERS > 0 ? $(nproc) / NUM_WORKERS : 1 ))
fi

model_args=(--train_dir="$(absolute "$MODEL_DIR")")
if [[ -n "$MODEL_TGZ" ]]; then model_args=(--input_model_tgz="$(absolute "$MODEL_TGZ")"); fi
data_args=(--input_data_pattern="$(absolute "$TEST_PATTERN")"
           --output_file="$(absolute "$OUTPUT_FILE")")
tgz_args=()
if [[ -n "$OUTPUT_MODEL_TGZ" ]]; then tgz_args=(--output_model_tgz="$(absolute "$OUTPUT_MODEL_TGZ")"); fi
label_args=()
if [[ -n "$LABEL_NAMES" ]]; then label_args=(--label_names="$(absolute "$LABEL_NAMES")"); fi
OUTPUT_FILE=$(absolute "$OUTPUT_FILE")
parts="$OUTPUT_FILE.parts"
cd "$REPO_ROOT"

if (( ${#tgz_args[@]} )); then
  "$PYTHON" -m ensemble.inference "${model_args[@]}" "${tgz_args[@]}" "$@"
fi

mkdir -p "$parts"
started_at=$(date +%s)
pids=()
for (( i = 0; i < NUM_WORKERS; i++ )); do
  device=()
  if (( num_gpus > 0 )); then device=(env CUDA_VISIBLE_DEVICES=$(( i % num_gpus ))); fi
  "${device[@]}" "$PYTHON" -m ensemble.inference "${model_args[@]}" "${data_args[@]}" \
    --batch_size="$BATCH_SIZE" --top_k="$TOP_K" --num_shards="$NUM_WORKERS" --shard_index="$i" \
    --num_threads="$threads" "${label_args[@]}" "$@" > "$parts/.worker-$i.log" 2>&1 &
  pids+=($!)
done
echo "inference: $NUM_WORKERS worker(s), $num_gpus GPU(s); logs: $parts/.worker-*.log"
any_alive() { local pid; for pid in "${pids[@]}"; do kill -0 "$pid" 2> /dev/null && return 0; done; return 1; }
waited=0
while any_alive; do
  sleep 2
  waited=$(( waited + 2 ))
  if (( waited % PROGRESS_SECONDS == 0 )); then
    "$PYTHON" -m ensemble.merge "${data_args[@]}" --progress --started_at="$started_at" || true
  fi
done
failed=0
for (( i = 0; i < NUM_WORKERS; i++ )); do
  if ! wait "${pids[$i]}"; then
    echo "worker $i failed; the end of $parts/.worker-$i.log:" >&2
    tail -n 3 "$parts/.worker-$i.log" >&2
    failed=1
  fi
done
if (( failed )); then exit 2; fi
# The parts are the run's record: the CSV is (re)written from them.
"$PYTHON" -m ensemble.merge "${data_args[@]}" "${label_args[@]}" --overwrite
"$PYTHON" -m ensemble.check_submission --submission="$OUTPUT_FILE" \
  --num_classes="$NUM_CLASSES" --top_k="$TOP_K"
