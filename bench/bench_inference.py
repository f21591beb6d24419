"""Sharded inference of the full six-model ensemble: 1 worker against 2 workers.
python -m bench.bench_inference [--files=4 --videos_per_file=24 --tile_num=10]

Exports the six presets at full size with random bfloat16 weights (as
bench.bench_ensemble_size), writes synthetic 300-frame test shards, then runs
``python -m ensemble.inference --num_shards=P --shard_index=i`` for P = 1 (all
cores) and P = 2 (--num_threads = cores / 2 each) side by side, and merges.
A worker's rate counts its videos over the time it predicts (from its
"loaded" line to its last part), so the one-off model load is not in it, and
the job's rate is the sum over the workers, which predict side by side; the
projection scales it to the 1,133,323 test videos. Each worker's
resident memory is read from /proc after every file, to show that it does not
grow with the videos. Needs about 8 GB of RAM and 1.2 GB of disk.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from bench.bench_ensemble_size import export_random_ensemble, full_size_members
from ensemble import merge
from ensemble.build import ensemble_model_flags
from training import checkpoints, readers, synthetic

TEST_VIDEOS = 1_133_323


def export_ensemble(directory: str, tile_num: int) -> int:
    """The six full-size presets, random bf16 weights, exported to directory."""
    members = full_size_members()
    size = export_random_ensemble(members, directory, tile_num, log=lambda _: None)
    checkpoints.write_model_flags(directory, ensemble_model_flags(members))
    return size


def rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def run_workers(model_dir: str, pattern: str, output: str, workers: int, batch_size: int):
    """Runs the workers; -> (videos/sec while predicting, [(pid, RSS MiB) after each file])."""
    threads = max(1, (os.cpu_count() or 2) // workers) if workers > 1 else 0
    events, memory = [], []
    processes = [subprocess.Popen(
        [sys.executable, "-m", "ensemble.inference", f"--train_dir={model_dir}",
         f"--input_data_pattern={pattern}", f"--output_file={output}",
         f"--batch_size={batch_size}", f"--num_shards={workers}", f"--shard_index={index}",
         f"--num_threads={threads}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, bufsize=1) for index in range(workers)]

    def follow(process):
        for line in process.stdout:
            events.append((process.pid, time.time(), line.strip()))
            if "written" in line:
                memory.append((process.pid, rss_mib(process.pid)))

    followers = [threading.Thread(target=follow, args=(p,)) for p in processes]
    for thread in followers:
        thread.start()
    for process, thread in zip(processes, followers):
        thread.join()
        if process.wait() != 0:
            raise SystemExit("a worker failed:\n" + "\n".join(e[2] for e in events[-5:]))
    merge.merge(readers.resolve_files(pattern), output, overwrite=True)
    return sum(worker_rate(events, p.pid) for p in processes), memory


def worker_rate(events, pid: int) -> float:
    """A worker's videos over its time from the model loaded to its last part."""
    mine = [(t, line) for other, t, line in events if other == pid]
    loaded = min(t for t, line in mine if line.startswith("loaded"))
    end, last = max((t, line) for t, line in mine if "written" in line)
    videos = int(last.split(" videos")[0].split()[-1])
    return videos / (end - loaded)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--videos_per_file", type=int, default=24)
    parser.add_argument("--tile_num", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--workdir", default="", help="default: a temporary dir, removed")
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-inference-")
    try:
        model_dir = os.path.join(workdir, "ensemble")
        os.makedirs(model_dir, exist_ok=True)
        size = export_ensemble(model_dir, args.tile_num)
        print(f"exported the six presets (bf16, tile {args.tile_num}): {size:,} bytes",
              flush=True)
        synthetic.write_dataset(workdir, split="test", num_shards=args.files,
                                videos_per_shard=args.videos_per_file, num_classes=3862,
                                seed=1, min_frames=300, max_frames=300, with_labels=False,
                                video_level=False)
        pattern = os.path.join(workdir, "frame", "test*.tfrecord")
        results = {}
        for workers in (1, 2):
            output = os.path.join(workdir, f"w{workers}", "submission.csv")
            os.makedirs(os.path.dirname(output), exist_ok=True)
            results[workers] = run_workers(model_dir, pattern, output, workers,
                                           args.batch_size)
            print(f"{workers} worker(s): {results[workers][0]:.2f} videos/sec", flush=True)
        report(results, args.files * args.videos_per_file)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def report(results, videos: int) -> None:
    one = results[1][0]
    print(f"\n{videos} synthetic 300-frame videos, {os.cpu_count()} cores\n")
    print("| workers | videos/sec | ratio to 1 worker | hours for 1,133,323 videos | "
          "worker RSS after each file (MiB) |")
    print("|---:|---:|---:|---:|---|")
    growth = []
    for workers, (rate, memory) in sorted(results.items()):
        rss = ", ".join(f"{value:.0f}" for _, value in memory)
        print(f"| {workers} | {rate:.2f} | {rate / one:.2f} | {TEST_VIDEOS / rate / 3600:.1f} | "
              f"{rss} |")
        for pid in {pid for pid, _ in memory}:
            values = [value for other, value in memory if other == pid]
            growth.append(np.nanmax(values) - values[0])
    print(f"\nmemory growth of a worker from its first file to its last: at most "
          f"{max(growth):.0f} MiB")


if __name__ == "__main__":
    main()
