"""The main job end to end (run_scripts/pipeline.sh, TINY=1) on its own
synthetic data: the validation files split into fitting files (one, 160
videos) and held-out files (two, 320 videos); every choice (SWA windows,
stacking weights, uniform or stacked) is made on the fitting file, and the
report is measured on the held-out files only, with paired bootstrap
intervals. A second, fast test records the pipeline's commands to show that
no chooser is given a held-out file.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from ensemble.check_submission import check_submission
from training import synthetic

PIPELINE = REPO_ROOT / "run_scripts" / "pipeline.sh"
# Three members of comparable strength at their tiny sizes (docs/quickstart.md).
MODELS = "nonlocal-earlyNetVLADModel Soft-DBoF-8k GRUModel"
NUM_CLASSES = 200
FIT, HELDOUT = ["validate00.tfrecord"], ["validate01.tfrecord", "validate02.tfrecord"]


def write_data(root) -> None:
    """The quick start's train data (its seed and sizes), three validation
    files of 160 videos and a small test split."""
    for split, shards, videos, labels in (("train", 8, 128, True), ("validate", 3, 160, True),
                                          ("test", 1, 64, False)):
        synthetic.write_dataset(str(root), split=split, num_shards=shards,
                                videos_per_shard=videos, num_classes=NUM_CLASSES, seed=1,
                                min_frames=30, max_frames=120, with_labels=labels)


def pipeline_env(work, data, python=sys.executable, **extra) -> dict:
    return {**os.environ, "PYTHON": str(python), "DATA_DIR": str(data / "frame"),
            "WORK_DIR": str(work), "MODELS": MODELS, "TINY": "1", "SWA_BN": "recompute",
            "SWA_RECOMPUTE_BATCHES": "20", "NUM_CLASSES": str(NUM_CLASSES), "TILE_NUM": "4",
            "FIT_FILES": "1", "SWA_WINDOWS": "1,2,4", **extra}


def files(data, names) -> str:
    return ",".join(str(data / "frame" / name) for name in names)


@pytest.mark.slow
def test_choices_on_the_fitting_file_report_on_the_held_out_ones(tmp_path):
    data, work = tmp_path / "data", tmp_path / "work"
    write_data(data)
    completed = subprocess.run(["bash", str(PIPELINE)], cwd="/", env=pipeline_env(work, data),
                               capture_output=True, text=True, timeout=1500)
    assert completed.returncode == 0, (completed.stdout[-3000:], completed.stderr[-3000:])
    assert "choices fit on 1 file(s), the report measures the other 2" in completed.stdout
    report = json.loads((work / "submission.report.json").read_text())
    # Every row was measured on the held-out files, by name and video count.
    assert report["data_pattern"] == files(data, HELDOUT) and report["num_videos"] == 320
    for row in report["rows"]:
        assert row["evaluation"]["eval_data_pattern"] == files(data, HELDOUT), row["name"]
        assert row["evaluation"]["num_examples"] == 320, row["name"]
    assert len(report["rows"]) == 3 * 2 + 2
    # Every choice was made on the fitting file.
    for model in MODELS.split():
        choice = json.loads((work / "swa" / model / "swa.json").read_text())["window_choice"]
        assert choice["data_pattern"] == files(data, FIT)
    weights = json.loads((work / "stacking_weights.json").read_text())
    assert weights["data_pattern"] == files(data, FIT)
    assert report["choice"]["fit_data_pattern"] == files(data, FIT)
    # The chosen ensemble beats every single model state, each gain's paired
    # interval above 0.
    chosen = next(row for row in report["rows"] if row.get("chosen"))
    gains = [gain for gain in report["gains"] if gain["system"] == chosen["name"]
             and gain["what"].startswith("ensemble vs")]
    assert len(gains) == 6 and all(gain["low"] > 0 for gain in gains), gains
    singles = [row["gap"]["estimate"] for row in report["rows"] if row["kind"] != "ensemble"]
    assert chosen["gap"]["low"] > max(singles), (chosen["gap"], singles)
    assert (work / "submission.report.png").read_bytes()[:4] == b"\x89PNG"
    assert check_submission(str(work / "submission.csv"), num_classes=NUM_CLASSES) == 64


def test_no_chooser_is_given_a_held_out_file(tmp_path):
    """The pipeline's commands, recorded (PYTHON prints them instead of running
    Python): the choosers (swa.average's window, stacking.fit, report
    --choose) name only the fitting file; only the evaluations for the report
    and the report name the held-out files, and the report's files and the
    choosers' are disjoint and cover the validation files. Mutations tried:
    splitting with FIT_PATTERN=$VALIDATE_PATTERN in pipeline.sh fails the
    first check; lib.sh's HELDOUT_PATTERN holding every file (the fitting
    one too) passed before the disjointness check and fails it now; the
    report's --data_pattern given "$FIT_PATTERN,$HELDOUT_PATTERN" in
    pipeline.sh fails it too; HELDOUT_PATTERN leaving out a held-out file
    fails the cover check."""
    data = tmp_path / "data" / "frame"
    data.mkdir(parents=True)
    for name in FIT + HELDOUT:
        (data / name).write_bytes(b"")
    log, recorder = tmp_path / "calls.txt", tmp_path / "python"
    recorder.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$*" >> "{log}"\n')
    recorder.chmod(0o755)
    env = pipeline_env(tmp_path / "work", tmp_path / "data", python=recorder)
    subprocess.run(["bash", str(PIPELINE)], cwd="/", env=env, check=True, capture_output=True,
                   timeout=60)
    calls = log.read_text().splitlines()
    held_out = [str(data / name) for name in HELDOUT]
    choosers = [call for call in calls if call.split()[1] in ("swa.average", "stacking.fit")
                or "--choose" in call.split()]
    assert len(choosers) == 3 + 1 + 1
    for call in choosers:
        assert not any(path in call for path in held_out), call
        assert str(data / FIT[0]) in call or "--choose" in call, call
    readers = [call for call in calls if any(path in call for path in held_out)]
    assert {call.split()[1] for call in readers} == {"training.eval", "ensemble.build",
                                                     "ensemble.report"}
    assert_report_and_choosers_split_the_files(calls, {str(data / name)
                                                       for name in FIT + HELDOUT})


def flags_of(call: str) -> dict:
    """{flag: value} of a recorded call ("-m module --flag=value ...")."""
    return dict(word[2:].split("=", 1) if "=" in word else (word[2:], "")
                for word in call.split()[2:])


def assert_report_and_choosers_split_the_files(calls, validation: set) -> None:
    """The report's files and each chooser's are disjoint and together all
    the validation files; every evaluation for the report reads exactly the
    report's files."""
    chooser_flags = {"swa.average": "choose_window_on", "stacking.fit": "data_pattern"}
    report = [flags_of(call)["data_pattern"] for call in calls
              if call.split()[1] == "ensemble.report" and "--choose" not in call.split()]
    assert len(report) == 1, report
    measured = set(report[0].split(","))
    chosen_on = set()
    for call in calls:
        module = call.split()[1]
        if module in chooser_flags:
            files = set(flags_of(call)[chooser_flags[module]].split(","))
            assert not files & measured, f"{module} chooses on report files: {files & measured}"
            chosen_on |= files
        elif module in ("training.eval", "ensemble.build"):
            assert set(flags_of(call)["eval_data_pattern"].split(",")) == measured, call
    assert measured | chosen_on == validation, (sorted(measured), sorted(chosen_on))


def test_a_choice_without_fitting_files_is_refused(tmp_path):
    """With one validation file nothing can be chosen without reading what the
    report measures: SWA_LAST_N=auto (the default) stops before any work."""
    data = tmp_path / "data" / "frame"
    data.mkdir(parents=True)
    (data / "validate00.tfrecord").write_bytes(b"")
    log, recorder = tmp_path / "calls.txt", tmp_path / "python"
    recorder.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$*" >> "{log}"\n')
    recorder.chmod(0o755)
    env = pipeline_env(tmp_path / "work", tmp_path / "data", python=recorder, STACKING="0")
    env.pop("FIT_FILES")
    completed = subprocess.run(["bash", str(PIPELINE)], cwd="/", env=env, capture_output=True,
                               text=True, timeout=60)
    assert completed.returncode == 2, completed.stderr
    assert "error: SWA_LAST_N=auto: VALIDATE_PATTERN=" in completed.stderr
    assert "matches 1 file(s); it chooses on fitting files and needs 2 or more" in \
        completed.stderr
    assert not log.exists() or "training.train" not in log.read_text()
