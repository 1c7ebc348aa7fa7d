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

AutoConfig.register("mmaps", MMAPSConfig, exist_ok=True)
AutoModelForSeq2SeqLM.register(MMAPSConfig, MMAPSForConditionalGeneration, exist_ok=True)
AutoProcessor.register(MMAPSConfig, MMAPSProcessor, exist_ok=True)
MMAPSConfig.register_for_auto_class()
MMAPSForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")
MMAPSProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "MMAPSConfig",
    "MMAPSEncoderOutput",
    "MMAPSForConditionalGeneration",
    "MMAPSModel",
    "MMAPSProcessor",
    "MMAPSSeq2SeqLMOutput",
]
