"""The six frame-level models of the final ensemble (see docs/original.md section 1).

Class names are the original ones (``--model=NetVLADModelLF`` keeps working);
the presets named after the run scripts (``nonlocal-NetVLADModel``, ...) are
records in models/presets.py. DEFAULTS hold the constants the original hard-coded
in ``create_model``; every one of them can be overridden (command line, preset,
model_flags.json).

Shared hyper-parameter keys (same meaning and type in every class):
  num_samples           frames drawn per video (the original ``iterations``)
  frame_sampling        "random" (with replacement, as the original, at train
                        and inference alike), "uniform" (evenly spaced,
                        deterministic) or "none" (the padded input as it is)
  frame_sampling_seed   op seed of the random draw; -1 = graph seed only
  cluster_size          K of the video branch (or of the joint branch)
  audio_cluster_divisor audio branch K = max(1, cluster_size // divisor)
  hidden_size           width of hidden1
  gating                context gating after hidden1
  nonlocal_temperature  scale of Theta Phi^T; 0.0 means F^-1/2 per modality
  nonlocal_value_path   "g" (correct) or "phi" (the released Light/early bug)
  moe_num_mixtures, moe_l2, moe_prob_gating   the video-level classifier
  gru_cells, gru_layers the GRU
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

from models import classifiers, layers, pooling
from models.base import FrameModel
from models.tf_compat import tf

FRAME_SAMPLING_MODES = ("random", "uniform", "none")
MODALITY_NAMES = ("video", "audio")

_SAMPLING_DEFAULTS = {
    "num_samples": 300,
    "frame_sampling": "random",
    "frame_sampling_seed": -1,
}
_CLASSIFIER_DEFAULTS = {
    "moe_num_mixtures": 2,
    "moe_l2": 1e-8,
    "moe_prob_gating": False,
}


def _check_width(model: FrameModel, model_input: tf.Tensor) -> None:
    width = model_input.shape.as_list()[-1]
    if width != sum(model.feature_sizes):
        raise ValueError(f"{type(model).__name__}: input has {width} features per frame "
                         f"but feature_sizes {model.feature_sizes} sum to "
                         f"{sum(model.feature_sizes)}")


def _sampling_mode(hparams) -> str:
    mode = hparams["frame_sampling"]
    if mode not in FRAME_SAMPLING_MODES:
        raise ValueError(f"frame_sampling must be one of {FRAME_SAMPLING_MODES}, got {mode!r}")
    return mode


class _PooledFrameModel(FrameModel):
    """Shared parts: frame sampling, input BN, hidden layer, gating, MoE."""

    def _check_input(self, model_input: tf.Tensor) -> None:
        _check_width(self, model_input)
        if not 1 <= len(self.feature_sizes) <= len(MODALITY_NAMES):
            raise ValueError(f"{type(self).__name__} takes 1 or 2 features (rgb, audio), "
                             f"got feature_sizes {self.feature_sizes}")

    def _sampled_frames(self, model_input: tf.Tensor, num_frames: tf.Tensor,
                        fingerprints: Optional[tf.Tensor] = None) -> Tuple[tf.Tensor, object]:
        """-> (frames [B, N, D], N). N is a python int unless mode is "none".
        fingerprints: per-video draws (layers.sample_frame_indices)."""
        mode = _sampling_mode(self.hparams)
        if mode == "none":
            steps = model_input.shape.as_list()[1]
            return model_input, steps if steps is not None else tf.shape(model_input)[1]
        seed = self.hparams["frame_sampling_seed"]
        num_samples = self.hparams["num_samples"]
        frames = layers.sample_frames(model_input, num_frames, num_samples, mode=mode,
                                      seed=None if seed < 0 else seed,
                                      fingerprints=fingerprints)
        return frames, num_samples

    def _normalised_flat_frames(self, model_input, num_frames, is_training, fingerprints):
        """Sampling, then BN ``input_bn`` over D. -> ([B*N, D], N)."""
        self._check_input(model_input)
        frames, num_samples = self._sampled_frames(model_input, num_frames, fingerprints)
        flat = tf.reshape(frames, [-1, sum(self.feature_sizes)])
        return layers.batch_norm(flat, is_training, "input_bn"), num_samples

    def _modalities(self, flat: tf.Tensor) -> List[Tuple[str, int, tf.Tensor]]:
        """Splits [B*N, D] by self.feature_sizes -> [(name, F, [B*N, F]), ...]."""
        parts = tf.split(flat, self.feature_sizes, axis=1)
        return list(zip(MODALITY_NAMES, self.feature_sizes, parts))

    def _branch_clusters(self, index: int) -> int:
        if index == 0:
            return self.hparams["cluster_size"]
        return max(1, self.hparams["cluster_size"] // self.hparams["audio_cluster_divisor"])

    # -- inference on tiles with the per-frame work shared (ensemble.build) --

    @property
    def supports_shared_frame_work(self) -> bool:
        return _sampling_mode(self.hparams) in ("random", "uniform")

    def tile_indices(self, num_frames: tf.Tensor, tile_num: int,
                     seed: Optional[int] = None,
                     fingerprints: Optional[tf.Tensor] = None) -> tf.Tensor:
        """The frames tile t draws for video b -> int32 [tile_num, B, N].

        The same random process as calling the model on the input tiled
        tile_num times (copy t of video b at row t*B + b), with the op seed
        frame_sampling_seed (or `seed`): equal seeds (and fingerprints [B, 2],
        tiled as the input is) give the naive path's very draws.
        """
        mode = _sampling_mode(self.hparams)
        if seed is None:
            seed = self.hparams["frame_sampling_seed"]
        num_samples = self.hparams["num_samples"]
        tiled = None if fingerprints is None else tf.tile(fingerprints, [tile_num, 1])
        indices = layers.sample_frame_indices(tf.tile(num_frames, [tile_num]), num_samples,
                                              mode=mode, seed=None if seed < 0 else seed,
                                              fingerprints=tiled)
        return tf.reshape(indices, [tile_num, -1, num_samples])

    def predict_tiles(self, model_input, num_frames, tile_num, indices=None, seed=None,
                      fingerprints=None):
        """Inference on tile_num draws, the per-frame work done once per video.

        model_input [B, S, D] (L2-normalised frames), num_frames [B] ->
        [tile_num*B, C] (row t*B + b). input_bn (moving statistics), the
        cluster assignment, its BN and softmax run once over the S frames of
        each video; each tile aggregates them with its draw counts
        (layers.frame_counts of `indices` [T, B, N], default tile_indices),
        and the rest (non-local block, normalisation, hidden layer, gating,
        MoE) runs per tile. Equal to the naive path on the same draws.
        """
        if not self.supports_shared_frame_work:
            raise ValueError(f"{type(self).__name__}: frame_sampling "
                             f"{self.hparams['frame_sampling']!r} has no per-tile draws")
        self._check_input(model_input)
        if indices is None:
            indices = self.tile_indices(num_frames, tile_num, seed, fingerprints)
        width = sum(self.feature_sizes)
        steps = tf.shape(model_input)[1]
        counts = layers.frame_counts(indices, steps)                       # [T, B, S]
        flat = layers.batch_norm(tf.reshape(model_input, [-1, width]), False, "input_bn")
        frames = tf.reshape(flat, [-1, steps, width])                      # [B, S, D]
        return self._head(self._pool_counts(frames, counts), False)

    def _pool_counts(self, frames: tf.Tensor, counts: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def _modality_frames(self, frames: tf.Tensor) -> List[Tuple[str, int, tf.Tensor]]:
        """Splits [B, S, D] by self.feature_sizes -> [(name, F, [B, S, F]), ...]."""
        parts = tf.split(frames, self.feature_sizes, axis=2)
        return list(zip(MODALITY_NAMES, self.feature_sizes, parts))

    def _head(self, pooled: tf.Tensor, is_training: bool) -> tf.Tensor:
        """hidden1 (no activation), optional context gating, MoE, optional GP.

        hidden1_weights [D, H] ~ N(0, 1/sqrt(cluster_size)),
        hidden1_biases [H] ~ N(0, 0.01^2). -> probabilities [B, C].
        """
        hparams = self.hparams
        dim = pooled.shape.as_list()[-1]
        weights = tf.get_variable(
            "hidden1_weights", [dim, hparams["hidden_size"]],
            initializer=layers.normal(1.0 / math.sqrt(hparams["cluster_size"])))
        biases = tf.get_variable("hidden1_biases", [hparams["hidden_size"]],
                                 initializer=layers.normal(0.01))
        activation = layers.matmul(pooled, weights) + biases
        if hparams["gating"]:
            activation = layers.context_gating(activation, is_training)
        return _classify(activation, self.num_classes, hparams, is_training)


def _classify(inputs: tf.Tensor, num_classes: int, hparams, is_training: bool) -> tf.Tensor:
    probabilities = classifiers.mixture_of_experts(
        inputs, num_classes, hparams["moe_num_mixtures"], hparams["moe_l2"])
    if hparams["moe_prob_gating"]:
        probabilities = classifiers.probability_gating(probabilities, is_training)
    return probabilities


class _LateFusionModel(_PooledFrameModel):
    """One pooling branch per modality (scope ``<video|audio>_<BRANCH_SCOPE>``,
    audio with cluster_size // audio_cluster_divisor clusters), concatenated."""

    BRANCH_SCOPE = ""

    def _pool(self, num_samples: int, feature_size: int, cluster_size: int):
        raise NotImplementedError

    def __call__(self, model_input, num_frames, is_training, fingerprints=None):
        flat, num_samples = self._normalised_flat_frames(model_input, num_frames, is_training,
                                                         fingerprints)
        pooled = []
        for index, (name, feature_size, frames) in enumerate(self._modalities(flat)):
            with tf.variable_scope(f"{name}_{self.BRANCH_SCOPE}"):
                module = self._pool(num_samples, feature_size, self._branch_clusters(index))
                pooled.append(module(frames, is_training))
        return self._head(tf.concat(pooled, axis=1), is_training)

    def _pool_counts(self, frames, counts):
        pooled = []
        for index, (name, feature_size, part) in enumerate(self._modality_frames(frames)):
            with tf.variable_scope(f"{name}_{self.BRANCH_SCOPE}"):
                module = self._pool(self.hparams["num_samples"], feature_size,
                                    self._branch_clusters(index))
                pooled.append(module.pool_counts(part, counts, False))
        return tf.concat(pooled, axis=1)


class NetVLADModelLF(_LateFusionModel):
    """Model A: late-fusion NetVLAD with the embedded-Gaussian non-local block.

    [B, T, 1152] -> sample N=300 -> input_bn -> video_VLAD (F=1024, K=64) and
    audio_VLAD (F=128, K=32), each NetVLAD + non-local (width K, temperature
    1/64, value G) + intra/global L2 -> concat [B, 69632] -> hidden1 1024 ->
    context gating -> MoE-8 -> probability gating -> [B, 3862].
    """

    BRANCH_SCOPE = "VLAD"
    DEFAULTS = {
        **_SAMPLING_DEFAULTS,
        "cluster_size": 64,
        "audio_cluster_divisor": 2,
        "hidden_size": 1024,
        "gating": True,
        "nonlocal_temperature": 1.0 / 64,
        "nonlocal_value_path": "g",
        **_CLASSIFIER_DEFAULTS,
        "moe_num_mixtures": 8,
        "moe_prob_gating": True,
    }

    def _pool(self, num_samples, feature_size, cluster_size):
        return pooling.NetVLADNonLocal(
            feature_size, cluster_size, num_samples,
            temperature=self.hparams["nonlocal_temperature"],
            value_path=self.hparams["nonlocal_value_path"])


class LightNetVLADModelLF(NetVLADModelLF):
    """Model B: late-fusion LightVLAD (no centroids) with a non-local block.

    As Model A but the pooling has no ``cluster_weights2``, the non-local
    width is F/2, the scale F^-1/2 and the value path Phi (released bug);
    classifier MoE-4 with probability gating.
    """

    DEFAULTS = {
        **NetVLADModelLF.DEFAULTS,
        "nonlocal_temperature": 0.0,
        "nonlocal_value_path": "phi",
        "moe_num_mixtures": 4,
    }

    def _pool(self, num_samples, feature_size, cluster_size):
        return pooling.LightNetVLADNonLocal(
            feature_size, cluster_size, num_samples,
            temperature=self.hparams["nonlocal_temperature"],
            value_path=self.hparams["nonlocal_value_path"])


class early_NetVLADModelLF(_PooledFrameModel):  # noqa: N801 (the original name)
    """Model C: early fusion, one NetVLAD over the joint 1152-d frame.

    [B, T, 1152] -> sample 300 -> input_bn -> video_audio_VLAD (F=1152, K=64,
    centroids, non-local width K, scale 1152^-1/2, value Phi) -> [B, 73728]
    -> hidden1 1024 -> context gating -> MoE-2 -> probability gating.
    """

    DEFAULTS = {
        **_SAMPLING_DEFAULTS,
        "cluster_size": 64,
        "hidden_size": 1024,
        "gating": True,
        "nonlocal_temperature": 0.0,
        "nonlocal_value_path": "phi",
        **_CLASSIFIER_DEFAULTS,
        "moe_num_mixtures": 2,
        "moe_prob_gating": True,
    }

    def _joint_pool(self, num_samples: int) -> pooling.NetVLADNonLocal:
        return pooling.NetVLADNonLocal(
            sum(self.feature_sizes), self.hparams["cluster_size"], num_samples,
            temperature=self.hparams["nonlocal_temperature"],
            value_path=self.hparams["nonlocal_value_path"])

    def __call__(self, model_input, num_frames, is_training, fingerprints=None):
        flat, num_samples = self._normalised_flat_frames(model_input, num_frames, is_training,
                                                         fingerprints)
        with tf.variable_scope("video_audio_VLAD"):
            pooled = self._joint_pool(num_samples)(flat, is_training)
        return self._head(pooled, is_training)

    def _pool_counts(self, frames, counts):
        with tf.variable_scope("video_audio_VLAD"):
            return self._joint_pool(self.hparams["num_samples"]).pool_counts(frames, counts,
                                                                             False)


class SoftDbofModelLF(_LateFusionModel):
    """Models D: late-fusion Soft-DBoF, 4000 video / 500 audio clusters.

    [B, T, 1152] -> sample 300 -> input_bn -> video_DBOF (K) and audio_DBOF
    (K/8), softmax assignment + sum pool + L2 -> concat [B, K + K/8] ->
    hidden1 1024 (no activation, no gating) -> MoE-2 without GP.
    """

    BRANCH_SCOPE = "DBOF"
    DEFAULTS = {
        **_SAMPLING_DEFAULTS,
        "cluster_size": 4000,
        "audio_cluster_divisor": 8,
        "hidden_size": 1024,
        "gating": False,
        **_CLASSIFIER_DEFAULTS,
    }

    def _pool(self, num_samples, feature_size, cluster_size):
        return pooling.SoftDBoF(feature_size, cluster_size, num_samples)


class SoftDbofModelLF_8k(SoftDbofModelLF):  # noqa: N801 (the original name)
    """Model E: as Model D with 8000 video / 1000 audio clusters."""

    DEFAULTS = {**SoftDbofModelLF.DEFAULTS, "cluster_size": 8000}


class GruModel(FrameModel):
    """Model F: two stacked GRUs of 1200 units over the whole padded input.

    [B, T, 1152], num_frames -> dynamic_rnn in scope ``RNN`` (state frozen
    after num_frames steps) -> final states concatenated [B, 2400] -> MoE-2
    (no probability gating). Deterministic: no frame sampling, no input BN.
    With frame_sampling "random"/"uniform" it reads num_samples sampled frames
    instead (not used by the original; its unused ``iterations`` was 30).
    """

    DEFAULTS = {
        "gru_cells": 1200,
        "gru_layers": 2,
        **_SAMPLING_DEFAULTS,
        "num_samples": 30,
        "frame_sampling": "none",
        **_CLASSIFIER_DEFAULTS,
    }

    def __call__(self, model_input, num_frames, is_training, fingerprints=None):
        _check_width(self, model_input)
        mode = _sampling_mode(self.hparams)
        sequence_length = num_frames
        if mode != "none":
            seed = self.hparams["frame_sampling_seed"]
            model_input = layers.sample_frames(
                model_input, num_frames, self.hparams["num_samples"], mode=mode,
                seed=None if seed < 0 else seed, fingerprints=fingerprints)
            sequence_length = tf.fill(tf.shape(num_frames), self.hparams["num_samples"])
        # = dynamic_rnn(StackedGRUCell(gru_cells, gru_layers)) in scope RNN,
        # computed layer by layer with the input products outside the loop.
        with tf.variable_scope("RNN"):
            state = layers.stacked_gru_final_state(
                model_input, sequence_length, self.hparams["gru_cells"],
                self.hparams["gru_layers"])
        return _classify(state, self.num_classes, self.hparams, is_training)


MODEL_CLASSES = (NetVLADModelLF, LightNetVLADModelLF, early_NetVLADModelLF, SoftDbofModelLF,
                 SoftDbofModelLF_8k, GruModel)
