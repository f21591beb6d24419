"""--label_names (ensemble.labels): the vocabulary CSV in both header shapes,
its errors (one line, exit 2, before any work, nothing written), and the
top-5 TSV beside the CSV of ensemble.inference and of ensemble.merge."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import REPO_ROOT, TINY_CLASSES, real_sample_dir, run_module, unlabelled_shards
from ensemble import inference, labels, merge
from support.members import tiny_gru_dbof_ensemble
from support.reliability import assert_user_error, temp_leftovers
from training import readers
from training.cli import UserError

TOP_K = 7
OFFICIAL = ("Index,TrainVideoCount,KnowledgeGraphId,Name,WikiDescription,Vertical1\n"
            '3,41,/m/03,"Toys ""R"" Us","A shop, of toys",Shopping\n'
            '0,788288,/m/0bzvm2,Game,"A game, played",Games\n'
            '1,539945,/m/025zzc,Video game,,Games\n'
            '2,415890,/m/01jddz,"Vehicle, road",,Autos\n'
            '\n'
            + "".join(f"{i},10,/m/x{i},Class {i},,Other\n" for i in range(4, TINY_CLASSES))
            + '10,5,/m/extra,"Tab\tin\nname",,Other\n')
SAMPLE = "label_id,label_name\n" + "".join(f"{i},Näme {i}\n" for i in range(TINY_CLASSES))


def vocabulary_names():
    """The names of OFFICIAL, by class id."""
    names = {0: "Game", 1: "Video game", 2: "Vehicle, road", 3: 'Toys "R" Us', 10: "Tab in name"}
    names.update({i: f"Class {i}" for i in range(4, TINY_CLASSES)})
    return names


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_gru_dbof_ensemble(tmp_path_factory.mktemp("label_models"))


@pytest.fixture(scope="module")
def test_files(tmp_path_factory):
    """Three unlabelled test files of 6 videos."""
    return unlabelled_shards(tmp_path_factory.mktemp("label_shards"), 3, 6, seed=4,
                             max_frames=30)


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    """Vocabulary files: the official shape, the sample's shape (with a BOM), too short."""
    root = tmp_path_factory.mktemp("vocab")
    paths = {"official": root / "vocabulary.csv", "sample": root / "label_names.csv",
             "short": root / "short.csv"}
    paths["official"].write_text(OFFICIAL, encoding="utf-8")
    paths["sample"].write_text("\ufeff" + SAMPLE, encoding="utf-8")
    paths["short"].write_text("Index,Name\n" + "".join(f"{i},N{i}\n" for i in range(8)))
    return {key: str(path) for key, path in paths.items()}


def csv_rows(path):
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    return lines[0], [line.split(",", 1) for line in lines[1:]]


def expected_tsv(csv_path, names):
    """The TSV text made by hand from a CSV: the first 5 pairs of each line."""
    out = [labels.TSV_HEADER]
    for video, pairs in csv_rows(csv_path)[1]:
        values = pairs.split()
        for rank in range(min(5, len(values) // 2)):
            label, score = values[2 * rank], values[2 * rank + 1]
            out.append(f"{video}\t{rank + 1}\t{label}\t{names[int(label)]}\t{score}")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------
# The vocabulary file


def test_both_header_shapes(vocab):
    official = labels.read_label_names(vocab["official"])
    assert official.names == vocabulary_names()
    official.check_covers(TINY_CLASSES)
    sample = labels.read_label_names(vocab["sample"])
    assert sample.names == {i: f"Näme {i}" for i in range(TINY_CLASSES)}
    sample.check_covers(TINY_CLASSES)


def test_the_real_2018_label_names():
    sample = real_sample_dir()
    path = sample / "label_names_2018.csv" if sample else None
    if path is None or not path.is_file():
        pytest.skip("no yt8m-2018-video-sample/label_names_2018.csv")
    vocabulary = labels.read_label_names(str(path))
    assert len(vocabulary.names) == 3862
    vocabulary.check_covers(3862)
    assert vocabulary.names[0] == "Game" and vocabulary.names[2533] == 'Toys "R" Us'
    with pytest.raises(UserError, match="names 3862 of the model's 3863 classes; no name for "
                                        "class 3862$"):
        vocabulary.check_covers(3863)


BAD_VOCABULARIES = {
    "no_index": ("a,b\n0,x\n", "no column Index (or label_id); found a, b"),
    "no_name": ("Index,TrainVideoCount\n0,5\n", "no column Name (or label_name); found Index, "
                                                "TrainVideoCount"),
    "empty": ("", "empty (expected a header row"),
    "header_only": ("label_id,label_name\n", "holds no names (only the header)"),
    "not_integer": ("Index,Name\n0,a\nx1,b\n", "line 3: Index 'x1' is not a non-negative "
                                               "integer"),
    "negative": ("label_id,label_name\n-1,a\n", "line 2: label_id '-1' is not a non-negative"),
    "duplicate": ("Index,Name\n0,a\n1,b\n\n0,c\n", "line 5: Index 0 is also on line 2"),
    "too_few_fields": ("Index,KnowledgeGraphId,Name\n0,/m/0\n", "line 2: 2 fields, too few for "
                                                                "the columns Index and Name"),
    "empty_name": ("Index,Name\n0, \n", "line 2: class 0 has an empty Name"),
}


@pytest.mark.parametrize("case", sorted(BAD_VOCABULARIES))
def test_malformed_vocabularies(case, tmp_path):
    text, message = BAD_VOCABULARIES[case]
    path = tmp_path / "vocab.csv"
    path.write_text(text)
    with pytest.raises(UserError) as caught:
        labels.read_label_names(str(path))
    assert str(caught.value).startswith(f"--label_names={path}: ")
    assert message in str(caught.value)


def test_unreadable_vocabularies(tmp_path):
    cases = {"missing": (tmp_path / "nope.csv", "no such file"),
             "dir": (tmp_path, "is a dir, not a vocabulary CSV")}
    latin = tmp_path / "latin1.csv"
    latin.write_bytes("Index,Name\n0,Pokémon\n".encode("latin-1"))
    cases["latin1"] = (latin, "not UTF-8 text (line 2, byte 16)")
    quoted = tmp_path / "quoted.csv"
    quoted.write_text('Index,Name\n0,"a"b\n')
    cases["quoted"] = (quoted, "not a readable CSV (line 2: ',' expected after '\"')")
    unclosed = tmp_path / "unclosed.csv"
    unclosed.write_text('Index,Name\n0,a\n1,"b\n2,c\n')
    cases["unclosed"] = (unclosed, "not a readable CSV (line 4: unexpected end of data)")
    for path, message in cases.values():
        with pytest.raises(UserError, match=re.escape(f"--label_names={path}: {message}")):
            labels.read_label_names(str(path))


def test_binary_and_other_shaped_vocabularies(tmp_path):
    import gzip

    cases = {"gzip": (gzip.compress(b"Index,Name\n0,a\n"),
                      "gzip-compressed, not a vocabulary CSV (gunzip it first)"),
             "png": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
                     "a binary file, not a vocabulary CSV (a NUL byte on line 3)"),
             "nul": (b"Index,Name\n0,a\x00b\n",
                     "a binary file, not a vocabulary CSV (a NUL byte on line 2)"),
             "utf16": ("Index,Name\n0,a\n".encode("utf-16"),
                       "UTF-16 text, not UTF-8 (save it as UTF-8)"),
             "tsv": (b"Index\tName\n0\ta\n", "tab-separated; the vocabulary is a CSV")}
    for name, (data, message) in cases.items():
        path = tmp_path / f"{name}.csv"
        path.write_bytes(data)
        with pytest.raises(UserError) as caught:
            labels.read_label_names(str(path))
        line = str(caught.value)
        assert line.startswith(f"--label_names={path}: {message}"), line
        assert "\n" not in line and "\x00" not in line and "\t" not in line


def test_fewer_names_than_classes(vocab):
    short = labels.read_label_names(vocab["short"])
    with pytest.raises(UserError, match=r"^--label_names=.*short\.csv: names 8 of the model's "
                                        r"10 classes; no name for class 8, 9$"):
        short.check_covers(TINY_CLASSES)
    gaps = labels.LabelNames("v.csv", {i: "x" for i in range(0, 20, 3)})
    with pytest.raises(UserError, match="names 7 of the model's 20 classes; no name for class "
                                        "1, 2, 4, 5, 7 and 8 more$"):
        gaps.check_covers(20)


def test_tsv_path():
    assert labels.tsv_path("/a/submission.csv") == "/a/submission.top5.tsv"
    assert labels.tsv_path("S.CSV") == "S.top5.tsv"
    assert labels.tsv_path("/a/out") == "/a/out.top5.tsv"


# ---------------------------------------------------------------------------
# inference: the TSV beside the CSV


@pytest.mark.slow
def test_tsv_of_a_run_and_the_csv_unchanged(models, unlabelled, vocab, tmp_path):
    plain = str(tmp_path / "plain" / "submission.csv")
    named = str(tmp_path / "named" / "submission.csv")
    inference.run(train_dir=models["ensemble"], input_data_pattern=unlabelled,
                  output_file=plain, batch_size=8, top_k=TOP_K, log=None)
    lines = []
    count = inference.run(train_dir=models["ensemble"], input_data_pattern=unlabelled,
                          output_file=named, batch_size=8, top_k=TOP_K, log=lines.append,
                          label_names=vocab["official"])
    assert count == 32
    with open(plain, "rb") as a, open(named, "rb") as b:
        assert a.read() == b.read()
    assert sorted(os.listdir(tmp_path / "named")) == ["submission.csv", "submission.top5.tsv"]
    tsv = tmp_path / "named" / "submission.top5.tsv"
    text = tsv.read_text(encoding="utf-8")
    assert text == expected_tsv(named, vocabulary_names())
    rows = [line.split("\t") for line in text.splitlines()]
    assert rows[0] == ["VideoId", "Rank", "Label", "Name", "Score"]
    assert len(rows) == 1 + 5 * 32 and all(len(row) == 5 for row in rows)
    assert [row[1] for row in rows[1:6]] == ["1", "2", "3", "4", "5"]
    scores = [float(row[4]) for row in rows[1:6]]
    assert scores == sorted(scores, reverse=True)
    assert any(line.startswith(f"wrote {tsv} (the top 5 labels") for line in lines)
    # Fewer pairs than 5 (--top_k=3): 3 rows per video; the sample's header shape.
    three = str(tmp_path / "three.csv")
    inference.run(train_dir=models["gru"], input_data_pattern=unlabelled, output_file=three,
                  batch_size=16, top_k=3, log=None, label_names=vocab["sample"])
    text = (tmp_path / "three.top5.tsv").read_text(encoding="utf-8")
    assert text == expected_tsv(three, {i: f"Näme {i}" for i in range(TINY_CLASSES)})
    assert len(text.splitlines()) == 1 + 3 * 32


def test_existing_tsv_and_no_csv(models, unlabelled, vocab, tmp_path):
    output = tmp_path / "s.csv"
    (tmp_path / "s.top5.tsv").write_text("old\n")
    with pytest.raises(UserError, match=r"^--label_names: .*s\.top5\.tsv \(the TSV of "
                                        r"--output_file\) exists; .*--overwrite$"):
        inference.run(train_dir=models["gru"], input_data_pattern=unlabelled,
                      output_file=str(output), log=None, overwrite=False,
                      label_names=vocab["official"])
    assert sorted(os.listdir(tmp_path)) == ["s.top5.tsv"]
    inference.run(train_dir=models["gru"], input_data_pattern=unlabelled, top_k=TOP_K,
                  output_file=str(output), log=None, overwrite=True,
                  label_names=vocab["official"])
    assert (tmp_path / "s.top5.tsv").read_text().startswith(labels.TSV_HEADER)
    with pytest.raises(UserError, match="--label_names=.*: needs --input_data_pattern and "
                                        "--output_file"):
        inference.run(train_dir=models["gru"], output_model_tgz=str(tmp_path / "m.tgz"),
                      log=None, label_names=vocab["official"])
    assert not (tmp_path / "m.tgz").exists()


def test_classes_of_an_upload_are_checked_before_loading(models, unlabelled, vocab,
                                                         tmp_path):
    tgz = str(tmp_path / "model.tgz")
    inference.run(train_dir=models["gru"], output_model_tgz=tgz, log=None)
    lines = []
    with pytest.raises(UserError, match="names 8 of the model's 10 classes"):
        inference.run(input_model_tgz=tgz, input_data_pattern=unlabelled,
                      output_file=str(tmp_path / "s.csv"), log=lines.append,
                      label_names=vocab["short"])
    assert lines == [] and sorted(os.listdir(tmp_path)) == ["model.tgz"]
    inference.run(input_model_tgz=tgz, input_data_pattern=unlabelled, top_k=TOP_K,
                  output_file=str(tmp_path / "s.csv"), log=None,
                  label_names=vocab["official"])
    assert (tmp_path / "s.top5.tsv").read_text(encoding="utf-8") == \
        expected_tsv(str(tmp_path / "s.csv"), vocabulary_names())


# ---------------------------------------------------------------------------
# The sharded path: workers, then merge --label_names


def run_workers(models, test_files, output, workers=2, **extra):
    for index in range(workers):
        inference.run(train_dir=models["ensemble"], input_data_pattern=test_files,
                      output_file=output, batch_size=4, top_k=TOP_K, log=None,
                      num_shards=workers, shard_index=index, **extra)


@pytest.mark.slow
def test_merge_writes_the_same_tsv(models, test_files, vocab, tmp_path):
    output = str(tmp_path / "sharded" / "submission.csv")
    lines = []
    inference.run(train_dir=models["ensemble"], input_data_pattern=test_files,
                  output_file=output, batch_size=4, top_k=TOP_K, log=lines.append,
                  num_shards=2, shard_index=0, label_names=vocab["official"])
    assert any("--label_names=" in line and "checked" in line for line in lines)
    run_workers(models, test_files, output, workers=2)  # shard 0 done before
    files = readers.resolve_files(test_files)
    assert not os.path.exists(labels.tsv_path(output))  # the workers write no TSV
    with open(merge.part_paths(output, files[0])[1]) as handle:
        assert json.load(handle)["num_classes"] == TINY_CLASSES
    vocabulary = labels.read_label_names(vocab["official"])
    assert merge.merge(files, output, vocabulary=vocabulary) == 18
    single = str(tmp_path / "single" / "submission.csv")
    inference.run(train_dir=models["ensemble"], input_data_pattern=test_files,
                  output_file=single, batch_size=4, top_k=TOP_K, log=None,
                  label_names=vocab["official"])
    for name in ("submission.csv", "submission.top5.tsv"):
        assert ((tmp_path / "sharded" / name).read_bytes()
                == (tmp_path / "single" / name).read_bytes())
    assert (tmp_path / "sharded" / "submission.top5.tsv").read_text(encoding="utf-8") == \
        expected_tsv(output, vocabulary_names())
    # On the command line, over the existing outputs with --overwrite.
    done = run_module("ensemble.merge", f"--input_data_pattern={test_files}",
                      f"--output_file={output}", f"--label_names={vocab['sample']}",
                      "--overwrite")
    assert f"wrote {labels.tsv_path(output)} (the top 5 labels" in done.stdout
    assert "Näme" in (tmp_path / "sharded" / "submission.top5.tsv").read_text(encoding="utf-8")


@pytest.mark.slow
def test_merge_checks_the_vocabulary_before_reading_parts(models, test_files, vocab, tmp_path):
    output = str(tmp_path / "submission.csv")
    run_workers(models, test_files, output, workers=1)
    files = readers.resolve_files(test_files)
    part_csv = merge.part_paths(output, files[1])[0]
    with open(part_csv, "a") as handle:
        handle.write("damaged\n")
    short = labels.read_label_names(vocab["short"])
    with pytest.raises(UserError, match="names 8 of the model's 10 classes"):
        merge.merge(files, output, vocabulary=short)
    (tmp_path / "submission.top5.tsv").write_text("old\n")
    with pytest.raises(UserError, match=r"submission\.top5\.tsv \(the TSV of --output_file\) "
                                        r"exists"):
        merge.merge(files, output, vocabulary=labels.read_label_names(vocab["official"]))
    assert sorted(os.listdir(tmp_path)) == ["submission.csv.parts", "submission.top5.tsv"]


@pytest.mark.slow
def test_merge_of_older_parts_checks_the_tsv_labels(models, test_files, tmp_path):
    """Records without num_classes (older runs): a top-5 label without a name
    fails while the TSV is written, and neither the CSV nor the TSV is left."""
    output = str(tmp_path / "submission.csv")
    run_workers(models, test_files, output, workers=1)
    files = readers.resolve_files(test_files)
    for path in files:
        record_path = merge.part_paths(output, path)[1]
        with open(record_path) as handle:
            record = json.load(handle)
        del record["num_classes"]
        with open(record_path, "w") as handle:
            json.dump(record, handle)
    with open(merge.part_paths(output, files[0])[0]) as handle:
        first_video, pairs = handle.readline().rstrip("\n").split(",", 1)
    top = int(pairs.split()[0])
    names = labels.LabelNames("v.csv", {i: "x" for i in range(TINY_CLASSES) if i != top})
    with pytest.raises(UserError, match=f"^--label_names=v.csv: no name for class {top} "
                                        f"\\(video {first_video}, line 2 of the CSV\\)$"):
        merge.merge(files, output, vocabulary=names)
    assert sorted(os.listdir(tmp_path)) == ["submission.csv.parts"]


# ---------------------------------------------------------------------------
# The command lines: one line, exit 2, before the model is loaded, nothing written


def cli_cases(tmp_path, vocab, models, unlabelled, test_files, merged_output):
    """[(name, completed process, mentions, output that must not exist)]."""
    bad = {"missing": str(tmp_path / "nope.csv"), "dir": str(tmp_path)}
    for name in ("no_index", "not_integer", "duplicate"):
        bad[name] = str(tmp_path / f"{name}.csv")
        with open(bad[name], "w") as handle:
            handle.write(BAD_VOCABULARIES[name][0])
    bad["latin1"] = str(tmp_path / "latin1.csv")
    with open(bad["latin1"], "wb") as handle:
        handle.write("Index,Name\n0,Pokémon\n".encode("latin-1"))
    bad["short"] = vocab["short"]
    calls = []
    for name, path in bad.items():
        output = str(tmp_path / f"{name}-out" / "s.csv")
        calls.append((f"inference {name}", output, path, (
            "ensemble.inference", f"--train_dir={models['ensemble']}",
            f"--input_data_pattern={unlabelled}", f"--output_file={output}",
            f"--label_names={path}")))
    for name in ("missing", "no_index", "short"):
        calls.append((f"merge {name}", merged_output, bad[name], (
            "ensemble.merge", f"--input_data_pattern={test_files}",
            f"--output_file={merged_output}", f"--label_names={bad[name]}")))
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = list(pool.map(lambda call: run_module(*call[3], check=False), calls))
    return [(call[0], completed, call[2], call[1]) for call, completed in zip(calls, done)]


@pytest.mark.slow
def test_command_line_errors(models, unlabelled, test_files, vocab, tmp_path):
    merged = str(tmp_path / "merged" / "submission.csv")
    run_workers(models, test_files, merged, workers=1)
    expected = {"missing": "no such file", "dir": "is a dir", "latin1": "not UTF-8 text",
                "short": "names 8 of the model's 10 classes; no name for class 8, 9",
                **{name: BAD_VOCABULARIES[name][1]
                   for name in ("no_index", "not_integer", "duplicate")}}
    (tmp_path / "cases").mkdir()
    for name, completed, path, output in cli_cases(tmp_path / "cases", vocab, models,
                                                   unlabelled, test_files, merged):
        line = assert_user_error(completed, f"--label_names={path}: ",
                                 expected[name.split()[1]])
        assert "loaded" not in completed.stdout, (name, completed.stdout)
        parent, csv_name = os.path.split(output)
        tsv_name = os.path.basename(labels.tsv_path(output))
        for written in (csv_name, tsv_name):
            assert not os.path.exists(os.path.join(parent, written)), (name, line)
            assert temp_leftovers(parent, written) == [], name
    assert not [entry for entry in os.listdir(tmp_path / "cases") if entry.endswith("-out")]


@pytest.mark.slow
def test_ensemble_infer_script_with_label_names(models, test_files, vocab, tmp_path):
    """run_scripts/ensemble_infer.sh LABEL_NAMES=...: the TSV beside the CSV."""
    output = tmp_path / "submission.csv"
    env = {**os.environ, "PYTHON": sys.executable, "MODEL_DIR": models["ensemble"],
           "TEST_PATTERN": test_files, "OUTPUT_FILE": str(output), "NUM_WORKERS": "1",
           "BATCH_SIZE": "4", "TOP_K": str(TOP_K), "NUM_CLASSES": str(TINY_CLASSES),
           "LABEL_NAMES": vocab["official"], "PATH": "/usr/bin:/bin"}
    done = subprocess.run(["bash", str(REPO_ROOT / "run_scripts" / "ensemble_infer.sh")],
                          env=env, cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ok: 18 videos" in done.stdout
    tsv = tmp_path / "submission.top5.tsv"
    assert tsv.read_text(encoding="utf-8") == expected_tsv(str(output), vocabulary_names())
    log = (tmp_path / "submission.csv.parts" / ".worker-0.log").read_text()
    assert "checked; ensemble.merge --label_names writes the TSV" in log
