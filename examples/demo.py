"""The main job (`make demo`): both systems end to end on the embedded synthetic data, offline, on CPU.

1. Generate the synthetic CIR benchmark (CIRR layout + MCoT-format target captions) and the synthetic product set
   (CEPSUM layout, Chinese).
2. Pretrain a tiny CSMCIR with `csmcir-pretrain` (BLIP-2 stage-1 image–text contrastive learning on synthetic
   scene/caption pairs, none of them a val/test scene), then fine-tune it for composed retrieval (captioned targets,
   shared Q-Former, entropy memory bank, vision tower frozen and cached) with `csmcir-train --model_name_or_path`;
   train a tiny MMAPS with `mmaps-train`.
3. Evaluate both with the official protocols (`csmcir-eval`: CIRR R@K / Rs@K; `mmaps-eval`: CEPSUM ROUGE, BLEU,
   attribute F1).
4. Save Hub-ready folders under `outputs/` (weights, config, processor, remote code, custom pipeline, model card).
5. Reload each folder through `pipeline(..., trust_remote_code=True)` in a fresh process that cannot import this
   package, and print a few retrievals and summaries.

On a machine with two or more cores the two systems run side by side: MMAPS in a child process on one thread (its
log is printed when it ends, and kept in `<output_dir>/mmaps_demo.log`), CSMCIR here on the other cores;
`--sequential` runs them one after the other.

Usage: `make demo` or
`python -m examples.demo [--quick] [--seed N] [--only csmcir|mmaps] [--sequential] [--output_dir outputs]`
(measured times and numbers: README, "What `make demo` does").
Every step calls the same entry points a user runs, so the demo doubles as an end-to-end check.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("demo")


@dataclass(frozen=True)
class DemoBudget:
    """Sizes of one demo run; `--quick` shrinks everything to a smoke run."""

    cir_images: int
    cir_pairs_per_set: int
    pretrain_pairs: int
    pretrain_steps: int
    cir_steps: int
    cir_batch_size: int
    products: int
    mmaps_epochs: float
    shown: int


# Sized from measured CPU time per step of tiny-grid (one thread, shared machine): pretraining ~0.12 s at batch 64,
# fine-tuning with the vision tower frozen and cached ~0.08 s at batch 16 (benchmarks/results/finetune_csmcir.md).
# Retrieval numbers and wall time of this budget: README.
FULL = DemoBudget(cir_images=6000, cir_pairs_per_set=3, pretrain_pairs=4000, pretrain_steps=300, cir_steps=600,
                  cir_batch_size=16, products=600, mmaps_epochs=20, shown=5)
# A smoke run (the fixture of tests/test_readme.py): every folder and file of the full run, at the smallest sizes.
QUICK = DemoBudget(cir_images=360, cir_pairs_per_set=2, pretrain_pairs=256, pretrain_steps=4, cir_steps=12,
                   cir_batch_size=16, products=120, mmaps_epochs=1, shown=3)
#: The demo's model: 48-px images, one 16-px patch per cell of the synthetic scenes' 3x3 grid (presets.py).
IMAGE_SIZE = 48


def _banner(text: str) -> None:
    print(f"\n{'=' * 100}\n{text}\n{'=' * 100}", flush=True)


def _common_training_flags(output_dir: Path, seed: int) -> list[str]:
    return [
        "--output_dir", str(output_dir), "--seed", str(seed), "--report_to", "none", "--use_cpu", "true",
        "--save_strategy", "no", "--logging_steps", "25", "--dataloader_num_workers", "0",
    ]


# ----------------------------------------------------------------------------------------------------- CSMCIR


def run_csmcir(root: Path, budget: DemoBudget, seed: int) -> dict[str, Any]:
    """Generate, train, evaluate and publish a tiny CSMCIR; return its metrics and Hub folder."""
    from transformers import pipeline

    from hub_cards import read_metrics_report, write_csmcir_card
    from modeling_csmcir.cli.eval import main as csmcir_eval
    from modeling_csmcir.cli.pretrain import main as csmcir_pretrain
    from modeling_csmcir.cli.synth import main as csmcir_synth
    from modeling_csmcir.cli.train import main as csmcir_train

    data_dir, model_dir = root / "data" / "synthetic_cir", root / "csmcir-tiny-synthetic"
    pretrained_dir = root / "csmcir-tiny-pretrained"
    captions = data_dir / "target_captions" / "captions.rc2.{split}.json"

    _banner("CSMCIR 1/5 — synthetic composed-retrieval benchmark (CIRR layout, MCoT-format target captions)")
    csmcir_synth(["--output_dir", str(data_dir), "--num_images", str(budget.cir_images), "--seed", str(seed),
                  "--image_size", str(IMAGE_SIZE), "--pairs_per_set", str(budget.cir_pairs_per_set)])

    _banner("CSMCIR 2/5 — pretraining: image–text contrastive (BLIP-2 stage 1) on synthetic scene/caption pairs")
    # The stand-in for a pretrained BLIP-2: the tiny vision tower and Q-Former learn to align scenes with their
    # captions (none of the benchmark's val/test scenes among them). ITC alone: the caption-completion term costs
    # twice the step time and bought no fine-tuned recall in the measured regime.
    csmcir_pretrain([
        "--config_name", "tiny-grid", "--image_size", str(IMAGE_SIZE), "--scene_image_size", str(IMAGE_SIZE),
        "--num_pairs", str(budget.pretrain_pairs), "--exclude_scenes_from", str(data_dir),
        "--max_steps", str(budget.pretrain_steps), "--per_device_train_batch_size", "64", "--learning_rate", "1e-3",
        "--warmup_steps", "0.05", "--weight_decay", "0.05", "--lr_scheduler_type", "cosine", "--completion_weight", "0",
        *_common_training_flags(pretrained_dir, seed),
    ])

    _banner("CSMCIR 3/5 — fine-tuning CSMCIR from it: captioned targets, shared Q-Former, entropy memory bank, frozen vision")
    # BLIP-2 / SPRC fine-tuning: the pretrained vision tower frozen and its features cached after the first epoch
    # (a step costs only Q-Former passes), a small rate at batch 16, the entropy bank at the training arguments'
    # defaults (benchmarks/results/finetune_csmcir.md measures this regime).
    report = csmcir_train([
        "--dataset", "cirr", "--data_dir", str(data_dir), "--captions", str(captions),
        "--model_name_or_path", str(pretrained_dir), "--freeze_vision", "true", "--vision_feature_cache", "memory",
        "--max_steps", str(budget.cir_steps), "--per_device_train_batch_size", str(budget.cir_batch_size),
        "--learning_rate", "3e-4", "--warmup_steps", "0.05", "--weight_decay", "0.05", "--lr_scheduler_type", "cosine",
        "--bank_strategy", "entropy",
        *_common_training_flags(model_dir, seed),
    ])

    _banner("CSMCIR 4/5 — evaluation with the CIRR protocol (reference removed; Recall@K and Recall_subset@K)")
    csmcir_eval([
        "--dataset", "cirr", "--data_dir", str(data_dir), "--model_name_or_path", str(model_dir),
        "--split", "val", "--target_captions", str(captions).format(split="val"), "--output_dir", str(model_dir),
    ])

    _banner("CSMCIR 5/5 — Hub-ready folder: custom pipeline + model card")
    retriever = pipeline("composed-image-retrieval", model=str(model_dir), trust_remote_code=True)
    retriever.save_pretrained(str(model_dir))
    # The card reads metrics.json (csmcir-eval) and training_args.json (saved by the trainer) from the folder.
    write_csmcir_card(model_dir, metrics=model_dir, dataset_name="synthetic-cir")
    metrics = read_metrics_report(model_dir).values
    return {"folder": model_dir, "data_dir": data_dir, "metrics": metrics, "training": report}


_CSMCIR_RELOAD = """
import json
from pathlib import Path
from PIL import Image
from transformers import pipeline

data = Path({data_dir!r})
retriever = pipeline(model={folder!r}, trust_remote_code=True)
split = json.loads((data / "image_splits" / "split.rc2.val.json").read_text())
captions = json.loads((data / "target_captions" / "captions.rc2.val.json").read_text())
names = sorted(split)
index = retriever.build_index(
    [Image.open(data / split[n]) for n in names], captions=[captions[n]["Final_Caption"] for n in names], ids=names,
)
queries = json.loads((data / "captions" / "cap.rc2.val.json").read_text())[: {shown}]
shown = []
for query in queries:
    hits = retriever(Image.open(data / split[query["reference"]]), text=query["caption"], gallery=index, top_k=6)
    ranked = [hit["id"] for hit in hits if hit["id"] != query["reference"]][:5]  # CIRR rule: no reference
    shown.append({{"text": query["caption"], "target": query["target_hard"], "top5": ranked,
                  "found": query["target_hard"] in ranked, "pipeline": type(retriever).__module__}})
print(json.dumps(shown))
"""


# ------------------------------------------------------------------------------------------------------ MMAPS


def run_mmaps(root: Path, budget: DemoBudget, seed: int) -> dict[str, Any]:
    """Generate, train, evaluate and publish a tiny MMAPS; return its metrics and Hub folder."""
    from transformers import pipeline

    from hub_cards import read_metrics_report, write_mmaps_card
    from modeling_mmaps.cli.eval import main as mmaps_eval
    from modeling_mmaps.cli.synth import main as mmaps_synth
    from modeling_mmaps.cli.train import main as mmaps_train

    data_dir, model_dir = root / "data" / "synthetic_products", root / "mmaps-tiny-synthetic"

    _banner("MMAPS 1/4 — synthetic product-summarization set (CEPSUM layout, Chinese; some attributes only in the image)")
    mmaps_synth(["--output_dir", str(data_dir), "--num_products", str(budget.products), "--seed", str(seed),
                 "--overwrite", "true"])

    _banner("MMAPS 2/4 — training a tiny MMAPS: text + image, attribute head, alignment and region tasks")
    mmaps_train([
        "--data_dir", str(data_dir), "--config_name", "tiny-scratch", "--num_train_epochs", str(budget.mmaps_epochs),
        "--per_device_train_batch_size", "16", "--learning_rate", "3e-3", "--eval_strategy", "no",
        *_common_training_flags(model_dir, seed),
    ])

    _banner("MMAPS 3/4 — evaluation with the CEPSUM protocol (character ROUGE over all references, BLEU, attribute F1)")
    mmaps_eval(["--data_dir", str(data_dir), "--model_name_or_path", str(model_dir), "--split", "test",
                "--output_dir", str(model_dir)])

    _banner("MMAPS 4/4 — Hub-ready folder: custom pipeline + model card")
    summarizer = pipeline("product-summarization", model=str(model_dir), trust_remote_code=True)
    summarizer.save_pretrained(str(model_dir))
    write_mmaps_card(model_dir, metrics=model_dir, dataset_name="synthetic-products")
    return {"folder": model_dir, "data_dir": data_dir, "metrics": read_metrics_report(model_dir).values}


_MMAPS_RELOAD = """
import json
from pathlib import Path
from PIL import Image
from transformers import pipeline

data = Path({data_dir!r})
summarizer = pipeline(model={folder!r}, trust_remote_code=True)
shown = []
for name in sorted(p.name for p in data.glob("*_test.json")):
    products = json.loads((data / name).read_text())
    for sku, product in list(products.items())[: {shown}]:
        image_path = next((p for p in (data / "images").glob(sku + ".*")), None)
        item = {{"text": product["src"]}}
        if image_path is not None:
            item["image"] = Image.open(image_path)
        output = summarizer(item, num_beams=3, max_new_tokens=60)[0]
        shown.append({{"sku": sku, "summary": output["summary_text"], "reference": product["tgt"][0],
                      "attributes": [a["attribute"] for a in output["attributes"][:5]]}})
    break
print(json.dumps(shown, ensure_ascii=False))
"""


# ------------------------------------------------------------------------------------------------------- main


def _show_retrievals(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        mark = "✔ target found" if row["found"] else "✘ target not in top 5"
        print(f"  query: {row['text']!r}\n    target {row['target']}  top-5 {row['top5']}  {mark}")


def _show_summaries(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        print(f"  {row['sku']}\n    generated: {row['summary'] or '(empty: the model emitted end-of-sequence first)'}\n    reference: {row['reference']}\n"
              f"    attributes: {', '.join(row['attributes'])}")


#: Each system: how to run it, the code that reloads its Hub folder in a clean process, how to show what that printed.
SYSTEMS = {"csmcir": (run_csmcir, _CSMCIR_RELOAD, _show_retrievals), "mmaps": (run_mmaps, _MMAPS_RELOAD, _show_summaries)}


def run_system(name: str, root: Path, budget: DemoBudget, seed: int) -> dict[str, Any]:
    """Train, evaluate and publish one system, then reload its folder in a clean process and show a few outputs."""
    from hub_cards.clean_process import run_in_clean_process

    run, reload_code, show = SYSTEMS[name]
    system = run(root, budget, seed)
    _banner(f"{name.upper()} reloaded from {system['folder']} in a fresh process (trust_remote_code, package not importable)")
    show(run_in_clean_process(
        reload_code.format(data_dir=str(system["data_dir"]), folder=str(system["folder"]), shown=budget.shown), root
    ))
    return system["metrics"]


def run_side_system(root: Path, budget: DemoBudget, seed: int, name: str) -> dict[str, Any]:
    """The side process: one system, its metrics written to ``<root>/<name>_metrics.json`` for the parent."""
    from hub_cards.atomic_files import write_json_atomically

    metrics = run_system(name, root, budget, seed)
    write_json_atomically(root / f"{name}_metrics.json", metrics, indent=1)
    return {name: metrics}


def _start_side_process(root: Path, args: argparse.Namespace, name: str) -> tuple[Any, Path, Path, str]:
    """Start ``python -m examples.demo --only <name> --as_side_process`` on one thread, its output to a log file."""
    import subprocess

    log_path = root / f"{name}_demo.log"
    argv = [sys.executable, "-m", "examples.demo", "--only", name, "--as_side_process", "--seed", str(args.seed),
            "--output_dir", str(root), *(["--quick"] if args.quick else [])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed by _finish_side_process
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                               cwd=str(Path(__file__).resolve().parents[1]))
    log.close()  # the child holds its own descriptor
    print(f"[demo] {name.upper()} runs side by side in process {process.pid} (one thread); its log: {log_path}",
          flush=True)
    return process, log_path, root / f"{name}_metrics.json", name


def _finish_side_process(process: Any, log_path: Path, metrics_path: Path, name: str) -> dict[str, Any]:
    """Wait for the side process, print its log, and return its metrics (a failed child fails the demo)."""
    status = process.wait()
    print(log_path.read_text(encoding="utf-8"), end="", flush=True)
    if status != 0 or not metrics_path.is_file():
        raise RuntimeError(f"the {name.upper()} part of the demo failed (exit status {status}); its log: {log_path}")
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    metrics_path.unlink()
    return metrics


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the main job; returns the metrics of both models."""
    parser = argparse.ArgumentParser(description="Train, evaluate, publish and reload CSMCIR and MMAPS on synthetic data.")
    parser.add_argument("--output_dir", default="outputs", help="where data, models and Hub folders go")
    parser.add_argument("--quick", action="store_true", help="a smoke run in about a minute (tiny budgets)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["csmcir", "mmaps"], help="run one system only")
    parser.add_argument("--sequential", action="store_true",
                        help="run the two systems one after the other (default: side by side, one core each, "
                             "when the machine has two or more)")
    parser.add_argument("--as_side_process", action="store_true", help=argparse.SUPPRESS)  # set for the MMAPS child
    args = parser.parse_args(argv)
    from hub_cards.atomic_files import write_json_atomically
    from hub_cards.console import quiet_progress_bars_unless_terminal

    quiet_progress_bars_unless_terminal()   # a log file gets no tqdm updates (as every console script)

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    budget = QUICK if args.quick else FULL
    root = Path(args.output_dir).resolve()
    if args.as_side_process:  # the parent cleaned the folder and writes demo_results.json
        return run_side_system(root, budget, args.seed, args.only)
    if root.exists():
        shutil.rmtree(root / "data", ignore_errors=True)
        if args.only in (None, "csmcir"):
            # The demo's own CSMCIR folders: csmcir-pretrain / csmcir-train refuse a folder holding an earlier run.
            for name in ("csmcir-tiny-pretrained", "csmcir-tiny-synthetic"):
                shutil.rmtree(root / name, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict[str, Any] = {}
    names = [name for name in ("csmcir", "mmaps") if args.only in (None, name)]
    side = None
    if len(names) == 2 and not args.sequential and (os.cpu_count() or 1) >= 2:
        # The two systems are independent: MMAPS runs in a child process on one core while CSMCIR runs here on the
        # rest (each trainer is sequential at these sizes, so two cores do two jobs instead of one split in two).
        side = _start_side_process(root, args, "mmaps")
        torch_threads = max(1, (os.cpu_count() or 2) - 1)
        import torch

        torch.set_num_threads(torch_threads)
        names = ["csmcir"]
    try:
        for name in names:
            results[name] = run_system(name, root, budget, args.seed)
    except BaseException:
        if side is not None:  # no orphan left training after a failure or Ctrl-C here
            side[0].kill()
            side[0].wait()
        raise
    if side is not None:
        results["mmaps"] = _finish_side_process(*side)

    _banner(f"Done in {time.perf_counter() - started:.0f} s. Hub-ready folders under {root}")
    for system, metrics in results.items():
        print(f"  {system}: {json.dumps({k: round(v, 2) for k, v in metrics.items()})}")
    write_json_atomically(root / "demo_results.json", results, indent=1)
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
