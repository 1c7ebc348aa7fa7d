"""Hub model cards: a card written from real results parses back with the same numbers, its usage snippet is
valid Python, the results readers accept every layout the package writes, and the trainers write cards.

No network: ``ModelCard.validate()`` calls the Hub, so it is never called here.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from huggingface_hub import ModelCard
from huggingface_hub.repocard import metadata_load

from hub_cards import (
    CSMCIR_PIPELINE_TAG,
    MMAPS_PIPELINE_TAG,
    build_csmcir_card,
    build_mmaps_card,
    metric_display_name,
    parse_metrics,
    read_metrics_report,
    read_training_settings,
    write_csmcir_card,
    write_mmaps_card,
)
from modeling_csmcir import CSMCIRModel, CSMCIRProcessor, CSMCIRTrainer, CSMCIRTrainingArguments
from modeling_csmcir.cli.eval import main as csmcir_eval
from modeling_csmcir.data.cirr import load_cirr
from modeling_csmcir.data.synthetic import SyntheticCIRConfig, generate_synthetic_cir
from modeling_csmcir.evaluation.cir_metrics import PROTOCOLS
from modeling_csmcir.evaluation.evaluator import CIRRetrievalEvaluator
from modeling_csmcir.presets import preset_model
from modeling_mmaps import MMAPSForConditionalGeneration
from modeling_mmaps.data.cepsum import MMAPSDataCollator
from modeling_mmaps.evaluation.summarization_metrics import PROTOCOLS as MMAPS_PROTOCOLS
from modeling_mmaps.evaluation.summarization_metrics import summarization_scores
from modeling_mmaps.presets import preset_config as mmaps_preset_config
from modeling_mmaps.presets import preset_processor as mmaps_preset_processor
from modeling_mmaps.trainer_mmaps import MMAPSTrainer, MMAPSTrainingArguments

def python_blocks(markdown: str) -> list[str]:
    """The fenced ```python blocks of a Markdown text."""
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.DOTALL)


def numeric(metrics: dict) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    config = SyntheticCIRConfig(output_dir=str(tmp_path_factory.mktemp("bench")), num_images=60, seed=0, image_size=32,
                                val_fraction=0.4, test_fraction=0.2)
    return generate_synthetic_cir(config)


@pytest.fixture(scope="module")
def csmcir_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model, processor = preset_model("tiny", image_size=32)
    model.eval()
    folder = tmp_path_factory.mktemp("csmcir_model")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def csmcir_metrics_file(bench, csmcir_dir, tmp_path_factory) -> Path:
    """A real metrics.json, written by csmcir-eval for the tiny model on the synthetic benchmark."""
    out = tmp_path_factory.mktemp("eval")
    csmcir_eval(["--dataset", "cirr", "--data_dir", str(bench), "--model_name_or_path", str(csmcir_dir), "--device", "cpu",
                 "--split", "val", "--output_dir", str(out),
                 "--target_captions", str(bench / "target_captions" / "captions.rc2.val.json")])
    return out / "metrics.json"


# ------------------------------------------------------------------------------------------------ round trips


def test_csmcir_card_from_csmcir_eval_metrics_parses_back_with_the_same_numbers(csmcir_dir, csmcir_metrics_file):
    written = json.loads(csmcir_metrics_file.read_text())
    args = CSMCIRTrainingArguments(output_dir=str(csmcir_dir / "run"), learning_rate=2e-4, bank_strategy="hard",
                                   bank_size=512, seed=7, report_to=[], use_cpu=True)
    path = write_csmcir_card(csmcir_dir, metrics=csmcir_metrics_file, training_args=args,
                             base_model="Salesforce/blip2-itm-vit-g", repo_id="test-org/csmcir-tiny")
    assert path == csmcir_dir / "README.md"

    card = ModelCard.load(path)
    results = card.data.eval_results
    expected = numeric(written["metrics"])
    assert len(expected) >= 8  # R@1/5/10/50, Rs@1/2/3, avg
    assert {r.metric_type: r.metric_value for r in results} == expected
    assert {r.metric_args["protocol"] for r in results} == {written["protocol"]}
    assert {(r.dataset_type, r.dataset_split, r.task_type) for r in results} == {("cirr", "val", "composed-image-retrieval")}
    assert card.data.model_name == "csmcir-tiny"

    metadata = metadata_load(path)
    assert metadata["library_name"] == "transformers"
    assert metadata["pipeline_tag"] == CSMCIR_PIPELINE_TAG
    assert "composed-image-retrieval" in metadata["tags"]
    assert metadata["base_model"] == "Salesforce/blip2-itm-vit-g"
    assert metadata["model-index"][0]["results"][0]["metrics"][0]["value"] == expected["recall_at_1"]

    text = card.text
    assert f"| Recall@5 (`recall_at_5`) | {expected['recall_at_5']:.2f} |" in text
    assert "| `bank_strategy` | hard |" in text and "| `learning_rate` | 0.0002 |" in text and "| `seed` | 7 |" in text
    assert "Initialised from" in text and "2601.03728" in text and "@inproceedings{li2023blip2" in text


def test_mmaps_card_from_trainer_eval_results_parses_back_with_the_same_numbers(tmp_path):
    scores = summarization_scores(["红色真皮包。", "简约大容量"], [["红色真皮手提包。", "真皮包"], ["大容量简约款"]],
                                  attribute_vocabulary=["真皮", "红色", "大容量"])
    eval_results = {f"eval_{k}": v for k, v in scores.items()} | {"eval_loss": 2.5, "eval_runtime": 0.3, "epoch": 2.0}
    (tmp_path / "eval_results.json").write_text(json.dumps(eval_results))
    mmaps_preset_config("tiny").save_pretrained(tmp_path)

    path = write_mmaps_card(tmp_path, metrics=tmp_path, dataset_name="synthetic-products", repo_id="test-org/mmaps-tiny",
                            training_args={"summary_language": "zh", "generation_num_beams": 3, "learning_rate": 3e-5})
    card = ModelCard.load(path)
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == scores
    assert not {"loss", "runtime", "epoch"} & {r.metric_type for r in card.data.eval_results}
    metadata = metadata_load(path)
    assert (metadata["pipeline_tag"], metadata["library_name"], metadata["language"]) == (MMAPS_PIPELINE_TAG, "transformers", "zh")
    assert "product-summarization" in metadata["tags"]
    assert "synthetic product set" in card.text and "d_model 32" in card.text and "2308.11351" in card.text


def test_card_without_results_has_no_model_index(tmp_path):
    card = build_csmcir_card(tmp_path)
    assert card.data.eval_results is None and "model-index" not in str(card)
    assert "No evaluation results were recorded" in card.text


# ------------------------------------------------------------------------------------------------ usage snippets


@pytest.mark.parametrize("custom_pipelines", [False, True])
def test_usage_snippets_are_valid_python_and_name_the_repo(tmp_path, custom_pipelines):
    config = {"custom_pipelines": {"x": {}}} if custom_pipelines else {}
    (tmp_path / "config.json").write_text(json.dumps(config))
    for card in (build_csmcir_card(tmp_path, repo_id="org/cir"), build_mmaps_card(tmp_path, repo_id="org/cir"),
                 build_mmaps_card(tmp_path, repo_id="org/cir", language="en")):
        blocks = python_blocks(card.text)
        assert len(blocks) == 1
        tree = ast.parse(blocks[0])
        calls = {n.func.attr if isinstance(n.func, ast.Attribute) else n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call)}
        assert ("pipeline" in calls) == custom_pipelines
        assert '"org/cir"' in blocks[0] and "trust_remote_code=True" in blocks[0]


def test_mmaps_snippet_feeds_images_only_to_a_pixel_model(tmp_path):
    mmaps_preset_config("tiny", visual_input="images").save_pretrained(tmp_path)
    snippet = python_blocks(build_mmaps_card(tmp_path).text)[0]
    assert "images=[Image.open(" in snippet
    mmaps_preset_config("tiny").save_pretrained(tmp_path)
    assert "images=" not in python_blocks(build_mmaps_card(tmp_path).text)[0]


# ------------------------------------------------------------------------------------------------ readers


def test_metrics_reader_accepts_every_layout_the_package_writes(tmp_path):
    flat = parse_metrics({"protocol": "p", "recall_at_1": 10.0, "recall_at_5": 30.5})
    assert (flat.values, flat.protocol) == ({"recall_at_1": 10.0, "recall_at_5": 30.5}, "p")
    nested = parse_metrics({"dataset": "cirr", "split": "val", "model": "m", "arguments": {"batch_size": 64},
                            "metrics": {"recall_at_1": 1.5, "protocol": "cirr-rc2"}, "submission_files": ["a"]})
    assert (nested.values, nested.protocol, nested.dataset, nested.split) == ({"recall_at_1": 1.5}, "cirr-rc2", "cirr", "val")
    trainer = parse_metrics({"eval_rouge2": 12.0, "eval_loss": 1.0, "eval_runtime": 2.0, "eval_samples_per_second": 9.0,
                             "epoch": 1.0, "eval_flag": True})
    assert trainer.values == {"rouge2": 12.0}
    mmaps_eval = parse_metrics({"rouge1": 30.0, "lead12_rouge1": 20.0, "gen_len": 14.0, "protocol": "CEPSUM", "split": "test",
                                "num_products": 40, "num_beams": 3, "max_new_tokens": 90, "visual_input": "images"})
    assert (mmaps_eval.values, mmaps_eval.split) == ({"rouge1": 30.0, "gen_len": 14.0}, "test")
    (tmp_path / "metrics.json").write_text(json.dumps({"protocol": "p", "map_at_5": 4.25}))
    assert read_metrics_report(tmp_path).values == {"map_at_5": 4.25}


def test_metrics_reader_rejects_bad_files_naming_them(tmp_path):
    bad = tmp_path / "metrics.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="metrics.json: not valid JSON"):
        read_metrics_report(bad)
    bad.write_text(json.dumps({"protocol": "p", "eval_loss": 1.0}))
    with pytest.raises(ValueError, match="metrics.json: no numeric metric found"):
        read_metrics_report(bad)
    with pytest.raises(ValueError, match="expected a JSON object"):
        parse_metrics([1, 2])
    with pytest.raises(ValueError, match="appears twice"):
        parse_metrics({"rouge1": 1.0, "eval_rouge1": 2.0})
    with pytest.raises(ValueError, match="neither"):
        read_metrics_report(tmp_path / "..")


def test_metric_display_names():
    assert [metric_display_name(k) for k in ("recall_at_5", "recall_subset_at_1", "dress_recall_at_10", "map_at_25",
                                              "rougeL", "bleu4", "avg", "custom")] == [
        "Recall@5", "Recall_subset@1", "dress Recall@10", "mAP@25", "ROUGE-L", "BLEU-4", "Average", "custom"]


def test_training_settings_from_arguments_and_saved_state(tmp_path):
    args = CSMCIRTrainingArguments(output_dir=str(tmp_path), learning_rate=1e-4, max_steps=50, bank_k_min=4,
                                   report_to=[], use_cpu=True)
    state = {"global_step": 50, "epoch": 2.5, "best_metric": 41.0, "best_model_checkpoint": str(tmp_path / "checkpoint-40"),
             "log_history": [{"loss": 3.0, "step": 10}, {"eval_recall_at_1": 41.0, "step": 40}, {"loss": 1.25, "step": 50}]}
    (tmp_path / "trainer_state.json").write_text(json.dumps(state))
    settings = read_training_settings(args, tmp_path)
    assert settings["learning_rate"] == 1e-4 and settings["max_steps"] == 50 and settings["bank_k_min"] == 4
    assert (settings["global_step"], settings["final_train_loss"], settings["best_model_checkpoint"]) == (50, 1.25, "checkpoint-40")
    assert "num_train_epochs" in settings and "bank_strategy" in settings
    with pytest.raises(ValueError, match="training_args: expected"):
        read_training_settings(42)


def test_pipeline_tags_are_tasks_known_offline():
    from huggingface_hub import SummarizationInput  # noqa: F401 - the Hub's inference task types include summarization
    from transformers.pipelines import SUPPORTED_TASKS

    assert CSMCIR_PIPELINE_TAG in SUPPORTED_TASKS
    assert MMAPS_PIPELINE_TAG == "summarization"


# ------------------------------------------------------------------------------------------------ trainer hooks


def test_csmcir_trainer_writes_the_card_on_save_once_evaluated(bench, csmcir_dir, tmp_path):
    processor = CSMCIRProcessor.from_pretrained(csmcir_dir)
    model = CSMCIRModel.from_pretrained(csmcir_dir).eval()
    data = load_cirr(bench, "val", target_captions=bench / "target_captions" / "captions.rc2.val.json")
    evaluator = CIRRetrievalEvaluator(data, processor, "cirr", batch_size=16, cache=None, show_progress=False)
    args = CSMCIRTrainingArguments(output_dir=str(tmp_path / "run"), per_device_eval_batch_size=16, label_names=["target_ids"],
                                   report_to=[], use_cpu=True, disable_tqdm=True)
    trainer = CSMCIRTrainer(model=model, args=args, evaluator=evaluator)
    trainer.hub_card_kwargs = {"dataset_name": "synthetic-cir"}

    trainer.save_model(str(tmp_path / "before"))
    assert not (tmp_path / "before" / "README.md").exists()  # no metrics yet: no card

    metrics = trainer.evaluate()
    trainer.save_model(str(tmp_path / "after"))
    card = ModelCard.load(tmp_path / "after" / "README.md")
    expected = {k[len("eval_"):]: v for k, v in metrics.items() if k.startswith("eval_recall") or k == "eval_avg"}
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == expected
    assert {r.metric_args["protocol"] for r in card.data.eval_results} == {PROTOCOLS["cirr"]}
    assert "synthetic CIR benchmark" in card.text

    trainer.create_model_card(model_name="csmcir-pushed", finetuned_from="Salesforce/blip2-itm-vit-g")
    pushed = metadata_load(Path(args.output_dir) / "README.md")
    assert pushed["pipeline_tag"] == CSMCIR_PIPELINE_TAG and pushed["base_model"] == "Salesforce/blip2-itm-vit-g"
    assert pushed["model-index"][0]["name"] == "csmcir-pushed"


def test_mmaps_trainer_writes_a_card_with_the_cepsum_protocol(tmp_path):
    processor = mmaps_preset_processor("tiny", attribute_vocabulary=["真皮", "黑色"])
    model = MMAPSForConditionalGeneration(mmaps_preset_config("tiny", num_attributes=2))
    rows = {"sku": ["a", "b", "c"], "src": ["这款包的材质很好真皮黑色", "简约百搭大容量", "时尚休闲双肩"],
            "summary": ["真皮黑色包", "大容量", "时尚"], "tgt": [["真皮黑色包"], ["大容量"], ["时尚"]]}
    data = Dataset.from_dict(rows)
    args = MMAPSTrainingArguments(output_dir=str(tmp_path / "run"), per_device_eval_batch_size=3, generation_max_length=8,
                                  generation_num_beams=1, report_to=[], use_cpu=True, disable_tqdm=True)
    trainer = MMAPSTrainer(model=model, args=args, eval_dataset=data, processing_class=processor,
                           data_collator=MMAPSDataCollator(processor, visual_input="none"))
    metrics = trainer.evaluate()
    trainer.save_model(str(tmp_path / "saved"))
    card = ModelCard.load(tmp_path / "saved" / "README.md")
    got = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert got["rouge2"] == metrics["eval_rouge2"] and got["bleu4"] == metrics["eval_bleu4"]
    assert "loss" not in got and "runtime" not in got
    assert {r.metric_args["protocol"] for r in card.data.eval_results} == {MMAPS_PROTOCOLS["zh"]}
    assert "| `generation_num_beams` | 1 |" in card.text
