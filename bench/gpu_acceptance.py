"""GPU acceptance of the whole workflow, in one command:
python -m bench.gpu_acceptance [--json=gpu_acceptance.json] [--presets=...] [--cpu_smoke]

On a machine with N >= 1 visible GPUs (CUDA_VISIBLE_DEVICES applies) it
1. writes synthetic 300-frame shards, then for each preset and both
   --matmul_dtype values trains a few steps at the preset's batch size on one
   GPU and (N > 1) on N towers, fed by the real readers: examples/sec,
   GFLOP/s, the ratio to a bf16 and a float32 matmul timed on the same GPU,
   peak GPU memory and the N-tower scaling;
2. checks one training step on a fixed batch: 1 tower against N towers (a
   model without batch norm, whose statistics a split batch changes) and GPU
   against CPU (a tiny preset): the same loss and updated variables
   (--cpu_smoke has no GPU: it compares the two CPU devices and says so);
3. averages, converts to bfloat16, builds the six-member tiled ensemble from
   the fresh checkpoints and predicts synthetic test videos: videos/sec and
   the exported size, and checks the CSV;
4. prints a markdown summary, writes every figure to --json, and exits 0 only
   when every check passed (1 when one failed). Without a GPU it says so in
   one line and exits NO_GPU_EXIT (3: nothing was checked, which is not a
   pass), or 1 with --require_gpu (run_scripts/gpu_acceptance.sh passes it,
   so a broken CUDA set-up fails there); --cpu_smoke runs the same code at
   the presets' test size on 2 virtual CPU devices
   (tests/e2e/test_gpu_acceptance.py runs it).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, List

import numpy as np

from bench.bench_training import MatmulProbe, count_matmul_flops
from bfloat16_patch import convert
from ensemble import build, inference
from ensemble.check_submission import check_submission
from models import presets
from models.tf_compat import tf
from swa import average
from training import model_builder, precision, synthetic, train, train_graph
from training import train_dir as train_dirs
from training.model_flags import ModelFlags
from training.train_config import TrainConfig

RATE_LINE = re.compile(r"\| +([\d.]+) examples/sec")
DTYPES = ("float32", "bfloat16")
# Exit code when no GPU is visible (without --require_gpu): neither a pass
# (0) nor a failed check (1), so that a script cannot mistake it for either.
NO_GPU_EXIT = 3


def setup(args) -> Dict:
    """Devices, sizes and data of this run."""
    gpus = precision.visible_gpus()
    smoke = args.cpu_smoke
    towers = len(gpus) if gpus else 2
    run = {"smoke": smoke, "gpus": [gpu.name for gpu in gpus], "towers": towers,
           "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
           "size": "test" if smoke else "full", "classes": 10 if smoke else 3862,
           "workdir": args.workdir or tempfile.mkdtemp(prefix="gpu-acceptance-")}
    run["names"] = [name for name in (args.presets.split(",") if args.presets
                                      else presets.ENSEMBLE)]
    biggest = max(presets.get(name).schedule_for(run["size"]).batch_size for name in run["names"])
    per_file = biggest * towers * (args.steps + 1)
    for split, labels in (("train", True), ("test", False)):
        synthetic.write_dataset(run["workdir"], split=split, num_shards=2,
                                videos_per_shard=per_file if split == "train" else 16,
                                num_classes=run["classes"], seed=1, min_frames=300,
                                max_frames=300, with_labels=labels, video_level=False)
    return run


def model_flags_of(name: str, run: Dict) -> ModelFlags:
    return model_builder.make_model_flags(name, "rgb,audio", "1024,128", True, run["classes"],
                                          "CrossEntropyLoss", size=run["size"])


def config_of(name: str, run: Dict, dtype: str, towers: int, steps: int) -> TrainConfig:
    schedule = presets.get(name).schedule_for(run["size"])
    return TrainConfig(batch_size=schedule.batch_size, base_learning_rate=2e-4,
                       learning_rate_decay=schedule.learning_rate_decay,
                       learning_rate_decay_examples=schedule.learning_rate_decay_examples,
                       regularization_penalty=1.0, clip_gradient_norm=1.0, num_epochs=0,
                       max_steps=steps, save_checkpoint_steps=1, max_to_keep=5,
                       keep_checkpoint_every_n_hours=10000.0, num_gpu=towers,
                       cpu_towers=towers, num_readers=2, shuffle_buffer=16, seed=1,
                       summary_steps=10 ** 6, log_steps=1, matmul_dtype=dtype)


def gflop_per_example(model_flags: ModelFlags, config: TrainConfig) -> float:
    """Matmul FLOPs of one training step (forward and backward) per example."""
    graph = tf.Graph()
    with graph.as_default():
        batch = {"features": tf.zeros([config.batch_size, 300, 1152]),
                 "num_frames": tf.fill([config.batch_size], 300),
                 "labels": tf.zeros([config.batch_size, model_flags.num_classes])}
        train_graph.build_train_graph(model_flags, batch, ["/cpu:0"], config)
    counts = count_matmul_flops(graph, loop_iterations=300)
    return (counts["forward"] + counts["backward"]) / config.batch_size / 1e9


def peak_gpu_mib(reset: bool = False):
    """Peak memory of GPU:0 since the last reset, or None (no GPU)."""
    try:
        if reset:
            tf.config.experimental.reset_memory_stats("GPU:0")
            return None
        return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2 ** 20
    except (ValueError, RuntimeError, tf.errors.OpError):
        return None


def train_run(name: str, run: Dict, dtype: str, towers: int, steps: int, train_dir: str):
    """(examples/sec of the steps after the first, peak GPU MiB) of one run."""
    lines: List[str] = []
    peak_gpu_mib(reset=True)
    pattern = os.path.join(run["workdir"], "frame", "train*.tfrecord")
    model_flags = model_flags_of(name, run)
    train_dirs.prepare_train_dir(train_dir, model_flags, start_new=False)
    train.train(model_flags, train_dir, pattern, config_of(name, run, dtype, towers, steps),
                log=lines.append)
    rates = [float(match.group(1)) for line in lines for match in [RATE_LINE.search(line)]
             if match]
    return float(np.median(rates[1:] or rates)), peak_gpu_mib()


def matmul_rates(run: Dict, size: int) -> Dict[str, float]:
    devices = ["/gpu:0"] if run["gpus"] else ["/cpu:0"]
    rates = {}
    for dtype in DTYPES:
        probe = MatmulProbe(train_graph.session_config(devices), size, tf.as_dtype(dtype))
        rates[dtype] = probe.rate(3)
        probe.close()
    return rates


def throughput(run: Dict, steps: int, matmul: Dict[str, float]) -> List[Dict]:
    rows = []
    for name in run["names"]:
        for dtype in DTYPES:
            row = {"model": name, "matmul_dtype": dtype}
            config = config_of(name, run, dtype, 1, steps)
            row["gflop_per_example"] = gflop_per_example(model_flags_of(name, run), config)
            directory = os.path.join(run["workdir"], "train", f"{name}-{dtype}")
            row["examples_per_sec"], row["peak_gpu_mib"] = train_run(name, run, dtype, 1, steps,
                                                                     directory)
            towers_dir = os.path.join(run["workdir"], "towers", f"{name}-{dtype}")
            row["towers_examples_per_sec"], _ = train_run(name, run, dtype, run["towers"],
                                                          steps, towers_dir)
            row["gflops"] = row["examples_per_sec"] * row["gflop_per_example"]
            row["ratio_fp32_matmul"] = row["gflops"] / matmul["float32"]
            row["ratio_bf16_matmul"] = row["gflops"] / matmul["bfloat16"]
            row["tower_scaling"] = row["towers_examples_per_sec"] / row["examples_per_sec"]
            rows.append(row)
            print(f"{name} {dtype}: {row['examples_per_sec']:.1f} examples/sec, "
                  f"{run['towers']} towers x{row['tower_scaling']:.2f}", flush=True)
    return rows


def one_step(model_flags: ModelFlags, devices: List[str], batch: Dict, config: TrainConfig,
             values=None):
    """(model variables before, loss, after) of one training step on a fixed
    batch; values: the initial model variables to load (another run's)."""
    graph = tf.Graph()
    with graph.as_default():
        tf.set_random_seed(1)
        tensors = {key: tf.constant(value) for key, value in batch.items()}
        ops = train_graph.build_train_graph(model_flags, tensors, devices, config)
        init = tf.global_variables_initializer()
        variables = model_builder.model_variables("tower")
    with tf.Session(graph=graph, config=train_graph.session_config(devices)) as sess:
        sess.run(init)
        for var in variables if values else ():
            var.load(values[var.op.name], sess)
        before = {var.op.name: sess.run(var) for var in variables}
        _, loss = sess.run([ops["train_op"], ops["loss"]])
        after = {var.op.name: sess.run(var) for var in variables}
    return before, float(loss), after


def mismatch(a: Dict, b: Dict) -> float:
    """The fraction of values that differ beyond float tolerance. Adam moves
    a weight by about the learning rate whatever its gradient's size, so a
    gradient that is zero to rounding may move either way: a few may differ."""
    bad = total = 0
    for key in a:
        far = ~np.isclose(a[key], b[key], rtol=1e-4, atol=1e-6)
        bad, total = bad + int(far.sum()), total + far.size
    return bad / max(total, 1)


def fixed_batch(batch_size: int, classes: int) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = (rng.random((batch_size, classes)) < 0.1).astype(np.float32)
    return {"features": rng.uniform(-2, 2, (batch_size, 300, 1152)).astype(np.float32),
            "num_frames": rng.integers(1, 301, batch_size).astype(np.int32), "labels": labels}


def correctness(run: Dict) -> Dict:
    devices = ([f"/gpu:{i}" for i in range(len(run["gpus"]))] if run["gpus"]
               else ["/cpu:0", "/cpu:1"])
    towers = len(devices) if len(devices) > 1 else 1
    flags = model_builder.make_model_flags("FrameMeanMoeModel", "rgb,audio", "1024,128", True,
                                           run["classes"], "CrossEntropyLoss")
    config = dataclasses.replace(config_of("GRUModel", run, "float32", towers, 1), batch_size=4)
    batch = fixed_batch(4 * towers, run["classes"])
    result = {"towers": towers, "devices": devices}
    if towers > 1:
        one = one_step(flags, devices[:1], batch,
                       dataclasses.replace(config, batch_size=4 * towers))
        many = one_step(flags, devices, batch, config, values=one[0])
        result["towers_loss"] = [one[1], many[1]]
        result["towers_mismatch"] = mismatch(one[2], many[2])
    tiny = model_flags_of("Soft-DBoF-4k", {**run, "size": "test"})
    # Without a GPU (--cpu_smoke) the second CPU device stands in: the same
    # code runs, but it compares two CPU devices, and the check is named so.
    other = devices[0] if run["gpus"] else "/cpu:1"
    host = one_step(tiny, ["/cpu:0"], fixed_batch(4, run["classes"]), config)
    device = one_step(tiny, [other], fixed_batch(4, run["classes"]), config, values=host[0])
    result["device_vs_cpu_devices"] = [other, "/cpu:0"]
    result["device_vs_cpu_loss"] = [device[1], host[1]]
    result["device_vs_cpu_mismatch"] = mismatch(device[2], host[2])
    return result


def pipeline(run: Dict, tile_num: int) -> Dict:
    """SWA, bf16 and the tiled ensemble of the fresh float32 runs, and a CSV."""
    work = run["workdir"]
    members = []
    for name in run["names"]:
        train_dir = os.path.join(work, "train", f"{name}-float32")
        swa_dir, bf16_dir = os.path.join(work, "swa", name), os.path.join(work, "bf16", name)
        average.average(train_dir, swa_dir, last_n=2, log=None)
        convert.convert_checkpoint(swa_dir, bf16_dir, log=None)
        members.append(bf16_dir)
    ensemble_dir = os.path.join(work, "ensemble")
    payload = build.build_and_export(members, [1.0] * len(members), ensemble_dir,
                                     tile_num=tile_num, log=None)
    output = os.path.join(work, "submission.csv")
    start = time.time()
    videos = inference.run(train_dir=ensemble_dir, input_data_pattern=os.path.join(
        work, "frame", "test*.tfrecord"), output_file=output, batch_size=8, log=None)
    assert videos is not None       # None only without a CSV
    seconds = time.time() - start
    check_submission(output, num_classes=run["classes"])
    return {"members": len(members), "exported_bytes": payload.exported_bytes,
            "videos": videos, "videos_per_sec_with_load": videos / seconds}


def _step_check(name: str, loss, fraction: float) -> tuple:
    """Same loss (relative 1e-4) and at most 0.1% of the updated values apart."""
    return (name, abs(loss[0] - loss[1]) <= 1e-4 * abs(loss[1]) and fraction <= 1e-3,
            f"loss {loss[0]:.6f} vs {loss[1]:.6f}, {100 * fraction:.3f}% of values differ")


def checks_of(result: Dict) -> List[tuple]:
    """[(check, passed, detail)] of the whole run."""
    c, p, rows = result["correctness"], result["pipeline"], result["training"]
    checks = [("training: finite rates", all(r["examples_per_sec"] > 0 for r in rows),
               f"{len(rows)} runs")]
    if "towers_loss" in c:
        checks.append(_step_check("1 tower = N towers (loss, updated variables)",
                                  c["towers_loss"], c["towers_mismatch"]))
    device, host = c["device_vs_cpu_devices"]
    what = ("GPU = CPU" if device.startswith("/gpu") else
            "second CPU device = first (--cpu_smoke: no GPU compared)")
    checks.append(_step_check(f"{what}: {device} vs {host} (loss, updated variables)",
                              c["device_vs_cpu_loss"], c["device_vs_cpu_mismatch"]))
    checks.append(("ensemble export under 2^30 bytes", p["exported_bytes"] <= 1 << 30,
                   f"{p['exported_bytes']:,} bytes"))
    checks.append(("submission CSV valid", p["videos"] > 0, f"{p['videos']} videos"))
    return checks


def summary(result: Dict) -> str:
    run = result["run"]
    where = ", ".join(run["gpus"]) or f"{run['towers']} virtual CPU devices (--cpu_smoke)"
    lines = [f"## GPU acceptance: {where} (CUDA_VISIBLE_DEVICES={run['cuda_visible_devices']})",
             "", f"matmul {result['matmul_size']}^2: float32 {result['matmul']['float32']:.0f}"
             f" GFLOP/s, bfloat16 {result['matmul']['bfloat16']:.0f} GFLOP/s", "",
             f"| model | matmuls | examples/sec | GFLOP/s | ratio to fp32 matmul | ratio to bf16 "
             f"matmul | peak GPU MiB | {run['towers']} towers examples/sec | scaling |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["training"]:
        peak = "-" if r["peak_gpu_mib"] is None else f"{r['peak_gpu_mib']:.0f}"
        lines.append(f"| {r['model']} | {r['matmul_dtype']} | {r['examples_per_sec']:.1f} | "
                     f"{r['gflops']:.1f} | {r['ratio_fp32_matmul']:.2f} | "
                     f"{r['ratio_bf16_matmul']:.2f} | {peak} | "
                     f"{r['towers_examples_per_sec']:.1f} | {r['tower_scaling']:.2f} |")
    p = result["pipeline"]
    lines += ["", f"ensemble of {p['members']}: {p['exported_bytes']:,} bytes; inference "
              f"{p['videos_per_sec_with_load']:.2f} videos/sec (model load included)", "",
              "| check | result | detail |", "|---|---|---|"]
    lines += [f"| {name} | {'PASS' if ok else 'FAIL'} | {detail} |"
              for name, ok, detail in result["checks"]]
    return "\n".join(lines)


def no_gpu(required: bool) -> int:
    """Says in one line that no GPU is visible; -> the exit code."""
    code = 1 if required else NO_GPU_EXIT
    verdict = "FAIL (--require_gpu)" if required else "nothing checked"
    print(f"gpu_acceptance: no GPU visible (CUDA_VISIBLE_DEVICES="
          f"{os.environ.get('CUDA_VISIBLE_DEVICES')}); {verdict}; exit {code}", flush=True)
    return code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu_smoke", action="store_true",
                        help="the same code at test sizes on 2 virtual CPU devices")
    parser.add_argument("--presets", default="", help="comma-separated (default: all six)")
    parser.add_argument("--steps", type=int, default=4, help="training steps per run")
    parser.add_argument("--json", default="gpu_acceptance.json")
    parser.add_argument("--workdir", default="", help="default: a temporary dir, removed")
    parser.add_argument("--require_gpu", action="store_true",
                        help=f"no visible GPU is a failure (exit 1), not exit {NO_GPU_EXIT}")
    args = parser.parse_args()
    if not args.cpu_smoke and not precision.visible_gpus():
        return no_gpu(args.require_gpu)
    run = setup(args)
    try:
        size = 512 if args.cpu_smoke else 8192
        result: Dict[str, Any] = {"run": run, "matmul_size": size,
                                  "matmul": matmul_rates(run, size)}
        result["training"] = throughput(run, args.steps, result["matmul"])
        result["correctness"] = correctness(run)
        result["pipeline"] = pipeline(run, 2 if args.cpu_smoke else 10)
        result["checks"] = checks_of(result)
        print(summary(result), flush=True)
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2, default=float)
        return 0 if all(ok for _, ok, _ in result["checks"]) else 1
    finally:
        if not args.workdir:
            shutil.rmtree(run["workdir"], ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
