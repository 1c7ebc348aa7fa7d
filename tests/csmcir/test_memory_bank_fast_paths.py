"""The bank's fast paths compute what the plain dense formulas compute.

`memory_bank_loss` never builds the dense `(B, C)` bank logits' graph and `MemoryBank._selection` never builds a
`(B, C)` mask; these tests hold them to the straightforward dense computation (written out here independently:
candidate mask, softmax entropy, `torch.topk`, `cross_entropy` over the concatenated logits) in value and
gradient, for every strategy, vector and token-level entries, ages, weights, excluded ids, repeated targets in
the batch and queries left without any candidate.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from modeling_csmcir.memory_bank import MemoryBank, _top_indices, memory_bank_loss
from modeling_csmcir.modeling_csmcir import csmcir_contrastive_loss


def _dense_reference(bank, queries, scale, positive_ids, step, exclude_ids):
    """(B, C) logits with -inf where not served, straight from the class docstring's formulas."""
    stored = bank.embeddings
    if bank.tokens_per_entry is None:
        similarities = queries @ stored.T
    else:
        similarities = torch.einsum("bd,ckd->bck", queries, stored).amax(dim=2)
    ages = (step - bank.steps).float()
    logits = scale * similarities
    if bank.age_decay is not None:
        logits = logits - ages / bank.age_decay
    logits = logits + math.log(bank.weight)
    usable = bank.target_ids >= 0
    if bank.max_age is not None:
        usable &= ages <= bank.max_age
    mask = usable.unsqueeze(0) & (bank.target_ids.unsqueeze(0) != positive_ids.unsqueeze(1))
    if exclude_ids is not None:
        mask &= ~(bank.target_ids.view(1, -1, 1) == exclude_ids.view(len(queries), 1, -1)).any(dim=2)
    n = mask.sum(dim=1)
    if bank.strategy == "fifo":
        keep = mask
    else:
        detached = logits.detach().masked_fill(~mask, float("-inf"))
        if bank.strategy == "entropy":
            p = torch.softmax(detached, dim=1)
            plogp = torch.where(mask, p * torch.log_softmax(detached, dim=1), torch.zeros_like(p))
            h = torch.where(n > 1, -plogp.sum(dim=1) / torch.log(n.clamp(min=2).float()), torch.zeros(len(n)))
            k = torch.minimum(bank.k_min + torch.round((bank.k_max - bank.k_min) * h.clamp(0, 1)).long(), n)
        else:
            k = torch.clamp(n, max=bank.k_max)
        order = torch.argsort(detached, dim=1, descending=True)
        ranks = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1]).expand_as(order))
        keep = (ranks < k.unsqueeze(1)) & mask
    return logits.masked_fill(~keep, float("-inf")), n


def _filled_bank(strategy, capacity, dim, tokens=None, **kwargs):
    bank = MemoryBank(capacity, dim, strategy=strategy, tokens_per_entry=tokens, **kwargs)
    generator = torch.Generator().manual_seed(capacity + dim)
    shape = (capacity - 3, dim) if tokens is None else (capacity - 3, tokens, dim)
    # ids 0..capacity-4 at steps 0..: the last three slots stay empty
    for start in range(0, capacity - 3, 50):
        rows = torch.randn(*shape, generator=generator)[start : start + 50]
        bank.enqueue(rows, torch.arange(start, start + len(rows)), step=start // 50)
    return bank


@pytest.mark.parametrize("tokens", [None, 3])
@pytest.mark.parametrize("strategy", ["fifo", "hard", "entropy"])
def test_loss_and_gradients_equal_the_dense_computation(strategy, tokens):
    bank = _filled_bank(strategy, 403, 16, tokens, k_min=3, k_max=40, age_decay=7.0, max_age=6, weight=0.5)
    generator = torch.Generator().manual_seed(1)
    batch = 6
    queries = F.normalize(torch.randn(batch, 16, generator=generator), dim=-1).requires_grad_(True)
    targets = F.normalize(torch.randn(batch, 16, generator=generator), dim=-1)
    scale = torch.tensor(9.0, requires_grad=True)
    target_ids = torch.tensor([3, 3, 120, 399, 250, 7])  # a repeated target; 399 is not in the bank
    exclude = torch.tensor([[5, -1], [120, 121], [-1, -1], [398, 3], [251, 252], [8, 9]])
    step = 8  # max_age 6 evicts the entries of steps 0 and 1

    logits_per_query = scale * queries @ targets.T
    result = memory_bank_loss(bank, logits_per_query, queries, scale, target_ids, step, exclude)
    grads = torch.autograd.grad(result.loss, [queries, scale])

    q2, s2 = queries.detach().clone().requires_grad_(True), scale.detach().clone().requires_grad_(True)
    extra, n = _dense_reference(bank, q2, s2, target_ids, step, exclude)
    expected = csmcir_contrastive_loss(s2 * q2 @ targets.T, extra, target_ids)
    expected_grads = torch.autograd.grad(expected, [q2, s2])

    assert result.served and bool((n > 0).all())
    torch.testing.assert_close(result.loss, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # negative_logits serves the same entries with the same values
    served = bank.negative_logits(queries.detach(), 9.0, target_ids, step, exclude)
    assert torch.equal(torch.isfinite(served), torch.isfinite(extra))
    torch.testing.assert_close(served[torch.isfinite(served)], extra[torch.isfinite(extra)].detach(), rtol=1e-5,
                               atol=1e-5)
    assert bank.last_selection.num_candidates == pytest.approx(float(n.float().mean()))
    assert bank.last_selection.mean_k == pytest.approx(float(torch.isfinite(extra).sum(dim=1).float().mean()))


@pytest.mark.parametrize("strategy", ["fifo", "hard", "entropy"])
def test_a_query_without_candidates_gets_the_in_batch_loss_and_finite_gradients(strategy):
    bank = MemoryBank(4, 8, strategy=strategy, k_min=1, k_max=2, age_decay=None, max_age=None)
    entries = F.normalize(torch.randn(2, 8), dim=-1)
    bank.enqueue(entries, torch.tensor([10, 11]), step=0)
    queries = F.normalize(torch.randn(2, 8), dim=-1).requires_grad_(True)
    targets = F.normalize(torch.randn(2, 8), dim=-1)
    # query 0 excludes both stored ids: no candidate; query 1 has both
    exclude = torch.tensor([[10, 11], [-1, -1]])
    logits_per_query = 5.0 * queries @ targets.T
    result = memory_bank_loss(bank, logits_per_query, queries, 5.0, torch.tensor([0, 1]), 1, exclude)
    result.loss.backward()
    assert bool(torch.isfinite(queries.grad).all())
    extra = torch.full((2, 4), float("-inf"))
    served = (5.0 * queries.detach()[1] @ entries.T)
    if strategy != "fifo":
        served = served.topk(2).values
    extra[1, : served.numel()] = served
    expected = csmcir_contrastive_loss(logits_per_query.detach(), extra, torch.tensor([0, 1]))
    torch.testing.assert_close(result.loss.detach(), expected, rtol=1e-5, atol=1e-6)


def test_grouped_top_indices_equal_torch_topk():
    generator = torch.Generator().manual_seed(0)
    work = torch.randn(5, 4096, generator=generator)
    work[:, ::7] = torch.finfo(torch.float32).min  # masked entries never rank above candidates
    for k in (1, 16, 64):
        got = _top_indices(work, k)
        expected = torch.topk(work, k, dim=1)
        torch.testing.assert_close(work.gather(1, got), expected.values)
    # a row whose best values crowd into one group
    work[0, 32:48] = 100.0 + torch.arange(16.0)
    assert set(_top_indices(work, 16)[0].tolist()) == set(range(32, 48))
