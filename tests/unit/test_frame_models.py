"""The six models: full-size parameter counts (docs/original.md 1.10, in the
preset records), presets and hyper-parameters, and tiny forward passes against
independent numpy code. Every per-preset test runs over models.presets.PRESETS,
so a new preset is tested by its record alone."""
from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

from conftest import REPO_ROOT
from models import frame_models, presets, registry
from models.tf_compat import tf
from support.numpy_reference import (
    bn_params,
    gru_cells_from,
    np_bn,
    np_context_gating,
    np_light_netvlad_nonlocal,
    np_moe,
    np_netvlad_nonlocal,
    np_prob_gating,
    np_soft_dbof,
    np_stacked_gru_final,
    randomize_bn_statistics,
    variable_values,
)
from training import model_builder

PRESETS = presets.PRESET_NAMES
RECORDS = {preset.name: preset for preset in presets.PRESETS}
# docs/original.md 1.10: the original six-model ensemble's variables.
ENSEMBLE_TOTAL = 521_178_044
GIB = 1 << 30


def build_graph(name, num_classes, feature_sizes, steps, hparams=None, training=True,
                batch=None):
    """Builds preset `name` under scope tower/ in the current graph."""
    model = registry.build(name, num_classes, feature_sizes, hparams)
    model_input = tf.placeholder(tf.float32, [batch, steps, sum(feature_sizes)], "input")
    num_frames = tf.placeholder(tf.int32, [batch], "num_frames")
    with tf.variable_scope("tower"):
        predictions = model(model_input, num_frames, training)
    return model, model_input, num_frames, predictions


def count(variables):
    return sum(int(np.prod(v.shape.as_list())) for v in variables)


# ---------------------------------------------------------------------------
# full size (built, never initialised)


@pytest.fixture(scope="module")
def full_size_counts():
    counts = {}
    for name in PRESETS:
        with tf.Graph().as_default():
            _, _, _, predictions = build_graph(name, 3862, [1024, 128], 300)
            assert predictions.shape.as_list() == [None, 3862]
            stats = [v for v in tf.global_variables() if v not in tf.trainable_variables()]
            assert all(v.op.name.endswith(("moving_mean", "moving_variance")) for v in stats)
            counts[name] = (count(tf.global_variables()), count(stats))
    return counts


@pytest.mark.parametrize("name", PRESETS)
def test_full_size_parameter_count_matches_original(full_size_counts, name):
    expected = RECORDS[name].parameters
    assert full_size_counts[name] == (expected.total, expected.bn_statistics)


def test_full_size_ensemble_fits_one_gib_in_bfloat16(full_size_counts):
    total = sum(full_size_counts[name][0] for name in presets.ENSEMBLE)
    assert total == ENSEMBLE_TOTAL
    assert total * 2 <= GIB
    assert total * 4 > GIB            # why bfloat16 is needed at all


def test_full_size_variable_names_follow_the_original():
    with tf.Graph().as_default():
        build_graph("nonlocal-earlyNetVLADModel", 3862, [1024, 128], 300, batch=1)
        shapes = {v.op.name: v.shape.as_list() for v in tf.global_variables()}
    assert shapes["tower/video_audio_VLAD/cluster_weights2"] == [1, 1152, 64]
    assert shapes["tower/video_audio_VLAD/nonlocal_g"] == [1152, 64]
    assert shapes["tower/hidden1_weights"] == [73728, 1024]
    assert shapes["tower/gating_weights_2"] == [1024, 1024]
    assert shapes["tower/gates/weights"] == [1024, 3 * 3862]
    assert shapes["tower/gating_prob_weights"] == [3862, 3862]
    with tf.Graph().as_default():
        build_graph("GRUModel", 3862, [1024, 128], 300)
        names = {v.op.name for v in tf.global_variables()}
    assert "tower/RNN/rnn/multi_rnn_cell/cell_1/gru_cell/candidate/kernel" in names
    assert not any("input_bn" in n for n in names)


# ---------------------------------------------------------------------------
# registry: presets, aliases, hyper-parameters


@pytest.mark.parametrize("name", PRESETS)
def test_presets_and_original_class_names_resolve_to_the_same_model(name):
    cls, hparams = registry.resolve(name)
    assert cls.__name__ == RECORDS[name].class_name
    for alias in RECORDS[name].aliases:
        alias_cls, alias_hparams = registry.resolve(alias)
        assert alias_cls is cls and alias_hparams == hparams
        assert presets.find(alias) is RECORDS[name]


def test_a_name_or_alias_used_twice_is_refused():
    """Mutation: index_presets without its duplicate check (a later alias
    silently wins) -> this fails."""
    gru = presets.get("GRUModel")
    twin = dataclasses.replace(presets.get("Soft-DBoF-4k"), aliases=("GruModel",))
    with pytest.raises(ValueError, match=r"models/presets.py: 'GruModel' names two presets "
                                         r"\(GRUModel and Soft-DBoF-4k\)"):
        presets.index_presets((gru, twin), ())
    with pytest.raises(ValueError, match="'GRUModel' names two presets"):
        presets.index_presets((gru, gru), ())
    with pytest.raises(ValueError, match="ENSEMBLE must list preset names"):
        presets.index_presets((gru,), ("GRUModel", "Soft-DBoF-4k"))


def test_the_ensemble_is_an_explicit_list_printed_for_pipeline_sh():
    """A preset joins the ensemble only through presets.ENSEMBLE, which
    `python -m models.presets` prints (pipeline.sh MODELS)."""
    assert presets.ENSEMBLE == ("nonlocal-NetVLADModel", "nonlocal-LightNetVLADModel",
                                "nonlocal-earlyNetVLADModel", "Soft-DBoF-4k", "Soft-DBoF-8k",
                                "GRUModel")
    printed = subprocess.run([sys.executable, "-m", "models.presets"], cwd=REPO_ROOT,
                             capture_output=True, text=True, check=True).stdout
    assert printed.split() == list(presets.ENSEMBLE)


def test_original_constants_are_the_defaults():
    a = registry.resolve("nonlocal-NetVLADModel")[1]
    assert (a["cluster_size"], a["audio_cluster_divisor"], a["hidden_size"]) == (64, 2, 1024)
    assert (a["moe_num_mixtures"], a["moe_prob_gating"], a["gating"]) == (8, True, True)
    assert a["nonlocal_temperature"] == 1.0 / 64 and a["nonlocal_value_path"] == "g"
    assert (a["num_samples"], a["frame_sampling"], a["moe_l2"]) == (300, "random", 1e-8)
    b = registry.resolve("nonlocal-LightNetVLADModel")[1]
    assert (b["moe_num_mixtures"], b["nonlocal_value_path"], b["nonlocal_temperature"]) == \
        (4, "phi", 0.0)
    c = registry.resolve("nonlocal-earlyNetVLADModel")[1]
    assert (c["cluster_size"], c["moe_num_mixtures"], c["nonlocal_value_path"]) == (64, 2, "phi")
    for name, clusters in (("Soft-DBoF-4k", 4000), ("Soft-DBoF-8k", 8000)):
        d = registry.resolve(name)[1]
        assert (d["cluster_size"], d["audio_cluster_divisor"], d["moe_num_mixtures"]) == \
            (clusters, 8, 2)
        assert d["moe_prob_gating"] is False and d["gating"] is False
    f = registry.resolve("GRUModel")[1]
    assert (f["gru_cells"], f["gru_layers"], f["moe_num_mixtures"]) == (1200, 2, 2)
    assert f["frame_sampling"] == "none" and f["moe_prob_gating"] is False


def test_same_hparam_key_has_the_same_type_everywhere():
    types = {}
    registry.model_names()
    for cls in registry.MODEL_CLASSES.values():
        for key, value in cls.DEFAULTS.items():
            types.setdefault(key, set()).add(type(value))
    assert {key: t for key, t in types.items() if len(t) > 1} == {}


def test_only_the_gru_is_deterministic():
    for name in PRESETS:
        model = registry.build(name, 10, [6, 4])
        assert model.samples_frames_randomly == (name != "GRUModel")
    assert not registry.build("Soft-DBoF-4k", 10, [6, 4],
                              {"frame_sampling": "uniform"}).samples_frames_randomly


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 + 0.5
    return {"random": "uniform", "g": "phi", "phi": "g", "none": "random"}[value]


@pytest.mark.parametrize("name", PRESETS)
def test_every_hparam_can_be_overridden(name):
    cls, defaults = registry.resolve(name)
    for key, value in defaults.items():
        _, hparams = registry.resolve(name, {key: _changed(value)})
        assert hparams[key] == _changed(value) != value, key
        assert registry.build(name, 10, [6, 4], {key: _changed(value)}).hparams[key] == \
            _changed(value)


def test_unknown_model_and_hparam_names_error():
    with pytest.raises(KeyError, match="unknown model"):
        registry.resolve("NetVLADModel")
    with pytest.raises(ValueError, match="bogus"):
        registry.resolve("nonlocal-NetVLADModel", {"bogus": 1})
    with pytest.raises(ValueError, match="cluster_size"):
        registry.resolve("GRUModel", {"cluster_size": 4})
    with pytest.raises(ValueError, match="gru_cells"):
        frame_models.SoftDbofModelLF(10, [6, 4], gru_cells=3)


def test_hparams_from_command_line_flags():
    flag_values = flags.FlagValues()
    model_builder.define_hparam_flags(flag_values)
    flag_values(["prog", "--cluster_size=4", "--nonlocal_value_path=g", "--gating=false",
                 "--moe_l2=1e-6"])
    overrides = model_builder.hparams_from_flags("nonlocal-LightNetVLADModel", flag_values)
    assert overrides == {"cluster_size": 4, "nonlocal_value_path": "g", "gating": False,
                         "moe_l2": 1e-6}
    assert model_builder.hparams_from_flags("GRUModel", flag_values) == {"moe_l2": 1e-6}


def test_bad_hparam_values_error():
    for name, hparams, match in (
            ("Soft-DBoF-4k", {"frame_sampling": "all"}, "frame_sampling"),
            ("GRUModel", {"frame_sampling": "all"}, "frame_sampling"),
            ("nonlocal-NetVLADModel", {"nonlocal_value_path": "theta"}, "nonlocal_value_path")):
        with tf.Graph().as_default(), pytest.raises(ValueError, match=match):
            build_graph(name, 10, [6, 4], 8, {**TINY[name], **hparams})


def test_feature_sizes_must_match_the_input():
    model = registry.build("Soft-DBoF-4k", 10, [6, 4], TINY["Soft-DBoF-4k"])
    with tf.Graph().as_default(), pytest.raises(ValueError, match="feature_sizes"):
        model(tf.zeros([2, 8, 11]), tf.constant([3, 4]), True)


# ---------------------------------------------------------------------------
# tiny models: structure follows the hyper-parameters

FEATURES = [6, 4]
CLASSES = 3
STEPS = 8
TINY_VLAD = {"cluster_size": 4, "hidden_size": 5, "num_samples": 5, "frame_sampling_seed": 1}
TINY = {
    "nonlocal-NetVLADModel": {**TINY_VLAD, "moe_num_mixtures": 3},
    "nonlocal-LightNetVLADModel": dict(TINY_VLAD),
    "nonlocal-earlyNetVLADModel": dict(TINY_VLAD),
    "Soft-DBoF-4k": {**TINY_VLAD, "cluster_size": 16},
    "Soft-DBoF-8k": {**TINY_VLAD, "cluster_size": 9},
    "GRUModel": {"gru_cells": 4},
}


def tiny_shapes(name, **extra):
    with tf.Graph().as_default():
        build_graph(name, CLASSES, FEATURES, STEPS, {**TINY[name], **extra})
        return {v.op.name[len("tower/"):]: v.shape.as_list() for v in tf.global_variables()}


def test_tiny_structure_follows_hparams():
    a = tiny_shapes("nonlocal-NetVLADModel", audio_cluster_divisor=4)
    assert a["video_VLAD/cluster_weights2"] == [1, 6, 4]
    assert a["audio_VLAD/cluster_weights2"] == [1, 4, 1]             # 4 // 4
    assert a["audio_VLAD/nonlocal_theta"] == [4, 1]                  # width K
    assert a["hidden1_weights"] == [6 * 4 + 4 * 1, 5]
    assert a["gates/weights"] == [5, CLASSES * 4]
    assert a["gating_prob_weights"] == [CLASSES, CLASSES]
    b = tiny_shapes("nonlocal-LightNetVLADModel", gating=False, moe_prob_gating=False)
    assert b["video_VLAD/nonlocal_theta"] == [6, 3]                  # width F/2
    assert b["audio_VLAD/nonlocal_out"] == [2, 4]
    assert "gating_weights_2" not in b and "gating_prob_weights" not in b
    assert b["gates/weights"] == [5, CLASSES * 5]                    # MoE-4
    c = tiny_shapes("nonlocal-earlyNetVLADModel")
    assert c["video_audio_VLAD/nonlocal_g"] == [10, 4]
    assert c["hidden1_weights"] == [40, 5]
    d = tiny_shapes("Soft-DBoF-4k", hidden_size=7)
    assert d["video_DBOF/cluster_weights"] == [6, 16]
    assert d["audio_DBOF/cluster_weights"] == [4, 2]                 # 16 // 8
    assert d["hidden1_weights"] == [18, 7]
    assert "gating_weights_2" not in d and "gating_prob_weights" not in d
    e = tiny_shapes("Soft-DBoF-8k", cluster_size=4)
    assert e["audio_DBOF/cluster_weights"] == [4, 1]                 # never 0 clusters
    f = tiny_shapes("GRUModel", gru_layers=3, moe_prob_gating=True)
    assert f["RNN/rnn/multi_rnn_cell/cell_2/gru_cell/gates/kernel"] == [8, 8]
    assert f["gates/weights"] == [12, CLASSES * 3]
    assert f["gating_prob_weights"] == [CLASSES, CLASSES]


def test_single_feature_input():
    with tf.Graph().as_default():
        build_graph("nonlocal-NetVLADModel", CLASSES, [6], STEPS, TINY["nonlocal-NetVLADModel"])
        names = {v.op.name for v in tf.global_variables()}
    assert "tower/video_VLAD/cluster_weights" in names
    assert not any("audio" in name for name in names)


def test_head_initialisers():
    with tf.Graph().as_default(), tf.Session() as sess:
        tf.set_random_seed(3)
        build_graph("nonlocal-NetVLADModel", 400, [64, 16], 4,
                    {"cluster_size": 16, "hidden_size": 256, "num_samples": 4,
                     "moe_num_mixtures": 2})
        sess.run(tf.global_variables_initializer())
        values = variable_values(sess, strip="tower/")
    assert values["hidden1_weights"].std() == pytest.approx(1 / math.sqrt(16), rel=0.02)
    assert values["hidden1_biases"].std() == pytest.approx(0.01, rel=0.2)
    assert values["gating_weights_2"].std() == pytest.approx(1 / 16, rel=0.02)
    assert values["gating_prob_weights"].std() == pytest.approx(1 / 20, rel=0.02)
    limit = math.sqrt(6 / (256 + 400 * 3))
    assert np.abs(values["gates/weights"]).max() <= limit
    assert values["gates/weights"].std() == pytest.approx(limit / math.sqrt(3), rel=0.02)
    np.testing.assert_array_equal(values["experts/biases"], 0.0)


# ---------------------------------------------------------------------------
# tiny forward passes against numpy


def np_uniform_sample(model_input, num_frames, num_samples):
    out = np.zeros((model_input.shape[0], num_samples, model_input.shape[2]), np.float64)
    for b, n in enumerate(num_frames):
        n = max(int(n), 1)
        for j in range(num_samples):
            out[b, j] = model_input[b, min(int(math.floor((j + 0.5) / num_samples * n)), n - 1)]
    return out


def np_head(pooled, v, hparams, training):
    hidden = pooled @ v["hidden1_weights"] + v["hidden1_biases"]
    if hparams["gating"]:
        hidden = np_context_gating(hidden, v["gating_weights_2"], bn_params(v, "gating_bn"),
                                   training)
    return np_classify(hidden, v, hparams, training)


def np_classify(x, v, hparams, training):
    p = np_moe(x, v["gates/weights"], v["experts/weights"], v["experts/biases"], CLASSES,
               hparams["moe_num_mixtures"])
    if hparams["moe_prob_gating"]:
        p = np_prob_gating(p, v["gating_prob_weights"], bn_params(v, "gating_prob_bn"),
                           training)
    return p


def np_model(name, hparams, v, model_input, num_frames, training):
    if name == "GRUModel":
        state = np_stacked_gru_final(model_input, num_frames,
                                     gru_cells_from(v, "RNN/rnn/", hparams["gru_layers"]))
        return np_classify(state, v, hparams, training)
    samples = hparams["num_samples"]
    frames = np_uniform_sample(model_input, num_frames, samples)
    flat = np_bn(frames.reshape(-1, sum(FEATURES)), bn_params(v, "input_bn"), training)
    frames = flat.reshape(-1, samples, sum(FEATURES))
    video, audio = frames[..., :FEATURES[0]], frames[..., FEATURES[0]:]
    if name == "nonlocal-earlyNetVLADModel":
        pooled = np_netvlad_nonlocal(frames, v, training, 1 / math.sqrt(sum(FEATURES)),
                                     hparams["nonlocal_value_path"], "video_audio_VLAD/")
    elif name == "nonlocal-NetVLADModel":
        pooled = np.concatenate([
            np_netvlad_nonlocal(x, v, training, hparams["nonlocal_temperature"],
                                hparams["nonlocal_value_path"], prefix)
            for x, prefix in ((video, "video_VLAD/"), (audio, "audio_VLAD/"))], axis=1)
    elif name == "nonlocal-LightNetVLADModel":
        pooled = np.concatenate([
            np_light_netvlad_nonlocal(x, v, training, 1 / math.sqrt(x.shape[-1]),
                                      hparams["nonlocal_value_path"], prefix)
            for x, prefix in ((video, "video_VLAD/"), (audio, "audio_VLAD/"))], axis=1)
    else:
        pooled = np.concatenate([np_soft_dbof(video, v, training, "video_DBOF/"),
                                 np_soft_dbof(audio, v, training, "audio_DBOF/")], axis=1)
    return np_head(pooled, v, hparams, training)


def tiny_inputs(seed=0, batch=3):
    rng = np.random.default_rng(seed)
    num_frames = np.array([8, 3, 5, 1, 0, 7][:batch], np.int32)
    model_input = rng.normal(size=(batch, STEPS, sum(FEATURES))).astype(np.float32)
    for b, n in enumerate(num_frames):
        model_input[b, n:] = 0.0
    norms = np.linalg.norm(model_input, axis=2, keepdims=True)
    return model_input / np.maximum(norms, 1e-6), num_frames


@pytest.mark.slow
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("name", PRESETS)
def test_tiny_forward_matches_numpy(name, training):
    hparams_in = {**TINY[name]}
    if name != "GRUModel":
        hparams_in["frame_sampling"] = "uniform"
    model_input, num_frames = tiny_inputs(batch=4)
    with tf.Graph().as_default(), tf.Session() as sess:
        model, x, n, predictions = build_graph(name, CLASSES, FEATURES, STEPS, hparams_in,
                                               training)
        sess.run(tf.global_variables_initializer())
        randomize_bn_statistics(sess, np.random.default_rng(5))
        values = variable_values(sess, strip="tower/")
        got = sess.run(predictions, {x: model_input, n: num_frames})
    want = np_model(name, model.hparams, values, model_input.astype(np.float64), num_frames,
                    training)
    assert got.shape == (4, CLASSES)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6)


def run_tiny(name, model_input, num_frames, training, hparams=None, seed=2018):
    with tf.Graph().as_default(), tf.Session() as sess:
        tf.set_random_seed(seed)
        _, x, n, predictions = build_graph(name, CLASSES, FEATURES, STEPS,
                                           {**TINY[name], **(hparams or {})}, training)
        sess.run(tf.global_variables_initializer())
        return sess.run(predictions, {x: model_input, n: num_frames})


@pytest.mark.slow
@pytest.mark.parametrize("name", PRESETS)
def test_zero_frame_video_gives_finite_output(name):
    model_input, num_frames = tiny_inputs(batch=6)
    assert num_frames[4] == 0
    for training in (True, False):
        got = run_tiny(name, model_input, num_frames, training)
        assert np.isfinite(got).all() and (got >= 0).all() and (got <= 1).all()
    only_empty = run_tiny(name, model_input[4:5], num_frames[4:5], False)
    assert np.isfinite(only_empty).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", PRESETS)
def test_padding_rows_are_never_read_and_seeded_sampling_repeats(name):
    model_input, num_frames = tiny_inputs(batch=3)
    first = run_tiny(name, model_input, num_frames, False)
    junk = model_input.copy()
    for b, count_b in enumerate(num_frames):
        junk[b, count_b:] = 9.0
    np.testing.assert_array_equal(run_tiny(name, junk, num_frames, False), first)
    if name != "GRUModel":
        other = run_tiny(name, model_input, num_frames, False, {"frame_sampling_seed": 2})
        assert np.abs(other - first).max() > 0     # a different draw of frames


@pytest.mark.parametrize("name", ["nonlocal-NetVLADModel", "Soft-DBoF-4k"])
def test_frame_sampling_none_reads_every_row(name):
    """With full videos, "none" equals "uniform" with one sample per row, and it
    also works when the number of rows is only known at run time."""
    model_input, _ = tiny_inputs(batch=2)
    num_frames = np.array([STEPS, STEPS], np.int32)
    results = []
    for hparams, steps in (({"frame_sampling": "uniform", "num_samples": STEPS}, STEPS),
                           ({"frame_sampling": "none"}, STEPS),
                           ({"frame_sampling": "none"}, None)):
        with tf.Graph().as_default(), tf.Session() as sess:
            tf.set_random_seed(1)
            _, x, n, predictions = build_graph(name, CLASSES, FEATURES, steps,
                                               {**TINY[name], **hparams}, training=True)
            sess.run(tf.global_variables_initializer())
            results.append(sess.run(predictions, {x: model_input, n: num_frames}))
    np.testing.assert_allclose(results[1], results[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(results[2], results[0], rtol=1e-5, atol=1e-7)
