"""The six final models as records: one place for everything known about a preset.

A preset is a model class (models.frame_models) plus:
  * its hyper-parameter overrides (none today: the classes' DEFAULTS are the
    original values);
  * the training schedule of the original run script (docs/original.md 1.9);
  * smaller sizes for runs that are not the real thing: ``tiny`` (the quick
    start and ``pipeline.sh TINY=1``: minutes on a CPU) and ``test`` (the
    smallest models that still exercise every code path, for the test suite);
  * its full-size parameter counts (docs/original.md 1.10), which the tests
    check the built graph against.

``ENSEMBLE`` lists the presets of the ensemble, in pipeline order (what
``python -m models.presets`` prints for pipeline.sh MODELS): a new preset
joins it only when added there. A name or alias used twice is an error at
import. Adding a preset: docs/architecture.md "Presets".

``training.train --model=<preset> --size=tiny`` applies a size; the run
scripts pass only the preset name, so every number below has this one home.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

SIZES = ("full", "tiny", "test")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Training schedule: Adam at base_learning_rate, multiplied by
    learning_rate_decay every learning_rate_decay_examples examples, until
    max_steps; then an optional averaging tail (docs/training.md "Checkpoint
    averaging (SWA)"): swa_tail_steps more steps at the constant
    swa_learning_rate (None: the rate reached at max_steps), with a checkpoint
    every swa_save_steps steps for swa.average to average."""
    batch_size: int = 80
    base_learning_rate: float = 2e-4
    learning_rate_decay: float = 0.8
    learning_rate_decay_examples: float = 4000000
    max_steps: Optional[int] = None
    save_checkpoint_steps: int = 10000
    log_steps: int = 10
    swa_tail_steps: int = 0
    swa_learning_rate: Optional[float] = None
    swa_save_steps: Optional[int] = None


# The generic schedule: a model class given by name rather than by preset.
DEFAULT_SCHEDULE = Schedule()

# What a tiny run changes in any schedule (larger rate: 200 steps must learn),
# with an averaging tail of 200 more steps at that rate and a checkpoint every
# 10: at 400 steps the tiny models still improve, so only short windows (2-4
# checkpoints) average noise away faster than they lag (docs/training.md
# "Checkpoint averaging (SWA)"; swa.average --choose_window_on picks the window).
_TINY_RUN = {"batch_size": 32, "base_learning_rate": 2e-3, "max_steps": 200,
             "save_checkpoint_steps": 50, "log_steps": 50, "swa_tail_steps": 200,
             "swa_save_steps": 10}
_TEST_RUN = {"batch_size": 4, "max_steps": 10, "save_checkpoint_steps": 5,
             "swa_tail_steps": 0}


@dataclasses.dataclass(frozen=True)
class ParameterCounts:
    """Variables of the full-size model (C = 3862, rgb 1024 + audio 128):
    every value, and of those the BN moving statistics (not trained)."""
    total: int
    bn_statistics: int


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    class_name: str
    description: str
    schedule: Schedule
    sizes: Mapping[str, Mapping[str, Any]]        # size -> hyper-parameter overrides
    parameters: ParameterCounts                   # at full size (docs/original.md 1.10)
    hparams: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    aliases: Tuple[str, ...] = ()

    def hparams_for(self, size: str = "full") -> Dict[str, Any]:
        """The preset's hyper-parameter overrides at `size`."""
        check_size(size)
        return {**self.hparams, **self.sizes.get(size, {})}

    def schedule_for(self, size: str = "full") -> Schedule:
        return schedule_for(self.schedule, size)


def check_size(size: str) -> str:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; one of {', '.join(SIZES)}")
    return size


def schedule_for(schedule: Schedule, size: str) -> Schedule:
    """`schedule` as run at `size` (tiny and test runs are short)."""
    runs: Dict[str, Dict[str, Any]] = {"full": {}, "tiny": _TINY_RUN, "test": _TEST_RUN}
    run = runs[check_size(size)]
    return dataclasses.replace(schedule, **run)


# The original's schedules, each followed by an averaging tail of about 5% of
# its steps at the rate it ended with, a checkpoint every 2500 (1000) steps.
_NETVLAD_SCHEDULE = Schedule(batch_size=80, learning_rate_decay=0.8, max_steps=700000,
                             swa_tail_steps=35000, swa_save_steps=2500)
_DBOF_SCHEDULE = Schedule(batch_size=80, learning_rate_decay=0.9, max_steps=800000,
                          swa_tail_steps=40000, swa_save_steps=2500)


# The tiny sizes were chosen by a sweep (bench/sweep_tiny_sizes.py,
# docs/sweep.md) so that on the quick start's data every member ends within
# 0.05 validation GAP of the best: at hidden 32 the Soft-DBoF and GRU members
# reached only 0.33-0.40 against the NetVLAD family's 0.50-0.57.
def _netvlad(name: str, class_name: str, description: str, parameters: ParameterCounts,
             tiny_hidden: int = 32) -> Preset:
    return Preset(name, class_name, description, _NETVLAD_SCHEDULE,
                  {"tiny": {"cluster_size": 8, "hidden_size": tiny_hidden, "num_samples": 30},
                   "test": {"cluster_size": 4, "hidden_size": 8, "num_samples": 10}},
                  parameters, aliases=(class_name,))


def _soft_dbof(name: str, class_name: str, clusters: str, parameters: ParameterCounts,
               tiny_clusters: int, tiny_hidden: int) -> Preset:
    return Preset(name, class_name, f"Late-fusion Soft-DBoF, {clusters} clusters, MoE-2",
                  _DBOF_SCHEDULE,
                  {"tiny": {"cluster_size": tiny_clusters, "hidden_size": tiny_hidden,
                            "num_samples": 30},
                   "test": {"cluster_size": 8, "hidden_size": 8, "num_samples": 10}},
                  parameters, aliases=(class_name,))


PRESETS: Tuple[Preset, ...] = (
    _netvlad("nonlocal-NetVLADModel", "NetVLADModelLF", "Late-fusion NetVLAD with the "
             "embedded-Gaussian non-local block, MoE-8 + probability gating",
             ParameterCounts(154_970_732, 12_268), tiny_hidden=40),
    _netvlad("nonlocal-LightNetVLADModel", "LightNetVLADModelLF", "Late-fusion LightVLAD with "
             "a non-local block, MoE-4 + probability gating",
             ParameterCounts(125_099_540, 12_268)),
    _netvlad("nonlocal-earlyNetVLADModel", "early_NetVLADModelLF", "Early-fusion NetVLAD with "
             "a non-local block, MoE-2 + probability gating",
             ParameterCounts(111_710_056, 12_204), tiny_hidden=64),
    _soft_dbof("Soft-DBoF-4k", "SoftDbofModelLF", "4000 video / 500 audio",
               ParameterCounts(28_572_796, 11_304), 1024, 80),
    _soft_dbof("Soft-DBoF-8k", "SoftDbofModelLF_8k", "8000 video / 1000 audio",
               ParameterCounts(37_358_796, 20_304), 2048, 64),
    Preset("GRUModel", "GruModel", "Two stacked GRUs of 1200 units, MoE-2",
           Schedule(batch_size=128, learning_rate_decay=0.9, max_steps=300000,
                    swa_tail_steps=15000, swa_save_steps=1000),
           {"tiny": {"gru_cells": 64}, "test": {"gru_cells": 8}},
           ParameterCounts(63_466_124, 0), aliases=("GruModel",)),
)

# The presets of the ensemble, in pipeline order (pipeline.sh MODELS).
ENSEMBLE: Tuple[str, ...] = ("nonlocal-NetVLADModel", "nonlocal-LightNetVLADModel",
                             "nonlocal-earlyNetVLADModel", "Soft-DBoF-4k", "Soft-DBoF-8k",
                             "GRUModel")


def index_presets(records: Sequence[Preset], ensemble: Sequence[str]
                  ) -> Tuple[Dict[str, Preset], Dict[str, str]]:
    """({name: preset}, {alias: name}) of the records; ValueError (naming
    models/presets.py) for a name or alias used twice, or an ENSEMBLE entry
    that is not a preset name."""
    by_name: Dict[str, Preset] = {}
    by_alias: Dict[str, str] = {}
    owner: Dict[str, str] = {}
    for preset in records:
        for key in (preset.name, *preset.aliases):
            if key in owner:
                raise ValueError(f"models/presets.py: {key!r} names two presets "
                                 f"({owner[key]} and {preset.name}); names and aliases "
                                 f"must be unique")
            owner[key] = preset.name
        by_name[preset.name] = preset
        by_alias.update((alias, preset.name) for alias in preset.aliases)
    unknown = [name for name in ensemble if name not in by_name]
    if unknown or len(set(ensemble)) != len(ensemble):
        raise ValueError(f"models/presets.py: ENSEMBLE must list preset names once each; "
                         f"check {', '.join(unknown) or 'its repeated names'}")
    return by_name, by_alias


PRESET_NAMES: Tuple[str, ...] = tuple(preset.name for preset in PRESETS)
_BY_NAME, _BY_ALIAS = index_presets(PRESETS, ENSEMBLE)


def find(name: str) -> Optional[Preset]:
    """The preset called `name` (or one of its aliases), else None."""
    return _BY_NAME.get(_BY_ALIAS.get(name, name))


def get(name: str) -> Preset:
    preset = find(name)
    if preset is None:
        raise KeyError(f"unknown preset {name!r}; one of {', '.join(PRESET_NAMES)}")
    return preset


if __name__ == "__main__":
    # The ensemble's presets in pipeline order, for the shell scripts.
    print(" ".join(ENSEMBLE))
