"""What --matmul_dtype=bfloat16 does to what a model learns: GAP@20 after
training in float32 and in mixed precision, side by side.

    python -m bench.bench_mixed_precision [--models=nonlocal-NetVLADModel,...]
        [--steps=1000] [--work_dir=DIR]

On the quick start's synthetic data (200 classes, 1024 training and 256
validation videos, made on the spot under --work_dir), each model is trained
at the quick start's small sizes for --steps steps once per matmul dtype and
per seed in --seeds (the seed sets the initialisation, the data order and the
frame draws; both dtypes get the same ones). As in the quick start, the
batch-norm statistics of the last checkpoint are then recomputed on training
batches (swa.average, --bn_statistics=recompute; short runs leave the moving
averages far behind), and the result is evaluated on the validation split with
evenly spaced frames in float32. Seeds show how much GAP moves with the seed
alone, against which the dtype's effect is read.
The speed of bfloat16 training at full size is bench.bench_training's.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Dict, List, Optional

from models import presets
from models.tf_compat import tf  # noqa: F401  (TF1 mode before any graph)
from swa import average as swa
from training import checkpoints, model_builder, synthetic, train, train_graph
from training import eval as evaluation
from training import train_dir as train_dirs
from training.train_config import TrainConfig

NUM_CLASSES = 200
# The quick start's sizes and schedule (run_scripts/pipeline.sh, TINY=1: the
# presets' "tiny" size, models/presets.py).
SIZE = "tiny"


def write_data(work_dir: str) -> str:
    data = os.path.join(work_dir, "data")
    if not os.path.isdir(os.path.join(data, "frame")):
        for split, shards in (("train", 8), ("validate", 2)):
            synthetic.write_dataset(data, split=split, num_shards=shards, videos_per_shard=128,
                                    num_classes=NUM_CLASSES, seed=1, video_level=False,
                                    min_frames=30, max_frames=120)
    return os.path.join(data, "frame")


def train_and_evaluate(model: str, matmul_dtype: str, data: str, work_dir: str,
                       steps: int, seed: int) -> Dict[str, float]:
    preset = presets.get(model)
    schedule = preset.schedule_for(SIZE)
    model_flags = model_builder.make_model_flags(
        model, "rgb,audio", "1024,128", True, NUM_CLASSES, "CrossEntropyLoss",
        preset.hparams_for(SIZE))
    config = TrainConfig(batch_size=schedule.batch_size,
                         base_learning_rate=schedule.base_learning_rate,
                         learning_rate_decay=schedule.learning_rate_decay,
                         learning_rate_decay_examples=schedule.learning_rate_decay_examples,
                         regularization_penalty=1.0,
                         clip_gradient_norm=1.0, num_epochs=0, max_steps=steps,
                         save_checkpoint_steps=steps, max_to_keep=1,
                         keep_checkpoint_every_n_hours=10000.0, num_gpu=1, cpu_towers=1,
                         num_readers=4, shuffle_buffer=512, seed=seed, summary_steps=100,
                         log_steps=steps, matmul_dtype=matmul_dtype)
    run = f"{model}-{matmul_dtype}-seed{seed}"
    train_dir = os.path.join(work_dir, "train", run)
    train_pattern = os.path.join(data, "train*.tfrecord")
    train_dirs.prepare_train_dir(train_dir, model_flags, start_new=True)
    start = time.perf_counter()
    train.train(model_flags, train_dir, train_pattern, config, log=lambda _: None)
    seconds = time.perf_counter() - start
    recomputed = os.path.join(work_dir, "recomputed", run)
    swa.average(train_dir, recomputed, last_n=1, bn_statistics="recompute",
                recompute_batches=20, train_data_pattern=train_pattern,
                batch_size=schedule.batch_size,
                seed=seed, overwrite=True, log=lambda _: None)
    checkpoint = checkpoints.latest_checkpoint(recomputed)
    assert checkpoint is not None   # swa.average has just written it
    result = evaluation.evaluate_checkpoint(
        recomputed, checkpoint,
        os.path.join(data, "validate*.tfrecord"), batch_size=64, frame_sampling="uniform")
    assert result.gap is not None and result.hit_at_one is not None   # (video level)
    return {"gap": result.gap, "hit_at_one": result.hit_at_one, "seconds": seconds}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="nonlocal-NetVLADModel,Soft-DBoF-4k,GRUModel")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seeds", default="2018,2019")
    parser.add_argument("--work_dir", default="")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    with tempfile.TemporaryDirectory(prefix="bench_mixed_precision_") as scratch:
        work_dir = args.work_dir or scratch
        data = write_data(work_dir)
        rows = []
        for model in models:
            for seed in seeds:
                results = {dtype: train_and_evaluate(model, dtype, data, work_dir,
                                                     args.steps, seed)
                           for dtype in train_graph.MATMUL_DTYPES}
                rows.append((model, seed, results))
                print(f"{model}, seed {seed}: " + ", ".join(
                    f"{dtype} GAP {r['gap']:.4f} Hit@1 {r['hit_at_one']:.4f} "
                    f"({r['seconds']:.0f} s)" for dtype, r in results.items()), flush=True)
    print()
    print(f"| model ({args.steps} steps) | seed | GAP float32 | GAP bfloat16 | difference "
          "| Hit@1 float32 | Hit@1 bfloat16 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for model, seed, results in rows:
        f32, b16 = results[train_graph.FLOAT32], results[train_graph.BFLOAT16]
        print(f"| {model} | {seed} | {f32['gap']:.4f} | {b16['gap']:.4f} | "
              f"{b16['gap'] - f32['gap']:+.4f} | {f32['hit_at_one']:.4f} | "
              f"{b16['hit_at_one']:.4f} |")


if __name__ == "__main__":
    main()
