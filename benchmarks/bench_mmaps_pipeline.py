"""The product-summarization pipeline (summary + attributes) against `generate()` alone, side by side.

The pipeline runs the multimodal encoder (BART encoder, visual transformer, fusion) once per batch and hands its
output both to the attribute head and to `generate(encoder_outputs=...)`. Goal (issue 21): pipeline throughput in
products/s ≥ 0.95× that of `generate()` alone on the same products — the attributes come almost free. For context the
table also times the two-pass form the pipeline had before (`generate()` then `predict_attributes()`, each encoding).

Times are CPU seconds of this process (`time.process_time`, `--threads` torch threads), so other jobs on a shared
machine inflate them less than wall-clock time; the three paths are interleaved round by round and each number is the
median over rounds. Every path forces exactly `--new_tokens` new tokens (min_new_tokens = max_new_tokens).

    .venv/bin/python benchmarks/bench_mmaps_pipeline.py          # writes benchmarks/results/mmaps_pipeline.md
    .venv/bin/python benchmarks/bench_mmaps_pipeline.py --rounds 2 --output /tmp/quick.md
"""

from __future__ import annotations

import os
import platform
import random
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser, pipeline

from hub_cards.atomic_files import write_text_atomically
from modeling_mmaps.presets import preset_model


@dataclass
class PipelineBenchmarkArguments:
    d_model: int = field(default=256, metadata={"help": "BART width (768 for bart-base; smaller keeps the CPU run short)"})
    layers: int = field(default=3, metadata={"help": "encoder and decoder layers each"})
    source_length: int = field(default=300, metadata={"help": "product text characters (~300 in CEPSUM)"})
    num_products: int = field(default=8, metadata={"help": "products per measurement"})
    batch_size: int = field(default=4, metadata={"help": "products per batch (pipeline and generate alike)"})
    num_regions: int = field(default=36, metadata={"help": "regions per image (2048-d, as Faster R-CNN's)"})
    num_attributes: int = field(default=1000, metadata={"help": "attribute vocabulary size"})
    num_beams: int = field(default=3, metadata={"help": "beams (3 in the original)"})
    new_tokens: int = field(default=24, metadata={"help": "summary tokens generated per product"})
    rounds: int = field(default=5, metadata={"help": "interleaved rounds"})
    threads: int = field(default=1, metadata={"help": "torch threads (1 keeps shared-machine noise low)"})
    output: str = field(default="benchmarks/results/mmaps_pipeline.md", metadata={"help": "Markdown result file"})


def build(args: PipelineBenchmarkArguments):
    """A random region-feature MMAPS model of the given size, its processor and the products to summarize."""
    import modeling_mmaps  # noqa: F401  (registers the Auto classes)
    import pipelines  # noqa: F401  (registers the task)

    rng = random.Random(0)
    characters = [chr(0x4E00 + i) for i in range(3000)] + list("0123456789abcdefghijklmnopqrstuvwxyz，。")
    attributes = ["".join(rng.sample(characters[:3000], 2)) for _ in range(args.num_attributes)]
    heads = max(1, args.d_model // 64)
    torch.manual_seed(0)
    model, processor = preset_model(
        "tiny", tokens=characters, attribute_vocabulary=list(dict.fromkeys(attributes)),
        max_source_length=args.source_length, max_target_length=90,
        text_d_model=args.d_model, text_encoder_layers=args.layers, text_decoder_layers=args.layers,
        text_encoder_attention_heads=heads, text_decoder_attention_heads=heads,
        text_encoder_ffn_dim=4 * args.d_model, text_decoder_ffn_dim=4 * args.d_model,
        visual_hidden_size=args.d_model, num_visual_layers=4, num_visual_attention_heads=heads,
        visual_intermediate_size=4 * args.d_model, fusion_hidden_size=256, visual_feature_dim=2048,
        max_regions=args.num_regions, num_region_classes=1601,
    )
    model.eval()
    g = torch.Generator().manual_seed(0)
    products = []
    for _ in range(args.num_products):
        xy = torch.rand(args.num_regions, 2, generator=g) * 0.5
        products.append({
            "text": "".join(rng.choice(characters) for _ in range(args.source_length - 2)),
            "visual_features": torch.randn(args.num_regions, 2048, generator=g).numpy(),
            "visual_boxes": torch.cat([xy, xy + 0.5], -1).numpy(),
        })
    return model, processor, products


def main(argv: list[str] | None = None) -> None:
    (args,) = HfArgumentParser(PipelineBenchmarkArguments).parse_args_into_dataclasses(argv)
    torch.set_num_threads(args.threads)
    model, processor, products = build(args)
    generate_kwargs = dict(num_beams=args.num_beams, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                           do_sample=False)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        summarizer = pipeline("product-summarization", model=folder, trust_remote_code=False)
        batches = []
        for start in range(0, len(products), args.batch_size):
            chunk = products[start:start + args.batch_size]
            batches.append(dict(processor(
                text=[p["text"] for p in chunk], visual_features=[p["visual_features"] for p in chunk],
                visual_boxes=[p["visual_boxes"] for p in chunk])))

        def generate_alone() -> None:
            with torch.no_grad():
                for batch in batches:
                    model.generate(**batch, **generate_kwargs)

        def two_passes() -> None:
            with torch.no_grad():
                for batch in batches:
                    model.generate(**batch, **generate_kwargs)
                    model.predict_attributes(**batch)

        def run_pipeline() -> None:
            summarizer(products, batch_size=args.batch_size, **generate_kwargs)

        paths = {"generate() alone (summary only)": generate_alone,
                 "generate() + predict_attributes() (two encoder passes)": two_passes,
                 "pipeline, summary + attributes (one encoder pass)": run_pipeline}
        # Same outputs: the pipeline's summaries are generate()'s.
        expected = [processor.batch_decode(model.generate(**b, **generate_kwargs)) for b in batches]
        got = [r[0]["summary_text"] for r in summarizer(products, batch_size=args.batch_size, **generate_kwargs)]
        assert got == [s for chunk in expected for s in chunk], "pipeline summaries differ from generate()'s"
        for fn in paths.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(args.rounds):
            for name, fn in paths.items():
                start = time.process_time()
                fn()
                times[name].append(time.process_time() - start)
    load = os.getloadavg()
    base = statistics.median(times["generate() alone (summary only)"])
    lines = [
        "# Product-summarization pipeline vs generate() alone (CPU)",
        "",
        f"Command: `{shlex.join(['python', 'benchmarks/bench_mmaps_pipeline.py', *(argv if argv is not None else sys.argv[1:])])}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores shared with other jobs, torch {torch.__version__}, "
        f"{args.threads} thread(s), load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min) at the "
        f"end of the run. Times are CPU seconds of the benchmark process (`time.process_time`), medians over "
        f"{args.rounds} interleaved rounds.",
        f"Sizes: BART d_model={args.d_model}, {args.layers}+{args.layers} layers, 4-layer visual transformer over "
        f"{args.num_regions} × 2048-d regions, {args.num_attributes} attributes; {args.num_products} products of "
        f"{args.source_length} characters in batches of {args.batch_size}, {args.num_beams} beams, exactly "
        f"{args.new_tokens} new tokens. The pipeline's summaries were checked equal to generate()'s.",
        "",
        "| path | s per run | products / s | vs generate() alone |",
        "|---|---|---|---|",
    ]
    for name, values in times.items():
        median = statistics.median(values)
        lines.append(f"| {name} | {median:.3f} | {args.num_products / median:.2f} | {base / median:.2f}× |")
    lines += ["", "Goal: the pipeline (summary + attributes) at ≥ 0.95× the products/s of generate() alone.", ""]
    write_text_atomically(args.output, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
