"""Hostile cases for the shared helpers: credentials never reach a saved folder, a read-only destination is named
once by its real name, one job per output, paths stay in their dataset, and the console's --debug switch."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from transformers import TrainingArguments

from hub_cards.atomic_files import atomic_directory, write_json_atomically
from hub_cards.console import console_entry_point
from hub_cards.output_lock import OutputInUseError, exclusive_output_lock
from hub_cards.safe_paths import PathOutsideDatasetError, resolve_inside
from hub_cards.training_settings import read_training_settings, save_training_arguments


def test_training_arguments_are_saved_as_json_without_credentials_and_the_pickle_is_removed(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), hub_token="hf_topsecret", seed=3, report_to="none")
    torch.save(args, tmp_path / "training_args.bin")  # what Trainer._save leaves
    save_training_arguments(args, tmp_path)
    assert not (tmp_path / "training_args.bin").exists()
    text = (tmp_path / "training_args.json").read_text()
    assert "hf_topsecret" not in text and "hub_token" not in text
    assert read_training_settings(str(tmp_path / "training_args.json"))["seed"] == 3


def test_a_read_only_destination_is_named_by_its_real_name(tmp_path, monkeypatch):
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(kwargs.get("dir")) + "/.x.tmp")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    with pytest.raises(PermissionError, match=r"cannot write '.*metrics\.json': its folder .* is not writable") as info:
        write_json_atomically(tmp_path / "metrics.json", {"a": 1})
    assert ".tmp" not in str(info.value)
    with pytest.raises(PermissionError, match=r"cannot write folder '.*model'"):
        with atomic_directory(tmp_path / "model"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_a_second_job_on_a_locked_output_is_refused_naming_the_first(tmp_path):
    lock = tmp_path / "out.lock"
    with exclusive_output_lock(lock, what="output out"):
        with pytest.raises(OutputInUseError, match=rf"output out is in use by job pid {os.getpid()} on .* started"):
            with exclusive_output_lock(lock, what="output out"):
                pass
    with exclusive_output_lock(lock, what="output out"):  # released: the next job runs
        pass


@pytest.mark.parametrize("name", ["../x.png", "/etc/passwd", "a/../../x.png"])
def test_resolve_inside_refuses_names_that_leave_the_root(tmp_path, name):
    with pytest.raises(PathOutsideDatasetError, match=r"split\.json: entry 3 names path .* leaves the dataset folder"):
        resolve_inside(tmp_path, name, source="split.json", entry="entry 3")
    assert resolve_inside(tmp_path, "sub/../x.png", source="s", entry="e") == str(tmp_path / "x.png")


def test_console_prints_one_line_and_debug_reraises(capsys, monkeypatch):
    def bad():
        raise ValueError("data.json: entry 2: field 'caption' is null\nsecond line")

    monkeypatch.setattr(sys, "argv", ["x-eval"])
    with pytest.raises(SystemExit):
        console_entry_point(bad, "x-eval")()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "second line" in err
    monkeypatch.setattr(sys, "argv", ["x-eval", "--debug", "--flag"])
    seen = []
    with pytest.raises(ValueError, match="field 'caption' is null"):
        console_entry_point(lambda: (seen.append(list(sys.argv)), bad()), "x-eval")()
    assert seen == [["x-eval", "--flag"]]  # --debug is not passed on to the CLI's own parser
    monkeypatch.setattr(sys, "argv", ["x-eval"])
    monkeypatch.setenv("CLI_DEBUG", "1")
    with pytest.raises(ValueError):
        console_entry_point(bad, "x-eval")()


def test_json_report_writer_leaves_nothing_for_an_unserialisable_payload(tmp_path):
    with pytest.raises(TypeError):
        write_json_atomically(tmp_path / "m.json", {"x": object()})
    assert list(tmp_path.iterdir()) == []



def test_push_during_training_uploads_no_pickled_arguments(tmp_path, monkeypatch):
    # Trainer._push_from_checkpoint torch.saves the arguments (hub_token included) into the folder it uploads.
    import transformers.trainer as trainer_module
    from transformers import Trainer, TrainingArguments

    from hub_cards.trainer_cards import HubCardTrainerMixin

    class Pusher(HubCardTrainerMixin, Trainer):
        pass

    uploaded = {}

    class FakeApi:
        def upload_folder(self, folder_path, **kwargs):
            uploaded.setdefault("files", sorted(os.listdir(folder_path)))  # what the first upload would send


    monkeypatch.setattr(trainer_module, "hf_api", lambda: FakeApi(), raising=False)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, hub_token="secret-token",
                             push_to_hub=False, save_strategy="steps")
    trainer = Pusher(model=torch.nn.Linear(2, 2), args=args)
    trainer.hub_model_id, trainer.push_in_progress = "user/model", None
    checkpoint = tmp_path / "out" / "checkpoint-1"
    checkpoint.mkdir(parents=True)
    trainer._push_from_checkpoint(str(checkpoint))
    assert "training_args.bin" not in uploaded["files"] and "training_args.json" in uploaded["files"]
    assert "secret-token" not in (tmp_path / "out" / "training_args.json").read_text()
