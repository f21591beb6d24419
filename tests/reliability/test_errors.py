"""training.cli: the one line of an error, never cut; the fallback line
of an OSError names the flag whose path it is."""
from __future__ import annotations

import errno

from absl import flags

from training import cli


def test_first_line_keeps_a_message_holding_brackets():
    text = ("Graph execution error:\n\nassertion failed: [feature x[0]: bad] "
            "[Condition x == y did not hold element-wise:] [x (Shape:0) = ] [3]\n"
            "\t [[{{node assert}}]]")
    assert cli.first_line(ValueError(text)) == "feature x[0]: bad"


def test_first_line_of_an_assertion_at_the_end_of_its_line():
    assert cli.first_line(ValueError("assertion failed: [labels: a] b]")) == "labels: a] b"


def test_excerpt_says_when_it_shortens():
    assert cli.excerpt("abc") == "'abc'"
    long = "x" * 100
    assert cli.excerpt(long, 10) == "'xxxxxxxxxx'... (100 characters)"


def test_flags_naming_finds_the_flag_of_a_path_below_it(tmp_path):
    values = {"output_dir": str(tmp_path / "out"), "model_dirs": f"/a,{tmp_path}/m",
              "data": str(tmp_path / "d*")}
    assert cli.flags_naming(str(tmp_path / "out" / "x.json"), values) == ["output_dir"]
    assert cli.flags_naming(str(tmp_path / "m"), values) == ["model_dirs"]
    assert cli.flags_naming(str(tmp_path / "outside"), values) == []


def test_unexpected_os_error_names_its_flag(tmp_path):
    flag_values = flags.FlagValues()
    flags.DEFINE_string("output_file", str(tmp_path / "s.csv"), "", flag_values=flag_values)
    flag_values(["prog"])
    saved, flags.FLAGS = flags.FLAGS, flag_values
    try:
        err = OSError(errno.EROFS, "Read-only file system", str(tmp_path / "s.csv"))
        line = cli.unexpected_error_line(err)
    finally:
        flags.FLAGS = saved
    assert line == f"--output_file={tmp_path}/s.csv: {tmp_path}/s.csv: Read-only file system"
