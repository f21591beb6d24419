"""The 2019 segment submission: per-class top-k streaming, the CSV, its checker."""
import glob

import numpy as np
import pytest

from conftest import TINY_CLASSES, run_module, segment_data
from ensemble import segment_submission as seg
from training import synthetic_segments
from training.cli import UserError


def test_class_top_k_equals_a_full_sort():
    """Mutation tried: the floor set to the best kept score instead of the
    max_pred-th -> good segments were dropped and this failed."""
    rng = np.random.default_rng(1)
    scores = np.round(rng.random((500, 3)), 2).astype(np.float32)     # many ties
    top = seg.ClassTopK(3, max_pred=17)
    for start in range(0, 500, 23):
        top.add(scores[start:start + 23], start)
        assert all(top.scores[j].size <= 2 * 17 + 23 for j in range(3))
    for j in range(3):
        expected = np.lexsort((np.arange(500), -scores[:, j]))[:17]
        np.testing.assert_array_equal(top.ranked(j), expected)


@pytest.fixture(scope="module")
def segment_pattern(tmp_path_factory):
    return segment_data(tmp_path_factory, "segment_submission_data", videos_per_shard=12)


@pytest.mark.slow
def test_inference_segment_labels_writes_a_checked_submission(tiny_models, segment_pattern,
                                                             tmp_path):
    """Mutation tried: ClassTopK.ranked returning the buffer without the final
    cut (unsorted, more than max_pred) -> this test failed."""
    ids = tmp_path / "ids.csv"
    ids.write_text("Index\n1\n3\n4\n")
    out = tmp_path / "segments.csv"
    run_module("ensemble.inference", f"--train_dir={tiny_models['dbof_bf16']}",
               f"--input_data_pattern={segment_pattern}", f"--output_file={out}",
               "--segment_labels", "--segment_max_pred=7", f"--segment_label_ids_file={ids}")
    lines = out.read_text().splitlines()
    assert lines[0] == "Class,Segments" and [line.split(",")[0] for line in lines[1:]] == [
        "1", "3", "4"]
    assert all(len(line.split(",")[1].split(" ")) == 7 for line in lines[1:])
    checked = run_module("ensemble.segment_submission", f"--submission={out}",
                         f"--segment_label_ids_file={ids}", "--segment_max_pred=7",
                         f"--num_classes={TINY_CLASSES}")
    assert "ok: 3 classes" in checked.stdout
    from training import predict
    model = predict.open_model(tiny_models["dbof_bf16"])
    try:
        seg.write_segment_submission(model, segment_pattern, str(tmp_path / "all.csv"),
                                     max_pred=1000, log=None)
    finally:
        model.close()
    full = (tmp_path / "all.csv").read_text().splitlines()
    # Every distinct segment of the data once per class, and the top 7 of the
    # full ranking are the file's 7.
    assert len(full[2].split(",")[1].split(" ")) == 12 * 5
    assert full[2].split(",")[1].split(" ")[:7] == lines[1].split(",")[1].split(" ")


@pytest.mark.parametrize("text,message", [
    ("Class,Seg\n", "header"),
    ("Class,Segments\n1,a:5 a:5\n", "none twice"),
    ("Class,Segments\n1,a:3\n", "multiple of 5"),
    ("Class,Segments\n1,a:5\n1,b:5\n", "twice"),
    ("Class,Segments\n1,a:5 b:5 c:5\n", "at most 2"),
    ("Class,Segments\n9,a:5\n", "not in the class ids"),
])
def test_checker_refuses_in_one_line(tmp_path, text, message):
    """Mutation tried: no duplicate check -> the 'a:5 a:5' case passed."""
    path = tmp_path / "s.csv"
    path.write_text(text)
    with pytest.raises(UserError, match=message) as err:
        seg.check_segment_submission(str(path), np.array([1, 2]) if "9," in text else None,
                                     max_pred=2)
    assert "\n" not in str(err.value)


def test_label_ids_file_errors(tmp_path):
    path = tmp_path / "ids.csv"
    path.write_text("Index\n1\n12\n")
    with pytest.raises(UserError, match=r"ids.csv:3: expected a class id in 0..9"):
        seg.read_label_ids(str(path), 10)


@pytest.mark.slow
def test_sharded_parts_merge_to_the_one_process_csv(tiny_models, tmp_path):
    """Mutation tried: the merge breaking ties by the later segment number
    (lexsort((-numbers, -scores))) -> with the rounded scores the merged CSV
    differed from the one-process one. (np.argsort(-scores) alone was not
    caught: on these short lists numpy's sort happens to be stable.)"""
    from training import predict
    synthetic_segments.write_segment_dataset(str(tmp_path), num_shards=3, videos_per_shard=6,
                                             num_classes=TINY_CLASSES, seed=7,
                                             min_frames=25, max_frames=40)
    pattern = str(tmp_path / "segments" / "*.tfrecord")
    model = predict.open_model(tiny_models["dbof_bf16"])
    original = model.predictions
    try:
        # Rounded scores: many ties, so the tie rule is tested too.
        from models.tf_compat import tf
        with model.graph.as_default():
            model.predictions = tf.round(original * 10.0) / 10.0
        one = tmp_path / "one.csv"
        seg.write_segment_submission(model, pattern, str(one), max_pred=8, log=None)
        sharded = tmp_path / "sharded.csv"
        for shard in range(2):
            seg.write_segment_part(model, pattern, str(sharded), 2, shard, max_pred=8, log=None)
    finally:
        model.close()
    run_module("ensemble.segment_submission", f"--merge_output_file={sharded}",
               "--num_shards=2", "--segment_max_pred=8", f"--num_classes={TINY_CLASSES}")
    assert sharded.read_text() == one.read_text()
    assert len(one.read_text().splitlines()) == TINY_CLASSES + 1


@pytest.fixture(scope="module")
def three_files(tmp_path_factory):
    """Segment-rated data in 3 files, and another pattern of 3 other files."""
    root = tmp_path_factory.mktemp("three_files")
    for seed, name in ((7, "a"), (8, "b")):
        synthetic_segments.write_segment_dataset(str(root / name), num_shards=3,
                                                 videos_per_shard=4, num_classes=TINY_CLASSES,
                                                 seed=seed, min_frames=25, max_frames=40)
    return [str(root / name / "segments" / "*.tfrecord") for name in ("a", "b")]


def _parts(model_dir, pattern, output, shards, **kwargs):
    from training import predict
    model = predict.open_model(model_dir)
    try:
        for shard in shards:
            seg.write_segment_part(model, pattern, str(output), 2, shard, log=None,
                                   **{"max_pred": 8, **kwargs})
    finally:
        model.close()


@pytest.mark.parametrize("case,message", [
    ("missing", "segments-00001-of-00002.npz: missing or unreadable part"),
    ("copied", "segments-00001-of-00002.npz: holds shard 0 of 2, not shard 1 of 2"),
    ("model", "segments-00001-of-00002.npz: written by another run"),
    ("max_pred", "segments-00001-of-00002.npz: written by another run"),
    ("inputs", "segments-00001-of-00002.npz: read other input files"),
    ("num_shards", "segments-00000-of-00003.npz: a part of a run with --num_shards=3"),
])
@pytest.mark.slow
def test_merge_refuses_parts_of_other_runs(tiny_models, three_files, tmp_path, case, message):
    """Each part carries its shard, the whole sorted input and a run key (the
    model's files and the flags); the merge names the first part that does
    not belong, in one line, and writes nothing.

    Mutation tried: _check_parts without the run-key comparison -> the
    "model" and "max_pred" cases merged and this failed."""
    import shutil
    out = tmp_path / "s.csv"
    _parts(tiny_models["dbof_bf16"], three_files[0], out, [0] if case == "missing" else [0, 1])
    part = tmp_path / "s.csv.parts" / "segments-{:05d}-of-{:05d}.npz"
    if case == "copied":
        shutil.copy(str(part).format(0, 2), str(part).format(1, 2))
    elif case == "model":
        _parts(tiny_models["gru_bf16"], three_files[0], out, [1])
    elif case in ("max_pred", "inputs"):
        _parts(tiny_models["dbof_bf16"], three_files[case == "inputs"], out, [1],
               max_pred=9 if case == "max_pred" else 8)
    elif case == "num_shards":
        shutil.copy(str(part).format(0, 2), str(part).format(0, 3))
    completed = run_module("ensemble.segment_submission", f"--merge_output_file={out}",
                           "--num_shards=2", f"--num_classes={TINY_CLASSES}", check=False)
    assert completed.returncode != 0 and message in completed.stderr
    assert len(completed.stderr.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.slow
def test_segment_labels_with_the_model_tgz_flags(tiny_models, three_files, tmp_path):
    """--output_model_tgz writes the upload beside the segment CSV; the CSV of
    --input_model_tgz=<that upload> is the same; --label_names is refused in
    one line.

    Mutation tried: _segments_with_dir given --train_dir instead of the
    extracted upload -> "--train_dir: required"-style refusal and this failed."""
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    upload = tmp_path / "upload.tgz"
    common = [f"--input_data_pattern={three_files[0]}", "--segment_labels",
              "--segment_max_pred=8"]
    run_module("ensemble.inference", f"--train_dir={tiny_models['ensemble']}", *common,
               f"--output_file={first}", f"--output_model_tgz={upload}")
    assert upload.stat().st_size > 0
    run_module("ensemble.inference", f"--input_model_tgz={upload}", *common,
               f"--output_file={second}")
    assert second.read_text() == first.read_text()
    refused = run_module("ensemble.inference", f"--train_dir={tiny_models['ensemble']}",
                         *common, f"--output_file={tmp_path / 'c.csv'}",
                         f"--label_names={upload}", check=False)
    assert refused.returncode != 0 and "--label_names" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_segment_names_stay_bounded_and_exact():
    """collect_top's bookkeeping over many segments: the names kept never
    pass classes x 2 x max_pred + min_prune + one batch, and every name a
    class ranks is still there and right.

    Mutation tried: SegmentNames.prune keeping the names of the numbers
    NOT held (np.isin(..., invert=True)) -> lookups returned other segments'
    names and this failed; never pruning -> 20000 names were held."""
    rng = np.random.default_rng(2)
    kept, max_pred, batch, min_prune, total = 3, 10, 40, 50, 20000
    scores = rng.random((total, kept)).astype(np.float32)
    top, names = seg.ClassTopK(kept, max_pred), seg.SegmentNames(min_prune)
    most = 0
    for first in range(0, total, batch):
        top.add(scores[first:first + batch], first)
        names.add(first, [f"v{n}:5" for n in range(first, first + batch)])
        if names.due():
            names.prune(top.held())
        most = max(most, len(names))
    assert most <= kept * 2 * max_pred + min_prune + batch and names.seen == total
    for j in range(kept):
        expected = np.lexsort((np.arange(total), -scores[:, j]))[:max_pred]
        assert names.lookup(top.ranked(j)) == [f"v{n}:5" for n in expected]


@pytest.fixture(scope="module")
def unrated(tmp_path_factory):
    """2019-test-like records (frames only, no labels, no segment lists) in 3
    files, 4 to 60 frames a video; -> (pattern, {video id: frame count})."""
    from conftest import unlabelled_shards
    from models.tf_compat import tf
    pattern = unlabelled_shards(tmp_path_factory.mktemp("unrated"), 3, 6, 11, 60)
    frames = {}
    for path in sorted(glob.glob(pattern)):
        for record in tf.io.tf_record_iterator(path):
            ex = tf.train.SequenceExample.FromString(record)
            frames[ex.context.feature["id"].bytes_list.value[0].decode()] = len(
                ex.feature_lists.feature_list["rgb"].feature)
    return pattern, frames


def _every_segment(frames, skip=False):
    """{"vid:start"} of the starter's rule: starts 0, 5, ... < frames; skip:
    without each video's first 6 and last 2 positions."""
    return {f"{vid}:{5 * k}" for vid, n in frames.items()
            for k in range(6 if skip else 0, -(-n // 5) - (2 if skip else 0))}


def _entries(csv_path):
    lines = csv_path.read_text().splitlines()[1:]
    return {int(line.split(",")[0]): line.split(",")[1].split(" ") if line.split(",")[1]
            else [] for line in lines}


@pytest.mark.slow
def test_every_segment_of_the_test_split(tiny_models, unrated, tmp_path):
    """Records without segment lists: every segment is scored (auto), each
    class lists all of them; collect_top pruning its names every few
    segments ranks them alike.

    Mutation tried: collect_top not pruning the names at all -> the 4-name
    minimum was passed by far and the bound assertion failed."""
    from training import predict
    pattern, frames = unrated
    model = predict.open_model(tiny_models["dbof_bf16"])
    try:
        out = tmp_path / "all.csv"
        scored = seg.write_segment_submission(model, pattern, str(out), max_pred=100000,
                                              log=None, scoring=seg.Scoring("every"))
        files = sorted(glob.glob(pattern))
        # (One video a batch: at most 12 segments.)
        top, names = seg.collect_top(model, files, [0, 1, 2], np.arange(TINY_CLASSES), 2,
                                     batch_size=5, log=None, scoring=seg.Scoring("every"),
                                     names=seg.SegmentNames(min_prune=4))
    finally:
        model.close()
    expected = _every_segment(frames)
    assert scored == len(expected) > 100
    entries = _entries(out)
    assert all(set(listed) == expected for listed in entries.values())
    assert seg.check_segment_submission(str(out), max_pred=100000) == TINY_CLASSES
    assert len(names) <= TINY_CLASSES * 2 * 2 + 4 + 12 < names.seen
    assert [names.lookup(top.ranked(j)) for j in range(TINY_CLASSES)] == [
        entries[j][:2] for j in range(TINY_CLASSES)]


def _top_classes(model_dir, pattern, k):
    from training import predict, segment_refine
    model = predict.open_model(model_dir)
    try:
        top = segment_refine.video_top_classes(model, k, 8, pattern)
    finally:
        model.close()
    return {vid.decode(): set(classes.tolist()) for vid, classes in top.items()}


@pytest.mark.slow
def test_cli_skip_unrated_and_refinement(tiny_models, unrated, tmp_path):
    """ensemble.inference --segment_labels on the test-split records with
    --skip_unrated_positions and --segment_refine_top_k=3 (refined by
    another model, the GRU): a class lists exactly the rated-position
    segments of the videos whose top 3 (of the GRU's video-level
    predictions, computed here) hold it, and the checker passes it.

    Mutation tried: _batch_scores ignoring the refinement mask -> classes
    outside a video's top 3 listed its segments and this failed."""
    pattern, frames = unrated
    ids = tmp_path / "ids.csv"
    ids.write_text("Index\n0\n2\n3\n5\n")
    out = tmp_path / "s.csv"
    completed = run_module(
        "ensemble.inference", f"--train_dir={tiny_models['dbof_bf16']}",
        f"--input_data_pattern={pattern}", f"--output_file={out}", "--segment_labels",
        "--skip_unrated_positions", "--segment_refine_top_k=3",
        f"--segment_refine_model_dir={tiny_models['gru_bf16']}",
        f"--segment_label_ids_file={ids}")
    assert "scoring every segment of each video" in completed.stdout
    top = _top_classes(tiny_models["gru_bf16"], pattern, 3)
    rated = _every_segment(frames, skip=True)
    entries = _entries(out)
    assert sorted(entries) == [0, 2, 3, 5] and rated
    for class_id, listed in entries.items():
        assert set(listed) == {s for s in rated if class_id in top[s.split(":")[0]]}
    assert sum(map(len, entries.values())) > 0
    assert seg.check_segment_submission(str(out), np.array([0, 2, 3, 5])) == 4
    refused = run_module("ensemble.inference", f"--train_dir={tiny_models['dbof_bf16']}",
                         f"--input_data_pattern={pattern}", f"--output_file={out}1",
                         "--segment_labels", "--segment_refine_top_k=-2", check=False)
    assert refused.returncode != 0 and len(refused.stderr.strip().splitlines()) == 1
    assert "--segment_refine_top_k: must be >= 0" in refused.stderr


@pytest.mark.slow
def test_every_segment_shards_merge_to_the_one_process_csv(tiny_models, unrated, tmp_path):
    """Every-segment mode, refined by the model's own top 3: the 2 merged
    parts are byte-identical to one process's CSV (scores rounded: ties).

    Mutation tried: collect_top numbering a segment by its place in its
    file only (the file index dropped) -> names of different files' segments
    collided and this failed."""
    from models.tf_compat import tf
    from training import predict
    pattern, _ = unrated
    scoring = seg.Scoring("every", refine_top_k=3)
    model = predict.open_model(tiny_models["dbof_bf16"])
    try:
        with model.graph.as_default():
            model.predictions = tf.round(model.predictions * 10.0) / 10.0
        one, sharded = tmp_path / "one.csv", tmp_path / "sharded.csv"
        seg.write_segment_submission(model, pattern, str(one), max_pred=9, log=None,
                                     scoring=scoring)
        for shard in range(2):
            seg.write_segment_part(model, pattern, str(sharded), 2, shard, max_pred=9,
                                   log=None, scoring=scoring)
    finally:
        model.close()
    seg.merge_segment_parts(str(sharded), 2, log=None)
    assert sharded.read_text() == one.read_text()
    assert len(one.read_text().splitlines()) == TINY_CLASSES + 1
