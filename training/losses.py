"""Losses (docs/original.md 3.3): the cross-entropy in TensorFlow (training)
and in numpy (stacking's objective and report), one formula:

    CE = mean over videos of sum over classes of
         -(y log(p + eps) + (1 - y) log(1 - p + eps)),   eps = 1e-5
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import numpy as np

from models.tf_compat import tf
from training.cli import UserError

# The original wrote 10e-6, which is 1e-5; kept for parity.
CROSS_ENTROPY_EPSILON = 1e-5


def cross_entropy_loss(predictions: tf.Tensor, labels: tf.Tensor,
                       epsilon: float = CROSS_ENTROPY_EPSILON) -> tf.Tensor:
    """Per-class binary cross-entropy on probabilities, summed over classes and
    averaged over the batch. predictions, labels [B, C] (labels may be soft).
    """
    labels = tf.cast(labels, tf.float32)
    per_class = -(labels * tf.log(predictions + epsilon)
                  + (1.0 - labels) * tf.log(1.0 - predictions + epsilon))
    return tf.reduce_mean(tf.reduce_sum(per_class, axis=1))


LOSSES: Dict[str, Callable[..., tf.Tensor]] = {"CrossEntropyLoss": cross_entropy_loss}


def segment_cross_entropy(predictions: tf.Tensor, rated_class: tf.Tensor, rating: tf.Tensor,
                          video_labels: tf.Tensor, negative_weight: float = 1.0,
                          epsilon: float = CROSS_ENTROPY_EPSILON) -> tf.Tensor:
    """The segment fine-tuning loss (docs/segments.md "Segment fine-tuning").

    predictions [S, C] of S rated segments; rated_class int [S], the class of
    each rating; rating [S], its 0/1 score; video_labels [S, C], the multi-hot
    labels of the segment's video. The mean over the segments of

        CE(p[s, c_s], y_s) + negative_weight * sum over j of -log(1 - p[s, j] + eps)

    with j every class neither among the video's labels nor c_s (a class not
    in the video is absent from each of its segments; the rated pair is
    counted once, by its rating). CE as cross_entropy_loss, eps = 1e-5.
    """
    predictions = tf.convert_to_tensor(predictions)
    rated = tf.one_hot(tf.cast(rated_class, tf.int32), tf.shape(predictions)[1],
                       dtype=predictions.dtype)
    y = tf.cast(rating, predictions.dtype)
    p = tf.reduce_sum(predictions * rated, axis=1)
    rated_term = -(y * tf.log(p + epsilon) + (1.0 - y) * tf.log(1.0 - p + epsilon))
    absent = (1.0 - tf.cast(video_labels, predictions.dtype)) * (1.0 - rated)
    negative_term = -tf.reduce_sum(absent * tf.log(1.0 - predictions + epsilon), axis=1)
    return tf.reduce_mean(rated_term + float(negative_weight) * negative_term)


def get_loss(name: str) -> Callable[..., tf.Tensor]:
    if name not in LOSSES:
        raise UserError(f"--label_loss: unknown loss {name!r}; known: {', '.join(LOSSES)}")
    return LOSSES[name]


def regularization_loss(scope: str | None = None) -> tf.Tensor:
    """Sum of the L2 terms the model registered (the MoE weights only)."""
    terms = tf.losses.get_regularization_losses(scope=scope)
    return tf.add_n(terms) if terms else tf.constant(0.0)


def cross_entropy_numpy(predictions: np.ndarray, labels: np.ndarray,
                        epsilon: float = CROSS_ENTROPY_EPSILON) -> float:
    """cross_entropy_loss in float64 numpy; predictions, labels [N, C]."""
    value, _ = cross_entropy_sum_and_slope(np.asarray(predictions, np.float64), labels, epsilon,
                                           with_slope=False)
    return value / max(len(predictions), 1)


def cross_entropy_sum_and_slope(predictions: np.ndarray, labels: np.ndarray,
                                epsilon: float = CROSS_ENTROPY_EPSILON, with_slope: bool = True
                                ) -> Tuple[float, Optional[np.ndarray]]:
    """(sum over videos and classes of the per-class CE, dCE/dp [N, C] or
    None), computed in the dtype of predictions (stacking passes float32
    chunks to bound memory)."""
    p = predictions
    y = np.asarray(labels).astype(p.dtype)
    total = float(-np.sum(y * np.log(p + epsilon) + (1.0 - y) * np.log(1.0 - p + epsilon),
                          dtype=np.float64))
    if not with_slope:
        return total, None
    return total, -y / (p + epsilon) + (1.0 - y) / (1.0 - p + epsilon)
