"""Specification tests of the MMAPS seq2seq model, its config and processor (issue 7).

Tiny random models only; every test runs in a second or two on CPU, the overfitting one in a few seconds.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, BartConfig, BartForConditionalGeneration

from modeling_mmaps import MMAPSConfig, MMAPSForConditionalGeneration, MMAPSProcessor
from modeling_mmaps.modeling_mmaps import (
    insert_text_cls, remove_text_cls, token_region_contrastive_loss, token_region_similarity,
)
from modeling_mmaps.presets import preset_config, preset_processor
from tests.hub_isolation import run_isolated

TASKS = ("summary", "attribute", "alignment", "contrastive", "region")


def make_batch(config: MMAPSConfig, batch: int = 4, length: int = 9, regions: int = 5,
               image_mask: tuple[int, ...] = (1, 1, 1, 0), seed: int = 1) -> dict[str, torch.Tensor]:
    """Random text (second example padded), region features (first example with 2 padded regions), labels."""
    g = torch.Generator().manual_seed(seed)
    text = config.text_config
    input_ids = torch.randint(5, text.vocab_size, (batch, length), generator=g)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[1, length - 3:] = 0
    input_ids[attention_mask == 0] = text.pad_token_id
    labels = torch.randint(5, text.vocab_size, (batch, 6), generator=g)
    labels[:, 0] = text.bos_token_id
    labels[:, -1] = text.eos_token_id
    labels[2, 4:] = -100
    xy = torch.rand(batch, regions, 2, generator=g) * 0.5
    boxes = torch.cat([xy, xy + torch.rand(batch, regions, 2, generator=g) * 0.5], -1)
    visual_mask = torch.ones(batch, regions, dtype=torch.long)
    visual_mask[0, regions - 2:] = 0
    return {
        "input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
        "visual_features": torch.randn(batch, regions, config.visual_feature_dim, generator=g),
        "visual_boxes": boxes, "visual_attention_mask": visual_mask,
        "visual_class_probs": torch.softmax(torch.randn(batch, regions, config.num_region_classes, generator=g), -1),
        "image_mask": torch.tensor(image_mask[:batch]),
        "attribute_labels": (torch.rand(batch, config.num_attributes, generator=g) > 0.5).float(),
    }


def tiny_model(**overrides) -> MMAPSForConditionalGeneration:
    torch.manual_seed(0)
    return MMAPSForConditionalGeneration(preset_config("tiny", **overrides)).eval()


def grad_norm(module: torch.nn.Module) -> float:
    grads = [p.grad.abs().sum().item() for p in module.parameters() if p.grad is not None]
    return float(sum(grads))


# ------------------------------------------------------------------------------------------------------------------
# Config and processor
# ------------------------------------------------------------------------------------------------------------------


def test_tiny_config_matches_tiny_processor_and_round_trips(tmp_path):
    config = preset_config("tiny", num_attributes=7)
    processor = preset_processor("tiny")
    assert len(processor.tokenizer) == config.text_config.vocab_size == 128
    tok = processor.tokenizer
    assert (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id) == (
        config.text_config.pad_token_id, config.text_config.bos_token_id, config.text_config.eos_token_id)
    config.save_pretrained(tmp_path)
    loaded = MMAPSConfig.from_pretrained(tmp_path)
    assert loaded.num_attributes == 7 and loaded.text_config.d_model == 32 and loaded.model_type == "mmaps"
    assert (loaded.summary_loss_weight, loaded.attribute_loss_weight, loaded.alignment_loss_weight,
            loaded.contrastive_loss_weight, loaded.region_loss_weight) == (1.0, 0.3, 0.3, 0.05, 0.8)
    with pytest.raises(ValueError, match="region_mask_ratio"):
        preset_config("tiny", region_mask_ratio=1.5)


def test_processor_packs_labels_regions_attributes_and_saves_vocabulary(tmp_path):
    processor = preset_processor("tiny", attribute_vocabulary=["真皮", "黑色", "大容量"])
    batch = processor(
        ["这款包的材质很好", "简约百搭"], summaries=["时尚大容量", "黑色真皮手提"],
        visual_features=[[[0.1] * 16] * 3, None], visual_boxes=[[[0.0, 0.0, 0.5, 0.5]] * 3, None],
        attributes=[["大容量"], ["黑色", "真皮", "不在词表"]],
    )
    assert batch["labels"][0].tolist()[-1] == -100 and batch["labels"][1].tolist()[-1] == 3  # pad → -100; EOS kept
    assert batch["labels"][1, 0].item() == 2  # BOS
    assert batch["visual_attention_mask"].tolist() == [[1, 1, 1], [0, 0, 0]]
    assert batch["image_mask"].tolist() == [1, 0]
    assert batch["attribute_labels"].tolist() == [[0, 0, 1], [1, 1, 0]]
    assert processor.batch_decode(batch["input_ids"]) == ["这款包的材质很好", "简约百搭"]
    decoded = processor.decode_attributes(torch.tensor([[0.9, 0.2, 0.7]]))
    assert [d["attribute"] for d in decoded[0]] == ["真皮", "大容量"]
    processor.save_pretrained(tmp_path)
    loaded = MMAPSProcessor.from_pretrained(tmp_path)
    assert loaded.attribute_vocabulary == ["真皮", "黑色", "大容量"] and len(loaded.tokenizer) == 128
    assert torch.equal(loaded(["这款包"])["input_ids"], processor(["这款包"])["input_ids"])


def test_processor_mixes_products_with_and_without_images():
    from PIL import Image

    processor = preset_processor("tiny")
    image = Image.new("RGB", (40, 30), color=(200, 30, 30))
    batch = processor(["这款包", "好", "大容量"], images=[image, None, image])
    assert batch["pixel_values"].shape == (3, 3, 32, 32)
    assert batch["image_mask"].tolist() == [1, 0, 1]
    assert batch["pixel_values"][1].abs().sum().item() == 0.0
    assert torch.equal(batch["pixel_values"][0], batch["pixel_values"][2])


# ------------------------------------------------------------------------------------------------------------------
# Forward, losses, gradients
# ------------------------------------------------------------------------------------------------------------------


def test_forward_reports_five_losses_and_total_is_their_weighted_sum():
    model = tiny_model()
    out = model(**make_batch(model.config))
    losses = {t: getattr(out, f"{t}_loss") for t in TASKS}
    assert all(v is not None and torch.isfinite(v) and v.item() > 0 for v in losses.values()), losses
    weights = {t: getattr(model.config, f"{t}_loss_weight") for t in TASKS}
    expected = sum(weights[t] * losses[t] for t in TASKS)
    torch.testing.assert_close(out.loss, expected)
    assert out.attribute_logits.shape == (4, model.config.num_attributes)
    assert out.logits.shape == (4, 6, 128)
    # A random 128-way decoder starts near ln(128) = 4.85.
    assert 4.0 < out.summary_loss.item() < 6.0


TASK_PARAMETERS = {
    "attribute": "attribute_head",
    "alignment": "alignment_projection",
    "contrastive": "image_projection",
    "region": "region_class_head",
}


@pytest.mark.parametrize("task", ["attribute", "alignment", "contrastive", "region"])
def test_zero_weight_removes_a_task_exactly(task):
    full = tiny_model()
    ablated = tiny_model(**{f"{task}_loss_weight": 0.0})
    ablated.load_state_dict(full.state_dict())
    batch = make_batch(full.config)
    torch.manual_seed(5)
    out_full = full(**batch)
    torch.manual_seed(5)
    out_ablated = ablated(**batch)
    zeroed = getattr(out_ablated, f"{task}_loss")   # reported as a constant 0 without gradient
    assert zeroed.item() == 0.0 and not zeroed.requires_grad
    removed = getattr(full.config, f"{task}_loss_weight") * getattr(out_full, f"{task}_loss")
    torch.testing.assert_close(out_ablated.loss, out_full.loss - removed, rtol=0, atol=1e-6)
    out_ablated.loss.backward()
    assert grad_norm(getattr(ablated, TASK_PARAMETERS[task])) == 0.0


def _task_only_model(task: str) -> MMAPSForConditionalGeneration:
    return tiny_model(**{f"{t}_loss_weight": (1.0 if t == task else 0.0) for t in TASKS})


@pytest.mark.parametrize(
    ("task", "reached", "not_reached"),
    [
        ("summary", ["model.decoder.layers", "lm_head", "model.encoder.fusion", "model.encoder.visual_encoder",
                     "model.encoder.text_encoder"], ["attribute_head", "alignment_projection", "region_class_head"]),
        ("attribute", ["attribute_head", "model.encoder.fusion", "model.encoder.text_encoder",
                       "model.encoder.visual_encoder"], ["model.decoder.layers", "alignment_projection", "region_class_head"]),
        ("alignment", ["alignment_projection", "model.encoder.visual_encoder.layers", "model.encoder.text_encoder"],
         ["model.decoder.layers", "model.encoder.fusion", "attribute_head"]),
        ("contrastive", ["text_projection", "image_projection", "model.encoder.visual_encoder.layers",
                         "model.encoder.text_encoder"], ["model.decoder.layers", "model.encoder.fusion", "attribute_head"]),
        ("region", ["region_class_head", "model.encoder.visual_encoder.layers",
                    "model.encoder.visual_encoder.feature_projection"],
         ["model.decoder.layers", "model.encoder.text_encoder", "model.encoder.fusion", "region_feature_head"]),
    ],
)
def test_each_task_gradient_reaches_the_parameters_it_should(task, reached, not_reached):
    model = _task_only_model(task)
    out = model(**make_batch(model.config))
    assert getattr(out, f"{task}_loss") is not None
    out.loss.backward()
    for name in reached:
        assert grad_norm(model.get_submodule(name)) > 0, f"{task} loss does not reach {name}"
    for name in not_reached:
        assert grad_norm(model.get_submodule(name)) == 0, f"{task} loss leaks into {name}"
    if task == "contrastive":
        assert model.logit_scale.grad is not None and model.logit_scale.grad.item() != 0
        assert model.model.encoder.text_cls_embedding.grad.abs().sum() > 0
        assert model.model.encoder.visual_encoder.cls_embedding.grad.abs().sum() > 0
    if task == "region":
        assert model.model.encoder.visual_encoder.mask_embedding.grad.abs().sum() > 0


def test_token_region_alignment_cannot_be_satisfied_by_a_collapsed_encoder():
    """The fine-grained alignment is contrastive: constant token/region states score chance (ln B), matched
    distinct sets score far below it; padding on either side never changes a similarity."""
    g = torch.Generator().manual_seed(0)
    batch, length, regions, dim = 4, 5, 3, 8
    text_mask = torch.ones(batch, length, dtype=torch.long)
    text_mask[1, 3:] = 0
    region_mask = torch.ones(batch, regions, dtype=torch.long)
    region_mask[2, 2:] = 0
    scale = torch.tensor(4.0)  # exp(4) ≈ 55, a sharp temperature
    constant = torch.ones(batch, length, dim)
    collapsed = token_region_contrastive_loss(constant, text_mask, torch.ones(batch, regions, dim), region_mask, scale)
    torch.testing.assert_close(collapsed, torch.tensor(float(torch.log(torch.tensor(float(batch))))))
    # Each product's tokens and regions are noisy copies of its own orthogonal "concept" vectors.
    concepts = torch.eye(dim)[: batch * 2].view(batch, 2, dim)
    tokens = concepts[:, torch.tensor([0, 1, 0, 1, 0])] + 0.05 * torch.randn(batch, length, dim, generator=g)
    image = concepts[:, torch.tensor([1, 0, 1])] + 0.05 * torch.randn(batch, regions, dim, generator=g)
    matched = token_region_contrastive_loss(tokens, text_mask, image, region_mask, scale)
    assert matched.item() < 0.05 < collapsed.item()
    # Garbage in padded positions is ignored on both sides.
    similarity = token_region_similarity(tokens, text_mask, image, region_mask)
    tokens_garbage, image_garbage = tokens.clone(), image.clone()
    tokens_garbage[1, 3:] = 100 * torch.randn(2, dim, generator=g)
    image_garbage[2, 2:] = 100 * torch.randn(1, dim, generator=g)
    torch.testing.assert_close(token_region_similarity(tokens_garbage, text_mask, image_garbage, region_mask),
                               similarity)
    assert similarity.diagonal().min() > 0.9 and (similarity - torch.eye(batch) * 10).max() < 0.2


def test_fusion_starts_as_the_identity_on_the_text_states():
    """W_r's text half is zero at init: imageless products read exactly the text states; imaged ones only gain the
    (small) gated visual term."""
    model = tiny_model()
    batch = make_batch(model.config)
    encoder_inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "visual_features", "visual_boxes",
                                            "visual_attention_mask", "image_mask")}
    encoded = model.get_encoder()(**encoder_inputs)
    assert torch.equal(encoded.last_hidden_state[3], encoded.text_hidden_states[3])
    visual_term = (encoded.last_hidden_state[:3] - encoded.text_hidden_states[:3]).abs()
    assert 0 < visual_term.max().item() < 0.1 * encoded.text_hidden_states[:3].abs().max().item()


def test_region_modelling_regresses_features_without_detector_distributions():
    model = _task_only_model("region")
    batch = make_batch(model.config)
    batch.pop("visual_class_probs")
    out = model(**batch)
    out.loss.backward()
    assert out.region_loss.item() > 0.5  # MSE of a random head against N(0, 1) features
    assert grad_norm(model.region_feature_head) > 0 and grad_norm(model.region_class_head) == 0


# ------------------------------------------------------------------------------------------------------------------
# Missing images, padding
# ------------------------------------------------------------------------------------------------------------------


def test_missing_images_are_never_attended_and_skip_visual_losses():
    model = tiny_model()
    batch = make_batch(model.config, image_mask=(1, 1, 1, 0))
    out = model(**batch)
    garbage = dict(batch, visual_features=batch["visual_features"].clone(), visual_boxes=batch["visual_boxes"].clone())
    garbage["visual_features"][3] = 1e4 * torch.randn_like(garbage["visual_features"][3])
    garbage["visual_boxes"][3] = torch.rand_like(garbage["visual_boxes"][3])
    out_garbage = model(**garbage)
    assert torch.equal(out.logits[3], out_garbage.logits[3])
    # The imageless product alone, with no visual input at all, gives the same logits.
    alone = model(input_ids=batch["input_ids"][3:], attention_mask=batch["attention_mask"][3:],
                  labels=batch["labels"][3:])
    torch.testing.assert_close(alone.logits[0], out.logits[3], rtol=0, atol=1e-5)
    encoded = model.get_encoder()(**{k: batch[k] for k in ("input_ids", "attention_mask", "visual_features",
                                                          "visual_boxes", "visual_attention_mask", "image_mask")})
    assert encoded.fusion_gate[3].abs().sum().item() == 0.0 and encoded.fusion_gate[0].abs().sum().item() > 0
    # A batch without a single image: visual tasks are skipped, text tasks still run.
    text_only = model(**make_batch(model.config, image_mask=(0, 0, 0, 0)))
    for name in ("alignment_loss", "contrastive_loss", "region_loss"):   # reported as a constant 0, no gradient
        value = getattr(text_only, name)
        assert value.item() == 0.0 and not value.requires_grad, name
    assert text_only.summary_loss.item() > 0 and text_only.attribute_loss.item() > 0
    weights = {t: getattr(model.config, f"{t}_loss_weight") for t in TASKS}
    torch.testing.assert_close(text_only.loss, weights["summary"] * text_only.summary_loss
                               + weights["attribute"] * text_only.attribute_loss)


def test_readme_batch_with_one_imaged_product_reports_every_task_loss():
    # The README's MMAPS snippet, exactly: two products, only the first has an image, so the alignment and
    # contrastive tasks have no pair (they need two imaged products) while region modelling still runs.
    processor = preset_processor("tiny", attribute_vocabulary=["真皮", "黑色"])
    model = MMAPSForConditionalGeneration(preset_config("tiny", num_attributes=2))
    batch = processor(["这款包的材质很好，真皮手提", "简约百搭大容量"], summaries=["真皮手提", "大容量百搭"],
                      attributes=[["真皮"], []],
                      visual_features=[torch.randn(3, 16), None],
                      visual_boxes=[torch.tensor([[0.0, 0.0, 0.5, 0.5]] * 3), None])
    out = model(**batch)
    reported = {t: float(getattr(out, f"{t}_loss").detach()) for t in TASKS}
    assert reported["alignment"] == 0.0 and reported["contrastive"] == 0.0, reported
    assert not out.alignment_loss.requires_grad and not out.contrastive_loss.requires_grad
    assert reported["summary"] > 0 and reported["attribute"] > 0 and reported["region"] > 0, reported
    assert out.summary_loss.requires_grad and out.region_loss.requires_grad
    weights = {t: getattr(model.config, f"{t}_loss_weight") for t in TASKS}
    torch.testing.assert_close(out.loss, sum(weights[t] * getattr(out, f"{t}_loss") for t in TASKS))
    out.loss.backward()   # the zeros carry no graph and do not break the backward pass


def test_plain_inference_reports_no_loss():
    model = tiny_model()
    batch = make_batch(model.config)
    out = model(**{k: v for k, v in batch.items() if k not in ("labels", "attribute_labels")},
                decoder_input_ids=batch["labels"].clamp(min=0))
    assert out.loss is None and all(getattr(out, f"{t}_loss") is None for t in TASKS)


def test_padding_does_not_change_an_example():
    model = tiny_model()
    batch = make_batch(model.config)
    keep = ("input_ids", "attention_mask", "visual_features", "visual_boxes", "visual_attention_mask",
            "image_mask", "labels")
    full = model(**{k: batch[k] for k in keep}).logits
    n_text = int(batch["attention_mask"][1].sum())
    single = {k: batch[k][1:2] for k in keep}
    single["input_ids"], single["attention_mask"] = single["input_ids"][:, :n_text], single["attention_mask"][:, :n_text]
    torch.testing.assert_close(model(**single).logits[0], full[1], rtol=0, atol=1e-5)


def test_text_cls_is_inserted_after_the_last_token_and_removed_again():
    embeds = torch.arange(2 * 4 * 1, dtype=torch.float).view(2, 4, 1)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    extended, extended_mask, pos = insert_text_cls(embeds, mask, torch.tensor([-1.0]))
    assert pos.tolist() == [4, 2]
    assert extended[..., 0].tolist() == [[0, 1, 2, 3, -1], [4, 5, -1, 6, 7]]
    assert extended_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    text, cls = remove_text_cls(extended, pos)
    assert torch.equal(text, embeds) and cls[:, 0].tolist() == [-1, -1]


# ------------------------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda b: b.update(visual_features=b["visual_features"][..., :10]), "visual_features"),
        (lambda b: b["visual_boxes"].__setitem__((0, 0, 0), 1.5), "visual_boxes"),
        (lambda b: b["visual_boxes"].__setitem__((1, 1, 2), -0.2), "visual_boxes"),
        (lambda b: b.update(attribute_labels=b["attribute_labels"][:, :3]), "attribute_labels"),
        (lambda b: b["attention_mask"].__setitem__(2, 0), "input_ids"),
        (lambda b: b.update(input_ids=b["input_ids"][:, :0], attention_mask=b["attention_mask"][:, :0]), "input_ids"),
        (lambda b: b.update(visual_class_probs=b["visual_class_probs"][..., :3]), "visual_class_probs"),
        (lambda b: b.update(image_mask=b["image_mask"][:2]), "image_mask"),
    ],
)
def test_bad_input_raises_a_clear_error_naming_the_field(change, field):
    model = tiny_model()
    batch = make_batch(model.config)
    change(batch)
    with pytest.raises(ValueError, match=field):
        model(**batch)


def test_processor_rejects_empty_text_and_out_of_range_boxes():
    processor = preset_processor("tiny")
    with pytest.raises(ValueError, match="text"):
        processor(["好", "  "])
    with pytest.raises(ValueError, match="visual_boxes"):
        processor(["好"], visual_features=[[[0.0] * 16]], visual_boxes=[[[0.0, 0.0, 1.2, 0.5]]])


# ------------------------------------------------------------------------------------------------------------------
# Generation
# ------------------------------------------------------------------------------------------------------------------

VISUAL_KEYS = ("visual_features", "visual_boxes", "visual_attention_mask", "image_mask")


def test_beam_search_encodes_once_and_expands():
    model = tiny_model()
    batch = make_batch(model.config)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", *VISUAL_KEYS)}
    calls = []
    hooks = [model.get_encoder().register_forward_hook(lambda m, a, kw, o: calls.append(kw["input_ids"].shape[0]),
                                                       with_kwargs=True),
             model.model.encoder.visual_encoder.layers[0].register_forward_hook(
                 lambda m, a, o: calls.append(("visual", a[0].shape[0])))]
    generated = model.generate(**inputs, num_beams=3, max_new_tokens=8, do_sample=False)
    for hook in hooks:
        hook.remove()
    assert calls == [("visual", 4), 4], calls  # one encoder run on the 4 products, none per beam or step
    # Same result when the caller runs the encoder once and hands its output to generate().
    encoder_outputs = model.get_encoder()(**inputs)
    reused = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                            encoder_outputs=encoder_outputs, num_beams=3, max_new_tokens=8, do_sample=False)
    assert torch.equal(generated, reused)
    # Beam expansion repeats each product's encoding: beam search with 1 beam is greedy.
    greedy = model.generate(**inputs, num_beams=1, max_new_tokens=8, do_sample=False)
    assert torch.equal(greedy, model.generate(**inputs, num_beams=1, max_new_tokens=8, do_sample=False, use_cache=False))


def test_beam_search_on_a_mixed_batch_matches_each_product_alone():
    model = tiny_model()
    batch = make_batch(model.config, image_mask=(1, 0, 1, 0))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", *VISUAL_KEYS)}
    kwargs = dict(num_beams=3, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    together = model.generate(**inputs, **kwargs)
    for i in range(4):
        n = int(batch["attention_mask"][i].sum())
        alone = {"input_ids": batch["input_ids"][i:i + 1, :n], "attention_mask": batch["attention_mask"][i:i + 1, :n]}
        if batch["image_mask"][i]:
            alone.update({k: batch[k][i:i + 1] for k in VISUAL_KEYS})
        assert torch.equal(model.generate(**alone, **kwargs)[0], together[i]), i


def test_generation_uses_explicit_bos_eos_from_generation_config():
    model = tiny_model()
    processor = preset_processor("tiny")
    model.generation_config.forced_bos_token_id = processor.tokenizer.cls_token_id
    model.generation_config.max_new_tokens = 6
    generated = model.generate(**processor(["这款包的材质很好"]))
    assert generated[0, 0].item() == model.config.text_config.decoder_start_token_id == processor.tokenizer.sep_token_id
    assert generated[0, 1].item() == processor.tokenizer.cls_token_id
    assert generated[0, -1].item() == processor.tokenizer.sep_token_id  # forced EOS at the length limit
    text = processor.batch_decode(generated)[0]
    assert "[CLS]" not in text and "[SEP]" not in text and " " not in text


# ------------------------------------------------------------------------------------------------------------------
# Parity with BART
# ------------------------------------------------------------------------------------------------------------------


def test_from_bart_pretrained_with_multimodal_parts_off_is_exactly_bart(tmp_path):
    torch.manual_seed(3)
    bart_config = BartConfig(**preset_config("tiny").text_config.to_dict())
    bart = BartForConditionalGeneration(bart_config).eval()
    with torch.no_grad():
        bart.final_logits_bias.normal_()  # a non-zero bias must be copied too
    bart.save_pretrained(tmp_path / "bart")
    model = MMAPSForConditionalGeneration.from_bart_pretrained(
        str(tmp_path / "bart"), use_visual=False, use_text_cls=False, num_attributes=0).eval()
    batch = make_batch(model.config)
    text_inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        ours = model(**text_inputs, labels=batch["labels"])
        theirs = bart(**text_inputs, labels=batch["labels"])
    assert torch.equal(ours.logits, theirs.logits)
    assert torch.equal(ours.summary_loss, theirs.loss)
    kwargs = dict(num_beams=3, max_new_tokens=10, do_sample=False)
    assert torch.equal(model.generate(**text_inputs, **kwargs), bart.generate(**text_inputs, **kwargs))
    # With the multimodal parts on, the BART weights are the starting point of a different model.
    multimodal = MMAPSForConditionalGeneration.from_bart_pretrained(str(tmp_path / "bart")).eval()
    assert torch.equal(multimodal.model.decoder.layers[0].fc1.weight, bart.model.decoder.layers[0].fc1.weight)
    assert not torch.equal(multimodal(**text_inputs, labels=batch["labels"]).logits, theirs.logits)


# ------------------------------------------------------------------------------------------------------------------
# Learning
# ------------------------------------------------------------------------------------------------------------------


def test_tiny_model_overfits_a_handful_of_products():
    processor = preset_processor("tiny", attribute_vocabulary=["真皮", "黑色", "大容量", "防水", "轻便"])
    texts = ["这款包的材质很好真皮手提", "简约百搭大容量单肩包", "商务风格黑色防水设计", "休闲轻便透气女士斜挎"]
    summaries = ["真皮手提时尚", "大容量百搭", "黑色防水商务", "轻便透气休闲"]
    attributes = [["真皮"], ["大容量"], ["黑色", "防水"], ["轻便"]]
    g = torch.Generator().manual_seed(0)
    features = [torch.randn(3, 16, generator=g) for _ in texts]
    boxes = [torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.2, 0.2, 0.8, 0.8]])] * 4
    batch = processor(texts, summaries=summaries, attributes=attributes, visual_features=features, visual_boxes=boxes)
    torch.manual_seed(0)
    model = MMAPSForConditionalGeneration(preset_config("tiny", num_attributes=5))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    first = None
    for _ in range(120):
        out = model(**batch)
        first = first if first is not None else out.summary_loss.item()
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    model.eval()
    final = model(**batch)
    assert final.summary_loss.item() < 0.1 * first, (first, final.summary_loss.item())
    assert final.attribute_loss.item() < 0.2
    generated = model.generate(**{k: v for k, v in batch.items() if k not in ("labels", "attribute_labels")},
                               num_beams=3, max_new_tokens=12)
    assert processor.batch_decode(generated) == summaries
    encoder_inputs = {k: v for k, v in batch.items() if k not in ("labels", "attribute_labels")}
    probs, predicted = model.predict_attributes(**encoder_inputs)
    assert torch.equal(predicted.float(), batch["attribute_labels"])
    assert [[a["attribute"] for a in row] for row in processor.decode_attributes(probs)] == [
        sorted(words, key=lambda w: -probs[i, processor.attribute_vocabulary.index(w)].item())
        for i, words in enumerate(attributes)]


# ------------------------------------------------------------------------------------------------------------------
# Raw images through a vision backbone
# ------------------------------------------------------------------------------------------------------------------


def test_pixel_path_runs_a_vision_backbone_and_masks_missing_images():
    from PIL import Image

    model = tiny_model(visual_input="images")
    processor = preset_processor("tiny")
    images = [Image.new("RGB", (32, 32), color=(i * 60, 20, 200)) for i in range(3)]
    batch = processor(["这款包的材质很好", "简约百搭", "黑色", "大容量"], images=images + [None],
                      summaries=["真皮手提", "大容量", "黑色", "好"])
    out = model(**batch)
    assert out.region_loss is not None and out.contrastive_loss is not None and out.alignment_loss is not None
    out.loss.backward()
    assert grad_norm(model.model.encoder.visual_encoder.backbone) > 0
    garbage = dict(batch)
    garbage["pixel_values"] = batch["pixel_values"].clone()
    garbage["pixel_values"][3] = torch.randn(3, 32, 32)
    assert torch.equal(model(**garbage).logits[3], out.logits[3])
    generated = model.generate(**{k: v for k, v in batch.items() if k != "labels"}, num_beams=2, max_new_tokens=5)
    assert generated.shape[0] == 4
    with pytest.raises(ValueError, match="visual_features"):
        model(**batch, visual_features=torch.zeros(4, 2, 16))


def test_pixel_model_save_load_is_identical(tmp_path):
    # from_pretrained builds on the meta device: the backbone's buffers must come back right, not as garbage.
    model = tiny_model(visual_input="images")
    model.save_pretrained(tmp_path)
    reloaded = MMAPSForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert reloaded.config.vision_config.model_type == "clip_vision_model"
    batch = preset_processor("tiny")(["这款包", "简约百搭"], images=[None, None], summaries=["好", "大"])
    batch["pixel_values"] = torch.randn(2, 3, 32, 32)
    batch["image_mask"] = torch.tensor([1, 1])
    assert torch.equal(model(**batch).logits, reloaded(**batch).logits)


# ------------------------------------------------------------------------------------------------------------------
# Save / load / Hub
# ------------------------------------------------------------------------------------------------------------------


def test_save_load_identical_and_clean_process_hub_load_generates_the_same_text(tmp_path):
    model = tiny_model()
    processor = preset_processor("tiny", attribute_vocabulary=["真皮", "黑色"])
    folder = tmp_path / "mmaps"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    assert {"configuration_mmaps.py", "modeling_mmaps.py", "processing_mmaps.py", "model.safetensors"} <= {
        p.name for p in folder.iterdir()}
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSeq2SeqLM"] == "modeling_mmaps.MMAPSForConditionalGeneration"

    reloaded = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    batch = make_batch(model.config)
    for key, value in model.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[key]), key
    assert torch.equal(model(**batch).logits, reloaded(**batch).logits)

    features = batch["visual_features"][:2].tolist()
    boxes = batch["visual_boxes"][:2].tolist()
    texts = ["这款包的材质很好", "简约百搭大容量"]
    inputs = processor(texts, visual_features=features, visual_boxes=boxes)
    expected = processor.batch_decode(model.generate(**inputs, num_beams=3, max_new_tokens=8))
    code = f"""
    import json, torch
    from transformers import AutoModelForSeq2SeqLM, AutoProcessor
    torch.set_num_threads(1)
    model = AutoModelForSeq2SeqLM.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
    inputs = processor({texts!r}, visual_features={features!r}, visual_boxes={boxes!r})
    text = processor.batch_decode(model.generate(**inputs, num_beams=3, max_new_tokens=8))
    print(json.dumps({{"text": text, "model": type(model).__module__, "vocab": processor.attribute_vocabulary}}))
    """
    result = run_isolated(code, cwd=tmp_path)
    assert result["text"] == expected
    assert "modeling_mmaps" in result["model"] and result["model"].startswith("transformers_modules")
    assert result["vocab"] == ["真皮", "黑色"]
