"""CSMCIR: a symmetric, shared-parameter Q-Former dual tower for composed image retrieval.

Implements the model of Qian et al., "CSMCIR: CoT-Enhanced Symmetric Alignment with Memory Bank for Composed
Image Retrieval" (ACL Findings 2026), built from transformers' own BLIP-2 modules so that a BLIP-2 checkpoint
(`Blip2ForImageTextRetrieval`, e.g. `Salesforce/blip2-itm-vit-g`) maps onto it name for name.

* Query tower: reference image + modification text. With `config.query_mode="joint"` (default; the CSMCIR
  authors' released code) the query tokens and the text go through the Q-Former in one joint pass (query tokens
  cross-attend to the image, text tokens attend to the query tokens); the text [CLS] state, projected by
  `text_projection` and L2-normalised, is the query embedding. With `query_mode="sprc"` (SPRC's public code,
  `blip2_qformer_cir_align_prompt.py` `inference`) a second, image-free pass runs over [the joint pass's
  query-token outputs; text], every token taking the text branch, and its text [CLS] is projected instead.
* Target tower: target image + its MCoT caption, through **exactly the same code and parameters**. Without
  a caption (the asymmetric, SPRC-style ablation) the target is encoded from the image alone: the query
  tokens' outputs, projected by `vision_projection`, normalised per token, pooled, normalised again. With
  `config.target_representation="tokens"` targets keep their K per-token features `(K, D)` and are scored by
  the maximum over tokens (`CSMCIRModel.score`): image-only targets as in SPRC's `extract_target_features`;
  captioned targets from the query-token outputs of the joint [query tokens; caption] pass — our reading of the
  CSMCIR authors' `extract_target_caption_features`, whose code path we could not inspect in full.
* Loss: InfoNCE of each query against the batch's targets (`csmcir_contrastive_loss`), which also accepts
  extra negative logits — the memory bank (`memory_bank.py`) plugs in there.

This file is copied into every saved Hub folder: it imports only torch, transformers and its siblings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    BaseModelOutputWithPoolingAndCrossAttentions,
    ModelOutput,
)
from transformers.models.blip_2.configuration_blip_2 import Blip2VisionConfig
from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerModel, Blip2TextEmbeddings, Blip2VisionModel
from transformers.utils import logging

from .configuration_csmcir import CSMCIRConfig

logger = logging.get_logger(__name__)


def _is_tracing() -> bool:
    """True under `torch.compile`, `torch.export` and `torch.jit.trace`.

    Checks that read a tensor's *values* on the host (an attention-mask row with no tokens) cannot be traced: they run
    eagerly only. CSMCIRProcessor refuses the same inputs (empty texts) before they reach a compiled model.
    """
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def csmcir_contrastive_loss(
    logits_per_query: torch.Tensor,
    extra_negative_logits: torch.Tensor | None = None,
    target_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""InfoNCE of queries against in-batch targets, optionally with extra negatives.

    For query i with logits s_ij = cos(q_i, t_j) / τ over the batch's targets and extra negative logits
    e_im (e.g. from a memory bank, already scaled by 1/τ and weighted; -inf where not selected):

        L = -1/B Σ_i log( exp(s_ii) / (Σ_j m_ij exp(s_ij) + Σ_m exp(e_im)) )

    where m_ij = 0 when j ≠ i but t_j is the same target as t_i (`target_ids[j] == target_ids[i]`), a false
    negative, and 1 otherwise.

    Args:
        logits_per_query: `(B, B)` scaled similarities; the diagonal holds the positives.
        extra_negative_logits: `(B, M)` scaled logits of extra negatives; `-inf` entries are ignored.
        target_ids: `(B,)` integer identity of each target, to mask in-batch duplicates.
    """
    if logits_per_query.dim() != 2 or logits_per_query.shape[0] != logits_per_query.shape[1]:
        raise ValueError(f"logits_per_query must be square (B, B), got {tuple(logits_per_query.shape)}")
    batch_size = logits_per_query.shape[0]
    logits = logits_per_query
    if target_ids is not None:
        if target_ids.shape != (batch_size,):
            raise ValueError(f"target_ids must have shape ({batch_size},), got {tuple(target_ids.shape)}")
        duplicate = target_ids[:, None] == target_ids[None, :]
        duplicate.fill_diagonal_(False)
        logits = logits.masked_fill(duplicate, float("-inf"))
    if extra_negative_logits is not None:
        if extra_negative_logits.dim() != 2 or extra_negative_logits.shape[0] != batch_size:
            raise ValueError(
                f"extra_negative_logits must have shape ({batch_size}, M), got {tuple(extra_negative_logits.shape)}"
            )
        logits = torch.cat([logits, extra_negative_logits.to(logits.dtype)], dim=1)
    labels = torch.arange(batch_size, device=logits.device)
    return F.cross_entropy(logits, labels)


@dataclass
class CSMCIROutput(ModelOutput):
    r"""Output of [`CSMCIRModel.forward`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): in-batch InfoNCE (returned when `return_loss`).
        logits_per_query (`torch.FloatTensor` of shape `(B, B)`): `CSMCIRModel.score(query_embeds, target_embeds) / τ`.
        query_embeds (`torch.FloatTensor` of shape `(B, embed_dim)`): L2-normalised query embeddings.
        target_embeds (`torch.FloatTensor` of shape `(B, embed_dim)` or `(B, K, embed_dim)`): L2-normalised target
            embeddings (per-token with `config.target_representation="tokens"`).
        query_vision_model_output (`BaseModelOutputWithPooling`, *optional*): the vision tower's output on the
            reference images (`hidden_states` / `attentions` when requested); `None` when `image_embeds` were given.
        query_qformer_model_output (`BaseModelOutputWithPoolingAndCrossAttentions`): the Q-Former's output of the
            joint [query tokens; modification text] pass (`hidden_states`, `attentions`, `cross_attentions` when
            requested; the text [CLS] state is `last_hidden_state[:, num_query_tokens]`).
        target_vision_model_output (`BaseModelOutputWithPooling`, *optional*): the same for the target images.
        target_qformer_model_output (`BaseModelOutputWithPoolingAndCrossAttentions`): the target's Q-Former pass:
            [query tokens; caption] for captioned targets, the query tokens alone for image-only ones.

    As in BLIP-2's outputs, `to_tuple()` (and `return_dict=False`) turns the nested outputs into tuples too.
    """

    loss: torch.FloatTensor | None = None
    logits_per_query: torch.FloatTensor | None = None
    query_embeds: torch.FloatTensor | None = None
    target_embeds: torch.FloatTensor | None = None
    query_vision_model_output: BaseModelOutputWithPooling | None = None
    query_qformer_model_output: BaseModelOutputWithPoolingAndCrossAttentions | None = None
    target_vision_model_output: BaseModelOutputWithPooling | None = None
    target_qformer_model_output: BaseModelOutputWithPoolingAndCrossAttentions | None = None

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(value.to_tuple() if isinstance(value, ModelOutput) else value for value in self.values())


class CSMCIRQFormerTower(nn.Module):
    """One Q-Former tower: query tokens, text embeddings, Q-Former and the two projections.

    The shared (symmetric) model owns one of these and uses it for queries and targets. The unshared ablation
    (`config.share_qformer=False`) owns a second one for targets.
    """

    def __init__(self, config: CSMCIRConfig) -> None:
        super().__init__()
        qformer_config = config.qformer_config
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, qformer_config.hidden_size))
        self.embeddings = Blip2TextEmbeddings(qformer_config)
        self.qformer = Blip2QFormerModel._from_config(qformer_config)
        self.vision_projection = nn.Linear(qformer_config.hidden_size, config.embed_dim)
        self.text_projection = nn.Linear(qformer_config.hidden_size, config.embed_dim)


def _fused_features(
    tower: CSMCIRQFormerTower | "CSMCIRModel",
    image_embeds: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    **output_flags: Any,
) -> tuple[torch.Tensor, BaseModelOutputWithPoolingAndCrossAttentions]:
    """Joint query-token + text pass over an image: the projected, normalised text [CLS] state and the Q-Former's
    output (`output_flags`: `output_attentions` / `output_hidden_states`)."""
    batch_size = image_embeds.shape[0]
    query_tokens = tower.query_tokens.expand(batch_size, -1, -1)
    num_query = query_tokens.shape[1]
    embeddings = tower.embeddings(input_ids=input_ids, query_embeds=query_tokens)
    query_mask = torch.ones(batch_size, num_query, dtype=attention_mask.dtype, device=attention_mask.device)
    outputs = tower.qformer(
        query_embeds=embeddings,
        query_length=num_query,
        attention_mask=torch.cat([query_mask, attention_mask], dim=1),
        encoder_hidden_states=image_embeds,
        return_dict=True,
        **output_flags,
    )
    text_cls = outputs.last_hidden_state[:, num_query, :]
    text_cls = text_cls.to(tower.text_projection.weight.dtype)
    return F.normalize(tower.text_projection(text_cls), dim=-1), outputs


def _sprc_second_pass(
    tower: CSMCIRQFormerTower | "CSMCIRModel",
    joint_outputs: BaseModelOutputWithPoolingAndCrossAttentions,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """SPRC's image-free second pass (its `inference`: `Qformer.bert(text, query_embeds=fusion_output[:, :32])`
    without `encoder_hidden_states`): the projected, normalised text [CLS] of it.

    As in SPRC's `BertEmbeddings`, the word + position embeddings of the text (positions from 0) are appended to
    the first pass's query-token outputs and the embeddings LayerNorm (`qformer.layernorm` here) is applied to
    the whole concatenation, those outputs included. `query_length=0` with no image makes every token take
    self-attention and the text feed-forward branch, as SPRC's modified `BertLayer` does when
    `encoder_hidden_states` is None."""
    num_query = tower.query_tokens.shape[1]
    query_outputs = joint_outputs.last_hidden_state[:, :num_query, :]
    embeddings = tower.embeddings(input_ids=input_ids, query_embeds=query_outputs)
    query_mask = torch.ones(
        query_outputs.shape[0], num_query, dtype=attention_mask.dtype, device=attention_mask.device
    )
    outputs = tower.qformer(
        query_embeds=embeddings,
        query_length=0,
        attention_mask=torch.cat([query_mask, attention_mask], dim=1),
        return_dict=True,
    )
    text_cls = outputs.last_hidden_state[:, num_query, :].to(tower.text_projection.weight.dtype)
    return F.normalize(tower.text_projection(text_cls), dim=-1)


def _caption_token_features(
    tower: CSMCIRQFormerTower | "CSMCIRModel", joint_outputs: BaseModelOutputWithPoolingAndCrossAttentions
) -> torch.Tensor:
    """`(B, K, embed_dim)`: `vision_projection` of the query-token outputs of a joint [query tokens; caption] pass,
    normalised per token (our reading of the CSMCIR authors' `extract_target_caption_features`)."""
    num_query = tower.query_tokens.shape[1]
    tokens = joint_outputs.last_hidden_state[:, :num_query, :].to(tower.vision_projection.weight.dtype)
    return F.normalize(tower.vision_projection(tokens), dim=-1)


def _image_token_features(
    tower: CSMCIRQFormerTower | "CSMCIRModel", image_embeds: torch.Tensor, **output_flags: Any
) -> tuple[torch.Tensor, BaseModelOutputWithPoolingAndCrossAttentions]:
    """Image-only Q-Former pass: `(B, num_query_tokens, embed_dim)` per-token normalised features and the Q-Former's
    output."""
    query_tokens = tower.query_tokens.expand(image_embeds.shape[0], -1, -1)
    outputs = tower.qformer(
        query_embeds=query_tokens, encoder_hidden_states=image_embeds, return_dict=True, **output_flags
    )
    tokens = outputs.last_hidden_state.to(tower.vision_projection.weight.dtype)
    return F.normalize(tower.vision_projection(tokens), dim=-1), outputs


class CSMCIRPreTrainedModel(PreTrainedModel):
    config: CSMCIRConfig
    config_class = CSMCIRConfig
    base_model_prefix = "csmcir"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _supports_flash_attn = False  # the Q-Former is kept in fp32, which blocks flash attention
    _keep_in_fp32_modules = ["query_tokens", "qformer"]
    _no_split_modules = ["Blip2QFormerMultiHeadAttention", "Blip2EncoderLayer", "Blip2TextEmbeddings"]

    @torch.no_grad()
    @init.guard_torch_init_functions()
    def initialize_weights(self) -> None:
        """Initialise every module not loaded from a checkpoint, each sub-model (vision tower, Q-Former) with its
        own `_init_weights`, so that `from_pretrained` and `__init__` initialise alike.

        transformers' version skips, for custom-code models, every module whose *own* parameters are all loaded,
        which includes modules that own none: a CLIP attention or MLP block is skipped and its linear layers keep
        the generic std instead of CLIP's. The skip guards remote code that writes weights in place; every
        `_init_weights` reached here uses `transformers.initialization`, which leaves loaded tensors alone.
        """

        def apply(module: nn.Module, initialize: Any) -> None:
            for child in module.children():
                apply(child, child._initialize_weights if isinstance(child, PreTrainedModel) else initialize)
            initialize(module)

        apply(self, self._initialize_weights)

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, (CSMCIRModel, CSMCIRQFormerTower)):
            init.normal_(module.query_tokens, mean=0.0, std=std)
            if isinstance(module, CSMCIRModel):
                init.constant_(module.temperature, self.config.contrastive_temperature)
        elif isinstance(module, Blip2TextEmbeddings):
            # A non-persistent buffer: from_pretrained builds on the meta device and would leave it as garbage.
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)


def _build_vision_model(vision_config: Any) -> nn.Module:
    if isinstance(vision_config, Blip2VisionConfig):
        return Blip2VisionModel._from_config(vision_config)
    return AutoModel.from_config(vision_config)


def _require_tensor(name: str, value: Any, dims: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ValueError(
            f"`{name}` must be a torch.Tensor, got {type(value).__name__}; use CSMCIRProcessor to turn images and "
            "text into tensors."
        )
    if value.dim() not in dims:
        raise ValueError(f"`{name}` must have {' or '.join(map(str, dims))} dimensions, got shape {tuple(value.shape)}")
    return value


class CSMCIRModel(CSMCIRPreTrainedModel):
    r"""CSMCIR composed image retrieval model: a vision tower and one shared Q-Former for queries and targets.

    Submodules are named as in [`Blip2ForImageTextRetrieval`] (`vision_model`, `query_tokens`, `embeddings`,
    `qformer`, `vision_projection`, `text_projection`) so BLIP-2 weights load without renaming.

    Example:

    ```python
    >>> from modeling_csmcir.presets import preset_model
    >>> model, processor = preset_model("tiny")
    >>> query = processor(images=reference_image, text="make it red", return_tensors="pt")
    >>> target = processor(images=target_image, text="a red square on the left", return_tensors="pt")
    >>> q = model.get_query_features(**query)
    >>> t = model.get_target_features(**target)
    >>> score = model.score(q, t).item()  # q · t, or the max over t's tokens with target_representation="tokens"
    ```

    As a transformers model: `forward` takes `output_attentions` / `output_hidden_states` (every layer of the vision
    tower and the Q-Former, per tower, in `CSMCIROutput`) and `return_dict=False` (tuples);
    `config.get_text_config()` is the Q-Former's config, so `resize_token_embeddings` round-trips through
    `save_pretrained`; `torch.export` traces `forward` and `torch.compile(fullgraph=True)` compiles
    `get_query_features` / `get_target_features` (the checks that read tensor values, e.g. an attention-mask row with
    no tokens, run eagerly only; `CSMCIRProcessor` refuses empty texts before they reach a traced model).

    Common behaviours that do not apply here, and why:

    * `inputs_embeds`: text reaches the Q-Former only through `Blip2TextEmbeddings`, which embeds `input_ids` and
      prepends the learnt query tokens; the pre-computed input this model takes is the image side's
      (`image_embeds` / `target_image_embeds`, from `get_image_embeds`).
    * Generation, caches (`past_key_values`, `use_cache`), output embeddings and weight tying: a retrieval encoder
      with no language-model head.
    * A single-input `forward`: it scores queries against targets, so it needs both sides (`labels` are implicit:
      query i's positive is target i). The one-sided encoders are `get_query_features` / `get_target_features`.
    * Attention weights under SDPA: `output_attentions` needs `attn_implementation="eager"`, as for every transformers
      model (SDPA computes no weights).
    """

    # A contrastive loss is a per-batch mean: it must not be rescaled by the Trainer's num_items_in_batch.
    accepts_loss_kwargs = False

    def __init__(self, config: CSMCIRConfig) -> None:
        super().__init__(config)
        qformer_config = config.qformer_config
        self.vision_model = _build_vision_model(config.vision_config)
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, qformer_config.hidden_size))
        self.embeddings = Blip2TextEmbeddings(qformer_config)
        self.qformer = Blip2QFormerModel._from_config(qformer_config)
        self.vision_projection = nn.Linear(qformer_config.hidden_size, config.embed_dim)
        self.text_projection = nn.Linear(qformer_config.hidden_size, config.embed_dim)
        self.temperature = nn.Parameter(torch.tensor(float(config.contrastive_temperature)))
        # The ablation with two unshared towers; None in the symmetric model (the paper's design).
        self.target_tower = None if config.share_qformer else CSMCIRQFormerTower(config)
        self.post_init()
        if config.freeze_vision:
            self.set_vision_frozen(True)

    def set_vision_frozen(self, frozen: bool = True) -> None:
        """Freeze (BLIP-2 / SPRC fine-tuning) or unfreeze the vision tower: sets `config.freeze_vision` (saved with
        the model), the tower's `requires_grad`, and its mode (a frozen tower stays in eval mode, see `train`)."""
        self.config.freeze_vision = bool(frozen)
        self.vision_model.requires_grad_(not frozen)
        self.train(self.training)

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embeddings.word_embeddings = value

    def train(self, mode: bool = True) -> "CSMCIRModel":
        """Like `nn.Module.train`, but a frozen vision tower stays in eval mode (no dropout on fixed features)."""
        super().train(mode)
        if self.config.freeze_vision:
            self.vision_model.eval()
        return self

    @property
    def logit_scale(self) -> torch.Tensor:
        """1 / τ with τ the learnable temperature clamped to `config.min_temperature`."""
        return 1.0 / self.temperature.clamp(min=self.config.min_temperature)

    @property
    def _target_tower(self) -> "CSMCIRQFormerTower | CSMCIRModel":
        return self if self.target_tower is None else self.target_tower

    # ----------------------------------------------------------------------------------------------- features

    def get_image_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Vision tower features `(B, N, vision_hidden_size)` that the Q-Former cross-attends to.

        With a frozen tower they can be computed once and passed back as `image_embeds` to every other
        method (gallery encoding, training with cached features).
        """
        return self._vision_outputs(pixel_values).last_hidden_state

    def _vision_outputs(self, pixel_values: torch.Tensor, name: str = "", **output_flags: Any) -> BaseModelOutputWithPooling:
        pixel_values = _require_tensor(f"{name}pixel_values", pixel_values, (4,))
        parameter = next(self.vision_model.parameters())
        pixel_values = pixel_values.to(device=parameter.device, dtype=parameter.dtype)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_vision):
            return self.vision_model(pixel_values=pixel_values, return_dict=True, **output_flags)

    def _resolve_image_embeds(
        self, pixel_values: torch.Tensor | None, image_embeds: torch.Tensor | None, name: str, **output_flags: Any
    ) -> tuple[torch.Tensor, BaseModelOutputWithPooling | None]:
        """The image features of one side and the vision tower's output (None for cached `image_embeds`)."""
        if image_embeds is not None:
            return _require_tensor(f"{name}image_embeds", image_embeds, (3,)), None
        if pixel_values is None:
            raise ValueError(
                f"`{name}pixel_values` is missing: CSMCIR needs an image on this side (or precomputed "
                f"`{name}image_embeds` from `get_image_embeds`)."
            )
        vision_outputs = self._vision_outputs(pixel_values, name, **output_flags)
        return vision_outputs.last_hidden_state, vision_outputs

    @staticmethod
    def _check_text(name: str, input_ids: Any, attention_mask: Any, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids = _require_tensor(f"{name}input_ids", input_ids, (2,))
        if input_ids.shape[1] == 0:
            raise ValueError(f"`{name}input_ids` is empty (shape {tuple(input_ids.shape)}): the text has no tokens.")
        if input_ids.shape[0] != batch_size:
            raise ValueError(
                f"`{name}input_ids` has batch size {input_ids.shape[0]} but the images have batch size {batch_size}."
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = _require_tensor(f"{name}attention_mask", attention_mask, (2,))
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"`{name}attention_mask` has shape {tuple(attention_mask.shape)}, expected {tuple(input_ids.shape)} "
                f"like `{name}input_ids`."
            )
        if not _is_tracing() and not bool((attention_mask.sum(dim=1) > 0).all()):
            empty = (attention_mask.sum(dim=1) == 0).nonzero().flatten().tolist()
            raise ValueError(f"`{name}attention_mask` masks every token of rows {empty}: empty text.")
        return input_ids, attention_mask

    def _encode(
        self,
        tower: CSMCIRQFormerTower | "CSMCIRModel",
        pixel_values: torch.Tensor | None,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        image_embeds: torch.Tensor | None,
        text_required: bool,
        **output_flags: Any,
    ) -> tuple[torch.Tensor, BaseModelOutputWithPooling | None, BaseModelOutputWithPoolingAndCrossAttentions]:
        """One side of the dual tower: its embeddings, the vision tower's output and the Q-Former's. Queries and
        captioned targets take the same joint pass; only targets may come without text (image-only).

        `text_required` marks the query side. Targets in `target_representation="tokens"` return `(B, K, D)`;
        everything else `(B, D)`. In `query_mode="sprc"` the returned Q-Former output is the joint (first) pass's."""
        image_embeds, vision_outputs = self._resolve_image_embeds(pixel_values, image_embeds, "", **output_flags)
        if input_ids is None and text_required:
            raise ValueError("`input_ids` is missing: a composed query needs the modification text.")
        target_tokens = not text_required and self.config.target_representation == "tokens"
        if input_ids is not None:
            input_ids, attention_mask = self._check_text("", input_ids, attention_mask, image_embeds.shape[0])
            embeds, qformer_outputs = _fused_features(tower, image_embeds, input_ids, attention_mask, **output_flags)
            if target_tokens:
                return _caption_token_features(tower, qformer_outputs), vision_outputs, qformer_outputs
            if self.config.query_mode == "sprc":
                embeds = _sprc_second_pass(tower, qformer_outputs, input_ids, attention_mask)
            return embeds, vision_outputs, qformer_outputs
        tokens, qformer_outputs = _image_token_features(tower, image_embeds, **output_flags)
        if target_tokens:
            return tokens, vision_outputs, qformer_outputs
        pooled = tokens[:, 0] if self.config.image_only_pooling == "first" else tokens.mean(dim=1)
        return F.normalize(pooled, dim=-1), vision_outputs, qformer_outputs

    def get_query_features(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        r"""Query embeddings `(B, embed_dim)`, L2-normalised.

        q = normalize(W_text · QFormer([query_tokens; embed(text)], cross-attending to ViT(reference))[CLS_text])
        with `config.query_mode="joint"`; with `"sprc"`, h = QFormer(...)[:K] (the joint pass's query-token outputs)
        and q = normalize(W_text · QFormer_text-only([h; embed(text)])[CLS_text]) (SPRC's second pass).
        """
        return self._encode(self, pixel_values, input_ids, attention_mask, image_embeds, text_required=True)[0]

    def get_target_features(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        r"""Target embeddings: `(B, embed_dim)` (`config.target_representation="vector"`) or `(B, K, embed_dim)`
        (`"tokens"`, K = `num_query_tokens`), L2-normalised (per token for `"tokens"`).

        `"vector"`: with a caption (`input_ids`), exactly the query computation on (target image, caption): the
        symmetric tower. Without one, image only: t = normalize(pool_k normalize(W_vision · QFormer(query_tokens,
        ViT)_k)).

        `"tokens"`: without a caption, t_k = normalize(W_vision · QFormer(query_tokens, ViT)_k) — SPRC's
        `extract_target_features`. With a caption, t_k = normalize(W_vision · QFormer([query_tokens; caption],
        ViT)_k), the query-token outputs of the joint pass — our reading of the CSMCIR authors'
        `extract_target_caption_features`. Score either kind with `score`.
        """
        return self._encode(
            self._target_tower, pixel_values, input_ids, attention_mask, image_embeds, text_required=False
        )[0]

    def get_image_token_features(
        self, pixel_values: torch.Tensor | None = None, image_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-query-token image features `(B, num_query_tokens, embed_dim)`, each normalised (BLIP-2's ITC image side)."""
        image_embeds, _ = self._resolve_image_embeds(pixel_values, image_embeds, "")
        return _image_token_features(self._target_tower, image_embeds)[0]

    @staticmethod
    def score(
        query_embeds: torch.Tensor, target_embeds: torch.Tensor, logit_scale: torch.Tensor | float | None = None
    ) -> torch.Tensor:
        r"""Cosine scores `(Q, T)` of queries `(Q, D)` against targets `(T, D)` or token-level targets `(T, K, D)`.

        Vectors: `s_qt = q · t`. Tokens: `s_qt = max_k q · t_k`, the maximum over the target's tokens (SPRC's
        `inference`: `sim_t2q.max(-1)`). Unscaled unless `logit_scale` (1 / τ, applied to the queries before the
        product, a positive factor that commutes with the maximum) is given: `forward`'s logits are
        `score(q, t, model.logit_scale)`.
        """
        if query_embeds.dim() != 2:
            raise ValueError(f"score: query_embeds must be (Q, D), got shape {tuple(query_embeds.shape)}")
        if target_embeds.dim() not in (2, 3) or target_embeds.shape[-1] != query_embeds.shape[-1]:
            raise ValueError(
                f"score: target_embeds must be (T, {query_embeds.shape[-1]}) or (T, K, {query_embeds.shape[-1]}), "
                f"got shape {tuple(target_embeds.shape)}"
            )
        target_embeds = target_embeds.to(query_embeds.dtype)
        if logit_scale is not None:
            query_embeds = logit_scale * query_embeds
        if target_embeds.dim() == 2:
            return query_embeds @ target_embeds.t()
        num_targets, num_tokens, dim = target_embeds.shape
        tokens = query_embeds @ target_embeds.reshape(num_targets * num_tokens, dim).t()
        return tokens.view(query_embeds.shape[0], num_targets, num_tokens).amax(dim=-1)

    # ------------------------------------------------------------------------------------------------ forward

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        target_pixel_values: torch.Tensor | None = None,
        target_input_ids: torch.Tensor | None = None,
        target_attention_mask: torch.Tensor | None = None,
        target_ids: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        target_image_embeds: torch.Tensor | None = None,
        return_loss: bool = True,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> CSMCIROutput | tuple[Any, ...]:
        r"""Encode queries and targets and score every query against every target of the batch.

        Args:
            pixel_values / image_embeds: reference images (or their cached vision features).
            input_ids, attention_mask: modification texts.
            target_pixel_values / target_image_embeds: target images (or cached features).
            target_input_ids, target_attention_mask: target captions; omit for image-only targets.
            target_ids: `(B,)` identity of each target; duplicates inside a batch are not used as negatives.
            return_loss: compute the in-batch InfoNCE (`csmcir_contrastive_loss`).
            output_attentions / output_hidden_states: return every layer's attentions (self- and, in the Q-Former,
                cross-attentions; needs `attn_implementation="eager"`) / hidden states, in the four per-tower
                outputs (`query_vision_model_output`, `query_qformer_model_output`, `target_vision_model_output`,
                `target_qformer_model_output`). Default: the config's.
            return_dict: `False` returns `CSMCIROutput.to_tuple()` (fields that are `None` left out, nested outputs as
                tuples). Default: `config.return_dict` (True).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_flags = {
            "output_attentions": self.config.output_attentions if output_attentions is None else output_attentions,
            "output_hidden_states": (
                self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
            ),
        }
        query_embeds, query_vision, query_qformer = self._encode(
            self, pixel_values, input_ids, attention_mask, image_embeds, text_required=True, **output_flags
        )
        if target_pixel_values is None and target_image_embeds is None:
            raise ValueError("`target_pixel_values` is missing: the forward pass scores queries against targets.")
        target_embeds, target_vision, target_qformer = self._encode(
            self._target_tower, target_pixel_values, target_input_ids, target_attention_mask, target_image_embeds,
            text_required=False, **output_flags,
        )
        if target_embeds.shape[0] != query_embeds.shape[0]:
            raise ValueError(
                f"Batch size mismatch: {query_embeds.shape[0]} queries (`pixel_values`/`input_ids`) but "
                f"{target_embeds.shape[0]} targets (`target_pixel_values`): each query needs its target."
            )
        logits_per_query = self.score(query_embeds, target_embeds, self.logit_scale)
        loss = None
        if return_loss:
            if target_ids is not None:
                target_ids = _require_tensor("target_ids", target_ids, (1,)).to(logits_per_query.device)
            loss = csmcir_contrastive_loss(logits_per_query, target_ids=target_ids)
        output = CSMCIROutput(
            loss=loss,
            logits_per_query=logits_per_query,
            query_embeds=query_embeds,
            target_embeds=target_embeds,
            query_vision_model_output=query_vision,
            query_qformer_model_output=query_qformer,
            target_vision_model_output=target_vision,
            target_qformer_model_output=target_qformer,
        )
        return output if return_dict else output.to_tuple()

    # ------------------------------------------------------------------------------------------------ vocabulary

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        """Resize the Q-Former's word embeddings (and, in the unshared ablation, the target tower's to the same size);
        `config.qformer_config.vocab_size` (what `config.get_text_config()` returns) follows, so the resized model
        saves and reloads."""
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        if self.target_tower is not None and (new_num_tokens is not None or pad_to_multiple_of is not None):
            target_embeddings = self.target_tower.embeddings
            target_embeddings.word_embeddings = self._get_resized_embeddings(
                target_embeddings.word_embeddings, embeddings.weight.shape[0], mean_resizing=mean_resizing
            )
        return embeddings

    # ------------------------------------------------------------------------------------------------ BLIP-2

    @classmethod
    def from_blip2_pretrained(cls, pretrained_model_name_or_path: str, **config_overrides: Any) -> "CSMCIRModel":
        """Build a CSMCIR model from a transformers BLIP-2 checkpoint.

        Works with `Blip2ForImageTextRetrieval` (e.g. `Salesforce/blip2-itm-vit-g`): vision tower, Q-Former, text
        embeddings, query tokens and both projections are copied; the temperature too when present. With a
        `Blip2Model` / `Blip2ForConditionalGeneration` checkpoint there are no text embeddings or projections:
        those keep their fresh initialisation (a warning lists them).
        """
        from transformers import AutoConfig, Blip2ForImageTextRetrieval, Blip2Model

        blip2_config = AutoConfig.from_pretrained(pretrained_model_name_or_path)
        architectures = blip2_config.architectures or []
        peer_class = Blip2Model if any("Blip2Model" == a or "Generation" in a for a in architectures) else None
        peer_class = peer_class or Blip2ForImageTextRetrieval
        peer = peer_class.from_pretrained(pretrained_model_name_or_path)
        qformer_config = blip2_config.qformer_config.to_dict()
        qformer_config["use_qformer_text_input"] = True
        settings: dict[str, Any] = dict(
            vision_config=blip2_config.vision_config,
            qformer_config=qformer_config,
            num_query_tokens=blip2_config.num_query_tokens,
            embed_dim=getattr(blip2_config, "image_text_hidden_size", 256),
        )
        settings.update(config_overrides)
        model = cls(CSMCIRConfig(**settings))
        source = {k: v for k, v in peer.state_dict().items() if not k.startswith(("itm_head", "language_model"))}
        source = {("temperature" if k == "temp" else k): v for k, v in source.items()}
        if "temperature" in source and source["temperature"].dim() == 1:
            source["temperature"] = source["temperature"].reshape(())
        missing, unexpected = model.load_state_dict(source, strict=False)
        # transformers' BLIP-2 retrieval model has no temperature (it computes no loss): keep the configured init.
        missing = [k for k in missing if not k.startswith("target_tower.") and k != "temperature"]
        unexpected = [k for k in unexpected if not k.startswith(("language_projection", "qformer.layernorm_lm"))]
        if unexpected:
            logger.warning("BLIP-2 weights not used by CSMCIR: %s", ", ".join(sorted(unexpected)))
        if missing:
            logger.warning("CSMCIR weights not found in the BLIP-2 checkpoint (freshly initialised): %s", ", ".join(missing))
        if model.target_tower is not None:
            model.target_tower.load_state_dict(
                {k: v for k, v in source.items() if k.split(".")[0] in dict(model.target_tower.named_children())
                 or k == "query_tokens"},
                strict=False,
            )
        return model


__all__ = ["CSMCIRModel", "CSMCIRPreTrainedModel", "CSMCIROutput", "CSMCIRQFormerTower", "csmcir_contrastive_loss"]
