"""CSMCIR data: one reader per benchmark layout (FashionIQ, CIRR, CIRCO, Shoes) sharing one schema, the collators,
target-caption files in the authors' format, and the synthetic CIR benchmark generator."""

from .caption_files import (
    FALLBACK_REASON_KEY,
    FINAL_CAPTION_KEY,
    MCOT_LEVEL_KEYS,
    CaptionEntry,
    load_caption_entries,
    load_target_captions,
    make_caption_entry,
    save_caption_file,
)
from .circo import load_circo
from .cirr import find_cirr_split, is_cirr_layout, load_cirr
from .collators import CIRCollator, CIRGalleryCollator
from .fashioniq import (
    FASHIONIQ_CATEGORIES,
    fashioniq_eval_caption,
    fashioniq_training_caption_variants,
    load_fashioniq,
)
from .loading import BENCHMARKS, load_cir_dataset
from .shoes import load_shoes
from .synthetic import SyntheticCIRConfig, generate_synthetic_cir

__all__ = [
    "BENCHMARKS",
    "CIRCollator",
    "CIRGalleryCollator",
    "CaptionEntry",
    "FALLBACK_REASON_KEY",
    "FASHIONIQ_CATEGORIES",
    "FINAL_CAPTION_KEY",
    "MCOT_LEVEL_KEYS",
    "SyntheticCIRConfig",
    "fashioniq_eval_caption",
    "fashioniq_training_caption_variants",
    "find_cirr_split",
    "generate_synthetic_cir",
    "is_cirr_layout",
    "load_caption_entries",
    "load_cir_dataset",
    "load_circo",
    "load_cirr",
    "load_fashioniq",
    "load_shoes",
    "load_target_captions",
    "make_caption_entry",
    "save_caption_file",
]
