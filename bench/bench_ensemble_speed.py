"""Inference speed of the tiled six-model ensemble, the original's graph against ours:
python -m bench.bench_ensemble_speed [--batch_size=8] [--tile_num=10] [--repeats=3]

The six presets at full size (3862 classes, rgb 1024 + audio 128, random
initialisation, bf16 checkpoints by default), a batch of --batch_size videos
of --num_frames frames, the ensemble's tile count --tile_num. Every member is
built by ensemble.build.build_ensemble_graph, one member per graph (so only
one member's weights are in memory at a time), in up to three variants that
share its variables:

  naive          the member runs on the input tiled tile_num times
                 (--noshared_frame_work); for the GRU that is the original's
                 graph, which tiled every member
  untiled        the GRU on the untiled batch (it is deterministic)
  shared         the frame-sampling members with the per-frame work shared
                 across tiles (FrameModel.predict_tiles, the default)

and the variants run interleaved, best of --repeats after a warm-up, so the
ratios compare runs made side by side. Three totals:

  original       every member tiled (naive; the GRU tiled too)
  GRU untiled    the GRU untiled, the others naive (the first effect alone)
  ours           the GRU untiled, the others shared (ensemble.build's graph)

--bf16_compute picks how the bf16 members compute (see bfloat16_patch.getter;
bench.bench_bf16_compute compares the three modes). Needs about 4 GB of RAM at
batch 8 (the naive Soft-DBoF-8k graph is the largest); a few minutes on 2 cores.
"""
from __future__ import annotations

import time
from typing import Dict, List

import numpy as np
from absl import app, flags

from bench.full_size import full_size_member, random_batch
from bfloat16_patch import getter as bf16
from ensemble import build
from models import frame_models
from training import model_builder
from training.tf_compat import tf

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 8, "Videos per batch.")
flags.DEFINE_integer("num_frames", 300, "Frames of every video (at most 300).")
flags.DEFINE_integer("tile_num", 10, "Tiles (independent draws) per frame-sampling member.")
flags.DEFINE_integer("repeats", 3, "Timed runs per variant (best taken), after one warm-up.")
flags.DEFINE_string("members", ",".join(frame_models.PRESET_NAMES), "Presets to time.")
flags.DEFINE_string("dtype", "bfloat16", "Checkpoint dtype of the members: bfloat16 or float32.")
flags.DEFINE_string("bf16_compute", None, "How bf16 members compute (default: "
                    "ensemble.build's default).")
flags.DEFINE_integer("seed", 0, "Seed of the random batch.")

def variants_of(member: build.Member) -> List[str]:
    model = model_builder.build_model(member.model_flags)
    if model.supports_shared_frame_work:
        return ["naive", "shared"]
    if model.samples_frames_randomly:
        return ["naive"]
    return ["naive", "untiled"]


def time_member(member: build.Member, features, num_frames, tile_num: int, repeats: int,
                bf16_compute) -> Dict[str, float]:
    """Best seconds per batch of each variant of one member (one graph)."""
    graph = tf.Graph()
    outputs = {}
    with graph.as_default():
        tf.set_random_seed(666)
        with tf.variable_scope(tf.get_variable_scope(), reuse=tf.AUTO_REUSE):
            for variant in variants_of(member):
                ensemble = build.build_ensemble_graph(
                    [member], [1.0], tile_num, scopes=["model0"],
                    force_tile=variant == "naive", shared_frame_work=variant == "shared",
                    bf16_compute=bf16_compute)
                outputs[variant] = (ensemble.predictions, ensemble.input_batch_raw,
                                    ensemble.num_frames)
        variables = ensemble.variables
        initializers = [var.initializer for var in variables]
    params = sum(int(np.prod(var.shape.as_list())) for var in variables)
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
    best["params"] = params
    return best


def main(argv) -> None:
    del argv
    names = [name.strip() for name in FLAGS.members.split(",") if name.strip()]
    features, num_frames = random_batch(FLAGS.batch_size, FLAGS.num_frames, FLAGS.seed)
    mode = bf16.check_bf16_compute(FLAGS.bf16_compute)
    print(f"batch {FLAGS.batch_size} videos x {FLAGS.num_frames} frames, tile_num "
          f"{FLAGS.tile_num}, {FLAGS.dtype} members"
          f"{f', bf16_compute={mode}' if FLAGS.dtype == 'bfloat16' else ''}, best of "
          f"{FLAGS.repeats}", flush=True)
    rows = []
    for name in names:
        member = full_size_member(name, FLAGS.dtype)
        start = time.time()
        times = time_member(member, features, num_frames, FLAGS.tile_num, FLAGS.repeats, mode)
        original = times["naive"]
        ours = times.get("shared", times.get("untiled", original))
        gru_untiled = times.get("untiled", original)
        rows.append((name, original, gru_untiled, ours))
        print(f"{name}: {times['params']:,} parameters; "
              + ", ".join(f"{k} {v:.3f}s" for k, v in times.items() if k != "params")
              + f" ({time.time() - start:.0f}s)", flush=True)
    total = [sum(row[i] for row in rows) for i in (1, 2, 3)]
    batch = FLAGS.batch_size
    print()
    print(f"| member | original (all tiled) s | GRU untiled s | ours s | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for name, original, gru_untiled, ours in rows:
        print(f"| {name} | {original:.3f} | {gru_untiled:.3f} | {ours:.3f} | "
              f"{original / ours:.1f}x |")
    print(f"| **total** | **{total[0]:.3f}** | **{total[1]:.3f}** | **{total[2]:.3f}** | "
          f"**{total[0] / total[2]:.1f}x** |")
    print()
    print(f"videos/sec: original {batch / total[0]:.2f}, GRU untiled {batch / total[1]:.2f}, "
          f"ours {batch / total[2]:.2f}; GRU untiling alone {total[0] / total[1]:.2f}x, "
          f"shared frame work on top {total[1] / total[2]:.2f}x")


if __name__ == "__main__":
    app.run(main)
