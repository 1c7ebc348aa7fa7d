"""Composed image retrieval metrics under the official protocols of CIRR, FashionIQ, CIRCO and Shoes.

Everything here is a pure function on score matrices (``scores[q, g]`` = similarity of query ``q`` and
gallery image ``g``) or on rankings (lists of gallery ids, best first). This is the one implementation of
the protocols; the ``evaluate`` modules in ``evaluate_modules/`` and :mod:`.evaluator` call it.

Protocols (as the benchmarks' official evaluation code defines them):

* **CIRR** (rc2): the reference image is removed from the ranking; Recall@{1,5,10,50} over the whole split
  gallery; Recall_subset@{1,2,3} ranks only the ``img_set`` members other than the reference (5 candidates);
  headline ``(R@5 + Rsubset@1) / 2``.
* **FashionIQ**: gallery = the category's validation split, reference **kept**; R@10 and R@50 per category,
  averaged over categories, headline ``(avg R@10 + avg R@50) / 2``.
* **CIRCO**: ``mAP@K`` with ``AP@K = sum_{i<=K} P@i * rel_i / min(|GT|, K)``, K in {5, 10, 25, 50}.
* **Shoes**: Recall@{1,10,50}, reference kept.

Ties in scores are broken by gallery order (a stable sort), so results are deterministic. All metric values
are percentages (x100), as the literature reports them, and every result dict carries a ``"protocol"`` key
saying which protocol produced it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from transformers.utils import logging


logger = logging.get_logger(__name__)

CIRR_RECALL_KS: tuple[int, ...] = (1, 5, 10, 50)
CIRR_SUBSET_KS: tuple[int, ...] = (1, 2, 3)
FASHIONIQ_KS: tuple[int, ...] = (10, 50)
FASHIONIQ_CATEGORIES: tuple[str, ...] = ("dress", "shirt", "toptee")
CIRCO_KS: tuple[int, ...] = (5, 10, 25, 50)
SHOES_KS: tuple[int, ...] = (1, 10, 50)

PROTOCOLS: dict[str, str] = {
    "cirr": "cirr-rc2: gallery = all images of the split, reference removed from the ranking; "
    "Recall@{1,5,10,50}; Recall_subset@{1,2,3} over img_set members minus the reference; avg = (R@5 + Rs@1)/2",
    "fashioniq": "fashioniq: gallery = category validation split, reference kept; R@10/R@50 per category, "
    "averaged over categories; avg = (R@10 + R@50)/2",
    "circo": "circo: gallery = COCO unlabeled images; mAP@{5,10,25,50}, AP@K = sum_{i<=K} P@i*rel_i / min(|GT|,K)",
    "shoes": "shoes: gallery = evaluation images, reference kept; Recall@{1,10,50}",
}

IdLike = str | int


def _as_score_matrix(scores, num_gallery: int | None = None, name: str = "scores") -> np.ndarray:
    """Convert a torch tensor / array / nested list of scores to a float64 (Q, G) numpy array."""
    if hasattr(scores, "detach"):
        scores = scores.detach().float().cpu().numpy()
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (num_queries, num_gallery) matrix; got shape {array.shape}")
    if num_gallery is not None and array.shape[1] != num_gallery:
        raise ValueError(f"{name} has {array.shape[1]} columns but the gallery has {num_gallery} ids")
    if np.isnan(array).any():
        raise ValueError(f"{name} contains NaN")
    return array


def _check_length(name: str, values: Sequence, expected: int) -> None:
    if len(values) != expected:
        raise ValueError(f"{name} has {len(values)} entries; expected one per query ({expected})")


def rank_gallery(
    scores,
    gallery_ids: Sequence[IdLike],
    exclude_ids: Sequence[IdLike | None] | None = None,
    top_k: int | None = None,
) -> list[list[str]]:
    """Rank the gallery for every query, best first, as lists of gallery ids (strings).

    ``ranking_q = argsort(-scores[q])`` with a stable sort (ties keep gallery order). When ``exclude_ids[q]``
    is given, that id (e.g. CIRR's reference image) is removed from query ``q``'s ranking.

    Args:
        scores: (Q, G) similarity matrix.
        gallery_ids: the G gallery ids, in column order.
        exclude_ids: per query, an id to drop from its ranking (or ``None``).
        top_k: keep only the first ``top_k`` ids of each ranking (after exclusion).
    """
    gallery = [str(g) for g in gallery_ids]
    matrix = _as_score_matrix(scores, len(gallery))
    if exclude_ids is not None:
        _check_length("exclude_ids", exclude_ids, matrix.shape[0])
    order = np.argsort(-matrix, axis=1, kind="stable")
    gallery_array = np.asarray(gallery, dtype=object)
    position = {gid: i for i, gid in enumerate(gallery)}
    keep = matrix.shape[1] if top_k is None else top_k
    rankings: list[list[str]] = []
    for q in range(matrix.shape[0]):
        row = order[q]
        excluded = None if exclude_ids is None or exclude_ids[q] is None else position.get(str(exclude_ids[q]))
        if excluded is not None:
            row = row[row != excluded]
        rankings.append(gallery_array[row[:keep]].tolist())
    return rankings


def _normalise_targets(targets: Sequence[IdLike | Sequence[IdLike]]) -> list[set[str]]:
    """Each query's relevant ids as a set of strings (a single id or a list of ids)."""
    normalised = []
    for t in targets:
        if isinstance(t, (str, int, np.integer)):
            normalised.append({str(t)})
        else:
            normalised.append({str(x) for x in t if x is not None and str(x) != ""})
    return normalised


def recall_at_k(
    rankings: Sequence[Sequence[IdLike]],
    targets: Sequence[IdLike | Sequence[IdLike]],
    ks: Sequence[int],
    prefix: str = "recall",
) -> dict[str, float]:
    """Recall@K in percent: ``100 * mean_q [ any target of q in ranking_q[:K] ]``.

    ``targets[q]`` is one id or a list of ids (a hit on any counts). Keys are ``f"{prefix}_at_{K}"``.
    """
    _check_length("targets", targets, len(rankings))
    if len(rankings) == 0:
        raise ValueError("recall_at_k needs at least one query (got 0 rankings)")
    relevant = _normalise_targets(targets)
    results = {}
    for k in ks:
        if k <= 0:
            raise ValueError(f"K must be positive; got {k}")
        hits = [bool(rel.intersection(str(x) for x in ranking[:k])) for ranking, rel in zip(rankings, relevant)]
        results[f"{prefix}_at_{k}"] = 100.0 * float(np.mean(hits))
    return results


def subset_rankings(
    rankings: Sequence[Sequence[IdLike]],
    img_sets: Sequence[Sequence[IdLike]],
    reference_ids: Sequence[IdLike],
) -> list[list[str]]:
    """Restrict each full ranking to its ``img_set`` members, the reference removed (CIRR's subset rule).

    The rankings must contain every member (rank the whole gallery, or rank only the members).
    """
    _check_length("img_sets", img_sets, len(rankings))
    _check_length("reference_ids", reference_ids, len(rankings))
    subsets = []
    for q, (ranking, members, ref) in enumerate(zip(rankings, img_sets, reference_ids)):
        allowed = {str(m) for m in members} - {str(ref)}
        ranked = [str(x) for x in ranking if str(x) in allowed]
        if len(ranked) != len(allowed):
            missing = sorted(allowed - set(ranked))
            raise ValueError(
                f"query {q}: ranking lacks img_set members {missing[:5]}; rank the whole gallery (top_k=None)"
            )
        subsets.append(ranked)
    return subsets


def average_precision_at_k(ranking: Sequence[IdLike], relevant: set[str], k: int) -> float:
    """CIRCO's AP@K = sum_{i<=K} P@i * rel_i / min(|GT|, K) (a fraction in [0, 1])."""
    if not relevant:
        raise ValueError("average_precision_at_k needs at least one ground-truth id")
    hits = 0
    precision_sum = 0.0
    for i, gid in enumerate(ranking[:k], start=1):
        if str(gid) in relevant:
            hits += 1
            precision_sum += hits / i
    return precision_sum / min(len(relevant), k)


def map_at_k(
    rankings: Sequence[Sequence[IdLike]],
    ground_truth: Sequence[Sequence[IdLike]],
    ks: Sequence[int] = CIRCO_KS,
) -> dict[str, float]:
    """mAP@K in percent over queries with CIRCO's ``min(|GT|, K)`` denominator; keys ``map_at_{K}``."""
    _check_length("ground_truth", ground_truth, len(rankings))
    if len(rankings) == 0:
        raise ValueError("map_at_k needs at least one query (got 0 rankings)")
    relevant = _normalise_targets(ground_truth)
    results = {}
    for k in ks:
        aps = [average_precision_at_k(r, rel, k) for r, rel in zip(rankings, relevant)]
        results[f"map_at_{k}"] = 100.0 * float(np.mean(aps))
    return results


def cirr_metrics(
    scores,
    gallery_ids: Sequence[IdLike],
    reference_ids: Sequence[IdLike],
    target_ids: Sequence[IdLike],
    img_sets: Sequence[Sequence[IdLike]] | None = None,
    ks: Sequence[int] = CIRR_RECALL_KS,
    subset_ks: Sequence[int] = CIRR_SUBSET_KS,
) -> dict[str, float | str]:
    """CIRR rc2 metrics: Recall@K with the reference removed, Recall_subset@K over ``img_set`` members.

    Returns ``recall_at_{K}``, ``recall_subset_at_{K}`` (when ``img_sets`` are given),
    ``avg = (recall_at_5 + recall_subset_at_1) / 2`` and ``protocol``.
    """
    rankings = rank_gallery(scores, gallery_ids, exclude_ids=reference_ids)
    results: dict[str, float | str] = dict(recall_at_k(rankings, target_ids, ks))
    if img_sets is not None:
        subsets = subset_rankings(rankings, img_sets, reference_ids)
        results.update(recall_at_k(subsets, target_ids, subset_ks, prefix="recall_subset"))
        if "recall_at_5" in results and "recall_subset_at_1" in results:
            results["avg"] = (results["recall_at_5"] + results["recall_subset_at_1"]) / 2
    results["protocol"] = PROTOCOLS["cirr"]
    return results


def fashioniq_metrics(
    scores,
    gallery_ids: Sequence[IdLike],
    target_ids: Sequence[IdLike],
    category: str | None = None,
    ks: Sequence[int] = FASHIONIQ_KS,
) -> dict[str, float | str]:
    """FashionIQ metrics for one category: Recall@10/50 with the reference kept in the gallery."""
    rankings = rank_gallery(scores, gallery_ids, top_k=max(ks))
    results: dict[str, float | str] = dict(recall_at_k(rankings, target_ids, ks))
    if "recall_at_10" in results and "recall_at_50" in results:
        results["avg"] = (results["recall_at_10"] + results["recall_at_50"]) / 2
    results["protocol"] = PROTOCOLS["fashioniq"] + (f"; category={category}" if category else "")
    return results


def fashioniq_average(per_category: Mapping[str, Mapping[str, float | str]]) -> dict[str, float | str]:
    """Average FashionIQ per-category results: ``R@K = mean_c R@K(c)``; ``avg = (R@10 + R@50) / 2``.

    Returns the per-category values as ``{cat}_recall_at_{K}`` plus the averages ``recall_at_{K}``.
    """
    if not per_category:
        raise ValueError("fashioniq_average needs at least one category result")
    results: dict[str, float | str] = {}
    metric_keys = [k for k, v in next(iter(per_category.values())).items() if k.startswith("recall_at_")]
    for cat, res in per_category.items():
        for key in metric_keys:
            if key not in res:
                raise ValueError(f"category {cat!r} result lacks {key!r} (has {sorted(res)})")
            results[f"{cat}_{key}"] = float(res[key])
    for key in metric_keys:
        results[key] = float(np.mean([float(res[key]) for res in per_category.values()]))
    if "recall_at_10" in results and "recall_at_50" in results:
        results["avg"] = (results["recall_at_10"] + results["recall_at_50"]) / 2
    results["protocol"] = PROTOCOLS["fashioniq"] + f"; categories={','.join(per_category)}"
    return results


def circo_metrics(
    scores,
    gallery_ids: Sequence[IdLike],
    gt_ids: Sequence[Sequence[IdLike]],
    ks: Sequence[int] = CIRCO_KS,
) -> dict[str, float | str]:
    """CIRCO metrics: mAP@{5,10,25,50} over the ranked gallery (reference not removed)."""
    rankings = rank_gallery(scores, gallery_ids, top_k=max(ks))
    results: dict[str, float | str] = dict(map_at_k(rankings, gt_ids, ks))
    results["protocol"] = PROTOCOLS["circo"]
    return results


def shoes_metrics(
    scores,
    gallery_ids: Sequence[IdLike],
    target_ids: Sequence[IdLike],
    ks: Sequence[int] = SHOES_KS,
) -> dict[str, float | str]:
    """Shoes metrics: Recall@{1,10,50} with the reference kept; ``avg`` = mean of the recalls."""
    rankings = rank_gallery(scores, gallery_ids, top_k=max(ks))
    results: dict[str, float | str] = dict(recall_at_k(rankings, target_ids, ks))
    results["avg"] = float(np.mean([results[f"recall_at_{k}"] for k in ks]))
    results["protocol"] = PROTOCOLS["shoes"]
    return results


def compute_cir_metrics(
    benchmark: str,
    scores,
    gallery_ids: Sequence[IdLike],
    *,
    reference_ids: Sequence[IdLike] | None = None,
    target_ids: Sequence[IdLike] | None = None,
    gt_ids: Sequence[Sequence[IdLike]] | None = None,
    img_sets: Sequence[Sequence[IdLike]] | None = None,
    category: str | None = None,
) -> dict[str, float | str]:
    """Dispatch to the protocol of ``benchmark`` (``cirr``, ``fashioniq``, ``circo`` or ``shoes``)."""
    if benchmark == "cirr":
        if reference_ids is None or target_ids is None:
            raise ValueError("cirr metrics need reference_ids and target_ids")
        return cirr_metrics(scores, gallery_ids, reference_ids, target_ids, img_sets)
    if benchmark == "fashioniq":
        if target_ids is None:
            raise ValueError("fashioniq metrics need target_ids")
        return fashioniq_metrics(scores, gallery_ids, target_ids, category=category)
    if benchmark == "circo":
        if gt_ids is None:
            raise ValueError("circo metrics need gt_ids")
        return circo_metrics(scores, gallery_ids, gt_ids)
    if benchmark == "shoes":
        if target_ids is None:
            raise ValueError("shoes metrics need target_ids")
        return shoes_metrics(scores, gallery_ids, target_ids)
    raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {sorted(PROTOCOLS)}")
