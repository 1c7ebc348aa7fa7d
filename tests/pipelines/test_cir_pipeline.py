"""pipeline("composed-image-retrieval"): ranking vs brute force, batching, input forms, build_index, errors, Hub reload."""

from __future__ import annotations

import functools
import http.server
import threading

import numpy as np
import pytest
import torch
from transformers import AutoModel, pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from modeling_csmcir import CSMCIRModel, CSMCIRProcessor
from modeling_csmcir.presets import preset_config, preset_processor
from pipelines import COMPOSED_IMAGE_RETRIEVAL_TASK, ComposedImageRetrievalPipeline
from fixtures import random_images
from tests.hub_isolation import run_isolated

TEXTS = ["make it red", "add a blue circle on the left", "remove the stripes", "make the square bigger", "darker"]


def _save_tiny_model(directory, seed: int, **config_overrides) -> None:
    processor = preset_processor("tiny")
    torch.manual_seed(seed)
    model = CSMCIRModel(preset_config("tiny", vocab_size=len(processor.tokenizer), **config_overrides)).eval()
    model.save_pretrained(directory)
    processor.save_pretrained(directory)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_csmcir")
    _save_tiny_model(directory, seed=0)
    return directory


@pytest.fixture(scope="module")
def retriever(model_dir):
    return pipeline(COMPOSED_IMAGE_RETRIEVAL_TASK, model=str(model_dir), trust_remote_code=True, device="cpu")


@pytest.fixture(scope="module")
def gallery_images():
    return random_images(12, seed=1)


@pytest.fixture(scope="module")
def gallery_captions():
    colours = ["red", "green", "blue", "black", "white", "grey"]
    return [f"a {colours[i % 6]} square on a plain background number {i}" for i in range(12)]


@pytest.fixture(scope="module")
def gallery(retriever, gallery_images, gallery_captions):
    return retriever.build_index(
        gallery_images,
        captions=gallery_captions,
        ids=[f"img-{i}" for i in range(12)],
        metadata=[{"caption": c} for c in gallery_captions],
        batch_size=5,
        show_progress=False,
    )


@pytest.fixture(scope="module")
def query_images():
    return random_images(len(TEXTS), seed=2)


def _ids(hits):
    return [hit["id"] for hit in hits]


def test_task_is_registered_with_an_auto_class(retriever):
    assert COMPOSED_IMAGE_RETRIEVAL_TASK in PIPELINE_REGISTRY.get_supported_tasks()
    _, info, _ = PIPELINE_REGISTRY.check_task(COMPOSED_IMAGE_RETRIEVAL_TASK)
    assert info["impl"] is ComposedImageRetrievalPipeline and info["pt"] == (AutoModel,)
    assert isinstance(retriever, ComposedImageRetrievalPipeline)
    assert isinstance(retriever.processor, CSMCIRProcessor)


def test_build_index_stores_the_models_target_features(retriever, gallery, gallery_images, gallery_captions):
    inputs = retriever.processor(images=gallery_images, text=gallery_captions)
    with torch.no_grad():
        expected = retriever.model.get_target_features(**inputs)
        image_only = retriever.model.get_target_features(inputs["pixel_values"])
    torch.testing.assert_close(gallery.embeddings, expected, rtol=0, atol=1e-5)
    assert gallery.ids == [f"img-{i}" for i in range(12)]
    assert gallery.model_identity["target_inputs"] == "image+caption"
    assert gallery.model_identity["embed_dim"] == 32
    image_index = retriever.build_index(gallery_images, batch_size=7, dtype="float16", show_progress=False)
    assert image_index.model_identity["target_inputs"] == "image" and image_index.dtype == torch.float16
    torch.testing.assert_close(image_index.embeddings.float(), image_only, rtol=0, atol=1e-3)
    # The symmetric tower and the image-only tower are different embeddings of the same images.
    assert (gallery.embeddings - image_index.embeddings.float()).abs().max() > 1e-2


def test_ranking_equals_brute_force_with_the_models_features(retriever, gallery, query_images):
    inputs = retriever.processor(images=query_images, text=TEXTS)
    with torch.no_grad():
        queries = retriever.model.get_query_features(**inputs)
    scores = queries @ gallery.embeddings.T
    expected_scores, expected_positions = scores.topk(5, dim=1)
    results = retriever(query_images, text=TEXTS, gallery=gallery, top_k=5)
    assert len(results) == len(TEXTS)
    for row, hits in enumerate(results):
        assert _ids(hits) == [gallery.ids[p] for p in expected_positions[row].tolist()]
        torch.testing.assert_close(torch.tensor([h["score"] for h in hits]), expected_scores[row], rtol=0, atol=1e-5)
        assert hits[0]["caption"] == gallery.metadata[expected_positions[row, 0]]["caption"]
    # The tiny random model still separates the gallery: the score spread is far above float noise.
    assert float(scores.max() - scores.min()) > 1e-3


def test_batched_calls_equal_single_calls(retriever, gallery, query_images):
    batched = retriever(query_images, text=TEXTS, gallery=gallery, top_k=12, batch_size=4)
    for image, text, hits in zip(query_images, TEXTS, batched):
        single = retriever(image, text=text, gallery=gallery, top_k=12)
        assert _ids(single) == _ids(hits)
        np.testing.assert_allclose([h["score"] for h in single], [h["score"] for h in hits], rtol=0, atol=1e-5)


def test_every_input_form_gives_the_same_hits(retriever, gallery, query_images, tmp_path):
    image, text = query_images[0], TEXTS[0]
    reference = _ids(retriever(image, text=text, gallery=gallery))
    image.save(tmp_path / "query.png")
    array = np.asarray(image)
    forms = {
        "path": str(tmp_path / "query.png"),
        "pathlib": tmp_path / "query.png",
        "uint8 HWC array": array,
        "float CHW array": array.transpose(2, 0, 1).astype(np.float32) / 255.0,
        "tensor": torch.from_numpy(array.copy()),
    }
    for name, form in forms.items():
        assert _ids(retriever(form, text=text, gallery=gallery)) == reference, name
    assert _ids(retriever({"image": image, "text": text}, gallery=gallery)) == reference
    assert _ids(retriever([{"image": image, "text": text}], gallery=gallery)[0]) == reference
    assert _ids(retriever(image=image, text=text, gallery=gallery)) == reference


def test_url_images_are_fetched(retriever, gallery, query_images, tmp_path):
    query_images[1].save(tmp_path / "q.png")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/q.png"
        hits = retriever(url, text=TEXTS[1], gallery=gallery, timeout=10)
    finally:
        server.shutdown()
        server.server_close()
    assert _ids(hits) == _ids(retriever(query_images[1], text=TEXTS[1], gallery=gallery))


def test_top_k_is_clamped_to_the_gallery_size(retriever, gallery, query_images):
    hits = retriever(query_images[0], text=TEXTS[0], gallery=gallery, top_k=1000)
    assert sorted(_ids(hits)) == sorted(gallery.ids)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert len(retriever(query_images[0], text=TEXTS[0], gallery=gallery, top_k=3)) == 3
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        retriever(query_images[0], text=TEXTS[0], gallery=gallery, top_k=0)


def test_gallery_from_a_saved_folder_and_from_pipeline_creation(retriever, model_dir, gallery, query_images, tmp_path):
    gallery.save(tmp_path / "index")
    expected = retriever(query_images[2], text=TEXTS[2], gallery=gallery)
    assert retriever(query_images[2], text=TEXTS[2], gallery=str(tmp_path / "index")) == expected
    bound = pipeline(
        COMPOSED_IMAGE_RETRIEVAL_TASK, model=str(model_dir), trust_remote_code=True, device="cpu",
        gallery=str(tmp_path / "index"), top_k=4,
    )
    assert bound(query_images[2], text=TEXTS[2]) == expected[:4]


def test_build_index_from_a_datasets_dataset(retriever, gallery, gallery_images, gallery_captions):
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_dict(
        {"picture": gallery_images, "caption": gallery_captions, "name": gallery.ids, "shop": [f"s{i % 3}" for i in range(12)]},
        features=datasets.Features({
            "picture": datasets.Image(), "caption": datasets.Value("string"),
            "name": datasets.Value("string"), "shop": datasets.Value("string"),
        }),
    )
    index = retriever.build_index(
        dataset, image_column="picture", captions="caption", ids="name", metadata=["shop"], batch_size=5,
        show_progress=False,
    )
    assert index.ids == gallery.ids
    assert index.metadata[4] == {"shop": "s1"}
    # PNG round trip inside `datasets` is lossless, so the embeddings match the in-memory build.
    torch.testing.assert_close(index.embeddings, gallery.embeddings, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="column 'image' not in the dataset"):
        retriever.build_index(dataset, show_progress=False)


def test_index_from_another_model_is_refused_naming_both(retriever, gallery, query_images, tmp_path):
    _save_tiny_model(tmp_path / "other", seed=1)
    other = pipeline(COMPOSED_IMAGE_RETRIEVAL_TASK, model=str(tmp_path / "other"), trust_remote_code=True, device="cpu")
    with pytest.raises(ValueError, match=r"weights_fingerprint differs.*built by .*tiny_csmcir.*querying model is .*other"):
        other(query_images[0], text=TEXTS[0], gallery=gallery)
    hits = other(query_images[0], text=TEXTS[0], gallery=gallery, check_model=False)
    assert len(hits) == 10

    _save_tiny_model(tmp_path / "wide", seed=0, embed_dim=16)
    wide = pipeline(COMPOSED_IMAGE_RETRIEVAL_TASK, model=str(tmp_path / "wide"), trust_remote_code=True, device="cpu")
    with pytest.raises(ValueError, match=r"embedding size mismatch.*embed_dim=32.*embed_dim=16"):
        wide(query_images[0], text=TEXTS[0], gallery=gallery, check_model=False)


def test_bad_inputs_raise_clear_errors(retriever, gallery, gallery_images, query_images, tmp_path):
    with pytest.raises(ValueError, match="the gallery is empty"):
        retriever.build_index([], show_progress=False)
    corrupt = tmp_path / "broken.png"
    gallery_images[0].save(corrupt)
    corrupt.write_bytes(corrupt.read_bytes()[:60])
    with pytest.raises(ValueError, match=r"images\[2\] \(id 'c'\): cannot read image .*broken.png"):
        retriever.build_index([gallery_images[0], gallery_images[1], str(corrupt)], ids=["a", "b", "c"], show_progress=False)
    with pytest.raises(ValueError, match=r"query 1: cannot read image .*broken.png"):
        retriever([query_images[0], str(corrupt)], text=TEXTS[:2], gallery=gallery)
    with pytest.raises(ValueError, match=r"query 0: cannot read image 'no/such/file.jpg'"):
        retriever("no/such/file.jpg", text=TEXTS[0], gallery=gallery)
    with pytest.raises(ValueError, match="query 0: the modification text is missing"):
        retriever(query_images[0], gallery=gallery)
    with pytest.raises(ValueError, match="query 1: the modification text is empty"):
        retriever([{"image": query_images[0], "text": "red"}, {"image": query_images[1], "text": " "}], gallery=gallery)
    with pytest.raises(ValueError, match="2 reference images but 1 modification texts"):
        retriever(query_images[:2], text=["red"], gallery=gallery)
    with pytest.raises(ValueError, match="no gallery to search"):
        retriever(query_images[0], text=TEXTS[0])
    with pytest.raises(ValueError, match=r"captions\[1\] \(id 1\): the modification text is missing"):
        retriever.build_index(gallery_images[:2], captions=["fine", None], show_progress=False)
    with pytest.raises(ValueError, match="build_index ids: expected 2 entries"):
        retriever.build_index(gallery_images[:2], ids=["only-one"], show_progress=False)
    with pytest.raises(ValueError, match="gallery: expected a GalleryIndex"):
        retriever(query_images[0], text=TEXTS[0], gallery=[1, 2, 3])


def test_saved_pipeline_reloads_in_a_clean_process(retriever, gallery, gallery_images, gallery_captions, query_images, tmp_path):
    retriever.save_pretrained(tmp_path / "repo")
    gallery.save(tmp_path / "index")
    for i, image in enumerate(query_images):
        image.save(tmp_path / f"q{i}.png")
    for i, image in enumerate(gallery_images):
        image.save(tmp_path / f"g{i}.png")
    expected = retriever(query_images, text=TEXTS, gallery=gallery, top_k=5)
    result = run_isolated(
        f"""
        import json
        import torch
        from transformers import pipeline
        pipe = pipeline(model="repo", trust_remote_code=True, device="cpu")
        index = pipe.load_index("index")
        hits = pipe([f"q{{i}}.png" for i in range({len(TEXTS)})], text={TEXTS!r}, gallery=index, top_k=5)
        rebuilt = pipe.build_index([f"g{{i}}.png" for i in range(12)], captions={gallery_captions!r},
                                   ids=index.ids, show_progress=False)
        print(json.dumps({{
            "task": pipe.task,
            "pipeline_module": type(pipe).__module__,
            "model_module": type(pipe.model).__module__,
            "processor_module": type(pipe.processor).__module__,
            "index_module": type(index).__module__,
            "hits": hits,
            "rebuilt": rebuilt.embeddings.tolist(),
            "identity": rebuilt.model_identity,
        }}))
        """,
        cwd=tmp_path,
    )
    assert result["task"] == COMPOSED_IMAGE_RETRIEVAL_TASK
    for key in ("pipeline_module", "model_module", "processor_module", "index_module"):
        assert result[key].startswith("transformers_modules"), (key, result[key])
    for got, want in zip(result["hits"], expected):
        assert _ids(got) == _ids(want)
        np.testing.assert_allclose([h["score"] for h in got], [h["score"] for h in want], rtol=0, atol=1e-5)
        assert got[0]["caption"] == want[0]["caption"]
    torch.testing.assert_close(torch.tensor(result["rebuilt"]), gallery.embeddings, rtol=0, atol=1e-5)
    # The same weights in another process have the same identity, so the clean process's index is searchable here.
    assert result["identity"]["config_hash"] == gallery.model_identity["config_hash"]
    assert result["identity"]["weights_fingerprint"] == gallery.model_identity["weights_fingerprint"]
