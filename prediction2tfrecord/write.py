"""Teacher predictions into TFRecords: python -m prediction2tfrecord.write ...

For every input shard (``--input_data_pattern``, frame-level
SequenceExamples) writes ``<output_dir>/<same file name>`` holding every
record unchanged plus the context feature ``ensemble_labels``: the teacher's
scores as raw little-endian float32[num_classes] bytes (the format's home:
training.teacher_records; docs/original.md 8, docs/formats.md 3.1).

The teacher is ``--teacher_csv`` (a submission CSV loaded once into an id
table; all pairs of a row are encoded, the original kept 10 of 20, zeros
elsewhere; a video missing from the CSV is an error, or left out and counted
with ``--skip_missing``) or ``--teacher_dir`` (an ensemble or model dir whose
full prediction vectors are computed directly by training.predict).

Each output shard is written under a temporary name and renamed into place
(training.checkpoints.atomic_file: one writer per shard, a second one is
refused); existing shards are skipped, so a rerun continues where it stopped. A GZIP
or ZLIB input file (``--compression``, default auto-detected) gives an output
file of the same compression.
``--num_shard_groups`` / ``--shard_index`` (or the original's ``--bstart`` /
``--bend``) split the sorted input files between parallel runs.
"""
from __future__ import annotations

import array
import contextlib
import csv
import os
import socket
import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from absl import flags

from models.tf_compat import tf
from training import checkpoints, locks, model_builder, paths, predict, readers, record_layouts
from training import flags as shared_flags
from training.cli import Interrupted, UserError, excerpt, first_line, run_main
from training.progress import Log, Progress
from training.submission import CSV_HEADER, parse_pairs
from training.teacher_records import with_teacher

FLAGS = flags.FLAGS



def define_flags() -> None:
    shared_flags.define_shared_flags({
        "input_data_pattern": ("", "(frame-level; copied with the teacher's scores added)"),
        "output_dir": ("", "Folder for the teacher TFRecords (same file names as the input)."),
        "num_classes": (3862, "Length of the ensemble_labels vector."),
        "batch_size": (64, "(--teacher_dir only)"),
        "frame_sampling": (None, "(--teacher_dir only)"),
        "seed": (2018, "(--teacher_dir only)"),
        "compression": ("auto", "Each output file keeps its input file's compression.")})
    define = shared_flags.define
    define(flags.DEFINE_string, "teacher_csv", "",
           f"Submission CSV ({CSV_HEADER}) of the teacher.", path=paths.IN_FILE)
    define(flags.DEFINE_string, "teacher_dir", "",
           "Ensemble dir or model dir whose predictions are the teacher.", path=paths.IN_DIR)
    define(flags.DEFINE_bool, "skip_missing", False,
           "Leave out (and count) videos missing from --teacher_csv instead of failing.")
    define(flags.DEFINE_integer, "num_shard_groups", 1,
           "Split the sorted input files into this many groups (parallel runs).")
    define(flags.DEFINE_integer, "shard_index", 0,
           "Which group of --num_shard_groups this run writes (0-based).")
    define(flags.DEFINE_integer, "bstart", None,
           "Original interface: first index of the sorted file list to process.")
    define(flags.DEFINE_integer, "bend", None,
           "Original interface: end index (exclusive) of the sorted file list.")


# ---------------------------------------------------------------------------
# Teacher CSV


class TeacherTable:
    """{video id: (labels, scores)} of a teacher CSV in compact storage.

    One dict id -> row and flat int32 / float32 arrays with row offsets
    (about 8 bytes per pair plus the dict), instead of two numpy arrays per
    video: the training-set CSV has ~3.9M rows.
    """

    def __init__(self):
        self.index: Dict[str, int] = {}
        self._labels = array.array("i")
        self._scores = array.array("f")
        self._offsets = array.array("q", [0])
        # Set by finish(), from the buffers above.
        self.labels: np.ndarray
        self.scores: np.ndarray
        self.offsets: np.ndarray

    def add(self, video_id: str, labels: Sequence[int], scores: Sequence[float]) -> None:
        self.index[video_id] = len(self.index)
        self._labels.extend(labels)
        self._scores.extend(scores)
        self._offsets.append(len(self._labels))

    def finish(self) -> "TeacherTable":
        self.labels = np.frombuffer(self._labels, dtype=np.int32)
        self.scores = np.frombuffer(self._scores, dtype=np.float32)
        self.offsets = np.frombuffer(self._offsets, dtype=np.int64)
        return self

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, video_id: str) -> bool:
        return video_id in self.index

    def get(self, video_id: str) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """(labels int32, scores float32) of a video, None when it is absent."""
        row = self.index.get(video_id)
        if row is None:
            return None
        begin, end = self.offsets[row], self.offsets[row + 1]
        return self.labels[begin:end], self.scores[begin:end]


def _add_teacher_row(table: "TeacherTable", row: List[str], num_classes: int,
                     where: str) -> None:
    if not row:
        return
    if len(row) != 2:
        raise UserError(f"{where}: expected 2 columns, got {len(row)}")
    if row[0] in table:
        raise UserError(f"{where}: duplicate VideoId {excerpt(row[0])}")
    table.add(row[0], *parse_pairs(row[1], num_classes, where))


def load_teacher_csv(path: str, num_classes: int) -> TeacherTable:
    """Reads a submission CSV once into a TeacherTable (constant-time lookup)."""
    if not tf.io.gfile.exists(path):
        raise UserError(f"--teacher_csv: {path}: no such file")
    table = TeacherTable()
    line_number = 1
    try:
        with tf.io.gfile.GFile(path, "r") as handle:
            rows = csv.reader(handle)
            header = next(rows, None)
            if header is None or [h.strip() for h in header[:1]] != CSV_HEADER.split(",")[:1] \
                    or len(header) != 2:
                raise UserError(f"--teacher_csv: {path}: expected the header "
                                f"'{CSV_HEADER}', got "
                                f"{excerpt(','.join(header or []))}")
            for line_number, row in enumerate(rows, start=2):
                _add_teacher_row(table, row, num_classes,
                                 f"--teacher_csv: {path} line {line_number}")
    except (UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"--teacher_csv: {path} near line {line_number}: not a CSV of UTF-8 "
                        f"text ({err})") from None
    if not len(table):
        raise UserError(f"--teacher_csv: {path}: holds no videos")
    return table.finish()


def dense_scores(labels: np.ndarray, scores: np.ndarray, num_classes: int) -> np.ndarray:
    """float32 [num_classes]: scores at their labels, zeros elsewhere."""
    vector = np.zeros([num_classes], dtype=np.float32)
    vector[labels] = scores
    return vector


class CsvTeacher:
    """Teacher vectors looked up in a submission CSV (constant time per video)."""

    def __init__(self, path: str, num_classes: int, skip_missing: bool = False):
        self.path = path
        self.num_classes = num_classes
        self.skip_missing = skip_missing
        start = time.time()
        self.table = load_teacher_csv(path, num_classes)
        self.description = (f"CSV {path} ({len(self.table)} videos, loaded in "
                            f"{time.time() - start:.1f}s)")

    def __call__(self, ids: Sequence[str], serialized: Sequence[bytes]
                 ) -> List[Optional[np.ndarray]]:
        vectors: List[Optional[np.ndarray]] = []
        for video_id in ids:
            entry = self.table.get(video_id)
            if entry is None:
                if not self.skip_missing:
                    raise UserError(f"--teacher_csv: video {video_id!r} is not in {self.path} "
                                    f"(pass --skip_missing to leave such videos out)")
                vectors.append(None)
            else:
                vectors.append(dense_scores(entry[0], entry[1], self.num_classes))
        return vectors

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------
# Teacher model dir


class ModelTeacher:
    """Full prediction vectors of an ensemble dir or a model dir.

    The model is loaded by ``training.predict.open_model`` (an ensemble dir
    through its meta graph, a single model dir built from model_flags.json,
    bfloat16 or not); the records of a batch are parsed by the model's own
    reader in the same graph and predicted by ``training.predict``.
    """

    def __init__(self, path: str, num_classes: int, frame_sampling: Optional[str] = None,
                 seed: int = 2018):
        self.model = predict.open_model(path, frame_sampling, seed)
        if self.model.num_classes != num_classes:
            self.model.close()
            raise UserError(f"--teacher_dir: {path} predicts {self.model.num_classes} classes "
                            f"but --num_classes={num_classes}")
        reader = model_builder.make_reader(self.model.model_flags)
        if not record_layouts.layout_of_model(self.model.model_flags).frame_level:
            self.model.close()
            raise UserError(f"--teacher_dir: {path} reads video-level features; teacher "
                            f"records are frame-level SequenceExamples")
        with self.model.graph.as_default():
            self.serialized = tf.placeholder(tf.string, [None], name="teacher_records")
            self.parsed = reader.parse(self.serialized)
        self.path = path
        self.num_classes = num_classes
        self.description = f"{self.model.kind} model {path}"

    def __call__(self, ids: Sequence[str], serialized: Sequence[bytes]
                 ) -> List[Optional[np.ndarray]]:
        session = self.model.session
        try:
            batch = session.run(self.parsed, {self.serialized: list(serialized)})
        except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as err:
            raise UserError(f"--input_data_pattern: {first_line(err)}") from None
        predictions = predict.predict_batch(self.model, batch["features"],
                                            batch["num_frames"])["predictions"]
        if not np.all(np.isfinite(predictions)):
            raise UserError(f"--teacher_dir: {self.path} predicts NaN or inf; is the "
                            f"checkpoint corrupt?")
        return [np.asarray(row, dtype=np.float32) for row in predictions]

    def close(self) -> None:
        self.model.close()


# ---------------------------------------------------------------------------
# Records


def video_id_of(example: tf.train.SequenceExample, where: str) -> str:
    feature = example.context.feature.get("id")
    if feature is None or len(feature.bytes_list.value) != 1:
        raise UserError(f"{where}: a record has no bytes context feature 'id' "
                        f"(not a YT8M frame-level SequenceExample?)")
    return feature.bytes_list.value[0].decode("utf-8")


def _records(path: str, compression_type: str = ""):
    try:
        for record in tf.io.tf_record_iterator(path, compression_type):
            yield record
    except tf.errors.OpError as err:
        raise UserError(f"--input_data_pattern: {path}: cannot read "
                        f"({first_line(err)})") from None


def _batches(iterable, size: int):
    batch = []
    for item in iterable:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


_TMP_MARK = ".tmp-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(output_path: str, log: Optional[Log] = None) -> None:
    """Removes this shard's temporary files left by a killed run on this host
    (`.<name>.tmp-<host>-<pid>` whose process is gone); others are kept.
    (Non-local output dirs only: a local one has the lock of atomic_file.)"""
    directory, name = os.path.split(output_path)
    prefix = f".{name}{_TMP_MARK}{socket.gethostname()}-"
    try:
        entries = tf.io.gfile.listdir(directory)
    except tf.errors.OpError:
        return
    for entry in entries:
        if entry.startswith(prefix) and entry[len(prefix):].isdigit() \
                and not _pid_alive(int(entry[len(prefix):])):
            tf.io.gfile.remove(os.path.join(directory, entry))
            if log:
                log(f"removed {entry}, left by an interrupted run")


@contextlib.contextmanager
def _output_temp(output_path: str, log: Optional[Log]) -> Iterator[str]:
    """A temporary path for one output shard, renamed into place when the
    block ends without an error, removed otherwise. A local output dir:
    checkpoints.atomic_file (one writer per shard: its lock; a dead run's
    temporary files are removed). gs:// and other URLs (no lock): a
    host-and-pid-named temporary sibling, through tf.io.gfile."""
    if locks.is_local(output_path):
        with checkpoints.atomic_file(output_path, overwrite=True) as tmp_path:
            yield tmp_path
        return
    remove_stale_temporaries(output_path, log)
    tmp_path = os.path.join(os.path.dirname(output_path), f".{os.path.basename(output_path)}"
                            f"{_TMP_MARK}{socket.gethostname()}-{os.getpid()}")
    try:
        yield tmp_path
        tf.io.gfile.rename(tmp_path, output_path, overwrite=True)
    except BaseException:
        if tf.io.gfile.exists(tmp_path):
            tf.io.gfile.remove(tmp_path)
        raise


def convert_file(input_path: str, output_path: str, teacher, batch_size: int = 64,
                 log: Optional[Log] = None, compression_type: str = "") -> Dict[str, int]:
    """Writes one output shard atomically, read and written with
    compression_type ('', 'GZIP' or 'ZLIB'); returns {"written", "skipped"}."""
    written = skipped = 0
    with _output_temp(output_path, log) as tmp_path:
        with tf.io.TFRecordWriter(tmp_path, compression_type) as writer:
            for serialized in _batches(_records(input_path, compression_type), batch_size):
                examples = []
                for record in serialized:
                    try:
                        examples.append(tf.train.SequenceExample.FromString(record))
                    except Exception:  # protobuf DecodeError
                        raise UserError(f"--input_data_pattern: {input_path}: a record is "
                                        f"not a SequenceExample") from None
                ids = [video_id_of(example, input_path) for example in examples]
                vectors = teacher(ids, serialized)
                for example, vector in zip(examples, vectors):
                    if vector is None:
                        skipped += 1
                        continue
                    writer.write(with_teacher(example, vector))
                    written += 1
    return {"written": written, "skipped": skipped}


# ---------------------------------------------------------------------------
# File selection and driver


def select_files(files: Sequence[str], num_shard_groups: int = 1, shard_index: int = 0,
                 bstart: Optional[int] = None, bend: Optional[int] = None) -> List[str]:
    """The files of this run: sorted, sliced [bstart:bend], then every
    num_shard_groups-th starting at shard_index (disjoint across indices)."""
    if num_shard_groups < 1:
        raise UserError(f"--num_shard_groups: must be >= 1, got {num_shard_groups}")
    if not 0 <= shard_index < num_shard_groups:
        raise UserError(f"--shard_index: must be in [0, {num_shard_groups}), got {shard_index}")
    for name, value in (("bstart", bstart), ("bend", bend)):
        if value is not None and value < 0:
            raise UserError(f"--{name}: must be >= 0, got {value}")
    selected = sorted(files)[bstart:bend]
    return selected[shard_index::num_shard_groups]


def write_teacher_records(files: Sequence[str], output_dir: str, teacher,
                          batch_size: int = 64, log: Log = print,
                          compression: str = "auto") -> Dict[str, int]:
    """Converts every file not yet present in output_dir (each in its own
    compression, readers.file_compressions); returns totals."""
    shared_flags.require(output_dir=output_dir)
    tf.io.gfile.makedirs(output_dir)
    totals = {"files": 0, "existing": 0, "written": 0, "skipped": 0}
    outputs = [os.path.join(output_dir, os.path.basename(path)) for path in files]
    names = [os.path.basename(path) for path in files]
    if len(set(names)) != len(names):
        duplicate = next(name for name in names if names.count(name) > 1)
        raise UserError(f"--input_data_pattern: two input files are named {duplicate!r}; "
                        f"their outputs would collide in --output_dir")
    for source, target in zip(files, outputs):
        if os.path.abspath(source) == os.path.abspath(target):
            raise UserError(f"--output_dir: {output_dir} is the input folder; the teacher "
                            f"records would overwrite {source}")
    progress = Progress("videos", total=len(files))
    kinds = readers.file_compressions(files, compression)
    for index, (source, target) in enumerate(zip(files, outputs), start=1):
        if tf.io.gfile.exists(target):
            totals["existing"] += 1
            log(f"[{index}/{len(files)}] {os.path.basename(target)} exists, skipped")
            continue
        shard_start = time.time()
        counts = convert_file(source, target, teacher, batch_size, log, kinds[index - 1])
        totals["files"] += 1
        totals["written"] += counts["written"]
        totals["skipped"] += counts["skipped"]
        rate = counts["written"] / max(time.time() - shard_start, 1e-9)
        missing = f", {counts['skipped']} missing from the teacher" if counts["skipped"] else ""
        log(progress.line(index, f"[{index}/{len(files)}] {os.path.basename(source)} -> "
                                 f"{target}: {counts['written']} videos{missing}", rate=rate))
    return totals


def make_teacher(teacher_csv: str, teacher_dir: str, num_classes: int,
                 skip_missing: bool = False, frame_sampling: Optional[str] = None,
                 seed: int = 2018):
    if bool(teacher_csv) == bool(teacher_dir):
        raise UserError("--teacher_csv/--teacher_dir: give exactly one of them")
    if num_classes <= 0:
        raise UserError(f"--num_classes: must be positive, got {num_classes}")
    if teacher_csv:
        return CsvTeacher(teacher_csv, num_classes, skip_missing)
    if not os.path.isdir(teacher_dir):
        raise UserError(f"--teacher_dir: {teacher_dir}: no such folder")
    return ModelTeacher(teacher_dir, num_classes, frame_sampling, seed)


def main(argv) -> None:
    del argv
    shared_flags.require(input_data_pattern=FLAGS.input_data_pattern,
                         output_dir=FLAGS.output_dir)
    if FLAGS.batch_size <= 0:
        raise UserError(f"--batch_size: must be positive, got {FLAGS.batch_size}")
    files = readers.resolve_files(FLAGS.input_data_pattern, "input_data_pattern")
    selected = select_files(files, FLAGS.num_shard_groups, FLAGS.shard_index,
                            FLAGS.bstart, FLAGS.bend)
    if not selected:
        print(f"no input files for this run ({len(files)} files, group {FLAGS.shard_index} "
              f"of {FLAGS.num_shard_groups}, bstart={FLAGS.bstart}, bend={FLAGS.bend})",
              flush=True)
        return
    readers.check_records(selected, "input_data_pattern", readers.FrameReader(),
                          compression=FLAGS.compression, reader_of="prediction2tfrecord.write")
    teacher = make_teacher(FLAGS.teacher_csv, FLAGS.teacher_dir, FLAGS.num_classes,
                           FLAGS.skip_missing, FLAGS.frame_sampling, FLAGS.seed)
    log = lambda line: print(line, flush=True)  # noqa: E731
    log(f"teacher: {teacher.description}; {len(selected)} of {len(files)} input files "
        f"-> {FLAGS.output_dir}")
    try:
        totals = write_teacher_records(selected, FLAGS.output_dir, teacher,
                                       FLAGS.batch_size, log, FLAGS.compression)
    except Interrupted as interrupt:
        done = sum(tf.io.gfile.exists(os.path.join(FLAGS.output_dir, os.path.basename(path)))
                   for path in selected)
        raise interrupt.noted(f"{done} of {len(selected)} files are in {FLAGS.output_dir}; "
                              f"run the same command to continue") from None
    finally:
        teacher.close()
    log(f"done: {totals['written']} videos in {totals['files']} files written, "
        f"{totals['existing']} files already present")
    if totals["skipped"]:
        log(f"skipped {totals['skipped']} videos missing from the teacher "
            f"(--skip_missing)")


if __name__ == "__main__":
    define_flags()
    run_main(main)
