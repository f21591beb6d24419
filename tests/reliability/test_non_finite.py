"""Non-finite weights never travel (issue 23, first item; docs/reliability.md).

The trainer checks every variable a checkpoint saves before each save
(training.train_dir.check_finite) and the loss on every step; every stage
opens its checkpoints through training.checkpoints.verify_checkpoint, whose
check_finite refuses a tensor holding NaN or Inf before the stage writes
anything; inference refuses a NaN score. Each case: exit 2, one line naming
the file and the tensor (or the video), nothing written.

Checkpoints with NaN or Inf are made by training with a huge learning rate or
by rewriting one tensor of a copy of the session's tiny_models (poison).
"""
from __future__ import annotations

import os
import re
import shutil

import numpy as np
import pytest

from conftest import DBOF_FLAGS, TINY_CLASSES, run_module
from ensemble import merge
from models.tf_compat import tf
from support.reliability import assert_user_error, read_checkpoint, run_cases, temp_leftovers
from training import checkpoints
from training.cli import UserError

# A run that diverges within a few steps (deterministic on the CPU: the seed,
# one reader, no shuffle buffer).
DIVERGING = [*DBOF_FLAGS, f"--num_classes={TINY_CLASSES}", "--batch_size=4",
             "--num_readers=1", "--seed=5", "--max_steps=30", "--log_steps=1000",
             "--summary_steps=1000"]


def rewrite(prefix: str, key: str, change) -> None:
    """Rewrites the checkpoint `prefix` with tensor `key` replaced by
    change(its value) (the other tensors unchanged)."""
    reader = tf.train.load_checkpoint(prefix)
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    values = {name: reader.get_tensor(name) for name in shapes}
    values[key] = change(values[key].copy())
    entries = [(name, shapes[name], dtypes[name]) for name in sorted(shapes)]
    checkpoints.write_arrays_checkpoint(prefix, entries, lambda name: values[name])


def poison(prefix: str, key: str, value: float) -> None:
    """`value` as the first element of tensor `key` of the checkpoint `prefix`."""
    def change(array):
        array.reshape(-1)[0] = value
        return array
    rewrite(prefix, key, change)


def poisoned_copy(source: str, target, key: str, value: float, name: str = "") -> str:
    """A copy of the model dir `source` whose checkpoint (`name`, default the
    latest) holds `value` in `key`; -> the poisoned checkpoint prefix."""
    shutil.copytree(source, str(target))
    prefix = os.path.join(str(target), name) if name else checkpoints.find_checkpoint(
        str(target))
    poison(prefix, key, value)
    return prefix


def assert_nothing_written(path) -> None:
    parent, name = os.path.split(str(path))
    assert not os.path.exists(str(path)), os.listdir(parent)
    assert temp_leftovers(parent, name) == []


def assert_all_finite(train_dir: str) -> None:
    """Every floating tensor (optimizer slots too) of every checkpoint is finite."""
    for _, prefix in checkpoints.list_checkpoints(train_dir):
        for key, value in read_checkpoint(prefix).items():
            if np.asarray(value).dtype.kind == "f":
                assert np.isfinite(value).all(), (prefix, key)


def stopped_at(line: str, train_dir: str) -> tuple:
    """(step, the latest checkpoint's step) that a trainer's line names."""
    match = re.search(r" at step (\d+); stopped without saving it, the latest checkpoint "
                      r"stays " + re.escape(train_dir) + r"/model\.ckpt-(\d+);", line)
    assert match, line
    return int(match.group(1)), int(match.group(2))


def assert_latest_stays(train_dir: str, step: int, latest: int) -> None:
    """The latest checkpoint is model.ckpt-<latest> (the `checkpoint` state file
    names it too), none of `step` or later exists, and all are finite."""
    assert latest < step
    assert checkpoints.list_checkpoints(train_dir)[-1][0] == latest
    state = open(os.path.join(train_dir, checkpoints.STATE_FILE)).read()
    assert re.search(r'^model_checkpoint_path: ".*model\.ckpt-%d"$' % latest, state,
                     re.MULTILINE), state
    assert_all_finite(train_dir)


# ---------------------------------------------------------------------------
# The trainer


@pytest.mark.slow
def test_trainer_stops_before_saving_a_non_finite_variable(tiny_data, tmp_path):
    """--base_learning_rate=1e8 drives a batch-norm moving_variance to +Inf while
    the loss stays finite (the issue's run): the trainer stops at the first
    save after it, naming the step, the variable and the latest checkpoint,
    which stays the latest; nothing non-finite is saved.

    Mutation: removing the check_finite call from
    training.train_dir.save_checkpoint makes this fail (exit 0: `done at
    step 30`, model.ckpt-30 saved with the +Inf).
    """
    train_dir = str(tmp_path / "train")
    done = run_module("training.train", f"--train_dir={train_dir}",
                      f"--train_data_pattern={tiny_data / 'frame' / 'train*.tfrecord'}",
                      "--base_learning_rate=1e8", "--save_checkpoint_steps=3", *DIVERGING,
                      check=False)
    line = assert_user_error(done, f"--train_dir={train_dir}: variable tower/",
                             "is not finite (", "lower --base_learning_rate")
    assert re.search(r"variable tower/\S+ is not finite \(\d+ (NaN|\+Inf|-Inf)", line), line
    step, latest = stopped_at(line, train_dir)
    assert step % 3 == 0 and latest == step - 3
    assert_latest_stays(train_dir, step, latest)


@pytest.mark.slow
def test_trainer_stops_on_a_non_finite_loss(tiny_data, tmp_path):
    """--base_learning_rate=1e18 makes the loss NaN at once: one line naming
    the loss, the step and the checkpoint that stays the latest.

    Mutation: removing the loss check of training.train._train_step makes
    this fail (the save check then stops it, naming a variable:
    `variable tower/input_bn/beta is not finite (1,152 NaN of 1,152 values)`).
    """
    train_dir = str(tmp_path / "train")
    done = run_module("training.train", f"--train_dir={train_dir}",
                      f"--train_data_pattern={tiny_data / 'frame' / 'train*.tfrecord'}",
                      "--base_learning_rate=1e18", "--save_checkpoint_steps=1", *DIVERGING,
                      check=False)
    line = assert_user_error(done, f"--train_dir={train_dir}: the loss is nan at step ")
    step, latest = stopped_at(line, train_dir)
    assert_latest_stays(train_dir, step, latest)


# ---------------------------------------------------------------------------
# The stages


def _stage_cases(tiny_models, tiny_data, tmp_path) -> dict:
    """{module: [(argv, poisoned prefix, tensor key, output path)]}: each stage
    given a copy of its input with one tensor made NaN or Inf."""
    validate = str(tiny_data / "frame" / "validate*.tfrecord")
    gru_bf16 = tiny_models["gru_bf16"]
    moving = "tower/video_DBOF/cluster_bn/moving_variance"
    train = poisoned_copy(tiny_models["dbof_train"], tmp_path / "train", moving, np.inf)
    swa = poisoned_copy(tiny_models["dbof_swa"], tmp_path / "swa", "tower/hidden1_weights",
                        np.nan)
    bf16 = poisoned_copy(tiny_models["dbof_bf16"], tmp_path / "bf16", "tower/experts/weights",
                         -np.inf)
    ensemble = poisoned_copy(tiny_models["ensemble"], tmp_path / "ensemble",
                             "model0/gates/weights", np.nan, "inference_model")
    bf16_dir, out = os.path.dirname(bf16), tmp_path / "out"
    return {
        "swa.average": [([f"--train_dir={tmp_path / 'train'}", f"--output_dir={out / 'swa'}",
                          "--last_n=2"], train, moving, out / "swa")],
        "bfloat16_patch.convert": [([f"--input_dir={tmp_path / 'swa'}",
                                     f"--output_dir={out / 'bf16'}"], swa,
                                    "tower/hidden1_weights", out / "bf16")],
        "ensemble.build": [([f"--model_dirs={bf16_dir},{gru_bf16}", "--tile_num=2",
                             f"--output_dir={out / 'ensemble'}"], bf16,
                            "tower/experts/weights", out / "ensemble")],
        "ensemble.inference": [([f"--train_dir={tmp_path / 'ensemble'}",
                                 f"--output_model_tgz={out / 'model.tgz'}"], ensemble,
                                "model0/gates/weights", out / "model.tgz")],
        "stacking.fit": [([f"--model_dirs={bf16_dir},{gru_bf16}", f"--data_pattern={validate}",
                           f"--output_file={out / 'weights.json'}", "--batch_size=8",
                           "--max_iterations=20", "--num_readers=1"], bf16,
                          "tower/experts/weights", out / "weights.json")],
        "prediction2tfrecord.write": [([f"--input_data_pattern={validate}",
                                        f"--output_dir={out / 'teacher'}",
                                        f"--teacher_dir={tmp_path / 'swa'}",
                                        f"--num_classes={TINY_CLASSES}"], swa,
                                       "tower/hidden1_weights", out / "teacher")],
        "training.train": [([f"--train_dir={tmp_path / 'train'}",
                             f"--train_data_pattern={tiny_data / 'frame' / 'train*.tfrecord'}",
                             *DBOF_FLAGS, f"--num_classes={TINY_CLASSES}", "--max_steps=12"],
                            train, moving, None)],
    }


@pytest.mark.slow
def test_stages_refuse_a_checkpoint_holding_nan_or_inf(tiny_models, tiny_data, tmp_path):
    """SWA, the bf16 conversion, the ensemble build, the export, stacking,
    teacher records and a resumed training each refuse a checkpoint holding
    NaN or Inf: exit 2, one line naming the checkpoint and the tensor, no
    output (not even a temporary one); the train dir's checkpoints untouched.

    Mutation: removing the check_finite call from
    training.checkpoints.verify_checkpoint makes this fail for every stage:
    SWA, conversion, build, export and stacking exit 0 (their outputs carry
    the NaN or Inf), teacher records stop later without naming the tensor
    (`--teacher_dir: ... predicts NaN or inf`), and the resumed training
    does not name the checkpoint.
    """
    cases = _stage_cases(tiny_models, tiny_data, tmp_path)
    before = {path: os.path.getmtime(path + ".index") for rows in cases.values()
              for _, path, _, _ in rows}
    outcome = run_cases({module: {"cases": [argv for argv, _, _, _ in rows]}
                         for module, rows in cases.items()}, tmp_path / "driver")
    failed = {}     # (every stage is checked before the test fails)
    for module, rows in cases.items():
        for (_, prefix, key, output), done in zip(rows, outcome[module][2]):
            try:
                assert_user_error(done, f"{prefix}: tensor {key} is not finite (1 ",
                                  "use an earlier checkpoint")
                if output is not None:
                    assert_nothing_written(output)
            except AssertionError as err:
                failed[module] = str(err)[:200]
    assert not failed, "\n".join(f"{module}: {text}" for module, text in failed.items())
    assert not os.path.exists(tmp_path / "out") or os.listdir(tmp_path / "out") == []
    assert {path: os.path.getmtime(path + ".index") for path in before} == before


def test_the_check_reads_bf16_skips_slots_and_sees_rewrites(tiny_models, tmp_path):
    """check_finite reads bfloat16 tensors, leaves optimizer slots alone (no
    stage uses them), and reads a checkpoint again once its files changed
    (a checkpoint found finite is remembered by its files' size and time).

    Mutation: remembering a finite checkpoint by its prefix alone (without
    _file_signature) makes this fail (the rewritten checkpoint passes).
    """
    train = str(tmp_path / "train")
    shutil.copytree(tiny_models["dbof_train"], train)
    prefix = os.path.join(train, "model.ckpt-10")
    slot = next(key for key in tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
                if checkpoints.OPTIMIZER_SLOT_RE.search(key))
    poison(prefix, slot, np.nan)
    checkpoints.verify_checkpoint(prefix)          # (a NaN slot: found finite)
    poison(prefix, "tower/hidden1_biases", np.nan)
    try:
        checkpoints.verify_checkpoint(prefix)
        raise AssertionError("a rewritten checkpoint with NaN passed")
    except UserError as err:
        assert str(err).startswith(f"{prefix}: tensor tower/hidden1_biases is not finite "
                                   f"(1 NaN of 8 values)"), err
    bf16 = poisoned_copy(tiny_models["dbof_bf16"], tmp_path / "bf16", "tower/experts/weights",
                         np.inf)
    try:
        checkpoints.open_checkpoint(bf16)
        raise AssertionError("a bfloat16 checkpoint with +Inf passed")
    except UserError as err:
        assert "tensor tower/experts/weights is not finite (1 +Inf of " in str(err), err


# ---------------------------------------------------------------------------
# Inference


@pytest.mark.slow
def test_inference_refuses_a_nan_score(tiny_models, tiny_data, tmp_path):
    """A model whose weights are finite but overflow (gate weights 3e38: the
    gating softmax of +Inf logits is NaN) scores NaN: ensemble.inference
    writes no line of it and stops with one line naming the video and its
    input file (the second of two: the first holds no records); the CSV and
    its temporary file are gone, and a sharded run leaves no part of that file.

    Mutation: removing the NonFiniteScoreError raise from
    ensemble.inference.format_lines makes this fail (exit 1, a ValueError
    traceback from metrics.top_k_classes); naming no file (err.naming('',
    ...) in write_submission) fails it too.
    """
    model = tmp_path / "model"
    shutil.copytree(tiny_models["dbof_swa"], model)
    rewrite(checkpoints.find_checkpoint(str(model)), "tower/gates/weights",
            lambda array: np.full_like(array, 3e38))
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "a.tfrecord").write_bytes(b"")
    shutil.copyfile(tiny_data / "frame" / "test00.tfrecord", inputs / "b.tfrecord")
    first_id = tf.train.SequenceExample.FromString(next(tf.io.tf_record_iterator(
        str(inputs / "b.tfrecord")))).context.feature["id"].bytes_list.value[0].decode()
    csv, parts = tmp_path / "out" / "s.csv", tmp_path / "out" / "p.csv"
    common = [f"--train_dir={model}", f"--input_data_pattern={inputs / '*.tfrecord'}",
              "--batch_size=8"]
    outcome = run_cases({"ensemble.inference": {"cases": [
        [*common, f"--output_file={csv}"],
        [*common, f"--output_file={parts}", "--num_shards=1", "--shard_index=0"]]}},
        tmp_path / "driver")["ensemble.inference"][2]
    b_file = str(inputs / "b.tfrecord")
    assert_user_error(outcome[0], f"--input_data_pattern: {b_file}: the model predicts NaN "
                                  f"or inf for video {first_id}; nothing was written to "
                                  f"--output_file={csv}")
    assert_nothing_written(csv)
    part, _ = merge.part_paths(str(parts), b_file)
    assert_user_error(outcome[1], f"--input_data_pattern: {b_file}: the model predicts NaN "
                                  f"or inf for video {first_id}; nothing was written to {part}")
    assert_nothing_written(part)
    assert not os.path.exists(str(parts))
