"""Evaluation of checkpoints: metrics, JSON, events, frame sampling override."""
import json
import os

import numpy as np
import pytest

from conftest import run_module
from test_train import tiny_config, tiny_flags, train_pattern
from training import checkpoints, metrics, predict, train
from training import eval as evaluation
from training import train_dir as train_dirs


@pytest.fixture(scope="module")
def trained_dir(tiny_data, tmp_path_factory):
    train_dir = str(tmp_path_factory.mktemp("eval_run"))
    flags = tiny_flags()
    train_dirs.prepare_train_dir(train_dir, flags, start_new=False)
    train.train(flags, train_dir, train_pattern(tiny_data),
                tiny_config(max_steps=150, base_learning_rate=0.02), log=lambda _: None)
    return train_dir


def test_evaluate_checkpoint_metrics(trained_dir, tiny_data):
    pattern = str(tiny_data / "frame" / "validate*.tfrecord")
    result = evaluation.evaluate_checkpoint(trained_dir,
                                            checkpoints.latest_checkpoint(trained_dir),
                                            pattern, batch_size=10)
    assert result["num_examples"] == 32
    # A trained model is far better than chance on the synthetic signal.
    assert result["gap"] > 0.5 and result["hit_at_one"] > 0.5
    assert np.isfinite(result["loss"]) and 0 <= result["perr"] <= 1 and 0 <= result["map"] <= 1


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
    assert streamed["gap"] == pytest.approx(metrics.global_average_precision(predictions, labels),
                                            abs=1e-6)
    assert streamed["hit_at_one"] == pytest.approx(metrics.hit_at_one(predictions, labels))


def test_eval_cli_writes_json_and_events(trained_dir, tiny_data):
    completed = run_module("training.eval", f"--train_dir={trained_dir}",
                           f"--eval_data_pattern={tiny_data / 'frame' / 'validate*.tfrecord'}",
                           "--run_once", "--batch_size=16")
    assert "GAP" in completed.stdout
    with open(os.path.join(trained_dir, "eval_results.json")) as handle:
        saved = json.load(handle)
    assert saved["global_step"] == 150 and 0 < saved["gap"] <= 1
    assert os.listdir(os.path.join(trained_dir, "eval"))


def test_eval_cli_errors(tmp_path, tiny_data):
    no_flags = run_module("training.eval", f"--train_dir={tmp_path}",
                          f"--eval_data_pattern={tiny_data / 'frame' / 'validate*.tfrecord'}",
                          "--run_once", check=False)
    assert no_flags.returncode != 0 and "model_flags.json" in no_flags.stderr
    assert "Traceback" not in no_flags.stderr


def test_bf16_compute_modes_of_a_bfloat16_checkpoint(tiny_models, tiny_data):
    bf16_dir = tiny_models["dbof_bf16"]
    path = checkpoints.find_checkpoint(bf16_dir)
    pattern = str(tiny_data / "frame" / "validate*.tfrecord")
    results = {mode: evaluation.evaluate_checkpoint(bf16_dir, path, pattern, batch_size=16,
                                                    frame_sampling="uniform", bf16_compute=mode)
               for mode in ("cast_each_step", "cast_at_load", "bfloat16")}
    # Casting on every step and once at load compute the very same numbers.
    for key in ("gap", "hit_at_one", "loss", "map"):
        assert results["cast_at_load"][key] == results["cast_each_step"][key]
    assert results["bfloat16"]["gap"] == pytest.approx(results["cast_at_load"]["gap"], abs=5e-3)
    assert results["bfloat16"]["num_examples"] == 32


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
