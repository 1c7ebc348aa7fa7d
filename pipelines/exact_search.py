"""Exact top-k cosine search over a stored embedding matrix: the kernel behind `GalleryIndex.search(backend="torch")`.

Rows are L2-normalised vectors `(N, D)` or token-level items `(N, K, D)` (scored by the maximum over tokens); queries
are L2-normalised float32 `(Q, D)`. The gallery is scanned in blocks whose `(Q x rows)` score block stays under
`SCORE_BLOCK_ELEMENTS`, with a running top-k, so large query batches never materialise a `Q x N` matrix.

Where the time goes, and what this file does about it (profiles in `benchmarks/results/gallery_search.md`):

* small batches are memory-bound (every stored byte is read once per search): one matrix product over as many rows
  as the budget allows, so there is one large GEMV/GEMM call, not many small ones;
* large batches are compute-bound (2·Q·N·D flops), and a `torch.topk` over every score costs about half of the
  matrix product that made it. A running threshold removes most of it: with `t_i` the current k-th best score of
  query i, a block can only change query i's top-k if its largest score exceeds `t_i`, so only those queries'
  rows of the block are ranked (`amax` is ~10x cheaper than `topk`). After the first blocks `t_i` is high and few
  blocks pass: with `n` blocks seen, a block holds one of the top-k with probability about `k / n`;
* score blocks are written into one buffer allocated once per search (`torch.mm(..., out=)`): a fresh 16-128 MiB
  tensor per block costs page faults that a loaded machine turns into milliseconds.

Half-precision storage is searched exactly through a half-precision shortlist rescored in float32
(`shortlist_and_rescore`); the same threshold prunes its blocks, widened by the shortlist's error bound.

This file is a flat Hub-module sibling of `gallery_index.py`: it imports only torch.
"""

from __future__ import annotations

import torch


# Budget for one block of the (queries x gallery rows) score matrix: 2**21 float32 = 8 MiB. Small batches still
# scan ~1M rows per matrix product (memory-bound: few, large calls); large batches get blocks of a few thousand
# rows, small enough for the running threshold to skip most of them (the ranking work per query is about
# k·b·(1 + ln(N / (k·b))) scores for blocks of b rows, ~10% of N for 1024 queries over 1M rows) and for the block
# to stay in cache while it is ranked, large enough that each matrix product still runs at full GEMM speed.
SCORE_BLOCK_ELEMENTS = 1 << 21
# 2δ for half-precision shortlists (see `shortlist_and_rescore`), and the shortlist's starting width.
HALF_SCORE_MARGIN = {torch.float16: 1e-2, torch.bfloat16: 4e-2}
SHORTLIST_MIN_WIDTH = 64
# From this many queries on, half-precision blocks are up-cast to float32 and scored by sgemm (compute-bound; the
# up-cast costs about as much as the half GEMM it replaces at 64 queries, measured loaded: 1.26x vs 1.23x of float32).
UPCAST_MIN_QUERIES = 64


def block_rows(num_queries: int, tokens_per_item: int | None) -> int:
    """Items per scoring block: keeps the (Q x items x K) score block under `SCORE_BLOCK_ELEMENTS`."""
    per_item = tokens_per_item or 1
    return max(1024 // per_item, SCORE_BLOCK_ELEMENTS // max(1, num_queries * per_item), 1)


def token_scores(queries: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """`(Q, b)` max-over-tokens scores of float32 `queries` against a `(b, K, D)` block of stored tokens (float32
    dot products with the stored values, whatever their storage dtype: exact with respect to them)."""
    items, tokens, dim = block.shape
    flat = block.reshape(items * tokens, dim).float()
    return (queries @ flat.T).view(queries.shape[0], items, tokens).amax(dim=2)


def _approximate_scores(queries: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """`(Q, b)` scores in the block's own (half) precision: ŝ with |ŝ - s| ≤ δ (see `shortlist_and_rescore`)."""
    if block.ndim == 3:
        # Token-level rows: each token's half score is within δ of its exact score, so the max over tokens is too.
        items, tokens, dim = block.shape
        return (queries.to(block.dtype) @ block.reshape(items * tokens, dim).T).view(-1, items, tokens).amax(dim=2)
    return queries.to(block.dtype) @ block.T


def shortlist_and_rescore(
    queries: torch.Tensor, block: torch.Tensor, top_k: int, approximate: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of float32 `queries` against half-precision rows, at the cost of one half-precision matmul.

    The half matmul gives ŝ with |ŝ - s| ≤ δ (query rounding + half output rounding; measured ≤ 1e-4 for float16 and
    ≤ 1.1e-3 for bfloat16 on unit vectors, δ is set 5-20x above that). If t is the k-th largest ŝ, every true top-k
    row has ŝ ≥ t - 2δ, so the rows with ŝ ≥ t - 2δ are a complete shortlist: widen the shortlist until its last
    score is below t - 2δ, then rescore it in float32 (s = q · float32(g)) and take the exact top-k. One big matmul
    instead of up-casting the gallery block by block: the up-cast path made many small parallel ops that stalled on
    a loaded 2-core machine, and a float32 copy per block costs page faults.

    Args:
        queries: `(Q, D)` float32.
        block: `(b, D)` or `(b, K, D)` half-precision rows.
        top_k: `1 <= top_k <= b`.
        approximate: the `(Q, b)` half scores ŝ when the caller already has them.
    """
    margin = HALF_SCORE_MARGIN[block.dtype]
    if approximate is None:
        approximate = _approximate_scores(queries, block)
    num_rows = block.shape[0]
    width = min(num_rows, max(SHORTLIST_MIN_WIDTH, 4 * top_k))
    while True:
        shortlist_scores, shortlist = approximate.topk(width, dim=1)
        kth = shortlist_scores[:, top_k - 1].float()
        if width == num_rows or bool((shortlist_scores[:, -1].float() < kth - margin).all()):
            break
        width = min(num_rows, width * 4)
    if block.ndim == 3:
        exact = torch.einsum("qnkd,qd->qnk", block[shortlist].float(), queries).amax(dim=2)
    else:
        exact = torch.bmm(block[shortlist].float(), queries.unsqueeze(2)).squeeze(2)
    scores, order = exact.topk(top_k, dim=1)
    return scores, shortlist.gather(1, order)


def exact_search(gallery: torch.Tensor, queries: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact search: score blocks of gallery rows with one matmul each, keep a running top-k per query.

    Args:
        gallery: `(N, D)` or `(N, K, D)` stored rows (float32, float16 or bfloat16).
        queries: `(Q, D)` L2-normalised queries.
        top_k: hits per query, `1 <= top_k <= N`.

    Returns:
        `(Q, top_k)` scores (descending) and row positions (int64), on the gallery's device. Scores are the float32
        dot products of the queries with the stored values (the maximum over tokens for token-level rows); among
        rows with equal scores any may be returned.

    Pruning (exact): with `t_i` the k-th best score query i has so far, block rows `B` can only enter query i's top-k
    if `max_{j in B} s_ij > t_i`; for half-precision blocks, whose scores ŝ are within δ of s, if
    `max ŝ_ij ≥ t_i - 2δ`. Only those queries' rows of the block are ranked and merged. A single query scans the
    whole gallery in one GEMV (memory-bound: the floor is bytes(gallery) / bandwidth).
    """
    queries = queries.to(device=gallery.device, dtype=torch.float32)
    num_queries, num_items = queries.shape[0], gallery.shape[0]
    tokens = gallery.shape[1] if gallery.ndim == 3 else None
    rows = min(block_rows(num_queries, tokens), num_items)
    # Half-precision storage: small batches are memory-bound, so they read the half values as they are (half the
    # bytes) through the shortlist; large batches are compute-bound and CPU half GEMMs are slow, so each block is
    # up-cast once into a float32 buffer (exact: every half value is a float32 value) and scored by sgemm.
    upcast = gallery.dtype != torch.float32 and num_queries >= UPCAST_MIN_QUERIES
    half = gallery.dtype != torch.float32 and not upcast
    margin = HALF_SCORE_MARGIN[gallery.dtype] if half else 0.0
    # One score buffer for every float32 vector block (the last, shorter block uses a prefix of it).
    buffer = torch.empty(num_queries * rows, dtype=torch.float32, device=gallery.device) if not half and tokens is None else None
    block_buffer = torch.empty((rows, *gallery.shape[1:]), dtype=torch.float32, device=gallery.device) if upcast else None
    best_scores = torch.full((num_queries, top_k), float("-inf"), dtype=torch.float32, device=gallery.device)
    best_positions = torch.zeros((num_queries, top_k), dtype=torch.long, device=gallery.device)
    filled = 0  # rows scanned so far; the running top-k is complete once filled >= top_k
    for start in range(0, num_items, rows):
        block = gallery[start : start + rows]
        size = block.shape[0]
        if upcast:
            block = block_buffer[:size].copy_(block)
        if half:
            scores = _approximate_scores(queries, block)
        elif tokens is not None:
            scores = token_scores(queries, block)
        else:
            scores = torch.mm(queries, block.T, out=buffer[: num_queries * size].view(num_queries, size))
        if filled >= top_k:
            # Queries whose top-k this block can change (strict: a row tying the k-th best adds nothing).
            block_max = scores.amax(dim=1).float()
            threshold = best_scores[:, top_k - 1]
            active = (block_max >= threshold - margin) if half else (block_max > threshold)
            active_rows = active.nonzero().squeeze(1)
            if active_rows.numel() == 0:
                filled += size
                continue
            if 2 * active_rows.numel() <= num_queries:  # few queries active: rank only their rows (copy is cheap)
                scores = scores.index_select(0, active_rows)
                block_queries = queries.index_select(0, active_rows)
            else:
                active_rows, block_queries = None, queries  # most active: ranking all beats copying them
        else:
            active_rows, block_queries = None, queries
        k = min(top_k, size)
        if half:
            block_scores, block_positions = shortlist_and_rescore(block_queries, block, k, approximate=scores)
        else:
            block_scores, block_positions = scores.topk(k, dim=1)
        block_positions += start
        if active_rows is None:
            merged_scores = torch.cat([best_scores, block_scores], dim=1)
            merged_positions = torch.cat([best_positions, block_positions], dim=1)
            best_scores, order = merged_scores.topk(top_k, dim=1)
            best_positions = merged_positions.gather(1, order)
        else:
            merged_scores = torch.cat([best_scores.index_select(0, active_rows), block_scores], dim=1)
            merged_positions = torch.cat([best_positions.index_select(0, active_rows), block_positions], dim=1)
            new_scores, order = merged_scores.topk(top_k, dim=1)
            best_scores.index_copy_(0, active_rows, new_scores)
            best_positions.index_copy_(0, active_rows, merged_positions.gather(1, order))
        filled += size
    return best_scores, best_positions
