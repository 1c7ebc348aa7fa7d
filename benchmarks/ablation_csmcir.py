"""CSMCIR ablations on the embedded synthetic CIR benchmark (CIRR protocol on ``val``), three seeds each.

Variants (all trained with the real ``CSMCIRTrainer`` from scratch, same data, steps and schedule):

* ``full``        — target captions (symmetric tower) + one shared Q-Former + entropy memory bank;
* ``asymmetric``  — image-only targets (no captions: the SPRC-style asymmetric baseline), entropy bank;
* ``unshared``    — captions, but two separate, unshared Q-Formers (``share_qformer=False``), entropy bank;
* ``bank_none`` / ``bank_fifo`` / ``bank_hard`` — the full model with another bank strategy
  (``bank_entropy`` is ``full``);
* ``bank_unweighted`` — the full model with every bank negative at weight 1 (``bank_weight=1``, the setting
  that collapsed from-scratch runs before ``bank_weight`` existed);
* ``tokens`` / ``asymmetric_tokens`` — ``full`` / ``asymmetric`` with ``target_representation="tokens"``: each
  target kept as its ``num_query_tokens`` per-token features and scored by their maximum (``CSMCIRModel.score``;
  the bank stores token entries), the other target representation next to the one-vector rows.

Reports mean ± std over seeds of R@1, R@5 and Rs@1, plus training efficiency: val Recall every
``eval_every`` steps for ``full`` and ``asymmetric`` (PNG + table) and the steps each needs to reach a fixed
R@5. Runs go to ``workers`` processes with one thread each (the machine is small and shared). Writes
``benchmarks/results/ablation_csmcir.{md,json}`` and ``ablation_csmcir_efficiency.png``, and saves the seed-0
``full`` and ``asymmetric`` models under ``model_dir`` for ``csmcir-visualize``.

    .venv/bin/python benchmarks/ablation_csmcir.py            # defaults: the committed table
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import HfArgumentParser
from transformers.utils import logging

from hub_cards.atomic_files import atomic_path, write_json_atomically, write_text_atomically
from modeling_csmcir.cached_training import (
    CachedCIRSplit, CachedRunSettings, evaluate_cached, mean_std, quiet_transformers, steps_to_reach, train_cached,
)
from modeling_csmcir.presets import preset_config, preset_processor
from modeling_csmcir.data.synthetic import SyntheticCIRConfig, generate_synthetic_cir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_notes import previous_notes  # noqa: E402


logger = logging.get_logger(__name__)

#: variant -> (use_target_captions, share_qformer, bank_strategy, description)
VARIANTS: dict[str, tuple[bool, bool, str, str]] = {
    "full": (True, True, "entropy", "captions + shared Q-Former + entropy bank (the paper's model)"),
    "asymmetric": (False, True, "entropy", "image-only targets (no captions), entropy bank"),
    "unshared": (True, False, "entropy", "captions, two unshared Q-Formers, entropy bank"),
    "bank_none": (True, True, "none", "full model, no memory bank (in-batch negatives only)"),
    "bank_fifo": (True, True, "fifo", "full model, FIFO bank (every entry a negative)"),
    "bank_hard": (True, True, "hard", "full model, hard bank (top k_max entries)"),
    "bank_unweighted": (True, True, "entropy", "full model, entropy bank, every bank negative at weight 1"),
    "tokens": (True, True, "entropy", "full model, token-level targets (8 per-token features, max over tokens)"),
    "asymmetric_tokens": (False, True, "entropy", "image-only token-level targets (SPRC's target side), max over tokens"),
}
#: variants whose CSMCIRConfig differs from the preset's beyond share_qformer
CONFIG_OVERRIDES: dict[str, dict] = {"tokens": {"target_representation": "tokens"},
                                     "asymmetric_tokens": {"target_representation": "tokens"}}
#: variants whose bank weight is not ``--bank_weight``
BANK_WEIGHT_OVERRIDES: dict[str, float] = {"bank_unweighted": 1.0}
CURVE_VARIANTS = ("full", "asymmetric")


@dataclass
class AblationArguments:
    output_dir: str = field(default="benchmarks/results", metadata={"help": "Where the table, JSON and PNG go."})
    data_dir: str = field(default="outputs/ablation_cir_data", metadata={"help": "Generated once, then reused."})
    model_dir: str = field(default="outputs/ablation_csmcir_models", metadata={"help": "Seed-0 full/asymmetric models."})
    num_images: int = field(default=2400)
    image_size: int = field(default=32)
    min_objects: int = field(default=1)
    max_objects: int = field(default=2)
    pairs_per_set: int = field(default=3)
    caption_error_rate: float = field(default=0.15)
    data_seed: int = field(default=0)
    seeds: str = field(default="0,1,2")
    variants: str = field(default=",".join(VARIANTS))
    max_steps: int = field(default=200)
    batch_size: int = field(default=32)
    learning_rate: float = field(default=1e-3)
    hidden_size: int = field(default=64)
    num_layers: int = field(default=2)
    eval_every: int = field(default=25, metadata={"help": "Val evaluation interval of the efficiency curves."})
    bank_size: int = field(default=512)
    bank_k_min: int = field(default=4)
    bank_k_max: int = field(default=16)
    bank_start_step: int = field(default=50)
    bank_max_age: int = field(default=8, metadata={"help": "Steps; a fast-changing tiny model makes old entries stale."})
    bank_age_decay: float = field(default=4.0)
    bank_weight: float = field(
        default=0.1, metadata={"help": "Weight of each bank negative (log w added to its logit); see MemoryBank."}
    )
    freeze_temperature: bool = field(
        default=True, metadata={"help": "Keep τ at its initial 0.07 (lr 1e-3 from scratch drives it to its clamp)."}
    )
    target_metric: str = field(default="recall_at_5")
    target_value: float = field(default=15.0, metadata={"help": "Fixed val Recall the efficiency table measures steps to."})
    workers: int = field(default=2, metadata={"help": "Parallel processes (one CPU thread each)."})
    report_only: bool = field(default=False, metadata={"help": "Only rebuild the table from the finished runs on disk."})


_WORKER: dict = {}


def _init_worker(args_dict: dict) -> None:
    torch.set_num_threads(1)
    quiet_transformers()
    args = AblationArguments(**args_dict)
    processor = preset_processor("small", image_size=args.image_size)
    _WORKER.update(args=args, processor=processor,
                   train=CachedCIRSplit(args.data_dir, "train", processor), val=CachedCIRSplit(args.data_dir, "val", processor))


def _run(variant: str, seed: int) -> dict:
    args, train, val = _WORKER["args"], _WORKER["train"], _WORKER["val"]
    captions, shared, strategy, _ = VARIANTS[variant]
    config = preset_config("small", vocab_size=len(_WORKER["processor"].tokenizer), image_size=args.image_size,
                           hidden_size=args.hidden_size, num_layers=args.num_layers, share_qformer=shared,
                           **CONFIG_OVERRIDES.get(variant, {}))
    settings = CachedRunSettings(
        use_target_captions=captions, share_qformer=shared, bank_strategy=strategy, seed=seed, max_steps=args.max_steps,
        batch_size=args.batch_size, learning_rate=args.learning_rate, bank_size=args.bank_size,
        bank_k_min=args.bank_k_min, bank_k_max=args.bank_k_max, bank_start_step=args.bank_start_step,
        bank_max_age=args.bank_max_age, bank_age_decay=args.bank_age_decay,
        bank_weight=BANK_WEIGHT_OVERRIDES.get(variant, args.bank_weight), freeze_temperature=args.freeze_temperature,
        eval_every=args.eval_every if variant in CURVE_VARIANTS else 0,
        output_dir=os.path.join(args.model_dir, "trainer_tmp", f"{variant}_{seed}"),
    )
    model, info = train_cached(config, train, val, settings)
    final = info["curve"][-1] if info["curve"] else evaluate_cached(model, val, captions)
    final = {k: v for k, v in final.items() if k != "step"}
    if seed == 0 and variant in CURVE_VARIANTS:
        model.save_pretrained(os.path.join(args.model_dir, variant))
        _WORKER["processor"].save_pretrained(os.path.join(args.model_dir, variant))
    return {"variant": variant, "seed": seed, "metrics": final, **info}


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(AblationArguments).parse_args_into_dataclasses(args=argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; expected some of {list(VARIANTS)}")
    if not (Path(args.data_dir) / "metadata.json").is_file():
        generate_synthetic_cir(SyntheticCIRConfig(
            output_dir=args.data_dir, num_images=args.num_images, seed=args.data_seed, image_size=args.image_size,
            min_objects=args.min_objects, max_objects=args.max_objects, pairs_per_set=args.pairs_per_set,
            caption_error_rate=args.caption_error_rate,
        ))
    # Each finished run is written at once (seed-major order: every variant's seed 0 first), so an interrupted
    # ablation keeps its runs, a rerun skips them, and --report_only builds the table from whatever finished.
    runs_dir = Path(args.output_dir) / "ablation_csmcir_runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for v, s in [(v, s) for s in seeds for v in variants]:
        path = runs_dir / f"{v}_seed{s}.json"
        if path.is_file():
            run = json.loads(path.read_text(encoding="utf-8"))
            if run.get("max_steps") == args.max_steps and run.get("settings") == _settings_key(args):
                runs.append(run)
    done = {(r["variant"], r["seed"]) for r in runs}
    jobs = [] if args.report_only else [(v, s) for s in seeds for v in variants if (v, s) not in done]
    start = time.perf_counter()
    if jobs:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.workers, mp_context=context, initializer=_init_worker, initargs=(asdict(args),)) as pool:
            futures = [pool.submit(_run, v, s) for v, s in jobs]
            for future in tqdm(as_completed(futures), total=len(futures), desc="ablation runs"):
                run = {**future.result(), "max_steps": args.max_steps, "settings": _settings_key(args)}
                write_json_atomically(runs_dir / f"{run['variant']}_seed{run['seed']}.json", run, indent=1)
                runs.append(run)
    wall = time.perf_counter() - start
    variants = [v for v in variants if any(r["variant"] == v for r in runs)]
    report = _summarise(args, runs, variants, seeds, wall)
    command = "python benchmarks/ablation_csmcir.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    report["command"] = command.strip()
    previous = out / "ablation_csmcir.json"
    if args.report_only and previous.is_file():
        # A rebuilt table still names the command and wall time of the runs it shows.
        earlier = json.loads(previous.read_text(encoding="utf-8"))
        report["command"], report["wall_seconds"] = earlier["command"], earlier["wall_seconds"]
    write_json_atomically(out / "ablation_csmcir.json", report, indent=1)
    if all(v in variants for v in CURVE_VARIANTS):
        _plot(report, out / "ablation_csmcir_efficiency.png")
    _write_markdown(args, report, out / "ablation_csmcir.md")
    return report


def _settings_key(args: AblationArguments) -> dict:
    """The arguments a finished run depends on (besides variant and seed): a kept run is reused only when they match."""
    keys = ("num_images", "image_size", "batch_size", "learning_rate", "hidden_size", "num_layers", "bank_size",
            "bank_k_min", "bank_k_max", "bank_start_step", "bank_max_age", "bank_age_decay", "bank_weight",
            "freeze_temperature")
    return {k: getattr(args, k) for k in keys}


def _summarise(args: AblationArguments, runs: list[dict], variants: list[str], seeds: list[int], wall: float) -> dict:
    by_variant = {v: sorted((r for r in runs if r["variant"] == v), key=lambda r: r["seed"]) for v in variants}
    summary = {}
    for v, rs in by_variant.items():
        summary[v] = {k: mean_std([r["metrics"][k] for r in rs])
                      for k in ("recall_at_1", "recall_at_5", "recall_at_10", "recall_subset_at_1", "avg")}
        summary[v]["train_seconds"] = mean_std([r["train_seconds"] for r in rs])
        summary[v]["seeds"] = ",".join(str(r["seed"]) for r in rs)
    efficiency = {}
    for v in CURVE_VARIANTS:
        if v not in by_variant:
            continue
        steps = [steps_to_reach(r["curve"], args.target_metric, args.target_value) for r in by_variant[v]]
        curve_steps = [p["step"] for p in by_variant[v][0]["curve"]]
        mean_curve = {metric: [mean_std([r["curve"][i][metric] for r in by_variant[v]]) for i in range(len(curve_steps))]
                      for metric in ("recall_at_1", "recall_at_5", "recall_subset_at_1")}
        efficiency[v] = {"steps_to_target": steps, "curve_steps": curve_steps, "mean_curve": mean_curve}
    return {"arguments": asdict(args), "wall_seconds": wall, "summary": summary, "efficiency": efficiency, "runs": runs}


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, title in ((axes[0], "recall_at_1", "val R@1"), (axes[1], "recall_at_5", "val R@5")):
        for v, colour in zip(CURVE_VARIANTS, ("tab:blue", "tab:orange")):
            eff = report["efficiency"][v]
            mean = [m for m, _ in eff["mean_curve"][metric]]
            std = [s for _, s in eff["mean_curve"][metric]]
            ax.plot(eff["curve_steps"], mean, label=v, color=colour)
            ax.fill_between(eff["curve_steps"], [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=colour, alpha=0.2)
        if metric == report["arguments"]["target_metric"]:
            ax.axhline(report["arguments"]["target_value"], color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("training step")
        ax.set_ylabel(f"{title} (%)")
        ax.set_title(f"{title}, mean ± std over seeds")
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _fmt(pair: tuple[float, float]) -> str:
    return f"{pair[0]:.1f} ± {pair[1]:.1f}"


def _write_markdown(args: AblationArguments, report: dict, path: Path) -> None:
    summary, eff = report["summary"], report["efficiency"]
    lines = [
        "# CSMCIR ablations on the synthetic CIR benchmark",
        "",
        f"Command: `.venv/bin/{report['command']}` ({args.workers} worker processes × 1 thread on the shared 2-core CPU "
        "machine; finished runs are kept under `ablation_csmcir_runs/` and skipped on rerun; `--report_only True` "
        "rebuilds this file from them).",
        "",
        f"Data: `csmcir-synth --num_images {args.num_images} --seed {args.data_seed} --image_size {args.image_size} "
        f"--min_objects {args.min_objects} --max_objects {args.max_objects} --pairs_per_set {args.pairs_per_set} "
        f"--caption_error_rate {args.caption_error_rate}` (CIRR rc2 layout; train/val sizes in the JSON).",
        f"Model: CSMCIR from scratch (preset `small`: ViT and Q-Former width {args.hidden_size}, "
        f"{args.num_layers} layers, 8 query tokens, 64-d embeddings; the tiny ViT trains too). Training: "
        f"`CSMCIRTrainer`, {args.max_steps} steps, batch {args.batch_size}, AdamW lr {args.learning_rate} (warm-up 30, "
        f"cosine), bank size {args.bank_size}, k_min {args.bank_k_min}, k_max {args.bank_k_max}, bank from step "
        f"{args.bank_start_step}, age decay {args.bank_age_decay:g}, max age {args.bank_max_age}, bank weight {args.bank_weight:g} "
        f"(`bank_unweighted`: 1), temperature {'frozen at 0.07' if args.freeze_temperature else 'learned'}. Seeds requested: {args.seeds} (model init and data order); the table's `seeds` column says which finished.",
        "Protocol: CIRR rc2 on `val` — R@K over the gallery with the reference removed; Rs@1 within the img_set "
        "(5 candidates, chance 20%). Mean ± sample std over seeds, in %.",
        "",
        "| variant | what changes | seeds | R@1 | R@5 | Rs@1 | train s / run |",
        "|---|---|---|---|---|---|---|",
    ]
    for v, s in summary.items():
        lines.append(f"| {v} | {VARIANTS[v][3]} | {s['seeds']} | {_fmt(s['recall_at_1'])} | {_fmt(s['recall_at_5'])} | "
                     f"{_fmt(s['recall_subset_at_1'])} | {s['train_seconds'][0]:.0f} |")
    if eff:
        lines += [
            "",
            f"## Training efficiency (val {args.target_metric.replace('recall_at_', 'R@')} ≥ {args.target_value}%)",
            "",
            f"Plot: [ablation_csmcir_efficiency.png](ablation_csmcir_efficiency.png). Val evaluated every "
            f"{args.eval_every} steps; 'steps to reach' is the first evaluated step at or above the threshold "
            "(— = not reached within the run).",
            "",
            "| variant | steps to reach, per seed | mean over seeds that reached |",
            "|---|---|---|",
        ]
        for v, e in eff.items():
            reached = [s for s in e["steps_to_target"] if s is not None]
            per_seed = ", ".join("—" if s is None else str(s) for s in e["steps_to_target"])
            mean = f"{sum(reached) / len(reached):.0f} ({len(reached)}/{len(e['steps_to_target'])} seeds)" if reached else "not reached"
            lines.append(f"| {v} | {per_seed} | {mean} |")
        names = list(eff)
        lines += ["", "| step | " + " | ".join(f"{v} R@1 | {v} R@5" for v in names) + " |",
                  "|---|" + "---|---|" * len(names)]
        for i, step in enumerate(eff[names[0]]["curve_steps"]):
            cells = []
            for v in names:
                cells += [_fmt(eff[v]["mean_curve"]["recall_at_1"][i]), _fmt(eff[v]["mean_curve"]["recall_at_5"][i])]
            lines.append(f"| {step} | " + " | ".join(cells) + " |")
    lines += ["", "## Notes", "", previous_notes(path), ""]
    write_text_atomically(path, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
