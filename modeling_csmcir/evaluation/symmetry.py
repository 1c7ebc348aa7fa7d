"""Symmetry diagnostics of the dual tower: how close composed queries sit to their targets, and a t-SNE picture.

For each model it embeds, on a pre-processed CIRR-layout split, reference images (image-only features: what a
query starts from), composed queries (reference image + modification text) and the queries' targets (as the model
encodes its gallery), jointly in 2-D with scikit-learn's t-SNE, one panel per model, with a thin line from each
query to its target. :func:`symmetry_stats` gives the mean cosine between a query and its own target and the
distance between the query and target centroids (the "modality gap" the symmetric tower is meant to close).
``csmcir-visualize`` is the command-line front end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from hub_cards.atomic_files import atomic_path

from ..cached_training import CachedCIRSplit, encode_cached
from ..modeling_csmcir import CSMCIRModel


def symmetry_stats(queries: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Mean positive cosine ``mean_i q_i·t_i`` and centroid gap ``‖mean_i q_i − mean_i t_i‖₂`` (unit vectors)."""
    return {
        "mean_query_target_cosine": float((queries * targets).sum(-1).mean()),
        "centroid_gap": float((queries.mean(0) - targets.mean(0)).norm()),
    }


def plot_symmetry_tsne(
    models: Mapping[str, tuple[CSMCIRModel, bool]],
    split: CachedCIRSplit,
    rows: Sequence[int],
    output_file: str | Path,
    perplexity: float = 30.0,
    seed: int = 0,
    split_name: str = "val",
) -> dict[str, dict[str, float]]:
    """Draw one t-SNE panel per ``{name: (model, use_target_captions)}`` over the queries ``rows`` of ``split``,
    write the PNG atomically to ``output_file`` and return each model's :func:`symmetry_stats`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    rows = np.asarray(rows)
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 5.5), squeeze=False)
    stats = {}
    for ax, (name, (model, captions)) in zip(axes[0], models.items()):
        with torch.no_grad():
            feats = encode_cached(model, split, captions)
        ref = feats["images"][split.ref[rows]]
        qry = feats["queries"][rows]
        tgt = feats["gallery"][split.tgt[rows]]
        stats[name] = symmetry_stats(qry, tgt)
        points = torch.cat([ref, qry, tgt]).numpy()
        xy = TSNE(n_components=2, perplexity=min(perplexity, (len(points) - 1) / 3), random_state=seed,
                  init="pca").fit_transform(points)
        n = len(rows)
        for i in range(n):
            ax.plot([xy[n + i, 0], xy[2 * n + i, 0]], [xy[n + i, 1], xy[2 * n + i, 1]], color="grey", linewidth=0.3, alpha=0.5)
        for k, (label, marker, colour) in enumerate((("reference image", "s", "tab:green"), ("query", "o", "tab:blue"),
                                                     ("target", "^", "tab:red"))):
            ax.scatter(xy[k * n : (k + 1) * n, 0], xy[k * n : (k + 1) * n, 1], s=12, marker=marker, c=colour, label=label, alpha=0.8)
        ax.set_title(f"{name}\nmean cos(query, target) = {stats[name]['mean_query_target_cosine']:.2f}, "
                     f"centroid gap = {stats[name]['centroid_gap']:.2f}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"t-SNE of CSMCIR features on {len(rows)} {split_name} queries (lines: query → its target)")
    fig.tight_layout()
    out = Path(output_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return stats


__all__ = ["plot_symmetry_tsne", "symmetry_stats"]
