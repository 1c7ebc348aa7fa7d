"""Target-caption files in the CSMCIR authors' format: reading, validating and writing them.

CSMCIR gives every target image a caption written by a multimodal LLM under a multi-level
chain-of-thought prompt (MCoT). The authors ship these captions per dataset/category as JSON objects
mapping an image name to either

* a plain caption string, ``{"B0001.jpg": "a red sleeveless dress"}``, or
* a structured entry whose ``"Final_Caption"`` is the caption used for training, with the chain-of-thought
  levels kept beside it::

      {"B0001.jpg": {"level_1_global": "...", "level_2_objects": "...",
                     "level_3_attributes": "...", "Final_Caption": "a red sleeveless dress"}}

This module is the single place that knows that format: the data loaders read captions with
:func:`load_target_captions`, the MCoT captioner (``captioning``) and the synthetic scene describer write
entries built by :func:`make_caption_entry` with :func:`save_caption_file`, and resumable runs read the
full entries back with :func:`load_caption_entries`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

from transformers.utils import logging

from hub_cards.atomic_files import write_json_atomically

from .paths import parse_json_text


logger = logging.get_logger(__name__)

#: Key of the caption actually used by the model inside a structured entry.
FINAL_CAPTION_KEY = "Final_Caption"
#: The chain-of-thought levels of a structured entry, coarse to fine.
MCOT_LEVEL_KEYS: tuple[str, ...] = ("level_1_global", "level_2_objects", "level_3_attributes")
#: Extra key recording why a caption fell back to less structure (absent when parsing succeeded).
FALLBACK_REASON_KEY = "fallback_reason"

CaptionEntry = Union[str, dict[str, Any]]


def _type_name(value: Any) -> str:
    return type(value).__name__


def caption_from_entry(entry: CaptionEntry, *, image_name: str = "?", source: str | os.PathLike = "<mapping>") -> str:
    """Return the caption of one entry: the string itself, or ``entry["Final_Caption"]``.

    Raises:
        ValueError: naming ``source`` and ``image_name`` when the entry is neither a string nor a dict with a
            string ``Final_Caption``.
    """
    if isinstance(entry, str):
        return entry
    if isinstance(entry, Mapping):
        if FINAL_CAPTION_KEY not in entry:
            raise ValueError(
                f"{source}: entry for image {image_name!r} is a dict without a {FINAL_CAPTION_KEY!r} key "
                f"(expected a string or a dict with {FINAL_CAPTION_KEY!r}; got keys {sorted(entry)})"
            )
        caption = entry[FINAL_CAPTION_KEY]
        if not isinstance(caption, str):
            raise ValueError(
                f"{source}: entry for image {image_name!r} has {FINAL_CAPTION_KEY!r} of type "
                f"{_type_name(caption)} (expected str)"
            )
        return caption
    raise ValueError(
        f"{source}: entry for image {image_name!r} is of type {_type_name(entry)} "
        f"(expected a caption string or a dict with {FINAL_CAPTION_KEY!r})"
    )


def _read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caption file {str(path)!r} does not exist")
    try:
        data = parse_json_text(path.read_bytes(), path)
    except ValueError as err:
        message = str(err).replace(": malformed JSON at line ", ": not valid JSON (line ", 1)
        raise ValueError(
            f"{message}; expected an object {{image_name: caption or {{..., 'Final_Caption': caption}}}}"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: top-level JSON value is a {_type_name(data)} "
            "(expected an object {image_name: caption or {..., 'Final_Caption': caption}})"
        )
    return data


def load_caption_entries(path: str | os.PathLike) -> dict[str, CaptionEntry]:
    """Read a caption file and return its entries unchanged (strings or structured dicts), validated.

    Every entry must be a string or a dict with a string ``Final_Caption``; other keys are kept as they are.
    Use this where the chain-of-thought levels matter (resuming a caption run); use
    :func:`load_target_captions` where only the caption is needed.
    """
    data = _read_json_object(path)
    for name, entry in data.items():
        caption_from_entry(entry, image_name=name, source=path)
    return data


def load_target_captions(path: str | os.PathLike) -> dict[str, str]:
    """Read an authors'-format caption file into ``{image_name: caption}``.

    Each value of the JSON object is either the caption string or a dict whose ``Final_Caption`` is the
    caption (``caption = entry if isinstance(entry, str) else entry["Final_Caption"]``).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: naming the file (and the image name) when the JSON is invalid, the top level is not an
            object, or an entry has neither form.
    """
    data = _read_json_object(path)
    return {name: caption_from_entry(entry, image_name=name, source=path) for name, entry in data.items()}


def make_caption_entry(
    final_caption: str,
    *,
    level_1_global: str = "",
    level_2_objects: str = "",
    level_3_attributes: str = "",
    fallback_reason: str | None = None,
) -> dict[str, str]:
    """Build one structured entry in the authors' format (levels, then ``Final_Caption``).

    ``fallback_reason`` is stored under ``"fallback_reason"`` only when given, so entries produced by a clean
    parse are exactly the authors' four keys and readers of the format are unaffected by the extra key.
    """
    if not isinstance(final_caption, str):
        raise ValueError(f"final_caption must be a str (got {_type_name(final_caption)})")
    entry = {
        "level_1_global": level_1_global,
        "level_2_objects": level_2_objects,
        "level_3_attributes": level_3_attributes,
        FINAL_CAPTION_KEY: final_caption,
    }
    if fallback_reason:
        entry[FALLBACK_REASON_KEY] = fallback_reason
    return entry


def save_caption_file(path: str | os.PathLike, mapping: Mapping[str, CaptionEntry]) -> Path:
    """Write ``{image_name: caption or entry}`` as UTF-8 JSON, atomically (``hub_cards.atomic_files``).

    Entries are validated first (same rules as :func:`load_target_captions`), so a file written here always
    reads back. Key order is kept as given; non-ASCII text (e.g. Chinese captions) is written as is. A reader
    never sees a half-written file: either the old file or the complete new one.

    Returns:
        The path written.
    """
    path = Path(path)
    for name, entry in mapping.items():
        if not isinstance(name, str):
            raise ValueError(f"{path}: image names must be str (got {_type_name(name)} {name!r})")
        caption_from_entry(entry, image_name=name, source=path)
    return write_json_atomically(path, dict(mapping), indent=2)


__all__ = [
    "FALLBACK_REASON_KEY",
    "FINAL_CAPTION_KEY",
    "MCOT_LEVEL_KEYS",
    "caption_from_entry",
    "load_caption_entries",
    "load_target_captions",
    "make_caption_entry",
    "save_caption_file",
]
