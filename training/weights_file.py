"""The weights file that stacking.fit writes and ensemble.build reads (and
the report, for the fitting-files choice). JSON::

    {"members": ["/path/to/model_dir_0", "/path/to/model_dir_1"],
     "weights": [0.35, 0.65]}

``members`` are model dirs (training.members), absolute or relative to the
directory holding the file; ``weights`` are finite and >= 0, not all 0, one
per member (normalised to sum to 1 by the reader's caller). The file is the
record ``training.stage_files.WeightsFile``: besides these two, the keys are
those stacking.fit writes (what it measured on the fitting files, its
provenance); they may be absent (a hand-written file), and any key no release
of stacking.fit wrote is an error. No TensorFlow here: the report reads this
file.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import List, Sequence, Tuple

from training import checkpoints, stage_files
from training.cli import UserError
from training.stage_files import Json, WeightsFile


def write_weights_file(path: str, record: WeightsFile) -> None:
    """Writes the weights JSON that --weights_file reads (atomically).
    Member dirs are written as absolute paths, weights as floats."""
    if len(record.members) != len(record.weights):
        raise ValueError(f"{len(record.members)} members but {len(record.weights)} weights")
    stage_files.write_record(path, dataclasses.replace(
        record, members=tuple(os.path.abspath(member) for member in record.members),
        weights=tuple(float(weight) for weight in record.weights)))


def _weights_payload(path: str) -> Tuple[Json, List[Json], List[Json]]:
    """(the parsed file, its members, its weights): lists of one length."""
    what = f"--weights_file={path}"
    if os.path.isdir(path):
        raise UserError(f"{what}: is a dir, not a weights file")
    if not os.path.isfile(path):
        raise UserError(f"{what}: no such file")
    payload = checkpoints.load_json(path, what)
    if not isinstance(payload, dict) or not isinstance(payload.get("members"), list) \
            or not isinstance(payload.get("weights"), list):
        raise UserError(f"{what}: expected an object with the lists \"members\" and "
                        f"\"weights\", found {checkpoints.json_kind(payload)}"
                        + (" without them" if isinstance(payload, dict) else ""))
    members, weights = payload["members"], payload["weights"]
    if len(members) != len(weights):
        raise UserError(f"{what}: {len(members)} members but {len(weights)} weights")
    if not members:
        raise UserError(f"{what}: holds no members")
    return payload, members, weights


def read_weights_file(path: str) -> WeightsFile:
    """The weights file with its members as absolute dirs and its weights as
    floats (not normalised), checked: one finite weight >= 0 per member, not
    all 0, no member twice, and the record's other keys (WeightsFile)."""
    payload, members, weights = _weights_payload(path)
    what = f"--weights_file={path}"
    base = os.path.dirname(os.path.abspath(path))
    resolved: List[str] = []
    for member, weight in zip(members, weights):
        if not isinstance(member, str) or not member:
            raise UserError(f"{what}: member {member!r} is not a dir path")
        resolved.append(os.path.normpath(os.path.join(base, member)))
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise UserError(f"{what}: weight {weight!r} is not a number")
        if not math.isfinite(weight) or weight < 0:
            raise UserError(f"{what}: weights must be finite and >= 0, got {weight} "
                            f"(member {member})")
        if os.path.realpath(resolved[-1]) in {os.path.realpath(m) for m in resolved[:-1]}:
            raise UserError(f"{what}: member {member} is listed twice")
    if sum(float(w) for w in weights) <= 0:
        raise UserError(f"{what}: the weights sum to 0")
    record = WeightsFile.from_json(payload, what)
    return dataclasses.replace(record, members=tuple(resolved),
                               weights=tuple(float(w) for w in weights))


def normalise_weights(weights: Sequence[float], what: str = "--weights") -> List[float]:
    weights = [float(w) for w in weights]
    for weight in weights:
        if not math.isfinite(weight) or weight < 0:
            raise UserError(f"{what}: weights must be finite and >= 0, got {weight}")
    total = sum(weights)
    if total <= 0:
        raise UserError(f"{what}: the weights sum to 0")
    return [weight / total for weight in weights]
