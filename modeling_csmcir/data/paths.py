"""Reading helpers shared by the benchmark readers and the caption image sources.

Every error names the file it comes from: a JSON file that is missing or malformed, an entry without the keys
its layout requires, an unknown split or category, images a split lists that are not on disk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


#: Image file extensions the readers and the captioner recognise, in the order a bare name is completed.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
#: How many offending names an error message lists.
MAX_LISTED = 5


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; malformed JSON raises ``ValueError`` naming the file, line and column."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expected file {str(path)!r} does not exist")
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}: malformed JSON at line {err.lineno}, column {err.colno} (char {err.pos}): {err.msg}"
        ) from err


def read_name_list(path: str | os.PathLike) -> list[str]:
    """The non-empty lines of a text file of names, stripped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expected file {str(path)!r} does not exist")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def check_choice(kind: str, value: str, choices: Sequence[str]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices`` (``kind`` names it in the message)."""
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; expected one of {list(choices)}")


def require_keys(entry: Any, keys: Sequence[str], source: Path, index: int) -> None:
    """Raise ``ValueError`` naming ``source`` and the entry's index unless ``entry`` is an object with ``keys``."""
    if not isinstance(entry, Mapping):
        raise ValueError(f"{source}: entry {index} is a {type(entry).__name__}; expected an object with keys {list(keys)}")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise ValueError(f"{source}: entry {index} lacks keys {missing} (has {sorted(entry)})")


def check_images_exist(paths: Mapping[str, str | None], source: str) -> None:
    """Raise ``FileNotFoundError`` naming how many listed images are missing and the first few."""
    missing = [name for name, p in paths.items() if p is None or not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(paths)} images listed by {source} are missing on disk; first "
            f"{min(len(missing), MAX_LISTED)}: {missing[:MAX_LISTED]}"
        )


def find_image_file(folder: Path, name: str) -> str | None:
    """``folder / name`` when ``name`` carries an image extension and exists, else the first existing
    ``folder / (name + extension)``; ``None`` when neither exists."""
    direct = folder / name
    if direct.suffix.lower() in IMAGE_EXTENSIONS and direct.is_file():
        return str(direct)
    for ext in IMAGE_EXTENSIONS:
        candidate = folder / f"{name}{ext}"
        if candidate.is_file():
            return str(candidate)
    return None


__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_LISTED",
    "check_choice",
    "check_images_exist",
    "find_image_file",
    "read_json",
    "read_name_list",
    "require_keys",
]
