"""Segment fine-tuning: python -m segment_finetune.train --source_dir=<model dir>
--train_dir=<new dir> --train_data_pattern=<2019 segment-rated records>

Starts from a video-level model (a train, SWA, bfloat16 or int8 dir of any
preset: its model variables, as distillation's warm start) and trains it a few
steps on the rated segments of --train_data_pattern (each segment's
--segment_size frames is one example, as the 2019 data rates them), with the
loss (training.losses.segment_cross_entropy; docs/segments.md "Segment
fine-tuning")

    mean over segments s of  CE(p[s, c_s], rating_s)
                             + w * sum over classes j not in the video's labels of -log(1 - p[s, j])

w = --negative_weight (1.0, as the 2019 2nd place). The loop, checkpoints,
resume, progress, interrupts, locks and finite checks are training.train's;
the output is a normal train dir (model.ckpt-<step>, checkpoint,
model_flags.json with the source's model record; finetune.json names the
rated files it was fitted on, stage_files.FinetuneRecord), so swa.average,
bfloat16_patch.convert and training.eval --segment_labels read it unchanged.
The learning rate is constant (the few steps need no decay).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Dict, Tuple

import numpy as np
from absl import flags

from models.tf_compat import tf
from training import (
    checkpoints,
    losses,
    model_builder,
    paths,
    readers,
    record_layouts,
    stage_files,
    train_config,
)
from training import flags as shared_flags
from training import train as trainer
from training import train_dir as train_dirs
from training.cli import UserError, run_main
from training.model_flags import ModelFlags
from training.segment_readers import SEGMENT_SIZE, SegmentTrainingReader
from training.train_config import TrainConfig

FLAGS = flags.FLAGS

# The run's defaults (docs/segments.md "Segment fine-tuning" says why).
DEFAULTS = {"batch_size": 64, "base_learning_rate": 2e-4, "max_steps": 300,
            "save_checkpoint_steps": 25, "max_to_keep": 20, "log_steps": 25,
            "shuffle_buffer": 1024, "num_epochs": 0}
_POSITIVE = ("batch_size", "max_steps", "save_checkpoint_steps", "max_to_keep", "log_steps")


def define_flags() -> None:
    shared_flags.define_shared_flags({
        "train_dir": (None, "Where the fine-tuned model goes (a train dir; rerun to resume).",
                      paths.OUT_DIR),
        "train_data_pattern": ("", "The 2019 segment-rated records to fine-tune on (the "
                                   "fitting files)."),
        "batch_size": (DEFAULTS["batch_size"], "Here: rated segments per step."),
        "num_readers": 2, "seed": 2018, "skip_corrupt_records": False, "compression": "auto"})
    define = shared_flags.define
    define(flags.DEFINE_string, "source_dir", "", "The video-level model to start from: a "
           "train, SWA, bfloat16 or int8 dir (its latest checkpoint).", path=paths.IN_DIR)
    define(flags.DEFINE_float, "negative_weight", 1.0, "Weight w of the term that pushes "
           "towards 0 every class not among the segment's video labels.")
    define(flags.DEFINE_integer, "segment_size", SEGMENT_SIZE, "Frames per rated segment.")
    define(flags.DEFINE_float, "base_learning_rate", DEFAULTS["base_learning_rate"],
           "Adam's learning rate (constant).")
    define(flags.DEFINE_integer, "max_steps", DEFAULTS["max_steps"], "Stop after this step.")
    define(flags.DEFINE_integer, "save_checkpoint_steps", DEFAULTS["save_checkpoint_steps"],
           "Checkpoint every N steps (swa.average --last_n averages the last ones).")
    define(flags.DEFINE_integer, "max_to_keep", DEFAULTS["max_to_keep"], "Checkpoints kept.")
    define(flags.DEFINE_integer, "log_steps", DEFAULTS["log_steps"],
           "Print a progress line every N steps.")
    define(flags.DEFINE_integer, "shuffle_buffer", DEFAULTS["shuffle_buffer"],
           "Videos, then segments, in each shuffle buffer.")
    define(flags.DEFINE_integer, "num_epochs", DEFAULTS["num_epochs"],
           "Passes over the segments (0: no limit, --max_steps ends the run).")
    define(flags.DEFINE_float, "regularization_penalty", 1.0, "Weight of the L2 terms.")
    define(flags.DEFINE_float, "clip_gradient_norm", 1.0, "Per-variable gradient norm clip "
           "(0: off).")
    define(flags.DEFINE_bool, "start_new_model", False, "Remove this trainer's checkpoints "
           "and event files from --train_dir and start again from --source_dir.")


# ---------------------------------------------------------------------------
# Settings, source, loss


def check_negative_weight(weight: float) -> float:
    if not np.isfinite(weight) or weight < 0:
        raise UserError(f"--negative_weight: must be a finite number >= 0, got {weight}")
    return float(weight)


def config_from_flags() -> TrainConfig:
    """The run's TrainConfig: the flags, a constant rate, no averaging tail;
    a count that is not positive or a rate that is not is a UserError."""
    keys = ("batch_size", "base_learning_rate", "max_steps", "save_checkpoint_steps",
            "max_to_keep", "log_steps", "shuffle_buffer", "num_epochs",
            "regularization_penalty", "clip_gradient_norm", "num_readers", "seed",
            "skip_corrupt_records", "compression")
    # Any: absl types a flag's value Optional; these have defaults.
    values: Dict[str, Any] = {key: FLAGS[key].value for key in keys}
    train_config.check_positive(values, _POSITIVE)
    rate = FLAGS.base_learning_rate
    if not np.isfinite(rate) or rate <= 0:
        raise UserError(f"--base_learning_rate: must be a positive number, got {rate}")
    if FLAGS.num_epochs < 0:
        raise UserError(f"--num_epochs: must be 0 (no limit) or more, got {FLAGS.num_epochs}")
    return TrainConfig(learning_rate_decay=1.0, swa_tail_steps=0, **values)


def source_model(source_dir: str) -> Tuple[ModelFlags, str]:
    """(the model record the fine-tuned dir keeps, the source checkpoint) of
    a video-level model dir; one line for anything else."""
    model_flags = checkpoints.read_model_flags(source_dir)
    if model_flags.model_hparams is None:
        raise UserError(f"--source_dir={source_dir}: an exported ensemble; fine-tuning "
                        f"starts from one model's dir (train, SWA, bfloat16 or int8)")
    if not record_layouts.layout_of_model(model_flags).frame_level:
        raise UserError(f"--source_dir={source_dir}: a video-level-feature model; segments "
                        f"are frames of a video, fine-tuning needs a frame-level model")
    try:
        checkpoint = checkpoints.find_checkpoint(source_dir)
    except UserError as err:
        raise UserError(f"--source_dir: {err}") from None
    # The fine-tuned checkpoints are float32, whatever the source's storage.
    return dataclasses.replace(model_flags, checkpoint_dtype=None), checkpoint


def segment_loss_fn(negative_weight: float
                    ) -> Callable[[tf.Tensor, Dict[str, tf.Tensor]], tf.Tensor]:
    """label_loss_fn(predictions, batch part) for training.train.train."""
    weight = check_negative_weight(negative_weight)

    def label_loss(predictions: tf.Tensor, part: Dict[str, tf.Tensor]) -> tf.Tensor:
        return losses.segment_cross_entropy(predictions, part["rated_class"], part["rating"],
                                            part["video_labels"], weight)

    return label_loss


def make_reader(model_flags: ModelFlags, segment_size: int = SEGMENT_SIZE
                ) -> SegmentTrainingReader:
    return SegmentTrainingReader.for_training(model_builder.make_reader(model_flags),
                                              segment_size)


# ---------------------------------------------------------------------------
# Entry point


def finetune(model_flags: ModelFlags, train_dir: str, data_pattern: str, config: TrainConfig,
             source_checkpoint: str, negative_weight: float = 1.0,
             segment_size: int = SEGMENT_SIZE, log: Callable[[str], None] = print
             ) -> Dict[str, Any]:
    """training.train.train on the rated segments, warm-started from
    source_checkpoint (a fresh run; a train dir with checkpoints resumes)."""
    loss_fn = segment_loss_fn(negative_weight)
    log(f"segment fine-tuning: {model_flags.model} from {source_checkpoint}; loss = "
        f"CE(rated pairs) + {negative_weight:g} * CE(classes not in the video's labels) "
        f"on the {segment_size}-frame rated segments of {data_pattern}")
    return trainer.train(model_flags, train_dir, data_pattern, config, label_loss_fn=loss_fn,
                         reader=make_reader(model_flags, segment_size),
                         warm_start=trainer.warm_start_from(source_checkpoint, log,
                                                            flag="source_dir"), log=log)


def record_provenance(source_dir: str, train_dir: str, data_pattern: str) -> None:
    """Writes finetune.json: the source and the rated files the weights are
    fitted on, with every choice behind the source (a resumed run on other
    files adds them: the weights then read both)."""
    own = stage_files.provenance_for("segment_finetune.train", "fine-tuning", data_pattern)
    before = stage_files.read_optional(stage_files.FinetuneRecord, train_dir)
    stage_files.write_in(train_dir, stage_files.FinetuneRecord(
        source_dir=os.path.abspath(source_dir), provenance=stage_files.merge_provenance(
            before.provenance if before else (), stage_files.provenance_of(source_dir), [own])))


def _same_dir(first: str, second: str) -> bool:
    return os.path.realpath(first) == os.path.realpath(second)


def main(argv) -> None:
    del argv
    shared_flags.require(source_dir=FLAGS.source_dir, train_dir=FLAGS.train_dir,
                         train_data_pattern=FLAGS.train_data_pattern)
    check_negative_weight(FLAGS.negative_weight)
    config = config_from_flags()
    if _same_dir(FLAGS.source_dir, FLAGS.train_dir):
        raise UserError(f"--train_dir={FLAGS.train_dir}: is --source_dir; write the "
                        f"fine-tuned model to a new dir")
    model_flags, checkpoint = source_model(FLAGS.source_dir)
    reader = make_reader(model_flags, FLAGS.segment_size)
    files = readers.resolve_files(FLAGS.train_data_pattern, "train_data_pattern")
    readers.check_records(files, "train_data_pattern", reader,
                          "segment fine-tuning (its negative term)", FLAGS.compression,
                          hint="give it 2019 segment-rated records "
                               "(e.g. python -m training.synthetic_segments)")
    with train_dirs.removed_on_failed_start(FLAGS.train_dir):
        train_dirs.prepare_train_dir(FLAGS.train_dir, model_flags, FLAGS.start_new_model)
        record_provenance(FLAGS.source_dir, FLAGS.train_dir, FLAGS.train_data_pattern)
        finetune(model_flags, FLAGS.train_dir, FLAGS.train_data_pattern, config, checkpoint,
                 FLAGS.negative_weight, FLAGS.segment_size,
                 log=lambda line: print(line, flush=True))


if __name__ == "__main__":
    define_flags()
    run_main(main)
