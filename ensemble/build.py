"""Builds the tiled ensemble and exports it for Kaggle:
python -m ensemble.build --model_dirs=A,B,... --output_dir=E [--tile_num=10]

The re-implementation of ``multi_ensemble_tile.py`` (ORIGINAL.md 6.1-6.4).

Members. Each of --model_dirs is a model dir of this pipeline (a train, SWA
or bfloat16 dir): ``model_flags.json`` plus ``model.ckpt-<step>``; the latest
checkpoint is used. A member whose checkpoint stores bfloat16 tensors is
built as --bf16_compute says (bfloat16_patch.getter): ``cast_each_step``
(bf16 variables read through a float32 cast on every run, the original's
behaviour), ``cast_at_load`` (float32 variables that the restore op fills from
the bf16 tensors once) or ``bfloat16`` (bf16 variables, the weight matmuls in
bfloat16, the rest float32); in every mode the exported checkpoint keeps them
in bfloat16. Float32 members stay float32 (mixing is allowed). All members must read the same features
(``frame_features``, ``feature_names``, ``feature_sizes``) and predict the same
``num_classes``.

Graph (one graph, fed by the caller)::

    input_batch_raw  float32 [None, 300, D]  (video-level: [None, D])  placeholder
    num_frames       int32   [None]                                    placeholder
    model<i>/...     member i, built from its model_flags.json, is_training=False
    predictions      float32 [None, C] = sum_i w_i * mean_t p_i,t

Member i lives under the variable scope ``model<i>`` (exact scope, so
``model1`` never picks up ``model10``'s variables). Members whose predictions
depend on a random draw of frames (``samples_frames_randomly``: the NetVLAD
and DBoF presets) see the input tiled ``--tile_num`` times, i.e. copy t of
video b at row t*B + b, so each copy gets an independent draw (test-time
augmentation); their prediction is the mean over the copies. With
--shared_frame_work (the default) such a member does not run on a tiled
input: its per-frame work (input BN with moving statistics, the cluster
assignment, its BN and softmax) runs once over each video's frames and every
copy aggregates it with its draw counts (FrameModel.predict_tiles; the same
random process, exact up to float rounding); --noshared_frame_work builds the
naive tiled graph instead. Deterministic
members (the GRU, FrameMeanMoeModel) run once on the untiled batch: tiling
them would only repeat identical work. The combination is a weighted *mean*
(weights normalised to sum to 1), not the sum of ``multi_ensemble.py``, so
predictions stay in [0, 1]. The graph-level seed is --seed.

Loading. Checkpoint key ``tower/<x>`` of member i is restored into the graph
variable ``model<i>/<x>`` by a ``tf.train.Saver`` with a name map. A
checkpoint lacking a variable, holding another shape or dtype, or holding
model variables the graph does not create is a one-line error naming the
member dir and the variable.

Export (into --output_dir, written under a temporary name and renamed into
place; an existing dir is replaced only with --overwrite and only when it is
an ensemble dir)::

    inference_model.data-00000-of-00001, inference_model.index,
    inference_model.meta   the model variables (bf16 where the member was) and
                           the graph with the collections input_batch_raw,
                           num_frames and predictions, loadable as the starter
                           inference.py loads it (import_meta_graph, restore,
                           feed input_batch_raw and num_frames, fetch
                           predictions); no global_step, no input pipeline
    checkpoint             TensorFlow's state file (relative path)
    model_flags.json       the first member's feature keys and num_classes,
                           with "model": "ensemble" (the reader of inference)
    ensemble.json          members, weights, tile_num, which members are tiled,
                           scopes, checkpoints and dtypes, exported bytes
    eval_results.json      with --eval_data_pattern: metrics of the exported
                           model on that data (read by ensemble.report)

The exported size (sum of the inference_model.* files) is printed against the
1 GiB (1,073,741,824-byte) upload limit (--size_limit_bytes sets another); a
larger export is an error, and nothing is left in --output_dir, unless
--allow_oversize.

Weights. Uniform by default; --weights=0.2,0.8 (one per member, in
--model_dirs order) or --weights_file=W.json, the file that stacking writes::

    {
      "members": ["/path/to/model_dir_0", "/path/to/model_dir_1"],
      "weights": [0.35, 0.65]
    }

``members`` are model dirs, absolute or relative to the directory holding the
JSON file; ``weights`` are finite and >= 0, not all 0, one per member (they
are normalised to sum to 1). Other keys are allowed and ignored. Without
--model_dirs the members of the file are the ensemble; with --model_dirs the
two lists must name the same dirs (in any order) and the weights follow their
dirs. ``write_weights_file`` writes this format.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from absl import flags

from bfloat16_patch import getter as bf16
from training import checkpoints, model_builder, readers
from training.errors import UserError, define_flag, run_main
from training.tf_compat import tf

FLAGS = flags.FLAGS

INFERENCE_MODEL = "inference_model"
ENSEMBLE_JSON = "ensemble.json"
EVAL_RESULTS = "eval_results.json"
SIZE_LIMIT_BYTES = 1 << 30          # the Kaggle 2018 limit read as 1 GiB (ORIGINAL.md 12.27)
MATCH_KEYS = ("frame_features", "feature_names", "feature_sizes", "num_classes")
ENSEMBLE_MODEL_NAME = "ensemble"

Log = Optional[Callable[[str], None]]


def define_flags() -> None:
    define_flag(flags.DEFINE_string, "model_dirs", "", "Comma-separated member model dirs "
                "(model_flags.json + model.ckpt-*, float32 or bfloat16).")
    define_flag(flags.DEFINE_string, "weights", "", "Comma-separated member weights, in "
                "--model_dirs order (default: uniform).")
    define_flag(flags.DEFINE_string, "weights_file", "", "JSON {\"members\": [dir, ...], "
                "\"weights\": [...]} as written by stacking.")
    define_flag(flags.DEFINE_integer, "tile_num", 10, "Copies of the batch that the "
                "frame-sampling members see (independent random draws).")
    define_flag(flags.DEFINE_string, "output_dir", "", "New ensemble dir to write.")
    define_flag(flags.DEFINE_bool, "overwrite", False, "Replace an existing ensemble dir.")
    define_flag(flags.DEFINE_bool, "allow_oversize", False, "Keep an export larger than 1 GiB "
                "(--size_limit_bytes).")
    define_flag(flags.DEFINE_integer, "size_limit_bytes", None, "Upload size limit of the "
                "export (default: 1 GiB = 1073741824 bytes, the challenge's).")
    define_flag(flags.DEFINE_string, "eval_data_pattern", "", "Evaluate the exported model on "
                "these TFRecords (labelled) and write eval_results.json.")
    define_flag(flags.DEFINE_integer, "seed", 666, "Graph-level random seed (frame sampling).")
    define_flag(flags.DEFINE_bool, "shared_frame_work", True, "Tiled members compute their "
                "per-frame work once per video and aggregate it per tile with draw counts "
                "(false: run the member on the tiled input, as the original).")
    define_flag(flags.DEFINE_string, "bf16_compute", None,
                "How bfloat16 members compute: cast_each_step (bf16 variables cast to float32 "
                "on every run), cast_at_load (float32 variables filled once from the bf16 "
                "checkpoint) or bfloat16 (weight matmuls in bfloat16); default "
                f"{bf16.DEFAULT_BF16_COMPUTE}. The export stays bf16 on disk in every mode.")
    define_flag(flags.DEFINE_string, "frame_sampling", None, "Override every member's frame "
                "sampling: random (the original), uniform or none.")
    define_flag(flags.DEFINE_integer, "batch_size", 64, "Videos per batch of the evaluation.")
    define_flag(flags.DEFINE_integer, "top_k", 20, "k of GAP@k in the evaluation.")
    define_flag(flags.DEFINE_integer, "num_readers", 2, "Files read in parallel (evaluation).")


# ---------------------------------------------------------------------------
# Members


@dataclass
class Member:
    model_dir: str
    checkpoint: str
    model_flags: Dict[str, Any]
    dtype: str                     # bf16.FLOAT32 or bf16.BFLOAT16

    @property
    def getter(self):
        return bf16.bfloat16_getter if self.dtype == bf16.BFLOAT16 else None

    def getter_for(self, bf16_compute: Optional[str]):
        """The custom_getter of this member in a --bf16_compute mode."""
        return bf16.getter_for_mode(bf16_compute) if self.dtype == bf16.BFLOAT16 else None

    def stored_bf16_in(self, bf16_compute: Optional[str]) -> bool:
        """True when the graph holds float32 variables for bf16 checkpoint
        tensors (cast_at_load): they are restored and saved through
        BFloat16StorageSaveable."""
        return self.dtype == bf16.BFLOAT16 and \
            bf16.check_bf16_compute(bf16_compute) == bf16.CAST_AT_LOAD

    @property
    def name(self) -> str:
        return str(self.model_flags.get("model"))


def load_member(model_dir: str) -> Member:
    """Reads a member dir: model_flags.json, latest checkpoint, its dtype."""
    if not os.path.isdir(model_dir):
        raise UserError(f"{model_dir}: no such model dir")
    model_flags = checkpoints.read_model_flags(model_dir)
    for key in MATCH_KEYS:
        if key not in model_flags:
            raise UserError(f"{os.path.join(model_dir, checkpoints.MODEL_FLAGS_FILE)}: "
                            f"has no {key!r} key")
    checkpoint = checkpoints.find_checkpoint(model_dir)
    getter = bf16.getter_for_checkpoint(checkpoint, model_flags)
    return Member(os.path.abspath(model_dir), checkpoint, model_flags,
                  bf16.BFLOAT16 if getter is not None else bf16.FLOAT32)


def _feature_signature(model_flags: Mapping[str, Any]) -> Dict[str, Any]:
    return {"frame_features": bool(model_flags["frame_features"]),
            "feature_names": model_builder.split_list(model_flags["feature_names"]),
            "feature_sizes": model_builder.feature_sizes_of(model_flags),
            "num_classes": int(model_flags["num_classes"])}


def check_members_agree(members: Sequence[Member]) -> None:
    """All members read the same features and predict the same classes."""
    if not members:
        raise UserError("--model_dirs: no members")
    first = _feature_signature(members[0].model_flags)
    for member in members[1:]:
        this = _feature_signature(member.model_flags)
        for key in MATCH_KEYS:
            if this[key] != first[key]:
                raise UserError(
                    f"{member.model_dir}: {key}={_show(this[key])} but "
                    f"{members[0].model_dir} has {key}={_show(first[key])}; all members "
                    f"must read the same features and predict the same classes")


def check_no_duplicates(member_dirs: Sequence[str]) -> None:
    seen = set()
    for member_dir in member_dirs:
        real = os.path.realpath(member_dir)
        if real in seen:
            raise UserError(f"--model_dirs: {member_dir} is listed twice (use --weights to "
                            f"weigh it more)")
        seen.add(real)


def _show(value) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, list) else str(value)


# ---------------------------------------------------------------------------
# Weights


def write_weights_file(path: str, members: Sequence[str], weights: Sequence[float],
                       **extra: Any) -> None:
    """Writes the weights JSON that --weights_file reads (atomically).
    Member dirs are written as absolute paths."""
    if len(members) != len(weights):
        raise ValueError(f"{len(members)} members but {len(weights)} weights")
    payload = dict(extra)
    payload["members"] = [os.path.abspath(member) for member in members]
    payload["weights"] = [float(weight) for weight in weights]
    checkpoints.write_json(path, payload)


def read_weights_file(path: str) -> Dict[str, List]:
    """-> {"members": [absolute dirs], "weights": [floats]} (not normalised)."""
    if not os.path.isfile(path):
        raise UserError(f"--weights_file={path}: no such file")
    payload = checkpoints.load_json(path, f"--weights_file={path}")
    if not isinstance(payload, dict) or not isinstance(payload.get("members"), list) \
            or not isinstance(payload.get("weights"), list):
        raise UserError(f"--weights_file={path}: expected an object with the lists "
                        f"\"members\" and \"weights\"")
    members, weights = payload["members"], payload["weights"]
    if len(members) != len(weights):
        raise UserError(f"--weights_file={path}: {len(members)} members but "
                        f"{len(weights)} weights")
    base = os.path.dirname(os.path.abspath(path))
    resolved = []
    for member in members:
        if not isinstance(member, str) or not member:
            raise UserError(f"--weights_file={path}: member {member!r} is not a dir path")
        resolved.append(os.path.normpath(os.path.join(base, member)))
    for weight in weights:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise UserError(f"--weights_file={path}: weight {weight!r} is not a number")
    return {"members": resolved, "weights": [float(w) for w in weights]}


def normalise_weights(weights: Sequence[float], what: str = "--weights") -> List[float]:
    weights = [float(w) for w in weights]
    for weight in weights:
        if not math.isfinite(weight) or weight < 0:
            raise UserError(f"{what}: weights must be finite and >= 0, got {weight}")
    total = sum(weights)
    if total <= 0:
        raise UserError(f"{what}: the weights sum to 0")
    return [weight / total for weight in weights]


def resolve_members_and_weights(model_dirs: str, weights: str, weights_file: str):
    """-> (member dirs, normalised weights) from the three flags."""
    dirs = [d.strip() for d in (model_dirs or "").split(",") if d.strip()]
    if weights and weights_file:
        raise UserError("--weights and --weights_file: give one, not both")
    if weights_file:
        spec = read_weights_file(weights_file)
        if not dirs:
            return spec["members"], normalise_weights(spec["weights"],
                                                      f"--weights_file={weights_file}")
        by_dir = {os.path.realpath(m): w for m, w in zip(spec["members"], spec["weights"])}
        wanted = [os.path.realpath(d) for d in dirs]
        missing = [d for d, real in zip(dirs, wanted) if real not in by_dir]
        extra = sorted(set(by_dir) - set(wanted))
        if missing or extra:
            detail = (f"{missing[0]} has no weight" if missing
                      else f"it weighs {extra[0]}, which is not in --model_dirs")
            raise UserError(f"--weights_file={weights_file}: its members differ from "
                            f"--model_dirs ({detail})")
        return dirs, normalise_weights([by_dir[real] for real in wanted],
                                       f"--weights_file={weights_file}")
    if not dirs:
        raise UserError("--model_dirs: required (or --weights_file)")
    if not weights:
        return dirs, [1.0 / len(dirs)] * len(dirs)
    try:
        values = [float(w) for w in weights.split(",") if w.strip()]
    except ValueError:
        raise UserError(f"--weights: not a comma-separated list of numbers: {weights!r}") \
            from None
    if len(values) != len(dirs):
        raise UserError(f"--weights: {len(values)} weights for {len(dirs)} --model_dirs")
    return dirs, normalise_weights(values)


# ---------------------------------------------------------------------------
# Graph


@dataclass
class EnsembleGraph:
    input_batch_raw: tf.Tensor
    num_frames: tf.Tensor
    predictions: tf.Tensor
    member_predictions: List[tf.Tensor]          # [B, C] each (mean over its tiles)
    member_tiles: List[Optional[tf.Tensor]]      # [T, B, C] for tiled members, else None
    tiled: List[bool]
    scopes: List[str]
    restore_maps: List[Dict[str, tf.Variable]] = field(default_factory=list)
    stored_bf16: List[bool] = field(default_factory=list)   # float32 vars, bf16 on disk
    shared: List[bool] = field(default_factory=list)        # tiled with shared frame work
    bf16_compute: str = bf16.DEFAULT_BF16_COMPUTE

    @property
    def variables(self) -> List[tf.Variable]:
        return [var for mapping in self.restore_maps for var in mapping.values()]

    def saver_map(self, index: int) -> Dict[str, Any]:
        """Member index's {checkpoint key: variable or BFloat16StorageSaveable}."""
        mapping = self.restore_maps[index]
        if self.stored_bf16 and self.stored_bf16[index]:
            return bf16.bfloat16_storage_saveables(mapping)
        return dict(mapping)

    @property
    def export_var_list(self) -> List[Any]:
        """What the export Saver writes under the graph names (model<i>/...):
        the variables, cast_at_load members' through BFloat16StorageSaveable
        so that they stay bf16 on disk."""
        out: List[Any] = []
        for index, mapping in enumerate(self.restore_maps):
            stored = bool(self.stored_bf16 and self.stored_bf16[index])
            for var in mapping.values():
                if stored and var.dtype.base_dtype == tf.float32:
                    out.append(bf16.BFloat16StorageSaveable(var, var.op.name))
                else:
                    out.append(var)
        return out


def _build_model(member: Member, frame_sampling: Optional[str]):
    try:
        return model_builder.build_model(member.model_flags, {"frame_sampling": frame_sampling})
    except (KeyError, ValueError) as err:
        text = err.args[0] if err.args else str(err)
        raise UserError(f"{os.path.join(member.model_dir, checkpoints.MODEL_FLAGS_FILE)}: "
                        f"{text}") from None


def build_ensemble_graph(members: Sequence[Member], weights: Sequence[float], tile_num: int,
                         frame_sampling: Optional[str] = None,
                         scopes: Optional[Sequence[str]] = None,
                         force_tile: bool = False, shared_frame_work: bool = True,
                         bf16_compute: Optional[str] = None) -> EnsembleGraph:
    """Adds the ensemble to the default graph (see the module docstring).

    scopes: variable scope per member (default model0, model1, ...; the
    single-model inference uses ["tower"]). force_tile tiles every member,
    deterministic ones too (only to show that it changes nothing for them).
    shared_frame_work: tiled members that support it (FrameModel.
    supports_shared_frame_work) compute their per-frame work once
    (predict_tiles) instead of running on the tiled input. bf16_compute: how
    bfloat16 members compute (None: bf16.DEFAULT_BF16_COMPUTE).
    Adds the collections input_batch_raw, num_frames and predictions.
    """
    bf16_compute = bf16.check_bf16_compute(bf16_compute)
    if tile_num < 1:
        raise UserError(f"--tile_num: must be >= 1, got {tile_num}")
    if len(weights) != len(members):
        raise ValueError(f"{len(members)} members but {len(weights)} weights")
    if frame_sampling is not None and frame_sampling not in ("random", "uniform", "none"):
        raise UserError(f"--frame_sampling: random, uniform or none, got {frame_sampling!r}")
    check_members_agree(members)
    scopes = list(scopes) if scopes is not None else [f"model{i}" for i in range(len(members))]
    signature = _feature_signature(members[0].model_flags)
    num_classes = signature["num_classes"]
    feature_size = sum(signature["feature_sizes"])
    if signature["frame_features"]:
        shape = [None, readers.MAX_FRAMES, feature_size]
    else:
        shape = [None, feature_size]
    input_raw = tf.placeholder(tf.float32, shape, name="input_batch_raw")
    num_frames = tf.placeholder(tf.int32, [None], name="num_frames")
    batch_size = tf.shape(input_raw)[0]

    models = [_build_model(member, frame_sampling) for member in members]
    tiled = [tile_num > 1 and (force_tile or bool(model.samples_frames_randomly))
             for model in models]
    shared = [tile and shared_frame_work and bool(model.supports_shared_frame_work)
              and len(shape) == 3 for model, tile in zip(models, tiled)]
    tiled_raw = tiled_frames = None
    if any(tile and not share for tile, share in zip(tiled, shared)):
        with tf.name_scope("tile"):
            multiples = [tile_num] + [1] * (len(shape) - 1)
            tiled_raw = tf.tile(input_raw, multiples, name="input_batch_raw")
            tiled_frames = tf.tile(num_frames, [tile_num], name="num_frames")

    member_predictions, member_tiles = [], []
    for member, model, scope, tile, share in zip(members, models, scopes, tiled, shared):
        with tf.variable_scope(scope, custom_getter=member.getter_for(bf16_compute)):
            try:
                if share:
                    flat = model_builder.model_tile_predictions(model, input_raw, num_frames,
                                                                tile_num)
                    copies = tf.reshape(flat, [tile_num, batch_size, num_classes],
                                        name="tiles")
                    member_tiles.append(copies)
                    prediction = tf.reduce_mean(copies, axis=0, name="tile_mean")
                elif tile:
                    flat = model_builder.model_predictions(model, tiled_raw, tiled_frames,
                                                           is_training=False)
                    copies = tf.reshape(flat, [tile_num, batch_size, num_classes],
                                        name="tiles")
                    member_tiles.append(copies)
                    prediction = tf.reduce_mean(copies, axis=0, name="tile_mean")
                else:
                    prediction = model_builder.model_predictions(model, input_raw, num_frames,
                                                                 is_training=False)
                    member_tiles.append(None)
            except ValueError as err:
                raise UserError(f"{member.model_dir}: {err}") from None
        member_predictions.append(prediction)

    with tf.name_scope("ensemble"):
        if len(members) == 1 and abs(weights[0] - 1.0) < 1e-12:
            combined = member_predictions[0]
        else:
            combined = tf.add_n([tf.constant(float(w), tf.float32) * p
                                 for w, p in zip(weights, member_predictions)])
    predictions = tf.identity(combined, name="predictions")

    restore_maps = []
    for member, scope in zip(members, scopes):
        variables = model_builder.model_variables(scope)
        restore_maps.append({checkpoints.MODEL_SCOPE + "/" + var.op.name[len(scope) + 1:]: var
                             for var in variables})
    for name, tensor in (("input_batch_raw", input_raw), ("num_frames", num_frames),
                         ("predictions", predictions)):
        tf.add_to_collection(name, tensor)
    return EnsembleGraph(input_raw, num_frames, predictions, member_predictions, member_tiles,
                         tiled, scopes, restore_maps,
                         [member.stored_bf16_in(bf16_compute) for member in members], shared,
                         bf16_compute)


# ---------------------------------------------------------------------------
# Loading the members


def check_member_checkpoint(member: Member, restore_map: Mapping[str, tf.Variable],
                            stored_bf16: bool = False) -> None:
    """One-line UserError, naming the member dir and the variable, when the
    checkpoint cannot fill the graph's variables exactly. stored_bf16: the
    graph's float32 variables are read from bf16 tensors (cast_at_load)."""
    try:
        reader = tf.train.load_checkpoint(member.checkpoint)
    except (tf.errors.OpError, ValueError) as err:
        raise UserError(f"{member.model_dir}: cannot read {member.checkpoint} "
                        f"({str(err).strip().splitlines()[0]})") from None
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    for key in sorted(restore_map):
        var = restore_map[key]
        if key not in shapes:
            raise UserError(f"{member.model_dir}: checkpoint {os.path.basename(member.checkpoint)} "
                            f"lacks variable {key} that model {member.name} of its "
                            f"{checkpoints.MODEL_FLAGS_FILE} needs")
        graph_shape = var.shape.as_list()
        if list(shapes[key]) != graph_shape:
            raise UserError(f"{member.model_dir}: variable {key} has shape {list(shapes[key])} "
                            f"in {os.path.basename(member.checkpoint)} but {graph_shape} in the "
                            f"model its {checkpoints.MODEL_FLAGS_FILE} describes")
        stored, wanted = tf.as_dtype(dtypes[key]).base_dtype, var.dtype.base_dtype
        if stored_bf16 and wanted == tf.float32:
            wanted = tf.bfloat16
        if stored != wanted:
            raise UserError(f"{member.model_dir}: variable {key} is {stored.name} in "
                            f"{os.path.basename(member.checkpoint)} but {wanted.name} in the "
                            f"graph")
    extra = sorted(set(checkpoints.model_variable_keys(shapes)) - set(restore_map))
    if extra:
        raise UserError(f"{member.model_dir}: checkpoint {os.path.basename(member.checkpoint)} "
                        f"holds variable {extra[0]} ({len(extra)} in all) that model "
                        f"{member.name} of its {checkpoints.MODEL_FLAGS_FILE} does not create")


def member_savers(members: Sequence[Member], graph: EnsembleGraph) -> List[tf.train.Saver]:
    """One name-mapping Saver per member (call in the graph, before finalising)."""
    for index, (member, mapping) in enumerate(zip(members, graph.restore_maps)):
        check_member_checkpoint(member, mapping,
                                bool(graph.stored_bf16 and graph.stored_bf16[index]))
    return [tf.train.Saver(graph.saver_map(index), name=f"restore_{scope}", sharded=False)
            for index, scope in enumerate(graph.scopes)]


def restore_members(sess: tf.Session, members: Sequence[Member],
                    savers: Sequence[tf.train.Saver], log: Log = None) -> None:
    for member, saver in zip(members, savers):
        try:
            saver.restore(sess, member.checkpoint)
        except tf.errors.OpError as err:
            raise UserError(f"{member.model_dir}: cannot restore {member.checkpoint} "
                            f"({str(err).strip().splitlines()[0]})") from None
        if log:
            log(f"restored {member.checkpoint}")


# ---------------------------------------------------------------------------
# Export


def export_files(directory: str) -> List[str]:
    """The inference_model.* files of a dir (what the upload must hold)."""
    if not os.path.isdir(directory):
        return []
    return sorted(os.path.join(directory, name) for name in os.listdir(directory)
                  if name.startswith(INFERENCE_MODEL + "."))


def exported_bytes(directory: str) -> int:
    return sum(os.path.getsize(path) for path in export_files(directory))


def export_model(sess: tf.Session, directory: str, variables: Sequence[Any]) -> int:
    """Writes inference_model.{data-00000-of-00001,index,meta} (+ `checkpoint`)
    into directory; returns the bytes of the inference_model.* files.

    The Saver holds the model variables only (no global_step; pass
    EnsembleGraph.export_var_list, whose BFloat16StorageSaveables keep
    cast_at_load members bf16 on disk); the MetaGraph is that of the
    session's graph without the members' loading savers.
    """
    prefix = os.path.join(directory, INFERENCE_MODEL)
    # Saver.export_meta_graph exports the *default* graph: make it the session's.
    with sess.graph.as_default():
        saver = tf.train.Saver(list(variables), name="save", sharded=False,
                               save_relative_paths=True, write_version=tf.train.SaverDef.V2)
        saver.save(sess, prefix, write_meta_graph=False, write_state=True)
        saver.export_meta_graph(prefix + ".meta", clear_devices=True,
                                clear_extraneous_savers=True)
    return exported_bytes(directory)


def ensemble_model_flags(members: Sequence[Member]) -> Dict[str, Any]:
    first = members[0].model_flags
    flags_out = {key: first[key] for key in MATCH_KEYS}
    flags_out["model"] = ENSEMBLE_MODEL_NAME
    flags_out["label_loss"] = first.get("label_loss", "CrossEntropyLoss")
    return flags_out


def _limit_text(limit: int) -> str:
    return f"{limit:,}-byte" + (" (1 GiB)" if limit == 1 << 30 else "")


def format_size(num_bytes: int, limit: Optional[int] = None) -> str:
    limit = limit or SIZE_LIMIT_BYTES
    return (f"{num_bytes:,} bytes ({num_bytes / 1e6:.2f} MB, {num_bytes / 2**20:.2f} MiB) "
            f"of the {_limit_text(limit)} limit, {100.0 * num_bytes / limit:.1f}%")


def _check_output_dir(output_dir: str, member_dirs: Sequence[str], overwrite: bool) -> None:
    target = os.path.realpath(output_dir)
    for member in member_dirs:
        real = os.path.realpath(member)
        if real == target or real.startswith(target + os.sep):
            raise UserError(f"--output_dir={output_dir}: holds member {member}; choose "
                            f"another dir")
    if os.path.exists(output_dir):
        if not overwrite:
            raise UserError(f"--output_dir={output_dir}: exists; choose another or pass "
                            f"--overwrite")
        if not os.path.isdir(output_dir):
            raise UserError(f"--output_dir={output_dir}: exists and is not a dir")
        if os.listdir(output_dir) and not os.path.isfile(
                os.path.join(output_dir, ENSEMBLE_JSON)):
            raise UserError(f"--output_dir={output_dir}: not an ensemble dir (no "
                            f"{ENSEMBLE_JSON}); refusing to replace it")


def build_and_export(member_dirs: Sequence[str], weights: Sequence[float], output_dir: str,
                     tile_num: int = 10, seed: int = 666, overwrite: bool = False,
                     allow_oversize: bool = False, frame_sampling: Optional[str] = None,
                     log: Log = print, size_limit_bytes: Optional[int] = None,
                     shared_frame_work: bool = True, bf16_compute: Optional[str] = None
                     ) -> Dict[str, Any]:
    """Builds the ensemble of member_dirs, exports it to output_dir; returns
    the ensemble.json payload. size_limit_bytes: default SIZE_LIMIT_BYTES."""
    log = log or (lambda line: None)
    if size_limit_bytes is not None and size_limit_bytes <= 0:
        raise UserError(f"--size_limit_bytes: must be positive, got {size_limit_bytes}")
    limit = size_limit_bytes or SIZE_LIMIT_BYTES
    if not output_dir:
        raise UserError("--output_dir: required")
    if len(weights) != len(member_dirs):
        raise UserError(f"--weights: {len(weights)} weights for {len(member_dirs)} members")
    weights = normalise_weights(weights)
    bf16_compute = bf16.check_bf16_compute(bf16_compute)
    check_no_duplicates(member_dirs)
    _check_output_dir(output_dir, member_dirs, overwrite)
    members = [load_member(d) for d in member_dirs]
    check_members_agree(members)

    graph = tf.Graph()
    with graph.as_default():
        tf.set_random_seed(seed)
        ensemble = build_ensemble_graph(members, weights, tile_num, frame_sampling,
                                        shared_frame_work=shared_frame_work,
                                        bf16_compute=bf16_compute)
        savers = member_savers(members, ensemble)
    for index, (member, weight, tile) in enumerate(zip(members, weights, ensemble.tiled)):
        count = sum(int(var.shape.num_elements()) for var in ensemble.restore_maps[index].values())
        log(f"model{index}: {member.model_dir} ({member.name}, {member.dtype}, "
            f"{count:,} values, weight {weight:.4f}, "
            f"{f'tiled x{tile_num}' if tile else 'not tiled'}"
            f"{', shared frame work' if ensemble.shared[index] else ''})")

    start = time.time()
    with checkpoints.atomic_directory(output_dir, overwrite) as tmp_dir:
        with tf.Session(graph=graph) as sess:
            restore_members(sess, members, savers, log)
            size = export_model(sess, tmp_dir, ensemble.export_var_list)
        checkpoints.write_model_flags(tmp_dir, ensemble_model_flags(members))
        payload = {
            "members": [m.model_dir for m in members],
            "weights": list(weights),
            "tile_num": int(tile_num),
            "tiled": list(ensemble.tiled),
            "scopes": list(ensemble.scopes),
            "models": [m.name for m in members],
            "checkpoints": [m.checkpoint for m in members],
            "checkpoint_dtypes": [m.dtype for m in members],
            "frame_sampling": frame_sampling,
            "shared_frame_work": list(ensemble.shared),
            "bf16_compute": bf16_compute,
            "seed": int(seed),
            "exported_bytes": int(size),
            "size_limit_bytes": limit,
        }
        checkpoints.write_json(os.path.join(tmp_dir, ENSEMBLE_JSON), payload)
        log(f"exported size: {format_size(size, limit)}")
        if size > limit and not allow_oversize:
            raise UserError(f"--output_dir={output_dir}: the export is {size:,} bytes, over the "
                            f"{_limit_text(limit)} limit; convert the members to "
                            f"bfloat16, drop members, or pass --allow_oversize")
    log(f"wrote {os.path.abspath(output_dir)} ({len(members)} member(s), "
        f"{time.time() - start:.1f}s)")
    return payload


# ---------------------------------------------------------------------------
# Command line


def main(argv) -> None:
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    member_dirs, weights = resolve_members_and_weights(FLAGS.model_dirs, FLAGS.weights,
                                                       FLAGS.weights_file)
    if FLAGS.eval_data_pattern:
        readers.resolve_files(FLAGS.eval_data_pattern, "eval_data_pattern")
    log = lambda line: print(line, flush=True)  # noqa: E731
    build_and_export(member_dirs, weights, FLAGS.output_dir, FLAGS.tile_num, FLAGS.seed,
                     FLAGS.overwrite, FLAGS.allow_oversize, FLAGS.frame_sampling, log=log,
                     size_limit_bytes=FLAGS.size_limit_bytes,
                     shared_frame_work=FLAGS.shared_frame_work,
                     bf16_compute=FLAGS.bf16_compute)
    if FLAGS.eval_data_pattern:
        from ensemble import inference
        from training import metrics

        result = inference.evaluate_model_dir(FLAGS.output_dir, FLAGS.eval_data_pattern,
                                              FLAGS.batch_size, FLAGS.top_k,
                                              FLAGS.num_readers, log=log)
        print(metrics.format_summary(result, "ensemble"), flush=True)
        checkpoints.write_json(os.path.join(FLAGS.output_dir, EVAL_RESULTS),
                               {key: float(value) for key, value in result.items()})


if __name__ == "__main__":
    define_flags()
    run_main(main)
