"""Atomic file writes shared by the package's CLIs, caches and data generators (CSMCIR and MMAPS alike).

A file is written to a temporary name beside its destination, flushed to disk and renamed into place with
`os.replace`, so a reader sees either the old file or the complete new one, never a half-written one; on any
error the temporary file is removed and the destination is untouched.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; creates the parent folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates the file owner-only (0600); give it the permissions an ordinary write would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json_atomically(
    path: str | os.PathLike, obj: Any, indent: int | None = None, default: Callable[[Any], Any] | None = None
) -> Path:
    """Serialise `obj` as UTF-8 JSON (non-ASCII kept) and write it atomically; serialisation errors leave no file."""
    return write_text_atomically(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=default))
