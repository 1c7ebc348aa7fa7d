"""Paths read from data files, kept inside the dataset they belong to.

A split file, an annotation or a product list names images by relative path or by id. Such a name is data from
outside the program: ``../../home/me/.ssh/id_rsa``, an absolute path or a symlink pointing out of the dataset must
not make a loader read a file the user never meant to hand over. :func:`resolve_inside` resolves a name against
the folder it is relative to (symlinks followed) and refuses a result outside that folder, naming the data file,
the entry and the path. Both model packages' readers call it (they cannot share code any other way).

An explicit opt-in allows paths outside: ``allow_outside=True`` from Python, or the environment variable
``ALLOW_PATHS_OUTSIDE_DATASET=1`` for the command lines.
"""

from __future__ import annotations

import os


ALLOW_OUTSIDE_ENV = "ALLOW_PATHS_OUTSIDE_DATASET"

__all__ = ["ALLOW_OUTSIDE_ENV", "PathOutsideDatasetError", "check_relative_name", "is_inside", "outside_allowed",
           "resolve_inside"]


class PathOutsideDatasetError(ValueError):
    """A path named by a data file resolves outside the dataset folder it must stay in."""


def outside_allowed(allow_outside: bool | None = None) -> bool:
    """``allow_outside`` when given, else whether ``ALLOW_PATHS_OUTSIDE_DATASET`` is set to a true value."""
    if allow_outside is not None:
        return bool(allow_outside)
    return os.environ.get(ALLOW_OUTSIDE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def _hint() -> str:
    return f"(set {ALLOW_OUTSIDE_ENV}=1, or pass allow_outside=True, only if you trust this data file)"


def check_relative_name(name: str, *, root: str | os.PathLike, source: str | os.PathLike, entry: str,
                        allow_outside: bool | None = None) -> None:
    """Refuse, before anything is looked up on disk, a name that is absolute or climbs out with ``..``."""
    if outside_allowed(allow_outside):
        return
    normalised = os.path.normpath(name)
    if os.path.isabs(name) or normalised == ".." or normalised.startswith(".." + os.sep):
        raise PathOutsideDatasetError(
            f"{source}: {entry} names path {name!r}, which leaves the dataset folder {os.fspath(root)!r}; "
            f"expected a path relative to it {_hint()}"
        )


def resolve_inside(root: str | os.PathLike, name: str, *, source: str | os.PathLike, entry: str,
                   allow_outside: bool | None = None) -> str:
    """``root / name`` normalised, after checking that it (symlinks followed) stays inside ``root``.

    Raises:
        PathOutsideDatasetError: naming ``source``, ``entry`` and the path, when ``name`` is absolute, climbs out
            of ``root`` with ``..``, or is a symlink (or lies below one) that points outside ``root``.
    """
    check_relative_name(name, root=root, source=source, entry=entry, allow_outside=allow_outside)
    path = os.path.normpath(os.path.join(os.fspath(root), name))
    if outside_allowed(allow_outside):
        return path
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise PathOutsideDatasetError(
            f"{source}: {entry} names path {name!r}, which resolves to {real!r} (through a symlink) outside the "
            f"dataset folder {real_root!r} {_hint()}"
        )
    return path


def is_inside(root: str | os.PathLike, path: str | os.PathLike) -> bool:
    """Whether ``path`` (symlinks followed) lies inside ``root``."""
    real_root, real = os.path.realpath(root), os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


