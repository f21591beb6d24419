"""The sweep behind the presets' tiny sizes: each candidate trained as the
quick start trains it, averaged, evaluated, and timed:
python -m bench.sweep_tiny_sizes [--work_dir=quickstart_output] \
    [--candidates='Soft-DBoF-4k:cluster_size=512,hidden_size=64;GRUModel:gru_cells=64']

Each candidate is a preset plus hyper-parameter overrides on top of its tiny
size; it runs the quick start's stages on the quick start's data (--work_dir,
run ./run_scripts/quickstart.sh first): training.train --size=tiny (200 steps
of batch 32 and the 200-step averaging tail), swa.average with the window
chosen among 1, 2, 4, 8 and batch-norm statistics recomputed on 20 batches,
training.eval, both on the fitting files only (the first --fit_files
validation files; the report's held-out files are never read).
Prints validation GAP and the seconds of each, and each candidate's distance
to the best GAP of the sweep (the quick start wants every member within 0.05).
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple

from absl import app, flags

from models import presets
from training import eval_results

FLAGS = flags.FLAGS
flags.DEFINE_string("work_dir", "quickstart_output", "A quick start's output dir (its data).")
flags.DEFINE_string("candidates", "", "';'-separated preset[:key=value,...] (default: the six "
                    "presets at their tiny size).")
flags.DEFINE_integer("num_classes", 200, "Classes of the quick start's data.")
flags.DEFINE_integer("seed", 2018, "The pipeline's seed.")
flags.DEFINE_integer("fit_files", 2, "The quick start's fitting files (FIT_FILES): the first "
                     "N validation files, the only ones the sweep evaluates on.")


def parse_candidates(text: str) -> List[Tuple[str, Dict[str, str]]]:
    """'A:k=v,k2=v2;B' -> [("A", {"k": "v", "k2": "v2"}), ("B", {})]."""
    out = []
    for item in filter(None, (part.strip() for part in text.split(";"))):
        name, _, overrides = item.partition(":")
        pairs = dict(pair.split("=", 1) for pair in overrides.split(",") if pair)
        out.append((name, pairs))
    return out


def _run(module: str, *args: str) -> None:
    completed = subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                               text=True)
    if completed.returncode != 0:
        raise SystemExit(f"{module} failed: {completed.stderr.strip().splitlines()[-1:]}")


def fitting_files(data: str) -> str:
    """The quick start's fitting files (its first FIT_FILES=2 validation files):
    the sweep never reads the held-out ones that the report measures."""
    found = sorted(glob.glob(os.path.join(data, "validate*.tfrecord")))
    if len(found) <= FLAGS.fit_files:
        raise SystemExit(f"{data}: {len(found)} validation files; the sweep reads the first "
                         f"{FLAGS.fit_files} and needs the rest held out")
    return ",".join(found[:FLAGS.fit_files])


def run_candidate(name: str, overrides: Dict[str, str], data: str, root: str
                  ) -> Tuple[float, float]:
    """(validation GAP, seconds) of one candidate through train, SWA, eval."""
    tag = name + "".join(f"-{k}{v}" for k, v in sorted(overrides.items()))
    train_dir, swa_dir = os.path.join(root, tag, "train"), os.path.join(root, tag, "swa")
    train_pattern = os.path.join(data, "train*.tfrecord")
    start = time.time()
    _run("training.train", f"--model={name}", "--size=tiny", f"--train_dir={train_dir}",
         f"--train_data_pattern={train_pattern}", f"--num_classes={FLAGS.num_classes}",
         f"--seed={FLAGS.seed}", *[f"--{k}={v}" for k, v in sorted(overrides.items())])
    fit = fitting_files(data)
    _run("swa.average", f"--train_dir={train_dir}", f"--output_dir={swa_dir}",
         f"--choose_window_on={fit}", "--windows=1,2,4,8",
         "--bn_statistics=recompute", "--recompute_batches=20",
         f"--train_data_pattern={train_pattern}", f"--seed={FLAGS.seed}")
    _run("training.eval", f"--train_dir={swa_dir}", "--run_once", "--batch_size=64",
         f"--eval_data_pattern={fit}", f"--seed={FLAGS.seed}")
    latest = eval_results.latest_evaluation(swa_dir)
    if latest is None or latest.gap is None:
        raise SystemExit(f"{swa_dir}: no video-level evaluation")
    return latest.gap, time.time() - start


def main(argv) -> None:
    del argv
    data = os.path.join(FLAGS.work_dir, "data", "frame")
    if not os.path.isdir(data):
        raise SystemExit(f"--work_dir={FLAGS.work_dir}: no data/frame; run "
                         f"./run_scripts/quickstart.sh first")
    candidates = parse_candidates(FLAGS.candidates) or [
        (name, {}) for name in presets.PRESET_NAMES]
    root = tempfile.mkdtemp(prefix="sweep-tiny-")
    rows = []
    try:
        for name, overrides in candidates:
            gap, seconds = run_candidate(name, overrides, data, root)
            label = name + (" " + ",".join(f"{k}={v}" for k, v in overrides.items())
                            if overrides else "")
            print(f"{label}: GAP {gap:.4f} in {seconds:.0f}s", flush=True)
            rows.append((label, gap, seconds))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    best = max(gap for _, gap, _ in rows)
    print(f"\n{'candidate':<60} {'GAP':>7} {'to best':>8} {'seconds':>8}")
    for label, gap, seconds in rows:
        print(f"{label:<60} {gap:>7.4f} {gap - best:>+8.4f} {seconds:>8.0f}")


if __name__ == "__main__":
    app.run(main)
