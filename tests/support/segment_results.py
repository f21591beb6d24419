"""Segment evaluations as training.eval --segment_labels writes them
(segment_eval_results.json and the per-rating records), made without a
model: the report's tests and its fuzz case."""
from __future__ import annotations

import json
import os

import numpy as np

from training import eval_results, intervals

VIDEOS = 150
PATTERN_NAME = "heldout*.tfrecord"


def ratings(quality: float, seed: int) -> intervals.SegmentRatings:
    """Five ratings a video over 10 classes; a better system separates them more."""
    rng = np.random.default_rng(seed)
    ids = np.repeat([f"v{index:03d}".encode() for index in range(VIDEOS)], 5)
    classes = np.random.default_rng(1).integers(0, 10, ids.size)
    rated = (np.random.default_rng(2).random(ids.size) < 0.5).astype(np.int8)
    scores = np.clip(0.5 + quality * (rated - 0.5) + rng.normal(0, 0.25, ids.size), 0, 1)
    return intervals.SegmentRatings(ids, np.tile(np.arange(5) * 5, VIDEOS), classes, rated,
                                    scores.astype(np.float32), np.ones(ids.size, bool))


def write_evaluation(directory, pattern: str, record: intervals.SegmentRatings,
                     step: int = 0, refine_top_k: int = 0, refine_dir: str = "") -> None:
    """One entry of segment_eval_results.json and its per-rating record."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, eval_results.SEGMENT_RESULTS)
    evaluations = {}
    if os.path.isfile(path):
        with open(path) as handle:
            evaluations = json.load(handle)["evaluations"]
    name = f"segment_eval_ratings/{len(evaluations)}.npz"
    intervals.save_segment_ratings(os.path.join(directory, name), record)
    entry = {"checkpoint": os.path.join(directory, f"model.ckpt-{step}"), "global_step": step,
             "eval_data_pattern": eval_results.absolute_pattern(pattern),
             **({"segment_refine_top_k": refine_top_k,
                 "segment_refine_model": os.path.join(refine_dir, "inference_model")}
                if refine_top_k else {}),
             "segment_map": record.point(), "num_segments": int(record.ids.size),
             "ratings_file": name}
    evaluations[f"key{len(evaluations)}"] = entry
    with open(path, "w") as handle:
        json.dump({**entry, "evaluations": evaluations}, handle)
