"""training/metrics.py against docs/formats.md section 2 and a slow, obviously correct reference."""
from __future__ import annotations

import ast
import heapq
from pathlib import Path

import numpy as np
import pytest

from training import metrics

WORKED_P = np.array([[.9, .8, .1, .05, .3],
                     [.2, .7, .6, 0, .1],
                     [.5, .4, .3, .2, .1]])
WORKED_Y = np.array([[1, 0, 0, 0, 1],
                     [0, 0, 1, 0, 0],
                     [0, 0, 0, 0, 0]])


# --------------------------------------------------------------------------
# slow reference: per-video Python loops, a heap of pooled tuples
# (valid for data without ties, where every ordering is unique)
# --------------------------------------------------------------------------
def ref_top_k(p_row, k):
    k = min(k, len(p_row))
    return sorted(range(len(p_row)), key=lambda c: -p_row[c])[:k]


def ref_ap(pairs, num_positives):
    """AveragePrecisionCalculator: heap of (score, label), sorted descending."""
    if num_positives == 0 or not pairs:
        return 0.0
    heap = []
    for pair in pairs:
        heapq.heappush(heap, pair)
    ranked = [heapq.heappop(heap) for _ in range(len(heap))][::-1]
    ap, hits = 0.0, 0
    for i, (_, label) in enumerate(ranked):
        if label > 0:
            hits += 1
            ap += hits / (i + 1) / num_positives
    return ap


def ref_triplets(P, Y, k):
    triplets = []
    for v in range(len(P)):
        for c in ref_top_k(list(P[v]), k):
            triplets.append((c, float(P[v][c]), int(Y[v][c] > 0)))
    return triplets


def ref_gap(P, Y, k):
    pairs = [(s, y) for _, s, y in ref_triplets(P, Y, k)]
    return ref_ap(pairs, int(sum(int(x > 0) for row in Y for x in row)))


def ref_hit_at_one(P, Y):
    total = 0
    for v in range(len(P)):
        best = max(range(len(P[v])), key=lambda c: P[v][c])
        total += int(Y[v][best] > 0)
    return total / len(P)


def ref_perr(P, Y):
    total = 0.0
    for v in range(len(P)):
        num_labels = sum(int(x > 0) for x in Y[v])
        if num_labels == 0:
            continue
        top = ref_top_k(list(P[v]), num_labels)
        total += sum(1 for c in top if P[v][c] > 0 and Y[v][c] > 0) / num_labels
    return total / len(P)


def ref_map(P, Y, k, filter_empty=False):
    num_classes = len(P[0])
    per_class = [[] for _ in range(num_classes)]
    for c, s, y in ref_triplets(P, Y, k):
        per_class[c].append((s, y))
    aps = []
    for c in range(num_classes):
        positives = sum(int(Y[v][c] > 0) for v in range(len(Y)))
        if filter_empty and positives == 0:
            continue
        aps.append(ref_ap(per_class[c], positives))
    return sum(aps) / len(aps) if aps else 0.0


def random_case(seed, num_videos, num_classes, dtype=np.float32, density=0.15):
    """Distinct scores (no ties anywhere), about 20% of them negative; random labels
    that include videos with no labels and videos with many."""
    rng = np.random.default_rng(seed)
    n = num_videos * num_classes
    P = ((rng.permutation(n) - 0.2 * n) / n).reshape(num_videos, num_classes).astype(dtype)
    Y = (rng.random((num_videos, num_classes)) < density).astype(np.int32)
    Y[rng.random(num_videos) < 0.15] = 0
    busy = rng.integers(0, num_videos)
    Y[busy, rng.permutation(num_classes)[:max(1, num_classes // 2)]] = 1
    return P, Y


# --------------------------------------------------------------------------
# worked example (docs/formats.md 2.5)
# --------------------------------------------------------------------------
def test_worked_example():
    assert metrics.global_average_precision(WORKED_P, WORKED_Y, top_k=2) == pytest.approx(0.5)
    assert metrics.hit_at_one(WORKED_P, WORKED_Y) == pytest.approx(1 / 3)
    assert metrics.precision_at_equal_recall(WORKED_P, WORKED_Y) == pytest.approx(0.166667,
                                                                                  abs=1e-6)
    assert metrics.mean_average_precision(WORKED_P, WORKED_Y, top_k=2) == pytest.approx(0.4)
    assert metrics.mean_average_precision(WORKED_P, WORKED_Y, top_k=2,
                                          filter_empty_classes=True) == pytest.approx(2 / 3)


def test_worked_example_pairs_and_accumulator():
    scores, labels, classes = metrics.top_k_pairs(WORKED_P, WORKED_Y, k=2)
    np.testing.assert_allclose(scores, [[.9, .8], [.7, .6], [.5, .4]])
    np.testing.assert_array_equal(labels, [[1, 0], [0, 1], [0, 0]])
    np.testing.assert_array_equal(classes, [[0, 1], [1, 2], [0, 1]])
    em = metrics.EvaluationMetrics(num_classes=5, top_k=2)
    batch = em.accumulate(WORKED_P, WORKED_Y, loss=1.5)
    assert batch["gap"] == pytest.approx(0.5) and batch["loss"] == 1.5
    result = em.get()
    assert result["gap"] == pytest.approx(0.5)
    assert result["hit_at_one"] == pytest.approx(1 / 3)
    assert result["perr"] == pytest.approx(1 / 6)
    assert result["map"] == pytest.approx(0.4)
    assert em.get(filter_empty_classes=True)["map"] == pytest.approx(2 / 3)
    assert result["num_examples"] == 3 and result["loss"] == 1.5
    np.testing.assert_allclose(em.class_average_precisions(), [1, 0, 1, 0, 0])


# --------------------------------------------------------------------------
# vectorised == slow reference on data without ties
# --------------------------------------------------------------------------
@pytest.mark.parametrize("seed,num_videos,num_classes,k", [
    (0, 40, 6, 2),
    (1, 60, 12, 20),   # top_k > num_classes
    (2, 120, 30, 5),
    (3, 80, 400, 20),  # grouped top-k path
    (4, 50, 700, 7),
    (5, 30, 250, 1),
    (6, 30, 324, 1),   # grouped path, columns divide evenly into groups
])
def test_matches_reference(seed, num_videos, num_classes, k):
    P, Y = random_case(seed, num_videos, num_classes)
    Pl, Yl = P.tolist(), Y.tolist()
    assert metrics.global_average_precision(P, Y, top_k=k) == pytest.approx(ref_gap(Pl, Yl, k),
                                                                            abs=1e-12)
    assert metrics.hit_at_one(P, Y) == pytest.approx(ref_hit_at_one(Pl, Yl), abs=1e-12)
    assert metrics.precision_at_equal_recall(P, Y) == pytest.approx(ref_perr(Pl, Yl), abs=1e-12)
    assert metrics.mean_average_precision(P, Y, top_k=k) == pytest.approx(ref_map(Pl, Yl, k),
                                                                          abs=1e-12)
    assert metrics.mean_average_precision(P, Y, top_k=k, filter_empty_classes=True) == \
        pytest.approx(ref_map(Pl, Yl, k, filter_empty=True), abs=1e-12)

    scores, labels, classes = metrics.top_k_pairs(P, Y, k=k)
    kk = min(k, num_classes)
    assert scores.shape == labels.shape == classes.shape == (num_videos, kk)
    for v in range(num_videos):
        top = ref_top_k(Pl[v], kk)
        assert classes[v].tolist() == top
        assert labels[v].tolist() == [Yl[v][c] for c in top]
        np.testing.assert_array_equal(scores[v], P[v, top])


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_average_precision_matches_reference(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 500))
    scores = rng.permutation(n).astype(np.float64) / n
    relevant = (rng.random(n) < 0.3).astype(int)
    extra = int(rng.integers(0, 10))
    num_pos = int(relevant.sum()) + extra
    ref = ref_ap(list(zip(scores.tolist(), relevant.tolist())), num_pos)
    assert metrics.average_precision(scores, relevant, num_pos) == pytest.approx(ref, abs=1e-12)
    assert metrics.average_precision(scores.astype(np.float32), relevant, num_pos) == \
        pytest.approx(ref, abs=1e-12)
    if extra == 0:
        assert metrics.average_precision(scores, relevant) == pytest.approx(ref, abs=1e-12)


# --------------------------------------------------------------------------
# ties: canonical top-k, deterministic and non-optimistic pooled order
# --------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["integers", "sparse", "constant"])
@pytest.mark.parametrize("num_classes,k", [(7, 3), (324, 1), (400, 20), (3862, 20), (1000, 50)])
def test_top_k_equals_stable_sort_with_ties(case, num_classes, k):
    rng = np.random.default_rng(num_classes + k)
    v = 64
    if case == "integers":
        P = rng.integers(0, 4, (v, num_classes)).astype(np.float32)
    elif case == "sparse":  # fewer than k non-zero scores in most rows
        P = np.zeros((v, num_classes), np.float32)
        P[:, rng.integers(0, num_classes, 2 * k // 3)] = rng.random(2 * k // 3)
        P[::5] = rng.random((len(P[::5]), num_classes))
    else:
        P = np.full((v, num_classes), 0.5, np.float32)
    Y = rng.random((v, num_classes)) < 0.05
    scores, labels, classes = metrics.top_k_pairs(P, Y, k=k)
    expected = np.argsort(-P, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(classes, expected)
    np.testing.assert_array_equal(scores, np.take_along_axis(P, expected, axis=1))
    np.testing.assert_array_equal(labels, np.take_along_axis(Y, expected, axis=1))


def test_ties_are_deterministic_and_not_optimistic():
    rng = np.random.default_rng(3)
    P = rng.integers(0, 3, (300, 50)).astype(np.float32) / 2
    Y = rng.random((300, 50)) < 0.1
    first = metrics.global_average_precision(P, Y, top_k=10)
    assert first == metrics.global_average_precision(P, Y, top_k=10)
    assert metrics.mean_average_precision(P, Y, 10) == metrics.mean_average_precision(P, Y, 10)

    # One big tie: a relevant-first tie-break would give 1.0.
    scores = np.full(1000, 0.5, np.float32)
    relevant = np.zeros(1000, int)
    relevant[::10] = 1
    ap = metrics.average_precision(scores, relevant, 100)
    assert ap == metrics.average_precision(scores, relevant, 100)
    assert 0.05 < ap < 0.3


def test_tie_order_is_seed0_permutation_then_stable_sort():
    rng = np.random.default_rng(9)
    scores = rng.integers(0, 5, 2000).astype(np.float32)
    scores[::7] *= -1
    scores[3] = -0.0
    relevant = rng.random(2000) < 0.2
    perm = np.random.default_rng(0).permutation(scores.size)
    order = perm[np.argsort(-scores.astype(np.float64)[perm], kind="stable")]
    idx = np.flatnonzero(relevant[order])
    expected = np.sum(np.arange(1, idx.size + 1) / (idx + 1.0)) / 500
    # float32 key-sort path and float64 argsort path both give that order.
    assert metrics.average_precision(scores, relevant, 500) == pytest.approx(expected, abs=1e-13)
    assert metrics.average_precision(scores.astype(np.float64), relevant, 500) == pytest.approx(
        expected, abs=1e-13)


def test_perfect_predictions_and_denominator():
    rng = np.random.default_rng(5)
    Y = np.zeros((50, 100), np.int8)
    for v in range(50):
        Y[v, rng.permutation(100)[:rng.integers(1, 21)]] = 1
    P = Y * 0.5 + rng.random(Y.shape) * 0.4
    assert metrics.global_average_precision(P, Y, top_k=20) == pytest.approx(1.0)
    assert metrics.hit_at_one(P, Y) == 1.0
    assert metrics.precision_at_equal_recall(P, Y) == pytest.approx(1.0)

    # A video with 25 labels: only 20 enter the top-20, but all 25 count in M.
    Y2 = np.zeros((1, 100), np.int8)
    Y2[0, :25] = 1
    P2 = Y2 * 0.5 + rng.random(Y2.shape) * 0.4
    assert metrics.global_average_precision(P2, Y2, top_k=20) == pytest.approx(20 / 25)
    # PERR looks past the top-20 for that video: its top-25 are all correct.
    assert metrics.precision_at_equal_recall(P2, Y2) == pytest.approx(1.0)
    # Per-class: the classes never retrieved get AP 0.
    aps = metrics.class_average_precisions(P2, Y2, 20)
    np.testing.assert_allclose(np.sort(aps[:25]), [0.0] * 5 + [1.0] * 20)
    assert (aps[25:] == 0).all()


def test_perr_only_counts_positive_scores():
    P = np.array([[0.0, -1.0, -2.0], [0.5, 0.0, -1.0]])
    Y = np.array([[1, 0, 0], [1, 1, 0]])
    assert metrics.precision_at_equal_recall(P, Y) == pytest.approx((0 + 0.5) / 2)


# --------------------------------------------------------------------------
# accumulator
# --------------------------------------------------------------------------
@pytest.mark.parametrize("tied", [False, True])
def test_accumulator_equals_concatenated(tied):
    rng = np.random.default_rng(21)
    if tied:
        P = rng.integers(0, 6, (230, 300)).astype(np.float32) / 5
        Y = (rng.random((230, 300)) < 0.02).astype(np.float32)
        Y[7, :40] = 1  # more labels than top_k
    else:
        P, Y = random_case(22, 230, 300)
    em = metrics.EvaluationMetrics(num_classes=300, top_k=20)
    bounds = [0, 1, 50, 51, 130, 230]
    for a, b in zip(bounds[:-1], bounds[1:]):
        batch = em.accumulate(P[a:b], Y[a:b], loss=0.1 * b)
        assert batch["hit_at_one"] == pytest.approx(metrics.hit_at_one(P[a:b], Y[a:b]))
        assert batch["perr"] == pytest.approx(metrics.precision_at_equal_recall(P[a:b], Y[a:b]))
        assert batch["gap"] == pytest.approx(metrics.global_average_precision(P[a:b], Y[a:b], 20))
    result = em.get()
    assert result["num_examples"] == 230
    assert result["hit_at_one"] == pytest.approx(metrics.hit_at_one(P, Y), abs=1e-12)
    assert result["perr"] == pytest.approx(metrics.precision_at_equal_recall(P, Y), abs=1e-12)
    assert result["gap"] == pytest.approx(metrics.global_average_precision(P, Y, 20), abs=1e-12)
    assert result["map"] == pytest.approx(metrics.mean_average_precision(P, Y, 20), abs=1e-12)
    assert em.get(filter_empty_classes=True)["map"] == pytest.approx(
        metrics.mean_average_precision(P, Y, 20, filter_empty_classes=True), abs=1e-12)
    sizes = np.diff(bounds)
    assert result["loss"] == pytest.approx(np.sum(sizes * 0.1 * np.array(bounds[1:])) / 230)
    assert em.get() == result  # get() is repeatable
    if not tied:
        Pl, Yl = P.tolist(), Y.tolist()
        assert result["gap"] == pytest.approx(ref_gap(Pl, Yl, 20), abs=1e-12)
        assert result["map"] == pytest.approx(ref_map(Pl, Yl, 20), abs=1e-12)


def test_accumulator_batch_size_weighting_and_clear():
    em = metrics.EvaluationMetrics(num_classes=4, top_k=2)
    # Batch 1: 2 videos, both hits. Batch 2: 8 videos, no hits.
    P1 = np.array([[0.9, 0.1, 0, 0], [0.1, 0.9, 0, 0]])
    Y1 = np.array([[1, 0, 0, 0], [0, 1, 0, 0]])
    P2 = np.tile([0.9, 0.1, 0.0, 0.0], (8, 1))
    Y2 = np.tile([0, 0, 1, 0], (8, 1))
    assert em.accumulate(P1, Y1, loss=1.0)["hit_at_one"] == 1.0
    assert em.accumulate(P2, Y2, loss=np.full(8, 4.0))["hit_at_one"] == 0.0
    result = em.get()
    assert result["hit_at_one"] == pytest.approx(0.2)
    assert result["perr"] == pytest.approx(0.2)
    assert result["loss"] == pytest.approx((2 * 1.0 + 8 * 4.0) / 10)
    assert result["num_examples"] == 10
    em.clear()
    assert em.get() == {"hit_at_one": 0.0, "perr": 0.0, "map": 0.0, "gap": 0.0, "loss": 0.0,
                        "num_examples": 0}
    em.accumulate(P1, Y1)  # no loss given
    again = em.get()
    assert again["hit_at_one"] == 1.0 and again["loss"] == 0.0 and again["num_examples"] == 2


def test_accumulator_keeps_only_top_k_copies():
    P, Y = random_case(30, 20, 50)
    em = metrics.EvaluationMetrics(num_classes=50, top_k=5)
    em.accumulate(P, Y)
    before = em.get()
    Y_before = Y.copy()
    P[:] = 0  # later changes to the inputs must not matter
    Y[:] = 1
    assert em.get() == before
    stored = {name: a for name, a in vars(em).items() if isinstance(a, list)}
    for name, arrays in stored.items():
        for a in arrays:
            # The top-k pairs, and each video's label count (what GAP's
            # denominator and the per-video records need).
            assert a.shape == ((20,) if name == "_num_labels" else (20, 5)), name
    assert em._scores[0].dtype == np.float32
    assert list(em.per_video()[2]) == list(np.count_nonzero(Y_before, axis=1))


def test_accumulator_rejects_wrong_class_count():
    em = metrics.EvaluationMetrics(num_classes=5)
    with pytest.raises(ValueError):
        em.accumulate(np.zeros((2, 4)), np.zeros((2, 4)))


# --------------------------------------------------------------------------
# edge cases
# --------------------------------------------------------------------------
def test_no_positives():
    P = np.random.default_rng(0).random((10, 8))
    Y = np.zeros((10, 8))
    assert metrics.global_average_precision(P, Y) == 0.0
    assert metrics.mean_average_precision(P, Y) == 0.0
    assert metrics.mean_average_precision(P, Y, filter_empty_classes=True) == 0.0
    assert metrics.precision_at_equal_recall(P, Y) == 0.0
    assert metrics.hit_at_one(P, Y) == 0.0
    assert metrics.average_precision([0.5, 0.2], [0, 0], 0) == 0.0
    assert metrics.average_precision([], [], 3) == 0.0
    em = metrics.EvaluationMetrics(8)
    assert em.accumulate(P, Y)["gap"] == 0.0
    assert em.get()["gap"] == 0.0 and em.get()["map"] == 0.0


def test_empty_inputs_and_top_k_larger_than_classes():
    P, Y = random_case(40, 30, 6)
    assert metrics.global_average_precision(P, Y, top_k=50) == \
        metrics.global_average_precision(P, Y, top_k=6)
    assert metrics.mean_average_precision(P, Y, top_k=50) == \
        metrics.mean_average_precision(P, Y, top_k=6)
    em = metrics.EvaluationMetrics(num_classes=6, top_k=50)
    em.accumulate(P, Y)
    assert em.get()["gap"] == pytest.approx(metrics.global_average_precision(P, Y, top_k=6))
    empty = np.zeros((0, 6))
    assert metrics.hit_at_one(empty, empty) == 0.0
    assert metrics.precision_at_equal_recall(empty, empty) == 0.0
    assert metrics.global_average_precision(empty, empty) == 0.0
    assert metrics.mean_average_precision(empty, empty) == 0.0
    scores, labels, classes = metrics.top_k_pairs(empty, empty, k=3)
    assert scores.shape == labels.shape == classes.shape == (0, 3)
    em.accumulate(empty, empty)
    assert em.get()["num_examples"] == 30


def test_invalid_inputs():
    with pytest.raises(ValueError):
        metrics.global_average_precision(WORKED_P, WORKED_Y, top_k=0)
    with pytest.raises(ValueError):
        metrics.hit_at_one(WORKED_P, WORKED_Y[:2])
    with pytest.raises(ValueError):
        metrics.top_k_pairs(WORKED_P[0], WORKED_Y[0])
    bad = WORKED_P.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError):
        metrics.global_average_precision(bad, WORKED_Y, top_k=2)
    big = np.random.default_rng(0).random((4, 1000))
    big[2, 500] = np.nan
    with pytest.raises(ValueError):
        metrics.top_k_pairs(big, big > 0.5, k=20)


def test_format_summary():
    line = metrics.format_summary({"hit_at_one": 0.85, "perr": 0.7312, "map": 0.4561,
                                   "gap": 0.81234, "loss": 5.1234567, "num_examples": 3},
                                  "epoch/eval number 1000")
    assert line == ("epoch/eval number 1000 | Avg_Hit@1: 0.850 | Avg_PERR: 0.731 | MAP: 0.456 "
                    "| GAP: 0.812 | Avg_Loss: 5.123457")
    assert metrics.format_summary({"avg_hit_at_one": 1, "avg_perr": 0, "aps": [0.5, 1.0],
                                   "gap": 0.25, "avg_loss": 2}).startswith(
        "Avg_Hit@1: 1.000 | Avg_PERR: 0.000 | MAP: 0.750")


def test_metrics_module_does_not_import_tensorflow():
    source = Path(metrics.__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "math", "typing", "numpy"}
