"""Writes the Kaggle submission CSV:
python -m ensemble.inference --train_dir=E --input_data_pattern='test*.tfrecord' --output_file=S.csv

The starter ``inference.py`` as the original used it (ORIGINAL.md 6.5,
FORMATS.md 3), fixed where it was a bug.

Model. --train_dir is either
  * an ensemble dir (``inference_model.meta`` present, as ensemble.build or
    an uploaded tgz has it): loaded the starter way,
    ``tf.train.import_meta_graph(meta, clear_devices=True)`` + restore, and
    fed through the collections ``input_batch_raw`` and ``num_frames``,
    fetching ``predictions``. Its frame sampling and random seeds were fixed
    when the graph was built (ensemble.build --seed/--frame_sampling), so
    --seed and --frame_sampling do not apply; or
  * a single model dir (``model.ckpt-*`` and no ``inference_model.meta``: a
    train, SWA or bfloat16 dir): the model is built from its
    ``model_flags.json`` (untiled, under ``tower/``; a bf16 checkpoint computes
    as --bf16_compute says, see ensemble.build; --frame_sampling overrides the
    sampling, --seed is the graph seed) and restored. An ensemble dir's
    bfloat16 mode was fixed by ensemble.build --bf16_compute (with
    cast_at_load its restore op casts the bf16 tensors to float32 once).
--input_model_tgz reads an uploaded model instead (extracted into a temporary
dir; only regular files with relative paths are accepted). The data reader
(frame or video level, feature names and sizes) comes from the model's
``model_flags.json``; test records without labels are fine.

--output_model_tgz writes the upload: ``model_flags.json`` and
``inference_model.{data-00000-of-00001,index,meta}`` at the archive root (a
single model dir is first exported to that form).

CSV (FORMATS.md 3.1). Header ``VideoId,LabelConfidencePairs``; one line per
video, ``<id>,<label> <score> <label> <score> ...`` with min(--top_k,
num_classes) pairs by descending score (ties: lower label first), no trailing
space, "\\n" line ends. A score is the prediction in [0, 1] written with 6
significant digits (as the original's ``%g``) but always in positional
notation (``0.0000123457``, never ``1.23457e-05``; ORIGINAL.md 12.26), trailing
zeros dropped (``1``, ``0.5``). The file is streamed to a temporary name and
renamed into place at the end (an existing --output_file or --output_model_tgz
is replaced only with --overwrite; a killed run's temporary file is removed by
the next run); a progress line reports videos and videos/sec. A corrupt or
truncated input file is an error naming it; --skip_corrupt_records skips the
damaged rest of such files instead (those videos are missing from the CSV).
``ensemble.check_submission`` validates the result.
"""
from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
from absl import flags

from ensemble import build, check_submission
from training import checkpoints, losses, metrics, model_builder, readers
from training.errors import UserError, define_flag, run_main
from training.tf_compat import tf

FLAGS = flags.FLAGS

CSV_HEADER = check_submission.CSV_HEADER
UPLOAD_FILES = (checkpoints.MODEL_FLAGS_FILE, "inference_model.data-00000-of-00001",
                "inference_model.index", "inference_model.meta")
PROGRESS_SECONDS = 10.0

Log = Optional[Callable[[str], None]]


def define_flags() -> None:
    define_flag(flags.DEFINE_string, "train_dir", "", "Ensemble dir (inference_model.*) or a "
                "single model dir (model.ckpt-*).")
    define_flag(flags.DEFINE_string, "input_model_tgz", "", "Read the model from this upload "
                ".tgz instead of --train_dir.")
    define_flag(flags.DEFINE_string, "output_model_tgz", "", "Write the upload .tgz "
                "(model_flags.json + inference_model.*) here.")
    define_flag(flags.DEFINE_string, "input_data_pattern", "", "Comma-separated globs of the "
                "TFRecords to predict (the test split).")
    define_flag(flags.DEFINE_string, "output_file", "", "The submission CSV to write.")
    define_flag(flags.DEFINE_integer, "batch_size", 64, "Videos per batch (a tiled ensemble "
                "runs tile_num times as many; the original 8192 does not fit in memory).")
    define_flag(flags.DEFINE_integer, "top_k", 20, "label score pairs per video.")
    define_flag(flags.DEFINE_integer, "num_readers", 1, "Files read in parallel.")
    define_flag(flags.DEFINE_integer, "seed", 2018, "Graph-level random seed (single model "
                "dir only).")
    define_flag(flags.DEFINE_string, "frame_sampling", None, "Override the frame sampling "
                "(single model dir only): random, uniform or none.")
    define_flag(flags.DEFINE_string, "bf16_compute", None, "How a bfloat16 single model dir "
                "computes: cast_each_step, cast_at_load or bfloat16 (default: ensemble.build's "
                "default; an ensemble dir's mode was fixed when it was built).")
    define_flag(flags.DEFINE_bool, "overwrite", False, "Replace an existing --output_file or "
                "--output_model_tgz.")
    define_flag(flags.DEFINE_bool, "skip_corrupt_records", False, "Skip the damaged rest of "
                "corrupt or truncated TFRecord files (default: stop with an error); the "
                "videos skipped are missing from the CSV.")


# ---------------------------------------------------------------------------
# Loading


@dataclass
class LoadedModel:
    model_dir: str
    kind: str                       # "ensemble" or "single"
    model_flags: Dict[str, Any]
    graph: Any
    session: Any
    input_batch_raw: Any
    num_frames: Any
    predictions: Any
    variables: Optional[List[Any]] = None   # single model: what export_model saves

    @property
    def num_classes(self) -> int:
        return int(self.model_flags["num_classes"])

    def close(self) -> None:
        self.session.close()


def _one_from_collection(graph, name: str, meta: str):
    items = graph.get_collection(name)
    if len(items) != 1:
        raise UserError(f"{meta}: the collection {name!r} holds {len(items)} tensors, "
                        f"expected 1")
    return items[0]


def _first_line(err: Exception) -> str:
    text = getattr(err, "message", None) or str(err)
    return next((line.strip() for line in text.splitlines() if line.strip()), text)


def open_model(model_dir: str, frame_sampling: Optional[str] = None,
               seed: int = 2018, bf16_compute: Optional[str] = None) -> LoadedModel:
    """Loads an ensemble dir (import_meta_graph) or builds a single model dir
    (bf16_compute: how a bf16 single model computes; None = the default)."""
    if not os.path.isdir(model_dir):
        raise UserError(f"--train_dir={model_dir}: no such dir")
    model_flags = checkpoints.read_model_flags(model_dir)
    for key in build.MATCH_KEYS:
        if key not in model_flags:
            raise UserError(f"{os.path.join(model_dir, checkpoints.MODEL_FLAGS_FILE)}: has no "
                            f"{key!r} key")
    prefix = os.path.join(model_dir, build.INFERENCE_MODEL)
    graph = tf.Graph()
    if os.path.isfile(prefix + ".meta"):
        if frame_sampling:
            raise UserError(f"--frame_sampling: applies to a single model dir; the frame "
                            f"sampling of {model_dir} was fixed by ensemble.build (rebuild it "
                            f"with --frame_sampling)")
        if bf16_compute:
            raise UserError(f"--bf16_compute: applies to a single model dir; the bfloat16 mode "
                            f"of {model_dir} was fixed by ensemble.build (rebuild it with "
                            f"--bf16_compute)")
        if not os.path.isfile(prefix + ".index"):
            raise UserError(f"{prefix}.index: missing (the meta graph has no checkpoint)")
        with graph.as_default():
            try:
                saver = tf.train.import_meta_graph(prefix + ".meta", clear_devices=True)
            except Exception as err:  # noqa: BLE001 (a corrupt .meta raises many kinds)
                raise UserError(f"{prefix}.meta: cannot import the graph "
                                f"({_first_line(err)})") from None
            if saver is None:
                raise UserError(f"{prefix}.meta: holds no saver (no variables to restore)")
            tensors = [_one_from_collection(graph, name, prefix + ".meta")
                       for name in ("input_batch_raw", "num_frames", "predictions")]
            local_init = tf.local_variables_initializer()
        session = tf.Session(graph=graph)
        try:
            saver.restore(session, prefix)
            session.run(local_init)
        except tf.errors.OpError as err:
            session.close()
            raise UserError(f"{prefix}: cannot restore ({_first_line(err)})") from None
        return LoadedModel(model_dir, "ensemble", model_flags, graph, session, *tensors)

    if checkpoints.latest_checkpoint(model_dir) is None:
        raise UserError(f"--train_dir={model_dir}: neither {build.INFERENCE_MODEL}.meta nor a "
                        f"{checkpoints.CHECKPOINT_PREFIX}-<step> checkpoint")
    member = build.load_member(model_dir)
    with graph.as_default():
        tf.set_random_seed(seed)
        single = build.build_ensemble_graph([member], [1.0], tile_num=1,
                                            frame_sampling=frame_sampling,
                                            scopes=[checkpoints.MODEL_SCOPE],
                                            bf16_compute=bf16_compute)
        (saver,) = build.member_savers([member], single)
    session = tf.Session(graph=graph)
    try:
        build.restore_members(session, [member], [saver])
    except UserError:
        session.close()
        raise
    return LoadedModel(model_dir, "single", model_flags, graph, session, single.input_batch_raw,
                       single.num_frames, single.predictions, single.export_var_list)


# ---------------------------------------------------------------------------
# Upload archives


def _safe_members(tar: tarfile.TarFile, path: str) -> List[tarfile.TarInfo]:
    chosen = []
    for info in tar.getmembers():
        name = info.name
        parts = name.replace("\\", "/").split("/")
        if os.path.isabs(name) or name.startswith("/") or ".." in parts:
            raise UserError(f"--input_model_tgz={path}: member {name!r} points outside the "
                            f"archive; refusing to extract")
        if info.isdir():
            continue
        if not info.isfile():
            raise UserError(f"--input_model_tgz={path}: member {name!r} is not a regular file "
                            f"(links and devices are refused)")
        chosen.append(info)
    return chosen


@contextmanager
def extracted_model_tgz(path: str) -> Iterator[str]:
    """Extracts an upload .tgz into a temporary dir (removed afterwards) and
    yields the dir that holds its model_flags.json."""
    if not os.path.isfile(path):
        raise UserError(f"--input_model_tgz={path}: no such file")
    tmp_dir = tempfile.mkdtemp(prefix="yt8m-model-")
    try:
        try:
            with tarfile.open(path, "r:*") as tar:
                members = _safe_members(tar, path)
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp_dir, members=members, filter="data")
                else:  # pragma: no cover (Python < 3.11.4)
                    tar.extractall(tmp_dir, members=members)
        except (tarfile.TarError, OSError, EOFError) as err:
            raise UserError(f"--input_model_tgz={path}: not a readable .tgz ({err})") from None
        found = [root for root, _, files in os.walk(tmp_dir)
                 if checkpoints.MODEL_FLAGS_FILE in files]
        if len(found) != 1:
            raise UserError(f"--input_model_tgz={path}: expected one "
                            f"{checkpoints.MODEL_FLAGS_FILE}, found {len(found)}")
        yield found[0]
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _plain_member(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """World-readable regular files without owner names."""
    info.mode, info.uid, info.gid, info.uname, info.gname = 0o644, 0, 0, "", ""
    return info


def write_model_tgz(model: LoadedModel, tgz_path: str, log: Log = None,
                    overwrite: bool = True) -> int:
    """Writes the upload .tgz (model_flags.json + inference_model.*) through a
    temporary name; returns the bytes of the inference_model.* files it holds."""
    directory = model.model_dir
    tmp_export = None
    try:
        if model.kind == "single":
            tmp_export = tempfile.mkdtemp(prefix="yt8m-export-")
            build.export_model(model.session, tmp_export, model.variables)
            checkpoints.write_model_flags(tmp_export, model.model_flags)
            directory = tmp_export
        for name in UPLOAD_FILES:
            if not os.path.isfile(os.path.join(directory, name)):
                raise UserError(f"{directory}: {name} missing; cannot write "
                                f"--output_model_tgz")
        with checkpoints.atomic_file(tgz_path, overwrite, "output_model_tgz") as tmp_path:
            with tarfile.open(tmp_path, "w:gz") as tar:
                for name in UPLOAD_FILES:
                    tar.add(os.path.join(directory, name), arcname=name, filter=_plain_member)
        size = build.exported_bytes(directory)
    finally:
        if tmp_export:
            shutil.rmtree(tmp_export, ignore_errors=True)
    if log:
        log(f"wrote {tgz_path}: {build.format_size(size)}")
    return size


# ---------------------------------------------------------------------------
# Predicting


def iterate_predictions(model: LoadedModel, data_pattern: str, batch_size: int,
                        num_readers: int = 1, flag_name: str = "input_data_pattern",
                        extra_fetches: Optional[Dict[str, Any]] = None,
                        skip_corrupt: bool = False
                        ) -> Iterator[Tuple[np.ndarray, np.ndarray, np.ndarray, Dict]]:
    """Yields (ids [B] bytes, predictions [B, C], labels [B, C], extras) per batch.

    The records are read by our own reader (chosen by the model's
    model_flags.json) and fed into input_batch_raw / num_frames. A corrupt or
    truncated file is an error naming it, unless skip_corrupt (its damaged
    rest is skipped and noted in readers.SKIPPED_FILES).
    """
    reader = model_builder.make_reader(model.model_flags)
    with model.graph.as_default():
        dataset = readers.make_dataset(reader, data_pattern, batch_size, training=False,
                                       num_epochs=1, num_parallel_reads=num_readers,
                                       flag_name=flag_name, skip_corrupt=skip_corrupt)
        next_batch = tf.data.make_one_shot_iterator(dataset).get_next()
    extra_fetches = extra_fetches or {}
    while True:
        try:
            batch = model.session.run(next_batch)
        except tf.errors.OutOfRangeError:
            return
        except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as err:
            raise UserError(f"--{flag_name}: {readers.describe_data_error(err, data_pattern)}"
                            ) from None
        feed = {model.input_batch_raw: batch["features"], model.num_frames: batch["num_frames"]}
        fetches = {"predictions": model.predictions}
        for name, (tensor, extra_feed) in extra_fetches.items():
            fetches[name] = tensor
            feed.update(extra_feed(batch))
        try:
            out = model.session.run(fetches, feed)
        except tf.errors.InvalidArgumentError as err:
            raise UserError(f"{model.model_dir}: the model rejects the input "
                            f"({_first_line(err)})") from None
        yield batch["id"], out.pop("predictions"), batch["labels"], out


def format_score(score: float) -> str:
    """6 significant digits, positional notation, trailing zeros dropped."""
    text = "%.6g" % score
    if "e" in text or "E" in text:
        text = np.format_float_positional(score, precision=6, unique=False,
                                          fractional=False, trim="-")
    return text


def top_k_pairs(predictions: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """(labels [B, k], scores [B, k]) by descending score, ties by lower label
    (a stable sort: deterministic, unlike the original's argpartition)."""
    k = min(k, predictions.shape[1])
    labels = np.argsort(-predictions, axis=1, kind="stable")[:, :k]
    return labels, np.take_along_axis(predictions, labels, axis=1)


def format_lines(ids: np.ndarray, predictions: np.ndarray, k: int) -> List[str]:
    predictions = np.asarray(predictions, dtype=np.float32)
    bad = ~np.isfinite(predictions).all(axis=1)
    if bad.any():
        video = ids[int(np.argmax(bad))]
        raise UserError(f"the model predicts NaN or inf for video "
                        f"{video.decode('utf-8', 'replace')}; is the checkpoint corrupt?")
    labels, scores = top_k_pairs(np.clip(predictions, 0.0, 1.0), k)
    lines = []
    for video, row_labels, row_scores in zip(ids, labels, scores):
        pairs = " ".join(f"{int(label)} {format_score(float(score))}"
                         for label, score in zip(row_labels, row_scores))
        lines.append(f"{video.decode('utf-8')},{pairs}\n")
    return lines


def write_submission(model: LoadedModel, data_pattern: str, output_file: str,
                     batch_size: int = 64, top_k: int = 20, num_readers: int = 1,
                     log: Log = print, overwrite: bool = True,
                     skip_corrupt: bool = False) -> int:
    """Streams the CSV to a temporary file, renames it into place; returns
    the number of videos. Nothing is left behind on an error (or a kill: the
    next run removes the dead run's temporary file)."""
    if top_k < 1:
        raise UserError(f"--top_k: must be >= 1, got {top_k}")
    readers.resolve_files(data_pattern, "input_data_pattern")
    start = last = time.time()
    videos = 0
    with checkpoints.atomic_file(output_file, overwrite, "output_file") as tmp_path:
        with open(tmp_path, "w", newline="") as out:
            out.write(CSV_HEADER + "\n")
            for ids, predictions, _, _ in iterate_predictions(model, data_pattern, batch_size,
                                                              num_readers,
                                                              skip_corrupt=skip_corrupt):
                out.writelines(format_lines(ids, predictions, top_k))
                videos += len(ids)
                now = time.time()
                if log and now - last >= PROGRESS_SECONDS:
                    log(f"predicted {videos} videos | "
                        f"{videos / max(now - start, 1e-9):.1f} videos/sec")
                    last = now
            out.flush()
            os.fsync(out.fileno())
        if videos == 0:
            raise UserError(f"--input_data_pattern={data_pattern}: the files hold no videos")
    if log and readers.skipped_files_summary():
        log(readers.skipped_files_summary())
    if log:
        elapsed = max(time.time() - start, 1e-9)
        log(f"predicted {videos} videos | {videos / elapsed:.1f} videos/sec | "
            f"wrote {output_file}")
    return videos


def evaluate_model(model: LoadedModel, data_pattern: str, batch_size: int = 64,
                   top_k: int = 20, num_readers: int = 1, log: Log = None,
                   flag_name: str = "eval_data_pattern") -> Dict[str, float]:
    """Hit@1, PERR, mAP, GAP@top_k and the loss (the label_loss of
    model_flags.json on the fed predictions) over labelled data."""
    with model.graph.as_default():
        labels_in = tf.placeholder(tf.float32, [None, model.num_classes], name="eval_labels")
        loss = losses.get_loss(model.model_flags.get("label_loss", "CrossEntropyLoss"))(
            model.predictions, labels_in)
    accumulator = metrics.EvaluationMetrics(model.num_classes, top_k)
    start, examples = time.time(), 0
    extra = {"loss": (loss, lambda batch: {labels_in: batch["labels"]})}
    for _, predictions, labels, out in iterate_predictions(model, data_pattern, batch_size,
                                                           num_readers, flag_name, extra):
        accumulator.accumulate(predictions, labels, float(out["loss"]))
        examples += len(predictions)
        if log:
            log(f"evaluated {examples} examples | "
                f"{examples / max(time.time() - start, 1e-9):.1f} examples/sec")
    result = accumulator.get()
    if result["num_examples"] == 0:
        raise UserError(f"--{flag_name}={data_pattern}: the files hold no examples")
    return result


def evaluate_model_dir(model_dir: str, data_pattern: str, batch_size: int = 64,
                       top_k: int = 20, num_readers: int = 1, log: Log = None
                       ) -> Dict[str, float]:
    model = open_model(model_dir)
    try:
        return evaluate_model(model, data_pattern, batch_size, top_k, num_readers, log)
    finally:
        model.close()


# ---------------------------------------------------------------------------
# Command line


def run(train_dir: str = "", input_model_tgz: str = "", output_model_tgz: str = "",
        input_data_pattern: str = "", output_file: str = "", batch_size: int = 64,
        top_k: int = 20, num_readers: int = 1, seed: int = 2018,
        frame_sampling: Optional[str] = None, log: Log = print, overwrite: bool = True,
        skip_corrupt: bool = False, bf16_compute: Optional[str] = None) -> Optional[int]:
    """The command: returns the number of videos written (None without a CSV).
    overwrite=False refuses an existing output_file / output_model_tgz (the
    command line's default)."""
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

    def with_dir(model_dir: str) -> Optional[int]:
        model = open_model(model_dir, frame_sampling, seed, bf16_compute)
        try:
            if not overwrite:
                for flag, path in (("output_model_tgz", output_model_tgz),
                                   ("output_file", output_file)):
                    if path and os.path.exists(path):
                        raise UserError(f"--{flag}={path}: exists; choose another or pass "
                                        f"--overwrite")
            if log:
                log(f"loaded {model.kind} model from "
                    f"{input_model_tgz or model_dir} ({model.num_classes} classes)")
            if output_model_tgz:
                write_model_tgz(model, output_model_tgz, log, overwrite)
            if input_data_pattern:
                return write_submission(model, input_data_pattern, output_file, batch_size,
                                        top_k, num_readers, log, overwrite, skip_corrupt)
            return None
        finally:
            model.close()

    if input_model_tgz:
        with extracted_model_tgz(input_model_tgz) as model_dir:
            return with_dir(model_dir)
    return with_dir(train_dir)


def main(argv) -> None:
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    run(FLAGS.train_dir, FLAGS.input_model_tgz, FLAGS.output_model_tgz,
        FLAGS.input_data_pattern, FLAGS.output_file, FLAGS.batch_size, FLAGS.top_k,
        FLAGS.num_readers, FLAGS.seed, FLAGS.frame_sampling,
        log=lambda line: print(line, flush=True), overwrite=FLAGS.overwrite,
        skip_corrupt=FLAGS.skip_corrupt_records, bf16_compute=FLAGS.bf16_compute)


if __name__ == "__main__":
    define_flags()
    run_main(main)
