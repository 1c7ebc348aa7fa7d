"""Scores for product summarization: the CEPSUM protocol, BLEU, attribute P/R/F1 and a standard English ROUGE.

The CEPSUM numbers in the MMAPS literature come from the original code's ``utils/metric.py``
(github KDEGroup/MMAPS). Its protocol, reproduced here from a reading of that code (not copied):

* Every score is on **characters**: a text is split into its non-whitespace characters
  (punctuation such as "，" and "。" are tokens too).
* Each candidate is scored against **every** reference separately; the per-pair scores are averaged
  over the references of a product, then over products, and multiplied by 100.
* ROUGE-1/2 are clipped n-gram F1 (n-gram *counts*, the textbook definition).
* ROUGE-L is the summary-level union-LCS F measure of the ``rouge`` 1.0.1 package (the one the original
  vendors), with that package's **default set-based counting** (``exclusive=True``): the texts are split
  into sentences on "。"; for every reference sentence r_i and candidate sentence c_j one LCS is
  reconstructed (a fixed back-tracking tie-break), and

      llcs = |⋃_{i,j} set(LCS(r_i, c_j))|,   m = |set(reference tokens)|,   n = |set(candidate tokens)|
      R = llcs / m,   P = llcs / n,   F = 2PR / (P + R + 1e-8).

  Because the union and the lengths count *unique* characters this is not textbook ROUGE-L (a
  repeated character counts once). One deliberate difference: the original raises on an empty
  candidate; here an empty candidate scores 0.
* BLEU-1..4 are NLTK corpus BLEU over the same non-whitespace characters, weights (1,0,0,0), (.5,.5,0,0),
  (.333,.333,.334,0), (.25,.25,.25,.25). The original character-splits every text and drops its whitespace
  (``process_input``) before it calls ``corpus_bleu`` on the resulting token lists, so the spaces of
  word-segmented CEPSUM text are never tokens; a perfect prediction scores 100 whatever its spacing.

Beside it, :func:`english_rouge` is a standard ``rouge_score`` ROUGE with the tokenizer fixed
(lower-cased Unicode words), for English summaries; scores from the two are not comparable. ``PROTOCOLS`` words
both in one sentence each, as metrics reports and model cards state them; :func:`lead_baseline` is the lead-N
baseline scored beside a model.
"""

from __future__ import annotations

import collections
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from transformers.utils import logging

logger = logging.get_logger(__name__)

#: The scoring protocol behind ``summarization_scores(language=...)``, as reports and model cards state it.
PROTOCOLS: dict[str, str] = {
    "zh": "CEPSUM protocol: character-level ROUGE-1/2 (clipped n-gram F1) and set-based summary-level ROUGE-L "
          "(sentences split on 。) of each summary against every reference, averaged over references then products, "
          "x100; BLEU-1..4 = NLTK corpus BLEU over non-whitespace characters; attribute P/R/F1 = attribute words of the summary vs. "
          "those of any reference",
    "en": "standard ROUGE-1/2/Lsum F (rouge_score, lower-cased Unicode words, best reference per product) averaged "
          "over products, x100; BLEU-1..4 = NLTK corpus BLEU over non-whitespace characters; attribute P/R/F1 = attribute words of "
          "the summary vs. those of any reference",
}
CEPSUM_SENTENCE_DELIMITER = "。"
BLEU_WEIGHTS: dict[str, tuple[float, ...]] = {
    "bleu1": (1.0, 0.0, 0.0, 0.0),
    "bleu2": (0.5, 0.5, 0.0, 0.0),
    "bleu3": (0.333, 0.333, 0.334, 0.0),
    "bleu4": (0.25, 0.25, 0.25, 0.25),
}


def _check_corpus(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if isinstance(predictions, str):
        raise ValueError("predictions: expected a list of strings, got a single string")
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions and references must have the same length: got {len(predictions)} and {len(references)}"
        )
    for index, refs in enumerate(references):
        if isinstance(refs, str) or not isinstance(refs, Sequence):
            raise ValueError(
                f"references[{index}]: expected a list of reference strings, got {type(refs).__name__}"
            )
        if len(refs) == 0:
            raise ValueError(f"references[{index}]: expected at least one reference, got an empty list")


# ----------------------------------------------------------------------------------------------
# CEPSUM ROUGE
# ----------------------------------------------------------------------------------------------


def character_tokens(text: str) -> list[str]:
    """The CEPSUM tokenisation: every non-whitespace character is one token."""
    return [ch for ch in text if not ch.isspace()]


def _ngram_counter(tokens: Sequence[str], n: int) -> collections.Counter:
    return collections.Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def rouge_n_f1(candidate: Sequence[str], reference: Sequence[str], n: int) -> float:
    """Clipped n-gram F1 between two token lists.

    ``match = Σ_g min(count_cand(g), count_ref(g))``, ``P = match / (|cand| - n + 1)``,
    ``R = match / (|ref| - n + 1)``, ``F1 = 2PR / (P + R)`` (0 when any term is 0).
    """
    cand, ref = _ngram_counter(candidate, n), _ngram_counter(reference, n)
    match = sum(min(count, ref[gram]) for gram, count in cand.items())
    cand_total, ref_total = max(len(candidate) - n + 1, 0), max(len(reference) - n + 1, 0)
    precision = match / cand_total if cand_total > 0 else 0.0
    recall = match / ref_total if ref_total > 0 else 0.0
    if precision + recall == 0.0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def cepsum_sentences(text: str) -> list[list[str]]:
    """Split a text into sentences of character tokens the way the ``rouge`` package does for CEPSUM.

    The original joins the characters with spaces, splits that string on "。" and keeps every piece
    of non-zero length. A piece between two consecutive delimiters (or made only of whitespace) is
    therefore kept as a sentence holding the single empty token ``""``; a leading or trailing empty
    piece is dropped. We mirror that so the numbers agree on such texts too.
    """
    spaced = " ".join(text)
    sentences = []
    for piece in spaced.split(CEPSUM_SENTENCE_DELIMITER):
        if len(piece) == 0:
            continue
        tokens = piece.split()
        sentences.append(tokens if tokens else [""])
    return sentences


def _lcs_token_set(reference: Sequence[str], candidate: Sequence[str]) -> set[str]:
    """Tokens of one longest common subsequence, reconstructed with the ``rouge`` package's tie-break.

    Back-tracking from the end: on a match take it, else move up in ``reference`` when that cell is
    strictly larger, otherwise move left in ``candidate``. Which LCS is reconstructed matters for the
    set-based union, so the tie-break is part of the protocol.
    """
    rows, cols = len(reference), len(candidate)
    table = np.zeros((rows + 1, cols + 1), dtype=np.int32)
    for i in range(1, rows + 1):
        for j in range(1, cols + 1):
            if reference[i - 1] == candidate[j - 1]:
                table[i, j] = table[i - 1, j - 1] + 1
            else:
                table[i, j] = max(table[i - 1, j], table[i, j - 1])
    tokens: set[str] = set()
    i, j = rows, cols
    while i > 0 and j > 0:
        if reference[i - 1] == candidate[j - 1]:
            tokens.add(reference[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1, j] > table[i, j - 1]:
            i -= 1
        else:
            j -= 1
    return tokens


def cepsum_rouge_l(candidate: str, reference: str) -> float:
    """Summary-level, set-based union-LCS ROUGE-L F of one candidate against one reference (0..1).

    ``F = 2PR / (P + R + 1e-8)`` with ``R = llcs / m``, ``P = llcs / n`` as in the module docstring.
    """
    cand_sents, ref_sents = cepsum_sentences(candidate), cepsum_sentences(reference)
    if not cand_sents or not ref_sents:
        return 0.0
    union: set[str] = set()
    for ref_sentence in ref_sents:
        for cand_sentence in cand_sents:
            union |= _lcs_token_set(ref_sentence, cand_sentence)
    m = len({tok for sent in ref_sents for tok in sent})
    n = len({tok for sent in cand_sents for tok in sent})
    recall, precision = len(union) / m, len(union) / n
    return 2.0 * precision * recall / (precision + recall + 1e-8)


def cepsum_rouge_pair(candidate: str, reference: str) -> dict[str, float]:
    """CEPSUM ROUGE-1/2/L F (0..1) of one candidate against one reference."""
    cand, ref = character_tokens(candidate), character_tokens(reference)
    return {
        "rouge1": rouge_n_f1(cand, ref, 1),
        "rouge2": rouge_n_f1(cand, ref, 2),
        "rougeL": cepsum_rouge_l(candidate, reference),
    }


def cepsum_rouge(
    predictions: Sequence[str], references: Sequence[Sequence[str]], *, per_example: bool = False
) -> dict[str, Any]:
    """CEPSUM ROUGE-1/2/L (×100) of a corpus, as the MMAPS original reports it.

    ``score = 100 · mean_products( mean_{r ∈ refs(p)} F(candidate_p, r) )`` for each of
    ROUGE-1, ROUGE-2 (clipped character n-gram F1) and ROUGE-L (set-based summary-level union LCS).

    Args:
        predictions: one generated summary per product.
        references: for each product, the list of its reference summaries (at least one).
        per_example: also return ``"per_example"``: a list of ``{"rouge1","rouge2","rougeL"}`` per
            product (reference-averaged, ×100).

    Returns:
        ``{"rouge1": float, "rouge2": float, "rougeL": float}`` (plus ``per_example`` when asked).
    """
    _check_corpus(predictions, references)
    keys = ("rouge1", "rouge2", "rougeL")
    rows = []
    for candidate, refs in zip(predictions, references):
        pairs = [cepsum_rouge_pair(candidate, ref) for ref in refs]
        rows.append({k: 100.0 * sum(p[k] for p in pairs) / len(pairs) for k in keys})
    totals = {k: (sum(r[k] for r in rows) / len(rows) if rows else 0.0) for k in keys}
    if per_example:
        totals["per_example"] = rows
    return totals


def cepsum_bleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Character-level NLTK corpus BLEU-1..4 (×100) as in the MMAPS original (no smoothing).

    ``BLEU-n = BP · exp(Σ_k w_k log p_k)`` with the modified n-gram precisions ``p_k`` pooled over the
    corpus, multi-reference clipping, and the brevity penalty against the closest reference length.
    Tokens are :func:`character_tokens` (whitespace dropped), so space-segmented CEPSUM references and unsegmented
    predictions are compared character by character, as in the original.
    """
    from nltk.translate.bleu_score import corpus_bleu

    _check_corpus(predictions, references)
    if not predictions:
        return {k: 0.0 for k in BLEU_WEIGHTS}
    hyps = [character_tokens(p) for p in predictions]
    refs = [[character_tokens(r) for r in rs] for rs in references]
    scores = {}
    for name, weights in BLEU_WEIGHTS.items():
        # NLTK warns and returns ~0 when a higher-order n-gram never matches; that is the protocol's value.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            scores[name] = 100.0 * float(corpus_bleu(refs, hyps, weights=weights))
    return scores


# ----------------------------------------------------------------------------------------------
# Attributes
# ----------------------------------------------------------------------------------------------


def attribute_prf(
    predicted: Sequence[Iterable[str]], gold: Sequence[Iterable[str]]
) -> dict[str, float]:
    """Micro-averaged attribute precision/recall/F1 (×100) over a corpus.

    ``P = Σ|pred_p ∩ gold_p| / Σ|pred_p|``, ``R = Σ|pred_p ∩ gold_p| / Σ|gold_p|``, ``F1 = 2PR/(P+R)``,
    each 0 when its denominator is 0. ``predicted``/``gold`` hold one set of attribute words per product.
    """
    if len(predicted) != len(gold):
        raise ValueError(f"predicted and gold must have the same length: got {len(predicted)} and {len(gold)}")
    hit = n_pred = n_gold = 0
    for pred, ref in zip(predicted, gold):
        pred, ref = set(pred), set(ref)
        hit += len(pred & ref)
        n_pred += len(pred)
        n_gold += len(ref)
    precision = hit / n_pred if n_pred else 0.0
    recall = hit / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"attribute_precision": 100.0 * precision, "attribute_recall": 100.0 * recall, "attribute_f1": 100.0 * f1}


# ----------------------------------------------------------------------------------------------
# Standard ROUGE for English
# ----------------------------------------------------------------------------------------------

_WORD_RE = re.compile(r"\w+", flags=re.UNICODE)


class UnicodeWordTokenizer:
    """The fixed tokenizer of :func:`english_rouge`: lower-cased ``\\w+`` runs (Unicode aware).

    ``rouge_score``'s default tokenizer keeps only ``[a-z0-9]``; this one keeps accented letters and
    digits too, and never stems, so a score does not depend on an installed stemmer's version.
    """

    def tokenize(self, text: str) -> list[str]:
        return _WORD_RE.findall(text.lower())


def english_rouge(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Standard ``rouge_score`` ROUGE-1/2/Lsum F (×100) with :class:`UnicodeWordTokenizer`.

    Multi-reference by ``rouge_score``'s convention (``score_multi``: best reference per product),
    then averaged over products. ``rougeL`` here is ``rougeLsum`` with sentences split on newlines
    and ".!?" — the usual English summarization setting, not the CEPSUM one.
    """
    from rouge_score import rouge_scorer

    _check_corpus(predictions, references)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeLsum"], tokenizer=UnicodeWordTokenizer())
    split = re.compile(r"(?<=[.!?])\s+|\n+")
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for pred, refs in zip(predictions, references):
        pred_lines = "\n".join(s for s in split.split(pred) if s.strip())
        ref_lines = ["\n".join(s for s in split.split(r) if s.strip()) for r in refs]
        scores = scorer.score_multi(ref_lines, pred_lines)
        totals["rouge1"] += scores["rouge1"].fmeasure
        totals["rouge2"] += scores["rouge2"].fmeasure
        totals["rougeL"] += scores["rougeLsum"].fmeasure
    count = max(len(predictions), 1)
    return {k: 100.0 * v / count for k, v in totals.items()}


# ----------------------------------------------------------------------------------------------
# Baseline
# ----------------------------------------------------------------------------------------------


def lead_baseline(sources: Sequence[str], length: int) -> list[str]:
    """The lead-N baseline: the first ``length`` characters of each source text."""
    return [s[:length] for s in sources]


def mean_reference_length(references: Sequence[Sequence[str]]) -> int:
    """The mean length in characters of all references (every reference of every product), rounded: the N of the
    lead-N baseline."""
    lengths = [len(r) for refs in references for r in refs]
    return round(sum(lengths) / len(lengths))


# ----------------------------------------------------------------------------------------------
# Trainer hook
# ----------------------------------------------------------------------------------------------


def summarization_scores(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    language: str = "zh",
    attribute_vocabulary: Sequence[str] | None = None,
) -> dict[str, float]:
    """Every summary score for one corpus: ROUGE (CEPSUM for ``zh``, standard for ``en``), BLEU-1..4
    and, with a vocabulary, the P/R/F1 of attributes mentioned in the prediction against those in
    any reference. Also ``gen_len``, the mean prediction length in characters."""
    if language not in ("zh", "en"):
        raise ValueError(f"language: expected 'zh' or 'en', got {language!r}")
    scores = dict(cepsum_rouge(predictions, references) if language == "zh" else english_rouge(predictions, references))
    scores.update(cepsum_bleu(predictions, references))
    if attribute_vocabulary:
        from ..data.attributes import find_attributes

        pred_attrs = [find_attributes(p, attribute_vocabulary, language=language) for p in predictions]
        gold_attrs = [set().union(*(find_attributes(r, attribute_vocabulary, language=language) for r in refs)) for refs in references]
        scores.update(attribute_prf(pred_attrs, gold_attrs))
    scores["gen_len"] = float(np.mean([len(p) for p in predictions])) if predictions else 0.0
    return scores


def build_compute_metrics(
    tokenizer: Any,
    references: Sequence[Sequence[str]] | None = None,
    *,
    language: str = "zh",
    attribute_vocabulary: Sequence[str] | None = None,
) -> Callable[[Any], dict[str, float]]:
    """A ``Trainer`` ``compute_metrics`` for ``predict_with_generate`` runs.

    Generated ids are decoded with ``tokenizer`` (a tokenizer or a processor with ``batch_decode``; special tokens skipped; Chinese BERT-style
    tokenizers put spaces between characters, which CEPSUM scoring ignores). All references of a
    product are used when ``references`` (the evaluation set's ``tgt`` lists, in dataset order) is
    given; otherwise the single decoded label sequence is the reference.
    """
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:  # a processor: its tokenizer knows the pad id
        pad_id = getattr(getattr(tokenizer, "tokenizer", None), "pad_token_id", None)
    pad_id = 0 if pad_id is None else pad_id

    def decode(ids: Any) -> list[str]:
        ids = np.asarray(ids)
        ids = np.where(ids < 0, pad_id, ids)  # -100 marks ignored label positions
        texts = tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)
        return [_normalise_decoded(t, language) for t in texts]

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        preds = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        predictions = decode(preds)
        if references is not None:
            if len(references) != len(predictions):
                raise ValueError(
                    f"compute_metrics: {len(predictions)} predictions but {len(references)} reference lists"
                )
            refs = [list(r) for r in references]
        else:
            refs = [[r] for r in decode(eval_pred.label_ids)]
        return summarization_scores(predictions, refs, language=language, attribute_vocabulary=attribute_vocabulary)

    return compute_metrics


def _normalise_decoded(text: str, language: str) -> str:
    """BERT-style Chinese tokenizers decode to "红 色 的"; drop those spaces for Chinese."""
    return "".join(text.split()) if language == "zh" else " ".join(text.split())

