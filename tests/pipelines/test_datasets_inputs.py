"""build_index and queries from datasets-native inputs: Dataset, streaming IterableDataset, Image(decode=False)
columns, plain generators, KeyDataset; ids default to file names when images are given as paths."""

from __future__ import annotations

import datasets
import pytest
import torch
from transformers import pipeline
from transformers.pipelines.pt_utils import KeyDataset

import pipelines  # noqa: F401  (registers the task)
from fixtures import random_images
from modeling_csmcir import CSMCIRModel
from modeling_csmcir.presets import preset_config, preset_processor

CAPTIONS = [f"a {c} shape number {i}" for i, c in enumerate(["red", "green", "blue", "grey", "black", "white", "pink"])]
TEXTS = ["make it red", "add a circle", "darker"]


@pytest.fixture(scope="module")
def retriever():
    processor = preset_processor("tiny")
    torch.manual_seed(0)
    model = CSMCIRModel(preset_config("tiny", vocab_size=len(processor.tokenizer))).eval()
    return pipeline("composed-image-retrieval", model=model, processor=processor)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gallery")
    paths = []
    for number, image in enumerate(random_images(len(CAPTIONS), seed=4)):
        paths.append(str(folder / f"item-{number}.png"))
        image.save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def reference(retriever, files):
    """The index from a plain list of paths, with explicit ids: what every other input kind must equal."""
    return retriever.build_index(files, captions=CAPTIONS, ids=[f"item-{i}.png" for i in range(len(files))],
                                 metadata=[{"caption": c} for c in CAPTIONS], batch_size=3, show_progress=False)


def _same(got, want):
    assert got.ids == want.ids
    assert got.metadata == want.metadata
    torch.testing.assert_close(got.embeddings, want.embeddings, rtol=0, atol=1e-6)


def _dataset(files, decode):
    return datasets.Dataset.from_dict({"image": files, "caption": CAPTIONS}).cast_column(
        "image", datasets.Image(decode=decode)
    )


def test_ids_default_to_file_names_for_paths(retriever, files, reference):
    index = retriever.build_index(files, captions=CAPTIONS, metadata=[{"caption": c} for c in CAPTIONS],
                                  batch_size=3, show_progress=False)
    _same(index, reference)
    # Not every image a path (or names not unique): positions, as before.
    mixed = retriever.build_index([files[0], random_images(1, seed=9)[0]], show_progress=False)
    assert mixed.ids == [0, 1]
    same_name = retriever.build_index([files[0], files[0]], show_progress=False)
    assert same_name.ids == [0, 1]


@pytest.mark.parametrize("decode", [True, False])
def test_map_style_dataset_with_decoded_and_undecoded_images(retriever, files, reference, decode):
    dataset = _dataset(files, decode)
    if not decode:
        assert set(dataset[0]["image"]) == {"bytes", "path"}  # Image(decode=False): a dict, not a PIL image
    index = retriever.build_index(dataset, captions="caption", metadata="caption", batch_size=3, show_progress=False)
    assert index.metadata == reference.metadata
    torch.testing.assert_close(index.embeddings, reference.embeddings, rtol=0, atol=1e-6)
    if not decode:
        assert index.ids == reference.ids  # the path of each undecoded image names it
    # The image bytes, not the path, are read when an Image(decode=False) value carries them.
    embedded = datasets.Dataset.from_dict({"image": [{"bytes": open(f, "rb").read(), "path": None} for f in files]})
    embedded = embedded.cast_column("image", datasets.Image(decode=False))
    from_bytes = retriever.build_index(embedded, captions=CAPTIONS, show_progress=False)
    torch.testing.assert_close(from_bytes.embeddings, reference.embeddings, rtol=0, atol=1e-6)


def test_streaming_iterable_dataset(retriever, files, reference):
    streamed = _dataset(files, decode=False).to_iterable_dataset(num_shards=2)
    assert isinstance(streamed, datasets.IterableDataset) and not hasattr(streamed, "__len__")
    index = retriever.build_index(streamed, captions="caption", metadata=["caption"], batch_size=2, show_progress=False)
    _same(index, reference)
    ids_from_column = retriever.build_index(
        _dataset(files, True).add_column("key", [f"k{i}" for i in range(len(files))]).to_iterable_dataset(),
        captions="caption", ids="key", show_progress=False,
    )
    assert ids_from_column.ids == [f"k{i}" for i in range(len(files))]
    with pytest.raises(ValueError, match="build_index ids: column 'nope' not in the dataset"):
        retriever.build_index(_dataset(files, True).to_iterable_dataset(), ids="nope", show_progress=False)
    with pytest.raises(ValueError, match="the gallery is empty"):
        retriever.build_index(iter([]), show_progress=False)


def test_plain_generators_of_images_and_of_rows(retriever, files, reference):
    index = retriever.build_index((path for path in files), captions=CAPTIONS,
                                  metadata=[{"caption": c} for c in CAPTIONS], batch_size=4, show_progress=False)
    _same(index, reference)
    rows = ({"image": path, "caption": caption, "key": f"r{i}"} for i, (path, caption) in enumerate(zip(files, CAPTIONS)))
    index = retriever.build_index(rows, captions="caption", ids="key", metadata="caption", show_progress=False)
    assert index.ids == [f"r{i}" for i in range(len(files))] and index.metadata == reference.metadata
    torch.testing.assert_close(index.embeddings, reference.embeddings, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="build_index captions: 2 entries, but the gallery has more images"):
        retriever.build_index(iter(files), captions=CAPTIONS[:2], show_progress=False)
    with pytest.raises(ValueError, match="build_index captions: expected 7 entries .* got 8"):
        retriever.build_index(iter(files), captions=CAPTIONS + ["one more"], show_progress=False)
    with pytest.raises(ValueError, match=r"captions\[1\] \(id 1\): the modification text is empty"):
        retriever.build_index(iter(files[:2]), captions=["fine", " "], show_progress=False)


def test_queries_from_key_dataset_and_generators(retriever, files, reference):
    queries = datasets.Dataset.from_dict({"image": files[:3], "text": TEXTS}).cast_column("image", datasets.Image())
    expected = retriever(files[:3], text=TEXTS, gallery=reference, top_k=4)
    assert retriever(KeyDataset(queries, "image"), text=KeyDataset(queries, "text"), gallery=reference, top_k=4) == expected
    assert retriever(KeyDataset(queries, "image"), text=queries["text"], gallery=reference, top_k=4) == expected
    assert retriever(({"image": f, "text": t} for f, t in zip(files[:3], TEXTS)), gallery=reference, top_k=4) == expected
    undecoded = queries.cast_column("image", datasets.Image(decode=False))
    assert retriever(KeyDataset(undecoded, "image"), text=TEXTS, gallery=reference, top_k=4) == expected
    assert retriever(text=KeyDataset(queries, "text"), gallery=reference, query_type="text", top_k=2) == retriever(
        text=TEXTS, gallery=reference, query_type="text", top_k=2
    )
