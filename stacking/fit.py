"""Stacking: learns the ensemble weights on held-out data.

    python -m stacking.fit --model_dirs=A,B,C --data_pattern='validate*.tfrecord' \\
        --output_file=weights.json

The original (ORIGINAL.md section 9) trained one weight vector ``prob_ratio``
with Adam over frozen base models, normalised by its sum but otherwise
unconstrained (weights could go negative) and computing gradients for every
frozen variable. Here:

1. Each member (a frozen model dir: train, SWA or bfloat16 dir, e.g. the
   pipeline's ``<model>-bfloat16`` dirs) is built from its model_flags.json by
   ``ensemble.build`` (the same graph code as the ensemble, bfloat16 getter
   included), all members in one graph fed from one reader, so every video is
   read once and the members' rows are aligned. Their predictions over the
   first ``--max_videos`` videos of ``--data_pattern`` (sorted files, record
   order) are computed once, in batches, and kept in memory as float32
   [N videos, V members, C classes]: N * V * C * 4 bytes (20,000 videos x 6
   members x 3862 classes = 1.9 GB). The labels are kept as uint8 [N, C].
   With ``--tile_num`` > 1 the frame-sampling members are tiled as in the
   ensemble (ensemble.build --tile_num), so the weights fit the predictions
   the deployed ensemble makes.
2. The weights w minimise the cross-entropy of the weighted mean
   q = sum_v w_v p_v against the labels (training.losses semantics:
   per-class binary CE with eps 1e-5, summed over classes, mean over videos),
   with an analytic numpy gradient:

   * ``--parameterization=simplex`` (default): w >= 0, sum w = 1, solved by
     SLSQP on the simplex;
   * ``--parameterization=softmax``: w = softmax(z), unconstrained z, L-BFGS-B.

3. It prints each member's weight, and the CE and GAP@20 of the uniform mean
   (before), of every member alone and of the stacked mean (after), and writes
   the weights JSON that ``ensemble.build --weights_file`` reads
   (``{"members": [dirs], "weights": [floats], ...}``, written by
   ``ensemble.build.write_weights_file``, plus the fit's statistics).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from absl import flags

from training import losses, metrics, model_builder, readers
from training.errors import UserError, define_flag, run_main
from training.tf_compat import tf

FLAGS = flags.FLAGS

EPSILON = losses.CROSS_ENTROPY_EPSILON
PARAMETERIZATIONS = ("simplex", "softmax")
CHUNK_ROWS = 2048  # videos per chunk of the numpy objective (bounds temporaries)

Log = Callable[[str], None]


def define_flags() -> None:
    define_flag(flags.DEFINE_string, "model_dirs", "",
                "Comma-separated frozen member model dirs (float32 or bfloat16).")
    define_flag(flags.DEFINE_string, "data_pattern", "",
                "Comma-separated globs of held-out labelled TFRecords (e.g. validate*).")
    define_flag(flags.DEFINE_string, "output_file", "",
                "The weights JSON to write (ensemble.build --weights_file reads it).")
    define_flag(flags.DEFINE_string, "parameterization", "simplex",
                "simplex (w >= 0, sum 1; SLSQP) or softmax (w = softmax(z); L-BFGS-B).")
    define_flag(flags.DEFINE_integer, "max_videos", 20000,
                "Use the first N videos of --data_pattern (0: all). Memory: "
                "N x members x classes x 4 bytes.")
    define_flag(flags.DEFINE_integer, "batch_size", 64, "Videos per prediction batch.")
    define_flag(flags.DEFINE_integer, "tile_num", 1,
                "Tile the frame-sampling members as ensemble.build --tile_num does.")
    define_flag(flags.DEFINE_string, "frame_sampling", None,
                "Override every member's frame sampling: random, uniform or none.")
    define_flag(flags.DEFINE_integer, "seed", 2018, "Graph-level random seed (frame sampling).")
    define_flag(flags.DEFINE_integer, "num_readers", 2, "Files read in parallel.")
    define_flag(flags.DEFINE_integer, "top_k", 20, "k of the reported GAP@k.")
    define_flag(flags.DEFINE_integer, "max_iterations", 500, "Optimiser iterations.")


# ---------------------------------------------------------------------------
# Objective (numpy)


def cross_entropy_and_gradient(weights: np.ndarray, predictions: np.ndarray,
                               labels: np.ndarray, epsilon: float = EPSILON,
                               chunk_rows: int = CHUNK_ROWS) -> Tuple[float, np.ndarray]:
    """CE of q = sum_v w_v predictions[:, v, :] and dCE/dw.

    predictions float32 [N, V, C]; labels [N, C] (0/1); weights [V].
    CE = mean_n sum_c -(y log(q + eps) + (1 - y) log(1 - q + eps)), as
    training.losses.cross_entropy_loss; the gradient is
    dCE/dw_v = mean_n sum_c (-(y / (q + eps)) + (1 - y) / (1 - q + eps)) p_v.
    """
    weights = np.asarray(weights, dtype=np.float64)
    count = predictions.shape[0]
    total, gradient = 0.0, np.zeros(predictions.shape[1], dtype=np.float64)
    w32 = weights.astype(np.float32)
    for start in range(0, count, chunk_rows):
        p = predictions[start:start + chunk_rows]
        y = labels[start:start + chunk_rows].astype(np.float32)
        q = np.einsum("nvc,v->nc", p, w32)
        total += float(-np.sum(y * np.log(q + epsilon) + (1.0 - y) * np.log(1.0 - q + epsilon),
                               dtype=np.float64))
        dq = -y / (q + epsilon) + (1.0 - y) / (1.0 - q + epsilon)
        gradient += np.einsum("nc,nvc->v", dq, p, dtype=np.float64)
    return total / count, gradient / count


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def fit_weights(predictions: np.ndarray, labels: np.ndarray,
                parameterization: str = "simplex", max_iterations: int = 500,
                epsilon: float = EPSILON) -> Dict[str, Any]:
    """Minimises the CE of the weighted mean over the member weights.

    Returns {"weights" (>= 0, sum 1), "cross_entropy", "uniform_cross_entropy",
    "iterations", "converged", "message"}.
    """
    from scipy import optimize

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
        return {"weights": uniform, "cross_entropy": uniform_ce,
                "uniform_cross_entropy": uniform_ce, "iterations": 0, "converged": True,
                "message": "one member"}

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
    return {"weights": weights, "cross_entropy": float(value),
            "uniform_cross_entropy": float(uniform_ce), "iterations": int(result.nit),
            "converged": bool(result.success), "message": str(result.message)}


def weighted_mean(weights: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    return np.einsum("nvc,v->nc", predictions, np.asarray(weights, np.float32))


# ---------------------------------------------------------------------------
# Member predictions


def member_predictions(model_dirs: Sequence[str], data_pattern: str, max_videos: int = 20000,
                       batch_size: int = 64, tile_num: int = 1,
                       frame_sampling: Optional[str] = None, seed: int = 2018,
                       num_readers: int = 2, log: Optional[Log] = print
                       ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, List[Any]]:
    """(ids [N], predictions float32 [N, V, C], labels uint8 [N, C], members).

    All members sit in one graph built by ensemble.build (the ensemble's own
    code: model_flags.json, bfloat16 getter, name-mapped restore), fed from
    one reader, each batch run once for all members.
    """
    from ensemble import build

    if not model_dirs:
        raise UserError("--model_dirs: required")
    build.check_no_duplicates(model_dirs)
    members = [build.load_member(model_dir) for model_dir in model_dirs]
    build.check_members_agree(members)
    readers.resolve_files(data_pattern, "data_pattern")
    reader = model_builder.make_reader(members[0].model_flags)
    num_classes = int(members[0].model_flags["num_classes"])
    graph = tf.Graph()
    with graph.as_default():
        tf.set_random_seed(seed)
        with tf.device("/cpu:0"):
            dataset = readers.make_dataset(reader, data_pattern, batch_size, training=False,
                                           num_epochs=1, num_parallel_reads=num_readers,
                                           flag_name="data_pattern")
            next_batch = tf.data.make_one_shot_iterator(dataset).get_next()
        ensemble = build.build_ensemble_graph(members, [1.0 / len(members)] * len(members),
                                              tile_num, frame_sampling)
        savers = build.member_savers(members, ensemble)
    if log:
        names = ", ".join(f"{m.model_dir} ({m.name}, {m.dtype})" for m in members)
        log(f"stacking {len(members)} members: {names}")
        if max_videos:
            log(f"predictions held in memory: up to {max_videos} videos x {len(members)} "
                f"members x {num_classes} classes x 4 bytes = "
                f"{max_videos * len(members) * num_classes * 4 / 2 ** 20:.1f} MiB")

    # With --max_videos the arrays are allocated once (np.empty: pages that
    # are never filled cost no memory); without, batches are concatenated.
    predictions = labels = None
    ids, blocks, label_blocks = [], [], []
    count, start, last = 0, time.time(), time.time()
    with tf.Session(graph=graph) as sess:
        build.restore_members(sess, members, savers)
        while not max_videos or count < max_videos:
            try:
                batch = sess.run(next_batch)
            except tf.errors.OutOfRangeError:
                break
            except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as err:
                raise UserError(f"--data_pattern: {readers.data_error_message(err)}") from None
            take = len(batch["id"]) if not max_videos else min(len(batch["id"]),
                                                                max_videos - count)
            outputs = sess.run(ensemble.member_predictions,
                               {ensemble.input_batch_raw: batch["features"][:take],
                                ensemble.num_frames: batch["num_frames"][:take]})
            block = np.stack(outputs, axis=1).astype(np.float32)
            if max_videos:
                if predictions is None:
                    predictions = np.empty((max_videos,) + block.shape[1:], np.float32)
                    labels = np.empty((max_videos, block.shape[2]), np.uint8)
                predictions[count:count + take] = block
                labels[count:count + take] = batch["labels"][:take]
            else:
                blocks.append(block)
                label_blocks.append(batch["labels"][:take].astype(np.uint8))
            ids.extend(batch["id"][:take])
            count += take
            if log and (time.time() - last >= 10.0):
                last = time.time()
                log(f"predicted {count} videos | {count / (last - start):.1f} videos/sec")
    if not count:
        raise UserError(f"--data_pattern={data_pattern}: the files hold no videos")
    if max_videos:
        predictions, labels = predictions[:count], labels[:count]
    else:
        predictions = np.concatenate(blocks, axis=0)
        labels = np.concatenate(label_blocks, axis=0)
        del blocks, label_blocks
    if not labels.any():
        raise UserError(f"--data_pattern={data_pattern}: the videos have no labels; stacking "
                        f"needs held-out labelled data (e.g. the validate split)")
    if log:
        log(f"predicted {count} videos in {time.time() - start:.1f}s")
    return np.array(ids), predictions, labels, members


# ---------------------------------------------------------------------------
# Report and entry point


def scores(predictions: np.ndarray, labels: np.ndarray, top_k: int = 20) -> Dict[str, float]:
    """CE (training.losses semantics) and GAP@top_k of one prediction matrix [N, C]."""
    p = np.asarray(predictions, dtype=np.float64)
    y = labels.astype(np.float64)
    ce = float(np.mean(np.sum(-(y * np.log(p + EPSILON) + (1 - y) * np.log(1 - p + EPSILON)),
                              axis=1)))
    return {"cross_entropy": ce,
            "gap": float(metrics.global_average_precision(predictions, labels, top_k))}


def stack(model_dirs: Sequence[str], data_pattern: str, output_file: str,
          parameterization: str = "simplex", max_videos: int = 20000, batch_size: int = 64,
          tile_num: int = 1, frame_sampling: Optional[str] = None, seed: int = 2018,
          num_readers: int = 2, top_k: int = 20, max_iterations: int = 500,
          log: Log = print) -> Dict[str, Any]:
    """The command: predictions, fit, report, weights JSON. Returns the report."""
    from ensemble import build

    if parameterization not in PARAMETERIZATIONS:
        raise UserError(f"--parameterization: must be one of {', '.join(PARAMETERIZATIONS)}, "
                        f"got {parameterization!r}")
    if not output_file:
        raise UserError("--output_file: required")
    if not data_pattern:
        raise UserError("--data_pattern: required (held-out labelled TFRecords)")
    for name, value, minimum in (("max_videos", max_videos, 0), ("batch_size", batch_size, 1),
                                 ("tile_num", tile_num, 1), ("top_k", top_k, 1),
                                 ("max_iterations", max_iterations, 1)):
        if value < minimum:
            raise UserError(f"--{name}: must be >= {minimum}, got {value}")
    ids, predictions, labels, members = member_predictions(
        model_dirs, data_pattern, max_videos, batch_size, tile_num, frame_sampling, seed,
        num_readers, log)
    num_videos = predictions.shape[0]
    start = time.time()
    fit = fit_weights(predictions, labels, parameterization, max_iterations)
    weights = fit["weights"]
    uniform = np.full(len(members), 1.0 / len(members))
    before = scores(weighted_mean(uniform, predictions), labels, top_k)
    after = scores(weighted_mean(weights, predictions), labels, top_k)
    alone = [scores(predictions[:, v, :], labels, top_k) for v in range(len(members))]
    log(f"fit ({parameterization}) on {num_videos} videos: {fit['iterations']} iterations in "
        f"{time.time() - start:.1f}s ({fit['message']})")
    width = max(len(m.model_dir) for m in members)
    for member, weight, own in zip(members, weights, alone):
        log(f"  {member.model_dir:<{width}}  weight {weight:.4f}  | alone: CE "
            f"{own['cross_entropy']:.4f}  GAP {own['gap']:.4f}")
    log(f"uniform weights: CE {before['cross_entropy']:.4f}  GAP@{top_k} {before['gap']:.4f}")
    log(f"stacked weights: CE {after['cross_entropy']:.4f}  GAP@{top_k} {after['gap']:.4f}")
    report = {
        "parameterization": parameterization, "data_pattern": data_pattern,
        "num_videos": int(num_videos), "tile_num": int(tile_num),
        "member_models": [member.name for member in members],
        "cross_entropy_uniform": before["cross_entropy"], "gap_uniform": before["gap"],
        "cross_entropy": after["cross_entropy"], "gap": after["gap"],
        "member_cross_entropy": [own["cross_entropy"] for own in alone],
        "member_gap": [own["gap"] for own in alone],
    }
    build.write_weights_file(output_file, [m.model_dir for m in members],
                             [float(w) for w in weights], **report)
    log(f"wrote {output_file} (use: python -m ensemble.build --weights_file={output_file} ...)")
    return {**report, "members": [m.model_dir for m in members],
            "weights": [float(w) for w in weights]}


def main(argv) -> None:
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    model_dirs = model_builder.split_list(FLAGS.model_dirs)
    stack(model_dirs, FLAGS.data_pattern, FLAGS.output_file, FLAGS.parameterization,
          FLAGS.max_videos, FLAGS.batch_size, FLAGS.tile_num, FLAGS.frame_sampling, FLAGS.seed,
          FLAGS.num_readers, FLAGS.top_k, FLAGS.max_iterations,
          log=lambda line: print(line, flush=True))


if __name__ == "__main__":
    define_flags()
    run_main(main)
