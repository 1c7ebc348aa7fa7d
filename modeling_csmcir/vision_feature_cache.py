"""Cached features of a frozen vision tower, for training (``CSMCIRTrainingArguments.vision_feature_cache``).

With ``config.freeze_vision`` the vision tower is a fixed function of the pixels, and in BLIP-2-sized models it is
most of a training step's forward (ViT-g/14: 39 layers over 257 tokens, against the Q-Former's 12 over 32 + text).
The trainer therefore computes each image's features once (the first epoch), keyed by its integer image id (the
batches' ``target_ids`` / ``reference_ids``), and passes them back as ``image_embeds`` / ``target_image_embeds``
in later epochs. What keeps a cached feature from being stale:

* the cache lives under a **vision identity**: a hash of every byte of the vision tower's weights (all of them:
  ``pipelines.gallery_index.weights_fingerprint``), its config and dtype. Another tower, or the same tower
  changed in any weight, gets another identity, so its features are computed afresh;
* every entry keeps a **checksum of the pixels** it was computed from (two float64 sums); a hit whose pixels differ
  (random augmentation, another processor, an image replaced under the same id) is recomputed and re-stored, with
  one warning, so a run with augmentations is correct, only not faster;
* rows with id ``-1`` (unknown) are computed and never stored.

Storage: in memory (``"memory"``) or on disk (a folder): append-only shards ``shard-NNNNN.npy`` (features) +
``shard-NNNNN.index.npy`` (ids and checksums), written atomically (temp name + rename) and read back as memory
maps, under ``<folder>/<identity>/``; a later run with the same tower reuses them (resumable). ``"auto"`` keeps
features in memory and spills to ``$HF_HOME/csmcir/vision_features`` once they pass ``memory_limit_bytes``. No
pickle: ``np.load(..., allow_pickle=False)``.

The cached value is exactly what the tower returns (same dtype, no rounding), so losses and gradients are those
of the uncached run (tested).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from transformers.utils import logging

from pipelines.gallery_index import weights_fingerprint

logger = logging.get_logger(__name__)

CACHE_MODES = ("none", "memory", "auto")
SHARD_ROWS = 256
DEFAULT_MEMORY_LIMIT = 2 << 30  # "auto" spills to disk past 2 GiB of features


def vision_identity(model: torch.nn.Module) -> str:
    """Hash of the vision tower's weights (every byte), config and dtype: features are reused only under it."""
    tower = model.vision_model
    config = getattr(model.config, "vision_config", None)
    config_text = json.dumps(config.to_dict() if hasattr(config, "to_dict") else str(config), sort_keys=True, default=str)
    digest = hashlib.sha256(f"{weights_fingerprint(tower)}|{config_text}".encode()).hexdigest()
    return digest[:20]


def pixel_checksums(pixel_values: torch.Tensor) -> torch.Tensor:
    """``(B, 2)`` float64 per image: the sum of its pixels and a position-weighted sum (a cheap fingerprint; any
    resize, crop, flip or colour change moves at least one of them)."""
    flat = pixel_values.detach().reshape(pixel_values.shape[0], -1).double()
    return torch.stack([flat.sum(dim=1), flat @ _checksum_weights(flat.shape[1], flat.device)], dim=1).cpu()


_CHECKSUM_WEIGHTS: dict[tuple[int, torch.device], torch.Tensor] = {}


def _checksum_weights(length: int, device: torch.device) -> torch.Tensor:
    """``linspace(1, 2, length)`` in float64, built once per (length, device): every training step checksums two
    batches of images of the same size."""
    key = (length, device)
    if key not in _CHECKSUM_WEIGHTS:
        if len(_CHECKSUM_WEIGHTS) > 16:
            _CHECKSUM_WEIGHTS.clear()
        _CHECKSUM_WEIGHTS[key] = torch.linspace(1.0, 2.0, length, dtype=torch.float64, device=device)
    return _CHECKSUM_WEIGHTS[key]


class VisionFeatureCache:
    """Vision-tower features by image id, for one tower identity at a time.

    Args:
        mode: ``"memory"``, ``"auto"`` (memory, spilling to disk past ``memory_limit_bytes``) or a folder (disk).
        memory_limit_bytes: the spill threshold of ``"auto"``.
    """

    def __init__(self, mode: str, memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT) -> None:
        if mode == "none":
            raise ValueError("VisionFeatureCache: mode 'none' means no cache; do not build one")
        self.mode = mode
        self.memory_limit_bytes = int(memory_limit_bytes)
        self.identity: str | None = None
        self._tower_state: tuple = ()
        self.hits = 0
        self.misses = 0
        self._warned_stale = False
        self._reset()

    # ------------------------------------------------------------------ storage
    def _reset(self) -> None:
        self._pending: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id -> (features, checksum)
        self._shards: list[tuple[np.ndarray, np.ndarray]] = []  # (features memmap, index (N, 3) float64)
        self._where: dict[int, tuple[int, int]] = {}  # id -> (shard, row), the latest one
        self._pending_bytes = 0
        self._folder: Path | None = None

    def _disk_root(self) -> Path | None:
        if self.mode == "memory":
            return None
        if self.mode == "auto":
            home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
            return Path(home) / "csmcir" / "vision_features"
        return Path(self.mode)

    def _bind(self, model: torch.nn.Module) -> None:
        # Hashing every weight costs seconds for ViT-g: redo it only when a vision tensor was replaced or written in
        # place (its storage or its in-place version counter moved).
        # `parameters()` + `buffers()`, not `state_dict()`: the same tensors, without building a 500-entry ordered
        # dict of prefixed names on every call (two calls per training step).
        tower = model.vision_model
        state = tuple((t.data_ptr(), t._version) for tensors in (tower.parameters(), tower.buffers()) for t in tensors)
        if self.identity is not None and state == self._tower_state:
            return
        self._tower_state = state
        identity = vision_identity(model)
        if identity == self.identity:
            return
        if self.identity is not None:
            logger.warning(f"VisionFeatureCache: vision tower changed ({self.identity} -> {identity}); cached "
                           "features of the previous tower are not used")
        self._reset()
        self.identity = identity
        root = self._disk_root()
        if root is not None and self.mode != "auto":
            self._open_folder(root / identity)
        elif root is not None and (root / identity).is_dir():
            self._open_folder(root / identity)

    def _open_folder(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._folder = folder
        for path in sorted(folder.glob("shard-*.index.npy")):
            features_path = path.with_name(path.name.replace(".index.npy", ".npy"))
            if not features_path.is_file():
                continue  # an interrupted write: the index is written last, so this cannot happen; skip anyway
            index = np.load(path, allow_pickle=False)
            features = np.load(features_path, mmap_mode="r", allow_pickle=False)
            if features.shape[0] != index.shape[0]:
                raise ValueError(f"{features_path}: {features.shape[0]} rows but its index has {index.shape[0]}")
            self._add_shard(features, index)

    def _add_shard(self, features: np.ndarray, index: np.ndarray) -> None:
        shard = len(self._shards)
        self._shards.append((features, index))
        for row, image_id in enumerate(index[:, 0].astype(np.int64).tolist()):
            self._where[image_id] = (shard, row)

    def flush(self) -> None:
        """Write the features computed since the last flush as one shard (disk modes; no-op in memory)."""
        if not self._pending or self._folder is None:
            return
        ids = list(self._pending)
        features = torch.stack([self._pending[i][0] for i in ids]).numpy()
        checksums = torch.stack([self._pending[i][1] for i in ids]).numpy()
        index = np.concatenate([np.asarray(ids, dtype=np.float64)[:, None], checksums], axis=1)
        name = f"shard-{len(self._shards):05d}"
        for suffix, array in ((".npy", features), (".index.npy", index)):  # index last: it publishes the shard
            final = self._folder / f"{name}{suffix}"
            temporary = final.with_name(final.name + ".tmp")
            with open(temporary, "wb") as handle:
                np.save(handle, array, allow_pickle=False)
            os.replace(temporary, final)
        self._add_shard(np.load(self._folder / f"{name}.npy", mmap_mode="r", allow_pickle=False), index)
        self._pending.clear()
        self._pending_bytes = 0

    def _lookup(self, image_id: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        if image_id in self._pending:
            return self._pending[image_id]
        where = self._where.get(image_id)
        if where is None:
            return None
        features, index = self._shards[where[0]]
        return torch.from_numpy(np.array(features[where[1]])), torch.from_numpy(index[where[1], 1:].copy())

    def _store(self, image_id: int, features: torch.Tensor, checksum: torch.Tensor) -> None:
        features = features.detach().cpu().contiguous()
        self._pending[image_id] = (features, checksum)
        self._pending_bytes += features.numel() * features.element_size()
        if self.mode == "auto" and self._folder is None and self._pending_bytes > self.memory_limit_bytes:
            self._open_folder(self._disk_root() / self.identity)
            logger.warning(f"VisionFeatureCache: features passed {self.memory_limit_bytes / 2**30:.1f} GiB; "
                           f"spilling to {self._folder}")
        if self._folder is not None and len(self._pending) >= SHARD_ROWS:
            self.flush()

    # ------------------------------------------------------------------ use
    @torch.no_grad()
    def image_embeds(self, model: torch.nn.Module, pixel_values: torch.Tensor, image_ids: torch.Tensor) -> torch.Tensor:
        """``model.get_image_embeds(pixel_values)``, served from the cache for the ids seen before with the same
        pixels (``-1`` ids are always computed). Returns the features on the model's device."""
        self._bind(model)
        ids = image_ids.reshape(-1).tolist()
        if len(ids) != pixel_values.shape[0]:
            raise ValueError(f"VisionFeatureCache: {pixel_values.shape[0]} images but {len(ids)} image ids")
        checksums = pixel_checksums(pixel_values)
        rows: list[torch.Tensor | None] = [None] * len(ids)
        missing = []
        for position, image_id in enumerate(ids):
            found = self._lookup(int(image_id)) if image_id >= 0 else None
            if found is not None and torch.equal(found[1], checksums[position]):
                rows[position] = found[0]
                continue
            if found is not None and not self._warned_stale:
                logger.warning(f"VisionFeatureCache: image id {image_id} came with other pixels than when its features "
                               "were cached (random augmentation?); such images are recomputed every time")
                self._warned_stale = True
            missing.append(position)
        self.hits += len(ids) - len(missing)
        self.misses += len(missing)
        computed = model.get_image_embeds(pixel_values[missing]) if missing else None
        device = computed.device if computed is not None else next(model.vision_model.parameters()).device
        for offset, position in enumerate(missing):
            rows[position] = computed[offset]
            if ids[position] >= 0:
                self._store(int(ids[position]), computed[offset], checksums[position])
        return torch.stack([row.to(device) for row in rows])


__all__ = ["CACHE_MODES", "VisionFeatureCache", "pixel_checksums", "vision_identity"]
