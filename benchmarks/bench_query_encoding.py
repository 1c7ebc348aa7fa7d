"""Query-encoding throughput: CSMCIRModel against transformers' Blip2ForImageTextRetrieval joint pass.

Both models hold the same weights (ours is converted with `from_blip2_pretrained`), see the same inputs and
run interleaved in one process, so the ratio is not disturbed by machine load drift. Two measurements:
the full pass (vision tower + Q-Former) and the Q-Former alone over cached vision features (where the
shared tower's bookkeeping would show if it cost anything). Goal: ours / BLIP-2 time ≤ 1.05.

Usage: python benchmarks/bench_query_encoding.py [--size base|small] [--batch_size 8] [--repeats 7]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import Blip2Config, Blip2ForImageTextRetrieval

from modeling_csmcir import CSMCIRModel

SIZES = {
    # ViT-B/16-sized vision tower and a BERT-base-sized Q-Former (BLIP-2's Q-Former is BERT-base).
    "base": dict(vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                             image_size=224, patch_size=16),
                 qformer=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              encoder_hidden_size=768, cross_attention_frequency=2)),
    "small": dict(vision=dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=6,
                              image_size=224, patch_size=16),
                  qformer=dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=6,
                               encoder_hidden_size=384, cross_attention_frequency=2)),
}


def _timed(function, repeats: int) -> list[float]:
    # Process CPU time, not wall time: the benchmark machine is shared, and CPU time is what the model costs.
    times = []
    for _ in range(repeats):
        start = time.process_time()
        function()
        times.append(time.process_time() - start)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="base")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--text_length", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--output", default="benchmarks/results/query_encoding.md")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    size = SIZES[args.size]
    config = Blip2Config(
        vision_config=size["vision"],
        qformer_config=dict(size["qformer"], use_qformer_text_input=True, vocab_size=30522),
        text_config={"model_type": "opt", "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "ffn_dim": 32, "word_embed_proj_dim": 16},
        num_query_tokens=32,
        image_text_hidden_size=256,
    )
    peer = Blip2ForImageTextRetrieval(config).eval()
    with tempfile.TemporaryDirectory() as folder:
        peer.save_pretrained(folder)
        ours = CSMCIRModel.from_blip2_pretrained(folder).eval()

    batch = args.batch_size
    pixel_values = torch.randn(batch, 3, size["vision"]["image_size"], size["vision"]["image_size"])
    input_ids = torch.randint(1000, 30000, (batch, args.text_length))
    attention_mask = torch.ones_like(input_ids)
    query_mask = torch.ones(batch, 32, dtype=torch.long)

    def peer_joint_pass(image_embeds: torch.Tensor) -> torch.Tensor:
        # The joint query+text pass of Blip2ForImageTextRetrieval (its ITM branch), then the ITC text projection.
        query_tokens = peer.query_tokens.expand(batch, -1, -1)
        hidden = peer.qformer(
            query_embeds=peer.embeddings(input_ids=input_ids, query_embeds=query_tokens),
            query_length=32,
            attention_mask=torch.cat([query_mask, attention_mask], dim=1),
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=torch.ones(image_embeds.shape[:-1], dtype=torch.long),
        ).last_hidden_state
        return torch.nn.functional.normalize(peer.text_projection(hidden[:, 32]), dim=-1)

    with torch.inference_mode():
        image_embeds = peer.vision_model(pixel_values=pixel_values).last_hidden_state
        cases = {
            "full pass (vision + Q-Former)": (
                lambda: peer_joint_pass(peer.vision_model(pixel_values=pixel_values).last_hidden_state),
                lambda: ours.get_query_features(pixel_values, input_ids, attention_mask),
            ),
            "Q-Former only (cached vision features)": (
                lambda: peer_joint_pass(image_embeds),
                lambda: ours.get_query_features(None, input_ids, attention_mask, image_embeds=image_embeds),
            ),
        }
        assert torch.allclose(cases["full pass (vision + Q-Former)"][0](), cases["full pass (vision + Q-Former)"][1](),
                              atol=1e-5), "the two paths disagree: the comparison would be meaningless"
        rows = []
        for name, (peer_fn, ours_fn) in cases.items():
            peer_fn(), ours_fn()  # warm-up
            peer_times, ours_times = [], []
            for _ in range(args.repeats):  # interleave so drift in machine load hits both equally
                peer_times += _timed(peer_fn, 1)
                ours_times += _timed(ours_fn, 1)
            peer_median, ours_median = statistics.median(peer_times), statistics.median(ours_times)
            rows.append((name, batch / peer_median, batch / ours_median, ours_median / peer_median))

    command = "python benchmarks/bench_query_encoding.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        "# Query encoding throughput: CSMCIRModel vs Blip2ForImageTextRetrieval",
        "",
        f"Command: `{command.strip()}`  ",
        f"Machine: {platform.machine()} CPU, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"size `{args.size}` (vision {size['vision']['num_hidden_layers']}×{size['vision']['hidden_size']} at "
        f"{size['vision']['image_size']} px, Q-Former {size['qformer']['num_hidden_layers']}×"
        f"{size['qformer']['hidden_size']}, 32 query tokens), batch {batch}, text length {args.text_length}, "
        f"median process CPU time of {args.repeats} interleaved runs, same weights (converted with `from_blip2_pretrained`).",
        "",
        "| pass | BLIP-2 queries per CPU-second | CSMCIR queries per CPU-second | time ratio CSMCIR / BLIP-2 (goal ≤ 1.05) |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {name} | {p:.2f} | {o:.2f} | {ratio:.3f} |" for name, p, o, ratio in rows]
    text = "\n".join(lines) + "\n"
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
