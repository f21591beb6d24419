"""The 2018 video-level layout: ``VideoReader`` (Examples of the mean
features of a video; docs/formats.md 1.1)."""
from __future__ import annotations

from typing import Tuple

from models.tf_compat import tf
from training.readers.parsing import (
    as_batch,
    check_names_sizes,
    check_num_classes,
    finish,
    multi_hot,
    static_batch,
)


class VideoReader:
    """Reads YT8M 2018 video-level ``Example`` batches.

    ``parse(serialized [B])`` returns ``id`` [B], ``features``
    [B, sum(feature_sizes)] float32, ``labels`` [B, num_classes] float32,
    ``num_frames`` [B] int32 ones.
    """

    frame_features = False
    required_context: Tuple[Tuple[str, str], ...] = ()

    def __init__(self, num_classes=3862, feature_names=("mean_rgb", "mean_audio"),
                 feature_sizes=(1024, 128), id_key: str = "id"):
        # The feature of the video id: "id" (2018), "video_id" (2017).
        self.id_key = id_key
        self.num_classes = check_num_classes(num_classes)
        self.feature_names, self.feature_sizes = check_names_sizes(
            feature_names, feature_sizes)

    @property
    def feature_size(self) -> int:
        """Width of the concatenated feature vector, sum(feature_sizes)."""
        return sum(self.feature_sizes)

    def parse(self, serialized) -> dict:
        """Parses a batch of serialized Examples (string [B]).

        Returns:
          {"id": string [B],
           "features": float32 [B, sum(feature_sizes)] (flag order),
           "labels": float32 [B, num_classes],
           "num_frames": int32 [B] of ones}
        Errors (at run time, InvalidArgumentError): a feature whose float list
        is not exactly its size (message names feature and size); a label id
        outside [0, num_classes).
        """
        with tf.name_scope("parse_video_level"):
            serialized = as_batch(serialized)
            batch = static_batch(serialized)
            spec = {
                self.id_key: tf.io.FixedLenFeature([], tf.string),
                "labels": tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int32),
            }
            for name in self.feature_names:
                spec[name] = tf.io.RaggedFeature(tf.float32, row_splits_dtype=tf.int32)
            parsed = tf.io.parse_example(serialized, spec)

            parts = []
            for name, size in zip(self.feature_names, self.feature_sizes):
                ragged = parsed[name]
                check = tf.debugging.assert_equal(
                    ragged.row_lengths(), tf.constant(size, tf.int32),
                    message=f"feature {name}: wrong number of floats, expected "
                            f"feature size {size} (check --feature_names/--feature_sizes)",
                    summarize=5)
                with tf.control_dependencies([check]):
                    values = tf.identity(ragged.values)
                parts.append(tf.reshape(values, [-1, size]))
            features = parts[0] if len(parts) == 1 else tf.concat(parts, axis=1)
            ids = parsed[self.id_key]
            outputs = {
                "id": ids,
                "features": features,
                "labels": multi_hot(parsed["labels"], self.num_classes),
                "num_frames": tf.ones_like(ids, dtype=tf.int32),
            }
            return finish(outputs, batch, self.num_classes, [self.feature_size])
