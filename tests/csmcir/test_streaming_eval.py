"""Retrieval evaluation from datasets-native inputs: streaming IterableDataset splits, Image(decode=False) columns
and plain generators give exactly the map-style evaluation's scores and metrics."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
import torch

from modeling_csmcir import CSMCIRModel
from modeling_csmcir.data.cirr import load_cirr
from modeling_csmcir.data.synthetic import SyntheticCIRConfig, generate_synthetic_cir
from modeling_csmcir.evaluation.evaluator import build_gallery_index, evaluate_cir
from modeling_csmcir.presets import preset_config, preset_processor


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    bench = generate_synthetic_cir(SyntheticCIRConfig(
        output_dir=str(tmp_path_factory.mktemp("bench")), num_images=60, seed=0, image_size=32, val_fraction=0.4,
        test_fraction=0.3,
    ))
    return load_cirr(Path(bench), "val", target_captions=Path(bench) / "target_captions" / "captions.rc2.val.json")


@pytest.fixture(scope="module")
def model_and_processor():
    processor = preset_processor("tiny", image_size=32)
    torch.manual_seed(0)
    return CSMCIRModel(preset_config("tiny", vocab_size=len(processor.tokenizer), image_size=32)).eval(), processor


@pytest.fixture(scope="module")
def reference(split, model_and_processor):
    model, processor = model_and_processor
    return evaluate_cir(model, processor, split, "cirr", cache=None, batch_size=8, show_progress=False)


def _undecoded(dataset):
    for column in ("image", "reference_image", "target_image"):
        if column in dataset.column_names:
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
    return dataset


def _same(result, reference):
    assert result.metrics == reference.metrics and result.metrics
    assert result.query_ids == reference.query_ids and result.gallery_ids == reference.gallery_ids
    torch.testing.assert_close(result.scores, reference.scores, rtol=0, atol=1e-6)


def test_streaming_splits_equal_the_map_style_evaluation(split, model_and_processor, reference):
    model, processor = model_and_processor
    streamed = {name: split[name].to_iterable_dataset(num_shards=2) for name in ("queries", "gallery")}
    assert all(isinstance(value, datasets.IterableDataset) for value in streamed.values())
    _same(evaluate_cir(model, processor, streamed, "cirr", cache=None, batch_size=5, show_progress=False), reference)


def test_undecoded_image_columns_equal_decoded_ones(split, model_and_processor, reference):
    model, processor = model_and_processor
    undecoded = {name: _undecoded(split[name]) for name in ("queries", "gallery")}
    assert set(undecoded["gallery"][0]["image"]) == {"bytes", "path"}
    _same(evaluate_cir(model, processor, undecoded, "cirr", cache=None, batch_size=8, show_progress=False), reference)
    streamed = {name: value.to_iterable_dataset() for name, value in undecoded.items()}
    _same(evaluate_cir(model, processor, streamed, "cirr", cache=None, batch_size=8, show_progress=False), reference)


def test_generators_of_rows(split, model_and_processor, reference):
    model, processor = model_and_processor
    gallery = split["gallery"]
    rows = (gallery[position] for position in range(len(gallery)))
    index = build_gallery_index(model, processor, rows, use_captions=True, batch_size=7, cache=None,
                                show_progress=False)
    assert index.ids == list(gallery["image_id"])
    generators = {"queries": (row for row in split["queries"]), "gallery": (row for row in gallery)}
    _same(evaluate_cir(model, processor, generators, "cirr", use_target_captions=True, cache=None, batch_size=8,
                       show_progress=False), reference)
    with pytest.raises(ValueError, match="pass use_target_captions="):
        evaluate_cir(model, processor, {"queries": iter([]), "gallery": iter([])}, "cirr", cache=None)
    with pytest.raises(ValueError, match="rows must be dicts"):
        build_gallery_index(model, processor, iter([1, 2]), cache=None, show_progress=False)


def test_streamed_gallery_ids_default_to_file_names(split, model_and_processor, tmp_path):
    model, processor = model_and_processor
    paths = []
    for position in range(4):
        paths.append(str(tmp_path / f"photo-{position}.png"))
        split["gallery"][position]["image"].save(paths[-1])
    rows = ({"image": path} for path in paths)
    index = build_gallery_index(model, processor, rows, use_captions=False, cache=None, show_progress=False)
    assert index.ids == [f"photo-{position}.png" for position in range(4)]
