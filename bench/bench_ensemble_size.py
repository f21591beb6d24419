"""Exported size of the full six-model bfloat16 ensemble against the 1 GiB limit:
python -m bench.bench_ensemble_size [--output_dir=D --keep] [--tile_num=10]

Builds the six presets at full size (3862 classes, rgb 1024 + audio 128) as
ensemble.build does (one graph, members under model0..model5, the tiled
frame-sampling members), every variable created in bfloat16 through
training.precision.bfloat16_getter and initialised at random one variable
at a time (no float32 copy of the ensemble is ever held), exports it with
ensemble.export.export_model, and prints the bytes of inference_model.* against
1,073,741,824 bytes, next to docs/original.md 1.10's prediction (521,178,044
parameters, 1,042,356,088 bytes of bf16 data). Needs about 3 GB of RAM and
1.1 GB of disk; takes a minute or two on 2 cores.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time

import numpy as np
from absl import app, flags

from bench.full_size import full_size_member
from ensemble import export
from models import presets
from models.tf_compat import tf
from training import compat, member_graph

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "", "Where to export (default: a temporary dir).")
flags.DEFINE_bool("keep", False, "Keep the export (default: delete it afterwards).")
flags.DEFINE_integer("tile_num", 10, "Tiles of the frame-sampling members.")

PREDICTED_PARAMETERS = 521_178_044
PREDICTED_DATA_BYTES = 2 * PREDICTED_PARAMETERS


def full_size_members():
    return [full_size_member(name, compat.BFLOAT16) for name in presets.PRESET_NAMES]


def main(argv) -> None:
    del argv
    members = full_size_members()
    weights = [1.0 / len(members)] * len(members)
    start = time.time()
    graph = tf.Graph()
    with graph.as_default():
        tf.set_random_seed(666)
        ensemble = member_graph.build_ensemble_graph(members, weights, FLAGS.tile_num)
        variables = ensemble.variables
        initializers = [var.initializer for var in variables]
    params = sum(int(np.prod(var.shape.as_list())) for var in variables)
    dtypes = sorted({var.dtype.base_dtype.name for var in variables})
    print(f"graph: {len(members)} members, {len(variables)} variables, {params:,} parameters "
          f"({dtypes}), tiled {ensemble.tiled}; {time.time() - start:.1f}s", flush=True)
    output_dir = FLAGS.output_dir or tempfile.mkdtemp(prefix="bench-ensemble-size-")
    os.makedirs(output_dir, exist_ok=True)
    try:
        with tf.Session(graph=graph) as sess:
            start = time.time()
            for initializer in initializers:        # one variable at a time
                sess.run(initializer)
            print(f"initialised in {time.time() - start:.1f}s", flush=True)
            start = time.time()
            size = export.export_model(sess, output_dir, ensemble.export_var_list)
            print(f"exported in {time.time() - start:.1f}s", flush=True)
        for path in export.export_files(output_dir):
            print(f"  {os.path.basename(path)}: {os.path.getsize(path):,} bytes")
        print(f"parameters: {params:,} (docs/original.md 1.10: {PREDICTED_PARAMETERS:,})")
        print(f"exported: {export.format_size(size)}")
        print(f"bf16 data predicted {PREDICTED_DATA_BYTES:,} bytes; headroom "
              f"{export.SIZE_LIMIT_BYTES - size:,} bytes; "
              f"{'FITS' if size <= export.SIZE_LIMIT_BYTES else 'OVER'} the 1 GiB limit; "
              f"{'fits' if size <= 10**9 else 'over'} a decimal 1 GB")
    finally:
        if not FLAGS.keep and not FLAGS.output_dir:
            shutil.rmtree(output_dir, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
