"""One task of a TensorFlow cluster described by TF_CONFIG: parameter servers
and workers, between-graph replication (as the starter code).

Workers build the same graph with variables on the parameter servers
(replica_device_setter) and read disjoint shards of the file list; the chief
(the "chief" task, or worker 0 when there is none) initialises or restores
the variables and writes the checkpoints to --train_dir. A worker that dies
and restarts reconnects and goes on with the shared variables. On SIGINT or
SIGTERM (training.cli) a worker finishes its step and stops; the chief
saves a checkpoint of the step it was at first.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Dict, Optional

from models.tf_compat import tf
from training import model_builder, readers, train_graph
from training import train_dir as train_dir_files
from training.cli import Interrupted, UserError, interrupt_pending, interrupts_deferred
from training.model_flags import ModelFlags
from training.progress import Progress
from training.train_config import TrainConfig


def cluster_from_env() -> Optional[Dict[str, Any]]:
    """Parses TF_CONFIG ({"cluster": {...}, "task": {"type", "index"}}) or None."""
    raw = os.environ.get("TF_CONFIG", "")
    if not raw.strip():
        return None
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
        task_type, task_index = task["type"], int(task.get("index", 0))
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"TF_CONFIG: not a valid cluster description ({err})") from None
    if task_type not in cluster or task_index >= len(cluster[task_type]):
        raise UserError(f"TF_CONFIG: task {task_type}:{task_index} is not in the cluster "
                        f"{sorted(cluster)}")
    if task_type not in ("ps", "worker", "chief"):
        raise UserError(f"TF_CONFIG: task type {task_type!r} is not ps, worker or chief")
    return {"cluster": cluster, "type": task_type, "index": task_index}


class _PollingWorkerSessionCreator(tf.train.SessionCreator):
    """A non-chief worker's session: waits for the chief to initialise the
    variables, checking every second (TensorFlow's default waits 30 s)."""

    def __init__(self, scaffold, master: str, config, poll_seconds: float = 1.0,
                 max_wait_seconds: float = 3600.0):
        self.scaffold, self.master, self.config = scaffold, master, config
        self.poll_seconds, self.max_wait_seconds = poll_seconds, max_wait_seconds

    def create_session(self):
        self.scaffold.finalize()
        manager = tf.train.SessionManager(
            local_init_op=self.scaffold.local_init_op, ready_op=self.scaffold.ready_op,
            ready_for_local_init_op=self.scaffold.ready_for_local_init_op,
            graph=tf.get_default_graph(), recovery_wait_secs=self.poll_seconds)
        return manager.wait_for_session(self.master, config=self.config,
                                        max_wait_secs=self.max_wait_seconds)


def is_chief(cluster_info: Dict[str, Any]) -> bool:
    """The "chief" task, or worker 0 when the cluster has no chief."""
    return cluster_info["type"] == "chief" or (
        cluster_info["type"] == "worker" and cluster_info["index"] == 0
        and "chief" not in cluster_info["cluster"])


def _worker_files(cluster_info: Dict[str, Any], data_pattern: str):
    """(this worker's shard number, worker count, its files)."""
    workers = [(job, i) for job in ("chief", "worker")
               for i in range(len(cluster_info["cluster"].get(job, [])))]
    shard = workers.index((cluster_info["type"], cluster_info["index"]))
    files = readers.resolve_files(data_pattern, "train_data_pattern")
    if len(files) >= len(workers):
        files = files[shard::len(workers)]
    return shard, len(workers), files


def _worker_graph(model_flags: ModelFlags, config: TrainConfig, cluster, task: str,
                  shard: int, files):
    """(graph, ops, saver): the training graph with variables on the parameter servers."""
    graph = tf.Graph()
    with graph.as_default():
        tf.set_random_seed(config.seed + shard)
        with tf.device(f"{task}/cpu:0"):
            batch = train_graph.make_train_batch(
                model_builder.make_reader(model_flags), ",".join(files), config,
                config.batch_size, config.seed + shard)
        setter = tf.train.replica_device_setter(worker_device=task, cluster=cluster)
        with tf.device(setter):
            ops = train_graph.build_train_graph(model_flags, batch, [None], config)
            saver = tf.train.Saver(
                max_to_keep=config.max_to_keep,
                keep_checkpoint_every_n_hours=config.keep_checkpoint_every_n_hours)
    return graph, ops, saver


def _worker_session(chief: bool, server, train_dir: str, config: TrainConfig, saver, task: str):
    hooks = [tf.train.StopAtStepHook(last_step=config.max_steps)] if config.max_steps else []
    scaffold = tf.train.Scaffold(saver=saver)
    # Talk only to the parameter servers and this task, so a worker does not
    # wait for (or hang on) the other workers.
    session_config = tf.ConfigProto(allow_soft_placement=True,
                                    device_filters=["/job:ps", task])
    if chief:
        return tf.train.MonitoredTrainingSession(
            master=server.target, is_chief=True, checkpoint_dir=train_dir,
            scaffold=scaffold, hooks=hooks, save_checkpoint_steps=config.save_checkpoint_steps,
            save_checkpoint_secs=None, save_summaries_steps=None,
            save_summaries_secs=None, log_step_count_steps=None, config=session_config)
    return tf.train.MonitoredSession(
        session_creator=_PollingWorkerSessionCreator(scaffold, server.target, session_config),
        hooks=hooks)


def _serve(task_index: int) -> None:
    """A parameter server serves until it is killed or interrupted (not
    server.join(): the signal handler would wait for it forever)."""
    try:
        while True:
            time.sleep(3600)
    except Interrupted as interrupt:
        raise interrupt.noted(f"parameter server {task_index} stopped") from None


def train_distributed(model_flags: ModelFlags, train_dir: str, data_pattern: str,
                      config: TrainConfig, cluster_info: Dict[str, Any],
                      log: Callable[[str], None] = print) -> Optional[Dict[str, Any]]:
    """One task of a TF_CONFIG cluster (module docstring). A parameter server
    serves until killed; a worker trains and returns {"global_step", "loss"}."""
    if train_graph.tail_steps(config):
        # MonitoredTrainingSession saves at one fixed cadence; the tail's own
        # cadence and its kept checkpoints are the local trainer's.
        raise UserError("--swa_tail_steps: the averaging tail runs in the local trainer, not "
                        "under TF_CONFIG; train the tail without TF_CONFIG (it resumes)")
    cluster = tf.train.ClusterSpec(cluster_info["cluster"])
    task_type, task_index = cluster_info["type"], cluster_info["index"]
    server = tf.train.Server(cluster, job_name=task_type, task_index=task_index,
                             config=tf.ConfigProto(allow_soft_placement=True))
    if task_type == "ps":
        log(f"parameter server {task_index} serving at {server.target}")
        _serve(task_index)
        return None
    chief, task = is_chief(cluster_info), f"/job:{task_type}/task:{task_index}"
    shard, num_workers, files = _worker_files(cluster_info, data_pattern)
    graph, ops, saver = _worker_graph(model_flags, config, cluster, task, shard, files)
    step, loss_value = 0, float("nan")
    log(f"{task_type} {task_index} of {num_workers} workers "
        f"({'chief' if chief else 'not chief'}), {len(files)} file(s)")
    with graph.as_default():
        session = _worker_session(chief, server, train_dir, config, saver, task)
    try:
        # A SIGINT/SIGTERM ends the loop after its step; the session closes
        # normally (the chief's saver hook saves the last step), then it is raised.
        with interrupts_deferred(), graph.as_default(), session as sess:
            progress = Progress("examples", config.max_steps,
                                units_per_count=config.batch_size)
            while not sess.should_stop() and not interrupt_pending():
                try:
                    step, loss_value = sess.run([ops["train_op"], ops["loss"]])
                except tf.errors.OutOfRangeError:
                    break
                if step % config.log_steps == 0:
                    log(progress.line(int(step), f"step {int(step):>7d} | loss {loss_value:9.3f}"))
    except Interrupted as interrupt:
        if chief:
            raise train_dir_files.noted_with_checkpoint(interrupt, train_dir) from None
        raise interrupt.noted("not the chief: the chief saves the checkpoints",
                              at=f"at step {int(step)}") from None
    log(f"{task_type} {task_index} done at step {step}")
    return {"global_step": int(step), "loss": float(loss_value)}
