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

Record layouts (--record_kind, training.record_layouts): each kind trains,
evaluates and predicts on its synthetic records (2017 ones from
training.synthetic's year=2017); records of another layout than the one
asked are one line naming the file, the missing key and the --record_kind
that reads them.
"""
from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import TINY_CLASSES, run_module, segment_data
from ensemble import build, inference
from models.tf_compat import tf
from prediction2tfrecord import write as teacher_write
from stacking import fit
from support.reliability import assert_user_error, sequence_example, train_config, write_records
from swa import average
from training import (
    checkpoints,
    model_builder,
    predict,
    readers,
    record_layouts,
    synthetic,
    train,
)
from training import eval as evaluation
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
def test_command_lines_refuse_before_any_work(tiny_data, tiny_models, kind_files, tmp_path):
    """Training on video-level records and evaluating the test split used to
    run (zero-frame videos; all-zero metrics); distillation on plain records
    failed at its first step; training on 2017 records without their
    --record_kind failed at its first step, in TensorFlow's words ("...
    Inconsistent max number of elements for feature id: expected 1, but
    found 0"). Each is now one line before any work.
    Mutation tried: train.main without kind_of (its lines lose the
    --record_kind of the records)."""
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
                                    f"{tiny_data / 'frame' / 'train*.tfrecord'}"]),
            ("training.train", [f"--train_dir={train_dir}", *small,
                                f"--train_data_pattern={kind_files['frame2017']}"]))]
        trained, evaluated, distilled, trained_2017 = [run.result() for run in runs]
    assert_user_error(trained, "--train_data_pattern: ", "train00.tfrecord: holds video-level "
                      "Examples (features mean_audio, mean_rgb), but the model reads frame-level "
                      "SequenceExamples (rgb, audio); these are --record_kind=video records; "
                      + FRAME_HINT)
    assert_user_error(evaluated, "--eval_data_pattern: ", "test00.tfrecord: its records have no "
                      "labels (the unlabelled test split?); evaluation needs labelled records")
    assert_user_error(distilled, "--train_data_pattern: ", "train00.tfrecord: its records have "
                      "no ensemble_labels")
    assert_user_error(trained_2017, "--train_data_pattern: ", "train00.tfrecord: no 'id' "
                      "feature (these records have 'video_id': read them with "
                      "--record_kind=frame2017)")
    assert not train_dir.exists() and not distill_dir.exists()


# ---------------------------------------------------------------------------
# Record layouts: --record_kind

KINDS = ("frame", "video", "segment", "frame2017", "video2017")


@pytest.fixture(scope="module")
def kind_files(tiny_data, tmp_path_factory) -> dict:
    """{kind: the pattern of synthetic records of that layout}."""
    root = tmp_path_factory.mktemp("records_2017")
    synthetic.write_dataset(str(root), split="train", num_shards=1, videos_per_shard=16,
                            num_classes=TINY_CLASSES, seed=7, min_frames=5, max_frames=20,
                            year=2017)
    return {"frame": str(tiny_data / "frame" / "validate*.tfrecord"),
            "video": str(tiny_data / "video" / "validate*.tfrecord"),
            "segment": segment_data(tmp_path_factory, "records_2019", videos_per_shard=8),
            "frame2017": str(root / "frame" / "train*.tfrecord"),
            "video2017": str(root / "video" / "train*.tfrecord")}


def kind_flags(kind: str):
    """The model_flags of a tiny FrameMeanMoeModel reading `kind`."""
    layout = record_layouts.layout(kind)
    return model_builder.make_model_flags("FrameMeanMoeModel", layout.feature_names,
                                          layout.feature_sizes, kind, TINY_CLASSES,
                                          "CrossEntropyLoss")


def test_records_of_another_layout_are_one_line(kind_files):
    """Every (asked kind, records' kind) pair: the kind's own records pass
    (and 2019 segment records read as frames); any other is one line naming
    the file and the --record_kind of the records, and where the level
    agrees the missing key. Mutations tried: check_records without the id
    check (_check_id) lets the 2017/2018 pairs pass; kind_of_record taking
    the first layout that fits instead of the most specific names
    --record_kind=frame for the segment records read as frame2017."""
    for asked in KINDS:
        reader = model_builder.make_reader(kind_flags(asked))
        for records in KINDS:
            files = readers.resolve_files(kind_files[records])
            if records == asked or (asked, records) == ("frame", "segment"):
                check(files, reader, kind_of=record_layouts.kind_of_record)
                continue
            line = refused(files, reader, kind_of=record_layouts.kind_of_record)
            assert line.startswith(f"--eval_data_pattern: {files[0]}: ") and "\n" not in line
            assert f"--record_kind={records}" in line, (asked, records, line)
            wanted, found = record_layouts.layout(asked), record_layouts.layout(records)
            if wanted.frame_level != found.frame_level:
                assert "holds " in line, line
            elif wanted.id_key != found.id_key:
                assert line.endswith(f": no {wanted.id_key!r} feature (these records have "
                                     f"{found.id_key!r}: read them with --record_kind="
                                     f"{records})"), line
            else:
                assert "its records have no segment_labels" in line, line


@pytest.mark.slow
def test_each_kind_trains_evaluates_and_infers(kind_files, tmp_path):
    """Each kind the trainer trains on: 2 steps, its model_flags.json (the
    kind named for 2017 only), the evaluation and the CSV of its records
    (the ids of video_id for 2017); a frame model scores the segments of
    2019 records. Mutations tried: FrameReader parsing context["id"] again
    (no id_key) fails the 2017 frame kind at its first step; the synthetic
    writer ignoring year fails the check of the records' key."""
    for kind in ("frame", "video", "frame2017", "video2017"):
        pattern = kind_files[kind]
        first = tf.train.SequenceExample.FromString(next(iter(tf.io.tf_record_iterator(
            readers.resolve_files(pattern)[0]))))
        id_key = record_layouts.layout(kind).id_key
        assert id_key in first.context.feature, kind
        flags, train_dir = kind_flags(kind), str(tmp_path / kind)
        train_dirs.prepare_train_dir(train_dir, flags, start_new=False)
        train.train(flags, train_dir, pattern, train_config(max_steps=2), log=lambda _: None)
        recorded = checkpoints.read_model_flags(train_dir)
        assert recorded.layout() == kind
        assert (recorded.record_kind is None) == (kind in ("frame", "video"))
        result = predict.evaluate_model_dir(train_dir, pattern, batch_size=16)
        assert result.num_examples == (32 if kind in ("frame", "video") else 16), kind
        output = tmp_path / f"{kind}.csv"
        assert inference.run(train_dir=train_dir, input_data_pattern=pattern,
                             output_file=str(output), log=None) == result.num_examples
        first_id = first.context.feature[id_key].bytes_list.value[0].decode()
        assert output.read_text().splitlines()[1].startswith(first_id + ","), kind
    frame_dir = str(tmp_path / "frame")
    segments = evaluation.evaluate_checkpoint(frame_dir, checkpoints.checkpoint_in_dir(frame_dir),
                                              kind_files["segment"], segment_size=5)
    assert segments.num_segments > 0 and 0.0 <= segments.segment_map <= 1.0


@pytest.mark.slow
def test_record_kind_on_the_command_lines(kind_files, tiny_models, tmp_path):
    """--record_kind through the entry points: the trainer records
    video2017, eval and inference default to the dir's kind;
    --record_kind=segment is --segment_labels for eval and inference (an old
    model_flags.json, no record_kind). Mutations tried: model_flags_from_flags ignoring
    --record_kind (a frame model) fails the train run; eval's _records_kind
    returning the model's kind for --record_kind=segment evaluates the
    segments as videos (no Segment_MAP)."""
    train_dir, csv = tmp_path / "video2017", tmp_path / "v.csv"
    small = ["--model=FrameMeanMoeModel", "--batch_size=4", "--max_steps=2",
             f"--num_classes={TINY_CLASSES}"]
    pattern = kind_files["video2017"]
    segments = kind_files["segment"]
    # (A copy: the evaluation writes its results into the dir.)
    frame_dir = shutil.copytree(tiny_models["gru_train"], tmp_path / "gru_train")

    def video2017_chain() -> list:
        return [run_module("training.train", f"--train_dir={train_dir}", *small,
                           f"--train_data_pattern={pattern}", "--record_kind=video2017"),
                run_module("training.eval", f"--train_dir={train_dir}", "--run_once",
                           f"--eval_data_pattern={pattern}"),
                run_module("ensemble.inference", f"--train_dir={train_dir}",
                           f"--input_data_pattern={pattern}", f"--output_file={csv}")]

    def segments_chain() -> list:
        return [run_module("training.eval", f"--train_dir={frame_dir}", "--run_once",
                           f"--eval_data_pattern={segments}", "--record_kind=segment"),
                run_module("ensemble.inference", f"--train_dir={frame_dir}",
                           f"--input_data_pattern={segments}", "--record_kind=segment",
                           f"--output_file={tmp_path / 'segments.csv'}")]

    with ThreadPoolExecutor(max_workers=2) as pool:
        chain, other = pool.submit(video2017_chain), pool.submit(segments_chain)
        (_, evaluated, _), (segment_eval, _) = chain.result(), other.result()
    assert checkpoints.read_model_flags(str(train_dir)).record_kind == "video2017"
    assert "GAP" in evaluated.stdout and csv.read_text().startswith("VideoId,")
    assert "Segment_MAP" in segment_eval.stdout
    assert (tmp_path / "segments.csv").read_text().startswith("Class,Segments\n")
