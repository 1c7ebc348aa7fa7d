"""CEPSUM metrics against hand-computed values (see the comments for each derivation)."""

from __future__ import annotations

import json
import os

import pytest

from modeling_mmaps.evaluation import summarization_metrics as sm
from modeling_mmaps.evaluation.summarization_metrics import (
    attribute_prf,
    cepsum_bleu,
    cepsum_rouge,
    cepsum_rouge_pair,
    english_rouge,
)

EPS = 1e-6


def test_repeated_characters_rouge_n_clips_but_rouge_l_counts_unique():
    # cand 红红色, ref 红色. ROUGE-1: counts {红:2,色:1} vs {红:1,色:1} -> match 2, P=2/3, R=1, F=0.8.
    # ROUGE-2: {红红,红色} vs {红色} -> match 1, P=1/2, R=1, F=2/3.
    # ROUGE-L (set-based): m=|{红,色}|=2, n=|{红,色}|=2, LCS set {红,色} -> P=R=1 (textbook would give P=2/3).
    s = cepsum_rouge_pair("红红色", "红色")
    assert s["rouge1"] == pytest.approx(0.8)
    assert s["rouge2"] == pytest.approx(2 / 3)
    assert s["rougeL"] == pytest.approx(1.0, abs=EPS)
    assert cepsum_rouge_pair("红红红", "红")["rougeL"] == pytest.approx(1.0, abs=EPS)


def test_multi_sentence_rouge_l_is_union_lcs_over_sentences():
    # cand 红色。白色 -> sentences [红色],[白色]; ref 白色的包。红色 -> [白色的包],[红色].
    # LCS sets: (白色的包,红色)={色}, (白色的包,白色)={白,色}, (红色,红色)={红,色}, (红色,白色)={色};
    # union {红,白,色}=3; m=|{白,色,的,包,红}|=5, n=|{红,色,白}|=3 -> R=3/5, P=1, F=0.75.
    s = cepsum_rouge_pair("红色。白色", "白色的包。红色")
    assert s["rougeL"] == pytest.approx(0.75, abs=EPS)
    # ROUGE-1 counts "。" as a token: cand 5 tokens, ref 7, match 5 -> F = 2·1·(5/7)/(12/7) = 5/6.
    assert s["rouge1"] == pytest.approx(5 / 6)
    # ROUGE-2: cand {红色,色。,。白,白色}, ref {白色,色的,的包,包。,。红,红色}: match 2, P=1/2, R=1/3, F=0.4.
    assert s["rouge2"] == pytest.approx(0.4)
    # The same candidate sentence repeated: union stays {红,色}, n counts unique tokens -> F=1.
    assert cepsum_rouge_pair("红色。红色", "红色")["rougeL"] == pytest.approx(1.0, abs=EPS)


def test_rouge_l_uses_the_rouge_package_lcs_tie_break():
    # ref sentences [甲乙],[乙]; cand [乙甲]. Both LCSs of (甲乙, 乙甲) have length 1; the rouge package
    # reconstructs 乙 (moves left on ties), so the union is {乙}: llcs=1, m=n=2, F=0.5 (not 1.0).
    assert cepsum_rouge_pair("乙甲", "甲乙。乙")["rougeL"] == pytest.approx(0.5, abs=EPS)


def test_corpus_scores_average_over_references_then_products():
    # p1=红色包 vs 红色的包: R1 P=1,R=3/4 -> 6/7; vs 包: P=1/3,R=1 -> 1/2; mean 0.678571...
    # p2=白色 vs 白色: 1.  Corpus ROUGE-1 = 100·(0.678571+1)/2 = 83.92857.
    # ROUGE-2: p1 vs 红色的包 {红色,色包}/{红色,色的,的包}: 1 match -> 0.4; vs 包 (no bigram) -> 0; mean 0.2 -> 60.0.
    scores = cepsum_rouge(["红色包", "白色"], [["红色的包", "包"], ["白色"]])
    assert set(scores) == {"rouge1", "rouge2", "rougeL"}
    assert scores["rouge1"] == pytest.approx(100 * ((6 / 7 + 0.5) / 2 + 1) / 2)
    assert scores["rouge2"] == pytest.approx(60.0)
    assert scores["rougeL"] == pytest.approx(100 * ((6 / 7 + 0.5) / 2 + 1) / 2, abs=1e-4)


def test_whitespace_is_ignored_and_empty_prediction_scores_zero():
    assert cepsum_rouge(["红 色"], [["红色"]])["rouge2"] == pytest.approx(100.0)
    zero = cepsum_rouge([""], [["红色"]])
    assert zero == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


def test_cepsum_rouge_is_exported_from_the_package():
    import modeling_mmaps

    assert modeling_mmaps.cepsum_rouge is cepsum_rouge


def test_bad_corpus_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match="same length"):
        cepsum_rouge(["a"], [["a"], ["b"]])
    with pytest.raises(ValueError, match=r"references\[0\].*list"):
        cepsum_rouge(["a"], ["a"])
    with pytest.raises(ValueError, match="at least one reference"):
        cepsum_rouge(["a"], [[]])


def test_character_bleu_hand_values():
    perfect = cepsum_bleu(["红色的包"], [["红色的包", "包"]])
    assert all(v == pytest.approx(100.0) for v in perfect.values())
    # BLEU-1 of 红色 vs 红色的包: unigram precision 1, brevity penalty exp(1 - 4/2) = e^-1.
    import math

    assert cepsum_bleu(["红色"], [["红色的包"]])["bleu1"] == pytest.approx(100 * math.exp(-1))


def test_attribute_prf_is_micro_averaged():
    # pred {红色,纯棉} gold {红色,条纹}; pred {} gold {蓝色}: hit 1, |pred| 2, |gold| 3.
    s = attribute_prf([{"红色", "纯棉"}, set()], [{"红色", "条纹"}, {"蓝色"}])
    assert s["attribute_precision"] == pytest.approx(50.0)
    assert s["attribute_recall"] == pytest.approx(100 / 3)
    assert s["attribute_f1"] == pytest.approx(100 * 2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))


def test_english_rouge_tokenizer_is_fixed_and_unicode_aware():
    # [the, red, dress] vs [red, dress]: ROUGE-1 P=2/3, R=1, F=0.8. rouge_score's default tokenizer would
    # drop "café"; ours keeps it, so an exact match scores 100.
    assert english_rouge(["The Red dress"], [["red dress"]])["rouge1"] == pytest.approx(80.0)
    assert english_rouge(["café noir"], [["Café noir"]])["rouge1"] == pytest.approx(100.0)
    # best reference wins (rouge_score's multi-reference convention)
    assert english_rouge(["red dress"], [["blue hat", "red dress"]])["rouge2"] == pytest.approx(100.0)


def test_compute_metrics_decodes_and_uses_all_references():
    class CharTokenizer:
        pad_token_id = 0
        vocab = ["[PAD]", "红", "色", "包", "白"]

        def batch_decode(self, ids, skip_special_tokens=True):
            return [" ".join(self.vocab[i] for i in row if i != 0) for row in ids]

    from transformers import EvalPrediction

    fn = sm.build_compute_metrics(CharTokenizer(), references=[["红色包", "包"], ["白色"]], attribute_vocabulary=["红色", "白色"])
    preds = [[1, 2, 3, 0], [4, 2, 0, 0]]
    labels = [[1, 2, 3, -100], [4, 2, -100, -100]]
    out = fn(EvalPrediction(predictions=preds, label_ids=labels))
    expected = cepsum_rouge(["红色包", "白色"], [["红色包", "包"], ["白色"]])
    assert out["rouge2"] == pytest.approx(expected["rouge2"])
    assert out["attribute_f1"] == pytest.approx(100.0)
    assert out["gen_len"] == pytest.approx(2.5)


def test_evaluate_module_loads_offline_from_its_folder():
    import evaluate

    import modeling_mmaps

    modules = os.path.join(os.path.dirname(modeling_mmaps.__file__), "evaluation", "evaluate_modules")
    folder = os.path.join(modules, "cepsum_rouge")
    metric = evaluate.load(folder)
    out = metric.compute(predictions=["红色包", "白色"], references=[["红色的包", "包"], ["白色"]])
    assert out["rouge2"] == pytest.approx(60.0)
    bleu = evaluate.load(os.path.join(modules, "cepsum_bleu"))
    assert bleu.compute(predictions=["红色的包"], references=[["红色的包"]])["bleu4"] == pytest.approx(100.0)
    json.dumps(out)  # plain floats


# -- BLEU on word-segmented CEPSUM text (the original drops whitespace before scoring characters) ------------------


def _independent_corpus_bleu(predictions, references, max_n):
    """Corpus BLEU written from the formula (not NLTK): pooled clipped n-gram precisions, uniform weights 1/max_n,
    brevity penalty against the closest reference length (ties: the shorter), over non-whitespace characters."""
    import collections
    import math

    def chars(text):
        return [c for c in text if not c.isspace()]

    matched, total = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for prediction, refs in zip(predictions, references):
        hyp, ref_tokens = chars(prediction), [chars(r) for r in refs]
        hyp_len += len(hyp)
        ref_len += min((abs(len(r) - len(hyp)), len(r)) for r in ref_tokens)[1]
        for n in range(1, max_n + 1):
            grams = collections.Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
            best = collections.Counter()
            for r in ref_tokens:
                for gram, count in collections.Counter(tuple(r[i:i + n]) for i in range(len(r) - n + 1)).items():
                    best[gram] = max(best[gram], count)
            matched[n - 1] += sum(min(c, best[g]) for g, c in grams.items())
            total[n - 1] += max(len(hyp) - n + 1, 0)
    if min(matched) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matched, total)) / max_n
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return 100.0 * brevity * math.exp(log_precision)


def test_perfect_prediction_of_a_space_segmented_reference_scores_100():
    # CEPSUM references are word-segmented with spaces; a model outputs characters without them.
    references = [["这款 包 采用 优质 真皮 ， 容量 大 。"], ["LED 灯 2020 款 ， 尺寸 30cm"]]
    predictions = ["这款包采用优质真皮，容量大。", "LED灯2020款，尺寸30cm"]
    scores = cepsum_bleu(predictions, references)
    assert scores == {k: pytest.approx(100.0) for k in ("bleu1", "bleu2", "bleu3", "bleu4")}
    # The segmented form of the prediction is the same characters, so it scores the same.
    assert cepsum_bleu(["LED 灯 2020 款 ， 尺寸 30cm"], [references[1]])["bleu4"] == pytest.approx(100.0)


def test_bleu_on_mixed_latin_digit_text_hand_values():
    import math

    # Prediction 红色LED (5 chars) vs reference 红 色 的 LED 灯 (7 chars once the spaces go):
    # unigrams all match (p1 = 1); bigrams 红色, LE, ED of 红色 色L LE ED match (p2 = 3/4); BP = exp(1 - 7/5).
    scores = cepsum_bleu(["红色LED"], [["红色 的 LED 灯"]])
    assert scores["bleu1"] == pytest.approx(100 * math.exp(-0.4))
    assert scores["bleu2"] == pytest.approx(100 * math.exp(-0.4) * math.sqrt(0.75))


def test_bleu_matches_an_independent_implementation_on_a_random_segmented_corpus():
    import random

    rng = random.Random(3)
    alphabet = list("红色的包大容量真皮简约LED2020cm，。")

    def text(k):
        return "".join(rng.choice(alphabet) for _ in range(k))

    def segment(t):  # insert spaces at random word boundaries, as CEPSUM's segmenter does
        return " ".join(t[i:i + 2] for i in range(0, len(t), 2))

    predictions = [text(rng.randint(8, 20)) for _ in range(30)]
    references = [[segment(text(rng.randint(8, 20))) for _ in range(rng.randint(1, 3))] for _ in range(30)]
    scores = cepsum_bleu(predictions, references)
    for n in (1, 2):  # NLTK's BLEU-3 uses weights .333/.333/.334, so pin the uniform ones
        assert scores[f"bleu{n}"] == pytest.approx(_independent_corpus_bleu(predictions, references, n), abs=1e-6)
    assert scores["bleu4"] == pytest.approx(_independent_corpus_bleu(predictions, references, 4), abs=1e-6)
    assert scores["bleu1"] > 10.0  # a real, non-degenerate number
