"""Merges the parts of a sharded inference into the submission CSV:
python -m ensemble.merge --input_data_pattern='test*.tfrecord' --output_file=S.csv

``ensemble.inference --num_shards=P --shard_index=i`` writes, for each input
file F of its shard, the part ``S.csv.parts/<F's name>.csv`` (the CSV lines of
F's videos, no header) and its record ``<F's name>.json`` (the input file,
its video count, the part's sha256, the model's num_classes and the run key:
a digest of the model and --top_k). This command writes the CSV once,
atomically: the header, then every part in sorted input order; with
--label_names also the top-5 TSV of ensemble.labels, from the same CSV. It
refuses, with one line, a missing part, a part whose content or run key does
not match (another model or --top_k), a part for a file outside
--input_data_pattern, and a video id seen twice.
``--progress`` prints how far the parts are instead (done of the total,
the videos estimated from the file sizes).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from typing import List, Optional, Tuple

from absl import flags

from ensemble import labels
from training import checkpoints, readers, stage_files, submission
from training import flags as shared_flags
from training.cli import UserError, run_main
from training.progress import format_seconds
from training.stage_files import PartRecord

FLAGS = flags.FLAGS

PARTS_SUFFIX = ".parts"
PART_CSV = ".csv"
PART_RECORD = ".json"


def define_flags() -> None:
    shared_flags.define_shared_flags({
        "input_data_pattern": ("", "(the files the sharded inference read)"),
        "output_file": ("", "The submission CSV (its parts are in <output_file>.parts/)."),
        "overwrite": False})
    shared_flags.define(flags.DEFINE_bool, "progress", False, "Print how many of the parts "
                        "are done (and the estimated videos) instead of merging.")
    shared_flags.define(flags.DEFINE_float, "started_at", 0.0, "With --progress: when the "
                        "run started (epoch seconds), for the rate and the ETA.")
    shared_flags.define_shared("label_names", "")


def parts_dir(output_file: str) -> str:
    return os.path.abspath(output_file) + PARTS_SUFFIX


def part_paths(output_file: str, input_file: str) -> Tuple[str, str]:
    """(part CSV, part record) of one input file."""
    base = os.path.join(parts_dir(output_file), os.path.basename(input_file))
    return base + PART_CSV, base + PART_RECORD


def file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_key(model_dir: str, settings: dict) -> str:
    """A digest of what decides a part's content: the model's files (meta
    graph, checkpoint index, model_flags.json) and the settings (top_k,
    frame sampling, seed, bf16 mode; for segment parts also segment size,
    max_pred and classes). Parts of different runs refuse to merge."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8"))
    names = sorted(name for name in os.listdir(model_dir)
                   if name.endswith((".index", ".meta", checkpoints.MODEL_FLAGS_FILE)))
    for name in names:
        digest.update(name.encode("utf-8"))
        digest.update(file_digest(os.path.join(model_dir, name)).encode("ascii"))
    return digest.hexdigest()


def read_part_record(record_path: str) -> Optional[PartRecord]:
    """The record of a finished part, or None when the part is not done."""
    if not os.path.isfile(record_path):
        return None
    try:
        return stage_files.read_record(PartRecord, record_path)
    except UserError as err:
        detail = str(err)[len(record_path) + 2:] if str(err).startswith(record_path) else err
        raise UserError(f"{record_path}: not a part record of ensemble.inference "
                        f"({detail})") from None


def write_part_record(record_path: str, record: PartRecord) -> None:
    stage_files.write_record(record_path, record)


def _check_part(input_file: str, output_file: str, run: Optional[str]) -> PartRecord:
    csv_path, record_path = part_paths(output_file, input_file)
    record = read_part_record(record_path)
    if record is None or not os.path.isfile(csv_path):
        raise UserError(f"{csv_path}: missing; the part of {input_file} is not done (rerun "
                        f"the sharded inference)")
    if os.path.basename(record.input) != os.path.basename(input_file):
        raise UserError(f"{record_path}: is the part of {record.input}, not of {input_file}")
    if run is not None and record.run != run:
        raise UserError(f"{record_path}: written by another run (another model or --top_k: "
                        f"run key {record.run[:12]} vs {run[:12]}); remove "
                        f"{parts_dir(output_file)} or rerun")
    if file_digest(csv_path) != record.sha256:
        raise UserError(f"{csv_path}: its content does not match {record_path} (damaged?)")
    return record


def _check_no_foreign_parts(input_files: List[str], output_file: str) -> None:
    wanted = {os.path.basename(path) + suffix for path in input_files
              for suffix in (PART_CSV, PART_RECORD)}
    directory = parts_dir(output_file)
    for name in sorted(os.listdir(directory)):
        if not name.startswith(".") and name not in wanted:
            raise UserError(f"{os.path.join(directory, name)}: a part of a file outside "
                            f"--input_data_pattern; remove it or give the pattern it was "
                            f"made from")


def _check_vocabulary(vocabulary: labels.LabelNames, input_files: List[str],
                      output_file: str, overwrite: bool) -> None:
    """Before any part is read: no TSV in the way, and a name for every class
    of the model (its num_classes in the first part's record). Records of
    older runs lack num_classes: then only the labels of the TSV are checked
    as it is written (still before the CSV is in place)."""
    if not overwrite:
        labels.refuse_existing_tsv(output_file)
    record = read_part_record(part_paths(output_file, input_files[0])[1])
    if record is not None and record.num_classes is not None:
        vocabulary.check_covers(record.num_classes)


def merge(input_files: List[str], output_file: str, overwrite: bool = False,
          vocabulary: Optional[labels.LabelNames] = None) -> int:
    """Writes the CSV from the parts of input_files; returns the video count.
    With a vocabulary, also the top-5 TSV (labels.tsv_path), made from the
    temporary CSV before its rename: an error leaves neither file."""
    if not os.path.isdir(parts_dir(output_file)):
        raise UserError(f"--output_file={output_file}: no parts ({parts_dir(output_file)} "
                        f"missing); run ensemble.inference --num_shards first")
    if vocabulary is not None:
        _check_vocabulary(vocabulary, input_files, output_file, overwrite)
    _check_no_foreign_parts(input_files, output_file)
    run = _check_part(input_files[0], output_file, None).run
    for path in input_files[1:]:
        _check_part(path, output_file, run)
    seen, videos = set(), 0
    with checkpoints.atomic_file(output_file, overwrite, "output_file") as tmp_path:
        with open(tmp_path, "w", newline="") as out:
            out.write(submission.CSV_HEADER + "\n")
            for path in input_files:
                csv_path, _ = part_paths(output_file, path)
                with open(csv_path, newline="") as part:
                    for line in part:
                        video = line.split(",", 1)[0]
                        if video in seen:
                            raise UserError(f"{csv_path}: video {video} is also in an earlier "
                                            f"part (a file given twice?)")
                        seen.add(video)
                        out.write(line)
                        videos += 1
            out.flush()
            os.fsync(out.fileno())
        if vocabulary is not None:
            labels.write_top_tsv(tmp_path, vocabulary, labels.tsv_path(output_file), overwrite)
    return videos


def progress(input_files: List[str], output_file: str, started_at: float = 0.0) -> str:
    """One line: parts and videos done of the total (estimated from the file
    sizes), and with started_at (epoch seconds) the rate since then and the ETA."""
    done_files = done_videos = done_bytes = new_videos = 0
    total_bytes = sum(os.path.getsize(path) for path in input_files)
    for path in input_files:
        record_path = part_paths(output_file, path)[1]
        record = read_part_record(record_path)
        if record is not None:
            done_files += 1
            done_videos += record.videos
            done_bytes += os.path.getsize(path)
            if started_at and os.path.getmtime(record_path) >= started_at:
                new_videos += record.videos
    total = done_videos * total_bytes / done_bytes if done_bytes else None
    head = (f"{done_files}/{len(input_files)} files done, {done_videos:,} of about "
            f"{'?' if total is None else f'{total:,.0f}'} videos (total estimated from the "
            f"file sizes)")
    if not started_at or not new_videos or total is None:
        return head
    rate = new_videos / max(time.time() - started_at, 1e-9)
    remaining = (total - done_videos) / rate
    return f"{head} | {rate:.1f} videos/sec | ETA {format_seconds(remaining)}"


def main(argv) -> None:
    del argv
    shared_flags.require(input_data_pattern=FLAGS.input_data_pattern,
                         output_file=FLAGS.output_file)
    files = readers.resolve_files(FLAGS.input_data_pattern, "input_data_pattern")
    if FLAGS.progress:
        print(progress(files, FLAGS.output_file, FLAGS.started_at), flush=True)
        return
    vocabulary = labels.read_label_names(FLAGS.label_names) if FLAGS.label_names else None
    videos = merge(files, FLAGS.output_file, FLAGS.overwrite, vocabulary)
    print(f"wrote {FLAGS.output_file}: {videos} videos from {len(files)} parts", flush=True)
    if vocabulary is not None:
        print(f"wrote {labels.tsv_path(FLAGS.output_file)} (the top {labels.TOP_N} labels "
              f"with names)", flush=True)


if __name__ == "__main__":
    define_flags()
    run_main(main)
