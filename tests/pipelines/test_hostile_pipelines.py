"""Hostile inputs for the two pipelines and the gallery index: every bad input names the item, the field and what was
expected; a save killed at any point leaves the old or the new index loadable; stale or broken indexes are refused."""

from __future__ import annotations

import http.server
import json
import multiprocessing
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import pipeline

import pipelines.gallery_index as gallery_module
from fixtures import random_images, tiny_csmcir, tiny_processor
from hostile_inputs import listing
from pipelines import COMPOSED_IMAGE_RETRIEVAL_TASK
from pipelines.gallery_index import GalleryIndex, model_identity, weights_fingerprint


@pytest.fixture(scope="module")
def retriever(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile_cir")
    processor = tiny_processor()
    tiny_csmcir(processor, seed=0).save_pretrained(folder)
    processor.save_pretrained(folder)
    return pipeline(COMPOSED_IMAGE_RETRIEVAL_TASK, model=str(folder), trust_remote_code=True, device="cpu")


@pytest.fixture(scope="module")
def gallery(retriever):
    return retriever.build_index(random_images(4, seed=1), show_progress=False)


# ------------------------------------------------------------------------------------------- retrieval inputs

class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path == "/slow.png":
            time.sleep(2)
        self.send_response(404 if self.path == "/missing.png" else 200)
        self.send_header("content-type", "text/html")
        self.end_headers()
        self.wfile.write(b"<html>not here</html>")

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_url_http_error_status_is_reported(retriever, gallery, server):
    with pytest.raises(ValueError, match=r"query 0: fetching '.*/missing\.png' returned HTTP 404 Not Found"):
        retriever(f"{server}/missing.png", text="red", gallery=gallery)


def test_url_that_is_not_an_image_says_what_came_back(retriever, gallery, server):
    with pytest.raises(ValueError, match=r"query 0: '.*/page\.png' answered HTTP 200 with 21 bytes of text/html"):
        retriever(f"{server}/page.png", text="red", gallery=gallery)


def test_url_without_an_answer_times_out_with_the_limit_named(retriever, gallery, server):
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"query 0: no answer from '.*/slow\.png' within 0\.3 s"):
        retriever(f"{server}/slow.png", text="red", gallery=gallery, timeout=0.3)
    assert time.monotonic() - start < 1.9


def test_default_url_timeout_is_finite():
    from pipelines.composed_image_retrieval import DEFAULT_URL_TIMEOUT

    assert 0 < DEFAULT_URL_TIMEOUT <= 60


@pytest.mark.parametrize(
    "image, match",
    [
        ("photos/missing.jpg", r"query 0: cannot read image 'photos/missing\.jpg': no such file"),
        ("/abs/missing.png", r"cannot read image '/abs/missing\.png': no such file"),
        ("@@not base64 and not a path@@", r"not an existing file, an http\(s\) URL or base64 image data"),
        (5, r"query 0: expected a PIL\.Image, a path, a URL, a base64 string or an array, got int"),
        (np.full((8, 8, 3), 40000, dtype=np.uint16), r"a uint16 image array with values in \[40000, 40000\]; expected uint8"),
        (np.full((8, 8, 3), -0.5, dtype=np.float32), r"a float image array with values in \[-0\.5, -0\.5\]"),
        (np.zeros((8, 8, 3), dtype=bool), r"got dtype bool"),
        (np.zeros((8, 8, 7), dtype=np.uint8), r"expected an image array HxW, HxWxC or CxHxW"),
    ],
    ids=["missing-relative", "missing-absolute", "garbage-string", "int", "uint16", "negative-float", "bool", "7-channels"],
)
def test_bad_query_images_are_named(retriever, gallery, image, match):
    with pytest.raises(ValueError, match=match) as info:
        retriever(image, text="red", gallery=gallery)
    assert "padding" not in str(info.value)


def test_wrong_text_type_is_named(retriever, gallery):
    with pytest.raises(ValueError, match=r"query 0: the modification text must be a string \(or a list of strings\), got int"):
        retriever(random_images(1)[0], text=5, gallery=gallery)


def test_zero_byte_truncated_and_bomb_images_are_named_with_their_file(retriever, gallery, tmp_path, monkeypatch):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.png"
    random_images(1, size=64)[0].save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:120])
    bomb = tmp_path / "bomb.png"
    Image.new("RGB", (300, 300)).save(bomb)
    images = [random_images(1)[0], str(empty)]
    with pytest.raises(ValueError, match=r"images\[1\] \(id 'e'\): cannot read image '.*empty\.png': the file is empty"):
        retriever.build_index(images, ids=["ok", "e"], show_progress=False)
    with pytest.raises(ValueError, match=r"query 0: cannot read image '.*truncated\.png': OSError"):
        retriever(str(truncated), text="red", gallery=gallery)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)
    with pytest.raises(ValueError, match=r"query 0: cannot read image '.*bomb\.png': DecompressionBombError"):
        retriever(str(bomb), text="red", gallery=gallery)


def test_a_folder_given_as_an_image_is_named(retriever, gallery, tmp_path):
    with pytest.raises(ValueError, match=r"cannot read image '.*': a folder, not an image file"):
        retriever(str(tmp_path), text="red", gallery=gallery)


# ------------------------------------------------------------------------------------------- gallery index files

def _index(seed=0, n=4):
    return GalleryIndex(torch.randn(n, 8, generator=torch.Generator().manual_seed(seed)), ids=[f"i{k}" for k in range(n)])


def test_a_stored_nan_row_is_refused_at_load(tmp_path):
    _index().save(tmp_path)
    record = json.loads((tmp_path / "gallery_index.json").read_text())
    embeddings = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    embeddings[2, 3] = float("nan")
    save_file({"embeddings": embeddings}, tmp_path / "gallery_embeddings.safetensors")
    record["embeddings_sha256"] = gallery_module._embeddings_digest(embeddings)
    (tmp_path / "gallery_index.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"row 2 \(id 'i2'\) holds NaN or infinite values"):
        GalleryIndex.load(tmp_path)


def test_an_index_without_its_digest_is_refused_unless_asked(tmp_path):
    _index().save(tmp_path)
    record = json.loads((tmp_path / "gallery_index.json").read_text())
    del record["embeddings_sha256"]
    (tmp_path / "gallery_index.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"gallery_index\.json' has no 'embeddings_sha256'.*require_digest=False"):
        GalleryIndex.load(tmp_path)
    assert GalleryIndex.load(tmp_path, require_digest=False).ids == ["i0", "i1", "i2", "i3"]


@pytest.mark.parametrize(
    "content, match",
    [
        ("[1, 2]", r"holds a JSON list; expected an object with keys"),
        (json.dumps({"format_version": 1, "ids": []}), r"lacks keys \['num_items', 'embed_dim'\]"),
        (json.dumps({"format_version": 1, "num_items": "4", "embed_dim": 8, "ids": [], "embeddings_sha256": "x"}),
         r"field 'num_items' is str '4'; expected int"),
        (b"\xff\xfe{}", r"is not UTF-8 text"),
    ],
    ids=["list", "missing-keys", "wrong-type", "not-utf8"],
)
def test_index_json_that_is_not_a_record_is_named(tmp_path, content, match):
    _index().save(tmp_path)
    path = tmp_path / "gallery_index.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=match):
        GalleryIndex.load(tmp_path)


def _save_killed_at(folder, replace_call):
    """Child process: re-save the index and SIGKILL itself at its `replace_call`-th os.replace (no cleanup runs)."""
    calls = {"n": 0}
    real_replace = os.replace

    def replace(src, dst):
        calls["n"] += 1
        if calls["n"] == replace_call:
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)

    os.replace = replace
    _index(seed=1, n=5).save(folder)
    os._exit(0)


@pytest.mark.parametrize("replace_call", [1, 2, 3, 99], ids=["before-data", "before-switch", "after-switch", "done"])
def test_a_save_killed_at_any_point_leaves_the_old_or_the_new_index(tmp_path, replace_call):
    _index(seed=0, n=4).save(tmp_path)
    child = multiprocessing.get_context("fork").Process(target=_save_killed_at, args=(tmp_path, replace_call))
    child.start()
    child.join(30)
    loaded = GalleryIndex.load(tmp_path)
    assert len(loaded) in (4, 5)
    expected = _index(seed=0, n=4) if len(loaded) == 4 else _index(seed=1, n=5)
    assert loaded.ids == expected.ids and torch.allclose(loaded.embeddings, expected.embeddings)
    if replace_call >= 3:
        assert len(loaded) == 5  # past the switch: the new index
    # The next save cleans up whatever the killed one left behind.
    _index(seed=2, n=3).save(tmp_path)
    assert listing(tmp_path) == ["gallery_embeddings.safetensors", "gallery_index.json"]
    assert len(GalleryIndex.load(tmp_path)) == 3


# ------------------------------------------------------------------------------------------- model identity

def test_identity_hashes_every_weight_not_a_sample():
    model = torch.nn.Embedding(1000, 16)
    first = weights_fingerprint(model)
    with torch.no_grad():
        model.weight[1, 3] += 1e-4  # between the positions a 64-value sample would read
    assert weights_fingerprint(model) != first


def test_same_weights_in_another_dtype_are_named_as_such(retriever):
    model = tiny_csmcir(seed=0)
    built = model_identity(model)
    half = model_identity(tiny_csmcir(seed=0).to(torch.float16))
    other = model_identity(tiny_csmcir(seed=1))
    index = GalleryIndex(torch.randn(2, built["embed_dim"]), model_identity=built)
    with pytest.raises(ValueError, match=r"same weights in a different dtype \(index built in float32, querying model "
                                         r"in float16\)"):
        index.check_compatible(half)
    with pytest.raises(ValueError, match=r"built by a different model \(weights_fingerprint differs\)"):
        index.check_compatible(other)


# ------------------------------------------------------------------------------------------- summarization

@pytest.fixture(scope="module")
def summarizer():
    from modeling_mmaps import MMAPSForConditionalGeneration, MMAPSProcessor
    from modeling_mmaps.presets import preset_config

    import pipelines  # noqa: F401

    texts = "红色纯棉条纹黑色真皮包"
    processor = MMAPSProcessor.from_vocabulary(sorted(set(texts)), image_size=32, attribute_vocabulary=["红色", "黑色"])
    torch.manual_seed(0)
    config = preset_config("tiny", visual_input="images", text_vocab_size=len(processor.tokenizer), num_attributes=2)
    return pipeline("product-summarization", model=MMAPSForConditionalGeneration(config).eval(), processor=processor)


@pytest.mark.parametrize("top_k", [-1, 1.5, True], ids=["negative", "float", "bool"])
def test_bad_top_k_attributes_is_refused(summarizer, top_k):
    with pytest.raises(ValueError, match=rf"top_k_attributes: expected an int >= 0, got {top_k!r}"):
        summarizer({"text": "红色纯棉"}, top_k_attributes=top_k)


def test_a_misspelt_input_key_is_refused_not_ignored(summarizer):
    with pytest.raises(ValueError, match=r"product '红色纯棉': unknown keys \['imgae'\]; expected some of \['text', 'image'"):
        summarizer({"text": "红色纯棉", "imgae": "red.png"}, max_new_tokens=2)


def test_the_bad_item_of_a_batch_is_named(summarizer, tmp_path):
    with pytest.raises(ValueError, match=r"product .黑色真皮包.: cannot read inputs\[.image.\] .*gone\.png.: no such file"):
        summarizer([{"text": "红色纯棉"}, {"text": "黑色真皮包", "image": str(tmp_path / "gone.png")}], max_new_tokens=2)
    with pytest.raises(ValueError, match=r"product: inputs\['text'\] expected a non-empty product description, got int 5"):
        summarizer([{"text": "红色纯棉"}, {"text": 5}], max_new_tokens=2)
