"""The MMAPS attribute vocabulary: which words count as product attributes, and multi-hot labels.

MMAPS predicts, as an auxiliary multi-label task, which attribute words of a fixed per-category
vocabulary appear in a product's reference summaries (1,000 / 10,000 / 5,000 words for bags /
clothing / home appliances in the paper). The original never released how that vocabulary was
extracted; this is our construction:

1. segment every reference summary of a category (jieba words for Chinese, lower-cased Unicode
   words for English);
2. drop stop words, punctuation, numbers and single characters that carry no attribute (for
   Chinese, single characters are kept only if ``keep_single_chars``);
3. count document frequency (a word counts once per product) and keep the ``top_n`` most frequent
   per category (ties broken alphabetically so the result is deterministic);
4. the model-wide vocabulary is the ordered union over categories (first occurrence wins).

A product's label is multi-hot over that vocabulary: 1 where the word occurs in any of its references.
For Chinese the occurrence test is substring containment, not segmentation membership, because
jieba segments the same word differently depending on its neighbours.
"""

from __future__ import annotations

import collections
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from transformers.utils import logging

from hub_cards.atomic_files import write_json_atomically

logger = logging.get_logger(__name__)

ATTRIBUTE_VOCABULARY_FILE = "attribute_vocabulary.json"

# Function words and e-commerce filler that are frequent in summaries but never attributes.
CHINESE_STOP_WORDS = frozenset(
    """的 了 和 与 及 是 在 有 也 都 就 而 又 很 更 最 让 使 把 被 给 对 为 以 于 从 这 那 这款 此款 该 本 一款 一个 一种
    您 你 我 我们 他 她 它 其 之 着 得 地 等 能 会 可 可以 不 没有 非常 十分 更加 还 并 且 或 如 如果 因为 所以 但 但是
    材质 品味 面料 风格 带来 采用 使用 拥有 具有 打造 设计 产品 商品 宝贝 款式 效果 感觉 体验 日常 生活 时候 方便 适合 满足 需求 轻松""".split()
)
ENGLISH_STOP_WORDS = frozenset(
    """a an the and or but if of to in on at by for with from as is are was were be been it its this that these those
    your you our we they their them he she his her which who whom what when where how all any both each more most
    other some such no not only own same so than too very can will just also into over out up down one made make
    makes perfect great product design designed features feature item""".split()
)
_PUNCT_OR_NUMBER = re.compile(r"^[\W\d_]+$", flags=re.UNICODE)
_ENGLISH_WORD = re.compile(r"\w+", flags=re.UNICODE)


def segment_words(text: str, language: str = "zh") -> list[str]:
    """Words of ``text``: jieba's precise mode for Chinese, lower-cased ``\\w+`` runs for English."""
    if language == "zh":
        import jieba

        jieba.setLogLevel(60)  # jieba prints its dictionary-loading chatter on stderr otherwise
        return [w.strip() for w in jieba.lcut(text) if w.strip()]
    if language == "en":
        return _ENGLISH_WORD.findall(text.lower())
    raise ValueError(f"language: expected 'zh' or 'en', got {language!r}")


def _is_candidate(word: str, language: str, stop_words: frozenset[str], keep_single_chars: bool) -> bool:
    if word in stop_words or _PUNCT_OR_NUMBER.match(word):
        return False
    if len(word) < 2 and not keep_single_chars:
        return False
    return True


def build_attribute_vocabulary(
    summaries_by_category: Mapping[str, Iterable[Sequence[str] | str]],
    top_n: int | Mapping[str, int] = 1000,
    *,
    language: str = "zh",
    stop_words: Iterable[str] | None = None,
    keep_single_chars: bool = False,
    min_count: int = 2,
) -> dict[str, list[str]]:
    """Per-category attribute vocabularies from reference summaries.

    Args:
        summaries_by_category: ``{category: iterable of products}``; a product is its list of reference
            summaries (or one string).
        top_n: words kept per category (an int, or ``{category: n}`` like the paper's 1,000/10,000/5,000).
        language: ``"zh"`` (jieba) or ``"en"``.
        stop_words: replaces the built-in stop list of the language when given.
        keep_single_chars: keep one-character words (Chinese colours like "红" are single characters).
        min_count: a word must occur in at least this many products.

    Returns:
        ``{category: [word, ...]}``, most frequent first (document frequency, ties alphabetical).
    """
    if stop_words is None:
        stops = CHINESE_STOP_WORDS if language == "zh" else ENGLISH_STOP_WORDS
    else:
        stops = frozenset(stop_words)
    vocab: dict[str, list[str]] = {}
    for category, products in summaries_by_category.items():
        n_keep = top_n[category] if isinstance(top_n, Mapping) else top_n
        if n_keep <= 0:
            raise ValueError(f"top_n for category {category!r}: expected a positive integer, got {n_keep}")
        counts: collections.Counter = collections.Counter()
        n_products = 0
        for refs in products:
            refs = [refs] if isinstance(refs, str) else refs
            words = {
                w
                for ref in refs
                for w in segment_words(ref, language)
                if _is_candidate(w, language, stops, keep_single_chars)
            }
            counts.update(words)
            n_products += 1
        ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        vocab[category] = ranked[:n_keep]
        logger.info(
            "attribute vocabulary for %r: %d words kept of %d candidates from %d products",
            category, len(vocab[category]), len(counts), n_products,
        )
    return vocab


def merge_attribute_vocabularies(per_category: Mapping[str, Sequence[str]]) -> list[str]:
    """The model-wide vocabulary: the ordered union of the per-category lists (first occurrence wins)."""
    merged: dict[str, None] = {}
    for words in per_category.values():
        for w in words:
            merged.setdefault(w, None)
    return list(merged)


def save_attribute_vocabulary(
    vocabulary: Sequence[str], path: str | os.PathLike, *, per_category: Mapping[str, Sequence[str]] | None = None
) -> str:
    """Write the vocabulary as JSON, atomically (temp file + ``os.replace``).

    ``path`` may be a directory (the file is then ``attribute_vocabulary.json`` inside it). The JSON is
    ``{"attribute_vocabulary": [...], "per_category": {...}}``. Returns the file written.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, ATTRIBUTE_VOCABULARY_FILE)
    words = list(vocabulary)
    if len(set(words)) != len(words):
        raise ValueError("attribute vocabulary: expected unique words, got duplicates")
    payload = {"attribute_vocabulary": words, "per_category": {k: list(v) for k, v in (per_category or {}).items()}}
    write_json_atomically(path, payload, indent=1)
    return path


def load_attribute_vocabulary(path: str | os.PathLike) -> list[str]:
    """Read a vocabulary written by :func:`save_attribute_vocabulary` (or a bare JSON list)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, ATTRIBUTE_VOCABULARY_FILE)
    with open(path, encoding="utf-8") as f:
        payload = json.load(f)
    words = payload.get("attribute_vocabulary") if isinstance(payload, dict) else payload
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise ValueError(f"{path}: expected a list of strings under 'attribute_vocabulary', got {type(words).__name__}")
    return words


def find_attributes(text: str, vocabulary: Sequence[str], *, language: str = "zh") -> set[str]:
    """Vocabulary words that occur in ``text``: substring test for Chinese, whole words for English."""
    if language == "zh":
        return {w for w in vocabulary if w and w in text}
    if language == "en":
        tokens = set(_ENGLISH_WORD.findall(text.lower()))
        return {w for w in vocabulary if w.lower() in tokens}
    raise ValueError(f"language: expected 'zh' or 'en', got {language!r}")


def attribute_labels(
    references: Sequence[str] | str, vocabulary: Sequence[str], *, language: str = "zh"
) -> np.ndarray:
    """Multi-hot label over ``vocabulary``: ``y_k = 1`` iff word k occurs in any reference (float32)."""
    refs = [references] if isinstance(references, str) else references
    found: set[str] = set()
    for ref in refs:
        found |= find_attributes(ref, vocabulary, language=language)
    return np.array([1.0 if w in found else 0.0 for w in vocabulary], dtype=np.float32)


def check_vocabulary_matches_model(vocabulary: Sequence[str], num_attributes: int, *, where: str = "model") -> None:
    """Raise a ``ValueError`` when the vocabulary's size differs from the model's attribute head."""
    if len(vocabulary) != num_attributes:
        raise ValueError(
            f"attribute vocabulary has {len(vocabulary)} words but the {where} predicts {num_attributes} "
            "attributes (config.num_attributes); rebuild the vocabulary or the model so they agree"
        )
