"""`evaluate` module: CIRCO's mAP@K for composed image retrieval with several ground truths per query.

Load offline with ``evaluate.load("<path to modeling_csmcir>/evaluation/evaluate_modules/circo_map")``. The metric itself lives in
``modeling_csmcir.evaluation.cir_metrics`` (``AP@K = sum_{i<=K} P@i * rel_i / min(|GT|, K)``).
"""

from __future__ import annotations

import datasets
import evaluate

from modeling_csmcir.evaluation.cir_metrics import CIRCO_KS, circo_metrics


_DESCRIPTION = """CIRCO mAP@K: `predictions` are per-query score rows over the gallery (`gallery_ids` gives the column
ids), `references` the ground-truth ids of each query. AP@K = sum_{i<=K} P@i * rel_i / min(|GT|, K); values in percent."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of score rows (list of float, one per gallery image).
    references: list of lists of ground-truth gallery ids.
    gallery_ids: list of gallery ids in column order.
    ks: cut-offs (default [5, 10, 25, 50]).
Returns:
    dict with map_at_K in percent and "protocol".
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CircoMap(evaluate.Metric):
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

    def _compute(self, predictions, references, gallery_ids=None, ks=None):
        if gallery_ids is None:
            raise ValueError("circo_map needs gallery_ids (the id of every score column)")
        return circo_metrics(predictions, gallery_ids, [list(r) for r in references], ks=ks or CIRCO_KS)
