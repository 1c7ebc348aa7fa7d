"""LAVIS-format checkpoints (BLIP-2 / SPRC / CSMCIR) → CSMCIRModel: exact round trip, reporting, refusal, CLI."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
import torch.nn.functional as F
from transformers import Blip2Config, Blip2ForImageTextRetrieval

from fixtures import tiny_blip2_config
from modeling_csmcir import CSMCIRModel, CSMCIRProcessor
from modeling_csmcir.cli.convert import main as convert_main
from modeling_csmcir.conversion.lavis import (
    convert_lavis_checkpoint,
    convert_lavis_state_dict,
    infer_csmcir_config,
    lavis_key_to_csmcir,
    load_lavis_checkpoint,
)

VOCAB = 30523  # BERT-uncased + LAVIS's [DEC] token, as in the published BLIP-2 / SPRC checkpoints
HEAD_COUNTS = {"vision_config": {"num_attention_heads": 2}, "qformer_config": {"num_attention_heads": 2}}


def _tiny_blip2() -> Blip2ForImageTextRetrieval:
    # 3 layers with cross-attention every 2nd (layers 0 and 2), as BLIP-2's Q-Former: the config must be inferred.
    config = tiny_blip2_config(vocab_size=VOCAB, num_qformer_layers=3, cross_attention_frequency=2,
                               qformer_intermediate_size=48, max_position_embeddings=40)
    torch.manual_seed(3)
    model = Blip2ForImageTextRetrieval(config).eval()
    with torch.no_grad():  # default init leaves zeros, ones and near-zero tensors: randomise every one of them
        for name, parameter in model.named_parameters():
            is_norm = "layer_norm" in name or "LayerNorm" in name or "layernorm" in name
            if is_norm and name.endswith("weight"):
                parameter.copy_(1 + 0.3 * torch.randn_like(parameter))
            else:
                parameter.copy_(0.1 * torch.randn_like(parameter))
    return model


def _to_lavis_name(name: str) -> str:
    """Written independently of the converter: transformers BLIP-2 name → LAVIS name, by plain substitution."""
    replacements = [
        ("vision_model.embeddings.class_embedding", "visual_encoder.cls_token"),
        ("vision_model.embeddings.position_embedding", "visual_encoder.pos_embed"),
        ("vision_model.embeddings.patch_embedding", "visual_encoder.patch_embed.proj"),
        ("vision_model.encoder.layers.", "visual_encoder.blocks."),
        ("vision_model.post_layernorm", "ln_vision"),
        (".layer_norm1", ".norm1"),
        (".layer_norm2", ".norm2"),
        (".self_attn.qkv", ".attn.qkv"),
        (".self_attn.projection", ".attn.proj"),
        ("embeddings.word_embeddings", "Qformer.bert.embeddings.word_embeddings"),
        ("embeddings.position_embeddings", "Qformer.bert.embeddings.position_embeddings"),
        ("qformer.layernorm", "Qformer.bert.embeddings.LayerNorm"),
        ("qformer.encoder.", "Qformer.bert.encoder."),
        ("attention.attention.", "attention.self."),
        ("vision_projection", "vision_proj"),
        ("text_projection", "text_proj"),
    ]
    if name.startswith("vision_model."):
        replacements = [r for r in replacements if not r[0].startswith(("embeddings.", "attention."))]
    for old, new in replacements:
        name = name.replace(old, new)
    return name


def _lavis_state_dict(model: Blip2ForImageTextRetrieval, temp_shape: tuple[int, ...] = ()) -> dict[str, torch.Tensor]:
    lavis: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if name.endswith("self_attn.qkv.bias"):  # EVA keeps q and v biases, no k bias
            q, k, v = tensor.chunk(3)
            k.zero_()
            block = name.replace("vision_model.encoder.layers.", "visual_encoder.blocks.").replace(".self_attn.qkv.bias", "")
            lavis[f"{block}.attn.q_bias"], lavis[f"{block}.attn.v_bias"] = q.clone(), v.clone()
            continue
        lavis[_to_lavis_name(name)] = tensor.clone()
    lavis["temp"] = torch.full(temp_shape, 0.05)
    lavis["Qformer.bert.embeddings.position_ids"] = torch.arange(40).unsqueeze(0)
    return lavis


@pytest.fixture(scope="module")
def peer() -> Blip2ForImageTextRetrieval:
    model = _tiny_blip2()
    with torch.no_grad():  # the EVA layout has no key bias: the peer must not have one either
        for layer in model.vision_model.encoder.layers:
            layer.self_attn.qkv.bias[32:64].zero_()
    return model


@pytest.fixture(scope="module")
def lavis(peer) -> dict[str, torch.Tensor]:
    return _lavis_state_dict(peer)


def test_lavis_names_look_like_lavis(lavis):
    for key in (
        "visual_encoder.blocks.1.attn.q_bias",
        "visual_encoder.blocks.0.mlp.fc2.weight",
        "ln_vision.weight",
        "Qformer.bert.encoder.layer.2.crossattention.self.key.weight",
        "Qformer.bert.encoder.layer.1.output_query.LayerNorm.bias",
        "Qformer.bert.embeddings.LayerNorm.weight",
        "vision_proj.weight",
        "itm_head.weight",
    ):
        assert key in lavis
    assert not any(k.startswith("Qformer.bert.encoder.layer.1.crossattention") for k in lavis)
    assert lavis_key_to_csmcir("Qformer.bert.encoder.layer.11.attention.self.query.weight") == (
        "qformer.encoder.layer.11.attention.attention.query.weight"
    )


def test_config_is_inferred_from_the_checkpoint_shapes(lavis):
    config = infer_csmcir_config(lavis, **HEAD_COUNTS)
    q, v = config.qformer_config, config.vision_config
    assert (q.num_hidden_layers, q.cross_attention_frequency, q.intermediate_size, q.vocab_size) == (3, 2, 48, VOCAB)
    assert q.max_position_embeddings == 40 and q.encoder_hidden_size == 32
    assert (v.num_hidden_layers, v.image_size, v.patch_size, v.intermediate_size, v.qkv_bias) == (2, 32, 8, 64, True)
    assert (config.num_query_tokens, config.embed_dim) == (4, 24)
    assert config.contrastive_temperature == pytest.approx(0.05)


def test_the_full_size_blip2_layout_is_inferred_and_fully_mapped():
    """ViT-g (39 x 1408, 16 heads) + BERT-base Q-Former with [DEC]: built on the meta device, so no memory is used."""
    config = Blip2Config(qformer_config=dict(vocab_size=30523, use_qformer_text_input=True), num_query_tokens=32)
    with torch.device("meta"):
        full = Blip2ForImageTextRetrieval(config)
    lavis = {}
    for name, tensor in full.state_dict().items():
        if name.endswith("self_attn.qkv.bias"):
            block = name.replace("vision_model.encoder.layers.", "visual_encoder.blocks.").replace(".self_attn.qkv.bias", "")
            lavis[f"{block}.attn.q_bias"], _, lavis[f"{block}.attn.v_bias"] = tensor.chunk(3)
        else:
            lavis[_to_lavis_name(name)] = tensor
    lavis["temp"] = torch.tensor(0.07)
    inferred = infer_csmcir_config(lavis)  # head counts from BLIP-2's defaults, no overrides
    for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size"):
        assert getattr(inferred.vision_config, name) == getattr(config.vision_config, name), name
    for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "cross_attention_frequency", "vocab_size"):
        assert getattr(inferred.qformer_config, name) == getattr(config.qformer_config, name), name
    with torch.device("meta"):
        model = CSMCIRModel(inferred)
    _, report = convert_lavis_state_dict(lavis, model.state_dict())
    assert report.unfilled == [] and set(report.unmapped) == {"itm_head.weight", "itm_head.bias"}
    assert len(report.filled) == len(model.state_dict())


def test_an_unguessable_head_count_is_a_clear_error(lavis):
    with pytest.raises(ValueError, match="num_attention_heads"):
        infer_csmcir_config(lavis)


@pytest.mark.parametrize("temp_shape", [(), (1,)])
def test_converted_model_reproduces_the_original_features(peer, temp_shape):
    model, report = convert_lavis_checkpoint(_lavis_state_dict(peer, temp_shape), **HEAD_COUNTS)
    assert report.unfilled == []
    assert set(report.unmapped) == {"itm_head.weight", "itm_head.bias", "Qformer.bert.embeddings.position_ids"}
    assert model.temperature.shape == () and model.temperature.item() == pytest.approx(0.05)
    ours = model.state_dict()
    for name, tensor in peer.state_dict().items():  # every shared tensor is copied exactly
        if not name.startswith("itm_head"):
            assert torch.equal(ours[name], tensor), name

    torch.manual_seed(7)
    pixel_values = torch.randn(3, 3, 32, 32)
    input_ids = torch.randint(5, VOCAB, (3, 9))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 6:] = 0
    with torch.no_grad():
        reference = peer(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
        image_embeds = peer.vision_model(pixel_values=pixel_values).last_hidden_state
        joint = peer.qformer(
            query_embeds=peer.embeddings(input_ids=input_ids, query_embeds=peer.query_tokens.expand(3, -1, -1)),
            query_length=4,
            attention_mask=torch.cat([torch.ones(3, 4, dtype=torch.long), attention_mask], dim=1),
            encoder_hidden_states=image_embeds,
        ).last_hidden_state
        expected_query = F.normalize(peer.text_projection(joint[:, 4]), dim=-1)

        assert (model.get_image_embeds(pixel_values) - image_embeds).abs().max() < 1e-6
        assert (model.get_image_token_features(pixel_values) - reference.image_embeds).abs().max() < 1e-6
        text_only = model.qformer(
            query_embeds=model.embeddings(input_ids=input_ids), query_length=0, attention_mask=attention_mask
        ).last_hidden_state
        text_features = F.normalize(model.text_projection(text_only[:, 0]), dim=-1)
        assert (text_features - reference.text_embeds).abs().max() < 1e-6
        assert (model.get_query_features(pixel_values, input_ids, attention_mask) - expected_query).abs().max() < 1e-6


def test_extra_keys_are_reported_with_a_reason(lavis):
    checkpoint = dict(lavis, prompt_tokens=torch.zeros(1, 4, 32), **{"mystery.weight": torch.zeros(3)})
    _, report = convert_lavis_checkpoint(checkpoint, **HEAD_COUNTS)
    assert "unknown" in report.unmapped["mystery.weight"]
    assert "SPRC" in report.unmapped["prompt_tokens"]
    assert "mystery.weight" in report.summary()


def test_a_missing_tensor_is_refused_unless_allowed(lavis):
    checkpoint = {k: v for k, v in lavis.items() if k != "Qformer.bert.encoder.layer.1.output.dense.weight"}
    with pytest.raises(ValueError, match=r"qformer\.encoder\.layer\.1\.output\.dense\.weight"):
        convert_lavis_checkpoint(checkpoint, **HEAD_COUNTS)
    model, report = convert_lavis_checkpoint(checkpoint, allow_missing=True, **HEAD_COUNTS)
    assert report.unfilled == ["qformer.encoder.layer.1.output.dense.weight"]
    assert torch.equal(model.qformer.encoder.layer[0].output.dense.weight,
                       lavis["Qformer.bert.encoder.layer.0.output.dense.weight"])


def test_a_lone_q_bias_and_a_wrong_shape_are_clear_errors(lavis):
    with pytest.raises(ValueError, match="v_bias"):
        convert_lavis_checkpoint({k: v for k, v in lavis.items() if k != "visual_encoder.blocks.0.attn.v_bias"},
                                 **HEAD_COUNTS)
    bad = dict(lavis, **{"text_proj.weight": torch.zeros(24, 31)})
    with pytest.raises(ValueError, match="text_projection.weight"):
        convert_lavis_checkpoint(bad, **HEAD_COUNTS)


@pytest.mark.parametrize("layout", ["model", "sprc", "bare"])
def test_checkpoint_layouts_are_read_with_weights_only(lavis, tmp_path, layout):
    wrapped = {
        "model": {"model": lavis, "config": {"arch": "blip2"}, "epoch": 3},
        "sprc": {"Blip2QformerCirAlignPrompt": lavis, "epoch": 29},
        "bare": lavis,
    }[layout]
    torch.save(wrapped, tmp_path / "ckpt.pt")
    loaded = load_lavis_checkpoint(tmp_path / "ckpt.pt")
    assert set(loaded) == set(lavis) and torch.equal(loaded["query_tokens"], lavis["query_tokens"])


def test_a_checkpoint_with_pickled_objects_is_refused(lavis, tmp_path):
    torch.save({"model": lavis, "args": argparse.Namespace(lr=1e-5)}, tmp_path / "pickled.pt")
    with pytest.raises(ValueError, match="weights_only"):
        load_lavis_checkpoint(tmp_path / "pickled.pt")


def test_cli_converts_a_checkpoint_into_a_loadable_model_and_processor(peer, lavis, tmp_path):
    torch.save({"Blip2QformerCirAlignPrompt": dict(lavis, prompt_tokens=torch.zeros(1, 4, 32)), "epoch": 5},
               tmp_path / "sprc.pt")
    heads = json.dumps({"num_attention_heads": 2})
    (tmp_path / "qformer.json").write_text(heads)
    argv = ["--checkpoint", str(tmp_path / "sprc.pt"), "--output_dir", str(tmp_path / "out"),
            "--vision_config", heads, "--qformer_config", str(tmp_path / "qformer.json")]
    convert_main(argv)

    saved_config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "AutoModel" in saved_config["auto_map"] and (tmp_path / "out" / "modeling_csmcir.py").is_file()
    report = json.loads((tmp_path / "out" / "conversion_report.json").read_text())
    assert "prompt_tokens" in report["unmapped"] and report["unfilled"] == []
    # The report travels with the folder: the checkpoint beside it is recorded relative, never as an absolute path.
    assert report["checkpoint"] == "../sprc.pt"
    assert report["checkpoint_bytes"] == (tmp_path / "sprc.pt").stat().st_size
    model = CSMCIRModel.from_pretrained(tmp_path / "out").eval()
    processor = CSMCIRProcessor.from_pretrained(tmp_path / "out")
    assert processor.image_processor.size["height"] == 32
    assert len(processor.tokenizer) == VOCAB and processor.tokenizer.bos_token == "[DEC]"
    assert processor(text="a red dress")["input_ids"].max() < VOCAB
    torch.manual_seed(0)
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = peer(pixel_values=pixel_values, input_ids=torch.tensor([[5, 6]] * 2)).image_embeds
        assert (model.get_image_token_features(pixel_values) - expected).abs().max() < 1e-6

    with pytest.raises(ValueError, match="not empty"):  # an existing folder is never silently overwritten
        convert_main(argv)
    missing = {k: v for k, v in lavis.items() if k != "text_proj.bias"}
    torch.save({"model": missing}, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="text_projection.bias"):
        convert_main(["--checkpoint", str(tmp_path / "missing.pt"), "--output_dir", str(tmp_path / "refused"),
                      "--vision_config", heads, "--qformer_config", heads])
    assert not (tmp_path / "refused").exists()
