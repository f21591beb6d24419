"""training.paths: good paths pass and nothing is created; bad ones raise one
UserError naming the flag and the path (the walk over every entry point's
path flags is tests/reliability/test_path_flags.py)."""
from __future__ import annotations

import os

import pytest

from training import paths
from training.cli import UserError


def listing(root):
    return sorted(os.path.relpath(os.path.join(d, n), root)
                  for d, dirs, files in os.walk(root) for n in dirs + files)


def test_good_paths_pass_and_nothing_is_created(tmp_path):
    (tmp_path / "in.txt").write_text("x")
    (tmp_path / "dir").mkdir()
    before = listing(tmp_path)
    paths.check(paths.IN_FILE, "f", str(tmp_path / "in.txt"))
    paths.check(paths.IN_DIR, "d", str(tmp_path / "dir"))
    paths.check(paths.IN_DIRS, "d", f"{tmp_path / 'dir'}, {tmp_path}")
    paths.check(paths.IN_PATTERN, "p", f"{tmp_path}/*.txt,{tmp_path}/none*")
    paths.check(paths.IN_CHECKPOINT, "c", str(tmp_path / "dir"))
    paths.check(paths.OUT_FILE, "o", str(tmp_path / "new" / "deeper" / "out.csv"))
    paths.check(paths.OUT_FILE, "o", str(tmp_path / "in.txt"))      # replaced: --overwrite
    paths.check(paths.OUT_DIR, "o", str(tmp_path / "dir"))          # resumed in place
    paths.check(paths.OUT_DIR, "o", str(tmp_path / "new_dir"))
    paths.check(paths.OUT_DIR, "o", "")                              # not given
    paths.check(paths.IN_FILE, "o", "gs://bucket/x")                 # TensorFlow's business
    assert listing(tmp_path) == before


@pytest.mark.parametrize("kind,name,message", [
    (paths.IN_FILE, "missing", "no such file"),
    (paths.IN_FILE, "dir", "is a dir, not a file"),
    (paths.IN_DIR, "in.txt", "is not a dir"),
    (paths.IN_CHECKPOINT, "in.txt", "neither a dir nor a checkpoint prefix"),
    (paths.OUT_FILE, "dir", "is a dir"),
    (paths.OUT_DIR, "in.txt", "exists and is not a dir"),
    (paths.OUT_FILE, "in.txt/x", "cannot use it (Not a directory)"),
    (paths.OUT_DIR, "l" * 240, "its name is too long"),
])
def test_bad_paths_name_flag_and_path(kind, name, message, tmp_path):
    (tmp_path / "in.txt").write_text("x")
    (tmp_path / "dir").mkdir()
    path = str(tmp_path / name)
    with pytest.raises(UserError) as raised:
        paths.check(kind, "some_flag", path)
    assert str(raised.value).startswith(f"--some_flag={path}: ")
    assert message in str(raised.value)


def test_a_checkpoint_prefix_passes(tmp_path):
    (tmp_path / "model.ckpt-5.index").write_bytes(b"")
    paths.check(paths.IN_CHECKPOINT, "c", str(tmp_path / "model.ckpt-5"))


def test_a_pattern_matching_a_fifo_is_refused_before_a_reader_blocks_on_it(tmp_path):
    os.mkfifo(tmp_path / "train0.tfrecord")
    with pytest.raises(UserError, match="train0.tfrecord is not a regular file"):
        paths.check(paths.IN_PATTERN, "train_data_pattern", str(tmp_path / "train*"))
