"""CIRR reader, and the one place that finds a CIRR-layout split on disk (the captioner's image source uses it too).

Layout (rc2): ``captions/cap.rc2.{split}.json`` (``[{"pairid", "reference", "target_hard", "target_soft",
"caption", "img_set": {"members": [...]}}]``) and ``image_splits/split.rc2.{split}.json`` (``{name: relative
path}``), both either directly under the dataset root or under its ``cirr/`` folder (the official download's
layout). The synthetic benchmark (``data.synthetic``) writes the same layout.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from datasets import DatasetDict

from .paths import (
    check_choice,
    check_images_exist,
    check_relative_name,
    read_json,
    require_keys,
    require_str,
    require_str_list,
    resolve_inside,
)
from .schema import TargetCaptions, build_cir_dataset, query_row


CIRR_SPLITS: tuple[str, ...] = ("train", "val", "test1")


def _layout_roots(dataset_root: Path) -> list[Path]:
    return [dataset_root, dataset_root / "cirr"]


def is_cirr_layout(dataset_root: str | os.PathLike) -> bool:
    """Whether ``dataset_root`` (or its ``cirr/`` folder) holds CIRR's ``image_splits/`` folder."""
    return any((root / "image_splits").is_dir() for root in _layout_roots(Path(dataset_root)))


@dataclass(frozen=True)
class CIRRSplit:
    """Where one CIRR-layout split lives.

    Attributes:
        root: the folder holding ``image_splits/`` and ``captions/``.
        split_file: ``root/image_splits/split.rc2.{split}.json``.
        image_base: the folder the split file's relative paths start from.
        located: whether ``image_base`` was given or verified to hold the split's first image (when no
            candidate holds it, ``image_base`` is ``root`` and the images are missing).
        searched: the candidate image folders that were tried.
        image_paths: ``{image name: path}``, in the split file's order.
    """

    root: Path
    split_file: Path
    image_base: Path
    located: bool
    searched: tuple[Path, ...]
    image_paths: dict[str, str]


def find_cirr_split(
    dataset_root: str | os.PathLike, split: str, image_root: str | os.PathLike | None = None
) -> CIRRSplit:
    """Find split ``split`` of a CIRR-layout dataset and resolve its image paths.

    The split file is looked for in ``dataset_root/image_splits`` and ``dataset_root/cirr/image_splits``.
    Relative paths resolve against ``image_root`` when given, else the first of the layout root, the folder above
    it and their ``img_raw`` sub-folders in which the split's first image exists.

    Every path must stay inside the image folder (``hub_cards.safe_paths``: no absolute path, no ``..`` out, no
    symlink out), unless ``ALLOW_PATHS_OUTSIDE_DATASET=1``.

    Raises:
        ValueError: if neither candidate holds the split file, the split file is not a non-empty object
            ``{image_name: relative_path}``, or a path leaves the image folder (naming the file, image and path).
    """
    candidates = [root / "image_splits" for root in _layout_roots(Path(dataset_root))]
    name = f"split.rc2.{split}.json"
    split_file = next((c / name for c in candidates if (c / name).is_file()), None)
    if split_file is None:
        raise ValueError(
            f"no CIRR split file {name} under {[str(c) for c in candidates]} (expected a CIRR-layout dataset root)"
        )
    mapping = read_json(split_file)
    if not isinstance(mapping, Mapping) or not mapping:
        got = "an empty object" if isinstance(mapping, Mapping) else f"a JSON {type(mapping).__name__}"
        raise ValueError(f"{split_file}: expected a non-empty JSON object {{image_name: relative_path}}; got {got}")
    bad = next(((n, v) for n, v in mapping.items() if not isinstance(v, str)), None)
    if bad is not None:
        raise ValueError(
            f"{split_file}: image {bad[0]!r} maps to {type(bad[1]).__name__} {bad[1]!r}; expected a relative path string"
        )
    root = split_file.parent.parent
    # Refuse absolute and climbing paths before any candidate folder is probed with them.
    for n, rel in mapping.items():
        check_relative_name(rel, root=image_root if image_root is not None else root, source=split_file,
                            entry=f"image {n!r}")
    if image_root is not None:
        searched = (Path(image_root),)
        image_base, located = searched[0], True
    else:
        searched = (root, root.parent, root / "img_raw", root.parent / "img_raw")
        probe = next(iter(mapping.values()))
        found = next((r for r in searched if (r / probe).is_file()), None)
        image_base, located = (found, True) if found is not None else (root, False)
    image_paths = {str(n): resolve_inside(image_base, rel, source=split_file, entry=f"image {n!r}")
                   for n, rel in mapping.items()}
    return CIRRSplit(root, split_file, image_base, located, searched, image_paths)


def load_cirr(
    data_dir: str | os.PathLike,
    split: str = "val",
    target_captions: TargetCaptions = None,
    image_root: str | os.PathLike | None = None,
) -> DatasetDict:
    """Load a CIRR rc2 split (files found by :func:`find_cirr_split`). The gallery is every image of the split,
    each checked on disk up front; test1 queries have no target."""
    check_choice("CIRR split", split, CIRR_SPLITS)
    location = find_cirr_split(data_dir, split, image_root=image_root)
    split_file, gallery_paths = location.split_file, location.image_paths
    caption_file = location.root / "captions" / f"cap.rc2.{split}.json"
    entries = read_json(caption_file)
    if not isinstance(entries, list):
        raise ValueError(f"{caption_file}: expected a JSON list of pairs; got {type(entries).__name__}")
    if not entries:
        raise ValueError(f"{caption_file}: the split has no pairs (an empty list); expected at least one")
    check_images_exist(gallery_paths, str(split_file))

    required = ("pairid", "reference", "caption", "img_set") + (("target_hard",) if split != "test1" else ())
    queries = []
    for i, entry in enumerate(entries):
        require_keys(entry, required, caption_file, i)
        where = f"{caption_file}: pair {entry['pairid']!r} (entry {i})"
        pair_id = require_str(entry, "pairid", where)
        ref = require_str(entry, "reference", where)
        # A split with targets needs every target: one empty target would make the split look hidden-target.
        target = require_str(entry, "target_hard", where) if split != "test1" else str(entry.get("target_hard") or "")
        img_set = entry["img_set"]
        if not isinstance(img_set, Mapping) or "members" not in img_set:
            raise ValueError(
                f"{where}: field 'img_set' is {type(img_set).__name__} {img_set!r}; expected an object "
                "{'id': ..., 'members': [image names]} (Recall_subset needs it)"
            )
        queries.append(
            query_row(
                gallery_paths,
                where=where,
                listed_in=str(split_file),
                query_id=pair_id,
                reference_id=ref,
                modification_text=require_str(entry, "caption", where),
                target_id=target,
                img_set=require_str_list(img_set["members"], "img_set.members", where),
            )
        )
    return build_cir_dataset(queries, gallery_paths, target_captions, f"CIRR {split}")


__all__ = ["CIRR_SPLITS", "CIRRSplit", "find_cirr_split", "is_cirr_layout", "load_cirr"]
