"""Hugging Face Hub model cards for CSMCIR and MMAPS, filled from real evaluation results.

This package imports no other project package; the model packages' trainers and CLIs build on it.

Metrics reports (``hub_cards.metrics_report``) — the one ``metrics.json`` schema, written and read here::

    write_metrics_report("outputs/csmcir/metrics.json", results, protocol=..., dataset="cirr", split="val",
                         model="outputs/csmcir", settings={...})
    report = read_metrics_report("outputs/csmcir")       # EvaluationReport(values, protocol, dataset, split, ...)
    report = parse_metrics(trainer.evaluate(), source="trainer")   # eval_ prefixes and bookkeeping dropped

Model cards (``README.md`` via ``huggingface_hub.ModelCard``: YAML metadata with a ``model-index`` holding every
measured number and its protocol, a usage snippet, the training settings, limitations, citations)::

    write_csmcir_card("outputs/csmcir", metrics="outputs/csmcir/metrics.json", training_args=trainer.args,
                      dataset_name="synthetic-cir")
    write_mmaps_card("outputs/mmaps", metrics="outputs/mmaps", training_args=trainer.args)

Trainer integration (``hub_cards.trainer_cards``): ``class CSMCIRTrainer(HubCardTrainerMixin, Trainer)`` writes the
card on every save and on ``push_to_hub``, reading ``trainer.evaluation_protocol`` and ``trainer.hub_card_kwargs``;
``ModelCardCallback(evaluation_protocol, **card_kwargs)`` does it for a plain ``Trainer``'s checkpoints.

Atomic writes (``hub_cards.atomic_files``): ``write_json_atomically``, ``write_text_atomically``, ``atomic_path``.
Clean-process loading (``hub_cards.clean_process``): ``run_in_clean_process`` runs code where this repository's
packages cannot be imported, as on a machine that only has transformers.

Shared by both packages' CLIs (they never import each other): ``hub_cards.console.console_entry_point`` (console
scripts: exit 0, or one line without a traceback on bad input) and ``hub_cards.checkpoints``
(``--resume_from_checkpoint last``: the latest checkpoint that finished saving).

Names are imported on first use, so ``import hub_cards.atomic_files`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "atomic_path": "atomic_files",
    "write_json_atomically": "atomic_files",
    "write_text_atomically": "atomic_files",
    "metric_display_name": "card_rendering",
    "run_in_clean_process": "clean_process",
    "CSMCIR_PIPELINE_TAG": "csmcir_card",
    "build_csmcir_card": "csmcir_card",
    "write_csmcir_card": "csmcir_card",
    "EvaluationReport": "metrics_report",
    "parse_metrics": "metrics_report",
    "read_metrics_report": "metrics_report",
    "write_metrics_report": "metrics_report",
    "MMAPS_PIPELINE_TAG": "mmaps_card",
    "build_mmaps_card": "mmaps_card",
    "write_mmaps_card": "mmaps_card",
    "HubCardTrainerMixin": "trainer_cards",
    "ModelCardCallback": "trainer_cards",
    "read_training_settings": "training_settings",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
