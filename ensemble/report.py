"""The final report: every single model state of the run, both ensembles, and
what each stage gained, with paired bootstrap intervals, on held-out videos:

python -m ensemble.report --data_pattern=HELDOUT --model_dirs=a,b,... --ensemble_dir=U
    [--stacked_dir=S --weights_file=W] [--train_dirs=ta,tb,...]
    [--output_json=R.json] [--output_png=R.png]
python -m ensemble.report --choose --ensemble_dir=U --stacked_dir=S --weights_file=W

Rows (each dir's evaluation on exactly --data_pattern, read from its
eval_results.json with the per-video record training.eval_results keeps):
  * each member's last checkpoint (--train_dirs: the latest checkpoint of
    the train dir, which must be the one evaluated);
  * each member as the ensemble holds it (--model_dirs: the averaged window,
    or the last checkpoint where swa.average chose window 1);
  * the uniform and the stacked ensemble; the chosen one (by --choose's rule,
    on the fitting videos of --weights_file) is marked.
Rows measured on different files or videos are refused. Every gain (member
vs its last checkpoint, each ensemble vs the best single state and vs every
state, stacked vs uniform) gets a paired bootstrap 95% interval over the
videos (training.intervals) and "resolved" only when it excludes 0.

--choose prints the dir of the ensemble with the better GAP on the fitting
videos (the held-out numbers must not choose, or they would be fitted too).
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple, TypeVar, Union

from absl import flags
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from training import checkpoints, eval_results, intervals, paths, stage_files
from training import flags as shared_flags
from training.cli import UserError, run_main
from training.stage_files import (
    BootstrapSettings,
    EnsembleChoice,
    Estimate,
    Evaluation,
    Gain,
    Report,
    ReportChoice,
    ReportRow,
    SegmentReport,
    StateRow,
    SwaRecord,
    WeightsFile,
    WindowChoice,
)
from training.weights_file import read_weights_file

FLAGS = flags.FLAGS


def define_flags() -> None:
    shared_flags.define_shared("model_dirs", "")
    define = shared_flags.define
    define(flags.DEFINE_string, "data_pattern", "", "The held-out files every row must have "
           "been evaluated on (nothing was chosen on them).", path=paths.IN_PATTERN)
    define(flags.DEFINE_string, "ensemble_dir", "", "The (uniform) ensemble dir.",
           path=paths.IN_DIR)
    define(flags.DEFINE_string, "stacked_dir", "", "The ensemble built with stacked weights.",
           path=paths.IN_DIR)
    define(flags.DEFINE_string, "train_dirs", "", "Comma-separated train dirs of the members, "
           "in --model_dirs order (their latest checkpoint's evaluation).", path=paths.IN_DIRS)
    define_output_flags("videos")


def define_output_flags(fitting: str) -> None:
    """The flags every report has: --weights_file, its outputs, --choose (on
    the fitting `fitting` of the weights file), the bootstrap draws."""
    define = shared_flags.define
    shared_flags.define_shared("weights_file", "")
    define(flags.DEFINE_string, "output_json", "", "Also write the report as JSON.",
           path=paths.OUT_FILE)
    define(flags.DEFINE_string, "output_png", "", "Also write a bar chart (PNG).",
           path=paths.OUT_FILE)
    define(flags.DEFINE_bool, "choose", False, "Print only the dir of the better ensemble on "
           f"the fitting {fitting} (--weights_file).")
    define(flags.DEFINE_integer, "bootstrap_samples", intervals.DEFAULT_SAMPLES,
           "Bootstrap draws over the videos for the intervals.")
    define(flags.DEFINE_bool, "overwrite", True, "Replace --output_json and --output_png.")
    define(flags.DEFINE_bool, "check_choices", False, "Only check that no choice behind the "
           "given dirs and files read --data_pattern's files (exit 1, naming them, if one did).")


# ---------------------------------------------------------------------------
# Reading the evaluations


def _latest_step(train_dir: str) -> Optional[int]:
    found = checkpoints.list_checkpoints(train_dir)
    return found[-1][0] if found else None


def evaluation_on(directory: str, data_pattern: str, train_dir: bool = False
                  ) -> Evaluation:
    """The dir's evaluation on exactly `data_pattern` (a train dir's: of its
    latest checkpoint); a UserError when there is none or it is ambiguous."""
    wanted = eval_results.absolute_pattern(data_pattern)
    evaluations = eval_results.read_evaluations(directory).values()
    entries = [entry for entry in evaluations if entry.eval_data_pattern == wanted]
    if train_dir and entries:
        step = _latest_step(directory)
        entries = [entry for entry in entries if entry.global_step == step]
        if not entries:
            raise UserError(f"{directory}: its latest checkpoint (step {step}) was not "
                            f"evaluated on {data_pattern}; evaluate it (training.eval)")
    if not entries:
        measured = sorted({str(entry.eval_data_pattern) for entry in evaluations})
        raise UserError(f"{directory}: no evaluation on {data_pattern} (it was evaluated on: "
                        f"{'; '.join(measured) or 'nothing'}); evaluate it on those files")
    if len(entries) > 1:
        latest = eval_results.latest_evaluation(directory)
        entries = [entry for entry in entries if latest is not None
                   and (entry.checkpoint, entry.bn_statistics, entry.seed)
                   == (latest.checkpoint, latest.bn_statistics, latest.seed)]
        if len(entries) != 1:
            raise UserError(f"{directory}: several evaluations on {data_pattern} differ in "
                            f"their settings; evaluate it again to make one the latest")
    return entries[0]


def averaging(model_dir: str) -> Tuple[Optional[int], Optional[WindowChoice]]:
    """(window, its choice) of a member: the count of checkpoints swa.average
    averaged and how it chose it (its swa.json, carried into converted dirs;
    (None, None) without one)."""
    info = stage_files.read_optional(SwaRecord, model_dir)
    return (info.count, info.window_choice) if info else (None, None)


def check_held_out(data_pattern: str, sources: Sequence[str],
                   chosen_on: Sequence[stage_files.Provenance] = ()) -> None:
    """Refuses, in one line naming the file and the stage, a report on
    files that a choice behind any of `sources` (dirs and files; "" skipped)
    or in `chosen_on` (choices the report makes itself) read."""
    found: Dict[str, Sequence[stage_files.Provenance]] = {
        path: stage_files.provenance_of(path) for path in sources if path}
    if chosen_on:
        found["this report"] = chosen_on
    stage_files.check_held_out(data_pattern, found)


def dir_name(directory: str) -> str:
    return os.path.basename(os.path.normpath(directory))


# The metric of a row before the bootstrap measured it (build_report replaces it).
UNMEASURED = Estimate(estimate=math.nan, low=math.nan, high=math.nan, resolved=False)
# The evaluation of a row before its dir's is read (_measured replaces it).
UNREAD = Evaluation(checkpoint="", global_step=0)
Measured = Tuple[ReportRow, intervals.VideoTopK]


def _measured(row: ReportRow, data_pattern: str, train_dir: bool = False) -> Measured:
    """The row with its dir's evaluation on data_pattern, and that evaluation's videos."""
    entry = evaluation_on(row.dir, data_pattern, train_dir)
    return dataclasses.replace(row, evaluation=entry), eval_results.videos_of(row.dir, entry)


def _member_rows(model_dirs: Sequence[str], train_dirs: Sequence[str], data_pattern: str,
                 weights: Dict[str, float]) -> List[Measured]:
    if train_dirs and len(train_dirs) != len(model_dirs):
        raise UserError(f"--train_dirs: {len(train_dirs)} dirs for {len(model_dirs)} "
                        f"--model_dirs")
    rows = []
    for index, model_dir in enumerate(model_dirs):
        name, (window, window_choice) = dir_name(model_dir), averaging(model_dir)
        last = None
        if train_dirs:
            last = ReportRow(name=f"{dir_name(train_dirs[index])} last checkpoint",
                             dir=train_dirs[index], kind="last checkpoint", evaluation=UNREAD,
                             gap=UNMEASURED, member=name)
            rows.append(_measured(last, data_pattern, train_dir=True))
        label = (f"{name} (window {window})" if window else name)
        rows.append(_measured(ReportRow(
            name=label, dir=model_dir, kind="member", evaluation=UNREAD, gap=UNMEASURED,
            member=name, window=window, window_choice=window_choice,
            last_row=last.name if last else None,
            stacked_weight=weights.get(os.path.realpath(model_dir))), data_pattern))
    return rows


# ---------------------------------------------------------------------------
# The report


def _ensemble_rows(ensemble_dir: str, stacked_dir: str, data_pattern: str,
                   chosen_dir: str) -> List[Measured]:
    rows = []
    for name, directory in (("uniform ensemble", ensemble_dir),
                            ("stacked ensemble", stacked_dir)):
        if directory:
            chosen = os.path.realpath(directory) == os.path.realpath(chosen_dir)
            rows.append(_measured(ReportRow(name=name, dir=directory, kind="ensemble",
                                            evaluation=UNREAD, gap=UNMEASURED, chosen=chosen),
                                  data_pattern))
    return rows


def estimate_of(interval: intervals.Interval) -> Estimate:
    return Estimate(estimate=interval.estimate, low=interval.low, high=interval.high,
                    resolved=interval.resolved)


def gain_entry(boot: intervals.PairedBootstrap, what: str, name: str, over: str) -> Gain:
    """One gain the report states: metric(name) - metric(over), its interval."""
    gain = boot.gain(name, over)
    return Gain(what=what, system=name, over=over, estimate=gain.estimate, low=gain.low,
                high=gain.high, resolved=gain.resolved)


R = TypeVar("R", bound=StateRow)


def best_single(singles: Sequence[R]) -> Optional[R]:
    """The single-state row with the highest metric estimate (None: no rows)."""
    return max(singles, key=lambda row: row.metric.estimate) if singles else None


def versus_singles(boot: intervals.PairedBootstrap, name: str, singles: Sequence[StateRow],
                   best: StateRow) -> List[Gain]:
    """Ensemble `name` vs the best single state, then vs every other one."""
    return ([gain_entry(boot, "ensemble vs best single state", name, best.name)]
            + [gain_entry(boot, "ensemble vs single state", name, single.name)
               for single in singles if single is not best])


def _gains(rows: Sequence[ReportRow], boot: intervals.PairedBootstrap) -> List[Gain]:
    """Every gain the report states, each with its paired interval."""
    singles = [row for row in rows if row.kind != "ensemble"]
    best = best_single(singles)
    gains = [gain_entry(boot, "averaging", row.name, row.last_row) for row in rows
             if row.kind == "member" and row.last_row]
    for row in rows:
        if row.kind == "ensemble" and best is not None:
            gains += versus_singles(boot, row.name, singles, best)
    ensembles = {row.name: row for row in rows if row.kind == "ensemble"}
    if len(ensembles) == 2:
        gains.append(gain_entry(boot, "stacked vs uniform", "stacked ensemble",
                                "uniform ensemble"))
    return gains


def build_report(model_dirs: Sequence[str], data_pattern: str, ensemble_dir: str = "",
                 stacked_dir: str = "", train_dirs: Sequence[str] = (),
                 weights_file: str = "", samples: int = intervals.DEFAULT_SAMPLES
                 ) -> Report:
    """The report (module docstring); rows on other data are refused, and
    so are held-out files that a choice behind a row read (check_held_out)."""
    shared_flags.require(data_pattern=data_pattern)
    check_held_out(data_pattern, [*model_dirs, *train_dirs, ensemble_dir, stacked_dir,
                                  weights_file])
    weights, choice = weights_and_choice(weights_file, ensemble_dir, stacked_dir,
                                         read_stacking, choose)
    measured = (_member_rows(model_dirs, train_dirs, data_pattern, weights)
                + _ensemble_rows(ensemble_dir, stacked_dir, data_pattern, choice.dir))
    if not measured:
        raise UserError("--model_dirs or --ensemble_dir: give at least one")
    boot = intervals.PairedBootstrap({row.name: videos for row, videos in measured}, samples)
    rows = tuple(dataclasses.replace(row, gap=estimate_of(boot.gap(row.name)))
                 for row, _ in measured)
    return Report(data_pattern=eval_results.absolute_pattern(data_pattern),
                  num_videos=boot.num_videos, bootstrap=bootstrap_settings(boot),
                  rows=rows, gains=tuple(_gains(rows, boot)), choice=choice)


def bootstrap_settings(boot: intervals.PairedBootstrap) -> BootstrapSettings:
    return BootstrapSettings(samples=boot.samples, seed=boot.seed,
                             confidence=intervals.CONFIDENCE)


def read_fitted(weights_file: str, metric: str, written_by: str) -> WeightsFile:
    """The weights file, which must hold both ensembles' `metric` on the
    fitting data (its keys `metric` and `<metric>_uniform`; missing: one
    line, write it with `written_by`)."""
    spec = read_weights_file(weights_file)
    for key, value in zip((metric, f"{metric}_uniform"), spec.fitted(metric)):
        if value is None:
            raise UserError(f"--weights_file={weights_file}: has no {key!r} (write it with "
                            f"{written_by})")
    return spec


def read_stacking(weights_file: str) -> WeightsFile:
    """The weights file with both ensembles' GAP on the fitting videos."""
    return read_fitted(weights_file, "gap", "stacking.fit")


def choose_by_metric(ensemble_dir: str, stacked_dir: str, stacking: WeightsFile,
                     metric: str) -> Tuple[str, str, float, float]:
    """The better ensemble by `metric` on the fitting data (read_fitted; ties:
    the uniform one): (chosen, its dir, the stacked and the uniform value)."""
    stacked, uniform = stacking.fitted(metric)
    if stacked is None or uniform is None:
        raise ValueError(f"the weights file holds no {metric!r} (read it with read_fitted)")
    if stacked > uniform:
        return "stacked", stacked_dir, float(stacked), float(uniform)
    return "uniform", ensemble_dir, float(stacked), float(uniform)


def choose(ensemble_dir: str, stacked_dir: str, stacking: Optional[WeightsFile]
           ) -> ReportChoice:
    """The better ensemble on the fitting videos (ties, no weights file or no
    stacked dir: the uniform one)."""
    if stacking is None or not stacked_dir:
        return ReportChoice(chosen="uniform", dir=ensemble_dir)
    chosen, directory, stacked, uniform = choose_by_metric(ensemble_dir, stacked_dir,
                                                           stacking, "gap")
    return ReportChoice(chosen=chosen, dir=directory, fit_gap_stacked=stacked,
                        fit_gap_uniform=uniform, fit_videos=stacking.num_videos,
                        fit_data_pattern=stacking.data_pattern)


C = TypeVar("C", bound=EnsembleChoice)


def weights_and_choice(weights_file: str, ensemble_dir: str, stacked_dir: str,
                       read: Callable[[str], WeightsFile],
                       choose_by: Callable[[str, str, Optional[WeightsFile]], C]
                       ) -> Tuple[Dict[str, float], C]:
    """({realpath of a member: its stacked weight}, the ensemble choice) of
    the weights file read by `read` and chosen by `choose_by` (no file: None)."""
    stacking = read(weights_file) if weights_file else None
    weights = ({os.path.realpath(m): w for m, w in zip(stacking.members, stacking.weights)}
               if stacking else {})
    return weights, choose_by(ensemble_dir, stacked_dir, stacking)


# ---------------------------------------------------------------------------
# Text and chart


def verdict(gain: Gain) -> str:
    if not gain.resolved:
        return "not resolved"
    return "resolved, a gain" if gain.low > 0 else "resolved, a loss"


def interval_text(value: Estimate, signed: bool = True) -> str:
    return intervals.Interval(value.estimate, value.low, value.high).text(signed)


def format_report(report: Report) -> str:
    """The report as a fixed-width table and its conclusions, intervals included."""
    lines = [f"held-out: {report.num_videos} videos of {report.data_pattern}; "
             f"intervals: paired bootstrap over videos, {report.bootstrap.samples} draws"]
    lines += table_lines(report.rows, 15, ("GAP [95% interval]", 26))
    lines.append("* the ensemble that writes the CSV (chosen on the fitting videos)")
    lines += _conclusions(report)
    return "\n".join(lines)


def table_lines(rows: Sequence[StateRow], kind_width: int, value_column: Tuple[str, int]
                ) -> List[str]:
    """The table's header, its rule and a line per row: its name (" *": the
    chosen ensemble), kind, metric with its interval under the column
    value_column (title, width), and its stacked weight."""
    title, value_width = value_column
    width = max(len("state"), *(len(row.name) for row in rows)) + 2
    header = (f"{'state':<{width}} | {'kind':<{kind_width}} | {title:<{value_width}} | "
              f"{'weight':>6}")
    lines = [header, "-" * len(header)]
    for row in rows:
        mark = " *" if row.chosen else ""
        weight = row.stacked_weight
        lines.append(f"{row.name + mark:<{width}} | {row.kind:<{kind_width}} | "
                     f"{interval_text(row.metric, signed=False):<{value_width}} | "
                     f"{'' if weight is None else f'{weight:.3f}':>6}")
    return lines


def _conclusions(report: Report) -> List[str]:
    lines = []
    by_kind: Dict[str, List[Gain]] = {}
    for gain in report.gains:
        by_kind.setdefault(gain.what, []).append(gain)
    for gain in by_kind.get("averaging", []):
        lines.append(f"averaging: {gain.system} vs its last checkpoint "
                     f"{interval_text(gain)} ({verdict(gain)})")
    for gain in by_kind.get("ensemble vs best single state", []):
        lines.append(f"{gain.system} vs the best single state ({gain.over}): "
                     f"{interval_text(gain)} ({verdict(gain)})")
    chosen = next((row.name for row in report.rows if row.chosen), None)
    if chosen:
        against = [g for g in report.gains if g.system == chosen
                   and g.what.startswith("ensemble vs")]
        wins = sum(g.resolved and g.low > 0 for g in against)
        lines.append(f"{chosen} (chosen) beats {wins} of {len(against)} single states with an "
                     f"interval above 0")
    for gain in by_kind.get("stacked vs uniform", []):
        lines.append(f"stacked vs uniform: {interval_text(gain)} ({verdict(gain)})")
    return lines + choice_lines(report.choice, "GAP", "the CSV", "videos")


def choice_lines(choice: EnsembleChoice, title: str, output: str, fitting: str) -> List[str]:
    """The line on which ensemble writes `output`, with both ensembles'
    metric (titled `title`) on the fitting `fitting` (choose_by_metric);
    none when the choice was not made on a stacking fit."""
    fitted = choice.fitted()
    if fitted is None:
        return []
    stacked, uniform = fitted
    return [f"{output} uses the {choice.chosen} ensemble: {title} on the fitting {fitting} "
            f"stacked {stacked:.4f}, uniform {uniform:.4f}"]


_COLOURS = {"last checkpoint": "#b0b0b0", "member": "#4c72b0", "ensemble": "#dd8452"}


def _short(name: str) -> str:
    return name.replace("nonlocal-", "").replace("-bfloat16", "").replace("-int8", "")


def write_chart(report: Union[Report, SegmentReport], path: str, overwrite: bool = True,
                colours: Optional[Dict[str, str]] = None, ylabel: str = "",
                ensemble_kinds: Sequence[str] = ("ensemble",)) -> None:
    """A bar chart (PNG) of every row's metric with its 95% interval, bars
    coloured by kind, the best single state (a row not of ensemble_kinds) as
    a dashed line."""
    rows: Sequence[StateRow] = report.rows
    colours = colours or _COLOURS
    values = [row.metric for row in rows]
    figure = Figure(figsize=(max(6.0, 0.7 * len(rows)) + 2.0, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for kind, colour in colours.items():
        picked = [(p, values[p]) for p, row in enumerate(rows) if row.kind == kind]
        if picked:
            positions, heights = zip(*picked)
            axes.bar(positions, [value.estimate for value in heights], width=0.7,
                     color=colour, label=kind, yerr=_error_bars(heights), capsize=3)
    singles = [values[p].estimate for p, row in enumerate(rows)
               if row.kind not in ensemble_kinds]
    if singles:
        axes.axhline(max(singles), color="black", linestyle="--", linewidth=1,
                     label="best single state")
    axes.set_ylim(max(0.0, min(value.low for value in values) - 0.05), None)
    axes.set_xticks(range(len(rows)))
    axes.set_xticklabels([_short(row.name) + (" *" if row.chosen else "")
                          for row in rows], rotation=40, ha="right", fontsize=7)
    axes.set_ylabel(ylabel or f"GAP@20, {report.num_videos} held-out videos")
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    with checkpoints.atomic_file(path, overwrite, "output_png") as tmp_path:
        figure.savefig(tmp_path, format="png")


def _error_bars(values: Sequence[Estimate]) -> Tuple[List[float], List[float]]:
    return ([value.estimate - value.low for value in values],
            [value.high - value.estimate for value in values])


def main(argv) -> None:
    del argv
    if FLAGS.choose:
        print_choice()
        return
    if FLAGS.check_choices:
        check_held_out(FLAGS.data_pattern, [
            *shared_flags.comma_list(FLAGS.model_dirs), *shared_flags.comma_list(FLAGS.train_dirs),
            FLAGS.ensemble_dir, FLAGS.stacked_dir, FLAGS.weights_file])
        return
    if not FLAGS.model_dirs and not FLAGS.ensemble_dir:
        raise UserError("--model_dirs or --ensemble_dir: give at least one")
    report = build_report(shared_flags.comma_list(FLAGS.model_dirs), FLAGS.data_pattern,
                          FLAGS.ensemble_dir, FLAGS.stacked_dir,
                          shared_flags.comma_list(FLAGS.train_dirs), FLAGS.weights_file,
                          FLAGS.bootstrap_samples)
    write_outputs(report, format_report(report))


def print_choice(read: Callable[[str], WeightsFile] = read_stacking,
                 choose_by: Callable[[str, str, Optional[WeightsFile]], EnsembleChoice] = choose
                 ) -> None:
    """--choose: prints the dir of the better ensemble of --weights_file
    (read by `read`, chosen by `choose_by`)."""
    shared_flags.require(ensemble_dir=FLAGS.ensemble_dir, stacked_dir=FLAGS.stacked_dir,
                         weights_file=FLAGS.weights_file)
    print(choose_by(FLAGS.ensemble_dir, FLAGS.stacked_dir, read(FLAGS.weights_file)).dir)


def write_outputs(report: Union[Report, SegmentReport], text: str,
                  colours: Optional[Dict[str, str]] = None, ylabel: str = "",
                  ensemble_kinds: Sequence[str] = ("ensemble",)) -> None:
    """Prints the report's text; writes --output_json and --output_png
    (write_chart with colours, ylabel and ensemble_kinds)."""
    print(text)
    if FLAGS.output_json:
        with checkpoints.atomic_file(FLAGS.output_json, FLAGS.overwrite, "output_json") as tmp:
            stage_files.write_record(tmp, report)
        print(f"wrote {FLAGS.output_json}")
    if FLAGS.output_png:
        write_chart(report, FLAGS.output_png, FLAGS.overwrite, colours, ylabel, ensemble_kinds)
        print(f"wrote {FLAGS.output_png}")


if __name__ == "__main__":
    define_flags()
    run_main(main)
