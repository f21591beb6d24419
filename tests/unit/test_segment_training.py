"""What segment fine-tuning trains on: the loss (training.losses.
segment_cross_entropy) against numpy, the training reader of rated segments
(training.segment_readers.SegmentTrainingReader) and the rebatching of its
rows into full batches (training.train_graph.make_train_batch)."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import train_config
from models.tf_compat import tf
from support.records import every_batch
from training import losses, segment_readers, synthetic_segments, train_graph

NUM_CLASSES = 6
EPS = 1e-5


def numpy_segment_loss(p, rated_class, rating, video_labels, weight):
    """The documented loss, one segment at a time."""
    total = 0.0
    for s in range(len(p)):
        c, y = rated_class[s], rating[s]
        term = -(y * np.log(p[s, c] + EPS) + (1 - y) * np.log(1 - p[s, c] + EPS))
        for j in range(p.shape[1]):
            if j != c and not video_labels[s, j]:
                term += weight * -np.log(1 - p[s, j] + EPS)
        total += term
    return total / len(p)


def test_segment_loss_against_numpy():
    """A hand-made batch: a positive, a negative of a label, a confuser (a
    rated class outside the video's labels).

    Mutations tried (each failed the comparison): the negative term
    dropped -> 0.472 instead of 1.246 at w = 1; the prediction read at
    class c + 1 -> 0.685 instead of 0.472 at w = 0; the rated class left in
    the negative term -> 1.281 instead of 1.246."""
    p = np.array([[0.9, 0.2, 0.1, 0.05, 0.3, 0.6],
                  [0.4, 0.7, 0.2, 0.1, 0.05, 0.01],
                  [0.3, 0.1, 0.8, 0.2, 0.1, 0.2]], np.float32)
    rated_class = np.array([0, 1, 4])
    rating = np.array([1.0, 0.0, 0.0], np.float32)
    video_labels = np.zeros([3, NUM_CLASSES], np.float32)
    video_labels[0, [0, 5]] = video_labels[1, [1, 2]] = video_labels[2, [2]] = 1
    with tf.Graph().as_default(), tf.Session() as sess:
        got = {w: sess.run(losses.segment_cross_entropy(p, rated_class, rating, video_labels,
                                                        w)) for w in (0.0, 1.0, 2.5)}
    for weight, value in got.items():
        expected = numpy_segment_loss(p.astype(np.float64), rated_class, rating, video_labels,
                                      weight)
        assert value == pytest.approx(expected, rel=1e-5), weight
    assert got[1.0] > got[0.0] + 0.5      # (the negative term weighs here)


@pytest.fixture(scope="module")
def segment_files(tmp_path_factory):
    """6 videos of 25-40 frames: 30 rated segments, a confuser or two."""
    root = tmp_path_factory.mktemp("segment_training")
    return synthetic_segments.write_segment_dataset(
        str(root), videos_per_shard=6, num_classes=NUM_CLASSES, seed=5, min_frames=25,
        max_frames=40, ratings=synthetic_segments.Ratings(confuser_rate=0.5))


def _expected_rows(paths):
    """{(video id, start): (rated class, rating, sorted video labels)}."""
    rows = {}
    for path in paths:
        for record in tf.io.tf_record_iterator(path):
            context = tf.train.SequenceExample.FromString(record).context.feature
            labels = sorted(context["labels"].int64_list.value)
            for c, start, score in zip(context["segment_labels"].int64_list.value,
                                       context["segment_start_times"].int64_list.value,
                                       context["segment_scores"].float_list.value):
                rows[(context["id"].bytes_list.value[0], start)] = (c, score, labels)
    return rows


def _batches(paths, batch_size, shuffle_buffer=64):
    """Every batch of one epoch of make_train_batch."""
    reader = segment_readers.SegmentTrainingReader(num_classes=NUM_CLASSES)
    config = train_config(num_epochs=1, shuffle_buffer=shuffle_buffer, num_readers=1)
    with tf.Graph().as_default():
        return every_batch(train_graph.make_train_batch(reader, ",".join(paths), config,
                                                        batch_size, 3))


@pytest.mark.parametrize("batch_size", [6, 7])
def test_rebatched_segments_fill_every_batch(segment_files, batch_size):
    """A batch of videos is any number of segments: they are rebatched so
    every batch is full; one epoch shows every segment once (less the
    remainder, under a batch), with its rating and its video's labels.

    Mutation tried: the rebatching left out (the filter of whole batches
    of records, as for videos) -> no batch had exactly batch_size rows and
    the run yielded none; every segment given its batch's first video's
    labels (tf.gather(labels, video * 0)) -> the video_labels row differed."""
    expected = _expected_rows(segment_files)
    batches = _batches(segment_files, batch_size)
    assert len(batches) == len(expected) // batch_size > 0
    seen = []
    for batch in batches:
        assert batch["features"].shape == (batch_size, 5, 1152)
        assert (batch["num_frames"] == 5).all()
        for i, key in enumerate(zip(batch["id"], batch["start_time"])):
            c, score, labels = expected[key]
            assert (batch["rated_class"][i], batch["rating"][i]) == (c, score)
            assert list(np.flatnonzero(batch["video_labels"][i])) == labels
            assert list(batch["labels"][i]) == [float(score and j == c)
                                                for j in range(NUM_CLASSES)]
            seen.append(key)
    assert len(set(seen)) == len(seen) == len(batches) * batch_size
    if len(expected) % batch_size == 0:
        assert set(seen) == set(expected)
