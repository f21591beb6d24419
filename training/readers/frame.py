"""The 2018 frame-level layout: ``FrameReader`` (SequenceExamples, one
uint8-quantised byte string per feature per second; docs/formats.md 1.2)."""
from __future__ import annotations

from typing import Tuple

from models.tf_compat import tf
from training.cli import UserError
from training.readers.files import MAX_FRAMES, dequantize_constants
from training.readers.parsing import (
    as_batch,
    check_names_sizes,
    check_num_classes,
    finish,
    multi_hot,
    static_batch,
)


class FrameReader:
    """Reads YT8M 2018 frame-level ``SequenceExample`` batches.

    ``parse(serialized [B])`` returns ``id`` [B], ``features``
    [B, max_frames, sum(feature_sizes)] float32, ``labels`` [B, num_classes]
    float32, ``num_frames`` [B] int32 (see the module docstring).
    """

    frame_features = True
    # (context feature, what it is) that every record must hold (check_records).
    required_context: Tuple[Tuple[str, str], ...] = ()

    def __init__(self, num_classes=3862, feature_names=("rgb", "audio"),
                 feature_sizes=(1024, 128), max_frames=MAX_FRAMES, id_key: str = "id"):
        # The context feature of the video id: "id" (2018, 2019), "video_id" (2017).
        self.id_key = id_key
        self.num_classes = check_num_classes(num_classes)
        self.feature_names, self.feature_sizes = check_names_sizes(
            feature_names, feature_sizes)
        self.max_frames = int(max_frames)
        if self.max_frames <= 0:
            raise UserError(f"--max_frames: must be positive, got {max_frames}")

    @property
    def feature_size(self) -> int:
        """Width of the concatenated feature vector, sum(feature_sizes)."""
        return sum(self.feature_sizes)

    def parse(self, serialized) -> dict:
        """Parses a batch of serialized SequenceExamples (string [B]).

        Vectorised over the batch: one ``parse_sequence_example`` for all
        records, the per-frame byte strings come out ragged [B, (frames)],
        their flat values are decoded with one ``decode_raw`` per feature,
        joined and truncated / zero-padded to ``max_frames`` rows as uint8,
        then dequantised (padded rows stay exactly 0.0).

        Returns:
          {"id": string [B],
           "features": float32 [B, max_frames, sum(feature_sizes)],
           "labels": float32 [B, num_classes],
           "num_frames": int32 [B] = min(frames of the first feature, max_frames)}
        Errors (at run time, InvalidArgumentError): a frame whose byte string is
        not exactly the feature size (message names the feature and size); a
        label id outside [0, num_classes).
        """
        with tf.name_scope("parse_frame_level"):
            serialized = as_batch(serialized)
            batch = static_batch(serialized)
            string_feature = tf.io.RaggedFeature(tf.string, row_splits_dtype=tf.int32)
            context, sequences, _ = tf.io.parse_sequence_example(
                serialized,
                context_features={
                    self.id_key: tf.io.FixedLenFeature([], tf.string),
                    "labels": tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int32),
                },
                sequence_features={name: string_feature for name in self.feature_names})
            joined, splits, num_frames = self._joined_uint8_frames(sequences)
            outputs = {
                "id": context[self.id_key],
                "features": self._dequantized(joined, splits, num_frames),
                "labels": multi_hot(context["labels"], self.num_classes),
                "num_frames": tf.cast(num_frames, tf.int32),
            }
            return finish(outputs, batch, self.num_classes,
                           [self.max_frames, self.feature_size])

    def _joined_uint8_frames(self, sequences):
        """(uint8 [frames in the batch, D] of the features side by side, the
        row splits of the videos, num_frames [B] capped at max_frames).

        Every feature is decoded to uint8 and joined while still 1 byte per
        value; dequantising once after padding (_dequantized) makes a third
        fewer passes over the float32 batch than padding each feature."""
        quantized, frame_checks = [], []
        first_name = first_lengths = first_splits = None
        for name, size in zip(self.feature_names, self.feature_sizes):
            frames, values = _decoded_feature(sequences[name], name, size)
            quantized.append(values)
            if first_name is None:
                first_name, first_lengths = name, frames.row_lengths()
                first_splits = frames.row_splits
            else:
                # A record missing a feature (or a misspelt --feature_names)
                # shows up as a frame-count mismatch between features.
                frame_checks.append(tf.debugging.assert_equal(
                    frames.row_lengths(), first_lengths,
                    message=f"feature '{name}': its frame count differs from "
                            f"'{first_name}' (missing from the record? check "
                            f"--feature_names)", summarize=3))
        num_frames = tf.minimum(first_lengths, self.max_frames)
        with tf.control_dependencies(frame_checks):
            joined = (tf.identity(quantized[0]) if len(quantized) == 1
                      else tf.concat(quantized, axis=1))
            num_frames = tf.identity(num_frames)
        return joined, first_splits, num_frames

    def _dequantized(self, joined, splits, num_frames):
        """float32 [B, max_frames, D]: padded frames exactly 0.0, valid values
        exactly dequantize(q) (to_tensor pads with zeros and truncates)."""
        padded = tf.RaggedTensor.from_row_splits(joined, splits, validate=False).to_tensor(
            default_value=0, shape=[None, self.max_frames, self.feature_size])
        scale, bias = dequantize_constants()
        valid = tf.sequence_mask(num_frames, self.max_frames, dtype=tf.float32)[:, :, None]
        return tf.cast(padded, tf.float32) * (valid * scale) + valid * bias


def _decoded_feature(frames, name: str, size: int):
    """(ragged [B, (frames)] strings, uint8 [frames in the batch, size]) of one
    feature, with the checks that every frame is one string of `size` bytes."""
    checks = [tf.debugging.assert_equal(
        frames.values.row_lengths(), tf.constant(1, tf.int32),
        message=f"feature {name}: every frame must hold exactly one byte string of "
                f"{size} bytes", summarize=5)]
    frames = frames.merge_dims(1, 2)  # ragged [B, (frames)] of strings
    flat = frames.values
    checks.append(tf.debugging.assert_equal(
        tf.strings.length(flat), tf.constant(size, tf.int32),
        message=f"feature {name}: a frame has the wrong byte length, expected feature size "
                f"{size} (check --feature_names/--feature_sizes)", summarize=5))
    with tf.control_dependencies(checks):
        flat = tf.identity(flat)
    return frames, tf.reshape(tf.io.decode_raw(flat, tf.uint8), [-1, size])
