"""``csmcir-search`` end to end on the synthetic benchmark: csmcir-index builds the gallery index of a split,
csmcir-search ranks the split's CIRR queries (composed), text-only and image-only queries, writes JSONL and a PNG
grid; every bad input is one clear line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from fixtures import tiny_csmcir, tiny_processor
from hostile_inputs import console_error_in_process
from modeling_csmcir.cli import index as index_cli
from modeling_csmcir.cli import search as search_cli
from modeling_csmcir.data.synthetic import SyntheticCIRConfig, generate_synthetic_cir
from pipelines.gallery_index import GalleryIndex


def _save_model(folder: Path, seed: int) -> Path:
    processor = tiny_processor()
    tiny_csmcir(processor, seed=seed).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    bench = Path(generate_synthetic_cir(SyntheticCIRConfig(
        output_dir=str(root / "bench"), num_images=60, seed=0, image_size=32, val_fraction=0.4, test_fraction=0.3,
    )))
    model = _save_model(root / "model", seed=0)
    index_dir = root / "index"
    index_cli.main(["--dataset", str(bench), "--split", "val", "--model_name_or_path", str(model), "--device", "cpu",
                    "--output_dir", str(index_dir), "--batch_size", "8", "--part_size", "16"])
    return bench, model, index_dir, root


def _search(bench, model, index_dir, queries, *extra):
    return search_cli.main(["--index_dir", str(index_dir), "--model_name_or_path", str(model), "--device", "cpu",
                            "--queries", str(queries), "--image_root", str(bench), *extra])


def test_cirr_queries_end_to_end_with_grid(setup, tmp_path):
    from transformers import pipeline

    import pipelines  # noqa: F401

    bench, model, index_dir, _ = setup
    captions = bench / "captions" / "cap.rc2.val.json"
    out, grid = tmp_path / "hits.jsonl", tmp_path / "hits.png"
    summary = _search(bench, model, index_dir, captions, "--output_file", str(out), "--grid_file", str(grid),
                      "--top_k", "5", "--grid_queries", "3", "--grid_top_k", "4")
    index = GalleryIndex.load(index_dir)
    cirr = json.loads(captions.read_text())
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(cirr) == summary["queries"] and summary["items"] == len(index)
    assert [line["query_id"] for line in lines] == [item["pairid"] for item in cirr]
    assert all(line["query_type"] == "composed" and len(line["hits"]) == 5 for line in lines)
    assert not any(line["image"].startswith("/") for line in lines)  # no absolute local path in the output
    # The same ranking the pipeline gives for the same query.
    retriever = pipeline("composed-image-retrieval", model=str(model), trust_remote_code=True, device="cpu")
    first = cirr[0]
    reference = str(bench / json.loads((bench / "image_splits" / "split.rc2.val.json").read_text())[first["reference"]])
    expected = retriever(reference, text=first["caption"], gallery=index, top_k=5)
    assert [(hit["id"], hit["score"]) for hit in lines[0]["hits"]] == [(hit["id"], hit["score"]) for hit in expected]
    assert [hit["rank"] for hit in lines[0]["hits"]] == [1, 2, 3, 4, 5]
    with Image.open(grid) as image:
        assert image.format == "PNG" and image.size == (5 * (128 + 8) + 8, 3 * (46 + 128 + 30) + 8)
        # The first hit's thumbnail is its gallery image, not a placeholder (looked up by id in the split).
        cell = image.crop((8 + 136, 8 + 46, 8 + 136 + 128, 8 + 46 + 128)).convert("RGB")
        assert len(set(cell.getdata())) > 2


def test_text_only_and_image_only_queries(setup, tmp_path):
    bench, model, index_dir, _ = setup
    names = json.loads((bench / "image_splits" / "split.rc2.val.json").read_text())
    gallery_name = sorted(GalleryIndex.load(index_dir).ids)[3]
    queries = tmp_path / "queries.jsonl"
    queries.write_text("\n".join(json.dumps(q) for q in [
        {"id": "by-picture", "image": gallery_name},
        {"id": "by-words", "text": "a red circle"},
        {"id": "by-path", "image": names[gallery_name], "text": "make it blue"},
    ]) + "\n")
    summary = _search(bench, model, index_dir, queries, "--output_file", str(tmp_path / "out.jsonl"))
    by_id = {result["query_id"]: result for result in summary["results"]}
    assert by_id["by-picture"]["query_type"] == "image" and by_id["by-words"]["query_type"] == "text"
    assert by_id["by-path"]["query_type"] == "composed"
    # An image-only query of a gallery image finds that image first (image -> image, score 1).
    assert by_id["by-picture"]["hits"][0]["id"] == gallery_name
    assert abs(by_id["by-picture"]["hits"][0]["score"] - 1.0) < 1e-4
    # --mmap (the gallery's rows mapped, not read) ranks the same hits with the same scores.
    mapped = _search(bench, model, index_dir, queries, "--output_file", str(tmp_path / "mapped.jsonl"), "--mmap")
    assert mapped["results"] == summary["results"]


def _cli_error(argv, in_subprocess: bool = False) -> str:
    """The one error line of ``csmcir-search argv`` (exit status 2), run in this process or as a real process."""
    if in_subprocess:
        result = subprocess.run([sys.executable, "-m", "modeling_csmcir.cli.search", *argv], capture_output=True,
                                text=True, timeout=300)
        status, stderr = result.returncode, result.stderr
    else:
        status, stderr = console_error_in_process(search_cli.console_main, argv)
    assert status == 2, stderr[-2000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("csmcir-search: error: "), stderr[-2000:]
    return lines[0]


def test_bad_inputs_are_one_clear_line(setup, tmp_path):
    bench, model, index_dir, root = setup
    good = tmp_path / "q.jsonl"
    good.write_text(json.dumps({"text": "red"}) + "\n")
    base = ["--model_name_or_path", str(model), "--device", "cpu", "--image_root", str(bench),
            "--output_file", str(tmp_path / "o.jsonl")]
    # One real process (what a shell sees); the other cases run the same entry point in this process.
    assert "no such folder" in _cli_error(["--index_dir", str(tmp_path / "missing"), "--queries", str(good), *base],
                                          in_subprocess=True)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "red"}) + "\n\n{not json\n")
    assert f"{bad} line 3: not valid JSON" in _cli_error(["--index_dir", str(index_dir), "--queries", str(bad), *base])
    bad.write_text(json.dumps({"text": "red"}) + "\n" + json.dumps({"colour": "red"}) + "\n")
    assert "line 2: a query needs 'image'" in _cli_error(["--index_dir", str(index_dir), "--queries", str(bad), *base])
    bad.write_text(json.dumps({"image": "no-such-image"}) + "\n")
    assert "line 1 'image': image 'no-such-image' not found" in _cli_error(
        ["--index_dir", str(index_dir), "--queries", str(bad), *base])
    bad.write_text(json.dumps({"image": "../../etc/passwd"}) + "\n")
    assert "leaves the dataset folder" in _cli_error(["--index_dir", str(index_dir), "--queries", str(bad), *base])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert "no queries" in _cli_error(["--index_dir", str(index_dir), "--queries", str(empty), *base])
    # An index built by another model.
    other = _save_model(root / "other-model", seed=1)
    message = _cli_error(["--index_dir", str(index_dir), "--queries", str(good), *base[:0], "--model_name_or_path",
                          str(other), "--device", "cpu", "--output_file", str(tmp_path / "o.jsonl")])
    assert "built by a different model" in message and str(index_dir) in message
    # An empty gallery (a record with no rows).
    empty_index = tmp_path / "empty-index"
    GalleryIndex(torch.ones(1, GalleryIndex.load(index_dir).embed_dim)).save(empty_index)
    record = json.loads((empty_index / "gallery_index.json").read_text())
    record.update(num_items=0, ids=[])
    (empty_index / "gallery_index.json").write_text(json.dumps(record))
    message = _cli_error(["--index_dir", str(empty_index), "--queries", str(good), *base])
    assert "records an empty gallery (0 items)" in message
