"""Saved CSMCIR and MMAPS folders placed in the local Hub cache load by repo id, offline, in a clean process.

This is the resolution path a downloaded repository takes: ``HF_HUB_CACHE/models--org--name/refs/main`` names a
commit, ``snapshots/<commit>/`` holds symlinks into ``blobs/``, and ``from_pretrained("org/name")`` with
``HF_HUB_OFFLINE=1`` must find config, weights, processor, remote code and the custom pipeline there. The child
process cannot import this repository's packages, so everything it runs comes from the cached files. The usage
snippet of each model card is executed there too, by repo id, and must print what it prints against the local folder.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import io
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline
from transformers.pipelines import PIPELINE_REGISTRY

import pipelines  # noqa: F401 - registers the package's pipeline tasks
from hub_cards import write_csmcir_card, write_mmaps_card
from modeling_csmcir import CSMCIRModel, CSMCIRProcessor
from modeling_csmcir.presets import preset_model
from modeling_mmaps import MMAPSForConditionalGeneration, MMAPSProcessor
from modeling_mmaps.presets import preset_config as mmaps_preset_config
from modeling_mmaps.presets import preset_processor as mmaps_preset_processor
from tests.hub_isolation import run_isolated

CIR_REPO = "test-org/csmcir-tiny"
SUM_REPO = "test-org/mmaps-tiny"
QUERY_TEXT = "make it red"
PRODUCT_TEXT = "这款包的材质很好，真皮黑色，简约百搭大容量。"


def place_in_hub_cache(folder: Path, cache: Path, repo_id: str) -> str:
    """Lay `folder` out as a downloaded repo in `cache`: content-addressed blobs, a snapshot of relative symlinks
    and `refs/main` naming the snapshot's commit. Returns the commit hash."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    commit = hashlib.sha1(b"".join(p.relative_to(folder).as_posix().encode() + p.read_bytes() for p in files)).hexdigest()
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    for path in files:
        blob = repo_dir / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, blob)
        link = repo_dir / "snapshots" / commit / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return commit


def card_snippet(folder: Path) -> str:
    """The usage snippet (the one ```python block) of the card in `folder`."""
    blocks = re.findall(r"```python\n(.*?)```", (folder / "README.md").read_text(encoding="utf-8"), flags=re.DOTALL)
    assert len(blocks) == 1, blocks
    return blocks[0]


def printed_value(snippet: str) -> Any:
    """Run `snippet` here and return what its last print shows, parsed back to a Python value."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(snippet, "<card snippet>", "exec"), {})
    return ast.literal_eval(out.getvalue().strip().splitlines()[-1])


def assert_same_output(got: Any, want: Any) -> None:
    """Equal structures; floats (retrieval scores) to 1e-5."""
    if isinstance(want, float):
        assert got == pytest.approx(want, abs=1e-5)
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert_same_output(g, w)
    elif isinstance(want, dict):
        assert got.keys() == want.keys()
        for key in want:
            assert_same_output(got[key], want[key])
    else:
        assert got == want


def write_example_images(directory: Path) -> None:
    """The image files the CSMCIR and MMAPS card snippets open (reference.png, gallery_{0,1,2}.png, product.png)."""
    rng = np.random.default_rng(0)
    for name in ("reference", "gallery_0", "gallery_1", "gallery_2", "product"):
        Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(directory / f"{name}.png")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """Both tiny models saved (CSMCIR with its custom pipeline), carded, and placed in a fresh Hub cache."""
    root = tmp_path_factory.mktemp("hub")
    cir_raw, cir_folder, sum_folder, cache = root / "cir_raw", root / "cir", root / "mmaps", root / "cache"

    torch.manual_seed(0)
    model, processor = preset_model("tiny")
    model.eval().save_pretrained(cir_raw)
    processor.save_pretrained(cir_raw)
    pipeline("composed-image-retrieval", model=str(cir_raw), trust_remote_code=True, device="cpu").save_pretrained(cir_folder)
    write_csmcir_card(cir_folder, metrics={"protocol": "synthetic check", "recall_at_1": 12.5}, repo_id=CIR_REPO)

    torch.manual_seed(0)
    sum_processor = mmaps_preset_processor("tiny", attribute_vocabulary=["真皮", "黑色"])
    sum_model = MMAPSForConditionalGeneration(mmaps_preset_config("tiny", num_attributes=2)).eval()
    has_summarization_pipeline = "product-summarization" in PIPELINE_REGISTRY.get_supported_tasks()
    if has_summarization_pipeline:
        sum_model.save_pretrained(root / "mmaps_raw")
        sum_processor.save_pretrained(root / "mmaps_raw")
        pipeline("product-summarization", model=str(root / "mmaps_raw"), trust_remote_code=True).save_pretrained(sum_folder)
        sum_processor.save_pretrained(sum_folder)
    else:
        sum_model.save_pretrained(sum_folder)
        sum_processor.save_pretrained(sum_folder)
    write_mmaps_card(sum_folder, metrics={"protocol": "synthetic check", "rouge2": 3.25}, repo_id=SUM_REPO)

    commits = {repo: place_in_hub_cache(folder, cache, repo) for repo, folder in ((CIR_REPO, cir_folder), (SUM_REPO, sum_folder))}
    write_example_images(root)
    return {"root": root, "cache": cache, "cir": cir_folder, "mmaps": sum_folder, "commits": commits,
            "has_summarization_pipeline": has_summarization_pipeline}


def test_cached_repos_load_by_id_offline_through_auto_classes_pipeline_and_card_snippet(hub, monkeypatch):
    root, cir_folder, sum_folder = hub["root"], hub["cir"], hub["mmaps"]
    monkeypatch.chdir(root)  # the snippets open their example images by relative path
    # What the same calls give in this process, against the saved folders.
    model = CSMCIRModel.from_pretrained(cir_folder).eval()
    processor = CSMCIRProcessor.from_pretrained(cir_folder)
    with torch.no_grad():
        want_query = model.get_query_features(**processor(images=[Image.open("reference.png").convert("RGB")], text=[QUERY_TEXT]))
    sum_model = MMAPSForConditionalGeneration.from_pretrained(sum_folder).eval()
    sum_processor = MMAPSProcessor.from_pretrained(sum_folder)
    want_summary = sum_processor.batch_decode(sum_model.generate(**sum_processor(text=[PRODUCT_TEXT]), num_beams=3, max_new_tokens=8))
    cir_snippet, sum_snippet = card_snippet(cir_folder), card_snippet(sum_folder)
    assert f'"{CIR_REPO}"' in cir_snippet and f'"{SUM_REPO}"' in sum_snippet
    want_cir_print = printed_value(cir_snippet.replace(CIR_REPO, str(cir_folder)))
    want_sum_print = printed_value(sum_snippet.replace(SUM_REPO, str(sum_folder)))

    cache = hub["cache"]
    result = run_isolated(
        f"""
        import contextlib, io, json
        import torch
        from PIL import Image
        from huggingface_hub import hf_hub_download
        from transformers import AutoModel, AutoModelForSeq2SeqLM, AutoProcessor, pipeline

        def run_snippet(code):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(code, "<card snippet>", "exec"), {{}})
            return out.getvalue().strip().splitlines()[-1]

        report = {{"config_paths": [hf_hub_download(r, "config.json") for r in ({CIR_REPO!r}, {SUM_REPO!r})]}}
        model = AutoModel.from_pretrained({CIR_REPO!r}, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained({CIR_REPO!r}, trust_remote_code=True)
        with torch.no_grad():
            report["query"] = model.get_query_features(
                **processor(images=[Image.open("reference.png").convert("RGB")], text=[{QUERY_TEXT!r}])).tolist()
        retriever = pipeline(model={CIR_REPO!r}, trust_remote_code=True, device="cpu")
        report["cir_modules"] = [type(model).__module__, type(processor).__module__, type(retriever).__module__]
        report["cir_task"] = retriever.task
        report["cir_snippet"] = run_snippet({cir_snippet!r})

        sum_model = AutoModelForSeq2SeqLM.from_pretrained({SUM_REPO!r}, trust_remote_code=True).eval()
        sum_processor = AutoProcessor.from_pretrained({SUM_REPO!r}, trust_remote_code=True)
        report["summary"] = sum_processor.batch_decode(
            sum_model.generate(**sum_processor(text=[{PRODUCT_TEXT!r}]), num_beams=3, max_new_tokens=8))
        report["sum_modules"] = [type(sum_model).__module__, type(sum_processor).__module__]
        if {hub["has_summarization_pipeline"]!r}:
            summarizer = pipeline(model={SUM_REPO!r}, trust_remote_code=True)
            report["sum_task"] = summarizer.task
            report["sum_pipeline"] = summarizer({{"text": {PRODUCT_TEXT!r}}}, num_beams=3, max_new_tokens=8)[0]["summary_text"]
        report["sum_snippet"] = run_snippet({sum_snippet!r})
        print(json.dumps(report, ensure_ascii=False))
        """,
        cwd=root,
        env={"HF_HUB_CACHE": str(cache), "HF_HOME": str(root / "hf_home")},
    )

    # Resolved by repo id from the cache snapshot that refs/main names.
    for repo, path in zip((CIR_REPO, SUM_REPO), result["config_paths"]):
        assert Path(path).parent == cache / f"models--{repo.replace('/', '--')}" / "snapshots" / hub["commits"][repo]
    for module in result["cir_modules"] + result["sum_modules"]:
        assert module.startswith("transformers_modules"), module
    assert result["cir_task"] == "composed-image-retrieval"
    torch.testing.assert_close(torch.tensor(result["query"]), want_query, rtol=0, atol=1e-5)
    assert result["summary"] == want_summary and result["summary"][0]
    if hub["has_summarization_pipeline"]:
        assert result["sum_task"] == "product-summarization"
        assert result["sum_pipeline"] == want_summary[0]
    # The cards' usage snippets run by repo id and print what they print against the local folders.
    assert_same_output(ast.literal_eval(result["cir_snippet"]), want_cir_print)
    assert_same_output(ast.literal_eval(result["sum_snippet"]), want_sum_print)
    # The card's gallery is given as image paths, so hit ids are the file names (build_index's default).
    assert len(want_cir_print) == 2 and {hit["id"] for hit in want_cir_print} <= {f"gallery_{i}.png" for i in range(3)}
