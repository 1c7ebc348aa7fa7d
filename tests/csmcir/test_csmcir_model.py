"""CSMCIRModel as a native transformers model: round trips, the Hub path, BLIP-2 parity, symmetry, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from transformers import Blip2ForImageTextRetrieval, CLIPVisionConfig
from transformers.models.blip_2.configuration_blip_2 import Blip2QFormerConfig

from modeling_csmcir import CSMCIRConfig, CSMCIRModel, CSMCIRProcessor, csmcir_contrastive_loss
from modeling_csmcir.presets import preset_config, preset_processor
from fixtures import random_images, tiny_blip2_config
from tests.hub_isolation import run_isolated


@pytest.fixture(scope="module")
def processor() -> CSMCIRProcessor:
    return preset_processor("tiny")


@pytest.fixture(scope="module")
def model(processor) -> CSMCIRModel:
    torch.manual_seed(0)
    return CSMCIRModel(preset_config("tiny", vocab_size=len(processor.tokenizer))).eval()


TEXTS = ["make it red", "add a small blue circle on the left", "remove the triangle", "move the square up"]


@pytest.fixture(scope="module")
def batch(processor):
    return processor(images=random_images(4), text=TEXTS)


def test_save_load_round_trip_gives_identical_features(model, processor, batch, tmp_path):
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded = CSMCIRModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(model.get_query_features(**batch), reloaded.get_query_features(**batch))
        assert torch.equal(
            model.get_target_features(batch["pixel_values"]), reloaded.get_target_features(batch["pixel_values"])
        )
    assert torch.equal(reloaded.temperature, model.temperature)


def test_saved_folder_loads_with_remote_code_in_a_process_that_cannot_import_the_package(
    model, processor, batch, tmp_path
):
    model.save_pretrained(tmp_path / "repo")
    processor.save_pretrained(tmp_path / "repo")
    torch.save({k: v for k, v in batch.items()}, tmp_path / "batch.pt")
    with torch.no_grad():
        expected_query = model.get_query_features(**batch)
        expected_target = model.get_target_features(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
    images = random_images(4)
    for index, image in enumerate(images):
        image.save(tmp_path / f"{index}.png")
    result = run_isolated(
        f"""
        import json, torch
        from PIL import Image
        from transformers import AutoModel, AutoProcessor
        model = AutoModel.from_pretrained("repo", trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained("repo", trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        images = [Image.open(f"{{i}}.png") for i in range(4)]
        batch = processor(images=images, text={TEXTS!r})
        saved = torch.load("batch.pt", weights_only=True)
        with torch.no_grad():
            q = model.get_query_features(**batch)
            t = model.get_target_features(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        print(json.dumps({{"query": q.tolist(), "target": t.tolist(),
                          "same_inputs": bool(torch.equal(batch["input_ids"], saved["input_ids"]))
                                         and bool(torch.allclose(batch["pixel_values"], saved["pixel_values"])),
                          "module": type(model).__module__}}))
        """,
        cwd=tmp_path,
    )
    assert result["same_inputs"], "the remote processor prepared different inputs"
    assert torch.allclose(torch.tensor(result["query"]), expected_query, atol=1e-6)
    assert torch.allclose(torch.tensor(result["target"]), expected_target, atol=1e-6)


def test_from_blip2_pretrained_matches_transformers_blip2_joint_pass_and_image_itc(tmp_path):
    torch.manual_seed(1)
    peer = Blip2ForImageTextRetrieval(tiny_blip2_config()).eval()
    with torch.no_grad():
        peer.query_tokens.normal_(0, 0.5)  # zeros by default: make the parity check sensitive to them
    peer.save_pretrained(tmp_path)
    ours = CSMCIRModel.from_blip2_pretrained(str(tmp_path)).eval()
    assert ours.config.embed_dim == 24 and ours.config.num_query_tokens == 4

    pixel_values = torch.randn(3, 3, 32, 32)
    input_ids = torch.randint(5, 120, (3, 7))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0
    with torch.no_grad():
        image_embeds = peer.vision_model(pixel_values=pixel_values).last_hidden_state
        query_tokens = peer.query_tokens.expand(3, -1, -1)
        joint = peer.qformer(
            query_embeds=peer.embeddings(input_ids=input_ids, query_embeds=query_tokens),
            query_length=4,
            attention_mask=torch.cat([torch.ones(3, 4, dtype=torch.long), attention_mask], dim=1),
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=torch.ones(image_embeds.shape[:-1], dtype=torch.long),
        ).last_hidden_state
        expected_query = torch.nn.functional.normalize(peer.text_projection(joint[:, 4]), dim=-1)
        peer_itc = peer(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)

        query = ours.get_query_features(pixel_values, input_ids, attention_mask)
        image_tokens = ours.get_image_token_features(pixel_values)
        target = ours.get_target_features(pixel_values)
    assert torch.allclose(query, expected_query, atol=1e-5)
    assert torch.allclose(image_tokens, peer_itc.image_embeds, atol=1e-5)
    assert torch.allclose(target, torch.nn.functional.normalize(peer_itc.image_embeds.mean(1), dim=-1), atol=1e-5)


def test_query_and_target_from_the_same_pair_are_identical(model, batch):
    with torch.no_grad():
        query = model.get_query_features(**batch)
        target = model.get_target_features(**batch)
    assert torch.equal(query, target)


def test_symmetric_model_has_one_qformer_worth_of_parameters(processor):
    config = preset_config("tiny", vocab_size=len(processor.tokenizer))
    shared = CSMCIRModel(config)
    unshared = CSMCIRModel(preset_config("tiny", vocab_size=len(processor.tokenizer), share_qformer=False))
    tower = sum(p.numel() for name, p in shared.named_parameters()
                if name.split(".")[0] in {"qformer", "embeddings", "query_tokens", "vision_projection", "text_projection"})
    total_shared = sum(p.numel() for p in shared.parameters())
    total_unshared = sum(p.numel() for p in unshared.parameters())
    vision = sum(p.numel() for p in shared.vision_model.parameters())
    assert shared.target_tower is None
    assert total_shared == vision + tower + 1  # + the temperature
    assert total_unshared == total_shared + tower
    names = [n for n, _ in shared.named_parameters()]
    assert sum(n.endswith("qformer.layernorm.weight") for n in names) == 1


def test_unshared_ablation_encodes_targets_with_its_own_tower(processor, batch):
    model = CSMCIRModel(preset_config("tiny", vocab_size=len(processor.tokenizer), share_qformer=False)).eval()
    with torch.no_grad():
        query = model.get_query_features(**batch)
        target = model.get_target_features(**batch)
    assert not torch.allclose(query, target, atol=1e-3)


def test_a_clip_vision_backbone_works_too(processor, batch):
    vision = CLIPVisionConfig(
        hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    config = preset_config("tiny", vocab_size=len(processor.tokenizer), vision_config=vision)
    assert config.qformer_config.encoder_hidden_size == 48
    model = CSMCIRModel(config).eval()
    with torch.no_grad():
        output = model(
            pixel_values=batch["pixel_values"], input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
            target_pixel_values=batch["pixel_values"],
        )
    assert output.logits_per_query.shape == (4, 4)
    assert torch.isfinite(output.loss)
    assert type(model.vision_model).__name__ == "CLIPVisionModel"


def test_mismatched_qformer_cross_attention_width_is_refused_at_config_time():
    with pytest.raises(ValueError, match="encoder_hidden_size=64 does not match the vision tower's hidden size 32"):
        preset_config("tiny", qformer_config=Blip2QFormerConfig(hidden_size=32, encoder_hidden_size=64,
                                                            num_hidden_layers=1, num_attention_heads=2))


def test_config_round_trips_through_json(tmp_path):
    config = preset_config("tiny", vision_config=CLIPVisionConfig(hidden_size=48, num_hidden_layers=1,
                                                             num_attention_heads=2, image_size=32, patch_size=8),
                               temperature=0.05, share_qformer=False)
    config.save_pretrained(tmp_path)
    loaded = CSMCIRConfig.from_pretrained(tmp_path)
    assert isinstance(loaded.vision_config, CLIPVisionConfig)
    assert loaded.contrastive_temperature == 0.05 and loaded.share_qformer is False
    assert json.loads(loaded.to_json_string()) == json.loads(config.to_json_string())


def test_a_batch_equals_its_items_one_by_one(model, batch):
    with torch.no_grad():
        together = model.get_query_features(**batch)
        alone = torch.cat([
            model.get_query_features(
                batch["pixel_values"][i : i + 1],
                batch["input_ids"][i : i + 1, : int(batch["attention_mask"][i].sum())],
            )
            for i in range(4)
        ])
        targets = model.get_target_features(batch["pixel_values"])
        targets_alone = torch.cat([model.get_target_features(batch["pixel_values"][i : i + 1]) for i in range(4)])
    assert torch.allclose(together, alone, atol=1e-5)
    assert torch.allclose(targets, targets_alone, atol=1e-5)


def test_cached_image_embeds_equal_the_pixel_path(model, batch):
    with torch.no_grad():
        image_embeds = model.get_image_embeds(batch["pixel_values"])
        assert torch.equal(
            model.get_query_features(image_embeds=image_embeds, input_ids=batch["input_ids"],
                                     attention_mask=batch["attention_mask"]),
            model.get_query_features(**batch),
        )
        assert torch.equal(model.get_target_features(image_embeds=image_embeds),
                           model.get_target_features(batch["pixel_values"]))


def test_forward_is_deterministic_in_eval_mode(model, batch):
    inputs = dict(batch, target_pixel_values=batch["pixel_values"])
    with torch.no_grad():
        first, second = model(**inputs), model(**inputs)
    assert torch.equal(first.logits_per_query, second.logits_per_query)


def test_frozen_vision_gets_no_gradients_and_training_overfits_one_batch(processor, batch):
    torch.manual_seed(0)
    model = CSMCIRModel(preset_config("tiny", vocab_size=len(processor.tokenizer))).train()
    assert not model.vision_model.training  # a frozen tower stays in eval mode
    targets = processor(images=random_images(4, seed=1), text=["a red one", "a blue circle", "no triangle", "a square up"])
    inputs = dict(batch, target_pixel_values=targets["pixel_values"], target_input_ids=targets["input_ids"],
                  target_attention_mask=targets["attention_mask"])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(30):
        loss = model(**inputs).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(p.grad is None for p in model.vision_model.parameters())
    assert model.qformer.encoder.layer[0].crossattention.attention.query.weight.grad is not None
    assert losses[0] > 1.2  # ≈ log(4) at init
    assert losses[-1] < 0.25 * losses[0]


def test_gradient_checkpointing_gives_the_same_loss(processor, batch):
    torch.manual_seed(0)
    config = preset_config("tiny", vocab_size=len(processor.tokenizer))
    # no dropout, so two training-mode passes are comparable
    config.qformer_config.hidden_dropout_prob = config.qformer_config.attention_probs_dropout_prob = 0.0
    model = CSMCIRModel(config).train()
    inputs = dict(batch, target_pixel_values=batch["pixel_values"])
    plain = model(**inputs).loss
    model.gradient_checkpointing_enable()
    assert model.qformer.encoder.layer[0].gradient_checkpointing
    checkpointed = model(**inputs).loss
    checkpointed.backward()
    assert torch.allclose(plain, checkpointed, atol=1e-6)


def test_sdpa_and_eager_attention_agree(processor, batch, tmp_path):
    torch.manual_seed(0)
    CSMCIRModel(preset_config("tiny", vocab_size=len(processor.tokenizer))).save_pretrained(tmp_path)
    eager = CSMCIRModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    sdpa = CSMCIRModel.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    with torch.no_grad():
        assert torch.allclose(eager.get_query_features(**batch), sdpa.get_query_features(**batch), atol=1e-5)


def test_contrastive_loss_masks_duplicate_targets_and_accepts_extra_negatives():
    logits = torch.tensor([[5.0, 5.0, 0.0], [5.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
    plain = csmcir_contrastive_loss(logits)
    masked = csmcir_contrastive_loss(logits, target_ids=torch.tensor([7, 7, 3]))
    expected = -torch.log_softmax(torch.tensor([5.0, 0.0]), 0)[0]  # row 0 without its duplicate
    assert torch.allclose(masked, (2 * expected + -torch.log_softmax(torch.tensor([0.0, 0.0, 5.0]), 0)[2]) / 3)
    assert masked < plain
    extra = torch.tensor([[4.0, float("-inf")]] * 3)
    with_extra = csmcir_contrastive_loss(logits, extra_negative_logits=extra)
    row2 = -torch.log_softmax(torch.tensor([0.0, 0.0, 5.0, 4.0]), 0)[2]
    row0 = -torch.log_softmax(torch.tensor([5.0, 5.0, 0.0, 4.0]), 0)[0]
    assert torch.allclose(with_extra, (2 * row0 + row2) / 3)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(target_pixel_values=torch.randn(3, 3, 32, 32)), "Batch size mismatch: 4 queries"),
        (dict(pixel_values=None), "`pixel_values` is missing"),
        (dict(target_pixel_values=None), "`target_pixel_values` is missing"),
        (dict(input_ids=torch.zeros(4, 0, dtype=torch.long), attention_mask=None), "`input_ids` is empty"),
        (dict(pixel_values=[Image.new("RGB", (32, 32))] * 4), "`pixel_values` must be a torch.Tensor, got list"),
        (dict(pixel_values=torch.randn(4, 32, 32)), "`pixel_values` must have 4 dimensions"),
        (dict(input_ids=torch.ones(3, 5, dtype=torch.long), attention_mask=None), "`input_ids` has batch size 3"),
    ],
)
def test_bad_model_input_gets_a_clear_error(model, batch, change, message):
    inputs = dict(batch, target_pixel_values=batch["pixel_values"])
    inputs.update(change)
    with pytest.raises(ValueError, match=message):
        model(**inputs)


def test_attention_mask_with_an_empty_row_is_refused(model, batch):
    mask = batch["attention_mask"].clone()
    mask[2] = 0
    with pytest.raises(ValueError, match=r"masks every token of rows \[2\]"):
        model.get_query_features(batch["pixel_values"], batch["input_ids"], mask)


def test_processor_converts_image_modes_truncates_text_and_refuses_bad_input(processor):
    rgba = Image.new("RGBA", (20, 30), (255, 0, 0, 0))
    gray = Image.new("L", (20, 20), 100)
    palette = Image.new("P", (20, 20))
    encoded = processor(images=[rgba, gray, palette], text=["word " * 100, "b", "c"])
    assert encoded["pixel_values"].shape == (3, 3, 32, 32)
    assert encoded["input_ids"].shape[1] == 32
    # a fully transparent pixel becomes white, not black
    assert encoded["pixel_values"][0].mean() > 1.0
    with pytest.raises(ValueError, match=r"text\[1\] is empty"):
        processor(text=["fine", "   "])
    with pytest.raises(ValueError, match=r"images\[0\] must be a PIL.Image"):
        processor(images=["not an image"])
    with pytest.raises(ValueError, match="needs `images`, `text` or both"):
        processor()
