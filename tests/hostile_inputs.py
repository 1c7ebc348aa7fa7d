"""Shared pieces of the hostile-input suites (tests/*/test_hostile_*.py): a recorder of every file a block of code
opens, and tiny on-disk benchmark layouts to break one field at a time."""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from PIL import Image


@contextlib.contextmanager
def opened_files() -> Iterator[list[str]]:
    """Record the real path of every file opened (``open``, ``io.open``, ``os.open``, ``PIL.Image.open``) inside."""
    seen: list[str] = []
    real_open, real_io_open, real_os_open, real_pil_open = builtins.open, io.open, os.open, Image.open

    def note(target) -> None:
        if isinstance(target, (str, bytes, os.PathLike)):
            seen.append(os.path.realpath(os.fsdecode(target)))

    def tracking_open(file, *args, **kwargs):
        note(file)
        return real_open(file, *args, **kwargs)

    def tracking_os_open(path, *args, **kwargs):
        note(path)
        return real_os_open(path, *args, **kwargs)

    def tracking_pil_open(fp, *args, **kwargs):
        note(fp)
        return real_pil_open(fp, *args, **kwargs)

    builtins.open, io.open, os.open, Image.open = tracking_open, tracking_open, tracking_os_open, tracking_pil_open
    try:
        yield seen
    finally:
        builtins.open, io.open, os.open, Image.open = real_open, real_io_open, real_os_open, real_pil_open


def write_image(path: Path, color=(200, 30, 30), size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)
    return path


def write_json(path: Path, payload) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload), encoding="utf-8")
    return path


def outside_secret(tmp_path: Path) -> Path:
    """An image-looking file outside every dataset folder, which no loader may open."""
    return write_image(tmp_path / "outside" / "secret.png", color=(1, 2, 3))


def make_cirr(root: Path, split: str = "val", pairs: list[dict] | None = None,
              split_paths: dict[str, str] | None = None) -> Path:
    """A CIRR rc2 layout with images a..d under ``root/img`` and (by default) two valid pairs."""
    names = ["a", "b", "c", "d"]
    for i, name in enumerate(names):
        write_image(root / "img" / f"{name}.png", color=(40 * i, 20, 200 - 40 * i))
    write_json(root / "image_splits" / f"split.rc2.{split}.json",
               split_paths if split_paths is not None else {n: f"./img/{n}.png" for n in names})
    if pairs is None:
        pairs = [cirr_pair(1, "a", "b"), cirr_pair(2, "c", "d")]
    write_json(root / "captions" / f"cap.rc2.{split}.json", pairs)
    return root


def cirr_pair(pair_id: int, reference: str, target: str, caption: str = "make it blue") -> dict:
    return {"pairid": pair_id, "reference": reference, "target_hard": target, "target_soft": {target: 1.0},
            "caption": caption, "img_set": {"id": pair_id, "members": ["a", "b", "c", "d"]}}


def listing(folder: Path) -> list[str]:
    """Every path under ``folder`` (relative, sorted): what a failed run must leave unchanged."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def console_error_in_process(console_main: Callable[[], None], argv: list[str]) -> tuple[int, str]:
    """Run a console script's entry point in this process with ``argv``; return (exit status, what it wrote to stderr).

    The same code path as the installed script (``hub_cards.console.console_entry_point``), without a fresh
    interpreter's start-up (seconds per call). Each suite keeps one real-subprocess case for the process-level view.
    """
    stderr, saved_argv = io.StringIO(), sys.argv
    sys.argv = ["prog", *argv]
    try:
        with contextlib.redirect_stderr(stderr):
            console_main()
        status = 0
    except SystemExit as stop:
        status = stop.code if isinstance(stop.code, int) else 1
    finally:
        sys.argv = saved_argv
    return status, stderr.getvalue()
