"""model_flags.json as a record: ModelFlags.

Every stage dir holds a model_flags.json that is enough to rebuild the model
graph exactly (docs/architecture.md, "Stage contracts"). Its keys are the
fields of ModelFlags; the identity fields (IDENTITY_KEYS: all but the
converter's storage marker) must agree when a train dir is resumed.

The JSON is the one every version of this pipeline wrote: a train dir's has
every identity key, a bfloat16 or int8 dir's adds ``checkpoint_dtype``, an
ensemble dir's has no ``model_hparams`` (its model is the ensemble graph).
``from_json`` reads exactly that; a missing key, an unknown key or a value of
the wrong kind is a one-line UserError naming the file. ``to_json`` gives
back the same object, so a file read and written again is byte-identical
(training.checkpoints writes it with sorted keys).

``record_kind`` names the record layout the model reads (the registry of
training.record_layouts). It is written only for a layout that
``frame_features`` cannot name: a frame- or video-level model's file has no
such key (``layout()`` derives it), so files of both kinds stay the same and
readable by the previous release.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Mapping, Optional, Tuple, Union

from training.cli import UserError
from training.flags import comma_list

HParamValue = Union[bool, int, float, str]
JsonValue = Union[HParamValue, Mapping[str, HParamValue], None]

DEFAULT_LABEL_LOSS = "CrossEntropyLoss"


@dataclasses.dataclass(frozen=True)
class ModelFlags:
    """What rebuilds a model graph. feature_names and feature_sizes are
    comma-separated strings, as on the command line and in the file (the
    lists: feature_name_list, feature_size_list). model_hparams: every
    hyper-parameter of the model (None only in an ensemble dir).
    checkpoint_dtype: bfloat16 or int8 in a converted dir (None: float32).
    record_kind: the record layout when not "frame"/"video" (None: from
    frame_features; see layout())."""
    model: str
    feature_names: str
    feature_sizes: str
    frame_features: bool
    num_classes: int
    label_loss: str = DEFAULT_LABEL_LOSS
    model_hparams: Optional[Mapping[str, HParamValue]] = None
    checkpoint_dtype: Optional[str] = dataclasses.field(default=None,
                                                        metadata={"identity": False})
    record_kind: Optional[str] = None

    def layout(self) -> str:
        """The record kind: record_kind, else "frame" or "video" by frame_features."""
        return self.record_kind or layout_of(self.frame_features)

    def feature_name_list(self) -> List[str]:
        return comma_list(self.feature_names)

    def feature_size_list(self) -> List[int]:
        """The sizes as integers (checked by from_json and make_model_flags)."""
        return [int(size) for size in comma_list(self.feature_sizes)]

    def hparams(self) -> Dict[str, HParamValue]:
        """A copy of model_hparams ({} when there are none)."""
        return dict(self.model_hparams or {})

    def to_json(self) -> Dict[str, JsonValue]:
        """The file's object: every field, the optional ones only when set."""
        payload: Dict[str, JsonValue] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None or field.name in REQUIRED_KEYS:
                payload[field.name] = dict(value) if isinstance(value, Mapping) else value
        return payload

    @classmethod
    def from_json(cls, payload: Mapping[str, object], path: str) -> "ModelFlags":
        """The record of a parsed model_flags.json object; a UserError
        starting with `path` for a missing or unknown key or a wrong kind."""
        if "model" not in payload:
            raise UserError(f"{path}: has no 'model' key")
        unknown = sorted(set(payload) - set(ALL_KEYS))
        if unknown:
            raise UserError(f"{path}: unknown key(s) {', '.join(map(repr, unknown))} "
                            f"(model_flags.json has {', '.join(ALL_KEYS)})")
        for key in REQUIRED_KEYS:
            if key not in payload:
                raise UserError(f"{path}: has no {key!r} key")
        for key, value in payload.items():
            _check_kind(key, value, path)
        flags = cls(**payload)  # type: ignore[arg-type]  # each kind checked above
        _check_features(flags, path)
        return flags


ALL_KEYS: Tuple[str, ...] = tuple(field.name for field in dataclasses.fields(ModelFlags))
REQUIRED_KEYS: Tuple[str, ...] = tuple(
    field.name for field in dataclasses.fields(ModelFlags)
    if field.default is dataclasses.MISSING)
# The keys that must agree when a train dir is resumed.
IDENTITY_KEYS: Tuple[str, ...] = tuple(
    field.name for field in dataclasses.fields(ModelFlags)
    if field.metadata.get("identity", True))

_KINDS: Dict[str, Tuple[type, str]] = {
    "frame_features": (bool, "true or false"), "num_classes": (int, "an integer"),
    "model_hparams": (dict, "an object")}


def layout_of(frame_features: bool) -> str:
    """The record kind of the 2018 layouts: "frame" or "video"."""
    return "frame" if frame_features else "video"


def _check_kind(key: str, value: object, path: str) -> None:
    kind, noun = _KINDS.get(key, (str, "a string"))
    if key in ("checkpoint_dtype", "record_kind") and value is None:
        return
    wrong_bool = isinstance(value, bool) and kind is not bool
    if wrong_bool or not isinstance(value, kind):
        raise UserError(f"{path}: {key!r} must be {noun}, found {value!r}")
    if isinstance(value, dict):
        for name, item in value.items():
            if not isinstance(item, (bool, int, float, str)):
                raise UserError(f"{path}: model_hparams {name!r} must be a number, a string "
                                f"or a boolean, found {item!r}")


def _check_features(flags: ModelFlags, path: str) -> None:
    """feature_sizes are integers, one per feature name."""
    names, sizes = flags.feature_name_list(), comma_list(flags.feature_sizes)
    if not all(size.isdigit() for size in sizes):
        raise UserError(f"{path}: 'feature_sizes' must be comma-separated integers, found "
                        f"{flags.feature_sizes!r}")
    if len(names) != len(sizes):
        raise UserError(f"{path}: 'feature_names' has {len(names)} entries but "
                        f"'feature_sizes' has {len(sizes)}")


def mismatched_keys(old: ModelFlags, new: ModelFlags) -> List[str]:
    """The identity keys whose values differ (a key the old file lacks, an
    ensemble dir's model_hparams, is not compared; record_kind compares the
    layouts, so a file without it matches its derived kind)."""
    return [key for key in IDENTITY_KEYS if _differs(old, new, key)]


def _differs(old: ModelFlags, new: ModelFlags, key: str) -> bool:
    if key == "record_kind":
        return old.layout() != new.layout()
    return getattr(old, key) is not None and getattr(old, key) != getattr(new, key)
