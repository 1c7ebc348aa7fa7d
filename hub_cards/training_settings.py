"""Read the training settings a model card reports from ``TrainingArguments`` and the saved trainer state.

The card lists what someone reproducing the run needs: optimiser and schedule, batch size, steps/epochs,
seed, precision, and this package's own arguments (the memory bank's ``bank_*`` settings of
``CSMCIRTrainingArguments``; MMAPS's decoding ``generation_*`` and ``summary_language``), plus what the run did
(steps taken, final training loss, best checkpoint metric) from ``trainer_state.json``.
``training_args.bin`` is a pickle (and holds ``--hub_token`` in clear) and is never read: trainers built on
``HubCardTrainerMixin`` save their arguments as ``training_args.json`` instead, credentials removed, and delete the
pickle from every folder they save (:func:`save_training_arguments`), so the folder a user uploads holds neither.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformers.utils import logging

from .atomic_files import write_text_atomically
from .portable_paths import redact_local_paths

logger = logging.get_logger(__name__)

TRAINING_ARGUMENT_KEYS = (
    "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "optim", "adam_beta1", "adam_beta2",
    "max_grad_norm", "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "max_steps",
    "seed", "bf16", "fp16", "metric_for_best_model", "summary_language",
)
# Package-specific argument families, reported whole: the bank is CSMCIR's third component, decoding defines MMAPS's numbers.
TRAINING_ARGUMENT_PREFIXES = ("bank_", "generation_")
TRAINER_STATE_NAME = "trainer_state.json"
TRAINING_ARGS_NAME = "training_args.json"


def _arguments_as_dict(training_args: Any) -> dict[str, Any]:
    if training_args is None:
        return {}
    if hasattr(training_args, "to_dict"):
        return dict(training_args.to_dict())
    if isinstance(training_args, Mapping):
        return dict(training_args)
    if isinstance(training_args, (str, os.PathLike)):
        return _read_json(training_args, "training_args")
    raise ValueError(
        f"training_args: expected TrainingArguments, a dict or a JSON file path, got {type(training_args).__name__}"
    )


def _read_json(path: str | os.PathLike, name: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            payload = json.load(handle)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{name}: cannot read {os.fspath(path)} as JSON ({err})") from err
    if not isinstance(payload, dict):
        raise ValueError(f"{name}: {os.fspath(path)} should hold a JSON object, got {type(payload).__name__}")
    return payload


def _state_as_dict(trainer_state: Any) -> dict[str, Any]:
    if trainer_state is None:
        return {}
    if isinstance(trainer_state, Mapping):
        return dict(trainer_state)
    if isinstance(trainer_state, (str, os.PathLike)):
        path = os.fspath(trainer_state)
        if os.path.isdir(path):
            path = os.path.join(path, TRAINER_STATE_NAME)
        return _read_json(path, "trainer_state")
    if hasattr(trainer_state, "log_history"):  # transformers.TrainerState
        return {key: getattr(trainer_state, key, None) for key in
                ("global_step", "epoch", "best_metric", "best_model_checkpoint", "train_batch_size", "log_history")}
    raise ValueError(
        f"trainer_state: expected a TrainerState, a dict or a trainer_state.json path, got {type(trainer_state).__name__}"
    )


def _is_set(value: Any) -> bool:
    return value is not None and value != "" and not (isinstance(value, (list, dict)) and not value)


def read_training_settings(training_args: Any = None, trainer_state: Any = None) -> dict[str, Any]:
    """The settings and outcome of a training run, as ``name → value`` in a stable order.

    Args:
        training_args: ``TrainingArguments`` (any subclass), a dict of them, or a JSON file holding them.
        trainer_state: ``TrainerState``, its dict, or ``trainer_state.json`` (or the folder holding it).

    Returns:
        the keys of ``TRAINING_ARGUMENT_KEYS`` and every ``bank_*`` / ``generation_*`` argument that is set, then
        ``global_step``, ``epoch``, ``final_train_loss`` (the last logged training loss), ``best_metric`` and
        ``best_model_checkpoint`` (its folder name) when the state records them. ``max_steps`` is dropped when
        ``-1`` (epochs decide). Empty when both inputs are ``None``.
    """
    arguments = _arguments_as_dict(training_args)
    settings: dict[str, Any] = {}
    for key in TRAINING_ARGUMENT_KEYS:
        if _is_set(arguments.get(key)):
            settings[key] = arguments[key]
    if settings.get("max_steps") == -1:
        del settings["max_steps"]
    for key in sorted(arguments):
        if key.startswith(TRAINING_ARGUMENT_PREFIXES) and _is_set(arguments[key]):
            settings[key] = arguments[key]

    state = _state_as_dict(trainer_state)
    for key in ("global_step", "epoch"):
        if _is_set(state.get(key)):
            settings[key] = state[key]
    losses = [entry["loss"] for entry in state.get("log_history") or [] if "loss" in entry]
    if losses:
        settings["final_train_loss"] = losses[-1]
    if _is_set(state.get("best_metric")):
        settings["best_metric"] = state["best_metric"]
    if _is_set(state.get("best_model_checkpoint")):
        settings["best_model_checkpoint"] = os.path.basename(os.fspath(state["best_model_checkpoint"]))
    return settings


#: Argument names that may hold a credential: their values are never written (``hub_token``, ``push_to_hub_token``...).
SECRET_ARGUMENT_MARKERS = ("token", "secret", "password", "api_key", "credential")
#: What ``Trainer`` pickles into every saved folder; a published folder must hold no pickle (and no token).
PICKLED_TRAINING_ARGS_NAME = "training_args.bin"


def training_arguments_without_secrets(training_args: Any) -> dict[str, Any]:
    """``training_args`` as a JSON-ready dict with every argument that may hold a credential removed."""
    arguments = _arguments_as_dict(training_args)
    return {key: value for key, value in arguments.items()
            if not any(marker in key.lower() for marker in SECRET_ARGUMENT_MARKERS)}


def save_training_arguments(training_args: Any, output_dir: str | os.PathLike) -> Path:
    """Write the training arguments as JSON, credentials removed and absolute paths made portable
    (``portable_paths.redact_local_paths``: ``output_dir`` becomes ``"."``), to ``output_dir/training_args.json``, and
    delete the pickled ``training_args.bin`` that ``Trainer`` saves beside it (a pickle, holding ``hub_token`` in clear)."""
    output_dir = Path(output_dir)
    arguments = redact_local_paths(training_arguments_without_secrets(training_args), output_dir)
    text = json.dumps(arguments, indent=2, sort_keys=True, default=str)
    path = write_text_atomically(output_dir / TRAINING_ARGS_NAME, text + "\n")
    (output_dir / PICKLED_TRAINING_ARGS_NAME).unlink(missing_ok=True)
    return path


def latest_eval_metrics(log_history: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """The most recent evaluation entry of a ``TrainerState.log_history`` (keys ``eval_*``), or ``None``."""
    for entry in reversed(log_history or []):
        if any(key.startswith("eval_") for key in entry):
            return dict(entry)
    return None


__all__ = ["PICKLED_TRAINING_ARGS_NAME", "SECRET_ARGUMENT_MARKERS", "TRAINER_STATE_NAME", "TRAINING_ARGS_NAME",
           "latest_eval_metrics", "read_training_settings", "save_training_arguments",
           "training_arguments_without_secrets"]
