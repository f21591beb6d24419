"""Teacher records (docs/formats.md 3.1, docs/original.md 7 and 8): their one home.

A teacher record is a YT8M frame-level SequenceExample plus the context
feature ``ensemble_labels``: the teacher's scores as raw little-endian
float32[num_classes] bytes. ``prediction2tfrecord.write`` writes them
(``with_teacher``); ``distillation.train`` reads them (``TeacherReader``).
"""
from __future__ import annotations

from typing import Any, Dict

import numpy as np

from models.tf_compat import tf
from training import readers

TEACHER_FEATURE = "ensemble_labels"


def teacher_bytes(vector: np.ndarray) -> bytes:
    """The feature's value: raw little-endian float32 bytes of the scores."""
    return np.asarray(vector, dtype="<f4").tobytes()


def with_teacher(example: Any, vector: np.ndarray) -> bytes:
    """The SequenceExample serialized with context ensemble_labels = the scores."""
    feature = example.context.feature[TEACHER_FEATURE]
    feature.Clear()
    feature.bytes_list.value.append(teacher_bytes(vector))
    return example.SerializeToString(deterministic=True)


class TeacherReader(readers.FrameReader):
    """FrameReader whose ``parse`` also returns ``"teacher"``: float32 [B, C].

    Vectorised over the batch: one extra ``parse_sequence_example`` reads only
    the ``ensemble_labels`` context bytes, one ``decode_raw`` turns them into
    floats. A record without the feature, or whose bytes are not exactly
    4 * num_classes long, fails at run time with an InvalidArgumentError whose
    check message (see ``readers.describe_data_error``) says so; a file whose
    first record has no ``ensemble_labels`` is refused before any work
    (``required_context``, readers.check_records).
    """

    required_context = ((TEACHER_FEATURE, "the teacher's scores: are these teacher records "
                                          "of prediction2tfrecord.write?"),)

    def parse(self, serialized: Any) -> Dict[str, Any]:
        outputs = super().parse(serialized)
        with tf.name_scope("parse_teacher"):
            outputs["teacher"] = self._teacher(readers.as_batch(serialized),
                                               outputs["labels"].shape[0])
        return outputs

    def _teacher(self, serialized: Any, batch: Any) -> Any:
        """float32 [B, num_classes] of the records' ensemble_labels, checked."""
        context, _, _ = tf.io.parse_sequence_example(
            serialized,
            context_features={TEACHER_FEATURE: tf.io.FixedLenFeature(
                [], tf.string, default_value="")})
        raw = context[TEACHER_FEATURE]
        expected = 4 * self.num_classes
        check = tf.debugging.assert_equal(
            tf.strings.length(raw), tf.constant(expected, tf.int32),
            message=f"{TEACHER_FEATURE}: a record's teacher vector is missing or is not "
                    f"{expected} bytes (float32[{self.num_classes}]); are these teacher "
                    f"records of prediction2tfrecord.write with --num_classes="
                    f"{self.num_classes}?",
            summarize=5)
        with tf.control_dependencies([check]):
            raw = tf.identity(raw)
        teacher = tf.io.decode_raw(raw, tf.float32, little_endian=True)
        teacher = tf.reshape(teacher, [-1, self.num_classes])
        teacher.set_shape([batch, self.num_classes])
        return teacher
