"""Galleries larger than memory: memory-mapped embeddings and faiss IVF with on-disk inverted lists
(`pipelines/gallery_on_disk.py`, `GalleryIndex.load(mmap=True)`, `GalleryIndex.merge_on_disk`)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import pipelines.gallery_on_disk as on_disk
from pipelines.gallery_index import GalleryIndex, train_faiss
from pipelines.gallery_on_disk import MappedEmbeddings, write_embeddings


def _clustered(rows: int, dim: int, clusters: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=generator)
    points = centres[torch.randint(0, clusters, (rows,), generator=generator)] + 0.3 * torch.randn(rows, dim, generator=generator)
    return torch.nn.functional.normalize(points, dim=-1)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/self/status")


def _mapping_of(address: int) -> str:
    """The path of the /proc/self/maps entry holding `address` ('' for anonymous memory)."""
    with open("/proc/self/maps") as handle:
        for line in handle:
            fields = line.split()
            low, high = (int(value, 16) for value in fields[0].split("-"))
            if low <= address < high:
                return fields[5] if len(fields) > 5 else ""
    return ""


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_streamed_embeddings_file_is_byte_identical_to_safetensors_save_file(tmp_path, dtype):
    matrix = _clustered(37, 8).to(dtype)
    save_file({"embeddings": matrix}, tmp_path / "reference.safetensors", metadata={"format": "pt"})
    write_embeddings(str(tmp_path / "streamed.safetensors"), tuple(matrix.shape), dtype, [matrix[:5], matrix[5:30], matrix[30:]])
    assert (tmp_path / "streamed.safetensors").read_bytes() == (tmp_path / "reference.safetensors").read_bytes()
    mapped = MappedEmbeddings(tmp_path / "streamed.safetensors")
    assert mapped.tensor.dtype == dtype and torch.equal(mapped.tensor, matrix)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("tokens", [None, 3])
def test_memory_mapped_gallery_searches_exactly_as_the_in_memory_one(tmp_path, monkeypatch, dtype, tokens):
    rows = _clustered(2500 * (tokens or 1), 16).reshape(2500, *((tokens,) if tokens else ()), 16)
    index = GalleryIndex(rows, ids=[f"img{i}" for i in range(2500)], dtype=dtype)
    index.save(tmp_path)
    monkeypatch.setattr(on_disk, "STREAM_BLOCK_BYTES", 16 << 10)  # many streamed blocks on a small gallery
    mapped = GalleryIndex.load(tmp_path, mmap=True)
    assert mapped.memory_mapped and not index.memory_mapped and mapped.ids == index.ids
    for num_queries in (1, 5, 70):
        queries = _clustered(num_queries, 16, seed=num_queries)
        want, got = index.search(queries, top_k=10), mapped.search(queries, top_k=10)
        assert torch.equal(got.positions, want.positions), num_queries
        assert torch.equal(got.scores, want.scores), num_queries
    assert torch.equal(mapped.similarities(queries), index.similarities(queries))


def test_memory_mapped_open_and_search_do_not_read_the_matrix_into_memory(tmp_path, monkeypatch):
    # 32 MiB of float32 rows; streaming blocks of 2 MiB.
    GalleryIndex(_clustered(32768, 256), normalize=False).save(tmp_path)
    size_kib = os.path.getsize(tmp_path / "gallery_embeddings.safetensors") // 1024
    monkeypatch.setattr(on_disk, "STREAM_BLOCK_BYTES", 2 << 20)
    resident = _status_kib("VmRSS")
    mapped = GalleryIndex.load(tmp_path, mmap=True)  # verify=True: reads every byte once, block by block
    result = mapped.search(_clustered(4, 256, seed=1), top_k=10)
    assert result.positions.shape == (4, 10)
    # The rows are a view of the file's pages, not a copy in anonymous memory ...
    assert _mapping_of(mapped.embeddings.data_ptr()) == str(tmp_path / "gallery_embeddings.safetensors")
    # ... and neither the digest pass nor the search keeps more than a block or two resident (VmRSS counts
    # anonymous and file-backed pages alike).
    assert _status_kib("VmRSS") - resident < size_kib // 4
    # The same measurement sees an ordinary load: it keeps every row resident (safetensors maps the file too, but
    # the load's digest pass reads every page and nothing hands them back).
    resident = _status_kib("VmRSS")
    in_memory = GalleryIndex.load(tmp_path)
    assert _status_kib("VmRSS") - resident > size_kib * 3 // 4
    assert len(in_memory) == len(mapped)


def test_memory_mapped_index_is_read_only_and_resaves_byte_identically(tmp_path):
    GalleryIndex(_clustered(50, 8), metadata=[{"n": i} for i in range(50)]).save(tmp_path / "a")
    mapped = GalleryIndex.load(tmp_path / "a", mmap=True)
    with pytest.raises(ValueError, match="read-only on disk"):
        mapped.add(_clustered(2, 8))
    mapped.save(tmp_path / "b")
    for name in ("gallery_embeddings.safetensors", "gallery_index.json"):
        assert (tmp_path / "b" / name).read_bytes() == (tmp_path / "a" / name).read_bytes()
    with pytest.raises(ValueError, match="searches them on the CPU"):
        GalleryIndex.load(tmp_path / "a", mmap=True, device="meta")


def test_truncated_embeddings_file_is_named(tmp_path):
    GalleryIndex(_clustered(100, 8)).save(tmp_path)
    path = tmp_path / "gallery_embeddings.safetensors"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ValueError, match=r"gallery_embeddings.safetensors' is truncated: \d+ bytes, but its header needs"):
        GalleryIndex.load(tmp_path, mmap=True, verify=False)
    with pytest.raises(ValueError, match="gallery_embeddings.safetensors"):
        GalleryIndex.load(tmp_path)


# ---------------------------------------------------------------------------------------------------- on-disk IVF

def _shards(tmp_path, rows, trained, bounds=(0, 700, 1500, 2400)):
    folders = []
    for position, (start, stop) in enumerate(zip(bounds, bounds[1:])):
        folder = tmp_path / f"shard{position}"
        shard = GalleryIndex(rows[start:stop], ids=[f"img{i}" for i in range(start, stop)],
                             metadata=[{"row": i} for i in range(start, stop)], normalize=False)
        shard.build_faiss(trained=trained).save(folder)
        folders.append(folder)
    return folders


@pytest.mark.parametrize("kind", ["ivf", "ivfpq"])
def test_on_disk_ivf_merged_from_three_shards_equals_the_in_memory_index_filled_in_one_go(tmp_path, kind):
    pytest.importorskip("faiss")
    rows = _clustered(2400, 16)
    trained = train_faiss(rows[:1200], kind=kind, nlist=16, nprobe=4, pq_m=4 if kind == "ivfpq" else None,
                          normalize=False)
    one_go = GalleryIndex(rows, ids=[f"img{i}" for i in range(2400)], normalize=False).build_faiss(trained=trained)
    merged = GalleryIndex.merge_on_disk(_shards(tmp_path, rows, trained), tmp_path / "merged")
    assert merged.memory_mapped and merged.faiss_on_disk and merged.ids == one_go.ids
    assert merged.metadata == [{"row": i} for i in range(2400)]
    assert sorted(os.listdir(tmp_path / "merged")) == [
        "gallery_embeddings.safetensors", "gallery_faiss.index", "gallery_faiss.ivfdata", "gallery_index.json"]
    # The folder moves as a whole: the lists' file is found beside the index, wherever it now is.
    os.rename(tmp_path / "merged", tmp_path / "moved")
    merged = GalleryIndex.load(tmp_path / "moved", mmap=True)
    queries = _clustered(30, 16, seed=3)
    for rerank in (0, 5):
        one_go.set_faiss_search_params(rerank=rerank)
        merged.set_faiss_search_params(rerank=rerank)
        want, got = one_go.search(queries, top_k=10), merged.search(queries, top_k=10)
        assert torch.equal(got.positions, want.positions) and torch.equal(got.scores, want.scores), rerank
    exact = one_go.search(queries, top_k=10, backend="torch")
    got = merged.search(queries, top_k=10, backend="torch")
    assert torch.equal(got.positions, exact.positions) and torch.equal(got.scores, exact.scores)
    # Saved elsewhere, it stays an on-disk index with the same results.
    merged.save(tmp_path / "copy")
    copy = GalleryIndex.load(tmp_path / "copy", mmap=True)
    copy.set_faiss_search_params(rerank=5)
    assert copy.faiss_on_disk and torch.equal(copy.search(queries, top_k=10).positions, want.positions)


def test_on_disk_ivf_refuses_a_missing_or_truncated_ivfdata_naming_it(tmp_path):
    pytest.importorskip("faiss")
    rows = _clustered(2400, 16)
    trained = train_faiss(rows, kind="ivfpq", nlist=16, pq_m=4, normalize=False)
    GalleryIndex.merge_on_disk(_shards(tmp_path, rows, trained), tmp_path / "merged")
    ivfdata = tmp_path / "merged" / "gallery_faiss.ivfdata"
    content = ivfdata.read_bytes()
    ivfdata.write_bytes(content[: len(content) // 2])
    with pytest.raises(ValueError, match=r"gallery_faiss.ivfdata' is truncated"):
        GalleryIndex.load(tmp_path / "merged", mmap=True)
    ivfdata.unlink()
    with pytest.raises(ValueError, match=r"gallery_faiss.ivfdata' not found: .*copy the whole index folder"):
        GalleryIndex.load(tmp_path / "merged", mmap=True)
    assert GalleryIndex.load(tmp_path / "merged", mmap=True, load_faiss=False).backend == "torch"


def test_merge_on_disk_refuses_a_shard_trained_with_another_quantizer_naming_it(tmp_path):
    pytest.importorskip("faiss")
    rows = _clustered(2400, 16)
    trained = train_faiss(rows[:1200], kind="ivfpq", nlist=16, pq_m=4, normalize=False)
    other = train_faiss(rows[1200:], kind="ivfpq", nlist=16, pq_m=4, normalize=False, seed=1)
    folders = _shards(tmp_path, rows, trained)
    GalleryIndex(rows[1500:2400], ids=[f"img{i}" for i in range(1500, 2400)], normalize=False).build_faiss(
        trained=other).save(folders[2])
    with pytest.raises(ValueError, match=r"shard 2 \('.*shard2/gallery_faiss.index'\) was filled from another trained"):
        GalleryIndex.merge_on_disk(folders, tmp_path / "merged")
    # A record claiming the same training does not fool it: the quantizers themselves are compared.
    record_path = folders[2] / "gallery_index.json"
    record = json.loads(record_path.read_text())
    record["faiss"]["trained_sha256"] = trained.config["trained_sha256"]
    record_path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"shard2/gallery_faiss.index' was trained differently from .*shard0/gallery_faiss"
                                         r".index' \(coarse centroids differ\)"):
        GalleryIndex.merge_on_disk(folders, tmp_path / "merged")
    assert not (tmp_path / "merged" / "gallery_index.json").exists()
    with pytest.raises(ValueError, match="is one of the shards"):
        GalleryIndex.merge_on_disk(folders, folders[0])


def test_merge_on_disk_without_faiss_equals_merge_and_refuses_mixed_shards(tmp_path):
    rows = _clustered(300, 8)
    for position, (start, stop) in enumerate([(0, 100), (100, 300)]):
        GalleryIndex(rows[start:stop], ids=list(range(start, stop))).save(tmp_path / f"s{position}")
    merged = GalleryIndex.merge_on_disk([tmp_path / "s0", tmp_path / "s1"], tmp_path / "out")
    in_memory = GalleryIndex.merge([GalleryIndex.load(tmp_path / "s0"), GalleryIndex.load(tmp_path / "s1")])
    assert merged.ids == in_memory.ids and torch.equal(merged.embeddings, in_memory.embeddings)
    assert not merged.faiss_on_disk
    GalleryIndex(rows[:10], ids=list(range(5, 15))).save(tmp_path / "clash")
    with pytest.raises(ValueError, match=r"id 5 is in shard 0 and in shard 1.*shards: 0='.*s0', 1='.*clash'"):
        GalleryIndex.merge_on_disk([tmp_path / "s0", tmp_path / "clash"], tmp_path / "out2")
    assert np.isfinite(merged.search(rows[:2], top_k=3).scores.numpy()).all()


def test_gather_reads_the_rows_at_any_positions(tmp_path):
    matrix = _clustered(50, 8)
    save_file({"embeddings": matrix}, tmp_path / "rows.safetensors", metadata={"format": "pt"})
    mapped = MappedEmbeddings(tmp_path / "rows.safetensors")
    positions = torch.tensor([[3, 4, 5, 5, 0], [49, 48, 10, 11, 3]])
    assert torch.equal(mapped.gather(positions), matrix[positions])


def test_faiss_candidates_of_a_memory_mapped_index_are_rescored_from_the_file_as_in_memory(tmp_path):
    pytest.importorskip("faiss")
    tokens = GalleryIndex(_clustered(400 * 3, 16).reshape(400, 3, 16)).build_faiss("flat")
    vectors = GalleryIndex(_clustered(400, 16)).build_faiss("ivfpq", nlist=8, pq_m=4)
    vectors.set_faiss_search_params(rerank=4)
    queries = _clustered(9, 16, seed=5)
    for name, index in (("tokens", tokens), ("vectors", vectors)):
        index.save(tmp_path / name)
        mapped = GalleryIndex.load(tmp_path / name, mmap=True)
        mapped.set_faiss_search_params(rerank=index.faiss_config.get("rerank", 0))
        want, got = index.search(queries, top_k=5), mapped.search(queries, top_k=5)
        assert mapped.memory_mapped and mapped.backend == "faiss"
        assert torch.equal(got.positions, want.positions) and torch.equal(got.scores, want.scores), name


def test_faiss_notes_about_on_disk_lists_go_to_stderr_not_stdout(tmp_path, capfd):
    # csmcir-search writes its results on stdout: faiss' C++ prints there ("resizing ...", "updating ondisk filename").
    pytest.importorskip("faiss")
    rows = _clustered(2400, 16)
    trained = train_faiss(rows, kind="ivf", nlist=16, normalize=False)
    GalleryIndex.merge_on_disk(_shards(tmp_path, rows, trained), tmp_path / "merged")
    GalleryIndex.load(tmp_path / "merged").search(rows[:2], top_k=3)
    captured = capfd.readouterr()
    assert captured.out == "" and "ondisk filename" in captured.err


def test_a_failed_merge_on_disk_keeps_the_previous_index_and_leaves_no_files(tmp_path, monkeypatch):
    pytest.importorskip("faiss")
    import pipelines.gallery_index as gallery_module

    rows = _clustered(2400, 16)
    trained = train_faiss(rows, kind="ivf", nlist=16, normalize=False)
    shards = _shards(tmp_path, rows, trained)
    GalleryIndex(rows[:5], ids=list("abcde")).save(tmp_path / "out")

    def broken_merge(shard_files, index_path, ivfdata_path, ivfdata_name):
        for name in (index_path, ivfdata_path):
            with open(name, "wb") as handle:
                handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(gallery_module, "merge_ivf_on_disk", broken_merge)
    with pytest.raises(OSError, match="disk full"):
        GalleryIndex.merge_on_disk(shards, tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["gallery_embeddings.safetensors", "gallery_index.json"]
    assert GalleryIndex.load(tmp_path / "out").ids == list("abcde")


def test_a_merge_on_disk_stopped_after_its_switch_loads_as_the_new_index(tmp_path, monkeypatch):
    pytest.importorskip("faiss")
    rows = _clustered(2400, 16)
    trained = train_faiss(rows, kind="ivf", nlist=16, nprobe=16, normalize=False)
    shards = _shards(tmp_path, rows, trained)
    real_replace, calls = os.replace, {"n": 0}

    def replace(src, dst):
        calls["n"] += 1
        if calls["n"] == 5:  # 1-3: data to pending names, 4: the JSON switch, 5-7: pending names onto final ones
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        GalleryIndex.merge_on_disk(shards, tmp_path / "out")
    monkeypatch.setattr(os, "replace", real_replace)
    assert any(name.endswith(".pending") for name in os.listdir(tmp_path / "out"))
    index = GalleryIndex.load(tmp_path / "out", mmap=True)  # finishes the switch: the lists must be under their name
    assert index.faiss_on_disk and len(index) == 2400
    assert sorted(os.listdir(tmp_path / "out")) == [
        "gallery_embeddings.safetensors", "gallery_faiss.index", "gallery_faiss.ivfdata", "gallery_index.json"]
    assert index.search(rows[:3], top_k=1).positions.flatten().tolist() == [0, 1, 2]
