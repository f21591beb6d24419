"""The six run scripts, end to end on tiny synthetic data.

Each script is run as a user would (DATA_DIR / TRAIN_DIR / PYTHON from the
environment), with extra flags shrinking the model to the preset's "test"
size (models/presets.py). One run trains a few dozen steps (a checkpoint
appears, the loss is finite and falls), a second run of the same command
resumes from that checkpoint. The scripts pass only the preset name; the
original schedule comes from the preset's record through training.train.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_ROOT, TEST_SIZE, size_flags
from models import presets

pytestmark = pytest.mark.slow

SCRIPTS = REPO_ROOT / "run_scripts"

TINY_FLAGS = {name: size_flags(name, TEST_SIZE) for name in presets.PRESET_NAMES}
COMMON_FLAGS = ["--num_classes=10", "--batch_size=8", "--base_learning_rate=0.01",
                "--log_steps=1", "--summary_steps=1000", "--num_readers=1",
                "--shuffle_buffer=64"]
FIRST_STEPS = 30
RESUMED_STEPS = 34
STEP_LINE = re.compile(r"step\s+(\d+) \| loss\s+(\S+)")


@pytest.fixture(scope="module")
def synthetic_frames(tmp_path_factory) -> Path:
    """The documented quick-start data: python -m training.synthetic ..."""
    output = tmp_path_factory.mktemp("synthetic")
    subprocess.run([sys.executable, "-m", "training.synthetic", f"--output_dir={output}",
                    "--num_classes=10", "--num_shards=1", "--videos_per_shard=16",
                    "--max_frames=20", "--min_frames=5"],
                   cwd=REPO_ROOT, check=True, capture_output=True, timeout=300)
    frames = output / "frame"
    assert list(frames.glob("train*.tfrecord"))
    return frames


def run_script(name: str, data_dir: Path, train_dir: Path, *args: str):
    env = {**os.environ, "DATA_DIR": str(data_dir), "TRAIN_DIR": str(train_dir),
           "PYTHON": sys.executable}
    # Run from elsewhere: the script must find the repository itself. (A preset
    # with only its record has no script: train_model.sh, as pipeline.sh does.)
    script = SCRIPTS / f"{name}.sh"
    command = [str(script)] if script.exists() else [str(SCRIPTS / "train_model.sh"), name]
    completed = subprocess.run(["bash", *command, *args], cwd="/",
                               env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, (completed.stdout[-3000:], completed.stderr[-3000:])
    losses = {int(step): float(loss) for step, loss in STEP_LINE.findall(completed.stdout)}
    return completed.stdout, losses


# Parses each script's arguments with training.train's own flags (in a fresh
# process: absl's global FLAGS can define training.train's flags only once)
# and prints the run config that training.train resolves from them.
RESOLVE_CONFIG = """
import json, sys
from absl import flags
from training import train
train.define_flags()
configs = {}
for name, args in json.loads(sys.stdin.read()).items():
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["training.train", *args])
    configs[name] = train.config_from_flags().to_json()
print(json.dumps(configs))
"""


def test_scripts_pass_the_original_hyper_parameters(tmp_path):
    """Runs each script with a stand-in interpreter that records its arguments;
    the original schedule is the preset's record, which training.train applies.
    Mutation tried: train_model.sh with the frame flags hard-coded again
    (--frame_features=True, no --record_kind) fails the flag check."""
    recorder = tmp_path / "record_args"
    recorder.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    recorder.chmod(0o755)
    expected = {"GRUModel": ("128", "0.9", "300000"),
                "nonlocal-NetVLADModel": ("80", "0.8", "700000"),
                "nonlocal-LightNetVLADModel": ("80", "0.8", "700000"),
                "nonlocal-earlyNetVLADModel": ("80", "0.8", "700000"),
                "Soft-DBoF-4k": ("80", "0.9", "800000"),
                "Soft-DBoF-8k": ("80", "0.9", "800000")}
    recorded = {}
    for name, (batch, decay, steps) in expected.items():
        env = {**os.environ, "PYTHON": str(recorder), "DATA_DIR": "/data", "TRAIN_DIR": "/runs/x"}
        env.pop("CUDA_VISIBLE_DEVICES", None)
        completed = subprocess.run([str(SCRIPTS / f"{name}.sh"), "--extra=1"], env=env,
                                   capture_output=True, text=True, check=True)
        args = completed.stdout.splitlines()
        assert args[:2] == ["-m", "training.train"]
        for flag in (f"--model={name}", "--record_kind=frame",
                     "--train_dir=/runs/x", "--train_data_pattern=/data/train*.tfrecord"):
            assert flag in args, (name, flag)
        assert args[-1] == "--extra=1"  # user flags come last, so they override
        recorded[name] = args[2:-1]
        # The original run script's numbers are the preset's schedule.
        schedule = presets.get(name).schedule
        assert (str(schedule.batch_size), str(schedule.learning_rate_decay),
                str(schedule.max_steps)) == (batch, decay, steps), name
        assert schedule.base_learning_rate == 2e-4
        assert schedule.learning_rate_decay_examples == 4000000

    # ... and what training.train runs with, given only the scripts' arguments.
    resolved = subprocess.run([sys.executable, "-c", RESOLVE_CONFIG], cwd=REPO_ROOT,
                              input=json.dumps(recorded), capture_output=True, text=True,
                              timeout=300)
    assert resolved.returncode == 0, resolved.stderr[-3000:]
    configs = json.loads(resolved.stdout.strip().splitlines()[-1])
    for name, (batch, decay, steps) in expected.items():
        config = configs[name]
        assert (str(config["batch_size"]), str(config["learning_rate_decay"]),
                str(config["max_steps"])) == (batch, decay, steps), name
        assert config["base_learning_rate"] == 2e-4
        assert config["learning_rate_decay_examples"] == 4000000
        assert config["num_epochs"] == 100


@pytest.mark.parametrize("name", list(TINY_FLAGS))
def test_script_trains_and_resumes(name, synthetic_frames, tmp_path):
    train_dir = tmp_path / name
    flags = [*COMMON_FLAGS, *TINY_FLAGS[name]]
    _, losses = run_script(name, synthetic_frames, train_dir, *flags,
                           f"--max_steps={FIRST_STEPS}")
    assert (train_dir / f"model.ckpt-{FIRST_STEPS}.index").exists()
    model_flags = json.loads((train_dir / "model_flags.json").read_text())
    assert model_flags["model"] == name and model_flags["num_classes"] == 10
    assert model_flags["feature_sizes"] == "1024,128"
    tiny = dict(flag[2:].split("=") for flag in TINY_FLAGS[name])
    for key, value in tiny.items():
        assert str(model_flags["model_hparams"][key]) == value

    values = np.array([losses[step] for step in sorted(losses)])
    assert sorted(losses) == list(range(1, FIRST_STEPS + 1))
    assert np.isfinite(values).all()
    assert values[-5:].mean() < 0.8 * values[:5].mean(), values

    output, resumed = run_script(name, synthetic_frames, train_dir, *flags,
                                 f"--max_steps={RESUMED_STEPS}")
    assert f"model.ckpt-{FIRST_STEPS}" in output and "resumed" in output
    assert sorted(resumed) == list(range(FIRST_STEPS + 1, RESUMED_STEPS + 1))
    assert (train_dir / f"model.ckpt-{RESUMED_STEPS}.index").exists()
    # The resumed run starts from the trained weights, not from scratch.
    assert np.mean(list(resumed.values())) < 0.8 * values[:5].mean()


def test_quickstart_writes_the_splits_side_by_side_and_stops_on_a_failure(tmp_path):
    """quickstart.sh starts the three synthetic splits and the two 2019
    segment ones (rated validation, unrated test) together (each process spends seconds importing
    TensorFlow) and stops, before the
    pipeline, when one of them fails. Its Python is a recorder (a ./.venv
    whose requirements stamp is current, so setup_env.sh installs nothing).
    Mutation: a bare `wait` (which returns 0 whatever the jobs returned)
    goes on into pipeline.sh, which asks models.presets for the ensemble."""
    venv, calls = tmp_path / "venv", tmp_path / "calls.log"
    (venv / "bin").mkdir(parents=True)
    requirements = b"".join((REPO_ROOT / name).read_bytes()
                            for name in ("requirements.txt", "requirements-dev.txt"))
    (venv / ".requirements.sha256").write_text(hashlib.sha256(requirements).hexdigest() + "\n")
    recorder = venv / "bin" / "python"
    recorder.write_text(f"""#!/usr/bin/env bash
split=""
for arg in "$@"; do [[ "$arg" == --split=* ]] && split=${{arg#--split=}}; done
echo "start $2 $split" >> {calls}
sleep 1
echo "end $2 $split" >> {calls}
[[ "$split" != validate ]]
""")
    recorder.chmod(0o755)
    completed = subprocess.run(["bash", str(SCRIPTS / "quickstart.sh")], cwd="/",
                               env={**os.environ, "VENV": str(venv),
                                    "WORK_DIR": str(tmp_path / "work")},
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode != 0, completed.stdout
    lines = calls.read_text().splitlines()
    assert sorted(lines[:5]) == [f"start training.synthetic {split}"
                                 for split in ("test", "train", "validate")] + [
        f"start training.synthetic_segments {split}" for split in ("test", "validate")], lines
    assert not any("models.presets" in line for line in lines), lines
