"""swa.average --choose_window_on --segment_labels: the averaging window
chosen by Segment MAP on 2019 segment-rated fitting files."""
from __future__ import annotations

import json
import os

import pytest

from conftest import segment_data
from support.reliability import run_cases
from support.segment_runs import random_checkpoints, rate_by_model
from swa import average as swa
from training import checkpoints, eval_results
from training import eval as evaluation

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """Checkpoints 1-4, independent random initialisations."""
    return random_checkpoints(str(tmp_path_factory.mktemp("swa_segments") / "run"), [1, 2, 3, 4])


@pytest.fixture(scope="module")
def fit_pattern(run_dir, tmp_path_factory):
    """Segment files rated by the mean of checkpoints 3 and 4 (window 2):
    that window ranks them perfectly, the others do not."""
    root = tmp_path_factory.mktemp("swa_segment_data")
    window2 = swa.average(run_dir, str(root / "window2"), last_n=2, log=None).checkpoint
    return rate_by_model(segment_data(tmp_path_factory, "swa_segment_source", 24),
                         str(root / "window2"), str(root / "rated"),
                         str(root / "window2" / window2))


def fresh_segment_map(train_dir, window, out, pattern):
    """The Segment MAP on pattern of the last `window` checkpoints' mean,
    averaged and evaluated afresh (training.eval --segment_labels's path)."""
    swa.average(train_dir, out, last_n=window, log=None)
    return evaluation.evaluate_checkpoint(out, checkpoints.find_checkpoint(out), pattern,
                                          batch_size=25, segment_size=5).segment_map


def test_window_chosen_by_segment_map(run_dir, fit_pattern, tiny_data, tmp_path):
    """Every candidate's value is its window's Segment MAP (an independent
    average and evaluation), the best (window 2, by construction) is chosen
    and swa.json says the metric; --eval_data_pattern with --segment_labels
    evaluates on segments; unrated records, and --segment_labels with nothing
    to evaluate, are refused in one line before any work. Mutations seen to
    fail: choosing by GAP (the candidates' values differ from the Segment
    MAPs); keeping a candidate whose value is lower (< for >: another window
    is chosen); check_dir_segment_records skipped (no one-line refusal)."""
    out, unrated = tmp_path / "chosen", str(tiny_data / "frame" / "validate*.tfrecord")
    common = [f"--train_dir={run_dir}", "--batch_size=25", "--segment_labels"]
    ran = run_cases({"swa.average": {"cases": [
        [*common, f"--output_dir={out}", f"--choose_window_on={fit_pattern}",
         "--windows=1,2,3,4", f"--eval_data_pattern={fit_pattern}"],
        [*common, f"--output_dir={tmp_path / 'x'}", f"--choose_window_on={unrated}"],
        [*common, f"--output_dir={tmp_path / 'y'}", "--last_n=2",
         f"--eval_data_pattern={unrated}"],
        [*common, f"--output_dir={tmp_path / 'z'}", "--last_n=2"]]}}, tmp_path / "cli")
    chose, unrated_fit, unrated_eval, nothing = ran["swa.average"][2]
    assert chose.returncode == 0, chose.stderr[-2000:]
    choice = json.loads((out / "swa.json").read_text())["window_choice"]
    assert choice["metric"] == "segment_map" and choice["segment_size"] == 5
    values = {item["window"]: item["segment_map"] for item in choice["candidates"]}
    assert sorted(values) == [1, 2, 3, 4] and all("gap" not in item
                                                  for item in choice["candidates"])
    for window, value in values.items():
        fresh = fresh_segment_map(run_dir, window, str(tmp_path / f"fresh{window}"), fit_pattern)
        assert value == pytest.approx(fresh, abs=1e-9), window
    assert choice["chosen"] == 2 and values[2] == 1.0
    assert max(value for window, value in values.items() if window != 2) < 1.0
    assert "chose window 2 (Segment_MAP 1.0000 on the fitting files)" in chose.stdout
    assert f"window 1 (steps 4-4): Segment_MAP {values[1]:.4f} on the fitting files" \
        in chose.stdout
    saved = json.loads((out / eval_results.SEGMENT_RESULTS).read_text())
    assert saved["segment_map"] == 1.0 and not (out / "eval_results.json").exists()
    for refused, flag in ((unrated_fit, "choose_window_on"), (unrated_eval, "eval_data_pattern")):
        assert refused.returncode != 0 and "Traceback" not in refused.stderr, refused.stdout
        last = refused.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: --{flag}: ") and "no segment_labels" in last, last
        assert "averaging" not in refused.stdout
    assert not any(os.path.exists(tmp_path / name) for name in "xy")
    assert nothing.returncode != 0 and "--segment_labels: applies to --choose_window_on" \
        in nothing.stderr and not (tmp_path / "z").exists()
