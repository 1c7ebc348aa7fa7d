"""Named MMAPS sizes: the one registry that ``mmaps-train --config_name``, tests, the README and benchmarks use.

A preset is data (timm's ``default_cfgs`` habit): the BART text model, the vision backbone used for raw images and
the top-level settings of an ``MMAPSConfig``, plus the matching processor settings. Presets are randomly
initialised.

=========================  ===================================================================================
name                       what it is
=========================  ===================================================================================
``tiny``                   BART of width 32, 1 encoder + 1 decoder layer, the 128-token character vocabulary of
                           :func:`preset_processor`; 16-d region features, up to 6 regions, 8 detector classes,
                           10 attributes. For tests and examples.
``tiny-scratch``           ``tiny`` with the text side widened to width 64 and two encoder layers (fusion 32-d):
                           the model ``mmaps-train --config_name tiny-scratch`` trains from scratch. ``tiny``
                           never learned to copy attributes from the text in 800 steps on the synthetic set; this
                           did, still at ~0.2 s per step of 16 on one CPU.
``base``                   ``fnlp/bart-base-chinese``-sized BART (6 + 6 layers × 768, 21,128 characters) with the
                           original's 36 × 2048-d Faster R-CNN regions, 1,601 detector classes, 1,000 attributes.
                           Its processor needs a vocabulary (``tokens=``) or that checkpoint's tokenizer.
=========================  ===================================================================================

Every tiny preset has a tiny CLIP vision tower (32-px images, 8-px patches) for raw images: ask for it with
``preset_config(name, visual_input="images")``; the default ``visual_input="regions"`` reads pre-extracted region
features and has no backbone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .configuration_mmaps import MMAPSConfig
from .processing_mmaps import BERT_SPECIAL_TOKENS, MMAPSProcessor

#: Size of the tiny character vocabulary (5 BERT specials + characters + ``[unusedN]`` fillers).
TINY_VOCAB_SIZE = 128
#: Characters of the tiny vocabulary (product-description words), after the 5 BERT special tokens.
TINY_CHARACTERS = (
    "这款包的材质很好时尚大容量简约百搭真皮手提单肩斜挎女士男士休闲商务风格设计精致做工细腻柔软舒适透气轻便耐磨"
    "防水防刮经典黑色白色红色蓝色灰色棕色新品上市夏季冬季春秋款式高级质感多功能收纳"
    "，。！、0123456789abcdefghijklmnopqrstuvwxyz"
)
# Ids of a vocabulary built by `MMAPSProcessor.from_vocabulary`: the specials come first, [CLS] = BOS, [SEP] = EOS.
_SPECIAL_IDS = {token: index for index, token in enumerate(BERT_SPECIAL_TOKENS)}
VISUAL_INPUTS = ("regions", "images", "none")


@dataclass(frozen=True)
class MMAPSPreset:
    """One named size: keyword arguments of the configs and the processor it builds.

    Attributes:
        description: one line for ``--help`` and error messages.
        text: ``BartConfig`` keyword arguments.
        vision: the vision backbone's config dict, used with ``visual_input="images"`` (``None``: regions only).
        settings: ``MMAPSConfig`` keyword arguments.
        processor: ``MMAPSProcessor.from_vocabulary`` keyword arguments (token limits, regions, ``image_size``).
    """

    description: str
    text: dict[str, Any]
    vision: dict[str, Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    processor: dict[str, Any] = field(default_factory=dict)


_TINY_TEXT = dict(
    vocab_size=TINY_VOCAB_SIZE, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
    decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128, dropout=0.0,
    attention_dropout=0.0, activation_dropout=0.0, pad_token_id=_SPECIAL_IDS["[PAD]"],
    bos_token_id=_SPECIAL_IDS["[CLS]"], eos_token_id=_SPECIAL_IDS["[SEP]"],
    decoder_start_token_id=_SPECIAL_IDS["[SEP]"], forced_eos_token_id=_SPECIAL_IDS["[SEP]"],
)
_TINY_VISION = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=2, image_size=32, patch_size=8, num_channels=3)
_TINY_SETTINGS = dict(
    visual_feature_dim=16, max_regions=6, num_region_classes=8, num_visual_layers=1, num_visual_attention_heads=2,
    visual_intermediate_size=64, visual_dropout=0.0, fusion_hidden_size=16, num_attributes=10,
)
_TINY_PROCESSOR = dict(max_regions=6, max_source_length=120, max_target_length=40, image_size=32)

PRESETS: dict[str, MMAPSPreset] = {
    "tiny": MMAPSPreset("CPU-sized test model: BART width 32, 1+1 layers, 128 characters, 16-d regions",
                        _TINY_TEXT, _TINY_VISION, _TINY_SETTINGS, _TINY_PROCESSOR),
    "tiny-scratch": MMAPSPreset(
        "the tiny model widened to learn the synthetic set from scratch: BART width 64, 2+1 layers, fusion 32",
        {**_TINY_TEXT, "d_model": 64, "encoder_layers": 2, "encoder_attention_heads": 4, "decoder_attention_heads": 4,
         "encoder_ffn_dim": 128, "decoder_ffn_dim": 128},
        _TINY_VISION, {**_TINY_SETTINGS, "fusion_hidden_size": 32},
        {**_TINY_PROCESSOR, "max_source_length": 160},
    ),
    "base": MMAPSPreset(
        "fnlp/bart-base-chinese-sized BART (6+6 x 768, 21128 characters), 36 x 2048-d regions, 1000 attributes",
        dict(vocab_size=21128, d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
             decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072, max_position_embeddings=1024,
             pad_token_id=0, bos_token_id=101, eos_token_id=102, decoder_start_token_id=102, forced_eos_token_id=102),
        None, dict(visual_feature_dim=2048, max_regions=36, num_region_classes=1601, num_attributes=1000),
        # The original's token limits and region count.
        dict(max_regions=36, max_source_length=400, max_target_length=90),
    ),
}


def get_preset(name: str) -> MMAPSPreset:
    """The preset called ``name``; ``ValueError`` naming the known presets otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown MMAPS preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name]


def preset_config(
    name: str = "tiny",
    *,
    visual_input: str = "regions",
    text_config: Any = None,
    vision_config: Any = None,
    **overrides: Any,
) -> MMAPSConfig:
    """The ``MMAPSConfig`` of preset ``name``.

    Args:
        visual_input: ``"regions"`` (pre-extracted region features, no backbone), ``"images"`` (raw images through
            the preset's vision backbone) or ``"none"`` (the ``"images"`` model: the image-blind ablation is the same
            model, fed no images) — the values of ``MMAPSDataCollator(visual_input=...)``.
        text_config / vision_config: replace the preset's sub-config whole (a config or a dict).
        overrides: ``MMAPSConfig`` arguments over the preset's settings (e.g. ``num_attributes=5``);
            ``text_<key>=`` / ``vision_<key>=`` prefixed keys override one field of a sub-config
            (``text_vocab_size=len(processor.tokenizer)``, ``vision_image_size=64``).
    """
    preset = get_preset(name)
    if visual_input not in VISUAL_INPUTS:
        raise ValueError(f"visual_input: expected one of {VISUAL_INPUTS}, got {visual_input!r}")
    text_fields = {k[len("text_"):]: overrides.pop(k) for k in list(overrides) if k.startswith("text_")}
    vision_fields = {k[len("vision_"):]: overrides.pop(k) for k in list(overrides) if k.startswith("vision_")}
    if text_config is None:
        text_config = {**preset.text, **text_fields}
    if vision_config is None and visual_input != "regions":
        if preset.vision is None:
            raise ValueError(f"preset {name!r} has no vision backbone; pass vision_config= for raw images")
        vision_config = {**preset.vision, **vision_fields}
    elif vision_fields:
        raise ValueError(f"{sorted('vision_' + k for k in vision_fields)}: only with the preset's own vision backbone "
                         "(visual_input='images' and no vision_config)")
    return MMAPSConfig(text_config=text_config, vision_config=vision_config, **{**preset.settings, **overrides})


def character_vocabulary(texts: Iterable[str]) -> list[str]:
    """Every character of ``texts``, lower-cased (the tokenizer lower-cases), whitespace dropped, sorted: the
    ``tokens`` of a character tokenizer that covers a corpus."""
    return sorted({c for text in texts for c in text.lower() if not c.isspace()})


def _tiny_vocabulary() -> list[str]:
    """The 128 tokens of the tiny character vocabulary: BERT specials, :data:`TINY_CHARACTERS`, ``[unusedN]``."""
    tokens = list(BERT_SPECIAL_TOKENS) + list(dict.fromkeys(TINY_CHARACTERS))
    tokens += [f"[unused{i}]" for i in range(TINY_VOCAB_SIZE - len(tokens))]
    return tokens[:TINY_VOCAB_SIZE]


def preset_processor(name: str = "tiny", *, tokens: Sequence[str] | None = None, vision_config: Any = None,
                     **kwargs: Any) -> MMAPSProcessor:
    """The ``MMAPSProcessor`` of preset ``name``: a BERT-style character tokenizer (character-level input) and the
    PIL image processor of the vision backbone (``vision_config``; default the preset's tiny CLIP tower).

    Args:
        tokens: the character vocabulary (e.g. read off a training set); default the tiny 128-token vocabulary
            (``[PAD]=0, [UNK]=1, [CLS]=2=BOS, [SEP]=3=EOS, [MASK]=4``), which the presets' ``vocab_size`` matches.
        kwargs: ``MMAPSProcessor.from_vocabulary`` arguments over the preset's (``attribute_vocabulary``,
            ``image_size``, ``max_source_length``, ``max_target_length``, ``max_regions``).
    """
    preset = get_preset(name)
    if tokens is None:
        if preset.text["vocab_size"] != TINY_VOCAB_SIZE:
            raise ValueError(f"preset {name!r} has {preset.text['vocab_size']} tokens, the built-in character "
                             f"vocabulary {TINY_VOCAB_SIZE}: pass tokens= or load the checkpoint's processor")
        tokens = _tiny_vocabulary()
    settings = {**preset.processor, **kwargs}
    if vision_config is None:
        vision_config = preset.vision or {"model_type": "clip_vision_model"}
    elif "image_size" not in kwargs:
        settings["image_size"] = None  # a backbone of its own: its own resolution
    return MMAPSProcessor.from_vocabulary(tokens, vision_config=vision_config, **settings)


def preset_model(
    name: str = "tiny",
    *,
    tokens: Sequence[str] | None = None,
    attribute_vocabulary: Sequence[str] | None = None,
    visual_input: str = "regions",
    image_size: int | None = None,
    max_source_length: int | None = None,
    max_target_length: int | None = None,
    **overrides: Any,
) -> tuple[Any, MMAPSProcessor]:
    """``(MMAPSForConditionalGeneration, MMAPSProcessor)`` of preset ``name``, randomly initialised, sized to each
    other: the text vocabulary is the tokenizer's, the position table covers the processor's token limits (+ 8 for
    the text [CLS] and BART's offset), the attribute head the attribute vocabulary.

    Args:
        tokens: the character vocabulary (e.g. ``character_vocabulary(texts)``); default the tiny vocabulary.
        attribute_vocabulary: attribute words; ``num_attributes`` follows it (default: the preset's, no words).
        visual_input: as in :func:`preset_config`; with images, the processor's image processor is the backbone's own
            (CLIP, SigLIP, ViT, DINOv2: resolution, mean/std).
        image_size: side of the images (processor and vision backbone); default the preset's.
        max_source_length / max_target_length: the processor's token limits; default the preset's.
        overrides: more :func:`preset_config` arguments.
    """
    from .modeling_mmaps import MMAPSForConditionalGeneration

    processor_kwargs = {k: v for k, v in dict(image_size=image_size, max_source_length=max_source_length,
                                               max_target_length=max_target_length).items() if v is not None}
    if attribute_vocabulary is not None:
        processor_kwargs["attribute_vocabulary"] = list(attribute_vocabulary)
        overrides.setdefault("num_attributes", len(attribute_vocabulary))
    if visual_input != "regions" and overrides.get("vision_config") is not None:
        processor_kwargs["vision_config"] = overrides["vision_config"]
    processor = preset_processor(name, tokens=tokens, **processor_kwargs)
    overrides.setdefault("text_vocab_size", len(processor.tokenizer))
    overrides.setdefault("text_max_position_embeddings",
                         max(processor.max_source_length, processor.max_target_length) + 8)
    if image_size is not None and visual_input != "regions":
        overrides.setdefault("vision_image_size", image_size)
    return MMAPSForConditionalGeneration(preset_config(name, visual_input=visual_input, **overrides)), processor


__all__ = ["PRESETS", "TINY_CHARACTERS", "TINY_VOCAB_SIZE", "VISUAL_INPUTS", "MMAPSPreset", "character_vocabulary",
           "get_preset", "preset_config", "preset_model", "preset_processor"]
