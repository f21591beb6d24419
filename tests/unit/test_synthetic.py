"""Tests of training/synthetic.py: determinism, label skew, ids, values, learnability."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_ROOT
from models.tf_compat import tf
from training import synthetic
from training.cli import UserError


def _records(path):
    return list(tf.compat.v1.io.tf_record_iterator(str(path)))


def _frame_videos(paths):
    """Independent decode: list of (id, labels, rgb uint8 [T,1024], audio uint8 [T,128])."""
    videos = []
    for path in paths:
        for record in _records(path):
            example = tf.train.SequenceExample.FromString(record)
            lists = example.feature_lists.feature_list
            rgb = np.array([np.frombuffer(f.bytes_list.value[0], np.uint8)
                            for f in lists["rgb"].feature], np.uint8).reshape(-1, 1024)
            audio = np.array([np.frombuffer(f.bytes_list.value[0], np.uint8)
                              for f in lists["audio"].feature], np.uint8).reshape(-1, 128)
            videos.append((example.context.feature["id"].bytes_list.value[0].decode(),
                           list(example.context.feature["labels"].int64_list.value), rgb, audio))
    return videos


def _video_level(paths):
    """Independent decode: ids, labels lists, features [N, 1152]."""
    ids, labels, features = [], [], []
    for path in paths:
        for record in _records(path):
            feature = tf.train.Example.FromString(record).features.feature
            ids.append(feature["id"].bytes_list.value[0].decode())
            labels.append(list(feature["labels"].int64_list.value))
            features.append(np.concatenate([feature["mean_rgb"].float_list.value,
                                            feature["mean_audio"].float_list.value]))
    return ids, labels, np.array(features, np.float64)


def test_paths_and_determinism(tmp_path, capsys):
    kwargs = dict(num_shards=2, videos_per_shard=4, num_classes=30, min_frames=2, max_frames=6)
    a = synthetic.write_dataset(str(tmp_path / "a"), seed=7, **kwargs)
    b = synthetic.write_dataset(str(tmp_path / "b"), seed=7, **kwargs)
    c = synthetic.write_dataset(str(tmp_path / "c"), seed=8, **kwargs)
    assert a["frame"] == [str(tmp_path / "a/frame/train00.tfrecord"),
                          str(tmp_path / "a/frame/train01.tfrecord")]
    assert a["video"] == [str(tmp_path / "a/video/train00.tfrecord"),
                          str(tmp_path / "a/video/train01.tfrecord")]
    for level in ("frame", "video"):
        for pa, pb, pc in zip(a[level], b[level], c[level]):
            assert Path(pa).read_bytes() == Path(pb).read_bytes()
            assert Path(pa).read_bytes() != Path(pc).read_bytes()
    # No temporary files left behind; one progress line per shard.
    assert sorted(os.listdir(tmp_path / "a/frame")) == ["train00.tfrecord", "train01.tfrecord"]
    lines = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith("synthetic:")]
    assert len(lines) == 6


def test_labels_skew_count_and_ids(tmp_path):
    out = synthetic.write_dataset(str(tmp_path), num_shards=2, videos_per_shard=200,
                                  num_classes=50, seed=1, frame_level=False,
                                  min_frames=1, max_frames=2)
    ids, labels, _ = _video_level(out["video"])
    assert len(ids) == 400 and len(set(ids)) == 400
    for i, vid in enumerate(ids):
        assert re.fullmatch(r"[0-9A-Za-z]{2}0[01]", vid)
        assert vid.endswith("00" if i < 200 else "01")
    counts_per_video = np.array([len(video_labels) for video_labels in labels])
    assert 2.0 <= counts_per_video.mean() <= 4.0
    assert counts_per_video.min() >= 1 and counts_per_video.max() <= 8
    assert all(len(set(l)) == len(l) for l in labels)  # noqa: E741
    counts = np.bincount(np.concatenate(labels), minlength=50)
    assert counts.max() >= 5 * np.median(counts)
    assert counts.argmax() == 0


def test_ids_do_not_collide_across_splits(tmp_path):
    ids = []
    for split in ("train", "validate", "test"):
        out = synthetic.write_dataset(str(tmp_path), split=split, num_shards=2,
                                      videos_per_shard=50, num_classes=10, frame_level=False,
                                      min_frames=1, max_frames=1)
        ids += _video_level(out["video"])[0]
    assert len(ids) == 300 and len(set(ids)) == 300


def test_frames_range_and_video_means(tmp_path):
    out = synthetic.write_dataset(str(tmp_path), num_shards=1, videos_per_shard=8,
                                  num_classes=40, seed=2, min_frames=5, max_frames=25)
    videos = _frame_videos(out["frame"])
    ids, labels, features = _video_level(out["video"])
    assert [v[0] for v in videos] == ids
    assert [v[1] for v in videos] == labels
    lengths = [len(v[2]) for v in videos]
    assert min(lengths) >= 5 and max(lengths) <= 25 and len(set(lengths)) > 1
    scalar, bias = 4.0 / 255.0, 4.0 / 512.0 - 2.0
    for (_, _, rgb, audio), row in zip(videos, features):
        assert len(audio) == len(rgb)
        expected = np.concatenate([(rgb * scalar + bias).mean(axis=0),
                                   (audio * scalar + bias).mean(axis=0)])
        np.testing.assert_allclose(row, expected, atol=1e-5)
    # Values mostly inside the dequantisation range: few saturated bytes.
    all_q = np.concatenate([v[2].ravel() for v in videos])
    assert np.mean((all_q == 0) | (all_q == 255)) < 0.01


def test_without_labels(tmp_path):
    out = synthetic.write_dataset(str(tmp_path), split="test", num_shards=1,
                                  videos_per_shard=5, num_classes=20, with_labels=False,
                                  min_frames=1, max_frames=3)
    assert out["frame"][0].endswith("frame/test00.tfrecord")
    assert all(v[1] == [] for v in _frame_videos(out["frame"]))
    for record in _records(out["video"][0]):
        feature = tf.train.Example.FromString(record).features.feature
        assert "labels" in feature and list(feature["labels"].int64_list.value) == []


def test_prototypes_shared_across_splits_and_learnable(tmp_path):
    kwargs = dict(num_classes=20, seed=11, frame_level=False, min_frames=5, max_frames=20)
    train = synthetic.write_dataset(str(tmp_path), split="train", num_shards=2,
                                    videos_per_shard=150, **kwargs)
    valid = synthetic.write_dataset(str(tmp_path), split="validate", num_shards=1,
                                    videos_per_shard=150, **kwargs)
    _, train_labels, x_train = _video_level(train["video"])
    _, valid_labels, x_valid = _video_level(valid["video"])
    y_train = np.zeros((len(train_labels), 20))
    for i, labels in enumerate(train_labels):
        y_train[i, labels] = 1.0
    # Least-squares linear classifier on the video-level means.
    design = np.hstack([x_train, np.ones((len(x_train), 1))])
    weights, *_ = np.linalg.lstsq(design, y_train, rcond=None)
    scores = np.hstack([x_valid, np.ones((len(x_valid), 1))]) @ weights
    top1 = scores.argmax(axis=1)
    hit1 = np.mean([top1[i] in labels for i, labels in enumerate(valid_labels)])
    prior = y_train.sum(axis=0).argmax()
    baseline = np.mean([prior in labels for labels in valid_labels])
    assert hit1 >= 0.9
    assert hit1 >= baseline + 0.25


def test_invalid_arguments(tmp_path):
    with pytest.raises(UserError, match="--num_shards"):
        synthetic.write_dataset(str(tmp_path), num_shards=101)
    with pytest.raises(UserError, match="--min_frames/--max_frames"):
        synthetic.write_dataset(str(tmp_path), min_frames=10, max_frames=5)
    with pytest.raises(UserError, match="--split"):
        synthetic.write_dataset(str(tmp_path), split="../x")


@pytest.mark.slow
def test_command_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    ok = subprocess.run(
        [sys.executable, "-m", "training.synthetic", f"--output_dir={tmp_path}",
         "--split=validate", "--num_shards=1", "--videos_per_shard=3", "--num_classes=10",
         "--max_frames=4", "--min_frames=2", "--frame_level=false"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "validate shard 1/1" in ok.stdout
    assert os.listdir(tmp_path / "video") == ["validate00.tfrecord"]
    assert not (tmp_path / "frame").exists()
    bad = subprocess.run(
        [sys.executable, "-m", "training.synthetic", f"--output_dir={tmp_path}",
         "--num_shards=0"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: --num_shards")
