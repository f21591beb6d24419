"""The tf.data input pipeline: ``make_dataset`` (a pattern's files,
interleaved, shuffled when training, batched and parsed) and
``make_file_dataset`` (one file after the other, for inference by file)."""
from __future__ import annotations

from typing import Sequence

from models.tf_compat import tf
from training.cli import UserError
from training.readers.compression import file_compressions
from training.readers.damaged import records_skipping_corruption
from training.readers.files import resolve_files

_AUTOTUNE = tf.data.experimental.AUTOTUNE


def _without_autotune_thread(dataset):
    """The dataset with tf.data's autotuning model thread off. That thread
    sleeps between optimisation rounds, up to a minute once the iterator has
    lived that long, and destroying the iterator (closing the session) waits
    for its sleep to end: seconds to a minute lost per process, with no CPU
    used. The AUTOTUNE parallelism and buffer sizes then take tf.data's fixed
    defaults; the elements and their order are unchanged."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


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
    read_file = records_skipping_corruption if skip_corrupt else _tfrecords
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
    return _without_autotune_thread(_parsed(dataset, reader).prefetch(_AUTOTUNE))


def make_file_dataset(reader, files: tf.Tensor, batch_size: int, skip_corrupt: bool = False,
                      compressions: tf.Tensor | None = None):
    """The records of `files` (a string tensor [F], e.g. a placeholder fed
    when the iterator is initialised) one file after the other, in record
    order, batched per file and parsed: a file's batches never depend on the
    other files (inference by file, training.predict). compressions: string
    [F], each file's compression_type (file_compressions); None: uncompressed."""
    read_file = records_skipping_corruption if skip_corrupt else _tfrecords
    if compressions is None:
        compressions = tf.fill(tf.shape(files), "")
    dataset = tf.data.Dataset.from_tensor_slices((files, compressions)).flat_map(
        tf.autograph.experimental.do_not_convert(
            lambda path, kind: read_file(path, kind).batch(int(batch_size),
                                                           drop_remainder=False)))
    return _without_autotune_thread(_parsed(dataset, reader).prefetch(_AUTOTUNE))


def _parsed(dataset, reader):
    """dataset.map of reader.parse, traced as written, without AutoGraph: the
    readers are graph-mode code (a Python `if` on a tensor is an error, as
    everywhere in the project), and converting them cost about half a
    second of CPU in every process that reads records."""
    parse = tf.autograph.experimental.do_not_convert(reader.parse)
    return dataset.map(parse, num_parallel_calls=_AUTOTUNE, deterministic=True)


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
