"""`hub_cards.hub_ready.hub_ready_problems`: a folder uploadable as it is passes; each way of not being uploadable
(pickle, absolute path, missing card or pipeline file, stale card, Trainer checkpoint) fails with a message naming
the file. The CLIs' own folders are checked in their tests (tests/csmcir/test_csmcir_trainer.py,
tests/mmaps/test_mmaps_trainer.py) and the demo's in tests/test_readme.py."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch

from hub_cards import write_csmcir_card, write_metrics_report
from hub_cards.hub_ready import find_absolute_paths, hub_ready_problems
from hub_cards.portable_paths import portable_path, redact_local_paths
from hub_cards.training_settings import save_training_arguments
from modeling_csmcir import CSMCIRTrainingArguments
from modeling_csmcir.presets import preset_model
from pipelines import COMPOSED_IMAGE_RETRIEVAL_TASK

METRICS = {"recall_at_1": 12.5, "recall_at_5": 37.5, "recall_subset_at_1": 50.0}


@pytest.fixture(scope="module")
def ready_folder(tmp_path_factory):
    """A tiny CSMCIR folder made the way csmcir-train makes it: model, processor, pipeline code, metrics, card."""
    from transformers import pipeline

    folder = tmp_path_factory.mktemp("hub_ready") / "model"
    model, processor = preset_model("tiny")
    pipeline(COMPOSED_IMAGE_RETRIEVAL_TASK, model=model, processor=processor).save_pretrained(folder)
    args = CSMCIRTrainingArguments(output_dir=str(folder), max_steps=3, report_to="none", use_cpu=True,
                                   bank_strategy="entropy")
    save_training_arguments(args, folder)
    write_metrics_report(folder / "metrics.json", METRICS, protocol="cirr-rc2", dataset="cirr", split="val",
                         model=folder, settings={"data_dir": str(folder.parent / "data" / "cirr")})
    write_csmcir_card(folder, metrics=folder / "metrics.json", dataset_name="cirr")
    return folder


@pytest.fixture
def folder(ready_folder, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(ready_folder, copy)
    return copy


def test_a_folder_saved_like_csmcir_train_is_ready(ready_folder):
    assert hub_ready_problems(ready_folder) == []
    saved = json.loads((ready_folder / "training_args.json").read_text())
    assert saved["output_dir"] == "."   # written relative to the folder, not as /tmp/...
    assert json.loads((ready_folder / "metrics.json").read_text())["settings"]["data_dir"] == "../data/cirr"


def test_a_pickle_is_named(folder):
    torch.save({"lr": 1e-3}, folder / "training_args.bin")
    (folder / "state.dat").write_bytes(pickle.dumps({"step": 3}))   # a pickle under another name
    problems = hub_ready_problems(folder)
    assert any(p.startswith("training_args.bin: a pickle") for p in problems), problems
    assert any(p.startswith("state.dat: a pickle") for p in problems), problems


def test_an_absolute_local_path_is_named_with_its_file(folder):
    report = json.loads((folder / "metrics.json").read_text())
    report["settings"]["data_dir"] = str(folder.parent / "data")
    (folder / "metrics.json").write_text(json.dumps(report))
    (folder / "notes.txt").write_text("trained from C:\\Users\\alice\\cirr\n")
    problems = hub_ready_problems(folder)
    assert any(p.startswith(f"metrics.json: absolute local path '{folder.parent / 'data'}'") for p in problems), problems
    assert any(p.startswith("notes.txt: absolute local path 'C:\\\\Users") for p in problems), problems


def test_a_missing_card_is_named(folder):
    (folder / "README.md").unlink()
    assert [p for p in hub_ready_problems(folder) if p.startswith("README.md")] == [
        "README.md: missing (no model card: write one with hub_cards.write_csmcir_card / write_mmaps_card after an "
        "evaluation)"]


def test_a_card_without_numbers_or_training_settings_is_named(folder):
    (folder / "metrics.json").unlink()
    (folder / "training_args.json").unlink()
    write_csmcir_card(folder)
    problems = hub_ready_problems(folder)
    assert any(p.startswith("README.md: no model-index with a measured number") for p in problems), problems
    assert any(p.startswith("README.md: no training settings") for p in problems), problems


def test_a_stale_card_is_named(folder):
    write_metrics_report(folder / "metrics.json", {**METRICS, "recall_at_5": 40.0}, protocol="cirr-rc2",
                         dataset="cirr", split="val", model=folder)
    problems = hub_ready_problems(folder)
    assert problems == ["README.md: model-index recall_at_5 = 37.5 but metrics.json says 40.0 (the card is stale: "
                        "rewrite it from metrics.json)"]


def test_missing_pipeline_and_remote_code_files_are_named(folder):
    (folder / "composed_image_retrieval.py").unlink()
    (folder / "processing_csmcir.py").unlink()
    problems = hub_ready_problems(folder)
    assert any("custom_pipelines['composed-image-retrieval'] names composed_image_retrieval.py" in p
               for p in problems), problems
    assert any(p.startswith("processor_config.json: auto_map names processing_csmcir.py") for p in problems), problems


def test_missing_weights_and_checkpoints_are_named(folder):
    (folder / "model.safetensors").unlink()
    (folder / "checkpoint-2").mkdir()
    torch.save({"step": 2}, folder / "checkpoint-2" / "optimizer.pt")
    problems = hub_ready_problems(folder)
    assert "model.safetensors: missing (no safetensors weights)" in problems
    assert any(p.startswith("checkpoint-2/: a Trainer checkpoint") for p in problems), problems
    assert not any(p.startswith("checkpoint-2/optimizer.pt") for p in problems)   # named once, as a checkpoint


def test_paths_that_are_not_absolute_local_paths_are_not_flagged():
    text = ("see https://huggingface.co/docs/hub/x and ../data/cirr, a/b/c, #!/usr/bin/env python\n"
            "ratio = a / b / c; pattern '/([a-z]+)/'; <local>/cirr")
    assert find_absolute_paths(text) == []
    assert find_absolute_paths("data: /home/alice/cirr and /tmp/x/y") == ["/home/alice/cirr", "/tmp/x/y"]


def test_portable_path_rule():
    base = "/srv/runs/model"
    assert portable_path("/srv/runs/model", base) == "."
    assert portable_path("/srv/runs/model/checkpoint-5", base) == "checkpoint-5"
    assert portable_path("/srv/runs/data/cirr", base) == "../data/cirr"
    assert portable_path("/home/alice/cirr", base) == "<local>/cirr"
    assert portable_path("bert-base-uncased", base) == "bert-base-uncased"
    assert redact_local_paths({"a": ["/home/alice/x", 3], "b": "rel/x"}, base) == {"a": ["<local>/x", 3], "b": "rel/x"}
