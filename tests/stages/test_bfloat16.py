"""bfloat16_patch.convert and training.precision: rounding, the converter, the
getter, and the chain train -> run_scripts/swa.sh -> run_scripts/bfloat16.sh ->
training.eval.
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bfloat16_patch import convert
from conftest import DBOF_FLAGS, REPO_ROOT, TINY_CLASSES, run_module
from models import layers
from models.tf_compat import tf
from training import checkpoint_fit, checkpoints, metrics, precision, predict
from training.cli import UserError
from training.model_flags import ModelFlags

BF16_UNIT_ROUNDOFF = 2.0 ** -8     # bf16 keeps 8 significant bits: |x - bf16(x)| <= 2^-8 |x|


def bfloat16_to_float32(values: np.ndarray) -> np.ndarray:
    """Exact widening of bf16 values (or uint16 bit patterns) to float32."""
    values = np.asarray(values)
    bits = values.view(np.uint16) if values.dtype != np.uint16 else values
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def getter_for_model_dir(model_dir: str):
    """The getter the latest checkpoint of a model dir needs."""
    checkpoint = checkpoints.find_checkpoint(model_dir)
    kind = checkpoint_fit.checkpoint_dtype(checkpoint)
    precision.check_dtype_marker(checkpoint, kind, checkpoints.read_model_flags(model_dir))
    return None if kind == checkpoint_fit.FLOAT32 else precision.bfloat16_getter


def restore(sess, checkpoint_path: str) -> None:
    """Every global variable from the checkpoint, checked first (training.checkpoint_fit)."""
    var_map = {variable.op.name: variable for variable in tf.global_variables()}
    checkpoint_fit.check_fits(checkpoint_path, var_map)
    tf.train.Saver(var_map).restore(sess, checkpoint_path)


# ---------------------------------------------------------------------------
# Rounding against an independent reference


def reference_bits(value_bits: int) -> str:
    """bf16 of one float32 bit pattern by comparing the distances (float64) to
    the two neighbouring bf16 values; ties go to the even one. Returns "nan" or
    the uint16 pattern as hex."""
    value = np.array([value_bits], np.uint32).view(np.float32)[0]
    if np.isnan(value):
        return "nan"
    sign = value_bits & 0x80000000
    magnitude = value_bits & 0x7FFFFFFF
    if magnitude == 0x7F800000:
        return f"{(value_bits >> 16):04x}"
    low = magnitude & 0xFFFF0000            # toward zero
    high = low + 0x10000                    # away from zero (0x7F800000 = inf)

    def as_float(bits):
        if bits == 0x7F800000:
            return 2.0 ** 128               # IEEE: overflow threshold as if unbounded
        return float(np.array([bits], np.uint32).view(np.float32)[0])

    x = float(np.array([magnitude], np.uint32).view(np.float32)[0])
    down, up = x - as_float(low), as_float(high) - x
    if down < up or (down == up and ((low >> 16) & 1) == 0):
        chosen = low
    else:
        chosen = high
    return f"{((sign | chosen) >> 16):04x}"


HAND_PICKED = {
    0x3F800000: "3f80",   # 1.0 exact
    0x3F808000: "3f80",   # 1 + 2^-8: tie, lower neighbour even -> down
    0x3F818000: "3f82",   # tie, lower neighbour odd -> up
    0x3F808001: "3f81",   # just above the tie -> up
    0x3F807FFF: "3f80",   # just below the tie -> down
    0xBF808000: "bf80",   # negative tie, even -> toward zero
    0xBF818000: "bf82",   # negative tie, odd -> away from zero
    0x7F7F7FFF: "7f7f",   # below half an ulp above the largest bf16
    0x7F7F8000: "7f80",   # tie above the largest bf16 (odd) -> inf
    0x7F7FFFFF: "7f80",   # largest float32 -> inf
    0xFF7FFFFF: "ff80",   # -> -inf
    0x7F800000: "7f80",   # inf
    0xFF800000: "ff80",   # -inf
    0x00000000: "0000",
    0x80000000: "8000",   # -0
    0x00000001: "0000",   # smallest denormal -> +0
    0x00008000: "0000",   # denormal tie, even -> down
    0x00018000: "0002",   # denormal tie, odd -> up
    0x00008001: "0001",   # denormal above the tie
    0x80008001: "8001",
    0x007FFFFF: "0080",   # largest denormal -> smallest normal
    0x00800000: "0080",   # smallest normal
}
NANS = [0x7FC00000, 0x7F800001, 0x7F80FFFF, 0xFFFFFFFF, 0x7FFFFFFF, 0xFFC00001]


def convert_bits(patterns):
    values = np.array(patterns, np.uint32).view(np.float32)
    return convert.float32_to_bfloat16_bits(values)


def test_hand_picked_patterns():
    got = convert_bits(list(HAND_PICKED))
    for (pattern, expected), result in zip(HAND_PICKED.items(), got):
        assert reference_bits(pattern) == expected, hex(pattern)   # the reference itself
        assert f"{int(result):04x}" == expected, hex(pattern)


def test_nan_stays_nan_with_sign():
    got = convert_bits(NANS)
    widened = bfloat16_to_float32(got)
    assert np.all(np.isnan(widened))
    # 0x7F800001 would become inf under truncation; the sign is kept.
    assert list(np.signbit(widened)) == [bool(p & 0x80000000) for p in NANS]


def test_random_patterns_match_reference_and_ml_dtypes():
    rng = np.random.RandomState(1)
    patterns = rng.randint(0, 2**32, size=3000, dtype=np.uint64).astype(np.uint32)
    # Many exact ties and near-ties too.
    patterns[:500] = (patterns[:500] & 0xFFFF0000) | 0x8000
    patterns[500:700] = (patterns[500:700] & 0xFFFF0000) | 0x7FFF
    got = convert_bits(patterns)
    for pattern, result in zip(patterns, got):
        expected = reference_bits(int(pattern))
        if expected == "nan":
            assert np.isnan(bfloat16_to_float32(np.array([result], np.uint16)))[0]
        else:
            assert f"{int(result):04x}" == expected, hex(int(pattern))
    # A second, vectorised comparison on many normal floats.
    values = (rng.standard_normal(200000) * np.exp(rng.uniform(-80, 80, 200000))).astype(
        np.float32)
    np.testing.assert_array_equal(convert.round_to_bfloat16(values).view(np.uint16),
                                  values.astype(convert.BFLOAT16_NUMPY).view(np.uint16))


def test_rounding_error_bound():
    values = np.random.RandomState(2).uniform(-1e3, 1e3, 10000).astype(np.float32)
    rounded = bfloat16_to_float32(convert.round_to_bfloat16(values))
    assert np.all(np.abs(rounded - values) <= BF16_UNIT_ROUNDOFF * np.abs(values))


# ---------------------------------------------------------------------------
# The converter on a hand-made checkpoint


def make_source_dir(directory: Path) -> dict:
    """A train-dir-like checkpoint: float and int model variables, Adam slots,
    global_step and beta powers."""
    rng = np.random.RandomState(3)
    values = {
        "tower/dense/weights": rng.standard_normal((300, 200)).astype(np.float32),
        "tower/dense/biases": rng.standard_normal(200).astype(np.float32),
        "tower/bn/moving_variance": rng.uniform(0, 2, 200).astype(np.float32),
        "tower/counter": np.array([7, -3, 2**40], np.int64),
        "tower/table": np.arange(12, dtype=np.int32).reshape(3, 4),
        "tower/dense/weights/Adam": np.ones((300, 200), np.float32),
        "tower/dense/weights/Adam_1": np.ones((300, 200), np.float32),
        "global_step": np.array(1234, np.int64),
        "beta1_power": np.array(0.9, np.float32),
    }
    # Edge values a finite checkpoint can hold (NaN and Inf are refused: test_non_finite;
    # their rounding: the bit-level tests above).
    values["tower/dense/biases"][:4] = [3.3e38, -3.3e38, 1e-40, 1.0 + 2**-8]
    directory.mkdir(parents=True)
    graph = tf.Graph()
    with graph.as_default():
        variables = {key: tf.Variable(value, name=f"v{i}")
                     for i, (key, value) in enumerate(values.items())}
        saver = tf.train.Saver(variables)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            saver.save(sess, str(directory / "model.ckpt"), global_step=1234,
                       write_meta_graph=False)
    checkpoints.write_model_flags(str(directory), ModelFlags(
        "FrameMeanMoeModel", "rgb,audio", "1024,128", True, 10))
    return values


def test_convert_checkpoint(tmp_path):
    values = make_source_dir(tmp_path / "src")
    summary = convert.convert_checkpoint(str(tmp_path / "src"), str(tmp_path / "bf16"), log=None)
    out = tmp_path / "bf16" / "model.ckpt-1234"
    reader = tf.train.load_checkpoint(str(out))
    dtypes = reader.get_variable_to_dtype_map()
    assert set(dtypes) == {"tower/dense/weights", "tower/dense/biases",
                           "tower/bn/moving_variance", "tower/counter", "tower/table"}
    for key in ("tower/dense/weights", "tower/dense/biases", "tower/bn/moving_variance"):
        assert dtypes[key] == tf.bfloat16
        stored = reader.get_tensor(key).view(np.uint16)
        expected = np.array([reference_bits(int(b)) for b in
                             values[key].ravel()[:50].view(np.uint32)])
        got = np.array([f"{int(b):04x}" for b in stored.ravel()[:50]])
        nan = expected == "nan"
        np.testing.assert_array_equal(got[~nan], expected[~nan])
        assert np.all(np.isnan(bfloat16_to_float32(stored.ravel()[:50][nan])))
        np.testing.assert_array_equal(stored, convert.float32_to_bfloat16_bits(values[key]))
    # Integers untouched: same dtype, same values.
    assert dtypes["tower/counter"] == tf.int64 and dtypes["tower/table"] == tf.int32
    np.testing.assert_array_equal(reader.get_tensor("tower/counter"), values["tower/counter"])
    np.testing.assert_array_equal(reader.get_tensor("tower/table"), values["tower/table"])

    model_bytes = sum(values[key].nbytes for key in dtypes)
    data = sum(os.path.getsize(p) for p in glob.glob(str(out) + ".data-*"))
    assert data <= 0.51 * model_bytes
    assert summary.input_model_variable_bytes == model_bytes
    assert summary.output_data_bytes == data
    flags = json.loads((tmp_path / "bf16" / "model_flags.json").read_text())
    assert flags == {"model": "FrameMeanMoeModel", "feature_names": "rgb,audio",
                     "feature_sizes": "1024,128", "frame_features": True, "num_classes": 10,
                     "label_loss": "CrossEntropyLoss", "checkpoint_dtype": "bfloat16"}
    assert checkpoint_fit.checkpoint_dtype(str(tmp_path / "src")) == "float32"
    assert checkpoint_fit.checkpoint_dtype(str(tmp_path / "bf16")) == "bfloat16"
    assert checkpoint_fit.checkpoint_dtype(str(out)) == "bfloat16"
    assert tf.train.latest_checkpoint(str(tmp_path / "bf16")) == str(out)
    # Converting again is idempotent.
    convert.convert_checkpoint(str(tmp_path / "bf16"), str(tmp_path / "again"), log=None)
    again = tf.train.load_checkpoint(str(tmp_path / "again" / "model.ckpt-1234"))
    np.testing.assert_array_equal(again.get_tensor("tower/dense/weights").view(np.uint16),
                                  reader.get_tensor("tower/dense/weights").view(np.uint16))


def test_convert_errors(tmp_path):
    make_source_dir(tmp_path / "src")
    (tmp_path / "taken").mkdir()
    with pytest.raises(UserError, match="taken: exists; choose another or pass --overwrite"):
        convert.convert_checkpoint(str(tmp_path / "src"), str(tmp_path / "taken"), log=None)
    with pytest.raises(UserError, match="would replace the input dir"):
        convert.convert_checkpoint(str(tmp_path / "src"), str(tmp_path / "src"),
                                   overwrite=True, log=None)
    os.remove(tmp_path / "src" / "model_flags.json")
    with pytest.raises(UserError, match=r"model_flags\.json: missing"):
        convert.convert_checkpoint(str(tmp_path / "src"), str(tmp_path / "out"), log=None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no model.ckpt-<step> checkpoint"):
        convert.convert_checkpoint(str(tmp_path / "empty"), str(tmp_path / "out"), log=None)
    assert not (tmp_path / "out").exists()
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]


# ---------------------------------------------------------------------------
# The getter


def small_model(custom_getter=None):
    inputs = tf.constant(np.random.RandomState(4).standard_normal((6, 5)).astype(np.float32))
    with tf.variable_scope("tower", custom_getter=custom_getter):
        hidden = layers.fully_connected(inputs, 3, "dense")
        outputs = layers.batch_norm(hidden, False, "bn")
        counter = tf.get_variable("counter", [2], dtype=tf.int64,
                                  initializer=tf.zeros_initializer())
    return outputs, counter


def test_getter_creates_bf16_variables_with_float32_views(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        outputs, counter = small_model(precision.bfloat16_getter)
        variables = {v.op.name: v for v in tf.global_variables()}
        assert outputs.dtype == tf.float32
        assert {name: v.dtype.base_dtype for name, v in variables.items()} == {
            "tower/dense/weights": tf.bfloat16, "tower/dense/biases": tf.bfloat16,
            "tower/bn/beta": tf.bfloat16, "tower/bn/gamma": tf.bfloat16,
            "tower/bn/moving_mean": tf.bfloat16, "tower/bn/moving_variance": tf.bfloat16,
            "tower/counter": tf.int64}
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            values = sess.run(variables)
    # The requested initializers are kept (not zeros as in the original patch).
    assert np.all(values["tower/bn/gamma"].astype(np.float32) == 1.0)
    assert np.abs(values["tower/dense/weights"].astype(np.float32)).max() > 0


def save_small_model(directory, custom_getter):
    graph = tf.Graph()
    with graph.as_default():
        outputs, _ = small_model(custom_getter)
        saver = tf.train.Saver()
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            path = saver.save(sess, os.path.join(directory, "model.ckpt"), global_step=1,
                              write_meta_graph=False)
            return path, sess.run(outputs)


def test_bf16_checkpoint_restores_through_getter(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    path, fp32_outputs = save_small_model(str(src), None)
    checkpoints.write_model_flags(str(src), ModelFlags("x", "rgb,audio", "1024,128", True, 10))
    convert.convert_checkpoint(str(src), str(tmp_path / "bf16"), log=None)
    graph = tf.Graph()
    with graph.as_default():
        outputs, _ = small_model(getter_for_model_dir(str(tmp_path / "bf16")))
        saver = tf.train.Saver()
        with tf.Session() as sess:
            saver.restore(sess, checkpoints.latest_checkpoint(str(tmp_path / "bf16")))
            bf16_outputs = sess.run(outputs)
    assert getter_for_model_dir(str(src)) is None
    assert not np.array_equal(bf16_outputs, fp32_outputs)
    np.testing.assert_allclose(bf16_outputs, fp32_outputs, rtol=0.05, atol=0.05)


def test_dtype_mismatch_is_a_user_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    fp32_path, _ = save_small_model(str(tmp_path / "a"), None)
    bf16_path, _ = save_small_model(str(tmp_path / "b"), precision.bfloat16_getter)
    for path, custom_getter, message in (
            (bf16_path, None, r"is a bfloat16 checkpoint .* but the graph is float32"),
            (fp32_path, precision.bfloat16_getter,
             r"is a float32 checkpoint .* but the graph is bfloat16")):
        graph = tf.Graph()
        with graph.as_default():
            small_model(custom_getter)
            with tf.Session() as sess:
                with pytest.raises(UserError, match=message) as raised:
                    restore(sess, path)
        assert str(raised.value).startswith(path) and "\n" not in str(raised.value)
    graph = tf.Graph()
    with graph.as_default():
        with tf.variable_scope("tower"):
            tf.get_variable("dense/weights", [5, 4])
        with pytest.raises(UserError, match=r"tower/dense/weights has shape \[5, 3\] in the "
                                            r"checkpoint but \[5, 4\]"):
            checkpoint_fit.check_fits(fp32_path, {v.op.name: v for v in tf.global_variables()})


# ---------------------------------------------------------------------------
# The chain on a trained model, through the run scripts


TRAIN_FLAGS = [*DBOF_FLAGS, f"--num_classes={TINY_CLASSES}", "--batch_size=4",
               "--max_steps=30", "--save_checkpoint_steps=10", "--num_readers=1",
               "--shuffle_buffer=32", "--log_steps=10", "--summary_steps=1000"]


def run_script(name, env, *args):
    completed = subprocess.run(["bash", str(REPO_ROOT / "run_scripts" / name), *args], cwd="/",
                               env={**os.environ, "PYTHON": sys.executable, **env},
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, (completed.stdout[-3000:], completed.stderr[-3000:])
    return completed


@pytest.fixture(scope="module")
def chain(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("bf16_chain")
    dirs = {"TRAIN_DIR": str(root / "train"), "SWA_DIR": str(root / "swa"),
            "BF16_DIR": str(root / "bf16"), "SWA_START": "20"}
    run_module("training.train", f"--train_dir={dirs['TRAIN_DIR']}",
               f"--train_data_pattern={tiny_data / 'frame' / 'train*.tfrecord'}", *TRAIN_FLAGS)
    swa_run = run_script("swa.sh", dirs, "--bn_statistics=recompute", "--recompute_batches=3",
                         "--batch_size=4",
                         f"--train_data_pattern={tiny_data / 'frame' / 'train*.tfrecord'}")
    bf16_run = run_script("bfloat16.sh", dirs)
    return {**dirs, "swa_stdout": swa_run.stdout, "bf16_stdout": bf16_run.stdout,
            "validate": str(tiny_data / "frame" / "validate*.tfrecord")}


@pytest.mark.slow
def test_chain_outputs(chain):
    swa_info = json.loads(Path(chain["SWA_DIR"], "swa.json").read_text())
    assert [c["step"] for c in swa_info["checkpoints"]] == [20, 30]
    assert swa_info["bn_statistics"] == "recompute"
    assert "averaging 2 checkpoints" in chain["swa_stdout"]
    swa_ckpt = checkpoints.latest_checkpoint(chain["SWA_DIR"])
    bf16_ckpt = checkpoints.latest_checkpoint(chain["BF16_DIR"])
    assert os.path.basename(swa_ckpt) == os.path.basename(bf16_ckpt) == "model.ckpt-30"
    assert checkpoint_fit.checkpoint_dtype(swa_ckpt) == "float32"
    assert checkpoint_fit.checkpoint_dtype(bf16_ckpt) == "bfloat16"
    ratio = convert.data_bytes(bf16_ckpt) / convert.data_bytes(swa_ckpt)
    assert ratio <= 0.51
    train_reader = tf.train.load_checkpoint(checkpoints.latest_checkpoint(chain["TRAIN_DIR"]))
    model_bytes = sum(int(np.prod(shape)) * 4 for key, shape in
                      train_reader.get_variable_to_shape_map().items()
                      if checkpoints.is_model_variable_key(key))
    assert convert.data_bytes(bf16_ckpt) <= 0.51 * model_bytes
    flags = checkpoints.read_model_flags(chain["BF16_DIR"])
    assert flags.checkpoint_dtype == "bfloat16" and flags.model == "Soft-DBoF-4k"


@pytest.mark.slow
def test_eval_cli_on_bf16_dir(chain):
    completed = run_module("training.eval", f"--train_dir={chain['BF16_DIR']}",
                           f"--eval_data_pattern={chain['validate']}", "--run_once",
                           "--batch_size=8", "--num_readers=1")
    assert "GAP" in completed.stdout
    result = json.loads(Path(chain["BF16_DIR"], "eval_results.json").read_text())
    assert result["num_examples"] == 32 and 0 < result["gap"] <= 1
    # An fp32 checkpoint against a dir marked bfloat16: one line, names the checkpoint.
    swa_ckpt = checkpoints.latest_checkpoint(chain["SWA_DIR"])
    completed = run_module("training.eval", f"--train_dir={chain['BF16_DIR']}",
                           f"--checkpoint_file={swa_ckpt}",
                           f"--eval_data_pattern={chain['validate']}", "--run_once",
                           check=False)
    assert completed.returncode == 2
    errors = [line for line in completed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and swa_ckpt in errors[0] and "float32" in errors[0]
    assert "Traceback" not in completed.stderr


def collect_predictions(model_dir, data_pattern):
    """(predictions, labels) of the dir's latest checkpoint; a bf16 checkpoint
    computes through precision.bfloat16_getter (cast_each_step: bf16
    variables, float32 math), a float32 one with plain variables."""
    model = predict.open_model(model_dir, frame_sampling="uniform",
                               bf16_compute=precision.CAST_EACH_STEP)
    predictions, labels = [], []
    try:
        for batch in predict.iterate_predictions(model, data_pattern, 8, num_readers=1):
            predictions.append(batch.predictions)
            labels.append(batch.labels)
    finally:
        model.close()
    return np.concatenate(predictions), np.concatenate(labels)


def test_bf16_predictions_differ_only_by_rounding(chain):
    fp32, labels = collect_predictions(chain["SWA_DIR"], chain["validate"])
    bf16, labels16 = collect_predictions(chain["BF16_DIR"], chain["validate"])
    np.testing.assert_array_equal(labels, labels16)
    difference = np.abs(bf16 - fp32)
    assert difference.max() > 0            # the bf16 weights were really used
    # Each weight moves by at most one relative rounding unit u = 2^-8; through
    # the few layers of the model (input BN, cluster layer + BN, hidden, MoE)
    # the probabilities (sigmoid/softmax slopes <= 1) move by a few u at most.
    assert difference.max() <= 4 * BF16_UNIT_ROUNDOFF
    confident = fp32 > 0.01
    assert (difference[confident] / fp32[confident]).max() <= 4 * BF16_UNIT_ROUNDOFF
    gap32 = metrics.global_average_precision(fp32, labels)
    gap16 = metrics.global_average_precision(bf16, labels)
    assert abs(gap32 - gap16) <= 0.001
