"""What does the memory bank cost per training step?

Two tables, written to ``benchmarks/results/memory_bank.md``:

1. **Per-step overhead** of ``CSMCIRTrainer.training_step`` (forward, bank selection, loss, backward, enqueue)
   plus the optimizer step, with no bank and with full banks of 4k / 16k / 64k entries of 256-d embeddings, side
   by side in one run. The configurations are interleaved step by step (round robin) and the median is reported,
   so drift in machine load hits them all alike. Each step is timed twice: wall clock and the process's CPU time
   (``time.process_time``, all threads), and the bank's own part (``memory_bank_loss`` + its backward + ``enqueue``
   on the step's shapes, alone) runs in the same round robin: an overhead well above that part is not the bank's
   arithmetic but its interference with the step (thread scheduling under load, caches, allocation). The model is a CSMCIR model with 256-d embeddings and a small
   BLIP-2-style vision tower and Q-Former (sizes in the table header), on the device chosen.
2. **Selection cost**: the bank's part of a step (``memory_bank_loss`` + its backward) per strategy, against the one
   ``(B × C × D)`` similarity product it needs, interleaved, as the bank grows.

    .venv/bin/python benchmarks/bench_memory_bank.py [--device cpu --threads 2 --steps 6 --batch_size 64]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import HfArgumentParser

from hub_cards.atomic_files import write_text_atomically
from modeling_csmcir import CSMCIRModel, MemoryBank
from modeling_csmcir.memory_bank import memory_bank_loss
from modeling_csmcir.presets import preset_config
from modeling_csmcir.trainer_csmcir import CSMCIRTrainer, CSMCIRTrainingArguments

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_record import RunRecord  # noqa: E402


@dataclass
class BenchArguments:
    output_file: str = field(default="benchmarks/results/memory_bank.md")
    device: str = field(default="cpu")
    threads: int = field(default=2, metadata={"help": "CPU threads."})
    steps: int = field(default=5, metadata={"help": "Timed steps per configuration (after 2 warm-up steps)."})
    batch_size: int = field(default=64)
    embed_dim: int = field(default=256)
    hidden_size: int = field(default=256, metadata={"help": "Width of the vision tower and Q-Former."})
    num_layers: int = field(default=4, metadata={"help": "Layers of the vision tower and of the Q-Former."})
    image_size: int = field(default=64)
    text_length: int = field(default=16)
    bank_sizes: str = field(default="65536")
    strategy: str = field(default="entropy")
    k_min: int = field(default=16)
    k_max: int = field(default=256)
    selection_sizes: str = field(default="4096,16384,65536")
    selection_repeats: int = field(default=10)


def build_model(args: BenchArguments) -> CSMCIRModel:
    # Preset "tiny" resized to the benchmark's width/depth, with BERT's 4x feed-forward and 16 query tokens.
    config = preset_config(
        "tiny", image_size=args.image_size, hidden_size=args.hidden_size, num_layers=args.num_layers,
        vision_intermediate_size=4 * args.hidden_size, vision_num_attention_heads=4,
        qformer_intermediate_size=4 * args.hidden_size, qformer_num_attention_heads=4,
        qformer_cross_attention_frequency=2, num_query_tokens=16, embed_dim=args.embed_dim,
    )
    torch.manual_seed(0)
    return CSMCIRModel(config)


def full_bank(args: BenchArguments, capacity: int, strategy: str, device: torch.device) -> MemoryBank:
    """A bank filled to capacity with random unit vectors (ids far from the batch's, so nothing is masked)."""
    bank = MemoryBank(capacity, args.embed_dim, strategy=strategy, k_min=args.k_min, k_max=args.k_max,
                      age_decay=500.0, max_age=None, device=device)
    generator = torch.Generator().manual_seed(capacity)
    bank.enqueue(F.normalize(torch.randn(capacity, args.embed_dim, generator=generator), dim=-1),
                 torch.arange(capacity) + 1_000_000, step=0)
    return bank


def make_batch(args: BenchArguments, device: torch.device) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    b, length = args.batch_size, args.text_length
    return {
        "pixel_values": torch.randn(b, 3, args.image_size, args.image_size, generator=generator).to(device),
        "input_ids": torch.randint(1000, 30000, (b, length), generator=generator).to(device),
        "attention_mask": torch.ones(b, length, dtype=torch.long, device=device),
        "target_pixel_values": torch.randn(b, 3, args.image_size, args.image_size, generator=generator).to(device),
        "target_input_ids": torch.randint(1000, 30000, (b, length), generator=generator).to(device),
        "target_attention_mask": torch.ones(b, length, dtype=torch.long, device=device),
        "target_ids": torch.arange(b, device=device),
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


ALONE = "the bank's part alone"


def step_overhead(
    args: BenchArguments, device: torch.device
) -> tuple[list[tuple[str, float, float, float, float]], str]:
    """Median seconds per training step (wall, CPU) for no bank and each bank size, and of the bank's part alone,
    measured round robin; each row ``(name, wall, wall overhead, cpu, cpu overhead)`` (for the bank's part: its
    share of the no-bank step)."""
    model = build_model(args).to(device)
    with tempfile.TemporaryDirectory() as tmp:
        training_args = CSMCIRTrainingArguments(
            output_dir=tmp, report_to="none", use_cpu=device.type == "cpu", bank_strategy=args.strategy,
            bank_k_min=args.k_min, bank_k_max=args.k_max, bank_max_age=-1, bank_start_step=0, learning_rate=1e-5,
        )
        trainer = CSMCIRTrainer(model=model, args=training_args)
        trainer.create_optimizer()
        trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which this bypasses
        trainer.state.global_step = 10
        batch = make_batch(args, device)
        sizes = [int(s) for s in args.bank_sizes.split(",")]
        configs = [("no bank", MemoryBank(1, args.embed_dim, strategy="none", device=device))]
        configs += [(f"{size // 1024}k × {args.embed_dim}", full_bank(args, size, args.strategy, device)) for size in sizes]
        # The bank's own part of a step, alone: a second full bank of the largest size, the step's shapes.
        generator = torch.Generator().manual_seed(2)
        queries = F.normalize(torch.randn(args.batch_size, args.embed_dim, generator=generator), dim=-1).to(device)
        targets = F.normalize(torch.randn(args.batch_size, args.embed_dim, generator=generator), dim=-1).to(device)
        target_ids = torch.arange(args.batch_size, device=device)
        alone = full_bank(args, max(sizes), args.strategy, device)

        def training_step(bank: MemoryBank) -> None:
            # Each step enqueues the batch (ids 0..B-1, replacing their previous slots): the bank stays full
            # but for at most B slots, as in a real run with repeated targets.
            trainer.memory_bank = bank
            trainer.training_step(model, batch)
            trainer.optimizer.step()
            trainer.optimizer.zero_grad()

        def bank_part() -> None:
            q = queries.clone().requires_grad_(True)
            memory_bank_loss(alone, 14.3 * q @ targets.T, q, 14.3, target_ids, step=10).loss.backward()
            alone.enqueue(targets, target_ids, step=10)

        contenders = {name: (lambda bank=bank: training_step(bank)) for name, bank in configs}
        contenders[ALONE] = bank_part
        times: dict[str, list[float]] = {name: [] for name in contenders}
        cpu_times: dict[str, list[float]] = {name: [] for name in contenders}
        model.train()
        for repeat in range(args.steps + 2):
            for name, fn in contenders.items():
                synchronize(device)
                start, cpu_start = time.perf_counter(), time.process_time()
                fn()
                synchronize(device)
                if repeat >= 2:
                    times[name].append(time.perf_counter() - start)
                    cpu_times[name].append(time.process_time() - cpu_start)
        baseline = statistics.median(times["no bank"])
        cpu_baseline = statistics.median(cpu_times["no bank"])
        rows = []
        for name in contenders:
            wall, cpu = statistics.median(times[name]), statistics.median(cpu_times[name])
            if name == ALONE:  # a part of a step: its share of the no-bank step, not an overhead of its own
                rows.append((f"{name} ({max(sizes) // 1024}k)", wall, wall / baseline, cpu, cpu / cpu_baseline))
            else:
                rows.append((name, wall, wall / baseline - 1, cpu, cpu / cpu_baseline - 1))
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    desc = (f"model: vision {args.num_layers}×{args.hidden_size} ({args.image_size} px, patch 8), Q-Former "
            f"{args.num_layers}×{args.hidden_size}, 16 query tokens, embed_dim {args.embed_dim}; "
            f"{params / 1e6:.1f}M parameters ({trainable / 1e6:.1f}M trainable, vision frozen); batch {args.batch_size}, "
            f"text length {args.text_length}; strategy {args.strategy} (k {args.k_min}..{args.k_max})")
    return rows, desc


def selection_cost(args: BenchArguments, device: torch.device) -> list[tuple[int, dict[str, float]]]:
    """Median milliseconds, per bank size, of the one (B x C x D) similarity product alone and of the bank's part
    of a training step for each strategy: `memory_bank_loss` (selection + loss) + its backward, interleaved."""
    generator = torch.Generator().manual_seed(2)
    queries = F.normalize(torch.randn(args.batch_size, args.embed_dim, generator=generator), dim=-1).to(device)
    targets = F.normalize(torch.randn(args.batch_size, args.embed_dim, generator=generator), dim=-1).to(device)
    positive_ids = torch.arange(args.batch_size, device=device)
    results = []
    for size in [int(s) for s in args.selection_sizes.split(",")]:
        banks = {strategy: full_bank(args, size, strategy, device) for strategy in ("fifo", "hard", "entropy")}
        embeddings = banks["fifo"].embeddings

        def matmul() -> None:
            queries @ embeddings.T

        def bank_step(bank: MemoryBank) -> None:
            q = queries.clone().requires_grad_(True)
            loss = memory_bank_loss(bank, 14.3 * q @ targets.T, q, 14.3, positive_ids, step=10).loss
            loss.backward()

        contenders = {"matmul": matmul, **{name: (lambda bank=bank: bank_step(bank)) for name, bank in banks.items()}}
        samples: dict[str, list[float]] = {name: [] for name in contenders}
        for repeat in range(args.selection_repeats + 2):
            for name, fn in contenders.items():
                synchronize(device)
                start = time.perf_counter()
                fn()
                synchronize(device)
                if repeat >= 2:
                    samples[name].append(time.perf_counter() - start)
        results.append((size, {name: 1000 * statistics.median(values) for name, values in samples.items()}))
    return results


def main(argv: list[str] | None = None) -> Path:
    (args,) = HfArgumentParser(BenchArguments).parse_args_into_dataclasses(args=argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    record = RunRecord.start("bench_memory_bank.py", argv, args.threads)
    rows, desc = step_overhead(args, device)
    selection = selection_cost(args, device)
    record.finish()
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [
        "# Memory bank: per-step overhead and selection cost",
        "",
        *record.header_lines(),
        f"Device: {device_name}. {desc}.",
        "",
        f"## Per-step overhead (median of {args.steps} interleaved steps: training_step + optimizer step)",
        "",
        "Wall clock and the process's CPU time (all threads). The last row is the bank's own work "
        "(`memory_bank_loss` + backward + `enqueue` at the step's shapes) run alone in the same round robin, as a "
        "share of the no-bank step: the part of the overhead that is the bank's arithmetic.",
        "",
        "| bank | s / step | overhead vs no bank | CPU s / step | CPU overhead |",
        "|---|---|---|---|---|",
    ]
    for name, seconds, overhead, cpu, cpu_overhead in rows:
        if name == "no bank":
            lines.append(f"| {name} | {seconds:.4f} | — | {cpu:.4f} | — |")
        elif name.startswith(ALONE):
            lines.append(f"| {name} | {seconds:.4f} | {100 * overhead:.1f}% of a step | {cpu:.4f} | "
                         f"{100 * cpu_overhead:.1f}% of a step |")
        else:
            lines.append(f"| {name} | {seconds:.4f} | {100 * overhead:+.1f}% | {cpu:.4f} | {100 * cpu_overhead:+.1f}% |")
    lines += [
        "",
        "Goal (issue 20): ≤ 5% at 64k × 256, batch 64.",
        "",
        f"## Selection cost: the bank's part of a step (`memory_bank_loss` + backward), batch {args.batch_size}, "
        f"{args.embed_dim}-d (median ms of {args.selection_repeats} interleaved repeats)",
        "",
        "The reference is the one `(B × C × D)` similarity product every strategy needs (`queries @ bank.T`); goal "
        "(issue 20): each strategy within 3× of it.",
        "",
        "| bank size | matmul alone | fifo | hard | entropy | fifo / matmul | hard / matmul | entropy / matmul |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size, row in selection:
        m = row["matmul"]
        lines.append(f"| {size} | {m:.2f} | {row['fifo']:.2f} | {row['hard']:.2f} | {row['entropy']:.2f} | "
                     f"{row['fifo'] / m:.2f}x | {row['hard'] / m:.2f}x | {row['entropy'] / m:.2f}x |")
    lines.append("")
    output = Path(args.output_file)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(output, "\n".join(lines))
    print("\n".join(lines))
    return output


if __name__ == "__main__":
    main()
