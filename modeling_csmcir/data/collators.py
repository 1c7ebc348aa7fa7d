"""Collators turning rows of the CIR readers (``data.loading``) into CSMCIR model inputs.

:class:`CIRCollator` builds training / query batches::

    pixel_values, input_ids, attention_mask          reference image + modification text
    target_pixel_values                              target image            (when the rows have one)
    target_input_ids, target_attention_mask          target caption tokens   (when ``use_target_captions``)
    target_ids                                       the target's gallery row (``target_label``), for masking
                                                     in-batch duplicates of the same target as false negatives

:class:`CIRGalleryCollator` builds gallery batches (``pixel_values`` and, with captions, ``input_ids`` /
``attention_mask``). Both go through ``CSMCIRProcessor``, so images are converted and resized the same way as
at inference. With the Trainer set ``remove_unused_columns=False``: the raw image/text columns are what the
collator needs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers.utils import logging


logger = logging.get_logger(__name__)


def _captions_or_raise(rows: Sequence[Mapping[str, Any]], caption_key: str, id_key: str) -> list[str]:
    """The captions of ``rows``; empty or absent ones raise naming the images (the processor needs words)."""
    if any(caption_key not in row for row in rows):
        raise ValueError(
            f"rows have no {caption_key!r} column: load the dataset with target_captions=... "
            "or set use_target_captions=False"
        )
    captions = [row[caption_key] or "" for row in rows]
    empty = [row.get(id_key) for row, c in zip(rows, captions) if not c.strip()]
    if empty:
        raise ValueError(f"{len(empty)} images have an empty {caption_key!r} (first: {empty[:5]}); every target needs a caption")
    return captions


class CIRCollator:
    """Collate query rows (``reference_image``, ``modification_text``, ``target_image``, ``target_caption``,
    ``target_label``) into a ``CSMCIRModel.forward`` batch.

    Args:
        processor: a ``CSMCIRProcessor``.
        use_target_captions: tokenise ``target_caption`` as ``target_input_ids`` (the symmetric tower);
            ``False`` gives image-only targets (the asymmetric ablation).
        include_targets: add the target side; ``False`` gives query-only batches (retrieval, test splits).
        max_text_length: overrides the processor's truncation length.
    """

    def __init__(
        self,
        processor: Any,
        use_target_captions: bool = True,
        include_targets: bool = True,
        max_text_length: int | None = None,
    ):
        self.processor = processor
        self.use_target_captions = use_target_captions
        self.include_targets = include_targets
        self.max_text_length = max_text_length

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("CIRCollator got an empty batch")
        batch = dict(
            self.processor(
                images=[row["reference_image"] for row in rows],
                text=[row["modification_text"] for row in rows],
                return_tensors="pt",
                max_length=self.max_text_length,
            )
        )
        if not self.include_targets:
            return batch
        missing = [row.get("query_id") for row in rows if row.get("target_image") is None]
        if missing:
            raise ValueError(
                f"{len(missing)} rows have no target image (first query ids: {missing[:5]}); test splits have no "
                "targets: use include_targets=False"
            )
        targets = [row["target_image"] for row in rows]
        if self.use_target_captions:
            target = self.processor(
                images=targets,
                text=_captions_or_raise(rows, "target_caption", "target_id"),
                return_tensors="pt",
                max_length=self.max_text_length,
            )
            batch["target_input_ids"] = target["input_ids"]
            batch["target_attention_mask"] = target["attention_mask"]
        else:
            target = self.processor(images=targets, return_tensors="pt")
        batch["target_pixel_values"] = target["pixel_values"]
        if all("target_label" in row for row in rows):
            batch["target_ids"] = torch.tensor([int(row["target_label"]) for row in rows], dtype=torch.long)
        return batch


class CIRGalleryCollator:
    """Collate gallery rows (``image`` and optionally ``caption``) into ``get_target_features`` inputs."""

    def __init__(self, processor: Any, use_captions: bool = True, max_text_length: int | None = None):
        self.processor = processor
        self.use_captions = use_captions
        self.max_text_length = max_text_length

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("CIRGalleryCollator got an empty batch")
        images = [row["image"] for row in rows]
        if self.use_captions:
            return dict(
                self.processor(
                    images=images,
                    text=_captions_or_raise(rows, "caption", "image_id"),
                    return_tensors="pt",
                    max_length=self.max_text_length,
                )
            )
        return dict(self.processor(images=images, return_tensors="pt"))
