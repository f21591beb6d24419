#!/usr/bin/env bash
# The main job end to end on synthetic YT8M data made on the spot:
# the six models (tiny sizes) -> SWA -> bfloat16 -> tiled ensemble -> CSV,
# checked, with the validation GAP of every model and of the ensemble.
# Sets up ./.venv on first use. Output: $WORK_DIR (default ./quickstart_output).
set -euo pipefail
cd "$(dirname "$0")/.."
source run_scripts/setup_env.sh
WORK_DIR=${WORK_DIR:-$PWD/quickstart_output}
NUM_CLASSES=${NUM_CLASSES:-200}
data="$WORK_DIR/data"
seg="$WORK_DIR/segment_data"
# The synthetic splits (and the 2019 segment-rated ones of the end) are
# independent: written side by side.
source run_scripts/background.sh
synthetic_flags=(--num_classes="$NUM_CLASSES" --min_frames=30 --max_frames=120 --seed=1)
if [[ ! -d "$data/frame" ]]; then
  for split in "train 8 128" "validate 6 192" "test 2 128 --with_labels=false"; do
    read -r name shards videos extra <<< "$split"
    in_background "synthetic $name split -> $data" "$WORK_DIR/logs/synthetic-$name.log" \
      "$PYTHON" -m training.synthetic --output_dir="$data" --split="$name" \
      --num_shards="$shards" --videos_per_shard="$videos" "${synthetic_flags[@]}" ${extra:+"$extra"}
  done
fi
if [[ ! -d "$seg/segments" ]]; then
  # Rated validation files (half fit the 2019 choices, half are held out for
  # its report) and a test split without ratings, as the 2019 test data.
  for split in "validate 8 32" "test 2 32 --with_ratings=false"; do
    read -r name shards videos extra <<< "$split"
    in_background "synthetic 2019 segment $name split -> $seg" \
      "$WORK_DIR/logs/synthetic-segments-$name.log" \
      "$PYTHON" -m training.synthetic_segments --output_dir="$seg" --split="$name" \
      --num_shards="$shards" --videos_per_shard="$videos" "${synthetic_flags[@]}" ${extra:+"$extra"}
  done
fi
wait_background
# Short runs leave the batch-norm moving averages (decay 0.999) far from the
# data's statistics, so SWA recomputes them on training batches. The first 2
# validation files (384 videos) fit every choice; the other 4 (768) are held
# out for the report. The averaging tail is 100 steps (the tiny preset's 200
# halved, for time); windows: 1 (the last checkpoint) or 4 (its last 40 steps).
SWA_TAIL_STEPS=${SWA_TAIL_STEPS:-100} SWA_WINDOWS=${SWA_WINDOWS:-1,4} \
  SWA_BN=recompute SWA_RECOMPUTE_BATCHES=20 FIT_FILES=2 \
  TINY=1 DATA_DIR="$data/frame" WORK_DIR="$WORK_DIR" NUM_CLASSES="$NUM_CLASSES" \
  SUBMISSION="$WORK_DIR/submission.csv" run_scripts/pipeline.sh
# The 2019 path (docs/segments.md) on segment-rated data of the same
# prototypes: each averaged member fine-tuned on the rated segments of the
# fitting files -> averaged -> bfloat16 -> ensembles -> the refined 2019
# submission of the test split, checked, and the report on the held-out files.
SEGMENT_PATTERN="$seg/segments/validate*.tfrecord" SEGMENT_TEST_PATTERN="$seg/segments/test*.tfrecord" \
  VIDEO_DIR_OF="$WORK_DIR/swa" VIDEO_ENSEMBLE_DIR="$WORK_DIR/ensembled_models" \
  REFINE_TOP_K=${REFINE_TOP_K:-20} FINETUNE_FLAGS=${FINETUNE_FLAGS:-"--max_steps=60 --save_checkpoint_steps=10 --batch_size=32 --base_learning_rate=3e-3"} \
  SWA_WINDOWS=${SEGMENT_SWA_WINDOWS:-1,3} WORK_DIR="$WORK_DIR" NUM_CLASSES="$NUM_CLASSES" \
  SUBMISSION="$WORK_DIR/segment_submission.csv" run_scripts/segments_pipeline.sh
