"""Reading helpers shared by the benchmark readers and the caption image sources.

Every error names the file it comes from: a JSON file that is missing, malformed, not UTF-8 or with a key given
twice, an entry without the keys its layout requires or with a field of the wrong type (``null`` for a caption, a
string where a list belongs), an unknown split or category, images a split lists that are not on disk, and a path
that leaves the dataset folder (``hub_cards.safe_paths``: absolute, ``..`` or a symlink out; refused unless
``ALLOW_PATHS_OUTSIDE_DATASET=1``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hub_cards.safe_paths import PathOutsideDatasetError, check_relative_name, resolve_inside


#: Image file extensions the readers and the captioner recognise, in the order a bare name is completed.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
#: How many offending names an error message lists.
MAX_LISTED = 5


class _DuplicateKeyError(ValueError):
    pass


def _object_without_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json keeps the last of two equal keys without a word; a data file with one image or pair listed twice is wrong.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(key)
        result[key] = value
    return result


def parse_json_text(raw: bytes, source: str | os.PathLike) -> Any:
    """Parse UTF-8 JSON bytes; every failure is a ``ValueError`` naming ``source`` (encoding, syntax with line and
    column, a key that appears twice in one object)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{source}: not UTF-8 text (byte {err.start} is {raw[err.start:err.start + 1]!r}); expected a UTF-8 JSON file"
        ) from None
    try:
        return json.loads(text, object_pairs_hook=_object_without_duplicate_keys)
    except _DuplicateKeyError as err:
        raise ValueError(f"{source}: key {err.args[0]!r} appears twice in one JSON object; expected unique keys") from None
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{source}: malformed JSON at line {err.lineno}, column {err.colno} (char {err.pos}): {err.msg}"
        ) from None


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; malformed or non-UTF-8 JSON, or a key given twice in one object, raises ``ValueError``
    naming the file (and the line and column, or the key)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expected file {str(path)!r} does not exist")
    return parse_json_text(path.read_bytes(), path)


def require_str(entry: Mapping[str, Any], key: str, where: str, *, allow_empty: bool = False) -> str:
    """``entry[key]`` when it is a string (non-blank unless ``allow_empty``); else ``ValueError`` naming ``where``,
    the field, and what it holds (``null`` would otherwise become the text ``"None"``)."""
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"{where}: field {key!r} is {_json_type(value)} {value!r}; expected a string")
    value = str(value)
    if not allow_empty and not value.strip():
        raise ValueError(f"{where}: field {key!r} is empty; expected a non-empty string")
    return value


def require_str_list(value: Any, key: str, where: str) -> list[str]:
    """``value`` as a list of strings; a bare string (which would split into characters) or other types raise
    ``ValueError`` naming ``where`` and the field."""
    if not isinstance(value, list):
        raise ValueError(f"{where}: field {key!r} is {_json_type(value)} {value!r}; expected a list of strings")
    bad = [v for v in value if isinstance(v, bool) or not isinstance(v, (str, int))]
    if bad:
        raise ValueError(f"{where}: field {key!r} holds {_json_type(bad[0])} {bad[0]!r}; expected a list of strings")
    return [str(v) for v in value]


def _json_type(value: Any) -> str:
    names = {type(None): "null", bool: "a boolean", str: "a string", list: "a list", dict: "an object",
             int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)


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


def verify_image_files(paths: Mapping[str, str | None], source: str, *, decode: bool = True) -> None:
    """The up-front verification pass: open every image (and with ``decode``, decode it fully) before a run starts,
    so an empty, truncated, unreadable or oversized (decompression bomb) file fails now, named, not mid-run.

    Raises:
        ValueError: ``"{n} of {total} images listed by {source} cannot be decoded; first 5: [name (path): reason]"``.
    """
    import warnings

    from PIL import Image

    failures = []
    for name, path in paths.items():
        if path is None:
            continue
        try:
            if os.path.getsize(path) == 0:
                raise ValueError("empty file (0 bytes)")
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as image:
                    image.load() if decode else image.verify()
        except Exception as err:  # noqa: BLE001 - PIL raises OSError, SyntaxError, DecompressionBomb*, ...
            failures.append(f"{name} ({path}): {type(err).__name__}: {err}")
    if failures:
        raise ValueError(
            f"{len(failures)} of {len(paths)} images listed by {source} cannot be decoded; first "
            f"{min(len(failures), MAX_LISTED)}: {failures[:MAX_LISTED]}"
        )


def find_image_file(folder: Path, name: str, *, source: str | os.PathLike = "<data file>", entry: str = "an entry",
                    allow_outside: bool | None = None) -> str | None:
    """``folder / name`` when ``name`` carries an image extension and exists, else the first existing
    ``folder / (name + extension)``; ``None`` when neither exists.

    Raises:
        PathOutsideDatasetError: (a ``ValueError``) naming ``source``, ``entry`` and ``name`` when ``name`` leaves
            ``folder`` (absolute, ``..``, or a symlink pointing out), before anything outside is looked at.
    """
    check_relative_name(name, root=folder, source=source, entry=entry, allow_outside=allow_outside)
    found = _find_image_file(folder, name)
    if found is not None:
        resolve_inside(folder, os.path.relpath(found, folder), source=source, entry=entry, allow_outside=allow_outside)
    return found


def _find_image_file(folder: Path, name: str) -> str | None:
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
    "PathOutsideDatasetError",
    "check_choice",
    "check_images_exist",
    "find_image_file",
    "parse_json_text",
    "read_json",
    "read_name_list",
    "require_keys",
    "require_str",
    "require_str_list",
    "resolve_inside",
    "verify_image_files",
]
