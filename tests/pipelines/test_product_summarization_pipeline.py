"""pipeline("product-summarization"): output contract, batching, generation pass-through, bad input, Hub reload."""

from __future__ import annotations

import json
import os

import pytest
import torch
from PIL import Image

import pipelines  # noqa: F401  (registers the task)
from modeling_mmaps import MMAPSForConditionalGeneration, MMAPSProcessor
from modeling_mmaps.presets import preset_config, preset_processor
from tests.hub_isolation import run_isolated

VOCAB = ["红色", "黑色", "纯棉", "条纹"]
TEXTS = ["这款红色纯棉T恤采用条纹设计，透气舒适", "黑色真皮包，大容量，商务百搭", "简约时尚"]


def _processor(vocabulary=VOCAB):
    chars = sorted(set("".join(TEXTS) + "".join(VOCAB) + "，。恤"))
    return MMAPSProcessor.from_vocabulary(chars, image_size=32, attribute_vocabulary=vocabulary, max_regions=6)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    torch.manual_seed(0)
    processor = _processor()
    config = preset_config("tiny", visual_input="images", text_vocab_size=len(processor.tokenizer),
                           num_attributes=len(VOCAB))
    model = MMAPSForConditionalGeneration(config).eval()
    with torch.no_grad():  # a fresh model starts with the image fusion switched off; perturb it so images matter
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    folder = tmp_path_factory.mktemp("mmaps_model")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    image_path = folder / "red.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(image_path)
    return str(folder), str(image_path)


@pytest.fixture(scope="module")
def summarizer(saved_model):
    from transformers import pipeline

    return pipeline("product-summarization", model=saved_model[0], trust_remote_code=True)


def _inputs(image_path):
    return [{"text": TEXTS[0], "image": image_path}, {"text": TEXTS[1]}, {"text": TEXTS[2], "image": Image.open(image_path)}]


def test_output_contract(summarizer, saved_model):
    out = summarizer({"text": TEXTS[0], "image": saved_model[1]}, max_new_tokens=8, attribute_threshold=0.01)
    assert isinstance(out, list) and len(out) == 1
    assert set(out[0]) == {"summary_text", "attributes"}
    assert isinstance(out[0]["summary_text"], str)
    attrs = out[0]["attributes"]
    assert [a["attribute"] for a in attrs] and all(a["attribute"] in VOCAB for a in attrs)
    scores = [a["score"] for a in attrs]
    assert scores == sorted(scores, reverse=True) and all(0.01 < s < 1 for s in scores)
    top1 = summarizer({"text": TEXTS[0]}, max_new_tokens=8, attribute_threshold=0.01, top_k_attributes=1)
    assert len(top1[0]["attributes"]) == 1


def test_batched_equals_single(summarizer, saved_model):
    inputs = _inputs(saved_model[1])
    single = [summarizer(x, max_new_tokens=10, attribute_threshold=0.01) for x in inputs]
    batched = summarizer(inputs, batch_size=3, max_new_tokens=10, attribute_threshold=0.01)
    assert len(batched) == 3
    for one, many in zip(single, batched):
        assert one[0]["summary_text"] == many[0]["summary_text"]
        assert [a["attribute"] for a in one[0]["attributes"]] == [a["attribute"] for a in many[0]["attributes"]]
        for a, b in zip(one[0]["attributes"], many[0]["attributes"]):
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_image_changes_the_visual_input(summarizer, saved_model):
    # The attribute head reads the fused states, so the same text with and without an image scores differently.
    with_image = summarizer({"text": TEXTS[0], "image": saved_model[1]}, max_new_tokens=2, attribute_threshold=0.01)
    without = summarizer({"text": TEXTS[0]}, max_new_tokens=2, attribute_threshold=0.01)
    s1 = {a["attribute"]: a["score"] for a in with_image[0]["attributes"]}
    s2 = {a["attribute"]: a["score"] for a in without[0]["attributes"]}
    assert any(abs(s1[k] - s2.get(k, 0.0)) > 1e-6 for k in s1)


def test_generation_settings_pass_through(summarizer):
    short = summarizer(TEXTS[0], max_new_tokens=2)[0]["summary_text"]
    longer = summarizer(TEXTS[0], generate_kwargs={"max_new_tokens": 6})[0]["summary_text"]
    assert len(short) <= 2
    assert longer.startswith(short)  # greedy decoding: the shorter run is a prefix of the longer one
    beams = summarizer(TEXTS[0], max_new_tokens=6, num_beams=2)[0]["summary_text"]
    assert isinstance(beams, str) and len(beams) <= 6


def test_bad_inputs(summarizer, saved_model):
    with pytest.raises(ValueError, match=r"inputs\['text'\]"):
        summarizer({"text": "  "})
    with pytest.raises(ValueError, match="expected"):
        summarizer(3)
    with pytest.raises(ValueError, match="attribute_threshold"):
        summarizer(TEXTS[0], attribute_threshold=1.5)


def test_vocabulary_not_matching_the_model_raises(saved_model):
    from transformers import AutoModelForSeq2SeqLM, pipeline

    model = AutoModelForSeq2SeqLM.from_pretrained(saved_model[0], trust_remote_code=True)
    pipe = pipeline("product-summarization", model=model, processor=_processor(VOCAB[:3]))
    with pytest.raises(ValueError, match="3 words but the model predicts 4"):
        pipe(TEXTS[0], max_new_tokens=2)


def test_region_model_rejects_images(tmp_path):
    from transformers import pipeline

    processor = _processor()
    config = preset_config("tiny", text_vocab_size=len(processor.tokenizer), num_attributes=len(VOCAB))
    model = MMAPSForConditionalGeneration(config).eval()
    pipe = pipeline("product-summarization", model=model, processor=processor)
    with pytest.raises(ValueError, match="region features"):
        pipe({"text": TEXTS[0], "image": Image.new("RGB", (8, 8))})
    regions = {"text": TEXTS[0], "visual_features": torch.rand(3, 16).numpy(), "visual_boxes": torch.rand(3, 4).numpy()}
    assert isinstance(pipe(regions, max_new_tokens=3)[0]["summary_text"], str)


def test_saved_pipeline_reloads_in_a_clean_process(summarizer, saved_model, tmp_path):
    folder = tmp_path / "saved_pipeline"
    summarizer.save_pretrained(folder)
    assert (folder / "product_summarization.py").is_file()
    expected = summarizer({"text": TEXTS[0], "image": saved_model[1]}, max_new_tokens=8, attribute_threshold=0.01)
    child = run_isolated(
        f"""
        import json
        from transformers import pipeline
        pipe = pipeline(model={str(folder)!r}, trust_remote_code=True)
        out = pipe({{"text": {TEXTS[0]!r}, "image": {saved_model[1]!r}}}, max_new_tokens=8, attribute_threshold=0.01)
        print(json.dumps({{"task": pipe.task, "cls": type(pipe).__name__, "out": out}}, ensure_ascii=False))
        """,
        cwd=tmp_path,
    )
    assert child["cls"] == "ProductSummarizationPipeline"
    assert child["out"][0]["summary_text"] == expected[0]["summary_text"]
    assert [a["attribute"] for a in child["out"][0]["attributes"]] == [a["attribute"] for a in expected[0]["attributes"]]
    json.dumps(child)
    assert os.path.isfile(folder / "config.json")


def test_a_batch_mixing_products_with_and_without_regions_equals_single_calls_and_runs_in_bfloat16(tmp_path):
    import numpy as np
    from transformers import pipeline

    torch.manual_seed(0)
    model = MMAPSForConditionalGeneration(preset_config("tiny")).eval()
    with torch.no_grad():
        for parameter in model.parameters():  # an untrained model's fusion starts closed: make images matter
            parameter.add_(torch.randn_like(parameter) * 0.05)
    model.save_pretrained(tmp_path)
    preset_processor("tiny").save_pretrained(tmp_path)
    summarizer = pipeline("product-summarization", model=str(tmp_path), trust_remote_code=True)
    with_regions = {"text": "红色棉质T恤，舒适透气", "visual_features": np.random.rand(3, 16).astype("float32"),
                    "visual_boxes": np.array([[0, 0, 0.5, 0.5]] * 3, dtype="float32")}
    text_only = {"text": "蓝色羊毛大衣，保暖"}
    settings = dict(num_beams=2, max_new_tokens=8)
    batched = summarizer([with_regions, text_only], batch_size=2, **settings)
    single = [summarizer(item, **settings) for item in (with_regions, text_only)]
    assert [b[0]["summary_text"] for b in batched] == [s[0]["summary_text"] for s in single]

    half = MMAPSForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16)
    in_bf16 = pipeline("product-summarization", model=half, processor=summarizer.processor)
    assert isinstance(in_bf16(with_regions, **settings)[0]["summary_text"], str)


def test_one_encoder_pass_serves_summary_and_attributes(summarizer, saved_model):
    """The pipeline encodes each batch once; its summaries and attribute scores are those of generate() and
    predict_attributes() run separately (which encode twice)."""
    model, processor = summarizer.model, summarizer.processor
    encoder = model.get_encoder()
    calls = []
    handle = encoder.register_forward_hook(lambda module, args, output: calls.append(1))
    try:
        out = summarizer(_inputs(saved_model[1]), batch_size=3, num_beams=2, max_new_tokens=8, attribute_threshold=0.01)
    finally:
        handle.remove()
    assert len(calls) == 1
    image = Image.open(saved_model[1])
    batch = processor(text=TEXTS[:3], images=[image, [], image])
    with torch.no_grad():
        summaries = processor.batch_decode(model.generate(**batch, num_beams=2, max_new_tokens=8))
        probabilities, _ = model.predict_attributes(**batch)
    assert [r[0]["summary_text"] for r in out] == summaries
    for row, probs in zip(out, probabilities):
        for attribute in row[0]["attributes"]:
            assert attribute["score"] == pytest.approx(probs[VOCAB.index(attribute["attribute"])].item(), abs=1e-6)
