# Helpers shared by the run scripts (sourced, not run).

# A path made absolute against the caller's directory (URLs such as gs:// kept),
# so the scripts can cd to the repository and still find the user's files.
absolute() { case "$1" in /* | *://*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }

# absolute() of every item of a comma-separated list.
absolute_list() {
  local out="" item
  local -a items
  IFS=, read -r -a items <<< "$1"
  for item in "${items[@]}"; do out="${out:+$out,}$(absolute "$item")"; done
  echo "$out"
}

# The files of pattern $1, sorted, split in two (a file is never split): the
# first FIT_FILES (default: half) -> FIT_PATTERN, on which every choice is
# made, the others -> HELDOUT_PATTERN, which only the report's evaluations
# read (comma-separated lists); NUM_PATTERN_FILES the count. Fewer than 2
# files: FIT_PATTERN empty, HELDOUT_PATTERN the pattern. $2 names the files.
split_fit_heldout() {  # pattern, what the files are
  local -a files
  mapfile -t files < <(compgen -G "$1" | sort || true)
  NUM_PATTERN_FILES=${#files[@]}
  FIT_PATTERN=
  HELDOUT_PATTERN=$1
  (( ${#files[@]} >= 2 )) || return 0
  local fit=${FIT_FILES:-$(( ${#files[@]} / 2 ))}
  if (( fit < 1 || fit >= ${#files[@]} )); then
    echo "error: FIT_FILES=$fit: must leave at least one of the ${#files[@]} $2 files on each side" >&2
    exit 2
  fi
  FIT_PATTERN=$(IFS=,; echo "${files[*]:0:fit}")
  HELDOUT_PATTERN=$(IFS=,; echo "${files[*]:fit}")
  echo "=== $2: choices fit on ${fit} file(s), the report measures the other $(( ${#files[@]} - fit ))"
}

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON=${PYTHON:-python}

# A rerun whose fitting files moved (another FIT_FILES or validation set):
# every existing output (dirs, and a weights file) holding a choice that read
# a file now held out is named in one line by the report ($1: its module,
# --check_choices) and the run stops before any work; a choice made on files
# still fitting is kept. $2: the held-out pattern; then the outputs, absent
# ones skipped.
stop_on_stale_choices() {  # report module, held-out pattern, outputs...
  local module=$1 heldout=$2 path
  local -a dirs=() files=()
  shift 2
  for path in "$@"; do
    if [[ -d "$path" ]]; then dirs+=("$path"); elif [[ -f "$path" ]]; then files+=("$path"); fi
  done
  (( ${#dirs[@]} + ${#files[@]} )) || return 0
  "$PYTHON" -m "$module" --check_choices --data_pattern="$heldout" \
    ${dirs[0]:+--model_dirs="$(IFS=,; echo "${dirs[*]}")"} ${files[0]:+--weights_file="${files[0]}"}
}
