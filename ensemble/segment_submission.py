"""The 2019 segment submission (docs/formats.md 3.5): write it, check it.

``ensemble.inference --segment_labels`` scores the segments of the 2019
records (read by training.segment_readers: the listed ones, each distinct
``segment_start_times`` entry of a video, or every 5-frame segment of every
video, as for the test split; Scoring) with the model and writes, for each
class of ``--segment_label_ids_file`` (the starter's
``segment_label_ids.csv``: a header ``Index``, one class id a line; none:
every class of the model), the ``--segment_max_pred`` best segments by
descending score: ``Class,Segments`` then ``<class>,<vid>:<start> ...``;
with refinement (training.segment_refine) a segment only under its video's
top classes. Streaming, memory bounded by the classes and max_pred, not the
number of segments: per class at most 2 x max_pred (score, segment number)
pairs (ClassTopK, 12 bytes a pair), and the "vid:start" names of the
segments some class still holds (SegmentNames: at most classes x 2 x
max_pred + PRUNE_MIN + one batch, 8 + W bytes a name); never the
[segments, classes] scores.

``python -m ensemble.segment_submission --submission=S.csv`` checks a file:
the header; each line ``<class>,<entries>``; a class once, in the whitelist
when given; entries ``<id>:<start>`` with start a multiple of
--segment_size, none twice in a class, at most --segment_max_pred.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
from absl import flags

from ensemble import merge
from training import checkpoints, paths, predict, readers, segment_refine
from training import flags as shared_flags
from training.cli import UserError, excerpt, first_line, run_main
from training.progress import Log
from training.stage_files import SegmentPart

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
    memory stays under 2 x max_pred pairs per class (12 bytes a pair:
    float32 score, int64 number). Ties keep the segment seen first (stable
    order on segment number).
    """

    def __init__(self, num_kept: int, max_pred: int):
        self.max_pred = int(max_pred)
        self.scores = [np.empty(0, np.float32) for _ in range(num_kept)]
        self.numbers = [np.empty(0, np.int64) for _ in range(num_kept)]
        self.floor = np.full(num_kept, -np.inf, np.float32)

    def add(self, scores: np.ndarray, first_number: int) -> None:
        """scores [S, num_kept] of segments first_number .. first_number + S - 1
        (-inf: the segment is not listed for that class)."""
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

    def held(self) -> np.ndarray:
        """The distinct segment numbers some class may still list (sorted),
        each class first cut to its max_pred: at most classes x max_pred."""
        for j in range(len(self.numbers)):
            if self.numbers[j].size > self.max_pred:
                self._cut(j)
        return np.unique(np.concatenate([np.empty(0, np.int64), *self.numbers]))

    def pairs(self) -> int:
        return sum(numbers.size for numbers in self.numbers)


# Names kept before SegmentNames prunes at all (64 KiB of them): a prune
# costs a pass over the pairs of every class, so it waits for this many.
PRUNE_MIN = 4096


class SegmentNames:
    """The "vid:start" of segment numbers, only while some class holds them.

    Numbers come in increasing order (collect_top numbers the segments in
    input order). ``prune(held)`` keeps the names of `held` only; collect_top
    calls it when the names have doubled since the last prune (and passed
    min_prune), so at most max(2 x held, min_prune) + one batch names are
    kept, held <= classes x max_pred: whatever the number of segments.
    8 + W bytes a name (int64 number, W = the longest "vid:start" in
    UTF-8, 8 for 2019's 4-character ids), in numpy arrays.
    """

    def __init__(self, min_prune: int = PRUNE_MIN):
        self.numbers: np.ndarray = np.empty(0, np.int64)
        self.names: np.ndarray = np.empty(0, "S1")
        self.min_prune, self.limit = int(min_prune), int(min_prune)
        self._chunks: list = []
        self.seen = 0

    def add(self, first_number: int, keys: List[str]) -> None:
        """The names of segments first_number .. first_number + len(keys) - 1."""
        self._chunks.append((np.arange(first_number, first_number + len(keys), dtype=np.int64),
                             np.array([key.encode("utf-8") for key in keys], dtype=bytes)))
        self.seen += len(keys)

    def __len__(self) -> int:
        return self.numbers.size + sum(chunk[0].size for chunk in self._chunks)

    def _consolidate(self) -> None:
        if self._chunks:
            self.numbers = np.concatenate([self.numbers, *(c[0] for c in self._chunks)])
            self.names = np.concatenate([self.names, *(c[1] for c in self._chunks)])
            self._chunks = []

    def due(self) -> bool:
        """Whether the names have doubled since the last prune (and passed min_prune)."""
        return len(self) > self.limit

    def prune(self, held: np.ndarray) -> None:
        """Keeps the names of the numbers in held (sorted) only."""
        self._consolidate()
        keep = np.isin(self.numbers, held, assume_unique=True)
        self.numbers, self.names = self.numbers[keep], self.names[keep]
        self.limit = max(2 * self.numbers.size, self.min_prune)

    def lookup(self, numbers: np.ndarray) -> List[str]:
        """The names of these numbers (each held since it was added)."""
        self._consolidate()
        rows = np.searchsorted(self.numbers, numbers)
        return [name.decode("utf-8") for name in self.names[rows]]

    def nbytes(self) -> int:
        self._consolidate()
        return int(self.numbers.nbytes + self.names.nbytes)


@dataclass(frozen=True)
class Scoring:
    """Which segments are scored and for which classes: positions ("listed":
    segment_start_times; "every": every segment, training.segment_readers),
    skip_unrated (a video's first 6 and last 2 positions left out) and the
    video-level refinement (training.segment_refine): refine_top_k > 0 lists
    a segment only under its video's top refine_top_k classes of
    refine_model (None: the model being run)."""
    positions: str = "listed"
    skip_unrated: bool = False
    refine_top_k: int = 0
    refine_model: Optional[predict.LoadedModel] = None

    def run_settings(self) -> dict:
        """What the sharded parts' run key records of it."""
        settings: dict = {"segment_positions": self.positions,
                          "skip_unrated_positions": self.skip_unrated}
        if self.refine_top_k:
            model = (segment_refine.SELF if self.refine_model is None
                     else merge.run_key(self.refine_model.model_dir, {}))
            settings["segment_refine"] = {"top_k": self.refine_top_k, "model": model}
        return settings


def _distinct_segments(batch: predict.Batch) -> Tuple[np.ndarray, List[str]]:
    """Rows of a SegmentReader batch with a new (video, start): a segment rated
    for several classes is one segment of the submission."""
    keys = [f"{vid.decode()}:{int(start)}"
            for vid, start in zip(batch.ids, batch.inputs["start_time"])]
    first: Dict[str, int] = {}
    for row, key in enumerate(keys):
        first.setdefault(key, row)
    rows = np.fromiter(first.values(), dtype=np.int64)
    return rows, list(first)


_FILE_SHIFT = 32     # a segment's number: its file's index << 32 | its place in the file


def _file_top_classes(model: predict.LoadedModel, scoring: Scoring, path: str,
                      batch_size: int, compression: str):
    """{video id: top classes} of one input file (None without refinement):
    memory bounded by one file's videos."""
    if not scoring.refine_top_k:
        return None
    return segment_refine.video_top_classes(scoring.refine_model or model,
                                            scoring.refine_top_k, batch_size, files=[path],
                                            compression=compression)


def _batch_scores(batch: predict.Batch, rows: np.ndarray, class_ids: np.ndarray,
                  top) -> np.ndarray:
    """float32 [segments, kept classes] of the batch's distinct rows; -inf
    where refinement leaves the class out (never listed)."""
    scores = batch.predictions[rows][:, class_ids].astype(np.float32)
    if top is not None:
        allowed = segment_refine.class_mask(batch.ids[rows], top, class_ids)
        scores[~allowed] = -np.inf
    return scores


def collect_top(model: predict.LoadedModel, files: List[str], indices: List[int],
                class_ids: np.ndarray, max_pred: int, segment_size: int = 5,
                batch_size: int = 64, log: Optional[Log] = print, compression: str = "auto",
                padded: Optional[bool] = None, scoring: Scoring = Scoring(),
                names: Optional[SegmentNames] = None) -> Tuple[ClassTopK, SegmentNames]:
    """(ClassTopK, SegmentNames) of files, one after the other; with
    refinement each file's video top classes first. padded:
    predict.segment_reader's (None: as the model's graph allows). names:
    the SegmentNames to fill (default: a new one, pruned from PRUNE_MIN on).

    A segment's number is its file's index in the sorted input (indices) and
    its place in the file: ties go to the segment first in the whole input,
    whichever shard read it, so merged parts equal one process's CSV.
    Memory: the pairs of ClassTopK and the names SegmentNames keeps, both
    bounded by the classes and max_pred, not by the number of segments."""
    if max_pred < 1:
        raise UserError(f"--segment_max_pred: must be >= 1, got {max_pred}")
    reader = predict.segment_reader(model, segment_size, rated=False, padded=padded,
                                    positions=scoring.positions,
                                    skip_unrated=scoring.skip_unrated)
    top = ClassTopK(class_ids.size, max_pred)
    names = SegmentNames() if names is None else names
    for path, index in zip(files, indices):
        video_top = _file_top_classes(model, scoring, path, batch_size, compression)
        place = 0
        for batch in predict.iterate_predictions(
                model, "", max(1, batch_size // 5), flag_name="input_data_pattern",
                reader=reader, log=log, compression=compression, unit="segments",
                files=[path]):
            rows, keys = _distinct_segments(batch)
            first = (index << _FILE_SHIFT) + place
            top.add(_batch_scores(batch, rows, class_ids, video_top), first)
            names.add(first, keys)
            place += len(keys)
            if names.due():
                names.prune(top.held())
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
                             compression: str = "auto", padded: Optional[bool] = None,
                             scoring: Scoring = Scoring()) -> int:
    """Streams every segment (of scoring.positions) through the model, keeps
    the per-class top max_pred, writes the CSV atomically; returns the
    number of segments scored."""
    class_ids = np.arange(model.num_classes) if class_ids is None else class_ids
    files = readers.resolve_files(data_pattern, "input_data_pattern")
    top, names = collect_top(model, files, list(range(len(files))), class_ids, max_pred,
                             segment_size, batch_size, log, compression, padded, scoring)
    if not names.seen:
        raise UserError(f"--input_data_pattern={data_pattern}: the files hold no segments")
    _write_csv(output_file, class_ids, lambda j: names.lookup(top.ranked(j)), overwrite)
    if log:
        log(f"wrote {output_file} ({class_ids.size} classes, {names.seen} segments, "
            f"at most {max_pred} a class)")
    return names.seen


def part_path(output_file: str, num_shards: int, shard_index: int) -> str:
    return os.path.join(merge.parts_dir(output_file),
                        f"segments-{shard_index:05d}-of-{num_shards:05d}.npz")


def write_segment_part(model: predict.LoadedModel, data_pattern: str, output_file: str,
                       num_shards: int, shard_index: int,
                       class_ids: Optional[np.ndarray] = None, max_pred: int = 100000,
                       segment_size: int = 5, batch_size: int = 64, log: Optional[Log] = print,
                       compression: str = "auto", settings: Optional[dict] = None,
                       scoring: Scoring = Scoring()) -> str:
    """This shard's per-class top max_pred (every num_shards-th sorted file, as
    ensemble.inference shards) to part_path; merge_segment_parts writes the CSV.
    The part's provenance: its shard, the whole sorted input and the run key
    (merge.run_key of the model's files, settings -- frame sampling, seed,
    bf16 mode -- the segment size, max_pred, classes and scoring.run_settings)."""
    class_ids = np.arange(model.num_classes) if class_ids is None else class_ids
    files = readers.resolve_files(data_pattern, "input_data_pattern")
    indices = list(range(shard_index, len(files), num_shards))
    top, names = collect_top(model, [files[i] for i in indices], indices, class_ids,
                             max_pred, segment_size, batch_size, log, compression,
                             scoring=scoring)
    ranked = [top.ranked(j) for j in range(class_ids.size)]
    run = merge.run_key(model.model_dir, {**(settings or {}), **scoring.run_settings(),
                                          "segment_size": segment_size, "max_pred": max_pred,
                                          "class_ids": [int(c) for c in class_ids]})
    path = part_path(output_file, num_shards, shard_index)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    part = SegmentPart(
        class_ids=class_ids, max_pred=max_pred,
        counts=np.array([r.size for r in ranked], np.int64),
        numbers=np.concatenate(ranked).astype(np.int64),
        scores=np.concatenate([top.scores[j] for j in range(class_ids.size)]),
        names=np.array([name for r in ranked for name in names.lookup(r)],
                       dtype=object).astype(str),
        run=run, num_shards=num_shards, shard_index=shard_index,
        inputs=np.array([os.path.abspath(f) for f in files]))
    with checkpoints.atomic_file(path, True, "output_file") as tmp_path:
        part.save(tmp_path)
    if log:
        log(f"wrote {path} ({names.seen} segments of {len(indices)} files)")
    return path


_PART_NAME = re.compile(r"segments-(\d+)-of-(\d+)\.npz")


def _read_part(path: str, num_shards: int, shard: int) -> SegmentPart:
    """One part, its provenance checked against its name (a copied or renamed
    part is a duplicate shard)."""
    try:
        part = SegmentPart.load(path)
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: missing or unreadable part ({first_line(err)}); run shard "
                        f"{shard} of --num_shards={num_shards} again") from None
    except KeyError as err:
        what = ("no provenance (written by an earlier version)"
                if err.args[0] in SegmentPart.PROVENANCE else f"no {err.args[0]!r} array")
        raise UserError(f"{path}: {what}; run shard {shard} of --num_shards={num_shards} "
                        f"again") from None
    held = (part.shard_index, part.num_shards)
    if held != (shard, num_shards):
        raise UserError(f"{path}: holds shard {held[0]} of {held[1]}, not shard {shard} of "
                        f"{num_shards} (copied or renamed?); run shard {shard} again")
    return part


def _check_parts(output_file: str, num_shards: int, parts: List[SegmentPart]) -> None:
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
        if part.run != parts[0].run:
            raise UserError(f"{path}: written by another run than {first} (another model, "
                            f"or other flags: classes, --segment_max_pred, --segment_size, "
                            f"sampling); run shard {shard} again")
        if not np.array_equal(part.inputs, parts[0].inputs):
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
    class_ids, max_pred = parts[0].class_ids, parts[0].max_pred
    splits = [np.concatenate([[0], np.cumsum(p.counts)]) for p in parts]

    def ranked(j: int):
        rows = [(p, slice(s[j], s[j + 1])) for p, s in zip(parts, splits)]
        scores = np.concatenate([p.scores[r] for p, r in rows])
        numbers = np.concatenate([p.numbers[r] for p, r in rows])
        names = np.concatenate([p.names[r] for p, r in rows])
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
