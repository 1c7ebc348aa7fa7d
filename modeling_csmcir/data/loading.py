"""Load any composed image retrieval benchmark by name: FashionIQ, CIRR, CIRCO or Shoes.

Each benchmark has its own reader (``fashioniq``, ``cirr``, ``circo``, ``shoes``), and every reader returns the
same ``queries`` / ``gallery`` schema (``schema``).
"""

from __future__ import annotations

import os
from typing import Any

from datasets import DatasetDict

from .circo import load_circo
from .cirr import load_cirr
from .fashioniq import load_fashioniq
from .layouts import BENCHMARKS, FASHIONIQ_CATEGORIES
from .paths import check_choice, verify_image_files
from .schema import TargetCaptions
from .shoes import load_shoes


def load_cir_dataset(
    benchmark: str,
    data_dir: str | os.PathLike,
    split: str,
    category: str | None = None,
    target_captions: TargetCaptions = None,
    **kwargs: Any,
) -> DatasetDict:
    """Load any benchmark by name (``fashioniq`` needs ``category``); ``kwargs`` go to the benchmark's reader."""
    check_choice("benchmark", benchmark, BENCHMARKS)
    if benchmark == "fashioniq":
        if category is None:
            raise ValueError(f"FashionIQ needs a category; expected one of {list(FASHIONIQ_CATEGORIES)}")
        return load_fashioniq(data_dir, category, split, target_captions=target_captions, **kwargs)
    if benchmark == "cirr":
        return load_cirr(data_dir, split, target_captions=target_captions, **kwargs)
    if benchmark == "circo":
        return load_circo(data_dir, split, target_captions=target_captions, **kwargs)
    return load_shoes(data_dir, split, target_captions=target_captions, **kwargs)


def verify_split_images(split: Any, source: str) -> None:
    """Decode every gallery image of a loaded split up front (``--verify_images``)."""
    image_feature = type(split["gallery"].features["image"])
    paths = {row["image_id"]: row["image"]["path"]
             for row in split["gallery"].cast_column("image", image_feature(decode=False))}
    queries = split["queries"].cast_column("reference_image", image_feature(decode=False))
    for reference_id, image in zip(queries["reference_id"], queries["reference_image"]):
        paths.setdefault(reference_id, image["path"] if image else None)
    verify_image_files(paths, source)


__all__ = ["BENCHMARKS", "load_cir_dataset", "verify_split_images"]
