"""MMAPS behaves as transformers' own seq2seq models do (issue 14): tuple outputs, encoder outputs, the cache name,
torch.export, initialisation parity, the Auto classes; and the original's forms of five computations (issue 21)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from modeling_mmaps import MMAPSForConditionalGeneration, MMAPSModel
from modeling_mmaps.modeling_mmaps import box_area, hausdorff_distance, sinusoidal_positions
from modeling_mmaps.presets import preset_config, preset_processor
from tests.hub_isolation import run_isolated
from tests.mmaps.test_mmaps_model import make_batch, tiny_model

ENCODER_KEYS = ("input_ids", "attention_mask", "visual_features", "visual_boxes", "visual_attention_mask", "image_mask")


def _inputs(batch):
    return {k: batch[k] for k in ENCODER_KEYS}


# -- outputs -------------------------------------------------------------------------------------------------------


def test_return_dict_false_gives_the_output_fields_as_a_tuple():
    model = tiny_model()
    batch = make_batch(model.config)
    with torch.no_grad():  # region modelling masks at random: the same seed for each call
        as_dict = torch.manual_seed(0) and model(**batch)
        as_tuple = torch.manual_seed(0) and model(**batch, return_dict=False)
        model.config.return_dict = False
        from_config = torch.manual_seed(0) and model(**batch)
    assert isinstance(as_tuple, tuple) and isinstance(from_config, tuple)
    assert len(as_tuple) == len(as_dict.to_tuple())
    assert torch.equal(as_tuple[0], as_dict.loss) and torch.equal(as_tuple[1], as_dict.logits)
    base = MMAPSModel(model.config).eval()
    with torch.no_grad():
        first = base(**_inputs(batch), return_dict=False)[0]
    assert isinstance(first, torch.Tensor) and first.shape == (4, 9, model.config.text_config.d_model)


def test_base_model_returns_encoder_states_hidden_states_and_attentions():
    torch.manual_seed(0)
    config = preset_config("tiny", text_encoder_layers=2)
    base = MMAPSModel(config).eval()
    base.set_attn_implementation("eager")  # attention weights exist only on the eager path
    batch = make_batch(config)
    with torch.no_grad():
        out = base(**_inputs(batch), output_hidden_states=True, output_attentions=True)
    d = config.text_config.d_model
    assert out.encoder_last_hidden_state.shape == (4, 9, d)
    assert torch.equal(out.encoder_last_hidden_state, out.encoder_outputs.last_hidden_state)  # the fused states
    assert len(out.encoder_hidden_states) == 3 and out.encoder_hidden_states[0].shape == (4, 10, d)  # + text [CLS]
    assert len(out.encoder_attentions) == 2 and out.encoder_attentions[0].shape == (4, 2, 10, 10)
    assert len(out.decoder_hidden_states) == 2 and len(out.cross_attentions) == 1
    assert out.cross_attentions[0].shape[-1] == 9  # the decoder reads the L fused text states


def test_old_cache_name_is_renamed_with_a_warning_and_never_reaches_the_encoder():
    model = tiny_model()
    batch = _inputs(make_batch(model.config))
    decoder_input_ids = torch.full((4, 1), model.config.text_config.decoder_start_token_id)
    with torch.no_grad():
        first = model(**batch, decoder_input_ids=decoder_input_ids, use_cache=True)
        step = torch.full((4, 1), 7)
        with_new_name = model(**batch, decoder_input_ids=step, cache=first.cache, use_cache=True).logits
        first = model(**batch, decoder_input_ids=decoder_input_ids, use_cache=True)
        with pytest.warns(Warning, match="past_key_values"):
            with_old_name = model(**batch, decoder_input_ids=step, past_key_values=first.cache, use_cache=True).logits
        base = MMAPSModel(model.config).eval()
        base_first = base(**batch, decoder_input_ids=decoder_input_ids, use_cache=True)
        with pytest.warns(Warning, match="past_key_values"):
            base(**batch, decoder_input_ids=step, past_key_values=base_first.cache, use_cache=True)
    assert torch.allclose(with_new_name, with_old_name)


# -- torch.export --------------------------------------------------------------------------------------------------


class _Forward(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, visual_features, visual_boxes, visual_attention_mask, image_mask,
                decoder_input_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, visual_features=visual_features,
                          visual_boxes=visual_boxes, visual_attention_mask=visual_attention_mask, image_mask=image_mask,
                          decoder_input_ids=decoder_input_ids, use_cache=False).logits


class _Encoder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.encoder = model.get_encoder()

    def forward(self, input_ids, attention_mask, visual_features, visual_boxes, visual_attention_mask, image_mask):
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask, visual_features=visual_features,
                            visual_boxes=visual_boxes, visual_attention_mask=visual_attention_mask,
                            image_mask=image_mask).last_hidden_state


class _DecoderStep(torch.nn.Module):
    """Next-token logits from the fused encoder states and the whole decoded prefix (no cache)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, encoder_states, attention_mask, decoder_input_ids):
        return self.model(encoder_outputs=(encoder_states,), attention_mask=attention_mask,
                          decoder_input_ids=decoder_input_ids, use_cache=False).logits[:, -1]


def test_torch_export_traces_forward_including_an_imageless_product():
    model = tiny_model()
    batch = _inputs(make_batch(model.config))  # product 3 has no image; product 0 has padded regions
    decoder_input_ids = torch.tensor([[3, 6, 7]] * 4)
    program = torch.export.export(_Forward(model), (), kwargs=dict(**batch, decoder_input_ids=decoder_input_ids))
    with torch.no_grad():
        expected = _Forward(model)(**batch, decoder_input_ids=decoder_input_ids)
    assert torch.allclose(program.module()(**batch, decoder_input_ids=decoder_input_ids), expected, atol=1e-6)
    # The eager-only checks are still there outside tracing, with their messages.
    bad = dict(batch, visual_boxes=batch["visual_boxes"] * 3)
    with pytest.raises(ValueError, match="coordinates must be normalised"):
        model(**bad, decoder_input_ids=decoder_input_ids)


def test_exported_encoder_and_decoder_step_generate_what_generate_does():
    model = tiny_model()
    batch = _inputs(make_batch(model.config))
    encoder = torch.export.export(_Encoder(model), (), kwargs=batch).module()
    start = model.generation_config.decoder_start_token_id
    prefix = torch.full((4, 1), start)
    step_dim = torch.export.Dim("decoded", min=1, max=32)
    states = encoder(**batch)
    decoder = torch.export.export(  # a 2-token example prefix, so the length is not specialised to 1
        _DecoderStep(model), (states, batch["attention_mask"], torch.cat([prefix, prefix], 1)),
        dynamic_shapes={"encoder_states": None, "attention_mask": None, "decoder_input_ids": {1: step_dim}}).module()
    eos = model.generation_config.eos_token_id
    for _ in range(7):  # greedy, EOS suppressed as min_new_tokens does (the 8th token is generate()'s forced EOS)
        logits = decoder(states, batch["attention_mask"], prefix)
        logits[:, eos] = float("-inf")
        prefix = torch.cat([prefix, logits.argmax(-1, keepdim=True)], dim=1)
    with torch.no_grad():
        expected = model.generate(**batch, num_beams=1, do_sample=False, max_new_tokens=8, min_new_tokens=8)
    assert torch.equal(prefix, expected[:, : prefix.shape[1]])
    assert torch.allclose(states, model.get_encoder()(**batch).last_hidden_state, atol=1e-6)


# -- initialisation parity -----------------------------------------------------------------------------------------


def test_clip_backbone_is_initialised_alike_by_init_and_from_pretrained(tmp_path):
    from safetensors.torch import save_file

    config = preset_config("tiny", visual_input="images", vision_num_hidden_layers=2, vision_hidden_size=64,
                           vision_intermediate_size=128)
    config.text_config.init_std = 0.5  # a text std far from CLIP's, so a mix-up shows
    torch.manual_seed(0)
    built = MMAPSForConditionalGeneration(config)
    built.save_pretrained(tmp_path)
    save_file({}, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})  # every weight missing
    loaded = MMAPSForConditionalGeneration.from_pretrained(tmp_path)
    # CLIP's own init: q/k/v std = d^-1/2 (2 layers)^-1/2, fc1 std = (2d)^-1/2 (initializer_factor 1).
    d, layers = 64, 2
    for model in (built, loaded):
        layer = model.model.encoder.visual_encoder.backbone.encoder.layers[0]
        assert layer.self_attn.q_proj.weight.std().item() == pytest.approx(d ** -0.5 * (2 * layers) ** -0.5, rel=0.1)
        assert layer.mlp.fc1.weight.std().item() == pytest.approx((2 * d) ** -0.5, rel=0.1)
    # And our own modules take the text std on both paths.
    for model in (built, loaded):
        assert model.model.encoder.fusion.query.weight.std().item() == pytest.approx(0.5, rel=0.15)


# -- the Auto classes ----------------------------------------------------------------------------------------------


def test_auto_model_and_auto_seq2seq_load_a_saved_folder_in_a_clean_process(tmp_path):
    model = tiny_model()
    folder = tmp_path / "mmaps"
    model.save_pretrained(folder)
    preset_processor("tiny").save_pretrained(folder)
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == "modeling_mmaps.MMAPSModel"
    assert auto_map["AutoModelForSeq2SeqLM"] == "modeling_mmaps.MMAPSForConditionalGeneration"
    batch = _inputs(make_batch(model.config))
    with torch.no_grad():
        expected = model.model(**batch).last_hidden_state[0, :2, :3].tolist()
    code = f"""
    import json, torch
    from transformers import AutoModel, AutoModelForSeq2SeqLM
    base = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
    lm = AutoModelForSeq2SeqLM.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
    batch = {{k: torch.tensor(v) for k, v in {json.dumps({k: v.tolist() for k, v in batch.items()})}.items()}}
    with torch.no_grad():
        states = base(**batch).last_hidden_state[0, :2, :3].tolist()
    print(json.dumps({{"base": type(base).__name__, "lm": type(lm).__name__, "states": states}}))
    """
    result = run_isolated(code, cwd=tmp_path)
    assert result["base"] == "MMAPSModel" and result["lm"] == "MMAPSForConditionalGeneration"
    assert torch.allclose(torch.tensor(result["states"]), torch.tensor(expected), atol=1e-5)


# -- the original's forms ------------------------------------------------------------------------------------------


def test_box_area_corrected_and_the_originals_swapped_form():
    boxes = torch.tensor([[0.1, 0.2, 0.5, 0.9]])  # (x1, y1, x2, y2)
    assert box_area(boxes).item() == pytest.approx(0.4 * 0.7)
    assert box_area(boxes, "original").item() == pytest.approx((0.9 - 0.5) * (0.2 - 0.1))
    model = tiny_model(box_area_form="original")
    features = torch.zeros(1, 1, 16)
    encoder = model.model.encoder.visual_encoder
    embeds, _ = encoder.embed(features, boxes[None])
    expected = encoder.feature_projection(features) + encoder.box_projection(
        torch.tensor([[[0.1, 0.2, 0.5, 0.9, 0.04]]]))
    assert torch.allclose(embeds, expected, atol=1e-6)


def test_original_visual_transformer_scales_adds_positions_and_order_embeddings():
    table = sinusoidal_positions(3, 4, torch.device("cpu"), torch.float32)
    assert table[2].tolist() == pytest.approx([math.sin(2), math.cos(2), math.sin(2 / 100), math.cos(2 / 100)])
    model = tiny_model(visual_encoder_style="original", num_visual_layers=0)
    encoder = model.model.encoder.visual_encoder
    assert len(encoder.layers) == 0 and encoder.region_order_embedding is not None
    g = torch.Generator().manual_seed(0)
    features, boxes = torch.randn(1, 2, 16, generator=g), torch.tensor([[[0, 0, .5, .5], [.5, .5, 1, 1.]]])
    embeds, _ = encoder.embed(features, boxes)
    plain = encoder.feature_projection(features) + encoder.box_projection(
        torch.cat([boxes, box_area(boxes)[..., None]], -1))
    order = encoder.region_order_embedding.weight[:2] + encoder.image_order_embedding.weight[0]
    assert torch.allclose(embeds, plain + order[None], atol=1e-6)
    cls_state, states = encoder.encode(embeds, torch.ones(1, 2, dtype=torch.long))  # no layers: the input itself
    d = model.config.visual_hidden_size
    positions = sinusoidal_positions(3, d, torch.device("cpu"), torch.float32)
    assert torch.allclose(cls_state[0], encoder.cls_embedding * math.sqrt(d) + positions[0], atol=1e-5)
    assert torch.allclose(states[0], embeds[0] * math.sqrt(d) + positions[1:], atol=1e-5)


def test_original_visual_layer_uses_relu_ours_gelu():
    layer = tiny_model(visual_encoder_style="original").model.encoder.visual_encoder.layers[0].eval()
    assert tiny_model().model.encoder.visual_encoder.layers[0].activation is F.gelu
    x, mask = torch.randn(1, 3, 32, generator=torch.Generator().manual_seed(0)), torch.ones(1, 3, dtype=torch.bool)
    with torch.no_grad():
        q, k, v = layer.qkv(x).view(1, 3, 3, 2, 16).unbind(2)
        attention = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        h = layer.attention_norm(x + layer.out_proj(attention.transpose(1, 2).reshape(1, 3, 32)))
        expected = layer.output_norm(h + layer.fc2(torch.relu(layer.fc1(h))))
        assert torch.allclose(layer(x, mask), expected, atol=1e-5)


def test_attribute_pooling_sum_is_the_masked_sum():
    model = tiny_model(attribute_pooling="sum")
    batch = make_batch(model.config)
    with torch.no_grad():
        encoder_outputs = model.get_encoder()(**_inputs(batch))
        logits = model.get_attribute_logits(encoder_outputs, batch["attention_mask"])
        head, mask = model.attribute_head, batch["attention_mask"][..., None].float()
        expected = head.classifier(
            head.text_projection((encoder_outputs.text_hidden_states * mask).sum(1))
            + head.fused_projection((encoder_outputs.last_hidden_state * mask).sum(1))
            + head.cls_projection(encoder_outputs.text_embeds))
    assert torch.allclose(logits, expected, atol=1e-5)
    mean_model = tiny_model()
    with torch.no_grad():
        mean_outputs = mean_model.get_encoder()(**_inputs(batch))
        mean_head = mean_model.attribute_head
        mean_expected = mean_head.classifier(
            mean_head.text_projection((mean_outputs.text_hidden_states * mask).sum(1) / mask.sum(1))
            + mean_head.fused_projection((mean_outputs.last_hidden_state * mask).sum(1) / mask.sum(1))
            + mean_head.cls_projection(mean_outputs.text_embeds))
        assert torch.allclose(mean_model.get_attribute_logits(mean_outputs, batch["attention_mask"]), mean_expected,
                              atol=1e-5)


def test_original_contrast_head_is_d_to_d_with_scale_e():
    model = tiny_model(contrastive_projection_dim=32, contrastive_logit_scale_init=1.0)
    assert model.text_projection.weight.shape == (32, 32) and model.text_projection.bias is None
    assert model.logit_scale.exp().item() == pytest.approx(math.e)
    assert tiny_model().logit_scale.exp().item() == pytest.approx(1 / 0.07)
    assert tiny_model().text_projection.weight.shape == (16, 32)  # ours: fusion_hidden_size


def test_hausdorff_distance_hand_value_with_padding_masked():
    # Text tokens along x and y; regions along x and (padded) -x. Unit vectors, so d = ‖t − r‖.
    text = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])  # third token is padding
    regions = torch.tensor([[[2.0, 0.0], [-1.0, 0.0]]])  # second region is padding
    distance = hausdorff_distance(text, torch.tensor([[1, 1, 0]]), regions, torch.tensor([[1, 0]]))
    # h(T→R) = max(d(x, x), d(y, x)) = √2; h(R→T) = d(x, x) = 0; H = √2.
    assert distance.item() == pytest.approx(math.sqrt(2))
    # One real token x and one real region x: distance 0 once padding is masked; the original, reading the padded
    # token (5, 5) and region −x too, gets d(−x, (5, 5)/‖·‖) = √(2 + √2).
    text, regions = torch.tensor([[[1.0, 0.0], [5.0, 5.0]]]), torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])
    pad_text, pad_regions = torch.tensor([[1, 0]]), torch.tensor([[1, 0]])
    assert hausdorff_distance(text, pad_text, regions, pad_regions).item() == pytest.approx(0.0, abs=1e-6)
    unmasked = hausdorff_distance(text, torch.ones(1, 2), regions, torch.ones(1, 2))
    assert unmasked.item() == pytest.approx(math.sqrt(2 + math.sqrt(2)))
    model = tiny_model(alignment_loss_form="original")
    batch = make_batch(model.config)
    out = model(**batch)
    with torch.no_grad():
        has = batch["image_mask"].bool()
        enc = model.get_encoder()(**_inputs(batch))
        expected = (hausdorff_distance(enc.text_hidden_states[has], batch["attention_mask"][has],
                                       model.alignment_projection(enc.visual_hidden_states[has]),
                                       enc.visual_attention_mask[has]) ** 2).mean()
    assert out.alignment_loss.item() == pytest.approx(expected.item(), rel=1e-5)
