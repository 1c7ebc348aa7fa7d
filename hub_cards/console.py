"""The console-script wrapper every CLI of both model packages uses (they cannot share code any other way: the two
packages never import each other, and this package sits below both).

A CLI module defines ``main(argv=None)``, which returns its result to Python callers, and
``console_main = console_entry_point(main, "csmcir-train")`` for its ``[project.scripts]`` entry: the result is
not handed to ``sys.exit`` (a returned dict would exit with status 1), and bad input — ``ValueError``,
``FileNotFoundError``, ``NotADirectoryError``, ``IsADirectoryError``, ``FileExistsError``, ``PermissionError``,
``TimeoutError`` and :class:`hub_cards.output_lock.OutputInUseError` — ends the process with one line naming the
problem, without a traceback. ``--debug`` anywhere on the command line (it is removed before ``main`` parses the
rest) or the environment variable ``CLI_DEBUG=1`` shows the full traceback instead.

Progress bars go to a terminal only (:func:`quiet_progress_bars_unless_terminal`, called by every console script
and the demo): when stderr is redirected to a file or a pipe, a tqdm bar writes one ``\r`` update after another
into it, so a log becomes one endless line. There, every bar is switched off — transformers' (weight loading and
saving, the Trainer's, the pipelines' gallery encoding), datasets', huggingface_hub's and plain ``tqdm`` ones —
while the Trainer's loss lines and our log messages still print. ``CLI_PROGRESS_BARS=1`` keeps the bars anyway.
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
PROGRESS_ENV = "CLI_PROGRESS_BARS"


def debug_requested(argv: list[str] | None = None) -> bool:
    """Whether ``--debug`` is in ``argv`` (default ``sys.argv``) or ``CLI_DEBUG`` is set to a true value."""
    argv = sys.argv if argv is None else argv
    return DEBUG_FLAG in argv[1:] or os.environ.get(DEBUG_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def quiet_progress_bars_unless_terminal(stream: Any = None) -> bool:
    """Switch every progress bar off when ``stream`` (default ``sys.stderr``) is not a terminal (module docstring).

    Returns whether bars were switched off. Idempotent; ``CLI_PROGRESS_BARS=1`` leaves them on."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if (callable(isatty) and isatty()) or _truthy(PROGRESS_ENV):
        return False
    # Read when datasets is first imported; the call below covers a datasets that is already imported.
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
    import huggingface_hub.utils
    import tqdm.std
    from transformers.utils import logging as transformers_logging

    huggingface_hub.utils.disable_progress_bars()
    transformers_logging.disable_progress_bar()
    # Plain tqdm bars (ours, and the Trainer's ProgressCallback, whose loss lines go through tqdm.write and still
    # print) are created with `disable=` given per call; the default is changed once, at the class every tqdm
    # flavour (tqdm.auto, tqdm.asyncio, transformers' wrapper) initialises through.
    original = tqdm.std.tqdm.__init__
    if not getattr(original, "_quiet_unless_terminal", False):
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            if len(args) <= 10:   # `disable` is tqdm's 11th positional parameter
                kwargs["disable"] = True
            original(self, *args, **kwargs)

        __init__._quiet_unless_terminal = True  # type: ignore[attr-defined]
        __init__.__wrapped__ = original  # type: ignore[attr-defined]
        tqdm.std.tqdm.__init__ = __init__
    return True


def console_entry_point(main: Callable[[], Any], prog: str) -> Callable[[], None]:
    """A zero-argument entry point that runs ``main()`` and exits 0, or exits 2 with ``"<prog>: error: ..."``."""

    def console_main() -> None:
        quiet_progress_bars_unless_terminal()
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


__all__ = ["DEBUG_ENV", "DEBUG_FLAG", "PROGRESS_ENV", "USER_ERRORS", "console_entry_point", "debug_requested",
           "quiet_progress_bars_unless_terminal"]
