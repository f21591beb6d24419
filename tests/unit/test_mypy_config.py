"""mypy.ini, the type check of the test command, covers every package.

A package is a folder at the top of the repository with an __init__.py;
tests/ is left to pytest. A new package missing from `files` would escape the
check without a word, hence this test.
"""
from __future__ import annotations

import configparser
from typing import Set

from conftest import REPO_ROOT


def mypy_settings() -> configparser.SectionProxy:
    config = configparser.ConfigParser()
    assert config.read(REPO_ROOT / "mypy.ini"), "mypy.ini is missing"
    return config["mypy"]


def test_mypy_files_list_every_top_level_package():
    """Mutation tried: dropping bench from `files` (this test names it)."""
    packages: Set[str] = {path.parent.name for path in REPO_ROOT.glob("*/__init__.py")}
    packages.discard("tests")
    checked = {name.strip() for name in mypy_settings()["files"].split(",") if name.strip()}
    missing = sorted(packages - checked)
    assert not missing, f"mypy.ini: add {', '.join(missing)} to `files` (the type check)"
    assert packages, "no package found at the top of the repository"


def test_mypy_checks_the_bodies_of_unannotated_functions():
    """Mutation tried: check_untyped_defs = False (this test fails)."""
    assert mypy_settings().getboolean("check_untyped_defs", fallback=False), (
        "mypy.ini: check_untyped_defs = True (the bodies of unannotated functions)")
