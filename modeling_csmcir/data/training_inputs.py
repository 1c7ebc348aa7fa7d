"""What training on a loaded CIR benchmark needs beyond the collator: the reference ids the memory bank masks, and
the target lookup its refresh re-encodes by id.

In both, a target id is a row of the split's gallery (the readers' ``target_label``), so the bank's ids, the
reference ids and the lookup agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .collators import CIRCollator, CIRGalleryCollator


class ReferenceIdCollator:
    """Wraps a `CIRCollator` to add `reference_ids`: the reference image's gallery row (`-1` when it is not in the
    gallery), so the memory bank never serves a query its own reference image (see `MemoryBank.negative_logits`)."""

    def __init__(self, collator: CIRCollator, gallery_ids: Sequence[str]) -> None:
        self.collator = collator
        self.row_of = {image_id: row for row, image_id in enumerate(gallery_ids)}

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.collator(rows)
        batch["reference_ids"] = torch.tensor([self.row_of.get(row.get("reference_id"), -1) for row in rows])
        return batch


class GalleryTargetLookup:
    """`ids -> get_target_features inputs`: a target id is a row of the gallery (the readers' `target_label`)."""

    def __init__(self, gallery: Any, collator: CIRGalleryCollator) -> None:
        self.gallery = gallery
        self.collator = collator

    def __call__(self, ids: Sequence[int]) -> dict[str, torch.Tensor]:
        return self.collator([self.gallery[int(i)] for i in ids])


__all__ = ["GalleryTargetLookup", "ReferenceIdCollator"]
