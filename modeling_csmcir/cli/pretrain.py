"""`csmcir-pretrain`: BLIP-2 stage-1 image–text contrastive (ITC) pretraining on synthetic scene/caption pairs.

    csmcir-pretrain --output_dir O [--config_name tiny-scratch | minilm | --model_name_or_path M]
                    [--num_pairs 5000] [--exclude_scenes_from D] [any TrainingArguments flag]

Draws `--num_pairs` distinct rendered scenes with their captions (`data.synthetic.scene_caption_pairs`) plus
`--num_eval_pairs` held-out ones (disjoint from the training scenes, and from the val/test1 scenes of the
`csmcir-synth` benchmark named by `--exclude_scenes_from`), trains the vision tower and the Q-Former with ITC
(`pretraining.pretrain`) and saves an ordinary CSMCIR folder — model, processor, `metrics.json` (zero-shot
image→caption and caption→image recall on the held-out pairs, before and after) and a model card — that
`csmcir-train --model_name_or_path O` fine-tunes. `--config_name minilm` (or a `minilm` preset with
`--qformer_layers N`, the first N MiniLM layers) seeds the Q-Former's text side from all-MiniLM-L6-v2.
Same `--seed` => same run; `--resume_from_checkpoint last` continues an interrupted one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser, set_seed
from transformers.utils import logging

from hub_cards.console import console_entry_point
from hub_cards.output_lock import exclusive_output_lock

from ..presets import PRESETS
from ..training_args import CSMCIRPretrainingArguments
from .train import check_output_dir

logger = logging.get_logger(__name__)

#: What the metrics report calls the held-out measurement.
PRETRAINING_PROTOCOL = "zero-shot image-caption retrieval (ITC max over query tokens), held-out synthetic scenes"


@dataclass
class PretrainModelArguments:
    """Which model `csmcir-pretrain` trains."""

    config_name: str | None = field(
        default=None,
        metadata={"help": "A preset to pretrain from scratch (`minilm*`: Q-Former text side seeded from MiniLM); "
                          "default tiny-scratch.", "choices": sorted(PRESETS)},
    )
    model_name_or_path: str | None = field(default=None, metadata={"help": "A saved CSMCIR folder to continue."})
    image_size: int = field(default=32, metadata={"help": "Vision tower input side for --config_name presets."})
    qformer_layers: int | None = field(
        default=None,
        metadata={"help": "Q-Former depth for --config_name (a MiniLM preset is seeded from MiniLM's first N layers)."},
    )
    freeze_vision: bool = field(default=False, metadata={"help": "Keep the vision tower fixed (off: it learns to see)."})

    def __post_init__(self) -> None:
        if self.config_name is not None and self.model_name_or_path is not None:
            raise ValueError(f"give one of --config_name and --model_name_or_path, got both ({self.config_name!r}, "
                             f"{self.model_name_or_path!r})")
        if self.config_name is None and self.model_name_or_path is None:
            self.config_name = "tiny-scratch"
        if self.qformer_layers is not None and self.qformer_layers < 1:
            raise ValueError(f"--qformer_layers must be >= 1, got {self.qformer_layers}")


@dataclass
class PretrainDataArguments:
    """The synthetic scene/caption pairs."""

    num_pairs: int = field(default=5000, metadata={"help": "Training scene/caption pairs (distinct scenes)."})
    num_eval_pairs: int = field(default=300, metadata={"help": "Held-out pairs for zero-shot retrieval; 0 = none."})
    scene_image_size: int = field(default=64, metadata={"help": "Rendered side in pixels (the processor resizes)."})
    min_objects: int = field(default=1, metadata={"help": "Fewest objects per scene."})
    max_objects: int = field(default=5, metadata={"help": "Most objects per scene (5 covers csmcir-synth's targets)."})
    caption_error_rate: float = field(default=0.05, metadata={"help": "Caption noise (see csmcir-synth)."})
    exclude_scenes_from: str | None = field(
        default=None, metadata={"help": "A csmcir-synth folder whose val/test1 scenes are kept out of both sets."}
    )
    max_text_length: int = field(default=32, metadata={"help": "Caption token limit."})

    def __post_init__(self) -> None:
        if self.num_pairs < 2 or self.num_eval_pairs < 0:
            raise ValueError(f"--num_pairs must be >= 2 and --num_eval_pairs >= 0, got {self.num_pairs}, "
                             f"{self.num_eval_pairs}")


def build_model(model_args: PretrainModelArguments) -> tuple[Any, Any]:
    """The model to pretrain and its processor."""
    if model_args.model_name_or_path is not None:
        from transformers import AutoProcessor

        from ..modeling_csmcir import CSMCIRModel

        path = model_args.model_name_or_path
        if not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(f"--model_name_or_path {path}: no config.json (expected a saved CSMCIR folder)")
        return CSMCIRModel.from_pretrained(path), AutoProcessor.from_pretrained(path)
    from ..presets import preset_model

    overrides: dict[str, Any] = {"freeze_vision": model_args.freeze_vision}
    if model_args.qformer_layers is not None:
        overrides["qformer_num_hidden_layers"] = model_args.qformer_layers
    return preset_model(model_args.config_name, image_size=model_args.image_size, **overrides)


def run_pretraining(model_args: PretrainModelArguments, data_args: PretrainDataArguments,
                    training_args: CSMCIRPretrainingArguments) -> dict[str, Any]:
    """Draw the pairs, pretrain, save the folder (model, processor, metrics.json, card); return the report."""
    from hub_cards import write_csmcir_card
    from hub_cards.checkpoints import resolve_resume_checkpoint
    from hub_cards.metrics_report import write_metrics_report

    from ..data.synthetic import load_benchmark_scenes, scene_caption_pairs
    from ..pretraining import SceneCaptionTensors, pretrain

    set_seed(training_args.seed)
    model, processor = build_model(model_args)
    excluded = load_benchmark_scenes(data_args.exclude_scenes_from) if data_args.exclude_scenes_from else set()
    draw = dict(seed=training_args.seed, image_size=data_args.scene_image_size, min_objects=data_args.min_objects,
                max_objects=data_args.max_objects, caption_error_rate=data_args.caption_error_rate)
    train_pairs = scene_caption_pairs(data_args.num_pairs, exclude=excluded, **draw)
    train = SceneCaptionTensors(train_pairs, processor, max_length=data_args.max_text_length)
    held_out = None
    if data_args.num_eval_pairs:
        held_pairs = scene_caption_pairs(data_args.num_eval_pairs, stream="held-out",
                                         exclude=excluded | {p["scene"] for p in train_pairs}, **draw)
        held_out = SceneCaptionTensors(held_pairs, processor, max_length=data_args.max_text_length)

    resume = resolve_resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    trainer, report = pretrain(model, train, training_args, held_out, resume_from_checkpoint=resume,
                               processing_class=processor)
    trainer.save_model()
    processor.save_pretrained(training_args.output_dir)
    report.update(model=asdict(model_args), data=asdict(data_args))
    if held_out is not None and trainer.is_world_process_zero():
        write_metrics_report(
            Path(training_args.output_dir) / "metrics.json", report["after"], protocol=PRETRAINING_PROTOCOL,
            dataset="synthetic-scene-captions", split="held-out", model=training_args.output_dir,
            settings={"num_eval_pairs": data_args.num_eval_pairs, "caption_error_rate": data_args.caption_error_rate},
            extra={"before": report["before"], "after": report["after"],
                   "final_temperature": report["final_temperature"]},
        )
        write_csmcir_card(training_args.output_dir, metrics=training_args.output_dir, training_args=training_args,
                          dataset_name="synthetic scene/caption pairs (ITC pretraining)")
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run `csmcir-pretrain` on ``argv`` (default: the command line); returns the pretraining report."""
    parser = HfArgumentParser((PretrainModelArguments, PretrainDataArguments, CSMCIRPretrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    check_output_dir(training_args)
    with exclusive_output_lock(Path(training_args.output_dir) / ".csmcir-pretrain.lock",
                               what=f"--output_dir {training_args.output_dir}"):
        report = run_pretraining(model_args, data_args, training_args)
    if "after" in report:
        print(json.dumps({"before": report["before"], "after": report["after"]}, indent=2))
    return report


console_main = console_entry_point(main, "csmcir-pretrain")


if __name__ == "__main__":
    console_main()
