"""Segment inference (2019 submission): segments/sec and memory.
python -m bench.bench_segments [--videos=200 --num_classes=3862 --kept_classes=1000]
python -m bench.bench_segments --memory_videos=50,100,200,400 --kept_classes=100 --max_pred=10

Trains a FrameMeanMoeModel (or --model at --size; --tile_num: its tiled
ensemble.build export) a few steps on synthetic data (speed, not quality, is
measured), writes synthetic segment-rated records
(training.synthetic_segments, 5 segments a video), then times
ensemble.segment_submission.write_segment_submission over them twice in one
run, side by side: each segment padded to 300 frames (as before) and at its
real 5 frames (now); plus the process's peak resident memory and the bytes
the per-class top-k holds (ClassTopK: at most 2 x max_pred per class).

--memory_videos=N1,N2,...: instead, the test split's case, scored in the
every-segment mode (records without segment lists, 30 to 300 frames a
video, written in files of 50 videos): for each number of videos, the
first N/50 files through ensemble.segment_submission.collect_top twice, its
names pruned (now) and never pruned (as before: one name per segment),
with segments/sec, the most names held, the pairs ClassTopK holds, the most
bytes of the top-k state (tracemalloc, after each batch: the live arrays
allocated in ensemble/segment_submission.py) and the whole run's
tracemalloc peak (numpy and Python allocations, mostly a batch's
[segments, classes] predictions; TensorFlow's own buffers are not traced).
With a small --max_pred the per-class cap binds, and the pruned state
stays flat as the videos grow.
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
import tracemalloc

import numpy as np

from ensemble import build, segment_submission
from models import presets
from training import (
    model_builder,
    predict,
    readers,
    synthetic,
    synthetic_segments,
    train,
)
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


VIDEOS_PER_FILE = 50


_STATE = [tracemalloc.Filter(True, segment_submission.__file__)]


class _Watched(segment_submission.SegmentNames):
    """SegmentNames that records, after each batch, the most names it held
    and the most bytes the top-k state held (what tracemalloc traces as
    allocated in ensemble/segment_submission.py and still alive: ClassTopK's
    and SegmentNames' arrays; the batch's scores are freed by then);
    never_prune: every segment's name kept (one a segment, as before)."""

    def __init__(self, never_prune: bool):
        super().__init__()
        self.never_prune, self.most, self.most_bytes = never_prune, 0, 0

    def add(self, first_number, keys) -> None:
        super().add(first_number, keys)
        self.most = max(self.most, len(self))
        state = tracemalloc.take_snapshot().filter_traces(_STATE)
        self.most_bytes = max(self.most_bytes,
                              sum(stat.size for stat in state.statistics("filename")))

    def due(self) -> bool:
        return not self.never_prune and super().due()


def _memory_run(model, files, kept, args, never_prune: bool) -> dict:
    """One collect_top in every-segment mode: its time, names, pairs, peak."""
    names = _Watched(never_prune)
    tracemalloc.start()
    start = time.time()
    top, _ = segment_submission.collect_top(
        model, files, list(range(len(files))), kept, args.max_pred,
        batch_size=args.batch_size, log=None, scoring=segment_submission.Scoring("every"),
        names=names)
    seconds = time.time() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"segments": names.seen, "seconds": seconds, "names": names.most,
            "pairs": top.pairs(), "peak": peak, "state": names.most_bytes}


def _memory_table(root: str, model_dir: str, args) -> None:
    """--memory_videos: the table of the module docstring, printed."""
    sizes = [int(n) for n in args.memory_videos.split(",")]
    shards = -(-max(sizes) // VIDEOS_PER_FILE)
    synthetic.write_dataset(root, "test", shards, VIDEOS_PER_FILE, args.num_classes,
                            video_level=False, with_labels=False, seed=2)
    files = readers.resolve_files(f"{root}/frame/test*.tfrecord", "input_data_pattern")
    kept = np.arange(args.kept_classes) * (args.num_classes // args.kept_classes)
    model = predict.open_model(model_dir)
    try:
        _memory_run(model, files[:1], kept, args, False)      # warm-up: the pipeline
        rows = [(n, {never: _memory_run(model, files[:-(-n // VIDEOS_PER_FILE)], kept, args,
                                        never) for never in (False, True)}) for n in sizes]
    finally:
        model.close()
    print(f"segment top-k memory, every segment, {args.model}: {args.kept_classes} classes "
          f"kept, max_pred {args.max_pred} (the cap: {args.kept_classes} x 2 x "
          f"{args.max_pred} = {args.kept_classes * 2 * args.max_pred} pairs), names pruned "
          f"from {segment_submission.PRUNE_MIN}")
    print("(two numbers: names pruned (now) / never pruned (before))")
    print("| videos | segments | segments/s | names held, most | "
          "pairs held at the end | top-k state, most KiB | whole-run tracemalloc peak MiB |")
    print("|---|---|---|---|---|---|---|")
    for n, runs in rows:
        now, before = runs[False], runs[True]
        print(f"| {n} | {now['segments']} | {now['segments'] / now['seconds']:.0f} / "
              f"{before['segments'] / before['seconds']:.0f} | {now['names']} / "
              f"{before['names']} | {now['pairs']} | {now['state'] / 1024:.0f} / "
              f"{before['state'] / 1024:.0f} | {now['peak'] / 2**20:.2f} / "
              f"{before['peak'] / 2**20:.2f} |")


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
    parser.add_argument("--memory_videos", default="", help="comma-separated numbers of "
                        "test videos: the memory table instead (module docstring)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        model_dir = _model_dir(root, args)
        if args.memory_videos:
            _memory_table(root, model_dir, args)
            return
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
