"""Every stage of the pipeline as a record: the one home of "what is a stage".

A stage is one step a user runs: its package (a stage package, or the shared
layer ``training`` for the trainer, the evaluator and the data writers), its
entry points (``python -m <module>``), its scripts in run_scripts/, and the
stage files it reads and writes (docs/architecture.md "Stage contracts"). A
file named by a flag is a short name plus the flag ("weights file
(--output_file)").

The lists that used to repeat the stages derive from ``STAGES``: the layering
test's stage packages, the fuzz and path-flag tables' entry points, ruff's
known-first-party (checked), and docs/architecture.md's stage table, which
``python -m training.stage_registry`` prints. Pure data: no TensorFlow, no
project import. A name, entry point or script used twice, or an entry point
outside its package, is an error at import.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Dict, List, Sequence, Tuple

# The layer whose entry points are stages too (trainer, evaluator, data writers).
SHARED_LAYER = "training"


@dataclasses.dataclass(frozen=True)
class Stage:
    """One step of the pipeline; entry points are module names, run scripts
    file names in run_scripts/, reads and writes stage file names."""
    name: str
    package: str
    summary: str
    entry_points: Tuple[str, ...]
    run_scripts: Tuple[str, ...] = ()
    reads: Tuple[str, ...] = ()
    writes: Tuple[str, ...] = ()


# The files of a model dir's checkpoint (a train, SWA, bf16 or int8 dir).
_CHECKPOINT = ("model.ckpt-<step>", "checkpoint", "model_flags.json")
# An evaluation's records (training.eval_results, both kinds).
_EVALUATIONS = ("eval_results.json", "eval_videos/<digest>.npz")
_SEGMENT_EVALUATIONS = ("segment_eval_results.json", "segment_eval_ratings/<digest>.npz")
_EXPORT = ("inference_model.{meta,index,data-00000-of-00001}",)
_TRAIN_DIR = _CHECKPOINT + ("events", "graph.pbtxt")
# The records of a stage dir that carry provenance (training.stage_files): the
# choices behind a dir, which the reports check against the files they measure.
_PROVENANCE = ("swa.json", "finetune.json", "bfloat16.json", "ensemble.json")
# The six model scripts (models.presets.ENSEMBLE; another preset runs through train_model.sh).
_MODEL_SCRIPTS = ("nonlocal-NetVLADModel.sh", "nonlocal-LightNetVLADModel.sh",
                  "nonlocal-earlyNetVLADModel.sh", "Soft-DBoF-4k.sh", "Soft-DBoF-8k.sh",
                  "GRUModel.sh")

STAGES: Tuple[Stage, ...] = (
    Stage("synthetic data", SHARED_LAYER, "synthetic 2018 and 2019 records, frames from "
          "real video-level records",
          ("training.synthetic", "training.synthetic_segments", "training.frames_from_videos"),
          reads=("video-level records (--input_pattern)",),
          writes=("records (--output_dir)",)),
    Stage("train", SHARED_LAYER, "trains one model (resumes its train dir)",
          ("training.train",), ("train_model.sh",) + _MODEL_SCRIPTS + ("distributed_local.sh",),
          reads=("records (--train_data_pattern)",) + _CHECKPOINT,
          writes=_TRAIN_DIR),
    Stage("eval", SHARED_LAYER, "evaluates checkpoints or an export, video level or on "
          "2019 segments", ("training.eval",),
          reads=_CHECKPOINT + _EXPORT + ("swa.json", "eval_results.json",
                                         "segment_eval_results.json",
                                         "records (--eval_data_pattern)",
                                         "records (--train_data_pattern)"),
          writes=_EVALUATIONS + _SEGMENT_EVALUATIONS + ("events",)),
    Stage("SWA", "swa", "averages a train dir's late checkpoints", ("swa.average",),
          ("swa.sh",),
          reads=_CHECKPOINT + ("finetune.json", "records (--train_data_pattern)",
                               "records (--choose_window_on)", "records (--eval_data_pattern)"),
          writes=_CHECKPOINT + ("swa.json",) + _EVALUATIONS + _SEGMENT_EVALUATIONS),
    Stage("bfloat16", "bfloat16_patch", "converts a checkpoint to bfloat16 or int8",
          ("bfloat16_patch.convert",), ("bfloat16.sh",),
          reads=_CHECKPOINT + ("swa.json", "finetune.json"),
          writes=_CHECKPOINT + ("swa.json", "finetune.json", "bfloat16.json")),
    Stage("ensemble build", "ensemble", "the tiled ensemble, exported",
          ("ensemble.build",), ("multi_ensemble_tile.sh",),
          reads=_CHECKPOINT + _PROVENANCE + ("weights file (--weights_file)",
                                             "records (--eval_data_pattern)"),
          writes=_EXPORT + ("checkpoint", "model_flags.json", "ensemble.json")
          + _EVALUATIONS),
    Stage("inference", "ensemble", "the submission CSV (sharded: parts, their merge), "
          "its check", ("ensemble.inference", "ensemble.merge", "ensemble.check_submission"),
          ("ensemble_infer.sh",),
          reads=_EXPORT + _CHECKPOINT + ("upload (--input_model_tgz)",
                                         "records (--input_data_pattern)",
                                         "label names (--label_names)",
                                         "class ids (--segment_label_ids_file)",
                                         "submission CSV (--submission)"),
          writes=("submission CSV (--output_file)", "parts (<output_file>.parts/<file>.json)",
                  "top-5 TSV (<output_file>.top5.tsv)", "upload (--output_model_tgz)")),
    Stage("segment submission", "ensemble", "checks a 2019 segment submission (or merges "
          "its parts first)", ("ensemble.segment_submission",),
          reads=("segment submission CSV (--submission)",
                 "class ids (--segment_label_ids_file)",
                 "parts (<merge_output_file>.parts/)"),
          writes=("segment submission CSV (--merge_output_file)",)),
    Stage("stacking", "stacking", "learned ensemble weights on the fitting files",
          ("stacking.fit",), ("stacking.sh",),
          reads=_CHECKPOINT + ("records (--data_pattern)",),
          writes=("weights file (--output_file)",)),
    Stage("report", "ensemble", "every state and both ensembles on the held-out "
          "files, with intervals; the fitting files' choice", ("ensemble.report",),
          reads=_EVALUATIONS + _PROVENANCE + ("weights file (--weights_file)",
                                              "model.ckpt-<step>"),
          writes=("report (--output_json)", "chart (--output_png)")),
    Stage("segment report", "ensemble", "the 2019 path's report; the fitting files' "
          "choices", ("ensemble.segment_report",),
          reads=_SEGMENT_EVALUATIONS + _PROVENANCE + ("weights file (--weights_file)",
                                                      "model.ckpt-<step>"),
          writes=("report (--output_json)", "chart (--output_png)")),
    Stage("teacher records", "prediction2tfrecord", "teacher predictions into TFRecords",
          ("prediction2tfrecord.write",), ("prediction2tfrecord.sh",),
          reads=("records (--input_data_pattern)", "submission CSV (--teacher_csv)")
          + _EXPORT + _CHECKPOINT,
          writes=("teacher records (--output_dir)",)),
    Stage("distillation", "distillation", "a student trained on teacher records",
          ("distillation.train",), ("distillation.sh",),
          reads=("teacher records (--train_data_pattern)",
                 "warm start (--warm_start_checkpoint)") + _CHECKPOINT,
          writes=_TRAIN_DIR),
    Stage("segment fine-tuning", "segment_finetune", "a video-level model fine-tuned on "
          "2019 rated segments", ("segment_finetune.train",), ("segment_finetune.sh",),
          reads=("segment-rated records (--train_data_pattern)", "source (--source_dir)")
          + _CHECKPOINT + _PROVENANCE,
          writes=_TRAIN_DIR + ("finetune.json",)),
)

# run_scripts/ files that are no stage's: the pipelines, set-up and helpers.
OTHER_RUN_SCRIPTS: Tuple[str, ...] = (
    "pipeline.sh", "segments_pipeline.sh", "quickstart.sh", "real_labels.sh", "test.sh",
    "setup_env.sh", "gpu_acceptance.sh", "lib.sh", "background.sh")


def check_stages(stages: Sequence[Stage], other_scripts: Sequence[str] = ()) -> None:
    """ValueError (naming training/stage_registry.py) for a stage name, entry
    point or run script used twice, or an entry point outside its package."""
    seen: Dict[Tuple[str, str], str] = {}
    for stage in stages:
        keys = [("stage", stage.name)] + [("entry point", e) for e in stage.entry_points] \
            + [("run script", script) for script in stage.run_scripts]
        for kind, key in keys:
            if (kind, key) in seen:
                raise ValueError(f"training/stage_registry.py: {kind} {key!r} is listed "
                                 f"twice ({seen[kind, key]} and {stage.name})")
            seen[kind, key] = stage.name
        outside = [e for e in stage.entry_points if not e.startswith(stage.package + ".")]
        if outside or not stage.entry_points:
            raise ValueError(f"training/stage_registry.py: stage {stage.name!r} needs entry "
                             f"points in its package {stage.package}, got "
                             f"{', '.join(stage.entry_points) or 'none'}")
    again = [script for script in other_scripts if ("run script", script) in seen]
    if again:
        raise ValueError(f"training/stage_registry.py: {', '.join(again)} both a stage's "
                         f"run script and in OTHER_RUN_SCRIPTS")


def packages() -> Tuple[str, ...]:
    """Every package with a stage (the shared layer first), in order."""
    return tuple(dict.fromkeys([SHARED_LAYER] + [stage.package for stage in STAGES]))


def stage_packages() -> Tuple[str, ...]:
    """The stage packages: those above the shared layer, which never import
    each other."""
    return tuple(package for package in packages() if package != SHARED_LAYER)


def entry_points() -> Tuple[str, ...]:
    """Every stage's entry points, in order."""
    return tuple(entry for stage in STAGES for entry in stage.entry_points)


def run_scripts() -> Tuple[str, ...]:
    """Every stage's run scripts, in order."""
    return tuple(script for stage in STAGES for script in stage.run_scripts)


def _cell(items: Sequence[str]) -> str:
    """Markdown: a name in backticks; a described file with its flag or
    path pattern in backticks."""
    shown = [re.sub(r"\((.*)\)$", r"(`\1`)", item) if " " in item else f"`{item}`"
             for item in items]
    return ", ".join(shown)


def stage_table() -> List[str]:
    """docs/architecture.md's stage table, as lines of markdown."""
    lines = ["| stage | package | `python -m` | run scripts | reads | writes |",
             "|---|---|---|---|---|---|"]
    for stage in STAGES:
        lines.append(f"| **{stage.name}**: {stage.summary} | `{stage.package}` | "
                     f"{_cell(stage.entry_points)} | {_cell(stage.run_scripts)} | "
                     f"{_cell(stage.reads)} | {_cell(stage.writes)} |")
    lines.append("")
    lines.append(f"Other run scripts (pipelines, set-up, helpers): {_cell(OTHER_RUN_SCRIPTS)}.")
    return lines


check_stages(STAGES, OTHER_RUN_SCRIPTS)

if __name__ == "__main__":
    # The table for docs/architecture.md "Stages" (tests/unit/test_stage_registry.py).
    print("\n".join(stage_table()))
