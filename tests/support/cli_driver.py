"""Runs many command lines of several entry points in one process (the
import of TensorFlow, 5 s, is paid once), each as `python -m <module> ...`
would run it: the module's flags defined once (and removed after its cases,
for the next module), reset before each case, the case run through
training.cli.run_main, and its exit code and everything written to file
descriptors 1 and 2 (Python's and TensorFlow's) captured.

    python tests/support/cli_driver.py <cases.json> <results.json>

cases.json: {module: spec}, results.json: {module: results}, where
spec = {"cases": [{"argv": [...], "cwd": dir?}, ...], "timeout": seconds,
"per_path_flag": {path kind: [values]}} (per_path_flag: one more case
`--<flag>=<value>` for every path flag of that kind; every case is run: no
time budget, so that a test runs the same cases on every machine);
results = {"path_flags": {flag: kind}, "string_flags": [the module's string
flags], "results": [{"argv", "flag", "code", "stdout", "stderr", "seconds"}]}.
A case running longer than the timeout dumps every thread's traceback and
ends the driver (exit 1): a hang is a failure.
"""
from __future__ import annotations

import faulthandler
import importlib
import json
import os
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _captured(function):
    """(result of function(), stdout text, stderr text), fds 1 and 2 captured."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            result = function()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        texts = []
        for handle in (out, err):
            handle.seek(0)
            texts.append(handle.read().decode(errors="replace"))
    return result, texts[0], texts[1]


def _run_case(module, argv, run_main, flag_values) -> int:
    flag_values.unparse_flags()
    sys.argv = [module.__name__, *argv]
    try:
        run_main(module.main)
    except SystemExit as stop:
        code = stop.code
        return 0 if code is None else code if isinstance(code, int) else 1
    except BaseException:  # noqa: BLE001 (an escaped exception: print it as Python would)
        import traceback
        traceback.print_exc()
        return 1
    return 0


def _forget_flags(module_name: str, flag_values) -> None:
    """Removes the flags an entry point defined, so that the next one can
    define its own (absl refuses a flag defined twice)."""
    from training import flags as shared_flags

    for flag in flag_values.get_flags_for_module(module_name):
        if flag.name in flag_values:
            delattr(flag_values, flag.name)
    shared_flags.PATH_FLAGS.clear()


def _run_module(module_name: str, spec: dict) -> dict:
    """Defines the entry point's flags, runs its cases, forgets its flags."""
    from absl import flags

    from training import cli
    from training import flags as shared_flags

    sys.argv = [module_name]
    module = importlib.import_module(module_name)
    module.define_flags()
    results, home = [], os.getcwd()
    cases = list(spec.get("cases", []))
    for flag, kind in shared_flags.PATH_FLAGS.items():
        for value in spec.get("per_path_flag", {}).get(kind, []):
            cases.append({"argv": [f"--{flag}={value}"], "flag": flag})
    for case in cases:
        os.chdir(case.get("cwd") or home)
        faulthandler.dump_traceback_later(spec.get("timeout", 120), exit=True)
        start = time.time()
        code, out, err = _captured(lambda argv=case["argv"]: _run_case(
            module, argv, cli.run_main, flags.FLAGS))
        faulthandler.cancel_dump_traceback_later()
        results.append({"argv": case["argv"], "flag": case.get("flag"), "code": code,
                        "stdout": out, "stderr": err,
                        "seconds": round(time.time() - start, 3)})
    os.chdir(home)
    payload = {"path_flags": dict(shared_flags.PATH_FLAGS), "results": results,
               "string_flags": sorted(flag.name for flag in
                                      flags.FLAGS.get_flags_for_module(module_name)
                                      if flag.flag_type() == "string")}
    flags.FLAGS.unparse_flags()
    _forget_flags(module_name, flags.FLAGS)
    return payload


def main() -> None:
    cases_path, results_path = sys.argv[1:3]
    sys.path[:0] = [REPO_ROOT]
    specs = json.load(open(cases_path))
    results = {name: _run_module(name, spec) for name, spec in specs.items()}
    with open(results_path, "w") as handle:
        json.dump(results, handle)


if __name__ == "__main__":
    main()
