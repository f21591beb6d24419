"""Writes the Kaggle submission CSV:
python -m ensemble.inference --train_dir=E --input_data_pattern='test*.tfrecord' --output_file=S.csv

The starter ``inference.py`` as the original used it (docs/original.md 6.5),
fixed where it was a bug. --train_dir is an ensemble dir (loaded the starter
way) or a single model dir (train, SWA or bfloat16 dir): training.predict
opens either; --frame_sampling, --seed and --bf16_compute apply to a single
model dir only. --input_model_tgz reads an uploaded model instead;
--output_model_tgz writes the upload (ensemble.export). --record_kind: the
records' layout (default: the model's; segment: the 2019 submission).

CSV (docs/formats.md 3.1): header ``VideoId,LabelConfidencePairs``; one line
per video, ``<id>,<label> <score> ...`` with min(--top_k, num_classes) pairs
by descending score (ties: lower label first), no trailing space, "\\n" line
ends. A score has 6 significant digits (the original's ``%g``) but is always
written positionally (``0.0000123457``, never ``1.23457e-05``), trailing
zeros dropped. The file is streamed to a temporary name and renamed into
place at the end; an existing output is replaced only with --overwrite.
``ensemble.check_submission`` validates the result.

--label_names=V (a vocabulary CSV) also writes each video's top 5 labels
with names to ``<CSV without .csv>.top5.tsv`` (ensemble.labels), the CSV
unchanged; V is checked before the model is loaded. With --num_shards the
workers only check it; ensemble.merge --label_names writes the TSV.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Iterator, List, Optional

import numpy as np
from absl import flags

from ensemble import export, labels, merge, segment_submission
from training import (
    checkpoints,
    locks,
    members,
    metrics,
    model_builder,
    paths,
    predict,
    readers,
    record_layouts,
    segment_readers,
    segment_refine,
    submission,
)
from training import flags as shared_flags
from training.cli import Interrupted, UserError, run_main
from training.progress import Log, Progress
from training.stage_files import PartRecord
from training.submission import CSV_HEADER, DEFAULT_TOP_K
from training.submission import format_score as format_score  # (its old home)

FLAGS = flags.FLAGS




def define_flags() -> None:
    shared_flags.define_shared_flags({
        "train_dir": "", "input_data_pattern": ("", "(the test split)"),
        "output_file": ("", "The submission CSV."),
        "batch_size": (64, "A tiled ensemble runs tile_num times as many; the original "
                           "8192 does not fit in memory."),
        "top_k": DEFAULT_TOP_K, "num_readers": 1, "seed": (2018, "(single model dir only)"),
        "frame_sampling": (None, "(single model dir only)"),
        "bf16_compute": (None, "(single model dir only; an ensemble dir's mode was fixed "
                               "by ensemble.build)"),
        "overwrite": False, "compression": "auto",
        "skip_corrupt_records": (False, "The videos skipped are missing from the CSV.")})
    shared_flags.define(flags.DEFINE_string, "input_model_tgz", "", "Read the model from this "
                        "upload .tgz instead of --train_dir.", path=paths.IN_FILE)
    shared_flags.define(flags.DEFINE_string, "output_model_tgz", "", "Write the upload .tgz "
                        "(model_flags.json + inference_model.*) here.", path=paths.OUT_FILE)
    shared_flags.define(flags.DEFINE_integer, "num_shards", 0, "Split the sorted input files "
                        "into this many shards and write this shard's parts to "
                        "<output_file>.parts/ (ensemble.merge writes the CSV); 0: one CSV.")
    shared_flags.define(flags.DEFINE_integer, "shard_index", 0, "The shard this process "
                        "writes (0-based, with --num_shards).")
    shared_flags.define(flags.DEFINE_integer, "num_threads", 0, "TensorFlow threads of this "
                        "process (0: all cores; workers sharing a CPU divide them).")
    shared_flags.define_shared("label_names", "", "(With --num_shards: only checked; "
                               "ensemble.merge writes it.)")
    shared_flags.define_shared("record_kind", "", "(unset: the one the model dir's "
                               "model_flags.json records; segment: the 2019 submission)")
    shared_flags.define_shared("segment_labels", False, "Write the 2019 submission "
                               "(Class,Segments) instead (ensemble.segment_submission).")
    shared_flags.define(flags.DEFINE_integer, "segment_max_pred", 100000, "Segments kept a "
                        "class (--segment_labels).")
    shared_flags.define(flags.DEFINE_string, "segment_label_ids_file", "", "The classes "
                        "of the segment submission (header Index); none: every class.",
                        path=paths.IN_FILE)
    shared_flags.define(flags.DEFINE_integer, "segment_size", 5, "Frames per segment.")
    shared_flags.define(flags.DEFINE_string, "segment_positions", "auto", "Which segments "
                        "--segment_labels scores: listed (each segment_start_times entry), "
                        "every (every segment of every video, the last one shorter: the "
                        "2019 test split) or auto (every for records without "
                        "segment_start_times, else listed).")
    shared_flags.define(flags.DEFINE_bool, "skip_unrated_positions", False, "--segment_labels: "
                        "leave out each video's first 6 and last 2 segments, which the 2019 "
                        "organisers never rated.")
    segment_refine.define_flags()


# ---------------------------------------------------------------------------
# Predicting


class NonFiniteScoreError(UserError):
    """A video whose predictions hold NaN or Inf: no line of it is written
    (the writer names its input file and removes the partial output)."""

    def __init__(self, video_id: bytes):
        self.video_id = bytes(video_id)
        self.video = self.video_id.decode("utf-8", "replace")
        super().__init__(f"the model predicts NaN or inf for video {self.video}; is the "
                         f"checkpoint corrupt?")

    def naming(self, input_file: str, output: str) -> UserError:
        """The one line: the video's input file, and that `output` was not written."""
        where = f"--input_data_pattern: {input_file}" if input_file else "--input_data_pattern"
        return UserError(f"{where}: the model predicts NaN or inf for video {self.video}; "
                         f"nothing was written to {output} (is the checkpoint corrupt?)")


def format_lines(ids: np.ndarray, predictions: np.ndarray, k: int) -> List[str]:
    """The CSV lines of a batch; NonFiniteScoreError for a video scored NaN or Inf."""
    predictions = np.asarray(predictions, dtype=np.float32)
    bad = ~np.isfinite(predictions).all(axis=1)
    if bad.any():
        raise NonFiniteScoreError(ids[int(np.argmax(bad))])
    labels, scores = metrics.top_k_classes(np.clip(predictions, 0.0, 1.0), k)
    return [submission.format_line(video.decode("utf-8"), row_labels, row_scores)
            for video, row_labels, row_scores in zip(ids, labels, scores)]


def write_submission(model: predict.LoadedModel, data_pattern: str, output_file: str,
                     batch_size: int = 64, top_k: int = DEFAULT_TOP_K, num_readers: int = 1,
                     log: Optional[Log] = print, overwrite: bool = True,
                     skip_corrupt: bool = False,
                     vocabulary: Optional[labels.LabelNames] = None,
                     compression: str = "auto") -> int:
    """Streams the CSV to a temporary file, renames it into place; returns
    the number of videos. With a vocabulary, also the top-5 TSV (made from
    the temporary CSV before the rename). Nothing is left behind on an error
    (or a kill: the next run removes the dead run's temporary files)."""
    if top_k < 1:
        raise UserError(f"--top_k: must be >= 1, got {top_k}")
    readers.resolve_files(data_pattern, "input_data_pattern")
    if vocabulary is not None and not overwrite:
        labels.refuse_existing_tsv(output_file)
    videos = 0
    with checkpoints.atomic_file(output_file, overwrite, "output_file") as tmp_path:
        with open(tmp_path, "w", newline="") as out:
            out.write(CSV_HEADER + "\n")
            for batch in predict.iterate_predictions(model, data_pattern, batch_size,
                                                     num_readers, skip_corrupt=skip_corrupt,
                                                     log=log, compression=compression):
                try:
                    out.writelines(format_lines(batch.ids, batch.predictions, top_k))
                except NonFiniteScoreError as err:
                    files = readers.resolve_files(data_pattern, "input_data_pattern")
                    raise err.naming(readers.file_of_video(files, err.video_id, compression),
                                     f"--output_file={output_file}") from None
                videos += len(batch.ids)
            out.flush()
            os.fsync(out.fileno())
        if videos == 0:
            raise UserError(f"--input_data_pattern={data_pattern}: the files hold no videos")
        if vocabulary is not None:
            labels.write_top_tsv(tmp_path, vocabulary, labels.tsv_path(output_file), overwrite)
    if log:
        log(f"wrote {output_file} ({videos} videos)")
        if vocabulary is not None:
            log(f"wrote {labels.tsv_path(output_file)} (the top {labels.TOP_N} labels "
                f"with names)")
    return videos


def shard_files(files: List[str], num_shards: int, shard_index: int) -> List[str]:
    """Every num_shards-th of the sorted files from shard_index on (a file is
    never split; the shards are disjoint and cover every file)."""
    if num_shards < 1:
        raise UserError(f"--num_shards: must be >= 1, got {num_shards}")
    if not 0 <= shard_index < num_shards:
        raise UserError(f"--shard_index: must be in [0, {num_shards}), got {shard_index}")
    return sorted(files)[shard_index::num_shards]


def _write_part(model, path: str, output_file: str, batch_size: int, top_k: int, run: str,
                skip_corrupt: bool, compression: str = "auto") -> int:
    """Writes the part of one input file (CSV, then its record); -> videos."""
    csv_path, record_path = merge.part_paths(output_file, path)
    videos = 0
    with checkpoints.atomic_file(csv_path, overwrite=True) as tmp_path:
        with open(tmp_path, "w", newline="") as out:
            for batch in predict.iterate_predictions(model, "", batch_size,
                                                     skip_corrupt=skip_corrupt, files=[path],
                                                     compression=compression):
                try:
                    out.writelines(format_lines(batch.ids, batch.predictions, top_k))
                except NonFiniteScoreError as err:
                    raise err.naming(path, csv_path) from None
                videos += len(batch.ids)
    merge.write_part_record(record_path, PartRecord(
        input=os.path.abspath(path), videos=videos, sha256=merge.file_digest(csv_path), run=run,
        num_classes=model.num_classes))
    return videos


def write_parts(model: predict.LoadedModel, files: List[str], output_file: str,
                batch_size: int, top_k: int, run: str, log: Optional[Log] = print,
                skip_corrupt: bool = False, compression: str = "auto") -> int:
    """The parts of `files` not done yet by this run (ensemble.merge); -> videos
    written. A part whose record names another run is redone."""
    os.makedirs(merge.parts_dir(output_file), exist_ok=True)
    total_bytes = sum(os.path.getsize(path) for path in files) or 1
    progress = Progress("MiB", total=total_bytes, units_per_count=1.0 / 2 ** 20)
    done_bytes = videos = done = 0
    try:
        for index, path in enumerate(files, start=1):
            csv_path, record_path = merge.part_paths(output_file, path)
            record = merge.read_part_record(record_path)
            if record is not None and record.run == run and os.path.isfile(csv_path):
                status = "done before"
            else:
                videos += _write_part(model, path, output_file, batch_size, top_k, run,
                                      skip_corrupt, compression)
                status = "written"
            done += 1
            done_bytes += os.path.getsize(path)
            if log:
                log(progress.line(done_bytes, f"[{index}/{len(files)}] "
                                              f"{os.path.basename(path)} {status}, "
                                              f"{videos} videos"))
    except Interrupted as interrupt:
        raise interrupt.noted(f"{done} of {len(files)} parts of this shard are done in "
                              f"{merge.parts_dir(output_file)}; run the same command to "
                              f"continue") from None
    return videos


def _refuse_existing(outputs) -> None:
    for flag, path in outputs:
        if path and os.path.exists(path):
            raise UserError(f"--{flag}={path}: exists; choose another or pass --overwrite")


def _check_run_flags(train_dir: str, input_model_tgz: str, output_model_tgz: str,
                     input_data_pattern: str, output_file: str, batch_size: int) -> None:
    if train_dir and input_model_tgz:
        raise UserError("--train_dir and --input_model_tgz: give one, not both")
    if not train_dir and not input_model_tgz:
        raise UserError("--train_dir or --input_model_tgz: required")
    if bool(input_data_pattern) != bool(output_file):
        raise UserError("--input_data_pattern and --output_file: give both (or neither, "
                        "to only write --output_model_tgz)")
    if not input_data_pattern and not output_model_tgz:
        raise UserError("--output_file: required (or --output_model_tgz)")
    if batch_size < 1:
        raise UserError(f"--batch_size: must be >= 1, got {batch_size}")
    if input_data_pattern:
        readers.resolve_files(input_data_pattern, "input_data_pattern")


def _read_label_names(label_names: str, output_file: str, num_shards: int,
                      overwrite: bool) -> Optional[labels.LabelNames]:
    """The vocabulary of --label_names (None without), checked before any work."""
    if not label_names:
        return None
    if not output_file:
        raise UserError(f"--label_names={label_names}: needs --input_data_pattern and "
                        f"--output_file (the TSV is made from the CSV)")
    vocabulary = labels.read_label_names(label_names)
    if not num_shards and not overwrite:
        labels.refuse_existing_tsv(output_file)
    return vocabulary


def _check_label_classes(vocabulary: Optional[labels.LabelNames], model_dir: str) -> None:
    """Every class of the model in model_dir has a name (from its
    model_flags.json, before the model is loaded; open_model reports a bad dir)."""
    if vocabulary is not None and os.path.isdir(model_dir):
        vocabulary.check_covers(members.read_member_flags(model_dir).num_classes)


def _check_input_records(model_dir: str, input_data_pattern: str, compression: str,
                         record_kind: Optional[str] = None) -> None:
    """Input records of a kind the model of model_dir cannot read (with
    record_kind: not of that kind) are refused before the model is loaded
    (members.check_dir_records; no labels needed)."""
    if input_data_pattern:
        files = readers.resolve_files(input_data_pattern, "input_data_pattern")
        members.check_dir_records(model_dir, files, "input_data_pattern",
                                  compression=compression, record_kind=record_kind)


@contextlib.contextmanager
def _output_lock(output_file: str, num_shards: int, shard_index: int) -> Iterator[None]:
    """Holds the lock of what this run writes (training.locks), from before
    the model loads: this shard's parts (<output_file>.parts/.shard-<i>-of-<n>.lock;
    the workers of other shards write beside it) or the CSV (lent to its
    atomic_file)."""
    if not output_file:
        yield
    elif num_shards:
        with locks.held(os.path.join(merge.parts_dir(output_file),
                                     f".shard-{shard_index}-of-{num_shards}.lock"),
                        f"--output_file={output_file} --shard_index={shard_index}",
                        "wait for it to finish or give another --shard_index"):
            yield
    else:
        with locks.held(locks.lock_file_for(output_file), f"--output_file={output_file}",
                        "wait for it to finish or choose another file", lend=True):
            try:
                yield
            except Interrupted as interrupt:
                raise interrupt.noted(f"nothing was written to --output_file={output_file}",
                                      replace=False) from None


# ---------------------------------------------------------------------------
# Command line


def run(train_dir: str = "", input_model_tgz: str = "", output_model_tgz: str = "",
        input_data_pattern: str = "", output_file: str = "", batch_size: int = 64,
        top_k: int = DEFAULT_TOP_K, num_readers: int = 1, seed: int = 2018,
        frame_sampling: Optional[str] = None, log: Optional[Log] = print, overwrite: bool = True,
        skip_corrupt: bool = False, bf16_compute: Optional[str] = None,
        num_shards: int = 0, shard_index: int = 0, num_threads: int = 0,
        label_names: str = "", compression: str = "auto",
        record_kind: Optional[str] = None) -> Optional[int]:
    """The command: returns the number of videos written (None without a CSV).
    overwrite=False refuses an existing output_file / output_model_tgz (the
    command line's default). num_shards > 0 writes this shard's parts instead
    of the CSV (ensemble.merge writes it). label_names: a vocabulary CSV, for
    the top-5 TSV beside the CSV (labels.tsv_path). record_kind: the records'
    layout when not the model's (another kind of its level)."""
    _check_run_flags(train_dir, input_model_tgz, output_model_tgz, input_data_pattern,
                     output_file, batch_size)
    vocabulary = _read_label_names(label_names, output_file, num_shards, overwrite)
    if num_shards:
        shard_files([], num_shards, shard_index)
    settings = {"top_k": top_k, "frame_sampling": frame_sampling, "seed": seed,
                "bf16_compute": bf16_compute, "batch_size": batch_size}

    def with_dir(model_dir: str) -> Optional[int]:
        _check_label_classes(vocabulary, model_dir)
        _check_input_records(model_dir, input_data_pattern, compression, record_kind)
        model = predict.open_model(model_dir, frame_sampling, seed, bf16_compute,
                                   num_threads=num_threads, record_kind=record_kind)
        try:
            if not overwrite:
                _refuse_existing((("output_model_tgz", output_model_tgz),
                                  ("output_file", "" if num_shards else output_file)))
            if log:
                log(f"loaded {model.kind} model from "
                    f"{input_model_tgz or model_dir} ({model.num_classes} classes)")
            if output_model_tgz:
                export.write_model_tgz(model, output_model_tgz, log, overwrite)
            if input_data_pattern and num_shards:
                files = shard_files(readers.resolve_files(input_data_pattern,
                                                          "input_data_pattern"),
                                    num_shards, shard_index)
                if vocabulary is not None and log:
                    log(f"--label_names={label_names}: checked; ensemble.merge "
                        f"--label_names writes the TSV")
                return write_parts(model, files, output_file, batch_size, top_k,
                                   merge.run_key(model.model_dir, settings), log, skip_corrupt,
                                   compression)
            if input_data_pattern:
                return write_submission(model, input_data_pattern, output_file, batch_size,
                                        top_k, num_readers, log, overwrite, skip_corrupt,
                                        vocabulary, compression)
            return None
        finally:
            model.close()

    with _output_lock(output_file, num_shards, shard_index):
        if input_model_tgz:
            with export.extracted_model_tgz(input_model_tgz) as model_dir:
                return with_dir(model_dir)
        return with_dir(train_dir)


def _segment_checks(model_dir: str):
    """(class ids, Scoring without its refine model, Refine or None) of the
    flags, the records and classes checked before the model is loaded."""
    frame_reader = model_builder.make_reader(members.read_member_flags(model_dir))
    class_ids = (segment_submission.read_label_ids(FLAGS.segment_label_ids_file,
                                                   frame_reader.num_classes)
                 if FLAGS.segment_label_ids_file else None)
    files = readers.resolve_files(FLAGS.input_data_pattern, "input_data_pattern")
    positions = segment_readers.resolve_positions(FLAGS.segment_positions, files,
                                                  FLAGS.compression)
    reader = segment_readers.SegmentReader.like(frame_reader, FLAGS.segment_size, rated=False,
                                                positions=positions,
                                                skip_unrated=FLAGS.skip_unrated_positions)
    readers.check_records(files, "input_data_pattern", reader, compression=FLAGS.compression,
                          reader_of=f"--segment_labels with the model of "
                                    f"{FLAGS.input_model_tgz or model_dir}",
                          kind_of=record_layouts.kind_of_record)
    refine = segment_refine.check(FLAGS.segment_refine_top_k, FLAGS.segment_refine_model_dir,
                                  model_dir, files, "input_data_pattern", FLAGS.compression)
    scoring = segment_submission.Scoring(positions, FLAGS.skip_unrated_positions,
                                         refine.top_k if refine else 0)
    return class_ids, scoring, refine


def _write_segments(model: predict.LoadedModel, class_ids, scoring, log) -> int:
    """The CSV (or with --num_shards this shard's part) of the open model."""
    if FLAGS.num_shards:
        segment_submission.write_segment_part(
            model, FLAGS.input_data_pattern, FLAGS.output_file, FLAGS.num_shards,
            FLAGS.shard_index, class_ids, FLAGS.segment_max_pred, FLAGS.segment_size,
            FLAGS.batch_size, log=log, compression=FLAGS.compression,
            settings={"frame_sampling": FLAGS.frame_sampling, "seed": FLAGS.seed,
                      "bf16_compute": FLAGS.bf16_compute}, scoring=scoring)
        return 0
    return segment_submission.write_segment_submission(
        model, FLAGS.input_data_pattern, FLAGS.output_file, class_ids,
        FLAGS.segment_max_pred, FLAGS.segment_size, FLAGS.batch_size, log=log,
        overwrite=FLAGS.overwrite, compression=FLAGS.compression, scoring=scoring)


def _scoring_line(scoring) -> str:
    """What will be scored, in one line."""
    what = ("every segment of each video" if scoring.positions == "every" else
            "the listed segments (segment_start_times)")
    if scoring.skip_unrated:
        what += f", without each video's first {segment_readers.UNRATED_HEAD} and last " \
                f"{segment_readers.UNRATED_TAIL} (unrated)"
    if scoring.refine_top_k:
        what += f", each under its video's top {scoring.refine_top_k} classes only"
    return f"scoring {what}"


def _segments_with_dir(model_dir: str) -> int:
    """--segment_labels with the model of model_dir (--train_dir, or the
    extracted --input_model_tgz): the records and classes checked before the
    model is loaded; also writes --output_model_tgz when given."""
    log = lambda line: print(line, flush=True)  # noqa: E731
    class_ids, scoring, refine = _segment_checks(model_dir)
    if not FLAGS.overwrite:
        _refuse_existing((("output_model_tgz", FLAGS.output_model_tgz),
                          ("output_file", "" if FLAGS.num_shards else FLAGS.output_file)))
    model = predict.open_model(model_dir, FLAGS.frame_sampling, FLAGS.seed, FLAGS.bf16_compute,
                               num_threads=FLAGS.num_threads)
    try:
        if FLAGS.output_model_tgz:
            export.write_model_tgz(model, FLAGS.output_model_tgz, log, FLAGS.overwrite)
        log(_scoring_line(scoring))
        if refine is None:
            return _write_segments(model, class_ids, scoring, log)
        with segment_refine.opened(refine, model, FLAGS.frame_sampling, FLAGS.seed,
                                   FLAGS.bf16_compute, FLAGS.num_threads) as refiner:
            scoring = dataclasses.replace(scoring, refine_model=None if refiner is model
                                          else refiner)
            return _write_segments(model, class_ids, scoring, log)
    finally:
        model.close()


def run_segments() -> int:
    """--segment_labels: the 2019 submission of --train_dir or --input_model_tgz
    on --input_data_pattern (with --num_shards: this shard's part;
    ensemble.segment_submission --merge_output_file writes the CSV);
    --output_model_tgz also writes the upload. --label_names is refused (its
    TSV is of video-level lines)."""
    if FLAGS.label_names:
        raise UserError("--label_names: writes the top-5 TSV of a video-level CSV; not "
                        "supported with --segment_labels")
    _check_run_flags(FLAGS.train_dir, FLAGS.input_model_tgz, FLAGS.output_model_tgz,
                     FLAGS.input_data_pattern, FLAGS.output_file, FLAGS.batch_size)
    shared_flags.require(input_data_pattern=FLAGS.input_data_pattern,
                         output_file=FLAGS.output_file)
    if FLAGS.num_shards:
        shard_files([], FLAGS.num_shards, FLAGS.shard_index)
    with _output_lock(FLAGS.output_file, FLAGS.num_shards, FLAGS.shard_index):
        if FLAGS.input_model_tgz:
            with export.extracted_model_tgz(FLAGS.input_model_tgz) as model_dir:
                return _segments_with_dir(model_dir)
        return _segments_with_dir(FLAGS.train_dir)


def _refuse_segment_flags() -> None:
    """The segment flags without --segment_labels: one line, not ignored."""
    for flag, value in (("segment_positions", FLAGS.segment_positions != "auto"),
                        ("skip_unrated_positions", FLAGS.skip_unrated_positions),
                        ("segment_refine_top_k", FLAGS.segment_refine_top_k),
                        ("segment_refine_model_dir", FLAGS.segment_refine_model_dir)):
        if value:
            raise UserError(f"--{flag}: applies to the 2019 segment submission; needs "
                            f"--segment_labels")


def _records_kind() -> Optional[str]:
    """The --record_kind (or --segment_labels) of the records; None: the
    model's own (--train_dir's model_flags.json; an upload's is read when
    it is extracted)."""
    flags_file = os.path.join(FLAGS.train_dir, checkpoints.MODEL_FLAGS_FILE)
    own = (members.read_member_flags(FLAGS.train_dir).layout()
           if FLAGS.train_dir and os.path.isfile(flags_file) else "")
    kind = record_layouts.asked_kind(FLAGS.record_kind, own, {
        "segment_labels": record_layouts.SEGMENT if FLAGS.segment_labels else None})
    return None if kind in ("", own) and kind != record_layouts.SEGMENT else kind


def main(argv) -> None:
    del argv
    record_kind = _records_kind()
    if record_kind == record_layouts.SEGMENT:
        run_segments()
        return
    _refuse_segment_flags()
    run(FLAGS.train_dir, FLAGS.input_model_tgz, FLAGS.output_model_tgz,
        FLAGS.input_data_pattern, FLAGS.output_file, FLAGS.batch_size, FLAGS.top_k,
        FLAGS.num_readers, FLAGS.seed, FLAGS.frame_sampling,
        log=lambda line: print(line, flush=True), overwrite=FLAGS.overwrite,
        skip_corrupt=FLAGS.skip_corrupt_records, bf16_compute=FLAGS.bf16_compute,
        num_shards=FLAGS.num_shards, shard_index=FLAGS.shard_index,
        num_threads=FLAGS.num_threads, label_names=FLAGS.label_names,
        compression=FLAGS.compression, record_kind=record_kind)


if __name__ == "__main__":
    define_flags()
    run_main(main)
