"""The originals' preprocessing, for reproducing a converted SPRC or CSMCIR-authors checkpoint's numbers.

Both originals (SPRC, github chunmeifeng/SPRC, ``src/data_utils.py``; the CSMCIR authors' released code, built on it)
feed the vision tower ``targetpad_transform(1.25, 224)`` images and BLIP's caption processor's text:

* :func:`target_pad` — SPRC's ``TargetPad``: an image whose aspect ratio ``max(w, h) / min(w, h)`` is at least
  ``target_ratio`` is padded with black, ``int((max(w, h) / target_ratio - w) / 2)`` columns left and right and
  ``int((max(w, h) / target_ratio - h) / 2)`` rows top and bottom; others are returned unchanged.
* :func:`resize_shorter_and_center_crop` — torchvision's ``Resize(size)`` (shorter side to ``size``, longer side
  ``int(size * long / short)``, bicubic) then ``CenterCrop(size)`` (offsets ``round((side - size) / 2)``), on PIL.
* :func:`normalize_caption` — LAVIS ``BlipCaptionProcessor.pre_caption``: lower-case, each of ``.!"()*#:;~`` to a
  space, runs of whitespace to one space, stripped, at most ``max_words`` words.

The processor applies them when ``image_preprocessing="targetpad"`` / ``caption_normalization="blip"``; the image
processor's own resize to the model's input size is then the identity. This file is a flat Hub sibling of
``processing_csmcir.py``: it imports only PIL and the standard library.
"""

from __future__ import annotations

import re

from PIL import Image

#: The target ratio both originals use.
TARGETPAD_RATIO = 1.25
#: LAVIS's caption processor keeps at most this many words.
BLIP_MAX_WORDS = 50

_BLIP_PUNCTUATION = re.compile(r"([.!\"()*#:;~])")
_WHITESPACE_RUNS = re.compile(r"\s{2,}")


def target_pad(image: Image.Image, target_ratio: float = TARGETPAD_RATIO) -> Image.Image:
    """Pad ``image`` with black towards the aspect ratio ``target_ratio`` (SPRC's ``TargetPad``; see the module)."""
    width, height = image.size
    if max(width, height) / min(width, height) < target_ratio:
        return image
    scaled_max = max(width, height) / target_ratio
    horizontal = max(int((scaled_max - width) / 2), 0)
    vertical = max(int((scaled_max - height) / 2), 0)
    if horizontal == 0 and vertical == 0:
        return image
    padded = Image.new(image.mode, (width + 2 * horizontal, height + 2 * vertical), 0)
    padded.paste(image, (horizontal, vertical))
    return padded


def resize_shorter_and_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Bicubic resize of the shorter side to ``size``, then the centred ``size`` × ``size`` crop (torchvision's
    ``Resize(size)`` + ``CenterCrop(size)`` on a PIL image)."""
    width, height = image.size
    if width <= height:
        new_width, new_height = size, int(size * height / width)
    else:
        new_width, new_height = int(size * width / height), size
    if (new_width, new_height) != (width, height):
        image = image.resize((new_width, new_height), Image.BICUBIC)
    top = int(round((new_height - size) / 2.0))
    left = int(round((new_width - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def targetpad_transform(image: Image.Image, size: int, target_ratio: float = TARGETPAD_RATIO) -> Image.Image:
    """``targetpad_transform(target_ratio, size)`` of the originals, up to (not including) tensor conversion and
    normalisation: pad, resize the shorter side, centre-crop, RGB."""
    return resize_shorter_and_center_crop(target_pad(image, target_ratio), size).convert("RGB")


def normalize_caption(caption: str, max_words: int = BLIP_MAX_WORDS) -> str:
    """BLIP's caption normalisation (LAVIS ``BlipCaptionProcessor.pre_caption``; see the module)."""
    caption = _BLIP_PUNCTUATION.sub(" ", caption.lower())
    caption = _WHITESPACE_RUNS.sub(" ", caption)
    caption = caption.rstrip("\n").strip(" ")
    words = caption.split(" ")
    if len(words) > max_words:
        caption = " ".join(words[:max_words])
    return caption


__all__ = [
    "BLIP_MAX_WORDS",
    "TARGETPAD_RATIO",
    "normalize_caption",
    "resize_shorter_and_center_crop",
    "target_pad",
    "targetpad_transform",
]
