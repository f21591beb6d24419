"""Several machines: one parameter server and two workers on loopback."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT
from models.tf_compat import tf
from support.training_runs import free_ports, start_task, wait_for
from training import checkpoints

pytestmark = pytest.mark.slow


def test_ps_and_two_workers_with_a_worker_restart(tiny_data, tmp_path):
    ps_port, chief_port, worker_port = free_ports(3)
    cluster = {"ps": [f"127.0.0.1:{ps_port}"],
               "worker": [f"127.0.0.1:{chief_port}", f"127.0.0.1:{worker_port}"]}
    train_dir = str(tmp_path / "run")
    pattern = str(tiny_data / "frame" / "train*.tfrecord")
    logs = {name: str(tmp_path / f"{name}.log") for name in ("ps", "chief", "worker")}
    max_steps = 400
    ps = start_task(cluster, "ps", 0, train_dir, pattern, logs["ps"], max_steps)
    processes = [ps]
    try:
        chief = start_task(cluster, "worker", 0, train_dir, pattern, logs["chief"], max_steps)
        worker = start_task(cluster, "worker", 1, train_dir, pattern, logs["worker"], max_steps)
        processes += [chief, worker]
        # Kill the second worker once it has trained, then start it again.
        assert wait_for(lambda: "step" in open(logs["worker"]).read(), 120), \
            open(logs["worker"]).read()[-2000:]
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        restarted = start_task(cluster, "worker", 1, train_dir, pattern, logs["worker"],
                               max_steps)
        processes.append(restarted)
        assert chief.wait(timeout=300) == 0, open(logs["chief"]).read()[-3000:]
        assert restarted.wait(timeout=120) == 0, open(logs["worker"]).read()[-3000:]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    worker_log = open(logs["worker"]).read()
    assert worker_log.count("worker 1 of 2 workers") == 2  # started twice
    assert "worker 1 done at step" in worker_log
    latest = checkpoints.latest_checkpoint(train_dir)
    assert latest is not None and checkpoints.checkpoint_step(latest) >= max_steps
    reader = tf.train.load_checkpoint(latest)
    weights = reader.get_tensor("tower/experts/weights")
    assert np.all(np.isfinite(weights)) and np.abs(weights).max() > 0
    assert checkpoints.read_model_flags(train_dir).model == "FrameMeanMoeModel"


def test_bad_tf_config_is_a_clear_error(tiny_data, tmp_path):
    env = {**os.environ, "TF_CONFIG": '{"cluster": {"worker": ["127.0.0.1:1"]}, '
                                      '"task": {"type": "worker", "index": 3}}'}
    completed = subprocess.run(
        [sys.executable, "-m", "training.train", f"--train_dir={tmp_path}",
         f"--train_data_pattern={tiny_data / 'frame' / 'train*.tfrecord'}"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert completed.returncode != 0
    assert "TF_CONFIG" in completed.stderr and "Traceback" not in completed.stderr
