"""ensemble.build --weights_file and --weights of the wrong shape: one line each,
naming the file (or the flag), before any model is loaded."""
from __future__ import annotations

import json

import pytest

from ensemble import build
from training.cli import UserError


def one_line(call, *args) -> str:
    with pytest.raises(UserError) as caught:
        call(*args)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


@pytest.fixture
def dirs(tmp_path):
    made = [tmp_path / "a", tmp_path / "b"]
    for directory in made:
        directory.mkdir()
    return [str(directory) for directory in made]


BAD_FILES = {
    "more_weights": ('{"members": ["a", "b"], "weights": [1, 2, 3]}', "2 members but 3 weights"),
    "fewer_weights": ('{"members": ["a", "b"], "weights": [1]}', "2 members but 1 weights"),
    "negative": ('{"members": ["a", "b"], "weights": [1, -0.5]}',
                 "weights must be finite and >= 0, got -0.5 (member b)"),
    "nan": ('{"members": ["a", "b"], "weights": [NaN, 1]}',
            "weights must be finite and >= 0, got nan (member a)"),
    "infinity": ('{"members": ["a", "b"], "weights": [1, Infinity]}', "got inf"),
    "all_zero": ('{"members": ["a", "b"], "weights": [0, 0.0]}', "the weights sum to 0"),
    "a_list": ('[["a", "b"], [1, 2]]', "expected an object with the lists \"members\" and "
                                        "\"weights\", found a list"),
    "no_lists": ('{"a": 1, "b": 2}', "found an object without them"),
    "random_bytes": (bytes(range(200, 256)) * 3, "not valid JSON"),
    "not_utf8": (b'{"members": ["\xff"], "weights": [1]}', "not valid JSON"),
    "a_string_weight": ('{"members": ["a", "b"], "weights": [1, "2"]}',
                        "weight '2' is not a number"),
    "a_bool_weight": ('{"members": ["a", "b"], "weights": [1, true]}',
                      "weight True is not a number"),
    "a_member_not_a_path": ('{"members": ["a", 3], "weights": [1, 2]}',
                            "member 3 is not a dir path"),
    "no_members": ('{"members": [], "weights": []}', "holds no members"),
    "twice": ('{"members": ["a", "./a"], "weights": [1, 2]}', "member ./a is listed twice"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_weights_file_is_one_line(case, dirs, tmp_path):
    content, says = BAD_FILES[case]
    path = tmp_path / "weights.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    for model_dirs in ("", ",".join(dirs)):
        line = one_line(build.resolve_members_and_weights, model_dirs, "", str(path))
        assert line.startswith(f"--weights_file={path}: ") and says in line, line


def test_weights_file_of_other_members(dirs, tmp_path):
    path = tmp_path / "weights.json"
    other = tmp_path / "c"
    other.mkdir()
    path.write_text(json.dumps({"members": [dirs[0], str(other)], "weights": [1, 2]}))
    line = one_line(build.resolve_members_and_weights, ",".join(dirs), "", str(path))
    assert line == (f"--weights_file={path}: its members differ from --model_dirs "
                    f"({dirs[1]} has no weight)")
    line = one_line(build.resolve_members_and_weights, dirs[0], "", str(path))
    assert line == (f"--weights_file={path}: its members differ from --model_dirs (it weighs "
                    f"{other}, which is not in --model_dirs)")
    # Without --model_dirs, the file's members must be dirs.
    path.write_text(json.dumps({"members": [dirs[0], "gone"], "weights": [1, 2]}))
    line = one_line(build.resolve_members_and_weights, "", "", str(path))
    assert line == f"--weights_file={path}: member {tmp_path / 'gone'}: no such model dir"


def test_weights_file_that_is_missing_or_a_dir(dirs, tmp_path):
    missing = tmp_path / "none.json"
    assert one_line(build.resolve_members_and_weights, "", "", str(missing)) == \
        f"--weights_file={missing}: no such file"
    assert one_line(build.resolve_members_and_weights, "", "", str(tmp_path)) == \
        f"--weights_file={tmp_path}: is a dir, not a weights file"


@pytest.mark.parametrize("weights, says", [
    ("1", "--weights: 1 weights for 2 --model_dirs"), ("1,2,3", "3 weights for 2"),
    ("1,-1", "got -1.0"), ("nan,1", "got nan"), ("inf,1", "got inf"),
    ("0,0", "--weights: the weights sum to 0"), ("1,x", "--weights"),
])
def test_bad_weights_flag_is_one_line(weights, says, dirs):
    line = one_line(build.resolve_members_and_weights, ",".join(dirs), weights, "")
    assert line.startswith("--weights") and says in line, line


def test_keys_of_no_release_are_refused(dirs, tmp_path):
    """A hand-written file with only members and weights reads, and so does
    one with the keys stacking.fit writes; a key that no release wrote (a
    typo) is one line naming it, where it used to be ignored.
    Mutation tried: reading the weights file without WeightsFile.from_json
    (the former "other keys are ignored") let the typo through."""
    path = tmp_path / "weights.json"
    path.write_text(json.dumps({"members": dirs, "weights": [1, 3]}))
    assert build.resolve_members_and_weights("", "", str(path))[1] == pytest.approx([0.25, 0.75])
    path.write_text(json.dumps({"members": dirs, "weights": [1, 3], "gap": 0.5,
                                "gap_uniform": 0.4, "num_videos": 10, "member_gap": [0.1, 0.2],
                                "data_pattern": "v*.tfrecord", "parameterization": "simplex"}))
    assert build.resolve_members_and_weights("", "", str(path))[0] == dirs
    path.write_text(json.dumps({"members": dirs, "weights": [1, 3], "gap_unifrom": 0.4}))
    line = one_line(build.resolve_members_and_weights, "", "", str(path))
    assert line.startswith(f"--weights_file={path}: unknown key(s) 'gap_unifrom' "), line
    path.write_text(json.dumps({"members": dirs, "weights": [1, 3], "num_videos": "10"}))
    line = one_line(build.resolve_members_and_weights, "", "", str(path))
    assert line == f"--weights_file={path}: num_videos: '10' is not an integer or null", line
