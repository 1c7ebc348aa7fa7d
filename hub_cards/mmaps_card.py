"""The Hub model card of an MMAPS model (multimodal product summarization), filled from real evaluation results.

    write_mmaps_card("outputs/mmaps", metrics="outputs/mmaps/eval_results.json", training_args=trainer.args,
                     dataset_name="synthetic-products")

Metadata: ``library_name: transformers``, ``pipeline_tag: summarization`` (an official Hub task, although
transformers 5 removed the pipeline of that name: ours is ``product-summarization``, carried as a tag).
Body: ``templates/mmaps_card.md.jinja``. The protocol stated with the numbers comes with them (the metrics report's
``protocol``, or the MMAPS trainer's ``evaluation_protocol``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard
from transformers.utils import logging

from .card_rendering import CardSpec, compose_card, gather_card_inputs, save_card

logger = logging.get_logger(__name__)

MMAPS_PIPELINE_TAG = "summarization"
MMAPS_TASK = "product-summarization"
MMAPS_TAGS = ("mmaps", MMAPS_TASK, "multimodal", "bart", "e-commerce", "attribute-aware")
EXAMPLE_TEXTS = {
    "zh": "这款双肩包采用防泼水面料，容量大，内部多隔层，背负舒适，适合通勤和旅行。",
    "en": "This backpack is made of water-repellent fabric, with a large capacity, several inner pockets and padded straps.",
}
MMAPS_CARD = CardSpec(
    template="mmaps_card.md.jinja", pipeline_tag=MMAPS_PIPELINE_TAG, task_type=MMAPS_PIPELINE_TAG,
    task_name="Multimodal Product Summarization", tags=MMAPS_TAGS, metric_ids=("rouge", "bleu"),
    dataset_display_names={"cepsum": "CEPSUM", "synthetic-products": "the synthetic product set (CEPSUM layout)"},
)


def _visual_input(config: dict[str, Any]) -> str:
    vision = config.get("vision_config")
    if vision:
        return f"raw images through a `{vision.get('model_type', 'vision')}` backbone's patch features"
    return f"pre-extracted region features ({config.get('visual_feature_dim', '?')}-d, up to {config.get('max_regions', '?')} regions)"


def build_mmaps_card(
    output_dir: str | os.PathLike,
    metrics: Any = None,
    training_args: Any = None,
    base_model: str | None = None,
    dataset_name: str | None = None,
    *,
    repo_id: str | None = None,
    trainer_state: Any = None,
    language: str | None = None,
    datasets: Sequence[str] | None = None,
    license: str = "apache-2.0",
    tags: Sequence[str] = (),
) -> ModelCard:
    """The card of the MMAPS model saved in ``output_dir`` (see :func:`write_mmaps_card`); does not write it."""
    inputs = gather_card_inputs(output_dir, metrics, training_args, trainer_state, dataset_name, repo_id)
    config, settings = inputs.config, inputs.settings
    language = language or settings.get("summary_language") or "zh"
    if language not in EXAMPLE_TEXTS:
        raise ValueError(f"language: expected one of {sorted(EXAMPLE_TEXTS)}, got {language!r}")
    text = config.get("text_config") or {}
    return compose_card(
        MMAPS_CARD, inputs, base_model=base_model, license=license, tags=tags, datasets=datasets, language=language,
        uses_pixels=bool(config.get("vision_config")), visual_input=_visual_input(config),
        d_model=text.get("d_model", "?"), encoder_layers=text.get("encoder_layers", "?"),
        decoder_layers=text.get("decoder_layers", "?"), vocab_size=text.get("vocab_size", "?"),
        num_attributes=config.get("num_attributes", "?"), example_text=EXAMPLE_TEXTS[language],
        # The snippet decodes as the evaluation did (MMAPSTrainingArguments' beam 3, 90 tokens by default).
        num_beams=settings.get("generation_num_beams") or 3, max_new_tokens=settings.get("generation_max_length") or 90,
    )


def write_mmaps_card(
    output_dir: str | os.PathLike,
    metrics: Any = None,
    training_args: Any = None,
    base_model: str | None = None,
    dataset_name: str | None = None,
    **kwargs: Any,
) -> Path:
    """Write ``output_dir/README.md``: the model card of the MMAPS model saved there.

    Args:
        output_dir: the saved model folder (its ``config.json`` supplies the architecture facts; whether images
            enter as pixels and whether the custom pipeline is saved there decide the usage snippet).
        metrics: ``eval_results.json`` / ``metrics.json`` (path, folder or dict; ``eval_`` prefixes are dropped),
            a flat ``{"protocol": ..., "rouge2": ...}`` dict, or ``None`` for a card without results.
        training_args: ``MMAPSTrainingArguments`` (or dict / JSON path) of the run; ``trainer_state`` (keyword)
            is read from ``output_dir/trainer_state.json`` when not given.
        base_model: the BART checkpoint the model started from (e.g. ``fnlp/bart-base-chinese``).
        dataset_name: the evaluated dataset; overrides the one named in ``metrics``.
        kwargs: ``repo_id`` (for the usage snippet; default ``your-username/<folder name>``), ``trainer_state``,
            ``language`` (``zh``/``en``; default the run's ``summary_language``), ``datasets``, ``license``, ``tags``.

    Returns:
        the path of the written card.
    """
    card = build_mmaps_card(output_dir, metrics, training_args, base_model, dataset_name, **kwargs)
    return save_card(card, output_dir)


__all__ = ["MMAPS_PIPELINE_TAG", "MMAPS_TAGS", "build_mmaps_card", "write_mmaps_card"]
