"""The entropy-based, temporally dynamic memory bank of target embeddings (CSMCIR's third component).

CSMCIR (Qian et al., arXiv 2601.03728) keeps a bank of target embeddings produced by the model while it
trains, and draws extra negatives for the in-batch InfoNCE from it. The paper's equations are not public;
this file implements our reading of it:

* a ring buffer (XBM-style, Wang et al. 2020) of detached, L2-normalised target embeddings, each with its
  target id and the optimiser step it was encoded at;
* strategies ``none``, ``fifo`` (every entry a negative), ``hard`` (the ``k_max`` hardest entries) and
  ``entropy`` (a per-query ``k`` set by the normalised entropy of the query's similarity distribution);
* false-negative masking by target id, age down-weighting, eviction past ``max_age``, replacement of a
  target's stale entry when it is encoded again, a warm-up step, and in-place refresh of the oldest
  entries (the trainer re-encodes them with the current model; possible because the towers are shared).

The bank is an ``nn.Module`` whose buffers are its whole state: ``state_dict()`` is what a checkpoint saves
(``memory_bank.safetensors``) and ``.to(device)`` moves it with the model. It holds no parameters and takes no
gradient; every operation is vectorised over entries. :func:`memory_bank_loss` is the training objective it
feeds, so the bank and its loss live in this one file; ``CSMCIRTrainer`` only calls them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers.utils import logging

from .modeling_csmcir import csmcir_contrastive_loss

logger = logging.get_logger(__name__)

BANK_STRATEGIES = ("none", "fifo", "hard", "entropy")

# Target ids are non-negative; this value marks an empty (or evicted / replaced) slot.
EMPTY_ID = -1


@dataclass
class BankSelection:
    """Statistics of the last :meth:`MemoryBank.negative_logits` call (for logging).

    Attributes:
        mean_k: mean number of bank entries served as negatives per query.
        mean_entropy: mean normalised entropy ``H`` of the queries' bank similarity distributions
            (``nan`` unless the strategy is ``entropy``).
        num_candidates: mean number of unmasked entries a query could draw from.
    """

    mean_k: float = 0.0
    mean_entropy: float = float("nan")
    num_candidates: float = 0.0


def check_bank_settings(
    capacity: int, dim: int, strategy: str, k_min: int, k_max: int, max_age: int | None, weight: float
) -> None:
    """Raise ``ValueError`` for settings no bank can run with. The one validation of the bank's settings: the
    bank calls it, and ``CSMCIRTrainingArguments`` calls it at parse time (messages name both spellings)."""
    if capacity <= 0:
        raise ValueError(f"MemoryBank capacity (bank_size) must be a positive integer, got {capacity}")
    if dim <= 0:
        raise ValueError(f"MemoryBank dim must be a positive integer, got {dim}")
    if strategy not in BANK_STRATEGIES:
        raise ValueError(f"MemoryBank strategy (bank_strategy) must be one of {BANK_STRATEGIES}, got {strategy!r}")
    if not 0 <= k_min <= k_max:
        raise ValueError(f"MemoryBank needs 0 <= k_min <= k_max (bank_k_min, bank_k_max), got k_min={k_min}, "
                         f"k_max={k_max}")
    if not weight > 0:
        raise ValueError(f"MemoryBank weight (bank_weight) must be > 0, got {weight}")
    if max_age is not None and max_age < 0:
        raise ValueError(f"MemoryBank max_age must be >= 0 or None, got {max_age}")


# Marks a non-candidate in the selection's working logits: finite, so that 0 * MASKED = 0 in the entropy's dot
# products, and below any real logit (|logit| <= logit_scale + age / age_decay + |log weight|).
MASKED = torch.finfo(torch.float32).min
# Hard/entropy selection ranks groups of this many entries first (see `_top_indices`).
TOPK_GROUP = 16


@dataclass
class _Selection:
    """What `MemoryBank._selection` chose: ``work`` ``(B, C)`` float32 logits with ``MASKED`` at non-candidates,
    ``bias`` ``(C,)`` the entries' age/weight terms, ``n`` ``(B,)`` candidates per query, and for hard/entropy
    ``top`` ``(B, k_top)`` the candidates ranked by logit with ``chosen`` ``(B, k_top)`` marking the served ones
    (fifo serves every candidate: ``top`` is None)."""

    work: torch.Tensor
    bias: torch.Tensor
    n: torch.Tensor
    top: torch.Tensor | None
    chosen: torch.Tensor | None

    def keep(self) -> torch.Tensor:
        """``(B, C)`` bool: the entries served to each query."""
        if self.top is None:
            return self.work > MASKED
        keep = torch.zeros(self.work.shape, dtype=torch.bool, device=self.work.device)
        return keep.scatter_(1, self.top, self.chosen) & (self.work > MASKED)


_SORTED_IDS_CACHE: dict[int, tuple[int, int, torch.Tensor, torch.Tensor]] = {}


def _sorted_ids(target_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.sort(target_ids)``, cached until the tensor changes (its in-place version counter moves: enqueue,
    evict, load_state_dict): the ids change once per step, the selection reads them once per step too, but a
    64k-entry sort is a noticeable part of a cheap selection."""
    key = id(target_ids)
    cached = _SORTED_IDS_CACHE.get(key)
    if cached is not None and cached[0] == target_ids._version and cached[1] == target_ids.data_ptr():
        return cached[2], cached[3]
    sorted_ids, order = torch.sort(target_ids)
    if len(_SORTED_IDS_CACHE) > 64:
        _SORTED_IDS_CACHE.clear()
    _SORTED_IDS_CACHE[key] = (target_ids._version, target_ids.data_ptr(), sorted_ids, order)
    return sorted_ids, order


def _slots_holding(target_ids: torch.Tensor, wanted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, slots)``: every pair where slot ``slots[m]`` holds id ``wanted[rows[m], c]`` for some c (ids < 0
    never match). Binary search in the sorted ids: ``O(C log C + B·m·log C)``, not a ``(B x C)`` comparison."""
    sorted_ids, order = _sorted_ids(target_ids)
    low = torch.searchsorted(sorted_ids, wanted)
    count = torch.searchsorted(sorted_ids, wanted, right=True) - low
    count = count.masked_fill(wanted < 0, 0)
    rows, slots = [], []
    for offset in range(int(count.max()) if count.numel() else 0):
        hit = count > offset
        rows.append(hit.nonzero()[:, 0])
        slots.append(order[(low + offset)[hit]])
    if not rows:
        empty = torch.empty(0, dtype=torch.long, device=target_ids.device)
        return empty, empty
    return torch.cat(rows), torch.cat(slots)


def _entropy_k_from_masked(
    work: torch.Tensor, n: torch.Tensor, k_min: int, k_max: int
) -> tuple[torch.Tensor, torch.Tensor]:
    r""":meth:`MemoryBank.entropy_k` on logits with ``MASKED`` at non-candidates, in four passes:
    ``H = (lse - \sum_j p_j \ell_j) / \log n`` (the same quantity as ``-\sum_j p_j \log p_j / \log n``, since
    ``\log p_j = \ell_j - lse``; masked terms have ``p_j = 0`` exactly)."""
    maxima = work.amax(dim=1, keepdim=True)
    maxima = torch.where(n.unsqueeze(1) > 0, maxima, torch.zeros_like(maxima))
    p = (work - maxima).exp_()
    total = p.sum(dim=1, keepdim=True)
    p.div_(total)
    lse = (maxima + total.log()).squeeze(1)
    # sum_j p_j l_j in place (p is not needed after): no (B x C) temporary, and ~5x faster than the
    # (B, 1, C) @ (B, C, 1) bmm that also avoids one.
    mean_logit = p.mul_(work).sum(dim=1)
    entropy = lse - mean_logit
    log_n = torch.log(n.clamp(min=1).to(entropy.dtype))
    h = torch.where(n > 1, entropy / log_n.clamp(min=1e-12), torch.zeros_like(entropy)).clamp(0.0, 1.0)
    k = k_min + torch.round((k_max - k_min) * h).long()
    return torch.minimum(k, n), h


def _top_indices(work: torch.Tensor, k: int) -> torch.Tensor:
    """``(B, k)`` column indices of each row's ``k`` largest values, in descending order (ties in any order).

    Two stages when the row splits into ``TOPK_GROUP`` strided groups (group ``g`` = columns ``g, g + G, g + 2G,
    ...`` with ``G = C / TOPK_GROUP``, so the group maxima are an elementwise max of ``TOPK_GROUP`` contiguous
    slices): the ``k`` largest values all lie in the ``k`` groups with the largest maxima (any other group's maximum
    is below ``k`` values already), so ``torch.topk`` ranks ``k`` group maxima among ``G`` and then
    ``k · TOPK_GROUP`` values, not ``C``: ~4x cheaper at 64k entries.
    """
    batch, columns = work.shape
    groups = columns // TOPK_GROUP
    if columns % TOPK_GROUP or groups < 4 * k:
        return torch.topk(work, k, dim=1).indices
    group_max = work.view(batch, TOPK_GROUP, groups).amax(dim=1)  # (B, G)
    best_groups = torch.topk(group_max, k, dim=1).indices  # (B, k)
    offsets = torch.arange(TOPK_GROUP, device=work.device) * groups
    columns_of = (best_groups.unsqueeze(2) + offsets).view(batch, -1)
    order = torch.topk(work.gather(1, columns_of), k, dim=1).indices
    return columns_of.gather(1, order)


class _ServedLogSumExp(torch.autograd.Function):
    """``lse_i = log Σ_{j served} exp(logit_scale · q_i·e_j + bias_j)`` from the selection's no-grad logits, with a
    hand-written backward: ``∂lse_i/∂q_i = logit_scale · Σ_j p_ij e_j`` and ``∂lse_i/∂logit_scale = q_i · Σ_j p_ij e_j``
    with ``p_ij = exp(logit_ij - lse_i)`` (0 where not served). ``work`` is either every entry's logit ``(B, C)``
    (fifo: the weighted sum is one ``(B x C) @ (C x D)`` product, reusing the forward's buffer) or the logits of
    the ranked entries ``top`` ``(B, k)`` (hard / entropy: ``embedding_bag`` sums the ``k`` rows per query without
    gathering a ``(B, k, D)`` copy). Autograd's graph through dense logits would keep and rewrite several
    ``(B x C)`` tensors."""

    @staticmethod
    def forward(ctx, queries, logit_scale, work, embeddings, n, top=None):  # noqa: D102
        maxima = work.amax(dim=1, keepdim=True)
        maxima = torch.where(n.unsqueeze(1) > 0, maxima, torch.zeros_like(maxima))
        total = (work - maxima).exp_().sum(dim=1, keepdim=True)
        lse = (maxima + total.log()).squeeze(1)
        lse = torch.where(n > 0, lse, torch.full_like(lse, float("-inf")))
        ctx.save_for_backward(queries, logit_scale, embeddings)
        ctx.work, ctx.lse, ctx.n, ctx.top = work, lse, n, top
        return lse

    @staticmethod
    def backward(ctx, grad_lse):  # noqa: D102
        queries, logit_scale, embeddings = ctx.saved_tensors
        work, lse, n = ctx.work, ctx.lse, ctx.n
        if work is None:
            raise RuntimeError("memory_bank_loss: the bank's backward cannot run twice (it reuses its buffer)")
        ctx.work = None
        # p = exp(work - lse), in place; rows without a candidate get p = 0.
        p = work.sub_(torch.where(n > 0, lse, torch.full_like(lse, float("inf"))).unsqueeze(1)).exp_()
        if ctx.top is None:
            weighted = p @ embeddings  # (B, D): Σ_j p_ij e_j
        else:
            weighted = F.embedding_bag(ctx.top, embeddings, per_sample_weights=p, mode="sum")
        grad = grad_lse.to(weighted.dtype).unsqueeze(1)
        grad_queries = (grad * logit_scale.to(weighted.dtype) * weighted).to(queries.dtype)
        grad_scale = (grad.squeeze(1) * (queries.to(weighted.dtype) * weighted).sum(dim=1)).sum().to(logit_scale.dtype)
        return grad_queries, grad_scale.reshape(logit_scale.shape), None, None, None, None


class MemoryBank(nn.Module):
    r"""Ring buffer of detached target embeddings that serves hard negatives.

    Storage (``C = capacity`` slots, ``D = dim``), all registered buffers: ``embeddings`` ``(C, D)`` float32,
    L2-normalised; ``target_ids`` ``(C,)`` int64 (``-1`` = empty slot); ``steps`` ``(C,)`` int64, the training
    step the entry was encoded at; ``pointer``, the next slot the ring writes to; ``num_enqueued`` /
    ``num_rejected``, counters (0-d int64). The bank therefore holds the latest encoding
    of each target id among the last ``capacity`` rows enqueued (a re-encoded id empties its older slot, which
    stays empty until the ring comes round to it).

    For a query embedding ``q`` (L2-normalised), a positive target id ``y`` and the current step ``s``, the
    logit of bank entry ``j`` (embedding ``e_j``, id ``y_j``, encoded at ``s_j``) is

    .. math::

        \ell_j = \text{logit\_scale}\cdot q^\top e_j \;-\; \frac{s - s_j}{\tau_{age}} \;+\; \log \lambda

    i.e. an age weight ``w_j = exp(-age_j / age_decay)`` and the bank weight ``\lambda`` (``weight``) multiply
    the entry's term ``exp(\ell)`` in the softmax denominator (no age weighting when ``age_decay`` is ``None``
    or ``<= 0``). ``\lambda < 1`` keeps many detached bank negatives from outweighing the in-batch ones: only the
    in-batch terms push *targets* apart, so a bank that holds most of the denominator's mass starves the target
    side of that push and, in fast from-scratch training, the shared embedding contracts until it collapses
    (measured in ``benchmarks/results/ablation_csmcir.md``). Entry ``j`` is a candidate
    for the query when it is occupied, ``y_j != y`` (false-negative masking) and ``s - s_j <= max_age``.
    Among candidates the strategy keeps:

    * ``fifo``: all of them;
    * ``hard``: the ``k_max`` with the largest ``\ell_j``;
    * ``entropy``: the ``k`` with the largest ``\ell_j``, where with ``p = softmax(\ell)`` over the ``n``
      candidates, ``H = -\sum_j p_j \log p_j / \log n`` (``H = 0`` when ``n <= 1``) and
      ``k = k_min + round((k_max - k_min) \cdot H)``, clamped to ``[0, n]``.

    Entries not kept get logit ``-inf``, which ``csmcir_contrastive_loss`` ignores. Nothing is served before
    step ``start_step`` or with strategy ``none``.

    Args:
        capacity: number of slots ``C``.
        dim: embedding dimension ``D``.
        strategy: one of ``none``, ``fifo``, ``hard``, ``entropy``.
        k_min: fewest negatives a (confident) query gets under ``entropy``.
        k_max: most negatives a query gets under ``entropy`` and ``hard``.
        age_decay: ``\tau_{age}`` in steps; ``None`` or ``<= 0`` disables age down-weighting.
        max_age: entries older than this many steps are evicted; ``None`` keeps them forever.
        start_step: first step at which the bank serves negatives (it is filled before that).
        device: where the bank's tensors live (the model's device).
        weight: ``\lambda > 0``, the weight of every served entry in the denominator (``1`` = a full negative).
        tokens_per_entry: ``K`` for token-level targets (``config.target_representation="tokens"``): each entry is
            ``(K, D)`` unit token features and ``q^T e_j`` above becomes ``max_k q^T e_{jk}``, the model's score.
    """

    def __init__(
        self,
        capacity: int,
        dim: int,
        strategy: str = "entropy",
        k_min: int = 16,
        k_max: int = 256,
        age_decay: float | None = 500.0,
        max_age: int | None = 1000,
        start_step: int = 0,
        device: torch.device | str | None = None,
        weight: float = 1.0,
        tokens_per_entry: int | None = None,
    ) -> None:
        super().__init__()
        if tokens_per_entry is not None and tokens_per_entry <= 0:
            raise ValueError(f"MemoryBank tokens_per_entry must be positive or None, got {tokens_per_entry}")
        self.tokens_per_entry = int(tokens_per_entry) if tokens_per_entry else None
        check_bank_settings(capacity, dim, strategy, k_min, k_max, max_age, weight)
        self.capacity = int(capacity)
        self.dim = int(dim)
        self.strategy = strategy
        self.k_min = int(k_min)
        self.k_max = int(k_max)
        self.age_decay = float(age_decay) if age_decay is not None and age_decay > 0 else None
        self.max_age = int(max_age) if max_age is not None else None
        self.start_step = int(start_step)
        self.weight = float(weight)
        device = torch.device(device) if device is not None else torch.device("cpu")
        self.register_buffer("embeddings", torch.zeros(self.capacity, *self.entry_shape, dtype=torch.float32, device=device))
        self.register_buffer("target_ids", torch.full((self.capacity,), EMPTY_ID, dtype=torch.long, device=device))
        self.register_buffer("steps", torch.zeros(self.capacity, dtype=torch.long, device=device))
        for counter in ("pointer", "num_enqueued", "num_rejected"):
            self.register_buffer(counter, torch.zeros((), dtype=torch.long, device=device))
        self.last_selection = BankSelection()

    # ------------------------------------------------------------------ basic properties
    @property
    def entry_shape(self) -> tuple[int, ...]:
        """``(D,)``, or ``(K, D)`` for token-level entries."""
        return (self.dim,) if self.tokens_per_entry is None else (self.tokens_per_entry, self.dim)

    def _check_rows(self, embeddings: torch.Tensor, rows: int | None, where: str) -> None:
        expected = tuple(embeddings.shape[1:]) == self.entry_shape and (rows is None or embeddings.shape[0] == rows)
        if not expected:
            shape = ", ".join(["N" if rows is None else str(rows), *map(str, self.entry_shape)])
            raise ValueError(f"MemoryBank.{where}: embeddings must have shape ({shape}), got {tuple(embeddings.shape)}")

    def _finite_rows(self, embeddings: torch.Tensor) -> torch.Tensor:
        return torch.isfinite(embeddings).reshape(embeddings.shape[0], -1).all(dim=1)

    @property
    def device(self) -> torch.device:
        return self.embeddings.device

    @property
    def occupied(self) -> torch.Tensor:
        """``(C,)`` bool: slots that hold an entry."""
        return self.target_ids >= 0

    def __len__(self) -> int:
        return int(self.occupied.sum())

    def ages(self, step: int) -> torch.Tensor:
        """``(C,)`` int64 ``step - steps`` (meaningless for empty slots)."""
        return step - self.steps

    def is_serving(self, step: int) -> bool:
        """Whether the bank serves negatives at ``step``: strategy is not ``none`` and ``step >= start_step``."""
        return self.strategy != "none" and step >= self.start_step

    # ------------------------------------------------------------------ writing
    @torch.no_grad()
    def evict(self, step: int) -> int:
        """Empty every slot whose age ``step - steps`` exceeds ``max_age``; return how many were evicted."""
        if self.max_age is None:
            return 0
        stale = self.occupied & (self.ages(step) > self.max_age)
        count = int(stale.sum())
        if count:
            self.target_ids[stale] = EMPTY_ID
        return count

    @torch.no_grad()
    def enqueue(self, embeddings: torch.Tensor, target_ids: torch.Tensor, step: int) -> int:
        """Write a batch of target embeddings into the ring; return how many entries were written.

        Rows with a non-finite value are rejected (with a warning). Every slot already holding one of the
        batch's target ids is emptied first (re-encoding a target replaces its stale entry); a target id that
        appears several times in the batch keeps its last row. The rows are re-normalised to unit L2 norm and
        written at ``pointer, pointer + 1, ...`` modulo ``capacity``; when more than ``capacity`` rows arrive,
        only the last ``capacity`` are kept. Entries past ``max_age`` are evicted afterwards.

        Args:
            embeddings: ``(N, D)`` target embeddings (any float dtype; detached here).
            target_ids: ``(N,)`` non-negative integer target ids.
            step: the training step the embeddings were computed at.
        """
        self._check_rows(embeddings, None, "enqueue")
        target_ids = target_ids.reshape(-1)
        if target_ids.shape[0] != embeddings.shape[0]:
            raise ValueError(
                f"MemoryBank.enqueue: got {embeddings.shape[0]} embeddings but {target_ids.shape[0]} target ids"
            )
        if target_ids.numel() and int(target_ids.min()) < 0:
            raise ValueError("MemoryBank.enqueue: target_ids must be non-negative integers")
        embeddings = embeddings.detach().to(device=self.device, dtype=torch.float32)
        target_ids = target_ids.detach().to(device=self.device, dtype=torch.long)

        finite = self._finite_rows(embeddings)
        if not bool(finite.all()):
            rejected = int((~finite).sum())
            self.num_rejected += rejected
            logger.warning(
                f"MemoryBank.enqueue: rejected {rejected} of {finite.numel()} embeddings with non-finite values "
                f"at step {step}; they are not stored."
            )
            embeddings, target_ids = embeddings[finite], target_ids[finite]

        # Keep the last row of every id: row i is dropped when a later row j > i has the same id.
        if target_ids.numel() > 1:
            same = target_ids.unsqueeze(1) == target_ids.unsqueeze(0)
            later = torch.ones_like(same).triu(diagonal=1)
            keep = ~(same & later).any(dim=1)
            embeddings, target_ids = embeddings[keep], target_ids[keep]

        n = target_ids.numel()
        if n == 0:
            self.evict(step)
            return 0
        if n > self.capacity:
            embeddings, target_ids = embeddings[-self.capacity :], target_ids[-self.capacity :]
            n = self.capacity

        # Binary search in the sorted ids the selection just cached (`torch.isin` would sort all C ids again).
        _, stale = _slots_holding(self.target_ids, target_ids.view(1, -1))
        self.target_ids[stale] = EMPTY_ID
        slots = (int(self.pointer) + torch.arange(n, device=self.device)) % self.capacity
        self.embeddings[slots] = torch.nn.functional.normalize(embeddings, dim=-1)
        self.target_ids[slots] = target_ids
        self.steps[slots] = int(step)
        self.pointer.fill_((int(self.pointer) + n) % self.capacity)
        self.num_enqueued += n
        self.evict(step)
        return n

    def oldest_slots(self, count: int) -> torch.Tensor:
        """Slots of the ``count`` oldest occupied entries, oldest first (ties: lower slot first)."""
        occupied = self.occupied
        count = min(int(count), int(occupied.sum()))
        if count <= 0:
            return torch.empty(0, dtype=torch.long, device=self.device)
        # Empty slots sort last; stable sort keeps slot order among equal steps.
        key = torch.where(occupied, self.steps, torch.iinfo(torch.long).max)
        return torch.sort(key, stable=True).indices[:count]

    @torch.no_grad()
    def refresh(self, slots: torch.Tensor, embeddings: torch.Tensor, step: int) -> int:
        """Overwrite the entries at ``slots`` with re-encoded ``embeddings`` and stamp them with ``step``.

        Ids are unchanged. Rows with a non-finite value are skipped (with a warning), leaving the old entry.
        Returns how many entries were refreshed.
        """
        slots = slots.to(device=self.device, dtype=torch.long).reshape(-1)
        self._check_rows(embeddings, slots.numel(), "refresh")
        embeddings = embeddings.detach().to(device=self.device, dtype=torch.float32)
        finite = self._finite_rows(embeddings)
        if not bool(finite.all()):
            logger.warning(
                f"MemoryBank.refresh: skipped {int((~finite).sum())} re-encoded embeddings with non-finite values."
            )
            slots, embeddings = slots[finite], embeddings[finite]
        self.embeddings[slots] = torch.nn.functional.normalize(embeddings, dim=-1)
        self.steps[slots] = int(step)
        return int(slots.numel())

    # ------------------------------------------------------------------ reading
    def candidate_mask(
        self, positive_ids: torch.Tensor, step: int, exclude_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, C)`` bool: entry ``j`` is a candidate negative for query ``i``.

        ``mask[i, j] = occupied_j  and  target_ids_j != positive_ids_i  and  (step - steps_j) <= max_age
        and  target_ids_j not in exclude_ids[i]``.
        """
        usable = self.occupied
        if self.max_age is not None:
            usable = usable & (self.ages(step) <= self.max_age)
        positive_ids = positive_ids.to(self.device).reshape(-1, 1)
        mask = usable.unsqueeze(0) & (self.target_ids.unsqueeze(0) != positive_ids)
        if exclude_ids is not None:
            exclude_ids = exclude_ids.to(self.device).reshape(positive_ids.shape[0], -1)
            excluded = (self.target_ids.view(1, -1, 1) == exclude_ids.unsqueeze(1)).any(dim=2)
            mask = mask & ~excluded
        return mask

    def entropy_k(self, logits: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Per-query ``k`` from the normalised entropy of ``softmax(logits)`` over the candidates.

        With ``n_i = mask[i].sum()`` and ``p_i = softmax(logits[i, mask[i]])``:
        ``H_i = -\sum_j p_{ij} \log p_{ij} / \log n_i`` (``0`` when ``n_i <= 1``),
        ``k_i = min(n_i, k_min + round((k_max - k_min) H_i))``.

        Returns ``(k, H)``, both ``(B,)`` (``k`` int64, ``H`` float32).
        """
        logits = logits.float().masked_fill(~mask, float("-inf"))
        n = mask.sum(dim=1)
        log_p = torch.log_softmax(logits, dim=1)
        p = log_p.exp()
        # 0 * log 0 = 0: zero the masked terms before summing (masked log_p is -inf, p is 0).
        plogp = torch.where(mask, p * log_p, torch.zeros_like(p))
        entropy = -plogp.sum(dim=1)
        log_n = torch.log(n.clamp(min=1).to(entropy.dtype))
        h = torch.where(n > 1, entropy / log_n.clamp(min=1e-12), torch.zeros_like(entropy)).clamp(0.0, 1.0)
        k = self.k_min + torch.round((self.k_max - self.k_min) * h).long()
        return torch.minimum(k, n), h

    def _selection(
        self,
        query_embeds: torch.Tensor,
        logit_scale: torch.Tensor | float,
        positive_ids: torch.Tensor | None,
        step: int,
        exclude_ids: torch.Tensor | None,
    ) -> _Selection | None:
        """The strategy's choice of entries per query, computed once without gradient (shared by
        :meth:`negative_logits` and :func:`memory_bank_loss`); ``None`` when nothing is served. Sets
        :attr:`last_selection`.

        Cost: one ``(B x C x D)`` matrix product and a few passes over the ``(B x C)`` logits. Non-candidates are
        marked by a bias of ``MASKED`` (empty or too old slots, folded into the product's bias) and by a sparse
        write (false negatives and excluded ids, found by binary search in the sorted ids: a query masks at most
        a few slots, so no ``(B x C)`` comparison is made); ``n`` is counted from those, not from a pass.
        """
        self.last_selection = BankSelection()
        if not self.is_serving(step) or not bool(self.occupied.any()):
            return None
        if query_embeds.ndim != 2 or query_embeds.shape[1] != self.dim:
            raise ValueError(
                f"MemoryBank.negative_logits: query_embeds must have shape (B, {self.dim}), "
                f"got {tuple(query_embeds.shape)}"
            )
        batch, capacity = query_embeds.shape[0], self.capacity
        with torch.no_grad():
            scale = float(logit_scale)
            usable = self.occupied
            if self.max_age is not None:
                usable = usable & (self.ages(step) <= self.max_age)
            # bias_j = -age_j / age_decay + log(weight) for usable slots, MASKED otherwise.
            bias = torch.zeros(capacity, dtype=torch.float32, device=self.device)
            if self.age_decay is not None:
                bias -= self.ages(step).to(torch.float32) / self.age_decay
            if self.weight != 1.0:
                bias += math.log(self.weight)
            bias.masked_fill_(~usable, MASKED)
            queries = query_embeds.detach().to(device=self.device, dtype=torch.float32)
            if self.tokens_per_entry is None:
                work = torch.addmm(bias, queries, self.embeddings.T, alpha=scale)
            else:
                work = (queries @ self.embeddings.reshape(-1, self.dim).T).view(batch, capacity, -1).amax(dim=2)
                work.mul_(scale).add_(bias)
            # Ids never served to a query: its positive and its excluded ids (-1: none / padding).
            if positive_ids is None:
                positive_ids = torch.full((batch,), EMPTY_ID, dtype=torch.long, device=self.device)
            removed = positive_ids.to(self.device).reshape(-1, 1)
            if exclude_ids is not None:
                removed = torch.cat([removed, exclude_ids.to(self.device).reshape(batch, -1)], dim=1)
            rows, slots = _slots_holding(self.target_ids, removed)
            keep_pair = usable[slots]
            pairs = torch.unique(rows[keep_pair] * capacity + slots[keep_pair])
            work.view(-1).index_fill_(0, pairs, MASKED)
            n = int(usable.sum()) - torch.bincount(pairs // capacity, minlength=batch)
            if not bool((n > 0).any()):
                return None
            if self.strategy == "fifo":
                k, h, top, chosen = n, None, None, None
            else:
                if self.strategy == "entropy":
                    k, h = _entropy_k_from_masked(work, n, self.k_min, self.k_max)
                else:
                    k, h = torch.clamp(n, max=self.k_max), None
                top = _top_indices(work, min(self.k_max, capacity))
                chosen = torch.arange(top.shape[1], device=self.device).unsqueeze(0) < k.unsqueeze(1)
            self.last_selection = BankSelection(
                mean_k=float(k.float().mean()),
                mean_entropy=float(h.mean()) if h is not None else float("nan"),
                num_candidates=float(n.float().mean()),
            )
        return _Selection(work=work, bias=bias, n=n, top=top, chosen=chosen)

    def negative_logits(
        self,
        query_embeds: torch.Tensor,
        logit_scale: torch.Tensor | float,
        positive_ids: torch.Tensor | None,
        step: int,
        exclude_ids: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        r"""Extra negative logits ``(B, C)`` for a batch of queries, ``-inf`` where not served.

        ``logits[i, j] = logit_scale * q_i^T e_j - (step - steps_j) / age_decay + log(weight)`` for the entries
        the strategy selects (see the class docstring), ``-inf`` elsewhere. Gradients flow into ``query_embeds`` and
        ``logit_scale``; the bank itself is constant. Selection (masks, entropies, top-k) is done without
        gradient. Returns ``None`` when the bank does not serve at ``step`` (strategy ``none``, warm-up, or no
        candidate for any query), so the loss is the plain in-batch InfoNCE. Statistics of the call are kept
        in :attr:`last_selection`. (Training uses :func:`memory_bank_loss`, which computes the same loss without
        this dense ``(B, C)`` tensor and its graph.)

        Args:
            query_embeds: ``(B, D)`` L2-normalised query embeddings.
            logit_scale: ``1 / temperature`` (a scalar tensor or float).
            positive_ids: ``(B,)`` target ids of the queries' positives (masked as false negatives); ``None``
                disables id masking.
            step: the current training step (ages are measured from it).
            exclude_ids: ``(B,)`` or ``(B, K)`` further ids never served to query ``i`` (``-1`` pads), e.g. the
                query's reference image, which CIR protocols remove from the ranking: as a negative it would
                push a query away from the image its target differs from in one detail.
        """
        selection = self._selection(query_embeds, logit_scale, positive_ids, step, exclude_ids)
        if selection is None:
            return None
        return self._dense_logits(query_embeds, logit_scale, step, selection)

    def _dense_logits(
        self, query_embeds: torch.Tensor, logit_scale: torch.Tensor | float, step: int, selection: _Selection
    ) -> torch.Tensor:
        """The ``(B, C)`` differentiable logits of :meth:`negative_logits` for a computed selection."""
        batch = query_embeds.shape[0]
        bank = self.embeddings.to(device=query_embeds.device, dtype=query_embeds.dtype)
        if self.tokens_per_entry is None:
            similarities = query_embeds @ bank.T
        else:  # token-level entries: the maximum over each entry's tokens, as the model scores targets
            similarities = (query_embeds @ bank.reshape(-1, self.dim).T).view(batch, self.capacity, -1).amax(dim=2)
        logits = logit_scale * similarities
        if self.age_decay is not None:
            log_weight = -self.ages(step).to(device=logits.device, dtype=logits.dtype) / self.age_decay
            logits = logits + log_weight.unsqueeze(0)
        if self.weight != 1.0:
            logits = logits + torch.log(torch.tensor(self.weight, dtype=logits.dtype, device=logits.device))
        return logits.masked_fill(~selection.keep().to(logits.device), float("-inf"))

    # ------------------------------------------------------------------ logging and persistence
    def stats(self, step: int) -> dict[str, float]:
        """Numbers for the training log: ``bank_size`` (occupied slots), ``bank_mean_age`` (steps, over occupied
        slots; 0 when empty), ``bank_fill`` (``bank_size / capacity``), ``bank_mean_k`` (from the last
        selection), ``bank_enqueued`` and ``bank_rejected`` (totals since creation)."""
        occupied = self.occupied
        size = int(occupied.sum())
        mean_age = float(self.ages(step)[occupied].float().mean()) if size else 0.0
        return {
            "bank_size": float(size),
            "bank_mean_age": mean_age,
            "bank_fill": size / self.capacity,
            "bank_mean_k": self.last_selection.mean_k,
            "bank_enqueued": float(self.num_enqueued),
            "bank_rejected": float(self.num_rejected),
        }

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """Restore the contents saved by ``state_dict()`` (checked first, so a wrong checkpoint gets a clear error).

        Checkpoints written before the counters were buffers may lack ``num_enqueued`` / ``num_rejected``: they
        restore as 0.

        Raises:
            ValueError: a key is missing, or the saved bank's capacity or embedding dimension differs from this
                bank's (e.g. a checkpoint from a run with another ``bank_size`` or model ``embed_dim``).
        """
        state = dict(state_dict)
        required = ("embeddings", "target_ids", "steps", "pointer")
        missing = [key for key in required if key not in state]
        if missing:
            raise ValueError(f"MemoryBank.load_state_dict: missing keys {missing}; got keys {sorted(state)}")
        embeddings = state["embeddings"]
        if embeddings.ndim != 1 + len(self.entry_shape):
            raise ValueError(
                f"MemoryBank.load_state_dict: 'embeddings' must be {1 + len(self.entry_shape)}-D "
                f"(capacity, {', '.join(map(str, self.entry_shape))}), got shape {tuple(embeddings.shape)}"
            )
        if tuple(embeddings.shape[1:-1]) != self.entry_shape[:-1]:
            raise ValueError(
                f"MemoryBank.load_state_dict: saved bank has {embeddings.shape[1]} tokens per entry, but this bank "
                f"has {self.tokens_per_entry}"
            )
        saved_capacity, saved_dim = embeddings.shape[0], embeddings.shape[-1]
        if saved_dim != self.dim:
            raise ValueError(
                f"MemoryBank.load_state_dict: saved bank has embedding dimension {saved_dim}, but this bank (and "
                f"the model's embed_dim) is {self.dim}"
            )
        if saved_capacity != self.capacity:
            raise ValueError(
                f"MemoryBank.load_state_dict: saved bank has capacity {saved_capacity}, but this bank has capacity "
                f"{self.capacity} (bank_size); resume with the same bank_size"
            )
        for key in ("target_ids", "steps"):
            if tuple(state[key].shape) != (self.capacity,):
                raise ValueError(
                    f"MemoryBank.load_state_dict: {key!r} must have shape ({self.capacity},), got "
                    f"{tuple(state[key].shape)}"
                )
        if not bool(torch.isfinite(embeddings).all()):
            raise ValueError("MemoryBank.load_state_dict: saved 'embeddings' contain non-finite values")
        state["embeddings"] = embeddings.float()
        state["pointer"] = torch.as_tensor(int(state["pointer"]) % self.capacity)
        for counter in ("num_enqueued", "num_rejected"):
            state[counter] = torch.as_tensor(int(state.get(counter, 0)))
        state = {key: value.reshape(getattr(self, key).shape).to(getattr(self, key).dtype) for key, value in state.items()
                 if key in self._buffers}
        return super().load_state_dict(state, strict=strict, assign=assign)

    def extra_repr(self) -> str:
        return (
            f"capacity={self.capacity}, dim={self.dim}, strategy={self.strategy!r}, k_min={self.k_min}, "
            f"k_max={self.k_max}, age_decay={self.age_decay}, max_age={self.max_age}, start_step={self.start_step}, "
            f"weight={self.weight}, tokens_per_entry={self.tokens_per_entry}, size={len(self)}"
        )


@dataclass
class BankLoss:
    """What :func:`memory_bank_loss` returns.

    Attributes:
        loss: the scalar training loss (with gradient).
        bank_share: ``1 - L_in_batch / L`` in ``[0, 1)``, the part of the loss due to the bank's negatives
            (0 when the bank served nothing); a detached diagnostic for the training log.
        served: whether the bank served any negative this step.
    """

    loss: torch.Tensor
    bank_share: float
    served: bool


def memory_bank_loss(
    bank: MemoryBank,
    logits_per_query: torch.Tensor,
    query_embeds: torch.Tensor,
    logit_scale: torch.Tensor | float,
    target_ids: torch.Tensor,
    step: int,
    exclude_ids: torch.Tensor | None = None,
) -> BankLoss:
    r"""CSMCIR's training objective: in-batch InfoNCE with the bank's selected negatives in the denominator.

    .. math::

        L = -\frac{1}{B} \sum_i \log \frac{\exp(s_{ii})}{\sum_j m_{ij} \exp(s_{ij}) + \sum_{m \in K_i} \exp(\ell_{im})}

    with ``s`` the in-batch logits (``logits_per_query``), ``m_ij`` the in-batch false-negative mask
    (``csmcir_contrastive_loss``) and ``\ell_{im}`` the bank logits of the entries :meth:`MemoryBank.negative_logits`
    selects for query ``i`` (age- and bank-weighted). When the bank serves nothing (strategy ``none``, warm-up, no
    candidate) this is the plain in-batch InfoNCE, so the loss is computed exactly once either way.

    Computed without the dense ``(B, C)`` bank logits' graph (same value, to float rounding, as
    ``csmcir_contrastive_loss(logits_per_query, bank.negative_logits(...), target_ids)``):
    ``L = mean_i [logaddexp(lse_i(in-batch), lse_i(bank)) - s_ii]``, where ``lse_i(bank)`` is a log-sum-exp over
    the served entries only: for ``hard`` / ``entropy`` over the ``k_max`` gathered entries (so the gradient is a
    ``(B x k_max x D)`` product), for ``fifo`` over every candidate with the one-product backward of
    ``_ServedLogSumExp``.
    """
    selection = bank._selection(query_embeds, logit_scale, target_ids, step, exclude_ids)
    if selection is None:
        return BankLoss(csmcir_contrastive_loss(logits_per_query, None, target_ids), 0.0, False)
    with torch.no_grad():
        # The in-batch part of the same logits, for the log only (no graph): share = 1 - L_in_batch / L. It also
        # checks the shapes of logits_per_query and target_ids.
        in_batch = csmcir_contrastive_loss(logits_per_query.detach(), None, target_ids)
    if bank.tokens_per_entry is not None and selection.top is None:
        # Token-level fifo: the max over tokens has no cheap dense backward; autograd through the dense logits.
        extra = bank._dense_logits(query_embeds, logit_scale, step, selection)
        loss = csmcir_contrastive_loss(logits_per_query, extra, target_ids)
    else:
        bank_lse = _bank_log_sum_exp(bank, selection, query_embeds, logit_scale)
        batch = logits_per_query.shape[0]
        duplicate = target_ids.reshape(-1, 1) == target_ids.reshape(1, -1)
        duplicate.fill_diagonal_(False)
        batch_lse = torch.logsumexp(logits_per_query.masked_fill(duplicate, float("-inf")), dim=1)
        total = torch.logaddexp(batch_lse, bank_lse.to(batch_lse.dtype))
        loss = (total - logits_per_query.diagonal()).sum() / batch
    share = float(1.0 - in_batch / loss.detach().clamp(min=1e-12))
    return BankLoss(loss, share, True)


def _bank_log_sum_exp(
    bank: MemoryBank, selection: _Selection, query_embeds: torch.Tensor, logit_scale: torch.Tensor | float
) -> torch.Tensor:
    """``(B,)`` log-sum-exp of each query's served bank logits (``-inf`` where none is served), with gradient
    into ``query_embeds`` and ``logit_scale``."""
    scale = logit_scale if torch.is_tensor(logit_scale) else torch.tensor(float(logit_scale))
    scale = scale.to(device=query_embeds.device, dtype=torch.float32)
    queries = query_embeds.float()
    embeddings = bank.embeddings.to(query_embeds.device)
    if selection.top is None:  # fifo, vector entries
        return _ServedLogSumExp.apply(queries, scale, selection.work, embeddings, selection.n)
    top, chosen = selection.top.to(query_embeds.device), selection.chosen.to(query_embeds.device)
    if bank.tokens_per_entry is None:
        # The ranked entries' logits are already in the selection's buffer: gather them, mask the unchosen.
        work = selection.work.gather(1, top).masked_fill_(~chosen, MASKED)
        return _ServedLogSumExp.apply(queries, scale, work, embeddings, chosen.sum(dim=1), top)
    # Token-level: autograd through the gathered (B, k, K, D) entries (the max over tokens picks one per entry).
    entries = embeddings.index_select(0, top.reshape(-1)).view(*top.shape, *bank.entry_shape)
    similarities = torch.einsum("bd,bktd->bkt", queries, entries).amax(dim=2)
    logits = (scale * similarities + selection.bias.to(query_embeds.device)[top]).masked_fill(~chosen, float("-inf"))
    served = chosen.any(dim=1).nonzero().squeeze(1)
    lse = torch.full((logits.shape[0],), float("-inf"), dtype=logits.dtype, device=logits.device)
    # Rows serving nothing stay -inf (a log-sum-exp over -inf alone would give a NaN gradient).
    return lse.index_put((served,), torch.logsumexp(logits.index_select(0, served), dim=1))


__all__ = ["BANK_STRATEGIES", "BankLoss", "BankSelection", "EMPTY_ID", "MemoryBank", "check_bank_settings",
           "memory_bank_loss"]
