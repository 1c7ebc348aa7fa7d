"""Specification tests for `CSMCIRTrainer`: bank negatives in the loss, resume exactness (straight vs stopped +
resumed, and after a hard kill), identical banks on two gloo processes, logging, checkpoint contents.

Run as a script (``python tests/test_csmcir_trainer.py worker OUT [max_steps]``) this file is also the worker the
kill and torchrun tests start in a child process.
"""

from __future__ import annotations

import json
import shutil
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from modeling_csmcir import CSMCIRModel
from modeling_csmcir.presets import preset_config, preset_processor
from modeling_csmcir.modeling_csmcir import csmcir_contrastive_loss
from modeling_csmcir.trainer_csmcir import MEMORY_BANK_NAME, CSMCIRTrainer, CSMCIRTrainingArguments

REPO = Path(__file__).resolve().parents[2]
NUM_TARGETS = 16
# Val Recall@10 points a 200-step run must gain over the untrained model (300 val queries, 360 gallery images).
MARGIN_R10 = 5.0


class ToyCIRDataset(torch.utils.data.Dataset):
    """Preprocessed composed queries over `NUM_TARGETS` random target images; ids repeat (replace-by-id runs)."""

    def __init__(self, size: int = 48, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.targets = torch.randn(NUM_TARGETS, 3, 32, 32, generator=generator)
        self.references = torch.randn(size, 3, 32, 32, generator=generator)
        self.texts = torch.randint(1, 100, (size, 6), generator=generator)
        self.target_of = torch.arange(size) % NUM_TARGETS

    def __len__(self) -> int:
        return len(self.references)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        target = int(self.target_of[index])
        return {
            "pixel_values": self.references[index],
            "input_ids": self.texts[index],
            "attention_mask": torch.ones(6, dtype=torch.long),
            "target_pixel_values": self.targets[target],
            "target_ids": torch.tensor(target),
        }

    def target_inputs(self, ids: list[int]) -> dict[str, torch.Tensor]:
        """Inputs of `get_target_features` for the given target ids (used by the bank refresh)."""
        return {"pixel_values": self.targets[torch.tensor(ids, dtype=torch.long)]}


def build_model() -> CSMCIRModel:
    torch.manual_seed(0)
    return CSMCIRModel(preset_config("tiny", vocab_size=100))


def build_args(output_dir: str | Path, max_steps: int, **overrides) -> CSMCIRTrainingArguments:
    settings = dict(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="steps",
        save_steps=3,
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        bank_size=12,
        bank_k_min=2,
        bank_k_max=8,
        bank_start_step=0,  # these tests check the bank from the first step (the default warms up for 50)
        bank_weight=1.0,
        bank_age_decay=5.0,
        bank_max_age=20,
        bank_refresh_every=2,
        bank_refresh_size=4,
    )
    settings.update(overrides)
    return CSMCIRTrainingArguments(**settings)


def train_losses(trainer: CSMCIRTrainer) -> dict[int, float]:
    return {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}


def run_training(output_dir, max_steps: int, resume: str | None = None, **overrides) -> CSMCIRTrainer:
    trainer = CSMCIRTrainer(
        model=build_model(), args=build_args(output_dir, max_steps, **overrides), train_dataset=ToyCIRDataset()
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def assert_same_bank(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert torch.equal(a["target_ids"], b["target_ids"])
    assert torch.equal(a["steps"], b["steps"])
    assert int(a["pointer"]) == int(b["pointer"])
    torch.testing.assert_close(a["embeddings"], b["embeddings"], rtol=1e-5, atol=1e-6)


class StopAt(__import__("transformers").TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


# ------------------------------------------------------------------------------------------------- tests


def test_bank_negatives_enter_the_loss_and_only_training_enqueues(tmp_path):
    trainer = CSMCIRTrainer(
        model=build_model(),
        args=build_args(tmp_path, 4, save_strategy="no", bank_refresh_every=0),
        train_dataset=ToyCIRDataset(),
    )
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    model, bank = trainer.model, trainer.memory_bank
    model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which this test bypasses
    trainer.training_step(model, batch)
    assert len(bank) == 4  # the training step enqueued the batch's 4 targets (after its backward)

    model.eval()
    with torch.no_grad():
        eval_loss = trainer.compute_loss(model, batch)
        plain = model(**batch).loss
    assert len(bank) == 4 and bank.num_enqueued == 4  # evaluation never enqueues
    torch.testing.assert_close(eval_loss, plain)  # ... and uses the in-batch loss only

    model.train()
    ids = (batch["target_ids"] + 5) % NUM_TARGETS  # other ids than the stored ones: nothing masked by id
    batch2 = dict(batch, target_ids=ids)
    torch.manual_seed(1)
    outputs = model(**batch2)
    extra = bank.negative_logits(outputs.query_embeds, model.logit_scale, ids, step=0)
    expected = csmcir_contrastive_loss(outputs.logits_per_query, extra, ids)
    torch.manual_seed(1)  # same dropout masks
    got = trainer.compute_loss(model, batch2)
    torch.testing.assert_close(got, expected)
    assert got > outputs.loss  # extra negatives only add to the denominator
    assert bank.last_selection.mean_k >= 2 and trainer._bank_log_sums["bank_loss_share"] > 0


def test_training_logs_bank_numbers_and_checkpoints_hold_the_bank(tmp_path):
    trainer = run_training(tmp_path, 6)
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 6
    last = logged[-1]
    for key in ("bank_size", "bank_mean_age", "bank_mean_k", "bank_loss_share"):
        assert key in last, key
    # The ring holds the last 12 enqueued rows, one per target id (a re-encoded id frees its older slot).
    ids = trainer.memory_bank.target_ids[trainer.memory_bank.occupied]
    assert last["bank_size"] == len(ids) == len(set(ids.tolist())) and 4 < len(ids) <= 12
    assert last["bank_mean_k"] >= 2 and 0 < last["bank_loss_share"] < 1
    for step in (3, 6):
        saved = load_file(str(tmp_path / f"checkpoint-{step}" / MEMORY_BANK_NAME))
        assert saved["embeddings"].shape == (12, 32)
    assert_same_bank(load_file(str(tmp_path / "checkpoint-6" / MEMORY_BANK_NAME)), trainer.memory_bank.state_dict())


def test_resume_reproduces_the_straight_run_losses_and_bank(tmp_path):
    straight = run_training(tmp_path / "straight", 6)

    first = CSMCIRTrainer(
        model=build_model(), args=build_args(tmp_path / "resumed", 6), train_dataset=ToyCIRDataset(),
        callbacks=[StopAt(3)],
    )
    first.train()
    assert first.state.global_step == 3 and (tmp_path / "resumed" / "checkpoint-3" / MEMORY_BANK_NAME).is_file()
    resumed = run_training(tmp_path / "resumed", 6, resume=str(tmp_path / "resumed" / "checkpoint-3"))

    expected, got = train_losses(straight), {**train_losses(first), **train_losses(resumed)}
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step
    assert_same_bank(resumed.memory_bank.state_dict(), straight.memory_bank.state_dict())


def test_resume_refuses_a_bank_of_another_size(tmp_path):
    run_training(tmp_path, 3)
    trainer = CSMCIRTrainer(model=build_model(), args=build_args(tmp_path, 6, bank_size=20), train_dataset=ToyCIRDataset())
    with pytest.raises(ValueError, match="capacity 12.*capacity 20"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))


def test_arguments_validate_bank_settings(tmp_path):
    with pytest.raises(ValueError, match="bank_strategy"):
        build_args(tmp_path, 1, bank_strategy="random")
    with pytest.raises(ValueError, match="bank_k_min"):
        build_args(tmp_path, 1, bank_k_min=9, bank_k_max=3)
    with pytest.raises(ValueError, match="bank_weight"):
        build_args(tmp_path, 1, bank_weight=0.0)
    assert build_args(tmp_path, 1, bank_weight=0.25).build_memory_bank(8).weight == 0.25
    with pytest.raises(ValueError, match="target_lookup"):
        CSMCIRTrainer(model=build_model(), args=build_args(tmp_path, 1), train_dataset=list(ToyCIRDataset()))


def latest_complete_checkpoint(output_dir: Path) -> Path | None:
    complete = [p for p in output_dir.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(complete, key=lambda p: int(p.name.split("-")[1]), default=None)


def test_killed_run_resumes_from_its_last_checkpoint_without_loss(tmp_path):
    killed_dir = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, __file__, "worker", str(killed_dir), "1000"], env=env, cwd=str(REPO),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            checkpoint = latest_complete_checkpoint(killed_dir) if killed_dir.exists() else None
            if checkpoint is not None and int(checkpoint.name.split("-")[1]) >= 6:
                break
            if child.poll() is not None:
                pytest.fail(f"worker exited early: {child.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)
        else:
            pytest.fail("worker wrote no checkpoint in time")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    checkpoint = latest_complete_checkpoint(killed_dir)
    step = int(checkpoint.name.split("-")[1])
    # The reference never stopped; constant LR makes max_steps irrelevant to the trajectory.
    straight = run_training(tmp_path / "straight", step + 2, save_strategy="no")
    resumed = run_training(killed_dir, step + 2, resume=str(checkpoint), save_strategy="no")
    expected, got = train_losses(straight), train_losses(resumed)
    # Steps up to the checkpoint come back from its trainer state; the two after it are recomputed.
    assert sorted(got) == list(range(1, step + 3))
    for s in got:
        assert got[s] == pytest.approx(expected[s], rel=1e-5, abs=1e-6), s
    assert_same_bank(resumed.memory_bank.state_dict(), straight.memory_bank.state_dict())


def test_two_gloo_processes_hold_identical_banks(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with socket.socket() as probe:  # torchrun's static rendezvous hangs with --master_port=0: pick a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", __file__,
               "worker", str(tmp_path), "5"]
    result = subprocess.run(command, env=env, cwd=str(REPO), capture_output=True, text=True, timeout=400)
    if result.returncode != 0 and WORKER_STALLED in result.stderr:
        # Seen once in CI at load ~5 (a rank stalled after its last step, before the Trainer's end-of-training
        # collectives); never reproduced alone or two at a time. The workers dump every thread's stack when they
        # stall, so a repeat shows where; one rerun from a clean folder separates that from a wrong result.
        warnings.warn(f"two-process run stalled; rerunning once. Stacks:\n{result.stderr[-6000:]}")
        shutil.rmtree(tmp_path)
        tmp_path.mkdir()
        result = subprocess.run(command, env=env, cwd=str(REPO), capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-6000:]
    banks = [load_file(str(tmp_path / f"bank_rank{rank}.safetensors")) for rank in (0, 1)]
    assert_same_bank(banks[0], banks[1])
    # Both ranks' targets went in: one rank alone enqueues at most 5 steps x 4 = 20 rows.
    assert 20 < int(banks[0]["num_enqueued"]) <= 40
    stored = banks[0]["target_ids"][banks[0]["target_ids"] >= 0]
    assert len(stored) >= 4 and len(set(stored.tolist())) == len(stored)
    assert json.loads((tmp_path / "world.json").read_text())["world_size"] == 2
    # The evaluator runs once, on the main process, and every rank gets its numbers.
    assert sorted(p.name for p in tmp_path.glob("evaluated_by_rank*")) == ["evaluated_by_rank0"]
    for rank in (0, 1):
        assert json.loads((tmp_path / f"metrics_rank{rank}.json").read_text()) == {"eval_recall_at_1": 40.0}


# ------------------------------------------------------------------------------------- learning (fast)


class NoisyCopyCIR(torch.utils.data.Dataset):
    """A fast learnable retrieval task: the reference is its target image under heavy noise, the text is noise too.

    Targets are encoded from the image alone (the asymmetric path), queries through the text pass, so an untrained
    model retrieves at chance; training has to align the two paths.
    """

    def __init__(self, targets: torch.Tensor, size: int, seed: int, noise: float = 0.5) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.targets = targets
        self.target_of = torch.randint(0, len(targets), (size,), generator=generator)
        self.references = targets[self.target_of] + noise * torch.randn(size, *targets.shape[1:], generator=generator)
        self.texts = torch.randint(1, 100, (size, 4), generator=generator)

    def __len__(self) -> int:
        return len(self.target_of)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        target = int(self.target_of[index])
        return {
            "pixel_values": self.references[index],
            "input_ids": self.texts[index],
            "attention_mask": torch.ones(4, dtype=torch.long),
            "target_pixel_values": self.targets[target],
            "target_ids": torch.tensor(target),
        }

    def target_inputs(self, ids: list[int]) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.targets[torch.tensor(ids, dtype=torch.long)]}


def noisy_copy_recall_at_1(model: CSMCIRModel, data: NoisyCopyCIR) -> float:
    model.eval()
    with torch.no_grad():
        gallery = model.get_target_features(pixel_values=data.targets)
        queries = model.get_query_features(
            pixel_values=data.references, input_ids=data.texts, attention_mask=torch.ones_like(data.texts)
        )
    return float(((queries @ gallery.T).argmax(dim=1) == data.target_of).float().mean())


@pytest.mark.parametrize("strategy", ["none", "fifo", "hard", "entropy"])
def test_short_training_improves_held_out_recall_for_each_strategy(strategy, tmp_path):
    """Fast stand-in for the synthetic-benchmark test below (slow): 150 steps, held-out queries, each strategy.

    The bank starts after a warm-up (as XBM does): while the random model's embeddings are still collapsed, stale
    bank negatives sit on top of the positive and cancel its pull (measured: no learning at all with the bank on
    from step 0). The temperature is frozen because Adam at 3e-3 drives the raw scalar to its clamp.
    """
    generator = torch.Generator().manual_seed(3)
    # Smooth 4x4 patterns upsampled to 32 px: distinct at the patch level, so a tiny ViT can tell them apart.
    targets = F.interpolate(torch.randn(24, 3, 4, 4, generator=generator), size=32, mode="nearest")
    train, held_out = NoisyCopyCIR(targets, 480, seed=0), NoisyCopyCIR(targets, 96, seed=1)
    torch.manual_seed(0)
    model = CSMCIRModel(preset_config("tiny", vocab_size=100, freeze_vision=False))
    before = noisy_copy_recall_at_1(model, held_out)
    args = build_args(
        tmp_path, 150, per_device_train_batch_size=24, learning_rate=3e-3, save_strategy="no", logging_steps=50,
        bank_strategy=strategy, bank_size=64, bank_k_min=2, bank_k_max=16, bank_refresh_every=10,
        bank_refresh_size=16, bank_start_step=75, freeze_temperature=True,
    )
    trainer = CSMCIRTrainer(model=model, args=args, train_dataset=train)
    trainer.train()
    after = noisy_copy_recall_at_1(model, held_out)
    if strategy != "none":
        assert trainer.state.log_history[-2]["bank_mean_k"] > 0  # the bank did serve negatives after warm-up
    assert before < 0.15  # chance is 1/24
    assert after > before + 0.3, (strategy, before, after)


# ------------------------------------------------------------------------ learning on the synthetic benchmark


@pytest.fixture(scope="module")
def synthetic_benchmark(tmp_path_factory):
    """A small, easy setting of `csmcir-synth` (2x2 grid, 1-2 objects, exact captions), pre-collated once."""
    from modeling_csmcir.data.collators import CIRCollator
    from modeling_csmcir.data.cirr import load_cirr
    from modeling_csmcir.data.synthetic import SyntheticCIRConfig, generate_synthetic_cir
    from modeling_csmcir.data.training_inputs import ReferenceIdCollator

    root = generate_synthetic_cir(SyntheticCIRConfig(
        output_dir=str(tmp_path_factory.mktemp("synthetic")), num_images=1200, image_size=32, grid_size=2,
        min_objects=1, max_objects=2, caption_error_rate=0.0, pairs_per_set=5, val_fraction=0.3, test_fraction=0.1,
    ))
    captions = lambda split: root / "target_captions" / f"captions.rc2.{split}.json"  # noqa: E731
    processor = preset_processor("tiny", image_size=32)
    train = load_cirr(root, "train", target_captions=captions("train"))
    # The collator csmcir-train uses: reference ids let the bank mask each query's own reference image.
    batch = ReferenceIdCollator(CIRCollator(processor), list(train["gallery"]["image_id"]))(list(train["queries"]))
    rows = [{key: value[i] for key, value in batch.items()} for i in range(len(train["queries"]))]
    return rows, load_cirr(root, "val", target_captions=captions("val")), processor


def val_recall(model, processor, val) -> dict[str, float]:
    from modeling_csmcir.evaluation.evaluator import evaluate_cir

    model.eval()
    return evaluate_cir(model, processor, val, "cirr", cache=None, show_progress=False).metrics


def synthetic_model(processor) -> CSMCIRModel:
    torch.manual_seed(0)
    config = preset_config("tiny", vocab_size=len(processor.tokenizer), image_size=32, freeze_vision=False)
    return CSMCIRModel(config)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["none", "fifo", "hard", "entropy"])
def test_short_training_improves_val_recall_on_the_synthetic_benchmark(strategy, synthetic_benchmark, tmp_path):
    rows, val, processor = synthetic_benchmark
    before = val_recall(synthetic_model(processor), processor, val)
    model = synthetic_model(processor)
    args = build_args(
        tmp_path, 200, per_device_train_batch_size=32, learning_rate=2e-3, warmup_steps=0.1,
        lr_scheduler_type="cosine", save_strategy="no", logging_steps=50, bank_strategy=strategy, bank_size=512,
        # the soft, short-lived bank of benchmarks/results/csmcir_bank_diagnosis.md (at weight 1 fifo barely learns)
        bank_k_min=4, bank_k_max=16, bank_weight=0.1, bank_age_decay=4.0, bank_max_age=8, bank_start_step=100,
        bank_refresh_every=0, freeze_temperature=True,
    )
    CSMCIRTrainer(model=model, args=args, train_dataset=rows).train()
    after = val_recall(model, processor, val)
    print(f"[{strategy}] val R@10 {before['recall_at_10']:.1f} -> {after['recall_at_10']:.1f}, "
          f"R@50 {before['recall_at_50']:.1f} -> {after['recall_at_50']:.1f}")
    assert after["recall_at_10"] >= before["recall_at_10"] + MARGIN_R10, (strategy, before, after)


def test_csmcir_train_cli_trains_saves_evaluates_and_resumes(tmp_path):
    from modeling_csmcir.data.synthetic import SyntheticCIRConfig, generate_synthetic_cir
    from modeling_csmcir.cli.train import main as train_main

    root = generate_synthetic_cir(SyntheticCIRConfig(
        output_dir=str(tmp_path / "data"), num_images=150, image_size=32, val_fraction=0.4, test_fraction=0.4
    ))
    out = tmp_path / "run"
    argv = [
        "--dataset", "cirr", "--data_dir", str(root), "--captions", str(root / "target_captions" / "captions.rc2.{split}.json"),
        "--config_name", "tiny-scratch", "--output_dir", str(out), "--per_device_train_batch_size", "4", "--save_steps", "2",
        "--report_to", "none", "--use_cpu", "--disable_tqdm", "true", "--bank_strategy", "entropy", "--bank_size", "32",
        "--bank_k_min", "2", "--bank_k_max", "8", "--bank_refresh_every", "2", "--bank_refresh_size", "4",
    ]
    first = train_main(argv + ["--max_steps", "2"])
    assert (out / "checkpoint-2" / MEMORY_BANK_NAME).is_file() and (out / "model.safetensors").is_file()
    assert first["train"]["train_loss"] > 0
    report = train_main(argv + ["--max_steps", "4", "--resume_from_checkpoint", "last", "--eval_split", "val"])
    assert (out / "checkpoint-4" / MEMORY_BANK_NAME).is_file()
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["after"] == report["after"] and 0 <= saved["after"]["recall_at_5"] <= 100
    assert set(saved["before"]) == set(saved["after"]) and "recall_subset_at_1" in saved["after"]
    # Hub-ready as it is, except for the Trainer checkpoints (pickled optimizer / RNG state), which are named.
    from hub_cards.hub_ready import hub_ready_problems

    problems = hub_ready_problems(out)
    assert [p.split(":")[0] for p in problems] == ["checkpoint-2/", "checkpoint-4/"], problems
    assert (out / "README.md").is_file() and (out / "composed_image_retrieval.py").is_file()
    card = (out / "README.md").read_text()
    assert f"value: {saved['after']['recall_at_5']}" in card and "`bank_strategy` | entropy" in card
    # A half-written later checkpoint (killed while saving) is skipped when resuming from "last".
    from hub_cards.checkpoints import latest_complete_checkpoint

    (out / "checkpoint-9").mkdir()
    assert latest_complete_checkpoint(str(out)) == str(out / "checkpoint-4")
    with pytest.raises(ValueError, match="exactly one of --config_name"):
        train_main(["--dataset", "cirr", "--data_dir", str(root), "--output_dir", str(out)])


#: faulthandler's header when a worker runs past its time limit (it then dumps every thread's stack and exits).
WORKER_STALLED = "Timeout (0:02:30)!"


def worker(output_dir: str, max_steps: int) -> None:
    """Train in this process (one rank under torchrun); save this rank's bank when done."""
    import faulthandler

    faulthandler.dump_traceback_later(150, exit=True)  # a stalled rank says where, instead of hanging the test
    trainer = run_training(output_dir, max_steps, dataloader_num_workers=0)
    rank = trainer.accelerator.process_index
    save_file(trainer.memory_bank.state_dict(), os.path.join(output_dir, f"bank_rank{rank}.safetensors"))

    def evaluator(model):  # records which rank ran it; the number is rank-dependent, so a rank that ran it shows
        Path(output_dir, f"evaluated_by_rank{rank}").touch()
        return {"recall_at_1": 40.0 + rank}

    trainer.evaluator = evaluator
    metrics = trainer.evaluate()
    recall = {"eval_recall_at_1": metrics["eval_recall_at_1"]}
    Path(output_dir, f"metrics_rank{rank}.json").write_text(json.dumps(recall))
    if rank == 0:
        Path(output_dir, "world.json").write_text(json.dumps({"world_size": trainer.accelerator.num_processes}))
    if torch.distributed.is_initialized():
        # Exiting with gloo's threads alive can abort the process ("terminate called without an active exception").
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__" and len(sys.argv) >= 3 and sys.argv[1] == "worker":
    torch.set_num_threads(1)
    worker(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 6)


def test_cached_collator_passes_reference_ids_so_the_bank_never_serves_a_query_its_reference():
    # Regression: the ablation's pre-processed-split collator gave no `reference_ids`, and on the synthetic
    # benchmark every reference image is also another query's target, so the bank served each query its own
    # reference (the image it is built from) as a hard negative.
    from types import SimpleNamespace

    from modeling_csmcir.cached_training import CachedCIRCollator

    n = 6
    split = SimpleNamespace(
        ref=torch.tensor([3, 4, 5]), tgt=torch.tensor([0, 1, 2]), pixel_values=torch.randn(n, 3, 32, 32),
        text_ids=torch.ones(3, 4, dtype=torch.long), text_mask=torch.ones(3, 4, dtype=torch.long),
        caption_ids=torch.ones(n, 4, dtype=torch.long), caption_mask=torch.ones(n, 4, dtype=torch.long),
    )
    batch = CachedCIRCollator(split)([{"row": 0}, {"row": 2}])
    assert batch["reference_ids"].tolist() == [3, 5] and batch["target_ids"].tolist() == [0, 2]

    from modeling_csmcir.memory_bank import MemoryBank

    bank = MemoryBank(capacity=8, dim=4, strategy="fifo", age_decay=None, max_age=None)
    bank.enqueue(F.normalize(torch.randn(n, 4), dim=-1), torch.arange(n), step=0)
    logits = bank.negative_logits(F.normalize(torch.randn(2, 4), dim=-1), 1.0, batch["target_ids"], 1,
                                  batch["reference_ids"])
    served = torch.isfinite(logits)
    assert not served[0, 3] and not served[1, 5] and not served[0, 0] and not served[1, 2]
    assert served[0, 5] and served[1, 3]
