"""Times training/metrics.py at YouTube-8M validation scale against the original's heap code.

    python -m bench.bench_metrics [--num_videos=1100000] [--batch_size=10000]
                                  [--reference_videos=20000]

Synthetic data is made one batch at a time, so the full [N, 3862] matrix never
exists. Each video gets 1 + Poisson(2) labels drawn from a skewed class prior.
Predictions are low background noise plus about 20 boosted candidates per video:
most true labels, scored high, and random decoys. Each batch is fed to
``EvaluationMetrics.accumulate``. The benchmark reports the accumulate time,
the ``get()`` time (GAP + mAP over all N*top_k pooled pairs) and the time of
the pooled GAP alone. Data generation is timed separately and left out of the
totals.

The reference is a transcription of the 2018 starter code
(``eval_util.EvaluationMetrics`` with ``AveragePrecisionCalculator`` heaps,
per-video loops and ``random.seed(0)`` shuffles). It runs on the first
``--reference_videos`` videos, next to the vectorised code on the same
batches, and the speed ratio is printed.
"""
from __future__ import annotations

import argparse
import heapq
import random
import time
from typing import List

import numpy as np

from training import metrics


# --------------------------------------------------------------------------
# synthetic data
# --------------------------------------------------------------------------
class BatchMaker:
    """Generates (predictions float32 [B, C], labels bool [B, C]) batches, reusing buffers."""

    def __init__(self, num_classes: int, batch_size: int, seed: int = 0, candidates: int = 20):
        self.num_classes = num_classes
        self.candidates = candidates
        self.rng = np.random.default_rng(seed)
        prior = 1.0 / np.arange(1, num_classes + 1) ** 0.8  # skewed, like YT8M's class frequencies
        self.prior_cdf = np.cumsum(prior / prior.sum())
        self.background = (self.rng.random((batch_size, num_classes), dtype=np.float32)
                           * np.float32(0.02))
        self.pred_buf = np.empty_like(self.background)
        self.label_buf = np.zeros((batch_size, num_classes), dtype=bool)

    def _classes(self, n):
        idx = np.searchsorted(self.prior_cdf, self.rng.random(n))
        return np.minimum(idx, self.num_classes - 1)

    def make(self, batch: int):
        rng = self.rng
        p = self.pred_buf[:batch]
        y = self.label_buf[:batch]
        np.copyto(p, self.background[:batch])
        y.fill(False)
        num_labels = np.minimum(1 + rng.poisson(2.0, batch), 30)
        rows = np.repeat(np.arange(batch), num_labels)
        cols = self._classes(rows.size)
        y[rows, cols] = True
        # True labels: found (high score) with probability 0.8, else a weak score.
        found = rng.random(rows.size) < 0.8
        p[rows, cols] = np.where(found, 0.5 + 0.5 * rng.random(rows.size),
                                 0.3 * rng.random(rows.size)).astype(np.float32)
        # Decoys: fill up to `candidates` boosted entries per video.
        decoys = np.maximum(self.candidates - num_labels, 0)
        drows = np.repeat(np.arange(batch), decoys)
        dcols = self._classes(drows.size)
        p[drows, dcols] = np.maximum(p[drows, dcols],
                                     (0.7 * rng.random(drows.size)).astype(np.float32))
        return p, y


# --------------------------------------------------------------------------
# reference: the 2018 starter code, transcribed (heaps, per-video loops)
# --------------------------------------------------------------------------
class RefAveragePrecisionCalculator:
    def __init__(self):
        self._heap = []
        self._total_positives = 0

    def accumulate(self, predictions, actuals, num_positives):
        self._total_positives += num_positives
        for i in range(len(predictions)):
            heapq.heappush(self._heap, (predictions[i], actuals[i]))

    def peek_ap_at_n(self):
        if not self._heap:
            return 0.0
        predictions, actuals = (list(x) for x in zip(*self._heap))
        if self._total_positives == 0:
            return 0.0
        order = list(range(len(predictions)))
        random.seed(0)
        random.shuffle(order)
        predictions = [predictions[i] for i in order]
        actuals = [actuals[i] for i in order]
        sortidx = sorted(range(len(predictions)), key=lambda i: predictions[i], reverse=True)
        delta_recall = 1.0 / self._total_positives
        ap, poscount = 0.0, 0.0
        for rank, i in enumerate(sortidx):
            if actuals[i] > 0:
                poscount += 1
                ap += poscount / (rank + 1) * delta_recall
        return ap


class RefEvaluationMetrics:
    def __init__(self, num_classes, top_k):
        self.num_classes, self.top_k = num_classes, top_k
        self.map_calculators = [RefAveragePrecisionCalculator() for _ in range(num_classes)]
        self.global_calculator = RefAveragePrecisionCalculator()
        self.sum_hit_at_one = self.sum_perr = 0.0
        self.num_examples = 0

    @staticmethod
    def _perr(predictions, actuals):
        total = 0.0
        for row in range(actuals.shape[0]):
            num_labels = int(np.sum(actuals[row]))
            top_indices = np.argpartition(predictions[row], -num_labels)[-num_labels:]
            item = 0.0
            for label_index in top_indices:
                if predictions[row][label_index] > 0:
                    item += actuals[row][label_index]
            total += item / top_indices.size
        return total / actuals.shape[0]

    def accumulate(self, predictions, labels):
        batch = labels.shape[0]
        hit = float(np.average(labels[np.arange(batch), np.argmax(predictions, 1)]))
        perr = self._perr(predictions, labels)
        k = min(self.top_k, self.num_classes)
        by_class_p: List[List[float]] = [[] for _ in range(self.num_classes)]
        by_class_l: List[List[float]] = [[] for _ in range(self.num_classes)]
        for v in range(batch):
            row, lab = predictions[v], labels[v]
            for index in np.argpartition(row, -k)[-k:]:
                by_class_p[index].append(row[index])
                by_class_l[index].append(lab[index])
        positives = [int(x) for x in labels.sum(axis=0)]
        for c in range(self.num_classes):
            self.map_calculators[c].accumulate(by_class_p[c], by_class_l[c], positives[c])
        flat_p = [x for lst in by_class_p for x in lst]
        flat_l = [x for lst in by_class_l for x in lst]
        self.global_calculator.accumulate(flat_p, flat_l, sum(positives))
        self.sum_hit_at_one += hit * batch
        self.sum_perr += perr * batch
        self.num_examples += batch

    def get(self):
        aps = [calc.peek_ap_at_n() for calc in self.map_calculators]
        return {"hit_at_one": self.sum_hit_at_one / self.num_examples,
                "perr": self.sum_perr / self.num_examples,
                "map": float(np.mean(aps)), "gap": self.global_calculator.peek_ap_at_n()}


# --------------------------------------------------------------------------
def _rate(n, seconds):
    return f"{n / seconds:,.0f} videos/s" if seconds > 0 else "inf videos/s"


def _fmt(m):
    return "hit@1 {hit_at_one:.5f}  perr {perr:.5f}  map {map:.5f}  gap {gap:.5f}".format(**m)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_videos", type=int, default=1_100_000)
    parser.add_argument("--num_classes", type=int, default=3862)
    parser.add_argument("--batch_size", type=int, default=10_000)
    parser.add_argument("--top_k", type=int, default=20)
    parser.add_argument("--reference_videos", type=int, default=20_000,
                        help="videos for the heap-based reference comparison (0 disables it)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    n, c, bs, k = args.num_videos, args.num_classes, args.batch_size, args.top_k
    maker = BatchMaker(c, min(bs, max(n, 1)), seed=args.seed)
    print(f"metrics benchmark: {n:,} videos x {c} classes, batches of {bs:,}, top_k {k}")

    # ---- vectorised, full size -----------------------------------------
    em = metrics.EvaluationMetrics(c, k)
    t_gen = t_acc = 0.0
    done = 0
    while done < n:
        b = min(bs, n - done)
        t0 = time.perf_counter()
        p, y = maker.make(b)
        t1 = time.perf_counter()
        em.accumulate(p, y, loss=0.0)
        t2 = time.perf_counter()
        t_gen += t1 - t0
        t_acc += t2 - t1
        done += b
    t0 = time.perf_counter()
    result = em.get()
    t_get = time.perf_counter() - t0
    scores, rel, _ = em._consolidate()
    total_pos = int(em._positives.sum())
    t0 = time.perf_counter()
    gap_alone = metrics.average_precision(scores, rel, total_pos)
    t_gap = time.perf_counter() - t0
    assert abs(gap_alone - result["gap"]) < 1e-12

    pairs = scores.size
    print(f"  data generation (not counted)            {t_gen:8.2f} s")
    print(f"  accumulate (top-k, hit@1, perr, batch gap) {t_acc:6.2f} s   {_rate(n, t_acc)}")
    print(f"  get() (GAP + mAP over {pairs:,} pairs)  {t_get:6.2f} s")
    print(f"  pooled GAP alone ({pairs:,} pairs)       {t_gap:6.2f} s   {_rate(n, t_gap)}")
    print(f"  accumulate + get                          {t_acc + t_get:6.2f} s   "
          f"{_rate(n, t_acc + t_get)}")
    print(f"  metrics: {_fmt(result)}")
    print("  " + metrics.format_summary(result, "epoch/eval number 0"))

    # ---- reference comparison on a subset --------------------------------
    r = min(args.reference_videos, n)
    if r <= 0:
        return
    ref_maker = BatchMaker(c, min(bs, r), seed=args.seed)
    batches = []
    done = 0
    while done < r:
        b = min(bs, r - done)
        p, y = ref_maker.make(b)
        batches.append((p.copy(), y.astype(np.float32)))
        done += b
    t0 = time.perf_counter()
    vec = metrics.EvaluationMetrics(c, k)
    for p, y in batches:
        vec.accumulate(p, y)
    vec_result = vec.get()
    t_vec = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = RefEvaluationMetrics(c, k)
    for p, y in batches:
        ref.accumulate(p, y)
    ref_result = ref.get()
    t_ref = time.perf_counter() - t0
    print(f"reference (2018 eval_util: heaps, per-video loops) vs vectorised, first {r:,} videos:")
    print(f"  {'':12s}{'seconds':>10s}{'videos/s':>14s}")
    print(f"  {'reference':12s}{t_ref:10.2f}{r / t_ref:14,.0f}")
    print(f"  {'vectorised':12s}{t_vec:10.2f}{r / t_vec:14,.0f}")
    print(f"  speed-up    {t_ref / t_vec:10.1f} x")
    print(f"  reference : {_fmt(ref_result)}")
    print(f"  vectorised: {_fmt(vec_result)}")
    print(f"  reference extrapolated to {n:,} videos: ~{t_ref * n / r:,.0f} s "
          f"(vectorised measured: {t_acc + t_get:.1f} s)")


if __name__ == "__main__":
    main()
