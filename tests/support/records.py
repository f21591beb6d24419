"""Reading the records a test wrote."""
from __future__ import annotations

from models.tf_compat import tf


def read_examples(path):
    return [tf.train.SequenceExample.FromString(r) for r in tf.io.tf_record_iterator(str(path))]


def frame_files(tiny_data, split="train"):
    return sorted(str(p) for p in (tiny_data / "frame").glob(f"{split}*.tfrecord"))


def every_batch(batch):
    """Every value of `batch` (tensors of the current default graph) until
    its input ends, in a new session."""
    values = []
    with tf.Session() as sess:
        while True:
            try:
                values.append(sess.run(batch))
            except tf.errors.OutOfRangeError:
                return values
