"""MMAPSTrainer, mmaps-train / mmaps-eval, and learning on the synthetic product set."""

from __future__ import annotations

import json

import pytest
import torch

from modeling_mmaps import MMAPSTrainer, MMAPSTrainingArguments, cepsum_rouge
from modeling_mmaps.data.attributes import build_attribute_vocabulary, merge_attribute_vocabularies
from modeling_mmaps.data.cepsum import MMAPSDataCollator, load_cepsum_split
from modeling_mmaps.data.synthetic import generate_synthetic_products, image_only_mention_rate, load_synthetic_attributes
from modeling_mmaps.evaluation.summarization_metrics import lead_baseline, mean_reference_length
from modeling_mmaps.presets import character_vocabulary, preset_model


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("mmaps_trainer") / "data"
    generate_synthetic_products(out, num_products=24, seed=3)
    return str(out)


def _args(tmp_path, **overrides):
    base = dict(
        output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=4, per_device_eval_batch_size=8,
        learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
        generation_num_beams=1, generation_max_length=12, disable_tqdm=True, seed=0,
    )
    base.update(overrides)
    return MMAPSTrainingArguments(**base)


def _trainer(data_dir, tmp_path, visual_input="images", **overrides):
    train = load_cepsum_split(data_dir, "train", explode_references=True)
    vocabulary = merge_attribute_vocabularies(build_attribute_vocabulary({"all": list(train["tgt"])}, 20))
    texts = [*train["src"], *(t for refs in train["tgt"] for t in refs)]
    model, processor = preset_model("tiny-scratch", tokens=character_vocabulary(texts), attribute_vocabulary=vocabulary,
                                    visual_input=visual_input)
    trainer = MMAPSTrainer(
        model=model, args=_args(tmp_path, **overrides), train_dataset=train,
        eval_dataset=load_cepsum_split(data_dir, "dev"),
        data_collator=MMAPSDataCollator(processor, visual_input=visual_input), processing_class=processor,
    )
    return trainer


def test_training_arguments_select_on_rouge2_by_default(tmp_path):
    args = MMAPSTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    assert args.metric_for_best_model == "rouge2" and args.greater_is_better is True
    assert args.predict_with_generate and args.generation_num_beams == 3 and args.generation_max_length == 90
    assert args.remove_unused_columns is False
    with pytest.raises(ValueError, match="summary_language"):
        MMAPSTrainingArguments(output_dir=str(tmp_path), report_to="none", summary_language="fr")


def test_each_task_loss_is_logged_and_evaluation_generates_with_images(small_set, tmp_path):
    trainer = _trainer(small_set, tmp_path)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 3
    for name in ("summary_loss", "attribute_loss", "alignment_loss", "contrastive_loss", "region_loss"):
        assert all(name in entry and entry[name] >= 0 for entry in logged), name
    # the total is the weighted sum of the task losses (weights 1, .3, .3, .05, .8), per step
    weights = {"summary_loss": 1.0, "attribute_loss": 0.3, "alignment_loss": 0.3, "contrastive_loss": 0.05, "region_loss": 0.8}
    for entry in logged:
        assert entry["loss"] == pytest.approx(sum(w * entry[k] for k, w in weights.items()), rel=1e-3, abs=1e-3)
    metrics = trainer.evaluate()
    for key in ("eval_loss", "eval_rouge1", "eval_rouge2", "eval_rougeL", "eval_bleu4", "eval_attribute_f1", "eval_gen_len"):
        assert key in metrics
    # predictions are decoded and scored against every reference of each dev product
    prediction = trainer.predict(trainer.eval_dataset)
    assert prediction.predictions.shape[0] == len(trainer.eval_dataset)
    texts = trainer.processing_class.batch_decode(prediction.predictions.clip(min=0))
    expected = cepsum_rouge(texts, [list(t) for t in trainer.eval_dataset["tgt"]])
    assert prediction.metrics["test_rouge2"] == pytest.approx(expected["rouge2"])


def test_train_and_eval_clis_write_model_and_metrics(small_set, tmp_path):
    from modeling_mmaps.cli.eval import main as eval_main
    from modeling_mmaps.cli.train import main as train_main

    out = tmp_path / "model"
    train_main([
        "--data_dir", small_set, "--output_dir", str(out), "--config_name", "tiny-scratch", "--max_steps", "2",
        "--per_device_train_batch_size", "4", "--report_to", "none", "--use_cpu", "--save_strategy", "no",
        "--generation_num_beams", "1", "--generation_max_length", "8", "--attribute_top_n", "10", "--disable_tqdm", "true",
    ])
    for name in ("model.safetensors", "config.json", "processor_config.json", "eval_results.json", "modeling_mmaps.py",
                 "README.md", "product_summarization.py"):
        assert (out / name).is_file(), name
    from hub_cards.hub_ready import hub_ready_problems

    assert hub_ready_problems(out) == []   # evaluated before the save: card with the dev numbers, pipeline code
    dev = json.loads((out / "eval_results.json").read_text())
    assert f"value: {float(dev['metrics']['eval_rouge2'])}" in (out / "README.md").read_text()
    processor_config = json.loads((out / "processor_config.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert len(processor_config["attribute_vocabulary"]) == config["num_attributes"] > 0

    metrics = eval_main([
        "--data_dir", small_set, "--model_name_or_path", str(out), "--split", "test", "--output_dir", str(tmp_path / "eval"),
        "--num_beams", "1", "--max_new_tokens", "8",
    ])
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    written = {**report["metrics"], **report["settings"]}
    assert written["rouge2"] == pytest.approx(metrics["rouge2"])
    assert {"rouge1", "rougeL", "bleu1", "attribute_f1", "image_only_attribute_mention_rate"} <= set(written)
    assert any(k.startswith("lead") and k.endswith("_rougeL") for k in written)
    lines = (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == written["num_products"]

    # Evaluating into the model folder (the folder a user uploads) writes the metrics but never the split's texts.
    eval_main(["--data_dir", small_set, "--model_name_or_path", str(out), "--split", "test", "--output_dir", str(out),
               "--num_beams", "1", "--max_new_tokens", "8"])
    assert (out / "metrics.json").is_file() and not (out / "predictions.jsonl").exists()
    assert hub_ready_problems(out) == []   # the card was rewritten from the test-split metrics.json beside it
    assert "split: test" in (out / "README.md").read_text()
    assert not any(json.loads(lines[0])["references"][0] in p.read_text(errors="ignore")
                   for p in out.iterdir() if p.is_file() and p.suffix in (".json", ".jsonl", ".md"))

    # a processor whose attribute vocabulary does not match the model: clear error, nothing written
    processor_config["attribute_vocabulary"] = processor_config["attribute_vocabulary"][:-1]
    (out / "processor_config.json").write_text(json.dumps(processor_config, ensure_ascii=False))
    with pytest.raises(ValueError, match="attribute vocabulary has .* words but the model predicts"):
        eval_main(["--data_dir", small_set, "--model_name_or_path", str(out), "--output_dir", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()


def test_train_cli_resumes_from_the_last_complete_checkpoint(small_set, tmp_path):
    from safetensors.torch import load_file

    from modeling_mmaps.cli.train import main as train_main

    out = tmp_path / "run"
    common = ["--data_dir", small_set, "--output_dir", str(out), "--config_name", "tiny", "--max_steps", "2",
              "--per_device_train_batch_size", "4", "--report_to", "none", "--use_cpu", "--eval_split", "",
              "--save_strategy", "steps", "--save_steps", "2", "--attribute_top_n", "10", "--disable_tqdm", "true"]
    train_main([*common, "--learning_rate", "1e-2"])
    trained = load_file(out / "checkpoint-2" / "model.safetensors")
    (out / "checkpoint-3").mkdir()  # a checkpoint that never finished saving (no trainer_state.json) is skipped
    # Resumed at step 2 of 2, no step runs: the saved model is the trained one (a fresh run at lr 0 saves the init).
    train_main([*common, "--learning_rate", "0", "--resume_from_checkpoint", "last"])
    saved = load_file(out / "model.safetensors")
    assert all(torch.equal(saved[k], trained[k]) for k in trained)


def _train_and_score(data_dir, tmp_path, visual_input, steps):
    """Train the tiny model for `steps` and return (generated test summaries, test split)."""
    torch.manual_seed(0)
    trainer = _trainer(
        data_dir, tmp_path / visual_input, visual_input=visual_input, max_steps=steps, per_device_train_batch_size=16,
        learning_rate=3e-3, warmup_steps=0.05, logging_steps=50, generation_max_length=32,
        per_device_eval_batch_size=64,
    )
    trainer.train()
    test = load_cepsum_split(data_dir, "test")
    output = trainer.predict(test)
    return trainer.processing_class.batch_decode(output.predictions.clip(min=0)), test


def _learning_check(tmp_path, num_products, steps, check_images):
    data_dir = str(tmp_path / "data")
    generate_synthetic_products(data_dir, num_products=num_products, seed=0)
    with_images, test = _train_and_score(data_dir, tmp_path, "images", steps)
    references = [list(t) for t in test["tgt"]]
    lead_chars = mean_reference_length(references)
    lead = cepsum_rouge(lead_baseline(list(test["src"]), lead_chars), references)
    model = cepsum_rouge(with_images, references)
    assert model["rougeL"] > lead["rougeL"] + 10.0, (model, lead)
    if check_images:
        blind, _ = _train_and_score(data_dir, tmp_path, "none", steps)
        attributes = load_synthetic_attributes(data_dir, "test")
        rate_images = image_only_mention_rate(dict(zip(test["sku"], with_images)), attributes)
        rate_blind = image_only_mention_rate(dict(zip(test["sku"], blind)), attributes)
        assert rate_images > rate_blind + 0.15, (rate_images, rate_blind)


def test_tiny_model_beats_lead_baseline_fast(tmp_path):
    _learning_check(tmp_path, num_products=60, steps=80, check_images=False)


@pytest.mark.slow
def test_tiny_model_beats_lead_and_uses_image_only_attributes(tmp_path):
    _learning_check(tmp_path, num_products=300, steps=800, check_images=True)


def test_model_selection_on_rouge2_is_dropped_when_evaluation_does_not_generate(tmp_path):
    generating = MMAPSTrainingArguments(output_dir=str(tmp_path), report_to="none")
    plain = MMAPSTrainingArguments(output_dir=str(tmp_path), report_to="none", predict_with_generate=False)
    assert generating.metric_for_best_model == "rouge2"
    assert plain.metric_for_best_model is None  # ROUGE-2 would never be computed: the first evaluation would fail
