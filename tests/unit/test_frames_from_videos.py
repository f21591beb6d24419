"""training.frames_from_videos: frame-level records around the real sample's means."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import real_sample_dir, run_module
from models.tf_compat import tf
from training import frames_from_videos, synthetic

SAMPLE = real_sample_dir()
pytestmark = pytest.mark.skipif(SAMPLE is None, reason="no ../shared/data/yt8m-2018-video-sample")


def frames_of(path):
    """{id: (labels, rgb [T, 1024] float, audio [T, 128] float)} of a frame-level file."""
    out = {}
    for record in tf.io.tf_record_iterator(str(path)):
        example = tf.train.SequenceExample.FromString(record)
        lists = example.feature_lists.feature_list
        rgb = np.stack([np.frombuffer(f.bytes_list.value[0], np.uint8)
                        for f in lists["rgb"].feature])
        audio = np.stack([np.frombuffer(f.bytes_list.value[0], np.uint8)
                          for f in lists["audio"].feature])
        video_id = example.context.feature["id"].bytes_list.value[0]
        out[video_id] = (list(example.context.feature["labels"].int64_list.value),
                         synthetic.dequantize_np(rgb), synthetic.dequantize_np(audio))
    return out


def test_frames_keep_ids_labels_and_the_real_means(tmp_path):
    """Mutation: not removing the noise's own mean (smooth_noise) moves the frame
    means away from the real ones by ~0.1 and fails the 0.02 bound."""
    source = SAMPLE / "validate3227.tfrecord"
    written = frames_from_videos.write_frames(str(source), str(tmp_path), "train", seed=3,
                                              min_frames=20, max_frames=40)
    assert [p.rsplit("/", 1)[1] for p in written] == ["train00.tfrecord"]
    derived = frames_of(written[0])
    real = list(frames_from_videos.read_videos(str(source)))
    assert len(derived) == len(real) == 262
    for video_id, labels, mean_rgb, mean_audio in real:
        got_labels, rgb, audio = derived[video_id]
        assert got_labels == labels and 20 <= rgb.shape[0] <= 40
        # Quantisation steps are 4/255; clipping at the range ends costs a little more.
        assert np.abs(rgb.mean(axis=0) - mean_rgb).mean() < 0.02
        assert np.abs(audio.mean(axis=0) - mean_audio).mean() < 0.02
        assert rgb.std(axis=0).mean() > 0.05      # the frames do vary
    again = frames_from_videos.write_frames(str(source), str(tmp_path / "again"), "train",
                                            seed=3, min_frames=20, max_frames=40)
    with open(written[0], "rb") as first, open(again[0], "rb") as second:
        assert first.read() == second.read()


@pytest.mark.slow
def test_cli_test_split_and_bad_input(tmp_path):
    ok = run_module("training.frames_from_videos",
                    f"--input_pattern={SAMPLE / 'validate3227.tfrecord'}",
                    f"--output_dir={tmp_path}", "--split=test", "--with_labels=false",
                    "--min_frames=5", "--max_frames=5")
    assert ok.returncode == 0, ok.stderr
    derived = frames_of(tmp_path / "frame" / "test00.tfrecord")
    assert all(labels == [] and rgb.shape == (5, 1024) for labels, rgb, _ in derived.values())
    frame_level = tmp_path / "frame" / "test00.tfrecord"
    bad = run_module("training.frames_from_videos", f"--input_pattern={frame_level}",
                     f"--output_dir={tmp_path / 'x'}", check=False)
    assert bad.returncode == 2
    assert f"{frame_level}: record 0 has 0 mean_rgb and 0 mean_audio values" in bad.stderr
    bad = run_module("training.frames_from_videos",
                     f"--input_pattern={SAMPLE / 'validate3227.tfrecord'}",
                     f"--output_dir={tmp_path / 'y'}", "--smoothness=1", check=False)
    assert bad.returncode == 2 and "--smoothness: must be in [0, 1), got 1.0" in bad.stderr
