"""swa.average: the uniform mean of checkpoints, BN statistics modes, errors.

Every expected value is computed here with numpy from the source checkpoints
(read back with tf.train.load_checkpoint), not with the code under test.
"""
from __future__ import annotations

import glob
import json
import os
import tracemalloc

import numpy as np
import pytest

from conftest import QUIET, TINY_CLASSES, TINY_DBOF, run_module, train_config
from models import layers
from models.tf_compat import tf
from swa import average as swa
from training import bn_statistics, checkpoints, model_builder, train
from training import train_dir as train_dirs
from training.cli import UserError
from training.model_flags import ModelFlags


def tiny_train_config(**overrides):
    return train_config(**{**QUIET, "batch_size": 4, "max_steps": 30,
                           "save_checkpoint_steps": 10, "num_readers": 1,
                           "shuffle_buffer": 32, "seed": 5, **overrides})


def dbof_flags():
    return model_builder.make_model_flags("Soft-DBoF-4k", "rgb,audio", "1024,128", True,
                                          TINY_CLASSES, "CrossEntropyLoss", TINY_DBOF)


def train_pattern(tiny_data):
    return str(tiny_data / "frame" / "train*.tfrecord")


@pytest.fixture(scope="module")
def dbof_dir(tiny_data, tmp_path_factory):
    """A Soft-DBoF (with batch norm) train dir with checkpoints 10, 20, 30."""
    train_dir = str(tmp_path_factory.mktemp("swa_train") / "run")
    flags = dbof_flags()
    train_dirs.prepare_train_dir(train_dir, flags, start_new=False)
    train.train(flags, train_dir, train_pattern(tiny_data), tiny_train_config(),
                log=lambda _: None)
    assert [step for step, _ in checkpoints.list_checkpoints(train_dir)] == [10, 20, 30]
    return train_dir


def read_all(path):
    reader = tf.train.load_checkpoint(path)
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()}


def dir_snapshot(directory):
    return {name: os.path.getmtime(os.path.join(directory, name))
            for name in sorted(os.listdir(directory))}


# ---------------------------------------------------------------------------
# The mean


@pytest.mark.slow
def test_average_equals_numpy_mean(dbof_dir, tmp_path):
    before = dir_snapshot(dbof_dir)
    output = str(tmp_path / "swa")
    info = swa.average(dbof_dir, output, swa_start=15, log=None)
    sources = [read_all(path) for _, path in checkpoints.list_checkpoints(dbof_dir)[1:]]
    result = read_all(os.path.join(output, "model.ckpt-30"))

    model_keys = {key for key in sources[0]
                  if key.startswith("tower/") and not key.endswith(("/Adam", "/Adam_1"))}
    assert set(result) == model_keys            # no slots, no global_step, no beta powers
    assert any(key.endswith("moving_mean") for key in model_keys)
    for key in model_keys:
        assert result[key].dtype == np.float32
        if key.endswith(("moving_mean", "moving_variance")):
            np.testing.assert_array_equal(result[key], sources[-1][key], err_msg=key)
        else:
            expected = np.mean(np.stack([s[key].astype(np.float64) for s in sources]), axis=0)
            np.testing.assert_allclose(result[key], expected, rtol=1e-6, atol=1e-7,
                                       err_msg=key)
    moved = [key for key in model_keys if not np.array_equal(sources[0][key], sources[1][key])]
    assert len(moved) > len(model_keys) // 2      # training changed the weights

    assert info.count == 2 and info.bn_statistics == "last"
    written = json.load(open(os.path.join(output, "swa.json")))
    assert written["count"] == 2
    assert [c["step"] for c in written["checkpoints"]] == [20, 30]
    assert written["checkpoints"][0]["path"] == os.path.join(os.path.abspath(dbof_dir),
                                                             "model.ckpt-20")
    assert (open(os.path.join(output, "model_flags.json")).read()
            == open(os.path.join(dbof_dir, "model_flags.json")).read())
    assert checkpoints.latest_checkpoint(output).endswith("model.ckpt-30")
    assert tf.train.latest_checkpoint(output).endswith("model.ckpt-30")
    assert dir_snapshot(dbof_dir) == before      # the train dir is only read
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]


def test_bn_statistics_average_and_last_n(dbof_dir, tmp_path):
    output = str(tmp_path / "swa")
    info = swa.average(dbof_dir, output, last_n=3, bn_statistics="average", log=None)
    assert [c.step for c in info.checkpoints] == [10, 20, 30]
    sources = [read_all(path) for _, path in checkpoints.list_checkpoints(dbof_dir)]
    result = read_all(os.path.join(output, "model.ckpt-30"))
    stats = [key for key in result if key.endswith(("moving_mean", "moving_variance"))]
    assert stats
    for key in result:
        expected = np.mean(np.stack([s[key].astype(np.float64) for s in sources]), axis=0)
        np.testing.assert_allclose(result[key], expected, rtol=1e-6, atol=1e-7, err_msg=key)


def test_swa_end_and_last_n_select(dbof_dir):
    assert [s for s, _ in swa.select_checkpoints(dbof_dir, swa_start=10, swa_end=20)] == [10, 20]
    assert [s for s, _ in swa.select_checkpoints(dbof_dir, swa_start=10, last_n=1)] == [30]
    assert [s for s, _ in swa.select_checkpoints(dbof_dir, last_n=5)] == [10, 20, 30]


# ---------------------------------------------------------------------------
# BN statistics recomputation


def test_recompute_is_mean_of_batch_statistics_numpy():
    """A small BN graph: the recomputed statistics are the exact mean over the
    given batches of the batch mean and of the unbiased batch variance."""
    rng = np.random.RandomState(0)
    batches = [rng.normal(loc=3.0, scale=s, size=(n, 4)).astype(np.float32)
               for n, s in ((5, 1.0), (8, 2.0), (3, 0.5), (6, 4.0))]
    graph = tf.Graph()
    with graph.as_default():
        inputs = tf.placeholder(tf.float32, [None, 4])
        with tf.variable_scope("tower"):
            hidden = layers.batch_norm(inputs, True, "bn1")
            layers.batch_norm(hidden * 2.0 + 1.0, True, "bn2")
        statistics = bn_statistics.batch_statistics(tf.get_collection(tf.GraphKeys.UPDATE_OPS))
        assert sorted(statistics) == ["tower/bn1/moving_mean", "tower/bn1/moving_variance",
                                      "tower/bn2/moving_mean", "tower/bn2/moving_variance"]
        init = tf.global_variables_initializer()
    with tf.Session(graph=graph) as sess:
        sess.run(init)
        means = bn_statistics.mean_of_batch_statistics(sess, statistics, len(batches),
                                                       feed_dicts=[{inputs: b} for b in batches])
    np.testing.assert_allclose(means["tower/bn1/moving_mean"],
                               np.mean([b.mean(axis=0) for b in batches], axis=0), rtol=1e-5)
    np.testing.assert_allclose(means["tower/bn1/moving_variance"],
                               np.mean([b.var(axis=0, ddof=1) for b in batches], axis=0),
                               rtol=1e-5)
    # bn2 sees the training-mode output of bn1: mean 1, (biased) variance ~4 per batch.
    normalised = [(b - b.mean(0)) / np.sqrt(b.var(0) + layers.BN_EPSILON) * 2.0 + 1.0
                  for b in batches]
    np.testing.assert_allclose(means["tower/bn2/moving_mean"], 1.0, atol=1e-5)
    np.testing.assert_allclose(means["tower/bn2/moving_variance"],
                               np.mean([n.var(axis=0, ddof=1) for n in normalised], axis=0),
                               rtol=1e-4)


@pytest.mark.slow
def test_recompute_on_trained_model(dbof_dir, tiny_data, tmp_path):
    output = str(tmp_path / "swa")
    info = swa.average(dbof_dir, output, swa_start=20, bn_statistics="recompute",
                       recompute_batches=3, train_data_pattern=train_pattern(tiny_data),
                       batch_size=4, log=None)
    assert info.bn_statistics == "recompute" and info.recompute_batches == 3
    sources = [read_all(path) for _, path in checkpoints.list_checkpoints(dbof_dir)[1:]]
    result = read_all(os.path.join(output, "model.ckpt-30"))
    stats = [key for key in result if key.endswith(("moving_mean", "moving_variance"))]
    assert len(stats) == 6
    for key in result:
        if key in stats:
            assert np.all(np.isfinite(result[key]))
            # A BN right after the input BN sees zero-mean features in training
            # mode, so its batch means are 0 (to rounding) in both; skip those.
            if np.abs(result[key]).max() > 1e-6:
                assert not np.allclose(result[key], sources[-1][key]), key
            if key.endswith("moving_variance"):
                assert np.all(result[key] >= 0)
        else:
            expected = np.mean(np.stack([s[key].astype(np.float64) for s in sources]), axis=0)
            np.testing.assert_allclose(result[key], expected, rtol=1e-6, atol=1e-7,
                                       err_msg=key)
    # The input BN sees per-frame L2-normalised 1152-d frames: variance ~ 1/1152,
    # far from the EMA's value after 30 steps (still close to its initial 1.0).
    assert result["tower/input_bn/moving_variance"].mean() < 0.01


# ---------------------------------------------------------------------------
# Errors


def write_fake_checkpoint(directory, step, shapes, dtype=np.float32):
    """A checkpoint with the given {name: shape} (values = step)."""
    graph = tf.Graph()
    with graph.as_default():
        variables = [tf.Variable(np.full(shape, step, dtype), name=name)
                     for name, shape in shapes.items()]
        saver = tf.train.Saver(variables)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            saver.save(sess, os.path.join(directory, "model.ckpt"), global_step=step,
                       write_meta_graph=False)


def fake_train_dir(tmp_path, shape_by_step):
    directory = tmp_path / "train"
    directory.mkdir()
    checkpoints.write_model_flags(str(directory), ModelFlags(
        "FrameMeanMoeModel", "rgb,audio", "1024,128", True, 10))
    for step, shapes in shape_by_step.items():
        write_fake_checkpoint(str(directory), step, shapes)
    return str(directory)


def test_mismatched_shapes_name_both_checkpoints(tmp_path):
    train_dir = fake_train_dir(tmp_path, {
        1: {"tower/a": [2, 3], "tower/b": [4]},
        2: {"tower/a": [2, 3], "tower/b": [5]}})
    with pytest.raises(UserError, match=r"model\.ckpt-1 and .*model\.ckpt-2 differ: "
                                        r"variable tower/b is float32\[4\] in model\.ckpt-1 but "
                                        r"float32\[5\] in model\.ckpt-2"):
        swa.average(train_dir, str(tmp_path / "out"), swa_start=0, log=None)
    assert not (tmp_path / "out").exists()
    assert sorted(os.listdir(tmp_path)) == ["train"]


def test_missing_variable_named(tmp_path):
    train_dir = fake_train_dir(tmp_path, {
        1: {"tower/a": [2], "tower/b": [4]},
        2: {"tower/a": [2]}})
    with pytest.raises(UserError, match=r"differ: variable tower/b is missing in model\.ckpt-2"):
        swa.average(train_dir, str(tmp_path / "out"), swa_start=0, log=None)


def test_uniform_mean_of_fake_checkpoints(tmp_path):
    train_dir = fake_train_dir(tmp_path, {step: {"tower/a": [3], "tower/a/Adam": [3],
                                                 "global_step_like": []}
                                          for step in (1, 2, 6)})
    swa.average(train_dir, str(tmp_path / "out"), swa_start=2, log=None)
    result = read_all(str(tmp_path / "out" / "model.ckpt-6"))
    assert set(result) == {"tower/a"}
    np.testing.assert_array_equal(result["tower/a"], np.full([3], 4.0, np.float32))


def test_empty_range_lists_steps(dbof_dir, tmp_path):
    with pytest.raises(UserError, match=r"no checkpoint with a step in \[40, latest\].*"
                                        r"steps present: 10, 20, 30"):
        swa.average(dbof_dir, str(tmp_path / "out"), swa_start=40, log=None)
    with pytest.raises(UserError, match="--swa_start or --last_n"):
        swa.average(dbof_dir, str(tmp_path / "out"), log=None)


def test_dir_without_model_flags(tmp_path):
    train_dir = fake_train_dir(tmp_path, {1: {"tower/a": [2]}})
    os.remove(os.path.join(train_dir, "model_flags.json"))
    with pytest.raises(UserError, match=r"model_flags\.json: missing"):
        swa.average(train_dir, str(tmp_path / "out"), swa_start=0, log=None)


def test_existing_output_and_overwrite(tmp_path):
    train_dir = fake_train_dir(tmp_path, {1: {"tower/a": [2]}, 2: {"tower/a": [2]}})
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("x")
    with pytest.raises(UserError, match=r"out: exists; choose another or pass --overwrite"):
        swa.average(train_dir, str(output), swa_start=0, log=None)
    assert (output / "keep.txt").exists()
    swa.average(train_dir, str(output), swa_start=0, overwrite=True, log=None)
    assert not (output / "keep.txt").exists()
    np.testing.assert_array_equal(read_all(str(output / "model.ckpt-2"))["tower/a"], [1.5, 1.5])
    with pytest.raises(UserError, match="would replace the train dir"):
        swa.average(train_dir, train_dir, swa_start=0, overwrite=True, log=None)
    with pytest.raises(UserError, match="would replace the train dir"):
        swa.average(train_dir, str(tmp_path), swa_start=0, overwrite=True, log=None)


@pytest.mark.slow
def test_cli_errors_are_one_line(tmp_path):
    train_dir = fake_train_dir(tmp_path, {3: {"tower/a": [2]}})
    completed = run_module("swa.average", f"--train_dir={train_dir}",
                           f"--output_dir={tmp_path / 'out'}", "--swa_start=5", check=False)
    assert completed.returncode == 2
    lines = [line for line in completed.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "steps present: 3" in lines[0]
    assert "Traceback" not in completed.stderr


# ---------------------------------------------------------------------------
# Memory


def test_memory_does_not_grow_with_checkpoints(tmp_path):
    """Peak numpy memory of averaging 2 vs 6 checkpoints of a 4 MB model."""
    shapes = {"tower/big": [1024, 1024], "tower/small": [16]}
    train_dir = fake_train_dir(tmp_path, {step: shapes for step in range(1, 7)})
    peaks = {}
    for start in (5, 1):
        tracemalloc.start()
        swa.average(train_dir, str(tmp_path / f"out{start}"), swa_start=start, log=None)
        peaks[start] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    model_bytes = 4 * 1024 * 1024
    assert peaks[1] < 1.3 * peaks[5] + 2**20, peaks
    assert peaks[1] < 5 * model_bytes, peaks
    result = read_all(str(tmp_path / "out1" / "model.ckpt-6"))
    np.testing.assert_allclose(result["tower/big"], 3.5)


@pytest.mark.slow
def test_window_chosen_on_the_fitting_files(dbof_dir, tiny_data, tmp_path):
    """--choose_window_on averages each candidate window, evaluates it on the
    given files only and keeps the best (ties: the smaller window); swa.json
    records every candidate; the best candidate's files become the output.
    Mutations: keeping a candidate when its GAP is lower (< for >) picks
    the worst window and fails the chosen == best check; installing the last candidate (3)
    instead of the best (1) fails the chosen == count check; recording the
    provenance without the ids digest (keep_ids=False) fails its check."""
    fit = str(tiny_data / "frame" / "validate*.tfrecord")
    out = tmp_path / "chosen"
    completed = run_module("swa.average", f"--train_dir={dbof_dir}", f"--output_dir={out}",
                           f"--choose_window_on={fit}", "--windows=1,2,3,7")
    info = json.loads((out / "swa.json").read_text())
    choice = info["window_choice"]
    assert [item["window"] for item in choice["candidates"]] == [1, 2, 3]   # 7 -> all 3
    assert [item["steps"] for item in choice["candidates"]] == [[30], [20, 30], [10, 20, 30]]
    best = max(choice["candidates"], key=lambda item: (item["gap"], -item["window"]))
    assert choice["chosen"] == best["window"] == info["count"] and choice["data_pattern"] == fit
    assert f"chose window {best['window']}" in completed.stdout
    # Its provenance: the stage, the fitting files one by one, their videos' digest.
    (made,) = info["provenance"]
    assert made["stage"] == "swa.average" and made["choice"] == "window"
    assert made["data_files"] == sorted(glob.glob(fit)) and len(made["video_ids_sha1"]) == 40
    assert sorted(os.listdir(tmp_path)) == ["chosen"]          # the candidates are gone
    # The chosen candidate is installed, not averaged again: the same tensors.
    again = swa.average(str(dbof_dir), str(tmp_path / "again"), last_n=best["window"], log=None)
    installed = read_all(str(out / info["checkpoint"]))
    fresh = read_all(str(tmp_path / "again" / again.checkpoint))
    assert installed.keys() == fresh.keys()
    assert all(np.array_equal(installed[key], fresh[key]) for key in fresh)
    assert swa.candidate_windows("", 20) == [1, 2, 4, 8, 16, 20]
    both = run_module("swa.average", f"--train_dir={dbof_dir}", f"--output_dir={tmp_path / 'x'}",
                      f"--choose_window_on={fit}", "--last_n=2", check=False)
    assert both.returncode == 2
    assert "--last_n and --choose_window_on: give one" in both.stderr
    bad = run_module("swa.average", f"--train_dir={dbof_dir}", f"--output_dir={tmp_path / 'y'}",
                     f"--choose_window_on={fit}", "--windows=0,2", check=False)
    assert bad.returncode == 2 and "--windows=0,2: every window must be 1 or more" in bad.stderr


@pytest.mark.slow
def test_candidate_windows_share_their_graphs(dbof_dir, tiny_data, tmp_path, monkeypatch):
    """choose_window builds the recompute graph and the evaluation graph once
    for all its candidate windows (a new session each time), and every
    candidate gets the values graphs built for it alone give: the installed
    checkpoint equals a fresh average of the chosen window, byte for byte,
    and each candidate's GAP equals a fresh evaluation of that window.
    Mutations: running every candidate in one session (random ops and the
    input pipeline carry on from the last candidate) changes the later
    windows' statistics and GAPs; building the graphs per candidate fails
    the counts."""
    built = {"recompute": 0, "evaluation": 0}
    recompute_init = bn_statistics.RecomputeGraph.__init__
    open_model = swa.predict.open_model

    def counted_recompute(self, *args, **kwargs):
        built["recompute"] += 1
        recompute_init(self, *args, **kwargs)

    def counted_open(*args, **kwargs):
        built["evaluation"] += 1
        return open_model(*args, **kwargs)

    monkeypatch.setattr(bn_statistics.RecomputeGraph, "__init__", counted_recompute)
    monkeypatch.setattr(swa.predict, "open_model", counted_open)
    fit = str(tiny_data / "frame" / "validate*.tfrecord")
    average_settings = {"swa_start": None, "swa_end": None, "bn_statistics": "recompute",
                        "recompute_batches": 3, "train_data_pattern": train_pattern(tiny_data),
                        "batch_size": 4, "seed": 5, "num_readers": 1, "compression": "auto"}
    settings = swa.WindowSettings(output_dir=str(tmp_path / "chosen"),
                                  average=swa.AverageSettings(**average_settings))
    choice = swa.choose_window(dbof_dir, fit, [1, 2, 3], settings, log=None)
    assert built == {"recompute": 1, "evaluation": 1}
    monkeypatch.undo()
    for candidate in choice.candidates:
        alone = str(tmp_path / f"alone{candidate.window}")
        swa.average(dbof_dir, alone, last_n=candidate.window, log=None, **average_settings)
        assert swa.evaluate_on(alone, fit, settings, log=None).gap == candidate.gap
    info = json.loads((tmp_path / "chosen" / "swa.json").read_text())
    installed = read_all(str(tmp_path / "chosen" / info["checkpoint"]))
    fresh = read_all(str(tmp_path / f"alone{choice.chosen}" / info["checkpoint"]))
    assert installed.keys() == fresh.keys()
    assert all(np.array_equal(installed[key], fresh[key]) for key in fresh), [
        key for key in fresh if not np.array_equal(installed[key], fresh[key])]
