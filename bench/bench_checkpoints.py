"""Benchmark of the checkpoint stages: python -m bench.bench_checkpoints [--size_mb=200]

Builds --num_checkpoints synthetic checkpoints of --size_mb of model variables
each (--num_tensors float32 tensors under tower/), then measures side by side,
in one run, each in a fresh subprocess:

* SWA (swa.average) over all the checkpoints vs shutil.copy of the same input
  bytes (every checkpoint's data file);
* the bf16 conversion (bfloat16_patch.convert) of one checkpoint vs shutil.copy
  of that checkpoint's data file;

and prints a table of wall time, the ratio to the copy, and the peak memory
(VmHWM of the subprocess, also above its baseline after importing
TensorFlow; tracemalloc's peak of numpy/python allocations) against the size
of one checkpoint. Each contender runs --repeats times, interleaved, after an
os.sync(); the best time is shown. The inputs were just written, so they are
likely in the page cache for every contender alike.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from typing import Dict, List, Optional

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_mib() -> float:
    """Peak resident memory of this process so far (MiB).

    /proc/self/status VmHWM belongs to the current address space; ru_maxrss
    would also count the parent's RSS at fork time (Linux keeps it across exec).
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # KiB on Linux


def make_checkpoints(workdir: str, size_mb: float, num_tensors: int, num_checkpoints: int
                     ) -> str:
    """train dir with model.ckpt-<k> (k = 1..N) and model_flags.json."""
    from models.tf_compat import tf
    from training import checkpoints
    from training.model_flags import ModelFlags

    train_dir = os.path.join(workdir, "train")
    os.makedirs(train_dir)
    checkpoints.write_model_flags(train_dir, ModelFlags(
        model="FrameMeanMoeModel", feature_names="rgb,audio", feature_sizes="1024,128",
        frame_features=True, num_classes=10))
    total = int(size_mb * 2**20 / 4)
    sizes = [total // num_tensors] * num_tensors
    sizes[-1] += total - sum(sizes)
    entries = [(f"tower/layer{i}/weights", [size], tf.float32) for i, size in enumerate(sizes)]
    entries.append(("tower/layer0/weights/Adam", [16], tf.float32))   # dropped by both stages
    shapes = {key: shape for key, shape, _ in entries}
    for step in range(1, num_checkpoints + 1):
        rng = np.random.RandomState(step)

        def produce(key, rng=rng):
            return rng.standard_normal(shapes[key]).astype(np.float32)

        checkpoints.write_arrays_checkpoint(os.path.join(train_dir, f"model.ckpt-{step}"),
                                            entries, produce)
    return train_dir


def data_files(train_dir: str, step: Optional[int] = None) -> List[str]:
    pattern = f"model.ckpt-{step if step is not None else '*'}.data-*"
    return sorted(glob.glob(os.path.join(train_dir, pattern)))


# ---------------------------------------------------------------------------
# Workers (run in a subprocess each)


def worker(task: str, train_dir: str, output: str) -> dict:
    baseline = None
    if task in ("swa", "bf16"):
        from models.tf_compat import tf

        with tf.Session(graph=tf.Graph()):
            pass
        baseline = rss_mib()
    tracemalloc.start()
    start = time.perf_counter()
    if task == "swa":
        from swa import average
        average.average(train_dir, output, swa_start=0, log=None)
    elif task == "bf16":
        from bfloat16_patch import convert
        last = sorted(glob.glob(os.path.join(train_dir, "model.ckpt-*.index")))[-1]
        convert.convert_checkpoint(train_dir, output, checkpoint_file=last[:-len(".index")],
                                   log=None)
    elif task == "copy_all":
        os.makedirs(output)
        for path in data_files(train_dir):
            shutil.copy(path, output)
    elif task == "copy_one":
        os.makedirs(output)
        last = sorted(glob.glob(os.path.join(train_dir, "model.ckpt-*.index")))[-1]
        for path in glob.glob(last[:-len(".index")] + ".data-*"):
            shutil.copy(path, output)
    else:
        raise ValueError(task)
    seconds = time.perf_counter() - start
    traced_peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    peak = rss_mib()
    written = sum(os.path.getsize(p) for p in glob.glob(os.path.join(output, "*"))
                  if os.path.isfile(p))
    return {"task": task, "seconds": seconds, "peak_rss_mib": peak,
            "baseline_rss_mib": baseline, "traced_peak_mib": traced_peak,
            "written_mib": written / 2**20}


def run_worker(task: str, train_dir: str, output: str) -> dict:
    completed = subprocess.run(
        [sys.executable, "-m", "bench.bench_checkpoints", f"--worker={task}",
         f"--train_dir={train_dir}", f"--output={output}"],
        cwd=REPO_ROOT, capture_output=True, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if completed.returncode != 0:
        raise RuntimeError(f"{task} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size_mb", type=float, default=200.0,
                        help="Model-variable bytes of one checkpoint (MiB).")
    for name, default in (("--num_tensors", 8), ("--num_checkpoints", 5)):
        parser.add_argument(name, type=int, default=default)
    parser.add_argument("--repeats", type=int, default=3,
                        help="Runs of each contender (best time, highest peak memory).")
    parser.add_argument("--workdir", default="", help="Where to write (default: a temp dir, "
                        "removed at the end).")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    parser.add_argument("--train_dir", default="", help=argparse.SUPPRESS)
    parser.add_argument("--output", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.train_dir, args.output)))
        return

    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_checkpoints-")
    made_workdir = not args.workdir
    try:
        start = time.perf_counter()
        train_dir = make_checkpoints(workdir, args.size_mb, args.num_tensors,
                                     args.num_checkpoints)
        ckpt_mib = sum(os.path.getsize(p) for p in data_files(train_dir, 1)) / 2**20
        print(f"wrote {args.num_checkpoints} checkpoints of {ckpt_mib:.1f} MiB "
              f"({args.num_tensors} tensors) in {time.perf_counter() - start:.1f}s", flush=True)
        results: Dict[str, dict] = {}
        for repeat in range(args.repeats):
            for task in ("copy_all", "swa", "copy_one", "bf16"):
                output = os.path.join(workdir, f"out_{task}")
                shutil.rmtree(output, ignore_errors=True)
                os.sync()   # no write-back of an earlier contender's output in this timing
                result = run_worker(task, train_dir, output)
                print(f"  run {repeat + 1}/{args.repeats} {task}: {result['seconds']:.2f}s",
                      flush=True)
                best = results.setdefault(task, result)
                best["seconds"] = min(best["seconds"], result["seconds"])
                for key in ("peak_rss_mib", "traced_peak_mib"):
                    best[key] = max(best[key], result[key])
    finally:
        if made_workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    rows = [("SWA over %d" % args.num_checkpoints, results["swa"], results["copy_all"]),
            ("copy of the %d inputs" % args.num_checkpoints, results["copy_all"], None),
            ("bf16 conversion", results["bf16"], results["copy_one"]),
            ("copy of 1 input", results["copy_one"], None)]
    header = (f"{'operation':<24} {'time s':>8} {'x copy':>7} {'peak RSS MiB':>13} "
              f"{'above TF MiB':>13} {'/ckpt':>6} {'numpy peak MiB':>15} {'written MiB':>12}")
    print()
    print(f"checkpoint: {ckpt_mib:.1f} MiB of float32 model variables; "
          f"{args.num_checkpoints} checkpoints")
    print(header)
    print("-" * len(header))
    for label, result, copy in rows:
        ratio = f"{result['seconds'] / copy['seconds']:.2f}" if copy else "1.00"
        above = (result["peak_rss_mib"] - result["baseline_rss_mib"]
                 if result["baseline_rss_mib"] is not None else result["peak_rss_mib"])
        print(f"{label:<24} {result['seconds']:>8.2f} {ratio:>7} {result['peak_rss_mib']:>13.1f} "
              f"{above:>13.1f} {above / ckpt_mib:>6.2f} {result['traced_peak_mib']:>15.1f} "
              f"{result['written_mib']:>12.1f}")
    print("(above TF: peak RSS minus the RSS after importing TensorFlow and opening a session; "
          "/ckpt: that over one checkpoint's size)")


if __name__ == "__main__":
    main()
