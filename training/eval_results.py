"""eval_results.json: every evaluation of a model dir, keyed by what it measured.

The one writer and reader of the file (training.eval, swa.average and
ensemble.build --eval_data_pattern write it; ensemble.report reads it)::

    {<the latest evaluation's fields>,
     "key": "<the latest evaluation's key>",
     "evaluations": {"<key>": {<an evaluation's fields>}, ...}}

An evaluation's fields: checkpoint (its path), global_step,
eval_data_pattern (absolute), eval_files (how many files it matched),
bn_statistics (moving or recompute), recompute_batches, frame_sampling, seed,
top_k, bf16_compute (None: the default), the metrics (gap, hit_at_one,
perr, map, loss, num_examples), and videos_file (each video's top-k pairs
under eval_videos/, training.intervals) with video_ids_sha1 where kept. The
top-level fields are the latest evaluation (readers of the earlier format
keep working). Its key is
``<checkpoint>|<eval_data_pattern>|bn_statistics=<mode>[:<batches>]|
frame_sampling=..|seed=..|top_k=..|bf16_compute=..`` (the checkpoint relative
to the dir when inside it): an evaluation with the same key is the same
measurement taken again and replaces that entry; every other entry is kept.
A file of the earlier format (no "evaluations") is kept as an entry, its
unrecorded parts so named in its key. A damaged file is a UserError naming it,
and is left as it is.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

from training import checkpoints, intervals
from training.cli import UserError
from training.flags import comma_list

EVAL_RESULTS = "eval_results.json"
# Per-video records (training.intervals) of the evaluations, by key digest.
VIDEOS_DIR = "eval_videos"
COLLECTION = "evaluations"
UNRECORDED = "unrecorded"
# The fields of an evaluation that say what was measured (and make its key).
SETTINGS = ("frame_sampling", "seed", "top_k", "bf16_compute")
METRICS = ("gap", "hit_at_one", "perr", "map", "loss", "num_examples")


def results_path(directory: str) -> str:
    return os.path.join(directory, EVAL_RESULTS)


def absolute_pattern(data_pattern: str) -> str:
    """A data pattern with each local glob made absolute (gs:// and the like
    are kept as they are)."""
    return ",".join(part if "://" in part else os.path.abspath(part)
                    for part in comma_list(data_pattern))


def checkpoint_name(directory: str, checkpoint: str) -> str:
    """The checkpoint relative to the dir when it is inside it, else absolute."""
    real_dir, real = os.path.realpath(directory), os.path.realpath(checkpoint)
    if real.startswith(real_dir + os.sep):
        return os.path.relpath(real, real_dir)
    return os.path.abspath(checkpoint)


def _part(entry: Dict[str, Any], field: str) -> str:
    if field not in entry:
        return UNRECORDED
    return "default" if entry[field] is None else str(entry[field])


def evaluation_key(directory: str, entry: Dict[str, Any]) -> str:
    """The key of an evaluation of `directory` (module docstring)."""
    checkpoint = entry.get("checkpoint")
    bn_mode = _part(entry, "bn_statistics")
    if bn_mode == "recompute":
        bn_mode += f":{_part(entry, 'recompute_batches')}"
    parts = [checkpoint_name(directory, checkpoint) if checkpoint else UNRECORDED,
             entry.get("eval_data_pattern") or UNRECORDED, f"bn_statistics={bn_mode}"]
    parts += [f"{field}={_part(entry, field)}" for field in SETTINGS]
    return "|".join(parts)


def _damaged(path: str, what: str) -> UserError:
    return UserError(f"{path}: {what}; left as it is (repair it, or move it away to start "
                     f"a new one)")


def read_evaluations(directory: str) -> Dict[str, Dict[str, Any]]:
    """{key: evaluation} of a dir's eval_results.json ({} when it has none);
    a damaged file is a UserError naming it."""
    path = results_path(directory)
    if not os.path.exists(path):
        return {}
    try:
        payload = checkpoints.load_json(path, path)
    except UserError as err:
        raise _damaged(path, str(err)[len(path) + 2:]) from None
    if not isinstance(payload, dict):
        raise _damaged(path, f"expected a JSON object, found {checkpoints.json_kind(payload)}")
    collection = payload.get(COLLECTION, {"": payload})     # the earlier format: one
    if not isinstance(collection, dict) or not all(
            isinstance(entry, dict) for entry in collection.values()):
        raise _damaged(path, f"{COLLECTION!r} is not an object of evaluations")
    for entry in [payload, *collection.values()]:
        for name in METRICS:
            value = entry.get(name)
            if name in entry and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise _damaged(path, f"{name} is {value!r}, not a number")
    if COLLECTION not in payload:
        return {evaluation_key(directory, payload): payload}
    return dict(collection)


def latest_evaluation(directory: str) -> Optional[Dict[str, Any]]:
    """The latest evaluation of a dir (the top-level fields), None without
    eval_results.json; a damaged file is a UserError naming it."""
    evaluations = read_evaluations(directory)
    if not evaluations:
        return None
    payload = checkpoints.load_json(results_path(directory), results_path(directory))
    return {key: value for key, value in payload.items() if key not in (COLLECTION, "key")}


def _save_videos(directory: str, key: str, videos: intervals.VideoTopK) -> Dict[str, Any]:
    """Writes the per-video record of the evaluation `key`; -> its entry fields."""
    name = os.path.join(VIDEOS_DIR, intervals.videos_file_name(key))
    intervals.save(os.path.join(directory, name), videos)
    return {"videos_file": name, "video_ids_sha1": videos.ids_digest()}


def videos_of(directory: str, entry: Dict[str, Any]) -> intervals.VideoTopK:
    """The per-video record of an evaluation of `directory`; one without it
    (evaluated before records were kept) is a UserError saying so."""
    name = entry.get("videos_file")
    if not name:
        raise UserError(f"{results_path(directory)}: the evaluation of {entry.get('checkpoint')} "
                        f"has no per-video record; evaluate it again")
    return intervals.load(os.path.join(directory, name))


def _settings_entry(checkpoint: str, data_pattern: str,
                    settings: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The fields of an evaluation that say what it measured (they make its key)."""
    settings = dict(settings or {})
    return {"checkpoint": checkpoint,
            "global_step": checkpoints.checkpoint_step(checkpoint) or 0,
            "eval_data_pattern": absolute_pattern(data_pattern),
            "bn_statistics": settings.get("bn_statistics", "moving"),
            "recompute_batches": settings.get("recompute_batches"),
            **{field: settings.get(field) for field in SETTINGS}}


def find(directory: str, checkpoint: str, data_pattern: str,
         settings: Optional[Dict[str, Any]] = None) -> Optional[Dict[str, Any]]:
    """The recorded evaluation with these settings, when it has its per-video
    record (a rerun of the pipeline skips it), else None."""
    key = evaluation_key(directory, _settings_entry(checkpoint, data_pattern, settings))
    entry = read_evaluations(directory).get(key)
    if entry and entry.get("videos_file") and os.path.isfile(
            os.path.join(directory, entry["videos_file"])):
        return entry
    return None


def record(directory: str, checkpoint: str, result: Dict[str, Any], data_pattern: str,
           num_files: Optional[int], settings: Optional[Dict[str, Any]] = None
           ) -> Dict[str, Any]:
    """Adds an evaluation of `checkpoint` on `data_pattern` to the dir's
    eval_results.json (replacing only the entry of the same key) and makes it
    the latest; returns the evaluation. settings: bn_statistics,
    recompute_batches and SETTINGS (missing ones: None). A "videos" item of
    result (training.intervals.VideoTopK) is written beside it, under
    eval_videos/, and named by the entry's videos_file."""
    result = dict(result)
    videos = result.pop("videos", None)
    entry = {**_settings_entry(checkpoint, data_pattern, settings), "eval_files": num_files,
             **{name: float(value) for name, value in result.items()}}
    evaluations = read_evaluations(directory)
    key = evaluation_key(directory, entry)
    if videos is not None:
        entry.update(_save_videos(directory, key, videos))
    evaluations[key] = entry
    checkpoints.write_json(results_path(directory),
                           {**entry, "key": key, COLLECTION: evaluations})
    return entry
