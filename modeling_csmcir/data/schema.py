"""The one ``queries`` / ``gallery`` schema every benchmark reader returns, and the target-caption join.

Each reader (``fashioniq``, ``cirr``, ``circo``, ``shoes``) turns its benchmark's layout into plain rows and calls
:func:`build_cir_dataset`, which returns a :class:`datasets.DatasetDict` of two datasets:

``queries``
    ``query_id`` (str), ``reference_id`` (str), ``reference_image`` (``Image``), ``modification_text`` (str),
    ``target_id`` (str, ``""`` on test splits), ``target_image`` (``Image``, ``None`` on test splits),
    ``target_label`` (int: the target's row in ``gallery``, ``-1`` if unknown; used as ``target_ids`` for
    false-negative masking), ``gt_ids`` (list[str]: every correct target; CIRCO has several), ``img_set``
    (list[str]: CIRR's six ``img_set`` members, else empty) and, when target captions are given,
    ``target_caption`` (str). FashionIQ adds ``captions`` (the two raw captions) and ``category``; CIRCO adds
    ``shared_concept``.
``gallery``
    ``image_id`` (str), ``image`` (``Image``) and, with target captions, ``caption`` (str).

Images are stored as paths and decoded lazily on access (``datasets.Image``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, Features, Image, Sequence as SequenceFeature, Value
from transformers.utils import logging

from .caption_files import load_target_captions
from .paths import MAX_LISTED


logger = logging.get_logger(__name__)

#: Target captions as a reader accepts them: a caption file in the authors' format, a mapping, or none.
TargetCaptions = str | os.PathLike | Mapping[str, str] | None


def _resolve_target_captions(target_captions: TargetCaptions) -> dict[str, str] | None:
    """``{image_name: caption}`` from a caption file or a mapping; ``None`` stays ``None``."""
    if target_captions is None:
        return None
    if isinstance(target_captions, Mapping):
        bad = next(((k, v) for k, v in target_captions.items() if not isinstance(v, str)), None)
        if bad is not None:
            raise ValueError(f"target_captions: the caption of {bad[0]!r} is {type(bad[1]).__name__} {bad[1]!r}; "
                             "expected a string")
        return {str(k): v for k, v in target_captions.items()}
    return load_target_captions(target_captions)


class _CaptionLookup:
    """Find an image's caption whether the caption file keys carry file extensions or not."""

    def __init__(self, captions: Mapping[str, str]):
        self.captions = captions
        self.by_stem = {Path(k).stem: v for k, v in captions.items()}
        self.missing: list[str] = []

    def __call__(self, name: str) -> str:
        if name in self.captions:
            return self.captions[name]
        stem = Path(name).stem
        if stem in self.by_stem:
            return self.by_stem[stem]
        self.missing.append(name)
        return ""

    def report(self, source: str) -> None:
        if self.missing:
            logger.warning(
                f"{len(set(self.missing))} images of {source} have no target caption (empty caption used); "
                f"first {MAX_LISTED}: {sorted(set(self.missing))[:MAX_LISTED]}"
            )


def query_row(
    image_paths: Mapping[str, str | None],
    *,
    where: str,
    listed_in: str,
    query_id: str,
    reference_id: str,
    modification_text: str,
    target_id: str = "",
    gt_ids: list[str] | None = None,
    img_set: Sequence[str] = (),
    **extra: Any,
) -> dict[str, Any]:
    """One ``queries`` row, its images looked up by name in ``image_paths``.

    ``gt_ids`` defaults to ``[target_id]`` (``[]`` without a target); ``extra`` holds reader-specific columns.

    Raises:
        ValueError: ``"{where} names images not in {listed_in}: [...]"`` when the reference, target, a ground
            truth or an ``img_set`` member is not in ``image_paths``.
    """
    if not isinstance(modification_text, str) or not modification_text.strip():
        raise ValueError(
            f"{where}: the modification text is empty ({modification_text!r}); every query needs one "
            "(it would otherwise fail only inside a training batch)"
        )
    gt_ids = ([target_id] if target_id else []) if gt_ids is None else gt_ids
    unknown = [n for n in [reference_id, target_id, *gt_ids, *img_set] if n and n not in image_paths]
    if unknown:
        raise ValueError(f"{where} names images not in {listed_in}: {unknown[:MAX_LISTED]}")
    return {
        "query_id": query_id,
        "reference_id": reference_id,
        "reference_image": image_paths[reference_id],
        "modification_text": modification_text,
        "target_id": target_id,
        "target_image": image_paths[target_id] if target_id else None,
        "gt_ids": gt_ids,
        "img_set": list(img_set),
        **extra,
    }


def build_cir_dataset(
    queries: list[dict[str, Any]],
    gallery_paths: Mapping[str, str],
    target_captions: TargetCaptions,
    source: str,
    extra_columns: Mapping[str, Any] | None = None,
) -> DatasetDict:
    """Assemble the queries/gallery ``DatasetDict`` from plain rows (images given as paths).

    ``target_label`` is filled from each row's ``target_id``; with ``target_captions``, the gallery gets a
    ``caption`` column and the queries a ``target_caption`` column (images without a caption get ``""`` and are
    reported in one warning naming ``source``). ``extra_columns`` declares reader-specific query columns.
    """
    if not queries:
        raise ValueError(f"{source}: the split has no queries; expected at least one")
    if not gallery_paths:
        raise ValueError(f"{source}: the gallery is empty; expected at least one image")
    seen: set[str] = set()
    for row in queries:
        if row["query_id"] in seen:
            raise ValueError(f"{source}: query id {row['query_id']!r} appears twice; expected unique pair ids")
        seen.add(row["query_id"])
    with_target = [bool(row["target_id"]) for row in queries]
    if any(with_target) and not all(with_target):
        empty = [row["query_id"] for row in queries if not row["target_id"]]
        raise ValueError(
            f"{source}: {len(empty)} of {len(queries)} queries have no target (first: {empty[:MAX_LISTED]}) while the "
            "others have one; a split has targets for every query or for none"
        )
    captions = _resolve_target_captions(target_captions)
    gallery_ids = list(gallery_paths)
    index = {gid: i for i, gid in enumerate(gallery_ids)}
    lookup = _CaptionLookup(captions) if captions is not None else None

    gallery_columns: dict[str, list] = {"image_id": gallery_ids, "image": [gallery_paths[g] for g in gallery_ids]}
    gallery_features = {"image_id": Value("string"), "image": Image()}
    if lookup is not None:
        gallery_columns["caption"] = [lookup(g) for g in gallery_ids]
        gallery_features["caption"] = Value("string")

    query_features: dict[str, Any] = {
        "query_id": Value("string"),
        "reference_id": Value("string"),
        "reference_image": Image(),
        "modification_text": Value("string"),
        "target_id": Value("string"),
        "target_image": Image(),
        "target_label": Value("int64"),
        "gt_ids": SequenceFeature(Value("string")),
        "img_set": SequenceFeature(Value("string")),
    }
    query_features.update(extra_columns or {})
    for row in queries:
        row["target_label"] = index.get(row["target_id"], -1) if row["target_id"] else -1
        if lookup is not None:
            row["target_caption"] = lookup(row["target_id"]) if row["target_id"] else ""
    if lookup is not None:
        query_features["target_caption"] = Value("string")
        lookup.report(source)
    columns = {name: [row.get(name) for row in queries] for name in query_features}
    return DatasetDict(
        {
            "queries": Dataset.from_dict(columns, features=Features(query_features)),
            "gallery": Dataset.from_dict(gallery_columns, features=Features(gallery_features)),
        }
    )


__all__ = ["TargetCaptions", "build_cir_dataset", "query_row"]
