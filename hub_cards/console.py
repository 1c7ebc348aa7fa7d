"""The console-script wrapper every CLI of both model packages uses (they cannot share code any other way: the two
packages never import each other, and this package sits below both).

A CLI module defines ``main(argv=None)``, which returns its result to Python callers, and
``console_main = console_entry_point(main, "csmcir-train")`` for its ``[project.scripts]`` entry: the result is
not handed to ``sys.exit`` (a returned dict would exit with status 1), and bad input — ``ValueError``,
``FileNotFoundError``, ``NotADirectoryError``, ``IsADirectoryError``, ``FileExistsError``, ``PermissionError``,
``TimeoutError`` and :class:`hub_cards.output_lock.OutputInUseError` — ends the process with one line naming the
problem, without a traceback. ``--debug`` anywhere on the command line (it is removed before ``main`` parses the
rest) or the environment variable ``CLI_DEBUG=1`` shows the full traceback instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from .output_lock import OutputInUseError

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError,
               PermissionError, TimeoutError, OutputInUseError)
DEBUG_FLAG = "--debug"
DEBUG_ENV = "CLI_DEBUG"


def debug_requested(argv: list[str] | None = None) -> bool:
    """Whether ``--debug`` is in ``argv`` (default ``sys.argv``) or ``CLI_DEBUG`` is set to a true value."""
    argv = sys.argv if argv is None else argv
    return DEBUG_FLAG in argv[1:] or os.environ.get(DEBUG_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def console_entry_point(main: Callable[[], Any], prog: str) -> Callable[[], None]:
    """A zero-argument entry point that runs ``main()`` and exits 0, or exits 2 with ``"<prog>: error: ..."``."""

    def console_main() -> None:
        debug = debug_requested()
        if DEBUG_FLAG in sys.argv[1:]:
            sys.argv = [sys.argv[0], *(a for a in sys.argv[1:] if a != DEBUG_FLAG)]
        try:
            main()
        except USER_ERRORS as error:
            if debug:
                raise
            message = " ".join(str(error).split("\n")) if str(error) else type(error).__name__
            print(f"{prog}: error: {message}", file=sys.stderr)
            sys.exit(2)

    console_main.__doc__ = f"Entry point of the ``{prog}`` console script (see ``hub_cards.console``)."
    return console_main


__all__ = ["DEBUG_ENV", "DEBUG_FLAG", "USER_ERRORS", "console_entry_point", "debug_requested"]
