"""With fixed seeds, two runs of the quick-start pipeline write identical CSVs.

The stages of run_scripts/pipeline.sh (what quickstart.sh runs: train -> SWA
with BN statistics recomputed -> bfloat16 -> tiled ensemble -> CSV), with the
flags it passes, run twice at the same time on the same tiny data into two
work dirs, with two tiny models (Soft-DBoF-4k, which samples frames at random
and is tiled, and GRUModel). Running both at once also varies the thread
timing between them. (That pipeline.sh passes the seeds: test_pipeline_script.py.)
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
