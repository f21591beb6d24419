"""Model registry: classes by name, presets named after the run scripts.

A *preset* is a model class plus hyper-parameter overrides (the six final
models are presets). Every hyper-parameter of every registered class becomes
a command-line flag of the same name (default: unset, meaning "the preset's
value"), so any stage can override any of them; the resolved values are
written to model_flags.json and every later stage rebuilds the same graph
from that file.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Type

from absl import flags

from models.base import FrameModel

MODEL_CLASSES: Dict[str, Type[FrameModel]] = {}
PRESETS: Dict[str, Tuple[str, Dict[str, Any]]] = {}
ALIASES: Dict[str, str] = {}


def register(cls: Type[FrameModel]) -> Type[FrameModel]:
    """Class decorator: makes the model buildable by its class name."""
    MODEL_CLASSES[cls.__name__] = cls
    return cls


def register_preset(name: str, class_name: str, aliases: Sequence[str] = (),
                    **overrides: Any) -> None:
    PRESETS[name] = (class_name, dict(overrides))
    for alias in aliases:
        ALIASES[alias] = name


def _load_zoo() -> None:
    # Importing the zoo modules runs their @register decorators.
    from models import baseline, frame_models  # noqa: F401


def model_names() -> Sequence[str]:
    _load_zoo()
    return sorted(set(MODEL_CLASSES) | set(PRESETS) | set(ALIASES))


def resolve(name: str, overrides: Optional[Mapping[str, Any]] = None
            ) -> Tuple[Type[FrameModel], Dict[str, Any]]:
    """Returns (model class, complete hyper-parameters) for a model name.

    Precedence: class DEFAULTS < preset overrides < `overrides`.
    Raises KeyError for an unknown name, ValueError for an unknown key.
    """
    _load_zoo()
    name = ALIASES.get(name, name)
    if name in PRESETS:
        class_name, preset = PRESETS[name]
    elif name in MODEL_CLASSES:
        class_name, preset = name, {}
    else:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(model_names())}")
    cls = MODEL_CLASSES[class_name]
    hparams = {**cls.DEFAULTS, **preset, **dict(overrides or {})}
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
    _load_zoo()
    union: Dict[str, Any] = {}
    for cls in MODEL_CLASSES.values():
        for key, value in cls.DEFAULTS.items():
            union.setdefault(key, value)
    return union


_DEFINERS = {bool: flags.DEFINE_boolean, int: flags.DEFINE_integer,
             float: flags.DEFINE_float, str: flags.DEFINE_string}


def define_hparam_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines one flag per hyper-parameter (default None = preset value)."""
    for key, value in sorted(all_hparam_defaults().items()):
        if key in flag_values:
            continue
        definer = _DEFINERS[type(value)]
        definer(key, None, f"Model hyper-parameter (unset: the preset's value, "
                           f"e.g. {value!r}).", flag_values=flag_values)


def hparams_from_flags(name: str, flag_values: flags.FlagValues = flags.FLAGS
                       ) -> Dict[str, Any]:
    """The overrides the user set on the command line that apply to `name`."""
    cls, _ = resolve(name)
    overrides = {}
    for key in cls.DEFAULTS:
        if key in flag_values and flag_values[key].value is not None:
            overrides[key] = flag_values[key].value
    return overrides
