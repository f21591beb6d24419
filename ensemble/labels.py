"""Label names: the vocabulary CSV (--label_names) and the top-5 TSV beside
the submission CSV (docs/formats.md 3.4).

The vocabulary is a CSV with a header row naming an index column (``Index``,
as in the official YouTube-8M ``vocabulary.csv``, or ``label_id``) and a name
column (``Name`` or ``label_name``); other columns are ignored, quoted fields
may hold commas. Every class id 0..num_classes-1 of the model must have a
name (check_covers).

The TSV is derived from the CSV, not from the scores: its rows are the first
5 pairs of each CSV line (they are the top 5, by descending score), so one
function serves ensemble.inference (one CSV) and ensemble.merge (the CSV of
the parts), and the TSV can never disagree with the submission, score
digits included. Both call it on the CSV's temporary file, before the CSV is
renamed into place: a failure leaves neither file.
"""
from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass
from typing import Dict, Iterator, List, Tuple

from training import checkpoints
from training.cli import UserError

FLAG = "label_names"
INDEX_COLUMNS = ("Index", "label_id")
NAME_COLUMNS = ("Name", "label_name")
TOP_N = 5
TSV_SUFFIX = f".top{TOP_N}.tsv"
TSV_HEADER = "VideoId\tRank\tLabel\tName\tScore"
_LINE_BREAKS = re.compile(r"[\t\r\n]+")


@dataclass(frozen=True)
class LabelNames:
    """The names of a vocabulary file, by class id."""

    path: str
    names: Dict[int, str]

    @property
    def shown(self) -> str:
        """The flag and path that error messages start with."""
        return f"--{FLAG}={self.path}"

    def check_covers(self, num_classes: int) -> None:
        """Raises a UserError unless every class id 0..num_classes-1 has a name."""
        missing = [label for label in range(num_classes) if label not in self.names]
        if missing:
            listed = ", ".join(str(label) for label in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise UserError(f"{self.shown}: names {num_classes - len(missing)} of the model's "
                            f"{num_classes} classes; no name for class {listed}{more}")


def _read_rows(path: str) -> List[Tuple[int, List[str]]]:
    """[(line number, fields)] of a CSV file; any failure is a UserError."""
    shown = f"--{FLAG}={path}"
    if not os.path.exists(path):
        raise UserError(f"{shown}: no such file")
    if os.path.isdir(path):
        raise UserError(f"{shown}: is a dir, not a vocabulary CSV")
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as err:
        raise UserError(f"{shown}: cannot read ({err.strerror or err})") from None
    if data.startswith(b"\x1f\x8b"):
        raise UserError(f"{shown}: gzip-compressed, not a vocabulary CSV (gunzip it first)")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UserError(f"{shown}: UTF-16 text, not UTF-8 (save it as UTF-8)")
    if b"\x00" in data:
        line = data[:data.index(b"\x00")].count(b"\n") + 1
        raise UserError(f"{shown}: a binary file, not a vocabulary CSV (a NUL byte on line "
                        f"{line})")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise UserError(f"{shown}: not UTF-8 text (line {line}, byte {err.start})") from None
    rows = []
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        for row in reader:
            rows.append((reader.line_num, row))
    except csv.Error as err:
        raise UserError(f"{shown}: not a readable CSV (line {reader.line_num}: {err})") from None
    return rows


def _column(header: List[str], choices: Tuple[str, ...], shown: str) -> int:
    for choice in choices:
        if choice in header:
            return header.index(choice)
    found = ", ".join(header[:12]) + (", ..." if len(header) > 12 else "")
    alternatives = " or ".join(choices[1:])
    raise UserError(f"{shown}: no column {choices[0]} (or {alternatives}); found "
                    f"{found or 'an empty header'}")


def read_label_names(path: str) -> LabelNames:
    """Reads a vocabulary CSV (module docstring). A missing, unreadable or
    malformed file (no index or name column, a non-integer, negative or
    repeated index, an empty name, no names at all) is a UserError naming
    --label_names and the path. Tabs and line breaks in a name become spaces."""
    shown = f"--{FLAG}={path}"
    rows = _read_rows(path)
    if not rows:
        raise UserError(f"{shown}: empty (expected a header row with the columns Index and "
                        f"Name, or label_id and label_name)")
    header = [cell.strip() for cell in rows[0][1]]
    if len(header) == 1 and "\t" in header[0]:
        raise UserError(f"{shown}: tab-separated; the vocabulary is a CSV (comma-separated "
                        f"columns Index and Name, or label_id and label_name)")
    index_column = _column(header, INDEX_COLUMNS, shown)
    name_column = _column(header, NAME_COLUMNS, shown)
    index_name, name_name = header[index_column], header[name_column]
    names: Dict[int, str] = {}
    lines: Dict[int, int] = {}
    for line, row in rows[1:]:
        if not row:
            continue  # a blank line
        if len(row) <= max(index_column, name_column):
            raise UserError(f"{shown}: line {line}: {len(row)} fields, too few for the "
                            f"columns {index_name} and {name_name}")
        text = row[index_column].strip()
        if not re.fullmatch(r"[0-9]+", text):
            raise UserError(f"{shown}: line {line}: {index_name} {text!r} is not a "
                            f"non-negative integer")
        label = int(text)
        if label in names:
            raise UserError(f"{shown}: line {line}: {index_name} {label} is also on line "
                            f"{lines[label]}")
        name = _LINE_BREAKS.sub(" ", row[name_column]).strip()
        if not name:
            raise UserError(f"{shown}: line {line}: class {label} has an empty {name_name}")
        names[label], lines[label] = name, line
    if not names:
        raise UserError(f"{shown}: holds no names (only the header)")
    return LabelNames(path, names)


def tsv_path(output_file: str) -> str:
    """The TSV beside a submission CSV: S.csv -> S.top5.tsv (other names: + .top5.tsv)."""
    base = output_file[:-4] if output_file.lower().endswith(".csv") else output_file
    return base + TSV_SUFFIX


def refuse_existing_tsv(output_file: str) -> None:
    """Raises a UserError when the TSV of output_file exists (without --overwrite)."""
    target = tsv_path(output_file)
    if os.path.exists(target):
        raise UserError(f"--{FLAG}: {target} (the TSV of --output_file) exists; choose "
                        f"another --output_file or pass --overwrite")


def _tsv_rows(line: str, number: int, vocabulary: LabelNames) -> Iterator[str]:
    video, _, pairs = line.rstrip("\n").partition(",")
    values = pairs.split()
    for rank, (label, score) in enumerate(zip(values[0:2 * TOP_N:2], values[1:2 * TOP_N:2]),
                                          start=1):
        name = vocabulary.names.get(int(label))
        if name is None:
            raise UserError(f"{vocabulary.shown}: no name for class {label} (video {video}, "
                            f"line {number} of the CSV)")
        yield f"{video}\t{rank}\t{label}\t{name}\t{score}\n"


def write_top_tsv(csv_file: str, vocabulary: LabelNames, target: str,
                  overwrite: bool = False) -> int:
    """Writes `target` atomically from the submission CSV `csv_file` (header,
    then per video up to TOP_N rows ``VideoId Rank Label Name Score``, tab
    separated, in the CSV's order; the label and score text as in the CSV);
    returns the number of videos. A label without a name is a UserError and
    leaves no TSV; an existing target is an error unless overwrite."""
    videos = 0
    with checkpoints.atomic_file(target, overwrite) as tmp_path:
        with open(csv_file, newline="", encoding="utf-8") as source, \
                open(tmp_path, "w", newline="", encoding="utf-8") as out:
            source.readline()  # the CSV header
            out.write(TSV_HEADER + "\n")
            for number, line in enumerate(source, start=2):
                out.writelines(_tsv_rows(line, number, vocabulary))
                videos += 1
            out.flush()
            os.fsync(out.fileno())
    return videos
