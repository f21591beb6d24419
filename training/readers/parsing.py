"""Helpers the readers share: flag checks, a batch of serialized records,
multi-hot labels and the static shapes of parse's outputs."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from models.tf_compat import tf
from training.cli import UserError


def check_names_sizes(feature_names: Sequence[str],
                      feature_sizes: Sequence[Any]) -> Tuple[List[str], List[int]]:
    """(names, int sizes) of --feature_names/--feature_sizes, or a UserError."""
    names = list(feature_names)
    sizes = [int(s) for s in feature_sizes]
    if not names:
        raise UserError("--feature_names: no feature names given")
    if len(names) != len(sizes):
        raise UserError(
            f"--feature_names/--feature_sizes: {len(names)} names "
            f"({','.join(names)}) but {len(sizes)} sizes "
            f"({','.join(str(s) for s in sizes)})")
    if len(set(names)) != len(names):
        raise UserError(f"--feature_names: duplicate name in '{','.join(names)}'")
    for name, size in zip(names, sizes):
        if size <= 0:
            raise UserError(f"--feature_sizes: size of '{name}' must be positive, got {size}")
    return names, sizes


def check_num_classes(num_classes: Any) -> int:
    """--num_classes as a positive int, or a UserError."""
    num_classes = int(num_classes)
    if num_classes <= 0:
        raise UserError(f"--num_classes: must be positive, got {num_classes}")
    return num_classes


def as_batch(serialized: Any) -> Any:
    """Returns ``serialized`` as a string tensor of rank 1 (a scalar becomes [1])."""
    serialized = tf.convert_to_tensor(serialized, dtype=tf.string)
    if serialized.shape.ndims == 0:
        serialized = tf.reshape(serialized, [1])
    return serialized


def static_batch(serialized: Any) -> Optional[int]:
    """The static batch size of a batch of records (None when unknown)."""
    return tf.compat.dimension_value(serialized.shape[0]) if serialized.shape.ndims else None


def multi_hot(labels, num_classes):
    """Ragged int64 labels [B, (L)] -> float32 multi-hot [B, num_classes].

    Fails (InvalidArgumentError naming "labels" and num_classes) when a label
    id is negative or >= num_classes.
    """
    values = labels.values
    checks = [
        tf.debugging.assert_less(
            values, tf.constant(num_classes, tf.int64),
            message=f"labels: a label id is >= num_classes ({num_classes}), the classes "
                    f"of the model (training: --num_classes)",
            summarize=5),
        tf.debugging.assert_non_negative(
            values, message="labels: a label id is negative", summarize=5),
    ]
    with tf.control_dependencies(checks):
        values = tf.identity(values)
    rows = tf.cast(labels.value_rowids(), tf.int64)
    batch = tf.cast(labels.nrows(), tf.int64)
    indices = tf.stack([rows, values], axis=1)
    dense = tf.scatter_nd(indices, tf.ones_like(values, dtype=tf.float32),
                          shape=tf.stack([batch, tf.constant(num_classes, tf.int64)]))
    # scatter_nd sums duplicates: clamp back to a 0/1 indicator.
    return tf.minimum(dense, 1.0)


def finish(outputs: Dict[str, Any], batch: Optional[int], num_classes: int,
           feature_shape: Sequence[int]) -> Dict[str, Any]:
    """parse's outputs with their static shapes set."""
    outputs["id"].set_shape([batch])
    outputs["labels"].set_shape([batch, num_classes])
    outputs["num_frames"].set_shape([batch])
    outputs["features"].set_shape([batch] + list(feature_shape))
    return outputs
