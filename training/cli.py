"""User-facing errors and interrupts: one line on stderr (exit code 2, or 128
+ the signal number for SIGINT/SIGTERM), no traceback."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import sys
from typing import Callable, Dict, Iterator, List, Sequence

from absl import app, flags

EXIT_USER_ERROR = 2
# Set (to anything) to get the Python traceback of an unexpected OSError or
# TensorFlow error instead of its one line (for debugging this code).
TRACEBACK_ENV = "YT8M_TRACEBACK"

# Checks run after the flags are parsed and before every entry point's main
# (training.flags adds the path-flag check): functions that raise UserError.
_PREFLIGHT_CHECKS: List[Callable[[], None]] = []


class UserError(Exception):
    """A mistake in the user's input (file, flag, data); printed as one line."""


def first_line(err: BaseException) -> str:
    """The one line of an exception's text that a user needs.

    TensorFlow errors carry the graph trace after the message: this is the
    text of a failed tf.debugging assertion (the readers' data checks, e.g.
    ``labels: a label id is >= num_classes (3862); ...``), else the first
    non-empty line that is not TensorFlow's "Graph execution error" banner.
    """
    text = str(getattr(err, "message", None) or err)
    # (Greedy up to TensorFlow's next "] [" field or the line's end, so that a
    # message holding a "]" of its own is not cut.)
    match = re.search(r"assertion failed: \[(.*?)\](?: \[|\s*$)", text, re.MULTILINE)
    if match:
        # (The message comes back as a printed string tensor: quotes escaped.)
        return match.group(1).replace("\\'", "'").replace('\\"', '"')
    for line in text.splitlines():
        if line.strip() and not line.startswith("Graph execution error"):
            return line.strip()
    return text.strip()


def excerpt(text: str, limit: int = 60) -> str:
    """text quoted for a message; a longer text is shortened visibly
    ('<start>...' (N characters)), never cut without a word."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def add_preflight_check(check: Callable[[], None]) -> None:
    """Runs check() before the main of every entry point (once per check)."""
    if check not in _PREFLIGHT_CHECKS:
        _PREFLIGHT_CHECKS.append(check)


def _string_flag_values() -> Dict[str, str]:
    values = {}
    for name, value in flags.FLAGS.flag_values_dict().items():
        if isinstance(value, str) and value:
            values[name] = value
    return values


def flags_naming(path: str, values: Dict[str, str]) -> List[str]:
    """The flags whose value (or one of its comma-separated items) is `path`
    or a parent of it: the flags an error on `path` is about."""
    target = os.path.abspath(path)
    found = []
    for flag, value in values.items():
        for item in (part.strip() for part in value.split(",")):
            if item and "://" not in item and "*" not in item and (
                    target == os.path.abspath(item)
                    or target.startswith(os.path.abspath(item).rstrip(os.sep) + os.sep)):
                found.append(flag)
                break
    return found


def unexpected_error_line(err: BaseException) -> str:
    """One line for an OSError or TensorFlow error that no check of ours
    caught: the flag whose path it is about (when one is), the path and the
    system's reason."""
    if isinstance(err, OSError):
        path = err.filename if err.filename is not None else ""
        reason = err.strerror or str(err)
        named = flags_naming(str(path), _string_flag_values()) if path else []
        where = f"--{named[0]}={flags.FLAGS[named[0]].value}: " if named else ""
        return f"{where}{path}: {reason}" if path else f"{where}{reason}"
    return first_line(err)


def _is_tensorflow_error(err: BaseException) -> bool:
    return (type(err).__module__.split(".")[0] == "tensorflow"
            and hasattr(err, "message"))


# ---------------------------------------------------------------------------
# Interrupts: SIGINT and SIGTERM become an exception (run_main installs the
# handlers), so that every `with`/`finally` cleans up (the atomic outputs
# remove their temporary files) and the code that must save (the trainer)
# can; run_main prints one line and exits 128 + the signal number.

EXIT_INTERRUPTED = 128  # + the signal number: 130 for SIGINT, 143 for SIGTERM
INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """SIGINT or SIGTERM in the main thread. Not an Exception: only code that
    must clean up or save catches it; `note` says what was kept (one line)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum, self.at, self.note = signum, "", ""

    def noted(self, note: str, at: str = "", replace: bool = True) -> "Interrupted":
        """Sets the note (and "at step N"); replace=False keeps an earlier note."""
        if replace or not self.note:
            self.note, self.at = note, at or self.at
        return self

    def line(self) -> str:
        """e.g. `interrupted (SIGTERM) at step 137; saved ...`."""
        text = f"interrupted ({signal.Signals(self.signum).name})"
        return text + (f" {self.at}" if self.at else "") + (f"; {self.note}" if self.note else "")


@dataclasses.dataclass
class _Deferred:
    """Signals received inside interrupts_deferred blocks (pending), raised
    when the outermost one (depth: how many are open) ends."""
    depth: int = 0
    pending: List[int] = dataclasses.field(default_factory=list)


_deferred = _Deferred()


def _raise_interrupted(signum: int, frame) -> None:
    del frame
    if _deferred.depth:
        _deferred.pending.append(signum)
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """A SIGINT or SIGTERM received inside the block waits for its end (a
    training step and its save finish; a cleanup is not cut short) and is
    raised then as Interrupted, unless an Interrupted is already on its way."""
    _deferred.depth += 1
    try:
        yield
    finally:
        _deferred.depth -= 1
        pending = _deferred.pending
        if not _deferred.depth and pending:
            signum = pending[0]
            pending.clear()
            if not isinstance(sys.exc_info()[1], Interrupted):
                raise Interrupted(signum)


def interrupt_pending() -> bool:
    """True when a signal received in an interrupts_deferred block waits."""
    return bool(_deferred.pending)


def _exit_interrupted(interrupt: Interrupted) -> None:
    for signum in INTERRUPT_SIGNALS:   # (nothing is left to protect: a second signal kills)
        signal.signal(signum, signal.SIG_DFL)
    sys.stdout.flush()
    sys.stderr.write(interrupt.line() + "\n")
    sys.stderr.flush()
    sys.exit(EXIT_INTERRUPTED + interrupt.signum)


def run_main(main: Callable[[Sequence[str]], None]) -> None:
    """Runs an absl main and turns a UserError into one `error: ...` line.

    absl's app.run parses the flags and reports unknown flags itself; then the
    preflight checks run (every path flag, training.paths), then main. Every
    error raised by our own checks is a UserError whose message names the
    file or flag at fault; an OSError or TensorFlow error that no check
    caught still ends in one line (unexpected_error_line) and exit 2, unless
    $YT8M_TRACEBACK is set. A multi-line message is joined, never cut.
    SIGINT and SIGTERM raise Interrupted; its line() is printed and the exit
    code is 128 + the signal number.
    """
    def guarded(argv):
        if len(argv) > 1:
            sys.stderr.write(f"error: unexpected arguments: {' '.join(argv[1:])}\n")
            sys.exit(EXIT_USER_ERROR)
        try:
            for check in _PREFLIGHT_CHECKS:
                check()
            main(argv)
        except UserError as err:
            _exit_with_line(str(err))
        except Exception as err:  # noqa: BLE001 (only OS and TensorFlow errors)
            if (isinstance(err, OSError) or _is_tensorflow_error(err)) \
                    and not os.environ.get(TRACEBACK_ENV):
                _exit_with_line(unexpected_error_line(err))
            raise

    for signum in INTERRUPT_SIGNALS:
        signal.signal(signum, _raise_interrupted)
    try:
        app.run(guarded)
    except Interrupted as interrupt:
        _exit_interrupted(interrupt)


def _exit_with_line(text: str) -> None:
    """Prints `error: <text>` as one line (newlines joined) and exits 2."""
    line = " ".join(part.strip() for part in str(text).splitlines() if part.strip())
    sys.stdout.flush()
    sys.stderr.write(f"error: {line}\n")
    sys.stderr.flush()
    sys.exit(EXIT_USER_ERROR)
