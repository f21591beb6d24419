#!/usr/bin/env bash
# Writes the Kaggle submission CSV with the exported ensemble (docs/original.md 6.5)
# and checks it; optionally writes the model upload .tgz.
#
# Usage: MODEL_DIR=~/yt8m_work/ensembled_models TEST_PATTERN='/data/yt8m/frame/test*.tfrecord' \
#          run_scripts/ensemble_infer.sh [--flag=value ...]
# MODEL_DIR may also be a single model dir (model.ckpt-*), MODEL_TGZ an
# uploaded .tgz to read instead. OUTPUT_MODEL_TGZ, if set, writes the upload.
# Extra flags go to `python -m ensemble.inference` (e.g. --num_readers=4).
# BATCH_SIZE: videos per batch; a 10-tile ensemble runs 10x as many, so keep it
# near the original bf16 scripts' 80 (the starter's 8192 does not fit in memory).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

MODEL_DIR=${MODEL_DIR:-./ensemble_models/ensembled_models}
MODEL_TGZ=${MODEL_TGZ:-}
TEST_PATTERN=${TEST_PATTERN:-/path/to/yt8m/frame/test*.tfrecord}
OUTPUT_FILE=${OUTPUT_FILE:-./submission.csv}
OUTPUT_MODEL_TGZ=${OUTPUT_MODEL_TGZ:-}
BATCH_SIZE=${BATCH_SIZE:-64}
TOP_K=${TOP_K:-20}
NUM_CLASSES=${NUM_CLASSES:-3862}

if [[ -n "$MODEL_TGZ" ]]; then
  model_flag=(--input_model_tgz="$(absolute "$MODEL_TGZ")")
else
  model_flag=(--train_dir="$(absolute "$MODEL_DIR")")
fi
tgz_flag=()
if [[ -n "$OUTPUT_MODEL_TGZ" ]]; then
  tgz_flag=(--output_model_tgz="$(absolute "$OUTPUT_MODEL_TGZ")")
fi
TEST_PATTERN=$(absolute "$TEST_PATTERN")
OUTPUT_FILE=$(absolute "$OUTPUT_FILE")

cd "$REPO_ROOT"

"$PYTHON" -m ensemble.inference \
  "${model_flag[@]}" \
  "${tgz_flag[@]}" \
  --input_data_pattern="$TEST_PATTERN" \
  --output_file="$OUTPUT_FILE" \
  --batch_size="$BATCH_SIZE" \
  --top_k="$TOP_K" \
  "$@"
"$PYTHON" -m ensemble.check_submission --submission="$OUTPUT_FILE" \
  --num_classes="$NUM_CLASSES" --top_k="$TOP_K"
