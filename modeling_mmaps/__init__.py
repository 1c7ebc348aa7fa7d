"""MMAPS: multimodal attribute-aware product summarization as a Hugging Face model, with its data, metrics and trainer."""

# Data, attribute vocabulary and CEPSUM metrics (issue 8).
from .attributes import (
    attribute_labels,
    build_attribute_vocabulary,
    find_attributes,
    load_attribute_vocabulary,
    merge_attribute_vocabularies,
    save_attribute_vocabulary,
)
from .cepsum_data import RegionFeatureReader, load_cepsum, load_cepsum_split
from .summarization_metrics import (
    attribute_prf,
    build_compute_metrics,
    cepsum_bleu,
    cepsum_rouge,
    english_rouge,
    summarization_scores,
)
from .synthetic_products import generate_synthetic_products
