"""GalleryIndex: exact search against brute force, storage dtypes, save/load, faiss backends, model identity, errors."""

from __future__ import annotations

import json
import os

import pytest
import torch
from transformers import BertConfig

from pipelines import exact_search as search_module
from pipelines import gallery_index as gallery_module
from pipelines.gallery_index import GalleryIndex, SearchResult, config_hash, model_identity, weights_fingerprint


def _normalised(rows: int, dim: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(rows, dim, generator=generator), dim=1)


def _clustered(rows: int, dim: int, clusters: int, seed: int = 0, noise: float = 0.6) -> torch.Tensor:
    """Mixture of Gaussians: the structure approximate indexes exploit (isotropic noise has none)."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=generator)
    assignment = torch.randint(0, clusters, (rows,), generator=generator)
    return torch.nn.functional.normalize(centres[assignment] + noise * torch.randn(rows, dim, generator=generator), dim=1)


def _brute_force(gallery: torch.Tensor, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(gallery.float(), dim=1).T
    return scores.topk(k, dim=1)


def test_exact_search_equals_brute_force_topk():
    gallery, queries = _normalised(500, 32, seed=1) * 3.0, torch.randn(7, 32)
    index = GalleryIndex(gallery)
    result = index.search(queries, top_k=10)
    expected_scores, expected_positions = _brute_force(gallery, queries, 10)
    assert result.positions.shape == (7, 10)
    assert torch.equal(result.positions, expected_positions)
    torch.testing.assert_close(result.scores, expected_scores, rtol=0, atol=1e-5)
    assert bool((result.scores[:, :-1] >= result.scores[:, 1:]).all())


def test_chunked_search_merges_blocks_exactly(monkeypatch):
    # 64 queries with a 64k-element budget -> 1024-row blocks -> 5 blocks over 4500 rows, the last one partial.
    monkeypatch.setattr(search_module, "SCORE_BLOCK_ELEMENTS", 1 << 16)
    gallery, queries = _normalised(4500, 16, seed=2), torch.randn(64, 16)
    result = GalleryIndex(gallery).search(queries, top_k=25)
    expected_scores, expected_positions = _brute_force(gallery, queries, 25)
    assert torch.equal(result.positions, expected_positions)
    torch.testing.assert_close(result.scores, expected_scores, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_storage_scores_the_stored_vectors_exactly(dtype):
    gallery, queries = _normalised(3000, 16, seed=3), torch.randn(5, 16)
    index = GalleryIndex(gallery, dtype=dtype)
    assert index.dtype == getattr(torch, dtype)
    assert index.embeddings.element_size() == 2
    result = index.search(queries, top_k=10)
    # The stored rows are scored as stored (rounded, so norms are 1 ± 1e-3), not re-normalised.
    stored_scores = torch.nn.functional.normalize(queries, dim=1) @ index.embeddings.float().T
    expected_scores, expected_positions = stored_scores.topk(10, dim=1)
    torch.testing.assert_close(result.scores, expected_scores, rtol=0, atol=1e-6)
    assert torch.equal(result.positions, expected_positions)
    # Against the float32 gallery the ranking barely moves: same best hit, ≥ 8 of the top 10 shared.
    _, full_precision_positions = _brute_force(gallery, queries, 10)
    assert torch.equal(result.positions[:, 0], full_precision_positions[:, 0])
    overlap = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(result.positions, full_precision_positions)]
    assert min(overlap) >= 8


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_shortlist_widens_over_near_ties(dtype, monkeypatch):
    # 300 near-copies of one row sit within the half-precision error of each other: the shortlist must widen past
    # its first width (8) and still return the exact float32 top-k of the stored rows.
    monkeypatch.setattr(search_module, "SHORTLIST_MIN_WIDTH", 8)
    base = _normalised(1, 64, seed=4)
    generator = torch.Generator().manual_seed(5)
    near_copies = base + 3e-3 * torch.randn(300, 64, generator=generator)
    gallery = torch.cat([_normalised(5000, 64, seed=6), near_copies])
    index = GalleryIndex(gallery, dtype=dtype)
    queries = torch.cat([base, base + 1e-3 * torch.randn(3, 64, generator=generator)])
    result = index.search(queries, top_k=20)
    exact_scores, _ = (torch.nn.functional.normalize(queries, dim=1) @ index.embeddings.float().T).topk(20, dim=1)
    torch.testing.assert_close(result.scores, exact_scores, rtol=0, atol=1e-6)
    assert bool((result.positions >= 5000).all())


def test_top_k_larger_than_gallery_is_clamped_and_hits_carry_metadata():
    index = GalleryIndex(_normalised(4, 8), ids=["a", "b", "c", "d"], metadata=[{"colour": c} for c in "rgbk"])
    result = index.search(torch.randn(2, 8), top_k=100)
    assert result.positions.shape == (2, 4)
    hits = index.hits(result)
    assert [len(row) for row in hits] == [4, 4]
    assert sorted(hit["id"] for hit in hits[0]) == ["a", "b", "c", "d"]
    for hit in hits[0]:
        assert hit["colour"] == "rgbk"[["a", "b", "c", "d"].index(hit["id"])]
    assert hits[0][0]["score"] >= hits[0][-1]["score"]


def test_search_input_errors_name_the_field():
    index = GalleryIndex(_normalised(10, 8))
    with pytest.raises(ValueError, match=r"query_embeds: expected shape \(Q, 8\), got \(2, 5\)"):
        index.search(torch.randn(2, 5))
    with pytest.raises(ValueError, match="top_k"):
        index.search(torch.randn(8), top_k=0)
    with pytest.raises(ValueError, match="backend"):
        index.search(torch.randn(8), backend="annoy")
    with pytest.raises(ValueError, match="no faiss index"):
        index.search(torch.randn(8), backend="faiss")


def test_construction_errors():
    with pytest.raises(ValueError, match="empty"):
        GalleryIndex(torch.zeros(0, 8))
    with pytest.raises(ValueError, match="2-D"):
        GalleryIndex(torch.randn(8))
    with pytest.raises(ValueError, match="row 1 has a zero"):
        GalleryIndex(torch.stack([torch.ones(4), torch.zeros(4)]))
    with pytest.raises(ValueError, match="expected 3 ids"):
        GalleryIndex(_normalised(3, 4), ids=["a", "b"])
    with pytest.raises(ValueError, match="'a' appears more than once"):
        GalleryIndex(_normalised(3, 4), ids=["a", "b", "a"])
    with pytest.raises(ValueError, match=r"ids\[1\]: expected a str or int, got float"):
        GalleryIndex(_normalised(3, 4), ids=[1, 2.5, 3])
    with pytest.raises(ValueError, match=r"metadata\[0\]: keys \['score'\] are reserved"):
        GalleryIndex(_normalised(1, 4), metadata=[{"score": 1}])
    with pytest.raises(ValueError, match="dtype"):
        GalleryIndex(_normalised(1, 4), dtype="int8")
    with pytest.raises(ValueError, match="embed_dim=8 but the embeddings have D=4"):
        GalleryIndex(_normalised(2, 4), model_identity={"embed_dim": 8})


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_save_load_round_trip(tmp_path, dtype):
    identity = {"model_type": "csmcir", "embed_dim": 16, "config_hash": "abc", "weights_fingerprint": "def"}
    ids = ["x0", 7, "x2", "x3", "x4"]
    metadata = [{"caption": f"item {i}", "tags": ["t", i]} for i in range(5)]
    index = GalleryIndex(_normalised(5, 16), ids=ids, metadata=metadata, model_identity=identity, dtype=dtype)
    queries = torch.randn(3, 16)
    before = index.search(queries, top_k=3)
    index.save(tmp_path / "gallery")

    loaded = GalleryIndex.load(tmp_path / "gallery")
    assert loaded.ids == ids and loaded.metadata == metadata and loaded.model_identity == identity
    assert loaded.dtype == index.dtype
    assert torch.equal(loaded.embeddings, index.embeddings)
    after = loaded.search(queries, top_k=3)
    assert torch.equal(after.positions, before.positions) and torch.equal(after.scores, before.scores)
    assert sorted(os.listdir(tmp_path / "gallery")) == ["gallery_embeddings.safetensors", "gallery_index.json"]


def test_failed_save_keeps_the_previous_index_and_leaves_no_temp_files(tmp_path, monkeypatch):
    GalleryIndex(_normalised(3, 4, seed=0), ids=["old0", "old1", "old2"]).save(tmp_path)

    def broken_write_embeddings(filename, shape, dtype, blocks):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(gallery_module, "write_embeddings", broken_write_embeddings)
    with pytest.raises(OSError, match="disk full"):
        GalleryIndex(_normalised(6, 4, seed=1)).save(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["gallery_embeddings.safetensors", "gallery_index.json"]
    assert GalleryIndex.load(tmp_path).ids == ["old0", "old1", "old2"]


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="gallery_index.json' not found"):
        GalleryIndex.load(tmp_path)
    GalleryIndex(_normalised(3, 4)).save(tmp_path)
    json_path = tmp_path / "gallery_index.json"
    record = json.loads(json_path.read_text())
    json_path.write_text(json.dumps({**record, "num_items": 4}))
    with pytest.raises(ValueError, match=r"holds shape \(3, 4\) but .* says \(4, 4\)"):
        GalleryIndex.load(tmp_path)
    json_path.write_text("{not json")
    with pytest.raises(ValueError, match="gallery_index.json' is not valid JSON"):
        GalleryIndex.load(tmp_path)


def test_save_rejects_non_json_metadata(tmp_path):
    index = GalleryIndex(_normalised(1, 4), metadata=[{"blob": object()}])
    with pytest.raises(ValueError, match="JSON-serialisable"):
        index.save(tmp_path)


def test_faiss_flat_returns_the_same_top_k_as_torch(tmp_path):
    pytest.importorskip("faiss")
    gallery, queries = _normalised(2000, 32, seed=4), torch.randn(9, 32)
    index = GalleryIndex(gallery)
    exact = index.search(queries, top_k=10, backend="torch")
    index.build_faiss("flat")
    assert index.backend == "faiss"
    flat = index.search(queries, top_k=10)
    assert torch.equal(flat.positions, exact.positions)
    torch.testing.assert_close(flat.scores, exact.scores, rtol=0, atol=1e-5)
    index.save(tmp_path)
    reloaded = GalleryIndex.load(tmp_path)
    assert reloaded.backend == "faiss" and reloaded.faiss_config == {"kind": "flat"}
    assert torch.equal(reloaded.search(queries, top_k=10).positions, exact.positions)


def _recall_at_k(approximate: SearchResult, exact: SearchResult) -> float:
    found = [len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approximate.positions, exact.positions)]
    return sum(found) / exact.positions.numel()


@pytest.mark.parametrize(("kind", "params", "low_params"), [
    ("ivf", {"nlist": 32, "nprobe": 8}, {"nprobe": 1}),
    ("hnsw", {"hnsw_m": 16, "ef_search": 64}, {"ef_search": 10}),
])
def test_approximate_faiss_recall_against_exact(tmp_path, kind, params, low_params):
    pytest.importorskip("faiss")
    gallery = _clustered(4000, 32, clusters=64, seed=5)
    queries = _clustered(50, 32, clusters=64, seed=6)
    index = GalleryIndex(gallery)
    exact = index.search(queries, top_k=10, backend="torch")
    index.build_faiss(kind, **params)
    recall = _recall_at_k(index.search(queries, top_k=10), exact)
    assert recall >= 0.9, recall
    index.save(tmp_path)
    reloaded = GalleryIndex.load(tmp_path)
    assert reloaded.faiss_config["kind"] == kind
    assert torch.equal(reloaded.search(queries, top_k=10).positions, index.search(queries, top_k=10).positions)
    # The speed knob does trade recall: the narrowest search finds less.
    index.set_faiss_search_params(**low_params)
    assert _recall_at_k(index.search(queries, top_k=10), exact) < recall


def test_hits_skip_missing_approximate_candidates():
    index = GalleryIndex(_normalised(3, 4), ids=["a", "b", "c"])
    result = SearchResult(scores=torch.tensor([[0.9, 0.5, -3.4e38]]), positions=torch.tensor([[2, 0, -1]]))
    assert index.hits(result) == [[{"id": "c", "score": pytest.approx(0.9)}, {"id": "a", "score": 0.5}]]


def test_compatibility_errors_name_both_models():
    built = {"name_or_path": "org/model-a", "embed_dim": 16, "config_hash": "aaa", "weights_fingerprint": "111"}
    index = GalleryIndex(_normalised(3, 16), model_identity=built)
    index.check_compatible(dict(built))
    with pytest.raises(ValueError, match=r"embedding size mismatch.*org/model-a \(embed_dim=16.*org/model-b \(embed_dim=32"):
        index.check_compatible({**built, "name_or_path": "org/model-b", "embed_dim": 32})
    other_weights = {**built, "name_or_path": "org/model-c", "weights_fingerprint": "222"}
    with pytest.raises(ValueError, match=r"weights_fingerprint differs.*org/model-a.*org/model-c"):
        index.check_compatible(other_weights)
    index.check_compatible(other_weights, check_model=False)
    with pytest.raises(ValueError, match="config_hash differs"):
        index.check_compatible({**built, "config_hash": "bbb"})
    with pytest.raises(ValueError, match="embedding size mismatch"):
        index.check_compatible({**built, "embed_dim": 8}, check_model=False)


def test_model_identity_tracks_config_and_weights(tmp_path):
    config = BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=50)
    config.save_pretrained(tmp_path)
    reloaded_config = BertConfig.from_pretrained(tmp_path)
    assert config_hash(reloaded_config) == config_hash(config)
    assert config_hash(BertConfig(**{**config.to_dict(), "hidden_dropout_prob": 0.3})) != config_hash(config)

    model = torch.nn.Linear(8, 4)
    model.config = config
    first = model_identity(model, embed_dim=4)
    assert first == model_identity(model, embed_dim=4)
    assert first["embed_dim"] == 4 and first["config_hash"] == config_hash(config)
    with torch.no_grad():
        model.weight[3, 7] += 1e-3
    assert weights_fingerprint(model) != first["weights_fingerprint"]


def test_hub_files_do_not_require_faiss_or_the_package():
    # transformers' check_imports refuses a remote-code folder whose files import something not installed;
    # imports inside `try` are exempt, which is how faiss stays optional for a saved pipeline.
    from transformers.dynamic_module_utils import get_imports, get_relative_imports

    from pipelines import composed_image_retrieval, hub_code, product_summarization

    from pipelines import gallery_on_disk

    allowed = {"__future__", "collections", "contextlib", "ctypes", "dataclasses", "hashlib", "itertools", "json",
               "math", "mmap", "os", "shutil", "struct", "sys", "tempfile", "typing",
               "numpy", "torch", "safetensors", "transformers", "PIL"}
    for module in (gallery_module, gallery_on_disk, search_module, composed_image_retrieval, hub_code,
                   product_summarization):
        assert set(get_imports(module.__file__)) <= allowed, get_imports(module.__file__)
    assert sorted(get_relative_imports(composed_image_retrieval.__file__)) == ["gallery_index", "hub_code"]
    assert get_relative_imports(product_summarization.__file__) == ["hub_code"]
    assert get_relative_imports(hub_code.__file__) == []
    assert sorted(get_relative_imports(gallery_module.__file__)) == ["exact_search", "gallery_on_disk"]
    assert get_relative_imports(gallery_on_disk.__file__) == []
    assert get_relative_imports(search_module.__file__) == []


def test_weights_fingerprint_works_for_tensors_beyond_float32_exact_integers():
    # 30522 x 768 (BERT-uncased word embeddings, BLIP-2's Q-Former vocabulary) has more than 2^24 elements.
    model = torch.nn.Embedding(30522, 768)
    first = weights_fingerprint(model)
    with torch.no_grad():
        model.weight[-1, -1] += 1.0  # the last element is among the sampled positions
    assert weights_fingerprint(model) != first


def test_search_with_top_k_above_the_block_height_is_exact(monkeypatch):
    monkeypatch.setattr(search_module, "SCORE_BLOCK_ELEMENTS", 1)  # 1024-row blocks, fewer rows than top_k
    gallery, queries = _normalised(3000, 8, seed=3), torch.randn(2, 8)
    result = GalleryIndex(gallery).search(queries, top_k=2500)
    expected_scores, _ = _brute_force(gallery, queries, 2500)
    assert result.positions.shape == (2, 2500)
    torch.testing.assert_close(result.scores, expected_scores, rtol=0, atol=1e-5)


def test_load_refuses_embeddings_from_another_save_of_the_same_shape(tmp_path):
    GalleryIndex(_normalised(3, 4, seed=0), ids=["a", "b", "c"]).save(tmp_path / "first")
    GalleryIndex(_normalised(3, 4, seed=1), ids=["x", "y", "z"]).save(tmp_path / "second")
    # what a re-save interrupted between replacing the embeddings and replacing the JSON leaves behind
    os.replace(tmp_path / "second" / "gallery_embeddings.safetensors", tmp_path / "first" / "gallery_embeddings.safetensors")
    with pytest.raises(ValueError, match="come from different saves"):
        GalleryIndex.load(tmp_path / "first")
