"""`vision_feature_cache`: cached frozen-vision features change nothing but the time a step takes."""

from __future__ import annotations

import torch

from modeling_csmcir import CSMCIRModel
from modeling_csmcir.presets import preset_config
from modeling_csmcir.trainer_csmcir import CSMCIRTrainer, CSMCIRTrainingArguments
from modeling_csmcir.vision_feature_cache import VisionFeatureCache, vision_identity

NUM_IMAGES = 6


class ToyQueries(torch.utils.data.Dataset):
    """8 composed queries over 6 images (references and targets drawn from the same ids)."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(NUM_IMAGES, 3, 32, 32, generator=generator)
        self.texts = torch.randint(1, 100, (8, 6), generator=generator)
        self.reference = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1])
        self.target = torch.tensor([1, 2, 3, 4, 5, 0, 3, 4])

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "pixel_values": self.images[self.reference[index]],
            "input_ids": self.texts[index],
            "attention_mask": torch.ones(6, dtype=torch.long),
            "target_pixel_values": self.images[self.target[index]],
            "target_ids": self.target[index],
            "reference_ids": self.reference[index],
        }


def _model(seed: int = 0) -> CSMCIRModel:
    torch.manual_seed(seed)
    return CSMCIRModel(preset_config("tiny", vocab_size=100, freeze_vision=True))


def _train(tmp_path, cache: str, model: CSMCIRModel | None = None) -> tuple[CSMCIRTrainer, list[float]]:
    args = CSMCIRTrainingArguments(
        output_dir=str(tmp_path / f"run-{cache.replace('/', '_')}"), num_train_epochs=3, per_device_train_batch_size=4,
        learning_rate=1e-3, lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to="none",
        use_cpu=True, seed=0, disable_tqdm=True, bank_size=8, bank_k_min=1, bank_k_max=4, bank_start_step=0,
        vision_feature_cache=cache,
    )
    trainer = CSMCIRTrainer(model=model or _model(), args=args, train_dataset=ToyQueries())
    trainer.train()
    return trainer, [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_cached_training_equals_uncached_training(tmp_path):
    plain, plain_losses = _train(tmp_path, "none")
    cached, cached_losses = _train(tmp_path, "memory")
    assert len(plain_losses) == len(cached_losses) == 6  # 3 epochs x 2 steps
    assert cached_losses == plain_losses  # bit-identical: the cached features are the tower's own output
    for (name, a), (_, b) in zip(plain.model.state_dict().items(), cached.model.state_dict().items()):
        assert torch.equal(a, b), name
    cache = cached.vision_feature_cache
    # every image computed once (first epoch), then served: 3 epochs x 8 queries x 2 sides = 48 lookups
    assert cache.misses == NUM_IMAGES and cache.hits == 48 - NUM_IMAGES


def test_gradients_with_and_without_cached_features_are_identical():
    model, data = _model(), ToyQueries()
    batch = {key: torch.stack([data[i][key] for i in range(4)]) for key in data[0]}
    cache = VisionFeatureCache("memory")
    grads = []
    for use_cache in (False, True, True):  # the second cached pass is served from the cache
        model.zero_grad()
        inputs = {k: v for k, v in batch.items() if k != "reference_ids"}
        if use_cache:
            inputs["image_embeds"] = cache.image_embeds(model, inputs.pop("pixel_values"), batch["reference_ids"])
            inputs["target_image_embeds"] = cache.image_embeds(model, inputs.pop("target_pixel_values"),
                                                               batch["target_ids"])
        model.eval()
        model(**inputs).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert cache.hits > 0
    for other in grads[1:]:
        assert other.keys() == grads[0].keys()
        for name in grads[0]:
            assert torch.equal(other[name], grads[0][name]), name


def test_disk_cache_is_reused_and_invalidated_by_other_vision_weights_or_pixels(tmp_path):
    folder = str(tmp_path / "features")
    model, images = _model(), torch.randn(5, 3, 32, 32)
    ids = torch.tensor([10, 11, 12, 13, -1])
    first = VisionFeatureCache(folder)
    expected = model.get_image_embeds(images).detach()
    assert torch.equal(first.image_embeds(model, images, ids), expected)
    first.flush()
    shards = list((tmp_path / "features" / vision_identity(model)).glob("shard-*.npy"))
    assert len(shards) == 2  # features + index

    again = VisionFeatureCache(folder)  # a later run: served from disk
    assert torch.equal(again.image_embeds(model, images, ids), expected)
    assert again.hits == 4 and again.misses == 1  # id -1 is never cached

    other = _model(seed=1)  # another vision tower: another identity, nothing reused
    assert vision_identity(other) != vision_identity(model)
    stale = VisionFeatureCache(folder)
    assert torch.equal(stale.image_embeds(other, images, ids), other.get_image_embeds(images).detach())
    assert stale.hits == 0

    with torch.no_grad():  # one weight changed in place: the identity moves with it
        next(model.vision_model.parameters()).view(-1)[0] += 1e-3
    changed = VisionFeatureCache(folder)
    changed.image_embeds(model, images, ids)
    assert changed.hits == 0

    flipped = images.flip(-1)  # same ids, other pixels (augmentation): recomputed
    served = again.image_embeds(_model(), flipped, ids)
    assert torch.equal(served, _model().get_image_embeds(flipped).detach())
