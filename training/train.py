"""Trains one model: python -m training.train --train_dir=... --model=...

TF1-style graph (training.train_graph): tf.data input, in-graph towers over
the visible GPUs (or virtual CPU devices) with the batch split and gradients
averaged, Adam, staircase learning-rate decay counted in examples,
per-variable gradient clipping, batch-norm updates on every step, optional
bfloat16 weight products (--matmul_dtype). Saver checkpoints every
--save_checkpoint_steps and at the end, TensorBoard summaries and a progress
line. Rerunning the same command resumes from the latest checkpoint
(training.train_dir), also after SIGINT or SIGTERM, which save the current
step's checkpoint first; a second trainer of a train dir is refused (its
lock). Under TF_CONFIG it runs as one task of a cluster
(training.distributed). A preset's schedule (models.presets) fills every
schedule flag left unset; --size=tiny|test shrinks the model and the run.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, Optional

import numpy as np
from absl import flags

from models import presets
from models.tf_compat import tf
from training import (
    checkpoint_fit,
    checkpoints,
    distributed,
    losses,
    metrics,
    model_builder,
    paths,
    quantize,
    readers,
    record_layouts,
    train_config,
    train_graph,
)
from training import flags as shared_flags
from training import train_dir as train_dirs
from training.cli import (
    Interrupted,
    UserError,
    first_line,
    interrupt_pending,
    interrupts_deferred,
    run_main,
)
from training.model_flags import ModelFlags, layout_of
from training.progress import Progress
from training.train_config import TrainConfig

FLAGS = flags.FLAGS

SCHEDULE_KEYS = train_config.SCHEDULE_KEYS
CONFIG_KEYS = train_config.CONFIG_KEYS


def _define_schedule_flags() -> None:
    define = shared_flags.define
    unset = " (unset: the preset's schedule, else {})".format
    default = presets.DEFAULT_SCHEDULE
    shared_flags.define_shared("batch_size", None, "Examples per tower per step"
                               + unset(default.batch_size) + ".")
    define(flags.DEFINE_float, "base_learning_rate", None,
           "Learning rate at step 0" + unset(default.base_learning_rate) + ".")
    define(flags.DEFINE_float, "learning_rate_decay", None,
           "Staircase decay factor" + unset(default.learning_rate_decay) + ".")
    define(flags.DEFINE_float, "learning_rate_decay_examples", None,
           "Examples between two decays" + unset(default.learning_rate_decay_examples) + ".")
    define(flags.DEFINE_integer, "max_steps", None, "Stop after this global step"
           + unset("no limit") + ".")
    define(flags.DEFINE_integer, "save_checkpoint_steps", None, "Checkpoint every N steps"
           + unset(default.save_checkpoint_steps) + ".")
    define(flags.DEFINE_integer, "log_steps", None, "Print a progress line every N steps"
           + unset(default.log_steps) + ".")
    define(flags.DEFINE_integer, "swa_tail_steps", None, "Steps of the averaging tail after "
           "--max_steps, at a constant rate, for swa.average (unset: the preset's, or 0 when "
           "--max_steps is given).")
    define(flags.DEFINE_float, "swa_learning_rate", None, "The tail's constant rate (unset: "
           "the preset's, else the rate reached at --max_steps).")
    define(flags.DEFINE_integer, "swa_save_steps", None, "Checkpoint every N steps in the tail"
           + unset("--save_checkpoint_steps") + ".")
    define(flags.DEFINE_enum, "size", "full", "Model and run size: full (the original), tiny "
           "(minutes on a CPU) or test (the suite's).", enum_values=list(presets.SIZES))


def define_flags() -> None:
    """Training flags (the original's names)."""
    shared_flags.define_shared_flags({
        "train_dir": ("/tmp/yt8m_model/", "Where checkpoints and logs go.", paths.OUT_DIR),
        "train_data_pattern": "", "num_readers": 8, "seed": 2018,
        "num_classes": (None, "(unset: the --record_kind's, 3862; 4716 for the 2017 kinds)"),
        "record_kind": ("", "Recorded in model_flags.json (unset: frame)."),
        "skip_corrupt_records": False, "compression": "auto"})
    _define_schedule_flags()
    define = shared_flags.define
    define(flags.DEFINE_string, "model", "FrameMeanMoeModel", "Model preset or class name.")
    define(flags.DEFINE_bool, "frame_features", None, "The starter's flag: true is "
           "--record_kind=frame, false --record_kind=video.")
    define(flags.DEFINE_string, "feature_names", "", "Comma-separated feature names (unset: "
           "the --record_kind's, rgb,audio or mean_rgb,mean_audio).")
    define(flags.DEFINE_string, "feature_sizes", "", "Comma-separated feature sizes (unset: "
           "the --record_kind's, 1024,128).")
    define(flags.DEFINE_string, "label_loss", "CrossEntropyLoss", "Loss function name.")
    define(flags.DEFINE_float, "regularization_penalty", 1.0, "Weight of the L2 terms.")
    define(flags.DEFINE_float, "clip_gradient_norm", 1.0, "Per-variable gradient norm clip "
           "(0: off).")
    define(flags.DEFINE_string, "matmul_dtype", train_graph.FLOAT32,
           "Dtype of the weight products: float32 (as the original) or bfloat16 (mixed "
           "precision: float32 variables, optimizer and checkpoints; fast where the CPU has "
           "AVX512-BF16/AMX or the GPU has bf16 tensor cores).")
    define(flags.DEFINE_integer, "num_epochs", 100, "Passes over the training data (0: no limit).")
    define(flags.DEFINE_integer, "max_to_keep", 10, "Checkpoints kept (plus hourly ones).")
    define(flags.DEFINE_float, "keep_checkpoint_every_n_hours", 1.0, "Also keep one per N hours.")
    define(flags.DEFINE_integer, "num_gpu", 1, "GPUs to use (towers); 0 uses every visible GPU.")
    define(flags.DEFINE_integer, "cpu_towers", 1, "Towers on virtual CPU devices when no GPU "
           "is visible (tests the multi-tower path).")
    define(flags.DEFINE_bool, "start_new_model", False, "Remove this trainer's checkpoints and "
           "event files from --train_dir and start from scratch.")
    define(flags.DEFINE_integer, "shuffle_buffer", 2048, "Examples in the shuffle buffer.")
    define(flags.DEFINE_integer, "summary_steps", 10, "Write summaries every N steps.")
    model_builder.define_hparam_flags()


# ---------------------------------------------------------------------------
# Loop


def scalar_summary(writer, step: int, values: Dict[str, float]) -> None:
    summary = tf.Summary(value=[tf.Summary.Value(tag=tag, simple_value=float(value))
                                for tag, value in values.items()])
    writer.add_summary(summary, step)


def _build(model_flags: ModelFlags, data_pattern: str, config: TrainConfig, devices, label_loss_fn,
           reader):
    """(graph, ops, saver, init) of a local training run, the graph finalised."""
    graph = tf.Graph()
    with graph.as_default():
        tf.set_random_seed(config.seed)
        batch = train_graph.make_train_batch(reader, data_pattern, config,
                                             config.batch_size * len(devices), config.seed)
        ops = train_graph.build_train_graph(model_flags, batch, devices, config, label_loss_fn)
        # Every checkpoint of the averaging tail is kept for swa.average.
        keep = max(config.max_to_keep, train_graph.tail_checkpoints(config) + 1)
        saver = tf.train.Saver(max_to_keep=keep,
                               keep_checkpoint_every_n_hours=config.keep_checkpoint_every_n_hours)
        init = tf.global_variables_initializer()
        ops["finite_check"] = train_dirs.finite_check(tf.global_variables())
        graph.finalize()
    return graph, ops, saver, init


def _restore_or_init(sess, saver, init, train_dir: str, warm_start, log) -> Optional[str]:
    """Resumes from the latest checkpoint of train_dir (returned), or
    initialises (and warm-starts) a fresh run (None)."""
    checkpoints.check_state_file(train_dir)
    latest = checkpoints.latest_checkpoint(train_dir)
    if latest:
        checkpoints.verify_checkpoint(latest)
        try:
            saver.restore(sess, latest)
        except (tf.errors.OpError, ValueError) as err:
            raise UserError(checkpoints.read_failure(err, latest)
                            or f"{latest}: cannot resume from it ({first_line(err)}); is "
                               f"it a checkpoint of this model?") from None
        log(f"resumed from {latest}")
        return latest
    sess.run(init)
    if warm_start is not None:
        warm_start(sess)
    return None


def warm_start_from(path: str, log: Callable[[str], None] = print,
                    flag: str = "warm_start_checkpoint") -> Callable[[tf.Session], None]:
    """A train() warm_start hook: loads the model variables (under tower/, no
    optimizer slots, no global_step) from a checkpoint or model dir (path).

    float32, bfloat16 and int8 checkpoints work (int8 is dequantised; values
    are cast to the variable's dtype). Raises UserError naming --<flag> and the
    checkpoint when a model variable is missing or has another shape.
    Distillation and segment fine-tuning start from it."""
    checkpoint = checkpoints.find_checkpoint(path)
    reader = checkpoints.open_checkpoint(checkpoint)

    def warm_start(sess: tf.Session) -> None:
        variables = {var.op.name: var
                     for var in sess.graph.get_collection(tf.GraphKeys.GLOBAL_VARIABLES)
                     if checkpoints.is_model_variable_key(var.op.name)}
        try:
            specs = checkpoint_fit.checkpoint_specs(checkpoint, model_only=False)
            checkpoint_fit.check_fits(checkpoint, variables, compare_dtypes=False, stored=specs)
        except UserError as err:
            raise UserError(f"--{flag}: {err}") from None
        for name, var in variables.items():
            value = np.asarray(quantize.read_dequantized(reader, name, specs))
            value = value.astype(var.dtype.base_dtype.as_numpy_dtype)
            var.load(value, sess)
        log(f"warm start: loaded {len(variables)} model variables from {checkpoint} "
            f"(global step, learning rate and optimizer state start fresh)")

    return warm_start


def _train_step(sess, ops, step: int, config: TrainConfig, writer, progress,
                train_dir: str, log) -> tuple:
    """One step, its summaries and progress line; -> (step, loss)."""
    want_metrics = (step + 1) % config.summary_steps == 0
    fetches = [ops["train_op"], ops["loss"], ops["learning_rate"]]
    if want_metrics:
        fetches += [ops["predictions"], ops["labels"]]
    results = sess.run(fetches)
    step, loss_value, learning_rate = int(results[0]), float(results[1]), results[2]
    if not np.isfinite(loss_value):
        raise train_dirs.non_finite_error(train_dir, step, f"the loss is {loss_value}")
    if want_metrics or step % config.log_steps == 0:
        rate = progress.rate(step)
        extra = ""
        if want_metrics:
            batch_hit = metrics.hit_at_one(results[3], results[4])
            batch_gap = metrics.global_average_precision(results[3], results[4])
            scalar_summary(writer, step, {
                "loss": loss_value, "learning_rate": learning_rate,
                "hit_at_one": batch_hit, "gap": batch_gap, "examples_per_sec": rate})
            extra = f" | hit@1 {batch_hit:.3f} | gap {batch_gap:.3f}"
        if step % config.log_steps == 0:
            log(progress.line(step, f"step {step:>7d} | loss {loss_value:9.3f}", rate, extra))
    return step, loss_value


def _loop(sess, ops, saver, config: TrainConfig, writer, train_dir: str, data_pattern: str,
          start: int, saved: Optional[int], examples_per_step: int, log) -> tuple:
    """Steps until --max_steps and the averaging tail, or the end of the data;
    -> (step, loss, last saved step)."""
    max_steps = train_graph.last_step(config)
    progress = Progress("examples", max_steps, start, units_per_count=examples_per_step)
    step, loss_value = start, float("nan")
    try:
        while (max_steps is None or step < max_steps) and not interrupt_pending():
            step, loss_value = _train_step(sess, ops, step, config, writer, progress,
                                           train_dir, log)
            if step % train_graph.save_every(config, step) == 0:
                train_dirs.save_checkpoint(saver, sess, train_dir, step, ops["finite_check"])
                saved = step
    except tf.errors.OutOfRangeError:
        if step == start:
            raise UserError(f"--train_data_pattern={data_pattern}: the files hold no full "
                            f"batch of {examples_per_step} records (--batch_size); nothing to "
                            f"train on") from None
        log(f"reached the end of the data ({config.num_epochs} epochs) at step {step}")
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as err:
        described = readers.describe_data_error(err, data_pattern, config.compression)
        raise UserError(f"--train_data_pattern: {described}") from None
    return step, loss_value, saved


def train(model_flags: ModelFlags, train_dir: str, data_pattern: str,
          config: TrainConfig, label_loss_fn=None, reader=None,
          warm_start: Optional[Callable[[tf.Session], None]] = None,
          log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Runs the training loop; returns {"global_step", "loss"} at the end.

    config: the run's TrainConfig (config_from_flags).
    label_loss_fn, reader: distillation's loss and reader; warm_start(sess)
    initialises a fresh run's model variables.
    """
    devices = train_graph.tower_devices(config.num_gpu, config.cpu_towers)
    reader = reader or model_builder.make_reader(model_flags)
    graph, ops, saver, init = _build(model_flags, data_pattern, config, devices,
                                     label_loss_fn, reader)
    with tf.Session(graph=graph, config=train_graph.session_config(devices)) as sess:
        latest = _restore_or_init(sess, saver, init, train_dir, warm_start, log)
        start = int(sess.run(ops["global_step"]))
        writer = tf.summary.FileWriter(train_dir, graph if not latest else None)
        matmul_dtype = config.matmul_dtype
        log(f"training {model_flags.model} on {len(devices)} tower(s) {devices} "
            f"from step {start}" + (f" to {train_graph.last_step(config)}"
                                    if config.max_steps else "")
            + f", {matmul_dtype} matmuls")
        if matmul_dtype == train_graph.BFLOAT16 and not train_graph.native_bfloat16(devices):
            log("note: this CPU has no native bfloat16 matmul (AVX512-BF16 or AMX); "
                "--matmul_dtype=bfloat16 is emulated and slower than float32 here")
        try:
            # A SIGINT/SIGTERM ends the loop after its step; the checkpoint of
            # that step is saved (a second signal waits for it), then it is raised.
            with interrupts_deferred():
                step, loss_value, saved = _loop(sess, ops, saver, config, writer, train_dir,
                                                data_pattern, start, start if latest else None,
                                                config.batch_size * len(devices), log)
                if readers.skipped_files_summary():
                    log(readers.skipped_files_summary())
                if saved != step:
                    train_dirs.save_checkpoint(saver, sess, train_dir, step, ops["finite_check"])
                writer.close()
        except Interrupted as interrupt:
            raise train_dirs.noted_with_checkpoint(interrupt, train_dir) from None
        log(f"done at step {step}, checkpoint {checkpoints.latest_checkpoint(train_dir)}")
    return {"global_step": step, "loss": loss_value}


# ---------------------------------------------------------------------------
# Command line


def config_from_flags() -> TrainConfig:
    """The run's config: flags, with the unset schedule flags taken from the
    preset's schedule at --size (or the generic schedule for a class name);
    a non-positive count or an unknown --matmul_dtype is a UserError."""
    preset = presets.find(FLAGS.model)
    schedule = (preset.schedule_for(FLAGS.size) if preset else
                presets.schedule_for(presets.DEFAULT_SCHEDULE, FLAGS.size))
    values: Dict[str, Any] = {key: FLAGS[key].value for key in CONFIG_KEYS}
    for key in SCHEDULE_KEYS:
        if values[key] is None:
            values[key] = getattr(schedule, key)
    if FLAGS.max_steps is not None and FLAGS.swa_tail_steps is None:
        # A preset's averaging tail is sized for its own --max_steps.
        values["swa_tail_steps"] = 0
    config = TrainConfig(**values)
    train_graph.check_matmul_dtype(config.matmul_dtype)
    train_config.check_positive(values, ("batch_size", "save_checkpoint_steps",
                                         "summary_steps", "log_steps", "swa_save_steps"))
    train_graph.tail_steps(config)
    return config


def model_flags_from_flags() -> ModelFlags:
    """model_flags.json's record from the command line: the --record_kind
    (or the starter's alias), its defaults for the classes and features
    left unset; rejects hyper-parameter flags that the chosen model does not
    have, and a kind the trainer does not train on (2019 segments)."""
    model_builder.check_hparam_flags(FLAGS.model)
    alias = FLAGS.frame_features    # (None: not given)
    kind = record_layouts.asked_kind(FLAGS.record_kind, "frame", {} if alias is None else {
        f"frame_features={str(alias).lower()}": layout_of(alias)})
    layout = record_layouts.layout(kind)
    if not layout.trainable:
        raise UserError(f"--record_kind={kind}: {layout.what} train a frame-level model "
                        f"through segment_finetune.train (docs/segments.md)")
    num_classes = layout.num_classes if FLAGS.num_classes is None else FLAGS.num_classes
    return model_builder.make_model_flags(
        FLAGS.model, FLAGS.feature_names or layout.feature_names,
        FLAGS.feature_sizes or layout.feature_sizes, kind, num_classes, FLAGS.label_loss,
        model_builder.hparams_from_flags(FLAGS.model), FLAGS.size)


def _run_cluster_task(model_flags: ModelFlags, config: TrainConfig,
                      cluster_info: Dict[str, Any]) -> None:
    """One task of a TF_CONFIG cluster; the chief holds the train dir's lock."""
    def run() -> None:
        distributed.train_distributed(model_flags, FLAGS.train_dir, FLAGS.train_data_pattern,
                                      config, cluster_info,
                                      log=lambda line: print(line, flush=True))

    if cluster_info["type"] != "ps" and distributed.is_chief(cluster_info):
        with train_dirs.removed_on_failed_start(FLAGS.train_dir):
            train_dirs.prepare_train_dir(FLAGS.train_dir, model_flags, False)
            run()
        return
    if cluster_info["type"] != "ps":
        os.makedirs(FLAGS.train_dir, exist_ok=True)
    run()


def main(argv) -> None:
    del argv
    shared_flags.require(train_data_pattern=FLAGS.train_data_pattern)
    model_flags = model_flags_from_flags()
    losses.get_loss(FLAGS.label_loss)
    config = config_from_flags()
    files = readers.resolve_files(FLAGS.train_data_pattern, "train_data_pattern")
    readers.check_records(files, "train_data_pattern", model_builder.make_reader(model_flags),
                          "training", FLAGS.compression,
                          hint="check --record_kind / --feature_names",
                          kind_of=record_layouts.kind_of_record)
    cluster_info = distributed.cluster_from_env()
    if cluster_info is not None:
        _run_cluster_task(model_flags, config, cluster_info)
        return
    with train_dirs.removed_on_failed_start(FLAGS.train_dir):
        train_dirs.prepare_train_dir(FLAGS.train_dir, model_flags, FLAGS.start_new_model)
        train(model_flags, FLAGS.train_dir, FLAGS.train_data_pattern, config,
              log=lambda line: print(line, flush=True))


if __name__ == "__main__":
    define_flags()
    run_main(main)
