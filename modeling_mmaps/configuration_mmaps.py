"""Configuration of MMAPS, multimodal attribute-aware product summarization (a BART seq2seq model with a visual side).

MMAPS (KDEGroup/MMAPS, 2024) extends BART with a text [CLS], a visual transformer over detector regions (or over
the patch features of a vision backbone), a gated text-to-region attention fusion, and four auxiliary training
tasks. This file holds only the configuration; the model lives in ``modeling_mmaps.py``.

Hub rule: this file is copied next to saved weights, so it imports only torch/transformers.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import logging

logger = logging.get_logger(__name__)

class MMAPSConfig(PreTrainedConfig):
    r"""Configuration of [`MMAPSForConditionalGeneration`].

    Args:
        text_config (`dict` or `BartConfig`): the BART encoder-decoder (e.g. `fnlp/bart-base-chinese`'s config).
        vision_config (`dict` or `PreTrainedConfig`, *optional*): a vision backbone (CLIP/ViT/SigLIP vision tower)
            built with `AutoModel.from_config` and run on `pixel_values`; its patch states are the "regions". When
            `None`, the model reads pre-extracted region features (`visual_features`, `visual_boxes`).
        visual_feature_dim (`int`): size of one pre-extracted region feature (2048 for Faster R-CNN).
        max_regions (`int`): most regions per image (36 in the original).
        num_region_classes (`int`): size of the detector class distribution used by masked region modelling
            (1601 for the Visual Genome detector); 0 disables the classification target (feature regression only).
        visual_hidden_size (`int`, *optional*): width of the visual transformer; defaults to the text `d_model`.
        num_visual_layers, num_visual_attention_heads, visual_intermediate_size, visual_dropout: visual transformer.
        fusion_hidden_size (`int`): width of the single-head text-to-region attention and its forget gate (256).
        num_attributes (`int`): size of the attribute vocabulary (0 = no attribute head).
        summary_loss_weight, attribute_loss_weight, alignment_loss_weight, contrastive_loss_weight,
        region_loss_weight (`float`): task weights, total = Σ w_i · L_i (defaults 1.0/0.3/0.3/0.05/0.8 as in the
            original). A weight of 0 skips the task entirely.
        region_mask_ratio (`float`): share of an image's valid regions masked for region modelling (0.15).
        attribute_threshold (`float`): probability above which an attribute is predicted present.
        contrastive_logit_scale_init (`float`): initial log of the image-text contrast's inverse temperature.
        use_visual (`bool`): build the visual encoder, fusion and the three visual tasks.
        use_text_cls (`bool`): append a learned text [CLS] to the encoder input. With `use_visual=False` and
            `use_text_cls=False` the model computes exactly BART.

    The original's forms (github KDEGroup/MMAPS), each selectable; the defaults are ours, for the reason given:
        visual_encoder_style (`str`): `"mmaps"` (default): post-LN layers with GELU and no positions over
            [CLS; regions] — the regions are an unordered set, their boxes already say where they are. `"original"`:
            the original's `ImageTransformerEncoder`: input × √d, sinusoidal positions over [CLS; regions], ReLU
            feed-forward (PyTorch's `TransformerEncoderLayer`), plus a region-order and an image-order embedding added
            to each region (the original reads the region-order rows from the word-embedding table; here the table is
            the visual encoder's own, so visual gradients never reach the word embeddings).
        attribute_pooling (`str`): `"mean"` (default): masked mean of the text and fused states, so the logits do not
            grow with the text length (CEPSUM inputs run from tens to 400 characters). `"sum"`: the original's sum.
        contrastive_projection_dim (`int`, *optional*): width of the image–text contrast head (bias-free linear maps
            of the two [CLS] vectors). Default `fusion_hidden_size` (256 in the original's fusion), ours; the
            original uses `d_model` (768 → 768). With `contrastive_logit_scale_init`: ours log(1/0.07) (scale ≈ 14.3,
            CLIP's), the original 1.0 (scale e ≈ 2.72).
        alignment_loss_form (`str`): `"contrastive"` (default): `token_region_contrastive_loss` over the batch (a
            collapsed encoder cannot satisfy it). `"original"`: the original's fine-grained Hausdorff *distance*
            between each product's text states and its own regions (mapped by a d→d→d MLP), squared and averaged,
            with padding masked on both sides (the original does not mask it — a bug not reproduced).
        box_area_form (`str`): `"corrected"` (default): area = (x2 − x1)(y2 − y1) of an (x1, y1, x2, y2) box. The
            original computes (b3 − b2)(b1 − b0), which for its (x1, y1, x2, y2) boxes is (y2 − x2)(y1 − x1): a
            coordinate swap, a bug we fix. `"original"` reproduces it for comparisons.
    """

    model_type = "mmaps"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="bart"),
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model", optional=True),
    }

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    visual_feature_dim: int = 2048
    max_regions: int = 36
    num_region_classes: int = 1601
    visual_hidden_size: int | None = None
    num_visual_layers: int = 4
    num_visual_attention_heads: int = 8
    visual_intermediate_size: int = 2048
    visual_dropout: float = 0.1
    fusion_hidden_size: int = 256
    num_attributes: int = 0
    summary_loss_weight: float = 1.0
    attribute_loss_weight: float = 0.3
    alignment_loss_weight: float = 0.3
    contrastive_loss_weight: float = 0.05
    region_loss_weight: float = 0.8
    region_mask_ratio: float = 0.15
    attribute_threshold: float = 0.5
    contrastive_logit_scale_init: float = math.log(1 / 0.07)
    use_visual: bool = True
    use_text_cls: bool = True
    visual_encoder_style: str = "mmaps"
    attribute_pooling: str = "mean"
    contrastive_projection_dim: int | None = None
    alignment_loss_form: str = "contrastive"
    box_area_form: str = "corrected"
    is_encoder_decoder: bool = True
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if self.visual_hidden_size is None:
            self.visual_hidden_size = self.text_config.d_model
        # The word embeddings are tied exactly when the BART checkpoint ties them.
        self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", True))
        self.validate_mmaps()

    def validate_mmaps(self) -> None:
        """Raise a ValueError naming the field for settings that cannot build a working model."""
        for name in ("summary_loss_weight", "attribute_loss_weight", "alignment_loss_weight",
                     "contrastive_loss_weight", "region_loss_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"MMAPSConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.region_mask_ratio < 1.0:
            raise ValueError(f"MMAPSConfig.region_mask_ratio must be in (0, 1), got {self.region_mask_ratio}")
        if not 0.0 < self.attribute_threshold < 1.0:
            raise ValueError(f"MMAPSConfig.attribute_threshold must be in (0, 1), got {self.attribute_threshold}")
        for name, allowed in (("visual_encoder_style", ("mmaps", "original")), ("attribute_pooling", ("mean", "sum")),
                              ("alignment_loss_form", ("contrastive", "original")),
                              ("box_area_form", ("corrected", "original"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"MMAPSConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.contrastive_projection_dim is not None and self.contrastive_projection_dim <= 0:
            raise ValueError(f"MMAPSConfig.contrastive_projection_dim must be > 0, got {self.contrastive_projection_dim}")
        vision_type = getattr(self.vision_config, "model_type", None)
        if vision_type == "siglip2_vision_model":
            raise ValueError("MMAPSConfig.vision_config: Siglip2VisionConfig is not supported (its tower needs "
                             "pixel_attention_mask and spatial_shapes, which MMAPS does not produce); use a SigLIP, CLIP, "
                             "ViT or DINOv2 vision config")
        if self.num_attributes < 0:
            raise ValueError(f"MMAPSConfig.num_attributes must be >= 0, got {self.num_attributes}")
        if self.use_visual and self.visual_hidden_size % self.num_visual_attention_heads != 0:
            raise ValueError(
                "MMAPSConfig.visual_hidden_size must be divisible by num_visual_attention_heads, got "
                f"{self.visual_hidden_size} and {self.num_visual_attention_heads}"
            )

    def get_text_config(self, decoder: bool | None = None, encoder: bool | None = None) -> PreTrainedConfig:
        """The BART config: its `vocab_size` is the one the word embeddings use (so `resize_token_embeddings` and
        generation read and update the right field)."""
        return self.text_config

    @property
    def uses_pixels(self) -> bool:
        """True when images enter as `pixel_values` through `vision_config`'s backbone, not as region features."""
        return self.vision_config is not None


__all__ = ["MMAPSConfig"]
