"""`evaluate` module for the CEPSUM ROUGE protocol.

    metric = evaluate.load("modeling_mmaps/evaluation/evaluate_modules/cepsum_rouge")

The scoring itself lives once, in `modeling_mmaps.evaluation.summarization_metrics.cepsum_rouge` (character
ROUGE-1/2 clipped F1 and the `rouge` 1.0.1 package's set-based summary-level union-LCS ROUGE-L on
sentences split on "。", each candidate against every reference, averaged over references then
products, ×100). This wrapper only gives it the `evaluate` interface, so it loads offline.
"""

from __future__ import annotations

import datasets
import evaluate

from modeling_mmaps.evaluation.summarization_metrics import cepsum_rouge

_CITATION = "MMAPS (KDEGroup/MMAPS, 2024) and CEPSUM (Yuan et al., AAAI 2020): the original utils/metric.py protocol."
_DESCRIPTION = __doc__
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated summaries (str).
    references: list of lists of reference summaries (one list per prediction, at least one each).
Returns:
    {"rouge1": float, "rouge2": float, "rougeL": float}, F measures ×100.
Example:
    >>> metric = evaluate.load("modeling_mmaps/evaluation/evaluate_modules/cepsum_rouge")
    >>> metric.compute(predictions=["红色包"], references=[["红色的包", "包"]])
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CepsumRouge(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
        )

    def _compute(self, predictions, references) -> dict:
        return cepsum_rouge(list(predictions), [list(r) for r in references])
