"""Shared fixtures: tiny synthetic YT8M data made once per test session."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models import presets
from models.tf_compat import tf
from training import readers
from training.train_config import TrainConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_CLASSES = 10

# The suite's model sizes are the presets' "test" size (models/presets.py):
# hyper-parameter overrides for make_model_flags, and the same as flags for
# the entry points.
TEST_SIZE = "test"


def size_flags(name: str, size: str) -> list:
    """The hyper-parameters of preset `name` at `size` as command-line flags."""
    hparams = presets.get(name).hparams_for(size)
    return [f"--{key}={value}" for key, value in sorted(hparams.items())]


def decode_teacher(example) -> np.ndarray:
    """ensemble_labels of a teacher record as float32 (the inverse of
    training.teacher_records.with_teacher)."""
    raw = example.context.feature["ensemble_labels"].bytes_list.value[0]
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)


def dequantize(q):
    """The starter's utils.Dequantize: x = q * 4/255 + (4/512 - 2) (tensors
    of integers are cast to float32), from the reader's constants."""
    scale, bias = readers.dequantize_constants()
    if isinstance(q, tf.Tensor) and not q.dtype.is_floating:
        q = tf.cast(q, tf.float32)
    return q * scale + bias


TINY_DBOF = presets.get("Soft-DBoF-4k").hparams_for(TEST_SIZE)
TINY_GRU = presets.get("GRUModel").hparams_for(TEST_SIZE)
DBOF_FLAGS = ["--model=Soft-DBoF-4k", *size_flags("Soft-DBoF-4k", TEST_SIZE)]
GRU_FLAGS = ["--model=GRUModel", *size_flags("GRUModel", TEST_SIZE)]


def train_config(**overrides) -> TrainConfig:
    """The trainer's config (training.train.config_from_flags) for tiny runs."""
    config = {"batch_size": 8, "base_learning_rate": 0.01, "learning_rate_decay": 0.9,
              "learning_rate_decay_examples": 4e6, "regularization_penalty": 1.0,
              "clip_gradient_norm": 1.0, "num_epochs": 0, "max_steps": 40,
              "save_checkpoint_steps": 15, "max_to_keep": 10,
              "keep_checkpoint_every_n_hours": 1.0, "num_gpu": 1, "cpu_towers": 1,
              "num_readers": 2, "shuffle_buffer": 64, "seed": 3, "summary_steps": 10,
              "log_steps": 10}
    config.update(overrides)
    return TrainConfig(**config)


# Runs that neither save nor log on the way (only at the end).
QUIET = {"save_checkpoint_steps": 1000, "summary_steps": 1000, "log_steps": 1000}


def real_sample_dir() -> Path | None:
    """../shared/data/yt8m-2018-video-sample when present (tests skip otherwise)."""
    for candidate in (REPO_ROOT.parent / "shared" / "data" / "yt8m-2018-video-sample",
                      Path("/work/shared/data/yt8m-2018-video-sample")):
        if candidate.is_dir():
            return candidate
    return None


def segment_data(tmp_path_factory, name: str, videos_per_shard: int) -> str:
    """Segment-rated videos with tiny_data's prototypes (seed 7, TINY_CLASSES
    classes), 25-40 frames each; -> their file pattern."""
    from training import synthetic_segments

    root = tmp_path_factory.mktemp(name)
    synthetic_segments.write_segment_dataset(str(root), videos_per_shard=videos_per_shard,
                                             num_classes=TINY_CLASSES, seed=7,
                                             min_frames=25, max_frames=40)
    return str(root / "segments" / "validate*.tfrecord")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """train/validate/test splits, 10 classes, 5-20 frames per video."""
    from training import synthetic

    root = tmp_path_factory.mktemp("tiny_data")
    for split, shards, labels in (("train", 2, True), ("validate", 1, True), ("test", 1, False)):
        synthetic.write_dataset(str(root), split=split, num_shards=shards, videos_per_shard=32,
                                num_classes=TINY_CLASSES, seed=7, min_frames=5, max_frames=20,
                                with_labels=labels)
    return root



@pytest.fixture(scope="session")
def unlabelled(tiny_data) -> str:
    """The pattern of tiny_data's unlabelled frame-level test split."""
    return str(tiny_data / "frame" / "test*.tfrecord")

def unlabelled_shards(root: Path, num_shards: int, videos_per_shard: int, seed: int,
                      max_frames: int) -> str:
    """Unlabelled frame-level test files (TINY_CLASSES, 4 frames at least)
    under root; -> their glob."""
    from training import synthetic

    synthetic.write_dataset(str(root), split="test", num_shards=num_shards,
                            videos_per_shard=videos_per_shard, num_classes=TINY_CLASSES,
                            seed=seed, min_frames=4, max_frames=max_frames, with_labels=False,
                            video_level=False)
    return str(root / "frame" / "test*.tfrecord")


def run_module(module: str, *args: str, check: bool = True, env: dict | None = None,
               timeout: int = 600) -> subprocess.CompletedProcess:
    """Runs `python -m module args` from the repo root, capturing output."""
    completed = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=timeout,
                               env={**os.environ, **(env or {})})
    if check and completed.returncode != 0:
        raise AssertionError(f"{module} failed ({completed.returncode}):\n"
                             f"{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}")
    return completed


@pytest.fixture(scope="session")
def tiny_models(tiny_data, tmp_path_factory) -> dict:
    """Tiny Soft-DBoF-4k and GRU train dirs, their SWA and bf16 dirs and a
    2-tile ensemble of the bf16 dirs (tests/support/reliability.py)."""
    from support.reliability import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny_models"), tiny_data)


# The kinds of tests, one folder each. Files with a slow test start first,
# by kind in this order (the end-to-end ones take minutes), so that with
# several workers (run_scripts/test.sh: pytest-xdist, whole files per worker)
# none of them is left running alone at the end.
KINDS = ("e2e", "reliability", "stages", "unit")


def pytest_collection_modifyitems(config, items) -> None:
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}

    def rank(item) -> tuple:
        kind = item.path.parent.name
        return (item.path not in slow_files, KINDS.index(kind) if kind in KINDS else len(KINDS))
    items.sort(key=rank)    # (stable: the order inside a file is kept)
