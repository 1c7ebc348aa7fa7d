"""`--resume_from_checkpoint last` for both packages' train CLIs: the latest checkpoint that finished saving.

`transformers.trainer_utils.get_last_checkpoint` takes the highest-numbered ``checkpoint-N`` even when a killed run
left that folder half written; a checkpoint counts here only once its ``trainer_state.json`` exists (the Trainer
writes it last). Shared here because the two model packages never import each other.
"""

from __future__ import annotations

import os

from transformers.utils import logging

logger = logging.get_logger(__name__)

LAST_CHECKPOINT_NAMES = ("last", "true")


def latest_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The highest-step ``checkpoint-N`` in ``output_dir`` that has its ``trainer_state.json``, or None."""
    output_dir = os.fspath(output_dir)
    if not os.path.isdir(output_dir):
        return None
    steps = []
    for name in os.listdir(output_dir):
        prefix, _, number = name.partition("-")
        if prefix == "checkpoint" and number.isdigit() and os.path.isfile(
            os.path.join(output_dir, name, "trainer_state.json")
        ):
            steps.append(int(number))
    return os.path.join(output_dir, f"checkpoint-{max(steps)}") if steps else None


def resolve_resume_checkpoint(resume_from_checkpoint: str | bool | None, output_dir: str | os.PathLike) -> str | None:
    """What to hand ``Trainer.train(resume_from_checkpoint=...)``: ``"last"`` / ``"true"`` / ``True`` become the
    latest complete checkpoint of ``output_dir`` (None, with a warning, when there is none); a path is kept."""
    value = resume_from_checkpoint
    if value is True or (isinstance(value, str) and value.lower() in LAST_CHECKPOINT_NAMES):
        found = latest_complete_checkpoint(output_dir)
        if found is None:
            logger.warning(f"no complete checkpoint in {os.fspath(output_dir)}: training from the start")
        return found
    return value or None


__all__ = ["latest_complete_checkpoint", "resolve_resume_checkpoint"]
