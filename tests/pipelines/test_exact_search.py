"""`pipelines.exact_search`: the exact top-k kernel against an independent brute-force reference.

The reference scores every (query, row) pair in float64 from the stored values and sorts them; the kernel must
return the same scores (float32 rounding only) and, for every hit, a row whose reference score is that score, with
no row listed twice. That is the definition of an exact top-k that stays well defined under ties. Block sizes are
forced small (many block boundaries, a short last block, top_k larger than a block) so the running top-k, the
threshold pruning and the half-precision shortlist are all exercised.
"""

from __future__ import annotations

import pytest
import torch

from pipelines import exact_search as search_module
from pipelines.exact_search import block_rows, exact_search


def _reference(gallery: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """`(Q, N)` float64 scores: q · g (max over tokens for `(N, K, D)` rows), from the stored values."""
    stored = gallery.double()
    q = queries.double()
    if stored.ndim == 3:
        return torch.einsum("qd,nkd->qnk", q, stored).amax(dim=2)
    return q @ stored.T


def _assert_exact(gallery, queries, top_k, scores, positions, atol=1e-5):
    reference = _reference(gallery, queries)
    expected = reference.sort(dim=1, descending=True).values[:, :top_k]
    assert scores.shape == positions.shape == (queries.shape[0], top_k)
    assert positions.dtype == torch.int64 and scores.dtype == torch.float32
    torch.testing.assert_close(scores.double(), expected, rtol=0, atol=atol)
    # every hit is a real row whose reference score is the score returned, listed once
    assert bool(((positions >= 0) & (positions < gallery.shape[0])).all())
    torch.testing.assert_close(reference.gather(1, positions), expected, rtol=0, atol=atol)
    for row in positions.tolist():
        assert len(set(row)) == len(row)
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())


def _unit(shape, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(*shape, generator=generator), dim=-1)


@pytest.mark.parametrize("budget", [1, 3000, 1 << 14, 1 << 22])
@pytest.mark.parametrize("num_queries", [1, 5, 64])
def test_float32_equals_brute_force_at_many_block_sizes(monkeypatch, budget, num_queries):
    # budget 1 -> 1024-row blocks; 3000 with 64 queries -> also 1024; 2^14 / 5 queries -> 3276 rows (a short last
    # block); 2^22 -> one block.
    monkeypatch.setattr(search_module, "SCORE_BLOCK_ELEMENTS", budget)
    gallery, queries = _unit((5000, 24), seed=1), _unit((num_queries, 24), seed=2)
    scores, positions = exact_search(gallery, queries, 10)
    _assert_exact(gallery, queries, 10, scores, positions)


def test_pruning_skips_blocks_and_stays_exact(monkeypatch):
    # Queries equal to late rows: the best hit sits in the last block, after the threshold is already high.
    monkeypatch.setattr(search_module, "SCORE_BLOCK_ELEMENTS", 1)  # 1024-row blocks
    gallery = _unit((6000, 16), seed=3)
    queries = gallery[[5999, 4100, 17, 3000]].clone()
    scores, positions = exact_search(gallery, queries, 7)
    _assert_exact(gallery, queries, 7, scores, positions)
    assert positions[:, 0].tolist() == [5999, 4100, 17, 3000]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_top_k_larger_than_a_block(monkeypatch, dtype):
    monkeypatch.setattr(search_module, "SCORE_BLOCK_ELEMENTS", 1)  # 1024-row blocks < top_k
    gallery, queries = _unit((3100, 8), seed=4).to(dtype), _unit((3, 8), seed=5)
    assert block_rows(3, None) == 1024
    scores, positions = exact_search(gallery, queries, 2500)
    _assert_exact(gallery, queries, 2500, scores, positions)
    scores, positions = exact_search(gallery, queries, 3100)  # every row
    _assert_exact(gallery, queries, 3100, scores, positions)


@pytest.mark.parametrize("num_queries", [9, search_module.UPCAST_MIN_QUERIES])  # half shortlist / float32 up-cast
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("budget", [1, 1 << 22])
def test_half_storage_is_exact_with_respect_to_the_stored_values(monkeypatch, dtype, budget, num_queries):
    monkeypatch.setattr(search_module, "SCORE_BLOCK_ELEMENTS", budget)
    gallery, queries = _unit((4500, 32), seed=6).to(dtype), _unit((num_queries, 32), seed=7)
    # near-duplicates closer than the half rounding: only the float32 rescoring orders them
    gallery[4400] = (queries[0] + 1e-3 * gallery[4400].float()).to(dtype)
    gallery[100] = queries[0].to(dtype)
    scores, positions = exact_search(gallery, queries, 10)
    _assert_exact(gallery, queries, 10, scores, positions)


@pytest.mark.parametrize("num_queries", [7, search_module.UPCAST_MIN_QUERIES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("budget", [1, 7 * 6 * 40, 1 << 22])
def test_token_level_rows_score_the_maximum_over_tokens(monkeypatch, dtype, budget, num_queries):
    monkeypatch.setattr(search_module, "SCORE_BLOCK_ELEMENTS", budget)  # 1024 // 6 = 170 items, 40 items, one block
    gallery, queries = _unit((700, 6, 16), seed=8).to(dtype), _unit((num_queries, 16), seed=9)
    scores, positions = exact_search(gallery, queries, 12)
    _assert_exact(gallery, queries, 12, scores, positions)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_ties_across_block_boundaries(monkeypatch, dtype):
    # 40 copies of each of 50 vectors, spread over every block: each query's top-10 is made of exact ties, and the
    # k-th score ties rows in later blocks (the strict threshold must neither drop nor duplicate them).
    monkeypatch.setattr(search_module, "SCORE_BLOCK_ELEMENTS", 1)
    base = _unit((50, 12), seed=10)
    gallery = base.repeat(40, 1).to(dtype)  # rows i and i + 50 are equal
    queries = torch.cat([base[:3], _unit((2, 12), seed=11)])
    scores, positions = exact_search(gallery, queries, 10)
    _assert_exact(gallery, queries, 10, scores, positions)
    # the first three queries' hits are all copies of themselves
    assert bool(((positions[:3] % 50) == torch.arange(3).unsqueeze(1)).all())


def test_identical_rows_everywhere_and_top_k_equal_to_the_gallery(monkeypatch):
    monkeypatch.setattr(search_module, "SCORE_BLOCK_ELEMENTS", 1)
    gallery = _unit((1, 8), seed=12).repeat(2100, 1)
    queries = _unit((4, 8), seed=13)
    scores, positions = exact_search(gallery, queries, 2100)
    _assert_exact(gallery, queries, 2100, scores, positions)
    assert sorted(positions[0].tolist()) == list(range(2100))


def test_block_rows_follow_the_budget():
    assert block_rows(1, None) == search_module.SCORE_BLOCK_ELEMENTS
    assert block_rows(1024, None) == search_module.SCORE_BLOCK_ELEMENTS // 1024
    assert block_rows(1 << 30, None) == 1024  # never below 1024 rows
    assert block_rows(4, 32) == search_module.SCORE_BLOCK_ELEMENTS // 128
