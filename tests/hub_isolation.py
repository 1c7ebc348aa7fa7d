"""Tests' access to the clean-process runner (`hub_cards.clean_process`): the real Hub path of a saved folder."""

from __future__ import annotations

import os
from typing import Any

from hub_cards.clean_process import run_in_clean_process


def run_isolated(code: str, cwd: str | os.PathLike, timeout: float = 240.0, env: dict[str, str] | None = None) -> Any:
    """Run `code` where the project's packages cannot be imported; it must print one JSON value last."""
    try:
        return run_in_clean_process(code, cwd, timeout=timeout, env=env)
    except RuntimeError as error:
        raise AssertionError(str(error)) from None
