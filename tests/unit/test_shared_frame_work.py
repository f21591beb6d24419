"""The tiled ensemble's shared per-frame work (FrameModel.predict_tiles) is the
naive tiled graph on the same draws: frame indices, counts, the five
frame-sampling presets, and an exported ensemble."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import TEST_SIZE, TINY_CLASSES, TINY_GRU
from ensemble import build
from models import layers, presets
from models.tf_compat import tf
from support.members import make_member, starter_predictions
from training import member_graph, model_builder
from training.members import load_member

FEATURES = 1024 + 128
SAMPLING_PRESETS = [name for name in presets.PRESET_NAMES if name != "GRUModel"]


def tiny_hparams(name, frame_sampling_seed=5, **extra):
    """The preset's test size with a fixed frame_sampling_seed."""
    return {**presets.get(name).hparams_for(TEST_SIZE),
            "frame_sampling_seed": frame_sampling_seed, **extra}


def edge_batch(seed=0):
    """Videos of 0, 1, 7, 300 and 40 frames (zero rows after num_frames)."""
    rng = np.random.RandomState(seed)
    num_frames = np.array([0, 1, 7, 300, 40], np.int32)
    features = rng.uniform(-2.0, 2.0, (len(num_frames), 300, FEATURES)).astype(np.float32)
    for row, count in enumerate(num_frames):
        features[row, count:] = 0.0
    return features, num_frames


def randomise_batch_norm(sess, graph, rng):
    """Moving statistics, beta and gamma away from their initial 0 / 1, so
    that the input and cluster BN really act per frame."""
    for var in graph.get_collection(tf.GraphKeys.GLOBAL_VARIABLES):
        name = var.op.name.rsplit("/", 1)[-1]
        shape = var.shape.as_list()
        if name in ("moving_variance", "gamma"):
            var.load(np.abs(rng.normal(1.0, 0.3, shape)).astype(np.float32) + 0.1, sess)
        elif name in ("moving_mean", "beta"):
            var.load(rng.normal(0.0, 0.3, shape).astype(np.float32), sess)


# ---------------------------------------------------------------------------
# Draws


@pytest.mark.parametrize("mode", ["random", "uniform"])
def test_indices_are_the_draws_of_sample_frames(mode):
    features, num_frames = edge_batch()
    graph = tf.Graph()
    with graph.as_default():
        tf.set_random_seed(3)
        x = tf.constant(features)
        n = tf.constant(num_frames)
        sampled = layers.sample_frames(x, n, 50, mode=mode, seed=9)
        indices = layers.sample_frame_indices(n, 50, mode=mode, seed=9)
        gathered = tf.gather(x, indices, batch_dims=1)
    with tf.Session(graph=graph) as sess:
        sampled, indices, gathered = sess.run([sampled, indices, gathered])
    np.testing.assert_array_equal(sampled, gathered)
    # Within the valid frames, and row 0 (all zero) for the zero-frame video.
    assert np.all(indices >= 0)
    assert np.all(indices < np.maximum(num_frames, 1)[:, None])
    assert np.all(indices[0] == 0) and np.all(indices[1] == 0)
    if mode == "random":   # with replacement: repeats in a 7-frame video
        assert len(np.unique(indices[2])) <= 7


def test_frame_counts():
    rng = np.random.RandomState(0)
    indices = rng.randint(0, 30, size=(3, 4, 50)).astype(np.int32)
    graph = tf.Graph()
    with graph.as_default():
        counts = layers.frame_counts(tf.constant(indices), 30)
        assert counts.shape.as_list() == [3, 4, 30]
        dynamic = layers.frame_counts(tf.constant(indices), tf.constant(30))
    with tf.Session(graph=graph) as sess:
        counts, dynamic = sess.run([counts, dynamic])
    expected = np.zeros((3, 4, 30), np.float32)
    for t in range(3):
        for b in range(4):
            expected[t, b] = np.bincount(indices[t, b], minlength=30)
    np.testing.assert_array_equal(counts, expected)
    np.testing.assert_array_equal(dynamic, expected)
    assert np.all(counts.sum(axis=-1) == 50)


# ---------------------------------------------------------------------------
# Models


def _tiny_model(name, **extra):
    model_flags = model_builder.make_model_flags(name, "rgb,audio", "1024,128", True,
                                                 TINY_CLASSES, "CrossEntropyLoss",
                                                 tiny_hparams(name, **extra))
    return model_builder.build_model(model_flags)


@pytest.mark.slow
@pytest.mark.parametrize("name", SAMPLING_PRESETS)
def test_predict_tiles_equals_the_naive_tiled_graph(name):
    """Same graph and op seeds: the same draws, so the same predictions."""
    tiles = 3
    features, num_frames = edge_batch(1)
    model = _tiny_model(name)
    assert model.supports_shared_frame_work
    graph = tf.Graph()
    with graph.as_default():
        tf.set_random_seed(11)
        x = tf.placeholder(tf.float32, [None, 300, FEATURES])
        n = tf.placeholder(tf.int32, [None])
        with tf.variable_scope("tower", reuse=tf.AUTO_REUSE):
            naive = model_builder.model_predictions(model, tf.tile(x, [tiles, 1, 1]),
                                                    tf.tile(n, [tiles]), is_training=False)
            shared = model_builder.model_tile_predictions(model, x, n, tiles)
            tiles_out = model.predict_tiles(layers.l2_normalize_frames(x), n, tiles,
                                            fingerprints=layers.video_fingerprints(x, n))
            mean = tf.reduce_mean(tf.reshape(tiles_out, [tiles, -1, model.num_classes]), axis=0)
        variables = model_builder.model_variables("tower")
        init = tf.global_variables_initializer()
    with tf.Session(graph=graph) as sess:
        sess.run(init)
        randomise_batch_norm(sess, graph, np.random.RandomState(2))
        naive, shared, mean = sess.run([naive, shared, mean], {x: features, n: num_frames})
    assert naive.shape == shared.shape == (tiles * len(num_frames), TINY_CLASSES)
    assert np.all(np.isfinite(shared))
    np.testing.assert_allclose(shared, naive, rtol=1e-5, atol=1e-7)
    per_tile = shared.reshape(tiles, len(num_frames), TINY_CLASSES)
    np.testing.assert_allclose(mean, per_tile.mean(axis=0), rtol=1e-5, atol=1e-7)
    # Independent draws: the tiles of a 300-frame video differ; the videos of
    # 0 and 1 frames have one possible draw.
    assert not np.allclose(per_tile[0, 3], per_tile[1, 3])
    np.testing.assert_allclose(per_tile[0, :2], per_tile[1, :2], rtol=1e-5, atol=1e-7)
    # One set of variables, named as the naive graph names them.
    assert len({v.op.name for v in variables}) == len(variables)


@pytest.mark.parametrize("name", ["nonlocal-NetVLADModel", "Soft-DBoF-8k"])
def test_explicit_indices_equal_the_gathered_frames(name):
    """predict_tiles on given draws = the model on those frames (no sampling)."""
    model = _tiny_model(name)
    tiles, samples = 2, model.hparams["num_samples"]
    features, num_frames = edge_batch(2)
    rng = np.random.RandomState(4)
    indices = np.stack([rng.randint(0, max(int(n), 1), size=(tiles, samples))
                        for n in num_frames], axis=1).astype(np.int32)       # [T, B, N]
    fixed = _tiny_model(name, frame_sampling="none")
    graph = tf.Graph()
    with graph.as_default():
        x = tf.placeholder(tf.float32, [None, 300, FEATURES])
        n = tf.placeholder(tf.int32, [None])
        with tf.variable_scope("tower", reuse=tf.AUTO_REUSE):
            shared = model_builder.model_tile_predictions(model, x, n, tiles,
                                                          indices=tf.constant(indices))
            frames = tf.gather(tf.tile(x, [tiles, 1, 1]),
                               tf.reshape(tf.constant(indices), [tiles * 5, samples]),
                               batch_dims=1)                                 # [T*B, N, D]
            direct = model_builder.model_predictions(fixed, frames,
                                                     tf.fill([tiles * 5], samples), False)
        init = tf.global_variables_initializer()
    with tf.Session(graph=graph) as sess:
        sess.run(init)
        randomise_batch_norm(sess, graph, np.random.RandomState(5))
        shared, direct = sess.run([shared, direct], {x: features, n: num_frames})
    np.testing.assert_allclose(shared, direct, rtol=1e-5, atol=1e-7)


def test_models_without_shared_path():
    gru = model_builder.build_model(model_builder.make_model_flags(
        "GRUModel", "rgb,audio", "1024,128", True, TINY_CLASSES, "CrossEntropyLoss", TINY_GRU))
    assert not gru.supports_shared_frame_work
    assert not _tiny_model("Soft-DBoF-4k", frame_sampling="none").supports_shared_frame_work
    with pytest.raises(NotImplementedError):
        gru.predict_tiles(None, None, 2)


# ---------------------------------------------------------------------------
# Ensemble export


@pytest.fixture(scope="module")
def seeded_members(tmp_path_factory):
    """Tiny members with a fixed frame_sampling_seed (so that two graphs draw
    the same frames): NetVLAD fp32, Soft-DBoF bf16, early NetVLAD bf16, GRU."""
    root = tmp_path_factory.mktemp("seeded")
    return [
        make_member(root / "netvlad", "nonlocal-NetVLADModel", seed=1,
                    **tiny_hparams("nonlocal-NetVLADModel", 21)),
        make_member(root / "dbof", "Soft-DBoF-4k", bf16=True, seed=2,
                    **tiny_hparams("Soft-DBoF-4k", 22)),
        make_member(root / "early", "nonlocal-earlyNetVLADModel", bf16=True, seed=3,
                    **tiny_hparams("nonlocal-earlyNetVLADModel", 23)),
        make_member(root / "gru", "GRUModel", seed=4, **TINY_GRU),
    ]


@pytest.mark.slow
def test_exported_ensemble_shared_equals_naive(seeded_members, tmp_path):
    features, num_frames = edge_batch(3)
    weights = [1.0, 2.0, 3.0, 4.0]
    outputs = {}
    for shared in (True, False):
        out_dir = str(tmp_path / f"shared_{shared}")
        payload = build.build_and_export(seeded_members, weights, out_dir, tile_num=4,
                                         log=None, shared_frame_work=shared,
                                         bf16_compute="cast_each_step")
        assert payload.tiled == (True, True, True, False)
        assert payload.shared_frame_work == ((True, True, True, False) if shared
                                             else (False,) * 4)
        with open(os.path.join(out_dir, "ensemble.json")) as handle:
            assert json.load(handle)["shared_frame_work"] == list(payload.shared_frame_work)
        outputs[shared] = starter_predictions(out_dir, features, num_frames)
    assert np.all(np.isfinite(outputs[True]))
    np.testing.assert_allclose(outputs[True], outputs[False], rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_shared_is_the_default_and_the_flag(seeded_members, tmp_path):
    from conftest import run_module

    out_dir = str(tmp_path / "naive")
    run_module("ensemble.build", f"--model_dirs={','.join(seeded_members[:2])}",
               f"--output_dir={out_dir}", "--tile_num=2", "--noshared_frame_work")
    with open(os.path.join(out_dir, "ensemble.json")) as handle:
        assert json.load(handle)["shared_frame_work"] == [False, False]
    graph = tf.Graph()
    with graph.as_default():
        members = [load_member(d) for d in seeded_members]
        ensemble = member_graph.build_ensemble_graph(members, [0.25] * 4, 3)
    assert [member.shared for member in ensemble.members] == [True, True, True, False]
    # The shared graph never tiles the input when only the GRU is left untiled.
    assert not [op for op in graph.get_operations() if op.name.startswith("tile/")]
