"""CSMCIRProcessor merges call arguments the transformers way, and its image processor follows the vision backbone."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import BertTokenizer

from modeling_csmcir import CSMCIRProcessor
from modeling_csmcir.presets import preset_model, preset_processor, preset_vision_config
from modeling_csmcir.processing_csmcir import IMAGENET_MEAN, OPENAI_CLIP_MEAN, image_processor_for_vision_config
from tests.hub_isolation import run_isolated

TEXTS = ["make it red", "add a small blue circle on the left of the big square"]


@pytest.fixture(scope="module")
def processor() -> CSMCIRProcessor:
    return preset_processor("tiny")


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return [Image.new("RGB", (40, 36), (200, 30, 30)), Image.new("RGB", (36, 40), (20, 30, 220))]


def _tokenizer_created_with(processor: CSMCIRProcessor, tmp_path, **init_kwargs) -> BertTokenizer:
    processor.tokenizer.save_pretrained(tmp_path)
    return BertTokenizer.from_pretrained(tmp_path, **init_kwargs)


# -------------------------------------------------------------------------------------------------- defaults


def test_defaults_pad_to_the_longest_truncate_and_give_tensors_without_token_type_ids(processor, images):
    encoded = processor(images=images, text=TEXTS)
    assert set(encoded) == {"input_ids", "attention_mask", "pixel_values"}
    lengths = encoded["attention_mask"].sum(1)
    assert encoded["input_ids"].shape[1] == int(lengths.max())  # padding="longest"
    assert isinstance(encoded["pixel_values"], torch.Tensor) and encoded["pixel_values"].shape == (2, 3, 32, 32)
    assert processor(text=["word " * 100])["input_ids"].shape[1] == processor.max_text_length


def test_max_length_none_keeps_the_processors_length(processor):
    # data collators pass max_length=None when no length is configured
    assert processor(text=["word " * 100], max_length=None)["input_ids"].shape[1] == processor.max_text_length


# ------------------------------------------------------------------------------------------------- precedence


def test_flat_tokenizer_arguments_override_the_defaults(processor):
    encoded = processor(text=TEXTS, padding="max_length", max_length=20)
    assert encoded["input_ids"].shape == (2, 20)
    as_lists = processor(text=TEXTS[:1], return_tensors=None)["input_ids"]
    assert as_lists == [processor.tokenizer(TEXTS[0])["input_ids"]]


def test_nested_text_images_and_common_kwargs_reach_their_processors(processor, images):
    encoded = processor(
        images=images, text=TEXTS,
        text_kwargs={"padding": "max_length", "max_length": 24},
        images_kwargs={"size": {"height": 16, "width": 16}, "do_normalize": False},
        common_kwargs={"return_tensors": "pt"},
    )
    assert encoded["input_ids"].shape == (2, 24)
    assert encoded["pixel_values"].shape == (2, 3, 16, 16)
    assert 0.0 <= float(encoded["pixel_values"].min()) and float(encoded["pixel_values"].max()) <= 1.0


def test_flat_image_processor_arguments_go_to_the_image_processor_not_the_tokenizer(processor, images):
    plain = processor(images=images)["pixel_values"]
    rescaled = processor(images=images, do_rescale=True, rescale_factor=-1.0, do_normalize=False)["pixel_values"]
    assert float(rescaled.max()) <= 0.0 < float(plain.max())
    with_text = processor(images=images, text=TEXTS, do_normalize=False)
    assert torch.equal(with_text["input_ids"], processor(text=TEXTS)["input_ids"])


def test_an_argument_given_flat_and_nested_is_refused(processor, images):
    with pytest.raises(ValueError, match="do_rescale was passed two times"):
        processor(images=images, images_kwargs={"do_rescale": True}, do_rescale=True)
    with pytest.raises(ValueError, match="padding was passed two times"):
        processor(text=TEXTS, text_kwargs={"padding": "max_length"}, padding="longest")


def test_the_tokenizers_own_arguments_win_over_the_processors_defaults(processor, tmp_path):
    tokenizer = _tokenizer_created_with(processor, tmp_path, padding="max_length", max_length=27)
    plain = CSMCIRProcessor(image_processor=processor.image_processor, tokenizer=tokenizer)
    assert plain(text=TEXTS)["input_ids"].shape == (2, 27)
    # ... and the caller's win over the tokenizer's
    assert plain(text=TEXTS, max_length=12)["input_ids"].shape == (2, 12)
    assert plain(text=TEXTS, padding="longest")["input_ids"].shape[1] < 27


def test_an_explicit_max_text_length_ranks_above_the_tokenizers_stored_max_length(processor, tmp_path):
    # sentence-transformers' BERT folders store max_length=128, more than a tiny Q-Former has positions for
    tokenizer = _tokenizer_created_with(processor, tmp_path, max_length=50)
    short = CSMCIRProcessor(image_processor=processor.image_processor, tokenizer=tokenizer, max_text_length=8)
    assert short(text=["word " * 100])["input_ids"].shape[1] == 8
    assert short(text=["word " * 100], max_length=30)["input_ids"].shape[1] == 30


def test_the_image_processors_own_settings_hold_unless_overridden(processor, images):
    unnormalised = CSMCIRProcessor(
        image_processor=image_processor_for_vision_config(preset_vision_config("blip2"), 24),
        tokenizer=processor.tokenizer, max_text_length=32,
    )
    unnormalised.image_processor.do_normalize = False
    pixels = unnormalised(images=images)["pixel_values"]
    assert pixels.shape == (2, 3, 24, 24) and float(pixels.min()) >= 0.0
    assert float(unnormalised(images=images, do_normalize=True)["pixel_values"].min()) < 0.0


# ------------------------------------------------------------------------------- image processor per backbone


@pytest.mark.parametrize(
    "family, class_name, mean",
    [
        ("blip2", "BlipImageProcessorPil", OPENAI_CLIP_MEAN),
        ("clip", "CLIPImageProcessorPil", OPENAI_CLIP_MEAN),
        ("siglip", "SiglipImageProcessorPil", [0.5, 0.5, 0.5]),
        ("dinov2", "BitImageProcessorPil", IMAGENET_MEAN),
    ],
)
def test_the_image_processor_follows_the_vision_backbone(family, class_name, mean, images):
    vision = preset_vision_config(family, image_size=48)
    image_processor = image_processor_for_vision_config(vision)
    assert type(image_processor).__name__ == class_name
    assert list(image_processor.image_mean) == pytest.approx(mean)
    assert image_processor(images, return_tensors="pt")["pixel_values"].shape == (2, 3, 48, 48)
    # the same from a dict (as read from config.json) and through the presets
    assert type(image_processor_for_vision_config(vision.to_dict())).__name__ == class_name
    model, processor = preset_model("tiny", vision_config=vision)
    assert type(processor.image_processor).__name__ == class_name
    with torch.no_grad():
        query = model.get_query_features(**processor(images=images, text=TEXTS))
    assert query.shape == (2, model.config.embed_dim)


def test_clip_and_dinov2_processors_resize_the_short_edge_then_crop_the_centre():
    clip = image_processor_for_vision_config(preset_vision_config("clip", image_size=48))
    assert clip.size["shortest_edge"] == 48 and clip.crop_size["height"] == 48 and clip.do_center_crop
    dinov2 = image_processor_for_vision_config(preset_vision_config("dinov2", image_size=224))
    assert dinov2.size["shortest_edge"] == 256 and dinov2.crop_size["height"] == 224  # DINOv2's own 256 → 224


def test_the_default_presets_processor_is_still_blips_at_32_pixels(processor):
    assert type(processor.image_processor).__name__ == "BlipImageProcessorPil"
    assert processor.image_processor.size["height"] == 32


def test_a_clip_backbone_processor_and_its_kwargs_behave_alike_through_remote_code(images, tmp_path):
    model, processor = preset_model("tiny", vision_config=preset_vision_config("clip", image_size=40))
    model.save_pretrained(tmp_path / "repo")
    processor.save_pretrained(tmp_path / "repo")
    for index, image in enumerate(images):
        image.save(tmp_path / f"{index}.png")
    expected = processor(images=images, text=TEXTS, text_kwargs={"padding": "max_length", "max_length": 20})
    result = run_isolated(
        """
        import json
        from PIL import Image
        from transformers import AutoProcessor
        processor = AutoProcessor.from_pretrained("repo", trust_remote_code=True)
        images = [Image.open(f"{i}.png") for i in range(2)]
        encoded = processor(images=images, text=%r, text_kwargs={"padding": "max_length", "max_length": 20})
        try:
            processor(images=images, images_kwargs={"do_rescale": True}, do_rescale=True)
            refused = False
        except ValueError:
            refused = True
        print(json.dumps({"image_processor": type(processor.image_processor).__name__,
                          "pixel_values": encoded["pixel_values"].tolist(), "input_ids": encoded["input_ids"].tolist(),
                          "refused_twice_given": refused}))
        """ % (TEXTS,),
        cwd=tmp_path,
    )
    assert result["image_processor"].startswith("CLIPImageProcessor")
    assert result["refused_twice_given"]
    assert torch.equal(torch.tensor(result["input_ids"]), expected["input_ids"])
    torch.testing.assert_close(torch.tensor(result["pixel_values"]), expected["pixel_values"], atol=1e-5, rtol=1e-5)
