"""Path checks of the command line: can this path be read, or written, at all?

Every path flag of every entry point declares its kind when it is defined
(training.flags ``path=``), and training.cli.run_main checks every such flag
before the stage's main runs, so a path that cannot be read or written fails
in one line naming the flag and the path, before any model is built or any
data read. The checks only look (stat, listdir, a probe file created and
removed at once in the nearest existing parent of an output): they never
create an output or its parents. What an existing output means (resume,
--overwrite) stays the stage's rule. Paths of other file systems (gs://...)
are left to TensorFlow.
"""
from __future__ import annotations

import errno
import glob
import os
import stat
import tempfile
from typing import Callable, Dict, Mapping, Optional

from training.cli import UserError

IN_FILE = "input file"
IN_DIR = "input dir"
IN_DIRS = "input dirs"            # comma-separated input dirs
IN_CHECKPOINT = "checkpoint"      # a model dir or a checkpoint prefix
IN_PATTERN = "data pattern"       # comma-separated globs of input files
OUT_FILE = "output file"
OUT_DIR = "output dir"

# The longest suffix a stage adds to an output's name for its temporary
# siblings (.<name>.tmp-XXXXXXXX.lock, <name>.parts, <name>.top5.tsv, ...).
TEMP_NAME_SLACK = 32


def _reason(err: OSError) -> str:
    return err.strerror or errno.errorcode.get(err.errno or 0, str(err))


def _stat_problem(path: str, missing: str):
    """(os.stat of path, None), or (None, why it fails: `missing` for ENOENT)."""
    try:
        return os.stat(path), None
    except OSError as err:
        return None, missing if err.errno == errno.ENOENT else f"cannot read it ({_reason(err)})"


def _input_file_problem(path: str):
    """Why path is not an existing, readable regular file (None: it is)."""
    info, problem = _stat_problem(path, "no such file")
    if problem:
        return problem
    if stat.S_ISDIR(info.st_mode):
        return "is a dir, not a file"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file"     # (a FIFO would block the reader)
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        return f"cannot read it ({_reason(err)})"
    return None


def check_input_file(flag: str, path: str) -> None:
    """An existing, readable regular file (not a dir, FIFO or device)."""
    problem = _input_file_problem(path)
    if problem:
        raise UserError(f"--{flag}={path}: {problem}")


def check_input_dir(flag: str, path: str) -> None:
    """An existing dir whose entries can be listed."""
    info, problem = _stat_problem(path, "no such dir")
    if problem:
        raise UserError(f"--{flag}={path}: {problem}")
    if not stat.S_ISDIR(info.st_mode):
        raise UserError(f"--{flag}={path}: is not a dir")
    try:
        os.listdir(path)
    except OSError as err:
        raise UserError(f"--{flag}={path}: cannot list it ({_reason(err)})") from None


def check_checkpoint(flag: str, path: str) -> None:
    """A model dir, or a checkpoint prefix whose .index is a readable file."""
    if os.path.isdir(path):
        check_input_dir(flag, path)
        return
    try:
        check_input_file(flag, path + ".index")
    except UserError:
        raise UserError(f"--{flag}={path}: neither a dir nor a checkpoint prefix "
                        f"({path}.index is not a readable file)") from None


def check_input_pattern(flag: str, value: str) -> None:
    """Every file that the comma-separated globs match is a readable file.
    (A glob that matches nothing is the stage's error: it says which.)"""
    for pattern in (item.strip() for item in value.split(",")):
        for path in sorted(glob.glob(pattern)) if pattern else ():
            problem = None if os.path.isdir(path) else _input_file_problem(path)
            if problem:
                raise UserError(f"--{flag}={pattern}: {path} {problem}")


def _nearest_existing(flag: str, path: str) -> str:
    """The nearest ancestor of path that exists; it must be a dir."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError(f"--{flag}={path}: {parent} is not a dir")
    return parent


def _probe(flag: str, path: str, where: str) -> None:
    """A probe file can be made (and is removed at once) in the dir `where`,
    whatever makes that fail (permissions, a read-only file system, /proc or
    /sys, ...): access(2) alone is not enough, since root passes it."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=where)
    except OSError as err:
        raise UserError(f"--{flag}={path}: cannot write in {where} ({_reason(err)})") from None
    os.close(fd)
    os.remove(probe)


def _check_creatable(flag: str, path: str) -> None:
    """path can be created: its name (with the temporary suffixes) is not too
    long and its nearest existing parent is a dir that can be written."""
    name_max = os.pathconf("/", "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
    if len(os.path.basename(os.path.abspath(path)).encode()) + TEMP_NAME_SLACK > name_max:
        raise UserError(f"--{flag}={path}: its name is too long (the stage adds up to "
                        f"{TEMP_NAME_SLACK} characters for its temporary files; at most "
                        f"{name_max} in all)")
    _probe(flag, path, _nearest_existing(flag, path))


def _check_output(flag: str, path: str, want_dir: bool) -> None:
    try:
        info = os.stat(path)
    except OSError as err:
        if err.errno != errno.ENOENT:
            raise UserError(f"--{flag}={path}: cannot use it ({_reason(err)})") from None
        if os.path.islink(path):
            raise UserError(f"--{flag}={path}: is a symlink to nothing") from None
        _check_creatable(flag, path)
        return
    if want_dir:
        if not stat.S_ISDIR(info.st_mode):
            raise UserError(f"--{flag}={path}: exists and is not a dir")
        _probe(flag, path, path)    # written in place (a train dir resumed)
        return
    if stat.S_ISDIR(info.st_mode):
        raise UserError(f"--{flag}={path}: is a dir")
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"--{flag}={path}: exists and is not a regular file")
    _check_creatable(flag, path)    # the temporary sibling, then renamed over it


def check_output_file(flag: str, path: str) -> None:
    """A file that can be written (created, or replaced when it exists)."""
    _check_output(flag, path, want_dir=False)


def check_output_dir(flag: str, path: str) -> None:
    """A dir that can be created (or an existing dir: resume, --overwrite)."""
    _check_output(flag, path, want_dir=True)


def check_input_dirs(flag: str, value: str) -> None:
    for path in (item.strip() for item in value.split(",")):
        if path:
            check_input_dir(flag, path)


CHECKS: Dict[str, Callable[[str, str], None]] = {
    IN_FILE: check_input_file, IN_DIR: check_input_dir, IN_DIRS: check_input_dirs,
    IN_CHECKPOINT: check_checkpoint, IN_PATTERN: check_input_pattern,
    OUT_FILE: check_output_file, OUT_DIR: check_output_dir}


def check(kind: str, flag: str, value: str) -> None:
    """Checks one flag's value as a path of `kind` (empty: not given, fine)."""
    if not value or "://" in value:
        return
    CHECKS[kind](flag, value)


def check_all(kinds: Dict[str, str], values: Mapping[str, Optional[str]]) -> None:
    """check() for every {flag: kind}, with values {flag: value}, in order."""
    for flag, kind in kinds.items():
        check(kind, flag, values.get(flag) or "")

