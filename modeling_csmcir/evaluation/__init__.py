"""CSMCIR retrieval evaluation: the benchmark protocols and metrics, the evaluator built on `GalleryIndex`, and
the CIRR / CIRCO test-server submission files. The ``evaluate`` modules under ``evaluate_modules/`` adapt the
same protocol functions to ``evaluate.load``."""

from .cir_metrics import (
    PROTOCOLS,
    circo_metrics,
    cirr_metrics,
    compute_cir_metrics,
    fashioniq_average,
    fashioniq_metrics,
    map_at_k,
    recall_at_k,
    shoes_metrics,
)
from .evaluator import CIREvaluationResult, CIRRetrievalEvaluator, GalleryIndexCache, encode_queries, evaluate_cir
from .submissions import build_circo_submission, build_cirr_submissions, write_circo_submission, write_cirr_submissions

__all__ = [
    "PROTOCOLS", "CIREvaluationResult", "CIRRetrievalEvaluator", "GalleryIndexCache", "build_circo_submission",
    "build_cirr_submissions", "circo_metrics", "cirr_metrics", "compute_cir_metrics", "encode_queries",
    "evaluate_cir", "fashioniq_average", "fashioniq_metrics", "map_at_k", "recall_at_k", "shoes_metrics",
    "write_circo_submission", "write_cirr_submissions",
]
