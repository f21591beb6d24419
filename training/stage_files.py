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
    ClassVar,
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


# ---------------------------------------------------------------------------
# swa.json (swa.average; carried into the converted dir by bfloat16_patch)


@dataclasses.dataclass(frozen=True)
class AveragedCheckpoint(Record):
    path: str
    step: int


@dataclasses.dataclass(frozen=True)
class WindowCandidate(Record):
    """One window tried by --choose_window_on: its value on the fitting files
    (gap, or segment_map for segment-rated files) and the steps it averaged."""
    window: int
    steps: Tuple[int, ...]
    gap: Optional[float] = omit_none()
    segment_map: Optional[float] = omit_none()


@dataclasses.dataclass(frozen=True)
class WindowChoice(Record):
    """The window chosen on data_pattern (the fitting files) among candidates;
    metric and segment_size only when chosen by Segment MAP."""
    chosen: int
    data_pattern: str
    candidates: Tuple[WindowCandidate, ...]
    metric: Optional[str] = omit_none()
    segment_size: Optional[int] = omit_none()


@dataclasses.dataclass(frozen=True)
class SwaRecord(Record):
    """swa.json: how an averaged checkpoint was made; window_choice None
    when the window was given (--last_n, --swa_start/--swa_end)."""
    FILE_NAME = "swa.json"
    source_dir: str
    checkpoint: str
    checkpoints: Tuple[AveragedCheckpoint, ...]
    count: int
    bn_statistics: str
    recompute_batches: Optional[int]
    recompute_batch_size: Optional[int]
    swa_start: Optional[int]
    swa_end: Optional[int]
    last_n: Optional[int]
    model_variables: int
    averaged_variables: int
    bn_statistic_variables: int
    window_choice: Optional[WindowChoice]
    provenance: Optional[Tuple[Provenance, ...]] = omit_none()


# ---------------------------------------------------------------------------
# bfloat16.json (bfloat16_patch.convert)


@dataclasses.dataclass(frozen=True)
class ConversionRecord(Record):
    """bfloat16.json: what the conversion to bfloat16 (or int8) stored."""
    FILE_NAME = "bfloat16.json"
    source_checkpoint: str
    checkpoint: str
    rounding: str
    dtype: str
    model_variables: int
    converted_to_bfloat16: int
    int8: Tuple[str, ...]
    int8_min_values: int
    target_bytes: Optional[int]
    dropped: Tuple[str, ...]
    input_model_variable_bytes: int
    output_data_bytes: int
    output_bytes: int
    ratio: float
    provenance: Optional[Tuple[Provenance, ...]] = omit_none()


# ---------------------------------------------------------------------------
# ensemble.json (ensemble.build)


@dataclasses.dataclass(frozen=True)
class EnsembleRecord(Record):
    """ensemble.json: the members of an exported ensemble (one entry per
    member in each list, in graph order) and how it was built."""
    FILE_NAME = "ensemble.json"
    members: Tuple[str, ...]
    weights: Tuple[float, ...]
    tile_num: int
    tiled: Tuple[bool, ...]
    scopes: Tuple[str, ...]
    models: Tuple[str, ...]
    checkpoints: Tuple[str, ...]
    checkpoint_dtypes: Tuple[str, ...]
    frame_sampling: Optional[str]
    shared_frame_work: Tuple[bool, ...]
    bf16_compute: Optional[str]
    int8: Tuple[Tuple[str, ...], ...]
    target_bytes: Optional[int]
    seed: int
    exported_bytes: int
    size_limit_bytes: int
    provenance: Optional[Tuple[Provenance, ...]] = omit_none()


# ---------------------------------------------------------------------------
# The record of one finished part of a sharded inference (ensemble.inference)


@dataclasses.dataclass(frozen=True)
class PartRecord(Record):
    """<part>.json beside a part's CSV: the input file, its videos, the CSV's
    sha256, the run it belongs to (ensemble.merge) and the model's classes."""
    input: str
    videos: int
    sha256: str
    run: str
    num_classes: Optional[int] = omit_none()


# ---------------------------------------------------------------------------
# Fine-tuning (segment_finetune.train)


@dataclasses.dataclass(frozen=True)
class FinetuneRecord(Record):
    """finetune.json in a fine-tuned train dir: the model it started from and
    the rated files its weights were fitted on (the provenance)."""
    FILE_NAME = "finetune.json"
    source_dir: str
    provenance: Tuple[Provenance, ...]


# ---------------------------------------------------------------------------
# Carrying records and provenance from stage to stage

# The records a stage hands on unchanged to the dir it writes from another
# (bfloat16_patch.convert: swa.json, which the report and the batch-norm note
# read beside the converted checkpoint; finetune.json, for its provenance).
CARRIED: Tuple[Type[Record], ...] = (SwaRecord, FinetuneRecord)
# Every record of a stage dir that can hold provenance.
_DIR_RECORDS: Tuple[Type[Record], ...] = (SwaRecord, ConversionRecord, EnsembleRecord,
                                          FinetuneRecord)


def carry_forward(input_dir: str, output_dir: str) -> Tuple[Provenance, ...]:
    """Writes the CARRIED records of input_dir into output_dir (read strictly,
    written unchanged) and returns every choice behind input_dir, for the
    output's own record. The one way a stage hands them on."""
    for cls in CARRIED:
        record = read_optional(cls, input_dir)
        if record is not None:
            write_in(output_dir, record)
    return provenance_of(input_dir)


def _earlier_provenance(record: Record) -> Tuple[Provenance, ...]:
    """The choices behind a record of the release before provenance: an
    swa.json's window choice (its data_pattern), an ensemble.json's members'."""
    if isinstance(record, SwaRecord) and record.window_choice is not None:
        return (provenance_for("swa.average", "window", record.window_choice.data_pattern),)
    if isinstance(record, EnsembleRecord):
        return merge_provenance(*(provenance_of(member) for member in record.members
                                  if os.path.isdir(member)))
    return ()


def provenance_of(path: str) -> Tuple[Provenance, ...]:
    """Every choice behind a stage dir (the provenance of each of its
    records; an earlier record without it: _earlier_provenance) or a weights
    file (its provenance; an earlier one: its data_pattern)."""
    if os.path.isfile(path):
        return _file_provenance(path)
    found: List[Provenance] = []
    for cls in _DIR_RECORDS:
        record = read_optional(cls, path)
        if record is None:
            continue
        provenance = getattr(record, "provenance", None)
        if provenance is None:
            provenance = _earlier_provenance(record)
        found.extend(provenance)
    return merge_provenance(found)


def _file_provenance(path: str) -> Tuple[Provenance, ...]:
    """The choices a weights file records (stacking.fit writes them; an
    earlier one names only its data_pattern)."""
    weights = read_record(WeightsFile, path)
    if weights.provenance is not None:
        return weights.provenance
    if weights.data_pattern:
        return (provenance_for("stacking.fit", "weights", weights.data_pattern),)
    return ()


def held_out_violations(measured_pattern: str, sources: Mapping[str, Iterable[Provenance]]
                        ) -> List[Tuple[str, Provenance, str]]:
    """(source, choice, first file) for each choice (of sources: {dir or
    file: its provenance}) that read a file of measured_pattern."""
    measured = pattern_files(measured_pattern)
    found = []
    for source, provenance in sources.items():
        for choice in provenance:
            touched = choice.touches(measured)
            if touched:
                found.append((source, choice, touched[0]))
    return found


def check_held_out(measured_pattern: str, sources: Mapping[str, Iterable[Provenance]]) -> None:
    """A one-line UserError, naming the first file, each source and the stage
    of its choice, when a choice behind `sources` read a file that
    measured_pattern holds: a report on it would not be held out."""
    found = held_out_violations(measured_pattern, sources)
    if found:
        by_source: Dict[str, List[str]] = {}
        for source, choice, _ in found:
            by_source.setdefault(source, []).append(f"the {choice.choice} choice of {choice.stage}")
        named = "; ".join(f"{source} ({', '.join(choices)})"
                          for source, choices in by_source.items())
        raise UserError(f"{found[0][2]}: measured here, but read by a choice made before: "
                        f"{named}; make those choices again on other files (move them away "
                        f"and rerun)")


# ---------------------------------------------------------------------------
# The reports (ensemble.report and ensemble.segment_report --output_json)


@dataclasses.dataclass(frozen=True)
class Estimate(Record):
    """A metric with its paired bootstrap 95% interval; resolved: the
    interval excludes 0 (training.intervals.Interval)."""
    estimate: float
    low: float
    high: float
    resolved: bool


@dataclasses.dataclass(frozen=True)
class Gain(Estimate):
    """One gain a report states: metric(system) - metric(over), with its
    interval; what: which gain ("averaging", "stacked vs uniform", ...)."""
    what: str
    system: str
    over: str


@dataclasses.dataclass(frozen=True)
class BootstrapSettings(Record):
    """The draws of a report's intervals (training.intervals.PairedBootstrap)."""
    samples: int
    seed: int
    confidence: float


class _WithNulls(Record):
    """A record whose omit_none fields are written as null, when None, if
    they are among _null_keys() (the files always had them there), and left
    out otherwise."""

    def _null_keys(self) -> Tuple[str, ...]:
        return ()

    def to_json(self) -> Dict[str, Json]:
        payload = super().to_json()
        for name in self._null_keys():
            payload.setdefault(name, None)
        return payload


@dataclasses.dataclass(frozen=True, kw_only=True)
class StateRow(_WithNulls):
    """A row of a report: one state (a model dir or an ensemble), its
    evaluation on the held-out files as its results file holds it, its
    member, whether it writes the submission (chosen), its averaging window
    (swa.json's count and window_choice) and its stacked weight. The keys
    of NULL_KEYS[kind] are written even when None."""
    NULL_KEYS: ClassVar[Dict[str, Tuple[str, ...]]] = {}
    name: str
    dir: str
    kind: str
    evaluation: Evaluation
    member: Optional[str] = omit_none()
    chosen: Optional[bool] = omit_none()
    window: Optional[int] = omit_none()
    window_choice: Optional[WindowChoice] = omit_none()
    stacked_weight: Optional[float] = omit_none()

    def _null_keys(self) -> Tuple[str, ...]:
        return self.NULL_KEYS.get(self.kind, ())

    @property
    def metric(self) -> Estimate:
        """The row's metric with its interval."""
        raise NotImplementedError


_AVERAGED = ("window", "window_choice", "stacked_weight")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReportRow(StateRow):
    """A row of ensemble.report: kind "last checkpoint", "member" (last_row:
    the row of its last checkpoint) or "ensemble"; its GAP."""
    NULL_KEYS = {"member": _AVERAGED + ("last_row",)}
    gap: Estimate
    last_row: Optional[str] = omit_none()

    @property
    def metric(self) -> Estimate:
        return self.gap


@dataclasses.dataclass(frozen=True, kw_only=True)
class SegmentReportRow(StateRow):
    """A row of ensemble.segment_report: kind "video level", "fine-tuned",
    "averaged", "video ensemble" or "ensemble" (each but the first two also
    ", refined"); its Segment MAP (value); the rows it gains over: video_row
    (fine-tuning), finetuned_row (averaging), unrefined_row (refinement)."""
    NULL_KEYS = {"fine-tuned": ("video_row",), "averaged": _AVERAGED + ("finetuned_row",),
                 "averaged, refined": _AVERAGED}
    value: Estimate
    video_row: Optional[str] = omit_none()
    finetuned_row: Optional[str] = omit_none()
    unrefined_row: Optional[str] = omit_none()

    @property
    def metric(self) -> Estimate:
        return self.value


@dataclasses.dataclass(frozen=True)
class EnsembleChoice(_WithNulls):
    """Which ensemble writes the submission: chosen ("uniform" or
    "stacked") and its dir."""
    chosen: str
    dir: str

    def fitted(self) -> Optional[Tuple[float, float]]:
        """(stacked, uniform) metric on the fitting files the choice compared
        (None: chosen without a stacking fit)."""
        return None


@dataclasses.dataclass(frozen=True)
class ReportChoice(EnsembleChoice):
    """ensemble.report's choice: by GAP on the fitting videos of the weights
    file (fit_videos and fit_data_pattern: its num_videos and data_pattern)."""
    fit_gap_stacked: Optional[float] = omit_none()
    fit_gap_uniform: Optional[float] = omit_none()
    fit_videos: Optional[int] = omit_none()
    fit_data_pattern: Optional[str] = omit_none()

    def _null_keys(self) -> Tuple[str, ...]:
        return ("fit_videos", "fit_data_pattern") if self.fit_gap_stacked is not None else ()

    def fitted(self) -> Optional[Tuple[float, float]]:
        if self.fit_gap_stacked is None or self.fit_gap_uniform is None:
            return None
        return self.fit_gap_stacked, self.fit_gap_uniform


@dataclasses.dataclass(frozen=True)
class SegmentReportChoice(EnsembleChoice):
    """ensemble.segment_report's choice: the ensemble by Segment MAP on the
    fitting files of the weights file; with refinement chosen on the fitting
    files (--fit_data_pattern), refine_top_k (0: none) and both Segment MAPs
    of the chosen ensemble there (fit_data_pattern: then those files)."""
    fit_segment_map_stacked: Optional[float] = omit_none()
    fit_segment_map_uniform: Optional[float] = omit_none()
    fit_data_pattern: Optional[str] = omit_none()
    refine_top_k: Optional[int] = omit_none()
    fit_segment_map_refined: Optional[float] = omit_none()
    fit_segment_map_unrefined: Optional[float] = omit_none()

    def _null_keys(self) -> Tuple[str, ...]:
        fitted = self.fit_segment_map_stacked is not None or self.refine_top_k is not None
        return ("fit_data_pattern",) if fitted else ()

    def fitted(self) -> Optional[Tuple[float, float]]:
        if self.fit_segment_map_stacked is None or self.fit_segment_map_uniform is None:
            return None
        return self.fit_segment_map_stacked, self.fit_segment_map_uniform


@dataclasses.dataclass(frozen=True)
class Report(Record):
    """ensemble.report's JSON: the held-out files and their number of
    videos, the bootstrap, every row, every gain, the ensemble choice."""
    data_pattern: str
    num_videos: int
    bootstrap: BootstrapSettings
    rows: Tuple[ReportRow, ...]
    gains: Tuple[Gain, ...]
    choice: ReportChoice


@dataclasses.dataclass(frozen=True)
class RefinementSettings(Record):
    """The refinement of a segment report's refined rows (top_k 0: none)."""
    top_k: int
    model_dir: Optional[str]


@dataclasses.dataclass(frozen=True)
class SegmentReport(Record):
    """ensemble.segment_report's JSON: as Report, on rated segments (metric
    "Segment MAP", num_ratings), with the refinement of its refined rows."""
    metric: str
    data_pattern: str
    num_videos: int
    num_ratings: int
    refinement: RefinementSettings
    bootstrap: BootstrapSettings
    rows: Tuple[SegmentReportRow, ...]
    gains: Tuple[Gain, ...]
    choice: SegmentReportChoice


# ---------------------------------------------------------------------------
# eval_results.json and segment_eval_results.json (training.eval_results)


@dataclasses.dataclass(frozen=True)
class Evaluation(_WithNulls):
    """One evaluation of a model dir: what it measured (checkpoint, files,
    settings: its key, training.eval_results), its metrics and its record
    (video level: videos_file, the per-video top-k; 2019 segments, with
    segment_size: ratings_file). A field not of its kind is absent; the
    settings of its kind are written even when None (_null_keys), as every
    release wrote them."""
    checkpoint: str
    global_step: int
    eval_data_pattern: Optional[str] = omit_none()    # absent: the earliest files
    eval_files: Optional[int] = omit_none()
    bn_statistics: Optional[str] = omit_none()
    recompute_batches: Optional[int] = omit_none()
    frame_sampling: Optional[str] = omit_none()
    seed: Optional[int] = omit_none()
    top_k: Optional[int] = omit_none()
    bf16_compute: Optional[str] = omit_none()
    segment_size: Optional[int] = omit_none()
    segment_refine_top_k: Optional[int] = omit_none()
    segment_refine_model: Optional[str] = omit_none()   # "self" or the refine checkpoint
    # video level (training.metrics.EvaluationMetrics.get)
    gap: Optional[float] = omit_none()
    hit_at_one: Optional[float] = omit_none()
    perr: Optional[float] = omit_none()
    map: Optional[float] = omit_none()
    loss: Optional[float] = omit_none()
    num_examples: Optional[float] = omit_none()
    videos_file: Optional[str] = omit_none()
    video_ids_sha1: Optional[str] = omit_none()
    # 2019 segments (training.metrics.segment_metrics)
    segment_map: Optional[float] = omit_none()
    segment_gap: Optional[float] = omit_none()
    num_segments: Optional[int] = omit_none()
    num_positive_segments: Optional[int] = omit_none()
    num_rated_classes: Optional[int] = omit_none()
    num_classes_without_positives: Optional[int] = omit_none()
    num_retrieved: Optional[int] = omit_none()
    num_positive_retrieved: Optional[int] = omit_none()
    ratings_file: Optional[str] = omit_none()

    # (Class attributes, not fields.) The settings each kind's writer writes
    # even when None, and each kind's metrics.
    SEGMENT_SETTINGS = ("bf16_compute", "bn_statistics", "frame_sampling", "recompute_batches",
                        "seed")
    VIDEO_SETTINGS = SEGMENT_SETTINGS + ("eval_files", "top_k")
    VIDEO_METRICS = ("gap", "hit_at_one", "perr", "map", "loss", "num_examples")
    SEGMENT_METRICS = (
        "segment_map", "segment_gap", "num_segments", "num_positive_segments",
        "num_rated_classes", "num_classes_without_positives", "num_retrieved",
        "num_positive_retrieved")

    @property
    def is_segment(self) -> bool:
        """A 2019 segment evaluation (segment_eval_results.json)."""
        return self.segment_size is not None or self.segment_map is not None

    def _null_keys(self) -> Tuple[str, ...]:
        return self.SEGMENT_SETTINGS if self.is_segment else self.VIDEO_SETTINGS


@dataclasses.dataclass(frozen=True)
class EvaluationStore(Record):
    """eval_results.json or segment_eval_results.json: every evaluation of a
    dir by key, the latest one's fields also at the top level::

        {<latest's fields>, "key": <latest's key>, "evaluations": {key: evaluation}}

    key and evaluations are None in the earliest eval_results.json (one
    evaluation, no key)."""
    latest: Evaluation
    key: Optional[str] = None
    evaluations: Optional[Dict[str, Evaluation]] = None

    def to_json(self) -> Dict[str, Json]:
        payload = self.latest.to_json()
        if self.key is not None:
            payload["key"] = self.key
        if self.evaluations is not None:
            payload["evaluations"] = _to_json(self.evaluations)
        return payload

    @classmethod
    def from_json(cls, payload: Json, where: str) -> "EvaluationStore":
        if not isinstance(payload, dict):
            raise UserError(f"{where}: expected an object, found {checkpoints.json_kind(payload)}")
        latest = {name: value for name, value in payload.items()
                  if name not in ("key", "evaluations")}
        return cls(Evaluation.from_json(latest, where),
                   _from_json(payload["key"], str, f"{where}: key") if "key" in payload
                   else None,
                   _from_json(payload["evaluations"], Dict[str, Evaluation],
                              f"{where}: evaluations") if "evaluations" in payload else None)


# ---------------------------------------------------------------------------
# A part of a sharded 2019 segment submission (ensemble.segment_submission)


@dataclasses.dataclass(frozen=True)
class SegmentPart:
    """segments-<shard>-of-<num_shards>.npz: one shard's per-class top list
    (class j's entries are numbers/scores/names[sum(counts[:j]):][:counts[j]])
    and its provenance: the run key, its shard and the whole sorted input.
    An .npz (arrays), not JSON; PROVENANCE names the keys an earlier release
    lacked."""
    class_ids: Any          # [C] int64
    max_pred: int
    counts: Any             # [C] int64
    numbers: Any            # [N] int64, segment numbers
    scores: Any             # [N] float32
    names: Any              # [N] str, "<video id>:<start>"
    run: str
    num_shards: int
    shard_index: int
    inputs: Any             # [F] str, absolute
    PROVENANCE = ("run", "num_shards", "shard_index", "inputs")

    def save(self, path: str) -> None:
        """Writes the .npz to `path` (the caller makes it atomic)."""
        import numpy as np  # (only here: the JSON records need no numpy)
        with open(path, "wb") as out:
            np.savez(out, **{field.name: getattr(self, field.name)
                             for field in dataclasses.fields(self)})

    @classmethod
    def load(cls, path: str) -> "SegmentPart":
        """The part at `path`; OSError/ValueError when unreadable, KeyError
        naming the first missing key."""
        import numpy as np
        with np.load(path) as part:
            loaded = {key: part[key] for key in part.files}
        for name in (field.name for field in dataclasses.fields(cls)):
            if name not in loaded:
                raise KeyError(name)
        return cls(class_ids=loaded["class_ids"], max_pred=int(loaded["max_pred"]),
                   counts=loaded["counts"], numbers=loaded["numbers"],
                   scores=loaded["scores"], names=loaded["names"], run=str(loaded["run"]),
                   num_shards=int(loaded["num_shards"]),
                   shard_index=int(loaded["shard_index"]), inputs=loaded["inputs"])
