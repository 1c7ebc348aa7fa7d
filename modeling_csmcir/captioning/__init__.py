"""MCoT target captioning: a vision-language model, guided by a multi-level chain-of-thought prompt, captions every
target image of a gallery (CSMCIR's first component).

``prompts`` (the prompts, stored as data in ``prompts/*.json``), ``vlm`` (loading any Hub VLM behind
``pipeline("image-text-to-text")``, checked before any work), ``answer_parsing`` (a robust parser of the model's
answer), ``image_sources`` (a folder, a CIRR-layout split, a ``datasets`` folder) and ``runner`` (the resumable,
batched run). The caption file format itself lives in ``data.caption_files``.
"""

from .answer_parsing import parse_mcot_answer
from .image_sources import ImageRecord, images_from_cirr_split, images_from_directory, images_from_saved_dataset
from .prompts import MCoTPrompt, available_mcot_prompts, build_mcot_messages, load_mcot_prompt
from .runner import CaptionCache, CaptioningReport, generate_mcot_captions
from .vlm import check_captioning_processor, load_captioning_pipeline

__all__ = [
    "CaptionCache",
    "CaptioningReport",
    "ImageRecord",
    "MCoTPrompt",
    "available_mcot_prompts",
    "build_mcot_messages",
    "check_captioning_processor",
    "generate_mcot_captions",
    "images_from_cirr_split",
    "images_from_directory",
    "images_from_saved_dataset",
    "load_captioning_pipeline",
    "load_mcot_prompt",
    "parse_mcot_answer",
]
