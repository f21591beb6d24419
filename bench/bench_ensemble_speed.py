"""Inference speed of the tiled six-model ensemble, the original's graph against ours:
python -m bench.bench_ensemble_speed [--batch_size=8] [--tile_num=10] [--repeats=3]

The six presets at full size (3862 classes, rgb 1024 + audio 128, random
initialisation, bf16 checkpoints by default), a batch of --batch_size videos
of --num_frames frames, the ensemble's tile count --tile_num. Every member is
built by training.member_graph.build_ensemble_graph (as ensemble.build builds
it), one member per graph (so only one member's weights are in memory at a
time), in these variants:

  original       the member on the input tiled tile_num times
                 (--noshared_frame_work), every member tiled, the GRU too, as
                 the original did; bf16 as the original did it
                 (--original_bf16_compute, default cast_each_step)
  GRU untiled    the GRU on the untiled batch (it is deterministic), same mode
  shared         ours, in the original's bf16 mode: the GRU untiled, the
                 frame-sampling members with their per-frame work done once
                 and aggregated per tile (FrameModel.predict_tiles)
  ours           the same graph in --bf16_compute (default: ensemble.build's
                 default), i.e. what ensemble.build exports

The variants of a member run interleaved, best of --repeats after a warm-up,
so the ratios compare runs made side by side. Totals: original; GRU untiled
(the others still tiled: the first effect alone); shared (both graph
effects, same arithmetic); ours (plus the bf16 mode). Needs about 4 GB of
RAM at batch 8 (the original Soft-DBoF-8k graph is the largest); a few
minutes on 2 cores.
"""
from __future__ import annotations

import time
from typing import Dict

import numpy as np
from absl import app, flags

from bench.full_size import full_size_member, random_batch
from models import presets
from models.tf_compat import tf
from training import member_graph, model_builder
from training import precision as bf16
from training.members import Member

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 8, "Videos per batch.")
flags.DEFINE_integer("num_frames", 300, "Frames of every video (at most 300).")
flags.DEFINE_integer("tile_num", 10, "Tiles (independent draws) per frame-sampling member.")
flags.DEFINE_integer("repeats", 3, "Timed runs per variant (best taken), after one warm-up.")
flags.DEFINE_string("members", ",".join(presets.ENSEMBLE), "Presets to time.")
flags.DEFINE_string("dtype", "bfloat16", "Checkpoint dtype of the members: bfloat16 or float32.")
flags.DEFINE_string("bf16_compute", None, "How bf16 members compute in 'ours' (default: "
                    "ensemble.build's default).")
flags.DEFINE_string("original_bf16_compute", "cast_each_step", "How bf16 members compute in "
                    "the other variants (the original: cast_each_step).")
flags.DEFINE_integer("seed", 0, "Seed of the random batch.")

VARIANTS = ("original", "gru_untiled", "shared", "ours")


def time_member(member: Member, features, num_frames, tile_num: int, repeats: int,
                original_mode: str, our_mode: str) -> Dict[str, float]:
    """Best seconds per batch of each variant of one member (one graph; the
    variants share variables where their storage dtypes agree)."""
    model = model_builder.build_model(member.model_flags)
    deterministic = not model.samples_frames_randomly
    specs = {"original": (True, False, original_mode),
             "shared": (False, True, original_mode),
             "ours": (False, True, our_mode)}
    if deterministic:
        specs["gru_untiled"] = (False, False, original_mode)
    graph = tf.Graph()
    outputs, variables = {}, {}
    with graph.as_default():
        tf.set_random_seed(666)
        with tf.variable_scope(tf.get_variable_scope(), reuse=tf.AUTO_REUSE):
            for variant, (force_tile, shared, mode) in specs.items():
                scope = "model1" if member.stored_bf16_in(mode) else "model0"
                ensemble = member_graph.build_ensemble_graph(
                    [member], [1.0], tile_num, scopes=[scope], force_tile=force_tile,
                    shared_frame_work=shared, bf16_compute=mode)
                outputs[variant] = (ensemble.predictions, ensemble.input_batch_raw,
                                    ensemble.num_frames)
                for var in ensemble.variables:
                    variables[var.op.name] = var
        initializers = [var.initializer for var in variables.values()]
    params = sum(int(np.prod(var.shape.as_list())) for var in variables.values()
                 if var.op.name.startswith(scope + "/"))
    best = {variant: float("inf") for variant in outputs}
    with tf.Session(graph=graph) as sess:
        for initializer in initializers:          # one variable at a time
            sess.run(initializer)
        for run in range(repeats + 1):
            for variant, (predictions, input_raw, frames) in outputs.items():
                start = time.perf_counter()
                sess.run(predictions, {input_raw: features, frames: num_frames})
                if run:                           # run 0 is the warm-up
                    best[variant] = min(best[variant], time.perf_counter() - start)
    best.setdefault("gru_untiled", best["original"])
    if deterministic:      # untiled is what the shared graph does for the GRU
        best["shared"] = min(best["shared"], best["gru_untiled"])
    best["params"] = params
    return best


def main(argv) -> None:
    del argv
    names = [name.strip() for name in FLAGS.members.split(",") if name.strip()]
    features, num_frames = random_batch(FLAGS.batch_size, FLAGS.num_frames, FLAGS.seed)
    our_mode = bf16.check_bf16_compute(FLAGS.bf16_compute)
    original_mode = bf16.check_bf16_compute(FLAGS.original_bf16_compute)
    print(f"batch {FLAGS.batch_size} videos x {FLAGS.num_frames} frames, tile_num "
          f"{FLAGS.tile_num}, {FLAGS.dtype} members (original: {original_mode}, ours: "
          f"{our_mode}), best of {FLAGS.repeats}", flush=True)
    rows = []
    for name in names:
        member = full_size_member(name, FLAGS.dtype)
        start = time.time()
        times = time_member(member, features, num_frames, FLAGS.tile_num, FLAGS.repeats,
                            original_mode, our_mode)
        rows.append((name, [times[v] for v in VARIANTS]))
        print(f"{name}: {times['params']:,} parameters; "
              + ", ".join(f"{v} {times[v]:.3f}s" for v in VARIANTS)
              + f" ({time.time() - start:.0f}s)", flush=True)
    total = [sum(row[1][i] for row in rows) for i in range(len(VARIANTS))]
    batch = FLAGS.batch_size
    print()
    print(f"| member | original: all tiled, {original_mode} (s) | GRU untiled (s) | "
          f"shared frame work (s) | ours: + {our_mode} (s) | graph speed-up | "
          f"total speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, values in rows + [("**total**", total)]:
        bold = "**" if name == "**total**" else ""
        print(f"| {name} | " + " | ".join(f"{bold}{v:.3f}{bold}" for v in values)
              + f" | {bold}{values[0] / values[2]:.1f}x{bold} | "
              f"{bold}{values[0] / values[3]:.1f}x{bold} |")
    print()
    print("videos/sec: " + ", ".join(f"{v} {batch / t:.2f}" for v, t in zip(VARIANTS, total)))
    print(f"GRU untiling alone {total[0] / total[1]:.2f}x; shared frame work on top "
          f"{total[1] / total[2]:.2f}x; {our_mode} instead of {original_mode} on top "
          f"{total[2] / total[3]:.2f}x")


if __name__ == "__main__":
    app.run(main)
