"""MCoT target captioning: a vision-language model, guided by a multi-level chain-of-thought prompt, captions every
target image of a gallery (CSMCIR's first component).

``prompts`` (the prompts, stored as data in ``prompts/*.json``), ``vlm`` (loading any Hub VLM behind
``pipeline("image-text-to-text")``, checked before any work), ``answer_parsing`` (a robust parser of the model's
answer), ``image_sources`` (a folder, a CIRR-layout split, a ``datasets`` folder), ``engines`` (what generates: the
transformers pipeline, or vLLM when installed) and ``runner`` (the resumable, batched run, sharded across processes,
and the journal merge). The caption file format itself lives in ``data.caption_files``.
"""

from __future__ import annotations

from ..lazy_exports import lazy_exports

# Public name -> the module that defines it, imported on first access.
_EXPORTS: dict[str, str] = {
    "parse_mcot_answer": ".answer_parsing",
    **dict.fromkeys([
        "ImageRecord", "images_from_cirr_split", "images_from_directory", "images_from_saved_dataset",
    ], ".image_sources"),
    **dict.fromkeys(["MCoTPrompt", "available_mcot_prompts", "build_mcot_messages", "load_mcot_prompt"], ".prompts"),
    **dict.fromkeys(["CaptionCache", "CaptioningReport", "generate_mcot_captions", "merge_caption_journals"], ".runner"),
    **dict.fromkeys(["CaptionEngine", "PipelineEngine", "VLLMEngine", "as_caption_engine"], ".engines"),
    **dict.fromkeys(["check_captioning_processor", "load_captioning_pipeline"], ".vlm"),
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
