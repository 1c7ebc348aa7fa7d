"""Progress bars stay out of logs (issue 17): a console script whose output goes to a file writes no tqdm updates
(before, the demo's log was one line of ``\\r`` updates), while the Trainer's loss lines still appear;
``CLI_PROGRESS_BARS=1`` brings the bars back, which also shows that the count below measures them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# A tqdm update: "NN%|" or "N/M [" (the counter and its elapsed time).
PROGRESS = re.compile(r"\d+%\||\d+/\d+ \[")


def _run_to_file(tmp_path: Path, module: str, argv: list[str], **env: str) -> str:
    log = tmp_path / "log.txt"
    code = f"import sys; sys.argv = {[module, *argv]!r}; from {module} import console_main; console_main()"
    with open(log, "w") as handle:   # stdout and stderr to a file: not a terminal
        result = subprocess.run([sys.executable, "-c", code], stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, **env}, timeout=300)
    text = log.read_text()
    assert result.returncode == 0, text[-3000:]
    return text


def _progress_updates(text: str) -> int:
    return sum(1 for piece in re.split(r"[\r\n]", text) if PROGRESS.search(piece))


def test_a_cli_writing_to_a_file_writes_no_progress_bar_updates(tmp_path):
    argv = ["--output_dir", str(tmp_path / "synth"), "--num_images", "60"]
    quiet = _run_to_file(tmp_path, "modeling_csmcir.cli.synth", argv)
    assert _progress_updates(quiet) == 0 and "\r" not in quiet, quiet[-2000:]



def test_the_count_sees_bars_when_they_are_kept(tmp_path):
    # A console script with one tqdm bar, through the same entry wrapper: bars on (CLI_PROGRESS_BARS=1) are counted,
    # so the zero above is a measurement; bars off leave one line per log message only.
    log = tmp_path / "log.txt"
    code = ("import time, tqdm; from hub_cards.console import console_entry_point\n"
            "def main():\n    for _ in tqdm.tqdm(range(20), mininterval=0):\n        time.sleep(0.002)\n    print('done')\n"
            "console_entry_point(main, 'demo-bar')()\n")
    counts = {}
    for setting in ("1", "0"):
        with open(log, "w") as handle:
            subprocess.run([sys.executable, "-c", code], stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT,
                           env={**os.environ, "CLI_PROGRESS_BARS": setting}, timeout=120, check=True)
        counts[setting] = _progress_updates(log.read_text())
        assert "done" in log.read_text()
    assert counts["1"] >= 20 and counts["0"] == 0, counts


def test_training_to_a_file_keeps_its_loss_lines_and_drops_the_bars(tmp_path):
    from modeling_mmaps.data.synthetic import generate_synthetic_products

    generate_synthetic_products(tmp_path / "data", num_products=24, seed=3)
    text = _run_to_file(tmp_path, "modeling_mmaps.cli.train", [
        "--data_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out"), "--config_name", "tiny-scratch",
        "--max_steps", "4", "--logging_steps", "1", "--per_device_train_batch_size", "4", "--report_to", "none",
        "--use_cpu", "--save_strategy", "no", "--generation_num_beams", "1", "--generation_max_length", "8",
        "--attribute_top_n", "10", "--eval_split", "",
    ])
    assert _progress_updates(text) == 0 and "\r" not in text, text[-2000:]
    assert len(re.findall(r"'loss': ", text)) == 4, text[-2000:]   # one Trainer log line per step, as asked


@pytest.mark.parametrize("tty", [True, False])
def test_bars_are_only_switched_off_away_from_a_terminal(tty, monkeypatch):
    from hub_cards import console

    class Stream:
        def isatty(self) -> bool:
            return tty

    monkeypatch.delenv("CLI_PROGRESS_BARS", raising=False)
    if tty:
        assert console.quiet_progress_bars_unless_terminal(Stream()) is False
    else:
        # Checked in a child process: switching bars off is process-wide.
        code = ("import io, tqdm; from hub_cards.console import quiet_progress_bars_unless_terminal as q;"
                "print(q(io.StringIO()), tqdm.tqdm(range(3)).disable)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert out.stdout.split() == ["True", "True"], out.stderr
