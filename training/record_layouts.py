"""Record layouts: the one place a model's reader is chosen.

A record layout is a way YouTube-8M records are laid out in TFRecord files
(docs/formats.md 1). Each has a kind (the ``record_kind`` of
model_flags.json; a file without one is "frame" or "video" by its
``frame_features``) and a factory that builds its ``Reader`` from the
model's record. ``reader_for(model_flags)`` is what every stage calls
(through ``model_builder.make_reader``). Adding a layout is one module with
its reader and factory plus one line in ``READERS`` (docs/architecture.md,
"Adding a record layout"; the 2019 segment layout is the worked example).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Protocol, Tuple

from training import readers, segment_readers
from training.cli import UserError
from training.model_flags import ModelFlags


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

    @property
    def feature_size(self) -> int:
        """sum(feature_sizes)."""

    def parse(self, serialized: Any) -> Dict[str, Any]:
        """A batch of serialized records (string [B]) -> a dict of tensors
        with at least id, features, labels and num_frames."""


ReaderFactory = Callable[[ModelFlags], Reader]


def frame_reader(model_flags: ModelFlags) -> readers.FrameReader:
    """The 2018 frame-level layout (SequenceExamples)."""
    return readers.FrameReader(model_flags.num_classes, model_flags.feature_name_list(),
                               model_flags.feature_size_list())


def video_reader(model_flags: ModelFlags) -> readers.VideoReader:
    """The 2018 video-level layout (Examples of mean features)."""
    return readers.VideoReader(model_flags.num_classes, model_flags.feature_name_list(),
                               model_flags.feature_size_list())


# kind (model_flags.json's record_kind) -> factory of its reader.
READERS: Dict[str, ReaderFactory] = {
    "frame": frame_reader,
    "video": video_reader,
    "segment": segment_readers.from_model_flags,
}


def register(kind: str, factory: ReaderFactory) -> None:
    """Adds a layout at run time (a plug-in or a test); a kind that is
    already registered is a ValueError."""
    if kind in READERS:
        raise ValueError(f"record kind {kind!r} is already registered")
    READERS[kind] = factory


def reader_for(model_flags: ModelFlags) -> Reader:
    """The reader of the records this model reads; an unknown record_kind
    is a one-line UserError naming model_flags.json."""
    kind = model_flags.layout()
    factory = READERS.get(kind)
    if factory is None:
        raise UserError(f"model_flags.json: record_kind {kind!r} is not a record layout this "
                        f"version reads ({', '.join(sorted(READERS))})")
    return factory(model_flags)
