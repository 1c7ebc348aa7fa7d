"""Hugging Face Hub model cards for CSMCIR and MMAPS, filled from real evaluation results.

    from hub_cards import write_csmcir_card, write_mmaps_card, read_metrics_file

    write_csmcir_card("outputs/csmcir", metrics="outputs/csmcir/metrics.json", training_args=trainer.args,
                      dataset_name="synthetic-cir")
    write_mmaps_card("outputs/mmaps", metrics="outputs/mmaps/eval_results.json", training_args=trainer.args)

Each writes ``README.md`` (``huggingface_hub.ModelCard``): YAML metadata with a ``model-index`` holding every
measured number and its protocol, a usage snippet, the training settings, limitations and citations. Templates
live in ``hub_cards/templates/``. ``HubCardTrainerMixin`` makes the package's trainers write the card themselves.
"""

from __future__ import annotations

from .card_rendering import metric_display_name
from .clean_process import run_in_clean_process
from .csmcir_card import CSMCIR_PIPELINE_TAG, CSMCIR_TAGS, build_csmcir_card, write_csmcir_card
from .metrics_file import EvaluationReport, parse_metrics, read_metrics_file
from .mmaps_card import MMAPS_PIPELINE_TAG, MMAPS_PROTOCOLS, MMAPS_TAGS, build_mmaps_card, write_mmaps_card
from .trainer_cards import HubCardTrainerMixin, write_trainer_card
from .training_settings import latest_eval_metrics, read_training_settings

__all__ = [
    "CSMCIR_PIPELINE_TAG",
    "CSMCIR_TAGS",
    "MMAPS_PIPELINE_TAG",
    "MMAPS_PROTOCOLS",
    "MMAPS_TAGS",
    "EvaluationReport",
    "HubCardTrainerMixin",
    "build_csmcir_card",
    "build_mmaps_card",
    "latest_eval_metrics",
    "metric_display_name",
    "parse_metrics",
    "read_metrics_file",
    "read_training_settings",
    "run_in_clean_process",
    "write_csmcir_card",
    "write_mmaps_card",
    "write_trainer_card",
]
