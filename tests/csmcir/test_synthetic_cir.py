"""The embedded synthetic CIR benchmark: CIRR layout read by the real loader, hard img_sets, caption noise,
determinism, the CLI, and (slow) that a tiny trained model needs both image and text."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
import sys
from collections import Counter
from pathlib import Path

import pytest

from modeling_csmcir.cli.synth import main
from modeling_csmcir.data.caption_files import load_caption_entries
from modeling_csmcir.data.cirr import load_cirr
from modeling_csmcir.data.synthetic import (
    Edit,
    SceneObject,
    SyntheticCIRConfig,
    apply_edit,
    describe_edit,
    describe_scene,
    generate_synthetic_cir,
    random_scene,
)


def _config(tmp_path: Path, **overrides) -> SyntheticCIRConfig:
    settings = dict(output_dir=str(tmp_path), num_images=180, seed=3, val_fraction=0.2, test_fraction=0.2)
    settings.update(overrides)
    return SyntheticCIRConfig(**settings)


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    return generate_synthetic_cir(_config(tmp_path_factory.mktemp("synth")))


def _file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_writes_cirr_rc2_layout_that_the_real_loader_reads(bench):
    for name in ("cap.rc2.train.json", "cap.rc2.val.json", "cap.rc2.test1.json"):
        assert (bench / "captions" / name).is_file()
    splits = json.loads((bench / "metadata.json").read_text())["splits"]
    assert splits == {"train": {"images": 108, "pairs": 36, "img_sets": 18}, "val": {"images": 36, "pairs": 12, "img_sets": 6},
                      "test1": {"images": 36, "pairs": 12, "img_sets": 6}}
    val = load_cirr(bench, "val", target_captions=bench / "target_captions" / "captions.rc2.val.json")
    assert len(val["gallery"]) == 36 and len(val["queries"]) == 12
    assert val["gallery"][0]["image"].size == (64, 64)
    entry = json.loads((bench / "captions" / "cap.rc2.val.json").read_text())[0]
    assert set(entry) == {"pairid", "reference", "target_hard", "target_soft", "caption", "img_set"}
    assert set(entry["img_set"]) == {"id", "members", "reference_rank"}
    relpath = json.loads((bench / "image_splits" / "split.rc2.val.json").read_text())[entry["reference"]]
    assert relpath.startswith("./dev/") and relpath.endswith(".png")
    test_entry = json.loads((bench / "captions" / "cap.rc2.test1.json").read_text())[0]
    assert set(test_entry) == {"pairid", "reference", "caption", "img_set"}  # targets hidden, as in CIRR
    hidden = json.loads((bench / "ground_truth" / "cap.rc2.test1.json").read_text())[0]
    assert hidden["pairid"] == test_entry["pairid"] and hidden["target_hard"] in test_entry["img_set"]["members"]


def _difference(a: list[dict], b: list[dict]) -> int:
    """Number of single-attribute changes between two scenes that have the same number of objects."""
    by_cell_a = {o["cell"]: o for o in a}
    by_cell_b = {o["cell"]: o for o in b}
    if set(by_cell_a) == set(by_cell_b):
        return sum(k != "cell" and by_cell_a[c][k] != by_cell_b[c][k] for c in by_cell_a for k in by_cell_a[c])
    # one object moved: the same multiset of (shape, colour, size)
    key = lambda o: (o["shape"], o["color"], o["size"])  # noqa: E731
    return 1 if sorted(map(key, a)) == sorted(map(key, b)) and len(set(by_cell_a) ^ set(by_cell_b)) == 2 else 99


def test_img_sets_hold_reference_target_and_four_one_attribute_distractors(bench):
    scenes = json.loads((bench / "scenes" / "scenes.rc2.train.json").read_text())["images"]
    entries = json.loads((bench / "captions" / "cap.rc2.train.json").read_text())
    first_pairs = {}
    for e in entries:
        first_pairs.setdefault(e["img_set"]["id"], e)  # the first pair of a set is reference -> target
    for entry in first_pairs.values():
        members = entry["img_set"]["members"]
        assert len(members) == 6 == len(set(members))
        assert entry["reference"] in members and entry["target_hard"] in members
        assert members[entry["img_set"]["reference_rank"]] == entry["reference"]
        distractors = [m for m in members if m not in (entry["reference"], entry["target_hard"])]
        target = scenes[entry["target_hard"]]
        assert [_difference(target, scenes[d]) for d in distractors] == [1, 1, 1, 1]
    # every image is a distinct scene, so each query has exactly one right answer
    canon = [json.dumps(sorted(map(json.dumps, s))) for s in scenes.values()]
    assert len(set(canon)) == len(canon)


def test_all_edit_kinds_and_several_phrasings_occur(tmp_path):
    root = generate_synthetic_cir(_config(tmp_path, num_images=600, pairs_per_set=1))
    edits = json.loads((root / "scenes" / "scenes.rc2.train.json").read_text())["pair_edits"]
    assert set(Counter(edits.values())) == {"color", "shape", "size", "add", "remove", "move"}
    rng = random.Random(0)
    scene = (SceneObject(0, "circle", "red", "small"), SceneObject(4, "square", "blue", "large"))
    phrasings = {describe_edit(scene, Edit("color", 0, "green"), rng, 3) for _ in range(60)}
    assert len(phrasings) >= 6 and all("green" in p for p in phrasings)
    assert {describe_edit(scene, Edit("remove", 4), rng, 3) for _ in range(40)} >= {"remove the blue square", "delete the square"}


def test_edits_change_exactly_what_the_text_says():
    scene = (SceneObject(0, "circle", "red", "small"), SceneObject(4, "square", "blue", "large"))
    assert apply_edit(scene, Edit("move", 0, 8)) == (SceneObject(4, "square", "blue", "large"), SceneObject(8, "circle", "red", "small"))
    assert apply_edit(scene, Edit("size", 4, "small"))[1].size == "small"
    assert len(apply_edit(scene, Edit("remove", 0))) == 1
    assert len(apply_edit(scene, Edit("add", 2, SceneObject(2, "cross", "green", "small")))) == 3


def test_caption_error_rate_controls_wrong_or_missing_attributes():
    config = SyntheticCIRConfig(output_dir="unused")
    rng = random.Random(0)
    scenes = [random_scene(rng, config) for _ in range(300)]

    def error_fraction(rate: float) -> float:
        errors = total = 0
        caption_rng = random.Random(1)
        for scene in scenes:
            caption = describe_scene(scene, caption_rng, rate, 3)["Final_Caption"]
            for obj, part in zip(scene, caption.split(": ", 1)[1].split(", ")):
                words = part.split()
                total += 2
                errors += (obj.size not in words) + (obj.color not in words)  # a wrong value is never the true one
        return errors / total

    assert error_fraction(0.0) == 0.0
    assert 0.25 < error_fraction(0.3) < 0.35  # each of size/colour wrong or missing with p = 0.3
    clean = describe_scene(scenes[0], random.Random(0), 0.0, 3)
    assert set(clean) == {"level_1_global", "level_2_objects", "level_3_attributes", "Final_Caption"}
    assert all(o.color in clean["level_3_attributes"] and o.shape in clean["level_2_objects"] for o in scenes[0])


def test_caption_files_are_in_the_authors_format(bench):
    entries = load_caption_entries(bench / "target_captions" / "captions.rc2.train.json")
    names = json.loads((bench / "image_splits" / "split.rc2.train.json").read_text())
    assert set(entries) == set(names)
    assert all(set(e) == {"level_1_global", "level_2_objects", "level_3_attributes", "Final_Caption"} for e in entries.values())


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    a = _file_hashes(generate_synthetic_cir(_config(tmp_path / "a", num_images=60)))
    b = _file_hashes(generate_synthetic_cir(_config(tmp_path / "b", num_images=60)))
    c = _file_hashes(generate_synthetic_cir(_config(tmp_path / "c", num_images=60, seed=4)))
    assert a == b
    assert a["captions/cap.rc2.train.json"] != c["captions/cap.rc2.train.json"]


def test_cli_writes_the_benchmark(tmp_path):
    root = main(["--output_dir", str(tmp_path), "--num_images", "36", "--seed", "1", "--image_size", "32"])
    metadata = json.loads((root / "metadata.json").read_text())
    assert metadata["config"]["seed"] == 1 and metadata["layout"] == "cirr-rc2"
    assert load_cirr(root, "train")["gallery"][0]["image"].size == (32, 32)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(num_images=10), "num_images must be at least 18"),
        (dict(min_objects=3, max_objects=2), "min_objects <= max_objects"),
        (dict(caption_error_rate=1.5), "caption_error_rate"),
        (dict(pairs_per_set=6), "pairs_per_set"),
        (dict(max_objects=9), "fit the 3x3 grid"),
    ],
)
def test_bad_config_is_rejected(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        _config(tmp_path, **overrides)


@pytest.mark.slow
def test_composed_query_beats_image_only_and_text_only(tmp_path, monkeypatch):
    """The issue's learning requirement: the benchmark script's symmetric run (about 5 minutes on one CPU thread)."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "synthetic_cir_difficulty.py"
    spec = importlib.util.spec_from_file_location("synthetic_cir_difficulty", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    report = module.main(
        ["--variants", "symmetric", "--output_file", str(tmp_path / "difficulty.md")]  # defaults: 6000 images, 20 epochs
    )
    results = report["variants"]["symmetric"]["results"]
    composed, image_only, text_only = results["composed"], results["image only"], results["text only"]
    # measured (benchmarks/results/synthetic_cir_difficulty.md): avg 53.3 composed vs 37.2 image only vs 10.0 text only
    assert composed["avg"] > image_only["avg"] + 8 and composed["avg"] > text_only["avg"] + 20
    assert composed["recall_subset_at_1"] > image_only["recall_subset_at_1"] + 10
    assert 5 < composed["recall_at_1"] < 80
