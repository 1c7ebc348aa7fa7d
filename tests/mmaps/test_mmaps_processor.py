"""MMAPSProcessor: character-level input on real CEPSUM text, kwargs merged the transformers way, `[]` images, the
image processor of the vision backbone."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from transformers import BertTokenizer, BitImageProcessorPil, CLIPImageProcessorPil, SiglipImageProcessorPil

from modeling_mmaps import MMAPSProcessor
from modeling_mmaps.data.cepsum import MMAPSDataCollator, load_cepsum_split
from modeling_mmaps.presets import character_vocabulary, preset_config, preset_model, preset_processor

# Real CEPSUM format: word-segmented with spaces, numbers, Latin brand names, sizes.
CEPSUM_PRODUCTS = {
    "100001": {"src": "Apple 苹果 iPhone 2020 款 手机壳 ， 尺寸 6.1 英寸 ， LED 闪光 灯 开孔 精准",
               "tgt": ["2020 款 iPhone 手机壳 ， 6.1 英寸 ， LED 开孔 精准", "Apple 手机壳 6.1 英寸"]},
    "100002": {"src": "小米 Xiaomi 行李箱 20 寸 ， 尺寸 36 × 23 × 55cm ， 容量 33L ， TSA 海关 锁",
               "tgt": ["20 寸 行李箱 ， 容量 33L ， TSA 海关 锁", "Xiaomi 行李箱 36 × 23 × 55cm"]},
}


@pytest.fixture(scope="module")
def cepsum_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cepsum")
    (folder / "bags_test.json").write_text(json.dumps(CEPSUM_PRODUCTS, ensure_ascii=False), encoding="utf-8")
    return folder


def _no_spaces(text: str) -> str:
    return "".join(text.split()).lower()  # the character tokenizer lower-cases, as bert-base-chinese's does


def test_cepsum_text_keeps_every_character_from_loader_to_decoded_summary(cepsum_dir):
    dataset = load_cepsum_split(cepsum_dir, "test", image_dir="")
    texts = [*dataset["src"], *(t for refs in dataset["tgt"] for t in refs)]
    torch.manual_seed(0)
    model, processor = preset_model("tiny", tokens=character_vocabulary(texts), num_attributes=0)
    batch = MMAPSDataCollator(processor, visual_input="none")(list(dataset))
    unk = processor.tokenizer.unk_token_id
    assert not (batch["input_ids"] == unk).any() and not (batch["labels"] == unk).any()
    labels = batch["labels"].masked_fill(batch["labels"] < 0, processor.tokenizer.pad_token_id)
    assert processor.batch_decode(labels) == [_no_spaces(s) for s in dataset["summary"]]
    # The model learns to copy the two summaries; the decoded summaries keep the digits, Latin letters and sizes.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(80):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    generated = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               num_beams=2, max_new_tokens=40)
    assert processor.batch_decode(generated) == ["2020款iphone手机壳，6.1英寸，led开孔精准", "20寸行李箱，容量33l，tsa海关锁"]


def test_word_piece_input_was_the_bug_character_input_fixes():
    processor = preset_processor("tiny")
    word_level = MMAPSProcessor(image_processor=processor.image_processor, tokenizer=processor.tokenizer,
                                character_level=False)
    unk = processor.tokenizer.unk_token_id
    assert word_level(text="led 2020 款")["input_ids"].tolist() == [[2, unk, unk, processor.tokenizer.convert_tokens_to_ids("款"), 3]]
    ids = processor(text="led 2020 款")["input_ids"][0].tolist()
    assert processor.tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "l", "e", "d", "2", "0", "2", "0", "款", "[SEP]"]


def test_encode_decode_round_trip():
    processor = preset_processor("tiny")
    for text in ["大容量 真皮 手提包 2020 款 ， 30cm", "LED 包 ， 12 色", "黑色。白色！"]:
        ids = processor(text=text)["input_ids"][0]
        assert processor.decode(ids) == _no_spaces(text)


def test_kwargs_flat_or_nested_reach_the_tokenizer_and_image_processor():
    processor = preset_processor("tiny")
    texts = ["红色的包很好", "红色"]
    assert processor(text=texts, max_length=4)["input_ids"].shape == (2, 4)
    assert processor(text=texts, text_kwargs={"max_length": 4})["input_ids"].shape == (2, 4)
    assert processor(text=texts, text_kwargs={"padding": "max_length", "max_length": 10})["input_ids"].shape == (2, 10)
    assert processor(text=texts, max_source_length=5)["input_ids"].shape == (2, 5)
    image = Image.new("RGB", (40, 40), "red")
    crop = {"height": 16, "width": 16}
    assert processor(text=["红"], images=[image], crop_size=crop)["pixel_values"].shape == (1, 3, 16, 16)
    assert processor(text=["红"], images=[image], images_kwargs={"crop_size": crop})["pixel_values"].shape == (1, 3, 16, 16)
    # Image kwargs do not reach the tokenizer: the text encoding is unchanged.
    assert torch.equal(processor(text=["红"], images=[image], crop_size=crop)["input_ids"],
                       processor(text=["红"])["input_ids"])


def test_a_kwarg_given_twice_is_refused():
    processor = preset_processor("tiny")
    with pytest.raises(ValueError, match="max_length was passed two times"):
        processor(text="红色", max_length=4, text_kwargs={"max_length": 5})


def test_tokenizer_init_settings_win_over_the_processor_defaults():
    base = preset_processor("tiny")
    tokenizer = BertTokenizer(vocab=dict(base.tokenizer.get_vocab()), tokenize_chinese_chars=True, do_lower_case=True,
                              padding_side="left")
    processor = MMAPSProcessor(image_processor=base.image_processor, tokenizer=tokenizer, character_level=True)
    ids = processor(text=["红色的包", "红"])["input_ids"]
    assert ids[1].tolist()[:3] == [0, 0, 0] and ids[1].tolist()[-1] == 3  # padded on the tokenizer's side


def test_empty_list_means_no_image_in_a_mixed_batch():
    processor = preset_processor("tiny")
    red, blue = Image.new("RGB", (40, 40), "red"), Image.new("RGB", (40, 40), "blue")
    batch = processor(text=["红", "蓝", "白"], images=[[red], [], [blue]])
    assert batch["image_mask"].tolist() == [1, 0, 1]
    assert torch.equal(batch["pixel_values"][0], processor(text=["红"], images=[red])["pixel_values"][0])
    assert torch.equal(batch["pixel_values"][2], processor(text=["白"], images=[blue])["pixel_values"][0])
    assert batch["pixel_values"][1].abs().sum() == 0
    two = processor(text=["红", "蓝"], images=[red, []])  # two products: the imageless one gets no pixels of its own
    assert two["image_mask"].tolist() == [1, 0] and two["pixel_values"][1].abs().sum() == 0
    with pytest.raises(ValueError, match="one image per product"):
        processor(text=["红"], images=[[red, blue]])


@pytest.mark.parametrize("vision, expected_class, mean", [
    (None, CLIPImageProcessorPil, (0.48145466, 0.4578275, 0.40821073)),
    ({"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
      "num_attention_heads": 2, "image_size": 48, "patch_size": 8}, SiglipImageProcessorPil, (0.5, 0.5, 0.5)),
    ({"model_type": "dinov2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
      "num_attention_heads": 2, "image_size": 48, "patch_size": 8}, BitImageProcessorPil, (0.485, 0.456, 0.406)),
])
def test_image_processor_follows_the_vision_backbone(vision, expected_class, mean):
    overrides = {} if vision is None else {"vision_config": vision}
    model, processor = preset_model("tiny", visual_input="images", **overrides)
    assert type(processor.image_processor) is expected_class
    assert tuple(processor.image_processor.image_mean) == pytest.approx(mean)
    pixels = processor(text=["红"], images=[Image.new("RGB", (70, 50))])["pixel_values"]
    side = model.config.vision_config.image_size
    assert pixels.shape == (1, 3, side, side)
    with torch.no_grad():
        model(**processor(text=["红"], images=[Image.new("RGB", (70, 50))]))


def test_siglip2_is_refused_at_config_time():
    with pytest.raises(ValueError, match="Siglip2VisionConfig is not supported"):
        preset_config("tiny", visual_input="images", vision_config={
            "model_type": "siglip2_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "patch_size": 8})


def test_character_level_is_saved_with_the_processor(tmp_path):
    preset_processor("tiny").save_pretrained(tmp_path)
    assert MMAPSProcessor.from_pretrained(tmp_path).character_level is True


def test_product_text_is_cut_at_max_source_length_not_at_a_saved_tokenizer_max_length(tmp_path):
    # Regression: a tokenizer saved with max_length (the summary limit) in its init kwargs cut product texts to it.
    processor = preset_processor("tiny")
    processor.max_source_length, processor.max_target_length = 60, 8
    processor.tokenizer.init_kwargs["max_length"] = 8
    processor.save_pretrained(tmp_path)
    reloaded = MMAPSProcessor.from_pretrained(tmp_path)
    text = "红色纯棉短袖T恤" * 6
    batch = reloaded([text], summaries=["红色纯棉短袖T恤，简约百搭"])
    assert batch["input_ids"].shape[1] > 8 and batch["input_ids"].shape[1] <= 60
    assert batch["labels"].shape[1] == 8
    assert reloaded([text], max_length=12)["input_ids"].shape[1] == 12  # an explicit max_length still wins
