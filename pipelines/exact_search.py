"""Exact top-k cosine search over a stored embedding matrix: the kernel behind `GalleryIndex.search(backend="torch")`.

Rows are L2-normalised vectors `(N, D)` or token-level items `(N, K, D)` (scored by the maximum over tokens); queries
are L2-normalised float32 `(Q, D)`. The gallery is scanned in blocks whose `(Q x rows)` score block stays under
`SCORE_BLOCK_ELEMENTS`, with a running top-k, so large query batches never materialise a `Q x N` matrix.
Half-precision storage is searched exactly through a half-precision shortlist rescored in float32
(`shortlist_and_rescore`).

This file is a flat Hub-module sibling of `gallery_index.py`: it imports only torch.
"""

from __future__ import annotations

import torch


# Budget for one block of the (queries x gallery rows) score matrix in exact search: 2**25 float32 = 128 MiB.
SCORE_BLOCK_ELEMENTS = 1 << 25
# 2δ for half-precision shortlists (see `shortlist_and_rescore`), and the shortlist's starting width.
HALF_SCORE_MARGIN = {torch.float16: 1e-2, torch.bfloat16: 4e-2}
SHORTLIST_MIN_WIDTH = 64


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


def shortlist_and_rescore(queries: torch.Tensor, block: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of float32 `queries` against half-precision rows, at the cost of one half-precision matmul.

    The half matmul gives ŝ with |ŝ - s| ≤ δ (query rounding + half output rounding; measured ≤ 1e-4 for float16 and
    ≤ 1.1e-3 for bfloat16 on unit vectors, δ is set 5-20x above that). If t is the k-th largest ŝ, every true top-k
    row has ŝ ≥ t - 2δ, so the rows with ŝ ≥ t - 2δ are a complete shortlist: widen the shortlist until its last
    score is below t - 2δ, then rescore it in float32 (s = q · float32(g)) and take the exact top-k. One big matmul
    instead of up-casting the gallery block by block: the up-cast path made many small parallel ops that stalled on
    a loaded 2-core machine, and a float32 copy per block costs page faults.
    """
    margin = HALF_SCORE_MARGIN[block.dtype]
    if block.ndim == 3:
        # Token-level rows: each token's half score is within δ of its exact score, so the max over tokens is too.
        items, tokens, dim = block.shape
        approximate = (queries.to(block.dtype) @ block.reshape(items * tokens, dim).T).view(-1, items, tokens).amax(dim=2)
    else:
        approximate = queries.to(block.dtype) @ block.T
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
    """Exact search: score blocks of gallery rows with one matmul each, keep a running top-k.

    Args:
        gallery: `(N, D)` or `(N, K, D)` stored rows (float32, float16 or bfloat16).
        queries: `(Q, D)` L2-normalised queries.
        top_k: hits per query, `1 <= top_k <= N`.

    Returns:
        `(Q, top_k)` scores (descending) and row positions (int64), on the gallery's device.

    A single query scans the whole gallery in one GEMV (memory-bound: the floor is bytes(gallery) / bandwidth).
    Half-precision storage goes through `shortlist_and_rescore`.
    """
    queries = queries.to(device=gallery.device, dtype=torch.float32)
    num_queries, num_items = queries.shape[0], gallery.shape[0]
    rows = block_rows(num_queries, gallery.shape[1] if gallery.ndim == 3 else None)
    best_scores: torch.Tensor | None = None
    best_positions: torch.Tensor | None = None
    for start in range(0, num_items, rows):
        block = gallery[start : start + rows]
        if block.ndim == 3 and block.dtype == torch.float32:
            # Token-level: the block's max-over-tokens scores, then its top-k items.
            block_scores, block_positions = token_scores(queries, block).topk(min(top_k, block.shape[0]), dim=1)
        elif block.dtype == torch.float32:
            block_scores, block_positions = (queries @ block.T).topk(min(top_k, block.shape[0]), dim=1)
        else:
            block_scores, block_positions = shortlist_and_rescore(queries, block, min(top_k, block.shape[0]))
        block_positions += start
        if best_scores is None:
            best_scores, best_positions = block_scores, block_positions
        else:
            merged_scores = torch.cat([best_scores, block_scores], dim=1)
            merged_positions = torch.cat([best_positions, block_positions], dim=1)
            best_scores, order = merged_scores.topk(min(top_k, merged_scores.shape[1]), dim=1)
            best_positions = merged_positions.gather(1, order)
    return best_scores, best_positions
