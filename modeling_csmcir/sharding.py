"""Data-parallel work over a gallery: which process does which items, per-process journals and parts, and the merge.

Captioning (``csmcir-caption``) and indexing (``csmcir-index``) scale the same way, on the launchers people already
use (``torchrun``, ``accelerate launch``, or independent jobs given ``--process_index i --num_processes N``):

* **Who does what.** :func:`shard_range` is ``accelerate``'s contiguous split
  (``PartialState.split_between_processes``): with ``N`` items over ``W`` processes, process ``r`` takes
  ``[r·q + min(r, e), (r+1)·q + min(r+1, e))`` with ``q, e = divmod(N, W)`` — the first ``e`` processes one item more.
  The split is of the *whole* item list, never of what is left to do, so processes that start at different moments
  (or a rerun with another process count) never disagree about an item.
* **Journals are the source of truth.** Each process appends what it finished to its own journal
  (:func:`journal_path`: ``<output>.partial.jsonl`` for a single process, ``<output>.partial.rank<r>.jsonl``
  otherwise), one fsynced JSON object per line; every process reads *all* journals (:func:`journal_paths`) to skip
  what is done, and repairs (cuts a torn last line off) only its own. A kill loses at most the line in flight.
* **Parts.** Work whose result is a file per piece (an index) is cut into fixed parts (:func:`part_ranges`,
  independent of the process count) handed out with the same split; a finished part is a folder renamed into place.
* **One merge.** When the processes share a process group (torchrun / accelerate), they meet at a barrier and
  process 0 merges; independent jobs leave their journals or parts and one ``--merge_only`` run merges them.

:func:`current_process` finds this process's place (``PartialState`` when launched with ``WORLD_SIZE > 1``, a gloo
group on machines without an accelerator).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from transformers.utils import logging

from hub_cards.launch import has_accelerator, launched_world_size

logger = logging.get_logger(__name__)

T = TypeVar("T")

__all__ = [
    "ProcessShard",
    "ShardingArguments",
    "append_journal",
    "current_process",
    "journal_path",
    "journal_paths",
    "lock_path",
    "part_name",
    "part_ranges",
    "read_journal",
    "shard_range",
]


def shard_range(num_items: int, rank: int, world_size: int) -> range:
    """The contiguous block of ``range(num_items)`` process ``rank`` of ``world_size`` takes.

    ``q, e = divmod(num_items, world_size)``; start ``= rank·q + min(rank, e)``, length ``= q + (rank < e)``: the
    split ``accelerate.PartialState.split_between_processes`` makes of a list (the first ``e`` processes get one
    more item; a process may get none).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"process index {rank} is not in [0, {world_size}) (num_processes={world_size})")
    per_process, extras = divmod(num_items, world_size)
    start = rank * per_process + min(rank, extras)
    return range(start, start + per_process + (1 if rank < extras else 0))


@dataclass(frozen=True)
class ProcessShard:
    """This process's place in a data-parallel run.

    Attributes:
        rank: the process index, ``0 <= rank < world_size``.
        world_size: how many processes share the work.
        distributed: whether a ``torch.distributed`` process group joins them (then :meth:`barrier` waits for all,
            and process 0 merges at the end); independent jobs (``distributed=False``) leave the merge to a
            ``--merge_only`` run.
    """

    rank: int = 0
    world_size: int = 1
    distributed: bool = False

    def __post_init__(self) -> None:
        shard_range(0, self.rank, self.world_size)  # validates rank / world_size

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def single(self) -> bool:
        return self.world_size == 1

    def split(self, items: Sequence[T]) -> list[T]:
        """This process's contiguous block of ``items`` (:func:`shard_range`)."""
        span = shard_range(len(items), self.rank, self.world_size)
        return list(items[span.start : span.stop])

    def barrier(self) -> None:
        """Wait until every process of the group gets here (a no-op without a process group)."""
        if self.distributed:
            from accelerate import PartialState

            PartialState().wait_for_everyone()


@dataclass
class ShardingArguments:
    """The command-line arguments every sharded CLI shares (``csmcir-caption``, ``csmcir-index``).

    Under ``torchrun`` / ``accelerate launch`` leave them unset: the launcher says which process this is. Jobs
    without a shared process group (separate machines, a batch scheduler) pass ``--process_index i
    --num_processes N`` each, then one ``--merge_only`` run merges what they left.
    """

    process_index: int | None = field(default=None, metadata={"help": "Independent jobs: this job's index in "
                                                                      "[0, num_processes) (torchrun/accelerate set it)."})
    num_processes: int | None = field(default=None, metadata={"help": "Independent jobs: how many share the work."})
    merge_only: bool = field(default=False, metadata={"help": "Only merge what finished (independent) jobs left "
                                                              "into the output."})

    def process(self) -> ProcessShard:
        """This process's place (:func:`current_process` of these arguments)."""
        return current_process(self.process_index, self.num_processes)


def current_process(process_index: int | None = None, num_processes: int | None = None) -> ProcessShard:
    """Where this process stands: explicit ``process_index``/``num_processes`` (independent jobs), else the launcher's.

    Launched by ``torchrun`` / ``accelerate launch`` with ``WORLD_SIZE > 1``, this joins the process group through
    ``accelerate.PartialState`` — on the CPU (gloo) when torch sees no accelerator, since ``PartialState()`` would
    otherwise leave every process alone as rank 0 of 1. Call it before building a pipeline, so the pipeline's
    device is this process's (``PartialState().device``).
    """
    if (process_index is None) != (num_processes is None):
        raise ValueError(
            f"pass both --process_index and --num_processes, or neither (got {process_index} and {num_processes})"
        )
    if process_index is not None:
        if launched_world_size() > 1:
            raise ValueError(
                "--process_index/--num_processes are for independent jobs; this process was launched by torchrun or "
                f"accelerate (WORLD_SIZE={launched_world_size()}), which already says which process it is"
            )
        return ProcessShard(rank=process_index, world_size=num_processes, distributed=False)
    if launched_world_size() == 1:
        return ProcessShard()
    from accelerate import PartialState

    state = PartialState(cpu=not has_accelerator())
    if state.num_processes != launched_world_size():
        raise RuntimeError(
            f"launched with WORLD_SIZE={launched_world_size()} but accelerate formed a group of {state.num_processes} "
            f"process(es) ({state.distributed_type})"
        )
    return ProcessShard(rank=state.process_index, world_size=state.num_processes, distributed=True)


# --------------------------------------------------------------------------------------------------------------------
# Journals
# --------------------------------------------------------------------------------------------------------------------

_JOURNAL_SUFFIX = ".partial.jsonl"


def journal_path(output_file: str | os.PathLike, shard: ProcessShard) -> Path:
    """The journal ``shard`` appends to: ``<output>.partial.jsonl`` (one process) or ``<output>.partial.rank<r>.jsonl``."""
    output_file = Path(output_file)
    if shard.single:
        return output_file.with_name(output_file.name + _JOURNAL_SUFFIX)
    return output_file.with_name(f"{output_file.name}.partial.rank{shard.rank}.jsonl")


def journal_paths(output_file: str | os.PathLike) -> list[Path]:
    """Every journal of ``output_file`` on disk, whichever process count wrote it (single-process one first)."""
    output_file = Path(output_file)
    single = output_file.with_name(output_file.name + _JOURNAL_SUFFIX)
    ranked = sorted(
        output_file.parent.glob(f"{_glob_escape(output_file.name)}.partial.rank*.jsonl"),
        key=lambda p: (len(p.name), p.name),
    ) if output_file.parent.is_dir() else []
    return ([single] if single.exists() else []) + ranked


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def lock_path(output_file: str | os.PathLike, shard: ProcessShard) -> Path:
    """The lock a process holds while it writes for ``output_file``.

    Process 0 (also of a single-process run) holds ``<output>.lock``, so two jobs on one output always collide
    there whatever their process counts; process ``r > 0`` holds ``<output>.rank<r>.lock`` beside its journal.
    """
    output_file = Path(output_file)
    if shard.is_main:
        return output_file.with_name(output_file.name + ".lock")
    return output_file.with_name(f"{output_file.name}.rank{shard.rank}.lock")


def _line_ends(data: bytes) -> Iterator[int]:
    start = 0
    while (newline := data.find(b"\n", start)) != -1:
        yield newline + 1
        start = newline + 1


def read_journal(path: str | os.PathLike, *, repair: bool = False) -> list[dict[str, Any]]:
    """The complete records (JSON objects, one per line) of a journal, in order.

    A last line left unfinished by a kill (or still being written by its process) is not returned; with
    ``repair=True`` — only for the journal this process appends to — it is cut off the file, so the next append
    starts on a fresh line.
    """
    path = Path(path)
    data = path.read_bytes()
    good_end = 0
    records = []
    for line_end in _line_ends(data):
        try:
            record = json.loads(data[good_end:line_end].decode("utf-8"))
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError):
            break
        records.append(record)
        good_end = line_end
    if good_end < len(data):
        if repair:
            logger.warning(
                "%s: dropping %d bytes of an unfinished journal line (the batch in flight when the run stopped)",
                path, len(data) - good_end,
            )
            with path.open("r+b") as handle:
                handle.truncate(good_end)
        else:
            logger.info("%s: ignoring an unfinished last line (%d bytes)", path, len(data) - good_end)
    return records


def append_journal(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one record as a JSON line and fsync it: once this returns, a kill cannot lose it."""
    line = json.dumps(record, ensure_ascii=False) + "\n"
    with Path(path).open("a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


# --------------------------------------------------------------------------------------------------------------------
# Parts
# --------------------------------------------------------------------------------------------------------------------


def part_ranges(num_items: int, part_size: int) -> list[range]:
    """``range(num_items)`` cut into consecutive parts of ``part_size`` items (the last may be shorter).

    Parts depend only on the items and ``part_size``, not on the process count, so a rerun with more or fewer
    processes reuses every finished part.
    """
    if part_size < 1:
        raise ValueError(f"part size must be >= 1 (got {part_size})")
    return [range(start, min(start + part_size, num_items)) for start in range(0, num_items, part_size)]


def part_name(index: int, num_parts: int) -> str:
    """``part-00003-of-00010``: a part's folder name, sorting in part order."""
    return f"part-{index:05d}-of-{num_parts:05d}"
