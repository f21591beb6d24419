"""The reader of 2019 segment records: one example per segment.

A 2019 validation record (docs/formats.md 1.8) is a frame-level
SequenceExample whose context also holds ``segment_labels``,
``segment_start_times`` and ``segment_scores``, one entry per rated segment;
a 2019 test record holds the frames (``id``, maybe empty ``labels``) only.
``SegmentReader.parse`` turns a batch of videos into a batch of segments:
with ``positions="listed"`` the segments of ``segment_start_times`` (their
rated class and 0/1 rating when ``rated``); with ``positions="every"`` every
segment of every video, as the 2019 starter's inference (``get_segments``)
cut the test videos: start times 0, segment_size, 2 segment_size, ... below
the video's frame count, the last one shorter (its remaining frames).
Frames come at their real length (segment_size rows; ``padded``: zero-padded
to ``max_frames``, for an export whose graph fixed 300 frames), a short last
segment's missing rows exactly 0. ``skip_unrated`` drops each video's first
UNRATED_HEAD and last UNRATED_TAIL segment positions. It plugs into the one
predict loop (``training.predict.iterate_predictions(reader=...)``) like the
other readers, and into ``readers.check_records`` through ``required_context``.
"""
from __future__ import annotations

from typing import Sequence

from models.tf_compat import tf
from training import readers
from training.cli import UserError
from training.model_flags import ModelFlags
from training.readers.kinds import parsed_example

SEGMENT_SIZE = 5    # frames per rated segment in the 2019 data (--segment_size)
# The 2019 organisers never rated a video's first 6 nor its last 2 segment
# positions (confirmed by them; a 7th-place solution skipped those in its
# submission for +0.003 MAP): --skip_unrated_positions leaves them out.
UNRATED_HEAD = 6
UNRATED_TAIL = 2
# --segment_positions: "listed" reads segment_start_times, "every" cuts every
# video, "auto" is "every" for records without segment_start_times (the test split).
POSITIONS = ("auto", "every", "listed")

_CONTEXT = (
    ("segment_labels", "the 2019 segment ratings' classes; segment-rated data is "
                       "YouTube-8M 3/frame/validate or test"),
    ("segment_start_times", "the 2019 rated segments' first frames"),
    ("segment_scores", "the 2019 human ratings"),
)


def _required_context(positions: str, rated: bool):
    if positions == "every":
        return ()
    return _CONTEXT if rated else _CONTEXT[1:2]


class SegmentReader(readers.FrameReader):
    """Reads 2019 SequenceExamples, yielding their segments (module docstring).

    ``parse(serialized [B])`` returns, for the S segments of the batch:
    ``id`` string [S] (the video's), ``features`` float32 [S, segment_size, D]
    (padded: [S, max_frames, D]; the models read the first num_frames rows
    only, so both score alike), ``num_frames`` int32 [S] (segment_size; a
    short last segment of "every": its remaining frames), ``labels`` int64
    [S] (the rated class; -1 unless rated), ``start_time`` int64 [S],
    ``score`` float32 [S] (the rating; 0 unless rated).
    """

    def __init__(self, num_classes=3862, feature_names=("rgb", "audio"),
                 feature_sizes=(1024, 128), max_frames=readers.MAX_FRAMES,
                 segment_size: int = SEGMENT_SIZE, rated: bool = True,
                 padded: bool = True, positions: str = "listed", skip_unrated: bool = False):
        super().__init__(num_classes, feature_names, feature_sizes, max_frames)
        self.padded = bool(padded)
        # rated=False (a submission): only the start times are needed (none
        # with positions="every"); labels and scores come out as -1 and 0.
        self.rated = bool(rated)
        if positions not in ("every", "listed"):
            raise UserError(f"--segment_positions: must be one of {', '.join(POSITIONS)}, "
                            f"got {positions!r}")
        if positions == "every" and rated:
            raise UserError("--segment_positions=every: scores unrated segments; an "
                            "evaluation reads the listed, rated ones")
        self.positions, self.skip_unrated = positions, bool(skip_unrated)
        self.required_context = _required_context(positions, self.rated)
        self.segment_size = int(segment_size)
        if not 1 <= self.segment_size <= self.max_frames:
            raise UserError(f"--segment_size: must be in 1..{self.max_frames} (the model's "
                            f"max_frames), got {segment_size}")

    @classmethod
    def like(cls, reader: object, segment_size: int = SEGMENT_SIZE, rated: bool = True,
             padded: bool = True, positions: str = "listed",
             skip_unrated: bool = False) -> "SegmentReader":
        """The segment reader with a model's frame reader's (`reader`)
        features and classes; any other reader is a UserError."""
        if not isinstance(reader, readers.FrameReader):
            raise UserError("--segment_labels: needs a frame-level model (segments are "
                            "frames of a video); this one reads video-level features")
        return cls(reader.num_classes, reader.feature_names, reader.feature_sizes,
                   reader.max_frames, segment_size, rated, padded, positions, skip_unrated)

    def parse(self, serialized) -> dict:
        """Parses a batch of serialized 2019 SequenceExamples.

        Errors (at run time, InvalidArgumentError whose first line names the
        field; "listed" only): the three segment lists of a video differ in
        length; a start time is negative or not a multiple of segment_size; a
        segment ends after the video's last frame; a rated class outside
        [0, num_classes); plus every FrameReader check on the frames.
        """
        with tf.name_scope("parse_segments"):
            serialized = readers.as_batch(serialized)
            context, sequences = self._parsed(serialized)
            joined, splits, num_frames = self._joined_uint8_frames(sequences)
            if self.positions == "every":
                video, starts, labels, scores = self._every_segment(num_frames)
            else:
                video, starts, labels, scores = self._listed_segments(context, splits)
            if self.skip_unrated:
                keep = _rated_positions(starts, tf.gather(num_frames, video), self.segment_size)
                video, starts, labels, scores = (tf.boolean_mask(t, keep)
                                                 for t in (video, starts, labels, scores))
            if self.positions == "every":
                lengths = tf.minimum(tf.gather(num_frames, video) - tf.cast(starts, tf.int32),
                                     self.segment_size)
            else:
                lengths = tf.fill(tf.shape(video), tf.constant(self.segment_size, tf.int32))
            return {
                "id": tf.gather(context[self.id_key], video),
                "features": self._frames_of(joined, tf.gather(splits, video), starts, lengths),
                "num_frames": lengths,
                "labels": labels,
                "start_time": starts,
                "score": scores,
            }

    def _parsed(self, serialized):
        """(context, sequences) of the batch: the segment lists ("listed")."""
        ragged = tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int32)
        context_features = {self.id_key: tf.io.FixedLenFeature([], tf.string)}
        if self.positions == "listed":
            context_features.update({
                "segment_labels": ragged, "segment_start_times": ragged,
                "segment_scores": tf.io.RaggedFeature(tf.float32, row_splits_dtype=tf.int32)})
        context, sequences, _ = tf.io.parse_sequence_example(
            serialized, context_features=context_features,
            sequence_features={name: tf.io.RaggedFeature(tf.string, row_splits_dtype=tf.int32)
                               for name in self.feature_names})
        return context, sequences

    def _listed_segments(self, context, splits):
        """(video [S] int32, start [S] int64, labels, scores) of segment_start_times."""
        starts = context["segment_start_times"]
        with tf.control_dependencies(self._checks(context, splits)):
            video = tf.identity(starts.value_rowids())
        labels, scores = context["segment_labels"].values, context["segment_scores"].values
        if not self.rated:
            labels, scores = self._unrated(video)
        return video, starts.values, labels, scores

    def _every_segment(self, num_frames):
        """(video, start, labels, scores) of every segment: ceil(frames /
        segment_size) a video (frames: num_frames, capped at max_frames)."""
        counts = (num_frames + self.segment_size - 1) // self.segment_size
        positions = tf.ragged.range(counts)
        video = positions.value_rowids()
        starts = tf.cast(positions.values * self.segment_size, tf.int64)
        return (video, starts, *self._unrated(video))

    @staticmethod
    def _unrated(video):
        return (tf.fill(tf.shape(video), tf.constant(-1, tf.int64)),
                tf.zeros(tf.shape(video), tf.float32))

    def _frames_of(self, joined, first_rows, starts, lengths):
        """float32 [S, segment_size, D] (padded: [S, max_frames, D]): each
        segment's `lengths` rows from its video's row first_rows + start,
        the rows after them exactly 0.0."""
        offsets = tf.range(self.segment_size, dtype=tf.int32)[None, :]
        valid = offsets < lengths[:, None]
        first = first_rows + tf.cast(starts, tf.int32)
        # (Rows past a short segment's end read its first row, then zeroed.)
        rows = first[:, None] + offsets * tf.cast(valid, tf.int32)
        scale, bias = readers.dequantize_constants()
        mask = tf.cast(valid, tf.float32)[:, :, None]
        frames = tf.cast(tf.gather(joined, rows), tf.float32) * (mask * scale) + mask * bias
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


def _rated_positions(starts, num_frames, segment_size: int):
    """bool [S]: a segment is not among its video's first UNRATED_HEAD nor its
    last UNRATED_TAIL positions (of ceil(num_frames / segment_size))."""
    position = starts // segment_size
    count = tf.cast((num_frames + segment_size - 1) // segment_size, tf.int64)
    return (position >= UNRATED_HEAD) & (position < count - UNRATED_TAIL)


def resolve_positions(positions: str, files: Sequence[str], compression: str = "auto",
                      flag_name: str = "input_data_pattern") -> str:
    """--segment_positions as "every" or "listed": "auto" is "listed" when the
    first record of the first file with records holds segment_start_times
    (2019 validation data), else "every" (the test split). A mix is left to
    readers.check_records, which refuses a "listed" file without the list."""
    if positions not in POSITIONS:
        raise UserError(f"--segment_positions: must be one of {', '.join(POSITIONS)}, "
                        f"got {positions!r}")
    if positions != "auto":
        return positions
    for path in list(files)[:readers.CHECKED_FILES]:
        kind = readers.file_compressions([path], compression, flag_name)[0]
        try:
            first = next(iter(tf.io.tf_record_iterator(path, kind)), None)
        except tf.errors.OpError:
            continue    # (a damaged file: the reader names it)
        if first is not None:
            example = parsed_example(first)
            listed = example is not None and "segment_start_times" in example.context.feature
            return "listed" if listed else "every"
    return "every"


def from_model_flags(model_flags: ModelFlags) -> SegmentReader:
    """The reader of record_kind "segment" (training.record_layouts): the
    model's features and classes, rated segments of SEGMENT_SIZE frames."""
    return SegmentReader(model_flags.num_classes, model_flags.feature_name_list(),
                         model_flags.feature_size_list())


class SegmentTrainingReader(SegmentReader):
    """The rated segments of 2019 records as training rows (segment_finetune).

    ``parse(serialized [B])`` returns, for the S rated segments of the batch
    (SegmentReader's listed, rated segments at their real length): ``id``
    [S], ``features`` float32 [S, segment_size, D], ``num_frames`` int32 [S],
    ``start_time`` int64 [S], ``rated_class`` int64 [S] and ``rating``
    float32 [S] (the rating's class and 0/1 score), ``video_labels`` float32
    [S, C] (the multi-hot labels of the segment's video) and ``labels``
    float32 [S, C] (the rated positive: rating times the one-hot of
    rated_class; the trainer's progress line reads it). A batch of B videos
    gives any number of segments: ``several_rows_per_record`` makes
    training.train_graph.make_train_batch rebatch them to full batches.
    """

    several_rows_per_record = True

    def __init__(self, num_classes=3862, feature_names=("rgb", "audio"),
                 feature_sizes=(1024, 128), max_frames=readers.MAX_FRAMES,
                 segment_size: int = SEGMENT_SIZE):
        super().__init__(num_classes, feature_names, feature_sizes, max_frames, segment_size,
                         rated=True, padded=False, positions="listed")

    @classmethod
    def for_training(cls, reader: object,
                     segment_size: int = SEGMENT_SIZE) -> "SegmentTrainingReader":
        """The training reader with a model's frame reader's features and
        classes; a video-level reader is a UserError."""
        plain = SegmentReader.like(reader, segment_size)
        return cls(plain.num_classes, plain.feature_names, plain.feature_sizes,
                   plain.max_frames, segment_size)

    def parse(self, serialized) -> dict:
        """SegmentReader.parse plus each segment's video labels (a label id
        outside [0, num_classes) fails at run time, naming ``labels``)."""
        outputs = super().parse(serialized)
        with tf.name_scope("parse_video_labels"):
            ragged = tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int32)
            context, _, _ = tf.io.parse_sequence_example(
                readers.as_batch(serialized),
                context_features={"labels": ragged, "segment_start_times": ragged})
            # (SegmentReader yields the listed segments in this order.)
            video = context["segment_start_times"].value_rowids()
            labels = readers.parsing.multi_hot(context["labels"], self.num_classes)
            video_labels = tf.gather(labels, video)
        rated_class, rating = outputs.pop("labels"), outputs.pop("score")
        outputs.update({
            "rated_class": rated_class, "rating": rating, "video_labels": video_labels,
            "labels": tf.one_hot(rated_class, self.num_classes) * rating[:, None]})
        return outputs
