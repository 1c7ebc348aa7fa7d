"""Loaders for the composed image retrieval benchmarks: FashionIQ, CIRR, CIRCO and Shoes.

Each loader reads a benchmark's official on-disk layout and returns a :class:`datasets.DatasetDict` with two
datasets sharing one schema across benchmarks:

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

Images are stored as paths and decoded lazily on access (``datasets.Image``). Every image a split lists is
checked on disk up front, so a missing file fails at load time, not hours into training.

Layouts (REFERENCES.md, "CIR benchmark protocols"):

* FashionIQ: ``captions/cap.{cat}.{split}.json`` (``[{"target", "candidate", "captions": [c1, c2]}]``),
  ``image_splits/split.{cat}.{split}.json`` (list of names), ``images/{name}.png``.
* CIRR: ``captions/cap.rc2.{split}.json`` (``[{"pairid", "reference", "target_hard", "target_soft", "caption",
  "img_set": {"members": [...]}}]``), ``image_splits/split.rc2.{split}.json`` (``{name: relative path}``).
* CIRCO: ``annotations/{split}.json`` (``[{"id", "reference_img_id", "target_img_id", "relative_caption",
  "shared_concept", "gt_img_ids"}]``), ``COCO2017_unlabeled/annotations/image_info_unlabeled2017.json`` and
  ``COCO2017_unlabeled/unlabeled2017/{file_name}``.
* Shoes: ``relative_captions_shoes.json`` (``[{"ImageName", "ReferenceImageName", "RelativeCaption"}]``),
  ``{train,eval}_im_names.txt`` and the images anywhere below the data directory.

FashionIQ training captions are randomised on every access as in the literature (``"c1 and c2"``,
``"c2 and c1"``, ``c1``, ``c2``); evaluation uses the fixed join ``"C1 and c2"``.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, Features, Image, Sequence as SequenceFeature, Value
from transformers.utils import logging

from .captions import load_target_captions


logger = logging.get_logger(__name__)

FASHIONIQ_CATEGORIES: tuple[str, ...] = ("dress", "shirt", "toptee")
FASHIONIQ_SPLITS: tuple[str, ...] = ("train", "val", "test")
CIRR_SPLITS: tuple[str, ...] = ("train", "val", "test1")
CIRCO_SPLITS: tuple[str, ...] = ("val", "test")
SHOES_SPLITS: tuple[str, ...] = ("train", "test")
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp")
#: How many missing file names an error message lists.
_MAX_LISTED = 5

TargetCaptions = str | os.PathLike | Mapping[str, str] | None


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


def _check_choice(kind: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; expected one of {list(choices)}")


def _require_keys(entry: Any, keys: Sequence[str], source: Path, index: int) -> None:
    if not isinstance(entry, Mapping):
        raise ValueError(f"{source}: entry {index} is a {type(entry).__name__}; expected an object with keys {list(keys)}")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise ValueError(f"{source}: entry {index} lacks keys {missing} (has {sorted(entry)})")


def check_images_exist(paths: Mapping[str, str], source: str) -> None:
    """Raise ``FileNotFoundError`` naming how many listed images are missing and the first few."""
    missing = [name for name, p in paths.items() if p is None or not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(paths)} images listed by {source} are missing on disk; first "
            f"{min(len(missing), _MAX_LISTED)}: {missing[:_MAX_LISTED]}"
        )


def _resolve_captions(target_captions: TargetCaptions) -> dict[str, str] | None:
    if target_captions is None:
        return None
    if isinstance(target_captions, Mapping):
        return {str(k): str(v) for k, v in target_captions.items()}
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
                f"first {_MAX_LISTED}: {sorted(set(self.missing))[:_MAX_LISTED]}"
            )


def _build(
    queries: list[dict[str, Any]],
    gallery_paths: Mapping[str, str],
    captions: Mapping[str, str] | None,
    source: str,
    extra_columns: Mapping[str, Any] | None = None,
) -> DatasetDict:
    """Assemble the queries/gallery ``DatasetDict`` from plain rows (images given as paths)."""
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


# --------------------------------------------------------------------------------------------- FashionIQ


def _clean_fashioniq_caption(caption: str) -> str:
    return caption.strip(".?, ")


def fashioniq_eval_caption(captions: Sequence[str]) -> str:
    """FashionIQ's fixed evaluation query text: ``c1.strip(".?, ").capitalize() + " and " + c2.strip(".?, ")``."""
    if len(captions) != 2:
        raise ValueError(f"FashionIQ entries carry two captions; got {len(captions)}: {list(captions)}")
    first, second = (_clean_fashioniq_caption(c) for c in captions)
    return f"{first.capitalize()} and {second}"


def fashioniq_training_caption_variants(captions: Sequence[str]) -> list[str]:
    """The four training variants of the literature: ``"C1 and c2"``, ``"C2 and c1"``, ``"C1"``, ``"C2"``."""
    if len(captions) != 2:
        raise ValueError(f"FashionIQ entries carry two captions; got {len(captions)}: {list(captions)}")
    first, second = (_clean_fashioniq_caption(c) for c in captions)
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


def _fashioniq_image_path(image_dir: Path, name: str) -> str | None:
    direct = image_dir / name
    if direct.suffix.lower() in IMAGE_EXTENSIONS and direct.is_file():
        return str(direct)
    for ext in IMAGE_EXTENSIONS:
        candidate = image_dir / f"{name}{ext}"
        if candidate.is_file():
            return str(candidate)
    return None


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
    """
    _check_choice("FashionIQ category", category, FASHIONIQ_CATEGORIES)
    _check_choice("FashionIQ split", split, FASHIONIQ_SPLITS)
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

    gallery_paths = {str(n): _fashioniq_image_path(images, str(n)) for n in names}
    queries = []
    needed: dict[str, str | None] = dict(gallery_paths)
    for i, entry in enumerate(entries):
        _require_keys(entry, ("candidate", "captions"), caption_file, i)
        ref = str(entry["candidate"])
        target = str(entry.get("target") or "")
        for name in (ref, target):
            if name and name not in needed:
                needed[name] = _fashioniq_image_path(images, name)
        captions = [str(c) for c in entry["captions"]]
        queries.append(
            {
                "query_id": str(i),
                "reference_id": ref,
                "reference_image": needed[ref],
                "modification_text": fashioniq_eval_caption(captions),
                "target_id": target,
                "target_image": needed[target] if target else None,
                "gt_ids": [target] if target else [],
                "img_set": [],
                "captions": captions,
                "category": category,
            }
        )
    check_images_exist(needed, f"{caption_file} / {split_file}")
    dataset = _build(
        queries,
        gallery_paths,
        _resolve_captions(target_captions),
        f"FashionIQ {category}/{split}",
        extra_columns={"captions": SequenceFeature(Value("string")), "category": Value("string")},
    )
    if randomize_captions is None:
        randomize_captions = split == "train"
    if randomize_captions:
        dataset["queries"] = dataset["queries"].with_transform(FashionIQCaptionRandomizer(seed))
    return dataset


# -------------------------------------------------------------------------------------------------- CIRR


def load_cirr(
    data_dir: str | os.PathLike,
    split: str = "val",
    target_captions: TargetCaptions = None,
    image_root: str | os.PathLike | None = None,
) -> DatasetDict:
    """Load a CIRR rc2 split. Image paths in ``split.rc2.{split}.json`` are relative to ``image_root``
    (default: ``data_dir``). The gallery is every image of the split; test1 queries have no target."""
    _check_choice("CIRR split", split, CIRR_SPLITS)
    root = Path(data_dir)
    image_base = Path(image_root) if image_root is not None else root
    caption_file = root / "captions" / f"cap.rc2.{split}.json"
    split_file = root / "image_splits" / f"split.rc2.{split}.json"
    entries = read_json(caption_file)
    name_to_relpath = read_json(split_file)
    if not isinstance(entries, list):
        raise ValueError(f"{caption_file}: expected a JSON list of pairs; got {type(entries).__name__}")
    if not isinstance(name_to_relpath, Mapping):
        raise ValueError(f"{split_file}: expected a JSON object {{name: relative path}}; got {type(name_to_relpath).__name__}")
    gallery_paths = {str(name): os.path.normpath(str(image_base / rel)) for name, rel in name_to_relpath.items()}
    check_images_exist(gallery_paths, str(split_file))

    required = ("pairid", "reference", "caption", "img_set") + (("target_hard",) if split != "test1" else ())
    queries = []
    for i, entry in enumerate(entries):
        _require_keys(entry, required, caption_file, i)
        ref = str(entry["reference"])
        target = str(entry.get("target_hard") or "")
        members = entry["img_set"].get("members", []) if isinstance(entry["img_set"], Mapping) else []
        unknown = [n for n in [ref, target, *members] if n and n not in gallery_paths]
        if unknown:
            raise ValueError(f"{caption_file}: pair {entry['pairid']} names images not in {split_file}: {unknown[:_MAX_LISTED]}")
        queries.append(
            {
                "query_id": str(entry["pairid"]),
                "reference_id": ref,
                "reference_image": gallery_paths[ref],
                "modification_text": str(entry["caption"]),
                "target_id": target,
                "target_image": gallery_paths[target] if target else None,
                "gt_ids": [target] if target else [],
                "img_set": [str(m) for m in members],
            }
        )
    return _build(queries, gallery_paths, _resolve_captions(target_captions), f"CIRR {split}")


# ------------------------------------------------------------------------------------------------- CIRCO


def load_circo(
    data_dir: str | os.PathLike,
    split: str = "val",
    target_captions: TargetCaptions = None,
) -> DatasetDict:
    """Load CIRCO. The gallery is every image of ``image_info_unlabeled2017.json`` (ids as strings); queries
    carry all ground truths in ``gt_ids`` (test queries have none)."""
    _check_choice("CIRCO split", split, CIRCO_SPLITS)
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
    gallery_paths = {}
    for i, image in enumerate(info["images"]):
        _require_keys(image, ("id", "file_name"), info_file, i)
        gallery_paths[str(image["id"])] = str(coco / "unlabeled2017" / image["file_name"])
    check_images_exist(gallery_paths, str(info_file))

    required = ("id", "reference_img_id", "relative_caption", "shared_concept") + (
        ("target_img_id", "gt_img_ids") if split != "test" else ()
    )
    queries = []
    for i, entry in enumerate(entries):
        _require_keys(entry, required, annotation_file, i)
        ref = str(entry["reference_img_id"])
        target = str(entry.get("target_img_id") or "")
        gt = [str(g) for g in entry.get("gt_img_ids", []) if str(g) != ""]
        unknown = [n for n in [ref, target, *gt] if n and n not in gallery_paths]
        if unknown:
            raise ValueError(f"{annotation_file}: query {entry['id']} names images not in {info_file}: {unknown[:_MAX_LISTED]}")
        queries.append(
            {
                "query_id": str(entry["id"]),
                "reference_id": ref,
                "reference_image": gallery_paths[ref],
                "modification_text": str(entry["relative_caption"]),
                "target_id": target,
                "target_image": gallery_paths[target] if target else None,
                "gt_ids": gt,
                "img_set": [],
                "shared_concept": str(entry["shared_concept"]),
            }
        )
    return _build(
        queries, gallery_paths, _resolve_captions(target_captions), f"CIRCO {split}",
        extra_columns={"shared_concept": Value("string")},
    )


# ------------------------------------------------------------------------------------------------- Shoes


def _read_name_list(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"expected file {str(path)!r} does not exist")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_shoes(
    data_dir: str | os.PathLike,
    split: str = "test",
    target_captions: TargetCaptions = None,
) -> DatasetDict:
    """Load Shoes: pairs of ``relative_captions_shoes.json`` whose reference and target are both in the split's
    name list (``train_im_names.txt`` / ``eval_im_names.txt``); gallery = the split's images, reference kept."""
    _check_choice("Shoes split", split, SHOES_SPLITS)
    root = Path(data_dir)
    caption_file = root / "relative_captions_shoes.json"
    names_file = root / ("train_im_names.txt" if split == "train" else "eval_im_names.txt")
    entries = read_json(caption_file)
    names = _read_name_list(names_file)
    if not isinstance(entries, list):
        raise ValueError(f"{caption_file}: expected a JSON list of pairs; got {type(entries).__name__}")
    # Shoes images live in per-category folders whose layout varies between copies: index them by file name.
    on_disk: dict[str, str] = {}
    for folder, _, files in os.walk(root):
        for file in files:
            if Path(file).suffix.lower() in IMAGE_EXTENSIONS:
                on_disk.setdefault(file, os.path.join(folder, file))
    gallery_paths = {n: on_disk.get(n) for n in names}
    check_images_exist(gallery_paths, str(names_file))
    in_split = set(names)
    queries = []
    for i, entry in enumerate(entries):
        _require_keys(entry, ("ImageName", "ReferenceImageName", "RelativeCaption"), caption_file, i)
        ref, target = str(entry["ReferenceImageName"]), str(entry["ImageName"])
        if ref not in in_split or target not in in_split:
            continue
        queries.append(
            {
                "query_id": str(i),
                "reference_id": ref,
                "reference_image": gallery_paths[ref],
                "modification_text": str(entry["RelativeCaption"]).strip(),
                "target_id": target,
                "target_image": gallery_paths[target],
                "gt_ids": [target],
                "img_set": [],
            }
        )
    if not queries:
        raise ValueError(f"{caption_file}: no pair has both images in {names_file}")
    return _build(queries, gallery_paths, _resolve_captions(target_captions), f"Shoes {split}")


BENCHMARKS: tuple[str, ...] = ("fashioniq", "cirr", "circo", "shoes")


def load_cir_dataset(
    benchmark: str,
    data_dir: str | os.PathLike,
    split: str,
    category: str | None = None,
    target_captions: TargetCaptions = None,
    **kwargs: Any,
) -> DatasetDict:
    """Load any benchmark by name (``fashioniq`` needs ``category``)."""
    _check_choice("benchmark", benchmark, BENCHMARKS)
    if benchmark == "fashioniq":
        if category is None:
            raise ValueError(f"FashionIQ needs a category; expected one of {list(FASHIONIQ_CATEGORIES)}")
        return load_fashioniq(data_dir, category, split, target_captions=target_captions, **kwargs)
    if benchmark == "cirr":
        return load_cirr(data_dir, split, target_captions=target_captions, **kwargs)
    if benchmark == "circo":
        return load_circo(data_dir, split, target_captions=target_captions, **kwargs)
    return load_shoes(data_dir, split, target_captions=target_captions, **kwargs)
