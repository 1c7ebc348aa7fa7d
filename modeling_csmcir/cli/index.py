"""``csmcir-index``: encode a gallery (an image folder, a CIRR-layout split or a ``datasets`` folder, with or without
a caption file) with a CSMCIR model into a saved ``GalleryIndex`` — resumable and data-parallel.

    csmcir-index --dataset data/cirr --split val --captions captions/cirr.val.mcot.json \\
        --model_name_or_path my-csmcir --output_dir indexes/cirr-val
    torchrun --nproc_per_node 4 -m modeling_csmcir.cli.index --image_dir images --model_name_or_path my-csmcir \\
        --output_dir indexes/products

The gallery is cut into parts of ``--part_size`` items (independent of the process count); each process encodes
its contiguous block of parts (``modeling_csmcir.sharding``: accelerate's split) through the pipeline's
``build_index`` (the project's one gallery encoder, ``pipelines.gallery_index.encode_targets``) and saves each
finished part as a folder renamed into place under ``<output_dir>.parts/``; a rerun skips finished parts, so a
killed run loses at most the part in flight. Process 0 then merges the parts with ``GalleryIndex.merge`` (shards
identity-checked, rows in gallery order: the same index one process builds) into ``--output_dir`` and removes the
parts. Independent jobs (``--process_index i --num_processes N``, e.g. on machines without a shared process group)
leave their parts, and one ``--merge_only`` run merges them. Rerunning a job whose index is complete (same images,
same model, same captions or none) encodes nothing.

With ``--captions`` every target is encoded with its caption (the symmetric tower); without, image-only targets.
Ids are the image names (as in the caption file).

Galleries larger than memory: ``--on_disk`` merges the parts with ``GalleryIndex.merge_on_disk`` (rows copied block
by block from the parts' memory-mapped files; open the result with ``GalleryIndex.load(path, mmap=True)`` or
``csmcir-search --mmap``), and ``--faiss_trained DIR`` (an IVF / IVF-PQ index trained once on a sample:
``train_faiss(sample).save(DIR)``) makes every part fill that index, so the merged index searches it — with
``--on_disk`` its inverted lists are merged into one ``gallery_faiss.ivfdata`` file that is mapped, not read.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import HfArgumentParser

from hub_cards.console import console_entry_point

from ..sharding import ShardingArguments

if TYPE_CHECKING:
    from pipelines.gallery_index import GalleryIndex

    from ..captioning.image_sources import ImageRecord
    from ..sharding import ProcessShard

PLAN_FILE = "plan.json"
_IDENTITY_KEYS = ("config_hash", "weights_fingerprint", "target_inputs")


@dataclass
class ModelArguments:
    """Which CSMCIR model encodes the gallery."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "A saved CSMCIR model folder or Hub id."})
    processor_name_or_path: str | None = field(default=None, metadata={"help": "Processor folder (default: the model's)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow running code from the model folder."})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, ... (default: this process's device)."})


@dataclass
class GalleryArguments:
    """Which images (and captions) make the gallery."""

    output_dir: str = field(metadata={"help": "Folder of the saved GalleryIndex (written atomically)."})
    image_dir: str | None = field(default=None, metadata={"help": "Folder of images (searched recursively)."})
    dataset: str | None = field(
        default=None,
        metadata={"help": "A CIRR-layout root (image_splits/split.rc2.<split>.json) or a datasets save_to_disk folder."},
    )
    dataset_format: str = field(default="auto", metadata={"help": "auto, cirr or hf (a save_to_disk folder)."})
    split: str | None = field(default=None, metadata={"help": "Split to index (CIRR: train/val/test1)."})
    image_root: str | None = field(default=None, metadata={"help": "CIRR: folder the split's relative paths start from."})
    image_column: str | None = field(default=None, metadata={"help": "hf: image column (default: first Image column)."})
    name_column: str | None = field(default=None, metadata={"help": "hf: column naming each image (default: auto)."})
    keep_extension: bool = field(default=False, metadata={"help": "image_dir: keep file extensions in image names."})
    limit: int | None = field(default=None, metadata={"help": "Index only the first N images (for a trial run)."})
    captions: str | None = field(
        default=None, metadata={"help": "Caption file (authors' format, e.g. from csmcir-caption): captioned targets."}
    )

    def __post_init__(self):
        if self.image_dir is not None and self.dataset is not None:
            raise ValueError("pass exactly one of --image_dir or --dataset")
        if self.dataset_format not in {"auto", "cirr", "hf"}:
            raise ValueError(f"--dataset_format must be auto, cirr or hf (got {self.dataset_format!r})")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1 (got {self.limit})")


@dataclass
class IndexingArguments:
    """How the gallery is encoded and shared out."""

    batch_size: int = field(default=32, metadata={"help": "Images per forward pass."})
    part_size: int = field(default=512, metadata={"help": "Items per saved part (the unit of resuming)."})
    dtype: str = field(default="float32", metadata={"help": "Index storage dtype: float32, float16 or bfloat16."})
    on_disk: bool = field(default=False, metadata={"help": "Merge the parts on disk (GalleryIndex.merge_on_disk): rows "
                                                           "copied block by block, never all in memory; faiss lists "
                                                           "merged into one mapped .ivfdata file."})
    faiss_trained: str | None = field(default=None, metadata={"help": "A trained IVF / IVF-PQ index (a folder "
                                                                      "TrainedFaiss.save wrote): every part fills it "
                                                                      "and the merged index searches it."})

    def __post_init__(self):
        for name in ("batch_size", "part_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1 (got {getattr(self, name)})")
        if self.faiss_trained is not None and not Path(self.faiss_trained).is_dir():
            raise ValueError(f"--faiss_trained {self.faiss_trained}: no such folder (write one with train_faiss(...)"
                             ".save(folder))")


def parts_dir(output_dir: str | os.PathLike) -> Path:
    """``<output_dir>.parts``: where the finished parts of an unfinished index wait for the merge."""
    output_dir = Path(output_dir)
    return output_dir.with_name(output_dir.name + ".parts")


def _gallery(args: GalleryArguments) -> tuple[list[ImageRecord], list[str] | None]:
    """The gallery's images (fixed order) and, with ``--captions``, one caption per image."""
    from ..data.caption_files import load_target_captions
    from .caption import collect_images

    if args.image_dir is None and args.dataset is None:
        raise ValueError("pass exactly one of --image_dir or --dataset (the gallery's images)")
    records = collect_images(args)
    if not records:
        raise ValueError(f"the gallery is empty: {args.image_dir or args.dataset} holds no image to index")
    if args.captions is None:
        return records, None
    captions = load_target_captions(args.captions)
    missing = [r.name for r in records if r.name not in captions]
    if missing:
        raise ValueError(
            f"--captions {args.captions}: no caption for {len(missing)} of {len(records)} gallery image(s), e.g. "
            f"{missing[:3]}; caption them (csmcir-caption) or index image-only targets without --captions"
        )
    return records, [captions[r.name] for r in records]


def _plan(records: list[ImageRecord], captions: list[str] | None, part_size: int) -> dict[str, Any]:
    import hashlib

    digest = hashlib.sha256("\n".join(r.name for r in records).encode("utf-8"))
    if captions is not None:
        digest.update(b"\0" + "\n".join(captions).encode("utf-8"))
    return {"num_items": len(records), "part_size": part_size, "items_sha256": digest.hexdigest(),
            "target_inputs": "image" if captions is None else "image+caption"}


def _check_plan(folder: Path, plan: dict[str, Any]) -> None:
    """Write the plan of a new partial index, or refuse parts started with other inputs."""
    from hub_cards.atomic_files import write_json_atomically

    plan_file = folder / PLAN_FILE
    if plan_file.is_file():
        previous = json.loads(plan_file.read_text(encoding="utf-8"))
        if previous != plan:
            changed = sorted(k for k in plan if previous.get(k) != plan[k])
            raise ValueError(
                f"{folder}: these parts were started with other inputs ({', '.join(changed)} differ: {previous} vs "
                f"{plan}); rerun with the same images, captions and --part_size, or delete {folder} to start over"
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomically(plan_file, plan)


def _part_identity(part: Path) -> dict[str, Any]:
    from pipelines.gallery_index import INDEX_FILE

    record = json.loads((part / INDEX_FILE).read_text(encoding="utf-8"))
    return record.get("model_identity") or {}


def _check_parts_model(folder: Path, identity: dict[str, Any], names: list[str]) -> None:
    """Refuse to add parts encoded by this model to parts another model encoded."""
    for name in names:
        part = folder / name
        if not part.is_dir():
            continue
        theirs = _part_identity(part)
        for key in _IDENTITY_KEYS:
            if theirs.get(key) != identity.get(key):
                raise ValueError(
                    f"{part} was encoded by a different model ({key}: {theirs.get(key)!r} vs this model's "
                    f"{identity.get(key)!r}; built by {theirs.get('name_or_path') or '?'}): every part of one index "
                    f"needs the same model; use that model, or delete {folder} to start over"
                )


def _load_part_images(records: list[ImageRecord]) -> list[Any]:
    images = []
    for record in records:
        try:
            images.append(record.load())
        except Exception as error:  # noqa: BLE001 - named, with its source, as one line
            raise ValueError(
                f"gallery image {record.name!r} ({record.source}) cannot be read ({type(error).__name__}: {error}); "
                "an index needs every image: fix or remove it"
            ) from None
    return images


def build_parts(retriever: Any, records: list[ImageRecord], captions: list[str] | None, output_dir: str | os.PathLike,
                shard: ProcessShard, *, part_size: int = 512, batch_size: int = 32, dtype: str = "float32",
                faiss_trained: str | os.PathLike | None = None, on_part_end: Any = None,
                show_progress: bool = True) -> list[str]:
    """Encode and save this process's missing parts of the gallery under ``parts_dir(output_dir)``.

    Parts are ``sharding.part_ranges(len(records), part_size)``; this process takes its contiguous block of them
    (``shard.split``). Each part is ``retriever.build_index(images, captions=..., ids=names)`` saved into a staging
    folder that is renamed onto ``part-i-of-n`` when complete; with ``faiss_trained`` (a ``TrainedFaiss`` folder)
    each part also fills that trained IVF / IVF-PQ index (``build_faiss(trained=...)``), so the parts' faiss indexes
    merge exactly. Returns the names of the parts this call built.
    ``on_part_end(name)`` is called after each part is in place.
    """
    from tqdm.auto import tqdm

    from hub_cards.atomic_files import atomic_directory

    from ..sharding import part_name, part_ranges

    folder = parts_dir(output_dir)
    _check_plan(folder, _plan(records, captions, part_size))
    ranges = part_ranges(len(records), part_size)
    names = [part_name(i, len(ranges)) for i in range(len(ranges))]
    mine = shard.split(list(range(len(ranges))))
    identity = dict(retriever.model_identity(), target_inputs="image" if captions is None else "image+caption")
    _check_parts_model(folder, identity, names)
    todo = [i for i in mine if not (folder / names[i]).is_dir()]
    built = []
    desc = "Indexing gallery parts" + ("" if shard.single else f" [{shard.rank}/{shard.world_size}]")
    for i in tqdm(todo, desc=desc, unit="part", disable=not show_progress):
        span = ranges[i]
        part_records = records[span.start : span.stop]
        index = retriever.build_index(
            _load_part_images(part_records),
            captions=None if captions is None else captions[span.start : span.stop],
            ids=[r.name for r in part_records],
            batch_size=batch_size,
            dtype=dtype,
            show_progress=False,
        )
        if faiss_trained is not None:
            index.build_faiss(trained=faiss_trained)
        with atomic_directory(folder / names[i]) as staging:
            index.save(staging)
        built.append(names[i])
        if on_part_end is not None:
            on_part_end(names[i])
    return built


def merge_parts(output_dir: str | os.PathLike, records: list[ImageRecord] | None = None,
                on_disk: bool = False) -> GalleryIndex:
    """Merge every part under ``parts_dir(output_dir)`` (in order, ``GalleryIndex.merge``) into ``output_dir``.

    ``on_disk``: ``GalleryIndex.merge_on_disk`` instead: the same index, written block by block from the parts'
    memory-mapped rows (the gallery is never in memory; the faiss parts' inverted lists become one ``.ivfdata``
    file), and returned memory-mapped.

    Refused, naming the part: a missing part (some process has not finished), parts of different models (or
    different storage dtypes), ids that are not the gallery's (``records``, when given) in order. On success the
    index is saved (``GalleryIndex.save``: atomic) and the parts folder removed.
    """
    from hub_cards.atomic_files import atomic_directory
    from pipelines.gallery_index import GalleryIndex

    folder = parts_dir(output_dir)
    plan_file = folder / PLAN_FILE
    if not plan_file.is_file():
        raise ValueError(f"{folder}: no parts to merge (no {PLAN_FILE}); run csmcir-index without --merge_only first")
    plan = json.loads(plan_file.read_text(encoding="utf-8"))
    from ..sharding import part_name, part_ranges

    num_parts = len(part_ranges(plan["num_items"], plan["part_size"]))
    names = [part_name(i, num_parts) for i in range(num_parts)]
    missing = [name for name in names if not (folder / name).is_dir()]
    if missing:
        raise ValueError(
            f"{folder}: {len(missing)} of {num_parts} part(s) not built yet ({', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''}); run (or rerun) the processes that build them, then merge"
        )

    def join(destination: Path | None) -> GalleryIndex:
        try:
            if destination is None:
                return GalleryIndex.merge([GalleryIndex.load(folder / name) for name in names])
            return GalleryIndex.merge_on_disk([folder / name for name in names], destination)
        except ValueError as error:
            text = str(error)
            for position, name in enumerate(names):
                text = text.replace(f"shard {position}", f"part {name}")
            raise ValueError(f"{folder}: {text}") from None

    def check_ids(merged: GalleryIndex) -> None:
        if records is not None and merged.ids != [r.name for r in records]:
            raise ValueError(f"{folder}: the parts' ids are not the gallery's images in order; delete {folder} and rerun")

    if on_disk:
        # Written block by block into a staging folder that replaces output_dir whole (atomic_directory), then
        # reopened mapped where it now lives.
        with atomic_directory(output_dir) as staging:
            check_ids(join(staging))
        merged = GalleryIndex.load(output_dir, mmap=True, verify=False)
    else:
        merged = join(None)
        check_ids(merged)
        merged.save(output_dir)
    shutil.rmtree(folder)
    return merged


def _finished_index_matches(output_dir: Path, records: list[ImageRecord], identity: dict[str, Any]) -> bool:
    """Whether ``output_dir`` already holds this gallery's index by this model (and no parts wait): nothing to do."""
    from pipelines.gallery_index import INDEX_FILE

    record_file = output_dir / INDEX_FILE
    if parts_dir(output_dir).exists() or not record_file.is_file():
        return False
    try:
        record = json.loads(record_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    built = record.get("model_identity") or {}
    return (record.get("ids") == [r.name for r in records]
            and all(built.get(key) == identity.get(key) for key in _IDENTITY_KEYS))


def load_retriever(model_args: ModelArguments, shard: ProcessShard) -> Any:
    """The ``composed-image-retrieval`` pipeline over the model (loaded and checked as ``csmcir-eval`` does)."""
    from pipelines import COMPOSED_IMAGE_RETRIEVAL_TASK
    from transformers import pipeline

    from .eval import load_model_and_processor

    if model_args.device is None and shard.distributed:
        from accelerate import PartialState

        model_args.device = str(PartialState().device)
    model, processor = load_model_and_processor(model_args)
    return pipeline(COMPOSED_IMAGE_RETRIEVAL_TASK, model=model, processor=processor)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv`` (default: the command line), index, and return (and print as JSON) a summary."""
    parser = HfArgumentParser((ModelArguments, GalleryArguments, IndexingArguments, ShardingArguments))
    model_args, gallery_args, run_args, shard_args = parser.parse_args_into_dataclasses(args=argv)
    from hub_cards.output_lock import exclusive_output_lock

    from ..sharding import ProcessShard, lock_path

    output_dir = Path(gallery_args.output_dir)
    if output_dir.is_file():
        raise ValueError(f"--output_dir {output_dir} is a file; expected a folder for the index")
    if shard_args.merge_only:
        records = _gallery(gallery_args)[0] if (gallery_args.image_dir or gallery_args.dataset) else None
        with exclusive_output_lock(lock_path(output_dir, ProcessShard()), what=f"index {str(output_dir)!r}"):
            merged = merge_parts(output_dir, records, on_disk=run_args.on_disk)
        summary = {"output_dir": str(output_dir), "merged": True, "items": len(merged)}
        print(json.dumps(summary))
        return summary
    if model_args.model_name_or_path is None:
        raise ValueError("--model_name_or_path is required (a CSMCIR model), except with --merge_only")
    records, captions = _gallery(gallery_args)
    shard = shard_args.process()
    what = f"index {str(output_dir)!r}" + ("" if shard.single else f" (process {shard.rank})")
    with exclusive_output_lock(lock_path(output_dir, shard), what=what):
        retriever = load_retriever(model_args, shard)
        identity = dict(retriever.model_identity(), target_inputs="image" if captions is None else "image+caption")
        if _finished_index_matches(output_dir, records, identity):
            summary = {"output_dir": str(output_dir), "process_index": shard.rank, "num_processes": shard.world_size,
                       "items": len(records), "parts_built": 0, "merged": False, "already_complete": True}
            print(json.dumps(summary))
            return summary
        built = build_parts(retriever, records, captions, output_dir, shard, part_size=run_args.part_size,
                            batch_size=run_args.batch_size, dtype=run_args.dtype,
                            faiss_trained=run_args.faiss_trained)
        summary: dict[str, Any] = {"output_dir": str(output_dir), "process_index": shard.rank,
                                   "num_processes": shard.world_size, "items": len(records), "parts_built": len(built),
                                   "merged": False}
        if shard.single or shard.distributed:
            shard.barrier()
            if shard.is_main:
                summary["items_in_index"] = len(merge_parts(output_dir, records, on_disk=run_args.on_disk))
                summary["merged"] = True
            shard.barrier()  # nobody exits before the index is complete
    print(json.dumps(summary))
    return summary


console_main = console_entry_point(main, "csmcir-index")


if __name__ == "__main__":
    console_main()
