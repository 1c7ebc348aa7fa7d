"""`csmcir-train`: fine-tune a CSMCIR model (or train a preset from scratch) with the memory bank.

    csmcir-train --dataset cirr --data_dir P --output_dir O [--captions F]
                 [--config_name tiny-scratch | --model_name_or_path M] [any TrainingArguments flag]
                 [--bank_strategy entropy --bank_size 4096 ...] [--resume_from_checkpoint last]

Parsed with `HfArgumentParser` like transformers' example scripts: `ModelArguments` (which model), `DataArguments`
(which benchmark) and `CSMCIRTrainingArguments` (every `TrainingArguments` flag and the `bank_*` settings). The
data come from the benchmark readers (`data.load_cir_dataset`) and `CIRCollator`; the target id of a query is its
target's gallery row, which is also how the bank refresh looks targets up. After training the model and processor
are saved to `output_dir` (which must not hold another run unless `--resume_from_checkpoint` continues it; one job
at a time per folder, through a lock file); the seed is set before the model is built, so the same `--seed` gives the
same run; with `--eval_split` the retrieval metrics before and after training are written to
`output_dir/metrics.json` (the metrics-report schema of `hub_cards.metrics_report`). Last, the folder is made
uploadable as it is (`hub_cards.hub_ready`): the `composed-image-retrieval` pipeline's code and a model card with
the measured numbers and the training settings (`publish_folder`).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser, set_seed
from transformers.utils import logging

from hub_cards.console import console_entry_point
from hub_cards.launch import use_cpu_processes_if_no_accelerator
from hub_cards.output_lock import exclusive_output_lock

from ..data.layouts import BENCHMARKS
from ..modeling_csmcir import CSMCIRModel
from ..presets import PRESETS, preset_config, preset_processor
from ..training_args import CSMCIRTrainingArguments
from .model_loading import BLIP2_MODEL_TYPES, folder_model_type, model_loading_errors

# Parsing (and --help) needs only the dataclasses above; data, evaluation and the Trainer are imported when a run
# starts, so `csmcir-train --help` costs little more than importing transformers.

logger = logging.get_logger(__name__)


@dataclass
class ModelArguments:
    """Which model `csmcir-train` trains."""

    config_name: str | None = field(
        default=None,
        metadata={"help": "A preset to train from scratch (`modeling_csmcir.presets`); `tiny-scratch` is CPU-sized.",
                  "choices": sorted(PRESETS)},
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A saved CSMCIR model, or a BLIP-2 checkpoint (converted on load)."}
    )
    processor_name_or_path: str | None = field(
        default=None, metadata={"help": "Processor folder (default: the model's; the presets' own for --config_name)."}
    )
    image_size: int = field(default=32, metadata={"help": "Image side for --config_name presets."})
    freeze_vision: bool | None = field(
        default=None,
        metadata={"help": "Set the model's config.freeze_vision: true fine-tunes a pretrained vision tower frozen (BLIP-2 / "
                          "SPRC; pairs with --vision_feature_cache memory), false trains it; default: the model's own."},
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow running code from --model_name_or_path (off unless given)."}
    )

    def __post_init__(self) -> None:
        if (self.config_name is None) == (self.model_name_or_path is None):
            raise ValueError(
                f"give exactly one of --config_name (one of {sorted(PRESETS)}) and --model_name_or_path; got "
                f"config_name={self.config_name!r}, model_name_or_path={self.model_name_or_path!r}"
            )
        if self.config_name is not None and self.config_name not in PRESETS:
            raise ValueError(f"--config_name must be one of {sorted(PRESETS)}, got {self.config_name!r}")


@dataclass
class DataArguments:
    """Which benchmark `csmcir-train` trains and evaluates on."""

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
    use_target_captions: bool | None = field(
        default=None, metadata={"help": "Encode targets with their captions (default: when --captions is given)."}
    )
    max_text_length: int | None = field(default=None, metadata={"help": "Token limit (default: the processor's)."})
    eval_batch_size: int = field(default=64, metadata={"help": "Batch size of the retrieval evaluation."})
    verify_images: bool = field(
        default=False,
        metadata={"help": "Decode every image of the splits before training, so an empty, truncated or oversized "
                          "file fails up front, named, instead of mid-run."},
    )

    def __post_init__(self) -> None:
        if self.dataset not in BENCHMARKS:
            raise ValueError(f"--dataset must be one of {list(BENCHMARKS)}, got {self.dataset!r}")
        if self.use_target_captions and self.captions is None:
            raise ValueError("--use_target_captions needs --captions (the target caption file)")


def caption_file_for(data_args: DataArguments, split: str) -> str | None:
    """`--captions` with `{split}` and `{category}` filled in."""
    if data_args.captions is None:
        return None
    return data_args.captions.format(split=split, category=data_args.category or "")


def load_model_and_processor(model_args: ModelArguments) -> tuple[CSMCIRModel, Any]:
    """The model to train and its processor (a preset, a CSMCIR folder or Hub id, or a BLIP-2 checkpoint)."""
    from transformers import AutoModel, AutoProcessor

    if model_args.config_name is not None:
        processor = (
            AutoProcessor.from_pretrained(model_args.processor_name_or_path)
            if model_args.processor_name_or_path
            else preset_processor(model_args.config_name, image_size=model_args.image_size)
        )
        config = preset_config(model_args.config_name, vocab_size=len(processor.tokenizer),
                               image_size=model_args.image_size)
        return CSMCIRModel(config), processor
    path = model_args.model_name_or_path
    model_type = folder_model_type(path)
    remote = dict(trust_remote_code=model_args.trust_remote_code)
    with model_loading_errors(path):
        if model_type == "csmcir" or model_type is None:
            # A Hub id is resolved by from_pretrained; a CSMCIR folder loads directly.
            try:
                model = AutoModel.from_pretrained(path, **remote)
                if not isinstance(model, CSMCIRModel):
                    raise ValueError(f"{path} holds a {type(model).__name__}, not a CSMCIR model")
            except (OSError, ValueError) as err:
                if model_type == "csmcir":
                    raise
                logger.info(f"{path} is not a CSMCIR model ({err}); converting it as a BLIP-2 checkpoint")
                model = CSMCIRModel.from_blip2_pretrained(path)
        elif model_type in BLIP2_MODEL_TYPES:
            model = CSMCIRModel.from_blip2_pretrained(path)
        else:
            raise ValueError(
                f"--model_name_or_path {path}: config.json says model_type {model_type!r}; expected 'csmcir' or a "
                f"BLIP-2 checkpoint ({sorted(BLIP2_MODEL_TYPES)})"
            )
        processor = AutoProcessor.from_pretrained(model_args.processor_name_or_path or path, **remote)
    return model, processor


def check_output_dir(training_args: CSMCIRTrainingArguments) -> None:
    """Refuse to train into an ``output_dir`` that already holds a run, unless this run resumes it."""
    output_dir = Path(training_args.output_dir)
    if training_args.resume_from_checkpoint or not output_dir.is_dir():
        return
    previous = sorted(p.name for p in output_dir.iterdir()
                      if p.name in ("config.json", "model.safetensors", "trainer_state.json")
                      or p.name.startswith("checkpoint-"))
    if previous:
        raise ValueError(
            f"--output_dir {output_dir} already holds a training run ({previous[:5]}); pass "
            "--resume_from_checkpoint last to continue it, or choose another --output_dir"
        )


def run_training(model_args: ModelArguments, data_args: DataArguments,
                 training_args: CSMCIRTrainingArguments) -> dict[str, Any]:
    """Train, save the model and processor to `output_dir`, and return (and write) the retrieval metrics."""
    from hub_cards.checkpoints import resolve_resume_checkpoint
    from hub_cards.metrics_report import write_metrics_report

    from ..data.collators import CIRCollator, CIRGalleryCollator
    from ..data.loading import load_cir_dataset, verify_split_images
    from ..data.training_inputs import GalleryTargetLookup, ReferenceIdCollator
    from ..evaluation.evaluator import CIRRetrievalEvaluator
    from ..trainer_csmcir import CSMCIRTrainer

    # The seed is set before the model is built, so the same --seed gives the same initial weights and the same run.
    set_seed(training_args.seed)
    model, processor = load_model_and_processor(model_args)
    if model_args.freeze_vision is not None:
        model.set_vision_frozen(model_args.freeze_vision)
    use_captions = data_args.use_target_captions
    if use_captions is None:
        use_captions = data_args.captions is not None
    train = load_cir_dataset(
        data_args.dataset, data_args.data_dir, data_args.train_split, category=data_args.category,
        target_captions=caption_file_for(data_args, data_args.train_split),
    )
    if data_args.verify_images:
        verify_split_images(train, f"{data_args.dataset} {data_args.train_split}")
    lookup = GalleryTargetLookup(
        train["gallery"], CIRGalleryCollator(processor, use_captions=use_captions, max_text_length=data_args.max_text_length)
    )
    evaluator = None
    if data_args.eval_split:
        evaluation = load_cir_dataset(
            data_args.dataset, data_args.data_dir, data_args.eval_split, category=data_args.category,
            target_captions=caption_file_for(data_args, data_args.eval_split),
        )
        evaluator = CIRRetrievalEvaluator(
            evaluation, processor, data_args.dataset, use_target_captions=use_captions,
            batch_size=data_args.eval_batch_size, cache=None, category=data_args.category, show_progress=False,
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
        evaluator=evaluator,
    )

    def retrieval_metrics() -> dict[str, Any]:
        return {k: v for k, v in evaluator(model).items() if isinstance(v, (int, float))}

    report: dict[str, Any] = {"model": asdict(model_args), "data": asdict(data_args),
                              "bank_strategy": training_args.bank_strategy}
    if evaluator is not None:
        report["before"] = retrieval_metrics()

    resume = resolve_resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    train_result = trainer.train(resume_from_checkpoint=resume)
    report["train"] = train_result.metrics
    trainer.save_model()
    if trainer.is_world_process_zero():
        processor.save_pretrained(training_args.output_dir)

    if evaluator is not None:
        report["after"] = retrieval_metrics()
        if trainer.is_world_process_zero():
            write_metrics_report(
                Path(training_args.output_dir) / "metrics.json", report["after"], protocol=evaluator.protocol,
                dataset=data_args.dataset, split=data_args.eval_split, model=training_args.output_dir,
                settings={"eval_batch_size": data_args.eval_batch_size, "use_target_captions": use_captions},
                extra={"before": report["before"], "after": report["after"]},
            )
        logger.info(f"retrieval before: {report['before']}\nretrieval after: {report['after']}")
    if trainer.is_world_process_zero():
        publish_folder(model, processor, training_args, trainer.state, data_args.dataset)
    return report


def publish_folder(model: CSMCIRModel, processor: Any, training_args: CSMCIRTrainingArguments, state: Any,
                   dataset: str) -> None:
    """Make ``output_dir`` uploadable as it is (``hub_cards.hub_ready``): the `composed-image-retrieval` pipeline's
    code and ``custom_pipelines`` entry, then the model card (the numbers of ``metrics.json`` when ``--eval_split``
    measured them, the training settings, the usage snippet of the saved pipeline)."""
    # Importing the package registers the task, so the pipeline's save copies its code into the folder.
    from pipelines import COMPOSED_IMAGE_RETRIEVAL_TASK
    from transformers import pipeline

    from hub_cards import write_csmcir_card

    output_dir = Path(training_args.output_dir)
    pipeline(COMPOSED_IMAGE_RETRIEVAL_TASK, model=model, processor=processor).save_pretrained(output_dir)
    metrics = output_dir / "metrics.json"
    if not metrics.is_file():
        logger.warning(f"{output_dir}: no --eval_split, so no measured numbers: the model card has no results and "
                       "the folder is not Hub-ready until csmcir-eval has run and the card is rewritten")
    write_csmcir_card(output_dir, metrics=metrics if metrics.is_file() else None, training_args=training_args,
                      trainer_state=state, dataset_name=dataset)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run `csmcir-train` on ``argv`` (default: the command line); returns the training and retrieval report."""
    # Several processes launched (torchrun / accelerate) on a machine without a GPU: one gloo group, not N lone runs.
    use_cpu_processes_if_no_accelerator()
    parser = HfArgumentParser((ModelArguments, DataArguments, CSMCIRTrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    check_output_dir(training_args)
    # One job per output_dir: a second csmcir-train into the same folder fails at once, naming the first. Process 0
    # of a multi-process run holds the lock for all of them.
    lock = (exclusive_output_lock(Path(training_args.output_dir) / ".csmcir-train.lock",
                                  what=f"--output_dir {training_args.output_dir}")
            if training_args.process_index == 0 else contextlib.nullcontext())
    with lock:
        report = run_training(model_args, data_args, training_args)
    if "after" in report:
        print(json.dumps({"before": report["before"], "after": report["after"]}, indent=2))
    return report


console_main = console_entry_point(main, "csmcir-train")


if __name__ == "__main__":
    console_main()
