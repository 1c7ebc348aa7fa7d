"""The trainer path of the cards without a project model: ``ModelCardCallback`` on a checkpoint save, and a card
written later for a trained folder still reports its training settings (``training_args.json``)."""

from __future__ import annotations

import json
from types import SimpleNamespace

from huggingface_hub import ModelCard
from transformers import TrainerControl, TrainerState, TrainingArguments

from hub_cards import ModelCardCallback, write_mmaps_card
from hub_cards.training_settings import save_training_arguments


def mmaps_stub(path: str = "facebook/bart-base") -> SimpleNamespace:
    return SimpleNamespace(config=SimpleNamespace(model_type="mmaps", _name_or_path=path))


def test_callback_writes_the_checkpoint_card_once_an_evaluation_has_metrics(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, learning_rate=3e-4)
    state = TrainerState(global_step=5, log_history=[{"loss": 2.0, "step": 5}])
    callback = ModelCardCallback("CEPSUM protocol", dataset_name="synthetic-products", repo_id="org/mmaps")
    (tmp_path / "checkpoint-5").mkdir()

    callback.on_save(args, state, TrainerControl(), model=mmaps_stub())
    assert not (tmp_path / "checkpoint-5" / "README.md").exists()  # no evaluation yet: no card

    state.log_history.append({"eval_rouge2": 7.5, "eval_loss": 1.0, "step": 5})
    callback.on_save(args, state, TrainerControl(), model=mmaps_stub())
    card = ModelCard.load(tmp_path / "checkpoint-5" / "README.md")
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {"rouge2": 7.5}
    assert {r.metric_args["protocol"] for r in card.data.eval_results} == {"CEPSUM protocol"}
    assert card.data.base_model == "facebook/bart-base" and "org/mmaps" in card.text
    assert "| `learning_rate` | 0.0003 |" in card.text


def test_a_card_written_later_reads_the_saved_training_arguments(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, learning_rate=3e-3, seed=11)
    save_training_arguments(args, tmp_path)
    assert json.loads((tmp_path / "training_args.json").read_text())["seed"] == 11
    card = ModelCard.load(write_mmaps_card(tmp_path, metrics={"rouge2": 1.0}))
    assert "Training settings were not recorded" not in card.text
    assert "| `learning_rate` | 0.003 |" in card.text and "| `seed` | 11 |" in card.text
