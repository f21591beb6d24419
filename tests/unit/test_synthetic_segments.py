"""training/synthetic_segments.py: determinism, the videos of training.synthetic,
what each rating means (scene, event, confusers), the unrated option."""
from __future__ import annotations

import numpy as np
import pytest

from models.tf_compat import tf
from training import synthetic, synthetic_segments
from training.cli import UserError

NUM_CLASSES = 20
SEED = 3


def _videos(paths):
    """[(labels, {segment lists}, rgb float [T, 1024], context keys)] decoded
    independently of the writer."""
    videos = []
    for path in paths:
        for record in tf.io.tf_record_iterator(path):
            example = tf.train.SequenceExample.FromString(record)
            context = example.context.feature
            rgb = np.stack([np.frombuffer(f.bytes_list.value[0], np.uint8)
                            for f in example.feature_lists.feature_list["rgb"].feature])
            lists = {}
            if "segment_labels" in context:
                lists = {"labels": list(context["segment_labels"].int64_list.value),
                         "starts": list(context["segment_start_times"].int64_list.value),
                         "scores": list(context["segment_scores"].float_list.value)}
            videos.append((list(context["labels"].int64_list.value), lists,
                           synthetic.dequantize_np(rgb), set(context)))
    return videos


@pytest.fixture(scope="module")
def rated(tmp_path_factory):
    """48 videos, half of them with a confuser."""
    root = tmp_path_factory.mktemp("rated")
    ratings = synthetic_segments.Ratings(confuser_rate=0.5)
    return synthetic_segments.write_segment_dataset(
        str(root), num_shards=2, videos_per_shard=24, num_classes=NUM_CLASSES, seed=SEED,
        min_frames=25, max_frames=60, ratings=ratings)


def test_same_arguments_same_bytes(rated, tmp_path):
    """Mutation tried: the shard's stream keyed without the shard number ->
    both shards held the same videos and the second comparison failed."""
    again = synthetic_segments.write_segment_dataset(
        str(tmp_path), num_shards=2, videos_per_shard=24, num_classes=NUM_CLASSES, seed=SEED,
        min_frames=25, max_frames=60, ratings=synthetic_segments.Ratings(confuser_rate=0.5))
    assert [open(p, "rb").read() for p in again] == [open(p, "rb").read() for p in rated]
    first, second = _videos(rated[:1]), _videos(rated[1:])
    assert not np.array_equal(first[0][2][:5], second[0][2][:5])


def test_scenes_are_training_synthetic_videos():
    """Without events and confusers a video's frames are training.synthetic's
    (same formula and draws), so video-level models trained there score them.

    Mutation tried: the noise drawn at 0.25 instead of synthetic's 0.3 ->
    the quantised frames differed."""
    protos = synthetic.class_prototypes(NUM_CLASSES, SEED)
    labels = np.asarray([1, 4, 7])
    expected = synthetic._video_frames(np.random.default_rng(5), labels, 40, protos)
    got = synthetic_segments._scene_frames(np.random.default_rng(5), labels, 40, protos)
    for want, frames in zip(expected, got):
        np.testing.assert_array_equal(synthetic.quantize(frames), want)


def test_ratings_are_of_the_videos_labels_but_confusers(rated):
    """Each video rates up to 5 slots, of at most 2 of its labels, both
    ratings for a class rated twice; a rated class outside the labels is a
    confuser: rated 0, one a video at most.

    Mutation tried: the confuser rated 1 -> the confuser assertion failed."""
    confusers = 0
    for labels, lists, rgb, _ in _videos(rated):
        assert len(lists["starts"]) == min(5, len(rgb) // 5)
        assert all(s % 5 == 0 for s in lists["starts"]) and lists["starts"] == sorted(
            set(lists["starts"]))
        outside = [(c, r) for c, r in zip(lists["labels"], lists["scores"]) if c not in labels]
        assert len(outside) <= 1 and all(r == 0.0 for _, r in outside)
        confusers += len(outside)
        inside = [(c, r) for c, r in zip(lists["labels"], lists["scores"]) if c in labels]
        assert len({c for c, _ in inside}) <= 2
        for c in {c for c, _ in inside}:
            scores = [r for d, r in inside if d == c]
            assert len(scores) < 2 or set(scores) == {0.0, 1.0}
    assert 12 <= confusers <= 36       # half of 48 videos, give or take


def _segment_projections(videos, table):
    """{kind: [projection of the segment's mean rgb on table[rated class]]},
    kind 1 (rated 1), 0 (rated 0, of a label) or "confuser"."""
    found = {1: [], 0: [], "confuser": []}
    for labels, lists, rgb, _ in videos:
        for c, start, score in zip(lists["labels"], lists["starts"], lists["scores"]):
            kind = "confuser" if c not in labels else int(score)
            found[kind].append(float(rgb[start:start + 5].mean(0) @ table[c]))
    return {kind: np.asarray(values) for kind, values in found.items()}


def test_positives_carry_the_event_negatives_the_scene(rated):
    """A segment rated 1 carries its class's event (video-level data never
    does); one rated 0 still shows the class's scene; a confuser shows the
    scene of a class the video is not labelled with.

    Mutation tried: the event left out of positives -> the event
    projections of both ratings were alike and the first assertion failed."""
    videos = _videos(rated)
    events = _segment_projections(videos, synthetic_segments.event_prototypes(
        NUM_CLASSES, SEED)[0])
    scenes = _segment_projections(videos, synthetic.class_prototypes(NUM_CLASSES, SEED)[0])
    assert events[1].mean() > events[0].mean() + 20
    assert events[0].mean() == pytest.approx(0.0, abs=10)
    # (A label's scene at weight 1/sqrt(k): 0.16 * 1024 / sqrt(k), k about 3.)
    assert scenes[0].mean() > 50 and scenes["confuser"].mean() > 50
    assert scenes[1].mean() > scenes[0].mean()          # (the small scene boost)


def test_unrated_option_writes_the_same_videos_without_lists(rated, tmp_path):
    """with_ratings=False: the same frames and labels, no segment fields
    (a 2019 test-split look-alike); with_labels=False: empty labels.

    Mutation tried: with_ratings ignored -> the records held the lists."""
    unrated = synthetic_segments.write_segment_dataset(
        str(tmp_path), num_shards=2, videos_per_shard=24, num_classes=NUM_CLASSES, seed=SEED,
        min_frames=25, max_frames=60, ratings=synthetic_segments.Ratings(confuser_rate=0.5),
        with_ratings=False, with_labels=False)
    for (labels, _, rgb, _), (no_labels, lists, same_rgb, keys) in zip(_videos(rated),
                                                                       _videos(unrated)):
        assert keys == {"id", "labels"} and not lists and no_labels == [] and labels
        np.testing.assert_array_equal(rgb, same_rgb)


@pytest.mark.parametrize("field,value", [("confuser_rate", 1.5), ("event_strength", -1.0),
                                         ("scene_boost", float("nan")), ("rated_classes", 0)])
def test_bad_ratings_are_one_line_errors(tmp_path, field, value):
    ratings = synthetic_segments.Ratings(**{field: value})
    with pytest.raises(UserError, match=f"--{field}") as err:
        synthetic_segments.write_segment_dataset(str(tmp_path), num_classes=NUM_CLASSES,
                                                 ratings=ratings)
    assert "\n" not in str(err.value) and not (tmp_path / "segments").exists()
