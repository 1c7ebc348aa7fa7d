"""``csmcir-eval``: evaluate a CSMCIR model on FashionIQ, CIRR, CIRCO or Shoes under the official protocol.

Writes ``metrics.json`` (the metrics-report schema of ``hub_cards.metrics_report``: metrics, protocol, dataset,
split, model and the command's settings) to ``--output_dir``; on test splits without public targets (CIRR
``test1``, CIRCO ``test``) it writes the test-server submission files and a report naming them::

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

from hub_cards.console import console_entry_point

from ..data.layouts import BENCHMARKS, FASHIONIQ_CATEGORIES
from ..modeling_csmcir import CSMCIRModel

# Parsing (and --help) needs only the dataclasses below; data and evaluation are imported when a run starts.


logger = logging.get_logger(__name__)


@dataclass
class ModelArguments:
    """Which model ``csmcir-eval`` evaluates."""

    model_name_or_path: str = field(metadata={"help": "Saved CSMCIR model folder or Hub id."})
    processor_name_or_path: str | None = field(default=None, metadata={"help": "Processor folder (default: the model's)."})
    device: str | None = field(default=None, metadata={"help": "Device (default: cuda if available, else cpu)."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow running code from the model folder (off unless given)."}
    )


@dataclass
class DataArguments:
    """Which benchmark split ``csmcir-eval`` evaluates on, and where the results go."""

    dataset: str = field(metadata={"help": f"Benchmark: one of {list(BENCHMARKS)}."})
    data_dir: str = field(metadata={"help": "Root of the benchmark in its official layout."})
    output_dir: str = field(metadata={"help": "Where metrics.json (and submission files) are written."})
    split: str = field(default="val", metadata={"help": "Split: cirr val/test1, fashioniq val, circo val/test, shoes test."})
    category: str = field(default="all", metadata={"help": "FashionIQ category or 'all'."})
    target_captions: str | None = field(default=None, metadata={"help": "Target caption file (may contain {category})."})
    use_target_captions: bool | None = field(default=None, metadata={"help": "Encode targets with captions (default: when captions are given)."})
    batch_size: int = field(default=64, metadata={"help": "Encoding batch size."})
    cache_dir: str | None = field(default=None, metadata={"help": "Directory for cached gallery indexes."})
    verify_images: bool = field(
        default=False,
        metadata={"help": "Decode every image of the split before encoding, so an empty, truncated or oversized file "
                          "fails up front, named, instead of mid-run."},
    )

    def __post_init__(self) -> None:
        if self.dataset not in BENCHMARKS:
            raise ValueError(f"unknown --dataset {self.dataset!r}; expected one of {list(BENCHMARKS)}")
        if self.dataset == "fashioniq" and self.category not in (*FASHIONIQ_CATEGORIES, "all"):
            raise ValueError(f"unknown --category {self.category!r}; expected one of {[*FASHIONIQ_CATEGORIES, 'all']}")


def load_model_and_processor(args: ModelArguments) -> tuple[torch.nn.Module, Any]:
    """The saved model (``AutoModel``, in eval mode on ``--device``) and its processor (``AutoProcessor``)."""
    from transformers import AutoModel, AutoProcessor

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    from .model_loading import folder_model_type, model_loading_errors

    remote = dict(trust_remote_code=args.trust_remote_code)
    model_type = folder_model_type(args.model_name_or_path)
    if model_type not in (None, "csmcir"):
        raise ValueError(
            f"--model_name_or_path {args.model_name_or_path}: config.json says model_type {model_type!r}; expected "
            "'csmcir' (convert other checkpoints with csmcir-convert or csmcir-train first)"
        )
    with model_loading_errors(args.model_name_or_path):
        model = AutoModel.from_pretrained(args.model_name_or_path, **remote)
        if not isinstance(model, CSMCIRModel) and getattr(model.config, "model_type", None) != "csmcir":
            raise ValueError(f"{args.model_name_or_path}: expected a CSMCIR model, got {type(model).__name__}")
        processor = AutoProcessor.from_pretrained(args.processor_name_or_path or args.model_name_or_path, **remote)
    return model.to(device).eval(), processor


def run_evaluation(model_args: ModelArguments, args: DataArguments, model: torch.nn.Module,
                   processor: Any) -> dict[str, Any]:
    """Evaluate and write outputs; returns the report (``metrics`` as the protocol functions give them)."""
    from hub_cards.metrics_report import write_metrics_report

    from ..data.loading import load_cir_dataset, verify_split_images
    from ..evaluation.cir_metrics import fashioniq_average
    from ..evaluation.evaluator import GalleryIndexCache, evaluate_cir
    from ..evaluation.submissions import (
        build_circo_submission,
        build_cirr_submissions,
        write_circo_submission,
        write_cirr_submissions,
    )

    output_dir = Path(args.output_dir)
    cache = GalleryIndexCache(args.cache_dir)
    report: dict[str, Any] = {"dataset": args.dataset, "split": args.split, "model": model_args.model_name_or_path}
    eval_kwargs = dict(use_target_captions=args.use_target_captions, batch_size=args.batch_size, cache=cache)
    if args.dataset == "fashioniq":
        categories = FASHIONIQ_CATEGORIES if args.category == "all" else (args.category,)
        per_category = {}
        for cat in categories:
            captions = args.target_captions.format(category=cat) if args.target_captions else None
            data = load_cir_dataset("fashioniq", args.data_dir, args.split, category=cat, target_captions=captions)
            if args.verify_images:
                verify_split_images(data, f"fashioniq {cat} {args.split}")
            per_category[cat] = evaluate_cir(model, processor, data, "fashioniq", category=cat, **eval_kwargs).metrics
        report["metrics"] = fashioniq_average(per_category) if all(per_category.values()) else {}
    else:
        data = load_cir_dataset(args.dataset, args.data_dir, args.split, target_captions=args.target_captions)
        if args.verify_images:
            verify_split_images(data, f"{args.dataset} {args.split}")
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
    report["arguments"] = {**asdict(model_args), **asdict(args)}
    write_metrics_report(
        output_dir / "metrics.json", report["metrics"], dataset=args.dataset, split=args.split,
        # Settings that define the numbers; local paths stay out of a report that is published with the model.
        model=model_args.model_name_or_path,
        settings={key: report["arguments"][key] for key in ("category", "use_target_captions", "batch_size")},
        extra={"submission_files": [Path(p).name for p in report["submission_files"]]}
        if "submission_files" in report else None,
        allow_empty=True,
    )
    # Evaluated into the model's own folder: its card states these numbers from now on.
    from hub_cards.trainer_cards import refresh_folder_card

    refresh_folder_card(output_dir, model_args.model_name_or_path)
    logger.info(f"metrics: {report['metrics']}")
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run ``csmcir-eval`` on ``argv`` (default: the command line); returns the report it wrote."""
    model_args, data_args = HfArgumentParser((ModelArguments, DataArguments)).parse_args_into_dataclasses(args=argv)
    model, processor = load_model_and_processor(model_args)
    report = run_evaluation(model_args, data_args, model, processor)
    print(report["metrics"])
    return report


console_main = console_entry_point(main, "csmcir-eval")


if __name__ == "__main__":
    console_main()
