"""One writer per output (training.locks; docs/reliability.md).

A second writer of a train dir or of any stage's output that a live process
is writing is refused in one line naming the output and the holder's pid; a
lock file left by a killed process never blocks.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import DBOF_FLAGS, REPO_ROOT, TINY_CLASSES
from training import checkpoints, locks
from training.cli import UserError

BUSY = "another process (pid {pid}) is writing it"

# A holder that follows the protocol without importing the project (fast):
# lock, write the pid, say so, wait to be killed.
HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o666)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.write(fd, b"%d\\n" % os.getpid())
print("locked", flush=True)
time.sleep(600)
"""


def hold_in_another_process(lock_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_path)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def trainer(train_dir, data, max_steps):
    return subprocess.Popen(
        [sys.executable, "-m", "training.train", f"--train_dir={train_dir}",
         f"--train_data_pattern={data / 'frame' / 'train*.tfrecord'}", *DBOF_FLAGS,
         f"--num_classes={TINY_CLASSES}", "--batch_size=4", "--num_readers=2",
         "--shuffle_buffer=16", "--num_epochs=0", f"--max_steps={max_steps}",
         "--save_checkpoint_steps=100000", "--log_steps=1", "--summary_steps=100000"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_line(process, pattern, timeout=120.0):
    """Reads stdout until a line matches (in a thread, so a hang fails the test)."""
    found = threading.Event()

    def read():
        for line in process.stdout:
            if re.search(pattern, line):
                found.set()
                return

    threading.Thread(target=read, daemon=True).start()
    assert found.wait(timeout), f"no line matching {pattern!r}"


@pytest.mark.slow
def test_two_trainers_of_one_dir_and_a_killed_trainers_lock(tiny_data, tmp_path):
    """Two trainers started at once on one new dir: one trains, the other is
    refused (exit 2, one line naming the dir and the first one's pid). The
    lock file of the first, kill -9'ed, does not block the rerun."""
    train_dir = tmp_path / "run"
    first, second = trainer(train_dir, tiny_data, 100000), trainer(train_dir, tiny_data, 100000)
    refused, running = None, None
    deadline = time.time() + 180
    while refused is None and time.time() < deadline:
        for process, other in ((first, second), (second, first)):
            if process.poll() is not None:
                refused, running = process, other
        time.sleep(0.2)
    assert refused is not None, "neither trainer was refused"
    stderr = refused.stderr.read().strip().splitlines()
    assert refused.returncode == 2, stderr
    assert stderr == [f"error: --train_dir={train_dir}: " + BUSY.format(pid=running.pid)
                      + "; wait for it to finish or choose another dir"]
    wait_for_line(running, r"^step\s+\d+ \|")   # it trains
    running.kill()
    running.wait(timeout=60)
    assert locks.holder_pid(str(train_dir / ".lock")) == running.pid   # left behind
    rerun = trainer(train_dir, tiny_data, 3)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, (out[-2000:], err[-2000:])
    assert "done at step 3" in out
    assert not (train_dir / ".lock").exists()


# ---------------------------------------------------------------------------
# In-process


def test_a_held_lock_is_refused_with_the_holders_pid(tmp_path):
    lock = tmp_path / "out.lock"
    with locks.held(str(lock), "--output_dir=out", "wait or choose another"):
        assert lock.read_text() == f"{os.getpid()}\n"
        with pytest.raises(UserError) as refused:   # (a second block of this process too)
            with locks.held(str(lock), "--output_dir=out", "wait or choose another"):
                pass
        assert str(refused.value) == ("--output_dir=out: " + BUSY.format(pid=os.getpid())
                                      + "; wait or choose another")
    assert not lock.exists()   # released: removed
    holder = hold_in_another_process(lock)
    try:
        with pytest.raises(UserError, match=re.escape(BUSY.format(pid=holder.pid))):
            with locks.held(str(lock), "x"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with locks.held(str(lock), "x"):   # its holder died: the lock file does not block
        assert lock.read_text() == f"{os.getpid()}\n"
    assert not lock.exists()


def test_a_stale_lock_is_taken_and_dirs_made_for_a_lock_go_when_empty(tmp_path):
    lock = tmp_path / "a" / "b" / ".out.lock"
    with locks.held(str(lock), "x"):
        assert lock.exists()
    assert not (tmp_path / "a").exists()
    lock.parent.mkdir(parents=True)
    lock.write_text("999999999\n")   # a dead writer's file: no flock on it
    with locks.held(str(lock), "x"):
        assert locks.holder_pid(str(lock)) == os.getpid()
    assert os.listdir(lock.parent) == []


def test_a_waiting_writer_gets_the_lock_when_it_is_released(tmp_path):
    """wait=True (short writes) waits; the holder removes the file it locked,
    so the waiter, which locked the removed file, starts over on a new one."""
    lock = tmp_path / ".x.lock"
    taken, release = threading.Event(), threading.Event()

    def hold():
        with locks.held(str(lock), "x"):
            taken.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    taken.wait(10)
    threading.Timer(0.3, release.set).start()
    started = time.time()
    with locks.held(str(lock), "x", wait=True):
        assert time.time() - started > 0.2
        assert lock.exists() and locks.holder_pid(str(lock)) == os.getpid()
    thread.join()
    assert not lock.exists()


def test_two_atomic_writers_of_one_target(tmp_path):
    """What dead writers left (a temporary dir and an old-style lock beside
    it, a lock file with a dead pid) goes when the next writer takes the
    target's lock; a second writer of the target being written is refused
    and leaves the first one's work alone; a lent lock is taken again."""
    target = tmp_path / "out"
    dead = tmp_path / ".out.tmp-dead"
    dead.mkdir()
    (dead / "part").write_text("half")
    (tmp_path / ".out.tmp-dead.lock").write_text("")
    (tmp_path / ".out.lock").write_text("999999999\n")
    with checkpoints.atomic_directory(str(target)) as live:
        (open(os.path.join(live, "a"), "w")).write("1")
        assert sorted(os.listdir(tmp_path)) == sorted([".out.lock", os.path.basename(live)])
        for second in (checkpoints.atomic_directory, checkpoints.atomic_file):
            with pytest.raises(UserError, match=re.escape(f"{target}: "
                                                          + BUSY.format(pid=os.getpid()))):
                with second(str(target), overwrite=True):
                    pass
        assert os.path.isfile(os.path.join(live, "a"))
    assert sorted(os.listdir(tmp_path)) == ["out"]
    assert (target / "a").read_text() == "1"
    report = tmp_path / "w.json"
    with locks.held(locks.lock_file_for(str(report)), "--output_file=w.json", lend=True):
        checkpoints.write_json(str(report), {"w": 1})   # (its atomic_file gets the lent lock)
    assert sorted(os.listdir(tmp_path)) == ["out", "w.json"]


def test_inference_shards_and_teacher_records_one_writer_each(tiny_data, tmp_path):
    """A second worker of the same --shard_index is refused before the model
    loads (the missing model would be the next error); another shard index is
    not blocked. A teacher-record shard being written is refused to a second run."""
    from ensemble import inference
    from prediction2tfrecord import write

    output = tmp_path / "sub.csv"
    pattern = str(tiny_data / "frame" / "test*.tfrecord")
    args = dict(train_dir=str(tmp_path / "no_model"), input_data_pattern=pattern,
                output_file=str(output), num_shards=2, log=None)
    with locks.held(f"{output}.parts/.shard-0-of-2.lock", "x"):
        with pytest.raises(UserError) as refused:
            inference.run(shard_index=0, **args)
        assert str(refused.value) == (f"--output_file={output} --shard_index=0: "
                                      + BUSY.format(pid=os.getpid())
                                      + "; wait for it to finish or give another --shard_index")
        with pytest.raises(UserError) as other:
            inference.run(shard_index=1, **args)
        assert "no_model" in str(other.value) and "another process" not in str(other.value)
    assert not os.path.exists(f"{output}.parts")

    class Teacher:
        def __call__(self, ids, serialized):
            return [np.ones(TINY_CLASSES, np.float32) for _ in ids]

    out = tmp_path / "records"
    files = sorted(str(p) for p in (tiny_data / "frame").glob("train*.tfrecord"))
    with locks.held(locks.lock_file_for(str(out / "train00.tfrecord")), "x"):
        with pytest.raises(UserError, match=re.escape(f"{out / 'train00.tfrecord'}: "
                                                      + BUSY.format(pid=os.getpid()))):
            write.write_teacher_records(files, str(out), Teacher(), log=lambda _: None)
    assert write.write_teacher_records(files, str(out), Teacher(),
                                       log=lambda _: None)["files"] == 2
    assert sorted(os.listdir(out)) == ["train00.tfrecord", "train01.tfrecord"]
