"""IVF-PQ against exact search on 1M synthetic gallery vectors: recall@10, build time, search time, memory.

Contenders, in one process on the same data, search rounds interleaved (so load from other processes on a shared
machine hits all alike):

* exact top-10 (`GalleryIndex` torch backend, float32): the ground truth and the time to beat;
* IVF-Flat (`build_faiss(kind="ivf")`): the same coarse cells storing full float32 vectors;
* IVF-PQ (`build_faiss(kind="ivfpq")`) with `pq_m` codes of 8 bits per vector, for each nprobe;
* the sharded build of the same IVF-PQ index: trained once on a sample (`train_faiss`), filled by `--shards`
  `GalleryIndex` shards (`build_faiss(trained=...)`), joined by `GalleryIndex.merge`, checked to return exactly the
  one-go index's top-10;
* the same IVF-PQ index on disk (`--on_disk_shards` > 0): the trained index filled by that many shards, each saved as
  a `GalleryIndex` folder, joined by `GalleryIndex.merge_on_disk` into one folder whose inverted lists are one
  `gallery_faiss.ivfdata` file; then a fresh process opens it with `GalleryIndex.load(mmap=True)` (vectors and lists
  memory-mapped, never read whole) and searches it with and without exact rerank (which reads only the candidate
  rows from the embeddings file), and exactly (the torch kernel streaming the mapped file). Its peak RSS (VmHWM)
  is the honest "vectors not in RAM" number: the parent's in-memory gallery is not in it.

Gallery vectors: a mixture of Gaussians — `--clusters` centres with i.i.d. N(0, 1) entries, each point its centre
plus N(0, noise²) per dimension, L2-normalised (uniform random unit vectors have no neighbourhood structure, so
recall on them says nothing about real embeddings). Queries: fresh points from the same mixture (not in the gallery).
Memory: the bytes of each serialised faiss index (what it holds in RAM) and the process's peak RSS after each stage.

    .venv/bin/python benchmarks/bench_ivfpq.py                      # writes benchmarks/results/ivfpq.md
    .venv/bin/python benchmarks/bench_ivfpq.py --num_items 20000 --clusters 64 --nlist 64 --output /tmp/ivfpq.md
    .venv/bin/python benchmarks/bench_ivfpq.py --num_items 100000 --clusters 1024 --nlist 256 --train_size 16384 \
        --threads 1 --output /tmp/ivfpq-100k.md                     # ~1 minute
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import HfArgumentParser

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from results_notes import NOTES_HEADING, previous_notes  # noqa: E402

from hub_cards.atomic_files import write_text_atomically  # noqa: E402
from pipelines.gallery_index import GalleryIndex, train_faiss  # noqa: E402


@dataclass
class IVFPQBenchmarkArguments:
    num_items: int = field(default=1_000_000, metadata={"help": "gallery size N"})
    embed_dim: int = field(default=256, metadata={"help": "embedding size D"})
    clusters: int = field(default=4096, metadata={"help": "mixture components of the synthetic gallery"})
    noise: float = field(default=1.0, metadata={"help": "per-dimension std of points around their centre"})
    intrinsic_dim: int = field(
        default=0, metadata={"help": "points vary around their centre in a random subspace of this dimension (0: isotropic)"}
    )
    iso_noise: float = field(default=0.1, metadata={"help": "isotropic per-dimension std added on top"})
    rerank: int = field(default=10, metadata={"help": "IVF-PQ rows with exact rescoring of rerank x k candidates (0 skips)"})
    num_queries: int = field(default=500, metadata={"help": "queries for recall@10 (fresh mixture points)"})
    batch_queries: int = field(default=100, metadata={"help": "queries per timed search batch"})
    rounds: int = field(default=2, metadata={"help": "interleaved timing rounds over all query batches"})
    top_k: int = field(default=10, metadata={"help": "recall@k"})
    nlist: int = field(default=1024, metadata={"help": "IVF cells"})
    train_size: int = field(default=65536, metadata={"help": "k-means / PQ training sample"})
    pq_m: int = field(default=32, metadata={"help": "PQ codes per vector (bytes per vector at 8 bits)"})
    nprobe: str = field(default="8,32,128", metadata={"help": "comma-separated nprobe values of IVF-PQ"})
    flat_nprobe: str = field(default="8,32", metadata={"help": "comma-separated nprobe values of IVF-Flat"})
    shards: int = field(default=4, metadata={"help": "shards of the sharded IVF-PQ build (0 skips it)"})
    on_disk_shards: int = field(default=3, metadata={"help": "shards of the on-disk IVF-PQ build (0 skips it)"})
    on_disk_dir: str = field(
        default="", metadata={"help": "folder for the on-disk shards and index (default: a temporary folder, removed)"}
    )
    threads: int = field(default=2, metadata={"help": "torch and faiss threads"})
    seed: int = field(default=0, metadata={"help": "data and training seed"})
    output: str = field(default="benchmarks/results/ivfpq.md", metadata={"help": "results table (markdown)"})


def clustered(rows: int, centres: torch.Tensor, basis: torch.Tensor | None, noise: float, iso_noise: float,
              generator: torch.Generator) -> torch.Tensor:
    """Mixture rows `c_j + noise · z B + iso_noise · ε`, L2-normalised, generated in blocks (bounded temporaries).

    `z ~ N(0, I_r)`, `B` an `(r, D)` matrix with N(0, 1/r) entries (so `z B` has unit variance per dimension, in an
    r-dimensional subspace: embeddings have low intrinsic dimension), `ε ~ N(0, I_D)`. `basis=None`: `noise · ε`.
    """
    dim = centres.shape[1]
    out = torch.empty(rows, dim)
    for start in range(0, rows, 131072):
        stop = min(rows, start + 131072)
        assignment = torch.randint(0, centres.shape[0], (stop - start,), generator=generator)
        if basis is None:
            spread = noise * torch.randn(stop - start, dim, generator=generator)
        else:
            spread = noise * (torch.randn(stop - start, basis.shape[0], generator=generator) @ basis)
            spread += iso_noise * torch.randn(stop - start, dim, generator=generator)
        block = centres[assignment] + spread
        out[start:stop] = torch.nn.functional.normalize(block, dim=1)
    return out


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def recall_at_k(approximate: torch.Tensor, exact: torch.Tensor) -> float:
    """|approximate top-k ∩ exact top-k| / k, averaged over queries."""
    return float(np.mean([len(set(a.tolist()) & set(e.tolist())) / e.shape[0] for a, e in zip(approximate, exact)]))


def faiss_bytes(index: GalleryIndex) -> int:
    import faiss  # noqa: PLC0415

    return int(faiss.serialize_index(index._faiss_index).size)


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(IVFPQBenchmarkArguments).parse_args_into_dataclasses(args=argv)
    import faiss  # noqa: PLC0415

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    load_before = os.getloadavg()
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(args.seed)
    centres = torch.randn(args.clusters, args.embed_dim, generator=generator)
    basis = None
    if args.intrinsic_dim:
        basis = torch.randn(args.intrinsic_dim, args.embed_dim, generator=generator) / args.intrinsic_dim**0.5
    gallery_rows = clustered(args.num_items, centres, basis, args.noise, args.iso_noise, generator)
    queries = clustered(args.num_queries, centres, basis, args.noise, args.iso_noise, generator)
    exact_index = GalleryIndex(gallery_rows, normalize=False)
    rss_data = peak_rss_gib()
    batches = [queries[start : start + args.batch_queries] for start in range(0, args.num_queries, args.batch_queries)]
    exact = torch.cat([exact_index.search(batch, args.top_k, backend="torch").positions for batch in batches])

    contenders: list[tuple[str, GalleryIndex, str | None, int | None]] = [("exact (torch, float32)", exact_index, "torch", None)]
    rows: list[dict] = []
    builds: dict[str, dict] = {}
    nprobes = [int(value) for value in args.nprobe.split(",") if value]

    def build(name: str, kind: str, **kwargs) -> GalleryIndex:
        index = GalleryIndex(gallery_rows, normalize=False)  # shares the rows (no copy); faiss holds its own data
        tic = time.perf_counter()
        index.build_faiss(kind=kind, nlist=args.nlist, train_size=args.train_size, seed=args.seed, **kwargs)
        builds[name] = {"build_s": time.perf_counter() - tic, "bytes": faiss_bytes(index), "rss": peak_rss_gib()}
        return index

    ivf_flat = build(f"IVF-Flat, nlist={args.nlist}", "ivf")
    for nprobe in [int(value) for value in args.flat_nprobe.split(",") if value]:
        contenders.append((f"IVF-Flat, nlist={args.nlist}", ivf_flat, "faiss", nprobe))
    # IVF-PQ: trained once on a sample, then filled in one go (the contender) and shard by shard (checked below).
    name = f"IVF-PQ, nlist={args.nlist}, m={args.pq_m}x8 bits"
    tic = time.perf_counter()
    sample = gallery_rows[torch.randperm(args.num_items, generator=generator)[: args.train_size]]
    trained = train_faiss(sample, kind="ivfpq", nlist=args.nlist, train_size=args.train_size, seed=args.seed,
                          pq_m=args.pq_m, normalize=False)
    train_s = time.perf_counter() - tic
    tic = time.perf_counter()
    ivfpq = GalleryIndex(gallery_rows, normalize=False).build_faiss(trained=trained)
    add_s = time.perf_counter() - tic
    builds[name] = {"build_s": train_s + add_s, "train_s": train_s, "add_s": add_s, "bytes": faiss_bytes(ivfpq),
                    "rss": peak_rss_gib()}
    for nprobe in nprobes:
        contenders.append((name, ivfpq, "faiss", nprobe))
    if args.rerank:
        for nprobe in nprobes:
            contenders.append((f"{name} + exact rerank of {args.rerank}k", ivfpq, "faiss", nprobe))

    # Interleaved timing: every round runs every contender over every batch.
    times: dict[tuple[str, int | None], list[float]] = {}
    found: dict[tuple[str, int | None], torch.Tensor] = {}
    for _ in range(args.rounds):
        for name, index, backend, nprobe in contenders:
            if nprobe is not None:
                index.set_faiss_search_params(nprobe=nprobe, rerank=args.rerank if "rerank" in name else 0)
            positions = []
            for batch in batches:
                tic = time.perf_counter()
                positions.append(index.search(batch, args.top_k, backend=backend).positions)
                times.setdefault((name, nprobe), []).append(time.perf_counter() - tic)
            found[(name, nprobe)] = torch.cat(positions)
    for name, index, backend, nprobe in contenders:
        samples = np.asarray(times[(name, nprobe)]) * 1e3
        build_info = builds.get(name.split(" + ")[0], {})
        rows.append({
            "name": name, "nprobe": nprobe, "recall": recall_at_k(found[(name, nprobe)], exact),
            "batch_ms_p50": float(np.percentile(samples, 50)), "batch_ms_p95": float(np.percentile(samples, 95)),
            "build_s": build_info.get("build_s"), "train_s": build_info.get("train_s"),
            "add_s": build_info.get("add_s"), "bytes": build_info.get("bytes", exact_index.embeddings.numel() * 4),
        })
    del ivf_flat

    sharded = None
    if args.shards:
        bounds = np.linspace(0, args.num_items, args.shards + 1).astype(int)
        fill_s, shards = [], []
        for a, b in zip(bounds, bounds[1:]):
            tic = time.perf_counter()
            shard = GalleryIndex(gallery_rows[a:b], ids=list(range(a, b)), normalize=False).build_faiss(trained=trained)
            fill_s.append(time.perf_counter() - tic)
            shards.append(shard)
        tic = time.perf_counter()
        merged = GalleryIndex.merge(shards, check_model=False)
        merge_s = time.perf_counter() - tic
        del shards
        ivfpq.set_faiss_search_params(nprobe=merged.faiss_config["nprobe"], rerank=0)
        merged_hits = torch.cat([merged.search(batch, args.top_k).positions for batch in batches])
        one_go_hits = torch.cat([ivfpq.search(batch, args.top_k).positions for batch in batches])
        sharded = {
            "pq_m": args.pq_m, "train_s": train_s, "fill_s": fill_s, "merge_s": merge_s,
            "identical": bool(torch.equal(merged_hits, one_go_hits)), "recall": recall_at_k(merged_hits, exact),
            "nprobe": merged.faiss_config["nprobe"],
        }
        del merged
    on_disk = build_and_search_on_disk(args, gallery_rows, queries, exact, trained, nprobes) if args.on_disk_shards else None
    load_after = os.getloadavg()
    total_s = time.perf_counter() - started
    write_table(args, argv, rows, sharded, rss_data, load_before, load_after, total_s, on_disk)
    return {"rows": rows, "sharded": sharded, "on_disk": on_disk, "load_before": load_before, "load_after": load_after}


def build_and_search_on_disk(args, gallery_rows, queries, exact, trained, nprobes) -> dict:
    """Shards saved → `merge_on_disk` → a fresh process searches the mapped folder (see the module docstring)."""
    root = args.on_disk_dir or tempfile.mkdtemp(prefix="bench-ivfpq-on-disk-")
    os.makedirs(root, exist_ok=True)
    try:
        bounds = np.linspace(0, args.num_items, args.on_disk_shards + 1).astype(int)
        folders, fill_s = [], []
        for position, (a, b) in enumerate(zip(bounds, bounds[1:])):
            tic = time.perf_counter()
            folder = os.path.join(root, f"shard{position}")
            GalleryIndex(gallery_rows[a:b], ids=list(range(a, b)), normalize=False).build_faiss(trained=trained).save(folder)
            fill_s.append(time.perf_counter() - tic)
            folders.append(folder)
        tic = time.perf_counter()
        merged_path = os.path.join(root, "merged")
        GalleryIndex.merge_on_disk(folders, merged_path, check_model=False)
        merge_s = time.perf_counter() - tic
        sizes = {name: os.path.getsize(os.path.join(merged_path, name)) for name in sorted(os.listdir(merged_path))}
        np.save(os.path.join(root, "queries.npy"), queries.numpy())
        config = {"index": merged_path, "queries": os.path.join(root, "queries.npy"), "top_k": args.top_k,
                  "batch": args.batch_queries, "nprobes": nprobes, "rerank": args.rerank, "threads": args.threads,
                  "output": os.path.join(root, "found.npz")}
        with open(os.path.join(root, "child.json"), "w", encoding="utf-8") as handle:
            json.dump(config, handle)
        child = subprocess.run([sys.executable, os.path.abspath(__file__), "--search_child", os.path.join(root, "child.json")],
                               capture_output=True, text=True, check=False)
        if child.returncode != 0:
            raise RuntimeError(f"on-disk search process failed ({child.returncode}):\n{child.stderr[-4000:]}")
        report = json.loads(child.stdout.strip().splitlines()[-1])
        found = np.load(config["output"])
        for row in report["rows"]:
            row["recall"] = recall_at_k(torch.from_numpy(found[row["key"]]), exact)
        return {"fill_s": fill_s, "merge_s": merge_s, "sizes": sizes, **report}
    finally:
        if not args.on_disk_dir:
            shutil.rmtree(root, ignore_errors=True)


def _status_mib(field: str) -> float:
    with open("/proc/self/status", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def search_child(config_path: str) -> None:
    """The fresh process of the on-disk row: open memory-mapped, search, report times and memory as one JSON line."""
    import faiss  # noqa: PLC0415

    with open(config_path, encoding="utf-8") as handle:
        config = json.load(handle)
    torch.set_num_threads(config["threads"])
    faiss.omp_set_num_threads(config["threads"])
    queries = torch.from_numpy(np.load(config["queries"]))
    baseline = _status_mib("VmHWM")
    tic = time.perf_counter()
    index = GalleryIndex.load(config["index"], mmap=True, verify=False)
    open_s = time.perf_counter() - tic
    after_open = _status_mib("VmRSS")
    batches = [queries[start : start + config["batch"]] for start in range(0, len(queries), config["batch"])]
    rows, found = [], {}
    reranks = [0] + ([config["rerank"]] if config["rerank"] else [])
    settings = [(nprobe, rerank) for rerank in reranks for nprobe in config["nprobes"]]
    settings.append((None, None))  # exact, the kernel streaming the mapped file
    for nprobe, rerank in settings:
        if nprobe is not None:
            index.set_faiss_search_params(nprobe=nprobe, rerank=rerank)
        times, positions = [], []
        for batch in batches:
            tic = time.perf_counter()
            positions.append(index.search(batch, config["top_k"], backend="torch" if nprobe is None else "faiss").positions)
            times.append(time.perf_counter() - tic)
        key = "exact" if nprobe is None else f"nprobe{nprobe}_rerank{rerank}"
        found[key] = torch.cat(positions).numpy()
        samples = np.asarray(times) * 1e3
        rows.append({"key": key, "nprobe": nprobe, "rerank": rerank, "batch_ms_p50": float(np.percentile(samples, 50)),
                     "batch_ms_p95": float(np.percentile(samples, 95)), "peak_rss_mib": _status_mib("VmHWM"),
                     "rss_anon_mib": _status_mib("RssAnon"), "rss_file_mib": _status_mib("RssFile")})
    np.savez(config["output"], **found)
    print(json.dumps({"open_s": open_s, "baseline_peak_mib": baseline, "rss_after_open_mib": after_open, "rows": rows}))


def write_table(args, argv, rows, sharded, rss_data, load_before, load_after, total_s, on_disk=None) -> None:
    import faiss  # noqa: PLC0415

    command = " ".join(["python", "benchmarks/bench_ivfpq.py", *map(shlex.quote, argv or sys.argv[1:])])
    noisy = max(load_before[0], load_after[0]) > (os.cpu_count() or 1)
    lines = [
        "# IVF-PQ vs exact search",
        "",
        f"Command: `{command}` (total {total_s:.0f} s)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs visible (shared with other agents), {args.threads} threads "
        f"for torch and faiss; torch {torch.__version__}, faiss {faiss.__version__}. "
        f"Load average (1/5/15 min) before: {' / '.join(f'{v:.2f}' for v in load_before)}, after: "
        f"{' / '.join(f'{v:.2f}' for v in load_after)}."
        + (" **Noisy run: the load average exceeded the core count, so times are inflated by other jobs.**" if noisy else ""),
        "",
        f"Data: {args.num_items:,} x {args.embed_dim} gallery vectors, a mixture of {args.clusters} Gaussians (centres "
        + (f"N(0, I), points centre + N(0, {args.noise:g}² I)" if not args.intrinsic_dim else
           f"N(0, I); points centre + {args.noise:g}·zB + {args.iso_noise:g}·ε with z ~ N(0, I_{args.intrinsic_dim}), "
           f"B a fixed {args.intrinsic_dim}x{args.embed_dim} N(0, 1/{args.intrinsic_dim}) matrix, ε ~ N(0, I): low "
           "intrinsic dimension, as embeddings have")
        + f", L2-normalised); {args.num_queries} fresh queries from the "
        f"same mixture, timed in batches of {args.batch_queries}, {args.rounds} interleaved rounds. "
        f"Training sample {args.train_size:,}, seed {args.seed}. Peak RSS after generating the data: {rss_data:.2f} GiB.",
        "",
        f"| index | nprobe | recall@{args.top_k} | batch of {args.batch_queries}: p50 (ms) | p95 (ms) | build: train + add (s) "
        "| index bytes | bytes / vector |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        build = "—" if row["build_s"] is None else f"{row['build_s']:.1f}"
        if row.get("train_s") is not None:
            build += f" ({row['train_s']:.1f} + {row['add_s']:.1f})"
        lines.append(
            f"| {row['name']} | {row['nprobe'] if row['nprobe'] is not None else '—'} | {row['recall']:.3f} | "
            f"{row['batch_ms_p50']:.1f} | {row['batch_ms_p95']:.1f} | {build} | {row['bytes'] / 2**20:,.1f} MiB | "
            f"{row['bytes'] / args.num_items:.1f} |"
        )
    lines += ["", f"Peak RSS of the whole run: {peak_rss_gib():.2f} GiB (includes the float32 gallery the exact search "
              "and the benchmark keep; an IVF-PQ index alone needs its codes + ids)."]
    if sharded:
        lines += [
            "",
            f"## Sharded build (IVF-PQ m={sharded['pq_m']}, {args.shards} shards)",
            "",
            f"The IVF-PQ index above, trained once on {args.train_size:,} sampled rows in {sharded['train_s']:.1f} s, "
            f"filled again by {args.shards} `GalleryIndex` shards from the same trained index: shards filled in "
            f"{', '.join(f'{s:.1f}' for s in sharded['fill_s'])} s; `GalleryIndex.merge` {sharded['merge_s']:.1f} s. "
            f"Top-{args.top_k} of the merged index identical to the index filled in one go from the same trained "
            f"index: **{sharded['identical']}**; recall@{args.top_k} {sharded['recall']:.3f} at nprobe "
            f"{sharded['nprobe']}.",
        ]
    if on_disk:
        sizes = on_disk["sizes"]
        lines += [
            "",
            f"## On disk (IVF-PQ m={args.pq_m}, {args.on_disk_shards} shards, vectors not in RAM)",
            "",
            f"The trained IVF-PQ index above filled by {args.on_disk_shards} shards, each saved as a `GalleryIndex` "
            f"folder ({', '.join(f'{s:.1f}' for s in on_disk['fill_s'])} s: fill + save), joined by "
            f"`GalleryIndex.merge_on_disk` in {on_disk['merge_s']:.1f} s into one folder: "
            + ", ".join(f"`{name}` {size / 2**20:,.1f} MiB" for name, size in sizes.items())
            + ". A fresh process opened it with `GalleryIndex.load(path, mmap=True, verify=False)` in "
            f"{on_disk['open_s'] * 1e3:.0f} ms (RSS after opening {on_disk['rss_after_open_mib']:,.0f} MiB; the "
            f"process's peak before opening, imports only: {on_disk['baseline_peak_mib']:,.0f} MiB) and searched it; "
            "peak RSS is the process's VmHWM after each row (cumulative), with its anonymous and file-backed "
            "(mapped, reclaimable) parts at that point.",
            "",
            f"| search | nprobe | recall@{args.top_k} | batch of {args.batch_queries}: p50 (ms) | p95 (ms) | peak RSS (MiB) "
            "| peak above imports (MiB) | anon / file RSS (MiB) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in on_disk["rows"]:
            if row["nprobe"] is None:
                name = "exact (torch kernel streaming the mapped embeddings)"
            else:
                name = "IVF-PQ on disk" + (f" + exact rerank of {row['rerank']}k (rows read from the file)" if row["rerank"] else "")
            lines.append(
                f"| {name} | {row['nprobe'] if row['nprobe'] is not None else '—'} | {row['recall']:.3f} | "
                f"{row['batch_ms_p50']:.1f} | {row['batch_ms_p95']:.1f} | {row['peak_rss_mib']:,.0f} | "
                f"{row['peak_rss_mib'] - on_disk['baseline_peak_mib']:,.0f} | "
                f"{row['rss_anon_mib']:,.0f} / {row['rss_file_mib']:,.0f} |"
            )
    text = "\n".join(lines) + "\n" + NOTES_HEADING + "\n" + previous_notes(args.output) + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    write_text_atomically(args.output, text)
    print(text)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--search_child":
        search_child(sys.argv[2])
    else:
        main()
