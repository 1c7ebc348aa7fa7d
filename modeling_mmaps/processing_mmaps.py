"""MMAPSProcessor: text tokenizer + image processor + region-feature packing + the attribute vocabulary.

Turns products (long text, optional image or pre-extracted detector regions, optional reference summary and
attribute words) into the tensors `MMAPSForConditionalGeneration` takes, and decodes summaries back. The tokenizer is
a BERT-style Chinese character vocabulary (as `fnlp/bart-base-chinese`) or any BART tokenizer; the image processor is
a PIL one (no torchvision). The attribute vocabulary (a list of words, built elsewhere) is saved with the processor.

Hub rule: this file is copied next to saved weights; it imports only torch/numpy/PIL/transformers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature, BertTokenizer, CLIPImageProcessorPil
from transformers.processing_utils import ProcessorMixin
from transformers.utils import logging

logger = logging.get_logger(__name__)

# Spaces that a character-level tokenizer's decode puts between CJK characters (and CJK punctuation).
_CJK = r"\u3000-\u303f\u4e00-\u9fff\uff00-\uffef"
_CJK_SPACES = re.compile(rf"(?<=[{_CJK}])\s+(?=[{_CJK}])|(?<=[{_CJK}])\s+(?=[0-9A-Za-z])|(?<=[0-9A-Za-z])\s+(?=[{_CJK}])")

#: BERT's special tokens, in the order that gives [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4.
BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


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
    """

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        attribute_vocabulary: list[str] | None = None,
        max_source_length: int = 400,
        max_target_length: int = 90,
        max_regions: int = 36,
        **kwargs: Any,
    ) -> None:
        self.attribute_vocabulary = list(attribute_vocabulary) if attribute_vocabulary is not None else None
        if self.attribute_vocabulary is not None and len(set(self.attribute_vocabulary)) != len(self.attribute_vocabulary):
            raise ValueError("attribute_vocabulary: words must be unique")
        self.max_source_length = max_source_length
        self.max_target_length = max_target_length
        self.max_regions = max_regions
        super().__init__(image_processor, tokenizer, **kwargs)

    # -- construction ----------------------------------------------------------------------------------------------
    @classmethod
    def from_vocabulary(
        cls, tokens: Sequence[str] | dict[str, int], image_size: int = 32, **kwargs: Any
    ) -> MMAPSProcessor:
        """A BERT-style character tokenizer over `tokens` (special tokens prepended when missing) + a CLIP PIL
        image processor producing `image_size`² images. `kwargs` go to `MMAPSProcessor.__init__`."""
        if isinstance(tokens, dict):
            vocab = dict(tokens)
        else:
            ordered = [t for t in BERT_SPECIAL_TOKENS if t not in tokens] + [t for t in dict.fromkeys(tokens)]
            vocab = {token: index for index, token in enumerate(ordered)}
        tokenizer = BertTokenizer(vocab=vocab, tokenize_chinese_chars=True, do_lower_case=True)
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
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
        return_tensors: str = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """Encode a batch of products.

        Args:
            text: product descriptions (one string per product; empty strings raise).
            images: one PIL image (or None for a product without one) per product → `pixel_values`, `image_mask`.
            summaries: reference summaries → `labels` (padding = -100).
            visual_features / visual_boxes / visual_class_probs: per product an array (R_i, F) / (R_i, 4) in [0, 1] /
                (R_i, C), or None → padded `visual_features`, `visual_boxes`, `visual_attention_mask`,
                `visual_class_probs`, `image_mask`.
            attributes: per product a list of attribute words → multi-hot `attribute_labels`.
        """
        if text is None:
            raise ValueError("text: MMAPSProcessor needs the product text")
        texts = [text] if isinstance(text, str) else list(text)
        for index, value in enumerate(texts):
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"text: product {index} has empty text")
        batch = len(texts)
        encoded = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt",
                                 max_length=kwargs.pop("max_source_length", self.max_source_length))
        data: dict[str, Any] = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

        if summaries is not None:
            targets = [summaries] if isinstance(summaries, str) else list(summaries)
            if len(targets) != batch:
                raise ValueError(f"summaries: expected {batch} (one per text), got {len(targets)}")
            labels = self.tokenizer(targets, padding=True, truncation=True, return_tensors="pt",
                                    max_length=kwargs.pop("max_target_length", self.max_target_length))
            data["labels"] = labels["input_ids"].masked_fill(labels["attention_mask"] == 0, -100)

        if images is not None:
            data.update(self._pack_images(images, batch))
        if visual_features is not None:
            if images is not None:
                raise ValueError("images: pass either images or visual_features, not both")
            data.update(self._pack_regions(visual_features, visual_boxes, visual_class_probs, batch))
        if attributes is not None:
            data["attribute_labels"] = self.encode_attributes(attributes)
            if data["attribute_labels"].shape[0] != batch:
                raise ValueError(f"attributes: expected {batch} lists (one per text), got {len(attributes)}")
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _pack_images(self, images: Any, batch: int) -> dict[str, torch.Tensor]:
        items = [images] if not isinstance(images, (list, tuple)) else list(images)
        if len(items) != batch:
            raise ValueError(f"images: expected {batch} (one per text, None for none), got {len(items)}")
        present = [i for i, image in enumerate(items) if image is not None]
        image_mask = torch.zeros(batch, dtype=torch.long)
        image_mask[present] = 1
        if not present:
            return {"image_mask": image_mask}
        pixels = self.image_processor([items[i] for i in present], return_tensors="pt")["pixel_values"]
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
        """Decode generated ids; special tokens (BOS/EOS/PAD) are dropped by id, and the spaces a character
        tokenizer puts between CJK characters are removed."""
        texts = self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens, **kwargs)
        return [_CJK_SPACES.sub("", t).strip() for t in texts]

    def decode(self, sequence: Any, skip_special_tokens: bool = True, **kwargs: Any) -> str:
        """Decode one sequence (see `batch_decode`)."""
        return self.batch_decode([sequence], skip_special_tokens=skip_special_tokens, **kwargs)[0]

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values", "image_mask", "visual_features", "visual_boxes",
                "visual_attention_mask", "visual_class_probs"]


__all__ = ["MMAPSProcessor"]
