"""The helpers both packages' CLIs share: console-script entry points and ``--resume_from_checkpoint last``."""

from __future__ import annotations

import pytest

from hub_cards.checkpoints import latest_complete_checkpoint, resolve_resume_checkpoint
from hub_cards.console import console_entry_point


def test_console_entry_point_discards_the_result_and_reports_bad_input_in_one_line(capsys):
    assert console_entry_point(lambda: {"a": 1}, "x-train")() is None

    def bad() -> None:
        raise FileNotFoundError("data_dir: /nowhere does not exist")

    with pytest.raises(SystemExit) as exit_info:
        console_entry_point(bad, "x-train")()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "x-train: error: data_dir: /nowhere does not exist\n"


def test_last_means_the_latest_checkpoint_that_finished_saving(tmp_path):
    for step, complete in ((5, True), (20, True), (30, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-x").mkdir()
    assert latest_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-20")
    assert resolve_resume_checkpoint("last", tmp_path) == str(tmp_path / "checkpoint-20")
    assert resolve_resume_checkpoint(True, tmp_path) == str(tmp_path / "checkpoint-20")
    assert resolve_resume_checkpoint("some/path", tmp_path) == "some/path"
    assert resolve_resume_checkpoint(None, tmp_path) is None
    assert resolve_resume_checkpoint("last", tmp_path / "missing") is None
