"""run_scripts/prediction2tfrecord.sh, distillation.sh and stacking.sh on tiny data,
after a (tiny) main pipeline: teacher records -> distilled student -> stacking weights."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from conftest import QUIET, REPO_ROOT, TINY_CLASSES, train_config
from training import checkpoints, model_builder
from training import train as trainer
from training import train_dir as train_dirs

pytestmark = pytest.mark.slow

SCRIPTS = REPO_ROOT / "run_scripts"


def run_script(name, env, *args, cwd="/"):
    completed = subprocess.run(["bash", str(SCRIPTS / name), *args], cwd=cwd,
                               env={**os.environ, "PYTHON": sys.executable, **env},
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, (completed.stdout[-3000:], completed.stderr[-3000:])
    return completed.stdout


def test_scripts_after_the_pipeline(tiny_data, tmp_path):
    from bfloat16_patch import convert

    work = tmp_path / "work"
    flags = model_builder.make_model_flags("FrameMeanMoeModel", "rgb,audio", "1024,128", True,
                                           TINY_CLASSES, "CrossEntropyLoss", {})
    config = train_config(**QUIET, base_learning_rate=0.02, max_steps=30)
    # What the pipeline leaves behind: <model>-bfloat16 dirs (the teacher here is one of them).
    for name, steps in (("A", 30), ("B", 10)):
        train_dir = str(work / "train" / name)
        train_dirs.prepare_train_dir(train_dir, flags, start_new=False)
        trainer.train(flags, train_dir, str(tiny_data / "frame" / "train*.tfrecord"),
                      dataclasses.replace(config, max_steps=steps), log=lambda _: None)
        convert.convert_checkpoint(train_dir, str(work / "ensemble_models" / f"{name}-bfloat16"),
                                   log=None)
    env = {"DATA_DIR": str(tiny_data / "frame"), "WORK_DIR": str(work),
           "NUM_CLASSES": str(TINY_CLASSES)}

    out = run_script("prediction2tfrecord.sh",
                     {**env, "TEACHER_DIR": str(work / "ensemble_models" / "A-bfloat16")})
    assert "done: 64 videos in 2 files" in out
    assert sorted(os.listdir(work / "teacher_records")) == ["train00.tfrecord",
                                                            "train01.tfrecord"]

    out = run_script("distillation.sh",
                     {**env, "MODEL": "FrameMeanMoeModel", "DISTILL_PROB": "0.7",
                      "WARM_START": str(work / "ensemble_models" / "A-bfloat16")},
                     "--max_steps=4", "--batch_size=8", "--num_readers=1", "--log_steps=2",
                     "--shuffle_buffer=16")
    assert "p=0.7" in out and "warm start: loaded" in out
    student = str(work / "distill" / "FrameMeanMoeModel")
    assert checkpoints.latest_checkpoint(student).endswith("model.ckpt-4")

    # Relative paths are resolved from the caller's directory.
    out = run_script("stacking.sh", {**env, "WORK_DIR": "work", "MAX_VIDEOS": "24"},
                     "--batch_size=8", cwd=str(tmp_path))
    assert "stacked weights" in out
    with open(work / "stacking_weights.json") as handle:
        payload = json.load(handle)
    assert payload["members"] == [str(work / "ensemble_models" / "A-bfloat16"),
                                  str(work / "ensemble_models" / "B-bfloat16")]
    assert payload["num_videos"] == 24
    assert sum(payload["weights"]) == pytest.approx(1.0)
