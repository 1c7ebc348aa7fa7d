"""`csmcir-train`: fine-tune (or, with `--config_name tiny`, train from scratch) a CSMCIR model with the memory bank.

    csmcir-train --dataset cirr --data_dir P --output_dir O [--captions F] [--config_name tiny | --model_name_or_path M]
                 [any TrainingArguments flag] [--bank_strategy entropy --bank_size 4096 ...]

Parsed with `HfArgumentParser` like transformers' example scripts: `CSMCIRDataArguments` (data and model) plus
`CSMCIRTrainingArguments` (every `TrainingArguments` flag and the `bank_*` settings). The data come from the CIR
loaders (`cir_datasets.load_cir_dataset`) and `CIRCollator`; the target id of a query is its target's gallery row,
which is also how the bank refresh looks targets up. After training the model and processor are saved to
`output_dir`, and when `--eval_split` is set the retrieval metrics before and after training are written to
`output_dir/retrieval_metrics.json`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import HfArgumentParser
from transformers.utils import logging

from .atomic_files import write_json_atomically
from .cir_collator import CIRCollator, CIRGalleryCollator
from .cir_datasets import BENCHMARKS, load_cir_dataset
from .cir_evaluation import evaluate_cir
from .configuration_csmcir import CSMCIRConfig
from .modeling_csmcir import CSMCIRModel
from .processing_csmcir import CSMCIRProcessor
from .trainer_csmcir import CSMCIRTrainer, CSMCIRTrainingArguments

logger = logging.get_logger(__name__)

TINY_CONFIG_NAME = "tiny"


@dataclass
class CSMCIRDataArguments:
    """Data and model arguments of `csmcir-train`."""

    dataset: str = field(metadata={"help": f"Benchmark layout of --data_dir: one of {list(BENCHMARKS)}."})
    data_dir: str = field(metadata={"help": "Root of the benchmark in its official on-disk layout."})
    captions: str | None = field(
        default=None,
        metadata={"help": "Target caption file ({image: caption} or MCoT format); '{split}' / '{category}' are filled in."},
    )
    category: str | None = field(default=None, metadata={"help": "FashionIQ category (dress, shirt, toptee)."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(
        default=None, metadata={"help": "Split to measure retrieval on before and after training (e.g. val); off if unset."}
    )
    config_name: str | None = field(
        default=None, metadata={"help": f"'{TINY_CONFIG_NAME}': a CPU-sized model trained from scratch."}
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A saved CSMCIR model, or a BLIP-2 checkpoint (converted on load)."}
    )
    processor_name_or_path: str | None = field(
        default=None, metadata={"help": "Processor folder (default: the model's; a tiny one for --config_name tiny)."}
    )
    image_size: int = field(default=32, metadata={"help": "Image side for --config_name tiny."})
    use_target_captions: bool | None = field(
        default=None, metadata={"help": "Encode targets with their captions (default: when --captions is given)."}
    )
    max_text_length: int | None = field(default=None, metadata={"help": "Token limit (default: the processor's)."})
    eval_batch_size: int = field(default=64, metadata={"help": "Batch size of the retrieval evaluation."})

    def __post_init__(self) -> None:
        if self.dataset not in BENCHMARKS:
            raise ValueError(f"--dataset must be one of {list(BENCHMARKS)}, got {self.dataset!r}")
        if (self.config_name is None) == (self.model_name_or_path is None):
            raise ValueError(
                f"give exactly one of --config_name {TINY_CONFIG_NAME} and --model_name_or_path; got "
                f"config_name={self.config_name!r}, model_name_or_path={self.model_name_or_path!r}"
            )
        if self.config_name is not None and self.config_name != TINY_CONFIG_NAME:
            raise ValueError(f"--config_name must be {TINY_CONFIG_NAME!r}, got {self.config_name!r}")
        if self.use_target_captions and self.captions is None:
            raise ValueError("--use_target_captions needs --captions (the target caption file)")


def caption_file_for(data_args: CSMCIRDataArguments, split: str) -> str | None:
    """`--captions` with `{split}` and `{category}` filled in."""
    if data_args.captions is None:
        return None
    return data_args.captions.format(split=split, category=data_args.category or "")


def load_model_and_processor(data_args: CSMCIRDataArguments) -> tuple[CSMCIRModel, CSMCIRProcessor]:
    """The model to train and its processor (`--config_name tiny`, a CSMCIR folder, or a BLIP-2 checkpoint)."""
    if data_args.config_name == TINY_CONFIG_NAME:
        processor = (
            CSMCIRProcessor.from_pretrained(data_args.processor_name_or_path)
            if data_args.processor_name_or_path
            else CSMCIRProcessor.tiny(image_size=data_args.image_size)
        )
        # Trained from scratch: a frozen random vision tower would give the Q-Former nothing to learn from.
        config = CSMCIRConfig.tiny(
            vocab_size=len(processor.tokenizer), image_size=data_args.image_size, freeze_vision=False
        )
        return CSMCIRModel(config), processor
    path = data_args.model_name_or_path
    config_file = Path(path) / "config.json"
    model_type = json.loads(config_file.read_text()).get("model_type") if config_file.is_file() else None
    if model_type == "csmcir" or model_type is None:
        # A Hub id is resolved by from_pretrained; a CSMCIR folder loads directly.
        try:
            model = CSMCIRModel.from_pretrained(path)
        except (OSError, ValueError) as err:
            if model_type == "csmcir":
                raise
            logger.info(f"{path} is not a CSMCIR model ({err}); converting it as a BLIP-2 checkpoint")
            model = CSMCIRModel.from_blip2_pretrained(path)
    else:
        model = CSMCIRModel.from_blip2_pretrained(path)
    processor = CSMCIRProcessor.from_pretrained(data_args.processor_name_or_path or path)
    return model, processor


def latest_complete_checkpoint(output_dir: str) -> str | None:
    """The highest-step `checkpoint-N` in `output_dir` that has its trainer_state.json (i.e. finished saving).

    `transformers.trainer_utils.get_last_checkpoint` takes the highest number even when a killed run left that
    folder half written; this skips such folders.
    """
    if not os.path.isdir(output_dir):
        return None
    steps = []
    for name in os.listdir(output_dir):
        prefix, _, number = name.partition("-")
        if prefix == "checkpoint" and number.isdigit() and os.path.isfile(os.path.join(output_dir, name, "trainer_state.json")):
            steps.append(int(number))
    return os.path.join(output_dir, f"checkpoint-{max(steps)}") if steps else None


class GalleryTargetLookup:
    """`ids -> get_target_features inputs`: a target id is a row of the gallery (the loaders' `target_label`)."""

    def __init__(self, gallery: Any, collator: CIRGalleryCollator) -> None:
        self.gallery = gallery
        self.collator = collator

    def __call__(self, ids: list[int]) -> dict[str, torch.Tensor]:
        return self.collator([self.gallery[int(i)] for i in ids])


class ReferenceIdCollator:
    """Wraps a `CIRCollator` to add `reference_ids`: the reference image's gallery row (`-1` when it is not in the
    gallery), so the memory bank never serves a query its own reference image (see `MemoryBank.negative_logits`)."""

    def __init__(self, collator: CIRCollator, gallery_ids: list[str]) -> None:
        self.collator = collator
        self.row_of = {image_id: row for row, image_id in enumerate(gallery_ids)}

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.collator(rows)
        batch["reference_ids"] = torch.tensor([self.row_of.get(row.get("reference_id"), -1) for row in rows])
        return batch


def run_training(data_args: CSMCIRDataArguments, training_args: CSMCIRTrainingArguments) -> dict[str, Any]:
    """Train, save the model and processor to `output_dir`, and return (and write) the retrieval metrics."""
    model, processor = load_model_and_processor(data_args)
    use_captions = data_args.use_target_captions
    if use_captions is None:
        use_captions = data_args.captions is not None
    train = load_cir_dataset(
        data_args.dataset, data_args.data_dir, data_args.train_split, category=data_args.category,
        target_captions=caption_file_for(data_args, data_args.train_split),
    )
    lookup = GalleryTargetLookup(
        train["gallery"], CIRGalleryCollator(processor, use_captions=use_captions, max_text_length=data_args.max_text_length)
    )
    trainer = CSMCIRTrainer(
        model=model,
        args=training_args,
        train_dataset=train["queries"],
        data_collator=ReferenceIdCollator(
            CIRCollator(processor, use_target_captions=use_captions, max_text_length=data_args.max_text_length),
            list(train["gallery"]["image_id"]),
        ),
        processing_class=processor,
        target_lookup=lookup,
    )

    evaluation = None
    if data_args.eval_split:
        evaluation = load_cir_dataset(
            data_args.dataset, data_args.data_dir, data_args.eval_split, category=data_args.category,
            target_captions=caption_file_for(data_args, data_args.eval_split),
        )

    def retrieval_metrics() -> dict[str, Any]:
        model.eval()
        result = evaluate_cir(
            model, processor, evaluation, data_args.dataset, use_target_captions=use_captions,
            batch_size=data_args.eval_batch_size, cache=None, category=data_args.category, show_progress=False,
        )
        return {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}

    report: dict[str, Any] = {"data": asdict(data_args), "bank_strategy": training_args.bank_strategy}
    if evaluation is not None:
        report["before"] = retrieval_metrics()

    resume = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "last"):
        resume = latest_complete_checkpoint(training_args.output_dir)
        if resume is None:
            logger.warning(f"no complete checkpoint in {training_args.output_dir}: training from the start")
    train_result = trainer.train(resume_from_checkpoint=resume)
    report["train"] = train_result.metrics
    trainer.save_model()
    processor.save_pretrained(training_args.output_dir)

    if evaluation is not None:
        report["after"] = retrieval_metrics()
        if trainer.is_world_process_zero():
            write_json_atomically(Path(training_args.output_dir) / "retrieval_metrics.json", report, indent=2, default=str)
        logger.info(f"retrieval before: {report['before']}\nretrieval after: {report['after']}")
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Entry point of `csmcir-train`."""
    parser = HfArgumentParser((CSMCIRDataArguments, CSMCIRTrainingArguments))
    data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    report = run_training(data_args, training_args)
    if "after" in report:
        print(json.dumps({"before": report["before"], "after": report["after"]}, indent=2))
    return report


def console_main() -> None:
    """Entry point of the ``csmcir-train`` console script: `main` returns its result to Python callers, and a console
    script would hand that object to ``sys.exit`` (exit status 1), so this wrapper discards it."""
    main()


if __name__ == "__main__":
    main()
