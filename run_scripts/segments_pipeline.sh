#!/usr/bin/env bash
# The 2019 challenge (YouTube-8M Segments) with the video-level members of
# pipeline.sh: for each model, fine-tune on the rated segments of the fitting
# segment files -> average the fine-tuned checkpoints (the window chosen on
# the fitting files by Segment MAP) -> bfloat16; then the ensemble of the
# fine-tuned members (uniform, and stacked on the fitting files), the refined
# 2019 submission of the test split (every 5-frame segment, Class,Segments),
# checked, and the report (Segment MAP with intervals on the held-out segment
# files). Every stage is skipped when its output exists, so a rerun continues.
#
# On a GPU box, after pipeline.sh: point SEGMENT_PATTERN at the rated 2019
# validation records (3/frame/validate*.tfrecord) and SEGMENT_TEST_PATTERN at
# the 2019 test records (3/frame/test*.tfrecord); docs/segments.md.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK_DIR=${WORK_DIR:-$HOME/yt8m_work}
PYTHON=${PYTHON:-python}
MODELS=${MODELS:-$("$PYTHON" -m models.presets)}
# The video-level members (pipeline.sh's averaged dirs) and the video-level
# ensemble (the refinement's model, and the baseline row of the report).
VIDEO_DIR_OF=${VIDEO_DIR_OF:-$WORK_DIR/swa}           # <VIDEO_DIR_OF>/<model>
VIDEO_ENSEMBLE_DIR=${VIDEO_ENSEMBLE_DIR:-$WORK_DIR/ensembled_models}
SEGMENT_PATTERN=${SEGMENT_PATTERN:-/path/to/yt8m/3/frame/validate*.tfrecord}
SEGMENT_TEST_PATTERN=${SEGMENT_TEST_PATTERN:-/path/to/yt8m/3/frame/test*.tfrecord}
SEGMENT_LABEL_IDS=${SEGMENT_LABEL_IDS:-}   # segment_label_ids.csv (header Index); none: every class
SEGMENT_MAX_PRED=${SEGMENT_MAX_PRED:-100000}
# Skip the never-rated positions of the test videos (the first 6 and last 2 segments).
SKIP_UNRATED=${SKIP_UNRATED:-1}
# Refinement: keep a segment's classes among its video's top REFINE_TOP_K
# video-level classes (of VIDEO_ENSEMBLE_DIR); 0 turns it off.
REFINE_TOP_K=${REFINE_TOP_K:-20}
FINETUNE_FLAGS=${FINETUNE_FLAGS:-}         # extra segment_finetune.train flags
SWA_WINDOWS=${SWA_WINDOWS:-}
STORAGE=${STORAGE:-bfloat16}
TILE_NUM=${TILE_NUM:-10}
NUM_CLASSES=${NUM_CLASSES:-3862}
SEED=${SEED:-2018}
ENSEMBLE_SEED=${ENSEMBLE_SEED:-666}
FIT_FILES=${FIT_FILES:-}                   # default: half of the rated files
SEGMENT_WORK=${SEGMENT_WORK:-$WORK_DIR/segments}
SUBMISSION=${SUBMISSION:-$WORK_DIR/segment_submission.csv}
REPORT=${REPORT:-${SUBMISSION%.csv}.report}
export PYTHON

# The rated files, sorted: the first FIT_FILES fit every choice (fine-tuning,
# windows, weights, uniform or stacked), the others are held out for the report.
source run_scripts/lib.sh
split_fit_heldout "$SEGMENT_PATTERN" "rated segment"
if [[ -z "$FIT_PATTERN" ]]; then
  echo "error: SEGMENT_PATTERN=$SEGMENT_PATTERN matches $NUM_PATTERN_FILES file(s); the 2019 path fits on some rated files and reports on the others: give 2 or more" >&2
  exit 2
fi

refine_flags=()
if (( REFINE_TOP_K > 0 )); then
  refine_flags=(--segment_refine_top_k="$REFINE_TOP_K" --segment_refine_model_dir="$VIDEO_ENSEMBLE_DIR")
fi
segment_eval_on() {  # files, dir, extra training.eval flags...
  "$PYTHON" -m training.eval --train_dir="$2" --eval_data_pattern="$1" \
    --run_once --skip_evaluated --segment_labels --batch_size=64 --seed="$SEED" "${@:3}"
}
segment_eval() { segment_eval_on "$HELDOUT_PATTERN" "$@"; }  # dir, extra flags...

source run_scripts/background.sh

# One member after its fine-tuning: SWA (window chosen on the fitting files by
# Segment MAP) -> STORAGE, then the held-out evaluations of its three states.
average_convert_evaluate() {  # model, video dir, fine-tune dir, swa dir, member dir
  if [[ ! -d "$4" ]]; then
    "$PYTHON" -m swa.average --train_dir="$3" --output_dir="$4" --segment_labels \
      --choose_window_on="$FIT_PATTERN" ${SWA_WINDOWS:+--windows="$SWA_WINDOWS"} --seed="$SEED"
  fi
  if [[ ! -d "$5" ]]; then
    "$PYTHON" -m bfloat16_patch.convert --input_dir="$4" --output_dir="$5" --dtype="$STORAGE"
  fi
  segment_eval "$2"
  segment_eval "$3"
  # (with refinement: its per-rating record also gives the unrefined row)
  segment_eval "$5" "${refine_flags[@]}"
}

# A rerun with the fitting files moved stops here, naming every output whose
# choice (fine-tuning included) read a file the report now measures (lib.sh).
ensemble_dir="$SEGMENT_WORK/ensembled_models"
stacked_dir="$SEGMENT_WORK/ensembled_models_stacked"
weights_file="$SEGMENT_WORK/stacking_weights.json"
stop_on_stale_choices ensemble.segment_report "$HELDOUT_PATTERN" "$SEGMENT_WORK"/finetune/* \
  "$SEGMENT_WORK"/swa/* "$SEGMENT_WORK"/members/* "$ensemble_dir" "$stacked_dir" "$weights_file"

members=()
video_dirs=()
finetuned_dirs=()
for model in $MODELS; do
  video_dir="$VIDEO_DIR_OF/$model"
  finetune_dir="$SEGMENT_WORK/finetune/$model"
  swa_dir="$SEGMENT_WORK/swa/$model"
  member_dir="$SEGMENT_WORK/members/$model-$STORAGE"
  echo "=== $model: fine-tune on the rated segments -> $finetune_dir"
  # shellcheck disable=SC2086
  SOURCE_DIR="$video_dir" TRAIN_DIR="$finetune_dir" TRAIN_PATTERN="$FIT_PATTERN" \
    run_scripts/segment_finetune.sh --seed="$SEED" $FINETUNE_FLAGS
  in_background "$model: SWA on segments -> $STORAGE -> held-out Segment MAP" \
    "$WORK_DIR/logs/segments-$model.log" \
    average_convert_evaluate "$model" "$video_dir" "$finetune_dir" "$swa_dir" "$member_dir"
  members+=("$member_dir")
  video_dirs+=("$video_dir")
  finetuned_dirs+=("$finetune_dir")
done
wait_background

model_dirs=$(IFS=,; echo "${members[*]}")
build_ensemble() {  # output dir, extra ensemble.build flags...
  if [[ ! -d "$1" ]]; then
    "$PYTHON" -m ensemble.build --model_dirs="$model_dirs" --tile_num="$TILE_NUM" \
      --output_dir="$1" --seed="$ENSEMBLE_SEED" "${@:2}"
  fi
  segment_eval "$1" "${refine_flags[@]}"
}
in_background "the video-level ensemble's held-out Segment MAP" \
  "$WORK_DIR/logs/segments-video-ensemble.log" segment_eval "$VIDEO_ENSEMBLE_DIR" "${refine_flags[@]}"
in_background "uniform ensemble of the fine-tuned members -> $ensemble_dir" \
  "$WORK_DIR/logs/segments-ensemble-uniform.log" build_ensemble "$ensemble_dir"
if [[ ! -f "$weights_file" ]]; then
  echo "=== stacking on the fitting segment files -> $weights_file"
  "$PYTHON" -m stacking.fit --segment_labels --model_dirs="$model_dirs" \
    --data_pattern="$FIT_PATTERN" --output_file="$weights_file" --tile_num="$TILE_NUM" \
    --seed="$ENSEMBLE_SEED"
fi
build_ensemble "$stacked_dir" --weights_file="$weights_file"
wait_background
chosen=$("$PYTHON" -m ensemble.segment_report --choose --ensemble_dir="$ensemble_dir" \
  --stacked_dir="$stacked_dir" --weights_file="$weights_file")
echo "=== the 2019 submission uses $chosen (the better ensemble on the fitting files)"
# Refinement too is chosen on the fitting files: the submission refines only
# when the chosen ensemble's refined Segment MAP on them beats the unrefined one.
submission_refine=()
report_refine=()
if (( REFINE_TOP_K > 0 )); then
  segment_eval_on "$FIT_PATTERN" "$chosen" "${refine_flags[@]}"
  refine_k=$("$PYTHON" -m ensemble.segment_report --choose_refinement --ensemble_dir="$chosen" \
    --fit_data_pattern="$FIT_PATTERN" --refine_top_k="$REFINE_TOP_K" \
    --refine_model_dir="$VIDEO_ENSEMBLE_DIR")
  echo "=== the 2019 submission refines with top $refine_k video-level classes (0: not at all; chosen on the fitting files)"
  if (( refine_k > 0 )); then submission_refine=("${refine_flags[@]}"); fi
  report_refine=(--refine_top_k="$REFINE_TOP_K" --refine_model_dir="$VIDEO_ENSEMBLE_DIR"
                 --fit_data_pattern="$FIT_PATTERN")
fi
submission_flags=(--segment_max_pred="$SEGMENT_MAX_PRED" ${SEGMENT_LABEL_IDS:+--segment_label_ids_file="$SEGMENT_LABEL_IDS"})
if [[ ! -f "$SUBMISSION" ]]; then
  in_background "2019 submission of the test split -> $SUBMISSION" \
    "$WORK_DIR/logs/segments-inference.log" \
    "$PYTHON" -m ensemble.inference --train_dir="$chosen" --segment_labels \
    --input_data_pattern="$SEGMENT_TEST_PATTERN" --output_file="$SUBMISSION" \
    "${submission_flags[@]}" "${submission_refine[@]}" \
    $( (( SKIP_UNRATED )) && echo --skip_unrated_positions )
fi
"$PYTHON" -m ensemble.segment_report --data_pattern="$HELDOUT_PATTERN" \
  --video_dirs="$(IFS=,; echo "${video_dirs[*]}")" \
  --finetuned_dirs="$(IFS=,; echo "${finetuned_dirs[*]}")" --model_dirs="$model_dirs" \
  "${report_refine[@]}" \
  --video_ensemble_dir="$VIDEO_ENSEMBLE_DIR" --ensemble_dir="$ensemble_dir" \
  --stacked_dir="$stacked_dir" --weights_file="$weights_file" \
  --output_json="$REPORT.json" --output_png="$REPORT.png"
wait_background
"$PYTHON" -m ensemble.segment_submission --submission="$SUBMISSION" \
  --num_classes="$NUM_CLASSES" "${submission_flags[@]}"
echo "=== 2019 segments done in $(( SECONDS / 60 )) min $(( SECONDS % 60 )) s"
