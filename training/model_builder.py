"""Rebuilds a model graph from model_flags.json (shared by every stage)."""
from __future__ import annotations

import sys
from typing import Any, Callable, Dict, List, Optional, Union

from absl import flags

from models import layers, registry
from models.base import FrameModel
from models.tf_compat import tf
from training import record_layouts
from training.cli import UserError
from training.flags import comma_list, comma_numbers
from training.model_flags import ModelFlags, layout_of

FLAGS = flags.FLAGS


def make_model_flags(model: str, feature_names: str, feature_sizes: str,
                     record_kind: Union[str, bool], num_classes: int, label_loss: str,
                     hparam_overrides: Optional[Dict[str, Any]] = None,
                     size: str = "full") -> ModelFlags:
    """The model_flags.json record of a new model: everything needed to
    rebuild the graph (size: the preset's size, models.presets.SIZES); a
    UserError naming the flag for an unknown model, kind or bad features.
    record_kind: the layout it reads (training.record_layouts), or a bool,
    the starter's frame_features (True: "frame", False: "video")."""
    if not isinstance(record_kind, str):
        record_kind = layout_of(bool(record_kind))
    frame_level, kind_field = record_layouts.model_record_kind(record_kind)
    try:
        _, hparams = registry.resolve(model, hparam_overrides, size)
    except KeyError as err:
        raise UserError(f"--model: {err.args[0]}") from None
    except ValueError as err:
        raise UserError(f"--model: {err}") from None
    names = comma_list(feature_names)
    sizes = comma_list(feature_sizes)
    if len(names) != len(sizes):
        raise UserError(f"--feature_names has {len(names)} entries but --feature_sizes "
                        f"has {len(sizes)}")
    comma_numbers(sizes, "feature_sizes", int)
    return ModelFlags(model=model, feature_names=",".join(names),
                      feature_sizes=",".join(sizes), frame_features=frame_level,
                      num_classes=int(num_classes), label_loss=label_loss,
                      model_hparams=hparams, record_kind=kind_field)


def build_model(model_flags: ModelFlags,
                hparam_overrides: Optional[Dict[str, Any]] = None) -> FrameModel:
    """The model object described by model_flags (plus optional overrides
    that apply, e.g. frame_sampling at inference)."""
    hparams = model_flags.hparams()
    cls, _ = registry.resolve(model_flags.model)
    for key, value in (hparam_overrides or {}).items():
        if key in cls.DEFAULTS and value is not None:
            hparams[key] = value
    return registry.build(model_flags.model, model_flags.num_classes,
                          model_flags.feature_size_list(), hparams)


def make_reader(model_flags: ModelFlags,
                record_kind: Optional[str] = None) -> record_layouts.Reader:
    """The reader of the records this model reads (its record layout:
    training.record_layouts), or of records of another kind of its level."""
    return record_layouts.reader_for(model_flags, record_kind)


def model_predictions(model: FrameModel, input_raw: tf.Tensor, num_frames: tf.Tensor,
                      is_training: bool) -> tf.Tensor:
    """L2-normalises each frame (video-level input becomes a 1-frame video)
    and runs the model in the caller's variable scope. -> [B, C]. At
    inference a random frame draw depends only on the video (its fingerprint
    of the raw features), not on the batch it is in."""
    if input_raw.shape.ndims == 2:
        input_raw = input_raw[:, None, :]
        num_frames = tf.ones_like(num_frames, dtype=tf.int32)
    num_frames = tf.cast(num_frames, tf.int32)
    per_video = model.samples_frames_randomly and not is_training
    fingerprints = layers.video_fingerprints(input_raw, num_frames) if per_video else None
    model_input = layers.l2_normalize_frames(input_raw)
    return model(model_input, num_frames, is_training=is_training, fingerprints=fingerprints)


def model_tile_predictions(model: FrameModel, input_raw: tf.Tensor, num_frames: tf.Tensor,
                           tile_num: int, indices: Optional[tf.Tensor] = None) -> tf.Tensor:
    """Inference on tile_num draws of frames with the per-frame work shared
    (FrameModel.predict_tiles): L2-normalises each frame once, -> [tile_num*B, C]
    (row t*B + b), as model_predictions on the input tiled tile_num times."""
    num_frames = tf.cast(num_frames, tf.int32)
    fingerprints = layers.video_fingerprints(input_raw, num_frames)
    model_input = layers.l2_normalize_frames(input_raw)
    return model.predict_tiles(model_input, num_frames, tile_num, indices=indices,
                               fingerprints=fingerprints)


def model_variables(scope: str) -> List[tf.Variable]:
    """The model's variables (weights and BN statistics) under `scope`/."""
    return [var for var in tf.global_variables() if var.op.name.startswith(scope + "/")]


# ---------------------------------------------------------------------------
# Model hyper-parameters: one flag each (default None = the preset's value)

_DEFINERS: Dict[type, Callable[..., flags.FlagHolder]] = {
    bool: flags.DEFINE_boolean, int: flags.DEFINE_integer, float: flags.DEFINE_float,
    str: flags.DEFINE_string}


def define_hparam_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """One flag per hyper-parameter of any registered model class."""
    for key, value in sorted(registry.all_hparam_defaults().items()):
        _DEFINERS[type(value)](key, None, f"Model hyper-parameter (unset: the preset's value, "
                                          f"e.g. {value!r}).", flag_values=flag_values,
                               module_name=sys.argv[0])


def hparams_from_flags(name: str, flag_values: flags.FlagValues = FLAGS) -> Dict[str, Any]:
    """The hyper-parameters of model `name` set on the command line."""
    cls, _ = registry.resolve(name)
    return {key: flag_values[key].value for key in cls.DEFAULTS
            if key in flag_values and flag_values[key].value is not None}


def check_hparam_flags(name: str, flag_values: flags.FlagValues = FLAGS) -> None:
    """A UserError for an unknown --model, or a hyper-parameter flag that it lacks."""
    try:
        cls, _ = registry.resolve(name)
    except KeyError as err:
        raise UserError(f"--model: {err.args[0]}") from None
    for key in registry.all_hparam_defaults():
        if key in flag_values and flag_values[key].value is not None and key not in cls.DEFAULTS:
            raise UserError(f"--{key}: not a hyper-parameter of --model={name} "
                            f"({cls.__name__}: {', '.join(sorted(cls.DEFAULTS))})")
