"""Scores at the rated (segment, class) pairs of 2019 segment-rated records.

What a stage fits on 2019 ratings (stacking.fit --segment_labels) needs each
output's score of the rated class at every rated segment, not only the
metrics predict.evaluate_segments returns. rated_pair_scores runs the one
predict loop (training.predict.iterate_predictions with the model's
segment_reader) and keeps, per rated segment, the score of its rated class
of each output: every member of a members graph (predict.open_members), or
the one model of open_model. check_segment_records refuses, before any
work, records without the three rating lists (as training.eval
--segment_labels does).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from training import checkpoints, members, model_builder, predict, readers, segment_readers
from training.cli import UserError
from training.progress import Log


@dataclass
class RatedPairs:
    """S rated (segment, class) pairs, in file order; M outputs."""
    ids: np.ndarray          # [S] bytes: the segment's video
    start_times: np.ndarray  # [S] int64: the segment's first frame
    classes: np.ndarray      # [S] int64: the rated class
    ratings: np.ndarray      # [S] bool: the human rating (score > 0)
    scores: np.ndarray       # [S, M] float32: output m's score of the rated class

    @property
    def num_videos(self) -> int:
        return int(np.unique(self.ids).size)


def check_segment_records(model_dir: str, files: Sequence[str], flag_name: str,
                          segment_size: int, compression: str = "auto") -> None:
    """readers.check_records with the segment reader of model_dir's model:
    records without segment_labels, segment_start_times and segment_scores
    (2018 data), or of another layout, are one line naming --<flag_name>.
    Nothing when the dir has no model_flags.json: loading the model says so."""
    if not model_dir or not os.path.isfile(os.path.join(model_dir,
                                                        checkpoints.MODEL_FLAGS_FILE)):
        return
    reader = model_builder.make_reader(members.read_member_flags(model_dir))
    readers.check_records(files, flag_name,
                          segment_readers.SegmentReader.like(reader, segment_size),
                          compression=compression,
                          reader_of=f"--segment_labels with the model of {model_dir}")


def rated_pair_scores(model: predict.LoadedModel, data_pattern: str, segment_size: int = 5,
                      batch_size: int = 64, num_readers: int = 1, max_segments: int = 0,
                      log: Optional[Log] = None, flag_name: str = "data_pattern",
                      compression: str = "auto") -> RatedPairs:
    """Every output's score of the rated class at each rated segment of
    data_pattern (max_segments > 0: the first that many). A members model
    (open_members) has one output per member, in its order; any other model
    one. Memory: 4 bytes per output and rating, whatever the classes."""
    outputs = model.member_predictions if model.kind == "members" else [model.predictions]
    fetches: predict.Fetches = {"outputs": (outputs, lambda batch: {})}
    # About five rated segments per video (the 2019 data; as evaluate_segments).
    videos = max(1, int(batch_size) // 5)
    ids, starts, classes, ratings, scores = [], [], [], [], []
    for batch in predict.iterate_predictions(
            model, data_pattern, videos, num_readers, flag_name, fetches,
            max_videos=max_segments, reader=predict.segment_reader(model, segment_size),
            log=log, verb="scored", compression=compression, unit="segments"):
        rated = batch.labels.astype(np.int64)
        rows = np.arange(rated.size)
        scores.append(np.stack([output[rows, rated] for output in batch.extras["outputs"]],
                               axis=1).astype(np.float32))
        ids.append(batch.ids)
        starts.append(batch.inputs["start_time"].astype(np.int64))
        classes.append(rated)
        ratings.append(batch.inputs["score"] > 0)
    if not scores:
        raise UserError(f"--{flag_name}={data_pattern}: the files hold no rated segments")
    return RatedPairs(np.concatenate(ids), np.concatenate(starts), np.concatenate(classes),
                      np.concatenate(ratings), np.concatenate(scores))
