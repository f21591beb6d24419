"""Evaluates checkpoints: python -m training.eval --train_dir=... --eval_data_pattern=...

Prints and writes Hit@1, PERR, mAP, GAP@20 and the loss (eval_results.json
and TensorBoard events under <train_dir>/eval). Evaluates the latest
checkpoint (or --checkpoint_file) once with --run_once, otherwise keeps
watching the train dir and evaluates each new checkpoint. Train, SWA and
bfloat16 dirs alike; a bfloat16 checkpoint computes as --bf16_compute says.

--bn_statistics: ``moving`` evaluates the checkpoint's batch-norm moving
statistics; ``recompute`` evaluates a temporary copy whose statistics are
recomputed on --recompute_batches batches of --train_data_pattern
(training.bn_statistics, as swa.average does; float32 checkpoints only).
With ``moving``, a checkpoint whose statistics cannot have converged yet gets
a one-line note (training.bn_statistics.convergence_note).
"""
from __future__ import annotations

import os
import time
from typing import Callable, Dict, Optional

from absl import flags

from models.tf_compat import tf
from training import bn_statistics as bn_stats
from training import checkpoints, metrics, precision, predict, readers
from training import flags as shared_flags
from training.errors import UserError, run_main

FLAGS = flags.FLAGS


def define_flags() -> None:
    shared_flags.define_shared_flags({
        "train_dir": "", "eval_data_pattern": "", "checkpoint_file": "", "batch_size": 256,
        "top_k": 20, "num_readers": 4, "frame_sampling": None, "seed": 2018,
        "skip_corrupt_records": False, "bf16_compute": "",
        "train_data_pattern": ("", "(for --bn_statistics=recompute)"),
        "recompute_batches": bn_stats.DEFAULT_RECOMPUTE_BATCHES})
    shared_flags.define(flags.DEFINE_bool, "run_once", False,
                        "Evaluate once and exit (else watch --train_dir).")
    shared_flags.define(flags.DEFINE_integer, "watch_seconds", 60, "Polling period while watching.")
    # A string checked by bn_statistics.check_eval_mode, not an absl enum: an
    # unknown mode is then a one-line error like every other flag mistake.
    shared_flags.define(flags.DEFINE_string, "bn_statistics", "moving",
                        "BN moving statistics: the checkpoint's (moving), or recomputed "
                        "(recompute) on --recompute_batches batches of --train_data_pattern; "
                        "the user's checkpoint is never changed.")


def evaluate_checkpoint(model_dir: str, checkpoint_path: str, data_pattern: str,
                        batch_size: int = 256, top_k: int = 20,
                        frame_sampling: Optional[str] = None, seed: int = 2018,
                        num_readers: int = 4, log: Optional[Callable[[str], None]] = None,
                        skip_corrupt: bool = False,
                        bf16_compute: Optional[str] = None,
                        recompute: Optional[bn_stats.Recompute] = None) -> Dict[str, float]:
    """Metrics of one checkpoint of a model dir (training.predict does the work;
    a bfloat16 checkpoint computes in the --bf16_compute mode, None: the default).
    recompute: evaluate it with BN statistics recomputed so (the checkpoint
    itself is only read); None: with its moving statistics."""
    if recompute is not None:
        with bn_stats.recomputed_checkpoint(model_dir, checkpoint_path, recompute,
                                            log) as recomputed:
            return evaluate_checkpoint(model_dir, recomputed, data_pattern, batch_size, top_k,
                                       frame_sampling, seed, num_readers, log, skip_corrupt,
                                       bf16_compute)
    model = predict.open_model(model_dir, frame_sampling, seed, bf16_compute,
                               checkpoint=checkpoint_path)
    try:
        return predict.evaluate_model(model, data_pattern, batch_size, top_k, num_readers, log,
                                      skip_corrupt=skip_corrupt)
    finally:
        model.close()


def write_results(train_dir: str, checkpoint_path: str, result: Dict[str, float],
                  recompute: Optional[bn_stats.Recompute] = None) -> None:
    """eval_results.json (with the BN statistics mode behind the numbers) and
    the TensorBoard events under <train_dir>/eval."""
    step = checkpoints.checkpoint_step(checkpoint_path) or 0
    payload = {"checkpoint": checkpoint_path, "global_step": step,
               "bn_statistics": "moving" if recompute is None else "recompute",
               "recompute_batches": None if recompute is None else recompute.num_batches,
               **{key: float(value) for key, value in result.items()}}
    checkpoints.write_json(os.path.join(train_dir, "eval_results.json"), payload)
    writer = tf.summary.FileWriter(os.path.join(train_dir, "eval"))
    summary = tf.Summary(value=[tf.Summary.Value(tag=f"eval/{key}", simple_value=float(value))
                                for key, value in result.items()])
    writer.add_summary(summary, step)
    writer.close()


def _checkpoint_to_evaluate() -> Optional[str]:
    if FLAGS.checkpoint_file:
        return checkpoints.find_checkpoint(FLAGS.checkpoint_file)
    return checkpoints.latest_checkpoint(FLAGS.train_dir)


def _recompute_settings() -> Optional[bn_stats.Recompute]:
    """The --bn_statistics=recompute settings, checked (None for moving)."""
    if bn_stats.check_eval_mode(FLAGS.bn_statistics) == "moving":
        return None
    bn_stats.check_recompute_flags(FLAGS.train_data_pattern, FLAGS.recompute_batches,
                                   FLAGS.batch_size)
    return bn_stats.Recompute(FLAGS.train_data_pattern, FLAGS.recompute_batches,
                              FLAGS.batch_size, FLAGS.seed, FLAGS.num_readers)


def _evaluate(path: str, recompute: Optional[bn_stats.Recompute]) -> None:
    """Evaluates one checkpoint of --train_dir; prints and writes the results."""
    log = lambda line: print(line, flush=True)  # noqa: E731
    if recompute is None:
        try:
            note = bn_stats.convergence_note(path)
        except UserError:
            note = None     # a checkpoint that cannot be read: the evaluation says why
        if note:
            log(note)
    result = evaluate_checkpoint(
        FLAGS.train_dir, path, FLAGS.eval_data_pattern, FLAGS.batch_size, FLAGS.top_k,
        FLAGS.frame_sampling, FLAGS.seed, FLAGS.num_readers, log=log,
        skip_corrupt=FLAGS.skip_corrupt_records, bf16_compute=FLAGS.bf16_compute or None,
        recompute=recompute)
    label = os.path.basename(path) + ("" if recompute is None else " (BN statistics recomputed)")
    log(metrics.format_summary(result, label))
    write_results(FLAGS.train_dir, path, result, recompute)


def main(argv) -> None:
    del argv
    shared_flags.require(train_dir=FLAGS.train_dir, eval_data_pattern=FLAGS.eval_data_pattern)
    checkpoints.read_model_flags(FLAGS.train_dir)
    readers.resolve_files(FLAGS.eval_data_pattern, "eval_data_pattern")
    precision.check_bf16_compute(FLAGS.bf16_compute or None)
    recompute = _recompute_settings()
    evaluated = set()
    while True:
        path = _checkpoint_to_evaluate()
        if path is None and FLAGS.run_once:
            raise UserError(f"--train_dir={FLAGS.train_dir}: no checkpoint to evaluate")
        if path is not None and path not in evaluated:
            _evaluate(path, recompute)
            evaluated.add(path)
        if FLAGS.run_once or FLAGS.checkpoint_file:
            return
        time.sleep(FLAGS.watch_seconds)


if __name__ == "__main__":
    define_flags()
    run_main(main)
