"""CEPSUM-layout loading, attribute vocabulary, synthetic products and their bad-input behaviour."""

from __future__ import annotations

import filecmp
import json
import os

import numpy as np
import pytest

from modeling_mmaps.data.attributes import (
    attribute_labels,
    build_attribute_vocabulary,
    check_vocabulary_matches_model,
    find_attributes,
    load_attribute_vocabulary,
    merge_attribute_vocabularies,
    save_attribute_vocabulary,
)
from modeling_mmaps.data.cepsum import MMAPSDataCollator, RegionFeatureReader, load_cepsum, load_cepsum_split
from modeling_mmaps.data.synthetic import generate_synthetic_products, image_only_mention_rate, load_synthetic_attributes


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "zh"
    generate_synthetic_products(out, num_products=30, seed=7)
    return str(out)


def _write(path, payload):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, ensure_ascii=False)


# -- synthetic set -------------------------------------------------------------------------------------------------
def test_synthetic_set_has_cepsum_layout_and_image_only_attributes(synthetic_dir):
    info = json.load(open(os.path.join(synthetic_dir, "synthetic_info.json")))
    assert info["language"] == "zh" and info["num_products"] == 30
    data = load_cepsum(synthetic_dir, explode_train_references=False)
    assert sum(len(d) for d in data.values()) == 30
    train = data["train"]
    assert set(train["category"]) == {"cases_bags", "clothing", "home_appliances"}
    assert all(2 <= len(t) <= 3 for t in train["tgt"])
    assert all(p is not None and os.path.isfile(p) for p in train["image_path"])
    meta = load_synthetic_attributes(synthetic_dir, "train")
    hidden = [(sku, m) for sku, m in meta.items() if m["image_only"]]
    assert hidden, "some products must have attributes shown only in the image"
    by_sku = dict(zip(train["sku"], zip(train["src"], train["tgt"])))
    for sku, m in hidden:
        src, tgt = by_sku[sku]
        for word in m["image_only"]:
            assert word not in src  # absent from the text ...
        assert m["image_only"][0] in "".join(tgt) or m["image_only"][0] in m["in_image"]  # ... but in the image
    # the colour is written in every reference summary
    for sku, m in meta.items():
        assert all(m["in_image"][0] in t for t in by_sku[sku][1])


def test_synthetic_set_is_deterministic_per_seed(tmp_path, synthetic_dir):
    again = tmp_path / "again"
    generate_synthetic_products(again, num_products=30, seed=7)
    for name in ("clothing_train.json", "synthetic_attributes.test.json"):
        assert filecmp.cmp(os.path.join(synthetic_dir, name), again / name, shallow=False)
    sku = sorted(os.listdir(again / "images"))[0]
    assert filecmp.cmp(os.path.join(synthetic_dir, "images", sku), again / "images" / sku, shallow=False)
    other = tmp_path / "other"
    generate_synthetic_products(other, num_products=30, seed=8)
    assert not filecmp.cmp(os.path.join(synthetic_dir, "clothing_train.json"), other / "clothing_train.json", shallow=False)


def test_synthetic_english_option(tmp_path):
    generate_synthetic_products(tmp_path / "en", num_products=9, seed=0, language="en", region_features=False)
    data = json.load(open(tmp_path / "en" / "clothing_train.json"))
    src = next(iter(data.values()))["src"]
    assert src.isascii()


def test_synthetic_refuses_to_overwrite_and_leaves_nothing_on_bad_args(tmp_path, synthetic_dir):
    with pytest.raises(ValueError, match="not empty"):
        generate_synthetic_products(synthetic_dir, num_products=30, seed=7)
    with pytest.raises(ValueError, match="language"):
        generate_synthetic_products(tmp_path / "x", language="fr")
    assert not os.path.exists(tmp_path / "x")
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".mmaps-synth-")]


def test_mmaps_synth_cli(tmp_path):
    from modeling_mmaps.cli.synth import main

    info = main(["--output_dir", str(tmp_path / "cli"), "--num_products", "9", "--seed", "1", "--region_features", "false"])
    assert info["splits"]["clothing"] == {"train": 1, "dev": 1, "test": 1}
    assert not list((tmp_path / "cli").glob("*.h5"))


# -- loader --------------------------------------------------------------------------------------------------------
def test_explode_references_gives_one_row_per_reference(synthetic_dir):
    products = load_cepsum_split(synthetic_dir, "train")
    rows = load_cepsum_split(synthetic_dir, "train", explode_references=True)
    assert len(rows) == sum(len(t) for t in products["tgt"])
    assert all(s in t for s, t in zip(rows["summary"], rows["tgt"]))


def test_products_without_image_are_kept_and_counted(tmp_path, caplog):
    _write(tmp_path / "bags_test.json", {"1": {"src": "红色真皮包", "tgt": ["红色包"]}, "2": {"src": "蓝包", "tgt": ["蓝色"]}})
    os.makedirs(tmp_path / "images")
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "1.jpg")
    ds = load_cepsum_split(tmp_path, "test")
    assert ds["image_path"][0].endswith("1.jpg") and ds["image_path"][1] is None
    assert "1 product(s) without image" in ds.info.description
    with pytest.raises(ValueError, match=r"1 product\(s\).*no image.*'2'"):
        load_cepsum_split(tmp_path, "test", require_images=True)


@pytest.mark.parametrize(
    "item, message",
    [
        ({"src": "红色包", "tgt": "红色包"}, r"sku '9': 'tgt' must be a list .* got str"),
        ({"src": "  ", "tgt": ["红色包"]}, r"sku '9': 'src' is empty"),
        ({"src": "红色包", "tgt": []}, r"sku '9': 'tgt' must hold at least one"),
        ({"tgt": ["红色包"]}, r"sku '9': 'src' must be a string"),
    ],
)
def test_bad_products_raise_naming_file_and_sku(tmp_path, item, message):
    _write(tmp_path / "bags_dev.json", {"9": item})
    with pytest.raises(ValueError, match=message) as info:
        load_cepsum_split(tmp_path, "dev")
    assert "bags_dev.json" in str(info.value)


def test_missing_split_and_category_are_clear(tmp_path):
    with pytest.raises(ValueError, match="no '{category}_train.json'"):
        load_cepsum_split(tmp_path, "train")
    _write(tmp_path / "bags_train.json", {"1": {"src": "a", "tgt": ["b"]}})
    with pytest.raises(ValueError, match="category 'shoes'"):
        load_cepsum_split(tmp_path, "train", categories=["shoes"])


def test_region_features_are_read_in_the_original_layout(synthetic_dir):
    ds = load_cepsum_split(synthetic_dir, "dev")
    path = ds["region_features_path"][0]
    assert os.path.basename(path) == f"frcnn_{ds['category'][0]}_dev.h5"
    with RegionFeatureReader(path) as reader:
        regions = reader.get(ds["sku"][0])
        assert regions.features.shape == (6, 16) and regions.class_probs.shape == (6, 8)
        assert regions.boxes.min() >= 0 and regions.boxes.max() <= 1
        # the last grid cell covers the bottom-right corner of the image, normalised to exactly 1
        np.testing.assert_allclose(regions.boxes[-1, 2:], [1.0, 1.0])
        np.testing.assert_allclose(regions.class_probs.sum(-1), 1.0, rtol=1e-5)
        assert reader.get("no-such-sku") is None


# -- attribute vocabulary ------------------------------------------------------------------------------------------
def test_attribute_vocabulary_keeps_frequent_non_stop_words_per_category():
    refs = {
        "clothing": [["红色纯棉T恤，条纹设计"], ["红色纯棉衬衫"], ["蓝色纯棉连衣裙"], ["条纹的衬衫"]],
        "bags": [["黑色真皮的包"], ["黑色真皮斜挎包"]],
    }
    vocab = build_attribute_vocabulary(refs, top_n=3, language="zh")
    assert vocab["clothing"] == ["纯棉", "条纹", "红色"]  # 3, 2, 2 products (ties alphabetical); 的/设计 are stop words
    assert vocab["bags"][:2] == ["真皮", "黑色"]
    merged = merge_attribute_vocabularies(vocab)
    assert merged[:3] == ["纯棉", "条纹", "红色"] and len(merged) == len(set(merged))
    np.testing.assert_array_equal(attribute_labels(["红色的包", "纯棉"], merged[:4]), [1, 0, 1, 0])


def test_english_vocabulary_and_whole_word_matching():
    vocab = build_attribute_vocabulary({"c": ["A red cotton shirt.", "Red silk, red!", "the cotton dress"]}, 5, language="en")
    assert vocab["c"] == ["cotton", "red"]
    assert find_attributes("Reddish cotton", ["red", "cotton"], language="en") == {"cotton"}


def test_vocabulary_json_roundtrip_is_atomic(tmp_path):
    path = save_attribute_vocabulary(["红色", "纯棉"], tmp_path, per_category={"c": ["红色", "纯棉"]})
    assert load_attribute_vocabulary(path) == ["红色", "纯棉"]
    assert os.listdir(tmp_path) == ["attribute_vocabulary.json"]
    with pytest.raises(ValueError, match="unique"):
        save_attribute_vocabulary(["红色", "红色"], tmp_path / "v.json")
    assert not os.path.exists(tmp_path / "v.json")


def test_vocabulary_not_matching_the_model_is_an_error():
    with pytest.raises(ValueError, match="3 words but the model predicts 5"):
        check_vocabulary_matches_model(["a", "b", "c"], 5)


def test_image_only_mention_rate():
    meta = {"1": {"image_only": ["红色"]}, "2": {"image_only": ["蓝色", "条纹"]}, "3": {"image_only": []}}
    assert image_only_mention_rate({"1": "红色的包", "2": "条纹包", "3": "x"}, meta) == pytest.approx(2 / 3)


# -- collator ------------------------------------------------------------------------------------------------------
def test_collator_builds_model_inputs_with_and_without_images(synthetic_dir):
    from modeling_mmaps import MMAPSProcessor
    from modeling_mmaps.presets import character_vocabulary

    rows = load_cepsum_split(synthetic_dir, "dev")
    chars = character_vocabulary(list(rows["src"]) + [t for ts in rows["tgt"] for t in ts])
    processor = MMAPSProcessor.from_vocabulary(chars, image_size=32, attribute_vocabulary=["红色", "黑色", "条纹"],
                                               max_regions=6)
    items = [rows[i] for i in range(len(rows))]
    items[1] = {**items[1], "image_path": None}
    batch = MMAPSDataCollator(processor, visual_input="images")(items)
    assert batch["pixel_values"].shape == (len(items), 3, 32, 32)
    assert batch["image_mask"].tolist() == [1, 0] + [1] * (len(items) - 2)
    assert batch["attribute_labels"].shape == (len(items), 3)
    for row, label in zip(items, batch["attribute_labels"]):
        refs = "".join(row["tgt"])
        assert label.tolist() == [float(w in refs) for w in ["红色", "黑色", "条纹"]]
    assert (batch["labels"] == -100).any() or batch["labels"].shape[1] > 0
    regions = MMAPSDataCollator(processor, visual_input="regions")(items)
    assert regions["visual_features"].shape == (len(items), 6, 16) and "pixel_values" not in regions
    blind = MMAPSDataCollator(processor, visual_input="none")(items)
    assert "pixel_values" not in blind and "visual_features" not in blind
    items[0] = {**items[0], "image_path": "/nonexistent/1.png"}
    with pytest.raises(ValueError, match="image_path: file /nonexistent/1.png does not exist"):
        MMAPSDataCollator(processor)(items)
