"""A synthetic multimodal product-summarization set in the CEPSUM layout (what ``mmaps-synth`` writes).

Why it exists: CEPSUM is only available on application, yet the loaders, trainer, metrics and pipeline
must run end to end offline, and the set must be hard in the way that makes MMAPS's image side matter.

What a product is: a category (bags, clothing, home appliances), a noun, and five attribute slots —
colour, material, pattern, style, features. Its rendered image shows the **colour** (fill) and the
**pattern** (stripes / grid / dots / plain) on a category-specific silhouette. Its long text (``src``)
mentions most attributes among shop filler, product codes and noise; with probability
``image_only_rate`` the colour is left out of the text (sometimes replaced by a misleading
"多色可选"/"multiple colours available"), and with ``pattern_image_only_rate`` the pattern is too, so
those attributes are recoverable **only from the image**. Two or three reference summaries (``tgt``)
each highlight colour, material, pattern/style and a feature. Everything is a pure function of the
seed (``random.Random(seed)``; images rendered with PIL, no font files).

Files written (``--output_dir D``): ``D/{category}_{split}.json``, ``D/images/{sku}.png``,
``D/synthetic_attributes.{split}.json`` (``{sku: {"category", "attributes", "image_only", "in_image"}}``, the
ground truth for image-only scoring), optional ``D/frcnn_{category}_{split}.h5`` region features in the
original's HDF5 layout (a 2x3 grid of "regions" with colour statistics, for region-feature models),
and ``D/synthetic_info.json``. The folder is built beside the target and renamed into place, so a
failed run leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from transformers.utils import logging

from hub_cards.atomic_files import atomic_directory

logger = logging.get_logger(__name__)

COLOURS_RGB: dict[str, tuple[int, int, int]] = {
    "red": (205, 30, 35),
    "black": (25, 25, 25),
    "white": (250, 250, 250),
    "blue": (30, 70, 210),
    "green": (35, 165, 60),
    "yellow": (240, 205, 25),
}
PATTERNS = ("stripes", "grid", "dots", "plain")
STYLES = ("minimal", "vintage", "fashion", "casual", "business")

# Category -> nouns, materials, features (language-neutral keys, rendered per language below).
CATEGORIES: dict[str, dict[str, tuple[str, ...]]] = {
    "cases_bags": {
        "nouns": ("backpack", "handbag", "shoulder_bag"),
        "materials": ("leather", "canvas", "nylon"),
        "features": ("large_capacity", "waterproof", "lightweight"),
    },
    "clothing": {
        "nouns": ("tshirt", "shirt", "dress"),
        "materials": ("cotton", "silk", "wool", "linen"),
        "features": ("breathable", "slim_fit", "warm"),
    },
    "home_appliances": {
        "nouns": ("kettle", "humidifier", "rice_cooker"),
        "materials": ("steel", "ceramic", "glass"),
        "features": ("quiet", "energy_saving", "fast_heating"),
    },
}

WORDS: dict[str, dict[str, str]] = {
    "zh": {
        "red": "红色", "black": "黑色", "white": "白色", "blue": "蓝色", "green": "绿色", "yellow": "黄色",
        "stripes": "条纹", "grid": "格子", "dots": "波点", "plain": "纯色",
        "minimal": "简约", "vintage": "复古", "fashion": "时尚", "casual": "休闲", "business": "商务",
        "backpack": "双肩包", "handbag": "手提包", "shoulder_bag": "斜挎包",
        "tshirt": "T恤", "shirt": "衬衫", "dress": "连衣裙",
        "kettle": "电水壶", "humidifier": "加湿器", "rice_cooker": "电饭煲",
        "leather": "真皮", "canvas": "帆布", "nylon": "尼龙", "cotton": "纯棉", "silk": "真丝", "wool": "羊毛",
        "linen": "亚麻", "steel": "不锈钢", "ceramic": "陶瓷", "glass": "玻璃",
        "large_capacity": "大容量", "waterproof": "防水", "lightweight": "轻便", "breathable": "透气",
        "slim_fit": "修身", "warm": "保暖", "quiet": "静音", "energy_saving": "节能", "fast_heating": "速热",
    },
    "en": {
        "red": "red", "black": "black", "white": "white", "blue": "blue", "green": "green", "yellow": "yellow",
        "stripes": "striped", "grid": "checked", "dots": "polka-dot", "plain": "solid",
        "minimal": "minimal", "vintage": "vintage", "fashion": "trendy", "casual": "casual", "business": "business",
        "backpack": "backpack", "handbag": "handbag", "shoulder_bag": "shoulder bag",
        "tshirt": "t-shirt", "shirt": "shirt", "dress": "dress",
        "kettle": "kettle", "humidifier": "humidifier", "rice_cooker": "rice cooker",
        "leather": "leather", "canvas": "canvas", "nylon": "nylon", "cotton": "cotton", "silk": "silk", "wool": "wool",
        "linen": "linen", "steel": "steel", "ceramic": "ceramic", "glass": "glass",
        "large_capacity": "roomy", "waterproof": "waterproof", "lightweight": "lightweight", "breathable": "breathable",
        "slim_fit": "slim", "warm": "warm", "quiet": "quiet", "energy_saving": "efficient", "fast_heating": "fast",
    },
}

# Sentence templates; {n} noun, {c} colour, {m} material, {p} pattern, {s} style, {f}/{g} features.
TEXT_TEMPLATES = {
    "zh": {
        "material": ("{n}采用优质{m}材质，做工精细", "精选{m}，手感舒适", "{m}制作，经久耐用"),
        "style": ("{s}风格，百搭大方", "整体走{s}路线", "{s}设计，彰显品味"),
        "feature": ("具有{f}的特点", "{f}性能出色", "主打{f}"),
        "colour": ("经典{c}款式", "{c}配色，耐看", "颜色为{c}"),
        "pattern": ("{p}图案设计", "{p}元素点缀", "表面为{p}"),
        "colour_distractor": ("多色可选", "颜色以实物为准"),
        "filler": (
            "全国包邮，七天无理由退换", "品牌直营，正品保证", "下单即送运费险", "欢迎咨询客服",
            "物流快速，售后无忧", "实物拍摄，请放心购买", "限时特惠，先到先得", "店铺收藏有礼",
        ),
        "code": "货号{code}",
        "noise": ("★★", "【热卖】", "！！", "~", "#新品#"),
        "join": "，", "end": "。",
    },
    "en": {
        "material": ("this {n} is made of quality {m}", "premium {m} that feels soft", "durable {m} build"),
        "style": ("{s} style that goes with everything", "a {s} look", "{s} design"),
        "feature": ("it is {f}", "very {f}", "{f} by design"),
        "colour": ("classic {c} colour", "comes in {c}", "the colour is {c}"),
        "pattern": ("{p} pattern", "with a {p} print", "{p} surface"),
        "colour_distractor": ("several colours available", "colour may vary"),
        "filler": (
            "free shipping", "seven-day returns", "official store guarantee", "ask our support anytime",
            "fast delivery and easy after-sales", "real photos of the product", "limited-time offer", "follow the shop for coupons",
        ),
        "code": "item no. {code}",
        "noise": ("**", "[hot]", "!!", "~", "#new#"),
        "join": ", ", "end": ". ",
    },
}
SUMMARY_TEMPLATES = {
    "zh": (
        "{c}{m}{n}，{p}设计，{s}百搭。",
        "{s}{p}{n}，{m}材质，{f}，{c}显品味。",
        "这款{c}{n}采用{m}，{f}又{g}。",
    ),
    "en": (
        "a {c} {m} {n} with a {p} look, {s} and easy to match.",
        "{s} {p} {n} in {m}, {f}, in {c}.",
        "this {c} {n} uses {m}, {f} and {g}.",
    ),
}


@dataclass
class SyntheticProduct:
    """One generated product: ``attributes`` maps slot -> language-neutral key."""

    sku: str
    category: str
    attributes: dict[str, Any]
    src: str
    tgt: list[str]
    image_only: list[str] = field(default_factory=list)
    in_image: list[str] = field(default_factory=list)


def _word(key: str, language: str) -> str:
    return WORDS[language][key]


def render_product_image(category: str, colour: str, pattern: str, size: int = 64, rng: random.Random | None = None) -> Image.Image:
    """Draw the product: a category silhouette filled with ``colour`` and overlaid with ``pattern``.

    The background is a neutral beige so white and black products stay visible; a small random jitter
    of position keeps images of the same attributes from being pixel-identical.
    """
    rng = rng or random.Random(0)
    image = Image.new("RGB", (size, size), (214, 200, 170))
    draw = ImageDraw.Draw(image)
    fill = COLOURS_RGB[colour]
    luminance = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]
    ink = (20, 20, 20) if luminance > 140 else (235, 235, 235)
    u = size / 16.0
    dx, dy = rng.uniform(-u, u), rng.uniform(-u, u)

    def box(x0: float, y0: float, x1: float, y1: float) -> list[float]:
        return [x0 * u + dx, y0 * u + dy, x1 * u + dx, y1 * u + dy]

    if category == "clothing":  # a T-shirt: body plus two sleeves
        parts = [box(4, 4, 12, 14), box(1, 4, 4, 8), box(12, 4, 15, 8)]
    elif category == "cases_bags":  # a bag: body plus a handle
        parts = [box(3, 6, 13, 14)]
        draw.arc(box(5, 2, 11, 9), 180, 360, fill=(60, 40, 20), width=max(1, int(u)))
    else:  # an appliance: a rounded box with a spout
        parts = [box(4, 3, 12, 14), box(12, 6, 14, 9)]
    for part in parts:
        draw.rectangle(part, fill=fill)
    x0, y0, x1, y1 = box(3, 3, 13, 14)
    step = max(2, int(2 * u))
    if pattern == "stripes":
        for y in range(int(y0), int(y1), step):
            draw.line([(x0, y), (x1, y)], fill=ink, width=max(1, int(u / 2)))
    elif pattern == "grid":
        for t in range(int(min(x0, y0)), int(max(x1, y1)), step):
            draw.line([(t, y0), (t, y1)], fill=ink, width=1)
            draw.line([(x0, t), (x1, t)], fill=ink, width=1)
    elif pattern == "dots":
        r = max(1.0, u / 2)
        for y in range(int(y0) + step // 2, int(y1), step):
            for x in range(int(x0) + step // 2, int(x1), step):
                draw.ellipse([x - r, y - r, x + r, y + r], fill=ink)
    # Re-draw the background around the silhouette so the pattern stays on the product.
    mask = Image.new("L", (size, size), 0)
    mask_draw = ImageDraw.Draw(mask)
    for part in parts:
        mask_draw.rectangle(part, fill=255)
    background = Image.new("RGB", (size, size), (214, 200, 170))
    if category == "cases_bags":
        ImageDraw.Draw(background).arc(box(5, 2, 11, 9), 180, 360, fill=(60, 40, 20), width=max(1, int(u)))
    return Image.composite(image, background, mask)


def region_features_from_image(image: Image.Image, feature_dim: int = 16, num_classes: int = 8) -> dict[str, np.ndarray]:
    """Stand-in "detector" output for one image: a 2x3 grid of regions with colour statistics.

    Each region's feature is [mean RGB, std RGB, fraction of dark / bright pixels, ...] zero-padded to
    ``feature_dim``; its class distribution is a softmax over the distances of the mean colour to
    the palette (padded to ``num_classes``). Boxes are in pixels, as the original file stores them.
    """
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    height, width = pixels.shape[:2]
    palette = np.array(list(COLOURS_RGB.values()), dtype=np.float32) / 255.0
    boxes, feats, classes = [], [], []
    for row in range(2):
        for col in range(3):
            y0, y1 = row * height // 2, (row + 1) * height // 2
            x0, x1 = col * width // 3, (col + 1) * width // 3
            patch = pixels[y0:y1, x0:x1].reshape(-1, 3)
            mean, std = patch.mean(0), patch.std(0)
            grey = patch.mean(1)
            stats = np.concatenate([mean, std, [(grey < 0.2).mean(), (grey > 0.8).mean()]])
            feat = np.zeros(feature_dim, dtype=np.float32)
            feat[: min(feature_dim, len(stats))] = stats[:feature_dim]
            logits = -((palette - mean) ** 2).sum(1) * 20.0
            probs = np.zeros(num_classes, dtype=np.float32)
            k = min(num_classes, len(palette))
            e = np.exp(logits[:k] - logits[:k].max())
            probs[:k] = e / e.sum()
            boxes.append([x0, y0, x1, y1])
            feats.append(feat)
            classes.append(probs)
    return {
        "boxes": np.array(boxes, dtype=np.float32),
        "vis_feas": np.stack(feats),
        "obj_cls": np.stack(classes),
        "img_h": np.array(height),
        "img_w": np.array(width),
    }


def make_product(
    rng: random.Random,
    sku: str,
    category: str,
    language: str = "zh",
    *,
    image_only_rate: float = 0.5,
    pattern_image_only_rate: float = 0.3,
) -> SyntheticProduct:
    """Draw one product's attributes, long noisy text and 2-3 reference summaries."""
    spec = CATEGORIES[category]
    attrs = {
        "noun": rng.choice(spec["nouns"]),
        "colour": rng.choice(list(COLOURS_RGB)),
        "material": rng.choice(spec["materials"]),
        "pattern": rng.choice(PATTERNS),
        "style": rng.choice(STYLES),
        "features": rng.sample(list(spec["features"]), 2),
    }
    w = {k: _word(v, language) for k, v in attrs.items() if k != "features"}
    f, g = (_word(x, language) for x in attrs["features"])
    fmt = dict(n=w["noun"], c=w["colour"], m=w["material"], p=w["pattern"], s=w["style"], f=f, g=g)
    t = TEXT_TEMPLATES[language]
    colour_hidden = rng.random() < image_only_rate
    pattern_hidden = rng.random() < pattern_image_only_rate

    facts = [rng.choice(t["material"]).format(**fmt), rng.choice(t["style"]).format(**fmt)]
    facts += [rng.choice(t["feature"]).format(**{**fmt, "f": feat}) for feat in (f, g)]
    if not colour_hidden:
        facts.append(rng.choice(t["colour"]).format(**fmt))
    elif rng.random() < 0.5:
        facts.append(rng.choice(t["colour_distractor"]))
    if not pattern_hidden:
        facts.append(rng.choice(t["pattern"]).format(**fmt))
    rng.shuffle(facts)
    fillers = rng.sample(list(t["filler"]), rng.randint(3, 5))
    code = t["code"].format(code=f"{rng.choice('ABCDEFGH')}{rng.randint(1000, 9999)}")
    # Filler first so the lead of the text is uninformative (a lead-N baseline must fail), then facts
    # interleaved with the rest of the filler.
    sentences = fillers[:2] + [code]
    rest = fillers[2:]
    for fact in facts:
        sentences.append(fact)
        if rest and rng.random() < 0.4:
            sentences.append(rest.pop())
    sentences += rest
    src = ""
    for sentence in sentences:
        noise = rng.choice(t["noise"]) if rng.random() < 0.15 else ""
        src += noise + sentence + (t["end"] if rng.random() < 0.5 else t["join"])
    n_refs = rng.choice((2, 3))
    templates = rng.sample(list(SUMMARY_TEMPLATES[language]), n_refs)
    tgt = [tpl.format(**fmt) for tpl in templates]
    if language == "en":
        tgt = [s[0].upper() + s[1:] for s in tgt]
    image_only = [w["colour"]] if colour_hidden else []
    if pattern_hidden:
        image_only.append(w["pattern"])
    return SyntheticProduct(
        sku=sku, category=category, attributes=attrs, src=src.strip(), tgt=tgt,
        image_only=image_only, in_image=[w["colour"], w["pattern"]],
    )


def generate_synthetic_products(
    output_dir: str | os.PathLike,
    *,
    language: str = "zh",
    num_products: int = 600,
    seed: int = 0,
    image_size: int = 64,
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    image_only_rate: float = 0.5,
    pattern_image_only_rate: float = 0.3,
    region_features: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the synthetic set (layout in the module docstring) and return its summary info.

    ``num_products`` is the total over the three categories and splits. Deterministic per ``seed``.
    """
    if language not in WORDS:
        raise ValueError(f"language: expected one of {sorted(WORDS)}, got {language!r}")
    if num_products < len(CATEGORIES) * 3:
        raise ValueError(f"num_products: expected at least {len(CATEGORIES) * 3} (one per category and split), got {num_products}")
    if abs(sum(split_fractions) - 1.0) > 1e-6 or min(split_fractions) <= 0:
        raise ValueError(f"split_fractions: expected three positive fractions summing to 1, got {split_fractions}")
    output_dir = os.path.abspath(os.fspath(output_dir))
    if os.path.exists(output_dir) and os.listdir(output_dir) and not overwrite:
        raise ValueError(f"output_dir {output_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    with atomic_directory(output_dir) as staging:
        info = _write_products(
            os.fspath(staging), language=language, num_products=num_products, seed=seed, image_size=image_size,
            split_fractions=split_fractions, image_only_rate=image_only_rate,
            pattern_image_only_rate=pattern_image_only_rate, region_features=region_features,
        )
    logger.info("wrote %d synthetic products (%s) to %s", num_products, language, output_dir)
    return info


def _write_json(path: str, payload: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, ensure_ascii=False, indent=1)


def _write_products(
    root: str, *, language: str, num_products: int, seed: int, image_size: int,
    split_fractions: tuple[float, float, float], image_only_rate: float, pattern_image_only_rate: float,
    region_features: bool,
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from .cepsum import write_region_features

    rng = random.Random(seed)
    os.makedirs(os.path.join(root, "images"))
    categories = list(CATEGORIES)
    per_category = [num_products // len(categories) + (1 if i < num_products % len(categories) else 0) for i in range(len(categories))]
    counts: dict[str, dict[str, int]] = {}
    meta: dict[str, dict[str, Any]] = {"train": {}, "dev": {}, "test": {}}
    progress = tqdm(total=num_products, desc="mmaps-synth", disable=num_products < 200)
    for c_index, category in enumerate(categories):
        n = per_category[c_index]
        n_dev = max(1, round(n * split_fractions[1]))
        n_test = max(1, round(n * split_fractions[2]))
        sizes = {"train": n - n_dev - n_test, "dev": n_dev, "test": n_test}
        counts[category] = sizes
        serial = 0
        for split, size in sizes.items():
            products: dict[str, dict[str, Any]] = {}
            regions: dict[str, dict[str, np.ndarray]] = {}
            for _ in range(size):
                sku = f"{c_index + 1}{serial:07d}"
                serial += 1
                product = make_product(
                    rng, sku, category, language,
                    image_only_rate=image_only_rate, pattern_image_only_rate=pattern_image_only_rate,
                )
                image = render_product_image(category, product.attributes["colour"], product.attributes["pattern"], image_size, rng)
                image.save(os.path.join(root, "images", f"{sku}.png"))
                if region_features:
                    regions[sku] = region_features_from_image(image)
                products[sku] = {"src": product.src, "tgt": product.tgt}
                meta[split][sku] = {
                    "category": category,
                    "attributes": product.attributes,
                    "image_only": product.image_only,
                    "in_image": product.in_image,
                }
                progress.update(1)
            _write_json(os.path.join(root, f"{category}_{split}.json"), products)
            if region_features:
                write_region_features(os.path.join(root, f"frcnn_{category}_{split}.h5"), regions)
    progress.close()
    for split, entries in meta.items():
        _write_json(os.path.join(root, f"synthetic_attributes.{split}.json"), entries)
    info = {
        "generator": "modeling_mmaps.data.synthetic",
        "language": language,
        "num_products": num_products,
        "seed": seed,
        "image_size": image_size,
        "image_only_rate": image_only_rate,
        "pattern_image_only_rate": pattern_image_only_rate,
        "splits": counts,
        "region_features": region_features,
    }
    _write_json(os.path.join(root, "synthetic_info.json"), info)
    return info


def load_synthetic_attributes(data_dir: str | os.PathLike, split: str) -> dict[str, dict[str, Any]]:
    """The ground-truth attribute file ``synthetic_attributes.{split}.json`` written beside a synthetic set."""
    path = os.path.join(os.fspath(data_dir), f"synthetic_attributes.{split}.json")
    if not os.path.isfile(path):
        raise ValueError(f"{path} does not exist; it is written only by mmaps-synth")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def image_only_mention_rate(predictions: dict[str, str], attributes: dict[str, dict[str, Any]]) -> float:
    """Share (0..1) of image-only attribute words that the predicted summaries mention.

    ``Σ_p |{a ∈ image_only(p) : a occurs in prediction(p)}| / Σ_p |image_only(p)|`` over the skus in
    ``predictions`` (case-insensitive substring test).
    """
    hit = total = 0
    for sku, text in predictions.items():
        for word in attributes[sku]["image_only"]:
            total += 1
            hit += word.lower() in text.lower()
    return hit / total if total else 0.0
