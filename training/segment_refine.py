"""Video-level refinement of 2019 segment scores (--segment_refine_top_k=K).

A segment is kept for a class only when the class is among its video's top
K video-level predictions: those of the refine model
(--segment_refine_model_dir; default: the model being run) on the whole
video's frames, read by that model's own reader through the one predict
loop (training.predict.iterate_predictions). ``ensemble.inference
--segment_labels`` lists a segment under a class outside its video's top K
nowhere (class_mask); ``training.eval --segment_labels`` takes such a rated
(segment, class) pair out of its class's ranking but keeps it among the
class's positives (predict.evaluate_segments(top_classes=...)), exactly what
the starter's metric scores of that submission. K = 0 (the default): off.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Dict, Iterator, Optional, Sequence

import numpy as np
from absl import flags

from training import checkpoints, members, metrics, paths, predict
from training import flags as shared_flags
from training.cli import UserError
from training.progress import Log

SELF = "self"       # the refine model is the model being run


@dataclass(frozen=True)
class Refine:
    """K and the refine model's dir ("": the model being run)."""
    top_k: int
    model_dir: str = ""


def define_flags() -> None:
    """--segment_refine_top_k and --segment_refine_model_dir (inference and eval)."""
    shared_flags.define(flags.DEFINE_integer, "segment_refine_top_k", 0, "--segment_labels: "
                        "keep a segment for a class only when the class is among its "
                        "video's top K video-level predictions (0: off).")
    shared_flags.define(flags.DEFINE_string, "segment_refine_model_dir", "", "The video-level "
                        "model of --segment_refine_top_k: a model dir or an ensemble export "
                        "(default: the model being run).", path=paths.IN_DIR)


def check(top_k: int, refine_dir: str, model_dir: str, files: Sequence[str], flag_name: str,
          compression: str = "auto") -> Optional[Refine]:
    """The refinement of the flags (None when off), checked before any model
    is loaded: K >= 0; a refine dir only with K > 0; its model predicts the
    classes of model_dir's and reads the records (files) as they are."""
    if top_k < 0:
        raise UserError(f"--segment_refine_top_k: must be >= 0 (0: off), got {top_k}")
    if not top_k:
        if refine_dir:
            raise UserError(f"--segment_refine_model_dir={refine_dir}: needs "
                            f"--segment_refine_top_k > 0")
        return None
    if not refine_dir or os.path.realpath(refine_dir) == os.path.realpath(model_dir):
        return Refine(top_k)
    if not os.path.isdir(refine_dir):
        raise UserError(f"--segment_refine_model_dir={refine_dir}: no such dir")
    classes = members.read_member_flags(refine_dir).num_classes
    wanted = members.read_member_flags(model_dir).num_classes
    if classes != wanted:
        raise UserError(f"--segment_refine_model_dir={refine_dir}: its model predicts "
                        f"{classes} classes, the model of {model_dir} {wanted}")
    members.check_dir_records(refine_dir, files, flag_name, compression=compression)
    return Refine(top_k, refine_dir)


def identity(refine: Refine) -> str:
    """What the evaluation key records of the refine model: SELF, or its
    checkpoint (an export's inference_model, else the dir's latest)."""
    if not refine.model_dir:
        return SELF
    exported = predict.exported_prefix(refine.model_dir)
    found = exported or checkpoints.checkpoint_in_dir(refine.model_dir)
    return os.path.abspath(found or refine.model_dir)


@contextlib.contextmanager
def opened(refine: Refine, model: predict.LoadedModel, frame_sampling: Optional[str] = None,
           seed: int = 2018, bf16_compute: Optional[str] = None,
           num_threads: int = 0) -> Iterator[predict.LoadedModel]:
    """The refine model, open while in the block: `model` itself by default,
    else its dir opened (frame_sampling and bf16_compute apply to a single
    model dir only, as for the model being run)."""
    if not refine.model_dir:
        yield model
        return
    exported = predict.exported_prefix(refine.model_dir) is not None
    other = predict.open_model(refine.model_dir, None if exported else frame_sampling, seed,
                               None if exported else bf16_compute, num_threads=num_threads)
    try:
        yield other
    finally:
        other.close()


def video_top_classes(model: predict.LoadedModel, top_k: int, batch_size: int,
                      data_pattern: str = "", files: Optional[Sequence[str]] = None,
                      flag_name: str = "input_data_pattern", compression: str = "auto",
                      log: Optional[Log] = None) -> Dict[bytes, np.ndarray]:
    """{video id: its top_k classes (int64 [min(top_k, C)])} of the model's
    video-level predictions on data_pattern (or files), read by its own
    reader: top_k ints a video (metrics.top_k_classes)."""
    top: Dict[bytes, np.ndarray] = {}
    for batch in predict.iterate_predictions(model, data_pattern, batch_size,
                                             flag_name=flag_name, files=files, log=log,
                                             verb="refined", compression=compression):
        classes, _ = metrics.top_k_classes(batch.predictions, top_k)
        top.update(zip(batch.ids.tolist(), classes.astype(np.int64)))
    return top


def _top_of(top: Dict[bytes, np.ndarray], video_id: bytes) -> np.ndarray:
    try:
        return top[video_id]
    except KeyError:
        raise UserError(f"video {video_id.decode('utf-8', 'replace')}: has segments but no "
                        f"video-level prediction of the refine model (was it skipped as "
                        f"corrupt?)") from None


def class_mask(ids: np.ndarray, top: Dict[bytes, np.ndarray],
               class_ids: np.ndarray) -> np.ndarray:
    """bool [S, len(class_ids)]: segment s (of video ids[s]) may be listed
    under class class_ids[j] (the class is among its video's top classes)."""
    rows = np.stack([_top_of(top, video_id) for video_id in ids.tolist()]) \
        if len(ids) else np.empty((0, 1), np.int64)
    return (rows[:, :, None] == np.asarray(class_ids)[None, None, :]).any(axis=1)

