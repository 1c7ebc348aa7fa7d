"""Issue 15: `query_mode`, `target_representation`, `CSMCIRModel.score`, the scoring presets, the processor's
`targetpad` / BLIP caption options, and the bank / evaluator / pipeline with token-level targets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from modeling_csmcir import CSMCIRModel, CSMCIRProcessor
from modeling_csmcir.configuration_csmcir import CSMCIRConfig
from modeling_csmcir.preprocessing_csmcir import normalize_caption
from modeling_csmcir.presets import (
    SCORING_PRESETS,
    apply_scoring_preset,
    get_scoring_preset,
    preset_config,
    preset_model,
    preset_processor,
    scoring_preset_of,
)
from fixtures import random_images
from tests.hub_isolation import run_isolated

TEXTS = ["Make it RED!", "add a blue circle (left)", "remove: the stripes"]


def _model(scoring: str | None = None, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model, processor = preset_model("tiny", scoring=scoring, **overrides)
    return model.eval(), processor


def _inputs(processor, count=3, seed=0):
    images = random_images(count, seed=seed)
    return processor(images=images, text=TEXTS[:count])


# ---------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "field,value,match",
    [("query_mode", "two-pass", "query_mode must be one of"), ("target_representation", "multi", "target_representation")],
)
def test_config_refuses_unknown_modes(field, value, match):
    with pytest.raises(ValueError, match=match):
        preset_config("tiny", **{field: value})


def test_new_fields_default_to_todays_behaviour_and_round_trip(tmp_path):
    config = preset_config("tiny")
    assert (config.query_mode, config.target_representation) == ("joint", "vector")
    config = preset_config("tiny", scoring="sprc")
    config.save_pretrained(tmp_path)
    again = CSMCIRConfig.from_pretrained(tmp_path)
    assert (again.query_mode, again.target_representation) == ("sprc", "tokens")


# ---------------------------------------------------------------------------------------------- model


@pytest.mark.parametrize("scoring", sorted(SCORING_PRESETS))
def test_feature_shapes_score_and_forward_logits(scoring):
    model, processor = _model(scoring)
    inputs = _inputs(processor)
    with torch.no_grad():
        queries = model.get_query_features(**inputs)
        image_only = model.get_target_features(pixel_values=inputs["pixel_values"])
        captioned = model.get_target_features(**inputs)
        output = model(**inputs, target_pixel_values=inputs["pixel_values"], target_input_ids=inputs["input_ids"],
                       target_attention_mask=inputs["attention_mask"])
    tokens = model.config.target_representation == "tokens"
    expected_shape = (3, 4, 32) if tokens else (3, 32)
    assert image_only.shape == captioned.shape == expected_shape
    torch.testing.assert_close(image_only.norm(dim=-1), torch.ones(expected_shape[:-1]), atol=1e-5, rtol=0)
    scores = model.score(queries, captioned)
    if tokens:
        brute = torch.stack([torch.stack([(q @ t.T).max() for t in captioned]) for q in queries])
        # image-only token targets are SPRC's extract_target_features: the BLIP-2 ITC image side
        torch.testing.assert_close(image_only, model.get_image_token_features(pixel_values=inputs["pixel_values"]))
    else:
        brute = queries @ captioned.T
    torch.testing.assert_close(scores, brute, atol=1e-6, rtol=0)
    torch.testing.assert_close(output.logits_per_query, model.logit_scale * brute, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(output.loss, F.cross_entropy(output.logits_per_query, torch.arange(3)))


def test_sprc_query_is_the_second_image_free_pass():
    """Written out with transformers' modules: joint pass, then [query outputs; text] with query_length=0."""
    model, processor = _model("sprc")
    inputs = _inputs(processor)
    with torch.no_grad():
        image_embeds = model.get_image_embeds(inputs["pixel_values"])
        k = model.config.num_query_tokens
        mask = torch.cat([torch.ones(3, k, dtype=torch.long), inputs["attention_mask"]], dim=1)
        first = model.qformer(
            query_embeds=model.embeddings(input_ids=inputs["input_ids"], query_embeds=model.query_tokens.expand(3, -1, -1)),
            query_length=k, attention_mask=mask, encoder_hidden_states=image_embeds,
        ).last_hidden_state
        second = model.qformer(
            query_embeds=model.embeddings(input_ids=inputs["input_ids"], query_embeds=first[:, :k]),
            query_length=0, attention_mask=mask,
        ).last_hidden_state
        expected = F.normalize(model.text_projection(second[:, k]), dim=-1)
        got = model.get_query_features(**inputs)
        joint = _model("ours")[0].get_query_features(**inputs)
    torch.testing.assert_close(got, expected)
    assert (got - joint).abs().max() > 1e-3  # the second pass changes the query


def test_captioned_token_targets_are_the_joint_pass_query_tokens():
    model, processor = _model("csmcir-authors")
    inputs = _inputs(processor)
    with torch.no_grad():
        output = model(**inputs, target_pixel_values=inputs["pixel_values"], target_input_ids=inputs["input_ids"],
                       target_attention_mask=inputs["attention_mask"])
        hidden = output.target_qformer_model_output.last_hidden_state[:, :4]
        expected = F.normalize(model.vision_projection(hidden), dim=-1)
    torch.testing.assert_close(output.target_embeds, expected)


def test_score_refuses_bad_shapes():
    with pytest.raises(ValueError, match="target_embeds must be"):
        CSMCIRModel.score(torch.zeros(2, 8), torch.zeros(3, 4, 7))
    with pytest.raises(ValueError, match="query_embeds must be"):
        CSMCIRModel.score(torch.zeros(2, 1, 8), torch.zeros(3, 8))


# ---------------------------------------------------------------------------------------------- presets


def test_size_and_scoring_presets_combine():
    config = preset_config("small", scoring="sprc", share_qformer=False)
    assert (config.num_query_tokens, config.query_mode, config.target_representation, config.share_qformer) == (
        8, "sprc", "tokens", False)
    assert preset_config("tiny", scoring="sprc", target_representation="vector").target_representation == "vector"
    processor = preset_processor("tiny", scoring="csmcir-authors")
    assert (processor.image_preprocessing, processor.caption_normalization, processor.targetpad_ratio) == (
        "targetpad", "blip", 1.25)
    assert scoring_preset_of(preset_config("tiny", scoring="csmcir-authors"), processor) == "csmcir-authors"
    assert scoring_preset_of(preset_config("tiny"), preset_processor("tiny")) == "ours"
    config = preset_config("tiny")
    apply_scoring_preset(config, processor, "sprc")
    assert scoring_preset_of(config, processor) == "sprc"
    with pytest.raises(ValueError, match="unknown CSMCIR scoring preset"):
        get_scoring_preset("blip3")


# ---------------------------------------------------------------------------------------------- processor


def _independent_targetpad(image: Image.Image, size: int, ratio: float = 1.25) -> Image.Image:
    """SPRC's data_utils.TargetPad + torchvision Resize(size, bicubic) + CenterCrop(size), written out on PIL."""
    w, h = image.size
    if max(w, h) / min(w, h) >= ratio:
        hp, vp = max(int((max(w, h) / ratio - w) / 2), 0), max(int((max(w, h) / ratio - h) / 2), 0)
        canvas = Image.new("RGB", (w + 2 * hp, h + 2 * vp))
        canvas.paste(image, (hp, vp))
        image = canvas
    w, h = image.size
    nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    image = image.resize((nw, nh), Image.BICUBIC)
    top, left = int(round((nh - size) / 2)), int(round((nw - size) / 2))
    return image.crop((left, top, left + size, top + size))


def test_targetpad_processor_equals_an_independent_implementation_on_non_square_images():
    processor = preset_processor("tiny", scoring="sprc")
    plain = preset_processor("tiny")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((20, 60), (90, 30), (40, 44))]
    got = processor(images=images)["pixel_values"]
    expected = plain(images=[_independent_targetpad(image, 32) for image in images])["pixel_values"]
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert not torch.allclose(got, plain(images=images)["pixel_values"])  # not the square resize
    # arrays go through the same padding as PIL images
    torch.testing.assert_close(processor(images=[np.asarray(images[0])])["pixel_values"], got[:1], atol=1e-6, rtol=0)


def test_blip_caption_normalization_on_cirr_and_fashioniq_style_captions():
    processor = preset_processor("tiny", scoring="sprc")
    plain = preset_processor("tiny")
    captions = ["Change the dog to a cat; make it sit (on grass).", "is more colorful and has a v-neck!!",
                "Remove the people: keep the   BEACH."]
    got = processor(text=captions)["input_ids"]
    expected = plain(text=[normalize_caption(c) for c in captions])["input_ids"]
    assert torch.equal(got, expected)
    assert normalize_caption(captions[2]) == "remove the people keep the beach"
    with pytest.raises(ValueError, match="empty after caption_normalization"):
        processor(text=["!!! ..."])
    with pytest.raises(ValueError, match="image_preprocessing must be one of"):
        CSMCIRProcessor(plain.image_processor, plain.tokenizer, image_preprocessing="pad")


def test_preprocessing_options_are_saved_and_reload_in_a_clean_process(tmp_path):
    model, processor = _model("sprc")
    model.save_pretrained(tmp_path / "repo")
    processor.save_pretrained(tmp_path / "repo")
    saved = json.loads((tmp_path / "repo" / "processor_config.json").read_text())
    assert (saved["image_preprocessing"], saved["caption_normalization"]) == ("targetpad", "blip")
    assert (tmp_path / "repo" / "preprocessing_csmcir.py").is_file()
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (24, 70, 3), dtype=np.uint8))
    image.save(tmp_path / "wide.png")
    inputs = processor(images=[image], text=["Make it RED!"])
    with torch.no_grad():
        expected_query = model.get_query_features(**inputs)
        expected_target = model.get_target_features(pixel_values=inputs["pixel_values"])
    result = run_isolated(
        """
        import json, torch
        from PIL import Image
        from transformers import AutoModel, AutoProcessor
        processor = AutoProcessor.from_pretrained("repo", trust_remote_code=True)
        model = AutoModel.from_pretrained("repo", trust_remote_code=True).eval()
        assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
        inputs = processor(images=[Image.open("wide.png")], text=["Make it RED!"])
        with torch.no_grad():
            q = model.get_query_features(**inputs)
            t = model.get_target_features(pixel_values=inputs["pixel_values"])
        print(json.dumps({"mode": [processor.image_preprocessing, processor.caption_normalization,
                          model.config.query_mode, model.config.target_representation],
                          "query": q.tolist(), "target": t.tolist()}))
        """,
        cwd=tmp_path,
    )
    assert result["mode"] == ["targetpad", "blip", "sprc", "tokens"]
    torch.testing.assert_close(torch.tensor(result["query"]), expected_query, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(result["target"]), expected_target, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- training


class _ToyTokens(torch.utils.data.Dataset):
    def __init__(self, size=8):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(size, 3, 32, 32, generator=g)
        self.t = torch.randint(5, 40, (size, 6), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "input_ids": self.t[i], "attention_mask": torch.ones(6, dtype=torch.long),
                "target_pixel_values": self.x[(i + 1) % len(self.x)], "target_ids": torch.tensor((i + 1) % len(self.x))}

    def target_inputs(self, ids):
        return {"pixel_values": self.x[torch.tensor(ids, dtype=torch.long)]}


@pytest.mark.parametrize("scoring,return_dict", [("sprc", False), ("ours", False), ("csmcir-authors", True)])
def test_trainer_builds_a_token_bank_for_token_targets_and_ignores_return_dict_false(scoring, return_dict, tmp_path):
    from modeling_csmcir.trainer_csmcir import CSMCIRTrainer, CSMCIRTrainingArguments

    model, _ = _model(scoring, return_dict=return_dict)
    model.config.return_dict = return_dict
    args = CSMCIRTrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4,
                                   learning_rate=1e-3, report_to="none", use_cpu=True, save_strategy="no",
                                   bank_strategy="fifo", bank_size=8, bank_k_min=1, bank_k_max=4, disable_tqdm=True,
                                   logging_steps=1, bank_refresh_every=2, bank_refresh_size=2, bank_start_step=0)
    trainer = CSMCIRTrainer(model=model.train(), args=args, train_dataset=_ToyTokens())
    tokens = model.config.target_representation == "tokens"
    assert trainer.memory_bank.tokens_per_entry == (4 if tokens else None)
    trainer.train()
    assert len(trainer.memory_bank) > 0
    assert trainer.memory_bank.embeddings.shape[1:] == ((4, 32) if tokens else (32,))
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses and all(np.isfinite(losses))


def test_trainer_refuses_a_bank_of_the_wrong_kind(tmp_path):
    from modeling_csmcir.memory_bank import MemoryBank
    from modeling_csmcir.trainer_csmcir import CSMCIRTrainer, CSMCIRTrainingArguments

    model, _ = _model("sprc")
    args = CSMCIRTrainingArguments(output_dir=str(tmp_path), max_steps=1, report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match="tokens_per_entry"):
        CSMCIRTrainer(model=model, args=args, train_dataset=_ToyTokens(), memory_bank=MemoryBank(8, 32))


# ---------------------------------------------------------------------------------------------- evaluation / pipeline


@pytest.fixture(scope="module")
def synthetic_val(tmp_path_factory):
    from modeling_csmcir.data.cirr import load_cirr
    from modeling_csmcir.data.synthetic import SyntheticCIRConfig, generate_synthetic_cir

    root = generate_synthetic_cir(SyntheticCIRConfig(
        output_dir=str(tmp_path_factory.mktemp("synthetic")), num_images=120, image_size=32, grid_size=2,
        min_objects=1, max_objects=2, caption_error_rate=0.0, pairs_per_set=5, val_fraction=0.3, test_fraction=0.1,
    ))
    return load_cirr(root, "val", target_captions=root / "target_captions" / "captions.rc2.val.json")


@pytest.mark.parametrize("scoring", sorted(SCORING_PRESETS))
def test_evaluation_end_to_end_with_each_scoring_preset(scoring, synthetic_val):
    from modeling_csmcir.evaluation.evaluator import build_gallery_index, encode_queries, evaluate_cir

    model, processor = _model(scoring)
    result = evaluate_cir(model, processor, synthetic_val, "cirr", cache=None, show_progress=False)
    assert 0 <= result.metrics["recall_at_10"] <= 100
    index = build_gallery_index(model, processor, synthetic_val["gallery"], cache=None, show_progress=False)
    assert index.tokens_per_item == (4 if model.config.target_representation == "tokens" else None)
    queries = encode_queries(model, processor, synthetic_val["queries"], show_progress=False)
    torch.testing.assert_close(result.scores, model.score(queries, index.embeddings.float()), atol=1e-5, rtol=0)


@pytest.mark.parametrize("scoring", sorted(SCORING_PRESETS))
def test_pipeline_end_to_end_with_each_scoring_preset(scoring, tmp_path):
    from transformers import pipeline

    from pipelines import COMPOSED_IMAGE_RETRIEVAL_TASK
    from pipelines.gallery_index import GalleryIndex

    model, processor = _model(scoring)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    retriever = pipeline(COMPOSED_IMAGE_RETRIEVAL_TASK, model=str(tmp_path), trust_remote_code=True, device="cpu")
    gallery_images = random_images(7, seed=3)
    captions = [f"a Red square, number {i}." for i in range(7)]
    index = retriever.build_index(gallery_images, captions=captions, show_progress=False, batch_size=3)
    tokens = model.config.target_representation == "tokens"
    assert index.embeddings.shape == ((7, 4, 32) if tokens else (7, 32))
    index.save(tmp_path / "index")
    index = GalleryIndex.load(tmp_path / "index")
    query_images = random_images(2, seed=4)
    results = retriever(query_images, text=TEXTS[:2], gallery=index, top_k=3)
    with torch.no_grad():
        queries = retriever.model.get_query_features(**retriever.processor(images=query_images, text=TEXTS[:2]))
        targets = retriever.model.get_target_features(**retriever.processor(images=gallery_images, text=captions))
    scores = CSMCIRModel.score(queries, targets)
    for row, hits in enumerate(results):
        expected = scores[row].topk(3)
        assert [h["id"] for h in hits] == expected.indices.tolist()
        torch.testing.assert_close(torch.tensor([h["score"] for h in hits]), expected.values, atol=1e-5, rtol=0)
