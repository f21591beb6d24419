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
