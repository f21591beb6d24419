"""Tests of training/readers/ (the package): parsing, dequantisation, padding, datasets, errors."""
from __future__ import annotations

import collections

import numpy as np
import pytest

from conftest import dequantize, real_sample_dir
from models.tf_compat import tf
from support.records import every_batch
from training import readers, synthetic
from training.cli import UserError, first_line

BIAS = 4.0 / 512.0 - 2.0
SCALAR = 4.0 / 255.0


def _parse(reader, records):
    """Runs reader.parse on a list of serialized records in a fresh graph."""
    with tf.Graph().as_default():
        serialized = tf.placeholder(tf.string, [None])
        out = reader.parse(serialized)
        with tf.Session() as sess:
            return sess.run(out, {serialized: records})


def _run_dataset(dataset):
    """Returns every batch of a dataset built in the current default graph."""
    return every_batch(tf.data.make_one_shot_iterator(dataset).get_next())


def _collect(reader, pattern, batch_size, training, **kwargs):
    with tf.Graph().as_default():
        dataset = readers.make_dataset(reader, pattern, batch_size, training, **kwargs)
        return _run_dataset(dataset)


def _ids(batches):
    return [i.decode() for b in batches for i in b["id"]]


def _sequence_example(video_id, labels, rgb_rows, audio_rows):
    example = tf.train.SequenceExample()
    example.context.feature["id"].bytes_list.value.append(video_id)
    example.context.feature["labels"].int64_list.SetInParent()
    example.context.feature["labels"].int64_list.value.extend(labels)
    for name, rows in (("rgb", rgb_rows), ("audio", audio_rows)):
        feature_list = example.feature_lists.feature_list[name]
        for row in rows:
            feature_list.feature.add().bytes_list.value.append(bytes(row))
    return example.SerializeToString()


def _numpy_decode(record, max_frames=300):
    """Independent decode of a frame-level record with protobuf + numpy."""
    example = tf.train.SequenceExample.FromString(record)
    parts = []
    for name, size in (("rgb", 1024), ("audio", 128)):
        rows = [np.frombuffer(f.bytes_list.value[0], np.uint8)
                for f in example.feature_lists.feature_list[name].feature]
        q = np.array(rows, np.float64).reshape(-1, size)[:max_frames]
        x = np.zeros([max_frames, size])
        x[:len(q)] = q * SCALAR + BIAS
        parts.append(x)
    frames = len(example.feature_lists.feature_list["rgb"].feature)
    return (example.context.feature["id"].bytes_list.value[0],
            list(example.context.feature["labels"].int64_list.value),
            np.concatenate(parts, axis=1), min(frames, max_frames))


@pytest.fixture(scope="module")
def synthetic_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    frame = synthetic.write_dataset(str(root / "f"), num_shards=1, videos_per_shard=6,
                                    num_classes=50, seed=3, video_level=False,
                                    min_frames=1, max_frames=40)
    video = synthetic.write_dataset(str(root / "v"), num_shards=3, videos_per_shard=5,
                                    num_classes=50, seed=4, frame_level=False,
                                    min_frames=1, max_frames=3)
    return {"frame": frame["frame"], "video": video["video"], "video_dir": root / "v/video"}


def test_dequantize_endpoints():
    assert dequantize(0) == pytest.approx(-1.9921875, abs=1e-12)
    assert dequantize(255) == pytest.approx(2.0078125, abs=1e-12)
    with tf.Graph().as_default(), tf.Session() as sess:
        out = sess.run(dequantize(tf.constant([0, 128, 255], tf.uint8)))
    np.testing.assert_allclose(out, [-1.9921875, 128 * SCALAR + BIAS, 2.0078125], atol=1e-6)


def test_frame_reader_matches_numpy_decode(synthetic_dirs):
    records = list(tf.compat.v1.io.tf_record_iterator(synthetic_dirs["frame"][0]))
    reader = readers.FrameReader(num_classes=50)
    out = _parse(reader, records)
    assert out["features"].shape == (6, 300, 1152)
    assert out["features"].dtype == np.float32
    assert out["labels"].shape == (6, 50)
    assert out["num_frames"].dtype == np.int32
    for i, record in enumerate(records):
        vid, labels, matrix, frames = _numpy_decode(record)
        assert out["id"][i] == vid
        assert out["num_frames"][i] == frames
        expected = np.zeros(50, np.float32)
        expected[labels] = 1.0
        np.testing.assert_array_equal(out["labels"][i], expected)
        np.testing.assert_allclose(out["features"][i], matrix, atol=1e-6)
        # Padding is appended after dequantisation: exact zeros.
        assert np.all(out["features"][i, frames:] == 0.0)
        assert np.all(out["features"][i, :frames] != 0.0)


def test_frame_reader_static_shapes():
    reader = readers.get_reader(True, "rgb,audio", "1024,128", 3862)
    with tf.Graph().as_default():
        out = reader.parse(tf.placeholder(tf.string, [None]))
        assert out["features"].shape.as_list() == [None, 300, 1152]
        assert out["labels"].shape.as_list() == [None, 3862]
        assert out["num_frames"].shape.as_list() == [None]
        assert out["id"].shape.as_list() == [None]
        out = reader.parse(tf.placeholder(tf.string, [7]))
        assert out["features"].shape.as_list() == [7, 300, 1152]
    video = readers.get_reader(False, ["mean_rgb", "mean_audio"], [1024, 128], 10)
    with tf.Graph().as_default():
        out = video.parse(tf.placeholder(tf.string, [None]))
        assert out["features"].shape.as_list() == [None, 1152]
        assert out["labels"].shape.as_list() == [None, 10]


def test_frame_reader_truncation_zero_frames_and_empty_labels():
    rng = np.random.default_rng(0)
    long_rgb = rng.integers(0, 256, size=(305, 1024), dtype=np.uint8)
    long_audio = rng.integers(0, 256, size=(305, 128), dtype=np.uint8)
    records = [
        _sequence_example(b"long", [3, 3, 7], long_rgb, long_audio),  # duplicate label 3
        _sequence_example(b"none", [], [], []),
        _sequence_example(b"tiny", [0], long_rgb[:2], long_audio[:2]),
    ]
    out = _parse(readers.FrameReader(num_classes=10), records)
    assert list(out["id"]) == [b"long", b"none", b"tiny"]
    assert list(out["num_frames"]) == [300, 0, 2]
    # Truncated to the first 300 frames.
    expected = np.concatenate([long_rgb[:300], long_audio[:300]], axis=1) * SCALAR + BIAS
    np.testing.assert_allclose(out["features"][0], expected, atol=1e-6)
    assert np.all(out["features"][1] == 0.0)
    assert np.all(out["features"][2, 2:] == 0.0)
    np.testing.assert_array_equal(out["labels"][0], np.eye(10)[3] + np.eye(10)[7])
    assert np.all(out["labels"][1] == 0.0)


def test_frame_reader_custom_max_frames_and_single_feature():
    rows = np.full((9, 4), 255, np.uint8)
    record = _sequence_example(b"abcd", [1], rows, np.zeros((9, 2), np.uint8))
    out = _parse(readers.FrameReader(num_classes=2, feature_names=["rgb"], feature_sizes=[4],
                                     max_frames=5), [record])
    assert out["features"].shape == (1, 5, 4)
    assert out["num_frames"][0] == 5
    np.testing.assert_allclose(out["features"], 2.0078125, atol=1e-6)


def test_video_reader_on_real_records():
    sample = real_sample_dir()
    if sample is None:
        pytest.skip("the real 2018 sample (../shared/data/yt8m-2018-video-sample) is absent")
    path = sample / "validate2L.tfrecord"
    records = list(tf.compat.v1.io.tf_record_iterator(str(path)))
    assert len(records) > 100
    out = _parse(readers.VideoReader(), records)
    assert out["features"].shape == (len(records), 1152)
    assert np.all(out["num_frames"] == 1)
    for i, record in enumerate(records):
        example = tf.train.Example.FromString(record)
        feature = example.features.feature
        vid = feature["id"].bytes_list.value[0]
        assert out["id"][i] == vid
        assert vid.decode().endswith("2L")
        labels = list(feature["labels"].int64_list.value)
        expected = np.zeros(3862, np.float32)
        expected[labels] = 1.0
        np.testing.assert_array_equal(out["labels"][i], expected)
        np.testing.assert_array_equal(out["features"][i, :1024],
                                      np.array(feature["mean_rgb"].float_list.value, np.float32))
        np.testing.assert_array_equal(out["features"][i, 1024:],
                                      np.array(feature["mean_audio"].float_list.value, np.float32))
    assert out["features"].min() >= -1.9921875 - 1e-6
    assert out["features"].max() <= 2.0078125 + 1e-6


@pytest.mark.slow
def test_eval_dataset_deterministic_complete_keeps_last_batch(synthetic_dirs):
    pattern = str(synthetic_dirs["video_dir"] / "*.tfrecord")
    reader = readers.VideoReader(num_classes=50)
    first = _collect(reader, pattern, 4, training=False)
    second = _collect(reader, pattern, 4, training=False)
    assert [len(b["id"]) for b in first] == [4, 4, 4, 3]
    assert _ids(first) == _ids(second)
    assert len(set(_ids(first))) == 15
    two = _collect(reader, pattern, 4, training=False, num_epochs=2)
    assert set(collections.Counter(_ids(two)).values()) == {2}
    assert len(_ids(two)) == 30
    assert two[0]["features"].shape == (4, 1152)


@pytest.mark.slow
def test_training_dataset_shuffles_by_seed(synthetic_dirs):
    pattern = str(synthetic_dirs["video_dir"] / "*.tfrecord")
    reader = readers.VideoReader(num_classes=50)
    eval_ids = _ids(_collect(reader, pattern, 4, training=False))
    a = _ids(_collect(reader, pattern, 4, training=True, seed=1))
    a_again = _ids(_collect(reader, pattern, 4, training=True, seed=1))
    b = _ids(_collect(reader, pattern, 4, training=True, seed=2))
    assert a == a_again
    assert a != b
    assert sorted(a) == sorted(b) == sorted(eval_ids)
    twice = _ids(_collect(reader, pattern, 4, training=True, seed=5, num_epochs=2))
    assert set(collections.Counter(twice).values()) == {2}
    # Epochs are reshuffled: the second pass is not a copy of the first.
    assert twice[:15] != twice[15:]


# (Dataset.options() in graph mode warns that it reads the Python-side record.)
@pytest.mark.filterwarnings("ignore:To make it possible to preserve tf.data options")
def test_datasets_run_without_the_autotune_thread(synthetic_dirs):
    """Both pipelines switch tf.data's autotuning thread off: destroying an
    iterator (closing its session) waits for that thread's sleep, up to a
    minute per process. Mutation: dropping the with_options fails both."""
    pattern = str(synthetic_dirs["video_dir"] / "*.tfrecord")
    reader = readers.VideoReader(num_classes=50)
    with tf.Graph().as_default():
        files = tf.constant([pattern.replace("*", "a")])
        for dataset in (readers.make_dataset(reader, pattern, 4, training=True, seed=1),
                        readers.make_dataset(reader, pattern, 4, training=False),
                        readers.make_file_dataset(reader, files, 4)):
            assert dataset.options().autotune.enabled is False


def test_parse_is_traced_without_autograph(synthetic_dirs):
    """reader.parse is traced as written (graph-mode code), not converted by
    AutoGraph, whose conversion cost about half a second per process: a
    Python `if` on a tensor in a parse is the graph-mode error. Mutation:
    mapping reader.parse itself (AutoGraph turns the `if` into a tf.cond)
    builds both datasets without an error."""

    class BranchingReader(readers.VideoReader):
        def parse(self, serialized):
            parsed = super().parse(serialized)
            if tf.size(parsed["id"]) > 0:   # a tensor as a Python bool
                parsed["num_frames"] = parsed["num_frames"] + 0
            return parsed

    pattern = str(synthetic_dirs["video_dir"] / "*.tfrecord")
    reader = BranchingReader(num_classes=50)
    with tf.Graph().as_default():
        with pytest.raises(TypeError, match="tf.Tensor"):
            readers.make_dataset(reader, pattern, 4, training=False)
        with pytest.raises(TypeError, match="tf.Tensor"):
            readers.make_file_dataset(reader, tf.constant([pattern.replace("*", "a")]), 4)


def test_resolve_files_patterns_and_missing(synthetic_dirs, tmp_path):
    video_dir = synthetic_dirs["video_dir"]
    files = readers.resolve_files(f"{video_dir}/train01.tfrecord,{video_dir}/train0*.tfrecord")
    assert files == sorted(str(p) for p in video_dir.glob("train0*.tfrecord"))
    with pytest.raises(UserError, match=r"--eval_data_pattern: no files match"):
        readers.make_dataset(readers.VideoReader(), str(tmp_path / "nothing*.tfrecord"), 4,
                             training=False, flag_name="eval_data_pattern")
    with pytest.raises(UserError, match=r"--data_pattern: no files match '.*missing"):
        readers.resolve_files(f"{video_dir}/train00.tfrecord,{tmp_path}/missing")


def test_get_reader_flag_strings_and_mismatch():
    reader = readers.get_reader(True, "rgb,audio", "1024,128", 3862)
    assert isinstance(reader, readers.FrameReader)
    assert reader.feature_names == ["rgb", "audio"] and reader.feature_sizes == [1024, 128]
    video = readers.get_reader(False, "mean_rgb", "1024", 5)
    assert isinstance(video, readers.VideoReader) and video.feature_size == 1024
    with pytest.raises(UserError, match=r"--feature_names/--feature_sizes"):
        readers.get_reader(True, "rgb,audio", "1024", 3862)
    with pytest.raises(UserError, match=r"--feature_sizes"):
        readers.get_reader(False, "mean_rgb", "big", 3862)


def test_label_out_of_range_fails_naming_labels():
    record = _sequence_example(b"bad0", [2, 10], np.zeros((1, 1024), np.uint8),
                               np.zeros((1, 128), np.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"labels.*num_classes \(10\)"):
        _parse(readers.FrameReader(num_classes=10), [record])


def test_wrong_frame_byte_size_fails_naming_feature():
    record = _sequence_example(b"bad1", [1], np.zeros((2, 1024), np.uint8),
                               np.zeros((2, 100), np.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"feature audio: .*size 128"):
        _parse(readers.FrameReader(num_classes=10), [record])


def test_wrong_video_feature_size_fails_naming_feature():
    example = tf.train.Example()
    example.features.feature["id"].bytes_list.value.append(b"bad2")
    example.features.feature["labels"].int64_list.value.append(1)
    example.features.feature["mean_rgb"].float_list.value.extend([0.5] * 1000)
    example.features.feature["mean_audio"].float_list.value.extend([0.5] * 128)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"feature mean_rgb: .*size 1024"):
        _parse(readers.VideoReader(num_classes=10), [example.SerializeToString()])


def test_data_error_message_is_one_line():
    record = _sequence_example(b"bad3", [99], np.zeros((1, 1024), np.uint8),
                               np.zeros((1, 128), np.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        _parse(readers.FrameReader(num_classes=10), [record])
    message = first_line(info.value)
    assert "\n" not in message
    assert message.startswith("labels: a label id is >= num_classes (10)")
