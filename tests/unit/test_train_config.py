"""training.train_config.TrainConfig: the trainer's one configuration record."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from models import presets
from training import train_config
from training.cli import UserError
from training.train_config import TrainConfig

# Prints the config that training.train resolves from its default flags.
DEFAULT_CONFIG = """
import json
from absl import flags
from training import train
train.define_flags()
flags.FLAGS(["training.train", "--model=FrameMeanMoeModel"])
print(json.dumps(train.config_from_flags().to_json()))
"""


@pytest.mark.slow
def test_defaults_are_the_trainer_flag_defaults():
    """TrainConfig() is what `python -m training.train` runs with for a class
    name and no other flag. Mutation: TrainConfig.num_readers = 4 (the flag
    says 8) fails here."""
    completed = subprocess.run([sys.executable, "-c", DEFAULT_CONFIG], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    resolved = json.loads(completed.stdout.strip().splitlines()[-1])
    assert resolved == TrainConfig().to_json()


def test_json_round_trip_and_keys():
    """Every field survives to_json -> json -> TrainConfig; the schedule's
    fields come first. Mutation: to_json dropping `compression` fails here."""
    config = TrainConfig(batch_size=8, max_steps=40, swa_tail_steps=10, swa_learning_rate=0.5,
                         matmul_dtype="bfloat16", compression="gzip", seed=3)
    payload = json.loads(json.dumps(config.to_json()))
    assert set(payload) == set(train_config.CONFIG_KEYS)
    assert TrainConfig(**payload) == config
    schedule_keys = tuple(f.name for f in dataclasses.fields(presets.Schedule))
    assert train_config.CONFIG_KEYS[:len(schedule_keys)] == schedule_keys


def test_frozen_and_unknown_keys_refused():
    """A config cannot change under the trainer, and a misspelt setting is an
    error, not a silently ignored key. Mutation: frozen=False fails (at import:
    a non-frozen class cannot extend the frozen Schedule)."""
    config = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.batch_size = 3  # type: ignore[misc]
    with pytest.raises(TypeError, match="batch_sise"):
        TrainConfig(batch_sise=3)  # type: ignore[call-arg]
    assert dataclasses.replace(config, batch_size=3).batch_size == 3


# Prints the one line each trainer's config_from_flags gives for a count of 0.
ZERO_COUNT = """
import sys
from absl import flags
from training.cli import UserError
module = __import__(sys.argv[1], fromlist=["define_flags"])
module.define_flags()
flags.FLAGS(sys.argv[1:])
try:
    module.config_from_flags()
except UserError as err:
    print(err)
"""


@pytest.mark.slow
def test_both_trainers_refuse_a_zero_count_alike():
    """training.train and segment_finetune.train check their counts in one
    place (train_config.check_positive), with the same words. Mutation
    tried: training.train's own loop again (its "--key must be positive",
    segment_finetune's "--key: must be positive") fails the comparison."""
    with pytest.raises(UserError, match=r"^--log_steps: must be positive, got 0$"):
        train_config.check_positive({"batch_size": None, "log_steps": 0},
                                    ("batch_size", "log_steps"))
    lines = []
    for module, *args in (("training.train", "--model=FrameMeanMoeModel"),
                          ("segment_finetune.train",)):
        completed = subprocess.run([sys.executable, "-c", ZERO_COUNT, module, *args,
                                    "--log_steps=0"],
                                   cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
        assert completed.returncode == 0, completed.stderr[-3000:]
        lines.append(completed.stdout.strip().splitlines()[-1])
    assert lines == ["--log_steps: must be positive, got 0"] * 2
