"""Configuration of CSMCIR (Qian et al., "CSMCIR: CoT-Enhanced Symmetric Alignment with Memory Bank for
Composed Image Retrieval", ACL Findings 2026).

A CSMCIR model is a vision backbone (any transformers vision config; BLIP-2's ViT by default) feeding one
BLIP-2 Q-Former that encodes both the query (reference image + modification text) and the target
(target image + its MCoT caption). This file is copied into every saved Hub folder, so it imports only
`transformers` (Hub rule: flat, sibling-only).
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig
from transformers.models.blip_2.configuration_blip_2 import Blip2QFormerConfig, Blip2VisionConfig
from transformers.utils import logging

logger = logging.get_logger(__name__)


def _vision_config_from(value: PretrainedConfig | dict[str, Any] | None) -> PretrainedConfig:
    """Accepts a config object, a dict with a `model_type` (any registered vision config) or None (BLIP-2 ViT)."""
    if value is None:
        return Blip2VisionConfig()
    if isinstance(value, PretrainedConfig):
        return value
    if isinstance(value, dict):
        value = dict(value)
        model_type = value.pop("model_type", "blip_2_vision_model")
        if model_type == "blip_2_vision_model":
            return Blip2VisionConfig(**value)
        return AutoConfig.for_model(model_type, **value)
    raise ValueError(f"vision_config must be a PretrainedConfig, a dict or None, got {type(value).__name__}")


#: Vision towers whose forward needs more than `pixel_values` (CSMCIR passes only pixels), refused at config time
#: rather than at the first forward.
UNSUPPORTED_VISION_MODEL_TYPES = {
    "siglip2_vision_model": (
        "SigLIP-2's NaFlex vision tower needs `pixel_attention_mask` and `spatial_shapes` (from "
        "Siglip2ImageProcessor's variable-resolution patches) besides the pixels, and CSMCIR feeds its vision tower "
        "fixed-size `pixel_values` only. Use a SiglipVisionConfig (fixed resolution), CLIPVisionConfig, "
        "Dinov2Config or Blip2VisionConfig instead."
    ),
}


def _check_vision_config(vision_config: PretrainedConfig) -> None:
    model_type = getattr(vision_config, "model_type", "")
    if model_type in UNSUPPORTED_VISION_MODEL_TYPES:
        raise ValueError(
            f"vision_config {type(vision_config).__name__} (model_type={model_type!r}) is not supported: "
            f"{UNSUPPORTED_VISION_MODEL_TYPES[model_type]}"
        )
    if isinstance(getattr(vision_config, "vision_config", None), PretrainedConfig):
        raise ValueError(
            f"vision_config is a whole {type(vision_config).__name__} (model_type={model_type!r}), not a vision "
            "tower's config: pass its `.vision_config` (e.g. CLIPConfig(...).vision_config)."
        )


def _vision_hidden_size(vision_config: PretrainedConfig) -> int:
    for name in ("hidden_size", "embed_dim", "hidden_dim"):
        size = getattr(vision_config, name, None)
        if isinstance(size, int):
            return size
    raise ValueError(
        f"vision_config ({type(vision_config).__name__}) has no `hidden_size`: CSMCIR needs the width of the "
        "vision tower's patch features to size the Q-Former's cross-attention."
    )


#: `CSMCIRConfig.query_mode` values.
QUERY_MODES = ("joint", "sprc")
#: `CSMCIRConfig.target_representation` values.
TARGET_REPRESENTATIONS = ("vector", "tokens")


class CSMCIRConfig(PretrainedConfig):
    r"""Configuration for [`CSMCIRModel`].

    Args:
        vision_config (`PretrainedConfig` or `dict`, *optional*):
            Any transformers vision backbone config (BLIP-2 ViT by default; CLIP, SigLIP and DINOv2 vision
            towers work too). Its `last_hidden_state` is what the Q-Former cross-attends to. Towers that need more
            than `pixel_values` (SigLIP-2's NaFlex `Siglip2VisionConfig`) and whole multimodal configs (`CLIPConfig`:
            pass its `.vision_config`) are refused here, with the reason.
        qformer_config (`Blip2QFormerConfig` or `dict`, *optional*):
            The Q-Former. Text input is always enabled (`use_qformer_text_input=True`) because both towers feed
            text through it. Its `encoder_hidden_size` must equal the vision width: when it is left unset it is
            derived from `vision_config`; an explicit, different value is refused.
        num_query_tokens (`int`, defaults to 32): learnable query tokens prepended to the text.
        embed_dim (`int`, defaults to 256): width of the projected, L2-normalised retrieval embeddings.
        temperature (`float`, defaults to 0.07): initial value of the learnable InfoNCE temperature τ
            (logits = cos / τ); clamped to `min_temperature` during use. Stored as `contrastive_temperature`,
            because `config.temperature` is reserved for generation settings in transformers.
        min_temperature (`float`, defaults to 1e-3): lower clamp of τ, as in BLIP-2.
        freeze_vision (`bool`, defaults to `True`): the vision tower gets no gradients (SPRC / CSMCIR setting).
        max_text_length (`int`, defaults to 32): text length used by the processor (SPRC uses 32).
        share_qformer (`bool`, defaults to `True`): the symmetric dual tower. `False` builds a second,
            unshared Q-Former (and text embeddings, query tokens, projection) for the target side — an ablation.
        image_only_pooling (`str`, defaults to `"mean"`): how image-only targets (no caption: the asymmetric,
            SPRC-style mode) turn their `num_query_tokens` projected tokens into one vector: `"mean"` or `"first"`.
            Used with `target_representation="vector"` only.
        query_mode (`str`, defaults to `"joint"`): how a text [CLS] feature (the query; a captioned target in
            `"vector"` mode) is computed. `"joint"`: one pass of [query tokens; text] over the image, the text [CLS]
            state → `text_projection` (the CSMCIR authors' released code). `"sprc"`: SPRC's two passes (its public
            `blip2_qformer_cir_align_prompt.py`, `inference`): the joint pass, then a second, image-free pass over
            [the first pass's query-token outputs; text] in which every token takes the text branch (no
            cross-attention, text feed-forward); the text [CLS] of the *second* pass → `text_projection`.
        target_representation (`str`, defaults to `"vector"`): `"vector"`: one `(embed_dim,)` vector per target
            (the text [CLS] feature for captioned targets, pooled query tokens for image-only ones). `"tokens"`:
            `num_query_tokens` per-token features `(K, embed_dim)`, each L2-normalised, scored by the maximum over
            tokens (`CSMCIRModel.score`). Image-only targets then follow SPRC's `extract_target_features`
            (`vision_projection` of the image-only query-token outputs); captioned targets are our reading of the
            CSMCIR authors' `extract_target_caption_features`: `vision_projection` of the query-token outputs of
            the joint [query tokens; caption] pass over the target image.
    """

    model_type = "csmcir"
    sub_configs = {"vision_config": AutoConfig, "qformer_config": Blip2QFormerConfig}
    # The per-tower vision / Q-Former outputs are for inspection: the Trainer's prediction loop must not collect them
    # as logits (they are large and their text length varies from batch to batch).
    keys_to_ignore_at_inference = [
        "query_vision_model_output", "query_qformer_model_output", "target_vision_model_output",
        "target_qformer_model_output",
    ]

    def __init__(
        self,
        vision_config: PretrainedConfig | dict[str, Any] | None = None,
        qformer_config: Blip2QFormerConfig | dict[str, Any] | None = None,
        num_query_tokens: int = 32,
        embed_dim: int = 256,
        temperature: float = 0.07,
        min_temperature: float = 1e-3,
        freeze_vision: bool = True,
        max_text_length: int = 32,
        share_qformer: bool = True,
        image_only_pooling: str = "mean",
        query_mode: str = "joint",
        target_representation: str = "vector",
        initializer_range: float = 0.02,
        **kwargs: Any,
    ) -> None:
        self.vision_config = _vision_config_from(vision_config)
        _check_vision_config(self.vision_config)
        vision_width = _vision_hidden_size(self.vision_config)

        if qformer_config is None:
            qformer_config = {}
        if isinstance(qformer_config, dict):
            qformer_config = dict(qformer_config)
            qformer_config.pop("model_type", None)
            qformer_config.setdefault("encoder_hidden_size", vision_width)
            qformer_config["use_qformer_text_input"] = True
            qformer_config = Blip2QFormerConfig(**qformer_config)
        elif not isinstance(qformer_config, Blip2QFormerConfig):
            raise ValueError(
                f"qformer_config must be a Blip2QFormerConfig, a dict or None, got {type(qformer_config).__name__}"
            )
        if qformer_config.encoder_hidden_size != vision_width:
            raise ValueError(
                f"qformer_config.encoder_hidden_size={qformer_config.encoder_hidden_size} does not match the vision "
                f"tower's hidden size {vision_width} ({type(self.vision_config).__name__}): the Q-Former's "
                "cross-attention reads the vision features, so the two must agree. Leave encoder_hidden_size unset "
                "to derive it from vision_config."
            )
        if not qformer_config.use_qformer_text_input:
            logger.info("CSMCIR feeds text through the Q-Former: enabling use_qformer_text_input.")
            qformer_config.use_qformer_text_input = True
        self.qformer_config = qformer_config

        for name, value in (("num_query_tokens", num_query_tokens), ("embed_dim", embed_dim)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        # `temperature` is a generation parameter name that save_pretrained refuses on a model config.
        temperature = kwargs.pop("contrastive_temperature", temperature)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if image_only_pooling not in ("mean", "first"):
            raise ValueError(f"image_only_pooling must be 'mean' or 'first', got {image_only_pooling!r}")
        if query_mode not in QUERY_MODES:
            raise ValueError(
                f"query_mode must be one of {QUERY_MODES} ('joint': one [query tokens; text] pass, the CSMCIR "
                f"authors' computation; 'sprc': SPRC's second, image-free pass), got {query_mode!r}"
            )
        if target_representation not in TARGET_REPRESENTATIONS:
            raise ValueError(
                f"target_representation must be one of {TARGET_REPRESENTATIONS} ('vector': one embedding per target; "
                f"'tokens': num_query_tokens per-token embeddings scored by their maximum), got "
                f"{target_representation!r}"
            )
        if max_text_length > qformer_config.max_position_embeddings:
            raise ValueError(
                f"max_text_length={max_text_length} exceeds the Q-Former's max_position_embeddings="
                f"{qformer_config.max_position_embeddings}"
            )

        self.num_query_tokens = num_query_tokens
        self.embed_dim = embed_dim
        self.contrastive_temperature = float(temperature)
        self.min_temperature = float(min_temperature)
        self.freeze_vision = freeze_vision
        self.max_text_length = max_text_length
        self.share_qformer = share_qformer
        self.image_only_pooling = image_only_pooling
        self.query_mode = query_mode
        self.target_representation = target_representation
        self.initializer_range = initializer_range
        super().__init__(**kwargs)

    def get_text_config(self, decoder: bool | None = None, encoder: bool | None = None) -> Blip2QFormerConfig:
        """The Q-Former's config: the only text model here (its `vocab_size` sizes the text embeddings, so
        `resize_token_embeddings` updates it there). CSMCIR has no decoder; `decoder` / `encoder` change nothing."""
        return self.qformer_config

    @property
    def vision_hidden_size(self) -> int:
        return _vision_hidden_size(self.vision_config)


__all__ = ["CSMCIRConfig"]
