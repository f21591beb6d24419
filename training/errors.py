"""User-facing errors: one line on stderr, non-zero exit, no traceback."""
from __future__ import annotations

import sys
from typing import Callable, Sequence

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake in the user's input (file, flag, data); printed as one line."""


def run_main(main: Callable[[Sequence[str]], None]) -> None:
    """Runs an absl main and turns UserError into a one-line message.

    absl's app.run parses the flags and reports unknown flags itself; every
    error raised by our own checks is a UserError whose message names the
    file or flag at fault.
    """
    from absl import app

    def guarded(argv):
        try:
            main(argv)
        except UserError as err:
            sys.stderr.write(f"error: {err}\n")
            sys.stderr.flush()
            sys.exit(EXIT_USER_ERROR)

    app.run(guarded)


def define_flag(definer: Callable, name: str, default, help_text: str, **kwargs) -> None:
    """Defines an absl flag unless a stage imported earlier defined it already
    (stages share flag names such as --train_dir and --batch_size)."""
    from absl import flags

    if name not in flags.FLAGS:
        # Attribute the flag to the stage that defines it, so --help lists it.
        caller = sys._getframe(1).f_globals.get("__name__", "")
        module_name = sys.argv[0] if caller == "__main__" else caller
        definer(name, default, help_text, module_name=module_name, **kwargs)
