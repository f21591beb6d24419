"""Files shared by every stage: model_flags.json, checkpoint listing, atomic writes.

A stage dir (train dir, SWA dir, bf16 dir, ensemble dir) always holds a
model_flags.json that is enough to rebuild the model graph exactly.
"""
from __future__ import annotations

import errno
import glob
import json
import math
import os
import re
import secrets
import shutil
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from models import tf_compat
from training import cli, locks
from training.cli import UserError, first_line
from training.model_flags import ModelFlags

MODEL_FLAGS_FILE = "model_flags.json"
CHECKPOINT_PREFIX = "model.ckpt"


def atomic_write_text(path: str, text: str) -> None:
    """Writes a file through a temporary name in the same dir and renames it
    (see atomic_file: a killed writer's temporary file is removed next time;
    a live writer of the same file is waited for, not refused)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_file(path, overwrite=True, wait=True) as tmp_path:
        with open(tmp_path, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())


def write_json(path: str, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def load_json(path: str, label: str) -> Any:
    """Parses a JSON file; a bad file is a UserError starting with `label`."""
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError) as err:
        raise UserError(f"{label}: not valid JSON ({err})") from None


def json_kind(value: Any) -> str:
    """'a list', 'a string', 'a number', ... of a parsed JSON value."""
    if value is None or isinstance(value, bool):
        return "null" if value is None else "a boolean"
    kinds: Dict[type, str] = {dict: "an object", list: "a list", str: "a string"}
    return kinds.get(type(value), "a number")


def write_model_flags(directory: str, model_flags: ModelFlags) -> None:
    """<directory>/model_flags.json (atomically, sorted keys)."""
    write_json(os.path.join(directory, MODEL_FLAGS_FILE), model_flags.to_json())


def read_model_flags(directory: str) -> ModelFlags:
    """<directory>/model_flags.json; a missing or bad file (not JSON, not an
    object, a missing or unknown key) is a one-line UserError naming it."""
    path = os.path.join(directory, MODEL_FLAGS_FILE)
    if not os.path.isfile(path):
        raise UserError(f"{path}: missing; is {directory} a model dir written by this pipeline?")
    payload = load_json(path, path)
    if not isinstance(payload, dict):
        raise UserError(f"{path}: expected a JSON object of model flags, found "
                        f"{json_kind(payload)}")
    return ModelFlags.from_json(payload, path)


def checkpoint_step(path: str) -> Optional[int]:
    match = re.search(r"-(\d+)(?:\.index)?$", path)
    return int(match.group(1)) if match else None


def list_checkpoints(directory: str, prefix: str = CHECKPOINT_PREFIX
                     ) -> List[Tuple[int, str]]:
    """[(step, checkpoint path prefix)] of complete checkpoints, by step.

    A checkpoint counts when its .index file exists (TensorFlow writes the
    index last, after the data files).
    """
    found: List[Tuple[int, str]] = []
    if not os.path.isdir(directory):
        return found
    pattern = re.compile(re.escape(prefix) + r"-(\d+)\.index$")
    for name in os.listdir(directory):
        match = pattern.match(name)
        if match:
            found.append((int(match.group(1)), os.path.join(directory, name[:-len(".index")])))
    return sorted(found)


def latest_checkpoint(directory: str, prefix: str = CHECKPOINT_PREFIX) -> Optional[str]:
    checkpoints = list_checkpoints(directory, prefix)
    return checkpoints[-1][1] if checkpoints else None


def open_checkpoint(path: str) -> "CheckpointReader":
    """The reader of a checkpoint, after verify_checkpoint's checks: a
    damaged checkpoint is a one-line UserError naming the file."""
    return verify_checkpoint(path)


def checkpoint_in_dir(directory: str) -> Optional[str]:
    """The latest complete checkpoint of a dir, None when it holds none; a
    `checkpoint` state file naming a missing checkpoint, or (with no complete
    checkpoint) data files without their index, are a UserError."""
    check_state_file(directory)
    latest = latest_checkpoint(directory)
    if latest is None:
        orphans = [path.rsplit(".data-", 1)[0] for path in glob.glob(os.path.join(
            glob.escape(directory), f"{CHECKPOINT_PREFIX}-*.data-*"))]
        if orphans:
            raise UserError(_index_missing(max(orphans, key=lambda p: checkpoint_step(p) or 0)))
    return latest


def find_checkpoint(path: str) -> str:
    """A checkpoint prefix from a dir (its latest model.ckpt-*) or a prefix."""
    if os.path.isdir(path):
        latest = checkpoint_in_dir(path)
        if latest is None:
            raise UserError(f"{path}: no {CHECKPOINT_PREFIX}-<step> checkpoint in this dir")
        return latest
    if not os.path.isfile(path + ".index"):
        raise UserError(_index_missing(path))
    return path


# ---------------------------------------------------------------------------
# Damaged checkpoints: one line naming the file and what is wrong with it
#
# A (V2) checkpoint <prefix> is <prefix>.index, a table of every tensor's
# dtype, shape, shard, offset, size and CRC32C, and the data files
# <prefix>.data-0000i-of-0000N, which hold the tensors' bytes back to back
# (this TensorFlow's writer adds no alignment padding; a string tensor is its
# varint lengths, a 4-byte checksum and the bytes). verify_checkpoint does
# the cheap checks before any graph is built; read_failure names what only
# reading finds (a checksum mismatch) and the damage TensorFlow reports.

STATE_FILE = "checkpoint"
_DATA_RE = re.compile(r"\.data-(\d{5})-of-(\d{5})$")
_INEXACT_DTYPES = ("string", "variant", "resource")
# What TensorFlow says about an index it cannot read.
_INDEX_DAMAGE = ("not an sstable", "too short to be an sstable", "block checksum mismatch",
                 "corrupted compressed block", "bad block", "Unable to read file")
# Tensors read to tell a truncated data file or a damaged spot from another
# checkpoint's index (_checksum_failures).
PROBED_SHORT, PROBED_MISMATCH = 16, 3


def _index_missing(prefix: str) -> str:
    data = data_files(prefix)
    there = f" ({os.path.basename(data[0])} is there without it)" if data else ""
    return f"{prefix}.index: missing, no such checkpoint{there}"


def data_files(prefix: str) -> List[str]:
    """The data files of the checkpoint `prefix` that exist, sorted."""
    return sorted(path for path in glob.glob(glob.escape(prefix) + ".data-*")
                  if _DATA_RE.search(path[len(prefix):]))


def _reason(err: BaseException) -> str:
    """TensorFlow's own line in an error (a restore op's message follows its
    "Node: '...'" line, after the graph trace)."""
    lines = [line.strip() for line in str(getattr(err, "message", None) or err).splitlines()]
    nodes = [index for index, line in enumerate(lines) if line.startswith("Node: ")]
    after = [line for line in lines[nodes[-1] + 1:] if line] if nodes else []
    return after[0] if after else first_line(err)


class CheckpointReader:
    """tf.train.load_checkpoint's reader whose get_tensor reports a damaged
    data file in one line (read_failure); everything else is the reader's."""

    def __init__(self, prefix: str, reader: Any):
        self.prefix, self._reader = prefix, reader

    def get_tensor(self, key: str) -> Any:
        tf = tf_compat.tf
        try:
            return self._reader.get_tensor(key)
        except (tf.errors.OpError, IndexError, ValueError, RuntimeError) as err:
            raise UserError(read_failure(err, self.prefix)
                            or f"{self.prefix}: cannot read {key} ({_reason(err)})") from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)


def expected_data_bytes(shapes: Dict[str, Any], dtypes: Dict[str, Any]) -> Tuple[int, bool]:
    """(bytes of the data files an index describes, exact?): a string tensor
    counts one length byte per element and the 4-byte checksum, a lower bound."""
    tf = tf_compat.tf
    total, exact = 0, True
    for key, shape in shapes.items():
        dtype = tf.as_dtype(dtypes[key]).base_dtype
        count = math.prod(int(dim) for dim in shape)
        if dtype.name in _INEXACT_DTYPES:
            total, exact = total + (count + 4 if count else 0), False
        else:
            total += count * dtype.size
    return total, exact


def _smallest_keys(reader: Any) -> List[str]:
    shapes = reader.get_variable_to_shape_map()
    return sorted(shapes, key=lambda key: (math.prod(int(d) for d in shapes[key]), key))


def _checksum_failures(prefix: str, count: int) -> Tuple[int, int]:
    """(tensors read, how many failed their checksum) of the `count` smallest
    tensors of a checkpoint: in a damaged spot of the data one or two fail;
    with the index of another checkpoint nearly all do that lie in the data."""
    tf = tf_compat.tf
    try:
        reader = tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError):
        return 0, 0
    probed, failed = 0, 0
    for key in _smallest_keys(reader)[:count]:
        probed += 1
        try:
            reader.get_tensor(key)
        except (tf.errors.OpError, IndexError, ValueError, RuntimeError) as err:
            failed += "checksum does not match" in str(err).lower()
    return probed, failed


def _data_numbers(path: str) -> Tuple[int, int]:
    """(shard, count) of a data file name <prefix>.data-<shard>-of-<count>."""
    match = _DATA_RE.search(path)
    if match is None:
        raise ValueError(f"{path}: not a checkpoint data file name")
    return int(match.group(1)), int(match.group(2))


def _data_name(prefix: str, shard: Optional[int] = None) -> str:
    """The data file (of `shard`) to name in a message."""
    files = data_files(prefix)
    if shard is not None:
        files = [path for path in files if _data_numbers(path)[0] == shard] or files
    return files[0] if len(files) == 1 else f"{prefix}.data-*"


def _size_damage(prefix: str, actual: int, wanted: int) -> str:
    where, index = _data_name(prefix), os.path.basename(prefix) + ".index"
    # (In a data file cut short every tensor before the cut still reads.)
    if actual < wanted and _checksum_failures(prefix, PROBED_SHORT)[1] == 0:
        return (f"{where}: truncated: {actual:,} bytes, fewer than the {wanted:,} bytes that "
                f"{index} describes")
    return (f"{where}: does not match its index {index}: {actual:,} bytes where the index "
            f"describes {wanted:,} (the index or the data of another checkpoint?)")


def _check_data(reader: CheckpointReader) -> None:
    """Every data file present, their bytes those the index describes."""
    prefix = reader.prefix
    shapes = reader.get_variable_to_shape_map()
    present = data_files(prefix)
    if not present:
        if shapes:      # (TensorFlow's error names the data file it needs)
            reader.get_tensor(_smallest_keys(reader)[0])
        return
    count = max(_data_numbers(path)[1] for path in present)
    wanted_files = [f"{prefix}.data-{shard:05d}-of-{count:05d}" for shard in range(count)]
    for path in wanted_files:
        if not os.path.isfile(path):
            raise UserError(f"{path}: missing (a data file of {os.path.basename(prefix)}"
                            f".index)")
    actual = sum(os.path.getsize(path) for path in wanted_files)
    wanted, exact = expected_data_bytes(shapes, reader.get_variable_to_dtype_map())
    if actual < wanted or (exact and actual > wanted):
        raise UserError(_size_damage(prefix, actual, wanted))


def verify_checkpoint(prefix: str) -> CheckpointReader:
    """The reader of the checkpoint `prefix` after the checks: its index
    present and readable, every data file present and of the size the index
    describes, and every tensor a stage uses finite (check_finite). A damaged
    checkpoint is a UserError naming the file and the damage: missing,
    truncated, corrupt, not matching its index, or holding NaN or Inf."""
    tf = tf_compat.tf
    index = prefix + ".index"
    if not os.path.isfile(index):
        raise UserError(_index_missing(prefix))
    try:
        reader = CheckpointReader(prefix, tf.train.load_checkpoint(prefix))
    except (tf.errors.OpError, ValueError) as err:
        raise UserError(f"{index}: corrupt or unreadable, not a checkpoint index "
                        f"({_reason(err)})") from None
    _check_data(reader)
    check_finite(reader)
    return reader


# ---------------------------------------------------------------------------
# Non-finite tensors: a diverged run's NaN or Inf must not travel into the
# averages, conversions, ensembles and teacher records made from it. Every
# stage opens its checkpoints through verify_checkpoint, so this is the one
# place that refuses them, before the stage builds or writes anything.

# Elements tested at a time: the bool temporary stays small for 10^8-weight
# tensors.
FINITE_CHUNK = 1 << 22
# prefix -> the file signature of the checkpoint found finite (a process
# opens one checkpoint several times: specs, storage kind, restore).
_FOUND_FINITE: Dict[str, Tuple] = {}


def non_finite_summary(value: Any) -> str:
    """'3 NaN, 1 +Inf of 64 values' of an array holding non-finite values."""
    value = np.asarray(value)
    counts = ((int(np.isnan(value).sum()), "NaN"), (int(np.isposinf(value).sum()), "+Inf"),
              (int(np.isneginf(value).sum()), "-Inf"))
    found = ", ".join(f"{count:,} {kind}" for count, kind in counts if count)
    return f"{found} of {value.size:,} values"


def all_finite(value: Any) -> bool:
    """True when every element of a floating array is finite (tested in chunks)."""
    flat = np.asarray(value).reshape(-1)
    return all(np.isfinite(flat[start:start + FINITE_CHUNK]).all()
               for start in range(0, flat.size, FINITE_CHUNK))


def _file_signature(prefix: str) -> Tuple:
    paths = [prefix + ".index"] + data_files(prefix)
    return tuple((path, os.stat(path).st_mtime_ns, os.path.getsize(path)) for path in paths)


def check_finite(reader: CheckpointReader) -> None:
    """A UserError naming the checkpoint and the first tensor (by key) that
    holds NaN or Inf. Reads one tensor at a time (peak memory: the largest
    tensor). Optimizer slots are not read: no stage uses them, and they
    would triple the reading of a train checkpoint (the trainer checks them
    before every save)."""
    tf = tf_compat.tf
    prefix = os.path.abspath(reader.prefix)
    signature = _file_signature(prefix)
    if _FOUND_FINITE.get(prefix) == signature:
        return
    dtypes = reader.get_variable_to_dtype_map()
    for key in sorted(dtypes):
        if not tf.as_dtype(dtypes[key]).is_floating or OPTIMIZER_SLOT_RE.search(key):
            continue
        value = reader.get_tensor(key)
        if not all_finite(value):
            raise UserError(f"{reader.prefix}: tensor {key} is not finite "
                            f"({non_finite_summary(value)}); a diverged run? use an "
                            f"earlier checkpoint")
    _FOUND_FINITE[prefix] = signature


def read_failure(err: BaseException, prefix: str) -> Optional[str]:
    """The one line for an error raised while reading or restoring the
    checkpoint `prefix` when it is damage (a missing, truncated or corrupt
    file, an index that does not match its data), else None."""
    text = str(getattr(err, "message", None) or err)
    index = f"{os.path.basename(prefix)}.index"
    gone = re.search(r"(\S+\.data-\d{5}-of-\d{5}); (No such file or directory|Is a directory)",
                     text)
    if gone:
        what = "missing" if gone.group(2).startswith("No such") else "unreadable (a dir)"
        return f"{gone.group(1)}: {what} (a data file of {index})"
    if "Read less bytes than requested" in text:
        return f"{_data_name(prefix)}: truncated: fewer bytes than {index} describes"
    if "checksum does not match" in text.lower():
        shard = re.search(r" shard (\d+) ", text)
        where = _data_name(prefix, int(shard.group(1)) if shard else None)
        probed, failed = _checksum_failures(prefix, PROBED_MISMATCH)
        if probed and failed >= min(2, probed):
            return (f"{where}: does not match its index {index}: its tensors fail the "
                    f"checksums the index holds (the index of another checkpoint?)")
        return (f"{where}: corrupt: a checksum mismatch on read (the bytes are not those "
                f"{index} describes); copy the checkpoint again")
    if any(mark in text for mark in _INDEX_DAMAGE):
        return f"{prefix}.index: corrupt or unreadable, not a checkpoint index ({_reason(err)})"
    if "Failed to find any matching files" in text or "not a valid checkpoint" in text:
        return _index_missing(prefix)
    return None


def check_state_file(directory: str) -> None:
    """The `checkpoint` state file of a dir, when present, must name a
    complete checkpoint of the dir (by name: a moved dir is fine)."""
    path = os.path.join(directory, STATE_FILE)
    if not os.path.isfile(path):
        return
    try:
        with open(path, "rb") as handle:
            text = handle.read(1 << 20).decode("utf-8")
    except (OSError, UnicodeDecodeError):
        text = ""
    match = re.search(r'^model_checkpoint_path:\s*"([^"]*)"', text, re.MULTILINE)
    if match is None:
        raise UserError(f"{path}: corrupt, not a TensorFlow checkpoint state file (no "
                        f"model_checkpoint_path); restore or delete it")
    name = os.path.basename(match.group(1))
    prefix = os.path.join(directory, name)
    if os.path.isfile(prefix + ".index"):
        return
    if data_files(prefix):
        raise UserError(_index_missing(prefix) + f"; the state file {STATE_FILE} names it")
    latest = latest_checkpoint(directory)
    other = f"; the latest checkpoint here is {os.path.basename(latest)}" if latest else ""
    raise UserError(f"{path}: names {name}, which is missing (no {name}.index){other}; "
                    f"restore that checkpoint or correct this state file")


# ---------------------------------------------------------------------------
# Atomic outputs: one writer (a lock), a temporary sibling, a rename
#
# A stage writes its output dir (or file) <name> under the temporary sibling
# .<name>.tmp-XXXXXXXX and renames it into place when it is complete. While it
# works it holds the lock of <name> (training.locks: the file .<name>.lock
# beside it, flocked, holding the writer's pid), so a second writer of the
# same <name> is refused in one line naming the first one's pid, and every
# temporary sibling that the lock holder finds was left by a writer that died
# (even by kill -9): it is removed. Interrupted (SIGINT, SIGTERM), a writer
# removes its temporary output and says that nothing was written.

TEMP_MARK = ".tmp-"
OLD_SUFFIX = ".old"
_BUSY_ADVICE = "wait for it to finish or choose another output"

# errno values that mean "the output could not be written".
_WRITE_ERRNOS = {getattr(errno, name) for name in
                 ("ENOSPC", "EFBIG", "EDQUOT", "EROFS", "EIO", "EACCES", "EPERM")
                 if hasattr(errno, name)}


def temp_prefix(target: str) -> str:
    """The prefix (a path) of the temporary siblings of `target`."""
    target = os.path.abspath(target)
    return os.path.join(os.path.dirname(target), f".{os.path.basename(target)}{TEMP_MARK}")


def _remove_path(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def _remove_leftovers(target: str) -> List[str]:
    """Removes every temporary sibling of `target`; returns their paths. Call
    it holding target's lock: then they are the leftovers of dead writers."""
    prefix = temp_prefix(target)
    parent, base = os.path.dirname(prefix), os.path.basename(prefix)
    removed = []
    for name in sorted(os.listdir(parent)) if os.path.isdir(parent) else []:
        if name.startswith(base):
            _remove_path(os.path.join(parent, name))
            removed.append(os.path.join(parent, name))
    return removed


@contextmanager
def _claimed(target: str, shown: str, exists_error: str, wait: bool) -> Iterator[str]:
    """Holds the lock of `target` for the block (another live writer: refused
    in one line, or waited for with wait=True), refuses an existing target
    with exists_error (unless empty), removes dead writers' leftovers and
    yields a fresh temporary sibling path (not created)."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with locks.held(locks.lock_file_for(target), shown, _BUSY_ADVICE, wait):
        if exists_error and os.path.exists(target):
            raise UserError(exists_error)
        _remove_leftovers(target)
        yield temp_prefix(target) + secrets.token_hex(4)


class _Commit:
    done = False


@contextmanager
def _discarded_unless_committed(temp: str, shown: str, failure: str) -> Iterator[_Commit]:
    """On an error or interrupt in the block before commit.done is set:
    removes `temp` (a second signal waits), notes an interrupt, and turns a
    write failure into a UserError (`failure` with its {reason})."""
    commit = _Commit()
    try:
        yield commit
    except BaseException as err:
        if commit.done:
            raise
        with cli.interrupts_deferred():
            _remove_path(temp)
        if isinstance(err, cli.Interrupted):
            err.noted(f"nothing was written to {shown}")
        reason = write_failure(err, temp)
        if reason is not None:
            raise UserError(failure.format(reason=reason)) from None
        raise


def write_failure(err: BaseException, temp: str) -> Optional[str]:
    """The reason text when `err` is a failure to write below `temp` (a full
    disk, a file size limit, a read-only or unwritable place), else None."""
    if isinstance(err, OSError):
        # (An error on a named file elsewhere is about an input.)
        named = [name for name in (err.filename, err.filename2) if name]
        if err.errno in _WRITE_ERRNOS and all(
                os.path.abspath(str(name)).startswith(os.path.abspath(temp))
                for name in named):
            return err.strerror or str(err)
        return None
    message = getattr(err, "message", None)
    if message is None or type(err).__module__.split(".")[0] != "tensorflow":
        return None
    for line in str(message).splitlines():
        if temp in line:
            reason = line.split(temp, 1)[1]
            reason = reason.split(";")[-1].split(":")[-1].strip(" ;:'\"")
            return reason or line.strip()
    return None


def _replace_dir(tmp_dir: str, target: str) -> None:
    if os.path.exists(target):
        old = tmp_dir + OLD_SUFFIX
        os.rename(target, old)
        os.rename(tmp_dir, target)
        shutil.rmtree(old)
    else:
        os.rename(tmp_dir, target)


@contextmanager
def atomic_directory(target: str, overwrite: bool = False) -> Iterator[str]:
    """Yields a temporary sibling dir; renames it to `target` on success.

    An existing `target` is an error unless overwrite is set; then it is
    replaced only after the new content is complete. A second writer of
    `target` is refused while this one works (the Atomic outputs comment).
    On failure or interrupt the temporary dir is removed and `target` is
    untouched; a failure to write (full disk, file size limit, ...) becomes a
    UserError naming `target`. Leftovers of writers that died are removed.
    """
    target = os.path.abspath(target)
    exists = "" if overwrite else f"{target}: output dir exists; choose another or pass " \
                                  f"--overwrite"
    failure = f"{target}: cannot write the output ({{reason}}); nothing was written"
    with _claimed(target, target, exists, wait=False) as tmp_dir, \
            _discarded_unless_committed(tmp_dir, target, failure) as commit:
        os.mkdir(tmp_dir, 0o777)  # mode & ~umask, like any new dir
        yield tmp_dir
        with cli.interrupts_deferred():   # (the swap is not cut in two)
            _replace_dir(tmp_dir, target)
            commit.done = True


@contextmanager
def atomic_file(target: str, overwrite: bool = False, flag: str = "",
                wait: bool = False) -> Iterator[str]:
    """Yields a temporary sibling path to write; renames it to `target` when
    the block ends without an error (an existing `target` is an error unless
    overwrite). A second writer of `target` is refused while this one works
    (wait=True: waits for it; for short writes). On failure or interrupt the
    temporary file is removed and `target` is untouched; a failure to write
    becomes a UserError naming `target` (as `--<flag>=<target>` when flag is
    given). Leftovers of writers that died are removed first."""
    shown = f"--{flag}={target}" if flag else os.path.abspath(target)
    target = os.path.abspath(target)
    exists = "" if overwrite else f"{shown}: exists; choose another or pass --overwrite"
    with _claimed(target, shown, exists, wait) as tmp_path:
        if os.path.isdir(target):
            raise UserError(f"{shown}: is a dir")
        failure = f"{shown}: cannot write ({{reason}}); nothing was written"
        with _discarded_unless_committed(tmp_path, shown, failure):
            yield tmp_path
            os.replace(tmp_path, target)


# ---------------------------------------------------------------------------
# Checkpoint contents (used by swa/ and bfloat16_patch/)

MODEL_SCOPE = "tower"
# Optimizer slot variables (tf.train optimizers name them <var>/<Slot>[_<n>]).
OPTIMIZER_SLOT_RE = re.compile(
    r"/(Adam|Momentum|RMSProp|Adagrad|AdagradDA|Ftrl|Adadelta|AdaDelta|ProximalAdagrad|"
    r"ExponentialMovingAverage)(_\d+)?$")


def is_model_variable_key(key: str, scope: str = MODEL_SCOPE) -> bool:
    """A checkpoint key of a model variable: under `scope`/, not an optimizer slot."""
    return key.startswith(scope + "/") and not OPTIMIZER_SLOT_RE.search(key)


def model_variable_keys(keys, scope: str = MODEL_SCOPE) -> List[str]:
    """The sorted model-variable keys among checkpoint keys (global_step,
    beta1_power and Adam slots excluded)."""
    return sorted(key for key in keys if is_model_variable_key(key, scope))


def write_arrays_checkpoint(save_path: str, entries, produce) -> str:
    """Writes a TF checkpoint at the prefix `save_path`, one tensor at a time.

    entries: [(key, shape, tf dtype)]; produce(key) -> numpy array of that
    shape and dtype (called once per key, in order). Each array is loaded into
    its own variable through a placeholder (no constants in the graph) and
    dropped, so the peak memory is about the checkpoint's size, not that of
    every array ever produced. The `checkpoint` state file uses relative paths.
    """
    tf = tf_compat.tf
    graph = tf.Graph()
    with graph.as_default():
        variables, loaders = {}, []
        for index, (key, shape, dtype) in enumerate(entries):
            placeholder = tf.placeholder(dtype, shape, name=f"value{index}")
            variable = tf.Variable(placeholder, name=f"var{index}", trainable=False,
                                   collections=[], validate_shape=True)
            variables[key] = variable
            loaders.append((key, variable.initializer, placeholder))
        saver = tf.train.Saver(variables, save_relative_paths=True, max_to_keep=None,
                               write_version=tf.train.SaverDef.V2)
    with tf.Session(graph=graph) as sess:
        for key, initializer, placeholder in loaders:
            sess.run(initializer, {placeholder: produce(key)})
        return saver.save(sess, save_path, write_meta_graph=False,
                          write_state=True)
