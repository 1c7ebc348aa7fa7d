"""Captioning across processes (modeling_csmcir.sharding + the runner): the contiguous split is accelerate's, shards
merged equal one process's file byte for byte, a process that dies mid-way resumes with nothing captioned twice, a
rerun with another process count finishes the job; the caption engine interface (a fake engine, vLLM with a fake
``vllm`` module); the CLI writing into a folder that does not exist yet, and ``--merge_only``.

The real two-process launches (torchrun) are in tests/csmcir/test_multiprocess_launch.py."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from modeling_csmcir.captioning import (
    CaptionCache,
    ImageRecord,
    VLLMEngine,
    generate_mcot_captions,
    images_from_directory,
    load_captioning_pipeline,
    merge_caption_journals,
)
from modeling_csmcir.cli.caption import main as caption_main
from modeling_csmcir.data.caption_files import load_caption_entries
from modeling_csmcir.sharding import ProcessShard, current_process, journal_path, journal_paths, part_ranges, shard_range

sys.path.insert(0, str(Path(__file__).parent))
from tiny_vlm import build_tiny_llava  # noqa: E402

MAX_NEW_TOKENS = 4


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory) -> Path:
    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


@pytest.fixture(scope="module")
def pipe(vlm_dir):
    return load_captioning_pipeline(str(vlm_dir), device="cpu")


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    """Nine good images and one unreadable file (so skipped lists are merged too)."""
    root = tmp_path_factory.mktemp("gallery")
    for i in range(9):
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)).save(root / f"g{i:02d}.png")
    (root / "g04b.png").write_bytes(b"not an image")
    return root


def _run(pipe, images, out, shard=None, **kwargs):
    return generate_mcot_captions(pipe, images, out, batch_size=2, max_new_tokens=MAX_NEW_TOKENS,
                                  show_progress=False, shard=shard, **kwargs)


@pytest.fixture(scope="module")
def single_run(pipe, image_dir, tmp_path_factory) -> tuple[bytes, bytes]:
    """The caption file and skipped list one process writes for the gallery."""
    out = tmp_path_factory.mktemp("single") / "captions.json"
    report = _run(pipe, images_from_directory(image_dir), out)
    assert (report.total, report.captioned, len(report.skipped), report.merged) == (10, 9, 1, True)
    return out.read_bytes(), Path(f"{out}.skipped.json").read_bytes()


# ----------------------------------------------------------------------------------------------------- the split


@pytest.mark.parametrize("num_items", [0, 1, 5, 10, 11])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_shard_range_is_accelerates_split_and_covers_every_item_once(num_items, world_size):
    from accelerate import PartialState

    items = list(range(num_items))
    split = PartialState.split_between_processes.__wrapped__  # the generator behind the context manager
    blocks = []
    for rank in range(world_size):
        span = shard_range(num_items, rank, world_size)
        fake_state = SimpleNamespace(num_processes=world_size, process_index=rank)
        assert list(next(split(fake_state, items))) == items[span.start : span.stop]
        blocks.extend(span)
    assert blocks == items


def test_shard_and_part_arguments_are_checked():
    assert [list(r) for r in part_ranges(7, 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    with pytest.raises(ValueError, match=r"process index 2 is not in \[0, 2\)"):
        ProcessShard(rank=2, world_size=2)
    with pytest.raises(ValueError, match="pass both --process_index and --num_processes"):
        current_process(1, None)
    assert current_process(1, 3) == ProcessShard(rank=1, world_size=3, distributed=False)
    assert current_process() == ProcessShard()  # not launched: one process


# ----------------------------------------------------------------------------------------------------- merging


def test_two_shards_merged_equal_one_process_byte_for_byte(pipe, image_dir, tmp_path, single_run):
    images = images_from_directory(image_dir)
    out = tmp_path / "nested" / "captions.json"
    reports = [_run(pipe, images, out, ProcessShard(rank, 2)) for rank in (0, 1)]
    assert [r.total for r in reports] == [5, 5] and sum(r.captioned for r in reports) == 9
    assert not any(r.merged for r in reports) and not out.exists()  # independent jobs: the merge is separate
    assert [p.name for p in journal_paths(out)] == ["captions.json.partial.rank0.jsonl", "captions.json.partial.rank1.jsonl"]
    path, entries = merge_caption_journals(out)
    assert entries == 9 and path.read_bytes() == single_run[0]
    assert Path(f"{out}.skipped.json").read_bytes() == single_run[1]
    assert journal_paths(out) == [] and not list(out.parent.glob("*.rank*"))


def test_killed_process_resumes_without_captioning_twice(pipe, image_dir, tmp_path, single_run):
    images = images_from_directory(image_dir)
    out = tmp_path / "captions.json"

    class Killed(RuntimeError):
        pass

    def die_after_first_batch(batch_index, entries):
        if batch_index == 0:
            raise Killed

    _run(pipe, images, out, ProcessShard(0, 2))
    with pytest.raises(Killed):
        _run(pipe, images, out, ProcessShard(1, 2), on_batch_end=die_after_first_batch)
    first = set(CaptionCache(out).entries)
    assert len(first) == 5 + 1  # rank 0's five; rank 1's first batch: g04b (unreadable) and g05
    with journal_path(out, ProcessShard(1, 2)).open("a", encoding="utf-8") as f:
        f.write('{"g08": {"Final_Caption": "torn by the ki')  # what a SIGKILL mid-write leaves
    seen: list[str] = []
    again = [_run(pipe, images, out, ProcessShard(rank, 2), on_batch_end=lambda i, e: seen.extend(e)) for rank in (0, 1)]
    assert again[0].captioned == 0 and again[0].reused == 5
    assert again[1].reused == 1 and again[1].captioned == 3  # g04b is unreadable: tried again, skipped again
    assert not set(seen) & first and len(seen) == len(set(seen))
    merge_caption_journals(out)
    assert out.read_bytes() == single_run[0]
    assert Path(f"{out}.skipped.json").read_bytes() == single_run[1]


def test_rerun_with_another_process_count_finishes_the_job(pipe, image_dir, tmp_path, single_run):
    images = images_from_directory(image_dir)
    out = tmp_path / "captions.json"
    _run(pipe, images, out, ProcessShard(2, 3))  # one of three jobs finished, the others never ran
    done = set(CaptionCache(out).entries)
    seen: list[str] = []
    report = _run(pipe, images, out, on_batch_end=lambda i, e: seen.extend(e))  # then one process does the rest
    assert report.reused == len(done) == 3 and not set(seen) & done
    assert out.read_bytes() == single_run[0] and journal_paths(out) == []


# ----------------------------------------------------------------------------------------------------- engines


class FakeEngine:
    """A caption engine that answers each chat with valid MCoT JSON derived from the image's pixels."""

    processor = None

    def __init__(self):
        self.batches: list[int] = []

    def describe(self) -> str:
        return "fake"

    def check(self) -> None:
        pass

    def generate_answers(self, chats, *, max_new_tokens, generate_kwargs):
        assert generate_kwargs["do_sample"] is False and max_new_tokens == MAX_NEW_TOKENS
        self.batches.append(len(chats))
        answers = []
        for chat in chats:
            image = chat[-1]["content"][0]["image"]
            mean = float(np.asarray(image).mean())
            answers.append(json.dumps({"level_1_global": "g", "level_2_objects": "o", "level_3_attributes": "a",
                                       "Final_Caption": f"mean {mean:.3f}"}))
        return answers


def test_runner_uses_any_caption_engine(image_dir, tmp_path):
    images = [r for r in images_from_directory(image_dir) if r.name != "g04b"]
    engine = FakeEngine()
    out = tmp_path / "c.json"
    report = generate_mcot_captions(engine, images, out, batch_size=4, max_new_tokens=MAX_NEW_TOKENS, show_progress=False)
    assert engine.batches == [4, 4, 1] and report.fallbacks == 0 and report.generated_tokens == 0
    entries = load_caption_entries(out)
    expected = float(np.asarray(Image.open(image_dir / "g03.png").convert("RGB")).mean())
    assert entries["g03"]["Final_Caption"] == f"mean {expected:.3f}" and "fallback_reason" not in entries["g03"]


def test_vllm_engine_is_optional_and_drives_vllm_generate(vlm_dir, image_dir, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "vllm", None)  # not installed
    with pytest.raises(ValueError, match="--engine vllm needs vLLM"):
        VLLMEngine(str(vlm_dir))

    calls = {}

    class FakeLLM:
        def __init__(self, **kwargs):
            calls["init"] = kwargs

        def generate(self, prompts, sampling_params=None, use_tqdm=True):
            calls["prompts"], calls["params"] = prompts, sampling_params
            return [SimpleNamespace(outputs=[SimpleNamespace(text=f'{{"Final_Caption": "c{i}"}}')])
                    for i in range(len(prompts))]

    fake_vllm = types.ModuleType("vllm")
    fake_vllm.LLM = FakeLLM
    fake_vllm.SamplingParams = lambda **kw: kw
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    engine = VLLMEngine(str(vlm_dir), llm_kwargs={"gpu_memory_utilization": 0.5})
    assert calls["init"]["model"] == str(vlm_dir) and calls["init"]["limit_mm_per_prompt"] == {"image": 1}
    img = Image.new("RGB", (8, 8), "red")
    records = [ImageRecord(name=f"x{i}", load=lambda: img) for i in range(3)]
    out = tmp_path / "v.json"
    report = generate_mcot_captions(engine, records, out, batch_size=3, max_new_tokens=7, show_progress=False)
    assert report.captioned == 3 and calls["params"] == {"max_tokens": 7, "temperature": 0.0}
    first = calls["prompts"][0]
    assert first["multi_modal_data"]["image"] is img
    assert first["prompt"].startswith("user : <image> ") and first["prompt"].endswith("assistant : ")  # tiny template
    assert load_caption_entries(out)["x2"]["Final_Caption"] == "c2"
    # The CLI's --engine vllm builds the same engine.
    cli_out = tmp_path / "cli.json"
    report = caption_main(["--engine", "vllm", "--image_dir", str(image_dir), "--model_name_or_path", str(vlm_dir),
                           "--output_file", str(cli_out), "--max_new_tokens", "5", "--batch_size", "8"])
    assert report.captioned == 9 and calls["params"]["max_tokens"] == 5 and len(calls["prompts"]) == 2  # 8 + 2, 1 bad
    with pytest.raises(ValueError, match="--engine must be transformers or vllm"):
        caption_main(["--engine", "sglang", "--image_dir", str(image_dir), "--model_name_or_path", str(vlm_dir),
                      "--output_file", str(cli_out)])


# ----------------------------------------------------------------------------------------------------- the CLI


def test_cli_captions_into_a_folder_that_does_not_exist_yet(vlm_dir, image_dir, tmp_path, monkeypatch, capsys):
    """The README's command, with a relative --output_file in new nested folders (issue: journal opened first)."""
    monkeypatch.chdir(tmp_path)
    report = caption_main(["--image_dir", str(image_dir), "--model_name_or_path", str(vlm_dir), "--device", "cpu",
                           "--output_file", "captions/new/sub/cap.json", "--max_new_tokens", str(MAX_NEW_TOKENS)])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["captioned"], summary["skipped"], summary["merged"], summary["entries_in_file"]) == (9, 1, True, 9)
    assert report.output_file == Path("captions/new/sub/cap.json")
    assert len(load_caption_entries(tmp_path / "captions/new/sub/cap.json")) == 9
    assert sorted(p.name for p in (tmp_path / "captions/new/sub").iterdir()) == ["cap.json", "cap.json.skipped.json"]


def test_cli_independent_jobs_then_merge_only(vlm_dir, image_dir, tmp_path, capsys, single_run):
    out = tmp_path / "jobs" / "cap.json"
    argv = ["--image_dir", str(image_dir), "--model_name_or_path", str(vlm_dir), "--device", "cpu",
            "--output_file", str(out), "--max_new_tokens", str(MAX_NEW_TOKENS), "--batch_size", "2"]
    for rank in (1, 0):  # any order
        caption_main(argv + ["--process_index", str(rank), "--num_processes", "2"])
    assert not out.exists()
    caption_main(["--merge_only", "--output_file", str(out)])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {
        "output_file": str(out), "merged": True, "entries": 9}
    assert out.read_bytes() == single_run[0]
    with pytest.raises(ValueError, match="--process_index 2 is not in|process index 2 is not in"):
        caption_main(argv + ["--process_index", "2", "--num_processes", "2"])


def test_launched_processes_without_an_accelerator_ask_for_a_cpu_group(monkeypatch):
    """torchrun/accelerate set WORLD_SIZE; without a GPU, PartialState() would leave each process alone (rank 0 of 1),
    so the training CLIs set ACCELERATE_USE_CPU, which TrainingArguments turns into PartialState(cpu=True) (gloo)."""
    from hub_cards import launch

    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launch.use_cpu_processes_if_no_accelerator() is False and "ACCELERATE_USE_CPU" not in os.environ
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(launch, "has_accelerator", lambda: True)
    assert launch.use_cpu_processes_if_no_accelerator() is False  # a GPU machine: NCCL, nothing to change
    monkeypatch.setattr(launch, "has_accelerator", lambda: False)
    assert launch.use_cpu_processes_if_no_accelerator() is True and os.environ["ACCELERATE_USE_CPU"] == "true"
    with pytest.raises(ValueError, match="launched by torchrun or accelerate"):
        current_process(0, 2)  # explicit indexes contradict the launcher's
