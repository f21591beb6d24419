#!/usr/bin/env bash
# Builds the tiled ensemble for the Kaggle upload (docs/original.md 6.1-6.4):
# the member models (bfloat16 dirs, or float32 SWA/train dirs) become one
# graph with inference_model.{meta,index,data-*}, model_flags.json and
# ensemble.json in OUTPUT_DIR, and the exported size is checked against 1 GiB.
#
# Usage: ENSEMBLE_MODELS=~/yt8m_work/ensemble_models run_scripts/multi_ensemble_tile.sh [--flag=value ...]
#   or:  run_scripts/multi_ensemble_tile.sh ~/yt8m_work/ensemble_models [--flag=value ...]
# MEMBERS lists the member sub-folders of ENSEMBLE_MODELS (comma-separated;
# the original script's ensemble_model_path); MODEL_DIRS, if set, lists full
# paths instead. Extra flags go to `python -m ensemble.build`, e.g.
# --weights=1,1,2,1,1,1, --weights_file=stacking/weights.json, --overwrite.
# VALIDATE_PATTERN (optional) evaluates the exported ensemble afterwards.
set -euo pipefail

if [[ $# -gt 0 && "$1" != --* ]]; then
  ENSEMBLE_MODELS=${ENSEMBLE_MODELS:-$1}
  shift
fi
ENSEMBLE_MODELS=${ENSEMBLE_MODELS:-./ensemble_models}
MEMBERS=${MEMBERS:-nonlocal-NetVLADModel-bfloat16,nonlocal-LightNetVLADModel-bfloat16,nonlocal-earlyNetVLADModel-bfloat16,Soft-DBoF-4k-bfloat16,Soft-DBoF-8k-bfloat16,GRUModel-bfloat16}
OUTPUT_DIR=${OUTPUT_DIR:-$ENSEMBLE_MODELS/ensembled_models}
TILE_NUM=${TILE_NUM:-10}
SEED=${SEED:-666}
VALIDATE_PATTERN=${VALIDATE_PATTERN:-}
BATCH_SIZE=${BATCH_SIZE:-64}
PYTHON=${PYTHON:-python}

if [[ -z "${MODEL_DIRS:-}" ]]; then
  MODEL_DIRS=""
  IFS=',' read -r -a names <<< "$MEMBERS"
  for name in "${names[@]}"; do
    MODEL_DIRS="${MODEL_DIRS:+$MODEL_DIRS,}$ENSEMBLE_MODELS/$name"
  done
fi

# Resolve relative paths before leaving the caller's directory.
abs() { case "$1" in /* | *://*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }   # keeps gs:// paths
dirs=""
IFS=',' read -r -a given <<< "$MODEL_DIRS"
for dir in "${given[@]}"; do
  dirs="${dirs:+$dirs,}$(abs "$dir")"
done
OUTPUT_DIR=$(abs "$OUTPUT_DIR")
eval_flag=()
if [[ -n "$VALIDATE_PATTERN" ]]; then
  eval_flag=(--eval_data_pattern="$(abs "$VALIDATE_PATTERN")")
fi

cd "$(dirname "$0")/.."

"$PYTHON" -m ensemble.build \
  --model_dirs="$dirs" \
  --output_dir="$OUTPUT_DIR" \
  --tile_num="$TILE_NUM" \
  --seed="$SEED" \
  --batch_size="$BATCH_SIZE" \
  "${eval_flag[@]}" \
  "$@"
