"""Atomic file writes: the one place in the project where temp file + ``os.replace`` is written.

A file is written to a temporary name beside its destination (same folder, so the rename never crosses a file
system), flushed to disk and renamed into place with ``os.replace``: a reader sees either the old file or the
complete new one, never a half-written one. On any error the temporary file is removed and the destination is
untouched. Files get the permissions an ordinary ``open(path, "w")`` would give them (``0o666 & ~umask``), not the
owner-only ``0o600`` that ``tempfile.mkstemp`` creates.

    write_json_atomically("out/metrics.json", {"recall@10": 0.5})
    write_text_atomically("out/README.md", card_text)
    with atomic_path("out/model.safetensors") as tmp:   # for writers that want a file name
        safetensors.torch.save_file(tensors, tmp)

(Hub files such as ``pipelines/gallery_index.py`` keep their own copy: a Hub folder cannot import this package.)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_directory", "atomic_path", "write_json_atomically", "write_text_atomically"]


def _current_umask() -> int:
    # The umask can only be read by setting it; set it straight back.
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _default_file_mode() -> int:
    return 0o666 & ~_current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on error removed.

    The parent folder is created. The caller writes the temporary file (by name) inside the ``with`` block; it
    gets normal permissions and is fsynced before the rename.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except PermissionError as err:
        # Name the file the user asked for, not the temporary name beside it.
        raise PermissionError(
            f"cannot write {str(path)!r}: its folder {str(path.parent)!r} is not writable ({err.strerror})"
        ) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _default_file_mode())
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder beside ``path``; on success it takes ``path``'s place, on error it is removed.

    For outputs that are whole folders (a converted model, a generated dataset): the caller writes everything into
    the staging folder, then an existing ``path`` is renamed aside, the staging folder renamed onto ``path`` and the
    old one deleted, so a reader finds the complete old or the complete new folder, never a mix. ``path`` is
    resolved first, so ``"."`` stages in the real parent folder rather than inside the folder it replaces.
    """
    path = Path(path).resolve()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".staging"))
    except PermissionError as err:
        raise PermissionError(
            f"cannot write folder {str(path)!r}: {str(path.parent)!r} is not writable ({err.strerror})"
        ) from None
    os.chmod(staging, 0o777 & ~_current_umask())  # mkdtemp's folders are 0700; a saved model is read by others
    try:
        yield staging
        if path.exists() or path.is_symlink():
            aside = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.rmdir(aside)
            os.replace(path, aside)
            os.replace(staging, path)
            shutil.rmtree(aside) if aside.is_dir() and not aside.is_symlink() else aside.unlink()
        else:
            os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; creates the parent folder; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_json_atomically(
    path: str | os.PathLike,
    payload: Any,
    *,
    indent: int | None = 2,
    default: Callable[[Any], Any] | None = None,
) -> Path:
    """Serialise ``payload`` as UTF-8 JSON (non-ASCII kept) and write it atomically; returns the path.

    ``indent=None`` writes one compact line; ``default`` is passed to ``json.dumps`` for non-JSON values.
    Serialisation happens before any file is created, so a payload that cannot be serialised leaves nothing behind.
    """
    return write_text_atomically(path, json.dumps(payload, indent=indent, ensure_ascii=False, default=default))
