"""run_scripts/segments_pipeline.sh itself, with a PYTHON that records its
calls instead of running them: every choice (fine-tuning, SWA windows,
stacking, uniform or stacked, refinement) reads only the fitting segment
files, the held-out ones reach only evaluations and the report, and the
submission refines only when the refinement choice says so."""
from __future__ import annotations

import os
import subprocess

import pytest

from conftest import REPO_ROOT
from support.reliability import assert_user_error

SCRIPT = REPO_ROOT / "run_scripts" / "segments_pipeline.sh"
MODELS = ("Soft-DBoF-4k", "GRUModel")


def run_pipeline(tmp_path, refine_choice: str, files: int = 4):
    """The script with a recording PYTHON (ensemble.segment_report --choose
    prints the uniform dir, --choose_refinement `refine_choice`); -> (the
    completed process, the calls [module, flags {name: value}], fit, held out)."""
    data = tmp_path / "segments"
    data.mkdir(exist_ok=True)
    names = [str(data / f"validate{index}.tfrecord") for index in range(files)]
    for name in names:
        open(name, "wb").close()
    log, work = tmp_path / "calls.txt", tmp_path / "work"
    log.write_text("")
    recorder = tmp_path / "python"
    recorder.write_text(f"""#!/usr/bin/env bash
printf "%s\\n" "$*" >> "{log}"
if [[ "$*" == *--choose_refinement* ]]; then echo {refine_choice}
elif [[ "$*" == *--choose* ]]; then echo {work}/segments/ensembled_models; fi
""")
    recorder.chmod(0o755)
    env = {**os.environ, "PYTHON": str(recorder), "WORK_DIR": str(work),
           "MODELS": " ".join(MODELS), "SEGMENT_PATTERN": str(data / "validate*.tfrecord"),
           "SEGMENT_TEST_PATTERN": str(data / "test*.tfrecord"), "REFINE_TOP_K": "20"}
    completed = subprocess.run(["bash", str(SCRIPT)], cwd="/", env=env, capture_output=True,
                               text=True, timeout=120)
    calls = []
    for line in log.read_text().splitlines():
        words = line.split()
        flags = dict(word[2:].split("=", 1) if "=" in word else (word[2:], "")
                     for word in words[2:])
        calls.append((words[1], flags))
    return completed, calls, names[:files // 2], names[files // 2:]


# The flag each choosing stage reads its data from.
CHOOSERS = {"segment_finetune.train": "train_data_pattern", "swa.average": "choose_window_on",
            "stacking.fit": "data_pattern"}


@pytest.mark.parametrize("refine_choice", ["20", "0"])
def test_choices_read_only_the_fitting_files(tmp_path, refine_choice):
    """Mutations tried: swa.average's --choose_window_on given the held-out
    files -> the chooser check failed; the submission always refining ->
    the "0" case failed."""
    completed, calls, fit, held_out = run_pipeline(tmp_path, refine_choice)
    assert completed.returncode == 0, completed.stderr[-2000:]
    fitting = ",".join(fit)
    seen = set()
    for module, flags in calls:
        if module in CHOOSERS:
            assert flags[CHOOSERS[module]] == fitting, (module, flags)
            seen.add(module)
        if "choose_refinement" in flags:
            assert flags["fit_data_pattern"] == fitting
            seen.add("refinement")
        if module == "training.eval" and flags["eval_data_pattern"] == fitting:
            assert flags["train_dir"].endswith("segments/ensembled_models")   # the chosen one
            assert flags["segment_refine_top_k"] == "20"
        elif module == "training.eval":
            assert flags["eval_data_pattern"] == ",".join(held_out)
    assert seen == {*CHOOSERS, "refinement"}
    tuned = [flags for module, flags in calls if module == "segment_finetune.train"]
    assert len(tuned) == len(MODELS)
    report = [flags for module, flags in calls if module == "ensemble.segment_report"
              and "data_pattern" in flags]
    assert report[0]["data_pattern"] == ",".join(held_out)
    assert report[0]["fit_data_pattern"] == fitting
    submission = [flags for module, flags in calls if module == "ensemble.inference"]
    assert len(submission) == 1 and "skip_unrated_positions" in submission[0]
    assert submission[0]["input_data_pattern"].endswith("test*.tfrecord")
    assert ("segment_refine_top_k" in submission[0]) == (refine_choice == "20")


def test_one_rated_file_is_refused_in_one_line(tmp_path):
    completed, calls, _, _ = run_pipeline(tmp_path, "0", files=1)
    assert completed.returncode == 2 and not calls
    assert_user_error(completed, "matches 1 file(s)")
