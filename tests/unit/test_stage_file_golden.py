"""The conformance of every stage record with the files today's code writes:
each golden file (tests/golden/, written by a quick-start run and single
stage runs before the records existed, its work dir renamed /yt8m_work)
reads strictly into its record and writes back byte for byte, so files on
disk keep reading and a rerun rewrites them unchanged."""
from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path
from typing import Dict, Set, Type

import pytest

from training import stage_files
from training.stage_files import Record

GOLDEN = Path(__file__).resolve().parent.parent / "golden"

# {golden file: the record it is}
GOLDEN_RECORDS: Dict[str, Type[Record]] = {
    "swa_window_chosen.swa.json": stage_files.SwaRecord,
    "swa_segment_window.swa.json": stage_files.SwaRecord,
    "swa_last_n.swa.json": stage_files.SwaRecord,
    "bfloat16.json": stage_files.ConversionRecord,
    "ensemble.json": stage_files.EnsembleRecord,
    "inference_part.json": stage_files.PartRecord,
    "stacking_weights.json": stage_files.WeightsFile,
    "segment_stacking_weights.json": stage_files.WeightsFile,
    "report.json": stage_files.Report,
    "segment_report.json": stage_files.SegmentReport,
    "eval_results.bfloat16_dir.json": stage_files.EvaluationStore,
    "eval_results.train_dir_bn_recomputed.json": stage_files.EvaluationStore,
    "eval_results.ensemble_export.json": stage_files.EvaluationStore,
    "segment_eval_results.swa_dir.json": stage_files.EvaluationStore,
    "segment_eval_results.ensemble_refined.json": stage_files.EvaluationStore,
}
# Records this release adds: no earlier file to conform to.
NEW_IN_THIS_RELEASE = {stage_files.FinetuneRecord}


@pytest.mark.parametrize("name", sorted(GOLDEN_RECORDS))
def test_golden_file_round_trips_byte_for_byte(name, tmp_path):
    """Mutations tried: StateRow._null_keys giving the window keys to every
    kind (window: null on every row) failed both reports; finetuned_row
    written on the "averaged, refined" rows failed the segment report;
    SwaRecord's window_choice written only when set (omit_none) failed
    swa_last_n.swa.json; Evaluation._null_keys returning () ("seed": null
    dropped) failed the eval_results and segment_eval_results files."""
    record = stage_files.read_record(GOLDEN_RECORDS[name], str(GOLDEN / name))
    out = tmp_path / name
    stage_files.write_record(str(out), record)
    assert out.read_bytes() == (GOLDEN / name).read_bytes()


def test_every_golden_file_has_its_record():
    """A golden file added without its row in GOLDEN_RECORDS would test nothing."""
    assert sorted(path.name for path in GOLDEN.glob("*.json")) == sorted(GOLDEN_RECORDS)


def _nested(record: type) -> Set[type]:
    """The records a record's fields hold (at any depth of Optional/Tuple/Dict)."""
    found: Set[type] = set()
    pending = list(typing.get_type_hints(record).values())
    while pending:
        kind = pending.pop()
        pending.extend(typing.get_args(kind))
        if isinstance(kind, type) and issubclass(kind, Record) and kind not in found:
            found.add(kind)
            pending.extend(typing.get_type_hints(kind).values())
    return found


def test_every_record_has_a_golden_file():
    """Every record is a golden file's, inside one or a base of one (or new
    in this release): a new record cannot skip conformance. Mutation tried:
    dropping the ensemble.json row of GOLDEN_RECORDS."""
    records = {cls for _, cls in inspect.getmembers(stage_files, inspect.isclass)
               if issubclass(cls, Record) and dataclasses.is_dataclass(cls)}
    covered = set(GOLDEN_RECORDS.values()) | NEW_IN_THIS_RELEASE
    for record in set(covered):
        covered |= _nested(record)
    covered |= {base for record in covered for base in record.__mro__}   # shared bases
    assert sorted(cls.__name__ for cls in records - covered) == []


def test_segment_part_of_the_earlier_release_reads_and_writes_the_same_arrays(tmp_path):
    """An .npz part (ensemble.segment_submission, written before SegmentPart
    existed) loads into the record and saves every array back, same keys,
    dtypes and values (zip timestamps make .npz bytes differ run to run).
    Mutation tried: SegmentPart.save without the inputs array."""
    import numpy as np
    golden = GOLDEN / "segment_part.npz"
    part = stage_files.SegmentPart.load(str(golden))
    assert (part.num_shards, part.shard_index, part.max_pred) == (1, 0, 2)
    out = tmp_path / "part.npz"
    part.save(str(out))
    with np.load(golden) as want, np.load(out) as got:
        assert sorted(got.files) == sorted(want.files)
        for key in want.files:
            assert got[key].dtype == want[key].dtype and np.array_equal(got[key], want[key]), key
