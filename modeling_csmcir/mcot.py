"""MCoT target captioning: a multimodal LLM, guided by a multi-level chain-of-thought prompt, captions every
target image of a gallery (CSMCIR's first component).

CSMCIR makes the target side of composed image retrieval look like the query side (image + text) by giving
each target image a caption. The caption comes from a vision-language model prompted to reason in levels —
the global scene (category, setting, style), then objects and regions, then fine attributes (colour, material,
pattern, shape, text on the item) — and to end with one concise ``Final_Caption`` that tells the image apart
from similar ones.

This module holds, each once:

* the prompts, stored as data (``mcot_prompts/{general,fashion}.json``; users may pass their own file) —
  :func:`load_mcot_prompt`;
* the checks and loading of any Hub VLM behind ``pipeline("image-text-to-text")`` —
  :func:`load_captioning_pipeline` (fails before any work when the model has no chat template or cannot take
  images);
* a robust parser of the model's answer (JSON, JSON in prose or code fences, level-tagged text, truncated
  output, Chinese) that always yields a ``Final_Caption`` and records a fallback reason when structure was
  missing — :func:`parse_mcot_answer`;
* image sources (a folder, a CIRR ``image_splits`` split, a ``datasets`` folder) — :class:`ImageRecord`;
* a resumable cache in the authors' caption format — :class:`CaptionCache`; and the batched run over a
  gallery with a progress bar — :func:`generate_mcot_captions`.

The caption file format itself (reading, writing, entry layout) lives in ``captions.py``.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm
from transformers.utils import logging

from .captions import (
    FALLBACK_REASON_KEY,
    FINAL_CAPTION_KEY,
    MCOT_LEVEL_KEYS,
    CaptionEntry,
    load_caption_entries,
    make_caption_entry,
    save_caption_file,
)


logger = logging.get_logger(__name__)

PROMPT_DIR = Path(__file__).resolve().parent / "mcot_prompts"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


# --------------------------------------------------------------------------------------------------------------
# Prompts (data, not code)
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MCoTPrompt:
    """A multi-level chain-of-thought captioning prompt.

    Attributes:
        name: short name (``"general"``, ``"fashion"`` or the file stem of a user prompt).
        prompt: the user-turn instruction sent beside the image.
        system: optional system-turn text (left out of the chat when ``None``; not every template has one).
        description: what the prompt is for.
    """

    name: str
    prompt: str
    system: str | None = None
    description: str = ""


def available_mcot_prompts() -> list[str]:
    """Names of the prompts shipped with the package (files in ``mcot_prompts/``)."""
    return sorted(p.stem for p in PROMPT_DIR.glob("*.json"))


def load_mcot_prompt(name_or_path: str | os.PathLike = "general") -> MCoTPrompt:
    """Load a shipped prompt by name (``"general"``, ``"fashion"``) or a user prompt file.

    A ``.json`` file holds ``{"prompt": str, "system": str | null, "name": str, "description": str}`` (only
    ``prompt`` is required); any other file is read as the prompt text itself.

    Raises:
        ValueError: for an unknown name, an empty prompt, or a JSON file without a string ``prompt``.
    """
    path = Path(name_or_path)
    if not path.is_file():
        shipped = PROMPT_DIR / f"{name_or_path}.json"
        if not shipped.is_file():
            raise ValueError(
                f"prompt {str(name_or_path)!r} is neither a file nor a shipped prompt "
                f"(expected a path or one of {available_mcot_prompts()})"
            )
        path = shipped
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: prompt file is not valid JSON ({err})") from err
        if not isinstance(data, dict) or not isinstance(data.get("prompt"), str):
            got = type(data.get("prompt")).__name__ if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{path}: expected an object with a string 'prompt' (got {got})")
        system = data.get("system")
        if system is not None and not isinstance(system, str):
            raise ValueError(f"{path}: 'system' must be a string or null (got {type(system).__name__})")
        prompt = MCoTPrompt(
            name=str(data.get("name", path.stem)),
            prompt=data["prompt"],
            system=system or None,
            description=str(data.get("description", "")),
        )
    else:
        prompt = MCoTPrompt(name=path.stem, prompt=path.read_text(encoding="utf-8"))
    if not prompt.prompt.strip():
        raise ValueError(f"{path}: the prompt text is empty")
    return prompt


def build_mcot_messages(image: Image.Image, prompt: MCoTPrompt) -> list[dict[str, Any]]:
    """The chat for one image: an optional system turn, then a user turn holding the image and the prompt."""
    messages: list[dict[str, Any]] = []
    if prompt.system:
        messages.append({"role": "system", "content": [{"type": "text", "text": prompt.system}]})
    messages.append(
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt.prompt}]}
    )
    return messages


# --------------------------------------------------------------------------------------------------------------
# Parsing the model's answer
# --------------------------------------------------------------------------------------------------------------

_THINK_BLOCK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)
_CODE_FENCE = re.compile(r"```[a-zA-Z]*\s*\n?(.*?)(```|$)", re.DOTALL)
# A "key": "value" pair whose value may be cut off by the end of the text (truncated generation).
_JSON_PAIR = re.compile(r'"([^"\n]{1,60})"\s*[:：]\s*"((?:[^"\\]|\\.)*)("|$)', re.DOTALL)
# A heading at the start of a line ("**Level 1 - Global scene:**", "Final Caption:", "最终描述：").
_TAG_LINE = re.compile(r"^[ \t>#*\-•\d.)]*([^:：\n]{1,50}?)\**\s*[:：]\s*\**(.*)$", re.MULTILINE)


def _canonical_key(key: str) -> str | None:
    """Map a key or heading the model wrote to one of the authors' keys, or ``None``.

    Models rename keys freely ("Final Caption", "level1", "Global scene", "最终描述"), so the match is on
    lower-cased alphanumerics and a few words per level, checked from the final caption down.
    """
    k = re.sub(r"[^a-z0-9\u4e00-\u9fff]", "", key.lower())
    if not k:
        return None
    if "final" in k or k in {"caption", "finalcaption"} or "最终" in k or "最后" in k or "总结" in k:
        return FINAL_CAPTION_KEY
    if "level1" in k or "global" in k or "scene" in k or "全局" in k or "场景" in k or "第一" in k or "整体" in k:
        return "level_1_global"
    if "level2" in k or "object" in k or "region" in k or "part" in k or "物体" in k or "对象" in k or "第二" in k:
        return "level_2_objects"
    if "level3" in k or "attribute" in k or "detail" in k or "属性" in k or "细节" in k or "第三" in k:
        return "level_3_attributes"
    return None


def _as_text(value: Any) -> str:
    """Flatten a JSON value the model produced (string, list, dict, number) into one line of text."""
    if value is None:
        return ""
    if isinstance(value, str):
        return " ".join(value.split())
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_as_text(v)}" for k, v in value.items() if _as_text(v))
    if isinstance(value, (list, tuple)):
        return "; ".join(t for t in (_as_text(v) for v in value) if t)
    return str(value)


def _balanced_objects(text: str) -> Iterator[str]:
    """Every top-level ``{...}`` span of ``text``, string-aware (braces inside quoted strings do not count)."""
    depth, start, in_string, escaped = 0, -1, False, False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"' and depth > 0:
            in_string = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                yield text[start : i + 1]


def _loads_lenient(candidate: str) -> Any:
    """``json.loads`` that also accepts trailing commas and typographic quotes, the usual LLM slips."""
    try:
        return json.loads(candidate)
    except json.JSONDecodeError:
        pass
    repaired = candidate.replace("“", '"').replace("”", '"')
    repaired = re.sub(r",\s*([}\]])", r"\1", repaired)
    try:
        return json.loads(repaired)
    except json.JSONDecodeError:
        return None


def _fields_from_mapping(obj: Any, depth: int = 0) -> dict[str, str]:
    """The authors' keys found in a parsed JSON object (looking one level into wrappers like ``{"answer": {...}}``)."""
    found: dict[str, str] = {}
    if not isinstance(obj, dict):
        return found
    for key, value in obj.items():
        canonical = _canonical_key(str(key))
        if canonical is not None and canonical not in found:
            text = _as_text(value)
            if text:
                found[canonical] = text
                continue
        if isinstance(value, dict) and depth == 0:
            for k, v in _fields_from_mapping(value, depth + 1).items():
                found.setdefault(k, v)
    return found


def _fields_from_json(text: str) -> dict[str, str]:
    candidates = [m.group(1) for m in _CODE_FENCE.finditer(text)] + list(_balanced_objects(text))
    best: dict[str, str] = {}
    for candidate in candidates:
        for obj in (_loads_lenient(candidate), *(_loads_lenient(o) for o in _balanced_objects(candidate))):
            fields = _fields_from_mapping(obj)
            # Prefer the object carrying a final caption, then the one with the most levels.
            if (FINAL_CAPTION_KEY in fields, len(fields)) > (FINAL_CAPTION_KEY in best, len(best)):
                best = fields
    return best


def _fields_from_pairs(text: str) -> tuple[dict[str, str], str | None]:
    """``"key": "value"`` pairs read with a regex: what is left of JSON that was cut off or malformed.

    Also returns the key whose value runs to the end of the text without a closing quote (cut off), if any.
    """
    found: dict[str, str] = {}
    cut_off: str | None = None
    for key, value, closing in _JSON_PAIR.findall(text):
        canonical = _canonical_key(key)
        if canonical is None or canonical in found:
            continue
        if not closing:
            cut_off = canonical
        try:
            value = json.loads(f'"{value}"')
        except json.JSONDecodeError:
            value = value.replace('\\"', '"').rstrip("\\")
        value = _as_text(value)
        if value:
            found[canonical] = value
    return found, cut_off


def _fields_from_tags(text: str) -> dict[str, str]:
    """Level-tagged prose: a heading per level followed by its text (possibly over several lines)."""
    found: dict[str, str] = {}
    current: str | None = None
    for line in text.splitlines():
        match = _TAG_LINE.match(line)
        canonical = _canonical_key(match.group(1)) if match else None
        if canonical is not None:
            current = canonical if canonical not in found else None
            if current is not None:
                found[current] = match.group(2).strip().strip('*"').strip()
        elif current is not None and line.strip():
            found[current] = f"{found[current]} {line.strip()}".strip()
    return {k: _as_text(v.strip('"')) for k, v in found.items() if _as_text(v.strip('"'))}


def _shorten(text: str, max_chars: int) -> str:
    """Cut ``text`` to at most ``max_chars`` characters at a sentence, else a word, boundary."""
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    for stops in (".!?。！？", ";；,，"):
        cut = max(head.rfind(s) for s in stops)
        if cut >= max_chars // 3:
            return head[: cut + 1].strip()
    cut = head.rfind(" ")
    return (head[:cut] if cut >= max_chars // 3 else head).strip()


def parse_mcot_answer(text: str, *, max_fallback_chars: int = 300) -> dict[str, str]:
    """Parse a VLM's MCoT answer into an entry of the authors' caption format.

    Tried in order, keeping the first that yields structure: a JSON object (bare, inside prose, or in a code
    fence; trailing commas and curly quotes forgiven; keys matched loosely, e.g. ``"Final Caption"``), then
    ``"key": "value"`` pairs (JSON cut off by ``max_new_tokens``), then level-tagged lines
    (``Level 2 (objects): ...``, ``最终描述：...``). ``<think>...</think>`` blocks are dropped first.

    A ``Final_Caption`` is always returned. A caption cut off mid-string is kept with a fallback reason saying so.
    When the answer had none, it is built from the levels found
    (``"; ".join`` of the non-empty levels, cut to ``max_fallback_chars``) or, with no structure at all, from the
    answer itself (cut the same way), and ``entry["fallback_reason"]`` says which; an empty answer gives an
    empty caption with reason ``"empty answer"``.
    """
    cleaned = _THINK_BLOCK.sub(" ", text or "").strip()
    fields = _fields_from_json(cleaned)
    how, cut_off = "json", None
    if not fields:
        (fields, cut_off), how = _fields_from_pairs(cleaned), "truncated or malformed JSON"
    if not fields:
        fields, how = _fields_from_tags(cleaned), "level-tagged text"
    levels = {key: fields.get(key, "") for key in MCOT_LEVEL_KEYS}
    reason: str | None = None
    final = fields.get(FINAL_CAPTION_KEY, "")
    if final and cut_off == FINAL_CAPTION_KEY:
        reason = f"{FINAL_CAPTION_KEY} was cut off (answer truncated, raise max_new_tokens); kept as written"
    if not final:
        present = [key for key in MCOT_LEVEL_KEYS if levels[key]]
        if present:
            final = _shorten("; ".join(levels[key] for key in present), max_fallback_chars)
            reason = f"no {FINAL_CAPTION_KEY} in the answer ({how}); caption built from {', '.join(present)}"
        elif cleaned:
            plain = _CODE_FENCE.sub(lambda m: m.group(1), cleaned)
            final = _shorten(plain, max_fallback_chars)
            reason = "no structured answer; caption is the start of the raw answer"
        else:
            reason = "empty answer"
    return make_caption_entry(final, fallback_reason=reason, **levels)


# --------------------------------------------------------------------------------------------------------------
# Loading a VLM behind pipeline("image-text-to-text"), with checks before any work
# --------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------
# Image sources
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRecord:
    """One image to caption: its name in the caption file and a loader that decodes it (may raise)."""

    name: str
    load: Callable[[], Image.Image]
    source: str = ""


def _decode_image(opener: Callable[[], Any]) -> Image.Image:
    with Image.open(opener()) as img:
        # load() forces the full decode now, so truncated files fail here and not inside the pipeline.
        img.load()
        return img.convert("RGB")


def _file_loader(path: Path) -> Callable[[], Image.Image]:
    return lambda: _decode_image(lambda: path)


def _bytes_loader(data: bytes) -> Callable[[], Image.Image]:
    return lambda: _decode_image(lambda: io.BytesIO(data))


def images_from_directory(
    image_dir: str | os.PathLike, *, recursive: bool = True, keep_extension: bool = False
) -> list[ImageRecord]:
    """Every image file under ``image_dir`` (sorted), named by its path relative to the folder.

    Names drop the extension by default, as FashionIQ and CIRR name their images (``B00006M009``,
    ``dev-245-2-img0``); ``keep_extension=True`` keeps it.

    Raises:
        ValueError: if the folder does not exist, holds no image, or two files map to the same name.
    """
    root = Path(image_dir)
    if not root.is_dir():
        raise ValueError(f"image_dir {str(root)!r} is not a directory")
    pattern = root.rglob("*") if recursive else root.glob("*")
    files = sorted(p for p in pattern if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"image_dir {str(root)!r} holds no image file (expected extensions {IMAGE_EXTENSIONS})")
    records: dict[str, ImageRecord] = {}
    for path in files:
        rel = path.relative_to(root)
        name = rel.as_posix() if keep_extension else rel.with_suffix("").as_posix()
        if name in records:
            raise ValueError(
                f"image_dir {str(root)!r}: {records[name].source!r} and {str(path)!r} both map to image name "
                f"{name!r}; pass keep_extension=True"
            )
        records[name] = ImageRecord(name=name, load=_file_loader(path), source=str(path))
    return list(records.values())


def images_from_cirr_split(
    dataset_root: str | os.PathLike, split: str, *, image_root: str | os.PathLike | None = None
) -> list[ImageRecord]:
    """The images of a CIRR-layout split: ``image_splits/split.rc2.<split>.json`` maps names to relative paths.

    The split file is looked for in ``dataset_root/image_splits`` and ``dataset_root/cirr/image_splits``.
    Relative paths resolve against ``image_root`` when given, else the first of the dataset root, the folder
    above ``image_splits``'s parent and their ``img_raw`` sub-folders in which the split's first image exists.

    Raises:
        ValueError: if the split file is missing or malformed, or no candidate root holds its images.
    """
    root = Path(dataset_root)
    candidates = [root / "image_splits", root / "cirr" / "image_splits"]
    split_file = next((c / f"split.rc2.{split}.json" for c in candidates if (c / f"split.rc2.{split}.json").is_file()), None)
    if split_file is None:
        raise ValueError(
            f"no CIRR split file split.rc2.{split}.json under {[str(c) for c in candidates]} "
            f"(expected a CIRR-layout dataset root for --dataset)"
        )
    try:
        mapping = json.loads(split_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{split_file}: not valid JSON ({err})") from err
    if not isinstance(mapping, dict) or not mapping or not all(isinstance(v, str) for v in mapping.values()):
        raise ValueError(f"{split_file}: expected a non-empty object {{image_name: relative_path}}")
    if image_root is not None:
        roots = [Path(image_root)]
    else:
        base = split_file.parent.parent
        roots = [base, base.parent, base / "img_raw", base.parent / "img_raw"]
    probe = next(iter(mapping.values()))
    found_root = next((r for r in roots if (r / probe).is_file()), None)
    if found_root is None:
        raise ValueError(
            f"{split_file}: its first image {probe!r} exists under none of {[str(r) for r in roots]} "
            "(pass image_root to say where the images are)"
        )
    return [
        ImageRecord(name=name, load=_file_loader(found_root / rel), source=str(found_root / rel))
        for name, rel in mapping.items()
    ]


def images_from_saved_dataset(
    path: str | os.PathLike,
    *,
    split: str | None = None,
    image_column: str | None = None,
    name_column: str | None = None,
) -> list[ImageRecord]:
    """The images of a ``datasets`` folder written by ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``).

    ``image_column`` defaults to the first column with an ``Image`` feature; ``name_column`` to the first of
    ``image_name``, ``name``, ``id``, ``image_id`` present, else the row index. Images are decoded here, not by
    ``datasets``, so one corrupt row is reported and skipped instead of stopping the run.

    Raises:
        ValueError: naming the folder when the split or a column is missing or names repeat.
    """
    from datasets import Dataset, DatasetDict, Image as ImageFeature, load_from_disk

    ds = load_from_disk(str(path))
    if isinstance(ds, DatasetDict):
        if split is None:
            if len(ds) != 1:
                raise ValueError(f"{path}: a DatasetDict with splits {list(ds)}; pass split=")
            split = next(iter(ds))
        if split not in ds:
            raise ValueError(f"{path}: no split {split!r} (expected one of {list(ds)})")
        ds = ds[split]
    assert isinstance(ds, Dataset)
    if image_column is None:
        image_column = next((c for c, f in ds.features.items() if isinstance(f, ImageFeature)), None)
        if image_column is None:
            raise ValueError(f"{path}: no column with an Image feature (columns {ds.column_names}); pass image_column=")
    elif image_column not in ds.column_names:
        raise ValueError(f"{path}: no image column {image_column!r} (columns {ds.column_names})")
    if name_column is None:
        name_column = next((c for c in ("image_name", "name", "id", "image_id") if c in ds.column_names), None)
    elif name_column not in ds.column_names:
        raise ValueError(f"{path}: no name column {name_column!r} (columns {ds.column_names})")
    raw = ds.cast_column(image_column, ImageFeature(decode=False))
    names = [str(n) for n in raw[name_column]] if name_column else [str(i) for i in range(len(raw))]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: column {name_column!r} has repeated image names")
    records = []
    for index, (name, cell) in enumerate(zip(names, raw[image_column])):
        cell = cell or {}
        if cell.get("bytes") is not None:
            load = _bytes_loader(cell["bytes"])
        elif cell.get("path"):
            load = _file_loader(Path(cell["path"]))
        else:

            def load(index: int = index) -> Image.Image:
                raise ValueError(f"row {index} has no image bytes or path")

        records.append(ImageRecord(name=name, load=load, source=f"{path}[{index}]"))
    return records


# --------------------------------------------------------------------------------------------------------------
# Resumable cache
# --------------------------------------------------------------------------------------------------------------


class CaptionCache:
    """Captions on disk in the authors' format, safe against a run killed at any moment.

    ``output_file`` is the caption file (JSON, written atomically, keys sorted). While a run goes on, each
    finished batch is appended and fsynced to a journal ``<output_file>.partial.jsonl`` (one ``{name: entry}``
    object per line), so a kill loses at most the batch in flight. Opening the cache reads the file, then
    replays the journal (a torn last line is dropped and cut off); :meth:`save` folds everything into the file
    and removes the journal. Entries are keyed by image name, so replay never duplicates an image.
    """

    def __init__(self, output_file: str | os.PathLike):
        self.output_file = Path(output_file)
        self.journal_file = self.output_file.with_name(self.output_file.name + ".partial.jsonl")
        self.entries: dict[str, CaptionEntry] = {}
        if self.output_file.exists():
            self.entries.update(load_caption_entries(self.output_file))
        if self.journal_file.exists():
            self._replay_journal()

    def _replay_journal(self) -> None:
        data = self.journal_file.read_bytes()
        good_end = 0
        for line_end in _line_ends(data):
            line = data[good_end:line_end]
            try:
                batch = json.loads(line.decode("utf-8"))
                if not isinstance(batch, dict):
                    raise ValueError("not an object")
            except (ValueError, UnicodeDecodeError):
                break
            self.entries.update(batch)
            good_end = line_end
        if good_end < len(data):
            logger.warning(
                "%s: dropping %d bytes of an unfinished journal line (the batch in flight when the run stopped)",
                self.journal_file,
                len(data) - good_end,
            )
            # Cut the torn tail so the next appended line starts on a fresh line.
            with self.journal_file.open("r+b") as f:
                f.truncate(good_end)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, batch: dict[str, CaptionEntry]) -> None:
        """Record finished entries: into memory and, durably, onto the journal."""
        if not batch:
            return
        self.entries.update(batch)
        line = json.dumps(batch, ensure_ascii=False) + "\n"
        with self.journal_file.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def save(self) -> Path:
        """Write every entry to ``output_file`` (sorted by name, atomically), then drop the journal."""
        save_caption_file(self.output_file, {name: self.entries[name] for name in sorted(self.entries)})
        if self.journal_file.exists():
            self.journal_file.unlink()
        return self.output_file


def _line_ends(data: bytes) -> Iterator[int]:
    start = 0
    while (nl := data.find(b"\n", start)) != -1:
        yield nl + 1
        start = nl + 1


# --------------------------------------------------------------------------------------------------------------
# The captioning run
# --------------------------------------------------------------------------------------------------------------


@dataclass
class CaptioningReport:
    """What a run did. ``skipped`` maps each unreadable or failed image to the reason."""

    output_file: Path
    total: int = 0
    captioned: int = 0
    reused: int = 0
    fallbacks: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    generated_tokens: int = 0

    @property
    def images_per_second(self) -> float:
        return self.captioned / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0


def _batches(items: Sequence[ImageRecord], size: int) -> Iterator[list[ImageRecord]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _load_batch(records: list[ImageRecord]) -> list[tuple[ImageRecord, Image.Image | None, str | None]]:
    loaded = []
    for record in records:
        try:
            loaded.append((record, record.load(), None))
        except Exception as err:  # noqa: BLE001 — any decode failure is reported per image, never fatal
            loaded.append((record, None, f"unreadable image ({type(err).__name__}: {err})"))
    return loaded


def _prefetched(batches: Iterable[list[ImageRecord]], workers: int) -> Iterator[list[tuple]]:
    """Decode the next batch's images in background threads while the current batch generates."""
    if workers <= 0:
        yield from (_load_batch(b) for b in batches)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: Future | None = None
        for batch in batches:
            future = pool.submit(_load_batch, batch)
            if pending is not None:
                yield pending.result()
            pending = future
        if pending is not None:
            yield pending.result()


def _generated_text(output: Any) -> str:
    """The answer text from one pipeline output (a list with one dict, or the dict)."""
    if isinstance(output, list):
        output = output[0]
    text = output["generated_text"]
    if isinstance(text, list):  # a chat came back (return_full_text=True): take the assistant's last turn
        content = text[-1]["content"]
        text = content if isinstance(content, str) else " ".join(c.get("text", "") for c in content)
    return text


def generate_mcot_captions(
    pipe: Any,
    images: Sequence[ImageRecord],
    output_file: str | os.PathLike,
    *,
    prompt: MCoTPrompt | str = "general",
    batch_size: int = 4,
    max_new_tokens: int = 512,
    generate_kwargs: dict[str, Any] | None = None,
    save_every: int = 50,
    num_workers: int = 2,
    max_fallback_chars: int = 300,
    on_batch_end: Callable[[int, dict[str, CaptionEntry]], None] | None = None,
    show_progress: bool = True,
) -> CaptioningReport:
    """Caption every image not yet in ``output_file`` with the MCoT prompt, resuming an earlier run.

    Each batch of ``batch_size`` images is decoded (in ``num_workers`` background threads), sent through
    ``pipe`` (an ``image-text-to-text`` pipeline) as one chat per image, parsed with
    :func:`parse_mcot_answer`, and recorded in a :class:`CaptionCache` (journal appended per batch, caption
    file rewritten every ``save_every`` batches and at the end, also when the run is interrupted).
    Unreadable images are logged with their reason, listed in ``report.skipped`` and left out of the file
    (a later run tries them again). If a batch fails in generation, its images are retried one at a time so
    one bad image costs only itself; if every one fails, the error is raised. Greedy decoding by default.

    ``on_batch_end(batch_index, entries)`` is called after each batch is recorded.

    Raises:
        ValueError: before any work, when the pipeline's processor cannot take images or has no chat template,
            or ``batch_size``/``max_new_tokens`` are not positive.
    """
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"batch_size and max_new_tokens must be >= 1 (got {batch_size} and {max_new_tokens})")
    check_captioning_processor(getattr(pipe, "processor", None), type(getattr(pipe, "model", pipe)).__name__)
    if isinstance(prompt, str):
        prompt = load_mcot_prompt(prompt)
    names = [r.name for r in images]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"image names must be unique (got {dup!r} more than once)")

    cache = CaptionCache(output_file)
    report = CaptioningReport(output_file=cache.output_file, total=len(images))
    todo = [r for r in images if r.name not in cache]
    report.reused = len(images) - len(todo)
    if report.reused:
        logger.info("%s: %d of %d images already captioned, resuming", cache.output_file, report.reused, len(images))
    gen_kwargs = {"do_sample": False, **(generate_kwargs or {})}
    tokenizer = getattr(pipe.processor, "tokenizer", None)

    def run(chats: list) -> list[str]:
        outputs = pipe(
            chats,
            batch_size=len(chats),
            max_new_tokens=max_new_tokens,
            return_full_text=False,
            generate_kwargs=gen_kwargs,
        )
        return [_generated_text(o) for o in outputs]

    start = time.perf_counter()
    bar = tqdm(total=len(todo), unit="img", desc="MCoT captions", disable=not show_progress)
    try:
        for batch_index, loaded in enumerate(_prefetched(_batches(todo, batch_size), num_workers)):
            good = []
            for record, image, error in loaded:
                if error is None:
                    good.append((record, image))
                else:
                    report.skipped[record.name] = error
                    logger.warning("skipping image %r (%s): %s", record.name, record.source, error)
            texts: dict[str, str] = {}
            if good:
                chats = [build_mcot_messages(image, prompt) for _, image in good]
                try:
                    texts = dict(zip((r.name for r, _ in good), run(chats)))
                except Exception as batch_error:  # noqa: BLE001 — isolate the image(s) at fault
                    if len(good) == 1:
                        raise
                    logger.warning("batch %d failed (%s); retrying its images one by one", batch_index, batch_error)
                    for (record, _), chat in zip(good, chats):
                        try:
                            texts[record.name] = run([chat])[0]
                        except Exception as err:  # noqa: BLE001
                            report.skipped[record.name] = f"generation failed ({type(err).__name__}: {err})"
                            logger.warning("skipping image %r: %s", record.name, report.skipped[record.name])
                    if not texts:
                        raise batch_error
            entries: dict[str, CaptionEntry] = {}
            for name, text in texts.items():
                entry = parse_mcot_answer(text, max_fallback_chars=max_fallback_chars)
                if FALLBACK_REASON_KEY in entry:
                    report.fallbacks += 1
                    logger.info("image %r: %s", name, entry[FALLBACK_REASON_KEY])
                if tokenizer is not None:
                    report.generated_tokens += len(tokenizer(text, add_special_tokens=False)["input_ids"])
                entries[name] = entry
            cache.add(entries)
            report.captioned += len(entries)
            elapsed = time.perf_counter() - start
            bar.update(len(loaded))
            bar.set_postfix(tok_s=f"{report.generated_tokens / max(elapsed, 1e-9):.1f}", skipped=len(report.skipped))
            if save_every > 0 and (batch_index + 1) % save_every == 0:
                cache.save()
            if on_batch_end is not None:
                on_batch_end(batch_index, entries)
    finally:
        bar.close()
        report.seconds = time.perf_counter() - start
        # Also on an exception or Ctrl-C: what finished is folded into the caption file.
        cache.save()
    if report.skipped:
        logger.warning("%d image(s) skipped: %s", len(report.skipped), report.skipped)
    return report


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
