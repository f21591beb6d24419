"""Seeded fuzzing of every stage's inputs: random byte flips and truncations
of records, checkpoints, model_flags.json, weights files, eval results and
CSVs. Each run must end with exit 0, or exit 2 and exactly one uncut
`error:` line that names the mutated file: never a traceback, never a hang
(tests/support/cli_driver.py dumps the threads and fails a case that runs past its
timeout), never an error about another input.

Every stage runs the same CASES_PER_STAGE mutated cases on every machine
(seeded from FUZZ_SEED, no time budget; each is asserted and their number
too), after one unmutated case of the same fixture that must pass (exit 0):
a fixture the stage refuses would make every mutated case fail on the
fixture's own fault, before the mutated file is read. A failure names the
stage, the file and the mutation.

Mutations tried, each failing the test: the former report fixture (no
--data_pattern, no per-video records, the weights file's "gap" under
"fit"), or the weights file without "gap": the unmutated case fails and
every mutated one blames the weights file, not the file it mutated;
training.intervals.load catching only OSError/ValueError/KeyError (as
before this test reached the per-video records): 4 of the 10 report cases
end in a traceback; a time budget given to the driver again (5 s): the
training stage ran 1 case of 11 and the count check fails.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import pytest

from conftest import DBOF_FLAGS, TINY_CLASSES
from support.reliability import assert_not_cut, run_cases, sequence_example, write_records
from training import stage_registry

FUZZ_SEED = 2026
# Mutated cases per stage, the same on every machine (plus one unmutated).
CASES_PER_STAGE = 10
# A checkpoint or exported graph is named by its prefix in the errors.
CHECKPOINT_SUFFIXES = (".index", ".data-00000-of-00001", ".meta")


def mutate(path: Path, rng: np.random.Generator) -> str:
    """Flips 1-8 random bytes of the file, or truncates it; -> what was done."""
    data = bytearray(path.read_bytes())
    if not data or rng.random() < 0.35:
        size = int(rng.integers(0, max(1, len(data))))
        path.write_bytes(bytes(data[:size]))
        return f"{path.name} truncated to {size} of {len(data)} bytes"
    offsets = sorted(int(x) for x in rng.integers(0, len(data), int(rng.integers(1, 9))))
    for offset in offsets:
        data[offset] ^= int(rng.integers(1, 256))
    path.write_bytes(bytes(data))
    return f"{path.name} bytes flipped at {offsets}"


def copy_dir(source: str, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def files_of(directory: Path, *suffixes: str) -> List[Path]:
    """The files of a dir whose names end with one of suffixes (all: none given)."""
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and (not suffixes or p.name.endswith(suffixes)))


def submission_csv(path: Path, ids: List[str], pairs: int = 5) -> Path:
    """A valid CSV of `pairs` descending label-score pairs per video."""
    lines = ["VideoId,LabelConfidencePairs"]
    for number, video_id in enumerate(ids):
        labels = [(number + j) % TINY_CLASSES for j in range(pairs)]
        lines.append(video_id + "," + " ".join(f"{label} {0.9 - 0.1 * j:.6f}"
                                               for j, label in enumerate(labels)))
    path.write_text("\n".join(lines) + "\n")
    return path


def evaluated(directory: Path, data_pattern: str, seed: int) -> None:
    """Records an evaluation of the dir on data_pattern as training.eval does:
    eval_results.json and its per-video record (20 videos of random scores)."""
    from training import eval_results, intervals, metrics

    rng = np.random.default_rng(seed)
    labels = (rng.random((20, TINY_CLASSES)) < 0.2).astype(np.float32)
    accumulator = metrics.EvaluationMetrics(TINY_CLASSES)
    accumulator.accumulate(np.clip(0.4 * labels + rng.random(labels.shape) * 0.6, 0, 1), labels)
    videos = intervals.VideoTopK(np.asarray([b"v%02d" % i for i in range(20)]),
                                 *accumulator.per_video())
    directory.mkdir()
    measured = eval_results.measurement(str(directory / "model.ckpt-10"), data_pattern,
                                        seed=1, top_k=20)
    eval_results.record(str(directory), measured, intervals.EvalResult(
        gap=videos.gap(), num_examples=20, videos=videos), 1)


# ---------------------------------------------------------------------------
# The stages and their cases: (argv, the file mutated, what was done)


class Fuzz:
    """Prepares the cases of each stage under root from pristine inputs."""

    def __init__(self, root: Path, models: Dict[str, str], data: Path):
        self.root, self.models, self.data = root, models, data
        self.validate = sorted((data / "frame").glob("validate*.tfrecord"))[0]
        self.test_file = sorted((data / "frame").glob("test*.tfrecord"))[0]
        self.train_file = sorted((data / "frame").glob("train*.tfrecord"))[0]

    def case_dir(self, stage: str, index: int) -> Path:
        path = self.root / stage / f"case{index:03d}"
        path.mkdir(parents=True)
        return path

    def record_copy(self, source: Path, where: Path) -> Path:
        target = where / "records" / source.name
        target.parent.mkdir()
        shutil.copy(source, target)
        return target

    def eval_case(self, where: Path, rng) -> tuple:
        model = copy_dir(self.models["dbof_swa"], where / "model")
        records = self.record_copy(self.validate, where)
        victim = rng.choice(files_of(model, ".index", ".data-00000-of-00001", ".json")
                            + [records])
        argv = [f"--train_dir={model}", f"--eval_data_pattern={records}", "--run_once",
                "--batch_size=8", "--num_readers=1"]
        return argv, victim

    def swa_case(self, where: Path, rng) -> tuple:
        model = copy_dir(self.models["dbof_train"], where / "train")
        argv = [f"--train_dir={model}", f"--output_dir={where / 'out'}", "--last_n=2"]
        return argv, rng.choice(files_of(model, ".index", ".data-00000-of-00001",
                                         "model_flags.json", "checkpoint"))

    def convert_case(self, where: Path, rng) -> tuple:
        model = copy_dir(self.models["dbof_swa"], where / "swa")
        argv = [f"--input_dir={model}", f"--output_dir={where / 'out'}"]
        if rng.random() < 0.5:
            argv.append("--dtype=int8")
        return argv, rng.choice(files_of(model, ".index", ".data-00000-of-00001", ".json"))

    def build_case(self, where: Path, rng) -> tuple:
        first = copy_dir(self.models["dbof_bf16"], where / "dbof")
        second = self.models["gru_bf16"]
        weights = where / "weights.json"
        weights.write_text(json.dumps({"members": [str(first), second],
                                       "weights": [0.6, 0.4]}))
        argv = [f"--model_dirs={first},{second}", f"--output_dir={where / 'out'}",
                "--tile_num=2", f"--weights_file={weights}"]
        return argv, rng.choice(files_of(first, ".index", ".data-00000-of-00001", ".json")
                                + [weights, weights])

    def inference_case(self, where: Path, rng) -> tuple:
        model = copy_dir(self.models["ensemble"], where / "ensemble")
        records = self.record_copy(self.test_file, where)
        argv = [f"--train_dir={model}", f"--input_data_pattern={records}",
                f"--output_file={where / 'out.csv'}", "--batch_size=8"]
        return argv, rng.choice(files_of(model) + [records])

    def check_case(self, where: Path, rng) -> tuple:
        csv = submission_csv(where / "submission.csv", [f"v{i:03d}" for i in range(20)])
        return [f"--submission={csv}", f"--num_classes={TINY_CLASSES}", "--top_k=5"], csv

    def teacher_case(self, where: Path, rng) -> tuple:
        records = self.record_copy(self.train_file, where)
        csv = submission_csv(where / "teacher.csv", self.ids(self.train_file))
        argv = [f"--input_data_pattern={records}", f"--output_dir={where / 'out'}",
                f"--teacher_csv={csv}", f"--num_classes={TINY_CLASSES}"]
        return argv, rng.choice([csv, csv, records])

    def stacking_case(self, where: Path, rng) -> tuple:
        first = copy_dir(self.models["dbof_bf16"], where / "dbof")
        records = self.record_copy(self.validate, where)
        argv = [f"--model_dirs={first},{self.models['gru_bf16']}",
                f"--data_pattern={records}", f"--output_file={where / 'w.json'}",
                "--batch_size=8", "--max_iterations=20", "--num_readers=1"]
        return argv, rng.choice(files_of(first, ".index", ".data-00000-of-00001", ".json")
                                + [records])

    def report_case(self, where: Path, rng) -> tuple:
        """Two members and the uniform ensemble evaluated on the held-out file,
        and stacking's weights file: ensemble.report's inputs, minimal (adapt
        here when they change)."""
        from training.stage_files import WeightsFile
        from training.weights_file import write_weights_file

        heldout = str(self.validate)
        dirs = [where / name for name in ("m0", "m1", "ensemble")]
        for seed, directory in enumerate(dirs):
            evaluated(directory, heldout, seed)
        weights = where / "weights.json"
        write_weights_file(str(weights), WeightsFile(
            members=tuple(str(d) for d in dirs[:2]), weights=(0.3, 0.7), gap=0.7,
            gap_uniform=0.65, num_videos=32, data_pattern=str(self.train_file)))
        argv = [f"--data_pattern={heldout}", f"--model_dirs={dirs[0]},{dirs[1]}",
                f"--ensemble_dir={dirs[2]}", f"--weights_file={weights}",
                f"--output_json={where / 'r.json'}", "--bootstrap_samples=50"]
        records = [path for d in dirs for path in [d / "eval_results.json",
                                                   *sorted((d / "eval_videos").iterdir())]]
        return argv, rng.choice(records + [weights])

    def segment_report_case(self, where: Path, rng) -> tuple:
        """A member (video level, averaged and refined) and a segment weights
        file: ensemble.segment_report's inputs, minimal."""
        from support.segment_results import ratings, write_evaluation

        heldout = str(self.validate)
        video, member, refiner = (str(where / name) for name in ("video", "member", "refine"))
        Path(refiner).mkdir()
        write_evaluation(video, heldout, ratings(0.2, 1))
        write_evaluation(member, heldout, ratings(0.5, 2), refine_top_k=3, refine_dir=refiner)
        weights = where / "weights.json"
        weights.write_text(json.dumps({"members": [member], "weights": [1.0],
                                       "segment_map": 0.5, "segment_map_uniform": 0.5}))
        argv = [f"--data_pattern={heldout}", f"--video_dirs={video}", f"--model_dirs={member}",
                "--refine_top_k=3", f"--refine_model_dir={refiner}", f"--ensemble_dir={member}",
                f"--weights_file={weights}", f"--output_json={where / 'r.json'}",
                "--bootstrap_samples=50"]
        records = [path for d in (video, member) for path in
                   [Path(d) / "segment_eval_results.json",
                    *sorted((Path(d) / "segment_eval_ratings").iterdir())]]
        return argv, rng.choice(records + [weights])

    def train_case(self, where: Path, rng) -> tuple:
        model = copy_dir(self.models["dbof_train"], where / "train")
        records = self.record_copy(self.train_file, where)
        argv = [f"--train_dir={model}", f"--train_data_pattern={records}", *DBOF_FLAGS,
                f"--num_classes={TINY_CLASSES}", "--max_steps=12", "--swa_tail_steps=0",
                "--batch_size=4", "--num_readers=1", "--seed=5"]
        return argv, rng.choice(files_of(model, ".index", ".data-00000-of-00001",
                                         "model_flags.json", "checkpoint") + [records])

    def distill_case(self, where: Path, rng) -> tuple:
        records = where / "teacher" / "train0000.tfrecord"
        write_records(records, [sequence_example(b"t%03d" % i, [i % TINY_CLASSES], 6, seed=i,
                                                 teacher=np.full(TINY_CLASSES, 0.1))
                                for i in range(12)])
        argv = [f"--train_dir={where / 'student'}", f"--train_data_pattern={records}",
                *DBOF_FLAGS, f"--num_classes={TINY_CLASSES}", "--max_steps=2",
                "--batch_size=4", "--num_readers=1"]
        return argv, records

    def segment_finetune_case(self, where: Path, rng) -> tuple:
        """A bf16 source dir and 2019 segment-rated records of its classes."""
        from training import synthetic_segments

        source = copy_dir(self.models["dbof_bf16"], where / "source")
        records = Path(synthetic_segments.write_segment_dataset(
            str(where / "segments"), videos_per_shard=6, num_classes=TINY_CLASSES, seed=7,
            min_frames=25, max_frames=40)[0])
        argv = [f"--source_dir={source}", f"--train_dir={where / 'tuned'}",
                f"--train_data_pattern={records}", "--max_steps=2", "--batch_size=4",
                "--num_readers=1"]
        return argv, rng.choice(files_of(source, ".index", ".data-00000-of-00001", ".json")
                                + [records, records])

    def ids(self, path: Path) -> List[str]:
        from models.tf_compat import tf

        return [tf.train.SequenceExample.FromString(r).context.feature["id"]
                .bytes_list.value[0].decode() for r in tf.io.tf_record_iterator(str(path))]


# The cases of each fuzzed entry point (training.stage_registry), and why the
# others are not fuzzed: every entry point is in exactly one of the two.
STAGES: Dict[str, Callable] = {
    "training.eval": Fuzz.eval_case, "swa.average": Fuzz.swa_case,
    "bfloat16_patch.convert": Fuzz.convert_case, "ensemble.build": Fuzz.build_case,
    "ensemble.inference": Fuzz.inference_case, "ensemble.check_submission": Fuzz.check_case,
    "prediction2tfrecord.write": Fuzz.teacher_case, "stacking.fit": Fuzz.stacking_case,
    "ensemble.report": Fuzz.report_case, "training.train": Fuzz.train_case,
    "ensemble.segment_report": Fuzz.segment_report_case,
    "distillation.train": Fuzz.distill_case,
    "segment_finetune.train": Fuzz.segment_finetune_case}
NOT_FUZZED: Dict[str, str] = {
    "training.synthetic": "reads no file: its records come from flags",
    "training.synthetic_segments": "reads no file: its records come from flags",
    "training.frames_from_videos": "not fuzzed yet (reads video-level records)",
    "ensemble.merge": "not fuzzed yet (damaged parts: tests/stages/test_merge.py)",
    "ensemble.segment_submission": "not fuzzed yet (bad lines: "
                                   "tests/stages/test_segment_submission.py)",
}


def test_every_entry_point_is_fuzzed_or_says_why_not():
    """Mutations tried: dropping the row of ensemble.merge from NOT_FUZZED (as
    a new entry point of the registry would be missing: the sets differ);
    ensemble.report in both tables."""
    both = sorted(set(STAGES) & set(NOT_FUZZED))
    assert not both, f"fuzzed and in NOT_FUZZED: {both}"
    assert set(STAGES) | set(NOT_FUZZED) == set(stage_registry.entry_points()), (
        "fuzz STAGES plus NOT_FUZZED must be training.stage_registry's entry points")


def _prepare(fuzz: Fuzz, stage: str, seed: int) -> List[tuple]:
    """The stage's cases: [(argv, the mutated file or None, what was done)],
    the first unmutated (its fixture must pass the stage)."""
    rng = np.random.default_rng(seed)
    argv, _ = STAGES[stage](fuzz, fuzz.case_dir(stage, 0), rng)
    cases = [(argv, None, "unmutated")]
    for index in range(1, CASES_PER_STAGE + 1):
        argv, victim = STAGES[stage](fuzz, fuzz.case_dir(stage, index), rng)
        cases.append((argv, Path(victim), mutate(Path(victim), rng)))
    return cases


def not_cut_failure(line: str) -> str:
    try:
        assert_not_cut(line)
    except AssertionError as err:
        return str(err)
    return ""


def names_file(line: str, victim: Path) -> bool:
    """Whether an error line names the mutated file (a checkpoint's index,
    data or graph file may be named by the checkpoint's prefix)."""
    text = str(victim)
    for suffix in CHECKPOINT_SUFFIXES:
        if text.endswith(suffix):
            text = text[:-len(suffix)]
    return text in line


def _failure(stage: str, victim: Optional[Path], mutation: str, result) -> str:
    """Why a fuzzed run is not a success or a one-line error naming the
    mutated file ('' when it is); the unmutated run must succeed."""
    lines = result.stderr.strip().splitlines()
    if victim is None and result.returncode != 0:
        why = "the unmutated fixture fails"
    elif result.returncode not in (0, 2):
        why = f"exit {result.returncode}"
    elif "Traceback" in result.stderr + result.stdout:
        why = "a traceback"
    elif result.returncode == 2 and not (len(lines) == 1 and lines[0].startswith("error: ")):
        why = f"{len(lines)} lines"
    elif result.returncode == 2 and not_cut_failure(lines[0]):
        why = f"a cut message ({not_cut_failure(lines[0])})"
    elif result.returncode == 2 and not names_file(lines[0], victim):
        why = "the error does not name the mutated file"
    else:
        return ""
    return f"{stage} ({mutation}): {why}: {result.stderr.strip()[-600:]}"


@pytest.mark.slow
@pytest.mark.parametrize("half", [0, 1])
def test_fuzzed_inputs_end_in_one_line_or_success(half, tiny_models, tiny_data, tmp_path):
    fuzz = Fuzz(tmp_path, tiny_models, tiny_data)
    stages = sorted(STAGES)[half::2]
    prepared = {stage: _prepare(fuzz, stage, FUZZ_SEED + sorted(STAGES).index(stage))
                for stage in stages}
    specs = {stage: {"cases": [argv for argv, _, _ in cases]}
             for stage, cases in prepared.items()}
    counts, failures, errors = {}, [], {}
    for stage, (_, _, results) in run_cases(specs, tmp_path / "driver", timeout=90).items():
        counts[stage] = len(results)
        errors[stage] = sum(result.returncode == 2 for result in results)
        failures += [_failure(stage, victim, mutation, result)
                     for (_, victim, mutation), result in zip(prepared[stage], results)]
    print(f"fuzz cases run: {sum(counts.values())} {counts}; one-line errors: {errors}")
    failures = [failure for failure in failures if failure]
    assert not failures, "\n\n".join(failures)
    assert counts == {stage: CASES_PER_STAGE + 1 for stage in stages}, counts
