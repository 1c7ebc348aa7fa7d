"""CSMCIR data: one reader per benchmark layout (FashionIQ, CIRR, CIRCO, Shoes) sharing one schema, the collators,
target-caption files in the authors' format, and the synthetic CIR benchmark generator."""

from __future__ import annotations

from ..lazy_exports import lazy_exports

# Public name -> the module that defines it, imported on first access.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys([
        "FALLBACK_REASON_KEY", "FINAL_CAPTION_KEY", "MCOT_LEVEL_KEYS", "CaptionEntry", "load_caption_entries",
        "load_target_captions", "make_caption_entry", "save_caption_file",
    ], ".caption_files"),
    "load_circo": ".circo",
    **dict.fromkeys(["find_cirr_split", "is_cirr_layout", "load_cirr"], ".cirr"),
    **dict.fromkeys(["CIRCollator", "CIRGalleryCollator"], ".collators"),
    **dict.fromkeys([
        "fashioniq_eval_caption", "fashioniq_training_caption_variants", "load_fashioniq",
    ], ".fashioniq"),
    "load_cir_dataset": ".loading",
    **dict.fromkeys(["BENCHMARKS", "FASHIONIQ_CATEGORIES"], ".layouts"),
    "load_shoes": ".shoes",
    **dict.fromkeys(["SyntheticCIRConfig", "generate_synthetic_cir"], ".synthetic"),
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
