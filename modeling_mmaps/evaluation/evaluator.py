"""Scoring a summarization model on a CEPSUM-layout split: generate one summary per product, then score.

:func:`evaluate_summarization` is what ``mmaps-eval`` runs: the CEPSUM (or English) ROUGE, BLEU-1..4 and attribute
P/R/F1 of :func:`~modeling_mmaps.evaluation.summarization_metrics.summarization_scores`, the lead-N baseline's ROUGE
on the same products (N = the mean reference length), and — given the ground truth a synthetic set carries — the
share of image-only attributes the summaries mention.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..data.cepsum import MMAPSDataCollator
from ..data.synthetic import image_only_mention_rate
from .summarization_metrics import (
    cepsum_rouge,
    english_rouge,
    lead_baseline,
    mean_reference_length,
    summarization_scores,
)


@dataclass
class SummarizationEvaluation:
    """What :func:`evaluate_summarization` measured.

    Attributes:
        metrics: metric name → number (the model's scores, then ``lead{N}_rouge*`` baseline scores).
        predictions: one generated summary per row of the dataset, in order.
        references: every reference of each row.
        visual_input: what the model was fed (``images``, ``regions`` or ``none``).
    """

    metrics: dict[str, float]
    predictions: list[str]
    references: list[list[str]]
    visual_input: str


def resolve_visual_input(config: Any, requested: str) -> str:
    """``auto`` → ``images`` for a model with a vision backbone, ``regions`` for a region model, else ``none``."""
    if requested != "auto":
        if requested not in ("images", "regions", "none"):
            raise ValueError(f"visual_input: expected auto, images, regions or none, got {requested!r}")
        return requested
    if not getattr(config, "use_visual", True):
        return "none"
    return "images" if getattr(config, "vision_config", None) is not None else "regions"


def generate_summaries(model: Any, processor: Any, dataset: Any, visual_input: str, *, batch_size: int = 16,
                       language: str = "zh", **generate_kwargs: Any) -> list[str]:
    """One generated summary per row of ``dataset`` (rows of :func:`~modeling_mmaps.data.cepsum.load_cepsum_split`),
    in order."""
    from tqdm.auto import tqdm

    collator = MMAPSDataCollator(processor, visual_input=visual_input, language=language, with_labels=False)
    device = next(model.parameters()).device
    predictions: list[str] = []
    model.eval()
    for start in tqdm(range(0, len(dataset), batch_size), desc="mmaps-eval", disable=len(dataset) <= batch_size):
        rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        batch = {k: v.to(device) for k, v in collator(rows).items()}
        with torch.no_grad():
            generated = model.generate(**batch, **generate_kwargs)
        predictions.extend(processor.batch_decode(generated, skip_special_tokens=True))
    return predictions


def evaluate_summarization(
    model: Any,
    processor: Any,
    dataset: Any,
    *,
    visual_input: str = "auto",
    language: str = "zh",
    batch_size: int = 16,
    synthetic_attributes: Mapping[str, Mapping[str, Any]] | None = None,
    **generate_kwargs: Any,
) -> SummarizationEvaluation:
    """Generate a summary per row of ``dataset`` and score it against all the row's references (module docstring).

    Args:
        visual_input: ``auto`` (from the model's config, :func:`resolve_visual_input`), ``images``, ``regions``
            or ``none``.
        language: ``zh`` (CEPSUM protocol) or ``en`` (``rouge_score``).
        synthetic_attributes: ``load_synthetic_attributes(data_dir, split)`` of a synthetic set: adds
            ``image_only_attribute_mention_rate`` (×100).
        generate_kwargs: passed to ``model.generate`` (``num_beams``, ``max_new_tokens``, ...).
    """
    visual_input = resolve_visual_input(model.config, visual_input)
    predictions = generate_summaries(model, processor, dataset, visual_input, batch_size=batch_size,
                                     language=language, **generate_kwargs)
    references = [list(t) for t in dataset["tgt"]]
    metrics = summarization_scores(predictions, references, language=language,
                                   attribute_vocabulary=getattr(processor, "attribute_vocabulary", None))
    lead_chars = mean_reference_length(references)
    rouge = cepsum_rouge if language == "zh" else english_rouge
    lead = rouge(lead_baseline(list(dataset["src"]), lead_chars), references)
    metrics.update({f"lead{lead_chars}_{k}": v for k, v in lead.items()})
    if synthetic_attributes is not None:
        metrics["image_only_attribute_mention_rate"] = 100.0 * image_only_mention_rate(
            dict(zip(dataset["sku"], predictions)), synthetic_attributes
        )
    return SummarizationEvaluation(metrics=metrics, predictions=predictions, references=references,
                                   visual_input=visual_input)


__all__ = ["SummarizationEvaluation", "evaluate_summarization", "generate_summaries", "resolve_visual_input"]
