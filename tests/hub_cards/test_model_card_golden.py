"""Golden outputs of the rendered model cards: a fixed report, fixed training settings and a fixed ``config.json``
render to the stored ``golden/*.md`` byte for byte, so a refactor that changes a card is caught.

Pure rendering: no model, no trainer. After an intended change to a card, regenerate the stored files with
``UPDATE_GOLDEN=1 pytest tests/hub_cards/test_model_card_golden.py`` and review the diff.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from hub_cards import EvaluationReport, build_csmcir_card, build_mmaps_card

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"

CSMCIR_CONFIG = {
    "model_type": "csmcir", "vision_config": {"model_type": "blip_2_vision_model"}, "freeze_vision": True,
    "num_query_tokens": 4, "embed_dim": 32, "share_qformer": True,
    "custom_pipelines": {"composed-image-retrieval": {"impl": "composed_image_retrieval.ComposedImageRetrievalPipeline"}},
}
CSMCIR_REPORT = EvaluationReport(
    values={"recall_at_1": 12.5, "recall_at_5": 40.0, "recall_subset_at_1": 33.333333, "avg": 36.6666665},
    protocol="CIRR: reference removed from the gallery; Recall@K and Recall_subset@K", dataset="cirr", split="val",
)
CSMCIR_SETTINGS = {"learning_rate": 1e-3, "per_device_train_batch_size": 16, "max_steps": 30, "seed": 0,
                   "bank_strategy": "entropy", "bank_size": 512}

MMAPS_CONFIG = {
    "model_type": "mmaps", "text_config": {"d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "vocab_size": 128},
    "visual_feature_dim": 16, "max_regions": 8, "num_attributes": 2,
}
MMAPS_REPORT = EvaluationReport(values={"rouge1": 30.125, "rouge2": 12.0, "bleu4": 5.5, "attribute_f1": 50.0},
                                protocol="CEPSUM protocol", dataset="synthetic-products", split="test")
MMAPS_SETTINGS = {"learning_rate": 3e-3, "num_train_epochs": 1, "seed": 0, "summary_language": "zh",
                  "generation_num_beams": 3, "generation_max_length": 60}


def check_golden(name: str, text: str) -> None:
    path = GOLDEN_DIR / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN_DIR.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        pytest.skip(f"regenerated {path.name}")
    assert path.is_file(), f"{path} missing: run with UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(encoding="utf-8")


def saved_config(folder: Path, config: dict) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_csmcir_card_matches_the_golden_file(tmp_path):
    folder = saved_config(tmp_path / "csmcir-tiny", CSMCIR_CONFIG)
    card = build_csmcir_card(folder, metrics=CSMCIR_REPORT, training_args=CSMCIR_SETTINGS,
                             base_model="Salesforce/blip2-itm-vit-g", dataset_name="synthetic-cir",
                             repo_id="test-org/csmcir-tiny")
    check_golden("csmcir_card.md", str(card))


def test_mmaps_card_matches_the_golden_file(tmp_path):
    folder = saved_config(tmp_path / "mmaps-tiny", MMAPS_CONFIG)
    card = build_mmaps_card(folder, metrics=MMAPS_REPORT, training_args=MMAPS_SETTINGS, repo_id="test-org/mmaps-tiny")
    check_golden("mmaps_card.md", str(card))


def test_cards_and_templates_cite_no_file_outside_the_repository(tmp_path):
    from hub_cards.card_rendering import TEMPLATES_DIR

    texts = [p.read_text(encoding="utf-8") for p in sorted(TEMPLATES_DIR.glob("*.jinja"))]
    texts += [(GOLDEN_DIR / name).read_text(encoding="utf-8") for name in ("csmcir_card.md", "mmaps_card.md")]
    assert len(texts) == 4
    for text in texts:
        assert not re.search(r"\b[A-Z_]+\.md\b", text)  # no DESIGN-style notes the user does not have
        assert "../shared" not in text
