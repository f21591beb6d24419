"""Converts a checkpoint to bfloat16:
python -m bfloat16_patch.convert --input_dir=SWA_DIR --output_dir=BF16_DIR

Reads the input dir's latest model.ckpt-* (what swa.average writes) or
--checkpoint_file, and writes, into a new dir (atomically), a checkpoint of
the same name holding the model variables only (optimizer slots, global_step
and beta powers dropped) with every floating tensor stored as bfloat16,
rounded to nearest, ties to even (the original's patched Cast truncated).
Integer tensors are copied unchanged. model_flags.json comes along with the
marker "checkpoint_dtype": "bfloat16", and bfloat16.json records the source
and the sizes. Tensors are streamed one at a time. Load the result with a
graph built under tf.variable_scope("tower",
custom_getter=training.precision.bfloat16_getter); training.eval does that
by itself.
"""
from __future__ import annotations

import glob
import os
import shutil
from typing import Any, Callable, Dict, Optional

import numpy as np
from absl import flags

from models.tf_compat import tf
from training import checkpoints, compat, precision
from training import flags as shared_flags
from training.errors import UserError, run_main
from training.progress import Progress

FLAGS = flags.FLAGS

BFLOAT16_NUMPY = tf.bfloat16.as_numpy_dtype   # ml_dtypes.bfloat16


def define_flags() -> None:
    shared_flags.define_shared_flags({
        "output_dir": ("", "New dir for the bfloat16 checkpoint."),
        "checkpoint_file": ("", "(to convert; default: the latest of --input_dir)"),
        "overwrite": False})
    shared_flags.define(flags.DEFINE_string, "input_dir", "", "Model dir to convert (an SWA "
                        "or train dir: model_flags.json and model.ckpt-*).")


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


def _entries(source: str):
    """(specs of the model variables, [(key, shape, output dtype)], dropped keys)."""
    all_specs = compat.checkpoint_specs(source, model_only=False)
    specs = compat.model_variables_of(all_specs)
    if not specs:
        raise UserError(f"{source}: no model variables under {checkpoints.MODEL_SCOPE}/ "
                        f"(keys: {', '.join(sorted(all_specs)[:5])}...)")
    entries = [(key, shape, tf.bfloat16 if dtype.is_floating else dtype)
               for key, (shape, dtype) in sorted(specs.items())]
    return specs, entries, sorted(set(all_specs) - set(specs))


def _output_name(source: str) -> str:
    """model.ckpt-<step> of the source checkpoint (step 0 when it has none)."""
    name = os.path.basename(source)
    if checkpoints.checkpoint_step(name) is None or not name.startswith(
            checkpoints.CHECKPOINT_PREFIX + "-"):
        name = f"{checkpoints.CHECKPOINT_PREFIX}-{checkpoints.checkpoint_step(name) or 0}"
    return name


def _write(tmp_dir: str, name: str, source: str, flags_dir: str, specs, entries, log) -> int:
    """Writes the bf16 checkpoint, model_flags.json and swa.json; -> data bytes."""
    reader = checkpoints.open_checkpoint(source)
    progress = Progress("tensors", total=len(entries))
    done = [0]

    def produce(key: str) -> np.ndarray:
        value = reader.get_tensor(key)
        done[0] += 1
        if done[0] % 50 == 0 or done[0] == len(entries):
            log(progress.line(done[0], f"converted {done[0]}/{len(entries)} tensors"))
        return round_to_bfloat16(value) if specs[key][1].is_floating else value

    written = checkpoints.write_arrays_checkpoint(os.path.join(tmp_dir, name), entries, produce)
    out_flags = dict(checkpoints.read_model_flags(flags_dir))
    out_flags[precision.DTYPE_KEY] = compat.BFLOAT16
    checkpoints.write_model_flags(tmp_dir, out_flags)
    if os.path.isfile(os.path.join(flags_dir, "swa.json")):
        shutil.copyfile(os.path.join(flags_dir, "swa.json"), os.path.join(tmp_dir, "swa.json"))
    return data_bytes(written)


def convert_checkpoint(input_dir: str, output_dir: str, checkpoint_file: str = "",
                       overwrite: bool = False,
                       log: Optional[Callable[[str], None]] = print) -> Dict[str, Any]:
    """Writes the bfloat16 copy; returns the summary that goes to bfloat16.json."""
    log = log or (lambda line: None)
    source, flags_dir = _source(input_dir, output_dir, checkpoint_file, overwrite)
    specs, entries, dropped = _entries(source)
    converted = sum(dtype.is_floating for _, dtype in specs.values())
    input_bytes = sum(int(np.prod(shape, dtype=np.int64)) * dtype.size
                      for shape, dtype in specs.values())
    name = _output_name(source)
    log(f"converting {source}: {len(specs)} model variables ({converted} floating), "
        f"{len(dropped)} other tensors dropped")
    with checkpoints.atomic_directory(output_dir, overwrite) as tmp_dir:
        output_bytes = _write(tmp_dir, name, source, flags_dir, specs, entries, log)
        summary = {"source_checkpoint": os.path.abspath(source),
                   "checkpoint": name, "rounding": "nearest-even",
                   "model_variables": len(specs), "converted_to_bfloat16": converted,
                   "dropped": dropped, "input_model_variable_bytes": input_bytes,
                   "output_data_bytes": output_bytes,
                   "ratio": output_bytes / input_bytes if input_bytes else 0.0}
        checkpoints.write_json(os.path.join(tmp_dir, "bfloat16.json"), summary)
    log(f"wrote {os.path.join(output_dir, name)}: {output_bytes} data bytes, "
        f"{summary['ratio']:.3f} of the {input_bytes} bytes of model variables")
    return summary


def main(argv) -> None:
    del argv
    convert_checkpoint(FLAGS.input_dir, FLAGS.output_dir, FLAGS.checkpoint_file,
                       FLAGS.overwrite, log=lambda line: print(line, flush=True))


if __name__ == "__main__":
    define_flags()
    run_main(main)
