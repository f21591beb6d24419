"""bench.gpu_acceptance: the prepared GPU check, run here in its --cpu_smoke
mode (the same code paths at test sizes on 2 virtual CPU devices) so that it
cannot rot while no GPU is at hand.

Mutations tried: main() returning 0 again when no GPU is visible (the
no-GPU test fails: a broken CUDA set-up would pass); --require_gpu ignored
(the same test fails on the exit code); the smoke check named "device = CPU"
again while it compares /cpu:1 with /cpu:0 (the smoke test fails)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import gpu_acceptance
from conftest import REPO_ROOT, run_module

pytestmark = pytest.mark.slow


def test_without_a_gpu_it_says_so_and_does_not_pass():
    """No visible GPU: nothing was checked, which is exit 3, not 0 (a pass)
    and not 1 (a failed check); --require_gpu (the run script's) makes it a
    failure."""
    assert gpu_acceptance.NO_GPU_EXIT == 3
    done = run_module("bench.gpu_acceptance", env={"CUDA_VISIBLE_DEVICES": ""}, check=False)
    assert done.returncode == 3, (done.stdout, done.stderr[-2000:])
    assert done.stdout.strip().splitlines() == [
        "gpu_acceptance: no GPU visible (CUDA_VISIBLE_DEVICES=); nothing checked; exit 3"]
    required = run_module("bench.gpu_acceptance", "--require_gpu",
                          env={"CUDA_VISIBLE_DEVICES": ""}, check=False)
    assert required.returncode == 1, (required.stdout, required.stderr[-2000:])
    assert required.stdout.strip().splitlines() == [
        "gpu_acceptance: no GPU visible (CUDA_VISIBLE_DEVICES=); FAIL (--require_gpu); exit 1"]
    script = Path(REPO_ROOT / "run_scripts" / "gpu_acceptance.sh").read_text()
    assert "-m bench.gpu_acceptance --require_gpu" in script


def test_cpu_smoke_runs_every_stage_and_passes(tmp_path):
    report = tmp_path / "acceptance.json"
    done = run_module("bench.gpu_acceptance", "--cpu_smoke", "--presets=Soft-DBoF-4k,GRUModel",
                      "--steps=2", f"--json={report}", env={"CUDA_VISIBLE_DEVICES": ""})
    result = json.loads(report.read_text())
    rows = result["training"]
    assert [(r["model"], r["matmul_dtype"]) for r in rows] == [
        ("Soft-DBoF-4k", "float32"), ("Soft-DBoF-4k", "bfloat16"),
        ("GRUModel", "float32"), ("GRUModel", "bfloat16")]
    assert all(r["examples_per_sec"] > 0 and r["towers_examples_per_sec"] > 0 for r in rows)
    assert all(r["gflop_per_example"] > 0 and r["ratio_fp32_matmul"] > 0 for r in rows)
    assert result["correctness"]["towers"] == 2
    assert result["correctness"]["towers_mismatch"] <= 1e-3
    assert result["pipeline"]["members"] == 2 and result["pipeline"]["videos"] == 32
    assert [ok for _, ok, _ in result["checks"]] == [True] * 5
    assert "| check | result | detail |" in done.stdout and "FAIL" not in done.stdout
    # Without a GPU the "GPU against CPU" step compares the two CPU devices,
    # and its name says so rather than claiming a device-vs-CPU comparison.
    assert result["correctness"]["device_vs_cpu_devices"] == ["/cpu:1", "/cpu:0"]
    names = [name for name, _, _ in result["checks"]]
    assert ("second CPU device = first (--cpu_smoke: no GPU compared): /cpu:1 vs /cpu:0 "
            "(loss, updated variables)") in names
    assert not any("GPU = CPU" in name or "device = CPU" in name for name in names), names
