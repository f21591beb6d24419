"""ensemble.inference (with ensemble.export and training.predict): the
submission CSV, upload archives, single model dirs."""
from __future__ import annotations

import io
import os
import tarfile

import numpy as np
import pytest

from conftest import TINY_CLASSES, run_module
from ensemble import export, inference
from ensemble.check_submission import check_submission
from models.tf_compat import tf
from support.members import single_model_predictions, tiny_gru_dbof_ensemble
from training import metrics, readers
from training.cli import UserError

TOP_K = 5


def record_ids(pattern):
    """The video ids of the records, read without our reader."""
    ids = []
    for path in readers.resolve_files(pattern):
        for record in tf.io.tf_record_iterator(path):
            example = tf.train.SequenceExample.FromString(record)
            ids.append(example.context.feature["id"].bytes_list.value[0].decode("utf-8"))
    return ids


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_gru_dbof_ensemble(tmp_path_factory.mktemp("inference_models"))


def read_rows(path):
    with open(path) as handle:
        lines = handle.read().splitlines()
    return lines[0], [line.split(",", 1) for line in lines[1:]]


@pytest.mark.slow
def test_csv_on_unlabelled_test_split(models, unlabelled, tmp_path):
    output = str(tmp_path / "sub" / "submission.csv")
    lines = []
    count = inference.run(train_dir=models["ensemble"], input_data_pattern=unlabelled,
                          output_file=output, batch_size=7, top_k=TOP_K, log=lines.append)
    ids = record_ids(unlabelled)
    assert count == len(ids) == 32
    assert check_submission(output, num_classes=TINY_CLASSES, top_k=TOP_K,
                            expected_ids=ids) == 32
    header, rows = read_rows(output)
    assert header == "VideoId,LabelConfidencePairs"
    assert sorted(video for video, _ in rows) == sorted(ids)
    assert all(len(pairs.split()) == 2 * TOP_K for _, pairs in rows)
    assert any("videos/sec" in line for line in lines)
    assert not [n for n in os.listdir(tmp_path / "sub") if n != "submission.csv"]
    # 20 pairs asked, 10 classes: every class once.
    output20 = str(tmp_path / "all.csv")
    inference.run(train_dir=models["ensemble"], input_data_pattern=unlabelled,
                  output_file=output20, batch_size=32, log=None)
    assert check_submission(output20, num_classes=TINY_CLASSES) == 32


@pytest.mark.slow
def test_csv_scores_are_the_models_predictions(models, unlabelled, tmp_path):
    """The single-model path writes the top-k of the model's own predictions."""
    output = str(tmp_path / "gru.csv")
    inference.run(train_dir=models["gru"], input_data_pattern=unlabelled, output_file=output,
                  batch_size=10, top_k=TOP_K, log=None)
    assert check_submission(output, num_classes=TINY_CLASSES, top_k=TOP_K) == 32
    reader = readers.get_reader(True, "rgb,audio", "1024,128", TINY_CLASSES)
    graph = tf.Graph()
    with graph.as_default():
        batch = tf.data.make_one_shot_iterator(readers.make_dataset(
            reader, unlabelled, 64, training=False)).get_next()
    with tf.Session(graph=graph) as sess:
        data = sess.run(batch)
    expected = single_model_predictions(models["gru"], data["features"], data["num_frames"])
    _, rows = read_rows(output)
    by_id = dict(rows)
    for video, row in zip(data["id"], expected):
        values = by_id[video.decode("utf-8")].split()
        labels = [int(v) for v in values[0::2]]
        scores = [float(v) for v in values[1::2]]
        assert labels == list(np.argsort(-row, kind="stable")[:TOP_K])
        np.testing.assert_allclose(scores, row[labels], rtol=1e-5)


@pytest.mark.slow
def test_model_tgz_round_trip(models, unlabelled, tmp_path):
    tgz = str(tmp_path / "upload" / "model.tgz")
    first = str(tmp_path / "first.csv")
    second = str(tmp_path / "second.csv")
    inference.run(train_dir=models["ensemble"], output_model_tgz=tgz,
                  input_data_pattern=unlabelled, output_file=first, batch_size=8,
                  top_k=TOP_K, log=None)
    with tarfile.open(tgz) as tar:
        assert sorted(tar.getnames()) == sorted(export.UPLOAD_FILES)
    inference.run(input_model_tgz=tgz, input_data_pattern=unlabelled, output_file=second,
                  batch_size=8, top_k=TOP_K, log=None)
    with open(first) as a, open(second) as b:
        assert a.read() == b.read()


@pytest.mark.slow
def test_single_model_dir_and_its_upload(models, unlabelled, tmp_path):
    """A bf16 single model dir: CSV, and the exported upload gives the same CSV."""
    tgz = str(tmp_path / "single.tgz")
    first = str(tmp_path / "first.csv")
    second = str(tmp_path / "second.csv")
    inference.run(train_dir=models["dbof"], output_model_tgz=tgz,
                  input_data_pattern=unlabelled, output_file=first, batch_size=16,
                  top_k=TOP_K, frame_sampling="uniform", log=None)
    assert check_submission(first, num_classes=TINY_CLASSES, top_k=TOP_K) == 32
    inference.run(input_model_tgz=tgz, input_data_pattern=unlabelled, output_file=second,
                  batch_size=16, top_k=TOP_K, log=None)
    with open(first) as a, open(second) as b:
        assert a.read() == b.read()
    with tarfile.open(tgz) as tar:
        data = tar.getmember("inference_model.data-00000-of-00001").size
    # bf16 storage is kept in the upload: 2 bytes per value.
    values = sum(int(np.prod(shape)) for shape in tf.train.load_checkpoint(
        os.path.join(models["dbof"], "model.ckpt-1")).get_variable_to_shape_map().values())
    assert data < 2 * values + 1


def test_user_errors(models, unlabelled, tmp_path):
    with pytest.raises(UserError, match="give one, not both"):
        inference.run(train_dir=models["ensemble"], input_model_tgz="x.tgz",
                      input_data_pattern=unlabelled, output_file="x.csv")
    with pytest.raises(UserError, match="--frame_sampling: applies to a single model dir"):
        inference.run(train_dir=models["ensemble"], input_data_pattern=unlabelled,
                      output_file=str(tmp_path / "x.csv"), frame_sampling="uniform", log=None)
    with pytest.raises(UserError, match="no files match"):
        inference.run(train_dir=models["ensemble"], input_data_pattern=str(tmp_path / "none*"),
                      output_file=str(tmp_path / "x.csv"), log=None)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "model_flags.json").write_text(open(os.path.join(models["gru"],
                                                              "model_flags.json")).read())
    with pytest.raises(UserError, match="neither inference_model.meta nor"):
        inference.run(train_dir=str(empty), input_data_pattern=unlabelled,
                      output_file=str(tmp_path / "x.csv"), log=None)
    assert not (tmp_path / "x.csv").exists()


def test_unsafe_or_broken_tgz(tmp_path):
    evil = str(tmp_path / "evil.tgz")
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(UserError, match="outside the archive"):
        with export.extracted_model_tgz(evil):
            pass
    linked = str(tmp_path / "link.tgz")
    with tarfile.open(linked, "w:gz") as tar:
        info = tarfile.TarInfo("model_flags.json")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(UserError, match="not a regular file"):
        with export.extracted_model_tgz(linked):
            pass
    broken = tmp_path / "broken.tgz"
    broken.write_bytes(b"not a tar file")
    with pytest.raises(UserError, match="not a readable .tgz"):
        with export.extracted_model_tgz(str(broken)):
            pass
    assert not (tmp_path.parent / "escape.txt").exists()


def test_score_format_and_top_k():
    assert inference.format_score(1.0) == "1"
    assert inference.format_score(0.5) == "0.5"
    assert inference.format_score(0.0) == "0"
    assert inference.format_score(1.2345678e-05) == "0.0000123457"
    assert inference.format_score(0.123456789) == "0.123457"
    predictions = np.array([[0.1, 0.7, 0.7, 0.2], [0.0, 0.0, 1.0, 3e-7]], np.float32)
    labels, scores = metrics.top_k_classes(predictions, 3)
    assert labels.tolist() == [[1, 2, 3], [2, 3, 0]]
    lines = inference.format_lines(np.array([b"ab", b"cd"]), predictions, 3)
    assert lines == ["ab,1 0.7 2 0.7 3 0.2\n", "cd,2 1 3 0.0000003 0 0\n"]
    with pytest.raises(UserError, match="NaN"):
        inference.format_lines(np.array([b"x"]), np.array([[np.nan, 0.1]], np.float32), 2)


@pytest.mark.slow
def test_command_line(models, unlabelled, tmp_path):
    output = str(tmp_path / "cli.csv")
    done = run_module("ensemble.inference", f"--train_dir={models['ensemble']}",
                      f"--input_data_pattern={unlabelled}", f"--output_file={output}",
                      "--batch_size=16", f"--top_k={TOP_K}")
    assert "videos/sec" in done.stdout
    checked = run_module("ensemble.check_submission", f"--submission={output}",
                         f"--num_classes={TINY_CLASSES}", f"--top_k={TOP_K}")
    assert checked.stdout.strip() == "ok: 32 videos"
    failed = run_module("ensemble.inference", f"--train_dir={tmp_path / 'nope'}",
                        f"--input_data_pattern={unlabelled}", f"--output_file={output}",
                        check=False)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert "no such dir" in failed.stderr.strip().splitlines()[-1]
