"""GAP of the six models and their ensemble stored in float32, bfloat16 and
int8, and the int8 ensemble's inference speed against bfloat16 cast_at_load:
python -m bench.bench_int8 [--work_dir=quickstart_output] [--int8_min_values=4096]

Reads the SWA dirs and the validation data that ./run_scripts/quickstart.sh
left in --work_dir (run it first), converts each SWA dir with
bfloat16_patch.convert to bfloat16 and to int8 (every matrix of at least
--int8_min_values values; the default catches the large matrices of the
quick start's tiny sizes, as the full-size default catches the full-size
ones), evaluates all three on the validation split with the same per-video
frame draws (cast_at_load, so only the storage differs), then builds the
uniform tiled ensemble of each and evaluates it, and times the bfloat16 and
int8 ensembles side by side (best of --repeats passes over the split).
Exits 1 when int8 moves the GAP of a model or of the ensemble by more than
training.quantize.GAP_TOLERANCE (0.001), the claim it checks.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from typing import Dict

from absl import app, flags

from bfloat16_patch import convert
from ensemble import build
from models import presets
from training import precision, predict, quantize, readers
from training.cli import UserError

FLAGS = flags.FLAGS


def define_flags() -> None:
    """(At run time only: importing the module, e.g. from a test, defines none.)"""
    flags.DEFINE_string("work_dir", "quickstart_output", "A quick start's output dir.")
    flags.DEFINE_integer("int8_min_values", 4096, "Matrices this large are stored int8.")
    flags.DEFINE_integer("tile_num", 10, "Tiles of the ensembles (the quick start's).")
    flags.DEFINE_integer("batch_size", 64, "Videos per batch.")
    flags.DEFINE_integer("repeats", 3, "Timed passes per ensemble (the best counts).")


DTYPES = ("float32", "bfloat16", "int8")
MODE = precision.CAST_AT_LOAD


def _inputs(work_dir: str):
    swa = {name: os.path.join(work_dir, "swa", name) for name in presets.ENSEMBLE}
    pattern = os.path.join(work_dir, "data", "frame", "validate*.tfrecord")
    missing = [path for path in swa.values() if not os.path.isdir(path)]
    if missing:
        raise UserError(f"--work_dir={work_dir}: no quick start output there ({missing[0]} "
                        f"missing); run ./run_scripts/quickstart.sh first")
    readers.resolve_files(pattern, "work_dir")
    return swa, pattern


def _gap(model_dir: str, pattern: str) -> float:
    model = predict.open_model(model_dir, bf16_compute=None if os.path.isfile(
        os.path.join(model_dir, predict.INFERENCE_MODEL + ".meta")) else MODE)
    try:
        gap = predict.evaluate_model(model, pattern, FLAGS.batch_size, 20, 1).gap
        assert gap is not None      # (a video-level result)
        return gap
    finally:
        model.close()


def _rate(model_dir: str, pattern: str) -> float:
    """Best videos/sec over --repeats passes (the model loaded once)."""
    model = predict.open_model(model_dir)
    best = 0.0
    try:
        for _ in range(FLAGS.repeats):
            start, videos = time.time(), 0
            for batch in predict.iterate_predictions(model, pattern, FLAGS.batch_size,
                                                     num_readers=1):
                videos += len(batch.ids)
            best = max(best, videos / (time.time() - start))
    finally:
        model.close()
    return best


def _convert_all(swa: Dict[str, str], root: str) -> Dict[str, Dict[str, str]]:
    dirs, int8_share = {}, {}
    for name, swa_dir in swa.items():
        dirs[name] = {"float32": swa_dir}
        for dtype in DTYPES[1:]:
            dirs[name][dtype] = os.path.join(root, f"{name}-{dtype}")
            summary = convert.convert_checkpoint(swa_dir, dirs[name][dtype], log=None,
                                                 dtype=dtype,
                                                 int8_min_values=FLAGS.int8_min_values)
        int8_share[name] = len(summary.int8)
    print("int8 matrices per model: " + ", ".join(f"{n} {c}" for n, c in int8_share.items()))
    return dirs


def main(argv) -> int:
    del argv
    swa, pattern = _inputs(FLAGS.work_dir)
    root = tempfile.mkdtemp(prefix="bench-int8-")
    try:
        dirs = _convert_all(swa, root)
        gaps = {name: {dtype: _gap(path, pattern) for dtype, path in by_dtype.items()}
                for name, by_dtype in dirs.items()}
        ensembles, sizes = {}, {}
        for dtype in DTYPES:
            ensembles[dtype] = os.path.join(root, f"ensemble-{dtype}")
            payload = build.build_and_export([dirs[name][dtype] for name in dirs],
                                             [1.0] * len(dirs), ensembles[dtype],
                                             tile_num=FLAGS.tile_num, log=None,
                                             bf16_compute=MODE)
            sizes[dtype] = payload.exported_bytes
            gaps.setdefault("ensemble", {})[dtype] = _gap(ensembles[dtype], pattern)
        rates = {dtype: _rate(ensembles[dtype], pattern) for dtype in ("bfloat16", "int8")}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    _print_table(gaps, sizes, rates)
    return gap_verdict(gaps)


def gap_verdict(gaps: Dict[str, Dict[str, float]]) -> int:
    """Prints whether int8 kept every GAP within quantize.GAP_TOLERANCE of
    float32; -> the exit code (1: over, so that a script running the bench
    fails rather than reading past an 'OVER')."""
    deltas = {name: row["int8"] - row["float32"] for name, row in gaps.items()}
    worst = max(abs(delta) for delta in deltas.values())
    over = [name for name, delta in deltas.items() if abs(delta) > quantize.GAP_TOLERANCE]
    print(f"largest |int8 - float32| GAP: {worst:.4f} "
          f"({'OVER' if over else 'within'} {quantize.GAP_TOLERANCE})", flush=True)
    if over:
        print(f"bench_int8: int8 moves the GAP of {', '.join(over)} by more than "
              f"{quantize.GAP_TOLERANCE}", file=sys.stderr, flush=True)
        return 1
    return 0


def _print_table(gaps, sizes, rates) -> None:
    print(f"\n{'model':<32} {'float32':>8} {'bfloat16':>8} {'int8':>8} {'int8-f32':>9}")
    for name, row in gaps.items():
        delta = row["int8"] - row["float32"]
        print(f"{name:<32} {row['float32']:>8.4f} {row['bfloat16']:>8.4f} {row['int8']:>8.4f} "
              f"{delta:>+9.4f}")
    print("ensemble export bytes: " + ", ".join(f"{d} {n:,}" for d, n in sizes.items()))
    ratio = rates["int8"] / rates["bfloat16"]
    print(f"ensemble inference ({MODE}): bfloat16 {rates['bfloat16']:.1f} videos/s, int8 "
          f"{rates['int8']:.1f} videos/s, ratio {ratio:.3f} "
          f"({'at least' if ratio >= 0.95 else 'BELOW'} 0.95)")
    sys.stdout.flush()


if __name__ == "__main__":
    define_flags()
    app.run(main)
