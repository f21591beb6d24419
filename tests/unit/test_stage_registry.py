"""training.stage_registry, the one list of stages, against the repository:
its run scripts, its stage file names, and the lists derived from it."""
from __future__ import annotations

import re

import pytest

from conftest import REPO_ROOT
from training import stage_registry
from training.stage_registry import Stage

SCRIPTS = REPO_ROOT / "run_scripts"


def test_a_stage_listed_twice_or_outside_its_package_is_refused():
    """Mutation tried: check_stages without its duplicate check (a second
    "swa.average" passes)."""
    swa = Stage("SWA", "swa", "averages", ("swa.average",), ("swa.sh",))
    with pytest.raises(ValueError, match="entry point 'swa.average' is listed twice"):
        stage_registry.check_stages([swa, Stage("other", "swa", "x", ("swa.average",))])
    with pytest.raises(ValueError, match="run script 'swa.sh' is listed twice"):
        stage_registry.check_stages([swa, Stage("x", "swa", "x", ("swa.x",), ("swa.sh",))])
    with pytest.raises(ValueError, match="in its package stacking"):
        stage_registry.check_stages([Stage("x", "stacking", "x", ("swa.average",))])
    with pytest.raises(ValueError, match="swa.sh both"):
        stage_registry.check_stages([swa], ["swa.sh"])


def test_every_run_script_is_a_stage_s_or_listed_as_another():
    """Each run_scripts/*.sh is a stage's or in OTHER_RUN_SCRIPTS, and each
    listed one exists. Mutation tried: removing swa.sh from the SWA stage
    (swa.sh named as unlisted)."""
    present = {path.name for path in SCRIPTS.glob("*.sh")}
    listed = set(stage_registry.run_scripts()) | set(stage_registry.OTHER_RUN_SCRIPTS)
    assert present - listed == set(), "run scripts in no stage of training/stage_registry.py"
    assert listed - present == set(), "listed in training/stage_registry.py, not in run_scripts/"


def test_each_stage_script_runs_one_of_its_entry_points():
    """A stage's run script names one of the stage's modules (the six model
    scripts through train_model.sh: their comment names training.train).
    Mutation tried: stacking.sh under the SWA stage."""
    wrong = [f"{script}: none of {stage.entry_points}" for stage in stage_registry.STAGES
             for script in stage.run_scripts
             if not any(re.search(rf"\b{re.escape(entry)}\b", (SCRIPTS / script).read_text())
                        for entry in stage.entry_points)]
    assert not wrong, "\n".join(wrong)


def production_source() -> str:
    """Every production module but the registry itself."""
    registry = REPO_ROOT / "training" / "stage_registry.py"
    return "\n".join(path.read_text() for package in ("models",) + stage_registry.packages()
                     for path in sorted((REPO_ROOT / package).rglob("*.py")) if path != registry)


def test_each_stage_file_name_is_a_name_the_code_uses():
    """A file the registry names itself (not by a flag) starts a string in
    the production code: `"swa.json`, `"model.ckpt`, `"eval_videos`. (The
    flag-named files: tests/reliability/test_path_flags.py.) Mutation tried:
    "bf16.json" for bfloat16.json (named as unknown)."""
    source = production_source()
    unknown = sorted({item for stage in stage_registry.STAGES
                      for item in stage.reads + stage.writes
                      if " " not in item
                      and '"' + re.split(r"[<{/]", item)[0].rstrip("-.") not in source})
    assert not unknown, f"stage files no production module names: {unknown}"



def test_ruff_first_party_is_the_layers_bench_and_the_stage_packages():
    """ruff.toml's known-first-party (import order) names every package of
    ours. Mutation tried: removing "stacking" from ruff.toml."""
    # (read by hand: tomllib is Python 3.11+, the project supports 3.10)
    text = (REPO_ROOT / "ruff.toml").read_text()
    match = re.search(r"known-first-party\s*=\s*\[([^\]]*)\]", text)
    assert match, "ruff.toml: no known-first-party list"
    first_party = re.findall(r'"(\w+)"', match.group(1))
    assert sorted(first_party) == sorted(("models", "training", "bench")
                                         + stage_registry.stage_packages()), (
        "ruff.toml [lint.isort] known-first-party: models, training, bench and the stage "
        "packages of training/stage_registry.py")


TABLE_START = "<!-- the stage table: python -m training.stage_registry -->"
TABLE_END = "<!-- end of the stage table -->"


def test_the_stage_table_of_the_architecture_page_is_the_registry_s():
    """docs/architecture.md "Stages" holds what `python -m
    training.stage_registry` prints. Mutation tried: the SWA stage writing no
    swa.json in the registry (the table differs; paste the printed one)."""
    text = (REPO_ROOT / "docs" / "architecture.md").read_text()
    assert TABLE_START in text and TABLE_END in text, "the stage table's markers are missing"
    shown = text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].strip("\n").split("\n")
    assert shown == stage_registry.stage_table(), (
        "docs/architecture.md's stage table is stale: paste the output of "
        "`python -m training.stage_registry` between its markers")


def readme_entry_points() -> dict:
    """{package: the `python -m` modules of its row} of README's Layout table."""
    layout = (REPO_ROOT / "README.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in layout.splitlines():
        match = re.match(r"\| `(\w+)/` \| ([^|]*)\|", line)
        if match:
            rows[match.group(1)] = set(re.findall(r"python -m ([\w.]+)`", match.group(2)))
    return rows


def test_the_readme_layout_lists_each_package_s_entry_points():
    """Each registry package has its row in README's Layout table, with
    exactly its entry points. Mutation tried: dropping `python -m
    ensemble.merge` from the README row."""
    rows = readme_entry_points()
    wrong = [f"{package}: README {sorted(rows.get(package, ()))}, registry {sorted(entries)}"
             for package in stage_registry.packages()
             for entries in [{e for s in stage_registry.STAGES if s.package == package
                              for e in s.entry_points}]
             if rows.get(package) != entries]
    assert not wrong, "README.md Layout table:\n" + "\n".join(wrong)


def test_every_named_stage_record_has_a_writer_and_a_reader():
    """Each stage file with a fixed name (training.stage_files' FILE_NAME)
    is written by a stage and read by another. Mutation tried: dropping
    "ensemble.json" from ensemble build's writes."""
    from training import stage_files
    names = {cls.FILE_NAME for cls in vars(stage_files).values()
             if isinstance(cls, type) and issubclass(cls, stage_files.Record) and cls.FILE_NAME}
    assert names >= {"swa.json", "bfloat16.json", "ensemble.json", "finetune.json"}
    written = {name for stage in stage_registry.STAGES for name in stage.writes}
    read = {name for stage in stage_registry.STAGES for name in stage.reads}
    assert sorted(names - written) == [] and sorted(names - read) == []
