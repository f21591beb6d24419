"""Model registry: classes by name, and the presets of models.presets.

A model name is a preset (``nonlocal-NetVLADModel``), a preset alias (the
original class name, ``NetVLADModelLF``) or a registered class name
(``FrameMeanMoeModel``). resolve() gives the class and its complete
hyper-parameters; training writes them to model_flags.json, and every later
stage rebuilds the same graph from that file.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Type

from models import baseline, frame_models, presets
from models.base import FrameModel

MODEL_CLASSES: Dict[str, Type[FrameModel]] = {
    cls.__name__: cls for cls in (*frame_models.MODEL_CLASSES, baseline.FrameMeanMoeModel)}


def model_names() -> Sequence[str]:
    aliases = [alias for preset in presets.PRESETS for alias in preset.aliases]
    return sorted(set(MODEL_CLASSES) | set(presets.PRESET_NAMES) | set(aliases))


def resolve(name: str, overrides: Optional[Mapping[str, Any]] = None, size: str = "full"
            ) -> Tuple[Type[FrameModel], Dict[str, Any]]:
    """Returns (model class, complete hyper-parameters) for a model name.

    Precedence: class DEFAULTS < the preset's overrides at `size` < `overrides`.
    Raises KeyError for an unknown name, ValueError for an unknown key or size.
    """
    preset = presets.find(name)
    if preset is not None:
        class_name, preset_hparams = preset.class_name, preset.hparams_for(size)
    elif name in MODEL_CLASSES:
        presets.check_size(size)
        class_name, preset_hparams = name, {}
    else:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(model_names())}")
    cls = MODEL_CLASSES[class_name]
    hparams = {**cls.DEFAULTS, **preset_hparams, **dict(overrides or {})}
    unknown = set(hparams) - set(cls.DEFAULTS)
    if unknown:
        raise ValueError(f"model {name!r} ({class_name}) has no hyper-parameter(s) "
                         f"{', '.join(sorted(unknown))}")
    return cls, hparams


def build(name: str, num_classes: int, feature_sizes: Sequence[int],
          hparams: Optional[Mapping[str, Any]] = None) -> FrameModel:
    cls, resolved = resolve(name, hparams)
    return cls(num_classes, feature_sizes, **resolved)


def all_hparam_defaults() -> Dict[str, Any]:
    """Union of every class's DEFAULTS (the first default fixes the type)."""
    union: Dict[str, Any] = {}
    for cls in MODEL_CLASSES.values():
        for key, value in cls.DEFAULTS.items():
            union.setdefault(key, value)
    return union
