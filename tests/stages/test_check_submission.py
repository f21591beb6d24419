"""ensemble.check_submission: every rule, with the line number of the problem."""
from __future__ import annotations

import pytest

from conftest import run_module
from ensemble.check_submission import CSV_HEADER, check_submission
from training.cli import UserError

GOOD_ROWS = ["aa00,3 0.9 1 0.5 0 0.5", "bb11,0 1 2 0.0000012 1 0", "cc22,2 1e-05 0 1e-06 1 0"]


def write(tmp_path, rows, header=CSV_HEADER, name="s.csv"):
    path = tmp_path / name
    path.write_text("\n".join([header] + rows) + "\n")
    return str(path)


def check(path, **kwargs):
    return check_submission(path, num_classes=4, top_k=3, **kwargs)


def test_valid_file(tmp_path):
    path = write(tmp_path, GOOD_ROWS)
    assert check(path) == 3
    assert check(path, expected_ids=["aa00", "bb11", b"cc22"]) == 3
    # top_k larger than the number of classes: every class once.
    assert check_submission(write(tmp_path, ["x,1 0.5 0 0.2", "y,0 0.1 1 0.1"], name="t.csv"),
                            num_classes=2, top_k=20) == 2
    # CRLF line ends are accepted.
    crlf = tmp_path / "crlf.csv"
    crlf.write_bytes(("\r\n".join([CSV_HEADER] + GOOD_ROWS) + "\r\n").encode())
    assert check(str(crlf)) == 3


@pytest.mark.parametrize("rows,line,message", [
    (["aa00,3 0.9 1 0.5"], 2, "expected 3 'label score' pairs"),
    (["aa00,3 0.9 1 0.5 0 0.5 2 0.1"], 2, "expected 3 'label score' pairs"),
    (["aa00,3 0.9 1 0.5 0"], 2, "expected 3 'label score' pairs"),
    (["aa00,3 0.9  1 0.5 0 0.5"], 2, "single spaces"),
    (["aa00,3 0.9 1 0.5 0 0.5 "], 2, "single spaces"),
    (GOOD_ROWS[:1] + ["bb11,x 1 2 0.5 1 0"], 3, "label 'x' is not a non-negative integer"),
    (["aa00,3 0.9 1.0 0.5 0 0.5"], 2, "label '1.0' is not"),
    (["aa00,-1 0.9 1 0.5 0 0.5"], 2, "label '-1' is not"),
    (["aa00,4 0.9 1 0.5 0 0.5"], 2, r"label 4 is out of range \[0, 4\)"),
    (["aa00,3 0.9 3 0.5 0 0.5"], 2, "lists label 3 twice"),
    (["aa00,3 1.5 1 0.5 0 0.5"], 2, r"score '1.5' is not a number in \[0, 1\]"),
    (["aa00,3 0.9 1 -0.1 0 0"], 2, "score '-0.1'"),
    (["aa00,3 0.9 1 abc 0 0"], 2, "score 'abc'"),
    (["aa00,3 nan 1 0.5 0 0"], 2, "score 'nan'"),
    (["aa00,3 0.5 1 0.9 0 0"], 2, "not sorted by descending score"),
    (GOOD_ROWS + ["aa00,3 0.9 1 0.5 0 0.5"], 5, "video aa00 appears twice"),
    (GOOD_ROWS[:2] + [""] + GOOD_ROWS[2:], 4, "empty line"),
    (["aa00 3 0.9 1 0.5 0 0.5"], 2, "expected '<id>,<label> <score>"),
    (["aa00,3 0.9,1 0.5 0 0.5"], 2, "more than two comma-separated fields"),
    ([",3 0.9 1 0.5 0 0.5"], 2, "empty or space-padded video id"),
])
def test_each_problem_names_its_line(tmp_path, rows, line, message):
    path = write(tmp_path, rows)
    with pytest.raises(UserError, match=message) as info:
        check(path)
    assert str(info.value).startswith(f"{path}:{line}: ")


@pytest.mark.parametrize("bad_line,rows", [(1, 3), (17, 30), (2000, 3000)])
def test_a_bad_byte_names_its_own_line(tmp_path, bad_line, rows):
    """A byte that is not UTF-8 is reported on its line, also when the file
    is read in chunks (line 2000 is past the first 8 KiB). The strict decoder
    this replaced failed on the chunk read ahead and blamed the chunk's first
    line: line 1 for the first two cases and 1966 for the third (the mutation
    tried: the file opened with errors="strict" again and UnicodeDecodeError
    caught around the loop)."""
    lines = [CSV_HEADER.encode()] + [f"v{i:05d},3 0.9 1 0.5 0 0.5".encode()
                                     for i in range(rows)]
    lines[bad_line - 1] = lines[bad_line - 1].replace(b"9", b"\xe9", 1).replace(
        b"Video", b"Vid\xe9o", 1)
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(UserError) as info:
        check(str(path))
    assert str(info.value).startswith(f"{path}:{bad_line}: not UTF-8 text (invalid "
                                      f"continuation byte at byte "), str(info.value)
    # Valid non-ASCII text elsewhere is accepted (only the check of the id's
    # label pairs applies to it).
    accented = tmp_path / "accented.csv"
    accented.write_text("\n".join([CSV_HEADER, "vidéo1,3 0.9 1 0.5 0 0.5"]) + "\n",
                        encoding="utf-8")
    assert check(str(accented)) == 1


def test_header_and_empty_file(tmp_path):
    for header in ("VideoId,LabelScorePairs", "VideoId,Labels", "videoid,labelconfidencepairs"):
        path = write(tmp_path, GOOD_ROWS, header=header)
        with pytest.raises(UserError, match=r":1: header must be"):
            check(path)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(UserError, match="empty file"):
        check(str(empty))
    assert check(write(tmp_path, [], name="header_only.csv")) == 0
    with pytest.raises(UserError, match="cannot open"):
        check(str(tmp_path / "missing.csv"))


def test_expected_ids(tmp_path):
    path = write(tmp_path, GOOD_ROWS)
    with pytest.raises(UserError, match=r":4: video cc22 is not one of the expected ids"):
        check(path, expected_ids=["aa00", "bb11"])
    with pytest.raises(UserError, match="1 expected videos are missing, e.g. dd33"):
        check(path, expected_ids=["aa00", "bb11", "cc22", "dd33"])


def test_command_line(tmp_path):
    good = write(tmp_path, GOOD_ROWS)
    done = run_module("ensemble.check_submission", f"--submission={good}", "--num_classes=4",
                      "--top_k=3")
    assert done.stdout.strip() == "ok: 3 videos"
    failed = run_module("ensemble.check_submission", f"--submission={good}", "--num_classes=3",
                        "--top_k=3", check=False)
    assert failed.returncode == 2
    assert failed.stderr.strip() == (f"error: {good}:2: pair 1 of video aa00: label 3 is out "
                                     f"of range [0, 3)")


def test_written_line_passes_the_checker():
    """training.submission: what the writer formats, the checker accepts.
    (Mutation: format_line joining pairs with two spaces -> this fails.)"""
    from training import submission
    line = submission.format_line("vid1", [3, 1, 0], [0.9, 1.2345678e-05, 0.0])
    assert line == "vid1,3 0.9 1 0.0000123457 0 0\n"
    assert submission.check_line("s.csv:2", line.rstrip("\n"), 5, 3) == "vid1"
