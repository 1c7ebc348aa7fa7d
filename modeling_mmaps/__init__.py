"""MMAPS: multimodal attribute-aware product summarization as a native transformers model.

Importing the package registers the classes with the Auto API (`AutoConfig` "mmaps", `AutoModel` (the base `MMAPSModel`), `AutoModelForSeq2SeqLM`,
`AutoProcessor`) and marks them for remote code, so `save_pretrained` writes an `auto_map` and copies the files a
Hub repository needs. Only the three Hub files are imported for that; every other name below (trainer, data,
metrics, presets) is imported on first use, so `import modeling_mmaps` loads neither `datasets` nor
`transformers.Trainer`.

Layout: `configuration_/modeling_/processing_mmaps.py` (the Hub files), `presets.py` (named sizes),
`trainer_mmaps.py`, `data/` (CEPSUM loading, attribute vocabulary, synthetic set), `evaluation/` (CEPSUM metrics and
the generate-then-score evaluator), `cli/` (`mmaps-train`, `mmaps-eval`, `mmaps-synth`).
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM, AutoProcessor

from .configuration_mmaps import MMAPSConfig
from .modeling_mmaps import MMAPSEncoderOutput, MMAPSForConditionalGeneration, MMAPSModel, MMAPSSeq2SeqLMOutput
from .processing_mmaps import MMAPSProcessor
from .lazy_exports import lazy_exports

AutoConfig.register("mmaps", MMAPSConfig, exist_ok=True)
AutoModel.register(MMAPSConfig, MMAPSModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(MMAPSConfig, MMAPSForConditionalGeneration, exist_ok=True)
AutoProcessor.register(MMAPSConfig, MMAPSProcessor, exist_ok=True)
MMAPSConfig.register_for_auto_class()
MMAPSModel.register_for_auto_class("AutoModel")
MMAPSForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")
MMAPSProcessor.register_for_auto_class("AutoProcessor")

# Public name -> the module that defines it, imported on first access (PEP 562).
_LAZY_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["PRESETS", "get_preset", "preset_config", "preset_model", "preset_processor"], ".presets"),
    "MMAPSTrainer": ".trainer_mmaps",
    "MMAPSTrainingArguments": ".training_args",
    **dict.fromkeys(["MMAPSDataCollator", "RegionFeatureReader", "load_cepsum", "load_cepsum_split"], ".data.cepsum"),
    **dict.fromkeys(["attribute_labels", "build_attribute_vocabulary", "find_attributes", "load_attribute_vocabulary",
                     "merge_attribute_vocabularies", "save_attribute_vocabulary"], ".data.attributes"),
    "generate_synthetic_products": ".data.synthetic",
    **dict.fromkeys(["attribute_prf", "build_compute_metrics", "cepsum_bleu", "cepsum_rouge", "english_rouge",
                     "summarization_scores"], ".evaluation.summarization_metrics"),
    "evaluate_summarization": ".evaluation.evaluator",
}

__all__ = ["MMAPSConfig", "MMAPSEncoderOutput", "MMAPSForConditionalGeneration", "MMAPSModel", "MMAPSProcessor",
           "MMAPSSeq2SeqLMOutput", *_LAZY_EXPORTS]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY_EXPORTS)
