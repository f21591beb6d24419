"""Synthetic 2019-style segment-rated frame-level records (docs/formats.md 1.8,
docs/segments.md "Synthetic segment data").

Writes ``<output_dir>/segments/<split>NN.tfrecord``: frame-level
SequenceExamples drawn as ``training.synthetic`` draws its videos (same class
prototypes for the same seed and num_classes, same label skew, frame counts,
offsets and noise, so a model trained on ``training.synthetic`` data scores
them) whose context also holds the 2019 fields of the starter's
``segment_eval_inference.read_labels``: ``segment_labels`` (int64),
``segment_start_times`` (int64, multiples of the segment size) and
``segment_scores`` (float, the 0/1 human rating).

What a rating means (docs/segments.md "Synthetic segment data"): every frame
shows each label's "scene", a segment rated 1 for c adds c's "event" (a
direction no video-level video shows), and a "confuser" segment rated 0 for
a class the video lacks briefly shows that class's scene: scoring segments
by their video's score leaves room for fine-tuning and refinement.

Same arguments -> byte-identical files. Usable as
``python -m training.synthetic_segments --output_dir=DIR ...``.
"""
from __future__ import annotations

import dataclasses
import os
from typing import List, Tuple

import numpy as np
from absl import flags

from models.tf_compat import tf
from training import flags as shared_flags
from training import synthetic
from training.cli import UserError, run_main

FLAGS = flags.FLAGS

SEGMENT_SIZE = 5        # frames (seconds) per rated segment in the 2019 data


@dataclasses.dataclass(frozen=True)
class Ratings:
    """How the rated segments of each video are drawn (the flags of the same names)."""
    segments_per_video: int = 5        # rated segments (distinct 5-frame slots)
    rated_classes: int = 2             # of the video's labels, at most
    event_strength: float = 0.5        # the event's amplitude, in prototype units
    scene_boost: float = 0.4           # extra scene of the rated class in a positive
    confuser_rate: float = 0.2         # videos with one confuser segment


def event_prototypes(num_classes: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Per-class event directions: (rgb [C, 1024], audio [C, 128]) float32,
    (shared + own_c) / sqrt(2) with each part N(0, PROTO_STD^2) per element.
    Depend on ``seed`` and ``num_classes`` only (a stream of their own)."""
    rng = np.random.default_rng([int(seed), 0xE7E27])
    out = []
    for size in (synthetic.RGB_SIZE, synthetic.AUDIO_SIZE):
        shared = rng.standard_normal((1, size), dtype=np.float32)
        own = rng.standard_normal((num_classes, size), dtype=np.float32)
        out.append(((shared + own) * np.float32(synthetic._PROTO_STD / np.sqrt(2.0)))
                   .astype(np.float32))
    return out[0], out[1]


def _scene_frames(rng, labels, num_frames: int, protos) -> List[np.ndarray]:
    """training.synthetic's frames of one video before quantisation (the same
    formula): [rgb float32 [T, 1024], audio float32 [T, 128]]."""
    k = len(labels)
    t = np.arange(num_frames, dtype=np.float32)[:, None]
    period = rng.uniform(20.0, 120.0, size=(1, k)).astype(np.float32)
    phase = rng.uniform(0.0, 2 * np.pi, size=(1, k)).astype(np.float32)
    weights = ((1.0 + synthetic._WAVE_AMPLITUDE * np.sin(2 * np.pi * t / period + phase))
               / np.sqrt(k)).astype(np.float32)
    frames = []
    for table, size in zip(protos, (synthetic.RGB_SIZE, synthetic.AUDIO_SIZE)):
        x = weights @ table[labels]
        x += rng.standard_normal((1, size), dtype=np.float32) * synthetic._OFFSET_STD
        x += rng.standard_normal((num_frames, size), dtype=np.float32) * synthetic._NOISE_STD
        frames.append(x)
    return frames


def _confuser_class(rng, labels, num_classes: int) -> int:
    """A class the video is not labelled with, drawn with the label skew."""
    weights = synthetic._class_weights(num_classes).copy()
    weights[labels] = 0.0
    if weights.sum() <= 0:
        return -1
    return int(rng.choice(num_classes, p=weights / weights.sum()))


def _plan(rng, labels, num_frames: int, segment_size: int, ratings: Ratings, num_classes: int):
    """(start times [S], rated classes [S], scores [S], confuser flags [S]),
    in start-time order: each slot rated for one class."""
    slots = num_frames // segment_size
    count = min(ratings.segments_per_video, slots)
    chosen = rng.choice(slots, size=count, replace=False)
    rated = rng.choice(labels, size=min(ratings.rated_classes, len(labels)), replace=False)
    classes = rated[np.arange(count) % rated.size].astype(np.int64)
    # Both ratings of a class whenever it has two slots: alternate from a random first.
    first = rng.integers(0, 2, size=rated.size)
    scores = (first[np.arange(count) % rated.size] + np.arange(count) // rated.size) % 2
    confuser = np.zeros(count, bool)
    if count >= 2 and rng.random() < ratings.confuser_rate:
        other = _confuser_class(rng, labels, num_classes)
        if other >= 0:
            classes[-1], scores[-1], confuser[-1] = other, 0, True
    order = np.argsort(chosen, kind="stable")
    return (chosen[order] * segment_size, classes[order], scores[order].astype(np.float32),
            confuser[order])


def _video_record(rng, video_id: bytes, labels, num_frames: int, tables, num_classes: int,
                  segment_size: int, ratings: Ratings, with_ratings: bool,
                  with_labels: bool) -> bytes:
    """One video: its scene frames, the events of its positives and the scene
    of its confuser added, quantised; the record with or without the lists."""
    protos, events = tables
    rgb, audio = _scene_frames(rng, labels, num_frames, protos)
    starts, classes, scores, confusers = _plan(rng, labels, num_frames, segment_size, ratings,
                                               num_classes)
    for start, label, score, confuser in zip(starts, classes, scores, confusers):
        rows = slice(int(start), int(start) + segment_size)
        if confuser:    # its scene at the amplitude of one of this video's labels
            amplitude = np.float32(rng.uniform(0.5, 1.5) / np.sqrt(len(labels)))
            rgb[rows] += amplitude * protos[0][label]
            audio[rows] += amplitude * protos[1][label]
        elif score > 0:
            scale = np.float32(ratings.event_strength / np.sqrt(len(labels)))
            boost = np.float32(ratings.scene_boost / np.sqrt(len(labels)))
            rgb[rows] += scale * events[0][label] + boost * protos[0][label]
            audio[rows] += scale * events[1][label] + boost * protos[1][label]
    stored = labels if with_labels else np.zeros([0], np.int64)
    if not with_ratings:
        return synthetic.sequence_example(video_id, stored, synthetic.quantize(rgb),
                                          synthetic.quantize(audio))
    return segment_record(video_id, stored, synthetic.quantize(rgb), synthetic.quantize(audio),
                          classes, starts, scores)


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


def _check_ratings(ratings: Ratings, segment_size: int, min_frames: int) -> None:
    if segment_size < 1 or ratings.segments_per_video < 1 or ratings.rated_classes < 1:
        raise UserError(f"--segment_size/--segments_per_video/--rated_classes: must be "
                        f"positive, got {segment_size}, {ratings.segments_per_video} and "
                        f"{ratings.rated_classes}")
    if min_frames < segment_size:
        raise UserError(f"--min_frames: must be at least --segment_size ({segment_size}) "
                        f"so every video has a segment, got {min_frames}")
    for name in ("event_strength", "scene_boost"):
        value = getattr(ratings, name)
        if not np.isfinite(value) or value < 0:
            raise UserError(f"--{name}: must be a finite number >= 0, got {value}")
    if not 0.0 <= ratings.confuser_rate <= 1.0:
        raise UserError(f"--confuser_rate: must be in [0, 1], got {ratings.confuser_rate}")


def write_segment_dataset(output_dir: str, split: str = "validate", num_shards: int = 1,
                          videos_per_shard: int = 32, num_classes: int = 3862, seed: int = 0,
                          segment_size: int = SEGMENT_SIZE, segments_per_video: int = 5,
                          min_frames: int = 60, max_frames: int = 300,
                          ratings: Ratings | None = None, with_ratings: bool = True,
                          with_labels: bool = True) -> list[str]:
    """Writes one segment-rated split; returns the paths written.

    ratings: how segments are rated (segments_per_video overrides its
    field); with_ratings=False writes the same videos without the three
    lists (a 2019 test-split look-alike), with_labels=False empty labels.
    Raises:
      UserError naming the flag at fault for invalid arguments.
    """
    synthetic._validate(split, num_shards, videos_per_shard, num_classes, min_frames,
                        max_frames, True, False)
    ratings = dataclasses.replace(ratings or Ratings(), segments_per_video=segments_per_video)
    _check_ratings(ratings, segment_size, min_frames)
    if not output_dir:
        raise UserError("--output_dir: missing")
    tables = (synthetic.class_prototypes(num_classes, seed), event_prototypes(num_classes, seed))
    folder = os.path.join(output_dir, "segments")
    tf.io.gfile.makedirs(folder)
    paths = []
    for shard in range(num_shards):
        # A stream of its own (last key 2): the video-level shards use 1.
        rng = np.random.default_rng([seed, synthetic._split_key(split), shard, 2])
        ids = synthetic.make_ids(split, shard, videos_per_shard)
        labels = synthetic._draw_labels(rng, videos_per_shard, num_classes)
        counts = rng.integers(min_frames, max_frames + 1, size=videos_per_shard)
        records = [_video_record(rng, ids[v], labels[v], int(counts[v]), tables, num_classes,
                                 segment_size, ratings, with_ratings, with_labels)
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
    default = Ratings()
    define(flags.DEFINE_string, "split", "validate", "Split name used in file names.")
    define(flags.DEFINE_integer, "num_shards", 1, "Number of shards (files), at most 100.")
    define(flags.DEFINE_integer, "videos_per_shard", 32, "Videos per shard.")
    define(flags.DEFINE_integer, "segment_size", SEGMENT_SIZE, "Frames per rated segment.")
    define(flags.DEFINE_integer, "segments_per_video", default.segments_per_video,
           "Rated segments per video.")
    define(flags.DEFINE_integer, "rated_classes", default.rated_classes,
           "Labels of a video that its segments are rated for, at most.")
    define(flags.DEFINE_float, "event_strength", default.event_strength,
           "Amplitude of the event a segment rated 1 carries (0: none).")
    define(flags.DEFINE_float, "scene_boost", default.scene_boost,
           "Extra scene of the rated class in a segment rated 1.")
    define(flags.DEFINE_float, "confuser_rate", default.confuser_rate,
           "Fraction of videos with a confuser: a segment rated 0 for a class the video "
           "is not labelled with, showing that class's scene.")
    define(flags.DEFINE_integer, "min_frames", 60, "Fewest frames per video.")
    define(flags.DEFINE_integer, "max_frames", 300, "Most frames per video.")
    define(flags.DEFINE_boolean, "with_ratings", True, "Write the three segment lists "
           "(false: the same videos without them, like the 2019 test split).")
    define(flags.DEFINE_boolean, "with_labels", True, "Store labels (false: empty lists).")


def main(argv) -> None:
    del argv
    if not FLAGS.output_dir:
        raise UserError("--output_dir: missing; give the folder to write into")
    ratings = Ratings(FLAGS.segments_per_video, FLAGS.rated_classes, FLAGS.event_strength,
                      FLAGS.scene_boost, FLAGS.confuser_rate)
    write_segment_dataset(FLAGS.output_dir, FLAGS.split, FLAGS.num_shards,
                          FLAGS.videos_per_shard, FLAGS.num_classes, FLAGS.seed,
                          FLAGS.segment_size, FLAGS.segments_per_video, FLAGS.min_frames,
                          FLAGS.max_frames, ratings, FLAGS.with_ratings, FLAGS.with_labels)


if __name__ == "__main__":
    define_flags()
    run_main(main)
