"""Parse a VLM's MCoT answer into an entry of the authors' caption format, whatever shape the answer took.

JSON (bare, in prose or in code fences, with the usual LLM slips), JSON cut off by the token budget, level-tagged
prose, Chinese headings: a ``Final_Caption`` always comes out, with a fallback reason when structure was missing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from ..data.caption_files import FINAL_CAPTION_KEY, MCOT_LEVEL_KEYS, make_caption_entry


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


__all__ = ["parse_mcot_answer"]
