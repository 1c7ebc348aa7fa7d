"""CSMCIR: composed image retrieval with MCoT target captions, a shared-parameter symmetric Q-Former dual tower
and an entropy-based, temporally dynamic memory bank — as native Hugging Face transformers classes.

Importing this package registers `csmcir` with `AutoConfig`, `AutoModel` and `AutoProcessor`.
"""

from transformers import AutoConfig, AutoModel, AutoProcessor

from .captions import load_caption_entries, load_target_captions, make_caption_entry, save_caption_file
from .mcot import MCoTPrompt, generate_mcot_captions, load_captioning_pipeline, load_mcot_prompt, parse_mcot_answer
from .configuration_csmcir import CSMCIRConfig
from .modeling_csmcir import CSMCIRModel, CSMCIROutput, CSMCIRPreTrainedModel, csmcir_contrastive_loss
from .processing_csmcir import CSMCIRProcessor
from .cir_collator import CIRCollator, CIRGalleryCollator
from .cir_datasets import load_cir_dataset, load_circo, load_cirr, load_fashioniq, load_shoes
from .cir_evaluation import CIRRetrievalEvaluator, GalleryFeatureCache, evaluate_cir, evaluate_fashioniq
from .cir_metrics import circo_metrics, cirr_metrics, fashioniq_average, fashioniq_metrics, map_at_k, recall_at_k, shoes_metrics
from .submissions import build_circo_submission, build_cirr_submissions, write_circo_submission, write_cirr_submissions
from .synthetic_cir import SyntheticCIRConfig, generate_synthetic_cir
from .memory_bank import MemoryBank
from .trainer_csmcir import CSMCIRTrainer, CSMCIRTrainingArguments
from .lavis_conversion import LavisConversionReport, convert_lavis_checkpoint, infer_csmcir_config, load_lavis_checkpoint
from .bert_seeding import csmcir_config_from_bert, seed_qformer_from_bert, tiny_minilm_config, tiny_minilm_model

AutoConfig.register("csmcir", CSMCIRConfig, exist_ok=True)
AutoModel.register(CSMCIRConfig, CSMCIRModel, exist_ok=True)
AutoProcessor.register(CSMCIRConfig, CSMCIRProcessor, exist_ok=True)
# save_pretrained writes auto_map and copies the defining files, so a saved folder is a self-contained Hub repo.
CSMCIRConfig.register_for_auto_class()
CSMCIRModel.register_for_auto_class("AutoModel")
CSMCIRProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "CIRCollator",
    "CIRGalleryCollator",
    "load_cir_dataset",
    "load_circo",
    "load_cirr",
    "load_fashioniq",
    "load_shoes",
    "CIRRetrievalEvaluator",
    "GalleryFeatureCache",
    "evaluate_cir",
    "evaluate_fashioniq",
    "circo_metrics",
    "cirr_metrics",
    "fashioniq_average",
    "fashioniq_metrics",
    "map_at_k",
    "recall_at_k",
    "shoes_metrics",
    "build_circo_submission",
    "build_cirr_submissions",
    "write_circo_submission",
    "write_cirr_submissions",
    "SyntheticCIRConfig",
    "generate_synthetic_cir",
    "CSMCIRConfig",
    "CSMCIRModel",
    "CSMCIROutput",
    "CSMCIRPreTrainedModel",
    "CSMCIRProcessor",
    "csmcir_contrastive_loss",
    "MCoTPrompt",
    "generate_mcot_captions",
    "load_caption_entries",
    "load_captioning_pipeline",
    "load_mcot_prompt",
    "parse_mcot_answer",
    "load_target_captions",
    "make_caption_entry",
    "save_caption_file",
    "MemoryBank",
    "CSMCIRTrainer",
    "CSMCIRTrainingArguments",
    "LavisConversionReport",
    "convert_lavis_checkpoint",
    "infer_csmcir_config",
    "load_lavis_checkpoint",
    "csmcir_config_from_bert",
    "seed_qformer_from_bert",
    "tiny_minilm_config",
    "tiny_minilm_model",
]
