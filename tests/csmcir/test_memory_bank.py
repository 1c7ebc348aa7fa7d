"""Specification tests for ``modeling_csmcir.memory_bank.MemoryBank``: masking, entropy -> k, age weighting,
eviction, replacement by id, ring wrap-around, state round trip, non-finite rejection."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from modeling_csmcir.memory_bank import MemoryBank


def unit(n: int, d: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=generator), dim=-1)


def test_enqueue_stores_normalised_entries_with_ids_and_steps():
    bank = MemoryBank(capacity=8, dim=4, strategy="fifo", age_decay=None, max_age=None)
    written = bank.enqueue(3.0 * unit(3, 4), torch.tensor([10, 11, 12]), step=5)
    assert written == 3 and len(bank) == 3 and bank.pointer == 3
    torch.testing.assert_close(bank.embeddings[:3].norm(dim=-1), torch.ones(3))
    assert bank.target_ids.tolist() == [10, 11, 12, -1, -1, -1, -1, -1]
    assert bank.steps[:3].tolist() == [5, 5, 5]


def test_ring_wraps_around_and_overwrites_oldest():
    bank = MemoryBank(capacity=5, dim=4, strategy="fifo", age_decay=None, max_age=None)
    bank.enqueue(unit(3, 4, 1), torch.tensor([0, 1, 2]), step=0)
    bank.enqueue(unit(3, 4, 2), torch.tensor([3, 4, 5]), step=1)
    # 6 entries into 5 slots: slot 0 (id 0, the oldest) was overwritten by id 5.
    assert bank.pointer == 1
    assert bank.target_ids.tolist() == [5, 1, 2, 3, 4]
    assert bank.steps.tolist() == [1, 0, 0, 1, 1]
    # More rows than capacity: only the last `capacity` rows are kept.
    bank.enqueue(unit(7, 4, 3), torch.arange(100, 107), step=2)
    assert sorted(bank.target_ids.tolist()) == [102, 103, 104, 105, 106]


def test_reencoding_a_target_replaces_its_stale_entry():
    bank = MemoryBank(capacity=6, dim=4, strategy="fifo", age_decay=None, max_age=None)
    old = unit(3, 4, 1)
    bank.enqueue(old, torch.tensor([7, 8, 9]), step=0)
    new = unit(2, 4, 2)
    bank.enqueue(new, torch.tensor([8, 20]), step=3)
    ids = bank.target_ids.tolist()
    assert ids.count(8) == 1 and len(bank) == 4
    slot = ids.index(8)
    torch.testing.assert_close(bank.embeddings[slot], new[0])
    assert int(bank.steps[slot]) == 3
    # A duplicate id inside one batch keeps its last row.
    dup = unit(2, 4, 3)
    bank.enqueue(dup, torch.tensor([30, 30]), step=4)
    assert bank.target_ids.tolist().count(30) == 1
    torch.testing.assert_close(bank.embeddings[bank.target_ids.tolist().index(30)], dup[1])


def test_entries_past_max_age_are_evicted_and_never_served():
    bank = MemoryBank(capacity=8, dim=4, strategy="fifo", age_decay=None, max_age=3)
    bank.enqueue(unit(2, 4, 1), torch.tensor([0, 1]), step=0)
    bank.enqueue(unit(2, 4, 2), torch.tensor([2, 3]), step=2)
    query = unit(1, 4, 9)
    logits = bank.negative_logits(query, 1.0, torch.tensor([99]), step=4)
    # At step 4, ids 0/1 have age 4 > 3: masked even before an explicit eviction.
    assert torch.isinf(logits[0, :2]).all() and torch.isfinite(logits[0, 2:4]).all()
    assert bank.evict(step=4) == 2
    assert sorted(bank.target_ids[bank.occupied].tolist()) == [2, 3]
    # Enqueueing also evicts.
    bank.enqueue(unit(1, 4, 3), torch.tensor([4]), step=6)
    assert sorted(bank.target_ids[bank.occupied].tolist()) == [4]


def test_positive_target_id_is_masked_as_false_negative():
    bank = MemoryBank(capacity=4, dim=4, strategy="fifo", age_decay=None, max_age=None)
    entries = unit(3, 4, 1)
    bank.enqueue(entries, torch.tensor([5, 6, 7]), step=0)
    queries = entries[:2].clone()  # query i is identical to its own positive's entry
    logits = bank.negative_logits(queries, 10.0, torch.tensor([5, 7]), step=0)
    assert logits.shape == (2, 4)
    assert math.isinf(logits[0, 0]) and math.isinf(logits[1, 2])  # own positive masked
    assert math.isinf(logits[0, 3]) and math.isinf(logits[1, 3])  # empty slot masked
    torch.testing.assert_close(logits[0, 1:3], 10.0 * entries[1:3] @ entries[0])
    torch.testing.assert_close(logits[1, :2], 10.0 * entries[:2] @ entries[1])


def test_age_weighting_adds_minus_age_over_decay():
    bank = MemoryBank(capacity=4, dim=4, strategy="fifo", age_decay=10.0, max_age=None)
    entries = unit(2, 4, 1)
    bank.enqueue(entries[:1], torch.tensor([0]), step=0)
    bank.enqueue(entries[1:], torch.tensor([1]), step=15)
    query = unit(1, 4, 2)
    logits = bank.negative_logits(query, 2.0, torch.tensor([9]), step=20)
    expected = 2.0 * entries @ query[0] - torch.tensor([20.0, 5.0]) / 10.0
    torch.testing.assert_close(logits[0, :2], expected)


def test_entropy_maps_uniform_similarities_to_k_max_and_peaked_to_k_min():
    dim, n = 8, 64
    bank = MemoryBank(capacity=n, dim=dim, strategy="entropy", k_min=2, k_max=40, age_decay=None, max_age=None)
    # All entries identical: the softmax over the bank is uniform, H = 1 -> k = k_max.
    same = F.normalize(torch.ones(n, dim), dim=-1)
    bank.enqueue(same, torch.arange(n), step=0)
    query = unit(1, dim, 3)
    logits = bank.negative_logits(query, 100.0, torch.tensor([-1]), step=0)
    assert int(torch.isfinite(logits).sum()) == 40
    assert bank.last_selection.mean_k == 40 and bank.last_selection.mean_entropy == pytest.approx(1.0, abs=1e-5)

    # One entry equals the query, the rest are orthogonal; a large scale makes p one-hot: H ~ 0 -> k = k_min.
    peaked = torch.zeros(n, dim)
    peaked[0, 0] = 1.0
    peaked[1:, 1] = 1.0
    bank = MemoryBank(capacity=n, dim=dim, strategy="entropy", k_min=2, k_max=40, age_decay=None, max_age=None)
    bank.enqueue(peaked, torch.arange(n), step=0)
    query = torch.zeros(1, dim)
    query[0, 0] = 1.0
    logits = bank.negative_logits(query, 100.0, torch.tensor([-1]), step=0)
    selected = torch.isfinite(logits[0]).nonzero().flatten().tolist()
    assert len(selected) == 2 and 0 in selected  # the hardest entry is always kept
    assert bank.last_selection.mean_entropy < 1e-3


def test_entropy_k_is_clamped_to_the_number_of_candidates():
    bank = MemoryBank(capacity=16, dim=4, strategy="entropy", k_min=8, k_max=12, age_decay=None, max_age=None)
    bank.enqueue(unit(3, 4, 1), torch.tensor([0, 1, 2]), step=0)
    logits = bank.negative_logits(unit(2, 4, 2), 1.0, torch.tensor([0, 5]), step=0)
    assert torch.isfinite(logits).sum(dim=1).tolist() == [2, 3]
    k, h = bank.entropy_k(torch.zeros(1, 16), torch.zeros(1, 16, dtype=torch.bool))
    assert k.tolist() == [0] and h.tolist() == [0.0]


def test_hard_strategy_keeps_the_top_k_most_similar():
    bank = MemoryBank(capacity=10, dim=6, strategy="hard", k_min=0, k_max=3, age_decay=None, max_age=None)
    entries = unit(10, 6, 4)
    bank.enqueue(entries, torch.arange(10), step=0)
    query = unit(1, 6, 5)
    logits = bank.negative_logits(query, 5.0, torch.tensor([-1]), step=0)
    expected = torch.topk(entries @ query[0], 3).indices.sort().values
    assert torch.isfinite(logits[0]).nonzero().flatten().tolist() == expected.tolist()


def test_none_strategy_and_warm_up_serve_nothing():
    none = MemoryBank(capacity=4, dim=4, strategy="none")
    none.enqueue(unit(2, 4), torch.tensor([0, 1]), step=0)
    assert none.negative_logits(unit(1, 4), 1.0, torch.tensor([5]), step=10) is None
    warm = MemoryBank(capacity=4, dim=4, strategy="fifo", start_step=5)
    warm.enqueue(unit(2, 4), torch.tensor([0, 1]), step=0)
    assert warm.negative_logits(unit(1, 4), 1.0, torch.tensor([5]), step=4) is None
    assert warm.negative_logits(unit(1, 4), 1.0, torch.tensor([5]), step=5) is not None
    assert MemoryBank(capacity=4, dim=4).negative_logits(unit(1, 4), 1.0, None, step=0) is None  # empty


def test_gradient_flows_to_queries_only_through_selected_entries():
    bank = MemoryBank(capacity=8, dim=4, strategy="hard", k_min=0, k_max=2, age_decay=None, max_age=None)
    bank.enqueue(unit(8, 4, 1), torch.arange(8), step=0)
    query = unit(1, 4, 2).requires_grad_(True)
    logits = bank.negative_logits(query, 3.0, torch.tensor([-1]), step=0)
    logits[torch.isfinite(logits)].sum().backward()
    selected = torch.isfinite(logits[0])
    torch.testing.assert_close(query.grad[0], 3.0 * bank.embeddings[selected].sum(dim=0))


def test_non_finite_embeddings_are_rejected_with_a_warning(caplog):
    bank = MemoryBank(capacity=4, dim=4, strategy="fifo")
    batch = unit(3, 4)
    batch[1, 2] = float("nan")
    batch[2, 0] = float("inf")
    from transformers.utils import logging as hf_logging

    hf_logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            written = bank.enqueue(batch, torch.tensor([0, 1, 2]), step=0)
    finally:
        hf_logging.disable_propagation()
    assert written == 1 and bank.target_ids[bank.occupied].tolist() == [0]
    assert bank.num_rejected == 2
    assert "non-finite" in caplog.text
    assert torch.isfinite(bank.embeddings).all()


def test_oldest_slots_and_refresh_restamp_entries():
    bank = MemoryBank(capacity=6, dim=4, strategy="fifo", age_decay=None, max_age=None)
    bank.enqueue(unit(2, 4, 1), torch.tensor([0, 1]), step=0)
    bank.enqueue(unit(2, 4, 2), torch.tensor([2, 3]), step=4)
    bank.enqueue(unit(1, 4, 3), torch.tensor([4]), step=2)
    slots = bank.oldest_slots(3)
    assert bank.target_ids[slots].tolist() == [0, 1, 4]
    fresh = unit(3, 4, 7)
    assert bank.refresh(slots, fresh, step=9) == 3
    torch.testing.assert_close(bank.embeddings[slots], fresh)
    assert bank.steps[slots].tolist() == [9, 9, 9] and bank.target_ids[slots].tolist() == [0, 1, 4]


def test_stats_report_size_age_and_k():
    bank = MemoryBank(capacity=10, dim=4, strategy="hard", k_min=0, k_max=2, age_decay=None, max_age=None)
    bank.enqueue(unit(2, 4, 1), torch.tensor([0, 1]), step=0)
    bank.enqueue(unit(2, 4, 2), torch.tensor([2, 3]), step=4)
    bank.negative_logits(unit(3, 4, 3), 1.0, torch.tensor([0, 9, 9]), step=6)
    stats = bank.stats(step=6)
    assert stats["bank_size"] == 4 and stats["bank_fill"] == 0.4
    assert stats["bank_mean_age"] == pytest.approx((6 + 6 + 2 + 2) / 4)
    assert stats["bank_mean_k"] == 2.0


def test_state_dict_round_trip_restores_everything():
    bank = MemoryBank(capacity=5, dim=4, strategy="entropy", k_min=1, k_max=4)
    bank.enqueue(unit(4, 4, 1), torch.tensor([0, 1, 2, 3]), step=1)
    bank.enqueue(unit(3, 4, 2), torch.tensor([2, 7, 8]), step=2)
    state = bank.state_dict()
    restored = MemoryBank(capacity=5, dim=4, strategy="entropy", k_min=1, k_max=4)
    restored.load_state_dict(state)
    for key in ("embeddings", "target_ids", "steps"):
        assert torch.equal(getattr(restored, key), getattr(bank, key))
    assert restored.pointer == bank.pointer and restored.num_enqueued == bank.num_enqueued
    query = unit(2, 4, 5)
    torch.testing.assert_close(
        restored.negative_logits(query, 7.0, torch.tensor([1, 8]), step=3),
        bank.negative_logits(query, 7.0, torch.tensor([1, 8]), step=3),
    )
    # The saved tensors are safetensors-compatible.
    from safetensors.torch import load, save

    again = MemoryBank(capacity=5, dim=4)
    again.load_state_dict(load(save(state)))
    assert torch.equal(again.target_ids, bank.target_ids)


def test_load_state_dict_refuses_wrong_dimension_or_capacity():
    state = MemoryBank(capacity=5, dim=4).state_dict()
    with pytest.raises(ValueError, match="embedding dimension 4.*is 8"):
        MemoryBank(capacity=5, dim=8).load_state_dict(state)
    with pytest.raises(ValueError, match="capacity 5.*capacity 6"):
        MemoryBank(capacity=6, dim=4).load_state_dict(state)
    with pytest.raises(ValueError, match="missing keys"):
        MemoryBank(capacity=5, dim=4).load_state_dict({"embeddings": state["embeddings"]})


def test_constructor_and_enqueue_validate_their_inputs():
    with pytest.raises(ValueError, match="strategy"):
        MemoryBank(capacity=4, dim=4, strategy="random")
    with pytest.raises(ValueError, match="k_min"):
        MemoryBank(capacity=4, dim=4, k_min=5, k_max=2)
    bank = MemoryBank(capacity=4, dim=4)
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        bank.enqueue(torch.zeros(2, 3), torch.tensor([0, 1]), step=0)
    with pytest.raises(ValueError, match="non-negative"):
        bank.enqueue(unit(1, 4), torch.tensor([-3]), step=0)


def test_exclude_ids_mask_further_entries_per_query():
    bank = MemoryBank(capacity=4, dim=4, strategy="fifo", age_decay=None, max_age=None)
    bank.enqueue(unit(4, 4, 1), torch.tensor([10, 11, 12, 13]), step=0)
    # Query 0 excludes its reference (id 12); query 1 excludes ids 10 and 13 (-1 pads).
    exclude = torch.tensor([[12, -1], [10, 13]])
    logits = bank.negative_logits(unit(2, 4, 2), 1.0, torch.tensor([11, 99]), step=0, exclude_ids=exclude)
    assert torch.isfinite(logits).tolist() == [[True, False, False, True], [False, True, True, False]]


def test_bank_weight_adds_log_weight_without_changing_the_selection():
    # Regression (from-scratch collapse): a weight < 1 softens every bank negative by the same factor, so the
    # served entries and their k are those of the unweighted bank, only each counts as `weight` of a negative.
    entries, query = unit(6, 8, 3), unit(2, 8, 4)
    logits = {}
    for weight in (1.0, 0.25):
        bank = MemoryBank(capacity=8, dim=8, strategy="entropy", k_min=1, k_max=4, age_decay=None, max_age=None,
                          weight=weight)
        bank.enqueue(entries, torch.arange(6), step=0)
        logits[weight] = bank.negative_logits(query, 5.0, torch.tensor([0, 1]), step=3)
    served = torch.isfinite(logits[1.0])
    assert torch.equal(served, torch.isfinite(logits[0.25])) and served.any()
    torch.testing.assert_close(logits[0.25][served], logits[1.0][served] + math.log(0.25))
    with pytest.raises(ValueError, match="weight"):
        MemoryBank(capacity=4, dim=4, weight=0.0)


def test_token_level_entries_score_by_the_maximum_over_tokens_and_round_trip():
    # Token-level targets (SPRC's scoring): an entry is K unit token features, its logit uses max_k q·e_k.
    bank = MemoryBank(capacity=6, dim=4, strategy="fifo", age_decay=None, max_age=None, tokens_per_entry=3)
    tokens = F.normalize(torch.randn(5, 3, 4), dim=-1)
    assert bank.enqueue(tokens * 2.0, torch.arange(5), step=0) == 5  # re-normalised per token
    query = F.normalize(torch.randn(2, 4), dim=-1)
    logits = bank.negative_logits(query, 10.0, torch.tensor([0, 1]), step=1)
    expected = 10.0 * torch.einsum("bd,nkd->bnk", query, tokens).amax(dim=2)
    assert torch.allclose(logits[:, 2:5], expected[:, 2:5], atol=1e-5)
    assert torch.isinf(logits[0, 0]) and torch.isinf(logits[1, 1]) and torch.isinf(logits[:, 5]).all()
    restored = MemoryBank(capacity=6, dim=4, tokens_per_entry=3)
    restored.load_state_dict(bank.state_dict())
    assert torch.equal(restored.embeddings, bank.embeddings)
    with pytest.raises(ValueError, match="tokens per entry"):
        MemoryBank(capacity=6, dim=4, tokens_per_entry=2).load_state_dict(bank.state_dict())
    with pytest.raises(ValueError, match=r"shape \(N, 3, 4\)"):
        bank.enqueue(torch.randn(2, 4), torch.arange(2), step=2)
