"""The trainers' hook: every saved output of a ``Trainer`` carries its Hub model card.

Two ways in, one card writer (:func:`write_training_card`):

* ``HubCardTrainerMixin`` goes first in a trainer's bases (``class CSMCIRTrainer(HubCardTrainerMixin, Trainer)``)
  and overrides two ``Trainer`` methods:

  * ``save_model`` — after the weights are saved (final save and every checkpoint), replaces the pickled
    ``training_args.bin`` by ``training_args.json`` without credentials (a card written later for the folder reports
    them; a folder uploaded as is holds no pickle and no token) and, once an evaluation has produced metrics (the latest
    ``eval_*`` entry of ``state.log_history``), ``README.md``; a card without numbers is not written over whatever
    README the folder has;
  * ``create_model_card`` — called by ``Trainer.push_to_hub``: writes our card instead of the generic draft, so
    what is pushed carries the measured numbers, their protocol and the usage snippet.

  It reads two public attributes of the trainer: ``evaluation_protocol`` (``str | None``: how the trainer's
  evaluation computes its metrics; each package's trainer sets it) and ``hub_card_kwargs`` (``dict``: card options
  the Trainer cannot know, e.g. ``{"dataset_name": "cirr"}`` or the repo id for the snippet).

* ``ModelCardCallback`` does the same for a plain ``Trainer`` (``callbacks=[ModelCardCallback(protocol, ...)]``):
  on every checkpoint save it writes the card into the checkpoint folder, once an evaluation has produced metrics.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from .csmcir_card import write_csmcir_card
from .metrics_report import parse_metrics
from .mmaps_card import write_mmaps_card
from .training_settings import latest_eval_metrics, save_training_arguments

logger = logging.get_logger(__name__)

CARD_WRITERS = {"csmcir": write_csmcir_card, "mmaps": write_mmaps_card}
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def _base_model(model: Any) -> str | None:
    """The model's ``_name_or_path`` when it is a Hub id rather than a local folder."""
    name = getattr(model.config, "_name_or_path", "") or ""
    return name if _HUB_ID.match(name) and not os.path.exists(name) else None


def write_training_card(
    output_dir: str | os.PathLike, *, model: Any, args: Any, state: Any, evaluation_protocol: str | None = None,
    require_metrics: bool = False, **card_kwargs: Any,
) -> Path | None:
    """Write the card of a model being trained into ``output_dir``, on the process that saves.

    Metrics: the latest evaluation in ``state.log_history`` (``eval_`` prefix dropped, bookkeeping keys such as
    runtime left out) with ``evaluation_protocol``. Returns the card's path, or ``None`` when this process does not
    save, or when ``require_metrics`` and no evaluation metric is known. ``card_kwargs`` go to
    ``write_csmcir_card`` / ``write_mmaps_card`` (the writer is chosen by ``model.config.model_type``).
    """
    if not args.should_save:
        return None
    model_type = getattr(model.config, "model_type", None)
    if model_type not in CARD_WRITERS:
        raise ValueError(f"model.config.model_type: expected one of {sorted(CARD_WRITERS)}, got {model_type!r}")
    report = None
    entry = latest_eval_metrics(state.log_history)
    if entry is not None:
        try:
            report = parse_metrics({**entry, **({"protocol": evaluation_protocol} if evaluation_protocol else {})},
                                   source="trainer evaluation")
        except ValueError:  # an eval pass that logged only its loss and runtime: no quality metric to report
            report = None
    if report is None and require_metrics:
        return None
    card_kwargs = {"base_model": _base_model(model), **card_kwargs}
    return CARD_WRITERS[model_type](output_dir, metrics=report, training_args=args, trainer_state=state, **card_kwargs)


def refresh_folder_card(output_dir: str | os.PathLike, model_name_or_path: str | os.PathLike, **card_kwargs: Any) -> Path | None:
    """After an evaluation CLI wrote ``output_dir/metrics.json``: when ``output_dir`` is the evaluated model's own
    folder, rewrite its card from that report (training settings from its ``training_args.json``), so the card and
    the numbers beside it never disagree (``hub_ready`` names a stale card). Returns the card's path, or ``None`` when
    ``output_dir`` is another folder, the report holds no metric (a test split with hidden targets), or the folder
    holds no model of ours."""
    import json

    from .metrics_report import REPORT_NAME

    folder, model = Path(output_dir), Path(model_name_or_path)
    if not (model.is_dir() and folder.resolve() == model.resolve() and (folder / "config.json").is_file()):
        return None
    model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    report = json.loads((folder / REPORT_NAME).read_text(encoding="utf-8")) if (folder / REPORT_NAME).is_file() else {}
    if model_type not in CARD_WRITERS or not report.get("metrics"):
        return None
    return CARD_WRITERS[model_type](folder, metrics=folder / REPORT_NAME, **card_kwargs)


def trainer_evaluation_protocol(trainer: Any) -> str | None:
    """``trainer.evaluation_protocol``, else (a user's own ``compute_metrics``) the function that made the numbers."""
    protocol = getattr(trainer, "evaluation_protocol", None)
    if protocol:
        return protocol
    if trainer.compute_metrics is not None:
        name = getattr(trainer.compute_metrics, "__qualname__", trainer.compute_metrics)
        return f"Trainer.evaluate on the evaluation set with compute_metrics={name!r}"
    return None


def write_trainer_card(trainer: Any, output_dir: str | os.PathLike | None = None, *, require_metrics: bool = False,
                       **card_kwargs: Any) -> Path | None:
    """:func:`write_training_card` for ``trainer`` into ``output_dir`` (default ``args.output_dir``), with its
    ``evaluation_protocol`` and ``hub_card_kwargs`` (``card_kwargs`` override the latter)."""
    return write_training_card(
        output_dir or trainer.args.output_dir, model=trainer.model, args=trainer.args, state=trainer.state,
        evaluation_protocol=trainer_evaluation_protocol(trainer), require_metrics=require_metrics,
        **{**(getattr(trainer, "hub_card_kwargs", None) or {}), **card_kwargs},
    )


def _warn_card_failure(output_dir: Any, err: Exception) -> None:
    logger.warning(f"could not write the model card into {output_dir}: {err}")


class HubCardTrainerMixin:
    """Makes a ``Trainer`` subclass write this package's model card (see the module docstring)."""

    evaluation_protocol: str | None = None
    hub_card_kwargs: dict[str, Any] | None = None

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        # Overridden so every saved output (final model and checkpoints) carries its card once metrics exist. A card
        # that fails to render must not lose a training run whose weights are already on disk: warn instead.
        # The arguments are saved as JSON too, so a card written later for this folder (csmcir-eval, the demo)
        # still reports the training settings: training_args.bin is a pickle the card does not read.
        # Trainer pickles its arguments (hub_token included) as training_args.bin into every saved folder; it is
        # replaced by training_args.json without credentials here, before anything else can fail.
        super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            save_training_arguments(self.args, output_dir or self.args.output_dir)
        try:
            write_trainer_card(self, output_dir, require_metrics=True)
        except Exception as err:  # noqa: BLE001 - see the comment above
            _warn_card_failure(output_dir or self.args.output_dir, err)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # Overridden because Trainer's push during training (push_to_hub with a save strategy) writes
        # torch.save(self.args) as training_args.bin into the folder it uploads: a pickle that carries hub_token.
        # While it runs, that one save writes training_args.json without credentials instead.
        import transformers.trainer as trainer_module

        original_save = trainer_module.torch.save

        def save_without_pickled_arguments(obj: Any, path: Any, *args: Any, **kwargs: Any) -> Any:
            if obj is self.args and os.path.basename(os.fspath(path)) == "training_args.bin":
                return save_training_arguments(self.args, os.path.dirname(os.fspath(path)))
            return original_save(obj, path, *args, **kwargs)

        trainer_module.torch.save = save_without_pickled_arguments
        try:
            super()._push_from_checkpoint(checkpoint_folder)
        finally:
            trainer_module.torch.save = original_save

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


class ModelCardCallback(TrainerCallback):
    """Writes the model card into each checkpoint folder of a plain ``Trainer`` once an evaluation has metrics.

    Args:
        evaluation_protocol: how the trainer's ``compute_metrics`` measures (stored with every number).
        card_kwargs: options of ``write_csmcir_card`` / ``write_mmaps_card`` (``dataset_name``, ``repo_id``, ...).

    A trainer built on ``HubCardTrainerMixin`` writes its cards itself and needs no callback.
    """

    def __init__(self, evaluation_protocol: str | None = None, **card_kwargs: Any) -> None:
        self.evaluation_protocol = evaluation_protocol
        self.card_kwargs = card_kwargs

    def on_save(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if model is None:
            return
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        try:
            write_training_card(folder, model=model, args=args, state=state, evaluation_protocol=self.evaluation_protocol,
                                require_metrics=True, **self.card_kwargs)
        except Exception as err:  # noqa: BLE001 - a card must not stop a training run whose checkpoint is saved
            _warn_card_failure(folder, err)


__all__ = ["HubCardTrainerMixin", "ModelCardCallback", "refresh_folder_card", "trainer_evaluation_protocol",
           "write_trainer_card", "write_training_card"]
