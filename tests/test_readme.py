"""The README is executed (issue 17): every ```python and ```bash block of README.md runs, in order, as written,
against the outputs of a quick demo run, and must succeed.

How:

* once per session (module fixture), ``python -m examples.demo --quick --output_dir <tmp>/outputs`` builds what the
  README's paths name (``outputs/csmcir-tiny-synthetic``, ``outputs/mmaps-tiny-synthetic``, ``outputs/data/...``);
  every block then runs with ``<tmp>`` as its working directory, so ``outputs/...`` resolves and whatever a block
  writes (``my-csmcir``, ``data/synth``) lands in the temporary folder, never in the repository;
* a ```python block runs in a fresh interpreter of this venv (``python -c <block>``), a ```bash block in
  ``bash -e -o pipefail`` with the venv's ``bin`` first on ``PATH`` (console scripts such as ``csmcir-train``
  resolve), both offline (``HF_HUB_OFFLINE=1`` ...); blocks run in README order and each must exit 0;
* a block preceded by the line ``<!-- readme-test: skip (<reason>) -->`` is skipped, with its reason: one that needs
  the Hub, a GPU or a multi-GB download, ``make test`` (the test command itself: running it here would recurse) and
  ``make demo`` (the full demo; its quick mode is this file's fixture). Every skip must give a reason.

The demo folders are also checked with ``hub_cards.hub_ready.hub_ready_problems``: what the demo writes uploads to
the Hub as it is. A failing block's test names its README line and section, so breakage in any section is visible.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>python|bash|sh)\s*$")
ANY_MARKER = re.compile(r"<!--\s*readme-test\b")
SKIP_MARKER = re.compile(r"^\s*<!--\s*readme-test:\s*skip\s*\((?P<reason>.*)\)\s*-->\s*$")
HEADING = re.compile(r"^(#{1,4})\s+(?P<title>.+?)\s*$")
# Generous: about 1 minute (demo) and seconds (blocks) on an idle 2-core machine, many times that on a shared one.
BLOCK_TIMEOUT_S = 600
DEMO_TIMEOUT_S = 1200
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}


@dataclass(frozen=True)
class Block:
    """One fenced code block of the README."""

    line: int                 # 1-based line of the opening fence
    lang: str                 # "python" or "bash"
    code: str                 # dedented body
    section: str              # the nearest heading above it
    marker: str | None        # the readme-test marker line above it, if any
    skip_reason: str | None   # the reason of a well-formed skip marker

    @property
    def id(self) -> str:
        return f"L{self.line}-{self.lang}"


def readme_blocks(text: str) -> list[Block]:
    """Every ```python / ```bash / ```sh block of ``text`` with its section and marker (module docstring)."""
    lines = text.splitlines()
    blocks, section, i = [], "(top)", 0
    while i < len(lines):
        heading = HEADING.match(lines[i])
        if heading:
            section = heading.group("title")
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = previous.strip() if ANY_MARKER.search(previous) else None
        skip = SKIP_MARKER.match(previous) if marker else None
        reason = skip.group("reason").strip() if skip else None
        lang = "bash" if fence.group("lang") == "sh" else fence.group("lang")
        blocks.append(Block(start + 1, lang, textwrap.dedent("\n".join(body)) + "\n", section, marker, reason or None))
        i += 1
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


def _environment(workdir: Path) -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)
    return {**os.environ, **OFFLINE, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}


def _run_block(block: Block, workdir: Path, env: dict[str, str]) -> tuple[int, str]:
    command = ([sys.executable, "-c", block.code] if block.lang == "python"
               else ["bash", "-e", "-o", "pipefail", "-c", block.code])
    try:
        result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        return 124, f"timed out after {BLOCK_TIMEOUT_S} s\n{err.stdout or ''}{err.stderr or ''}"
    return result.returncode, result.stdout + result.stderr


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
    """Run the quick demo into ``<tmp>/outputs``, then every runnable block in README order; results by block id."""
    workdir = tmp_path_factory.mktemp("readme")
    env = _environment(workdir)
    results: dict[str, tuple[int, str]] = {}
    command = [sys.executable, "-m", "examples.demo", "--quick", "--output_dir", str(workdir / "outputs")]
    try:
        demo = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=DEMO_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        log = f"timed out after {DEMO_TIMEOUT_S} s\n{err.stdout or ''}{err.stderr or ''}"
        return {"demo": (124, log[-4000:]), "workdir": workdir, "results": results}
    if demo.returncode != 0:
        return {"demo": (demo.returncode, (demo.stdout + demo.stderr)[-4000:]), "workdir": workdir, "results": results}
    progress = workdir / "readme-blocks.log"   # one line per block as it finishes, for watching a slow run
    for block in BLOCKS:
        if block.skip_reason is None:
            started = time.perf_counter()
            results[block.id] = _run_block(block, workdir, env)
            with open(progress, "a", encoding="utf-8") as handle:
                handle.write(f"README.md:{block.line} {block.lang} [{block.section}] exit {results[block.id][0]} "
                             f"in {time.perf_counter() - started:.0f} s\n")
    return {"demo": (0, ""), "workdir": workdir, "results": results}


def test_the_readme_has_runnable_blocks():
    assert sum(b.lang == "python" for b in BLOCKS) >= 3 and sum(b.lang == "bash" for b in BLOCKS) >= 2, BLOCKS


def test_every_marker_is_a_skip_with_a_reason():
    bad = [f"README.md:{b.line} ({b.section}): {b.marker}" for b in BLOCKS if b.marker and not b.skip_reason]
    assert not bad, "a readme-test marker must read `<!-- readme-test: skip (<reason>) -->`:\n" + "\n".join(bad)


def test_make_test_is_skipped_as_the_test_command_and_ci_runs_it():
    # `make test` in the README would run this very test again: it is marked, and CI runs exactly that command.
    make_test = [b for b in BLOCKS if re.search(r"^\s*make test\b", b.code, flags=re.MULTILINE)]
    assert make_test and all(b.skip_reason and "test command itself" in b.skip_reason for b in make_test), make_test
    assert re.search(r"^\s*make test\b", (ROOT / ".ci" / "run").read_text(), flags=re.MULTILINE)
    make_demo = [b for b in BLOCKS if re.search(r"^\s*make demo\b", b.code, flags=re.MULTILINE)]
    assert all(b.skip_reason for b in make_demo), make_demo   # the fixture runs its quick mode instead


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block_runs_as_written(block, readme_run):
    if block.skip_reason is not None:
        pytest.skip(f"README.md:{block.line} ({block.section}): {block.skip_reason}")
    demo_status, demo_log = readme_run["demo"]
    assert demo_status == 0, f"python -m examples.demo --quick failed (exit {demo_status}):\n{demo_log}"
    status, output = readme_run["results"][block.id]
    assert status == 0, (f"README.md:{block.line}, section {block.section!r}: the {block.lang} block exited "
                         f"{status}\n--- block ---\n{block.code}--- output (last 3000 characters) ---\n{output[-3000:]}")


def test_the_demo_folders_are_hub_ready(readme_run):
    from hub_cards.hub_ready import hub_ready_problems

    demo_status, demo_log = readme_run["demo"]
    assert demo_status == 0, demo_log
    outputs = readme_run["workdir"] / "outputs"
    folders = sorted(p for p in outputs.iterdir() if (p / "config.json").is_file())
    names = {p.name for p in folders}
    assert {"csmcir-tiny-synthetic", "mmaps-tiny-synthetic"} <= names, names
    problems = {p.name: hub_ready_problems(p) for p in folders}
    assert all(not found for found in problems.values()), problems
