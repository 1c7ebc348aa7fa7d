"""MMAPS evaluation: the CEPSUM protocol, BLEU, attribute P/R/F1, standard English ROUGE, the lead-N baseline and
the Trainer's ``compute_metrics`` (``summarization_metrics``); generate-then-score over a split, as ``mmaps-eval``
runs it (``evaluator``); ``evaluate`` wrappers in ``evaluate_modules/``."""

from .evaluator import SummarizationEvaluation, evaluate_summarization, generate_summaries, resolve_visual_input
from .summarization_metrics import (
    PROTOCOLS,
    attribute_prf,
    build_compute_metrics,
    cepsum_bleu,
    cepsum_rouge,
    cepsum_rouge_pair,
    english_rouge,
    lead_baseline,
    mean_reference_length,
    summarization_scores,
)

__all__ = [
    "PROTOCOLS",
    "SummarizationEvaluation",
    "attribute_prf",
    "build_compute_metrics",
    "cepsum_bleu",
    "cepsum_rouge",
    "cepsum_rouge_pair",
    "english_rouge",
    "evaluate_summarization",
    "generate_summaries",
    "lead_baseline",
    "mean_reference_length",
    "resolve_visual_input",
    "summarization_scores",
]
