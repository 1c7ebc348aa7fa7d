"""Start a CSMCIR model from other checkpoints: LAVIS-format BLIP-2 / SPRC / CSMCIR weights (``lavis``), a BERT
checkpoint for the Q-Former (``bert_seeding``), and the processor a converted model needs (``processor``)."""

from .bert_seeding import (
    BertSeedingReport,
    csmcir_config_from_bert,
    find_minilm_model_dir,
    qformer_config_from_bert,
    seed_qformer_from_bert,
)
from .lavis import (
    LAVIS_TO_CSMCIR_RENAMES,
    LavisConversionReport,
    convert_lavis_checkpoint,
    convert_lavis_state_dict,
    convert_lavis_to_folder,
    infer_csmcir_config,
    lavis_key_to_csmcir,
    load_lavis_checkpoint,
)
from .processor import build_processor

__all__ = [
    "BertSeedingReport",
    "LAVIS_TO_CSMCIR_RENAMES",
    "LavisConversionReport",
    "build_processor",
    "convert_lavis_checkpoint",
    "convert_lavis_state_dict",
    "convert_lavis_to_folder",
    "csmcir_config_from_bert",
    "find_minilm_model_dir",
    "infer_csmcir_config",
    "lavis_key_to_csmcir",
    "load_lavis_checkpoint",
    "qformer_config_from_bert",
    "seed_qformer_from_bert",
]
