"""Retrieval evaluation of a CSMCIR model on the CIR benchmarks, built on `GalleryIndex`.

``evaluate_cir(model, processor, dataset, benchmark)`` encodes the gallery with the project's one gallery encoder
(``pipelines.gallery_index.encode_targets``) into a ``GalleryIndex`` stamped with the model's identity, encodes
the queries, scores every query against every gallery row (``GalleryIndex.similarities``) and applies the
benchmark's protocol from :mod:`.cir_metrics`.

Indexes are cached (:class:`GalleryIndexCache`) under the model's identity (``pipelines.gallery_index.model_identity``:
config hash + weights fingerprint), the gallery dataset's fingerprint and the processor/caption settings, so
evaluating the same model again does not re-encode the gallery, while any weight update gives a new key. With a
``cache_dir`` the cached indexes are ordinary saved ``GalleryIndex`` folders and survive the process.

For training, pass :class:`CIRRetrievalEvaluator` to ``CSMCIRTrainer(evaluator=...)``: it is called with the
current model at every evaluation.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, DatasetDict
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers.utils import logging

from pipelines.composed_image_retrieval import image_file_name, load_retrieval_image
from pipelines.gallery_index import GalleryIndex, encode_targets, model_identity

from ..data.collators import CIRCollator, CIRGalleryCollator
from .cir_metrics import PROTOCOLS, compute_cir_metrics


logger = logging.get_logger(__name__)


#: Row fields holding images; an `Image(decode=False)` value (`{"path", "bytes"}`) or a path is decoded before collating.
_IMAGE_FIELDS = ("image", "reference_image", "target_image")


def _is_map_dataset(value: Any) -> bool:
    """A map-style `datasets.Dataset` (length, random access, fingerprint): the cacheable, DataLoader path."""
    return isinstance(value, Dataset)


class _DecodingCollator:
    """Decode undecoded image fields of each row (`datasets.Image(decode=False)` dicts, paths), then collate."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator

    def __call__(self, rows: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        decoded = []
        for row in rows:
            row = dict(row)
            for key in _IMAGE_FIELDS:
                value = row.get(key)
                if isinstance(value, (dict, str, os.PathLike)):
                    name = f"{key} of {row.get('query_id', row.get('image_id', 'a row'))!r}"
                    row[key] = load_retrieval_image(value, name)
            decoded.append(row)
        return self.collator(decoded)


def _row_batches(rows: Iterable[Mapping[str, Any]], batch_size: int) -> Iterator[list[Mapping[str, Any]]]:
    """Consecutive lists of `batch_size` rows from any iterable (a streaming dataset, a generator)."""
    batch: list[Mapping[str, Any]] = []
    for row in rows:
        if not isinstance(row, Mapping):
            raise ValueError(f"evaluation rows must be dicts (dataset rows), got {type(row).__name__}")
        batch.append(row)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _processor_identity(processor: Any, max_text_length: int | None) -> str:
    parts = [type(processor).__name__, str(max_text_length or getattr(processor, "max_text_length", ""))]
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is not None and hasattr(image_processor, "to_json_string"):
        parts.append(image_processor.to_json_string())
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None:
        parts.append(f"{type(tokenizer).__name__}:{len(tokenizer)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


class GalleryIndexCache:
    """Gallery indexes keyed by (model identity, gallery fingerprint, caption use, processor settings).

    Kept in memory (the ``max_entries`` most recent) and, with ``cache_dir``, also saved as ``GalleryIndex``
    folders (``cache_dir/<key>/``) that later processes load. ``hits`` / ``misses`` count lookups.
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None, max_entries: int = 4) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.max_entries = max_entries
        self._memory: OrderedDict[str, GalleryIndex] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def make_key(identity: Mapping[str, Any], gallery: Dataset, use_captions: bool, processor: Any,
                 max_text_length: int | None = None) -> str:
        """The cache key of a gallery encoded by the model with ``identity`` (``pipelines.gallery_index.model_identity``)."""
        identity = json.dumps(dict(identity), sort_keys=True, default=str)
        parts = (identity, gallery._fingerprint, f"captions={use_captions}", _processor_identity(processor, max_text_length))
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]

    def get(self, key: str) -> GalleryIndex | None:
        if key in self._memory:
            self._memory.move_to_end(key)
            self.hits += 1
            return self._memory[key]
        if self.cache_dir is not None and (self.cache_dir / key).is_dir():
            index = GalleryIndex.load(self.cache_dir / key)
            self._remember(key, index)
            self.hits += 1
            return index
        self.misses += 1
        return None

    def put(self, key: str, index: GalleryIndex) -> None:
        self._remember(key, index)
        if self.cache_dir is not None:
            index.save(self.cache_dir / key)

    def _remember(self, key: str, index: GalleryIndex) -> None:
        self._memory[key] = index
        self._memory.move_to_end(key)
        while len(self._memory) > self.max_entries:
            self._memory.popitem(last=False)

    def clear(self) -> None:
        self._memory.clear()


#: Process-wide cache used when callers pass none: a second evaluation of the same model is free.
DEFAULT_GALLERY_CACHE = GalleryIndexCache()


def build_gallery_index(
    model: torch.nn.Module,
    processor: Any,
    gallery: Dataset,
    use_captions: bool = True,
    batch_size: int = 64,
    cache: GalleryIndexCache | None = DEFAULT_GALLERY_CACHE,
    max_text_length: int | None = None,
    show_progress: bool = True,
) -> GalleryIndex:
    """A ``GalleryIndex`` of the gallery split (ids = ``image_id``) from ``model.get_target_features`` (image +
    caption, or image only), cached. Token-level targets give a ``(N, K, D)`` index, searched by the maximum over
    tokens; the processor's preprocessing (``targetpad``, BLIP captions) applies through the collator.

    ``gallery`` may be a ``datasets.Dataset`` (cached under its fingerprint), a streaming ``datasets.IterableDataset``
    or any iterable of rows (read one batch at a time, not cached: they have no fingerprint). ``image`` may be an
    ``Image(decode=False)`` value or a path; ``image_id`` defaults to the image's file name (then to its position).
    """
    # The identity hashes every weight: computed once, for the cache key and the index's own record.
    model_record = model_identity(model)
    if not _is_map_dataset(gallery):
        return _stream_gallery_index(model, processor, gallery, use_captions, batch_size, model_record,
                                     max_text_length, show_progress)
    key = GalleryIndexCache.make_key(model_record, gallery, use_captions, processor, max_text_length) if cache is not None else None
    if cache is not None:
        cached = cache.get(key)
        if cached is not None:
            logger.info(f"gallery index of {len(gallery)} images taken from the cache (key {key})")
            return cached
    collator = _DecodingCollator(CIRGalleryCollator(processor, use_captions, max_text_length))
    loader = DataLoader(gallery, batch_size=batch_size, shuffle=False, collate_fn=collator)
    embeddings = encode_targets(model, loader, total=len(gallery), show_progress=show_progress)
    identity = dict(model_record, target_inputs="image+caption" if use_captions else "image")
    index = GalleryIndex(embeddings, ids=list(gallery["image_id"]), model_identity=identity)
    if cache is not None:
        cache.put(key, index)
    return index


def _stream_gallery_index(model, processor, gallery, use_captions, batch_size, model_record, max_text_length,
                          show_progress) -> GalleryIndex:
    collator = _DecodingCollator(CIRGalleryCollator(processor, use_captions, max_text_length))
    ids: list[Any] = []

    def batches():
        for rows in _row_batches(gallery, batch_size):
            for row in rows:
                ids.append(row.get("image_id"))
                if ids[-1] is None:
                    ids[-1] = image_file_name(row.get("image")) or len(ids) - 1
            yield collator(rows)

    embeddings = encode_targets(model, batches(), total=None, show_progress=show_progress)
    identity = dict(model_record, target_inputs="image+caption" if use_captions else "image")
    return GalleryIndex(embeddings, ids=ids, model_identity=identity)


@torch.no_grad()
def encode_queries(
    model: torch.nn.Module,
    processor: Any,
    queries: Dataset,
    batch_size: int = 64,
    max_text_length: int | None = None,
    show_progress: bool = True,
) -> torch.Tensor:
    """Query features ``(Q, D)`` from ``model.get_query_features`` (reference image + modification text).

    ``queries``: a ``datasets.Dataset``, a streaming ``IterableDataset`` or any iterable of query rows; the
    ``reference_image`` may be an ``Image(decode=False)`` value or a path.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    collator = _DecodingCollator(CIRCollator(processor, include_targets=False, max_text_length=max_text_length))
    if _is_map_dataset(queries):
        loader = DataLoader(queries, batch_size=batch_size, shuffle=False, collate_fn=collator)
    else:
        loader = (collator(rows) for rows in _row_batches(queries, batch_size))
    chunks = []
    try:
        for batch in tqdm(loader, desc="encoding queries", disable=not show_progress, unit="batch"):
            batch = {k: v.to(device) for k, v in batch.items()}
            chunks.append(model.get_query_features(**batch).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(chunks)


@dataclass
class CIREvaluationResult:
    """Metrics of one evaluation plus what produced them (for submissions and analysis).

    ``scores[q, g]`` is the cosine similarity of query ``q`` and gallery image ``g`` — for token-level targets
    (``config.target_representation="tokens"``) the maximum over ``g``'s tokens, as ``CSMCIRModel.score``.
    """

    metrics: dict[str, float | str]
    scores: torch.Tensor
    query_ids: list[str]
    gallery_ids: list[str]
    reference_ids: list[str]
    img_sets: list[list[str]] = field(default_factory=list)


def _has_targets(queries: Dataset) -> bool:
    return len(queries) > 0 and all(g for g in queries["gt_ids"])


def score_queries(
    query_features: torch.Tensor,
    index: GalleryIndex,
    queries: Dataset,
    benchmark: str,
    category: str | None = None,
) -> CIREvaluationResult:
    """Score every query against every gallery row (cosine, ``index.similarities``) and apply the benchmark
    protocol; metrics are empty on splits without targets. The gallery ids are the index's ids."""
    if query_features.shape[0] != len(queries):
        raise ValueError(f"query_features has {query_features.shape[0]} rows but there are {len(queries)} queries")
    scores = index.similarities(query_features)
    gallery_ids = list(index.ids)
    reference_ids = list(queries["reference_id"])
    img_sets = [list(s) for s in queries["img_set"]]
    metrics: dict[str, float | str] = {}
    if _has_targets(queries):
        metrics = compute_cir_metrics(
            benchmark,
            scores,
            gallery_ids,
            reference_ids=reference_ids,
            target_ids=list(queries["target_id"]) if benchmark != "circo" else None,
            gt_ids=[list(g) for g in queries["gt_ids"]],
            img_sets=img_sets if benchmark == "cirr" and all(img_sets) else None,
            category=category,
        )
    return CIREvaluationResult(metrics, scores, list(queries["query_id"]), gallery_ids, reference_ids, img_sets)


def evaluate_cir(
    model: torch.nn.Module,
    processor: Any,
    dataset: DatasetDict | Mapping[str, Dataset],
    benchmark: str,
    use_target_captions: bool | None = None,
    batch_size: int = 64,
    cache: GalleryIndexCache | None = DEFAULT_GALLERY_CACHE,
    category: str | None = None,
    max_text_length: int | None = None,
    show_progress: bool = True,
) -> CIREvaluationResult:
    """Evaluate ``model`` on one loaded split (``{"queries", "gallery"}`` from the ``data`` readers).

    ``use_target_captions`` defaults to whether the gallery has a ``caption`` column (symmetric tower). Either split
    may also be a streaming ``datasets.IterableDataset`` (``load_dataset(..., streaming=True)`` or
    ``Dataset.to_iterable_dataset()``) or an iterable of rows, with images decoded or ``Image(decode=False)``.
    """
    queries, gallery = dataset["queries"], dataset["gallery"]
    if use_target_captions is None:
        columns = getattr(gallery, "column_names", None)
        if columns is None:
            raise ValueError(
                "evaluate_cir: the gallery does not list its columns (a plain iterable); pass use_target_captions="
            )
        use_target_captions = "caption" in columns
    index = build_gallery_index(model, processor, gallery, use_target_captions, batch_size, cache, max_text_length,
                                show_progress)
    if not _is_map_dataset(queries):
        # A stream is read once: keep each row's non-image fields (ids, ground truth) for the protocol.
        kept: list[dict[str, Any]] = []

        def remembered(rows):
            for row in rows:
                kept.append({key: value for key, value in row.items() if key not in _IMAGE_FIELDS})
                yield row

        query_features = encode_queries(model, processor, remembered(queries), batch_size, max_text_length,
                                        show_progress)
        queries = Dataset.from_list(kept)
    else:
        query_features = encode_queries(model, processor, queries, batch_size, max_text_length, show_progress)
    return score_queries(query_features, index, queries, benchmark, category)


class CIRRetrievalEvaluator:
    """Gallery retrieval evaluation of one split: ``evaluator(model) -> metrics``.

    Pass it to the trainer, which calls it with the current model at every evaluation::

        evaluator = CIRRetrievalEvaluator(dataset, processor, "cirr")
        trainer = CSMCIRTrainer(model, args=CSMCIRTrainingArguments(...), train_dataset=..., evaluator=evaluator)
        trainer.evaluate()   # {"eval_recall_at_1": ..., "eval_recall_subset_at_1": ..., ...}

    ``protocol`` names the benchmark protocol the metrics follow (the model card reports it).
    """

    def __init__(
        self,
        dataset: DatasetDict | Mapping[str, Dataset],
        processor: Any,
        benchmark: str,
        use_target_captions: bool | None = None,
        batch_size: int = 64,
        cache: GalleryIndexCache | None = DEFAULT_GALLERY_CACHE,
        category: str | None = None,
        show_progress: bool = True,
    ) -> None:
        if benchmark not in PROTOCOLS:
            raise ValueError(f"CIRRetrievalEvaluator benchmark: expected one of {sorted(PROTOCOLS)}, got {benchmark!r}")
        self.dataset = dataset
        self.processor = processor
        self.benchmark = benchmark
        self.use_target_captions = use_target_captions
        self.batch_size = batch_size
        self.cache = cache
        self.category = category
        self.show_progress = show_progress

    @property
    def protocol(self) -> str:
        """The evaluation protocol of ``benchmark`` (gallery, reference handling, metric definitions)."""
        return PROTOCOLS[self.benchmark]

    def evaluate(self, model: torch.nn.Module) -> CIREvaluationResult:
        return evaluate_cir(
            model, self.processor, self.dataset, self.benchmark, self.use_target_captions, self.batch_size,
            self.cache, self.category, show_progress=self.show_progress,
        )

    def __call__(self, model: torch.nn.Module) -> dict[str, float | str]:
        return self.evaluate(model).metrics


__all__ = ["CIREvaluationResult", "CIRRetrievalEvaluator", "DEFAULT_GALLERY_CACHE", "GalleryIndexCache",
           "build_gallery_index", "encode_queries", "evaluate_cir", "score_queries"]
