"""The console-script wrapper every CLI of both model packages uses (they cannot share code any other way: the two
packages never import each other, and this package sits below both).

A CLI module defines ``main(argv=None)``, which returns its result to Python callers, and
``console_main = console_entry_point(main, "csmcir-train")`` for its ``[project.scripts]`` entry: the result is
not handed to ``sys.exit`` (a returned dict would exit with status 1), and bad input — ``ValueError``,
``FileNotFoundError``, ``NotADirectoryError``, ``PermissionError`` — ends the process with one line naming the
problem, without a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError)


def console_entry_point(main: Callable[[], Any], prog: str) -> Callable[[], None]:
    """A zero-argument entry point that runs ``main()`` and exits 0, or exits 2 with ``"<prog>: error: ..."``."""

    def console_main() -> None:
        try:
            main()
        except USER_ERRORS as error:
            print(f"{prog}: error: {error}", file=sys.stderr)
            sys.exit(2)

    console_main.__doc__ = f"Entry point of the ``{prog}`` console script (see ``hub_cards.console``)."
    return console_main


__all__ = ["USER_ERRORS", "console_entry_point"]
