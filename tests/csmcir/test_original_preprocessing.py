"""The originals' preprocessing (SPRC / CSMCIR authors): targetpad and BLIP caption normalisation, checked against an
independent re-implementation written here from SPRC's `TargetPad` + torchvision's `Resize`/`CenterCrop` semantics
(numpy padding and slicing; PIL only for the bicubic resize, which is what torchvision runs on PIL images)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from modeling_csmcir.preprocessing_csmcir import normalize_caption, target_pad, targetpad_transform


def _reference_targetpad(image: Image.Image, size: int, ratio: float = 1.25) -> np.ndarray:
    array = np.asarray(image.convert("RGB"))
    h, w = array.shape[:2]
    if max(w, h) / min(w, h) >= ratio:
        scaled = max(w, h) / ratio
        hp, vp = max(int((scaled - w) / 2), 0), max(int((scaled - h) / 2), 0)
        array = np.pad(array, ((vp, vp), (hp, hp), (0, 0)), mode="constant", constant_values=0)
    h, w = array.shape[:2]
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    resized = np.asarray(Image.fromarray(array).resize((new_w, new_h), Image.BICUBIC)) if (new_w, new_h) != (w, h) else array
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return resized[top : top + size, left : left + size]


def _image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("width, height", [(300, 120), (90, 240), (200, 170), (64, 64), (500, 399), (37, 101)])
def test_targetpad_equals_an_independent_implementation(width, height):
    image = _image(width, height, seed=width * height)
    ours = np.asarray(targetpad_transform(image, 56))
    assert ours.shape == (56, 56, 3)
    assert np.array_equal(ours, _reference_targetpad(image, 56))


def test_targetpad_pads_wide_images_with_black_and_keeps_near_square_ones():
    wide = Image.new("RGB", (250, 100), (200, 10, 10))
    padded = target_pad(wide)
    # max side / ratio = 200: (200 - 100) / 2 = 50 rows of black above and below, no columns.
    assert padded.size == (250, 200)
    pixels = np.asarray(padded)
    assert (pixels[:50] == 0).all() and (pixels[150:] == 0).all() and (pixels[50:150] == (200, 10, 10)).all()
    near_square = Image.new("RGB", (110, 100))
    assert target_pad(near_square) is near_square  # ratio 1.1 < 1.25: unchanged


@pytest.mark.parametrize(
    "caption, expected",
    [
        ("Is solid black with no sleeves.", "is solid black with no sleeves"),
        ("Make it RED!!  and (shorter); add stripes: yes~", "make it red and shorter add stripes yes"),
        ('The dog "jumps" over *two* #logs', "the dog jumps over two logs"),
        ("has a v-neck, and it's sleeveless", "has a v-neck, and it's sleeveless"),  # , - ' are kept by BLIP
        ("   padded   caption \n", "padded caption"),
    ],
)
def test_blip_caption_normalisation(caption, expected):
    assert normalize_caption(caption) == expected


def test_blip_caption_normalisation_keeps_at_most_max_words():
    caption = " ".join(f"w{i}" for i in range(80))
    assert normalize_caption(caption).split(" ") == [f"w{i}" for i in range(50)]
    assert normalize_caption(caption, max_words=3) == "w0 w1 w2"
