"""The trainer: loop, checkpoints, resume, towers, learning rate, clipping."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import TINY_CLASSES, run_module
from conftest import train_config as tiny_config
from models import layers
from models.tf_compat import tf
from support.training_runs import tiny_flags, train_pattern
from training import checkpoints, train, train_graph
from training import train_dir as train_dirs
from training.cli import UserError


@pytest.mark.slow
def test_trains_checkpoints_and_resumes(tiny_data, tmp_path):
    train_dir = str(tmp_path / "run")
    flags = tiny_flags()
    train_dirs.prepare_train_dir(train_dir, flags, start_new=False)
    lines = []
    result = train.train(flags, train_dir, train_pattern(tiny_data), tiny_config(),
                         log=lines.append)
    assert result["global_step"] == 40
    steps = [step for step, _ in checkpoints.list_checkpoints(train_dir)]
    assert steps == [15, 30, 40]  # every 15 steps plus the final step
    assert any("examples/sec" in line and "ETA" in line for line in lines)
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(train_dir))
    with open(os.path.join(train_dir, "model_flags.json")) as handle:
        saved = json.load(handle)
    assert saved["model"] == "FrameMeanMoeModel" and saved["num_classes"] == TINY_CLASSES
    assert saved["model_hparams"] == {"moe_num_mixtures": 2, "moe_l2": 1e-8}

    lines.clear()
    result = train.train(flags, train_dir, train_pattern(tiny_data),
                         tiny_config(max_steps=50), log=lines.append)
    assert any("resumed from" in line and "model.ckpt-40" in line for line in lines)
    assert result["global_step"] == 50
    assert checkpoints.list_checkpoints(train_dir)[-1][0] == 50


@pytest.mark.slow
def test_loss_falls(tiny_data, tmp_path):
    losses = []

    def record(line):
        if line.startswith("step"):
            losses.append(float(line.split("|")[1].split()[1]))

    train.train(tiny_flags(), str(tmp_path), train_pattern(tiny_data),
                tiny_config(max_steps=120, log_steps=10, save_checkpoint_steps=1000,
                            base_learning_rate=0.02),
                log=record)
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:2])


def test_num_epochs_stops_training(tiny_data, tmp_path):
    # 64 training videos, batch 8: one epoch is 8 full batches.
    result = train.train(tiny_flags(), str(tmp_path), train_pattern(tiny_data),
                         tiny_config(num_epochs=1, max_steps=None), log=lambda _: None)
    assert result["global_step"] == 8
    assert checkpoints.list_checkpoints(str(tmp_path))[-1][0] == 8


@pytest.mark.slow
@pytest.mark.parametrize("matmul_dtype", ["float32", "bfloat16"])
def test_two_cpu_towers(tiny_data, tmp_path, matmul_dtype):
    lines = []
    result = train.train(tiny_flags(), str(tmp_path), train_pattern(tiny_data),
                         tiny_config(cpu_towers=2, batch_size=4, max_steps=12,
                                     matmul_dtype=matmul_dtype),
                         log=lines.append)
    assert result["global_step"] == 12
    assert any("2 tower(s)" in line for line in lines)
    reader = tf.train.load_checkpoint(checkpoints.latest_checkpoint(str(tmp_path)))
    names = reader.get_variable_to_shape_map()
    assert "tower/gates/weights" in names and not any(n.startswith("tower_1") for n in names)


def test_average_gradients_is_a_mean():
    graph = tf.Graph()
    with graph.as_default():
        var = tf.Variable([0.0, 0.0])
        other = tf.Variable(1.0)
        grads = train_graph.average_gradients(
            [[(tf.constant([1.0, 2.0]), var), (None, other)],
             [(tf.constant([3.0, 6.0]), var), (None, other)]])
        assert len(grads) == 1 and grads[0][1] is var
        with tf.Session() as sess:
            np.testing.assert_allclose(sess.run(grads[0][0]), [2.0, 4.0])


def test_clipping_is_per_variable():
    graph = tf.Graph()
    with graph.as_default():
        a, b = tf.Variable([0.0, 0.0]), tf.Variable([0.0])
        clipped = train_graph.clip_per_variable([(tf.constant([3.0, 4.0]), a),
                                                 (tf.constant([0.5]), b)], 1.0)
        with tf.Session() as sess:
            big, small = sess.run([clipped[0][0], clipped[1][0]])
    np.testing.assert_allclose(big, [0.6, 0.8], rtol=1e-6)  # norm 5 -> 1
    np.testing.assert_allclose(small, [0.5])                # under the norm: unchanged


def test_learning_rate_is_staircase_in_examples(tiny_data):
    graph = tf.Graph()
    with graph.as_default():
        batch = {"features": tf.zeros([8, 300, 1152]), "num_frames": tf.fill([8], 3),
                 "labels": tf.zeros([8, TINY_CLASSES]), "id": tf.fill([8], "x")}
        config = tiny_config(base_learning_rate=2e-4, learning_rate_decay=0.8,
                             learning_rate_decay_examples=4000.0, batch_size=4)
        ops = train_graph.build_train_graph(tiny_flags(), batch, ["/cpu:0", "/cpu:1"], config)
        with tf.Session(config=train_graph.session_config(["/cpu:0", "/cpu:1"])) as sess:
            sess.run(tf.global_variables_initializer())
            # 2 towers x 4 examples = 8 examples per step: decay every 500 steps.
            for step, expected in ((0, 2e-4), (499, 2e-4), (500, 1.6e-4), (1250, 1.28e-4)):
                sess.run(ops["global_step"].assign(step))
                assert sess.run(ops["learning_rate"]) == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow
def test_batch_norm_statistics_update_every_step(tiny_data, tmp_path):
    """A model with batch norm: its moving statistics move during training."""
    from models import registry

    if "Soft-DBoF-4k" not in registry.model_names():
        pytest.skip("the six presets are not registered")
    flags = tiny_flags("Soft-DBoF-4k", cluster_size=8, hidden_size=8)
    train.train(flags, str(tmp_path), train_pattern(tiny_data),
                tiny_config(max_steps=5, save_checkpoint_steps=100), log=lambda _: None)
    reader = tf.train.load_checkpoint(checkpoints.latest_checkpoint(str(tmp_path)))
    means = [name for name in reader.get_variable_to_shape_map()
             if name.endswith("input_bn/moving_mean")]
    assert means and np.abs(reader.get_tensor(means[0])).max() > 0


def test_start_new_model_removes_only_trainer_files(tiny_data, tmp_path):
    train_dir = tmp_path / "run"
    train_dir.mkdir()
    (train_dir / "notes.txt").write_text("keep me")
    (train_dir / "data").mkdir()
    flags = tiny_flags()
    train_dirs.prepare_train_dir(str(train_dir), flags, start_new=False)
    train.train(flags, str(train_dir), train_pattern(tiny_data), tiny_config(max_steps=3),
                log=lambda _: None)
    assert checkpoints.list_checkpoints(str(train_dir))
    train_dirs.prepare_train_dir(str(train_dir), flags, start_new=True)
    assert not checkpoints.list_checkpoints(str(train_dir))
    assert (train_dir / "notes.txt").read_text() == "keep me" and (train_dir / "data").is_dir()


def test_model_flags_mismatch_is_a_clear_error(tmp_path):
    train_dirs.prepare_train_dir(str(tmp_path), tiny_flags(), start_new=False)
    with pytest.raises(UserError, match="model_flags.json.*moe_num_mixtures|model_hparams"):
        train_dirs.prepare_train_dir(str(tmp_path), tiny_flags(moe_num_mixtures=4),
                                     start_new=False)


@pytest.mark.slow
def test_cli_errors_are_one_line(tiny_data, tmp_path):
    missing = run_module("training.train", f"--train_dir={tmp_path}",
                         "--train_data_pattern=/nonexistent/*.tfrecord", check=False)
    assert missing.returncode != 0
    assert "--train_data_pattern" in missing.stderr and "Traceback" not in missing.stderr
    wrong = run_module("training.train", f"--train_dir={tmp_path}",
                       f"--train_data_pattern={train_pattern(tiny_data)}", "--model=NoSuchModel",
                       check=False)
    assert wrong.returncode != 0 and "--model" in wrong.stderr
    assert "Traceback" not in wrong.stderr


@pytest.mark.slow
def test_cli_trains_and_writes_flags(tiny_data, tmp_path):
    run_module("training.train", f"--train_dir={tmp_path}",
               f"--train_data_pattern={train_pattern(tiny_data)}",
               f"--num_classes={TINY_CLASSES}", "--batch_size=8", "--max_steps=4",
               "--moe_num_mixtures=3")
    saved = checkpoints.read_model_flags(str(tmp_path))
    assert saved.hparams()["moe_num_mixtures"] == 3
    assert checkpoints.latest_checkpoint(str(tmp_path)).endswith("model.ckpt-4")


# ---------------------------------------------------------------------------
# --matmul_dtype=bfloat16 (mixed precision)

TINY_NETVLAD = {"cluster_size": 8, "hidden_size": 16, "num_samples": 10}


def _train_graph(model_flags, matmul_dtype, batch_size=4, seed=5):
    graph = tf.Graph()
    with graph.as_default():
        tf.set_random_seed(seed)
        rng = np.random.default_rng(seed)
        batch = {"features": tf.constant(rng.standard_normal((batch_size, 12, 1152)),
                                         tf.float32),
                 "num_frames": tf.constant([12, 7, 12, 3][:batch_size], tf.int32),
                 "labels": tf.constant(rng.random((batch_size, TINY_CLASSES)) < 0.3,
                                       tf.float32),
                 "id": tf.constant([b"v"] * batch_size)}
        ops = train_graph.build_train_graph(model_flags, batch, ["/cpu:0"],
                                            tiny_config(matmul_dtype=matmul_dtype))
    return graph, ops


def _matmul_dtypes(graph):
    """{(dtype name, inside a while loop)} of the forward MatMul ops."""
    return {(op.get_attr("T").name, layers.in_while_loop(op)) for op in graph.get_operations()
            if op.type == "MatMul" and "gradients" not in op.name.split("/")}


@pytest.mark.slow
def test_bfloat16_matmuls_keep_float32_variables_and_slots():
    graph, _ = _train_graph(tiny_flags("nonlocal-NetVLADModel", **TINY_NETVLAD), "bfloat16")
    weight_products = [op for op in graph.get_operations() if op.type == "MatMul"
                       and "gradients" not in op.name.split("/")]
    # Every weight product of the forward pass (cluster assignment, non-local
    # projections, hidden1, gating, MoE, probability gating) is bfloat16.
    assert weight_products and all(op.get_attr("T") == tf.bfloat16 for op in weight_products)
    with graph.as_default():
        variables = tf.global_variables()
    assert {v.dtype.base_dtype for v in variables} == {tf.float32, tf.int64}
    assert any("/Adam" in v.op.name for v in variables)
    fp32_graph, _ = _train_graph(tiny_flags("nonlocal-NetVLADModel", **TINY_NETVLAD), "float32")
    with fp32_graph.as_default():
        assert sorted(v.op.name for v in tf.global_variables()) == \
            sorted(v.op.name for v in variables)
    assert _matmul_dtypes(fp32_graph) == {("float32", False)}


def test_bfloat16_gru_keeps_its_recurrent_products_float32():
    graph, _ = _train_graph(tiny_flags("GRUModel", gru_cells=8), "bfloat16")
    # The input half of every layer is one bf16 product outside the time
    # loop; the recurrent half inside the loop stays float32, so that its
    # weight gradient is summed over the steps in float32.
    dtypes = _matmul_dtypes(graph)
    assert ("bfloat16", False) in dtypes and ("float32", True) in dtypes
    assert ("bfloat16", True) not in dtypes


def _first_step_gradients(matmul_dtype):
    graph, _ = _train_graph(tiny_flags("Soft-DBoF-4k", cluster_size=16, hidden_size=16,
                                       num_samples=10), matmul_dtype)
    with graph.as_default():
        loss = tf.get_collection("loss")[0]
        variables = [v for v in tf.trainable_variables() if len(v.shape) == 2]
        grads = tf.gradients(loss, variables)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            return sess.run(loss), {v.op.name: g for v, g in zip(variables, sess.run(grads))}


@pytest.mark.slow
def test_bfloat16_gradients_are_float32_gradients_to_bfloat16_precision():
    loss32, grads32 = _first_step_gradients("float32")
    loss16, grads16 = _first_step_gradients("bfloat16")
    assert abs(loss16 - loss32) < 1e-2 * abs(loss32)
    assert grads16.keys() == grads32.keys()
    differs = False
    for name, g32 in grads32.items():
        g16 = grads16[name]
        assert g16.dtype == np.float32 and g16.shape == g32.shape
        relative = np.linalg.norm(g16 - g32) / np.linalg.norm(g32)
        assert relative < 3e-2, (name, relative)
        differs = differs or relative > 0
    assert differs  # the bf16 products really ran


@pytest.mark.slow
def test_bfloat16_training_learns_and_writes_float32_checkpoints(tiny_data, tmp_path):
    losses, lines = [], []

    def record(line):
        lines.append(line)
        if line.startswith("step"):
            losses.append(float(line.split("|")[1].split()[1]))

    flags = tiny_flags("Soft-DBoF-4k", cluster_size=16, hidden_size=16, num_samples=10)
    train.train(flags, str(tmp_path), train_pattern(tiny_data),
                tiny_config(max_steps=120, log_steps=10, save_checkpoint_steps=1000,
                            base_learning_rate=0.02, matmul_dtype="bfloat16"),
                log=record)
    assert any("bfloat16 matmuls" in line for line in lines)
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:2])
    reader = tf.train.load_checkpoint(checkpoints.latest_checkpoint(str(tmp_path)))
    dtypes = reader.get_variable_to_dtype_map()
    assert dtypes["tower/hidden1_weights"] == tf.float32
    assert {d for n, d in dtypes.items() if n != "global_step"} == {tf.float32}


@pytest.mark.slow
def test_matmul_dtype_flag_errors_are_one_line(tiny_data, tmp_path):
    with pytest.raises(UserError, match="--matmul_dtype"):
        train_graph.check_matmul_dtype("float16")
    wrong = run_module("training.train", f"--train_dir={tmp_path}",
                       f"--train_data_pattern={train_pattern(tiny_data)}",
                       "--matmul_dtype=half", check=False)
    assert wrong.returncode != 0
    assert wrong.stderr.strip().splitlines() == [
        "error: --matmul_dtype: one of float32, bfloat16, got 'half'"]


@pytest.mark.slow
def test_averaging_tail_rate_cadence_and_kept_checkpoints(tiny_data, tmp_path):
    """After --max_steps the tail runs at its constant rate, saving every
    swa_save_steps, and every tail checkpoint is kept (max_to_keep=2 would drop
    them). Mutation: using save_checkpoint_steps in the tail (dropping
    save_every's tail branch) leaves only steps 15, 30 and 40 and fails."""
    train_dir = str(tmp_path / "run")
    flags = tiny_flags()
    train_dirs.prepare_train_dir(train_dir, flags, start_new=False)
    config = tiny_config(max_steps=30, swa_tail_steps=10, swa_save_steps=2, max_to_keep=2,
                         swa_learning_rate=1e-4)
    lines = []
    result = train.train(flags, train_dir, train_pattern(tiny_data), config, log=lines.append)
    assert result["global_step"] == 40 and "to 40" in lines[0]
    steps = [step for step, _ in checkpoints.list_checkpoints(train_dir)]
    assert steps == [30, 32, 34, 36, 38, 40]     # the main run's last one too
    assert train_graph.tail_checkpoints(config) == 5
    graph = tf.Graph()
    with graph.as_default():
        step = tf.Variable(0, dtype=tf.int64)
        rate = train_graph._learning_rate(step, config, 1)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            rates = []
            for value in (0, 29, 30, 39):
                sess.run(step.assign(value))
                rates.append(float(sess.run(rate)))
    assert rates == pytest.approx([0.01, 0.01, 1e-4, 1e-4])
    # Unset, the tail's rate is the one the main schedule reached.
    assert train_graph.decayed_rate(tiny_config(learning_rate_decay_examples=80), 30, 1) == \
        pytest.approx(0.01 * 0.9 ** 3)
    with pytest.raises(UserError, match="--swa_tail_steps: the averaging tail follows "
                                        "--max_steps; set it"):
        train_graph.tail_steps(tiny_config(max_steps=None, swa_tail_steps=5))
