"""FashionIQ reader and its caption rules.

Layout: ``captions/cap.{category}.{split}.json`` (``[{"target", "candidate", "captions": [c1, c2]}]``),
``image_splits/split.{category}.{split}.json`` (a list of image names) and ``images/{name}.png``.

Training captions are randomised on every access as in the literature (``"C1 and c2"``, ``"C2 and c1"``,
``"C1"``, ``"C2"``); evaluation uses the fixed join ``"C1 and c2"``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path

from datasets import DatasetDict, Sequence as SequenceFeature, Value

from .paths import (
    check_choice,
    check_images_exist,
    find_image_file,
    read_json,
    require_keys,
    require_str,
    require_str_list,
)
from .schema import TargetCaptions, build_cir_dataset, query_row
from .layouts import FASHIONIQ_CATEGORIES


FASHIONIQ_SPLITS: tuple[str, ...] = ("train", "val", "test")


def _clean_fashioniq_caption(caption: str) -> str:
    return caption.strip(".?, ")


def _two_captions(captions: Sequence[str]) -> tuple[str, str]:
    if isinstance(captions, str):
        raise ValueError(f"FashionIQ entries carry a list of two captions; got the string {captions!r}")
    if len(captions) != 2:
        raise ValueError(f"FashionIQ entries carry two captions; got {len(captions)}: {list(captions)}")
    first, second = (_clean_fashioniq_caption(c) for c in captions)
    return first, second


def fashioniq_eval_caption(captions: Sequence[str]) -> str:
    """FashionIQ's fixed evaluation query text: ``c1.strip(".?, ").capitalize() + " and " + c2.strip(".?, ")``."""
    first, second = _two_captions(captions)
    return f"{first.capitalize()} and {second}"


def fashioniq_training_caption_variants(captions: Sequence[str]) -> list[str]:
    """The four training variants of the literature: ``"C1 and c2"``, ``"C2 and c1"``, ``"C1"``, ``"C2"``."""
    first, second = _two_captions(captions)
    return [f"{first.capitalize()} and {second}", f"{second.capitalize()} and {first}", first.capitalize(), second.capitalize()]


class FashionIQCaptionRandomizer:
    """A ``datasets`` transform drawing one of the four caption variants on every access (training only).

    Use through :meth:`datasets.Dataset.with_transform`; rows without ``captions`` pass through unchanged.
    """

    def __init__(self, seed: int | None = None):
        self.rng = random.Random(seed)

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        if "captions" in batch and "modification_text" in batch:
            batch["modification_text"] = [
                self.rng.choice(fashioniq_training_caption_variants(c)) if len(c) == 2 else text
                for c, text in zip(batch["captions"], batch["modification_text"])
            ]
        return batch


def load_fashioniq(
    data_dir: str | os.PathLike,
    category: str,
    split: str = "val",
    target_captions: TargetCaptions = None,
    image_dir: str | os.PathLike | None = None,
    randomize_captions: bool | None = None,
    seed: int | None = None,
) -> DatasetDict:
    """Load one FashionIQ category/split.

    The gallery is ``image_splits/split.{category}.{split}.json`` (the reference stays in it: FashionIQ's
    protocol). ``modification_text`` is the fixed join of the two captions; with ``randomize_captions``
    (default: True for ``train``) the queries dataset re-draws one of the four variants on each access.
    Every image the split lists is checked on disk up front.
    """
    check_choice("FashionIQ category", category, FASHIONIQ_CATEGORIES)
    check_choice("FashionIQ split", split, FASHIONIQ_SPLITS)
    root = Path(data_dir)
    images = Path(image_dir) if image_dir is not None else root / "images"
    caption_file = root / "captions" / f"cap.{category}.{split}.json"
    split_file = root / "image_splits" / f"split.{category}.{split}.json"
    entries = read_json(caption_file)
    names = read_json(split_file)
    if not isinstance(entries, list):
        raise ValueError(f"{caption_file}: expected a JSON list of triplets; got {type(entries).__name__}")
    if not isinstance(names, list):
        raise ValueError(f"{split_file}: expected a JSON list of image names; got {type(names).__name__}")

    if not entries:
        raise ValueError(f"{caption_file}: the split has no triplets (an empty list); expected at least one")
    names = require_str_list(names, "image names", str(split_file))
    gallery_paths = {n: find_image_file(images, n, source=split_file, entry=f"image {n!r}") for n in names}
    queries = []
    needed: dict[str, str | None] = dict(gallery_paths)
    for i, entry in enumerate(entries):
        require_keys(entry, ("candidate", "captions"), caption_file, i)
        where = f"{caption_file}: entry {i}"
        ref = require_str(entry, "candidate", where)
        target = require_str(entry, "target", where) if split != "test" else str(entry.get("target") or "")
        if target and target not in gallery_paths:
            # Scored, it would be a miss the model could never avoid: the protocol ranks the split's images only.
            raise ValueError(
                f"{where}: target {target!r} is not in the gallery {split_file} ({len(gallery_paths)} images); "
                "expected every target to be one of the split's images"
            )
        for name in (ref, target):
            if name and name not in needed:
                needed[name] = find_image_file(images, name, source=caption_file, entry=f"entry {i}")
        captions = require_str_list(entry["captions"], "captions", where)
        queries.append(
            query_row(
                needed,
                where=f"{caption_file}: entry {i}",
                listed_in=str(split_file),
                query_id=str(i),
                reference_id=ref,
                modification_text=fashioniq_eval_caption(captions),
                target_id=target,
                captions=captions,
                category=category,
            )
        )
    check_images_exist(needed, f"{caption_file} / {split_file}")
    dataset = build_cir_dataset(
        queries,
        gallery_paths,
        target_captions,
        f"FashionIQ {category}/{split}",
        extra_columns={"captions": SequenceFeature(Value("string")), "category": Value("string")},
    )
    if randomize_captions is None:
        randomize_captions = split == "train"
    if randomize_captions:
        dataset["queries"] = dataset["queries"].with_transform(FashionIQCaptionRandomizer(seed))
    return dataset


__all__ = [
    "FASHIONIQ_CATEGORIES",
    "FASHIONIQ_SPLITS",
    "FashionIQCaptionRandomizer",
    "fashioniq_eval_caption",
    "fashioniq_training_caption_variants",
    "load_fashioniq",
]
