"""Exported size of the full six-model ensemble, bfloat16 against int8, and
the largest int8 ensemble that fits 2^30 bytes:
python -m bench.bench_ensemble_size [--tile_num=10] [--int8_min_values=N]

Builds the six presets at full size (3862 classes, rgb 1024 + audio 128) as
ensemble.build does (one graph, members under model0..model5, the tiled
frame-sampling members), every variable created in bfloat16 through
training.precision.bfloat16_getter and initialised at random one variable at
a time (no float32 copy is ever held), and exports it with
ensemble.export.export_model:
  1. all bfloat16 (what bfloat16_patch.convert writes);
  2. int8: every matrix of at least --int8_min_values values int8 with a
     float32 scale per column (training.quantize), the rest bfloat16;
  3. the largest ensemble of whole rounds of the six presets (two averaged
     runs of each, ...) whose int8 export fits 2^30 bytes, exported too.
Prints the bytes of each against 10^9 and 2^30, next to docs/original.md
1.10's prediction (521,178,044 parameters). Needs about 5 GB of RAM and
1.2 GB of disk; takes a few minutes on 2 cores.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import List, Optional, Sequence

import numpy as np
from absl import app, flags

from bench.full_size import full_size_member
from ensemble import export
from models import presets
from models.tf_compat import tf
from training import checkpoint_fit, member_graph, quantize
from training.members import Member

FLAGS = flags.FLAGS
flags.DEFINE_integer("tile_num", 10, "Tiles of the frame-sampling members.")
flags.DEFINE_integer("int8_min_values", quantize.DEFAULT_MIN_VALUES,
                     "Matrices with at least this many values are int8.")
flags.DEFINE_bool("export_largest", True, "Export the largest int8 ensemble to confirm it.")

PREDICTED_PARAMETERS = 521_178_044
GIB = 1 << 30


def full_size_members(rounds: int = 1) -> List[Member]:
    """The six presets at full size, `rounds` times (bfloat16, random weights)."""
    return [full_size_member(name, checkpoint_fit.BFLOAT16)
            for _ in range(rounds) for name in presets.ENSEMBLE]


def export_random_ensemble(members: Sequence[Member], directory: str, tile_num: int,
                           int8_min_values: Optional[int] = None, log=print) -> int:
    """Builds members (random weights) and exports them to directory; with
    int8_min_values, every matrix that large is stored as int8. -> bytes."""
    start = time.time()
    graph = tf.Graph()
    with graph.as_default():
        tf.set_random_seed(666)
        ensemble = member_graph.build_ensemble_graph(members, [1 / len(members)] * len(members),
                                                     tile_num)
        if int8_min_values is not None:
            for index, key in ensemble.plan_int8(None, int8_min_values, 0):
                ensemble.members[index].add_int8([key])
        initializers = [var.initializer for var in ensemble.variables]
    params = sum(int(np.prod(var.shape.as_list())) for var in ensemble.variables)
    int8_count = sum(len(part.int8_scales) for part in ensemble.members)
    log(f"graph: {len(members)} members, {len(ensemble.variables)} variables "
        f"({int8_count} int8), {params:,} parameters; {time.time() - start:.1f}s")
    with tf.Session(graph=graph) as sess:
        for initializer in initializers:        # one variable at a time
            sess.run(initializer)
        member_graph.quantize_in_session(sess, ensemble)
        start = time.time()
        size = export.export_model(sess, directory, ensemble.export_var_list)
    log(f"exported in {time.time() - start:.1f}s: {export.format_size(size)}")
    return size


def largest_rounds(six_bytes: int) -> int:
    """Whole rounds of the six presets whose export fits 2^30 bytes, when the
    export of one round is six_bytes (data, index and meta graph all grow
    with the members)."""
    return max(1, GIB // six_bytes)


def _fits(size: int) -> str:
    return (f"{'under' if size < 10**9 else 'OVER'} 10^9, "
            f"{'under' if size <= GIB else 'OVER'} 2^30")


def main(argv) -> None:
    del argv
    root = tempfile.mkdtemp(prefix="bench-ensemble-size-")
    rows = []
    try:
        for label, rounds, min_values in (("six, bfloat16", 1, None),
                                          ("six, int8", 1, FLAGS.int8_min_values)):
            directory = os.path.join(root, label.replace(", ", "-"))
            os.makedirs(directory)
            print(f"--- {label}", flush=True)
            size = export_random_ensemble(full_size_members(rounds), directory,
                                          FLAGS.tile_num, min_values)
            rows.append((label, 6 * rounds, size))
            shutil.rmtree(directory)
        rounds = largest_rounds(rows[-1][2])
        if FLAGS.export_largest and rounds > 1:
            label = f"{6 * rounds} members ({rounds} runs of each preset), int8"
            print(f"--- {label}", flush=True)
            directory = os.path.join(root, "largest")
            os.makedirs(directory)
            rows.append((label, 6 * rounds, export_random_ensemble(
                full_size_members(rounds), directory, FLAGS.tile_num, FLAGS.int8_min_values)))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nparameters of the six: docs/original.md 1.10 predicts {PREDICTED_PARAMETERS:,}")
    print(f"{'ensemble':<40} {'members':>7} {'bytes':>15} {'/10^9':>7} {'/2^30':>7}  fits")
    for label, count, size in rows:
        print(f"{label:<40} {count:>7} {size:>15,} {size / 1e9:>7.3f} {size / GIB:>7.3f}  "
              f"{_fits(size)}")
    print(f"largest int8 ensemble of whole rounds under 2^30: {6 * rounds} members")


if __name__ == "__main__":
    app.run(main)
