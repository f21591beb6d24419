"""Does this checkpoint fit this graph? The one check every stage runs before
it restores, averages, converts or warm-starts from a checkpoint.

A *spec* maps a checkpoint key to (shape, storage dtype). The check compares
the spec a graph needs with the spec a checkpoint holds and turns the first
difference (a missing or extra variable, another shape, another dtype,
bfloat16 where float32 is needed or the reverse) into a one-line UserError
that names the checkpoint (or the dir that owns it) and the variable, instead
of a TensorFlow traceback at restore time.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Collection, Dict, List, Mapping, Optional, Tuple

from models.tf_compat import tf
from training import checkpoints, quantize
from training.cli import UserError

FLOAT32 = "float32"
BFLOAT16 = "bfloat16"
INT8 = quantize.INT8       # large matrices int8 + a scale per column, the rest bfloat16

Specs = Dict[str, Tuple[Optional[List[int]], Any]]    # key -> (shape or None, tf.DType)


def checkpoint_specs(path: str, model_only: bool = True) -> Specs:
    """{key: (shape, dtype)} of a checkpoint's model variables (all keys when
    not model_only). A checkpoint that cannot be read is a UserError."""
    reader = checkpoints.open_checkpoint(path)
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    specs: Specs = {key: (list(shapes[key]), tf.as_dtype(dtypes[key]).base_dtype)
                    for key in shapes}
    return model_variables_of(specs) if model_only else specs


def model_variables_of(specs: Specs) -> Specs:
    """The model variables among a checkpoint's specs (no optimizer slots,
    no global_step)."""
    return {key: specs[key] for key in checkpoints.model_variable_keys(specs)}


def graph_specs(var_map: Mapping[str, Any], stored_bf16: bool = False,
                int8: Collection[str] = ()) -> Specs:
    """What a checkpoint must hold to fill var_map ({key: variable}).
    stored_bf16: float32 variables are filled from bfloat16 tensors
    (the cast_at_load mode of training.precision); int8: keys filled from
    int8 tensors and their scales (training.quantize)."""
    specs = {}
    for key, variable in var_map.items():
        dtype = variable.dtype.base_dtype
        if stored_bf16 and dtype == tf.float32:
            dtype = tf.bfloat16
        shape = variable.shape.as_list() if variable.shape.rank is not None else None
        if key in int8:
            dtype = tf.int8
            specs[quantize.scale_key(key)] = ([shape[-1]] if shape else None, tf.float32)
        specs[key] = (shape, dtype)
    return specs


def a_kind(kind: str) -> str:
    """'a float32', 'a bfloat16', 'an int8'."""
    return ("an " if kind[0] in "aeiou" else "a ") + kind


def storage_kind(dtype) -> str:
    dtype = tf.as_dtype(dtype).base_dtype
    return BFLOAT16 if dtype == tf.bfloat16 else INT8 if dtype == tf.int8 else FLOAT32


@dataclasses.dataclass
class Mismatch:
    kind: str                  # missing | extra | shape | dtype
    key: str
    stored: Any = None         # (shape, dtype) in the checkpoint
    wanted: Any = None         # (shape, dtype) the graph needs
    count: int = 1             # extra: how many keys in all


def find_mismatch(stored: Specs, wanted: Specs, check_extra: bool = False,
                  compare_dtypes: bool = True) -> Optional[Mismatch]:
    """The first difference between a checkpoint's specs and the needed ones."""
    for key in sorted(wanted):
        if key not in stored:
            return Mismatch("missing", key, None, wanted[key])
        (stored_shape, stored_dtype), (wanted_shape, wanted_dtype) = stored[key], wanted[key]
        if wanted_shape is not None and list(stored_shape or []) != list(wanted_shape):
            return Mismatch("shape", key, stored[key], wanted[key])
        if compare_dtypes and stored_dtype != wanted_dtype:
            return Mismatch("dtype", key, stored[key], wanted[key])
    extra = sorted(set(stored) - set(wanted)) if check_extra else []
    if extra:
        return Mismatch("extra", extra[0], stored[extra[0]], None, len(extra))
    return None


def describe(mismatch: Mismatch, checkpoint: str, needer: str = "the graph",
             name_checkpoint: bool = False) -> str:
    """The text of a mismatch between `checkpoint` and what `needer` needs."""
    key, base = mismatch.key, os.path.basename(checkpoint)
    where = f"checkpoint {base} " if name_checkpoint else ""
    if mismatch.kind == "missing":
        return f"{where}lacks variable {key} that {needer} needs"
    if mismatch.kind == "extra":
        return (f"{where}holds variable {key} ({mismatch.count} in all) that {needer} does "
                f"not create")
    (stored_shape, stored_dtype), (wanted_shape, wanted_dtype) = mismatch.stored, mismatch.wanted
    if mismatch.kind == "shape":
        return (f"variable {key} has shape {list(stored_shape)} in the checkpoint but "
                f"{list(wanted_shape)} in {needer}")
    if {tf.bfloat16, tf.int8} & {stored_dtype, wanted_dtype}:
        stored_kind, graph_kind = storage_kind(stored_dtype), storage_kind(wanted_dtype)
        hint = {BFLOAT16: "build the graph with training.precision.bfloat16_getter",
                INT8: "load it through training.members, which dequantises int8 tensors",
                FLOAT32: "build the graph without the bfloat16 getter"}[stored_kind]
        return (f"is {a_kind(stored_kind)} checkpoint ({key} is {stored_dtype.name}) but "
                f"{needer} is {graph_kind} ({wanted_dtype.name}); {hint}")
    return (f"variable {key} is {stored_dtype.name} in the checkpoint but {wanted_dtype.name} "
            f"in {needer}")


def check_fits(checkpoint: str, var_map: Mapping[str, Any], owner: Optional[str] = None,
               needer: str = "the graph", stored_bf16: bool = False,
               check_extra: bool = False, compare_dtypes: bool = True,
               int8: Collection[str] = (), stored: Optional[Specs] = None) -> None:
    """A UserError when restoring var_map ({key: variable}) from checkpoint
    would fail. owner: the dir the message starts with (default: the
    checkpoint); check_extra: model variables the graph lacks are an error
    too; stored_bf16, int8: as graph_specs; stored: the checkpoint's
    checkpoint_specs(model_only=False) when the caller has them."""
    wanted = graph_specs(var_map, stored_bf16, int8)
    stored = checkpoint_specs(checkpoint, model_only=False) if stored is None else stored
    mismatch = find_mismatch(stored, wanted, compare_dtypes=compare_dtypes)
    if mismatch is None and check_extra:
        mismatch = find_mismatch(model_variables_of(stored), wanted, check_extra=True)
    if mismatch is not None:
        text = describe(mismatch, checkpoint, needer, name_checkpoint=owner is not None)
        raise UserError(f"{owner or checkpoint}: {text}")


def check_same_specs(reference_path: str, reference: Specs, path: str, other: Specs) -> None:
    """Two checkpoints of one model must hold the same model variables."""
    mismatch = find_mismatch(other, reference, check_extra=True)
    if mismatch is None:
        return
    base_ref, base = os.path.basename(reference_path), os.path.basename(path)
    if mismatch.kind in ("missing", "extra"):
        text = f"is missing in {base if mismatch.kind == 'missing' else base_ref}"
    else:
        (shape_b, dtype_b), (shape_a, dtype_a) = mismatch.stored, mismatch.wanted
        text = f"is {dtype_a.name}{shape_a} in {base_ref} but {dtype_b.name}{shape_b} in {base}"
    raise UserError(f"checkpoints {reference_path} and {path} differ: variable "
                    f"{mismatch.key} {text}")


def checkpoint_storage(path: str, every: Optional[Specs] = None) -> Tuple[str, List[str]]:
    """(kind, int8 keys) of a checkpoint (a dir: its latest). kind: FLOAT32,
    BFLOAT16 or INT8, how it stores its floating model variables (INT8: the
    int8 keys with their scales, the rest bfloat16); one that mixes bfloat16
    and float32 is a UserError. every: its checkpoint_specs(model_only=False)
    when the caller has them."""
    path = checkpoints.find_checkpoint(path)
    every = checkpoint_specs(path, model_only=False) if every is None else every
    specs = model_variables_of(every) or every
    int8 = quantize.int8_keys(specs)
    rest = {key: spec for key, spec in quantize.without_scales(specs).items()
            if key not in set(int8)}
    kinds: Dict[str, str] = {}
    for key, (_, dtype) in sorted(rest.items()):
        if dtype.is_floating:
            kinds.setdefault(storage_kind(dtype), key)
    if len(kinds) > 1:
        raise UserError(f"{path}: mixes bfloat16 ({kinds[BFLOAT16]}) and float32 "
                        f"({kinds[FLOAT32]}) model variables")
    return (INT8 if int8 else next(iter(kinds), FLOAT32)), int8


def checkpoint_dtype(path: str) -> str:
    """The kind of checkpoint_storage."""
    return checkpoint_storage(path)[0]


def require_float32(path: str, why: str, specs: Optional[Specs] = None) -> None:
    """A UserError `<path>: is a bfloat16 checkpoint (<key>); <why>` for a
    checkpoint whose model variables are stored as bfloat16 or int8 (specs:
    its checkpoint_specs when the caller has them)."""
    specs = model_variables_of(checkpoint_specs(path, model_only=False) if specs is None
                               else specs)
    int8 = quantize.int8_keys(specs)
    if int8:
        raise UserError(f"{path}: is an int8 checkpoint ({int8[0]}); {why}")
    bf16 = [key for key, (_, dtype) in sorted(specs.items()) if dtype == tf.bfloat16]
    if bf16:
        raise UserError(f"{path}: is a bfloat16 checkpoint ({bf16[0]}); {why}")
