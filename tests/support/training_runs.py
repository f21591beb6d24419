"""Tiny training runs for the tests: model flags, data patterns, and the tasks
of a loopback parameter-server cluster."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from conftest import REPO_ROOT, TINY_CLASSES
from conftest import train_config as tiny_config
from training import model_builder, train
from training import train_dir as train_dirs


def tiny_flags(model="FrameMeanMoeModel", **hparams):
    return model_builder.make_model_flags(model, "rgb,audio", "1024,128", True, TINY_CLASSES,
                                          "CrossEntropyLoss", hparams)


def train_pattern(tiny_data):
    return str(tiny_data / "frame" / "train*.tfrecord")


def train_tiny_model(train_dir: str, tiny_data) -> str:
    """A FrameMeanMoeModel (tiny_flags) trained 150 steps on tiny_data into
    train_dir; -> train_dir."""
    flags = tiny_flags()
    train_dirs.prepare_train_dir(train_dir, flags, start_new=False)
    train.train(flags, train_dir, train_pattern(tiny_data),
                tiny_config(max_steps=150, base_learning_rate=0.02), log=lambda _: None)
    return train_dir


def free_ports(count: int) -> list:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def start_task(cluster, task_type, index, train_dir, pattern, log_path, max_steps):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "",
           "TF_CONFIG": json.dumps({"cluster": cluster,
                                    "task": {"type": task_type, "index": index}})}
    log = open(log_path, "a")
    return subprocess.Popen(
        [sys.executable, "-m", "training.train", f"--train_dir={train_dir}",
         f"--train_data_pattern={pattern}", f"--num_classes={TINY_CLASSES}", "--batch_size=8",
         f"--max_steps={max_steps}", "--save_checkpoint_steps=50", "--log_steps=10",
         "--base_learning_rate=0.01"],
        cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False
