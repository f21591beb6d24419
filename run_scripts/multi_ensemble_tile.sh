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
source "$(dirname "$0")/lib.sh"

if [[ $# -gt 0 && "$1" != --* ]]; then
  ENSEMBLE_MODELS=${ENSEMBLE_MODELS:-$1}
  shift
fi
ENSEMBLE_MODELS=${ENSEMBLE_MODELS:-./ensemble_models}
if [[ -z "${MEMBERS:-}" ]]; then   # <preset>-bfloat16 of the six presets (models/presets.py)
  MEMBERS=$(cd "$REPO_ROOT" && "$PYTHON" -m models.presets | sed 's/\([^ ]*\)/\1-bfloat16/g; s/ /,/g')
fi
OUTPUT_DIR=${OUTPUT_DIR:-$ENSEMBLE_MODELS/ensembled_models}
TILE_NUM=${TILE_NUM:-10}
SEED=${SEED:-666}
VALIDATE_PATTERN=${VALIDATE_PATTERN:-}
BATCH_SIZE=${BATCH_SIZE:-64}

if [[ -z "${MODEL_DIRS:-}" ]]; then
  MODEL_DIRS=""
  IFS=',' read -r -a names <<< "$MEMBERS"
  for name in "${names[@]}"; do
    MODEL_DIRS="${MODEL_DIRS:+$MODEL_DIRS,}$ENSEMBLE_MODELS/$name"
  done
fi

args=(--model_dirs="$(absolute_list "$MODEL_DIRS")" --output_dir="$(absolute "$OUTPUT_DIR")"
      --tile_num="$TILE_NUM" --seed="$SEED" --batch_size="$BATCH_SIZE")
if [[ -n "$VALIDATE_PATTERN" ]]; then
  args+=(--eval_data_pattern="$(absolute "$VALIDATE_PATTERN")")
fi

cd "$REPO_ROOT"
"$PYTHON" -m ensemble.build "${args[@]}" "$@"
