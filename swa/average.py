"""Checkpoint averaging ("SWA"): python -m swa.average --train_dir=T --output_dir=S --swa_start=N

Averages (uniform mean) the model variables of every model.ckpt-<step> of
--train_dir with swa_start <= step <= swa_end (or the last --last_n of them)
and writes a new dir (atomically; the train dir is only read) with
model.ckpt-<last averaged step> (the float32 model variables under tower/,
no optimizer slots or global_step), model_flags.json, and swa.json (the
averaged checkpoints and the BN mode). The mean is streamed tensor by tensor
(a float64 running sum per variable: peak memory about one model, whatever
the number of checkpoints).

BN moving statistics (--bn_statistics): ``last`` from the highest-step
checkpoint (the original avg_eval.py); ``average`` averaged like the weights
(eval_avg.py); ``recompute`` (classic SWA) rebuilds the training graph, loads
the averaged weights and sets each statistic to the exact mean, over
--recompute_batches batches of --train_data_pattern, of the batch statistic
its moving-average update tracks (training.bn_statistics, which
training.eval --bn_statistics=recompute uses too). --eval_data_pattern
evaluates the result.

--choose_window_on=F: the window (last N) with the best GAP on F; with
--segment_labels, the best Segment MAP on 2019 segment-rated F, and
--eval_data_pattern evaluates on segments (segment_eval_results.json).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
from absl import flags

from models.tf_compat import tf
from training import bn_statistics as bn_stats
from training import (
    checkpoint_fit,
    checkpoints,
    eval_results,
    intervals,
    members,
    paths,
    predict,
    readers,
    stage_files,
)
from training import eval as evaluation
from training import flags as shared_flags
from training.cli import UserError, first_line, run_main
from training.progress import Log, Progress
from training.stage_files import AveragedCheckpoint, SwaRecord, WindowCandidate, WindowChoice
from training.submission import DEFAULT_TOP_K

FLAGS = flags.FLAGS

BN_MODES = ("last", "average", "recompute")



def define_flags() -> None:
    shared_flags.define_shared_flags({
        "train_dir": ("", "Train dir whose checkpoints are averaged."),
        "output_dir": ("", "New dir for the averaged checkpoint."),
        "train_data_pattern": ("", "(for --bn_statistics=recompute)"),
        "eval_data_pattern": ("", "If set, evaluate the averaged model and write "
                                  "eval_results.json into --output_dir."),
        "batch_size": (80, "(the recompute and evaluation passes)"), "num_readers": 4,
        "seed": 2018, "overwrite": False, "compression": "auto",
        "recompute_batches": bn_stats.DEFAULT_RECOMPUTE_BATCHES})
    define = shared_flags.define
    define(flags.DEFINE_integer, "swa_start", None, "First step averaged (inclusive).")
    define(flags.DEFINE_integer, "swa_end", None, "Last step averaged (inclusive; default: "
           "the latest).")
    define(flags.DEFINE_integer, "last_n", None, "Average the last N checkpoints (of the "
           "--swa_start/--swa_end range when given).")
    define(flags.DEFINE_string, "choose_window_on", "", "Choose N among --windows: average "
           "each, evaluate it on these files (the fitting half, never the held-out one) and "
           "keep the best (1: the last checkpoint).", path=paths.IN_PATTERN)
    define(flags.DEFINE_string, "windows", "", "Candidate N for --choose_window_on, "
           "comma-separated (default: 1 and the powers of 2 below the number of "
           "checkpoints, and that number).")
    define(flags.DEFINE_enum, "bn_statistics", "last", "BN moving statistics: from the last "
           "checkpoint, averaged, or recomputed on --recompute_batches batches of "
           "--train_data_pattern.", enum_values=list(BN_MODES))
    define(flags.DEFINE_bool, "segment_labels", False, "--choose_window_on and "
           "--eval_data_pattern are 2019 segment-rated records: choose the window by "
           "Segment MAP (docs/formats.md 2.7) and evaluate the result on segments "
           "(segment_eval_results.json).")
    define(flags.DEFINE_integer, "segment_size", 5, "Frames per rated segment "
           "(--segment_labels).")


# ---------------------------------------------------------------------------
# Selection and compatibility


def select_checkpoints(train_dir: str, swa_start: Optional[int] = None,
                       swa_end: Optional[int] = None,
                       last_n: Optional[int] = None) -> List[Tuple[int, str]]:
    """[(step, path)] of the checkpoints to average, ascending by step."""
    if swa_start is None and last_n is None:
        raise UserError("--swa_start or --last_n: one of them is required")
    if last_n is not None and last_n <= 0:
        raise UserError(f"--last_n: must be positive, got {last_n}")
    if swa_start is not None and swa_end is not None and swa_end < swa_start:
        raise UserError(f"--swa_end={swa_end} is before --swa_start={swa_start}")
    found = checkpoints.list_checkpoints(train_dir)
    if not found:
        raise UserError(f"--train_dir={train_dir}: no {checkpoints.CHECKPOINT_PREFIX}-<step> "
                        f"checkpoint in this dir")
    chosen = [(step, path) for step, path in found
              if (swa_start is None or step >= swa_start)
              and (swa_end is None or step <= swa_end)]
    if last_n is not None:
        chosen = chosen[-last_n:]
    if not chosen:
        steps = ", ".join(str(step) for step, _ in found)
        low = "-inf" if swa_start is None else swa_start
        high = "latest" if swa_end is None else swa_end
        raise UserError(f"--train_dir={train_dir}: no checkpoint with a step in "
                        f"[{low}, {high}] (--swa_start/--swa_end); steps present: {steps}")
    return chosen


def model_variable_specs(paths: Sequence[str]) -> List[Tuple[str, List[int], Any]]:
    """[(key, shape, dtype)] of the model variables, identical in every
    float32 checkpoint of paths (training.checkpoint_fit says how they differ)."""
    reference = checkpoint_fit.checkpoint_specs(paths[0])
    if not reference:
        raise UserError(f"{paths[0]}: no model variables under {checkpoints.MODEL_SCOPE}/")
    for path in paths:
        specs = reference if path == paths[0] else checkpoint_fit.checkpoint_specs(path)
        # Averaging values already rounded to 8 bits of mantissa loses what
        # the mean is for; the pipeline averages, then converts.
        checkpoint_fit.require_float32(path, "SWA averages the float32 checkpoints of a train dir "
                                             "(convert the result with bfloat16_patch.convert "
                                             "afterwards)", specs)
        checkpoint_fit.check_same_specs(paths[0], reference, path, specs)
    result = []
    for key, (shape, dtype) in sorted(reference.items()):
        assert shape is not None, key   # a checkpoint's shapes are known (None: a graph's)
        result.append((key, shape, dtype))
    return result


class CheckpointAverager:
    """Produces, one tensor at a time, the output value of each model variable."""

    def __init__(self, paths: Sequence[str], bn_statistics: str, log: Optional[Log] = None):
        self.paths = list(paths)
        self.specs = model_variable_specs(self.paths)
        self.readers = [checkpoints.open_checkpoint(path) for path in self.paths]
        self.bn_statistics = bn_statistics
        self.log = log
        self.done = 0
        self.progress = Progress("MiB", units_per_count=1.0 / 2 ** 20)
        self.total_bytes = sum(int(np.prod(shape, dtype=np.int64)) * dtype.size
                               for _, shape, dtype in self.specs)
        self.done_bytes = 0
        self.dtypes = {key: dtype for key, _, dtype in self.specs}

    def averaged(self, key: str) -> bool:
        """True when the output of `key` is the mean over the checkpoints."""
        if not self.dtypes[key].is_floating:
            return False
        return not bn_stats.is_bn_statistic(key) or self.bn_statistics == "average"

    def read(self, index: int, key: str) -> np.ndarray:
        try:
            return self.readers[index].get_tensor(key)
        except tf.errors.OpError as err:
            raise UserError(f"{self.paths[index]}: cannot read {key} (was the checkpoint "
                            f"deleted while averaging? {first_line(err)})"
                            ) from None

    def mean(self, key: str) -> np.ndarray:
        """Uniform mean over the checkpoints (float64 running sum)."""
        total: Optional[np.ndarray] = None
        for index in range(len(self.readers)):
            value = self.read(index, key)
            if total is None:
                total = value.astype(np.float64)
            else:
                total += value
            del value
        assert total is not None        # model_variable_specs: at least one checkpoint
        total /= len(self.readers)
        return total.astype(self.dtypes[key].as_numpy_dtype)

    def __call__(self, key: str) -> np.ndarray:
        value = self.mean(key) if self.averaged(key) else self.read(-1, key)
        self.done += 1
        self.done_bytes += value.nbytes
        if self.log and (self.done % 25 == 0 or self.done == len(self.specs)):
            self.progress.total = self.total_bytes
            self.log(self.progress.line(self.done_bytes, f"averaged {self.done}/"
                                        f"{len(self.specs)} tensors"))
        return value


class CandidateGraphs:
    """The graphs choose_window builds once and uses for every candidate
    window: the training-mode graph that recomputes BN statistics
    (bn_statistics.RecomputeGraph) and the evaluation graph of the model
    (training.predict.open_model, pointed at each candidate with
    reopen_single). Each use opens a new session, so a candidate's
    statistics and GAP are the values that graphs built for it alone would
    give. Close it when done."""

    def __init__(self) -> None:
        self.recompute: Optional[bn_stats.RecomputeGraph] = None
        self.model: Optional[predict.LoadedModel] = None

    def recompute_graph(self, model_flags, keys: Sequence[str], data_pattern: str,
                        batch_size: int, seed: int, num_readers: int,
                        compression: str) -> bn_stats.RecomputeGraph:
        """The RecomputeGraph of the model (built on the first call)."""
        if self.recompute is None:
            self.recompute = bn_stats.RecomputeGraph(model_flags, keys, data_pattern,
                                                     batch_size, seed, num_readers, compression)
        return self.recompute

    def model_at(self, model_dir: str, seed: int) -> predict.LoadedModel:
        """The evaluation model restored from model_dir's checkpoint (the
        graph built on the first call, with this seed)."""
        checkpoint = checkpoints.find_checkpoint(model_dir)
        if self.model is None:
            self.model = predict.open_model(model_dir, seed=seed, checkpoint=checkpoint)
        else:
            predict.reopen_single(self.model, model_dir, checkpoint)
        return self.model

    def close(self) -> None:
        if self.model is not None:
            self.model.close()


# ---------------------------------------------------------------------------
# The stage


def _check_dirs(train_dir: str, output_dir: str, overwrite: bool) -> None:
    shared_flags.require(train_dir=train_dir, output_dir=output_dir)
    if not os.path.isdir(train_dir):
        raise UserError(f"--train_dir={train_dir}: no such dir")
    source, target = os.path.abspath(train_dir), os.path.abspath(output_dir)
    if source == target or source.startswith(target.rstrip(os.sep) + os.sep):
        raise UserError(f"--output_dir={output_dir}: would replace the train dir "
                        f"{train_dir}; choose a new dir")
    if os.path.exists(output_dir) and not overwrite:
        raise UserError(f"--output_dir={output_dir}: exists; choose another or pass --overwrite")


def average(train_dir: str, output_dir: str, swa_start: Optional[int] = None,
            swa_end: Optional[int] = None, last_n: Optional[int] = None,
            bn_statistics: str = "last", recompute_batches: int = 100,
            train_data_pattern: str = "", batch_size: int = 80, seed: int = 2018,
            num_readers: int = 4, overwrite: bool = False, log: Optional[Log] = print,
            compression: str = "auto", graphs: Optional[CandidateGraphs] = None
            ) -> SwaRecord:
    """Writes the averaged dir; returns its swa.json record (choose_window
    adds its window_choice and the choice's provenance).
    graphs: recompute in its RecomputeGraph (built on first use) rather
    than in one built for this call; the same values either way."""
    if bn_statistics not in BN_MODES:
        raise UserError(f"--bn_statistics: must be one of {', '.join(BN_MODES)}, "
                        f"got {bn_statistics!r}")
    _check_dirs(train_dir, output_dir, overwrite)
    model_flags = checkpoints.read_model_flags(train_dir)
    if bn_statistics == "recompute":
        bn_stats.check_recompute_flags(train_data_pattern, recompute_batches, batch_size,
                                       model_flags, compression)
    checkpoints.check_state_file(train_dir)
    chosen = select_checkpoints(train_dir, swa_start, swa_end, last_n)
    paths = [path for _, path in chosen]
    last_step = chosen[-1][0]
    name = f"{checkpoints.CHECKPOINT_PREFIX}-{last_step}"
    log = log or (lambda line: None)
    log(f"averaging {len(paths)} checkpoints of {train_dir}: steps "
        f"{', '.join(str(step) for step, _ in chosen)} (BN statistics: {bn_statistics})")
    averager = CheckpointAverager(paths, bn_statistics if bn_statistics != "recompute"
                                  else "last", log)
    with checkpoints.atomic_directory(output_dir, overwrite) as tmp_dir:
        save_path = os.path.join(tmp_dir, name)
        if bn_statistics == "recompute":
            graph = (graphs or CandidateGraphs()).recompute_graph(
                model_flags, [key for key, _, _ in averager.specs], train_data_pattern,
                batch_size, seed, num_readers, compression)
            graph.run(averager, save_path, recompute_batches, log)
        else:
            checkpoints.write_arrays_checkpoint(save_path, averager.specs, averager)
        shutil.copyfile(os.path.join(train_dir, checkpoints.MODEL_FLAGS_FILE),
                        os.path.join(tmp_dir, checkpoints.MODEL_FLAGS_FILE))
        info = SwaRecord(
            source_dir=os.path.abspath(train_dir), checkpoint=name,
            checkpoints=tuple(AveragedCheckpoint(path=os.path.abspath(path), step=step)
                              for step, path in chosen),
            count=len(chosen), bn_statistics=bn_statistics,
            recompute_batches=recompute_batches if bn_statistics == "recompute" else None,
            recompute_batch_size=batch_size if bn_statistics == "recompute" else None,
            swa_start=swa_start, swa_end=swa_end, last_n=last_n,
            model_variables=len(averager.specs),
            averaged_variables=sum(averager.averaged(key) for key, _, _ in averager.specs),
            bn_statistic_variables=sum(bn_stats.is_bn_statistic(key)
                                       for key, _, _ in averager.specs),
            window_choice=None,   # (choose_window records its choice here)
            provenance=stage_files.provenance_of(train_dir) or None)
        stage_files.write_in(tmp_dir, info)
    log(f"wrote {os.path.join(output_dir, name)} (mean of {len(chosen)} checkpoints)")
    return info


def candidate_windows(text: str, num_checkpoints: int) -> List[int]:
    """The windows --windows names (default: 1, 2, 4, ... below the number of
    checkpoints, and that number), each at most that number, ascending."""
    if text:
        try:
            windows = [int(part) for part in shared_flags.comma_list(text)]
        except ValueError:
            raise UserError(f"--windows={text}: expected comma-separated whole numbers") from None
        if not windows or min(windows) < 1:
            raise UserError(f"--windows={text}: every window must be 1 or more")
    else:
        windows = [2 ** power for power in range(num_checkpoints.bit_length())]
        windows.append(num_checkpoints)
    return sorted({min(window, num_checkpoints) for window in windows})


@dataclasses.dataclass(frozen=True)
class AverageSettings:
    """How each candidate window is averaged (average()'s keywords) and evaluated."""
    swa_start: Optional[int] = None
    swa_end: Optional[int] = None
    bn_statistics: str = "last"
    recompute_batches: int = 100
    train_data_pattern: str = ""
    batch_size: int = 80
    seed: int = 2018
    num_readers: int = 4
    compression: str = "auto"


@dataclasses.dataclass(frozen=True)
class WindowSettings:
    """--choose_window_on's settings: where the chosen average goes, and
    segment_size > 0 to choose by Segment MAP on 2019 segment-rated files."""
    output_dir: str
    overwrite: bool = False
    segment_size: int = 0
    average: AverageSettings = AverageSettings()


def choose_window(train_dir: str, fit_pattern: str, windows: Sequence[int],
                  settings: WindowSettings, log: Optional[Log] = print) -> WindowChoice:
    """Averages the last N checkpoints for each N of windows, evaluates each
    on fit_pattern (BN statistics as settings say), installs the best one as
    settings.output_dir (its swa.json records the choice and its
    provenance: the fitting files and their video ids) and returns the
    choice. Ties keep the smaller window. settings.segment_size > 0: by
    Segment MAP on segment-rated files instead (each candidate's
    segment_map; the choice's metric and segment_size say so)."""
    log = log or (lambda line: None)
    key, label = _fit_metric(settings)
    candidates: List[WindowCandidate] = []
    parent = os.path.dirname(os.path.abspath(settings.output_dir))
    os.makedirs(parent, exist_ok=True)
    # The candidates are written beside the output (same file system): the
    # best one is moved there rather than averaged again.
    scratch = tempfile.mkdtemp(prefix=".swa-windows-", dir=parent)
    graphs = CandidateGraphs()
    try:
        best: Optional[WindowCandidate] = None
        best_dir, ids_digest = "", None
        for window in sorted(windows):
            out = os.path.join(scratch, f"window{window}")
            info = average(train_dir, out, last_n=window, log=None, graphs=graphs,
                           **dataclasses.asdict(settings.average))
            result = evaluate_on(out, fit_pattern, settings, log=None, graphs=graphs,
                                 keep_ids=ids_digest is None)
            ids_digest = ids_digest or result.ids_digest()
            steps = tuple(entry.step for entry in info.checkpoints)
            score = _fit_score(result, settings)
            log(f"window {window} (steps {steps[0]}-{steps[-1]}): {label} "
                f"{score:.4f} on the fitting files")
            candidates.append(WindowCandidate(window=window, steps=steps,
                                              **{key: float(score)}))
            # Only the best so far stays on disk; a tie keeps the smaller window.
            if best is None or score > getattr(best, key):
                if best_dir:
                    shutil.rmtree(best_dir)
                best, best_dir = candidates[-1], out
            else:
                shutil.rmtree(out)
        assert best is not None     # (candidate_windows gives one window or more)
        log(f"chose window {best.window} ({label} {getattr(best, key):.4f} on the fitting "
            f"files)")
        segment_size = settings.segment_size or None
        choice = WindowChoice(chosen=best.window, data_pattern=fit_pattern,
                              candidates=tuple(candidates),
                              metric=key if segment_size else None, segment_size=segment_size)
        made = stage_files.provenance_for("swa.average", "window", fit_pattern, ids_digest)
        _install_candidate(best_dir, settings.output_dir, settings.overwrite, choice,
                           made, log)
    finally:
        graphs.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return choice


def _fit_score(result: intervals.EvalResult, settings: WindowSettings) -> float:
    """The result's metric that chooses the window (_fit_metric's)."""
    score = result.segment_map if settings.segment_size else result.gap
    assert score is not None    # (evaluate_on measures that kind)
    return score


def _fit_metric(settings: WindowSettings) -> Tuple[str, str]:
    """(the metrics' key, its name in the log) that chooses the window: GAP,
    or Segment MAP when settings.segment_size > 0 (segment-rated files)."""
    return ("segment_map", "Segment_MAP") if settings.segment_size else ("gap", "GAP")


def _install_candidate(candidate_dir: str, output_dir: str, overwrite: bool,
                       choice: WindowChoice, made: stage_files.Provenance,
                       log: Optional[Log]) -> None:
    """Moves the chosen candidate's files into output_dir (atomically, as
    average writes it) and records the choice and its provenance in its swa.json."""
    with checkpoints.atomic_directory(output_dir, overwrite) as tmp_dir:
        for name in os.listdir(candidate_dir):
            os.replace(os.path.join(candidate_dir, name), os.path.join(tmp_dir, name))
        info = stage_files.read_record(SwaRecord, os.path.join(tmp_dir, SwaRecord.FILE_NAME))
        info = dataclasses.replace(info, window_choice=choice, provenance=(
            stage_files.merge_provenance(info.provenance or (), [made])))
        stage_files.write_in(tmp_dir, info)
    if log:
        log(f"wrote {os.path.join(output_dir, info.checkpoint)} (mean of {info.count} "
            f"checkpoints)")


def evaluate_on(model_dir: str, data_pattern: str, settings: WindowSettings,
                log: Optional[Log] = print, graphs: Optional[CandidateGraphs] = None,
                keep_ids: bool = False) -> intervals.EvalResult:
    """The metrics of the dir's checkpoint on data_pattern (no file written),
    as training.eval.evaluate_checkpoint measures them; graphs: in its
    evaluation graph (built on first use), the same values.
    settings.segment_size > 0: the 2019 segment metrics of segment-rated
    files (predict.evaluate_segments), as training.eval --segment_labels.
    keep_ids (with graphs): also the per-video record (videos or ratings),
    whose ids digest the choice's provenance records."""
    average, segment_size = settings.average, settings.segment_size
    if graphs is None:
        return evaluation.evaluate_checkpoint(
            model_dir, checkpoints.find_checkpoint(model_dir), data_pattern,
            average.batch_size, seed=average.seed,
            num_readers=average.num_readers, log=log,
            compression=average.compression, keep_videos=False,
            segment_size=segment_size)
    model = graphs.model_at(model_dir, average.seed)
    if segment_size:
        return predict.evaluate_segments(model, data_pattern, segment_size=segment_size,
                                         batch_size=average.batch_size,
                                         num_readers=average.num_readers, log=log,
                                         compression=average.compression,
                                         keep_ratings=keep_ids)
    return predict.evaluate_model(model, data_pattern, average.batch_size,
                                  num_readers=average.num_readers, log=log,
                                  compression=average.compression,
                                  keep_videos=keep_ids)


def evaluate(output_dir: str, eval_data_pattern: str, batch_size: int, seed: int,
             num_readers: int, log: Optional[Log] = print,
             compression: str = "auto", segment_size: int = 0) -> intervals.EvalResult:
    """Evaluates the averaged checkpoint; writes eval_results.json into output_dir
    (segment_size > 0: the segment metrics, to segment_eval_results.json)."""
    path = checkpoints.find_checkpoint(output_dir)
    result = evaluation.evaluate_checkpoint(output_dir, path, eval_data_pattern, batch_size,
                                            seed=seed, num_readers=num_readers, log=log,
                                            compression=compression, segment_size=segment_size)
    # The settings training.eval keys it by (its defaults), so that its
    # --skip_evaluated finds this evaluation.
    if segment_size:
        if log:
            log(result.summary(os.path.basename(path)))
        eval_results.record(output_dir, eval_results.measurement(
            path, eval_data_pattern, seed=seed, segment_size=segment_size), result)
        return result
    if log:
        log(result.summary(os.path.basename(path)))
    evaluation.write_results(output_dir, eval_results.measurement(
        path, eval_data_pattern, seed=seed, top_k=DEFAULT_TOP_K), result)
    return result


def _window_settings() -> WindowSettings:
    """The averaging settings of the flags, shared by the candidates and the result."""
    return WindowSettings(output_dir=FLAGS.output_dir, overwrite=FLAGS.overwrite,
                          segment_size=_segment_size(), average=AverageSettings(
        swa_start=FLAGS.swa_start, swa_end=FLAGS.swa_end, bn_statistics=FLAGS.bn_statistics,
        recompute_batches=FLAGS.recompute_batches, train_data_pattern=FLAGS.train_data_pattern,
        batch_size=FLAGS.batch_size, seed=FLAGS.seed, num_readers=FLAGS.num_readers,
        compression=FLAGS.compression))


def _choose_and_install(log: Log) -> None:
    """--choose_window_on: writes the output dir as the best window's average."""
    if FLAGS.last_n is not None:
        raise UserError("--last_n and --choose_window_on: give one (the choice sets N)")
    files = readers.resolve_files(FLAGS.choose_window_on, "choose_window_on")
    _check_records(files, "choose_window_on")
    _check_dirs(FLAGS.train_dir, FLAGS.output_dir, FLAGS.overwrite)
    available = select_checkpoints(FLAGS.train_dir, FLAGS.swa_start, FLAGS.swa_end,
                                   None if FLAGS.swa_start is not None else 10 ** 9)
    windows = candidate_windows(FLAGS.windows, len(available))
    log(f"choosing the window among {windows} on {FLAGS.choose_window_on}")
    choose_window(FLAGS.train_dir, FLAGS.choose_window_on, windows, _window_settings(), log)


def _segment_size() -> int:
    """--segment_size with --segment_labels, else 0 (video level)."""
    return FLAGS.segment_size if FLAGS.segment_labels else 0


def _check_records(files: Sequence[str], flag_name: str) -> None:
    """Refuses, before any work, records the evaluation cannot use: without
    labels, or with --segment_labels without the 2019 segment ratings."""
    if _segment_size():
        members.check_dir_segment_records(FLAGS.train_dir, files, flag_name, _segment_size(),
                                          FLAGS.compression)
    else:
        members.check_dir_records(FLAGS.train_dir, files, flag_name, "evaluation",
                                  FLAGS.compression)


def main(argv) -> None:
    del argv
    if FLAGS.segment_labels and not (FLAGS.choose_window_on or FLAGS.eval_data_pattern):
        raise UserError("--segment_labels: applies to --choose_window_on and "
                        "--eval_data_pattern; give one of them")
    if FLAGS.eval_data_pattern:
        _check_records(readers.resolve_files(FLAGS.eval_data_pattern, "eval_data_pattern"),
                       "eval_data_pattern")
    log = lambda line: print(line, flush=True)  # noqa: E731
    if FLAGS.choose_window_on:
        _choose_and_install(log)
    else:
        average(FLAGS.train_dir, FLAGS.output_dir, FLAGS.swa_start, FLAGS.swa_end,
                FLAGS.last_n, FLAGS.bn_statistics, FLAGS.recompute_batches,
                FLAGS.train_data_pattern, FLAGS.batch_size, FLAGS.seed, FLAGS.num_readers,
                FLAGS.overwrite, log, FLAGS.compression)
    if FLAGS.eval_data_pattern:
        evaluate(FLAGS.output_dir, FLAGS.eval_data_pattern, FLAGS.batch_size, FLAGS.seed,
                 FLAGS.num_readers, log, FLAGS.compression, _segment_size())


if __name__ == "__main__":
    define_flags()
    run_main(main)
