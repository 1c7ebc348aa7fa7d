"""The Hub model card of a CSMCIR model (composed image retrieval), filled from real evaluation results.

    write_csmcir_card("outputs/csmcir", metrics="outputs/csmcir/metrics.json", training_args=trainer.args,
                      dataset_name="synthetic-cir")

Metadata: ``library_name: transformers``; ``pipeline_tag: image-feature-extraction`` — the Hub has no composed
image retrieval task, and the model's output is an embedding of images (with text) used for search, which is that
official task's contract; the task itself travels as the ``composed-image-retrieval`` tag (the practice of other
multimodal retrieval models with custom code on the Hub). Body: ``templates/csmcir_card.md.jinja``.
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

CSMCIR_PIPELINE_TAG = "image-feature-extraction"
CSMCIR_TASK = "composed-image-retrieval"
CSMCIR_TAGS = ("csmcir", CSMCIR_TASK, "image-retrieval", "blip-2", "q-former", "memory-bank")
CSMCIR_CARD = CardSpec(
    template="csmcir_card.md.jinja", pipeline_tag=CSMCIR_PIPELINE_TAG, task_type=CSMCIR_TASK,
    task_name="Composed Image Retrieval", tags=CSMCIR_TAGS, metric_ids=("recall",),
    # The benchmarks `csmcir-eval` knows; any other dataset is shown as given.
    dataset_display_names={"cirr": "CIRR", "fashioniq": "FashionIQ", "circo": "CIRCO", "shoes": "Shoes",
                           "synthetic-cir": "the synthetic CIR benchmark (CIRR layout)"},
)


def build_csmcir_card(
    output_dir: str | os.PathLike,
    metrics: Any = None,
    training_args: Any = None,
    base_model: str | None = None,
    dataset_name: str | None = None,
    *,
    repo_id: str | None = None,
    trainer_state: Any = None,
    datasets: Sequence[str] | None = None,
    license: str = "apache-2.0",
    tags: Sequence[str] = (),
) -> ModelCard:
    """The card of the CSMCIR model saved in ``output_dir`` (see :func:`write_csmcir_card`); does not write it."""
    inputs = gather_card_inputs(output_dir, metrics, training_args, trainer_state, dataset_name, repo_id)
    config, vision = inputs.config, inputs.config.get("vision_config") or {}
    return compose_card(
        CSMCIR_CARD, inputs, base_model=base_model, license=license, tags=tags, datasets=datasets,
        vision_model_type=vision.get("model_type", "unknown"), freeze_vision=config.get("freeze_vision", False),
        num_query_tokens=config.get("num_query_tokens", "?"), embed_dim=config.get("embed_dim", "?"),
        share_qformer=config.get("share_qformer", True),
        bank_strategy=inputs.settings.get("bank_strategy"),
    )


def write_csmcir_card(
    output_dir: str | os.PathLike,
    metrics: Any = None,
    training_args: Any = None,
    base_model: str | None = None,
    dataset_name: str | None = None,
    **kwargs: Any,
) -> Path:
    """Write ``output_dir/README.md``: the model card of the CSMCIR model saved there.

    Args:
        output_dir: the saved model folder (its ``config.json`` supplies the architecture facts, and whether the
            custom pipeline is saved there decides the usage snippet).
        metrics: ``metrics.json`` of ``csmcir-eval`` (path, folder or dict), a flat ``{"protocol": ..., "recall_at_1":
            ...}`` dict, a Trainer ``eval_*`` dict, or ``None`` for a card without results. Every number becomes a
            ``model-index`` entry carrying the protocol.
        training_args: ``CSMCIRTrainingArguments`` (or dict / JSON path) of the run; ``trainer_state`` (keyword)
            is read from ``output_dir/trainer_state.json`` when not given.
        base_model: Hub id the weights were converted or fine-tuned from (e.g. ``Salesforce/blip2-itm-vit-g``).
        dataset_name: the evaluated dataset; overrides the benchmark named in ``metrics`` (a synthetic set in the
            CIRR layout is scored with the CIRR protocol but is not CIRR).
        kwargs: ``repo_id`` (used in the usage snippet; default ``your-username/<folder name>``), ``trainer_state``,
            ``datasets`` (Hub dataset ids for the metadata), ``license``, extra ``tags``.

    Returns:
        the path of the written card.
    """
    card = build_csmcir_card(output_dir, metrics, training_args, base_model, dataset_name, **kwargs)
    return save_card(card, output_dir)


__all__ = ["CSMCIR_PIPELINE_TAG", "CSMCIR_TAGS", "build_csmcir_card", "write_csmcir_card"]
