"""Evaluation metrics of the YouTube-8M 2018 starter code, in vectorised numpy.

Re-implements ``eval_util.py``, ``average_precision_calculator.py`` and
``mean_average_precision_calculator.py`` (docs/formats.md section 2,
docs/original.md section 10) without TensorFlow, heaps or per-video loops:
``hit_at_one`` (Hit@1), ``precision_at_equal_recall`` (PERR),
``top_k_classes`` / ``top_k_pairs`` (the per-video top-k, also the CSV's),
``average_precision``, ``global_average_precision`` (GAP@k, the Kaggle 2018
metric), ``mean_average_precision``, ``EvaluationMetrics`` (the epoch
accumulator of eval.py) and ``format_summary`` (its log line).

predictions [V, C] scores, labels [V, C] 0/1 (binarised with labels > 0).
Top-k is exact and canonical: a stable sort by descending score, the lower
class first among equal scores. Pooled rankings break ties by a fixed
pseudo-random order (the original's random.seed(0) shuffle, vectorised) and
compare scores in float32, as EvaluationMetrics stores them, so the
functional and accumulated results are identical (docs/architecture.md
"Metrics"). NaN predictions are a ValueError.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple, Union

import numpy as np

# Kaggle's GAP@20: the k of every top-k default, and the label score pairs per
# video of the submission CSV (training.submission re-exports it; this module
# imports nothing of the project, test_metrics).
DEFAULT_TOP_K = 20

__all__ = [
    "hit_at_one",
    "precision_at_equal_recall",
    "top_k_classes",
    "top_k_pairs",
    "average_precision",
    "global_average_precision",
    "mean_average_precision",
    "class_average_precisions",
    "EvaluationMetrics",
    "format_summary",
    "segment_metrics",
    "format_segment_summary",
]

_TIE_SEED = 0
_LOW32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
# Fallback rows of the exact top-k are processed in chunks of this many rows,
# which bounds the [rows, C] temporaries.
_EXACT_CHUNK_ROWS = 2048


# --------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------
def _as_predictions(predictions) -> np.ndarray:
    p = np.asarray(predictions)
    if p.ndim != 2:
        raise ValueError(f"predictions must be a 2-D [videos, classes] array, got shape {p.shape}")
    if not np.issubdtype(p.dtype, np.floating):
        p = p.astype(np.float64)
    return p


def _as_pair(predictions, labels) -> Tuple[np.ndarray, np.ndarray]:
    """Validates ``predictions``/``labels`` and returns them with boolean labels."""
    p = _as_predictions(predictions)
    y = np.asarray(labels)
    if y.shape != p.shape:
        raise ValueError(f"labels shape {y.shape} != predictions shape {p.shape}")
    if y.dtype != np.bool_:
        y = y > 0
    return p, y


def _check_k(k) -> int:
    k = int(k)
    if k <= 0:
        raise ValueError(f"k / top_k must be a positive integer, got {k}")
    return k


def _nan_error() -> ValueError:
    return ValueError("predictions contain NaN")


# --------------------------------------------------------------------------
# exact, canonical per-row top-k
# --------------------------------------------------------------------------
def _take_rows(a: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``np.take_along_axis(a, cols, axis=1)`` for 2-D ``a`` (a flat np.take when possible)."""
    if a.flags.c_contiguous and a.size < 2 ** 62:
        offsets = (np.arange(a.shape[0], dtype=np.int64) * a.shape[1])[:, None]
        return np.take(a.reshape(-1), cols + offsets)
    return np.take_along_axis(a, cols, axis=1)


def _desc_keys32(s: np.ndarray) -> np.ndarray:
    """uint32 keys whose ascending order is the descending order of float32 ``s``.

    -0.0 and +0.0 get the same key. NaN must be excluded beforehand.
    """
    s = s.astype(np.float32)  # a fresh copy, changed in place below
    s += np.float32(0.0)  # -0.0 -> +0.0
    u = s.view(np.uint32)
    # Non-negative floats get their low 31 bits flipped; negative floats keep their bits.
    u ^= ((u >> np.uint32(31)) - np.uint32(1)) & np.uint32(0x7FFFFFFF)
    return u


def _sort_rows_desc(cols: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """Reorders the columns of every row by (descending value, ascending column)."""
    if vals.dtype in (np.float32, np.float16) and cols.size and cols.max() < 2 ** 32:
        key = _desc_keys32(vals).astype(np.uint64)
        key <<= _SHIFT32
        key |= cols.astype(np.uint64)
        key.sort(axis=1)
        key &= _LOW32
        return key.astype(np.intp)
    o = np.argsort(cols, axis=1, kind="stable")
    cols = np.take_along_axis(cols, o, axis=1)
    vals = np.take_along_axis(vals, o, axis=1)
    o = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(cols, o, axis=1)


def _topk_exact(x: np.ndarray, k: int, kth: Optional[np.ndarray] = None) -> np.ndarray:
    """Canonical top-k columns of every row of ``x``, using a threshold.

    ``kth`` (optional) holds each row's k-th largest value. Every element above
    it is taken, and the remaining slots go to the elements equal to it, lowest
    column first. The cost is O(C) per row, even when a row is all ties.
    """
    v, c = x.shape
    out = np.empty((v, k), dtype=np.intp)
    csum_dtype = np.int16 if c < np.iinfo(np.int16).max else np.int64
    for a in range(0, v, _EXACT_CHUNK_ROWS):
        xs = x[a:a + _EXACT_CHUNK_ROWS]
        n = xs.shape[0]
        if kth is None:
            t = np.partition(xs, c - k, axis=1)[:, c - k]
        else:
            t = kth[a:a + n]
        if np.isnan(t).any():
            raise _nan_error()
        t = t[:, None]
        gt = xs > t
        eq = xs == t
        need = (k - np.count_nonzero(gt, axis=1)).astype(csum_dtype)
        sel = gt
        sel |= eq & (np.cumsum(eq, axis=1, dtype=csum_dtype) <= need[:, None])
        _, cols = np.nonzero(sel)
        if cols.size != n * k:  # only possible with NaN in the row
            raise _nan_error()
        cols = cols.reshape(n, k)
        out[a:a + n] = _sort_rows_desc(cols, _take_rows(xs, cols))
    return out


def _group_candidates(p: np.ndarray, k: int, g: int):
    """(candidate columns [V, k * members], their values, each row's (k+1)-th
    largest group maximum): every member of the k groups (of the G strided
    groups g, g+G, ...) with the largest maxima."""
    v, c = p.shape
    n_rows = c // g
    n_grid = n_rows * g
    tail = c - n_grid
    # Group maxima. Splitting the last axis of the slice stays a view.
    gmax = p[:, :n_grid].reshape(v, n_rows, g).max(axis=1)
    if tail:
        np.maximum(gmax[:, :tail], p[:, n_grid:], out=gmax[:, :tail])
    if np.isnan(gmax).any():
        raise _nan_error()
    gpart = np.argpartition(gmax, g - k - 1, axis=1)
    next_group_max = _take_rows(gmax, gpart[:, g - k - 1:g - k])[:, 0]  # (k+1)-th largest
    groups = gpart[:, g - k:]  # top-k groups, unordered
    members = n_rows + (1 if tail else 0)
    cand = groups[:, :, None] + g * np.arange(members)[None, None, :]
    if tail:  # group j >= tail has no member in the tail: point it at column 0, value -inf
        last = cand[:, :, -1]
        invalid = last >= c
        last[invalid] = 0
    cand = cand.reshape(v, -1)
    cvals = _take_rows(p, cand)
    if tail:
        cvals.reshape(v, k, members)[:, :, -1][invalid] = -np.inf
    return cand, cvals, next_group_max


def _topk_indices(p: np.ndarray, k: int) -> np.ndarray:
    """``[V, k]`` column indices of each row's top-k, ordered by (-score, column).

    This equals ``np.argsort(-p, axis=1, kind="stable")[:, :k]`` but costs
    about one pass over ``p``. The columns are split into G strided groups
    (g, g+G, g+2G, ...). At least k elements are >= the k-th largest group
    maximum, so the top-k all lie in the top-k groups. Only those k*C/G
    candidates are partitioned. A row falls back to ``_topk_exact`` if an
    element outside the candidates (or beyond the k-th candidate) could equal
    the k-th value, which needs an exact tie.
    """
    v, c = p.shape
    k = min(k, c)
    if v == 0:
        return np.empty((0, k), dtype=np.intp)
    if k == c:
        if np.isnan(p).any():
            raise _nan_error()
        return np.argsort(-p, axis=1, kind="stable")
    g = int(math.sqrt(k * c))
    g = max(g, 4 * (k + 1))
    if c < 2 * g:  # too few columns for grouping to pay off
        return _topk_exact(p, k)
    cand, cvals, next_group_max = _group_candidates(p, k, g)
    nc = cand.shape[1]
    kth = np.partition(cvals, nc - k, axis=1)[:, nc - k]

    # Rows whose top-k is not settled by the candidates: the k-th value is
    # repeated past the k-th slot, or may occur outside the candidate groups.
    chosen = cvals >= kth[:, None]
    n_ge = np.count_nonzero(chosen, axis=1)
    ambiguous = (n_ge != k) | (next_group_max >= kth) | ~np.isfinite(kth)
    amb = np.flatnonzero(ambiguous)
    if amb.size:  # placeholders keep exactly k entries per row; replaced below
        chosen[amb] = False
        chosen[amb, :k] = True
    pos = np.nonzero(chosen)[1].reshape(v, k)
    top_cols = _take_rows(cand, pos)
    top_cols = _sort_rows_desc(top_cols, _take_rows(cvals, pos))
    if amb.size:
        top_cols[amb] = _topk_exact(p[amb], k, kth[amb])
    return top_cols


# --------------------------------------------------------------------------
# pooled ranking helpers
# --------------------------------------------------------------------------
def _descending_order(scores: np.ndarray) -> np.ndarray:
    """Indices that sort ``scores`` in descending order, ties in a fixed random order.

    Gives the same result as
    ``perm[np.argsort(-scores[perm], kind="stable")]`` with
    ``perm = np.random.default_rng(0).permutation(n)``. For float32/float16
    input it builds unique uint64 keys and runs an unstable sort on values.
    The high 32 bits of a key hold the order-preserving bits of the score,
    the low 32 bits the permuted position.
    """
    scores = np.asarray(scores).ravel()
    n = scores.size
    if n == 0:
        return np.empty(0, dtype=np.intp)
    perm = np.random.default_rng(_TIE_SEED).permutation(n)
    if scores.dtype in (np.float32, np.float16) and n < 2 ** 32:
        s = scores[perm]
        if np.isnan(s).any():
            raise _nan_error()
        key = _desc_keys32(s).astype(np.uint64)
        key <<= _SHIFT32
        key |= np.arange(n, dtype=np.uint64)
        key.sort()
        key &= _LOW32
        return perm[key.astype(np.intp)]
    s = scores.astype(np.float64, copy=False)[perm]
    if np.isnan(s).any():
        raise _nan_error()
    return perm[np.argsort(-s, kind="stable")]


def _ap_of_sorted(relevant_sorted: np.ndarray, num_positives) -> float:
    """sum_{i relevant} (hits up to i / i) / num_positives, with 1-based ranks i."""
    if num_positives is None or num_positives <= 0:
        return 0.0
    idx = np.flatnonzero(relevant_sorted)
    if idx.size == 0:
        return 0.0
    precisions = np.arange(1, idx.size + 1, dtype=np.float64) / (idx + 1.0)
    return float(precisions.sum() / float(num_positives))


def _class_aps(order: np.ndarray, relevant_sorted: np.ndarray, classes: np.ndarray,
               positives_per_class: np.ndarray) -> np.ndarray:
    """Per-class AP of the pooled pairs, computed by segments.

    ``order`` is the global descending order of the pairs (``_descending_order``)
    and ``relevant_sorted`` is ``relevant[order]``. Sorting stably by class then
    gives each class's ranking with the same tie-breaking as the GAP.
    """
    num_classes = positives_per_class.shape[0]
    n = order.size
    aps = np.zeros(num_classes, dtype=np.float64)
    if n == 0:
        return aps
    cls_o = classes[order]
    if n < 2 ** 31 and num_classes < 2 ** 31:
        # One uint64 value sort on (class, global rank). The lowest bit carries
        # the relevance, so nothing has to be gathered afterwards.
        key = cls_o.astype(np.uint64)
        key <<= _SHIFT32
        low = np.arange(n, dtype=np.uint64)
        low <<= np.uint64(1)
        low |= relevant_sorted.astype(np.uint64)
        key |= low
        del low
        key.sort()
        idx = np.flatnonzero(key & np.uint64(1))
        c_rel = (key[idx] >> _SHIFT32).astype(np.intp)
    else:  # pragma: no cover - far beyond real sizes
        o2 = np.argsort(cls_o, kind="stable")
        rel_s = relevant_sorted[o2]
        idx = np.flatnonzero(rel_s)
        c_rel = cls_o[o2][idx].astype(np.intp)
    if idx.size == 0:
        return aps
    counts = np.bincount(cls_o, minlength=num_classes)
    starts = np.cumsum(counts) - counts
    rel_counts = np.bincount(c_rel, minlength=num_classes)
    rel_before = np.cumsum(rel_counts) - rel_counts
    hits = np.arange(1, idx.size + 1, dtype=np.float64) - rel_before[c_rel]
    ranks = (idx - starts[c_rel] + 1).astype(np.float64)
    sums = np.bincount(c_rel, weights=hits / ranks, minlength=num_classes)
    pos = positives_per_class.astype(np.float64)
    np.divide(sums, pos, out=aps, where=pos > 0)
    return aps


def _mean_ap(aps: np.ndarray, positives_per_class: np.ndarray, filter_empty_classes: bool) -> float:
    if filter_empty_classes:
        aps = aps[positives_per_class > 0]
    if aps.size == 0:
        return 0.0
    return float(aps.mean())


# --------------------------------------------------------------------------
# per-batch core shared by the functions and the accumulator
# --------------------------------------------------------------------------
def _topk_arrays(p: np.ndarray, y: np.ndarray, k: int):
    cols = _topk_indices(p, k)
    scores = _take_rows(p, cols)
    rel = _take_rows(y, cols)
    return cols, scores, rel


def _perr_per_video(p: np.ndarray, y: np.ndarray, num_labels: np.ndarray,
                    scores: Optional[np.ndarray] = None,
                    rel: Optional[np.ndarray] = None) -> np.ndarray:
    """Per-video PERR. ``scores``/``rel`` may hold already computed top-k lists."""
    v = p.shape[0]
    out = np.zeros(v, dtype=np.float64)
    if v == 0:
        return out
    kmax = int(num_labels.max())
    if kmax == 0:
        return out
    k_have = 0 if scores is None or rel is None else scores.shape[1]
    if scores is None or rel is None or k_have == 0:
        _, scores, rel = _topk_arrays(p, y, kmax)
        k_have = kmax

    def fill(rows, sc, rl, nl):
        mask = np.arange(sc.shape[1])[None, :] < nl[:, None]
        hits = np.count_nonzero(rl & (sc > 0) & mask, axis=1)
        out[rows] = hits / np.maximum(nl, 1)

    ok = num_labels <= k_have
    rows = np.flatnonzero(ok & (num_labels > 0))
    if rows.size:
        fill(rows, scores[rows], rel[rows], num_labels[rows])
    rows = np.flatnonzero(~ok)
    if rows.size:
        nl = num_labels[rows]
        _, sc, rl = _topk_arrays(p[rows], y[rows], int(nl.max()))
        fill(rows, sc, rl, nl)
    return out


# --------------------------------------------------------------------------
# public functions
# --------------------------------------------------------------------------
def hit_at_one(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Mean over videos of ``labels[v, argmax_c predictions[v, c]]``; an empty input gives 0.0."""
    p, y = _as_pair(predictions, labels)
    if p.shape[0] == 0 or p.shape[1] == 0:
        return 0.0
    if np.issubdtype(p.dtype, np.floating) and np.isnan(p.max(axis=1)).any():
        raise _nan_error()
    top = np.argmax(p, axis=1)
    return float(np.mean(y[np.arange(p.shape[0]), top]))


def precision_at_equal_recall(predictions: np.ndarray, labels: np.ndarray) -> float:
    """PERR (docs/formats.md 2.3): mean over videos of hits among the top-L_v / L_v.

    Only predictions > 0 count as hits. A video without labels scores 0.
    """
    p, y = _as_pair(predictions, labels)
    if p.shape[0] == 0 or p.shape[1] == 0:
        return 0.0
    num_labels = np.count_nonzero(y, axis=1)
    return float(_perr_per_video(p, y, num_labels).mean())


def top_k_classes(predictions: np.ndarray, k: int = DEFAULT_TOP_K) -> Tuple[np.ndarray, np.ndarray]:
    """Each video's top-k: ``(class_ids [V,k'] intp, scores [V,k'])`` by
    descending score, ties: lower class first; ``k' = min(k, C)``. The
    submission CSV and every metric take their top-k from here."""
    p = _as_predictions(predictions)
    cols = _topk_indices(p, _check_k(k))
    return cols, _take_rows(p, cols)


def top_k_pairs(predictions: np.ndarray, labels: np.ndarray,
                k: int = DEFAULT_TOP_K) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each video's top-k classes, ordered by descending score (ties: lower class first).

    Returns ``(scores [V,k'], labels [V,k'] int8 0/1, class_ids [V,k'] int32)``
    with ``k' = min(k, C)``. Scores keep the dtype of ``predictions``.
    """
    k = _check_k(k)
    p, y = _as_pair(predictions, labels)
    if p.shape[1] == 0:
        raise ValueError("predictions have no classes")
    cols, scores, rel = _topk_arrays(p, y, k)
    return scores, rel.astype(np.int8), cols.astype(np.int32)


def average_precision(scores: np.ndarray, relevant: np.ndarray,
                      num_positives: Optional[int] = None) -> float:
    """AP of one pooled ranked list: ``sum_{i relevant} precision@i / num_positives``.

    ``scores`` and ``relevant`` are flattened. Pairs are ranked by descending
    score, ties broken by the fixed seed-0 permutation (see the module
    docstring). ``num_positives`` defaults to the number of relevant pairs. It
    may be larger, for positives that were never retrieved. If it is <= 0, or
    no pairs are given, the AP is 0.0.
    """
    s = np.asarray(scores).ravel()
    r = np.asarray(relevant).ravel()
    if s.shape != r.shape:
        raise ValueError(f"scores ({s.size}) and relevant ({r.size}) differ in size")
    hits = r > 0
    if num_positives is None:
        num_positives = int(np.count_nonzero(hits))
    if num_positives <= 0 or s.size == 0:
        return 0.0
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float64)
    order = _descending_order(s)
    return _ap_of_sorted(hits[order], num_positives)


def global_average_precision(predictions: np.ndarray, labels: np.ndarray,
                             top_k: int = DEFAULT_TOP_K) -> float:
    """GAP@top_k (docs/formats.md 2.1). The denominator counts ALL positive
    labels, retrieved or not."""
    top_k = _check_k(top_k)
    p, y = _as_pair(predictions, labels)
    if p.shape[0] == 0 or p.shape[1] == 0:
        return 0.0
    _, scores, rel = _topk_arrays(p, y, top_k)
    num_positives = int(np.count_nonzero(y))
    if num_positives == 0:
        return 0.0
    order = _descending_order(scores.astype(np.float32).ravel())
    return _ap_of_sorted(rel.ravel()[order], num_positives)


def class_average_precisions(predictions: np.ndarray, labels: np.ndarray,
                             top_k: int = DEFAULT_TOP_K) -> np.ndarray:
    """Per-class AP ``[C]`` over the pooled top-k pairs (docs/formats.md 2.4).

    Each denominator is the class's number of positives in ``labels``. A class
    without positives gets 0.
    """
    top_k = _check_k(top_k)
    p, y = _as_pair(predictions, labels)
    positives = np.count_nonzero(y, axis=0).astype(np.int64)
    if p.shape[0] == 0 or p.shape[1] == 0:
        return np.zeros(p.shape[1], dtype=np.float64)
    cols, scores, rel = _topk_arrays(p, y, top_k)
    order = _descending_order(scores.astype(np.float32).ravel())
    return _class_aps(order, rel.ravel()[order], cols.ravel(), positives)


def mean_average_precision(predictions: np.ndarray, labels: np.ndarray, top_k: int = DEFAULT_TOP_K,
                           filter_empty_classes: bool = False) -> float:
    """mAP over the pooled top-k lists.

    With the default ``filter_empty_classes=False`` this follows the 2018 code:
    the mean runs over all C classes, so classes without positives add
    zeros. With True it follows HEAD: only classes with positives count.
    """
    p, y = _as_pair(predictions, labels)
    aps = class_average_precisions(p, y, top_k)
    positives = np.count_nonzero(y, axis=0)
    return _mean_ap(aps, positives, filter_empty_classes)


# --------------------------------------------------------------------------
# accumulator
# --------------------------------------------------------------------------
class EvaluationMetrics:
    """Epoch accumulator of eval.py (``eval_util.EvaluationMetrics``).

    It keeps only the top-k (score float32, label int8, class id) pairs of
    each video, plus per-class positive counts, never the full matrices.
    """

    def __init__(self, num_classes: int, top_k: int = DEFAULT_TOP_K):
        num_classes = int(num_classes)
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.top_k = _check_k(top_k)
        self._k = min(self.top_k, num_classes)
        self._class_dtype = np.int16 if num_classes <= np.iinfo(np.int16).max + 1 else np.int32
        self.clear()

    def clear(self) -> None:
        self._scores: List[np.ndarray] = []
        self._labels: List[np.ndarray] = []
        self._classes: List[np.ndarray] = []
        self._num_labels: List[np.ndarray] = []
        self._positives = np.zeros(self.num_classes, dtype=np.int64)
        self.num_examples = 0
        self._sum_hit_at_one = 0.0
        self._sum_perr = 0.0
        self._sum_loss = 0.0
        self._num_loss_examples = 0

    def accumulate(self, predictions: np.ndarray, labels: np.ndarray,
                   loss: Union[float, np.ndarray, None] = None) -> dict:
        """Adds one batch and returns its ``{"hit_at_one", "perr", "gap", "loss"}``.

        ``loss`` may be a scalar (the batch mean) or per-example values, which
        are averaged. Batches without a loss are left out of the loss average.
        """
        p, y = _as_pair(predictions, labels)
        if p.shape[1] != self.num_classes:
            raise ValueError(f"expected {self.num_classes} classes, got {p.shape[1]}")
        batch = p.shape[0]
        batch_loss = 0.0 if loss is None else float(np.mean(loss))
        if batch == 0:
            return {"hit_at_one": 0.0, "perr": 0.0, "gap": 0.0, "loss": batch_loss}

        cols, scores, rel = _topk_arrays(p, y, self._k)
        num_labels = np.count_nonzero(y, axis=1)
        positives = np.count_nonzero(y, axis=0)
        # With the canonical top-k, the first pair is the argmax.
        hits = rel[:, 0]
        perr = _perr_per_video(p, y, num_labels, scores, rel)

        scores32 = scores.astype(np.float32)
        rel8 = rel.astype(np.int8)
        num_pos = int(positives.sum())
        gap = 0.0
        if num_pos:
            order = _descending_order(scores32.ravel())
            gap = _ap_of_sorted(rel8.ravel()[order], num_pos)

        self._scores.append(scores32)
        self._labels.append(rel8)
        self._classes.append(cols.astype(self._class_dtype))
        self._num_labels.append(num_labels.astype(np.int32))
        self._positives += positives
        self.num_examples += batch
        batch_hit = float(hits.mean())
        batch_perr = float(perr.mean())
        self._sum_hit_at_one += batch_hit * batch
        self._sum_perr += batch_perr * batch
        if loss is not None:
            self._sum_loss += batch_loss * batch
            self._num_loss_examples += batch
        return {"hit_at_one": batch_hit, "perr": batch_perr, "gap": gap, "loss": batch_loss}

    def _consolidate(self):
        if len(self._scores) > 1:
            self._scores = [np.concatenate(self._scores)]
            self._labels = [np.concatenate(self._labels)]
            self._classes = [np.concatenate(self._classes)]
            self._num_labels = [np.concatenate(self._num_labels)]
        return self._scores[0].ravel(), self._labels[0].ravel(), self._classes[0].ravel()

    def per_video(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each video's top-k pairs in accumulation order: (scores [V, k]
        float32, relevant [V, k] int8, num_positives [V] int32), what GAP needs
        (training.intervals keeps them for paired comparisons)."""
        if self.num_examples == 0:
            empty = np.zeros((0, self._k))
            return (empty.astype(np.float32), empty.astype(np.int8),
                    np.zeros(0, dtype=np.int32))
        self._consolidate()
        return self._scores[0], self._labels[0], self._num_labels[0]

    def class_average_precisions(self) -> np.ndarray:
        """Per-class AP ``[num_classes]`` over everything accumulated."""
        if self.num_examples == 0:
            return np.zeros(self.num_classes, dtype=np.float64)
        scores, rel, classes = self._consolidate()
        order = _descending_order(scores)
        return _class_aps(order, rel[order], classes, self._positives)

    def get(self, filter_empty_classes: bool = False) -> dict:
        """Epoch metrics: ``{"hit_at_one", "perr", "map", "gap", "loss", "num_examples"}``.

        hit/perr/loss are means weighted by batch size. gap/map are computed
        over all accumulated pairs. ``map`` follows the 2018 semantics unless
        ``filter_empty_classes`` is set.
        """
        n = self.num_examples
        if n == 0:
            return {"hit_at_one": 0.0, "perr": 0.0, "map": 0.0, "gap": 0.0, "loss": 0.0,
                    "num_examples": 0}
        scores, rel, classes = self._consolidate()
        order = _descending_order(scores)
        total_pos = int(self._positives.sum())
        rel_sorted = rel[order]
        gap = _ap_of_sorted(rel_sorted, total_pos) if total_pos else 0.0
        aps = _class_aps(order, rel_sorted, classes, self._positives)
        loss = self._sum_loss / self._num_loss_examples if self._num_loss_examples else 0.0
        return {
            "hit_at_one": self._sum_hit_at_one / n,
            "perr": self._sum_perr / n,
            "map": _mean_ap(aps, self._positives, filter_empty_classes),
            "gap": gap,
            "loss": loss,
            "num_examples": n,
        }


def format_summary(metrics: dict, label: str = "") -> str:
    """The original epoch line, e.g.
    ``epoch/eval number 1000 | Avg_Hit@1: 0.850 | Avg_PERR: 0.730 | MAP: 0.456 |
    GAP: 0.812 | Avg_Loss: 5.123456`` (one line).

    ``label`` is the leading text (the original used "epoch/eval number <step>").
    The original key names (``avg_hit_at_one``, ``avg_perr``, ``aps``,
    ``avg_loss``) are accepted as well.
    """
    def pick(*names, default=None):
        for name in names:
            if name in metrics and metrics[name] is not None:
                return metrics[name]
        if default is None:
            raise KeyError(f"metrics lacks one of {names}")
        return default

    hit = float(pick("hit_at_one", "avg_hit_at_one"))
    perr = float(pick("perr", "avg_perr"))
    if "map" in metrics:
        mean_ap = float(metrics["map"])
    else:
        aps = pick("aps")
        mean_ap = float(np.mean(aps)) if len(aps) else 0.0
    gap = float(pick("gap"))
    loss = float(pick("loss", "avg_loss", default=0.0))
    body = (f"Avg_Hit@1: {hit:.3f} | Avg_PERR: {perr:.3f} | MAP: {mean_ap:.3f} "
            f"| GAP: {gap:.3f} | Avg_Loss: {loss:3f}")
    return f"{label} | {body}" if label else body


# --------------------------------------------------------------------------
# 2019 segment-rated evaluation (docs/formats.md 2.7)
# --------------------------------------------------------------------------

def segment_metrics(scores: np.ndarray, labels: np.ndarray, ratings: np.ndarray,
                    retrieved: Optional[np.ndarray] = None) -> dict:
    """The 2019 metrics of rated segments; entry i is one rating: the model's
    score of class labels[i] on the segment's frames, the 0/1 rating.

    ``segment_map``: the mean over the rated classes with a positive rating
    of the class's AP, its rated segments ranked by score (the starter's
    segment_eval_inference.py: a class's ranking keeps only its rated
    segments, the denominator is its positive ratings; a class with no
    positive rating would stop that script, so it is left out and counted in
    ``num_classes_without_positives``). ``segment_gap``: the AP of all
    ratings pooled in one ranking. Ties: the fixed order of average_precision.
    retrieved: bool [N] (None: all), whether rating i's (segment, class) is
    in the submission (refinement keeps a segment only for its video's top
    classes): the others leave the rankings but still count among their
    class's positives, as the starter's metric scores such a submission.
    """
    s = np.asarray(scores, dtype=np.float32).ravel()
    c = np.asarray(labels, dtype=np.int64).ravel()
    r = np.asarray(ratings).ravel() > 0
    kept = np.ones(s.shape, bool) if retrieved is None else np.asarray(retrieved, bool).ravel()
    if not s.shape == c.shape == r.shape == kept.shape:
        raise ValueError(f"scores ({s.size}), labels ({c.size}), ratings ({r.size}) and "
                         f"retrieved ({kept.size}) differ in size")
    order = np.argsort(c, kind="stable")
    classes, starts = np.unique(c[order], return_index=True)
    aps = []
    for rows in np.split(order, starts[1:]):
        positives = int(r[rows].sum())
        if positives:
            rows = rows[kept[rows]]
            aps.append(average_precision(s[rows], r[rows], positives))
    result = {"segment_map": float(np.mean(aps)) if aps else 0.0,
              "segment_gap": average_precision(s[kept], r[kept], int(r.sum())),
              "num_segments": int(s.size), "num_positive_segments": int(r.sum()),
              "num_rated_classes": int(classes.size),
              "num_classes_without_positives": int(classes.size - len(aps))}
    if retrieved is not None:
        result.update(num_retrieved=int(kept.sum()),
                      num_positive_retrieved=int((r & kept).sum()))
    return result


def format_segment_summary(metrics: dict, label: str = "") -> str:
    """One line: ``<label> | segments 1234 (567 rated 1) over 12 classes |
    [refined: 1000 retrieved (500 rated 1) |] Segment_MAP: 0.812 |
    Segment_GAP: 0.790``."""
    body = (f"segments {metrics['num_segments']} ({metrics['num_positive_segments']} rated 1) "
            f"over {metrics['num_rated_classes']} classes | "
            + (f"refined: {metrics['num_retrieved']} retrieved "
               f"({metrics['num_positive_retrieved']} rated 1) | "
               if "num_retrieved" in metrics else "")
            + f"Segment_MAP: {metrics['segment_map']:.3f} | "
            f"Segment_GAP: {metrics['segment_gap']:.3f}")
    return f"{label} | {body}" if label else body
