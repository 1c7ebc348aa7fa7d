"""``csmcir-index``: a gallery folder (+ caption file) and a CSMCIR model folder -> a saved GalleryIndex equal to the
pipeline's one-go ``build_index``; parts shared out across processes, resumed after a process dies, merged once;
every bad input one clear line. The real two-process launch is in tests/csmcir/test_multiprocess_launch.py."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from fixtures import random_images, tiny_csmcir, tiny_processor
from modeling_csmcir.captioning import images_from_directory
from modeling_csmcir.cli import index as index_cli
from modeling_csmcir.data.caption_files import make_caption_entry, save_caption_file
from modeling_csmcir.sharding import ProcessShard
from pipelines.gallery_index import GalleryIndex

NUM_IMAGES = 11


def _save_model(folder: Path, seed: int) -> Path:
    processor = tiny_processor()
    tiny_csmcir(processor, seed=seed).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return _save_model(tmp_path_factory.mktemp("model_a"), seed=0)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> tuple[Path, Path]:
    """An image folder and its caption file (authors' format)."""
    root = tmp_path_factory.mktemp("gallery")
    images = root / "images"
    images.mkdir()
    for i, image in enumerate(random_images(NUM_IMAGES, seed=3)):
        image.save(images / f"item{i:02d}.png")
    captions = root / "captions.json"
    save_caption_file(captions, {f"item{i:02d}": make_caption_entry(f"a square number {i}") for i in range(NUM_IMAGES)})
    return images, captions


@pytest.fixture(scope="module")
def retriever(model_dir):
    return index_cli.load_retriever(index_cli.ModelArguments(model_name_or_path=str(model_dir), device="cpu"),
                                    ProcessShard())


@pytest.fixture(scope="module")
def one_go(retriever, gallery) -> GalleryIndex:
    """What the pipeline builds in one call over the whole gallery (batches of 4, as the parts below)."""
    images, captions = gallery
    records = images_from_directory(images)
    texts = [f"a square number {int(r.name[4:])}" for r in records]
    return retriever.build_index([r.load() for r in records], captions=texts, ids=[r.name for r in records],
                                 batch_size=4, show_progress=False)


def _argv(model_dir, gallery, out, *extra):
    images, captions = gallery
    return ["--image_dir", str(images), "--captions", str(captions), "--model_name_or_path", str(model_dir),
            "--device", "cpu", "--output_dir", str(out), "--batch_size", "4", "--part_size", "4", *extra]


def _assert_same_index(path: Path, expected: GalleryIndex) -> None:
    built = GalleryIndex.load(path)
    assert built.ids == expected.ids
    assert torch.equal(built.embeddings, expected.embeddings)
    assert built.model_identity == expected.model_identity


def test_cli_index_equals_the_pipelines_one_go_build(model_dir, gallery, one_go, tmp_path, capsys):
    out = tmp_path / "indexes" / "gallery"
    summary = index_cli.main(_argv(model_dir, gallery, out))
    assert summary == {"output_dir": str(out), "process_index": 0, "num_processes": 1, "items": NUM_IMAGES,
                       "parts_built": 3, "merged": True, "items_in_index": NUM_IMAGES}
    _assert_same_index(out, one_go)
    assert one_go.model_identity["target_inputs"] == "image+caption"
    # The same command again: the index is complete, nothing is encoded.
    again = index_cli.main(_argv(model_dir, gallery, out))
    assert again["already_complete"] and again["parts_built"] == 0
    _assert_same_index(out, one_go)
    assert not index_cli.parts_dir(out).exists() and sorted(p.name for p in out.iterdir()) == [
        "gallery_embeddings.safetensors", "gallery_index.json"]


def test_independent_jobs_killed_mid_way_resume_and_merge_to_the_same_index(retriever, gallery, one_go, tmp_path,
                                                                              model_dir):
    images, captions = gallery
    records = images_from_directory(images)
    texts = [f"a square number {i}" for i in range(NUM_IMAGES)]
    out = tmp_path / "idx"

    class Killed(RuntimeError):
        pass

    def die(name):
        raise Killed(name)

    build = dict(part_size=4, batch_size=4, show_progress=False)
    # 3 parts over 2 processes: process 0 takes parts 0-1, process 1 part 2.
    assert index_cli.build_parts(retriever, records, texts, out, ProcessShard(1, 2), **build) == ["part-00002-of-00003"]
    with pytest.raises(Killed, match="part-00000-of-00003"):
        index_cli.build_parts(retriever, records, texts, out, ProcessShard(0, 2), on_part_end=die, **build)
    with pytest.raises(ValueError, match=r"1 of 3 part\(s\) not built yet \(part-00001-of-00003\)"):
        index_cli.merge_parts(out, records)
    # The rerun of process 0 builds only what is missing; process 1 has nothing left to do.
    assert index_cli.build_parts(retriever, records, texts, out, ProcessShard(0, 2), **build) == ["part-00001-of-00003"]
    assert index_cli.build_parts(retriever, records, texts, out, ProcessShard(1, 2), **build) == []
    index_cli.main(["--merge_only", "--output_dir", str(out), "--image_dir", str(images), "--captions", str(captions)])
    _assert_same_index(out, one_go)


def test_on_disk_merge_with_a_trained_ivf_equals_the_one_go_index(model_dir, gallery, one_go, tmp_path):
    pytest.importorskip("faiss")
    from pipelines.gallery_index import train_faiss

    trained = tmp_path / "trained"
    # One cell (11 rows allow no more): the IVF search is then exact, so it must rank as the one-go index does.
    train_faiss(one_go.embeddings, kind="ivf", nlist=1, nprobe=1).save(trained)
    out = tmp_path / "indexes" / "big"
    index_cli.main(_argv(model_dir, gallery, out, "--limit", "5"))  # an older, smaller index the merge replaces whole
    summary = index_cli.main(_argv(model_dir, gallery, out, "--on_disk", "--faiss_trained", str(trained)))
    assert summary["merged"] and summary["items_in_index"] == NUM_IMAGES and summary["parts_built"] == 3
    assert not index_cli.parts_dir(out).exists() and (out / "gallery_faiss.ivfdata").is_file()
    assert not any(p.name.endswith((".merging", ".replaced")) for p in out.parent.iterdir())
    mapped = GalleryIndex.load(out, mmap=True)
    assert mapped.memory_mapped and mapped.faiss_on_disk
    assert mapped.ids == one_go.ids and torch.equal(mapped.embeddings, one_go.embeddings)
    assert mapped.model_identity == one_go.model_identity
    queries = one_go.embeddings[[0, 5, 9]]
    expected = one_go.search(queries, top_k=4, backend="torch")
    for backend in ("faiss", "torch"):
        got = mapped.search(queries, top_k=4, backend=backend)
        assert torch.equal(got.positions, expected.positions), backend
        assert torch.allclose(got.scores, expected.scores, atol=1e-5), backend


# ----------------------------------------------------------------------------------------------------- bad input


def _one_line_error(argv, monkeypatch, capsys) -> str:
    monkeypatch.setattr(sys, "argv", ["csmcir-index", *argv])
    with pytest.raises(SystemExit) as exit_info:
        index_cli.console_main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("csmcir-index: error: ")
    return err


def test_bad_inputs_are_one_clear_line(model_dir, gallery, tmp_path, monkeypatch, capsys):
    images, captions = gallery
    model = ["--model_name_or_path", str(model_dir), "--device", "cpu", "--output_dir", str(tmp_path / "o")]
    err = _one_line_error(["--image_dir", str(tmp_path / "nowhere"), *model], monkeypatch, capsys)
    assert "nowhere" in err and "is not a directory" in err
    (tmp_path / "empty").mkdir()
    err = _one_line_error(["--image_dir", str(tmp_path / "empty"), *model], monkeypatch, capsys)
    assert "holds no image file" in err
    partial = tmp_path / "partial.json"
    save_caption_file(partial, {"item00": make_caption_entry("only one")})
    err = _one_line_error(["--image_dir", str(images), "--captions", str(partial), *model], monkeypatch, capsys)
    assert f"no caption for {NUM_IMAGES - 1} of {NUM_IMAGES} gallery image(s)" in err
    err = _one_line_error(["--merge_only", "--output_dir", str(tmp_path / "never")], monkeypatch, capsys)
    assert "no parts to merge" in err


def test_a_path_escaping_the_dataset_root_is_refused(model_dir, gallery, tmp_path, monkeypatch, capsys):
    root = tmp_path / "cirr"
    (root / "image_splits").mkdir(parents=True)
    (root / "dev").mkdir()
    shutil.copy(gallery[0] / "item00.png", root / "dev" / "ok.png")
    shutil.copy(gallery[0] / "item01.png", tmp_path / "outside.png")
    (root / "image_splits" / "split.rc2.val.json").write_text(
        json.dumps({"ok": "./dev/ok.png", "evil": "../outside.png"}))
    err = _one_line_error(["--dataset", str(root), "--split", "val", "--model_name_or_path", str(model_dir),
                           "--output_dir", str(tmp_path / "o")], monkeypatch, capsys)
    assert "outside.png" in err and "evil" in err


def test_parts_of_different_models_are_refused(model_dir, gallery, tmp_path, monkeypatch, capsys):
    other = _save_model(tmp_path / "model_b", seed=1)
    out = tmp_path / "idx"
    index_cli.main(_argv(model_dir, gallery, out, "--process_index", "0", "--num_processes", "2"))
    err = _one_line_error(_argv(other, gallery, out, "--process_index", "1", "--num_processes", "2"), monkeypatch, capsys)
    assert "part-00000-of-00003" in err
    assert "was encoded by a different model" in err and "every part of one index needs the same model" in err
    # Parts that reach the merge anyway (built elsewhere, copied in) are refused by GalleryIndex.merge, part named.
    elsewhere = tmp_path / "elsewhere"
    index_cli.main(_argv(other, gallery, elsewhere, "--process_index", "1", "--num_processes", "2"))
    shutil.copytree(index_cli.parts_dir(elsewhere) / "part-00002-of-00003", index_cli.parts_dir(out) / "part-00002-of-00003")
    err = _one_line_error(["--merge_only", "--output_dir", str(out)], monkeypatch, capsys)
    assert "part part-00002-of-00003 was encoded by a different model than part part-00000-of-00003" in err
    # Inputs changed since the parts were started: refused, naming what changed.
    err = _one_line_error(_argv(model_dir, gallery, out, "--part_size", "5"), monkeypatch, capsys)
    assert "started with other inputs (part_size differ" in err


def test_a_datasets_folder_indexes_like_the_image_folder(model_dir, gallery, one_go, tmp_path):
    """A `datasets` save_to_disk folder (Image column + name column) gives the same index as the image folder."""
    from datasets import Dataset, Features, Image as ImageFeature, Value

    images, captions = gallery
    names = [f"item{i:02d}" for i in range(NUM_IMAGES)]
    data = Dataset.from_dict({"image": [str(images / f"{n}.png") for n in names], "image_name": names},
                             features=Features({"image": ImageFeature(), "image_name": Value("string")}))
    data.save_to_disk(str(tmp_path / "hf"))
    out = tmp_path / "idx"
    index_cli.main(["--dataset", str(tmp_path / "hf"), "--captions", str(captions), "--model_name_or_path",
                    str(model_dir), "--device", "cpu", "--output_dir", str(out), "--batch_size", "4", "--part_size", "4"])
    _assert_same_index(out, one_go)
