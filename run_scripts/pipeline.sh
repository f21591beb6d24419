#!/usr/bin/env bash
# The whole pipeline for the six models: train -> SWA -> bfloat16 -> tiled
# ensemble (uniform, and stacked when STACKING=1) -> submission CSV -> report
# (REPORT.json, REPORT.png). Every stage is skipped when its output exists
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
MODELS=${MODELS:-$("$PYTHON" -m models.presets)}   # the ensemble (models/presets.py ENSEMBLE)
# Checkpoint averaging (docs/training.md "Checkpoint averaging (SWA)"): each
# preset's schedule ends with an averaging tail at a constant rate, with
# frequent checkpoints; SWA_TAIL_STEPS, SWA_LR and SWA_SAVE_STEPS override it.
# SWA_LAST_N=auto chooses each model's window on the fitting validation files
# among SWA_WINDOWS (default 1, 2, 4, ... and all; 1 is the last checkpoint);
# a number N averages the last N checkpoints.
SWA_LAST_N=${SWA_LAST_N:-auto}
SWA_WINDOWS=${SWA_WINDOWS:-}
SWA_BN=${SWA_BN:-last}               # BN statistics: last (the original) | average | recompute
TILE_NUM=${TILE_NUM:-10}
STORAGE=${STORAGE:-bfloat16}         # member storage: bfloat16 | int8 (large matrices int8)
TARGET_BYTES=${TARGET_BYTES:-}       # e.g. 1000000000: int8 for the fewest matrices that fit
NUM_CLASSES=${NUM_CLASSES:-3862}
TOP_K=${TOP_K:-20}                   # label score pairs per video in the CSV; the k of GAP@k
SUBMISSION=${SUBMISSION:-$WORK_DIR/submission.csv}
REPORT=${REPORT:-${SUBMISSION%.csv}.report}   # REPORT.json and REPORT.png beside the CSV
# The validation files (sorted) split in two: the first FIT_FILES (default:
# half) are the fitting files, on which everything is chosen (SWA windows,
# stacking weights, uniform or stacked); the rest are held out, and only the
# report reads them. STACKING=1 fits ensemble weights on the fitting files;
# STACKING=0 skips it. Default: 1 when the validation pattern has 2 files or more.
FIT_FILES=${FIT_FILES:-}
STACKING=${STACKING:-auto}
LABEL_NAMES=${LABEL_NAMES:-}         # a vocabulary CSV: also write the top-5 TSV with names
TINY=${TINY:-0}
# Fixed seeds make a rerun write the same checkpoints and a byte-identical CSV.
SEED=${SEED:-2018}                   # training (init, data order, sampling), SWA, evaluation
ENSEMBLE_SEED=${ENSEMBLE_SEED:-666}  # the ensemble's frame sampling, baked into its graph
export PYTHON

# Extra training flags (TINY=1: the presets' tiny sizes and short runs, from
# models/presets.py; TINY_BATCH, TINY_STEPS, TINY_SAVE and TINY_LR override them).
train_flags() {
  echo "--num_classes=$NUM_CLASSES --seed=$SEED ${EXTRA_TRAIN_FLAGS:-}"
  echo "${SWA_TAIL_STEPS:+--swa_tail_steps=$SWA_TAIL_STEPS} ${SWA_LR:+--swa_learning_rate=$SWA_LR}"
  echo "${SWA_SAVE_STEPS:+--swa_save_steps=$SWA_SAVE_STEPS}"
  if [[ "$TINY" == 1 ]]; then
    echo "--size=tiny ${TINY_BATCH:+--batch_size=$TINY_BATCH} ${TINY_STEPS:+--max_steps=$TINY_STEPS}"
    echo "${TINY_SAVE:+--save_checkpoint_steps=$TINY_SAVE} ${TINY_LR:+--base_learning_rate=$TINY_LR}"
  fi
}

# The validation files, sorted: the fitting ones, then the held-out ones (a
# file is never split).
source run_scripts/lib.sh
split_fit_heldout "$VALIDATE_PATTERN" validation
if [[ "$STACKING" == auto ]]; then
  STACKING=$(( NUM_PATTERN_FILES >= 2 ? 1 : 0 ))
fi
for setting in "STACKING=$STACKING" "SWA_LAST_N=$SWA_LAST_N"; do
  if [[ ( "$setting" == STACKING=1 || "$setting" == SWA_LAST_N=auto ) && -z "$FIT_PATTERN" ]]; then
    echo "error: $setting: VALIDATE_PATTERN=$VALIDATE_PATTERN matches $NUM_PATTERN_FILES file(s); it chooses on fitting files and needs 2 or more (one part to fit, one to report)" >&2
    exit 2
  fi
done
swa_window_flags=(--last_n="$SWA_LAST_N")
if [[ "$SWA_LAST_N" == auto ]]; then
  swa_window_flags=(--choose_window_on="$FIT_PATTERN" ${SWA_WINDOWS:+--windows="$SWA_WINDOWS"})
fi
# The last checkpoint is evaluated with the averaged model's batch-norm
# treatment, so that the report's comparison isolates the averaging.
last_bn=moving
[[ "$SWA_BN" == recompute ]] && last_bn=recompute

# What follows a model's training (averaging, conversion, the evaluations
# that feed the report) runs in the background beside the next model's
# training; so do the uniform ensemble (beside the stacking) and the CSV
# (beside the report).
source run_scripts/background.sh

# One member after its training: SWA -> swa_dir, STORAGE -> bf16_dir (each
# skipped when its output exists), then the member's evaluation on the held-out
# files (--skip_evaluated: a rerun measures only what was not measured on them).
average_convert_evaluate() {  # train dir, swa dir, bf16 dir
  if [[ ! -d "$2" ]]; then
    "$PYTHON" -m swa.average --train_dir="$1" --output_dir="$2" \
      "${swa_window_flags[@]}" --bn_statistics="$SWA_BN" --train_data_pattern="$TRAIN_PATTERN" \
      --recompute_batches="${SWA_RECOMPUTE_BATCHES:-100}" --seed="$SEED"
  fi
  if [[ ! -d "$3" ]]; then
    "$PYTHON" -m bfloat16_patch.convert --input_dir="$2" --output_dir="$3" --dtype="$STORAGE"
  fi
  "$PYTHON" -m training.eval --train_dir="$3" --eval_data_pattern="$HELDOUT_PATTERN" \
    --run_once --skip_evaluated --batch_size=64 --seed="$SEED" --top_k="$TOP_K"
}

# A rerun with the fitting files moved stops here, naming every output whose
# choice read a file the report now measures (lib.sh).
ensemble_dir="$WORK_DIR/ensembled_models"
stacked_dir="$WORK_DIR/ensembled_models_stacked"
weights_file="$WORK_DIR/stacking_weights.json"
stop_on_stale_choices ensemble.report "$HELDOUT_PATTERN" "$WORK_DIR"/swa/* \
  "$WORK_DIR"/ensemble_models/* "$ensemble_dir" "$stacked_dir" "$weights_file"

members=()
train_dirs=()
for model in $MODELS; do
  train_dir="$WORK_DIR/train/$model"
  swa_dir="$WORK_DIR/swa/$model"
  bf16_dir="$WORK_DIR/ensemble_models/$model-$STORAGE"
  echo "=== $model: train -> $train_dir"
  # The preset's own script, or (a preset with only its record) train_model.sh.
  train_script=("run_scripts/$model.sh")
  [[ -f "${train_script[0]}" ]] || train_script=(run_scripts/train_model.sh "$model")
  # shellcheck disable=SC2046
  TRAIN_DIR="$train_dir" DATA_DIR="$DATA_DIR" "${train_script[@]}" \
    --train_data_pattern="$TRAIN_PATTERN" $(train_flags)
  # Averaging, conversion and the member's evaluation run in the background,
  # beside the next model's training (the ensemble waits for them).
  in_background "$model: SWA (window: $SWA_LAST_N) -> $STORAGE -> evaluation" \
    "$WORK_DIR/logs/$model-eval.log" average_convert_evaluate "$train_dir" "$swa_dir" "$bf16_dir"
  in_background "$model: the last checkpoint before averaging (BN statistics: $last_bn)" \
    "$WORK_DIR/logs/$model-last-checkpoint-eval.log" \
    "$PYTHON" -m training.eval --train_dir="$train_dir" --eval_data_pattern="$HELDOUT_PATTERN" \
    --run_once --skip_evaluated --batch_size=80 --seed="$SEED" --bn_statistics="$last_bn" \
    --top_k="$TOP_K" \
    --train_data_pattern="$TRAIN_PATTERN" --recompute_batches="${SWA_RECOMPUTE_BATCHES:-100}"
  members+=("$bf16_dir")
  train_dirs+=("$train_dir")
done

model_dirs=$(IFS=,; echo "${members[*]}")
build_ensemble() {  # output dir, extra ensemble.build flags...
  local output=$1
  shift
  "$PYTHON" -m ensemble.build --model_dirs="$model_dirs" --tile_num="$TILE_NUM" \
    ${TARGET_BYTES:+--target_bytes=$TARGET_BYTES} --output_dir="$output" \
    --eval_data_pattern="$HELDOUT_PATTERN" --seed="$ENSEMBLE_SEED" --top_k="$TOP_K" "$@"
}
wait_background   # every member's averaging and conversion done
# The uniform ensemble is built beside the stacking (both read only the
# members); the choice between them waits for both.
if [[ ! -d "$ensemble_dir" ]]; then
  in_background "uniform ensemble of ${#members[@]} models, tile $TILE_NUM -> $ensemble_dir" \
    "$WORK_DIR/logs/ensemble-uniform.log" build_ensemble "$ensemble_dir"
fi
if [[ "$STACKING" == 1 ]]; then
  if [[ ! -f "$weights_file" ]]; then
    echo "=== stacking: member weights fitted on the first half -> $weights_file"
    "$PYTHON" -m stacking.fit --model_dirs="$model_dirs" --data_pattern="$FIT_PATTERN" \
      --output_file="$weights_file" --tile_num="$TILE_NUM" --seed="$ENSEMBLE_SEED" \
      --top_k="$TOP_K"
  fi
  if [[ ! -d "$stacked_dir" ]]; then
    echo "=== stacked ensemble -> $stacked_dir"
    build_ensemble "$stacked_dir" --weights_file="$weights_file"
  fi
fi
wait_background   # the uniform ensemble
chosen=$ensemble_dir
report_flags=()
if [[ "$STACKING" == 1 ]]; then
  chosen=$("$PYTHON" -m ensemble.report --choose --ensemble_dir="$ensemble_dir" \
    --stacked_dir="$stacked_dir" --weights_file="$weights_file")
  report_flags=(--stacked_dir="$stacked_dir" --weights_file="$weights_file")
  echo "=== the CSV uses $chosen (the better ensemble on the fitting half)"
fi
# The CSV is written beside the report (which reads only evaluations).
if [[ ! -f "$SUBMISSION" ]]; then
  in_background "inference -> $SUBMISSION" "$WORK_DIR/logs/inference.log" \
    "$PYTHON" -m ensemble.inference --train_dir="$chosen" \
    --input_data_pattern="$TEST_PATTERN" --output_file="$SUBMISSION" --top_k="$TOP_K" \
    ${LABEL_NAMES:+--label_names="$LABEL_NAMES"}
fi
"$PYTHON" -m ensemble.report --data_pattern="$HELDOUT_PATTERN" --model_dirs="$model_dirs" --train_dirs="$(IFS=,; echo "${train_dirs[*]}")" \
  --ensemble_dir="$ensemble_dir" "${report_flags[@]}" \
  --output_json="$REPORT.json" --output_png="$REPORT.png"
wait_background   # the CSV
"$PYTHON" -m ensemble.check_submission --submission="$SUBMISSION" --num_classes="$NUM_CLASSES" \
  --top_k="$TOP_K"
echo "=== pipeline done in $(( SECONDS / 60 )) min $(( SECONDS % 60 )) s"
