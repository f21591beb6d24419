"""The training run's configuration: one frozen record, TrainConfig.

A TrainConfig is the schedule (models.presets.Schedule: batch size, learning
rate and its decay, steps, the averaging tail) plus the run settings (epochs,
towers, readers, checkpoints kept, seed, ...). training.train builds it once
from the flags (config_from_flags); the trainer, the training graph and the
distributed trainer only read it. Its defaults are the trainer's flag
defaults with the generic schedule (a model class given by name), so
``TrainConfig(batch_size=8, max_steps=40)`` is a complete config.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

from models import presets
from training.cli import UserError

JsonScalar = Optional[Union[bool, int, float, str]]


@dataclasses.dataclass(frozen=True)
class TrainConfig(presets.Schedule):
    """The schedule's fields (presets.Schedule) and the run settings below.

    num_epochs 0: no limit; clip_gradient_norm 0: no clipping; matmul_dtype:
    float32 or bfloat16 (training.train_graph.MATMUL_DTYPES); compression:
    auto, none, gzip or zlib (training.readers). Checked by
    training.train.config_from_flags and training.train_graph."""
    regularization_penalty: float = 1.0
    clip_gradient_norm: float = 1.0
    num_epochs: int = 100
    max_to_keep: int = 10
    keep_checkpoint_every_n_hours: float = 1.0
    num_gpu: int = 1
    cpu_towers: int = 1
    num_readers: int = 8
    shuffle_buffer: int = 2048
    seed: int = 2018
    summary_steps: int = 10
    skip_corrupt_records: bool = False
    matmul_dtype: str = "float32"
    compression: str = "auto"

    def to_json(self) -> Dict[str, JsonScalar]:
        """{field: value}, every field (json.dumps-able)."""
        return dataclasses.asdict(self)


def check_positive(values: Mapping[str, Any], keys: Sequence[str]) -> None:
    """The counts of a run's settings (flag name: value) that must be
    positive: `--<key>: must be positive, got <value>` (a UserError) for the
    first of `keys` that is set and is not. Both trainers' config_from_flags."""
    for key in keys:
        value = values[key]
        if value is not None and value <= 0:
            raise UserError(f"--{key}: must be positive, got {value}")


# The schedule's fields (a preset's fill those left unset), then every field.
SCHEDULE_KEYS: Tuple[str, ...] = tuple(f.name for f in dataclasses.fields(presets.Schedule))
CONFIG_KEYS: Tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrainConfig))
