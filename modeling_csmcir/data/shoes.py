"""Shoes reader.

Layout: ``relative_captions_shoes.json`` (``[{"ImageName", "ReferenceImageName", "RelativeCaption"}]``),
``{train,eval}_im_names.txt`` and the images anywhere below the data directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from datasets import DatasetDict

from .paths import (
    IMAGE_EXTENSIONS,
    check_choice,
    check_images_exist,
    read_json,
    read_name_list,
    require_keys,
    require_str,
    resolve_inside,
)
from .schema import TargetCaptions, build_cir_dataset, query_row


SHOES_SPLITS: tuple[str, ...] = ("train", "test")


def load_shoes(
    data_dir: str | os.PathLike,
    split: str = "test",
    target_captions: TargetCaptions = None,
) -> DatasetDict:
    """Load Shoes: pairs of ``relative_captions_shoes.json`` whose reference and target are both in the split's
    name list (``train_im_names.txt`` / ``eval_im_names.txt``); gallery = the split's images, reference kept."""
    check_choice("Shoes split", split, SHOES_SPLITS)
    root = Path(data_dir)
    caption_file = root / "relative_captions_shoes.json"
    names_file = root / ("train_im_names.txt" if split == "train" else "eval_im_names.txt")
    entries = read_json(caption_file)
    names = read_name_list(names_file)
    if not isinstance(entries, list):
        raise ValueError(f"{caption_file}: expected a JSON list of pairs; got {type(entries).__name__}")
    # Shoes images live in per-category folders whose layout varies between copies: index them by file name.
    on_disk: dict[str, str] = {}
    for folder, _, files in os.walk(root):
        for file in files:
            if Path(file).suffix.lower() in IMAGE_EXTENSIONS:
                path = os.path.join(folder, file)
                # A symlink pointing out of the dataset is refused before anything reads it.
                resolve_inside(root, os.path.relpath(path, root), source=root, entry=f"image file {file!r}")
                on_disk.setdefault(file, path)
    gallery_paths = {n: on_disk.get(n) for n in names}
    check_images_exist(gallery_paths, str(names_file))
    in_split = set(names)
    queries = []
    for i, entry in enumerate(entries):
        require_keys(entry, ("ImageName", "ReferenceImageName", "RelativeCaption"), caption_file, i)
        where = f"{caption_file}: pair {i}"
        ref, target = require_str(entry, "ReferenceImageName", where), require_str(entry, "ImageName", where)
        if ref not in in_split or target not in in_split:
            continue
        require_str(entry, "RelativeCaption", where)
        queries.append(
            query_row(
                gallery_paths,
                where=f"{caption_file}: pair {i}",
                listed_in=str(names_file),
                query_id=str(i),
                reference_id=ref,
                modification_text=str(entry["RelativeCaption"]).strip(),
                target_id=target,
            )
        )
    if not queries:
        raise ValueError(f"{caption_file}: no pair has both images in {names_file}")
    return build_cir_dataset(queries, gallery_paths, target_captions, f"Shoes {split}")


__all__ = ["SHOES_SPLITS", "load_shoes"]
