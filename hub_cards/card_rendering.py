"""Shared machinery of the model cards: metric names, ``model-index`` entries, template rendering, saving.

A card is ``ModelCard.from_template(ModelCardData(...), template_path=<package template>, **context)``: the YAML
header comes from ``ModelCardData`` (``eval_results`` become the ``model-index``), the body from a Jinja template
shipped in ``hub_cards/templates/``. Every measured number goes into the ``model-index`` unrounded, so a reader
(or a test) gets back exactly what the evaluation wrote; the Markdown table rounds to two decimals.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers.utils import logging

from .atomic_files import write_text_atomically
from .metrics_report import EvaluationReport, parse_metrics, read_metrics_report
from .training_settings import TRAINER_STATE_NAME, TRAINING_ARGS_NAME, read_training_settings

logger = logging.get_logger(__name__)

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
CARD_NAME = "README.md"

_NAMED_METRICS = {
    "avg": "Average", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum",
    "attribute_precision": "Attribute precision", "attribute_recall": "Attribute recall",
    "attribute_f1": "Attribute F1", "gen_len": "Generated length (characters)",
}
_PATTERNS = (
    (re.compile(r"^(?:(\w+?)_)?recall_subset_at_(\d+)$"), "Recall_subset@{k}"),
    (re.compile(r"^(?:(\w+?)_)?recall_at_(\d+)$"), "Recall@{k}"),
    (re.compile(r"^(?:(\w+?)_)?map_at_(\d+)$"), "mAP@{k}"),
    (re.compile(r"^(?:(\w+?)_)?bleu(\d)$"), "BLEU-{k}"),
)


def metric_display_name(key: str) -> str:
    """A reader's name for a metric key: ``recall_at_5`` → ``Recall@5``, ``dress_recall_at_10`` → ``dress Recall@10``,
    ``recall_subset_at_1`` → ``Recall_subset@1``, ``map_at_10`` → ``mAP@10``, ``rouge2`` → ``ROUGE-2``, ``bleu4`` → ``BLEU-4``;
    unknown keys are returned as they are."""
    if key in _NAMED_METRICS:
        return _NAMED_METRICS[key]
    for pattern, name in _PATTERNS:
        match = pattern.match(key)
        if match:
            prefix, k = match.groups()
            return (f"{prefix} " if prefix else "") + name.format(k=k)
    return key


def as_report(metrics: Any) -> EvaluationReport | None:
    """``metrics`` as an :class:`EvaluationReport`: a report, a dict in any accepted layout, a file/folder path, or None."""
    if metrics is None or isinstance(metrics, EvaluationReport):
        return metrics
    if isinstance(metrics, (str, os.PathLike)):
        return read_metrics_report(metrics)
    return parse_metrics(metrics)


def build_eval_results(
    report: EvaluationReport, *, task_type: str, task_name: str, dataset_type: str, dataset_name: str,
    dataset_split: str | None = None, source_name: str | None = None,
) -> list[EvalResult]:
    """One ``EvalResult`` per metric: ``metric_type`` is the metric's key (``recall_at_1``; unique, so the
    ``model-index`` maps back to ``metrics.json`` one to one), ``metric_name`` its display name, and the
    protocol is stored in ``metric_args["protocol"]`` so the number never travels without it."""
    metric_args = {"protocol": report.protocol} if report.protocol else None
    return [
        EvalResult(
            task_type=task_type, task_name=task_name, dataset_type=dataset_type, dataset_name=dataset_name,
            dataset_split=dataset_split, metric_type=key, metric_name=metric_display_name(key), metric_value=value,
            metric_args=metric_args, source_name=source_name,
        )
        for key, value in report.values.items()
    ]


def metric_rows(report: EvaluationReport | None) -> list[dict[str, str]]:
    """Rows ``{"name", "key", "value"}`` of the card's results table (values rounded to two decimals)."""
    if report is None:
        return []
    return [{"name": metric_display_name(k), "key": k, "value": f"{v:.2f}"} for k, v in report.values.items()]


def read_saved_config(output_dir: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of a saved model folder (empty when the model is not saved there yet)."""
    path = Path(output_dir) / "config.json"
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


@dataclass
class CardInputs:
    """What both cards are filled from, gathered once by :func:`gather_card_inputs`."""

    report: EvaluationReport | None
    config: dict[str, Any]
    settings: dict[str, Any]
    dataset: str
    split: str | None
    repo_id: str
    model_name: str = field(init=False)

    def __post_init__(self) -> None:
        self.model_name = self.repo_id.split("/")[-1]


def gather_card_inputs(
    output_dir: str | os.PathLike, metrics: Any, training_args: Any, trainer_state: Any,
    dataset_name: str | None, repo_id: str | None,
) -> CardInputs:
    """Read the results (:func:`as_report`), the saved ``config.json``, the training settings (``training_args`` and
    ``trainer_state`` default to ``output_dir/training_args.json`` and ``output_dir/trainer_state.json`` when they exist), the dataset (an explicit ``dataset_name`` wins
    over the results file's benchmark name: a synthetic set in the CIRR layout is scored by the CIRR protocol but is
    not CIRR) and the repo id (default ``your-username/<folder name>``)."""
    report = as_report(metrics)
    state_file, args_file = Path(output_dir) / TRAINER_STATE_NAME, Path(output_dir) / TRAINING_ARGS_NAME
    if trainer_state is None and state_file.is_file():
        trainer_state = state_file
    if training_args is None and args_file.is_file():
        training_args = args_file
    dataset = dataset_name or (report.dataset if report and report.dataset else None) or "unknown"
    return CardInputs(
        report=report, config=read_saved_config(output_dir), settings=read_training_settings(training_args, trainer_state),
        dataset=dataset, split=report.split if report else None,
        repo_id=repo_id or f"your-username/{Path(output_dir).resolve().name}",
    )


@dataclass(frozen=True)
class CardSpec:
    """What differs between the two models' cards, as data."""

    template: str
    pipeline_tag: str
    task_type: str
    task_name: str
    tags: tuple[str, ...]
    metric_ids: tuple[str, ...]
    dataset_display_names: dict[str, str]


def compose_card(
    spec: CardSpec, inputs: CardInputs, *, base_model: str | None, license: str, tags: Sequence[str] = (),
    datasets: Sequence[str] | None = None, language: str | None = None, **model_context: Any,
) -> ModelCard:
    """Build the metadata (``model-index`` from ``inputs.report``) and render ``spec.template`` with the context
    both templates share (names, results table, protocol, dataset, training settings) plus ``model_context``."""
    report, dataset = inputs.report, inputs.dataset
    dataset_display = spec.dataset_display_names.get(dataset, dataset)
    eval_results = None
    if report is not None:
        eval_results = build_eval_results(
            report, task_type=spec.task_type, task_name=spec.task_name, dataset_type=dataset,
            dataset_name=dataset_display, dataset_split=inputs.split,
        )
    card_data = ModelCardData(
        model_name=inputs.model_name, library_name="transformers", pipeline_tag=spec.pipeline_tag, license=license,
        language=language, tags=list(dict.fromkeys([*spec.tags, *tags])), datasets=list(datasets) if datasets else None,
        metrics=list(spec.metric_ids) if report is not None else None, base_model=base_model, eval_results=eval_results,
    )
    return render_card(
        spec.template, card_data,
        model_name=inputs.model_name, repo_id=inputs.repo_id, base_model=base_model,
        has_pipeline=bool(inputs.config.get("custom_pipelines")), metric_rows=metric_rows(report),
        protocol=report.protocol if report else None, dataset_display=dataset_display, dataset_split=inputs.split,
        synthetic="synthetic" in dataset, training_settings=inputs.settings, **model_context,
    )


def render_card(template_name: str, card_data: ModelCardData, **context: Any) -> ModelCard:
    """Fill ``templates/<template_name>`` with ``context`` under the YAML header of ``card_data``."""
    template_path = TEMPLATES_DIR / template_name
    if not template_path.is_file():
        raise ValueError(f"template_name: no template {template_name!r} in {TEMPLATES_DIR}")
    return ModelCard.from_template(card_data, template_path=str(template_path), **context)


def save_card(card: ModelCard, output_dir: str | os.PathLike) -> Path:
    """Write ``card`` to ``output_dir/README.md`` atomically (a reader never sees half a card)."""
    path = write_text_atomically(Path(output_dir) / CARD_NAME, str(card))
    logger.info(f"model card written to {path}")
    return path


__all__ = [
    "CARD_NAME", "CardInputs", "CardSpec", "compose_card", "gather_card_inputs", "TEMPLATES_DIR", "as_report", "build_eval_results", "metric_display_name", "metric_rows",
    "read_saved_config", "render_card", "save_card",
]
