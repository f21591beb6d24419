"""Input of the wrong kind refused before any work (training.readers.check_records)
and compressed TFRecords read like plain ones (--compression).

Records of the wrong kind (video-level Examples for a frame-level model and
the reverse, bytes that are no proto, the unlabelled test split where labels
are needed, plain records where distillation needs ``ensemble_labels``) are
refused in one line naming the flag and the file, before a model is loaded or
a graph built. GZIP and ZLIB copies of the tiny data train, evaluate, predict
and make teacher records exactly as the uncompressed files do. Fast: the
checks are called in-process; three command lines (run two at a time) check
that the entry points call them.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import TINY_CLASSES, run_module
from ensemble import build, inference
from models.tf_compat import tf
from prediction2tfrecord import write as teacher_write
from stacking import fit
from support.reliability import assert_user_error, sequence_example, train_config, write_records
from swa import average
from training import model_builder, predict, readers, train
from training import train_dir as train_dirs
from training.cli import UserError
from training.teacher_records import TeacherReader

FRAME_HINT = "check --record_kind / --feature_names"


def compressed_copy(pattern: str, dest, kind: str) -> str:
    """The files of `pattern` rewritten with compression `kind` ('GZIP' or
    'ZLIB') under dest (same names); -> the copies' glob."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in readers.resolve_files(pattern):
        with tf.io.TFRecordWriter(str(dest / os.path.basename(path)), kind) as writer:
            for record in tf.io.tf_record_iterator(path):
                writer.write(record)
    return str(dest / os.path.basename(pattern))


def check(files, reader=None, labels_needed_by: str = "", **kwargs) -> None:
    readers.check_records([str(path) for path in files], "eval_data_pattern",
                          reader or readers.FrameReader(num_classes=TINY_CLASSES),
                          labels_needed_by, **kwargs)


def refused(files, reader=None, labels_needed_by: str = "", **kwargs) -> str:
    with pytest.raises(UserError) as caught:
        check(files, reader, labels_needed_by, **kwargs)
    return str(caught.value)


# ---------------------------------------------------------------------------
# Compression: detection


def test_detect_compression(tmp_path):
    records = [b"abc", b"defg"]
    for kind in ("", "GZIP", "ZLIB"):
        path = tmp_path / f"plain{kind}.tfrecord"
        with tf.io.TFRecordWriter(str(path), kind) as writer:
            for record in records:
                writer.write(record)
        assert readers.detect_compression(str(path)) == kind
        assert list(tf.io.tf_record_iterator(str(path), kind)) == records
    # Uncompressed files whose first bytes look like the gzip magic (a first
    # record of 0x8b1f bytes) and a zlib header (0x9c78): the CRC of the
    # length decides.
    for size, head in ((0x8B1F, b"\x1f\x8b"), (0x9C78, b"\x78\x9c")):
        path = write_records(tmp_path / f"lookalike{size}.tfrecord", [b"x" * size])
        assert open(path, "rb").read(2) == head
        assert readers.detect_compression(path) == ""
    empty = tmp_path / "empty.tfrecord"
    empty.write_bytes(b"")
    assert readers.detect_compression(str(empty)) == ""
    files = [str(tmp_path / "plainGZIP.tfrecord"), str(tmp_path / "plain.tfrecord")]
    assert readers.file_compressions(files) == ["GZIP", ""]
    assert readers.file_compressions(files, "zlib") == ["ZLIB", "ZLIB"]
    assert readers.file_compressions(files, "none") == ["", ""]
    with pytest.raises(UserError, match=r"^--compression: must be one of auto, none, gzip, "
                                        r"zlib, got 'bzip2'$"):
        readers.file_compressions(files, "bzip2")


# ---------------------------------------------------------------------------
# Compression: every reading path gives the same result


@pytest.mark.slow
def test_compressed_copies_evaluate_and_predict_the_same(tiny_data, tiny_models, tmp_path):
    plain = str(tiny_data / "frame" / "validate*.tfrecord")
    copies = {kind: compressed_copy(plain, tmp_path / kind, kind) for kind in ("GZIP", "ZLIB")}
    model = predict.open_model(tiny_models["gru_swa"])
    try:
        expected = predict.evaluate_model(model, plain, batch_size=16)
        assert predict.evaluate_model(model, copies["GZIP"], batch_size=16) == expected
        assert predict.evaluate_model(model, copies["ZLIB"], batch_size=16, compression="zlib",
                                      skip_corrupt=True) == expected

        def by_file(files, **kwargs):
            return np.concatenate([batch.predictions for batch in predict.iterate_predictions(
                model, "", 16, files=files, **kwargs)])

        wanted = by_file(readers.resolve_files(plain))
        mixed = readers.resolve_files(copies["GZIP"]) + readers.resolve_files(copies["ZLIB"])
        np.testing.assert_array_equal(by_file(mixed[:1]), wanted)
        np.testing.assert_array_equal(by_file(mixed[1:], skip_corrupt=True), wanted)
        # Forced to 'none', a compressed file is damaged data: the line says why.
        with pytest.raises(UserError, match=r"^--eval_data_pattern: .*validate00\.tfrecord: "
                                            r".* \(the file looks GZIP-compressed; "
                                            r"--compression=auto reads it\)$"):
            predict.evaluate_model(model, copies["GZIP"], batch_size=16, compression="none")
    finally:
        model.close()


@pytest.mark.slow
def test_training_on_compressed_copies(tiny_data, tmp_path):
    """The same run on the GZIP and ZLIB copies (ZLIB through the skip-corrupt
    reader) ends at exactly the same loss as on the plain files."""
    plain = str(tiny_data / "frame" / "train*.tfrecord")
    model_flags = model_builder.make_model_flags("FrameMeanMoeModel", "rgb,audio", "1024,128",
                                                 True, TINY_CLASSES, "CrossEntropyLoss")
    losses = {}
    for kind, pattern, extra in (
            ("plain", plain, {}),
            ("GZIP", compressed_copy(plain, tmp_path / "gz", "GZIP"), {}),
            ("ZLIB", compressed_copy(plain, tmp_path / "zl", "ZLIB"),
             {"skip_corrupt_records": True, "compression": "zlib"})):
        train_dir = str(tmp_path / f"run_{kind}")
        train_dirs.prepare_train_dir(train_dir, model_flags, start_new=False)
        losses[kind] = train.train(model_flags, train_dir, pattern,
                                   train_config(max_steps=3, **extra), log=lambda _: None)["loss"]
    assert losses["GZIP"] == losses["plain"] == losses["ZLIB"], losses


def test_teacher_records_keep_the_input_compression(tiny_data, tmp_path):
    plain = str(tiny_data / "frame" / "validate*.tfrecord")
    gzipped = compressed_copy(plain, tmp_path / "gz", "GZIP")

    def teacher(ids, serialized):
        return [np.full(TINY_CLASSES, 0.25, np.float32) for _ in ids]

    outputs = {}
    for name, pattern in (("plain", plain), ("gzip", gzipped)):
        files = readers.resolve_files(pattern)
        teacher_write.write_teacher_records(files, str(tmp_path / f"out_{name}"), teacher,
                                            batch_size=8, log=lambda _: None)
        outputs[name] = [str(tmp_path / f"out_{name}" / os.path.basename(f)) for f in files]
    assert readers.file_compressions(outputs["gzip"]) == ["GZIP"]
    assert readers.file_compressions(outputs["plain"]) == [""]
    assert (list(tf.io.tf_record_iterator(outputs["gzip"][0], "GZIP"))
            == list(tf.io.tf_record_iterator(outputs["plain"][0])))
    reader = TeacherReader(num_classes=TINY_CLASSES)
    check(outputs["gzip"], reader, "distillation")
    assert refused(readers.resolve_files(plain), reader) == (
        f"--eval_data_pattern: {readers.resolve_files(plain)[0]}: its records have no "
        f"ensemble_labels (the teacher's scores: are these teacher records of "
        f"prediction2tfrecord.write?)")


# ---------------------------------------------------------------------------
# Record kinds


def test_wrong_kinds_are_named(tiny_data, tmp_path):
    frame = readers.resolve_files(str(tiny_data / "frame" / "train*.tfrecord"))
    video = readers.resolve_files(str(tiny_data / "video" / "train*.tfrecord"))
    video_reader = readers.VideoReader(num_classes=TINY_CLASSES)
    check(frame, labels_needed_by="evaluation")
    check(video, video_reader, "evaluation")
    assert refused(video, hint=FRAME_HINT) == (
        f"--eval_data_pattern: {video[0]}: holds video-level Examples (features mean_audio, "
        f"mean_rgb), but the model reads frame-level SequenceExamples (rgb, audio); "
        f"{FRAME_HINT}")
    assert refused(frame, video_reader, reader_of="the model of /m") == (
        f"--eval_data_pattern: {frame[0]}: holds frame-level SequenceExamples (feature lists "
        f"audio, rgb), but the model of /m reads video-level Examples (mean_rgb, mean_audio)")
    gzipped = readers.resolve_files(compressed_copy(str(tiny_data / "video" / "train00.tfrecord"),
                                                    tmp_path / "gz", "GZIP"))
    assert "holds video-level Examples" in refused(gzipped)
    noise = write_records(tmp_path / "noise.tfrecord",
                          [np.random.default_rng(0).integers(0, 256, 300, np.uint8).tobytes()])
    assert refused([noise]) == (f"--eval_data_pattern: {noise}: its first record is not a "
                                f"tf.train.Example or SequenceExample (is this YouTube-8M data?)")
    blank = write_records(tmp_path / "blank.tfrecord", [b""])
    assert refused([blank]) == (f"--eval_data_pattern: {blank}: its first record is not a "
                                f"YouTube-8M record (no id, no features)")
    # Files without records, or damaged from the first record on, are left to
    # the reader (its usual errors, or --skip_corrupt_records).
    empty = write_records(tmp_path / "empty.tfrecord", [])
    damaged = tmp_path / "damaged.tfrecord"
    damaged.write_bytes(b"not a TFRecord file at all")
    check([empty, damaged] + frame)


def test_labels_where_needed(tiny_data, tmp_path):
    test = readers.resolve_files(str(tiny_data / "frame" / "test*.tfrecord"))
    check(test)     # inference, teacher records: no labels needed
    assert refused(test, labels_needed_by="evaluation") == (
        f"--eval_data_pattern: {test[0]}: its records have no labels (the unlabelled test "
        f"split?); evaluation needs labelled records")
    # One unlabelled video first is not a test split; eight are.
    some = write_records(tmp_path / "some.tfrecord", [sequence_example(b"a", [], 3),
                                                       sequence_example(b"b", [1], 3)])
    check([some], labels_needed_by="evaluation")
    late = write_records(tmp_path / "late.tfrecord",
                         [sequence_example(b"v%d" % i, [] if i < readers.LABEL_RECORDS else [1], 2)
                          for i in range(readers.LABEL_RECORDS + 1)])
    assert "its records have no labels" in refused([late], labels_needed_by="evaluation")


def test_only_the_first_files_are_opened(tiny_data, tmp_path):
    good = sequence_example(b"g", [1], 2)
    files = [write_records(tmp_path / f"f{i:03d}.tfrecord", [good])
             for i in range(readers.CHECKED_FILES)]
    files.append(write_records(tmp_path / "z_last.tfrecord", [b"\x00\xff junk"]))
    check(files, labels_needed_by="evaluation")
    assert "z_last.tfrecord" in refused(files[1:])


def test_entry_points_refuse_before_loading(tiny_data, tiny_models, tmp_path, monkeypatch):
    """The stages called in-process (their main() with the flags they read)."""
    test = str(tiny_data / "frame" / "test*.tfrecord")
    video = str(tiny_data / "video" / "test*.tfrecord")
    with pytest.raises(UserError, match=r"^--data_pattern: .*test00\.tfrecord: its records "
                                        r"have no labels .*; stacking needs labelled records$"):
        fit.member_predictions([tiny_models["gru_swa"]], test, log=None)
    output = tmp_path / "s.csv"
    with pytest.raises(UserError, match=r"^--input_data_pattern: .*test00\.tfrecord: holds "
                                        r"video-level Examples .*, but the model of .*gru_swa "
                                        r"reads frame-level SequenceExamples \(rgb, audio\); "
                                        r"these are --record_kind=video records$"):
        inference.run(train_dir=tiny_models["gru_swa"], input_data_pattern=video,
                      output_file=str(output), log=None)
    assert not output.exists()
    out_dir = tmp_path / "out"
    common = {"eval_data_pattern": test, "compression": "auto", "output_dir": str(out_dir)}
    monkeypatch.setattr(average, "FLAGS", SimpleNamespace(
        train_dir=tiny_models["gru_train"], segment_labels=False, choose_window_on="",
        **common))
    with pytest.raises(UserError, match=r"^--eval_data_pattern: .*no labels.*evaluation"):
        average.main([])
    monkeypatch.setattr(build, "FLAGS", SimpleNamespace(
        model_dirs=tiny_models["gru_bf16"], weights="", weights_file="", **common))
    with pytest.raises(UserError, match=r"^--eval_data_pattern: .*no labels.*evaluation"):
        build.main([])
    monkeypatch.setattr(teacher_write, "FLAGS", SimpleNamespace(
        input_data_pattern=video, output_dir=str(out_dir), batch_size=8, num_shard_groups=1,
        shard_index=0, bstart=None, bend=None, compression="auto"))
    with pytest.raises(UserError, match=r"^--input_data_pattern: .*holds video-level Examples "
                                        r".*, but prediction2tfrecord.write reads frame-level"):
        teacher_write.main([])
    assert not out_dir.exists()


@pytest.mark.slow
def test_command_lines_refuse_before_any_work(tiny_data, tiny_models, tmp_path):
    """Training on video-level records and evaluating the test split used to
    run (zero-frame videos; all-zero metrics); distillation on plain records
    failed at its first step. Each is now one line before any work."""
    train_dir, distill_dir = tmp_path / "train", tmp_path / "distill"
    small = [f"--num_classes={TINY_CLASSES}", "--batch_size=4", "--max_steps=1"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = [pool.submit(run_module, module, *args, check=False) for module, args in (
            ("training.train", [f"--train_dir={train_dir}", *small,
                                f"--train_data_pattern={tiny_data / 'video' / 'train*.tfrecord'}"]),
            ("training.eval", [f"--train_dir={tiny_models['gru_train']}", "--run_once",
                               f"--eval_data_pattern={tiny_data / 'frame' / 'test*.tfrecord'}"]),
            ("distillation.train", [f"--train_dir={distill_dir}", *small,
                                    f"--train_data_pattern="
                                    f"{tiny_data / 'frame' / 'train*.tfrecord'}"]))]
        trained, evaluated, distilled = [run.result() for run in runs]
    assert_user_error(trained, "--train_data_pattern: ", "train00.tfrecord: holds video-level "
                      "Examples (features mean_audio, mean_rgb), but the model reads frame-level "
                      "SequenceExamples (rgb, audio); these are --record_kind=video records; "
                      + FRAME_HINT)
    assert_user_error(evaluated, "--eval_data_pattern: ", "test00.tfrecord: its records have no "
                      "labels (the unlabelled test split?); evaluation needs labelled records")
    assert_user_error(distilled, "--train_data_pattern: ", "train00.tfrecord: its records have "
                      "no ensemble_labels")
    assert not train_dir.exists() and not distill_dir.exists()
