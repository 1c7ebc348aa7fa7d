"""Loading the model folder a command line names: its type checked first, and what `from_pretrained` raises for a
broken folder turned into one message naming the folder (the CLIs print it without a traceback)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

#: Model types `CSMCIRModel.from_blip2_pretrained` converts.
BLIP2_MODEL_TYPES = frozenset({"blip-2"})


def folder_model_type(path: str) -> str | None:
    """The ``model_type`` of a local model folder's ``config.json`` (``None`` for a Hub id or a folder without one)."""
    from ..data.paths import read_json

    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        return None
    config = read_json(config_file)
    if not isinstance(config, dict):
        raise ValueError(f"{config_file}: expected a JSON object, got {type(config).__name__}")
    return config.get("model_type")


@contextlib.contextmanager
def model_loading_errors(path: str) -> Iterator[None]:
    """Turn what `from_pretrained` raises for a broken folder (weights that do not fit the config, a truncated
    safetensors file, code that needs --trust_remote_code) into one ``ValueError`` naming the folder."""
    try:
        yield
    except (ValueError, FileNotFoundError, PermissionError):
        raise
    except Exception as err:  # noqa: BLE001 - safetensors' SafetensorError, torch's RuntimeError, OSError, ...
        text = " ".join(str(err).split())
        if len(text) > 600:
            text = text[:600] + " ..."
        raise ValueError(
            f"--model_name_or_path {path}: cannot load the model ({type(err).__name__}: {text}); expected config.json "
            "and weights of one CSMCIR (or BLIP-2) model that agree"
        ) from err


__all__ = ["BLIP2_MODEL_TYPES", "folder_model_type", "model_loading_errors"]
