"""User-facing errors: one line on stderr, exit code 2, no traceback."""
from __future__ import annotations

import re
import sys
from typing import Callable, Sequence

from absl import app

EXIT_USER_ERROR = 2


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
    match = re.search(r"assertion failed: \[(.*?)\]", text)
    if match:
        # (The message comes back as a printed string tensor: quotes escaped.)
        return match.group(1).replace("\\'", "'").replace('\\"', '"')
    for line in text.splitlines():
        if line.strip() and not line.startswith("Graph execution error"):
            return line.strip()
    return text.strip()


def run_main(main: Callable[[Sequence[str]], None]) -> None:
    """Runs an absl main and turns a UserError into one `error: ...` line.

    absl's app.run parses the flags and reports unknown flags itself; every
    error raised by our own checks is a UserError whose message names the
    file or flag at fault.
    """
    def guarded(argv):
        if len(argv) > 1:
            sys.stderr.write(f"error: unexpected arguments: {' '.join(argv[1:])}\n")
            sys.exit(EXIT_USER_ERROR)
        try:
            main(argv)
        except UserError as err:
            sys.stderr.write(f"error: {err}\n")
            sys.stderr.flush()
            sys.exit(EXIT_USER_ERROR)

    app.run(guarded)
