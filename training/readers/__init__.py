"""YouTube-8M 2018 TFRecord readers and the tf.data input pipeline.

Two record formats (docs/formats.md section 1): frame level
(``tf.train.SequenceExample``: context ``id``, ``labels``; feature lists
``rgb`` and ``audio``, one uint8-quantised byte string per second) and video
level (``tf.train.Example``: ``id``, ``labels``, ``mean_rgb``, ``mean_audio``).

Both readers parse a whole batch of serialized records at once
(``parse(serialized [B])``) into a dict of tensors: ``id`` string [B];
``features`` float32 [B, max_frames, sum(feature_sizes)] (frame level:
dequantised, truncated, zero-padded) or [B, sum(feature_sizes)] (video level),
features concatenated in flag order; ``labels`` float32 [B, num_classes]
multi-hot; ``num_frames`` int32 [B] = min(frames, max_frames) (ones at video
level). A stage picks its reader through ``training.record_layouts`` (by
the model's record kind); the other layouts live beside it
(``training.segment_readers``, ``training.teacher_records``).

One module per section: ``files`` (dequantisation, ``resolve_files``),
``compression`` (``--compression``), ``parsing`` (helpers the readers
share), ``frame`` and ``video`` (the two 2018 readers), ``kinds``
(``check_records``: input of the wrong kind refused before any work),
``dataset`` (``make_dataset``, ``make_file_dataset``) and ``damaged``
(skip mode, the line naming a damaged file). Everything is importable from
``training.readers`` as before.
"""
from __future__ import annotations

from training.flags import comma_list, comma_numbers
from training.readers.compression import (
    COMPRESSIONS,
    check_compression,
    detect_compression,
    file_compressions,
)
from training.readers.damaged import (
    SKIPPED_FILES,
    describe_data_error,
    file_of_video,
    locate_damaged_file,
    skipped_files_summary,
)
from training.readers.dataset import make_dataset, make_file_dataset
from training.readers.files import MAX_FRAMES, dequantize_constants, resolve_files
from training.readers.frame import FrameReader
from training.readers.kinds import CHECKED_FILES, LABEL_RECORDS, check_records
from training.readers.parsing import as_batch
from training.readers.video import VideoReader

__all__ = [
    "CHECKED_FILES", "COMPRESSIONS", "FrameReader", "LABEL_RECORDS", "MAX_FRAMES",
    "SKIPPED_FILES", "VideoReader", "as_batch", "check_compression", "check_records",
    "dequantize_constants", "describe_data_error", "detect_compression", "file_compressions",
    "file_of_video", "get_reader", "locate_damaged_file", "make_dataset", "make_file_dataset",
    "resolve_files", "skipped_files_summary",
]


def get_reader(frame_features: bool, feature_names, feature_sizes, num_classes: int,
               max_frames: int = MAX_FRAMES):
    """Builds the reader the starter flags describe (tests and benches; a
    stage picks its reader by the model's record kind, training.record_layouts).

    Args:
      frame_features: True -> FrameReader (SequenceExample), else VideoReader.
      feature_names: "rgb,audio" or a list of names.
      feature_sizes: "1024,128" or a list of ints, same count as the names.
      num_classes: label vocabulary size (3862 for YT8M 2018).
      max_frames: frame-level only; rows after truncation / padding.
    Raises:
      UserError naming --feature_names/--feature_sizes (count mismatch, bad
      integer) or --num_classes.
    """
    names = comma_list(feature_names)
    sizes = comma_numbers(feature_sizes, "feature_sizes", int)
    if frame_features:
        return FrameReader(num_classes=num_classes, feature_names=names,
                           feature_sizes=sizes, max_frames=max_frames)
    return VideoReader(num_classes=num_classes, feature_names=names, feature_sizes=sizes)
