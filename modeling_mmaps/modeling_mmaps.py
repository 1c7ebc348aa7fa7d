"""MMAPS: multimodal, attribute-aware product summarization as a native transformers seq2seq model.

Implements the system of "Multimodal Attribute-aware Product Summarization" (code: github.com/KDEGroup/MMAPS) on top
of transformers' BART:

* text encoder = BART encoder with a learned text [CLS] inserted right after each example's last token;
* visual encoder = region (or patch) embeddings + a visual [CLS] + a small post-LN transformer;
* gated fusion = single-head text→region attention in `fusion_hidden_size` dims, a sigmoid forget gate on the
  attended vector, and a residual projection of [text; gated] added to the text states; the BART decoder
  cross-attends to the fused states;
* training tasks: summary cross-entropy, multi-label attribute BCE, fine-grained token-region alignment
  (a Hausdorff-style token-region set similarity used contrastively across the batch on separate projection heads,
  padding masked on both sides — the original's plain Hausdorff distance to the matched image is satisfied by a
  collapsed encoder), coarse image-text InfoNCE between the two [CLS] vectors, and masked region modelling (KL to
  detector class distributions, or feature regression).

Text encoder, visual encoder and fusion sit behind `get_encoder()`, so `generate()` runs them once per input and
expands the result for beams. Products without an image are masked out of attention and of the visual losses.

The original's forms of the visual transformer, attribute pooling, contrast head, fine-grained alignment and box area
are configuration options (see `MMAPSConfig`). Value-dependent input checks (empty texts, boxes outside [0, 1]) run
in eager mode only (`torch.compiler.is_compiling()`), so `torch.export` and `torch.compile` trace `forward` whole.

Hub rule: this file is copied next to saved weights; it imports only siblings, torch and transformers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, BartForConditionalGeneration, GenerationConfig, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutput, ModelOutput
from transformers.models.bart.modeling_bart import BartDecoder, BartEncoder, BartScaledWordEmbedding, shift_tokens_right
from transformers.utils import logging
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_mmaps import MMAPSConfig

logger = logging.get_logger(__name__)

@dataclass
class MMAPSEncoderOutput(BaseModelOutput):
    """Output of [`MMAPSEncoder`].

    Args:
        last_hidden_state (`(B, L, D)`): fused text states the decoder cross-attends to (the text states themselves
            when the visual side is off).
        hidden_states, attentions: BART encoder's, when requested.
        text_hidden_states (`(B, L, D)`): text encoder states before fusion, text [CLS] removed.
        text_embeds (`(B, D)`): the text [CLS] state (masked mean of the text states without a [CLS]).
        image_embeds (`(B, Dv)`): the visual [CLS] state.
        visual_hidden_states (`(B, R, Dv)`): region (or patch) states after the visual transformer.
        region_embeds (`(B, R, Dv)`): region embeddings entering the visual transformer (reused by region modelling).
        region_targets (`(B, R, F)`): raw region features (or detached backbone patch features), regression targets.
        visual_attention_mask (`(B, R)`): 1 for a real region of an example that has an image.
        image_mask (`(B,)`): 1 where the example has an image.
        fusion_gate (`(B, L, fusion_hidden_size)`): forget-gate values (0 for examples without an image).
    """

    text_hidden_states: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    visual_hidden_states: torch.FloatTensor | None = None
    region_embeds: torch.FloatTensor | None = None
    region_targets: torch.FloatTensor | None = None
    visual_attention_mask: torch.LongTensor | None = None
    image_mask: torch.LongTensor | None = None
    fusion_gate: torch.FloatTensor | None = None


@dataclass
class MMAPSSeq2SeqModelOutput(ModelOutput):
    """Output of [`MMAPSModel`]: the decoder's states plus the full multimodal encoder output.

    Args:
        last_hidden_state (`(B, T, D)`): decoder states.
        cache, decoder_hidden_states, decoder_attentions, cross_attentions: BART decoder's.
        encoder_last_hidden_state (`(B, L, D)`): the fused states the decoder cross-attended to.
        encoder_hidden_states, encoder_attentions: the BART text encoder's, when requested.
        encoder_outputs (`MMAPSEncoderOutput`): everything the encoder computed (fused, text, visual states, masks).
        encoder_ran (`bool`): whether the encoder ran in this call (False when `encoder_outputs` was passed in).
        attention_mask (`(B, L)`): the text mask the decoder cross-attended with.
    """

    last_hidden_state: torch.FloatTensor | None = None
    cache: Any = None
    decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    encoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    encoder_outputs: MMAPSEncoderOutput | None = None
    encoder_ran: bool | None = None
    attention_mask: torch.Tensor | None = None


@dataclass
class MMAPSSeq2SeqLMOutput(ModelOutput):
    """Output of [`MMAPSForConditionalGeneration`].

    Args:
        loss: Σ_i w_i · L_i over the tasks that ran (weights from the config; a task with weight 0 never runs).
            None when no task ran (no `labels` and no `attribute_labels`: plain inference).

        Whenever `loss` is set, every per-task loss below is a real 0-d float tensor, so each can be logged or
        `float()`-ed: a task that did not run in this batch (weight 0, no inputs for it, or no pairs — fewer than
        two imaged products for the alignment and contrastive tasks, no image at all for region modelling) is
        reported as `0.0` with no gradient (`requires_grad=False`) and adds nothing to `loss`.
        logits (`(B, T, V)`): next-token logits of the summary decoder.
        summary_loss: token cross-entropy of the summary (labels = -100 ignored).
        attribute_loss: mean binary cross-entropy of the attribute logits against `attribute_labels`.
        alignment_loss: token-region InfoNCE over the imaged examples' Hausdorff-style set similarities
            (`token_region_contrastive_loss`; needs ≥2 imaged examples in the batch).
        contrastive_loss: symmetric InfoNCE between text and image [CLS] embeddings of imaged examples.
        region_loss: masked region modelling (KL divergence or mean squared error).
        attribute_logits (`(B, num_attributes)`): multi-label attribute logits (when the encoder ran in this call).
        cache, decoder_hidden_states, decoder_attentions, cross_attentions: BART decoder's.
        encoder_last_hidden_state, encoder_hidden_states, encoder_attentions: the (fused) encoder's.
        text_embeds, image_embeds: the two [CLS] vectors.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    summary_loss: torch.FloatTensor | None = None
    attribute_loss: torch.FloatTensor | None = None
    alignment_loss: torch.FloatTensor | None = None
    contrastive_loss: torch.FloatTensor | None = None
    region_loss: torch.FloatTensor | None = None
    attribute_logits: torch.FloatTensor | None = None
    cache: Any = None
    decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    encoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None


# ----------------------------------------------------------------------------------------------------------------
# Text [CLS] placement
# ----------------------------------------------------------------------------------------------------------------


def text_cls_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index at which the text [CLS] is inserted: one past each example's last attended token, shape (B,).

    Placing it after the last real token (not after the padding, as the original does) keeps every example's
    encoding independent of how much the batch is padded.
    """
    length = attention_mask.shape[1]
    ranks = torch.arange(1, length + 1, device=attention_mask.device)
    return (attention_mask.long() * ranks).max(dim=-1).values


def insert_text_cls(
    inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, cls_embedding: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Insert `cls_embedding` at `text_cls_positions(attention_mask)`: (B, L, D) → (B, L+1, D).

    Returns the extended embeddings, the extended mask and the [CLS] positions.
    """
    batch, length, dim = inputs_embeds.shape
    cls_pos = text_cls_positions(attention_mask)
    positions = torch.arange(length + 1, device=inputs_embeds.device)[None]
    source = (positions - (positions > cls_pos[:, None]).long()).clamp(max=length - 1)
    extended = inputs_embeds.gather(1, source[..., None].expand(-1, -1, dim))
    is_cls = positions == cls_pos[:, None]
    extended = torch.where(is_cls[..., None], cls_embedding.to(extended.dtype).view(1, 1, dim), extended)
    extended_mask = torch.where(is_cls, torch.ones_like(source), attention_mask.long().gather(1, source))
    return extended, extended_mask, cls_pos


def remove_text_cls(hidden_states: torch.Tensor, cls_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `insert_text_cls` on encoder states: (B, L+1, D) → text states (B, L, D) and [CLS] states (B, D)."""
    batch, extended_length, dim = hidden_states.shape
    positions = torch.arange(extended_length - 1, device=hidden_states.device)[None]
    source = positions + (positions >= cls_pos[:, None]).long()
    text = hidden_states.gather(1, source[..., None].expand(-1, -1, dim))
    cls = hidden_states[torch.arange(batch, device=hidden_states.device), cls_pos]
    return text, cls


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_t m_t · h_t / max(Σ_t m_t, 1) over the sequence axis: (B, L, D), (B, L) → (B, D)."""
    weights = mask.to(states.dtype).unsqueeze(-1)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)


# ----------------------------------------------------------------------------------------------------------------
# Visual encoder
# ----------------------------------------------------------------------------------------------------------------


def box_area(boxes: torch.Tensor, form: str = "corrected") -> torch.Tensor:
    """Area of (x1, y1, x2, y2) boxes (…, 4) → (…). `"corrected"`: (x2 − x1)(y2 − y1). `"original"`: the original's
    (b3 − b2)(b1 − b0), written for (x1, x2, y1, y2) boxes but fed (x1, y1, x2, y2) ones, i.e. (y2 − x2)(y1 − x1)."""
    if form == "original":
        return (boxes[..., 3] - boxes[..., 2]) * (boxes[..., 1] - boxes[..., 0])
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


class MMAPSVisualLayer(nn.Module):
    """Post-LN transformer layer with SDPA: h = LN(h + Attn(h)); h = LN(h + W₂ act(W₁ h)).

    `act` is GELU (`visual_encoder_style="mmaps"`) or ReLU (`"original"`: the original uses PyTorch's
    `TransformerEncoderLayer`, whose default activation is ReLU; this layer is written out, not PyTorch's).
    """

    def __init__(self, config: MMAPSConfig) -> None:
        super().__init__()
        dim = config.visual_hidden_size
        self.num_heads = config.num_visual_attention_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.attention_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, config.visual_intermediate_size)
        self.fc2 = nn.Linear(config.visual_intermediate_size, dim)
        self.output_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(config.visual_dropout)
        self.activation = F.relu if config.visual_encoder_style == "original" else F.gelu

    def forward(self, hidden_states: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """`key_mask` (B, N) bool: True for keys that may be attended (the [CLS] is always True)."""
        batch, length, dim = hidden_states.shape
        q, k, v = self.qkv(hidden_states).view(batch, length, 3, self.num_heads, dim // self.num_heads).unbind(2)
        attn = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=key_mask[:, None, None, :],
            dropout_p=self.dropout.p if self.training else 0.0,
        )
        attn = self.out_proj(attn.transpose(1, 2).reshape(batch, length, dim))
        hidden_states = self.attention_norm(hidden_states + self.dropout(attn))
        ffn = self.fc2(self.dropout(self.activation(self.fc1(hidden_states))))
        return self.output_norm(hidden_states + self.dropout(ffn))


def sinusoidal_positions(length: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The Transformer's sinusoidal table (length, dim): PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...).

    Computed on the fly (no buffer): a non-persistent buffer would come back as garbage from `from_pretrained`.
    """
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device, dtype=torch.float32)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)[:, : dim // 2]
    return table.to(dtype)


class MMAPSVisualEncoder(nn.Module):
    """Region/patch embeddings → [visual CLS; regions] → `num_visual_layers` transformer layers.

    Region mode: e = LN(W_f f) + LN(W_b [x1, y1, x2, y2, area]). Patch mode: a vision backbone
    (`AutoModel.from_config(vision_config)`) runs on pixels and e = LN(W_f patch).
    `visual_encoder_style="original"` adds E_region[i] + E_image[0] to region i's embedding (region mode) and feeds
    the layers √d · [CLS; e] + PE (sinusoidal) instead of [CLS; e].
    """

    def __init__(self, config: MMAPSConfig) -> None:
        super().__init__()
        dim = config.visual_hidden_size
        if config.uses_pixels:
            self.backbone = AutoModel.from_config(config.vision_config)
            feature_dim = config.vision_config.hidden_size
            self.box_projection = None
        else:
            self.backbone = None
            feature_dim = config.visual_feature_dim
            self.box_projection = nn.Sequential(nn.Linear(5, dim), nn.LayerNorm(dim))
        self.feature_dim = feature_dim
        self.feature_projection = nn.Sequential(nn.Linear(feature_dim, dim), nn.LayerNorm(dim))
        self.cls_embedding = nn.Parameter(torch.zeros(dim))
        self.mask_embedding = nn.Parameter(torch.zeros(dim))
        self.dropout = nn.Dropout(config.visual_dropout)
        self.layers = nn.ModuleList([MMAPSVisualLayer(config) for _ in range(config.num_visual_layers)])
        self.original_style = config.visual_encoder_style == "original"
        self.box_area_form = config.box_area_form
        if self.original_style and self.backbone is None:
            self.region_order_embedding = nn.Embedding(config.max_regions, dim)
            self.image_order_embedding = nn.Embedding(1, dim)
        else:
            self.region_order_embedding = self.image_order_embedding = None

    def embed(
        self,
        visual_features: torch.Tensor | None = None,
        visual_boxes: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Region embeddings (B, R, Dv) and the raw features they came from (B, R, F; the regression target)."""
        if self.backbone is not None:
            features = self.backbone(pixel_values=pixel_values).last_hidden_state
            return self.feature_projection(features), features.detach()
        # Pre-extracted features arrive in float32; a half-precision model needs them in its own dtype.
        dtype = next(self.feature_projection.parameters()).dtype
        visual_features, visual_boxes = visual_features.to(dtype), visual_boxes.to(dtype)
        area = box_area(visual_boxes, self.box_area_form)
        boxes = torch.cat([visual_boxes, area.unsqueeze(-1)], dim=-1)
        embeds = self.feature_projection(visual_features) + self.box_projection(boxes)
        if self.region_order_embedding is not None:
            order = torch.arange(embeds.shape[1], device=embeds.device)
            embeds = embeds + self.region_order_embedding(order)[None] + self.image_order_embedding.weight[0]
        return embeds, visual_features

    def encode(self, region_embeds: torch.Tensor, region_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the transformer over [CLS; regions]; returns (CLS state (B, Dv), region states (B, R, Dv))."""
        batch = region_embeds.shape[0]
        cls = self.cls_embedding.to(region_embeds.dtype).expand(batch, 1, -1)
        hidden_states = torch.cat([cls, region_embeds], dim=1)
        if self.original_style:
            length, dim = hidden_states.shape[1:]
            hidden_states = hidden_states * math.sqrt(dim) + sinusoidal_positions(
                length, dim, hidden_states.device, hidden_states.dtype)[None]
        hidden_states = self.dropout(hidden_states)
        key_mask = torch.cat([region_mask.new_ones(batch, 1), region_mask], dim=1).bool()
        for layer in self.layers:
            hidden_states = layer(hidden_states, key_mask)
        return hidden_states[:, 0], hidden_states[:, 1:]


class MMAPSGatedFusion(nn.Module):
    """Text→region attention with a forget gate and a residual projection.

    a = softmax(q kᵀ/√d_f) v with q = W_q h_text, k = W_k h_reg, v = W_v h_reg (single head, d_f dims);
    g = σ(W_g [h_text; a]) (0 for examples without an image); fused = W_r [h_text; g ⊙ W_m a] + h_text.

    The text half of W_r starts at zero (see `MMAPSPreTrainedModel._init_weights`), so at initialisation
    fused = h_text + W_r^g (g ⊙ W_m a): the decoder first reads the BART text states unchanged, plus a small visual
    term. Deviation from the original (random W_r): a random W_r h_text added to h_text perturbs exactly the token
    states the decoder copies from, which cost summary quality against plain BART when training from scratch.
    """

    def __init__(self, config: MMAPSConfig) -> None:
        super().__init__()
        text_dim, visual_dim, fusion_dim = config.text_config.d_model, config.visual_hidden_size, config.fusion_hidden_size
        self.query = nn.Linear(text_dim, fusion_dim)
        self.key = nn.Linear(visual_dim, fusion_dim)
        self.value = nn.Linear(visual_dim, fusion_dim)
        self.attention_output = nn.Linear(fusion_dim, fusion_dim)
        self.gate = nn.Linear(text_dim + fusion_dim, fusion_dim)
        self.memory = nn.Linear(fusion_dim, fusion_dim)
        self.residual = nn.Linear(text_dim + fusion_dim, text_dim)
        self.residual.zero_init_input_columns = text_dim  # read by MMAPSPreTrainedModel._init_weights
        self.scale = 1.0 / math.sqrt(fusion_dim)

    def forward(
        self, text_states: torch.Tensor, region_states: torch.Tensor, region_mask: torch.Tensor, image_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        scores = torch.einsum("bld,brd->blr", self.query(text_states), self.key(region_states)) * self.scale
        # Rows of imageless examples are fully masked; softmax then gives a harmless uniform row, and the gate
        # below zeroes what it produced, so no example ever reads padded or missing regions.
        scores = scores.masked_fill(~region_mask.bool()[:, None, :], torch.finfo(scores.dtype).min)
        attended = self.attention_output(torch.einsum("blr,brd->bld", scores.softmax(-1), self.value(region_states)))
        has_image = image_mask.to(text_states.dtype)[:, None, None]
        attended = attended * has_image
        gate = torch.sigmoid(self.gate(torch.cat([text_states, attended], dim=-1))) * has_image
        gated = gate * self.memory(attended)
        fused = self.residual(torch.cat([text_states, gated], dim=-1)) + text_states
        return fused, gate


def _children_first(module: nn.Module) -> list[nn.Module]:
    """`module` and all its sub-modules, each after its children (the order transformers initialises in)."""
    ordered: list[nn.Module] = []
    for child in module.children():
        ordered.extend(_children_first(child))
    ordered.append(module)
    return ordered


class MMAPSPreTrainedModel(PreTrainedModel):
    """Weight initialisation and capability flags shared by the MMAPS models."""

    config: MMAPSConfig
    config_class = MMAPSConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["BartEncoderLayer", "BartDecoderLayer", "MMAPSVisualLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _keys_to_ignore_on_load_unexpected = ["encoder.version", "decoder.version"]

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> None:
        """Save as transformers does; a remote-code save maps both Auto classes (`AutoModel` → `MMAPSModel`, the
        base model as `AutoModel` gives `BartModel`; `AutoModelForSeq2SeqLM` → the summarizer) in `auto_map`."""
        if getattr(type(self), "_auto_class", None) is not None:
            auto_map = dict(getattr(self.config, "auto_map", None) or {})
            auto_map.setdefault("AutoModel", "modeling_mmaps.MMAPSModel")
            auto_map.setdefault("AutoModelForSeq2SeqLM", "modeling_mmaps.MMAPSForConditionalGeneration")
            self.config.auto_map = auto_map
        super().save_pretrained(save_directory, *args, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.text_config.init_std
        if isinstance(module, MMAPSVisualEncoder) and module.backbone is not None:
            # The vision backbone is initialised by its own `_init_weights` (CLIP's per-layer stds, ...), children
            # first as transformers does, on every path: `__init__` and `from_pretrained` (which otherwise gives its
            # missing linear layers this model's text std) initialise it alike.
            for sub in _children_first(module.backbone):
                module.backbone._init_weights(sub)
        if isinstance(module, nn.Linear):
            zero_columns = getattr(module, "zero_init_input_columns", 0)
            if zero_columns and not getattr(module.weight, "_is_hf_initialized", False):
                # The fusion's W_r: its text half starts at zero so fusion starts as the identity on the text states.
                # Handled here, on the Linear, because transformers skips `_init_weights` for custom-code modules
                # that own no parameters directly (as MMAPSGatedFusion).
                with torch.no_grad():
                    init.normal_(module.weight, mean=0.0, std=std)
                    module.weight[:, :zero_columns].zero_()
            else:
                init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, MMAPSVisualEncoder):
            init.normal_(module.cls_embedding, mean=0.0, std=std)
            init.normal_(module.mask_embedding, mean=0.0, std=std)
        elif isinstance(module, MMAPSEncoder) and module.text_cls_embedding is not None:
            init.normal_(module.text_cls_embedding, mean=0.0, std=std)
        elif isinstance(module, MMAPSForConditionalGeneration):
            init.zeros_(module.final_logits_bias)
            if module.logit_scale is not None:
                init.constant_(module.logit_scale, self.config.contrastive_logit_scale_init)
                init.constant_(module.alignment_logit_scale, self.config.contrastive_logit_scale_init)


class MMAPSEncoder(nn.Module):
    """What `get_encoder()` returns: BART text encoder (+ text [CLS]), visual encoder and gated fusion.

    Generation calls it once with the text and visual inputs; its `MMAPSEncoderOutput` is then expanded for beams.
    """

    def __init__(self, config: MMAPSConfig) -> None:
        super().__init__()
        self.config = config
        self.text_encoder = BartEncoder(config.text_config)
        self.text_cls_embedding = nn.Parameter(torch.zeros(config.text_config.d_model)) if config.use_text_cls else None
        self.visual_encoder = MMAPSVisualEncoder(config) if config.use_visual else None
        self.fusion = MMAPSGatedFusion(config) if config.use_visual else None

    # -- input checks -------------------------------------------------------------------------------------------
    def _check_text(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None,
                    inputs_embeds: torch.Tensor | None) -> torch.Tensor:
        reference = input_ids if input_ids is not None else inputs_embeds
        if reference is None:
            raise ValueError("MMAPS encoder: pass `input_ids` (or `inputs_embeds`)")
        batch, length = reference.shape[:2]
        if length == 0:
            raise ValueError("input_ids: empty text (sequence length 0); every product needs some text")
        if attention_mask is None:
            if input_ids is not None:
                attention_mask = input_ids.ne(self.config.text_config.pad_token_id).long()
            else:
                attention_mask = torch.ones(batch, length, dtype=torch.long, device=reference.device)
        if attention_mask.shape != (batch, length):
            raise ValueError(f"attention_mask: expected shape {(batch, length)}, got {tuple(attention_mask.shape)}")
        if not torch.compiler.is_compiling():  # value-dependent: eager only, so export/compile trace forward whole
            empty = (attention_mask.sum(-1) == 0).nonzero().flatten().tolist()
            if empty:
                raise ValueError(f"input_ids: example(s) {empty} have empty text (no attended token)")
        limit = self.config.text_config.max_position_embeddings - int(self.config.use_text_cls)
        if length > limit:
            raise ValueError(f"input_ids: sequence length {length} exceeds the {limit} positions the encoder has")
        return attention_mask

    def _check_visual(
        self, batch: int, visual_features: torch.Tensor | None, visual_boxes: torch.Tensor | None,
        visual_attention_mask: torch.Tensor | None, pixel_values: torch.Tensor | None,
        image_mask: torch.Tensor | None, device: torch.device,
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Validate visual inputs; return (boxes, region mask (B, R), image mask (B,)) with imageless rows zeroed."""
        config = self.config
        if config.uses_pixels:
            if visual_features is not None:
                raise ValueError("visual_features: this model reads raw images (`pixel_values`), not region features")
            if pixel_values is None:
                return None, torch.zeros(batch, 0, dtype=torch.long, device=device), torch.zeros(
                    batch, dtype=torch.long, device=device)
            if pixel_values.ndim != 4 or pixel_values.shape[0] != batch:
                raise ValueError(f"pixel_values: expected (batch={batch}, C, H, W), got {tuple(pixel_values.shape)}")
            n_regions = None
        else:
            if pixel_values is not None:
                raise ValueError("pixel_values: this model reads region features (`visual_features`); set "
                                 "`vision_config` to run a vision backbone on images")
            if visual_features is None:
                return None, torch.zeros(batch, 0, dtype=torch.long, device=device), torch.zeros(
                    batch, dtype=torch.long, device=device)
            if visual_features.ndim != 3 or visual_features.shape[0] != batch:
                raise ValueError(f"visual_features: expected (batch={batch}, regions, {config.visual_feature_dim}), "
                                 f"got {tuple(visual_features.shape)}")
            if visual_features.shape[-1] != config.visual_feature_dim:
                raise ValueError(f"visual_features: expected feature size {config.visual_feature_dim} "
                                 f"(config.visual_feature_dim), got {visual_features.shape[-1]}")
            n_regions = visual_features.shape[1]
            if n_regions > config.max_regions:
                raise ValueError(f"visual_features: {n_regions} regions exceed config.max_regions={config.max_regions}")
            if visual_boxes is None:
                raise ValueError("visual_boxes: required with visual_features, shape (batch, regions, 4), in [0, 1]")
            if visual_boxes.shape != (batch, n_regions, 4):
                raise ValueError(f"visual_boxes: expected shape {(batch, n_regions, 4)}, got {tuple(visual_boxes.shape)}")
            if (not torch.compiler.is_compiling() and visual_boxes.numel()
                    and (visual_boxes.min() < 0 or visual_boxes.max() > 1)):
                raise ValueError(
                    "visual_boxes: coordinates must be normalised to [0, 1], got values in "
                    f"[{visual_boxes.min().item():.3g}, {visual_boxes.max().item():.3g}]")
        if n_regions is None:
            # Patch count is only known after the backbone; the caller builds the mask then.
            region_mask = None
        elif visual_attention_mask is None:
            region_mask = torch.ones(batch, n_regions, dtype=torch.long, device=device)
        else:
            if visual_attention_mask.shape != (batch, n_regions):
                raise ValueError(f"visual_attention_mask: expected shape {(batch, n_regions)}, "
                                 f"got {tuple(visual_attention_mask.shape)}")
            region_mask = visual_attention_mask.long()
        if image_mask is None:
            image_mask = torch.ones(batch, dtype=torch.long, device=device)
        elif image_mask.shape != (batch,):
            raise ValueError(f"image_mask: expected shape ({batch},), got {tuple(image_mask.shape)}")
        image_mask = image_mask.long()
        if region_mask is not None:
            image_mask = image_mask * region_mask.any(-1).long()
            region_mask = region_mask * image_mask[:, None]
        return visual_boxes, region_mask, image_mask

    # -- forward ---------------------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        visual_features: torch.Tensor | None = None,
        visual_boxes: torch.Tensor | None = None,
        visual_attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = True,
    ) -> MMAPSEncoderOutput:
        """Encode text (+ [CLS]), encode the image, fuse. Shapes: text (B, L); regions (B, R, F); pixels (B, C, H, W)."""
        attention_mask = self._check_text(input_ids, attention_mask, inputs_embeds)
        extra: dict[str, Any] = {}
        if output_attentions:
            extra["output_attentions"] = True
        if output_hidden_states:
            extra["output_hidden_states"] = True

        if self.text_cls_embedding is None:
            text_out = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask,
                                         inputs_embeds=inputs_embeds, **extra)
            text_states = text_out.last_hidden_state
            text_embeds = masked_mean(text_states, attention_mask)
        else:
            if inputs_embeds is None:
                inputs_embeds = self.text_encoder.embed_tokens(input_ids)
            extended, extended_mask, cls_pos = insert_text_cls(inputs_embeds, attention_mask, self.text_cls_embedding)
            text_out = self.text_encoder(inputs_embeds=extended, attention_mask=extended_mask, **extra)
            text_states, text_embeds = remove_text_cls(text_out.last_hidden_state, cls_pos)

        output = MMAPSEncoderOutput(
            last_hidden_state=text_states, hidden_states=text_out.hidden_states, attentions=text_out.attentions,
            text_hidden_states=text_states, text_embeds=text_embeds,
        )
        if self.visual_encoder is None:
            return output if return_dict is not False else output.to_tuple()

        batch = text_states.shape[0]
        boxes, region_mask, image_mask = self._check_visual(
            batch, visual_features, visual_boxes, visual_attention_mask, pixel_values, image_mask, text_states.device)
        if not torch.compiler.is_compiling() and not bool(image_mask.any()):
            # No image anywhere in the batch: the gate is closed for everyone, fused = W_r [h; 0] + h (the full path
            # below computes the same, and is what a traced graph keeps).
            fused = self.fusion.residual(torch.cat(
                [text_states, text_states.new_zeros(*text_states.shape[:2], self.config.fusion_hidden_size)], -1)
            ) + text_states
            output.last_hidden_state = fused
            output.image_mask = image_mask
            return output if return_dict is not False else output.to_tuple()

        region_embeds, region_targets = self.visual_encoder.embed(visual_features, boxes, pixel_values)
        if region_mask is None:  # patch mode: every patch of an imaged example is valid
            region_mask = image_mask[:, None].expand(-1, region_embeds.shape[1]).contiguous()
        image_embeds, region_states = self.visual_encoder.encode(region_embeds, region_mask)
        fused, gate = self.fusion(text_states, region_states, region_mask, image_mask)
        output.last_hidden_state = fused
        output.image_embeds = image_embeds
        output.visual_hidden_states = region_states
        output.region_embeds = region_embeds
        output.region_targets = region_targets
        output.visual_attention_mask = region_mask
        output.image_mask = image_mask
        output.fusion_gate = gate
        return output if return_dict is not False else output.to_tuple()


class MMAPSModel(MMAPSPreTrainedModel):
    """Shared word embeddings, the multimodal encoder and the BART decoder (no LM head)."""

    _tied_weights_keys = {
        "encoder.text_encoder.embed_tokens.weight": "shared.weight",
        "decoder.embed_tokens.weight": "shared.weight",
    }

    def __init__(self, config: MMAPSConfig) -> None:
        super().__init__(config)
        text = config.text_config
        embed_scale = math.sqrt(text.d_model) if text.scale_embedding else 1.0
        self.shared = BartScaledWordEmbedding(text.vocab_size, text.d_model, text.pad_token_id, embed_scale=embed_scale)
        self.encoder = MMAPSEncoder(config)
        self.decoder = BartDecoder(text)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.shared

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.shared = value
        self.encoder.text_encoder.embed_tokens = value
        self.decoder.embed_tokens = value

    def get_encoder(self, modality: str | None = None) -> MMAPSEncoder:
        return self.encoder

    def get_decoder(self) -> BartDecoder:
        return self.decoder

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: MMAPSEncoderOutput | tuple | None = None,
        cache: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        visual_features: torch.Tensor | None = None,
        visual_boxes: torch.Tensor | None = None,
        visual_attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> MMAPSSeq2SeqModelOutput | tuple:
        """Encode (unless `encoder_outputs` is given) and decode. The visual arguments are `MMAPSEncoder.forward`'s.
        Without decoder inputs, `input_ids` shifted right are decoded (BART's default). `past_key_values` is the
        deprecated name of `cache` (renamed with a warning, as BART does); other `kwargs` go to the decoder, as
        BART's attention kwargs do, never to the encoder. `return_dict=False` (or `config.return_dict=False`) gives a
        tuple of the non-None fields in order."""
        text = self.config.text_config
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            if input_ids is None:
                raise ValueError("decoder_input_ids: pass `labels`, `decoder_input_ids` or `input_ids`")
            decoder_input_ids = shift_tokens_right(input_ids, text.pad_token_id, text.decoder_start_token_id)
        encoder_ran = encoder_outputs is None
        if encoder_ran:
            encoder_outputs = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                visual_features=visual_features, visual_boxes=visual_boxes, visual_attention_mask=visual_attention_mask,
                pixel_values=pixel_values, image_mask=image_mask,
            )
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = MMAPSEncoderOutput(
                last_hidden_state=encoder_outputs[0],
                hidden_states=encoder_outputs[1] if len(encoder_outputs) > 1 else None,
                attentions=encoder_outputs[2] if len(encoder_outputs) > 2 else None,
            )
        if attention_mask is None and input_ids is not None:
            attention_mask = input_ids.ne(text.pad_token_id).long()
        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids, attention_mask=decoder_attention_mask,
            encoder_hidden_states=encoder_outputs.last_hidden_state, encoder_attention_mask=attention_mask,
            cache=cache, inputs_embeds=decoder_inputs_embeds, use_cache=use_cache,
            **({"output_attentions": True} if output_attentions else {}),
            **({"output_hidden_states": True} if output_hidden_states else {}),
            **kwargs,
        )
        output = MMAPSSeq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state, cache=decoder_outputs.cache,
            decoder_hidden_states=decoder_outputs.hidden_states, decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states, encoder_attentions=encoder_outputs.attentions,
            encoder_outputs=encoder_outputs, encoder_ran=encoder_ran, attention_mask=attention_mask,
        )
        return output if return_dict else output.to_tuple()


class MMAPSAttributeHead(nn.Module):
    """Multi-label attribute logits: W_4 (W_1 pool(h_text) + W_2 pool(h_fused) + W_3 h_cls) (+ dropout each term).

    pool = masked mean (`attribute_pooling="mean"`, default) or masked sum (`"sum"`, the original's).
    """

    def __init__(self, config: MMAPSConfig) -> None:
        super().__init__()
        dim, hidden = config.text_config.d_model, config.fusion_hidden_size
        self.text_projection = nn.Linear(dim, hidden, bias=False)
        self.fused_projection = nn.Linear(dim, hidden, bias=False)
        self.cls_projection = nn.Linear(dim, hidden, bias=False) if config.use_text_cls else None
        self.classifier = nn.Linear(hidden, config.num_attributes)
        self.dropout = nn.Dropout(config.text_config.dropout)
        self.pooling = config.attribute_pooling

    def _pool(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "sum":
            return (states * attention_mask.to(states.dtype).unsqueeze(-1)).sum(1)
        return masked_mean(states, attention_mask)

    def forward(self, encoder_outputs: MMAPSEncoderOutput, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = self.dropout(self.text_projection(self._pool(encoder_outputs.text_hidden_states, attention_mask)))
        pooled = pooled + self.dropout(self.fused_projection(self._pool(encoder_outputs.last_hidden_state, attention_mask)))
        if self.cls_projection is not None:
            pooled = pooled + self.dropout(self.cls_projection(encoder_outputs.text_embeds))
        return self.classifier(pooled)


def token_region_similarity(
    text_latents: torch.Tensor, text_mask: torch.Tensor, region_latents: torch.Tensor, region_mask: torch.Tensor,
) -> torch.Tensor:
    """Hausdorff-style set similarity of every text (rows) with every image (columns): (B, L, D), (B, R, D) → (B, B).

    With cosine similarities c(t, r) = t̂·r̂ between text i's valid tokens T_i and image j's valid regions R_j:

        s(T→R) = mean_{t∈T_i} max_{r∈R_j} c(t, r),   s(R→T) = mean_{r∈R_j} max_{t∈T_i} c(t, r),
        S_ij = min(s(T→R), s(R→T)).

    1 − S_ij is the modified (averaged) Hausdorff distance of Dubuisson & Jain on the cosine distance: the worse of the
    two directed averages of nearest-neighbour distances. Averaging instead of the original's inner max keeps every
    token in the gradient (as FILIP's token-wise similarity does). Padding is masked on both sides.
    """
    t = F.normalize(text_latents, dim=-1)
    r = F.normalize(region_latents, dim=-1)
    sim = torch.einsum("ild,jrd->ijlr", t, r)  # (B_text, B_image, L, R)
    text_valid, region_valid = text_mask.bool(), region_mask.bool()
    neg = torch.finfo(sim.dtype).min
    text_weights = text_mask.to(sim.dtype)
    region_weights = region_mask.to(sim.dtype)
    best_region = sim.masked_fill(~region_valid[None, :, None, :], neg).max(-1).values  # (B, B, L)
    text_to_region = (best_region * text_weights[:, None, :]).sum(-1) / text_weights.sum(-1).clamp(min=1)[:, None]
    best_token = sim.masked_fill(~text_valid[:, None, :, None], neg).max(2).values  # (B, B, R)
    region_to_text = (best_token * region_weights[None]).sum(-1) / region_weights.sum(-1).clamp(min=1)[None]
    return torch.minimum(text_to_region, region_to_text)


def token_region_contrastive_loss(
    text_latents: torch.Tensor, text_mask: torch.Tensor, region_latents: torch.Tensor, region_mask: torch.Tensor,
    logit_scale: torch.Tensor,
) -> torch.Tensor:
    """Fine-grained alignment as symmetric InfoNCE over `token_region_similarity`: s = exp(τ) · S;
    L = ½ [CE(s, diag) + CE(sᵀ, diag)] — each product's tokens must match its own image's regions better than the
    other products' images in the batch.

    Deviation from the original (a Hausdorff distance to the matched image only): with negatives, a constant text or
    visual encoder gives chance loss ln(B) instead of zero, so collapse no longer satisfies the task. Needs B ≥ 2.
    """
    similarity = token_region_similarity(text_latents, text_mask, region_latents, region_mask)
    logits = logit_scale.exp() * similarity
    targets = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits.float(), targets) + F.cross_entropy(logits.t().float(), targets))


def hausdorff_distance(
    text_states: torch.Tensor, text_mask: torch.Tensor, region_states: torch.Tensor, region_mask: torch.Tensor,
) -> torch.Tensor:
    """The original's fine-grained Hausdorff distance of each product's tokens to its own regions: (B, L, D), (B, R, D)
    → (B,), with padding masked (the original takes padded tokens and regions into the max/min too).

    With d(t, r) = ‖t̂ − r̂‖₂ between L2-normalised vectors, over valid tokens T and regions R:
        h(T, R) = max_{t∈T} min_{r∈R} d(t, r),   h(R, T) = max_{r∈R} min_{t∈T} d(t, r),   H = max(h(T, R), h(R, T)).
    The original's loss is mean_B H².
    """
    t = F.normalize(text_states, dim=-1)
    r = F.normalize(region_states, dim=-1)
    distance = (t[:, :, None, :] - r[:, None, :, :]).norm(dim=-1)  # (B, L, R)
    text_valid, region_valid = text_mask.bool(), region_mask.bool()
    far = distance.new_tensor(torch.finfo(distance.dtype).max)
    nearest_region = distance.masked_fill(~region_valid[:, None, :], far).min(-1).values  # (B, L)
    text_to_region = nearest_region.masked_fill(~text_valid, 0.0).max(-1).values
    nearest_token = distance.masked_fill(~text_valid[:, :, None], far).min(1).values  # (B, R)
    region_to_text = nearest_token.masked_fill(~region_valid, 0.0).max(-1).values
    return torch.maximum(text_to_region, region_to_text)


def image_text_contrastive_loss(text_latents: torch.Tensor, image_latents: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: s = exp(τ) · t̂ îᵀ; L = ½ [CE(s, diag) + CE(sᵀ, diag)]."""
    logits = logit_scale.exp() * F.normalize(text_latents, dim=-1) @ F.normalize(image_latents, dim=-1).t()
    targets = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))


class MMAPSRegionHead(nn.Module):
    """Dense → tanh → output, predicting a masked region's detector class logits or its feature vector."""

    def __init__(self, hidden: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden, out_dim)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.dropout(torch.tanh(self.dense(self.dropout(states)))))


class MMAPSForConditionalGeneration(MMAPSPreTrainedModel, GenerationMixin):
    """MMAPS summarizer: multimodal encoder + BART decoder + LM head, with the attribute and multimodal task heads."""

    _tied_weights_keys = {"lm_head.weight": "model.shared.weight"}
    _keys_to_ignore_on_load_missing = ["final_logits_bias"]
    # The contrastive loss is a per-batch mean, so the Trainer must not rescale it by the item count.
    accepts_loss_kwargs = False

    def __init__(self, config: MMAPSConfig) -> None:
        super().__init__(config)
        text = config.text_config
        self.model = MMAPSModel(config)
        self.final_logits_bias = nn.Buffer(torch.zeros((1, text.vocab_size)))
        self.lm_head = nn.Linear(text.d_model, text.vocab_size, bias=False)
        self.attribute_head = MMAPSAttributeHead(config) if config.num_attributes > 0 else None
        if config.use_visual:
            visual = config.visual_hidden_size
            contrast_dim = config.contrastive_projection_dim or config.fusion_hidden_size
            self.text_projection = nn.Linear(text.d_model, contrast_dim, bias=False)
            self.image_projection = nn.Linear(visual, contrast_dim, bias=False)
            self.logit_scale = nn.Parameter(torch.tensor(float(config.contrastive_logit_scale_init)))
            if config.alignment_loss_form == "original":
                # The original's vis2text MLP maps regions into the text space; tokens are the raw text states.
                self.alignment_projection = nn.Sequential(nn.Linear(visual, text.d_model), nn.ReLU(),
                                                          nn.Linear(text.d_model, text.d_model))
                self.alignment_text_projection = None
            else:
                # Fine-grained alignment compares tokens and regions on their own heads (region MLP as in the
                # original, plus a text head), not the raw text states the decoder reads: the alignment geometry need
                # not be the summarizer's, so the two tasks do not fight over the same coordinates.
                self.alignment_projection = nn.Sequential(nn.Linear(visual, text.d_model), nn.ReLU(),
                                                          nn.Linear(text.d_model, config.fusion_hidden_size))
                self.alignment_text_projection = nn.Linear(text.d_model, config.fusion_hidden_size, bias=False)
            self.alignment_logit_scale = nn.Parameter(torch.tensor(float(config.contrastive_logit_scale_init)))
            feature_dim = self.model.encoder.visual_encoder.feature_dim
            self.region_feature_head = MMAPSRegionHead(visual, feature_dim, config.visual_dropout)
            self.region_class_head = (MMAPSRegionHead(visual, config.num_region_classes, config.visual_dropout)
                                      if config.num_region_classes > 0 and not config.uses_pixels else None)
        else:
            self.text_projection = self.image_projection = self.logit_scale = None
            self.alignment_projection = self.region_feature_head = self.region_class_head = None
            self.alignment_text_projection = self.alignment_logit_scale = None
        self.post_init()

    # -- plumbing --------------------------------------------------------------------------------------------------
    def get_encoder(self, modality: str | None = None) -> MMAPSEncoder:
        return self.model.encoder

    def get_decoder(self) -> BartDecoder:
        return self.model.decoder

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.shared

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
                                mean_resizing: bool = True) -> nn.Embedding:
        new_embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        n_new, n_old = new_embeddings.weight.shape[0], self.final_logits_bias.shape[-1]
        bias = self.final_logits_bias[:, :n_new] if n_new <= n_old else torch.cat(
            [self.final_logits_bias, self.final_logits_bias.new_zeros(1, n_new - n_old)], dim=1)
        self.final_logits_bias = nn.Buffer(bias)
        return new_embeddings

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        text = self.config.text_config
        return shift_tokens_right(labels, text.pad_token_id, text.decoder_start_token_id)

    # -- public helpers --------------------------------------------------------------------------------------------
    def get_attribute_logits(self, encoder_outputs: MMAPSEncoderOutput, attention_mask: torch.Tensor) -> torch.Tensor:
        """Attribute logits (B, num_attributes) from an encoder output (e.g. the one `generate()` would reuse)."""
        if self.attribute_head is None:
            raise ValueError("num_attributes: this model has no attribute head (config.num_attributes == 0)")
        return self.attribute_head(encoder_outputs, attention_mask)

    @torch.no_grad()
    def predict_attributes(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                           threshold: float | None = None, **visual_inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attribute probabilities σ(logits) (B, A) and the multi-hot prediction p > threshold (config default)."""
        encoder_outputs = self.get_encoder()(input_ids=input_ids, attention_mask=attention_mask, **visual_inputs)
        if attention_mask is None:
            attention_mask = input_ids.ne(self.config.text_config.pad_token_id).long()
        probs = torch.sigmoid(self.get_attribute_logits(encoder_outputs, attention_mask))
        threshold = self.config.attribute_threshold if threshold is None else threshold
        return probs, (probs > threshold).long()

    # -- forward ---------------------------------------------------------------------------------------------------
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        visual_features: torch.Tensor | None = None,
        visual_boxes: torch.Tensor | None = None,
        visual_attention_mask: torch.Tensor | None = None,
        visual_class_probs: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: MMAPSEncoderOutput | tuple | None = None,
        cache: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        attribute_labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        return_auxiliary_losses: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> MMAPSSeq2SeqLMOutput:
        r"""Summarize; with `labels` (and `attribute_labels`), also return the weighted multi-task loss.

        Args:
            visual_features (`(B, R, visual_feature_dim)`), visual_boxes (`(B, R, 4)` in [0, 1]),
            visual_attention_mask (`(B, R)`), visual_class_probs (`(B, R, num_region_classes)`): region inputs.
            pixel_values (`(B, C, H, W)`): raw images when `config.vision_config` is set.
            image_mask (`(B,)`): 0 marks an example without an image (its visual inputs are ignored).
            labels (`(B, T)`): summary token ids, -100 where ignored. decoder_input_ids default to labels shifted
                right behind `decoder_start_token_id`.
            attribute_labels (`(B, num_attributes)`): multi-hot attribute targets.
            return_auxiliary_losses: run the alignment/contrastive/region tasks (default: when `labels` is given).
            return_dict: `False` (or `config.return_dict=False`) gives a tuple of the non-None output fields in order.
            past_key_values: the deprecated name of `cache` (renamed with a warning, as BART does). Other `kwargs` go
                to the BART decoder (attention kwargs), never to the encoder.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        text = self.config.text_config
        if labels is not None:
            use_cache = False
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = shift_tokens_right(labels, text.pad_token_id, text.decoder_start_token_id)
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask, encoder_outputs=encoder_outputs, cache=cache,
            inputs_embeds=inputs_embeds, decoder_inputs_embeds=decoder_inputs_embeds, use_cache=use_cache,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            visual_features=visual_features, visual_boxes=visual_boxes, visual_attention_mask=visual_attention_mask,
            pixel_values=pixel_values, image_mask=image_mask, return_dict=True, **kwargs,
        )
        encoder_outputs, encoder_ran, attention_mask = outputs.encoder_outputs, outputs.encoder_ran, outputs.attention_mask
        hidden = outputs.last_hidden_state
        logits = self.lm_head(hidden) + self.final_logits_bias.to(hidden.dtype)

        is_full = isinstance(encoder_outputs, MMAPSEncoderOutput) and encoder_outputs.text_hidden_states is not None
        attribute_logits = None
        if self.attribute_head is not None and is_full and (encoder_ran or attribute_labels is not None):
            attribute_logits = self.attribute_head(encoder_outputs, attention_mask)

        losses = self._task_losses(
            logits, labels, attribute_logits, attribute_labels, encoder_outputs if is_full else None,
            attention_mask, visual_class_probs,
            labels is not None if return_auxiliary_losses is None else return_auxiliary_losses,
        )
        weights = {
            "summary_loss": self.config.summary_loss_weight, "attribute_loss": self.config.attribute_loss_weight,
            "alignment_loss": self.config.alignment_loss_weight, "contrastive_loss": self.config.contrastive_loss_weight,
            "region_loss": self.config.region_loss_weight,
        }
        total = None
        for name, value in losses.items():
            if value is not None:
                total = weights[name] * value if total is None else total + weights[name] * value
        if total is not None:
            # Tasks without pairs in this batch are reported as a constant 0 (no gradient), never None, so every
            # per-task loss is reportable; they are not part of `total`.
            losses = {name: logits.new_zeros((), dtype=torch.float32) if value is None else value
                      for name, value in losses.items()}

        output = MMAPSSeq2SeqLMOutput(
            loss=total, logits=logits, attribute_logits=attribute_logits, **losses,
            cache=outputs.cache, decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions, cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states, encoder_attentions=encoder_outputs.attentions,
            text_embeds=getattr(encoder_outputs, "text_embeds", None),
            image_embeds=getattr(encoder_outputs, "image_embeds", None),
        )
        return output if return_dict else output.to_tuple()

    # -- losses ----------------------------------------------------------------------------------------------------
    def _task_losses(
        self, logits: torch.Tensor, labels: torch.Tensor | None, attribute_logits: torch.Tensor | None,
        attribute_labels: torch.Tensor | None, encoder_outputs: MMAPSEncoderOutput | None,
        attention_mask: torch.Tensor | None, visual_class_probs: torch.Tensor | None, auxiliary: bool,
    ) -> dict[str, torch.Tensor | None]:
        """Each task's unweighted loss, or None where its weight is 0 or its inputs are absent."""
        config = self.config
        losses: dict[str, torch.Tensor | None] = dict.fromkeys(
            ("summary_loss", "attribute_loss", "alignment_loss", "contrastive_loss", "region_loss"))
        if labels is not None and config.summary_loss_weight > 0:
            losses["summary_loss"] = F.cross_entropy(logits.view(-1, logits.shape[-1]).float(),
                                                     labels.to(logits.device).view(-1), ignore_index=-100)
        if attribute_labels is not None:
            if self.attribute_head is None:
                raise ValueError("attribute_labels: given, but config.num_attributes == 0 (no attribute head)")
            if attribute_labels.shape != (logits.shape[0], config.num_attributes):
                raise ValueError(f"attribute_labels: expected shape {(logits.shape[0], config.num_attributes)} "
                                 f"(batch, config.num_attributes), got {tuple(attribute_labels.shape)}")
            if config.attribute_loss_weight > 0 and attribute_logits is not None:
                losses["attribute_loss"] = F.binary_cross_entropy_with_logits(
                    attribute_logits.float(), attribute_labels.to(attribute_logits.device).float())
        if not (auxiliary and config.use_visual and encoder_outputs is not None
                and encoder_outputs.visual_hidden_states is not None):
            return losses
        has_image = encoder_outputs.image_mask.bool()
        if not bool(has_image.any()):
            return losses
        text_mask = attention_mask[has_image]
        region_mask = encoder_outputs.visual_attention_mask[has_image]
        if config.alignment_loss_weight > 0 and config.alignment_loss_form == "original":
            distance = hausdorff_distance(
                encoder_outputs.text_hidden_states[has_image], text_mask,
                self.alignment_projection(encoder_outputs.visual_hidden_states[has_image]), region_mask)
            losses["alignment_loss"] = (distance.float() ** 2).mean()
        elif config.alignment_loss_weight > 0 and int(has_image.sum()) >= 2:
            losses["alignment_loss"] = token_region_contrastive_loss(
                self.alignment_text_projection(encoder_outputs.text_hidden_states[has_image]), text_mask,
                self.alignment_projection(encoder_outputs.visual_hidden_states[has_image]), region_mask,
                self.alignment_logit_scale.clamp(max=math.log(100.0)))
        if config.contrastive_loss_weight > 0 and int(has_image.sum()) >= 2:
            losses["contrastive_loss"] = image_text_contrastive_loss(
                self.text_projection(encoder_outputs.text_embeds[has_image]),
                self.image_projection(encoder_outputs.image_embeds[has_image]),
                self.logit_scale.clamp(max=math.log(100.0)))
        if config.region_loss_weight > 0:
            losses["region_loss"] = self._region_modelling_loss(encoder_outputs, visual_class_probs)
        return losses

    def _region_modelling_loss(self, encoder_outputs: MMAPSEncoderOutput,
                               visual_class_probs: torch.Tensor | None) -> torch.Tensor:
        """Mask `region_mask_ratio` of each imaged example's valid regions (≥1), re-encode, predict what was there.

        With detector distributions p: KL(p ‖ softmax(head(h))) averaged over masked regions; otherwise
        ‖head(h) − f‖² averaged over masked regions and feature dims.
        """
        config = self.config
        valid = encoder_outputs.visual_attention_mask.bool()
        region_embeds = encoder_outputs.region_embeds
        noise = torch.rand(valid.shape, device=valid.device)
        masked = (noise < config.region_mask_ratio) & valid
        # Guarantee one masked region per imaged example so every image contributes a target.
        forced = F.one_hot(noise.masked_fill(~valid, 2.0).argmin(-1), valid.shape[1]).bool() & valid.any(-1, keepdim=True)
        masked = masked | forced
        corrupted = torch.where(masked[..., None], self.model.encoder.visual_encoder.mask_embedding.to(region_embeds.dtype),
                                region_embeds)
        _, states = self.model.encoder.visual_encoder.encode(corrupted, valid.long())
        masked_states = states[masked]
        if visual_class_probs is not None and self.region_class_head is not None:
            if visual_class_probs.shape != (*valid.shape, config.num_region_classes):
                raise ValueError(f"visual_class_probs: expected shape {(*valid.shape, config.num_region_classes)} "
                                 f"(batch, regions, config.num_region_classes), got {tuple(visual_class_probs.shape)}")
            log_probs = F.log_softmax(self.region_class_head(masked_states).float(), dim=-1)
            return F.kl_div(log_probs, visual_class_probs[masked].float(), reduction="batchmean")
        prediction = self.region_feature_head(masked_states).float()
        return F.mse_loss(prediction, encoder_outputs.region_targets[masked].float())

    # -- conversion ------------------------------------------------------------------------------------------------
    @classmethod
    def from_bart_pretrained(cls, name_or_path: str, generation_config: GenerationConfig | None = None,
                             **config_overrides: Any) -> MMAPSForConditionalGeneration:
        """Start MMAPS from a BART checkpoint (e.g. `fnlp/bart-base-chinese`, `facebook/bart-base`).

        The shared embeddings, encoder, decoder, LM head and `final_logits_bias` are copied; the multimodal parts
        keep their fresh initialisation. `config_overrides` are MMAPSConfig fields. The BART generation settings
        (decoder start, forced BOS/EOS, beams) are carried over unless `generation_config` is given.
        """
        bart = BartForConditionalGeneration.from_pretrained(name_or_path)
        config = MMAPSConfig(text_config=bart.config.to_dict(), **config_overrides)
        model = cls(config)
        state = {}
        for key, value in bart.state_dict().items():
            if key.startswith("model.encoder."):
                key = "model.encoder.text_encoder." + key[len("model.encoder."):]
            state[key] = value
        result = model.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise ValueError(f"{name_or_path}: BART weights with no place in MMAPS: {result.unexpected_keys[:5]}")
        copied_prefixes = ("model.shared", "model.encoder.text_encoder.", "model.decoder.", "lm_head", "final_logits_bias")
        missing_bart = [k for k in result.missing_keys if k.startswith(copied_prefixes)]
        if missing_bart:
            raise ValueError(f"{name_or_path}: BART weights missing from the checkpoint: {missing_bart[:5]}")
        model.tie_weights()
        model.generation_config = generation_config or GenerationConfig.from_dict(bart.generation_config.to_dict())
        return model.to(bart.dtype)


__all__ = ["MMAPSEncoder", "box_area", "hausdorff_distance", "sinusoidal_positions", "token_region_contrastive_loss", "token_region_similarity", "MMAPSEncoderOutput", "MMAPSForConditionalGeneration", "MMAPSModel",
           "MMAPSPreTrainedModel", "MMAPSSeq2SeqLMOutput", "MMAPSSeq2SeqModelOutput"]
