"""The files stages hand each other, as typed frozen records: the one home.

Stages talk through files on disk (docs/architecture.md, "Stage contracts").
Each file is one frozen dataclass here (model_flags.json keeps its own
module, training.model_flags); ``read_record(cls, path)`` reads it strictly
and ``write_record(path, record)`` writes it:

- a missing required key, an unknown key or a value of the wrong kind is a
  one-line UserError naming the file and the key;
- what today's code writes reads back and writes again byte-identical (the
  golden files under tests/golden/ pin this): the JSON is sorted, indented
  by 2, and a value keeps the kind it was read as (an int stays an int);
- a field with a default may be absent (files of an earlier release); one
  marked ``omit_none`` is written only when it is not None, so records that
  do not use it keep their earlier bytes.

Provenance: every record that carries a choice (an SWA window, stacking
weights, fine-tuned weights) names, per choice, the stage that made it, the
data files it read and the digest of their video ids (``Provenance``).
``carry_forward`` is the one way a stage hands the records of its input dir
on to its output dir; ``provenance_of`` gathers every choice behind a dir or
file, which the report checks against the files it measures.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import typing
from typing import (
    Any,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Tuple,
    Type,
    TypeVar,
    Union,
)

from training import checkpoints
from training.cli import UserError
from training.flags import comma_list

Json = Any    # a parsed JSON value: the one place where records meet untyped data
R = TypeVar("R", bound="Record")


def omit_none(default: Any = None) -> Any:
    """A field written only when it is not None (new keys of this release)."""
    return dataclasses.field(default=default, metadata={"omit_none": True})


class Record:
    """Base of the stage records: strict from_json, byte-compatible to_json.
    Subclasses are frozen dataclasses whose field types are JSON kinds (bool,
    int, float, str, None), Tuple[X, ...] (a JSON list), Dict[str, X] (an
    object), other Records, Optional/Union of these, or Json (anything)."""
    FILE_NAME = ""      # the fixed file name, when the file has one

    def to_json(self) -> Dict[str, Json]:
        payload: Dict[str, Json] = {}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            if value is None and field.metadata.get("omit_none"):
                continue
            payload[field.name] = _to_json(value)
        return payload

    @classmethod
    def from_json(cls: Type[R], payload: Json, where: str) -> R:
        """The record of a parsed object; where: the file (and key path) for errors."""
        if not isinstance(payload, dict):
            raise UserError(f"{where}: expected an object, found {checkpoints.json_kind(payload)}")
        fields = {field.name: field for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(payload) - set(fields))
        if unknown:
            raise UserError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))} "
                            f"({cls.__name__} has {', '.join(fields)})")
        hints = _hints(cls)
        values: Dict[str, Any] = {}
        for name, field in fields.items():
            if name not in payload:
                if field.default is dataclasses.MISSING \
                        and field.default_factory is dataclasses.MISSING:
                    raise UserError(f"{where}: has no {name!r} key")
                continue
            values[name] = _from_json(payload[name], hints[name], f"{where}: {name}")
        return cls(**values)


_HINTS: Dict[type, Dict[str, Any]] = {}


def _hints(cls: type) -> Dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _to_json(value: Any) -> Json:
    if isinstance(value, Record):
        return value.to_json()
    if isinstance(value, (list, tuple)):
        return [_to_json(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _to_json(item) for key, item in value.items()}
    return value


_KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
               type(None): "null"}


def _from_json(value: Json, kind: Any, where: str) -> Any:
    """value checked against the annotation `kind` (lists become tuples)."""
    if kind is Any:
        return value
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is Union:
        for option in args:
            try:
                return _from_json(value, option, where)
            except UserError:
                continue
        raise UserError(f"{where}: {value!r} is not {_describe(kind)}")
    if origin in (tuple, list):
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list, found {checkpoints.json_kind(value)}")
        return tuple(_from_json(item, args[0], f"{where}[{index}]")
                     for index, item in enumerate(value))
    if origin in (dict, Mapping) or kind is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected an object, found {checkpoints.json_kind(value)}")
        item_kind = args[1] if args else Any
        return {key: _from_json(item, item_kind, f"{where}.{key}") for key, item in value.items()}
    if isinstance(kind, type) and issubclass(kind, Record):
        return kind.from_json(value, where)
    if not _is_kind(value, kind):
        raise UserError(f"{where}: {value!r} is not {_describe(kind)}")
    return value


def _is_kind(value: Json, kind: type) -> bool:
    if kind is float:   # an int is a number too (JSON writes 0.0 as 0 nowhere, but users may)
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _describe(kind: Any) -> str:
    args = typing.get_args(kind)
    if typing.get_origin(kind) is Union:
        return " or ".join(_describe(option) for option in args)
    if typing.get_origin(kind) in (tuple, list):
        return "a list"
    if isinstance(kind, type) and issubclass(kind, Record):
        return "an object"
    return _KIND_NAMES.get(kind, getattr(kind, "__name__", str(kind)))


def read_record(cls: Type[R], path: str) -> R:
    """The record of a file; a missing, unreadable or malformed file is a
    one-line UserError naming it."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    return cls.from_json(checkpoints.load_json(path, path), path)


def read_optional(cls: Type[R], directory: str) -> Optional[R]:
    """The record of <directory>/<cls.FILE_NAME>, None when the dir has none."""
    path = os.path.join(directory, cls.FILE_NAME)
    return read_record(cls, path) if os.path.isfile(path) else None


def write_record(path: str, record: Record) -> None:
    """Writes a record atomically, as every release wrote its file."""
    checkpoints.write_json(path, record.to_json())


def write_in(directory: str, record: Record) -> str:
    """Writes a record under its FILE_NAME in `directory`; -> the path."""
    path = os.path.join(directory, type(record).FILE_NAME)
    write_record(path, record)
    return path


# ---------------------------------------------------------------------------
# Provenance


@dataclasses.dataclass(frozen=True)
class Provenance(Record):
    """One choice and what it read. stage: the entry point that made it
    (e.g. "swa.average"); choice: what it chose ("window", "weights",
    "fine-tuning"); data_files: the absolute paths of the data files it read;
    video_ids_sha1: training.intervals' digest of their video ids (None when
    the stage did not see them one by one)."""
    stage: str
    choice: str
    data_files: Tuple[str, ...]
    video_ids_sha1: Optional[str] = None

    def touches(self, files: Iterable[str]) -> List[str]:
        """The files of `files` that this choice read (compared by real path)."""
        read = {os.path.realpath(path) for path in self.data_files}
        return [path for path in files if os.path.realpath(path) in read]


def provenance_for(stage: str, choice: str, data_pattern: str,
                   video_ids_sha1: Optional[str] = None) -> Provenance:
    """The provenance of a choice made on the files of data_pattern (expanded,
    sorted, absolute)."""
    return Provenance(stage=stage, choice=choice, data_files=pattern_files(data_pattern),
                      video_ids_sha1=video_ids_sha1)


def pattern_files(data_pattern: str) -> Tuple[str, ...]:
    """The files of a comma-separated data pattern, absolute and sorted (a
    part on another file system, e.g. gs://, or one matching nothing, is kept
    as written: it still names what was read). No TensorFlow: the report uses it."""
    files = set()
    for part in comma_list(data_pattern):
        if "://" in part:
            files.add(part)
        else:
            files.update(os.path.abspath(path) for path in glob.glob(part) or [part])
    return tuple(sorted(files))


def merge_provenance(*groups: Iterable[Provenance]) -> Tuple[Provenance, ...]:
    """The choices of several groups, in order, each once."""
    merged: List[Provenance] = []
    for group in groups:
        merged.extend(item for item in group if item not in merged)
    return tuple(merged)


# ---------------------------------------------------------------------------
# The weights file (stacking.fit writes it; training.weights_file reads it)


@dataclasses.dataclass(frozen=True)
class WeightsFile(Record):
    """stacking.fit's weights file: one weight per member dir, and what the
    fit measured on its fitting files (on videos: gap, gap_uniform and
    member_gap; on rated segments, metric "segment_map": the segment_* keys
    and the pair counts). Every key a release of stacking.fit wrote is a
    field, so any other key is an error; a hand-written file needs only
    members and weights. training.weights_file checks the values (one finite
    weight >= 0 per member, ...) and resolves the member dirs."""
    members: Tuple[str, ...]
    weights: Tuple[float, ...]
    metric: Optional[str] = omit_none()
    parameterization: Optional[str] = omit_none()
    data_pattern: Optional[str] = omit_none()
    num_videos: Optional[int] = omit_none()
    tile_num: Optional[int] = omit_none()
    member_models: Optional[Tuple[str, ...]] = omit_none()
    cross_entropy: Optional[float] = omit_none()
    cross_entropy_uniform: Optional[float] = omit_none()
    member_cross_entropy: Optional[Tuple[float, ...]] = omit_none()
    gap: Optional[float] = omit_none()
    gap_uniform: Optional[float] = omit_none()
    member_gap: Optional[Tuple[float, ...]] = omit_none()
    segment_size: Optional[int] = omit_none()
    num_pairs: Optional[int] = omit_none()
    num_positive_pairs: Optional[int] = omit_none()
    num_rated_classes: Optional[int] = omit_none()
    segment_map: Optional[float] = omit_none()
    segment_map_uniform: Optional[float] = omit_none()
    segment_gap: Optional[float] = omit_none()
    segment_gap_uniform: Optional[float] = omit_none()
    member_segment_map: Optional[Tuple[float, ...]] = omit_none()
    provenance: Optional[Tuple[Provenance, ...]] = omit_none()

    def fitted(self, metric: str) -> Tuple[Optional[float], Optional[float]]:
        """(stacked, uniform) value of `metric` ("gap" or "segment_map") on
        the fitting files; None where the file does not hold it."""
        stacked, uniform = {"gap": (self.gap, self.gap_uniform),
                            "segment_map": (self.segment_map, self.segment_map_uniform)}[metric]
        return stacked, uniform

