"""A pipeline loaded from a Hub folder (remote code, custom_pipelines in config.json) saves a folder that loads again.

The real path: save a folder WITH `custom_pipelines` (as the demo and the training CLIs write), load it in a process
that cannot import this repository's packages, save it again there, reload the re-saved folder in another clean
process, and compare outputs with the original pipeline's.
"""

from __future__ import annotations

import json

import torch
from PIL import Image
from transformers import pipeline

import pipelines  # noqa: F401  (registers the tasks)
from fixtures import random_images
from modeling_csmcir import CSMCIRModel
from modeling_csmcir.presets import preset_config as cir_preset_config
from modeling_csmcir.presets import preset_processor as cir_preset_processor
from modeling_mmaps import MMAPSForConditionalGeneration, MMAPSProcessor
from modeling_mmaps.presets import preset_config as mmaps_preset_config
from tests.hub_isolation import run_isolated

CIR_CODE = {"composed_image_retrieval.py", "gallery_index.py", "exact_search.py", "hub_code.py"}
TEXTS = ["make it red", "add a blue circle", "remove the stripes"]
VOCABULARY = ["红色", "纯棉"]
SUMMARY_TEXT = "这款红色纯棉T恤采用条纹设计"


def _retriever_folder(tmp_path):
    processor = cir_preset_processor("tiny")
    torch.manual_seed(0)
    model = CSMCIRModel(cir_preset_config("tiny", vocab_size=len(processor.tokenizer))).eval()
    retriever = pipeline("composed-image-retrieval", model=model, processor=processor)
    retriever.save_pretrained(tmp_path / "cir")
    gallery_images, queries = random_images(10, seed=1), random_images(len(TEXTS), seed=2)
    for number, image in enumerate(queries):
        image.save(tmp_path / f"q{number}.png")
    gallery = retriever.build_index(gallery_images, ids=[f"g{i}" for i in range(10)], show_progress=False)
    gallery.save(tmp_path / "index")
    expected = retriever([f"{tmp_path}/q{i}.png" for i in range(len(TEXTS))], text=TEXTS, gallery=gallery, top_k=5)
    run = (
        f'[f"q{{i}}.png" for i in range({len(TEXTS)})], text={TEXTS!r}, gallery=pipe.load_index("index"), top_k=5'
    )
    return expected, run


def _summarizer_folder(tmp_path):
    processor = MMAPSProcessor.from_vocabulary(sorted(set(SUMMARY_TEXT + "，。")), image_size=32,
                                               attribute_vocabulary=VOCABULARY, max_regions=6)
    torch.manual_seed(0)
    model = MMAPSForConditionalGeneration(
        mmaps_preset_config("tiny", visual_input="images", text_vocab_size=len(processor.tokenizer),
                            num_attributes=len(VOCABULARY))
    ).eval()
    with torch.no_grad():  # a fresh model's image fusion starts closed; perturb it so the image matters
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    summarizer = pipeline("product-summarization", model=model, processor=processor)
    summarizer.save_pretrained(tmp_path / "mmaps")
    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "red.png")
    expected = summarizer({"text": SUMMARY_TEXT, "image": str(tmp_path / "red.png")}, max_new_tokens=6,
                          attribute_threshold=0.01)
    return expected, f'{{"text": {SUMMARY_TEXT!r}, "image": "red.png"}}, max_new_tokens=6, attribute_threshold=0.01'


def test_pipelines_from_a_hub_folder_save_folders_that_load(tmp_path):
    cir_expected, cir_call = _retriever_folder(tmp_path)
    mmaps_expected, mmaps_call = _summarizer_folder(tmp_path)
    configs = {name: json.loads((tmp_path / name / "config.json").read_text()) for name in ("cir", "mmaps")}
    assert "composed-image-retrieval" in configs["cir"]["custom_pipelines"]  # as the demo and the CLIs write them
    assert "product-summarization" in configs["mmaps"]["custom_pipelines"]
    # Clean process 1: load each Hub folder (remote code only), run it, save it again.
    first = run_isolated(
        f"""
        import json, os
        from transformers import pipeline
        result = {{}}
        for name, call in (("cir", lambda pipe: pipe({cir_call})), ("mmaps", lambda pipe: pipe({mmaps_call}))):
            pipe = pipeline(model=name, trust_remote_code=True, device="cpu")
            out = call(pipe)
            pipe.save_pretrained(name + "-resaved")
            result[name] = {{"module": type(pipe).__module__, "out": out, "files": sorted(os.listdir(name + "-resaved"))}}
        print(json.dumps(result, ensure_ascii=False))
        """,
        cwd=tmp_path,
    )
    # Clean process 2: load the re-saved folders.
    second = run_isolated(
        f"""
        import json
        from transformers import pipeline
        result = {{}}
        for name, call in (("cir", lambda pipe: pipe({cir_call})), ("mmaps", lambda pipe: pipe({mmaps_call}))):
            pipe = pipeline(model=name + "-resaved", trust_remote_code=True, device="cpu")
            result[name] = {{"module": type(pipe).__module__, "task": pipe.task, "out": call(pipe)}}
        print(json.dumps(result, ensure_ascii=False))
        """,
        cwd=tmp_path,
    )
    assert CIR_CODE <= set(first["cir"]["files"]), first["cir"]["files"]
    assert {"product_summarization.py", "hub_code.py"} <= set(first["mmaps"]["files"]), first["mmaps"]["files"]
    for name, task in (("cir", "composed-image-retrieval"), ("mmaps", "product-summarization")):
        assert first[name]["module"].startswith("transformers_modules")  # really the remote code, not our package
        assert second[name]["module"].startswith("transformers_modules")
        assert second[name]["task"] == task
        resaved = json.loads((tmp_path / f"{name}-resaved" / "config.json").read_text())
        assert resaved["custom_pipelines"] == configs[name]["custom_pipelines"]
        assert second[name]["out"] == first[name]["out"]  # identical outputs (ids, float scores, summary text)
    for got, want in zip(second["cir"]["out"], cir_expected):
        assert [(hit["id"], hit["score"]) for hit in got] == [(hit["id"], hit["score"]) for hit in want]
    assert second["mmaps"]["out"][0]["summary_text"] == mmaps_expected[0]["summary_text"]
    assert [a["attribute"] for a in second["mmaps"]["out"][0]["attributes"]] == [
        a["attribute"] for a in mmaps_expected[0]["attributes"]
    ]
