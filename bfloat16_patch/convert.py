"""Converts a checkpoint to bfloat16 (or int8):
python -m bfloat16_patch.convert --input_dir=SWA_DIR --output_dir=BF16_DIR
    [--dtype=int8 [--int8_min_values=N] [--target_bytes=N]]

Reads the input dir's latest model.ckpt-* (what swa.average writes) or
--checkpoint_file, and writes, into a new dir (atomically), a checkpoint of
the same name holding the model variables only (optimizer slots, global_step
and beta powers dropped) with every floating tensor stored as bfloat16,
rounded to nearest, ties to even (the original's patched Cast truncated).
Integer tensors are copied unchanged. --dtype=int8 stores the matrices of
at least --int8_min_values values as int8 with a float32 scale per output
column (training.quantize) instead; with --target_bytes only the fewest,
largest of them that bring the checkpoint under that size. model_flags.json
comes along with the marker "checkpoint_dtype" (bfloat16, or int8 when a
matrix is int8), and bfloat16.json records the source, the int8 matrices and
the sizes. Tensors are streamed one at a time. Every stage that reads model
dirs (training.members) loads the result; int8 is dequantised at restore.
"""
from __future__ import annotations

import dataclasses
import glob
import os
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
from absl import flags

from models.tf_compat import tf
from training import checkpoint_fit, checkpoints, paths, quantize, stage_files
from training import flags as shared_flags
from training.cli import UserError, run_main
from training.progress import Progress
from training.stage_files import ConversionRecord

FLAGS = flags.FLAGS

BFLOAT16_NUMPY = tf.bfloat16.as_numpy_dtype   # ml_dtypes.bfloat16
STORAGE_DTYPES = (checkpoint_fit.BFLOAT16, checkpoint_fit.INT8)
INDEX_BYTES_PER_TENSOR = 96       # a generous bound of one entry of the .index file


def define_flags() -> None:
    shared_flags.define_shared_flags({
        "output_dir": ("", "New dir for the bfloat16 checkpoint."),
        "checkpoint_file": ("", "(to convert; default: the latest of --input_dir)"),
        "overwrite": False, "target_bytes": (None, "(needs --dtype=int8)"),
        "int8_min_values": quantize.DEFAULT_MIN_VALUES})
    shared_flags.define(flags.DEFINE_string, "input_dir", "", "Model dir to convert (an SWA "
                        "or train dir: model_flags.json and model.ckpt-*).", path=paths.IN_DIR)
    shared_flags.define(flags.DEFINE_enum, "dtype", checkpoint_fit.BFLOAT16, "Storage: bfloat16, "
                        "or int8 for the large matrices (the rest bfloat16).",
                        enum_values=list(STORAGE_DTYPES))


# ---------------------------------------------------------------------------
# Rounding


def float32_to_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """uint16 bit patterns of bfloat16(values), round to nearest, ties to even.

    Works on the float32 bit pattern: add 0x7FFF plus the lowest kept bit and
    drop the low 16 bits. Finite values too large for bf16 round to +-inf as
    IEEE rounding does, +-inf and denormals are handled by the same integer
    arithmetic, and NaN stays a (quiet) NaN with its sign and top payload bits.
    """
    values = np.ascontiguousarray(values, dtype=np.float32)
    bits = values.view(np.uint32)
    # bits <= 0xFF800000 for every non-NaN, so the sum cannot overflow uint32.
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
    rounded >>= np.uint32(16)
    result = rounded.astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        result[nan] = ((bits[nan] >> np.uint32(16)) | np.uint32(0x0040)).astype(np.uint16)
    return result


def round_to_bfloat16(values: np.ndarray) -> np.ndarray:
    """values (any float dtype) -> a bfloat16 numpy array, round to nearest even."""
    values = np.asarray(values)
    if values.dtype == BFLOAT16_NUMPY:
        return values
    return float32_to_bfloat16_bits(values.astype(np.float32, copy=False)).view(BFLOAT16_NUMPY)


# ---------------------------------------------------------------------------
# Conversion


def _check_output_dir(source_dir: str, output_dir: str) -> None:
    source, target = os.path.abspath(source_dir), os.path.abspath(output_dir)
    if source == target or source.startswith(target.rstrip(os.sep) + os.sep):
        raise UserError(f"--output_dir={output_dir}: would replace the input dir {source_dir}; "
                        f"choose a new dir")


def data_bytes(checkpoint_path: str) -> int:
    """Bytes of a checkpoint's data files."""
    return sum(os.path.getsize(path) for path in glob.glob(checkpoint_path + ".data-*"))


def _source(input_dir: str, output_dir: str, checkpoint_file: str, overwrite: bool):
    """(checkpoint to convert, the dir of its model_flags.json), checked."""
    if not input_dir and not checkpoint_file:
        raise UserError("--input_dir: required (or --checkpoint_file)")
    shared_flags.require(output_dir=output_dir)
    if input_dir and not os.path.isdir(input_dir):
        raise UserError(f"--input_dir={input_dir}: no such dir")
    source = checkpoints.find_checkpoint(checkpoint_file or input_dir)
    flags_dir = input_dir or os.path.dirname(os.path.abspath(source))
    checkpoints.read_model_flags(flags_dir)
    _check_output_dir(flags_dir, output_dir)
    if os.path.exists(output_dir) and not overwrite:
        raise UserError(f"--output_dir={output_dir}: exists; choose another or pass --overwrite")
    return source, flags_dir


def _model_specs(source: str):
    """(specs of the model variables, dropped keys); an int8 source is refused."""
    all_specs = checkpoint_fit.checkpoint_specs(source, model_only=False)
    specs = checkpoint_fit.model_variables_of(all_specs)
    if not specs:
        raise UserError(f"{source}: no model variables under {checkpoints.MODEL_SCOPE}/ "
                        f"(keys: {', '.join(sorted(all_specs)[:5])}...)")
    int8 = quantize.int8_keys(specs)
    if int8:
        raise UserError(f"{source}: is an int8 checkpoint ({int8[0]}); convert from the float32 "
                        f"(SWA) dir instead")
    return specs, sorted(set(all_specs) - set(specs))


def _stored_bytes(shape, dtype) -> int:
    """Bytes of a tensor of the output that stays out of int8."""
    size = int(np.prod(shape, dtype=np.int64))
    return size * (tf.bfloat16.size if dtype.is_floating else dtype.size)


def _int8_plan(specs, dtype: str, min_values: int, target_bytes: Optional[int]):
    """The keys to store as int8 (the fewest, largest that fit target_bytes)."""
    if dtype == checkpoint_fit.BFLOAT16:
        return []
    candidates, fixed = [], INDEX_BYTES_PER_TENSOR * 2 * len(specs)
    for key, (shape, key_dtype) in sorted(specs.items()):
        if quantize.is_candidate(shape, key_dtype, min_values):
            candidates.append((key, shape, _stored_bytes(shape, key_dtype)))
        else:
            fixed += _stored_bytes(shape, key_dtype)
    return sorted(quantize.plan_int8(candidates, fixed, target_bytes, "the checkpoint"))


def _entries(specs, int8: Sequence[str]):
    """[(key, shape, output dtype)]: int8 keys followed by their scales."""
    entries = []
    for key, (shape, dtype) in sorted(specs.items()):
        if key in int8:
            entries += [(key, shape, tf.int8), (quantize.scale_key(key), [shape[-1]], tf.float32)]
        else:
            entries.append((key, shape, tf.bfloat16 if dtype.is_floating else dtype))
    return entries


def _output_name(source: str) -> str:
    """model.ckpt-<step> of the source checkpoint (step 0 when it has none)."""
    name = os.path.basename(source)
    if checkpoints.checkpoint_step(name) is None or not name.startswith(
            checkpoints.CHECKPOINT_PREFIX + "-"):
        name = f"{checkpoints.CHECKPOINT_PREFIX}-{checkpoints.checkpoint_step(name) or 0}"
    return name


def _producer(source: str, specs, int8: Sequence[str], total: int, log):
    """produce(key) for write_arrays_checkpoint: bf16, or int8 then its scale."""
    reader = checkpoints.open_checkpoint(source)
    progress = Progress("tensors", total=total)
    done = [0]
    scales: Dict[str, np.ndarray] = {}     # int8 keys' scales, written next

    def produce(key: str) -> np.ndarray:
        done[0] += 1
        if done[0] % 50 == 0 or done[0] == total:
            log(progress.line(done[0], f"converted {done[0]}/{total} tensors"))
        if key in scales:
            return scales.pop(key)
        value = reader.get_tensor(key)
        if key in int8:
            value, scales[quantize.scale_key(key)] = quantize.quantize_columns(value, key)
            return value
        return round_to_bfloat16(value) if specs[key][1].is_floating else value

    return produce


def _write(tmp_dir: str, name: str, source: str, flags_dir: str, specs, int8, log
           ) -> Tuple[int, int, Tuple[stage_files.Provenance, ...]]:
    """Writes the checkpoint, model_flags.json and the records carried from
    the input (swa.json, finetune.json: stage_files.carry_forward); -> (data
    bytes, data and index bytes, the choices behind the input)."""
    entries = _entries(specs, int8)
    produce = _producer(source, specs, int8, len(entries), log)
    written = checkpoints.write_arrays_checkpoint(os.path.join(tmp_dir, name), entries, produce)
    dtype = checkpoint_fit.INT8 if int8 else checkpoint_fit.BFLOAT16
    out_flags = dataclasses.replace(checkpoints.read_model_flags(flags_dir), checkpoint_dtype=dtype)
    checkpoints.write_model_flags(tmp_dir, out_flags)
    provenance = stage_files.carry_forward(flags_dir, tmp_dir)
    data = data_bytes(written)
    return data, data + os.path.getsize(written + ".index"), provenance


def _log_int8(specs, int8: Sequence[str], dtype: str, log) -> None:
    for key in int8:
        shape, key_dtype = specs[key]
        log(f"int8: {key} {shape} ({_stored_bytes(shape, key_dtype):,} -> "
            f"{quantize.int8_bytes(shape):,} bytes)")
    if dtype == checkpoint_fit.INT8 and not int8:
        log("int8: no matrix needed (bfloat16 alone fits the target)")


def convert_checkpoint(input_dir: str, output_dir: str, checkpoint_file: str = "",
                       overwrite: bool = False,
                       log: Optional[Callable[[str], None]] = print,
                       dtype: str = checkpoint_fit.BFLOAT16,
                       int8_min_values: int = quantize.DEFAULT_MIN_VALUES,
                       target_bytes: Optional[int] = None) -> ConversionRecord:
    """Writes the bfloat16 (or int8) copy; returns its bfloat16.json record."""
    log = log or (lambda line: None)
    _check_storage_flags(dtype, int8_min_values, target_bytes)
    source, flags_dir = _source(input_dir, output_dir, checkpoint_file, overwrite)
    specs, dropped = _model_specs(source)
    int8 = _int8_plan(specs, dtype, int8_min_values, target_bytes)
    converted = sum(key_dtype.is_floating for _, key_dtype in specs.values())
    input_bytes = sum(int(np.prod(shape, dtype=np.int64)) * key_dtype.size
                      for shape, key_dtype in specs.values())
    name = _output_name(source)
    log(f"converting {source}: {len(specs)} model variables ({converted} floating, "
        f"{len(int8)} of them int8), {len(dropped)} other tensors dropped")
    _log_int8(specs, int8, dtype, log)
    with checkpoints.atomic_directory(output_dir, overwrite) as tmp_dir:
        output_data, output_bytes, provenance = _write(tmp_dir, name, source, flags_dir, specs,
                                                       int8, log)
        summary = ConversionRecord(
            source_checkpoint=os.path.abspath(source), checkpoint=name, rounding="nearest-even",
            dtype=checkpoint_fit.INT8 if int8 else checkpoint_fit.BFLOAT16,
            model_variables=len(specs), converted_to_bfloat16=converted - len(int8),
            int8=tuple(int8), int8_min_values=int8_min_values, target_bytes=target_bytes,
            dropped=tuple(dropped), input_model_variable_bytes=input_bytes,
            output_data_bytes=output_data, output_bytes=output_bytes,
            ratio=output_data / input_bytes if input_bytes else 0.0,
            provenance=provenance or None)
        stage_files.write_in(tmp_dir, summary)
    log(f"wrote {os.path.join(output_dir, name)}: {output_data:,} data bytes, "
        f"{summary.ratio:.3f} of the {input_bytes:,} bytes of model variables; "
        f"{output_bytes:,} bytes with the index"
        + (f"; target {target_bytes:,}" if target_bytes else ""))
    return summary


def _check_storage_flags(dtype: str, int8_min_values: int, target_bytes: Optional[int]) -> None:
    if dtype not in STORAGE_DTYPES:
        raise UserError(f"--dtype: one of {', '.join(STORAGE_DTYPES)}, got {dtype!r}")
    if int8_min_values < 1:
        raise UserError(f"--int8_min_values: must be >= 1, got {int8_min_values}")
    if target_bytes is not None:
        if target_bytes <= 0:
            raise UserError(f"--target_bytes: must be positive, got {target_bytes}")
        if dtype != checkpoint_fit.INT8:
            raise UserError("--target_bytes: needs --dtype=int8 (bfloat16 has one size)")


def main(argv) -> None:
    del argv
    convert_checkpoint(FLAGS.input_dir, FLAGS.output_dir, FLAGS.checkpoint_file,
                       FLAGS.overwrite, log=lambda line: print(line, flush=True),
                       dtype=FLAGS.dtype, int8_min_values=FLAGS.int8_min_values,
                       target_bytes=FLAGS.target_bytes)


if __name__ == "__main__":
    define_flags()
    run_main(main)
