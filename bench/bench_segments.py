"""Segment inference (2019 submission): segments/sec and memory.
python -m bench.bench_segments [--videos=200 --num_classes=3862 --kept_classes=1000]

Trains a FrameMeanMoeModel (or --model at --size; --tile_num: its tiled
ensemble.build export) a few steps on synthetic data (speed, not quality, is
measured), writes synthetic segment-rated records
(training.synthetic_segments, 5 segments a video), then times
ensemble.segment_submission.write_segment_submission over them twice in one
run, side by side: each segment padded to 300 frames (as before) and at its
real 5 frames (now); plus the process's peak resident memory and the bytes
the per-class top-k holds (ClassTopK: at most 2 x max_pred per class).
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time

import numpy as np

from ensemble import build, segment_submission
from models import presets
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


def _model_dir(root: str, args) -> str:
    """A model dir trained a few steps (speed, not quality); with --tile_num
    the ensemble.build export of it, tiled so."""
    synthetic.write_dataset(root, "train", 1, 16, args.num_classes, video_level=False)
    hparams = (presets.get(args.model).hparams_for(args.size)
               if args.model in presets.PRESET_NAMES else {})
    flags = model_builder.make_model_flags(args.model, "rgb,audio", "1024,128", True,
                                           args.num_classes, "CrossEntropyLoss", hparams)
    model_dir = f"{root}/model"
    train_dirs.prepare_train_dir(model_dir, flags, start_new=False)
    train.train(flags, model_dir, f"{root}/frame/train*.tfrecord", CONFIG, log=lambda _: None)
    if not args.tile_num:
        return model_dir
    build.build_and_export([model_dir], [1.0], f"{root}/ensemble", tile_num=args.tile_num,
                           log=None)
    return f"{root}/ensemble"


def _segments_per_second(model, pattern: str, output: str, kept, args, padded) -> tuple:
    """(segments, seconds) of one write_segment_submission, after a warm-up."""
    for _ in range(2):
        start = time.time()
        segments = segment_submission.write_segment_submission(
            model, pattern, output, kept, args.max_pred, batch_size=args.batch_size,
            log=None, padded=padded)
    return segments, time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--videos", type=int, default=200)
    parser.add_argument("--num_classes", type=int, default=3862)
    parser.add_argument("--kept_classes", type=int, default=1000)
    parser.add_argument("--max_pred", type=int, default=100000)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--model", default="FrameMeanMoeModel", help="a model or preset")
    parser.add_argument("--size", default="test", help="the preset's size (models.presets)")
    parser.add_argument("--tile_num", type=int, default=0, help="time the ensemble.build "
                        "export of the model, tiled so (0: the model dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        model_dir = _model_dir(root, args)
        synthetic_segments.write_segment_dataset(root, "test", 1, args.videos, args.num_classes)
        model = predict.open_model(model_dir)
        kept = np.arange(args.kept_classes) * (args.num_classes // args.kept_classes)
        try:
            timed = {padded: _segments_per_second(model, f"{root}/segments/test*.tfrecord",
                                                  f"{root}/s.csv", kept, args, padded)
                     for padded in (True, None)}
        finally:
            model.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    (segments, before), (_, after) = timed[True], timed[None]
    what = args.model + (f" export tiled x{args.tile_num}" if args.tile_num else "")
    print(f"segment inference, {what}: {segments} segments of {args.videos} videos, "
          f"{args.kept_classes} classes kept | padded to 300 frames (before): "
          f"{segments / before:.1f} segments/sec | at their 5 frames (now): "
          f"{segments / after:.1f} segments/sec ({before / after:.2f}x) | peak RSS "
          f"{peak:.0f} MiB (max_pred {args.max_pred}: the top-k holds at most "
          f"{segments * args.kept_classes * 12 / 2**20:.1f} MiB here, "
          f"{2 * args.max_pred * args.kept_classes * 12 / 2**30:.1f} GiB at worst)")


if __name__ == "__main__":
    main()
