"""``mmaps-eval``: score a saved MMAPS model on one split of a CEPSUM-layout folder.

::

    mmaps-eval --data_dir D --model_name_or_path M --split test --output_dir O [--num_beams 3 --max_new_tokens 90]

Generates a summary per product (with its image when the model has a visual side and ``--visual_input`` allows)
and scores it with :func:`~modeling_mmaps.evaluation.evaluator.evaluate_summarization`, then writes to
``--output_dir``:

* ``metrics.json`` — a metrics report (``hub_cards.metrics_report``): CEPSUM ROUGE-1/2/L (character level, all
  references, set-based union-LCS ROUGE-L; standard ``rouge_score`` for ``--language en``), BLEU-1..4, attribute
  P/R/F1 over the processor's vocabulary, the lead-N-characters baseline's ROUGE on the same products, and — on a
  synthetic set written by ``mmaps-synth`` — the share of image-only attributes the summaries mention; the
  decoding settings under ``settings``;
* ``predictions.jsonl`` — one ``{"sku", "prediction", "references"}`` per product.

Both files are written atomically; a failed run leaves no partial output.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch
from transformers import AutoModelForSeq2SeqLM, AutoProcessor, HfArgumentParser
from transformers.utils import logging

from hub_cards.atomic_files import write_text_atomically
from hub_cards.console import console_entry_point
from hub_cards.metrics_report import write_metrics_report

from ..data.attributes import check_vocabulary_matches_model
from ..data.cepsum import load_cepsum_split
from ..data.synthetic import load_synthetic_attributes
from ..evaluation.evaluator import evaluate_summarization
from ..evaluation.summarization_metrics import PROTOCOLS

logger = logging.get_logger(__name__)


@dataclass
class ModelArguments:
    """Which model to score and what it is fed."""

    model_name_or_path: str = field(metadata={"help": "Saved MMAPS model folder or Hub repo."})
    visual_input: str = field(default="auto", metadata={"help": "auto | images | regions | none."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow the saved folder's own code."})


@dataclass
class DataArguments:
    """Which products to score."""

    data_dir: str = field(metadata={"help": "Folder with {category}_{split}.json and images/."})
    split: str = field(default="test", metadata={"help": "Split to score."})
    categories: str | None = field(default=None, metadata={"help": "Comma-separated categories (default: all)."})
    max_products: int | None = field(default=None, metadata={"help": "Cap per category."})
    language: str = field(default="zh", metadata={"help": "zh: CEPSUM protocol; en: rouge_score."})


@dataclass
class EvaluationArguments:
    """Where the results go and how summaries are decoded."""

    output_dir: str = field(metadata={"help": "Where metrics.json and predictions.jsonl go."})
    write_predictions: str = field(default="auto", metadata={
        "help": "predictions.jsonl (the split's skus, generated summaries and references): 'auto' writes it unless "
                "output_dir is inside the model folder (a folder users upload; CEPSUM is distributed only on "
                "application, so its texts must not ride along), 'always', or 'never'."})
    num_beams: int = field(default=3, metadata={"help": "Beam size (3 in the paper)."})
    max_new_tokens: int = field(default=90, metadata={"help": "Most generated tokens (90 in the paper)."})
    batch_size: int = field(default=16, metadata={"help": "Products per generation batch."})
    use_cpu: bool = field(default=False, metadata={"help": "Stay on CPU even if a GPU is present."})


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def _should_write_predictions(eval_args: EvaluationArguments, model_name_or_path: str) -> bool:
    """Whether predictions.jsonl (test texts and references) is written, per ``--write_predictions``."""
    if eval_args.write_predictions not in ("auto", "always", "never"):
        raise ValueError(f"write_predictions: expected 'auto', 'always' or 'never', got {eval_args.write_predictions!r}")
    if eval_args.write_predictions != "auto":
        return eval_args.write_predictions == "always"
    if os.path.isdir(model_name_or_path) and _inside(eval_args.output_dir, model_name_or_path):
        logger.warning("output_dir %s is inside the model folder: predictions.jsonl (the split's texts and references) "
                       "is not written there; pass another --output_dir or --write_predictions always",
                       eval_args.output_dir)
        return False
    return True


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Generate, score and write ``metrics.json`` and ``predictions.jsonl``; returns the metrics."""
    parser = HfArgumentParser((ModelArguments, DataArguments, EvaluationArguments))
    model_args, data_args, eval_args = parser.parse_args_into_dataclasses(args=argv)
    if data_args.language not in PROTOCOLS:
        raise ValueError(f"language: expected one of {sorted(PROTOCOLS)}, got {data_args.language!r}")
    categories = data_args.categories.split(",") if data_args.categories else None
    dataset = load_cepsum_split(data_args.data_dir, data_args.split, categories=categories,
                                max_products=data_args.max_products)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_args.model_name_or_path,
                                                  trust_remote_code=model_args.trust_remote_code)
    processor = AutoProcessor.from_pretrained(model_args.model_name_or_path,
                                              trust_remote_code=model_args.trust_remote_code)
    vocabulary = getattr(processor, "attribute_vocabulary", None)
    if vocabulary and getattr(model.config, "num_attributes", 0):
        check_vocabulary_matches_model(vocabulary, model.config.num_attributes)
    if torch.cuda.is_available() and not eval_args.use_cpu:
        model = model.cuda()
    synthetic = None
    if os.path.isfile(os.path.join(data_args.data_dir, f"synthetic_attributes.{data_args.split}.json")):
        synthetic = load_synthetic_attributes(data_args.data_dir, data_args.split)
    result = evaluate_summarization(
        model, processor, dataset, visual_input=model_args.visual_input, language=data_args.language,
        batch_size=eval_args.batch_size, synthetic_attributes=synthetic,
        num_beams=eval_args.num_beams, max_new_tokens=eval_args.max_new_tokens,
    )
    if _should_write_predictions(eval_args, model_args.model_name_or_path):
        lines = "".join(
            json.dumps({"sku": s, "prediction": p, "references": r}, ensure_ascii=False) + "\n"
            for s, p, r in zip(dataset["sku"], result.predictions, result.references)
        )
        write_text_atomically(os.path.join(eval_args.output_dir, "predictions.jsonl"), lines)
    write_metrics_report(
        os.path.join(eval_args.output_dir, "metrics.json"), result.metrics, protocol=PROTOCOLS[data_args.language],
        dataset=os.path.basename(os.path.normpath(data_args.data_dir)), split=data_args.split,
        model=model_args.model_name_or_path,
        settings={"num_products": len(dataset), "visual_input": result.visual_input, "language": data_args.language,
                  "num_beams": eval_args.num_beams, "max_new_tokens": eval_args.max_new_tokens},
    )
    # Evaluated into the model's own folder: its card states these numbers from now on.
    from hub_cards.trainer_cards import refresh_folder_card

    refresh_folder_card(eval_args.output_dir, model_args.model_name_or_path)
    print(json.dumps(result.metrics, ensure_ascii=False))
    return result.metrics


console_main = console_entry_point(main, "mmaps-eval")


if __name__ == "__main__":
    console_main()
