"""Fast, small CSMCIR experiments on a pre-processed CIRR-layout split: the machinery behind the ablations and t-SNE.

Every image of a split is decoded and pre-processed once (``pixel_values``), every caption and modification
text tokenised once, so a run costs only the model's own compute. Training goes through the real
``CSMCIRTrainer`` (memory bank included): :class:`CachedCIRDataset` yields row indices and
:class:`CachedCIRCollator` turns them into ``forward`` inputs (``pixel_values``, ``target_pixel_values``, ...).
From a pretrained start, ``CachedRunSettings.freeze_vision`` fine-tunes as BLIP-2 / SPRC do: the vision tower fixed
and its features cached by the trainer (``vision_feature_cache``), so a step costs only Q-Former passes. (A frozen
*random* ViT gives a from-scratch Q-Former nothing to learn from: from scratch, the tiny ViT trains too, as in
``benchmarks/synthetic_cir_difficulty.py``.)
Evaluation applies the CIRR rc2 protocol (:func:`cir_metrics.cirr_metrics`) to ``model.score(q, g)``.

Used by ``benchmarks/ablation_csmcir.py`` and ``csmcir-visualize``.
"""

from __future__ import annotations

import copy
import logging as std_logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Image as ImageFeature
from PIL import Image
from torch.utils.data import Dataset
from transformers import TrainerCallback
from transformers.utils import logging

from pipelines.gallery_index import encode_targets

from .configuration_csmcir import CSMCIRConfig
from .data.cirr import load_cirr
from .evaluation.cir_metrics import cirr_metrics
from .modeling_csmcir import CSMCIRModel
from .processing_csmcir import CSMCIRProcessor
from .trainer_csmcir import CSMCIRTrainer, CSMCIRTrainingArguments


logger = logging.get_logger(__name__)


class CachedCIRSplit:
    """One CIRR-layout split as tensors: cached vision features of every gallery image, tokenised captions and
    modification texts, and the reference/target gallery rows of every query."""

    def __init__(self, data_dir: str | Path, split: str, processor: CSMCIRProcessor, batch_size: int = 128) -> None:
        data_dir = Path(data_dir)
        captions = data_dir / "target_captions" / f"captions.rc2.{split}.json"
        data = load_cirr(data_dir, split, target_captions=captions if captions.is_file() else None)
        gallery, queries = data["gallery"], data["queries"]
        self.gallery_ids: list[str] = list(gallery["image_id"])
        row = {g: i for i, g in enumerate(self.gallery_ids)}
        paths = [x["path"] for x in gallery.cast_column("image", ImageFeature(decode=False))["image"]]
        chunks = []
        for i in range(0, len(paths), batch_size):
            images = [Image.open(p).convert("RGB") for p in paths[i : i + batch_size]]
            chunks.append(processor(images=images, return_tensors="pt")["pixel_values"])
        self.pixel_values = torch.cat(chunks)
        if "caption" not in gallery.column_names:
            raise ValueError(f"{data_dir}: split {split!r} has no target captions ({captions} missing)")
        enc = processor(text=list(gallery["caption"]), return_tensors="pt", padding="max_length", max_length=32)
        self.caption_ids, self.caption_mask = enc["input_ids"], enc["attention_mask"]
        self.ref = torch.tensor([row[r] for r in queries["reference_id"]])
        self.tgt = torch.tensor([row[t] for t in queries["target_id"]])
        enc = processor(text=list(queries["modification_text"]), return_tensors="pt", padding="max_length", max_length=32)
        self.text_ids, self.text_mask = enc["input_ids"], enc["attention_mask"]
        self.reference_ids: list[str] = list(queries["reference_id"])
        self.target_ids: list[str] = list(queries["target_id"])
        self.img_sets: list[list[str]] = [list(s) for s in queries["img_set"]]

    def __len__(self) -> int:
        return len(self.ref)


class CachedCIRDataset(Dataset):
    """Row indices of a :class:`CachedCIRSplit`'s queries (the collator does the lookup)."""

    def __init__(self, split: CachedCIRSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict[str, int]:
        return {"row": index}


class CachedCIRCollator:
    """Turns ``[{"row": i}, ...]`` into ``CSMCIRModel.forward`` inputs (pre-processed pixels and tokens);
    ``use_target_captions=False`` gives image-only targets (the asymmetric ablation)."""

    def __init__(self, split: CachedCIRSplit, use_target_captions: bool = True) -> None:
        self.split = split
        self.use_target_captions = use_target_captions

    def __call__(self, rows: Sequence[dict[str, int]]) -> dict[str, torch.Tensor]:
        s = self.split
        idx = torch.tensor([r["row"] for r in rows])
        ref, tgt = s.ref[idx], s.tgt[idx]
        batch = {
            "pixel_values": s.pixel_values[ref], "input_ids": s.text_ids[idx], "attention_mask": s.text_mask[idx],
            "target_pixel_values": s.pixel_values[tgt], "target_ids": tgt,
            # The reference's gallery row: the bank must not serve a query its own reference image (it is removed
            # from the CIRR ranking, and every reference here is also some other query's target, so it is in the bank).
            "reference_ids": ref,
        }
        if self.use_target_captions:
            batch["target_input_ids"] = s.caption_ids[tgt]
            batch["target_attention_mask"] = s.caption_mask[tgt]
        return batch

    def target_inputs(self, ids: Sequence[int]) -> dict[str, torch.Tensor]:
        """Inputs of ``get_target_features`` for gallery rows `ids` (the bank's refresh lookup)."""
        ids = torch.as_tensor(list(ids))
        out = {"pixel_values": self.split.pixel_values[ids]}
        if self.use_target_captions:
            out["input_ids"], out["attention_mask"] = self.split.caption_ids[ids], self.split.caption_mask[ids]
        return out


@torch.no_grad()
def encode_cached(model: CSMCIRModel, split: CachedCIRSplit, use_target_captions: bool,
                  batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Gallery (target-side) features, query features, and reference-image features of a split.

    ``reference`` is the reference image's own target-side, image-only feature (the image without any text):
    what the t-SNE shows next to queries and targets.
    """
    was_training = model.training
    model.eval()
    n, m = len(split.gallery_ids), len(split)

    def target_batches(with_captions: bool):
        for i in range(0, n, batch_size):
            rows = slice(i, i + batch_size)
            batch = {"pixel_values": split.pixel_values[rows]}
            if with_captions:
                batch.update(input_ids=split.caption_ids[rows], attention_mask=split.caption_mask[rows])
            yield batch

    gallery = encode_targets(model, target_batches(use_target_captions), total=n, show_progress=False)
    images = encode_targets(model, target_batches(False), total=n, show_progress=False)
    queries = torch.cat([
        model.get_query_features(pixel_values=split.pixel_values[split.ref[i : i + batch_size]],
                                 input_ids=split.text_ids[i : i + batch_size],
                                 attention_mask=split.text_mask[i : i + batch_size])
        for i in range(0, m, batch_size)
    ])
    model.train(was_training)
    return {"gallery": gallery, "queries": queries, "images": images}


def evaluate_cached(model: CSMCIRModel, split: CachedCIRSplit, use_target_captions: bool) -> dict[str, float]:
    """CIRR rc2 metrics (R@K with the reference removed, Rs@K within the img_set) of `model` on `split`, in %."""
    feats = encode_cached(model, split, use_target_captions)
    # model.score: q·g for one-vector galleries, the maximum over tokens for token-level ones.
    metrics = cirr_metrics(model.score(feats["queries"], feats["gallery"]), split.gallery_ids, split.reference_ids,
                           split.target_ids, split.img_sets)
    return {k: float(v) for k, v in metrics.items() if not isinstance(v, str)}


class _RecallCurveCallback(TrainerCallback):
    """Evaluates on the cached val split every `every` optimiser steps (and at step 0 and the end)."""

    def __init__(self, split: CachedCIRSplit, use_target_captions: bool, every: int) -> None:
        self.split, self.use_target_captions, self.every = split, use_target_captions, every
        self.curve: list[dict[str, float]] = []
        self.model: CSMCIRModel | None = None

    def _record(self, step: int) -> None:
        metrics = evaluate_cached(self.model, self.split, self.use_target_captions)
        self.curve.append({"step": step, **metrics})

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.model = model
        if self.every > 0:
            self._record(0)

    def on_step_end(self, args, state, control, **kwargs):
        if self.every > 0 and state.global_step % self.every == 0:
            self._record(state.global_step)


@dataclass
class CachedRunSettings:
    """Settings of one cached-feature training run (see `train_cached`)."""

    use_target_captions: bool = True
    share_qformer: bool = True
    bank_strategy: str = "entropy"
    seed: int = 0
    max_steps: int = 600
    batch_size: int = 32
    learning_rate: float = 5e-4
    weight_decay: float = 0.05
    warmup_steps: int = 30
    bank_size: int = 1024
    bank_k_min: int = 8
    bank_k_max: int = 128
    bank_age_decay: float = 200.0
    bank_max_age: int = 400
    bank_start_step: int = 30
    bank_weight: float = 1.0
    bank_refresh_every: int = 0
    bank_refresh_size: int = 256
    freeze_temperature: bool = False
    #: BLIP-2 / SPRC fine-tuning: keep the (pretrained) vision tower fixed, so a step costs only Q-Former passes
    freeze_vision: bool = False
    #: ``CSMCIRTrainingArguments.vision_feature_cache`` ("none", "memory", ...); needs ``freeze_vision``
    vision_feature_cache: str = "none"
    eval_every: int = 0
    output_dir: str = "outputs/cached_run"


def train_cached(
    config: CSMCIRConfig,
    train: CachedCIRSplit,
    val: CachedCIRSplit | None,
    settings: CachedRunSettings,
    initial_model: CSMCIRModel | None = None,
) -> tuple[CSMCIRModel, dict[str, Any]]:
    """Train a fresh `CSMCIRModel` (weights drawn with `settings.seed`), or a copy of `initial_model` (a pretrained
    start: ``pretraining.pretrain``; `config` is then ignored), with `CSMCIRTrainer` on cached features. Returns the model and ``{"train_seconds", "final_loss", "curve",
    "log_history"}`` (the trainer's training-loss log lines, with the bank's numbers);
    the curve holds val metrics every `settings.eval_every` steps (empty when 0 or without `val`).
    The learning rate follows linear warm-up then cosine decay to 0 over `max_steps`."""
    torch.manual_seed(settings.seed)
    if initial_model is None:
        model = CSMCIRModel(config)
    else:  # a copy, so one pretrained start serves every run of a benchmark
        model = copy.deepcopy(initial_model)
        model.temperature.requires_grad_(True)
    if settings.freeze_vision:
        model.set_vision_frozen(True)
    collator = CachedCIRCollator(train, settings.use_target_captions)
    args = CSMCIRTrainingArguments(
        output_dir=settings.output_dir, max_steps=settings.max_steps, per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate, weight_decay=settings.weight_decay, warmup_steps=settings.warmup_steps,
        lr_scheduler_type="cosine", seed=settings.seed, data_seed=settings.seed, report_to="none",
        save_strategy="no", logging_steps=max(1, settings.max_steps // 10), disable_tqdm=True, use_cpu=True,
        dataloader_num_workers=0, dataloader_drop_last=True,
        bank_strategy=settings.bank_strategy, bank_size=settings.bank_size, bank_k_min=settings.bank_k_min,
        bank_k_max=settings.bank_k_max, bank_age_decay=settings.bank_age_decay, bank_max_age=settings.bank_max_age,
        bank_start_step=settings.bank_start_step, bank_refresh_every=settings.bank_refresh_every,
        bank_refresh_size=settings.bank_refresh_size, freeze_temperature=settings.freeze_temperature, bank_weight=settings.bank_weight,
        vision_feature_cache=settings.vision_feature_cache,
    )
    callback = _RecallCurveCallback(val, settings.use_target_captions, settings.eval_every if val is not None else 0)
    trainer = CSMCIRTrainer(model=model, args=args, train_dataset=CachedCIRDataset(train), data_collator=collator,
                            target_lookup=collator.target_inputs, callbacks=[callback])
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    if callback.every > 0 and (not callback.curve or callback.curve[-1]["step"] != settings.max_steps):
        callback._record(settings.max_steps)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    model.eval()
    return model, {
        "train_seconds": seconds,
        "final_loss": losses[-1] if losses else float(result.training_loss),
        "curve": callback.curve,
        "log_history": [h for h in trainer.state.log_history if "loss" in h],
    }


def steps_to_reach(curve: Sequence[dict[str, float]], metric: str, threshold: float) -> int | None:
    """First evaluated step whose `metric` is ≥ `threshold` (None if never reached)."""
    for point in curve:
        if point[metric] >= threshold:
            return int(point["step"])
    return None


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n-1; 0 for a single value)."""
    values = list(values)
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def quiet_transformers() -> None:
    """Silence the Trainer's per-run info logs (many runs in one process)."""
    logging.set_verbosity_error()
    std_logging.getLogger("transformers").setLevel(std_logging.ERROR)


__all__ = [
    "CachedCIRCollator", "CachedCIRDataset", "CachedCIRSplit", "CachedRunSettings", "encode_cached",
    "evaluate_cached", "mean_std", "quiet_transformers", "steps_to_reach",
    "train_cached",
]
