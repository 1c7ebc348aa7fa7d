"""Tests for the ablation / t-SNE machinery: `modeling_csmcir.cached_training` and `csmcir-visualize`."""

from __future__ import annotations

import math

import pytest
import torch

from modeling_csmcir import CSMCIRModel
from modeling_csmcir.cached_training import (
    CachedCIRCollator, CachedCIRSplit, CachedRunSettings, evaluate_cached, mean_std, steps_to_reach, train_cached,
)
from modeling_csmcir.cli.visualize import main as run_visualization
from modeling_csmcir.data.synthetic import SyntheticCIRConfig, generate_synthetic_cir
from modeling_csmcir.evaluation.symmetry import symmetry_stats
from modeling_csmcir.presets import preset_config, preset_processor


@pytest.fixture(scope="module")
def tiny_benchmark(tmp_path_factory):
    root = tmp_path_factory.mktemp("cir")
    generate_synthetic_cir(SyntheticCIRConfig(output_dir=str(root), num_images=120, image_size=32, min_objects=1,
                                              max_objects=2, pairs_per_set=2))
    processor = preset_processor("tiny", image_size=32)
    return root, processor, CachedCIRSplit(root, "train", processor), CachedCIRSplit(root, "val", processor)


def test_steps_to_reach_and_mean_std():
    curve = [{"step": 0, "r": 1.0}, {"step": 10, "r": 4.0}, {"step": 20, "r": 9.0}]
    assert steps_to_reach(curve, "r", 4.0) == 10
    assert steps_to_reach(curve, "r", 10.0) is None
    mean, std = mean_std([1.0, 2.0, 3.0])
    assert mean == 2.0 and math.isclose(std, 1.0)
    assert mean_std([5.0]) == (5.0, 0.0)


def test_symmetry_stats_on_known_vectors():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    stats = symmetry_stats(q, q)
    assert math.isclose(stats["mean_query_target_cosine"], 1.0) and stats["centroid_gap"] == 0.0
    stats = symmetry_stats(q, -q)
    assert math.isclose(stats["mean_query_target_cosine"], -1.0)
    assert math.isclose(stats["centroid_gap"], math.sqrt(2.0), rel_tol=1e-6)


def test_collator_rows_match_the_split(tiny_benchmark):
    _, _, train, _ = tiny_benchmark
    with_captions = CachedCIRCollator(train, use_target_captions=True)([{"row": 0}, {"row": 3}])
    assert torch.equal(with_captions["pixel_values"][1], train.pixel_values[train.ref[3]])
    assert torch.equal(with_captions["target_pixel_values"][0], train.pixel_values[train.tgt[0]])
    assert torch.equal(with_captions["target_input_ids"][1], train.caption_ids[train.tgt[3]])
    assert with_captions["target_ids"].tolist() == [int(train.tgt[0]), int(train.tgt[3])]
    image_only = CachedCIRCollator(train, use_target_captions=False)([{"row": 0}])
    assert "target_input_ids" not in image_only
    lookup = CachedCIRCollator(train, use_target_captions=True).target_inputs([2, 0])
    assert torch.equal(lookup["input_ids"][0], train.caption_ids[2])


def test_training_through_csmcir_trainer_records_a_curve(tiny_benchmark, tmp_path):
    _, processor, train, val = tiny_benchmark
    config = preset_config("small", vocab_size=len(processor.tokenizer), hidden_size=32, num_layers=1)
    untrained = evaluate_cached(CSMCIRModel(config), val, True)
    assert 0.0 <= untrained["recall_at_1"] <= untrained["recall_at_5"] <= 100.0
    model, info = train_cached(config, train, val, CachedRunSettings(max_steps=12, batch_size=8, eval_every=6,
                                                                     bank_start_step=4, output_dir=str(tmp_path)))
    assert [p["step"] for p in info["curve"]] == [0, 6, 12]
    # The curve's last point is the returned model's own val score.
    assert info["curve"][-1]["recall_at_5"] == evaluate_cached(model, val, True)["recall_at_5"]
    assert math.isfinite(info["final_loss"])
    assert not model.training


def test_visualize_cli_writes_a_png(tiny_benchmark, tmp_path):
    root, _, _, _ = tiny_benchmark
    out = tmp_path / "tsne.png"
    stats = run_visualization(["--data_dir", str(root), "--output_file", str(out), "--num_queries", "12",
                            "--train_steps", "2", "--perplexity", "5"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(stats) == 2
    for s in stats.values():
        assert -1.0 <= s["mean_query_target_cosine"] <= 1.0 and s["centroid_gap"] >= 0.0
