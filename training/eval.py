"""Evaluates checkpoints: python -m training.eval --train_dir=... --eval_data_pattern=...

Prints and writes Hit@1, PERR, mAP, GAP@20 and the loss (eval_results.json
and TensorBoard events under <train_dir>/eval). Evaluates the latest
checkpoint (or --checkpoint_file) once with --run_once, otherwise keeps
watching the train dir and evaluates each new checkpoint.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, Optional

from absl import flags

from training import checkpoints, losses, metrics, model_builder, readers
from training.errors import UserError, define_flag, run_main
from training.tf_compat import tf

FLAGS = flags.FLAGS


def define_flags() -> None:
    define_flag(flags.DEFINE_string, "train_dir", "", "Model dir (with model_flags.json) to evaluate.")
    define_flag(flags.DEFINE_string, "eval_data_pattern", "", "Comma-separated globs of evaluation TFRecords.")
    define_flag(flags.DEFINE_string, "checkpoint_file", "", "A checkpoint prefix (default: the latest).")
    define_flag(flags.DEFINE_integer, "batch_size", 256, "Examples per evaluation batch.")
    define_flag(flags.DEFINE_integer, "top_k", 20, "k of GAP@k.")
    define_flag(flags.DEFINE_bool, "run_once", False, "Evaluate once and exit (else watch --train_dir).")
    define_flag(flags.DEFINE_integer, "watch_seconds", 60, "Polling period while watching.")
    define_flag(flags.DEFINE_integer, "num_readers", 4, "Files read in parallel.")
    define_flag(flags.DEFINE_string, "frame_sampling", None, "Override the models' frame sampling at "
                        "evaluation: random (the original) or uniform (deterministic).")
    define_flag(flags.DEFINE_integer, "seed", 2018, "Graph-level random seed (frame sampling).")
    define_flag(flags.DEFINE_bool, "skip_corrupt_records", False, "Skip the damaged rest of "
                "corrupt or truncated TFRecord files (default: stop with an error).")
    define_flag(flags.DEFINE_string, "bf16_compute", "", "How a bfloat16 checkpoint computes: "
                "cast_each_step, cast_at_load or bfloat16 (default: as ensemble.build, "
                "bfloat16 on CPUs with native bf16 products, else cast_at_load).")


def build_eval_graph(model_flags: Dict[str, Any], data_pattern: str, batch_size: int,
                     frame_sampling: Optional[str] = None, num_readers: int = 4,
                     scope: str = "tower", custom_getter=None,
                     flag_name: str = "eval_data_pattern",
                     skip_corrupt: bool = False) -> Dict[str, tf.Tensor]:
    """The evaluation graph in the default graph: data, model, loss."""
    reader = model_builder.make_reader(model_flags)
    dataset = readers.make_dataset(reader, data_pattern, batch_size, training=False,
                                   num_epochs=1, num_parallel_reads=num_readers,
                                   flag_name=flag_name, skip_corrupt=skip_corrupt)
    batch = tf.data.make_one_shot_iterator(dataset).get_next()
    model = model_builder.build_model(model_flags, {"frame_sampling": frame_sampling})
    with tf.variable_scope(scope, custom_getter=custom_getter):
        predictions = model_builder.model_predictions(model, batch["features"],
                                                      batch["num_frames"], is_training=False)
    loss = losses.get_loss(model_flags.get("label_loss", "CrossEntropyLoss"))(
        predictions, batch["labels"])
    for name in ("input_batch_raw", "num_frames", "labels", "video_id_batch"):
        tf.add_to_collection(name, batch["features" if name == "input_batch_raw" else
                                         "id" if name == "video_id_batch" else name])
    tf.add_to_collection("predictions", predictions)
    tf.add_to_collection("loss", loss)
    return {"predictions": predictions, "labels": batch["labels"], "loss": loss,
            "id": batch["id"]}


def run_evaluation(sess: tf.Session, ops: Dict[str, tf.Tensor], num_classes: int,
                   top_k: int = 20, log: Callable[[str], None] = print,
                   flag_name: str = "eval_data_pattern", data_pattern: str = ""
                   ) -> Dict[str, float]:
    """One pass over the data; returns the metrics dict of EvaluationMetrics.get()."""
    accumulator = metrics.EvaluationMetrics(num_classes, top_k)
    start, examples = time.time(), 0
    while True:
        try:
            predictions, labels, loss = sess.run([ops["predictions"], ops["labels"], ops["loss"]])
        except tf.errors.OutOfRangeError:
            break
        except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as err:
            raise UserError(f"--{flag_name}: {readers.describe_data_error(err, data_pattern)}"
                            ) from None
        accumulator.accumulate(predictions, labels, float(loss))
        examples += len(predictions)
        if log is not None:
            log(f"evaluated {examples} examples | "
                f"{examples / max(time.time() - start, 1e-9):.1f} examples/sec")
    result = accumulator.get()
    if result.get("num_examples", examples) == 0:
        raise UserError(f"--{flag_name}: the files hold no examples")
    return result


def evaluate_checkpoint(model_flags: Dict[str, Any], checkpoint_path: str, data_pattern: str,
                        batch_size: int = 256, top_k: int = 20,
                        frame_sampling: Optional[str] = None, seed: int = 2018,
                        num_readers: int = 4, custom_getter=None,
                        log: Optional[Callable[[str], None]] = None,
                        skip_corrupt: bool = False,
                        bf16_compute: Optional[str] = None) -> Dict[str, float]:
    """Restores the model variables of a checkpoint and evaluates them.

    A bfloat16 checkpoint computes in the --bf16_compute mode `bf16_compute`
    (None: the ensemble's default) unless custom_getter is given.
    skip_corrupt: skip the damaged rest of corrupt or truncated files (reported
    through log) instead of stopping with an error."""
    from bfloat16_patch import getter as bf16

    stored_bf16 = False   # float32 variables filled from bf16 tensors (cast_at_load)
    if custom_getter is None and bf16.getter_for_checkpoint(checkpoint_path, model_flags):
        mode = bf16.check_bf16_compute(bf16_compute)
        custom_getter = bf16.getter_for_mode(mode)
        stored_bf16 = mode == bf16.CAST_AT_LOAD
    graph = tf.Graph()
    with graph.as_default():
        tf.set_random_seed(seed)
        ops = build_eval_graph(model_flags, data_pattern, batch_size, frame_sampling,
                               num_readers, custom_getter=custom_getter,
                               skip_corrupt=skip_corrupt)
        var_map = {v.op.name: v for v in model_builder.model_variables("tower")}
        saver = tf.train.Saver(bf16.bfloat16_storage_saveables(var_map) if stored_bf16
                               else var_map)
    bf16.check_restore_compatible(checkpoint_path, var_map, stored_bf16=stored_bf16)
    with tf.Session(graph=graph) as sess:
        saver.restore(sess, checkpoint_path)
        result = run_evaluation(sess, ops, int(model_flags["num_classes"]), top_k, log,
                                data_pattern=data_pattern)
    if log is not None and readers.skipped_files_summary():
        log(readers.skipped_files_summary())
    return result


def write_results(train_dir: str, checkpoint_path: str, result: Dict[str, float]) -> None:
    step = checkpoints.checkpoint_step(checkpoint_path) or 0
    payload = {"checkpoint": checkpoint_path, "global_step": step,
               **{key: float(value) for key, value in result.items()}}
    checkpoints.write_json(os.path.join(train_dir, "eval_results.json"), payload)
    writer = tf.summary.FileWriter(os.path.join(train_dir, "eval"))
    summary = tf.Summary(value=[tf.Summary.Value(tag=f"eval/{key}", simple_value=float(value))
                                for key, value in result.items()])
    writer.add_summary(summary, step)
    writer.close()


def main(argv) -> None:
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.train_dir:
        raise UserError("--train_dir: required")
    if not FLAGS.eval_data_pattern:
        raise UserError("--eval_data_pattern: required")
    model_flags = checkpoints.read_model_flags(FLAGS.train_dir)
    readers.resolve_files(FLAGS.eval_data_pattern, "eval_data_pattern")
    from bfloat16_patch import getter as bf16
    bf16.check_bf16_compute(FLAGS.bf16_compute or None)
    evaluated = set()
    while True:
        path = (checkpoints.find_checkpoint(FLAGS.checkpoint_file) if FLAGS.checkpoint_file
                else checkpoints.latest_checkpoint(FLAGS.train_dir))
        if path is None and FLAGS.run_once:
            raise UserError(f"--train_dir={FLAGS.train_dir}: no checkpoint to evaluate")
        if path is not None and path not in evaluated:
            result = evaluate_checkpoint(
                model_flags, path, FLAGS.eval_data_pattern, FLAGS.batch_size, FLAGS.top_k,
                FLAGS.frame_sampling, FLAGS.seed, FLAGS.num_readers,
                log=lambda line: print(line, flush=True),
                skip_corrupt=FLAGS.skip_corrupt_records,
                bf16_compute=FLAGS.bf16_compute or None)
            print(metrics.format_summary(result, os.path.basename(path)), flush=True)
            write_results(FLAGS.train_dir, path, result)
            evaluated.add(path)
        if FLAGS.run_once or FLAGS.checkpoint_file:
            return
        time.sleep(FLAGS.watch_seconds)


if __name__ == "__main__":
    define_flags()
    run_main(main)
