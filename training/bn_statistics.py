"""Batch-norm moving statistics: recomputed for given weights (SWA's
``--bn_statistics=recompute`` and training.eval's), and the note that a
checkpoint's cannot have converged yet.

Recomputation rebuilds the training-mode graph from model_flags.json, loads
the weights and sets each moving statistic to the exact mean, over
``num_batches`` training batches, of the batch statistic its moving-average
update tracks (the batch mean, the unbiased batch variance).

The note: a moving statistic starts at its initial value (mean 0, variance 1)
and each step keeps ``decay`` of it, so after s steps it still carries
``decay**s`` of the initial value (models.layers.BN_DECAY = 0.999: 61% after
500 steps, 5% after 2995). training.eval prints the note above
NOTE_THRESHOLD = 5%, when the statistics can still be far from the data's.
A dir whose swa.json says its statistics were recomputed gets no note; for
averaged statistics the weight is the mean of decay**step over the averaged
checkpoints. One update per step is assumed (a run with N towers applied N),
so the note errs towards being shown.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from models import layers
from models.tf_compat import tf
from training import checkpoint_fit, checkpoints, model_builder, readers, stage_files
from training.cli import UserError
from training.model_flags import ModelFlags
from training.progress import Log, Progress
from training.stage_files import SwaRecord

BN_STAT_SUFFIXES = ("/moving_mean", "/moving_variance")
DEFAULT_RECOMPUTE_BATCHES = 100
EVAL_MODES = ("moving", "recompute")
NOTE_THRESHOLD = 0.05



def is_bn_statistic(key: str) -> bool:
    return key.endswith(BN_STAT_SUFFIXES)


def check_recompute_flags(train_data_pattern: str, recompute_batches: int,
                          batch_size: int, model_flags: Optional[ModelFlags] = None,
                          compression: str = "auto") -> None:
    """UserErrors naming the flag for settings a recompute cannot run with
    (with model_flags: also records its reader cannot use, readers.check_records;
    labels are not needed)."""
    if not train_data_pattern:
        raise UserError("--train_data_pattern: required with --bn_statistics=recompute")
    if recompute_batches <= 0:
        raise UserError(f"--recompute_batches: must be positive, got {recompute_batches}")
    if batch_size <= 0:
        raise UserError(f"--batch_size: must be positive, got {batch_size}")
    files = readers.resolve_files(train_data_pattern, "train_data_pattern")
    if model_flags is not None:
        readers.check_records(files, "train_data_pattern", model_builder.make_reader(model_flags),
                              compression=compression)


def check_eval_mode(mode: str) -> str:
    if mode not in EVAL_MODES:
        raise UserError(f"--bn_statistics: must be one of {', '.join(EVAL_MODES)}, got {mode!r}")
    return mode


# ---------------------------------------------------------------------------
# The batch statistics a moving average tracks


_ASSIGN_SUB_TYPES = ("AssignSub", "AssignSubVariableOp")
_PASS_THROUGH_TYPES = ("Identity", "ReadVariableOp", "Enter", "Switch")


def _variable_op_name(tensor) -> Optional[str]:
    """Name of the variable a tensor reads (through Identity/ReadVariableOp)."""
    for _ in range(8):
        op = tensor.op
        if op.type in ("VariableV2", "Variable", "VarHandleOp"):
            return op.name
        if op.type in _PASS_THROUGH_TYPES and op.inputs:
            tensor = op.inputs[0]
            continue
        return None
    return None


def batch_statistics(update_ops: Sequence[Any]) -> Dict[str, tf.Tensor]:
    """{moving variable name: batch statistic tensor} from moving-average updates.

    A moving-average update is `var -= (1 - decay) * (var - x)`; x (the batch
    mean, or the unbiased batch variance) is the tensor that the running
    statistic tracks, read here from the `var - x` subtraction.
    """
    found: Dict[str, tf.Tensor] = {}
    for item in update_ops:
        op = getattr(item, "op", item)
        if op.type not in _ASSIGN_SUB_TYPES:
            continue
        name = _variable_op_name(op.inputs[0])
        if name is None:
            continue
        queue, seen = deque([(op.inputs[1].op, 0)]), set()
        while queue:
            current, depth = queue.popleft()
            if current.name in seen or depth > 6:
                continue
            seen.add(current.name)
            if current.type == "Sub" and _variable_op_name(current.inputs[0]) == name:
                found[name] = current.inputs[1]
                break
            queue.extend((tensor.op, depth + 1) for tensor in current.inputs)
    return found


def mean_of_batch_statistics(sess: tf.Session, statistics: Dict[str, tf.Tensor],
                             num_batches: int, feed_dicts=None, log: Optional[Log] = None
                             ) -> Dict[str, np.ndarray]:
    """Exact mean over `num_batches` runs of each statistic (float64 sums).

    feed_dicts: optional iterable of feed dicts, one per batch.
    """
    sums: Dict[str, np.ndarray] = {}
    feeds = iter(feed_dicts) if feed_dicts is not None else None
    progress = Progress("batches", total=num_batches)
    for index in range(num_batches):
        feed = next(feeds) if feeds is not None else None
        try:
            values = sess.run(statistics, feed)
        except tf.errors.OutOfRangeError:
            raise UserError(f"--train_data_pattern: the data ran out after {index} of "
                            f"--recompute_batches={num_batches} batches") from None
        if not sums:
            sums = {key: np.asarray(value, dtype=np.float64) for key, value in values.items()}
        else:
            for key, value in values.items():
                sums[key] += value
        if log and ((index + 1) % 10 == 0 or index + 1 == num_batches):
            log(progress.line(index + 1, f"BN statistics: batch {index + 1}/{num_batches}"))
    return {key: value / num_batches for key, value in sums.items()}


# ---------------------------------------------------------------------------
# Recomputation


class RecomputeGraph:
    """The training-mode graph of one model, built once, that recomputes the
    BN moving statistics of any weights of that model (run): swa.average
    builds one for all its candidate windows instead of one per window.

    Each run opens a new session on the graph, so its input pipeline and
    random ops start from the same state every time: running the same
    weights through two RecomputeGraphs or twice through one gives the same
    values (the graph's op seeds come from tf.set_random_seed(seed) and the
    order the ops were built in, which is the same every time)."""

    def __init__(self, model_flags: ModelFlags, keys: Sequence[str], data_pattern: str,
                 batch_size: int, seed: int = 2018, num_readers: int = 4,
                 compression: str = "auto"):
        """keys: the model variables the weights fill (checkpoint keys under
        tower/); a UserError when the rebuilt graph has others, or a BN
        statistic whose moving-average update is not found."""
        self.batch_size = batch_size
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.set_random_seed(seed)
            self.variables = _training_mode_model(model_flags, data_pattern, batch_size, seed,
                                                  num_readers, compression)
            if set(self.variables) != set(keys):
                diff = sorted(set(self.variables) ^ set(keys))
                raise UserError(f"model_flags.json: the rebuilt {model_flags.model} graph does "
                                f"not match the checkpoints (first differing variable: "
                                f"{diff[0]})")
            self.statistics = _tracked_statistics(self.variables)
            self.loaders = {}
            for key, var in self.variables.items():
                placeholder = tf.placeholder(var.dtype.base_dtype, var.shape)
                self.loaders[key] = (tf.assign(var, placeholder), placeholder)
            others = [var for var in tf.global_variables()
                      if var.op.name not in self.variables]
            self.init_others = tf.variables_initializer(others)
            self.saver = tf.train.Saver(self.variables, save_relative_paths=True,
                                        max_to_keep=None)

    def run(self, produce: Callable[[str], np.ndarray], save_path: str, num_batches: int,
            log: Optional[Log] = None) -> str:
        """Loads produce(key) into every model variable, sets each BN
        statistic to its exact mean over num_batches training batches and
        saves the model variables at save_path (returned)."""
        with tf.Session(graph=self.graph) as sess:
            sess.run(self.init_others)
            for key in sorted(self.variables):
                assign, placeholder = self.loaders[key]
                sess.run(assign.op, {placeholder: produce(key)})
            if log:
                log(f"recomputing {len(self.statistics)} BN statistics on {num_batches} "
                    f"batches of {self.batch_size}")
            means = mean_of_batch_statistics(sess, self.statistics, num_batches, log=log)
            for key, value in means.items():
                assign, placeholder = self.loaders[key]
                sess.run(assign.op, {placeholder: value.astype(np.float32)})
            return self.saver.save(sess, save_path, write_meta_graph=False)


def _training_mode_model(model_flags: ModelFlags, data_pattern: str, batch_size: int,
                         seed: int, num_readers: int, compression: str) -> Dict[str, Any]:
    """{checkpoint key: variable} of the model built in training mode (in the
    default graph) on batches of data_pattern read forever."""
    reader = model_builder.make_reader(model_flags)
    with tf.device("/cpu:0"):
        dataset = readers.make_dataset(reader, data_pattern, batch_size, training=True,
                                       num_epochs=None, num_parallel_reads=num_readers,
                                       seed=seed, flag_name="train_data_pattern",
                                       compression=compression)
        batch = tf.data.make_one_shot_iterator(dataset).get_next()
    model = model_builder.build_model(model_flags)
    with tf.variable_scope(checkpoints.MODEL_SCOPE):
        model_builder.model_predictions(model, batch["features"], batch["num_frames"],
                                        is_training=True)
    return {var.op.name: var for var in model_builder.model_variables(checkpoints.MODEL_SCOPE)}


def _tracked_statistics(variables: Dict[str, Any]) -> Dict[str, tf.Tensor]:
    """{BN statistic key: the batch statistic its update tracks}, sorted by key
    (call in the graph of the variables)."""
    statistics = batch_statistics(tf.get_collection(tf.GraphKeys.UPDATE_OPS))
    stat_keys = sorted(key for key in variables if is_bn_statistic(key))
    missing = [key for key in stat_keys if key not in statistics]
    if missing:
        raise UserError(f"cannot recompute BN statistics of {missing[0]}: its "
                        f"moving-average update was not found in the graph")
    return {key: statistics[key] for key in stat_keys}


def recompute_and_save(model_flags: ModelFlags, specs, produce: Callable[[str], np.ndarray],
                       save_path: str, data_pattern: str, num_batches: int, batch_size: int,
                       seed: int = 2018, num_readers: int = 4, log: Optional[Log] = None,
                       compression: str = "auto") -> str:
    """Loads the weights (produce(key) for each (key, shape, dtype) of specs)
    into the training-mode graph, recomputes the BN moving statistics on
    `num_batches` batches and saves the model variables at save_path
    (a RecomputeGraph used once)."""
    graph = RecomputeGraph(model_flags, [key for key, _, _ in specs], data_pattern, batch_size,
                           seed, num_readers, compression)
    return graph.run(produce, save_path, num_batches, log)


@dataclass
class Recompute:
    """How to recompute: --train_data_pattern, --recompute_batches, ..."""
    data_pattern: str
    num_batches: int = DEFAULT_RECOMPUTE_BATCHES
    batch_size: int = 80
    seed: int = 2018
    num_readers: int = 4
    compression: str = "auto"


@contextmanager
def recomputed_checkpoint(model_dir: str, checkpoint: str, settings: Recompute,
                          log: Optional[Log] = None) -> Iterator[str]:
    """Yields a temporary copy of the float32 `checkpoint` (of model_dir) whose
    BN statistics are recomputed; it is removed when the block ends, however
    it ends. A bfloat16 or int8 checkpoint is a UserError."""
    specs = checkpoint_fit.checkpoint_specs(checkpoint)
    checkpoint_fit.require_float32(
        checkpoint, "--bn_statistics=recompute needs the float32 weights: evaluate the float32 "
        "dir it was converted from, or convert a dir recomputed by swa.average", specs)
    entries = [(key, shape, dtype) for key, (shape, dtype) in sorted(specs.items())]
    reader = checkpoints.open_checkpoint(checkpoint)
    # A temporary copy rather than new values put into the evaluation graph:
    # the copy is then restored by the one loader every checkpoint goes
    # through (training.predict, with its fit checks), and the user's
    # checkpoint is only read. It costs one model-size write under $TMPDIR.
    tmp_dir = tempfile.mkdtemp(prefix="bn_statistics-")
    try:
        save_path = os.path.join(tmp_dir, os.path.basename(checkpoint))
        try:
            path = recompute_and_save(checkpoints.read_model_flags(model_dir), entries,
                                      reader.get_tensor, save_path, settings.data_pattern,
                                      settings.num_batches, settings.batch_size, settings.seed,
                                      settings.num_readers, log, settings.compression)
        except (OSError, tf.errors.OpError) as err:
            reason = checkpoints.write_failure(err, tmp_dir)
            if reason is None:
                raise
            raise UserError(f"{tmp_dir}: cannot write the recomputed checkpoint ({reason}); "
                            f"set TMPDIR to a dir with room for one model") from None
        yield path
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


# ---------------------------------------------------------------------------
# The convergence note


def _trained_steps(checkpoint: str, specs: checkpoint_fit.Specs) -> Optional[int]:
    """global_step of a train dir's checkpoint, else the step of its name."""
    if "global_step" in specs:
        return int(checkpoints.open_checkpoint(checkpoint).get_tensor("global_step"))
    return checkpoints.checkpoint_step(checkpoint)


def initial_value_weight(checkpoint: str, specs: Optional[checkpoint_fit.Specs] = None
                         ) -> Optional[Tuple[float, List[int]]]:
    """(weight of the initial values in the moving statistics, the steps it
    comes from); None when the checkpoint has no BN statistics, its steps are
    unknown or its dir's swa.json says they were recomputed. specs: its
    checkpoint_specs(model_only=False) when the caller has them."""
    if specs is None:
        specs = checkpoint_fit.checkpoint_specs(checkpoint, model_only=False)
    if not any(is_bn_statistic(key) for key in specs):
        return None
    try:
        info = stage_files.read_optional(SwaRecord, os.path.dirname(os.path.abspath(checkpoint)))
    except UserError:
        info = None     # the note is advice: a damaged swa.json must not stop an evaluation
    mode = info.bn_statistics if info else None
    if mode == "recompute":
        return None
    if info and mode == "average" and info.checkpoints:
        steps = [item.step for item in info.checkpoints]
    else:
        step = _trained_steps(checkpoint, specs)
        if step is None:
            return None
        steps = [step]
    weight = float(np.mean([layers.BN_DECAY ** step for step in steps]))
    return weight, steps


def convergence_note(checkpoint: str) -> Optional[str]:
    """The one-line note for a checkpoint whose moving statistics still carry
    more than NOTE_THRESHOLD of their initial values, else None."""
    specs = checkpoint_fit.checkpoint_specs(checkpoint, model_only=False)
    found = initial_value_weight(checkpoint, specs)
    if found is None or found[0] <= NOTE_THRESHOLD:
        return None
    weight, steps = found
    name, decay = os.path.basename(checkpoint), f"{layers.BN_DECAY:g}"
    if len(steps) == 1:
        what = (f"{name} was trained {steps[0]} steps; with batch-norm decay {decay} its "
                f"moving statistics")
    else:
        what = (f"{name} averages the moving statistics of steps {steps[0]} to {steps[-1]}; "
                f"with batch-norm decay {decay} they")
    stored = {dtype for _, dtype in checkpoint_fit.model_variables_of(specs).values()}
    if stored & {tf.bfloat16, tf.int8}:
        # Recompute needs the float32 weights (recomputed_checkpoint).
        fix = "recompute them before the conversion (swa.average --bn_statistics=recompute)"
    else:
        fix = "--bn_statistics=recompute --train_data_pattern=... evaluates it with recomputed ones"
    return f"note: {what} still carry {weight:.0%} of their initial values; {fix}"
