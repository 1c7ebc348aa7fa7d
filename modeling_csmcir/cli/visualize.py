"""``csmcir-visualize``: the paper's motivating picture — t-SNE of reference, query and target features.

Draws the asymmetric baseline (targets encoded from the image alone) beside the full model (targets encoded from
image + caption through the same tower as queries) with :func:`modeling_csmcir.evaluation.symmetry.plot_symmetry_tsne`
and prints each model's symmetry statistics.

Models come from saved folders (``--full_model``, ``--asymmetric_model``, e.g. the seed-0 models that
``benchmarks/ablation_csmcir.py`` saves) or are trained on the fly with ``CSMCIRTrainer`` (preset ``small``) when a
folder is not given.

    csmcir-visualize --data_dir outputs/ablation_cir_data \
        --full_model outputs/ablation_csmcir_models/full --asymmetric_model outputs/ablation_csmcir_models/asymmetric \
        --output_file benchmarks/results/tsne_symmetry.png
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import HfArgumentParser
from transformers.utils import logging

from hub_cards.console import console_entry_point

from ..modeling_csmcir import CSMCIRModel
from ..presets import preset_config, preset_processor

# Parsing (and --help) needs only the dataclasses below; training and plotting are imported when a run starts.


logger = logging.get_logger(__name__)


@dataclass
class ModelArguments:
    """The two models ``csmcir-visualize`` compares (each trained on the fly when not given)."""

    full_model: str | None = field(default=None, metadata={"help": "Saved full model (captions on targets); trained if absent."})
    asymmetric_model: str | None = field(default=None, metadata={"help": "Saved asymmetric model (image-only targets); trained if absent."})
    train_steps: int = field(default=150, metadata={"help": "Steps when training on the fly."})


@dataclass
class DataArguments:
    """The split drawn, and the picture written."""

    output_file: str = field(default="benchmarks/results/tsne_symmetry.png", metadata={"help": "PNG to write."})
    data_dir: str = field(default="outputs/ablation_cir_data", metadata={"help": "CIRR-layout benchmark (generated if absent)."})
    split: str = field(default="val", metadata={"help": "Split whose queries are drawn."})
    num_queries: int = field(default=150, metadata={"help": "Queries drawn (each adds a reference, a query and a target point)."})
    image_size: int = field(default=32, metadata={"help": "Image size when generating data / training on the fly."})
    perplexity: float = field(default=30.0, metadata={"help": "t-SNE perplexity (capped by the number of points)."})
    seed: int = field(default=0, metadata={"help": "Seed of the query sample, the t-SNE and on-the-fly training."})
    threads: int = field(default=1, metadata={"help": "torch threads."})


def _load_or_train(path: str | None, use_captions: bool, model_args: ModelArguments, data_args: DataArguments,
                   train, processor) -> CSMCIRModel:
    from transformers import AutoModel

    from ..cached_training import CachedRunSettings, train_cached

    if path is not None:
        if not (Path(path) / "config.json").is_file():
            raise ValueError(f"{path}: not a saved CSMCIR model folder (no config.json)")
        return AutoModel.from_pretrained(path).eval()
    logger.warning(f"training the {'full' if use_captions else 'asymmetric'} model on the fly ({model_args.train_steps} steps)")
    config = preset_config("small", vocab_size=len(processor.tokenizer), image_size=data_args.image_size)
    # The Trainer needs an output folder; nothing from this throwaway run is kept.
    with tempfile.TemporaryDirectory(prefix="csmcir-visualize-") as scratch:
        settings = CachedRunSettings(use_target_captions=use_captions, seed=data_args.seed,
                                     max_steps=model_args.train_steps, batch_size=min(32, len(train)), output_dir=scratch)
        model, _ = train_cached(config, train, None, settings)
    return model


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Run ``csmcir-visualize`` on ``argv``: draw and write the PNG; returns the per-model symmetry statistics."""
    model_args, data_args = HfArgumentParser((ModelArguments, DataArguments)).parse_args_into_dataclasses(args=argv)
    from transformers import AutoProcessor

    from ..cached_training import CachedCIRSplit, quiet_transformers
    from ..data.synthetic import SyntheticCIRConfig, generate_synthetic_cir
    from ..evaluation.symmetry import plot_symmetry_tsne

    torch.set_num_threads(data_args.threads)
    quiet_transformers()
    if not (Path(data_args.data_dir) / "metadata.json").is_file():
        generate_synthetic_cir(SyntheticCIRConfig(output_dir=data_args.data_dir, num_images=2400,
                                                  image_size=data_args.image_size, min_objects=1, max_objects=2,
                                                  pairs_per_set=3))
    models = {}
    processor = None
    for name, path, captions in (("asymmetric baseline (image-only targets)", model_args.asymmetric_model, False),
                                 ("full model (image + caption targets, shared tower)", model_args.full_model, True)):
        if processor is None:
            processor = (AutoProcessor.from_pretrained(path) if path
                         else preset_processor("small", image_size=data_args.image_size))
        train = CachedCIRSplit(data_args.data_dir, "train", processor) if path is None else None
        models[name] = (_load_or_train(path, captions, model_args, data_args, train, processor), captions)
    split = CachedCIRSplit(data_args.data_dir, data_args.split, processor)
    rng = np.random.default_rng(data_args.seed)
    rows = np.sort(rng.choice(len(split), size=min(data_args.num_queries, len(split)), replace=False))
    stats = plot_symmetry_tsne(models, split, rows, data_args.output_file, data_args.perplexity, data_args.seed,
                               data_args.split)
    print(json.dumps(stats, indent=1))
    return stats


console_main = console_entry_point(main, "csmcir-visualize")


if __name__ == "__main__":
    console_main()
