"""``mmaps-train``: fine-tune MMAPS on a CEPSUM-layout folder with :class:`MMAPSTrainer`.

    mmaps-train --data_dir D --output_dir O --config_name tiny [any Seq2SeqTrainingArguments flag]
    mmaps-train --data_dir D --output_dir O --model_name_or_path M ...

``--config_name tiny`` builds a CPU-sized model from scratch: a character vocabulary read off the
training texts and summaries, ``MMAPSConfig.tiny()`` sized to it (text side widened to d_model 64, two
encoder layers: ``TINY_TEXT_OVERRIDES``), and (for ``--visual_input images``)
a tiny CLIP vision tower on raw images. ``--model_name_or_path`` loads a saved MMAPS model and its
processor (or, with ``--from_bart``, starts from a BART checkpoint). The attribute vocabulary is built
from the training references (top ``--attribute_top_n`` words per category) unless the processor has
one; it must match the model's attribute head. The model, processor (with its vocabulary) and
``train_results.json``/``eval_results.json`` land in ``--output_dir``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from transformers import HfArgumentParser, set_seed
from transformers.utils import logging

from modeling_csmcir.atomic_files import write_json_atomically

from .attributes import (
    build_attribute_vocabulary,
    check_vocabulary_matches_model,
    merge_attribute_vocabularies,
)
from .cepsum_data import MMAPSDataCollator, load_cepsum_split
from .trainer_mmaps import MMAPSTrainer, MMAPSTrainingArguments

logger = logging.get_logger(__name__)


@dataclass
class ModelArguments:
    """Which model to train."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "Saved MMAPS folder/repo (or BART with --from_bart)."})
    config_name: str | None = field(default=None, metadata={"help": "'tiny': a CPU-sized model from scratch."})
    from_bart: bool = field(default=False, metadata={"help": "model_name_or_path is a BART checkpoint to start from."})
    visual_input: str = field(default="images", metadata={"help": "images | regions | none (image-blind ablation)."})
    image_size: int = field(default=32, metadata={"help": "Image side for the tiny vision tower."})
    trust_remote_code: bool = field(default=True, metadata={"help": "Allow a saved folder's own code."})


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


#: The `--config_name tiny` text model: MMAPSConfig.tiny()'s BART widened to learn the synthetic set on a CPU.
TINY_TEXT_OVERRIDES: dict[str, int] = dict(
    d_model=64, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
    encoder_ffn_dim=128, decoder_ffn_dim=128,
)


def _characters(dataset: Any) -> list[str]:
    """Every character of the texts and references, lower-cased (the tokenizer lower-cases), sorted."""
    chars: set[str] = set()
    for src, tgt in zip(dataset["src"], dataset["tgt"]):
        chars.update(src.lower())
        for t in tgt:
            chars.update(t.lower())
    return sorted(c for c in chars if not c.isspace())


def build_tiny_model(train_dataset: Any, attribute_vocabulary: list[str], model_args: ModelArguments,
                     data_args: DataArguments) -> tuple[Any, Any]:
    """A from-scratch tiny MMAPS model and its processor, with a character vocabulary read off the data."""
    from .configuration_mmaps import MMAPSConfig
    from .modeling_mmaps import MMAPSForConditionalGeneration
    from .processing_mmaps import MMAPSProcessor

    max_source = data_args.max_source_length or 160
    max_target = data_args.max_target_length or 40
    processor = MMAPSProcessor.from_vocabulary(
        _characters(train_dataset), image_size=model_args.image_size, attribute_vocabulary=attribute_vocabulary,
        max_source_length=max_source, max_target_length=max_target, max_regions=6,
    )
    # MMAPSConfig.tiny() (d_model 32, one layer each side) never learned to copy attributes from the text in 800
    # steps on the synthetic set; d_model 64 with two encoder layers did, still at ~0.2 s per step of 16 on one CPU.
    overrides: dict[str, Any] = dict(
        text_config={
            "vocab_size": len(processor.tokenizer), "max_position_embeddings": max(max_source, max_target) + 8,
            **TINY_TEXT_OVERRIDES,
        },
        num_attributes=len(attribute_vocabulary),
        fusion_hidden_size=32,
    )
    if model_args.visual_input in ("images", "none"):
        # "none" keeps the vision tower so the ablation is the same model, only fed no images.
        overrides["vision_config"] = MMAPSConfig.tiny_vision_config(image_size=model_args.image_size)
    config = MMAPSConfig.tiny(**overrides)
    model = MMAPSForConditionalGeneration(config)
    return model, processor


def load_model(model_args: ModelArguments, data_args: DataArguments, train_dataset: Any,
               attribute_vocabulary: list[str]) -> tuple[Any, Any]:
    """The model and processor named by the arguments (see the module docstring)."""
    if model_args.config_name == "tiny":
        return build_tiny_model(train_dataset, attribute_vocabulary, model_args, data_args)
    if model_args.config_name is not None:
        raise ValueError(f"config_name: only 'tiny' is built in, got {model_args.config_name!r}")
    if not model_args.model_name_or_path:
        raise ValueError("pass --config_name tiny or --model_name_or_path")
    from transformers import AutoModelForSeq2SeqLM, AutoProcessor

    if model_args.from_bart:
        from transformers import AutoTokenizer, CLIPImageProcessorPil

        from .modeling_mmaps import MMAPSForConditionalGeneration
        from .processing_mmaps import MMAPSProcessor

        model = MMAPSForConditionalGeneration.from_bart_pretrained(
            model_args.model_name_or_path, num_attributes=len(attribute_vocabulary)
        )
        processor = MMAPSProcessor(
            image_processor=CLIPImageProcessorPil(), tokenizer=AutoTokenizer.from_pretrained(model_args.model_name_or_path),
            attribute_vocabulary=attribute_vocabulary,
        )
        return model, processor
    model = AutoModelForSeq2SeqLM.from_pretrained(model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code)
    processor = AutoProcessor.from_pretrained(model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code)
    if not getattr(processor, "attribute_vocabulary", None):
        processor.attribute_vocabulary = attribute_vocabulary
    return model, processor


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse the flags, train, evaluate on the dev split, save; returns the eval metrics."""
    parser = HfArgumentParser((ModelArguments, DataArguments, MMAPSTrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
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
    model, processor = load_model(model_args, data_args, train, vocabulary)
    if getattr(processor, "attribute_vocabulary", None):
        check_vocabulary_matches_model(processor.attribute_vocabulary, model.config.num_attributes)
    if data_args.max_source_length:
        processor.max_source_length = data_args.max_source_length
    if data_args.max_target_length:
        processor.max_target_length = data_args.max_target_length

    collator = MMAPSDataCollator(processor, visual_input=model_args.visual_input, language=training_args.summary_language)
    trainer = MMAPSTrainer(model=model, args=training_args, train_dataset=train, eval_dataset=evaluation,
                           data_collator=collator, processing_class=processor)
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    processor.save_pretrained(training_args.output_dir)
    os.makedirs(training_args.output_dir, exist_ok=True)
    write_json_atomically(os.path.join(training_args.output_dir, "train_results.json"), train_result.metrics, indent=2)
    metrics: dict[str, Any] = {}
    if evaluation is not None:
        metrics = trainer.evaluate()
        write_json_atomically(os.path.join(training_args.output_dir, "eval_results.json"), metrics, indent=2)
    logger.info("mmaps-train finished: %s", metrics)
    return metrics


def console_main() -> None:
    """Entry point of the ``mmaps-train`` console script: `main` returns its result to Python callers, and a console
    script would hand that object to ``sys.exit`` (exit status 1), so this wrapper discards it."""
    main()


if __name__ == "__main__":
    main()
