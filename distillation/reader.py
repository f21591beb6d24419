"""Reader of teacher records: frame-level SequenceExamples plus ``ensemble_labels``.

``prediction2tfrecord.write`` stores the teacher's scores as the context
feature ``ensemble_labels``: the raw little-endian float32[num_classes] bytes
(docs/original.md sections 7 and 8).
"""
from __future__ import annotations

from models.tf_compat import tf
from training import readers

TEACHER_FEATURE = "ensemble_labels"


class DistillationReader(readers.FrameReader):
    """FrameReader whose ``parse`` also returns ``"teacher"``: float32 [B, C].

    Vectorised over the batch: one extra ``parse_sequence_example`` reads only
    the ``ensemble_labels`` context bytes, one ``decode_raw`` turns them into
    floats. A record without the feature, or whose bytes are not exactly
    4 * num_classes long, fails at run time with an InvalidArgumentError whose
    check message (see ``readers.data_error_message``) says so; a file whose
    first record has no ``ensemble_labels`` is refused before any work
    (``required_context``, readers.check_records).
    """

    required_context = ((TEACHER_FEATURE, "the teacher's scores: are these teacher records "
                                          "of prediction2tfrecord.write?"),)

    def parse(self, serialized) -> dict:
        outputs = super().parse(serialized)
        with tf.name_scope("parse_teacher"):
            serialized = readers._as_batch(serialized)
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
            teacher.set_shape([outputs["labels"].shape[0], self.num_classes])
            outputs["teacher"] = teacher
        return outputs
