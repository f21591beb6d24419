"""int8 weight storage: symmetric per-output-column quantisation, and the
plan of which matrices to store that way.

A large weight matrix W (rank >= 2, output columns on the last axis) is
stored as two checkpoint tensors::

    <key>             int8    W's shape      q = round(W / scale), in [-127, 127]
    <key>/int8_scale  float32 [columns]      scale = max |W[..., j]| / 127

and read back as q * scale (float32). Every |W - q * scale| <= scale / 2 in
its column; a column of zeros gets scale 1 and q = 0 (exact). Everything
else in an int8 checkpoint is bfloat16 (bfloat16_patch.convert). The graph
side dequantises once, when the checkpoint is restored
(training.precision.Int8StorageSaveable); nothing in TensorFlow changes.

``plan_int8`` picks the fewest, largest matrices whose int8 storage brings a
set of tensors under a byte target (docs/precision.md).
"""
from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from models.tf_compat import tf
from training.cli import UserError

INT8 = "int8"
SCALE_SUFFIX = "/int8_scale"
INT8_MAX = 127
# Matrices with at least this many values are int8 candidates (--int8_min_values).
# At full size that is the 29 largest of the six presets (1.0M to 75.5M values).
DEFAULT_MIN_VALUES = 1 << 20
# The claim about int8 storage: it moves GAP@20 by at most this much (the
# paired interval over videos in tests/stages/test_quantize.py; bench/bench_int8.py
# on the quick start's models fails when a model or the ensemble is over).
GAP_TOLERANCE = 0.001


def scale_key(key: str) -> str:
    return key + SCALE_SUFFIX


def quantize_columns(values: np.ndarray, name: str = "tensor") -> Tuple[np.ndarray, np.ndarray]:
    """values [..., C] (any float dtype) -> (q int8 [..., C], scale float32 [C]).

    Symmetric, per output column (last axis), round to nearest even. A
    non-finite value is a UserError naming `name` (it has no int8 form).
    """
    values = np.asarray(values).astype(np.float32, copy=False)
    if values.ndim < 2:
        raise ValueError(f"{name}: int8 storage needs a matrix, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise UserError(f"{name}: holds NaN or infinite values; cannot store it as int8")
    columns = values.reshape(-1, values.shape[-1])
    peak = np.abs(columns).max(axis=0)
    scale = np.where(peak > 0, peak / np.float32(INT8_MAX), np.float32(1.0)).astype(np.float32)
    quantized = np.rint(columns / scale)
    quantized = np.clip(quantized, -INT8_MAX, INT8_MAX).astype(np.int8)
    return quantized.reshape(values.shape), scale


def dequantize_columns(quantized: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """q [..., C] int8 and scale [C] -> q * scale, float32."""
    return quantized.astype(np.float32) * np.asarray(scale, np.float32)


def int8_keys(specs: Mapping[str, Tuple[Any, Any]]) -> List[str]:
    """The keys of a checkpoint's specs ({key: (shape, dtype)}) stored as int8
    with their scale beside them."""
    return sorted(key for key, (_, dtype) in specs.items()
                  if tf.as_dtype(dtype).base_dtype == tf.int8 and scale_key(key) in specs)


def without_scales(specs: Mapping[str, Tuple[Any, Any]]) -> dict:
    """specs without the int8 scales: one entry per stored variable."""
    scales = {scale_key(key) for key in int8_keys(specs)}
    return {key: spec for key, spec in specs.items() if key not in scales}


def int8_bytes(shape: Sequence[int]) -> int:
    """Bytes of a matrix stored as int8: one per value plus a float32 per column."""
    return int(np.prod(shape, dtype=np.int64)) + 4 * int(shape[-1])


def is_candidate(shape: Optional[Sequence[int]], dtype, min_values: int) -> bool:
    """A floating matrix (rank >= 2) of at least min_values values."""
    return (shape is not None and len(shape) >= 2 and tf.as_dtype(dtype).is_floating
            and int(np.prod(shape, dtype=np.int64)) >= min_values)


def plan_int8(tensors: Sequence[Tuple[Any, Sequence[int], int]], fixed_bytes: int,
              target_bytes: Optional[int], what: str) -> List[Any]:
    """The fewest, largest candidates to store as int8 so that the total fits.

    tensors: [(name, shape, bytes as stored now)] of the candidates;
    fixed_bytes: everything else. target_bytes None: all of them. A target
    that even all of them cannot reach is a UserError naming `what`.
    """
    by_saving = sorted(tensors, key=lambda item: item[2] - int8_bytes(item[1]), reverse=True)
    if target_bytes is None:
        return [name for name, _, _ in by_saving]
    total = fixed_bytes + sum(size for _, _, size in tensors)
    chosen = []
    for name, shape, size in by_saving:
        if total <= target_bytes:
            break
        saving = size - int8_bytes(shape)
        if saving <= 0:
            break
        chosen.append(name)
        total -= saving
    if total > target_bytes:
        raise UserError(f"--target_bytes={target_bytes}: {what} needs at least {total:,} bytes "
                        f"with every candidate matrix in int8; lower --int8_min_values or "
                        f"raise the target")
    return chosen


def read_dequantized(reader, key: str, specs: Mapping[str, Tuple[Any, Any]]) -> np.ndarray:
    """A checkpoint tensor as its model sees it: int8 tensors dequantised
    (float32), everything else as stored."""
    value = reader.get_tensor(key)
    if scale_key(key) in specs and tf.as_dtype(specs[key][1]).base_dtype == tf.int8:
        return dequantize_columns(value, reader.get_tensor(scale_key(key)))
    return value
