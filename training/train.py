"""Trains one model: python -m training.train --train_dir=... --model=...

TF1-style graph: tf.data input, in-graph towers over the visible GPUs (or
virtual CPU devices) with the batch split and gradients averaged, Adam,
staircase exponential learning-rate decay counted in examples, per-variable
gradient clipping, batch-norm updates on every step, optional bfloat16 weight
products (--matmul_dtype, mixed precision), Saver checkpoints every
--save_checkpoint_steps and at the end, TensorBoard summaries and a progress
line. Rerunning the same command resumes from the latest checkpoint.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np
from absl import flags

from models import layers, registry
from training import checkpoints, losses, metrics, model_builder, readers
from training.errors import UserError, define_flag, run_main
from training.tf_compat import tf

FLAGS = flags.FLAGS
FLOAT32 = "float32"
BFLOAT16 = "bfloat16"
MATMUL_DTYPES = (FLOAT32, BFLOAT16)


def define_flags() -> None:
    """Training flags (the original's names); safe to call more than once."""
    define_flag(flags.DEFINE_string, "train_dir", "/tmp/yt8m_model/", "Where checkpoints and logs go.")
    define_flag(flags.DEFINE_string, "train_data_pattern", "", "Comma-separated globs of training TFRecords.")
    define_flag(flags.DEFINE_string, "model", "FrameMeanMoeModel", "Model preset or class name.")
    define_flag(flags.DEFINE_bool, "frame_features", True, "Frame-level (True) or video-level input.")
    define_flag(flags.DEFINE_string, "feature_names", "rgb,audio", "Comma-separated feature names.")
    define_flag(flags.DEFINE_string, "feature_sizes", "1024,128", "Comma-separated feature sizes.")
    define_flag(flags.DEFINE_integer, "num_classes", 3862, "Number of classes.")
    define_flag(flags.DEFINE_string, "label_loss", "CrossEntropyLoss", "Loss function name.")
    define_flag(flags.DEFINE_integer, "batch_size", 80, "Examples per tower per step.")
    define_flag(flags.DEFINE_float, "base_learning_rate", 2e-4, "Learning rate at step 0.")
    define_flag(flags.DEFINE_float, "learning_rate_decay", 0.8, "Staircase decay factor.")
    define_flag(flags.DEFINE_float, "learning_rate_decay_examples", 4000000,
                       "Examples between two learning-rate decays.")
    define_flag(flags.DEFINE_float, "regularization_penalty", 1.0, "Weight of the L2 terms.")
    define_flag(flags.DEFINE_float, "clip_gradient_norm", 1.0, "Per-variable gradient norm clip (0: off).")
    define_flag(flags.DEFINE_string, "matmul_dtype", FLOAT32,
                "Dtype of the weight products: float32 (as the original) or bfloat16 "
                "(mixed precision: float32 variables, optimizer and checkpoints; "
                "fast where the CPU has AVX512-BF16/AMX or the GPU has bf16 tensor cores).")
    define_flag(flags.DEFINE_integer, "num_epochs", 100, "Passes over the training data (0: no limit).")
    define_flag(flags.DEFINE_integer, "max_steps", None, "Stop after this global step.")
    define_flag(flags.DEFINE_integer, "save_checkpoint_steps", 10000, "Checkpoint every N steps.")
    define_flag(flags.DEFINE_integer, "max_to_keep", 10, "Checkpoints kept (plus hourly ones).")
    define_flag(flags.DEFINE_float, "keep_checkpoint_every_n_hours", 1.0, "Also keep one per N hours.")
    define_flag(flags.DEFINE_integer, "num_gpu", 1, "GPUs to use (towers); 0 uses every visible GPU.")
    define_flag(flags.DEFINE_integer, "cpu_towers", 1, "Towers on virtual CPU devices when no GPU is "
                         "visible (tests the multi-tower path).")
    define_flag(flags.DEFINE_bool, "start_new_model", False, "Remove this trainer's checkpoints and "
                      "event files from --train_dir and start from scratch.")
    define_flag(flags.DEFINE_integer, "num_readers", 8, "Files read in parallel.")
    define_flag(flags.DEFINE_integer, "shuffle_buffer", 2048, "Examples in the shuffle buffer.")
    define_flag(flags.DEFINE_integer, "seed", 2018, "Graph-level random seed.")
    define_flag(flags.DEFINE_bool, "skip_corrupt_records", False, "Skip the damaged rest of "
                "corrupt or truncated TFRecord files (default: stop with an error).")
    define_flag(flags.DEFINE_integer, "summary_steps", 10, "Write summaries every N steps.")
    define_flag(flags.DEFINE_integer, "log_steps", 10, "Print a progress line every N steps.")
    registry.define_hparam_flags()


# ---------------------------------------------------------------------------
# Graph


def tower_devices(num_gpu: int, cpu_towers: int) -> List[str]:
    from tensorflow.python.client import device_lib

    gpus = [d.name for d in device_lib.list_local_devices() if d.device_type == "GPU"]
    if gpus:
        return gpus[:num_gpu] if num_gpu > 0 else gpus
    return [f"/cpu:{i}" for i in range(max(1, cpu_towers))]


def average_gradients(tower_grads: List[List[tuple]]) -> List[tuple]:
    """Mean over towers of each variable's gradient (None gradients dropped)."""
    averaged = []
    for pairs in zip(*tower_grads):
        grads = [g for g, _ in pairs if g is not None]
        if grads:
            grad = grads[0] if len(grads) == 1 else tf.add_n(grads) / len(grads)
            averaged.append((grad, pairs[0][1]))
    return averaged


def clip_per_variable(grads_and_vars: List[tuple], max_norm: float) -> List[tuple]:
    """g * max_norm / max(||g||, max_norm) for every gradient (tf.clip_by_norm).

    Written with one L2Loss (a single read of g, no squared temporary) and one
    multiply by a scalar, instead of tf.clip_by_norm's square, sum, multiply
    and divide over the whole gradient: the same values (to rounding) at a
    third of the memory traffic, which matters for the 10^8-weight models.
    """
    if not max_norm:
        return grads_and_vars
    clipped = []
    for grad, var in grads_and_vars:
        grad = tf.convert_to_tensor(grad)
        with tf.name_scope("clip_by_norm"):
            norm = tf.sqrt(2.0 * tf.nn.l2_loss(grad))
            scale = max_norm / tf.maximum(norm, max_norm)
            clipped.append((grad * tf.cast(scale, grad.dtype), var))
    return clipped


def build_train_graph(model_flags: Dict[str, Any], batch: Dict[str, tf.Tensor],
                      devices: List[str], config: Dict[str, float],
                      label_loss_fn: Optional[Callable[..., tf.Tensor]] = None
                      ) -> Dict[str, Any]:
    """Adds the towers, loss, optimizer and train op to the default graph.

    batch: the reader's dict with batch size batch_size * len(devices).
    label_loss_fn(predictions, batch) -> scalar; defaults to the model's
    label loss against batch["labels"] (distillation passes its own).
    config["matmul_dtype"] (default float32) = bfloat16 makes every weight
    product of the towers a bfloat16 matmul (models.layers.bfloat16_matmul_getter).
    Returns the tensors the loop needs.
    """
    global_step = tf.train.get_or_create_global_step()
    per_tower_examples = config["batch_size"]
    examples_seen = tf.cast(global_step, tf.float32) * float(per_tower_examples * len(devices))
    learning_rate = tf.train.exponential_decay(
        config["base_learning_rate"], examples_seen, config["learning_rate_decay_examples"],
        config["learning_rate_decay"], staircase=True)
    optimizer = tf.train.AdamOptimizer(learning_rate)
    if label_loss_fn is None:
        loss_of = losses.get_loss(model_flags.get("label_loss", "CrossEntropyLoss"))
        label_loss_fn = lambda predictions, part: loss_of(predictions, part["labels"])  # noqa: E731

    parts = {key: tf.split(value, len(devices)) for key, value in batch.items()}
    # Several towers share variables on the CPU; in a cluster (devices [None])
    # the replica device setter places them on the parameter servers.
    variable_device = "/cpu:0" if len(devices) > 1 else devices[0]
    getter = _pin_variables(variable_device)
    if check_matmul_dtype(config.get("matmul_dtype", FLOAT32)) == BFLOAT16:
        getter = _bfloat16_views(getter)
    tower_grads, tower_losses, tower_predictions = [], [], []
    for index, device in enumerate(devices):
        part = {key: values[index] for key, values in parts.items()}
        with _device_scope(device), tf.variable_scope("tower", reuse=index > 0,
                                                  custom_getter=getter):
            model = model_builder.build_model(model_flags)
            predictions = model_builder.model_predictions(
                model, part["features"], part["num_frames"], is_training=True)
            label_loss = label_loss_fn(predictions, part)
            total = label_loss + config["regularization_penalty"] * losses.regularization_loss()
            tower_grads.append(optimizer.compute_gradients(total))
            tower_losses.append(label_loss)
            tower_predictions.append(predictions)

    grads = clip_per_variable(average_gradients(tower_grads), config["clip_gradient_norm"])
    update_ops = tf.get_collection(tf.GraphKeys.UPDATE_OPS)
    with tf.control_dependencies(update_ops):
        apply_op = optimizer.apply_gradients(grads, global_step=global_step)
    # The train op's value is the global step after the update, so the loop
    # never reads a stale or racing step.
    with tf.control_dependencies([apply_op]):
        train_op = tf.identity(global_step.read_value() if hasattr(global_step, "read_value")
                               else global_step, name="train_op")
    loss = tf.add_n(tower_losses) / len(tower_losses)
    predictions = tf.concat(tower_predictions, 0)
    # (global_step is in its own collection already: GraphKeys.GLOBAL_STEP.)
    for name, tensor in (("loss", loss),
                         ("predictions", predictions), ("input_batch_raw", batch["features"]),
                         ("num_frames", batch["num_frames"]), ("labels", batch["labels"]),
                         ("train_op", train_op), ("learning_rate", learning_rate)):
        tf.add_to_collection(name, tensor)
    return {"global_step": global_step, "loss": loss, "predictions": predictions,
            "labels": batch["labels"], "train_op": train_op, "learning_rate": learning_rate}


def _device_scope(device: Optional[str]):
    # tf.device(None) would clear an outer replica device setter.
    return contextlib.nullcontext() if device is None else tf.device(device)


def _pin_variables(device: Optional[str]):
    def getter(getter, *args, **kwargs):
        with _device_scope(device):
            return getter(*args, **kwargs)
    return getter


def _bfloat16_views(pinning_getter):
    """The variable from pinning_getter (on the variable device); its float32
    view and bfloat16 cast on the tower's device."""
    def getter(getter, *args, **kwargs):
        pinned = lambda *a, **k: pinning_getter(getter, *a, **k)  # noqa: E731
        return layers.bfloat16_matmul_getter(pinned, *args, **kwargs)
    return getter


def _native_bfloat16(devices: List[str]) -> bool:
    """False only for CPU towers on a CPU without native bf16 products."""
    if any(device and "gpu" in device.lower() for device in devices):
        return True
    from bfloat16_patch.getter import cpu_has_native_bfloat16  # the CPU probe lives there
    return cpu_has_native_bfloat16()


def check_matmul_dtype(value: str) -> str:
    if value not in MATMUL_DTYPES:
        raise UserError(f"--matmul_dtype: one of {', '.join(MATMUL_DTYPES)}, got {value!r}")
    return value


# ---------------------------------------------------------------------------
# Train dir


TRAINER_FILE_PREFIXES = (checkpoints.CHECKPOINT_PREFIX + "-", "events.out.tfevents.",
                         "checkpoint", checkpoints.MODEL_FLAGS_FILE, "graph.pbtxt")


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
    removed = []
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
    dtypes = checkpoints.open_checkpoint(latest).get_variable_to_dtype_map()
    bf16 = [key for key in checkpoints.model_variable_keys(dtypes)
            if tf.as_dtype(dtypes[key]).base_dtype == tf.bfloat16]
    if bf16:
        raise UserError(f"{latest}: is a bfloat16 checkpoint (written by bfloat16_patch.convert); "
                        f"training resumes only from its own float32 checkpoints; use another "
                        f"--train_dir (distillation.train --warm_start_checkpoint can start from it)")
    if "global_step" not in dtypes:
        raise UserError(f"{latest}: has no global_step or optimizer state (an SWA or bfloat16 "
                        f"dir?); training resumes only from its own checkpoints; use another "
                        f"--train_dir")


def prepare_train_dir(train_dir: str, model_flags: Dict[str, Any], start_new: bool) -> None:
    if start_new:
        remove_trainer_files(train_dir)
    remove_save_leftovers(train_dir)
    check_resumable(train_dir)
    os.makedirs(train_dir, exist_ok=True)
    flags_path = os.path.join(train_dir, checkpoints.MODEL_FLAGS_FILE)
    if os.path.exists(flags_path):
        old = checkpoints.read_model_flags(train_dir)
        different = checkpoints.mismatched_keys(old, model_flags)
        if different:
            details = "; ".join(f"{key}: {old.get(key)!r} in the file, {model_flags.get(key)!r} now"
                                for key in different)
            raise UserError(f"{flags_path}: this train dir holds a different model ({details}); "
                            f"use another --train_dir or --start_new_model")
    checkpoints.write_model_flags(train_dir, model_flags)


@contextlib.contextmanager
def removed_on_failed_start(train_dir: str) -> Iterator[None]:
    """On a UserError before the first checkpoint, removes what this run added
    to train_dir (flags, events) and the dir itself when this run created it,
    so a failed start leaves nothing behind. Checkpoints are never removed."""
    created = not os.path.exists(train_dir)
    before = set() if created else set(os.listdir(train_dir))
    try:
        yield
    except UserError:
        if os.path.isdir(train_dir) and checkpoints.latest_checkpoint(train_dir) is None:
            for name in set(os.listdir(train_dir)) - before:
                path = os.path.join(train_dir, name)
                if name.startswith(TRAINER_FILE_PREFIXES) and os.path.isfile(path):
                    os.remove(path)
            if created:
                with contextlib.suppress(OSError):
                    os.rmdir(train_dir)
        raise


def save_checkpoint(saver, sess, train_dir: str, step: int) -> str:
    """saver.save with a one-line UserError when the checkpoint cannot be
    written (full disk, ...); the temporary files of the failed save are removed."""
    try:
        return saver.save(sess, os.path.join(train_dir, checkpoints.CHECKPOINT_PREFIX),
                          global_step=step)
    except (tf.errors.OpError, OSError) as err:
        remove_save_leftovers(train_dir)
        reason = (checkpoints.write_failure(err, train_dir)
                  or readers.data_error_message(err))
        raise UserError(f"--train_dir={train_dir}: cannot write checkpoint "
                        f"{checkpoints.CHECKPOINT_PREFIX}-{step} ({reason}); the checkpoints "
                        f"written before are kept") from None


# ---------------------------------------------------------------------------
# Loop


class Progress:
    """Prints step, loss, examples/sec and the ETA to --max_steps."""

    def __init__(self, examples_per_step: int, max_steps: Optional[int], start_step: int):
        self.examples_per_step = examples_per_step
        self.max_steps = max_steps
        self.start_step = start_step
        self.start_time = time.time()
        self.last_time = self.start_time
        self.last_step = start_step

    def rate(self, step: int) -> float:
        now = time.time()
        rate = (step - self.last_step) * self.examples_per_step / max(now - self.last_time, 1e-9)
        self.last_time, self.last_step = now, step
        return rate

    def line(self, step: int, loss: float, rate: float, extra: str = "") -> str:
        text = f"step {step:>7d} | loss {loss:9.3f} | {rate:8.1f} examples/sec"
        if self.max_steps:
            done = step - self.start_step
            elapsed = time.time() - self.start_time
            remaining = (self.max_steps - step) * elapsed / max(done, 1)
            text += f" | {100.0 * step / self.max_steps:5.1f}% | ETA {format_seconds(remaining)}"
        return text + extra


def format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def scalar_summary(writer, step: int, values: Dict[str, float]) -> None:
    summary = tf.Summary(value=[tf.Summary.Value(tag=tag, simple_value=float(value))
                                for tag, value in values.items()])
    writer.add_summary(summary, step)


def session_config(devices: List[str]) -> tf.ConfigProto:
    cpu_count = sum(1 for device in devices if device.startswith("/cpu"))
    config = tf.ConfigProto(allow_soft_placement=True,
                            device_count={"CPU": max(1, cpu_count)})
    config.gpu_options.allow_growth = True
    return config


def train(model_flags: Dict[str, Any], train_dir: str, data_pattern: str,
          config: Dict[str, Any], label_loss_fn=None, reader=None,
          warm_start: Optional[Callable[[tf.Session], None]] = None,
          log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Runs the training loop; returns {"global_step", "loss"} at the end.

    config keys: batch_size, base_learning_rate, learning_rate_decay,
    learning_rate_decay_examples, regularization_penalty, clip_gradient_norm,
    num_epochs, max_steps, save_checkpoint_steps, max_to_keep,
    keep_checkpoint_every_n_hours, num_gpu, cpu_towers, num_readers,
    shuffle_buffer, seed, summary_steps, log_steps, matmul_dtype (optional).
    """
    devices = tower_devices(config["num_gpu"], config["cpu_towers"])
    reader = reader or model_builder.make_reader(model_flags)
    graph = tf.Graph()
    with graph.as_default():
        tf.set_random_seed(config["seed"])
        with tf.device("/cpu:0"):
            dataset = readers.make_dataset(
                reader, data_pattern, config["batch_size"] * len(devices), training=True,
                num_epochs=config["num_epochs"] or None, num_parallel_reads=config["num_readers"],
                shuffle_buffer=config["shuffle_buffer"], seed=config["seed"],
                flag_name="train_data_pattern",
                skip_corrupt=config.get("skip_corrupt_records", False))
            dataset = dataset.filter(lambda b: tf.equal(tf.shape(b["labels"])[0],
                                                        config["batch_size"] * len(devices)))
            batch = tf.data.make_one_shot_iterator(dataset).get_next()
        ops = build_train_graph(model_flags, batch, devices, config, label_loss_fn)
        saver = tf.train.Saver(max_to_keep=config["max_to_keep"],
                               keep_checkpoint_every_n_hours=config["keep_checkpoint_every_n_hours"])
        init = tf.global_variables_initializer()
        graph.finalize()

    with tf.Session(graph=graph, config=session_config(devices)) as sess:
        latest = checkpoints.latest_checkpoint(train_dir)
        if latest:
            try:
                saver.restore(sess, latest)
            except (tf.errors.OpError, ValueError) as err:
                raise UserError(f"{latest}: cannot resume from it ("
                                f"{readers.data_error_message(err)}); is it a checkpoint of "
                                f"this model?") from None
            log(f"resumed from {latest}")
        else:
            sess.run(init)
            if warm_start is not None:
                warm_start(sess)
        step = int(sess.run(ops["global_step"]))
        writer = tf.summary.FileWriter(train_dir, graph if not latest else None)
        max_steps = config["max_steps"]
        progress = Progress(config["batch_size"] * len(devices), max_steps, step)
        last_saved, loss_value = (step if latest else None), float("nan")
        log(f"training {model_flags['model']} on {len(devices)} tower(s) {devices} "
            f"from step {step}" + (f" to {max_steps}" if max_steps else "") +
            f", {config.get('matmul_dtype', FLOAT32)} matmuls")
        if config.get("matmul_dtype") == BFLOAT16 and not _native_bfloat16(devices):
            log("note: this CPU has no native bfloat16 matmul (AVX512-BF16 or AMX); "
                "--matmul_dtype=bfloat16 is emulated and slower than float32 here")
        try:
            while max_steps is None or step < max_steps:
                want_metrics = (step + 1) % config["summary_steps"] == 0
                fetches = [ops["train_op"], ops["loss"], ops["learning_rate"]]
                if want_metrics:
                    fetches += [ops["predictions"], ops["labels"]]
                results = sess.run(fetches)
                step, loss_value, learning_rate = int(results[0]), float(results[1]), results[2]
                if not np.isfinite(loss_value):
                    raise UserError(f"--train_dir={train_dir}: loss became {loss_value} at step "
                                    f"{step}; lower --base_learning_rate")
                if want_metrics or step % config["log_steps"] == 0:
                    rate = progress.rate(step)
                    extra = ""
                    if want_metrics:
                        predictions, labels = results[3], results[4]
                        batch_hit = metrics.hit_at_one(predictions, labels)
                        batch_gap = metrics.global_average_precision(predictions, labels)
                        scalar_summary(writer, step, {
                            "loss": loss_value, "learning_rate": learning_rate,
                            "hit_at_one": batch_hit, "gap": batch_gap, "examples_per_sec": rate})
                        extra = f" | hit@1 {batch_hit:.3f} | gap {batch_gap:.3f}"
                    if step % config["log_steps"] == 0:
                        log(progress.line(step, loss_value, rate, extra))
                if step % config["save_checkpoint_steps"] == 0:
                    save_checkpoint(saver, sess, train_dir, step)
                    last_saved = step
        except tf.errors.OutOfRangeError:
            if step == progress.start_step:
                batch = config["batch_size"] * len(devices)
                raise UserError(f"--train_data_pattern={data_pattern}: the files hold no full "
                                f"batch of {batch} records (--batch_size); nothing to train on"
                                ) from None
            log(f"reached the end of the data ({config['num_epochs']} epochs) at step {step}")
        except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as err:
            raise UserError(f"--train_data_pattern: "
                            f"{readers.describe_data_error(err, data_pattern)}") from None
        if readers.skipped_files_summary():
            log(readers.skipped_files_summary())
        if last_saved != step:
            save_checkpoint(saver, sess, train_dir, step)
        writer.close()
        log(f"done at step {step}, checkpoint {checkpoints.latest_checkpoint(train_dir)}")
    return {"global_step": step, "loss": loss_value}


# ---------------------------------------------------------------------------
# Several machines: parameter servers and workers (between-graph replication)


def cluster_from_env() -> Optional[Dict[str, Any]]:
    """Parses TF_CONFIG ({"cluster": {...}, "task": {"type", "index"}}) or None."""
    raw = os.environ.get("TF_CONFIG", "")
    if not raw.strip():
        return None
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
        task_type, task_index = task["type"], int(task.get("index", 0))
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"TF_CONFIG: not a valid cluster description ({err})") from None
    if task_type not in cluster or task_index >= len(cluster[task_type]):
        raise UserError(f"TF_CONFIG: task {task_type}:{task_index} is not in the cluster "
                        f"{sorted(cluster)}")
    if task_type not in ("ps", "worker", "chief"):
        raise UserError(f"TF_CONFIG: task type {task_type!r} is not ps, worker or chief")
    return {"cluster": cluster, "type": task_type, "index": task_index}


class _PollingWorkerSessionCreator(tf.train.SessionCreator):
    """A non-chief worker's session: waits for the chief to initialise the
    variables, checking every second (TensorFlow's default waits 30 s)."""

    def __init__(self, scaffold, master: str, config, poll_seconds: float = 1.0,
                 max_wait_seconds: float = 3600.0):
        self.scaffold, self.master, self.config = scaffold, master, config
        self.poll_seconds, self.max_wait_seconds = poll_seconds, max_wait_seconds

    def create_session(self):
        self.scaffold.finalize()
        manager = tf.train.SessionManager(
            local_init_op=self.scaffold.local_init_op, ready_op=self.scaffold.ready_op,
            ready_for_local_init_op=self.scaffold.ready_for_local_init_op,
            graph=tf.get_default_graph(), recovery_wait_secs=self.poll_seconds)
        return manager.wait_for_session(self.master, config=self.config,
                                        max_wait_secs=self.max_wait_seconds)


def train_distributed(model_flags: Dict[str, Any], train_dir: str, data_pattern: str,
                      config: Dict[str, Any], cluster_info: Dict[str, Any],
                      log: Callable[[str], None] = print) -> Optional[Dict[str, Any]]:
    """One task of a TF_CONFIG cluster. A parameter server serves until killed.

    Workers build the same graph with variables on the parameter servers
    (replica_device_setter) and read disjoint shards of the file list; the
    chief (the "chief" task, or worker 0 when there is none) initialises or
    restores the variables and writes the checkpoints to --train_dir. A worker
    that dies and restarts reconnects and goes on with the shared variables.
    """
    cluster = tf.train.ClusterSpec(cluster_info["cluster"])
    task_type, task_index = cluster_info["type"], cluster_info["index"]
    server = tf.train.Server(cluster, job_name=task_type, task_index=task_index,
                             config=tf.ConfigProto(allow_soft_placement=True))
    if task_type == "ps":
        log(f"parameter server {task_index} serving at {server.target}")
        server.join()
        return None
    is_chief = task_type == "chief" or ("chief" not in cluster_info["cluster"]
                                        and task_index == 0)
    workers = [(job, i) for job in ("chief", "worker")
               for i in range(len(cluster_info["cluster"].get(job, [])))]
    shard = workers.index((task_type, task_index))
    files = readers.resolve_files(data_pattern, "train_data_pattern")
    if len(files) >= len(workers):
        files = files[shard::len(workers)]
    reader = model_builder.make_reader(model_flags)
    graph = tf.Graph()
    with graph.as_default():
        tf.set_random_seed(config["seed"] + shard)
        with tf.device(f"/job:{task_type}/task:{task_index}/cpu:0"):
            dataset = readers.make_dataset(
                reader, ",".join(files), config["batch_size"], training=True,
                num_epochs=config["num_epochs"] or None, num_parallel_reads=config["num_readers"],
                shuffle_buffer=config["shuffle_buffer"], seed=config["seed"] + shard,
                flag_name="train_data_pattern")
            dataset = dataset.filter(
                lambda b: tf.equal(tf.shape(b["labels"])[0], config["batch_size"]))
            batch = tf.data.make_one_shot_iterator(dataset).get_next()
        setter = tf.train.replica_device_setter(
            worker_device=f"/job:{task_type}/task:{task_index}", cluster=cluster)
        with tf.device(setter):
            ops = build_train_graph(model_flags, batch, [None], config)
            saver = tf.train.Saver(max_to_keep=config["max_to_keep"],
                                   keep_checkpoint_every_n_hours=config[
                                       "keep_checkpoint_every_n_hours"])
    hooks = [tf.train.StopAtStepHook(last_step=config["max_steps"])] if config["max_steps"] else []
    scaffold = tf.train.Scaffold(saver=saver)
    step, loss_value = 0, float("nan")
    log(f"{task_type} {task_index} of {len(workers)} workers ({'chief' if is_chief else 'not chief'}), "
        f"{len(files)} file(s)")
    # Talk only to the parameter servers and this task, so a worker does not
    # wait for (or hang on) the other workers.
    session_config = tf.ConfigProto(allow_soft_placement=True, device_filters=[
        "/job:ps", f"/job:{task_type}/task:{task_index}"])
    with graph.as_default():
        if is_chief:
            session = tf.train.MonitoredTrainingSession(
                master=server.target, is_chief=True, checkpoint_dir=train_dir,
                scaffold=scaffold, hooks=hooks,
                save_checkpoint_steps=config["save_checkpoint_steps"],
                save_checkpoint_secs=None, save_summaries_steps=None,
                save_summaries_secs=None, log_step_count_steps=None, config=session_config)
        else:
            session = tf.train.MonitoredSession(
                session_creator=_PollingWorkerSessionCreator(scaffold, server.target,
                                                             session_config),
                hooks=hooks)
    with graph.as_default(), session as sess:
        progress = Progress(config["batch_size"], config["max_steps"], 0)
        while not sess.should_stop():
            try:
                step, loss_value = sess.run([ops["train_op"], ops["loss"]])
            except tf.errors.OutOfRangeError:
                break
            if step % config["log_steps"] == 0:
                log(progress.line(int(step), float(loss_value), progress.rate(int(step))))
    log(f"{task_type} {task_index} done at step {step}")
    return {"global_step": int(step), "loss": float(loss_value)}


def config_from_flags() -> Dict[str, Any]:
    keys = ("batch_size", "base_learning_rate", "learning_rate_decay",
            "learning_rate_decay_examples", "regularization_penalty", "clip_gradient_norm",
            "num_epochs", "max_steps", "save_checkpoint_steps", "max_to_keep",
            "keep_checkpoint_every_n_hours", "num_gpu", "cpu_towers", "num_readers",
            "shuffle_buffer", "seed", "summary_steps", "log_steps", "skip_corrupt_records",
            "matmul_dtype")
    config = {key: FLAGS[key].value for key in keys}
    check_matmul_dtype(config["matmul_dtype"])
    for key in ("batch_size", "save_checkpoint_steps", "summary_steps", "log_steps"):
        if config[key] <= 0:
            raise UserError(f"--{key} must be positive, got {config[key]}")
    return config


def model_flags_from_flags() -> Dict[str, Any]:
    """model_flags.json content from the command line; rejects hyper-parameter
    flags that the chosen model does not have."""
    try:
        cls, _ = registry.resolve(FLAGS.model)
    except KeyError as err:
        raise UserError(f"--model: {err.args[0]}") from None
    for key in registry.all_hparam_defaults():
        if FLAGS[key].value is not None and key not in cls.DEFAULTS:
            raise UserError(f"--{key}: not a hyper-parameter of --model={FLAGS.model} "
                            f"({cls.__name__}: {', '.join(sorted(cls.DEFAULTS))})")
    return model_builder.make_model_flags(
        FLAGS.model, FLAGS.feature_names, FLAGS.feature_sizes, FLAGS.frame_features,
        FLAGS.num_classes, FLAGS.label_loss, registry.hparams_from_flags(FLAGS.model))


def main(argv) -> None:
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.train_data_pattern:
        raise UserError("--train_data_pattern: required")
    model_flags = model_flags_from_flags()
    losses.get_loss(FLAGS.label_loss)
    config = config_from_flags()
    readers.resolve_files(FLAGS.train_data_pattern, "train_data_pattern")
    cluster_info = cluster_from_env()
    if cluster_info is not None:
        if cluster_info["type"] != "ps":
            os.makedirs(FLAGS.train_dir, exist_ok=True)
            if cluster_info["type"] == "chief" or (cluster_info["index"] == 0 and
                                                   "chief" not in cluster_info["cluster"]):
                prepare_train_dir(FLAGS.train_dir, model_flags, False)
        train_distributed(model_flags, FLAGS.train_dir, FLAGS.train_data_pattern, config,
                          cluster_info, log=lambda line: print(line, flush=True))
        return
    with removed_on_failed_start(FLAGS.train_dir):
        prepare_train_dir(FLAGS.train_dir, model_flags, FLAGS.start_new_model)
        train(model_flags, FLAGS.train_dir, FLAGS.train_data_pattern, config,
              log=lambda line: print(line, flush=True))


if __name__ == "__main__":
    define_flags()
    run_main(main)
