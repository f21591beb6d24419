"""training.model_flags.ModelFlags: model_flags.json as a record.

The three files below are verbatim from a quick start run before ModelFlags
existed (train dir, bf16 dir, ensemble dir): they must still read, and write
back byte for byte."""
from __future__ import annotations

import dataclasses
import json
import os

import pytest

from training import checkpoints, model_builder
from training import model_flags as model_flags_module
from training import train_dir as train_dirs
from training.cli import UserError
from training.model_flags import ModelFlags

TRAIN_DIR_FILE = """{
  "feature_names": "rgb,audio",
  "feature_sizes": "1024,128",
  "frame_features": true,
  "label_loss": "CrossEntropyLoss",
  "model": "Soft-DBoF-4k",
  "model_hparams": {
    "audio_cluster_divisor": 8,
    "cluster_size": 1024,
    "frame_sampling": "random",
    "frame_sampling_seed": -1,
    "gating": false,
    "hidden_size": 80,
    "moe_l2": 1e-08,
    "moe_num_mixtures": 2,
    "moe_prob_gating": false,
    "num_samples": 30
  },
  "num_classes": 200
}
"""
BF16_DIR_FILE = """{
  "checkpoint_dtype": "bfloat16",
  "feature_names": "rgb,audio",
  "feature_sizes": "1024,128",
  "frame_features": true,
  "label_loss": "CrossEntropyLoss",
  "model": "GRUModel",
  "model_hparams": {
    "frame_sampling": "none",
    "frame_sampling_seed": -1,
    "gru_cells": 64,
    "gru_layers": 2,
    "moe_l2": 1e-08,
    "moe_num_mixtures": 2,
    "moe_prob_gating": false,
    "num_samples": 30
  },
  "num_classes": 200
}
"""
ENSEMBLE_DIR_FILE = """{
  "feature_names": "rgb,audio",
  "feature_sizes": "1024,128",
  "frame_features": true,
  "label_loss": "CrossEntropyLoss",
  "model": "ensemble",
  "num_classes": 200
}
"""


def write_file(directory, text: str) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(str(directory), checkpoints.MODEL_FLAGS_FILE)
    with open(path, "w") as handle:
        handle.write(text)
    return path


@pytest.mark.parametrize("text", [TRAIN_DIR_FILE, BF16_DIR_FILE, ENSEMBLE_DIR_FILE],
                         ids=["train", "bf16", "ensemble"])
def test_existing_files_read_and_write_back_byte_identical(text, tmp_path):
    """Mutation: to_json writing every field (model_hparams and
    checkpoint_dtype as null when unset) fails the train and ensemble cases."""
    write_file(tmp_path / "old", text)
    flags = checkpoints.read_model_flags(str(tmp_path / "old"))
    checkpoints.write_model_flags(str(tmp_path / "new"), flags)
    assert (tmp_path / "new" / checkpoints.MODEL_FLAGS_FILE).read_text() == text
    assert checkpoints.read_model_flags(str(tmp_path / "new")) == flags


def test_fields_of_an_existing_file():
    """The record's fields are the file's keys, with their JSON kinds.
    Mutation: feature_size_list returning the strings fails here."""
    flags = ModelFlags.from_json(json.loads(BF16_DIR_FILE), "x.json")
    assert (flags.model, flags.num_classes, flags.frame_features) == ("GRUModel", 200, True)
    assert flags.feature_name_list() == ["rgb", "audio"]
    assert flags.feature_size_list() == [1024, 128]
    assert flags.checkpoint_dtype == "bfloat16" and flags.hparams()["gru_cells"] == 64
    assert set(model_flags_module.IDENTITY_KEYS) == set(model_flags_module.ALL_KEYS) - {
        "checkpoint_dtype"}


def test_make_model_flags_round_trips(tmp_path):
    """What the trainer writes reads back equal. Mutation: make_model_flags
    storing feature_sizes as a list fails here (from_json refuses it)."""
    flags = model_builder.make_model_flags("GRUModel", "rgb, audio", "1024,128", True, 10,
                                           "CrossEntropyLoss", size="test")
    checkpoints.write_model_flags(str(tmp_path), flags)
    assert checkpoints.read_model_flags(str(tmp_path)) == flags


BAD_FILES = {
    "missing num_classes": ('{"model": "GRUModel", "feature_names": "rgb", '
                            '"feature_sizes": "1024", "frame_features": true}',
                            "has no 'num_classes' key"),
    "missing model": ('{"num_classes": 10}', "has no 'model' key"),
    "unknown key": ('{"model": "GRUModel", "feature_names": "rgb", "feature_sizes": "1024", '
                    '"frame_features": true, "num_classes": 10, "num_clases": 10}',
                    "unknown key(s) 'num_clases'"),
    "wrong kind": ('{"model": "GRUModel", "feature_names": "rgb", "feature_sizes": "1024", '
                   '"frame_features": "yes", "num_classes": 10}',
                   "'frame_features' must be true or false"),
    "a boolean count": ('{"model": "GRUModel", "feature_names": "rgb", "feature_sizes": "1024", '
                        '"frame_features": true, "num_classes": true}',
                        "'num_classes' must be an integer"),
    "sizes": ('{"model": "GRUModel", "feature_names": "rgb,audio", "feature_sizes": "1024", '
              '"frame_features": true, "num_classes": 10}', "'feature_names' has 2 entries"),
    "a list": ('["model"]', "expected a JSON object of model flags, found a list"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_is_one_line_naming_it(case, tmp_path):
    """Mutation: from_json without the unknown-key check (the key silently
    dropped) fails the "unknown key" case; without the kind check, the
    "wrong kind" and "a boolean count" cases."""
    text, says = BAD_FILES[case]
    path = write_file(tmp_path, text)
    with pytest.raises(UserError) as caught:
        checkpoints.read_model_flags(str(tmp_path))
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and says in message and "\n" not in message


def test_frozen_and_resume_identity(tmp_path):
    """A record cannot change under a stage; resuming with another
    hyper-parameter names it. Mutation: mismatched_keys comparing only
    "model" fails here."""
    flags = model_builder.make_model_flags("GRUModel", "rgb,audio", "1024,128", True, 10,
                                           "CrossEntropyLoss", size="test")
    with pytest.raises(dataclasses.FrozenInstanceError):
        flags.model = "x"  # type: ignore[misc]
    train_dirs.prepare_train_dir(str(tmp_path), flags, start_new=False)
    other = dataclasses.replace(flags, model_hparams={**flags.hparams(), "gru_cells": 9})
    with pytest.raises(UserError, match="holds a different model .model_hparams:"):
        train_dirs.prepare_train_dir(str(tmp_path), other, start_new=False)
    # The storage marker is not part of the identity.
    marked = dataclasses.replace(flags, checkpoint_dtype="bfloat16")
    assert model_flags_module.mismatched_keys(flags, marked) == []
