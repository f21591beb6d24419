"""One place that imports TensorFlow in TF1 (graph) mode.

Every module of the project does ``from training.tf_compat import tf`` so that
v2 behaviour is disabled exactly once, before any graph is built, and the
start-up deprecation chatter is silenced unless the user asks for it
(TF_CPP_MIN_LOG_LEVEL=0).
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as _tf2  # noqa: E402

if os.environ["TF_CPP_MIN_LOG_LEVEL"] != "0":
    _tf2.get_logger().setLevel("ERROR")

import tensorflow.compat.v1 as tf  # noqa: E402

tf.disable_v2_behavior()

__all__ = ["tf"]
