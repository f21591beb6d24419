"""Synthetic 2019-style segment-rated frame-level records (docs/formats.md 1.8).

Writes ``<output_dir>/segments/<split>NN.tfrecord``: the frame-level
SequenceExamples of training.synthetic (same prototypes for the same seed and
num_classes, so a model trained on ``training.synthetic`` data can score
them) whose context also holds the 2019 fields of the starter's
``segment_eval_inference.read_labels``: ``segment_labels`` (int64),
``segment_start_times`` (int64, multiples of the segment size) and
``segment_scores`` (float, the 0/1 human rating).

The learnable segment signal: each video has one rated class ``c`` among its
labels. A segment rated 1 keeps the video's frames (``c`` present); the frames
of a segment rated 0 are replaced by frames drawn without ``c`` (the other
labels, or a distractor class), as a rater would see a segment where ``c``
does not show. Same arguments -> byte-identical files.
Usable as ``python -m training.synthetic_segments --output_dir=DIR ...``.
"""
from __future__ import annotations

import os

import numpy as np
from absl import flags

from models.tf_compat import tf
from training import flags as shared_flags
from training import synthetic
from training.cli import UserError, run_main

FLAGS = flags.FLAGS

SEGMENT_SIZE = 5        # frames (seconds) per rated segment in the 2019 data


def _rated_frames(rng, labels, num_frames, protos, num_classes):
    """(rgb, audio) of the video and (rgb, audio) drawn without its rated class,
    and the rated class."""
    rated = int(labels[rng.integers(len(labels))])
    others = np.asarray([c for c in labels if c != rated], dtype=np.int64)
    if others.size == 0:
        # A one-label video still needs content in its negative segments;
        # a distractor class keeps them as "busy" as the positive ones.
        others = np.asarray([(rated + 1) % num_classes], dtype=np.int64)
    present = synthetic._video_frames(rng, labels, num_frames, protos)
    absent = synthetic._video_frames(rng, others, num_frames, protos)
    return present, absent, rated


def segment_record(video_id: bytes, labels, rgb_q, audio_q, segment_labels,
                   start_times, scores) -> bytes:
    """A frame-level SequenceExample with the three 2019 segment context lists."""
    example = tf.train.SequenceExample.FromString(
        synthetic.sequence_example(video_id, labels, rgb_q, audio_q))
    context = example.context.feature
    context["segment_labels"].int64_list.value.extend(int(x) for x in segment_labels)
    context["segment_start_times"].int64_list.value.extend(int(x) for x in start_times)
    context["segment_scores"].float_list.value.extend(float(x) for x in scores)
    return example.SerializeToString(deterministic=True)


def _video_record(rng, video_id, labels, num_frames, protos, num_classes,
                  segment_size, segments_per_video):
    (rgb, audio), (rgb_off, audio_off), rated = _rated_frames(
        rng, labels, num_frames, protos, num_classes)
    slots = num_frames // segment_size
    chosen = np.sort(rng.choice(slots, size=min(segments_per_video, slots), replace=False))
    starts = chosen * segment_size
    scores = rng.integers(0, 2, size=starts.size)
    for start, score in zip(starts, scores):
        if score == 0:
            rgb[start:start + segment_size] = rgb_off[start:start + segment_size]
            audio[start:start + segment_size] = audio_off[start:start + segment_size]
    return segment_record(video_id, labels, rgb, audio, [rated] * starts.size, starts,
                          scores.astype(np.float32))


def write_segment_dataset(output_dir: str, split: str = "validate", num_shards: int = 1,
                          videos_per_shard: int = 32, num_classes: int = 3862, seed: int = 0,
                          segment_size: int = SEGMENT_SIZE, segments_per_video: int = 5,
                          min_frames: int = 60, max_frames: int = 300) -> list[str]:
    """Writes one segment-rated split; returns the paths written.

    Raises:
      UserError naming the flag at fault for invalid arguments.
    """
    synthetic._validate(split, num_shards, videos_per_shard, num_classes, min_frames,
                        max_frames, True, False)
    if segment_size < 1 or segments_per_video < 1:
        raise UserError(f"--segment_size/--segments_per_video: must be positive, got "
                        f"{segment_size} and {segments_per_video}")
    if min_frames < segment_size:
        raise UserError(f"--min_frames: must be at least --segment_size ({segment_size}) "
                        f"so every video has a segment, got {min_frames}")
    if not output_dir:
        raise UserError("--output_dir: missing")
    protos = synthetic.class_prototypes(num_classes, seed)
    folder = os.path.join(output_dir, "segments")
    tf.io.gfile.makedirs(folder)
    paths = []
    for shard in range(num_shards):
        # A stream of its own (last key 2): the video-level shards use 1.
        rng = np.random.default_rng([seed, synthetic._split_key(split), shard, 2])
        ids = synthetic.make_ids(split, shard, videos_per_shard)
        labels = synthetic._draw_labels(rng, videos_per_shard, num_classes)
        counts = rng.integers(min_frames, max_frames + 1, size=videos_per_shard)
        records = [_video_record(rng, ids[v], labels[v], int(counts[v]), protos, num_classes,
                                 segment_size, segments_per_video)
                   for v in range(videos_per_shard)]
        paths.append(os.path.join(folder, f"{split}{shard:02d}.tfrecord"))
        synthetic.write_records(paths[-1], records)
        print(f"synthetic_segments: {split} shard {shard + 1}/{num_shards}: "
              f"{videos_per_shard} videos -> {paths[-1]}", flush=True)
    return paths


def define_flags() -> None:
    shared_flags.define_shared_flags({
        "output_dir": (None, "Folder to write segments/ into."),
        "num_classes": (3862, "Size of the label vocabulary."),
        "seed": (0, "The class prototypes depend on it only.")})
    define = shared_flags.define
    define(flags.DEFINE_string, "split", "validate", "Split name used in file names.")
    define(flags.DEFINE_integer, "num_shards", 1, "Number of shards (files), at most 100.")
    define(flags.DEFINE_integer, "videos_per_shard", 32, "Videos per shard.")
    define(flags.DEFINE_integer, "segment_size", SEGMENT_SIZE, "Frames per rated segment.")
    define(flags.DEFINE_integer, "segments_per_video", 5, "Rated segments per video.")
    define(flags.DEFINE_integer, "min_frames", 60, "Fewest frames per video.")
    define(flags.DEFINE_integer, "max_frames", 300, "Most frames per video.")


def main(argv) -> None:
    del argv
    if not FLAGS.output_dir:
        raise UserError("--output_dir: missing; give the folder to write into")
    write_segment_dataset(FLAGS.output_dir, FLAGS.split, FLAGS.num_shards,
                          FLAGS.videos_per_shard, FLAGS.num_classes, FLAGS.seed,
                          FLAGS.segment_size, FLAGS.segments_per_video, FLAGS.min_frames,
                          FLAGS.max_frames)


if __name__ == "__main__":
    define_flags()
    run_main(main)
