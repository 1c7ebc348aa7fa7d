"""Throughput of the MCoT captioner's own machinery: batching through ``pipeline("image-text-to-text")``, the
resumable cache, and the answer parser.

The VLM is the tiny random Llava of ``tests/csmcir/tiny_vlm.py`` (no real weights can be had offline), so the
images/s numbers measure the pipeline + batching overhead of our code path, not a real model's speed. The cache
rows compare what the run does per batch (append one journal line, fsync) with rewriting the whole caption file
per batch, for a gallery-sized cache — the reason the journal exists.

Run: ``.venv/bin/python benchmarks/mcot_captioning.py`` (writes ``benchmarks/results/mcot_captioning.md``).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "csmcir"))

from tiny_vlm import build_tiny_llava  # noqa: E402

from modeling_csmcir.captioning import (  # noqa: E402
    CaptionCache,
    ImageRecord,
    generate_mcot_captions,
    load_captioning_pipeline,
    parse_mcot_answer,
)
from hub_cards.atomic_files import write_text_atomically  # noqa: E402
from modeling_csmcir.data.caption_files import make_caption_entry, save_caption_file  # noqa: E402

NUM_IMAGES = 32
MAX_NEW_TOKENS = 16
CACHE_ENTRIES = 20_000
CACHE_BATCHES = 20
ANSWERS = [
    '{"level_1_global": "studio photo", "level_2_objects": "a dress", "level_3_attributes": "red silk", "Final_Caption": "A red silk dress."}',
    'Sure:\n```json\n{"Level 1": "street", "objects": ["car", "lamp"], "Final Caption": "a blue car under a lamp",}\n```',
    '{"level_1_global": "park", "level_2_objects": "two dogs", "level_3_attributes": "brown fur, red coll',
    "**Level 1 - Global:** kitchen\n**Level 2 (objects):** kettle\nLevel 3 attributes: steel\nFinal Caption: a steel kettle",
    "第一层（全局）：摄影棚\n第二层（物体）：连衣裙\n第三层（属性）：红色\n最终描述：一条红色连衣裙",
    "A man rides a brown horse on a beach at sunset.",
]


def bench_batching(pipe, workdir: Path) -> list[tuple[int, float, float]]:
    rng = np.random.default_rng(0)
    images = [
        ImageRecord(name=f"img{i:03d}", load=lambda i=i: Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)))
        for i in range(NUM_IMAGES)
    ]
    rows = []
    for batch_size in (1, 4, 8):
        out = workdir / f"bs{batch_size}.json"
        report = generate_mcot_captions(
            pipe, images, out, batch_size=batch_size, max_new_tokens=MAX_NEW_TOKENS, show_progress=False
        )
        rows.append((batch_size, report.images_per_second, report.tokens_per_second))
    return rows


def bench_cache(workdir: Path) -> tuple[float, float]:
    entry = make_caption_entry(
        "a red sleeveless silk dress with a floral print and a V neckline",
        level_1_global="studio product photo of a dress on a white background",
        level_2_objects="one dress: V neckline, no sleeves, knee-length hem",
        level_3_attributes="red silk, small white floral print, thin straps",
    )
    base = {f"img{i:06d}": entry for i in range(CACHE_ENTRIES)}
    save_caption_file(workdir / "journal.json", base)
    cache = CaptionCache(workdir / "journal.json")
    start = time.perf_counter()
    for b in range(CACHE_BATCHES):
        cache.add({f"new{b:03d}_{j}": entry for j in range(8)})
    journal_ms = (time.perf_counter() - start) / CACHE_BATCHES * 1e3
    start = time.perf_counter()
    for b in range(CACHE_BATCHES):
        base.update({f"new{b:03d}_{j}": entry for j in range(8)})
        save_caption_file(workdir / "rewrite.json", base)
    rewrite_ms = (time.perf_counter() - start) / CACHE_BATCHES * 1e3
    return journal_ms, rewrite_ms


def bench_parser(repeats: int = 500) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        for answer in ANSWERS:
            parse_mcot_answer(answer)
    return repeats * len(ANSWERS) / (time.perf_counter() - start)


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pipe = load_captioning_pipeline(str(build_tiny_llava(tmp / "vlm")), device="cpu")
        batching = bench_batching(pipe, tmp)
        journal_ms, rewrite_ms = bench_cache(tmp)
    parses = bench_parser()
    lines = [
        "# MCoT captioning machinery",
        "",
        "Command: `.venv/bin/python benchmarks/mcot_captioning.py` (CPU, 2 threads, shared 2-core machine;",
        f"tiny random Llava from tests/csmcir/tiny_vlm.py, {NUM_IMAGES} images of 32x32, max_new_tokens={MAX_NEW_TOKENS}, greedy).",
        "",
        "| batch size | images/s | generated tokens/s |",
        "|---:|---:|---:|",
        *(f"| {bs} | {ips:.1f} | {tps:.1f} |" for bs, ips, tps in batching),
        "",
        f"| cache write per batch of 8, cache of {CACHE_ENTRIES:,} entries | ms |",
        "|---|---:|",
        f"| journal append + fsync (what the run does) | {journal_ms:.2f} |",
        f"| rewrite the whole caption file atomically | {rewrite_ms:.1f} |",
        "",
        f"Answer parser: {parses:,.0f} answers/s over {len(ANSWERS)} realistic answer shapes "
        "(JSON, fenced JSON, truncated JSON, tagged text, Chinese, prose).",
        "",
    ]
    out = Path(__file__).resolve().parent / "results" / "mcot_captioning.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
