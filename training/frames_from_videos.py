"""Frame-level records derived from real video-level YouTube-8M records:

python -m training.frames_from_videos --output_dir=DIR --split=train \
    --input_pattern=SAMPLE_DIR/validate2L.tfrecord \
    [--with_labels=false] [--min_frames=30 --max_frames=120]

Each input Example (``id``, ``labels``, ``mean_rgb`` 1024, ``mean_audio`` 128)
becomes a SequenceExample with the same id and labels whose frames vary
around the video's real mean: frame t is ``mean + scale * e_t``, where e is a
smooth (AR(1), correlation --smoothness between neighbouring frames) noise
with its own mean over the video removed, so the mean of the frames is the
real mean up to the dataset's 8-bit quantisation (docs/formats.md). scale is,
per dimension, --variation times the spread of the real means across the
input videos, less near the ends of the 8-bit range (so that clipping does
not move the mean). The label structure (3862 classes, their skew and
co-occurrence) and the class signal in the means are the real data's; only
the motion within a video is made up. The number of frames and the noise of
a video depend on its id and --seed only: the same input gives byte-identical
files. Input file i of the sorted pattern is written to
``<output_dir>/frame/<split>NN.tfrecord`` with NN = i (the real records carry
no frames, so frame-level models can run on real labels).
"""
from __future__ import annotations

import os
import zlib
from typing import Iterator, List, Tuple

import numpy as np
from absl import flags

from models.tf_compat import tf
from training import flags as shared_flags
from training import paths, readers, synthetic
from training.cli import UserError, first_line, run_main

FLAGS = flags.FLAGS


def define_flags() -> None:
    shared_flags.define_shared_flags({
        "output_dir": (None, "Folder to write frame/<split>NN.tfrecord into.", paths.OUT_DIR),
        "seed": (0, "The frame noise and counts depend on it and on each id.")})
    define = shared_flags.define
    define(flags.DEFINE_string, "input_pattern", "", "Video-level TFRecords (real YT8M).",
           path=paths.IN_PATTERN)
    define(flags.DEFINE_string, "split", "train", "Split name in the output file names.")
    define(flags.DEFINE_boolean, "with_labels", True, "Keep the labels (false: empty lists, "
           "like the test split).")
    define(flags.DEFINE_integer, "min_frames", 30, "Fewest frames per video.")
    define(flags.DEFINE_integer, "max_frames", 120, "Most frames per video.")
    define(flags.DEFINE_float, "variation", 1.0, "Frame spread around the mean, in units of "
           "the spread of the real means across videos.")
    define(flags.DEFINE_float, "smoothness", 0.9, "Correlation of neighbouring frames' noise.")


Video = Tuple[bytes, List[int], np.ndarray, np.ndarray]   # id, labels, mean_rgb, mean_audio


def read_videos(path: str) -> Iterator[Video]:
    """(id, labels, mean_rgb [1024], mean_audio [128]) of each record of a
    video-level file; a record of another kind is a UserError naming the file."""
    try:
        records = list(tf.io.tf_record_iterator(path))
    except tf.errors.OpError as err:
        raise UserError(f"--input_pattern: {path}: cannot read its records "
                        f"({first_line(err)})") from None
    for index, record in enumerate(records):
        example = tf.train.Example.FromString(record)
        feature = example.features.feature
        rgb, audio = feature["mean_rgb"].float_list.value, feature["mean_audio"].float_list.value
        if len(rgb) != synthetic.RGB_SIZE or len(audio) != synthetic.AUDIO_SIZE:
            raise UserError(f"--input_pattern: {path}: record {index} has {len(rgb)} mean_rgb "
                            f"and {len(audio)} mean_audio values, not {synthetic.RGB_SIZE} and "
                            f"{synthetic.AUDIO_SIZE} (video-level YT8M records expected)")
        yield (feature["id"].bytes_list.value[0], list(feature["labels"].int64_list.value),
               np.asarray(rgb, np.float32), np.asarray(audio, np.float32))


def smooth_noise(rng: np.random.Generator, frames: int, size: int, smoothness: float
                 ) -> np.ndarray:
    """[frames, size] unit-variance AR(1) noise with its mean over frames removed."""
    noise = rng.standard_normal((frames, size)).astype(np.float32)
    innovation = np.sqrt(1.0 - smoothness ** 2)
    for t in range(1, frames):
        noise[t] = smoothness * noise[t - 1] + innovation * noise[t]
    return noise - noise.mean(axis=0, keepdims=True)


def video_frames(video: Video, scales: Tuple[np.ndarray, np.ndarray], seed: int,
                 min_frames: int, max_frames: int, smoothness: float
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """Quantised frames (rgb uint8 [T, 1024], audio uint8 [T, 128]) of one video."""
    video_id, _, mean_rgb, mean_audio = video
    rng = np.random.default_rng([seed, zlib.crc32(video_id)])
    frames = int(rng.integers(min_frames, max_frames + 1))
    low, high = synthetic.dequantize_np(np.array([0, 255], np.uint8))
    out = []
    for mean, scale in ((mean_rgb, scales[0]), (mean_audio, scales[1])):
        noise = smooth_noise(rng, frames, mean.shape[0], smoothness)
        # Near the ends of the 8-bit range the spread shrinks (3 standard
        # deviations of room), or clipping would move the frames' mean.
        room = np.clip(np.minimum(mean - low, high - mean), 0.0, None) / 3.0
        out.append(synthetic.quantize(mean[None, :] + np.minimum(scale, room)[None, :] * noise))
    return out[0], out[1]


def _check(min_frames: int, max_frames: int, variation: float, smoothness: float) -> None:
    if min_frames < 1 or max_frames < min_frames:
        raise UserError(f"--min_frames/--max_frames: need 1 <= min_frames <= max_frames, got "
                        f"{min_frames} and {max_frames}")
    if variation < 0:
        raise UserError(f"--variation: must be 0 or more, got {variation}")
    if not 0 <= smoothness < 1:
        raise UserError(f"--smoothness: must be in [0, 1), got {smoothness}")


def write_frames(input_pattern: str, output_dir: str, split: str = "train", seed: int = 0,
                 with_labels: bool = True, min_frames: int = 30, max_frames: int = 120,
                 variation: float = 1.0, smoothness: float = 0.9) -> List[str]:
    """Writes one frame-level file per input file (module docstring); -> their paths."""
    _check(min_frames, max_frames, variation, smoothness)
    files = readers.resolve_files(input_pattern, "input_pattern")
    videos = [list(read_videos(path)) for path in files]
    every = [video for part in videos for video in part]
    if not every:
        raise UserError(f"--input_pattern={input_pattern}: the files hold no records")
    scales = tuple(variation * np.std(np.stack([video[i] for video in every]), axis=0)
                   for i in (2, 3))
    os.makedirs(os.path.join(output_dir, "frame"), exist_ok=True)
    written = []
    for index, part in enumerate(videos):
        path = os.path.join(output_dir, "frame", f"{split}{index:02d}.tfrecord")
        records = (synthetic.sequence_example(
            video[0], video[1] if with_labels else [],
            *video_frames(video, scales, seed, min_frames, max_frames, smoothness))
            for video in part)
        synthetic.write_records(path, records)
        print(f"frames_from_videos: {files[index]} -> {path} ({len(part)} videos)", flush=True)
        written.append(path)
    return written


def main(argv) -> None:
    del argv
    shared_flags.require(input_pattern=FLAGS.input_pattern, output_dir=FLAGS.output_dir)
    write_frames(FLAGS.input_pattern, FLAGS.output_dir, FLAGS.split, FLAGS.seed,
                 FLAGS.with_labels, FLAGS.min_frames, FLAGS.max_frames, FLAGS.variation,
                 FLAGS.smoothness)


if __name__ == "__main__":
    define_flags()
    run_main(main)
