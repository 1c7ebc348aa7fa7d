"""MCoT captioning prompts: stored as data (``prompts/{general,fashion}.json``), loaded and turned into a chat.

The multi-level chain-of-thought prompt asks a vision-language model to describe the global scene (category,
setting, style), then objects and regions, then fine attributes (colour, material, pattern, shape, text on the
item), and to end with one concise ``Final_Caption`` that tells the image apart from similar ones. Users may pass
their own prompt file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image


PROMPT_DIR = Path(__file__).resolve().parent / "prompts"


@dataclass(frozen=True)
class MCoTPrompt:
    """A multi-level chain-of-thought captioning prompt.

    Attributes:
        name: short name (``"general"``, ``"fashion"`` or the file stem of a user prompt).
        prompt: the user-turn instruction sent beside the image.
        system: optional system-turn text (left out of the chat when ``None``; not every template has one).
        description: what the prompt is for.
    """

    name: str
    prompt: str
    system: str | None = None
    description: str = ""


def available_mcot_prompts() -> list[str]:
    """Names of the prompts shipped with the package (files in ``prompts/``)."""
    return sorted(p.stem for p in PROMPT_DIR.glob("*.json"))


def load_mcot_prompt(name_or_path: str | os.PathLike = "general") -> MCoTPrompt:
    """Load a shipped prompt by name (``"general"``, ``"fashion"``) or a user prompt file.

    A ``.json`` file holds ``{"prompt": str, "system": str | null, "name": str, "description": str}`` (only
    ``prompt`` is required); any other file is read as the prompt text itself.

    Raises:
        ValueError: for an unknown name, an empty prompt, or a JSON file without a string ``prompt``.
    """
    path = Path(name_or_path)
    if not path.is_file():
        shipped = PROMPT_DIR / f"{name_or_path}.json"
        if not shipped.is_file():
            raise ValueError(
                f"prompt {str(name_or_path)!r} is neither a file nor a shipped prompt "
                f"(expected a path or one of {available_mcot_prompts()})"
            )
        path = shipped
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: prompt file is not valid JSON ({err})") from err
        if not isinstance(data, dict) or not isinstance(data.get("prompt"), str):
            got = type(data.get("prompt")).__name__ if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{path}: expected an object with a string 'prompt' (got {got})")
        system = data.get("system")
        if system is not None and not isinstance(system, str):
            raise ValueError(f"{path}: 'system' must be a string or null (got {type(system).__name__})")
        prompt = MCoTPrompt(
            name=str(data.get("name", path.stem)),
            prompt=data["prompt"],
            system=system or None,
            description=str(data.get("description", "")),
        )
    else:
        prompt = MCoTPrompt(name=path.stem, prompt=path.read_text(encoding="utf-8"))
    if not prompt.prompt.strip():
        raise ValueError(f"{path}: the prompt text is empty")
    return prompt


def build_mcot_messages(image: Image.Image, prompt: MCoTPrompt) -> list[dict[str, Any]]:
    """The chat for one image: an optional system turn, then a user turn holding the image and the prompt."""
    messages: list[dict[str, Any]] = []
    if prompt.system:
        messages.append({"role": "system", "content": [{"type": "text", "text": prompt.system}]})
    messages.append(
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt.prompt}]}
    )
    return messages


__all__ = ["PROMPT_DIR", "MCoTPrompt", "available_mcot_prompts", "build_mcot_messages", "load_mcot_prompt"]
