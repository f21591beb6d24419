#!/usr/bin/env bash
# Trains one model on a local cluster of parameter servers and workers
# (TensorFlow's distributed runtime, between-graph replication), all on this
# machine's loopback. On real machines run the same `python -m training.train`
# command on each host with its own TF_CONFIG (same cluster, its own task).
# Usage: TRAIN_DIR=... DATA_DIR=... NUM_WORKERS=2 ./run_scripts/distributed_local.sh [train flags]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-/path/to/yt8m/frame}
TRAIN_DIR=${TRAIN_DIR:-$HOME/yt8m_models/distributed}
NUM_PS=${NUM_PS:-1}
NUM_WORKERS=${NUM_WORKERS:-2}
BASE_PORT=${BASE_PORT:-22220}
PYTHON=${PYTHON:-python}
LOG_DIR=${LOG_DIR:-$TRAIN_DIR/cluster_logs}
mkdir -p "$LOG_DIR"

hosts() {  # hosts COUNT OFFSET -> "127.0.0.1:p1","127.0.0.1:p2"
  local out=() i
  for ((i = 0; i < $1; i++)); do out+=("\"127.0.0.1:$((BASE_PORT + $2 + i))\""); done
  (IFS=,; echo "${out[*]}")
}
cluster="{\"ps\": [$(hosts "$NUM_PS" 0)], \"worker\": [$(hosts "$NUM_WORKERS" "$NUM_PS")]}"
start_task() {  # start_task TYPE INDEX [flags]
  local type=$1 index=$2; shift 2
  TF_CONFIG="{\"cluster\": $cluster, \"task\": {\"type\": \"$type\", \"index\": $index}}" \
    CUDA_VISIBLE_DEVICES="" "$PYTHON" -m training.train --train_dir="$TRAIN_DIR" \
    --train_data_pattern="$DATA_DIR/train*.tfrecord" "$@" >"$LOG_DIR/$type$index.log" 2>&1 &
}
ps_pids=()
for ((i = 0; i < NUM_PS; i++)); do start_task ps "$i" "$@"; ps_pids+=("$!"); done
trap 'kill "${ps_pids[@]}" 2>/dev/null || true' EXIT
worker_pids=()
for ((i = 0; i < NUM_WORKERS; i++)); do start_task worker "$i" "$@"; worker_pids+=("$!"); done
status=0
for pid in "${worker_pids[@]}"; do wait "$pid" || status=$?; done
echo "workers finished (status $status); logs in $LOG_DIR"
exit "$status"
