"""Bad inputs through the command lines: every case ends with one line on stderr
naming the flag or file, exit 2, no traceback and no partial output (no output
dir or file, no temporary sibling); or, where the input is legal (over 300
frames, zero frames, bf16 members), the stage works.

One test per case of docs/reliability.md whose test column names this file.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import DBOF_FLAGS, GRU_FLAGS, TINY_CLASSES, TINY_DBOF, dequantize, run_module
from ensemble import inference
from ensemble.check_submission import check_submission
from models.tf_compat import tf
from support.reliability import (
    assert_user_error,
    good_records,
    read_checkpoint,
    run_with_file_size_limit,
    sequence_example,
    snapshot,
    temp_leftovers,
    train_config,
    write_records,
)
from training import checkpoints, model_builder, readers
from training import train as train_stage
from training import train_dir as train_dirs
from training.cli import UserError

pytestmark = pytest.mark.slow

MOE = ["--model=FrameMeanMoeModel"]
# Small, unshuffled runs: a bad first record fails the first step.
TRAIN = [f"--num_classes={TINY_CLASSES}", "--batch_size=4", "--num_readers=1",
         "--shuffle_buffer=1", "--max_steps=3", "--log_steps=1"]


def run_parallel(*calls):
    """Runs independent CLI calls [(function, args...)] two at a time."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(call[0], *call[1:]) for call in calls]
        return [future.result() for future in futures]


def cli(module, *args):
    return run_module(module, *args, check=False)


def train(train_dir, pattern, *extra):
    return run_module("training.train", f"--train_dir={train_dir}",
                      f"--train_data_pattern={pattern}", *TRAIN, *extra, check=False)


def infer(model_dir, pattern, output, *extra):
    return run_module("ensemble.inference", f"--train_dir={model_dir}",
                      f"--input_data_pattern={pattern}", f"--output_file={output}",
                      "--batch_size=8", *extra, check=False)


def assert_nothing_written(parent, name):
    assert not os.path.exists(os.path.join(str(parent), name)), os.listdir(str(parent))
    assert temp_leftovers(parent, name) == []


@pytest.fixture(scope="module")
def bad(tiny_data, tmp_path_factory):
    """One dir per kind of bad (or unusual) input, each holding train00.tfrecord."""
    root = tmp_path_factory.mktemp("bad_inputs")
    raw = (tiny_data / "frame" / "train00.tfrecord").read_bytes()
    damaged = bytearray(raw)
    damaged[len(raw) // 2:len(raw) // 2 + 16] = b"\xff" * 16
    patterns = {}

    def put(kind, data=None, records=None):
        path = root / kind / "train00.tfrecord"
        if records is not None:
            write_records(path, records)
        else:
            path.parent.mkdir(parents=True)
            path.write_bytes(data)
        patterns[kind] = str(root / kind / "*.tfrecord")

    put("corrupt", bytes(damaged))
    put("truncated", raw[:len(raw) * 2 // 3])
    put("empty", b"")
    good = good_records(16)
    put("no_audio", records=[sequence_example(b"noaudio", [1], 6, (("rgb", 1024),))] + good)
    put("wrong_size", records=[sequence_example(b"short", [1], 6,
                                                (("rgb", 1000), ("audio", 128)))] + good)
    put("bad_label", records=[sequence_example(b"label12", [12], 6)] + good)
    put("long", records=[sequence_example(b"long%d" % i, [i], 400, seed=i) for i in range(4)])
    put("zero", records=[sequence_example(b"zero%d" % i, [i], 0) for i in range(8)] + good[:8])
    return patterns


# ---------------------------------------------------------------------------
# Data


def test_missing_or_empty_data_pattern(tiny_models, tmp_path):
    no_flag, no_match = run_parallel(
        (train, tmp_path / "run1", ""),
        (infer, tiny_models["ensemble"], str(tmp_path / "none*"), tmp_path / "s.csv"))
    assert_user_error(no_flag, "--train_data_pattern: required")
    assert_user_error(no_match, "--input_data_pattern: no files match", str(tmp_path / "none*"))
    assert sorted(os.listdir(tmp_path)) == []


def test_empty_file(bad, tiny_models, tmp_path):
    trained = train(tmp_path / "run", bad["empty"])
    assert_user_error(trained, "--train_data_pattern=", "no full batch of 4 records")
    with pytest.raises(UserError, match="--input_data_pattern=.*hold no videos"):
        inference.run(train_dir=tiny_models["ensemble"], input_data_pattern=bad["empty"],
                      output_file=str(tmp_path / "s.csv"), log=None)
    assert sorted(os.listdir(tmp_path)) == []  # no train dir, no CSV, no temporary file


def test_corrupt_record(bad, tiny_models, tmp_path):
    path = bad["corrupt"].replace("*", "train00")
    failed, skipped = run_parallel(
        (train, tmp_path / "run", bad["corrupt"], "--num_epochs=1", "--max_steps=100"),
        (train, tmp_path / "skip", bad["corrupt"], "--skip_corrupt_records", "--num_epochs=1",
         "--max_steps=100"))
    assert_user_error(failed, "--train_data_pattern", path, "corrupted record",
                      "--skip_corrupt_records")
    assert not (tmp_path / "run").exists()
    # --skip_corrupt_records: the records before the damage are used, the rest
    # of the file is skipped and reported.
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    assert f"skipped the damaged rest of 1 file(s): {path} (after " in skipped.stdout
    assert "corrupted record" in skipped.stdout
    # The same in inference (its CLI flag is tested with a truncated file).
    lines = []
    written = inference.run(train_dir=tiny_models["ensemble"], input_data_pattern=bad["corrupt"],
                            output_file=str(tmp_path / "skip.csv"), skip_corrupt=True,
                            log=lines.append)
    assert 0 < check_submission(str(tmp_path / "skip.csv"), num_classes=TINY_CLASSES) \
        == written < 32
    assert any("skipped the damaged rest of 1 file(s)" in line for line in lines)


def test_truncated_record(bad, tiny_models, tmp_path):
    path = bad["truncated"].replace("*", "train00")
    model_dir = tmp_path / "gru_bf16"
    shutil.copytree(tiny_models["gru_bf16"], model_dir)
    csv, skipped_csv, evaluated = run_parallel(
        (infer, tiny_models["ensemble"], bad["truncated"], tmp_path / "s.csv"),
        (infer, tiny_models["ensemble"], bad["truncated"], tmp_path / "skip.csv",
         "--skip_corrupt_records"),
        (run_module, "training.eval", f"--train_dir={model_dir}",
         f"--eval_data_pattern={bad['truncated']}", "--run_once", "--batch_size=8",
         "--skip_corrupt_records", "--num_readers=1"))
    assert_user_error(csv, "--input_data_pattern", path, "truncated record",
                      "--skip_corrupt_records")
    assert not (tmp_path / "s.csv").exists() and temp_leftovers(tmp_path, "s.csv") == []
    assert skipped_csv.returncode == 0, skipped_csv.stderr[-2000:]
    assert f"skipped the damaged rest of 1 file(s): {path}" in skipped_csv.stdout
    assert 0 < check_submission(str(tmp_path / "skip.csv"), num_classes=TINY_CLASSES) < 32
    assert f"skipped the damaged rest of 1 file(s): {path}" in evaluated.stdout
    with open(model_dir / "eval_results.json") as handle:
        assert 0 < json.load(handle)["num_examples"] < 32


def test_record_missing_a_feature(bad, tmp_path):
    failed = train(tmp_path / "run", bad["no_audio"], *MOE)
    assert_user_error(failed, "--train_data_pattern", "feature 'audio'", "--feature_names")
    assert not (tmp_path / "run").exists()


def test_wrong_feature_size(bad, tiny_data, tmp_path):
    """A record with 1000 rgb bytes per frame (and, in-process, a wrong
    --feature_sizes on good records)."""
    failed = train(tmp_path / "run", bad["wrong_size"], *MOE)
    assert_user_error(failed, "--train_data_pattern", "feature rgb",
                      "expected feature size 1024", "--feature_sizes")
    assert sorted(os.listdir(tmp_path)) == []
    flags = model_builder.make_model_flags("FrameMeanMoeModel", "rgb,audio", "1000,128", True,
                                           TINY_CLASSES, "CrossEntropyLoss", {})
    with pytest.raises(UserError, match="feature rgb: .*expected feature size 1000"):
        train_stage.train(flags, str(tmp_path / "run"),
                          str(tiny_data / "frame" / "train*.tfrecord"),
                          train_config(max_steps=2), log=lambda _: None)


def test_more_than_300_frames_are_truncated(bad, tiny_models, tmp_path):
    """400-frame videos: the first 300 frames are used, not an error."""
    reader = readers.get_reader(True, "rgb,audio", "1024,128", TINY_CLASSES)
    graph = tf.Graph()
    with graph.as_default():
        batch = tf.data.make_one_shot_iterator(readers.make_dataset(
            reader, bad["long"], 4, training=False)).get_next()
    with tf.Session(graph=graph) as sess:
        data = sess.run(batch)
    assert data["num_frames"].tolist() == [300] * 4
    assert data["features"].shape == (4, 300, 1152)
    first = tf.train.SequenceExample.FromString(next(tf.io.tf_record_iterator(
        bad["long"].replace("*", "train00"))))
    frame_299 = np.frombuffer(first.feature_lists.feature_list["rgb"].feature[299]
                              .bytes_list.value[0], np.uint8)
    np.testing.assert_allclose(data["features"][0, 299, :1024], dequantize(frame_299),
                               atol=1e-6)
    done = infer(tiny_models["ensemble"], bad["long"], tmp_path / "s.csv")
    assert done.returncode == 0, done.stderr[-2000:]
    assert check_submission(str(tmp_path / "s.csv"), num_classes=TINY_CLASSES) == 4


def test_zero_frames_work(bad, tiny_models, tmp_path):
    """Zero-frame videos train (finite loss) and get finite scores."""
    done = infer(tiny_models["ensemble"], bad["zero"], tmp_path / "s.csv")
    assert done.returncode == 0, done.stderr[-2000:]
    assert check_submission(str(tmp_path / "s.csv"), num_classes=TINY_CLASSES) == 16
    rows = dict(line.split(",") for line in (tmp_path / "s.csv").read_text().splitlines()[1:])
    scores = [float(value) for value in rows["zero0"].split()[1::2]]
    assert np.isfinite(scores).all() and len(scores) == TINY_CLASSES
    # Training on them (the trainer stops on a non-finite loss).
    flags = model_builder.make_model_flags("Soft-DBoF-4k", "rgb,audio", "1024,128", True,
                                           TINY_CLASSES, "CrossEntropyLoss", TINY_DBOF)
    result = train_stage.train(flags, str(tmp_path / "run"), bad["zero"],
                               train_config(max_steps=4, shuffle_buffer=1),
                               log=lambda _: None)
    assert result["global_step"] == 4 and np.isfinite(result["loss"])


def test_labels_out_of_range(bad, tmp_path):
    failed = train(tmp_path / "run", bad["bad_label"], *MOE)
    assert_user_error(failed, "--train_data_pattern", "label id is >= num_classes (10)",
                      "--num_classes")
    assert not (tmp_path / "run").exists()


def test_wrong_feature_names(tiny_data, tmp_path):
    pattern = str(tiny_data / "frame" / "train*.tfrecord")
    misspelt = train(tmp_path / "run", pattern, *MOE, "--feature_names=rgb,audo")
    assert_user_error(misspelt, "--train_data_pattern", "feature 'audo'", "--feature_names")
    assert sorted(os.listdir(tmp_path)) == []
    with pytest.raises(UserError, match="--feature_names has 1 entries but --feature_sizes "
                                        "has 2"):
        model_builder.make_model_flags("FrameMeanMoeModel", "rgb", "1024,128", True,
                                       TINY_CLASSES, "CrossEntropyLoss", {})


# ---------------------------------------------------------------------------
# Checkpoints


def test_swa_over_checkpoints_of_different_models(tiny_models, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(tiny_models["dbof_train"], mixed)
    gru = os.path.join(tiny_models["gru_train"], "model.ckpt-10")
    for suffix in (".index", ".data-00000-of-00001"):
        shutil.copyfile(gru + suffix, mixed / f"model.ckpt-99{suffix}")
    failed = run_module("swa.average", f"--train_dir={mixed}", f"--output_dir={tmp_path / 'swa'}",
                        "--last_n=2", check=False)
    assert_user_error(failed, str(mixed / "model.ckpt-10"), str(mixed / "model.ckpt-99"),
                      "differ: variable tower/")
    assert_nothing_written(tmp_path, "swa")


def mixed_dir(path, flags_from, checkpoint_from):
    """A model dir with one dir's model_flags.json and another's checkpoint files."""
    path.mkdir()
    shutil.copyfile(os.path.join(flags_from, "model_flags.json"), path / "model_flags.json")
    for name in os.listdir(checkpoint_from):
        if name.startswith("model.ckpt-"):
            shutil.copyfile(os.path.join(checkpoint_from, name), path / name)
    return path


def test_ensemble_of_a_checkpoint_of_another_model(tiny_models, tmp_path):
    wrong = mixed_dir(tmp_path / "wrong", flags_from=tiny_models["gru_bf16"],
                      checkpoint_from=tiny_models["dbof_bf16"])
    failed = run_module("ensemble.build", f"--model_dirs={tiny_models['dbof_bf16']},{wrong}",
                        "--tile_num=2", f"--output_dir={tmp_path / 'ens'}", check=False)
    assert_user_error(failed, str(wrong), "lacks variable tower/", "GRUModel")
    assert_nothing_written(tmp_path, "ens")


def test_bf16_checkpoint_where_fp32_is_required(tiny_models, tiny_data, tmp_path):
    """SWA averages float32 training checkpoints; training resumes only from
    its own float32 checkpoints (not from a bf16 or an SWA dir), and leaves
    such a dir untouched."""
    pattern = str(tiny_data / "frame" / "train*.tfrecord")
    copies = {}
    for kind in ("dbof_bf16", "dbof_swa"):
        copies[kind] = tmp_path / kind
        shutil.copytree(tiny_models[kind], copies[kind])
    before = {kind: snapshot(path) for kind, path in copies.items()}
    swa, on_bf16 = run_parallel(
        (cli, "swa.average", f"--train_dir={tiny_models['dbof_bf16']}",
         f"--output_dir={tmp_path / 'swa'}", "--last_n=1"),
        (train, copies["dbof_bf16"], pattern, *DBOF_FLAGS, "--max_steps=20"))
    assert_user_error(swa, os.path.join(tiny_models["dbof_bf16"], "model.ckpt-10"),
                      "is a bfloat16 checkpoint", "SWA averages the float32")
    assert_nothing_written(tmp_path, "swa")
    assert_user_error(on_bf16, str(copies["dbof_bf16"] / "model.ckpt-10"),
                      "is a bfloat16 checkpoint", "--train_dir")
    with open(copies["dbof_swa"] / "model_flags.json") as handle:
        flags = json.load(handle)
    with pytest.raises(UserError, match="model.ckpt-10: has no global_step .*--train_dir"):
        train_dirs.prepare_train_dir(str(copies["dbof_swa"]), flags, start_new=False)
    assert {kind: snapshot(path) for kind, path in copies.items()} == before


def test_bf16_and_fp32_where_either_works(tiny_models, tmp_path):
    """Ensemble members may mix float32 and bf16; a distillation warm start
    takes either; converting a bf16 checkpoint again changes nothing."""
    from bfloat16_patch import convert
    from distillation import train as distillation

    run_module("ensemble.build",
               f"--model_dirs={tiny_models['gru_swa']},{tiny_models['dbof_bf16']}",
               "--tile_num=2", f"--output_dir={tmp_path / 'ens'}")
    with open(tmp_path / "ens" / "ensemble.json") as handle:
        assert json.load(handle)["checkpoint_dtypes"] == ["float32", "bfloat16"]
    # (distillation.sh passes a bf16 --warm_start_checkpoint in test_extra_run_scripts.)
    teacher = np.full(TINY_CLASSES, 0.1, np.float32)
    records = write_records(tmp_path / "teacher" / "train00.tfrecord", [
        sequence_example(b"t%02d" % i, [i % TINY_CLASSES], 5, seed=i, teacher=teacher)
        for i in range(8)])
    flags = dataclasses.replace(checkpoints.read_model_flags(tiny_models["dbof_bf16"]),
                                checkpoint_dtype=None)
    for source in ("dbof_bf16", "dbof_swa"):
        lines = []
        distillation.distill(flags, str(tmp_path / f"student_{source}"), records,
                             train_config(max_steps=2), warm_start_checkpoint=tiny_models[source],
                             log=lines.append)
        assert any("warm start: loaded" in line for line in lines)
        assert read_checkpoint(str(tmp_path / f"student_{source}" / "model.ckpt-2"))
    again = tmp_path / "bf16_again"
    convert.convert_checkpoint(tiny_models["dbof_bf16"], str(again), log=None)
    name = "model.ckpt-10.data-00000-of-00001"
    assert (again / name).read_bytes() == open(
        os.path.join(tiny_models["dbof_bf16"], name), "rb").read()


def test_fp32_checkpoint_where_bf16_is_declared(tiny_models, tmp_path):
    """The reverse: a dir whose model_flags.json says bfloat16 holds a float32
    checkpoint (copied by hand): the ensemble (and evaluation) refuse it."""
    odd = mixed_dir(tmp_path / "odd", flags_from=tiny_models["dbof_bf16"],
                    checkpoint_from=tiny_models["dbof_swa"])
    failed = run_module("ensemble.build", f"--model_dirs={tiny_models['gru_bf16']},{odd}",
                        "--tile_num=2", f"--output_dir={tmp_path / 'ens'}", check=False)
    assert_user_error(failed, str(odd / "model.ckpt-10"), "is a float32 checkpoint",
                      "checkpoint_dtype='bfloat16'")
    assert_nothing_written(tmp_path, "ens")
# ---------------------------------------------------------------------------
# Outputs


def test_ensemble_over_the_size_limit(tiny_models, tmp_path):
    """The 1 GiB limit, lowered with --size_limit_bytes: an error, nothing kept."""
    failed = cli("ensemble.build", f"--model_dirs={tiny_models['dbof_bf16']}",
                 f"--output_dir={tmp_path / 'ens'}", "--tile_num=2", "--size_limit_bytes=1000")
    assert_user_error(failed, f"--output_dir={tmp_path / 'ens'}", "over the 1,000-byte limit",
                      "--allow_oversize")
    assert_nothing_written(tmp_path, "ens")


def test_output_path_exists(tiny_models, tiny_data, tmp_path):
    """SWA, bf16, ensemble and CSV (and upload .tgz) refuse an existing output
    and leave it alone (--overwrite replaces it); an existing train dir is
    resumed (the same model) or refused (another model)."""
    outputs = {name: tmp_path / name for name in ("swa", "bf16", "ens")}
    for path in outputs.values():
        path.mkdir()
        (path / "keep.txt").write_text("mine")
    csv, tgz = tmp_path / "s.csv", tmp_path / "m.tgz"
    csv.write_text("mine")
    tgz.write_text("mine")
    run_copy = tmp_path / "run"
    shutil.copytree(tiny_models["dbof_train"], run_copy)
    test_pattern = str(tiny_data / "frame" / "test*.tfrecord")
    before = snapshot(tmp_path)
    swa, bf16, ens, csv_run, resumed = run_parallel(
        (cli, "swa.average", f"--train_dir={tiny_models['dbof_train']}",
         f"--output_dir={outputs['swa']}", "--last_n=2"),
        (cli, "bfloat16_patch.convert", f"--input_dir={tiny_models['dbof_swa']}",
         f"--output_dir={outputs['bf16']}"),
        (cli, "ensemble.build", f"--model_dirs={tiny_models['dbof_bf16']}",
         f"--output_dir={outputs['ens']}"),
        (infer, tiny_models["ensemble"], test_pattern, csv),
        (train, run_copy, str(tiny_data / "frame" / "train*.tfrecord"), *DBOF_FLAGS,
         "--max_steps=12"))
    for completed, name in ((swa, "swa"), (bf16, "bf16"), (ens, "ens")):
        assert_user_error(completed, f"--output_dir={outputs[name]}", "exists", "--overwrite")
    assert_user_error(csv_run, f"--output_file={csv}", "exists", "--overwrite")
    with pytest.raises(UserError, match=f"--output_model_tgz={tgz}: exists; .*--overwrite"):
        inference.run(train_dir=tiny_models["ensemble"], output_model_tgz=str(tgz),
                      input_data_pattern=test_pattern, output_file=str(tmp_path / "new.csv"),
                      overwrite=False, log=None)
    assert not (tmp_path / "new.csv").exists()
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("run")} == \
        {k: v for k, v in before.items() if not k.startswith("run")}
    assert f"resumed from {run_copy / 'model.ckpt-10'}" in resumed.stdout
    assert "from step 10 to 12" in resumed.stdout
    flags = checkpoints.read_model_flags(str(run_copy))
    with pytest.raises(UserError, match="model_flags.json: this train dir holds a different "
                                        "model .*--train_dir"):
        train_dirs.prepare_train_dir(str(run_copy), dataclasses.replace(flags, model="GRUModel"),
                                     False)
    # --overwrite replaces the CSV.
    inference.run(train_dir=tiny_models["ensemble"], input_data_pattern=test_pattern,
                  output_file=str(csv), overwrite=True, log=None)
    assert check_submission(str(csv), num_classes=TINY_CLASSES) == 32


def test_full_disk(tiny_models, tiny_data, tmp_path):
    """No file can grow past a few KB (RLIMIT_FSIZE: writes fail with EFBIG,
    as on a full disk): each stage stops with one line naming its output and
    leaves nothing behind (training keeps the checkpoints it wrote before)."""
    limit = 2048

    def limited(module, *args):
        return run_with_file_size_limit(module, *args, limit=limit)

    pattern = str(tiny_data / "frame" / "train*.tfrecord")
    swa, bf16, ens, csv, trained = run_parallel(
        (limited, "swa.average", f"--train_dir={tiny_models['dbof_train']}",
         f"--output_dir={tmp_path / 'swa'}", "--last_n=2"),
        (limited, "bfloat16_patch.convert", f"--input_dir={tiny_models['gru_swa']}",
         f"--output_dir={tmp_path / 'bf16'}"),
        (limited, "ensemble.build",
         f"--model_dirs={tiny_models['dbof_bf16']},{tiny_models['gru_bf16']}",
         f"--output_dir={tmp_path / 'ens'}", "--tile_num=2"),
        (limited, "ensemble.inference", f"--train_dir={tiny_models['ensemble']}",
         f"--input_data_pattern={tiny_data / 'frame' / 'test*.tfrecord'}",
         f"--output_file={tmp_path / 's.csv'}", "--batch_size=8"),
        (limited, "training.train", f"--train_dir={tmp_path / 'run'}",
         f"--train_data_pattern={pattern}", *TRAIN, *GRU_FLAGS, "--save_checkpoint_steps=2"))
    for completed, name in ((swa, "swa"), (bf16, "bf16"), (ens, "ens")):
        assert_user_error(completed, str(tmp_path / name), "cannot write", "File too large",
                          "nothing was written")
    assert_user_error(csv, f"--output_file={tmp_path / 's.csv'}", "cannot write",
                      "File too large")
    assert_user_error(trained, f"--train_dir={tmp_path / 'run'}",
                      "cannot write checkpoint model.ckpt-2", "File too large")
    assert sorted(os.listdir(tmp_path)) == []
