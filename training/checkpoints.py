"""Files shared by every stage: model_flags.json, checkpoint listing, atomic writes.

A stage dir (train dir, SWA dir, bf16 dir, ensemble dir) always holds a
model_flags.json that is enough to rebuild the model graph exactly.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Tuple

from models.tf_compat import tf
from training.errors import UserError, first_line

MODEL_FLAGS_FILE = "model_flags.json"
CHECKPOINT_PREFIX = "model.ckpt"

# Keys that must agree when a train dir is resumed.
IDENTITY_KEYS = ("model", "feature_names", "feature_sizes", "frame_features",
                 "label_loss", "num_classes", "model_hparams")


def atomic_write_text(path: str, text: str) -> None:
    """Writes a file through a temporary name in the same dir and renames it
    (see atomic_file: a killed writer's temporary file is removed next time)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_file(path, overwrite=True) as tmp_path:
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


def write_model_flags(directory: str, model_flags: Dict[str, Any]) -> None:
    write_json(os.path.join(directory, MODEL_FLAGS_FILE), model_flags)


def read_model_flags(directory: str) -> Dict[str, Any]:
    path = os.path.join(directory, MODEL_FLAGS_FILE)
    if not os.path.isfile(path):
        raise UserError(f"{path}: missing; is {directory} a model dir written by this pipeline?")
    flags = load_json(path, path)
    if "model" not in flags:
        raise UserError(f"{path}: has no 'model' key")
    return flags


def mismatched_keys(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    return [key for key in IDENTITY_KEYS if key in old and old.get(key) != new.get(key)]


def checkpoint_step(path: str) -> Optional[int]:
    match = re.search(r"-(\d+)(?:\.index)?$", path)
    return int(match.group(1)) if match else None


def list_checkpoints(directory: str, prefix: str = CHECKPOINT_PREFIX
                     ) -> List[Tuple[int, str]]:
    """[(step, checkpoint path prefix)] of complete checkpoints, by step.

    A checkpoint counts when its .index file exists (TensorFlow writes the
    index last, after the data files).
    """
    found = []
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


def open_checkpoint(path: str):
    """tf.train.load_checkpoint with a one-line UserError for a bad checkpoint."""
    try:
        return tf.train.load_checkpoint(path)
    except (tf.errors.OpError, ValueError) as err:
        raise UserError(f"{path}: cannot read the checkpoint ({first_line(err)})") from None


def find_checkpoint(path: str) -> str:
    """A checkpoint prefix from a dir (its latest model.ckpt-*) or a prefix."""
    if os.path.isdir(path):
        latest = latest_checkpoint(path)
        if latest is None:
            raise UserError(f"{path}: no {CHECKPOINT_PREFIX}-<step> checkpoint in this dir")
        return latest
    if not os.path.isfile(path + ".index"):
        raise UserError(f"{path}: no such checkpoint ({path}.index missing)")
    return path


# ---------------------------------------------------------------------------
# Atomic outputs: temporary siblings, claimed by a lock, renamed into place
#
# A stage writes its output dir (or file) <name> under the temporary sibling
# .<name>.tmp-XXXXXXXX and renames it into place when it is complete. The
# temporary name is claimed by the lock file .<name>.tmp-XXXXXXXX.lock, which
# the writer holds (flock) while it works: the kernel drops the lock when the
# writer dies, even by kill -9. So the next run for the same <name> can tell
# the leftovers of a dead writer (lock free: removed) from the work of a live
# one (lock held: left alone).

TEMP_MARK = ".tmp-"
LOCK_SUFFIX = ".lock"
OLD_SUFFIX = ".old"

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


def clean_stale_temps(target: str) -> List[str]:
    """Removes the temporary siblings of `target` left by writers that died
    (their lock is free); returns the removed paths. Work of a live writer
    (lock held) is left alone."""
    prefix = temp_prefix(target)
    parent, base = os.path.dirname(prefix), os.path.basename(prefix)
    removed = []
    if not os.path.isdir(parent):
        return removed
    for name in sorted(os.listdir(parent)):
        if not (name.startswith(base) and name.endswith(LOCK_SUFFIX)):
            continue
        lock_path = os.path.join(parent, name)
        try:
            fd = os.open(lock_path, os.O_RDWR)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live writer holds it
            temp = lock_path[:-len(LOCK_SUFFIX)]
            for path in (temp, temp + OLD_SUFFIX):
                if os.path.lexists(path):
                    _remove_path(path)
                    removed.append(path)
            os.remove(lock_path)
        finally:
            os.close(fd)
    return removed


def _claim_temp(target: str) -> Tuple[int, str]:
    """(locked fd, temporary path) for a new output of `target` (the path
    itself is not created). Close the fd with _release_temp."""
    prefix = temp_prefix(target)
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    while True:
        fd, lock_path = tempfile.mkstemp(prefix=os.path.basename(prefix), suffix=LOCK_SUFFIX,
                                         dir=os.path.dirname(prefix))
        fcntl.flock(fd, fcntl.LOCK_EX)
        # A cleaner may have taken the fresh lock file for a stale one and
        # removed it before we locked it: then claim another name.
        try:
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                return fd, lock_path[:-len(LOCK_SUFFIX)]
        except FileNotFoundError:
            pass
        os.close(fd)


def _release_temp(fd: int, temp: str) -> None:
    try:
        os.remove(temp + LOCK_SUFFIX)
    except FileNotFoundError:
        pass
    os.close(fd)


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


@contextmanager
def atomic_directory(target: str, overwrite: bool = False) -> Iterator[str]:
    """Yields a temporary sibling dir; renames it to `target` on success.

    An existing `target` is an error unless overwrite is set; then it is
    replaced only after the new content is complete. On failure the
    temporary dir is removed and `target` is untouched; a failure to write
    (full disk, file size limit, ...) becomes a UserError naming `target`.
    Leftovers of an earlier writer of `target` that died are removed first.
    """
    target = os.path.abspath(target)
    if os.path.exists(target) and not overwrite:
        raise UserError(f"{target}: output dir exists; choose another or pass --overwrite")
    clean_stale_temps(target)
    fd, tmp_dir = _claim_temp(target)
    try:
        os.mkdir(tmp_dir, 0o777)  # mode & ~umask, like any new dir
        yield tmp_dir
        if os.path.exists(target):
            old = tmp_dir + OLD_SUFFIX
            os.rename(target, old)
            os.rename(tmp_dir, target)
            shutil.rmtree(old)
        else:
            os.rename(tmp_dir, target)
    except BaseException as err:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        reason = write_failure(err, tmp_dir)
        if reason is not None:
            raise UserError(f"{target}: cannot write the output ({reason}); nothing was "
                            f"written") from None
        raise
    finally:
        _release_temp(fd, tmp_dir)


@contextmanager
def atomic_file(target: str, overwrite: bool = False, flag: str = "") -> Iterator[str]:
    """Yields a temporary sibling path to write; renames it to `target` when
    the block ends without an error (an existing `target` is an error unless
    overwrite). On failure the temporary file is removed and `target` is
    untouched; a failure to write becomes a UserError naming `target` (as
    `--<flag>=<target>` when flag is given). Leftovers of an earlier writer
    of `target` that died are removed first."""
    shown = f"--{flag}={target}" if flag else os.path.abspath(target)
    target = os.path.abspath(target)
    if os.path.exists(target) and not overwrite:
        raise UserError(f"{shown}: exists; choose another or pass --overwrite")
    if os.path.isdir(target):
        raise UserError(f"{shown}: is a dir")
    clean_stale_temps(target)
    fd, tmp_path = _claim_temp(target)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException as err:
        _remove_path(tmp_path)
        reason = write_failure(err, tmp_path)
        if reason is not None:
            raise UserError(f"{shown}: cannot write ({reason}); nothing was written") from None
        raise
    finally:
        _release_temp(fd, tmp_path)


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
