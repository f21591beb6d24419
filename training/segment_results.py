"""segment_eval_results.json and the per-rating records of 2019 segment evaluations.

The one writer and reader of the file (``training.eval --segment_labels``
writes it; a report reads it, without TensorFlow)::

    {<the latest evaluation's fields>,
     "key": "<the latest evaluation's key>",
     "evaluations": {"<key>": {<an evaluation's fields>}, ...}}

An evaluation's fields: checkpoint, global_step, eval_data_pattern
(absolute), its settings (frame_sampling, seed, bf16_compute, bn_statistics,
recompute_batches, segment_size; with refinement also segment_refine_top_k
and segment_refine_model: "self" or the refine model's checkpoint path),
the metrics (training.metrics.segment_metrics) and ratings_file. Its key is
``<checkpoint name>|<eval_data_pattern>|<setting>=<value>|...`` (the
settings sorted by name); the same key replaces its entry, any other is kept.

``ratings_file`` (``segment_eval_ratings/<key digest>.npz``,
training.intervals.SegmentRatings) holds one entry per rating: the video
id, start time, rated class, 0/1 rating, the model's score of that class
on the segment and whether the (segment, class) pair is retrieved (False
only when refinement left the class out): all the 2019 metric needs, about
30 bytes a rating. ``segment_ratings_of`` reads it.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, Optional

from training import checkpoints, intervals
from training.cli import UserError, first_line
from training.eval_results import absolute_pattern

SEGMENT_RESULTS = "segment_eval_results.json"
RATINGS_DIR = "segment_eval_ratings"


def segment_key(checkpoint_path: str, data_pattern: str, settings: Dict[str, Any]) -> str:
    """The key of a segment evaluation: checkpoint, data pattern, settings."""
    return "|".join([os.path.basename(checkpoint_path), absolute_pattern(data_pattern)]
                    + [f"{name}={value}" for name, value in sorted(settings.items())])


def read_segment_evaluations(train_dir: str) -> Dict[str, Dict[str, Any]]:
    """{key: evaluation} of <train_dir>/segment_eval_results.json ({} without
    it); a damaged file is a one-line UserError naming it."""
    path = os.path.join(train_dir, SEGMENT_RESULTS)
    try:
        with open(path) as handle:
            evaluations = json.load(handle).get("evaluations", {})
        if not isinstance(evaluations, dict):
            raise ValueError("'evaluations' is not an object")
        return evaluations
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, AttributeError) as err:
        raise UserError(f"{path}: cannot be read ({first_line(err)}); left as it is "
                        f"(move it away to start a new one)") from None


def _has_ratings(train_dir: str, entry: Optional[Dict[str, Any]]) -> bool:
    return bool(entry and "segment_map" in entry and entry.get("ratings_file")
                and os.path.isfile(os.path.join(train_dir, entry["ratings_file"])))


def find_segment_result(train_dir: str, checkpoint_path: str, data_pattern: str,
                        settings: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The recorded segment evaluation with this key and its ratings file
    (--skip_evaluated), else None. Only segment_eval_results.json is read: a
    video-level evaluation of the same files (eval_results.json) is another
    measurement."""
    entry = read_segment_evaluations(train_dir).get(
        segment_key(checkpoint_path, data_pattern, settings))
    return entry if _has_ratings(train_dir, entry) else None


def ratings_file_name(key: str) -> str:
    """The ratings file of an evaluation key, relative to its dir."""
    return os.path.join(RATINGS_DIR, hashlib.sha1(key.encode("utf-8")).hexdigest()[:16] + ".npz")


def segment_ratings_of(train_dir: str, entry: Dict[str, Any]) -> intervals.SegmentRatings:
    """The per-rating arrays (module docstring) of an evaluation of train_dir
    (an entry of read_segment_evaluations or find_segment_entry); one
    without them (evaluated before they were kept) is a UserError saying so,
    a damaged file one naming it."""
    name = entry.get("ratings_file")
    if not name:
        raise UserError(f"{os.path.join(train_dir, SEGMENT_RESULTS)}: the segment evaluation "
                        f"of {entry.get('checkpoint')} has no ratings file; evaluate it again")
    return intervals.load_segment_ratings(os.path.join(train_dir, name))


def refine_settings(top_k: int, model: str) -> Dict[str, Any]:
    """The settings that name a refinement ({} when off, so the keys of
    unrefined evaluations are those of before): top_k and the refine model
    ("self", or its checkpoint path)."""
    return {"segment_refine_top_k": int(top_k), "segment_refine_model": model} if top_k else {}


def find_segment_entry(train_dir: str, data_pattern: str, refine_top_k: int = 0,
                       refine_model: Optional[str] = None, checkpoint: Optional[str] = None,
                       **settings: Any) -> Optional[Dict[str, Any]]:
    """The segment evaluation of train_dir on data_pattern with this
    refinement (refine_top_k 0: unrefined only; refine_model None: any),
    this checkpoint (its base name, e.g. "inference_model"; None: any) and
    these other settings (e.g. segment_size=5), that has its ratings file;
    of several, the highest global_step, then the last written. None when
    there is none. The result holds the entry's fields and its "key"."""
    pattern = absolute_pattern(data_pattern)
    found = None
    for key, entry in read_segment_evaluations(train_dir).items():
        if (entry.get("eval_data_pattern") != pattern or not _has_ratings(train_dir, entry)
                or entry.get("segment_refine_top_k", 0) != refine_top_k
                or (refine_top_k and refine_model is not None
                    and entry.get("segment_refine_model") != refine_model)
                or (checkpoint is not None
                    and os.path.basename(str(entry.get("checkpoint"))) != checkpoint)
                or any(entry.get(name) != value for name, value in settings.items())):
            continue
        if found is None or entry.get("global_step", 0) >= found.get("global_step", 0):
            found = {**entry, "key": key}
    return found


def write_segment_results(train_dir: str, checkpoint_path: str, result: Dict[str, Any],
                          data_pattern: str, settings: Dict[str, Any]) -> Dict[str, Any]:
    """Adds a segment evaluation to <train_dir>/segment_eval_results.json: the
    latest at the top level, every one under "evaluations" keyed by checkpoint,
    data pattern and settings. A "ratings" item of result (the per-rating
    arrays, intervals.SegmentRatings) is written to its ratings file, named
    by the entry. A file of its
    own: eval_results.json's readers (ensemble.report, --skip_evaluated)
    compare video-level metrics only."""
    result = dict(result)
    ratings = result.pop("ratings", None)
    path = os.path.join(train_dir, SEGMENT_RESULTS)
    evaluations = read_segment_evaluations(train_dir)
    entry = {"checkpoint": checkpoint_path,
             "global_step": checkpoints.checkpoint_step(checkpoint_path) or 0,
             "eval_data_pattern": absolute_pattern(data_pattern),
             **settings, **result}
    key = segment_key(checkpoint_path, data_pattern, settings)
    if ratings is not None:
        entry["ratings_file"] = ratings_file_name(key)
        intervals.save_segment_ratings(os.path.join(train_dir, entry["ratings_file"]), ratings)
    evaluations[key] = entry
    checkpoints.write_json(path, {**entry, "key": key, "evaluations": evaluations})
    return entry
