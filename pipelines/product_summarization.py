"""The ``product-summarization`` pipeline: product text (+ optional image) → selling summary + attributes.

    summarizer = pipeline("product-summarization", model=path_or_repo, trust_remote_code=True)
    summarizer({"text": long_text, "image": image})            # image: PIL image, path/URL, or None
    # -> [{"summary_text": "...", "attributes": [{"attribute": "红色", "score": 0.93}, ...]}]
    summarizer([{"text": a}, {"text": b, "image": img}], batch_size=2)   # one such list per product

Any ``generate`` setting passes through (``num_beams=3, max_new_tokens=90``, or ``generate_kwargs={...}``);
``attribute_threshold`` (default: the model config's) and ``top_k_attributes`` shape the attribute list.
A model that reads pre-extracted regions instead of pixels takes ``{"text", "visual_features", "visual_boxes"}``.

Hub rule: ``pipe.save_pretrained`` copies this file next to the model, so it imports only torch, numpy, PIL,
transformers and its own siblings.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import Pipeline
from transformers.image_utils import load_image
from transformers.utils import logging

from .hub_code import save_pipeline_code

logger = logging.get_logger(__name__)

TASK = "product-summarization"
_VISUAL_REGION_KEYS = ("visual_features", "visual_boxes", "visual_class_probs")
#: The keys a product dict may carry; any other (a misspelt "imgae") is refused instead of silently ignored.
_PRODUCT_KEYS = ("text", "image", *_VISUAL_REGION_KEYS)


def _describe_product(inputs: Any) -> str:
    """How an error names one product of a batch: by the start of its text (the pipeline sees items one by one)."""
    text = inputs.get("text") if isinstance(inputs, dict) else None
    if isinstance(text, str) and text.strip():
        snippet = text.strip()[:40] + ("..." if len(text.strip()) > 40 else "")
        return f"product {snippet!r}"
    return "product"


class ProductSummarizationPipeline(Pipeline):
    """Summarize products with an MMAPS model (``AutoModelForSeq2SeqLM`` + ``MMAPSProcessor``)."""

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False

    def _sanitize_parameters(
        self,
        generate_kwargs: dict[str, Any] | None = None,
        attribute_threshold: float | None = None,
        top_k_attributes: int | None = None,
        **kwargs: Any,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        forward: dict[str, Any] = {}
        postprocess: dict[str, Any] = {}
        # Every other keyword is a generation setting (num_beams, max_new_tokens, do_sample, ...).
        merged = {**(generate_kwargs or {}), **kwargs}
        if merged:
            forward["generate_kwargs"] = merged
        if attribute_threshold is not None:
            if not 0.0 < attribute_threshold < 1.0:
                raise ValueError(f"attribute_threshold: expected a probability in (0, 1), got {attribute_threshold}")
            postprocess["attribute_threshold"] = attribute_threshold
        if top_k_attributes is not None:
            if isinstance(top_k_attributes, bool) or not isinstance(top_k_attributes, int) or top_k_attributes < 0:
                raise ValueError(f"top_k_attributes: expected an int >= 0, got {top_k_attributes!r}")
            postprocess["top_k_attributes"] = top_k_attributes
        return {}, forward, postprocess

    def __call__(self, inputs: Any, **kwargs: Any) -> Any:
        """Summarize one product (a dict, or a bare string for text only) or a list of them.

        Returns ``[{"summary_text", "attributes"}]`` for one product and a list of such lists for a list.
        """
        return super().__call__(inputs, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Save model, pipeline code and the full processor (with its attribute vocabulary)."""
        # The base class saves the tokenizer and image processor only; the processor carries the attribute
        # vocabulary and its own remote-code file, which a reload needs. A pipeline loaded from a Hub folder is an
        # unregistered class whose code transformers would not copy (see hub_code.py).
        save_pipeline_code(self, save_directory, TASK, ("AutoModelForSeq2SeqLM",), "multimodal")
        super().save_pretrained(save_directory, **kwargs)
        if self.processor is not None:
            self.processor.save_pretrained(save_directory)

    # -- stages ----------------------------------------------------------------------------------------------------
    def _uses_pixels(self) -> bool:
        return getattr(self.model.config, "vision_config", None) is not None

    def preprocess(self, inputs: Any) -> dict[str, torch.Tensor]:
        if isinstance(inputs, str):
            inputs = {"text": inputs}
        name = _describe_product(inputs)
        if not isinstance(inputs, dict):
            raise ValueError(f"{name}: expected {{'text': str, 'image': optional}} or a list of them, got {type(inputs).__name__}")
        unknown = sorted(str(key) for key in inputs if key not in _PRODUCT_KEYS)
        if unknown:
            raise ValueError(f"{name}: unknown keys {unknown}; expected some of {list(_PRODUCT_KEYS)} (is one misspelt?)")
        text = inputs.get("text")
        if not isinstance(text, str) or not text.strip():
            got = "missing" if "text" not in inputs else f"{type(text).__name__} {text!r}"[:80]
            raise ValueError(f"{name}: inputs['text'] expected a non-empty product description, got {got}")
        image = inputs.get("image")
        has_regions = inputs.get("visual_features") is not None
        if image is not None and not self._uses_pixels():
            raise ValueError(
                "inputs['image']: this model reads pre-extracted region features (config.vision_config is None); "
                "pass 'visual_features' and 'visual_boxes' instead"
            )
        if has_regions and self._uses_pixels():
            raise ValueError("inputs['visual_features']: this model reads raw images; pass 'image' instead")
        if self._uses_pixels():
            if (isinstance(image, str) and len(image) < 1024 and not image.startswith(("http://", "https://"))
                    and not os.path.isfile(image)):
                # Short strings are paths, not base64 images: say the file is missing, not "Incorrect padding".
                raise ValueError(f"{name}: cannot read inputs['image'] {image!r}: no such file")
            try:
                picture = load_image(image) if image is not None else None
            except Exception as error:  # noqa: BLE001 - PIL / httpx / base64 errors, named with their product
                source = repr(image)[:120] if isinstance(image, str) else type(image).__name__
                raise ValueError(
                    f"{name}: cannot read inputs['image'] {source}: {type(error).__name__}: {error}"
                ) from None
            encoded = self.processor(text=[text], images=[picture], return_tensors="pt")
            if "pixel_values" not in encoded:
                # A product without an image still gets a (zero) pixel tensor, so every item has the same keys and
                # batching works; image_mask = 0 makes the model ignore it.
                image_processor = self.processor.image_processor
                # CLIP processors crop; SigLIP / ViT ones only resize (their crop_size is None).
                size = getattr(image_processor, "crop_size", None) or image_processor.size
                encoded["pixel_values"] = torch.zeros(1, 3, size["height"], size["width"])
        elif has_regions:
            encoded = self.processor(
                text=[text], return_tensors="pt",
                **{k: [inputs[k]] for k in _VISUAL_REGION_KEYS if inputs.get(k) is not None},
            )
            encoded.pop("visual_class_probs", None)  # a training target, not an input
        else:
            encoded = self.processor(text=[text], return_tensors="pt")
            encoded["image_mask"] = torch.zeros(1, dtype=torch.long)
            if getattr(self.model.config, "use_visual", False):
                # One masked zero region, so a batch mixing products with and without regions has the same keys;
                # image_mask = 0 and the region mask keep the model from reading it.
                feature_dim = self.model.config.visual_feature_dim
                encoded["visual_features"] = torch.zeros(1, 1, feature_dim)
                encoded["visual_boxes"] = torch.zeros(1, 1, 4)
                encoded["visual_attention_mask"] = torch.zeros(1, 1, dtype=torch.long)
        return dict(encoded)

    def _forward(self, model_inputs: dict[str, torch.Tensor], generate_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
        generate_kwargs = dict(generate_kwargs or {})
        input_ids, attention_mask = model_inputs["input_ids"], model_inputs["attention_mask"]
        visual_inputs = {k: v for k, v in model_inputs.items() if k not in ("input_ids", "attention_mask")}
        if model_inputs.get("image_mask") is not None and not bool(model_inputs["image_mask"].any()):
            # No product of the batch has an image: leave the visual inputs out entirely.
            visual_inputs = {}
        wants_attributes = bool(getattr(self.model.config, "num_attributes", 0))
        if hasattr(self.model, "get_attribute_logits") and "encoder_outputs" not in generate_kwargs:
            # One encoder pass (BART encoder, visual side, fusion) serves both the summary and the attributes:
            # generate() reuses `encoder_outputs` (expanding it for beams) instead of encoding again.
            encoder_outputs = self.model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask, **visual_inputs)
            probabilities = None
            if wants_attributes:
                # Before generate(): its beam expansion may rewrite the encoder output's fields in place.
                probabilities = torch.sigmoid(self.model.get_attribute_logits(encoder_outputs, attention_mask))
            generated = self.model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                            encoder_outputs=encoder_outputs, **generate_kwargs)
            return {"generated": generated, "attribute_probabilities": probabilities}
        generated = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **visual_inputs, **generate_kwargs)
        probabilities = None
        if wants_attributes and hasattr(self.model, "predict_attributes"):
            probabilities, _ = self.model.predict_attributes(input_ids, attention_mask, **visual_inputs)
        return {"generated": generated, "attribute_probabilities": probabilities}

    def postprocess(
        self, model_outputs: dict[str, Any], attribute_threshold: float | None = None, top_k_attributes: int | None = None
    ) -> list[dict[str, Any]]:
        summaries = self.processor.batch_decode(model_outputs["generated"], skip_special_tokens=True)
        probabilities = model_outputs.get("attribute_probabilities")
        vocabulary = getattr(self.processor, "attribute_vocabulary", None)
        if probabilities is not None and vocabulary is not None and probabilities.shape[-1] != len(vocabulary):
            raise ValueError(
                f"attribute vocabulary has {len(vocabulary)} words but the model predicts {probabilities.shape[-1]} "
                "attributes (config.num_attributes); the processor and model do not belong together"
            )
        if attribute_threshold is None:
            attribute_threshold = float(getattr(self.model.config, "attribute_threshold", 0.5))
        results = []
        for index, summary in enumerate(summaries):
            attributes: list[dict[str, Any]] = []
            if probabilities is not None and vocabulary:
                attributes = self.processor.decode_attributes(probabilities[index : index + 1], threshold=attribute_threshold)[0]
                if top_k_attributes is not None:
                    attributes = attributes[:top_k_attributes]
            results.append({"summary_text": summary, "attributes": attributes})
        return results
