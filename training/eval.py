"""Evaluates checkpoints: python -m training.eval --train_dir=... --eval_data_pattern=...

Prints and writes Hit@1, PERR, mAP, GAP@20 and the loss (eval_results.json
and TensorBoard events under <train_dir>/eval). Evaluates the latest
checkpoint (or --checkpoint_file) once with --run_once, otherwise keeps
watching the train dir and evaluates each new checkpoint. Train, SWA and
bfloat16 dirs alike; a bfloat16 checkpoint computes as --bf16_compute says.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Dict, Optional

from absl import flags

from models.tf_compat import tf
from training import checkpoints, metrics, precision, predict, readers
from training import flags as shared_flags
from training.errors import UserError, run_main

FLAGS = flags.FLAGS


def define_flags() -> None:
    shared_flags.define_shared_flags({
        "train_dir": "", "eval_data_pattern": "", "checkpoint_file": "", "batch_size": 256,
        "top_k": 20, "num_readers": 4, "frame_sampling": None, "seed": 2018,
        "skip_corrupt_records": False, "bf16_compute": ""})
    shared_flags.define(flags.DEFINE_bool, "run_once", False,
                        "Evaluate once and exit (else watch --train_dir).")
    shared_flags.define(flags.DEFINE_integer, "watch_seconds", 60, "Polling period while watching.")


def evaluate_checkpoint(model_dir: str, checkpoint_path: str, data_pattern: str,
                        batch_size: int = 256, top_k: int = 20,
                        frame_sampling: Optional[str] = None, seed: int = 2018,
                        num_readers: int = 4, log: Optional[Callable[[str], None]] = None,
                        skip_corrupt: bool = False,
                        bf16_compute: Optional[str] = None) -> Dict[str, float]:
    """Metrics of one checkpoint of a model dir (training.predict does the work;
    a bfloat16 checkpoint computes in the --bf16_compute mode, None: the default)."""
    model = predict.open_model(model_dir, frame_sampling, seed, bf16_compute,
                               checkpoint=checkpoint_path)
    try:
        return predict.evaluate_model(model, data_pattern, batch_size, top_k, num_readers, log,
                                      skip_corrupt=skip_corrupt)
    finally:
        model.close()


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


def _checkpoint_to_evaluate() -> Optional[str]:
    if FLAGS.checkpoint_file:
        return checkpoints.find_checkpoint(FLAGS.checkpoint_file)
    return checkpoints.latest_checkpoint(FLAGS.train_dir)


def main(argv) -> None:
    del argv
    shared_flags.require(train_dir=FLAGS.train_dir, eval_data_pattern=FLAGS.eval_data_pattern)
    checkpoints.read_model_flags(FLAGS.train_dir)
    readers.resolve_files(FLAGS.eval_data_pattern, "eval_data_pattern")
    precision.check_bf16_compute(FLAGS.bf16_compute or None)
    evaluated = set()
    while True:
        path = _checkpoint_to_evaluate()
        if path is None and FLAGS.run_once:
            raise UserError(f"--train_dir={FLAGS.train_dir}: no checkpoint to evaluate")
        if path is not None and path not in evaluated:
            result = evaluate_checkpoint(
                FLAGS.train_dir, path, FLAGS.eval_data_pattern, FLAGS.batch_size, FLAGS.top_k,
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
