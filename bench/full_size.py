"""Full-size members with random weights and random batches, for the benchmarks."""
from __future__ import annotations

import numpy as np

from training import model_builder
from training.members import Member

FEATURES = 1024 + 128
NUM_CLASSES = 3862


def full_size_member(name: str, dtype: str) -> Member:
    """A member of preset `name` at full size (3862 classes, rgb 1024 + audio
    128) with no checkpoint (initialise its variables at random)."""
    model_flags = model_builder.make_model_flags(name, "rgb,audio", "1024,128", True,
                                                 NUM_CLASSES, "CrossEntropyLoss")
    return Member(model_dir=f"<random {name}>", checkpoint="", model_flags=model_flags,
                        dtype=dtype)


def random_batch(batch_size: int, num_frames: int, seed: int):
    """Frames ~ U[-2, 2] (zero after num_frames) [B, 300, 1152] and num_frames [B]."""
    rng = np.random.RandomState(seed)
    features = np.zeros((batch_size, 300, FEATURES), np.float32)
    features[:, :num_frames] = rng.uniform(-2.0, 2.0, (batch_size, num_frames, FEATURES))
    return features, np.full([batch_size], num_frames, np.int32)
