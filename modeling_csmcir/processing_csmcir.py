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
from transformers.processing_utils import ProcessingKwargs, Unpack
from transformers.utils import logging

from .preprocessing_csmcir import TARGETPAD_RATIO, normalize_caption, targetpad_transform

logger = logging.get_logger(__name__)

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
DEFAULT_MAX_TEXT_LENGTH = 32  # SPRC's text length, when neither the processor nor its tokenizer sets one
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
#: `CSMCIRProcessor(image_preprocessing=...)` values.
IMAGE_PREPROCESSING = ("resize", "targetpad")
#: `CSMCIRProcessor(caption_normalization=...)` values.
CAPTION_NORMALIZATION = ("none", "blip")


def image_processor_for_vision_config(vision_config: Any, image_size: int | None = None) -> Any:
    """The PIL image processor a vision backbone was trained with, at the backbone's resolution.

    * BLIP-2 / BLIP ViT: `BlipImageProcessorPil`, a square bicubic resize, CLIP mean/std (BLIP-2's evaluation
      preprocessing);
    * CLIP: `CLIPImageProcessorPil`, shortest edge to the tower's `image_size`, centre crop, CLIP mean/std;
    * SigLIP: `SiglipImageProcessorPil`, a square resize, mean/std 0.5;
    * DINOv2: `BitImageProcessorPil` as DINOv2's own checkpoints use it: shortest edge to 256/224 of the crop, centre
      crop to `image_size`, ImageNet mean/std.

    Other backbones get BLIP's processor with a warning. `vision_config` is a config or its dict (with
    `model_type`); `image_size` overrides the config's. PIL processors only: no torchvision needed.
    """
    if isinstance(vision_config, dict):
        model_type = vision_config.get("model_type", "blip_2_vision_model")
        config_size = vision_config.get("image_size")
    else:
        model_type = getattr(vision_config, "model_type", "blip_2_vision_model")
        config_size = getattr(vision_config, "image_size", None)
    size = image_size or config_size or 224
    square = {"height": size, "width": size}
    if model_type == "clip_vision_model":
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size=square)
    if model_type == "siglip_vision_model":
        from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

        return SiglipImageProcessorPil(size=square)
    if model_type == "dinov2":
        from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

        return BitImageProcessorPil(size={"shortest_edge": round(size * 256 / 224)}, crop_size=square,
                                    image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    if model_type not in ("blip_2_vision_model", "blip_vision_model"):
        logger.warning(
            "No image processor known for vision model_type %r: using BLIP's (square resize to %d px, CLIP "
            "mean/std); pass the backbone's own image processor to CSMCIRProcessor if it differs.", model_type, size
        )
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    return BlipImageProcessorPil(size=square, image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD)


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


class CSMCIRProcessorKwargs(ProcessingKwargs, total=False):
    """The keyword arguments `CSMCIRProcessor.__call__` takes: any tokenizer argument (`text_kwargs`) and any
    image-processor argument (`images_kwargs`), flat or nested, as for every transformers processor."""


class CSMCIRProcessor(ProcessorMixin):
    r"""Wraps an image processor and a BERT tokenizer into one processor for CSMCIR.

    Call keyword arguments are merged the transformers way (`ProcessorMixin._merge_kwargs`): from lowest to highest
    priority, this processor's defaults (`text_kwargs` / `images_kwargs` below), the arguments the tokenizer was
    created with (e.g. its own `padding` or `max_length`), then the caller's, flat
    (`processor(..., padding="max_length", do_rescale=False)`) or nested (`text_kwargs={...}`,
    `images_kwargs={...}`, `common_kwargs={...}`). An argument given both ways is refused. Image-processor arguments
    go to the image processor, whose own settings (size, mean/std) hold unless the caller overrides them.

    Args:
        image_processor: a transformers image processor; `image_processor_for_vision_config` gives the one that
            matches a vision backbone (BLIP's at 224 px for BLIP-2's ViT).
        tokenizer: the Q-Former's BERT-uncased tokenizer.
        max_text_length (`int`, *optional*): texts are truncated to this many tokens ([CLS] and [SEP] included)
            unless the caller passes `max_length`. A setting of this processor (saved with it, and what the presets
            and converters set to the model's `max_text_length`), so it ranks above the tokenizer's own `max_length`
            (sentence-transformers' BERT folders store 128, more than a small Q-Former has positions for). Unset,
            the tokenizer's own `max_length` applies, else 32.
        image_preprocessing (`str`, defaults to `"resize"`): `"resize"` leaves images to the image processor (BLIP's
            square resize for BLIP-2). `"targetpad"` first applies the originals' `targetpad_transform`
            (`preprocessing_csmcir.targetpad_transform`: pad towards aspect ratio `targetpad_ratio`, resize the
            shorter side to the image processor's size, centre crop), as SPRC's and the CSMCIR authors' code do; the
            image processor's own resize is then the identity and its rescale / normalisation apply as usual.
        targetpad_ratio (`float`, defaults to 1.25): the originals' target ratio.
        caption_normalization (`str`, defaults to `"none"`): `"blip"` normalises every text (modification texts and
            captions) with BLIP's caption processor (`preprocessing_csmcir.normalize_caption`: lower-case, `.!"()*#:;~`
            to spaces, at most 50 words) before tokenisation, as both originals do.
    """

    valid_processor_kwargs = CSMCIRProcessorKwargs
    # The lowest-priority defaults of `_merge_kwargs` (transformers' processor-attribute defaults).
    text_kwargs = {"padding": "longest", "truncation": True, "return_token_type_ids": False, "return_tensors": "pt"}
    images_kwargs = {"return_tensors": "pt"}

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        max_text_length: int | None = None,
        image_preprocessing: str = "resize",
        caption_normalization: str = "none",
        targetpad_ratio: float = TARGETPAD_RATIO,
        **kwargs: Any,
    ):
        if image_preprocessing not in IMAGE_PREPROCESSING:
            raise ValueError(f"image_preprocessing must be one of {IMAGE_PREPROCESSING}, got {image_preprocessing!r}")
        if caption_normalization not in CAPTION_NORMALIZATION:
            raise ValueError(
                f"caption_normalization must be one of {CAPTION_NORMALIZATION}, got {caption_normalization!r}"
            )
        if isinstance(targetpad_ratio, bool) or not isinstance(targetpad_ratio, (int, float)) or not targetpad_ratio >= 1:
            raise ValueError(f"targetpad_ratio must be a number >= 1, got {targetpad_ratio!r}")
        self.max_text_length = max_text_length
        self.image_preprocessing = image_preprocessing
        self.caption_normalization = caption_normalization
        self.targetpad_ratio = float(targetpad_ratio)
        super().__init__(image_processor, tokenizer, **kwargs)

    def _target_size(self) -> int:
        """The side of the image processor's square output (its crop size when it crops, else its size)."""
        processor = self.image_processor
        for attribute in ("crop_size", "size"):
            size = getattr(processor, attribute, None)
            if attribute == "crop_size" and not getattr(processor, "do_center_crop", False):
                continue
            if isinstance(size, dict) or hasattr(size, "get"):
                for key in ("height", "shortest_edge", "width"):
                    if size.get(key):
                        return int(size[key])
            elif isinstance(size, int):
                return size
        raise ValueError(
            f"image_preprocessing='targetpad': cannot read an output size from {type(processor).__name__}"
        )

    def _targetpad(self, images: list[Any]) -> list[Image.Image]:
        size = self._target_size()
        padded = []
        for image in images:
            if not isinstance(image, Image.Image):
                array = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
                if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
                    array = array.transpose(1, 2, 0)  # CHW → HWC
                if array.dtype != np.uint8:
                    array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8) if array.max() <= 1 else (
                        np.clip(array, 0, 255).astype(np.uint8))
                image = Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).convert("RGB")
            padded.append(targetpad_transform(image, size, self.targetpad_ratio))
        return padded

    def _normalize_texts(self, texts: list[str]) -> list[str]:
        normalized = [normalize_caption(text) for text in texts]
        for index, (original, text) in enumerate(zip(texts, normalized)):
            if not text.strip():
                raise ValueError(
                    f"text[{index}] ({original!r}) is empty after caption_normalization='blip' (BLIP's caption "
                    "processor turns .!\"()*#:;~ into spaces)"
                )
        return normalized

    def __call__(
        self,
        images: Any = None,
        text: str | list[str] | None = None,
        **kwargs: Unpack[CSMCIRProcessorKwargs],
    ) -> BatchFeature:
        """Returns `pixel_values` for `images` and `input_ids` / `attention_mask` for `text` (truncated)."""
        if images is None and text is None:
            raise ValueError("CSMCIRProcessor needs `images`, `text` or both.")
        if "max_length" in kwargs and kwargs["max_length"] is None:
            kwargs.pop("max_length")  # None has always meant "the processor's max_text_length"
        caller_max_length = any(
            group.get("max_length") is not None
            for group in (kwargs, kwargs.get("text_kwargs") or {}, kwargs.get("common_kwargs") or {})
        )
        merged = self._merge_kwargs(
            CSMCIRProcessorKwargs, tokenizer_init_kwargs=getattr(self.tokenizer, "init_kwargs", {}), **kwargs
        )
        text_kwargs, images_kwargs = merged["text_kwargs"], merged["images_kwargs"]
        if not caller_max_length and self.max_text_length is not None:
            text_kwargs["max_length"] = self.max_text_length
        elif text_kwargs.get("max_length") is None:
            text_kwargs["max_length"] = DEFAULT_MAX_TEXT_LENGTH
        return_tensors = text_kwargs.get("return_tensors") if text is not None else images_kwargs.get("return_tensors")
        data: dict[str, Any] = {}
        if text is not None:
            texts = _check_text(text)
            if self.caption_normalization == "blip":
                texts = self._normalize_texts(texts)
            data.update(self.tokenizer(texts, **text_kwargs))
        if images is not None:
            checked = _check_images(images)
            if self.image_preprocessing == "targetpad":
                checked = self._targetpad(checked)
            data.update(self.image_processor(checked, **images_kwargs))
        return BatchFeature(data, tensor_type=return_tensors)

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "input_ids", "attention_mask"]


__all__ = ["CAPTION_NORMALIZATION", "IMAGE_PREPROCESSING", "CSMCIRProcessor", "CSMCIRProcessorKwargs", "image_processor_for_vision_config"]
