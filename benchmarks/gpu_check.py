"""Full-size GPU check: a CSMCIR training step at BLIP-2 ViT-g scale and base-size MMAPS generation.

Random weights (nothing is downloaded): the numbers measure compute and memory, not quality.

* CSMCIR: EVA ViT-g sized vision tower (39 × 1408, 224 px, patch 14), frozen, in bf16; a BERT-base sized
  Q-Former (12 × 768, cross-attention every 2 layers, 32 query tokens); batch 128 queries + 128 captioned
  targets; one optimiser step = forward of both towers, InfoNCE with a 16k-entry entropy memory bank, backward, AdamW.
* MMAPS: `fnlp/bart-base-chinese` sized BART (6 + 6 × 768, 21128 characters) with the 4-layer visual encoder
  over 36 regions of 2048-d features, beam search 3, 90 new tokens, batch 32.

Writes `benchmarks/results/gpu_check.md` (and `.json`). `--smoke` runs tiny sizes on CPU to check the script.
Usage: bash benchmarks/gpu_check.sh   (or python benchmarks/gpu_check.py [--smoke])
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling_csmcir import CSMCIRModel, csmcir_contrastive_loss  # noqa: E402
from modeling_csmcir.presets import preset_config  # noqa: E402
from modeling_csmcir.memory_bank import MemoryBank  # noqa: E402
from modeling_mmaps import MMAPSForConditionalGeneration  # noqa: E402
from modeling_mmaps import presets as mmaps_presets  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")


def csmcir_step(device: torch.device, smoke: bool, steps: int) -> dict:
    if smoke:
        config = preset_config("tiny")
        batch, text_length, bank_size = 8, 16, 256
    else:
        config = preset_config("blip2-vitg", vocab_size=30523, image_size=224, freeze_vision=True)
        batch, text_length, bank_size = 128, 32, 16384
    model = CSMCIRModel(config).to(device)
    model.vision_model.to(torch.bfloat16)  # frozen tower in bf16, Q-Former kept in fp32 (as BLIP-2 does)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, betas=(0.9, 0.98))
    bank = MemoryBank(capacity=bank_size, dim=config.embed_dim, strategy="entropy", device=device)
    image_size = config.vision_config.image_size
    vocab = config.qformer_config.vocab_size

    def make_inputs() -> dict:
        return dict(
            pixel_values=torch.randn(batch, 3, image_size, image_size, device=device, dtype=torch.bfloat16),
            input_ids=torch.randint(1000, vocab, (batch, text_length), device=device),
            target_pixel_values=torch.randn(batch, 3, image_size, image_size, device=device, dtype=torch.bfloat16),
            target_input_ids=torch.randint(1000, vocab, (batch, text_length), device=device),
        )

    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for step in range(steps + 1):  # the first step warms up and is not timed
        inputs = make_inputs()
        target_ids = torch.arange(step * batch, (step + 1) * batch, device=device)
        _sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            output = model(**inputs, return_loss=False)
        extra = bank.negative_logits(output.query_embeds.float(), model.logit_scale, target_ids, step)
        loss = csmcir_contrastive_loss(output.logits_per_query.float(), extra, target_ids)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bank.enqueue(output.target_embeds.detach().float(), target_ids, step)
        _sync(device)
        if step > 0:
            times.append(time.perf_counter() - start)
    step_time = sum(times) / len(times)
    return {
        "batch_size": batch,
        "step_time_s": step_time,
        "queries_per_s": batch / step_time,
        "peak_memory_gib": _peak_gib(device),
        "trainable_parameters_m": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
        "total_parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def mmaps_generation(device: torch.device, smoke: bool) -> dict:
    if smoke:
        config = mmaps_presets.preset_config("tiny")
        batch, source_length, new_tokens = 4, 64, 16
    else:
        config = mmaps_presets.preset_config("base")
        batch, source_length, new_tokens = 32, 400, 90
    model = MMAPSForConditionalGeneration(config).to(device).eval()
    if device.type == "cuda":
        model.to(torch.bfloat16)
        torch.cuda.reset_peak_memory_stats()
    dtype = next(model.parameters()).dtype
    vocab = config.text_config.vocab_size
    inputs = dict(
        input_ids=torch.randint(5, vocab, (batch, source_length), device=device),
        attention_mask=torch.ones(batch, source_length, dtype=torch.long, device=device),
        visual_features=torch.randn(batch, config.max_regions, config.visual_feature_dim, device=device, dtype=dtype),
        visual_boxes=torch.rand(batch, config.max_regions, 4, device=device, dtype=dtype).sort(-1).values,
        visual_attention_mask=torch.ones(batch, config.max_regions, dtype=torch.long, device=device),
    )
    settings = dict(num_beams=3, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    with torch.inference_mode():
        model.generate(**inputs, **dict(settings, max_new_tokens=4, min_new_tokens=4))  # warm-up
        _sync(device)
        start = time.perf_counter()
        output = model.generate(**inputs, **settings)
        _sync(device)
        elapsed = time.perf_counter() - start
    generated = output.shape[1] - 1
    return {
        "batch_size": batch,
        "num_beams": 3,
        "new_tokens": generated,
        "generation_time_s": elapsed,
        "summary_tokens_per_s": batch * generated / elapsed,
        "peak_memory_gib": _peak_gib(device),
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on whatever device is there (script check)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--output", default="benchmarks/results/gpu_check.md")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        raise SystemExit("gpu_check: no CUDA device; run with --smoke to check the script on CPU")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    results = {"device": name, "torch": torch.__version__, "smoke": args.smoke,
               "csmcir_training_step": csmcir_step(device, args.smoke, args.steps),
               "mmaps_generation": mmaps_generation(device, args.smoke)}
    c, m = results["csmcir_training_step"], results["mmaps_generation"]
    lines = [
        f"# GPU check ({name}{', smoke sizes' if args.smoke else ''})",
        "",
        f"Command: `bash benchmarks/gpu_check.sh`{' --smoke' if args.smoke else ''}; torch {torch.__version__}; random weights.",
        "",
        "| measurement | value |",
        "|---|---:|",
        f"| CSMCIR training step, batch {c['batch_size']} (frozen bf16 ViT-g, fp32 Q-Former, 16k entropy bank) | "
        f"{c['step_time_s'] * 1000:.0f} ms |",
        f"| CSMCIR training throughput | {c['queries_per_s']:.0f} queries/s |",
        f"| CSMCIR peak GPU memory | {c['peak_memory_gib']:.1f} GiB |",
        f"| CSMCIR parameters (trainable / total) | {c['trainable_parameters_m']:.0f}M / {c['total_parameters_m']:.0f}M |",
        f"| MMAPS generation, batch {m['batch_size']}, beam 3, {m['new_tokens']} tokens | {m['generation_time_s']:.2f} s |",
        f"| MMAPS summary tokens/s | {m['summary_tokens_per_s']:.0f} |",
        f"| MMAPS peak GPU memory | {m['peak_memory_gib']:.1f} GiB |",
    ]
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(lines) + "\n")
    output.with_suffix(".json").write_text(json.dumps(results, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
