"""CSMCIR retrieval evaluation: the benchmark protocols and metrics, the evaluator built on `GalleryIndex`, and
the CIRR / CIRCO test-server submission files. The ``evaluate`` modules under ``evaluate_modules/`` adapt the
same protocol functions to ``evaluate.load``."""

from __future__ import annotations

from ..lazy_exports import lazy_exports

# Public name -> the module that defines it, imported on first access.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys([
        "PROTOCOLS", "circo_metrics", "cirr_metrics", "compute_cir_metrics", "fashioniq_average",
        "fashioniq_metrics", "map_at_k", "recall_at_k", "shoes_metrics",
    ], ".cir_metrics"),
    **dict.fromkeys([
        "CIREvaluationResult", "CIRRetrievalEvaluator", "GalleryIndexCache", "encode_queries", "evaluate_cir",
    ], ".evaluator"),
    **dict.fromkeys([
        "build_circo_submission", "build_cirr_submissions", "write_circo_submission", "write_cirr_submissions",
    ], ".submissions"),
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
