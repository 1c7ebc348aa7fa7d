"""CSMCIR fine-tuning from an ITC-pretrained start, with small batches: the regime the paper's memory bank is for.

One pretraining (``pretraining.pretrain``: BLIP-2 stage-1 ITC + the caption-completion term on synthetic
scene/caption pairs, disjoint from the benchmark's val/test scenes) is the common start of every run; each run
fine-tunes a copy with the real ``CSMCIRTrainer`` on the pre-processed CIR split (``cached_training``) at a
small learning rate. Variants (one factor each away from ``entropy``, the paper's model):

* bank strategies ``none`` / ``fifo`` / ``hard`` / ``entropy`` at batch 16 with the bank's default settings
  (``CSMCIRTrainingArguments``: weight, k, age), against in-batch negatives at batch 8 and batch 64;
* ``asymmetric``: image-only targets (no captions);
* ``unshared``: two Q-Formers, both starting from the pretrained one (``pretraining.unshared_from_shared``);
* ``tokens`` / ``sprc``: token-level targets scored by their maximum (scoring presets ``csmcir-authors`` with
  captions, and ``sprc``: second image-free query pass, image-only token targets);
* ``scratch``: the ``entropy`` run from random weights (what pretraining buys).

Three seeds (fine-tuning init order and data order; the pretraining is seed 0), mean ± std, val Recall every
``eval_every`` steps (steps-to-threshold table + PNG), and t-SNE of query/target spaces of the seed-0
``entropy`` and ``asymmetric`` models (``evaluation.symmetry``). Load average before/after is recorded.

    .venv/bin/python benchmarks/finetune_csmcir.py       # the committed table
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import HfArgumentParser

from hub_cards.atomic_files import atomic_path, write_json_atomically, write_text_atomically
from modeling_csmcir import CSMCIRModel
from modeling_csmcir.cached_training import (
    CachedCIRSplit, CachedRunSettings, mean_std, quiet_transformers, steps_to_reach, train_cached,
)
from modeling_csmcir.data.synthetic import (
    SyntheticCIRConfig, generate_synthetic_cir, load_benchmark_scenes, scene_caption_pairs,
)
from modeling_csmcir.presets import apply_scoring_preset, preset_model
from modeling_csmcir.pretraining import (
    CSMCIRPretrainingArguments, SceneCaptionTensors, pretrain, unshared_from_shared,
)
from modeling_csmcir.training_args import CSMCIRTrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_notes import previous_notes  # noqa: E402

#: variant -> (use_target_captions, share_qformer, bank_strategy, batch_size, scoring preset, pretrained, description)
VARIANTS: dict[str, tuple[bool, bool, str, int, str, bool, str]] = {
    "entropy": (True, True, "entropy", 16, "ours", True, "captions, shared Q-Former, entropy bank (the paper's model)"),
    "hard": (True, True, "hard", 16, "ours", True, "hard bank (top k_max entries)"),
    "fifo": (True, True, "fifo", 16, "ours", True, "FIFO bank (every entry a negative)"),
    "none_b16": (True, True, "none", 16, "ours", True, "no bank, in-batch negatives, batch 16"),
    "none_b8": (True, True, "none", 8, "ours", True, "no bank, in-batch negatives, batch 8"),
    "none_b64": (True, True, "none", 64, "ours", True, "no bank, batch 64 (the upper reference)"),
    "asymmetric": (False, True, "entropy", 16, "ours", True, "image-only targets (no captions), entropy bank"),
    "unshared": (True, False, "entropy", 16, "ours", True, "two Q-Formers (both from the pretrained one)"),
    "tokens": (True, True, "entropy", 16, "csmcir-authors", True, "token-level captioned targets, max over tokens"),
    "sprc": (False, True, "entropy", 16, "sprc", True, "SPRC scoring: second query pass, image-only token targets"),
    "entropy_old": (True, True, "entropy", 16, "ours", True, "entropy bank at the previous defaults (see below)"),
    "scratch": (True, True, "entropy", 16, "ours", False, "the entropy run from random weights (no pretraining)"),
}
#: variants whose bank settings are not the training arguments' defaults: the defaults before this benchmark
BANK_OVERRIDES: dict[str, dict] = {
    "entropy_old": dict(bank_size=4096, bank_k_min=16, bank_k_max=256, bank_age_decay=500.0, bank_max_age=1000,
                        bank_start_step=0, bank_weight=1.0),
}
TSNE_VARIANTS = ("entropy", "asymmetric")


@dataclass
class FinetuneArguments:
    output_dir: str = field(default="benchmarks/results", metadata={"help": "Where the table, JSON and PNGs go."})
    work_dir: str = field(default="outputs/finetune_csmcir_grid", metadata={"help": "Data, pretrained start, models."})
    preset: str = field(default="tiny-grid")
    num_images: int = field(default=3000)
    image_size: int = field(default=48, metadata={"help": "Rendered side = the vision tower's input side (tiny-grid: "
                                                          "48 px, one 16-px patch per grid cell)."})
    pairs_per_set: int = field(default=3)
    data_seed: int = field(default=0)
    pretrain_pairs: int = field(default=5000)
    pretrain_steps: int = field(default=300)
    pretrain_batch_size: int = field(default=64)
    pretrain_learning_rate: float = field(default=1e-3)
    completion_weight: float = field(default=0.0, metadata={"help": "Caption-completion weight (0: ITC only)."})
    seeds: str = field(default="0,1,2")
    variants: str = field(default=",".join(v for v in VARIANTS if v not in ("sprc", "scratch")))
    max_steps: int = field(default=300)
    learning_rate: float = field(default=3e-4, metadata={"help": "Fine-tuning rate (small: the features are pretrained)."})
    freeze_vision: bool = field(default=True, metadata={"help": "Fine-tune with the pretrained vision tower frozen and "
                                                                 "its features cached (BLIP-2 / SPRC); the Q-Former trains."})
    warmup_steps: int = field(default=15)
    bank_start_step: int = field(default=-1, metadata={"help": "-1: the training arguments' default."})
    eval_every: int = field(default=50)
    target_metric: str = field(default="recall_at_5")
    target_value: float = field(default=40.0)
    workers: int = field(default=1, metadata={"help": "Worker processes (1: every run in this process, 1 thread)."})
    report_only: bool = field(default=False)


_WORKER: dict = {}


def _bank_defaults() -> dict:
    """The bank settings of ``CSMCIRTrainingArguments``' defaults (what a plain ``csmcir-train`` uses)."""
    d = CSMCIRTrainingArguments(output_dir="unused", report_to="none", use_cpu=True)
    return {k: getattr(d, k) for k in ("bank_size", "bank_k_min", "bank_k_max", "bank_age_decay", "bank_max_age",
                                       "bank_weight", "bank_start_step", "freeze_temperature")}


def _data_dir(args: FinetuneArguments) -> Path:
    return Path(args.work_dir) / "data"


def _pretrained_dir(args: FinetuneArguments) -> Path:
    return Path(args.work_dir) / "pretrained"


def _prepare(args: FinetuneArguments) -> dict:
    """Generate the CIR data and the pretrained start once (kept under work_dir and reused)."""
    data_dir = _data_dir(args)
    if not (data_dir / "metadata.json").is_file():
        generate_synthetic_cir(SyntheticCIRConfig(output_dir=str(data_dir), num_images=args.num_images,
                                                  seed=args.data_seed, image_size=args.image_size,
                                                  pairs_per_set=args.pairs_per_set))
    out = _pretrained_dir(args)
    info_file = out / "pretraining.json"
    key = {k: getattr(args, k) for k in ("preset", "image_size", "pretrain_pairs", "pretrain_steps", "pretrain_batch_size",
                                         "pretrain_learning_rate", "completion_weight", "num_images", "data_seed")}
    if info_file.is_file() and json.loads(info_file.read_text())["key"] == key:
        return json.loads(info_file.read_text())
    torch.manual_seed(0)
    model, processor = preset_model(args.preset, image_size=args.image_size)
    excluded = load_benchmark_scenes(data_dir)
    pairs = scene_caption_pairs(args.pretrain_pairs, seed=0, image_size=args.image_size, exclude=excluded,
                                caption_error_rate=0.05)
    held = scene_caption_pairs(300, seed=0, stream="held-out", image_size=args.image_size,
                               exclude=excluded | {p["scene"] for p in pairs}, caption_error_rate=0.05)
    train_args = CSMCIRPretrainingArguments(
        output_dir=str(out / "trainer"), max_steps=args.pretrain_steps, per_device_train_batch_size=args.pretrain_batch_size,
        learning_rate=args.pretrain_learning_rate, warmup_steps=0.05, lr_scheduler_type="cosine", weight_decay=0.05,
        report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True, dataloader_drop_last=True, seed=0,
        completion_weight=args.completion_weight, logging_steps=max(1, args.pretrain_steps // 10),
    )
    start = time.perf_counter()
    _, report = pretrain(model, SceneCaptionTensors(pairs, processor), train_args, SceneCaptionTensors(held, processor))
    model.save_pretrained(out)
    processor.save_pretrained(out)
    info = {"key": key, "seconds": time.perf_counter() - start, "before": report["before"], "after": report["after"],
            "final_temperature": report["final_temperature"]}
    write_json_atomically(info_file, info, indent=1)
    return info


def _init_worker(args_dict: dict) -> None:
    torch.set_num_threads(1)
    quiet_transformers()
    args = FinetuneArguments(**args_dict)
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(_pretrained_dir(args))
    _WORKER.update(args=args, processor=processor, pretrained=CSMCIRModel.from_pretrained(_pretrained_dir(args)),
                   train=CachedCIRSplit(_data_dir(args), "train", processor),
                   val=CachedCIRSplit(_data_dir(args), "val", processor))


def _start_model(variant: str, seed: int) -> CSMCIRModel:
    args, pretrained = _WORKER["args"], _WORKER["pretrained"]
    _, shared, _, _, scoring, from_pretrained, _ = VARIANTS[variant]
    if from_pretrained:
        model = CSMCIRModel.from_pretrained(_pretrained_dir(args))
    else:
        torch.manual_seed(seed)
        model = CSMCIRModel(pretrained.config.__class__.from_dict(pretrained.config.to_dict()))
    apply_scoring_preset(model.config, scoring=scoring)
    if not shared:
        model = unshared_from_shared(model)
    return model


def _run(variant: str, seed: int) -> dict:
    args, train, val = _WORKER["args"], _WORKER["train"], _WORKER["val"]
    captions, _, strategy, batch, _, _, _ = VARIANTS[variant]
    bank = _bank_defaults()
    if args.bank_start_step >= 0:
        bank["bank_start_step"] = args.bank_start_step
    bank.update(BANK_OVERRIDES.get(variant, {}))
    settings = CachedRunSettings(
        use_target_captions=captions, bank_strategy=strategy, seed=seed, max_steps=args.max_steps, batch_size=batch,
        learning_rate=args.learning_rate, warmup_steps=args.warmup_steps, eval_every=args.eval_every,
        output_dir=os.path.join(args.work_dir, "trainer_tmp", f"{variant}_{seed}"),
        # A random tower has nothing to offer frozen: the from-scratch run trains it.
        freeze_vision=args.freeze_vision and VARIANTS[variant][5],
        vision_feature_cache="memory" if args.freeze_vision and VARIANTS[variant][5] else "none", **bank,
    )
    model, info = train_cached(None, train, val, settings, initial_model=_start_model(variant, seed))
    final = {k: v for k, v in info["curve"][-1].items() if k != "step"}
    if seed == 0 and variant in TSNE_VARIANTS:
        folder = Path(args.work_dir) / "models" / variant
        model.save_pretrained(folder)
        _WORKER["processor"].save_pretrained(folder)
    return {"variant": variant, "seed": seed, "metrics": final, "bank": bank, **info}


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main(argv: list[str] | None = None) -> dict:
    torch.set_num_threads(1)  # the machine is small and shared: one thread per process
    (args,) = HfArgumentParser(FinetuneArguments).parse_args_into_dataclasses(args=argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; expected some of {list(VARIANTS)}")
    load_before = _load()
    start = time.perf_counter()
    pretraining = _prepare(args)
    runs_dir = Path(args.output_dir) / "finetune_csmcir_runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    key = {k: v for k, v in asdict(args).items() if k not in ("seeds", "variants", "workers", "report_only", "output_dir")}
    runs = []
    for v, s in [(v, s) for s in seeds for v in variants]:
        path = runs_dir / f"{v}_seed{s}.json"
        if path.is_file():
            run = json.loads(path.read_text(encoding="utf-8"))
            if run.get("key") == key:
                runs.append(run)
    done = {(r["variant"], r["seed"]) for r in runs}
    jobs = [] if args.report_only else [(v, s) for s in seeds for v in variants if (v, s) not in done]
    # Seed-major (every variant's seed 0 first), the expensive batch-64 run last within a seed: an interrupted
    # benchmark still has comparable rows, and --report_only builds the table from whatever finished.
    jobs.sort(key=lambda job: (job[1], VARIANTS[job[0]][3] > 16))
    if jobs and args.workers <= 1:
        _init_worker(asdict(args))
        for v, s in tqdm(jobs, desc="fine-tuning runs"):
            run = {**_run(v, s), "key": key}
            write_json_atomically(runs_dir / f"{run['variant']}_seed{run['seed']}.json", run, indent=1)
            runs.append(run)
    elif jobs:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.workers, mp_context=context, initializer=_init_worker, initargs=(asdict(args),)) as pool:
            futures = [pool.submit(_run, v, s) for v, s in jobs]
            for future in tqdm(as_completed(futures), total=len(futures), desc="fine-tuning runs"):
                run = {**future.result(), "key": key}
                write_json_atomically(runs_dir / f"{run['variant']}_seed{run['seed']}.json", run, indent=1)
                runs.append(run)
    wall = time.perf_counter() - start
    load_after = _load()
    variants = [v for v in variants if any(r["variant"] == v for r in runs)]
    report = _summarise(args, runs, variants, wall)
    report.update(pretraining=pretraining, load_before=load_before, load_after=load_after,
                  machine=f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                          f"{args.workers} workers x 1 thread",
                  command=("python benchmarks/finetune_csmcir.py " + " ".join(sys.argv[1:] if argv is None else argv)).strip())
    out = Path(args.output_dir)
    previous = out / "finetune_csmcir.json"
    if args.report_only and previous.is_file():
        earlier = json.loads(previous.read_text(encoding="utf-8"))
        for k in ("command", "wall_seconds", "load_before", "load_after", "machine"):
            report[k] = earlier.get(k, report[k])
    write_json_atomically(previous, report, indent=1)
    _plot_curves(report, out / "finetune_csmcir_curves.png")
    if all((Path(args.work_dir) / "models" / v).is_dir() for v in TSNE_VARIANTS):
        report["tsne"] = _tsne(args, out / "finetune_csmcir_tsne.png")
        write_json_atomically(previous, report, indent=1)
    _write_markdown(args, report, out / "finetune_csmcir.md")
    return report


def _summarise(args: FinetuneArguments, runs: list[dict], variants: list[str], wall: float) -> dict:
    by_variant = {v: sorted((r for r in runs if r["variant"] == v), key=lambda r: r["seed"]) for v in variants}
    summary, efficiency = {}, {}
    for v, rs in by_variant.items():
        summary[v] = {k: mean_std([r["metrics"][k] for r in rs])
                      for k in ("recall_at_1", "recall_at_5", "recall_at_10", "recall_subset_at_1")}
        summary[v]["train_seconds"] = mean_std([r["train_seconds"] for r in rs])
        summary[v]["final_loss"] = mean_std([r["final_loss"] for r in rs])
        summary[v]["seeds"] = ",".join(str(r["seed"]) for r in rs)
        curve_steps = [p["step"] for p in rs[0]["curve"]]
        efficiency[v] = {
            "steps_to_target": [steps_to_reach(r["curve"], args.target_metric, args.target_value) for r in rs],
            "curve_steps": curve_steps,
            "mean_curve": {m: [mean_std([r["curve"][i][m] for r in rs]) for i in range(len(curve_steps))]
                           for m in ("recall_at_1", "recall_at_5")},
        }
    return {"arguments": asdict(args), "wall_seconds": wall, "summary": summary, "efficiency": efficiency, "runs": runs}


def _plot_curves(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [("bank strategies and batch size",
               ("entropy", "hard", "fifo", "none_b16", "none_b8", "none_b64", "entropy_old")),
              ("captions, sharing, target representation, start",
               ("entropy", "asymmetric", "unshared", "tokens", "sprc", "scratch"))]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    metric = report["arguments"]["target_metric"]
    for ax, (title, names) in zip(axes, groups):
        for v in names:
            if v not in report["efficiency"]:
                continue
            eff = report["efficiency"][v]
            mean = [m for m, _ in eff["mean_curve"][metric]]
            std = [s for _, s in eff["mean_curve"][metric]]
            line, = ax.plot(eff["curve_steps"], mean, label=v)
            ax.fill_between(eff["curve_steps"], [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=line.get_color(), alpha=0.12)
        ax.axhline(report["arguments"]["target_value"], color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel(f"val {metric.replace('recall_at_', 'R@')} (%)")
        ax.set_title(f"{title} (mean ± std, 3 seeds)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _tsne(args: FinetuneArguments, path: Path) -> dict:
    from modeling_csmcir.cli.visualize import main as visualize

    result = visualize(["--data_dir", str(_data_dir(args)),
                        "--full_model", str(Path(args.work_dir) / "models" / "entropy"),
                        "--asymmetric_model", str(Path(args.work_dir) / "models" / "asymmetric"),
                        "--output_file", str(path)])
    return result if isinstance(result, dict) else {}


def _fmt(pair) -> str:
    return f"{pair[0]:.1f} ± {pair[1]:.1f}"


def _write_markdown(args: FinetuneArguments, report: dict, path: Path) -> None:
    summary, eff, pre = report["summary"], report["efficiency"], report["pretraining"]
    bank = next(r["bank"] for r in report["runs"] if r["variant"] not in BANK_OVERRIDES)
    old = BANK_OVERRIDES["entropy_old"]
    flagged = max(report["load_before"][0], report["load_after"][0]) > (os.cpu_count() or 2)
    lines = [
        "# CSMCIR fine-tuning from an ITC-pretrained start (synthetic CIR benchmark)",
        "",
        f"Command: `.venv/bin/{report['command']}` — {report['machine']}; wall time {report['wall_seconds'] / 60:.1f} min; "
        f"load average (1/5/15 min) before {report['load_before']}, after {report['load_after']}"
        + (" — **above the core count: shared-machine noise in the timings**" if flagged else "") + ".",
        "",
        f"Data: `csmcir-synth --num_images {args.num_images} --seed {args.data_seed} --image_size {args.image_size} "
        f"--pairs_per_set {args.pairs_per_set}` (CIRR rc2 layout, 2–4 objects, caption error rate 0.15).",
        f"Pretraining (once, seed 0): preset `{args.preset}`, {args.pretrain_pairs} scene/caption pairs disjoint from the "
        f"val/test scenes, {args.pretrain_steps} steps of batch {args.pretrain_batch_size}, lr {args.pretrain_learning_rate:g}, "
        f"ITC + caption completion (weight {args.completion_weight:g}), {pre['seconds']:.0f} s. Held-out zero-shot "
        f"(300 pairs): image→caption R@5 {pre['before']['i2t_recall_at_5']:.1f} → {pre['after']['i2t_recall_at_5']:.1f}, "
        f"caption→image R@5 {pre['before']['t2i_recall_at_5']:.1f} → {pre['after']['t2i_recall_at_5']:.1f}.",
        f"Fine-tuning: `CSMCIRTrainer` on the pre-processed split, {args.max_steps} steps, AdamW lr {args.learning_rate:g} "
        f"(warm-up {args.warmup_steps}, cosine), from the pretrained temperature"
        + ("; vision tower frozen, its features cached (`vision_feature_cache=memory`), the Q-Former trains"
           if args.freeze_vision else "; vision tower trained") + "; bank = the training "
        f"arguments' defaults: size {bank['bank_size']}, k {bank['bank_k_min']}..{bank['bank_k_max']}, weight "
        f"{bank['bank_weight']:g}, age decay {bank['bank_age_decay']:g}, max age {bank['bank_max_age']}, from step "
        f"{bank['bank_start_step']}, temperature {'frozen' if bank['freeze_temperature'] else 'learned'}. `entropy_old`: "
        f"size {old['bank_size']}, k {old['bank_k_min']}..{old['bank_k_max']}, weight {old['bank_weight']:g}, age decay {old['bank_age_decay']:g}, max "
        f"age {old['bank_max_age']}, from step {old['bank_start_step']}. Seeds {args.seeds}.",
        "Protocol: CIRR rc2 on `val` (R@K with the reference removed; Rs@1 within the img_set, chance 20%). Mean ± "
        "sample std over seeds, %.",
        "",
        "| variant | what changes | batch | seeds | R@1 | R@5 | R@10 | Rs@1 | final loss | train s / run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v, s in summary.items():
        lines.append(f"| {v} | {VARIANTS[v][6]} | {VARIANTS[v][3]} | {s['seeds']} | {_fmt(s['recall_at_1'])} | "
                     f"{_fmt(s['recall_at_5'])} | {_fmt(s['recall_at_10'])} | {_fmt(s['recall_subset_at_1'])} | "
                     f"{s['final_loss'][0]:.2f} | {s['train_seconds'][0]:.0f} |")
    lines += [
        "",
        f"## Steps to val {args.target_metric.replace('recall_at_', 'R@')} ≥ {args.target_value:g}%",
        "",
        f"Curves: [finetune_csmcir_curves.png](finetune_csmcir_curves.png) (val every {args.eval_every} steps; — = "
        "not reached).",
        "",
        "| variant | steps, per seed | mean over seeds that reached | R@5 at each evaluation (mean) |",
        "|---|---|---|---|",
    ]
    for v, e in eff.items():
        reached = [s for s in e["steps_to_target"] if s is not None]
        per_seed = ", ".join("—" if s is None else str(s) for s in e["steps_to_target"])
        mean = f"{sum(reached) / len(reached):.0f} ({len(reached)}/{len(e['steps_to_target'])})" if reached else "not reached"
        curve = " / ".join(f"{m:.0f}" for m, _ in e["mean_curve"]["recall_at_5"])
        lines.append(f"| {v} | {per_seed} | {mean} | {curve} |")
    if report.get("tsne") is not None and (path.parent / "finetune_csmcir_tsne.png").is_file():
        lines += ["", "t-SNE of the seed-0 `entropy` (symmetric) and `asymmetric` models' val queries, targets and "
                      "reference images: [finetune_csmcir_tsne.png](finetune_csmcir_tsne.png)"
                      + (f" ({json.dumps(report['tsne'])})" if report["tsne"] else "") + "."]
    lines += ["", "## Notes", "", previous_notes(path), ""]
    write_text_atomically(path, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
