"""Loaders of FashionIQ, CIRR, CIRCO and Shoes on tiny fixtures written in the official JSON structures, the
FashionIQ caption rules, target-caption joins, the collator, and the bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from modeling_csmcir.data import (
    CIRCollator,
    CIRGalleryCollator,
    fashioniq_eval_caption,
    fashioniq_training_caption_variants,
    load_cir_dataset,
    load_circo,
    load_cirr,
    load_fashioniq,
    load_shoes,
)
from modeling_csmcir.presets import preset_processor


def _image(path: Path, color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path)


def _json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def make_fashioniq(root: Path) -> Path:
    names = ["B001", "B002", "B003", "B004"]
    for i, n in enumerate(names):
        _image(root / "images" / f"{n}.png", (60 * i, 0, 0))
    _json(root / "image_splits" / "split.dress.val.json", names)
    _json(root / "image_splits" / "split.dress.train.json", names)
    triplets = [
        {"target": "B002", "candidate": "B001", "captions": ["is red.", "has long sleeves?"]},
        {"target": "B004", "candidate": "B003", "captions": ["shorter", " is blue "]},
    ]
    _json(root / "captions" / "cap.dress.val.json", triplets)
    _json(root / "captions" / "cap.dress.train.json", triplets)
    return root


def make_cirr(root: Path) -> Path:
    names = [f"dev-1-{i}-img{i}" for i in range(6)] + ["dev-2-0-img0"]
    for i, n in enumerate(names):
        _image(root / "dev" / "1" / f"{n}.png", (0, 30 * i, 0))
    _json(root / "image_splits" / "split.rc2.val.json", {n: f"./dev/1/{n}.png" for n in names})
    members = names[:6]
    _json(
        root / "captions" / "cap.rc2.val.json",
        [
            {"pairid": 12063, "reference": members[0], "target_hard": members[1], "target_soft": {members[1]: 1.0},
             "caption": "make it darker", "img_set": {"id": 1, "members": members, "reference_rank": 0}},
            {"pairid": 12064, "reference": members[2], "target_hard": names[6], "target_soft": {names[6]: 1.0},
             "caption": "add a dog", "img_set": {"id": 1, "members": members, "reference_rank": 2}},
        ],
    )
    _json(root / "image_splits" / "split.rc2.test1.json", {n: f"./dev/1/{n}.png" for n in names})
    _json(
        root / "captions" / "cap.rc2.test1.json",
        [{"pairid": 1, "reference": members[0], "caption": "more dogs", "img_set": {"id": 1, "members": members, "reference_rank": 0}}],
    )
    return root


def make_circo(root: Path) -> Path:
    coco = root / "COCO2017_unlabeled"
    ids = [139, 285, 632, 724, 776]
    for i, image_id in enumerate(ids):
        _image(coco / "unlabeled2017" / f"{image_id:012d}.jpg", (0, 0, 40 * i))
    _json(coco / "annotations" / "image_info_unlabeled2017.json", {"images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in ids]})
    _json(
        root / "annotations" / "val.json",
        [{"id": 0, "reference_img_id": 139, "target_img_id": 285, "relative_caption": "is at night",
          "shared_concept": "a street", "gt_img_ids": [285, 632]}],
    )
    _json(root / "annotations" / "test.json", [{"id": 7, "reference_img_id": 724, "relative_caption": "has two cats", "shared_concept": "cats"}])
    return root


def make_shoes(root: Path) -> Path:
    names = ["img_womens_clogs_1.jpg", "img_womens_clogs_2.jpg", "img_womens_pumps_3.jpg", "img_womens_pumps_4.jpg"]
    for i, n in enumerate(names):
        category = n.split("_")[2]
        _image(root / "attributedata" / f"womens_{category}" / "0" / n, (i * 50, i * 50, 0))
    (root / "train_im_names.txt").write_text("\n".join(names[:2]) + "\n")
    (root / "eval_im_names.txt").write_text("\n".join(names[2:]) + "\n")
    _json(
        root / "relative_captions_shoes.json",
        [
            {"ImageName": names[1], "ReferenceImageName": names[0], "RelativeCaption": "are brown"},
            {"ImageName": names[3], "ReferenceImageName": names[2], "RelativeCaption": " has a higher heel "},
        ],
    )
    return root


def test_fashioniq_loads_with_fixed_eval_join_and_reference_kept(tmp_path):
    ds = load_fashioniq(make_fashioniq(tmp_path), "dress", "val", target_captions={"B002.png": "a red dress", "B004": "a blue dress"})
    queries, gallery = ds["queries"], ds["gallery"]
    assert gallery["image_id"] == ["B001", "B002", "B003", "B004"]
    row = queries[0]
    assert row["modification_text"] == "Is red and has long sleeves"
    assert (row["reference_id"], row["target_id"], row["target_label"], row["gt_ids"]) == ("B001", "B002", 1, ["B002"])
    assert row["target_caption"] == "a red dress"  # caption file key carries an extension, the name does not
    assert isinstance(row["reference_image"], Image.Image) and row["reference_image"].getpixel((0, 0)) == (0, 0, 0)
    assert queries[1]["modification_text"] == "Shorter and is blue"
    assert gallery["caption"] == ["", "a red dress", "", "a blue dress"]
    # images are stored as paths and decoded on access
    assert queries.features["reference_image"].decode and queries.data.column("reference_image")[0]["bytes"].as_py() is None


def test_fashioniq_training_captions_are_randomised_among_four_variants(tmp_path):
    assert fashioniq_training_caption_variants(["is red.", "has sleeves"]) == [
        "Is red and has sleeves", "Has sleeves and is red", "Is red", "Has sleeves",
    ]
    assert fashioniq_eval_caption(["is red.", "has sleeves"]) == "Is red and has sleeves"
    ds = load_fashioniq(make_fashioniq(tmp_path), "dress", "train", seed=0)
    seen = {ds["queries"][0]["modification_text"] for _ in range(40)}
    assert seen == set(fashioniq_training_caption_variants(["is red.", "has long sleeves?"]))


def test_cirr_loads_img_sets_targets_and_test_split(tmp_path):
    root = make_cirr(tmp_path)
    ds = load_cirr(root, "val")
    assert len(ds["gallery"]) == 7 and len(ds["queries"]) == 2
    row = ds["queries"][1]
    assert row["query_id"] == "12064" and row["target_id"] == "dev-2-0-img0" and row["target_label"] == 6
    assert row["img_set"] == [f"dev-1-{i}-img{i}" for i in range(6)]
    test = load_cir_dataset("cirr", root, "test1")["queries"][0]
    assert test["target_id"] == "" and test["target_image"] is None and test["target_label"] == -1 and test["gt_ids"] == []


def test_cirr_reader_and_caption_image_source_resolve_one_layout_alike(tmp_path):
    """The official download's layout: cirr/{captions,image_splits} beside img_raw/ holding the images."""
    import shutil

    from datasets import Image as ImageFeature

    from modeling_csmcir.captioning import images_from_cirr_split

    make_cirr(tmp_path / "cirr")
    (tmp_path / "img_raw").mkdir()
    shutil.move(tmp_path / "cirr" / "dev", tmp_path / "img_raw" / "dev")
    gallery = load_cirr(tmp_path, "val")["gallery"].cast_column("image", ImageFeature(decode=False))
    records = images_from_cirr_split(tmp_path, "val")
    assert [r.name for r in records] == gallery["image_id"]
    assert [r.source for r in records] == [cell["path"] for cell in gallery["image"]]
    assert records[0].source == str(tmp_path / "img_raw" / "dev" / "1" / "dev-1-0-img0.png")


def test_cirr_joins_authors_format_caption_file(tmp_path):
    root = make_cirr(tmp_path)
    captions = {f"dev-1-{i}-img{i}": {"level_1_global": "g", "Final_Caption": f"scene {i}"} for i in range(6)}
    captions["dev-2-0-img0"] = "a dog"
    _json(tmp_path / "caps.json", captions)
    ds = load_cirr(root, "val", target_captions=tmp_path / "caps.json")
    assert ds["queries"]["target_caption"] == ["scene 1", "a dog"]
    assert ds["gallery"]["caption"][3] == "scene 3"


def test_circo_loads_all_ground_truths(tmp_path):
    root = make_circo(tmp_path)
    ds = load_circo(root, "val")
    assert ds["gallery"]["image_id"] == ["139", "285", "632", "724", "776"]
    row = ds["queries"][0]
    assert row["gt_ids"] == ["285", "632"] and row["target_id"] == "285" and row["shared_concept"] == "a street"
    assert row["modification_text"] == "is at night"
    test = load_circo(root, "test")["queries"][0]
    assert test["query_id"] == "7" and test["gt_ids"] == []


def test_shoes_loads_pairs_of_the_split(tmp_path):
    root = make_shoes(tmp_path)
    ds = load_shoes(root, "test")
    assert ds["gallery"]["image_id"] == ["img_womens_pumps_3.jpg", "img_womens_pumps_4.jpg"]
    assert ds["queries"]["modification_text"] == ["has a higher heel"]
    assert load_shoes(root, "train")["queries"][0]["target_id"] == "img_womens_clogs_2.jpg"


def test_missing_images_error_names_count_and_first_few(tmp_path):
    root = make_cirr(tmp_path)
    for i in range(3):
        (root / "dev" / "1" / f"dev-1-{i}-img{i}.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"3 of 7 images .* missing.*dev-1-0-img0"):
        load_cirr(root, "val")
    fiq = make_fashioniq(tmp_path / "fiq")
    (fiq / "images" / "B003.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 4 images.*B003"):
        load_fashioniq(fiq, "dress", "val")


def test_malformed_json_names_file_and_position(tmp_path):
    root = make_circo(tmp_path)
    (root / "annotations" / "val.json").write_text('[{"id": 0,\n  "reference_img_id": }]')
    with pytest.raises(ValueError, match=r"val\.json: malformed JSON at line 2, column 23"):
        load_circo(root, "val")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda root: load_fashioniq(root, "skirt", "val"), "unknown FashionIQ category 'skirt'"),
        (lambda root: load_cirr(root, "dev"), "unknown CIRR split 'dev'"),
        (lambda root: load_circo(root, "train"), "unknown CIRCO split 'train'"),
        (lambda root: load_cir_dataset("fashioniq", root, "val"), "needs a category"),
        (lambda root: load_cir_dataset("coco", root, "val"), "unknown benchmark 'coco'"),
    ],
)
def test_unknown_category_split_or_benchmark(tmp_path, call, message):
    with pytest.raises(ValueError, match=message):
        call(tmp_path)


def test_cirr_entry_missing_keys_is_reported(tmp_path):
    root = make_cirr(tmp_path)
    entries = json.loads((root / "captions" / "cap.rc2.val.json").read_text())
    del entries[1]["caption"]
    _json(root / "captions" / "cap.rc2.val.json", entries)
    with pytest.raises(ValueError, match=r"entry 1 lacks keys \['caption'\]"):
        load_cirr(root, "val")


@pytest.fixture(scope="module")
def processor():
    return preset_processor("tiny", image_size=16)


def test_collator_builds_model_inputs_with_target_captions(tmp_path, processor):
    ds = load_fashioniq(make_fashioniq(tmp_path), "dress", "val", target_captions={"B002": "a red dress", "B004": "a blue dress"})
    rows = [ds["queries"][i] for i in range(2)]
    batch = CIRCollator(processor)(rows)
    assert batch["pixel_values"].shape == (2, 3, 16, 16) and batch["target_pixel_values"].shape == (2, 3, 16, 16)
    assert batch["target_input_ids"].shape == batch["target_attention_mask"].shape
    assert batch["target_ids"].tolist() == [1, 3]
    expected = processor(text=["a red dress", "a blue dress"], return_tensors="pt")["input_ids"]
    assert torch.equal(batch["target_input_ids"], expected)
    no_caps = CIRCollator(processor, use_target_captions=False)(rows)
    assert "target_input_ids" not in no_caps and "target_pixel_values" in no_caps
    gallery = CIRGalleryCollator(processor, use_captions=False)([ds["gallery"][i] for i in range(4)])
    assert gallery["pixel_values"].shape == (4, 3, 16, 16)


def test_collator_errors_on_missing_captions_and_targets(tmp_path, processor):
    root = make_cirr(tmp_path)
    ds = load_cirr(root, "val", target_captions={"dev-1-1-img1": "x"})  # the second target has no caption
    with pytest.raises(ValueError, match=r"1 images have an empty 'target_caption' \(first: \['dev-2-0-img0'\]\)"):
        CIRCollator(processor)([ds["queries"][0], ds["queries"][1]])
    test = load_cirr(root, "test1")["queries"]
    with pytest.raises(ValueError, match="include_targets=False"):
        CIRCollator(processor, use_target_captions=False)([test[0]])
    assert set(CIRCollator(processor, include_targets=False)([test[0]])) == {"pixel_values", "input_ids", "attention_mask"}
