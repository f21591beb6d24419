"""Segment inference (2019 submission): segments/sec and memory.
python -m bench.bench_segments [--videos=200 --num_classes=3862 --kept_classes=1000]

Trains a FrameMeanMoeModel a few steps on synthetic data (speed, not
quality, is measured), writes synthetic segment-rated records
(training.synthetic_segments, 5 segments a video), then times
ensemble.segment_submission.write_segment_submission over them: segments per
second, the process's peak resident memory, and the bytes the per-class top-k
holds (ClassTopK: bounded by 2 x max_pred per class, not by the segments).
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time

import numpy as np

from ensemble import segment_submission
from training import model_builder, predict, synthetic, synthetic_segments, train
from training import train_dir as train_dirs
from training.train_config import TrainConfig

CONFIG = TrainConfig(batch_size=8, base_learning_rate=0.01, learning_rate_decay=0.9,
                     learning_rate_decay_examples=4e6, regularization_penalty=1.0,
                     clip_gradient_norm=1.0, num_epochs=0, max_steps=5,
                     save_checkpoint_steps=1000, max_to_keep=2,
                     keep_checkpoint_every_n_hours=1.0, num_gpu=1, cpu_towers=1,
                     num_readers=1, shuffle_buffer=16, seed=1, summary_steps=1000,
                     log_steps=1000)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--videos", type=int, default=200)
    parser.add_argument("--num_classes", type=int, default=3862)
    parser.add_argument("--kept_classes", type=int, default=1000)
    parser.add_argument("--max_pred", type=int, default=100000)
    parser.add_argument("--batch_size", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        synthetic.write_dataset(root, "train", 1, 16, args.num_classes, video_level=False)
        flags = model_builder.make_model_flags("FrameMeanMoeModel", "rgb,audio", "1024,128",
                                               True, args.num_classes, "CrossEntropyLoss", {})
        model_dir = f"{root}/model"
        train_dirs.prepare_train_dir(model_dir, flags, start_new=False)
        train.train(flags, model_dir, f"{root}/frame/train*.tfrecord", CONFIG, log=lambda _: None)
        synthetic_segments.write_segment_dataset(root, "test", 1, args.videos, args.num_classes)
        model = predict.open_model(model_dir)
        try:
            kept = np.arange(args.kept_classes) * (args.num_classes // args.kept_classes)
            start = time.time()
            segments = segment_submission.write_segment_submission(
                model, f"{root}/segments/test*.tfrecord", f"{root}/s.csv", kept,
                args.max_pred, batch_size=args.batch_size, log=None)
            seconds = time.time() - start
        finally:
            model.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"segment inference: {segments} segments of {args.videos} videos in {seconds:.1f}s "
          f"= {segments / seconds:.1f} segments/sec; {args.kept_classes} classes kept; "
          f"peak RSS {peak:.0f} MiB (max_pred {args.max_pred}: the top-k holds at most "
          f"{segments * args.kept_classes * 12 / 2**20:.1f} MiB here, "
          f"{2 * args.max_pred * args.kept_classes * 12 / 2**30:.1f} GiB at worst)")


if __name__ == "__main__":
    main()
