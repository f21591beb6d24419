"""The stage records' machinery (training.stage_files): strict reading,
byte-identical writing, provenance. The conformance of every real record
with the golden files is tests/unit/test_stage_file_golden.py."""
from __future__ import annotations

import dataclasses
import json
from typing import Dict, Optional, Tuple

import pytest

from training import stage_files
from training.cli import UserError
from training.stage_files import Provenance, Record, omit_none


@dataclasses.dataclass(frozen=True)
class _Inner(Record):
    step: int


@dataclasses.dataclass(frozen=True)
class _Example(Record):
    FILE_NAME = "example.json"
    name: str
    ratio: float
    always: Optional[int]
    items: Tuple[_Inner, ...]
    table: Dict[str, float]
    new_key: Optional[str] = omit_none()


def _payload(**changes):
    payload = {"name": "a", "ratio": 1, "always": None, "items": [{"step": 3}],
               "table": {"x": 0.5}}
    payload.update(changes)
    return payload


def test_round_trip_keeps_kinds_and_absent_keys(tmp_path):
    """An int read for a float stays an int, a None written as null stays, an
    omit_none field that is None stays absent: the file is byte-identical.
    Mutation tried: writing omit_none fields when None added "new_key": null
    and failed the byte comparison."""
    path = tmp_path / "example.json"
    path.write_text(json.dumps(_payload(), indent=2, sort_keys=True) + "\n")
    record = stage_files.read_record(_Example, str(path))
    assert record.items == (_Inner(step=3),) and record.new_key is None
    out = tmp_path / "out.json"
    stage_files.write_record(str(out), record)
    assert out.read_bytes() == path.read_bytes()


@pytest.mark.parametrize("changes, message", [
    ({"extra": 1}, "unknown key(s) 'extra'"),
    ({"ratio": "x"}, "ratio: 'x' is not a number"),
    ({"ratio": True}, "ratio: True is not a number"),
    ({"items": [{"step": 1.5}]}, "items[0]: step: 1.5 is not an integer"),
    ({"items": {"step": 1}}, "items: expected a list, found an object"),
    ({"table": {"x": None}}, "table.x: None is not a number"),
    ({"new_key": 3}, "new_key: 3 is not a string or null"),
])
def test_strict_reading_names_file_and_key(tmp_path, changes, message):
    """Each malformed value is one line naming the file and the key path.
    Mutation tried: letting _is_kind accept bool as a number failed the
    "ratio: True" case."""
    path = tmp_path / "example.json"
    path.write_text(json.dumps(_payload(**changes)))
    with pytest.raises(UserError) as err:
        stage_files.read_record(_Example, str(path))
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_required_key(tmp_path):
    """Mutation tried: treating every field as optional let this file read."""
    payload = _payload()
    del payload["always"]
    path = tmp_path / "example.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(UserError, match="has no 'always' key"):
        stage_files.read_record(_Example, str(path))


def test_provenance_touches_by_real_path(tmp_path):
    """A choice read a file when the real paths agree (a symlink counts).
    Mutation tried: comparing the paths as written missed the symlink."""
    data = tmp_path / "validate0.tfrecord"
    data.write_bytes(b"")
    (tmp_path / "link.tfrecord").symlink_to(data)
    other = tmp_path / "validate1.tfrecord"
    other.write_bytes(b"")
    choice = stage_files.provenance_for("swa.average", "window", str(tmp_path / "validate0*"))
    assert choice.data_files == (str(data),)
    assert choice.touches([str(tmp_path / "link.tfrecord"), str(other)]) == [
        str(tmp_path / "link.tfrecord")]
    assert Provenance.from_json(choice.to_json(), "x") == choice
