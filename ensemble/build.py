"""Builds the tiled ensemble and exports it for Kaggle:
python -m ensemble.build --model_dirs=A,B,... --output_dir=E [--tile_num=10]

The re-implementation of ``multi_ensemble_tile.py`` (docs/original.md 6.1-6.4;
docs/architecture.md "The ensemble graph" has the whole picture). Each of
--model_dirs is a model dir of this pipeline (train, SWA or bfloat16 dir);
member i is built from its model_flags.json under the scope ``model<i>``
(training.member_graph), frame-sampling members see --tile_num independent
draws per video, and the prediction is the weighted *mean* of the members
(uniform, --weights, or --weights_file from stacking). bfloat16 members
compute as --bf16_compute says and stay bfloat16 in the export.

Export (into --output_dir, atomically; an existing dir is replaced only with
--overwrite and only when it is an ensemble dir): inference_model.* (loadable
as the starter inference.py loads it), checkpoint, model_flags.json (the
members' feature keys, "model": "ensemble"), ensemble.json (members, weights,
tiling, dtypes, exported bytes) and, with --eval_data_pattern,
eval_results.json. An export over --size_limit_bytes (1 GiB) is an error
unless --allow_oversize.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import List, Optional, Sequence, Tuple

from absl import flags

from ensemble import export
from models.tf_compat import tf
from training import (
    checkpoints,
    eval_results,
    member_graph,
    precision,
    predict,
    quantize,
    readers,
    stage_files,
)
from training import flags as shared_flags
from training.cli import UserError, run_main
from training.members import (
    Member,
    check_dir_records,
    check_members_agree,
    check_no_duplicates,
    load_member,
)
from training.model_flags import ModelFlags
from training.progress import Log
from training.stage_files import EnsembleRecord
from training.submission import DEFAULT_TOP_K
from training.weights_file import normalise_weights, read_weights_file

FLAGS = flags.FLAGS

ENSEMBLE_JSON = EnsembleRecord.FILE_NAME
EVAL_RESULTS = eval_results.EVAL_RESULTS
ENSEMBLE_MODEL_NAME = "ensemble"



def define_flags() -> None:
    shared_flags.define_shared_flags({
        "model_dirs": "", "tile_num": 10, "output_dir": ("", "The ensemble dir."),
        "overwrite": False, "eval_data_pattern": ("", "Evaluate the export on them."),
        "seed": 666, "frame_sampling": None, "batch_size": (64, "(evaluation)"),
        "top_k": DEFAULT_TOP_K, "num_readers": 2, "compression": "auto",
        "bf16_compute": (None, "The export stays bf16 (or int8) on disk in every mode."),
        "target_bytes": (None, "(of the whole export: inference_model.*)"),
        "int8_min_values": quantize.DEFAULT_MIN_VALUES})
    define = shared_flags.define
    define(flags.DEFINE_string, "weights", "", "Comma-separated member weights, in "
           "--model_dirs order (default: uniform).")
    shared_flags.define_shared("weights_file", "")
    define(flags.DEFINE_bool, "allow_oversize", False, "Keep an export larger than "
           "--size_limit_bytes.")
    define(flags.DEFINE_integer, "size_limit_bytes", None, "Upload size limit of the export "
           "(default: 1 GiB = 1073741824 bytes, the challenge's).")
    define(flags.DEFINE_bool, "shared_frame_work", True, "Tiled members compute their "
           "per-frame work once per video and aggregate it per tile with draw counts "
           "(false: run the member on the tiled input, as the original).")


# ---------------------------------------------------------------------------
# Members and weights from the flags


def _weights_from_file(dirs: List[str], weights_file: str) -> Tuple[List[str], List[float]]:
    spec = read_weights_file(weights_file)
    what = f"--weights_file={weights_file}"
    if not dirs:
        for member in spec.members:
            if not os.path.isdir(member):
                raise UserError(f"{what}: member {member}: no such model dir")
        return list(spec.members), normalise_weights(spec.weights, what)
    by_dir = {os.path.realpath(m): w for m, w in zip(spec.members, spec.weights)}
    wanted = [os.path.realpath(d) for d in dirs]
    missing = [d for d, real in zip(dirs, wanted) if real not in by_dir]
    extra = sorted(set(by_dir) - set(wanted))
    if missing or extra:
        detail = (f"{missing[0]} has no weight" if missing
                  else f"it weighs {extra[0]}, which is not in --model_dirs")
        raise UserError(f"{what}: its members differ from --model_dirs ({detail})")
    return dirs, normalise_weights([by_dir[real] for real in wanted], what)


def resolve_members_and_weights(model_dirs: str, weights: str, weights_file: str
                                ) -> Tuple[List[str], List[float]]:
    """-> (member dirs, normalised weights) from the three flags."""
    dirs = shared_flags.comma_list(model_dirs)
    if weights and weights_file:
        raise UserError("--weights and --weights_file: give one, not both")
    if weights_file:
        return _weights_from_file(dirs, weights_file)
    if not dirs:
        raise UserError("--model_dirs: required (or --weights_file)")
    if not weights:
        return dirs, [1.0 / len(dirs)] * len(dirs)
    values = shared_flags.comma_numbers(weights, "weights")
    if len(values) != len(dirs):
        raise UserError(f"--weights: {len(values)} weights for {len(dirs)} --model_dirs")
    return dirs, normalise_weights(values)


# ---------------------------------------------------------------------------
# Export


def ensemble_model_flags(members: Sequence[Member]) -> ModelFlags:
    """The ensemble dir's model_flags.json: the members' features, record
    kind and classes (MATCH_KEYS) and label loss; no hyper-parameters, no
    storage marker (record_kind written only when the members' file has it)."""
    first = members[0].model_flags
    return ModelFlags(model=ENSEMBLE_MODEL_NAME, feature_names=first.feature_names,
                      feature_sizes=first.feature_sizes, frame_features=first.frame_features,
                      num_classes=first.num_classes, label_loss=first.label_loss,
                      record_kind=first.record_kind)


def _check_output_dir(output_dir: str, member_dirs: Sequence[str], overwrite: bool) -> None:
    shared_flags.require(output_dir=output_dir)
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


def _describe_members(members, weights, ensemble, tile_num: int, log) -> None:
    for index, (member, weight, part) in enumerate(zip(members, weights, ensemble.members)):
        count = sum(int(var.shape.num_elements()) for var in part.restore_map.values())
        log(f"model{index}: {member.model_dir} ({member.name}, {member.dtype}, "
            f"{count:,} values, weight {weight:.4f}, "
            f"{f'tiled x{tile_num}' if part.tiled else 'not tiled'}"
            f"{', shared frame work' if part.shared else ''})")


@dataclasses.dataclass(frozen=True)
class _Settings:
    """What ensemble.json records of how the ensemble was asked for."""
    weights: Sequence[float]
    tile_num: int
    frame_sampling: Optional[str]
    seed: int
    target_bytes: Optional[int]
    provenance: Sequence[stage_files.Provenance]


def _ensemble_record(members, ensemble, settings: _Settings, size: int, limit: int
                     ) -> EnsembleRecord:
    """ensemble.json; its provenance: every choice behind the members and
    the weights (stage_files.provenance_of), when there is one."""
    provenance = stage_files.merge_provenance(
        *(stage_files.provenance_of(m.model_dir) for m in members), settings.provenance)
    return EnsembleRecord(
        members=tuple(m.model_dir for m in members), weights=tuple(settings.weights),
        tile_num=settings.tile_num, tiled=tuple(p.tiled for p in ensemble.members),
        scopes=tuple(p.scope for p in ensemble.members), models=tuple(m.name for m in members),
        checkpoints=tuple(m.checkpoint for m in members),
        checkpoint_dtypes=tuple(m.dtype for m in members),
        frame_sampling=settings.frame_sampling,
        shared_frame_work=tuple(p.shared for p in ensemble.members),
        bf16_compute=ensemble.bf16_compute,
        int8=tuple(tuple(sorted(p.int8_scales)) for p in ensemble.members),
        target_bytes=settings.target_bytes, seed=settings.seed,
        exported_bytes=int(size), size_limit_bytes=limit, provenance=provenance or None)


def _write_export(graph, members, savers, ensemble, output_dir: str, overwrite: bool,
                  settings: _Settings, limit: int, allow_oversize: bool, log
                  ) -> EnsembleRecord:
    with checkpoints.atomic_directory(output_dir, overwrite) as tmp_dir:
        with tf.Session(graph=graph) as sess:
            member_graph.restore_members(sess, members, savers, log)
            member_graph.quantize_in_session(sess, ensemble)
            size = export.export_model(sess, tmp_dir, ensemble.export_var_list)
        checkpoints.write_model_flags(tmp_dir, ensemble_model_flags(members))
        payload = _ensemble_record(members, ensemble, settings, size, limit)
        stage_files.write_in(tmp_dir, payload)
        log(f"exported size: {export.format_size(size, limit)}")
        target = settings.target_bytes
        if target and size > target:
            raise UserError(f"--target_bytes={target}: the export is {size:,} bytes (the meta "
                            f"graph is larger than planned); lower --target_bytes")
        if size > limit and not allow_oversize:
            raise UserError(f"--output_dir={output_dir}: the export is {size:,} bytes, over the "
                            f"{export.limit_text(limit)} limit; convert the members to "
                            f"bfloat16, drop members, or pass --allow_oversize")
    return payload


# The export's bytes besides the variables: the meta graph as measured before
# the plan, plus an allowance per variable for the save and restore ops the
# export adds (int8 ones included) and its index entry.
META_BYTES_PER_VARIABLE = 3072
META_MARGIN_BYTES = 1 << 14


def _add_int8_for_target(graph, ensemble, target_bytes: int, min_values: int, log) -> None:
    """Plans and adds the int8 matrices that bring the export under target_bytes."""
    fixed = (graph.as_graph_def().ByteSize() + META_MARGIN_BYTES
             + META_BYTES_PER_VARIABLE * len(ensemble.variables))
    chosen = ensemble.plan_int8(target_bytes, min_values, fixed)
    for index, key in chosen:
        part = ensemble.members[index]
        before = part.stored_bytes(key)
        part.add_int8([key])
        log(f"int8: {part.scope} {key} {before:,} -> {part.stored_bytes(key):,} bytes")
    if not chosen:
        log(f"int8: no matrix needed for --target_bytes={target_bytes}")


def build_and_export(member_dirs: Sequence[str], weights: Sequence[float], output_dir: str,
                     tile_num: int = 10, seed: int = 666, overwrite: bool = False,
                     allow_oversize: bool = False, frame_sampling: Optional[str] = None,
                     log: Optional[Log] = print, size_limit_bytes: Optional[int] = None,
                     shared_frame_work: bool = True, bf16_compute: Optional[str] = None,
                     target_bytes: Optional[int] = None,
                     int8_min_values: int = quantize.DEFAULT_MIN_VALUES,
                     provenance: Sequence[stage_files.Provenance] = ()) -> EnsembleRecord:
    """Builds the ensemble of member_dirs, exports it to output_dir; returns
    its ensemble.json record. size_limit_bytes: default 1 GiB; target_bytes:
    store the fewest, largest matrices as int8 that bring the export under it.
    provenance: the choices behind the weights (their --weights_file's)."""
    log = log or (lambda line: None)
    for flag, value in (("size_limit_bytes", size_limit_bytes), ("target_bytes", target_bytes),
                        ("int8_min_values", int8_min_values)):
        if value is not None and value <= 0:
            raise UserError(f"--{flag}: must be positive, got {value}")
    limit = size_limit_bytes or export.SIZE_LIMIT_BYTES
    if len(weights) != len(member_dirs):
        raise UserError(f"--weights: {len(weights)} weights for {len(member_dirs)} members")
    weights = normalise_weights(weights)
    bf16_compute = precision.check_bf16_compute(bf16_compute)
    check_no_duplicates(member_dirs)
    _check_output_dir(output_dir, member_dirs, overwrite)
    members = [load_member(d) for d in member_dirs]
    check_members_agree(members)
    graph = tf.Graph()
    with graph.as_default():
        tf.set_random_seed(seed)
        ensemble = member_graph.build_ensemble_graph(
            members, weights, tile_num, frame_sampling, shared_frame_work=shared_frame_work,
            bf16_compute=bf16_compute)
        if target_bytes is not None:
            _add_int8_for_target(graph, ensemble, target_bytes, int8_min_values, log)
        savers = member_graph.member_savers(members, ensemble)
    _describe_members(members, weights, ensemble, tile_num, log)
    start = time.time()
    settings = _Settings(weights=weights, tile_num=int(tile_num), frame_sampling=frame_sampling,
                         seed=int(seed), target_bytes=target_bytes, provenance=provenance)
    payload = _write_export(graph, members, savers, ensemble, output_dir, overwrite, settings,
                            limit, allow_oversize, log)
    log(f"wrote {os.path.abspath(output_dir)} ({len(members)} member(s), "
        f"{time.time() - start:.1f}s)")
    return payload


# ---------------------------------------------------------------------------
# Command line


def main(argv) -> None:
    del argv
    member_dirs, weights = resolve_members_and_weights(FLAGS.model_dirs, FLAGS.weights,
                                                       FLAGS.weights_file)
    if FLAGS.eval_data_pattern:
        files = readers.resolve_files(FLAGS.eval_data_pattern, "eval_data_pattern")
        check_dir_records(member_dirs[0], files, "eval_data_pattern", "evaluation",
                          FLAGS.compression)
    log = lambda line: print(line, flush=True)  # noqa: E731
    build_and_export(member_dirs, weights, FLAGS.output_dir, FLAGS.tile_num, FLAGS.seed,
                     FLAGS.overwrite, FLAGS.allow_oversize, FLAGS.frame_sampling, log=log,
                     size_limit_bytes=FLAGS.size_limit_bytes,
                     shared_frame_work=FLAGS.shared_frame_work,
                     bf16_compute=FLAGS.bf16_compute, target_bytes=FLAGS.target_bytes,
                     int8_min_values=FLAGS.int8_min_values,
                     provenance=(stage_files.provenance_of(FLAGS.weights_file)
                                 if FLAGS.weights_file else ()))
    if FLAGS.eval_data_pattern:
        result = predict.evaluate_model_dir(FLAGS.output_dir, FLAGS.eval_data_pattern,
                                            FLAGS.batch_size, FLAGS.top_k,
                                            FLAGS.num_readers, log=log,
                                            compression=FLAGS.compression, keep_videos=True)
        print(result.summary("ensemble"), flush=True)
        measured = eval_results.measurement(
            os.path.join(FLAGS.output_dir, predict.INFERENCE_MODEL), FLAGS.eval_data_pattern,
            frame_sampling=FLAGS.frame_sampling, seed=FLAGS.seed, top_k=FLAGS.top_k,
            bf16_compute=FLAGS.bf16_compute)
        eval_results.record(FLAGS.output_dir, measured, result, len(files))


if __name__ == "__main__":
    define_flags()
    run_main(main)
