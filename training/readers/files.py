"""Dequantisation and file listing: the uint8 -> float32 constants of the
YouTube-8M features and the expansion of a --*_data_pattern flag."""
from __future__ import annotations

from models.tf_compat import tf
from training.cli import UserError
from training.flags import comma_list

MAX_FRAMES = 300


def dequantize_constants(max_quantized_value=2.0, min_quantized_value=-2.0):
    """(scalar, bias) of ``dequantize``: ``x = q * scalar + bias``."""
    quantized_range = max_quantized_value - min_quantized_value
    return quantized_range / 255.0, (quantized_range / 512.0) + min_quantized_value


def resolve_files(data_pattern: str, flag_name: str = "data_pattern") -> list[str]:
    """Expands comma-separated glob patterns into a sorted, de-duplicated list.

    Each pattern goes through ``tf.io.gfile.glob`` (local paths and any file
    system TensorFlow knows, e.g. ``gs://``).

    Raises:
      UserError: ``--<flag_name>: no files match '<pattern>'`` when a pattern
        (or the whole, empty, flag value) matches no file.
    """
    patterns = comma_list(data_pattern)
    if not patterns:
        raise UserError(f"--{flag_name}: no files match '{data_pattern or ''}'")
    files = set()
    for pattern in patterns:
        try:
            matched = tf.io.gfile.glob(pattern)
        except tf.errors.OpError as err:
            raise UserError(
                f"--{flag_name}: cannot list '{pattern}': {err.message}") from None
        matched = [m for m in matched if not tf.io.gfile.isdir(m)]
        if not matched:
            raise UserError(f"--{flag_name}: no files match '{pattern}'")
        files.update(matched)
    return sorted(files)
