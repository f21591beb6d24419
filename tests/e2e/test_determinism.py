"""With fixed seeds, two runs of the quick-start pipeline write identical CSVs.

The stages of run_scripts/pipeline.sh (what quickstart.sh runs: train -> SWA
with BN statistics recomputed -> bfloat16 -> tiled ensemble -> CSV), with the
flags it passes, run twice at the same time on the same tiny data into two
work dirs, with two tiny models (Soft-DBoF-4k, which samples frames at random
and is tiled, and GRUModel). Running both at once also varies the thread
timing between them. A second test checks that pipeline.sh passes the seeds.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, TINY_CLASSES
from ensemble.check_submission import check_submission

PIPELINE = REPO_ROOT / "run_scripts" / "pipeline.sh"
MODELS = ("Soft-DBoF-4k", "GRUModel")
# pipeline.sh with TINY=1 passes --size=tiny: the presets' tiny sizes and
# schedule (models/presets.py), with TINY_BATCH, TINY_STEPS and TINY_SAVE on top.
TINY_SIZE = "--size=tiny"


def stage_commands(work, data):
    """The pipeline's commands for one work dir (seeds: the defaults it passes)."""
    train_pattern = f"--train_data_pattern={data / 'train*.tfrecord'}"
    commands, members = [], []
    for model in MODELS:
        train_dir, swa_dir = work / "train" / model, work / "swa" / model
        bf16_dir = work / "ensemble_models" / f"{model}-bfloat16"
        commands += [
            ["training.train", f"--train_dir={train_dir}", train_pattern, f"--model={model}",
             f"--num_classes={TINY_CLASSES}", "--seed=2018", "--swa_tail_steps=0", TINY_SIZE,
             "--batch_size=8", "--max_steps=10", "--save_checkpoint_steps=5"],
            ["swa.average", f"--train_dir={train_dir}", f"--output_dir={swa_dir}",
             "--last_n=2", "--bn_statistics=recompute", train_pattern,
             "--recompute_batches=2", "--seed=2018"],
            ["bfloat16_patch.convert", f"--input_dir={swa_dir}", f"--output_dir={bf16_dir}"]]
        members.append(str(bf16_dir))
    commands += [
        ["ensemble.build", f"--model_dirs={','.join(members)}", "--tile_num=2",
         f"--output_dir={work / 'ensembled_models'}", "--seed=666"],
        ["ensemble.inference", f"--train_dir={work / 'ensembled_models'}",
         f"--input_data_pattern={data / 'test*.tfrecord'}",
         f"--output_file={work / 'submission.csv'}"]]
    return commands


def run_stages(work, data):
    for command in stage_commands(work, data):
        completed = subprocess.run([sys.executable, "-m", *command], cwd=REPO_ROOT,
                                   capture_output=True, text=True, timeout=600)
        if completed.returncode != 0:
            return f"{command[0]} failed:\n{completed.stdout[-2000:]}\n{completed.stderr[-2000:]}"
    return ""


def pipeline_env(work_dir, data_dir, python=sys.executable, **extra):
    return {**os.environ, "PYTHON": str(python), "DATA_DIR": str(data_dir),
            "WORK_DIR": str(work_dir), "MODELS": " ".join(MODELS), "TINY": "1",
            "TINY_BATCH": "8", "TINY_STEPS": "10", "TINY_SAVE": "5", "SWA_LAST_N": "2",
            "SWA_TAIL_STEPS": "0",
            "SWA_BN": "recompute", "SWA_RECOMPUTE_BATCHES": "2",
            "NUM_CLASSES": str(TINY_CLASSES), "TILE_NUM": "2", **extra}


def data_files(work_dir):
    """{relative path: bytes} of every checkpoint data file and the CSV."""
    found = {}
    for root, _, files in os.walk(work_dir):
        for name in files:
            if ".data-" in name or name.endswith(".csv"):
                path = os.path.join(root, name)
                with open(path, "rb") as handle:
                    found[os.path.relpath(path, work_dir)] = handle.read()
    return found


@pytest.mark.slow
def test_two_runs_write_identical_csvs(tiny_data, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        errors = list(pool.map(lambda name: run_stages(tmp_path / name, tiny_data / "frame"),
                               ("a", "b")))
    assert errors == ["", ""], errors
    first, second = data_files(tmp_path / "a"), data_files(tmp_path / "b")
    assert check_submission(str(tmp_path / "a" / "submission.csv"),
                            num_classes=TINY_CLASSES) == 32
    assert first["submission.csv"] == second["submission.csv"]
    # Not only the CSV: every checkpoint on the way is identical too.
    assert sorted(first) == sorted(second) and len(first) >= 10
    assert [name for name in first if first[name] != second[name]] == []


def test_pipeline_passes_the_seeds(tmp_path):
    """SEED goes to training, SWA and evaluation, ENSEMBLE_SEED to the ensemble
    (defaults: the flags' own 2018 and 666)."""
    log = tmp_path / "calls.txt"
    recorder = tmp_path / "python"
    recorder.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$*" >> "{log}"\n')
    recorder.chmod(0o755)
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
    recorder = tmp_path / "python"
    recorder.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$*" >> "{log}"\n')
    recorder.chmod(0o755)
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
    recorder = tmp_path / "python"
    recorder.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$*" >> "{log}"\n')
    recorder.chmod(0o755)
    env = pipeline_env(tmp_path / "work", tmp_path / "data", python=recorder,
                       MODELS="FrameMeanMoeModel GRUModel")
    subprocess.run(["bash", str(PIPELINE)], cwd="/", env=env, check=True,
                   capture_output=True, timeout=60)
    trained = [call for call in log.read_text().splitlines()
               if call.split()[1] == "training.train"]
    assert [next(arg for arg in call.split() if arg.startswith("--model="))
            for call in trained] == ["--model=FrameMeanMoeModel", "--model=GRUModel"]
