"""MMAPS ablations on the embedded synthetic product-summarization set (CEPSUM layout, Chinese).

Variants (same tiny size, data, steps and decoding; each built untrained, saved, then trained with
``mmaps-train --model_name_or_path`` and scored with ``mmaps-eval`` — the package's own CLIs):

* ``full``            — MMAPS on region features: summary + attribute + alignment + contrast + region tasks;
* ``text_only_bart``  — the same BART with no visual side and no text [CLS] (``use_visual=False``,
  ``use_text_cls=False``: exactly BART), fed no image;
* ``no_attribute``    — ``attribute_loss_weight=0``;
* ``no_alignment``    — ``alignment_loss_weight=0`` and ``contrastive_loss_weight=0`` (both image-text tasks);
* ``no_region``       — ``region_loss_weight=0`` (no masked region modelling).

Metrics on ``test``: CEPSUM character ROUGE-1/2/L, BLEU-4, attribute F1, and the rate at which image-only
attributes (colour/pattern left out of the text, visible in the image) appear in the summaries.
Writes ``benchmarks/results/ablation_mmaps.{md,json}``.

    .venv/bin/python benchmarks/ablation_mmaps.py
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm
from transformers import HfArgumentParser
from transformers.utils import logging

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_notes import previous_notes  # noqa: E402


logger = logging.get_logger(__name__)

#: variant -> (config changes, visual_input, description)
VARIANTS: dict[str, tuple[dict, str, str]] = {
    "full": ({}, "regions", "all five tasks, region features"),
    "text_only_bart": ({"use_visual": False, "use_text_cls": False, "attribute_loss_weight": 0.0}, "none",
                       "plain BART of the same size, text only"),
    "no_attribute": ({"attribute_loss_weight": 0.0}, "regions", "without attribute prediction"),
    "no_alignment": ({"alignment_loss_weight": 0.0, "contrastive_loss_weight": 0.0}, "regions",
                     "without the alignment tasks (token-region alignment + image-text contrast)"),
    "no_region": ({"region_loss_weight": 0.0}, "regions", "without masked region modelling"),
    # The original's forms (issue 21), one at a time and all together; "full" is ours.
    "original_visual": ({"visual_encoder_style": "original"}, "regions",
                        "original visual transformer (x sqrt(d), sinusoidal positions, ReLU, order embeddings)"),
    "original_attribute_sum": ({"attribute_pooling": "sum"}, "regions", "attribute logits from summed states"),
    "original_contrast": ({"contrastive_projection_dim": 64, "contrastive_logit_scale_init": 1.0}, "regions",
                          "original contrast head: d->d (64-d here), scale init e"),
    "original_hausdorff": ({"alignment_loss_form": "original"}, "regions",
                           "original Hausdorff distance to the own image (padding masked)"),
    "original_box_area": ({"box_area_form": "original"}, "regions", "original (swapped) box area"),
    "original_all": ({"visual_encoder_style": "original", "attribute_pooling": "sum", "contrastive_projection_dim": 64,
                      "contrastive_logit_scale_init": 1.0, "alignment_loss_form": "original",
                      "box_area_form": "original"}, "regions", "all five original forms together"),
}


@dataclass
class MMAPSAblationArguments:
    output_dir: str = field(default="benchmarks/results")
    work_dir: str = field(default="outputs/ablation_mmaps", metadata={"help": "Data, models and predictions."})
    num_products: int = field(default=300)
    data_seed: int = field(default=0)
    seeds: str = field(default="0")
    variants: str = field(default=",".join(VARIANTS))
    max_steps: int = field(default=400)
    batch_size: int = field(default=16)
    learning_rate: float = field(default=3e-3)
    num_beams: int = field(default=1, metadata={"help": "Greedy by default (CPU budget); the paper uses 3."})
    workers: int = field(default=2)


def _run(args_dict: dict, variant: str, seed: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from modeling_mmaps.cli.eval import main as eval_main
    from modeling_mmaps.cli.train import main as train_main
    from modeling_mmaps.data.attributes import build_attribute_vocabulary, merge_attribute_vocabularies
    from modeling_mmaps.data.cepsum import load_cepsum_split
    from modeling_mmaps.modeling_mmaps import MMAPSForConditionalGeneration
    from modeling_mmaps.presets import character_vocabulary, preset_config, preset_model

    args = MMAPSAblationArguments(**args_dict)
    changes, visual_input, _ = VARIANTS[variant]
    data_dir = os.path.join(args.work_dir, "data")
    run_dir = os.path.join(args.work_dir, f"{variant}_seed{seed}")
    # The attribute vocabulary exactly as mmaps-train builds it (top words per category of the references).
    train = load_cepsum_split(data_dir, "train", explode_references=True)
    by_category: dict[str, list[list[str]]] = {}
    seen: set[str] = set()
    for sku, category, tgt in zip(train["sku"], train["category"], train["tgt"]):
        if sku not in seen:
            seen.add(sku)
            by_category.setdefault(category, []).append(tgt)
    vocabulary = merge_attribute_vocabularies(build_attribute_vocabulary(by_category, 1000, language="zh", min_count=2))
    torch.manual_seed(seed)
    texts = [*train["src"], *(t for refs in train["tgt"] for t in refs)]
    model, processor = preset_model("tiny-scratch", tokens=character_vocabulary(texts), attribute_vocabulary=vocabulary,
                                    visual_input=visual_input)
    if changes:
        # The same preset as the "full" row (tiny-scratch), so a row differs from it only by its changes.
        config = preset_config("tiny-scratch", num_attributes=model.config.num_attributes,
                               text_config=model.config.text_config.to_dict(), **changes)
        torch.manual_seed(seed)
        model = MMAPSForConditionalGeneration(config)
    init_dir = os.path.join(run_dir, "init")
    model.save_pretrained(init_dir)
    processor.save_pretrained(init_dir)
    start = time.perf_counter()
    train_main([
        "--model_name_or_path", init_dir, "--data_dir", data_dir, "--output_dir", os.path.join(run_dir, "model"),
        "--visual_input", visual_input, "--eval_split", "", "--max_steps", str(args.max_steps),
        "--per_device_train_batch_size", str(args.batch_size), "--learning_rate", str(args.learning_rate),
        "--warmup_steps", "20", "--lr_scheduler_type", "cosine", "--seed", str(seed), "--save_strategy", "no",
        "--report_to", "none", "--logging_steps", "50", "--use_cpu", "True", "--disable_tqdm", "True",
    ])
    seconds = time.perf_counter() - start
    metrics = eval_main([
        "--data_dir", data_dir, "--model_name_or_path", os.path.join(run_dir, "model"), "--output_dir",
        os.path.join(run_dir, "eval"), "--split", "test", "--visual_input", visual_input, "--num_beams",
        str(args.num_beams), "--max_new_tokens", "60", "--use_cpu", "True",
    ])
    return {"variant": variant, "seed": seed, "train_seconds": seconds, "metrics": metrics}


KEYS = (("rouge1", "ROUGE-1"), ("rouge2", "ROUGE-2"), ("rougeL", "ROUGE-L"), ("bleu4", "BLEU-4"),
        ("attribute_f1", "attr F1"), ("image_only_attribute_mention_rate", "image-only attr in summary"))


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(MMAPSAblationArguments).parse_args_into_dataclasses(args=argv)
    from modeling_csmcir.cached_training import mean_std
    from hub_cards.atomic_files import write_json_atomically, write_text_atomically
    from modeling_mmaps.data.synthetic import generate_synthetic_products

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; expected some of {list(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    data_dir = os.path.join(args.work_dir, "data")
    if not os.path.isfile(os.path.join(data_dir, "synthetic_attributes.test.json")):
        generate_synthetic_products(data_dir, num_products=args.num_products, seed=args.data_seed, overwrite=True)
    start = time.perf_counter()
    runs = []
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
        futures = [pool.submit(_run, asdict(args), v, s) for s in seeds for v in variants]
        for future in tqdm(as_completed(futures), total=len(futures), desc="MMAPS ablation runs"):
            runs.append(future.result())
    wall = time.perf_counter() - start
    summary = {}
    for v in variants:
        rs = [r for r in runs if r["variant"] == v]
        summary[v] = {k: mean_std([float(r["metrics"].get(k, float("nan"))) for r in rs]) for k, _ in KEYS}
        summary[v]["train_seconds"] = mean_std([r["train_seconds"] for r in rs])[0]
    command = "python benchmarks/ablation_mmaps.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = {"command": command.strip(), "arguments": asdict(args), "wall_seconds": wall, "summary": summary, "runs": runs}
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomically(out / "ablation_mmaps.json", report, indent=1)
    lead = {k: v for k, v in runs[0]["metrics"].items() if k.startswith("lead")}
    lines = [
        "# MMAPS ablations on the synthetic products",
        "",
        f"Command: `.venv/bin/{report['command']}` (wall time {wall / 60:.1f} min, {args.workers} worker processes × 1 "
        "thread on the shared 2-core CPU machine).",
        "",
        f"Data: `mmaps-synth --num_products {args.num_products} --seed {args.data_seed}` (Chinese, CEPSUM layout, "
        "3 categories; colour left out of the text for half the products and the pattern for 30%: image-only "
        "attributes). Scored on `test`.",
        f"Model: `mmaps-train --config_name tiny-scratch`-sized MMAPS from scratch (d_model 64, 2+1 BART layers, character "
        f"vocabulary), region features; {args.max_steps} steps, batch {args.batch_size}, AdamW lr {args.learning_rate} "
        f"(warm-up 20, cosine). Seeds: {args.seeds}. Decoding: `mmaps-eval`, beams {args.num_beams}, at most 60 new tokens.",
        "Metrics (%): CEPSUM character ROUGE (multi-reference), BLEU-4, attribute F1 against the references' attribute "
        "words, and the share of image-only attribute words that the generated summaries mention.",
        "",
        "| variant | what changes | " + " | ".join(name for _, name in KEYS) + " | train s |",
        "|---|---|" + "---|" * (len(KEYS) + 1),
    ]
    for v, s in summary.items():
        cells = [f"{s[k][0]:.1f}" + (f" ± {s[k][1]:.1f}" if len(seeds) > 1 else "") for k, _ in KEYS]
        lines.append(f"| {v} | {VARIANTS[v][2]} | " + " | ".join(cells) + f" | {s['train_seconds']:.0f} |")
    if lead:
        lines += ["", "Lead baseline (first N characters of the product text): " +
                  ", ".join(f"{k} {float(v):.1f}" for k, v in lead.items())]
    lines += ["", "## Notes", "", previous_notes(out / "ablation_mmaps.md"), ""]
    write_text_atomically(out / "ablation_mmaps.md", "\n".join(lines))
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main()
