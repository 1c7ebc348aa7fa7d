"""`evaluate` module for character-level corpus BLEU-1..4 as the MMAPS original reports it.

`evaluate.load("modeling_mmaps/evaluation/evaluate_modules/cepsum_bleu")`. The scoring lives in
`modeling_mmaps.evaluation.summarization_metrics.cepsum_bleu` (NLTK corpus BLEU over characters, no smoothing, ×100).
"""

from __future__ import annotations

import datasets
import evaluate

from modeling_mmaps.evaluation.summarization_metrics import cepsum_bleu

_CITATION = "MMAPS (KDEGroup/MMAPS, 2024): the original utils/metric.py protocol; BLEU (Papineni et al., 2002)."
_DESCRIPTION = __doc__
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated summaries (str).
    references: list of lists of reference summaries.
Returns:
    {"bleu1": float, "bleu2": float, "bleu3": float, "bleu4": float}, ×100.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CepsumBleu(evaluate.Metric):
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
        return cepsum_bleu(list(predictions), [list(r) for r in references])
