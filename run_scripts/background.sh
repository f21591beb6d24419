#!/usr/bin/env bash
# Background jobs of a run script (sourced by pipeline.sh and quickstart.sh):
# a stage whose output the next command does not read runs beside it (each
# Python process spends seconds importing TensorFlow on one core), with its
# own log. wait_background stops the script when one of them failed, naming
# its log; on exit, a background job and the Python process it runs stop.
background_pids=()
background_logs=()
stop_background() {
  local pid children
  for pid in "${background_pids[@]}"; do
    children=$(pgrep -P "$pid" || true)
    # shellcheck disable=SC2086
    kill "$pid" $children 2> /dev/null || true
  done
}
trap 'if (( ${#background_pids[@]} )); then stop_background; fi' EXIT
in_background() {  # what, log file, command...
  echo "=== $1 (in the background, log: $2)"
  mkdir -p "$(dirname "$2")"
  "${@:3}" > "$2" 2>&1 &
  background_pids+=($!)
  background_logs+=("$2")
}
wait_background() {
  local i
  for i in "${!background_pids[@]}"; do
    if ! wait "${background_pids[$i]}"; then
      echo "error: a background stage failed; its log ${background_logs[$i]} ends with:" >&2
      tail -n 5 "${background_logs[$i]}" >&2
      exit 1
    fi
    # Its summary: an evaluation's GAP line or what it wrote (none when
    # PYTHON only records the calls).
    { grep -hE "GAP|^wrote " "${background_logs[$i]}" || true; } | tail -n 1 \
      | sed "s|^|$(basename "${background_logs[$i]}" .log): |"
  done
  background_pids=()
  background_logs=()
}
