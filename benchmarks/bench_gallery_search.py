"""Gallery search and index-build performance of `pipelines.GalleryIndex` / the composed-image-retrieval pipeline.

Side by side, in one process, on the same data:

* exact top-k over N x D normalised embeddings (default 1M x 256, float32 = 1 GB): `GalleryIndex` torch search
  (float32 and float16 storage) vs faiss `IndexFlatIP`, single-query latency p50/p95 and batched throughput;
* the memory-bandwidth floor of one exact single-query scan: bytes scanned / measured copy bandwidth, where copy
  bandwidth counts bytes read + written per second (STREAM "copy" convention), measured on the embedding matrix;
* approximate faiss backends (IVF on the whole gallery, HNSW on a subset): recall@k against exact and latency;
* index build throughput (`pipe.build_index`, PIL images → embeddings) vs the bare vision encoder on ready pixel
  tensors, for a CSMCIR model with BLIP-2 ViT-g/14 + Q-Former shapes scaled to 1/4 width (same depth, tokens and
  query count, so the Q-Former's share of the FLOPs matches the full-size model).

Latency rounds interleave the contenders (torch, faiss, copy) so that load from other processes on a shared
machine hits all of them alike. Gallery vectors are a mixture of Gaussians (approximate indexes need structure;
isotropic noise has none), queries are drawn from the same mixture.

    .venv/bin/python benchmarks/bench_gallery_search.py               # writes benchmarks/results/gallery_search.md
    .venv/bin/python benchmarks/bench_gallery_search.py --sections exact --output benchmarks/results/exact_search.md
    .venv/bin/python benchmarks/bench_gallery_search.py --num_items 100000 --output /tmp/quick.md
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass, field

# torch and faiss each load their own OpenMP runtime. With the default (active) wait policy, a pool that just
# finished spins on its cores for a while, and on a 2-core machine the other pool's next call fights those spinning
# threads: measured, faiss at batch 16-256 ran 10-100x slower than its own batch-1 and batch-1024 rates. Sleeping
# idle threads make the two contenders run under the same, fair conditions. Set before torch loads (it reads the
# variable once); an explicit OMP_WAIT_POLICY in the environment wins, and the tables record the value in effect.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402
from transformers.utils import logging  # noqa: E402
from transformers.utils.logging import tqdm  # noqa: E402

from hub_cards.atomic_files import write_text_atomically
from pipelines import COMPOSED_IMAGE_RETRIEVAL_TASK, GalleryIndex

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_record import RunRecord  # noqa: E402  (this folder's shared table header)

logger = logging.get_logger(__name__)


@dataclass
class GallerySearchBenchmarkArguments:
    num_items: int = field(default=1_000_000, metadata={"help": "gallery size N"})
    embed_dim: int = field(default=256, metadata={"help": "embedding size D"})
    top_k: int = field(default=10, metadata={"help": "hits per query"})
    rounds: int = field(default=20, metadata={"help": "interleaved single-query rounds (batch 1: latency samples)"})
    batch_sizes: str = field(default="1,4,16,64,256,1024", metadata={"help": "query batch sizes of the exact table"})
    batch_rounds: int = field(default=3, metadata={"help": "interleaved rounds per batch size (median reported)"})
    sections: str = field(default="exact,approximate,build", metadata={"help": "which tables to measure"})
    recall_queries: int = field(default=500, metadata={"help": "queries for recall@k of the approximate indexes"})
    clusters: int = field(default=4096, metadata={"help": "mixture components of the synthetic gallery"})
    cluster_noise: float = field(
        default=1.0, metadata={"help": "per-dimension std of the points around their centre (centres: std 1)"}
    )
    ivf_nlist: int = field(default=1024, metadata={"help": "IVF cells"})
    ivf_train_size: int = field(default=65536, metadata={"help": "IVF k-means sample"})
    ivf_nprobe: str = field(default="8,32,128", metadata={"help": "comma-separated nprobe values to measure"})
    hnsw_items: int = field(default=100_000, metadata={"help": "HNSW is built on the first rows only (build is slow); 0 skips"})
    hnsw_m: int = field(default=16, metadata={"help": "HNSW links per node"})
    hnsw_ef_search: str = field(default="32,128", metadata={"help": "comma-separated efSearch values"})
    build_images: int = field(default=12, metadata={"help": "images encoded for the build-throughput comparison; 0 skips"})
    build_batch_size: int = field(default=4, metadata={"help": "batch size of build_index and of the bare encoder"})
    build_rounds: int = field(default=3, metadata={"help": "interleaved build-throughput rounds (median reported)"})
    build_threads: str = field(default="2,1", metadata={"help": "comma-separated torch thread counts for the build rows"})
    build_width_divisor: int = field(default=4, metadata={"help": "ViT-g/Q-Former widths are divided by this"})
    threads: int = field(default=2, metadata={"help": "torch and faiss threads"})
    seed: int = field(default=0)
    output: str = field(default="benchmarks/results/gallery_search.md")


def clustered_embeddings(
    rows: int, dim: int, centres: torch.Tensor, generator: torch.Generator, noise: float
) -> torch.Tensor:
    """Rows drawn from a mixture of Gaussians around `centres` (unit-variance entries), L2-normalised."""
    out = torch.empty(rows, dim)
    for start in range(0, rows, 131072):
        stop = min(rows, start + 131072)
        assignment = torch.randint(0, centres.shape[0], (stop - start,), generator=generator)
        block = centres[assignment] + noise * torch.randn(stop - start, dim, generator=generator)
        out[start:stop] = torch.nn.functional.normalize(block, dim=1)
    return out


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1e3, q))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def recall_at_k(approximate: np.ndarray, exact: np.ndarray) -> float:
    """|approx top-k ∩ exact top-k| / k, averaged over queries."""
    return float(np.mean([len(set(a.tolist()) & set(e.tolist())) / e.shape[0] for a, e in zip(approximate, exact)]))


class MachineLimits:
    """This machine's read bandwidth (bytes/s) and sgemm throughput (flop/s) at the benchmark's thread count,
    measured *beside* the searches: call :meth:`probe` once per round, interleaved with the contenders, so the bound
    of each row comes from the same minutes, threads and load as the row (a one-off measurement at the start of a
    run swung 1.2-6.3 GB/s between tables minutes apart).

    Read bandwidth: bytes of ``tensor`` / time of one ``torch.sum`` over it (a pure streaming read). sgemm: 2·M·N·K /
    time of a (1024 x D) @ (D x 32768) float32 product, the shape of one block of a large-batch search. Each is the
    median of the probes since the last :meth:`reset`. Together they bound any exact search: time ≥ max(bytes /
    read bandwidth, flops / sgemm).
    """

    def __init__(self, tensor: torch.Tensor, threads: int) -> None:
        torch.set_num_threads(threads)
        self.tensor = tensor
        self.bytes = tensor.numel() * tensor.element_size()
        dim = tensor.shape[-1]
        self.a, self.b = torch.randn(1024, dim), torch.randn(32768, dim)
        self.out = torch.empty(1024, 32768)
        self.flops = 2 * 1024 * 32768 * dim
        torch.mm(self.a, self.b.T, out=self.out)  # warm-up: pages of the output buffer
        self.reset()

    def reset(self) -> None:
        self.reads: list[float] = []
        self.gemms: list[float] = []

    def probe(self) -> None:
        self.reads.append(timed(lambda: self.tensor.sum()))
        self.gemms.append(timed(lambda: torch.mm(self.a, self.b.T, out=self.out)))

    @property
    def read_bandwidth(self) -> float:
        return self.bytes / float(np.median(self.reads))

    @property
    def sgemm(self) -> float:
        return self.flops / float(np.median(self.gemms))


def omp_note(threads: int) -> str:
    """What the tables say about the OpenMP conditions the contenders ran under."""
    return (f"torch and faiss: {threads} OpenMP threads each, `OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}` "
            "(set by the benchmark before torch loads, unless given: idle threads sleep instead of spinning against "
            "the other library's pool).")


def bench_search(args: GallerySearchBenchmarkArguments, lines: list[str]) -> None:
    generator = torch.Generator().manual_seed(args.seed)
    centres = torch.randn(args.clusters, args.embed_dim, generator=generator)
    t0 = time.perf_counter()
    gallery = clustered_embeddings(args.num_items, args.embed_dim, centres, generator, args.cluster_noise)
    logger.warning(f"generated {tuple(gallery.shape)} gallery in {time.perf_counter() - t0:.1f}s")
    index32 = GalleryIndex(gallery, normalize=False)
    queries = clustered_embeddings(args.rounds + 5, args.embed_dim, centres, generator, args.cluster_noise)
    if "exact" in args.sections.split(","):
        bench_exact(args, lines, gallery, index32, centres, generator)
    if "approximate" not in args.sections.split(","):
        return

    # Approximate backends: recall@k against exact, on a separate query set.
    recall_queries = clustered_embeddings(args.recall_queries, args.embed_dim, centres, generator, args.cluster_noise)
    exact_positions = index32.search(recall_queries, top_k=args.top_k).positions.numpy()
    lines += [
        f"## Approximate faiss backends: recall@{args.top_k} against exact ({args.recall_queries} queries)",
        "",
        "| index | gallery rows | build (s) | search param | recall@10 | single query p50 (ms) | p95 (ms) |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    approximate_rows = [
        (
            f"IVF-Flat, nlist={args.ivf_nlist}",
            args.num_items,
            dict(kind="ivf", nlist=args.ivf_nlist, train_size=args.ivf_train_size, seed=args.seed),
            "nprobe",
            args.ivf_nprobe,
        ),
    ]
    if args.hnsw_items > 0:
        approximate_rows.append(
            (
                f"HNSW-Flat, M={args.hnsw_m}, efConstruction=40",
                min(args.hnsw_items, args.num_items),
                dict(kind="hnsw", hnsw_m=args.hnsw_m, ef_construction=40),
                "ef_search",
                args.hnsw_ef_search,
            )
        )
    for label, rows, build_kwargs, knob, values in approximate_rows:
        index = GalleryIndex(gallery[:rows], normalize=False)
        exact = exact_positions if rows == args.num_items else index.search(recall_queries, top_k=args.top_k).positions
        exact = np.asarray(exact)
        build_seconds = timed(lambda: index.build_faiss(**build_kwargs))
        for value in [int(v) for v in values.split(",")]:
            index.set_faiss_search_params(**{knob: value})
            recall = recall_at_k(index.search(recall_queries, top_k=args.top_k).positions.numpy(), exact)
            samples = [timed(lambda q=q: index.search(q, top_k=args.top_k)) for q in queries[: args.rounds].split(1)]
            lines.append(
                f"| {label} | {rows:,} | {build_seconds:.1f} | {knob}={value} | {recall:.3f} | "
                f"{percentile_ms(samples, 50):.2f} | {percentile_ms(samples, 95):.2f} |"
            )
    lines.append("")


def bench_exact(args, lines, gallery, index32, centres, generator) -> None:
    """The exact table: GalleryIndex (float32, float16 storage) vs faiss IndexFlatIP at every batch size, each also
    against this machine's bound max(bytes / read bandwidth, flops / sgemm), interleaved round by round."""
    import faiss

    index16 = GalleryIndex(gallery, dtype="float16", normalize=False)
    flat = faiss.IndexFlatIP(args.embed_dim)
    flat.add(gallery.numpy())
    limits = MachineLimits(gallery, args.threads)
    bytes32 = gallery.numel() * 4
    methods = {
        "GalleryIndex exact, float32": lambda q: index32.search(q, top_k=args.top_k),
        "GalleryIndex exact, float16 storage": lambda q: index16.search(q, top_k=args.top_k),
        "faiss IndexFlatIP": lambda q: flat.search(q.numpy(), args.top_k),
    }
    # exactness on the measured shapes: the same top-k positions as faiss (ties aside: random data has none)
    check = clustered_embeddings(8, args.embed_dim, centres, generator, args.cluster_noise)
    same_topk = bool((index32.search(check, top_k=args.top_k).positions.numpy() == flat.search(check.numpy(), args.top_k)[1]).all())
    for fn in methods.values():  # warm-up
        fn(check[:1])
    rows = []
    for batch_size in [int(v) for v in args.batch_sizes.split(",")]:
        rounds = args.rounds if batch_size == 1 else args.batch_rounds
        batch = clustered_embeddings(batch_size, args.embed_dim, centres, generator, args.cluster_noise)
        times: dict[str, list[float]] = {name: [] for name in methods}
        limits.reset()
        for _ in tqdm(range(rounds), desc=f"exact search, batch {batch_size}"):
            for name, fn in methods.items():
                times[name].append(timed(lambda: fn(batch)))
            limits.probe()
        medians = {name: float(np.median(values)) for name, values in times.items()}
        flops = 2.0 * batch_size * gallery.shape[0] * gallery.shape[1]
        read_bandwidth, sgemm = limits.read_bandwidth, limits.sgemm
        for name in methods:
            stored = bytes32 / 2 if "float16" in name else bytes32
            bound = max(stored / read_bandwidth, flops / sgemm)
            which = "read" if stored / read_bandwidth >= flops / sgemm else "sgemm"
            rows.append((batch_size, name, medians[name], medians[name] / medians["faiss IndexFlatIP"], bound, which,
                         read_bandwidth, sgemm))
    lines += [
        f"## Exact top-{args.top_k} over {args.num_items:,} x {args.embed_dim} (float32 = {bytes32 / 2**30:.2f} GiB)",
        "",
        f"Machine limits at {args.threads} threads, measured beside every row (one probe per round, interleaved with "
        "the contenders; median of the batch's rounds): read bandwidth (`torch.sum` over the gallery) and sgemm "
        f"((1024 x {args.embed_dim}) @ ({args.embed_dim} x 32768)), columns \"read GB/s\" and \"sgemm GFLOP/s\". The "
        "bound of a search is max(bytes stored / read bandwidth, 2·Q·N·D / sgemm) — reading every stored byte once, "
        "or the multiply-adds at sgemm speed; \"limit\" names the larger. Batch 1: median of "
        f"{args.rounds} rounds, larger batches: median of {args.batch_rounds}; contenders interleaved in every round.",
        omp_note(args.threads),
        f"GalleryIndex and faiss return identical top-{args.top_k} positions on 8 checked queries: **{same_topk}**.",
        "",
        "| batch | method | ms / batch | ms / query | vs faiss flat | read GB/s | sgemm GFLOP/s | bound (ms) | × bound | limit |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for batch_size, name, seconds, vs_faiss, bound, which, read_bandwidth, sgemm in rows:
        lines.append(f"| {batch_size} | {name} | {seconds * 1e3:.1f} | {seconds * 1e3 / batch_size:.2f} | {vs_faiss:.2f}x | "
                     f"{read_bandwidth / 1e9:.1f} | {sgemm / 1e9:.0f} | {bound * 1e3:.1f} | {seconds / bound:.2f}x | {which} |")
    single = {name: seconds for b, name, seconds, *_ in rows if b == 1}
    worst = max(v for b, name, s, v, *_ in rows if name == "GalleryIndex exact, float32")
    lines += [
        "",
        f"Goals (issue 20): float32 ≤ 1.0x faiss at every batch size — worst measured **{worst:.2f}x**; float16 storage "
        f"≤ 0.6x float32 faiss for single queries — measured **{single['GalleryIndex exact, float16 storage'] / single['faiss IndexFlatIP']:.2f}x**; "
        "within 1.3x of the bound (column \"× bound\").",
        "",
    ]


def scaled_blip2_config(processor_vocab: int, divisor: int):
    """BLIP-2 ViT-g/14 (39 layers, 224 px, 257 tokens) + Q-Former (12 layers, 32 queries) with widths / divisor."""
    from modeling_csmcir.presets import preset_config

    return preset_config(
        "blip2-vitg", vocab_size=processor_vocab, image_size=224,
        vision_hidden_size=1408 // divisor, vision_intermediate_size=6144 // divisor,
        qformer_hidden_size=768 // divisor, qformer_intermediate_size=3072 // divisor,
    )


def bench_build(args: GallerySearchBenchmarkArguments, lines: list[str]) -> None:
    from transformers import pipeline

    from modeling_csmcir import CSMCIRModel
    from modeling_csmcir.presets import preset_processor

    processor = preset_processor("blip2-vitg", image_size=224)
    torch.manual_seed(args.seed)
    model = CSMCIRModel(scaled_blip2_config(len(processor.tokenizer), args.build_width_divisor)).eval()
    vision_params = sum(p.numel() for p in model.vision_model.parameters())
    other_params = sum(p.numel() for p in model.parameters()) - vision_params
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        retriever = pipeline(COMPOSED_IMAGE_RETRIEVAL_TASK, model=folder, trust_remote_code=True, device="cpu")
    rng = np.random.default_rng(args.seed)
    images = [Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)) for _ in range(args.build_images)]
    captions = [f"a photo of object number {i} in a bright red colour with short sleeves" for i in range(args.build_images)]
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]

    def bare_vision() -> None:
        with torch.inference_mode():
            for start in range(0, args.build_images, args.build_batch_size):
                retriever.model.get_image_embeds(pixel_values[start : start + args.build_batch_size])

    def build(with_captions: bool) -> None:
        retriever.build_index(
            images, captions=captions if with_captions else None, batch_size=args.build_batch_size, show_progress=False
        )

    with torch.inference_mode():
        image_embeds = retriever.model.get_image_embeds(pixel_values[: args.build_batch_size])
        caption_ids = processor(text=captions[: args.build_batch_size], return_tensors="pt")
    batches = -(-args.build_images // args.build_batch_size)

    def qformer_only(with_captions: bool) -> None:
        # The Q-Former's own cost: the same number of batches on cached vision features.
        text = dict(caption_ids) if with_captions else {}
        with torch.inference_mode():
            for _ in range(batches):
                retriever.model.get_target_features(image_embeds=image_embeds, **text)

    contenders = {
        "bare vision encoder (ready pixel tensors)": bare_vision,
        "build_index, image only (PIL → index)": lambda: build(False),
        "build_index, image + caption (PIL → index)": lambda: build(True),
        "Q-Former alone, image only (cached vision features)": lambda: qformer_only(False),
        "Q-Former alone, image + caption (cached vision features)": lambda: qformer_only(True),
    }
    lines += [
        "## Index build throughput vs the bare vision encoder",
        "",
        f"Model: BLIP-2 ViT-g/14 + Q-Former shapes at 1/{args.build_width_divisor} width (vision "
        f"{vision_params / 1e6:.1f}M params, 39 layers, 257 tokens; Q-Former + embeddings + projections "
        f"{other_params / 1e6:.1f}M params, 12 layers, 32 queries; same depths and token counts as the full model, so "
        f"the Q-Former's share of the FLOPs is the full model's), random weights, {args.build_images} images of "
        f"256x256 resized to 224, batch {args.build_batch_size}, median of {args.build_rounds} interleaved rounds, "
        "at each thread count.",
        "",
        "| threads | path | images/s | vs bare vision encoder |",
        "|---:|---|---:|---:|",
    ]
    for threads in [int(v) for v in args.build_threads.split(",")]:
        torch.set_num_threads(threads)
        build(True)  # warm-up at this thread count
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in tqdm(range(args.build_rounds), desc=f"build-throughput rounds, {threads} thread(s)"):
            for name, fn in contenders.items():
                times[name].append(timed(fn))
        vision_rate = args.build_images / float(np.median(times["bare vision encoder (ready pixel tensors)"]))
        for name in contenders:
            rate = args.build_images / float(np.median(times[name]))
            lines.append(f"| {threads} | {name} | {rate:.2f} | {rate / vision_rate:.2f}x |")
    torch.set_num_threads(args.threads)
    lines += ["", "Goal: build_index ≥ 0.8x the bare vision encoder (the Q-Former must not dominate).", ""]


def main(argv: list[str] | None = None) -> None:
    (args,) = HfArgumentParser(GallerySearchBenchmarkArguments).parse_args_into_dataclasses(args=argv)
    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    record = RunRecord.start("bench_gallery_search.py", argv, args.threads)
    sections = args.sections.split(",")
    body: list[str] = []
    if "exact" in sections or "approximate" in sections:
        bench_search(args, body)
    if "build" in sections and args.build_images > 0:
        bench_build(args, body)
    record.finish()
    lines = ["# Gallery search benchmark", "", *record.header_lines(),
             f"faiss {faiss.__version__}. {omp_note(args.threads)} CPU only.", "", *body]
    build_note = (" — worst for models made of many small ops (the Q-Former), which is why the 1-thread build rows "
                  "are the fairer picture of the Q-Former's share of the work") if "build" in sections else ""
    lines += [
        "## Reading these numbers",
        "",
        "Above the core count, other jobs' threads compete with ours: absolute times stretch, and every "
        f"multi-threaded op pays for threads waiting at its barrier{build_note}. torch and faiss each bring their "
        "own OpenMP pool; run back to back on 2 cores, one pool's spin-waiting threads slow the other, which is why "
        "the benchmark runs with `OMP_WAIT_POLICY=PASSIVE` unless told otherwise (recorded above). Contenders run in "
        "interleaved rounds, so their ratios are comparable even when absolute times are not.",
        "",
    ]
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    write_text_atomically(args.output, text)
    print(text)


if __name__ == "__main__":
    main()
