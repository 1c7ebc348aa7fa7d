"""``csmcir-search``: a saved ``GalleryIndex`` + queries → ranked hits as JSONL, and optionally a PNG grid of them.

    csmcir-search --index_dir indexes/cirr-val --model_name_or_path my-csmcir \\
        --queries data/cirr/captions/cap.rc2.val.json --image_root data/cirr --output_file hits.jsonl \\
        --grid_file hits.png

Queries (``--queries``) are a JSONL file, one object per line, or a CIRR-style JSON list (``cap.rc2.<split>.json``):

* ``{"image": ..., "text": ...}`` (or CIRR's ``"reference"`` / ``"caption"``): a composed query, reference image +
  modification text;
* ``{"text": ...}`` only: a text-only query (the words against the gallery, ``text_query_features``);
* ``{"image": ...}`` only: an image-only query (image → image, ``image_query_features``).

An optional ``"id"`` (CIRR: ``"pairid"``) names the query in the output; ``"query_type"`` may force the kind.
Images are paths relative to ``--image_root`` (default: the queries file's folder; paths never leave it) or, in a
CIRR layout, image names that ``<image_root>/image_splits/*.json`` maps to files; a name without extension also
matches ``<name>.png`` / ``.jpg`` / ``.jpeg`` / ``.webp``. The model (``--model_name_or_path``) encodes the queries and
must be the model that built the index (checked: config hash and weights fingerprint).

Each output line: ``{"query_id", "query_type", "image", "text", "hits": [{"rank", "id", "score", **metadata}]}``.
The grid (``--grid_file``) shows the first ``--grid_queries`` queries, one row each: the query image with its
modification text above it, then the top ``--grid_top_k`` hits (found under ``--gallery_root``, default the image
root, by id) with their ids and scores. Every bad input is one line naming the file, line and field.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser

from hub_cards.console import console_entry_point

from .eval import ModelArguments

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
_QUERY_TYPES = ("composed", "text", "image")


@dataclass
class SearchArguments:
    """What ``csmcir-search`` searches and where the results go."""

    index_dir: str = field(metadata={"help": "Folder of a saved GalleryIndex (csmcir-index or GalleryIndex.save)."})
    queries: str = field(metadata={"help": "JSONL queries (image/text, text only or image only) or a CIRR captions JSON."})
    output_file: str = field(default="search_results.jsonl", metadata={"help": "Ranked hits, one JSON line per query."})
    image_root: str | None = field(default=None, metadata={"help": "Folder query image paths are relative to."})
    gallery_root: str | None = field(default=None, metadata={"help": "Folder of the gallery images (for the grid)."})
    top_k: int = field(default=10, metadata={"help": "Hits per query."})
    batch_size: int = field(default=32, metadata={"help": "Queries encoded per forward pass."})
    check_model: bool = field(default=True, metadata={"help": "Refuse an index built by another model."})
    mmap: bool = field(default=False, metadata={"help": "Map the index's embeddings instead of reading them into "
                                                        "memory (galleries larger than memory; exact search streams "
                                                        "the file)."})
    grid_file: str | None = field(default=None, metadata={"help": "Write a PNG grid of the top hits here."})
    grid_queries: int = field(default=8, metadata={"help": "Queries (rows) shown in the grid."})
    grid_top_k: int = field(default=5, metadata={"help": "Hits shown per row of the grid."})
    thumbnail: int = field(default=128, metadata={"help": "Grid cell size in pixels."})

    def __post_init__(self) -> None:
        for name in ("top_k", "batch_size", "grid_queries", "grid_top_k", "thumbnail"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"--{name}: expected a positive integer, got {value}")
        if self.grid_file is not None and not self.grid_file.lower().endswith(".png"):
            raise ValueError(f"--grid_file {self.grid_file}: expected a .png file name")


# ---------------------------------------------------------------------------------------------------------- queries


class ImageResolver:
    """Query / gallery image names → files inside one root (CIRR ``image_splits`` names, bare names, paths)."""

    def __init__(self, root: str | os.PathLike, source: str) -> None:
        self.root = Path(root)
        self.source = source
        self.names: dict[str, str] = {}
        splits = self.root / "image_splits"
        if splits.is_dir():
            for split_file in sorted(splits.glob("*.json")):
                with open(split_file, encoding="utf-8") as handle:
                    mapping = json.load(handle)
                if isinstance(mapping, dict):
                    self.names.update({str(key): str(value) for key, value in mapping.items()})

    def __call__(self, name: str, entry: str, required: bool = True) -> str | None:
        from hub_cards.safe_paths import resolve_inside

        relative = self.names.get(name, name)
        path = resolve_inside(self.root, relative, source=self.source, entry=entry)
        candidates = [path] + ([] if Path(path).suffix.lower() in _IMAGE_SUFFIXES else [path + s for s in _IMAGE_SUFFIXES])
        for candidate in candidates:
            if os.path.isfile(candidate):
                return candidate
        if required:
            raise FileNotFoundError(f"{self.source}: {entry}: image {name!r} not found under {str(self.root)!r}")
        return None


def read_queries(path: str | os.PathLike, resolve: ImageResolver) -> list[dict[str, Any]]:
    """Parse the queries file into ``{"query_id", "query_type", "image" (path or None), "text"}`` dicts."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--queries {path}: no such file")
    text = path.read_text(encoding="utf-8")
    entries: list[tuple[str, Any]] = []
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
        entries = [(f"{path} item {position}", item) for position, item in enumerate(items)]
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entries.append((f"{path} line {number}", json.loads(line)))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} line {number}: not valid JSON ({error.msg} at column {error.colno})") from None
    if not entries:
        raise ValueError(f"{path}: no queries (expected JSON lines or a JSON list of objects)")
    queries = []
    for position, (where, item) in enumerate(entries):
        if not isinstance(item, dict):
            raise ValueError(f"{where}: expected a JSON object with 'image' and/or 'text', got {type(item).__name__}")
        image = item.get("image", item.get("reference"))
        query_text = item.get("text", item.get("caption"))
        if image is not None and not isinstance(image, str):
            raise ValueError(f"{where}: 'image' must be a string (a path or image name), got {type(image).__name__}")
        if query_text is not None and (not isinstance(query_text, str) or not query_text.strip()):
            raise ValueError(f"{where}: 'text' must be a non-empty string, got {query_text!r}")
        if image is None and query_text is None:
            raise ValueError(f"{where}: a query needs 'image' (or 'reference') and/or 'text' (or 'caption'); got keys "
                             f"{sorted(item)}")
        query_type = item.get("query_type") or ("composed" if image and query_text else "image" if image else "text")
        if query_type not in _QUERY_TYPES:
            raise ValueError(f"{where}: 'query_type' must be one of {_QUERY_TYPES}, got {query_type!r}")
        if (query_type in ("composed", "image")) != (image is not None) or (query_type in ("composed", "text")) != (
            query_text is not None
        ):
            raise ValueError(f"{where}: query_type {query_type!r} does not match the given fields {sorted(item)}")
        queries.append({
            "query_id": item.get("id", item.get("pairid", position)),
            "query_type": query_type,
            "image": None if image is None else resolve(image, f"{where.split(' ', 1)[1]} 'image'"),
            "text": query_text,
        })
    return queries


# ---------------------------------------------------------------------------------------------------------- grid


def _thumbnail(path: str | None, size: int, label: str | None = None) -> Any:
    from PIL import Image, ImageDraw

    cell = Image.new("RGB", (size, size), (235, 235, 235))
    if path is not None:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((size, size))
            cell.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    elif label:
        ImageDraw.Draw(cell).text((6, size // 2 - 6), label, fill=(90, 90, 90))
    return cell


def _wrap(text: str, width: int) -> list[str]:
    lines, current = [], ""
    for word in text.split():
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}".strip()
    return (lines + [current])[:3] if current or lines else [""]


def write_grid(path: str | os.PathLike, results: list[dict[str, Any]], gallery: ImageResolver, top_k: int,
               size: int) -> str:
    """One row per query: query image (text above) | top-k hits (id and score below). Written atomically."""
    from PIL import Image, ImageDraw

    from hub_cards.atomic_files import atomic_path

    header, footer, gap = 46, 30, 8
    columns = 1 + top_k
    width = columns * (size + gap) + gap
    height = len(results) * (header + size + footer) + gap
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    characters = max(12, (size + gap) * 2 // 7)
    for row, result in enumerate(results):
        top = gap + row * (header + size + footer)
        title = f"[{result['query_type']}] " + (result["text"] or "(image only)")
        for number, line in enumerate(_wrap(title, characters)):
            draw.text((gap, top + number * 13), line, fill=(0, 0, 0))
        canvas.paste(_thumbnail(result["image"], size, label="(text only)"), (gap, top + header))
        draw.rectangle([gap - 2, top + header - 2, gap + size + 1, top + header + size + 1], outline=(40, 90, 200), width=2)
        for column, hit in enumerate(result["hits"][:top_k], start=1):
            left = gap + column * (size + gap)
            hit_path = gallery(str(hit["id"]), f"hit {hit['id']!r}", required=False)
            canvas.paste(_thumbnail(hit_path, size, label=str(hit["id"])[:18]), (left, top + header))
            draw.text((left, top + header + size + 3), f"{hit['rank']}. {str(hit['id'])[:20]}", fill=(0, 0, 0))
            draw.text((left, top + header + size + 15), f"score {hit['score']:.4f}", fill=(60, 60, 60))
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return os.fspath(path)


# ---------------------------------------------------------------------------------------------------------- main


def search(model_args: ModelArguments, args: SearchArguments) -> dict[str, Any]:
    """Load the index and the model, encode and search every query, write the JSONL (and the grid)."""
    from transformers import pipeline

    from hub_cards.atomic_files import write_text_atomically
    from pipelines import COMPOSED_IMAGE_RETRIEVAL_TASK, GalleryIndex

    from .eval import load_model_and_processor

    index_dir = Path(args.index_dir)
    if not index_dir.is_dir():
        raise FileNotFoundError(f"--index_dir {index_dir}: no such folder (build one with csmcir-index)")
    index = GalleryIndex.load(index_dir, mmap=args.mmap)
    image_root = Path(args.image_root) if args.image_root else Path(args.queries).resolve().parent
    if args.image_root and not image_root.is_dir():
        raise FileNotFoundError(f"--image_root {image_root}: no such folder")
    queries = read_queries(args.queries, ImageResolver(image_root, args.queries))
    model, processor = load_model_and_processor(model_args)
    retriever = pipeline(COMPOSED_IMAGE_RETRIEVAL_TASK, model=model, processor=processor)
    try:
        index.check_compatible(retriever.model_identity(), check_model=args.check_model)
    except ValueError as error:
        raise ValueError(f"--index_dir {index_dir} and --model_name_or_path {model_args.model_name_or_path}: {error}") from None
    results: list[dict[str, Any]] = [{} for _ in queries]
    for query_type in _QUERY_TYPES:
        group = [position for position, query in enumerate(queries) if query["query_type"] == query_type]
        for start in range(0, len(group), args.batch_size):
            chunk = group[start : start + args.batch_size]
            images = None if query_type == "text" else [queries[p]["image"] for p in chunk]
            texts = None if query_type == "image" else [queries[p]["text"] for p in chunk]
            hits = retriever(images, text=texts, gallery=index, top_k=args.top_k, query_type=query_type,
                             check_model=args.check_model)
            for position, row in zip(chunk, hits):
                results[position] = dict(queries[position], hits=[dict(hit, rank=rank) for rank, hit in
                                                                  enumerate(row, start=1)])
    lines = []
    for result in results:
        record = dict(result)
        if record["image"] is not None:
            record["image"] = os.path.relpath(record["image"], image_root)  # no absolute local path in the output
        lines.append(json.dumps(record, ensure_ascii=False))
    write_text_atomically(args.output_file, "\n".join(lines) + "\n")
    summary: dict[str, Any] = {"index_dir": str(index_dir), "items": len(index), "queries": len(results),
                               "output_file": args.output_file}
    if args.grid_file:
        gallery = ImageResolver(Path(args.gallery_root) if args.gallery_root else image_root, "gallery")
        summary["grid_file"] = write_grid(args.grid_file, results[: args.grid_queries], gallery, args.grid_top_k,
                                          args.thumbnail)
    summary["results"] = results
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv`` (default: the command line), search, print a one-line JSON summary, return the results."""
    model_args, search_args = HfArgumentParser((ModelArguments, SearchArguments)).parse_args_into_dataclasses(args=argv)
    summary = search(model_args, search_args)
    print(json.dumps({key: value for key, value in summary.items() if key != "results"}))
    return summary


console_main = console_entry_point(main, "csmcir-search")


if __name__ == "__main__":
    console_main()
