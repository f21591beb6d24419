"""Corrupt and truncated files: skip mode (--skip_corrupt_records) and
the one line naming a damaged file."""
from __future__ import annotations

from typing import Any, Sequence, Union

from models.tf_compat import tf
from training.cli import first_line
from training.readers.compression import detect_compression, file_compressions
from training.readers.files import resolve_files
from training.readers.kinds import parsed_example

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
def records_skipping_corruption(path: Any, compression_type: Any) -> Any:
    """A dataset of a file's records, stopping at the first damaged one
    (skip mode: --skip_corrupt_records)."""
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
                example = parsed_example(record)
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
