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
from training import (
    checkpoints,
    eval_results,
    intervals,
    metrics,
    model_builder,
    predict,
    synthetic,
)
from training import eval as evaluation
from training.cli import UserError


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
        assert getattr(result, key) == pytest.approx(expected[key], abs=1e-5), key
    chance = result.num_positive_segments / result.num_segments
    assert result.num_segments == 24 * 5 and result.segment_map > chance + 0.2


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
    with open(os.path.join(model_dir, eval_results.SEGMENT_RESULTS)) as handle:
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
    assert results["ensemble"].num_segments == 120
    worst = min(results["dbof_bf16"].segment_map, results["gru_bf16"].segment_map)
    assert results["ensemble"].segment_map >= worst - 0.05


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
    with open(os.path.join(ensemble, eval_results.SEGMENT_RESULTS)) as handle:
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


def test_retrieved_mask_leaves_the_ranking_but_counts_the_positive():
    """A rated pair outside its video's top K (not retrieved) is out of its
    class's ranking yet still one of the class's positives, by hand:
    class 0 ranks 0.9 (1), 0.8 (0), 0.6 (1) of 3 positives: (1/1 + 2/3) / 3;
    class 1 ranks 0.4 (0) of 1 positive: 0; class 2 has no positive (left
    out of the MAP). Pooled: 0.95 (0), 0.9 (1), 0.8 (0), 0.6 (1), 0.4 (0),
    0.3 (0) of 4 positives: (1/2 + 2/4) / 4.

    Mutation tried: the denominator counting the retrieved positives only
    -> class 0's AP was (1 + 2/3) / 2 and this failed."""
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.95, 0.3], np.float32)
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    ratings = np.array([1, 0, 1, 1, 1, 0, 0, 0])
    retrieved = np.array([1, 1, 0, 1, 0, 1, 1, 1], bool)
    got = metrics.segment_metrics(scores, labels, ratings, retrieved)
    assert got["segment_map"] == pytest.approx(((1 + 2 / 3) / 3 + 0) / 2, abs=1e-12)
    assert got["segment_gap"] == pytest.approx((1 / 2 + 2 / 4) / 4, abs=1e-12)
    assert (got["num_retrieved"], got["num_positive_retrieved"]) == (6, 2)
    assert got["num_classes_without_positives"] == 1
    every = metrics.segment_metrics(scores, labels, ratings, np.ones(8, bool))
    plain = metrics.segment_metrics(scores, labels, ratings)
    assert {k: every[k] for k in plain} == plain and "num_retrieved" not in plain


def _ratings(n=6):
    return intervals.SegmentRatings(
        ids=np.array([b"ab01", b"cd01"] * (n // 2)), start_times=np.arange(n) * 5,
        classes=np.arange(n) % 3, ratings=(np.arange(n) % 2).astype(np.int8),
        scores=np.linspace(0, 1, n).astype(np.float32), retrieved=np.arange(n) != 2)


def test_ratings_file_round_trip_and_entry_lookup(tmp_path):
    """eval_results.record keeps the per-rating arrays beside the entry;
    ratings_of reads them back exactly; find tells refined and unrefined
    evaluations apart; a damaged file is one line.

    Mutation tried: segment_key leaving the refinement's settings out -> the
    refined evaluation replaced the unrefined one and this failed."""
    directory, pattern = str(tmp_path), str(tmp_path / "validate*.tfrecord")
    plain_m = eval_results.measurement("model.ckpt-10", pattern, seed=1, segment_size=5)
    refined_m = eval_results.measurement("model.ckpt-10", pattern, seed=1, segment_size=5,
                                         refine_top_k=3, refine_model="self")
    plain = eval_results.record(directory, plain_m,
                                intervals.EvalResult(segment_map=0.5, ratings=_ratings()))
    refined = eval_results.record(directory, refined_m,
                                  intervals.EvalResult(segment_map=0.6, ratings=_ratings(8)))
    assert plain.ratings_file != refined.ratings_file
    found = eval_results.find(directory, plain_m)
    assert found.segment_map == 0.5 and found.segment_refine_top_k is None
    found = eval_results.find(directory, refined_m)
    assert found.segment_map == 0.6 and found.segment_refine_model == "self"
    assert eval_results.find(directory, dataclasses.replace(
        refined_m, segment_refine_top_k=2)) is None
    loaded = dataclasses.asdict(eval_results.ratings_of(directory, found))
    for name, array in dataclasses.asdict(_ratings(8)).items():
        np.testing.assert_array_equal(loaded[name], array)
    assert loaded["ratings"].dtype == np.int8 and loaded["retrieved"].dtype == bool
    (tmp_path / found.ratings_file).write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a segment ratings record") as err:
        eval_results.ratings_of(directory, found)
    assert "\n" not in str(err.value)


def test_segment_results_read_without_tensorflow():
    """A report reads the entries and ratings without importing TensorFlow.
    Mutation tried: eval_results importing training.predict -> TensorFlow
    loaded and this failed."""
    import subprocess
    import sys

    from conftest import REPO_ROOT
    code = "import sys, training.eval_results; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"


def test_refine_flags_refused_in_one_line(tmp_path):
    """K < 0, a refine dir without K, a missing refine dir and a refine model
    of other classes are each one line naming the flag, before any model
    is loaded. Mutation tried: the class check removed -> the 7-class
    model dir was accepted and this failed."""
    from training import segment_refine
    dirs = {}
    for name, classes in (("model", 10), ("other", 7)):
        dirs[name] = str(tmp_path / name)
        os.makedirs(dirs[name])
        checkpoints.write_model_flags(dirs[name], model_builder.make_model_flags(
            "FrameMeanMoeModel", "rgb,audio", "1024,128", True, classes, "CrossEntropyLoss",
            {}))
    model_dir = dirs["model"]
    for args, message in (((-1, ""), "--segment_refine_top_k: must be >= 0"),
                          ((0, model_dir), "needs --segment_refine_top_k > 0"),
                          ((2, str(tmp_path / "nope")), "no such dir"),
                          ((2, dirs["other"]), "predicts 7 classes")):
        with pytest.raises(UserError, match=message) as err:
            segment_refine.check(*args, model_dir, [], "eval_data_pattern")
        assert "\n" not in str(err.value)
    assert segment_refine.check(2, model_dir, model_dir, [], "x") == segment_refine.Refine(2)


def _video_top(model_dir, pattern, k):
    """{video id: set of its top-k classes} computed here from the video-level
    predictions of the model on the records' whole frames."""
    model = predict.open_model(model_dir)
    try:
        top = {}
        for batch in predict.iterate_predictions(model, pattern, 8):
            order = np.argsort(-batch.predictions, axis=1, kind="stable")[:, :k]
            top.update({vid: set(row.tolist()) for vid, row in zip(batch.ids, order)})
        return top
    finally:
        model.close()


@pytest.mark.slow
def test_eval_cli_refinement_and_its_ratings(tiny_models, segment_pattern, tmp_path):
    """training.eval --segment_labels --segment_refine_top_k=2: a rating is
    retrieved exactly when its class is among the video's top 2 (computed
    here from the model's video-level predictions); the metrics equal those
    of the kept ratings; the key names the refinement, and
    --skip_evaluated finds it on the second run.

    Mutation tried: video_top_classes keeping the top K of -predictions (the
    worst classes) -> the retrieved flags differed and this failed."""
    model_dir = str(tmp_path / "dbof")
    shutil.copytree(tiny_models["dbof_bf16"], model_dir,
                    ignore=shutil.ignore_patterns("*eval_results.json", "eval_videos"))
    args = [f"--train_dir={model_dir}", f"--eval_data_pattern={segment_pattern}", "--run_once",
            "--segment_labels", "--batch_size=25", "--segment_refine_top_k=2",
            "--skip_evaluated"]
    first = run_module("training.eval", *args).stdout
    assert "refined:" in first and "(evaluated before)" not in first
    store = eval_results.read_store(model_dir, eval_results.SEGMENT)
    entry = store.latest
    assert "segment_refine_model=self" in store.key and entry.segment_refine_top_k == 2
    ratings = eval_results.ratings_of(model_dir, entry)
    top = _video_top(model_dir, segment_pattern, 2)
    expected = [int(c) in top[vid] for vid, c in zip(ratings.ids, ratings.classes)]
    assert ratings.retrieved.tolist() == expected and 0 < sum(expected) < len(expected)
    assert ratings.ratings.dtype == np.int8 and ratings.start_times.dtype == np.int64
    again = metrics.segment_metrics(ratings.scores, ratings.classes, ratings.ratings,
                                    ratings.retrieved)
    assert again["segment_map"] == pytest.approx(entry.segment_map, abs=1e-12)
    assert entry.num_retrieved == sum(expected)
    assert "(evaluated before)" in run_module("training.eval", *args).stdout


@pytest.mark.slow
def test_refinement_by_an_ensemble_export(tiny_models, segment_pattern):
    """The refine model may be an export (ensemble.build's dir, opened the
    starter way) refining a single model dir's scores; the key's refine
    model is the export's inference_model. Mutation tried: segment_refine.
    opened passing --bf16_compute to an export -> open_model refused it and
    this failed."""
    from training import segment_refine
    refine = segment_refine.check(3, tiny_models["ensemble"], tiny_models["dbof_bf16"], [],
                                  "eval_data_pattern")
    assert segment_refine.identity(refine).endswith("ensemble/inference_model")
    result = evaluation.evaluate_checkpoint(
        tiny_models["dbof_bf16"], checkpoints.checkpoint_in_dir(tiny_models["dbof_bf16"]),
        segment_pattern, batch_size=25, segment_size=5, refine=refine,
        bf16_compute="cast_at_load")
    ratings = result.ratings
    top = _video_top(tiny_models["ensemble"], segment_pattern, 3)
    assert ratings.retrieved.tolist() == [int(c) in top[vid] for vid, c in
                                          zip(ratings.ids, ratings.classes)]
    assert result.num_retrieved == int(ratings.retrieved.sum()) < len(ratings.ids)
