"""models/layers.py and models/classifiers.py against independent numpy code.

The numpy references (tests/support/numpy_reference.py, shared with the pooling
and model tests) are written from the formulas of docs/original.md 1.1 to 1.3 and
1.8, not from the TensorFlow code.
"""
from __future__ import annotations

import numpy as np
import pytest

from models import classifiers, layers
from models.tf_compat import tf
from support.numpy_reference import (
    BN_DECAY,
    bn_params,
    gru_cells_from,
    np_bn,
    np_context_gating,
    np_gru_step,
    np_moe,
    np_prob_gating,
    np_stacked_gru_final,
    randomize_bn_statistics,
    set_variable,
    variable_values,
)

# ---------------------------------------------------------------------------
# batch norm


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_matches_numpy(training):
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, (7, 5)).astype(np.float32)
    with tf.Graph().as_default(), tf.Session() as sess:
        out = layers.batch_norm(tf.constant(x), training, "bn")
        sess.run(tf.global_variables_initializer())
        randomize_bn_statistics(sess, rng)
        values = variable_values(sess)
        got = sess.run(out)
        assert (len(tf.get_collection(tf.GraphKeys.UPDATE_OPS)) == 2) == training
    np.testing.assert_allclose(got, np_bn(x, bn_params(values, "bn"), training),
                               rtol=1e-4, atol=1e-4)


def test_batch_norm_variables_and_moving_average_update_with_bessel():
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 2.0, (2, 3, 4)).astype(np.float32)   # any leading rank
    with tf.Graph().as_default(), tf.Session() as sess:
        layers.batch_norm(tf.constant(x), True, "bn")
        names = {v.op.name: v.trainable for v in tf.global_variables()}
        assert names == {"bn/beta": True, "bn/gamma": True,
                         "bn/moving_mean": False, "bn/moving_variance": False}
        sess.run(tf.global_variables_initializer())
        sess.run(tf.get_collection(tf.GraphKeys.UPDATE_OPS))
        values = variable_values(sess)
    flat = x.reshape(-1, 4).astype(np.float64)
    mean, unbiased = flat.mean(0), flat.var(0, ddof=1)
    np.testing.assert_allclose(values["bn/moving_mean"], (1 - BN_DECAY) * mean, rtol=1e-4)
    np.testing.assert_allclose(values["bn/moving_variance"],
                               BN_DECAY * 1.0 + (1 - BN_DECAY) * unbiased, rtol=1e-5)


# ---------------------------------------------------------------------------
# context gating, MoE, probability gating


def gated_output_and_values(build, inputs, rng):
    """(output, variable values) of a gating layer with random BN statistics."""
    with tf.Graph().as_default(), tf.Session() as sess:
        out = build(tf.constant(inputs))
        sess.run(tf.global_variables_initializer())
        randomize_bn_statistics(sess, rng)
        return sess.run(out), variable_values(sess)


def test_moe_matches_numpy_with_column_layout_and_l2():
    rng = np.random.default_rng(3)
    classes, mixtures = 5, 3
    x = rng.normal(size=(4, 6)).astype(np.float32)
    with tf.Graph().as_default(), tf.Session() as sess:
        out = classifiers.mixture_of_experts(tf.constant(x), classes, mixtures, l2_scale=1e-3)
        reg = tf.add_n(tf.losses.get_regularization_losses())
        sess.run(tf.global_variables_initializer())
        values = variable_values(sess)
        assert set(values) == {"gates/weights", "experts/weights", "experts/biases"}
        values["experts/biases"] = rng.normal(size=classes * mixtures).astype(np.float32)
        set_variable(sess, "experts/biases", values["experts/biases"])
        got, got_reg = sess.run([out, reg])
    assert values["gates/weights"].shape == (6, classes * (mixtures + 1))
    assert values["experts/weights"].shape == (6, classes * mixtures)
    want = np_moe(x, values["gates/weights"], values["experts/weights"],
                  values["experts/biases"], classes, mixtures)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    want_reg = 1e-3 * ((values["gates/weights"] ** 2).sum()
                       + (values["experts/weights"] ** 2).sum()) / 2
    np.testing.assert_allclose(got_reg, want_reg, rtol=1e-5)


def test_moe_dummy_expert_can_switch_a_class_off():
    """A gate that puts all its weight on slot M (the dummy) gives p = 0."""
    classes, mixtures = 3, 2
    x = np.ones((2, 4), np.float32)
    with tf.Graph().as_default(), tf.Session() as sess:
        out = classifiers.mixture_of_experts(tf.constant(x), classes, mixtures)
        sess.run(tf.global_variables_initializer())
        gates = np.zeros((4, classes * (mixtures + 1)), np.float32)
        gates[:, 1 * (mixtures + 1) + mixtures] = 50.0      # class 1: dummy slot
        gates[:, 2 * (mixtures + 1) + 0] = 50.0             # class 2: expert 0
        experts = np.zeros((4, classes * mixtures), np.float32)
        experts[:, 2 * mixtures + 0] = 50.0                 # class 2, expert 0 says 1
        set_variable(sess, "gates/weights", gates)
        set_variable(sess, "experts/weights", experts)
        got = sess.run(out)
    np.testing.assert_allclose(got[:, 1], 0.0, atol=1e-6)
    np.testing.assert_allclose(got[:, 2], 1.0, atol=1e-5)
    # class 0: uniform gates over 3 slots, experts at 0.5 -> 2/3 * 0.5
    np.testing.assert_allclose(got[:, 0], 1.0 / 3.0, atol=1e-6)


GATING_CASES = {
    # layer: (build(inputs, training), input maker, weights, BN scope, numpy reference, atol)
    "context_gating": (layers.context_gating, lambda rng: rng.normal(size=(6, 8)),
                       "gating_weights_2", "gating_bn", np_context_gating, 1e-5),
    "probability_gating": (classifiers.probability_gating, lambda rng: rng.uniform(size=(5, 7)),
                           "gating_prob_weights", "gating_prob_bn", np_prob_gating, 1e-6),
}


@pytest.mark.parametrize("layer", sorted(GATING_CASES))
@pytest.mark.parametrize("training", [True, False])
def test_gating_layers_match_numpy(layer, training):
    build, make_input, weights, bn_scope, reference, atol = GATING_CASES[layer]
    rng = np.random.default_rng(2 if layer == "context_gating" else 4)
    x = make_input(rng).astype(np.float32)
    got, values = gated_output_and_values(lambda t: build(t, training), x, rng)
    width = x.shape[1]
    assert values[weights].shape == (width, width)
    want = reference(x, values[weights], bn_params(values, bn_scope), training)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=atol)


# ---------------------------------------------------------------------------
# GRU


def test_gru_cell_one_step_and_initial_biases():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 4)).astype(np.float32)
    h = rng.normal(size=(3, 5)).astype(np.float32)
    with tf.Graph().as_default(), tf.Session() as sess:
        cell = layers.GRUCell(5)
        out, state = cell(tf.constant(x), tf.constant(h))
        sess.run(tf.global_variables_initializer())
        values = variable_values(sess)
        np.testing.assert_array_equal(values["gru_cell/gates/bias"], np.ones(10))
        np.testing.assert_array_equal(values["gru_cell/candidate/bias"], np.zeros(5))
        for name in ("gru_cell/gates/bias", "gru_cell/candidate/bias"):
            values[name] = rng.normal(size=values[name].shape).astype(np.float32)
        for var in tf.global_variables():
            var.load(values[var.op.name], sess)
        got_out, got_state = sess.run([out, state])
    want = np_gru_step(x, h, values["gru_cell/gates/kernel"], values["gru_cell/gates/bias"],
                       values["gru_cell/candidate/kernel"], values["gru_cell/candidate/bias"])
    np.testing.assert_allclose(got_state, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got_out, got_state)


def test_stacked_gru_final_states_respect_sequence_lengths():
    rng = np.random.default_rng(6)
    inputs = rng.normal(size=(4, 6, 3)).astype(np.float32)
    lengths = np.array([6, 3, 0, 1], np.int32)
    with tf.Graph().as_default(), tf.Session() as sess:
        with tf.variable_scope("RNN"):
            _, state = tf.nn.dynamic_rnn(layers.StackedGRUCell(4, 2), tf.constant(inputs),
                                         sequence_length=tf.constant(lengths),
                                         dtype=tf.float32)
        sess.run(tf.global_variables_initializer())
        values = variable_values(sess)
        got = sess.run(state)
    assert got.shape == (4, 8)
    want = np_stacked_gru_final(inputs, lengths, gru_cells_from(values, "RNN/rnn/", 2))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[2], 0.0)      # zero frames: the zero state


# ---------------------------------------------------------------------------
# frame sampling


def _indexed_frames(batch, steps, num_frames):
    """Frame t of video b holds (t + 1) in every column; padding rows are 0."""
    x = np.zeros((batch, steps, 3), np.float32)
    for b, n in enumerate(num_frames):
        x[b, :n] = (np.arange(n) + 1)[:, None]
    return x


@pytest.mark.parametrize("mode", ["random", "uniform"])
def test_sample_frames_never_draws_padding(mode):
    num_frames = np.array([1, 5, 20, 3], np.int32)
    x = _indexed_frames(4, 20, num_frames)
    with tf.Graph().as_default(), tf.Session() as sess:
        out = layers.sample_frames(tf.constant(x), tf.constant(num_frames), 200, mode=mode)
        drawn = sess.run(out)[..., 0].astype(int) - 1     # the frame index drawn
    assert drawn.shape == (4, 200)
    for b, n in enumerate(num_frames):
        assert drawn[b].min() >= 0 and drawn[b].max() < n
        if mode == "random":
            assert set(drawn[b]) == set(range(n))          # 200 draws cover <= 20 frames
        else:
            want = np.floor((np.arange(200) + 0.5) / 200 * n).astype(int)
            np.testing.assert_array_equal(drawn[b], want)


def _draw(seed_graph, seed_op):
    num_frames = np.array([7, 11], np.int32)
    x = _indexed_frames(2, 11, num_frames)
    with tf.Graph().as_default(), tf.Session() as sess:
        tf.set_random_seed(seed_graph)
        out = layers.sample_frames(tf.constant(x), tf.constant(num_frames), 50, seed=seed_op)
        return sess.run(out)


def test_sample_frames_deterministic_given_seed():
    a, b = _draw(2018, 3), _draw(2018, 3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, _draw(2018, 4))


def test_sample_frames_zero_frames_reads_zero_padding():
    x = np.ones((2, 4, 3), np.float32)
    x[0] = 0.0   # video 0 has no frames: all padding
    with tf.Graph().as_default(), tf.Session() as sess:
        out = sess.run(layers.sample_frames(tf.constant(x), tf.constant([0, 4]), 9))
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[0], 0.0)


def test_l2_normalize_frames_zero_rows_stay_zero():
    x = np.array([[[3.0, 4.0], [0.0, 0.0]]], np.float32)
    with tf.Graph().as_default(), tf.Session() as sess:
        out = sess.run(layers.l2_normalize_frames(tf.constant(x)))
    np.testing.assert_allclose(out, [[[0.6, 0.8], [0.0, 0.0]]], rtol=1e-6)
