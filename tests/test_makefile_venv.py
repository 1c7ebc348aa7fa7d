"""`make venv` from scratch and with a changed TORCH_SPEC (issue 17), run for real through make with a shim Python:
the shim creates the venv folder and records every command instead of installing, so the Makefile's logic (what is
installed, in which order, when torch is reinstalled) is exercised in a second, without the network."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIM = """#!/bin/sh
# `python -m venv DIR` makes DIR/bin/python (this shim); anything else is logged; `-c` prints a fake torch line.
echo "$*" >> "$SHIM_LOG"
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then mkdir -p "$3/bin" && cp "$0" "$3/bin/python"; fi
if [ "$1" = "-c" ]; then echo "make venv: installed torch (shim)"; fi
exit 0
"""

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


@pytest.fixture
def make_venv(tmp_path):
    shim = tmp_path / "python-shim"
    shim.write_text(SHIM)
    shim.chmod(0o755)
    log, venv = tmp_path / "commands.log", tmp_path / "venv"

    def run(*extra: str) -> tuple[str, list[str]]:
        log.write_text("")
        env = {**os.environ, "SHIM_LOG": str(log)}
        result = subprocess.run(["make", "-C", str(ROOT), "venv", f"VENV={venv}", f"PYTHON={shim}", *extra],
                                capture_output=True, text=True, env=env, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout, log.read_text().splitlines()

    return run, venv


def test_from_scratch_creates_the_venv_installs_torch_first_then_the_package(make_venv):
    run, venv = make_venv
    output, commands = run()
    assert commands[0] == f"-m venv {venv}"
    torch_installs = [i for i, c in enumerate(commands) if c.startswith("-m pip install") and "torch==2.13.0" in c]
    package = next(i for i, c in enumerate(commands) if c.endswith('-e .[dev]'))
    assert torch_installs and max(torch_installs) < package   # torch first, in its own pip commands
    assert "installing torch from TORCH_SPEC='torch==2.13.0'" in output and "CPU or CUDA" in output
    assert (venv / ".torch-spec").read_text() == "torch==2.13.0\n" and (venv / ".installed").is_file()


def test_the_same_spec_again_installs_nothing(make_venv):
    run, _ = make_venv
    run()
    _, commands = run()
    assert not [c for c in commands if "pip" in c], commands


def test_a_changed_torch_spec_reinstalls_torch_from_it(make_venv):
    run, venv = make_venv
    run()
    spec = "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
    output, commands = run(f"TORCH_SPEC={spec}")
    assert f"-m pip install --quiet --force-reinstall --no-deps {spec}" in commands, commands
    assert "recorded: 'torch==2.13.0'" in output
    assert (venv / ".torch-spec").read_text() == spec + "\n"
    _, again = run(f"TORCH_SPEC={spec}")
    assert not [c for c in again if "pip" in c], again
