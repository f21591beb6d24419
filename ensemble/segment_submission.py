"""The 2019 segment submission (docs/formats.md 3.5): write it, check it.

``ensemble.inference --segment_labels`` scores every segment of the 2019
records (each distinct ``segment_start_times`` entry of a video, read by
training.segment_readers) with the model and writes, for each class of
``--segment_label_ids_file`` (the starter's ``segment_label_ids.csv``: a
header ``Index``, one class id a line; none: every class of the model), the
``--segment_max_pred`` best segments by descending score:
``Class,Segments`` then ``<class>,<vid>:<start> <vid>:<start> ...``.
Streaming: memory holds per class at most 2 x max_pred (score, segment
number) pairs plus one "vid:start" string per segment seen, never the
[segments, classes] scores.

``python -m ensemble.segment_submission --submission=S.csv`` checks a file:
the header; each line ``<class>,<entries>``; a class once, in the whitelist
when given; entries ``<id>:<start>`` with start a multiple of
--segment_size, none twice in a class, at most --segment_max_pred.
"""
from __future__ import annotations

import os
import re
from typing import List, Optional

import numpy as np
from absl import flags

from ensemble import merge
from training import checkpoints, paths, predict, readers
from training import flags as shared_flags
from training.cli import UserError, excerpt, first_line, run_main
from training.progress import Log

FLAGS = flags.FLAGS

SEGMENT_HEADER = "Class,Segments"
_ENTRY = re.compile(r"[^\s:,]+:(\d+)")


def read_label_ids(path: str, num_classes: int) -> np.ndarray:
    """The class ids of a segment_label_ids.csv (header ``Index``), sorted."""
    try:
        with open(path) as handle:
            lines = [line.strip() for line in handle if line.strip()]
    except OSError as err:
        raise UserError(f"--segment_label_ids_file={path}: cannot read ({err.strerror})") from None
    if not lines or lines[0] != "Index":
        raise UserError(f"--segment_label_ids_file={path}: the first line must be 'Index'")
    ids = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.isdigit() or int(line) >= num_classes:
            raise UserError(f"--segment_label_ids_file={path}:{number}: expected a class id "
                            f"in 0..{num_classes - 1}, got {excerpt(line)}")
        ids.append(int(line))
    if not ids or len(set(ids)) != len(ids):
        raise UserError(f"--segment_label_ids_file={path}: no class ids, or one twice")
    return np.asarray(sorted(ids), dtype=np.int64)


class ClassTopK:
    """Per class, the max_pred best (score, segment number) pairs seen so far.

    New pairs above a class's current floor are buffered and cut back to
    max_pred once the buffer exceeds max_pred, so the work is amortised and
    memory stays under 2 x max_pred pairs per class. Ties keep the segment
    seen first (stable order on segment number).
    """

    def __init__(self, num_kept: int, max_pred: int):
        self.max_pred = int(max_pred)
        self.scores = [np.empty(0, np.float32) for _ in range(num_kept)]
        self.numbers = [np.empty(0, np.int64) for _ in range(num_kept)]
        self.floor = np.full(num_kept, -np.inf, np.float32)

    def add(self, scores: np.ndarray, first_number: int) -> None:
        """scores [S, num_kept] of segments first_number .. first_number + S - 1."""
        numbers = np.arange(first_number, first_number + scores.shape[0], dtype=np.int64)
        above = scores > self.floor[None, :]
        for j in np.flatnonzero(above.any(axis=0)):
            rows = np.flatnonzero(above[:, j])
            self.scores[j] = np.concatenate([self.scores[j], scores[rows, j]])
            self.numbers[j] = np.concatenate([self.numbers[j], numbers[rows]])
            if self.scores[j].size > 2 * self.max_pred:
                self._cut(j)

    def _cut(self, j: int) -> None:
        order = np.lexsort((self.numbers[j], -self.scores[j]))[:self.max_pred]
        self.scores[j], self.numbers[j] = self.scores[j][order], self.numbers[j][order]
        if self.scores[j].size == self.max_pred:
            # Strictly above: a later segment with the floor's score loses the tie.
            self.floor[j] = self.scores[j][-1]

    def ranked(self, j: int) -> np.ndarray:
        """Segment numbers of class j, best first."""
        self._cut(j)
        return self.numbers[j]


def _distinct_segments(batch: predict.Batch):
    """Rows of a SegmentReader batch with a new (video, start): a segment rated
    for several classes is one segment of the submission."""
    keys = [f"{vid.decode()}:{int(start)}"
            for vid, start in zip(batch.ids, batch.inputs["start_time"])]
    first = {}
    for row, key in enumerate(keys):
        first.setdefault(key, row)
    rows = np.fromiter(first.values(), dtype=np.int64)
    return rows, list(first)


_FILE_SHIFT = 32     # a segment's number: its file's index << 32 | its place in the file


def collect_top(model: predict.LoadedModel, files: List[str], indices: List[int],
                class_ids: np.ndarray, max_pred: int, segment_size: int = 5,
                batch_size: int = 64, log: Optional[Log] = print, compression: str = "auto",
                padded: Optional[bool] = None):
    """(ClassTopK, {segment number: "vid:start"}) of files, one after the other.
    padded: predict.segment_reader's (None: as the model's graph allows).

    A segment's number is its file's index in the sorted input (indices) and
    its place in the file: ties go to the segment first in the whole input,
    whichever shard read it, so merged parts equal one process's CSV."""
    if max_pred < 1:
        raise UserError(f"--segment_max_pred: must be >= 1, got {max_pred}")
    reader = predict.segment_reader(model, segment_size, rated=False, padded=padded)
    top, names = ClassTopK(class_ids.size, max_pred), {}
    for path, index in zip(files, indices):
        place = 0
        for batch in predict.iterate_predictions(
                model, "", max(1, batch_size // 5), flag_name="input_data_pattern",
                reader=reader, log=log, compression=compression, unit="segments",
                files=[path]):
            rows, keys = _distinct_segments(batch)
            first = (index << _FILE_SHIFT) + place
            top.add(batch.predictions[rows][:, class_ids].astype(np.float32), first)
            names.update(zip(range(first, first + len(keys)), keys))
            place += len(keys)
    return top, names


def _write_csv(output_file: str, class_ids: np.ndarray, ranked, overwrite: bool) -> None:
    """The CSV through a temporary file; ranked(j) -> class j's entries, best first."""
    with checkpoints.atomic_file(output_file, overwrite, "output_file") as tmp_path:
        with open(tmp_path, "w", newline="") as out:
            out.write(SEGMENT_HEADER + "\n")
            for j, class_id in enumerate(class_ids):
                out.write(f"{int(class_id)},{' '.join(ranked(j))}\n")
            out.flush()
            os.fsync(out.fileno())


def write_segment_submission(model: predict.LoadedModel, data_pattern: str, output_file: str,
                             class_ids: Optional[np.ndarray] = None, max_pred: int = 100000,
                             segment_size: int = 5, batch_size: int = 64,
                             log: Optional[Log] = print, overwrite: bool = True,
                             compression: str = "auto", padded: Optional[bool] = None) -> int:
    """Streams every segment through the model, keeps the per-class top
    max_pred, writes the CSV atomically; returns the number of segments."""
    class_ids = np.arange(model.num_classes) if class_ids is None else class_ids
    files = readers.resolve_files(data_pattern, "input_data_pattern")
    top, names = collect_top(model, files, list(range(len(files))), class_ids, max_pred,
                             segment_size, batch_size, log, compression, padded)
    if not names:
        raise UserError(f"--input_data_pattern={data_pattern}: the files hold no segments")
    _write_csv(output_file, class_ids,
               lambda j: (names[n] for n in top.ranked(j)), overwrite)
    if log:
        log(f"wrote {output_file} ({class_ids.size} classes, {len(names)} segments, "
            f"at most {max_pred} a class)")
    return len(names)


def part_path(output_file: str, num_shards: int, shard_index: int) -> str:
    return os.path.join(merge.parts_dir(output_file),
                        f"segments-{shard_index:05d}-of-{num_shards:05d}.npz")


def write_segment_part(model: predict.LoadedModel, data_pattern: str, output_file: str,
                       num_shards: int, shard_index: int,
                       class_ids: Optional[np.ndarray] = None, max_pred: int = 100000,
                       segment_size: int = 5, batch_size: int = 64, log: Optional[Log] = print,
                       compression: str = "auto", settings: Optional[dict] = None) -> str:
    """This shard's per-class top max_pred (every num_shards-th sorted file, as
    ensemble.inference shards) to part_path; merge_segment_parts writes the CSV.
    The part's provenance: its shard, the whole sorted input and the run key
    (merge.run_key of the model's files, settings -- frame sampling, seed,
    bf16 mode -- and the segment size, max_pred and classes)."""
    class_ids = np.arange(model.num_classes) if class_ids is None else class_ids
    files = readers.resolve_files(data_pattern, "input_data_pattern")
    indices = list(range(shard_index, len(files), num_shards))
    top, names = collect_top(model, [files[i] for i in indices], indices, class_ids,
                             max_pred, segment_size, batch_size, log, compression)
    ranked = [top.ranked(j) for j in range(class_ids.size)]
    run = merge.run_key(model.model_dir, {**(settings or {}), "segment_size": segment_size,
                                          "max_pred": max_pred,
                                          "class_ids": [int(c) for c in class_ids]})
    path = part_path(output_file, num_shards, shard_index)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with checkpoints.atomic_file(path, True, "output_file") as tmp_path:
        with open(tmp_path, "wb") as out:
            np.savez(out, class_ids=class_ids, max_pred=max_pred,
                     counts=np.array([r.size for r in ranked], np.int64),
                     numbers=np.concatenate(ranked).astype(np.int64),
                     scores=np.concatenate([top.scores[j] for j in range(class_ids.size)]),
                     names=np.array([names[n] for r in ranked for n in r], dtype=object
                                    ).astype(str),
                     run=np.array(run), num_shards=num_shards, shard_index=shard_index,
                     inputs=np.array([os.path.abspath(f) for f in files]))
    if log:
        log(f"wrote {path} ({len(names)} segments of {len(indices)} files)")
    return path


_PART_NAME = re.compile(r"segments-(\d+)-of-(\d+)\.npz")


def _read_part(path: str, num_shards: int, shard: int) -> dict:
    """One part, its provenance checked against its name (a copied or renamed
    part is a duplicate shard)."""
    try:
        with np.load(path) as part:
            loaded = {key: part[key] for key in part.files}
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: missing or unreadable part ({first_line(err)}); run shard "
                        f"{shard} of --num_shards={num_shards} again") from None
    if not {"run", "num_shards", "shard_index", "inputs"} <= set(loaded):
        raise UserError(f"{path}: no provenance (written by an earlier version); run shard "
                        f"{shard} of --num_shards={num_shards} again")
    held = (int(loaded["shard_index"]), int(loaded["num_shards"]))
    if held != (shard, num_shards):
        raise UserError(f"{path}: holds shard {held[0]} of {held[1]}, not shard {shard} of "
                        f"{num_shards} (copied or renamed?); run shard {shard} again")
    return loaded


def _check_parts(output_file: str, num_shards: int, parts: List[dict]) -> None:
    """Every part of one run on one input: the first part that differs from
    part 0 is named; so is a part of another --num_shards in the dir."""
    directory = merge.parts_dir(output_file)
    for name in sorted(os.listdir(directory)):
        match = _PART_NAME.fullmatch(name)
        if match and int(match.group(2)) != num_shards:
            raise UserError(f"{os.path.join(directory, name)}: a part of a run with "
                            f"--num_shards={int(match.group(2))}, not {num_shards}; remove it")
    first = part_path(output_file, num_shards, 0)
    for shard, part in enumerate(parts[1:], start=1):
        path = part_path(output_file, num_shards, shard)
        if str(part["run"]) != str(parts[0]["run"]):
            raise UserError(f"{path}: written by another run than {first} (another model, "
                            f"or other flags: classes, --segment_max_pred, --segment_size, "
                            f"sampling); run shard {shard} again")
        if not np.array_equal(part["inputs"], parts[0]["inputs"]):
            raise UserError(f"{path}: read other input files than {first} (another "
                            f"--input_data_pattern); run shard {shard} again")


def merge_segment_parts(output_file: str, num_shards: int, overwrite: bool = True,
                        log: Optional[Log] = print) -> int:
    """The CSV of all num_shards parts: per class the best max_pred of the
    parts' lists by (score descending, segment number): exactly one process's
    CSV. Refuses, in one line naming the part, a missing shard, a part whose
    provenance does not match its name, and parts of different runs or
    inputs. Returns the number of classes."""
    if num_shards < 1:
        raise UserError(f"--num_shards: must be >= 1, got {num_shards}")
    parts = [_read_part(part_path(output_file, num_shards, shard), num_shards, shard)
             for shard in range(num_shards)]
    _check_parts(output_file, num_shards, parts)
    class_ids, max_pred = parts[0]["class_ids"], int(parts[0]["max_pred"])
    splits = [np.concatenate([[0], np.cumsum(p["counts"])]) for p in parts]

    def ranked(j: int):
        rows = [(p, slice(s[j], s[j + 1])) for p, s in zip(parts, splits)]
        scores = np.concatenate([p["scores"][r] for p, r in rows])
        numbers = np.concatenate([p["numbers"][r] for p, r in rows])
        names = np.concatenate([p["names"][r] for p, r in rows])
        return names[np.lexsort((numbers, -scores))[:max_pred]]

    _write_csv(output_file, class_ids, ranked, overwrite)
    if log:
        log(f"wrote {output_file} from {num_shards} parts ({class_ids.size} classes)")
    return int(class_ids.size)


def _check_line(where: str, line: str, seen: set, allowed, max_pred: int,
                segment_size: int) -> None:
    head, _, body = line.partition(",")
    if not head.isdigit() or not _:
        raise UserError(f"{where}: expected '<class>,<vid>:<start> ...', got {excerpt(line)}")
    if int(head) in seen or (allowed is not None and int(head) not in allowed):
        raise UserError(f"{where}: class {head} twice, or not in the class ids")
    seen.add(int(head))
    entries = body.split(" ") if body else []
    if len(entries) > max_pred or len(set(entries)) != len(entries):
        raise UserError(f"{where}: {len(entries)} entries ({len(set(entries))} distinct); "
                        f"at most {max_pred}, none twice")
    for entry in entries:
        match = _ENTRY.fullmatch(entry)
        if not match or int(match.group(1)) % segment_size:
            raise UserError(f"{where}: entry {excerpt(entry)} is not '<vid>:<start>' with "
                            f"start a multiple of {segment_size}")


def check_segment_submission(path: str, class_ids: Optional[np.ndarray] = None,
                             max_pred: int = 100000, segment_size: int = 5) -> int:
    """Checks a segment submission (module docstring); returns its classes."""
    allowed = None if class_ids is None else {int(c) for c in class_ids}
    seen: set = set()
    try:
        with open(path, newline="") as handle:
            header = handle.readline().rstrip("\n")
            if header != SEGMENT_HEADER:
                raise UserError(f"{path}:1: expected the header '{SEGMENT_HEADER}', got "
                                f"{excerpt(header)}")
            for number, line in enumerate(handle, start=2):
                _check_line(f"{path}:{number}", line.rstrip("\n"), seen, allowed, max_pred,
                            segment_size)
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    if allowed is not None and seen != allowed:
        raise UserError(f"{path}: {len(allowed - seen)} classes of the class ids missing")
    return len(seen)


def define_flags() -> None:
    shared_flags.define(flags.DEFINE_string, "submission", "", "The segment CSV to check.",
                        path=paths.IN_FILE)
    shared_flags.define(flags.DEFINE_string, "segment_label_ids_file", "", "Its classes "
                        "(header Index); none: any.", path=paths.IN_FILE)
    shared_flags.define_shared_flags({"num_classes": 3862})
    shared_flags.define(flags.DEFINE_integer, "segment_max_pred", 100000, "Most entries a class.")
    shared_flags.define(flags.DEFINE_integer, "segment_size", 5, "Frames per segment.")
    shared_flags.define(flags.DEFINE_string, "merge_output_file", "", "Instead of checking: "
                        "merge the --num_shards parts of ensemble.inference --segment_labels "
                        "--output_file=<this> into it (then checked).", path=paths.OUT_FILE)
    shared_flags.define(flags.DEFINE_integer, "num_shards", 0, "The parts' --num_shards.")


def main(argv) -> None:
    del argv
    if FLAGS.merge_output_file:
        shared_flags.require(num_shards=FLAGS.num_shards or "")
        merge_segment_parts(FLAGS.merge_output_file, FLAGS.num_shards)
        FLAGS.submission = FLAGS.merge_output_file
    shared_flags.require(submission=FLAGS.submission)
    ids = (read_label_ids(FLAGS.segment_label_ids_file, FLAGS.num_classes)
           if FLAGS.segment_label_ids_file else None)
    classes = check_segment_submission(FLAGS.submission, ids, FLAGS.segment_max_pred,
                                       FLAGS.segment_size)
    print(f"ok: {classes} classes")


if __name__ == "__main__":
    define_flags()
    run_main(main)
