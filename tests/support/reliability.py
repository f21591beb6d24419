"""Helpers of the reliability tests (tests/reliability/, and the determinism test):
tiny models made in-process, hand-made (bad) records, CLI runs with a file
size limit, and the checks every user error must pass."""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

import conftest
from conftest import REPO_ROOT, TINY_CLASSES, TINY_DBOF, TINY_GRU


def train_config(**overrides):
    return conftest.train_config(**{**conftest.QUIET, "batch_size": 4, "max_steps": 10,
                                    "save_checkpoint_steps": 5, "num_readers": 1,
                                    "shuffle_buffer": 16, "seed": 5, **overrides})


def build_tiny_models(root: Path, tiny_data: Path) -> Dict[str, str]:
    """In-process: two tiny train dirs (Soft-DBoF-4k with checkpoints 5 and 10,
    GRUModel), their SWA and bf16 dirs, and a 2-tile ensemble of the bf16 dirs."""
    from bfloat16_patch import convert
    from ensemble import build
    from swa import average
    from training import model_builder, train
    from training import train_dir as train_dirs

    pattern = str(tiny_data / "frame" / "train*.tfrecord")
    dirs = {}
    for name, model, hparams in (("dbof", "Soft-DBoF-4k", TINY_DBOF),
                                 ("gru", "GRUModel", TINY_GRU)):
        flags = model_builder.make_model_flags(model, "rgb,audio", "1024,128", True,
                                               TINY_CLASSES, "CrossEntropyLoss", hparams)
        train_dir = str(root / f"{name}_train")
        train_dirs.prepare_train_dir(train_dir, flags, start_new=False)
        train.train(flags, train_dir, pattern, train_config(), log=lambda _: None)
        swa_dir, bf16_dir = str(root / f"{name}_swa"), str(root / f"{name}_bf16")
        average.average(train_dir, swa_dir, last_n=2, log=None)
        convert.convert_checkpoint(swa_dir, bf16_dir, log=None)
        dirs.update({f"{name}_train": train_dir, f"{name}_swa": swa_dir,
                     f"{name}_bf16": bf16_dir})
    dirs["ensemble"] = str(root / "ensemble")
    build.build_and_export([dirs["dbof_bf16"], dirs["gru_bf16"]], [1, 1], dirs["ensemble"],
                           tile_num=2, log=None)
    return dirs


# ---------------------------------------------------------------------------
# Records


def sequence_example(video_id: bytes, labels: Sequence[int], frames: int,
                     features=(("rgb", 1024), ("audio", 128)), seed: int = 0,
                     teacher: Optional[np.ndarray] = None) -> bytes:
    """A frame-level record with random frames (teacher: adds the
    distillation context feature ensemble_labels)."""
    from models.tf_compat import tf

    rng = np.random.default_rng(seed)
    example = tf.train.SequenceExample()
    example.context.feature["id"].bytes_list.value.append(video_id)
    example.context.feature["labels"].int64_list.value.extend(int(x) for x in labels)
    if teacher is not None:
        example.context.feature["ensemble_labels"].bytes_list.value.append(
            np.asarray(teacher, "<f4").tobytes())
    for name, size in features:
        feature_list = example.feature_lists.feature_list[name]
        for _ in range(frames):
            feature_list.feature.add().bytes_list.value.append(
                rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    return example.SerializeToString(deterministic=True)


def write_records(path: Path, records: Iterable[bytes]) -> str:
    from models.tf_compat import tf

    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    return str(path)


def good_records(count: int = 16, frames: int = 6) -> List[bytes]:
    return [sequence_example(b"v%03d" % i, [i % TINY_CLASSES], frames, seed=i)
            for i in range(count)]


# ---------------------------------------------------------------------------
# Running the stages


def _no_file_size_limit_signal(limit: int):
    def prepare():
        # Writes past the limit fail with EFBIG instead of killing the process.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return prepare


def run_with_file_size_limit(module: str, *args: str, limit: int,
                             timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m module args` where no file can grow past `limit` bytes: a
    full disk as a writer sees it (write() fails with EFBIG)."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=_no_file_size_limit_signal(limit))


def assert_not_cut(line: str) -> None:
    """A message that was not cut in the middle: brackets balanced outside
    quoted text, and it does not end in the middle of a clause."""
    import re

    unquoted = re.sub(r"'[^']*'|\"[^\"]*\"", "", line)
    for opening, closing in ("()", "[]", "{}"):
        assert unquoted.count(opening) == unquoted.count(closing), (opening + closing, line)
    assert not line.rstrip().endswith((":", "(", ",", "[", "{", " -")), line


def assert_user_error(completed: subprocess.CompletedProcess, *mentions: str) -> str:
    """A user error: exit 2, exactly one line on stderr, 'error: ...', naming
    each of `mentions` (the flag or file), no traceback. Returns the line."""
    stderr = completed.stderr
    assert completed.returncode == 2, (completed.returncode, completed.stdout[-2000:],
                                       stderr[-3000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr[-3000:]
    assert lines[0].startswith("error: "), lines[0]
    assert_not_cut(lines[0])
    for mention in mentions:
        assert mention in lines[0], (mention, lines[0])
    return lines[0]


def temp_leftovers(parent, name: str) -> List[str]:
    """Temporary siblings of output `name` in `parent` (.<name>.tmp-*)."""
    parent = str(parent)
    if not os.path.isdir(parent):
        return []
    return sorted(entry for entry in os.listdir(parent) if entry.startswith(f".{name}."))


def snapshot(path) -> Dict[str, tuple]:
    """{relative path: (size, mtime_ns)} of every file under path."""
    result = {}
    for root, _, files in os.walk(str(path)):
        for name in files:
            full = os.path.join(root, name)
            stat = os.lstat(full)
            result[os.path.relpath(full, str(path))] = (stat.st_size, stat.st_mtime_ns)
    return result


def read_checkpoint(prefix: str) -> Dict[str, np.ndarray]:
    """Every tensor of a checkpoint (fails on a corrupt or half-written one)."""
    from models.tf_compat import tf

    reader = tf.train.load_checkpoint(prefix)
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()}


def run_cases(specs: Dict[str, dict], work_dir, timeout: int = 120) -> Dict[str, tuple]:
    """Runs command lines of several entry points in one process
    (tests/support/cli_driver.py: one TensorFlow import for all). specs: {module:
    {"cases": [argv, ...], "per_path_flag": {kind: [values]}?}} (per_path_flag:
    `--<flag>=<value>` for every path flag and each value of its kind) -> {module:
    ({flag: path kind}, its string flags, [subprocess.CompletedProcess per
    case run, .flag set on the generated ones])}."""
    import json

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    cases, results = work_dir / "cases.json", work_dir / "results.json"
    cases.write_text(json.dumps({
        module: {**spec, "cases": [{"argv": list(argv)} for argv in spec.get("cases", [])],
                 "timeout": timeout} for module, spec in specs.items()}))
    driver = subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "support" / "cli_driver.py"),
                             str(cases), str(results)], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=timeout * 20 + 60)
    assert driver.returncode == 0, (driver.stdout[-3000:], driver.stderr[-5000:])
    outcome = {}
    for module, payload in json.loads(results.read_text()).items():
        completed = []
        for row in payload["results"]:
            result = subprocess.CompletedProcess([module, *row["argv"]], row["code"],
                                                 row["stdout"], row["stderr"])
            result.flag = row.get("flag")
            completed.append(result)
        outcome[module] = (payload["path_flags"], payload["string_flags"], completed)
    return outcome


class Started:
    """`python -m module args` started in the background, its stdout read
    line by line (tests/reliability/test_kill.py kills it, tests/reliability/test_interrupts.py
    signals it, both at a line they wait for)."""

    def __init__(self, module: str, *args: str):
        self.process = subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO_ROOT,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, bufsize=1)
        self.lines: List[str] = []
        self.marker = None
        self.seen = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)
            if self.marker is not None and self.marker(line):
                self.seen.set()
        self.seen.set()   # the process ended

    def wait_for(self, marker, timeout: float = 120.0) -> None:
        """Until a stdout line matches marker (a function of the line, or a
        substring), or the process ends."""
        self.marker = marker if callable(marker) else (lambda line: marker in line)
        if any(self.marker(line) for line in self.lines):
            self.seen.set()
        assert self.seen.wait(timeout), (marker, self.lines)

    def signal_when(self, marker, *signums: int, timeout: float = 120.0) -> None:
        """Sends the signals (10 ms apart) as soon as a stdout line matches marker."""
        self.wait_for(marker, timeout)
        assert self.process.poll() is None, ("ended before the signal", self.output())
        for signum in signums:
            self.process.send_signal(signum)
            time.sleep(0.01)

    def kill_after(self, marker, delay: float, timeout: float = 120.0) -> bool:
        """SIGKILL `delay` seconds after a stdout line matches marker; -> False
        when the process had already ended by itself."""
        self.wait_for(marker, timeout)
        time.sleep(delay)
        ended_by_itself = self.process.poll() is not None
        self.process.kill()
        self.process.wait(timeout=60)
        self.reader.join(timeout=10)
        return not ended_by_itself

    def finish(self, timeout: float = 300.0) -> tuple:
        """-> (exit code, stdout, stderr lines)."""
        self.process.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return self.process.returncode, self.output(), \
            self.process.stderr.read().strip().splitlines()

    def output(self) -> str:
        return "".join(self.lines)
