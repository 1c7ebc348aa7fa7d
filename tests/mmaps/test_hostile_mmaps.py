"""Hostile data and runs for MMAPS: skus that leave the image folder are refused without opening anything outside,
the same --seed gives the same mmaps-train run, N steps + resume equals 2N straight, remote code never runs unasked."""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest
from safetensors.torch import load_file

from hostile_inputs import listing, opened_files, outside_secret, write_image, write_json
from hub_cards.safe_paths import ALLOW_OUTSIDE_ENV
from modeling_mmaps.data.cepsum import load_cepsum_split
from modeling_mmaps.data.synthetic import generate_synthetic_products


def _cepsum(root, skus):
    write_json(root / "cases_dev.json", {sku: {"src": "红色纯棉T恤", "tgt": ["红色T恤"]} for sku in skus})
    write_image(root / "images" / "ok.jpg")
    return root


@pytest.mark.parametrize(
    "sku, match",
    [
        ("../../outside/secret", r"cases_dev\.json: sku '\.\./\.\./outside/secret' names path .* which leaves"),
        ("ABSOLUTE", r"cases_dev\.json: sku '/.*secret' names path"),
        ("link", r"cases_dev\.json: sku 'link' names path .*resolves to .*secret\.png"),
    ],
    ids=["climbing", "absolute", "symlink"],
)
def test_skus_leaving_the_image_folder_are_refused_without_opening_the_file(tmp_path, monkeypatch, sku, match):
    monkeypatch.delenv(ALLOW_OUTSIDE_ENV, raising=False)
    secret = outside_secret(tmp_path)
    secret.with_suffix(".jpg").write_bytes(secret.read_bytes())
    if sku == "ABSOLUTE":
        sku = str(secret.with_suffix(""))
    root = _cepsum(tmp_path / "cepsum", ["ok", sku])
    if sku == "link":
        os.symlink(secret, root / "images" / "link.png")
    before = listing(root)
    with opened_files() as seen, pytest.raises(ValueError, match=match):
        load_cepsum_split(root, "dev")
    assert str(secret.resolve()) not in seen and str(secret.with_suffix(".jpg").resolve()) not in seen
    assert listing(root) == before


@pytest.fixture(scope="module")
def products(tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile_mmaps") / "data"
    generate_synthetic_products(out, num_products=16, seed=5)
    return out


def _train(products, out, *extra):
    from modeling_mmaps.cli.train import main as train_main

    return train_main(["--data_dir", str(products), "--output_dir", str(out), "--config_name", "tiny", "--max_steps", "4",
                       "--per_device_train_batch_size", "4", "--report_to", "none", "--use_cpu", "--eval_split", "",
                       "--save_strategy", "steps", "--save_steps", "2", "--logging_steps", "1", "--attribute_top_n", "10",
                       "--disable_tqdm", "true", "--seed", "11", "--learning_rate", "1e-3", *extra])


def _losses(folder):
    state = json.loads((folder / "checkpoint-4" / "trainer_state.json").read_text())
    return {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}


def test_mmaps_train_same_seed_same_run_and_resume_equals_straight(products, tmp_path):
    _train(products, tmp_path / "a")
    _train(products, tmp_path / "b")
    first, second = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert sorted(first) == [1, 2, 3, 4] and first == second
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(tmp_path / "a" / "checkpoint-2", resumed / "checkpoint-2")
    _train(products, resumed, "--resume_from_checkpoint", "last")
    again = _losses(resumed)
    assert again.keys() == first.keys()
    assert all(again[s] == pytest.approx(first[s], rel=1e-5, abs=1e-6) for s in first)
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all((a[k] - b[k]).abs().max() < 1e-6 for k in a)
    assert not list(tmp_path.rglob("training_args.bin"))


def test_mmaps_eval_never_runs_a_folders_code_unasked(tmp_path, products, monkeypatch):
    from modeling_mmaps.cli.eval import main as eval_main

    monkeypatch.setattr(sys, "stdin", open(os.devnull))
    folder = tmp_path / "remote"
    folder.mkdir()
    marker = tmp_path / "REMOTE_CODE_RAN"
    (folder / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
                                    "from transformers import PretrainedConfig\nclass C(PretrainedConfig):\n"
                                    "    model_type = 'evil'\n")
    (folder / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": {
        "AutoConfig": "evil.C", "AutoModelForSeq2SeqLM": "evil.C", "AutoProcessor": "evil.C"}}))
    with pytest.raises(Exception, match=r"trust_remote_code"):
        eval_main(["--model_name_or_path", str(folder), "--data_dir", str(products), "--split", "test",
                   "--output_dir", str(tmp_path / "out")])
    assert not marker.exists(), "remote code ran without --trust_remote_code"
