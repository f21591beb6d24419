"""models/pooling.py against independent numpy implementations of docs/original.md 1.4-1.7."""
from __future__ import annotations

import math

import numpy as np
import pytest

from models import pooling
from models.tf_compat import tf
from support.numpy_reference import (
    np_light_netvlad_nonlocal,
    np_netvlad_nonlocal,
    np_soft_dbof,
    np_vlad_normalize,
    randomize_bn_statistics,
    variable_values,
)

# ---------------------------------------------------------------------------
# helpers

B, N, F, K = 3, 5, 6, 4


def run_module(module, frames, training, seed=0):
    """Builds module in scope "pool", initialises (BN stats randomised) and
    returns (output, variable values without the scope prefix)."""
    with tf.Graph().as_default(), tf.Session() as sess:
        tf.set_random_seed(seed)
        with tf.variable_scope("pool"):
            out = module(tf.constant(frames.reshape(-1, frames.shape[-1])), training)
        sess.run(tf.global_variables_initializer())
        randomize_bn_statistics(sess, np.random.default_rng(seed))
        values = variable_values(sess, strip="pool/")
        return sess.run(out), values


def random_frames(seed=0, shape=(B, N, F)):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# ---------------------------------------------------------------------------
# NetVLAD with the centroid term (models A and C)


@pytest.mark.parametrize("training", [True, False])
def test_netvlad_nonlocal_model_a_matches_numpy(training):
    frames = random_frames(1)
    module = pooling.NetVLADNonLocal(F, K, N, temperature=1.0 / 64, value_path="g")
    got, values = run_module(module, frames, training)
    assert got.shape == (B, F * K) == (B, module.output_size)
    assert values["cluster_weights2"].shape == (1, F, K)
    for name in ("nonlocal_theta", "nonlocal_phi", "nonlocal_g"):
        assert values[name].shape == (F, K)          # width K
    assert values["nonlocal_out"].shape == (K, F)
    want = np_netvlad_nonlocal(frames, values, training, 1.0 / 64, "g")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("value_path", ["phi", "g"])
def test_netvlad_nonlocal_early_scale_and_value_paths(value_path):
    frames = random_frames(2)
    module = pooling.NetVLADNonLocal(F, K, N, temperature=0.0, value_path=value_path)
    assert module.scale == pytest.approx(1.0 / math.sqrt(F))
    got, values = run_module(module, frames, True)
    want = np_netvlad_nonlocal(frames, values, True, 1.0 / math.sqrt(F), value_path)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    other = np_netvlad_nonlocal(frames, values, True, 1.0 / math.sqrt(F),
                                "g" if value_path == "phi" else "phi")
    assert np.abs(got - other).max() > 1e-3           # the two paths really differ


def test_netvlad_variable_names_and_order():
    with tf.Graph().as_default():
        with tf.variable_scope("video_VLAD"):
            pooling.NetVLADNonLocal(F, K, N, 1.0 / 64)(tf.zeros([B * N, F]), True)
        names = [v.op.name for v in tf.global_variables()]
    assert names == ["video_VLAD/cluster_weights", "video_VLAD/cluster_bn/beta",
                     "video_VLAD/cluster_bn/gamma", "video_VLAD/cluster_bn/moving_mean",
                     "video_VLAD/cluster_bn/moving_variance", "video_VLAD/cluster_weights2",
                     "video_VLAD/nonlocal_theta", "video_VLAD/nonlocal_phi",
                     "video_VLAD/nonlocal_g", "video_VLAD/nonlocal_out"]


# ---------------------------------------------------------------------------
# LightNetVLAD (model B)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("value_path", ["phi", "g"])
def test_light_netvlad_nonlocal_matches_numpy(training, value_path):
    frames = random_frames(3)
    module = pooling.LightNetVLADNonLocal(F, K, N, value_path=value_path)
    got, values = run_module(module, frames, training)
    assert "cluster_weights2" not in values
    for name in ("nonlocal_theta", "nonlocal_phi", "nonlocal_g"):
        assert values[name].shape == (F, F // 2)     # width F/2
    assert values["nonlocal_out"].shape == (F // 2, F)
    want = np_light_netvlad_nonlocal(frames, values, training, 1.0 / math.sqrt(F), value_path)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_light_netvlad_default_is_the_released_phi_path():
    assert pooling.LightNetVLADNonLocal(F, K, N).value_path == "phi"
    assert pooling.NetVLADNonLocal(F, K, N).value_path == "g"


@pytest.mark.parametrize("value_path,g_used", [("phi", False), ("g", True)])
def test_nonlocal_g_gets_gradient_only_on_the_g_path(value_path, g_used):
    with tf.Graph().as_default():
        out = pooling.LightNetVLADNonLocal(F, K, N, value_path=value_path)(
            tf.constant(random_frames(4).reshape(-1, F)), True)
        [g_weights] = [v for v in tf.global_variables() if v.op.name == "nonlocal_g"]
        gradient = tf.gradients(tf.reduce_sum(out * out[::-1]), [g_weights])[0]
    assert (gradient is not None) == g_used


def test_nonlocal_block_rejects_unknown_value_path():
    with tf.Graph().as_default(), pytest.raises(ValueError, match="nonlocal_value_path"):
        pooling.nonlocal_block(tf.zeros([1, K, F]), 2, 0.1, "theta")


# ---------------------------------------------------------------------------
# normalisation layout


def test_vlad_normalize_uses_f_times_k_plus_k_order():
    vlad = np.arange(1, 1 + 2 * K * F, dtype=np.float32).reshape(2, K, F)
    with tf.Graph().as_default(), tf.Session() as sess:
        got = sess.run(pooling.vlad_normalize(tf.constant(vlad)))
    intra = vlad / np.linalg.norm(vlad, axis=2, keepdims=True)
    b, k, f = 1, 2, 3
    scale = got[b, 0] / intra[b, 0, 0]          # the global norm factor
    assert got[b, f * K + k] == pytest.approx(intra[b, k, f] * scale, rel=1e-5)
    np.testing.assert_allclose(got, np_vlad_normalize(vlad), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)


# ---------------------------------------------------------------------------
# Soft-DBoF (models D and E)


@pytest.mark.parametrize("training", [True, False])
def test_soft_dbof_matches_numpy(training):
    frames = random_frames(5)
    module = pooling.SoftDBoF(F, 7, N)
    got, values = run_module(module, frames, training)
    assert sorted(values) == ["cluster_bn/beta", "cluster_bn/gamma", "cluster_bn/moving_mean",
                              "cluster_bn/moving_variance", "cluster_weights"]
    assert got.shape == (B, 7)
    np.testing.assert_allclose(got, np_soft_dbof(frames, values, training), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# initialisers (full-size video branch of model A, F = 1024, K = 64)


def test_initialisers_have_the_original_standard_deviations():
    with tf.Graph().as_default(), tf.Session() as sess:
        tf.set_random_seed(1)
        module = pooling.NetVLADNonLocal(1024, 64, 2, temperature=1.0 / 64)
        module(tf.zeros([2, 1024]), True)
        sess.run(tf.global_variables_initializer())
        values = variable_values(sess)
    for name in ("cluster_weights", "cluster_weights2", "nonlocal_theta", "nonlocal_phi",
                 "nonlocal_g"):
        assert values[name].mean() == pytest.approx(0.0, abs=0.002)
        assert values[name].std() == pytest.approx(1.0 / 32, rel=0.02), name
    assert values["nonlocal_out"].std() == pytest.approx(1.0 / 8, rel=0.02)
