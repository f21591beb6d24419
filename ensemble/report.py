"""The final report: each member, the uniform and the stacked ensemble, and
what averaging and ensembling gained, side by side:

python -m ensemble.report --model_dirs=a,b,... --ensemble_dir=U [--stacked_dir=S]
    [--train_dirs=ta,tb,...] [--weights_file=W] [--output_json=R.json] [--output_png=R.png]
python -m ensemble.report --choose --ensemble_dir=U --stacked_dir=S --weights_file=W

Reads the eval_results.json that training.eval (members; --train_dirs: each
member's last checkpoint before averaging, evaluated with the same batch-norm
treatment) and ensemble.build --eval_data_pattern (ensembles) wrote: numbers
measured on the same held-out videos. --weights_file is what stacking.fit
wrote: the stacked weights and both ensembles' GAP on the fitting videos.
--choose prints the dir of the ensemble with the better GAP on the fitting
videos (the held-out numbers must not choose, or they would be fitted too).
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence

from absl import flags
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from training import checkpoints, eval_results, paths
from training import flags as shared_flags
from training.errors import UserError, run_main
from training.members import read_weights_file

FLAGS = flags.FLAGS
COLUMNS = ("gap", "hit_at_one", "perr", "map", "loss")
EVAL_RESULTS = eval_results.EVAL_RESULTS


def define_flags() -> None:
    shared_flags.define_shared("model_dirs", "")
    define = shared_flags.define
    define(flags.DEFINE_string, "ensemble_dir", "", "The (uniform) ensemble dir.",
           path=paths.IN_DIR)
    define(flags.DEFINE_string, "stacked_dir", "", "The ensemble built with stacked weights.",
           path=paths.IN_DIR)
    define(flags.DEFINE_string, "train_dirs", "", "Comma-separated train dirs of the members, "
           "in --model_dirs order (their eval_results.json: the last checkpoint's GAP).",
           path=paths.IN_DIRS)
    define(flags.DEFINE_string, "weights_file", "", "stacking.fit's weights JSON.",
           path=paths.IN_FILE)
    define(flags.DEFINE_string, "output_json", "", "Also write the report as JSON.",
           path=paths.OUT_FILE)
    define(flags.DEFINE_string, "output_png", "", "Also write a bar chart (PNG).",
           path=paths.OUT_FILE)
    define(flags.DEFINE_bool, "choose", False, "Print only the dir of the better ensemble on "
           "the fitting videos (--weights_file).")
    define(flags.DEFINE_bool, "overwrite", True, "Replace --output_json and --output_png.")


def load_results(directory: str) -> Optional[Dict[str, Any]]:
    """A dir's latest evaluation (training.eval_results), or None when it has
    no eval_results.json."""
    return eval_results.latest_evaluation(directory)


def _gap(results: Optional[Dict[str, Any]]) -> Optional[float]:
    return float(results["gap"]) if results and "gap" in results else None


def _member_rows(model_dirs: Sequence[str], train_dirs: Sequence[str],
                 weights: Optional[Dict[str, float]]) -> List[Dict[str, Any]]:
    if train_dirs and len(train_dirs) != len(model_dirs):
        raise UserError(f"--train_dirs: {len(train_dirs)} dirs for {len(model_dirs)} "
                        f"--model_dirs")
    rows = []
    for index, model_dir in enumerate(model_dirs):
        results = load_results(model_dir)
        last = load_results(train_dirs[index]) if train_dirs else None
        rows.append({"name": os.path.basename(os.path.normpath(model_dir)), "dir": model_dir,
                     "kind": "member", "results": results, "gap": _gap(results),
                     "last_checkpoint_gap": _gap(last),
                     "stacked_weight": (weights or {}).get(os.path.realpath(model_dir))})
    return rows


def build_report(model_dirs: Sequence[str], ensemble_dir: str = "", stacked_dir: str = "",
                 train_dirs: Sequence[str] = (), weights_file: str = "") -> Dict[str, Any]:
    """The report as a dict: members, ensembles, gains over the best member."""
    stacking = read_stacking(weights_file) if weights_file else None
    weights = ({os.path.realpath(m): w for m, w in zip(stacking["members"], stacking["weights"])}
               if stacking else None)
    members = _member_rows(model_dirs, train_dirs, weights)
    gaps = [row["gap"] for row in members if row["gap"] is not None]
    best = max(gaps) if gaps else None
    ensembles = []
    for name, directory in (("uniform ensemble", ensemble_dir),
                            ("stacked ensemble", stacked_dir)):
        if directory:
            results = load_results(directory)
            gap = _gap(results)
            ensembles.append({"name": name, "dir": directory, "kind": "ensemble",
                              "results": results, "gap": gap,
                              "gain_over_best_member": (gap - best if gap is not None and
                                                        best is not None else None)})
    report = {"members": members, "ensembles": ensembles, "best_member_gap": best,
              "best_member": next((row["name"] for row in members if row["gap"] == best), None)}
    if stacking and ensemble_dir and stacked_dir:
        report["choice"] = choose(ensemble_dir, stacked_dir, stacking)
    return report


def read_stacking(weights_file: str) -> Dict[str, Any]:
    """The weights file with both ensembles' GAP on the fitting videos."""
    spec = read_weights_file(weights_file)
    payload = checkpoints.load_json(weights_file, f"--weights_file={weights_file}")
    for key in ("gap", "gap_uniform"):
        if not isinstance(payload.get(key), (int, float)):
            raise UserError(f"--weights_file={weights_file}: has no {key!r} (write it with "
                            f"stacking.fit)")
    return {**spec, "gap": float(payload["gap"]), "gap_uniform": float(payload["gap_uniform"]),
            "num_videos": payload.get("num_videos")}


def choose(ensemble_dir: str, stacked_dir: str, stacking: Dict[str, Any]) -> Dict[str, Any]:
    """The better ensemble on the fitting videos (ties: the uniform one)."""
    stacked_wins = stacking["gap"] > stacking["gap_uniform"]
    return {"chosen": "stacked" if stacked_wins else "uniform",
            "dir": stacked_dir if stacked_wins else ensemble_dir,
            "fit_gap_stacked": stacking["gap"], "fit_gap_uniform": stacking["gap_uniform"],
            "fit_videos": stacking["num_videos"]}


def _cell(value: Optional[float], signed: bool = False) -> str:
    if value is None:
        return f"{'-':>10}"
    return f"{value:+10.4f}" if signed else f"{value:10.4f}"


def format_report(report: Dict[str, Any]) -> str:
    """The report as a fixed-width text table and a few lines of conclusions."""
    rows = report["members"] + report["ensembles"]
    width = max([len("model")] + [len(row["name"]) for row in rows])
    header = (f"{'model':<{width}} | " + " | ".join(f"{c:>10}" for c in COLUMNS)
              + f" | {'last ckpt':>10} | {'weight':>10} | {'vs best':>10}")
    lines = [header, "-" * len(header)]
    for row in rows:
        results = row["results"] or {}
        cells = [_cell(results.get(c)) for c in COLUMNS]
        cells += [_cell(row.get("last_checkpoint_gap")), _cell(row.get("stacked_weight")),
                  _cell(row.get("gain_over_best_member"), signed=True)]
        lines.append(f"{row['name']:<{width}} | " + " | ".join(cells))
    lines += _conclusions(report)
    return "\n".join(lines)


def _conclusions(report: Dict[str, Any]) -> List[str]:
    lines = []
    if report["best_member"] is not None:
        lines.append(f"best member: {report['best_member']} (GAP {report['best_member_gap']:.4f})")
    for row in report["ensembles"]:
        if row["gain_over_best_member"] is not None:
            verdict = "beats" if row["gain_over_best_member"] > 0 else "does not beat"
            lines.append(f"{row['name']}: GAP {row['gap']:.4f}, {verdict} the best member by "
                         f"{row['gain_over_best_member']:+.4f}")
    averaged = [row for row in report["members"]
                if row["gap"] is not None and row["last_checkpoint_gap"] is not None]
    if averaged:
        gains = ", ".join(f"{row['name']} {row['gap'] - row['last_checkpoint_gap']:+.4f}"
                          for row in averaged)
        lines.append(f"checkpoint averaging, GAP gain over the last checkpoint: {gains}")
    choice = report.get("choice")
    if choice:
        lines.append(f"the CSV uses the {choice['chosen']} ensemble ({choice['dir']}): GAP on the "
                     f"fitting videos stacked {choice['fit_gap_stacked']:.4f}, uniform "
                     f"{choice['fit_gap_uniform']:.4f}")
    return lines


def write_chart(report: Dict[str, Any], path: str, overwrite: bool = True) -> None:
    """A bar chart (PNG) of the members' GAP (last checkpoint and averaged)
    and the ensembles', with the best member as a dashed line."""
    rows = report["members"] + report["ensembles"]
    figure = Figure(figsize=(max(6.0, 1.1 * len(rows)) + 2.0, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    positions = list(range(len(rows)))
    members = [p for p, row in zip(positions, rows) if row["kind"] == "member"]
    ensembles = [p for p, row in zip(positions, rows) if row["kind"] == "ensemble"]
    axes.bar([p - 0.2 for p in members],
             [rows[p].get("last_checkpoint_gap") or 0.0 for p in members], width=0.4,
             color="#b0b0b0", label="last checkpoint")
    axes.bar([p + 0.2 for p in members], [rows[p]["gap"] or 0.0 for p in members], width=0.4,
             color="#4c72b0", label="averaged member")
    axes.bar(ensembles, [rows[p]["gap"] or 0.0 for p in ensembles], width=0.6,
             color="#dd8452", label="ensemble")
    if report["best_member_gap"] is not None:
        axes.axhline(report["best_member_gap"], color="black", linestyle="--", linewidth=1,
                     label="best member")
    axes.set_xticks(positions)
    axes.set_xticklabels([row["name"].replace("nonlocal-", "").replace("-bfloat16", "")
                          for row in rows], rotation=30, ha="right", fontsize=8)
    axes.set_ylabel("GAP@20, held-out videos")
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    with checkpoints.atomic_file(path, overwrite, "output_png") as tmp_path:
        figure.savefig(tmp_path, format="png")


def main(argv) -> None:
    del argv
    if FLAGS.choose:
        shared_flags.require(ensemble_dir=FLAGS.ensemble_dir, stacked_dir=FLAGS.stacked_dir,
                             weights_file=FLAGS.weights_file)
        print(choose(FLAGS.ensemble_dir, FLAGS.stacked_dir,
                     read_stacking(FLAGS.weights_file))["dir"])
        return
    if not FLAGS.model_dirs and not FLAGS.ensemble_dir:
        raise UserError("--model_dirs or --ensemble_dir: give at least one")
    report = build_report(shared_flags.comma_list(FLAGS.model_dirs), FLAGS.ensemble_dir,
                          FLAGS.stacked_dir, shared_flags.comma_list(FLAGS.train_dirs),
                          FLAGS.weights_file)
    print(format_report(report))
    if FLAGS.output_json:
        with checkpoints.atomic_file(FLAGS.output_json, FLAGS.overwrite, "output_json") as tmp:
            checkpoints.write_json(tmp, report)
        print(f"wrote {FLAGS.output_json}")
    if FLAGS.output_png:
        write_chart(report, FLAGS.output_png, FLAGS.overwrite)
        print(f"wrote {FLAGS.output_png}")


if __name__ == "__main__":
    define_flags()
    run_main(main)
