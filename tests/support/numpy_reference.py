"""Independent numpy versions of the layers and poolings (docs/original.md
1.1-1.8, written from the formulas), and session helpers that read or set variables by name."""
from __future__ import annotations

import numpy as np

from models.tf_compat import tf

BN_EPS = 1e-3
BN_DECAY = 0.999


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_softmax(x, axis=-1):
    shifted = x - x.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


def np_l2n(x, axis=-1):
    """x / sqrt(max(sum x^2, 1e-12)), as tf.nn.l2_normalize."""
    return x / np.sqrt(np.maximum((x * x).sum(axis=axis, keepdims=True), 1e-12))


def np_bn(x, params, training):
    """params: dict with beta, gamma, moving_mean, moving_variance; over axis 0."""
    if training:
        mean, var = x.mean(axis=0), x.var(axis=0)
    else:
        mean, var = params["moving_mean"], params["moving_variance"]
    return params["gamma"] * (x - mean) / np.sqrt(var + BN_EPS) + params["beta"]


def bn_params(values, scope):
    """{beta, gamma, moving_mean, moving_variance} of BN `scope` from a name->value dict."""
    return {key: values[f"{scope}/{key}"]
            for key in ("beta", "gamma", "moving_mean", "moving_variance")}


def np_context_gating(x, weights, bn, training):
    return x * np_sigmoid(np_bn(x @ weights, bn, training))


def np_moe(x, gate_w, expert_w, expert_b, num_classes, mixtures):
    """Per-class loops over the documented column layout c*(M+1)+m / c*M+m."""
    gate_logits = x @ gate_w
    expert_logits = x @ expert_w + expert_b
    out = np.zeros((x.shape[0], num_classes))
    for b in range(x.shape[0]):
        for c in range(num_classes):
            g = np_softmax(gate_logits[b, c * (mixtures + 1):(c + 1) * (mixtures + 1)])
            e = np_sigmoid(expert_logits[b, c * mixtures:(c + 1) * mixtures])
            out[b, c] = sum(g[m] * e[m] for m in range(mixtures))  # slot M is the dummy
    return out


def np_prob_gating(p, weights, bn, training):
    return p * np_sigmoid(np_bn(p @ weights, bn, training))


def np_gru_step(x, h, gate_k, gate_b, cand_k, cand_b):
    units = h.shape[-1]
    gates = np_sigmoid(np.concatenate([x, h], -1) @ gate_k + gate_b)
    r, u = gates[..., :units], gates[..., units:]
    c = np.tanh(np.concatenate([x, r * h], -1) @ cand_k + cand_b)
    return u * h + (1 - u) * c


def np_stacked_gru_final(inputs, lengths, cells):
    """inputs [B, T, I]; cells: list of (gate_k, gate_b, cand_k, cand_b).
    Runs every video for exactly lengths[b] steps -> concatenated states."""
    batch = inputs.shape[0]
    units = cells[0][3].shape[0]
    finals = np.zeros((batch, units * len(cells)))
    for b in range(batch):
        states = [np.zeros(units) for _ in cells]
        for t in range(lengths[b]):
            x = inputs[b, t]
            for layer, params in enumerate(cells):
                states[layer] = np_gru_step(x, states[layer], *params)
                x = states[layer]
        finals[b] = np.concatenate(states)
    return finals


def gru_cells_from(values, prefix, layers_count):
    cells = []
    for i in range(layers_count):
        base = f"{prefix}multi_rnn_cell/cell_{i}/gru_cell/"
        cells.append((values[base + "gates/kernel"], values[base + "gates/bias"],
                      values[base + "candidate/kernel"], values[base + "candidate/bias"]))
    return cells


def variable_values(sess, strip=""):
    variables = tf.global_variables()
    values = sess.run(variables)
    return {v.op.name[len(strip):] if v.op.name.startswith(strip) else v.op.name: value
            for v, value in zip(variables, values)}


def set_variable(sess, name, value):
    """Loads `value` into the global variable whose op name is `name`."""
    [var] = [v for v in tf.global_variables() if v.op.name == name]
    var.load(np.asarray(value, np.float32), sess)


def randomize_bn_statistics(sess, rng):
    """Gives every BN variable a non-trivial value so inference mode is tested."""
    for var in tf.global_variables():
        name = var.op.name
        shape = var.shape.as_list()
        if name.endswith(("/moving_mean", "/beta")):
            var.load(rng.normal(0, 0.5, shape).astype(np.float32), sess)
        elif name.endswith(("/moving_variance", "/gamma")):
            var.load(rng.uniform(0.5, 2.0, shape).astype(np.float32), sess)


def np_assignment(frames, values, training, prefix=""):
    """frames [B, N, F] -> A [B, N, K] = softmax_K(BN(X W_c))."""
    batch, steps, feature = frames.shape
    logits = frames.reshape(-1, feature) @ values[prefix + "cluster_weights"]
    logits = np_bn(logits, bn_params(values, prefix + "cluster_bn"), training)
    return np_softmax(logits).reshape(batch, steps, -1)


def np_aggregate(frames, assignment, centroids=None):
    """V[b, k] = sum_n A[b,n,k] x[b,n] - (sum_n A[b,n,k]) c_k  -> [B, K, F].
    centroids: the stored [1, F, K] array, or None (LightVLAD)."""
    batch, steps, feature = frames.shape
    clusters = assignment.shape[-1]
    vlad = np.zeros((batch, clusters, feature))
    for b in range(batch):
        for k in range(clusters):
            for n in range(steps):
                vlad[b, k] += assignment[b, n, k] * frames[b, n]
            if centroids is not None:
                vlad[b, k] -= assignment[b, :, k].sum() * centroids[0, :, k]
    return vlad


def np_nonlocal(vlad, values, scale, value_path, prefix=""):
    """Embedded Gaussian over the K descriptors of each video; V + (S Value) W_out."""
    out = np.empty_like(vlad)
    for b in range(vlad.shape[0]):
        v = vlad[b]                                              # [K, F]
        theta = v @ values[prefix + "nonlocal_theta"]
        phi = v @ values[prefix + "nonlocal_phi"]
        g = v @ values[prefix + "nonlocal_g"]
        relation = np_softmax(scale * theta @ phi.T, axis=1)     # [K, K]
        value = g if value_path == "g" else phi
        out[b] = v + (relation @ value) @ values[prefix + "nonlocal_out"]
    return out


def np_vlad_normalize(vlad):
    """Intra L2 per cluster, element (k, f) to index f*K + k, then global L2."""
    batch, clusters, feature = vlad.shape
    out = np.zeros((batch, feature * clusters))
    for b in range(batch):
        for k in range(clusters):
            column = vlad[b, k] / max(np.linalg.norm(vlad[b, k]), 1e-6)
            for f in range(feature):
                out[b, f * clusters + k] = column[f]
    return np_l2n(out)


def np_netvlad_nonlocal(frames, values, training, scale, value_path, prefix=""):
    assignment = np_assignment(frames, values, training, prefix)
    vlad = np_aggregate(frames, assignment, values[prefix + "cluster_weights2"])
    return np_vlad_normalize(np_nonlocal(vlad, values, scale, value_path, prefix))


def np_light_netvlad_nonlocal(frames, values, training, scale, value_path, prefix=""):
    assignment = np_assignment(frames, values, training, prefix)
    vlad = np_aggregate(frames, assignment, None)
    return np_vlad_normalize(np_nonlocal(vlad, values, scale, value_path, prefix))


def np_soft_dbof(frames, values, training, prefix=""):
    assignment = np_assignment(frames, values, training, prefix)
    return np_l2n(assignment.sum(axis=1))
