"""MMAPS: multimodal attribute-aware product summarization as a native transformers model.

Importing the package registers the classes with the Auto API (`AutoConfig` "mmaps", `AutoModelForSeq2SeqLM`,
`AutoProcessor`) and marks them for remote code, so `save_pretrained` writes an `auto_map` and copies the files a
Hub repository needs.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoProcessor

from .configuration_mmaps import MMAPSConfig
from .modeling_mmaps import MMAPSEncoderOutput, MMAPSForConditionalGeneration, MMAPSModel, MMAPSSeq2SeqLMOutput
from .processing_mmaps import MMAPSProcessor

# Data, attribute vocabulary and CEPSUM metrics (issue 8).
from .attributes import (
    attribute_labels,
    build_attribute_vocabulary,
    find_attributes,
    load_attribute_vocabulary,
    merge_attribute_vocabularies,
    save_attribute_vocabulary,
)
from .cepsum_data import MMAPSDataCollator, RegionFeatureReader, load_cepsum, load_cepsum_split
from .summarization_metrics import (
    attribute_prf,
    build_compute_metrics,
    cepsum_bleu,
    cepsum_rouge,
    english_rouge,
    summarization_scores,
)
from .synthetic_products import generate_synthetic_products
from .trainer_mmaps import MMAPSTrainer, MMAPSTrainingArguments

AutoConfig.register("mmaps", MMAPSConfig, exist_ok=True)
AutoModelForSeq2SeqLM.register(MMAPSConfig, MMAPSForConditionalGeneration, exist_ok=True)
AutoProcessor.register(MMAPSConfig, MMAPSProcessor, exist_ok=True)
MMAPSConfig.register_for_auto_class()
MMAPSForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")
MMAPSProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "MMAPSDataCollator",
    "MMAPSTrainer",
    "MMAPSTrainingArguments",
    "RegionFeatureReader",
    "attribute_labels",
    "attribute_prf",
    "build_attribute_vocabulary",
    "build_compute_metrics",
    "cepsum_bleu",
    "cepsum_rouge",
    "english_rouge",
    "find_attributes",
    "generate_synthetic_products",
    "load_attribute_vocabulary",
    "load_cepsum",
    "load_cepsum_split",
    "merge_attribute_vocabularies",
    "save_attribute_vocabulary",
    "summarization_scores",
    "MMAPSConfig",
    "MMAPSEncoderOutput",
    "MMAPSForConditionalGeneration",
    "MMAPSModel",
    "MMAPSProcessor",
    "MMAPSSeq2SeqLMOutput",
]
