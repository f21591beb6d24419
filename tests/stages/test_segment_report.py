"""ensemble.segment_report: the 2019 report's rows, gains and refusals, on
segment evaluations written as training.eval --segment_labels writes them
(segment_eval_results.json and the per-rating records), no model needed."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from ensemble import segment_report
from support.segment_results import PATTERN_NAME, ratings, write_evaluation
from support.stage_records import write_swa_record
from training import intervals
from training.cli import UserError


def refined(record: intervals.SegmentRatings, keep: np.ndarray) -> intervals.SegmentRatings:
    return intervals.SegmentRatings(record.ids, record.start_times, record.classes,
                                    record.ratings, record.scores, keep)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Two members: video level (weak), fine-tuned (better), averaged (best);
    refinement drops negatives of one and positives of the other; the
    video-level ensemble, both fine-tuned ensembles; a segment weights file."""
    root = tmp_path_factory.mktemp("segment_report")
    pattern = str(root / PATTERN_NAME)
    refine_dir = str(root / "video_ensemble")
    rated = ratings(0.0, 0).ratings > 0
    drop_negatives = ~(~rated & (np.arange(rated.size) % 2 == 0))
    drop_positives = ~(rated & (np.arange(rated.size) % 3 == 0))
    dirs = {"video": [], "finetuned": [], "members": []}
    for index, name in enumerate(("GRUModel", "Soft-DBoF-4k")):
        video, tuned, member = (str(root / kind / name) for kind in ("video", "tune", "swa"))
        write_evaluation(video, pattern, ratings(0.3, 10 + index))
        os.makedirs(tuned, exist_ok=True)
        for step in (10, 20):
            open(os.path.join(tuned, f"model.ckpt-{step}.index"), "w").close()
        write_evaluation(tuned, pattern, ratings(0.1, 20 + index), step=10)   # not the latest
        write_evaluation(tuned, pattern, ratings(0.6, 30 + index), step=20)
        keep = drop_negatives if index == 0 else drop_positives
        write_evaluation(member, pattern, refined(ratings(0.7, 40 + index), keep), step=20,
                         refine_top_k=5, refine_dir=refine_dir)
        write_swa_record(member, 4, os.path.join(str(root), "fit*.tfrecord"))
        dirs["video"].append(video), dirs["finetuned"].append(tuned), dirs["members"].append(member)
    write_evaluation(refine_dir, pattern, refined(ratings(0.5, 50), drop_negatives),
                     refine_top_k=5, refine_dir=refine_dir)
    uniform, stacked = str(root / "uniform"), str(root / "stacked")
    write_evaluation(uniform, pattern, refined(ratings(0.9, 60), drop_negatives),
                     refine_top_k=5, refine_dir=refine_dir)
    write_evaluation(stacked, pattern, refined(ratings(0.9, 61), drop_negatives),
                     refine_top_k=5, refine_dir=refine_dir)
    weights = str(root / "weights.json")
    with open(weights, "w") as handle:
        json.dump({"members": dirs["members"], "weights": [0.3, 0.7], "segment_map": 0.70,
                   "segment_map_uniform": 0.72, "data_pattern": "fit"}, handle)
    return {"root": root, "pattern": pattern, "refine_dir": refine_dir, "uniform": uniform,
            "stacked": stacked, "weights": weights, **dirs}


def build(run, **overrides):
    args = dict(data_pattern=run["pattern"], video_dirs=run["video"],
                finetuned_dirs=run["finetuned"], model_dirs=run["members"], refine_top_k=5,
                refine_model_dir=run["refine_dir"], video_ensemble_dir=run["refine_dir"],
                ensemble_dir=run["uniform"], stacked_dir=run["stacked"],
                weights_file=run["weights"], samples=200)
    return segment_report.build_report(**{**args, **overrides})


def test_rows_and_gains_of_every_stage(run):
    """Mutations: the fine-tuned row read from an earlier checkpoint than the
    latest; the refined row taken as the unrefined one (or the reverse); the
    chosen mark on the unrefined ensemble -- each fails an assertion here."""
    report = build(run)
    rows = {row.name: row for row in report.rows}
    assert list(rows)[:5] == ["GRUModel video level", "GRUModel fine-tuned",
                              "GRUModel fine-tuned, window 4",
                              "GRUModel fine-tuned, window 4 + refined",
                              "Soft-DBoF-4k video level"]
    assert rows["GRUModel fine-tuned"].evaluation.global_step == 20
    # Values are each record's Segment MAP, the refined rows with pairs left out.
    member = run["members"][0]
    entry = segment_report.segment_evaluation_on(member, run["pattern"], 5, run["refine_dir"])
    record = segment_report.ratings_of(member, entry).sorted_by_id()
    assert rows["GRUModel fine-tuned, window 4 + refined"].value.estimate == \
        pytest.approx(record.point())
    assert rows["GRUModel fine-tuned, window 4"].value.estimate == pytest.approx(
        segment_report.unrefined(record).point())
    gains = {(gain.what, gain.system): gain for gain in report.gains}
    assert gains[("fine-tuning", "GRUModel fine-tuned")].low > 0
    # Refinement that drops negatives gains, one that drops positives loses.
    assert gains[("refinement", "GRUModel fine-tuned, window 4 + refined")].low > 0
    assert gains[("refinement", "Soft-DBoF-4k fine-tuned, window 4 + refined")].high < 0
    assert ("fine-tuned vs video-level ensemble", "fine-tuned ensemble + refined") in gains
    assert ("stacked vs uniform", "stacked fine-tuned ensemble + refined") in gains
    # The uniform ensemble won on the fitting files; its refined row writes the CSV.
    chosen = [row.name for row in report.rows if row.chosen]
    assert chosen == ["fine-tuned ensemble + refined"]
    assert report.choice.chosen == "uniform"
    text = segment_report.format_report(report)
    assert "refinement: Soft-DBoF-4k fine-tuned, window 4 + refined vs" in text
    assert "(resolved, a loss)" in text and "(resolved, a gain)" in text


def test_the_submission_refines_only_when_it_wins_on_the_fitting_files(run):
    """The refinement is chosen on the fitting files' refined evaluation of
    the chosen (uniform) ensemble: dropping negatives there keeps it, dropping
    positives turns it off; the chosen mark and the text follow, and a refined
    row's only gain is over its unrefined row.

    Mutations tried: comparing refined with refined (always 0) -> the first
    case chose 0; the unrefined row never marked chosen -> the report's
    chosen rows failed; the refined row keeping its
    averaging link -> the gain count failed."""
    fit = str(run["root"] / "fit*.tfrecord")
    uniform, rated = run["uniform"], ratings(0.0, 0).ratings > 0
    cases = ((~(~rated & (np.arange(rated.size) % 2 == 0)), 5),
             (~(rated & (np.arange(rated.size) % 3 == 0)), 0))
    for keep, want in cases:
        directory = str(run["root"] / f"choice{want}")
        write_evaluation(directory, fit, refined(ratings(0.8, 70), keep), refine_top_k=5,
                         refine_dir=run["refine_dir"])
        choice = segment_report.choose_refinement(directory, fit, 5, run["refine_dir"])
        assert choice.refine_top_k == want
        assert (choice.fit_segment_map_refined > choice.fit_segment_map_unrefined) == \
            bool(want)
    write_evaluation(uniform, fit, refined(ratings(0.8, 70), cases[1][0]), refine_top_k=5,
                     refine_dir=run["refine_dir"])
    report = build(run, fit_data_pattern=fit)
    assert [row.name for row in report.rows if row.chosen] == ["fine-tuned ensemble"]
    assert report.choice.refine_top_k == 0
    assert "the submission does not refine: Segment MAP of the chosen ensemble on the " \
           "fitting files refined" in segment_report.format_report(report)
    linked = [gain for gain in report.gains
              if gain.system == "GRUModel fine-tuned, window 4 + refined"]
    assert [gain.what for gain in linked] == ["refinement"]


def test_missing_or_other_evaluations_are_refused_in_one_line(run, tmp_path):
    """Mutations: matching entries on the pattern alone (ignoring the
    refinement), or accepting an earlier checkpoint's evaluation of a train dir."""
    with pytest.raises(UserError, match="no evaluations --segment_labels "
                                        "--segment_refine_top_k=7"):
        build(run, refine_top_k=7)
    with pytest.raises(UserError, match="no evaluations --segment_labels on"):
        build(run, data_pattern=str(tmp_path / "other*.tfrecord"))
    tuned = run["finetuned"][0]
    open(os.path.join(tuned, "model.ckpt-30.index"), "w").close()
    try:
        with pytest.raises(UserError, match=r"latest checkpoint \(step 30\) has no evaluation"):
            build(run)
    finally:
        os.remove(os.path.join(tuned, "model.ckpt-30.index"))
    with pytest.raises(UserError, match="has no 'segment_map'"):
        bad = tmp_path / "w.json"
        bad.write_text(json.dumps({"members": run["members"], "weights": [0.5, 0.5]}))
        build(run, weights_file=str(bad))


def test_chart_and_json(run, tmp_path):
    from ensemble import report as video_report
    report = build(run)
    png = tmp_path / "r.png"
    video_report.write_chart(report, str(png), True, segment_report._COLOURS, "Segment MAP",
                             segment_report._ENSEMBLE_KINDS)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.dumps(report.to_json())


def test_the_command_prints_and_writes_the_report(run, tmp_path):
    """The entry point end to end (its flags' defaults included: a mutation
    giving --model_dirs a non-empty default fails here) and --choose."""
    from conftest import run_module

    out = tmp_path / "r.json"
    args = [f"--data_pattern={run['pattern']}", f"--video_dirs={','.join(run['video'])}",
            f"--finetuned_dirs={','.join(run['finetuned'])}",
            f"--model_dirs={','.join(run['members'])}", "--refine_top_k=5",
            f"--refine_model_dir={run['refine_dir']}", f"--ensemble_dir={run['uniform']}",
            f"--output_json={out}", "--bootstrap_samples=50"]
    printed = run_module("ensemble.segment_report", *args).stdout
    assert "fine-tuning: GRUModel fine-tuned vs GRUModel video level" in printed
    assert json.loads(out.read_text())["refinement"]["top_k"] == 5
    chosen = run_module("ensemble.segment_report", "--choose", f"--ensemble_dir={run['uniform']}",
                        f"--stacked_dir={run['stacked']}", f"--weights_file={run['weights']}")
    assert chosen.stdout.strip() == run["uniform"]


def test_json_keeps_null_keys_where_the_report_always_wrote_them(run):
    """Without video-level dirs the fine-tuned rows still have "video_row":
    null, without fine-tuning dirs the averaged rows "finetuned_row": null
    (their refined rows have no such key), and a weights file without
    data_pattern gives "fit_data_pattern": null, as the dict-built report
    wrote. Mutation tried: SegmentReportRow.NULL_KEYS without "fine-tuned"
    dropped video_row."""
    tuned = build(run, video_dirs=[], model_dirs=[], video_ensemble_dir="").to_json()
    assert [(row["kind"], row["video_row"]) for row in tuned["rows"][:2]] == \
        [("fine-tuned", None), ("fine-tuned", None)]
    averaged = build(run, video_dirs=[], finetuned_dirs=[]).to_json()
    rows = {row["kind"]: row for row in averaged["rows"]}
    assert rows["averaged"]["finetuned_row"] is None
    assert "finetuned_row" not in rows["averaged, refined"]
    assert sorted(rows["averaged, refined"]) == [
        "chosen", "dir", "evaluation", "kind", "member", "name", "stacked_weight",
        "unrefined_row", "value", "window", "window_choice"]
    assert averaged["choice"]["fit_data_pattern"] == "fit"
    bare = run["root"] / "bare_weights.json"
    bare.write_text(json.dumps({"members": run["members"], "weights": [0.3, 0.7],
                                "segment_map": 0.70, "segment_map_uniform": 0.72}))
    choice = build(run, weights_file=str(bare)).to_json()["choice"]
    assert choice == {"chosen": "uniform", "dir": run["uniform"], "fit_segment_map_stacked": 0.70,
                      "fit_segment_map_uniform": 0.72, "fit_data_pattern": None}
