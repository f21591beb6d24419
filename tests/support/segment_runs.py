"""Model dirs and 2019 segment ratings with a known best: for choosing an
averaging window and stacking weights on segments
(tests/stages/test_swa_segments.py, test_stacking_segments.py).

The ratings are rewritten from one model's scores (rate_by_model), so that
model ranks every class's rated segments perfectly (Segment MAP 1.0) whatever
the synthetic generator makes learnable; no training is needed."""
from __future__ import annotations

import glob
import os
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from models.tf_compat import tf
from support.members import make_member
from training import checkpoints, predict, synthetic


def random_checkpoints(train_dir: str, steps, seed: int = 0) -> str:
    """A FrameMeanMoeModel train dir holding model.ckpt-<step> for each step,
    each an independent random initialisation (model variables only)."""
    os.makedirs(train_dir)
    for offset, step in enumerate(steps):
        with tempfile.TemporaryDirectory() as scratch:
            source = checkpoints.find_checkpoint(make_member(Path(scratch), seed=seed + offset))
            reader = tf.train.load_checkpoint(source)
            dtypes = reader.get_variable_to_dtype_map()
            specs = [(key, shape, tf.as_dtype(dtypes[key]))
                     for key, shape in sorted(reader.get_variable_to_shape_map().items())
                     if key.startswith(checkpoints.MODEL_SCOPE + "/")]
            checkpoints.write_arrays_checkpoint(
                os.path.join(train_dir, f"{checkpoints.CHECKPOINT_PREFIX}-{step}"), specs,
                reader.get_tensor)
            if offset == 0:
                os.replace(os.path.join(scratch, checkpoints.MODEL_FLAGS_FILE),
                           os.path.join(train_dir, checkpoints.MODEL_FLAGS_FILE))
    return train_dir


def rate_by_model(pattern: str, model_dir: str, output_dir: str,
                  checkpoint: Optional[str] = None) -> str:
    """Copies the segment files of pattern into output_dir with every rating
    rewritten: 1 when model_dir's score of the rated class is above that
    class's median over its rated segments, else 0. -> the copies' pattern."""
    model = predict.open_model(model_dir, checkpoint=checkpoint)
    try:
        pairs = predict.rated_pair_scores(model, pattern, batch_size=50)
    finally:
        model.close()
    medians = {c: np.median(pairs.scores[pairs.classes == c, 0]) for c in set(pairs.classes)}
    rating = {(video, int(start), int(c)): float(score > medians[c])
              for video, start, c, score in zip(pairs.ids, pairs.start_times, pairs.classes,
                                                pairs.scores[:, 0])}
    os.makedirs(output_dir, exist_ok=True)
    for path in sorted(glob.glob(pattern)):
        records = []
        for record in tf.io.tf_record_iterator(path):
            example = tf.train.SequenceExample.FromString(record)
            context = example.context.feature
            video = context["id"].bytes_list.value[0]
            scores = context["segment_scores"].float_list.value
            starts = context["segment_start_times"].int64_list.value
            classes = context["segment_labels"].int64_list.value
            scores[:] = [rating[(video, int(start), int(c))] for start, c in zip(starts, classes)]
            records.append(example.SerializeToString(deterministic=True))
        synthetic.write_records(os.path.join(output_dir, os.path.basename(path)), records)
    return os.path.join(output_dir, os.path.basename(pattern))
