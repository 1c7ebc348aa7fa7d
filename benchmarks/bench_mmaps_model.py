"""MMAPS vs plain BART on CPU: generation tokens/s (and per-token cost as the summary grows) and training step time.

Both models share the same BART sizes; MMAPS adds the text [CLS], a visual transformer over 36 region features of a
Faster R-CNN's size (2048-d), the gated fusion and, in training, all five tasks (summary, attribute, alignment,
contrastive, masked region modelling with 1601-class detector distributions). Goals (issue 7): generation ≥ 0.9×
BART's tokens/s with a flat per-token cost, training step ≤ 1.5× BART's.

Times are CPU seconds of this process (`time.process_time`, one torch thread), which other jobs on a shared
machine do not inflate the way they inflate wall-clock time; the two models are still interleaved round by round
(cache and memory-bandwidth contention hit both alike) and each number is the median over rounds. Generation forces exactly N new tokens (min_new_tokens = N) and runs
the KV cache; the per-token cost of a length bracket is (t(N2) − t(N1)) / (N2 − N1) per product, taken within a round.

    .venv/bin/python benchmarks/bench_mmaps_model.py            # writes benchmarks/results/mmaps_model.md
    .venv/bin/python benchmarks/bench_mmaps_model.py --rounds 2 --output /tmp/quick.md
"""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field

import torch
from transformers import BartConfig, BartForConditionalGeneration, HfArgumentParser
from transformers.utils import logging
from transformers.utils.logging import tqdm

from hub_cards.atomic_files import write_text_atomically
from modeling_mmaps import MMAPSConfig, MMAPSForConditionalGeneration

logger = logging.get_logger(__name__)


@dataclass
class MMAPSBenchmarkArguments:
    d_model: int = field(default=256, metadata={"help": "BART width (768 for bart-base; smaller keeps the CPU run short)"})
    layers: int = field(default=3, metadata={"help": "encoder and decoder layers each"})
    vocab_size: int = field(default=21128, metadata={"help": "vocabulary (21128 = fnlp/bart-base-chinese)"})
    source_length: int = field(default=300, metadata={"help": "product text tokens (~300 in CEPSUM)"})
    target_length: int = field(default=64, metadata={"help": "summary tokens in training"})
    batch_size: int = field(default=4, metadata={"help": "products per batch"})
    num_regions: int = field(default=36, metadata={"help": "regions per image"})
    num_attributes: int = field(default=1000, metadata={"help": "attribute vocabulary (1,000 for bags)"})
    num_beams: int = field(default=3, metadata={"help": "beams for the generation benchmark (3 in the original)"})
    lengths: str = field(default="16,32,64", metadata={"help": "summary lengths N (new tokens) to time"})
    rounds: int = field(default=7, metadata={"help": "interleaved rounds per measurement"})
    threads: int = field(default=1, metadata={"help": "torch threads (1 keeps shared-machine noise low)"})
    output: str = field(default="benchmarks/results/mmaps_model.md", metadata={"help": "Markdown result file"})


def build_models(args: MMAPSBenchmarkArguments) -> tuple[BartForConditionalGeneration, MMAPSForConditionalGeneration]:
    """A random BART and an MMAPS with the same BART sizes (MMAPS copies BART's weights via from_bart_pretrained)."""
    text = BartConfig(
        vocab_size=args.vocab_size, d_model=args.d_model, encoder_layers=args.layers, decoder_layers=args.layers,
        encoder_attention_heads=max(1, args.d_model // 64), decoder_attention_heads=max(1, args.d_model // 64),
        encoder_ffn_dim=4 * args.d_model, decoder_ffn_dim=4 * args.d_model, max_position_embeddings=512,
        pad_token_id=0, bos_token_id=101, eos_token_id=102, decoder_start_token_id=102, forced_eos_token_id=102,
    )
    torch.manual_seed(0)
    bart = BartForConditionalGeneration(text)
    with tempfile.TemporaryDirectory() as folder:
        bart.save_pretrained(folder)
        mmaps = MMAPSForConditionalGeneration.from_bart_pretrained(
            folder, num_attributes=args.num_attributes, max_regions=args.num_regions,
            visual_intermediate_size=4 * args.d_model, num_visual_attention_heads=max(1, args.d_model // 64))
    return bart, mmaps


def make_inputs(args: MMAPSBenchmarkArguments, config: MMAPSConfig) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    b, length, r = args.batch_size, args.source_length, args.num_regions
    input_ids = torch.randint(200, args.vocab_size, (b, length), generator=g)
    labels = torch.randint(200, args.vocab_size, (b, args.target_length), generator=g)
    xy = torch.rand(b, r, 2, generator=g) * 0.5
    return {
        "input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels,
        "visual_features": torch.relu(torch.randn(b, r, config.visual_feature_dim, generator=g)),
        "visual_boxes": torch.cat([xy, xy + 0.5 * torch.rand(b, r, 2, generator=g)], -1),
        "visual_attention_mask": torch.ones(b, r, dtype=torch.long),
        "visual_class_probs": torch.softmax(torch.randn(b, r, config.num_region_classes, generator=g), -1),
        "attribute_labels": (torch.rand(b, config.num_attributes, generator=g) < 0.01).float(),
    }


TEXT_KEYS = ("input_ids", "attention_mask")
VISUAL_KEYS = ("visual_features", "visual_boxes", "visual_attention_mask")


def time_generation(model: torch.nn.Module, inputs: dict[str, torch.Tensor], new_tokens: int, beams: int) -> float:
    start = time.process_time()
    with torch.no_grad():
        out = model.generate(**inputs, num_beams=beams, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False)
    elapsed = time.process_time() - start
    if out.shape[1] != new_tokens + 1:
        raise RuntimeError(f"expected {new_tokens} new tokens, got {out.shape[1] - 1}")
    return elapsed


def time_training_step(model: torch.nn.Module, inputs: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> float:
    start = time.process_time()
    loss = model(**inputs).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.process_time() - start


def main(argv: list[str] | None = None) -> dict[str, float]:
    (args,) = HfArgumentParser(MMAPSBenchmarkArguments).parse_args_into_dataclasses(args=argv)
    torch.set_num_threads(args.threads)
    bart, mmaps = build_models(args)
    inputs = make_inputs(args, mmaps.config)
    lengths = [int(n) for n in args.lengths.split(",")]
    bart_gen_inputs = {k: inputs[k] for k in TEXT_KEYS}
    mmaps_gen_inputs = {k: inputs[k] for k in (*TEXT_KEYS, *VISUAL_KEYS)}
    bart.eval(), mmaps.eval()

    # Warm-up (first calls allocate and pick kernels).
    time_generation(bart, bart_gen_inputs, 4, args.num_beams)
    time_generation(mmaps, mmaps_gen_inputs, 4, args.num_beams)
    gen: dict[tuple[str, int], list[float]] = {}
    for _ in tqdm(range(args.rounds), desc="generation rounds"):
        for n in lengths:
            gen.setdefault(("bart", n), []).append(time_generation(bart, bart_gen_inputs, n, args.num_beams))
            gen.setdefault(("mmaps", n), []).append(time_generation(mmaps, mmaps_gen_inputs, n, args.num_beams))
    median = {key: statistics.median(values) for key, values in gen.items()}

    bart.train(), mmaps.train()
    bart_train_inputs = {k: inputs[k] for k in (*TEXT_KEYS, "labels")}
    bart_opt = torch.optim.AdamW(bart.parameters(), lr=1e-5)
    mmaps_opt = torch.optim.AdamW(mmaps.parameters(), lr=1e-5)
    time_training_step(bart, bart_train_inputs, bart_opt)
    time_training_step(mmaps, inputs, mmaps_opt)
    steps: dict[str, list[float]] = {"bart": [], "mmaps": []}
    for _ in tqdm(range(args.rounds), desc="training rounds"):
        steps["bart"].append(time_training_step(bart, bart_train_inputs, bart_opt))
        steps["mmaps"].append(time_training_step(mmaps, inputs, mmaps_opt))
    out = mmaps(**inputs)
    tasks_on = [t for t in ("summary", "attribute", "alignment", "contrastive", "region")
                if getattr(out, f"{t}_loss") is not None]
    train = {k: statistics.median(v) for k, v in steps.items()}

    b = args.batch_size
    rows = []
    for n in lengths:
        tps_bart, tps_mmaps = b * n / median[("bart", n)], b * n / median[("mmaps", n)]
        rows.append(f"| {n} | {median[('bart', n)]:.3f} | {median[('mmaps', n)]:.3f} | {tps_bart:.1f} | "
                    f"{tps_mmaps:.1f} | {tps_mmaps / tps_bart:.2f}× |")
    token_rows = []
    for n1, n2 in zip(lengths, lengths[1:]):
        # Slope within each round (same machine load for both lengths), then the median over rounds.
        cost = {name: statistics.median((t2 - t1) / (n2 - n1) / b * 1000 for t1, t2 in zip(gen[(name, n1)], gen[(name, n2)]))
                for name in ("bart", "mmaps")}
        token_rows.append(f"| {n1}→{n2} | {cost['bart']:.2f} | {cost['mmaps']:.2f} | {cost['mmaps'] / cost['bart']:.2f}× |")
    n_bart = sum(p.numel() for p in bart.parameters())
    n_mmaps = sum(p.numel() for p in mmaps.parameters())
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__), *(argv if argv is not None else sys.argv[1:])])
    text = "\n".join([
        "# MMAPS vs BART on CPU (generation and training step)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other jobs, "
        f"torch {torch.__version__}, {args.threads} thread(s). Times are CPU seconds of the benchmark process "
        f"(`time.process_time`), medians over {args.rounds} interleaved rounds.",
        f"Sizes: BART d_model={args.d_model}, {args.layers}+{args.layers} layers, vocab {args.vocab_size} "
        f"({n_bart / 1e6:.1f} M params); MMAPS adds text [CLS], {mmaps.config.num_visual_layers}-layer visual "
        f"transformer over {args.num_regions} × {mmaps.config.visual_feature_dim}-d regions, fusion "
        f"{mmaps.config.fusion_hidden_size}-d, {args.num_attributes} attributes ({n_mmaps / 1e6:.1f} M params). "
        f"Batch {b}, source {args.source_length} tokens, beams {args.num_beams}.",
        "",
        "## Generation (beam search, KV cache, exactly N new tokens)",
        "",
        "| N new tokens | BART s | MMAPS s | BART tokens/s | MMAPS tokens/s | MMAPS / BART |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "Per-token decoding cost (ms per token per product: slope between two lengths within a round, median over rounds). The decoder is BART's own, attending "
        "to L fused states, so MMAPS's cost per token should track BART's at every length (both grow slightly with "
        "the self-attention cache); the visual side is paid once per product, in the encoder:",
        "",
        "| lengths | BART ms / token | MMAPS ms / token | MMAPS / BART |",
        "|---|---|---|---|",
        *token_rows,
        "",
        "## Training step (forward + backward + AdamW)",
        "",
        "| model | tasks | step s | ratio |",
        "|---|---|---|---|",
        f"| BART | summary | {train['bart']:.3f} | 1.00× |",
        f"| MMAPS | {', '.join(tasks_on)} | {train['mmaps']:.3f} | {train['mmaps'] / train['bart']:.2f}× |",
        "",
        f"Goals: generation ≥ 0.9× BART tokens/s; training ≤ 1.5× BART step time. Target length {args.target_length}.",
        "",
    ])
    write_text_atomically(args.output, text)
    print(text)
    result = {f"gen_ratio_{n}": (median[("bart", n)] / median[("mmaps", n)]) for n in lengths}
    result["train_ratio"] = train["mmaps"] / train["bart"]
    return result


if __name__ == "__main__":
    main()
