"""The training graph: towers over the devices, the loss, Adam with a
staircase learning rate counted in examples, per-variable gradient clipping,
batch-norm updates on every step, optional bfloat16 weight products.

Towers: with several devices (GPUs, or virtual CPU devices in tests) the batch
is split between them, each tower builds the model under the shared scope
``tower`` and the gradients are averaged (the original summed them). The
variables live on the CPU when there are several towers (the original's
choice: every GPU reads them over the bus, none holds the only copy), on the
tower's own device when there is one, and on the parameter servers in a
cluster (devices [None], placed by the replica device setter).
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Dict, List, Optional, Sequence

from models import layers
from models.tf_compat import tf
from training import losses, model_builder, precision, readers
from training.cli import UserError
from training.model_flags import ModelFlags
from training.train_config import TrainConfig

FLOAT32 = "float32"
BFLOAT16 = "bfloat16"
MATMUL_DTYPES = (FLOAT32, BFLOAT16)


def tower_devices(num_gpu: int, cpu_towers: int) -> List[str]:
    """The towers' devices: the first num_gpu visible GPUs (0: all), else
    cpu_towers virtual CPU devices."""
    gpus = [f"/gpu:{index}" for index in range(len(precision.visible_gpus()))]
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


def make_train_batch(reader, data_pattern: str, config: TrainConfig, batch_size: int,
                     seed: int, files_flag: str = "train_data_pattern") -> Dict[str, tf.Tensor]:
    """The next full training batch (batch_size rows) of data_pattern, read
    on the CPU: shuffled, config.num_epochs passes (0: forever). The one
    input pipeline of the local and the distributed trainer.

    A row is a record, or, for a reader whose parse yields a varying number
    of rows per record (its several_rows_per_record is True: the rated
    segments of a 2019 video), one of those rows: batches of batch_size
    records are parsed, their rows unbatched, shuffled in a buffer of
    config.shuffle_buffer rows and batched again, every batch full."""
    with tf.device("/cpu:0"):
        dataset = readers.make_dataset(
            reader, data_pattern, batch_size, training=True,
            num_epochs=config.num_epochs or None, num_parallel_reads=config.num_readers,
            shuffle_buffer=config.shuffle_buffer, seed=seed, flag_name=files_flag,
            skip_corrupt=config.skip_corrupt_records, compression=config.compression)
        if getattr(reader, "several_rows_per_record", False):
            dataset = _rebatched_rows(dataset, batch_size, config.shuffle_buffer, seed)
        else:
            dataset = dataset.filter(tf.autograph.experimental.do_not_convert(
                lambda b: tf.equal(tf.shape(b["labels"])[0], batch_size)))
        return tf.data.make_one_shot_iterator(dataset).get_next()


def _rebatched_rows(dataset, batch_size: int, shuffle_buffer: int, seed: Optional[int]):
    """Parsed batches of any number of rows -> batches of exactly batch_size
    rows (the remainder of the data dropped), shuffled across records."""
    dataset = dataset.unbatch()
    if shuffle_buffer and shuffle_buffer > 1:
        # (make_dataset's two shuffles use seed and seed + 1.)
        dataset = dataset.shuffle(int(shuffle_buffer), seed=None if seed is None else seed + 2,
                                  reshuffle_each_iteration=True)
    return dataset.batch(int(batch_size), drop_remainder=True)


def tail_steps(config: TrainConfig) -> int:
    """Steps of the averaging tail after --max_steps (0: none); a UserError
    when negative or without --max_steps."""
    tail = int(config.swa_tail_steps or 0)
    if tail < 0:
        raise UserError(f"--swa_tail_steps must be 0 or more, got {tail}")
    if tail and config.max_steps is None:
        raise UserError("--swa_tail_steps: the averaging tail follows --max_steps; set it")
    return tail


def last_step(config: TrainConfig) -> Optional[int]:
    """The step training ends at: --max_steps plus the tail (None: no limit)."""
    if config.max_steps is None:
        return None
    return config.max_steps + tail_steps(config)


def save_every(config: TrainConfig, step: int) -> int:
    """Steps between checkpoints at `step`: the tail's own cadence after --max_steps."""
    if tail_steps(config) and config.max_steps is not None and step > config.max_steps:
        return int(config.swa_save_steps or config.save_checkpoint_steps)
    return int(config.save_checkpoint_steps)


def tail_checkpoints(config: TrainConfig) -> int:
    """How many checkpoints the tail writes (the Saver keeps them all)."""
    tail = tail_steps(config)
    if not tail or config.max_steps is None:
        return 0
    return -(-tail // save_every(config, config.max_steps + 1))


def decayed_rate(config: TrainConfig, step: float, num_towers: int) -> float:
    """base * decay^floor(examples / decay_examples) at `step` (plain Python)."""
    examples = step * config.batch_size * num_towers
    return config.base_learning_rate * config.learning_rate_decay ** math.floor(
        examples / config.learning_rate_decay_examples)


def _learning_rate(global_step, config: TrainConfig, num_towers: int) -> tf.Tensor:
    """base * decay^floor(examples / decay_examples), counted in examples; in
    the averaging tail (steps after --max_steps) the constant tail rate."""
    examples_seen = tf.cast(global_step, tf.float32) * float(config.batch_size * num_towers)
    decayed = tf.train.exponential_decay(
        config.base_learning_rate, examples_seen, config.learning_rate_decay_examples,
        config.learning_rate_decay, staircase=True)
    if not tail_steps(config) or config.max_steps is None:
        return decayed
    tail_rate = config.swa_learning_rate
    if tail_rate is None:
        tail_rate = decayed_rate(config, config.max_steps, num_towers)
    # global_step counts the steps done: the step run at max_steps is the tail's first.
    return tf.where(global_step < config.max_steps, decayed,
                    tf.constant(float(tail_rate), decayed.dtype))


def _tower_getter(devices: List[str], matmul_dtype: str):
    # Several towers share variables on the CPU; in a cluster (devices [None])
    # the replica device setter places them on the parameter servers.
    getter = _pin_variables("/cpu:0" if len(devices) > 1 else devices[0])
    if check_matmul_dtype(matmul_dtype) == BFLOAT16:
        getter = _bfloat16_views(getter)
    return getter


def _towers(model_flags: ModelFlags, batch, devices, config: TrainConfig, optimizer,
            label_loss_fn):
    """(gradients, label losses, predictions) of each tower."""
    parts = {key: tf.split(value, len(devices)) for key, value in batch.items()}
    getter = _tower_getter(devices, config.matmul_dtype)
    tower_grads, tower_losses, tower_predictions = [], [], []
    for index, device in enumerate(devices):
        part = {key: values[index] for key, values in parts.items()}
        with _device_scope(device), tf.variable_scope("tower", reuse=index > 0,
                                                  custom_getter=getter):
            model = model_builder.build_model(model_flags)
            predictions = model_builder.model_predictions(
                model, part["features"], part["num_frames"], is_training=True)
            label_loss = label_loss_fn(predictions, part)
            total = label_loss + config.regularization_penalty * losses.regularization_loss()
            tower_grads.append(optimizer.compute_gradients(total))
            tower_losses.append(label_loss)
            tower_predictions.append(predictions)
    return tower_grads, tower_losses, tower_predictions


def build_train_graph(model_flags: ModelFlags, batch: Dict[str, tf.Tensor],
                      devices: Sequence[Optional[str]], config: TrainConfig,
                      label_loss_fn: Optional[Callable[..., tf.Tensor]] = None
                      ) -> Dict[str, Any]:
    """Adds the towers, loss, optimizer and train op to the default graph.

    batch: the reader's dict with batch size batch_size * len(devices).
    label_loss_fn(predictions, batch) -> scalar; defaults to the model's
    label loss against batch["labels"] (distillation passes its own).
    config.matmul_dtype = bfloat16 makes every weight product of the towers
    a bfloat16 matmul (models.layers.bfloat16_matmul_getter).
    Returns the tensors the loop needs.
    """
    global_step = tf.train.get_or_create_global_step()
    learning_rate = _learning_rate(global_step, config, len(devices))
    optimizer = tf.train.AdamOptimizer(learning_rate)
    if label_loss_fn is None:
        loss_of = losses.get_loss(model_flags.label_loss)
        label_loss_fn = lambda predictions, part: loss_of(predictions, part["labels"])  # noqa: E731
    tower_grads, tower_losses, tower_predictions = _towers(
        model_flags, batch, devices, config, optimizer, label_loss_fn)
    grads = clip_per_variable(average_gradients(tower_grads), config.clip_gradient_norm)
    with tf.control_dependencies(tf.get_collection(tf.GraphKeys.UPDATE_OPS)):
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


def native_bfloat16(devices: List[str]) -> bool:
    """True when the towers' devices multiply bfloat16 natively (GPUs with
    compute capability >= 8.0, or an AVX512-BF16/AMX CPU)."""
    if any(device and "gpu" in device.lower() for device in devices):
        return precision.gpu_has_native_bfloat16()
    return precision.cpu_has_native_bfloat16()


def check_matmul_dtype(value: str) -> str:
    if value not in MATMUL_DTYPES:
        raise UserError(f"--matmul_dtype: one of {', '.join(MATMUL_DTYPES)}, got {value!r}")
    return value


def session_config(devices: List[str]) -> tf.ConfigProto:
    cpu_count = sum(1 for device in devices if device.startswith("/cpu"))
    config = tf.ConfigProto(allow_soft_placement=True,
                            device_count={"CPU": max(1, cpu_count)})
    config.gpu_options.allow_growth = True
    return config
