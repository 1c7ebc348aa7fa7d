"""Start a CSMCIR model from other checkpoints: LAVIS-format BLIP-2 / SPRC / CSMCIR weights (``lavis``), a BERT
checkpoint for the Q-Former (``bert_seeding``), and the processor a converted model needs (``processor``)."""

from __future__ import annotations

from ..lazy_exports import lazy_exports

# Public name -> the module that defines it, imported on first access.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys([
        "BertSeedingReport", "csmcir_config_from_bert", "find_minilm_model_dir", "qformer_config_from_bert",
        "seed_qformer_from_bert",
    ], ".bert_seeding"),
    **dict.fromkeys([
        "LAVIS_TO_CSMCIR_RENAMES", "LavisConversionReport", "convert_lavis_checkpoint", "convert_lavis_state_dict",
        "convert_lavis_to_folder", "infer_csmcir_config", "lavis_key_to_csmcir", "load_lavis_checkpoint",
    ], ".lavis"),
    "build_processor": ".processor",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
