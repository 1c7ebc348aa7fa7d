"""Load any Hub vision-language model behind ``pipeline("image-text-to-text")`` for MCoT captioning, checking
before any work that it can take images and has a chat template."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _read_chat_template(chat_template: str) -> str:
    path = Path(chat_template)
    if len(chat_template) < 1024 and path.is_file():
        return path.read_text(encoding="utf-8")
    return chat_template


def check_captioning_processor(processor: Any, model_name: str = "the model") -> None:
    """Raise a clear ``ValueError`` unless ``processor`` can turn an image + chat into model inputs.

    Needs an image processor (the model takes images) and a chat template (the MCoT prompt is a chat turn).
    """
    if processor is None or getattr(processor, "image_processor", None) is None:
        raise ValueError(
            f"{model_name} has no image processor (got {type(processor).__name__}): it cannot take images. "
            "MCoT captioning needs a vision-language model served by pipeline('image-text-to-text'), "
            "e.g. Qwen2-VL, LLaVA or SmolVLM."
        )
    template = getattr(processor, "chat_template", None)
    if not template:
        raise ValueError(
            f"{model_name} has no chat template (processor {type(processor).__name__}.chat_template is None). "
            "MCoT captioning sends the prompt as a chat turn; pass chat_template= (a Jinja string or a .jinja file) "
            "or use an instruction-tuned VLM that ships one."
        )


def load_captioning_pipeline(
    model_name_or_path: str,
    *,
    device: str | int | None = None,
    device_map: str | None = None,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    chat_template: str | None = None,
) -> Any:
    """Build ``pipeline("image-text-to-text")`` for any Hub VLM, after checking it can caption.

    Checks, before loading weights: the model type has an image-text-to-text class (or remote code declaring
    one), and its processor has an image processor and a chat template (``chat_template`` — a Jinja string or
    file — fills a missing one). The tokenizer pads on the left, as batched decoder-only generation needs.
    With neither ``device`` nor ``device_map``, the device is the one ``accelerate`` picks for this process.

    Raises:
        ValueError: when the model cannot take images or has no chat template.
    """
    from transformers import AutoConfig, AutoProcessor, pipeline
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    auto_map = getattr(config, "auto_map", None) or {}
    if config.model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES and not (
        "AutoModelForImageTextToText" in auto_map or "AutoModelForVision2Seq" in auto_map
    ):
        raise ValueError(
            f"{model_name_or_path!r} (model_type={config.model_type!r}) is not an image-text-to-text model: "
            "it cannot take images. Use a vision-language model such as Qwen2-VL, LLaVA or SmolVLM."
        )
    processor = AutoProcessor.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    if chat_template is not None:
        processor.chat_template = _read_chat_template(chat_template)
    check_captioning_processor(processor, repr(model_name_or_path))
    processor.tokenizer.padding_side = "left"

    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if device_map is not None:
        kwargs["device_map"] = device_map
    else:
        if device is None:
            from accelerate import PartialState

            device = PartialState().device
        kwargs["device"] = device
    pipe = pipeline("image-text-to-text", model=model_name_or_path, processor=processor, **kwargs)
    # The pipeline may have re-read the tokenizer; batched generation must pad on the left.
    pipe.processor.tokenizer.padding_side = "left"
    if pipe.tokenizer is not None:
        pipe.tokenizer.padding_side = "left"
    return pipe


__all__ = ["check_captioning_processor", "load_captioning_pipeline"]
