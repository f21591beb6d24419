"""training.record_layouts: the reader of a model picked by its record kind.

The kind is model_flags.json's ``record_kind``; a file without it (every
file written before, and every frame- or video-level file written now) is
"frame" or "video" by ``frame_features``. An unknown kind is one line naming
model_flags.json; a layout registered at run time is what a stage reads.
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
                                        r"record layout this version reads \(frame, segment, "
                                        r"video\)$"):
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
    monkeypatch.setitem(record_layouts.READERS, "toy", toy_reader)
    with pytest.raises(ValueError, match="'toy' is already registered"):
        record_layouts.register("toy", toy_reader)
    flags = dataclasses.replace(model_builder.make_model_flags(
        "FrameMeanMoeModel", "rgb,audio", "1024,128", True, TINY_CLASSES, "CrossEntropyLoss"),
        record_kind="toy")
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
