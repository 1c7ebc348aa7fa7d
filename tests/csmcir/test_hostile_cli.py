"""Hostile runs of the CSMCIR command lines: the same --seed gives the same run, a resumed run equals the straight
one, a second job on one output is refused naming the first, published folders hold no pickle and no secret, broken
model folders and checkpoints are named, remote code never runs unasked, and a user error is one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hostile_inputs import console_error_in_process, listing
from hub_cards.output_lock import OutputInUseError, exclusive_output_lock

ROOT = Path(__file__).resolve().parents[2]
SECRET_TOKEN = "hf_SECRETsecret0123456789"


@pytest.fixture(scope="module")
def cirr_data(tmp_path_factory):
    from modeling_csmcir.data.synthetic import SyntheticCIRConfig, generate_synthetic_cir

    return generate_synthetic_cir(SyntheticCIRConfig(
        output_dir=str(tmp_path_factory.mktemp("hostile_cli") / "data"), num_images=60, image_size=32,
        val_fraction=0.3, test_fraction=0.3,
    ))


def _train_argv(data, out, *extra):
    return ["--dataset", "cirr", "--data_dir", str(data), "--config_name", "tiny-scratch", "--output_dir", str(out),
            "--per_device_train_batch_size", "4", "--max_steps", "4", "--save_steps", "2", "--logging_steps", "1",
            "--report_to", "none", "--use_cpu", "--disable_tqdm", "true", "--bank_size", "16", "--bank_k_min", "2",
            "--bank_k_max", "4", "--seed", "7", *extra]


def _losses(run_dir, step=4):
    state = json.loads((Path(run_dir) / f"checkpoint-{step}" / "trainer_state.json").read_text())
    return {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}


@pytest.fixture(scope="module")
def straight_runs(cirr_data, tmp_path_factory):
    from modeling_csmcir.cli.train import main as train_main

    base = tmp_path_factory.mktemp("runs")
    for name in ("first", "second"):
        train_main(_train_argv(cirr_data, base / name, "--hub_token", SECRET_TOKEN))
    return base


def test_same_seed_gives_the_same_losses_from_step_one(straight_runs):
    first, second = _losses(straight_runs / "first"), _losses(straight_runs / "second")
    assert sorted(first) == [1, 2, 3, 4]
    assert first == second


def test_n_steps_plus_resume_equals_2n_straight_from_the_cli(straight_runs, cirr_data, tmp_path):
    from modeling_csmcir.cli.train import main as train_main

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(straight_runs / "first" / "checkpoint-2", resumed / "checkpoint-2")  # a run stopped after N = 2
    train_main(_train_argv(cirr_data, resumed, "--resume_from_checkpoint", "last"))
    straight = _losses(straight_runs / "first")
    again = _losses(resumed)
    assert again.keys() == straight.keys()
    for step in straight:
        assert again[step] == pytest.approx(straight[step], rel=1e-5, abs=1e-6), step
    a, b = load_file(straight_runs / "first" / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_published_folder_holds_no_pickle_and_no_token(straight_runs):
    folder = straight_runs / "first"
    assert not list(folder.rglob("training_args.bin")), "Trainer's pickled arguments were left in the folder"
    assert not (folder / ".csmcir-train.lock").exists()  # a finished job removes its lock
    saved = json.loads((folder / "training_args.json").read_text())
    assert saved["seed"] == 7 and "hub_token" not in saved
    for path in folder.rglob("*"):
        if path.is_file():
            assert SECRET_TOKEN.encode() not in path.read_bytes(), path


def test_a_second_run_into_the_same_output_dir_is_refused(straight_runs, cirr_data):
    from modeling_csmcir.cli.train import main as train_main

    folder = straight_runs / "second"
    before = listing(folder)
    with pytest.raises(ValueError, match=r"--output_dir .*second already holds a training run .*--resume_from_checkpoint"):
        train_main(_train_argv(cirr_data, folder))
    assert listing(folder) == before


def test_a_concurrent_run_on_the_same_output_dir_names_the_first(cirr_data, tmp_path):
    from modeling_csmcir.cli.train import main as train_main

    out = tmp_path / "busy"
    with exclusive_output_lock(out / ".csmcir-train.lock", what="held by this test"):
        with pytest.raises(OutputInUseError, match=rf"--output_dir .*busy is in use by job pid {os.getpid()}"):
            train_main(_train_argv(cirr_data, out))
    assert listing(out) == []  # nothing written, and the lock file went with the first job


# ------------------------------------------------------------------------------------------- model folders

def _tiny_folder(tmp_path):
    from fixtures import tiny_csmcir, tiny_processor

    folder = tmp_path / "model"
    processor = tiny_processor()
    tiny_csmcir(processor, seed=0).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _eval(folder, data, out):
    from modeling_csmcir.cli.eval import main as eval_main

    return eval_main(["--model_name_or_path", str(folder), "--dataset", "cirr", "--data_dir", str(data),
                      "--split", "val", "--output_dir", str(out), "--device", "cpu"])


def test_model_folder_of_another_type_is_named(tmp_path, cirr_data):
    folder = tmp_path / "mmaps-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "mmaps"}))
    with pytest.raises(ValueError, match=r"config\.json says model_type 'mmaps'; expected 'csmcir'"):
        _eval(folder, cirr_data, tmp_path / "out")
    from modeling_csmcir.cli.train import main as train_main

    with pytest.raises(ValueError, match=r"model_type 'mmaps'; expected 'csmcir' or a BLIP-2"):
        train_main(["--dataset", "cirr", "--data_dir", str(cirr_data), "--model_name_or_path", str(folder),
                    "--output_dir", str(tmp_path / "run"), "--report_to", "none", "--use_cpu"])
    assert not (tmp_path / "out").exists() and not (tmp_path / "run" / "config.json").exists()


def test_config_and_weights_that_disagree_are_named(tmp_path, cirr_data):
    folder = _tiny_folder(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["embed_dim"] = config["embed_dim"] * 2
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"--model_name_or_path .*model: cannot load the model .*agree"):
        _eval(folder, cirr_data, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_truncated_safetensors_is_named(tmp_path, cirr_data):
    folder = _tiny_folder(tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"--model_name_or_path .*model: cannot load the model"):
        _eval(folder, cirr_data, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _remote_code_folder(tmp_path, model_type="evil"):
    folder = tmp_path / "remote"
    folder.mkdir()
    marker = tmp_path / "REMOTE_CODE_RAN"
    code = (f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
            "from transformers import PretrainedConfig\n\n"
            f"class EvilConfig(PretrainedConfig):\n    model_type = {model_type!r}\n")
    (folder / "configuration_evil.py").write_text(code)
    (folder / "modeling_evil.py").write_text(code.replace("EvilConfig(PretrainedConfig)", "Unused(PretrainedConfig)"))
    (folder / "config.json").write_text(json.dumps({
        "model_type": model_type,
        "auto_map": {"AutoConfig": "configuration_evil.EvilConfig", "AutoModel": "modeling_evil.Unused",
                     "AutoModelForSeq2SeqLM": "modeling_evil.Unused", "AutoProcessor": "configuration_evil.EvilConfig"},
    }))
    return folder, marker


def test_csmcir_clis_never_run_a_folders_code_unasked(tmp_path, cirr_data, monkeypatch):
    from modeling_csmcir.cli.train import main as train_main

    monkeypatch.setattr(sys, "stdin", open(os.devnull))  # no terminal: transformers cannot ask
    folder, marker = _remote_code_folder(tmp_path)
    with pytest.raises(ValueError, match="model_type 'evil'"):
        _eval(folder, cirr_data, tmp_path / "out")
    with pytest.raises(ValueError, match="model_type 'evil'"):
        train_main(["--dataset", "cirr", "--data_dir", str(cirr_data), "--model_name_or_path", str(folder),
                    "--output_dir", str(tmp_path / "run"), "--report_to", "none", "--use_cpu"])
    assert not marker.exists(), "remote code ran without --trust_remote_code"


def test_every_cli_defaults_trust_remote_code_to_false():
    from modeling_csmcir.cli import caption, eval as csmcir_eval, train
    from modeling_mmaps.cli import eval as mmaps_eval, train as mmaps_train

    for module in (caption, csmcir_eval, train, mmaps_eval, mmaps_train):
        field = module.ModelArguments.__dataclass_fields__["trust_remote_code"]
        assert field.default is False, module.__name__


# ------------------------------------------------------------------------------------------- checkpoints

@pytest.mark.parametrize(
    "name, content, match",
    [
        ("empty.pt", b"", r"checkpoint '.*empty\.pt' is empty \(0 bytes\)"),
        ("truncated.pt", "zip", r"checkpoint '.*truncated\.pt' \(\d+ bytes\) cannot be read by torch\.load"),
        ("truncated.safetensors", "safetensors", r"'.*truncated\.safetensors' \(\d+ bytes\) is not a readable safetensors"),
        ("text.pth", b"not a checkpoint at all", r"'.*text\.pth' \(23 bytes\) cannot be read"),
    ],
    ids=["empty", "truncated-pt", "truncated-safetensors", "text-file"],
)
def test_csmcir_convert_names_broken_checkpoints_and_writes_nothing(tmp_path, name, content, match):
    from safetensors.torch import save_file

    from modeling_csmcir.cli.convert import main as convert_main

    path = tmp_path / name
    if content == "zip":
        torch.save({"model": {"w": torch.zeros(64, 64)}}, path)
        path.write_bytes(path.read_bytes()[:200])
    elif content == "safetensors":
        save_file({"w": torch.zeros(64, 64)}, path)
        path.write_bytes(path.read_bytes()[:120])
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        convert_main(["--checkpoint", str(path), "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    assert listing(tmp_path) == [name]


def test_csmcir_convert_into_the_current_folder_writes_the_model_there(tmp_path, monkeypatch):
    from test_lavis_conversion import _lavis_state_dict, _tiny_blip2

    from modeling_csmcir.cli.convert import main as convert_main

    torch.save({"model": _lavis_state_dict(_tiny_blip2())}, tmp_path / "lavis.pt")
    work = tmp_path / "work"
    work.mkdir()
    (work / "old.txt").write_text("old")
    monkeypatch.chdir(work)
    heads = json.dumps({"num_attention_heads": 2})
    convert_main(["--checkpoint", str(tmp_path / "lavis.pt"), "--output_dir", ".", "--overwrite",
                  "--vision_config", heads, "--qformer_config", heads])
    names = set(os.listdir(work))  # the path, not the (replaced) cwd handle
    assert {"config.json", "model.safetensors", "conversion_report.json"} <= names and "old.txt" not in names
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".work.")]  # no staging folder left behind


# ------------------------------------------------------------------------------------------- captioning

def test_a_second_caption_job_on_one_output_is_refused_naming_the_first(tmp_path):
    from modeling_csmcir.captioning.runner import caption_lock_file, generate_mcot_captions

    output = tmp_path / "cap.json"
    output.write_text(json.dumps({"a.png": "kept"}))
    with exclusive_output_lock(caption_lock_file(output), what="first job"):
        with pytest.raises(OutputInUseError, match=rf"caption file '.*cap\.json' is in use by job pid {os.getpid()}"):
            generate_mcot_captions(object(), [], output)
    assert json.loads(output.read_text()) == {"a.png": "kept"}
    assert not (tmp_path / "cap.json.partial.jsonl").exists()


def test_an_unwritable_caption_folder_is_named_once_without_a_tmp_name(tmp_path, monkeypatch):
    from modeling_csmcir.captioning.runner import generate_mcot_captions

    real_open = open

    def refusing_open(file, *args, **kwargs):  # a read-only folder (chmod is no obstacle to root)
        if str(file).startswith(str(tmp_path / "ro")):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refusing_open)
    (tmp_path / "ro").mkdir()
    with pytest.raises(PermissionError) as info:
        generate_mcot_captions(object(), [], tmp_path / "ro" / "cap.json")
    message = str(info.value)
    assert "cap.json" in message and ".tmp" not in message and message.count("Permission denied") == 1


# ------------------------------------------------------------------------------------------- console

def _run_cli(module, *argv, env=None):
    return subprocess.run([sys.executable, "-c", f"from {module} import console_main; console_main()", *argv],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
                          timeout=120)


def test_a_user_error_is_one_line_and_debug_shows_the_traceback(tmp_path, monkeypatch):
    argv = ["--model_name_or_path", str(tmp_path / "missing"), "--dataset", "cirr", "--data_dir", str(tmp_path),
            "--split", "val", "--output_dir", str(tmp_path / "out"), "--device", "cpu"]
    plain = _run_cli("modeling_csmcir.cli.eval", *argv)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    lines = [line for line in plain.stderr.splitlines() if line.startswith("csmcir-eval: error:")]
    assert len(lines) == 1 and "missing" in lines[0]
    # --debug / CLI_DEBUG=1 let the exception (and so its traceback) through: the same entry point, in this process.
    from modeling_csmcir.cli.eval import console_main

    with pytest.raises(Exception, match="missing"):
        console_error_in_process(console_main, [*argv, "--debug"])
    monkeypatch.setenv("CLI_DEBUG", "1")
    with pytest.raises(Exception, match="missing"):
        console_error_in_process(console_main, argv)
