"""Does the tf.data input pipeline limit training? python -m bench.bench_input

    python -m bench.bench_input [--models=Soft-DBoF-4k,FrameMeanMoeModel]
                                [--batch_size=80] [--blocks=4] [--block_steps=5]
                                [--num_shards=8] [--videos_per_shard=64]

Writes synthetic frame-level shards (``training.synthetic.write_dataset``,
300 frames per video) to a temporary folder (removed at the end), then:

1. the raw reader: ``training.readers.make_dataset`` exactly as the trainer
   builds it (``training.train_graph.make_train_batch``: file shuffle,
   parallel interleave of --num_readers files, a --shuffle_buffer record
   shuffle, repeat, batch, vectorised parse, prefetch, the full-batch
   filter), iterated alone: videos/sec;
2. for every model: one training step (the real graph of
   ``training.train_graph.build_train_graph``, one CPU tower) fed from that
   reader, against the same graph fed from a batch already in memory (the
   first batch of the reader, held in non-trainable variables). After
   --warmup steps each, they run in alternating blocks (--blocks pairs of
   one untimed step then --block_steps timed steps each) in the same
   process. The first step of a block is left out because the reader's
   prefetch prepares that batch during the other contender's block. The
   table gives the median examples/sec of each and the median over block
   pairs of the ratio reader/memory (1.0 = the input pipeline costs
   nothing; for the real models it should stay >= 0.9).

The shards are read again and again (``repeat``), from the page cache, so
the benchmark measures the parsing and batching work, not the disk.
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import tempfile
import time
from typing import Dict, List, Optional

import numpy as np

from models.tf_compat import tf
from training import model_builder, readers, synthetic, train_graph
from training.model_flags import ModelFlags
from training.train_config import TrainConfig

NUM_FRAMES = 300
TRAIN_CONFIG = TrainConfig(base_learning_rate=2e-4, learning_rate_decay=0.8,
                           learning_rate_decay_examples=4e6, regularization_penalty=1.0,
                           clip_gradient_norm=1.0)


def model_flags_of(name: str) -> ModelFlags:
    return model_builder.make_model_flags(name, "rgb,audio", "1024,128", True, 3862,
                                          "CrossEntropyLoss")


def reader_batch(pattern: str, batch_size: int, num_readers: int, shuffle_buffer: int):
    """The training input exactly as training.train.train builds it
    (training.train_graph.make_train_batch)."""
    reader = readers.get_reader(True, "rgb,audio", "1024,128", 3862)
    config = TrainConfig(num_epochs=0, num_readers=num_readers, shuffle_buffer=shuffle_buffer)
    return train_graph.make_train_batch(reader, pattern, config, batch_size, seed=2018)


def raw_reader_rate(pattern: str, args) -> List[float]:
    """videos/sec of the reader alone, one value per round."""
    graph = tf.Graph()
    with graph.as_default():
        batch = reader_batch(pattern, args.batch_size, args.num_readers, args.shuffle_buffer)
        # The whole element is computed whatever is fetched; fetch a small part.
        fetch = batch["num_frames"]
    rates = []
    with tf.Session(graph=graph, config=train_graph.session_config(["/cpu:0"])) as sess:
        for _ in range(3):
            sess.run(fetch)
        for _ in range(args.rounds):
            start = time.perf_counter()
            for _ in range(args.reader_batches):
                sess.run(fetch)
            rates.append(args.reader_batches * args.batch_size / (time.perf_counter() - start))
    return rates


def first_batch(pattern: str, args) -> Dict[str, np.ndarray]:
    graph = tf.Graph()
    with graph.as_default():
        batch = reader_batch(pattern, args.batch_size, args.num_readers, args.shuffle_buffer)
    with tf.Session(graph=graph) as sess:
        return sess.run({key: batch[key] for key in ("features", "num_frames", "labels")})


def memory_session(name: str, batch: Dict[str, np.ndarray], batch_size: int):
    """A session of the training graph fed from `batch` held in variables."""
    graph = tf.Graph()
    with graph.as_default():
        tf.set_random_seed(2018)
        tensors = {key: tf.Variable(value, trainable=False, name=f"bench_{key}",
                                    collections=[tf.GraphKeys.LOCAL_VARIABLES])
                   for key, value in batch.items()}
        ops = train_graph.build_train_graph(
            model_flags_of(name), tensors, ["/cpu:0"],
            dataclasses.replace(TRAIN_CONFIG, batch_size=batch_size))
        init = [tf.global_variables_initializer(), tf.local_variables_initializer()]
        graph.finalize()
    sess = tf.Session(graph=graph, config=train_graph.session_config(["/cpu:0"]))
    sess.run(init)
    return sess, ops["train_op"]


def bench_model(name: str, pattern: str, memory_batch: Dict, args) -> Dict:
    graph_reader = tf.Graph()
    with graph_reader.as_default():
        tf.set_random_seed(2018)
        batch = reader_batch(pattern, args.batch_size, args.num_readers, args.shuffle_buffer)
        ops = train_graph.build_train_graph(
            model_flags_of(name), batch, ["/cpu:0"],
            dataclasses.replace(TRAIN_CONFIG, batch_size=args.batch_size))
        init = tf.global_variables_initializer()
        graph_reader.finalize()
    fed = tf.Session(graph=graph_reader, config=train_graph.session_config(["/cpu:0"]))
    fed.run(init)
    memory, memory_op = memory_session(name, memory_batch, args.batch_size)
    contenders = {"reader": (fed, ops["train_op"]), "memory": (memory, memory_op)}
    for sess, op in contenders.values():
        for _ in range(args.warmup):
            sess.run(op)
    times: Dict[str, List[float]] = {key: [] for key in contenders}
    ratios = []
    for _ in range(args.blocks):
        # Blocks of steps of each contender, alternately: a slow patch of a
        # shared machine then hits both sides of a block pair alike. The
        # first step of a block is not timed: the reader's prefetch has
        # prepared its batch during the other contender's block, and that
        # work slowed the other block's first step.
        block = {}
        for key, (sess, op) in contenders.items():
            sess.run(op)
            start = time.perf_counter()
            for _ in range(args.block_steps):
                sess.run(op)
            block[key] = (time.perf_counter() - start) / args.block_steps
            times[key].append(block[key])
        ratios.append(block["memory"] / block["reader"])
    fed.close()
    memory.close()
    return {"reader": args.batch_size / statistics.median(times["reader"]),
            "memory": args.batch_size / statistics.median(times["memory"]),
            "ratio": statistics.median(ratios), "ratios": ratios}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="Soft-DBoF-4k,FrameMeanMoeModel")
    parser.add_argument("--batch_size", type=int, default=80)
    parser.add_argument("--blocks", type=int, default=4,
                        help="block pairs (reader block, then in-memory block)")
    parser.add_argument("--block_steps", type=int, default=5,
                        help="timed steps per block (after one untimed step)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of the raw reader measurement")
    parser.add_argument("--reader_batches", type=int, default=20,
                        help="batches per round of the raw reader measurement")
    parser.add_argument("--num_shards", type=int, default=8)
    parser.add_argument("--videos_per_shard", type=int, default=64)
    parser.add_argument("--num_readers", type=int, default=8, help="as train --num_readers")
    parser.add_argument("--shuffle_buffer", type=int, default=2048,
                        help="as train --shuffle_buffer")
    parser.add_argument("--data_dir", default="",
                        help="reuse synthetic shards here (written if missing)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]

    own_dir = not args.data_dir
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="bench_input_")
    try:
        pattern = f"{data_dir}/frame/train*.tfrecord"
        if not tf.io.gfile.glob(pattern):
            start = time.perf_counter()
            synthetic.write_dataset(data_dir, "train", num_shards=args.num_shards,
                                    videos_per_shard=args.videos_per_shard,
                                    video_level=False, min_frames=NUM_FRAMES,
                                    max_frames=NUM_FRAMES)
            print(f"wrote {args.num_shards * args.videos_per_shard} synthetic videos of "
                  f"{NUM_FRAMES} frames in {time.perf_counter() - start:.0f} s to {data_dir}")
        reader_rates = raw_reader_rate(pattern, args)
        print(f"raw reader: {statistics.median(reader_rates):.0f} videos/sec (median of "
              f"{args.rounds} rounds of {args.reader_batches} batches of {args.batch_size}; "
              f"{', '.join(f'{r:.0f}' for r in reader_rates)})", flush=True)
        memory_batch = first_batch(pattern, args)
        rows = []
        for name in names:
            result = bench_model(name, pattern, memory_batch, args)
            rows.append((name, result))
            print(f"{name}: reader-fed {result['reader']:.1f} examples/sec, in-memory "
                  f"{result['memory']:.1f} examples/sec, ratio {result['ratio']:.2f} "
                  f"(block pairs: {', '.join(f'{r:.2f}' for r in result['ratios'])})", flush=True)
    finally:
        if own_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
    print()
    print(f"raw reader alone: {statistics.median(reader_rates):.0f} videos/sec")
    print()
    print("| model | reader-fed examples/sec | in-memory examples/sec | ratio |")
    print("|---|---:|---:|---:|")
    for name, result in rows:
        print(f"| {name} | {result['reader']:.1f} | {result['memory']:.1f} | "
              f"{result['ratio']:.2f} |")


if __name__ == "__main__":
    main()
