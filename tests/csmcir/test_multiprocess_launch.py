"""Real two-process launches on CPU (gloo): ``torchrun --nproc_per_node 2`` and ``accelerate launch`` with the shipped
config (examples/accelerate/two_processes.yaml).

* csmcir-train: both ranks train one model (the checkpoint holds rng_state_0 and rng_state_1, the memory bank holds
  the gathered targets of both ranks' batches), and the result is saved once.
* csmcir-caption + csmcir-index in one launch (torchrun), with process 1 SIGKILLed mid-way through captioning; the
  rerun (accelerate launch) captions only what no journal holds, and its caption file and index equal a single
  process's exactly.

Each launch starts two fresh interpreters (torch + transformers), ~20-30 s on two shared cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures import tiny_csmcir, tiny_processor
from modeling_csmcir.captioning import CaptionCache, generate_mcot_captions, images_from_directory, load_captioning_pipeline
from pipelines.gallery_index import GalleryIndex

sys.path.insert(0, str(Path(__file__).parent))
from tiny_vlm import build_tiny_llava  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ACCELERATE_CONFIG = ROOT / "examples" / "accelerate" / "two_processes.yaml"
PER_DEVICE_BATCH = 4
_PORT = [29600 + os.getpid() % 200]


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    env.pop("WORLD_SIZE", None)
    return env


def _torchrun(*args: str, cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    _PORT[0] += 1
    return subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(_PORT[0]), *args],
                          cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _accelerate(*args: str, cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    _PORT[0] += 1
    return subprocess.run([str(BIN / "accelerate"), "launch", "--config_file", str(ACCELERATE_CONFIG),
                           "--main_process_port", str(_PORT[0]), *args],
                          cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def cir_data(tmp_path_factory) -> Path:
    from modeling_csmcir.cli.synth import main as synth

    root = tmp_path_factory.mktemp("synth")
    synth(["--output_dir", str(root), "--num_images", "40", "--seed", "0"])
    return root


def _train_flags(data: Path, out: Path) -> list[str]:
    return ["--dataset", "cirr", "--data_dir", str(data), "--config_name", "tiny-scratch", "--output_dir", str(out),
            "--max_steps", "2", "--per_device_train_batch_size", str(PER_DEVICE_BATCH), "--bank_strategy", "entropy",
            "--bank_size", "64", "--bank_start_step", "0", "--save_strategy", "steps", "--save_steps", "2",
            "--logging_steps", "1", "--report_to", "none", "--dataloader_num_workers", "0"]


def _check_two_rank_training(result: subprocess.CompletedProcess, out: Path) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    # Without a CPU process group each process trains alone and transformers warns about it.
    assert "parallel_mode != ParallelMode.DISTRIBUTED" not in result.stderr
    checkpoint = out / "checkpoint-2"
    assert sorted(p.name for p in checkpoint.glob("rng_state_*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"]
    first_log = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"][0]
    # The bank stores the targets of both ranks' batches (all-gathered), not one rank's.
    assert first_log["bank_size"] == 2 * PER_DEVICE_BATCH
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()
    assert not (out / ".csmcir-train.lock").exists()


@pytest.mark.slow  # the accelerate launch below covers the same training path by default (~35 s per launch)
def test_torchrun_two_cpu_processes_train_one_model(cir_data, tmp_path):
    out = tmp_path / "run"
    result = _torchrun("-m", "modeling_csmcir.cli.train", *_train_flags(cir_data, out), cwd=tmp_path)
    _check_two_rank_training(result, out)


def test_accelerate_launch_with_the_shipped_config_trains_on_two_cpu_processes(cir_data, tmp_path):
    out = tmp_path / "run"
    result = _accelerate("-m", "modeling_csmcir.cli.train", *_train_flags(cir_data, out), cwd=tmp_path)
    _check_two_rank_training(result, out)


# ----------------------------------------------------------------------------------------------------- caption + index

DRIVER = textwrap.dedent(
    """
    import json, os, signal, sys
    import modeling_csmcir.captioning.runner as runner
    from modeling_csmcir.cli import caption, index

    rank = int(os.environ["RANK"])
    kill_after = os.environ.get("KILL_RANK1_AFTER_BATCH")
    if kill_after is not None and rank == 1:
        real = runner.generate_mcot_captions
        def killing(*args, **kwargs):
            def hook(batch_index, entries):
                if batch_index == int(kill_after):
                    os.kill(os.getpid(), signal.SIGKILL)  # no cleanup of any kind
            return real(*args, on_batch_end=hook, **kwargs)
        runner.generate_mcot_captions = killing
    vlm, images, model, out = sys.argv[1:5]
    report = caption.main(["--image_dir", images, "--model_name_or_path", vlm, "--device", "cpu", "--output_file",
                           out + "/captions.json", "--max_new_tokens", "4", "--batch_size", "2"])
    summary = index.main(["--image_dir", images, "--captions", out + "/captions.json", "--model_name_or_path", model,
                          "--output_dir", out + "/index", "--batch_size", "2", "--part_size", "2"])
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump({"captioned": report.captioned, "reused": report.reused, "total": report.total,
                   "merged": report.merged, "index": summary}, f)
    """
)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mp_gallery")
    images = root / "images"
    images.mkdir()
    for i in range(9):
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(images / f"g{i:02d}.png")
    model = root / "csmcir"
    processor = tiny_processor()
    tiny_csmcir(processor, seed=0).save_pretrained(model)
    processor.save_pretrained(model)
    return {"images": images, "vlm": build_tiny_llava(root / "vlm"), "model": model}


def test_two_processes_caption_and_index_killed_and_rerun_equal_one_process(gallery, tmp_path):
    from modeling_csmcir.cli import index as index_cli

    # One process, in this interpreter: the reference files.
    single = tmp_path / "single"
    pipe = load_captioning_pipeline(str(gallery["vlm"]), device="cpu")
    generate_mcot_captions(pipe, images_from_directory(gallery["images"]), single / "captions.json", batch_size=2,
                           max_new_tokens=4, show_progress=False)
    index_cli.main(["--image_dir", str(gallery["images"]), "--captions", str(single / "captions.json"),
                    "--model_name_or_path", str(gallery["model"]), "--device", "cpu", "--output_dir",
                    str(single / "index"), "--batch_size", "2", "--part_size", "2"])

    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out = tmp_path / "multi"
    out.mkdir()
    args = [str(driver), str(gallery["vlm"]), str(gallery["images"]), str(gallery["model"]), str(out)]
    env_kill = dict(os.environ)
    try:
        os.environ["KILL_RANK1_AFTER_BATCH"] = "0"
        killed = _torchrun(*args, cwd=tmp_path)
    finally:
        os.environ.clear()
        os.environ.update(env_kill)
    assert killed.returncode != 0 and "Signal 9" in killed.stderr + killed.stdout, killed.stderr[-3000:]
    assert not (out / "captions.json").exists()  # never merged: only the journals hold the work
    done = set(CaptionCache(out / "captions.json").entries)
    assert 2 <= len(done) < 9  # rank 1's first batch at least, not everything

    # The rerun goes through accelerate's launcher with the shipped config: the same two-process group.
    rerun = _accelerate(*args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["total"] for r in reports] == [5, 4]  # accelerate's split of the 9 images
    assert sum(r["captioned"] for r in reports) == 9 - len(done)  # nothing captioned twice
    assert [r["merged"] for r in reports] == [True, False] and reports[0]["index"]["merged"]
    assert (out / "captions.json").read_bytes() == (single / "captions.json").read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["captions.json", "index", "rank0.json", "rank1.json"]
    multi_index, single_index = GalleryIndex.load(out / "index"), GalleryIndex.load(single / "index")
    assert multi_index.ids == single_index.ids and len(multi_index) == 9
    assert torch.equal(multi_index.embeddings, single_index.embeddings)
    assert multi_index.model_identity == single_index.model_identity
