"""The original's cross-entropy on probabilities and the L2 terms."""
import numpy as np
import pytest

from models.tf_compat import tf
from training import losses
from training.cli import UserError


def test_cross_entropy_matches_numpy():
    rng = np.random.default_rng(0)
    predictions = rng.uniform(0.0, 1.0, size=(4, 7)).astype(np.float32)
    labels = (rng.uniform(size=(4, 7)) < 0.3).astype(np.float32)
    eps = 1e-5
    expected = np.mean(np.sum(-(labels * np.log(predictions + eps)
                                + (1 - labels) * np.log(1 - predictions + eps)), axis=1))
    with tf.Graph().as_default(), tf.Session() as sess:
        value = sess.run(losses.cross_entropy_loss(tf.constant(predictions), tf.constant(labels)))
    assert value == pytest.approx(expected, rel=1e-5)


def test_soft_targets_and_extremes_are_finite():
    with tf.Graph().as_default(), tf.Session() as sess:
        value = sess.run(losses.cross_entropy_loss(tf.constant([[0.0, 1.0]]),
                                                   tf.constant([[0.5, 1.0]])))
    assert np.isfinite(value) and value > 0


def test_regularization_loss_sums_the_collection():
    with tf.Graph().as_default(), tf.Session() as sess:
        tf.get_variable("w", initializer=tf.constant([3.0, 4.0]),
                        regularizer=lambda w: 0.5 * tf.nn.l2_loss(w))
        sess.run(tf.global_variables_initializer())
        assert sess.run(losses.regularization_loss()) == pytest.approx(0.5 * 25 / 2)


def test_unknown_loss_names_the_flag():
    with pytest.raises(UserError, match="--label_loss"):
        losses.get_loss("HingeLoss")
