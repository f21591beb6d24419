"""SIGINT and SIGTERM (docs/reliability.md).

Training saves a checkpoint at the step it was at and exits 128 + the signal
number with one line saying where the checkpoint is; the same command resumes
from it. Other stages leave no temporary file and say what was (not) written.
Real processes get real signals; the rest is tested in-process.
"""
from __future__ import annotations

import os
import re
import signal
import time

import pytest

from conftest import DBOF_FLAGS, TINY_CLASSES, unlabelled_shards
from support.members import make_member
from support.reliability import Started, read_checkpoint
from training import checkpoints, cli, locks
from training.cli import Interrupted
from training.model_flags import ModelFlags

PROGRESS = re.compile(r"^step\s+\d+ \|")


def no_temporaries(directory):
    """Names of temporary files or locks anywhere under directory."""
    found = []
    for root, dirs, files in os.walk(str(directory)):
        found += [os.path.join(root, name) for name in dirs + files
                  if ".tmp" in name or "tempstate" in name or "_temp" in name
                  or name.endswith(".lock")]
    return found


def assert_saved_at(train_dir, step):
    """model.ckpt-<step> is complete, loadable and holds global_step == step."""
    prefix = str(train_dir / f"model.ckpt-{step}")
    assert checkpoints.latest_checkpoint(str(train_dir)) == prefix
    assert int(read_checkpoint(prefix)["global_step"]) == step
    assert no_temporaries(train_dir) == []


def interrupted_at(code, stderr, signum, train_dir):
    """The one line of an interrupted trainer; -> the step it saved."""
    assert code == 128 + signum, (code, stderr)
    assert len(stderr) == 1, stderr
    name = signal.Signals(signum).name
    match = re.fullmatch(rf"interrupted \({name}\) at step (\d+); saved "
                         rf"{re.escape(str(train_dir))}/model\.ckpt-(\d+); run the same "
                         rf"command to resume", stderr[0])
    assert match and match.group(1) == match.group(2), stderr[0]
    return int(match.group(1))


@pytest.mark.slow
def test_training_saves_on_sigterm_and_sigint_and_resumes(tiny_data, tmp_path):
    """SIGTERM, then (rerun) two SIGINTs 10 ms apart (the second lands in the
    step or the save and waits), then a rerun to the end: each run resumes
    from the checkpoint of the step the previous one was interrupted at."""
    train_dir = tmp_path / "run"
    args = [f"--train_dir={train_dir}",
            f"--train_data_pattern={tiny_data / 'frame' / 'train*.tfrecord'}",
            *DBOF_FLAGS, f"--num_classes={TINY_CLASSES}", "--batch_size=4", "--num_readers=2",
            "--shuffle_buffer=16", "--num_epochs=0", "--max_steps=120",
            "--save_checkpoint_steps=1000", "--log_steps=1", "--summary_steps=1000"]
    first = Started("training.train", *args)
    first.signal_when(PROGRESS.match, signal.SIGTERM)
    code, _, stderr = first.finish()
    step = interrupted_at(code, stderr, signal.SIGTERM, train_dir)
    assert_saved_at(train_dir, step)

    second = Started("training.train", *args)
    second.signal_when(PROGRESS.match, signal.SIGINT, signal.SIGINT)
    code, output, stderr = second.finish()
    assert f"resumed from {train_dir / f'model.ckpt-{step}'}" in output
    assert f"from step {step} to 120" in output
    later = interrupted_at(code, stderr, signal.SIGINT, train_dir)
    assert later > step
    assert_saved_at(train_dir, later)

    code, output, stderr = Started("training.train", *args).finish()
    assert code == 0, (output[-2000:], stderr[-20:])
    assert f"from step {later} to 120" in output
    assert_saved_at(train_dir, 120)


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupts")
    model = make_member(root / "model", "Soft-DBoF-4k", seed=1, cluster_size=64,
                        hidden_size=64, num_samples=10)
    pattern = unlabelled_shards(root / "data", num_shards=4, videos_per_shard=48, seed=5,
                                max_frames=30)
    return model, pattern


@pytest.mark.slow
def test_inference_interrupted_leaves_no_temporary_file(model_and_data, tmp_path):
    """The CSV (atomic_file): nothing written, nothing temporary left."""
    model, pattern = model_and_data
    output = tmp_path / "out" / "submission.csv"
    run = Started("ensemble.inference", f"--train_dir={model}",
                  f"--input_data_pattern={pattern}", f"--output_file={output}",
                  "--batch_size=1")
    run.signal_when(lambda line: line.startswith("loaded "), signal.SIGINT)
    code, _, stderr = run.finish()
    assert code == 130, stderr
    assert stderr == [f"interrupted (SIGINT); nothing was written to --output_file={output}"]
    assert os.listdir(tmp_path) == []   # (not even the dir made for it)


@pytest.mark.slow
def test_sharded_inference_interrupted_says_which_parts_are_done(model_and_data, tmp_path):
    model, pattern = model_and_data
    output = tmp_path / "submission.csv"
    parts = f"{output}.parts"
    run = Started("ensemble.inference", f"--train_dir={model}",
                  f"--input_data_pattern={pattern}", f"--output_file={output}",
                  "--batch_size=1", "--num_shards=1", "--shard_index=0")
    run.signal_when(lambda line: "[1/4]" in line, signal.SIGTERM)
    code, _, stderr = run.finish()
    assert code == 143, stderr
    match = re.fullmatch(rf"interrupted \(SIGTERM\); ([1-3]) of 4 parts of this shard are done "
                         rf"in {re.escape(parts)}; run the same command to continue",
                         stderr[0] if len(stderr) == 1 else str(stderr))
    assert match, stderr
    done = sorted(name for name in os.listdir(parts) if name.endswith(".json"))
    assert len(done) == int(match.group(1))
    assert no_temporaries(tmp_path) == []


# ---------------------------------------------------------------------------
# In-process


def test_atomic_outputs_interrupted_remove_their_temporary_output(tmp_path):
    for context, name in ((checkpoints.atomic_directory, "dir"),
                          (checkpoints.atomic_file, "file")):
        target = tmp_path / name
        with pytest.raises(Interrupted) as caught:
            with context(str(target)) as temp:
                with open(os.path.join(temp, "part") if name == "dir" else temp, "w") as out:
                    out.write("half")
                raise Interrupted(signal.SIGTERM)
        assert caught.value.line() == f"interrupted (SIGTERM); nothing was written to {target}"
        assert os.listdir(tmp_path) == []


def test_a_trainer_interrupted_before_training_leaves_nothing(tmp_path):
    from training import train_dir as train_dirs

    train_dir = tmp_path / "new"
    with pytest.raises(Interrupted) as caught:
        with train_dirs.removed_on_failed_start(str(train_dir)):
            checkpoints.write_model_flags(str(train_dir), ModelFlags(
                "FrameMeanMoeModel", "rgb,audio", "1024,128", True, 10))
            assert locks.holder_pid(str(train_dir / ".lock")) == os.getpid()
            raise Interrupted(signal.SIGINT)
    assert caught.value.line() == "interrupted (SIGINT) before training started; nothing was saved"
    assert os.listdir(tmp_path) == []


@pytest.fixture
def interrupt_handlers():
    """The handlers run_main installs (restored afterwards)."""
    previous = {signum: signal.getsignal(signum) for signum in cli.INTERRUPT_SIGNALS}
    for signum in cli.INTERRUPT_SIGNALS:
        signal.signal(signum, cli._raise_interrupted)
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def test_a_signal_raises_and_waits_for_a_deferred_block(interrupt_handlers):
    with pytest.raises(Interrupted) as caught:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
    assert caught.value.signum == signal.SIGTERM
    finished = []
    with pytest.raises(Interrupted) as caught:
        with cli.interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)   # a second signal: the first one is raised
            time.sleep(0.05)
            assert cli.interrupt_pending()
            finished.append(True)
    assert finished and caught.value.signum == signal.SIGINT
    assert not cli.interrupt_pending()
    # An Interrupted already on its way is not replaced by a second signal.
    with pytest.raises(Interrupted) as caught:
        try:
            raise Interrupted(signal.SIGTERM).noted("kept")
        finally:
            with cli.interrupts_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
    assert caught.value.line() == "interrupted (SIGTERM); kept"


@pytest.mark.slow
def test_cluster_tasks_interrupted(tiny_data, tmp_path):
    """Under TF_CONFIG: a worker that is not the chief just stops, with its
    line; the chief saves the step it was at; a parameter server stops."""
    from support.training_runs import free_ports, start_task, wait_for

    ps_port, chief_port, worker_port = free_ports(3)
    cluster = {"ps": [f"127.0.0.1:{ps_port}"],
               "worker": [f"127.0.0.1:{chief_port}", f"127.0.0.1:{worker_port}"]}
    train_dir = tmp_path / "run"
    pattern = str(tiny_data / "frame" / "train*.tfrecord")
    logs = {name: tmp_path / f"{name}.log" for name in ("ps", "chief", "worker")}
    tasks = {"ps": ("ps", 0), "chief": ("worker", 0), "worker": ("worker", 1)}
    processes = {name: start_task(cluster, *tasks[name], str(train_dir), pattern,
                                  str(logs[name]), 100000) for name in tasks}
    try:
        for name in ("worker", "chief"):
            log = logs[name]
            assert wait_for(lambda log=log: "step " in log.read_text().split("workers")[-1],
                            120), log.read_text()[-2000:]
        ends = {}
        for name, signum in (("worker", signal.SIGTERM), ("chief", signal.SIGINT),
                             ("ps", signal.SIGTERM)):
            processes[name].send_signal(signum)
            assert processes[name].wait(timeout=120) == 128 + signum, \
                logs[name].read_text()[-2000:]
            ends[name] = logs[name].read_text().strip().splitlines()[-1]
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    assert re.fullmatch(r"interrupted \(SIGTERM\) at step \d+; not the chief: the chief saves "
                        r"the checkpoints", ends["worker"]), ends["worker"]
    step = interrupted_at(130, [ends["chief"]], signal.SIGINT, train_dir)
    assert_saved_at(train_dir, step)
    assert ends["ps"] == "interrupted (SIGTERM); parameter server 0 stopped"
