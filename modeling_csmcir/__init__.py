"""CSMCIR: composed image retrieval with MCoT target captions, a shared-parameter symmetric Q-Former dual tower
and an entropy-based, temporally dynamic memory bank — as native Hugging Face transformers classes.

Importing this package registers ``csmcir`` with ``AutoConfig``, ``AutoModel`` and ``AutoProcessor`` and marks
the classes for remote code (``save_pretrained`` writes an ``auto_map`` and copies the Hub files). It imports only
the three Hub files; everything else (trainer, data, evaluation, captioning, conversion) is imported on first
use, so ``import modeling_csmcir`` pulls in neither ``datasets`` nor ``transformers.Trainer``.

Layout (each file one job; sub-packages import the Hub files and each other, never ``cli/``):

* ``configuration_csmcir.py``, ``modeling_csmcir.py``, ``processing_csmcir.py`` — the Hub files (flat).
* ``presets.py`` — every named size (``tiny``, ``tiny-scratch``, ``small``, ``minilm``).
* ``memory_bank.py`` — the bank and the loss it feeds; ``trainer_csmcir.py`` — the ``Trainer`` that calls them.
* ``data/`` — one reader per benchmark layout, collators, caption files, the synthetic generator.
* ``evaluation/`` — protocols and metrics, the evaluator, submission files, ``evaluate`` modules.
* ``captioning/`` — MCoT prompts, answer parsing, image sources, the resumable runner.
* ``conversion/`` — LAVIS / SPRC checkpoints, BERT seeding, building a processor.
* ``cli/`` — argument dataclasses and ``main`` of each console script.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoProcessor

from .configuration_csmcir import CSMCIRConfig
from .modeling_csmcir import CSMCIRModel, CSMCIROutput, CSMCIRPreTrainedModel, csmcir_contrastive_loss
from .processing_csmcir import CSMCIRProcessor
from .lazy_exports import lazy_exports

AutoConfig.register("csmcir", CSMCIRConfig, exist_ok=True)
AutoModel.register(CSMCIRConfig, CSMCIRModel, exist_ok=True)
AutoProcessor.register(CSMCIRConfig, CSMCIRProcessor, exist_ok=True)
# save_pretrained writes auto_map and copies the defining files, so a saved folder is a self-contained Hub repo.
CSMCIRConfig.register_for_auto_class()
CSMCIRModel.register_for_auto_class("AutoModel")
CSMCIRProcessor.register_for_auto_class("AutoProcessor")

# Public name -> the module that defines it, imported on first access (PEP 562).
_LAZY_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["PRESETS", "get_preset", "preset_config", "preset_model", "preset_processor"], ".presets"),
    **dict.fromkeys(["MemoryBank", "memory_bank_loss"], ".memory_bank"),
    "CSMCIRTrainer": ".trainer_csmcir",
    "CSMCIRTrainingArguments": ".training_args",
    **dict.fromkeys(["CIRCollator", "CIRGalleryCollator"], ".data.collators"),
    **dict.fromkeys(["load_cir_dataset"], ".data.loading"),
    "load_cirr": ".data.cirr",
    "load_circo": ".data.circo",
    "load_fashioniq": ".data.fashioniq",
    "load_shoes": ".data.shoes",
    **dict.fromkeys(["load_caption_entries", "load_target_captions", "make_caption_entry", "save_caption_file"],
                    ".data.caption_files"),
    **dict.fromkeys(["SyntheticCIRConfig", "generate_synthetic_cir"], ".data.synthetic"),
    **dict.fromkeys(["CIRRetrievalEvaluator", "evaluate_cir"], ".evaluation.evaluator"),
    **dict.fromkeys(["circo_metrics", "cirr_metrics", "fashioniq_average", "fashioniq_metrics", "map_at_k",
                     "recall_at_k", "shoes_metrics"], ".evaluation.cir_metrics"),
    **dict.fromkeys(["build_circo_submission", "build_cirr_submissions", "write_circo_submission",
                     "write_cirr_submissions"], ".evaluation.submissions"),
    **dict.fromkeys(["MCoTPrompt", "load_mcot_prompt"], ".captioning.prompts"),
    "parse_mcot_answer": ".captioning.answer_parsing",
    "load_captioning_pipeline": ".captioning.vlm",
    "generate_mcot_captions": ".captioning.runner",
    **dict.fromkeys(["LavisConversionReport", "convert_lavis_checkpoint", "infer_csmcir_config",
                     "load_lavis_checkpoint"], ".conversion.lavis"),
    **dict.fromkeys(["csmcir_config_from_bert", "seed_qformer_from_bert"], ".conversion.bert_seeding"),
}

__all__ = ["CSMCIRConfig", "CSMCIRModel", "CSMCIROutput", "CSMCIRPreTrainedModel", "CSMCIRProcessor",
           "csmcir_contrastive_loss", *_LAZY_EXPORTS]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY_EXPORTS)
