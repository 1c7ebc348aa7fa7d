"""MMAPSTrainer's evaluation under several processes: one prediction per product, in dataset order.

``Seq2SeqTrainer.evaluate``/``predict`` gather with ``accelerator.gather``, which keeps the rows accelerate's
``even_batches`` repeats to fill every process's last batch (2 processes x 8 gave 16 predictions for 12 products);
:meth:`MMAPSTrainer.evaluation_loop` gathers with ``gather_for_metrics``, which drops them.

* fast: in one process, the generated predictions go through ``gather_for_metrics`` (``gather`` is kept only for
  ``num_return_sequences > 1``, whose rows are not one per product);
* slow (a real ``torchrun --nproc_per_node 2`` launch, two fresh interpreters): mmaps-train's dev metrics equal a
  one-process ``mmaps-eval`` of the saved model.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from modeling_mmaps import MMAPSTrainer, MMAPSTrainingArguments
from modeling_mmaps.data.attributes import build_attribute_vocabulary, merge_attribute_vocabularies
from modeling_mmaps.data.cepsum import MMAPSDataCollator, load_cepsum_split
from modeling_mmaps.data.synthetic import generate_synthetic_products
from modeling_mmaps.presets import character_vocabulary, preset_model

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def products(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("mmaps_ddp") / "data"
    generate_synthetic_products(out, num_products=60, seed=0)   # 48 train, 6 dev, 6 test products
    return str(out)


def _recording(function, calls: list[str], name: str):
    def wrapper(*args, **kwargs):
        calls.append(name)
        return function(*args, **kwargs)
    return wrapper


def test_generated_predictions_are_gathered_for_metrics(products, tmp_path):
    train = load_cepsum_split(products, "train", explode_references=True)
    dev = load_cepsum_split(products, "dev")
    vocabulary = merge_attribute_vocabularies(build_attribute_vocabulary({"all": list(train["tgt"])}, 20))
    model, processor = preset_model("tiny-scratch", tokens=character_vocabulary([*train["src"], *dev["src"]]),
                                    attribute_vocabulary=vocabulary, visual_input="images")
    args = MMAPSTrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=4, report_to="none",
                                  use_cpu=True, generation_num_beams=1, generation_max_length=6, disable_tqdm=True)
    trainer = MMAPSTrainer(model=model, args=args, eval_dataset=dev, processing_class=processor,
                           data_collator=MMAPSDataCollator(processor, visual_input="images"))
    calls: list[str] = []
    trainer.accelerator.gather = _recording(trainer.accelerator.gather, calls, "gather")
    trainer.accelerator.gather_for_metrics = _recording(trainer.accelerator.gather_for_metrics, calls, "for_metrics")

    metrics = trainer.evaluate()
    # 2 batches x (loss, generated ids, labels), each through gather_for_metrics (which calls gather inside it).
    assert calls.count("for_metrics") == 6 and calls.count("gather") == 6
    assert "eval_rouge2" in metrics   # scored: compute_metrics checks one prediction per product's reference list

    # Several sequences per product: the rows are not the dataset's, so Seq2SeqTrainer's plain gather stays.
    trainer._default_metrics, trainer.compute_metrics = False, None
    calls.clear()
    output = trainer.predict(dev, num_beams=2, num_return_sequences=2)
    assert output.predictions.shape[0] == 2 * len(dev)
    assert "for_metrics" not in calls and calls.count("gather") == 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow   # two fresh interpreters + 80 training steps + evaluation: ~3-8 min on two shared cores (459 s at load ~10)
def test_two_process_dev_metrics_equal_one_process_evaluation(products, tmp_path):
    from modeling_mmaps.cli.eval import main as eval_main

    out = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    env.pop("WORLD_SIZE", None)
    # 80 steps: enough for summaries that differ per product (non-zero ROUGE), so order and count both matter.
    # Eval batch 4 over 6 products: process 0 gets rows 0-3, process 1 rows 4, 5 and two repeats to drop.
    result = subprocess.run(
        [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(_free_port()),
         "-m", "modeling_mmaps.cli.train", "--data_dir", products, "--config_name", "tiny-scratch",
         "--output_dir", str(out), "--max_steps", "80", "--per_device_train_batch_size", "8",
         "--learning_rate", "3e-3", "--warmup_steps", "0.05", "--save_strategy", "steps", "--save_steps", "80",
         "--per_device_eval_batch_size", "4", "--generation_num_beams", "3", "--generation_max_length", "32",
         "--report_to", "none", "--dataloader_num_workers", "0"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=560,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (out / "checkpoint-80").glob("rng_state_*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"]
    two = json.loads((out / "eval_results.json").read_text())["metrics"]

    # generation_max_length counts the decoder start token, so 32 there is 31 new tokens here.
    one = eval_main(["--data_dir", products, "--model_name_or_path", str(out), "--split", "dev",
                     "--output_dir", str(tmp_path / "eval"), "--num_beams", "3", "--max_new_tokens", "31"])
    scores = ("rouge1", "rouge2", "rougeL", "bleu1", "bleu2", "bleu3", "bleu4",
              "attribute_precision", "attribute_recall", "attribute_f1", "gen_len")
    assert {k: two[f"eval_{k}"] for k in scores} == {k: one[k] for k in scores}
    assert one["rouge2"] > 0 and one["gen_len"] > 0
