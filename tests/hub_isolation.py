"""Run code in a clean Python process that cannot import this repository's packages.

The Hub path of a saved folder (remote code copied into it, loaded with `trust_remote_code=True`) is only
exercised when the in-process registration of our classes is absent, so the child blocks every import of
`modeling_csmcir`, `modeling_mmaps`, `pipelines` and `hub_cards` (the venv has them installed editable).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

BLOCKED_PACKAGES = ("modeling_csmcir", "modeling_mmaps", "pipelines", "hub_cards")

_PRELUDE = f"""
import sys
sys.path = [p for p in sys.path if p not in ("", ".", {str(Path(__file__).resolve().parents[1])!r})]
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED_PACKAGES!r}:
            raise ImportError("blocked in the isolated Hub test process: " + name)
        return None
sys.meta_path.insert(0, _Block())
"""


def run_isolated(code: str, cwd: str | os.PathLike, timeout: float = 240.0) -> dict:
    """Run `code` in a fresh interpreter; the code must print one JSON object as its last stdout line."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    script = _PRELUDE + textwrap.dedent(code)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=str(cwd), env=env, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise AssertionError(f"isolated process failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])
