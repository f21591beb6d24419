"""Prints the validation metrics of each model and of the ensemble side by side.

python -m ensemble.report --model_dirs=a,b,... --ensemble_dir=E
Reads the eval_results.json that training.eval (single models) and
ensemble.build --eval_data_pattern (the ensemble) write.
"""
from __future__ import annotations

import json
import os
from typing import List, Optional

from absl import flags

from training import flags as shared_flags
from training.errors import UserError, run_main

FLAGS = flags.FLAGS
COLUMNS = ("gap", "hit_at_one", "perr", "map", "loss")


def load_results(directory: str) -> Optional[dict]:
    path = os.path.join(directory, "eval_results.json")
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        return json.load(handle)


def format_table(rows: List[tuple]) -> str:
    """rows: (name, results dict or None) -> a fixed-width text table."""
    width = max([len("model")] + [len(name) for name, _ in rows])
    lines = [f"{'model':<{width}} | " + " | ".join(f"{c:>10}" for c in COLUMNS)]
    lines.append("-" * len(lines[0]))
    for name, results in rows:
        cells = [f"{results[c]:10.4f}" if results and c in results else f"{'-':>10}"
                 for c in COLUMNS]
        lines.append(f"{name:<{width}} | " + " | ".join(cells))
    return "\n".join(lines)


def define_flags() -> None:
    shared_flags.define_shared("model_dirs", "")
    shared_flags.define(flags.DEFINE_string, "ensemble_dir", "", "The ensemble dir.")


def main(argv) -> None:
    del argv
    if not FLAGS.model_dirs and not FLAGS.ensemble_dir:
        raise UserError("--model_dirs or --ensemble_dir: give at least one")
    rows = [(os.path.basename(os.path.normpath(d)), load_results(d))
            for d in shared_flags.comma_list(FLAGS.model_dirs)]
    if FLAGS.ensemble_dir:
        rows.append(("ensemble", load_results(FLAGS.ensemble_dir)))
    print(format_table(rows))


if __name__ == "__main__":
    define_flags()
    run_main(main)
