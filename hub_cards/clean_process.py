"""Run code in a fresh Python process that cannot import this repository's packages.

A saved Hub folder carries its own remote code; it is only really exercised when our in-process registration
of the classes is absent. The child process therefore blocks every import of `modeling_csmcir`,
`modeling_mmaps`, `pipelines` and `hub_cards` (an editable install would otherwise make them importable),
exactly as on a machine that has only transformers installed. Used by the tests and by the demo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

BLOCKED_PACKAGES = ("modeling_csmcir", "modeling_mmaps", "pipelines", "hub_cards")
REPOSITORY_ROOT = str(Path(__file__).resolve().parents[1])

_PRELUDE = f"""
import sys
sys.path = [p for p in sys.path if p not in ("", ".", {REPOSITORY_ROOT!r})]
class _BlockProjectPackages:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED_PACKAGES!r}:
            raise ImportError("blocked in the clean Hub process: " + name)
        return None
sys.meta_path.insert(0, _BlockProjectPackages())
"""


def run_in_clean_process(
    code: str, cwd: str | os.PathLike, timeout: float = 600.0, env: dict[str, str] | None = None
) -> Any:
    """Run `code` in a fresh interpreter with the project's packages blocked; return its last stdout line as JSON.

    Offline Hub settings are forced (`HF_HUB_OFFLINE=1` ...); `env` adds or overrides variables. Raises
    `RuntimeError` with the child's stderr tail when it fails.
    """
    child_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    child_env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    child_env.update(env or {})
    result = subprocess.run(
        [sys.executable, "-c", _PRELUDE + textwrap.dedent(code)],
        cwd=str(cwd), env=child_env, capture_output=True, text=True, timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(f"the clean process failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    lines = result.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"the clean process printed nothing; stderr:\n{result.stderr[-2000:]}")
    return json.loads(lines[-1])
