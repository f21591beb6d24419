"""bench.gpu_acceptance: the prepared GPU check, run here in its --cpu_smoke
mode (the same code paths at test sizes on 2 virtual CPU devices) so that it
cannot rot while no GPU is at hand."""
from __future__ import annotations

import json

from conftest import run_module


def test_without_a_gpu_it_says_so_in_one_line():
    done = run_module("bench.gpu_acceptance", env={"CUDA_VISIBLE_DEVICES": ""})
    assert done.stdout.strip().splitlines() == [
        "gpu_acceptance: no GPU visible (CUDA_VISIBLE_DEVICES=); nothing to check"]


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
