"""Per-video evaluation records and paired bootstrap intervals of GAP (and of
the 2019 Segment MAP: ``SegmentRatings``).

An evaluation keeps, for each video, its top-k (score, relevant) pairs and
its number of positive labels (``VideoTopK``): all that GAP@k needs, about
100 bytes a video. Two evaluations of the same videos can then be compared
with a paired bootstrap over videos (``paired_gap_interval``): each draw
resamples the videos with replacement, and both systems are scored on the
same draw, so the interval is that of the *difference*, which is far
narrower than either system's own interval when they err on the same videos.

A draw is a vector of multiplicities ``w [V]``. The GAP of a draw weighs each
pooled pair by its video's multiplicity, in the pooled order of the whole
set (descending score, the metric's fixed tie order):

    GAP_w = sum_i w_i rel_i P_i / sum_v w_v npos_v,
    P_i = (sum_{j<=i} w_j rel_j) / (sum_{j<=i} w_j)

With every multiplicity 1 this is exactly training.metrics' GAP; the copies of
a resampled video count as tied at one rank, the usual treatment of ties.

``EvalResult`` is what one evaluation measured (training.predict's
evaluate_model and evaluate_segments): its metrics, and its record when kept.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import zipfile
import zlib
from typing import Any, Dict, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np

from training import checkpoints, metrics
from training.cli import UserError, excerpt
from training.metrics import _descending_order

# What np.load raises on a damaged .npz (a zip archive; found by fuzzing,
# tests/reliability/test_fuzz.py): a bad CRC or header (BadZipFile), a bad deflate
# stream (zlib.error), a cut member (EOFError), a damaged compression or
# version field (NotImplementedError), a damaged flag bit ("encrypted":
# RuntimeError), a bad .npy header (ValueError), a lost member (KeyError).
_DAMAGED_NPZ = (OSError, ValueError, KeyError, EOFError, NotImplementedError, RuntimeError,
                zipfile.BadZipFile, zlib.error)
DEFAULT_SAMPLES = 1000
DEFAULT_SEED = 0
CONFIDENCE = 0.95
# Pairs times draws held in memory at once (float64): about 160 MB.
_CHUNK_CELLS = 20_000_000


def video_ids_digest(ids: Iterable[bytes]) -> str:
    """sha1 of the sorted video ids (each followed by a newline): the digest
    of the videos a stage saw (VideoTopK.ids_digest, stage_files.Provenance)."""
    digest = hashlib.sha1()
    for video_id in sorted(ids):
        digest.update(video_id + b"\n")
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class VideoTopK:
    """Each video's top-k pairs: ids [V] (bytes), scores [V, k] float32,
    relevant [V, k] int8 (0/1), num_positives [V] int32 (all its labels,
    retrieved or not)."""
    ids: np.ndarray
    scores: np.ndarray
    relevant: np.ndarray
    num_positives: np.ndarray

    @property
    def num_videos(self) -> int:
        return int(self.ids.shape[0])

    def ids_digest(self) -> str:
        """sha1 of the sorted ids: equal digests, the same videos."""
        return video_ids_digest(self.ids.tolist())

    def sorted_by_id(self) -> "VideoTopK":
        order = np.argsort(self.ids, kind="stable")
        return VideoTopK(self.ids[order], self.scores[order], self.relevant[order],
                         self.num_positives[order])

    def gap(self) -> float:
        return float(weighted_gaps(self, np.ones((1, self.num_videos)))[0])

    # What PairedBootstrap measures: the point value and each draw's.
    point = gap

    def weighted(self, weights: np.ndarray) -> np.ndarray:
        return weighted_gaps(self, weights)


def concatenate(parts: Sequence[VideoTopK]) -> VideoTopK:
    return VideoTopK(*(np.concatenate([getattr(part, field.name) for part in parts])
                       for field in dataclasses.fields(VideoTopK)))


def _save_record(path: str, record: Any) -> None:
    """Writes a record (a dataclass of arrays) as a compressed .npz, atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with checkpoints.atomic_file(path, overwrite=True, wait=True) as tmp_path:
        with open(tmp_path, "wb") as out:
            np.savez_compressed(out, **dataclasses.asdict(record))


def _load_record(path: str, record_type: Any, what: str, module_kind: bool = True) -> Any:
    """The record_type at `path` (one array per field); a missing or damaged
    file is a UserError naming it as not `what`. module_kind: the error's
    kind with its module (zlib.error, not "error")."""
    try:
        with np.load(path, allow_pickle=False) as payload:
            return record_type(*(payload[field.name]
                                 for field in dataclasses.fields(record_type)))
    except _DAMAGED_NPZ as err:
        kind = type(err).__name__
        if module_kind and type(err).__module__ != "builtins":
            kind = f"{type(err).__module__}.{kind}"
        # (excerpt: zipfile quotes whole binary headers in its messages)
        raise UserError(f"{path}: not a {what} ({kind} {excerpt(str(err))}); evaluate again "
                        f"to rewrite it") from None


def save(path: str, videos: VideoTopK) -> None:
    """Writes the record as a compressed .npz, atomically."""
    _save_record(path, videos)


def load(path: str) -> VideoTopK:
    """The record at `path`; a missing or damaged file is a UserError naming it."""
    videos = _load_record(path, VideoTopK, "per-video evaluation record")
    rows = videos.num_videos
    if videos.scores.shape != videos.relevant.shape or videos.scores.shape[:1] != (rows,) \
            or videos.num_positives.shape != (rows,):
        raise UserError(f"{path}: its arrays disagree in shape; evaluate again to rewrite it")
    return videos


def weighted_gaps(videos: VideoTopK, weights: np.ndarray) -> np.ndarray:
    """GAP of each draw: weights [B, V] multiplicities -> [B] (module docstring)."""
    order = _descending_order(videos.scores.astype(np.float32).ravel())
    k = videos.scores.shape[1]
    video_of_pair = order // k
    # Only relevant pairs add hits and terms, so those run over their columns
    # alone; the cumulative weight (the precision's denominator) needs all.
    relevant_pairs = np.flatnonzero(videos.relevant.ravel()[order])
    denominators = weights @ videos.num_positives.astype(np.float64)
    gaps = np.zeros(weights.shape[0])
    chunk = max(1, _CHUNK_CELLS // max(1, order.size))
    for start in range(0, weights.shape[0], chunk):
        pair_weights = weights[start:start + chunk][:, video_of_pair]
        seen = np.cumsum(pair_weights, axis=1)[:, relevant_pairs]
        relevant_weights = pair_weights[:, relevant_pairs]
        precision = np.cumsum(relevant_weights, axis=1) / np.maximum(seen, 1e-12)
        gaps[start:start + chunk] = (relevant_weights * precision).sum(axis=1)
    return np.divide(gaps, denominators, out=np.zeros_like(gaps), where=denominators > 0)


def bootstrap_weights(num_videos: int, samples: int = DEFAULT_SAMPLES,
                      seed: int = DEFAULT_SEED) -> np.ndarray:
    """[samples, num_videos] multiplicities of resampling with replacement."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(num_videos, np.full(num_videos, 1.0 / num_videos),
                           size=samples).astype(np.float64)


@dataclasses.dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile bootstrap interval."""
    estimate: float
    low: float
    high: float

    @property
    def resolved(self) -> bool:
        """The interval excludes 0."""
        return self.low > 0 or self.high < 0

    def as_dict(self) -> Dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high,
                "resolved": self.resolved}

    def text(self, signed: bool = True) -> str:
        spec = "+.4f" if signed else ".4f"
        return f"{self.estimate:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"


def _interval(estimate: float, draws: np.ndarray) -> Interval:
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Interval(float(estimate), float(low), float(high))


def check_same_videos(named: Dict[str, Any]) -> None:
    """Refuses records of different videos, naming the first two that differ."""
    items = list(named.items())
    first_name, first = items[0]
    first_digest = first.ids_digest()      # (sorts the ids: once, not per comparison)
    for name, videos in items[1:]:
        if videos.ids_digest() != first_digest:
            raise UserError(f"{name} ({videos.num_videos} videos) and {first_name} "
                            f"({first.num_videos} videos) were measured on different videos; "
                            f"evaluate both on the same files")


class PairedBootstrap:
    """Intervals of a metric for several systems on the same videos, one set
    of draws shared by all, so that every difference is paired. A record is
    a VideoTopK (GAP) or a SegmentRatings (Segment MAP): anything with
    ``ids_digest``, ``num_videos``, ``sorted_by_id``, ``point()`` and
    ``weighted(weights [B, V]) -> [B]`` over its videos sorted by id."""

    def __init__(self, named: Dict[str, Any], samples: int = DEFAULT_SAMPLES,
                 seed: int = DEFAULT_SEED):
        check_same_videos(named)
        self.named = {name: record.sorted_by_id() for name, record in named.items()}
        num_videos = next(iter(self.named.values())).num_videos
        self.weights = bootstrap_weights(num_videos, samples, seed)
        self.samples, self.seed, self.num_videos = samples, seed, num_videos
        self._draws = {name: record.weighted(self.weights)
                       for name, record in self.named.items()}
        self._points = {name: record.point() for name, record in self.named.items()}

    def value(self, name: str) -> Interval:
        """The metric of one system, with its interval."""
        return _interval(self._points[name], self._draws[name])

    gap = value     # (the video-level report's name for it)

    def gain(self, name: str, over: str) -> Interval:
        """metric(name) - metric(over), with its paired interval."""
        return _interval(self._points[name] - self._points[over],
                         self._draws[name] - self._draws[over])

    def names(self) -> Iterator[str]:
        return iter(self.named)


def videos_file_name(key: str) -> str:
    """The per-video record's file name of an evaluation key."""
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:16] + ".npz"



# ---------------------------------------------------------------------------
# 2019 rated segments


@dataclasses.dataclass(frozen=True)
class SegmentRatings:
    """Every rating of a segment evaluation: entry i is one rated (segment,
    class) pair. ids [N] bytes (the segment's video), start_times [N] int64,
    classes [N] int64, ratings [N] int8 (0/1), scores [N] float32 (the
    model's score of classes[i] on the segment), retrieved [N] bool (False:
    refinement left the class out of that segment's list, so it is not
    ranked but its positive still counts, training.metrics.segment_metrics).
    """
    ids: np.ndarray
    start_times: np.ndarray
    classes: np.ndarray
    ratings: np.ndarray
    scores: np.ndarray
    retrieved: np.ndarray

    @property
    def num_videos(self) -> int:
        return int(np.unique(self.ids).size)

    def ids_digest(self) -> str:
        """sha1 of the sorted distinct video ids and of the rated pairs."""
        digest = hashlib.sha1()
        for video_id in np.unique(self.ids).tolist():
            digest.update(video_id + b"\n")
        order = np.lexsort((self.classes, self.start_times, self.ids))
        for array in (self.start_times[order], self.classes[order], self.ratings[order]):
            digest.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
        return digest.hexdigest()

    def sorted_by_id(self) -> "SegmentRatings":
        order = np.lexsort((self.classes, self.start_times, self.ids))
        return SegmentRatings(*(getattr(self, field.name)[order]
                                for field in dataclasses.fields(SegmentRatings)))

    def point(self) -> float:
        return float(self.weighted(np.ones((1, self.num_videos)))[0])

    def weighted(self, weights: np.ndarray) -> np.ndarray:
        return weighted_segment_maps(self, weights)


def save_segment_ratings(path: str, ratings: SegmentRatings) -> None:
    """Writes the ratings as a compressed .npz, atomically."""
    _save_record(path, ratings)


def load_segment_ratings(path: str) -> SegmentRatings:
    """The ratings at `path`; a missing, damaged or ragged file is a UserError naming it."""
    ratings = _load_record(path, SegmentRatings, "segment ratings record", module_kind=False)
    if len({getattr(ratings, field.name).shape
            for field in dataclasses.fields(SegmentRatings)}) != 1:
        raise UserError(f"{path}: its arrays disagree in shape; evaluate again to rewrite it")
    return ratings


def weighted_segment_maps(ratings: SegmentRatings, weights: np.ndarray) -> np.ndarray:
    """Segment MAP of each draw: weights [B, V] multiplicities of the videos
    (sorted by id) -> [B]. Each rated pair weighs as its video; per class,
    the retrieved pairs in the metric's order (training.metrics.average_precision
    on that class's pairs) give AP_w = sum_i w_i r_i P_i / sum_(all pairs) w_i r_i
    with P_i = sum_{j<=i} w_j r_j / sum_{j<=i} w_j; the MAP is the mean over the
    classes with a positive weight of positives (every weight 1: exactly
    training.metrics.segment_metrics' segment_map)."""
    video_of = np.unique(ratings.ids, return_inverse=True)[1].ravel()
    classes = np.asarray(ratings.classes)
    positive = np.asarray(ratings.ratings) > 0
    retrieved = np.asarray(ratings.retrieved, dtype=bool)
    scores = np.asarray(ratings.scores, dtype=np.float32)
    total = np.zeros(weights.shape[0])
    counted = np.zeros(weights.shape[0])
    for class_id in np.unique(classes):
        rows = np.flatnonzero(classes == class_id)
        positives = weights[:, video_of[rows[positive[rows]]]].sum(axis=1)
        ranked = rows[retrieved[rows]]
        ranked = ranked[_descending_order(scores[ranked])]
        pair_weights = weights[:, video_of[ranked]]
        hits = pair_weights * positive[ranked]
        precision = np.cumsum(hits, axis=1) / np.maximum(np.cumsum(pair_weights, axis=1), 1e-12)
        sums = (hits * precision).sum(axis=1)
        has = positives > 0
        total += np.divide(sums, positives, out=np.zeros_like(sums), where=has)
        counted += has
    return np.divide(total, counted, out=np.zeros_like(total), where=counted > 0)


# ---------------------------------------------------------------------------
# The result of one evaluation


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """What one evaluation measured: the video metrics of
    metrics.EvaluationMetrics.get (predict.evaluate_model) or the 2019
    segment metrics of metrics.segment_metrics (predict.evaluate_segments;
    num_retrieved and num_positive_retrieved when refined), and its record
    when kept (videos, or ratings). A metric of the other kind is None.
    training.eval_results.record writes it into the Evaluation record."""
    hit_at_one: Optional[float] = None
    perr: Optional[float] = None
    map: Optional[float] = None
    gap: Optional[float] = None
    loss: Optional[float] = None
    num_examples: Optional[int] = None
    segment_map: Optional[float] = None
    segment_gap: Optional[float] = None
    num_segments: Optional[int] = None
    num_positive_segments: Optional[int] = None
    num_rated_classes: Optional[int] = None
    num_classes_without_positives: Optional[int] = None
    num_retrieved: Optional[int] = None
    num_positive_retrieved: Optional[int] = None
    videos: Optional[VideoTopK] = None
    ratings: Optional[SegmentRatings] = None

    # (Class attributes, not fields.) Each kind's metrics, in the order its
    # metrics function returns them.
    VIDEO_METRICS = ("hit_at_one", "perr", "map", "gap", "loss", "num_examples")
    SEGMENT_METRICS = ("segment_map", "segment_gap", "num_segments", "num_positive_segments",
                       "num_rated_classes", "num_classes_without_positives", "num_retrieved",
                       "num_positive_retrieved")

    @classmethod
    def of_videos(cls, values: Mapping[str, float],
                  videos: Optional[VideoTopK] = None) -> "EvalResult":
        """The result of metrics.EvaluationMetrics.get's values."""
        return cls(hit_at_one=values["hit_at_one"], perr=values["perr"], map=values["map"],
                   gap=values["gap"], loss=values["loss"],
                   num_examples=int(values["num_examples"]), videos=videos)

    @classmethod
    def of_segments(cls, values: Mapping[str, float],
                    ratings: Optional[SegmentRatings] = None) -> "EvalResult":
        """The result of metrics.segment_metrics' values."""
        def count(name: str) -> Optional[int]:
            return int(values[name]) if name in values else None

        return cls(segment_map=values["segment_map"], segment_gap=values["segment_gap"],
                   num_segments=count("num_segments"),
                   num_positive_segments=count("num_positive_segments"),
                   num_rated_classes=count("num_rated_classes"),
                   num_classes_without_positives=count("num_classes_without_positives"),
                   num_retrieved=count("num_retrieved"),
                   num_positive_retrieved=count("num_positive_retrieved"), ratings=ratings)

    @property
    def is_segment(self) -> bool:
        return self.segment_map is not None

    def metrics(self) -> Dict[str, float]:
        """{name: value} of the metrics it holds, in their functions' order."""
        values = ((name, getattr(self, name)) for name in self.VIDEO_METRICS
                  + self.SEGMENT_METRICS)
        return {name: value for name, value in values if value is not None}

    def summary(self, label: str = "") -> str:
        """Its one line (metrics.format_summary, or format_segment_summary)."""
        if self.is_segment:
            return metrics.format_segment_summary(self.metrics(), label)
        return metrics.format_summary(self.metrics(), label)

    def ids_digest(self) -> Optional[str]:
        """The digest of the videos (or rated pairs) of its record, None without one."""
        kept = self.videos if self.videos is not None else self.ratings
        return None if kept is None else kept.ids_digest()
