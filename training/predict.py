"""The one predict loop: load a model dir, stream a data pattern through it.

Every stage that predicts (evaluation, inference, stacking, teacher records,
distillation's teacher metrics) opens its model here and iterates here, so
the batching, the frame-sampling mode, the mapping of data errors to one-line
UserErrors and the progress line exist once.

open_model(dir) takes
  * an exported dir (``inference_model.meta`` present, as ensemble.build or
    an uploaded tgz writes it): loaded the starter way, import_meta_graph +
    restore, fed through the collections ``input_batch_raw`` and
    ``num_frames``, fetching ``predictions``; its frame sampling and
    bfloat16 mode were fixed when it was built; or
  * a single model dir (``model.ckpt-*``: train, SWA or bfloat16 dir): built
    from its model_flags.json under ``tower/`` (training.member_graph) and
    restored; frame_sampling, seed and bf16_compute apply.
open_members(dirs) puts several model dirs in one graph (stacking).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from models.tf_compat import tf
from training import (
    checkpoints,
    intervals,
    losses,
    member_graph,
    metrics,
    model_builder,
    readers,
    segment_readers,
)
from training.cli import UserError, first_line
from training.members import Member, check_no_duplicates, load_member, read_member_flags
from training.model_flags import ModelFlags
from training.progress import Log, Progress
from training.submission import DEFAULT_TOP_K

INFERENCE_MODEL = "inference_model"   # the exported graph and checkpoint prefix

# name -> (tensor of the model's graph, batch -> extra feed dict)
Fetches = Mapping[str, Tuple[Any, Callable[[Dict[str, np.ndarray]], Dict]]]


@dataclass
class LoadedModel:
    model_dir: str
    kind: str                       # "ensemble", "single" or "members"
    model_flags: ModelFlags
    graph: Any
    session: Any
    input_batch_raw: Any
    num_frames: Any
    predictions: Any
    variables: Optional[List[Any]] = None        # single: what an export saves
    members: Optional[List[Member]] = None       # members: the member dirs
    member_predictions: Optional[List[Any]] = None
    pipelines: Dict[Any, Any] = field(default_factory=dict)   # by-file input pipelines
    restoring: Optional[Tuple[Any, List[Any]]] = None   # single: (EnsembleGraph, savers)
    num_threads: int = 0                         # session_config's
    # The layout its records are read in (training.record_layouts; None: the
    # model's own, model_flags.json's): another kind of its level (--record_kind).
    record_kind: Optional[str] = None

    @property
    def num_classes(self) -> int:
        return self.model_flags.num_classes

    def close(self) -> None:
        self.session.close()


@dataclass
class Batch:
    ids: np.ndarray                 # [B] bytes
    predictions: np.ndarray         # [B, C]
    labels: np.ndarray              # [B, C]
    extras: Dict[str, Any]          # the fetches' values (an array, or a list of them)
    inputs: Dict[str, np.ndarray]   # the parsed batch of the reader


def _one_from_collection(graph, name: str, meta: str):
    items = graph.get_collection(name)
    if len(items) != 1:
        raise UserError(f"{meta}: the collection {name!r} holds {len(items)} tensors, "
                        f"expected 1")
    return items[0]


def session_config(num_threads: int = 0):
    """Session options: num_threads > 0 caps TensorFlow's thread pools (the
    workers of a sharded inference share one CPU)."""
    config = tf.ConfigProto(allow_soft_placement=True)
    config.gpu_options.allow_growth = True
    if num_threads > 0:
        # Two inter-op threads keep the input pipeline going beside the math.
        config.intra_op_parallelism_threads = num_threads
        config.inter_op_parallelism_threads = max(2, num_threads)
    return config


def _open_exported(model_dir: str, model_flags: ModelFlags,
                   num_threads: int = 0) -> LoadedModel:
    prefix = os.path.join(model_dir, INFERENCE_MODEL)
    checkpoints.check_state_file(model_dir)
    if not os.path.isfile(prefix + ".index"):
        raise UserError(f"{prefix}.index: missing (the meta graph has no checkpoint)")
    checkpoints.verify_checkpoint(prefix)
    graph = tf.Graph()
    with graph.as_default():
        try:
            saver = tf.train.import_meta_graph(prefix + ".meta", clear_devices=True)
        except Exception as err:  # noqa: BLE001 (a corrupt .meta raises many kinds)
            raise UserError(f"{prefix}.meta: cannot import the graph "
                            f"({first_line(err)})") from None
        if saver is None:
            raise UserError(f"{prefix}.meta: holds no saver (no variables to restore)")
        tensors = [_one_from_collection(graph, name, prefix + ".meta")
                   for name in ("input_batch_raw", "num_frames", "predictions")]
        local_init = tf.local_variables_initializer()
    session = tf.Session(graph=graph, config=session_config(num_threads))
    try:
        saver.restore(session, prefix)
        session.run(local_init)
    except tf.errors.OpError as err:
        session.close()
        raise UserError(checkpoints.read_failure(err, prefix)
                        or f"{prefix}: cannot restore ({first_line(err)})") from None
    return LoadedModel(model_dir, "ensemble", model_flags, graph, session, *tensors)


def _open_graph(members: Sequence[Member], seed: int, num_threads: int = 0, **graph_args: Any):
    """(graph, session, EnsembleGraph, savers) of members, restored."""
    graph = tf.Graph()
    with graph.as_default():
        tf.set_random_seed(seed)
        built = member_graph.build_ensemble_graph(
            members, [1.0 / len(members)] * len(members), **graph_args)
        savers = member_graph.member_savers(members, built)
    return graph, _restored_session(graph, members, savers, num_threads), built, savers


def _restored_session(graph: tf.Graph, members: Sequence[Member], savers: List[Any],
                      num_threads: int) -> tf.Session:
    """A new session on graph with the members restored (closed on a UserError)."""
    session = tf.Session(graph=graph, config=session_config(num_threads))
    try:
        member_graph.restore_members(session, members, savers)
    except UserError:
        session.close()
        raise
    return session


def exported_prefix(model_dir: str) -> Optional[str]:
    """<model_dir>/inference_model when the dir is an export (ensemble.build,
    or an extracted upload): its meta graph is present. None otherwise."""
    prefix = os.path.join(model_dir, INFERENCE_MODEL)
    return prefix if os.path.isfile(prefix + ".meta") else None


def open_model(model_dir: str, frame_sampling: Optional[str] = None, seed: int = 2018,
               bf16_compute: Optional[str] = None, checkpoint: Optional[str] = None,
               num_threads: int = 0, record_kind: Optional[str] = None) -> LoadedModel:
    """An exported dir or a single model dir, ready to predict (module docstring).
    checkpoint: a single model dir's checkpoint to use (default: its latest);
    num_threads: session_config; record_kind: LoadedModel.record_kind."""
    if not os.path.isdir(model_dir):
        raise UserError(f"--train_dir={model_dir}: no such dir")
    model_flags = read_member_flags(model_dir)
    if exported_prefix(model_dir):
        for flag, value in (("frame_sampling", frame_sampling), ("bf16_compute", bf16_compute)):
            if value:
                raise UserError(f"--{flag}: applies to a single model dir; {model_dir} was "
                                f"fixed by ensemble.build (rebuild it with --{flag})")
        exported = _open_exported(model_dir, model_flags, num_threads)
        exported.record_kind = record_kind
        return exported
    if checkpoint is None and checkpoints.checkpoint_in_dir(model_dir) is None:
        raise UserError(f"--train_dir={model_dir}: neither {INFERENCE_MODEL}.meta nor a "
                        f"{checkpoints.CHECKPOINT_PREFIX}-<step> checkpoint")
    member = load_member(model_dir, checkpoint)
    graph, session, single, savers = _open_graph([member], seed, num_threads, tile_num=1,
                                                 frame_sampling=frame_sampling,
                                                 scopes=[checkpoints.MODEL_SCOPE],
                                                 bf16_compute=bf16_compute)
    return LoadedModel(model_dir, "single", model_flags, graph, session, single.input_batch_raw,
                       single.num_frames, single.predictions, single.export_var_list,
                       restoring=(single, savers), num_threads=num_threads,
                       record_kind=record_kind)


def reopen_single(model: LoadedModel, model_dir: str, checkpoint: str) -> None:
    """Points a single model (open_model) at another checkpoint of the same
    model, without building its graph again: a new session on the graph,
    the checkpoint restored (after the fit checks open_model makes). The
    new session starts its random ops and input pipelines afresh, so what
    it predicts equals what open_model(model_dir, checkpoint=checkpoint)
    with the same settings would. model_dir: the checkpoint's dir (its
    model_flags.json must describe the same model)."""
    if model.kind != "single" or model.restoring is None:
        raise ValueError(f"reopen_single: {model.model_dir} is not a single model dir")
    member = load_member(model_dir, checkpoint)
    if member.model_flags != model.model_flags:
        raise UserError(f"{model_dir}: its {checkpoints.MODEL_FLAGS_FILE} describes another "
                        f"model than {model.model_dir}'s")
    built, savers = model.restoring
    member_graph.check_members_fit([member], built)
    session = _restored_session(model.graph, [member], savers, model.num_threads)
    model.close()
    model.session, model.model_dir = session, model_dir


def open_members(model_dirs: Sequence[str], tile_num: int = 1,
                 frame_sampling: Optional[str] = None, seed: int = 2018) -> LoadedModel:
    """Several model dirs in one graph, each member's predictions fetchable
    (member_predictions); frame-sampling members are tiled as in the ensemble."""
    if not model_dirs:
        raise UserError("--model_dirs: required")
    check_no_duplicates(model_dirs)
    members = [load_member(model_dir) for model_dir in model_dirs]
    graph, session, built, _ = _open_graph(members, seed, tile_num=tile_num,
                                           frame_sampling=frame_sampling)
    return LoadedModel(",".join(m.model_dir for m in members), "members",
                       members[0].model_flags, graph, session, built.input_batch_raw,
                       built.num_frames, built.predictions, members=members,
                       member_predictions=built.member_predictions)


def predict_batch(model: LoadedModel, features: np.ndarray, num_frames: np.ndarray,
                  fetches: Optional[Mapping[str, Any]] = None,
                  extra_feed: Optional[Dict] = None) -> Dict[str, np.ndarray]:
    """Runs {"predictions", **fetches} on one batch fed as the Kaggle contract says."""
    feed = {model.input_batch_raw: features, model.num_frames: num_frames, **(extra_feed or {})}
    try:
        return model.session.run({"predictions": model.predictions, **(fetches or {})}, feed)
    except tf.errors.InvalidArgumentError as err:
        raise UserError(f"{model.model_dir}: the model rejects the input "
                        f"({first_line(err)})") from None


def _run_batches(model: LoadedModel, next_batch, flag_name: str, files_text: str,
                 compression: str = "auto") -> Iterator[Dict[str, np.ndarray]]:
    """Runs next_batch until the data ends; data errors become UserErrors."""
    while True:
        try:
            yield model.session.run(next_batch)
        except tf.errors.OutOfRangeError:
            return
        except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as err:
            raise UserError(f"--{flag_name}: "
                            f"{readers.describe_data_error(err, files_text, compression)}"
                            ) from None


def _dataset_batches(model: LoadedModel, data_pattern: str, batch_size: int, reader,
                     num_readers: int, flag_name: str, skip_corrupt: bool,
                     compression: str = "auto") -> Iterator[Dict[str, np.ndarray]]:
    """The parsed batches of data_pattern, read in the model's graph."""
    with model.graph.as_default():
        dataset = readers.make_dataset(reader, data_pattern, batch_size, training=False,
                                       num_epochs=1, num_parallel_reads=num_readers,
                                       flag_name=flag_name, skip_corrupt=skip_corrupt,
                                       compression=compression)
        next_batch = tf.data.make_one_shot_iterator(dataset).get_next()
    return _run_batches(model, next_batch, flag_name, data_pattern, compression)


def _file_batches(model: LoadedModel, files: Sequence[str], batch_size: int, reader,
                  flag_name: str, skip_corrupt: bool, compression: str = "auto"
                  ) -> Iterator[Dict[str, np.ndarray]]:
    """The parsed batches of `files`, one file after the other (each file
    batched from its start), through one input pipeline per model and batch
    size that is fed the file names and their compressions (the graph does
    not grow per file)."""
    # Keyed by the reader's settings too: a padded and an unpadded segment
    # reader (or two segment sizes) need pipelines of their own.
    key = (batch_size, skip_corrupt, type(reader).__name__, repr(sorted(vars(reader).items())))
    if key not in model.pipelines:
        with model.graph.as_default():
            names = tf.placeholder(tf.string, [None], name="input_files")
            kinds = tf.placeholder(tf.string, [None], name="input_compressions")
            dataset = readers.make_file_dataset(reader, names, batch_size, skip_corrupt, kinds)
            iterator = tf.data.make_initializable_iterator(dataset)
            model.pipelines[key] = (names, kinds, iterator.initializer, iterator.get_next())
    names, kinds, initializer, next_batch = model.pipelines[key]
    model.session.run(initializer, {names: list(files),
                                    kinds: readers.file_compressions(files, compression)})
    return _run_batches(model, next_batch, flag_name, ",".join(files), compression)


def _trimmed(batch: Dict[str, np.ndarray], take: int) -> Dict[str, np.ndarray]:
    return {key: value[:take] for key, value in batch.items()}


def iterate_predictions(model: LoadedModel, data_pattern: str, batch_size: int,
                        num_readers: int = 1, flag_name: str = "input_data_pattern",
                        fetches: Optional[Fetches] = None, skip_corrupt: bool = False,
                        max_videos: int = 0, reader=None, log: Optional[Log] = None,
                        verb: str = "predicted", files: Optional[Sequence[str]] = None,
                        compression: str = "auto", unit: str = "videos") -> Iterator[Batch]:
    """Yields a Batch per batch of data_pattern (records in file order).

    reader: default the model's own (model_flags.json; model.record_kind's
    when set). fetches: extra tensors
    of the model's graph with their feeds. max_videos: stop after that many
    (0: all). files: read these files one by one instead of data_pattern
    (_file_batches). A corrupt or truncated file is a UserError naming it,
    unless skip_corrupt. log: a progress line every 10 s and one at the end.
    compression: --compression (readers.file_compressions). unit: what a
    batch row is, for the progress line (a segment reader's rows are segments).
    """
    reader = reader or model_builder.make_reader(model.model_flags, model.record_kind)
    fetches = dict(fetches or {})
    progress = Progress(unit, total=max_videos or None, log=log)
    count = 0
    batches = (_file_batches(model, files, batch_size, reader, flag_name, skip_corrupt,
                             compression)
               if files is not None else
               _dataset_batches(model, data_pattern, batch_size, reader, num_readers, flag_name,
                                skip_corrupt, compression))
    for inputs in batches:
        if max_videos:
            inputs = _trimmed(inputs, max_videos - count)
        extra_feed = {}
        for _, feed_of in fetches.values():
            extra_feed.update(feed_of(inputs))
        out = predict_batch(model, inputs["features"], inputs["num_frames"],
                            {name: tensor for name, (tensor, _) in fetches.items()}, extra_feed)
        count += len(inputs["id"])
        progress.tick(count, f"{verb} {count} {unit}")
        yield Batch(inputs["id"], out.pop("predictions"), inputs["labels"], out, inputs)
        if max_videos and count >= max_videos:
            break
    if count:
        progress.tick(count, f"{verb} {count} {unit}", final=True)
    if log and readers.skipped_files_summary():
        log(readers.skipped_files_summary())


def evaluate_model(model: LoadedModel, data_pattern: str, batch_size: int = 64,
                   top_k: int = DEFAULT_TOP_K, num_readers: int = 1, log: Optional[Log] = None,
                   flag_name: str = "eval_data_pattern",
                   skip_corrupt: bool = False, compression: str = "auto",
                   keep_videos: bool = False) -> intervals.EvalResult:
    """Hit@1, PERR, mAP, GAP@top_k and the loss (the label_loss of
    model_flags.json on the predictions) over labelled data; keep_videos:
    also its videos, each video's top-k (training.intervals.VideoTopK), which
    eval_results.record keeps beside the metrics."""
    with model.graph.as_default():
        labels_in = tf.placeholder(tf.float32, [None, model.num_classes], name="eval_labels")
        loss = losses.get_loss(model.model_flags.label_loss)(
            model.predictions, labels_in)
    accumulator = metrics.EvaluationMetrics(model.num_classes, top_k)
    fetches = {"loss": (loss, lambda batch: {labels_in: batch["labels"]})}
    ids: List[bytes] = []
    for batch in iterate_predictions(model, data_pattern, batch_size, num_readers, flag_name,
                                     fetches, skip_corrupt, log=log, verb="evaluated",
                                     compression=compression):
        accumulator.accumulate(batch.predictions, batch.labels, float(batch.extras["loss"]))
        ids.extend(batch.ids)
    values = accumulator.get()
    if values["num_examples"] == 0:
        raise UserError(f"--{flag_name}={data_pattern}: the files hold no examples")
    videos = (intervals.VideoTopK(np.asarray(ids, dtype=bytes), *accumulator.per_video())
              if keep_videos else None)
    return intervals.EvalResult.of_videos(values, videos)


def takes_any_frames(model: LoadedModel) -> bool:
    """Whether the model's input_batch_raw takes any number of frames (every
    graph built now: training.member_graph), not the 300 of an export built
    before (its placeholder [None, 300, D] refuses another length)."""
    shape = model.input_batch_raw.shape
    return shape.ndims == 3 and shape.as_list()[1] is None


def segment_reader(model: LoadedModel, segment_size: int = 5, rated: bool = True,
                   padded: Optional[bool] = None, positions: str = "listed",
                   skip_unrated: bool = False) -> segment_readers.SegmentReader:
    """The reader of 2019 segments for this model: a segment at its real
    length when the graph takes it, else padded to 300 (equal scores: the
    models read the first num_frames rows only). padded=True forces the
    padding (bench.bench_segments times both). positions, skip_unrated:
    segment_readers.SegmentReader's (every segment, or the listed ones)."""
    if padded is None:
        padded = not takes_any_frames(model)
    return segment_readers.SegmentReader.like(model_builder.make_reader(model.model_flags),
                                              segment_size, rated, padded, positions,
                                              skip_unrated)


@dataclass
class RatedPairs:
    """S rated (segment, class) pairs, in file order; M outputs."""
    ids: np.ndarray          # [S] bytes: the segment's video
    start_times: np.ndarray  # [S] int64: the segment's first frame
    classes: np.ndarray      # [S] int64: the rated class
    ratings: np.ndarray      # [S] bool: the human rating (score > 0)
    scores: np.ndarray       # [S, M] float32: output m's score of the rated class

    @property
    def num_videos(self) -> int:
        return int(np.unique(self.ids).size)


def rated_pair_scores(model: LoadedModel, data_pattern: str, segment_size: int = 5,
                      batch_size: int = 64, num_readers: int = 1, max_segments: int = 0,
                      log: Optional[Log] = None, flag_name: str = "data_pattern",
                      compression: str = "auto", skip_corrupt: bool = False,
                      per_member: bool = True) -> RatedPairs:
    """Every output's score of the rated class at each rated segment of 2019
    segment-rated data_pattern (max_segments > 0: the first that many), each
    segment scored on its segment_size frames (segment_reader). A members
    model (open_members) with per_member has one output per member, in its
    order; any other model (or per_member=False) one, its predictions.
    Memory: 4 bytes per output and rating, whatever the classes."""
    members = per_member and model.kind == "members"
    fetches: Fetches = ({"outputs": (model.member_predictions, lambda batch: {})}
                        if members else {})
    # A batch of videos becomes about five times as many segments (the 2019
    # data rates about 5 per video): read fewer videos so a batch holds about
    # batch_size segments.
    videos = max(1, int(batch_size) // 5)
    ids, starts, classes, ratings, scores = [], [], [], [], []
    for batch in iterate_predictions(
            model, data_pattern, videos, num_readers, flag_name, fetches, skip_corrupt,
            max_videos=max_segments, reader=segment_reader(model, segment_size), log=log,
            verb="scored", compression=compression, unit="segments"):
        rated = batch.labels.astype(np.int64)
        rows = np.arange(rated.size)
        outputs = batch.extras["outputs"] if members else [batch.predictions]
        scores.append(np.stack([output[rows, rated] for output in outputs],
                               axis=1).astype(np.float32))
        ids.append(batch.ids.astype(bytes))
        starts.append(batch.inputs["start_time"].astype(np.int64))
        classes.append(rated)
        ratings.append(batch.inputs["score"] > 0)
    if not scores:
        raise UserError(f"--{flag_name}={data_pattern}: the files hold no rated segments")
    return RatedPairs(np.concatenate(ids), np.concatenate(starts), np.concatenate(classes),
                      np.concatenate(ratings), np.concatenate(scores))


def evaluate_segments(model: LoadedModel, data_pattern: str, segment_size: int = 5,
                      batch_size: int = 64, num_readers: int = 1, log: Optional[Log] = None,
                      flag_name: str = "eval_data_pattern", skip_corrupt: bool = False,
                      compression: str = "auto",
                      top_classes: Optional[Dict[bytes, np.ndarray]] = None,
                      keep_ratings: bool = False) -> intervals.EvalResult:
    """The 2019 segment metrics (metrics.segment_metrics) of 2019 segment-rated
    records: the model's score of the rated class at each rated segment
    (rated_pair_scores), so memory grows by about 30 bytes per rating, not
    by the classes. top_classes: {video id: its top classes} of a refinement
    (training.segment_refine): a rating whose class is not among them is not
    retrieved. keep_ratings: the result's ratings holds the per-rating
    arrays (intervals.SegmentRatings, which training.eval_results keeps
    beside the metrics)."""
    pairs = rated_pair_scores(model, data_pattern, segment_size, batch_size, num_readers,
                              log=log, flag_name=flag_name, compression=compression,
                              skip_corrupt=skip_corrupt, per_member=False)
    ratings = intervals.SegmentRatings(
        pairs.ids, pairs.start_times, pairs.classes, pairs.ratings.astype(np.int8),
        pairs.scores[:, 0], np.ones(pairs.classes.size, bool) if top_classes is None else
        _retrieved(pairs.ids, pairs.classes, top_classes))
    values = metrics.segment_metrics(ratings.scores, ratings.classes, ratings.ratings,
                                     None if top_classes is None else ratings.retrieved)
    return intervals.EvalResult.of_segments(values, ratings if keep_ratings else None)


def _retrieved(ids: np.ndarray, labels: np.ndarray,
               top_classes: Dict[bytes, np.ndarray]) -> np.ndarray:
    """bool [S]: rated class labels[s] is among video ids[s]'s top classes."""
    missing = [video for video in ids.tolist() if video not in top_classes]
    if missing:
        raise UserError(f"video {missing[0].decode('utf-8', 'replace')}: has rated segments "
                        f"but no video-level prediction of the refine model")
    return np.array([int(label) in top_classes[video]
                     for video, label in zip(ids.tolist(), labels)], dtype=bool)


def evaluate_model_dir(model_dir: str, data_pattern: str, batch_size: int = 64,
                       top_k: int = DEFAULT_TOP_K, num_readers: int = 1, log: Optional[Log] = None,
                       compression: str = "auto", keep_videos: bool = False
                       ) -> intervals.EvalResult:
    model = open_model(model_dir)
    try:
        return evaluate_model(model, data_pattern, batch_size, top_k, num_readers, log,
                              compression=compression, keep_videos=keep_videos)
    finally:
        model.close()
