"""Golden outputs of a seeded tiny MMAPS model: a refactor that changes numerics is caught here.

The model is ``MMAPSForConditionalGeneration(preset_config("tiny"))`` (region-feature input, 10 attributes) built
right after ``torch.manual_seed(0)``, in eval mode. Stored under ``tests/mmaps/golden/``:

* ``inputs.safetensors`` — the *model inputs* the tiny preset's processor made of four products (``inputs.json``
  holds their texts, summaries and attribute words): ``input_ids``, ``attention_mask``, ``labels`` (-100 padding),
  16-d region ``visual_features`` with ``visual_boxes``, ``visual_attention_mask`` (6, 3 and 5 regions; the fourth
  product has no image, ``image_mask`` 0), detector ``visual_class_probs`` and multi-hot ``attribute_labels``;
* ``init.json`` — a fingerprint of the seeded weights (parameter count, sums of all and of a few parameters):
  each model test checks it first and fails with "init changed" when the weights differ, so a "forward changed"
  failure means the same weights now compute something else;
* ``outputs.safetensors`` — ``forward(...)``'s total loss and each task loss (summary, attribute, alignment,
  contrastive, region by KL against the class distributions, and region by feature regression without them),
  a slice of the logits (``logits[:, :6, :40]``) with every row's sum (``logits.sum(-1)``, which sees the whole
  tensor), the attribute logits, the text / image [CLS] embeddings and a slice of the fused encoder states;
* ``generated.json`` — greedy and 2-beam summaries (``max_new_tokens=12``) as token ids and decoded text, of the
  seeded model after 40 AdamW steps on the golden batch (``FIT``): the untrained model's summaries do not depend on
  its input (greedy decoding emits EOS at once), the fitted one's reproduce the four reference summaries with
  log-probability margins above 3 nats per token, so float noise cannot flip them but a change to generation
  (encoder reuse, beam expansion of the visual inputs, decoder start, forced EOS) or to training does. Products 0
  and 1 share their text: only their regions tell their summaries apart.

Masked region modelling draws its mask from torch's global generator: the forward passes run right after
``torch.manual_seed(1234)``, so a refactor that draws more or fewer random numbers before the mask shows up in
``region_loss``.

Tolerances: ``atol = rtol = 1e-5`` on every float; generated ids and text compare exactly; the fingerprint at
1e-9 relative (float64 sums of exactly reproducible initial values).

Regenerate after an intended numerics change (then review and commit the diff of ``tests/mmaps/golden/``)::

    UPDATE_GOLDEN=1 HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q tests/mmaps/test_golden_mmaps.py

The tests then skip, naming the files they wrote.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from golden_outputs import (
    REGENERATE_HINT, UPDATE_GOLDEN, assert_tensors_close, check_fingerprint, load_json, load_tensors,
    parameter_fingerprint, save_json, save_tensors, skip_after_update,
)
from modeling_mmaps import MMAPSForConditionalGeneration
from modeling_mmaps.presets import preset_config, preset_processor

GOLDEN = Path(__file__).resolve().parent / "golden"
INPUTS = GOLDEN / "inputs.safetensors"
INPUT_TEXTS = GOLDEN / "inputs.json"
INIT = GOLDEN / "init.json"
OUTPUTS = GOLDEN / "outputs.safetensors"
GENERATED = GOLDEN / "generated.json"

SEED = 0
REGION_MASK_SEED = 1234
ATOL = RTOL = 1e-5
# Products 0 and 1 share their text and differ in their regions and summaries: the fitted model can only tell them
# apart through the visual inputs, so the generated summaries pin that generate() reads them.
TEXTS = ["这款包的材质很好，时尚大容量", "这款包的材质很好，时尚大容量", "黑色女士单肩斜挎包，防水耐磨", "新品上市夏季款式，轻便透气"]
SUMMARIES = ["时尚大容量真皮包", "简约百搭", "黑色防水单肩包，耐磨", "夏季新品"]
ATTRIBUTE_VOCABULARY = ["真皮", "黑色", "大容量", "防水", "简约", "时尚", "轻便", "手提", "单肩", "夏季"]
ATTRIBUTES = [["大容量", "时尚"], ["简约", "手提", "真皮"], ["黑色", "单肩", "防水"], ["夏季", "轻便"]]
REGION_COUNTS = [6, 3, 5, None]  # None: a product without an image
GENERATION = {"greedy": dict(num_beams=1, do_sample=False, max_new_tokens=12),
              "beam2": dict(num_beams=2, do_sample=False, max_new_tokens=12)}
FIT = dict(steps=40, learning_rate=1e-2, seed=REGION_MASK_SEED)  # AdamW on the golden batch, all five losses
ENCODER_INPUTS = ("input_ids", "attention_mask", "visual_features", "visual_boxes", "visual_attention_mask",
                  "image_mask")
FINGERPRINT_PARAMETERS = [
    "model.shared.weight", "model.encoder.text_cls_embedding",
    "model.encoder.visual_encoder.feature_projection.0.weight", "model.encoder.fusion.gate.weight",
    "model.decoder.layers.0.encoder_attn.k_proj.weight",
    "attribute_head.classifier.weight", "logit_scale", "region_class_head.out_proj.weight",
]
LOSSES = ("loss", "summary_loss", "attribute_loss", "alignment_loss", "contrastive_loss", "region_loss")


def _processor():
    return preset_processor("tiny", attribute_vocabulary=ATTRIBUTE_VOCABULARY)


def _regions(seed: int = 7) -> tuple[list, list, list]:
    """Per product: region features (R, 16), boxes (R, 4) in [0, 1] and detector class distributions (R, 8)."""
    rng = np.random.default_rng(seed)
    features, boxes, probs = [], [], []
    for count in REGION_COUNTS:
        if count is None:
            features.append(None), boxes.append(None), probs.append(None)
            continue
        features.append(rng.standard_normal((count, 16)).astype(np.float32))
        xy = rng.uniform(0.0, 0.5, (count, 2))
        boxes.append(np.concatenate([xy, xy + rng.uniform(0.05, 0.5, (count, 2))], -1).astype(np.float32))
        logits = rng.standard_normal((count, 8))
        probs.append((np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32))
    return features, boxes, probs


def _encode(processor, features, boxes, probs, texts=TEXTS, summaries=SUMMARIES, attributes=ATTRIBUTES):
    batch = processor(texts, summaries=summaries, visual_features=features, visual_boxes=boxes,
                      visual_class_probs=probs, attributes=attributes)
    return {k: v for k, v in batch.items()}


def _unpadded_regions(inputs: dict[str, torch.Tensor]) -> tuple[list, list, list]:
    """The stored padded region tensors back as per-product lists (None where the product has no image)."""
    features, boxes, probs = [], [], []
    for i in range(inputs["input_ids"].shape[0]):
        n = int(inputs["visual_attention_mask"][i].sum())
        if not inputs["image_mask"][i]:
            features.append(None), boxes.append(None), probs.append(None)
            continue
        features.append(inputs["visual_features"][i, :n].numpy())
        boxes.append(inputs["visual_boxes"][i, :n].numpy())
        probs.append(inputs["visual_class_probs"][i, :n].numpy())
    return features, boxes, probs


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    if UPDATE_GOLDEN:
        save_tensors(INPUTS, _encode(_processor(), *_regions()))
        save_json(INPUT_TEXTS, {"texts": TEXTS, "summaries": SUMMARIES, "attribute_vocabulary": ATTRIBUTE_VOCABULARY,
                                "attributes": ATTRIBUTES, "region_counts": REGION_COUNTS})
    return load_tensors(INPUTS)


@pytest.fixture(scope="module")
def model() -> MMAPSForConditionalGeneration:
    torch.manual_seed(SEED)
    return MMAPSForConditionalGeneration(preset_config("tiny")).eval()


@pytest.fixture(scope="module")
def outputs(model, inputs) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        torch.manual_seed(REGION_MASK_SEED)
        out = model(**inputs)
        torch.manual_seed(REGION_MASK_SEED)
        regression = model(**{k: v for k, v in inputs.items() if k != "visual_class_probs"})
    missing = [name for name in LOSSES if getattr(out, name) is None]
    assert not missing, f"forward returned no {missing}: every task should run on the golden batch"
    computed = {name: getattr(out, name) for name in LOSSES}
    computed.update(
        region_loss_feature_regression=regression.region_loss,
        logits_slice=out.logits[:, :6, :40],
        logits_row_sums=out.logits.double().sum(-1).float(),
        attribute_logits=out.attribute_logits,
        text_embeds=out.text_embeds,
        image_embeds=out.image_embeds,
        encoder_states_slice=out.encoder_last_hidden_state[:, :5, :],
    )
    if UPDATE_GOLDEN:
        save_json(INIT, parameter_fingerprint(model, FINGERPRINT_PARAMETERS))
        save_tensors(OUTPUTS, computed)
    return computed


@pytest.fixture(scope="module")
def fitted_model(model, inputs) -> MMAPSForConditionalGeneration:
    """The seeded model after FIT's AdamW steps on the golden batch (the seeded model's own summaries do not
    depend on the input: greedy decoding ends at once, beam search repeats one character)."""
    fitted = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(fitted.parameters(), lr=FIT["learning_rate"])
    torch.manual_seed(FIT["seed"])
    for _ in range(FIT["steps"]):
        loss = fitted(**inputs).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return fitted.eval()


@pytest.fixture(scope="module")
def generated(fitted_model, inputs) -> dict[str, torch.Tensor]:
    encoder_inputs = {k: inputs[k] for k in ENCODER_INPUTS}
    with torch.no_grad():
        sequences = {name: fitted_model.generate(**encoder_inputs, **kwargs) for name, kwargs in GENERATION.items()}
    if UPDATE_GOLDEN:
        processor = _processor()
        save_json(GENERATED, {name: {"fit": FIT, "settings": GENERATION[name], "token_ids": ids.tolist(),
                                     "text": processor.batch_decode(ids)} for name, ids in sequences.items()})
    return sequences


def _check_init(model, what: str) -> None:
    check_fingerprint(parameter_fingerprint(model, FINGERPRINT_PARAMETERS), load_json(INIT),
                      consequence=f"{what} were not compared: they would differ as a consequence")


def _check(model, outputs, names: list[str], what: str) -> None:
    skip_after_update(INPUTS, INPUT_TEXTS, INIT, OUTPUTS)
    _check_init(model, what)
    assert_tensors_close({n: outputs[n] for n in names}, load_tensors(OUTPUTS), atol=ATOL, rtol=RTOL, what=what)


def test_seeded_init_matches_the_stored_fingerprint(model):
    skip_after_update(INIT)
    check_fingerprint(parameter_fingerprint(model, FINGERPRINT_PARAMETERS), load_json(INIT))


def test_total_and_task_losses(model, outputs):
    _check(model, outputs, [*LOSSES, "region_loss_feature_regression"], "losses")


def test_logits(model, outputs):
    _check(model, outputs, ["logits_slice", "logits_row_sums"], "summary logits")


def test_encoder_outputs_and_attribute_logits(model, outputs):
    _check(model, outputs, ["attribute_logits", "text_embeds", "image_embeds", "encoder_states_slice"],
           "encoder outputs / attribute logits")


@pytest.mark.parametrize("decoding", sorted(GENERATION))
def test_generated_summaries(model, generated, decoding):
    skip_after_update(GENERATED)
    _check_init(model, f"{decoding} summaries")
    stored = load_json(GENERATED)[decoding]
    assert (stored["fit"], stored["settings"]) == (FIT, GENERATION[decoding]), (
        "fit or generation settings changed: regenerate with UPDATE_GOLDEN=1")
    ids = generated[decoding].tolist()
    text = _processor().batch_decode(generated[decoding])
    if ids != stored["token_ids"] or text != stored["text"]:
        rows = []
        for i, (now, then) in enumerate(zip(ids, stored["token_ids"])):
            if now != then:
                rows.append(f"product {i}: stored {then} {stored['text'][i]!r}\n"
                            f"             now    {now} {text[i]!r}")
        if len(ids) != len(stored["token_ids"]):
            rows.append(f"{len(ids)} sequences, stored {len(stored['token_ids'])}")
        if not rows:  # same ids, different decoding: the tokenizer changed
            rows = [f"decoded text {text} != stored {stored['text']}"]
        pytest.fail(f"{decoding} summaries of the fitted model differ from the stored ones (the seeded weights match "
                    "the stored fingerprint; if the loss/logits golden tests pass, training or generate() changed):"
                    "\n  " + "\n  ".join(rows)
                    + f"\n{REGENERATE_HINT}", pytrace=False)


def test_processor_still_gives_the_stored_inputs(inputs):
    """The tiny preset's processor on the stored texts and (unpadded) regions: the model inputs above."""
    skip_after_update(INPUTS, INPUT_TEXTS)
    raw = load_json(INPUT_TEXTS)
    processor = preset_processor("tiny", attribute_vocabulary=raw["attribute_vocabulary"])
    actual = _encode(processor, *_unpadded_regions(inputs), texts=raw["texts"], summaries=raw["summaries"],
                     attributes=raw["attributes"])
    assert sorted(actual) == sorted(inputs), f"processor outputs {sorted(actual)}, stored {sorted(inputs)}"
    assert_tensors_close(actual, inputs, atol=0, rtol=0, what="processor outputs", after_fingerprint=False)
