#!/usr/bin/env bash
# The whole pipeline for the six models: train -> SWA -> bfloat16 -> tiled
# ensemble -> submission CSV. Every stage is skipped when its output exists
# (training resumes from its latest checkpoint), so a rerun after a crash
# continues where it stopped.
#
# On a GPU box: point DATA_DIR at the YT8M 2018 frame-level data
# (train*.tfrecord, validate*.tfrecord, test*.tfrecord) and run it; edit or
# pass the variables below. TINY=1 shrinks every model for a CPU smoke run
# (what quickstart.sh does on synthetic data).
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_DIR=${DATA_DIR:-/path/to/yt8m/frame}
TRAIN_PATTERN=${TRAIN_PATTERN:-$DATA_DIR/train*.tfrecord}
VALIDATE_PATTERN=${VALIDATE_PATTERN:-$DATA_DIR/validate*.tfrecord}
TEST_PATTERN=${TEST_PATTERN:-$DATA_DIR/test*.tfrecord}
WORK_DIR=${WORK_DIR:-$HOME/yt8m_work}
PYTHON=${PYTHON:-python}
MODELS=${MODELS:-$("$PYTHON" -m models.presets)}   # the six presets (models/presets.py)
SWA_LAST_N=${SWA_LAST_N:-5}          # average the last N checkpoints of each model
SWA_BN=${SWA_BN:-last}               # BN statistics: last (the original) | average | recompute
TILE_NUM=${TILE_NUM:-10}
STORAGE=${STORAGE:-bfloat16}         # member storage: bfloat16 | int8 (large matrices int8)
TARGET_BYTES=${TARGET_BYTES:-}       # e.g. 1000000000: int8 for the fewest matrices that fit
NUM_CLASSES=${NUM_CLASSES:-3862}
SUBMISSION=${SUBMISSION:-$WORK_DIR/submission.csv}
TINY=${TINY:-0}
# Fixed seeds make a rerun write the same checkpoints and a byte-identical CSV.
SEED=${SEED:-2018}                   # training (init, data order, sampling), SWA, evaluation
ENSEMBLE_SEED=${ENSEMBLE_SEED:-666}  # the ensemble's frame sampling, baked into its graph
export PYTHON

# Extra training flags (TINY=1: the presets' tiny sizes and short runs, from
# models/presets.py; TINY_BATCH, TINY_STEPS, TINY_SAVE and TINY_LR override them).
train_flags() {
  echo "--num_classes=$NUM_CLASSES --seed=$SEED ${EXTRA_TRAIN_FLAGS:-}"
  if [[ "$TINY" == 1 ]]; then
    echo "--size=tiny ${TINY_BATCH:+--batch_size=$TINY_BATCH} ${TINY_STEPS:+--max_steps=$TINY_STEPS}"
    echo "${TINY_SAVE:+--save_checkpoint_steps=$TINY_SAVE} ${TINY_LR:+--base_learning_rate=$TINY_LR}"
  fi
}

members=()
for model in $MODELS; do
  train_dir="$WORK_DIR/train/$model"
  swa_dir="$WORK_DIR/swa/$model"
  bf16_dir="$WORK_DIR/ensemble_models/$model-$STORAGE"
  echo "=== $model: train -> $train_dir"
  # shellcheck disable=SC2046
  TRAIN_DIR="$train_dir" DATA_DIR="$DATA_DIR" "run_scripts/$model.sh" \
    --train_data_pattern="$TRAIN_PATTERN" $(train_flags)
  if [[ ! -d "$swa_dir" ]]; then
    echo "=== $model: SWA over the last $SWA_LAST_N checkpoints -> $swa_dir"
    "$PYTHON" -m swa.average --train_dir="$train_dir" --output_dir="$swa_dir" \
      --last_n="$SWA_LAST_N" --bn_statistics="$SWA_BN" --train_data_pattern="$TRAIN_PATTERN" \
      --recompute_batches="${SWA_RECOMPUTE_BATCHES:-100}" --seed="$SEED"
  fi
  if [[ ! -d "$bf16_dir" ]]; then
    echo "=== $model: $STORAGE -> $bf16_dir"
    "$PYTHON" -m bfloat16_patch.convert --input_dir="$swa_dir" --output_dir="$bf16_dir" \
      --dtype="$STORAGE"
  fi
  if [[ ! -f "$bf16_dir/eval_results.json" ]]; then
    "$PYTHON" -m training.eval --train_dir="$bf16_dir" --eval_data_pattern="$VALIDATE_PATTERN" \
      --run_once --batch_size=64 --seed="$SEED"
  fi
  members+=("$bf16_dir")
done

ensemble_dir="$WORK_DIR/ensembled_models"
model_dirs=$(IFS=,; echo "${members[*]}")
if [[ ! -d "$ensemble_dir" ]]; then
  echo "=== ensemble of ${#members[@]} models, tile $TILE_NUM -> $ensemble_dir"
  "$PYTHON" -m ensemble.build --model_dirs="$model_dirs" --tile_num="$TILE_NUM" \
    ${TARGET_BYTES:+--target_bytes=$TARGET_BYTES} \
    --output_dir="$ensemble_dir" --eval_data_pattern="$VALIDATE_PATTERN" --seed="$ENSEMBLE_SEED"
fi
if [[ ! -f "$SUBMISSION" ]]; then
  echo "=== inference -> $SUBMISSION"
  "$PYTHON" -m ensemble.inference --train_dir="$ensemble_dir" \
    --input_data_pattern="$TEST_PATTERN" --output_file="$SUBMISSION"
fi
"$PYTHON" -m ensemble.check_submission --submission="$SUBMISSION" --num_classes="$NUM_CLASSES"
"$PYTHON" -m ensemble.report --model_dirs="$model_dirs" --ensemble_dir="$ensemble_dir"
