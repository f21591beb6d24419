"""One writer per output: a lock file that the writer flocks and fills with its pid.

A process that writes an output (a train dir, an atomic output of
training.checkpoints, a shard of inference parts, an evaluation's results)
holds an exclusive flock on the output's lock file for as long as it writes.
A second process asking for the same lock is refused at once with one line
naming the output and the holder's pid (read from the file). The kernel drops
a flock when its process dies, even by kill -9, so a lock file left by a dead
writer never blocks: the next writer locks it and writes its own pid. The
mere existence of a lock file means nothing.

On release the file is removed while still locked; a process that opened it
before the removal sees, once it holds the lock, that the path no longer
names its file and starts over with a new one (the standard pattern).

Only local paths are locked: gs:// and other URLs (tf.io.gfile) have no
flock, so their writers are not checked. The lock is advisory: only this
pipeline's writers take it.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import time
from typing import Dict, Iterator, List, Optional

from training import cli
from training.cli import UserError

LOCK_SUFFIX = ".lock"

# Lock files held by this process with lend=True: path -> fd.
_lent: Dict[str, int] = {}


def is_local(path: str) -> bool:
    """A path of the local file system (not gs://, hdfs://, ...)."""
    return "://" not in str(path)


def lock_file_for(target: str) -> str:
    """The lock file of an output file or dir `target`: its sibling .<name>.lock."""
    target = os.path.abspath(target)
    return os.path.join(os.path.dirname(target), f".{os.path.basename(target)}{LOCK_SUFFIX}")


def holder_pid(lock_path: str) -> Optional[int]:
    """The pid written in a lock file (None: no file or no pid yet)."""
    try:
        with open(lock_path) as handle:
            text = handle.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _busy_line(lock_path: str, label: str, advice: str) -> str:
    # The holder writes its pid right after it takes the lock: wait a moment for it.
    pid = None
    for _ in range(20):
        pid = holder_pid(lock_path)
        if pid is not None:
            break
        time.sleep(0.01)
    who = f"pid {pid}" if pid is not None else "pid unknown"
    return f"{label}: another process ({who}) is writing it; {advice}"


def _make_parents(path: str) -> List[str]:
    """Makes the missing parent dirs of `path`; -> those this call made, outermost first."""
    missing: List[str] = []
    parent = os.path.dirname(path)
    while parent and not os.path.isdir(parent):
        missing.insert(0, parent)
        parent = os.path.dirname(parent)
    made = []
    for directory in missing:
        try:
            os.mkdir(directory)
            made.append(directory)
        except FileExistsError:
            pass
    return made


def _open_locked(lock_path: str, wait: bool, made: List[str]) -> Optional[int]:
    """An fd holding the flock of the file now at lock_path, or None when
    another process holds it (wait=False; wait=True blocks until it is free).
    Missing parent dirs are made (and added to `made`)."""
    for attempt in itertools.count():
        made.extend(_make_parents(lock_path))
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except FileNotFoundError:
            if attempt < 100:
                continue  # a parent made by another writer was just removed by it
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            raise
        except BaseException:
            os.close(fd)
            raise
        try:
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # released and removed by its holder meanwhile: take the new one
    raise AssertionError("itertools.count() never ends")


def _release(fd: int, lock_path: str) -> None:
    """Removes the lock file while still holding it, then unlocks (closes)."""
    try:
        if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
            os.remove(lock_path)
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def held(lock_path: str, label: str, advice: str = "wait for it to finish or choose another",
         wait: bool = False, lend: bool = False) -> Iterator[None]:
    """Holds the lock file `lock_path` for the block (module docstring).

    Another holder (another process, or another block of this one): a
    UserError `<label>: another process (pid N) is writing it; <advice>`,
    or with wait=True, waits until it is released (for short writes).
    lend=True: blocks nested in this one that ask for the same lock in this
    process get it (a stage that locked its output up front, then writes it
    through checkpoints.atomic_file). A non-local path is not locked. Missing
    parent dirs of lock_path are made; those still empty at the end are
    removed again (a failed writer leaves no empty dir behind).
    """
    if not is_local(lock_path) or os.path.abspath(lock_path) in _lent:
        yield
        return
    lock_path = os.path.abspath(lock_path)
    made: List[str] = []
    fd: Optional[int] = None
    try:
        with cli.interrupts_deferred():   # (a signal cannot leave a lock file behind)
            fd = _open_locked(lock_path, wait, made)
            if fd is not None:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode("ascii"))
                if lend:
                 _lent[lock_path] = fd
        if fd is None:
            raise UserError(_busy_line(lock_path, label, advice))
        yield
    finally:
        with cli.interrupts_deferred():
            _lent.pop(lock_path, None)
            if fd is not None:
                _release(fd, lock_path)
            for directory in reversed(made):
                with contextlib.suppress(OSError):
                 os.rmdir(directory)  # (only when empty)
