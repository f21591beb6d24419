"""run_scripts/pipeline.sh itself, with a PYTHON that records its calls (or
fails, or hangs) instead of running them: the flags it passes, the scripts it
picks, and its background jobs (stopped on exit; a failure stops the pipeline
before the ensemble, naming its log)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from conftest import REPO_ROOT, TINY_CLASSES

PIPELINE = REPO_ROOT / "run_scripts" / "pipeline.sh"
MODELS = ("Soft-DBoF-4k", "GRUModel")


def pipeline_env(work_dir, data_dir, python=sys.executable, **extra):
    return {**os.environ, "PYTHON": str(python), "DATA_DIR": str(data_dir),
            "WORK_DIR": str(work_dir), "MODELS": " ".join(MODELS), "TINY": "1",
            "TINY_BATCH": "8", "TINY_STEPS": "10", "TINY_SAVE": "5", "SWA_LAST_N": "2",
            "SWA_TAIL_STEPS": "0",
            "SWA_BN": "recompute", "SWA_RECOMPUTE_BATCHES": "2",
            "NUM_CLASSES": str(TINY_CLASSES), "TILE_NUM": "2", **extra}


def fake_python(tmp_path, log, body: str = ""):
    """An executable that appends its arguments to `log`, then runs the bash
    `body` ($2 is the module it was asked to run)."""
    script = tmp_path / "python"
    script.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$*" >> "{log}"\n{body}\n')
    script.chmod(0o755)
    return script


def test_pipeline_passes_the_seeds(tmp_path):
    """SEED goes to training, SWA and evaluation, ENSEMBLE_SEED to the ensemble
    (defaults: the flags' own 2018 and 666)."""
    log = tmp_path / "calls.txt"
    recorder = fake_python(tmp_path, log)
    for seeds, (seed, ensemble_seed) in (({}, ("2018", "666")),
                                         ({"SEED": "7", "ENSEMBLE_SEED": "9"}, ("7", "9"))):
        log.write_text("")
        env = pipeline_env(tmp_path / "work", tmp_path / "data", python=recorder, **seeds)
        subprocess.run(["bash", str(PIPELINE)], cwd="/", env=env, check=True,
                       capture_output=True, timeout=60)
        calls = log.read_text().splitlines()
        by_stage = {}
        for call in calls:
            by_stage.setdefault(call.split()[1], []).append(call)
        assert len(by_stage["training.train"]) == 2 and len(by_stage["swa.average"]) == 2
        for stage in ("training.train", "swa.average", "training.eval"):
            for call in by_stage[stage]:
                assert f"--seed={seed}" in call.split(), call
        assert f"--seed={ensemble_seed}" in by_stage["ensemble.build"][0].split()


def test_pipeline_passes_top_k(tmp_path):
    """TOP_K (default 20, training.submission.DEFAULT_TOP_K) goes to every
    stage that takes a top-k. (Mutation: drop --top_k from ensemble.inference's
    call in pipeline.sh -> this fails.)"""
    from training.submission import DEFAULT_TOP_K
    log = tmp_path / "calls.txt"
    recorder = fake_python(tmp_path, log)
    stages = ("training.eval", "ensemble.build", "stacking.fit", "ensemble.inference",
              "ensemble.check_submission")
    (tmp_path / "data").mkdir()
    for name in ("validate0.tfrecord", "validate1.tfrecord"):  # STACKING=1 splits them
        (tmp_path / "data" / name).write_bytes(b"")
    for extra, top_k in (({}, str(DEFAULT_TOP_K)), ({"TOP_K": "5"}, "5")):
        log.write_text("")
        env = pipeline_env(tmp_path / "work", tmp_path / "data", python=recorder,
                           STACKING="1", **extra)
        subprocess.run(["bash", str(PIPELINE)], cwd="/", env=env, check=True,
                       capture_output=True, timeout=60)
        calls = [call for call in log.read_text().splitlines()
                 if call.split()[1] in stages]
        assert {call.split()[1] for call in calls} == set(stages)
        for call in calls:
            assert f"--top_k={top_k}" in call.split(), call


def test_pipeline_trains_a_preset_without_its_own_script(tmp_path):
    """A preset with only its record (no run_scripts/<name>.sh) is trained
    through train_model.sh. (Mutation: pipeline.sh always calls
    run_scripts/$model.sh -> this fails.)"""
    log = tmp_path / "calls.txt"
    recorder = fake_python(tmp_path, log)
    env = pipeline_env(tmp_path / "work", tmp_path / "data", python=recorder,
                       MODELS="FrameMeanMoeModel GRUModel")
    subprocess.run(["bash", str(PIPELINE)], cwd="/", env=env, check=True,
                   capture_output=True, timeout=60)
    trained = [call for call in log.read_text().splitlines()
               if call.split()[1] == "training.train"]
    assert [next(arg for arg in call.split() if arg.startswith("--model="))
            for call in trained] == ["--model=FrameMeanMoeModel", "--model=GRUModel"]


def test_a_failed_background_stage_stops_the_pipeline_before_the_ensemble(tmp_path):
    """SWA runs in the background beside the next model's training; when it
    fails, the pipeline stops before the ensemble with the log's name and its
    end. (Mutation: no wait_background before ensemble.build -> the ensemble
    is built from a member that was never averaged.)"""
    log = tmp_path / "calls.txt"
    recorder = fake_python(tmp_path, log,
                           'if [[ $2 == swa.average ]]; then echo "swa broke"; exit 1; fi')
    completed = subprocess.run(["bash", str(PIPELINE)], cwd="/", capture_output=True, text=True,
                               env=pipeline_env(tmp_path / "work", tmp_path / "data",
                                                python=recorder, SWA_LAST_N="2"), timeout=60)
    assert completed.returncode == 1
    failed_log = tmp_path / "work" / "logs" / f"{MODELS[0]}-eval.log"
    assert f"error: a background stage failed; its log {failed_log} ends with:" in completed.stderr
    assert "swa broke" in completed.stderr
    stages = [call.split()[1] for call in log.read_text().splitlines()]
    assert stages.count("training.train") == 2 and "ensemble.build" not in stages


def test_on_exit_the_background_python_stops(tmp_path):
    """When the pipeline stops (here: the second model's training fails), the
    Python process of a background job stops with it, not only the job's
    shell. (Mutation: kill only the job's pid on exit -> the SWA process lives
    on.)"""
    log, pid_file = tmp_path / "calls.txt", tmp_path / "swa.pid"
    recorder = fake_python(tmp_path, log, f"""
if [[ $2 == swa.average ]]; then echo $$ > "{pid_file}"; exec sleep 60; fi
if [[ $2 == training.train && "$*" == *--model={MODELS[1]}* ]]; then
  while [[ ! -s "{pid_file}" ]]; do sleep 0.1; done
  exit 3
fi""")
    completed = subprocess.run(["bash", str(PIPELINE)], cwd="/", capture_output=True, text=True,
                               env=pipeline_env(tmp_path / "work", tmp_path / "data",
                                                python=recorder, SWA_LAST_N="2"), timeout=60)
    assert completed.returncode == 3
    swa_pid = int(pid_file.read_text())
    for _ in range(100):        # SIGTERM is delivered at once; allow the exit a moment
        if not process_alive(swa_pid):
            break
        time.sleep(0.1)
    assert not process_alive(swa_pid)


def process_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie counts as stopped)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_the_ensemble_tail_runs_side_by_side_and_waits_for_its_inputs(tmp_path):
    """The uniform ensemble is built beside the stacking, and the CSV written
    beside the report; the choice waits for the uniform ensemble and the CSV
    check for the CSV. (Mutations: no wait before the choice -> it reads an
    ensemble not yet built; none before the check -> it checks a CSV not yet
    written.)"""
    log = tmp_path / "calls.txt"
    recorder = fake_python(tmp_path, log, f"""
if [[ $2 == ensemble.build && "$*" != *--weights_file* ]]; then sleep 2; echo built >> "{log}"; fi
if [[ $2 == ensemble.inference ]]; then sleep 2; echo wrote >> "{log}"; fi""")
    (tmp_path / "data").mkdir()
    for name in ("validate0.tfrecord", "validate1.tfrecord"):  # STACKING=1 splits them
        (tmp_path / "data" / name).write_bytes(b"")
    subprocess.run(["bash", str(PIPELINE)], cwd="/", check=True, capture_output=True,
                   env=pipeline_env(tmp_path / "work", tmp_path / "data", python=recorder,
                                    STACKING="1"), timeout=60)
    calls = log.read_text().splitlines()

    def position(start: str) -> int:
        return next(i for i, call in enumerate(calls) if call.startswith(start))

    assert position("-m stacking.fit") < position("built") < position("-m ensemble.report --choose")
    assert position("-m ensemble.report --data_pattern") < position("wrote") \
        < position("-m ensemble.check_submission")
