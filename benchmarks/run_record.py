"""What every benchmark table records about its run: command, machine, threads, load average before and after.

Shared by the benchmark scripts (import it as ``from benchmarks.run_record import RunRecord`` or, when a script runs
as ``python benchmarks/<name>.py``, after adding this folder to ``sys.path``). A run whose 1-minute load average
exceeded the number of cores at the start or the end is flagged in its table: other jobs competed for the cores, so
absolute times stretch (contenders still run interleaved, so their ratios stay comparable).
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
from dataclasses import dataclass, field

import torch


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the architecture when unknown."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass
class RunRecord:
    """Start it before the measurements (``RunRecord.start(...)``), call :meth:`finish` after them."""

    script: str
    argv: list[str]
    threads: int
    load_before: float = 0.0
    load_after: float | None = None
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)

    @classmethod
    def start(cls, script: str, argv: list[str] | None, threads: int) -> "RunRecord":
        return cls(script=script, argv=list(sys.argv[1:] if argv is None else argv), threads=threads,
                   load_before=os.getloadavg()[0])

    def finish(self) -> None:
        self.load_after = os.getloadavg()[0]

    @property
    def command(self) -> str:
        return f".venv/bin/python benchmarks/{self.script} {shlex.join(self.argv)}".strip()

    @property
    def loaded(self) -> bool:
        """Whether the load average exceeded the core count at the start or the end."""
        return max(self.load_before, self.load_after or 0.0) > self.cores

    def header_lines(self) -> list[str]:
        """Markdown lines for the top of a table: command, machine, threads, load, and the noise flag."""
        after = "?" if self.load_after is None else f"{self.load_after:.2f}"
        lines = [
            f"Command: `{self.command}`",
            "",
            f"Machine: {cpu_name()}, {self.cores} cores; torch {torch.__version__}, {self.threads} thread(s). "
            f"1-minute load average {self.load_before:.2f} before, {after} after.",
        ]
        if self.loaded:
            lines += [
                "",
                f"**Noisy run: the load average exceeded the {self.cores} cores** (other jobs shared the CPU); absolute "
                "times are stretched and only the ratios of interleaved contenders are comparable.",
            ]
        return lines + [""]
