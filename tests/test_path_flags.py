"""Every path flag of every entry point, given a path that cannot be read or
written, ends with exit 2 and one line naming the flag and the path, before
any work, and leaves nothing behind (training.paths; README "Bad input")."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from reliability import assert_user_error, run_cases, snapshot
from training import paths

ENTRY_POINTS = ("training.train", "training.eval", "training.synthetic", "swa.average",
                "bfloat16_patch.convert", "ensemble.build", "ensemble.inference",
                "ensemble.merge", "ensemble.check_submission", "ensemble.report",
                "prediction2tfrecord.write", "distillation.train", "stacking.fit")
STAGE_PACKAGES = ("training", "swa", "bfloat16_patch", "ensemble", "prediction2tfrecord",
                  "distillation", "stacking")
# A string flag with such a name holds a path, so it must declare its kind.
PATH_LIKE = re.compile(r"(dir|dirs|file|pattern|tgz|label_names|json|png|checkpoint|csv|"
                       r"submission)$")
AS_ROOT = os.geteuid() == 0


def make_bad_places(root: Path) -> dict:
    """{label: path} of paths that the operating system refuses, made under root."""
    (root / "a_dir").mkdir()
    (root / "a_dir" / "inside.txt").write_text("x")
    (root / "a_file").write_text("not a dir\n")
    os.mkfifo(root / "fifo")
    os.symlink(root / "nowhere", root / "dangling")
    os.symlink(root / "loop", root / "loop")
    places = {"missing": root / "missing" / "deeper", "under a file": root / "a_file" / "x",
              "symlink loop": root / "loop", "name too long": root / ("n" * 300),
              "name too long for its temporary": root / ("t" * 240), "a dir": root / "a_dir",
              "a file": root / "a_file", "a fifo": root / "fifo",
              "dangling symlink": root / "dangling",
              "glob matching a fifo": root / "fif*",
              "glob matching a dangling link": root / "dang*"}
    for system in ("/sys", "/proc"):
        if os.path.isdir(system):    # unwritable even for root
            places[f"in {system}"] = Path(system) / "yt8m-bad-path"
    if not AS_ROOT:
        (root / "unreadable").write_text("x")
        os.chmod(root / "unreadable", 0)
        (root / "read_only").mkdir()
        os.chmod(root / "read_only", 0o555)
        places.update({"unreadable file": root / "unreadable",
                       "in a read-only dir": root / "read_only" / "out"})
    return {label: str(path) for label, path in places.items()}


CASES_BY_KIND = {
    paths.IN_FILE: ("missing", "under a file", "symlink loop", "name too long", "a dir",
                    "a fifo", "dangling symlink", "unreadable file", "in /sys"),
    paths.IN_DIR: ("missing", "under a file", "symlink loop", "name too long", "a file",
                   "a fifo", "dangling symlink", "in /proc"),
    paths.IN_CHECKPOINT: ("missing", "under a file", "symlink loop", "a file", "a fifo"),
    paths.IN_PATTERN: ("glob matching a fifo", "glob matching a dangling link",
                       "unreadable file"),
    paths.OUT_FILE: ("under a file", "symlink loop", "name too long",
                     "name too long for its temporary", "a dir", "a fifo",
                     "dangling symlink", "in /sys", "in /proc", "in a read-only dir"),
    paths.OUT_DIR: ("under a file", "symlink loop", "name too long",
                    "name too long for its temporary", "a file", "a fifo",
                    "dangling symlink", "in /sys", "in /proc", "in a read-only dir"),
}
CASES_BY_KIND[paths.IN_DIRS] = CASES_BY_KIND[paths.IN_DIR]


def entry_point_modules() -> set:
    """Every production module that runs a main through run_main."""
    found = set()
    for package in STAGE_PACKAGES:
        for path in (REPO_ROOT / package).glob("*.py"):
            if "run_main(main)" in path.read_text():
                found.add(f"{package}.{path.stem}")
    return found


def test_the_walk_covers_every_entry_point():
    assert entry_point_modules() == set(ENTRY_POINTS)


def _per_kind(places: dict) -> dict:
    """{path kind: [bad values]} (a list flag: a good item first, the bad one
    must still be named)."""
    per_kind = {}
    for kind, labels in CASES_BY_KIND.items():
        bad = [places[label] for label in labels if label in places]
        per_kind[kind] = ([f"{places['a dir']},{path}" for path in bad]
                          if kind == paths.IN_DIRS else bad)
    return per_kind


@pytest.mark.parametrize("half", [0, 1])
def test_every_path_flag_over_bad_paths(half, tmp_path):
    places_root = tmp_path / "places"
    places_root.mkdir()
    places = make_bad_places(places_root)
    before = snapshot(places_root)
    specs = {module: {"per_path_flag": _per_kind(places)} for module in ENTRY_POINTS[half::2]}
    checked = 0
    for module, (path_flags, string_flags, results) in run_cases(specs, tmp_path).items():
        unregistered = [name for name in string_flags
                        if PATH_LIKE.search(name) and name not in path_flags]
        assert not unregistered, (module, unregistered)
        assert path_flags, module
        for result in results:
            bad = result.args[1].split("=", 1)[1].split(",")[-1]
            line = assert_user_error(result, f"--{result.flag}=", bad)
            assert line.startswith(f"error: --{result.flag}="), (module, line)
            assert "Traceback" not in result.stdout, (module, result.args)
            checked += 1
    assert snapshot(places_root) == before          # nothing left behind, nothing changed
    assert sorted(os.listdir(places_root)) == sorted(
        ["a_dir", "a_file", "fifo", "dangling", "loop"]
        + ([] if AS_ROOT else ["unreadable", "read_only"]))
    print(f"path-flag cases checked: {checked}")
    assert checked > 50, checked
