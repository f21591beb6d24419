"""ensemble.report: rows read on exactly the held-out files, paired intervals,
the choice, refusals of rows measured on other data, the JSON and the chart."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from conftest import run_module
from ensemble import report
from support.stage_records import write_swa_record
from training import eval_results, intervals, metrics
from training.cli import UserError
from training.stage_files import Gain, WeightsFile
from training.weights_file import write_weights_file

NUM_VIDEOS, NUM_CLASSES = 300, 40


def videos_of(noise: float, seed: int, ids_prefix: str = "v") -> intervals.VideoTopK:
    """A system's per-video record: the labels plus noise (less noise, more GAP)."""
    labels = (np.random.default_rng(0).random((NUM_VIDEOS, NUM_CLASSES)) < 0.08).astype(float)
    scores = np.clip(0.5 * labels + np.random.default_rng(seed).normal(0.3, noise,
                                                                        labels.shape), 0, 1)
    accumulator = metrics.EvaluationMetrics(NUM_CLASSES)
    accumulator.accumulate(scores, labels)
    ids = np.asarray([f"{ids_prefix}{i:03d}".encode() for i in range(NUM_VIDEOS)])
    return intervals.VideoTopK(ids, *accumulator.per_video())


def evaluate(directory, pattern: str, videos: intervals.VideoTopK, checkpoint: str = "") -> None:
    """Records an evaluation of `directory` on `pattern` as training.eval would."""
    directory.mkdir(exist_ok=True)
    measured = eval_results.measurement(checkpoint or str(directory / "model.ckpt-10"),
                                        pattern, seed=1, top_k=20)
    eval_results.record(str(directory), measured, intervals.EvalResult(
        gap=videos.gap(), num_examples=videos.num_videos, videos=videos), 1)


def make_run(tmp_path):
    """Two members (with train dirs holding model.ckpt-10), both ensembles and
    a weights file, all evaluated on the held-out file (and the members also
    on the fitting one, which the report must not read)."""
    heldout, fit = str(tmp_path / "validate01.tfrecord"), str(tmp_path / "validate00.tfrecord")
    dirs = {}
    for index, (name, noise) in enumerate((("a-bfloat16", 0.30), ("b-bfloat16", 0.34))):
        for suffix, extra in (("", 0.0), ("-train", 0.02)):
            dirs[name + suffix] = tmp_path / (name + suffix)
            evaluate(dirs[name + suffix], heldout, videos_of(noise + extra, 10 * index + 1))
            evaluate(dirs[name + suffix], fit, videos_of(0.05, 99))   # better; not to be read
        (dirs[name + "-train"] / "model.ckpt-10.index").write_bytes(b"")
        write_swa_record(dirs[name], 4, fit)
    for name, noise in (("uniform", 0.25), ("stacked", 0.24)):
        dirs[name] = tmp_path / name
        evaluate(dirs[name], heldout, videos_of(noise, 5))
    dirs["weights"] = tmp_path / "weights.json"
    write_weights_file(str(dirs["weights"]), WeightsFile(
        members=(str(dirs["a-bfloat16"]), str(dirs["b-bfloat16"])), weights=(0.7, 0.3),
        gap=0.60, gap_uniform=0.58, num_videos=128, data_pattern=fit))
    return dirs, heldout


def build(dirs, heldout, **kwargs):
    return report.build_report([str(dirs["a-bfloat16"]), str(dirs["b-bfloat16"])], heldout,
                               str(dirs["uniform"]), str(dirs["stacked"]),
                               [str(dirs["a-bfloat16-train"]), str(dirs["b-bfloat16-train"])],
                               str(dirs["weights"]), samples=200, **kwargs)


def test_rows_gains_intervals_and_choice(tmp_path):
    """Mutation: letting evaluation_on ignore the data pattern (taking each dir's
    latest evaluation, as the report did before) makes the rows the fitting
    file's (GAP near 1) and fails the held-out GAP check."""
    dirs, heldout = make_run(tmp_path)
    built = build(dirs, heldout)
    assert built.num_videos == NUM_VIDEOS and built.data_pattern == heldout
    names = [row.name for row in built.rows]
    assert names == ["a-bfloat16-train last checkpoint", "a-bfloat16 (window 4)",
                     "b-bfloat16-train last checkpoint", "b-bfloat16 (window 4)",
                     "uniform ensemble", "stacked ensemble"]
    for row in built.rows:
        assert row.evaluation.eval_data_pattern == heldout
        assert row.evaluation.num_examples == NUM_VIDEOS
        assert row.gap.low < row.gap.estimate < row.gap.high < 0.95
    assert [row.chosen for row in built.rows[4:]] == [False, True]
    gains = {(g.what, g.system, g.over): g for g in built.gains}
    averaging = gains[("averaging", "a-bfloat16 (window 4)", "a-bfloat16-train last checkpoint")]
    assert averaging.low < averaging.estimate < averaging.high
    best = max(built.rows[:4], key=lambda row: row.gap.estimate).name
    assert ("ensemble vs best single state", "stacked ensemble", best) in gains
    assert len([g for g in built.gains if g.system == "stacked ensemble"
                and g.what.startswith("ensemble vs")]) == 4
    text = report.format_report(built)
    assert f"held-out: {NUM_VIDEOS} videos of {heldout}" in text
    assert "stacked ensemble *" in text and "stacked vs uniform: " in text
    assert "the CSV uses the stacked ensemble" in text
    tie = report.choose("U", "S", WeightsFile(members=("a",), weights=(1.0,), gap=0.5,
                                              gap_uniform=0.5, num_videos=1))
    assert tie.chosen == "uniform" and tie.dir == "U"


def stated(system: str, low: float, high: float, what: str = "averaging") -> Gain:
    """A gain as the report states it (gain_entry), with this interval."""
    interval = intervals.Interval((low + high) / 2, low, high)
    return Gain(what=what, system=system, over=f"{system} before", estimate=interval.estimate,
                low=low, high=high, resolved=interval.resolved)


def test_each_gain_is_stated_on_its_side_of_zero(tmp_path):
    """A resolved gain, a resolved loss and an unresolved one each get their
    own words in the text, and only a resolved gain counts as a win.
    Mutations tried: verdict saying "resolved, a gain" for every resolved
    interval (the loss reads as a gain); verdict checking `low > 0` alone for
    resolved (the loss reads "not resolved"); the win count summing
    `resolved` (the loss counts as a win: 2 of 3)."""
    assert report.verdict(stated("g", 0.01, 0.03)) == "resolved, a gain"
    assert report.verdict(stated("l", -0.03, -0.01)) == "resolved, a loss"
    assert report.verdict(stated("n", -0.01, 0.03)) == "not resolved"
    dirs, heldout = make_run(tmp_path)
    built = build(dirs, heldout)
    gains = [stated("gains", 0.01, 0.03), stated("loses", -0.03, -0.01),
             stated("unsure", -0.01, 0.03)]
    gains += [stated("stacked ensemble", low, high, "ensemble vs a single state")
              for low, high in ((0.01, 0.03), (-0.03, -0.01), (-0.01, 0.03))]
    built = dataclasses.replace(built, gains=tuple(gains))
    lines = report.format_report(built).splitlines()
    for system, words in (("gains", "resolved, a gain"), ("loses", "resolved, a loss"),
                          ("unsure", "not resolved")):
        line = next(line for line in lines if line.startswith(f"averaging: {system} vs"))
        assert line.endswith(f"({words})"), line
    assert "stacked ensemble (chosen) beats 1 of 3 single states with an interval above 0" \
        in lines


def test_rows_measured_on_other_data_are_refused(tmp_path):
    """Mutation: removing check_same_videos from PairedBootstrap lets the
    relabelled ensemble through and fails the second check."""
    dirs, heldout = make_run(tmp_path)
    other = str(tmp_path / "validate02.tfrecord")
    with pytest.raises(UserError, match=f"no evaluation on {other} .it was evaluated on: "):
        build(dirs, other)
    # The same file name but other videos (e.g. the file was regenerated).
    evaluate(dirs["uniform"], heldout, videos_of(0.25, 5, ids_prefix="w"))
    with pytest.raises(UserError, match="were measured on different videos"):
        build(dirs, heldout)


def test_a_stale_train_dir_evaluation_is_refused(tmp_path):
    dirs, heldout = make_run(tmp_path)
    (dirs["a-bfloat16-train"] / "model.ckpt-20.index").write_bytes(b"")
    with pytest.raises(UserError, match=r"its latest checkpoint \(step 20\) was not evaluated"):
        build(dirs, heldout)


@pytest.mark.slow
def test_cli_writes_json_and_png(tmp_path):
    dirs, heldout = make_run(tmp_path)
    out = tmp_path / "out" / "report"
    (tmp_path / "out").mkdir()
    completed = run_module(
        "ensemble.report", f"--data_pattern={heldout}",
        f"--model_dirs={dirs['a-bfloat16']},{dirs['b-bfloat16']}",
        f"--train_dirs={dirs['a-bfloat16-train']},{dirs['b-bfloat16-train']}",
        f"--ensemble_dir={dirs['uniform']}", f"--stacked_dir={dirs['stacked']}",
        f"--weights_file={dirs['weights']}", f"--output_json={out}.json",
        f"--output_png={out}.png", "--bootstrap_samples=100")
    assert "stacked ensemble (chosen) beats" in completed.stdout
    payload = json.loads((tmp_path / "out" / "report.json").read_text())
    assert payload["choice"]["chosen"] == "stacked" and payload["bootstrap"]["samples"] == 100
    assert len(payload["rows"]) == 6 and all("videos" not in row for row in payload["rows"])
    png = (tmp_path / "out" / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    chosen = run_module("ensemble.report", "--choose", f"--ensemble_dir={dirs['uniform']}",
                        f"--stacked_dir={dirs['stacked']}", f"--weights_file={dirs['weights']}")
    assert chosen.stdout.strip() == str(dirs["stacked"])


@pytest.mark.slow
def test_report_errors(tmp_path):
    dirs, heldout = make_run(tmp_path)
    with pytest.raises(UserError, match="--train_dirs: 1 dirs for 2 --model_dirs"):
        report.build_report([str(dirs["a-bfloat16"]), str(dirs["b-bfloat16"])], heldout,
                            train_dirs=[str(dirs["a-bfloat16-train"])])
    bare = tmp_path / "bare.json"
    write_weights_file(str(bare), WeightsFile(members=(str(dirs["a-bfloat16"]),), weights=(1.0,)))
    with pytest.raises(UserError, match="has no 'gap' .write it with stacking.fit"):
        report.read_stacking(str(bare))
    completed = run_module("ensemble.report", "--choose", f"--ensemble_dir={dirs['uniform']}",
                           check=False)
    assert completed.returncode == 2 and "Traceback" not in completed.stderr
    assert "error: --stacked_dir: required" in completed.stderr
    completed = run_module("ensemble.report", f"--ensemble_dir={dirs['uniform']}", check=False)
    assert completed.returncode == 2 and "error: --data_pattern: required" in completed.stderr


def test_json_keeps_null_keys_where_the_report_always_wrote_them(tmp_path):
    """Without train dirs the member rows still have "last_row": null (and
    "stacked_weight": null without stacking), the ensemble rows no window
    keys; a weights file without num_videos and data_pattern gives
    "fit_videos": null and "fit_data_pattern": null, as the dict-built report
    wrote. Mutation tried: ReportChoice without _null_keys dropped
    fit_videos and fit_data_pattern."""
    dirs, heldout = make_run(tmp_path)
    members = [str(dirs["a-bfloat16"]), str(dirs["b-bfloat16"])]
    plain = report.build_report(members, heldout, str(dirs["uniform"]), samples=50).to_json()
    assert {key: plain["rows"][0][key] for key in ("last_row", "stacked_weight", "window")} \
        == {"last_row": None, "stacked_weight": None, "window": 4}
    assert sorted(plain["rows"][0]) == ["dir", "evaluation", "gap", "kind", "last_row", "member",
                                        "name", "stacked_weight", "window", "window_choice"]
    assert sorted(plain["rows"][2]) == ["chosen", "dir", "evaluation", "gap", "kind", "name"]
    assert plain["choice"] == {"chosen": "uniform", "dir": str(dirs["uniform"])}
    write_weights_file(str(dirs["weights"]), WeightsFile(
        members=tuple(members), weights=(0.7, 0.3), gap=0.60, gap_uniform=0.58))
    fitted = report.build_report(members, heldout, str(dirs["uniform"]), str(dirs["stacked"]),
                                 weights_file=str(dirs["weights"]), samples=50).to_json()
    assert fitted["choice"] == {"chosen": "stacked", "dir": str(dirs["stacked"]),
                                "fit_gap_stacked": 0.60, "fit_gap_uniform": 0.58,
                                "fit_videos": None, "fit_data_pattern": None}
