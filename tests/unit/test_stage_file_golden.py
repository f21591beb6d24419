"""The conformance of every stage record with the files today's code writes:
each golden file (tests/golden/, written by a quick-start run before the
records existed, its work dir renamed /yt8m_work) reads strictly into its
record and writes back byte for byte."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Type

import pytest

from training import stage_files
from training.stage_files import Record

GOLDEN = Path(__file__).resolve().parent.parent / "golden"

# {golden file: the record it is}
GOLDEN_RECORDS: Dict[str, Type[Record]] = {
    "stacking_weights.json": stage_files.WeightsFile,
    "segment_stacking_weights.json": stage_files.WeightsFile,
    "report.json": stage_files.Report,
    "segment_report.json": stage_files.SegmentReport,
}


@pytest.mark.parametrize("name", sorted(GOLDEN_RECORDS))
def test_golden_file_round_trips_byte_for_byte(name, tmp_path):
    """Mutations tried: StateRow._null_keys giving the window keys to every
    kind (window: null on every row) failed both reports; finetuned_row
    written on the "averaged, refined" rows failed the segment report."""
    record = stage_files.read_record(GOLDEN_RECORDS[name], str(GOLDEN / name))
    out = tmp_path / name
    stage_files.write_record(str(out), record)
    assert out.read_bytes() == (GOLDEN / name).read_bytes()


def test_every_golden_file_has_its_record():
    """A golden file added without its row in GOLDEN_RECORDS would test nothing."""
    assert sorted(path.name for path in GOLDEN.glob("*.json")) == sorted(GOLDEN_RECORDS)
