"""Copy a custom pipeline's code into the folder it is saved to, however the pipeline class was imported.

`transformers.Pipeline.save_pretrained` writes `custom_pipelines` into `config.json` and copies the pipeline's file
(`custom_object_save`) only for a class registered in this process (`PIPELINE_REGISTRY.register_pipeline` sets
`_registered_impl`). A pipeline loaded from a Hub folder with `trust_remote_code=True` is a class from
`transformers_modules` that was never registered: its `config.json` keeps `custom_pipelines` (inherited from the
folder it came from) but the code files are not copied, so the re-saved folder does not load. `save_pipeline_code`
does what transformers does for registered classes: it records the task in `config.custom_pipelines` and copies the
class's file and every sibling it imports (found by `custom_object_save` from the module's own file, which for a
remote-code class is its copy in the modules cache).

This file is a flat Hub-module sibling of the pipeline files: it imports only transformers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from transformers.dynamic_module_utils import custom_object_save


def save_pipeline_code(
    pipe: Any, save_directory: str | os.PathLike, task: str, auto_classes: Sequence[str], pipeline_type: str
) -> None:
    """Before `Pipeline.save_pretrained`: make sure `save_directory` gets `pipe`'s code and `custom_pipelines`.

    Does nothing for a registered class (transformers handles it). Otherwise sets
    `pipe.model.config.custom_pipelines = {task: {"impl": "<file>.<Class>", "pt": auto_classes, "type": ...}}` (the
    model's `save_pretrained` then writes it) and copies the pipeline file and its relative imports.
    """
    if hasattr(pipe, "_registered_impl"):
        return
    cls = type(pipe)
    pipe.model.config.custom_pipelines = {
        task: {"impl": f"{cls.__module__.split('.')[-1]}.{cls.__name__}", "pt": list(auto_classes), "type": pipeline_type}
    }
    os.makedirs(save_directory, exist_ok=True)
    custom_object_save(pipe, save_directory)
