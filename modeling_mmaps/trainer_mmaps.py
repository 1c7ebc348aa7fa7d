"""``MMAPSTrainer``: a ``Seq2SeqTrainer`` for MMAPS's multi-task training and CEPSUM-style evaluation.

What it adds to ``Seq2SeqTrainer`` (each override says why):

* every task's loss (summary, attribute, alignment, contrastive, region) is averaged over the logging
  window and logged beside the total, so a run shows which task moves;
* ``predict_with_generate`` works with images: the training-only inputs (``labels``,
  ``attribute_labels``, the detector class targets) are kept out of ``generate``, which would otherwise
  feed ``labels`` back into the decoder;
* when no ``compute_metrics`` is given, evaluation scores generations with the CEPSUM protocol against
  **every** reference of each product (the evaluation set's ``tgt`` column), plus BLEU and attribute
  P/R/F1 over the processor's attribute vocabulary;
* under several processes, evaluation returns exactly one prediction per product, in dataset order (see
  :meth:`MMAPSTrainer.evaluation_loop`), so the metrics equal a one-process evaluation's;
* :class:`MMAPSTrainingArguments` selects checkpoints on dev ROUGE-2 (the paper's choice) and decodes
  with beam 3, at most 90 tokens, by default.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import Seq2SeqTrainer
from transformers.utils import logging

from hub_cards.trainer_cards import HubCardTrainerMixin

from .evaluation.summarization_metrics import PROTOCOLS, build_compute_metrics
from .training_args import MMAPSTrainingArguments

logger = logging.get_logger(__name__)

TASK_LOSS_NAMES = ("summary_loss", "attribute_loss", "alignment_loss", "contrastive_loss", "region_loss")
# Inputs the model uses for its losses only; `generate` must not see them.
TRAINING_ONLY_INPUTS = ("labels", "attribute_labels", "visual_class_probs", "decoder_input_ids", "decoder_attention_mask")


# HubCardTrainerMixin (hub_cards): every saved output and push_to_hub get this package's model card.
class MMAPSTrainer(HubCardTrainerMixin, Seq2SeqTrainer):
    """Trainer for :class:`MMAPSForConditionalGeneration` (see the module docstring for what it adds).

    Args beyond ``Seq2SeqTrainer``'s:
        attribute_vocabulary: words scored by the attribute P/R/F1 metric; defaults to the processor's
            ``attribute_vocabulary``.

    Attributes:
        evaluation_protocol: how the eval metrics are computed, in words (``PROTOCOLS[summary_language]`` with the
            built-in metrics, ``None`` with a user ``compute_metrics``); the model card reports it.
    """

    def __init__(self, *args: Any, attribute_vocabulary: Sequence[str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if attribute_vocabulary is None:
            attribute_vocabulary = getattr(self.processing_class, "attribute_vocabulary", None)
        self.attribute_vocabulary = list(attribute_vocabulary) if attribute_vocabulary else None
        # Built per evaluated dataset (the references must follow its order), unless the user gave one.
        self._default_metrics = self.compute_metrics is None
        language = getattr(self.args, "summary_language", "zh")
        self.evaluation_protocol: str | None = PROTOCOLS[language] if self._default_metrics else None
        self._task_loss_sums: dict[str, float] = {}
        self._task_loss_counts: dict[str, int] = {}

    # -- losses ----------------------------------------------------------------------------------------------------
    def compute_loss(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ):
        # Overridden to keep each task's loss for logging; the total is the model's weighted sum, unchanged.
        outputs = model(**inputs)
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs[0]
        if loss is None:
            raise ValueError("the model returned no loss: the batch needs `labels` (and an image for visual tasks)")
        if model.training:
            for name in TASK_LOSS_NAMES:
                value = outputs.get(name) if isinstance(outputs, dict) else getattr(outputs, name, None)
                # A task that had no pairs in this batch comes back as a constant 0 without gradient: it did not
                # run, so it is left out of that task's average rather than pulling it towards 0.
                if value is not None and (value.requires_grad or not loss.requires_grad):
                    self._task_loss_sums[name] = self._task_loss_sums.get(name, 0.0) + float(value.detach())
                    self._task_loss_counts[name] = self._task_loss_counts.get(name, 0) + 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Overridden to add the per-task averages since the last training log to the training log line.
        if "loss" in logs and self._task_loss_counts:
            for name, total in self._task_loss_sums.items():
                logs[name] = round(total / self._task_loss_counts[name], 4)
            self._task_loss_sums, self._task_loss_counts = {}, {}
        super().log(logs, start_time)

    # -- generation ------------------------------------------------------------------------------------------------
    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
        **gen_kwargs: Any,
    ):
        # Overridden because Seq2SeqTrainer hands every input, labels included, to `generate`: MMAPS's forward
        # would turn `labels` into decoder inputs. Generation gets the text and visual inputs only; the loss is
        # computed on the full batch.
        if not self.args.predict_with_generate or prediction_loss_only:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        generation_inputs = {k: v for k, v in inputs.items() if k not in TRAINING_ONLY_INPUTS}
        _, generated, _ = super().prediction_step(model, generation_inputs, False, ignore_keys=ignore_keys, **gen_kwargs)
        loss, labels = None, None
        if "labels" in inputs:
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad(), self.compute_loss_context_manager():
                loss = self.compute_loss(model, inputs).detach().mean()
            labels = inputs["labels"]
            if generated is not None and labels.shape[-1] < generated.shape[-1]:
                labels = self._pad_tensors_to_max_len(labels, generated.shape[-1])
        if self.args.prediction_loss_only:
            return loss, None, None
        return loss, generated, labels

    def _pad_tensors_to_max_len(self, tensor: torch.Tensor, max_length: int) -> torch.Tensor:
        # Overridden because the parent looks for `pad_token_id` on the processor or the top-level config; MMAPS
        # keeps it in the tokenizer and in `config.text_config`.
        pad_id = getattr(getattr(self.processing_class, "tokenizer", self.processing_class), "pad_token_id", None)
        if pad_id is None:
            pad_id = self.model.config.text_config.pad_token_id
        padded = tensor.new_full((tensor.shape[0], max_length), pad_id)
        padded[:, : tensor.shape[-1]] = tensor
        return padded

    # -- metrics ---------------------------------------------------------------------------------------------------
    def _metrics_for(self, dataset: Any) -> None:
        if not self._default_metrics or not self.args.predict_with_generate:
            return
        # The processor's batch_decode also removes the spaces a character tokenizer puts between CJK characters.
        tokenizer = self.processing_class
        if tokenizer is None:
            raise ValueError("processing_class: MMAPSTrainer needs the processor (or tokenizer) to decode generations")
        references = None
        if dataset is not None and hasattr(dataset, "column_names") and "tgt" in dataset.column_names:
            references = [list(r) for r in dataset["tgt"]]
        self.compute_metrics = build_compute_metrics(
            tokenizer, references, language=self.args.summary_language, attribute_vocabulary=self.attribute_vocabulary
        )

    def _sequences_per_input(self) -> int:
        """How many generated sequences each evaluated row yields (``num_return_sequences``; 1 unless asked)."""
        gen_kwargs = getattr(self, "_gen_kwargs", None) or {}
        if gen_kwargs.get("num_return_sequences") is not None:
            return int(gen_kwargs["num_return_sequences"])
        config = gen_kwargs.get("generation_config") or getattr(self.model, "generation_config", None)
        return int(getattr(config, "num_return_sequences", None) or 1)

    def evaluation_loop(self, dataloader: Any, description: str, prediction_loss_only: bool | None = None,
                        ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval"):
        # Overridden because Seq2SeqTrainer.evaluate/predict switch the gather to `accelerator.gather` (so that
        # `num_return_sequences > 1` rows are not cut; transformers PR #27025), which also keeps the rows accelerate's
        # `even_batches` repeats to give every process a full last batch: 2 processes x 8 returned 16 predictions for
        # a 12-product dev set. With one sequence per row, `gather_for_metrics` drops exactly those repeats (the last
        # gathered batch is cut to len(dataset) % (processes x batch)), leaving the dataset's rows in order, as one
        # process sees them. The parent restores `gather_for_metrics` itself when the loop ends.
        if self._sequences_per_input() == 1:
            self.gather_function = functools.partial(
                self.accelerator.gather_for_metrics, use_gather_object=self.args.eval_use_gather_object
            )
        return super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)

    def evaluate(self, eval_dataset: Any = None, ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval", **gen_kwargs: Any):
        # Overridden so the default metrics score against all references of the dataset being evaluated.
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if not isinstance(dataset, dict):
            self._metrics_for(dataset)
        return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix, **gen_kwargs)

    def predict(self, test_dataset: Any, ignore_keys: list[str] | None = None, metric_key_prefix: str = "test", **gen_kwargs: Any):
        # Overridden for the same reason as `evaluate`.
        self._metrics_for(test_dataset)
        return super().predict(test_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix, **gen_kwargs)


__all__ = ["MMAPSTrainer", "MMAPSTrainingArguments", "TASK_LOSS_NAMES", "TRAINING_ONLY_INPUTS"]
