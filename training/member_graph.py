"""The members of an ensemble in one graph: the tiled test-time augmentation
(docs/architecture.md "The ensemble graph" describes it in full).

Member i is built from its model_flags.json under the variable scope
``model<i>`` (or the scopes given; single-model inference uses ``tower``),
fed by the placeholders ``input_batch_raw`` float32 [None, None, D] (any
number of frames: the readers pad a video to 300, a 2019 segment comes at
its 5; video level: [None, D]) and ``num_frames`` int32 [None]. A member that samples
frames at random sees tile_num independent draws per video and predicts
their mean; with shared frame work its per-frame work runs once per video
and each draw aggregates it with its counts (exact). Deterministic members
(the GRU) run once. ``predictions`` [None, C] is the weighted mean of the
members. Checkpoint key ``tower/<x>`` of member i fills ``model<i>/<x>``
(member_savers), after training.checkpoint_fit has checked that it fits.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from models.tf_compat import tf
from training import (
    checkpoint_fit,
    checkpoints,
    model_builder,
    precision,
    quantize,
    record_layouts,
)
from training.cli import UserError, first_line
from training.members import Member, check_members_agree
from training.model_flags import ModelFlags
from training.progress import Log


@dataclass
class GraphMember:
    """Member i of an EnsembleGraph: its scope, outputs and how its variables
    are stored. restore_map: {checkpoint key tower/<x>: graph variable
    <scope>/<x>}; stored_bf16: float32 variables filled from bfloat16
    tensors (cast_at_load); int8_scales: {key: scale variable} of the
    matrices stored int8 in the export, int8_restored the ones the checkpoint
    holds as int8 (the rest are quantised in the session, quantize_in_session)."""
    scope: str
    prediction: tf.Tensor                  # [B, C] (mean over its tiles)
    tiles: Optional[tf.Tensor]             # [T, B, C] for a tiled member, else None
    tiled: bool
    shared: bool                           # tiled with shared frame work
    restore_map: Dict[str, tf.Variable]
    stored_bf16: bool
    int8_restored: Tuple[str, ...] = ()
    int8_scales: Dict[str, tf.Variable] = field(default_factory=dict)

    def saver_map(self) -> Dict[str, Any]:
        """{checkpoint key: variable or storage saveable} to restore it."""
        scales = {key: self.int8_scales[key] for key in self.int8_restored}
        return precision.storage_saveables(self.restore_map, self.stored_bf16, scales)

    def export_vars(self) -> List[Any]:
        """Its variables under their graph names, through the storage
        saveables where they are bf16 (cast_at_load) or int8 on disk."""
        by_name = {var.op.name: var for var in self.restore_map.values()}
        scales = {self.restore_map[key].op.name: scale
                  for key, scale in self.int8_scales.items()}
        return list(precision.storage_saveables(by_name, self.stored_bf16, scales).values())

    def add_int8(self, keys: Sequence[str]) -> None:
        """Stores `keys` as int8 in the export (scale variables are created in
        the default graph: call it there)."""
        for key in keys:
            if key not in self.int8_scales:
                self.int8_scales[key] = precision.int8_scale_variable(self.restore_map[key])

    def stored_bytes(self, key: str) -> int:
        """Bytes of variable `key` in the export."""
        variable = self.restore_map[key]
        shape = variable.shape.as_list()
        if key in self.int8_scales:
            return quantize.int8_bytes(shape)
        dtype = variable.dtype.base_dtype
        if dtype == tf.float32 and self.stored_bf16:
            dtype = tf.bfloat16
        return int(np.prod(shape, dtype=np.int64)) * dtype.size


@dataclass
class EnsembleGraph:
    """The members in one graph: the placeholders, the combined predictions
    and one GraphMember per member (in the order given)."""
    input_batch_raw: tf.Tensor
    num_frames: tf.Tensor
    predictions: tf.Tensor
    members: List[GraphMember]
    bf16_compute: str = precision.DEFAULT_BF16_COMPUTE

    @property
    def member_predictions(self) -> List[tf.Tensor]:
        """Each member's [B, C] predictions (what stacking fetches)."""
        return [member.prediction for member in self.members]

    @property
    def variables(self) -> List[tf.Variable]:
        return [var for member in self.members for var in member.restore_map.values()]

    @property
    def export_var_list(self) -> List[Any]:
        """What the export Saver writes under the graph names (model<i>/...)."""
        return [var for member in self.members for var in member.export_vars()]

    def plan_int8(self, target_bytes: Optional[int], min_values: int,
                  fixed_bytes: int) -> List[Tuple[int, str]]:
        """[(member index, key)]: the fewest, largest matrices (of at least
        min_values values, not int8 yet) to store as int8 so that the export
        fits target_bytes (None: all of them); fixed_bytes: the meta graph
        and index."""
        candidates, fixed = [], fixed_bytes
        for index, member in enumerate(self.members):
            for key, variable in sorted(member.restore_map.items()):
                size = member.stored_bytes(key)
                shape = variable.shape.as_list()
                if key not in member.int8_scales and \
                        quantize.is_candidate(shape, variable.dtype, min_values):
                    candidates.append(((index, key), shape, size))
                else:
                    fixed += size
        return quantize.plan_int8(candidates, fixed, target_bytes, "the export")


def _build_model(member: Member, frame_sampling: Optional[str]):
    try:
        return model_builder.build_model(member.model_flags, {"frame_sampling": frame_sampling})
    except (KeyError, ValueError) as err:
        text = err.args[0] if err.args else str(err)
        raise UserError(f"{os.path.join(member.model_dir, checkpoints.MODEL_FLAGS_FILE)}: "
                        f"{text}") from None


def _check_graph_args(members: Sequence[Member], weights: Sequence[float], tile_num: int,
                      frame_sampling: Optional[str]) -> None:
    if tile_num < 1:
        raise UserError(f"--tile_num: must be >= 1, got {tile_num}")
    if len(weights) != len(members):
        raise ValueError(f"{len(members)} members but {len(weights)} weights")
    if frame_sampling is not None and frame_sampling not in ("random", "uniform", "none"):
        raise UserError(f"--frame_sampling: random, uniform or none, got {frame_sampling!r}")
    check_members_agree(members)


def _input_placeholders(model_flags: ModelFlags):
    """(input_batch_raw, num_frames) placeholders for the members' features.
    Frame level: any number of frames, so a 5-frame segment is scored without
    295 padding rows (the models read only the first num_frames rows; the
    starter's segment reader fed 5-frame batches too)."""
    feature_size = sum(model_flags.feature_size_list())
    if record_layouts.layout_of_model(model_flags).frame_level:
        shape = [None, None, feature_size]
    else:
        shape = [None, feature_size]
    return (tf.placeholder(tf.float32, shape, name="input_batch_raw"),
            tf.placeholder(tf.int32, [None], name="num_frames"))


def _tiled_inputs(input_raw: tf.Tensor, num_frames: tf.Tensor, tile_num: int):
    """The batch repeated tile_num times: copy t of video b at row t*B + b."""
    with tf.name_scope("tile"):
        multiples = [tile_num] + [1] * (input_raw.shape.ndims - 1)
        return (tf.tile(input_raw, multiples, name="input_batch_raw"),
                tf.tile(num_frames, [tile_num], name="num_frames"))


def _member_prediction(model, mode: str, inputs: Sequence[tf.Tensor], tile_num: int,
                       num_classes: int):
    """(prediction [B, C], tiles [T, B, C] or None) of one member in the
    current scope. mode: shared (per-frame work once per video), tiled (on
    the tiled input) or plain (untiled). inputs: (raw, frames, batch size,
    tiled raw, tiled frames)."""
    input_raw, num_frames, batch_size, tiled_raw, tiled_frames = inputs
    if mode == "plain":
        return model_builder.model_predictions(model, input_raw, num_frames,
                                               is_training=False), None
    if mode == "shared":
        flat = model_builder.model_tile_predictions(model, input_raw, num_frames, tile_num)
    else:
        flat = model_builder.model_predictions(model, tiled_raw, tiled_frames,
                                               is_training=False)
    copies = tf.reshape(flat, [tile_num, batch_size, num_classes], name="tiles")
    return tf.reduce_mean(copies, axis=0, name="tile_mean"), copies


def _weighted_mean(weights: Sequence[float], member_predictions: List[tf.Tensor]) -> tf.Tensor:
    with tf.name_scope("ensemble"):
        if len(member_predictions) == 1 and abs(weights[0] - 1.0) < 1e-12:
            combined = member_predictions[0]
        else:
            combined = tf.add_n([tf.constant(float(w), tf.float32) * p
                                 for w, p in zip(weights, member_predictions)])
    return tf.identity(combined, name="predictions")


def _restore_map(scope: str) -> Dict[str, tf.Variable]:
    """{checkpoint key tower/<x>: graph variable <scope>/<x>}."""
    return {checkpoints.MODEL_SCOPE + "/" + var.op.name[len(scope) + 1:]: var
            for var in model_builder.model_variables(scope)}


def _in_scope(member: Member, model, scope: str, mode: str, inputs: Sequence[tf.Tensor],
              tile_num: int, bf16_compute: str) -> Tuple[tf.Tensor, Optional[tf.Tensor]]:
    """_member_prediction of one member under its variable scope and getter."""
    with tf.variable_scope(scope, custom_getter=member.getter_for(bf16_compute)):
        try:
            return _member_prediction(model, mode, inputs, tile_num,
                                      member.model_flags.num_classes)
        except ValueError as err:
            raise UserError(f"{member.model_dir}: {err}") from None


def build_ensemble_graph(members: Sequence[Member], weights: Sequence[float], tile_num: int,
                         frame_sampling: Optional[str] = None,
                         scopes: Optional[Sequence[str]] = None,
                         force_tile: bool = False, shared_frame_work: bool = True,
                         bf16_compute: Optional[str] = None) -> EnsembleGraph:
    """Adds the members to the default graph (see the module docstring).

    scopes: variable scope per member (default model0, model1, ...). force_tile
    tiles the deterministic members too (only to show that it changes nothing).
    shared_frame_work: tiled members that support it compute their per-frame
    work once (FrameModel.predict_tiles). bf16_compute: how bfloat16 members
    compute (None: precision.DEFAULT_BF16_COMPUTE). Adds the collections
    input_batch_raw, num_frames and predictions.
    """
    bf16_compute = precision.check_bf16_compute(bf16_compute)
    _check_graph_args(members, weights, tile_num, frame_sampling)
    scopes = list(scopes) if scopes is not None else [f"model{i}" for i in range(len(members))]
    input_raw, num_frames = _input_placeholders(members[0].model_flags)
    batch_size = tf.shape(input_raw)[0]
    models = [_build_model(member, frame_sampling) for member in members]
    tiled = [tile_num > 1 and (force_tile or bool(model.samples_frames_randomly))
             for model in models]
    shared = [tile and shared_frame_work and bool(model.supports_shared_frame_work)
              and input_raw.shape.ndims == 3 for model, tile in zip(models, tiled)]
    tiled_inputs = (None, None)
    if any(tile and not share for tile, share in zip(tiled, shared)):
        tiled_inputs = _tiled_inputs(input_raw, num_frames, tile_num)
    inputs = (input_raw, num_frames, batch_size, *tiled_inputs)
    outputs = [_in_scope(member, model, scope,
                         "shared" if share else "tiled" if tile else "plain", inputs, tile_num,
                         bf16_compute)
               for member, model, scope, tile, share in zip(members, models, scopes, tiled,
                                                            shared)]
    predictions = _weighted_mean(weights, [prediction for prediction, _ in outputs])
    parts = [GraphMember(scope, prediction, tiles, tile, share, _restore_map(scope),
                         member.stored_bf16_in(bf16_compute), tuple(member.int8_keys))
             for member, scope, (prediction, tiles), tile, share
             in zip(members, scopes, outputs, tiled, shared)]
    for name, tensor in (("input_batch_raw", input_raw), ("num_frames", num_frames),
                         ("predictions", predictions)):
        tf.add_to_collection(name, tensor)
    for part, member in zip(parts, members):
        part.add_int8(member.int8_keys)
    return EnsembleGraph(input_raw, num_frames, predictions, parts, bf16_compute)


# ---------------------------------------------------------------------------
# Loading the members


def check_members_fit(members: Sequence[Member], graph: EnsembleGraph) -> None:
    """A UserError naming the checkpoint when a member's does not fit its
    part of the graph (training.checkpoint_fit.check_fits)."""
    for member, part in zip(members, graph.members):
        checkpoint_fit.check_fits(
            member.checkpoint, part.restore_map, owner=member.model_dir,
            needer=f"model {member.name} of its {checkpoints.MODEL_FLAGS_FILE}",
            stored_bf16=part.stored_bf16, check_extra=True, int8=member.int8_keys,
            stored=member.specs)


def member_savers(members: Sequence[Member], graph: EnsembleGraph) -> List[tf.train.Saver]:
    """One name-mapping Saver per member (call in the graph, before finalising),
    after check_members_fit."""
    check_members_fit(members, graph)
    return [tf.train.Saver(part.saver_map(), name=f"restore_{part.scope}", sharded=False)
            for part in graph.members]


def quantize_in_session(sess: tf.Session, graph: EnsembleGraph, log: Optional[Log] = None) -> None:
    """Rounds the int8-stored matrices that the checkpoints held in another
    dtype (GraphMember.add_int8) to their int8 values in the session, so
    that what is evaluated is what the export holds; fills their scales."""
    for part in graph.members:
        for key, scale in sorted(part.int8_scales.items()):
            if key in part.int8_restored:
                continue
            variable = part.restore_map[key]
            quantized, scale_value = quantize.quantize_columns(sess.run(variable),
                                                               f"{part.scope}/{key}")
            numpy_dtype = variable.dtype.base_dtype.as_numpy_dtype
            variable.load(quantize.dequantize_columns(quantized, scale_value)
                          .astype(numpy_dtype), sess)
            scale.load(scale_value, sess)
            if log:
                log(f"int8: {variable.op.name} {variable.shape.as_list()}")


def restore_members(sess: tf.Session, members: Sequence[Member],
                    savers: Sequence[tf.train.Saver], log: Optional[Log] = None) -> None:
    for member, saver in zip(members, savers):
        try:
            saver.restore(sess, member.checkpoint)
        except tf.errors.OpError as err:
            raise UserError(checkpoints.read_failure(err, member.checkpoint)
                            or f"{member.model_dir}: cannot restore {member.checkpoint} "
                               f"({first_line(err)})") from None
        if log:
            log(f"restored {member.checkpoint}")
