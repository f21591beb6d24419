"""ensemble.build (with training.members, training.member_graph and
ensemble.export): the tiled ensemble graph, loading members, export, errors."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import TINY_CLASSES, TINY_DBOF, TINY_GRU, run_module
from ensemble import build, export
from models.tf_compat import tf
from support.members import (
    checkpoint_dtypes,
    make_member,
    random_batch,
    single_model_predictions,
    starter_predictions,
)
from training import member_graph, train
from training import train_dir as train_dirs
from training.cli import UserError
from training.members import load_member
from training.stage_files import WeightsFile
from training.weights_file import normalise_weights, write_weights_file

# ---------------------------------------------------------------------------
# Helpers (the shared ones: tests/support/members.py)


def builder_predictions(member_dirs, weights, tile_num, features, num_frames, seed=666,
                        force_tile=False, fetch_tiles=False):
    """Predictions of build_ensemble_graph in its own session (no export)."""
    members = [load_member(d) for d in member_dirs]
    graph = tf.Graph()
    with graph.as_default():
        tf.set_random_seed(seed)
        ensemble = member_graph.build_ensemble_graph(members, normalise_weights(weights),
                                                     tile_num, force_tile=force_tile)
        savers = member_graph.member_savers(members, ensemble)
    with tf.Session(graph=graph) as sess:
        member_graph.restore_members(sess, members, savers)
        fetches = {"predictions": ensemble.predictions,
                   "members": ensemble.member_predictions}
        if fetch_tiles:
            fetches["tiles"] = [m.tiles for m in ensemble.members if m.tiles is not None]
        out = sess.run(fetches, {ensemble.input_batch_raw: features,
                                 ensemble.num_frames: num_frames})
    return out, ensemble


# ---------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def zoo(tiny_data, tmp_path_factory):
    """Two trained FrameMeanMoeModel dirs, a bf16 copy of one, a tiny GRU and a
    tiny bf16 Soft-DBoF (random init)."""
    from bfloat16_patch import convert
    from conftest import train_config as tiny_config
    from support.training_runs import tiny_flags, train_pattern

    root = tmp_path_factory.mktemp("zoo")
    dirs = {}
    for name, seed in (("a", 1), ("b", 2)):
        dirs[name] = str(root / name)
        flags = tiny_flags()
        train_dirs.prepare_train_dir(dirs[name], flags, start_new=False)
        train.train(flags, dirs[name], train_pattern(tiny_data),
                    tiny_config(max_steps=8, save_checkpoint_steps=100, seed=seed),
                    log=lambda _: None)
    dirs["b_bf16"] = str(root / "b_bf16")
    convert.convert_checkpoint(dirs["b"], dirs["b_bf16"], log=None)
    dirs["gru"] = make_member(root / "gru", "GRUModel", seed=3, **TINY_GRU)
    dirs["dbof_bf16"] = make_member(root / "dbof_bf16", "Soft-DBoF-4k", bf16=True, seed=4,
                                    **TINY_DBOF)
    return dirs


# ---------------------------------------------------------------------------
# Export and starter-style loading


@pytest.mark.slow
def test_export_loads_like_starter_and_matches_builder(zoo, tmp_path):
    members = [zoo["a"], zoo["gru"], zoo["dbof_bf16"], zoo["b_bf16"]]
    weights = [1.0, 2.0, 3.0, 4.0]
    features, num_frames = random_batch(5)
    out_dir = str(tmp_path / "ensemble")
    payload = build.build_and_export(members, weights, out_dir, tile_num=3, log=None)

    names = sorted(os.listdir(out_dir))
    for name in ("inference_model.data-00000-of-00001", "inference_model.index",
                 "inference_model.meta", "model_flags.json", "ensemble.json"):
        assert name in names
    assert not [n for n in names if n.startswith(".")]
    with open(os.path.join(out_dir, "model_flags.json")) as handle:
        model_flags = json.load(handle)
    assert model_flags["model"] == "ensemble"
    assert (model_flags["feature_names"], model_flags["feature_sizes"],
            model_flags["frame_features"], model_flags["num_classes"]) == \
        ("rgb,audio", "1024,128", True, TINY_CLASSES)
    with open(os.path.join(out_dir, "ensemble.json")) as handle:
        saved = json.load(handle)
    assert saved == payload.to_json()
    assert saved["members"] == [os.path.abspath(d) for d in members]
    assert saved["weights"] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert saved["tile_num"] == 3 and saved["tiled"] == [False, False, True, False]
    assert saved["checkpoint_dtypes"] == ["float32", "float32", "bfloat16", "bfloat16"]
    assert saved["exported_bytes"] == sum(
        os.path.getsize(os.path.join(out_dir, n)) for n in names
        if n.startswith("inference_model."))

    # Variables: model<i>/..., bf16 where the member was, no global_step.
    dtypes = checkpoint_dtypes(os.path.join(out_dir, "inference_model"))
    assert "global_step" not in dtypes
    assert {key.split("/")[0] for key in dtypes} == {"model0", "model1", "model2", "model3"}
    assert {d for k, d in dtypes.items() if k.startswith(("model2/", "model3/"))} == {"bfloat16"}
    assert {d for k, d in dtypes.items() if k.startswith(("model0/", "model1/"))} == {"float32"}

    exported = starter_predictions(out_dir, features, num_frames)
    built, _ = builder_predictions(members, weights, 3, features, num_frames)
    assert exported.shape == (5, TINY_CLASSES)
    np.testing.assert_allclose(exported, built["predictions"], rtol=1e-5, atol=1e-6)
    assert np.all((exported >= 0) & (exported <= 1))


def test_weighted_mean_of_members(zoo, tmp_path):
    features, num_frames = random_batch(6, seed=1)
    alone = [single_model_predictions(zoo[name], features, num_frames) for name in ("a", "b")]
    assert not np.allclose(alone[0], alone[1])
    # The weights come from a stacking-style weights file with relative paths.
    weights_file = str(tmp_path / "weights.json")
    with open(weights_file, "w") as handle:
        json.dump({"members": [os.path.relpath(zoo["b"], str(tmp_path)),
                               os.path.relpath(zoo["a"], str(tmp_path))],
                   "weights": [3.0, 1.0], "gap": 0.5}, handle)
    dirs, weights = build.resolve_members_and_weights(f"{zoo['a']},{zoo['b']}", "",
                                                      weights_file)
    assert weights == pytest.approx([0.25, 0.75])
    out_dir = str(tmp_path / "ensemble")
    build.build_and_export(dirs, weights, out_dir, tile_num=10, log=None)
    exported = starter_predictions(out_dir, features, num_frames)
    np.testing.assert_allclose(exported, 0.25 * alone[0] + 0.75 * alone[1],
                               rtol=1e-5, atol=1e-6)
    # FrameMeanMoeModel samples no frames: nothing is tiled.
    with open(os.path.join(out_dir, "ensemble.json")) as handle:
        assert json.load(handle)["tiled"] == [False, False]

    # Without --model_dirs the members of the file are the ensemble.
    dirs, weights = build.resolve_members_and_weights("", "", weights_file)
    assert dirs == [os.path.normpath(zoo["b"]), os.path.normpath(zoo["a"])]
    assert weights == pytest.approx([0.75, 0.25])
    # The writer's format round-trips.
    written = str(tmp_path / "written.json")
    write_weights_file(written, WeightsFile(members=(zoo["a"], zoo["b"]), weights=(2, 6)))
    assert build.resolve_members_and_weights("", "", written)[1] == pytest.approx([0.25, 0.75])


def test_uniform_default_and_weights_flag():
    dirs, weights = build.resolve_members_and_weights("x,y,z", "", "")
    assert dirs == ["x", "y", "z"] and weights == pytest.approx([1 / 3] * 3)
    assert build.resolve_members_and_weights("x,y", "1,3", "")[1] == pytest.approx([0.25, 0.75])
    for bad, text in (("1", "1 weights for 2"), ("1,-1", ">= 0"), ("0,0", "sum to 0"),
                      ("1,nan", "finite"), ("a,b", "numbers")):
        with pytest.raises(UserError, match=text):
            build.resolve_members_and_weights("x,y", bad, "")


def test_tiles_only_frame_sampling_members(zoo):
    features, num_frames = random_batch(4, seed=2)
    members = [zoo["gru"], zoo["dbof_bf16"]]
    out, ensemble = builder_predictions(members, [1, 1], 4, features, num_frames,
                                        fetch_tiles=True)
    assert [m.tiled for m in ensemble.members] == [False, True]
    (tiles,) = out["tiles"]
    assert tiles.shape == (4, 4, TINY_CLASSES)
    # Independent draws per copy, and the member's prediction is their mean.
    assert not np.allclose(tiles[0], tiles[1])
    np.testing.assert_allclose(out["members"][1], tiles.mean(axis=0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out["predictions"], 0.5 * (out["members"][0] + out["members"][1]),
                               rtol=1e-5, atol=1e-7)

    # The GRU is deterministic: tiling it changes nothing (so it runs once).
    gru_alone = single_model_predictions(zoo["gru"], features, num_frames)
    np.testing.assert_allclose(out["members"][0], gru_alone, rtol=1e-5, atol=1e-7)
    forced, forced_graph = builder_predictions([zoo["gru"]], [1], 4, features, num_frames,
                                               force_tile=True, fetch_tiles=True)
    assert [m.tiled for m in forced_graph.members] == [True]
    for copy in forced["tiles"][0]:
        np.testing.assert_allclose(copy, gru_alone, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(forced["predictions"], gru_alone, rtol=1e-5, atol=1e-7)


def test_mixed_bf16_and_fp32_members(zoo, tmp_path):
    features, num_frames = random_batch(4, seed=3)
    members = [zoo["a"], zoo["b_bf16"]]
    out_dir = str(tmp_path / "ensemble")
    build.build_and_export(members, [1, 1], out_dir, tile_num=2, log=None)
    fp32 = single_model_predictions(zoo["a"], features, num_frames)
    bf16 = single_model_predictions(zoo["b_bf16"], features, num_frames)
    full = single_model_predictions(zoo["b"], features, num_frames)
    assert np.abs(bf16 - full).max() < 0.05      # bf16 storage, float32 compute
    exported = starter_predictions(out_dir, features, num_frames)
    np.testing.assert_allclose(exported, 0.5 * (fp32 + bf16), rtol=1e-5, atol=1e-6)
    dtypes = checkpoint_dtypes(os.path.join(out_dir, "inference_model"))
    sizes = tf.train.load_checkpoint(
        os.path.join(out_dir, "inference_model")).get_variable_to_shape_map()
    expected = sum(int(np.prod(sizes[k])) * (2 if dtypes[k] == "bfloat16" else 4) for k in sizes)
    assert os.path.getsize(os.path.join(out_dir, "inference_model.data-00000-of-00001")) == \
        expected
    assert {dtypes[k] for k in dtypes if k.startswith("model1/")} == {"bfloat16"}


def test_scope_matching_is_exact(zoo):
    """model1 must not take model10's variables (11 members)."""
    dirs = [zoo["a"]] * 11
    members = [load_member(d) for d in dirs]
    graph = tf.Graph()
    with graph.as_default():
        ensemble = member_graph.build_ensemble_graph(members, [1 / 11] * 11, 1)
    sizes = {len(member.restore_map) for member in ensemble.members}
    assert sizes == {len(ensemble.members[0].restore_map)}
    second = ensemble.members[1].restore_map
    assert all(key.startswith("tower/") for key in second)
    assert all(var.op.name.startswith("model1/") for var in second.values())


# ---------------------------------------------------------------------------
# Errors


def test_missing_checkpoint_and_dir(zoo, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with open(os.path.join(zoo["a"], "model_flags.json")) as handle:
        (empty / "model_flags.json").write_text(handle.read())
    with pytest.raises(UserError, match=f"{empty}: no model.ckpt"):
        build.build_and_export([zoo["a"], str(empty)], [1, 1], str(tmp_path / "out"), log=None)
    with pytest.raises(UserError, match="no such model dir"):
        build.build_and_export([str(tmp_path / "nope")], [1], str(tmp_path / "out"), log=None)
    assert not (tmp_path / "out").exists()


def test_mismatched_members(zoo, tmp_path):
    small = make_member(tmp_path / "small", feature_sizes="512,128")
    with pytest.raises(UserError,
                       match=r"small: feature_sizes=512,128 but .* has feature_sizes=1024,128"):
        build.build_and_export([zoo["a"], small], [1, 1], str(tmp_path / "out"), log=None)
    classes = make_member(tmp_path / "classes", num_classes=7)
    with pytest.raises(UserError, match="num_classes=7"):
        build.build_and_export([zoo["a"], classes], [1, 1], str(tmp_path / "out"), log=None)
    assert not (tmp_path / "out").exists()


def test_checkpoint_of_another_model(zoo, tmp_path):
    # model_flags.json says GRU, the checkpoint holds a FrameMeanMoeModel.
    liar = make_member(tmp_path / "liar")
    with open(os.path.join(zoo["gru"], "model_flags.json")) as handle:
        (tmp_path / "liar" / "model_flags.json").write_text(handle.read())
    with pytest.raises(UserError, match=r"liar: checkpoint model.ckpt-1 lacks variable tower/"):
        build.build_and_export([liar], [1], str(tmp_path / "out"), log=None)
    # Same model, another size: a shape error naming the variable.
    wide = make_member(tmp_path / "wide", moe_num_mixtures=3)
    with open(os.path.join(zoo["a"], "model_flags.json")) as handle:
        (tmp_path / "wide" / "model_flags.json").write_text(handle.read())
    with pytest.raises(UserError, match=r"wide: variable tower/\S+ has shape"):
        build.build_and_export([wide], [1], str(tmp_path / "out"), log=None)


def test_output_dir_rules(zoo, tmp_path):
    out_dir = tmp_path / "out"
    build.build_and_export([zoo["a"]], [1], str(out_dir), tile_num=1, log=None)
    with pytest.raises(UserError, match="exists; choose another or pass --overwrite"):
        build.build_and_export([zoo["a"]], [1], str(out_dir), log=None)
    build.build_and_export([zoo["a"], zoo["b"]], [1, 1], str(out_dir), overwrite=True, log=None)
    with open(out_dir / "ensemble.json") as handle:
        assert len(json.load(handle)["members"]) == 2
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(UserError, match="not an ensemble dir"):
        build.build_and_export([zoo["a"]], [1], str(other), overwrite=True, log=None)
    assert (other / "precious.txt").read_text() == "keep me"
    with pytest.raises(UserError, match="holds member"):
        build.build_and_export([zoo["a"]], [1], os.path.dirname(zoo["a"]), overwrite=True,
                               log=None)


def test_size_limit(zoo, tmp_path, monkeypatch):
    lines = []
    build.build_and_export([zoo["a"]], [1], str(tmp_path / "ok"), log=lines.append)
    assert any("exported size:" in line and "1,073,741,824" in line for line in lines)
    monkeypatch.setattr(export, "SIZE_LIMIT_BYTES", 1000)
    with pytest.raises(UserError, match="over the 1,000-byte"):
        build.build_and_export([zoo["a"]], [1], str(tmp_path / "big"), log=None)
    assert not (tmp_path / "big").exists()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".big")]
    build.build_and_export([zoo["a"]], [1], str(tmp_path / "big"), allow_oversize=True,
                           log=None)
    assert (tmp_path / "big" / "inference_model.meta").is_file()


@pytest.mark.slow
def test_command_line_with_evaluation(zoo, tiny_data, tmp_path):
    out_dir = str(tmp_path / "ensemble")
    pattern = str(tiny_data / "frame" / "validate*.tfrecord")
    done = run_module("ensemble.build", f"--model_dirs={zoo['a']},{zoo['dbof_bf16']}",
                      "--weights=3,1", "--tile_num=2", f"--output_dir={out_dir}",
                      f"--eval_data_pattern={pattern}", "--batch_size=16")
    assert "exported size:" in done.stdout and "GAP" in done.stdout
    with open(os.path.join(out_dir, "eval_results.json")) as handle:
        result = json.load(handle)
    assert result["num_examples"] == 32 and 0 <= result["gap"] <= 1
    assert result["checkpoint"] == os.path.join(out_dir, "inference_model")
    assert result["eval_files"] == 1 and list(result["evaluations"]) == [result["key"]]
    failed = run_module("ensemble.build", f"--model_dirs={zoo['a']}", f"--output_dir={out_dir}",
                        check=False)
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "exists" in failed.stderr and "Traceback" not in failed.stderr
