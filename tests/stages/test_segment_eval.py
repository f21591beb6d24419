"""--segment_labels evaluation: the 2019 metrics (numpy reference), the
model's scores of each segment, and the CLI on train, SWA and bf16 dirs."""
import dataclasses
import glob
import json
import os
import shutil

import numpy as np
import pytest

from conftest import run_module, segment_data
from models import presets, registry
from support.training_runs import train_tiny_model
from training import checkpoints, metrics, model_builder, predict, synthetic
from training import eval as evaluation


def reference_segment_map(scores, labels, ratings):
    """The starter's segment_eval_inference.py, re-told in plain Python: per
    class, its rated segments in descending score order, AP = sum over the
    positives of (positives so far / rank) / the class's positives; the mean
    over the classes with a positive."""
    aps = []
    for c in sorted(set(labels)):
        rows = sorted((i for i in range(len(labels)) if labels[i] == c),
                      key=lambda i: -scores[i])
        positives = sum(ratings[i] > 0 for i in rows)
        if not positives:
            continue
        hits, total = 0, 0.0
        for rank, i in enumerate(rows, start=1):
            if ratings[i] > 0:
                hits += 1
                total += hits / rank
        aps.append(total / positives)
    return sum(aps) / len(aps)


def reference_pooled_ap(scores, ratings):
    rows = sorted(range(len(scores)), key=lambda i: -scores[i])
    hits, total = 0, 0.0
    for rank, i in enumerate(rows, start=1):
        if ratings[i] > 0:
            hits += 1
            total += hits / rank
    return total / hits


def test_segment_metrics_equal_the_numpy_reference():
    """Mutation tried: each class's AP divided by all positive ratings (the
    pooled denominator) instead of the class's -> segment_map differed."""
    rng = np.random.default_rng(5)
    for _ in range(20):
        n = int(rng.integers(5, 200))
        scores = rng.permutation(n).astype(np.float32) / n     # no ties
        labels = rng.integers(0, 7, size=n)
        ratings = rng.integers(0, 2, size=n).astype(np.float32)
        ratings[0] = 1.0
        got = metrics.segment_metrics(scores, labels, ratings)
        assert got["segment_map"] == pytest.approx(
            reference_segment_map(scores.tolist(), labels.tolist(), ratings.tolist()), abs=1e-12)
        assert got["segment_gap"] == pytest.approx(
            reference_pooled_ap(scores.tolist(), ratings.tolist()), abs=1e-12)
        with_positive = {c for c, r in zip(labels, ratings) if r > 0}
        assert got["num_classes_without_positives"] == len(set(labels)) - len(with_positive)


@pytest.fixture(scope="module")
def trained_dir(tiny_data, tmp_path_factory):
    train_dir = str(tmp_path_factory.mktemp("segment_eval_run"))
    return train_tiny_model(train_dir, tiny_data)


@pytest.fixture(scope="module")
def segment_pattern(tmp_path_factory):
    return segment_data(tmp_path_factory, "segment_data", videos_per_shard=24)


def _segment_scores_one_by_one(model, pattern):
    """Each rated segment fed alone from its numpy frames (not the reader)."""
    from models.tf_compat import tf
    scores, labels, ratings = [], [], []
    for path in sorted(tf.io.gfile.glob(pattern)):
        for record in tf.io.tf_record_iterator(path):
            ex = tf.train.SequenceExample.FromString(record)
            frames = np.concatenate(
                [np.stack([np.frombuffer(f.bytes_list.value[0], np.uint8)
                           for f in ex.feature_lists.feature_list[name].feature])
                 for name in ("rgb", "audio")], axis=1)
            context = ex.context.feature
            for label, start, score in zip(context["segment_labels"].int64_list.value,
                                           context["segment_start_times"].int64_list.value,
                                           context["segment_scores"].float_list.value):
                batch = np.zeros([1, 300, 1152], np.float32)
                batch[0, :5] = synthetic.dequantize_np(frames[start:start + 5])
                out = predict.predict_batch(model, batch, np.array([5], np.int32))
                scores.append(out["predictions"][0, label])
                labels.append(label)
                ratings.append(score)
    return np.array(scores, np.float32), np.array(labels), np.array(ratings)


@pytest.mark.slow
def test_segment_eval_scores_each_segment_on_its_frames(trained_dir, segment_pattern):
    """The batched reader path equals feeding each segment alone, and the
    model trained on video labels ranks the rated segments well.

    Mutation tried: scoring column 0 instead of the rated class in
    predict.evaluate_segments -> the metrics differed from the one-by-one ones."""
    checkpoint = checkpoints.latest_checkpoint(trained_dir)
    result = evaluation.evaluate_checkpoint(trained_dir, checkpoint, segment_pattern,
                                            batch_size=20, segment_size=5)
    model = predict.open_model(trained_dir, checkpoint=checkpoint)
    try:
        expected = metrics.segment_metrics(*_segment_scores_one_by_one(model, segment_pattern))
    finally:
        model.close()
    for key in ("segment_map", "segment_gap", "num_segments", "num_positive_segments"):
        assert result[key] == pytest.approx(expected[key], abs=1e-5), key
    chance = result["num_positive_segments"] / result["num_segments"]
    assert result["num_segments"] == 24 * 5 and result["segment_map"] > chance + 0.2


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dbof_train", "dbof_swa", "dbof_bf16"])
def test_eval_cli_segment_labels(tiny_models, segment_pattern, kind):
    """Mutation tried: _evaluate ignoring --segment_labels -> the video-level
    evaluation of the same records ran and no Segment_MAP line was printed."""
    model_dir = tiny_models[kind]
    completed = run_module("training.eval", f"--train_dir={model_dir}",
                           f"--eval_data_pattern={segment_pattern}", "--run_once",
                           "--segment_labels", "--batch_size=25")
    assert "Segment_MAP" in completed.stdout and "scored 120 segments" in completed.stdout
    with open(os.path.join(model_dir, evaluation.SEGMENT_RESULTS)) as handle:
        saved = json.load(handle)
    assert 0 < saved["segment_map"] <= 1 and saved["num_segments"] == 120
    assert saved["evaluations"][saved["key"]]["segment_size"] == 5


@pytest.mark.slow
def test_eval_cli_segment_labels_refuses_2018_records(tiny_models, tiny_data):
    completed = run_module("training.eval", f"--train_dir={tiny_models['dbof_train']}",
                           f"--eval_data_pattern={tiny_data / 'frame' / 'validate*.tfrecord'}",
                           "--run_once", "--segment_labels", check=False)
    assert completed.returncode != 0 and "no segment_labels" in completed.stderr
    assert "Traceback" not in completed.stderr and len(completed.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_segment_eval_of_the_exported_ensemble(tiny_models, segment_pattern):
    """The exported ensemble dir (loaded the starter way) scores segments
    through the same loop; its members' bf16 dirs too, and the ensemble's
    Segment_MAP is in their range or above (no gross wiring error).

    Mutation tried: segments padded to max_frames + 1 frames (301) -> the
    exported graph's [None, 300, D] placeholder refused the feed and this failed."""
    results = {}
    for kind in ("ensemble", "dbof_bf16", "gru_bf16"):
        model = predict.open_model(tiny_models[kind])
        try:
            results[kind] = predict.evaluate_segments(model, segment_pattern, batch_size=25)
        finally:
            model.close()
    assert results["ensemble"]["num_segments"] == 120
    worst = min(results["dbof_bf16"]["segment_map"], results["gru_bf16"]["segment_map"])
    assert results["ensemble"]["segment_map"] >= worst - 0.05


@pytest.mark.slow
@pytest.mark.parametrize("name", [*presets.PRESET_NAMES, "FrameMeanMoeModel"])
def test_a_segment_at_its_real_length_scores_as_padded(name):
    """Every model, as the evaluation and the tiled ensemble run it (frame
    draws by video fingerprint; shared frame work with 3 tiles), scores a
    5-frame segment fed at its real length as the same segment padded to 300:
    the models read the first num_frames rows only. (The starter's segment
    reader fed 5 frames too.)

    Mutation tried: models.layers.sample_frame_indices drawing among 300
    rows whatever num_frames -> the padded segment drew zero rows (and the
    real one out of range) and this failed for the five sampling models."""
    from models.tf_compat import tf
    from support.numpy_reference import randomize_bn_statistics
    hparams = presets.get(name).hparams_for("test") if name in presets.PRESET_NAMES else {}
    rng = np.random.default_rng(3)
    segments = rng.normal(0, 1, [4, 5, 1152]).astype(np.float32)
    padded = np.zeros([4, 300, 1152], np.float32)
    padded[:, :5] = segments
    with tf.Graph().as_default():
        tf.set_random_seed(1)
        model = registry.build(name, 7, [1024, 128], hparams)
        frames = tf.placeholder(tf.float32, [None, None, 1152])
        num_frames = tf.fill([tf.shape(frames)[0]], 5)
        with tf.variable_scope("tower"):
            outputs = [model_builder.model_predictions(model, frames, num_frames, False)]
        if getattr(model, "supports_shared_frame_work", False):
            with tf.variable_scope("tower", reuse=True):
                outputs.append(model_builder.model_tile_predictions(model, frames, num_frames, 3))
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            randomize_bn_statistics(session, rng)
            real = session.run(outputs, {frames: segments})
            long = session.run(outputs, {frames: padded})
    for got, expected in zip(real, long):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_the_exported_ensemble_scores_real_length_segments_as_padded(tiny_models,
                                                                     segment_pattern):
    """The tiled export (shared frame work, bf16 members) takes 5-frame
    segments and scores them as the 300-frame padded ones; an export of a
    fixed 300 frames gets them padded.

    Mutation tried: predict._file_batches keying its cached pipeline by the
    reader's class only -> the unpadded reader got the padded pipeline
    (300 rows) and this failed."""
    files = sorted(glob.glob(segment_pattern))
    model = predict.open_model(tiny_models["ensemble"])
    try:
        assert predict.takes_any_frames(model)
        from models.tf_compat import tf
        with model.graph.as_default():
            fixed = tf.placeholder(tf.float32, [None, 300, 1152])    # an export built before
        assert predict.segment_reader(dataclasses.replace(model, input_batch_raw=fixed)).padded
        scores, rows = {}, {}
        for padded in (True, None):
            reader = predict.segment_reader(model, 5, padded=padded)
            batches = list(predict.iterate_predictions(model, "", 5, reader=reader, files=files))
            scores[padded] = np.concatenate([b.predictions for b in batches])
            rows[padded] = {b.inputs["features"].shape[1] for b in batches}
    finally:
        model.close()
    assert rows == {True: {300}, None: {5}}
    np.testing.assert_allclose(scores[None], scores[True], rtol=1e-5, atol=1e-6)
    assert scores[None].shape == (120, 10)


@pytest.mark.slow
def test_eval_cli_segment_labels_on_the_exported_ensemble(tiny_models, segment_pattern,
                                                         tmp_path):
    """training.eval --segment_labels takes the ensemble dir of ensemble.build
    (evaluated once, like ensemble.build --eval_data_pattern): its Segment_MAP
    and Segment_GAP equal the plain-Python reference on each rated segment
    fed alone, padded to 300 frames, to the same export.

    Mutation tried: _checkpoint_to_evaluate not returning the export's
    inference_model -> "no checkpoint to evaluate" and this failed."""
    import shutil
    ensemble = str(tmp_path / "ensemble")
    shutil.copytree(tiny_models["ensemble"], ensemble)
    completed = run_module("training.eval", f"--train_dir={ensemble}",
                           f"--eval_data_pattern={segment_pattern}", "--run_once",
                           "--segment_labels", "--batch_size=25")
    assert "inference_model | segments 120" in completed.stdout
    with open(os.path.join(ensemble, evaluation.SEGMENT_RESULTS)) as handle:
        saved = json.load(handle)
    model = predict.open_model(ensemble)
    try:
        scores, labels, ratings = _segment_scores_one_by_one(model, segment_pattern)
    finally:
        model.close()
    assert saved["num_segments"] == len(scores) == 120
    assert saved["segment_map"] == pytest.approx(
        reference_segment_map(scores.tolist(), labels.tolist(), ratings.tolist()), abs=1e-5)
    assert saved["segment_gap"] == pytest.approx(
        reference_pooled_ap(scores.tolist(), ratings.tolist()), abs=1e-5)
    refused = run_module("training.eval", f"--train_dir={ensemble}",
                         f"--eval_data_pattern={segment_pattern}", "--segment_labels",
                         "--bn_statistics=recompute", check=False)
    assert refused.returncode != 0 and "is an export" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_skip_evaluated_keeps_segment_and_video_records_apart(tiny_models, segment_pattern,
                                                             tmp_path):
    """--skip_evaluated: a segment evaluation on record is printed, not run
    again; a video-level evaluation of the same files and checkpoint does
    not count for it, nor it for a video-level one.

    Mutation tried: _evaluate_segments ignoring --skip_evaluated -> the
    second segment run scored again and this failed."""
    model_dir = str(tmp_path / "dbof")
    # (Without the records earlier tests left in the shared model dir.)
    shutil.copytree(tiny_models["dbof_train"], model_dir,
                    ignore=shutil.ignore_patterns("*eval_results.json", "eval_videos"))
    base = [f"--train_dir={model_dir}", f"--eval_data_pattern={segment_pattern}",
            "--run_once", "--skip_evaluated", "--batch_size=25"]

    def run(*extra):
        out = run_module("training.eval", *base, *extra).stdout
        return "(evaluated before)" in out

    assert not run()                        # video level, first time
    assert not run("--segment_labels")      # the video record does not count
    assert run("--segment_labels")          # now on record
    os.remove(os.path.join(model_dir, "eval_results.json"))
    assert not run()                        # the segment record does not count
    assert run()
