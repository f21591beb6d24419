"""The 2019 report: Segment MAP of every state of the segment path, with
paired bootstrap intervals over the videos of held-out rated segment files
(docs/segments.md "The report"):

python -m ensemble.segment_report --data_pattern=HELDOUT --video_dirs=a,... \
    --finetuned_dirs=fa,... --model_dirs=ma,... [--refine_top_k=K --refine_model_dir=V] \
    [--video_ensemble_dir=VE] [--ensemble_dir=U] [--stacked_dir=S --weights_file=W]
python -m ensemble.segment_report --choose --ensemble_dir=U --stacked_dir=S --weights_file=W

Rows: each dir's ``training.eval --segment_labels`` evaluation on exactly
--data_pattern and its per-rating record (nothing is predicted here): each
member at video level, fine-tuned (its last checkpoint), fine-tuned and
averaged, and with refinement; the video-level ensemble and the fine-tuned
ones, with refinement. Every gain between them gets a paired 95% interval.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional, Sequence, Tuple

from absl import flags

from ensemble import report as video_report
from training import checkpoints, eval_results, intervals, paths, stage_files
from training import flags as shared_flags
from training.cli import UserError, run_main
from training.stage_files import (
    Evaluation,
    Gain,
    RefinementSettings,
    SegmentReport,
    SegmentReportChoice,
    SegmentReportRow,
    WeightsFile,
)

FLAGS = flags.FLAGS
METRIC = "Segment MAP"


def define_flags() -> None:
    define = shared_flags.define
    define(flags.DEFINE_string, "data_pattern", "", "The held-out segment files every row "
           "must have been evaluated on (nothing was chosen on them).", path=paths.IN_PATTERN)
    define(flags.DEFINE_string, "video_dirs", "", "The members as trained at video level, "
           "comma-separated.", path=paths.IN_DIRS)
    define(flags.DEFINE_string, "finetuned_dirs", "", "The members' fine-tuning train dirs "
           "(their latest checkpoint), in --video_dirs order.", path=paths.IN_DIRS)
    shared_flags.define_shared("model_dirs", "", "(fine-tuned and averaged, in --video_dirs "
                               "order)")
    define(flags.DEFINE_integer, "refine_top_k", 0, "Also the rows with refinement: the "
           "evaluations with --segment_refine_top_k=K (0: none).")
    define(flags.DEFINE_string, "refine_model_dir", "", "The video-level model of those "
           "evaluations (--segment_refine_model_dir).", path=paths.IN_DIR)
    define(flags.DEFINE_string, "video_ensemble_dir", "", "The video-level ensemble.",
           path=paths.IN_DIR)
    define(flags.DEFINE_string, "ensemble_dir", "", "The uniform ensemble of the fine-tuned "
           "members.", path=paths.IN_DIR)
    define(flags.DEFINE_string, "stacked_dir", "", "Their ensemble with the stacked weights.",
           path=paths.IN_DIR)
    define(flags.DEFINE_string, "fit_data_pattern", "", "The fitting segment files: the "
           "submission refines (--refine_top_k) only when refinement wins on them for the "
           "chosen ensemble (its refined evaluation on them).", path=paths.IN_PATTERN)
    define(flags.DEFINE_bool, "choose_refinement", False, "Print only the refinement the "
           "submission uses: --refine_top_k when it wins on --fit_data_pattern for "
           "--ensemble_dir (the chosen ensemble), else 0.")
    video_report.define_output_flags("segment files")


# ---------------------------------------------------------------------------
# Reading the evaluations (segment_eval_results.json and its per-rating records)


def _refine_model_is(entry: Evaluation, directory: str, refine_model_dir: str) -> bool:
    """Whether the entry's refine model ("self", or the refine model's
    checkpoint) is refine_model_dir's."""
    recorded = str(entry.segment_refine_model)
    wanted = os.path.realpath(refine_model_dir)
    if recorded == "self":
        return os.path.realpath(directory) == wanted
    return os.path.dirname(os.path.realpath(recorded)) == wanted


def segment_evaluation_on(directory: str, data_pattern: str, refine_top_k: int = 0,
                          refine_model_dir: str = "", train_dir: bool = False
                          ) -> Evaluation:
    """The dir's segment evaluation on exactly `data_pattern` with that
    refinement (a train dir's: of its latest checkpoint); a UserError naming
    the dir when there is none or several."""
    wanted = eval_results.absolute_pattern(data_pattern)
    evaluations = eval_results.read_evaluations(directory, eval_results.SEGMENT)
    entries = [entry for entry in evaluations.values()
               if entry.eval_data_pattern == wanted
               and (entry.segment_refine_top_k or 0) == refine_top_k
               and (not refine_top_k or _refine_model_is(entry, directory, refine_model_dir))]
    what = "--segment_labels" + (f" --segment_refine_top_k={refine_top_k} "
                                  f"--segment_refine_model_dir={refine_model_dir}"
                                  if refine_top_k else "")
    if train_dir and entries:
        found = checkpoints.list_checkpoints(directory)
        step = found[-1][0] if found else None
        entries = [entry for entry in entries if entry.global_step == step]
        if not entries:
            raise UserError(f"{directory}: its latest checkpoint (step {step}) has no "
                            f"evaluation {what} on {data_pattern}; evaluate it (training.eval)")
    if len(entries) != 1:
        count = "no" if not entries else f"{len(entries)} differing"
        raise UserError(f"{directory}: {count} evaluations {what} on {data_pattern}; "
                        f"evaluate it (training.eval {what} --eval_data_pattern=...)")
    return entries[0]


ratings_of = eval_results.ratings_of


def unrefined(ratings: intervals.SegmentRatings) -> intervals.SegmentRatings:
    """The same evaluation without refinement: refinement only takes pairs
    out of the ranking (their scores are the model's), so every pair retrieved
    is exactly the unrefined evaluation."""
    return intervals.SegmentRatings(ratings.ids, ratings.start_times, ratings.classes,
                                    ratings.ratings, ratings.scores,
                                    ratings.retrieved | True)


# ---------------------------------------------------------------------------
# Rows and gains


_name = video_report.dir_name
_averaging = video_report.averaging     # (swa.json, as the video-level report reads it)
Measured = Tuple[SegmentReportRow, intervals.SegmentRatings]


def _row(name: str, directory: str, kind: str, member: Optional[str] = None,
         chosen: Optional[bool] = None, video_row: Optional[str] = None) -> SegmentReportRow:
    """A row before its evaluation is read and measured (_Rows fills both)."""
    return SegmentReportRow(name=name, dir=directory, kind=kind, evaluation=video_report.UNREAD,
                            value=video_report.UNMEASURED, member=member, chosen=chosen,
                            video_row=video_row)


class _Rows:
    """The report's rows, each with its per-rating record (for the bootstrap)."""

    def __init__(self, data_pattern: str, refine_top_k: int, refine_model_dir: str,
                 submission_refines: bool = True):
        self.data_pattern, self.top_k, self.refine_dir = (data_pattern, refine_top_k,
                                                          refine_model_dir)
        self.submission_refines = submission_refines
        self.rows: List[Measured] = []

    def add(self, row: SegmentReportRow, train_dir: bool = False) -> None:
        """The row with its dir's unrefined evaluation."""
        entry = segment_evaluation_on(row.dir, self.data_pattern, train_dir=train_dir)
        self.rows.append((dataclasses.replace(row, evaluation=entry),
                          ratings_of(row.dir, entry)))

    def add_with_refinement(self, row: SegmentReportRow) -> None:
        """The state's row and, with refinement, its refined row too: both
        from the refined evaluation's record. row.chosen marks the state that
        writes the submission (its refined row when the submission refines)."""
        if not self.top_k:
            self.add(row)
            return
        entry = segment_evaluation_on(row.dir, self.data_pattern, self.top_k,
                                      self.refine_dir)
        refined = ratings_of(row.dir, entry)
        chosen, refines = bool(row.chosen), self.submission_refines
        plain = dataclasses.replace(row, evaluation=entry, chosen=chosen and not refines)
        self.rows.append((plain, unrefined(refined)))
        # The refined row's one gain is over its unrefined row (not fine-tuning's or averaging's).
        self.rows.append((dataclasses.replace(
            plain, name=f"{row.name} + refined", kind=f"{row.kind}, refined",
            unrefined_row=row.name, chosen=chosen and refines, video_row=None,
            finetuned_row=None), refined))


def _member_rows(rows: _Rows, video_dirs: Sequence[str], finetuned_dirs: Sequence[str],
                 model_dirs: Sequence[str], weights: Dict[str, float]) -> None:
    for flag, dirs in (("--finetuned_dirs", finetuned_dirs), ("--model_dirs", model_dirs)):
        if dirs and video_dirs and len(dirs) != len(video_dirs):
            raise UserError(f"{flag}: {len(dirs)} dirs for {len(video_dirs)} --video_dirs")
    count = max(len(video_dirs), len(finetuned_dirs), len(model_dirs))
    for index in range(count):
        member = _name((model_dirs or finetuned_dirs or video_dirs)[index])
        video = finetuned = None
        if video_dirs:
            video = f"{_name(video_dirs[index])} video level"
            rows.add(_row(video, video_dirs[index], "video level", member=member))
        if finetuned_dirs:
            finetuned = f"{_name(finetuned_dirs[index])} fine-tuned"
            rows.add(_row(finetuned, finetuned_dirs[index], "fine-tuned", member=member,
                          video_row=video), train_dir=True)
        if model_dirs:
            window, window_choice = _averaging(model_dirs[index])
            rows.add_with_refinement(SegmentReportRow(
                name=f"{member} fine-tuned, window {window}" if window else member,
                dir=model_dirs[index], kind="averaged", evaluation=video_report.UNREAD,
                value=video_report.UNMEASURED, member=member, chosen=False, window=window,
                window_choice=window_choice, finetuned_row=finetuned,
                stacked_weight=weights.get(os.path.realpath(model_dirs[index]))))


def _ensemble_rows(rows: _Rows, video_ensemble_dir: str, ensemble_dir: str, stacked_dir: str,
                   chosen_dir: str) -> None:
    for name, directory, kind in (("video-level ensemble", video_ensemble_dir,
                                   "video ensemble"),
                                  ("fine-tuned ensemble", ensemble_dir, "ensemble"),
                                  ("stacked fine-tuned ensemble", stacked_dir, "ensemble")):
        if directory:
            chosen = kind == "ensemble" and (os.path.realpath(directory)
                                             == os.path.realpath(chosen_dir))
            rows.add_with_refinement(_row(name, directory, kind, chosen=chosen))


_ENSEMBLE_KINDS = ("ensemble", "ensemble, refined", "video ensemble", "video ensemble, refined")


def _earlier(row: SegmentReportRow, what: str) -> Optional[str]:
    """The row that `what` ("fine-tuning", "averaging", "refinement") gains over."""
    return {"fine-tuning": row.video_row, "averaging": row.finetuned_row,
            "refinement": row.unrefined_row}[what]


def _gains(rows: Sequence[SegmentReportRow], boot: intervals.PairedBootstrap) -> List[Gain]:
    """Every gain the report states, each with its paired interval."""
    gain = video_report.gain_entry
    gains = [gain(boot, what, row.name, over)
             for what in ("fine-tuning", "averaging", "refinement")
             for row in rows if (over := _earlier(row, what))]
    singles = [row for row in rows if row.kind not in _ENSEMBLE_KINDS]
    best = video_report.best_single(singles)
    by_kind = {row.kind: row for row in rows if row.kind.startswith("video ensemble")}
    for row in rows:
        if row.kind not in _ENSEMBLE_KINDS:
            continue
        if best is not None:
            gains += video_report.versus_singles(boot, row.name, singles, best)
        video = by_kind.get("video " + row.kind)
        if video is not None:
            gains.append(gain(boot, "fine-tuned vs video-level ensemble", row.name,
                              video.name))
    names = {row.name for row in rows}
    for suffix in ("", " + refined"):
        stacked, uniform = "stacked fine-tuned ensemble" + suffix, "fine-tuned ensemble" + suffix
        if stacked in names and uniform in names:
            gains.append(gain(boot, "stacked vs uniform", stacked, uniform))
    return gains


def read_stacking(weights_file: str) -> WeightsFile:
    """The segment weights file (stacking.fit --segment_labels) with both
    ensembles' Segment MAP on the fitting files."""
    return video_report.read_fitted(weights_file, "segment_map",
                                    "stacking.fit --segment_labels")


def choose(ensemble_dir: str, stacked_dir: str, stacking: Optional[WeightsFile]
           ) -> SegmentReportChoice:
    """The better ensemble on the fitting segment files (ties, no weights
    file or no stacked dir: the uniform one)."""
    if stacking is None or not stacked_dir:
        return SegmentReportChoice(chosen="uniform", dir=ensemble_dir)
    chosen, directory, stacked, uniform = video_report.choose_by_metric(
        ensemble_dir, stacked_dir, stacking, "segment_map")
    return SegmentReportChoice(chosen=chosen, dir=directory, fit_segment_map_stacked=stacked,
                               fit_segment_map_uniform=uniform,
                               fit_data_pattern=stacking.data_pattern)


@dataclasses.dataclass(frozen=True)
class RefinementChoice:
    """Whether the submission refines (refine_top_k; 0: no), from the chosen
    ensemble's Segment MAP refined and unrefined on the fitting files."""
    refine_top_k: int
    fit_segment_map_refined: float
    fit_segment_map_unrefined: float
    fit_data_pattern: str


def choose_refinement(ensemble_dir: str, fit_data_pattern: str, refine_top_k: int,
                      refine_model_dir: str) -> RefinementChoice:
    """Whether the submission refines: refine_top_k when the chosen
    ensemble's refined evaluation on the fitting files beats the unrefined
    one (the same record gives both), else 0 (ties: 0)."""
    entry = segment_evaluation_on(ensemble_dir, fit_data_pattern, refine_top_k,
                                  refine_model_dir)
    refined = ratings_of(ensemble_dir, entry)
    with_k, without = refined.point(), unrefined(refined).point()
    return RefinementChoice(refine_top_k=refine_top_k if with_k > without else 0,
                            fit_segment_map_refined=with_k, fit_segment_map_unrefined=without,
                            fit_data_pattern=eval_results.absolute_pattern(fit_data_pattern))


def _refinement_provenance(fit_data_pattern: str) -> Tuple[stage_files.Provenance, ...]:
    """The refinement choice this report makes on --fit_data_pattern."""
    if not fit_data_pattern:
        return ()
    return (stage_files.provenance_for("ensemble.segment_report", "refinement",
                                       fit_data_pattern),)


def build_report(data_pattern: str, video_dirs: Sequence[str] = (),
                 finetuned_dirs: Sequence[str] = (), model_dirs: Sequence[str] = (),
                 refine_top_k: int = 0, refine_model_dir: str = "",
                 video_ensemble_dir: str = "", ensemble_dir: str = "", stacked_dir: str = "",
                 weights_file: str = "", samples: int = intervals.DEFAULT_SAMPLES,
                 fit_data_pattern: str = "") -> SegmentReport:
    """The report (module docstring); rows of other ratings are refused.
    fit_data_pattern: the submission's refinement is chosen on it
    (choose_refinement), else it refines whenever refine_top_k > 0."""
    shared_flags.require(data_pattern=data_pattern)
    video_report.check_held_out(
        data_pattern, [*video_dirs, *finetuned_dirs, *model_dirs, refine_model_dir,
                       video_ensemble_dir, ensemble_dir, stacked_dir, weights_file],
        _refinement_provenance(fit_data_pattern) if refine_top_k else ())
    if refine_top_k < 0:
        raise UserError(f"--refine_top_k: must be 0 or more, got {refine_top_k}")
    if refine_top_k and not refine_model_dir:
        raise UserError("--refine_model_dir: required with --refine_top_k")
    weights, choice = video_report.weights_and_choice(weights_file, ensemble_dir, stacked_dir,
                                                      read_stacking, choose)
    if refine_top_k and fit_data_pattern:
        refinement = choose_refinement(choice.dir, fit_data_pattern, refine_top_k,
                                       refine_model_dir)
        choice = dataclasses.replace(
            choice, refine_top_k=refinement.refine_top_k,
            fit_segment_map_refined=refinement.fit_segment_map_refined,
            fit_segment_map_unrefined=refinement.fit_segment_map_unrefined,
            fit_data_pattern=refinement.fit_data_pattern)
    refines = choice.refine_top_k if choice.refine_top_k is not None else refine_top_k
    rows = _Rows(data_pattern, refine_top_k, refine_model_dir, submission_refines=refines > 0)
    _member_rows(rows, video_dirs, finetuned_dirs, model_dirs, weights)
    _ensemble_rows(rows, video_ensemble_dir, ensemble_dir, stacked_dir, choice.dir)
    if not rows.rows:
        raise UserError("--video_dirs, --model_dirs or --ensemble_dir: give at least one")
    boot = intervals.PairedBootstrap({row.name: record for row, record in rows.rows}, samples)
    measured = tuple(dataclasses.replace(row, value=video_report.estimate_of(
        boot.value(row.name))) for row, _ in rows.rows)
    return SegmentReport(
        metric=METRIC, data_pattern=eval_results.absolute_pattern(data_pattern),
        num_videos=boot.num_videos, num_ratings=measured[0].evaluation.num_segments or 0,
        refinement=RefinementSettings(top_k=refine_top_k, model_dir=refine_model_dir or None),
        bootstrap=video_report.bootstrap_settings(boot), rows=measured,
        gains=tuple(_gains(measured, boot)), choice=choice)


# ---------------------------------------------------------------------------
# Text and chart


def format_report(report: SegmentReport) -> str:
    """The report as a fixed-width table and its conclusions, intervals included."""
    rows = report.rows
    lines = [f"held-out: {report.num_ratings} rated segments of {report.num_videos} "
             f"videos of {report.data_pattern}; intervals: paired bootstrap over videos, "
             f"{report.bootstrap.samples} draws"]
    lines += video_report.table_lines(rows, max(len(row.kind) for row in rows),
                                      (METRIC + " [95% interval]", 27))
    lines.append("* the ensemble that writes the 2019 submission (chosen on the fitting files)")
    return "\n".join(lines + _conclusions(report))


def _conclusions(report: SegmentReport) -> List[str]:
    lines = []
    verdict, text = video_report.verdict, video_report.interval_text
    for what in ("fine-tuning", "averaging", "refinement", "ensemble vs best single state",
                 "fine-tuned vs video-level ensemble", "stacked vs uniform"):
        gains = [gain for gain in report.gains if gain.what == what]
        for gain in gains:
            lines.append(f"{what}: {gain.system} vs {gain.over} {text(gain)} "
                         f"({verdict(gain)})")
        if len(gains) > 1:
            wins = sum(gain.low > 0 for gain in gains)
            losses = sum(gain.high < 0 for gain in gains)
            lines.append(f"{what}: {wins} of {len(gains)} resolved gains, {losses} resolved "
                         f"losses")
    lines += video_report.choice_lines(report.choice, METRIC, "the submission", "files")
    choice = report.choice
    if choice.fit_segment_map_refined is not None:
        refines = (f"refines (top {choice.refine_top_k} video-level classes)"
                   if choice.refine_top_k else "does not refine")
        lines.append(f"the submission {refines}: Segment MAP of the chosen ensemble on the "
                     f"fitting files refined {choice.fit_segment_map_refined:.4f}, "
                     f"unrefined {choice.fit_segment_map_unrefined:.4f}")
    return lines


_COLOURS = {"video level": "#b0b0b0", "fine-tuned": "#8c8cd0", "averaged": "#4c72b0",
            "averaged, refined": "#55a868", "video ensemble": "#c0a080",
            "video ensemble, refined": "#a08060", "ensemble": "#dd8452",
            "ensemble, refined": "#c44e52"}


def main(argv) -> None:
    del argv
    if FLAGS.choose:
        video_report.print_choice(read_stacking, choose)
        return
    comma = shared_flags.comma_list
    if FLAGS.check_choices:
        video_report.check_held_out(FLAGS.data_pattern, [
            *comma(FLAGS.video_dirs), *comma(FLAGS.finetuned_dirs), *comma(FLAGS.model_dirs),
            FLAGS.refine_model_dir, FLAGS.video_ensemble_dir, FLAGS.ensemble_dir,
            FLAGS.stacked_dir, FLAGS.weights_file], _refinement_provenance(FLAGS.fit_data_pattern))
        return
    if FLAGS.choose_refinement:
        if FLAGS.refine_top_k <= 0:
            raise UserError(f"--refine_top_k: the refinement to choose for, must be positive, "
                            f"got {FLAGS.refine_top_k}")
        shared_flags.require(ensemble_dir=FLAGS.ensemble_dir,
                             fit_data_pattern=FLAGS.fit_data_pattern,
                             refine_model_dir=FLAGS.refine_model_dir)
        print(choose_refinement(FLAGS.ensemble_dir, FLAGS.fit_data_pattern,
                                FLAGS.refine_top_k, FLAGS.refine_model_dir).refine_top_k)
        return
    report = build_report(FLAGS.data_pattern, comma(FLAGS.video_dirs),
                          comma(FLAGS.finetuned_dirs), comma(FLAGS.model_dirs),
                          FLAGS.refine_top_k, FLAGS.refine_model_dir,
                          FLAGS.video_ensemble_dir, FLAGS.ensemble_dir, FLAGS.stacked_dir,
                          FLAGS.weights_file, FLAGS.bootstrap_samples,
                          FLAGS.fit_data_pattern)
    video_report.write_outputs(report, format_report(report), colours=_COLOURS,
                               ylabel=f"{METRIC}, {report.num_videos} held-out videos",
                               ensemble_kinds=_ENSEMBLE_KINDS)


if __name__ == "__main__":
    define_flags()
    run_main(main)
