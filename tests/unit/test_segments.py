"""2019 segment-rated records: synthetic writer, reader, its one-line errors."""
import numpy as np
import pytest

from models.tf_compat import tf
from training import segment_readers, synthetic, synthetic_segments
from training.cli import UserError, first_line

NUM_CLASSES = 12


@pytest.fixture(scope="module")
def segment_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("seg")
    return synthetic_segments.write_segment_dataset(str(out), videos_per_shard=6,
                                                    num_classes=NUM_CLASSES, seed=3)


def _records(paths):
    return [tf.train.SequenceExample.FromString(r)
            for p in paths for r in tf.io.tf_record_iterator(p)]


def _parse(records, reader=None):
    reader = reader or segment_readers.SegmentReader(num_classes=NUM_CLASSES)
    with tf.Graph().as_default():
        ph = tf.placeholder(tf.string, [None])
        out = reader.parse(ph)
        with tf.Session() as session:
            return session.run(out, {ph: [r.SerializeToString() for r in records]})


def _frames(example, name):
    rows = example.feature_lists.feature_list[name].feature
    return np.stack([np.frombuffer(f.bytes_list.value[0], np.uint8) for f in rows])


def test_synthetic_segment_records_follow_the_2019_format(segment_files, tmp_path):
    """Mutation tried: start times drawn as chosen*segment_size+1 -> the
    multiple-of-5 assertion failed."""
    again = synthetic_segments.write_segment_dataset(str(tmp_path), videos_per_shard=6,
                                                     num_classes=NUM_CLASSES, seed=3)
    assert open(again[0], "rb").read() == open(segment_files[0], "rb").read()
    for ex in _records(segment_files):
        context = ex.context.feature
        labels = list(context["segment_labels"].int64_list.value)
        starts = list(context["segment_start_times"].int64_list.value)
        scores = list(context["segment_scores"].float_list.value)
        assert len(labels) == len(starts) == len(scores) > 0
        assert all(s % 5 == 0 for s in starts) and set(scores) <= {0.0, 1.0}
        assert set(labels) <= set(context["labels"].int64_list.value)
        assert all(s + 5 <= len(ex.feature_lists.feature_list["rgb"].feature) for s in starts)


def test_synthetic_segment_signal_is_learnable(segment_files):
    """A segment rated 1 carries its class's prototype, one rated 0 does not.

    Mutation tried: skipping the frame replacement for score 0 -> the
    positive and negative similarities became equal and this failed."""
    rgb_protos, _ = synthetic.class_prototypes(NUM_CLASSES, 3)
    sims = {0.0: [], 1.0: []}
    for ex in _records(segment_files):
        rgb = synthetic.dequantize_np(_frames(ex, "rgb"))
        context = ex.context.feature
        for label, start, score in zip(context["segment_labels"].int64_list.value,
                                       context["segment_start_times"].int64_list.value,
                                       context["segment_scores"].float_list.value):
            sims[score].append(float(rgb[start:start + 5].mean(0) @ rgb_protos[label]))
    assert sims[0.0] and sims[1.0]
    assert np.mean(sims[1.0]) > np.mean(sims[0.0]) + 20 * 0.4 ** 2


def test_segment_reader_yields_each_rated_segment_frames(segment_files):
    """Mutation tried: rows offset by the video's start time without its row
    split (frames of the first video) -> the frame comparison failed."""
    records = _records(segment_files)
    out = _parse(records)
    expected = []
    for ex in records:
        rgb, audio = _frames(ex, "rgb"), _frames(ex, "audio")
        video = ex.context.feature["id"].bytes_list.value[0]
        for start in ex.context.feature["segment_start_times"].int64_list.value:
            joined = np.concatenate([rgb[start:start + 5], audio[start:start + 5]], axis=1)
            expected.append((video, start, synthetic.dequantize_np(joined)))
    assert len(out["id"]) == len(expected)
    assert out["features"].shape[1:] == (300, 1152)
    for i, (video, start, frames) in enumerate(expected):
        assert out["id"][i] == video and out["start_time"][i] == start
        np.testing.assert_allclose(out["features"][i, :5], frames, rtol=0, atol=1e-6)
        assert not out["features"][i, 5:].any() and out["num_frames"][i] == 5


def _broken(example, field, edit):
    ex = tf.train.SequenceExample()
    ex.CopyFrom(example)
    edit(ex.context.feature[field])
    return ex


@pytest.mark.parametrize("field,edit,message", [
    ("segment_scores", lambda f: f.float_list.value.append(1.0), "differ in length"),
    ("segment_start_times", lambda f: f.int64_list.value.__setitem__(0, 3),
     "not a multiple of the segment size 5"),
    ("segment_labels", lambda f: f.int64_list.value.__setitem__(0, NUM_CLASSES),
     f"outside 0..{NUM_CLASSES - 1}"),
    ("segment_start_times", lambda f: f.int64_list.value.__setitem__(0, 100000),
     "ends after the video's last frame"),
])
def test_segment_reader_refuses_bad_segment_lists_in_one_line(segment_files, field, edit,
                                                             message):
    """Mutation tried: dropping the label-range assert -> the out-of-range
    record was read without an error and this case failed."""
    bad = _broken(_records(segment_files)[0], field, edit)
    with pytest.raises(tf.errors.InvalidArgumentError) as err:
        _parse([bad])
    line = first_line(err.value)
    assert message in line and field in line.split(": ")[0] and "\n" not in line


def test_segment_reader_needs_a_frame_level_model():
    from training import readers
    with pytest.raises(UserError, match="frame-level model"):
        segment_readers.SegmentReader.like(readers.VideoReader(num_classes=3))
    with pytest.raises(UserError, match="--segment_size"):
        segment_readers.SegmentReader(num_classes=3, max_frames=4, segment_size=5)


def test_check_records_names_missing_segment_fields(tmp_path):
    """Video-level 2018 frame records are refused before any work."""
    from training import readers
    paths = synthetic.write_dataset(str(tmp_path), num_shards=1, videos_per_shard=2,
                                    num_classes=NUM_CLASSES, video_level=False)
    with pytest.raises(UserError, match="no segment_labels"):
        readers.check_records(paths["frame"], "eval_data_pattern",
                              segment_readers.SegmentReader(num_classes=NUM_CLASSES))


def test_unrated_reader_reads_start_times_only(segment_files, tmp_path):
    """A test-split record without labels and scores: the submission's reader
    (rated=False) yields its segments; the evaluation's refuses it first.

    Mutation tried: the rated checks kept in unrated mode -> "three lists
    differ in length" on these records and this failed."""
    from training import readers
    records = _records(segment_files)
    for ex in records:
        del ex.context.feature["segment_labels"]
        del ex.context.feature["segment_scores"]
    out = _parse(records, segment_readers.SegmentReader(num_classes=NUM_CLASSES, rated=False))
    starts = [s for ex in records
              for s in ex.context.feature["segment_start_times"].int64_list.value]
    assert list(out["start_time"]) == starts and (out["labels"] == -1).all()
    path = str(tmp_path / "unrated.tfrecord")
    synthetic.write_records(path, [ex.SerializeToString() for ex in records])
    with pytest.raises(UserError, match="no segment_labels"):
        readers.check_records([path], "eval_data_pattern",
                              segment_readers.SegmentReader(num_classes=NUM_CLASSES))
    readers.check_records([path], "input_data_pattern",
                          segment_readers.SegmentReader(num_classes=NUM_CLASSES, rated=False))
