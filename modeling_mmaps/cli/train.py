"""``mmaps-train``: fine-tune MMAPS on a CEPSUM-layout folder with :class:`~modeling_mmaps.MMAPSTrainer`.

::

    mmaps-train --data_dir D --output_dir O --config_name tiny-scratch [any Seq2SeqTrainingArguments flag]
    mmaps-train --data_dir D --output_dir O --model_name_or_path M ...
    mmaps-train ... --save_strategy steps --resume_from_checkpoint last

``--config_name`` names a preset of :mod:`modeling_mmaps.presets` (``tiny``, ``tiny-scratch``, ``base``) and builds
it from scratch with :func:`~modeling_mmaps.presets.preset_model`: a character vocabulary read off the training
texts and summaries, the preset's sizes fitted to it, and (for ``--visual_input images`` or ``none``) the preset's
vision tower on raw images. ``tiny-scratch`` is the CPU-sized model that learns the synthetic set.
``--model_name_or_path`` loads a saved MMAPS model and its processor with the Auto classes (or, with
``--from_bart``, starts from a BART checkpoint). The attribute vocabulary is built from the training references
(top ``--attribute_top_n`` words per category) unless the processor has one; it must match the model's attribute
head. ``--resume_from_checkpoint last`` resumes from the latest complete ``checkpoint-N`` in ``--output_dir``. The
model, processor (with its vocabulary), ``train_results.json`` and the dev split's ``eval_results.json`` (a metrics
report, ``hub_cards.metrics_report``) land in ``--output_dir``, with the ``product-summarization`` pipeline's code and
a model card holding the dev numbers and the training settings, so the folder uploads as it is
(``hub_cards.hub_ready``; evaluation runs before the save).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from transformers import HfArgumentParser, set_seed
from transformers.utils import logging

from hub_cards.console import console_entry_point
from hub_cards.launch import use_cpu_processes_if_no_accelerator

from ..presets import PRESETS, character_vocabulary, preset_model
from ..training_args import MMAPSTrainingArguments

# Parsing (and --help) needs only the dataclasses below; data, metrics and the Trainer are imported when a run
# starts, so `mmaps-train --help` costs little more than importing transformers.

logger = logging.get_logger(__name__)


@dataclass
class ModelArguments:
    """Which model to train."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "Saved MMAPS folder/repo (or BART with --from_bart)."})
    config_name: str | None = field(
        default=None, metadata={"help": f"A preset to build from scratch: {', '.join(PRESETS)} (modeling_mmaps.presets)."})
    from_bart: bool = field(default=False, metadata={"help": "model_name_or_path is a BART checkpoint to start from."})
    visual_input: str = field(default="images", metadata={"help": "images | regions | none (image-blind ablation)."})
    image_size: int = field(default=32, metadata={"help": "Image side of a preset's vision tower."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow a saved folder's own code."})


@dataclass
class DataArguments:
    """Where the data is and how it is turned into examples."""

    data_dir: str = field(metadata={"help": "Folder with {category}_{split}.json, images/ and optional frcnn_*.h5."})
    categories: str | None = field(default=None, metadata={"help": "Comma-separated categories (default: all)."})
    train_split: str = field(default="train", metadata={"help": "Training split name."})
    eval_split: str = field(default="dev", metadata={"help": "Evaluation split name ('' to skip)."})
    max_train_products: int | None = field(default=None, metadata={"help": "Cap per category (quick runs)."})
    max_eval_products: int | None = field(default=None, metadata={"help": "Cap per category (quick runs)."})
    attribute_top_n: int = field(default=1000, metadata={"help": "Attribute words kept per category."})
    attribute_min_count: int = field(default=2, metadata={"help": "Products a word must occur in to be kept."})
    max_source_length: int | None = field(default=None, metadata={"help": "Token limit of the product text."})
    max_target_length: int | None = field(default=None, metadata={"help": "Token limit of the summary."})


def _load_model(model_args: ModelArguments, data_args: DataArguments, train_dataset: Any,
                attribute_vocabulary: list[str]) -> tuple[Any, Any]:
    """The model and processor named by the arguments (see the module docstring)."""
    if model_args.config_name is not None:
        texts = [*train_dataset["src"], *(t for refs in train_dataset["tgt"] for t in refs)]
        return preset_model(
            model_args.config_name, tokens=character_vocabulary(texts), attribute_vocabulary=attribute_vocabulary,
            visual_input=model_args.visual_input, image_size=model_args.image_size,
            max_source_length=data_args.max_source_length, max_target_length=data_args.max_target_length,
        )
    if not model_args.model_name_or_path:
        raise ValueError(f"pass --config_name (one of {', '.join(PRESETS)}) or --model_name_or_path")
    if model_args.from_bart:
        from transformers import AutoTokenizer, CLIPImageProcessorPil

        from ..modeling_mmaps import MMAPSForConditionalGeneration
        from ..processing_mmaps import MMAPSProcessor

        model = MMAPSForConditionalGeneration.from_bart_pretrained(
            model_args.model_name_or_path, num_attributes=len(attribute_vocabulary)
        )
        tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
        processor = MMAPSProcessor(
            image_processor=CLIPImageProcessorPil(), tokenizer=tokenizer, attribute_vocabulary=attribute_vocabulary,
            # A BERT-style vocabulary (fnlp/bart-base-chinese) is a character vocabulary: feed it characters, as the
            # original does; a BPE tokenizer (facebook/bart-base) keeps its own segmentation.
            character_level=type(tokenizer).__name__.startswith("Bert"),
        )
        return model, processor
    from transformers import AutoModelForSeq2SeqLM, AutoProcessor

    model = AutoModelForSeq2SeqLM.from_pretrained(model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code)
    processor = AutoProcessor.from_pretrained(model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code)
    if not getattr(processor, "attribute_vocabulary", None):
        processor.attribute_vocabulary = attribute_vocabulary
    return model, processor


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse the flags, train, evaluate on the dev split, save; returns the eval metrics."""
    # Several processes launched (torchrun / accelerate) on a machine without a GPU: one gloo group, not N lone runs.
    use_cpu_processes_if_no_accelerator()
    parser = HfArgumentParser((ModelArguments, DataArguments, MMAPSTrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    from hub_cards.atomic_files import write_json_atomically
    from hub_cards.checkpoints import resolve_resume_checkpoint
    from hub_cards.metrics_report import write_metrics_report

    from ..data.attributes import (
        build_attribute_vocabulary,
        check_vocabulary_matches_model,
        merge_attribute_vocabularies,
    )
    from ..data.cepsum import MMAPSDataCollator, load_cepsum_split
    from ..trainer_mmaps import MMAPSTrainer

    if model_args.visual_input not in ("images", "regions", "none"):
        raise ValueError(f"visual_input: expected images, regions or none, got {model_args.visual_input!r}")
    set_seed(training_args.seed)
    categories = data_args.categories.split(",") if data_args.categories else None
    train = load_cepsum_split(data_args.data_dir, data_args.train_split, categories=categories,
                              explode_references=True, max_products=data_args.max_train_products)
    evaluation = None
    if data_args.eval_split:
        evaluation = load_cepsum_split(data_args.data_dir, data_args.eval_split, categories=categories,
                                       max_products=data_args.max_eval_products)

    by_category: dict[str, list[list[str]]] = {}
    seen: set[str] = set()
    for sku, category, tgt in zip(train["sku"], train["category"], train["tgt"]):
        if sku not in seen:  # exploded rows repeat a product's references
            seen.add(sku)
            by_category.setdefault(category, []).append(tgt)
    per_category = build_attribute_vocabulary(by_category, data_args.attribute_top_n, language=training_args.summary_language,
                                              min_count=data_args.attribute_min_count)
    vocabulary = merge_attribute_vocabularies(per_category)
    model, processor = _load_model(model_args, data_args, train, vocabulary)
    if getattr(processor, "attribute_vocabulary", None):
        check_vocabulary_matches_model(processor.attribute_vocabulary, model.config.num_attributes)
    if data_args.max_source_length:
        processor.max_source_length = data_args.max_source_length
    if data_args.max_target_length:
        processor.max_target_length = data_args.max_target_length

    collator = MMAPSDataCollator(processor, visual_input=model_args.visual_input, language=training_args.summary_language)
    trainer = MMAPSTrainer(model=model, args=training_args, train_dataset=train, eval_dataset=evaluation,
                           data_collator=collator, processing_class=processor)
    resume = resolve_resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    train_result = trainer.train(resume_from_checkpoint=resume)
    # Evaluate before saving: the trainer writes the model card into the folder it saves once an evaluation has
    # produced metrics (a folder saved first has no card).
    metrics: dict[str, Any] = {}
    if evaluation is not None:
        metrics = trainer.evaluate()
    trainer.save_model()
    if trainer.is_world_process_zero():
        processor.save_pretrained(training_args.output_dir)
        write_json_atomically(os.path.join(training_args.output_dir, "train_results.json"), train_result.metrics)
        if evaluation is not None:
            write_metrics_report(
                os.path.join(training_args.output_dir, "eval_results.json"), metrics,
                protocol=trainer.evaluation_protocol, dataset=os.path.basename(os.path.normpath(data_args.data_dir)),
                split=data_args.eval_split, model=training_args.output_dir,
                settings={"visual_input": model_args.visual_input,
                          "generation_num_beams": training_args.generation_num_beams,
                          "generation_max_length": training_args.generation_max_length},
            )
        publish_folder(model, processor, training_args, trainer.state)
    logger.info("mmaps-train finished: %s", metrics)
    return metrics


def publish_folder(model: Any, processor: Any, training_args: MMAPSTrainingArguments, state: Any) -> None:
    """Make ``output_dir`` uploadable as it is (``hub_cards.hub_ready``): the `product-summarization` pipeline's code
    and ``custom_pipelines`` entry, then the model card (the dev-split numbers of ``eval_results.json``, the training
    settings, the usage snippet of the saved pipeline)."""
    # Importing the package registers the task, so the pipeline's save copies its code into the folder.
    from pipelines import PRODUCT_SUMMARIZATION_TASK
    from transformers import pipeline

    from hub_cards import write_mmaps_card

    output_dir = training_args.output_dir
    pipeline(PRODUCT_SUMMARIZATION_TASK, model=model, processor=processor).save_pretrained(output_dir)
    report = os.path.join(output_dir, "eval_results.json")
    if not os.path.isfile(report):
        logger.warning(f"{output_dir}: no --eval_split, so no measured numbers: the model card has no results and "
                       "the folder is not Hub-ready until mmaps-eval has run and the card is rewritten")
    write_mmaps_card(output_dir, metrics=report if os.path.isfile(report) else None, training_args=training_args,
                     trainer_state=state)


console_main = console_entry_point(main, "mmaps-train")


if __name__ == "__main__":
    console_main()
