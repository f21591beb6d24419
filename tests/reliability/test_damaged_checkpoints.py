"""Damaged model dirs: every kind of damage to a checkpoint, given to each main
stage (eval, SWA, bf16 conversion, ensemble build, inference on an ensemble
dir, resumed training), ends with one line that names the damaged file and
says what is wrong with it (docs/reliability.md).

In-process: each test copies a dir of the session's `tiny_models` and damages
the copy; three CLI runs check the whole path to stderr.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from bfloat16_patch import convert
from conftest import TINY_CLASSES, TINY_DBOF, run_module
from ensemble import build, inference
from models.tf_compat import tf
from support.reliability import assert_user_error, train_config
from swa import average
from training import checkpoints, model_builder, train
from training import eval as evaluation
from training import train_dir as train_dirs
from training.cli import UserError

DATA = ".data-00000-of-00001"
# stage -> (the tiny_models dir it reads, its checkpoint name, the dir of
# another checkpoint whose index or data is copied over for "mismatch")
STAGES = {
    "eval": ("dbof_train", "model.ckpt-10", None),
    "swa": ("dbof_train", "model.ckpt-10", None),
    "resume": ("dbof_train", "model.ckpt-10", None),
    "convert": ("dbof_swa", "model.ckpt-10", "gru_swa"),
    "build": ("dbof_bf16", "model.ckpt-10", "gru_bf16"),
    "inference": ("ensemble", "inference_model", "gru_bf16"),
}
# kind -> (the damaged file: index, data or state, what the line says)
KINDS = {
    "index_missing": ("index", "missing"),
    "data_missing": ("data", "missing"),
    "truncated": ("data", "truncated"),
    "corrupt": ("data", "corrupt: a checksum mismatch"),
    "mismatch": ("data", "does not match its index"),
    "index_corrupt": ("index", "corrupt or unreadable"),
    "state": ("state", "names model.ckpt-99, which is missing"),
}


def one_line(call, *args, **kwargs) -> str:
    """The message of the UserError that call raises: one line."""
    with pytest.raises(UserError) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message


def _largest_model_tensor(prefix: str):
    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    keys = [key for key in shapes if "/" in key and not checkpoints.OPTIMIZER_SLOT_RE.search(key)]
    key = max(keys, key=lambda k: (int(np.prod(shapes[k])), k))
    return reader.get_tensor(key)


def flip_inside_a_model_variable(prefix: str) -> None:
    """Flips bytes inside the largest model variable's data (same file size)."""
    value = np.ascontiguousarray(_largest_model_tensor(prefix))
    raw = bytearray(open(prefix + DATA, "rb").read())
    start = bytes(raw).find(value.tobytes())
    assert start >= 0
    middle = start + value.nbytes // 2
    raw[middle:middle + 8] = bytes(b ^ 0xFF for b in raw[middle:middle + 8])
    open(prefix + DATA, "wb").write(bytes(raw))


def damage(directory: str, name: str, kind: str, other: str | None) -> None:
    prefix = os.path.join(directory, name)
    if kind == "index_missing":
        os.remove(prefix + ".index")
    elif kind == "data_missing":
        os.remove(prefix + DATA)
    elif kind == "truncated":
        size = os.path.getsize(prefix + DATA)
        with open(prefix + DATA, "r+b") as handle:
            handle.truncate(size // 2)
    elif kind == "corrupt":
        flip_inside_a_model_variable(prefix)
    elif kind == "mismatch" and other is None:      # a train dir: another step's index
        shutil.copyfile(os.path.join(directory, "model.ckpt-5.index"), prefix + ".index")
    elif kind == "mismatch":                         # another model's data
        source = checkpoints.find_checkpoint(other)
        shutil.copyfile(source + DATA, prefix + DATA)
    elif kind == "index_corrupt":
        size = os.path.getsize(prefix + ".index")
        open(prefix + ".index", "wb").write(np.random.default_rng(0).bytes(size))
    elif kind == "state":
        with open(os.path.join(directory, checkpoints.STATE_FILE), "w") as handle:
            handle.write('model_checkpoint_path: "model.ckpt-99"\n'
                         'all_model_checkpoint_paths: "model.ckpt-99"\n')


def run_stage(stage: str, directory: str, tiny_models, tiny_data, out: str) -> None:
    eval_pattern = str(tiny_data / "frame" / "validate*.tfrecord")
    if stage == "eval":
        path = checkpoints.find_checkpoint(directory)
        evaluation.evaluate_checkpoint(directory, path, eval_pattern, batch_size=16)
    elif stage == "swa":
        average.average(directory, out, last_n=2, log=None)
    elif stage == "convert":
        convert.convert_checkpoint(directory, out, log=None)
    elif stage == "build":
        build.build_and_export([directory, tiny_models["gru_bf16"]], [1, 1], out,
                               tile_num=2, log=None)
    elif stage == "inference":
        inference.run(train_dir=directory, input_data_pattern=eval_pattern,
                      output_file=out + ".csv", batch_size=16, log=None)
    elif stage == "resume":
        flags = model_builder.make_model_flags("Soft-DBoF-4k", "rgb,audio", "1024,128", True,
                                               TINY_CLASSES, "CrossEntropyLoss", TINY_DBOF)
        train_dirs.prepare_train_dir(directory, flags, start_new=False)
        train.train(flags, directory, str(tiny_data / "frame" / "train*.tfrecord"),
                    train_config(max_steps=12), log=lambda _: None)


def named_file(directory: str, name: str, where: str) -> str:
    return {"index": os.path.join(directory, name + ".index"),
            "data": os.path.join(directory, name + DATA),
            "state": os.path.join(directory, checkpoints.STATE_FILE)}[where]


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_damaged_checkpoint_is_one_line(stage, kind, tiny_models, tiny_data, tmp_path):
    source, name, other = STAGES[stage]
    directory = str(tmp_path / source)
    shutil.copytree(tiny_models[source], directory)
    damage(directory, name, kind, None if other is None else tiny_models[other])
    out = str(tmp_path / "out")
    line = one_line(run_stage, stage, directory, tiny_models, tiny_data, out)
    where, says = KINDS[kind]
    assert named_file(directory, name, where) in line, line
    assert says in line, line
    assert not os.path.exists(out) and not os.path.exists(out + ".csv")


# ---------------------------------------------------------------------------
# model_flags.json

FLAGS_DAMAGE = {
    "random_bytes": np.random.default_rng(1).bytes(64),
    "not_utf8": b"\xff\xfe{\"model\": 1}",
    "a_list": b"[\"model\", \"num_classes\"]",
    "a_number": b"3",
    "no_model_key": b"{\"num_classes\": 10}",
}


@pytest.mark.parametrize("variant", sorted(FLAGS_DAMAGE))
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_damaged_model_flags_is_one_line(stage, variant, tiny_models, tiny_data, tmp_path):
    source = STAGES[stage][0]
    directory = str(tmp_path / source)
    shutil.copytree(tiny_models[source], directory)
    flags_path = os.path.join(directory, checkpoints.MODEL_FLAGS_FILE)
    open(flags_path, "wb").write(FLAGS_DAMAGE[variant])
    line = one_line(run_stage, stage, directory, tiny_models, tiny_data, str(tmp_path / "out"))
    assert flags_path in line, line
    assert open(flags_path, "rb").read() == FLAGS_DAMAGE[variant]   # left as it was


@pytest.mark.parametrize("stage", ["eval", "build", "inference"])
def test_model_flags_without_a_needed_key(stage, tiny_models, tiny_data, tmp_path):
    source = STAGES[stage][0]
    directory = str(tmp_path / source)
    shutil.copytree(tiny_models[source], directory)
    flags_path = os.path.join(directory, checkpoints.MODEL_FLAGS_FILE)
    model_flags = json.loads(open(flags_path).read())
    del model_flags["num_classes"]
    open(flags_path, "w").write(json.dumps(model_flags))
    line = one_line(run_stage, stage, directory, tiny_models, tiny_data, str(tmp_path / "out"))
    assert flags_path in line and "'num_classes'" in line, line


# ---------------------------------------------------------------------------
# Warm start and an uploaded .tgz


@pytest.mark.parametrize("kind", ["truncated", "index_corrupt", "state"])
def test_damaged_warm_start_checkpoint(kind, tiny_models, tmp_path):
    from distillation import train as distill

    directory = str(tmp_path / "dbof_bf16")
    shutil.copytree(tiny_models["dbof_bf16"], directory)
    damage(directory, "model.ckpt-10", kind, None)
    line = one_line(distill.warm_start_from, directory, log=None)
    where, says = KINDS[kind]
    assert named_file(directory, "model.ckpt-10", where) in line and says in line, line


def test_damaged_model_tgz_names_the_archive_member(tiny_models, tiny_data, tmp_path):
    import tarfile

    directory = str(tmp_path / "ensemble")
    shutil.copytree(tiny_models["ensemble"], directory)
    damage(directory, "inference_model", "truncated", None)
    tgz = str(tmp_path / "model.tgz")
    with tarfile.open(tgz, "w:gz") as tar:
        for name in sorted(os.listdir(directory)):
            tar.add(os.path.join(directory, name), arcname=name)
    line = one_line(inference.run, input_model_tgz=tgz,
                    input_data_pattern=str(tiny_data / "frame" / "test*.tfrecord"),
                    output_file=str(tmp_path / "s.csv"), log=None)
    assert line.startswith(f"--input_model_tgz={tgz}: inference_model{DATA}: truncated"), line
    assert not os.path.exists(tmp_path / "s.csv")


# ---------------------------------------------------------------------------
# What is not damage; shards


def _tiny_checkpoint(directory, step: int = 1) -> str:
    arrays = {"tower/w": np.ones([3, 4], np.float32), "global_step": np.array(step, np.int64)}
    entries = [(key, list(value.shape), tf.as_dtype(value.dtype))
               for key, value in sorted(arrays.items())]
    return checkpoints.write_arrays_checkpoint(os.path.join(str(directory),
                                                            f"model.ckpt-{step}"),
                                               entries, arrays.__getitem__)


def test_moved_dirs_and_killed_saves_are_not_damage(tmp_path):
    _tiny_checkpoint(tmp_path, 1)
    # A train dir's state file names absolute paths: the dir was moved since.
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "/elsewhere/model.ckpt-1"\n')
    # A killed save: data without its index, not named by the state file.
    (tmp_path / "model.ckpt-2.data-00000-of-00001").write_bytes(b"partial")
    latest = checkpoints.find_checkpoint(str(tmp_path))
    assert latest == str(tmp_path / "model.ckpt-1")
    assert checkpoints.verify_checkpoint(latest).get_tensor("global_step") == 1


def test_data_files_without_any_index(tmp_path):
    for step in (9, 10):
        (tmp_path / f"model.ckpt-{step}{DATA}").write_bytes(b"data")
    line = one_line(checkpoints.find_checkpoint, str(tmp_path))
    assert line == (f"{tmp_path / 'model.ckpt-10'}.index: missing, no such checkpoint "
                    f"(model.ckpt-10{DATA} is there without it)")


def test_sharded_and_string_checkpoints(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        with tf.device("/cpu:0"):
            tf.Variable(np.ones([10], np.float32), name="tower/a")
            tf.Variable(["x", "yz", ""], name="tower/names")
        with tf.device("/cpu:1"):
            tf.Variable(np.ones([7], np.float32), name="tower/b")
        saver = tf.train.Saver(sharded=True)
        with tf.Session(config=tf.ConfigProto(device_count={"CPU": 2})) as sess:
            sess.run(tf.global_variables_initializer())
            prefix = saver.save(sess, str(tmp_path / "model.ckpt-1"))
    assert list(checkpoints.verify_checkpoint(prefix).get_tensor("tower/names")) == \
        [b"x", b"yz", b""]
    os.remove(prefix + ".data-00001-of-00002")
    line = one_line(checkpoints.verify_checkpoint, prefix)
    assert line.startswith(f"{prefix}.data-00001-of-00002: missing"), line


# ---------------------------------------------------------------------------
# The command lines (stderr: exactly one line)


@pytest.mark.slow
def test_damaged_dirs_through_the_command_lines(tiny_models, tiny_data, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    dirs = {}
    for stage, kind in (("eval", "truncated"), ("inference", "corrupt"), ("resume", "state")):
        source, name, _ = STAGES[stage]
        dirs[stage] = str(tmp_path / stage / source)
        shutil.copytree(tiny_models[source], dirs[stage])
        damage(dirs[stage], name, kind, None)
    pattern = str(tiny_data / "frame" / "validate*.tfrecord")
    calls = [("training.eval", f"--train_dir={dirs['eval']}", f"--eval_data_pattern={pattern}",
              "--run_once"),
             ("ensemble.inference", f"--train_dir={dirs['inference']}",
              f"--input_data_pattern={pattern}", f"--output_file={tmp_path / 's.csv'}"),
             ("training.train", f"--train_dir={dirs['resume']}", "--model=Soft-DBoF-4k",
              f"--train_data_pattern={tiny_data / 'frame' / 'train*.tfrecord'}",
              f"--num_classes={TINY_CLASSES}", "--max_steps=12",
              *[f"--{key}={value}" for key, value in sorted(TINY_DBOF.items())])]
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = list(pool.map(lambda call: run_module(*call, check=False), calls))
    assert_user_error(done[0], os.path.join(dirs["eval"], "model.ckpt-10" + DATA), "truncated")
    assert_user_error(done[1], os.path.join(dirs["inference"], "inference_model" + DATA),
                      "corrupt: a checksum mismatch")
    assert_user_error(done[2], os.path.join(dirs["resume"], "checkpoint"),
                      "names model.ckpt-99, which is missing")
    assert not os.path.exists(tmp_path / "s.csv")
