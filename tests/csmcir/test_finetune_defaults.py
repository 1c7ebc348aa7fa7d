"""The fine-tuning defaults (``CSMCIRTrainingArguments``' bank settings, the README's headline ``csmcir-train``
command: batch 16, lr 3e-4, entropy bank, pretrained vision tower frozen and cached) do not collapse a tiny run
from a pretrained start, and it learns composed retrieval far above chance.

Collapse, as measured in ``benchmarks/results/csmcir_bank_diagnosis.md``: the bank's detached negatives take over the
softmax, the shared embedding contracts until every logit ties, and the loss sits at ≈ log(B + k) — above the
chance level log(B) of in-batch InfoNCE — with gallery embeddings all alike (mean off-diagonal cosine → 1).
"""

from __future__ import annotations

import math

import pytest
import torch

from modeling_csmcir.cached_training import (
    CachedCIRSplit, CachedRunSettings, encode_cached, evaluate_cached, train_cached,
)
from modeling_csmcir.data.synthetic import SyntheticCIRConfig, generate_synthetic_cir, load_benchmark_scenes, scene_caption_pairs
from modeling_csmcir.presets import preset_model
from modeling_csmcir.pretraining import SceneCaptionTensors, pretrain
from modeling_csmcir.training_args import CSMCIRPretrainingArguments, CSMCIRTrainingArguments

BATCH = 16


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """A tiny CIR benchmark and a briefly ITC-pretrained tiny model (the fine-tuning regime's start)."""
    root = generate_synthetic_cir(SyntheticCIRConfig(output_dir=str(tmp_path_factory.mktemp("cir")), num_images=720,
                                                     image_size=48, pairs_per_set=3))
    torch.manual_seed(0)
    model, processor = preset_model("tiny-grid", image_size=48)
    pairs = scene_caption_pairs(1000, seed=0, image_size=48, exclude=load_benchmark_scenes(root))
    args = CSMCIRPretrainingArguments(
        output_dir=str(tmp_path_factory.mktemp("pre")), max_steps=120, per_device_train_batch_size=32,
        learning_rate=1e-3, warmup_steps=8, lr_scheduler_type="cosine", report_to="none", save_strategy="no",
        use_cpu=True, disable_tqdm=True, dataloader_drop_last=True, seed=0,
    )
    pretrain(model, SceneCaptionTensors(pairs, processor), args)
    return root, model, CachedCIRSplit(root, "train", processor), CachedCIRSplit(root, "val", processor)


def _fine_tune(start, tmp_path, **bank):
    root, model, train, val = start
    defaults = CSMCIRTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    settings = CachedRunSettings(
        bank_strategy="entropy", max_steps=100, batch_size=BATCH, learning_rate=3e-4, warmup_steps=5, seed=0,
        output_dir=str(tmp_path / "run"), freeze_vision=True, vision_feature_cache="memory",
        **{k: getattr(defaults, k) for k in ("bank_size", "bank_k_min", "bank_k_max", "bank_age_decay",
                                              "bank_max_age", "bank_start_step", "bank_weight", "freeze_temperature")},
    )
    for key, value in bank.items():
        setattr(settings, key, value)
    tuned, info = train_cached(None, train, None, settings, initial_model=model)
    gallery = encode_cached(tuned, val, use_target_captions=True)["gallery"]
    cos = gallery @ gallery.t()
    off_diagonal = (cos.sum() - cos.diagonal().sum()) / (cos.numel() - cos.shape[0])
    info["val"] = evaluate_cached(tuned, val, use_target_captions=True)
    info["val_before"] = evaluate_cached(model, val, use_target_captions=True)
    return info, float(off_diagonal)


def test_headline_fine_tuning_settings_do_not_collapse(start, tmp_path):
    info, off_diagonal = _fine_tune(start, tmp_path)
    served = [h for h in info["log_history"] if h.get("bank_mean_k", 0) > 0]
    assert served, "the bank never served negatives: the test would not test it"
    print(info["val_before"]["recall_at_5"], info["val"]["recall_at_5"], info["final_loss"], off_diagonal, [(h["step"], round(h["loss"], 2)) for h in info["log_history"]])
    # Measured (2-core machine at load ~6): these settings end at loss 2.54 with gallery off-diagonal cosine 0.81, and
    # val R@5 goes 11.1 -> 37.0 (108-image gallery: chance ≈ 4.6%); the previous defaults collapse (the slow test below).
    # A collapsed run sits at ≈ log(B + k) >= log(B + k_min) = 3.0 with cosine -> 1; chance level is log(B) = 2.77.
    assert info["final_loss"] < math.log(BATCH), info["log_history"]
    assert info["val"]["recall_at_5"] >= info["val_before"]["recall_at_5"] + 15, (info["val_before"], info["val"])
    assert off_diagonal <= 0.95, off_diagonal


@pytest.mark.slow
def test_the_previous_defaults_collapse_the_same_run(start, tmp_path):
    # The contrast that shows the test above can fail: the bank defaults before the fine-tuning benchmark.
    info, off_diagonal = _fine_tune(start, tmp_path, bank_size=4096, bank_k_min=16, bank_k_max=256,
                                    bank_age_decay=500.0, bank_max_age=1000, bank_start_step=0, bank_weight=1.0)
    print(info["final_loss"], off_diagonal)
    assert info["final_loss"] > math.log(BATCH) or off_diagonal >= 0.9
