"""Is the embedded synthetic CIR benchmark hard enough to tell methods apart?

Generates the benchmark with ``csmcir-synth``, loads it with the real CIRR loader, trains a tiny CSMCIR model
from scratch with a minimal loop (AdamW on ``csmcir_contrastive_loss``, in-batch negatives, duplicate targets
masked) and evaluates on ``val`` under the CIRR protocol with three kinds of query:

* **composed**: reference image + modification text (``get_query_features``) — the method;
* **image only**: the reference image's own target feature (``get_target_features`` of the reference, with its
  caption when targets carry captions) — what retrieval without the text gives;
* **text only**: the modification text with a blank grey image.

The benchmark is adequate when composed clearly beats both baselines while R@1 stays well below 100%.
``--variants`` also trains the asymmetric ablation (targets encoded from the image alone) to show whether
target captions matter. Writes ``benchmarks/results/synthetic_cir_difficulty.md``.

    .venv/bin/python benchmarks/synthetic_cir_difficulty.py [--num_images 6000 --epochs 12 ...]
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Image as ImageFeature
from PIL import Image
from tqdm.auto import tqdm
from transformers import HfArgumentParser
from transformers.utils import logging

from modeling_csmcir import CSMCIRModel, csmcir_contrastive_loss
from modeling_csmcir.data.cirr import load_cirr
from modeling_csmcir.evaluation.cir_metrics import cirr_metrics
from modeling_csmcir.presets import preset_config, preset_processor
from hub_cards.atomic_files import write_json_atomically, write_text_atomically
from pipelines.gallery_index import encode_targets
from modeling_csmcir.data.synthetic import SyntheticCIRConfig, generate_synthetic_cir


logger = logging.get_logger(__name__)


@dataclass
class DifficultyArguments:
    output_file: str = field(default="benchmarks/results/synthetic_cir_difficulty.md")
    data_dir: str | None = field(default=None, metadata={"help": "Reuse a generated benchmark (default: a temp dir)."})
    num_images: int = field(default=6000)
    pairs_per_set: int = field(default=3)
    caption_error_rate: float = field(default=0.15)
    seed: int = field(default=0)
    image_size: int = field(default=64)
    patch_size: int = field(default=16)
    dropout: float = field(default=0.0)
    hidden_size: int = field(default=64)
    num_layers: int = field(default=2)
    epochs: int = field(default=20)
    batch_size: int = field(default=64)
    learning_rate: float = field(default=1e-3)
    variants: str = field(default="symmetric,image_only_targets", metadata={"help": "Comma list: symmetric, image_only_targets."})
    threads: int = field(default=1, metadata={"help": "CPU threads; 1 is fastest on a shared, oversubscribed machine."})


def _tiny_model(args: DifficultyArguments, vocab_size: int) -> CSMCIRModel:
    # Preset "tiny-scratch" (trained from scratch, so the vision tower learns too) resized to the benchmark's
    # width/depth, with BERT's Q-Former init std and the benchmark's dropout.
    config = preset_config(
        "tiny-scratch", vocab_size=vocab_size, image_size=args.image_size, hidden_size=args.hidden_size,
        num_layers=args.num_layers, vision_num_attention_heads=4, vision_patch_size=args.patch_size,
        qformer_num_attention_heads=4, qformer_initializer_range=0.02, qformer_hidden_dropout_prob=args.dropout,
        qformer_attention_probs_dropout_prob=args.dropout, embed_dim=64, num_query_tokens=8,
    )
    return CSMCIRModel(config)


def _encode_images(processor, paths: list[str]) -> torch.Tensor:
    chunks = []
    for i in range(0, len(paths), 256):
        images = [Image.open(p).convert("RGB") for p in paths[i : i + 256]]
        chunks.append(processor(images=images, return_tensors="pt")["pixel_values"])
    return torch.cat(chunks)


def _tokens(processor, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    enc = processor(text=texts, return_tensors="pt", padding="max_length", max_length=32)
    return enc["input_ids"], enc["attention_mask"]


class _Split:
    """A split pre-processed into tensors once (images, captions, modification texts)."""

    def __init__(self, data, processor):
        gallery, queries = data["gallery"], data["queries"]
        self.gallery_ids = list(gallery["image_id"])
        index = {g: i for i, g in enumerate(self.gallery_ids)}
        paths = [x["path"] for x in gallery.cast_column("image", ImageFeature(decode=False))["image"]]
        self.pixels = _encode_images(processor, paths)
        self.caption_ids, self.caption_mask = _tokens(processor, list(gallery["caption"]))
        self.ref = torch.tensor([index[r] for r in queries["reference_id"]])
        self.tgt = torch.tensor([index[t] for t in queries["target_id"]])
        self.text_ids, self.text_mask = _tokens(processor, list(queries["modification_text"]))
        self.reference_ids = list(queries["reference_id"])
        self.target_ids = list(queries["target_id"])
        self.img_sets = [list(s) for s in queries["img_set"]]


def _train(model: CSMCIRModel, train: _Split, args: DifficultyArguments, use_captions: bool) -> list[float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.05)
    steps_per_epoch = max(1, len(train.ref) // args.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.learning_rate, total_steps=args.epochs * steps_per_epoch, pct_start=0.1)
    generator = torch.Generator().manual_seed(args.seed)
    losses = []
    model.train()
    for _ in tqdm(range(args.epochs), desc="epochs"):
        order = torch.randperm(len(train.ref), generator=generator)
        for step in range(steps_per_epoch):
            idx = order[step * args.batch_size : (step + 1) * args.batch_size]
            ref, tgt = train.ref[idx], train.tgt[idx]
            out = model(
                pixel_values=train.pixels[ref], input_ids=train.text_ids[idx], attention_mask=train.text_mask[idx],
                target_pixel_values=train.pixels[tgt],
                target_input_ids=train.caption_ids[tgt] if use_captions else None,
                target_attention_mask=train.caption_mask[tgt] if use_captions else None,
                target_ids=tgt, return_loss=False,
            )
            loss = csmcir_contrastive_loss(out.logits_per_query, target_ids=tgt)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
    return losses


@torch.no_grad()
def _evaluate(model: CSMCIRModel, split: _Split, use_captions: bool) -> dict[str, dict]:
    model.eval()
    bs = 256

    def batched(fn, n):
        return torch.cat([fn(slice(i, i + bs)) for i in range(0, n, bs)])

    def target_batches():
        for start in range(0, len(split.gallery_ids), bs):
            rows = slice(start, start + bs)
            batch = {"pixel_values": split.pixels[rows]}
            if use_captions:
                batch.update(input_ids=split.caption_ids[rows], attention_mask=split.caption_mask[rows])
            yield batch

    gallery = encode_targets(model, target_batches(), total=len(split.gallery_ids), show_progress=False)
    composed = batched(lambda s: model.get_query_features(split.pixels[split.ref[s]], split.text_ids[s], split.text_mask[s]), len(split.ref))
    image_only = gallery[split.ref]
    blank = torch.zeros_like(split.pixels[:1])  # mean colour after normalisation: an uninformative image
    text_only = batched(
        lambda s: model.get_query_features(blank.expand(len(split.ref[s]), -1, -1, -1), split.text_ids[s], split.text_mask[s]),
        len(split.ref),
    )
    results = {}
    for name, queries in (("composed", composed), ("image only", image_only), ("text only", text_only)):
        results[name] = cirr_metrics(queries @ gallery.t(), split.gallery_ids, split.reference_ids, split.target_ids, split.img_sets)
    return results


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(DifficultyArguments).parse_args_into_dataclasses(args=argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    tmp = None
    data_dir = args.data_dir
    if data_dir is None or not (Path(data_dir) / "metadata.json").is_file():
        if data_dir is None:
            tmp = tempfile.TemporaryDirectory()
            data_dir = tmp.name
        generate_synthetic_cir(
            SyntheticCIRConfig(
                output_dir=data_dir, num_images=args.num_images, seed=args.seed, image_size=args.image_size,
                pairs_per_set=args.pairs_per_set, caption_error_rate=args.caption_error_rate,
            )
        )
    processor = preset_processor("tiny-scratch", image_size=args.image_size)
    splits = {}
    for split in ("train", "val"):
        data = load_cirr(data_dir, split, target_captions=Path(data_dir) / "target_captions" / f"captions.rc2.{split}.json")
        splits[split] = _Split(data, processor)
    report: dict = {"arguments": vars(args), "variants": {}}
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        if variant not in ("symmetric", "image_only_targets"):
            raise ValueError(f"unknown variant {variant!r}; expected symmetric or image_only_targets")
        use_captions = variant == "symmetric"
        torch.manual_seed(args.seed)
        model = _tiny_model(args, len(processor.tokenizer))
        start = time.perf_counter()
        losses = _train(model, splits["train"], args, use_captions)
        seconds = time.perf_counter() - start
        report["variants"][variant] = {
            "train_seconds": seconds, "first_loss": losses[0], "final_loss": sum(losses[-10:]) / min(10, len(losses)),
            "results": _evaluate(model, splits["val"], use_captions),
        }
        for query, metrics in report["variants"][variant]["results"].items():
            print(f"{variant} / {query}: " + ", ".join(f"{k}={v:.1f}" for k, v in metrics.items() if k != "protocol"), flush=True)
    report["sizes"] = {s: {"images": len(v.gallery_ids), "pairs": len(v.ref)} for s, v in splits.items()}
    _write_markdown(args, report, " ".join(["python", *sys.argv]) if argv is None else "python benchmarks/synthetic_cir_difficulty.py " + " ".join(argv))
    write_json_atomically(Path(args.output_file).with_suffix(".json"), report, indent=1)
    if tmp is not None:
        tmp.cleanup()
    return report


def _write_markdown(args: DifficultyArguments, report: dict, command: str) -> None:
    keys = ["recall_at_1", "recall_at_5", "recall_at_10", "recall_at_50", "recall_subset_at_1", "recall_subset_at_2", "avg"]
    lines = [
        "# Synthetic CIR benchmark difficulty",
        "",
        f"Command: `{command}`",
        "",
        f"Data: csmcir-synth, seed {args.seed}, {args.num_images} images, {args.pairs_per_set} pairs per img_set, "
        f"{args.image_size}px, caption error rate {args.caption_error_rate}. Sizes: {report['sizes']}.",
        f"Model: CSMCIR from scratch, hidden {args.hidden_size}, {args.num_layers} layers (ViT and Q-Former), "
        f"{args.epochs} epochs, batch {args.batch_size}, AdamW lr {args.learning_rate} (OneCycle), CPU, {args.threads} threads.",
        "Protocol: CIRR rc2 on `val` (reference removed; Rs@K over the img_set's 5 candidates, chance Rs@1 = 20%).",
        "",
        "| targets encoded | query | " + " | ".join(k.replace("recall_subset_at_", "Rs@").replace("recall_at_", "R@") for k in keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for variant, info in report["variants"].items():
        for query, metrics in info["results"].items():
            lines.append(f"| {variant} | {query} | " + " | ".join(f"{metrics[k]:.1f}" for k in keys) + " |")
    lines += ["", "| variant | train seconds | first loss | final loss (mean of last 10 steps) |", "|---|---|---|---|"]
    for variant, info in report["variants"].items():
        lines.append(f"| {variant} | {info['train_seconds']:.0f} | {info['first_loss']:.3f} | {info['final_loss']:.3f} |")
    path = Path(args.output_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
