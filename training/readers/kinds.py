"""Record kinds: the wrong kind of input named in one line, before any work
(``check_records``; docs/formats.md 1.7)."""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from models.tf_compat import tf
from training.cli import UserError, first_line
from training.readers.compression import file_compressions

CHECKED_FILES = 64      # check_records reads the first record of this many files
LABEL_RECORDS = 8       # records of a file looked at before calling it unlabelled


def parsed_example(record: bytes):
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


# The --record_kind of a parsed record (None: no layout reads it): the
# callers that know the layouts pass training.record_layouts.kind_of_record
# (the readers sit below the layouts and do not import them).
KindOf = Callable[[Any], Optional[str]]


def _kind_named(example, kind_of: Optional[KindOf]) -> Optional[str]:
    return kind_of(example) if kind_of is not None else None


def _check_kind(example, reader, where: str, reader_of: str, hint: str,
                kind_of: Optional[KindOf] = None) -> None:
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
    kind = _kind_named(example, kind_of)
    tail = (f"; these are --record_kind={kind} records" if kind else "") + \
        (f"; {hint}" if hint else "")
    if reader.frame_features and not feature_lists and floats:
        raise UserError(f"{where}: holds video-level Examples (features {', '.join(floats)}), "
                        f"but {reader_of} reads frame-level SequenceExamples ({wanted}){tail}")
    if not reader.frame_features and feature_lists:
        raise UserError(f"{where}: holds frame-level SequenceExamples (feature lists "
                        f"{', '.join(feature_lists)}), but {reader_of} reads video-level "
                        f"Examples ({wanted}){tail}")


def _check_id(example, reader, where: str, kind_of: Optional[KindOf]) -> None:
    """A UserError naming the reader's id key when the record has another
    (2017 records: video_id) and the --record_kind that reads it."""
    id_key = getattr(reader, "id_key", "id")
    context = example.context.feature
    if id_key in context:
        return
    others = sorted(name for name in context
                    if (name == "id" or name.endswith("_id"))
                    and context[name].WhichOneof("kind") == "bytes_list")
    have = f"these records have {others[0]!r}" if others else "these records have no video id"
    kind = _kind_named(example, kind_of)
    advice = f": read them with --record_kind={kind}" if kind else ""
    raise UserError(f"{where}: no {id_key!r} feature ({have}{advice})")


def _check_context(example, reader, where: str, kind_of: Optional[KindOf]) -> None:
    """A UserError for a context feature of reader.required_context that
    the record lacks (2018 records read as 2019 segments: segment_labels)."""
    for name, what in getattr(reader, "required_context", ()):
        if name not in example.context.feature:
            kind = _kind_named(example, kind_of)
            advice = f"; read them with --record_kind={kind}" if kind else ""
            raise UserError(f"{where}: its records have no {name} ({what}){advice}")


def check_records(files: Sequence[str], flag_name: str, reader, labels_needed_by: str = "",
                  compression: str = "auto", reader_of: str = "the model",
                  hint: str = "", kind_of: Optional[KindOf] = None) -> None:
    """Refuses, in one line naming --<flag_name> and the file, records that
    `reader` cannot use; run by each entry point before any model is loaded.

    Reads the first record of each of the first CHECKED_FILES (64) files of
    `files` (resolve_files sorts them; a 3844-file pattern stays fast, the
    rest are taken to be alike) with a Python-side proto parse, and refuses:
    video-level Examples for a frame-level reader and the reverse; a record
    that is no Example or SequenceExample; a record without a context
    feature of reader.required_context (distillation: ensemble_labels) or
    without the reader's id key (2017 records: video_id); and, when
    labels_needed_by (e.g. "evaluation") is set, a file whose first
    LABEL_RECORDS (8) records all have no labels (the unlabelled test split).
    A file without records, or whose first record is damaged, is left to the
    reader (its usual errors, --skip_corrupt_records). reader_of: who reads
    (e.g. "the model of <dir>"); hint: what to check, after a '; '; kind_of:
    names the --record_kind of the records in the line (KindOf).
    """
    checked = list(files)[:CHECKED_FILES]
    for path, kind in zip(checked, file_compressions(checked, compression, flag_name)):
        where = f"--{flag_name}: {path}"
        first = _leading_records(path, kind, 1, where)
        if not first:
            continue
        example = parsed_example(first[0])
        _check_kind(example, reader, where, reader_of, hint, kind_of)
        _check_id(example, reader, where, kind_of)
        _check_context(example, reader, where, kind_of)
        if labels_needed_by and not _has_labels(example) and not any(
                _has_labels(parsed_example(record))
                for record in _leading_records(path, kind, LABEL_RECORDS, where)):
            raise UserError(f"{where}: its records have no labels (the unlabelled test "
                            f"split?); {labels_needed_by} needs labelled records")
