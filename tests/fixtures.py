"""Shared test builders, defined once: tiny CSMCIR models and processors (from the presets), a tiny BLIP-2 peer,
and synthetic images. Import with ``from fixtures import ...`` (the tests folder is on ``sys.path`` through its
conftest)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers import Blip2Config, Blip2QFormerConfig, Blip2VisionConfig

from modeling_csmcir import CSMCIRModel, CSMCIRProcessor
from modeling_csmcir.presets import preset_config, preset_processor


def tiny_processor(image_size: int = 32) -> CSMCIRProcessor:
    """The presets' processor at ``image_size``."""
    return preset_processor("tiny", image_size=image_size)


def tiny_csmcir(processor: CSMCIRProcessor | None = None, preset: str = "tiny", seed: int | None = None,
                **overrides) -> CSMCIRModel:
    """A preset CSMCIR model (eval mode) with its vocabulary matched to ``processor`` (default: ``tiny_processor()``)."""
    processor = processor or tiny_processor()
    if seed is not None:
        torch.manual_seed(seed)
    image_size = processor.image_processor.size["height"]
    config = preset_config(preset, vocab_size=len(processor.tokenizer), image_size=image_size, **overrides)
    return CSMCIRModel(config).eval()


def random_images(count: int, seed: int = 0, size: int = 32) -> list[Image.Image]:
    """Distinct synthetic images: a random background with a coloured square of random size and place."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        array = np.empty((size, size, 3), dtype=np.uint8)
        array[:] = rng.integers(0, 256, size=3, dtype=np.uint8)
        side = int(rng.integers(size // 5, size * 5 // 8))
        top, left = (int(v) for v in rng.integers(0, size - side, size=2))
        array[top : top + side, left : left + side] = rng.integers(0, 256, size=3, dtype=np.uint8)
        images.append(Image.fromarray(array))
    return images


def tiny_blip2_config(vocab_size: int = 120, num_qformer_layers: int = 2, cross_attention_frequency: int = 1,
                      qformer_intermediate_size: int = 64, max_position_embeddings: int = 64,
                      num_query_tokens: int = 4, image_text_hidden_size: int = 24) -> Blip2Config:
    """A CPU-sized transformers BLIP-2 config (32-px ViT, 32-wide Q-Former, a one-layer OPT): the peer that
    ``CSMCIRModel.from_blip2_pretrained`` and the LAVIS converter are checked against."""
    vision = Blip2VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    qformer = Blip2QFormerConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=num_qformer_layers, num_attention_heads=2,
        intermediate_size=qformer_intermediate_size, encoder_hidden_size=32,
        cross_attention_frequency=cross_attention_frequency, use_qformer_text_input=True,
        max_position_embeddings=max_position_embeddings,
    )
    return Blip2Config(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config={"model_type": "opt", "vocab_size": 100, "hidden_size": 16, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "ffn_dim": 32, "word_embed_proj_dim": 16},
        num_query_tokens=num_query_tokens,
        image_text_hidden_size=image_text_hidden_size,
    )
