"""kill -9 at random moments during training, SWA, bf16 conversion, ensemble
export, CSV writing, teacher-record writing and stacking.

Each stage is started, killed with SIGKILL after a seeded random delay (counted
from the moment it starts its real work, so the kills land in reading,
computing and writing), three times in a row with the same command, and then
run once more to the end. After every kill: no checkpoint or output is corrupt
or half-written (an output either does not exist or is complete and loadable),
and the next run is not blocked by what the killed one left; training resumes
from the latest complete checkpoint. After the final run nothing temporary is
left next to the output.

A kill that comes after the work ended tests nothing, so for SWA, bf16
conversion, ensemble export and CSV writing every kill must land while the
work is in progress (the process still running and its output not yet
there); a kill that came too late is tried again with half the delay, at
most MAX_TRIES times (kill_cycle). Mutations tried: swa.average printing
its "averaging ..." line after the work instead of before (every kill then
lands after the output is written: the kill test used to pass, now it fails
after 6 tries); checkpoints.atomic_directory yielding the output dir itself
instead of a temporary one (a killed writer leaves a partial dir) fails the
SWA and conversion tests at their first kill.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from typing import Callable

import numpy as np
import pytest

from conftest import DBOF_FLAGS, TINY_CLASSES, decode_teacher
from ensemble.check_submission import check_submission
from support.members import make_member
from support.reliability import Started, read_checkpoint, temp_leftovers
from training import checkpoints

pytestmark = pytest.mark.slow

KILLS = 3
# Tries per kill to land it while the work is in progress (the delay halves
# after each one that came too late).
MAX_TRIES = 6
BIG_DBOF = {"cluster_size": 2048, "hidden_size": 1024, "num_samples": 10}   # ~18 MB fp32


def finished(run: Started) -> str:
    """The stdout of a run that must end well."""
    code, output, stderr = run.finish()
    assert code == 0, (output[-2000:], "\n".join(stderr)[-3000:])
    return output


def kill_cycle(module, args, marker, max_delay, check_after_kill, seed, watch=None,
               in_progress=None):
    """KILLS kills of the same command, then a run to the end; returns its stdout.

    in_progress(run), asked right after a kill: whether the work had not
    ended yet (its output not there). Given, each kill must land while the
    process still ran and in_progress holds; one that came too late is tried
    again with half the delay, up to MAX_TRIES times."""
    rng = random.Random(seed)
    for number in range(KILLS):
        delay = rng.uniform(0.0, max_delay)
        for _ in range(MAX_TRIES):
            run = Started(module, *args)
            landed = run.kill_after(marker, delay) and (in_progress is None or in_progress(run))
            if os.environ.get("KILL_DEBUG") and watch:
                print(module, f"kill {number + 1} after {delay:.3f} s, landed {landed}:",
                      sorted(os.listdir(watch)))
            check_after_kill(run)
            if landed:
                break
            delay /= 2
        else:
            raise AssertionError(f"{module}: kill {number + 1} never landed while the work was "
                                 f"in progress ({MAX_TRIES} tries, the last {delay * 2:.3f} s "
                                 f"after {marker!r})")
    return finished(Started(module, *args))


def absent(path) -> Callable[[Started], bool]:
    """in_progress of a stage whose (atomic) output is `path`: not there yet."""
    return lambda run: not os.path.exists(path)


@pytest.fixture(scope="module")
def big_train_dir(tmp_path_factory):
    """A train dir of a wide Soft-DBoF (~18 MB per checkpoint), checkpoints 1-3."""
    directory = tmp_path_factory.mktemp("kill") / "big_train"
    make_member(directory, "Soft-DBoF-4k", seed=3, **BIG_DBOF)
    for step in (2, 3):
        for suffix in (".index", ".data-00000-of-00001"):
            shutil.copyfile(directory / f"model.ckpt-1{suffix}",
                            directory / f"model.ckpt-{step}{suffix}")
    return directory


def assert_complete_dir(path, files):
    """An output dir either does not exist or holds every file, loadable."""
    if not os.path.exists(path):
        return False
    names = set(os.listdir(path))
    assert set(files) <= names, (files, names)
    prefix = checkpoints.latest_checkpoint(str(path)) or os.path.join(str(path),
                                                                      "inference_model")
    assert read_checkpoint(prefix)
    return True


def test_kill_training(tiny_data, tmp_path):
    train_dir = tmp_path / "run"
    args = [f"--train_dir={train_dir}",
            f"--train_data_pattern={tiny_data / 'frame' / 'train*.tfrecord'}",
            *DBOF_FLAGS, f"--num_classes={TINY_CLASSES}", "--batch_size=4", "--num_readers=2",
            "--shuffle_buffer=16", "--max_steps=150", "--swa_tail_steps=0",
            "--save_checkpoint_steps=3",
            "--log_steps=1000", "--summary_steps=1000"]
    expected_start = [0]

    def check_after_kill(run):
        # The run resumed where the previous one's last complete checkpoint was.
        text = "".join(run.lines)
        start = int(re.search(r"from step (\d+)", text).group(1))
        assert start == expected_start[0], text
        # Every checkpoint on disk is complete and loadable.
        found = checkpoints.list_checkpoints(str(train_dir))
        for _, prefix in found:
            assert read_checkpoint(prefix)
        expected_start[0] = found[-1][0] if found else 0

    output = kill_cycle("training.train", args, "from step", 1.0, check_after_kill, seed=11,
                        watch=train_dir)
    if expected_start[0]:
        assert f"resumed from {train_dir / f'model.ckpt-{expected_start[0]}'}" in output
    assert f"from step {expected_start[0]} to 150" in output
    assert checkpoints.list_checkpoints(str(train_dir))[-1][0] == 150
    leftovers = [name for name in os.listdir(train_dir)
                 if "tempstate" in name or "_temp" in name or ".tmp" in name]
    assert leftovers == []


def test_kill_swa(big_train_dir, tmp_path):
    output = tmp_path / "swa"
    args = [f"--train_dir={big_train_dir}", f"--output_dir={output}", "--last_n=3"]

    def check_after_kill(run):
        if assert_complete_dir(output, ["model.ckpt-3.index", "swa.json", "model_flags.json"]):
            shutil.rmtree(output)   # finished before the kill: start over

    kill_cycle("swa.average", args, "averaging", 0.4, check_after_kill, seed=12,
               watch=tmp_path, in_progress=absent(output))
    assert assert_complete_dir(output, ["model.ckpt-3.index", "swa.json", "model_flags.json"])
    assert temp_leftovers(tmp_path, "swa") == []
    source = read_checkpoint(str(big_train_dir / "model.ckpt-3"))
    averaged = read_checkpoint(str(output / "model.ckpt-3"))
    key = max(averaged, key=lambda name: averaged[name].size)   # the same in the 3 copies
    assert averaged[key].size > 10**6
    np.testing.assert_allclose(averaged[key], source[key], rtol=1e-6)


def test_kill_bf16_conversion(big_train_dir, tmp_path):
    output = tmp_path / "bf16"
    args = [f"--input_dir={big_train_dir}", f"--output_dir={output}"]
    files = ["model.ckpt-3.index", "bfloat16.json", "model_flags.json"]

    def check_after_kill(run):
        if assert_complete_dir(output, files):
            shutil.rmtree(output)

    kill_cycle("bfloat16_patch.convert", args, "converting", 0.3, check_after_kill,
               seed=13, watch=tmp_path, in_progress=absent(output))
    assert assert_complete_dir(output, files)
    assert temp_leftovers(tmp_path, "bf16") == []


def test_kill_ensemble_export(big_train_dir, tiny_models, tmp_path):
    output = tmp_path / "ens"
    args = [f"--model_dirs={big_train_dir},{tiny_models['gru_bf16']}", "--tile_num=2",
            f"--output_dir={output}"]
    files = ["inference_model.meta", "inference_model.index", "ensemble.json",
             "model_flags.json"]

    def check_after_kill(run):
        if assert_complete_dir(output, files):
            shutil.rmtree(output)

    kill_cycle("ensemble.build", args, "model1:", 0.3, check_after_kill, seed=14,
               watch=tmp_path, in_progress=absent(output))
    assert assert_complete_dir(output, files)
    assert temp_leftovers(tmp_path, "ens") == []


def test_kill_csv_writing(tiny_models, tiny_data, tmp_path):
    output = tmp_path / "submission.csv"
    args = [f"--train_dir={tiny_models['ensemble']}",
            f"--input_data_pattern={tiny_data / 'frame' / 'test*.tfrecord'}",
            f"--output_file={output}", "--batch_size=1"]

    def check_after_kill(run):
        if output.exists():
            assert check_submission(str(output), num_classes=TINY_CLASSES) == 32
            output.unlink()

    kill_cycle("ensemble.inference", args, "loaded ensemble model", 0.8, check_after_kill,
               seed=15, watch=tmp_path, in_progress=absent(output))
    assert check_submission(str(output), num_classes=TINY_CLASSES) == 32
    assert temp_leftovers(tmp_path, "submission.csv") == []


def test_kill_teacher_record_writing(tiny_models, tiny_data, tmp_path):
    from support.records import frame_files, read_examples

    files = frame_files(tiny_data)
    output = tmp_path / "records"
    # The tiny ensemble as the teacher, one video per batch: the writing
    # takes long enough for the kills to land in it.
    args = [f"--input_data_pattern={tiny_data / 'frame' / 'train*.tfrecord'}",
            f"--output_dir={output}", f"--teacher_dir={tiny_models['ensemble']}",
            f"--num_classes={TINY_CLASSES}", "--batch_size=1"]
    names = sorted(os.path.basename(f) for f in files)
    interrupted = []

    def assert_whole(name):
        records = read_examples(output / name)
        assert len(records) == len(read_examples(os.path.join(os.path.dirname(files[0]), name)))
        assert all(decode_teacher(r).shape == (TINY_CLASSES,) for r in records)

    def check_after_kill(run):
        interrupted.append("done:" not in "".join(run.lines))
        # Every visible output is a whole shard; a partial one is a hidden temporary.
        for name in os.listdir(output) if output.exists() else []:
            if not name.startswith("."):
                assert name in names
                assert_whole(name)

    final = kill_cycle("prediction2tfrecord.write", args, "teacher:", 0.5, check_after_kill,
                       seed=16, watch=output)
    assert any(interrupted), "no kill landed while the records were being written"
    assert "done:" in final
    assert sorted(os.listdir(output)) == names   # no temporaries left
    for name in names:
        assert_whole(name)


def test_kill_stacking(tiny_models, tiny_data, tmp_path):
    import json

    output = tmp_path / "weights.json"
    args = [f"--model_dirs={tiny_models['dbof_bf16']},{tiny_models['gru_bf16']}",
            f"--data_pattern={tiny_data / 'frame' / 'validate*.tfrecord'}",
            f"--output_file={output}", "--batch_size=1"]
    interrupted = []

    def check_after_kill(run):
        interrupted.append("wrote" not in "".join(run.lines))
        if output.exists():   # finished before the kill: whole, then start over
            with open(output) as handle:
                assert len(json.load(handle)["weights"]) == 2
            output.unlink()

    kill_cycle("stacking.fit", args, "stacking 2 members", 0.8, check_after_kill, seed=17,
               watch=tmp_path)
    assert any(interrupted), "no kill landed while stacking was at work"
    with open(output) as handle:
        payload = json.load(handle)
    assert len(payload["weights"]) == 2 and sum(payload["weights"]) == pytest.approx(1.0)
    assert temp_leftovers(tmp_path, "weights.json") == []
