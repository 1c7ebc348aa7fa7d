"""`MMAPSTrainingArguments`: `Seq2SeqTrainingArguments` with MMAPS's defaults.

Kept apart from the trainer so a command line can be parsed (and ``--help`` answered) without importing
`transformers.Trainer`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import Seq2SeqTrainingArguments


@dataclass
class MMAPSTrainingArguments(Seq2SeqTrainingArguments):
    """``Seq2SeqTrainingArguments`` with MMAPS's defaults.

    Changed defaults: ``predict_with_generate=True``, ``metric_for_best_model="rouge2"`` (model selection on
    dev ROUGE-2, as the paper), ``generation_num_beams=3``, ``generation_max_length=90`` (the paper's
    decoding), ``remove_unused_columns=False`` (the collator needs the raw text and image columns).
    New: ``summary_language`` (``zh`` scores with the CEPSUM protocol, ``en`` with standard ROUGE).
    """

    predict_with_generate: bool = field(default=True, metadata={"help": "Generate summaries during evaluation."})
    metric_for_best_model: str | None = field(default="rouge2", metadata={"help": "Checkpoint selection metric."})
    generation_num_beams: int | None = field(default=3, metadata={"help": "Beams for evaluation decoding."})
    generation_max_length: int | None = field(default=90, metadata={"help": "Most tokens generated at evaluation."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep raw columns for the collator."})
    summary_language: str = field(default="zh", metadata={"help": "zh: CEPSUM character ROUGE; en: rouge_score."})

    def __post_init__(self) -> None:
        if self.summary_language not in ("zh", "en"):
            raise ValueError(f"summary_language: expected 'zh' or 'en', got {self.summary_language!r}")
        if not self.predict_with_generate and self.metric_for_best_model == "rouge2":
            # ROUGE needs generated summaries; without them the Trainer would fail at the first evaluation.
            self.metric_for_best_model = None
        super().__post_init__()


__all__ = ["MMAPSTrainingArguments"]
