"""`CSMCIRTrainer`: the transformers `Trainer` that trains a `CSMCIRModel` with the memory bank.

The bank and its loss live in ``memory_bank.py`` (``MemoryBank``, ``memory_bank_loss``); this trainer only calls
them: one forward pass without the model's own loss, then ``memory_bank_loss`` — the loss of a step is computed
once. After each backward it feeds the bank the batch's detached target embeddings, gathered across
data-parallel processes so every rank holds the same bank; saves the bank's ``state_dict`` in every checkpoint as
``memory_bank.safetensors`` and restores it on ``resume_from_checkpoint``; optionally re-encodes the oldest
entries with the current model (``bank_refresh_every``), which the shared towers make meaningful; and logs the
bank's size, mean entry age, mean selected k, loss share and mean normalised entropy (``bank_size``,
``bank_mean_age``, ``bank_mean_k``, ``bank_loss_share``, ``bank_entropy``). Its settings are the ``bank_*``
fields of ``CSMCIRTrainingArguments``. With a frozen vision tower, ``vision_feature_cache`` reuses each training
image's vision features after the first epoch (``vision_feature_cache.py``).

Retrieval metrics come from an evaluator passed in (``evaluator=CIRRetrievalEvaluator(...)``, the way
sentence-transformers passes one): each evaluation adds its numbers to the eval metrics, and its protocol
becomes ``evaluation_protocol``, which the model card reports.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from hub_cards.atomic_files import atomic_path
from hub_cards.trainer_cards import HubCardTrainerMixin

from .memory_bank import MemoryBank, memory_bank_loss
from .training_args import CSMCIRTrainingArguments
from .vision_feature_cache import VisionFeatureCache

logger = logging.get_logger(__name__)

MEMORY_BANK_NAME = "memory_bank.safetensors"

TargetLookup = Callable[[Sequence[int]], Mapping[str, torch.Tensor]]
"""Maps target ids to the inputs of ``CSMCIRModel.get_target_features`` (``pixel_values`` or ``image_embeds``,
and ``input_ids`` / ``attention_mask`` for captions), one row per id in the given order."""


# HubCardTrainerMixin (hub_cards): every saved output and push_to_hub get this package's model card.
class CSMCIRTrainer(HubCardTrainerMixin, Trainer):
    """`Trainer` for `CSMCIRModel` with the entropy-based, temporally dynamic memory bank.

    Batches must carry `target_ids` (non-negative integer target identities) unless `bank_strategy="none"`, and
    may carry `reference_ids` (the reference image's id in the same id space, `-1` if unknown): the bank never
    serves a query its own reference image, which CIR protocols remove from the ranking anyway.
    The training loss is ``csmcir_contrastive_loss(logits_per_query, bank.negative_logits(...), target_ids)``:

        L = -1/B Σ_i log( exp(s_ii) / (Σ_j m_ij exp(s_ij) + Σ_{m ∈ K_i} w_m exp(logit_scale · q_i·e_m)) )

    with K_i the bank entries the strategy selects for query i and w_m = bank_weight · exp(-age_m / bank_age_decay)
    (``memory_bank.memory_bank_loss``). Evaluation uses the plain in-batch loss, so eval losses compare across
    strategies and do not depend on the bank's state.

    Args:
        evaluator: called as ``evaluator(model) -> {metric: value}`` at every evaluation (e.g.
            ``CIRRetrievalEvaluator``); its numeric metrics join the eval metrics with the ``eval_`` prefix, and its
            ``protocol`` attribute (when present) becomes :attr:`evaluation_protocol`. With an evaluator,
            ``evaluate()`` needs no ``eval_dataset``.
        target_lookup: ``ids -> inputs of get_target_features``; required when ``bank_refresh_every > 0`` (the
            refresh re-encodes stored targets by id). If omitted, ``train_dataset.target_inputs`` is used when the
            dataset has such a method.
        memory_bank: a ready bank (e.g. in tests); by default one is built from the arguments and the model's
            ``config.embed_dim``.
        Other arguments are `Trainer`'s.
    """

    def __init__(
        self,
        *args: Any,
        target_lookup: TargetLookup | None = None,
        memory_bank: MemoryBank | None = None,
        evaluator: Callable[[nn.Module], Mapping[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.evaluator = evaluator
        #: The protocol behind the eval metrics, read by the model card (``HubCardTrainerMixin``).
        self.evaluation_protocol: str | None = getattr(evaluator, "protocol", None)
        if not isinstance(self.args, CSMCIRTrainingArguments):
            raise ValueError(
                f"CSMCIRTrainer needs CSMCIRTrainingArguments (for the bank_* settings), got {type(self.args).__name__}"
            )
        if self.args.freeze_temperature and isinstance(getattr(self.model, "temperature", None), nn.Parameter):
            self.model.temperature.requires_grad_(False)
        embed_dim = int(self.model.config.embed_dim)
        # Token-level targets (config.target_representation="tokens") are stored as (K, D) entries scored by the
        # maximum over their tokens, as CSMCIRModel.score scores them.
        tokens = getattr(self.model.config, "target_representation", "vector") == "tokens"
        tokens_per_entry = int(self.model.config.num_query_tokens) if tokens else None
        if memory_bank is None:
            memory_bank = self.args.build_memory_bank(embed_dim, tokens_per_entry=tokens_per_entry)
        self.memory_bank = memory_bank
        if self.memory_bank.dim != embed_dim:
            raise ValueError(f"memory_bank.dim is {self.memory_bank.dim} but the model's embed_dim is {embed_dim}")
        if self.memory_bank.tokens_per_entry != tokens_per_entry:
            raise ValueError(
                f"memory_bank.tokens_per_entry is {self.memory_bank.tokens_per_entry} but the model's targets are "
                f"{'token-level with ' + str(tokens_per_entry) + ' tokens' if tokens else 'single vectors'} "
                f"(config.target_representation={self.model.config.target_representation!r})"
            )
        if target_lookup is None and self.train_dataset is not None:
            target_lookup = getattr(self.train_dataset, "target_inputs", None)
        if self.args.bank_refresh_every > 0 and target_lookup is None:
            raise ValueError(
                "bank_refresh_every > 0 re-encodes bank entries by target id: pass target_lookup=(ids -> inputs of "
                "get_target_features) or use a train_dataset with a target_inputs(ids) method"
            )
        self.target_lookup = target_lookup
        #: Frozen-vision feature cache (``vision_feature_cache``), or None.
        self.vision_feature_cache: VisionFeatureCache | None = None
        cache_mode = getattr(self.args, "vision_feature_cache", "none") or "none"
        if cache_mode != "none":
            if not getattr(self.model.config, "freeze_vision", False):
                raise ValueError(
                    f"vision_feature_cache={cache_mode!r} needs a frozen vision tower (config.freeze_vision=True): the "
                    "features of a trained tower change every step"
                )
            self.vision_feature_cache = VisionFeatureCache(cache_mode)
        self._last_refresh_step = -1
        self._pending_enqueue: tuple[torch.Tensor, torch.Tensor, int] | None = None
        self._bank_log_sums = {"bank_mean_k": 0.0, "bank_loss_share": 0.0, "bank_entropy": 0.0}
        self._bank_log_count = 0

    # ------------------------------------------------------------------------------------------------- loss

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        # Overridden because the loss needs the bank's negatives, and the batch's target embeddings must be
        # enqueued after the step; the model's own loss sees neither. Only training steps touch the bank.
        # `reference_ids` (optional, the reference image's target id) is for the bank's masking, not the model.
        reference_ids = inputs.pop("reference_ids", None) if "reference_ids" in inputs else None
        if self.vision_feature_cache is not None and model.training:
            # Training batches only: an eval split numbers its images in its own id space.
            inputs = self._cached_vision_inputs(model, inputs, reference_ids)
        step = self.state.global_step
        bank = self.memory_bank
        if not model.training or bank.strategy == "none":
            outputs = model(**inputs, return_dict=True)
            return (outputs.loss, outputs) if return_outputs else outputs.loss

        target_ids = inputs.get("target_ids")
        if target_ids is None:
            raise ValueError(
                "CSMCIRTrainer: batches need `target_ids` (LongTensor (B,)) to mask false negatives in the memory "
                "bank and to replace stale entries; the CIR collators add them. Use bank_strategy='none' without."
            )
        # The model's own loss is skipped: memory_bank_loss computes the step's loss once, bank negatives included.
        outputs = model(**inputs, return_loss=False, return_dict=True)
        target_ids = target_ids.reshape(-1).to(outputs.query_embeds.device)
        if bank.device != outputs.query_embeds.device:
            bank.to(outputs.query_embeds.device)
        unwrapped = self.accelerator.unwrap_model(model)
        self._maybe_refresh_bank(unwrapped, step)

        result = memory_bank_loss(bank, outputs.logits_per_query, outputs.query_embeds, unwrapped.logit_scale,
                                  target_ids, step, reference_ids)
        outputs.loss = result.loss
        if result.served:
            self._record_bank_step(bank.last_selection.mean_k, result.bank_share, bank.last_selection.mean_entropy)
        else:
            self._record_bank_step(0.0, 0.0, float("nan"))

        # Enqueued by training_step after backward (see there); gathered now so every rank stores the same rows.
        embeds, ids = self._gather_rows(outputs.target_embeds.detach(), target_ids)
        self._pending_enqueue = (embeds, ids, step)
        return (result.loss, outputs) if return_outputs else result.loss

    def _cached_vision_inputs(
        self, model: nn.Module, inputs: dict[str, Any], reference_ids: torch.Tensor | None
    ) -> dict[str, Any]:
        """Replace `pixel_values` / `target_pixel_values` by cached vision features (`image_embeds` /
        `target_image_embeds`), keyed by `reference_ids` / `target_ids` (unknown ids: computed, not stored)."""
        cache, unwrapped = self.vision_feature_cache, self.accelerator.unwrap_model(model)
        inputs = dict(inputs)
        for pixels_key, embeds_key, ids in (
            ("pixel_values", "image_embeds", reference_ids),
            ("target_pixel_values", "target_image_embeds", inputs.get("target_ids")),
        ):
            pixels = inputs.get(pixels_key)
            if pixels is None or inputs.get(embeds_key) is not None:
                continue
            if ids is None:
                ids = torch.full((pixels.shape[0],), -1, dtype=torch.long)
            inputs[embeds_key] = cache.image_embeds(unwrapped, inputs.pop(pixels_key), ids)
        return inputs

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        # Overridden to enqueue the batch's targets only after backward: autograd saved the bank's tensor for the
        # gradient of the query-bank product, so writing into it in place before backward would invalidate the
        # graph (and cloning a 16k-entry bank every step would cost more than the bank itself).
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.flush_pending_enqueue()
        return loss

    def flush_pending_enqueue(self) -> int:
        """Write the last training batch's (gathered) target embeddings into the bank; return how many."""
        if self._pending_enqueue is None:
            return 0
        embeds, ids, step = self._pending_enqueue
        self._pending_enqueue = None
        known = ids >= 0  # loaders mark a target missing from the gallery with -1: it has no identity to store
        return self.memory_bank.enqueue(embeds[known], ids[known], step)

    def _record_bank_step(self, mean_k: float, share: float, entropy: float) -> None:
        self._bank_log_sums["bank_mean_k"] += mean_k
        self._bank_log_sums["bank_loss_share"] += share
        self._bank_log_sums["bank_entropy"] += 0.0 if entropy != entropy else entropy
        self._bank_log_count += 1

    def _gather_rows(self, rows: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All processes' `(rows, ids)` concatenated in rank order (identity on one process).

        Batches may differ in size across ranks (the last batch), so each rank pads to the largest with id -1
        before the all-gather and the padding is dropped afterwards.
        """
        if self.accelerator.num_processes == 1:
            return rows, ids
        from accelerate.utils import pad_across_processes

        rows = pad_across_processes(rows.contiguous(), dim=0, pad_index=0)
        ids = pad_across_processes(ids.contiguous(), dim=0, pad_index=-1)
        rows, ids = self.accelerator.gather(rows), self.accelerator.gather(ids)
        keep = ids >= 0
        return rows[keep], ids[keep]

    # ---------------------------------------------------------------------------------------------- refresh

    @torch.no_grad()
    def _maybe_refresh_bank(self, model: nn.Module, step: int) -> None:
        """Every `bank_refresh_every` steps, re-encode the `bank_refresh_size` oldest entries with the current model.

        Runs once per optimiser step (not per micro-batch), in eval mode so it is deterministic and draws no
        random numbers (resumed runs stay bit-identical). Each rank encodes a slice of the slots and the slices
        are all-gathered, so every rank writes the same values.
        """
        every = self.args.bank_refresh_every
        if every <= 0 or step <= 0 or step % every != 0 or step == self._last_refresh_step:
            return
        self._last_refresh_step = step
        bank = self.memory_bank
        slots = bank.oldest_slots(self.args.bank_refresh_size)
        if slots.numel() == 0:
            return
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        my_slots = torch.tensor_split(slots, world)[rank] if world > 1 else slots
        chunk = max(1, self.args.per_device_eval_batch_size)
        was_training = model.training
        model.eval()
        try:
            pieces = []
            for start in range(0, my_slots.numel(), chunk):
                part = my_slots[start : start + chunk]
                ids = bank.target_ids[part].tolist()
                target_inputs = self._prepare_inputs(dict(self.target_lookup(ids)))
                pieces.append(model.get_target_features(**target_inputs).float())
            embeds = torch.cat(pieces) if pieces else torch.empty(0, bank.dim, device=bank.device)
        finally:
            model.train(was_training)
        embeds, refreshed_slots = self._gather_rows(embeds.to(bank.device), my_slots.to(bank.device))
        bank.refresh(refreshed_slots, embeds, step)

    # ----------------------------------------------------------------------------------------- evaluation

    def evaluation_loop(self, dataloader: Any, description: str, prediction_loss_only: bool | None = None,
                        ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval") -> Any:
        # Overridden (as sentence-transformers does) so the evaluator's retrieval metrics join the loop's metrics
        # before the Trainer logs them and calls the callbacks (the model card reads that log).
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        output.metrics.update(self._evaluator_metrics(metric_key_prefix))
        return output

    def evaluate(self, eval_dataset: Any = None, ignore_keys: list[str] | None = None,
                 metric_key_prefix: str = "eval") -> dict[str, float]:
        # Overridden so an evaluator alone is enough: retrieval is measured on the evaluator's own gallery and
        # queries, and the Trainer's loop (which needs an eval_dataset) is skipped when there is none.
        if eval_dataset is not None or self.eval_dataset is not None or self.evaluator is None:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        metrics = {**self._evaluator_metrics(metric_key_prefix), "epoch": self.state.epoch}
        metrics = {key: value for key, value in metrics.items() if value is not None}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _evaluator_metrics(self, prefix: str) -> dict[str, float]:
        if self.evaluator is None:
            return {}
        # Retrieval over the evaluator's gallery is one job, not a data-parallel one: the main process runs it and
        # the others wait for its numbers (every rank logs and compares the same metrics, e.g. for
        # load_best_model_at_end), instead of each rank encoding the whole gallery again.
        metrics: Mapping[str, Any] | None = None
        if self.accelerator.is_main_process:
            model = self.accelerator.unwrap_model(self.model)
            was_training = model.training
            try:
                metrics = self.evaluator(model)
            finally:
                model.train(was_training)
        if self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            metrics = broadcast_object_list([metrics], from_process=0)[0]
        # Loggers and model cards want numbers; the protocol string is kept as evaluation_protocol instead.
        return {f"{prefix}_{key}": float(value) for key, value in metrics.items()
                if isinstance(value, (int, float)) and not isinstance(value, bool)}

    # -------------------------------------------------------------------------------------------- logging

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Overridden to add the bank's numbers to each training log line (the Trainer only knows the loss).
        if "loss" in logs and self.memory_bank.strategy != "none":
            logs.update(
                {k: v for k, v in self.memory_bank.stats(self.state.global_step).items()
                 if k in ("bank_size", "bank_mean_age")}
            )
            count = max(self._bank_log_count, 1)
            for key, total in self._bank_log_sums.items():
                logs[key] = total / count
                self._bank_log_sums[key] = 0.0
            self._bank_log_count = 0
        super().log(logs, start_time)

    # ----------------------------------------------------------------------------------------- checkpoints

    def train(self, *args: Any, **kwargs: Any) -> Any:
        # Overridden only to write the feature cache's last shard when training ends (disk modes).
        try:
            return super().train(*args, **kwargs)
        finally:
            if self.vision_feature_cache is not None:
                self.vision_feature_cache.flush()

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        # Overridden so the bank, part of the training state like the optimizer, is in every checkpoint. It is
        # written before the rest so a checkpoint that has a trainer_state.json always has its bank.
        if self.args.should_save:
            run_dir = self._get_output_dir(trial=trial)
            output_dir = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            self.save_memory_bank(output_dir)
        super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        # Overridden so resume_from_checkpoint also restores the bank (on every rank: each holds a full copy).
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        self.load_memory_bank(resume_from_checkpoint)

    def save_memory_bank(self, output_dir: str) -> str:
        """Write the bank to `output_dir/memory_bank.safetensors` atomically (temp file + os.replace)."""
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, MEMORY_BANK_NAME)
        metadata = {"strategy": self.memory_bank.strategy, "capacity": str(self.memory_bank.capacity),
                    "dim": str(self.memory_bank.dim)}
        state = {key: tensor.detach().cpu().contiguous() for key, tensor in self.memory_bank.state_dict().items()}
        with atomic_path(path) as tmp:
            save_file(state, str(tmp), metadata=metadata)
        return path

    def load_memory_bank(self, checkpoint_dir: str) -> bool:
        """Restore the bank from `checkpoint_dir/memory_bank.safetensors`; False (and a warning) if it is absent."""
        path = os.path.join(checkpoint_dir, MEMORY_BANK_NAME)
        if not os.path.isfile(path):
            logger.warning(f"{path} not found: resuming with an empty memory bank.")
            return False
        try:
            self.memory_bank.load_state_dict(load_file(path))
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err
        self.memory_bank.to(self.args.device)
        return True


__all__ = ["CSMCIRTrainer", "CSMCIRTrainingArguments", "MEMORY_BANK_NAME"]
