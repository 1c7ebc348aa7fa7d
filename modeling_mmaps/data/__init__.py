"""MMAPS data: CEPSUM-layout loading and the collator (``cepsum``), the attribute vocabulary (``attributes``) and
the synthetic product set (``synthetic``)."""

from .attributes import (
    attribute_labels,
    build_attribute_vocabulary,
    check_vocabulary_matches_model,
    find_attributes,
    load_attribute_vocabulary,
    merge_attribute_vocabularies,
    save_attribute_vocabulary,
    segment_words,
)
from .cepsum import (
    MMAPSDataCollator,
    RegionFeatureReader,
    RegionFeatures,
    load_cepsum,
    load_cepsum_split,
    read_cepsum_file,
    write_region_features,
)
from .synthetic import generate_synthetic_products, image_only_mention_rate, load_synthetic_attributes

__all__ = [
    "MMAPSDataCollator",
    "RegionFeatureReader",
    "RegionFeatures",
    "attribute_labels",
    "build_attribute_vocabulary",
    "check_vocabulary_matches_model",
    "find_attributes",
    "generate_synthetic_products",
    "image_only_mention_rate",
    "load_attribute_vocabulary",
    "load_cepsum",
    "load_cepsum_split",
    "load_synthetic_attributes",
    "merge_attribute_vocabularies",
    "read_cepsum_file",
    "save_attribute_vocabulary",
    "segment_words",
    "write_region_features",
]
