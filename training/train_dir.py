"""The train dir: what the trainer writes there, and how a run starts,
resumes and saves without losing or mixing anything.

The trainer owns the files it writes (model.ckpt-*, checkpoint, events,
model_flags.json, graph.pbtxt) and only those: --start_new_model removes them
and nothing else. A rerun removes the leftovers of a killed save, checks that
the dir's latest checkpoint is a training checkpoint of the same model, and
resumes from it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
from typing import Any, Iterator, List, Optional, Sequence

import numpy as np

from models.tf_compat import tf
from training import checkpoint_fit, checkpoints, cli, locks
from training.cli import UserError, first_line
from training.model_flags import ModelFlags, mismatched_keys
from training.stage_files import FinetuneRecord

TRAINER_FILE_PREFIXES = (checkpoints.CHECKPOINT_PREFIX + "-", "events.out.tfevents.",
                         "checkpoint", checkpoints.MODEL_FLAGS_FILE, "graph.pbtxt",
                         FinetuneRecord.FILE_NAME)


def remove_trainer_files(train_dir: str) -> int:
    """Deletes only what this trainer writes (checkpoints, events, flags)."""
    removed = 0
    if not os.path.isdir(train_dir):
        return removed
    for name in os.listdir(train_dir):
        if name.startswith(TRAINER_FILE_PREFIXES):
            path = os.path.join(train_dir, name)
            if os.path.isfile(path):
                os.remove(path)
                removed += 1
    return removed


# What a killed save leaves: TensorFlow's temporary checkpoint parts and state files.
_SAVE_LEFTOVER_RE = re.compile(re.escape(checkpoints.CHECKPOINT_PREFIX)
                               + r"-\d+(\.[^/]*\.(tempstate\d+|tmp[0-9a-f]+)|_temp(_[0-9a-f]+)?)$"
                               + r"|^checkpoint\.tmp[0-9a-f]+$")
_CHECKPOINT_PART_RE = re.compile(r"^(" + re.escape(checkpoints.CHECKPOINT_PREFIX)
                                 + r"-\d+)\.(data-\d{5}-of-\d{5}|meta)$")


def remove_save_leftovers(train_dir: str) -> List[str]:
    """Removes the temporary files of checkpoint saves that were killed
    (model.ckpt-<step>.*.tempstate<n>, model.ckpt-<step>.meta.tmp<hex>,
    model.ckpt-<step>_temp*/, checkpoint.tmp<hex>, and the .data/.meta files
    of a checkpoint without .index). Complete checkpoints are never touched.
    Call it only when no save is running (the trainer does, before it starts)."""
    removed: List[str] = []
    if not os.path.isdir(train_dir):
        return removed
    names = os.listdir(train_dir)
    complete = {name[:-len(".index")] for name in names if name.endswith(".index")}
    for name in names:
        # Parts of a checkpoint whose .index is gone (TensorFlow writes the
        # index last and deletes it first) are leftovers too.
        orphan = _CHECKPOINT_PART_RE.match(name)
        if _SAVE_LEFTOVER_RE.match(name) or (orphan and orphan.group(1) not in complete):
            path = os.path.join(train_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)
            removed.append(path)
    return removed


def check_resumable(train_dir: str) -> None:
    """The latest checkpoint of a train dir must be a training checkpoint of
    this trainer: float32, with global_step (not an SWA or bfloat16 output)."""
    latest = checkpoints.latest_checkpoint(train_dir)
    if latest is None:
        return
    specs = checkpoint_fit.checkpoint_specs(latest, model_only=False)
    checkpoint_fit.require_float32(
        latest, "written by bfloat16_patch.convert; training resumes only from its own float32 "
        "checkpoints; use another --train_dir (distillation.train --warm_start_checkpoint can "
        "start from it)", specs)
    if "global_step" not in specs:
        raise UserError(f"{latest}: has no global_step or optimizer state (an SWA or bfloat16 "
                        f"dir?); training resumes only from its own checkpoints; use another "
                        f"--train_dir")


def prepare_train_dir(train_dir: str, model_flags: ModelFlags, start_new: bool) -> None:
    """Readies train_dir for a run of model_flags: (start_new) removes the
    trainer's files, then the leftovers of killed saves; a dir of another
    model or a non-training checkpoint is a UserError; writes model_flags.json."""
    if start_new:
        remove_trainer_files(train_dir)
    # (Before the leftovers go: the data of a checkpoint that the state file
    # names is a damaged checkpoint, not a killed save.)
    checkpoints.check_state_file(train_dir)
    remove_save_leftovers(train_dir)
    check_resumable(train_dir)
    os.makedirs(train_dir, exist_ok=True)
    flags_path = os.path.join(train_dir, checkpoints.MODEL_FLAGS_FILE)
    if os.path.exists(flags_path):
        old = checkpoints.read_model_flags(train_dir)
        different = mismatched_keys(old, model_flags)
        if different:
            details = "; ".join(f"{key}: {getattr(old, key)!r} in the file, "
                                f"{getattr(model_flags, key)!r} now" for key in different)
            raise UserError(f"{flags_path}: this train dir holds a different model ({details}); "
                            f"use another --train_dir or --start_new_model")
    checkpoints.write_model_flags(train_dir, model_flags)


TRAIN_DIR_LOCK = ".lock"


def _make_dir(train_dir: str) -> bool:
    """Makes train_dir (and its parents); True when this call created it."""
    if os.path.isdir(train_dir):
        return False
    os.makedirs(os.path.dirname(os.path.abspath(train_dir)), exist_ok=True)
    try:
        os.mkdir(train_dir)
    except FileExistsError:
        return False
    return True


def _remove_added(train_dir: str, before) -> None:
    """Removes the trainer files that appeared in train_dir since `before`."""
    for name in set(os.listdir(train_dir)) - before:
        path = os.path.join(train_dir, name)
        if name.startswith(TRAINER_FILE_PREFIXES) and os.path.isfile(path):
            os.remove(path)


@contextlib.contextmanager
def removed_on_failed_start(train_dir: str) -> Iterator[None]:
    """Holds the train dir's lock for the block: the file <train_dir>/.lock
    (training.locks), so a second trainer of the same dir is refused at once
    in one line naming this one's pid (a lock left by a killed trainer does
    not block). On a UserError or an interrupt before the first checkpoint,
    removes what this run added to train_dir (flags, events), the lock and the
    dir itself when this run created it, so a failed start leaves nothing
    behind. Checkpoints are never removed."""
    created = _make_dir(train_dir)
    try:
        with locks.held(os.path.join(train_dir, TRAIN_DIR_LOCK), f"--train_dir={train_dir}",
                        "wait for it to finish or choose another dir"):
            before = set(os.listdir(train_dir))
            try:
                yield
            except (UserError, cli.Interrupted) as err:
                latest = checkpoints.latest_checkpoint(train_dir)
                if latest is None:
                    _remove_added(train_dir, before)
                if isinstance(err, cli.Interrupted):   # (not noted: before training)
                    err.noted("nothing was saved" if latest is None else
                              f"the latest checkpoint is {latest}; run the same command to "
                              f"resume", at="before training started", replace=False)
                raise
    except BaseException:
        if created:   # (only when empty: a refused start leaves the holder's dir alone)
            with contextlib.suppress(OSError):
                os.rmdir(train_dir)
        raise


@dataclasses.dataclass
class FiniteCheck:
    """flags: bool [len(variables)], each variable all finite; one fetch."""
    flags: Any
    variables: List[Any]


def finite_check(variables: Sequence[Any]) -> FiniteCheck:
    """The check of every floating variable that a checkpoint saves (model,
    batch-norm statistics, optimizer slots), run before each save: per step it
    would cost up to 5% of a full-size step on a CPU (2.5% for the model
    variables alone; bench.bench_training), per save it reads what the save
    writes anyway."""
    floating = [v for v in variables if v.dtype.base_dtype.is_floating]
    flags = []
    with tf.name_scope("finite_check"):
        for variable in floating:
            with tf.device(variable.device):   # (a GPU's variable is reduced there)
                flags.append(tf.reduce_all(tf.math.is_finite(variable)))
        stacked = tf.stack(flags) if flags else tf.constant([], tf.bool)
    return FiniteCheck(stacked, floating)


def non_finite_error(train_dir: str, step: int, what: str) -> UserError:
    """The one line of a run that diverged at `step`: what is not finite, and
    the checkpoint that stays the latest (nothing of this step is saved)."""
    latest = checkpoints.latest_checkpoint(train_dir)
    kept = (f"the latest checkpoint stays {latest}" if latest
            else "no checkpoint was saved")
    return UserError(f"--train_dir={train_dir}: {what} at step {step}; stopped without "
                     f"saving it, {kept}; lower --base_learning_rate")


def check_finite(sess, check: FiniteCheck, train_dir: str, step: int) -> None:
    """non_finite_error naming the first variable holding NaN or Inf."""
    flags = sess.run(check.flags)
    if flags.all():
        return
    variable = check.variables[int(np.argmin(flags))]
    summary = checkpoints.non_finite_summary(sess.run(variable))
    raise non_finite_error(train_dir, step, f"variable {variable.op.name} is not finite "
                                            f"({summary})")


def save_checkpoint(saver, sess, train_dir: str, step: int,
                    check: Optional[FiniteCheck] = None) -> str:
    """saver.save with a one-line UserError when the checkpoint cannot be
    written (full disk, ...); the temporary files of the failed save are removed.
    check: refuse to save a variable holding NaN or Inf (check_finite)."""
    if check is not None:
        check_finite(sess, check, train_dir, step)
    try:
        return saver.save(sess, os.path.join(train_dir, checkpoints.CHECKPOINT_PREFIX),
                          global_step=step)
    except (tf.errors.OpError, OSError) as err:
        remove_save_leftovers(train_dir)
        reason = (checkpoints.write_failure(err, train_dir)
                  or first_line(err))
        raise UserError(f"--train_dir={train_dir}: cannot write checkpoint "
                        f"{checkpoints.CHECKPOINT_PREFIX}-{step} ({reason}); the checkpoints "
                        f"written before are kept") from None


def noted_with_checkpoint(interrupt: cli.Interrupted, train_dir: str) -> cli.Interrupted:
    """The interrupt of a trainer that saved before it stopped, with the
    checkpoint it saved (the latest) in its line."""
    latest = checkpoints.latest_checkpoint(train_dir)
    if latest is None:
        return interrupt
    return interrupt.noted(f"saved {latest}; run the same command to resume",
                           at=f"at step {checkpoints.checkpoint_step(latest)}")
