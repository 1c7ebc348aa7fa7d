"""Hostile data files for the CSMCIR readers and caption files: every bad entry is refused with a message naming the
file, the entry and what was expected; nothing outside the dataset folder is ever opened; nothing is written."""

from __future__ import annotations

import json
import os

import pytest

from hostile_inputs import cirr_pair, listing, make_cirr, opened_files, outside_secret, write_image, write_json
from hub_cards.safe_paths import ALLOW_OUTSIDE_ENV
from modeling_csmcir.data import load_circo, load_cirr, load_fashioniq, load_shoes, load_target_captions
from modeling_csmcir.data.schema import build_cir_dataset


@pytest.fixture(autouse=True)
def _no_opt_in(monkeypatch):
    monkeypatch.delenv(ALLOW_OUTSIDE_ENV, raising=False)


def _refused_without_touching(tmp_path, root, secret, load, match):
    before = listing(root)
    with opened_files() as seen, pytest.raises(ValueError, match=match):
        load()
    assert str(secret.resolve()) not in seen, "the file outside the dataset was opened"
    assert listing(root) == before
    return seen


# ------------------------------------------------------------------------------------------- security: paths

def test_cirr_split_file_climbing_out_is_refused_naming_file_image_and_path(tmp_path):
    secret = outside_secret(tmp_path)
    root = make_cirr(tmp_path / "cirr", split_paths={"a": "./img/a.png", "b": "../outside/secret.png",
                                                     "c": "./img/c.png", "d": "./img/d.png"})
    _refused_without_touching(tmp_path, root, secret, lambda: load_cirr(root, "val"),
                              r"split\.rc2\.val\.json: image 'b' names path '\.\./outside/secret\.png', which leaves")


def test_cirr_split_file_absolute_path_is_refused(tmp_path):
    secret = outside_secret(tmp_path)
    root = make_cirr(tmp_path / "cirr", split_paths={"a": "./img/a.png", "b": str(secret),
                                                     "c": "./img/c.png", "d": "./img/d.png"})
    _refused_without_touching(tmp_path, root, secret, lambda: load_cirr(root, "val"), r"image 'b' names path '/")


def test_cirr_image_symlinked_outside_is_refused(tmp_path):
    secret = outside_secret(tmp_path)
    root = make_cirr(tmp_path / "cirr")
    (root / "img" / "b.png").unlink()
    os.symlink(secret, root / "img" / "b.png")
    _refused_without_touching(tmp_path, root, secret, lambda: load_cirr(root, "val"),
                              r"image 'b' names path '\./img/b\.png', which resolves to .*secret\.png.* outside")


def test_cirr_paths_outside_are_allowed_only_on_explicit_opt_in(tmp_path, monkeypatch):
    secret = outside_secret(tmp_path)
    root = make_cirr(tmp_path / "cirr", split_paths={"a": "./img/a.png", "b": str(secret),
                                                     "c": "./img/c.png", "d": "./img/d.png"})
    monkeypatch.setenv(ALLOW_OUTSIDE_ENV, "1")
    data = load_cirr(root, "val")
    assert data["gallery"].cast_column("image", data["gallery"].features["image"].__class__(decode=False))[1][
        "image"]["path"] == str(secret)


def test_fashioniq_candidate_climbing_out_is_refused(tmp_path):
    secret = outside_secret(tmp_path)
    root = tmp_path / "fiq"
    for name in ("B1", "B2"):
        write_image(root / "images" / f"{name}.png")
    write_json(root / "image_splits" / "split.dress.val.json", ["B1", "B2"])
    write_json(root / "captions" / "cap.dress.val.json",
               [{"target": "B2", "candidate": "../../outside/secret", "captions": ["is red", "is long"]}])
    _refused_without_touching(tmp_path, root, secret, lambda: load_fashioniq(root, "dress", "val"),
                              r"cap\.dress\.val\.json: entry 0 names path '\.\./\.\./outside/secret'")


def test_fashioniq_split_name_absolute_is_refused(tmp_path):
    secret = outside_secret(tmp_path)
    root = tmp_path / "fiq"
    write_image(root / "images" / "B1.png")
    write_json(root / "image_splits" / "split.dress.val.json", ["B1", str(secret.with_suffix(""))])
    write_json(root / "captions" / "cap.dress.val.json", [{"target": "B1", "candidate": "B1", "captions": ["a", "b"]}])
    _refused_without_touching(tmp_path, root, secret, lambda: load_fashioniq(root, "dress", "val"),
                              r"split\.dress\.val\.json: image '/.*secret' names path")


def test_circo_file_name_climbing_out_is_refused(tmp_path):
    secret = outside_secret(tmp_path)
    root = tmp_path / "circo"
    write_image(root / "COCO2017_unlabeled" / "unlabeled2017" / "1.png")
    write_json(root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json",
               {"images": [{"id": 1, "file_name": "1.png"}, {"id": 2, "file_name": "../../../outside/secret.png"}]})
    write_json(root / "annotations" / "val.json", [{"id": 0, "reference_img_id": 1, "target_img_id": 2,
                                                    "relative_caption": "x", "shared_concept": "", "gt_img_ids": [2]}])
    _refused_without_touching(tmp_path, root, secret, lambda: load_circo(root, "val"),
                              r"image_info_unlabeled2017\.json: image '2' names path '\.\./\.\./\.\./outside")


def _make_shoes(root, caption="is black"):
    for name in ("img_1.jpg", "img_2.jpg"):
        write_image(root / "womens_shoes" / name)
    (root / "eval_im_names.txt").write_text("img_1.jpg\nimg_2.jpg\n")
    write_json(root / "relative_captions_shoes.json",
               [{"ImageName": "img_2.jpg", "ReferenceImageName": "img_1.jpg", "RelativeCaption": caption}])
    return root


def test_shoes_image_symlinked_outside_is_refused(tmp_path):
    secret = outside_secret(tmp_path)
    root = _make_shoes(tmp_path / "shoes")
    os.symlink(secret, root / "womens_shoes" / "img_3.jpg")
    _refused_without_touching(tmp_path, root, secret, lambda: load_shoes(root, "test"),
                              r"image file 'img_3\.jpg' names path .*resolves to .*secret\.png")


# ------------------------------------------------------------------------------------------- silent → errors

@pytest.mark.parametrize(
    "change, match",
    [
        ({"img_set": ["a", "b"]}, r"pair 1 .*field 'img_set' is list .*expected an object"),
        ({"img_set": {"id": 1, "members": "abcd"}}, r"pair 1 .*field 'img_set.members' is a string 'abcd'; expected a list"),
        ({"caption": None}, r"pair 1 .*field 'caption' is null None; expected a string"),
        ({"caption": "  "}, r"pair 1 .*field 'caption' is empty"),
        ({"target_hard": ""}, r"pair 1 .*field 'target_hard' is empty"),
        ({"reference": 3.5}, r"pair 1 .*field 'reference' is a number 3\.5"),
        ({"reference": "zz"}, r"pair 1 .*names images not in .*split\.rc2\.val\.json: \['zz'\]"),
    ],
    ids=["img_set-list", "members-string", "caption-null", "caption-blank", "empty-target", "reference-float",
         "unknown-image"],
)
def test_cirr_bad_pair_fields_are_named(tmp_path, change, match):
    root = make_cirr(tmp_path / "cirr", pairs=[{**cirr_pair(1, "a", "b"), **change}, cirr_pair(2, "c", "d")])
    with pytest.raises(ValueError, match=match) as info:
        load_cirr(root, "val")
    assert "cap.rc2.val.json" in str(info.value)


def test_cirr_duplicate_pair_ids_are_refused(tmp_path):
    root = make_cirr(tmp_path / "cirr", pairs=[cirr_pair(7, "a", "b"), cirr_pair(7, "c", "d")])
    with pytest.raises(ValueError, match=r"CIRR val: query id '7' appears twice"):
        load_cirr(root, "val")


def test_duplicate_json_keys_are_refused_naming_the_key(tmp_path):
    root = make_cirr(tmp_path / "cirr")
    split_file = root / "image_splits" / "split.rc2.val.json"
    split_file.write_text('{"a": "./img/a.png", "b": "./img/b.png", "c": "./img/c.png", "d": "./img/d.png", '
                          '"a": "./img/b.png"}')
    with pytest.raises(ValueError, match=r"split\.rc2\.val\.json: key 'a' appears twice"):
        load_cirr(root, "val")


def test_non_utf8_json_is_named(tmp_path):
    root = make_cirr(tmp_path / "cirr")
    (root / "captions" / "cap.rc2.val.json").write_bytes('[{"caption": "caf\u00e9"}]'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"cap\.rc2\.val\.json: not UTF-8 text \(byte \d+ is b'\\xe9'\)"):
        load_cirr(root, "val")


def test_empty_split_is_refused_before_any_tensor_work(tmp_path):
    root = make_cirr(tmp_path / "cirr", pairs=[])
    with pytest.raises(ValueError, match=r"cap\.rc2\.val\.json: the split has no pairs"):
        load_cirr(root, "val")


def test_split_file_that_is_a_list_or_holds_non_strings_is_named(tmp_path):
    root = make_cirr(tmp_path / "cirr", split_paths=["./img/a.png"])
    with pytest.raises(ValueError, match=r"split\.rc2\.val\.json: expected a non-empty JSON object .* got a JSON list"):
        load_cirr(root, "val")
    root = make_cirr(tmp_path / "cirr2", split_paths={"a": 3})
    with pytest.raises(ValueError, match=r"image 'a' maps to int 3; expected a relative path string"):
        load_cirr(root, "val")


def test_one_query_without_target_in_a_split_with_targets_is_refused(tmp_path):
    rows = [{"query_id": "1", "target_id": "b", "modification_text": "x"},
            {"query_id": "2", "target_id": "", "modification_text": "y"}]
    with pytest.raises(ValueError, match=r"toy: 1 of 2 queries have no target \(first: \['2'\]\)"):
        build_cir_dataset(rows, {"b": "b.png"}, None, "toy")


def _fashioniq(root, entries, names=("B1", "B2", "B3")):
    for name in names:
        write_image(root / "images" / f"{name}.png")
    write_json(root / "image_splits" / "split.dress.val.json", list(names))
    write_json(root / "captions" / "cap.dress.val.json", entries)
    return root


def test_fashioniq_target_missing_from_the_gallery_is_refused_not_scored_as_a_miss(tmp_path):
    root = _fashioniq(tmp_path / "fiq", [{"target": "B9", "candidate": "B1", "captions": ["a", "b"]}])
    write_image(root / "images" / "B9.png")
    with pytest.raises(ValueError, match=r"entry 0: target 'B9' is not in the gallery .*split\.dress\.val\.json"):
        load_fashioniq(root, "dress", "val")


@pytest.mark.parametrize(
    "entry, match",
    [
        ({"target": "B2", "candidate": "B1", "captions": "is red"}, r"entry 0: field 'captions' is a string"),
        ({"target": "B2", "candidate": "B1", "captions": ["is red", None]}, r"field 'captions' holds null"),
        ({"target": "B2", "candidate": "B1", "captions": ["a", "b", "c"]}, r"two captions; got 3"),
        ({"target": None, "candidate": "B1", "captions": ["a", "b"]}, r"entry 0: field 'target' is null"),
    ],
    ids=["captions-string", "caption-null", "three-captions", "target-null"],
)
def test_fashioniq_bad_entries_are_named(tmp_path, entry, match):
    with pytest.raises(ValueError, match=match):
        load_fashioniq(_fashioniq(tmp_path / "fiq", [entry]), "dress", "val")


def _circo(root, queries, images=({"id": 1, "file_name": "1.png"}, {"id": 2, "file_name": "2.png"})):
    for image in images:
        write_image(root / "COCO2017_unlabeled" / "unlabeled2017" / str(image["file_name"]))
    write_json(root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json", {"images": list(images)})
    write_json(root / "annotations" / "val.json", queries)
    return root


def test_circo_gt_ids_given_as_a_string_are_refused(tmp_path):
    query = {"id": 0, "reference_img_id": 1, "target_img_id": 2, "relative_caption": "x", "shared_concept": "",
             "gt_img_ids": "2"}
    with pytest.raises(ValueError, match=r"val\.json: query 0 .*field 'gt_img_ids' is a string '2'"):
        load_circo(_circo(tmp_path / "circo", [query]), "val")


def test_circo_duplicate_image_ids_are_refused(tmp_path):
    images = ({"id": 1, "file_name": "1.png"}, {"id": 1, "file_name": "2.png"})
    query = {"id": 0, "reference_img_id": 1, "target_img_id": 1, "relative_caption": "x", "shared_concept": "",
             "gt_img_ids": [1]}
    with pytest.raises(ValueError, match=r"image_info_unlabeled2017\.json: image 1: image id '1' appears twice"):
        load_circo(_circo(tmp_path / "circo", [query], images), "val")


def test_shoes_null_caption_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"relative_captions_shoes\.json: pair 0: field 'RelativeCaption' is null"):
        load_shoes(_make_shoes(tmp_path / "shoes", caption=None), "test")


# ------------------------------------------------------------------------------------------- caption files

@pytest.mark.parametrize(
    "raw, match",
    [
        (b'{"a.png": "x", "a.png": "y"}', r"key 'a\.png' appears twice"),
        ('{"a.png": "caf\u00e9"}'.encode("latin-1"), r"not UTF-8 text"),
        (b'{"a.png": null}', r"entry for image 'a\.png' is of type NoneType"),
        (b'{"a.png": {"Final_Caption": null}}', r"'Final_Caption' of type NoneType \(expected str\)"),
        (b"", r"not valid JSON \(line 1, column 1"),
    ],
    ids=["duplicate-key", "latin-1", "null-entry", "null-final-caption", "empty-file"],
)
def test_caption_file_errors_name_the_file_and_entry(tmp_path, raw, match):
    path = tmp_path / "cap.json"
    path.write_bytes(raw)
    with pytest.raises(ValueError, match=match) as info:
        load_target_captions(path)
    assert str(path) in str(info.value)


def test_caption_mapping_with_a_null_caption_is_refused_not_turned_into_none(tmp_path):
    root = make_cirr(tmp_path / "cirr")
    with pytest.raises(ValueError, match=r"target_captions: the caption of 'b' is NoneType None; expected a string"):
        load_cirr(root, "val", target_captions={"a": "red", "b": None})
    assert json.loads((root / "captions" / "cap.rc2.val.json").read_text())  # the data files are untouched


# ------------------------------------------------------------------------------------------- up-front image check

def test_the_verification_pass_names_empty_truncated_and_bomb_images(tmp_path, monkeypatch):
    from PIL import Image

    from modeling_csmcir.data.paths import verify_image_files

    root = make_cirr(tmp_path / "cirr")
    (root / "img" / "a.png").write_bytes(b"")
    big = root / "img" / "b.png"
    Image.new("RGB", (64, 64), (9, 9, 9)).save(big)
    truncated = root / "img" / "c.png"
    truncated.write_bytes(truncated.read_bytes()[:40])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 32 * 32)
    data = load_cirr(root, "val")  # the loader checks existence only; decoding is the verification pass's job
    paths = {n: str(root / "img" / f"{n}.png") for n in "abcd"}
    with pytest.raises(ValueError, match=r"3 of 4 images listed by CIRR val cannot be decoded") as info:
        verify_image_files(paths, "CIRR val")
    message = str(info.value)
    assert "a (" in message and "empty file (0 bytes)" in message
    assert "b (" in message and "DecompressionBomb" in message
    assert "c (" in message and "d (" not in message
    assert len(data["gallery"]) == 4


def test_csmcir_train_verify_images_fails_before_training(tmp_path):
    from modeling_csmcir.cli.train import main as train_main

    root = make_cirr(tmp_path / "cirr", split="train")
    (root / "img" / "c.png").write_bytes(b"")
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"1 of 4 images listed by cirr train cannot be decoded.*c \(.*c\.png\)"):
        train_main(["--dataset", "cirr", "--data_dir", str(root), "--config_name", "tiny-scratch", "--output_dir",
                    str(out), "--verify_images", "true", "--report_to", "none", "--use_cpu", "--max_steps", "1"])
    assert not (out / "config.json").exists() and not list(out.glob("checkpoint-*"))


def test_csmcir_eval_verify_images_names_the_broken_file_before_encoding(tmp_path):
    from fixtures import tiny_csmcir, tiny_processor

    from modeling_csmcir.cli.eval import main as eval_main

    root = make_cirr(tmp_path / "cirr", split="val")
    (root / "img" / "c.png").write_bytes(b"")
    processor = tiny_processor()
    tiny_csmcir(processor).save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match=r"images listed by cirr val cannot be decoded.*c \(.*c\.png\)"):
        eval_main(["--dataset", "cirr", "--data_dir", str(root), "--split", "val", "--model_name_or_path",
                   str(tmp_path / "model"), "--output_dir", str(tmp_path / "eval"), "--verify_images", "true",
                   "--device", "cpu"])
    assert not (tmp_path / "eval" / "metrics.json").exists()
