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

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON=${PYTHON:-python}
