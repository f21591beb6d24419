"""Record layouts: the one place a model's reader is chosen.

A record layout is a way YouTube-8M records are laid out in TFRecord files
(docs/formats.md 1). Each has a kind, the ``--record_kind`` of the trainer,
eval and inference and the ``record_kind`` of model_flags.json (a file
without one is "frame" or "video" by its ``frame_features``), and a
``Layout`` in ``LAYOUTS``: its reader factory, whether its records are
frame level, the context key of the video id, and the trainer's defaults
(classes, features). ``reader_for(model_flags)`` is what every stage calls
(through ``model_builder.make_reader``); ``kind_of_record`` names the kind
of a record for the one-line refusal of records of another layout
(readers.check_records). Adding a layout is one module with its reader and
factory plus one ``Layout`` in ``LAYOUTS`` (docs/architecture.md, "Adding a
record layout"; the 2019 segment layout is the worked example).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Tuple

from training import readers, segment_readers
from training.cli import UserError
from training.model_flags import ModelFlags, layout_of


class Reader(Protocol):
    """What the stages use of a reader (make_dataset, check_records, the
    predict loop, the trainer)."""
    num_classes: int
    feature_names: List[str]
    feature_sizes: List[int]
    # True: frame-level SequenceExamples, False: video-level Examples (check_records).
    frame_features: bool
    # (context feature, what it is) every record must hold (check_records).
    required_context: Tuple[Tuple[str, str], ...]
    # The context feature of the video id ("id"; 2017: "video_id").
    id_key: str

    @property
    def feature_size(self) -> int:
        """sum(feature_sizes)."""

    def parse(self, serialized: Any) -> Dict[str, Any]:
        """A batch of serialized records (string [B]) -> a dict of tensors
        with at least id, features, labels and num_frames."""


ReaderFactory = Callable[[ModelFlags], Reader]

VIDEO_ID_2017 = "video_id"   # the 2017 records' id key (2018, 2019: "id")
CLASSES_2017 = 4716
SEGMENT = "segment"
VIDEO_FEATURES = "mean_rgb,mean_audio"   # the video-level kinds' default features


@dataclasses.dataclass(frozen=True)
class Layout:
    """One record layout. frame_level: SequenceExamples of frames (else
    Examples of video means). id_key: the video id's context feature.
    context_keys: what else its records hold (kind_of_record). trainable:
    training.train trains on it (segments: segment_finetune.train does).
    num_classes, feature_names, feature_sizes: the trainer's defaults."""
    kind: str
    factory: ReaderFactory
    frame_level: bool
    what: str
    id_key: str = "id"
    context_keys: Tuple[str, ...] = ()
    trainable: bool = True
    num_classes: int = 3862
    feature_names: str = "rgb,audio"
    feature_sizes: str = "1024,128"


def frame_reader(model_flags: ModelFlags) -> readers.FrameReader:
    """The 2018 frame-level layout (SequenceExamples)."""
    return readers.FrameReader(model_flags.num_classes, model_flags.feature_name_list(),
                               model_flags.feature_size_list())


def video_reader(model_flags: ModelFlags) -> readers.VideoReader:
    """The 2018 video-level layout (Examples of mean features)."""
    return readers.VideoReader(model_flags.num_classes, model_flags.feature_name_list(),
                               model_flags.feature_size_list())


def frame2017_reader(model_flags: ModelFlags) -> readers.FrameReader:
    """The 2017 frame-level layout: the 2018 one with the id under video_id."""
    return readers.FrameReader(model_flags.num_classes, model_flags.feature_name_list(),
                               model_flags.feature_size_list(), id_key=VIDEO_ID_2017)


def video2017_reader(model_flags: ModelFlags) -> readers.VideoReader:
    """The 2017 video-level layout: the 2018 one with the id under video_id."""
    return readers.VideoReader(model_flags.num_classes, model_flags.feature_name_list(),
                               model_flags.feature_size_list(), id_key=VIDEO_ID_2017)

# kind (--record_kind, model_flags.json's record_kind) -> its layout.
LAYOUTS: Dict[str, Layout] = {layout.kind: layout for layout in (
    Layout("frame", frame_reader, True, "2018 frame-level SequenceExamples"),
    Layout("video", video_reader, False, "2018 video-level Examples",
           feature_names=VIDEO_FEATURES),
    Layout(SEGMENT, segment_readers.from_model_flags, True,
           "2019 segment-rated SequenceExamples", context_keys=("segment_start_times",),
           trainable=False),
    Layout("frame2017", frame2017_reader, True, "2017 frame-level SequenceExamples",
           id_key=VIDEO_ID_2017, num_classes=CLASSES_2017),
    Layout("video2017", video2017_reader, False, "2017 video-level Examples",
           id_key=VIDEO_ID_2017, num_classes=CLASSES_2017, feature_names=VIDEO_FEATURES),
)}


def register(kind: str, factory: ReaderFactory, frame_level: bool = True,
             **fields: Any) -> None:
    """Adds a layout at run time (a plug-in or a test; fields: Layout's);
    a kind that is already registered is a ValueError."""
    if kind in LAYOUTS:
        raise ValueError(f"record kind {kind!r} is already registered")
    LAYOUTS[kind] = Layout(kind, factory, frame_level, fields.pop("what", kind), **fields)


def layout(kind: str, where: str = "--record_kind") -> Layout:
    """The layout of a kind; an unknown one is a one-line UserError (where:
    what named it)."""
    found = LAYOUTS.get(kind)
    if found is None:
        what = f"{where}={kind}" if where.startswith("--") else f"{where}: record_kind {kind!r}"
        raise UserError(f"{what} is not a record layout this version reads "
                        f"({', '.join(sorted(LAYOUTS))})")
    return found


def layout_of_model(model_flags: ModelFlags) -> Layout:
    """The layout a model reads (its model_flags.json names it)."""
    return layout(model_flags.layout(), "model_flags.json")


def reader_for(model_flags: ModelFlags, kind: Optional[str] = None) -> Reader:
    """The reader of the records this model reads, or of records of `kind`
    (a --record_kind of the model's level: 2017 records for a 2018 model);
    an unknown kind, or one of the other level, is a one-line UserError."""
    own = layout_of_model(model_flags)
    if kind is None or kind == own.kind:
        return own.factory(model_flags)
    asked = layout(kind)
    if asked.frame_level != own.frame_level:
        raise UserError(f"--record_kind={kind}: {asked.what}, but the model reads "
                        f"{_level(own.frame_level)} records (record_kind {own.kind})")
    return asked.factory(model_flags)


def _level(frame_level: bool) -> str:
    return "frame-level" if frame_level else "video-level"


def model_record_kind(kind: str) -> Tuple[bool, Optional[str]]:
    """(frame_features, record_kind) of a new model_flags.json reading
    `kind`: record_kind only where frame_features cannot name it, so a
    frame or video model's file stays as every release wrote it."""
    found = layout(kind)
    return found.frame_level, (None if layout_of(found.frame_level) == kind else kind)


def kind_of_record(example: Any) -> Optional[str]:
    """The kind whose layout reads a parsed record (readers.parsed_example),
    the most specific one (most context keys; segments before frames);
    None when none does. For readers.check_records's kind_of."""
    frame_level = bool(example.feature_lists.feature_list)
    context = example.context.feature
    fits = [found for found in LAYOUTS.values()
            if found.frame_level == frame_level and found.id_key in context
            and all(key in context for key in found.context_keys)]
    return max(fits, key=lambda found: len(found.context_keys)).kind if fits else None


def asked_kind(record_kind: str, default: str,
               aliases: Optional[Mapping[str, Optional[str]]] = None) -> str:
    """The kind a command reads: --record_kind, else the kind an alias flag
    given means (aliases: {the flag as given: its kind, None when not
    given}; e.g. {"segment_labels": "segment"}), else `default`. An
    unknown kind, or an alias meaning another kind than --record_kind, is a
    one-line UserError."""
    if record_kind:
        layout(record_kind)
    for flag, kind in (aliases or {}).items():
        if kind is None:
            continue
        if record_kind and kind != record_kind:
            raise UserError(f"--{flag}: means --record_kind={kind}; it contradicts "
                            f"--record_kind={record_kind}")
        record_kind = kind
    return record_kind or default
