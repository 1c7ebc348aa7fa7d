"""``csmcir-visualize``: the paper's motivating picture — t-SNE of reference, query and target features.

For the asymmetric baseline (targets encoded from the image alone) and for the full model (targets encoded
from image + caption through the same tower as queries) it embeds, on a CIRR-layout split:

* reference images (image-only features of the reference: what the query starts from),
* composed queries (reference image + modification text),
* the queries' targets (how each model encodes its gallery),

jointly in 2-D with scikit-learn's t-SNE, one panel per model, and draws a thin line from each query to its
target. Alongside the picture it prints, per model, the mean cosine between a query and its own target and
the distance between the query and target centroids (the "modality gap" the symmetric tower is meant to close).

Models come from saved folders (``--full_model``, ``--asymmetric_model``, e.g. the seed-0 models that
``benchmarks/ablation_csmcir.py`` saves) or are trained on the fly with ``CSMCIRTrainer`` when a folder is not given.

    csmcir-visualize --data_dir outputs/ablation_cir_data \
        --full_model outputs/ablation_csmcir_models/full --asymmetric_model outputs/ablation_csmcir_models/asymmetric \
        --output_file benchmarks/results/tsne_symmetry.png
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import HfArgumentParser
from transformers.utils import logging

from .cached_training import CachedCIRSplit, CachedRunSettings, encode_cached, quiet_transformers, small_csmcir_config, train_cached
from .modeling_csmcir import CSMCIRModel
from .processing_csmcir import CSMCIRProcessor
from .synthetic_cir import SyntheticCIRConfig, generate_synthetic_cir


logger = logging.get_logger(__name__)


@dataclass
class VisualizeArguments:
    output_file: str = field(default="benchmarks/results/tsne_symmetry.png", metadata={"help": "PNG to write."})
    data_dir: str = field(default="outputs/ablation_cir_data", metadata={"help": "CIRR-layout benchmark (generated if absent)."})
    split: str = field(default="val", metadata={"help": "Split whose queries are drawn."})
    full_model: str | None = field(default=None, metadata={"help": "Saved full model (captions on targets); trained if absent."})
    asymmetric_model: str | None = field(default=None, metadata={"help": "Saved asymmetric model (image-only targets); trained if absent."})
    num_queries: int = field(default=150, metadata={"help": "Queries drawn (each adds a reference, a query and a target point)."})
    image_size: int = field(default=32, metadata={"help": "Image size when generating data / training on the fly."})
    train_steps: int = field(default=150, metadata={"help": "Steps when training on the fly."})
    perplexity: float = field(default=30.0)
    seed: int = field(default=0)
    threads: int = field(default=1)


def _load_or_train(path: str | None, use_captions: bool, args: VisualizeArguments, train: CachedCIRSplit | None,
                   processor: CSMCIRProcessor) -> CSMCIRModel:
    if path is not None:
        if not (Path(path) / "config.json").is_file():
            raise ValueError(f"{path}: not a saved CSMCIR model folder (no config.json)")
        return CSMCIRModel.from_pretrained(path).eval()
    logger.warning(f"training the {'full' if use_captions else 'asymmetric'} model on the fly ({args.train_steps} steps)")
    config = small_csmcir_config(len(processor.tokenizer), image_size=args.image_size)
    # The Trainer needs an output folder; nothing from this throwaway run is kept.
    with tempfile.TemporaryDirectory(prefix="csmcir-visualize-") as scratch:
        settings = CachedRunSettings(use_target_captions=use_captions, seed=args.seed, max_steps=args.train_steps,
                                     batch_size=min(32, len(train)), output_dir=scratch)
        model, _ = train_cached(config, train, None, settings)
    return model


def symmetry_stats(queries: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Mean positive cosine ``mean_i q_i·t_i`` and centroid gap ``‖mean_i q_i − mean_i t_i‖₂`` (unit vectors)."""
    return {
        "mean_query_target_cosine": float((queries * targets).sum(-1).mean()),
        "centroid_gap": float((queries.mean(0) - targets.mean(0)).norm()),
    }


def run_visualization(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Parse `argv`, draw and write the PNG; returns the per-model symmetry statistics."""
    (args,) = HfArgumentParser(VisualizeArguments).parse_args_into_dataclasses(args=argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    torch.set_num_threads(args.threads)
    quiet_transformers()
    if not (Path(args.data_dir) / "metadata.json").is_file():
        generate_synthetic_cir(SyntheticCIRConfig(output_dir=args.data_dir, num_images=2400, image_size=args.image_size,
                                                  min_objects=1, max_objects=2, pairs_per_set=3))
    models = {}
    processor = None
    for name, path, captions in (("asymmetric baseline (image-only targets)", args.asymmetric_model, False),
                                 ("full model (image + caption targets, shared tower)", args.full_model, True)):
        if processor is None:
            processor = CSMCIRProcessor.from_pretrained(path) if path else CSMCIRProcessor.tiny(image_size=args.image_size)
        train = CachedCIRSplit(args.data_dir, "train", processor) if path is None else None
        models[name] = (_load_or_train(path, captions, args, train, processor), captions)
    split = CachedCIRSplit(args.data_dir, args.split, processor)
    rng = np.random.default_rng(args.seed)
    rows = np.sort(rng.choice(len(split), size=min(args.num_queries, len(split)), replace=False))

    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    stats = {}
    for ax, (name, (model, captions)) in zip(axes, models.items()):
        with torch.no_grad():
            feats = encode_cached(model, split, captions)
        ref = feats["images"][split.ref[rows]]
        qry = feats["queries"][rows]
        tgt = feats["gallery"][split.tgt[rows]]
        stats[name] = symmetry_stats(qry, tgt)
        points = torch.cat([ref, qry, tgt]).numpy()
        xy = TSNE(n_components=2, perplexity=min(args.perplexity, (len(points) - 1) / 3), random_state=args.seed,
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
    fig.suptitle(f"t-SNE of CSMCIR features on {len(rows)} {args.split} queries (lines: query → its target)")
    fig.tight_layout()
    out = Path(args.output_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out)
    print(json.dumps(stats, indent=1))
    return stats


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``csmcir-visualize`` (returns None: a console script's return value becomes its exit status)."""
    run_visualization(argv)


if __name__ == "__main__":
    main()
