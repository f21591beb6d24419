"""ensemble.report: the table, the gains, the choice, the JSON and the chart."""
from __future__ import annotations

import json

import pytest

from conftest import run_module
from ensemble import report
from training import checkpoints
from training.errors import UserError
from training.members import write_weights_file


def make_dirs(tmp_path):
    """Two members (with their train dirs), both ensembles and a weights file."""
    dirs = {}
    for name, gap, last in (("a-bfloat16", 0.50, 0.45), ("b-bfloat16", 0.40, 0.30)):
        dirs[name] = tmp_path / name
        dirs[name].mkdir()
        checkpoints.write_json(str(dirs[name] / "eval_results.json"),
                               {"gap": gap, "hit_at_one": 0.8, "perr": 0.5, "map": 0.1,
                                "loss": 9.0})
        train = tmp_path / f"{name}-train"
        train.mkdir()
        checkpoints.write_json(str(train / "eval_results.json"), {"gap": last})
        dirs[name + "-train"] = train
    for name, gap in (("uniform", 0.52), ("stacked", 0.55)):
        dirs[name] = tmp_path / name
        dirs[name].mkdir()
        checkpoints.write_json(str(dirs[name] / "eval_results.json"), {"gap": gap})
    dirs["weights"] = tmp_path / "weights.json"
    write_weights_file(str(dirs["weights"]), [str(dirs["a-bfloat16"]), str(dirs["b-bfloat16"])],
                       [0.7, 0.3], gap=0.60, gap_uniform=0.58, num_videos=128)
    return dirs


def test_report_gains_and_choice(tmp_path):
    dirs = make_dirs(tmp_path)
    built = report.build_report([str(dirs["a-bfloat16"]), str(dirs["b-bfloat16"])],
                                str(dirs["uniform"]), str(dirs["stacked"]),
                                [str(dirs["a-bfloat16-train"]), str(dirs["b-bfloat16-train"])],
                                str(dirs["weights"]))
    assert built["best_member"] == "a-bfloat16" and built["best_member_gap"] == 0.50
    gains = {row["name"]: round(row["gain_over_best_member"], 6) for row in built["ensembles"]}
    assert gains == {"uniform ensemble": 0.02, "stacked ensemble": 0.05}
    assert [row["stacked_weight"] for row in built["members"]] == [0.7, 0.3]
    assert [row["last_checkpoint_gap"] for row in built["members"]] == [0.45, 0.30]
    assert built["choice"]["chosen"] == "stacked" and built["choice"]["dir"] == str(
        dirs["stacked"])
    text = report.format_report(built)
    assert "stacked ensemble: GAP 0.5500, beats the best member by +0.0500" in text
    assert "checkpoint averaging, GAP gain over the last checkpoint: a-bfloat16 +0.0500, " \
           "b-bfloat16 +0.1000" in text
    assert "the CSV uses the stacked ensemble" in text
    # A tie on the fitting videos keeps the uniform ensemble.
    tie = report.choose("U", "S", {"gap": 0.5, "gap_uniform": 0.5, "num_videos": 1})
    assert tie["chosen"] == "uniform" and tie["dir"] == "U"


def test_report_cli_writes_json_and_png(tmp_path):
    dirs = make_dirs(tmp_path)
    out = tmp_path / "out" / "report"
    (tmp_path / "out").mkdir()
    completed = run_module(
        "ensemble.report", f"--model_dirs={dirs['a-bfloat16']},{dirs['b-bfloat16']}",
        f"--train_dirs={dirs['a-bfloat16-train']},{dirs['b-bfloat16-train']}",
        f"--ensemble_dir={dirs['uniform']}", f"--stacked_dir={dirs['stacked']}",
        f"--weights_file={dirs['weights']}", f"--output_json={out}.json",
        f"--output_png={out}.png")
    assert "uniform ensemble: GAP 0.5200, beats the best member by +0.0200" in completed.stdout
    payload = json.loads((tmp_path / "out" / "report.json").read_text())
    assert payload["choice"]["chosen"] == "stacked"
    assert [row["name"] for row in payload["ensembles"]] == ["uniform ensemble",
                                                             "stacked ensemble"]
    png = (tmp_path / "out" / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.json",
                                                                    "report.png"]
    chosen = run_module("ensemble.report", "--choose", f"--ensemble_dir={dirs['uniform']}",
                        f"--stacked_dir={dirs['stacked']}", f"--weights_file={dirs['weights']}")
    assert chosen.stdout.strip() == str(dirs["stacked"])


def test_report_errors(tmp_path):
    dirs = make_dirs(tmp_path)
    with pytest.raises(UserError, match="--train_dirs: 1 dirs for 2 --model_dirs"):
        report.build_report([str(dirs["a-bfloat16"]), str(dirs["b-bfloat16"])],
                            train_dirs=[str(dirs["a-bfloat16-train"])])
    bare = tmp_path / "bare.json"
    write_weights_file(str(bare), [str(dirs["a-bfloat16"])], [1.0])
    with pytest.raises(UserError, match="has no 'gap' .write it with stacking.fit"):
        report.read_stacking(str(bare))
    completed = run_module("ensemble.report", "--choose", f"--ensemble_dir={dirs['uniform']}",
                           check=False)
    assert completed.returncode == 2 and "Traceback" not in completed.stderr
    assert "error: --stacked_dir: required" in completed.stderr
