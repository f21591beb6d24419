"""Video-level classifiers: mixture of experts and probability gating.

Shapes: inputs [B, D] -> probabilities [B, C].
"""
from __future__ import annotations

import math

from models import layers
from models.tf_compat import tf


def mixture_of_experts(inputs: tf.Tensor, num_classes: int, num_mixtures: int,
                       l2_scale: float = 1e-8) -> tf.Tensor:
    """MoE with M experts per class and a dummy expert that always says 0.

    gates [D, C*(M+1)] (no bias), experts [D, C*M] (+bias), both Glorot-uniform
    and L2-regularised. Column c*(M+1)+m of gates and c*M+m of experts belong
    to class c, mixture m.
    p_c = sum_{m<M} softmax(gates_c)_m * sigmoid(experts_c)_m
    """
    gate_logits = layers.fully_connected(inputs, num_classes * (num_mixtures + 1), "gates",
                                         use_bias=False, l2_scale=l2_scale)
    expert_logits = layers.fully_connected(inputs, num_classes * num_mixtures, "experts",
                                           l2_scale=l2_scale)
    gates = tf.nn.softmax(tf.reshape(gate_logits, [-1, num_mixtures + 1]))
    experts = tf.sigmoid(tf.reshape(expert_logits, [-1, num_mixtures]))
    probabilities = tf.reduce_sum(gates[:, :num_mixtures] * experts, axis=1)
    return tf.reshape(probabilities, [-1, num_classes])


def probability_gating(probabilities: tf.Tensor, is_training: bool) -> tf.Tensor:
    """p * sigmoid(BN(p W)), W [C, C] ~ N(0, 1/sqrt(C)) (`gating_prob_weights`)."""
    num_classes = probabilities.shape.as_list()[-1]
    weights = tf.get_variable("gating_prob_weights", [num_classes, num_classes],
                              initializer=layers.normal(1.0 / math.sqrt(num_classes)))
    gates = layers.batch_norm(layers.matmul(probabilities, weights), is_training,
                              "gating_prob_bn")
    return probabilities * tf.sigmoid(gates)
