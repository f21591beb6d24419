"""Training losses (ORIGINAL.md 3.3)."""
from __future__ import annotations

from typing import Callable, Dict

from training.errors import UserError
from training.tf_compat import tf

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


def get_loss(name: str) -> Callable[..., tf.Tensor]:
    if name not in LOSSES:
        raise UserError(f"--label_loss: unknown loss {name!r}; known: {', '.join(LOSSES)}")
    return LOSSES[name]


def regularization_loss(scope: str | None = None) -> tf.Tensor:
    """Sum of the L2 terms the model registered (the MoE weights only)."""
    terms = tf.losses.get_regularization_losses(scope=scope)
    return tf.add_n(terms) if terms else tf.constant(0.0)
