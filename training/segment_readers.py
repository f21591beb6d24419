"""The reader of 2019 segment-rated records: one example per rated segment.

A 2019 validation or test record (docs/formats.md 1.8) is a frame-level
SequenceExample whose context also holds ``segment_labels``,
``segment_start_times`` and ``segment_scores``, one entry per rated segment.
``SegmentReader.parse`` turns a batch of such videos into a batch of their
rated segments: each segment's ``segment_size`` frames (at their real
length for a model graph that takes any number of frames, as every graph
built now does; zero-padded to ``max_frames`` with ``padded``, for an export
whose graph fixed 300 frames), its video id, start time, rated class and 0/1
rating. It plugs into the one predict
loop (``training.predict.iterate_predictions(reader=...)``) like the other
readers, and into ``readers.check_records`` through ``required_context``.
"""
from __future__ import annotations

from models.tf_compat import tf
from training import readers
from training.cli import UserError
from training.model_flags import ModelFlags

SEGMENT_SIZE = 5    # frames per rated segment in the 2019 data (--segment_size)

_CONTEXT = (
    ("segment_labels", "the 2019 segment ratings' classes; segment-rated data is "
                       "YouTube-8M 3/frame/validate or test"),
    ("segment_start_times", "the 2019 rated segments' first frames"),
    ("segment_scores", "the 2019 human ratings"),
)


class SegmentReader(readers.FrameReader):
    """Reads 2019 segment-rated SequenceExamples, yielding rated segments.

    ``parse(serialized [B])`` returns, for the S rated segments of the batch:
    ``id`` string [S] (the video's), ``features`` float32 [S, segment_size, D]
    (padded: [S, max_frames, D], the segment's frames then zeros; the models
    read the first num_frames rows only, so both score alike), ``num_frames`` int32 [S] =
    segment_size, ``labels`` int64 [S] (the rated class), ``start_time``
    int64 [S], ``score`` float32 [S].
    """

    def __init__(self, num_classes=3862, feature_names=("rgb", "audio"),
                 feature_sizes=(1024, 128), max_frames=readers.MAX_FRAMES,
                 segment_size: int = SEGMENT_SIZE, rated: bool = True,
                 padded: bool = True):
        super().__init__(num_classes, feature_names, feature_sizes, max_frames)
        self.padded = bool(padded)
        # rated=False (a submission of the test split): only the start times
        # are needed; labels and scores come out as -1 and 0.
        self.rated = bool(rated)
        self.required_context = _CONTEXT if rated else _CONTEXT[1:2]
        self.segment_size = int(segment_size)
        if not 1 <= self.segment_size <= self.max_frames:
            raise UserError(f"--segment_size: must be in 1..{self.max_frames} (the model's "
                            f"max_frames), got {segment_size}")

    @classmethod
    def like(cls, reader: object, segment_size: int = SEGMENT_SIZE, rated: bool = True,
             padded: bool = True) -> "SegmentReader":
        """The segment reader with a model's frame reader's (`reader`)
        features and classes; any other reader is a UserError."""
        if not isinstance(reader, readers.FrameReader):
            raise UserError("--segment_labels: needs a frame-level model (segments are "
                            "frames of a video); this one reads video-level features")
        return cls(reader.num_classes, reader.feature_names, reader.feature_sizes,
                   reader.max_frames, segment_size, rated, padded)

    def parse(self, serialized) -> dict:
        """Parses a batch of serialized segment-rated SequenceExamples.

        Errors (at run time, InvalidArgumentError whose first line names the
        field): the three segment lists of a video differ in length; a start
        time is negative or not a multiple of segment_size; a segment ends
        after the video's last frame; a rated class outside [0, num_classes);
        plus every FrameReader check on the frames.
        """
        with tf.name_scope("parse_segments"):
            serialized = readers.as_batch(serialized)
            ragged = tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int32)
            context, sequences, _ = tf.io.parse_sequence_example(
                serialized,
                context_features={
                    "id": tf.io.FixedLenFeature([], tf.string),
                    "segment_labels": ragged, "segment_start_times": ragged,
                    "segment_scores": tf.io.RaggedFeature(tf.float32,
                                                          row_splits_dtype=tf.int32)},
                sequence_features={name: tf.io.RaggedFeature(tf.string,
                                                             row_splits_dtype=tf.int32)
                                   for name in self.feature_names})
            joined, splits, _ = self._joined_uint8_frames(sequences)
            starts = context["segment_start_times"]
            with tf.control_dependencies(self._checks(context, splits)):
                video = tf.identity(starts.value_rowids())
            first = tf.gather(splits, video) + tf.cast(starts.values, tf.int32)
            labels, scores = context["segment_labels"].values, context["segment_scores"].values
            if not self.rated:
                labels = tf.fill(tf.shape(video), tf.constant(-1, tf.int64))
                scores = tf.zeros(tf.shape(video), tf.float32)
            rows = first[:, None] + tf.range(self.segment_size, dtype=tf.int32)[None, :]
            return {
                "id": tf.gather(context["id"], video),
                "features": self._segment_frames(tf.gather(joined, rows)),
                "num_frames": tf.fill(tf.shape(video), tf.constant(self.segment_size,
                                                                   tf.int32)),
                "labels": labels,
                "start_time": starts.values,
                "score": scores,
            }

    def _segment_frames(self, quantized):
        """uint8 [S, segment_size, D] -> float32 [S, segment_size, D], or with
        padded [S, max_frames, D], the padding exactly 0.0."""
        scale, bias = readers.dequantize_constants()
        frames = tf.cast(quantized, tf.float32) * scale + bias
        if not self.padded:
            frames.set_shape([None, self.segment_size, self.feature_size])
            return frames
        frames = tf.pad(frames, [[0, 0], [0, self.max_frames - self.segment_size], [0, 0]])
        frames.set_shape([None, self.max_frames, self.feature_size])
        return frames

    def _checks(self, context, splits) -> list:
        """The asserts of parse's errors; each message is the one line a user sees."""
        labels, starts = context["segment_labels"], context["segment_start_times"]
        scores = context["segment_scores"]
        ends = tf.gather(splits[1:] - splits[:-1], starts.value_rowids())
        size = tf.constant(self.segment_size, tf.int64)
        assert_true = tf.debugging.Assert
        checks = [
            assert_true(tf.reduce_all(tf.equal(tf.math.floormod(starts.values, size), 0)
                                      & (starts.values >= 0)),
                        [f"segment_start_times: a start time is negative or not a multiple "
                         f"of the segment size {self.segment_size} (--segment_size)"]),
            assert_true(tf.reduce_all(starts.values + size <= tf.cast(ends, tf.int64)),
                        [f"segment_start_times: a segment of {self.segment_size} frames ends "
                         f"after the video's last frame"]),
        ]
        if not self.rated:
            return checks   # (a submission reads the start times only)
        return checks + [
            assert_true(tf.reduce_all(tf.equal(labels.row_lengths(), starts.row_lengths()))
                        & tf.reduce_all(tf.equal(scores.row_lengths(), starts.row_lengths())),
                        ["segment_labels, segment_start_times and segment_scores: a record's "
                         "three lists differ in length"]),
            assert_true(tf.reduce_all((labels.values >= 0)
                                      & (labels.values < self.num_classes)),
                        [f"segment_labels: a label id is outside 0..{self.num_classes - 1}, "
                         f"the classes of the model"]),
        ]


def from_model_flags(model_flags: ModelFlags) -> SegmentReader:
    """The reader of record_kind "segment" (training.record_layouts): the
    model's features and classes, rated segments of SEGMENT_SIZE frames."""
    return SegmentReader(model_flags.num_classes, model_flags.feature_name_list(),
                         model_flags.feature_size_list())
