"""The submission CSV (docs/formats.md 3.1): its one home.

Header ``VideoId,LabelConfidencePairs``; one line per video,
``<id>,<label> <score> ...`` with min(top_k, num_classes) pairs sorted by
descending score. Written by ``ensemble.inference`` (and ``ensemble.merge``),
checked by ``ensemble.check_submission`` (``check_line``, strict) and read as
a teacher by ``prediction2tfrecord.write`` (``parse_pairs``, lenient).
"""
from __future__ import annotations

import math
from typing import List, Sequence, Set, Tuple

import numpy as np

from training.cli import UserError, excerpt
from training.metrics import DEFAULT_TOP_K as DEFAULT_TOP_K  # (pairs per video)

CSV_HEADER = "VideoId,LabelConfidencePairs"


def format_score(score: float) -> str:
    """6 significant digits, positional notation, trailing zeros dropped."""
    text = "%.6g" % score
    if "e" in text or "E" in text:
        text = np.format_float_positional(score, precision=6, unique=False,
                                          fractional=False, trim="-")
    return text


def format_line(video_id: str, labels: Sequence[int], scores: Sequence[float]) -> str:
    """One CSV line (with its newline) of a video's top-k labels and scores."""
    pairs = " ".join(f"{int(label)} {format_score(float(score))}"
                     for label, score in zip(labels, scores))
    return f"{video_id},{pairs}\n"


def parse_pairs(text: str, num_classes: int, where: str) -> Tuple[List[int], List[float]]:
    """'l1 s1 l2 s2 ...' -> (labels, scores), any number of pairs and any
    whitespace (a teacher CSV); UserError naming `where`."""
    tokens = text.split()
    if len(tokens) % 2:
        raise UserError(f"{where}: odd number of tokens in LabelConfidencePairs "
                        f"(expected 'label score' pairs)")
    try:
        labels = [int(token) for token in tokens[0::2]]
        scores = [float(token) for token in tokens[1::2]]
    except ValueError as err:
        raise UserError(f"{where}: bad LabelConfidencePairs ({err})") from None
    for label in labels:
        if not 0 <= label < num_classes:
            raise UserError(f"{where}: label {label} is outside [0, {num_classes}); "
                            f"check --num_classes")
    if not all(math.isfinite(score) for score in scores):
        raise UserError(f"{where}: a score is not finite")
    return labels, scores


def _check_label(where: str, video_id: str, index: int, text: str, num_classes: int) -> int:
    """Pair `index`'s label: a plain integer in [0, num_classes)."""
    if not (text.isascii() and text.isdigit()):
        raise UserError(f"{where}: pair {index + 1} of video {video_id}: label "
                        f"{text!r} is not a non-negative integer")
    label = int(text)
    if label >= num_classes:
        raise UserError(f"{where}: pair {index + 1} of video {video_id}: label {label} is "
                        f"out of range [0, {num_classes})")
    return label


def _check_score(where: str, video_id: str, index: int, text: str) -> float:
    """Pair `index`'s score: a finite number in [0, 1]."""
    try:
        score = float(text)
    except ValueError:
        score = math.nan
    if not math.isfinite(score) or not 0.0 <= score <= 1.0:
        raise UserError(f"{where}: pair {index + 1} of video {video_id}: score "
                        f"{text!r} is not a number in [0, 1]")
    return score


def check_line(where: str, line: str, num_classes: int, pairs: int) -> str:
    """A line as Kaggle wants it (exactly `pairs` pairs, single spaces, labels
    once each, scores in [0, 1] descending) -> its video id; UserError otherwise."""
    if "," not in line:
        raise UserError(f"{where}: expected '<id>,<label> <score> ...', got {excerpt(line)}")
    video_id, _, rest = line.partition(",")
    if not video_id or video_id != video_id.strip():
        raise UserError(f"{where}: empty or space-padded video id {video_id!r}")
    if "," in rest:
        raise UserError(f"{where}: more than two comma-separated fields")
    tokens = rest.split(" ")
    if len(tokens) != 2 * pairs or any(token == "" for token in tokens):
        raise UserError(f"{where}: video {video_id} has {len(rest.split())} values, expected "
                        f"{pairs} 'label score' pairs ({2 * pairs} values separated by single "
                        f"spaces)")
    seen: Set[int] = set()
    previous = math.inf
    for index in range(pairs):
        label = _check_label(where, video_id, index, tokens[2 * index], num_classes)
        if label in seen:
            raise UserError(f"{where}: video {video_id} lists label {label} twice")
        seen.add(label)
        score = _check_score(where, video_id, index, tokens[2 * index + 1])
        if score > previous:
            raise UserError(f"{where}: video {video_id}: pairs are not sorted by descending "
                            f"score ({tokens[2 * index + 1]} after {tokens[2 * index - 1]})")
        previous = score
    return video_id
