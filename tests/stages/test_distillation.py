"""distillation.train: teacher reader, loss, warm start, the student learns the teacher."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import QUIET, TINY_CLASSES, run_module, train_config
from distillation import train as distill
from models.tf_compat import tf
from prediction2tfrecord import write
from training import checkpoints, losses, model_builder, predict, readers
from training import train as trainer
from training import train_dir as train_dirs
from training.cli import UserError, first_line
from training.teacher_records import TeacherReader


def tiny_config(**overrides):
    return train_config(**{**QUIET, "base_learning_rate": 0.02, **overrides})


def tiny_flags():
    return model_builder.make_model_flags("FrameMeanMoeModel", "rgb,audio", "1024,128", True,
                                          TINY_CLASSES, "CrossEntropyLoss", {})


def teacher_metrics(student_dir, checkpoint_path, data_pattern, normalization="none",
                    num_members=None, batch_size=64):
    """One pass over teacher records: mean CE of a checkpoint's predictions to
    the hard labels ("label_ce") and to the normalised teacher ("teacher_ce")
    (is_training=False: BN moving statistics)."""
    model = predict.open_model(student_dir, checkpoint=checkpoint_path)
    try:
        with model.graph.as_default():
            labels = tf.placeholder(tf.float32, [None, model.num_classes], name="labels_in")
            teacher = tf.placeholder(tf.float32, [None, model.num_classes], name="teacher_in")
            loss_of = losses.get_loss(model.model_flags.label_loss)
            label_ce = loss_of(model.predictions, labels)
            teacher_ce = loss_of(model.predictions,
                                 distill.normalize_teacher(teacher, normalization, num_members))

        def feed(batch):
            return {labels: batch["labels"], teacher: batch["teacher"]}

        totals = np.zeros(3)
        for batch in predict.iterate_predictions(
                model, data_pattern, batch_size, num_readers=2, flag_name="train_data_pattern",
                reader=distill.make_reader(model.model_flags),
                fetches={"label_ce": (label_ce, feed), "teacher_ce": (teacher_ce, feed)}):
            count = len(batch.ids)
            totals += [batch.extras["label_ce"] * count, batch.extras["teacher_ce"] * count, count]
    finally:
        model.close()
    return {"label_ce": totals[0] / totals[2], "teacher_ce": totals[1] / totals[2],
            "num_examples": int(totals[2])}


class ShiftedTeacher:
    """A teacher that disagrees with the labels: label c becomes (c + 3) % C, score 2.7
    (a sum over 3 members), 0.3 elsewhere."""

    def __call__(self, ids, serialized):
        vectors = []
        for record in serialized:
            example = tf.train.SequenceExample.FromString(record)
            labels = np.array(example.context.feature["labels"].int64_list.value)
            vector = np.full(TINY_CLASSES, 0.3, np.float32)
            vector[(labels + 3) % TINY_CLASSES] = 2.7
            vectors.append(vector)
        return vectors


@pytest.fixture(scope="module")
def teacher_records(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher_records")
    files = sorted(str(p) for p in (tiny_data / "frame").glob("train*.tfrecord"))
    write.write_teacher_records(files, str(out), ShiftedTeacher(), log=lambda _: None)
    return str(out / "train*.tfrecord")


def test_reader_parses_teacher_vectors(teacher_records, tiny_data):
    reader = TeacherReader(num_classes=TINY_CLASSES)
    with tf.Graph().as_default():
        dataset = readers.make_dataset(reader, teacher_records, 16, training=False)
        batch = tf.data.make_one_shot_iterator(dataset).get_next()
        with tf.Session() as sess:
            values = sess.run(batch)
    assert values["teacher"].shape == (16, TINY_CLASSES)
    assert values["teacher"].dtype == np.float32
    for labels, teacher in zip(values["labels"], values["teacher"]):
        shifted = np.roll(labels, 3)
        np.testing.assert_allclose(teacher, np.where(shifted > 0, 2.7, 0.3), rtol=1e-6)


def test_reader_rejects_records_without_or_with_wrong_teacher(tiny_data, teacher_records):
    plain = str(tiny_data / "frame" / "train*.tfrecord")
    for pattern, classes in ((plain, TINY_CLASSES), (teacher_records, TINY_CLASSES + 1)):
        reader = TeacherReader(num_classes=classes)
        with tf.Graph().as_default():
            dataset = readers.make_dataset(reader, pattern, 4, training=False)
            batch = tf.data.make_one_shot_iterator(dataset).get_next()
            with tf.Session() as sess, pytest.raises(tf.errors.InvalidArgumentError) as info:
                sess.run(batch)
        message = first_line(info.value)
        assert "ensemble_labels" in message and f"{4 * classes} bytes" in message


def test_teacher_normalization():
    teacher = np.array([[0.5, 3.0, 1.5], [0.2, 0.8, -0.1]], np.float32)
    with tf.Graph().as_default(), tf.Session() as sess:
        none = sess.run(distill.normalize_teacher(teacher, "none"))
        by_max = sess.run(distill.normalize_teacher(teacher, "max"))
        by_members = sess.run(distill.normalize_teacher(teacher, "sum_to_members", 3))
    np.testing.assert_allclose(none, [[0.5, 1.0, 1.0], [0.2, 0.8, 0.0]])
    np.testing.assert_allclose(by_max, [[0.5 / 3, 1.0, 0.5], [0.2, 0.8, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(by_members, [[0.5 / 3, 1.0, 0.5], [0.2 / 3, 0.8 / 3, 0.0]],
                               rtol=1e-6)


def test_settings_are_validated():
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(UserError, match="--distill_prob: must be in"):
            distill.check_settings(bad, "none", None)
    with pytest.raises(UserError, match="--teacher_normalization"):
        distill.check_settings(0.5, "softmax", None)
    with pytest.raises(UserError, match="--teacher_num_members"):
        distill.check_settings(0.5, "sum_to_members", None)
    with pytest.raises(UserError, match="--teacher_num_members"):
        distill.check_settings(0.5, "max", 5)
    distill.check_settings(0.0, "none", None)
    distill.check_settings(1.0, "sum_to_members", 5)


@pytest.mark.slow
def test_student_moves_toward_teacher(teacher_records, tmp_path):
    flags = tiny_flags()
    train_dir = str(tmp_path / "student")
    train_dirs.prepare_train_dir(train_dir, flags, start_new=False)
    settings = dict(distill_prob=1.0, normalization="sum_to_members", num_members=3)
    distill.distill(flags, train_dir, teacher_records, tiny_config(max_steps=1), log=lambda _: 0,
                    **settings)
    first = checkpoints.latest_checkpoint(train_dir)
    lines = []
    result = distill.distill(flags, train_dir, teacher_records, tiny_config(max_steps=80),
                             log=lines.append, **settings)
    assert result["global_step"] == 80 and any("resumed from" in line for line in lines)
    assert any("p=1.0" in line and "sum_to_members" in line for line in lines)
    last = checkpoints.latest_checkpoint(train_dir)
    before = teacher_metrics(train_dir, first, teacher_records, "sum_to_members", 3)
    after = teacher_metrics(train_dir, last, teacher_records, "sum_to_members", 3)
    assert before["num_examples"] == 64
    assert after["teacher_ce"] < 0.8 * before["teacher_ce"]
    # The teacher contradicts the labels: learning it moves away from them.
    assert after["label_ce"] > after["teacher_ce"]


@pytest.mark.slow
def test_warm_start_loads_model_variables_only(tiny_data, teacher_records, tmp_path):
    flags = tiny_flags()
    source = str(tmp_path / "source")
    trainer.train(flags, source, str(tiny_data / "frame" / "train*.tfrecord"),
                  tiny_config(max_steps=12), log=lambda _: 0)
    checkpoint = checkpoints.latest_checkpoint(source)
    seen = {}

    def inspect(sess):
        distill.warm_start_from(source, log=lambda _: 0)(sess)
        graph = sess.graph
        seen["step"], seen["features"], seen["num_frames"], seen["predictions"] = sess.run(
            [graph.get_collection("global_step")[0], graph.get_collection("input_batch_raw")[0],
             graph.get_collection("num_frames")[0], graph.get_collection("predictions")[0]])
        seen["slots"] = [sess.run(v) for v in graph.get_collection(tf.GraphKeys.GLOBAL_VARIABLES)
                         if v.op.name.endswith("/Adam")]

    student = str(tmp_path / "student")
    trainer.train(flags, student, teacher_records, tiny_config(max_steps=1),
                  reader=distill.make_reader(flags),
                  label_loss_fn=distill.distillation_loss_fn(flags, 0.5), warm_start=inspect,
                  log=lambda _: 0)
    assert seen["step"] == 0  # global step (and so the LR schedule) start fresh
    assert seen["slots"] and all(not np.any(slot) for slot in seen["slots"])

    # The warm-start model's own predictions on the same batch.
    with tf.Graph().as_default():
        features = tf.placeholder(tf.float32, [None, None, 1152])
        num_frames = tf.placeholder(tf.int32, [None])
        with tf.variable_scope("tower"):
            predictions = model_builder.model_predictions(
                model_builder.build_model(flags), features, num_frames, is_training=False)
        saver = tf.train.Saver(model_builder.model_variables("tower"))
        with tf.Session() as sess:
            saver.restore(sess, checkpoint)
            reference = sess.run(predictions, {features: seen["features"],
                                               num_frames: seen["num_frames"]})
    np.testing.assert_allclose(seen["predictions"], reference, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_command_line(teacher_records, tmp_path):
    common = [f"--train_data_pattern={teacher_records}", "--model=FrameMeanMoeModel",
              f"--num_classes={TINY_CLASSES}", "--batch_size=8", "--num_readers=1",
              "--shuffle_buffer=16", "--log_steps=1"]
    bad = run_module("distillation.train", f"--train_dir={tmp_path / 'a'}", *common,
                     "--distill_prob=1.5", check=False)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1] == \
        "error: --distill_prob: must be in [0, 1], got 1.5"

    first = tmp_path / "first"
    run_module("distillation.train", f"--train_dir={first}", *common, "--max_steps=2")
    warm = run_module("distillation.train", f"--train_dir={tmp_path / 'b'}", *common,
                      "--max_steps=3", "--distill_prob=0.3", "--teacher_normalization=max",
                      f"--warm_start_checkpoint={first}")
    assert "p=0.3" in warm.stdout and "teacher_normalization=max" in warm.stdout
    assert "warm start: loaded" in warm.stdout and "model.ckpt-2" in warm.stdout
    assert checkpoints.latest_checkpoint(str(tmp_path / "b")).endswith("model.ckpt-3")
