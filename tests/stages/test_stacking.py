"""stacking.fit: the weight optimiser and an end-to-end fit through real model dirs."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from conftest import QUIET, TINY_CLASSES, run_module, train_config
from stacking import fit
from support.records import read_examples
from training import intervals, model_builder
from training import train as trainer
from training import train_dir as train_dirs
from training.cli import UserError


def synthetic_predictions(n=400, classes=TINY_CLASSES, seed=0):
    """Two informative members of different quality and one pure-noise member."""
    rng = np.random.default_rng(seed)
    labels = (rng.uniform(size=(n, classes)) < 0.2).astype(np.uint8)
    labels[np.arange(n), rng.integers(0, classes, n)] = 1
    good = np.clip(0.75 * labels + 0.1 + 0.1 * rng.standard_normal((n, classes)), 0.0, 1.0)
    fair = np.clip(0.5 * labels + 0.2 + 0.2 * rng.standard_normal((n, classes)), 0.0, 1.0)
    noise = rng.uniform(size=(n, classes))
    return np.stack([good, noise, fair], axis=1).astype(np.float32), labels


def test_gradient_matches_finite_differences():
    predictions, labels = synthetic_predictions(n=50)
    w = np.array([0.5, 0.2, 0.3])
    value, grad = fit.cross_entropy_and_gradient(w, predictions, labels, chunk_rows=7)
    whole, _ = fit.cross_entropy_and_gradient(w, predictions, labels)
    assert value == pytest.approx(whole, rel=1e-6)
    for v in range(3):
        step = np.zeros(3)
        step[v] = 1e-4
        plus, _ = fit.cross_entropy_and_gradient(w + step, predictions, labels)
        minus, _ = fit.cross_entropy_and_gradient(w - step, predictions, labels)
        assert grad[v] == pytest.approx((plus - minus) / 2e-4, rel=1e-3)
    # Same value as training.losses on the weighted mean.
    q = fit.weighted_mean(w, predictions)
    assert value == pytest.approx(fit.scores(q, labels)["cross_entropy"], rel=1e-5)


@pytest.mark.parametrize("parameterization", ["simplex", "softmax"])
def test_noise_member_gets_no_weight(parameterization):
    predictions, labels = synthetic_predictions()
    result = fit.fit_weights(predictions, labels, parameterization)
    weights = result.weights
    assert np.all(weights >= 0) and weights.sum() == pytest.approx(1.0, abs=1e-9)
    assert weights[1] < 0.05
    assert weights[0] > weights[2]
    assert result.cross_entropy < result.uniform_cross_entropy
    uniform = np.full(3, 1 / 3)
    gap_uniform = fit.scores(fit.weighted_mean(uniform, predictions), labels)["gap"]
    gap_stacked = fit.scores(fit.weighted_mean(weights, predictions), labels)["gap"]
    assert gap_stacked >= gap_uniform


def test_bad_parameterization():
    predictions, labels = synthetic_predictions(n=20)
    with pytest.raises(UserError, match="--parameterization"):
        fit.fit_weights(predictions, labels, "free")


@pytest.mark.slow
def test_end_to_end_through_model_dirs(tiny_data, tmp_path):
    """The fit through real model dirs; the file's provenance names stacking.fit, the
    fitting file and the digest of the 30 videos it fitted on. Mutation tried:
    provenance_for without the digest (None) failed the provenance check."""
    from bfloat16_patch import convert
    from ensemble import build

    flags = model_builder.make_model_flags("FrameMeanMoeModel", "rgb,audio", "1024,128", True,
                                           TINY_CLASSES, "CrossEntropyLoss", {})
    config = train_config(**QUIET, base_learning_rate=0.02, max_steps=80)
    pattern = str(tiny_data / "frame" / "train*.tfrecord")
    good, noise = str(tmp_path / "good"), str(tmp_path / "noise")
    for directory, steps, seed in ((good, 80, 3), (noise, 0, 11)):  # noise: random init
        train_dirs.prepare_train_dir(directory, flags, start_new=False)
        trainer.train(flags, directory, pattern,
                      dataclasses.replace(config, max_steps=steps, seed=seed), log=lambda _: None)
    good_bf16 = str(tmp_path / "good-bfloat16")
    convert.convert_checkpoint(good, good_bf16, log=None)

    output = tmp_path / "weights.json"
    completed = run_module("stacking.fit", f"--model_dirs={good_bf16},{noise}",
                           f"--data_pattern={tiny_data / 'frame' / 'validate*.tfrecord'}",
                           f"--output_file={output}", "--batch_size=16", "--max_videos=30")
    assert "stacked weights" in completed.stdout and "uniform weights" in completed.stdout
    with open(output) as handle:
        payload = json.load(handle)
    weights = payload["weights"]
    assert payload["num_videos"] == 30
    assert min(weights) >= 0 and sum(weights) == pytest.approx(1.0)
    assert weights[1] < 0.05
    assert payload["gap"] >= payload["gap_uniform"]
    assert payload["cross_entropy"] < payload["cross_entropy_uniform"]
    validate = tiny_data / "frame" / "validate00.tfrecord"
    ids = [example.context.feature["id"].bytes_list.value[0]
           for example in read_examples(validate)][:30]
    assert payload["provenance"] == [{
        "stage": "stacking.fit", "choice": "weights", "data_files": [str(validate)],
        "video_ids_sha1": intervals.video_ids_digest(ids)}]

    # ensemble.build reads the file: same members, same weights.
    members, loaded = build.resolve_members_and_weights("", "", str(output))
    assert members == [good_bf16, noise]
    np.testing.assert_allclose(loaded, weights, rtol=1e-9)


@pytest.mark.slow
def test_command_line_errors(tiny_data, tmp_path):
    completed = run_module("stacking.fit", f"--model_dirs={tmp_path / 'missing'}",
                           f"--data_pattern={tiny_data / 'frame' / 'validate*.tfrecord'}",
                           f"--output_file={tmp_path / 'w.json'}", check=False)
    assert completed.returncode != 0 and "Traceback" not in completed.stderr
    assert "missing" in completed.stderr.strip().splitlines()[-1]
