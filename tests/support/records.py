"""Reading the records a test wrote."""
from __future__ import annotations

from models.tf_compat import tf


def read_examples(path):
    return [tf.train.SequenceExample.FromString(r) for r in tf.io.tf_record_iterator(str(path))]


def frame_files(tiny_data, split="train"):
    return sorted(str(p) for p in (tiny_data / "frame").glob(f"{split}*.tfrecord"))
