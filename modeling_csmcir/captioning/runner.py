"""The resumable MCoT captioning run: journalled caption caches, the batched pass over a gallery, and the merge.

:class:`CaptionCache` keeps captions in the authors' format on disk, safe against a run killed at any moment;
:func:`generate_mcot_captions` decodes images ahead in threads, sends one chat per image through a caption engine
(an ``image-text-to-text`` pipeline, or vLLM: ``engines``), parses each answer and records it, isolating the images
that fail. Run by several processes (``torchrun`` / ``accelerate launch``, or independent jobs with an explicit
:class:`~modeling_csmcir.sharding.ProcessShard`), each captions its contiguous block of the images into its own
journal, and :func:`merge_caption_journals` folds the journals into the one caption file — the same bytes a
single-process run writes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm
from transformers.utils import logging

from hub_cards.atomic_files import write_json_atomically
from hub_cards.output_lock import exclusive_output_lock

from ..data.caption_files import FALLBACK_REASON_KEY, CaptionEntry, load_caption_entries, save_caption_file
from ..sharding import ProcessShard, append_journal, journal_path, journal_paths, lock_path, read_journal
from .answer_parsing import parse_mcot_answer
from .engines import as_caption_engine
from .image_sources import ImageRecord
from .prompts import MCoTPrompt, build_mcot_messages, load_mcot_prompt


logger = logging.get_logger(__name__)


class CaptionCache:
    """Captions on disk in the authors' format, safe against a run killed at any moment.

    ``output_file`` is the caption file (JSON, written atomically, keys sorted). While a run goes on, each
    finished batch is appended and fsynced to this process's journal (``sharding.journal_path``:
    ``<output_file>.partial.jsonl`` for one process, ``<output_file>.partial.rank<r>.jsonl`` for process ``r`` of
    several), one ``{name: entry}`` object per line, so a kill loses at most the batch in flight. Opening the cache
    reads the file, then replays *every* journal of the file (whichever process wrote it; a torn last line is
    dropped, and cut off only from this process's own journal); :meth:`save` folds everything into the file and
    removes the journals. Entries are keyed by image name, so replay never duplicates an image.
    """

    def __init__(self, output_file: str | os.PathLike, shard: ProcessShard | None = None):
        self.output_file = Path(output_file)
        self.shard = shard or ProcessShard()
        self.journal_file = journal_path(self.output_file, self.shard)
        self.entries: dict[str, CaptionEntry] = {}
        if self.output_file.exists():
            self.entries.update(load_caption_entries(self.output_file))
        for journal in journal_paths(self.output_file):
            for batch in read_journal(journal, repair=journal == self.journal_file):
                self.entries.update(batch)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, batch: dict[str, CaptionEntry]) -> None:
        """Record finished entries: into memory and, durably, onto this process's journal."""
        if not batch:
            return
        self.entries.update(batch)
        append_journal(self.journal_file, batch)

    def save(self) -> Path:
        """Write every entry to ``output_file`` (sorted by name, atomically), then drop every journal.

        Only when no other process still appends (one process, or after every process has finished)."""
        save_caption_file(self.output_file, {name: self.entries[name] for name in sorted(self.entries)})
        for journal in journal_paths(self.output_file):
            journal.unlink(missing_ok=True)
        return self.output_file


def skipped_file(output_file: str | os.PathLike) -> Path:
    """``<output_file>.skipped.json``: the images a finished run could not caption, with the reason."""
    output_file = Path(output_file)
    return output_file.with_name(output_file.name + ".skipped.json")


def _skipped_part_file(output_file: Path, shard: ProcessShard) -> Path:
    return output_file.with_name(f"{output_file.name}.skipped.rank{shard.rank}.json")


def _skipped_part_files(output_file: Path) -> list[Path]:
    return sorted(output_file.parent.glob(f"{output_file.name}.skipped.rank*.json")) if output_file.parent.is_dir() else []


def merge_caption_journals(output_file: str | os.PathLike, skipped: dict[str, str] | None = None) -> tuple[Path, int]:
    """Fold ``output_file``, every journal beside it and every process's skipped list into the final files.

    The caption file gets every entry, sorted by name, written atomically — byte-identical to what one process
    captioning the same images writes. ``<output_file>.skipped.json`` lists the images no process could caption
    (the processes' lists plus ``skipped``, minus anything captioned since), or is removed when there are none. The
    journals and per-process lists are removed afterwards. Call it when no process is still captioning
    (process 0 does, after the others reach the barrier; or ``csmcir-caption --merge_only``).

    Returns:
        The caption file and how many entries it holds.
    """
    output_file = Path(output_file)
    cache = CaptionCache(output_file)
    parts = _skipped_part_files(output_file)
    not_captioned: dict[str, str] = {}
    for part in parts:
        not_captioned.update(load_caption_entries(part))
    not_captioned.update(skipped or {})
    not_captioned = {name: reason for name, reason in sorted(not_captioned.items()) if name not in cache}
    cache.save()
    if not_captioned:
        save_caption_file(skipped_file(output_file), not_captioned)
    else:
        skipped_file(output_file).unlink(missing_ok=True)
    for part in parts:
        part.unlink(missing_ok=True)
    return output_file, len(cache)


@dataclass
class CaptioningReport:
    """What a run (of this process) did. ``skipped`` maps each unreadable or failed image to the reason.

    ``total`` counts the images of this process's block (all images for a single process); ``merged`` says
    whether this process wrote the final caption file (one process, or process 0 after the barrier).
    """

    output_file: Path
    total: int = 0
    captioned: int = 0
    reused: int = 0
    fallbacks: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    generated_tokens: int = 0
    rank: int = 0
    world_size: int = 1
    merged: bool = False
    entries_in_file: int | None = None

    @property
    def images_per_second(self) -> float:
        return self.captioned / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0


def _batches(items: Sequence[ImageRecord], size: int) -> Iterator[list[ImageRecord]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _load_batch(records: list[ImageRecord]) -> list[tuple[ImageRecord, Image.Image | None, str | None]]:
    loaded = []
    for record in records:
        try:
            loaded.append((record, record.load(), None))
        except Exception as err:  # noqa: BLE001 — any decode failure is reported per image, never fatal
            loaded.append((record, None, f"unreadable image ({type(err).__name__}: {err})"))
    return loaded


def _prefetched(batches: Iterable[list[ImageRecord]], workers: int) -> Iterator[list[tuple]]:
    """Decode the next batch's images in background threads while the current batch generates."""
    if workers <= 0:
        yield from (_load_batch(b) for b in batches)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: Future | None = None
        for batch in batches:
            future = pool.submit(_load_batch, batch)
            if pending is not None:
                yield pending.result()
            pending = future
        if pending is not None:
            yield pending.result()


def generate_mcot_captions(
    pipe: Any,
    images: Sequence[ImageRecord],
    output_file: str | os.PathLike,
    *,
    prompt: MCoTPrompt | str = "general",
    batch_size: int = 4,
    max_new_tokens: int = 512,
    generate_kwargs: dict[str, Any] | None = None,
    save_every: int = 50,
    num_workers: int = 2,
    max_fallback_chars: int = 300,
    on_batch_end: Callable[[int, dict[str, CaptionEntry]], None] | None = None,
    show_progress: bool = True,
    shard: ProcessShard | None = None,
) -> CaptioningReport:
    """Caption every image not yet in ``output_file`` with the MCoT prompt, resuming an earlier run.

    ``pipe`` is an ``image-text-to-text`` pipeline or any :class:`~.engines.CaptionEngine` (e.g. vLLM). Each batch
    of ``batch_size`` images is decoded (in ``num_workers`` background threads), sent through the engine as one
    chat per image, parsed with :func:`parse_mcot_answer`, and recorded in a :class:`CaptionCache` (journal
    appended per batch). Unreadable images are logged with their reason, listed in ``report.skipped`` and in
    ``<output_file>.skipped.json``, and left out of the file (a later run tries them again). If a batch fails in
    generation, its images are retried one at a time so one bad image costs only itself; if every one fails, the
    error is raised. Greedy decoding by default.

    One process (``shard`` None or of size 1): the caption file is rewritten every ``save_every`` batches and at the
    end, also when the run is interrupted. Several processes (``shard`` = this process's place, from
    ``sharding.current_process``): this process captions only its contiguous block of ``images``
    (``shard.split``; the block is cut from the whole list, so every process agrees whatever is already done),
    skipping what any journal already holds, and writes only its own journal. At the end, with a process group
    (``shard.distributed``), every process waits at a barrier and process 0 merges
    (:func:`merge_caption_journals`); independent jobs leave the merge to one ``--merge_only`` run.

    ``on_batch_end(batch_index, entries)`` is called after each batch is recorded.

    One job per caption file: process 0 holds an exclusive lock on ``<output_file>.lock`` (process ``r > 0`` on
    ``<output_file>.rank<r>.lock``), so a second job on the same file fails at once with an error naming the first
    (pid, host, start, command). Rerun it when the first has finished: it resumes, skipping what the first captioned.

    Raises:
        OutputInUseError: another job holds the lock.
        PermissionError: the caption file's folder is not writable (named once, before any work).
        ValueError: before any work, when the engine's processor cannot take images or has no chat template,
            or ``batch_size``/``max_new_tokens`` are not positive, or image names repeat.
    """
    shard = shard or ProcessShard()
    output_file = Path(output_file)
    what = f"caption file {os.fspath(output_file)!r}" + ("" if shard.single else f" (process {shard.rank})")
    # One job per caption file: held before anything is checked or read, until the last write.
    with exclusive_output_lock(lock_path(output_file, shard), what=what):
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError(f"batch_size and max_new_tokens must be >= 1 (got {batch_size} and {max_new_tokens})")
        engine = as_caption_engine(pipe)
        engine.check()
        if isinstance(prompt, str):
            prompt = load_mcot_prompt(prompt)
        names = [r.name for r in images]
        if len(set(names)) != len(names):
            seen: set[str] = set()
            dup = next(n for n in names if n in seen or seen.add(n))
            raise ValueError(f"image names must be unique (got {dup!r} more than once)")

        mine = shard.split(images)
        cache = CaptionCache(output_file, shard)
        report = CaptioningReport(output_file=cache.output_file, total=len(mine), rank=shard.rank,
                                  world_size=shard.world_size)
        todo = [r for r in mine if r.name not in cache]
        report.reused = len(mine) - len(todo)
        if report.reused:
            logger.info("%s: %d of %d images already captioned, resuming", cache.output_file, report.reused, len(mine))
        gen_kwargs = {"do_sample": False, **(generate_kwargs or {})}
        tokenizer = getattr(engine.processor, "tokenizer", None)

        def run(chats: list) -> list[str]:
            return engine.generate_answers(chats, max_new_tokens=max_new_tokens, generate_kwargs=gen_kwargs)

        start = time.perf_counter()
        desc = "MCoT captions" if shard.single else f"MCoT captions [{shard.rank}/{shard.world_size}]"
        bar = tqdm(total=len(todo), unit="img", desc=desc, disable=not show_progress)
        try:
            for batch_index, loaded in enumerate(_prefetched(_batches(todo, batch_size), num_workers)):
                good = []
                for record, image, error in loaded:
                    if error is None:
                        good.append((record, image))
                    else:
                        report.skipped[record.name] = error
                        logger.warning("skipping image %r (%s): %s", record.name, record.source, error)
                texts: dict[str, str] = {}
                if good:
                    chats = [build_mcot_messages(image, prompt) for _, image in good]
                    try:
                        texts = dict(zip((r.name for r, _ in good), run(chats)))
                    except Exception as batch_error:  # noqa: BLE001 — isolate the image(s) at fault
                        if len(good) == 1:
                            raise
                        logger.warning("batch %d failed (%s); retrying its images one by one", batch_index, batch_error)
                        for (record, _), chat in zip(good, chats):
                            try:
                                texts[record.name] = run([chat])[0]
                            except Exception as err:  # noqa: BLE001
                                report.skipped[record.name] = f"generation failed ({type(err).__name__}: {err})"
                                logger.warning("skipping image %r: %s", record.name, report.skipped[record.name])
                        if not texts:
                            raise batch_error
                entries: dict[str, CaptionEntry] = {}
                for name, text in texts.items():
                    entry = parse_mcot_answer(text, max_fallback_chars=max_fallback_chars)
                    if FALLBACK_REASON_KEY in entry:
                        report.fallbacks += 1
                        logger.info("image %r: %s", name, entry[FALLBACK_REASON_KEY])
                    if tokenizer is not None:
                        report.generated_tokens += len(tokenizer(text, add_special_tokens=False)["input_ids"])
                    entries[name] = entry
                cache.add(entries)
                report.captioned += len(entries)
                elapsed = time.perf_counter() - start
                bar.update(len(loaded))
                bar.set_postfix(tok_s=f"{report.generated_tokens / max(elapsed, 1e-9):.1f}", skipped=len(report.skipped))
                if shard.single and save_every > 0 and (batch_index + 1) % save_every == 0:
                    cache.save()
                if on_batch_end is not None:
                    on_batch_end(batch_index, entries)
        except BaseException:
            # Also on an exception or Ctrl-C: one process folds what finished into the caption file; with several,
            # the journal already holds it and the merge folds it.
            if shard.single:
                cache.save()
            raise
        finally:
            bar.close()
            report.seconds = time.perf_counter() - start
        if report.skipped:
            logger.warning("%d image(s) skipped: %s", len(report.skipped), report.skipped)
        if shard.single:
            _, report.entries_in_file = merge_caption_journals(output_file, report.skipped)
            report.merged = True
            return report
        part = _skipped_part_file(output_file, shard)
        if report.skipped:
            write_json_atomically(part, report.skipped)
        else:
            part.unlink(missing_ok=True)
        if shard.distributed:
            shard.barrier()
            if shard.is_main:
                _, report.entries_in_file = merge_caption_journals(output_file)
                report.merged = True
            shard.barrier()  # nobody exits (and releases its lock) before the caption file is complete
        return report


def caption_lock_file(output_file: str | os.PathLike) -> Path:
    """The lock file a (single-process) captioning run holds on ``output_file``: ``<output_file>.lock``."""
    return lock_path(output_file, ProcessShard())


__all__ = [
    "CaptionCache",
    "CaptioningReport",
    "caption_lock_file",
    "generate_mcot_captions",
    "merge_caption_journals",
    "skipped_file",
]
