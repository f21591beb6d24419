"""Knowledge distillation: python -m distillation.train --train_dir=... --model=...
--train_data_pattern=<teacher records> [--distill_prob=0.5]

Trains any model of the zoo exactly like ``training.train`` (same flags, loop,
checkpoints, towers, resume) on the teacher records of
``prediction2tfrecord.write``, with the loss (docs/original.md 7)

    (1 - p) * CE(predictions, hard labels) + p * CE(predictions, teacher)

p = ``--distill_prob`` in [0, 1] (default 0.5; the original's default 1.0
meant "teacher only", and its p > 1 / p < 0 sentinels became p = 1 / p = 0).
CE is the model's ``--label_loss``; there is no temperature. The teacher
scores are normalised explicitly (the original divided by a fixed 5.0):
``--teacher_normalization`` = none | max (divide a row by its maximum when it
exceeds 1) | sum_to_members (divide by ``--teacher_num_members``), then
clipped to [0, 1]. ``--warm_start_checkpoint`` (a checkpoint or a model dir,
float32, bfloat16 or int8) initialises the model variables of a fresh run; the
step, learning-rate schedule and Adam slots start anew (the original also
restored global_step); a dir that holds a checkpoint resumes instead.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, Optional

import numpy as np
from absl import flags

from models.tf_compat import tf
from training import checkpoints, losses, model_builder, paths, readers, record_layouts
from training import flags as shared_flags
from training import train as trainer
from training import train_dir as train_dirs
from training.cli import UserError, run_main
from training.model_flags import ModelFlags
from training.teacher_records import TeacherReader
from training.train import warm_start_from  # (its home; tests call it here too)
from training.train_config import TrainConfig

FLAGS = flags.FLAGS

NORMALIZATIONS = ("none", "max", "sum_to_members")


def define_flags() -> None:
    trainer.define_flags()
    define = shared_flags.define
    define(flags.DEFINE_float, "distill_prob", 0.5,
           "Weight p of the teacher term: (1-p)*CE(hard labels) + p*CE(teacher); in [0, 1].")
    define(flags.DEFINE_string, "teacher_normalization", "none",
           "How the stored teacher scores become probabilities: none | max (divide a "
           "row by its max when > 1) | sum_to_members (divide by --teacher_num_members).")
    define(flags.DEFINE_integer, "teacher_num_members", None,
           "Members summed in the teacher CSV (--teacher_normalization=sum_to_members).")
    define(flags.DEFINE_string, "warm_start_checkpoint", "",
           "Checkpoint prefix or model dir whose model variables initialise a fresh run.",
           path=paths.IN_CHECKPOINT)


# ---------------------------------------------------------------------------
# Settings, loss


def check_settings(distill_prob: float, normalization: str,
                   num_members: Optional[int]) -> None:
    if not np.isfinite(distill_prob) or not 0.0 <= distill_prob <= 1.0:
        raise UserError(f"--distill_prob: must be in [0, 1], got {distill_prob}")
    if normalization not in NORMALIZATIONS:
        raise UserError(f"--teacher_normalization: must be one of {', '.join(NORMALIZATIONS)}, "
                        f"got {normalization!r}")
    if normalization == "sum_to_members":
        if num_members is None or num_members < 1:
            raise UserError(f"--teacher_num_members: a positive count is required with "
                            f"--teacher_normalization=sum_to_members, got {num_members}")
    elif num_members is not None:
        raise UserError(f"--teacher_num_members: only used with "
                        f"--teacher_normalization=sum_to_members (got {normalization!r})")


def normalize_teacher(teacher: tf.Tensor, normalization: str,
                      num_members: Optional[int] = None) -> tf.Tensor:
    """Teacher scores [B, C] -> targets in [0, 1]."""
    teacher = tf.cast(teacher, tf.float32)
    if normalization == "max":
        row_max = tf.reduce_max(teacher, axis=1, keepdims=True)
        teacher = teacher / tf.maximum(row_max, 1.0)
    elif normalization == "sum_to_members":
        assert num_members is not None      # check_settings requires it
        teacher = teacher / float(num_members)
    elif normalization != "none":
        raise UserError(f"--teacher_normalization: unknown {normalization!r}")
    return tf.clip_by_value(teacher, 0.0, 1.0)


def distillation_loss_fn(model_flags: ModelFlags, distill_prob: float,
                         normalization: str = "none", num_members: Optional[int] = None
                         ) -> Callable[[tf.Tensor, Dict[str, tf.Tensor]], tf.Tensor]:
    """label_loss_fn(predictions, batch part) for training.train.build_train_graph."""
    check_settings(distill_prob, normalization, num_members)
    loss_of = losses.get_loss(model_flags.label_loss)
    p = float(distill_prob)

    def label_loss(predictions: tf.Tensor, part: Dict[str, tf.Tensor]) -> tf.Tensor:
        terms = []
        if p < 1.0:
            terms.append((1.0 - p) * loss_of(predictions, part["labels"]))
        if p > 0.0:
            target = normalize_teacher(part["teacher"], normalization, num_members)
            terms.append(p * loss_of(predictions, target))
        return tf.add_n(terms)

    return label_loss


def make_reader(model_flags: ModelFlags) -> TeacherReader:
    layout = record_layouts.layout_of_model(model_flags)
    plain = model_builder.make_reader(model_flags)
    if not layout.frame_level or not isinstance(plain, readers.FrameReader):
        raise UserError(f"--record_kind={layout.kind}: distillation reads frame-level teacher "
                        f"records (SequenceExamples); use --record_kind=frame")
    return TeacherReader(num_classes=plain.num_classes, feature_names=plain.feature_names,
                         feature_sizes=plain.feature_sizes, max_frames=plain.max_frames,
                         id_key=plain.id_key)


# ---------------------------------------------------------------------------
# Entry point


def distill(model_flags: ModelFlags, train_dir: str, data_pattern: str,
            config: TrainConfig, distill_prob: float = 0.5, normalization: str = "none",
            num_members: Optional[int] = None, warm_start_checkpoint: str = "",
            log: Callable[[str], None] = print) -> Dict[str, Any]:
    """training.train.train with the distillation reader and loss."""
    check_settings(distill_prob, normalization, num_members)
    reader = make_reader(model_flags)
    loss_fn = distillation_loss_fn(model_flags, distill_prob, normalization, num_members)
    warm_start = warm_start_from(warm_start_checkpoint, log) if warm_start_checkpoint else None
    log(f"distillation: p={distill_prob} (loss = {1.0 - distill_prob:g}*CE(labels) + "
        f"{distill_prob:g}*CE(teacher)), teacher_normalization={normalization}"
        + (f" (/{num_members})" if normalization == "sum_to_members" else "")
        + f", teacher records {data_pattern}"
        + (f", warm start {warm_start_checkpoint}" if warm_start_checkpoint else ""))
    return trainer.train(model_flags, train_dir, data_pattern, config, label_loss_fn=loss_fn,
                         reader=reader, warm_start=warm_start, log=log)


def main(argv) -> None:
    del argv
    if not FLAGS.train_data_pattern:
        raise UserError("--train_data_pattern: required (teacher records of "
                        "prediction2tfrecord.write)")
    check_settings(FLAGS.distill_prob, FLAGS.teacher_normalization, FLAGS.teacher_num_members)
    model_flags = trainer.model_flags_from_flags()
    losses.get_loss(FLAGS.label_loss)
    reader = make_reader(model_flags)
    config = trainer.config_from_flags()
    files = readers.resolve_files(FLAGS.train_data_pattern, "train_data_pattern")
    readers.check_records(files, "train_data_pattern", reader,
                          "distillation with --distill_prob < 1" if FLAGS.distill_prob < 1 else "",
                          FLAGS.compression,
                          hint="give it the teacher records of prediction2tfrecord.write")
    if FLAGS.warm_start_checkpoint:
        warm = FLAGS.warm_start_checkpoint
        if os.path.isdir(warm):
            checkpoints.find_checkpoint(warm)
        elif not os.path.isfile(warm + ".index"):
            raise UserError(f"--warm_start_checkpoint: {warm}: no such checkpoint or dir")
    with train_dirs.removed_on_failed_start(FLAGS.train_dir):
        train_dirs.prepare_train_dir(FLAGS.train_dir, model_flags, FLAGS.start_new_model)
        distill(model_flags, FLAGS.train_dir, FLAGS.train_data_pattern, config,
                FLAGS.distill_prob, FLAGS.teacher_normalization, FLAGS.teacher_num_members,
                FLAGS.warm_start_checkpoint, log=lambda line: print(line, flush=True))


if __name__ == "__main__":
    define_flags()
    run_main(main)
