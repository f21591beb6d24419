"""Stacking: learns the ensemble weights on held-out data.

    python -m stacking.fit --model_dirs=A,B,C --data_pattern='validate*.tfrecord' \\
        --output_file=weights.json

The original (docs/original.md 9) trained one weight vector with Adam over
frozen base models, normalised by its sum but otherwise unconstrained. Here
the members' predictions over the first --max_videos videos are computed once
(training.predict.open_members: all members in one graph, tiled like the
ensemble with --tile_num) and kept in memory as float32 [N, V, C] (20,000
videos x 6 members x 3862 classes = 1.9 GB); then the weights w minimise the
cross-entropy (training.losses) of q = sum_v w_v p_v with an analytic
gradient: --parameterization=simplex (w >= 0, sum 1; SLSQP) or softmax
(w = softmax(z); L-BFGS-B). It prints each member's weight and the CE and
GAP of every member, of the uniform and of the stacked mean, and writes the
weights file that ensemble.build --weights_file reads (training.weights_file).

--segment_labels: on 2019 segment-rated --data_pattern, the same fit on the
rated (segment, class) pairs (each member's score of the rated class,
training.predict.rated_pair_scores; [pairs, members, 1] against the 0/1 rating); the
file holds both Segment MAPs ("segment_map", "segment_map_uniform"), no GAP.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from absl import flags
from scipy import optimize

from training import flags as shared_flags
from training import intervals, locks, losses, metrics, paths, predict, readers, stage_files
from training.cli import Interrupted, UserError, run_main
from training.members import Member, check_dir_records, check_dir_segment_records
from training.progress import Log
from training.stage_files import WeightsFile
from training.submission import DEFAULT_TOP_K
from training.weights_file import write_weights_file

FLAGS = flags.FLAGS

EPSILON = losses.CROSS_ENTROPY_EPSILON
PARAMETERIZATIONS = ("simplex", "softmax")
CHUNK_ROWS = 2048  # videos per chunk of the numpy objective (bounds temporaries)



def define_flags() -> None:
    shared_flags.define_shared_flags({
        "model_dirs": "", "output_file": ("", "The weights JSON (ensemble.build "
                                                "--weights_file reads it)."),
        "batch_size": 64, "tile_num": 1, "frame_sampling": None, "seed": 2018,
        "num_readers": 2, "top_k": DEFAULT_TOP_K, "compression": "auto"})
    define = shared_flags.define
    define(flags.DEFINE_string, "data_pattern", "",
           "Comma-separated globs of held-out labelled TFRecords (e.g. validate*).",
           path=paths.IN_PATTERN)
    define(flags.DEFINE_string, "parameterization", "simplex",
           "simplex (w >= 0, sum 1; SLSQP) or softmax (w = softmax(z); L-BFGS-B).")
    define(flags.DEFINE_integer, "max_videos", 20000,
           "Use the first N videos of --data_pattern (0: all). Memory: "
           "N x members x classes x 4 bytes. With --segment_labels: the first N rated "
           "segments (N x members x 4 bytes).")
    define(flags.DEFINE_integer, "max_iterations", 500, "Optimiser iterations.")
    define(flags.DEFINE_bool, "segment_labels", False, "--data_pattern holds 2019 "
           "segment-rated records: fit on the rated (segment, class) pairs and report "
           "Segment MAP (docs/formats.md 2.7).")
    define(flags.DEFINE_integer, "segment_size", 5, "Frames per rated segment "
           "(--segment_labels).")


# ---------------------------------------------------------------------------
# Objective (numpy)


def cross_entropy_and_gradient(weights: np.ndarray, predictions: np.ndarray,
                               labels: np.ndarray, epsilon: float = EPSILON,
                               chunk_rows: int = CHUNK_ROWS) -> Tuple[float, np.ndarray]:
    """CE of q = sum_v w_v predictions[:, v, :] and dCE/dw.

    predictions float32 [N, V, C]; labels [N, C] (0/1); weights [V].
    CE as training.losses; dCE/dw_v = mean_n sum_c dCE/dq p_v.
    """
    weights = np.asarray(weights, dtype=np.float64)
    count = predictions.shape[0]
    total, gradient = 0.0, np.zeros(predictions.shape[1], dtype=np.float64)
    w32 = weights.astype(np.float32)
    for start in range(0, count, chunk_rows):
        p = predictions[start:start + chunk_rows]
        q = np.einsum("nvc,v->nc", p, w32)
        value, dq = losses.cross_entropy_sum_and_slope(q, labels[start:start + chunk_rows],
                                                       epsilon)
        assert dq is not None           # with_slope (the default)
        total += value
        gradient += np.einsum("nc,nvc->v", dq, p, dtype=np.float64)
    return total / count, gradient / count


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


@dataclasses.dataclass(frozen=True)
class Fit:
    """fit_weights' result: the weights (>= 0, sum 1), the CE of their mean
    and of the uniform mean, and how the optimiser ended."""
    weights: np.ndarray
    cross_entropy: float
    uniform_cross_entropy: float
    iterations: int
    converged: bool
    message: str


def fit_weights(predictions: np.ndarray, labels: np.ndarray,
                parameterization: str = "simplex", max_iterations: int = 500,
                epsilon: float = EPSILON) -> Fit:
    """Minimises the CE of the weighted mean over the member weights."""
    if parameterization not in PARAMETERIZATIONS:
        raise UserError(f"--parameterization: must be one of {', '.join(PARAMETERIZATIONS)}, "
                        f"got {parameterization!r}")
    if predictions.ndim != 3 or labels.shape != (predictions.shape[0], predictions.shape[2]):
        raise ValueError(f"predictions [N, V, C] and labels [N, C] expected, got "
                         f"{predictions.shape} and {labels.shape}")
    if predictions.shape[0] == 0:
        raise UserError("--data_pattern: no videos to fit the weights on")
    members = predictions.shape[1]
    uniform = np.full(members, 1.0 / members)
    uniform_ce, _ = cross_entropy_and_gradient(uniform, predictions, labels, epsilon)
    if members == 1:
        return Fit(weights=uniform, cross_entropy=uniform_ce, uniform_cross_entropy=uniform_ce,
                   iterations=0, converged=True, message="one member")

    if parameterization == "simplex":
        result = optimize.minimize(
            lambda w: cross_entropy_and_gradient(w, predictions, labels, epsilon),
            uniform, jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * members,
            constraints=[{"type": "eq", "fun": lambda w: np.sum(w) - 1.0,
                          "jac": lambda w: np.ones_like(w)}],
            options={"maxiter": max_iterations, "ftol": 1e-10})
        weights = np.clip(result.x, 0.0, None)
    else:
        def objective(z):
            w = softmax(z)
            value, grad_w = cross_entropy_and_gradient(w, predictions, labels, epsilon)
            return value, w * (grad_w - np.dot(w, grad_w))

        result = optimize.minimize(objective, np.zeros(members), jac=True, method="L-BFGS-B",
                                   options={"maxiter": max_iterations, "ftol": 1e-12,
                                            "gtol": 1e-9})
        weights = softmax(result.x)
    weights = weights / weights.sum()
    value, _ = cross_entropy_and_gradient(weights, predictions, labels, epsilon)
    if not np.isfinite(value) or value > uniform_ce:
        # The optimiser failed to improve on its starting point: keep uniform.
        weights, value = uniform, uniform_ce
    return Fit(weights=weights, cross_entropy=float(value),
               uniform_cross_entropy=float(uniform_ce), iterations=int(result.nit),
               converged=bool(result.success), message=str(result.message))


def weighted_mean(weights: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    return np.einsum("nvc,v->nc", predictions, np.asarray(weights, np.float32))


# ---------------------------------------------------------------------------
# Member predictions


def _members(model: predict.LoadedModel) -> List[Member]:
    """The members of an open_members model (LoadedModel's other kinds have none)."""
    assert model.members is not None
    return model.members


def _log_memory(model: predict.LoadedModel, max_videos: int, log: Optional[Log]) -> None:
    if not log:
        return
    members = _members(model)
    names = ", ".join(f"{m.model_dir} ({m.name}, {m.dtype})" for m in members)
    log(f"stacking {len(members)} members: {names}")
    if max_videos:
        log(f"predictions held in memory: up to {max_videos} videos x {len(members)} "
            f"members x {model.num_classes} classes x 4 bytes = "
            f"{max_videos * len(members) * model.num_classes * 4 / 2 ** 20:.1f} MiB")


def _collect(model: predict.LoadedModel, data_pattern: str, max_videos: int, batch_size: int,
             num_readers: int, log: Optional[Log], compression: str = "auto"
             ) -> Tuple[List, np.ndarray, np.ndarray]:
    """(ids, predictions [N, V, C], labels uint8 [N, C]). With max_videos the
    arrays are allocated once (np.empty: pages never filled cost nothing)."""
    fetches: predict.Fetches = {"members": (model.member_predictions, lambda batch: {})}
    ids: List[bytes] = []
    blocks: List[np.ndarray] = []
    label_blocks: List[np.ndarray] = []
    count = 0
    predictions: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    for batch in predict.iterate_predictions(model, data_pattern, batch_size, num_readers,
                                             "data_pattern", fetches, max_videos=max_videos,
                                             log=log, compression=compression):
        block = np.stack(batch.extras["members"], axis=1).astype(np.float32)
        take = len(batch.ids)
        if max_videos:
            if predictions is None or labels is None:     # (both set at once)
                predictions = np.empty((max_videos,) + block.shape[1:], np.float32)
                labels = np.empty((max_videos, block.shape[2]), np.uint8)
            predictions[count:count + take] = block
            labels[count:count + take] = batch.labels
        else:
            blocks.append(block)
            label_blocks.append(batch.labels.astype(np.uint8))
        ids.extend(batch.ids)
        count += take
    if not count:
        raise UserError(f"--data_pattern={data_pattern}: the files hold no videos")
    if max_videos:
        assert predictions is not None and labels is not None     # count > 0
        return ids, predictions[:count], labels[:count]
    return ids, np.concatenate(blocks, axis=0), np.concatenate(label_blocks, axis=0)


def member_predictions(model_dirs: Sequence[str], data_pattern: str, max_videos: int = 20000,
                       batch_size: int = 64, tile_num: int = 1,
                       frame_sampling: Optional[str] = None, seed: int = 2018,
                       num_readers: int = 2, log: Optional[Log] = print,
                       compression: str = "auto"
                       ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, List[Member]]:
    """(ids [N], predictions float32 [N, V, C], labels uint8 [N, C], members)."""
    files = readers.resolve_files(data_pattern, "data_pattern")
    if model_dirs:
        check_dir_records(model_dirs[0], files, "data_pattern", "stacking", compression)
    model = predict.open_members(model_dirs, tile_num, frame_sampling, seed)
    try:
        _log_memory(model, max_videos, log)
        start = time.time()
        ids, predictions, labels = _collect(model, data_pattern, max_videos, batch_size,
                                            num_readers, log, compression)
    finally:
        model.close()
    if not labels.any():
        raise UserError(f"--data_pattern={data_pattern}: the videos have no labels; stacking "
                        f"needs held-out labelled data (e.g. the validate split)")
    if log:
        log(f"predicted {len(ids)} videos in {time.time() - start:.1f}s")
    return np.array(ids), predictions, labels, _members(model)


# ---------------------------------------------------------------------------
# Report and entry point


def scores(predictions: np.ndarray, labels: np.ndarray,
           top_k: int = DEFAULT_TOP_K) -> Dict[str, float]:
    """CE (training.losses semantics) and GAP@top_k of one prediction matrix [N, C]."""
    return {"cross_entropy": losses.cross_entropy_numpy(predictions, labels),
            "gap": float(metrics.global_average_precision(predictions, labels, top_k))}


def stack(model_dirs: Sequence[str], data_pattern: str, output_file: str,
          parameterization: str = "simplex", max_videos: int = 20000, batch_size: int = 64,
          tile_num: int = 1, frame_sampling: Optional[str] = None, seed: int = 2018,
          num_readers: int = 2, top_k: int = DEFAULT_TOP_K, max_iterations: int = 500,
          log: Log = print, compression: str = "auto", segment_size: int = 0
          ) -> WeightsFile:
    """The command: predictions, fit, report, weights JSON. Returns the file
    written. segment_size > 0: on 2019 segment-rated records (stack_segments)."""
    if parameterization not in PARAMETERIZATIONS:
        raise UserError(f"--parameterization: must be one of {', '.join(PARAMETERIZATIONS)}, "
                        f"got {parameterization!r}")
    shared_flags.require(output_file=output_file)
    if not data_pattern:
        raise UserError("--data_pattern: required (held-out labelled TFRecords)")
    for name, value, minimum in (("max_videos", max_videos, 0), ("batch_size", batch_size, 1),
                                 ("tile_num", tile_num, 1), ("top_k", top_k, 1),
                                 ("max_iterations", max_iterations, 1)):
        if value < minimum:
            raise UserError(f"--{name}: must be >= {minimum}, got {value}")
    if segment_size:
        return stack_segments(model_dirs, data_pattern, output_file, parameterization,
                              max_videos, batch_size, tile_num, frame_sampling, seed,
                              num_readers, max_iterations, log, compression, segment_size)
    ids, predictions, labels, members = member_predictions(
        model_dirs, data_pattern, max_videos, batch_size, tile_num, frame_sampling, seed,
        num_readers, log, compression)
    num_videos = predictions.shape[0]
    fit, before, after, alone = _fit_and_measure(
        predictions, labels, parameterization, max_iterations,
        lambda mean: scores(mean, labels, top_k), log, f"{num_videos} videos", members,
        ("GAP", "gap"))
    log(f"uniform weights: CE {before['cross_entropy']:.4f}  GAP@{top_k} {before['gap']:.4f}")
    log(f"stacked weights: CE {after['cross_entropy']:.4f}  GAP@{top_k} {after['gap']:.4f}")
    record = WeightsFile(
        members=tuple(m.model_dir for m in members),
        weights=tuple(float(w) for w in fit.weights),
        parameterization=parameterization, data_pattern=data_pattern,
        num_videos=int(num_videos), tile_num=int(tile_num),
        member_models=tuple(member.name for member in members),
        cross_entropy_uniform=before["cross_entropy"], gap_uniform=before["gap"],
        cross_entropy=after["cross_entropy"], gap=after["gap"],
        member_cross_entropy=tuple(own["cross_entropy"] for own in alone),
        member_gap=tuple(own["gap"] for own in alone),
        provenance=_provenance(data_pattern, ids))
    return _write(output_file, record, log)


def _fit_and_measure(member_scores: np.ndarray, targets: np.ndarray, parameterization: str,
                     max_iterations: int, measure: Callable[[np.ndarray], Dict[str, float]],
                     log: Log, fitted_on: str, members: Sequence[Any],
                     shown: Tuple[str, str]
                     ) -> Tuple[Fit, Dict[str, float], Dict[str, float],
                                List[Dict[str, float]]]:
    """fit_weights on member_scores [N, V, C] against targets, then `measure`
    ([N, C] scores -> metrics) of the uniform and the stacked mean and of each
    member alone; logs the fit and each member's weight, CE and shown
    (label, metric key). -> (fit, uniform's, stacked's, [each member's])."""
    start = time.time()
    fit = fit_weights(member_scores, targets, parameterization, max_iterations)
    uniform = np.full(len(members), 1.0 / len(members))
    before, after = (measure(weighted_mean(w, member_scores)) for w in (uniform, fit.weights))
    alone = [measure(member_scores[:, v, :]) for v in range(len(members))]
    log(f"fit ({parameterization}) on {fitted_on}: {fit.iterations} iterations in "
        f"{time.time() - start:.1f}s ({fit.message})")
    width = max(len(m.model_dir) for m in members)
    label, key = shown
    for member, weight, own in zip(members, fit.weights, alone):
        log(f"  {member.model_dir:<{width}}  weight {weight:.4f}  | alone: CE "
            f"{own['cross_entropy']:.4f}  {label} {own[key]:.4f}")
    return fit, before, after, alone


def _provenance(data_pattern: str, video_ids: np.ndarray
                ) -> Tuple[stage_files.Provenance, ...]:
    """The weights' provenance: this stage, the fitting files, the digest of
    the videos it fitted on."""
    digest = intervals.video_ids_digest(np.unique(video_ids).tolist())
    return (stage_files.provenance_for("stacking.fit", "weights", data_pattern, digest),)


def _write(output_file: str, record: WeightsFile, log: Log) -> WeightsFile:
    """Writes the weights file; -> the record as written."""
    write_weights_file(output_file, record)
    log(f"wrote {output_file} (use: python -m ensemble.build --weights_file={output_file} ...)")
    return record


# ---------------------------------------------------------------------------
# 2019 segment-rated records (--segment_labels)


def segment_pairs(model_dirs: Sequence[str], data_pattern: str, segment_size: int = 5,
                  max_segments: int = 20000, batch_size: int = 64, tile_num: int = 1,
                  frame_sampling: Optional[str] = None, seed: int = 2018,
                  num_readers: int = 2, log: Optional[Log] = print,
                  compression: str = "auto") -> Tuple[predict.RatedPairs, List[Member]]:
    """(the rated pairs with each member's score of the rated class [S, V],
    the members): all members in one graph (predict.open_members)."""
    files = readers.resolve_files(data_pattern, "data_pattern")
    if model_dirs:
        check_dir_segment_records(model_dirs[0], files, "data_pattern", segment_size,
                                  compression)
    model = predict.open_members(model_dirs, tile_num, frame_sampling, seed)
    try:
        members = _members(model)
        if log:
            log(f"stacking {len(members)} members on rated segments: "
                + ", ".join(f"{m.model_dir} ({m.name}, {m.dtype})" for m in members))
        start = time.time()
        pairs = predict.rated_pair_scores(model, data_pattern, segment_size, batch_size,
                                          num_readers, max_segments, log, "data_pattern",
                                          compression)
    finally:
        model.close()
    if not pairs.ratings.any():
        raise UserError(f"--data_pattern={data_pattern}: no segment is rated 1; fitting on "
                        f"segments needs positive ratings")
    if log:
        log(f"scored {len(pairs.ratings)} rated segments of {pairs.num_videos} videos in "
            f"{time.time() - start:.1f}s")
    return pairs, members


def pair_scores(scores: np.ndarray, pairs: predict.RatedPairs) -> Dict[str, float]:
    """CE (training.losses) of the rated pairs' scores [S] against the ratings,
    and their Segment MAP and GAP (metrics.segment_metrics)."""
    segment = metrics.segment_metrics(scores, pairs.classes, pairs.ratings)
    return {"cross_entropy": losses.cross_entropy_numpy(scores[:, None],
                                                        pairs.ratings[:, None].astype(np.uint8)),
            "segment_map": segment["segment_map"], "segment_gap": segment["segment_gap"]}


def stack_segments(model_dirs: Sequence[str], data_pattern: str, output_file: str,
                   parameterization: str = "simplex", max_segments: int = 20000,
                   batch_size: int = 64, tile_num: int = 1,
                   frame_sampling: Optional[str] = None, seed: int = 2018,
                   num_readers: int = 2, max_iterations: int = 500, log: Log = print,
                   compression: str = "auto", segment_size: int = 5) -> WeightsFile:
    """stack on 2019 segment-rated records: fit_weights on the rated pairs as
    a [S, V, 1] problem (target: the rating), report, weights JSON."""
    pairs, members = segment_pairs(model_dirs, data_pattern, segment_size, max_segments,
                                   batch_size, tile_num, frame_sampling, seed, num_readers,
                                   log, compression)
    fit, before, after, alone = _fit_and_measure(
        pairs.scores[:, :, None], pairs.ratings[:, None].astype(np.uint8), parameterization,
        max_iterations, lambda mean: pair_scores(mean[:, 0], pairs), log,
        f"{len(pairs.ratings)} rated segments", members, ("Segment_MAP", "segment_map"))
    for name, measured in (("uniform", before), ("stacked", after)):
        log(f"{name} weights: CE {measured['cross_entropy']:.4f}  Segment_MAP "
            f"{measured['segment_map']:.4f} on the fitting files")
    record = WeightsFile(
        members=tuple(m.model_dir for m in members),
        weights=tuple(float(w) for w in fit.weights),
        metric="segment_map", parameterization=parameterization,
        data_pattern=data_pattern, segment_size=int(segment_size),
        num_pairs=int(pairs.ratings.size), num_positive_pairs=int(pairs.ratings.sum()),
        num_rated_classes=int(np.unique(pairs.classes).size),
        num_videos=pairs.num_videos, tile_num=int(tile_num),
        member_models=tuple(member.name for member in members),
        cross_entropy_uniform=before["cross_entropy"], cross_entropy=after["cross_entropy"],
        segment_map_uniform=before["segment_map"], segment_map=after["segment_map"],
        segment_gap_uniform=before["segment_gap"], segment_gap=after["segment_gap"],
        member_cross_entropy=tuple(own["cross_entropy"] for own in alone),
        member_segment_map=tuple(own["segment_map"] for own in alone),
        provenance=_provenance(data_pattern, pairs.ids))
    return _write(output_file, record, log)


def main(argv) -> None:
    del argv
    model_dirs = shared_flags.comma_list(FLAGS.model_dirs)
    shared_flags.require(output_file=FLAGS.output_file)
    # One writer per weights file, from the start (the fit takes minutes).
    with locks.held(locks.lock_file_for(FLAGS.output_file), f"--output_file={FLAGS.output_file}",
                    "wait for it to finish or choose another file", lend=True):
        try:
            stack(model_dirs, FLAGS.data_pattern, FLAGS.output_file, FLAGS.parameterization,
                  FLAGS.max_videos, FLAGS.batch_size, FLAGS.tile_num, FLAGS.frame_sampling,
                  FLAGS.seed, FLAGS.num_readers, FLAGS.top_k, FLAGS.max_iterations,
                  log=lambda line: print(line, flush=True), compression=FLAGS.compression,
                  segment_size=FLAGS.segment_size if FLAGS.segment_labels else 0)
        except Interrupted as interrupt:
            raise interrupt.noted(f"nothing was written to --output_file={FLAGS.output_file}",
                                  replace=False) from None


if __name__ == "__main__":
    define_flags()
    run_main(main)
