"""Token-level galleries `(N, K, D)`: every item keeps K unit token features and scores max_k q·g_k (SPRC's scoring).

Checked against brute force written here, through every path an index has: exact torch search (blocked, float32 and
half storage), the full similarity matrix, faiss (token vectors searched, items rescored exactly), save/load.
"""

from __future__ import annotations

import pytest
import torch

from pipelines import exact_search as search_module
from pipelines.gallery_index import GalleryIndex


def _tokens(items: int, tokens: int, dim: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(items, tokens, dim, generator=generator), dim=-1)


def _brute_force(queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    queries = torch.nn.functional.normalize(queries, dim=-1)
    return torch.einsum("qd,nkd->qnk", queries, gallery.float()).amax(dim=2)


def test_token_search_equals_brute_force_max_over_tokens(monkeypatch):
    gallery, queries = _tokens(300, 5, 16), torch.randn(7, 16)
    monkeypatch.setattr(search_module, "SCORE_BLOCK_ELEMENTS", 7 * 5 * 40)  # 40 items per block: many blocks
    index = GalleryIndex(gallery)
    assert index.tokens_per_item == 5 and index.embed_dim == 16 and len(index) == 300
    result = index.search(queries, top_k=10)
    expected_scores, expected_positions = _brute_force(queries, gallery).topk(10, dim=1)
    assert torch.equal(result.positions, expected_positions)
    assert torch.allclose(result.scores, expected_scores, atol=1e-6)
    assert torch.allclose(index.similarities(queries), _brute_force(queries, gallery), atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_token_storage_scores_the_stored_tokens_exactly(dtype):
    gallery, queries = _tokens(120, 4, 32, seed=1), torch.randn(3, 32)
    index = GalleryIndex(gallery, dtype=dtype)
    stored = index.embeddings.float()
    result = index.search(queries, top_k=8)
    expected_scores, expected_positions = _brute_force(queries, stored).topk(8, dim=1)
    assert torch.equal(result.positions, expected_positions)
    assert torch.allclose(result.scores, expected_scores, atol=1e-6)


def test_token_gallery_rows_are_normalised_per_token_and_bad_tokens_named():
    raw = torch.randn(4, 3, 8) * 5
    index = GalleryIndex(raw)
    assert torch.allclose(index.embeddings.norm(dim=-1), torch.ones(4, 3), atol=1e-6)
    raw[2, 1] = 0.0
    with pytest.raises(ValueError, match="row 2 has a zero or non-finite norm"):
        GalleryIndex(raw)
    with pytest.raises(ValueError, match=r"\(N, K, D\)"):
        GalleryIndex(torch.randn(2, 3, 4, 5))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_token_gallery_save_load_round_trip(tmp_path, dtype):
    gallery = _tokens(20, 6, 8, seed=2)
    index = GalleryIndex(gallery, ids=[f"img{i}" for i in range(20)], dtype=dtype)
    index.save(tmp_path / "index")
    loaded = GalleryIndex.load(tmp_path / "index")
    assert loaded.tokens_per_item == 6 and loaded.ids == index.ids and torch.equal(loaded.embeddings, index.embeddings)
    queries = torch.randn(2, 8)
    assert torch.equal(loaded.search(queries, top_k=5).positions, index.search(queries, top_k=5).positions)


def test_faiss_flat_over_tokens_equals_exact_search(tmp_path):
    pytest.importorskip("faiss")
    gallery, queries = _tokens(500, 4, 16, seed=3), torch.randn(6, 16)
    exact = GalleryIndex(gallery).search(queries, top_k=10)
    index = GalleryIndex(gallery).build_faiss("flat")
    result = index.search(queries, top_k=10)
    assert torch.equal(result.positions, exact.positions)
    assert torch.allclose(result.scores, exact.scores, atol=1e-5)
    index.save(tmp_path / "index")
    reloaded = GalleryIndex.load(tmp_path / "index")
    assert reloaded.backend == "faiss" and torch.equal(reloaded.search(queries, top_k=10).positions, exact.positions)
