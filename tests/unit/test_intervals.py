"""training.intervals: per-video records and paired bootstrap intervals of GAP."""
from __future__ import annotations

import numpy as np
import pytest

from training import intervals, metrics
from training.cli import UserError


def records(predictions, labels, ids=None) -> intervals.VideoTopK:
    """The per-video record of dense predictions, as an evaluation keeps it."""
    accumulator = metrics.EvaluationMetrics(predictions.shape[1], top_k=20)
    accumulator.accumulate(predictions[: len(predictions) // 2], labels[: len(labels) // 2])
    accumulator.accumulate(predictions[len(predictions) // 2:], labels[len(labels) // 2:])
    if ids is None:
        ids = [f"v{index:04d}".encode() for index in range(len(predictions))]
    return intervals.VideoTopK(np.asarray(ids, dtype=bytes), *accumulator.per_video())


def noisy_system(rng, labels, noise: float):
    return np.clip(labels * 0.6 + rng.normal(0, noise, labels.shape) + 0.2, 0, 1)


@pytest.fixture
def data():
    """(a fresh generator, labels): per test, so that no test's draws depend
    on which tests ran before it on the same worker."""
    rng = np.random.default_rng(7)
    labels = (rng.random((400, 50)) < 0.06).astype(np.float32)
    labels[np.arange(400), rng.integers(0, 50, 400)] = 1
    return rng, labels


def test_unit_weights_give_exactly_the_metric(data):
    """Mutation: dropping the cumulative weights from the precision (hits / rank
    instead of hits / cumulative weight) breaks the equality with unequal draws
    and this test's duplicate check."""
    rng, labels = data
    predictions = noisy_system(rng, labels, 0.3)
    videos = records(predictions, labels)
    assert videos.gap() == pytest.approx(metrics.global_average_precision(predictions, labels),
                                         abs=1e-12)
    # A draw that takes video 0 twice and leaves video 1 out is the GAP of that set
    # (the two copies tie at one rank).
    weights = np.ones((1, 400))
    weights[0, 0], weights[0, 1] = 2, 0
    keep = [0, 0] + list(range(2, 400))
    duplicated = metrics.global_average_precision(predictions[keep], labels[keep])
    assert intervals.weighted_gaps(videos, weights)[0] == pytest.approx(duplicated, abs=2e-3)


def test_paired_interval_resolves_a_real_gain_and_not_a_tie(data):
    """Mutation tried: unpaired draws (gain() subtracting `over`'s draws
    rolled by one, np.roll) -> the gain's interval widened to include 0
    (low -0.011). With extra noise 0.15 and the fixture shared by the
    module, the last check held or not by which tests ran first on the
    worker (it failed when this test ran alone). The reverse difference is
    a resolved loss (mutation tried: `resolved` as `low > 0` fails it)."""
    rng, labels = data
    base = noisy_system(rng, labels, 0.25)
    good = records(base, labels)
    # The same system with extra noise: a small loss on the same videos.
    worse = records(np.clip(base + rng.normal(0, 0.05, base.shape), 0, 1), labels)
    same = records(noisy_system(np.random.default_rng(1), labels, 0.25), labels)
    boot = intervals.PairedBootstrap({"good": good, "worse": worse, "same": same}, samples=300)
    gain = boot.gain("good", "worse")
    assert gain.low > 0 and gain.resolved and gain.estimate == pytest.approx(
        good.gap() - worse.gap())
    tie = boot.gain("good", "same")
    assert tie.low < 0 < tie.high and not tie.resolved
    loss = boot.gain("worse", "good")
    assert loss.high < 0 and loss.resolved
    own = boot.gap("good")
    assert own.low < own.estimate < own.high
    # Pairing: the difference's interval is narrower than either system's own one.
    assert gain.high - gain.low < own.high - own.low


@pytest.mark.parametrize("low, high, resolved", [
    (0.01, 0.03, True),       # a gain: the interval above 0
    (-0.03, -0.01, True),     # a loss: below 0
    (-0.01, 0.03, False),     # straddles 0
    (0.0, 0.03, False),       # touches 0: does not exclude it
    (-0.03, 0.0, False)])
def test_resolved_is_an_interval_that_excludes_zero(low, high, resolved):
    """On either side of 0, and never when 0 is in it (as_dict carries it to
    the reports). Mutations tried: `resolved` as `self.low > 0` (the loss is
    not resolved); `self.low >= 0 or self.high <= 0` (an interval touching 0
    is)."""
    interval = intervals.Interval((low + high) / 2, low, high)
    assert interval.resolved is resolved
    assert interval.as_dict()["resolved"] is resolved


def test_records_of_other_videos_are_refused(data, tmp_path):
    rng, labels = data
    first = records(noisy_system(rng, labels, 0.3), labels)
    other_ids = [f"w{index:04d}".encode() for index in range(400)]
    second = records(noisy_system(rng, labels, 0.3), labels, ids=other_ids)
    with pytest.raises(UserError, match="were measured on different videos"):
        intervals.PairedBootstrap({"a": first, "b": second}, samples=10)
    # The same videos in another order are the same videos.
    order = np.random.default_rng(0).permutation(400)
    shuffled = intervals.VideoTopK(first.ids[order], first.scores[order],
                                   first.relevant[order], first.num_positives[order])
    boot = intervals.PairedBootstrap({"a": first, "b": shuffled}, samples=20)
    assert boot.gain("a", "b").estimate == pytest.approx(0, abs=1e-12)


def test_save_and_load(data, tmp_path):
    rng, labels = data
    videos = records(noisy_system(rng, labels, 0.3), labels)
    path = tmp_path / "sub" / "v.npz"
    intervals.save(str(path), videos)
    loaded = intervals.load(str(path))
    assert loaded.ids_digest() == videos.ids_digest() and loaded.gap() == videos.gap()
    path.write_bytes(b"not a zip")
    with pytest.raises(UserError, match=f"{path}: not a per-video evaluation record"):
        intervals.load(str(path))


# ---------------------------------------------------------------------------
# 2019 rated segments: Segment MAP over videos


def segment_ratings(rng, quality: float, videos: int = 120, retrieved=None):
    """Five rated pairs a video over 8 classes; scores = quality * rating + noise."""
    ids = np.repeat([f"s{index:03d}".encode() for index in range(videos)], 5)
    classes = np.random.default_rng(3).integers(0, 8, ids.size)
    ratings = np.random.default_rng(4).integers(0, 2, ids.size).astype(np.int8)
    scores = (quality * ratings + rng.random(ids.size)).astype(np.float32)
    retrieved = np.ones(ids.size, bool) if retrieved is None else retrieved
    return intervals.SegmentRatings(ids, np.tile(np.arange(5) * 5, videos), classes, ratings,
                                    scores, retrieved)


def hand_segment_map(record) -> float:
    """Per class: the retrieved pairs ranked by score, AP over all its positives."""
    aps = []
    for class_id in np.unique(record.classes):
        rows = record.classes == class_id
        positives = int(record.ratings[rows].sum())
        if positives:
            kept = rows & record.retrieved
            aps.append(metrics.average_precision(record.scores[kept], record.ratings[kept],
                                                 num_positives=positives))
    return float(np.mean(aps))


def test_segment_map_with_unit_weights_is_the_metric_and_counts_unretrieved_positives():
    """Mutations: counting only the retrieved positives in a class's denominator,
    or ranking the pairs refinement left out, each break the second equality."""
    record = segment_ratings(np.random.default_rng(0), 0.5).sorted_by_id()
    assert record.point() == pytest.approx(metrics.segment_metrics(
        record.scores, record.classes, record.ratings)["segment_map"], abs=1e-12)
    dropped = np.random.default_rng(1).random(record.ids.size) < 0.3
    refined = intervals.SegmentRatings(record.ids, record.start_times, record.classes,
                                       record.ratings, record.scores, ~dropped)
    assert refined.point() == pytest.approx(hand_segment_map(refined), abs=1e-12)
    assert refined.point() < record.point()
    # A draw that takes video 0 twice and leaves video 1 out weighs its pairs so.
    weights = np.ones((1, record.num_videos))
    weights[0, 0], weights[0, 1] = 2, 0
    keep = np.concatenate([np.arange(5), np.arange(5), np.arange(10, record.ids.size)])
    duplicated = metrics.segment_metrics(record.scores[keep], record.classes[keep],
                                         record.ratings[keep])["segment_map"]
    assert intervals.weighted_segment_maps(record, weights)[0] == pytest.approx(duplicated,
                                                                              abs=5e-3)


def test_segment_map_paired_interval_resolves_a_gain_and_not_a_tie(tmp_path):
    rng = np.random.default_rng(5)
    good, worse, same = (segment_ratings(rng, q) for q in (0.6, 0.2, 0.6))
    boot = intervals.PairedBootstrap({"good": good, "worse": worse, "same": same},
                                     samples=300)
    assert boot.gain("good", "worse").low > 0
    assert not boot.gain("good", "same").resolved
    path = tmp_path / "r.npz"
    intervals.save_segment_ratings(str(path), good)
    loaded = intervals.load_segment_ratings(str(path))
    assert loaded.ids_digest() == good.ids_digest() and loaded.point() == good.point()
    other = intervals.SegmentRatings(*(np.roll(getattr(good, name), 5) if name == "classes"
                                       else getattr(good, name)
                                       for name in ("ids", "start_times", "classes",
                                                    "ratings", "scores", "retrieved")))
    with pytest.raises(UserError, match="were measured on different videos"):
        intervals.PairedBootstrap({"a": good, "b": other}, samples=10)
    path.write_bytes(b"not a zip")
    with pytest.raises(UserError, match=f"{path}: not a segment ratings record"):
        intervals.load_segment_ratings(str(path))
