"""GalleryIndex grows: add in place, merge of shards (== one go, identity-checked), IVF-PQ trained once and filled
shard by shard, embedding export to .npy / Parquet."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.gallery_index import GalleryIndex, TrainedFaiss, train_faiss


def _clustered(rows: int, dim: int, clusters: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=generator)
    assignment = torch.randint(0, clusters, (rows,), generator=generator)
    return centres[assignment] + 0.5 * torch.randn(rows, dim, generator=generator)


def _identity(fingerprint: str = "w0", config: str = "c0", dim: int = 16) -> dict:
    return {"model_type": "csmcir", "name_or_path": "tiny", "embed_dim": dim, "config_hash": config,
            "weights_fingerprint": fingerprint, "weights_dtype": "float32", "target_inputs": "image"}


def _assert_same_index(got: GalleryIndex, want: GalleryIndex) -> None:
    assert torch.equal(got.embeddings, want.embeddings)
    assert got.ids == want.ids
    assert got.metadata == want.metadata
    assert got.model_identity == want.model_identity
    assert got.dtype == want.dtype


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_add_equals_building_in_one_go(dtype):
    rows = _clustered(300, 16) * 3.0  # not normalised: add must normalise exactly as the constructor does
    ids = [f"img-{i}" for i in range(300)]
    metadata = [{"row": i} for i in range(300)]
    whole = GalleryIndex(rows, ids=ids, metadata=metadata, model_identity=_identity(), dtype=dtype)
    grown = GalleryIndex(rows[:100], ids=ids[:100], metadata=metadata[:100], model_identity=_identity(), dtype=dtype)
    grown.add(rows[100:250], ids=ids[100:250], metadata=metadata[100:250])
    grown.add(rows[250:].numpy(), ids=ids[250:], metadata=metadata[250:])
    _assert_same_index(grown, whole)
    queries = torch.randn(9, 16)
    assert torch.equal(grown.search(queries, 20).positions, whole.search(queries, 20).positions)


def test_add_defaults_ids_fills_metadata_and_refuses_bad_rows_without_changing_anything():
    index = GalleryIndex(_clustered(5, 8))
    index.add(_clustered(3, 8, seed=1))
    assert index.ids == [0, 1, 2, 3, 4, 5, 6, 7] and index.metadata is None
    index.add(_clustered(1, 8, seed=2), ids=["x"], metadata=[{"colour": "red"}])
    assert index.metadata == [{}] * 8 + [{"colour": "red"}]
    before = index.embeddings.clone()
    with pytest.raises(ValueError, match=r"'x' is already in the index"):
        index.add(_clustered(2, 8, seed=3), ids=["y", "x"])
    with pytest.raises(ValueError, match="embed_dim=4, but the index has embed_dim=8"):
        index.add(torch.randn(2, 4))
    with pytest.raises(ValueError, match="GalleryIndex.add: .*row 1 has a zero or non-finite norm"):
        index.add(torch.stack([torch.ones(8), torch.zeros(8)]))
    with pytest.raises(ValueError, match="expected 2 ids"):
        index.add(torch.randn(2, 8), ids=["only-one"])
    with pytest.raises(ValueError, match="different model"):
        index.model_identity = _identity(dim=8)
        index.add(torch.randn(2, 8), model_identity=_identity("other", dim=8))
    assert torch.equal(index.embeddings, before) and len(index.ids) == 9


def test_merge_equals_one_go_and_round_trips(tmp_path):
    rows = _clustered(500, 16, seed=4)
    ids = [f"s{i}" for i in range(500)]
    whole = GalleryIndex(rows, ids=ids, metadata=[{"n": i} for i in range(500)], model_identity=_identity())
    bounds = [0, 120, 121, 380, 500]  # a one-row shard too
    shards = [
        GalleryIndex(rows[a:b], ids=ids[a:b], metadata=[{"n": i} for i in range(a, b)], model_identity=_identity())
        for a, b in zip(bounds, bounds[1:])
    ]
    # Saved and loaded, as shards from other machines arrive.
    for number, shard in enumerate(shards):
        shard.save(tmp_path / f"shard{number}")
    loaded = [GalleryIndex.load(tmp_path / f"shard{number}") for number in range(len(shards))]
    merged = GalleryIndex.merge(loaded)
    _assert_same_index(merged, whole)
    merged.save(tmp_path / "merged")
    whole.save(tmp_path / "whole")
    assert (tmp_path / "merged" / "gallery_embeddings.safetensors").read_bytes() == (
        tmp_path / "whole" / "gallery_embeddings.safetensors"
    ).read_bytes()
    assert (tmp_path / "merged" / "gallery_index.json").read_text() == (tmp_path / "whole" / "gallery_index.json").read_text()


def test_merge_refuses_mixed_shards_naming_the_shard():
    a = GalleryIndex(_clustered(4, 16), ids=["a0", "a1", "a2", "a3"], model_identity=_identity())
    with pytest.raises(ValueError, match="shard 1 was encoded by a different model than shard 0 \\(weights_fingerprint"):
        GalleryIndex.merge([a, GalleryIndex(_clustered(2, 16), ids=["b0", "b1"], model_identity=_identity("w1"))])
    with pytest.raises(ValueError, match="shard 2 was encoded by a different model .*config_hash"):
        GalleryIndex.merge([a, GalleryIndex(_clustered(1, 16), ids=["b"], model_identity=_identity()),
                            GalleryIndex(_clustered(1, 16), ids=["c"], model_identity=_identity(config="c1"))])
    with pytest.raises(ValueError, match="target_inputs"):
        captioned = dict(_identity(), target_inputs="image+caption")
        GalleryIndex.merge([a, GalleryIndex(_clustered(1, 16), ids=["b"], model_identity=captioned)])
    with pytest.raises(ValueError, match="shard 1 records no model identity"):
        GalleryIndex.merge([a, GalleryIndex(_clustered(1, 16), ids=["b"])])
    with pytest.raises(ValueError, match="shard 1's embeddings have embed_dim=8, but the index has embed_dim=16"):
        GalleryIndex.merge([a, GalleryIndex(torch.randn(2, 8), ids=["b0", "b1"], model_identity=_identity(dim=8))])
    with pytest.raises(ValueError, match="shard 1's embeddings have dtype=torch.float16"):
        GalleryIndex.merge([a, GalleryIndex(_clustered(1, 16), ids=["b"], model_identity=_identity(), dtype="float16")])
    with pytest.raises(ValueError, match="tokens_per_item=3"):
        GalleryIndex.merge([a, GalleryIndex(torch.randn(2, 3, 16), ids=["t0", "t1"], model_identity=_identity())])
    with pytest.raises(ValueError, match="id 'a2' is in shard 0 and in shard 1"):
        GalleryIndex.merge([a, GalleryIndex(_clustered(2, 16), ids=["b", "a2"], model_identity=_identity())])
    with pytest.raises(ValueError, match="no shards given"):
        GalleryIndex.merge([])
    with pytest.raises(ValueError, match="shard 1 is a Tensor"):
        GalleryIndex.merge([a, torch.randn(2, 16)])
    # check_model=False merges shards the caller vouches for; the layout checks still hold.
    merged = GalleryIndex.merge([a, GalleryIndex(_clustered(2, 16), ids=["b0", "b1"], model_identity=_identity("w1"))],
                                check_model=False)
    assert merged.ids == ["a0", "a1", "a2", "a3", "b0", "b1"] and merged.model_identity == a.model_identity


def test_token_level_shards_merge_exactly():
    rows = torch.randn(40, 4, 8)
    whole = GalleryIndex(rows, model_identity=_identity(dim=8))
    merged = GalleryIndex.merge([GalleryIndex(rows[:13], model_identity=_identity(dim=8)),
                                 GalleryIndex(rows[13:], ids=list(range(13, 40)), model_identity=_identity(dim=8))])
    _assert_same_index(merged, whole)


def test_ivfpq_trained_once_filled_by_shards_equals_one_go(tmp_path):
    rows = _clustered(3000, 32, clusters=24, seed=5)
    ids = [f"g{i}" for i in range(3000)]
    trained = train_faiss(rows[torch.randperm(3000, generator=torch.Generator().manual_seed(0))[:2000]],
                          kind="ivfpq", nlist=24, nprobe=8, pq_m=8)
    assert trained.config["pq_m"] == 8 and trained.index.ntotal == 0
    trained.save(tmp_path / "trained")
    reloaded = TrainedFaiss.load(tmp_path / "trained")
    assert reloaded.config == trained.config
    shards = []
    for number, (a, b) in enumerate([(0, 1000), (1000, 2200), (2200, 3000)]):
        shard = GalleryIndex(rows[a:b], ids=ids[a:b], model_identity=_identity(dim=32))
        shard.build_faiss(trained=tmp_path / "trained")  # each machine loads the trained index from its folder
        shard.save(tmp_path / f"shard{number}")
        shards.append(GalleryIndex.load(tmp_path / f"shard{number}"))
    merged = GalleryIndex.merge(shards)
    whole = GalleryIndex(rows, ids=ids, model_identity=_identity(dim=32)).build_faiss(trained=trained)
    assert merged.backend == "faiss" and merged.faiss_config == whole.faiss_config
    queries = rows[:50] + 0.3 * torch.randn(50, 32, generator=torch.Generator().manual_seed(1))
    got, want = merged.search(queries, 10), whole.search(queries, 10)
    assert torch.equal(got.positions, want.positions) and torch.equal(got.scores, want.scores)
    # Approximate, but it finds most of the exact top 10 on clustered data.
    exact = whole.search(queries, 10, backend="torch")
    recall = np.mean([len(set(g.tolist()) & set(e.tolist())) / 10 for g, e in zip(got.positions, exact.positions)])
    assert recall > 0.5, recall
    # Adding to a faiss-backed index fills the faiss index too.
    grown = GalleryIndex(rows[:1000], ids=ids[:1000], model_identity=_identity(dim=32)).build_faiss(trained=trained)
    grown.add(rows[1000:], ids=ids[1000:])
    assert grown._faiss_index.ntotal == 3000
    assert torch.equal(grown.search(queries, 10).positions, want.positions)


def test_faiss_shards_from_different_training_are_merged_without_faiss(caplog):
    rows = _clustered(1200, 16, seed=6)
    a = GalleryIndex(rows[:600]).build_faiss(kind="ivf", nlist=8)
    b = GalleryIndex(rows[600:], ids=list(range(600, 1200))).build_faiss(kind="ivf", nlist=8, seed=1)
    merged = GalleryIndex.merge([a, b])
    assert merged.backend == "torch" and merged._faiss_index is None


def test_trained_faiss_refuses_a_tampered_folder(tmp_path):
    trained = train_faiss(_clustered(800, 16), kind="ivf", nlist=8)
    trained.save(tmp_path / "t")
    other = train_faiss(_clustered(800, 16, seed=9), kind="ivf", nlist=8)
    other.save(tmp_path / "o")
    (tmp_path / "t" / "trained.faiss").write_bytes((tmp_path / "o" / "trained.faiss").read_bytes())
    with pytest.raises(ValueError, match="does not match"):
        TrainedFaiss.load(tmp_path / "t")
    with pytest.raises(ValueError, match="not found"):
        TrainedFaiss.load(tmp_path / "missing")
    with pytest.raises(ValueError, match="D=16, the gallery D=8"):
        GalleryIndex(torch.randn(4, 8)).build_faiss(trained=trained)


def test_export_to_npy_and_parquet_with_ids_and_metadata(tmp_path):
    import json

    import datasets
    import faiss

    rows = _clustered(40, 16, seed=7)
    ids = [f"p{i}" for i in range(40)]
    metadata = [{"caption": f"item {i}", "price": float(i)} for i in range(40)]
    index = GalleryIndex(rows, ids=ids, metadata=metadata, model_identity=_identity())
    written = index.export(tmp_path / "gallery.npy")
    assert written == [str(tmp_path / "gallery.npy"), str(tmp_path / "gallery.jsonl")]
    assert np.array_equal(np.load(tmp_path / "gallery.npy"), index.embeddings.numpy())
    lines = [json.loads(line) for line in (tmp_path / "gallery.jsonl").read_text().splitlines()]
    assert lines == [{"id": item, **meta} for item, meta in zip(ids, metadata)]

    index.export(tmp_path / "gallery.parquet")
    dataset = datasets.Dataset.from_parquet(str(tmp_path / "gallery.parquet"))
    assert dataset.column_names == ["id", "embedding", "caption", "price"]
    back = GalleryIndex.from_dataset(dataset, model_identity=_identity(), normalize=False)
    _assert_same_index(back, index)
    import pyarrow.parquet as pq

    schema = pq.read_schema(tmp_path / "gallery.parquet").metadata
    assert json.loads(schema[b"model_identity"]) == _identity() and schema[b"embed_dim"] == b"16"

    # datasets' own faiss index over the same rows ranks as GalleryIndex.search does.
    as_dataset = index.to_dataset()
    as_dataset.add_faiss_index("embedding", metric_type=faiss.METRIC_INNER_PRODUCT)
    query = torch.nn.functional.normalize(torch.randn(16), dim=0)
    scores, found = as_dataset.get_nearest_examples("embedding", query.numpy().astype(np.float32), k=5)
    result = index.search(query, top_k=5)
    assert found["id"] == [ids[p] for p in result.positions[0].tolist()]
    np.testing.assert_allclose(scores, result.scores[0].numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="must end in .npy or .parquet"):
        index.export(tmp_path / "gallery.csv")
    with pytest.raises(ValueError, match="column 'vec' not in the dataset"):
        GalleryIndex.from_dataset(dataset, embedding_column="vec")
