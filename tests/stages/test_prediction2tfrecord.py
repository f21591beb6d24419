"""prediction2tfrecord.write: teacher records from a CSV or a model dir."""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from conftest import QUIET, decode_teacher, run_module, train_config
from prediction2tfrecord import write
from support.records import frame_files, read_examples
from training.cli import UserError

CSV_CLASSES = 50  # more than 20 so that all 20 pairs of a row are distinct labels


def video_ids(files):
    return [write.video_id_of(example, path) for path in files for example in read_examples(path)]


def write_csv(path, ids, num_classes=CSV_CLASSES, pairs=20, seed=0):
    """A submission CSV with `pairs` (label, score) pairs per video, as inference writes it."""
    rng = np.random.default_rng(seed)
    expected = {}
    lines = ["VideoId,LabelConfidencePairs"]
    for video_id in ids:
        labels = rng.choice(num_classes, size=pairs, replace=False)
        scores = np.sort(rng.uniform(0.0, 1.0, size=pairs))[::-1]
        text = " ".join("%i %g" % (label, score) for label, score in zip(labels, scores))
        lines.append(f"{video_id},{text}")
        vector = np.zeros(num_classes, np.float32)
        vector[labels] = [float("%g" % s) for s in scores]
        expected[video_id] = vector
    path.write_text("\n".join(lines) + "\n")
    return expected


@pytest.mark.slow
def test_csv_round_trip_keeps_records_and_encodes_all_pairs(tiny_data, tmp_path):
    files = frame_files(tiny_data)
    expected = write_csv(tmp_path / "teacher.csv", video_ids(files))
    out = tmp_path / "out"
    completed = run_module("prediction2tfrecord.write",
                           f"--input_data_pattern={tiny_data / 'frame' / 'train*.tfrecord'}",
                           f"--output_dir={out}", f"--teacher_csv={tmp_path / 'teacher.csv'}",
                           f"--num_classes={CSV_CLASSES}")
    assert "videos/sec" in completed.stdout and "done: 64 videos in 2 files" in completed.stdout
    assert sorted(os.listdir(out)) == [os.path.basename(f) for f in files]  # no temp files left
    for source in files:
        inputs = read_examples(source)
        outputs = read_examples(out / os.path.basename(source))
        assert len(outputs) == len(inputs) > 0
        for before, after in zip(inputs, outputs):
            video_id = write.video_id_of(before, source)
            teacher = decode_teacher(after)
            assert teacher.dtype == np.float32 and teacher.shape == (CSV_CLASSES,)
            np.testing.assert_array_equal(teacher, expected[video_id])
            assert np.count_nonzero(teacher) == 20  # all 20 pairs, not the original's 10
            raw = after.context.feature["ensemble_labels"].bytes_list.value[0]
            assert len(raw) == 4 * CSV_CLASSES
            np.testing.assert_array_equal(np.frombuffer(raw, "<f4"), expected[video_id])
            # Everything else unchanged: other context and the rgb/audio frame bytes.
            assert (after.feature_lists.SerializeToString(deterministic=True)
                    == before.feature_lists.SerializeToString(deterministic=True))
            context = dict(after.context.feature)
            del context["ensemble_labels"]
            assert context == dict(before.context.feature)

    # A rerun skips the shards already written (resume after a crash).
    again = run_module("prediction2tfrecord.write",
                       f"--input_data_pattern={tiny_data / 'frame' / 'train*.tfrecord'}",
                       f"--output_dir={out}", f"--teacher_csv={tmp_path / 'teacher.csv'}",
                       f"--num_classes={CSV_CLASSES}")
    assert again.stdout.count("exists, skipped") == 2
    assert "done: 0 videos in 0 files written, 2 files already present" in again.stdout


@pytest.mark.slow
def test_missing_id_is_an_error_or_skipped_and_counted(tiny_data, tmp_path):
    files = frame_files(tiny_data)
    ids = video_ids(files)
    missing = {ids[3], ids[40], ids[41]}
    write_csv(tmp_path / "teacher.csv", [i for i in ids if i not in missing])
    args = [f"--input_data_pattern={tiny_data / 'frame' / 'train*.tfrecord'}",
            f"--teacher_csv={tmp_path / 'teacher.csv'}", f"--num_classes={CSV_CLASSES}"]

    failed = run_module("prediction2tfrecord.write", *args, f"--output_dir={tmp_path / 'a'}",
                        check=False)
    assert failed.returncode != 0
    message = failed.stderr.strip().splitlines()[-1]
    assert message.startswith("error:") and ids[3] in message and "teacher.csv" in message
    assert "Traceback" not in failed.stderr
    assert not any(name.startswith(".") for name in os.listdir(tmp_path / "a"))  # temp removed

    skipped = run_module("prediction2tfrecord.write", *args, f"--output_dir={tmp_path / 'b'}",
                         "--skip_missing")
    assert "skipped 3 videos missing from the teacher" in skipped.stdout
    written = video_ids(sorted(str(p) for p in (tmp_path / "b").iterdir()))
    assert len(written) == len(ids) - 3 and not missing & set(written)


def test_csv_errors(tmp_path):
    bad_header = tmp_path / "bad.csv"
    bad_header.write_text("id,pairs\nabcd,1 0.5\n")
    with pytest.raises(UserError, match="header"):
        write.load_teacher_csv(str(bad_header), 10)
    bad_label = tmp_path / "label.csv"
    bad_label.write_text("VideoId,LabelConfidencePairs\nabcd,12 0.5\n")
    with pytest.raises(UserError, match=r"line 2: label 12 is outside \[0, 10\)"):
        write.load_teacher_csv(str(bad_label), 10)
    odd = tmp_path / "odd.csv"
    odd.write_text("VideoId,LabelConfidencePairs\nabcd,1 0.5 3\n")
    with pytest.raises(UserError, match="odd number"):
        write.load_teacher_csv(str(odd), 10)
    with pytest.raises(UserError, match="exactly one"):
        write.make_teacher("", "", 10)
    with pytest.raises(UserError, match="no such file"):
        write.make_teacher(str(tmp_path / "nope.csv"), "", 10)


def test_output_dir_must_differ_from_input(tiny_data, tmp_path):
    files = frame_files(tiny_data)

    class Teacher:
        def __call__(self, ids, serialized):
            return [np.zeros(10, np.float32) for _ in ids]

    with pytest.raises(UserError, match="--output_dir"):
        write.write_teacher_records(files, str(tiny_data / "frame"), Teacher(), log=lambda _: 0)


def test_shard_groups_split_files_disjointly():
    files = [f"/data/train{i:04d}.tfrecord" for i in range(11)]
    groups = [write.select_files(list(reversed(files)), 3, i) for i in range(3)]
    assert sorted(sum(groups, [])) == files
    assert all(not set(a) & set(b) for i, a in enumerate(groups) for b in groups[i + 1:])
    assert [len(g) for g in groups] == [4, 4, 3]
    # The original's bstart/bend slice of the sorted list.
    assert write.select_files(files, bstart=3, bend=6) == files[3:6]
    assert write.select_files(files, 2, 1, bstart=3, bend=9) == files[4:9:2]
    with pytest.raises(UserError, match="--shard_index"):
        write.select_files(files, 2, 2)
    with pytest.raises(UserError, match="--num_shard_groups"):
        write.select_files(files, 0, 0)


@pytest.mark.slow
def test_parallel_groups_write_every_file_once(tiny_data, tmp_path):
    files = frame_files(tiny_data)
    write_csv(tmp_path / "teacher.csv", video_ids(files))
    out = tmp_path / "out"
    for index in range(2):
        completed = run_module("prediction2tfrecord.write",
                               f"--input_data_pattern={tiny_data / 'frame' / 'train*.tfrecord'}",
                               f"--output_dir={out}", f"--teacher_csv={tmp_path / 'teacher.csv'}",
                               f"--num_classes={CSV_CLASSES}", "--num_shard_groups=2",
                               f"--shard_index={index}")
        assert "1 of 2 input files" in completed.stdout
        assert sorted(os.listdir(out)) == [os.path.basename(f) for f in files[:index + 1]]


@pytest.fixture(scope="module")
def teacher_model(tiny_data, tmp_path_factory):
    """A tiny trained model dir and a 2-member ensemble dir built from it."""
    from ensemble import build
    from training import model_builder
    from training import train as trainer
    from training import train_dir as train_dirs

    root = tmp_path_factory.mktemp("teacher_model")
    flags = model_builder.make_model_flags("FrameMeanMoeModel", "rgb,audio", "1024,128", True,
                                           10, "CrossEntropyLoss", {})
    config = train_config(**QUIET, base_learning_rate=0.02, max_steps=20)
    dirs = []
    for name, steps in (("model_a", 20), ("model_b", 5)):
        directory = str(root / name)
        train_dirs.prepare_train_dir(directory, flags, start_new=False)
        trainer.train(flags, directory, str(tiny_data / "frame" / "train*.tfrecord"),
                      dataclasses.replace(config, max_steps=steps), log=lambda _: None)
        dirs.append(directory)
    ensemble_dir = str(root / "ensemble")
    build.build_and_export(dirs, [0.25, 0.75], ensemble_dir, tile_num=1, log=None)
    return {"model": dirs[0], "ensemble": ensemble_dir}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["model", "ensemble"])
def test_teacher_dir_gives_the_models_predictions(tiny_data, teacher_model, tmp_path, kind):
    from training import predict

    pattern = str(tiny_data / "frame" / "validate*.tfrecord")
    out = tmp_path / "out"
    completed = run_module("prediction2tfrecord.write", f"--input_data_pattern={pattern}",
                           f"--output_dir={out}", f"--teacher_dir={teacher_model[kind]}",
                           "--num_classes=10", "--batch_size=12")
    assert "done: 32 videos in 1 files" in completed.stdout

    model = predict.open_model(teacher_model[kind])
    try:
        expected = {}
        for batch in predict.iterate_predictions(model, pattern, 16):
            expected.update({i.decode(): p for i, p in zip(batch.ids, batch.predictions)})
    finally:
        model.close()
    outputs = read_examples(out / "validate00.tfrecord")
    assert len(outputs) == len(expected) == 32
    for example in outputs:
        teacher = decode_teacher(example)
        # Full vectors (every class), equal to the model's own predictions.
        np.testing.assert_allclose(teacher, expected[write.video_id_of(example, "")],
                                   rtol=1e-5, atol=1e-7)
        assert np.count_nonzero(teacher) == 10


@pytest.mark.slow
def test_teacher_dir_class_count_must_match(teacher_model, tiny_data, tmp_path):
    failed = run_module("prediction2tfrecord.write",
                        f"--input_data_pattern={tiny_data / 'frame' / 'validate*.tfrecord'}",
                        f"--output_dir={tmp_path / 'out'}",
                        f"--teacher_dir={teacher_model['model']}", "--num_classes=3862",
                        check=False)
    assert failed.returncode != 0
    assert "predicts 10 classes but --num_classes=3862" in failed.stderr


def test_rerun_removes_temporaries_of_a_killed_run(tiny_data, tmp_path):
    """Whatever temporary files a killed writer of a shard left (the old
    host-and-pid names, atomic_file's names, a lock file with a dead pid) go:
    the rerun holds the shard's lock, so no live writer owns them."""
    import socket
    import subprocess

    files = frame_files(tiny_data)
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    leftovers = [out / f".train00.tfrecord.tmp-{host}-{dead.pid}",
                 out / f".train00.tfrecord.tmp-{host}-{os.getppid()}",
                 out / ".train01.tfrecord.tmp-1a2b3c4d"]
    for path in leftovers:
        path.write_bytes(b"partial")
    (out / ".train00.tfrecord.lock").write_text(f"{dead.pid}\n")

    class Teacher:
        def __call__(self, ids, serialized):
            return [np.ones(10, np.float32) for _ in ids]

    totals = write.write_teacher_records(files, str(out), Teacher(), log=lambda _: None)
    assert totals["written"] == 64 and totals["files"] == 2
    assert sorted(os.listdir(out)) == ["train00.tfrecord", "train01.tfrecord"]
    assert all(np.all(decode_teacher(e) == 1)
               for e in read_examples(out / "train01.tfrecord"))
