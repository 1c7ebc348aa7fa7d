"""Build a ``CSMCIRProcessor`` for a converted checkpoint: BLIP-2's evaluation preprocessing and the Q-Former's
BERT-uncased tokenizer (by default the vocabulary shipped in ``modeling_csmcir/vocabulary``), matched to the
checkpoint's vocabulary; an unusable tokenizer is refused."""

from __future__ import annotations

import os
from typing import Any

from transformers import AutoTokenizer
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil
from transformers.utils import logging

from ..configuration_csmcir import CSMCIRConfig
from ..processing_csmcir import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, CSMCIRProcessor
from ..vocabulary import BERT_UNCASED_VOCAB_FILE, bert_uncased_tokenizer, require_usable_tokenizer


logger = logging.get_logger(__name__)


def load_qformer_tokenizer(config: CSMCIRConfig, tokenizer_name_or_path: str | None = None) -> Any:
    """The Q-Former's BERT-uncased tokenizer, matched to the checkpoint's vocabulary.

    ``tokenizer_name_or_path`` defaults to the BERT-uncased vocabulary shipped with the project
    (``modeling_csmcir/vocabulary/bert-base-uncased-vocab.txt``, 30,522 tokens). LAVIS adds a ``[DEC]`` BOS token to
    BERT's 30,522 (Q-Former vocabulary 30,523); it is added here when the checkpoint's vocabulary is exactly one
    larger than the tokenizer's. A tokenizer that is still smaller than the Q-Former's vocabulary is accepted with a
    warning naming both sizes when it covers at least 90% of it (``vocabulary.MIN_VOCABULARY_COVERAGE``).

    Raises:
        ValueError: when the tokenizer is unusable (`vocabulary.require_usable_tokenizer`: no [CLS]/[SEP]/[PAD]/[UNK],
            more tokens than the Q-Former's vocabulary, or far fewer — e.g. a folder whose vocabulary did not load).
    """
    vocab_size = config.qformer_config.vocab_size
    if tokenizer_name_or_path is None:
        source, tokenizer = str(BERT_UNCASED_VOCAB_FILE), bert_uncased_tokenizer()
    else:
        source, tokenizer = os.fspath(tokenizer_name_or_path), AutoTokenizer.from_pretrained(os.fspath(tokenizer_name_or_path))
    require_usable_tokenizer(tokenizer, source)
    if len(tokenizer) + 1 == vocab_size:
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    require_usable_tokenizer(tokenizer, source, vocab_size)
    if len(tokenizer) < vocab_size:
        logger.warning("tokenizer from %s has %d tokens, the Q-Former's vocabulary %d: embedding rows %d..%d are never "
                       "used; check that this is the tokenizer the checkpoint was trained with",
                       source, len(tokenizer), vocab_size, len(tokenizer), vocab_size - 1)
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
