"""`evaluate` module: Recall@K for composed image retrieval under the CIRR, FashionIQ or Shoes protocol.

Load offline with ``evaluate.load("<path to modeling_csmcir>/evaluation/evaluate_modules/cir_recall")``. The protocols are
implemented once, in ``modeling_csmcir.evaluation.cir_metrics``; this module only adapts them to ``evaluate``.
"""

from __future__ import annotations

import datasets
import evaluate

from modeling_csmcir.evaluation.cir_metrics import PROTOCOLS, compute_cir_metrics, rank_gallery, recall_at_k


_DESCRIPTION = """Recall@K of composed image retrieval. `predictions` are per-query score rows over the gallery
(`gallery_ids` gives the column ids), `references` the correct target id(s) per query. `protocol` selects the
official rule: `cirr` (reference removed from the ranking, Recall@{1,5,10,50}, Recall_subset@{1,2,3} when
`img_sets` are given), `fashioniq` (reference kept, R@10/R@50), `shoes` (reference kept, R@{1,10,50}) or
`plain` (no rule, Recall@`ks`). Values are percentages; the result carries a `protocol` string."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of score rows (list of float, one per gallery image), higher = better.
    references: list of lists of correct gallery ids per query.
    gallery_ids: list of the gallery ids, in column order.
    protocol: "cirr", "fashioniq", "shoes" or "plain" (default "plain").
    reference_ids: per-query reference image ids (required by "cirr").
    img_sets: per-query CIRR img_set members (optional, "cirr" only).
    ks: cut-offs for "plain" (default [1, 5, 10, 50]).
Returns:
    dict with recall_at_K (and recall_subset_at_K, avg) in percent, and "protocol".
Example:
    >>> metric = evaluate.load("modeling_csmcir/evaluation/evaluate_modules/cir_recall")
    >>> metric.compute(predictions=[[0.9, 0.1], [0.2, 0.8]], references=[["a"], ["a"]], gallery_ids=["a", "b"], ks=[1])
    {'recall_at_1': 50.0, 'protocol': 'plain: ...'}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CirRecall(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
        )

    def _compute(self, predictions, references, gallery_ids=None, protocol="plain", reference_ids=None, img_sets=None, ks=None):
        if gallery_ids is None:
            raise ValueError("cir_recall needs gallery_ids (the id of every score column)")
        targets = [list(r) for r in references]
        if protocol == "plain":
            rankings = rank_gallery(predictions, gallery_ids, top_k=max(ks or [1, 5, 10, 50]))
            result = dict(recall_at_k(rankings, targets, ks or [1, 5, 10, 50]))
            result["protocol"] = "plain: Recall@K over the full gallery, no reference rule"
            return result
        if protocol not in ("cirr", "fashioniq", "shoes"):
            raise ValueError(f"unknown protocol {protocol!r}; expected 'cirr', 'fashioniq', 'shoes' or 'plain' ({sorted(PROTOCOLS)})")
        return compute_cir_metrics(
            protocol, predictions, gallery_ids, reference_ids=reference_ids, target_ids=targets, img_sets=img_sets
        )
