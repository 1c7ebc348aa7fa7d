"""The trainers' hook: every saved output of ``CSMCIRTrainer`` / ``MMAPSTrainer`` carries its Hub model card.

``HubCardTrainerMixin`` goes first in a trainer's bases (``class MMAPSTrainer(HubCardTrainerMixin, Seq2SeqTrainer)``)
and overrides two ``Trainer`` methods:

* ``save_model`` — after the weights are saved (final save and every checkpoint), writes ``README.md`` when an
  evaluation has produced metrics (the latest ``eval_*`` entry of ``state.log_history``); a card without numbers
  is not written over whatever README the folder has;
* ``create_model_card`` — called by ``Trainer.push_to_hub``: writes our card instead of the generic draft, so
  what is pushed carries the measured numbers, their protocol and the usage snippet.

Card options that the Trainer cannot know (the dataset's name, the repo id for the snippet) are read from the
trainer's ``hub_card_kwargs`` dict attribute when set, e.g. ``trainer.hub_card_kwargs = {"dataset_name": "cirr"}``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from transformers.utils import logging

from .csmcir_card import write_csmcir_card
from .metrics_file import parse_metrics
from .mmaps_card import MMAPS_PROTOCOLS, write_mmaps_card
from .training_settings import latest_eval_metrics

logger = logging.get_logger(__name__)

CARD_WRITERS = {"csmcir": write_csmcir_card, "mmaps": write_mmaps_card}
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def _evaluation_protocol(trainer: Any) -> str | None:
    """Name the protocol behind the trainer's eval metrics: the CIR evaluator's benchmark protocol, or MMAPS's
    default CEPSUM / English scoring; otherwise the ``compute_metrics`` function that produced them."""
    evaluator = getattr(trainer.compute_metrics, "__self__", None)
    benchmark = getattr(evaluator, "benchmark", None)
    if benchmark is not None:
        from modeling_csmcir.cir_metrics import PROTOCOLS  # lazy: hub_cards must import without the models

        return PROTOCOLS.get(benchmark, benchmark)
    if getattr(trainer, "_default_metrics", False):  # MMAPSTrainer scoring with its built-in metrics
        return MMAPS_PROTOCOLS.get(getattr(trainer.args, "summary_language", "zh"))
    if trainer.compute_metrics is not None:
        return f"Trainer.evaluate on the evaluation set with compute_metrics={getattr(trainer.compute_metrics, '__qualname__', trainer.compute_metrics)!r}"
    return None


def _base_model(trainer: Any) -> str | None:
    """The model's ``_name_or_path`` when it is a Hub id rather than a local folder."""
    name = getattr(trainer.model.config, "_name_or_path", "") or ""
    return name if _HUB_ID.match(name) and not os.path.exists(name) else None


def write_trainer_card(trainer: Any, output_dir: str | os.PathLike | None = None, *, require_metrics: bool = False,
                       **card_kwargs: Any) -> Path | None:
    """Write the card of ``trainer``'s model into ``output_dir`` (default ``args.output_dir``) on the main process.

    Metrics: the latest evaluation in ``trainer.state.log_history`` (``eval_`` prefix dropped, bookkeeping keys
    such as runtime left out) with the protocol :func:`_evaluation_protocol` names. Returns the card's path, or
    ``None`` when this process does not save, or when ``require_metrics`` and no evaluation metric is known.
    ``card_kwargs`` (over ``trainer.hub_card_kwargs``) go to ``write_csmcir_card`` / ``write_mmaps_card``.
    """
    if not trainer.args.should_save:
        return None
    model_type = getattr(trainer.model.config, "model_type", None)
    if model_type not in CARD_WRITERS:
        raise ValueError(f"model.config.model_type: expected one of {sorted(CARD_WRITERS)}, got {model_type!r}")
    report = None
    entry = latest_eval_metrics(trainer.state.log_history)
    if entry is not None:
        protocol = _evaluation_protocol(trainer)
        try:
            report = parse_metrics({**entry, **({"protocol": protocol} if protocol else {})}, source="trainer evaluation")
        except ValueError:  # an eval pass that logged only its loss and runtime: no quality metric to report
            report = None
    if report is None and require_metrics:
        return None
    kwargs = {"base_model": _base_model(trainer), **(getattr(trainer, "hub_card_kwargs", None) or {}), **card_kwargs}
    return CARD_WRITERS[model_type](
        output_dir or trainer.args.output_dir, metrics=report, training_args=trainer.args, trainer_state=trainer.state,
        **kwargs,
    )


class HubCardTrainerMixin:
    """Makes a ``Trainer`` subclass write this package's model card (see the module docstring)."""

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        # Overridden so every saved output (final model and checkpoints) carries its card once metrics exist. A card
        # that fails to render must not lose a training run whose weights are already on disk: warn instead.
        super().save_model(output_dir, _internal_call)
        try:
            write_trainer_card(self, output_dir, require_metrics=True)
        except Exception as err:  # noqa: BLE001 - see the comment above
            logger.warning(f"could not write the model card into {output_dir or self.args.output_dir}: {err}")

    def create_model_card(self, language: str | None = None, license: str | None = None, tags: Any = None,
                          model_name: str | None = None, finetuned_from: str | None = None, tasks: Any = None,
                          dataset_tags: Any = None, dataset: Any = None, dataset_args: Any = None) -> None:
        # Overridden so push_to_hub publishes this package's card (measured numbers with their protocol, usage,
        # citations) instead of Trainer's generic draft. Trainer's arguments map onto the card's where one exists.
        kwargs: dict[str, Any] = {}
        if license:
            kwargs["license"] = license
        if tags:
            kwargs["tags"] = [tags] if isinstance(tags, str) else list(tags)
        if model_name:
            kwargs["repo_id"] = model_name if "/" in model_name else f"your-username/{model_name}"
        if finetuned_from:
            kwargs["base_model"] = finetuned_from
        if dataset_tags:
            kwargs["datasets"] = [dataset_tags] if isinstance(dataset_tags, str) else list(dataset_tags)
        if dataset:
            kwargs["dataset_name"] = dataset if isinstance(dataset, str) else list(dataset)[0]
        if language and getattr(self.model.config, "model_type", None) == "mmaps":
            kwargs["language"] = language
        if getattr(self, "hub_model_id", None) and "repo_id" not in kwargs:
            kwargs["repo_id"] = self.hub_model_id
        write_trainer_card(self, self.args.output_dir, **kwargs)


__all__ = ["HubCardTrainerMixin", "write_trainer_card"]
