"""eval_results.json: evaluations keyed by what they measured, never replaced
silently; the earlier format kept; a damaged file refused in one line."""
from __future__ import annotations

import json
import os

import pytest

from training import eval_results
from training.cli import UserError

RESULT = {"gap": 0.5, "hit_at_one": 0.6, "perr": 0.4, "map": 0.3, "loss": 1.5,
          "num_examples": 32}
SETTINGS = {"frame_sampling": None, "seed": 2018, "top_k": 20, "bf16_compute": None}


def add(directory, checkpoint="model.ckpt-10", pattern="validate*.tfrecord", gap=0.5,
        **settings):
    return eval_results.record(str(directory), os.path.join(str(directory), checkpoint),
                               {**RESULT, "gap": gap}, str(directory / pattern), 1,
                               {**SETTINGS, **settings})


def saved(directory) -> dict:
    return json.loads((directory / "eval_results.json").read_text())


def test_each_measurement_is_kept_and_the_latest_is_on_top(tmp_path):
    add(tmp_path, gap=0.1)
    add(tmp_path, "model.ckpt-20", gap=0.2)
    add(tmp_path, pattern="other*.tfrecord", gap=0.3)
    add(tmp_path, bn_statistics="recompute", recompute_batches=5, gap=0.4)
    add(tmp_path, seed=1, gap=0.5)
    add(tmp_path, frame_sampling="random", gap=0.6)
    payload = saved(tmp_path)
    assert len(payload["evaluations"]) == 6
    assert payload["gap"] == 0.6 and payload["frame_sampling"] == "random"
    assert payload["evaluations"][payload["key"]]["gap"] == 0.6
    assert payload["eval_data_pattern"] == str(tmp_path / "validate*.tfrecord")
    assert payload["eval_files"] == 1 and payload["global_step"] == 10
    keys = sorted(payload["evaluations"])
    assert ("model.ckpt-10|" + str(tmp_path / "validate*.tfrecord")
            + "|bn_statistics=recompute:5|frame_sampling=default|seed=2018|top_k=20|"
              "bf16_compute=default") in keys
    # The same measurement again replaces its own entry only.
    add(tmp_path, gap=0.7)
    payload = saved(tmp_path)
    assert len(payload["evaluations"]) == 6 and payload["gap"] == 0.7
    assert sorted(entry["gap"] for entry in payload["evaluations"].values()) == \
        [0.2, 0.3, 0.4, 0.5, 0.6, 0.7]


def test_a_file_of_the_earlier_format_is_kept_as_the_first_entry(tmp_path):
    old = {"checkpoint": str(tmp_path / "model.ckpt-10"), "global_step": 10,
           "bn_statistics": "moving", "recompute_batches": None, **RESULT, "gap": 0.25}
    (tmp_path / "eval_results.json").write_text(json.dumps(old))
    assert eval_results.latest_evaluation(str(tmp_path))["gap"] == 0.25
    add(tmp_path, gap=0.5)
    payload = saved(tmp_path)
    kept = {key: entry for key, entry in payload["evaluations"].items() if entry == old}
    assert len(payload["evaluations"]) == 2 and payload["gap"] == 0.5
    assert list(kept) == ["model.ckpt-10|unrecorded|bn_statistics=moving|frame_sampling="
                          "unrecorded|seed=unrecorded|top_k=unrecorded|bf16_compute=unrecorded"]
    latest = eval_results.latest_evaluation(str(tmp_path))
    assert latest["gap"] == 0.5 and "evaluations" not in latest and "key" not in latest


@pytest.mark.parametrize("content, says", [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe\x00", "not valid JSON"),
    (b"[1, 2]", "expected a JSON object, found a list"),
    (b'{"gap": 0.5, "evaluations": [1]}', "'evaluations' is not an object of evaluations"),
    (b'{"gap": "high"}', "gap is 'high', not a number"),
])
def test_a_damaged_file_is_refused_in_one_line_and_kept(tmp_path, content, says):
    path = tmp_path / "eval_results.json"
    path.write_bytes(content)
    for call in (lambda: add(tmp_path), lambda: eval_results.latest_evaluation(str(tmp_path))):
        with pytest.raises(UserError) as caught:
            call()
        line = str(caught.value)
        assert "\n" not in line and line.startswith(f"{path}: {says}"), line
        assert "left as it is" in line
    assert path.read_bytes() == content
    assert os.listdir(tmp_path) == ["eval_results.json"]


def test_checkpoint_outside_the_dir_is_keyed_by_its_path(tmp_path):
    (tmp_path / "swa").mkdir()
    eval_results.record(str(tmp_path / "bf16"), str(tmp_path / "swa" / "model.ckpt-10"),
                        RESULT, str(tmp_path / "v*"), 1, SETTINGS)
    add(tmp_path / "bf16")
    keys = sorted(saved(tmp_path / "bf16")["evaluations"])
    assert keys[0].startswith(str(tmp_path / "swa" / "model.ckpt-10") + "|")
    assert keys[1].startswith("model.ckpt-10|")
