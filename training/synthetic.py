"""Deterministic synthetic YouTube-8M 2018 TFRecords with a learnable signal.

Writes, for one split, ``<output_dir>/frame/<split>NN.tfrecord`` (frame-level
SequenceExamples: ``id``, ``labels``, feature lists ``rgb`` 1024 and ``audio``
128 uint8-quantised bytes per frame, docs/formats.md 1.3) and
``<output_dir>/video/<split>NN.tfrecord`` (video-level Examples whose
``mean_rgb`` / ``mean_audio`` are the means of the dequantised frames).
``year=2017`` (``--year=2017``) writes the 2017 layout instead: the same
records with the id under ``video_id`` (docs/formats.md 1.6; the 2017
kinds' classes, 4716, are the caller's --num_classes).

Ids are unique across the splits of one seed, labels follow a Zipf-like
skew, and every class has fixed prototype vectors that the frames carry
under noise, so a model can learn; docs/architecture.md "Synthetic data" has
the details. The same arguments give byte-identical files. Usable as
``python -m training.synthetic --output_dir=DIR ...`` or ``write_dataset``.
"""
from __future__ import annotations

import os
import re
import time
import zlib
from typing import Dict, List

import numpy as np
from absl import flags

from models.tf_compat import tf
from training import flags as shared_flags
from training import readers, record_layouts
from training.cli import UserError, run_main

FLAGS = flags.FLAGS

ID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
RGB_SIZE = 1024
AUDIO_SIZE = 128
MAX_LABELS = 8
# The context key of the video id, by year of the layout.
ID_KEYS = {2018: "id", 2017: record_layouts.VIDEO_ID_2017}

# Quantisation constants (docs/formats.md 1.3): x = q * SCALAR + BIAS.
_SCALAR, _BIAS = readers.dequantize_constants()

# Signal / noise scales (per element standard deviations).
_PROTO_STD = 0.4
_OFFSET_STD = 0.15
_NOISE_STD = 0.3
_WAVE_AMPLITUDE = 0.5

_SPLIT_OFFSETS = {"train": 0, "validate": 1281, "test": 2562}
_NUM_CODES = len(ID_ALPHABET) ** 2  # 3844
_CODE_ORDER = np.random.default_rng(20180815).permutation(_NUM_CODES)


def class_prototypes(num_classes: int, seed: int = 0):
    """Fixed per-class prototypes: (rgb [C, 1024], audio [C, 128]) float32.

    Depends on ``seed`` and ``num_classes`` only, never on the split.
    """
    rng = np.random.default_rng([int(seed), 0x5EED])
    rgb = rng.standard_normal((num_classes, RGB_SIZE), dtype=np.float32) * _PROTO_STD
    audio = rng.standard_normal((num_classes, AUDIO_SIZE), dtype=np.float32) * _PROTO_STD
    return rgb, audio


def quantize(x):
    """float array -> uint8 with ``q = clip(round((x - bias) / scalar), 0, 255)``."""
    return np.clip(np.rint((x - _BIAS) / _SCALAR), 0, 255).astype(np.uint8)


def dequantize_np(q):
    """uint8 array -> float32, ``x = q * 4/255 + (4/512 - 2)``."""
    return (q.astype(np.float32) * np.float32(_SCALAR) + np.float32(_BIAS)).astype(np.float32)


def _split_key(split: str) -> int:
    return zlib.crc32(split.encode("utf-8"))


def make_ids(split: str, shard: int, count: int) -> list[bytes]:
    """``count`` unique 4-char ids ending with the shard's two digits."""
    suffix = f"{shard:02d}"
    offset = _SPLIT_OFFSETS.get(split, _split_key(split) % _NUM_CODES)
    ids = []
    for index in range(count):
        code = int(_CODE_ORDER[(offset + index) % _NUM_CODES])
        prefix = ID_ALPHABET[code // len(ID_ALPHABET)] + ID_ALPHABET[code % len(ID_ALPHABET)]
        ids.append((prefix + suffix).encode("ascii"))
    return ids


def _class_weights(num_classes: int) -> np.ndarray:
    weights = 1.0 / np.arange(1, num_classes + 1, dtype=np.float64)
    return weights / weights.sum()


def _draw_labels(rng, count: int, num_classes: int) -> list[np.ndarray]:
    """Zipf-skewed, distinct labels per video (Gumbel top-k sampling)."""
    k = np.minimum(1 + rng.poisson(2.0, size=count), min(MAX_LABELS, num_classes))
    log_p = np.log(_class_weights(num_classes))
    keys = log_p[None, :] + rng.gumbel(size=(count, num_classes))
    order = np.argsort(-keys, axis=1, kind="stable")
    return [np.sort(order[v, :k[v]]).astype(np.int64) for v in range(count)]


def _video_frames(rng, labels, num_frames, protos):
    """Quantised frames of one video: (rgb uint8 [T, 1024], audio uint8 [T, 128])."""
    rgb_protos, audio_protos = protos
    k = len(labels)
    t = np.arange(num_frames, dtype=np.float32)[:, None]
    period = rng.uniform(20.0, 120.0, size=(1, k)).astype(np.float32)
    phase = rng.uniform(0.0, 2 * np.pi, size=(1, k)).astype(np.float32)
    weights = (1.0 + _WAVE_AMPLITUDE * np.sin(2 * np.pi * t / period + phase)) / np.sqrt(k)
    out = []
    for table, size in ((rgb_protos, RGB_SIZE), (audio_protos, AUDIO_SIZE)):
        x = weights.astype(np.float32) @ table[labels]  # [T, size]
        x += rng.standard_normal((1, size), dtype=np.float32) * _OFFSET_STD
        x += rng.standard_normal((num_frames, size), dtype=np.float32) * _NOISE_STD
        out.append(quantize(x))
    return out[0], out[1]


def _set_id_and_labels(features, video_id: bytes, labels, id_key: str = "id") -> None:
    """The id and labels features of a record (labels present even when empty)."""
    features[id_key].bytes_list.value.append(video_id)
    features["labels"].int64_list.SetInParent()
    features["labels"].int64_list.value.extend(int(x) for x in labels)


def sequence_example(video_id, labels, rgb_q, audio_q, id_key: str = "id") -> bytes:
    example = tf.train.SequenceExample()
    _set_id_and_labels(example.context.feature, video_id, labels, id_key)
    for name, matrix in (("rgb", rgb_q), ("audio", audio_q)):
        feature_list = example.feature_lists.feature_list[name]
        for row in matrix:
            feature_list.feature.add().bytes_list.value.append(row.tobytes())
    return example.SerializeToString(deterministic=True)


def _video_example(video_id, labels, mean_rgb, mean_audio, id_key: str = "id") -> bytes:
    example = tf.train.Example()
    feature = example.features.feature
    _set_id_and_labels(feature, video_id, labels, id_key)
    feature["mean_rgb"].float_list.value.extend(mean_rgb.tolist())
    feature["mean_audio"].float_list.value.extend(mean_audio.tolist())
    return example.SerializeToString(deterministic=True)


def write_records(path: str, records) -> None:
    """Writes records to ``path`` through a temporary file and a rename."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with tf.io.TFRecordWriter(tmp) as writer:
            for record in records:
                writer.write(record)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    except BaseException:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)
        raise


def _validate(split, num_shards, videos_per_shard, num_classes, min_frames, max_frames,
              frame_level, video_level, year=2018):
    if year not in ID_KEYS:
        raise UserError(f"--year: the layout of 2017 or 2018, got {year}")
    if not split or not re.fullmatch(r"[A-Za-z0-9_-]+", split):
        raise UserError(f"--split: '{split}' must be a non-empty name of [A-Za-z0-9_-]")
    if not 1 <= num_shards <= 100:
        raise UserError(f"--num_shards: must be in 1..100 (two-digit shard names), "
                        f"got {num_shards}")
    if not 1 <= videos_per_shard <= _NUM_CODES:
        raise UserError(f"--videos_per_shard: must be in 1..{_NUM_CODES} "
                        f"(4-char ids per shard), got {videos_per_shard}")
    if num_classes < 1:
        raise UserError(f"--num_classes: must be positive, got {num_classes}")
    if min_frames < 0 or max_frames < min_frames:
        raise UserError(f"--min_frames/--max_frames: need 0 <= min_frames <= max_frames, "
                        f"got {min_frames} and {max_frames}")
    if not (frame_level or video_level):
        raise UserError("--frame_level/--video_level: both are false, nothing to write")


def write_dataset(output_dir: str, split: str = "train", num_shards: int = 2,
                  videos_per_shard: int = 64, num_classes: int = 3862, seed: int = 0,
                  frame_level: bool = True, video_level: bool = True,
                  min_frames: int = 30, max_frames: int = 300,
                  with_labels: bool = True, year: int = 2018) -> dict:
    """Writes one synthetic split; returns {"frame": [paths], "video": [paths]}.

    Same arguments -> byte-identical files. Prototypes depend on ``seed``
    and ``num_classes`` only; labels, frames and noise depend on ``seed``,
    ``split`` and the shard number. year: 2017 writes the id under
    ``video_id`` (the 2017 layout), nothing else changes.

    Raises:
      UserError naming the flag at fault for invalid arguments.
    """
    num_shards, videos_per_shard = int(num_shards), int(videos_per_shard)
    num_classes, seed = int(num_classes), int(seed)
    min_frames, max_frames = int(min_frames), int(max_frames)
    _validate(split, num_shards, videos_per_shard, num_classes, min_frames, max_frames,
              frame_level, video_level, year)
    if not output_dir:
        raise UserError("--output_dir: missing")

    protos = class_prototypes(num_classes, seed)
    dirs = _level_dirs(output_dir, frame_level, video_level)
    written: Dict[str, List[str]] = {"frame": [], "video": []}
    for shard in range(num_shards):
        start = time.time()
        records, frames = _shard_records(split, shard, videos_per_shard, num_classes, seed,
                                         min_frames, max_frames, protos, with_labels,
                                         ID_KEYS[year])
        name = f"{split}{shard:02d}.tfrecord"
        for level in sorted(dirs):
            path = os.path.join(dirs[level], name)
            write_records(path, records[level])
            written[level].append(path)
        print(f"synthetic: {split} shard {shard + 1}/{num_shards}: {videos_per_shard} videos, "
              f"{frames} frames -> {name} ({', '.join(sorted(dirs))}) "
              f"in {time.time() - start:.2f}s", flush=True)
    return written


def _level_dirs(output_dir: str, frame_level: bool, video_level: bool) -> dict:
    dirs = {}
    for level, enabled in (("frame", frame_level), ("video", video_level)):
        if enabled:
            dirs[level] = os.path.join(output_dir, level)
            try:
                tf.io.gfile.makedirs(dirs[level])
            except tf.errors.OpError as err:
                raise UserError(f"--output_dir: cannot create '{dirs[level]}': "
                                f"{err.message}") from None
    return dirs


def _shard_records(split, shard, videos_per_shard, num_classes, seed, min_frames, max_frames,
                   protos, with_labels, id_key="id"):
    """({"frame": [serialized], "video": [serialized]}, total frames) of one shard."""
    rng = np.random.default_rng([seed, _split_key(split), shard, 1])
    ids = make_ids(split, shard, videos_per_shard)
    labels = _draw_labels(rng, videos_per_shard, num_classes)
    frame_counts = rng.integers(min_frames, max_frames + 1, size=videos_per_shard)
    records: Dict[str, List[bytes]] = {"frame": [], "video": []}
    for v in range(videos_per_shard):
        rgb_q, audio_q = _video_frames(rng, labels[v], int(frame_counts[v]), protos)
        stored_labels = labels[v] if with_labels else np.zeros([0], np.int64)
        records["frame"].append(sequence_example(ids[v], stored_labels, rgb_q, audio_q, id_key))
        if frame_counts[v] > 0:
            mean_rgb = dequantize_np(rgb_q).mean(axis=0, dtype=np.float64)
            mean_audio = dequantize_np(audio_q).mean(axis=0, dtype=np.float64)
        else:
            mean_rgb, mean_audio = np.zeros(RGB_SIZE), np.zeros(AUDIO_SIZE)
        records["video"].append(_video_example(
            ids[v], stored_labels, mean_rgb.astype(np.float32), mean_audio.astype(np.float32),
            id_key))
    return records, int(frame_counts.sum())


def define_flags() -> None:
    shared_flags.define_shared_flags({
        "output_dir": (None, "Folder to write frame/ and video/ into."),
        "num_classes": (3862, "Size of the label vocabulary."),
        "seed": (0, "The class prototypes depend on it only.")})
    define = shared_flags.define
    define(flags.DEFINE_string, "split", "train", "Split name used in file names: train, "
           "validate, test.")
    define(flags.DEFINE_integer, "num_shards", 2, "Number of shards (files) per level, at "
           "most 100.")
    define(flags.DEFINE_integer, "videos_per_shard", 64, "Videos per shard.")
    define(flags.DEFINE_boolean, "frame_level", True, "Write frame-level SequenceExamples.")
    define(flags.DEFINE_boolean, "video_level", True, "Write video-level Examples.")
    define(flags.DEFINE_integer, "min_frames", 30, "Fewest frames per video.")
    define(flags.DEFINE_integer, "max_frames", 300, "Most frames per video.")
    define(flags.DEFINE_boolean, "with_labels", True, "Store labels (false: empty lists, "
           "like test).")
    define(flags.DEFINE_integer, "year", 2018, "The layout: 2018, or 2017 (the id under "
           "video_id; its kinds frame2017, video2017 have 4716 classes).")


def main(argv) -> None:
    del argv
    if not FLAGS.output_dir:
        raise UserError("--output_dir: missing; give the folder to write into")
    write_dataset(FLAGS.output_dir, split=FLAGS.split, num_shards=FLAGS.num_shards,
                  videos_per_shard=FLAGS.videos_per_shard, num_classes=FLAGS.num_classes,
                  seed=FLAGS.seed, frame_level=FLAGS.frame_level,
                  video_level=FLAGS.video_level, min_frames=FLAGS.min_frames,
                  max_frames=FLAGS.max_frames, with_labels=FLAGS.with_labels,
                  year=FLAGS.year)


if __name__ == "__main__":
    define_flags()
    run_main(main)
