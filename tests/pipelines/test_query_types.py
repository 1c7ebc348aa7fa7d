"""Text-only and image-only queries of the retrieval pipeline: the documented computations, and sensible rankings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import pipeline

import pipelines  # noqa: F401  (registers the task)
from fixtures import random_images
from modeling_csmcir import CSMCIRModel
from modeling_csmcir.presets import preset_config, preset_processor
from pipelines.composed_image_retrieval import image_query_features, text_query_features

CAPTIONS = [f"a {c} {s} on a plain background" for s in ("square", "circle") for c in ("red", "green", "blue", "grey")]


def _retriever(**config_overrides):
    processor = preset_processor("tiny")
    torch.manual_seed(0)
    model = CSMCIRModel(preset_config("tiny", vocab_size=len(processor.tokenizer), **config_overrides)).eval()
    return pipeline("composed-image-retrieval", model=model, processor=processor)


@pytest.fixture(scope="module")
def retriever():
    return _retriever()


@pytest.fixture(scope="module")
def images():
    return random_images(len(CAPTIONS), seed=3)


def test_image_only_query_finds_the_identical_image_first(retriever, images):
    gallery = retriever.build_index(images, ids=[f"g{i}" for i in range(len(images))], show_progress=False)
    hits = retriever(images, gallery=gallery, query_type="image", top_k=3)
    assert [row[0]["id"] for row in hits] == [f"g{i}" for i in range(len(images))]
    assert all(abs(row[0]["score"] - 1.0) < 1e-5 for row in hits)
    assert all(row[0]["score"] > row[1]["score"] for row in hits)
    # The formula: the query image's own target-side embedding, i.e. exactly its gallery row.
    pixel_values = retriever.processor(images=images[:2], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = retriever.model.get_target_features(pixel_values=pixel_values)
    torch.testing.assert_close(image_query_features(retriever.model, pixel_values), expected, rtol=0, atol=1e-6)
    # Dict form and a single query.
    single = retriever({"image": images[4]}, gallery=gallery, query_type="image", top_k=1)
    assert single[0]["id"] == "g4"


def test_image_only_query_on_a_token_level_model_finds_the_identical_image_first(images):
    retriever = _retriever(target_representation="tokens")
    gallery = retriever.build_index(images, show_progress=False)
    assert gallery.tokens_per_item is not None
    hits = retriever(images, gallery=gallery, query_type="image", top_k=2)
    assert [row[0]["id"] for row in hits] == list(range(len(images)))


def test_text_only_query_is_the_qformer_text_embedding_and_ranks_by_it(retriever, images):
    gallery = retriever.build_index(images, captions=CAPTIONS, show_progress=False)
    encoding = retriever.processor(text=CAPTIONS[:3], return_tensors="pt")
    model = retriever.model
    with torch.no_grad():
        # The docstring's formula, step by step: Q-Former text-only pass (no query tokens, no image), [CLS], W_text.
        hidden = model.qformer(
            query_embeds=model.embeddings(input_ids=encoding["input_ids"]), query_length=0,
            attention_mask=encoding["attention_mask"], return_dict=True,
        ).last_hidden_state[:, 0]
        expected = F.normalize(model.text_projection(hidden), dim=-1)
        got = text_query_features(model, encoding["input_ids"], encoding["attention_mask"])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    hits = retriever(text=CAPTIONS[:3], gallery=gallery, query_type="text", top_k=len(CAPTIONS))
    brute = (expected @ gallery.embeddings.float().T).argsort(dim=1, descending=True)
    assert [[hit["id"] for hit in row] for row in hits] == brute.tolist()
    # Words alone differ from the composed query (the reference image's query tokens are part of the latter).
    with torch.no_grad():
        pixel_values = retriever.processor(images=images[:3], return_tensors="pt")["pixel_values"]
        composed = model.get_query_features(pixel_values=pixel_values, **encoding)
    assert not torch.allclose(composed, expected, atol=1e-3)
    assert retriever(text=CAPTIONS[0], gallery=gallery, query_type="text", top_k=2)[0]["id"] == hits[0][0]["id"]


def test_a_model_with_its_own_text_features_is_used_as_is(retriever):
    calls = []

    class WithTextFeatures(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(1))

        def get_text_features(self, input_ids, attention_mask=None):
            calls.append(input_ids.shape)
            return torch.ones(input_ids.shape[0], 4) * 3

    out = text_query_features(WithTextFeatures(), torch.ones(2, 5, dtype=torch.long))
    assert calls == [(2, 5)] and torch.allclose(out, torch.full((2, 4), 0.5))


def test_query_type_errors_are_clear(retriever, images):
    gallery = retriever.build_index(images[:3], show_progress=False)
    with pytest.raises(ValueError, match="query_type must be one of"):
        retriever(images[0], text="red", gallery=gallery, query_type="sound")
    with pytest.raises(ValueError, match="query_type='text' needs text="):
        retriever(gallery=gallery, query_type="text")
    with pytest.raises(ValueError, match="query 0: query_type='image' searches by the picture alone; got a text too"):
        retriever(images[0], text="red", gallery=gallery, query_type="image")
    with pytest.raises(ValueError, match="query 0: query_type='text' searches by words alone; got an image too"):
        retriever(images[0], text="red", gallery=gallery, query_type="text")
    with pytest.raises(ValueError, match="query 1: the modification text is empty"):
        retriever(text=["red", " "], gallery=gallery, query_type="text")
    with pytest.raises(ValueError, match="no reference image given .*query_type='text'"):
        retriever(text="red", gallery=gallery)
    # The composed default still insists on the text (a forgotten text is not silently an image search).
    with pytest.raises(ValueError, match="query 0: the modification text is missing"):
        retriever(images[0], gallery=gallery)
