"""The evaluations of a model dir, keyed by what they measured: the one
reader and writer of eval_results.json (video level: training.eval,
swa.average, ensemble.build write it; ensemble.report reads it) and of
segment_eval_results.json (2019 segments: training.eval --segment_labels,
swa.average; ensemble.segment_report). Both are a stage_files.EvaluationStore::

    {<the latest evaluation's fields>,
     "key": "<the latest evaluation's key>",
     "evaluations": {"<key>": {<an evaluation's fields>}, ...}}

Keys (``KINDS``): video level ``<checkpoint>|<eval_data_pattern>|
bn_statistics=<mode>[:<batches>]|frame_sampling=..|seed=..|top_k=..|
bf16_compute=..`` (the checkpoint relative to the dir when inside it; None:
"default"); segments ``<checkpoint base name>|<eval_data_pattern>|
<setting>=<value>|...`` (its settings sorted by name, the refinement's only
when it refines). An evaluation with the same key is the same measurement
taken again and replaces that entry; every other entry is kept. An
eval_results.json of the earliest format (no "evaluations") is kept as an
entry, its unrecorded settings so named in its key. A damaged file is a
one-line UserError naming it and the key, and is left as it is.

Each evaluation names its record beside the file (``videos_file``: each
video's top-k under eval_videos/, ``ratings_file``: each rating under
segment_eval_ratings/; training.intervals). No TensorFlow: reports read it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Callable, Dict, Optional

from training import checkpoints, intervals
from training.cli import UserError
from training.flags import comma_list
from training.stage_files import Evaluation, EvaluationStore, read_record, write_record

EVAL_RESULTS = "eval_results.json"
SEGMENT_RESULTS = "segment_eval_results.json"
UNRECORDED = "unrecorded"


def absolute_pattern(data_pattern: str) -> str:
    """A data pattern with each local glob made absolute (gs:// and the like
    are kept as they are)."""
    return ",".join(part if "://" in part else os.path.abspath(part)
                    for part in comma_list(data_pattern))


def checkpoint_name(directory: str, checkpoint: str) -> str:
    """The checkpoint relative to the dir when it is inside it, else absolute."""
    real_dir, real = os.path.realpath(directory), os.path.realpath(checkpoint)
    if real.startswith(real_dir + os.sep):
        return os.path.relpath(real, real_dir)
    return os.path.abspath(checkpoint)


def video_key(directory: str, evaluation: Evaluation, unset: str = "default") -> str:
    """The key of a video-level evaluation of `directory` (module docstring);
    unset: the name of a None setting (UNRECORDED in the earliest files)."""
    def part(value: object) -> str:
        return unset if value is None else str(value)

    bn_mode = part(evaluation.bn_statistics)
    if bn_mode == "recompute":
        bn_mode += f":{part(evaluation.recompute_batches)}"
    return "|".join([
        checkpoint_name(directory, evaluation.checkpoint) if evaluation.checkpoint
        else UNRECORDED, evaluation.eval_data_pattern or UNRECORDED, f"bn_statistics={bn_mode}",
        *(f"{name}={part(getattr(evaluation, name))}"
          for name in ("frame_sampling", "seed", "top_k", "bf16_compute"))])


def segment_key(directory: str, evaluation: Evaluation) -> str:
    """The key of a segment evaluation (module docstring; `directory` unused)."""
    del directory
    names = ["segment_size", *Evaluation.SEGMENT_SETTINGS]
    if evaluation.segment_refine_top_k:
        names += ["segment_refine_top_k", "segment_refine_model"]
    return "|".join([os.path.basename(evaluation.checkpoint), str(evaluation.eval_data_pattern)]
                    + [f"{name}={getattr(evaluation, name)}" for name in sorted(names)])


@dataclasses.dataclass(frozen=True)
class Kind:
    """One of the two stores: its file, the dir of its records, its key."""
    file_name: str
    records_dir: str
    key: Callable[[str, Evaluation], str]


VIDEO = Kind(EVAL_RESULTS, "eval_videos", video_key)
SEGMENT = Kind(SEGMENT_RESULTS, "segment_eval_ratings", segment_key)
KINDS = (VIDEO, SEGMENT)


def kind_of(evaluation: Evaluation) -> Kind:
    return SEGMENT if evaluation.is_segment else VIDEO


def results_path(directory: str, kind: Kind = VIDEO) -> str:
    return os.path.join(directory, kind.file_name)


def measurement(checkpoint: str, data_pattern: str, *, bn_statistics: str = "moving",
                recompute_batches: Optional[int] = None, frame_sampling: Optional[str] = None,
                seed: Optional[int] = None, top_k: Optional[int] = None,
                bf16_compute: Optional[str] = None, segment_size: Optional[int] = None,
                refine_top_k: int = 0, refine_model: Optional[str] = None) -> Evaluation:
    """An evaluation of checkpoint on data_pattern with these settings, before
    its metrics: what find looks up and record adds to. segment_size: a 2019
    segment evaluation, refined by the top refine_top_k classes of
    refine_model ("self" or its checkpoint) when refine_top_k > 0."""
    return Evaluation(
        checkpoint=checkpoint, global_step=checkpoints.checkpoint_step(checkpoint) or 0,
        eval_data_pattern=absolute_pattern(data_pattern), bn_statistics=bn_statistics,
        recompute_batches=recompute_batches, frame_sampling=frame_sampling, seed=seed,
        top_k=top_k, bf16_compute=bf16_compute, segment_size=segment_size,
        segment_refine_top_k=int(refine_top_k) if refine_top_k else None,
        segment_refine_model=refine_model if refine_top_k else None)


def read_store(directory: str, kind: Kind = VIDEO) -> Optional[EvaluationStore]:
    """The dir's store of that kind, None when it has none; a damaged one is a
    one-line UserError naming the file (and the key)."""
    path = results_path(directory, kind)
    if not os.path.exists(path):
        return None
    try:
        return read_record(EvaluationStore, path)
    except UserError as err:
        raise UserError(f"{err}; left as it is (repair it, or move it away to start a "
                        f"new one)") from None


def read_evaluations(directory: str, kind: Kind = VIDEO) -> Dict[str, Evaluation]:
    """{key: evaluation} of the dir's store ({} when it has none)."""
    store = read_store(directory, kind)
    if store is None:
        return {}
    if store.evaluations is None:
        if kind is SEGMENT:
            return {}
        # The earliest format: one evaluation, its settings then unrecorded.
        return {video_key(directory, store.latest, UNRECORDED): store.latest}
    return dict(store.evaluations)


def latest_evaluation(directory: str, kind: Kind = VIDEO) -> Optional[Evaluation]:
    """The latest evaluation of the dir (the top-level fields), None without a store."""
    store = read_store(directory, kind)
    return None if store is None else store.latest


def record_path(directory: str, evaluation: Evaluation) -> Optional[str]:
    """The path of the evaluation's per-video or per-rating record (None: it has none)."""
    name = evaluation.ratings_file if evaluation.is_segment else evaluation.videos_file
    return os.path.join(directory, name) if name else None


def find(directory: str, measured: Evaluation) -> Optional[Evaluation]:
    """The recorded evaluation with the key of `measured` (measurement) when
    its record is kept (--skip_evaluated: a rerun of the pipeline skips it),
    else None. Each kind reads its own file only: a video-level evaluation of
    the same files is another measurement than a segment one."""
    kind = kind_of(measured)
    found = read_evaluations(directory, kind).get(kind.key(directory, measured))
    path = None if found is None else record_path(directory, found)
    if found is None or path is None or not os.path.isfile(path) \
            or (kind is SEGMENT and found.segment_map is None):
        return None
    return found


def _float(value: Optional[float]) -> Optional[float]:
    return None if value is None else float(value)


def _with_metrics(measured: Evaluation, result: intervals.EvalResult,
                  eval_files: Optional[int]) -> Evaluation:
    """measured with result's metrics (video level: as floats, as every
    release wrote them, and eval_files); a metric that is not of its kind is
    a ValueError."""
    allowed = Evaluation.SEGMENT_METRICS if measured.is_segment else Evaluation.VIDEO_METRICS
    for name, value in result.metrics().items():
        if name not in allowed:
            raise ValueError(f"{name}={value!r}: not a metric of this kind of evaluation")
    if measured.is_segment:
        return dataclasses.replace(
            measured, segment_map=result.segment_map, segment_gap=result.segment_gap,
            num_segments=result.num_segments, num_positive_segments=result.num_positive_segments,
            num_rated_classes=result.num_rated_classes,
            num_classes_without_positives=result.num_classes_without_positives,
            num_retrieved=result.num_retrieved,
            num_positive_retrieved=result.num_positive_retrieved)
    return dataclasses.replace(
        measured, eval_files=eval_files, gap=_float(result.gap),
        hit_at_one=_float(result.hit_at_one), perr=_float(result.perr),
        map=_float(result.map), loss=_float(result.loss),
        num_examples=_float(result.num_examples))


def record(directory: str, measured: Evaluation, result: intervals.EvalResult,
           eval_files: Optional[int] = None) -> Evaluation:
    """Adds the evaluation `measured` (measurement) with the metrics of
    `result` (predict.evaluate_model's, or evaluate_segments') to the dir's
    store of its kind, replacing only the entry of the same key, and makes it
    the latest; returns it. result's videos (intervals.VideoTopK) or
    ratings (intervals.SegmentRatings), when kept, is written under the
    kind's records dir and named by the evaluation. eval_files: how many
    files the pattern matched (video level)."""
    kind = kind_of(measured)
    evaluations = read_evaluations(directory, kind)
    key = kind.key(directory, measured)
    evaluation = _with_metrics(measured, result, eval_files)
    name = os.path.join(kind.records_dir,
                        hashlib.sha1(key.encode("utf-8")).hexdigest()[:16] + ".npz")
    if result.videos is not None and kind is VIDEO:
        intervals.save(os.path.join(directory, name), result.videos)
        evaluation = dataclasses.replace(evaluation, videos_file=name,
                                         video_ids_sha1=result.videos.ids_digest())
    if result.ratings is not None and kind is SEGMENT:
        intervals.save_segment_ratings(os.path.join(directory, name), result.ratings)
        evaluation = dataclasses.replace(evaluation, ratings_file=name)
    evaluations[key] = evaluation
    write_record(results_path(directory, kind), EvaluationStore(evaluation, key, evaluations))
    return evaluation


def videos_of(directory: str, evaluation: Evaluation) -> intervals.VideoTopK:
    """The per-video record of a video-level evaluation of `directory`; one
    without it (evaluated before records were kept) is a UserError saying so."""
    if not evaluation.videos_file:
        raise UserError(f"{results_path(directory)}: the evaluation of {evaluation.checkpoint} "
                        f"has no per-video record; evaluate it again")
    return intervals.load(os.path.join(directory, evaluation.videos_file))


def ratings_of(directory: str, evaluation: Evaluation) -> intervals.SegmentRatings:
    """The per-rating record of a segment evaluation of `directory` (the
    video id, start time, rated class, 0/1 rating, score and whether the pair
    is retrieved: all the 2019 metric needs); one without it is a UserError
    saying so, a damaged file one naming it."""
    if not evaluation.ratings_file:
        raise UserError(f"{results_path(directory, SEGMENT)}: the segment evaluation of "
                        f"{evaluation.checkpoint} has no ratings file; evaluate it again")
    return intervals.load_segment_ratings(os.path.join(directory, evaluation.ratings_file))
