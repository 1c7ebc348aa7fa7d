"""``csmcir-eval``: evaluate a CSMCIR model on FashionIQ, CIRR, CIRCO or Shoes under the official protocol.

Writes ``metrics.json`` (metrics + protocol + the command's arguments) to ``--output_dir``; on test splits
without public targets (CIRR ``test1``, CIRCO ``test``) it writes the test-server submission files instead::

    csmcir-eval --dataset cirr --data_dir D --model_name_or_path M --split val --output_dir O \
        [--target_captions D/target_captions/captions.rc2.val.json]

For FashionIQ, ``--category`` may be one category or ``all`` (default; averaged as in the literature), and
``--target_captions`` may contain ``{category}``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import HfArgumentParser
from transformers.utils import logging

from .atomic_files import write_json_atomically
from .cir_datasets import BENCHMARKS, FASHIONIQ_CATEGORIES, load_cir_dataset
from .cir_evaluation import GalleryFeatureCache, evaluate_cir
from .cir_metrics import fashioniq_average
from .submissions import (
    build_circo_submission,
    build_cirr_submissions,
    write_circo_submission,
    write_cirr_submissions,
)


logger = logging.get_logger(__name__)


@dataclass
class CIREvalArguments:
    """Arguments of ``csmcir-eval``."""

    dataset: str = field(metadata={"help": f"Benchmark: one of {list(BENCHMARKS)}."})
    data_dir: str = field(metadata={"help": "Root of the benchmark in its official layout."})
    model_name_or_path: str = field(metadata={"help": "Saved CSMCIR model folder or Hub id."})
    output_dir: str = field(metadata={"help": "Where metrics.json (and submission files) are written."})
    split: str = field(default="val", metadata={"help": "Split: cirr val/test1, fashioniq val, circo val/test, shoes test."})
    category: str = field(default="all", metadata={"help": "FashionIQ category or 'all'."})
    target_captions: str | None = field(default=None, metadata={"help": "Target caption file (may contain {category})."})
    use_target_captions: bool | None = field(default=None, metadata={"help": "Encode targets with captions (default: when captions are given)."})
    processor_name_or_path: str | None = field(default=None, metadata={"help": "Processor folder (default: the model's)."})
    batch_size: int = field(default=64, metadata={"help": "Encoding batch size."})
    device: str | None = field(default=None, metadata={"help": "Device (default: cuda if available, else cpu)."})
    cache_dir: str | None = field(default=None, metadata={"help": "Directory for cached gallery features."})

    def __post_init__(self):
        if self.dataset not in BENCHMARKS:
            raise ValueError(f"unknown --dataset {self.dataset!r}; expected one of {list(BENCHMARKS)}")
        if self.dataset == "fashioniq" and self.category not in (*FASHIONIQ_CATEGORIES, "all"):
            raise ValueError(f"unknown --category {self.category!r}; expected one of {[*FASHIONIQ_CATEGORIES, 'all']}")


def _load_model_and_processor(args: CIREvalArguments) -> tuple[torch.nn.Module, Any]:
    from .modeling_csmcir import CSMCIRModel
    from .processing_csmcir import CSMCIRProcessor

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = CSMCIRModel.from_pretrained(args.model_name_or_path).to(device).eval()
    processor = CSMCIRProcessor.from_pretrained(args.processor_name_or_path or args.model_name_or_path)
    return model, processor


def run_evaluation(args: CIREvalArguments, model: torch.nn.Module, processor: Any) -> dict[str, Any]:
    """Evaluate and write outputs; returns what ``metrics.json`` holds."""
    output_dir = Path(args.output_dir)
    cache = GalleryFeatureCache(args.cache_dir)
    report: dict[str, Any] = {"dataset": args.dataset, "split": args.split, "model": args.model_name_or_path}
    eval_kwargs = dict(use_target_captions=args.use_target_captions, batch_size=args.batch_size, cache=cache)
    if args.dataset == "fashioniq":
        categories = FASHIONIQ_CATEGORIES if args.category == "all" else (args.category,)
        per_category = {}
        for cat in categories:
            captions = args.target_captions.format(category=cat) if args.target_captions else None
            data = load_cir_dataset("fashioniq", args.data_dir, args.split, category=cat, target_captions=captions)
            per_category[cat] = evaluate_cir(model, processor, data, "fashioniq", category=cat, **eval_kwargs).metrics
        report["metrics"] = fashioniq_average(per_category) if all(per_category.values()) else {}
    else:
        data = load_cir_dataset(args.dataset, args.data_dir, args.split, target_captions=args.target_captions)
        result = evaluate_cir(model, processor, data, args.dataset, **eval_kwargs)
        report["metrics"] = result.metrics
        if not result.metrics and args.dataset == "cirr":
            paths = write_cirr_submissions(
                output_dir, *build_cirr_submissions(result.scores, result.gallery_ids, result.query_ids, result.reference_ids, result.img_sets),
                prefix=f"cirr_{args.split}",
            )
            report["submission_files"] = [str(p) for p in paths]
        elif not result.metrics and args.dataset == "circo":
            path = write_circo_submission(
                output_dir, build_circo_submission(result.scores, result.gallery_ids, result.query_ids), name=f"circo_{args.split}.json"
            )
            report["submission_files"] = [str(path)]
    report["arguments"] = asdict(args)
    write_json_atomically(output_dir / "metrics.json", report, indent=2)
    logger.info(f"metrics: {report['metrics']}")
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Entry point of ``csmcir-eval``."""
    (args,) = HfArgumentParser(CIREvalArguments).parse_args_into_dataclasses(args=argv)
    model, processor = _load_model_and_processor(args)
    report = run_evaluation(args, model, processor)
    print(report["metrics"])
    return report


def console_main() -> None:
    """Entry point of the ``csmcir-eval`` console script: `main` returns its result to Python callers, and a console
    script would hand that object to ``sys.exit`` (exit status 1), so this wrapper discards it."""
    main()


if __name__ == "__main__":
    main()
