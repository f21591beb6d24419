"""The small layer module every model is built from.

All variables are created with ``tf.get_variable`` so that their names are
under our control (they are the contract between training, SWA, bfloat16 and
the ensemble) and so that a ``custom_getter`` (the bfloat16 loader) sees every
one of them. Batch norm follows TF 1.9 ``slim.batch_norm`` with
``center=True, scale=True``: decay 0.999, epsilon 1e-3, statistics over the
leading axis, moving averages updated by ops in ``tf.GraphKeys.UPDATE_OPS``
with Bessel's correction on the variance (as the fused kernel did).
"""
from __future__ import annotations

import math
import weakref
import zlib
from typing import Optional, Tuple

from models.tf_compat import tf

BN_DECAY = 0.999
BN_EPSILON = 1e-3


def normal(stddev: float) -> tf.keras.initializers.Initializer:
    """Untruncated N(0, stddev^2), as ``tf.random_normal_initializer``."""
    return tf.random_normal_initializer(stddev=stddev)


def glorot_uniform() -> tf.keras.initializers.Initializer:
    return tf.glorot_uniform_initializer()


def l2_regularizer(scale: float):
    """scale * sum(w^2) / 2, the slim.l2_regularizer formula."""
    if not scale:
        return None

    def regularize(weights):
        return tf.multiply(scale, tf.nn.l2_loss(weights), name="l2_regularizer")

    return regularize


def fully_connected(inputs: tf.Tensor, num_outputs: int, scope: str,
                    weights_initializer=None, use_bias: bool = True,
                    l2_scale: float = 0.0) -> tf.Tensor:
    """inputs [N, D] -> [N, num_outputs]; variables scope/weights, scope/biases.

    Glorot-uniform weights and zero biases by default (slim.fully_connected).
    """
    input_dim = inputs.shape.as_list()[-1]
    with tf.variable_scope(scope):
        weights = tf.get_variable(
            "weights", [input_dim, num_outputs],
            initializer=weights_initializer or glorot_uniform(),
            regularizer=l2_regularizer(l2_scale))
        outputs = matmul(inputs, weights)
        if use_bias:
            biases = tf.get_variable("biases", [num_outputs],
                                     initializer=tf.zeros_initializer())
            outputs = tf.nn.bias_add(outputs, biases)
    return outputs


def batch_norm(inputs: tf.Tensor, is_training: bool, scope: str,
               decay: float = BN_DECAY, epsilon: float = BN_EPSILON) -> tf.Tensor:
    """Batch norm over the last axis of inputs [N, C] (any leading rank).

    Training: normalise with the batch statistics and add the moving-average
    updates to UPDATE_OPS. Inference: normalise with the moving statistics.
    Variables: scope/{beta, gamma, moving_mean, moving_variance}.
    """
    channels = inputs.shape.as_list()[-1]
    with tf.variable_scope(scope):
        beta = tf.get_variable("beta", [channels], initializer=tf.zeros_initializer())
        gamma = tf.get_variable("gamma", [channels], initializer=tf.ones_initializer())
        stat_collections = [tf.GraphKeys.GLOBAL_VARIABLES, tf.GraphKeys.MODEL_VARIABLES,
                            "batch_norm_statistics"]
        moving_mean = tf.get_variable("moving_mean", [channels], trainable=False,
                                      initializer=tf.zeros_initializer(),
                                      collections=stat_collections)
        moving_variance = tf.get_variable("moving_variance", [channels], trainable=False,
                                          initializer=tf.ones_initializer(),
                                          collections=stat_collections)
        if not is_training:
            return tf.nn.batch_normalization(inputs, moving_mean, moving_variance,
                                             beta, gamma, epsilon)
        # One fused kernel (FusedBatchNormV3 on an [N, 1, 1, C] view) computes
        # the batch statistics, the normalisation and, in the backward pass,
        # all three gradients: several times faster than tf.nn.moments plus
        # batch_normalization on the [B*frames, C] activations. It normalises
        # with the biased batch variance and returns the Bessel-corrected one
        # (n / max(n - 1, 1)), which feeds the moving average as in TF 1.9.
        normalized, mean, unbiased = tf.nn.fused_batch_norm(
            tf.reshape(inputs, [-1, 1, 1, channels]), gamma, beta, epsilon=epsilon,
            data_format="NHWC", is_training=True)
        if isinstance(moving_mean, tf.Variable):
            tf.add_to_collection(tf.GraphKeys.UPDATE_OPS, tf.assign_sub(
                moving_mean, (1.0 - decay) * (moving_mean - mean)))
            tf.add_to_collection(tf.GraphKeys.UPDATE_OPS, tf.assign_sub(
                moving_variance, (1.0 - decay) * (moving_variance - unbiased)))
        outputs = tf.reshape(normalized, tf.shape(inputs))
        outputs.set_shape(inputs.shape)
        return outputs


def context_gating(inputs: tf.Tensor, is_training: bool,
                   weights_name: str = "gating_weights_2",
                   bn_scope: str = "gating_bn") -> tf.Tensor:
    """y = x * sigmoid(BN(x W)); inputs [N, D], W [D, D] ~ N(0, 1/sqrt(D))."""
    dim = inputs.shape.as_list()[-1]
    weights = tf.get_variable(weights_name, [dim, dim],
                              initializer=normal(1.0 / math.sqrt(dim)))
    gates = batch_norm(matmul(inputs, weights), is_training, bn_scope)
    return inputs * tf.sigmoid(gates)


class _SingleStateCell:
    """The rnn-cell interface tf.nn.dynamic_rnn needs, for a cell whose state
    and output are both [B, num_units]."""

    num_units: int

    @property
    def state_size(self) -> int:
        return self.num_units

    @property
    def output_size(self) -> int:
        return self.num_units

    def zero_state(self, batch_size, dtype) -> tf.Tensor:
        return tf.zeros([batch_size, self.num_units], dtype)


def _gru_variables(input_dim: int, units: int) -> Tuple[tf.Variable, ...]:
    """gates/{kernel [I+H, 2H] (Glorot), bias [2H] (ones)} and candidate/{kernel
    [I+H, H], bias [H] (zeros)} in the current scope, the names and
    initialisers of tf.nn.rnn_cell.GRUCell."""
    with tf.variable_scope("gates"):
        gate_kernel = tf.get_variable("kernel", [input_dim + units, 2 * units],
                                      initializer=glorot_uniform())
        gate_bias = tf.get_variable("bias", [2 * units], initializer=tf.ones_initializer())
    with tf.variable_scope("candidate"):
        cand_kernel = tf.get_variable("kernel", [input_dim + units, units],
                                      initializer=glorot_uniform())
        cand_bias = tf.get_variable("bias", [units], initializer=tf.zeros_initializer())
    return gate_kernel, gate_bias, cand_kernel, cand_bias


class GRUCell(_SingleStateCell):
    """A GRU cell as TF 1.9's GRUCell, usable by ``tf.nn.dynamic_rnn``.

    [r, u] = sigmoid([x, h] W_gates + b_gates)   (gate biases start at 1.0)
    c      = tanh([x, r * h] W_cand + b_cand)
    h'     = u * h + (1 - u) * c
    Variables: <scope>/gates/{kernel,bias}, <scope>/candidate/{kernel,bias}.
    """

    def __init__(self, num_units: int, name: str = "gru_cell"):
        self.num_units = num_units
        self.name = name

    def __call__(self, inputs: tf.Tensor, state: tf.Tensor, scope=None):
        with tf.variable_scope(self.name, reuse=tf.AUTO_REUSE):
            gate_kernel, gate_bias, cand_kernel, cand_bias = _gru_variables(
                inputs.shape.as_list()[-1], self.num_units)
        gates = tf.sigmoid(tf.nn.bias_add(
            matmul(tf.concat([inputs, state], 1), gate_kernel), gate_bias))
        reset, update = tf.split(gates, 2, axis=1)
        candidate = tf.tanh(tf.nn.bias_add(
            matmul(tf.concat([inputs, reset * state], 1), cand_kernel), cand_bias))
        new_state = update * state + (1.0 - update) * candidate
        return new_state, new_state


class StackedGRUCell:
    """Layers of GRUCell with the states concatenated (state_is_tuple=False).

    State [B, L*units] = [h_layer0, h_layer1, ...]; output is the top layer's h.
    Variables: multi_rnn_cell/cell_<i>/gru_cell/...
    """

    def __init__(self, num_units: int, num_layers: int):
        self.cells = [GRUCell(num_units) for _ in range(num_layers)]
        self.num_units = num_units

    @property
    def state_size(self) -> int:
        return self.num_units * len(self.cells)

    @property
    def output_size(self) -> int:
        return self.num_units

    def zero_state(self, batch_size, dtype) -> tf.Tensor:
        return tf.zeros([batch_size, self.state_size], dtype)

    def __call__(self, inputs: tf.Tensor, state: tf.Tensor, scope=None):
        layer_states = tf.split(state, len(self.cells), axis=1)
        new_states = []
        output = inputs
        with tf.variable_scope("multi_rnn_cell", reuse=tf.AUTO_REUSE):
            for index, (cell, layer_state) in enumerate(zip(self.cells, layer_states)):
                with tf.variable_scope(f"cell_{index}"):
                    output, new_state = cell(output, layer_state)
                new_states.append(new_state)
        return output, tf.concat(new_states, axis=1)


class _RecurrentGRUPart(_SingleStateCell):
    """The recurrent half of a GRU cell whose input half was precomputed.

    Input at step t: [x W_gates[:I] + b_gates, x W_cand[:I] + b_cand]
    ([B, 3H]); with the recurrent kernels W_gates[I:], W_cand[I:] this is
    exactly GRUCell's step (the products are split along the summed axis).
    """

    def __init__(self, num_units: int, gate_kernel: tf.Tensor, cand_kernel: tf.Tensor):
        self.num_units = num_units
        self.gate_kernel = gate_kernel
        self.cand_kernel = cand_kernel

    def __call__(self, inputs: tf.Tensor, state: tf.Tensor, scope=None):
        gate_in, cand_in = tf.split(inputs, [2 * self.num_units, self.num_units], axis=1)
        gates = tf.sigmoid(gate_in + matmul(state, self.gate_kernel))
        reset, update = tf.split(gates, 2, axis=1)
        candidate = tf.tanh(cand_in + matmul(reset * state, self.cand_kernel))
        new_state = update * state + (1.0 - update) * candidate
        return new_state, new_state


def stacked_gru_final_state(inputs: tf.Tensor, sequence_length: tf.Tensor,
                            num_units: int, num_layers: int) -> tf.Tensor:
    """StackedGRUCell run by tf.nn.dynamic_rnn, computed layer by layer.

    inputs [B, T, I], sequence_length [B] -> final states [B, L*units]
    ([h_layer0, h_layer1, ...], frozen after sequence_length steps), the
    same values as ``dynamic_rnn(StackedGRUCell(...), inputs,
    sequence_length)`` in the caller's scope, with the same variables
    (rnn/multi_rnn_cell/cell_<i>/gru_cell/{gates,candidate}/{kernel,bias}).

    Faster: every layer runs over the whole sequence before the next, so the
    input half of its products ([x, h] W = x W[:I] + h W[I:]) is one
    [T*B, I] x [I, 3*units] matmul outside the time loop; only h W[I:] stays
    in the loop. Layer l+1 reads layer l's outputs (zero after the end of a
    sequence, where its state is frozen anyway). Time-major throughout.
    """
    inputs = tf.transpose(inputs, [1, 0, 2])                     # [T, B, I]
    leading = [size if size is not None else tf.shape(inputs)[axis]
               for axis, size in enumerate(inputs.shape.as_list()[:2])]
    states = []
    with tf.variable_scope("rnn"):
        for index in range(num_layers):
            input_dim = inputs.shape.as_list()[-1]
            with tf.variable_scope(f"multi_rnn_cell/cell_{index}/gru_cell"):
                gate_kernel, gate_bias, cand_kernel, cand_bias = _gru_variables(
                    input_dim, num_units)
            with tf.name_scope(f"layer_{index}"):
                input_kernel = tf.concat([gate_kernel[:input_dim], cand_kernel[:input_dim]], 1)
                input_bias = tf.concat([gate_bias, cand_bias], 0)
                projected = tf.nn.bias_add(
                    matmul(tf.reshape(inputs, [-1, input_dim]), input_kernel), input_bias)
                projected = tf.reshape(projected, leading + [3 * num_units])
                cell = _RecurrentGRUPart(num_units, gate_kernel[input_dim:],
                                         cand_kernel[input_dim:])
                outputs, state = tf.nn.dynamic_rnn(
                    cell, projected, sequence_length=sequence_length, dtype=inputs.dtype,
                    time_major=True, scope=f"layer_{index}")
            states.append(state)
            inputs = outputs
    return tf.concat(states, axis=1)


def l2_normalize_frames(model_input: tf.Tensor) -> tf.Tensor:
    """Joint per-frame L2 normalisation over the last axis (epsilon 1e-12)."""
    return tf.nn.l2_normalize(model_input, axis=-1, epsilon=1e-12)


def sample_frames(model_input: tf.Tensor, num_frames: tf.Tensor, num_samples: int,
                  mode: str = "random", seed: Optional[int] = None,
                  fingerprints: Optional[tf.Tensor] = None) -> tf.Tensor:
    """Picks num_samples frames per video from its valid (unpadded) frames.

    model_input [B, T, D], num_frames [B] -> [B, num_samples, D], the frames
    of sample_frame_indices (which says how they are drawn).
    """
    indices = sample_frame_indices(num_frames, num_samples, mode, seed, fingerprints)
    return tf.gather(model_input, indices, batch_dims=1)


# ---------------------------------------------------------------------------
# Frame draws: per video at inference, as counts for the tiled ensemble


def video_fingerprints(input_raw: tf.Tensor, num_frames: tf.Tensor) -> tf.Tensor:
    """int64 [B, 2] that depends only on each video's own features.

    input_raw [B, T, D] as read from the records (dequantised, not
    normalised: its values are exact). Built from the bit patterns of the
    first, middle and last valid frames with integer sums, which are exact in
    any order, so a video gets the same fingerprint in any batch.
    """
    n = tf.maximum(tf.cast(num_frames, tf.int32), 1)
    picks = tf.stack([tf.zeros_like(n), n // 2, n - 1], axis=1)                  # [B, 3]
    frames = tf.gather(input_raw, picks, batch_dims=1)                           # [B, 3, D]
    bits = tf.bitwise.bitwise_and(tf.cast(tf.bitcast(frames, tf.int32), tf.int64), 0xFFFFFFFF)
    flat = tf.reshape(bits, [tf.shape(bits)[0], -1])
    weights = tf.cast(tf.range(1, tf.shape(flat)[1] + 1), tf.int64)[None, :]
    return tf.stack([tf.reduce_sum(flat, axis=1) + tf.cast(n, tf.int64),
                     tf.reduce_sum(flat * weights, axis=1)], axis=1)


def _occurrences(fingerprints: tf.Tensor) -> tf.Tensor:
    """int64 [R]: how many earlier rows have the same fingerprint (copy t of
    a video tiled T times is occurrence t)."""
    same = tf.reduce_all(tf.equal(fingerprints[:, None, :], fingerprints[None, :, :]), axis=2)
    rows = tf.range(tf.shape(fingerprints)[0])
    earlier = rows[None, :] < rows[:, None]
    return tf.reduce_sum(tf.cast(tf.logical_and(same, earlier), tf.int64), axis=1)


def _draw_salt(seed: Optional[int]) -> int:
    """A stable number from the graph seed, the op seed and the variable
    scope, so the members of an ensemble draw independently."""
    graph_seed = tf.get_default_graph().seed
    text = f"{graph_seed or 0}/{-1 if seed is None else seed}/{tf.get_variable_scope().name}"
    return zlib.crc32(text.encode("utf-8")) & 0x7FFFFFFF


def _per_video_uniform(fingerprints: tf.Tensor, num_samples: int,
                       seed: Optional[int]) -> tf.Tensor:
    """float32 [R, num_samples] in [0, 1): each row from a stateless
    generator seeded by its fingerprint, its occurrence and the salt."""
    seeds = tf.stack([fingerprints[:, 0] * 31 + _draw_salt(seed),
                      fingerprints[:, 1] + _occurrences(fingerprints)], axis=1)
    return tf.map_fn(lambda row: tf.random.stateless_uniform([num_samples], seed=row), seeds,
                     fn_output_signature=tf.float32)


def sample_frame_indices(num_frames: tf.Tensor, num_samples: int, mode: str = "random",
                         seed: Optional[int] = None,
                         fingerprints: Optional[tf.Tensor] = None) -> tf.Tensor:
    """The frame indices that ``sample_frames`` gathers, without gathering.

    num_frames [B] -> int32 [B, num_samples]. mode "uniform": evenly spaced,
    deterministic. mode "random": floor(u * n) with u ~ U[0, 1), with
    replacement (the original's SampleRandomFrames). Without fingerprints
    (training) u comes from one RandomUniform op seeded by the graph seed and
    `seed`: new frames every step. With fingerprints [B, 2] (inference,
    video_fingerprints) each video's u depends only on the video, the seeds
    and the variable scope: the same frames in any batch, order or shard.
    n = 0 reads row 0 (the all-zero padding).
    """
    batch_size = tf.shape(num_frames)[0]
    frames = tf.cast(tf.maximum(num_frames, 1), tf.float32)[:, None]
    if mode == "random" and fingerprints is not None:
        positions = _per_video_uniform(fingerprints, num_samples, seed)
    elif mode == "random":
        positions = tf.random_uniform([batch_size, num_samples], 0.0, 1.0, seed=seed)
    elif mode == "uniform":
        positions = tf.tile(((tf.range(num_samples, dtype=tf.float32) + 0.5)
                             / num_samples)[None, :], [batch_size, 1])
    else:
        raise ValueError(f"unknown frame sampling mode {mode!r} (random or uniform)")
    max_index = tf.cast(tf.maximum(num_frames, 1), tf.int32)[:, None] - 1
    return tf.minimum(tf.cast(tf.floor(positions * frames), tf.int32), max_index)


def frame_counts(indices: tf.Tensor, num_steps) -> tf.Tensor:
    """How often each frame was drawn: indices int [..., N] with values in
    [0, num_steps) -> float32 [..., num_steps] (each row sums to N).

    Sampling with replacement is a count per frame, so any sum over the drawn
    frames, sum_j f(x_{i_j}), equals sum_n counts_n f(x_n).
    """
    indices = tf.convert_to_tensor(indices, tf.int32)
    num_draws = tf.shape(indices)[-1]
    flat = tf.reshape(indices, [-1, num_draws])
    rows = tf.shape(flat)[0]
    segments = flat + tf.range(rows)[:, None] * num_steps
    counts = tf.math.unsorted_segment_sum(tf.ones_like(segments, tf.float32), segments,
                                          rows * num_steps)
    counts = tf.reshape(counts, tf.concat([tf.shape(indices)[:-1], [num_steps]], axis=0))
    if isinstance(num_steps, int):
        counts.set_shape(indices.shape[:-1].concatenate([num_steps]))
    return counts


# ---------------------------------------------------------------------------
# bfloat16 compute (training.precision.bfloat16_compute_getter)

# graph -> {name of the float32 view handed to the model: the bfloat16 weight}
_BFLOAT16_WEIGHTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
# graph -> names of views whose bf16 weight is not used inside a while loop
_OUTSIDE_LOOPS_ONLY: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def register_bfloat16_weight(view: tf.Tensor, weight: tf.Tensor,
                             inside_while_loops: bool = True) -> None:
    """Marks `view` (the float32 tensor a model gets for a variable) so that
    ``matmul`` multiplies by `weight` (its bfloat16 value) in bfloat16.

    inside_while_loops=False keeps the float32 product for matmuls built
    inside a while loop (training: the gradient of a loop-invariant weight is
    summed over the iterations in the weight's dtype, and 300 GRU steps
    summed in bfloat16 would lose the small ones)."""
    _BFLOAT16_WEIGHTS.setdefault(view.graph, {})[view.name] = weight
    outside_only = _OUTSIDE_LOOPS_ONLY.setdefault(view.graph, set())
    if inside_while_loops:
        outside_only.discard(view.name)
    else:
        outside_only.add(view.name)


def _usable_inside_loops(view: tf.Tensor) -> bool:
    return view.name not in _OUTSIDE_LOOPS_ONLY.get(view.graph, ())


def in_while_loop(op: Optional[tf.Operation] = None) -> bool:
    """Whether `op` (default: an op built now) is inside a while loop."""
    owner = op if op is not None else tf.get_default_graph()
    context = owner._get_control_flow_context()  # pylint: disable=protected-access
    while context is not None:
        if context.IsWhileContext():
            return True
        context = context.outer_context
    return False


def bfloat16_matmul_getter(getter, name, **kwargs):
    """custom_getter for mixed-precision training (``--matmul_dtype=bfloat16``).

    Variables stay float32 (so do the optimizer, its slots and the
    checkpoint). A trainable float32 weight of rank >= 2 is handed to the
    model as an identity view registered with its bfloat16 cast, so that
    every weight product made through ``matmul`` runs in bfloat16 (oneDNN
    accumulates in float32) and the gradient flows back through the cast
    into the float32 variable. Products inside while loops (the GRU's
    recurrent half) stay float32; see register_bfloat16_weight.
    """
    variable = getter(name, **kwargs)
    trainable = kwargs.get("trainable")
    if trainable is False or variable.dtype.base_dtype != tf.float32 or \
            variable.shape.ndims is None or variable.shape.ndims < 2:
        return variable
    graph = tf.get_default_graph()
    context = graph._get_control_flow_context()  # pylint: disable=protected-access
    graph._set_control_flow_context(None)  # pylint: disable=protected-access
    try:
        with tf.control_dependencies(None):
            view = tf.identity(variable, name=name.split("/")[-1] + "_view")
            register_bfloat16_weight(view, tf.cast(view, tf.bfloat16),
                                     inside_while_loops=False)
    finally:
        graph._set_control_flow_context(context)  # pylint: disable=protected-access
    return view


_SLICE_ATTRS = ("begin_mask", "end_mask", "ellipsis_mask", "new_axis_mask",
                "shrink_axis_mask")


def bfloat16_weight(tensor, _depth: int = 0) -> Optional[tf.Tensor]:
    """The bfloat16 weight registered for `tensor`, else None.

    A slice (``w[:n]``), a concatenation or an identity of registered views
    gets the same slice / concatenation of their bf16 weights (made once, in
    the top-level context when the float32 one is outside any while loop, and
    registered for the next call, outside loops only if a source is).
    """
    if not isinstance(tensor, tf.Tensor):
        return None
    found = _BFLOAT16_WEIGHTS.get(tensor.graph, {}).get(tensor.name)
    if found is not None or _depth > 8:
        return found
    op = tensor.op
    if op.type not in ("StridedSlice", "ConcatV2", "Identity"):
        return None
    values = op.inputs[:-1] if op.type == "ConcatV2" else op.inputs[:1]
    sources = [bfloat16_weight(value, _depth + 1) for value in values]
    if not sources or any(source is None for source in sources):
        return None
    import contextlib

    outside = not in_while_loop(op)
    with tf.control_dependencies(None) if outside else contextlib.nullcontext():
        with tf.name_scope(op.name.rsplit("/", 1)[-1] + "_bfloat16"):
            if op.type == "StridedSlice":
                weight = tf.raw_ops.StridedSlice(
                    input=sources[0], begin=op.inputs[1], end=op.inputs[2],
                    strides=op.inputs[3], **{key: op.get_attr(key) for key in _SLICE_ATTRS})
            elif op.type == "ConcatV2":
                weight = tf.concat(sources, axis=op.inputs[-1])
            else:
                weight = sources[0]
    register_bfloat16_weight(tensor, weight,
                             all(_usable_inside_loops(value) for value in values))
    return weight


def matmul(a: tf.Tensor, b: tf.Tensor, transpose_a: bool = False,
           transpose_b: bool = False) -> tf.Tensor:
    """tf.matmul(a, b), except when b is a weight registered by a bfloat16
    compute getter (inference: training.precision.bfloat16_compute_getter;
    training: bfloat16_matmul_getter): then a is cast to bfloat16, the
    product is computed in bfloat16 (oneDNN; AVX512-BF16/AMX accumulate in
    float32) and cast back to a's dtype, so everything around the matmul
    (bias, BN, softmax, sums, normalisation) stays float32. Without such a
    getter it is tf.matmul."""
    weight = bfloat16_weight(b)
    if weight is not None and in_while_loop() and not _usable_inside_loops(b):
        weight = None
    if weight is None:
        return tf.matmul(a, b, transpose_a=transpose_a, transpose_b=transpose_b)
    product = tf.matmul(tf.cast(a, tf.bfloat16), weight, transpose_a=transpose_a,
                        transpose_b=transpose_b)
    return tf.cast(product, a.dtype)
