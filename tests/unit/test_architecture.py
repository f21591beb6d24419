"""The layering of docs/architecture.md as a checked contract.

Every module's imports (at module level and inside functions) are read from
its syntax tree; an import of a project package is an arrow, and only the
arrows below are allowed:

    models <- training <- stages (the stage packages of
                                  training.stage_registry: swa, ensemble, ...)
    stages talk to each other through files on disk, never by importing.

bench/ and tests/ may import any production package. Also checked: no
project import sits inside a function, the module import graph has no cycle,
and production functions and docstrings stay short.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

from conftest import REPO_ROOT
from training import TIERS, stage_registry

STAGES = stage_registry.stage_packages()
LAYERS = ("models", "training")
PRODUCTION = LAYERS + STAGES
PROJECT = PRODUCTION + ("bench", "tests")
ALLOWED: Dict[str, Set[str]] = {
    "models": {"models"},
    "training": {"models", "training"},
    **{stage: {"models", "training", stage} for stage in STAGES},
    "bench": set(PRODUCTION) | {"bench"},
    "tests": set(PROJECT),
}
MAX_FUNCTION_LINES = 60
MAX_DOCSTRING_LINES = 25


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_files(packages=PROJECT) -> List[Path]:
    return sorted(path for package in packages for path in (REPO_ROOT / package).rglob("*.py"))


def imported_modules(node: ast.AST) -> List[str]:
    """Absolute module names an import statement brings in (a name imported
    from a package counts as its submodule when that file exists)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and not node.level:
        found = [node.module]
        for alias in node.names:
            candidate = f"{node.module}.{alias.name}"
            if (REPO_ROOT / Path(*candidate.split("."))).with_suffix(".py").exists():
                found.append(candidate)
        return found
    return []


def imports_of(path: Path) -> List[Tuple[str, int, bool]]:
    """[(imported module, line, inside a function)] of one file."""
    tree = ast.parse(path.read_text(), str(path))
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                       ast.Lambda))
            for name in imported_modules(child):
                found.append((name, child.lineno, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


def project_package(module: str) -> str:
    top = module.split(".")[0]
    return top if top in PROJECT else ""


def test_every_top_level_package_is_a_layer_or_a_registered_stage():
    """A folder with an __init__.py at the top of the repository is checked by
    the layering only when it is a layer, bench, tests or a package of
    training.stage_registry. Mutation tried: removing segment_finetune from the
    registry (this test names it; the layering no longer saw its imports)."""
    packages = {path.parent.name for path in REPO_ROOT.glob("*/__init__.py")}
    unknown = sorted(packages - set(PROJECT))
    assert not unknown, (f"top-level packages in no layer and no stage of "
                         f"training/stage_registry.py: {', '.join(unknown)}")
    assert set(STAGES) <= packages, "a stage package of the registry is not a package"


def test_every_import_follows_an_allowed_arrow():
    wrong = []
    for path in project_files():
        source = module_name(path).split(".")[0]
        for name, line, _ in imports_of(path):
            target = project_package(name)
            if target and target not in ALLOWED[source]:
                wrong.append(f"{path.relative_to(REPO_ROOT)}:{line}: {source} imports {name}")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_no_project_import_inside_a_function():
    inside = [f"{path.relative_to(REPO_ROOT)}:{line}: {name}"
              for path in project_files(PRODUCTION)
              for name, line, in_function in imports_of(path)
              if in_function and project_package(name)]
    assert not inside, "project imports inside functions:\n" + "\n".join(inside)


def test_module_imports_have_no_cycle():
    graph: Dict[str, Set[str]] = {}
    for path in project_files(PRODUCTION):
        graph[module_name(path)] = {name for name, _, _ in imports_of(path)
                                    if project_package(name) and name != module_name(path)}
    state: Dict[str, int] = {}

    def walk(module: str, trail: List[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                pytest.fail("import cycle: " + " -> ".join(trail + [module, target]))
            if target in graph and not state.get(target):
                walk(target, trail + [module])
        state[module] = 2

    for module in sorted(graph):
        if not state.get(module):
            walk(module, [])


def definitions(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
            yield node


def test_production_functions_and_docstrings_are_short():
    long = []
    for path in project_files(PRODUCTION):
        where = path.relative_to(REPO_ROOT)
        for node in definitions(path):
            name = getattr(node, "name", "<module>")
            if not isinstance(node, (ast.ClassDef, ast.Module)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{where}:{node.lineno}: {name} has {lines} lines")
            doc = ast.get_docstring(node, clean=False)
            if doc and doc.count("\n") + 1 > MAX_DOCSTRING_LINES:
                long.append(f"{where}: the docstring of {name} has {doc.count(chr(10)) + 1} lines")
    assert not long, "\n".join(long)


def test_the_checker_sees_a_wrong_arrow(tmp_path):
    """The parser finds imports at module level and inside functions."""
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nfrom training import checkpoints\n"
                      "def f():\n    from ensemble import build\n    return build\n")
    found = imports_of(sample)
    assert ("training.checkpoints", 2, False) in found
    assert ("ensemble.build", 4, True) in found
    assert project_package("ensemble.build") == "ensemble" and project_package("os") == ""


def training_tier_of() -> Dict[str, int]:
    """training.<module> -> its tier's rank (training/__init__.py TIERS)."""
    return {module: rank for rank, modules in enumerate(TIERS.values()) for module in modules}


def test_training_modules_import_only_their_tier_or_above():
    """Every module of training/ sits in exactly one tier of training.TIERS and
    imports no module of a lower tier. Mutation: moving `checkpoints` to the
    foundations tier makes its import of model_flags (records) a wrong arrow."""
    rank = training_tier_of()
    listed = [module for modules in TIERS.values() for module in modules]
    assert len(listed) == len(set(listed)), "a module in two tiers"
    present = {path.stem if path.stem != "__init__" else path.parent.name
               for path in (REPO_ROOT / "training").glob("*")
               if (path.suffix == ".py" and path.stem != "__init__") or
               (path / "__init__.py").exists()}
    assert present == set(rank), f"not in a tier: {sorted(present - set(rank))}; " \
                                 f"listed but missing: {sorted(set(rank) - present)}"
    wrong = []
    for path in project_files(("training",)):
        parts = module_name(path).split(".")
        if len(parts) < 2:
            continue
        for name, line, _ in imports_of(path):
            target = name.split(".")
            if target[0] == "training" and len(target) > 1 and target[1] != parts[1] \
                    and rank[target[1]] > rank[parts[1]]:
                wrong.append(f"{path.relative_to(REPO_ROOT)}:{line}: {parts[1]} imports "
                             f"{target[1]}, a lower tier")
    assert not wrong, "imports against the tiers:\n" + "\n".join(wrong)


@pytest.mark.slow
def test_the_tensorflow_import_leaves_keras_out():
    """models.tf_compat imports TensorFlow without the Keras 3 that
    tensorflow/__init__.py loads eagerly (and matplotlib.pyplot with it):
    about a second of CPU per process. Only that import is affected: keras
    imports normally afterwards. Mutation: importing tensorflow without
    holding keras off loads both."""
    code = ("import sys; import models.tf_compat; "
            "print(sorted(m for m in ('keras', 'matplotlib.pyplot') if m in sys.modules)); "
            "import keras; print(keras.__name__)")
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                               text=True, timeout=300, check=True)
    assert completed.stdout.split("\n")[:2] == ["[]", "keras"], completed.stdout


def test_the_report_and_the_csv_check_start_without_tensorflow():
    """The report (and its --choose, which pipeline.sh runs between two
    stages), the CSV check and the records they read (checkpoints' JSON and
    atomic-write helpers, evaluations, the weights file) import no
    TensorFlow, whose import costs seconds of CPU per process. Mutation:
    checkpoints importing TensorFlow at the top loads it for all of them."""
    modules = ("ensemble.report", "ensemble.check_submission", "training.checkpoints",
               "training.eval_results", "training.intervals", "training.weights_file")
    code = (f"import sys; import {', '.join(modules)}; "
            "print('tensorflow' in sys.modules)")
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                               text=True, timeout=300, check=True)
    assert completed.stdout.strip() == "False", completed.stdout
