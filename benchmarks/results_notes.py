"""The hand-written "## Notes" of a results table, kept when a benchmark rebuilds the table's numbers.

Shared by the benchmark scripts (each adds this folder to ``sys.path`` before importing it, so the scripts run as
``python benchmarks/<name>.py`` or ``python -m benchmarks.<name>`` alike).
"""

from __future__ import annotations

from pathlib import Path

NOTES_HEADING = "\n## Notes\n"
PLACEHOLDER = "(interpretation to be written after reading the numbers)"


def previous_notes(path: str | Path) -> str:
    """The text under "## Notes" of the existing table at ``path``, or a placeholder when there is none yet."""
    path = Path(path)
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        if NOTES_HEADING in text:
            return text.split(NOTES_HEADING, 1)[1].strip()
    return PLACEHOLDER
