"""Training throughput of the six full-size models against the machine's matmul rate.

    python -m bench.bench_training [--models=Soft-DBoF-4k,...] [--steps=5]
                                   [--matmul_dtypes=float32,bfloat16]
                                   [--batch_size=80] [--gru_steps=2] [--trace=0]
                                   [--finite_check=yes|no|only]

For every preset (batch 80, 300 frames, rgb 1024 + audio 128, 3862 classes)
and every --matmul_dtypes value (the trainer's --matmul_dtype), the real
training graph is built with ``training.train_graph.build_train_graph`` (Adam,
clipping, batch-norm updates, L2 terms, the loss) on one CPU tower, fed from
a batch held in memory (non-trainable variables: features [B, 300, 1152] ~
N(0, 1), num_frames = 300, random multi-hot labels), so nothing but the model
runs. After --warmup steps, --steps steps are timed one by one and the median
step time gives examples/sec.

FLOPs per example are counted from the training graph itself: every MatMul
and BatchMatMul op (forward and gradient) contributes 2*M*N*K from its static
shapes; an op inside a while loop (the GRU's dynamic_rnn, forward and
backward) counts once per iteration (300 frames). Element-wise work (batch
norm, softmax, normalisations, Adam) is not counted, so the achieved rate is
the rate of useful matmul work. ``--cross_check=MODEL`` also runs TensorFlow's
profiler (float_operation) on that model's forward graph and prints its
MatMul total beside ours.

The hardware yardstick is a 4096x4096 @ 4096x4096 tf.matmul in the same
process and session configuration, in float32 (and in bfloat16 when
bfloat16 is among --matmul_dtypes), best of --matmul_repeats products run
right after every timed training step; the ratio of each step is taken
against its neighbouring product, and the median ratio is printed (a shared
machine's slow patches then hit both sides alike).

Two probes, also run after every timed step, bound what the step can reach:
"own matmuls alone" runs every MatMul and BatchMatMul of the training graph
(same shapes, dtypes and transposes, on fresh variables, in one session.run;
batch-80 products against 10^8-weight matrices are skinny and reach far less
than the square product), and "update alone" runs the per-variable clipping
and Adam over variables of the model's trainable shapes with gradients held
in memory (memory-bound). The ceiling is FLOPs / (own matmuls + update) as a
ratio to the float32 yardstick: the best the step could do if every other op
were free.

--finite_check=yes|no|only also times (only: times nothing else) the
trainer's finiteness check beside the step: the check of every variable a
checkpoint saves, which the trainer runs before each save (its cost per step
at the preset's save interval), and of the model variables alone.

--trace=N prints the N most expensive op types and ops of one traced step
(RunOptions FULL_TRACE), which is how the slow parts were found.
Thread settings (--intra_op_threads, --inter_op_threads; 0 = the session
default of training/train_graph.py) are process-wide in TensorFlow, so compare
them in separate runs.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import statistics
import time
from typing import Dict, List, Optional

import numpy as np

from models import presets
from models.layers import in_while_loop
from models.presets import PRESET_NAMES
from models.tf_compat import tf
from training import checkpoints, model_builder, train_graph
from training import train_dir as train_dirs
from training.model_flags import ModelFlags
from training.train_config import TrainConfig

NUM_FRAMES = 300
FEATURE_SIZES = (1024, 128)
NUM_CLASSES = 3862
MATMUL_OPS = ("MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3")
TRAIN_CONFIG = TrainConfig(base_learning_rate=2e-4, learning_rate_decay=0.8,
                           learning_rate_decay_examples=4e6, regularization_penalty=1.0,
                           clip_gradient_norm=1.0)


# ---------------------------------------------------------------------------
# FLOP counting


def matmul_flops(op) -> int:
    """2*M*N*K of a MatMul/BatchMatMul op from its static shapes."""
    a = op.inputs[0].shape.as_list()
    out = op.outputs[0].shape.as_list()
    if op.type == "MatMul":
        k = a[0] if op.get_attr("transpose_a") else a[1]
    else:
        k = a[-2] if op.get_attr("adj_x") else a[-1]
    if None in out or k is None:
        raise ValueError(f"{op.name}: shape not static ({out}, k={k})")
    return 2 * int(np.prod(out)) * int(k)


def count_matmul_flops(graph: tf.Graph, loop_iterations: int,
                       ops: Optional[List] = None) -> Dict[str, int]:
    """{"forward": ..., "backward": ...} matmul FLOPs of one step of `graph`."""
    counts = {"forward": 0, "backward": 0}
    for op in ops if ops is not None else graph.get_operations():
        if op.type not in MATMUL_OPS:
            continue
        flops = matmul_flops(op) * (loop_iterations if in_while_loop(op) else 1)
        key = "backward" if "gradients" in op.name.split("/") else "forward"
        counts[key] += flops
    return counts


class OwnMatmuls:
    """The matmuls of a training graph alone (same shapes and transposes).

    Every MatMul/BatchMatMul of the graph is rebuilt on variables of its
    input shapes (one variable per distinct shape, shared) and all of them
    run in one session.run; ops inside a while loop run once and count
    loop_iterations times. seconds() is the ceiling of the model's step on
    this machine if everything but its matmuls were free.
    """

    def __init__(self, graph: tf.Graph, config: tf.ConfigProto, loop_iterations: int):
        specs = []
        for op in graph.get_operations():
            if op.type not in MATMUL_OPS:
                continue
            if op.type == "MatMul":
                attrs = {"transpose_a": op.get_attr("transpose_a"),
                         "transpose_b": op.get_attr("transpose_b")}
            else:
                attrs = {"adjoint_a": op.get_attr("adj_x"), "adjoint_b": op.get_attr("adj_y")}
            specs.append((tuple(op.inputs[0].shape.as_list()),
                          tuple(op.inputs[1].shape.as_list()), attrs, in_while_loop(op),
                          op.inputs[0].dtype.base_dtype))
        self.loop_iterations = loop_iterations
        probe = tf.Graph()
        with probe.as_default():
            variables = {}

            def variable(shape, dtype):
                if (shape, dtype) not in variables:
                    variables[shape, dtype] = tf.Variable(
                        tf.cast(tf.random_normal(shape, stddev=0.01), dtype),
                        collections=[tf.GraphKeys.LOCAL_VARIABLES])
                return variables[shape, dtype]

            outside: List[tf.Tensor] = []
            inside: List[tf.Tensor] = []
            for a, b, attrs, looped, dtype in specs:
                product = tf.matmul(variable(a, dtype), variable(b, dtype), **attrs)
                # Depend on the whole product, fetch a scalar.
                (inside if looped else outside).append(
                    tf.reduce_sum(tf.cast(product[..., :1, :1], tf.float32)))
            self.fetches = [tf.add_n(group) if group else None for group in (outside, inside)]
            init = tf.local_variables_initializer()
            probe.finalize()
        self.sess = tf.Session(graph=probe, config=config)
        self.sess.run(init)
        self.seconds()

    def seconds(self) -> float:
        total = 0.0
        for fetch, count in zip(self.fetches, (1, self.loop_iterations)):
            if fetch is not None:
                start = time.perf_counter()
                self.sess.run(fetch)
                total += (time.perf_counter() - start) * count
        return total

    def close(self) -> None:
        self.sess.close()


# ---------------------------------------------------------------------------
# Graphs


def model_flags_of(name: str) -> ModelFlags:
    return model_builder.make_model_flags(
        name, "rgb,audio", ",".join(str(s) for s in FEATURE_SIZES), True, NUM_CLASSES,
        "CrossEntropyLoss")


def in_memory_batch(batch_size: int, seed: int = 0) -> Dict[str, tf.Tensor]:
    """A fixed batch in non-trainable local variables (not constant-folded)."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((batch_size, NUM_FRAMES, sum(FEATURE_SIZES)),
                                   dtype=np.float32)
    labels = np.zeros((batch_size, NUM_CLASSES), np.float32)
    for row in range(batch_size):
        labels[row, rng.choice(NUM_CLASSES, size=1 + rng.poisson(2.0), replace=False)] = 1.0

    def variable(name, value):
        return tf.Variable(value, trainable=False, name=name,
                           collections=[tf.GraphKeys.LOCAL_VARIABLES])

    return {"features": variable("bench_features", features),
            "num_frames": variable("bench_num_frames",
                                   np.full([batch_size], NUM_FRAMES, np.int32)),
            "labels": variable("bench_labels", labels),
            "id": tf.constant([b"bench"] * batch_size)}


def session_config(intra: int, inter: int) -> tf.ConfigProto:
    config = train_graph.session_config(["/cpu:0"])
    if intra:
        config.intra_op_parallelism_threads = intra
    if inter:
        config.inter_op_parallelism_threads = inter
    return config


class MatmulProbe:
    """A size x size @ size x size tf.matmul (float32 or bfloat16) in its own session."""

    def __init__(self, config: tf.ConfigProto, size: int, dtype: tf.DType = tf.float32):
        self.size = size
        graph = tf.Graph()
        with graph.as_default():
            init = tf.random_normal_initializer(seed=1)
            a = tf.Variable(tf.cast(init([size, size]), dtype),
                            collections=[tf.GraphKeys.LOCAL_VARIABLES])
            b = tf.Variable(tf.cast(init([size, size]), dtype),
                            collections=[tf.GraphKeys.LOCAL_VARIABLES])
            # Reduce to a scalar so no big tensor is copied to Python.
            self.product = tf.reduce_sum(tf.cast(tf.matmul(a, b)[:1, :1], tf.float32))
            init_op = tf.local_variables_initializer()
            graph.finalize()
        self.sess = tf.Session(graph=graph, config=config)
        self.sess.run(init_op)
        self.sess.run(self.product)

    def rate(self, repeats: int) -> float:
        """Best GFLOP/s of `repeats` products."""
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            self.sess.run(self.product)
            best = min(best, time.perf_counter() - start)
        return 2.0 * self.size ** 3 / best / 1e9

    def close(self) -> None:
        self.sess.close()


def print_trace(run_metadata, graph: tf.Graph, top: int) -> None:
    by_type: collections.Counter[str] = collections.Counter()
    by_name: collections.Counter[str] = collections.Counter()
    total = 0
    for device in run_metadata.step_stats.dev_stats:
        for node in device.node_stats:
            name = node.node_name.split(":")[0]
            micros = node.op_end_rel_micros - node.op_start_rel_micros
            try:
                op_type = graph.get_operation_by_name(name).type
            except (KeyError, ValueError):
                op_type = node.timeline_label.split("(")[0].split("=")[-1].strip() or name
            by_type[op_type] += micros
            by_name[f"{name} ({op_type})"] += micros
            total += micros
    print(f"  traced op time {total / 1e3:.0f} ms (summed over threads)")
    for title, counter in (("op types", by_type), ("ops", by_name)):
        print(f"  top {top} {title}:")
        for key, micros in counter.most_common(top):
            print(f"    {micros / 1e3:9.1f} ms {100.0 * micros / max(total, 1):5.1f}%  {key}")


class UpdateAlone:
    """The optimizer's part of a step alone: per-variable clipping and Adam
    over variables of the training graph's trainable shapes, fed gradients
    held in memory (no model, no L2 terms, no casts). It is memory-bound
    (each weight's value, gradient and two Adam slots read, three written),
    so its time is the floor of the update on this machine."""

    def __init__(self, graph: tf.Graph, config: tf.ConfigProto):
        with graph.as_default():
            shapes = [v.shape.as_list() for v in tf.trainable_variables()]
        probe = tf.Graph()
        with probe.as_default():
            pairs = []
            for index, shape in enumerate(shapes):
                variable = tf.get_variable(f"v{index}", shape,
                                           initializer=tf.random_normal_initializer(stddev=0.01))
                grad = tf.Variable(tf.random_normal(shape, stddev=1e-3), trainable=False,
                                   collections=[tf.GraphKeys.LOCAL_VARIABLES])
                pairs.append((grad.read_value(), variable))
            self.update = tf.train.AdamOptimizer(1e-4).apply_gradients(
                train_graph.clip_per_variable(pairs, TRAIN_CONFIG.clip_gradient_norm))
            init = [tf.global_variables_initializer(), tf.local_variables_initializer()]
            probe.finalize()
        self.sess = tf.Session(graph=probe, config=config)
        self.sess.run(init)
        self.seconds()

    def seconds(self) -> float:
        start = time.perf_counter()
        self.sess.run(self.update)
        return time.perf_counter() - start

    def close(self) -> None:
        self.sess.close()


def bench_model(name: str, batch_size: int, steps: int, warmup: int,
                config: tf.ConfigProto, probes: Dict[str, MatmulProbe], matmul_repeats: int,
                trace: int = 0, own_matmuls: bool = True,
                matmul_dtype: str = train_graph.FLOAT32) -> Dict:
    """Times `steps` training steps, each followed by the matmul probes.

    probes: {"float32": MatmulProbe, "bfloat16": MatmulProbe (optional)}.
    Returns the median step time, the median probe rates, the medians of the
    per-step ratios achieved/probe (each step against its neighbour probe,
    so a slow patch of a shared machine hits both alike), and the ceiling:
    the model's own matmuls plus the update alone.
    """
    graph = tf.Graph()
    with graph.as_default():
        tf.set_random_seed(2018)
        batch = in_memory_batch(batch_size)
        ops = train_graph.build_train_graph(
            model_flags_of(name), batch, ["/cpu:0"],
            dataclasses.replace(TRAIN_CONFIG, batch_size=batch_size, matmul_dtype=matmul_dtype))
        flops = count_matmul_flops(graph, NUM_FRAMES)
        init = [tf.global_variables_initializer(), tf.local_variables_initializer()]
        graph.finalize()
    flop_per_step = flops["forward"] + flops["backward"]
    own = OwnMatmuls(graph, config, NUM_FRAMES) if own_matmuls else None
    update = UpdateAlone(graph, config) if own_matmuls else None
    times, own_times, update_times = [], [], []
    rates: Dict[str, List[float]] = {key: [] for key in probes}
    ratios: Dict[str, List[float]] = {key: [] for key in probes}
    with tf.Session(graph=graph, config=config) as sess:
        sess.run(init)
        for _ in range(warmup):
            sess.run(ops["train_op"])
        for _ in range(steps):
            start = time.perf_counter()
            sess.run(ops["train_op"])
            times.append(time.perf_counter() - start)
            for key, probe in probes.items():
                rates[key].append(probe.rate(matmul_repeats))
                ratios[key].append(flop_per_step / times[-1] / 1e9 / rates[key][-1])
            if own is not None and update is not None:
                own_times.append(own.seconds())
                update_times.append(update.seconds())
        if trace:
            run_metadata = tf.RunMetadata()
            sess.run(ops["train_op"],
                     options=tf.RunOptions(trace_level=tf.RunOptions.FULL_TRACE),
                     run_metadata=run_metadata)
            print_trace(run_metadata, graph, trace)
    for helper in (own, update):
        if helper:
            helper.close()
    step = statistics.median(times)
    nan = float("nan")
    result = {"step_seconds": step, "min_step_seconds": min(times),
              "examples_per_sec": batch_size / step,
              "gflop_per_example": flop_per_step / batch_size / 1e9,
              "forward_gflop_per_example": flops["forward"] / batch_size / 1e9,
              "own_matmul_gflops": nan, "own_matmul_share": nan, "update_seconds": nan,
              "ceiling_ratio": nan}
    for key in probes:
        result[f"matmul_gflops_{key}"] = statistics.median(rates[key])
        result[f"ratio_{key}"] = statistics.median(ratios[key])
    if own:
        own_step = statistics.median(own_times)
        update_step = statistics.median(update_times)
        result.update(
            own_matmul_gflops=flop_per_step / own_step / 1e9,
            own_matmul_share=statistics.median([o / t for o, t in zip(own_times, times)]),
            update_seconds=update_step,
            ceiling_ratio=(flop_per_step / (own_step + update_step) / 1e9
                           / result[f"matmul_gflops_{train_graph.FLOAT32}"]))
    return result


def bench_finite_check(name: str, batch_size: int, steps: int, warmup: int,
                       config: tf.ConfigProto) -> Dict:
    """The trainer's finiteness check (training.train_dir.finite_check) beside
    the step it guards: each timed step (no check) is followed by the check
    of every variable a checkpoint saves (what the trainer runs before each
    save) and by the check of the model variables alone (weights and
    batch-norm statistics: what a per-step check would need at least)."""
    graph = tf.Graph()
    with graph.as_default():
        tf.set_random_seed(2018)
        run_config = dataclasses.replace(TRAIN_CONFIG, batch_size=batch_size)
        ops = train_graph.build_train_graph(model_flags_of(name), in_memory_batch(batch_size),
                                            ["/cpu:0"], run_config)
        saved = tf.global_variables()
        checks = {"all": train_dirs.finite_check(saved),
                  "model": train_dirs.finite_check(
                      [v for v in saved if checkpoints.is_model_variable_key(v.op.name)])}
        init = [tf.global_variables_initializer(), tf.local_variables_initializer()]
        graph.finalize()
    times: Dict[str, List[float]] = {"step": [], "all": [], "model": []}
    with tf.Session(graph=graph, config=config) as sess:
        sess.run(init)
        for _ in range(warmup):
            sess.run([ops["train_op"]] + [check.flags for check in checks.values()])
        for _ in range(steps):
            for key, fetch in (("step", ops["train_op"]), ("all", checks["all"].flags),
                               ("model", checks["model"].flags)):
                start = time.perf_counter()
                sess.run(fetch)
                times[key].append(time.perf_counter() - start)
    step = statistics.median(times["step"])
    save_every = presets.get(name).schedule_for("full").save_checkpoint_steps
    result = {"step_seconds": step, "save_every": save_every,
              "saved_values": sum(v.shape.num_elements() for v in checks["all"].variables),
              "model_values": sum(v.shape.num_elements() for v in checks["model"].variables)}
    for key in ("all", "model"):
        # Each check against its own step (a shared machine's slow patch hits both).
        result[f"{key}_seconds"] = statistics.median(times[key])
        result[f"{key}_share"] = statistics.median(
            [c / t for c, t in zip(times[key], times["step"])])
    result["per_save_share"] = result["all_share"] / save_every
    return result


def finite_check_table(names: List[str], args, config: tf.ConfigProto) -> None:
    """bench_finite_check of each model, printed beside the step without it."""
    print("\nfiniteness check (float32 matmuls; the trainer runs it before each save):")
    print("| model | step ms, no check | + check before each save: step ms | cost "
          "| check of all saved variables ms (% of a step) | check of the model variables "
          "alone ms (% of a step) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in names:
        gru = name == "GRUModel"
        r = bench_finite_check(name, args.batch_size, args.gru_steps if gru else args.steps,
                               args.gru_warmup if gru else args.warmup, config)
        step_ms = 1e3 * r["step_seconds"]
        print(f"| {name} | {step_ms:.1f} | {step_ms * (1 + r['per_save_share']):.1f} "
              f"(one save per {r['save_every']} steps) | {100 * r['per_save_share']:.5f}% "
              f"| {1e3 * r['all_seconds']:.1f} ({100 * r['all_share']:.2f}%, "
              f"{r['saved_values'] / 1e6:.1f}M values) | {1e3 * r['model_seconds']:.1f} "
              f"({100 * r['model_share']:.2f}%, {r['model_values'] / 1e6:.1f}M values) |",
              flush=True)


def cross_check(name: str, batch_size: int) -> None:
    """Forward matmul FLOPs: ours vs tf.profiler's float_operation."""
    graph = tf.Graph()
    with graph.as_default():
        batch = in_memory_batch(batch_size)
        with tf.variable_scope("tower"):
            model = model_builder.build_model(model_flags_of(name))
            model_builder.model_predictions(model, batch["features"], batch["num_frames"],
                                            is_training=True)
        ours = count_matmul_flops(graph, NUM_FRAMES)["forward"]
        profile = tf.profiler.profile(
            graph, options=tf.profiler.ProfileOptionBuilder(
                tf.profiler.ProfileOptionBuilder.float_operation()).with_empty_output().build())
        matmul_total = 0
        for node in profile.children:
            try:
                op = graph.get_operation_by_name(node.name)
            except KeyError:
                continue
            if op.type in MATMUL_OPS:
                matmul_total += node.float_ops
    print(f"cross-check {name}, forward, batch {batch_size}: our matmul count "
          f"{ours / 1e9:.3f} GFLOP, tf.profiler MatMul ops {matmul_total / 1e9:.3f} GFLOP, "
          f"tf.profiler all ops {profile.total_float_ops / 1e9:.3f} GFLOP "
          f"(the GRU's while loop is counted once by the profiler)")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(
        ["nonlocal-NetVLADModel", "nonlocal-LightNetVLADModel", "nonlocal-earlyNetVLADModel",
         "Soft-DBoF-4k", "Soft-DBoF-8k", "GRUModel"]))
    parser.add_argument("--matmul_dtypes", default="float32,bfloat16",
                        help="training --matmul_dtype values to run, comma-separated")
    parser.add_argument("--batch_size", type=int, default=80)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--gru_steps", type=int, default=2, help="timed steps of the GRU")
    parser.add_argument("--gru_warmup", type=int, default=1)
    parser.add_argument("--matmul_size", type=int, default=4096)
    parser.add_argument("--matmul_repeats", type=int, default=2,
                        help="matmul products after each timed step (best counts)")
    parser.add_argument("--intra_op_threads", type=int, default=0)
    parser.add_argument("--inter_op_threads", type=int, default=0)
    parser.add_argument("--trace", type=int, default=0,
                        help="print the N most expensive ops of one traced step")
    parser.add_argument("--own_matmuls", type=lambda v: v.lower() in ("1", "true", "yes"),
                        default=True, help="also time the model's own matmul shapes and "
                                           "its optimizer update alone")
    parser.add_argument("--cross_check", default="",
                        help="comma-separated models whose forward FLOPs are also "
                             "counted by tf.profiler")
    parser.add_argument("--finite_check", choices=("yes", "no", "only"), default="yes",
                        help="also time the trainer's finiteness check beside the step "
                             "(only: nothing else)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    for n in names:
        if n not in PRESET_NAMES:
            parser.error(f"--models: unknown preset {n!r} (one of {', '.join(PRESET_NAMES)})")
    dtypes = [d.strip() for d in args.matmul_dtypes.split(",") if d.strip()]
    for d in dtypes:
        if d not in train_graph.MATMUL_DTYPES:
            parser.error(f"--matmul_dtypes: {d!r} is not one of "
                         f"{', '.join(train_graph.MATMUL_DTYPES)}")
    config = session_config(args.intra_op_threads, args.inter_op_threads)
    if args.finite_check == "only":
        finite_check_table(names, args, config)
        return
    print(f"session: intra_op {config.intra_op_parallelism_threads or 'default'}, "
          f"inter_op {config.inter_op_parallelism_threads or 'default'}; "
          f"batch {args.batch_size}, {NUM_FRAMES} frames")
    for n in [c.strip() for c in args.cross_check.split(",") if c.strip()]:
        cross_check(n, args.batch_size)
    probes = {train_graph.FLOAT32: MatmulProbe(config, args.matmul_size)}
    if train_graph.BFLOAT16 in dtypes:
        probes[train_graph.BFLOAT16] = MatmulProbe(config, args.matmul_size, tf.bfloat16)
    rows = []
    for n in names:
        gru = n == "GRUModel"
        for dtype in dtypes:
            result = bench_model(n, args.batch_size, args.gru_steps if gru else args.steps,
                                 args.gru_warmup if gru else args.warmup, config, probes,
                                 args.matmul_repeats, args.trace, args.own_matmuls, dtype)
            achieved = result["examples_per_sec"] * result["gflop_per_example"]
            rows.append((n, dtype, result, achieved))
            print(f"{n}, {dtype} matmuls: {result['examples_per_sec']:.1f} examples/sec "
                  f"(step median {result['step_seconds']:.3f} s, min "
                  f"{result['min_step_seconds']:.3f} s), {result['gflop_per_example']:.3f} "
                  f"GFLOP/example (forward {result['forward_gflop_per_example']:.3f}), "
                  f"{achieved:.1f} GFLOP/s; ratio to the float32 matmul "
                  f"{result['ratio_float32']:.2f} "
                  f"({result['matmul_gflops_float32']:.1f} GFLOP/s)"
                  + (f", to the bfloat16 matmul {result['ratio_bfloat16']:.2f} "
                     f"({result['matmul_gflops_bfloat16']:.1f} GFLOP/s)"
                     if train_graph.BFLOAT16 in probes else "")
                  + f"; its own matmuls alone {result['own_matmul_gflops']:.1f} GFLOP/s "
                  f"({100 * result['own_matmul_share']:.0f}% of the step), update alone "
                  f"{1e3 * result['update_seconds']:.0f} ms, ceiling "
                  f"{result['ceiling_ratio']:.2f}", flush=True)
    for probe in probes.values():
        probe.close()
    bf16 = train_graph.BFLOAT16 in probes
    print()
    print("| model | matmuls | examples/sec | GFLOP/example | achieved GFLOP/s "
          "| ratio to float32 matmul" + (" | ratio to bfloat16 matmul" if bf16 else "")
          + " | own matmuls alone GFLOP/s | update alone ms | ceiling (own matmuls + update) |")
    print("|---|---|---:|---:|---:|---:|" + ("---:|" if bf16 else "") + "---:|---:|---:|")
    for n, dtype, result, achieved in rows:
        print(f"| {n} | {dtype} | {result['examples_per_sec']:.1f} | "
              f"{result['gflop_per_example']:.2f} | {achieved:.1f} | "
              f"{result['ratio_float32']:.2f} | "
              + (f"{result['ratio_bfloat16']:.2f} | " if bf16 else "")
              + f"{result['own_matmul_gflops']:.1f} | {1e3 * result['update_seconds']:.0f} | "
              f"{result['ceiling_ratio']:.2f} |")
    print(f"matmul {args.matmul_size}² GFLOP/s (medians over all steps): " + ", ".join(
        f"{key} {statistics.median(r[2][f'matmul_gflops_{key}'] for r in rows):.1f}"
        for key in probes))
    if len(dtypes) > 1:
        print("bfloat16 / float32 examples/sec: " + ", ".join(
            f"{n} {by[train_graph.BFLOAT16]:.2f}x" for n, by in _speedups(rows).items()))
    if args.finite_check == "yes":
        finite_check_table(names, args, config)


def _speedups(rows) -> Dict[str, Dict[str, float]]:
    rates: Dict[str, Dict[str, float]] = collections.defaultdict(dict)
    for name, dtype, result, _ in rows:
        rates[name][dtype] = result["examples_per_sec"]
    return {name: {dtype: rate / by[train_graph.FLOAT32] for dtype, rate in by.items()}
            for name, by in rates.items() if train_graph.FLOAT32 in by}


if __name__ == "__main__":
    main()
