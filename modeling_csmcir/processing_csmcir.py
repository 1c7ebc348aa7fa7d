"""Processor for CSMCIR: an image processor plus the Q-Former's BERT-uncased tokenizer.

The same processor prepares both towers' inputs: (reference image, modification text) for queries and
(target image, caption) for targets. It needs no torchvision (PIL image processors). This file is copied
into every saved Hub folder: it imports only transformers, PIL, numpy, torch and the standard library.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature, ProcessorMixin
from transformers.utils import logging

logger = logging.get_logger(__name__)

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _check_images(images: Any) -> list[Any]:
    """Accept PIL images, HWC/CHW arrays or tensors; convert palette/grayscale/RGBA PIL images to RGB."""
    checked = []
    for index, image in enumerate(_as_list(images)):
        if isinstance(image, Image.Image):
            if image.mode == "RGBA" or (image.mode == "P" and "transparency" in image.info):
                background = Image.new("RGB", image.size, (255, 255, 255))
                background.paste(image.convert("RGBA"), mask=image.convert("RGBA").split()[-1])
                image = background
            elif image.mode != "RGB":
                image = image.convert("RGB")
        elif isinstance(image, (np.ndarray, torch.Tensor)):
            if image.ndim not in (2, 3):
                raise ValueError(f"images[{index}] must be a 2-D or 3-D array, got shape {tuple(image.shape)}")
            if image.ndim == 2:
                image = np.stack([np.asarray(image)] * 3, axis=-1)
        else:
            raise ValueError(
                f"images[{index}] must be a PIL.Image, a numpy array or a torch tensor, got {type(image).__name__} "
                "(the pipeline also accepts paths and URLs)."
            )
        checked.append(image)
    if not checked:
        raise ValueError("images is an empty list")
    return checked


def _check_text(text: Any) -> list[str]:
    texts = _as_list(text)
    for index, item in enumerate(texts):
        if not isinstance(item, str):
            raise ValueError(f"text[{index}] must be a string, got {type(item).__name__}")
        if not item.strip():
            raise ValueError(f"text[{index}] is empty: a modification text or caption needs at least one word")
    if not texts:
        raise ValueError("text is an empty list")
    return texts


class CSMCIRProcessor(ProcessorMixin):
    r"""Wraps an image processor and a BERT tokenizer into one processor for CSMCIR.

    Args:
        image_processor: a transformers image processor (e.g. `BlipImageProcessorPil` at 224 px as in BLIP-2).
        tokenizer: the Q-Former's BERT-uncased tokenizer.
        max_text_length (`int`, defaults to 32): texts are truncated to this many tokens ([CLS] and [SEP] included).
    """

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, max_text_length: int = 32, **kwargs: Any):
        self.max_text_length = max_text_length
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(
        self,
        images: Any = None,
        text: str | list[str] | None = None,
        return_tensors: str | None = "pt",
        padding: bool | str = "longest",
        max_length: int | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Returns `pixel_values` for `images` and `input_ids` / `attention_mask` for `text` (truncated)."""
        if images is None and text is None:
            raise ValueError("CSMCIRProcessor needs `images`, `text` or both.")
        data: dict[str, Any] = {}
        if text is not None:
            encoding = self.tokenizer(
                _check_text(text),
                padding=padding,
                truncation=True,
                max_length=max_length or self.max_text_length,
                return_token_type_ids=False,
                return_tensors=return_tensors,
                **kwargs,
            )
            data.update(encoding)
        if images is not None:
            data.update(self.image_processor(_check_images(images), return_tensors=return_tensors))
        return BatchFeature(data, tensor_type=return_tensors)

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "input_ids", "attention_mask"]


__all__ = ["CSMCIRProcessor"]
