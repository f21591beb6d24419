"""training.record_layouts: the reader of a model picked by its record kind.

The kind is model_flags.json's ``record_kind``; a file without it (every
file written before, and every frame- or video-level file written now) is
"frame" or "video" by ``frame_features``. An unknown kind is one line naming
model_flags.json; a layout registered at run time is what a stage reads.
The 2017 kinds (frame2017, video2017) read the id under ``video_id`` and
are recorded by name; --record_kind and its aliases resolve in one place.
"""
from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest

from conftest import TINY_CLASSES
from ensemble import build
from support.reliability import train_config
from training import checkpoints, members, model_builder, readers, record_layouts, train
from training import model_flags as model_flags_module
from training import train_dir as train_dirs
from training.cli import UserError
from training.model_flags import ModelFlags
from training.segment_readers import SegmentReader

VIDEO_FILE = ('{"feature_names": "mean_rgb,mean_audio", "feature_sizes": "1024,128", '
              '"frame_features": false, "label_loss": "CrossEntropyLoss", '
              '"model": "LogisticModel", "num_classes": 10}')


def flags_of(text: str, tmp_path) -> ModelFlags:
    (tmp_path / checkpoints.MODEL_FLAGS_FILE).write_text(text)
    return checkpoints.read_model_flags(str(tmp_path))


def test_unknown_kind_is_one_line_naming_model_flags_json(tmp_path):
    """Mutation: reader_for indexing READERS[kind] (a KeyError) fails here."""
    payload = {**json.loads(VIDEO_FILE), "record_kind": "hologram"}
    flags = flags_of(json.dumps(payload), tmp_path)
    with pytest.raises(UserError, match=r"^model_flags\.json: record_kind 'hologram' is not a "
                                        r"record layout this version reads \(frame, frame2017, "
                                        r"segment, video, video2017\)$"):
        model_builder.make_reader(flags)


def test_file_without_a_kind_reads_as_before(tmp_path):
    """A file without record_kind: its layout from frame_features, written
    back without the key. Mutation: layout_of returning "frame" for both
    fails here (a FrameReader for the video-level file)."""
    video = flags_of(VIDEO_FILE, tmp_path)
    assert video.record_kind is None and video.layout() == "video"
    reader = model_builder.make_reader(video)
    assert isinstance(reader, readers.VideoReader) and not reader.frame_features
    assert (reader.feature_names, reader.feature_sizes) == (["mean_rgb", "mean_audio"],
                                                            [1024, 128])
    assert "record_kind" not in video.to_json()
    frame = dataclasses.replace(video, frame_features=True, feature_names="rgb,audio")
    assert type(model_builder.make_reader(frame)) is readers.FrameReader
    segment = dataclasses.replace(frame, record_kind="segment")
    assert type(model_builder.make_reader(segment)) is SegmentReader


def test_identity_compares_the_layouts():
    """An old file (no record_kind) matches a record naming its derived kind,
    not another. Mutation: mismatched_keys comparing record_kind as a plain
    field (None skipped) fails the "segment" case."""
    old = ModelFlags.from_json(json.loads(VIDEO_FILE), "x.json")
    assert model_flags_module.mismatched_keys(old, dataclasses.replace(
        old, record_kind="video")) == []
    assert model_flags_module.mismatched_keys(old, dataclasses.replace(
        old, record_kind="segment")) == ["record_kind"]


class ToyReader(readers.FrameReader):
    """A toy layout: frame-level records, counting the batches it parses."""
    parsed = 0

    def parse(self, serialized):
        ToyReader.parsed += 1
        return super().parse(serialized)


def toy_reader(model_flags: ModelFlags) -> ToyReader:
    return ToyReader(model_flags.num_classes, model_flags.feature_name_list(),
                     model_flags.feature_size_list())


@pytest.mark.slow
def test_registered_layout_is_read_by_the_trainer(tiny_data, tmp_path, monkeypatch):
    """A kind registered at run time: the trainer reads its records with its
    reader, and the train dir's model_flags.json names it. Mutation:
    model_builder.make_reader calling readers.get_reader(frame_features, ...)
    fails here (the toy reader never parses)."""
    monkeypatch.setattr(record_layouts, "LAYOUTS", dict(record_layouts.LAYOUTS))
    record_layouts.register("toy", toy_reader)
    with pytest.raises(ValueError, match="'toy' is already registered"):
        record_layouts.register("toy", toy_reader)
    flags = model_builder.make_model_flags("FrameMeanMoeModel", "rgb,audio", "1024,128", "toy",
                                           TINY_CLASSES, "CrossEntropyLoss")
    train_dir = str(tmp_path / "run")
    train_dirs.prepare_train_dir(train_dir, flags, start_new=False)
    ToyReader.parsed = 0
    result = train.train(flags, train_dir, str(tiny_data / "frame" / "train*.tfrecord"),
                         train_config(max_steps=2), log=lambda _: None)
    assert result["global_step"] == 2 and ToyReader.parsed >= 1
    assert checkpoints.read_model_flags(train_dir).record_kind == "toy"


def test_ensemble_members_share_the_layout():
    """Members of another record kind are refused; the ensemble dir's record
    names the members' kind (none for the 2018 layouts). Mutation: MATCH_KEYS
    without record_kind fails the refusal."""
    video = ModelFlags.from_json(json.loads(VIDEO_FILE), "x.json")
    plain = SimpleNamespace(model_dir="/a", model_flags=video)
    toy = SimpleNamespace(model_dir="/b", model_flags=dataclasses.replace(
        video, record_kind="toy"))
    with pytest.raises(UserError, match=r"^/b: record_kind=toy but /a has "
                                        r"record_kind=video; all members"):
        members.check_members_agree([plain, toy])
    assert build.ensemble_model_flags([plain]).to_json().get("record_kind") is None
    assert build.ensemble_model_flags([toy, toy]).layout() == "toy"


# ---------------------------------------------------------------------------
# The kinds: their model records, readers and the --record_kind flag

# The model_flags.json of a frame- and a video-level model as every release
# wrote it (no record_kind), without model_hparams.
FRAME_RECORD = {"feature_names": "rgb,audio", "feature_sizes": "1024,128",
                "frame_features": True, "label_loss": "CrossEntropyLoss",
                "model": "FrameMeanMoeModel", "num_classes": 10}


def record_of(kind: str) -> dict:
    layout = record_layouts.layout(kind)
    flags = model_builder.make_model_flags("FrameMeanMoeModel", layout.feature_names,
                                           layout.feature_sizes, kind, 10, "CrossEntropyLoss")
    return {key: value for key, value in flags.to_json().items() if key != "model_hparams"}


def test_each_kind_is_recorded_and_read():
    """frame and video records are the files of before, key for key (the
    starter's bool gives the same); the 2017 kinds name themselves and read
    the id under video_id. Mutation tried: model_record_kind returning the
    kind for every layout (record_kind written for frame and video models)
    fails the first assertion."""
    assert record_of("frame") == FRAME_RECORD
    assert record_of("video") == {**FRAME_RECORD, "frame_features": False,
                                  "feature_names": "mean_rgb,mean_audio"}
    assert model_builder.make_model_flags("FrameMeanMoeModel", "rgb,audio", "1024,128", True,
                                          10, "CrossEntropyLoss").to_json() == \
        model_builder.make_model_flags("FrameMeanMoeModel", "rgb,audio", "1024,128", "frame",
                                       10, "CrossEntropyLoss").to_json()
    for kind, frame_level, reader_type in (("frame2017", True, readers.FrameReader),
                                           ("video2017", False, readers.VideoReader)):
        record = record_of(kind)
        assert (record["record_kind"], record["frame_features"]) == (kind, frame_level)
        flags = ModelFlags.from_json(record, "x.json")
        reader = model_builder.make_reader(flags)
        assert type(reader) is reader_type and reader.id_key == "video_id"
        assert record_layouts.layout(kind).num_classes == 4716
    assert model_builder.make_reader(ModelFlags.from_json(FRAME_RECORD, "x")).id_key == "id"


def test_another_kind_of_the_model_level():
    """A model reads records of another kind of its level (2017 records for
    a 2018 model), never of the other level. Mutation tried: reader_for
    without the level check builds a VideoReader for the frame model and
    fails the refusal."""
    frame = ModelFlags.from_json(FRAME_RECORD, "x")
    reader = model_builder.make_reader(frame, "frame2017")
    assert type(reader) is readers.FrameReader and reader.id_key == "video_id"
    assert type(model_builder.make_reader(frame, "segment")) is SegmentReader
    with pytest.raises(UserError, match=r"^--record_kind=video2017: 2017 video-level Examples, "
                                        r"but the model reads frame-level records "
                                        r"\(record_kind frame\)$"):
        model_builder.make_reader(frame, "video2017")
    with pytest.raises(UserError, match=r"^--record_kind=hologram is not a record layout"):
        model_builder.make_reader(frame, "hologram")


def test_record_kind_and_its_aliases():
    """--record_kind, else the alias given, else the default; an alias
    naming another kind is one line. Mutation tried: asked_kind letting the
    alias win over --record_kind (no contradiction check) fails the
    refusals."""
    asked = record_layouts.asked_kind
    segment = {"segment_labels": "segment"}
    assert asked("", "frame2017") == "frame2017"
    assert asked("video2017", "frame") == "video2017"
    assert asked("", "frame", segment) == asked("segment", "frame", segment) == "segment"
    assert asked("", "frame", {"segment_labels": None}) == "frame"
    assert asked("", "frame", {"frame_features=false": "video"}) == "video"
    with pytest.raises(UserError, match=r"^--segment_labels: means --record_kind=segment; it "
                                        r"contradicts --record_kind=frame$"):
        asked("frame", "frame", segment)
    with pytest.raises(UserError, match=r"^--frame_features=false: means --record_kind=video; "
                                        r"it contradicts --record_kind=video2017$"):
        asked("video2017", "frame", {"frame_features=false": "video"})
    with pytest.raises(UserError, match=r"^--record_kind=frame2018 is not a record layout"):
        asked("frame2018", "frame")
