"""bfloat16 storage, float32 compute, without touching the TensorFlow installation.

The original replaced TensorFlow's own ``variable_scope.py`` and ``saver.py``
(docs/original.md 5.1). Here the same effect comes from a ``custom_getter``::

    with tf.variable_scope("tower", custom_getter=bfloat16_getter):
        predictions = model(...)

Every float32 variable that the model requests through ``tf.get_variable`` is
created as a bfloat16 variable *of the same name* and handed back to the model
as a float32 view (``tf.cast``), so all the math stays float32 and a plain
``tf.train.Saver`` restores a bfloat16 checkpoint (written by
``bfloat16_patch.convert``) directly. Unlike the original patch, the requested
initializer is kept (cast to bfloat16) instead of being replaced by zeros.
The graph is for inference: BN moving-average updates are not created for a
view (models.layers.batch_norm checks for a Variable).

int8 checkpoints (training.quantize) are built the same way; their int8
matrices are dequantised once, by the restore op (Int8StorageSaveable).
training.members.Member.getter_for picks the getter a checkpoint needs (its
storage kind comes from training.checkpoint_fit, which also checks that a checkpoint
fits a graph before any restore).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Mapping, Optional

from models import layers
from models.tf_compat import saveable_object, tf
from training import checkpoint_fit, checkpoints, quantize
from training.cli import UserError
from training.model_flags import ModelFlags

DTYPE_KEY = "checkpoint_dtype"   # model_flags.json marker written by the converter


def _float32_initializer_as_bfloat16(initializer):
    """Wraps an initializer so that it draws float32 values and returns them as bf16."""
    if initializer is None:
        initializer = tf.glorot_uniform_initializer()   # get_variable's float default
    if inspect.isclass(initializer):
        initializer = initializer()
    if not callable(initializer):
        # A value (tensor, array, number): get_variable uses it as the initial value.
        return tf.cast(tf.convert_to_tensor(initializer, dtype=tf.float32), tf.bfloat16)
    try:
        takes_partition = "partition_info" in inspect.signature(initializer).parameters
    except (TypeError, ValueError):
        takes_partition = False

    def initialize(shape, dtype=None, partition_info=None):
        del dtype
        if takes_partition:
            value = initializer(shape, dtype=tf.float32, partition_info=partition_info)
        else:
            value = initializer(shape, dtype=tf.float32)
        return tf.cast(value, tf.bfloat16)

    return initialize


def _float32_regularizer(regularizer):
    if regularizer is None:
        return None
    return lambda variable: regularizer(tf.cast(variable, tf.float32))


def bfloat16_getter(getter, name, **kwargs):
    """custom_getter: float32 variables are stored as bfloat16, returned as float32.

    Other dtypes (integers, float64, bf16 requested explicitly) pass through.
    (tf.get_variable calls custom getters with keyword arguments only.)
    """
    dtype = kwargs.get("dtype")
    requested = tf.as_dtype(dtype).base_dtype if dtype is not None else tf.float32
    if requested != tf.float32:
        return getter(name, **kwargs)
    kwargs["dtype"] = tf.bfloat16
    kwargs["initializer"] = _float32_initializer_as_bfloat16(kwargs.get("initializer"))
    kwargs["regularizer"] = _float32_regularizer(kwargs.get("regularizer"))
    variable = getter(name, **kwargs)
    if variable.dtype.base_dtype != tf.bfloat16:
        raise UserError(f"variable {name}: exists as {variable.dtype.base_dtype.name}, "
                        f"cannot be viewed through the bfloat16 getter")
    return tf.cast(variable, tf.float32, name=name.split("/")[-1] + "_float32")


# ---------------------------------------------------------------------------
# How a bfloat16 checkpoint computes at inference (--bf16_compute)
#
#   cast_each_step  bf16 variables, every read cast to float32 on every run
#                   (bfloat16_getter; the original patch's behaviour; inside
#                   the GRU's while loop that is once per time step)
#   cast_at_load    float32 variables, filled once when the checkpoint is
#                   restored: the restore op reads the bf16 tensors and casts
#                   them (BFloat16StorageSaveable), and saving casts them back
#                   (exact), so the checkpoint on disk stays bf16. Twice the
#                   memory of the other two modes.
#   bfloat16        bf16 variables; the big matmuls (every weight matmul made
#                   through models.layers.matmul) run in bfloat16 with the
#                   activations cast to bf16 and the product cast back to
#                   float32; everything else (biases, BN, softmax, sums,
#                   normalisation, the GRU state) stays float32
#                   (bfloat16_compute_getter).
# All three read and write the same bf16 checkpoints; cast_each_step and
# cast_at_load compute exactly the same numbers.

CAST_EACH_STEP = "cast_each_step"
CAST_AT_LOAD = "cast_at_load"
BFLOAT16_COMPUTE = "bfloat16"
BF16_COMPUTE_MODES = (CAST_EACH_STEP, CAST_AT_LOAD, BFLOAT16_COMPUTE)
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU multiplies bfloat16 natively (AVX512-BF16 or AMX-BF16,
    read from /proc/cpuinfo; False where that file does not exist). Without
    them oneDNN emulates bf16 matmuls, slower than float32 (2.4x slower for
    the [80, 69632] x [69632, 1024] hidden-layer product on a Xeon capped with
    ONEDNN_MAX_CPU_ISA=AVX512_CORE)."""
    try:
        with open(cpuinfo) as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags_present = set(line.split(":", 1)[1].split())
                    return any(flag in flags_present for flag in NATIVE_BF16_CPU_FLAGS)
    except OSError:
        pass
    return False


def visible_gpus() -> list:
    """The GPUs this process may use (CUDA_VISIBLE_DEVICES applies), found
    without creating devices (no GPU memory is taken)."""
    return tf.config.list_physical_devices("GPU")


def gpu_has_native_bfloat16() -> bool:
    """True when every visible GPU has bfloat16 tensor cores (compute
    capability 8.0 or later: Ampere, Hopper, ...)."""
    gpus = visible_gpus()
    capabilities = [tf.config.experimental.get_device_details(gpu).get("compute_capability")
                    for gpu in gpus]
    return bool(gpus) and all(cc is not None and tuple(cc) >= (8, 0) for cc in capabilities)


def native_bfloat16() -> bool:
    """True when the devices that will compute (the GPUs if any, else the
    CPU) multiply bfloat16 natively."""
    return gpu_has_native_bfloat16() if visible_gpus() else cpu_has_native_bfloat16()


# The default: the fastest mode that keeps GAP@20 within 0.001 of float32
# (bench/bench_bf16_compute.py, docs/benchmarks.md "bfloat16 at inference"): bfloat16
# compute where the GPU or CPU multiplies bf16 natively, else cast_at_load.
# The mode is fixed in the exported graph, so build on the kind of machine
# that runs the inference (or pass --bf16_compute).
DEFAULT_BF16_COMPUTE = BFLOAT16_COMPUTE if native_bfloat16() else CAST_AT_LOAD


def check_bf16_compute(mode: Optional[str]) -> str:
    """The mode itself (None: the default); a UserError for an unknown one."""
    if mode is None or mode == "":
        return DEFAULT_BF16_COMPUTE
    if mode not in BF16_COMPUTE_MODES:
        raise UserError(f"--bf16_compute: one of {', '.join(BF16_COMPUTE_MODES)}, "
                        f"got {mode!r}")
    return mode


def bfloat16_compute_getter(getter, name, **kwargs):
    """custom_getter of the "bfloat16" mode: as bfloat16_getter (bf16
    variables, float32 views), and each view is registered with
    models.layers.register_bfloat16_weight, so that models.layers.matmul
    multiplies by the bf16 variable in bfloat16 instead of by the view (which
    is then never computed when a weight is only used in matmuls)."""
    view = bfloat16_getter(getter, name, **kwargs)
    if isinstance(view, tf.Tensor) and view.op.type == "Cast" and \
            view.op.inputs[0].dtype.base_dtype == tf.bfloat16:
        layers.register_bfloat16_weight(view, view.op.inputs[0])
    return view


def getter_for_mode(mode: Optional[str]) -> Optional[Callable]:
    """The custom_getter that builds a bf16 checkpoint's graph in `mode`
    (None for cast_at_load: plain float32 variables)."""
    mode = check_bf16_compute(mode)
    return {CAST_EACH_STEP: bfloat16_getter, CAST_AT_LOAD: None,
            BFLOAT16_COMPUTE: bfloat16_compute_getter}[mode]


class BFloat16StorageSaveable(saveable_object.SaveableObject):
    """A float32 variable whose checkpoint tensor is bfloat16 (cast_at_load).

    Restore reads the bf16 tensor and assigns its float32 cast (exact): the
    conversion happens once, inside the Saver's restore op, so a graph
    exported with such a Saver loads the starter way (import_meta_graph +
    restore) with no extra step. Save writes cast(variable, bf16), which is
    exact for values that came from bf16, so the file stays bf16.
    """

    def __init__(self, variable, name: str):
        self._variable = variable
        dtype = variable.dtype.base_dtype
        spec = saveable_object.SaveSpec(
            lambda: tf.cast(variable.value(), tf.bfloat16, name="to_bfloat16"), "", name,
            dtype=tf.bfloat16, device=variable.device)
        super().__init__(variable, [spec], name)
        self._float_dtype = dtype

    def restore(self, restored_tensors, restored_shapes):
        del restored_shapes
        value = tf.cast(restored_tensors[0], self._float_dtype, name="from_bfloat16")
        return tf.assign(self._variable, value, validate_shape=True)


def bfloat16_storage_saveables(var_map: Mapping[str, Any]) -> Dict[str, Any]:
    """{checkpoint key: variable} -> the same map with every floating
    float32 variable wrapped in a BFloat16StorageSaveable (others unchanged)."""
    return {key: (BFloat16StorageSaveable(var, key)
                  if var.dtype.base_dtype == tf.float32 else var)
            for key, var in var_map.items()}


class Int8StorageSaveable(saveable_object.SaveableObject):
    """A variable (float32 or bfloat16) whose checkpoint holds an int8 matrix
    and its float32 scale per column (training.quantize).

    Restore reads both, assigns cast(q * scale) to the variable and the
    scale to `scale_variable` (a float32 [columns] variable outside the
    model's collections): the dequantisation runs once, in the Saver's
    restore op, so an exported graph still loads the starter way. Save
    writes round(variable / scale) as int8 and the scale: exact for values
    that came from int8 (|q| <= 127, and even a bfloat16 variable's rounding
    of q * scale moves q by at most 127 * 2^-9 < 1/2).
    """

    def __init__(self, variable, scale_variable, name: str):
        self._variable, self._scale = variable, scale_variable

        def quantized():
            ratio = tf.cast(variable.value(), tf.float32) / scale_variable.value()
            return tf.cast(tf.clip_by_value(tf.round(ratio), -quantize.INT8_MAX,
                                            quantize.INT8_MAX), tf.int8, name="to_int8")

        specs = [saveable_object.SaveSpec(quantized, "", name, dtype=tf.int8,
                                          device=variable.device),
                 saveable_object.SaveSpec(scale_variable.value, "", quantize.scale_key(name),
                                          dtype=tf.float32, device=variable.device)]
        super().__init__(variable, specs, name)

    def restore(self, restored_tensors, restored_shapes):
        del restored_shapes
        quantized, scale = restored_tensors
        value = tf.cast(tf.cast(quantized, tf.float32) * scale, self._variable.dtype.base_dtype,
                        name="from_int8")
        return tf.group(tf.assign(self._variable, value, validate_shape=True),
                        tf.assign(self._scale, scale, validate_shape=True))


def int8_scale_variable(variable) -> tf.Variable:
    """The float32 [columns] scale that an Int8StorageSaveable of `variable`
    fills at restore (kept out of every collection: no initializer runs it)."""
    columns = variable.shape.as_list()[-1]
    return tf.Variable(tf.ones([columns], tf.float32), trainable=False, collections=[],
                       name=variable.op.name + "_int8_scale")


def storage_saveables(var_map: Mapping[str, Any], stored_bf16: bool,
                      int8_scales: Mapping[str, Any]) -> Dict[str, Any]:
    """{checkpoint key: variable} -> what a Saver needs to keep the storage:
    keys of int8_scales ({key: scale variable}) through Int8StorageSaveable,
    then (stored_bf16) float32 variables through BFloat16StorageSaveable."""
    out = {key: Int8StorageSaveable(var, int8_scales[key], key)
           for key, var in var_map.items() if key in int8_scales}
    rest = {key: var for key, var in var_map.items() if key not in int8_scales}
    out.update(bfloat16_storage_saveables(rest) if stored_bf16 else rest)
    return out


# ---------------------------------------------------------------------------
# Which getter a checkpoint needs


def check_dtype_marker(checkpoint_path: str, kind: str,
                       model_flags: Optional[ModelFlags] = None) -> None:
    """model_flags' "checkpoint_dtype" marker (written by the converter) must
    agree with the checkpoint's storage kind when present."""
    marker = model_flags.checkpoint_dtype if model_flags is not None else None
    if marker is not None and marker != kind:
        raise UserError(f"{checkpoint_path}: is {checkpoint_fit.a_kind(kind)} checkpoint but its "
                        f"{checkpoints.MODEL_FLAGS_FILE} says {DTYPE_KEY}={marker!r}")
