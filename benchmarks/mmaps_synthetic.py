"""Synthetic product-summarization benchmark: does MMAPS's image side matter, and does training beat lead-N?

    python -m benchmarks.mmaps_synthetic --num_products 300 --max_steps 800 [--output_dir outputs/mmaps_bench]

Steps, all through the package's own CLIs: ``mmaps-synth`` writes a Chinese CEPSUM-layout set in which
some attributes (the colour, sometimes the pattern) appear only in the image; ``mmaps-train --config_name
tiny-scratch`` trains the same tiny model twice, once fed the images and once image-blind (``--visual_input
none``); ``mmaps-eval`` scores each on the test split (CEPSUM character ROUGE, BLEU, attribute F1, the
lead-N-characters baseline, and the share of image-only attributes the summaries mention). The table
and the command go to ``benchmarks/results/mmaps_synthetic.md`` (and ``.json``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def run(num_products: int, max_steps: int, output_dir: str, seed: int, learning_rate: float, threads: int) -> dict:
    import torch

    from hub_cards.metrics_report import read_metrics_report
    from modeling_mmaps.cli.eval import main as eval_main
    from modeling_mmaps.cli.train import main as train_main
    from modeling_mmaps.data.synthetic import generate_synthetic_products

    torch.set_num_threads(threads)
    data_dir = os.path.join(output_dir, "data")
    generate_synthetic_products(data_dir, num_products=num_products, seed=seed, overwrite=True)
    rows = {}
    for visual_input in ("images", "none"):
        model_dir = os.path.join(output_dir, f"model_{visual_input}")
        start = time.time()
        train_main([
            "--data_dir", data_dir, "--output_dir", model_dir, "--config_name", "tiny-scratch", "--visual_input", visual_input,
            "--max_steps", str(max_steps), "--per_device_train_batch_size", "16", "--learning_rate", str(learning_rate),
            "--warmup_steps", "0.05", "--logging_steps", "100", "--save_strategy", "no", "--eval_strategy", "no",
            "--eval_split", "", "--report_to", "none", "--use_cpu", "--seed", str(seed), "--attribute_top_n", "40",
            "--disable_tqdm", "true",
        ])
        train_seconds = time.time() - start
        eval_dir = os.path.join(output_dir, f"eval_{visual_input}")
        metrics = eval_main([
            "--data_dir", data_dir, "--model_name_or_path", model_dir, "--split", "test", "--visual_input", visual_input,
            "--output_dir", eval_dir, "--num_beams", "1", "--max_new_tokens", "40", "--use_cpu",
        ])
        metrics["num_products"] = read_metrics_report(eval_dir).settings["num_products"]
        metrics["train_seconds"] = train_seconds
        rows[visual_input] = metrics
    return rows


def write_table(rows: dict, command: str, args: argparse.Namespace) -> str:
    lead_key = next(k for k in rows["images"] if k.startswith("lead") and k.endswith("_rougeL"))
    lead_prefix = lead_key[: -len("_rougeL")]
    lines = [
        "# MMAPS on the synthetic product set (CEPSUM protocol, test split)",
        "",
        f"Command: `{command}`",
        "",
        f"{args.num_products} products (zh), tiny MMAPS from scratch, {args.max_steps} steps of batch 16 on CPU, greedy decoding.",
        "ROUGE = CEPSUM character ROUGE F ×100 (mean over references then products; ROUGE-L set-based union LCS).",
        "Image-only mention = share of attributes absent from the text but shown in the image that the summary names.",
        f"Test split: {rows['images']['num_products']} products, one seed — differences of a few points are noise.",
        "",
        "| system | ROUGE-1 | ROUGE-2 | ROUGE-L | BLEU-4 | attribute F1 | image-only mention % | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lead = rows["images"]
    lines.append(
        f"| {lead_prefix} baseline (first N chars) | {lead[lead_prefix + '_rouge1']:.2f} | {lead[lead_prefix + '_rouge2']:.2f} "
        f"| {lead[lead_prefix + '_rougeL']:.2f} | – | – | – | – |"
    )
    for name, label in (("none", "tiny MMAPS, image-blind"), ("images", "tiny MMAPS, with images")):
        m = rows[name]
        lines.append(
            f"| {label} | {m['rouge1']:.2f} | {m['rouge2']:.2f} | {m['rougeL']:.2f} | {m['bleu4']:.2f} | "
            f"{m.get('attribute_f1', float('nan')):.2f} | {m.get('image_only_attribute_mention_rate', float('nan')):.1f} | "
            f"{m['train_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_products", type=int, default=300)
    parser.add_argument("--max_steps", type=int, default=800)
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)")
    parser.add_argument("--output_dir", default="outputs/mmaps_synthetic_benchmark")
    args = parser.parse_args(argv)
    from hub_cards.atomic_files import write_json_atomically, write_text_atomically

    command = "python -m benchmarks.mmaps_synthetic " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = run(args.num_products, args.max_steps, args.output_dir, args.seed, args.learning_rate, args.threads)
    table = write_table(rows, command.strip(), args)
    write_text_atomically(os.path.join(RESULTS, "mmaps_synthetic.md"), table)
    write_json_atomically(os.path.join(RESULTS, "mmaps_synthetic.json"), rows)
    print(table)
    return rows


if __name__ == "__main__":
    main()
