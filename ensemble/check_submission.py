"""Validates a Kaggle submission CSV (docs/formats.md 3.1):
python -m ensemble.check_submission --submission=S.csv [--num_classes=3862] [--top_k=20]

Checks (the format's rules: training.submission), reporting the first
problem with its line number:
  * the header is exactly ``VideoId,LabelConfidencePairs``;
  * every line is ``<id>,<pairs>`` with a non-empty id, no id twice;
  * exactly min(top_k, num_classes) ``label score`` pairs, space-separated;
  * labels are integers in [0, num_classes), none twice within a line;
  * scores parse as finite floats in [0, 1] (any notation float() reads);
  * pairs are sorted by descending score (equal scores allowed);
  * with expected_ids: the ids are exactly those (none missing, none extra).
Prints ``ok: N videos`` on success; a problem ends the command with one line
and exit status 2.
"""
from __future__ import annotations

from typing import Iterable, Optional

from absl import flags

from training import flags as shared_flags
from training import paths
from training.cli import UserError, excerpt, run_main
from training.submission import CSV_HEADER as CSV_HEADER  # (its old home)
from training.submission import DEFAULT_TOP_K, check_line

FLAGS = flags.FLAGS


def define_flags() -> None:
    shared_flags.define_shared_flags({"num_classes": 3862, "top_k": DEFAULT_TOP_K})
    shared_flags.define(flags.DEFINE_string, "submission", "", "The submission CSV to check.",
                        path=paths.IN_FILE)


def _check_utf8(path: str, number: int, line: str) -> None:
    """Refuses a line holding bytes that are not UTF-8. The file is decoded
    with surrogateescape because a strict decoder fails on the whole chunk it
    reads ahead (8 KiB), i.e. while the chunk's first line is being read, and
    would blame that line; re-decoding the one line gives the reason."""
    try:
        line.encode("utf-8", "surrogateescape").decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}:{number}: not UTF-8 text ({err.reason} at byte "
                        f"{err.start + 1} of the line)") from None


def check_submission(path: str, num_classes: int = 3862, top_k: int = DEFAULT_TOP_K,
                     expected_ids: Optional[Iterable[str]] = None) -> int:
    """Validates the CSV at path; returns the number of videos (rows).

    Raises UserError naming the file and line of the first problem.
    expected_ids: when given, the set of ids the file must hold exactly.
    """
    if num_classes < 1:
        raise UserError(f"--num_classes: must be >= 1, got {num_classes}")
    if top_k < 1:
        raise UserError(f"--top_k: must be >= 1, got {top_k}")
    pairs = min(top_k, num_classes)
    expected = None if expected_ids is None else {
        i.decode("utf-8") if isinstance(i, bytes) else str(i) for i in expected_ids}
    ids = set()
    try:
        # (surrogateescape: a bad byte reaches its own line, see _check_utf8)
        handle = open(path, newline="", encoding="utf-8", errors="surrogateescape")
    except OSError as err:
        raise UserError(f"--submission={path}: cannot open ({err.strerror})") from None
    with handle:
        number = 0
        for number, raw in enumerate(handle, start=1):
            line = raw[:-1] if raw.endswith("\n") else raw
            if line.endswith("\r"):
                line = line[:-1]
            if not line.isascii():
                _check_utf8(path, number, line)
            if number == 1:
                if line.lstrip("\ufeff") != CSV_HEADER:
                    raise UserError(f"{path}:1: header must be {CSV_HEADER!r}, got "
                                    f"{excerpt(line)}")
                continue
            if not line.strip():
                raise UserError(f"{path}:{number}: empty line")
            video_id = check_line(f"{path}:{number}", line, num_classes, pairs)
            if video_id in ids:
                raise UserError(f"{path}:{number}: video {video_id} appears twice")
            if expected is not None and video_id not in expected:
                raise UserError(f"{path}:{number}: video {video_id} is not one of the "
                                f"expected ids")
            ids.add(video_id)
    if number == 0:
        raise UserError(f"{path}: empty file (no header)")
    if expected is not None and len(ids) != len(expected):
        missing = sorted(expected - ids)
        raise UserError(f"{path}: {len(missing)} expected videos are missing, e.g. "
                        f"{missing[0]}")
    return len(ids)


def main(argv) -> None:
    del argv
    shared_flags.require(submission=FLAGS.submission)
    count = check_submission(FLAGS.submission, FLAGS.num_classes, FLAGS.top_k)
    print(f"ok: {count} videos")


if __name__ == "__main__":
    define_flags()
    run_main(main)
