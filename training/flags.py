"""Command-line flags: the one place where a flag that several stages share is
defined, and the comma-separated list parser every flag uses.

Each entry point defines its flags once, in its own ``define_flags()``, run
only under ``__main__``: shared flags through ``define_shared(name, default)``
with the stage's default passed explicitly (the help text lives here), the
stage's own flags through ``define``. A flag defined twice in one process is a
programming error (absl raises DuplicateFlagError); nothing is silently
skipped. Every flag is attributed to the running entry point, so ``--help``
lists exactly the flags of the command being run.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Dict, List, Mapping, Tuple

from absl import flags

from training import paths
from training.cli import UserError, add_preflight_check

FLAGS = flags.FLAGS

# name, type, help: every flag that more than one entry point defines.
_SHARED_TABLE = """
train_dir             string   Model dir: a train dir, or a dir with model_flags.json and
                               model.ckpt-* (SWA, bfloat16) or inference_model.*.
train_data_pattern    string   Comma-separated globs of training TFRecords.
eval_data_pattern     string   Comma-separated globs of labelled evaluation TFRecords.
input_data_pattern    string   Comma-separated globs of the TFRecords to read.
output_dir            string   New dir to write (atomically).
output_file           string   File to write (atomically).
model_dirs            string   Comma-separated member model dirs (model_flags.json +
                               model.ckpt-*, float32, bfloat16 or int8).
checkpoint_file       string   A checkpoint prefix (default: the latest model.ckpt-* of the dir).
num_classes           integer  Number of classes.
record_kind           string   The records' layout (training.record_layouts): frame or video
                               (2018 frame- or video-level), segment (2019 segment-rated),
                               frame2017 or video2017 (2017: id under video_id, 4716 classes).
segment_labels        bool     2019 segment-rated records: the same as --record_kind=segment.
batch_size            integer  Videos per batch.
num_readers           integer  TFRecord files read in parallel.
seed                  integer  Graph-level random seed (initialisation, data order, frame
                               sampling).
top_k                 integer  k of GAP@k; label score pairs per video.
tile_num              integer  Copies of the batch that the frame-sampling members see
                               (independent random draws).
frame_sampling        string   Override the models' frame sampling: random (the original),
                               uniform (deterministic) or none.
bf16_compute          string   How bfloat16 checkpoints compute: cast_each_step, cast_at_load or
                               bfloat16 (default: bfloat16 on CPUs with native bf16 products,
                               else cast_at_load).
skip_corrupt_records  bool     Skip the damaged rest of corrupt or truncated TFRecord files
                               (default: stop with an error).
compression           string   Compression of the TFRecord files: auto (detected per file from
                               its first bytes), none, gzip or zlib.
overwrite             bool     Replace an existing output.
target_bytes          integer  Store the fewest, largest matrices as int8 (training.quantize) that
                               bring the output under this many bytes (default: none).
int8_min_values       integer  Matrices with at least this many values may be stored as int8.
recompute_batches     integer  Training batches (of --batch_size, from --train_data_pattern) on
                               which --bn_statistics=recompute recomputes the BN statistics.
label_names           string   A vocabulary CSV (columns Index and Name, or label_id and
                               label_name): also write each video's top 5 labels with their
                               names to <output_file without .csv>.top5.tsv.
weights_file          string   JSON {"members": [dir, ...], "weights": [...]} as written by
                               stacking.fit.
"""
_DEFINERS_BY_TYPE: Dict[str, Callable] = {
    "string": flags.DEFINE_string, "integer": flags.DEFINE_integer, "bool": flags.DEFINE_bool}


def _parse_table(table: str) -> Dict[str, Tuple[Callable, str]]:
    """{name: (definer, help)} of a table of `name type help` rows (an
    indented line continues the help of the row above)."""
    rows: Dict[str, Tuple[Callable, str]] = {}
    name = ""
    for line in table.strip("\n").splitlines():
        if line.startswith(" "):
            definer, text = rows[name]
            rows[name] = (definer, f"{text} {line.strip()}")
        else:
            name, kind, text = line.split(None, 2)
            rows[name] = (_DEFINERS_BY_TYPE[kind], text)
    return rows


SHARED_FLAGS: Dict[str, Tuple[Callable, str]] = _parse_table(_SHARED_TABLE)

# The path kind (training.paths) of each shared path flag; a stage that uses
# one differently passes path= (training.train: its --train_dir is written).
SHARED_PATH_KINDS: Dict[str, str] = {
    "train_dir": paths.IN_DIR, "train_data_pattern": paths.IN_PATTERN,
    "eval_data_pattern": paths.IN_PATTERN, "input_data_pattern": paths.IN_PATTERN,
    "output_dir": paths.OUT_DIR, "output_file": paths.OUT_FILE, "model_dirs": paths.IN_DIRS,
    "checkpoint_file": paths.IN_CHECKPOINT, "label_names": paths.IN_FILE,
    "weights_file": paths.IN_FILE}

# {flag: path kind} of the running entry point's path flags, in definition
# order; every one is checked before its main runs (check_path_flags).
PATH_FLAGS: Dict[str, str] = {}


def check_path_flags() -> None:
    """training.paths.check of every path flag of the running entry point."""
    paths.check_all(PATH_FLAGS, {name: FLAGS[name].value for name in PATH_FLAGS})


add_preflight_check(check_path_flags)


def define(definer: Callable, name: str, default: Any, help_text: str,
           path: str | None = None, **kwargs: Any) -> None:
    """Defines one flag of the running entry point (kwargs: e.g. enum_values).
    path: the kind of path it holds (training.paths: IN_FILE, OUT_DIR, ...)."""
    definer(name, default, help=help_text, module_name=sys.argv[0], **kwargs)
    if path is not None:
        PATH_FLAGS[name] = path


def define_shared(name: str, default: Any, note: str = "", path: str | None = None) -> None:
    """Defines a shared flag with this stage's default (note: extra help text;
    path: its path kind when not the usual, SHARED_PATH_KINDS)."""
    definer, help_text = SHARED_FLAGS[name]
    define(definer, name, default, f"{help_text} {note}".strip(),
           path=path or SHARED_PATH_KINDS.get(name))


def define_shared_flags(defaults: Mapping[str, Any]) -> None:
    """define_shared for each {name: default} (or {name: (default, note)}, or
    {name: (default, note, path kind)})."""
    for name, value in defaults.items():
        default, note, *kind = value if isinstance(value, tuple) else (value, "")
        define_shared(name, default, note, path=kind[0] if kind else None)


def require(**values: Any) -> None:
    """A UserError `--<name>: required` for the first empty value (in order)."""
    for name, value in values.items():
        if value is None or value == "":
            raise UserError(f"--{name}: required")


def comma_list(value: Any) -> List[str]:
    """'a, b,,c' -> ['a', 'b', 'c']; a list or tuple is returned as strings."""
    if isinstance(value, (list, tuple)):
        return [str(item).strip() for item in value]
    return [item.strip() for item in str(value or "").split(",") if item.strip()]


def comma_numbers(value: Any, flag: str, kind: type = float) -> List[Any]:
    """comma_list converted by `kind`; a UserError naming --flag otherwise."""
    items = comma_list(value)
    try:
        return [kind(item) for item in items]
    except ValueError:
        noun = "integers" if kind is int else "numbers"
        raise UserError(f"--{flag}: not a comma-separated list of {noun}: {value!r}") from None
