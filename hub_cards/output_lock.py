"""One job at a time per output: an exclusive lock file beside what a job writes.

Two jobs writing the same output (two ``csmcir-caption`` runs on one caption file, two ``csmcir-train`` runs into
one ``output_dir``) would each exit 0 while one silently overwrote the other. :func:`exclusive_output_lock` takes an
``flock`` on ``<lock_file>`` for the duration of a job and records who holds it (pid, host, start time, command);
a second job fails at once with :class:`OutputInUseError` naming the first. The lock is released by the kernel
when the holder exits, killed or not, so a lock file left behind by a killed job never blocks a later run; a job
that finishes removes its lock file.

    with exclusive_output_lock("captions/cap.json.lock", what="caption file captions/cap.json"):
        ...
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["OutputInUseError", "exclusive_output_lock"]


class OutputInUseError(RuntimeError):
    """Another job holds the output's lock."""


def _holder_text(lock_file: Path) -> str:
    try:
        holder = json.loads(lock_file.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return "another job"
    if not isinstance(holder, dict) or not holder:
        return "another job"
    return (f"job pid {holder.get('pid')} on {holder.get('host')} started {holder.get('started')} "
            f"({holder.get('command')})")


@contextlib.contextmanager
def exclusive_output_lock(lock_file: str | os.PathLike, *, what: str) -> Iterator[Path]:
    """Hold an exclusive lock on ``lock_file`` (created, with its folder) while the ``with`` block runs.

    Raises:
        OutputInUseError: ``"{what} is in use by job pid N on host started T (command); wait for it to finish or
            choose another output"`` when another process holds the lock.
        PermissionError: naming ``what`` and the lock file when its folder is not writable.
    """
    import fcntl  # POSIX only; imported here so importing this module never fails elsewhere

    lock_file = Path(lock_file)
    for _ in range(5):
        handle = _open_lock_file(lock_file, what)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise OutputInUseError(
                f"{what} is in use by {_holder_text(lock_file)}; wait for it to finish or choose another output "
                f"(lock file {str(lock_file)!r})"
            ) from None
        # The holder before us removes the file when it finishes: a lock on a file no longer at the path is no lock.
        try:
            same = os.fstat(handle.fileno()).st_ino == os.stat(lock_file).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()
    else:  # pragma: no cover - five holders finishing in a row
        raise OutputInUseError(f"{what}: could not take the lock file {str(lock_file)!r}; try again")
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                 "command": " ".join(os.path.basename(a) if i == 0 else a
                                                     for i, a in enumerate(sys.argv))[:300]}))
        handle.flush()
        yield lock_file
    finally:
        # Removed while still held, so no later job can lock the old file while another locks a new one (the inode
        # check above); the lock itself goes with the handle.
        with contextlib.suppress(OSError):
            lock_file.unlink()
        handle.close()


def _open_lock_file(lock_file: Path, what: str):
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        return open(lock_file, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole job
    except PermissionError as err:
        raise PermissionError(f"{what}: cannot create the lock file {str(lock_file)!r} ({err.strerror})") from None
