"""Files shared by every stage: model_flags.json, checkpoint listing, atomic writes.

A stage dir (train dir, SWA dir, bf16 dir, ensemble dir) always holds a
model_flags.json that is enough to rebuild the model graph exactly.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Tuple

from training.errors import UserError

MODEL_FLAGS_FILE = "model_flags.json"
CHECKPOINT_PREFIX = "model.ckpt"

# Keys that must agree when a train dir is resumed.
IDENTITY_KEYS = ("model", "feature_names", "feature_sizes", "frame_features",
                 "label_loss", "num_classes", "model_hparams")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str, text: str) -> None:
    """Writes a file through a temporary name in the same dir and renames it."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, tmp_path = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes it 0600
        with os.fdopen(handle, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def write_json(path: str, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def write_model_flags(directory: str, model_flags: Dict[str, Any]) -> None:
    write_json(os.path.join(directory, MODEL_FLAGS_FILE), model_flags)


def read_model_flags(directory: str) -> Dict[str, Any]:
    path = os.path.join(directory, MODEL_FLAGS_FILE)
    if not os.path.isfile(path):
        raise UserError(f"{path}: missing; is {directory} a model dir written by this pipeline?")
    try:
        with open(path) as handle:
            flags = json.load(handle)
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
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


@contextmanager
def atomic_directory(target: str, overwrite: bool = False) -> Iterator[str]:
    """Yields a temporary sibling dir; renames it to `target` on success.

    An existing `target` is an error unless overwrite is set; then it is
    replaced only after the new content is complete. On failure the
    temporary dir is removed and `target` is untouched.
    """
    target = os.path.abspath(target)
    if os.path.exists(target) and not overwrite:
        raise UserError(f"{target}: output dir exists; choose another or pass --overwrite")
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.tmp-", dir=parent)
    os.chmod(tmp_dir, 0o777 & ~_umask())  # mkdtemp makes it 0700
    try:
        yield tmp_dir
        if os.path.exists(target):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.old-", dir=parent)
            os.rename(target, os.path.join(old, "content"))
            os.rename(tmp_dir, target)
            shutil.rmtree(old)
        else:
            os.rename(tmp_dir, target)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


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
    from training.tf_compat import tf

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
