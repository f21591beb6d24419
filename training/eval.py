"""Evaluates checkpoints: python -m training.eval --train_dir=... --eval_data_pattern=...

--train_dir may also be an export (ensemble.build's ensemble dir, or an
extracted upload): its one model is evaluated once, as ensemble.build
--eval_data_pattern evaluates it, video level or with --segment_labels.
--record_kind: the records' layout (training.record_layouts), by default the
one model_flags.json records; segment (--segment_labels) evaluates a
frame-level model on 2019 segment-rated records.

Prints and writes Hit@1, PERR, mAP, GAP@20 and the loss (eval_results.json,
which keeps every evaluation keyed by what it measured: training.eval_results;
and TensorBoard events under <train_dir>/eval). Evaluates the latest
checkpoint (or --checkpoint_file) once with --run_once, otherwise keeps
watching the train dir and evaluates each new checkpoint. Train, SWA and
bfloat16 dirs alike; a bfloat16 checkpoint computes as --bf16_compute says.

--bn_statistics: ``moving`` evaluates the checkpoint's batch-norm moving
statistics; ``recompute`` evaluates a temporary copy whose statistics are
recomputed on --recompute_batches batches of --train_data_pattern
(training.bn_statistics, as swa.average does; float32 checkpoints only).
With ``moving``, a checkpoint whose statistics cannot have converged yet gets
a one-line note (training.bn_statistics.convergence_note).
"""
from __future__ import annotations

import os
import time
from typing import Callable, Optional

from absl import flags

from models.tf_compat import tf
from training import bn_statistics as bn_stats
from training import (
    checkpoints,
    eval_results,
    intervals,
    locks,
    members,
    metrics,
    precision,
    predict,
    readers,
    record_layouts,
    segment_refine,
)
from training import flags as shared_flags
from training.cli import UserError, run_main
from training.stage_files import Evaluation
from training.submission import DEFAULT_TOP_K

FLAGS = flags.FLAGS

# The lock of an evaluation's results in a dir (training.locks; not the trainer's).
EVAL_LOCK = ".eval.lock"


def define_flags() -> None:
    shared_flags.define_shared_flags({
        "train_dir": "", "eval_data_pattern": "", "checkpoint_file": "", "batch_size": 256,
        "top_k": DEFAULT_TOP_K, "num_readers": 4, "frame_sampling": None, "seed": 2018,
        "skip_corrupt_records": False, "bf16_compute": "", "compression": "auto",
        "train_data_pattern": ("", "(for --bn_statistics=recompute)"),
        "recompute_batches": bn_stats.DEFAULT_RECOMPUTE_BATCHES})
    shared_flags.define(flags.DEFINE_bool, "run_once", False,
                        "Evaluate once and exit (else watch --train_dir).")
    shared_flags.define(flags.DEFINE_integer, "watch_seconds", 60, "Polling period while watching.")
    shared_flags.define(flags.DEFINE_bool, "skip_evaluated", False, "Skip a checkpoint already "
                        "evaluated with these settings on these files (its per-video record "
                        "kept): a rerun of the pipeline does not measure it again.")
    # A string checked by bn_statistics.check_eval_mode, not an absl enum: an
    # unknown mode is then a one-line error like every other flag mistake.
    shared_flags.define(flags.DEFINE_string, "bn_statistics", "moving",
                        "BN moving statistics: the checkpoint's (moving), or recomputed "
                        "(recompute) on --recompute_batches batches of --train_data_pattern; "
                        "the user's checkpoint is never changed.")
    shared_flags.define_shared("record_kind", "", "(unset: the one model_flags.json records; "
                               "segment: Segment_MAP and Segment_GAP of a frame-level model)")
    shared_flags.define_shared("segment_labels", False,
                               "(YouTube-8M 3/frame/validate): score each rated segment on "
                               "its frames; prints and writes Segment_MAP and Segment_GAP to "
                               "segment_eval_results.json (docs/formats.md 2.7).")
    shared_flags.define(flags.DEFINE_integer, "segment_size", 5,
                        "Frames per rated segment (--record_kind=segment).")
    segment_refine.define_flags()


def evaluate_checkpoint(model_dir: str, checkpoint_path: str, data_pattern: str,
                        batch_size: int = 256, top_k: int = DEFAULT_TOP_K,
                        frame_sampling: Optional[str] = None, seed: int = 2018,
                        num_readers: int = 4, log: Optional[Callable[[str], None]] = None,
                        skip_corrupt: bool = False,
                        bf16_compute: Optional[str] = None,
                        recompute: Optional[bn_stats.Recompute] = None,
                        compression: str = "auto", keep_videos: bool = True,
                        segment_size: int = 0,
                        refine: Optional[segment_refine.Refine] = None,
                        record_kind: Optional[str] = None) -> intervals.EvalResult:
    """Metrics of one checkpoint of a model dir (training.predict does the work;
    a bfloat16 checkpoint computes in the --bf16_compute mode, None: the default).
    recompute: evaluate it with BN statistics recomputed so (the checkpoint
    itself is only read); None: with its moving statistics. keep_videos: the
    result's videos holds each video's top-k (predict.evaluate_model).
    segment_size > 0: the 2019 segment metrics of segment-rated records
    instead (_segment_metrics; keep_videos: with their ratings), refined
    by refine (training.segment_refine) when given. record_kind: the
    records' layout when not the model's (predict.LoadedModel.record_kind)."""
    if recompute is not None:
        with bn_stats.recomputed_checkpoint(model_dir, checkpoint_path, recompute,
                                            log) as recomputed:
            return evaluate_checkpoint(model_dir, recomputed, data_pattern, batch_size, top_k,
                                       frame_sampling, seed, num_readers, log, skip_corrupt,
                                       bf16_compute, compression=compression,
                                       keep_videos=keep_videos, segment_size=segment_size,
                                       refine=refine, record_kind=record_kind)
    model = predict.open_model(model_dir, frame_sampling, seed, bf16_compute,
                               checkpoint=checkpoint_path, record_kind=record_kind)
    try:
        if segment_size:
            return _segment_metrics(model, data_pattern, segment_size, batch_size, num_readers,
                                    log, skip_corrupt, compression, keep_videos, refine,
                                    (frame_sampling, seed, bf16_compute))
        return predict.evaluate_model(model, data_pattern, batch_size, top_k, num_readers, log,
                                      skip_corrupt=skip_corrupt, compression=compression,
                                      keep_videos=keep_videos)
    finally:
        model.close()


def _segment_metrics(model: predict.LoadedModel, data_pattern: str, segment_size: int,
                     batch_size: int, num_readers: int, log, skip_corrupt: bool,
                     compression: str, keep_ratings: bool,
                     refine: Optional[segment_refine.Refine], model_settings: tuple
                     ) -> intervals.EvalResult:
    """predict.evaluate_segments of the model; with refine, first its video
    top classes (one pass over the videos: memory videos x K), from the
    model itself or the refine model opened with model_settings
    (frame_sampling, seed, bf16_compute)."""
    top = None
    if refine is not None:
        frame_sampling, seed, bf16_compute = model_settings
        with segment_refine.opened(refine, model, frame_sampling, seed,
                                   bf16_compute) as refiner:
            top = segment_refine.video_top_classes(
                refiner, refine.top_k, batch_size, data_pattern, flag_name="eval_data_pattern",
                compression=compression, log=log)
    return predict.evaluate_segments(model, data_pattern, segment_size, batch_size,
                                     num_readers, log, skip_corrupt=skip_corrupt,
                                     compression=compression, top_classes=top,
                                     keep_ratings=keep_ratings)


def write_results(train_dir: str, measured: Evaluation, result: intervals.EvalResult) -> None:
    """Adds the video-level evaluation `measured` (eval_results.measurement:
    its key) with result's metrics to eval_results.json and writes the
    TensorBoard events under <train_dir>/eval."""
    num_files = len(readers.resolve_files(measured.eval_data_pattern or "", "eval_data_pattern"))
    eval_results.record(train_dir, measured, result, num_files)
    writer = tf.summary.FileWriter(os.path.join(train_dir, "eval"))
    summary = tf.Summary(value=[tf.Summary.Value(tag=f"eval/{key}", simple_value=float(value))
                                for key, value in result.metrics().items()])
    writer.add_summary(summary, measured.global_step)
    writer.close()


def _evaluate_segments(path: str, recompute: Optional[bn_stats.Recompute],
                       refine: Optional[segment_refine.Refine] = None) -> None:
    """--segment_labels: one checkpoint's 2019 segment metrics, printed and
    written with their per-rating record (--skip_evaluated: printed from
    segment_eval_results.json when this checkpoint was evaluated so, with
    the same refinement, on these files before)."""
    measured = _measurement(path, recompute, segments=True, refine=refine)
    if FLAGS.skip_evaluated:
        done = eval_results.find(FLAGS.train_dir, measured)
        if done:
            print(metrics.format_segment_summary(done.to_json(), os.path.basename(path)
                                                 + " (evaluated before)"), flush=True)
            return
    result = evaluate_checkpoint(
        FLAGS.train_dir, path, FLAGS.eval_data_pattern, FLAGS.batch_size, FLAGS.top_k,
        FLAGS.frame_sampling, FLAGS.seed, FLAGS.num_readers,
        log=lambda line: print(line, flush=True), skip_corrupt=FLAGS.skip_corrupt_records,
        bf16_compute=FLAGS.bf16_compute or None, recompute=recompute,
        compression=FLAGS.compression, segment_size=FLAGS.segment_size, refine=refine)
    print(result.summary(os.path.basename(path)), flush=True)
    eval_results.record(FLAGS.train_dir, measured, result)


def _checkpoint_to_evaluate() -> Optional[str]:
    exported = predict.exported_prefix(FLAGS.train_dir)
    if exported:
        return exported     # an export (ensemble.build) holds one model
    if FLAGS.checkpoint_file:
        return checkpoints.find_checkpoint(FLAGS.checkpoint_file)
    if FLAGS.run_once:
        return checkpoints.checkpoint_in_dir(FLAGS.train_dir)
    # (Watching a live train dir: data files without their index yet are a save
    # in progress.)
    checkpoints.check_state_file(FLAGS.train_dir)
    return checkpoints.latest_checkpoint(FLAGS.train_dir)


def _recompute_settings() -> Optional[bn_stats.Recompute]:
    """The --bn_statistics=recompute settings, checked (None for moving)."""
    if bn_stats.check_eval_mode(FLAGS.bn_statistics) == "moving":
        return None
    bn_stats.check_recompute_flags(FLAGS.train_data_pattern, FLAGS.recompute_batches,
                                   FLAGS.batch_size, checkpoints.read_model_flags(FLAGS.train_dir),
                                   FLAGS.compression)
    return bn_stats.Recompute(FLAGS.train_data_pattern, FLAGS.recompute_batches,
                              FLAGS.batch_size, FLAGS.seed, FLAGS.num_readers, FLAGS.compression)


def _check_exported_flags() -> None:
    """An export (ensemble.build) was fixed when it was built: the flags that
    would change it are refused in one line."""
    for flag, value in (("frame_sampling", FLAGS.frame_sampling),
                        ("bf16_compute", FLAGS.bf16_compute), ("checkpoint_file",
                                                               FLAGS.checkpoint_file)):
        if value:
            raise UserError(f"--{flag}: applies to a train, SWA or bfloat16 dir; "
                            f"{FLAGS.train_dir} is an export (rebuild it with ensemble.build)")
    if FLAGS.bn_statistics != "moving":
        raise UserError(f"--bn_statistics={FLAGS.bn_statistics}: {FLAGS.train_dir} is an "
                        f"export; its batch-norm statistics were fixed by ensemble.build")


def _measurement(path: str, recompute: Optional[bn_stats.Recompute], segments: bool = False,
                 refine: Optional[segment_refine.Refine] = None) -> Evaluation:
    """What the evaluation of checkpoint `path` with the flags measures
    (eval_results.measurement: its key; segments: a 2019 segment one). An
    export's seed is none of ours: its draws were fixed by ensemble.build."""
    seed = None if predict.exported_prefix(FLAGS.train_dir) else FLAGS.seed
    return eval_results.measurement(
        path, FLAGS.eval_data_pattern, frame_sampling=FLAGS.frame_sampling, seed=seed,
        top_k=None if segments else FLAGS.top_k, bf16_compute=FLAGS.bf16_compute or None,
        bn_statistics="moving" if recompute is None else "recompute",
        recompute_batches=None if recompute is None else recompute.num_batches,
        segment_size=FLAGS.segment_size if segments else None,
        refine_top_k=0 if refine is None else refine.top_k,
        refine_model=None if refine is None else segment_refine.identity(refine))


def _evaluate(path: str, recompute: Optional[bn_stats.Recompute],
              refine: Optional[segment_refine.Refine] = None,
              record_kind: Optional[str] = None) -> None:
    """Evaluates one checkpoint of --train_dir; prints and writes the results
    (record_kind: _records_kind's)."""
    if record_kind == record_layouts.SEGMENT:
        return _evaluate_segments(path, recompute, refine)
    log = lambda line: print(line, flush=True)  # noqa: E731
    measured = _measurement(path, recompute)
    if FLAGS.skip_evaluated:
        done = eval_results.find(FLAGS.train_dir, measured)
        if done:
            log(metrics.format_summary(done.to_json(),
                                       os.path.basename(path) + " (evaluated before)"))
            return
    if recompute is None and not predict.exported_prefix(FLAGS.train_dir):
        try:
            note = bn_stats.convergence_note(path)
        except UserError:
            note = None     # a checkpoint that cannot be read: the evaluation says why
        if note:
            log(note)
    result = evaluate_checkpoint(
        FLAGS.train_dir, path, FLAGS.eval_data_pattern, FLAGS.batch_size, FLAGS.top_k,
        FLAGS.frame_sampling, FLAGS.seed, FLAGS.num_readers, log=log,
        skip_corrupt=FLAGS.skip_corrupt_records, bf16_compute=FLAGS.bf16_compute or None,
        recompute=recompute, compression=FLAGS.compression, record_kind=record_kind)
    label = os.path.basename(path) + ("" if recompute is None else " (BN statistics recomputed)")
    log(result.summary(label))
    write_results(FLAGS.train_dir, measured, result)


def _records_kind() -> Optional[str]:
    """The --record_kind (or --segment_labels) of the records; None: the
    model's own, the default."""
    own = checkpoints.read_model_flags(FLAGS.train_dir).layout()
    kind = record_layouts.asked_kind(FLAGS.record_kind, own, {
        "segment_labels": record_layouts.SEGMENT if FLAGS.segment_labels else None})
    return None if kind == own and kind != record_layouts.SEGMENT else kind


def main(argv) -> None:
    del argv
    shared_flags.require(train_dir=FLAGS.train_dir, eval_data_pattern=FLAGS.eval_data_pattern)
    record_kind = _records_kind()
    files = readers.resolve_files(FLAGS.eval_data_pattern, "eval_data_pattern")
    refine = None
    if record_kind == record_layouts.SEGMENT:
        members.check_dir_segment_records(FLAGS.train_dir, files, "eval_data_pattern",
                                          FLAGS.segment_size, FLAGS.compression)
        refine = segment_refine.check(FLAGS.segment_refine_top_k,
                                      FLAGS.segment_refine_model_dir, FLAGS.train_dir, files,
                                      "eval_data_pattern", FLAGS.compression)
    else:
        _refuse_refine_flags()
        members.check_dir_records(FLAGS.train_dir, files, "eval_data_pattern", "evaluation",
                                  FLAGS.compression, record_kind)
    precision.check_bf16_compute(FLAGS.bf16_compute or None)
    if predict.exported_prefix(FLAGS.train_dir):
        _check_exported_flags()
    for kind in eval_results.KINDS:     # a damaged store: refused before the work
        eval_results.read_store(FLAGS.train_dir, kind)
    recompute = _recompute_settings()
    # One evaluator per dir (a trainer writing the dir meanwhile is fine).
    with locks.held(os.path.join(FLAGS.train_dir, EVAL_LOCK),
                    f"--train_dir={FLAGS.train_dir} (its evaluation results)",
                    "wait for that evaluation to finish"):
        _evaluate_until_done(recompute, refine, record_kind)


def _refuse_refine_flags() -> None:
    """The refinement flags are of --segment_labels only."""
    for flag in ("segment_refine_top_k", "segment_refine_model_dir"):
        if FLAGS[flag].value:
            raise UserError(f"--{flag}: refines 2019 segment scores; needs --segment_labels "
                            f"(--record_kind=segment)")


def _evaluate_until_done(recompute: Optional[bn_stats.Recompute],
                         refine: Optional[segment_refine.Refine] = None,
                         record_kind: Optional[str] = None) -> None:
    """Evaluates the latest checkpoint once (--run_once, --checkpoint_file) or
    each new one, watching --train_dir."""
    evaluated = set()
    while True:
        path = _checkpoint_to_evaluate()
        if path is None and FLAGS.run_once:
            raise UserError(f"--train_dir={FLAGS.train_dir}: no checkpoint to evaluate")
        if path is not None and path not in evaluated:
            _evaluate(path, recompute, refine, record_kind)
            evaluated.add(path)
        if FLAGS.run_once or FLAGS.checkpoint_file or predict.exported_prefix(FLAGS.train_dir):
            return
        time.sleep(FLAGS.watch_seconds)


if __name__ == "__main__":
    define_flags()
    run_main(main)
