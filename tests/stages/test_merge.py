"""Sharded inference (ensemble.inference --num_shards) and ensemble.merge:
per-video frame draws, parts per input file, one merged CSV, resumption."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO_ROOT, TINY_CLASSES, run_module, unlabelled_shards
from ensemble import inference, merge
from ensemble.check_submission import check_submission
from models import layers
from models.tf_compat import tf
from support.members import tiny_gru_dbof_ensemble
from training import predict, readers
from training.cli import UserError

TOP_K = 5


@pytest.fixture(scope="module")
def test_files(tmp_path_factory):
    """Five unlabelled test files of 9 videos (batches of 4 leave remainders)."""
    return unlabelled_shards(tmp_path_factory.mktemp("shard_data"), 5, 9, seed=3,
                             max_frames=40)


@pytest.fixture(scope="module")
def ensemble_dir(tmp_path_factory):
    return tiny_gru_dbof_ensemble(tmp_path_factory.mktemp("shard_models"))["ensemble"]


def all_videos(pattern):
    """(ids, features [N, 300, D], num_frames) of every video of pattern."""
    reader = readers.get_reader(True, "rgb,audio", "1024,128", TINY_CLASSES)
    with tf.Graph().as_default(), tf.Session() as sess:
        dataset = readers.make_dataset(reader, pattern, 64, training=False, num_parallel_reads=1)
        batch = sess.run(tf.data.make_one_shot_iterator(dataset).get_next())
    return batch["id"], batch["features"], batch["num_frames"]


def predict_rows(model, features, num_frames, batch_size, order):
    """Score rows of the videos, fed in `order` in batches of batch_size, by index."""
    rows = {}
    for start in range(0, len(order), batch_size):
        pick = order[start:start + batch_size]
        out = predict.predict_batch(model, features[pick], num_frames[pick])["predictions"]
        rows.update(zip(pick.tolist(), out))
    return np.stack([rows[i] for i in range(len(order))])


def test_frame_draws_depend_only_on_the_video(test_files):
    """The random draws of a video are the same in any batch, position and order."""
    _, features, num_frames = all_videos(test_files)
    graph = tf.Graph()
    with graph.as_default():
        raw = tf.placeholder(tf.float32, [None, 300, 1152])
        frames = tf.placeholder(tf.int32, [None])
        fingerprints = layers.video_fingerprints(raw, frames)
        with tf.variable_scope("model0"):
            draws = layers.sample_frame_indices(frames, 12, "random", fingerprints=fingerprints)
    rng = np.random.default_rng(0)
    with tf.Session(graph=graph) as sess:
        def run(order, size):
            out = {}
            for start in range(0, len(order), size):
                pick = order[start:start + size]
                values = sess.run(draws, {raw: features[pick], frames: num_frames[pick]})
                out.update(zip(pick.tolist(), values))
            return np.stack([out[i] for i in range(len(order))])
        reference = run(np.arange(len(features)), 64)
        for size in (1, 7, 64):
            assert np.array_equal(run(rng.permutation(len(features)), size), reference)
    # Draws differ between videos and stay within each video's frames.
    assert len({row.tobytes() for row in reference}) == len(reference)
    assert (reference < num_frames[:, None]).all()


def test_predictions_depend_only_on_the_video(ensemble_dir, test_files):
    """Batch 1, 7 and 64, in shuffled orders, score every video alike."""
    _, features, num_frames = all_videos(test_files)
    model = predict.open_model(ensemble_dir)
    rng = np.random.default_rng(1)
    try:
        reference = predict_rows(model, features, num_frames, 64, np.arange(len(features)))
        for size in (1, 7, 64):
            got = predict_rows(model, features, num_frames, size,
                               rng.permutation(len(features)))
            # The draws are identical; a batch of one may take another matmul
            # kernel, so the floats agree to rounding.
            np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-7)
    finally:
        model.close()


def sharded_csv(ensemble_dir, test_files, output, workers, batch_size=4):
    for index in range(workers):
        inference.run(train_dir=ensemble_dir, input_data_pattern=test_files,
                      output_file=output, batch_size=batch_size, top_k=TOP_K, log=None,
                      num_shards=workers, shard_index=index)
    return merge.merge(readers.resolve_files(test_files), output)


@pytest.mark.slow
def test_merged_csv_is_the_same_for_1_2_and_3_workers(ensemble_dir, test_files, tmp_path):
    texts = []
    for workers in (1, 2, 3):
        output = str(tmp_path / f"w{workers}" / "submission.csv")
        assert sharded_csv(ensemble_dir, test_files, output, workers) == 45
        with open(output, "rb") as handle:
            texts.append(handle.read())
    assert texts[0] == texts[1] == texts[2]
    check_submission(str(tmp_path / "w1" / "submission.csv"), num_classes=TINY_CLASSES,
                     top_k=TOP_K)
    # The one-process CSV (no shards) has the same lines.
    single = str(tmp_path / "single.csv")
    inference.run(train_dir=ensemble_dir, input_data_pattern=test_files, output_file=single,
                  batch_size=4, top_k=TOP_K, log=None)
    with open(single, "rb") as handle:
        assert handle.read() == texts[0]


@pytest.mark.slow
def test_a_rerun_redoes_only_unfinished_parts(ensemble_dir, test_files, tmp_path):
    output = str(tmp_path / "submission.csv")
    sharded_csv(ensemble_dir, test_files, output, 2)
    files = readers.resolve_files(test_files)
    csv_path, record_path = merge.part_paths(output, files[1])
    os.remove(record_path)                       # as if killed before the record
    kept = os.stat(merge.part_paths(output, files[0])[0]).st_mtime_ns
    lines = []
    inference.run(train_dir=ensemble_dir, input_data_pattern=test_files, output_file=output,
                  batch_size=4, top_k=TOP_K, log=lines.append, num_shards=2, shard_index=1)
    assert sum("written" in line for line in lines) == 1
    assert sum("done before" in line for line in lines) == 1
    assert os.stat(merge.part_paths(output, files[0])[0]).st_mtime_ns == kept
    assert merge.merge(files, output, overwrite=True) == 45


@pytest.mark.slow
def test_merge_refuses_missing_foreign_and_duplicate_parts(ensemble_dir, test_files, tmp_path):
    output = str(tmp_path / "submission.csv")
    sharded_csv(ensemble_dir, test_files, output + ".base", 1)
    files = readers.resolve_files(test_files)
    shutil.copytree(merge.parts_dir(output + ".base"), merge.parts_dir(output))
    csv_path, record_path = merge.part_paths(output, files[2])
    away = str(tmp_path / "record.json")
    os.rename(record_path, away)
    with pytest.raises(UserError, match=r"test02\.tfrecord\.csv: missing"):
        merge.merge(files, output)
    os.rename(away, record_path)
    # A part of another run (other --top_k) is foreign.
    with open(record_path) as handle:
        record = json.load(handle)
    with open(record_path, "w") as handle:
        json.dump({**record, "run": "0" * 64}, handle)
    with pytest.raises(UserError, match="written by another run"):
        merge.merge(files, output)
    with open(record_path, "w") as handle:
        json.dump(record, handle)
    # A file outside the pattern.
    with pytest.raises(UserError, match="outside --input_data_pattern"):
        merge.merge(files[:-1], output)
    # A video in two parts.
    with open(csv_path, "a") as handle:
        with open(merge.part_paths(output, files[0])[0]) as first:
            handle.write(first.readline())
    digest = merge.file_digest(csv_path)
    with open(record_path, "w") as handle:
        json.dump({**record, "sha256": digest}, handle)
    with pytest.raises(UserError, match="is also in an earlier part"):
        merge.merge(files, output)
    assert not os.path.exists(output)


@pytest.mark.slow
def test_merge_and_shards_on_the_command_line(ensemble_dir, test_files, tmp_path):
    output = str(tmp_path / "submission.csv")
    started_at = time.time() - 1
    for index in range(2):
        run_module("ensemble.inference", f"--train_dir={ensemble_dir}",
                   f"--input_data_pattern={test_files}", f"--output_file={output}",
                   "--batch_size=4", f"--top_k={TOP_K}", "--num_shards=2",
                   f"--shard_index={index}", "--num_threads=1")
    progress = run_module("ensemble.merge", f"--input_data_pattern={test_files}",
                          f"--output_file={output}", "--progress")
    assert "5/5 files done, 45 of about 45 videos" in progress.stdout
    timed = run_module("ensemble.merge", f"--input_data_pattern={test_files}",
                       f"--output_file={output}", "--progress", f"--started_at={started_at}")
    assert "videos/sec | ETA 0:00:00" in timed.stdout
    done = run_module("ensemble.merge", f"--input_data_pattern={test_files}",
                      f"--output_file={output}")
    assert "45 videos from 5 parts" in done.stdout
    assert check_submission(output, num_classes=TINY_CLASSES, top_k=TOP_K) == 45
    bad = run_module("ensemble.inference", f"--train_dir={ensemble_dir}",
                     f"--input_data_pattern={test_files}", f"--output_file={output}",
                     "--num_shards=2", "--shard_index=2", check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == ["error: --shard_index: must be in [0, 2), got 2"]


@pytest.mark.slow
def test_ensemble_infer_script_runs_workers_and_merges(ensemble_dir, test_files, tmp_path):
    """run_scripts/ensemble_infer.sh with 2 workers on the CPU: the merged CSV
    equals the one-process CSV; a rerun keeps the finished parts."""
    output = tmp_path / "submission.csv"
    env = {**os.environ, "PYTHON": sys.executable, "MODEL_DIR": ensemble_dir,
           "TEST_PATTERN": test_files, "OUTPUT_FILE": str(output), "NUM_WORKERS": "2",
           "BATCH_SIZE": "4", "TOP_K": str(TOP_K), "NUM_CLASSES": str(TINY_CLASSES),
           "PROGRESS_SECONDS": "2", "PATH": "/usr/bin:/bin"}
    script = str(REPO_ROOT / "run_scripts" / "ensemble_infer.sh")
    for _ in range(2):
        done = subprocess.run(["bash", script], env=env, cwd=str(tmp_path),
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "ok: 45 videos" in done.stdout
    logs = [(tmp_path / "submission.csv.parts" / f".worker-{i}.log").read_text()
            for i in range(2)]
    assert all("done before" in log and "written" not in log for log in logs)
    single = str(tmp_path / "single.csv")
    inference.run(train_dir=ensemble_dir, input_data_pattern=test_files, output_file=single,
                  batch_size=4, top_k=TOP_K, log=None)
    assert output.read_bytes() == open(single, "rb").read()
