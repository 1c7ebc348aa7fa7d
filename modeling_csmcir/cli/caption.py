"""``csmcir-caption``: write MCoT target captions for an image folder or dataset split with any Hub VLM.

Examples::

    csmcir-caption --image_dir images/dress --model_name_or_path Qwen/Qwen2-VL-2B-Instruct \\
        --prompt fashion --output_file captions/cap.dress.mcot.json --batch_size 8
    csmcir-caption --dataset data/cirr --split val --model_name_or_path llava-hf/llava-1.5-7b-hf \\
        --output_file captions/cirr.val.mcot.json

A killed run is resumed by running the same command again. One job per output file: the run locks
``<output_file>.lock`` (beside the journal ``<output_file>.partial.jsonl``), and a second job on the same file exits
at once with an error naming the first (outputs are locked, not merged). Images that cannot be read are listed with the
reason in ``<output_file>.skipped.json`` (when there are any). The model is loaded through
``pipeline("image-text-to-text")`` (its Auto classes), checked first (chat template, image support);
``--engine vllm`` generates with vLLM instead (optional, not a dependency).

Data-parallel: under ``torchrun --nproc_per_node N`` / ``accelerate launch``, each process captions its contiguous
block of the images into its own journal (``<output_file>.partial.rank<r>.jsonl``) and process 0 merges them into
the caption file at the end (``modeling_csmcir.sharding``); independent jobs (several machines without a process
group) pass ``--process_index i --num_processes N`` and one ``--merge_only`` run merges. Rerunning after any
process died resumes from the journals, captioning nothing twice.

    torchrun --nproc_per_node 4 -m modeling_csmcir.cli.caption --image_dir images --model_name_or_path M \\
        --output_file captions/cap.json
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from transformers import HfArgumentParser

from hub_cards.console import console_entry_point

from ..sharding import ShardingArguments

if TYPE_CHECKING:
    from ..captioning.image_sources import ImageRecord
    from ..captioning.runner import CaptioningReport

# Parsing (and --help) needs only the dataclasses below; the readers, the VLM pipeline and the runner are imported
# when a run starts.


@dataclass
class ModelArguments:
    """Which vision-language model captions, and where it runs."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Hub id or folder of a vision-language model with a chat template."}
    )
    chat_template: str | None = field(default=None, metadata={"help": "Jinja chat template (string or file) if missing."})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1, mps ... (default: accelerate's)."})
    device_map: str | None = field(default=None, metadata={"help": "e.g. auto, to shard a large VLM across devices."})
    dtype: str = field(default="auto", metadata={"help": "auto, bfloat16, float16 or float32."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow the model's own code from the Hub."})
    engine: str = field(default="transformers", metadata={"help": "transformers (pipeline('image-text-to-text')) or "
                                                                  "vllm (vLLM offline batching, if installed)."})

    def __post_init__(self):
        if self.engine not in {"transformers", "vllm"}:
            raise ValueError(f"--engine must be transformers or vllm (got {self.engine!r})")


@dataclass
class DataArguments:
    """Which images to caption, and the caption file written (and resumed)."""

    output_file: str = field(metadata={"help": "Caption file to write (and resume), authors' JSON format. Locked while a "
                                               "job runs (<output_file>.lock): a second job on it stops at once, "
                                               "naming the first; rerun it afterwards to resume."})
    image_dir: str | None = field(default=None, metadata={"help": "Folder of images (searched recursively)."})
    dataset: str | None = field(
        default=None,
        metadata={"help": "A CIRR-layout root (image_splits/split.rc2.<split>.json) or a datasets save_to_disk folder."},
    )
    dataset_format: str = field(default="auto", metadata={"help": "auto, cirr or hf (a save_to_disk folder)."})
    split: str | None = field(default=None, metadata={"help": "Split to caption (CIRR: train/val/test1)."})
    image_root: str | None = field(default=None, metadata={"help": "CIRR: folder the split's relative paths start from."})
    image_column: str | None = field(default=None, metadata={"help": "hf: image column (default: first Image column)."})
    name_column: str | None = field(default=None, metadata={"help": "hf: column naming each image (default: auto)."})
    keep_extension: bool = field(default=False, metadata={"help": "image_dir: keep file extensions in image names."})
    limit: int | None = field(default=None, metadata={"help": "Caption only the first N images (for a trial run)."})

    def __post_init__(self):
        if self.image_dir is not None and self.dataset is not None:
            raise ValueError("pass exactly one of --image_dir or --dataset")
        if self.dataset_format not in {"auto", "cirr", "hf"}:
            raise ValueError(f"--dataset_format must be auto, cirr or hf (got {self.dataset_format!r})")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1 (got {self.limit})")


@dataclass
class CaptioningArguments:
    """The prompt and how the run generates."""

    prompt: str = field(default="general", metadata={"help": "Shipped prompt name (general, fashion) or a prompt file."})
    batch_size: int = field(default=4, metadata={"help": "Images per generate call."})
    max_new_tokens: int = field(default=512, metadata={"help": "Generation budget per image."})
    save_every: int = field(default=50, metadata={"help": "Rewrite the caption file every N batches."})
    num_workers: int = field(default=2, metadata={"help": "Threads decoding images ahead of generation."})


def collect_images(data_args: DataArguments) -> list[ImageRecord]:
    from ..captioning.image_sources import images_from_cirr_split, images_from_directory, images_from_saved_dataset
    from ..data.cirr import is_cirr_layout

    """The images the arguments point at, in a fixed order (``--limit`` applied)."""
    if data_args.image_dir is not None:
        images = images_from_directory(data_args.image_dir, keep_extension=data_args.keep_extension)
    else:
        root = Path(data_args.dataset)
        fmt = data_args.dataset_format
        if fmt == "auto":
            fmt = "cirr" if is_cirr_layout(root) else "hf"
        if fmt == "cirr":
            if data_args.split is None:
                raise ValueError("--split is required with a CIRR-layout --dataset (train, val or test1)")
            images = images_from_cirr_split(root, data_args.split, image_root=data_args.image_root)
        elif not root.is_dir():
            raise ValueError(f"--dataset {str(root)!r} is not a directory")
        else:
            images = images_from_saved_dataset(
                root, split=data_args.split, image_column=data_args.image_column, name_column=data_args.name_column
            )
    return images if data_args.limit is None else images[: data_args.limit]


def main(argv: list[str] | None = None) -> CaptioningReport:
    """Parse ``argv`` (default: the command line), caption, and return the run's report (also printed as JSON)."""
    parser = HfArgumentParser((ModelArguments, DataArguments, CaptioningArguments, ShardingArguments))
    model_args, data_args, run_args, shard_args = parser.parse_args_into_dataclasses(args=argv)
    from ..captioning.prompts import load_mcot_prompt
    from ..captioning.runner import CaptioningReport, generate_mcot_captions, merge_caption_journals
    from ..sharding import ProcessShard, lock_path

    if shard_args.merge_only:
        from hub_cards.output_lock import exclusive_output_lock

        with exclusive_output_lock(lock_path(data_args.output_file, ProcessShard()),
                                   what=f"caption file {data_args.output_file!r}"):
            output_file, entries = merge_caption_journals(data_args.output_file)
        report = CaptioningReport(output_file=output_file, merged=True, entries_in_file=entries)
        print(json.dumps({"output_file": str(output_file), "merged": True, "entries": entries}))
        return report

    if data_args.image_dir is None and data_args.dataset is None:
        raise ValueError("pass exactly one of --image_dir or --dataset")
    if model_args.model_name_or_path is None:
        raise ValueError("--model_name_or_path is required (a vision-language model), except with --merge_only")
    prompt = load_mcot_prompt(run_args.prompt)
    images = collect_images(data_args)
    # This process's place first: under torchrun/accelerate it joins the process group, so the pipeline lands on
    # this process's device.
    shard = shard_args.process()
    # Checks the model (chat template, image support) before any image is touched.
    engine = load_engine(model_args)
    report = generate_mcot_captions(
        engine,
        images,
        data_args.output_file,
        prompt=prompt,
        batch_size=run_args.batch_size,
        max_new_tokens=run_args.max_new_tokens,
        save_every=run_args.save_every,
        num_workers=run_args.num_workers,
        shard=shard,
    )
    summary = {
        "output_file": str(report.output_file),
        "process_index": report.rank,
        "num_processes": report.world_size,
        "images": report.total,
        "captioned": report.captioned,
        "reused": report.reused,
        "fallbacks": report.fallbacks,
        "skipped": len(report.skipped),
        "merged": report.merged,
        "entries_in_file": report.entries_in_file,
        "seconds": round(report.seconds, 2),
        "images_per_second": round(report.images_per_second, 3),
        "tokens_per_second": round(report.tokens_per_second, 1),
    }
    print(json.dumps(summary))
    return report


def load_engine(model_args: ModelArguments):
    """The caption engine the arguments ask for (checked: chat template, image support) — a pipeline or vLLM."""
    if model_args.engine == "vllm":
        from ..captioning.engines import VLLMEngine

        return VLLMEngine(model_args.model_name_or_path, chat_template=model_args.chat_template,
                          trust_remote_code=model_args.trust_remote_code, dtype=model_args.dtype)
    from ..captioning.vlm import load_captioning_pipeline

    return load_captioning_pipeline(
        model_args.model_name_or_path,
        device=model_args.device,
        device_map=model_args.device_map,
        dtype=model_args.dtype,
        trust_remote_code=model_args.trust_remote_code,
        chat_template=model_args.chat_template,
    )


console_main = console_entry_point(main, "csmcir-caption")


if __name__ == "__main__":
    console_main()
