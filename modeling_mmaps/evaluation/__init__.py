"""MMAPS evaluation: the CEPSUM protocol, BLEU, attribute P/R/F1, standard English ROUGE, the lead-N baseline and
the Trainer's ``compute_metrics`` (``summarization_metrics``); generate-then-score over a split, as ``mmaps-eval``
runs it (``evaluator``); ``evaluate`` wrappers in ``evaluate_modules/``."""

from __future__ import annotations

from ..lazy_exports import lazy_exports

# Public name -> the module that defines it, imported on first access.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys([
        "SummarizationEvaluation", "evaluate_summarization", "generate_summaries", "resolve_visual_input",
    ], ".evaluator"),
    **dict.fromkeys([
        "PROTOCOLS", "attribute_prf", "build_compute_metrics", "cepsum_bleu", "cepsum_rouge", "cepsum_rouge_pair",
        "english_rouge", "lead_baseline", "mean_reference_length", "summarization_scores",
    ], ".summarization_metrics"),
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
