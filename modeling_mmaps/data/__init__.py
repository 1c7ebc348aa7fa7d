"""MMAPS data: CEPSUM-layout loading and the collator (``cepsum``), the attribute vocabulary (``attributes``) and
the synthetic product set (``synthetic``)."""

from __future__ import annotations

from ..lazy_exports import lazy_exports

# Public name -> the module that defines it, imported on first access.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys([
        "attribute_labels", "build_attribute_vocabulary", "check_vocabulary_matches_model", "find_attributes",
        "load_attribute_vocabulary", "merge_attribute_vocabularies", "save_attribute_vocabulary", "segment_words",
    ], ".attributes"),
    **dict.fromkeys([
        "MMAPSDataCollator", "RegionFeatureReader", "RegionFeatures", "load_cepsum", "load_cepsum_split",
        "read_cepsum_file", "write_region_features",
    ], ".cepsum"),
    **dict.fromkeys([
        "generate_synthetic_products", "image_only_mention_rate", "load_synthetic_attributes",
    ], ".synthetic"),
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
