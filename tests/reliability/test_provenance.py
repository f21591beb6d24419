"""Provenance: every choice names the files it read (training.stage_files),
is carried from stage to stage, and the reports refuse held-out files a
choice read; a pipeline rerun with moved fitting files stops at once,
naming the outputs to make again. No TensorFlow graph is built here."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from ensemble import report, segment_report
from support.reliability import assert_user_error
from training import stage_files
from training.cli import UserError

GOLDEN = REPO_ROOT / "tests" / "golden"


@pytest.fixture()
def data(tmp_path):
    """Four empty validation files (no record is read here)."""
    folder = tmp_path / "data"
    folder.mkdir()
    for index in range(4):
        (folder / f"validate{index}.tfrecord").write_bytes(b"")
    return folder


def _files(data, *indices) -> str:
    return ",".join(str(data / f"validate{index}.tfrecord") for index in indices)


def swa_dir(root, name: str, window_on: str):
    """A member dir whose swa.json (the golden one, of the release before
    provenance) chose its window on `window_on`."""
    directory = root / name
    directory.mkdir(parents=True)
    payload = json.loads((GOLDEN / "swa_window_chosen.swa.json").read_text())
    payload["window_choice"]["data_pattern"] = window_on
    (directory / "swa.json").write_text(json.dumps(payload))
    return directory


def test_earlier_records_give_their_provenance(tmp_path, data):
    """An swa.json without provenance: its window choice's files; an
    ensemble.json without it: its members'. Mutation tried: _earlier_provenance
    returning () for ensembles left the ensemble without a choice."""
    member = swa_dir(tmp_path, "member", _files(data, 0, 1))
    (made,) = stage_files.provenance_of(str(member))
    assert (made.stage, made.choice) == ("swa.average", "window")
    assert made.data_files == (str(data / "validate0.tfrecord"), str(data / "validate1.tfrecord"))
    ensemble = tmp_path / "ensemble"
    ensemble.mkdir()
    payload = json.loads((GOLDEN / "ensemble.json").read_text())
    payload["members"] = [str(member)] + payload["members"][1:]
    (ensemble / "ensemble.json").write_text(json.dumps(payload))
    assert stage_files.provenance_of(str(ensemble)) == (made,)


def test_carry_forward_copies_the_records_and_returns_the_choices(tmp_path, data):
    """bfloat16_patch's one way to hand records on: swa.json and
    finetune.json byte for byte, and every choice behind the input.
    Mutation tried: CARRIED without FinetuneRecord lost the fine-tuning."""
    source = swa_dir(tmp_path, "swa", _files(data, 0))
    tuned = stage_files.provenance_for("segment_finetune.train", "fine-tuning", _files(data, 1))
    stage_files.write_in(str(source), stage_files.FinetuneRecord(source_dir="/x",
                                                                 provenance=(tuned,)))
    out = tmp_path / "out"
    out.mkdir()
    carried = stage_files.carry_forward(str(source), str(out))
    for name in ("swa.json", "finetune.json"):
        assert json.loads((out / name).read_text()) == json.loads((source / name).read_text())
    assert [choice.stage for choice in carried] == ["swa.average", "segment_finetune.train"]


def test_report_refuses_a_window_chosen_on_its_files(tmp_path, data):
    """The video report, before reading any evaluation: one line naming the
    file, the dir and the stage. Mutation tried: build_report without its
    check_held_out call went on to 'no evaluation on ...'."""
    member = swa_dir(tmp_path, "member", _files(data, 0, 1))
    with pytest.raises(UserError) as err:
        report.build_report([str(member)], _files(data, 1, 2, 3))
    line = str(err.value)
    assert line.startswith(f"{data / 'validate1.tfrecord'}: measured here")
    assert f"{member} (the window choice of swa.average)" in line and "\n" not in line
    report.check_held_out(_files(data, 2, 3), [str(member)])     # disjoint: accepted


def test_report_refuses_weights_fitted_on_its_files(tmp_path, data):
    """A weights file whose provenance says it was fitted on the held-out
    files is refused, though its data_pattern says otherwise. Mutation
    tried: _file_provenance reading data_pattern first accepted it."""
    weights = tmp_path / "weights.json"
    fitted = stage_files.provenance_for("stacking.fit", "weights", _files(data, 3))
    stage_files.write_record(str(weights), stage_files.WeightsFile(
        members=("/a", "/b"), weights=(0.5, 0.5), data_pattern=_files(data, 0),
        provenance=(fitted,)))
    with pytest.raises(UserError, match=r"validate3.tfrecord: measured here.*"
                                        r"weights.json \(the weights choice of stacking.fit\)"):
        report.check_held_out(_files(data, 2, 3), ["", str(weights)])


def test_segment_report_refuses_refinement_chosen_on_its_files(data):
    """--fit_data_pattern overlapping --data_pattern: the report's own
    refinement choice would read held-out files. Mutation tried: passing
    () as chosen_on in build_report let it through to the evaluations."""
    with pytest.raises(UserError, match="this report .the refinement choice of "
                                        "ensemble.segment_report"):
        segment_report.build_report(_files(data, 2, 3), refine_top_k=5, refine_model_dir="/m",
                                    fit_data_pattern=_files(data, 1, 2))


def _stop_on_stale(tmp_path, heldout: str, *outputs) -> subprocess.CompletedProcess:
    script = (f'source run_scripts/lib.sh; PYTHON="{sys.executable}"; '
              f'stop_on_stale_choices ensemble.report "$@"')
    return subprocess.run(["bash", "-c", script, "check", heldout, *map(str, outputs)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_rerun_with_moved_fit_files_names_the_stale_outputs(tmp_path, data):
    """The run scripts' check (lib.sh stop_on_stale_choices, the report's
    --check_choices): FIT_FILES 2 -> 1 holds validate1 out, which the window
    and the weights read: one line naming both; outputs chosen on files
    still fitting pass, absent ones are skipped. Mutation tried: the
    check's --model_dirs given only the first dir missed the second."""
    work = tmp_path / "work"
    kept = swa_dir(work / "swa", "kept", _files(data, 0))
    stale = swa_dir(work / "swa", "stale", _files(data, 0, 1))
    weights = work / "stacking_weights.json"
    shutil.copy(GOLDEN / "stacking_weights.json", weights)
    payload = json.loads(weights.read_text())
    payload["data_pattern"] = _files(data, 0, 1)
    weights.write_text(json.dumps(payload))
    line = assert_user_error(_stop_on_stale(tmp_path, _files(data, 1, 2, 3), kept, stale,
                                            weights, work / "absent"),
                             "validate1.tfrecord", f"{stale} (the window choice of swa.average)",
                             f"{weights} (the weights choice of stacking.fit)")
    assert str(kept) + " " not in line
    assert _stop_on_stale(tmp_path, _files(data, 2, 3), kept, stale, weights).returncode == 0


def test_pipeline_checks_its_outputs_before_any_work(tmp_path):
    """pipeline.sh's first call on a rerun is the check, given every output
    that holds a choice. Mutation tried: pipeline.sh without the check
    called training.train first."""
    data = tmp_path / "data"
    data.mkdir()
    for index in range(4):
        (data / f"validate{index}.tfrecord").write_bytes(b"")
    work = tmp_path / "work"
    for path in ("swa/GRUModel", "ensemble_models/GRUModel-bfloat16", "ensembled_models"):
        (work / path).mkdir(parents=True)
    log = tmp_path / "calls.txt"
    recorder = tmp_path / "python"
    recorder.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$*" >> "{log}"\nexit 2\n')
    recorder.chmod(0o755)
    env = {**os.environ, "PYTHON": str(recorder), "DATA_DIR": str(data), "WORK_DIR": str(work),
           "MODELS": "GRUModel"}
    completed = subprocess.run(["bash", str(REPO_ROOT / "run_scripts" / "pipeline.sh")],
                               cwd="/", env=env, capture_output=True, text=True, timeout=60)
    assert completed.returncode == 2
    (call,) = log.read_text().splitlines()
    assert call.startswith("-m ensemble.report --check_choices --data_pattern=") and \
        f"--model_dirs={work}/swa/GRUModel,{work}/ensemble_models/GRUModel-bfloat16," \
        f"{work}/ensembled_models" in call, call


def test_one_output_with_two_stale_choices_is_named_once(data):
    """Mutation tried: one "; "-separated entry per choice named the dir twice."""
    window = stage_files.provenance_for("swa.average", "window", _files(data, 0))
    tuning = stage_files.provenance_for("segment_finetune.train", "fine-tuning", _files(data, 0))
    with pytest.raises(UserError) as err:
        stage_files.check_held_out(_files(data, 0), {"/w/swa/m": (tuning, window)})
    assert str(err.value).count("/w/swa/m") == 1
    assert "/w/swa/m (the fine-tuning choice of segment_finetune.train, the window choice " \
           "of swa.average)" in str(err.value)
