"""Model dirs made for ensemble tests: random members, a tiny GRU + Soft-DBoF
ensemble, and reference predictions of one member."""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from conftest import TINY_CLASSES, TINY_DBOF, TINY_GRU
from ensemble import build
from models.tf_compat import tf
from training import checkpoint_fit, checkpoints, model_builder, precision

FEATURES = 1024 + 128


def make_member(directory, model="FrameMeanMoeModel", bf16=False, seed=0,
                feature_sizes="1024,128", num_classes=TINY_CLASSES, **hparams):
    """A model dir with a randomly initialised checkpoint model.ckpt-1 (as a
    train dir: variables under tower/, plus global_step)."""
    model_flags = model_builder.make_model_flags(model, "rgb,audio", feature_sizes, True,
                                                 num_classes, "CrossEntropyLoss", hparams)
    width = sum(int(size) for size in feature_sizes.split(","))
    graph = tf.Graph()
    with graph.as_default():
        tf.set_random_seed(seed)
        features = tf.placeholder(tf.float32, [None, 300, width])
        num_frames = tf.placeholder(tf.int32, [None])
        with tf.variable_scope("tower", custom_getter=precision.bfloat16_getter if bf16 else None):
            model_builder.model_predictions(model_builder.build_model(model_flags), features,
                                            num_frames, is_training=False)
        tf.train.get_or_create_global_step()
        saver = tf.train.Saver()
        init = tf.global_variables_initializer()
    with tf.Session(graph=graph) as sess:
        sess.run(init)
        saver.save(sess, os.path.join(str(directory), "model.ckpt"), global_step=1)
    if bf16:
        model_flags = dataclasses.replace(model_flags, checkpoint_dtype="bfloat16")
    checkpoints.write_model_flags(str(directory), model_flags)
    return str(directory)


def tiny_gru_dbof_ensemble(root) -> dict:
    """A float32 GRU, a bf16 Soft-DBoF and their 3-tile ensemble under root."""
    gru = make_member(root / "gru", "GRUModel", seed=5, **TINY_GRU)
    dbof = make_member(root / "dbof", "Soft-DBoF-4k", bf16=True, seed=6, **TINY_DBOF)
    ensemble_dir = str(root / "ensemble")
    build.build_and_export([gru, dbof], [1, 1], ensemble_dir, tile_num=3, log=None)
    return {"gru": gru, "dbof": dbof, "ensemble": ensemble_dir}


def random_batch(batch=5, seed=0, width=FEATURES):
    """Raw (dequantised-like) frames, zero after num_frames, and num_frames."""
    rng = np.random.RandomState(seed)
    num_frames = rng.randint(3, 25, size=batch).astype(np.int32)
    features = rng.uniform(-2.0, 2.0, size=(batch, 300, width)).astype(np.float32)
    for row, count in enumerate(num_frames):
        features[row, count:] = 0.0
    return features, num_frames


def single_model_predictions(model_dir, features, num_frames, frame_sampling=None,
                             bf16_compute=None):
    """A member evaluated alone, independently of ensemble.build: its graph
    under tower/ (a bf16 checkpoint computes as bf16_compute says, default
    the ensemble's default), its checkpoint restored."""
    model_flags = checkpoints.read_model_flags(model_dir)
    checkpoint = checkpoints.latest_checkpoint(model_dir)
    bf16 = checkpoint_fit.checkpoint_dtype(checkpoint) == "bfloat16"
    mode = precision.check_bf16_compute(bf16_compute)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.placeholder(tf.float32, [None, 300, features.shape[-1]])
        n = tf.placeholder(tf.int32, [None])
        with tf.variable_scope("tower",
                               custom_getter=precision.getter_for_mode(mode) if bf16 else None):
            predictions = model_builder.model_predictions(
                model_builder.build_model(model_flags, {"frame_sampling": frame_sampling}),
                x, n, is_training=False)
        variables = {var.op.name: var for var in model_builder.model_variables("tower")}
        if bf16 and mode == precision.CAST_AT_LOAD:
            variables = precision.bfloat16_storage_saveables(variables)
        saver = tf.train.Saver(variables)
    with tf.Session(graph=graph) as sess:
        saver.restore(sess, checkpoint)
        return sess.run(predictions, {x: features, n: num_frames})


def starter_predictions(model_dir, features, num_frames):
    """The starter inference.py way: import_meta_graph, restore, feed the
    collections input_batch_raw and num_frames, fetch predictions."""
    graph = tf.Graph()
    with graph.as_default():
        saver = tf.train.import_meta_graph(os.path.join(model_dir, "inference_model.meta"),
                                           clear_devices=True)
        input_raw = tf.get_collection("input_batch_raw")[0]
        frames = tf.get_collection("num_frames")[0]
        predictions = tf.get_collection("predictions")[0]
        init = tf.local_variables_initializer()
    with tf.Session(graph=graph) as sess:
        sess.run(init)
        saver.restore(sess, os.path.join(model_dir, "inference_model"))
        return sess.run(predictions, {input_raw: features, frames: num_frames})


def checkpoint_dtypes(prefix):
    reader = tf.train.load_checkpoint(prefix)
    return {key: tf.as_dtype(dtype).name
            for key, dtype in reader.get_variable_to_dtype_map().items()}

