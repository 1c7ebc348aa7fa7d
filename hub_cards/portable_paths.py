"""Paths as a published folder records them: never absolute, so nothing of the machine that wrote them travels.

Rule (:func:`portable_path`), applied to every string value that is an absolute path:

* inside the saved folder → relative to it (``"."`` for the folder itself, ``"checkpoint-500"``);
* beside it (inside the folder's parent) → relative, e.g. ``"../data/synthetic_cir"``: a run's data and its model
  folder usually sit side by side, and the relative path still tells a reader how the run was laid out;
* anywhere else → redacted to ``"<local>/<last component>"`` (e.g. ``"<local>/cirr"``): the name survives, the
  machine's layout (user names, mount points) does not.

Relative paths and Hub ids are kept as they are. ``redact_local_paths`` applies the rule through nested dicts and
lists; the metrics report (``metrics_report.write_metrics_report``) and ``training_args.json``
(``training_settings.save_training_arguments``) are written through it, and ``hub_ready.hub_ready_problems`` checks
the result.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

REDACTED_PREFIX = "<local>"


def _is_absolute(value: str) -> bool:
    return "\n" not in value and (PurePosixPath(value).is_absolute() or PureWindowsPath(value).drive != "")


def portable_path(value: str, base: str | os.PathLike) -> str:
    """``value`` as a folder at ``base`` records it (module docstring); non-absolute values are returned unchanged."""
    if not isinstance(value, str) or not _is_absolute(value):
        return value
    if PureWindowsPath(value).drive and not PurePosixPath(value).is_absolute():
        return f"{REDACTED_PREFIX}/{PureWindowsPath(value).name}"
    path, base = Path(os.path.normpath(value)), Path(os.path.abspath(base))
    for anchor, prefix in ((base, ""), (base.parent, "../")):
        try:
            relative = path.relative_to(anchor).as_posix()
        except ValueError:
            continue
        if prefix and relative in (".", ""):
            return ".."
        return (prefix + relative) if relative != "." else "."
    return f"{REDACTED_PREFIX}/{path.name}"


def redact_local_paths(value: Any, base: str | os.PathLike) -> Any:
    """``value`` with :func:`portable_path` applied to every string inside it (dicts, lists and tuples walked)."""
    if isinstance(value, str):
        return portable_path(value, base)
    if isinstance(value, Mapping):
        return {key: redact_local_paths(item, base) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_local_paths(item, base) for item in value]
    if isinstance(value, os.PathLike):
        return portable_path(os.fspath(value), base)
    return value


__all__ = ["REDACTED_PREFIX", "portable_path", "redact_local_paths"]
