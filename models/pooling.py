"""Frame pooling modules of the six final models (docs/original.md 1.4 to 1.7).

Each module takes the (sampled, input-batch-normalised) frames of one modality
flattened to [B*N, F] and returns one descriptor per video [B, D]. Variables
are created with ``tf.get_variable`` inside an explicit variable scope given by
the caller (``video_VLAD``, ``audio_VLAD``, ``video_audio_VLAD``,
``video_DBOF``, ``audio_DBOF``), with the names and initialisers of the
original:

* ``cluster_weights`` [F, K] ~ N(0, 1/sqrt(F)), then BN ``cluster_bn`` over K;
* ``cluster_weights2`` [1, F, K] ~ N(0, 1/sqrt(F)) (the centroids; NetVLAD only);
* ``nonlocal_theta``, ``nonlocal_phi``, ``nonlocal_g`` [F, W] ~ N(0, 1/sqrt(F))
  and ``nonlocal_out`` [W, F] ~ N(0, 1/sqrt(W)) (the non-local block, width W).

The VLAD descriptor is intra-normalised (L2 over F for every cluster), then
flattened so that index f*K + k holds cluster k, feature f, then L2-normalised
as a whole.
"""
from __future__ import annotations

import math
from typing import Optional

from models import layers
from models.tf_compat import tf

NONLOCAL_VALUE_PATHS = ("phi", "g")


def cluster_assignment(frames: tf.Tensor, feature_size: int, cluster_size: int,
                       is_training: bool) -> tf.Tensor:
    """Soft assignment A = softmax_K(BN_K(X W_c)).

    frames [B*N, F] -> [B*N, K]. Variables ``cluster_weights`` [F, K] and the
    BN scope ``cluster_bn``.
    """
    cluster_weights = tf.get_variable(
        "cluster_weights", [feature_size, cluster_size],
        initializer=layers.normal(1.0 / math.sqrt(feature_size)))
    activation = layers.matmul(frames, cluster_weights)
    activation = layers.batch_norm(activation, is_training, "cluster_bn")
    return tf.nn.softmax(activation)


def nonlocal_block(vlad: tf.Tensor, width: int, scale: float,
                   value_path: str = "g") -> tf.Tensor:
    """Embedded-Gaussian non-local relation across the K cluster descriptors.

    vlad [B, K, F] -> [B, K, F]:
        Theta = V W_theta, Phi = V W_phi, G = V W_g          ([B, K, W] each)
        S     = softmax_last(scale * Theta Phi^T)             ([B, K, K])
        Z     = (S Value) W_out, Value = G, or Phi when value_path == "phi"
        out   = V + Z
    value_path "phi" reproduces the released Light and early models, which
    (by a bug) use Phi as the value; ``nonlocal_g`` is created either way,
    as in the original, so checkpoints and parameter counts match.
    Variables are created in the order theta, phi, g, out.
    """
    if value_path not in NONLOCAL_VALUE_PATHS:
        raise ValueError(f"nonlocal_value_path must be one of {NONLOCAL_VALUE_PATHS}, "
                         f"got {value_path!r}")
    feature_size = vlad.shape.as_list()[-1]
    cluster_size = vlad.shape.as_list()[-2]
    in_init = layers.normal(1.0 / math.sqrt(feature_size))
    theta_weights = tf.get_variable("nonlocal_theta", [feature_size, width],
                                    initializer=in_init)
    phi_weights = tf.get_variable("nonlocal_phi", [feature_size, width],
                                  initializer=in_init)
    g_weights = tf.get_variable("nonlocal_g", [feature_size, width], initializer=in_init)
    out_weights = tf.get_variable("nonlocal_out", [width, feature_size],
                                  initializer=layers.normal(1.0 / math.sqrt(width)))
    flat = tf.reshape(vlad, [-1, feature_size])                       # [B*K, F]
    theta = tf.reshape(layers.matmul(flat, theta_weights), [-1, cluster_size, width])
    phi = tf.reshape(layers.matmul(flat, phi_weights), [-1, cluster_size, width])
    if value_path == "g":
        value = tf.reshape(layers.matmul(flat, g_weights), [-1, cluster_size, width])
    else:
        value = phi
    relation = tf.nn.softmax(scale * tf.matmul(theta, phi, transpose_b=True))
    attended = tf.reshape(tf.matmul(relation, value), [-1, width])     # [B*K, W]
    update = tf.reshape(layers.matmul(attended, out_weights),
                        [-1, cluster_size, feature_size])
    return vlad + update


def vlad_normalize(vlad: tf.Tensor) -> tf.Tensor:
    """Intra-normalisation then global L2.

    vlad [B, K, F] -> [B, F*K]: transpose to [B, F, K], L2-normalise every
    cluster column over F, flatten row-major (index f*K + k), L2-normalise.
    """
    feature_size = vlad.shape.as_list()[-1]
    cluster_size = vlad.shape.as_list()[-2]
    columns = tf.transpose(vlad, perm=[0, 2, 1])                       # [B, F, K]
    columns = tf.nn.l2_normalize(columns, axis=1)
    flat = tf.reshape(columns, [-1, feature_size * cluster_size])
    return tf.nn.l2_normalize(flat, axis=1)


def _check_frames(frames: tf.Tensor, feature_size: int) -> None:
    width = frames.shape.as_list()[-1]
    if width != feature_size:
        raise ValueError(f"frames have width {width}, expected feature_size {feature_size}")


class NetVLADNonLocal:
    """NetVLAD with the centroid term and an embedded-Gaussian non-local block.

    Model A (``NetVLAD_NonLocal_types``): non-local width K, temperature 1/64,
    value G. Model C (``NetVLAD_NonLocal``, early fusion): width K, scale
    F^-1/2, value Phi (the released bug).

    __call__(frames [B*N, F], is_training) -> [B, F*K], with N = num_samples.
        A   = softmax_K(BN(X W_c))                            [B, N, K]
        V_k = sum_n A_nk x_n - (sum_n A_nk) c_k               [B, K, F]
        V'  = nonlocal_block(V)
        out = vlad_normalize(V')
    Variables (in the current scope): cluster_weights, cluster_bn/*,
    cluster_weights2 [1, F, K], nonlocal_{theta,phi,g,out}.
    """

    def __init__(self, feature_size: int, cluster_size: int, num_samples: int,
                 temperature: Optional[float] = None, value_path: str = "g",
                 nonlocal_width: Optional[int] = None):
        self.feature_size = feature_size
        self.cluster_size = cluster_size
        self.num_samples = num_samples
        self.scale = temperature if temperature else 1.0 / math.sqrt(feature_size)
        self.value_path = value_path
        self.nonlocal_width = nonlocal_width or cluster_size

    @property
    def output_size(self) -> int:
        return self.feature_size * self.cluster_size

    def __call__(self, frames: tf.Tensor, is_training: bool) -> tf.Tensor:
        _check_frames(frames, self.feature_size)
        feature_size, cluster_size = self.feature_size, self.cluster_size
        assignment = cluster_assignment(frames, feature_size, cluster_size, is_training)
        assignment = tf.reshape(assignment, [-1, self.num_samples, cluster_size])
        centroids = tf.get_variable(
            "cluster_weights2", [1, feature_size, cluster_size],
            initializer=layers.normal(1.0 / math.sqrt(feature_size)))
        assignment_sum = tf.reduce_sum(assignment, axis=1, keepdims=True)   # [B, 1, K]
        centroid_term = tf.transpose(assignment_sum * centroids, [0, 2, 1])  # [B, K, F]
        frames = tf.reshape(frames, [-1, self.num_samples, feature_size])
        vlad = tf.matmul(assignment, frames, transpose_a=True) - centroid_term
        vlad = nonlocal_block(vlad, self.nonlocal_width, self.scale, self.value_path)
        return vlad_normalize(vlad)

    def pool_counts(self, frames: tf.Tensor, counts: tf.Tensor,
                    is_training: bool = False) -> tf.Tensor:
        """frames [B, S, F] (every frame once), counts [T, B, S] -> [T*B, F*K]:
        V_k = sum_n c_n A_nk x_n - (sum_n c_n A_nk) c_k, then as __call__.
        Equals __call__ on the frames each tile drew (inference only: the
        BN must use its moving statistics to be per frame)."""
        _check_counts(frames, counts, self.feature_size)
        feature_size, cluster_size = self.feature_size, self.cluster_size
        assignment = _count_assignment(frames, feature_size, cluster_size, is_training)
        centroids = tf.get_variable(
            "cluster_weights2", [1, feature_size, cluster_size],
            initializer=layers.normal(1.0 / math.sqrt(feature_size)))
        assignment_sum = counted_assignment_sum(assignment, counts)[:, None, :]  # [T*B, 1, K]
        centroid_term = tf.transpose(assignment_sum * centroids, [0, 2, 1])      # [T*B, K, F]
        vlad = counted_vlad(assignment, frames, counts) - centroid_term
        vlad = nonlocal_block(vlad, self.nonlocal_width, self.scale, self.value_path)
        return vlad_normalize(vlad)


class LightNetVLADNonLocal:
    """LightVLAD (no centroid term) with a non-local block (Model B).

    Non-local width F/2, scale F^-1/2, value Phi by default (the released bug).

    __call__(frames [B*N, F], is_training) -> [B, F*K]:
        A   = softmax_K(BN(X W_c));  V_k = sum_n A_nk x_n      [B, K, F]
        out = vlad_normalize(nonlocal_block(V))
    Variables: cluster_weights, cluster_bn/*, nonlocal_{theta,phi,g,out}.
    """

    def __init__(self, feature_size: int, cluster_size: int, num_samples: int,
                 temperature: Optional[float] = None, value_path: str = "phi"):
        self.feature_size = feature_size
        self.cluster_size = cluster_size
        self.num_samples = num_samples
        self.scale = temperature if temperature else 1.0 / math.sqrt(feature_size)
        self.value_path = value_path
        self.nonlocal_width = max(1, feature_size // 2)

    @property
    def output_size(self) -> int:
        return self.feature_size * self.cluster_size

    def __call__(self, frames: tf.Tensor, is_training: bool) -> tf.Tensor:
        _check_frames(frames, self.feature_size)
        assignment = cluster_assignment(frames, self.feature_size, self.cluster_size,
                                        is_training)
        assignment = tf.reshape(assignment, [-1, self.num_samples, self.cluster_size])
        frames = tf.reshape(frames, [-1, self.num_samples, self.feature_size])
        vlad = tf.matmul(assignment, frames, transpose_a=True)            # [B, K, F]
        vlad = nonlocal_block(vlad, self.nonlocal_width, self.scale, self.value_path)
        return vlad_normalize(vlad)

    def pool_counts(self, frames: tf.Tensor, counts: tf.Tensor,
                    is_training: bool = False) -> tf.Tensor:
        """frames [B, S, F], counts [T, B, S] -> [T*B, F*K]: V_k = sum_n c_n A_nk x_n,
        then as __call__ (see NetVLADNonLocal.pool_counts)."""
        _check_counts(frames, counts, self.feature_size)
        assignment = _count_assignment(frames, self.feature_size, self.cluster_size,
                                       is_training)
        vlad = counted_vlad(assignment, frames, counts)                   # [T*B, K, F]
        vlad = nonlocal_block(vlad, self.nonlocal_width, self.scale, self.value_path)
        return vlad_normalize(vlad)


class SoftDBoF:
    """Soft deep bag of frames (Models D and E).

    __call__(frames [B*N, F], is_training) -> [B, K]:
        A = softmax_K(BN(X W_c));  d = sum_n A_n;  out = d / ||d||_2
    Variables: cluster_weights [F, K], cluster_bn/*.
    """

    def __init__(self, feature_size: int, cluster_size: int, num_samples: int):
        self.feature_size = feature_size
        self.cluster_size = cluster_size
        self.num_samples = num_samples

    @property
    def output_size(self) -> int:
        return self.cluster_size

    def __call__(self, frames: tf.Tensor, is_training: bool) -> tf.Tensor:
        _check_frames(frames, self.feature_size)
        assignment = cluster_assignment(frames, self.feature_size, self.cluster_size,
                                        is_training)
        assignment = tf.reshape(assignment, [-1, self.num_samples, self.cluster_size])
        return tf.nn.l2_normalize(tf.reduce_sum(assignment, axis=1), axis=1)

    def pool_counts(self, frames: tf.Tensor, counts: tf.Tensor,
                    is_training: bool = False) -> tf.Tensor:
        """frames [B, S, F], counts [T, B, S] -> [T*B, K]: d = sum_n c_n A_n, L2."""
        _check_counts(frames, counts, self.feature_size)
        assignment = _count_assignment(frames, self.feature_size, self.cluster_size,
                                       is_training)
        return tf.nn.l2_normalize(counted_assignment_sum(assignment, counts), axis=1)


# ---------------------------------------------------------------------------
# Pooling from draw counts (the tiled ensemble's shared per-frame work)
#
# At inference the per-frame terms (input BN with moving statistics, the
# cluster assignment, its BN and softmax) do not depend on which frames a tile
# draws. ``pool_counts`` computes them once over every frame of a video,
# frames [B, S, F], and aggregates them for each tile with its draw counts
# counts [T, B, S] (models.layers.frame_counts): sum_j f(x_{i_j}) =
# sum_n c_n f(x_n). Everything after the aggregation runs per tile, so the
# result [T*B, D] (row t*B + b, the tiled layout) equals the module called
# on the frames the tile drew.


def _count_assignment(frames: tf.Tensor, feature_size: int, cluster_size: int,
                      is_training: bool) -> tf.Tensor:
    """frames [B, S, F] -> A [B, S, K] (cluster_weights, cluster_bn)."""
    steps = tf.shape(frames)[1]
    flat = tf.reshape(frames, [-1, feature_size])
    assignment = cluster_assignment(flat, feature_size, cluster_size, is_training)
    return tf.reshape(assignment, [-1, steps, cluster_size])


def counted_assignment_sum(assignment: tf.Tensor, counts: tf.Tensor) -> tf.Tensor:
    """s_tbk = sum_n c_tbn A_bnk: A [B, S, K], counts [T, B, S] -> [T*B, K]."""
    cluster_size = assignment.shape.as_list()[-1]
    sums = tf.matmul(tf.transpose(counts, [1, 0, 2]), assignment)       # [B, T, K]
    return tf.reshape(tf.transpose(sums, [1, 0, 2]), [-1, cluster_size])


def counted_vlad(assignment: tf.Tensor, frames: tf.Tensor, counts: tf.Tensor) -> tf.Tensor:
    """V_tbk = sum_n c_tbn A_bnk x_bn: A [B, S, K], frames [B, S, F],
    counts [T, B, S] -> [T*B, K, F]. One batched matmul per video,
    [T*K, S] x [S, F], so each video's frames are read once for all tiles."""
    cluster_size = assignment.shape.as_list()[-1]
    feature_size = frames.shape.as_list()[-1]
    shape = tf.shape(assignment)
    tiles = tf.shape(counts)[0]
    per_frame = tf.transpose(counts, [1, 2, 0])                          # [B, S, T]
    weighted = per_frame[:, :, :, None] * assignment[:, :, None, :]      # [B, S, T, K]
    weighted = tf.reshape(weighted, [shape[0], shape[1], tiles * cluster_size])
    vlad = tf.matmul(weighted, frames, transpose_a=True)                 # [B, T*K, F]
    vlad = tf.reshape(vlad, [shape[0], tiles, cluster_size, feature_size])
    return tf.reshape(tf.transpose(vlad, [1, 0, 2, 3]), [-1, cluster_size, feature_size])


def _check_counts(frames: tf.Tensor, counts: tf.Tensor, feature_size: int) -> None:
    if frames.shape.ndims != 3:
        raise ValueError(f"pool_counts takes frames [B, S, F], got rank {frames.shape.ndims}")
    _check_frames(frames, feature_size)
    if counts.shape.ndims != 3:
        raise ValueError(f"pool_counts takes counts [T, B, S], got rank {counts.shape.ndims}")
