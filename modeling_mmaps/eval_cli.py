"""``mmaps-eval``: score a saved MMAPS model on one split of a CEPSUM-layout folder.

    mmaps-eval --data_dir D --model_name_or_path M --split test --output_dir O [--num_beams 3 --max_new_tokens 90]

Generates a summary per product (with its image when the model has a visual side and
``--visual_input`` allows), then writes to ``--output_dir``:

* ``metrics.json`` — CEPSUM ROUGE-1/2/L (character level, all references, set-based union-LCS ROUGE-L;
  standard ``rouge_score`` for ``--language en``), BLEU-1..4, attribute P/R/F1 over the processor's
  vocabulary, the lead-N-characters baseline's ROUGE on the same products, and — on a synthetic set
  written by ``mmaps-synth`` — the share of image-only attributes the summaries mention;
* ``predictions.jsonl`` — one ``{"sku", "prediction", "references"}`` per product.

Both files are written atomically; a failed run leaves no partial output.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import HfArgumentParser
from transformers.utils import logging

from modeling_csmcir.atomic_files import write_json_atomically, write_text_atomically

from .attributes import check_vocabulary_matches_model
from .cepsum_data import MMAPSDataCollator, load_cepsum_split
from .summarization_metrics import cepsum_rouge, english_rouge, summarization_scores

logger = logging.get_logger(__name__)


@dataclass
class EvalArguments:
    """Arguments of ``mmaps-eval``."""

    data_dir: str = field(metadata={"help": "Folder with {category}_{split}.json and images/."})
    model_name_or_path: str = field(metadata={"help": "Saved MMAPS model folder or Hub repo."})
    output_dir: str = field(metadata={"help": "Where metrics.json and predictions.jsonl go."})
    split: str = field(default="test", metadata={"help": "Split to score."})
    categories: str | None = field(default=None, metadata={"help": "Comma-separated categories (default: all)."})
    max_products: int | None = field(default=None, metadata={"help": "Cap per category."})
    visual_input: str = field(default="auto", metadata={"help": "auto | images | regions | none."})
    language: str = field(default="zh", metadata={"help": "zh: CEPSUM protocol; en: rouge_score."})
    num_beams: int = field(default=3, metadata={"help": "Beam size (3 in the paper)."})
    max_new_tokens: int = field(default=90, metadata={"help": "Most generated tokens (90 in the paper)."})
    batch_size: int = field(default=16, metadata={"help": "Products per generation batch."})
    trust_remote_code: bool = field(default=True, metadata={"help": "Allow the saved folder's own code."})
    use_cpu: bool = field(default=False, metadata={"help": "Stay on CPU even if a GPU is present."})


def generate_summaries(model: Any, processor: Any, dataset: Any, visual_input: str, *, batch_size: int = 16,
                       language: str = "zh", **generate_kwargs: Any) -> list[str]:
    """One generated summary per row of ``dataset`` (rows of :func:`load_cepsum_split`), in order."""
    from tqdm.auto import tqdm

    collator = MMAPSDataCollator(processor, visual_input=visual_input, language=language, with_labels=False)
    device = next(model.parameters()).device
    predictions: list[str] = []
    model.eval()
    for start in tqdm(range(0, len(dataset), batch_size), desc="mmaps-eval", disable=len(dataset) <= batch_size):
        rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        batch = {k: v.to(device) for k, v in collator(rows).items()}
        with torch.no_grad():
            generated = model.generate(**batch, **generate_kwargs)
        predictions.extend(processor.batch_decode(generated, skip_special_tokens=True))
    return predictions


def resolve_visual_input(config: Any, requested: str) -> str:
    """``auto`` → ``images`` for a model with a vision backbone, ``regions`` for a region model, else ``none``."""
    if requested != "auto":
        if requested not in ("images", "regions", "none"):
            raise ValueError(f"visual_input: expected auto, images, regions or none, got {requested!r}")
        return requested
    if not getattr(config, "use_visual", True):
        return "none"
    return "images" if getattr(config, "vision_config", None) is not None else "regions"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Generate, score and write ``metrics.json`` (returned) and ``predictions.jsonl``."""
    from transformers import AutoModelForSeq2SeqLM, AutoProcessor

    (args,) = HfArgumentParser(EvalArguments).parse_args_into_dataclasses(args=argv)
    categories = args.categories.split(",") if args.categories else None
    dataset = load_cepsum_split(args.data_dir, args.split, categories=categories, max_products=args.max_products)
    model = AutoModelForSeq2SeqLM.from_pretrained(args.model_name_or_path, trust_remote_code=args.trust_remote_code)
    processor = AutoProcessor.from_pretrained(args.model_name_or_path, trust_remote_code=args.trust_remote_code)
    vocabulary = getattr(processor, "attribute_vocabulary", None)
    if vocabulary and getattr(model.config, "num_attributes", 0):
        check_vocabulary_matches_model(vocabulary, model.config.num_attributes)
    if torch.cuda.is_available() and not args.use_cpu:
        model = model.cuda()
    visual_input = resolve_visual_input(model.config, args.visual_input)
    predictions = generate_summaries(
        model, processor, dataset, visual_input, batch_size=args.batch_size, language=args.language,
        num_beams=args.num_beams, max_new_tokens=args.max_new_tokens,
    )
    references = [list(t) for t in dataset["tgt"]]
    metrics: dict[str, Any] = summarization_scores(predictions, references, language=args.language,
                                                   attribute_vocabulary=vocabulary)
    lead_chars = round(sum(len(r) for refs in references for r in refs) / sum(len(refs) for refs in references))
    lead = [src[:lead_chars] for src in dataset["src"]]
    rouge = cepsum_rouge if args.language == "zh" else english_rouge
    metrics.update({f"lead{lead_chars}_{k}": v for k, v in rouge(lead, references).items()})
    synthetic = os.path.join(args.data_dir, f"synthetic_attributes.{args.split}.json")
    if os.path.isfile(synthetic):
        from .synthetic_products import image_only_mention_rate, load_synthetic_attributes

        metrics["image_only_attribute_mention_rate"] = 100.0 * image_only_mention_rate(
            dict(zip(dataset["sku"], predictions)), load_synthetic_attributes(args.data_dir, args.split)
        )
    metrics.update(
        protocol="CEPSUM (character ROUGE, mean over references then products, set-based union-LCS ROUGE-L)"
        if args.language == "zh" else "rouge_score (unicode word tokenizer, best reference)",
        split=args.split, num_products=len(dataset), visual_input=visual_input,
        num_beams=args.num_beams, max_new_tokens=args.max_new_tokens, model=args.model_name_or_path,
    )
    os.makedirs(args.output_dir, exist_ok=True)
    lines = "".join(
        json.dumps({"sku": s, "prediction": p, "references": r}, ensure_ascii=False) + "\n"
        for s, p, r in zip(dataset["sku"], predictions, references)
    )
    write_text_atomically(os.path.join(args.output_dir, "predictions.jsonl"), lines)
    write_json_atomically(os.path.join(args.output_dir, "metrics.json"), metrics, indent=2)
    print(json.dumps({k: v for k, v in metrics.items() if isinstance(v, float)}, ensure_ascii=False))
    return metrics


def console_main() -> None:
    """Entry point of the ``mmaps-eval`` console script: `main` returns its result to Python callers, and a console
    script would hand that object to ``sys.exit`` (exit status 1), so this wrapper discards it."""
    main()


if __name__ == "__main__":
    main()
