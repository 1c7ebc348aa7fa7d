"""Gallery-cached retrieval evaluation, the Trainer hook, submission files and the csmcir-eval CLI, run with a
tiny random CSMCIR model on a small synthetic benchmark in the CIRR layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch


from modeling_csmcir import CSMCIRModel
from modeling_csmcir.presets import preset_config, preset_processor
from modeling_csmcir.data.collators import CIRCollator
from modeling_csmcir.trainer_csmcir import CSMCIRTrainer, CSMCIRTrainingArguments
from modeling_csmcir.data.cirr import load_cirr
from modeling_csmcir.cli.eval import main as eval_main
from modeling_csmcir.evaluation.evaluator import CIRRetrievalEvaluator, GalleryIndexCache, evaluate_cir
from modeling_csmcir.evaluation.cir_metrics import cirr_metrics
from modeling_csmcir.evaluation.submissions import (
    build_circo_submission,
    build_cirr_submissions,
    validate_circo_submission,
    validate_cirr_submission,
    write_circo_submission,
    write_cirr_submissions,
)
from modeling_csmcir.data.synthetic import SyntheticCIRConfig, generate_synthetic_cir


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    config = SyntheticCIRConfig(
        output_dir=str(tmp_path_factory.mktemp("bench")), num_images=150, seed=0, image_size=32, val_fraction=0.4, test_fraction=0.4
    )
    return generate_synthetic_cir(config)


@pytest.fixture(scope="module")
def processor():
    return preset_processor("tiny", image_size=32)


@pytest.fixture(scope="module")
def model(processor):
    torch.manual_seed(0)
    return CSMCIRModel(preset_config("tiny", vocab_size=len(processor.tokenizer), image_size=32)).eval()


def _val(bench: Path):
    return load_cirr(bench, "val", target_captions=bench / "target_captions" / "captions.rc2.val.json")


def test_evaluate_cir_scores_queries_against_the_gallery_under_cirr_protocol(bench, processor, model):
    data = _val(bench)
    result = evaluate_cir(model, processor, data, "cirr", cache=None, batch_size=16, show_progress=False)
    assert result.scores.shape == (len(data["queries"]), len(data["gallery"])) == (20, 60)
    assert result.metrics == cirr_metrics(
        result.scores, result.gallery_ids, result.reference_ids, list(data["queries"]["target_id"]), result.img_sets
    )
    assert result.metrics["protocol"].startswith("cirr-rc2") and 0.0 <= result.metrics["recall_at_1"] <= 100.0
    # one query by hand: reference image + modification text through get_query_features, caption-aware gallery
    row, gallery_row = data["queries"][3], data["gallery"][5]
    with torch.no_grad():
        q = model.get_query_features(**processor(images=[row["reference_image"]], text=[row["modification_text"]]))
        g = model.get_target_features(**processor(images=[gallery_row["image"]], text=[gallery_row["caption"]]))
    assert result.scores[3, 5].item() == pytest.approx((q @ g.t()).item(), abs=1e-5)


def test_second_evaluation_reuses_cached_gallery_and_new_weights_reencode(bench, processor, model, monkeypatch):
    data = _val(bench)
    calls = []
    original = CSMCIRModel.get_target_features
    monkeypatch.setattr(CSMCIRModel, "get_target_features", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    cache = GalleryIndexCache()
    first = evaluate_cir(model, processor, data, "cirr", cache=cache, batch_size=16, show_progress=False)
    encoded = len(calls)
    assert encoded == 4 and (cache.hits, cache.misses) == (0, 1)  # 60 images in batches of 16
    second = evaluate_cir(model, processor, data, "cirr", cache=cache, batch_size=16, show_progress=False)
    assert len(calls) == encoded and (cache.hits, cache.misses) == (1, 1)
    assert torch.equal(first.scores, second.scores)
    changed = CSMCIRModel(model.config).eval()
    changed.load_state_dict(model.state_dict())
    with torch.no_grad():
        changed.query_tokens.add_(0.5)
    evaluate_cir(changed, processor, data, "cirr", cache=cache, batch_size=16, show_progress=False)
    assert len(calls) == 2 * encoded and cache.misses == 2
    # captions on/off is a different gallery encoding
    evaluate_cir(model, processor, data, "cirr", use_target_captions=False, cache=cache, batch_size=16, show_progress=False)
    assert cache.misses == 3


def test_disk_cache_survives_a_new_cache_object(bench, processor, model, tmp_path):
    data = _val(bench)
    first = evaluate_cir(model, processor, data, "cirr", cache=GalleryIndexCache(tmp_path), show_progress=False)
    assert len(list(tmp_path.glob("*/gallery_embeddings.safetensors"))) == 1  # one saved GalleryIndex folder
    fresh = GalleryIndexCache(tmp_path)
    second = evaluate_cir(model, processor, data, "cirr", cache=fresh, show_progress=False)
    assert fresh.hits == 1 and torch.allclose(first.scores, second.scores)


def test_trainer_evaluate_adds_the_evaluators_metrics_to_the_eval_loop(bench, processor, model, tmp_path):
    # The evaluator is passed in (evaluator=) and called with the current model; nothing reads predictions.
    data = _val(bench)
    evaluator = CIRRetrievalEvaluator(data, processor, "cirr", cache=None, show_progress=False)
    args = CSMCIRTrainingArguments(
        output_dir=str(tmp_path), per_device_eval_batch_size=8, report_to=[], use_cpu=True, disable_tqdm=True,
    )
    trainer = CSMCIRTrainer(model=model, args=args, eval_dataset=data["queries"], data_collator=CIRCollator(processor),
                            evaluator=evaluator)
    metrics = trainer.evaluate()
    expected = evaluator(model)
    assert metrics["eval_recall_at_5"] == pytest.approx(expected["recall_at_5"], abs=1e-4)
    assert metrics["eval_recall_subset_at_1"] == pytest.approx(expected["recall_subset_at_1"], abs=1e-4)
    assert "eval_loss" in metrics and trainer.evaluation_protocol == expected["protocol"]


def test_trainer_evaluate_with_only_an_evaluator_needs_no_eval_dataset(bench, processor, model, tmp_path):
    data = _val(bench)
    evaluator = CIRRetrievalEvaluator(data, processor, "cirr", cache=None, show_progress=False)
    args = CSMCIRTrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, disable_tqdm=True)
    trainer = CSMCIRTrainer(model=model, args=args, evaluator=evaluator)
    metrics = trainer.evaluate()
    expected = {f"eval_{k}": v for k, v in evaluator(model).items() if k != "protocol"}
    assert metrics.keys() >= expected.keys() and all(metrics[k] == pytest.approx(v, abs=1e-4) for k, v in expected.items())
    assert trainer.state.log_history[-1]["eval_recall_at_1"] == pytest.approx(expected["eval_recall_at_1"], abs=1e-4)


def test_cirr_submission_files_validate_and_follow_the_protocol(bench, processor, model, tmp_path):
    test = load_cirr(bench, "test1", target_captions=bench / "target_captions" / "captions.rc2.test1.json")
    result = evaluate_cir(model, processor, test, "cirr", cache=None, show_progress=False)
    assert result.metrics == {}  # test1 hides targets
    recall, subset = build_cirr_submissions(result.scores, result.gallery_ids, result.query_ids, result.reference_ids, result.img_sets)
    recall_path, subset_path = write_cirr_submissions(tmp_path, recall, subset)
    loaded = json.loads(recall_path.read_text())
    loaded_subset = json.loads(subset_path.read_text())
    assert loaded["version"] == "rc2" and loaded["metric"] == "recall" and loaded_subset["metric"] == "recall_subset"
    validate_cirr_submission(loaded, "recall", expected_pair_ids=result.query_ids)
    validate_cirr_submission(loaded_subset, "recall_subset", expected_pair_ids=result.query_ids)
    for pair_id, ref, members in zip(result.query_ids, result.reference_ids, result.img_sets):
        assert len(loaded[pair_id]) == 50 and ref not in loaded[pair_id]
        assert len(loaded_subset[pair_id]) == 3 and set(loaded_subset[pair_id]) <= set(members) - {ref}


def test_invalid_cirr_submission_writes_nothing(tmp_path):
    gallery = [f"img{i}" for i in range(60)]
    scores = np.random.default_rng(0).random((2, 60))
    recall, subset = build_cirr_submissions(scores, gallery, ["1", "2"], ["img0", "img1"], [gallery[:6], gallery[:6]])
    subset["2"] = ["img2", "img2", "img3"]
    with pytest.raises(ValueError, match=r"pair 2: duplicate image ids \['img2'\]"):
        write_cirr_submissions(tmp_path, recall, subset)
    assert list(tmp_path.iterdir()) == []  # not even the valid recall file
    bad = dict(recall, version="rc1")
    with pytest.raises(ValueError, match="'version' must be 'rc2'"):
        validate_cirr_submission(bad, "recall")
    short = dict(recall, **{"1": recall["1"][:49]})
    with pytest.raises(ValueError, match="expected 50 image ids; got 49"):
        validate_cirr_submission(short, "recall")


def test_circo_submission_top50_unique_and_duplicates_rejected(tmp_path):
    gallery = [str(1000 + i) for i in range(80)]
    scores = np.random.default_rng(1).random((3, 80))
    submission = build_circo_submission(scores, gallery, [0, 1, 2])
    validate_circo_submission(submission, expected_query_ids=["0", "1", "2"])
    assert all(len(v) == 50 == len(set(v)) for v in submission.values())
    assert submission["0"][0] == gallery[int(np.argmax(scores[0]))]
    path = write_circo_submission(tmp_path, submission)
    assert json.loads(path.read_text()) == submission
    broken = dict(submission, **{"1": submission["1"][:49] + [submission["1"][0]]})
    with pytest.raises(ValueError, match=r"CIRCO query 1: duplicate image ids"):
        write_circo_submission(tmp_path / "out", broken)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="missing \\['3'\\]"):
        validate_circo_submission(submission, expected_query_ids=["0", "1", "2", "3"])
    with pytest.raises(ValueError, match="duplicates"):
        build_circo_submission(scores[:, :60], gallery[:59] + [gallery[0]], [0, 1, 2])


def test_csmcir_eval_cli_writes_metrics_and_submissions(bench, processor, model, tmp_path):
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    common = ["--dataset", "cirr", "--data_dir", str(bench), "--model_name_or_path", str(model_dir), "--device", "cpu"]
    report = eval_main(common + ["--split", "val", "--output_dir", str(tmp_path / "val"),
                                 "--target_captions", str(bench / "target_captions" / "captions.rc2.val.json")])
    written = json.loads((tmp_path / "val" / "metrics.json").read_text())
    # The metrics-report schema: numbers under "metrics", the protocol beside them.
    assert written["metrics"] == {k: v for k, v in report["metrics"].items() if k != "protocol"}
    assert written["protocol"].startswith("cirr-rc2") and written["format"] == "metrics-report"
    expected = evaluate_cir(model, processor, _val(bench), "cirr", cache=None, show_progress=False).metrics
    assert written["metrics"]["recall_at_5"] == pytest.approx(expected["recall_at_5"])
    eval_main(common + ["--split", "test1", "--output_dir", str(tmp_path / "test")])
    assert {p.name for p in (tmp_path / "test").iterdir()} == {"metrics.json", "cirr_test1_recall.json", "cirr_test1_recall_subset.json"}
    with pytest.raises(ValueError, match="unknown --dataset"):
        eval_main(["--dataset", "coco", "--data_dir", "x", "--model_name_or_path", "x", "--output_dir", "x"])


def test_csmcir_eval_cli_on_fashioniq_keeps_reference_and_records_protocol(processor, model, tmp_path):
    from test_cir_datasets import make_fashioniq

    data_dir = make_fashioniq(tmp_path / "fiq")
    (tmp_path / "caps.dress.json").write_text(json.dumps({n: f"dress {n}" for n in ["B001", "B002", "B003", "B004"]}))
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    report = eval_main(
        ["--dataset", "fashioniq", "--category", "dress", "--data_dir", str(data_dir), "--model_name_or_path", str(model_dir),
         "--output_dir", str(tmp_path / "out"), "--target_captions", str(tmp_path / "caps.{category}.json"), "--device", "cpu"]
    )
    metrics = report["metrics"]
    # a 4-image gallery with the reference kept: every target is within the top 10
    assert metrics["recall_at_10"] == 100.0 and metrics["dress_recall_at_50"] == 100.0
    assert "reference kept" in metrics["protocol"] and "categories=dress" in metrics["protocol"]
