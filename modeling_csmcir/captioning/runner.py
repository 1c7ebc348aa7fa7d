"""The resumable MCoT captioning run: a journalled caption cache and the batched pass over a gallery.

:class:`CaptionCache` keeps captions in the authors' format on disk, safe against a run killed at any moment;
:func:`generate_mcot_captions` decodes images ahead in threads, sends one chat per image through an
``image-text-to-text`` pipeline, parses each answer and records it, isolating the images that fail.
"""

from __future__ import annotations

import json
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

from hub_cards.output_lock import exclusive_output_lock

from ..data.caption_files import FALLBACK_REASON_KEY, CaptionEntry, load_caption_entries, save_caption_file
from .answer_parsing import parse_mcot_answer
from .image_sources import ImageRecord
from .prompts import MCoTPrompt, build_mcot_messages, load_mcot_prompt
from .vlm import check_captioning_processor


logger = logging.get_logger(__name__)


class CaptionCache:
    """Captions on disk in the authors' format, safe against a run killed at any moment.

    ``output_file`` is the caption file (JSON, written atomically, keys sorted). While a run goes on, each
    finished batch is appended and fsynced to a journal ``<output_file>.partial.jsonl`` (one ``{name: entry}``
    object per line), so a kill loses at most the batch in flight. Opening the cache reads the file, then
    replays the journal (a torn last line is dropped and cut off); :meth:`save` folds everything into the file
    and removes the journal. Entries are keyed by image name, so replay never duplicates an image.
    """

    def __init__(self, output_file: str | os.PathLike):
        self.output_file = Path(output_file)
        self.journal_file = self.output_file.with_name(self.output_file.name + ".partial.jsonl")
        self.entries: dict[str, CaptionEntry] = {}
        if self.output_file.exists():
            self.entries.update(load_caption_entries(self.output_file))
        if self.journal_file.exists():
            self._replay_journal()

    def _replay_journal(self) -> None:
        data = self.journal_file.read_bytes()
        good_end = 0
        for line_end in _line_ends(data):
            line = data[good_end:line_end]
            try:
                batch = json.loads(line.decode("utf-8"))
                if not isinstance(batch, dict):
                    raise ValueError("not an object")
            except (ValueError, UnicodeDecodeError):
                break
            self.entries.update(batch)
            good_end = line_end
        if good_end < len(data):
            logger.warning(
                "%s: dropping %d bytes of an unfinished journal line (the batch in flight when the run stopped)",
                self.journal_file,
                len(data) - good_end,
            )
            # Cut the torn tail so the next appended line starts on a fresh line.
            with self.journal_file.open("r+b") as f:
                f.truncate(good_end)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, batch: dict[str, CaptionEntry]) -> None:
        """Record finished entries: into memory and, durably, onto the journal."""
        if not batch:
            return
        self.entries.update(batch)
        line = json.dumps(batch, ensure_ascii=False) + "\n"
        with self.journal_file.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def save(self) -> Path:
        """Write every entry to ``output_file`` (sorted by name, atomically), then drop the journal."""
        save_caption_file(self.output_file, {name: self.entries[name] for name in sorted(self.entries)})
        if self.journal_file.exists():
            self.journal_file.unlink()
        return self.output_file


def _line_ends(data: bytes) -> Iterator[int]:
    start = 0
    while (nl := data.find(b"\n", start)) != -1:
        yield nl + 1
        start = nl + 1


@dataclass
class CaptioningReport:
    """What a run did. ``skipped`` maps each unreadable or failed image to the reason."""

    output_file: Path
    total: int = 0
    captioned: int = 0
    reused: int = 0
    fallbacks: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    generated_tokens: int = 0

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


def _generated_text(output: Any) -> str:
    """The answer text from one pipeline output (a list with one dict, or the dict)."""
    if isinstance(output, list):
        output = output[0]
    text = output["generated_text"]
    if isinstance(text, list):  # a chat came back (return_full_text=True): take the assistant's last turn
        content = text[-1]["content"]
        text = content if isinstance(content, str) else " ".join(c.get("text", "") for c in content)
    return text


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
) -> CaptioningReport:
    """Caption every image not yet in ``output_file`` with the MCoT prompt, resuming an earlier run.

    Each batch of ``batch_size`` images is decoded (in ``num_workers`` background threads), sent through
    ``pipe`` (an ``image-text-to-text`` pipeline) as one chat per image, parsed with
    :func:`parse_mcot_answer`, and recorded in a :class:`CaptionCache` (journal appended per batch, caption
    file rewritten every ``save_every`` batches and at the end, also when the run is interrupted).
    Unreadable images are logged with their reason, listed in ``report.skipped`` and left out of the file
    (a later run tries them again). If a batch fails in generation, its images are retried one at a time so
    one bad image costs only itself; if every one fails, the error is raised. Greedy decoding by default.

    ``on_batch_end(batch_index, entries)`` is called after each batch is recorded.

    One job per caption file: the run holds an exclusive lock on ``<output_file>.lock`` (beside the journal), so a
    second job on the same file fails at once with an error naming the first (pid, host, start, command) instead of
    both exiting 0 with one job's captions lost. Rerun it when the first has finished: it resumes, skipping what the
    first captioned.

    Raises:
        OutputInUseError: another job holds ``<output_file>.lock``.
        PermissionError: the caption file's folder is not writable (named once, before any work).
        ValueError: before any work, when the pipeline's processor cannot take images or has no chat template,
            or ``batch_size``/``max_new_tokens`` are not positive.
    """
    # One job per caption file: held before anything is checked or read, until the last write.
    with exclusive_output_lock(caption_lock_file(output_file), what=f"caption file {os.fspath(output_file)!r}"):
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError(f"batch_size and max_new_tokens must be >= 1 (got {batch_size} and {max_new_tokens})")
        check_captioning_processor(getattr(pipe, "processor", None), type(getattr(pipe, "model", pipe)).__name__)
        if isinstance(prompt, str):
            prompt = load_mcot_prompt(prompt)
        names = [r.name for r in images]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise ValueError(f"image names must be unique (got {dup!r} more than once)")

        cache = CaptionCache(output_file)
        report = CaptioningReport(output_file=cache.output_file, total=len(images))
        todo = [r for r in images if r.name not in cache]
        report.reused = len(images) - len(todo)
        if report.reused:
            logger.info("%s: %d of %d images already captioned, resuming", cache.output_file, report.reused, len(images))
        gen_kwargs = {"do_sample": False, **(generate_kwargs or {})}
        tokenizer = getattr(pipe.processor, "tokenizer", None)

        def run(chats: list) -> list[str]:
            outputs = pipe(
                chats,
                batch_size=len(chats),
                max_new_tokens=max_new_tokens,
                return_full_text=False,
                generate_kwargs=gen_kwargs,
            )
            return [_generated_text(o) for o in outputs]

        start = time.perf_counter()
        bar = tqdm(total=len(todo), unit="img", desc="MCoT captions", disable=not show_progress)
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
                if save_every > 0 and (batch_index + 1) % save_every == 0:
                    cache.save()
                if on_batch_end is not None:
                    on_batch_end(batch_index, entries)
        finally:
            bar.close()
            report.seconds = time.perf_counter() - start
            # Also on an exception or Ctrl-C: what finished is folded into the caption file.
            cache.save()
        if report.skipped:
            logger.warning("%d image(s) skipped: %s", len(report.skipped), report.skipped)
        return report


def caption_lock_file(output_file: str | os.PathLike) -> Path:
    """The lock file a captioning run holds on ``output_file``: ``<output_file>.lock``, beside the journal."""
    output_file = Path(output_file)
    return output_file.with_name(output_file.name + ".lock")


__all__ = ["CaptionCache", "CaptioningReport", "caption_lock_file", "generate_mcot_captions"]
