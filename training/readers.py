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
level). ``make_dataset`` lists the files, interleaves ``TFRecordDataset``
readers, shuffles (training only), repeats, batches, then parses and
prefetches. Files may be GZIP or ZLIB compressed TFRecords: ``--compression``
(default ``auto``: detected per file, ``file_compressions``). ``check_records``
refuses input of the wrong kind (video-level for a frame-level model, the
unlabelled test split for evaluation, ...) before any work.
"""
from __future__ import annotations

import concurrent.futures
from typing import Any, Sequence, Tuple, Union

from models.tf_compat import tf
from training.errors import UserError, first_line
from training.flags import comma_list, comma_numbers

MAX_FRAMES = 300

_AUTOTUNE = tf.data.experimental.AUTOTUNE


# ---------------------------------------------------------------------------
# Dequantisation and file listing
# ---------------------------------------------------------------------------

def dequantize_constants(max_quantized_value=2.0, min_quantized_value=-2.0):
    """(scalar, bias) of ``dequantize``: ``x = q * scalar + bias``."""
    quantized_range = max_quantized_value - min_quantized_value
    return quantized_range / 255.0, (quantized_range / 512.0) + min_quantized_value


def resolve_files(data_pattern: str, flag_name: str = "data_pattern") -> list[str]:
    """Expands comma-separated glob patterns into a sorted, de-duplicated list.

    Each pattern goes through ``tf.io.gfile.glob`` (local paths and any file
    system TensorFlow knows, e.g. ``gs://``).

    Raises:
      UserError: ``--<flag_name>: no files match '<pattern>'`` when a pattern
        (or the whole, empty, flag value) matches no file.
    """
    patterns = comma_list(data_pattern)
    if not patterns:
        raise UserError(f"--{flag_name}: no files match '{data_pattern or ''}'")
    files = set()
    for pattern in patterns:
        try:
            matched = tf.io.gfile.glob(pattern)
        except tf.errors.OpError as err:
            raise UserError(
                f"--{flag_name}: cannot list '{pattern}': {err.message}") from None
        matched = [m for m in matched if not tf.io.gfile.isdir(m)]
        if not matched:
            raise UserError(f"--{flag_name}: no files match '{pattern}'")
        files.update(matched)
    return sorted(files)


# ---------------------------------------------------------------------------
# Compressed TFRecords (--compression)
# ---------------------------------------------------------------------------

COMPRESSIONS = ("auto", "none", "gzip", "zlib")
_COMPRESSION_TYPES = {"none": "", "gzip": "GZIP", "zlib": "ZLIB"}


def _masked_crc32c(data: bytes) -> int:
    """The TFRecord framing's masked CRC-32C of `data` (bitwise; used on 8 bytes)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def detect_compression(path: str) -> str:
    """TensorFlow's compression_type of a TFRecord file: '', 'GZIP' or 'ZLIB'.

    From its first 12 bytes: an uncompressed file starts with the uint64
    length of its first record and that length's masked CRC-32C (checked
    first, so a length that happens to look like a magic number is not
    taken for one); else the gzip magic 1f 8b, else a zlib header (deflate,
    window <= 32K, (CMF*256 + FLG) % 31 == 0); else '' (an empty or damaged
    file, which the reader then reports).
    """
    with tf.io.gfile.GFile(path, "rb") as handle:
        head = handle.read(12)
    if len(head) == 12 and int.from_bytes(head[8:], "little") == _masked_crc32c(head[:8]):
        return ""
    if head[:2] == b"\x1f\x8b":
        return "GZIP"
    if len(head) >= 2 and head[0] & 0x0F == 8 and head[0] >> 4 <= 7 \
            and (head[0] * 256 + head[1]) % 31 == 0:
        return "ZLIB"
    return ""


def check_compression(compression: str) -> str:
    """`compression` (--compression) if it is one of COMPRESSIONS, else a UserError."""
    if compression not in COMPRESSIONS:
        raise UserError(f"--compression: must be one of {', '.join(COMPRESSIONS)}, "
                        f"got {compression!r}")
    return compression


def file_compressions(files: Sequence[str], compression: str = "auto",
                      flag_name: str = "") -> list[str]:
    """The compression_type ('', 'GZIP' or 'ZLIB') of each file.

    compression: --compression; 'auto' detects each file's own
    (detect_compression, a few files at a time: one small read per file),
    'none', 'gzip' and 'zlib' apply to every file without reading any.
    flag_name: the files' flag, named by the error for an unreadable file.
    """
    if check_compression(compression) != "auto":
        return [_COMPRESSION_TYPES[compression]] * len(files)

    def detect(path: str) -> str:
        try:
            return detect_compression(path)
        except tf.errors.OpError as err:
            prefix = f"--{flag_name}: " if flag_name else ""
            raise UserError(f"{prefix}{path}: cannot read ({first_line(err)})") from None

    if len(files) <= 1:
        return [detect(path) for path in files]
    with concurrent.futures.ThreadPoolExecutor(min(16, len(files))) as pool:
        return list(pool.map(detect, files))


# ---------------------------------------------------------------------------
# Shared parsing helpers
# ---------------------------------------------------------------------------

def _check_names_sizes(feature_names, feature_sizes):
    names = list(feature_names)
    sizes = [int(s) for s in feature_sizes]
    if not names:
        raise UserError("--feature_names: no feature names given")
    if len(names) != len(sizes):
        raise UserError(
            f"--feature_names/--feature_sizes: {len(names)} names "
            f"({','.join(names)}) but {len(sizes)} sizes "
            f"({','.join(str(s) for s in sizes)})")
    if len(set(names)) != len(names):
        raise UserError(f"--feature_names: duplicate name in '{','.join(names)}'")
    for name, size in zip(names, sizes):
        if size <= 0:
            raise UserError(f"--feature_sizes: size of '{name}' must be positive, got {size}")
    return names, sizes


def _check_num_classes(num_classes):
    num_classes = int(num_classes)
    if num_classes <= 0:
        raise UserError(f"--num_classes: must be positive, got {num_classes}")
    return num_classes


def as_batch(serialized: Any) -> Any:
    """Returns ``serialized`` as a string tensor of rank 1 (a scalar becomes [1])."""
    serialized = tf.convert_to_tensor(serialized, dtype=tf.string)
    if serialized.shape.ndims == 0:
        serialized = tf.reshape(serialized, [1])
    return serialized


def _static_batch(serialized):
    return tf.compat.dimension_value(serialized.shape[0]) if serialized.shape.ndims else None


def _multi_hot(labels, num_classes):
    """Ragged int64 labels [B, (L)] -> float32 multi-hot [B, num_classes].

    Fails (InvalidArgumentError naming "labels" and num_classes) when a label
    id is negative or >= num_classes.
    """
    values = labels.values
    checks = [
        tf.debugging.assert_less(
            values, tf.constant(num_classes, tf.int64),
            message=f"labels: a label id is >= num_classes ({num_classes}), the classes "
                    f"of the model (training: --num_classes)",
            summarize=5),
        tf.debugging.assert_non_negative(
            values, message="labels: a label id is negative", summarize=5),
    ]
    with tf.control_dependencies(checks):
        values = tf.identity(values)
    rows = tf.cast(labels.value_rowids(), tf.int64)
    batch = tf.cast(labels.nrows(), tf.int64)
    indices = tf.stack([rows, values], axis=1)
    dense = tf.scatter_nd(indices, tf.ones_like(values, dtype=tf.float32),
                          shape=tf.stack([batch, tf.constant(num_classes, tf.int64)]))
    # scatter_nd sums duplicates: clamp back to a 0/1 indicator.
    return tf.minimum(dense, 1.0)


def _finish(outputs, batch, num_classes, feature_shape):
    outputs["id"].set_shape([batch])
    outputs["labels"].set_shape([batch, num_classes])
    outputs["num_frames"].set_shape([batch])
    outputs["features"].set_shape([batch] + list(feature_shape))
    return outputs


# ---------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------

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
                 feature_sizes=(1024, 128), max_frames=MAX_FRAMES):
        self.num_classes = _check_num_classes(num_classes)
        self.feature_names, self.feature_sizes = _check_names_sizes(
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
            batch = _static_batch(serialized)
            string_feature = tf.io.RaggedFeature(tf.string, row_splits_dtype=tf.int32)
            context, sequences, _ = tf.io.parse_sequence_example(
                serialized,
                context_features={
                    "id": tf.io.FixedLenFeature([], tf.string),
                    "labels": tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int32),
                },
                sequence_features={name: string_feature for name in self.feature_names})
            joined, splits, num_frames = self._joined_uint8_frames(sequences)
            outputs = {
                "id": context["id"],
                "features": self._dequantized(joined, splits, num_frames),
                "labels": _multi_hot(context["labels"], self.num_classes),
                "num_frames": tf.cast(num_frames, tf.int32),
            }
            return _finish(outputs, batch, self.num_classes,
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


class VideoReader:
    """Reads YT8M 2018 video-level ``Example`` batches.

    ``parse(serialized [B])`` returns ``id`` [B], ``features``
    [B, sum(feature_sizes)] float32, ``labels`` [B, num_classes] float32,
    ``num_frames`` [B] int32 ones.
    """

    frame_features = False
    required_context: Tuple[Tuple[str, str], ...] = ()

    def __init__(self, num_classes=3862, feature_names=("mean_rgb", "mean_audio"),
                 feature_sizes=(1024, 128)):
        self.num_classes = _check_num_classes(num_classes)
        self.feature_names, self.feature_sizes = _check_names_sizes(
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
            batch = _static_batch(serialized)
            spec = {
                "id": tf.io.FixedLenFeature([], tf.string),
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
            ids = parsed["id"]
            outputs = {
                "id": ids,
                "features": features,
                "labels": _multi_hot(parsed["labels"], self.num_classes),
                "num_frames": tf.ones_like(ids, dtype=tf.int32),
            }
            return _finish(outputs, batch, self.num_classes, [self.feature_size])


def get_reader(frame_features: bool, feature_names, feature_sizes, num_classes: int,
               max_frames: int = MAX_FRAMES):
    """Builds the reader the starter flags describe.

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


# ---------------------------------------------------------------------------
# Record kinds: the wrong kind of input named before any work
# ---------------------------------------------------------------------------

CHECKED_FILES = 64      # check_records reads the first record of this many files
LABEL_RECORDS = 8       # records of a file looked at before calling it unlabelled


def _parsed(record: bytes):
    """The record as a SequenceExample (an Example parses as one: its
    features become the context), or None when it is no such proto."""
    try:
        return tf.train.SequenceExample.FromString(record)
    except Exception:  # protobuf's DecodeError (and the C++ parser's errors)
        return None


def _has_labels(example) -> bool:
    context = example.context.feature if example is not None else {}
    return "labels" in context and len(context["labels"].int64_list.value) > 0


def _leading_records(path: str, compression_type: str, count: int, where: str) -> list:
    """Up to `count` first records of a file; [] when it has none or its
    first record is damaged (the reader reports that, or skips it)."""
    records = []
    try:
        for record in tf.io.tf_record_iterator(path, compression_type):
            records.append(record)
            if len(records) >= count:
                break
    except tf.errors.DataLossError:
        pass
    except tf.errors.OpError as err:
        raise UserError(f"{where}: cannot read ({first_line(err)})") from None
    return records


def _check_kind(example, reader, where: str, reader_of: str, hint: str) -> None:
    """A UserError when the parsed first record is not of the reader's kind."""
    if example is None:
        raise UserError(f"{where}: its first record is not a tf.train.Example or "
                        f"SequenceExample (is this YouTube-8M data?)")
    feature_lists = sorted(example.feature_lists.feature_list)
    floats = sorted(name for name, feature in example.context.feature.items()
                    if feature.WhichOneof("kind") == "float_list")
    if not feature_lists and not floats and "id" not in example.context.feature:
        raise UserError(f"{where}: its first record is not a YouTube-8M record "
                        f"(no id, no features)")
    wanted = ", ".join(reader.feature_names)
    tail = f"; {hint}" if hint else ""
    if reader.frame_features and not feature_lists and floats:
        raise UserError(f"{where}: holds video-level Examples (features {', '.join(floats)}), "
                        f"but {reader_of} reads frame-level SequenceExamples ({wanted}){tail}")
    if not reader.frame_features and feature_lists:
        raise UserError(f"{where}: holds frame-level SequenceExamples (feature lists "
                        f"{', '.join(feature_lists)}), but {reader_of} reads video-level "
                        f"Examples ({wanted}){tail}")


def check_records(files: Sequence[str], flag_name: str, reader, labels_needed_by: str = "",
                  compression: str = "auto", reader_of: str = "the model",
                  hint: str = "") -> None:
    """Refuses, in one line naming --<flag_name> and the file, records that
    `reader` cannot use; run by each entry point before any model is loaded.

    Reads the first record of each of the first CHECKED_FILES (64) files of
    `files` (resolve_files sorts them; a 3844-file pattern stays fast, the
    rest are taken to be alike) with a Python-side proto parse, and refuses:
    video-level Examples for a frame-level reader and the reverse; a record
    that is no Example or SequenceExample; a record without a context
    feature of reader.required_context (distillation: ensemble_labels); and,
    when labels_needed_by (e.g. "evaluation") is set, a file whose first
    LABEL_RECORDS (8) records all have no labels (the unlabelled test split).
    A file without records, or whose first record is damaged, is left to the
    reader (its usual errors, --skip_corrupt_records). reader_of: who reads
    (e.g. "the model of <dir>"); hint: what to check, after a '; '.
    """
    checked = list(files)[:CHECKED_FILES]
    for path, kind in zip(checked, file_compressions(checked, compression, flag_name)):
        where = f"--{flag_name}: {path}"
        first = _leading_records(path, kind, 1, where)
        if not first:
            continue
        example = _parsed(first[0])
        _check_kind(example, reader, where, reader_of, hint)
        for name, what in getattr(reader, "required_context", ()):
            if name not in example.context.feature:
                raise UserError(f"{where}: its records have no {name} ({what})")
        if labels_needed_by and not _has_labels(example) and not any(
                _has_labels(_parsed(record))
                for record in _leading_records(path, kind, LABEL_RECORDS, where)):
            raise UserError(f"{where}: its records have no labels (the unlabelled test "
                            f"split?); {labels_needed_by} needs labelled records")


# ---------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------

def make_dataset(reader, data_pattern: str, batch_size: int, training: bool,
                 num_epochs: int | None = 1, num_parallel_reads: int = 8,
                 shuffle_buffer: int = 2048, seed: int | None = None,
                 flag_name: str = "data_pattern", skip_corrupt: bool = False,
                 compression: str = "auto"):
    """Builds a batched, parsed ``tf.data.Dataset`` of ``reader.parse`` dicts.

    Each element is the dict of ``reader.parse`` for a batch of up to
    ``batch_size`` records (the last batch may be smaller: it is kept).

    training=True: the file order is shuffled (a new order each epoch, seeded
    by ``seed``), ``num_parallel_reads`` files are read by a parallel
    interleave, records go through a ``shuffle_buffer`` shuffle, the whole is
    repeated ``num_epochs`` times (None = forever), batched and parsed. With a
    seed the order is reproducible; without one the interleave may also
    reorder records for speed.

    training=False: files in sorted order, a deterministic interleave, no
    shuffle, ``num_epochs`` passes, every record exactly once per pass.
    compression: --compression (file_compressions: 'auto' detects each file's).

    Raises:
      UserError naming ``--<flag_name>`` when no files match, or a bad
      batch size / epoch count.
    """
    files = resolve_files(data_pattern, flag_name)
    if int(batch_size) <= 0:
        raise UserError(f"--batch_size: must be positive, got {batch_size}")
    if num_epochs is not None and int(num_epochs) <= 0:
        raise UserError(f"--num_epochs: must be positive, got {num_epochs}")
    count = -1 if num_epochs is None else int(num_epochs)
    cycle = max(1, min(int(num_parallel_reads), len(files)))

    dataset = _file_pairs(files, compression, flag_name)
    read_file = _records_skipping_corruption if skip_corrupt else _tfrecords
    if training:
        deterministic = seed is not None
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.interleave(
            read_file, cycle_length=cycle, block_length=1,
            num_parallel_calls=cycle if cycle > 1 else None,
            deterministic=deterministic if cycle > 1 else None)
        if shuffle_buffer and shuffle_buffer > 1:
            dataset = dataset.shuffle(int(shuffle_buffer),
                                      seed=None if seed is None else seed + 1,
                                      reshuffle_each_iteration=True)
        # repeat() re-creates the upstream iterators, so both shuffles draw a
        # new order every epoch.
        dataset = dataset.repeat(count)
    else:
        dataset = dataset.interleave(
            read_file, cycle_length=cycle, block_length=1,
            num_parallel_calls=cycle if cycle > 1 else None,
            deterministic=True if cycle > 1 else None)
        dataset = dataset.repeat(count)
    dataset = dataset.batch(int(batch_size), drop_remainder=False)
    dataset = dataset.map(reader.parse, num_parallel_calls=_AUTOTUNE, deterministic=True)
    return dataset.prefetch(_AUTOTUNE)


def make_file_dataset(reader, files: tf.Tensor, batch_size: int, skip_corrupt: bool = False,
                      compressions: tf.Tensor | None = None):
    """The records of `files` (a string tensor [F], e.g. a placeholder fed
    when the iterator is initialised) one file after the other, in record
    order, batched per file and parsed: a file's batches never depend on the
    other files (inference by file, training.predict). compressions: string
    [F], each file's compression_type (file_compressions); None: uncompressed."""
    read_file = _records_skipping_corruption if skip_corrupt else _tfrecords
    if compressions is None:
        compressions = tf.fill(tf.shape(files), "")
    dataset = tf.data.Dataset.from_tensor_slices((files, compressions)).flat_map(
        lambda path, kind: read_file(path, kind).batch(int(batch_size), drop_remainder=False))
    dataset = dataset.map(reader.parse, num_parallel_calls=_AUTOTUNE, deterministic=True)
    return dataset.prefetch(_AUTOTUNE)


def _file_pairs(files: Sequence[str], compression: str, flag_name: str):
    """A dataset of (path, compression_type) pairs: each file is read with its
    own compression."""
    return tf.data.Dataset.from_tensor_slices(
        (tf.constant(files, dtype=tf.string),
         tf.constant(file_compressions(files, compression, flag_name), dtype=tf.string)))


@tf.autograph.experimental.do_not_convert
def _tfrecords(path, compression_type):
    """The records of one file (string tensors: path, '', 'GZIP' or 'ZLIB')."""
    return tf.data.TFRecordDataset(path, compression_type=compression_type)


# ---------------------------------------------------------------------------
# Corrupt and truncated files
# ---------------------------------------------------------------------------

# Files cut short in skip mode: path -> (records read before the damage, message).
SKIPPED_FILES: dict = {}


def _read_records_skipping_corruption(path: Union[bytes, str],
                                      compression_type: Union[bytes, str] = b""):
    """Yields a file's records up to the first corrupt or truncated one.

    The TFRecord framing cannot be resynchronised after a damaged record, so
    the rest of that file is skipped; the file is noted in SKIPPED_FILES.
    """
    path = path.decode() if isinstance(path, bytes) else path
    if isinstance(compression_type, bytes):
        compression_type = compression_type.decode()
    count = 0
    try:
        for record in tf.io.tf_record_iterator(path, compression_type):
            count += 1
            yield record
    except tf.errors.DataLossError as err:
        message = _data_loss_text(err)
        SKIPPED_FILES[path] = (count, message)
        tf.logging.warning("skipping the rest of %s after %d records: %s", path, count, message)


def _data_loss_text(err) -> str:
    """First line of a DataLossError, e.g. "corrupted record at 265673" or
    "truncated record at 339779: Read less bytes than requested" (TensorFlow
    writes the latter as "...339779' failed with Read less...")."""
    return first_line(err).replace("' failed with ", ": ")


@tf.autograph.experimental.do_not_convert
def _records_skipping_corruption(path, compression_type):
    return tf.data.Dataset.from_generator(
        _read_records_skipping_corruption, args=(path, compression_type),
        output_signature=tf.TensorSpec([], tf.string))


def skipped_files_summary() -> str:
    """One line about the files skip mode cut short ('' when none)."""
    if not SKIPPED_FILES:
        return ""
    names = ", ".join(f"{path} (after {count} records: {message})"
                      for path, (count, message) in sorted(SKIPPED_FILES.items()))
    return f"skipped the damaged rest of {len(SKIPPED_FILES)} file(s): {names}"


_READ_IT_AUTO = "--compression=auto reads it)"


def describe_data_error(error, data_pattern: str, compression: str = "auto") -> str:
    """One line for a run-time data error, naming the damaged file if any."""
    if isinstance(error, tf.errors.DataLossError):
        located = locate_damaged_file(data_pattern, compression)
        if located.endswith(_READ_IT_AUTO):
            return located      # not damaged: compressed, and read as uncompressed
        return ((located or first_line(error))
                + " (corrupt or truncated TFRecord; --skip_corrupt_records skips the "
                  "damaged rest of such files)")
    return first_line(error)


def file_of_video(files: Sequence[str], video_id: bytes, compression: str = "auto") -> str:
    """The first of `files` holding a record with this id ('' when none does).

    For an error about one video (its predictions are NaN): a batch does not
    know which file each of its videos came from, so the files are read
    again, in order, until the id is found.
    """
    for path, kind in zip(files, file_compressions(files, compression)):
        try:
            for record in tf.io.tf_record_iterator(path, kind):
                example = _parsed(record)
                feature = example.context.feature.get("id") if example is not None else None
                if feature is not None and list(feature.bytes_list.value) == [video_id]:
                    return path
        except tf.errors.OpError:
            continue        # (a damaged file was reported, or skipped, while reading)
    return ""


def locate_damaged_file(data_pattern: str, compression: str = "auto") -> str:
    """'<path>: <message>' of the first unreadable file of the pattern, or ''.

    Used after a DataLossError, whose message does not name the file. Read
    with --compression; a file that was forced to 'none' but looks
    compressed says so.
    """
    files = resolve_files(data_pattern)
    for path, kind in zip(files, file_compressions(files, compression)):
        try:
            for _ in tf.io.tf_record_iterator(path, kind):
                pass
        except tf.errors.DataLossError as err:
            detected = detect_compression(path) if not kind else ""
            note = f" (the file looks {detected}-compressed; {_READ_IT_AUTO}" if detected else ""
            return f"{path}: {_data_loss_text(err)}{note}"
    return ""
