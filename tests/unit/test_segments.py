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
        # (A class outside the video's labels is a confuser, always rated 0.)
        video_labels = set(context["labels"].int64_list.value)
        assert all(c in video_labels or r == 0 for c, r in zip(labels, scores))
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


# ---------------------------------------------------------------------------
# Every segment of the test split (the 2019 starter's get_segments)


def starter_get_segments(video_matrix, num_frames, segment_size):
    """The 2019 starter's inference.get_segments (google/youtube-8m HEAD),
    verbatim but for names: video_matrix [B, max_frames, D] dequantised and
    zero-padded, num_frames [B] -> segment frames [S, segment_size, D],
    their num_frames, video rows and start times."""
    batch, max_frame, dim = video_matrix.shape
    padded_sizes = (num_frames + segment_size - 1) // segment_size * segment_size
    mask = 0 < (padded_sizes[:, None] - np.arange(0, max_frame)[None, :])
    frames = video_matrix.reshape((-1, dim))[mask.reshape(-1)].reshape((-1, segment_size, dim))
    starts = np.arange(0, max_frame, segment_size)
    remaining = (num_frames[:, None] - starts).reshape(-1)
    valid = remaining > 0
    lengths = remaining[valid]
    lengths[lengths > segment_size] = segment_size
    max_segments = (max_frame + segment_size - 1) // segment_size
    videos = np.tile(np.arange(batch)[:, None], [1, max_segments]).reshape(-1)[valid]
    return frames, lengths, videos, np.tile(starts, batch)[valid]


def _unrated_records(lengths, seed=0):
    """Test-split records (no labels, no segment lists) of these frame counts."""
    rng = np.random.default_rng(seed)
    return [tf.train.SequenceExample.FromString(synthetic.sequence_example(
        f"v{i:03d}".encode(), [], rng.integers(0, 256, (n, 1024), dtype=np.uint8),
        rng.integers(0, 256, (n, 128), dtype=np.uint8))) for i, n in enumerate(lengths)]


@pytest.mark.parametrize("padded", [False, True])
def test_every_segment_mode_cuts_videos_as_the_starter(padded):
    """Start times 0, 5, ... below the frame count, the last segment shorter
    (its remaining frames, zeros after), frame counts capped at max_frames
    (the 33-frame video is read as 30), exactly as the starter's get_segments.

    Mutation tried: num_frames of every segment set to segment_size (the
    listed mode's) -> the short last segments' counts differed."""
    lengths = [1, 5, 7, 12, 20, 33]
    records = _unrated_records(lengths)
    reader = segment_readers.SegmentReader(num_classes=NUM_CLASSES, max_frames=30,
                                           rated=False, positions="every", padded=padded)
    out = _parse(records, reader)
    matrix = np.zeros([len(records), 30, 1152], np.float32)
    for row, ex in enumerate(records):
        joined = np.concatenate([_frames(ex, "rgb"), _frames(ex, "audio")], axis=1)[:30]
        matrix[row, :len(joined)] = synthetic.dequantize_np(joined)
    frames, counts, videos, starts = starter_get_segments(
        matrix, np.minimum(lengths, 30), 5)
    assert list(out["start_time"]) == list(starts)
    assert list(out["num_frames"]) == list(counts)
    assert list(out["id"]) == [records[v].context.feature["id"].bytes_list.value[0]
                               for v in videos]
    assert out["features"].shape[1] == (30 if padded else 5)
    np.testing.assert_allclose(out["features"][:, :5], frames, rtol=0, atol=1e-6)
    assert not out["features"][:, 5:].any() and (out["labels"] == -1).all()


def test_skip_unrated_positions_drops_the_first_6_and_last_2():
    """Of a video's ceil(frames / 5) positions only 6 .. count - 3 are kept,
    in both modes (listed: a listed start time at an unrated position goes).

    Mutation tried: UNRATED_TAIL applied as count - 1 -> one more segment of
    each video kept and this failed."""
    lengths = [20, 41, 50, 52]     # 4, 9, 10 and 11 positions
    reader = segment_readers.SegmentReader(num_classes=NUM_CLASSES, rated=False,
                                           positions="every", skip_unrated=True)
    out = _parse(_unrated_records(lengths), reader)
    expected = [(f"v{i:03d}".encode(), 5 * k) for i, n in enumerate(lengths)
                for k in range(segment_readers.UNRATED_HEAD,
                               -(-n // 5) - segment_readers.UNRATED_TAIL)]
    assert list(zip(out["id"], out["start_time"])) == expected
    assert expected and all(n == 5 for n in out["num_frames"])
    listed = _unrated_records([52])
    listed[0].context.feature["segment_start_times"].int64_list.value.extend([0, 25, 30, 40, 45])
    reader = segment_readers.SegmentReader(num_classes=NUM_CLASSES, rated=False,
                                           skip_unrated=True)
    assert list(_parse(listed, reader)["start_time"]) == [30, 40]


def test_auto_positions_follow_the_records(segment_files, tmp_path):
    """auto: "listed" for records with segment_start_times, "every" for the
    test split's; an unknown mode is one line."""
    path = str(tmp_path / "test.tfrecord")
    synthetic.write_records(path, [ex.SerializeToString() for ex in _unrated_records([9])])
    assert segment_readers.resolve_positions("auto", segment_files) == "listed"
    assert segment_readers.resolve_positions("auto", [path]) == "every"
    assert segment_readers.resolve_positions("listed", [path]) == "listed"
    with pytest.raises(UserError, match="--segment_positions: must be one of"):
        segment_readers.resolve_positions("all", [path])
