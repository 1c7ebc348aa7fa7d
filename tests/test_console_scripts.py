"""Console scripts exit with status 0 on success (a `main` that returns a result must not become the exit status)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def _run_script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    module, _, function = SCRIPTS[name].partition(":")
    code = f"import sys; sys.argv = [{name!r}, *{list(args)!r}]; from {module} import {function}; sys.exit({function}())"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_every_declared_script_points_at_an_importable_function():
    import importlib

    for name, target in SCRIPTS.items():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), name


@pytest.mark.parametrize(
    "name, args",
    [
        ("csmcir-synth", ["--num_images", "60", "--image_size", "32"]),
        ("mmaps-synth", ["--num_products", "9", "--region_features", "false"]),
    ],
)
def test_a_successful_run_exits_with_status_zero(name, args, tmp_path):
    result = _run_script(name, "--output_dir", str(tmp_path / "out"), *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert any((tmp_path / "out").iterdir())
