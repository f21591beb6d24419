"""The three ways a bfloat16 checkpoint computes at inference (--bf16_compute):
cast_each_step, cast_at_load and bfloat16. Each is within tolerance of the
float32 model, the first two are the same arithmetic, the exports stay bf16
on disk and load the starter way."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from bfloat16_patch import convert
from conftest import TEST_SIZE, TINY_CLASSES, run_module
from ensemble import build, export
from models import layers, presets
from models.tf_compat import tf
from support.members import checkpoint_dtypes, make_member, random_batch, starter_predictions
from training import member_graph
from training import precision as bf16
from training import predict as prediction
from training.cli import UserError
from training.members import load_member

MODES = bf16.BF16_COMPUTE_MODES
PRESETS = {key: (name, presets.get(name).hparams_for(TEST_SIZE)) for key, name in (
    ("netvlad", "nonlocal-NetVLADModel"), ("light", "nonlocal-LightNetVLADModel"),
    ("dbof", "Soft-DBoF-8k"), ("gru", "GRUModel"))}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """{key: (float32 dir, its bf16 conversion)}; fixed frame_sampling_seed,
    so every graph draws the same frames."""
    root = tmp_path_factory.mktemp("bf16_modes")
    out = {}
    for index, (key, (name, hparams)) in enumerate(PRESETS.items()):
        extra = {} if name == "GRUModel" else {"frame_sampling_seed": 30 + index}
        fp32 = make_member(root / key, name, seed=index, **hparams, **extra)
        out[key] = (fp32, str(root / f"{key}_bf16"))
        convert.convert_checkpoint(fp32, out[key][1], log=None)
    return out


def predict(member_dirs, features, num_frames, mode=None, tile_num=3, graph_out=None):
    members = [load_member(d) for d in member_dirs]
    graph = tf.Graph()
    with graph.as_default():
        tf.set_random_seed(666)
        ensemble = member_graph.build_ensemble_graph(
            members, [1.0 / len(members)] * len(members), tile_num, bf16_compute=mode)
        savers = member_graph.member_savers(members, ensemble)
    with tf.Session(graph=graph) as sess:
        member_graph.restore_members(sess, members, savers)
        out = sess.run(ensemble.predictions, {ensemble.input_batch_raw: features,
                                              ensemble.num_frames: num_frames})
    if graph_out is not None:
        graph_out.append((graph, ensemble))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("key", list(PRESETS))
def test_each_mode_is_within_tolerance_of_float32(pairs, key):
    fp32_dir, bf16_dir = pairs[key]
    features, num_frames = random_batch(4, seed=5)
    reference = predict([fp32_dir], features, num_frames)
    out = {mode: predict([bf16_dir], features, num_frames, mode) for mode in MODES}
    for mode in MODES:
        assert out[mode].shape == (4, TINY_CLASSES)
        assert np.all(np.isfinite(out[mode]))
        np.testing.assert_allclose(out[mode], reference, atol=0.02)
    # cast_each_step and cast_at_load do the same float32 arithmetic.
    np.testing.assert_allclose(out["cast_at_load"], out["cast_each_step"], rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(out["bfloat16"], out["cast_each_step"], atol=0.01)


@pytest.mark.slow
def test_graphs_of_the_modes(pairs):
    """cast_at_load: float32 variables; bfloat16: bf16 variables and the
    weight matmuls in bf16, the hidden layer's float32 view unused."""
    fp32_dir, bf16_dir = pairs["netvlad"]
    features, num_frames = random_batch(2, seed=6)
    dtypes = {}
    for mode in MODES:
        graphs = []
        predict([bf16_dir], features, num_frames, mode, graph_out=graphs)
        graph, ensemble = graphs[0]
        dtypes[mode] = {var.dtype.base_dtype for var in ensemble.variables}
        matmuls = [op for op in graph.get_operations()
                   if op.type in ("MatMul", "BatchMatMulV2", "BatchMatMulV3")]
        bf16_matmuls = [op for op in matmuls if op.get_attr("T") == tf.bfloat16]
        if mode == "bfloat16":
            # cluster (x2), non-local (x2 x 4), hidden1, gating, MoE (x2), GP
            assert len(bf16_matmuls) >= 14
            views = [op for op in graph.get_operations() if op.type == "Cast"
                     and op.inputs[0].dtype == tf.bfloat16
                     and op.inputs[0].op.name.startswith("model0/hidden1_weights")]
            assert views and not [c for op in views for c in op.outputs[0].consumers()]
        else:
            assert not bf16_matmuls
    assert dtypes == {"cast_each_step": {tf.bfloat16}, "cast_at_load": {tf.float32},
                      "bfloat16": {tf.bfloat16}}


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_export_stays_bf16_and_loads_like_starter(pairs, tmp_path, mode):
    members = [pairs["dbof"][1], pairs["gru"][1], pairs["netvlad"][0]]
    features, num_frames = random_batch(3, seed=7)
    out_dir = str(tmp_path / mode)
    payload = build.build_and_export(members, [1, 1, 1], out_dir, tile_num=2, log=None,
                                     bf16_compute=mode)
    assert payload.bf16_compute == mode
    with open(os.path.join(out_dir, "ensemble.json")) as handle:
        assert json.load(handle)["bf16_compute"] == mode
    dtypes = checkpoint_dtypes(os.path.join(out_dir, "inference_model"))
    assert {d for k, d in dtypes.items() if k.startswith(("model0/", "model1/"))} == \
        {"bfloat16"}
    assert {d for k, d in dtypes.items() if k.startswith("model2/")} == {"float32"}
    exported = starter_predictions(out_dir, features, num_frames)
    built = predict(members, features, num_frames, mode, tile_num=2)
    np.testing.assert_allclose(exported, built, rtol=1e-5, atol=1e-6)
    # The starter's order (restore, then the local-variable initialiser) too.
    model = prediction.open_model(out_dir)
    try:
        again = model.session.run(model.predictions, {model.input_batch_raw: features,
                                                      model.num_frames: num_frames})
        variables = {v.dtype.base_dtype for v in model.graph.get_collection(
            tf.GraphKeys.GLOBAL_VARIABLES) if v.op.name.startswith("model0/")}
    finally:
        model.close()
    np.testing.assert_allclose(again, exported, rtol=1e-5, atol=1e-6)
    assert variables == ({tf.float32} if mode == "cast_at_load" else {tf.bfloat16})


@pytest.mark.slow
def test_same_export_size_in_every_mode(pairs, tmp_path):
    sizes = {}
    for mode in MODES:
        out_dir = str(tmp_path / mode)
        sizes[mode] = build.build_and_export([pairs["light"][1]], [1], out_dir, tile_num=2,
                                             log=None, bf16_compute=mode).exported_bytes
        data = os.path.getsize(os.path.join(out_dir, "inference_model.data-00000-of-00001"))
        sizes[mode + "_data"] = data
    assert sizes["cast_each_step_data"] == sizes["cast_at_load_data"] == sizes["bfloat16_data"]


def test_single_model_dir_modes_and_upload(pairs, tmp_path):
    features, num_frames = random_batch(3, seed=8)
    bf16_dir = pairs["dbof"][1]
    out = {}
    for mode in MODES:
        model = prediction.open_model(bf16_dir, bf16_compute=mode)
        try:
            out[mode] = model.session.run(model.predictions, {model.input_batch_raw: features,
                                                              model.num_frames: num_frames})
            if mode == "cast_at_load":
                tgz = str(tmp_path / "upload.tgz")
                export.write_model_tgz(model, tgz)
        finally:
            model.close()
    np.testing.assert_allclose(out["cast_at_load"], out["cast_each_step"], rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(out["bfloat16"], out["cast_each_step"], atol=0.01)
    with export.extracted_model_tgz(tgz) as model_dir:
        dtypes = checkpoint_dtypes(os.path.join(model_dir, "inference_model"))
        assert set(dtypes.values()) == {"bfloat16"}
        loaded = starter_predictions(model_dir, features, num_frames)
    # The exported graph keeps its ops' seeds: the same draws, the same scores.
    np.testing.assert_allclose(loaded, out["cast_at_load"], rtol=1e-5, atol=1e-7)


def test_bad_modes(pairs, tmp_path):
    with pytest.raises(UserError, match="--bf16_compute: one of"):
        build.build_and_export([pairs["dbof"][1]], [1], str(tmp_path / "x"), tile_num=2,
                               log=None, bf16_compute="fp8")
    out_dir = str(tmp_path / "ensemble")
    build.build_and_export([pairs["dbof"][1]], [1], out_dir, tile_num=2, log=None)
    with pytest.raises(UserError, match="applies to a single model dir"):
        prediction.open_model(out_dir, bf16_compute="bfloat16")


@pytest.mark.slow
def test_command_line_flag(pairs, tmp_path):
    out_dir = str(tmp_path / "cli")
    run_module("ensemble.build", f"--model_dirs={pairs['dbof'][1]}", f"--output_dir={out_dir}",
               "--tile_num=2", "--bf16_compute=cast_at_load")
    with open(os.path.join(out_dir, "ensemble.json")) as handle:
        assert json.load(handle)["bf16_compute"] == "cast_at_load"
    bad = run_module("ensemble.build", f"--model_dirs={pairs['dbof'][1]}",
                     f"--output_dir={tmp_path / 'bad'}", "--bf16_compute=half", check=False)
    assert bad.returncode != 0 and "--bf16_compute: one of" in bad.stderr


def test_matmul_follows_slices_and_concats_of_bf16_weights():
    """layers.matmul finds the bf16 weight behind w[a:b] and tf.concat of
    registered views (as the layer-by-layer GRU slices its kernels), also
    when called inside a while loop."""
    rng = np.random.RandomState(0)
    x_value = rng.normal(size=(3, 6)).astype(np.float32)
    w_value = rng.normal(size=(10, 4)).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default():
        with tf.variable_scope("m", custom_getter=bf16.bfloat16_compute_getter):
            weights = tf.get_variable("w", [10, 4])
        x = tf.constant(x_value)
        top = weights[:6]
        both = tf.concat([weights[6:], weights[6:]], axis=1)
        direct = layers.matmul(x, top)
        joined = layers.matmul(x[:, :4], both)

        def body(i, acc):
            return i + 1, acc + layers.matmul(x, top)

        _, looped = tf.while_loop(lambda i, acc: i < 2, body,
                                  [tf.constant(0), tf.zeros([3, 4])])
        assert layers.bfloat16_weight(top) is not None
        assert layers.bfloat16_weight(x) is None
        init = tf.global_variables_initializer()
        assign = tf.get_collection(tf.GraphKeys.GLOBAL_VARIABLES)[0].assign(
            tf.cast(tf.constant(w_value), tf.bfloat16))
    with tf.Session(graph=graph) as sess:
        sess.run(init)
        sess.run(assign)
        direct, joined, looped = sess.run([direct, joined, looped])
    rounded = w_value.astype(tf.bfloat16.as_numpy_dtype).astype(np.float32)
    np.testing.assert_allclose(direct, x_value @ rounded[:6], atol=0.05)
    np.testing.assert_allclose(joined, x_value[:, :4] @ np.concatenate([rounded[6:]] * 2, 1),
                               atol=0.05)
    np.testing.assert_allclose(looped, 2 * direct, rtol=1e-5)
    kinds = {op.get_attr("T") for op in graph.get_operations() if op.type == "MatMul"}
    assert kinds == {tf.bfloat16}
