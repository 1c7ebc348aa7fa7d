"""CIRCO reader.

Layout: ``annotations/{split}.json`` (``[{"id", "reference_img_id", "target_img_id", "relative_caption",
"shared_concept", "gt_img_ids"}]``), ``COCO2017_unlabeled/annotations/image_info_unlabeled2017.json`` and
``COCO2017_unlabeled/unlabeled2017/{file_name}``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from datasets import DatasetDict, Value

from .paths import check_choice, check_images_exist, read_json, require_keys, require_str, require_str_list, resolve_inside
from .schema import TargetCaptions, build_cir_dataset, query_row


CIRCO_SPLITS: tuple[str, ...] = ("val", "test")


def load_circo(
    data_dir: str | os.PathLike,
    split: str = "val",
    target_captions: TargetCaptions = None,
) -> DatasetDict:
    """Load CIRCO. The gallery is every image of ``image_info_unlabeled2017.json`` (ids as strings, each checked
    on disk up front); queries carry all ground truths in ``gt_ids`` (test queries have none)."""
    check_choice("CIRCO split", split, CIRCO_SPLITS)
    root = Path(data_dir)
    annotation_file = root / "annotations" / f"{split}.json"
    coco = root / "COCO2017_unlabeled"
    info_file = coco / "annotations" / "image_info_unlabeled2017.json"
    entries = read_json(annotation_file)
    info = read_json(info_file)
    if not isinstance(entries, list):
        raise ValueError(f"{annotation_file}: expected a JSON list of queries; got {type(entries).__name__}")
    if not isinstance(info, Mapping) or not isinstance(info.get("images"), list):
        raise ValueError(f"{info_file}: expected an object with an 'images' list")
    if not entries:
        raise ValueError(f"{annotation_file}: the split has no queries (an empty list); expected at least one")
    gallery_paths = {}
    image_folder = coco / "unlabeled2017"
    for i, image in enumerate(info["images"]):
        require_keys(image, ("id", "file_name"), info_file, i)
        where = f"{info_file}: image {i}"
        image_id = require_str(image, "id", where)
        if image_id in gallery_paths:
            raise ValueError(f"{where}: image id {image_id!r} appears twice; expected unique ids")
        gallery_paths[image_id] = resolve_inside(image_folder, require_str(image, "file_name", where),
                                                 source=info_file, entry=f"image {image_id!r}")
    check_images_exist(gallery_paths, str(info_file))

    required = ("id", "reference_img_id", "relative_caption", "shared_concept") + (
        ("target_img_id", "gt_img_ids") if split != "test" else ()
    )
    queries = []
    for i, entry in enumerate(entries):
        require_keys(entry, required, annotation_file, i)
        where = f"{annotation_file}: query {entry['id']!r} (entry {i})"
        ref = require_str(entry, "reference_img_id", where)
        if split != "test":
            target = require_str(entry, "target_img_id", where)
            gt = [g for g in require_str_list(entry["gt_img_ids"], "gt_img_ids", where) if g != ""]
        else:
            target, gt = str(entry.get("target_img_id") or ""), []
        queries.append(
            query_row(
                gallery_paths,
                where=where,
                listed_in=str(info_file),
                query_id=require_str(entry, "id", where),
                reference_id=ref,
                modification_text=require_str(entry, "relative_caption", where),
                target_id=target,
                gt_ids=gt,
                shared_concept=require_str(entry, "shared_concept", where, allow_empty=True),
            )
        )
    return build_cir_dataset(
        queries, gallery_paths, target_captions, f"CIRCO {split}",
        extra_columns={"shared_concept": Value("string")},
    )


__all__ = ["CIRCO_SPLITS", "load_circo"]
