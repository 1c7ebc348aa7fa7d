"""Image–text contrastive pretraining of a CSMCIR model (BLIP-2 stage 1, ITC) on synthetic scene/caption pairs.

A CSMCIR fine-tune starts, in the paper, from a pretrained BLIP-2 whose image and text spaces are already aligned.
On CPU the stand-in is this stage: the vision tower and the Q-Former learn BLIP-2's image–text contrastive (ITC)
objective on rendered scenes and their captions (:func:`data.synthetic.scene_caption_pairs`), optionally with the
Q-Former's text side seeded from all-MiniLM-L6-v2 (the ``minilm*`` presets). The result is an ordinary CSMCIR
folder that ``csmcir-train --model_name_or_path`` fine-tunes.

ITC as in BLIP-2 (Li et al., 2023, §3.2): image side ``z_k = normalize(W_vision · QFormer(query_tokens, ViT(I))_k)``
for the K query tokens (``CSMCIRModel.get_image_token_features``), text side ``t = normalize(W_text ·
QFormer_text-only(T)[CLS])`` (a text-only Q-Former pass, no query tokens: :func:`text_features`), similarity
``s(I, T) = max_k z_k · t`` (``CSMCIRModel.score``), and the symmetric InfoNCE

    L = ½ [CE(s / τ, diag) over captions + CE(sᵀ / τ, diag) over images]

with the model's learnable temperature τ (``CSMCIRModel.temperature``, clamped at ``config.min_temperature``).
Captions that occur twice in a batch (two scenes can share a noisy caption) are not used as each other's negatives.

Optional, ours (``completion_weight`` > 0; not part of BLIP-2): the caption-completion term
``½ [CE(c tᵀ / τ) + CE(t cᵀ / τ)]`` with ``c = get_query_features(image, caption with words masked)`` — the joint
pass a CIR query takes — against the full captions' text features ``t``, so the query path learns to read the
image before fine-tuning (ITC alone never trains the joint pass's text [CLS]).

Training goes through ``transformers.Trainer`` (:class:`ITCPretrainer`): schedules, seeding, logging, checkpoints and
``resume_from_checkpoint`` are the Trainer's. CLI: ``csmcir-pretrain`` (``cli/pretrain.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from transformers import Trainer
from transformers.utils import logging

from hub_cards.trainer_cards import HubCardTrainerMixin

from .modeling_csmcir import CSMCIRModel, CSMCIRQFormerTower
from .training_args import CSMCIRPretrainingArguments


logger = logging.get_logger(__name__)


# ------------------------------------------------------------------------------------------------- data


class SceneCaptionTensors:
    """Pre-processed scene/caption pairs: ``pixel_values`` `(N, 3, H, W)`, tokenised captions `(N, L)`, and the
    caption strings (for duplicate detection)."""

    def __init__(self, pairs: Sequence[dict[str, Any]], processor: Any, max_length: int = 32, batch_size: int = 256) -> None:
        if not pairs:
            raise ValueError("SceneCaptionTensors: no pairs")
        chunks = []
        for i in range(0, len(pairs), batch_size):
            images = [p["image"].convert("RGB") for p in pairs[i : i + batch_size]]
            chunks.append(processor(images=images, return_tensors="pt")["pixel_values"])
        self.pixel_values = torch.cat(chunks)
        self.captions: list[str] = [p["caption"] for p in pairs]
        enc = processor(text=self.captions, return_tensors="pt", padding="max_length", max_length=max_length,
                        truncation=True)
        self.input_ids, self.attention_mask = enc["input_ids"], enc["attention_mask"]
        tokenizer = getattr(processor, "tokenizer", processor)
        self.mask_token_id: int | None = getattr(tokenizer, "mask_token_id", None)
        self.special_token_ids = sorted(set(getattr(tokenizer, "all_special_ids", [])))
        # Same caption string -> same id: duplicates must not be each other's negatives.
        ids: dict[str, int] = {}
        self.caption_ids = torch.tensor([ids.setdefault(c, len(ids)) for c in self.captions])

    def __len__(self) -> int:
        return len(self.captions)


class _RowDataset(Dataset):
    def __init__(self, data: SceneCaptionTensors) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, int]:
        return {"row": index}


class SceneCaptionCollator:
    """``[{"row": i}, ...]`` → ``pixel_values``, ``input_ids``, ``attention_mask``, ``caption_ids`` of those rows, and
    with ``mask_rate > 0`` also ``masked_input_ids``: each word token replaced by ``[MASK]`` with probability
    `mask_rate` (torch's global generator, which the Trainer seeds), for the caption-completion term."""

    def __init__(self, data: SceneCaptionTensors, mask_rate: float = 0.0) -> None:
        if mask_rate > 0 and data.mask_token_id is None:
            raise ValueError("SceneCaptionCollator: mask_rate > 0 needs a tokenizer with a mask token")
        self.data, self.mask_rate = data, mask_rate

    def __call__(self, rows: Sequence[dict[str, int]]) -> dict[str, torch.Tensor]:
        idx = torch.tensor([r["row"] for r in rows])
        d = self.data
        batch = {"pixel_values": d.pixel_values[idx], "input_ids": d.input_ids[idx],
                 "attention_mask": d.attention_mask[idx], "caption_ids": d.caption_ids[idx]}
        if self.mask_rate > 0:
            ids = batch["input_ids"]
            words = batch["attention_mask"].bool() & ~torch.isin(ids, torch.tensor(d.special_token_ids, dtype=ids.dtype))
            drop = words & (torch.rand(ids.shape) < self.mask_rate)
            batch["masked_input_ids"] = ids.masked_fill(drop, d.mask_token_id)
        return batch


# ------------------------------------------------------------------------------------------------- ITC


def text_features(model: CSMCIRModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """`(B, embed_dim)` unimodal text features: ``normalize(W_text · QFormer([embed(text)])[CLS])``, a text-only
    Q-Former pass (no query tokens, no image: every token takes self-attention and the text feed-forward branch),
    as BLIP-2's ITC text side. Uses the query tower (the shared one)."""
    embeddings = model.embeddings(input_ids=input_ids)
    outputs = model.qformer(query_embeds=embeddings, query_length=0, attention_mask=attention_mask, return_dict=True)
    cls = outputs.last_hidden_state[:, 0, :].to(model.text_projection.weight.dtype)
    return F.normalize(model.text_projection(cls), dim=-1)


def itc_loss(image_tokens: torch.Tensor, texts: torch.Tensor, logit_scale: torch.Tensor | float,
             caption_ids: torch.Tensor | None = None) -> torch.Tensor:
    r"""Symmetric InfoNCE of BLIP-2's ITC.

    With s_ij = max_k z_ik · t_j (image i's K token features `image_tokens` `(B, K, D)`, caption j's feature `texts`
    `(B, D)`) scaled by `logit_scale` = 1/τ:  L = ½ [CE_rows(s) + CE_rows(sᵀ)], positives on the diagonal;
    off-diagonal pairs with the same `caption_ids` are masked (they are not negatives).
    """
    sim_t2i = CSMCIRModel.score(texts, image_tokens, logit_scale)  # (B_text, B_image)
    if caption_ids is not None:
        same = caption_ids[:, None] == caption_ids[None, :]
        same.fill_diagonal_(False)
        sim_t2i = sim_t2i.masked_fill(same, float("-inf"))
    labels = torch.arange(sim_t2i.shape[0], device=sim_t2i.device)
    return 0.5 * (F.cross_entropy(sim_t2i, labels) + F.cross_entropy(sim_t2i.t(), labels))


def completion_loss(completed: torch.Tensor, texts: torch.Tensor, logit_scale: torch.Tensor | float,
                    caption_ids: torch.Tensor | None = None) -> torch.Tensor:
    r"""Symmetric InfoNCE between the joint-pass features of (image i, masked caption i) `completed` `(B, D)` and
    the full captions' text features `texts` `(B, D)`: s_ij = c_i · t_j / τ, positives on the diagonal, same-caption
    pairs masked (as :func:`itc_loss`)."""
    sim = logit_scale * completed @ texts.t()
    if caption_ids is not None:
        same = caption_ids[:, None] == caption_ids[None, :]
        same.fill_diagonal_(False)
        sim = sim.masked_fill(same, float("-inf"))
    labels = torch.arange(sim.shape[0], device=sim.device)
    return 0.5 * (F.cross_entropy(sim, labels) + F.cross_entropy(sim.t(), labels))


@torch.no_grad()
def zero_shot_retrieval(model: CSMCIRModel, data: SceneCaptionTensors, batch_size: int = 256) -> dict[str, float]:
    """Image→caption and caption→image Recall@{1,5,10} (%) of `model`'s ITC similarity over all pairs of `data`.

    An image retrieves correctly when a caption *string-identical* to its own is in the top K (two scenes can share
    a noisy caption); a caption retrieves correctly when its own image is in the top K. Chance R@1 is ~1/N.
    """
    was_training = model.training
    model.eval()
    images, texts = [], []
    for i in range(0, len(data), batch_size):
        rows = slice(i, i + batch_size)
        images.append(model.get_image_token_features(pixel_values=data.pixel_values[rows]))
        texts.append(text_features(model, data.input_ids[rows], data.attention_mask[rows]))
    model.train(was_training)
    sim_t2i = CSMCIRModel.score(torch.cat(texts), torch.cat(images))  # (N, N)
    n = sim_t2i.shape[0]
    same_caption = data.caption_ids[:, None] == data.caption_ids[None, :]
    metrics: dict[str, float] = {}
    for k in (1, 5, 10):
        top_captions = sim_t2i.t().topk(min(k, n), dim=1).indices  # per image
        i2t = same_caption.gather(1, top_captions).any(dim=1).float().mean().item()
        top_images = sim_t2i.topk(min(k, n), dim=1).indices  # per caption
        t2i = (top_images == torch.arange(n)[:, None]).any(dim=1).float().mean().item()
        metrics[f"i2t_recall_at_{k}"] = 100.0 * i2t
        metrics[f"t2i_recall_at_{k}"] = 100.0 * t2i
    metrics["mean_recall"] = sum(metrics.values()) / len(metrics)
    return metrics


# ---------------------------------------------------------------------------------------------- training


class ITCPretrainer(HubCardTrainerMixin, Trainer):
    """`Trainer` whose loss is BLIP-2's ITC (:func:`itc_loss`) instead of the model's CIR loss; saved folders get
    this package's model card and ``training_args.json`` (no pickled ``training_args.bin``)."""

    evaluation_protocol = "zero-shot image-caption retrieval (ITC), held-out synthetic scenes"

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        unwrapped = self.accelerator.unwrap_model(model)
        image_tokens = unwrapped.get_image_token_features(pixel_values=inputs["pixel_values"])
        texts = text_features(unwrapped, inputs["input_ids"], inputs["attention_mask"])
        loss = itc_loss(image_tokens, texts, unwrapped.logit_scale, inputs.get("caption_ids"))
        if self.args.completion_weight > 0:
            completed = unwrapped.get_query_features(pixel_values=inputs["pixel_values"],
                                                     input_ids=inputs["masked_input_ids"],
                                                     attention_mask=inputs["attention_mask"])
            loss = loss + self.args.completion_weight * completion_loss(
                completed, texts, unwrapped.logit_scale, inputs.get("caption_ids"))
        return (loss, {"loss": loss}) if return_outputs else loss

    def create_optimizer(self, model=None):
        # The temperature gets its own learning rate and no weight decay (see temperature_learning_rate).
        if self.optimizer is None:
            model = self.model if model is None else model
            decay, no_decay, temperature = [], [], []
            for name, parameter in model.named_parameters():
                if not parameter.requires_grad:
                    continue
                if name == "temperature":
                    temperature.append(parameter)
                elif parameter.ndim < 2 or "LayerNorm" in name or "layernorm" in name or name.endswith(".bias"):
                    no_decay.append(parameter)
                else:
                    decay.append(parameter)
            groups = [{"params": decay, "weight_decay": self.args.weight_decay},
                      {"params": no_decay, "weight_decay": 0.0}]
            if temperature and self.args.temperature_learning_rate > 0:
                groups.append({"params": temperature, "weight_decay": 0.0, "lr": self.args.temperature_learning_rate})
            elif temperature:
                temperature[0].requires_grad_(False)
            optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, model)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer


def pretrain(
    model: CSMCIRModel,
    train: SceneCaptionTensors,
    args: CSMCIRPretrainingArguments,
    held_out: SceneCaptionTensors | None = None,
    resume_from_checkpoint: str | None = None,
    processing_class: Any = None,
    callbacks: Sequence[Any] | None = None,
) -> tuple[ITCPretrainer, dict[str, Any]]:
    """Run the ITC stage on `train`; returns the trainer and ``{"before", "after", "train", "final_temperature"}``
    (zero-shot retrieval on `held_out` before and after, when given; the Trainer's train metrics).

    The vision tower trains too unless ``config.freeze_vision``: a randomly initialised tower has nothing to offer
    frozen, and learning to see the scenes is the point of this stage.
    """
    if args.freeze_word_embeddings:
        model.embeddings.word_embeddings.weight.requires_grad_(False)
    report: dict[str, Any] = {}
    if held_out is not None:
        report["before"] = zero_shot_retrieval(model, held_out)
    trainer = ITCPretrainer(model=model, args=args, train_dataset=_RowDataset(train),
                            data_collator=SceneCaptionCollator(train, args.completion_mask_rate if args.completion_weight > 0 else 0.0),
                            processing_class=processing_class, callbacks=list(callbacks or []))
    result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    model.embeddings.word_embeddings.weight.requires_grad_(True)
    report["train"] = result.metrics
    report["final_temperature"] = float(model.temperature.detach().clamp(min=model.config.min_temperature))
    if held_out is not None:
        report["after"] = zero_shot_retrieval(model, held_out)
    return trainer, report


# ------------------------------------------------------------------------------------------------ unshared


@torch.no_grad()
def unshared_from_shared(model: CSMCIRModel) -> CSMCIRModel:
    """The unshared two-tower ablation (``share_qformer=False``) of a shared model, both towers starting from its
    weights (query tokens, text embeddings, Q-Former, projections copied into ``target_tower``), so a pretrained
    checkpoint can be fine-tuned with two towers without leaving the target tower random."""
    if model.target_tower is not None:
        return model
    config = model.config.__class__.from_dict({**model.config.to_dict(), "share_qformer": False})
    unshared = CSMCIRModel(config)
    missing, unexpected = unshared.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not name.startswith("target_tower.") for name in missing):
        raise ValueError(f"unshared_from_shared: state dicts differ beyond target_tower (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    tower: CSMCIRQFormerTower = unshared.target_tower
    for name in ("query_tokens",):
        getattr(tower, name).copy_(getattr(model, name))
    for name in ("embeddings", "qformer", "vision_projection", "text_projection"):
        getattr(tower, name).load_state_dict(getattr(model, name).state_dict())
    return unshared


__all__ = [
    "CSMCIRPretrainingArguments", "ITCPretrainer", "SceneCaptionCollator", "SceneCaptionTensors", "completion_loss",
    "itc_loss",
    "pretrain", "text_features", "unshared_from_shared", "zero_shot_retrieval",
]
