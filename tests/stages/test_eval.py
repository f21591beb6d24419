"""Evaluation of checkpoints: metrics, JSON, events, frame sampling override,
--bn_statistics (recomputed statistics) and the note for unconverged ones."""
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from conftest import run_module
from models.tf_compat import tf
from support.reliability import assert_user_error
from support.stage_records import write_swa_record
from support.training_runs import train_pattern, train_tiny_model
from swa import average as swa
from training import bn_statistics, checkpoints, eval_results, metrics, predict
from training import eval as evaluation
from training.cli import UserError


@pytest.fixture(scope="module")
def trained_dir(tiny_data, tmp_path_factory):
    train_dir = str(tmp_path_factory.mktemp("eval_run"))
    return train_tiny_model(train_dir, tiny_data)


@pytest.mark.slow
def test_evaluate_checkpoint_metrics(trained_dir, tiny_data):
    pattern = str(tiny_data / "frame" / "validate*.tfrecord")
    result = evaluation.evaluate_checkpoint(trained_dir,
                                            checkpoints.latest_checkpoint(trained_dir),
                                            pattern, batch_size=10)
    assert result.num_examples == 32
    # A trained model is far better than chance on the synthetic signal.
    assert result.gap > 0.5 and result.hit_at_one > 0.5
    assert np.isfinite(result.loss) and 0 <= result.perr <= 1 and 0 <= result.map <= 1


@pytest.mark.slow
def test_eval_metrics_equal_numpy_on_collected_predictions(trained_dir, tiny_data):
    """The streaming accumulation over batches equals metrics on all data."""
    pattern = str(tiny_data / "frame" / "validate*.tfrecord")
    model = predict.open_model(trained_dir, bf16_compute="cast_each_step")
    try:
        all_predictions, all_labels = [], []
        for batch in predict.iterate_predictions(model, pattern, 7):
            all_predictions.append(batch.predictions)
            all_labels.append(batch.labels)
    finally:
        model.close()
    predictions, labels = np.concatenate(all_predictions), np.concatenate(all_labels)
    streamed = evaluation.evaluate_checkpoint(trained_dir,
                                              checkpoints.latest_checkpoint(trained_dir),
                                              pattern, batch_size=7)
    assert streamed.gap == pytest.approx(metrics.global_average_precision(predictions, labels),
                                            abs=1e-6)
    assert streamed.hit_at_one == pytest.approx(metrics.hit_at_one(predictions, labels))


@pytest.mark.slow
def test_eval_cli_writes_json_and_events(trained_dir, tiny_data):
    completed = run_module("training.eval", f"--train_dir={trained_dir}",
                           f"--eval_data_pattern={tiny_data / 'frame' / 'validate*.tfrecord'}",
                           "--run_once", "--batch_size=16")
    assert "GAP" in completed.stdout
    with open(os.path.join(trained_dir, "eval_results.json")) as handle:
        saved = json.load(handle)
    assert saved["global_step"] == 150 and 0 < saved["gap"] <= 1
    assert saved["eval_data_pattern"] == str(tiny_data / "frame" / "validate*.tfrecord")
    assert saved["eval_files"] == 1 and saved["evaluations"][saved["key"]]["gap"] == saved["gap"]
    assert os.listdir(os.path.join(trained_dir, "eval"))


@pytest.mark.slow
def test_eval_cli_errors(tmp_path, tiny_data):
    no_flags = run_module("training.eval", f"--train_dir={tmp_path}",
                          f"--eval_data_pattern={tiny_data / 'frame' / 'validate*.tfrecord'}",
                          "--run_once", check=False)
    assert no_flags.returncode != 0 and "model_flags.json" in no_flags.stderr
    assert "Traceback" not in no_flags.stderr


@pytest.mark.slow
def test_bf16_compute_modes_of_a_bfloat16_checkpoint(tiny_models, tiny_data):
    bf16_dir = tiny_models["dbof_bf16"]
    path = checkpoints.find_checkpoint(bf16_dir)
    pattern = str(tiny_data / "frame" / "validate*.tfrecord")
    results = {mode: evaluation.evaluate_checkpoint(bf16_dir, path, pattern, batch_size=16,
                                                    frame_sampling="uniform", bf16_compute=mode)
               for mode in ("cast_each_step", "cast_at_load", "bfloat16")}
    # Casting on every step and once at load compute the very same numbers.
    for key in ("gap", "hit_at_one", "loss", "map"):
        assert getattr(results["cast_at_load"], key) == getattr(results["cast_each_step"], key)
    assert results["bfloat16"].gap == pytest.approx(results["cast_at_load"].gap, abs=5e-3)
    assert results["bfloat16"].num_examples == 32


@pytest.mark.slow
def test_eval_cli_bf16_compute(tiny_models, tiny_data, tmp_path):
    import shutil

    bf16_dir = tmp_path / "bf16"
    shutil.copytree(tiny_models["dbof_bf16"], bf16_dir)
    pattern = f"--eval_data_pattern={tiny_data / 'frame' / 'validate*.tfrecord'}"
    completed = run_module("training.eval", f"--train_dir={bf16_dir}", pattern, "--run_once",
                           "--bf16_compute=cast_at_load")
    assert "GAP" in completed.stdout
    wrong = run_module("training.eval", f"--train_dir={bf16_dir}", pattern, "--run_once",
                       "--bf16_compute=fast", check=False)
    assert wrong.returncode != 0
    assert wrong.stderr.strip().splitlines() == [
        "error: --bf16_compute: one of cast_each_step, cast_at_load, bfloat16, got 'fast'"]


# ---------------------------------------------------------------------------
# --bn_statistics: recomputed BN statistics, and the note for unconverged ones


def checkpoint_files(directory):
    """{name: sha256} of a model dir's checkpoint files and model_flags.json."""
    return {name: hashlib.sha256((Path(directory) / name).read_bytes()).hexdigest()
            for name in sorted(os.listdir(directory))
            if name.startswith(("model.ckpt", "checkpoint", "model_flags"))}


def read_tensors(path):
    reader = tf.train.load_checkpoint(path)
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()}


def eval_args(model_dir, tiny_data, *extra):
    return ("training.eval", f"--train_dir={model_dir}",
            f"--eval_data_pattern={tiny_data / 'frame' / 'validate*.tfrecord'}", "--run_once",
            "--batch_size=16", *extra)


@pytest.fixture
def short_dir(tiny_models, tmp_path):
    """A copy of the 10-step Soft-DBoF train dir (batch norm, unconverged)."""
    target = tmp_path / "short"
    shutil.copytree(tiny_models["dbof_train"], target)
    return str(target)


@pytest.mark.slow
def test_recompute_changes_bn_statistics_and_metrics(tiny_models, tiny_data, tmp_path,
                                                     monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model_dir = tiny_models["dbof_train"]
    path = checkpoints.latest_checkpoint(model_dir)
    settings = bn_statistics.Recompute(train_pattern(tiny_data), num_batches=3, batch_size=8)
    with bn_statistics.recomputed_checkpoint(model_dir, path, settings) as recomputed:
        assert os.path.dirname(recomputed).startswith(str(tmp_path))
        old, new = read_tensors(path), read_tensors(recomputed)
    assert os.listdir(tmp_path) == []                # the copy is gone
    stats = [key for key in new if bn_statistics.is_bn_statistic(key)]
    assert len(stats) == 6
    assert any(not np.allclose(new[key], old[key]) for key in stats)
    # The input BN's variance: ~1/1152 for L2-normalised frames, not the ~1.0
    # that 10 steps of decay 0.999 leave.
    assert new["tower/input_bn/moving_variance"].mean() < 0.01
    assert old["tower/input_bn/moving_variance"].mean() > 0.9
    for key in new:
        if key not in stats:
            np.testing.assert_array_equal(new[key], old[key], err_msg=key)

    pattern = str(tiny_data / "frame" / "validate*.tfrecord")
    moving = evaluation.evaluate_checkpoint(model_dir, path, pattern, batch_size=16)
    recomputed = evaluation.evaluate_checkpoint(model_dir, path, pattern, batch_size=16,
                                                recompute=settings)
    assert recomputed.num_examples == moving.num_examples == 32
    assert recomputed.loss != pytest.approx(moving.loss, abs=1e-4)
    assert recomputed.gap != moving.gap
    assert os.listdir(tmp_path) == []


def test_recomputed_copy_is_removed_on_error(tiny_models, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model_dir = tiny_models["dbof_train"]
    path = checkpoints.latest_checkpoint(model_dir)
    settings = bn_statistics.Recompute(train_pattern(tiny_data), num_batches=2, batch_size=8)

    def half_written(model_flags, specs, produce, save_path, *args):
        Path(save_path + ".index").write_text("partial")
        raise UserError("--train_data_pattern: the data ran out")

    with monkeypatch.context() as patch:
        patch.setattr(bn_statistics, "recompute_and_save", half_written)
        with pytest.raises(UserError, match="ran out"):
            with bn_statistics.recomputed_checkpoint(model_dir, path, settings):
                pass
    assert os.listdir(tmp_path) == []
    with pytest.raises(RuntimeError):
        with bn_statistics.recomputed_checkpoint(model_dir, path, settings):
            assert os.listdir(tmp_path)
            raise RuntimeError("the evaluation failed")
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_eval_cli_recompute_keeps_the_checkpoint(short_dir, tiny_data, tmp_path):
    before = checkpoint_files(short_dir)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    completed = run_module(*eval_args(short_dir, tiny_data, "--bn_statistics=recompute",
                                      f"--train_data_pattern={train_pattern(tiny_data)}",
                                      "--recompute_batches=3"),
                           env={"TMPDIR": str(scratch)})
    assert "note:" not in completed.stdout
    assert "model.ckpt-10 (BN statistics recomputed) |" in completed.stdout
    saved = json.load(open(os.path.join(short_dir, "eval_results.json")))
    assert saved["bn_statistics"] == "recompute" and saved["recompute_batches"] == 3
    assert saved["checkpoint"] == os.path.join(short_dir, "model.ckpt-10")
    assert saved["global_step"] == 10 and 0 < saved["gap"] <= 1
    assert checkpoint_files(short_dir) == before     # byte-identical, nothing added
    assert os.listdir(scratch) == []                 # the recomputed copy is removed


@pytest.mark.slow
def test_eval_cli_notes_unconverged_statistics(short_dir, tiny_models, tiny_data, tmp_path):
    completed = run_module(*eval_args(short_dir, tiny_data))
    notes = [line for line in completed.stdout.splitlines() if line.startswith("note:")]
    assert notes == [
        "note: model.ckpt-10 was trained 10 steps; with batch-norm decay 0.999 its moving "
        "statistics still carry 99% of their initial values; --bn_statistics=recompute "
        "--train_data_pattern=... evaluates it with recomputed ones"]
    saved = json.load(open(os.path.join(short_dir, "eval_results.json")))
    assert saved["bn_statistics"] == "moving" and saved["recompute_batches"] is None

    swa_dir = str(tmp_path / "swa")
    swa.average(tiny_models["dbof_train"], swa_dir, last_n=1, bn_statistics="recompute",
                recompute_batches=2, train_data_pattern=train_pattern(tiny_data), batch_size=4,
                log=None)
    completed = run_module(*eval_args(swa_dir, tiny_data))
    assert "note:" not in completed.stdout and "GAP" in completed.stdout


def write_checkpoint(directory, step, keys=("tower/bn/moving_mean",), global_step=True):
    graph = tf.Graph()
    with graph.as_default():
        variables = [tf.Variable(np.zeros([2], np.float32), name=key) for key in keys]
        if global_step:
            variables.append(tf.Variable(np.int64(step), name="global_step"))
        saver = tf.train.Saver(variables)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            return saver.save(sess, os.path.join(str(directory), "model.ckpt"),
                              global_step=step, write_meta_graph=False)


def test_convergence_note_threshold_and_dirs(tmp_path, tiny_models):
    """The note above 5% initial-value weight (0.999**2994 = 5.001%,
    0.999**2995 = 4.996%); none for recomputed statistics or without BN."""
    def note(step, name, **kwargs):
        (tmp_path / name).mkdir()
        return bn_statistics.convergence_note(write_checkpoint(tmp_path / name, step, **kwargs))

    assert "model.ckpt-500 was trained 500 steps" in note(500, "a")
    assert "still carry 61% of their initial values" in note(500, "b")
    assert "carry 5% of" in note(2994, "c")
    assert note(2995, "d") is None and note(700000, "e") is None
    assert note(10, "no_bn", keys=("tower/fc/weights",)) is None
    assert "trained 30 steps" in note(30, "no_global_step", global_step=False)

    for mode, expected in (("recompute", None), ("last", "trained 30 steps"),
                           ("average", "averages the moving statistics of steps 10 to 30")):
        directory = tmp_path / f"swa_{mode}"
        directory.mkdir()
        path = write_checkpoint(directory, 30, global_step=False)
        write_swa_record(directory, 3, None, bn_statistics=mode)
        found = bn_statistics.convergence_note(path)
        assert found is None if expected is None else expected in found
    # A bf16 dir cannot recompute: the note says where to do it.
    bf16_note = bn_statistics.convergence_note(
        checkpoints.find_checkpoint(tiny_models["dbof_bf16"]))
    assert "before the conversion (swa.average --bn_statistics=recompute)" in bf16_note


@pytest.mark.slow
def test_eval_cli_bn_statistics_errors(short_dir, tiny_models, tiny_data):
    before = checkpoint_files(short_dir)
    recompute = "--bn_statistics=recompute"
    data = f"--train_data_pattern={train_pattern(tiny_data)}"
    cases = [
        ((short_dir, recompute), "--train_data_pattern: required with --bn_statistics=recompute"),
        ((short_dir, recompute, data, "--recompute_batches=0"),
         "--recompute_batches: must be positive, got 0"),
        ((short_dir, recompute, data, "--recompute_batches=-3"), "--recompute_batches"),
        ((short_dir, "--bn_statistics=fancy"),
         "--bn_statistics: must be one of moving, recompute, got 'fancy'"),
        ((tiny_models["dbof_bf16"], recompute, data),
         "is a bfloat16 checkpoint"),
    ]
    for (model_dir, *extra), expected in cases:
        completed = run_module(*eval_args(model_dir, tiny_data, *extra), check=False)
        line = assert_user_error(completed, expected)
        if model_dir != short_dir:
            assert "--bn_statistics=recompute needs the float32 weights" in line
    assert checkpoint_files(short_dir) == before


@pytest.mark.slow
def test_recompute_on_an_swa_dir(tiny_models, tiny_data):
    """An SWA dir (no global_step, no optimizer slots) recomputes like a train dir."""
    swa_dir = tiny_models["dbof_swa"]
    settings = bn_statistics.Recompute(train_pattern(tiny_data), num_batches=2, batch_size=8)
    result = evaluation.evaluate_checkpoint(swa_dir, checkpoints.find_checkpoint(swa_dir),
                                            str(tiny_data / "frame" / "validate*.tfrecord"),
                                            batch_size=16, recompute=settings)
    assert result.num_examples == 32 and 0 < result.gap <= 1


@pytest.mark.slow
def test_eval_keeps_per_video_records_and_skips_what_was_measured(trained_dir, tiny_data):
    """The evaluation keeps each video's top-k beside eval_results.json; with
    --skip_evaluated a second run of the same measurement does not measure
    again, and another data pattern does. Mutation: making eval_results.find
    return None re-evaluates and fails the "(evaluated before)" check."""
    pattern = str(tiny_data / "frame" / "validate*.tfrecord")
    args = (f"--train_dir={trained_dir}", f"--eval_data_pattern={pattern}", "--run_once",
            "--batch_size=16", "--skip_evaluated")
    run_module("training.eval", *args)
    saved = eval_results.latest_evaluation(trained_dir)
    videos = eval_results.videos_of(trained_dir, saved)
    assert videos.num_videos == saved.num_examples and videos.gap() == pytest.approx(
        saved.gap, abs=1e-9)
    assert saved.video_ids_sha1 == videos.ids_digest()
    again = run_module("training.eval", *args)
    assert "(evaluated before)" in again.stdout
    one_file = tiny_data / "frame" / "validate00.tfrecord"
    other = run_module("training.eval", *args[:1], f"--eval_data_pattern={one_file}", *args[2:])
    assert "(evaluated before)" not in other.stdout
