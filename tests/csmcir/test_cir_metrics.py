"""CIR protocol metrics against hand-computed rankings: ties, CIRR reference removal, the subset rule,
CIRCO's min(|GT|, K) denominator, FashionIQ averaging, and the offline `evaluate` modules."""

from __future__ import annotations

from pathlib import Path

import evaluate
import numpy as np
import pytest
import torch

from modeling_csmcir.evaluation.cir_metrics import (
    PROTOCOLS,
    average_precision_at_k,
    circo_metrics,
    cirr_metrics,
    compute_cir_metrics,
    fashioniq_average,
    fashioniq_metrics,
    map_at_k,
    rank_gallery,
    recall_at_k,
    shoes_metrics,
    subset_rankings,
)


METRICS_DIR = Path(__file__).resolve().parents[2] / "modeling_csmcir" / "evaluation" / "evaluate_modules"


def test_rank_gallery_breaks_ties_by_gallery_order_and_excludes_reference():
    scores = [[0.5, 0.9, 0.5, 0.1], [0.2, 0.2, 0.2, 0.2]]
    assert rank_gallery(scores, ["a", "b", "c", "d"]) == [["b", "a", "c", "d"], ["a", "b", "c", "d"]]
    assert rank_gallery(scores, ["a", "b", "c", "d"], exclude_ids=["b", None], top_k=2) == [["a", "c"], ["a", "b"]]


def test_recall_with_ties_counts_the_stable_rank():
    # target "c" ties with "a" (earlier in the gallery) -> rank 2, so R@1 misses and R@2 hits
    rankings = rank_gallery([[0.7, 0.1, 0.7]], ["a", "b", "c"])
    assert recall_at_k(rankings, ["c"], [1, 2]) == {"recall_at_1": 0.0, "recall_at_2": 100.0}


def test_cirr_removes_reference_but_fashioniq_keeps_it():
    gallery = ["ref", "tgt", "x", "y"]
    scores = torch.tensor([[0.95, 0.9, 0.1, 0.0], [0.2, 0.1, 0.9, 0.95]])
    cirr = cirr_metrics(scores, gallery, reference_ids=["ref", "ref"], target_ids=["tgt", "tgt"], ks=(1, 2))
    # query 0: ref removed -> tgt first; query 1: y, x, tgt -> rank 3
    assert cirr["recall_at_1"] == 50.0 and cirr["recall_at_2"] == 50.0
    fiq = fashioniq_metrics(scores, gallery, target_ids=["tgt", "tgt"], ks=(1, 2))
    assert fiq["recall_at_1"] == 0.0 and fiq["recall_at_2"] == 50.0  # the reference outranks the target
    assert cirr["protocol"] == PROTOCOLS["cirr"] and fiq["protocol"].startswith("fashioniq")


def test_cirr_subset_ranks_only_img_set_members_minus_reference():
    gallery = ["m0", "m1", "m2", "m3", "m4", "m5", "out"]
    members = ["m0", "m1", "m2", "m3", "m4", "m5"]
    # out (not a member) is best, then m0 (the reference), m3, m1 (target), ...
    scores = [[0.9, 0.6, 0.3, 0.7, 0.2, 0.1, 0.99]]
    result = cirr_metrics(scores, gallery, ["m0"], ["m1"], [members])
    full = rank_gallery(scores, gallery, exclude_ids=["m0"])
    assert full[0][:3] == ["out", "m3", "m1"]
    assert subset_rankings(full, [members], ["m0"]) == [["m3", "m1", "m2", "m4", "m5"]]
    assert result["recall_at_1"] == 0.0 and result["recall_at_5"] == 100.0
    assert (result["recall_subset_at_1"], result["recall_subset_at_2"], result["recall_subset_at_3"]) == (0.0, 100.0, 100.0)
    assert result["avg"] == pytest.approx((100.0 + 0.0) / 2)


def test_subset_rankings_needs_every_member():
    with pytest.raises(ValueError, match="lacks img_set members"):
        subset_rankings([["a", "b"]], [["a", "b", "c"]], ["a"])


def test_circo_average_precision_uses_min_gt_k_denominator():
    ranking = ["g1", "x", "g2", "y", "z", "g3"]
    relevant = {"g1", "g2", "g3"}
    # K=5: hits at 1 and 3 -> (1/1 + 2/3) / min(3, 5)
    assert average_precision_at_k(ranking, relevant, 5) == pytest.approx((1 + 2 / 3) / 3)
    # K=2: one hit -> 1 / min(3, 2)
    assert average_precision_at_k(ranking, relevant, 2) == pytest.approx(0.5)
    # a single GT at rank 2 -> (1/2) / 1
    assert average_precision_at_k(["x", "g"], {"g"}, 5) == pytest.approx(0.5)
    result = map_at_k([ranking, ["x", "g"]], [sorted(relevant), ["g"]], ks=[5])
    assert result["map_at_5"] == pytest.approx(100 * ((1 + 2 / 3) / 3 + 0.5) / 2)


def test_circo_metrics_from_scores():
    gallery = [str(i) for i in range(60)]
    scores = np.zeros((1, 60))
    scores[0, 7] = 3.0  # GT at rank 1
    scores[0, 9] = 1.0  # non-GT at rank 3
    scores[0, 8] = 2.0  # GT at rank 2
    result = circo_metrics(scores, gallery, [["7", "8", "59"]])
    # K=5: (1 + 1) / min(3, 5); "59" is tied at 0 and ranks last
    assert result["map_at_5"] == pytest.approx(100 * 2 / 3)
    assert result["map_at_50"] == pytest.approx(100 * 2 / 3)
    assert "min(|GT|,K)" in result["protocol"]


def test_fashioniq_average_over_categories():
    per_cat = {
        "dress": {"recall_at_10": 30.0, "recall_at_50": 50.0},
        "shirt": {"recall_at_10": 20.0, "recall_at_50": 40.0},
        "toptee": {"recall_at_10": 40.0, "recall_at_50": 60.0},
    }
    result = fashioniq_average(per_cat)
    assert result["recall_at_10"] == pytest.approx(30.0) and result["recall_at_50"] == pytest.approx(50.0)
    assert result["avg"] == pytest.approx(40.0) and result["shirt_recall_at_50"] == 40.0
    assert "dress,shirt,toptee" in result["protocol"]


def test_shoes_recall_keeps_reference():
    gallery = ["r", "t"] + [f"x{i}" for i in range(60)]
    scores = np.zeros((1, 62))
    scores[0, 0], scores[0, 1] = 1.0, 0.5
    result = shoes_metrics(scores, gallery, ["t"])
    assert result["recall_at_1"] == 0.0 and result["recall_at_10"] == 100.0
    assert result["avg"] == pytest.approx(200 / 3)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: rank_gallery([[0.1, float("nan")]], ["a", "b"]), "NaN"),
        (lambda: rank_gallery([[0.1, 0.2]], ["a"]), "2 columns but the gallery has 1"),
        (lambda: rank_gallery([0.1, 0.2], ["a", "b"]), "2-D"),
        (lambda: recall_at_k([["a"]], ["a", "b"], [1]), "one per query"),
        (lambda: compute_cir_metrics("coco", [[1.0]], ["a"]), "unknown benchmark 'coco'"),
        (lambda: compute_cir_metrics("cirr", [[1.0]], ["a"], target_ids=["a"]), "reference_ids"),
    ],
)
def test_bad_input_raises_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_evaluate_modules_load_offline_and_agree_with_functions():
    gallery = ["m0", "m1", "m2", "m3", "m4", "m5", "out"]
    scores = [[0.9, 0.6, 0.3, 0.7, 0.2, 0.1, 0.99], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.0]]
    refs, targets, sets = ["m0", "m5"], ["m1", "m4"], [gallery[:6], gallery[:6]]
    recall = evaluate.load(str(METRICS_DIR / "cir_recall"))
    result = recall.compute(
        predictions=scores, references=[[t] for t in targets], gallery_ids=gallery, protocol="cirr",
        reference_ids=refs, img_sets=sets,
    )
    assert result == cirr_metrics(scores, gallery, refs, targets, sets)
    plain = recall.compute(predictions=scores, references=[["out"], ["m5"]], gallery_ids=gallery, ks=[1])
    assert plain["recall_at_1"] == 100.0 and plain["protocol"].startswith("plain")
    circo = evaluate.load(str(METRICS_DIR / "circo_map"))
    result = circo.compute(predictions=scores, references=[["out", "m0"], ["m2"]], gallery_ids=gallery, ks=[1, 5])
    assert result["map_at_1"] == pytest.approx(50.0)
    assert result["map_at_5"] == pytest.approx(100 * (1.0 + 1 / 4) / 2)
