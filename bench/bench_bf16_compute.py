"""bfloat16 at inference, the three --bf16_compute modes against float32:
python -m bench.bench_bf16_compute [--batch_size=8] [--tile_num=10] [--repeats=3]
    [--gap_fp32_dirs=A,B,.. --gap_bf16_dirs=A16,B16,.. --gap_data_pattern='validate*.tfrecord']

Speed. The six presets at full size (3862 classes, random initialisation, the
graph of ensemble.build: frame-sampling members tiled --tile_num times with the
per-frame work shared, the GRU untiled), one member per graph, the modes
interleaved (best of --repeats after a warm-up) on one batch:

  cast_each_step  bf16 variables cast to float32 on every run (the original)
  cast_at_load    float32 variables (filled once from the bf16 checkpoint);
                  computes exactly as a float32 model with bf16-rounded weights
  bfloat16        bf16 variables, the weight matmuls in bfloat16

The cast_at_load variables hold the same (bf16-representable) values as the
bf16 ones and every variant uses the same frame draws, so the table also gives
each mode's deviation from float32 compute (max and mean |p - p_fp32| over
the batch's 3862 scores, and the overlap of the top 20 classes).

GAP. With --gap_fp32_dirs (float32 model dirs, e.g. the quick start's SWA
dirs) and --gap_bf16_dirs (their bf16 conversions, same order): GAP@20 on
--gap_data_pattern of every member and of their uniform tiled ensemble,
float32 against the three modes (every graph draws the same frames: each
member's frame_sampling_seed is fixed to 100 + its index).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Dict, List, Optional, Sequence, TypedDict

import numpy as np
from absl import app, flags

from bench.full_size import full_size_member, random_batch
from models import presets, registry
from models.tf_compat import tf
from training import checkpoint_fit, member_graph, metrics, model_builder, readers
from training import precision as bf16
from training.members import Member, load_member

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 8, "Videos per batch (speed).")
flags.DEFINE_integer("num_frames", 300, "Frames of every video (speed).")
flags.DEFINE_integer("tile_num", 10, "Tiles per frame-sampling member.")
flags.DEFINE_integer("repeats", 3, "Timed runs per mode (best taken), after one warm-up.")
flags.DEFINE_string("members", ",".join(presets.ENSEMBLE), "Presets to time "
                    "(empty: skip the speed part).")
flags.DEFINE_string("gap_fp32_dirs", "", "Float32 model dirs for the GAP part.")
flags.DEFINE_string("gap_bf16_dirs", "", "Their bf16 conversions, same order.")
flags.DEFINE_string("gap_data_pattern", "", "Labelled TFRecords for the GAP part.")
flags.DEFINE_integer("gap_batch_size", 32, "Videos per batch (GAP).")
flags.DEFINE_integer("seed", 0, "Seed of the random batch.")

MODES = bf16.BF16_COMPUTE_MODES
SAMPLING_SEED = 100


def _with_sampling_seed(member: Member, seed: int) -> Member:
    """The member with its frame_sampling_seed fixed (same draws in every graph)."""
    hparams = member.model_flags.hparams()
    if "frame_sampling_seed" in registry.resolve(member.model_flags.model)[1]:
        hparams["frame_sampling_seed"] = seed
    model_flags = dataclasses.replace(member.model_flags, model_hparams=hparams)
    return Member(member.model_dir, member.checkpoint, model_flags, member.dtype)


# ---------------------------------------------------------------------------
# Speed and deviation on full-size random members


def time_modes(name: str, features, num_frames, tile_num: int, repeats: int) -> Dict:
    member = _with_sampling_seed(full_size_member(name, checkpoint_fit.BFLOAT16), SAMPLING_SEED)
    graph = tf.Graph()
    outputs = {}
    with graph.as_default():
        tf.set_random_seed(666)
        with tf.variable_scope(tf.get_variable_scope(), reuse=tf.AUTO_REUSE):
            for mode in MODES:
                # bf16 variables under model0 (shared by cast_each_step and
                # bfloat16), float32 ones under model1 (cast_at_load).
                scope = "model1" if mode == bf16.CAST_AT_LOAD else "model0"
                ensemble = member_graph.build_ensemble_graph([member], [1.0], tile_num,
                                                             scopes=[scope], bf16_compute=mode)
                outputs[mode] = (ensemble.predictions, ensemble.input_batch_raw,
                                 ensemble.num_frames, ensemble.members[0].restore_map)
        bf16_vars = outputs[bf16.CAST_EACH_STEP][3]
        fp32_vars = outputs[bf16.CAST_AT_LOAD][3]
        initializers = [var.initializer for var in bf16_vars.values()]
        copies = [fp32_vars[key].assign(tf.cast(var, fp32_vars[key].dtype.base_dtype))
                  for key, var in bf16_vars.items()]
    best = {mode: float("inf") for mode in MODES}
    predictions = {}
    with tf.Session(graph=graph) as sess:
        for initializer, copy in zip(initializers, copies):     # one variable at a time
            sess.run(initializer)
            sess.run(copy.op)
        for run in range(repeats + 1):
            for mode, (output, input_raw, frames, _) in outputs.items():
                start = time.perf_counter()
                predictions[mode] = sess.run(output, {input_raw: features, frames: num_frames})
                if run:
                    best[mode] = min(best[mode], time.perf_counter() - start)
    reference = predictions[bf16.CAST_AT_LOAD]
    deviation = {mode: _deviation(predictions[mode], reference) for mode in MODES}
    params = sum(int(np.prod(var.shape.as_list())) for var in bf16_vars.values())
    return {"time": best, "deviation": deviation, "params": params}


def _deviation(predictions: np.ndarray, reference: np.ndarray) -> Dict[str, float]:
    diff = np.abs(predictions.astype(np.float64) - reference)
    k = 20
    top = np.argsort(-predictions, axis=1)[:, :k]
    top_ref = np.argsort(-reference, axis=1)[:, :k]
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(top, top_ref)])
    return {"max": float(diff.max()), "mean": float(diff.mean()), "top20": float(overlap)}


# ---------------------------------------------------------------------------
# GAP of trained (tiny) members


def load_data(model_flags, data_pattern: str, batch_size: int):
    reader = model_builder.make_reader(model_flags)
    graph = tf.Graph()
    with graph.as_default():
        dataset = readers.make_dataset(reader, data_pattern, batch_size, training=False,
                                       num_epochs=1, num_parallel_reads=1)
        next_batch = tf.data.make_one_shot_iterator(dataset).get_next()
    batches = []
    with tf.Session(graph=graph) as sess:
        while True:
            try:
                batch = sess.run(next_batch)
            except tf.errors.OutOfRangeError:
                break
            batches.append((batch["features"], batch["num_frames"], batch["labels"]))
    return batches


class Gaps(TypedDict):
    gap: List[float]            # GAP@20 of each member, then of the ensemble
    predictions: np.ndarray     # the ensemble's [videos, classes]


def gaps_of(member_dirs: Sequence[str], mode: Optional[str], batches, tile_num: int
            ) -> Gaps:
    """GAP@20 of each member and of their uniform ensemble; per-video predictions."""
    members = [_with_sampling_seed(load_member(d), SAMPLING_SEED + i)
               for i, d in enumerate(member_dirs)]
    weights = [1.0 / len(members)] * len(members)
    graph = tf.Graph()
    with graph.as_default():
        tf.set_random_seed(666)
        ensemble = member_graph.build_ensemble_graph(members, weights, tile_num,
                                                     bf16_compute=mode)
        savers = member_graph.member_savers(members, ensemble)
    num_classes = members[0].model_flags.num_classes
    accumulators = [metrics.EvaluationMetrics(num_classes, 20) for _ in range(len(members) + 1)]
    outputs = []
    with tf.Session(graph=graph) as sess:
        member_graph.restore_members(sess, members, savers)
        for features, num_frames, labels in batches:
            out = sess.run([ensemble.predictions] + ensemble.member_predictions,
                           {ensemble.input_batch_raw: features, ensemble.num_frames: num_frames})
            for accumulator, predictions in zip(accumulators, out):
                accumulator.accumulate(predictions, labels)
            outputs.append(out[0])
    gaps = [acc.get()["gap"] for acc in accumulators]           # ensemble, members
    return {"gap": gaps[1:] + gaps[:1],                          # members, ensemble
            "predictions": np.concatenate(outputs)}


# ---------------------------------------------------------------------------


def speed_part() -> None:
    names = [name.strip() for name in FLAGS.members.split(",") if name.strip()]
    if not names:
        return
    features, num_frames = random_batch(FLAGS.batch_size, FLAGS.num_frames, FLAGS.seed)
    print(f"speed: batch {FLAGS.batch_size} videos x {FLAGS.num_frames} frames, tile_num "
          f"{FLAGS.tile_num} (shared frame work, GRU untiled), bf16 members, best of "
          f"{FLAGS.repeats}", flush=True)
    rows = []
    for name in names:
        start = time.time()
        result = time_modes(name, features, num_frames, FLAGS.tile_num, FLAGS.repeats)
        rows.append((name, result))
        print(f"{name}: {result['params']:,} parameters; "
              + ", ".join(f"{m} {result['time'][m]:.3f}s" for m in MODES)
              + f" ({time.time() - start:.0f}s)", flush=True)
    print()
    print("| member | cast_each_step s | cast_at_load s | bfloat16 s | "
          "bfloat16: max / mean abs diff vs fp32 | top-20 overlap |")
    print("|---|---:|---:|---:|---:|---:|")
    totals = {mode: 0.0 for mode in MODES}
    for name, result in rows:
        for mode in MODES:
            totals[mode] += result["time"][mode]
        dev = result["deviation"][bf16.BFLOAT16_COMPUTE]
        print(f"| {name} | " + " | ".join(f"{result['time'][m]:.3f}" for m in MODES)
              + f" | {dev['max']:.1e} / {dev['mean']:.1e} | {dev['top20']:.3f} |")
    print("| **total** | " + " | ".join(f"**{totals[m]:.3f}**" for m in MODES) + " | | |")
    base = totals[bf16.CAST_EACH_STEP]
    print()
    print("speed-up over cast_each_step: " + ", ".join(
        f"{m} {base / totals[m]:.2f}x" for m in MODES))
    same = max(result["deviation"][bf16.CAST_EACH_STEP]["max"] for _, result in rows)
    print(f"cast_each_step vs cast_at_load: max abs diff {same:.1e} (the same arithmetic)")


def gap_part() -> None:
    fp32_dirs = [d for d in FLAGS.gap_fp32_dirs.split(",") if d]
    bf16_dirs = [d for d in FLAGS.gap_bf16_dirs.split(",") if d]
    if not fp32_dirs:
        return
    if len(fp32_dirs) != len(bf16_dirs) or not FLAGS.gap_data_pattern:
        raise app.UsageError("--gap_fp32_dirs, --gap_bf16_dirs (same length) and "
                             "--gap_data_pattern go together")
    batches = load_data(load_member(fp32_dirs[0]).model_flags, FLAGS.gap_data_pattern,
                        FLAGS.gap_batch_size)
    videos = sum(len(b[0]) for b in batches)
    print(f"\nGAP@20 on {videos} videos of {FLAGS.gap_data_pattern}, tile_num {FLAGS.tile_num}",
          flush=True)
    results = {"float32": gaps_of(fp32_dirs, None, batches, FLAGS.tile_num)}
    for mode in MODES:
        results[mode] = gaps_of(bf16_dirs, mode, batches, FLAGS.tile_num)
    names = [load_member(d).name for d in fp32_dirs] + ["ensemble"]
    print()
    print("| model | float32 | cast_each_step | cast_at_load | bfloat16 | "
          "bfloat16 - float32 | bfloat16 - cast_each_step |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for index, name in enumerate(names):
        values = [results[key]["gap"][index] for key in ("float32",) + MODES]
        print(f"| {name} | " + " | ".join(f"{v:.5f}" for v in values)
              + f" | {values[3] - values[0]:+.5f} | {values[3] - values[1]:+.5f} |")
    for mode in MODES:
        diff = np.abs(results[mode]["predictions"] - results["float32"]["predictions"])
        print(f"ensemble predictions, {mode} vs float32: max abs diff {diff.max():.1e}, "
              f"mean {diff.mean():.1e}")


def main(argv) -> None:
    del argv
    speed_part()
    gap_part()


if __name__ == "__main__":
    app.run(main)
