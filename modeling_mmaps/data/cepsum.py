"""Loading CEPSUM / JD product-summarization data into ``datasets`` objects.

On-disk layout (the one CEPSUM ships and :mod:`modeling_mmaps.data.synthetic` writes)::

    data_dir/
      {category}_{split}.json        {sku: {"src": long product text, "tgt": [reference summaries]}}
      images/{sku}.jpg|.jpeg|.png    one product image per sku (also looked up in images/{category}/)
      frcnn_{category}_{split}.h5    optional pre-extracted Faster R-CNN regions, as the original reads them:
                                     groups {sku}/boxes (n,4 pixels x1,y1,x2,y2), {sku}/vis_feas (n,2048),
                                     {sku}/obj_cls (n,1601 detector class distribution), {sku}/img_h, {sku}/img_w

Each example is a row ``{"sku", "category", "src", "tgt", "summary", "image_path", "region_features_path"}``:
``tgt`` keeps every reference (scoring uses them all), ``summary`` is the training target. With
``explode_references=True`` (the original's training-time behaviour) a product with k references
becomes k rows, one per reference; otherwise ``summary`` is the first reference.

Products whose image is missing are **kept** as text-only rows (``image_path=None``) and counted in
the log; pass ``require_images=True`` to make that an error instead. Region features are read
lazily by :class:`RegionFeatureReader` (36 x 2048 floats per product would not fit in memory for the
real corpus).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from transformers.utils import logging

from hub_cards.atomic_files import atomic_path
from hub_cards.safe_paths import (
    PathOutsideDatasetError,
    check_relative_name,
    is_inside,
    outside_allowed,
    resolve_inside,
)

logger = logging.get_logger(__name__)

SPLITS = ("train", "dev", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


def discover_categories(data_dir: str | os.PathLike, split: str = "train") -> list[str]:
    """Categories that have a ``{category}_{split}.json`` file in ``data_dir``, sorted."""
    suffix = f"_{split}.json"
    names = [f[: -len(suffix)] for f in os.listdir(data_dir) if f.endswith(suffix) and not f.startswith(".")]
    return sorted(n for n in names if n)


def read_cepsum_file(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Read and validate one ``{category}_{split}.json`` file.

    Raises ``ValueError`` naming the file and sku when a product is not ``{"src": non-empty str,
    "tgt": non-empty list of str}``.
    """
    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{sku: {{'src', 'tgt'}}}}, got {type(data).__name__}")
    for sku, item in data.items():
        where = f"{path}: sku {sku!r}"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: expected an object with 'src' and 'tgt', got {type(item).__name__}")
        src, tgt = item.get("src"), item.get("tgt")
        if not isinstance(src, str):
            raise ValueError(f"{where}: 'src' must be a string, got {type(src).__name__}")
        if not src.strip():
            raise ValueError(f"{where}: 'src' is empty")
        if not isinstance(tgt, list):
            raise ValueError(f"{where}: 'tgt' must be a list of reference summaries, got {type(tgt).__name__}")
        if not tgt or not all(isinstance(t, str) and t.strip() for t in tgt):
            raise ValueError(f"{where}: 'tgt' must hold at least one non-empty string, got {tgt!r}")
    return data


def find_image(image_dir: str | None, sku: str, category: str | None = None, *, source: str | os.PathLike = "",
               allow_outside: bool | None = None) -> str | None:
    """Path of the image named by ``sku`` under ``image_dir`` (or ``image_dir/category``), else ``None``.

    A sku is data: one that leaves ``image_dir`` (absolute, ``../``, or an image that is a symlink pointing out) is
    refused with a ``ValueError`` naming ``source``, the sku and the path, before anything outside is looked at
    (``hub_cards.safe_paths``; ``ALLOW_PATHS_OUTSIDE_DATASET=1`` or ``allow_outside=True`` allows it).
    """
    if not image_dir:
        return None
    where, entry = source or image_dir, f"sku {sku!r}"
    check_relative_name(sku, root=image_dir, source=where, entry=entry, allow_outside=allow_outside)
    folders = [os.path.join(image_dir, category)] if category else []
    folders.append(image_dir)
    for folder in folders:
        for ext in IMAGE_EXTENSIONS:
            candidate = os.path.join(folder, sku + ext)
            if not outside_allowed(allow_outside) and not is_inside(image_dir, os.path.dirname(candidate) or "."):
                raise PathOutsideDatasetError(
                    f"{where}: {entry} names path {candidate!r}, which leaves the image folder {image_dir!r}"
                )
            if os.path.isfile(candidate):
                return resolve_inside(image_dir, os.path.relpath(candidate, image_dir), source=where, entry=entry,
                                      allow_outside=allow_outside)
    return None


def load_cepsum_split(
    data_dir: str | os.PathLike,
    split: str,
    *,
    categories: Sequence[str] | None = None,
    image_dir: str | os.PathLike | None = None,
    region_features_dir: str | os.PathLike | None = None,
    require_images: bool = False,
    explode_references: bool = False,
    max_products: int | None = None,
):
    """One split of CEPSUM as a ``datasets.Dataset`` (rows described in the module docstring).

    Args:
        data_dir: folder holding ``{category}_{split}.json``.
        split: ``"train"``, ``"dev"`` or ``"test"`` (any name with matching files works).
        categories: which categories to read; default every category found for the split.
        image_dir: image folder; default ``data_dir/images`` when it exists. ``""`` disables images.
        region_features_dir: folder of ``frcnn_{category}_{split}.h5``; default ``data_dir``.
        require_images: raise instead of keeping products without an image.
        explode_references: one row per reference summary (training), instead of one per product.
        max_products: read at most this many products per category (quick runs).
    """
    import datasets

    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise ValueError(f"data_dir: expected an existing folder, got {data_dir!r}")
    categories = list(categories) if categories else discover_categories(data_dir, split)
    if not categories:
        raise ValueError(f"{data_dir}: no '{{category}}_{split}.json' file found")
    if image_dir is None:
        default = os.path.join(data_dir, "images")
        image_dir = default if os.path.isdir(default) else None
    image_dir = os.fspath(image_dir) if image_dir else None
    feature_dir = os.fspath(region_features_dir) if region_features_dir else data_dir

    rows: dict[str, list] = {k: [] for k in ("sku", "category", "src", "tgt", "summary", "image_path", "region_features_path")}
    missing: list[str] = []
    for category in categories:
        path = os.path.join(data_dir, f"{category}_{split}.json")
        if not os.path.isfile(path):
            raise ValueError(f"category {category!r}: expected file {path}, which does not exist")
        products = read_cepsum_file(path)
        h5_path = os.path.join(feature_dir, f"frcnn_{category}_{split}.h5")
        h5_path = h5_path if os.path.isfile(h5_path) else None
        for index, (sku, item) in enumerate(products.items()):
            if max_products is not None and index >= max_products:
                break
            image_path = find_image(image_dir, sku, category, source=path)
            if image_path is None:
                missing.append(sku)
            targets = item["tgt"] if explode_references else item["tgt"][:1]
            for summary in targets:
                rows["sku"].append(str(sku))
                rows["category"].append(category)
                rows["src"].append(item["src"])
                rows["tgt"].append(list(item["tgt"]))
                rows["summary"].append(summary)
                rows["image_path"].append(image_path)
                rows["region_features_path"].append(h5_path)
    if missing:
        if require_images:
            raise ValueError(
                f"{len(missing)} product(s) of split {split!r} have no image in {image_dir!r} "
                f"(first: {missing[:5]}); expected one file '<sku>.jpg|.png' per product"
            )
        logger.warning(
            "split %r: %d product(s) have no image file in %r and are kept text-only (first: %s)",
            split, len(missing), image_dir, missing[:5],
        )
    features = datasets.Features(
        {
            "sku": datasets.Value("string"),
            "category": datasets.Value("string"),
            "src": datasets.Value("string"),
            "tgt": datasets.Sequence(datasets.Value("string")),
            "summary": datasets.Value("string"),
            "image_path": datasets.Value("string"),
            "region_features_path": datasets.Value("string"),
        }
    )
    dataset = datasets.Dataset.from_dict(rows, features=features)
    dataset.info.description = f"CEPSUM-layout split {split!r} from {data_dir}; {len(missing)} product(s) without image"
    return dataset


def load_cepsum(
    data_dir: str | os.PathLike,
    *,
    splits: Sequence[str] = SPLITS,
    explode_train_references: bool = True,
    **kwargs: Any,
):
    """Every available split as a ``datasets.DatasetDict`` (train rows exploded per reference by default)."""
    import datasets

    out = {}
    for split in splits:
        if not discover_categories(data_dir, split) and not kwargs.get("categories"):
            continue
        out[split] = load_cepsum_split(
            data_dir, split, explode_references=explode_train_references and split == "train", **kwargs
        )
    if not out:
        raise ValueError(f"{data_dir}: no CEPSUM files for any of the splits {list(splits)}")
    return datasets.DatasetDict(out)


@dataclass
class RegionFeatures:
    """Pre-extracted regions of one image: ``features (n, d)``, ``boxes (n, 4)`` normalised to [0, 1]
    as (x1, y1, x2, y2) / (w, h, w, h), and the detector's ``class_probs (n, C)``."""

    features: np.ndarray
    boxes: np.ndarray
    class_probs: np.ndarray


class RegionFeatureReader:
    """Lazy reader of an original-format ``frcnn_{category}_{split}.h5`` file.

    ``reader.get(sku)`` returns :class:`RegionFeatures` or ``None`` when the sku has no group (the
    original then substitutes one all-zero region; the collator decides what to do).
    """

    def __init__(self, path: str | os.PathLike, max_regions: int = 36):
        import h5py

        self.path = os.fspath(path)
        self.max_regions = max_regions
        self._file = h5py.File(self.path, "r")

    def get(self, sku: str) -> RegionFeatures | None:
        if sku not in self._file:
            return None
        group = self._file[sku]
        for key in ("boxes", "vis_feas", "img_h", "img_w"):
            if key not in group:
                raise ValueError(f"{self.path}: sku {sku!r} lacks dataset {key!r}")
        boxes = np.asarray(group["boxes"][()], dtype=np.float32)[: self.max_regions].copy()
        width, height = float(group["img_w"][()]), float(group["img_h"][()])
        if width <= 0 or height <= 0:
            raise ValueError(f"{self.path}: sku {sku!r} has image size {width}x{height}")
        boxes[:, (0, 2)] /= width
        boxes[:, (1, 3)] /= height
        np.clip(boxes, 0.0, 1.0, out=boxes)
        features = np.asarray(group["vis_feas"][()], dtype=np.float32)[: self.max_regions]
        if "obj_cls" in group:
            class_probs = np.asarray(group["obj_cls"][()], dtype=np.float32)[: self.max_regions]
        else:
            class_probs = np.zeros((len(features), 0), dtype=np.float32)
        if len(features) != len(boxes):
            raise ValueError(f"{self.path}: sku {sku!r} has {len(features)} features but {len(boxes)} boxes")
        return RegionFeatures(features=features, boxes=boxes, class_probs=class_probs)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RegionFeatureReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def write_region_features(path: str | os.PathLike, regions: dict[str, dict[str, np.ndarray]]) -> None:
    """Write ``{sku: {"boxes", "vis_feas", "obj_cls", "img_h", "img_w"}}`` in the original's HDF5 layout
    (atomically: a temp file renamed into place)."""
    import h5py

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for sku, parts in regions.items():
            group = f.create_group(sku)
            for key, value in parts.items():
                group.create_dataset(key, data=value)


class MMAPSDataCollator:
    """Turn rows of :func:`load_cepsum_split` into a model batch through an ``MMAPSProcessor``.

    Args:
        processor: the ``MMAPSProcessor`` (tokenizer, image processor, attribute vocabulary).
        visual_input: ``"images"`` (open ``image_path`` → ``pixel_values``), ``"regions"`` (read
            ``region_features_path`` → ``visual_features``/``visual_boxes``/``visual_class_probs``) or ``"none"``
            (text only: the image-blind ablation). Rows without an image are text-only in every mode.
        language: how attribute words are matched in the references (see ``attributes.find_attributes``).
        with_labels: add ``labels`` (the row's ``summary``) and, when the processor has a vocabulary,
            ``attribute_labels`` (its words found in any of the row's references ``tgt``).
    """

    def __init__(self, processor: Any, visual_input: str = "images", language: str = "zh", with_labels: bool = True):
        if visual_input not in ("images", "regions", "none"):
            raise ValueError(f"visual_input: expected 'images', 'regions' or 'none', got {visual_input!r}")
        self.processor = processor
        self.visual_input = visual_input
        self.language = language
        self.with_labels = with_labels
        self._readers: dict[str, RegionFeatureReader] = {}

    def _image(self, path: str | None) -> Any:
        if not path:
            return None
        from PIL import Image

        if not os.path.isfile(path):
            raise ValueError(f"image_path: file {path} does not exist (it did when the dataset was loaded)")
        with Image.open(path) as image:
            return image.convert("RGB")

    def _regions(self, row: dict[str, Any]) -> RegionFeatures | None:
        path = row.get("region_features_path")
        if not path:
            return None
        if path not in self._readers:
            self._readers[path] = RegionFeatureReader(path, max_regions=getattr(self.processor, "max_regions", 36))
        return self._readers[path].get(row["sku"])

    def __call__(self, rows: list[dict[str, Any]]) -> Any:
        from .attributes import find_attributes

        kwargs: dict[str, Any] = {"text": [row["src"] for row in rows]}
        if self.visual_input == "images":
            kwargs["images"] = [self._image(row.get("image_path")) for row in rows]
        elif self.visual_input == "regions":
            regions = [self._regions(row) for row in rows]
            if any(r is not None for r in regions):
                kwargs["visual_features"] = [None if r is None else r.features for r in regions]
                kwargs["visual_boxes"] = [None if r is None else r.boxes for r in regions]
                if all(r is None or r.class_probs.shape[-1] > 0 for r in regions):
                    kwargs["visual_class_probs"] = [None if r is None else r.class_probs for r in regions]
        if self.with_labels:
            kwargs["summaries"] = [row["summary"] for row in rows]
            vocabulary = getattr(self.processor, "attribute_vocabulary", None)
            if vocabulary:
                kwargs["attributes"] = [
                    sorted(set().union(*(find_attributes(t, vocabulary, language=self.language) for t in row["tgt"])))
                    for row in rows
                ]
        return self.processor(**kwargs)
