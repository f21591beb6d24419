"""Stage-dir helpers: model_flags.json, checkpoint listing, atomic writes."""
import os

import pytest

from training import checkpoints
from training.cli import UserError
from training.model_flags import ModelFlags


def test_model_flags_round_trip_and_errors(tmp_path):
    checkpoints.write_model_flags(str(tmp_path), ModelFlags("GRUModel", "rgb", "1024", True, 5))
    assert checkpoints.read_model_flags(str(tmp_path)).model == "GRUModel"
    with pytest.raises(UserError, match="model_flags.json: missing"):
        checkpoints.read_model_flags(str(tmp_path / "nowhere"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model_flags.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        checkpoints.read_model_flags(str(tmp_path / "bad"))


def test_list_checkpoints_needs_the_index(tmp_path):
    for step in (10, 2, 300):
        (tmp_path / f"model.ckpt-{step}.index").write_text("")
        (tmp_path / f"model.ckpt-{step}.data-00000-of-00001").write_text("")
    (tmp_path / "model.ckpt-999.data-00000-of-00001").write_text("")  # incomplete
    listed = checkpoints.list_checkpoints(str(tmp_path))
    assert [step for step, _ in listed] == [2, 10, 300]
    assert checkpoints.latest_checkpoint(str(tmp_path)) == str(tmp_path / "model.ckpt-300")
    assert checkpoints.find_checkpoint(str(tmp_path)) == str(tmp_path / "model.ckpt-300")
    with pytest.raises(UserError, match="no such checkpoint"):
        checkpoints.find_checkpoint(str(tmp_path / "model.ckpt-999"))


def test_atomic_directory_success_failure_and_existing(tmp_path):
    target = tmp_path / "out"
    with checkpoints.atomic_directory(str(target)) as work:
        open(os.path.join(work, "a"), "w").write("1")
        assert not target.exists()
    assert (target / "a").read_text() == "1"
    with pytest.raises(UserError, match="exists"):
        with checkpoints.atomic_directory(str(target)):
            pass
    with pytest.raises(RuntimeError):
        with checkpoints.atomic_directory(str(target), overwrite=True) as work:
            open(os.path.join(work, "b"), "w").write("2")
            raise RuntimeError("killed")
    assert sorted(os.listdir(target)) == ["a"]
    assert [name for name in os.listdir(tmp_path) if name.startswith(".")] == []
    with checkpoints.atomic_directory(str(target), overwrite=True) as work:
        open(os.path.join(work, "b"), "w").write("2")
    assert sorted(os.listdir(target)) == ["b"]


def test_atomic_write_text_replaces(tmp_path):
    path = tmp_path / "x.json"
    checkpoints.write_json(str(path), {"a": 1})
    checkpoints.write_json(str(path), {"a": 2})
    assert path.read_text().strip().endswith("}") and '"a": 2' in path.read_text()
    assert os.listdir(tmp_path) == ["x.json"]
