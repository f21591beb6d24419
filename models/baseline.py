"""A simple frame-level baseline: mean of the valid frames + mixture of experts."""
from __future__ import annotations

from models import classifiers
from models.base import FrameModel
from models.tf_compat import tf


class FrameMeanMoeModel(FrameModel):
    """Average pooling over the valid frames, then an MoE classifier.

    model_input [B, T, D], num_frames [B] -> probabilities [B, C].
    Cheap and deterministic: the smoke-test model of the pipeline.
    """

    DEFAULTS = {"moe_num_mixtures": 2, "moe_l2": 1e-8}

    def __call__(self, model_input, num_frames, is_training, fingerprints=None):
        del fingerprints  # (no frame sampling)
        frames = tf.cast(tf.maximum(num_frames, 1), tf.float32)[:, None]
        # Padded rows are zero, so the sum over all rows is the sum over valid ones.
        pooled = tf.reduce_sum(model_input, axis=1) / frames
        return classifiers.mixture_of_experts(
            pooled, self.num_classes, self.hparams["moe_num_mixtures"],
            self.hparams["moe_l2"])
