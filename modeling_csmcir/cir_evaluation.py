"""Retrieval evaluation of a CSMCIR model on the CIR benchmarks, with a gallery-feature cache.

``evaluate_cir(model, processor, dataset, benchmark)`` encodes the gallery once (batched, with a progress bar),
encodes the queries, scores ``scores = q @ g.T`` and applies the benchmark's protocol from :mod:`cir_metrics`.
Gallery features are cached under the model's identity (config hash + weights fingerprint, as gallery indexes use),
the gallery dataset's fingerprint and the processor/caption settings, so evaluating the same model again does
not re-encode the gallery, while any weight update gives a new key.

For the Trainer, :class:`CIRRetrievalEvaluator` provides ``compute_metrics`` (it reads the query embeddings
the eval loop already computed and scores them against the cached gallery of the current model); use it with
``TrainingArguments(label_names=["target_ids"], remove_unused_columns=False)`` so the eval loop keeps
predictions and labels, and ``evaluator.attach(trainer)`` so it can reach the model.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, DatasetDict
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers.utils import logging

from pipelines.gallery_index import config_hash, weights_fingerprint

from .cir_collator import CIRCollator, CIRGalleryCollator
from .cir_metrics import compute_cir_metrics, fashioniq_average


logger = logging.get_logger(__name__)


def model_identity(model: torch.nn.Module) -> str:
    """The model's identity for caching: the same config hash and weights fingerprint a `GalleryIndex` records
    (`pipelines.gallery_index`), so one notion of "the same model" serves both caches."""
    return f"{config_hash(model.config)}-{weights_fingerprint(model)}"


def _processor_identity(processor: Any, max_text_length: int | None) -> str:
    parts = [type(processor).__name__, str(max_text_length or getattr(processor, "max_text_length", ""))]
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is not None and hasattr(image_processor, "to_json_string"):
        parts.append(image_processor.to_json_string())
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None:
        parts.append(f"{type(tokenizer).__name__}:{len(tokenizer)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


class GalleryFeatureCache:
    """Gallery features keyed by (model identity, gallery fingerprint, caption use, processor settings).

    Kept in memory (the ``max_entries`` most recent) and, with ``cache_dir``, also as safetensors files that
    survive the process. ``hits`` / ``misses`` count lookups.
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None, max_entries: int = 4):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.max_entries = max_entries
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def make_key(model: torch.nn.Module, gallery: Dataset, use_captions: bool, processor: Any, max_text_length: int | None = None) -> str:
        parts = (model_identity(model), gallery._fingerprint, f"captions={use_captions}", _processor_identity(processor, max_text_length))
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]

    def get(self, key: str) -> torch.Tensor | None:
        if key in self._memory:
            self._memory.move_to_end(key)
            self.hits += 1
            return self._memory[key]
        if self.cache_dir is not None and (self.cache_dir / f"{key}.safetensors").is_file():
            features = load_file(str(self.cache_dir / f"{key}.safetensors"))["features"]
            self._remember(key, features)
            self.hits += 1
            return features
        self.misses += 1
        return None

    def put(self, key: str, features: torch.Tensor) -> None:
        features = features.detach().cpu().contiguous()
        self._remember(key, features)
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            path = self.cache_dir / f"{key}.safetensors"
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            save_file({"features": features}, str(tmp))
            os.replace(tmp, path)

    def _remember(self, key: str, features: torch.Tensor) -> None:
        self._memory[key] = features
        self._memory.move_to_end(key)
        while len(self._memory) > self.max_entries:
            self._memory.popitem(last=False)

    def clear(self) -> None:
        self._memory.clear()


#: Process-wide cache used when callers pass none: a second evaluation of the same model is free.
DEFAULT_GALLERY_CACHE = GalleryFeatureCache()


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def encode_gallery(
    model: torch.nn.Module,
    processor: Any,
    gallery: Dataset,
    use_captions: bool = True,
    batch_size: int = 64,
    cache: GalleryFeatureCache | None = DEFAULT_GALLERY_CACHE,
    max_text_length: int | None = None,
    show_progress: bool = True,
) -> torch.Tensor:
    """Gallery features ``(G, D)`` from ``model.get_target_features`` (image + caption, or image only), cached."""
    key = GalleryFeatureCache.make_key(model, gallery, use_captions, processor, max_text_length) if cache is not None else None
    if cache is not None:
        cached = cache.get(key)
        if cached is not None:
            logger.info(f"gallery features of {len(gallery)} images taken from the cache (key {key})")
            return cached
    was_training = model.training
    model.eval()
    device = _model_device(model)
    loader = DataLoader(gallery, batch_size=batch_size, shuffle=False, collate_fn=CIRGalleryCollator(processor, use_captions, max_text_length))
    chunks = []
    for batch in tqdm(loader, desc="encoding gallery", disable=not show_progress, unit="batch"):
        batch = {k: v.to(device) for k, v in batch.items()}
        chunks.append(model.get_target_features(**batch).float().cpu())
    model.train(was_training)
    features = torch.cat(chunks)
    if cache is not None:
        cache.put(key, features)
    return features


@torch.no_grad()
def encode_queries(
    model: torch.nn.Module,
    processor: Any,
    queries: Dataset,
    batch_size: int = 64,
    max_text_length: int | None = None,
    show_progress: bool = True,
) -> torch.Tensor:
    """Query features ``(Q, D)`` from ``model.get_query_features`` (reference image + modification text)."""
    was_training = model.training
    model.eval()
    device = _model_device(model)
    collator = CIRCollator(processor, include_targets=False, max_text_length=max_text_length)
    loader = DataLoader(queries, batch_size=batch_size, shuffle=False, collate_fn=collator)
    chunks = []
    for batch in tqdm(loader, desc="encoding queries", disable=not show_progress, unit="batch"):
        batch = {k: v.to(device) for k, v in batch.items()}
        chunks.append(model.get_query_features(**batch).float().cpu())
    model.train(was_training)
    return torch.cat(chunks)


@dataclass
class CIREvaluationResult:
    """Metrics of one evaluation plus what produced them (for submissions and analysis).

    ``scores[q, g]`` is the cosine similarity of query ``q`` and gallery image ``g``.
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
    gallery_features: torch.Tensor,
    queries: Dataset,
    gallery: Dataset,
    benchmark: str,
    category: str | None = None,
) -> CIREvaluationResult:
    """Score ``q @ g.T`` and apply the benchmark protocol (metrics are empty on splits without targets)."""
    if query_features.shape[0] != len(queries):
        raise ValueError(f"query_features has {query_features.shape[0]} rows but there are {len(queries)} queries")
    scores = query_features.float() @ gallery_features.float().t()
    gallery_ids = list(gallery["image_id"])
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
    cache: GalleryFeatureCache | None = DEFAULT_GALLERY_CACHE,
    category: str | None = None,
    max_text_length: int | None = None,
    show_progress: bool = True,
) -> CIREvaluationResult:
    """Evaluate ``model`` on one loaded split (``{"queries", "gallery"}`` from ``cir_datasets``).

    ``use_target_captions`` defaults to whether the gallery has a ``caption`` column (symmetric tower).
    """
    queries, gallery = dataset["queries"], dataset["gallery"]
    if use_target_captions is None:
        use_target_captions = "caption" in gallery.column_names
    gallery_features = encode_gallery(model, processor, gallery, use_target_captions, batch_size, cache, max_text_length, show_progress)
    query_features = encode_queries(model, processor, queries, batch_size, max_text_length, show_progress)
    return score_queries(query_features, gallery_features, queries, gallery, benchmark, category)


def evaluate_fashioniq(
    model: torch.nn.Module,
    processor: Any,
    datasets_by_category: Mapping[str, DatasetDict],
    **kwargs: Any,
) -> dict[str, float | str]:
    """FashionIQ over categories: per-category R@10/R@50 (reference kept), averaged (``fashioniq_average``)."""
    per_category = {
        cat: evaluate_cir(model, processor, ds, "fashioniq", category=cat, **kwargs).metrics
        for cat, ds in datasets_by_category.items()
    }
    return fashioniq_average(per_category)


class CIRRetrievalEvaluator:
    """Gallery retrieval evaluation usable standalone (``evaluator(model)``) or as a Trainer ``compute_metrics``.

    Trainer use::

        evaluator = CIRRetrievalEvaluator(dataset, processor, "cirr")
        trainer = Trainer(model, args=TrainingArguments(..., label_names=["target_ids"], remove_unused_columns=False),
                          eval_dataset=dataset["queries"], data_collator=CIRCollator(processor),
                          compute_metrics=evaluator.compute_metrics)
        evaluator.attach(trainer)

    ``compute_metrics`` takes the query embeddings from the eval loop's predictions (``query_embeds``, the
    second output field) when they cover every query, otherwise it re-encodes the queries; the gallery is
    encoded with the current model through the cache.
    """

    def __init__(
        self,
        dataset: DatasetDict | Mapping[str, Dataset],
        processor: Any,
        benchmark: str,
        model: torch.nn.Module | None = None,
        use_target_captions: bool | None = None,
        batch_size: int = 64,
        cache: GalleryFeatureCache | None = DEFAULT_GALLERY_CACHE,
        category: str | None = None,
        show_progress: bool = True,
    ):
        self.dataset = dataset
        self.processor = processor
        self.benchmark = benchmark
        self.model = model
        self.use_target_captions = use_target_captions
        self.batch_size = batch_size
        self.cache = cache
        self.category = category
        self.show_progress = show_progress
        self._trainer = None

    def attach(self, trainer: Any) -> "CIRRetrievalEvaluator":
        """Read the model from ``trainer.model`` at every evaluation (it changes as training goes)."""
        self._trainer = trainer
        return self

    def _current_model(self) -> torch.nn.Module:
        model = self._trainer.model if self._trainer is not None else self.model
        if model is None:
            raise ValueError("CIRRetrievalEvaluator has no model: pass model=... or call attach(trainer)")
        return model

    def _use_captions(self) -> bool:
        if self.use_target_captions is None:
            return "caption" in self.dataset["gallery"].column_names
        return self.use_target_captions

    def evaluate(self, model: torch.nn.Module | None = None) -> CIREvaluationResult:
        model = model if model is not None else self._current_model()
        return evaluate_cir(
            model, self.processor, self.dataset, self.benchmark, self._use_captions(), self.batch_size,
            self.cache, self.category, show_progress=self.show_progress,
        )

    def __call__(self, model: torch.nn.Module | None = None) -> dict[str, float | str]:
        return self.evaluate(model).metrics

    def compute_metrics(self, eval_pred: Any) -> dict[str, float]:
        """Trainer hook: numeric metrics only (the protocol string is logged, since loggers want numbers)."""
        model = self._current_model()
        queries, gallery = self.dataset["queries"], self.dataset["gallery"]
        predictions = getattr(eval_pred, "predictions", eval_pred)
        query_features = None
        if isinstance(predictions, (tuple, list)) and len(predictions) >= 2:
            candidate = torch.as_tensor(predictions[1])
            if candidate.ndim == 2 and candidate.shape[0] == len(queries):
                query_features = candidate.float()
        if query_features is None:
            query_features = encode_queries(model, self.processor, queries, self.batch_size, show_progress=self.show_progress)
        gallery_features = encode_gallery(
            model, self.processor, gallery, self._use_captions(), self.batch_size, self.cache, show_progress=self.show_progress
        )
        metrics = score_queries(query_features, gallery_features, queries, gallery, self.benchmark, self.category).metrics
        logger.info(f"retrieval metrics under protocol: {metrics.get('protocol')}")
        return {k: float(v) for k, v in metrics.items() if not isinstance(v, str)}
