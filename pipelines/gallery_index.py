"""A searchable gallery of target embeddings for composed image retrieval.

`GalleryIndex` holds L2-normalised target embeddings (one row per gallery image), their ids, optional per-item
metadata and the identity of the model that encoded them, and answers top-k cosine-similarity queries:

    score(q, g) = q̂ · ĝ,   q̂ = q / ‖q‖,   ĝ = g / ‖g‖

A gallery may also be token-level, `(N, K, D)`: K L2-normalised token features per item (SPRC keeps the 32
query-token features of every target), scored by the maximum over tokens, `score(q, g) = max_k q̂ · ĝ_k`.

Search is exact by default (chunked matrix product + `torch.topk` in torch, on whatever device the index lives; the
kernel is the sibling `exact_search.py`).
An optional faiss backend offers an exact flat index (`IndexFlatIP`) and approximate ones for galleries in the
millions (`IndexIVFFlat`, `IndexHNSWFlat`). faiss is imported lazily inside a `try`, so this file — which is copied
into a saved pipeline folder on the Hub — does not make faiss a requirement of the loading side.

On disk an index is a folder: `gallery_embeddings.safetensors` (the embedding matrix in its storage dtype),
`gallery_index.json` (ids, metadata, model identity, format version) and, when a faiss index was built,
`gallery_faiss.index` (plus `gallery_faiss.ivfdata`, its inverted lists, for an index merged on disk). The JSON
record is the one atomic switch of a save (see `GalleryIndex.save`): a save killed at any moment leaves the old or the
new index loadable, never neither.

Galleries larger than memory (the sibling `gallery_on_disk.py`): `GalleryIndex.load(path, mmap=True)` maps the
embeddings file instead of reading it, and exact search streams it block by block; `GalleryIndex.merge_on_disk(shard
folders, path)` joins saved shards without loading them, merging IVF / IVF-PQ shards filled from one trained index
into one on-disk inverted-list file that is mapped, not read, when loaded (a search reads the probed lists, and an
exact rerank reads only its candidate rows).

`encode_targets` is the one gallery encoder of the project (the pipeline's `build_index`, the retrieval evaluator
and cached training all call it) and `model_identity` the one notion of "the same model" (indexes and evaluation
caches record it).

This file is a flat Hub-module sibling of `composed_image_retrieval.py`: it imports only torch, numpy,
safetensors and transformers.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from transformers.utils import logging

from .exact_search import block_rows, exact_search, token_scores
from .gallery_on_disk import (
    MappedEmbeddings,
    import_faiss,
    merge_ivf_on_disk,
    read_ivf_on_disk,
    stream_rows,
    tensor_blocks,
    write_embeddings,
    write_file_atomically,
    write_ivf_on_disk,
)


logger = logging.get_logger(__name__)

EMBEDDINGS_FILE = "gallery_embeddings.safetensors"
INDEX_FILE = "gallery_index.json"
FAISS_FILE = "gallery_faiss.index"
IVFDATA_FILE = "gallery_faiss.ivfdata"
FORMAT_VERSION = 1

_STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_FAISS_KINDS = ("flat", "ivf", "ivfpq", "hnsw")
_TRAINED_FAISS_FILE = "trained.faiss"
_TRAINED_CONFIG_FILE = "trained.json"
# Metadata keys that would overwrite the fields every hit carries.
_RESERVED_HIT_KEYS = ("id", "score")
# Config keys that describe how a model was saved or loaded, not what it computes.
_VOLATILE_CONFIG_KEYS = {
    "transformers_version",
    "architectures",
    "auto_map",
    "custom_pipelines",
    "dtype",
    "torch_dtype",
    "name_or_path",
}


# --------------------------------------------------------------------------------------------------------------------
# Model identity
# --------------------------------------------------------------------------------------------------------------------


def _stable_config_dict(value: Any) -> Any:
    """Drop volatile and private keys recursively, so the same model hashes the same after save/load."""
    if isinstance(value, dict):
        return {
            key: _stable_config_dict(item)
            for key, item in sorted(value.items())
            if key not in _VOLATILE_CONFIG_KEYS and not str(key).startswith("_")
        }
    if isinstance(value, (list, tuple)):
        return [_stable_config_dict(item) for item in value]
    return value


def config_hash(config: Any) -> str:
    """SHA-256 (first 16 hex digits) of the model config's JSON, ignoring keys that only record how it was saved."""
    config_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    text = json.dumps(_stable_config_dict(config_dict), sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _embeddings_digest(embeddings: torch.Tensor) -> str:
    """SHA-256 of the stored embedding bytes (CPU, contiguous): ties a JSON record to its embeddings file.
    Hashed block by block, so it costs no copy of the matrix."""
    digest = hashlib.sha256()
    for block in tensor_blocks(embeddings.detach().cpu().contiguous()):
        digest.update(memoryview(block.view(torch.uint8).numpy()).cast("B"))
    return digest.hexdigest()


#: Lower-precision copies the identity also hashes, so a model loaded in float16 / bfloat16 from the weights that
#: built an index is recognised as "the same weights, another dtype" instead of "a different model".
_FINGERPRINT_CAST_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().reshape(-1).contiguous().cpu()
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def weights_fingerprint(model: torch.nn.Module, cast_to: torch.dtype | None = None) -> str:
    """SHA-256 (first 16 hex digits) over every state-dict tensor's name, shape, dtype and **all** its bytes.

    Every value counts: re-initialising or retraining any weight changes the fingerprint (a sample of values would
    miss changes between the sampled positions, and an evaluation cache would then reuse a stale gallery). Loading the
    same weights in another dtype changes it too, as it changes the embeddings; ``cast_to`` hashes floating tensors
    cast to that dtype instead, which is how :func:`model_identity` recognises the same weights in another dtype.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if cast_to is not None and tensor.is_floating_point():
            tensor = tensor.to(cast_to)
        digest.update(f"{name}:{tuple(tensor.shape)}:{str(tensor.dtype).split('.')[-1]}:".encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()[:16]


def _weights_dtype(model: torch.nn.Module) -> str | None:
    dtypes = sorted({str(t.dtype).split(".")[-1] for t in model.state_dict().values() if t.is_floating_point()})
    return ",".join(dtypes) or None


def model_identity(model: torch.nn.Module, embed_dim: int | None = None) -> dict[str, Any]:
    """What an index records about the model that built it: embedding size, config hash, weights fingerprint (every
    byte of every weight), the weights' dtype and the fingerprints of the weights cast to float16 and bfloat16.

    `name_or_path` and `model_type` are informational (shown in error messages), never compared; the cast
    fingerprints only tell "the same weights in another dtype" apart from "a different model" in the error.
    """
    config = getattr(model, "config", None)
    if embed_dim is None:
        embed_dim = getattr(config, "embed_dim", None)
    return {
        "model_type": getattr(config, "model_type", type(model).__name__),
        "name_or_path": str(getattr(config, "_name_or_path", "") or getattr(model, "name_or_path", "") or ""),
        "embed_dim": None if embed_dim is None else int(embed_dim),
        "config_hash": config_hash(config) if config is not None else None,
        "weights_fingerprint": weights_fingerprint(model),
        "weights_dtype": _weights_dtype(model),
        "weights_fingerprint_as": {name: weights_fingerprint(model, cast_to=dtype)
                                   for name, dtype in _FINGERPRINT_CAST_DTYPES.items()},
    }


TARGET_INPUT_NAMES = ("pixel_values", "image_embeds", "input_ids", "attention_mask")


def encode_targets(
    model: torch.nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    *,
    total: int | None = None,
    desc: str = "Encoding gallery",
    show_progress: bool = True,
) -> torch.Tensor:
    """Target-side embeddings `(N, D)` (float32, CPU) of a gallery given as batches of model inputs.

    Each batch holds the inputs of `model.get_target_features`: `pixel_values` (or `image_embeds`) and, for
    captioned targets, `input_ids` / `attention_mask`; other keys are ignored. The model runs in eval mode under
    `torch.inference_mode` on its own device and floating dtype, and is put back in the mode it was in.
    `total` (the number of items) sizes the progress bar.
    """
    parameter = next(model.parameters())
    was_training = model.training
    model.eval()
    chunks = []
    progress = logging.tqdm(total=total, desc=desc, unit="img", disable=not show_progress)
    try:
        with torch.inference_mode():
            for batch in batches:
                inputs = {}
                for name in TARGET_INPUT_NAMES:
                    value = batch.get(name)
                    if value is None:
                        continue
                    value = value.to(parameter.device)
                    inputs[name] = value.to(parameter.dtype) if value.is_floating_point() else value
                embeds = model.get_target_features(**inputs)
                chunks.append(embeds.float().cpu())
                progress.update(embeds.shape[0])
    finally:
        progress.close()
        model.train(was_training)
    if not chunks:
        raise ValueError("encode_targets: the gallery is empty (no batch); an index needs at least one item")
    return torch.cat(chunks)


def _same_weights_other_dtype(built: dict[str, Any], current: dict[str, Any]) -> str | None:
    """``"float32 vs float16"`` when two identities differ only in the dtype of the same weights, else ``None``."""
    if built.get("weights_fingerprint") == current.get("weights_fingerprint") or built.get("config_hash") != current.get(
        "config_hash"
    ):
        return None
    built_dtype, current_dtype = built.get("weights_dtype"), current.get("weights_dtype")
    if not built_dtype or not current_dtype or built_dtype == current_dtype:
        return None
    built_casts, current_casts = built.get("weights_fingerprint_as") or {}, current.get("weights_fingerprint_as") or {}
    # The lower of the two precisions: a float32 model cast to float16 hashes as the float16 model does.
    for name in (current_dtype, built_dtype):
        if name in _FINGERPRINT_CAST_DTYPES and built_casts.get(name) and built_casts.get(name) == current_casts.get(name):
            return f"index built in {built_dtype}, querying model in {current_dtype}"
    return None


_IDENTITY_KEYS = ("config_hash", "weights_fingerprint", "target_inputs")


def _check_same_model(built: dict[str, Any] | None, other: dict[str, Any] | None, position: int) -> None:
    """Shard `position` was encoded by shard 0's model (same config hash, weights and target inputs), or ValueError."""
    if not built and not other:
        return
    if not built or not other:
        missing = 0 if not built else position
        raise ValueError(
            f"GalleryIndex.merge: shard {missing} records no model identity, so it cannot be checked against the "
            "others; pass check_model=False if you know every shard was encoded by the same model"
        )
    for key in _IDENTITY_KEYS:
        if built.get(key) != other.get(key):
            raise ValueError(
                f"GalleryIndex.merge: shard {position} was encoded by a different model than shard 0 ({key}: "
                f"{other.get(key)!r} vs {built.get(key)!r}); shard 0: {_describe_identity(built)}; shard {position}: "
                f"{_describe_identity(other)}. Re-encode it with shard 0's model, or pass check_model=False"
            )


def _describe_identity(identity: dict[str, Any] | None) -> str:
    if not identity:
        return "<unknown model>"
    name = identity.get("name_or_path") or identity.get("model_type") or "model"
    return (
        f"{name} (embed_dim={identity.get('embed_dim')}, config_hash={identity.get('config_hash')}, "
        f"weights_fingerprint={identity.get('weights_fingerprint')}, dtype={identity.get('weights_dtype')})"
    )


# --------------------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------------------


def _atomic_write(path: str, write_fn) -> None:
    """Write through `write_fn(tmp_path)` to a temporary file in the target folder, then `os.replace` it in.

    The project's other files use one shared atomic writer; a Hub folder cannot import it, so the gallery files use
    their own (`gallery_on_disk.write_file_atomically`).
    """
    write_file_atomically(path, write_fn)


def _write_pending_embeddings(folder: str, shape: tuple[int, ...], dtype: torch.dtype,
                              blocks: Iterable[torch.Tensor]) -> tuple[str, str]:
    """Stream `blocks` into a hidden temporary file in `folder`, then rename it to its pending name (which carries
    the digest, known only once every byte is written). Returns `(digest, pending_path)`."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=EMBEDDINGS_FILE, dir=folder)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        digest = write_embeddings(tmp, shape, dtype, blocks)
        os.chmod(tmp, 0o666 & ~umask)
        pending = _pending_name(folder, EMBEDDINGS_FILE, digest)
        os.replace(tmp, pending)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return digest, pending


def _write_record(folder: str, text: str) -> None:
    """Replace the folder's JSON record with `text` in one `os.replace`: the switch of a save."""

    def write_json(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)

    _atomic_write(os.path.join(folder, INDEX_FILE), write_json)


def _remove_files(paths: Iterable[str]) -> None:
    for name in paths:
        if os.path.exists(name):
            os.remove(name)


def _finish_switch(folder: str, digest: str) -> None:
    """Move the pending files of the save whose JSON (digest `digest`) is in place onto their names: what an
    interrupted save had left to do. On-disk faiss lists must sit under their final name to be read."""
    for name in (EMBEDDINGS_FILE, FAISS_FILE, IVFDATA_FILE):
        pending = _pending_name(folder, name, digest)
        if os.path.isfile(pending):
            os.replace(pending, os.path.join(folder, name))


_REQUIRED_RECORD_KEYS = ("format_version", "num_items", "embed_dim", "ids")
_PENDING_SUFFIX = ".pending"


def _pending_name(folder: str, name: str, digest: str) -> str:
    """Where `save` writes `name` before its switch: hidden, and tied to the new embeddings' digest."""
    return os.path.join(folder, f".{name}.{digest[:16]}{_PENDING_SUFFIX}")


def _remove_stale_pending(folder: str) -> None:
    """Drop pending files of earlier, interrupted saves (they lost the switch, or their JSON was replaced since)."""
    current = None
    try:
        with open(os.path.join(folder, INDEX_FILE), encoding="utf-8") as handle:
            current = json.load(handle).get("embeddings_sha256")
    except (OSError, ValueError, AttributeError):
        pass
    for entry in os.listdir(folder):
        if entry.startswith((".tmp-", ".staged-")) and entry.endswith((EMBEDDINGS_FILE, INDEX_FILE, FAISS_FILE, IVFDATA_FILE)):
            os.remove(os.path.join(folder, entry))  # a temporary file of a save killed while writing it
        elif entry.startswith(".") and entry.endswith(_PENDING_SUFFIX):
            if current and entry.endswith(f".{current[:16]}{_PENDING_SUFFIX}"):
                # The current JSON's own data, never moved into place: finish that switch first.
                final = entry[1:].rsplit(".", 2)[0]
                os.replace(os.path.join(folder, entry), os.path.join(folder, final))
            else:
                os.remove(os.path.join(folder, entry))


_import_faiss = import_faiss


# --------------------------------------------------------------------------------------------------------------------
# The index
# --------------------------------------------------------------------------------------------------------------------


def _default_pq_m(dim: int) -> int:
    """The most sub-quantizers in (64, 32, 16, 8, 4, 2, 1) that divide D and leave ≥ 2 dims each."""
    for candidate in (64, 32, 16, 8, 4, 2, 1):
        if dim % candidate == 0 and dim // candidate >= 2:
            return candidate
    return 1


@dataclass
class TrainedFaiss:
    """A faiss index trained once (IVF centroids, PQ codebooks) and holding no vectors yet, with its settings.

    Train it on a sample (`train_faiss`), `save` it, and give it to every shard's `GalleryIndex.build_faiss(
    trained=...)`: each shard fills its own copy, and `GalleryIndex.merge` joins their inverted lists. On disk it is
    a folder of `trained.faiss` and `trained.json` (the settings and `trained_sha256`, the digest of the serialised
    trained index, which is what makes shards mergeable).
    """

    index: Any
    config: dict[str, Any]

    def save(self, path: str | os.PathLike) -> None:
        faiss = _import_faiss()
        path = os.fspath(path)
        os.makedirs(path, exist_ok=True)
        _atomic_write(os.path.join(path, _TRAINED_FAISS_FILE), lambda tmp: faiss.write_index(self.index, tmp))

        def write_json(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as handle:
                json.dump(self.config, handle, indent=1)

        _atomic_write(os.path.join(path, _TRAINED_CONFIG_FILE), write_json)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainedFaiss:
        faiss = _import_faiss()
        path = os.fspath(path)
        index_path, config_path = os.path.join(path, _TRAINED_FAISS_FILE), os.path.join(path, _TRAINED_CONFIG_FILE)
        for name in (index_path, config_path):
            if not os.path.isfile(name):
                raise ValueError(f"TrainedFaiss.load: {name!r} not found; is {path!r} a folder written by TrainedFaiss.save?")
        with open(config_path, encoding="utf-8") as handle:
            config = json.load(handle)
        index = faiss.read_index(index_path)
        digest = hashlib.sha256(faiss.serialize_index(index).tobytes()).hexdigest()
        if index.ntotal != 0 or digest != config.get("trained_sha256"):
            raise ValueError(
                f"TrainedFaiss.load: {index_path!r} does not match {config_path!r} (digest or vector count differs); "
                "train and save it again"
            )
        return cls(index=index, config=config)


def train_faiss(
    sample: torch.Tensor | np.ndarray,
    kind: str = "ivfpq",
    nlist: int | None = None,
    nprobe: int = 16,
    hnsw_m: int = 32,
    ef_construction: int = 80,
    ef_search: int = 64,
    train_size: int | None = None,
    seed: int = 0,
    pq_m: int | None = None,
    pq_bits: int = 8,
    normalize: bool = True,
) -> TrainedFaiss:
    """An empty faiss index of `kind` trained on `sample` (`(n, D)` rows, L2-normalised here unless normalize=False).

    IVF kinds run k-means on `min(n, train_size or 256·nlist)` rows drawn with `seed` (`nlist` default
    `round(4·√n)` clamped to [1, n // 39]); IVF-PQ also learns `pq_m` codebooks of `2**pq_bits` centroids on the
    residuals. Flat and HNSW need no training. The same sample and seed give the same trained index.
    """
    if kind not in _FAISS_KINDS:
        raise ValueError(f"GalleryIndex.build_faiss kind: expected one of {_FAISS_KINDS}, got {kind!r}")
    faiss = _import_faiss()
    vectors = torch.as_tensor(sample).float()
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise ValueError(f"train_faiss sample: expected a non-empty (n, D) matrix, got shape {tuple(vectors.shape)}")
    if normalize:
        vectors = torch.nn.functional.normalize(vectors, dim=1)
    vectors = np.ascontiguousarray(vectors.numpy())
    num_items, dim = vectors.shape
    config: dict[str, Any] = {"kind": kind, "embed_dim": int(dim)}
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind in ("ivf", "ivfpq"):
        if nlist is None:
            nlist = int(round(4 * math.sqrt(num_items)))
        nlist = max(1, min(int(nlist), max(1, num_items // 39)))
        quantizer = faiss.IndexFlatIP(dim)
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            pq_m = _default_pq_m(dim) if pq_m is None else int(pq_m)
            if pq_m < 1 or dim % pq_m:
                raise ValueError(f"train_faiss pq_m: expected a divisor of D={dim}, got {pq_m}")
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_m, int(pq_bits), faiss.METRIC_INNER_PRODUCT)
            config.update(pq_m=pq_m, pq_bits=int(pq_bits))
        train_size = min(num_items, train_size or 256 * nlist)
        generator = np.random.default_rng(seed)
        chosen = vectors[np.sort(generator.choice(num_items, size=train_size, replace=False))]
        index.cp.seed = int(seed)  # faiss' k-means seed: the same sample and seed give the same centroids
        if kind == "ivfpq":
            index.pq.cp.seed = int(seed)
        index.train(chosen)
        index.nprobe = min(int(nprobe), nlist)
        config.update(nlist=nlist, nprobe=index.nprobe, train_size=train_size, seed=int(seed))
    else:
        index = faiss.IndexHNSWFlat(dim, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(ef_construction)
        index.hnsw.efSearch = int(ef_search)
        config.update(hnsw_m=int(hnsw_m), ef_construction=int(ef_construction), ef_search=int(ef_search))
    if kind in ("ivf", "ivfpq"):
        config["trained_sha256"] = hashlib.sha256(faiss.serialize_index(index).tobytes()).hexdigest()
    return TrainedFaiss(index=index, config=config)


@dataclass
class SearchResult:
    """Top-k hits for a batch of queries.

    Attributes:
        scores: `(Q, k)` float32 cosine similarities, best first.
        positions: `(Q, k)` int64 row numbers into the gallery; `-1` where an approximate backend found fewer than k.
    """

    scores: torch.Tensor
    positions: torch.Tensor


class GalleryIndex:
    """Normalised gallery embeddings + ids + metadata + the identity of the model that encoded them.

    Args:
        embeddings: `(N, D)` target embeddings, or `(N, K, D)` token-level ones (K features per item, scored by the
            maximum over tokens); every D-vector is L2-normalised here (`normalize=True`), N must be ≥ 1.
        ids: one id per row (str or int, unique); defaults to `0..N-1`.
        metadata: one JSON-serialisable dict per row, returned with each hit (keys `id`/`score` are reserved).
        model_identity: from `model_identity(model)`; lets a pipeline refuse an index built by another model.
        dtype: storage dtype, `"float32"` (default), `"float16"` or `"bfloat16"`. Half precision halves memory; rows
            are rounded once when stored (cosines move by ~1e-4 for float16, ~1e-3 for bfloat16) and search stays
            exact with respect to the stored rows: scores are float32 dot products with them.
        normalize: L2-normalise rows (set False only for rows known to be normalised already).
    """

    def __init__(
        self,
        embeddings: torch.Tensor | np.ndarray,
        ids: Sequence[str | int] | None = None,
        metadata: Sequence[dict[str, Any]] | None = None,
        model_identity: dict[str, Any] | None = None,
        dtype: str | torch.dtype = "float32",
        normalize: bool = True,
    ) -> None:
        embeddings = torch.as_tensor(embeddings)
        if embeddings.ndim not in (2, 3) or (embeddings.ndim == 3 and embeddings.shape[1] == 0):
            raise ValueError(
                "GalleryIndex embeddings: expected a 2-D (N, D) or a token-level 3-D (N, K, D) tensor, got shape "
                f"{tuple(embeddings.shape)}"
            )
        if embeddings.shape[0] == 0:
            raise ValueError("GalleryIndex: the gallery is empty (0 embeddings); an index needs at least one item")
        if not embeddings.is_floating_point():
            raise ValueError(f"GalleryIndex embeddings: expected a floating-point tensor, got {embeddings.dtype}")
        storage_dtype = self._resolve_dtype(dtype)
        num_items, dim = embeddings.shape[0], embeddings.shape[-1]
        if normalize:
            embeddings = embeddings.float()
            norms = embeddings.norm(dim=-1, keepdim=True)
            bad_rows = (~torch.isfinite(norms) | (norms == 0)).reshape(num_items, -1).any(dim=1)
            if bool(bad_rows.any()):
                bad = int(bad_rows.nonzero()[0, 0])
                raise ValueError(f"GalleryIndex embeddings: row {bad} has a zero or non-finite norm")
            embeddings = embeddings / norms
        self.embeddings = embeddings.to(storage_dtype).contiguous()

        if ids is None:
            ids = list(range(num_items))
        self.ids = [self._check_id(item, position) for position, item in enumerate(ids)]
        if len(self.ids) != num_items:
            raise ValueError(f"GalleryIndex ids: expected {num_items} ids (one per embedding), got {len(self.ids)}")
        if len(set(self.ids)) != num_items:
            seen, duplicate = set(), None
            for item in self.ids:
                if item in seen:
                    duplicate = item
                    break
                seen.add(item)
            raise ValueError(f"GalleryIndex ids: ids must be unique, {duplicate!r} appears more than once")

        if metadata is not None:
            metadata = [dict(entry) if entry is not None else {} for entry in metadata]
            if len(metadata) != num_items:
                raise ValueError(f"GalleryIndex metadata: expected {num_items} dicts (one per embedding), got {len(metadata)}")
            for position, entry in enumerate(metadata):
                clash = [key for key in _RESERVED_HIT_KEYS if key in entry]
                if clash:
                    raise ValueError(
                        f"GalleryIndex metadata[{position}]: keys {clash} are reserved for every hit's own fields"
                    )
        self.metadata: list[dict[str, Any]] | None = metadata
        self.model_identity = dict(model_identity) if model_identity else None
        if self.model_identity and self.model_identity.get("embed_dim") not in (None, dim):
            raise ValueError(
                f"GalleryIndex: model_identity says embed_dim={self.model_identity['embed_dim']} but the embeddings "
                f"have D={dim}"
            )
        self._faiss_index = None
        self._faiss_config: dict[str, Any] | None = None
        self.backend = "torch"
        # Set by `load(mmap=True)`: the file `self.embeddings` is a view of (searched block by block).
        self._mapped: MappedEmbeddings | None = None

    # ---------------------------------------------------------------------------------------------------------- basics

    @staticmethod
    def _resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
        if isinstance(dtype, torch.dtype):
            if dtype not in _STORAGE_DTYPES.values():
                raise ValueError(f"GalleryIndex dtype: expected one of {list(_STORAGE_DTYPES)}, got {dtype}")
            return dtype
        if dtype not in _STORAGE_DTYPES:
            raise ValueError(f"GalleryIndex dtype: expected one of {list(_STORAGE_DTYPES)}, got {dtype!r}")
        return _STORAGE_DTYPES[dtype]

    @staticmethod
    def _check_id(item: Any, position: int) -> str | int:
        if isinstance(item, np.integer):
            item = int(item)
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise ValueError(f"GalleryIndex ids[{position}]: expected a str or int, got {type(item).__name__} {item!r}")
        return item

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    @property
    def embed_dim(self) -> int:
        return self.embeddings.shape[-1]

    @property
    def tokens_per_item(self) -> int | None:
        """K of a token-level `(N, K, D)` gallery; None for a one-vector-per-item gallery."""
        return self.embeddings.shape[1] if self.embeddings.ndim == 3 else None

    @property
    def dtype(self) -> torch.dtype:
        return self.embeddings.dtype

    @property
    def device(self) -> torch.device:
        return self.embeddings.device

    def to(self, device: str | torch.device) -> GalleryIndex:
        """Move the torch embeddings (exact search runs where they live); a faiss index stays where it is.

        A memory-mapped index moved off the CPU is read whole into the device's memory (and is no longer mapped)."""
        if self._mapped is not None and torch.device(device).type != "cpu":
            logger.info(f"GalleryIndex.to({device}): reading the memory-mapped {self._mapped.path} into {device}")
            self._mapped = None
        self.embeddings = self.embeddings.to(device)
        return self

    @property
    def memory_mapped(self) -> bool:
        """True when the rows are a read-only map of the saved embeddings file (`load(mmap=True)`), not in RAM."""
        return self._mapped is not None

    @property
    def faiss_on_disk(self) -> bool:
        """True when the faiss index's inverted lists are a map of `gallery_faiss.ivfdata` (`merge_on_disk`)."""
        return bool(self._faiss_config and self._faiss_config.get("on_disk"))

    def __repr__(self) -> str:
        return (
            f"GalleryIndex(num_items={len(self)}, embed_dim={self.embed_dim}, tokens_per_item={self.tokens_per_item}, "
            f"dtype={str(self.dtype).split('.')[-1]}, "
            f"backend={self.backend!r}, model={_describe_identity(self.model_identity)})"
        )

    def check_compatible(self, identity: dict[str, Any] | None, check_model: bool = True) -> None:
        """Raise a ValueError naming both models if `identity` (the querying model) cannot search this index.

        A different embedding size always fails. A different config hash or weights fingerprint fails unless
        `check_model=False` (e.g. you know the same weights were loaded in another dtype).
        """
        if not identity or not self.model_identity:
            return
        built, current = self.model_identity, identity
        if built.get("embed_dim") is not None and current.get("embed_dim") is not None:
            if int(built["embed_dim"]) != int(current["embed_dim"]):
                raise ValueError(
                    f"Gallery index embedding size mismatch: the index was built by {_describe_identity(built)} "
                    f"but the querying model is {_describe_identity(current)}. Rebuild the index with this model."
                )
        if not check_model:
            return
        same_weights_other_dtype = _same_weights_other_dtype(built, current)
        if same_weights_other_dtype is not None:
            raise ValueError(
                f"Gallery index was built by the same weights in a different dtype ({same_weights_other_dtype}): "
                f"index built by {_describe_identity(built)}; querying model is {_describe_identity(current)}. The "
                "embeddings differ by rounding only: rebuild the index in this dtype for exact scores, or pass "
                "check_model=False to search it as is."
            )
        for key in ("config_hash", "weights_fingerprint"):
            if built.get(key) and current.get(key) and built[key] != current[key]:
                raise ValueError(
                    f"Gallery index was built by a different model ({key} differs): index built by "
                    f"{_describe_identity(built)}; querying model is {_describe_identity(current)}. Rebuild the "
                    "index with this model, or pass check_model=False if you know the embeddings are compatible."
                )

    # ---------------------------------------------------------------------------------------------------------- growing

    def add(
        self,
        embeddings: torch.Tensor | np.ndarray,
        ids: Sequence[str | int] | None = None,
        metadata: Sequence[dict[str, Any]] | None = None,
        *,
        model_identity: dict[str, Any] | None = None,
        check_model: bool = True,
    ) -> None:
        """Append rows in place: `(M, D)` (or `(M, K, D)` for a token-level index) embeddings, L2-normalised and
        stored in this index's dtype exactly as the constructor does, so `index.add(b)` after `GalleryIndex(a)`
        holds the same bytes as `GalleryIndex(cat(a, b))`.

        Args:
            embeddings: the new rows; D (and K) must be this index's.
            ids: one id per new row, unique across the whole index; default `len(self) .. len(self) + M - 1`.
            metadata: one dict per new row. Rows of either side without metadata get `{}`.
            model_identity: the identity of the model that encoded the new rows (`model_identity(model)`); when
                given, it is checked with `check_compatible` (as a query model would be) before anything changes.
        A faiss index built on this gallery gets the new vectors too (trained indexes are not retrained: add rows
        from the distribution the quantizer was trained on). Nothing changes when a check fails.
        """
        if self.memory_mapped or self.faiss_on_disk:
            raise ValueError(
                "GalleryIndex.add: this index is read-only on disk (memory-mapped rows or on-disk faiss lists); save "
                "the new rows as a shard and join them with GalleryIndex.merge_on_disk([...])"
            )
        start = len(self)
        if ids is None:
            ids = list(range(start, start + int(torch.as_tensor(embeddings).shape[0])))
        if model_identity is not None:
            self.check_compatible(model_identity, check_model=check_model)
        try:
            part = GalleryIndex(embeddings, ids=ids, metadata=metadata, dtype=self.dtype)
        except ValueError as error:
            raise ValueError(f"GalleryIndex.add: {error}") from None
        self._check_same_layout(part, "GalleryIndex.add: the new rows")
        clash = set(self.ids).intersection(part.ids)
        if clash:
            first = next(item for item in part.ids if item in clash)
            raise ValueError(
                f"GalleryIndex.add ids: {first!r} is already in the index ({len(clash)} new id(s) clash); ids must be "
                "unique across the index"
            )
        if self._faiss_index is not None:
            self._faiss_index.add(self._faiss_vectors(part.embeddings))
        self.embeddings = torch.cat([self.embeddings, part.embeddings.to(self.embeddings.device)])
        if self.metadata is not None or part.metadata is not None:
            old = self.metadata if self.metadata is not None else [{} for _ in range(start)]
            self.metadata = old + (part.metadata if part.metadata is not None else [{} for _ in range(len(part))])
        self.ids = self.ids + part.ids

    def _check_same_layout(self, other: GalleryIndex, name: str) -> None:
        """Same embedding size, tokens per item and storage dtype, or a ValueError naming `name`."""
        for field in ("embed_dim", "tokens_per_item", "dtype"):
            mine, theirs = getattr(self, field), getattr(other, field)
            if mine != theirs:
                raise ValueError(f"{name} have {field}={theirs}, but the index has {field}={mine}")

    @classmethod
    def merge(cls, indexes: Sequence[GalleryIndex], check_model: bool = True) -> GalleryIndex:
        """One index from shards (e.g. built by several processes or machines), rows in shard order.

        The result equals the index built in one go from the concatenated inputs: the same stored bytes, ids,
        metadata and search results (rows are normalised one by one, so a row does not depend on its shard).

        Refused with a ValueError naming the shard: an empty list, a non-index, a different embed_dim /
        tokens_per_item / storage dtype, a duplicate id (both shards named) and, unless `check_model=False`, a shard
        encoded by another model (config hash, weights fingerprint or target inputs differ from shard 0's) or without
        a recorded model identity while others have one.

        faiss: when every shard carries an IVF index trained once and shared (same `trained_sha256` in its
        `faiss_config`, see `build_faiss(trained=...)`), their inverted lists are merged (`merge_from`), exactly the
        index one `add` of all rows would give; any other faiss indexes are dropped (call `build_faiss` on the result).
        """
        shards = list(indexes)
        cls._check_mergeable(shards, check_model)
        first = shards[0]
        merged = cls(
            torch.cat([shard.embeddings.cpu() for shard in shards]),
            ids=[item for shard in shards for item in shard.ids],
            metadata=cls._merged_metadata(shards),
            model_identity=first.model_identity,
            dtype=first.dtype,
            normalize=False,  # each shard's rows are normalised (and rounded) already, exactly as in one go
        )
        merged.to(first.device)
        merged._merge_faiss(shards)
        return merged

    @staticmethod
    def _check_mergeable(shards: Sequence[GalleryIndex], check_model: bool) -> None:
        """The refusals of `merge` (see there): ValueError naming the shard's position."""
        if not shards:
            raise ValueError("GalleryIndex.merge: no shards given (expected a non-empty list of GalleryIndex)")
        for position, shard in enumerate(shards):
            if not isinstance(shard, GalleryIndex):
                raise ValueError(f"GalleryIndex.merge: shard {position} is a {type(shard).__name__}, not a GalleryIndex")
        first = shards[0]
        for position, shard in enumerate(shards[1:], start=1):
            first._check_same_layout(shard, f"GalleryIndex.merge: shard {position}'s embeddings")
            if check_model:
                _check_same_model(first.model_identity, shard.model_identity, position)
        owner: dict[Any, int] = {}
        for position, shard in enumerate(shards):
            for item in shard.ids:
                if item in owner:
                    raise ValueError(
                        f"GalleryIndex.merge: id {item!r} is in shard {owner[item]} and in shard {position}; ids must "
                        "be unique across shards"
                    )
                owner[item] = position

    @staticmethod
    def _merged_metadata(shards: Sequence[GalleryIndex]) -> list[dict[str, Any]] | None:
        if not any(shard.metadata is not None for shard in shards):
            return None
        return [entry for shard in shards for entry in (shard.metadata or [{} for _ in range(len(shard))])]

    @classmethod
    def merge_on_disk(
        cls,
        shards: Sequence[str | os.PathLike],
        path: str | os.PathLike,
        check_model: bool = True,
        verify: bool = True,
    ) -> GalleryIndex:
        """Join saved shard folders into one saved index at `path` without holding the gallery in memory; returns it
        opened memory-mapped (`load(path, mmap=True)`).

        Rows are copied block by block from each shard's memory-mapped embeddings into one embeddings file (the
        format `save` writes, so the folder is an ordinary saved index). When the shards carry IVF / IVF-PQ faiss
        indexes filled from one trained index (`build_faiss(trained=...)`), their inverted lists are merged into
        one `gallery_faiss.ivfdata` file (`faiss.contrib.ondisk.merge_ondisk`), which `load` maps instead of
        reading: a search reads only the probed lists, and an exact rerank (`set_faiss_search_params(rerank=R)`)
        reads only its `R · k` candidate rows from the mapped embeddings. The result equals `merge` of the same
        shards: the same rows, ids, metadata and (faiss) search results.

        The files are written under pending names and switched by one JSON replace, as `save` does. Refused with a
        ValueError naming the shard: everything `merge` refuses; `path` being one of the shards; some shards with a
        faiss index and some without; faiss indexes of another kind, or trained differently (their recorded
        `trained_sha256`, then their coarse centroids and PQ codebooks, are compared); a shard that is itself on
        disk. `verify` checks each shard's embeddings digest as `load` does (one streaming read of every shard).
        """
        folders = [os.fspath(shard) for shard in shards]
        path = os.fspath(path)
        if not folders:
            raise ValueError("GalleryIndex.merge_on_disk: no shard folders given")
        if os.path.abspath(path) in {os.path.abspath(folder) for folder in folders}:
            raise ValueError(f"GalleryIndex.merge_on_disk: the output {path!r} is one of the shards; write a new folder")
        opened = [cls.load(folder, mmap=True, load_faiss=False, verify=verify) for folder in folders]
        try:
            cls._check_mergeable(opened, check_model)
        except ValueError as error:
            named = ", ".join(f"{position}={folder!r}" for position, folder in enumerate(folders))
            raise ValueError(f"GalleryIndex.merge_on_disk: {error} (shards: {named})") from None
        configs = [cls._read_record(folder)[1].get("faiss") for folder in folders]
        faiss_files = []
        if any(configs):
            for position, (folder, config) in enumerate(zip(folders, configs)):
                faiss_path = os.path.join(folder, FAISS_FILE)
                if not config or not os.path.isfile(faiss_path):
                    raise ValueError(
                        f"GalleryIndex.merge_on_disk: shard {position} ({folder!r}) has no faiss index but shard "
                        f"{configs.index(next(c for c in configs if c))} has; fill every shard from the trained index"
                    )
                if config.get("kind") not in ("ivf", "ivfpq") or config.get("on_disk"):
                    raise ValueError(
                        f"GalleryIndex.merge_on_disk: shard {position} ({folder!r}) holds a faiss index of kind "
                        f"{config.get('kind')!r}{' on disk' if config.get('on_disk') else ''}; expected an in-file "
                        "'ivf' or 'ivfpq' index filled by build_faiss(trained=...)"
                    )
                if config.get("trained_sha256") != configs[0].get("trained_sha256"):
                    raise ValueError(
                        f"GalleryIndex.merge_on_disk: shard {position} ({faiss_path!r}) was filled from another trained "
                        f"index than shard 0 (trained_sha256 {config.get('trained_sha256')!r} vs "
                        f"{configs[0].get('trained_sha256')!r}); fill every shard from one train_faiss result"
                    )
                faiss_files.append(faiss_path)
        first = opened[0]
        shape = (sum(len(shard) for shard in opened), *first.embeddings.shape[1:])
        os.makedirs(path, exist_ok=True)
        _remove_stale_pending(path)
        digest, embeddings_pending = _write_pending_embeddings(
            path, shape, first.dtype,
            itertools.chain.from_iterable(tensor_blocks(shard.embeddings, shard._mapped) for shard in opened),
        )
        pending = [(embeddings_pending, os.path.join(path, EMBEDDINGS_FILE))]
        faiss_config = None
        try:
            if faiss_files:
                index_pending = _pending_name(path, FAISS_FILE, digest)
                ivfdata_pending = _pending_name(path, IVFDATA_FILE, digest)
                pending += [(index_pending, os.path.join(path, FAISS_FILE)),
                            (ivfdata_pending, os.path.join(path, IVFDATA_FILE))]
                staged_index = os.path.join(path, ".staged-" + FAISS_FILE)
                staged_ivfdata = os.path.join(path, ".staged-" + IVFDATA_FILE)
                try:
                    ntotal = merge_ivf_on_disk(faiss_files, staged_index, staged_ivfdata, IVFDATA_FILE)
                except ValueError as error:
                    raise ValueError(f"GalleryIndex.merge_on_disk: {error}") from None
                expected = shape[0] * (first.tokens_per_item or 1)
                if ntotal != expected:
                    raise ValueError(
                        f"GalleryIndex.merge_on_disk: the shards' faiss indexes hold {ntotal} vectors, their embeddings "
                        f"{expected}; a shard's {FAISS_FILE} does not match its rows (rebuild that shard)"
                    )
                os.replace(staged_ivfdata, ivfdata_pending)
                os.replace(staged_index, index_pending)
                faiss_config = {key: value for key, value in configs[0].items() if key != "rerank"}
                faiss_config.update(on_disk=True, ivfdata=IVFDATA_FILE)
            record = {
                "format_version": FORMAT_VERSION,
                "num_items": shape[0],
                "embed_dim": first.embed_dim,
                "tokens_per_item": first.tokens_per_item,
                "dtype": str(first.dtype).split(".")[-1],
                "ids": [item for shard in opened for item in shard.ids],
                "metadata": cls._merged_metadata(opened),
                "model_identity": first.model_identity,
                "faiss": faiss_config,
                "embeddings_sha256": digest,
            }
            _write_record(path, json.dumps(record, ensure_ascii=False))  # the switch
        except BaseException:
            _remove_files([pending_path for pending_path, _ in pending]
                          + [os.path.join(path, ".staged-" + name) for name in (FAISS_FILE, IVFDATA_FILE)])
            raise
        for pending_path, final_path in pending:
            os.replace(pending_path, final_path)
        if not faiss_files:  # an earlier save's faiss files, not these rows'
            _remove_files([os.path.join(path, FAISS_FILE), os.path.join(path, IVFDATA_FILE)])
        return cls.load(path, mmap=True, verify=False)  # written and digested just now

    def _merge_faiss(self, shards: Sequence[GalleryIndex]) -> None:
        configs = [shard._faiss_config for shard in shards]
        if any(shard._faiss_index is None for shard in shards):
            if any(config is not None for config in configs):
                logger.warning("GalleryIndex.merge: not every shard has a faiss index; the merged index has none")
            return
        trained = {config.get("trained_sha256") for config in configs}
        kinds = {config.get("kind") for config in configs}
        if len(trained) != 1 or None in trained or not kinds <= {"ivf", "ivfpq"}:
            logger.warning(
                "GalleryIndex.merge: the shards' faiss indexes were not filled from one trained index "
                "(build_faiss(trained=...)); the merged index has none: call build_faiss on it"
            )
            return
        faiss = _import_faiss()
        merged = faiss.clone_index(shards[0]._faiss_index)
        for shard in shards[1:]:
            merged.merge_from(faiss.clone_index(shard._faiss_index), merged.ntotal)
        self._faiss_index = merged
        self._faiss_config = dict(configs[0])
        self.set_faiss_search_params(nprobe=self._faiss_config.get("nprobe"))
        self.backend = "faiss"

    # ---------------------------------------------------------------------------------------------------------- search

    def search(
        self,
        query_embeds: torch.Tensor | np.ndarray,
        top_k: int = 10,
        backend: str | None = None,
    ) -> SearchResult:
        """Top-k gallery rows by cosine similarity for each query.

        Args:
            query_embeds: `(Q, D)` or `(D,)`; normalised here, so scores are cosines in [-1, 1].
            top_k: hits per query; values above the gallery size are clamped to `len(self)`.
            backend: `"torch"` (exact), `"faiss"` (the index built by `build_faiss`), or None for `self.backend`.

        Returns:
            `SearchResult` with `(Q, k)` scores (float32, descending) and positions (int64), on CPU.
        """
        queries = torch.as_tensor(query_embeds)
        if queries.ndim == 1:
            queries = queries.unsqueeze(0)
        if queries.ndim != 2 or queries.shape[1] != self.embed_dim:
            raise ValueError(
                f"GalleryIndex.search query_embeds: expected shape (Q, {self.embed_dim}), got {tuple(queries.shape)}"
            )
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
            raise ValueError(f"GalleryIndex.search top_k: expected a positive int, got {top_k!r}")
        top_k = min(int(top_k), len(self))
        queries = torch.nn.functional.normalize(queries.float(), dim=1)
        backend = backend or self.backend
        if backend == "torch" and self._mapped is not None:
            scores, positions = self._search_mapped(queries, top_k)
        elif backend == "torch":
            scores, positions = exact_search(self.embeddings, queries, top_k)
        elif backend == "faiss":
            scores, positions = self._search_faiss(queries, top_k)
        else:
            raise ValueError(f"GalleryIndex.search backend: expected 'torch' or 'faiss', got {backend!r}")
        return SearchResult(scores=scores.float().cpu(), positions=positions.long().cpu())

    def _search_mapped(self, queries: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact search over memory-mapped rows: the kernel runs on blocks of about `STREAM_BLOCK_BYTES`, each block's
        pages are handed back before the next, and the blocks' top-k lists are merged. Resident memory: one block.

        Where the kernel's own block fits in a stream block (many queries), stream blocks are a multiple of it, so the
        same matrix products run as over the whole matrix; for a few queries the kernel would scan millions of rows
        in one product, and the stream block is smaller. Results equal the in-memory search bit for bit in the tests
        (1, 5 and 70 queries; float32, float16, bfloat16; vector and token rows)."""
        rows = stream_rows(len(self), self._mapped.row_bytes, multiple=block_rows(queries.shape[0], self.tokens_per_item))
        best_scores = best_positions = None
        for start, block in self._mapped.blocks(rows):
            scores, positions = exact_search(block, queries, min(top_k, block.shape[0]))
            positions += start
            if best_scores is not None:
                scores, positions = torch.cat([best_scores, scores], dim=1), torch.cat([best_positions, positions], dim=1)
                scores, order = scores.topk(top_k, dim=1)
                positions = positions.gather(1, order)
            best_scores, best_positions = scores, positions
        return best_scores, best_positions

    def similarities(self, query_embeds: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The full `(Q, N)` cosine matrix of the queries against every stored row (float32, CPU): what ranking
        protocols (CIRR, FashionIQ, CIRCO) score. Use `search` when only the top hits are needed."""
        queries = torch.as_tensor(query_embeds)
        if queries.ndim != 2 or queries.shape[1] != self.embed_dim:
            raise ValueError(
                f"GalleryIndex.similarities query_embeds: expected shape (Q, {self.embed_dim}), got {tuple(queries.shape)}"
            )
        queries = torch.nn.functional.normalize(queries.float(), dim=1).to(self.embeddings.device)
        if self._mapped is not None:  # block by block, each block's pages handed back after use
            rows = stream_rows(len(self), self._mapped.row_bytes)
            return torch.cat([
                (queries @ block.float().T) if block.ndim == 2 else token_scores(queries, block)
                for _, block in self._mapped.blocks(rows)
            ], dim=1)
        if self.tokens_per_item is None:
            return (queries @ self.embeddings.float().T).cpu()
        rows = block_rows(queries.shape[0], self.tokens_per_item)
        return torch.cat(
            [token_scores(queries, self.embeddings[start : start + rows]) for start in range(0, len(self), rows)],
            dim=1,
        ).cpu()

    # ---------------------------------------------------------------------------------------------------------- faiss

    def _faiss_vectors(self, embeddings: torch.Tensor | None = None) -> np.ndarray:
        """The float32 `(rows, D)` matrix faiss indexes: one row per item, or per token of a token-level gallery."""
        embeddings = self.embeddings if embeddings is None else embeddings
        return np.ascontiguousarray(embeddings.float().reshape(-1, self.embed_dim).cpu().numpy())

    def build_faiss(
        self,
        kind: str = "flat",
        nlist: int | None = None,
        nprobe: int = 16,
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 64,
        train_size: int | None = None,
        seed: int = 0,
        pq_m: int | None = None,
        pq_bits: int = 8,
        trained: TrainedFaiss | str | os.PathLike | None = None,
    ) -> GalleryIndex:
        """Build a faiss index over the embeddings and make `"faiss"` the default search backend.

        Args:
            kind: `"flat"` (exact inner product, `IndexFlatIP`), `"ivf"` (`IndexIVFFlat`: k-means into `nlist` cells,
                search the `nprobe` nearest cells), `"ivfpq"` (`IndexIVFPQ`: the same cells, each vector stored as
                `pq_m` codes of `pq_bits` bits — `pq_m · pq_bits / 8` bytes instead of `4·D` — scored by asymmetric
                distance) or `"hnsw"` (`IndexHNSWFlat`: graph with `hnsw_m` links per node, `ef_construction` /
                `ef_search` beam widths).
            nlist: IVF cells; default `round(4·√N)` clamped to [1, N // 39] (faiss wants ≥ 39 training points per cell).
            train_size: IVF k-means sample size (default `min(N, 256·nlist)`).
            pq_m: IVF-PQ sub-quantizers (must divide D); default the most of 64, 32, 16, 8, 4, 2, 1 that divides D
                and leaves at least 2 dimensions per sub-quantizer. `pq_bits`: bits per code (8: 256 centroids).
            trained: a `TrainedFaiss` (or its saved folder) from `train_faiss`: the IVF / IVF-PQ index trained once on
                a sample, then filled here with this gallery's rows. Shards filled from the same trained index merge
                exactly (`GalleryIndex.merge`), which is how faiss builds galleries larger than one machine's memory.
        The approximate kinds trade recall for speed; measure recall@k against `backend="torch"` for your data.
        faiss keeps its own copy of the vectors (float32, or PQ codes). A token-level gallery indexes every token
        vector; search then takes the `top_k · K` best tokens (which hold every true top-k item's best token when
        the token search is exact) and rescores their items exactly by the maximum over tokens.
        """
        faiss = _import_faiss()
        vectors = self._faiss_vectors()
        if trained is not None:
            if not isinstance(trained, TrainedFaiss):
                trained = TrainedFaiss.load(trained)
            if trained.config["embed_dim"] != self.embed_dim:
                raise ValueError(
                    f"GalleryIndex.build_faiss trained: the trained index has D={trained.config['embed_dim']}, the "
                    f"gallery D={self.embed_dim}"
                )
            index = faiss.clone_index(trained.index)
            config = dict(trained.config)
        else:
            trained = train_faiss(
                vectors, kind=kind, nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m, ef_construction=ef_construction,
                ef_search=ef_search, train_size=train_size, seed=seed, pq_m=pq_m, pq_bits=pq_bits, normalize=False,
            )
            index, config = trained.index, dict(trained.config)
        config.pop("embed_dim", None)
        index.add(vectors)
        self._faiss_index = index
        self._faiss_config = config
        self.backend = "faiss"
        self.set_faiss_search_params(nprobe=config.get("nprobe"), ef_search=config.get("ef_search"))
        return self

    def set_faiss_search_params(
        self, nprobe: int | None = None, ef_search: int | None = None, rerank: int | None = None
    ) -> None:
        """Change the recall/speed trade-off of an approximate faiss index without rebuilding it.

        `rerank` (R ≥ 1; 0 turns it off): faiss returns `R · top_k` candidates, which are rescored exactly against
        the stored embeddings (`q̂ · ĝ`) and cut to `top_k`. It recovers the ranking PQ codes blur, at the cost of
        `R · top_k` dot products per query; it needs the stored embeddings (which every GalleryIndex keeps).
        """
        if self._faiss_index is None:
            raise ValueError("GalleryIndex: no faiss index; call build_faiss(...) first")
        if rerank is not None:
            if isinstance(rerank, bool) or not isinstance(rerank, int) or rerank < 0:
                raise ValueError(f"GalleryIndex rerank: expected an int >= 0, got {rerank!r}")
            self._faiss_config["rerank"] = int(rerank)
        if nprobe is not None and self._faiss_config["kind"] in ("ivf", "ivfpq"):
            self._faiss_index.nprobe = int(nprobe)
            self._faiss_config["nprobe"] = int(nprobe)
        if ef_search is not None and self._faiss_config["kind"] == "hnsw":
            self._faiss_index.hnsw.efSearch = int(ef_search)
            self._faiss_config["ef_search"] = int(ef_search)

    @property
    def faiss_config(self) -> dict[str, Any] | None:
        return None if self._faiss_config is None else dict(self._faiss_config)

    def _search_faiss(self, queries: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._faiss_index is None:
            raise ValueError("GalleryIndex.search backend='faiss': no faiss index; call build_faiss(...) first")
        tokens = self.tokens_per_item
        rerank = int(self._faiss_config.get("rerank") or 0)
        if tokens is None and rerank:
            width = min(top_k * rerank, self._faiss_index.ntotal)
            _, candidates = self._faiss_index.search(np.ascontiguousarray(queries.cpu().numpy()), width)
            candidates = torch.from_numpy(candidates)
            missing = candidates < 0  # faiss pads a short candidate list with -1
            if self._mapped is not None:  # only the candidate rows are read from the map
                rows = self._mapped.gather(candidates.clamp(min=0)).float()
            else:
                rows = self.embeddings[candidates.clamp(min=0).to(self.embeddings.device)].float()  # (Q, width, D)
            exact = torch.bmm(rows, queries.to(rows.device).unsqueeze(2)).squeeze(2).cpu()
            exact[missing] = float("-inf")
            scores, order = exact.topk(min(top_k, width), dim=1)
            positions = candidates.gather(1, order)
            positions[scores == float("-inf")] = -1
            return scores, positions
        if tokens is None:
            scores, positions = self._faiss_index.search(np.ascontiguousarray(queries.cpu().numpy()), top_k)
            return torch.from_numpy(scores), torch.from_numpy(positions)
        # Token vectors are searched; their items are the candidates, rescored exactly (max over tokens).
        width = min(top_k * tokens, self._faiss_index.ntotal)
        _, token_positions = self._faiss_index.search(np.ascontiguousarray(queries.cpu().numpy()), width)
        candidates = torch.from_numpy(token_positions).clamp(min=0) // tokens  # faiss pads a short list with -1
        queries = queries.to(self.embeddings.device)
        best_scores, best_positions = [], []
        for row in range(queries.shape[0]):
            items = torch.unique(candidates[row]).to(self.embeddings.device)
            stored = self._mapped.gather(items) if self._mapped is not None else self.embeddings[items]
            item_scores = token_scores(queries[row : row + 1], stored)[0]
            order = item_scores.topk(min(top_k, items.numel())).indices
            score, position = item_scores[order], items[order]
            if position.numel() < top_k:  # an approximate index found fewer distinct items: pad as faiss does
                pad = top_k - position.numel()
                score = torch.cat([score, torch.full((pad,), float("-inf"), device=score.device)])
                position = torch.cat([position, torch.full((pad,), -1, dtype=position.dtype, device=position.device)])
            best_scores.append(score.cpu())
            best_positions.append(position.cpu())
        return torch.stack(best_scores), torch.stack(best_positions)

    # ---------------------------------------------------------------------------------------------------------- hits

    def hits(self, result: SearchResult) -> list[list[dict[str, Any]]]:
        """Turn a `SearchResult` into ranked `{"id", "score", **metadata}` dicts, one list per query."""
        output = []
        for row_scores, row_positions in zip(result.scores.tolist(), result.positions.tolist()):
            row = []
            for score, position in zip(row_scores, row_positions):
                if position < 0:  # an approximate backend returned fewer than k candidates
                    continue
                hit = {"id": self.ids[position], "score": float(score)}
                if self.metadata is not None:
                    hit.update(self.metadata[position])
                row.append(hit)
            output.append(row)
        return output

    # ---------------------------------------------------------------------------------------------------------- export

    def export(self, path: str | os.PathLike) -> list[str]:
        """Write the stored embeddings (as float32) with their ids and metadata for other tools; returns the files.

        * `*.npy`: the `(N, D)` (or `(N, K, D)`) matrix via `numpy.save`, and beside it `<stem>.jsonl`, one line
          per row in row order: `{"id": ..., **metadata}`.
        * `*.parquet`: one table, row i = `id` (string or int64), `embedding` (a list of D float32; K·D for a
          token-level index) and one column per metadata key; the schema metadata records `embed_dim`,
          `tokens_per_item` and the model identity (JSON). Needs `pyarrow` (installed with `datasets`).
        Files are written atomically. `GalleryIndex.from_dataset(datasets.Dataset.from_parquet(path))` reads a
        Parquet export back.
        """
        path = os.fspath(path)
        matrix = self.embeddings.float().cpu().numpy()
        rows = [{"id": item, **(self.metadata[position] if self.metadata else {})} for position, item in enumerate(self.ids)]
        if path.endswith(".npy"):
            sidecar = path[: -len(".npy")] + ".jsonl"

            def write_npy(tmp: str) -> None:
                with open(tmp, "wb") as handle:
                    np.save(handle, matrix)

            def write_rows(tmp: str) -> None:
                with open(tmp, "w", encoding="utf-8") as handle:
                    for row in rows:
                        handle.write(json.dumps(row, ensure_ascii=False) + "\n")

            _atomic_write(path, write_npy)
            _atomic_write(sidecar, write_rows)
            return [path, sidecar]
        if path.endswith(".parquet"):
            try:
                import pyarrow as pa  # noqa: PLC0415 - optional, only for Parquet export
                import pyarrow.parquet as pq  # noqa: PLC0415
            except ImportError as error:
                raise ImportError("GalleryIndex.export to Parquet needs pyarrow: `pip install pyarrow`") from error
            flat = matrix.reshape(len(self), -1)
            columns = {
                "id": pa.array(self.ids),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1), pa.float32()), flat.shape[1]),
            }
            keys = sorted({key for entry in (self.metadata or []) for key in entry})
            for key in keys:
                columns[key] = pa.array([entry.get(key) for entry in self.metadata])
            schema_metadata = {
                "embed_dim": str(self.embed_dim),
                "tokens_per_item": str(self.tokens_per_item or ""),
                "model_identity": json.dumps(self.model_identity or {}),
            }
            table = pa.table(columns).replace_schema_metadata(schema_metadata)
            _atomic_write(path, lambda tmp: pq.write_table(table, tmp))
            return [path]
        raise ValueError(f"GalleryIndex.export: {path!r} must end in .npy or .parquet")

    def to_dataset(self) -> Any:
        """A `datasets.Dataset` with columns `id`, `embedding` (float32 lists) and one per metadata key.

        For `datasets`' own vector search over the same vectors::

            dataset = index.to_dataset()
            dataset.add_faiss_index("embedding", metric_type=faiss.METRIC_INNER_PRODUCT)  # rows are normalised
            scores, rows = dataset.get_nearest_examples("embedding", query_vector, k=10)

        (`GalleryIndex.search` ranks the same rows with the same cosine scores, and checks model identity.)
        """
        try:
            import datasets  # noqa: PLC0415 - optional: inside `try`, so a Hub folder's import check exempts it
        except ImportError as error:
            raise ImportError("GalleryIndex.to_dataset needs datasets: `pip install datasets`") from error

        if self.tokens_per_item is not None:
            raise ValueError("GalleryIndex.to_dataset: a token-level (N, K, D) index has no one-vector rows")
        columns: dict[str, Any] = {"id": list(self.ids), "embedding": self.embeddings.float().cpu().numpy()}
        for key in sorted({key for entry in (self.metadata or []) for key in entry}):
            columns[key] = [entry.get(key) for entry in self.metadata]
        return datasets.Dataset.from_dict(columns)

    @classmethod
    def from_dataset(
        cls,
        dataset: Any,
        embedding_column: str = "embedding",
        id_column: str | None = "id",
        metadata_columns: Sequence[str] | None = None,
        model_identity: dict[str, Any] | None = None,
        dtype: str | torch.dtype = "float32",
        normalize: bool = True,
    ) -> GalleryIndex:
        """An index from a `datasets.Dataset` (or anything with `column_names` and column access) holding vectors:
        a Parquet export read back (`Dataset.from_parquet`), or embeddings computed elsewhere.

        `metadata_columns` default: every column but the embedding and id ones. Rows are L2-normalised unless
        `normalize=False` (an export's rows are normalised already; re-normalising moves their last bits). The
        model identity is not in a Dataset: pass it (a Parquet export keeps it in its schema metadata,
        `pyarrow.parquet.read_schema(path).metadata[b"model_identity"]`).
        """
        columns = list(dataset.column_names)
        if embedding_column not in columns:
            raise ValueError(f"GalleryIndex.from_dataset: column {embedding_column!r} not in the dataset (columns: {columns})")
        if id_column is not None and id_column not in columns:
            raise ValueError(f"GalleryIndex.from_dataset: id column {id_column!r} not in the dataset (columns: {columns})")
        embeddings = torch.as_tensor(np.asarray(dataset.with_format("numpy")[embedding_column], dtype=np.float32))
        if metadata_columns is None:
            metadata_columns = [name for name in columns if name not in (embedding_column, id_column)]
        metadata = None
        if metadata_columns:
            values = {name: list(dataset[name]) for name in metadata_columns}
            metadata = [{name: values[name][row] for name in metadata_columns} for row in range(len(embeddings))]
        return cls(
            embeddings,
            ids=None if id_column is None else list(dataset[id_column]),
            metadata=metadata,
            model_identity=model_identity,
            dtype=dtype,
            normalize=normalize,
        )

    # ---------------------------------------------------------------------------------------------------------- disk

    def save(self, path: str | os.PathLike) -> None:
        """Write the index into folder `path` (created if needed), switching from the old index to the new at one point.

        The JSON record is the switch. New data files are first written beside their final names as hidden
        `.<name>.<digest>.pending` files; then `gallery_index.json` (which carries the digest of the new embeddings) is
        replaced in one `os.replace`; then the pending files are moved onto their names. A process killed at any moment
        leaves a folder that `load` reads as the old index (JSON not yet replaced: pending files are ignored) or as the
        new one (JSON replaced: `load` takes the pending files that match its digest). A failed save leaves the
        previous index in place.
        """
        path = os.fspath(path)
        if os.path.isfile(path):
            raise ValueError(f"GalleryIndex.save: {path!r} is a file; expected a folder")
        os.makedirs(path, exist_ok=True)
        record = {
            "format_version": FORMAT_VERSION,
            "num_items": len(self),
            "embed_dim": self.embed_dim,
            "tokens_per_item": self.tokens_per_item,
            "dtype": str(self.dtype).split(".")[-1],
            "ids": self.ids,
            "metadata": self.metadata,
            "model_identity": self.model_identity,
            "faiss": self._faiss_config,
        }
        embeddings = self.embeddings.detach().cpu().contiguous()
        try:
            json.dumps(record, ensure_ascii=False)
        except TypeError as error:
            raise ValueError(f"GalleryIndex.save: ids and metadata must be JSON-serialisable ({error})") from error
        _remove_stale_pending(path)
        # Streamed block by block (a memory-mapped index is never read whole); the same bytes as safetensors'
        # save_file, and the digest comes with the write.
        digest, embeddings_pending = _write_pending_embeddings(
            path, tuple(embeddings.shape), embeddings.dtype, tensor_blocks(embeddings, self._mapped)
        )
        record["embeddings_sha256"] = digest
        text = json.dumps(record, ensure_ascii=False)
        pending = [(embeddings_pending, os.path.join(path, EMBEDDINGS_FILE))]
        faiss_path = os.path.join(path, FAISS_FILE)
        ivfdata_path = os.path.join(path, IVFDATA_FILE)
        try:
            if self._faiss_index is not None and self.faiss_on_disk:
                faiss = _import_faiss()
                source = faiss.downcast_InvertedLists(faiss.extract_index_ivf(self._faiss_index).invlists).filename
                pending.append((_pending_name(path, IVFDATA_FILE, digest), ivfdata_path))
                _atomic_write(pending[-1][0], lambda tmp: shutil.copyfile(source, tmp))
                pending.append((_pending_name(path, FAISS_FILE, digest), faiss_path))
                _atomic_write(pending[-1][0], lambda tmp: write_ivf_on_disk(self._faiss_index, tmp, IVFDATA_FILE))
            elif self._faiss_index is not None:
                faiss = _import_faiss()
                pending.append((_pending_name(path, FAISS_FILE, digest), faiss_path))
                _atomic_write(pending[-1][0], lambda tmp: faiss.write_index(self._faiss_index, tmp))

            _write_record(path, text)  # the switch
        except BaseException:
            _remove_files([pending_path for pending_path, _ in pending])
            raise
        for pending_path, final_path in pending:
            os.replace(pending_path, final_path)
        if self._faiss_index is None and os.path.exists(faiss_path):
            os.remove(faiss_path)  # a stale faiss file from an earlier save would not match these embeddings
        if not self.faiss_on_disk and os.path.exists(ivfdata_path):
            os.remove(ivfdata_path)

    @staticmethod
    def _read_record(path: str) -> tuple[str, dict[str, Any]]:
        """`(json_path, record)` of a saved folder, or a ValueError naming the file."""
        index_path = os.path.join(path, INDEX_FILE)
        if not os.path.isfile(index_path):
            raise ValueError(f"GalleryIndex.load: {index_path!r} not found; is {path!r} a saved GalleryIndex folder?")
        try:
            with open(index_path, encoding="utf-8") as handle:
                record = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"GalleryIndex.load: {index_path!r} is not valid JSON ({error})") from error
        except UnicodeDecodeError as error:
            raise ValueError(f"GalleryIndex.load: {index_path!r} is not UTF-8 text ({error})") from error
        if not isinstance(record, dict):
            raise ValueError(
                f"GalleryIndex.load: {index_path!r} holds a JSON {type(record).__name__}; expected an object with "
                f"keys {list(_REQUIRED_RECORD_KEYS)}"
            )
        return index_path, record

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu", load_faiss: bool = True,
             require_digest: bool = True, mmap: bool = False, verify: bool = True) -> GalleryIndex:
        """Read a folder written by `save`; restores the faiss index too when present and faiss is installed.

        Args:
            mmap: map the embeddings file instead of reading it (`memory_mapped` is then True): the rows stay in the
                file, the process reads only what a search touches, and exact search streams the file block by
                block (resident memory: one block of `gallery_on_disk.STREAM_BLOCK_BYTES`). The index is read-only
                (`add` is refused; `merge_on_disk` grows it) and lives on the CPU.
            verify: check the embeddings' digest against the record and every row for NaN / infinity. With
                `mmap=True` this is one streaming read of the file (the time to read it, not its memory);
                `verify=False` opens in constant time, checking only the header, shape and file size.
        On-disk faiss lists (`gallery_faiss.ivfdata`, written by `merge_on_disk`) are always mapped, never read.

        Refused, with the file named: a record that is not a JSON object or lacks keys, embeddings whose digest is
        not the record's (another save's), a record without a digest (unless `require_digest=False`), a row holding
        NaN or infinity, a truncated embeddings or `.ivfdata` file, a missing `.ivfdata`.
        """
        path = os.fspath(path)
        index_path, record = cls._read_record(path)
        missing = [key for key in _REQUIRED_RECORD_KEYS if key not in record]
        if missing:
            raise ValueError(
                f"GalleryIndex.load: {index_path!r} lacks keys {missing} (has {sorted(record)}); expected a record "
                "written by GalleryIndex.save"
            )
        digest = record.get("embeddings_sha256")
        if not digest and require_digest:
            raise ValueError(
                f"GalleryIndex.load: {index_path!r} has no 'embeddings_sha256', so nothing ties it to the embeddings "
                "beside it (they may come from another save); save the index again, or pass require_digest=False to "
                "load it unchecked"
            )
        saved_faiss = record.get("faiss") or {}
        if digest and saved_faiss.get("on_disk") and os.path.isfile(_pending_name(path, IVFDATA_FILE, digest)):
            _finish_switch(path, digest)  # faiss finds on-disk lists under their final name only
        # A save killed after its switch (the JSON) but before moving its data files into place: take them.
        embeddings_path = os.path.join(path, EMBEDDINGS_FILE)
        faiss_path = os.path.join(path, FAISS_FILE)
        if digest:
            for name in (EMBEDDINGS_FILE, FAISS_FILE):
                pending = _pending_name(path, name, digest)
                if os.path.isfile(pending):
                    if name == EMBEDDINGS_FILE:
                        embeddings_path = pending
                    else:
                        faiss_path = pending
        if not os.path.isfile(embeddings_path):
            raise ValueError(
                f"GalleryIndex.load: {embeddings_path!r} not found; is {path!r} a saved GalleryIndex folder?"
            )
        for key, kind in (("num_items", int), ("embed_dim", int), ("ids", list)):
            if isinstance(record[key], bool) or not isinstance(record[key], kind):
                raise ValueError(
                    f"GalleryIndex.load: {index_path!r} field {key!r} is {type(record[key]).__name__} "
                    f"{record[key]!r}; expected {kind.__name__}"
                )
        if record["num_items"] == 0:
            raise ValueError(f"GalleryIndex.load: {index_path!r} records an empty gallery (0 items); nothing to search")
        if record.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"GalleryIndex.load: {index_path!r} has format_version {record.get('format_version')!r}, "
                f"expected {FORMAT_VERSION}"
            )
        mapped = None
        if mmap:
            if torch.device(device).type != "cpu":
                raise ValueError(
                    f"GalleryIndex.load: mmap=True keeps the rows in {embeddings_path!r} and searches them on the CPU; "
                    f"load with mmap=False to put them on {device}"
                )
            try:
                mapped = MappedEmbeddings(embeddings_path)
            except ValueError as error:
                raise ValueError(f"GalleryIndex.load: {error}") from None
            embeddings = mapped.tensor
            file_digest, bad = mapped.scan() if verify else (None, None)
        else:
            try:
                embeddings = load_file(embeddings_path)["embeddings"]
            except Exception as error:
                raise ValueError(f"GalleryIndex.load: cannot read {embeddings_path!r} ({error})") from error
            file_digest = _embeddings_digest(embeddings) if verify and digest else None
            bad = None
            if verify and embeddings.is_floating_point():
                finite = torch.isfinite(embeddings.float()).reshape(embeddings.shape[0], -1).all(dim=1)
                if not bool(finite.all()):
                    bad = int((~finite).nonzero()[0, 0])
        tokens = record.get("tokens_per_item")
        expected = (record["num_items"], *((tokens,) if tokens else ()), record["embed_dim"])
        if digest and file_digest is not None and file_digest != digest:
            raise ValueError(
                f"GalleryIndex.load: {embeddings_path!r} does not match {index_path!r} (different digest): the two "
                "files come from different saves, e.g. an interrupted re-save; save the index again"
            )
        if tuple(embeddings.shape) != expected:
            raise ValueError(
                f"GalleryIndex.load: {embeddings_path!r} holds shape {tuple(embeddings.shape)} but {index_path!r} "
                f"says {expected}"
            )
        if bad is not None:
            raise ValueError(
                f"GalleryIndex.load: {embeddings_path!r} row {bad} (id {record['ids'][bad]!r}) holds NaN or "
                "infinite values; a search would rank it arbitrarily. Rebuild the index"
            )
        stored_dtype = str(embeddings.dtype).split(".")[-1]
        if mapped is not None and stored_dtype != record.get("dtype", "float32"):
            raise ValueError(
                f"GalleryIndex.load: {embeddings_path!r} stores {stored_dtype} but {index_path!r} says "
                f"{record.get('dtype', 'float32')}; save the index again"
            )
        index = cls(
            embeddings,
            ids=record["ids"],
            metadata=record.get("metadata"),
            model_identity=record.get("model_identity"),
            dtype=record.get("dtype", "float32"),
            normalize=False,  # stored rows are normalised already; re-normalising float16 rows would shift them
        )
        index._mapped = mapped  # the constructor kept the mapped tensor as it is (same dtype, contiguous: no copy)
        index.to(device)
        faiss_path = os.path.join(path, FAISS_FILE)
        on_disk = bool(saved_faiss.get("on_disk"))
        if load_faiss and on_disk and not os.path.isfile(faiss_path):
            raise ValueError(
                f"GalleryIndex.load: {index_path!r} records an on-disk faiss index but {faiss_path!r} is missing; "
                "copy the whole folder, or pass load_faiss=False to search exactly"
            )
        if load_faiss and saved_faiss and os.path.isfile(faiss_path):
            try:
                faiss = _import_faiss()
            except ImportError:
                logger.warning(f"{faiss_path} exists but faiss is not installed: searching with the torch backend")
            else:
                if on_disk:
                    ivfdata_path = os.path.join(path, saved_faiss.get("ivfdata", IVFDATA_FILE))
                    try:
                        index._faiss_index = read_ivf_on_disk(faiss_path, ivfdata_path)
                    except ValueError as error:
                        raise ValueError(f"GalleryIndex.load: {error}") from None
                else:
                    index._faiss_index = faiss.read_index(faiss_path)
                expected_vectors = len(index) * (index.tokens_per_item or 1)
                if index._faiss_index.ntotal != expected_vectors:
                    raise ValueError(
                        f"GalleryIndex.load: {faiss_path!r} holds {index._faiss_index.ntotal} vectors, expected "
                        f"{expected_vectors}"
                    )
                index._faiss_config = dict(saved_faiss)
                index.set_faiss_search_params(
                    nprobe=index._faiss_config.get("nprobe"), ef_search=index._faiss_config.get("ef_search")
                )
                index.backend = "faiss"
        return index
