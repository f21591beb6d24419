#!/usr/bin/env bash
# The main job on real label structure: frame-level records derived from the
# real YouTube-8M 2018 video-level sample in SAMPLE_DIR (default
# ../shared/data/yt8m-2018-video-sample; YouTube-8M is CC BY 4.0) (real ids, 3862-class labels
# and mean features; frames varying around each real mean:
# training.frames_from_videos), then pipeline.sh at the tiny sizes. Train: 3
# files (839 videos); validation: 3 files, the first (301 videos) to fit every
# choice on, the other two (551 videos) held out for the report; test: the last
# file without its labels. Output: $WORK_DIR (default ./real_labels_output).
set -euo pipefail
cd "$(dirname "$0")/.."
source run_scripts/setup_env.sh
WORK_DIR=${WORK_DIR:-$PWD/real_labels_output}
sample=${SAMPLE_DIR:-$PWD/../shared/data/yt8m-2018-video-sample}
if [[ ! -f "$sample/validate2L.tfrecord" ]]; then
  echo "error: SAMPLE_DIR=$sample: no validate2L.tfrecord; point SAMPLE_DIR at the YT8M 2018 video-level sample (its six validate*.tfrecord files and label_names_2018.csv)" >&2
  exit 2
fi
data="$WORK_DIR/data"
if [[ ! -d "$data/frame" ]]; then
  derive() {  # split, files..., then flags after --
    local split=$1
    shift
    local files=()
    while [[ "$1" != -- ]]; do files+=("$sample/$1"); shift; done
    shift
    "$PYTHON" -m training.frames_from_videos --input_pattern="$(IFS=,; echo "${files[*]}")" \
      --output_dir="$data" --split="$split" "$@"
  }
  derive train validate2L.tfrecord validate3227.tfrecord validateEZ.tfrecord --
  derive validate validateoR.tfrecord validater7.tfrecord validatezQ.tfrecord --
  derive test validatezQ.tfrecord -- --with_labels=false
fi
SWA_BN=recompute SWA_RECOMPUTE_BATCHES=20 SWA_WINDOWS=${SWA_WINDOWS:-1,2,4} TINY=1 FIT_FILES=1 DATA_DIR="$data/frame" \
  WORK_DIR="$WORK_DIR" NUM_CLASSES=3862 LABEL_NAMES="$sample/label_names_2018.csv" \
  SUBMISSION="$WORK_DIR/submission.csv" exec run_scripts/pipeline.sh
