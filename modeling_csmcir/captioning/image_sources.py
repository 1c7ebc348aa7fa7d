"""Image sources for the captioner: a folder, a CIRR-layout split, a ``datasets`` ``save_to_disk`` folder.

Each yields :class:`ImageRecord` s (a name for the caption file and a loader that decodes the image when called),
so one unreadable image is reported and skipped instead of stopping a run.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..data.cirr import find_cirr_split
from ..data.paths import IMAGE_EXTENSIONS


@dataclass(frozen=True)
class ImageRecord:
    """One image to caption: its name in the caption file and a loader that decodes it (may raise)."""

    name: str
    load: Callable[[], Image.Image]
    source: str = ""


def _decode_image(opener: Callable[[], Any]) -> Image.Image:
    with Image.open(opener()) as img:
        # load() forces the full decode now, so truncated files fail here and not inside the pipeline.
        img.load()
        return img.convert("RGB")


def _file_loader(path: Path) -> Callable[[], Image.Image]:
    return lambda: _decode_image(lambda: path)


def _bytes_loader(data: bytes) -> Callable[[], Image.Image]:
    return lambda: _decode_image(lambda: io.BytesIO(data))


def images_from_directory(
    image_dir: str | os.PathLike, *, recursive: bool = True, keep_extension: bool = False
) -> list[ImageRecord]:
    """Every image file under ``image_dir`` (sorted), named by its path relative to the folder.

    Names drop the extension by default, as FashionIQ and CIRR name their images (``B00006M009``,
    ``dev-245-2-img0``); ``keep_extension=True`` keeps it.

    Raises:
        ValueError: if the folder does not exist, holds no image, or two files map to the same name.
    """
    root = Path(image_dir)
    if not root.is_dir():
        raise ValueError(f"image_dir {str(root)!r} is not a directory")
    pattern = root.rglob("*") if recursive else root.glob("*")
    files = sorted(p for p in pattern if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"image_dir {str(root)!r} holds no image file (expected extensions {IMAGE_EXTENSIONS})")
    records: dict[str, ImageRecord] = {}
    for path in files:
        rel = path.relative_to(root)
        name = rel.as_posix() if keep_extension else rel.with_suffix("").as_posix()
        if name in records:
            raise ValueError(
                f"image_dir {str(root)!r}: {records[name].source!r} and {str(path)!r} both map to image name "
                f"{name!r}; pass keep_extension=True"
            )
        records[name] = ImageRecord(name=name, load=_file_loader(path), source=str(path))
    return list(records.values())


def images_from_cirr_split(
    dataset_root: str | os.PathLike, split: str, *, image_root: str | os.PathLike | None = None
) -> list[ImageRecord]:
    """The images of a CIRR-layout split, found as the CIRR reader finds them (:func:`data.cirr.find_cirr_split`):
    ``image_splits/split.rc2.<split>.json`` under ``dataset_root`` or ``dataset_root/cirr``, its relative paths
    resolved against ``image_root`` or the first candidate folder holding the split's first image.

    Raises:
        ValueError: if the split file is missing or malformed, or no candidate folder holds its images.
    """
    location = find_cirr_split(dataset_root, split, image_root=image_root)
    if not location.located:
        probe = next(iter(location.image_paths))
        raise ValueError(
            f"{location.split_file}: its first image {probe!r} exists under none of "
            f"{[str(r) for r in location.searched]} (pass image_root to say where the images are)"
        )
    return [
        ImageRecord(name=name, load=_file_loader(Path(path)), source=path)
        for name, path in location.image_paths.items()
    ]


def images_from_saved_dataset(
    path: str | os.PathLike,
    *,
    split: str | None = None,
    image_column: str | None = None,
    name_column: str | None = None,
) -> list[ImageRecord]:
    """The images of a ``datasets`` folder written by ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``).

    ``image_column`` defaults to the first column with an ``Image`` feature; ``name_column`` to the first of
    ``image_name``, ``name``, ``id``, ``image_id`` present, else the row index. Images are decoded here, not by
    ``datasets``, so one corrupt row is reported and skipped instead of stopping the run.

    Raises:
        ValueError: naming the folder when the split or a column is missing or names repeat.
    """
    from datasets import Dataset, DatasetDict, Image as ImageFeature, load_from_disk

    ds = load_from_disk(str(path))
    if isinstance(ds, DatasetDict):
        if split is None:
            if len(ds) != 1:
                raise ValueError(f"{path}: a DatasetDict with splits {list(ds)}; pass split=")
            split = next(iter(ds))
        if split not in ds:
            raise ValueError(f"{path}: no split {split!r} (expected one of {list(ds)})")
        ds = ds[split]
    assert isinstance(ds, Dataset)
    if image_column is None:
        image_column = next((c for c, f in ds.features.items() if isinstance(f, ImageFeature)), None)
        if image_column is None:
            raise ValueError(f"{path}: no column with an Image feature (columns {ds.column_names}); pass image_column=")
    elif image_column not in ds.column_names:
        raise ValueError(f"{path}: no image column {image_column!r} (columns {ds.column_names})")
    if name_column is None:
        name_column = next((c for c in ("image_name", "name", "id", "image_id") if c in ds.column_names), None)
    elif name_column not in ds.column_names:
        raise ValueError(f"{path}: no name column {name_column!r} (columns {ds.column_names})")
    raw = ds.cast_column(image_column, ImageFeature(decode=False))
    names = [str(n) for n in raw[name_column]] if name_column else [str(i) for i in range(len(raw))]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: column {name_column!r} has repeated image names")
    records = []
    for index, (name, cell) in enumerate(zip(names, raw[image_column])):
        cell = cell or {}
        if cell.get("bytes") is not None:
            load = _bytes_loader(cell["bytes"])
        elif cell.get("path"):
            load = _file_loader(Path(cell["path"]))
        else:

            def load(index: int = index) -> Image.Image:
                raise ValueError(f"row {index} has no image bytes or path")

        records.append(ImageRecord(name=name, load=load, source=f"{path}[{index}]"))
    return records


__all__ = ["ImageRecord", "images_from_cirr_split", "images_from_directory", "images_from_saved_dataset"]
