"""MMAPSProcessor: text tokenizer + image processor + region-feature packing + the attribute vocabulary.

Turns products (long text, optional image or pre-extracted detector regions, optional reference summary and
attribute words) into the tensors `MMAPSForConditionalGeneration` takes, and decodes summaries back. The tokenizer is
a BERT-style Chinese character vocabulary (as `fnlp/bart-base-chinese`) or any BART tokenizer; the image processor is
a PIL one (no torchvision) matched to the vision backbone (`image_processor_for_vision_config`). The attribute
vocabulary (a list of words, built elsewhere) is saved with the processor.

Character-level input (`character_level=True`, the default of `from_vocabulary`): as the original MMAPS
(`process_input` removes whitespace and splits every character), every non-whitespace character is one token, so
"2020" or "LED" are four and three characters of a character vocabulary, not one `[UNK]` word; decoding joins the
characters back without spaces. Call kwargs are merged the transformers way (`MMAPSProcessorKwargs`, `_merge_kwargs`):
flat or nested `text_kwargs` / `images_kwargs`, a kwarg given twice is refused, the tokenizer's own init settings win
over the processor's defaults.

Hub rule: this file is copied next to saved weights; it imports only torch/numpy/PIL/transformers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature, BertTokenizer, CLIPImageProcessorPil
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin
from transformers.utils import logging

logger = logging.get_logger(__name__)

# Spaces that a character-level tokenizer's decode puts between CJK characters (and CJK punctuation).
_CJK = r"\u3000-\u303f\u4e00-\u9fff\uff00-\uffef"
_CJK_SPACES = re.compile(rf"(?<=[{_CJK}])\s+(?=[{_CJK}])|(?<=[{_CJK}])\s+(?=[0-9A-Za-z])|(?<=[0-9A-Za-z])\s+(?=[{_CJK}])")

#: BERT's special tokens, in the order that gives [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4.
BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class MMAPSProcessorKwargs(ProcessingKwargs, total=False):
    """Call kwargs of `MMAPSProcessor`: the usual `text_kwargs` / `images_kwargs` plus the two token limits (their
    defaults are the processor's attributes of the same name)."""

    max_source_length: int
    max_target_length: int


def image_processor_for_vision_config(vision_config: Any, image_size: int | None = None) -> Any:
    """The PIL image processor a vision backbone was trained with, at the backbone's resolution.

    * CLIP (and any unknown tower, with a warning): `CLIPImageProcessorPil`, shortest edge to `image_size`, centre
      crop, CLIP mean/std;
    * SigLIP: `SiglipImageProcessorPil`, a square resize, mean/std 0.5;
    * ViT: `ViTImageProcessorPil`, a square resize, mean/std 0.5;
    * DINOv2: `BitImageProcessorPil` as DINOv2's checkpoints use it: shortest edge to 256/224 of the crop, centre crop,
      ImageNet mean/std.

    `vision_config` is a config or its dict (with `model_type`); `image_size` overrides the config's.
    """
    if isinstance(vision_config, dict):
        model_type, config_size = vision_config.get("model_type", "clip_vision_model"), vision_config.get("image_size")
    else:
        model_type = getattr(vision_config, "model_type", "clip_vision_model")
        config_size = getattr(vision_config, "image_size", None)
    size = image_size or config_size or 224
    square = {"height": size, "width": size}
    if model_type in ("siglip_vision_model", "vit"):
        from transformers import SiglipImageProcessorPil, ViTImageProcessorPil

        return (SiglipImageProcessorPil if model_type == "siglip_vision_model" else ViTImageProcessorPil)(size=square)
    if model_type == "dinov2":
        from transformers import BitImageProcessorPil

        return BitImageProcessorPil(size={"shortest_edge": round(size * 256 / 224)}, crop_size=square,
                                    image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    if model_type != "clip_vision_model":
        logger.warning("No image processor known for vision model_type %r: using CLIP's (shortest edge %d px, centre "
                       "crop, CLIP mean/std); pass the backbone's own image processor if it differs.", model_type, size)
    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size=square)


def _single_image(value: Any, index: int) -> Any:
    """One product's image: `None` or `[]` (transformers' nested form for "no image") → None; `[image]` → image."""
    if isinstance(value, (list, tuple)):
        if len(value) > 1:
            raise ValueError(f"images: product {index} has {len(value)} images; MMAPS reads one image per product")
        return value[0] if value else None
    return value


class MMAPSProcessor(ProcessorMixin):
    """Pack products for MMAPS.

    Args:
        image_processor: a transformers image processor (e.g. `CLIPImageProcessorPil`) sized for the vision backbone.
        tokenizer: BERT-style character tokenizer or BART tokenizer. Encoder input = tokenizer(text); labels =
            tokenizer(summary) with padding set to -100, i.e. `[bos] summary [eos]`; decoding starts from the model's
            `decoder_start_token_id`.
        attribute_vocabulary (`list[str]`, *optional*): attribute words; `attributes=` in `__call__` become multi-hot
            `attribute_labels` over it, and `decode_attributes` maps probabilities back to words.
        max_source_length, max_target_length: token limits (400 / 90 in the original).
        max_regions: most regions kept per image when packing region features.
        character_level (`bool`): split texts into their non-whitespace characters before the tokenizer, and decode
            without spaces, as the original (see the module docstring). Default False here, so a word-piece or BPE
            tokenizer passed in keeps its own segmentation; `from_vocabulary` (a character vocabulary) sets True.
    """

    # Lowest-priority defaults of the transformers kwargs merge: the tokenizer's own init settings and call kwargs win.
    text_kwargs = {"padding": True, "truncation": True}

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        attribute_vocabulary: list[str] | None = None,
        max_source_length: int = 400,
        max_target_length: int = 90,
        max_regions: int = 36,
        character_level: bool = False,
        **kwargs: Any,
    ) -> None:
        self.attribute_vocabulary = list(attribute_vocabulary) if attribute_vocabulary is not None else None
        if self.attribute_vocabulary is not None and len(set(self.attribute_vocabulary)) != len(self.attribute_vocabulary):
            raise ValueError("attribute_vocabulary: words must be unique")
        self.max_source_length = max_source_length
        self.max_target_length = max_target_length
        self.max_regions = max_regions
        self.character_level = bool(character_level)
        super().__init__(image_processor, tokenizer, **kwargs)

    # -- construction ----------------------------------------------------------------------------------------------
    @classmethod
    def from_vocabulary(
        cls, tokens: Sequence[str] | dict[str, int], image_size: int | None = 32, vision_config: Any = None,
        **kwargs: Any
    ) -> MMAPSProcessor:
        """A BERT-style character tokenizer over `tokens` (special tokens prepended when missing), character-level
        input (`character_level=True` unless given), and the image processor of `vision_config`'s backbone
        (`image_processor_for_vision_config`; CLIP's without one) producing `image_size`² images. `kwargs` go to
        `MMAPSProcessor.__init__`."""
        if isinstance(tokens, dict):
            vocab = dict(tokens)
        else:
            ordered = [t for t in BERT_SPECIAL_TOKENS if t not in tokens] + [t for t in dict.fromkeys(tokens)]
            vocab = {token: index for index, token in enumerate(ordered)}
        tokenizer = BertTokenizer(vocab=vocab, tokenize_chinese_chars=True, do_lower_case=True)
        image_processor = image_processor_for_vision_config(
            vision_config if vision_config is not None else {"model_type": "clip_vision_model"}, image_size)
        kwargs.setdefault("character_level", True)
        return cls(image_processor=image_processor, tokenizer=tokenizer, **kwargs)

    # -- encoding --------------------------------------------------------------------------------------------------
    def __call__(
        self,
        text: str | list[str] | None = None,
        images: Any = None,
        summaries: str | list[str] | None = None,
        visual_features: Sequence[Any] | None = None,
        visual_boxes: Sequence[Any] | None = None,
        visual_class_probs: Sequence[Any] | None = None,
        attributes: Sequence[Sequence[str]] | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Encode a batch of products.

        Args:
            text: product descriptions (one string per product; empty strings raise).
            images: one PIL image per product, `None` or `[]` for a product without one (`[image]` is accepted too)
                → `pixel_values`, `image_mask`.
            summaries: reference summaries → `labels` (padding = -100).
            visual_features / visual_boxes / visual_class_probs: per product an array (R_i, F) / (R_i, 4) in [0, 1] /
                (R_i, C), or None → padded `visual_features`, `visual_boxes`, `visual_attention_mask`,
                `visual_class_probs`, `image_mask`.
            attributes: per product a list of attribute words → multi-hot `attribute_labels`.
            kwargs: tokenizer and image-processor kwargs, flat or as `text_kwargs=` / `images_kwargs=` (a kwarg given
                both ways raises), `max_source_length` / `max_target_length`, `return_tensors` ("pt").
        """
        if text is None:
            raise ValueError("text: MMAPSProcessor needs the product text")
        texts = [text] if isinstance(text, str) else list(text)
        for index, value in enumerate(texts):
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"text: product {index} has empty text")
        batch = len(texts)
        merged = self._merge_kwargs(MMAPSProcessorKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs)
        text_kwargs, images_kwargs = merged["text_kwargs"], merged["images_kwargs"]
        return_tensors = text_kwargs.pop("return_tensors", None) or images_kwargs.pop("return_tensors", None) or "pt"
        images_kwargs.pop("return_tensors", None)
        # The two token limits are the processor's (source and summary differ); a `max_length` counts only when the
        # caller gave it: _merge_kwargs also fills it in from the tokenizer's saved init kwargs, which would cut the
        # product text at the summary limit.
        text_kwargs.pop("max_length", None)
        explicit_max_length = kwargs.get("max_length", (kwargs.get("text_kwargs") or {}).get("max_length"))
        source_length = merged.get("max_source_length", self.max_source_length)
        target_length = merged.get("max_target_length", self.max_target_length)
        encoded = self._tokenize(texts, text_kwargs, explicit_max_length or source_length)
        data: dict[str, Any] = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

        if summaries is not None:
            targets = [summaries] if isinstance(summaries, str) else list(summaries)
            if len(targets) != batch:
                raise ValueError(f"summaries: expected {batch} (one per text), got {len(targets)}")
            labels = self._tokenize(targets, text_kwargs, explicit_max_length or target_length)
            data["labels"] = labels["input_ids"].masked_fill(labels["attention_mask"] == 0, -100)

        if images is not None:
            data.update(self._pack_images(images, batch, images_kwargs))
        if visual_features is not None:
            if images is not None:
                raise ValueError("images: pass either images or visual_features, not both")
            data.update(self._pack_regions(visual_features, visual_boxes, visual_class_probs, batch))
        if attributes is not None:
            data["attribute_labels"] = self.encode_attributes(attributes)
            if data["attribute_labels"].shape[0] != batch:
                raise ValueError(f"attributes: expected {batch} lists (one per text), got {len(attributes)}")
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _tokenize(self, texts: list[str], text_kwargs: dict[str, Any], max_length: int) -> Any:
        """The tokenizer on `texts` (as characters when `character_level`), always returning torch tensors."""
        if self.character_level:
            words = [[c for c in t if not c.isspace()] for t in texts]
            return self.tokenizer(words, is_split_into_words=True, max_length=max_length, return_tensors="pt",
                                  **text_kwargs)
        return self.tokenizer(texts, max_length=max_length, return_tensors="pt", **text_kwargs)

    def _pack_images(self, images: Any, batch: int, images_kwargs: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
        items = [images] if not isinstance(images, (list, tuple)) else list(images)
        if len(items) != batch:
            raise ValueError(f"images: expected {batch} (one per text, None for none), got {len(items)}")
        items = [_single_image(item, index) for index, item in enumerate(items)]
        present = [i for i, image in enumerate(items) if image is not None]
        image_mask = torch.zeros(batch, dtype=torch.long)
        image_mask[present] = 1
        if not present:
            return {"image_mask": image_mask}
        pixels = self.image_processor([items[i] for i in present], return_tensors="pt",
                                      **(images_kwargs or {}))["pixel_values"]
        # Imageless products get zero pixels; image_mask = 0 makes the model ignore them entirely.
        pixel_values = pixels.new_zeros(batch, *pixels.shape[1:])
        pixel_values[present] = pixels
        return {"pixel_values": pixel_values, "image_mask": image_mask}

    def _pack_regions(self, features: Sequence[Any], boxes: Sequence[Any] | None,
                      class_probs: Sequence[Any] | None, batch: int) -> dict[str, torch.Tensor]:
        if len(features) != batch:
            raise ValueError(f"visual_features: expected {batch} entries (one per text, None for none), got {len(features)}")
        if boxes is None or len(boxes) != batch:
            raise ValueError(f"visual_boxes: expected {batch} entries matching visual_features")
        if class_probs is not None and len(class_probs) != batch:
            raise ValueError(f"visual_class_probs: expected {batch} entries matching visual_features")
        arrays = [None if f is None else torch.as_tensor(np.asarray(f), dtype=torch.float32) for f in features]
        present = [a for a in arrays if a is not None]
        image_mask = torch.tensor([a is not None and a.shape[0] > 0 for a in arrays], dtype=torch.long)
        if not present:
            return {"image_mask": image_mask}
        feature_dim = present[0].shape[-1]
        n_regions = min(max(a.shape[0] for a in present), self.max_regions)
        n_regions = max(n_regions, 1)
        out_features = torch.zeros(batch, n_regions, feature_dim)
        out_boxes = torch.zeros(batch, n_regions, 4)
        out_mask = torch.zeros(batch, n_regions, dtype=torch.long)
        out_probs = None
        for index, array in enumerate(arrays):
            if array is None:
                continue
            if array.ndim != 2 or array.shape[-1] != feature_dim:
                raise ValueError(f"visual_features: product {index} has shape {tuple(array.shape)}, expected (R, {feature_dim})")
            count = min(array.shape[0], n_regions)
            box = torch.as_tensor(np.asarray(boxes[index]), dtype=torch.float32)
            if box.shape != (array.shape[0], 4):
                raise ValueError(f"visual_boxes: product {index} has shape {tuple(box.shape)}, expected ({array.shape[0]}, 4)")
            if box.numel() and (box.min() < 0 or box.max() > 1):
                raise ValueError(f"visual_boxes: product {index} has coordinates outside [0, 1]")
            out_features[index, :count] = array[:count]
            out_boxes[index, :count] = box[:count]
            out_mask[index, :count] = 1
            if class_probs is not None and class_probs[index] is not None:
                probs = torch.as_tensor(np.asarray(class_probs[index]), dtype=torch.float32)
                if out_probs is None:
                    out_probs = torch.zeros(batch, n_regions, probs.shape[-1])
                out_probs[index, :count] = probs[:count]
        packed = {"visual_features": out_features, "visual_boxes": out_boxes, "visual_attention_mask": out_mask,
                  "image_mask": image_mask}
        if out_probs is not None:
            packed["visual_class_probs"] = out_probs
        return packed

    # -- attributes ------------------------------------------------------------------------------------------------
    def encode_attributes(self, attributes: Sequence[Sequence[str]]) -> torch.Tensor:
        """Multi-hot (B, |vocabulary|) float labels; words outside the vocabulary are ignored."""
        if self.attribute_vocabulary is None:
            raise ValueError("attributes: this processor has no attribute_vocabulary")
        index = {word: i for i, word in enumerate(self.attribute_vocabulary)}
        labels = torch.zeros(len(attributes), len(self.attribute_vocabulary))
        for row, words in enumerate(attributes):
            for word in words:
                if word in index:
                    labels[row, index[word]] = 1.0
        return labels

    def decode_attributes(self, probabilities: torch.Tensor, threshold: float = 0.5) -> list[list[dict[str, Any]]]:
        """Per product, the attributes with probability > threshold as `{"attribute", "score"}`, best first."""
        if self.attribute_vocabulary is None:
            raise ValueError("attribute_vocabulary: this processor has none to decode with")
        if probabilities.shape[-1] != len(self.attribute_vocabulary):
            raise ValueError(f"probabilities: expected last size {len(self.attribute_vocabulary)}, got {probabilities.shape[-1]}")
        results = []
        for row in probabilities.detach().float().cpu():
            picked = [(float(p), self.attribute_vocabulary[i]) for i, p in enumerate(row.tolist()) if p > threshold]
            results.append([{"attribute": word, "score": score} for score, word in sorted(picked, reverse=True)])
        return results

    # -- decoding --------------------------------------------------------------------------------------------------
    def batch_decode(self, sequences: Any, skip_special_tokens: bool = True, **kwargs: Any) -> list[str]:
        """Decode generated ids; special tokens (BOS/EOS/PAD) are dropped by id. Character-level: every space goes
        (the original's input had none); otherwise only the spaces a BERT tokenizer puts next to CJK characters."""
        texts = self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens, **kwargs)
        if self.character_level:  # every token is a character: the spaces between them are the tokenizer's
            return ["".join(t.split()) for t in texts]
        return [_CJK_SPACES.sub("", t).strip() for t in texts]

    def decode(self, sequence: Any, skip_special_tokens: bool = True, **kwargs: Any) -> str:
        """Decode one sequence (see `batch_decode`)."""
        return self.batch_decode([sequence], skip_special_tokens=skip_special_tokens, **kwargs)[0]

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values", "image_mask", "visual_features", "visual_boxes",
                "visual_attention_mask", "visual_class_probs"]


__all__ = ["MMAPSProcessor", "MMAPSProcessorKwargs", "image_processor_for_vision_config"]
