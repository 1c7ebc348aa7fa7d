"""The embedded synthetic composed-image-retrieval benchmark, written in the CIRR rc2 on-disk layout.

Every image is a rendered scene of a few objects on a grid; an object has a shape, a colour, a size and a
grid cell. A query is a reference scene plus a modification text (change an object's colour, shape or size,
add, remove or move an object; several phrasings each, objects referred to by colour+shape, shape, colour or
position); the target is the edited scene. Images come in groups of six forming a CIRR ``img_set``: the
reference, the target and four *hard distractors* that each differ from the target in exactly one attribute
(preferably of the edited object, so a model that half-understands the text still fails).

Per-image captions in the CSMCIR authors' format (``level_1_global``, ``level_2_objects``,
``level_3_attributes``, ``Final_Caption``) come from a deterministic scene describer that gets an attribute
wrong or leaves it out with probability ``caption_error_rate``: the captions help without being an oracle.

Because the output is exactly CIRR's layout (``captions/cap.rc2.{train,val,test1}.json``,
``image_splits/split.rc2.{split}.json``, images under ``train/``, ``dev/``, ``test1/``), the real loader
(:func:`data.cirr.load_cirr`), protocol and evaluator run on it unchanged. Extra files beside the layout:
``target_captions/captions.rc2.{split}.json``, ``scenes/scenes.rc2.{split}.json`` (ground-truth scenes and each pair's edit kind),
``ground_truth/cap.rc2.test1.json`` (test1 targets, which CIRR's own test file hides) and ``metadata.json``.

Everything is a function of ``seed``: the same arguments give byte-identical files.
Command line (``cli/synth.py``): ``csmcir-synth --output_dir D [--num_images N] [--seed S]``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from tqdm.auto import tqdm
from transformers.utils import logging

from hub_cards.atomic_files import write_json_atomically

from .caption_files import make_caption_entry, save_caption_file


logger = logging.get_logger(__name__)

GENERATOR_VERSION = "1"
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (50, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
}
SIZES: dict[str, float] = {"small": 0.22, "large": 0.42}  # radius as a fraction of a grid cell
EDIT_KINDS: tuple[str, ...] = ("color", "shape", "size", "add", "remove", "move")
#: CIRR's image folder of each split (CIRR calls its validation images "dev").
SPLIT_FOLDERS: dict[str, str] = {"train": "train", "val": "dev", "test1": "test1"}
SET_SIZE = 6
NUM_DISTRACTORS = 4
_MAX_ATTEMPTS = 10_000


@dataclass(frozen=True, order=True)
class SceneObject:
    """One object of a scene: grid ``cell`` is ``row * grid_size + column``."""

    cell: int
    shape: str
    color: str
    size: str


Scene = tuple[SceneObject, ...]  # sorted by cell: a canonical, hashable scene


@dataclass(frozen=True)
class Edit:
    """A single edit of a scene: ``kind`` in EDIT_KINDS, the edited object's cell, and the new value."""

    kind: str
    cell: int
    value: Any = None


@dataclass
class SyntheticCIRConfig:
    """Arguments of ``csmcir-synth`` (sizes default to a CPU demo; scale ``num_images`` up freely)."""

    output_dir: str = field(metadata={"help": "Where to write the benchmark (CIRR rc2 layout)."})
    num_images: int = field(default=3000, metadata={"help": "Total number of images over the three splits."})
    seed: int = field(default=0, metadata={"help": "Random seed; the output is a pure function of the arguments."})
    image_size: int = field(default=64, metadata={"help": "Side of the square images in pixels."})
    grid_size: int = field(default=3, metadata={"help": "Scenes are laid out on a grid_size x grid_size grid."})
    min_objects: int = field(default=2, metadata={"help": "Fewest objects in a reference scene."})
    max_objects: int = field(default=4, metadata={"help": "Most objects in a reference scene."})
    pairs_per_set: int = field(default=2, metadata={"help": "Queries per img_set (1 = reference->target only)."})
    caption_error_rate: float = field(default=0.15, metadata={"help": "Probability that a caption gets an attribute wrong or drops it."})
    val_fraction: float = field(default=0.15, metadata={"help": "Share of images in the val split."})
    test_fraction: float = field(default=0.15, metadata={"help": "Share of images in the test1 split."})
    position_jitter: int = field(default=2, metadata={"help": "Max random offset of an object from its cell centre, in pixels."})

    def __post_init__(self):
        if self.num_images < 3 * SET_SIZE:
            raise ValueError(f"num_images must be at least {3 * SET_SIZE} (one img_set per split); got {self.num_images}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 1 <= min_objects <= max_objects; got {self.min_objects}, {self.max_objects}")
        if self.max_objects + 1 > self.grid_size**2:
            raise ValueError(f"max_objects + 1 must fit the {self.grid_size}x{self.grid_size} grid; got {self.max_objects}")
        if not 0.0 <= self.caption_error_rate <= 1.0:
            raise ValueError(f"caption_error_rate must be in [0, 1]; got {self.caption_error_rate}")
        if not 1 <= self.pairs_per_set <= 1 + NUM_DISTRACTORS:
            raise ValueError(f"pairs_per_set must be in [1, {1 + NUM_DISTRACTORS}]; got {self.pairs_per_set}")
        if self.val_fraction <= 0 or self.test_fraction <= 0 or self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"val_fraction and test_fraction must be positive and sum below 1; got {self.val_fraction}, {self.test_fraction}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16 pixels; got {self.image_size}")


# ----------------------------------------------------------------------------------------------- scenes


def position_name(cell: int, grid_size: int) -> str:
    """``"top left"``, ``"center"`` ... for a 3x3 grid; ``"row r, column c"`` for other grids."""
    row, col = divmod(cell, grid_size)
    if grid_size != 3:
        return f"row {row + 1}, column {col + 1}"
    vertical = ("top", "", "bottom")[row]
    horizontal = ("left", "", "right")[col]
    return " ".join(p for p in (vertical, horizontal) if p) or "center"


def _valid(scene: Scene) -> bool:
    """Cells are distinct and every (colour, shape) is unique, so each object can be named unambiguously."""
    return len({o.cell for o in scene}) == len(scene) and len({(o.color, o.shape) for o in scene}) == len(scene)


def _canonical(objects) -> Scene:
    return tuple(sorted(objects))


def random_scene(rng: random.Random, config: SyntheticCIRConfig) -> Scene:
    """A random valid scene with ``min_objects``..``max_objects`` objects."""
    n = rng.randint(config.min_objects, config.max_objects)
    while True:
        cells = rng.sample(range(config.grid_size**2), n)
        scene = _canonical(
            SceneObject(c, rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(list(SIZES))) for c in cells
        )
        if _valid(scene):
            return scene


def apply_edit(scene: Scene, edit: Edit) -> Scene:
    """Apply one edit; ``add`` takes a :class:`SceneObject` as value, ``move`` a cell."""
    if edit.kind == "add":
        return _canonical([*scene, edit.value])
    objects = []
    for obj in scene:
        if obj.cell != edit.cell:
            objects.append(obj)
        elif edit.kind == "remove":
            continue
        elif edit.kind == "move":
            objects.append(replace(obj, cell=edit.value))
        else:
            objects.append(replace(obj, **{edit.kind: edit.value}))
    return _canonical(objects)


def single_edits(scene: Scene, config: SyntheticCIRConfig, kinds: Sequence[str] = EDIT_KINDS) -> list[Edit]:
    """Every valid single edit of ``scene`` of the given kinds (results keep all objects nameable)."""
    edits = []
    free = [c for c in range(config.grid_size**2) if c not in {o.cell for o in scene}]
    for obj in scene:
        if "color" in kinds:
            edits += [Edit("color", obj.cell, c) for c in COLORS if c != obj.color]
        if "shape" in kinds:
            edits += [Edit("shape", obj.cell, s) for s in SHAPES if s != obj.shape]
        if "size" in kinds:
            edits += [Edit("size", obj.cell, s) for s in SIZES if s != obj.size]
        if "move" in kinds:
            edits += [Edit("move", obj.cell, c) for c in free]
        if "remove" in kinds and len(scene) > 1:
            edits.append(Edit("remove", obj.cell))
    if "add" in kinds and len(scene) < config.max_objects + 1:
        for cell in free:
            for shape in SHAPES:
                for color in COLORS:
                    for size in SIZES:
                        edits.append(Edit("add", cell, SceneObject(cell, shape, color, size)))
    return [e for e in edits if _valid(apply_edit(scene, e))]


# --------------------------------------------------------------------------------------------- language


def _referring_expression(obj: SceneObject, scene: Scene, rng: random.Random, grid_size: int) -> str:
    """A unique way to name ``obj`` in ``scene``: colour+shape, shape, colour, or its position."""
    options = [f"{obj.color} {obj.shape}", f"object in the {position_name(obj.cell, grid_size)}"]
    if sum(o.shape == obj.shape for o in scene) == 1:
        options.append(obj.shape)
    if sum(o.color == obj.color for o in scene) == 1:
        options.append(f"{obj.color} object")
    return rng.choice(options)


def describe_edit(scene: Scene, edit: Edit, rng: random.Random, grid_size: int) -> str:
    """The modification text for ``edit`` applied to ``scene``, in one of several phrasings."""
    if edit.kind == "add":
        new: SceneObject = edit.value
        where = position_name(new.cell, grid_size)
        return rng.choice(
            [
                f"add a {new.size} {new.color} {new.shape} in the {where}",
                f"put a {new.size} {new.color} {new.shape} in the {where}",
                f"there should also be a {new.size} {new.color} {new.shape} in the {where}",
                f"insert a {new.size} {new.color} {new.shape} at the {where}",
            ]
        )
    obj = next(o for o in scene if o.cell == edit.cell)
    ref = _referring_expression(obj, scene, rng, grid_size)
    if edit.kind == "remove":
        return rng.choice([f"remove the {ref}", f"take away the {ref}", f"delete the {ref}", f"get rid of the {ref}"])
    if edit.kind == "move":
        where = position_name(edit.value, grid_size)
        return rng.choice([f"move the {ref} to the {where}", f"put the {ref} in the {where}", f"shift the {ref} to the {where}"])
    if edit.kind == "color":
        return rng.choice(
            [f"make the {ref} {edit.value}", f"change the {ref} to {edit.value}", f"paint the {ref} {edit.value}", f"the {ref} should be {edit.value}"]
        )
    if edit.kind == "shape":
        return rng.choice(
            [f"turn the {ref} into a {edit.value}", f"make the {ref} a {edit.value} instead", f"replace the {ref} with a {edit.value} of the same colour"]
        )
    bigger = edit.value == "large"
    return rng.choice(
        [
            f"make the {ref} {'bigger' if bigger else 'smaller'}",
            f"{'enlarge' if bigger else 'shrink'} the {ref}",
            f"the {ref} should be {edit.value}",
        ]
    )


_NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def describe_scene(scene: Scene, rng: random.Random, error_rate: float, grid_size: int) -> dict[str, str]:
    """A multi-level caption of ``scene`` in the authors' format; each colour, size and position mention is
    wrong (half of the time) or missing (the other half) with probability ``error_rate``."""

    def noisy(true_value: str, choices: Sequence[str]) -> str:
        if rng.random() >= error_rate:
            return true_value
        if rng.random() < 0.5:
            return ""
        return rng.choice([c for c in choices if c != true_value])

    n = len(scene)
    count = _NUMBER_WORDS[n] if n < len(_NUMBER_WORDS) else str(n)
    shapes = [f"a {o.shape}" for o in scene]
    objects_text = shapes[0] if n == 1 else ", ".join(shapes[:-1]) + f" and {shapes[-1]}"
    positions = [position_name(c, grid_size) for c in range(grid_size**2)]
    details, finals = [], []
    for obj in scene:
        size = noisy(obj.size, list(SIZES))
        color = noisy(obj.color, list(COLORS))
        where = noisy(position_name(obj.cell, grid_size), positions)
        noun = " ".join(p for p in (size, color, obj.shape) if p)
        details.append(f"a {noun}" + (f" in the {where}" if where else ""))
        finals.append(noun + (f" {where}" if where else ""))
    return make_caption_entry(
        f"{count} object{'s' if n != 1 else ''}: " + ", ".join(finals),
        level_1_global=f"A plain grey canvas with {count} simple geometric object{'s' if n != 1 else ''}.",
        level_2_objects=f"The objects are {objects_text}.",
        level_3_attributes="; ".join(details) + ".",
    )


# -------------------------------------------------------------------------------------------- rendering


def render_scene(scene: Scene, config: SyntheticCIRConfig, rng: random.Random) -> Image.Image:
    """Draw ``scene`` (at 2x, then downsampled for smooth edges) with a slightly varied grey background
    and a small random offset per object, so identical scenes are not identical pixels."""
    scale = 2
    side = config.image_size * scale
    grey = 128 + rng.randint(-12, 12)
    image = Image.new("RGB", (side, side), (grey, grey, grey))
    draw = ImageDraw.Draw(image)
    cell_side = side / config.grid_size
    for obj in scene:
        row, col = divmod(obj.cell, config.grid_size)
        jitter = config.position_jitter * scale
        cx = (col + 0.5) * cell_side + rng.randint(-jitter, jitter)
        cy = (row + 0.5) * cell_side + rng.randint(-jitter, jitter)
        r = SIZES[obj.size] * cell_side
        fill = COLORS[obj.color]
        if obj.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif obj.shape == "square":
            s = r * 0.85
            draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
        elif obj.shape == "triangle":
            draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)
        elif obj.shape == "diamond":
            draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
        else:  # cross
            t = r * 0.35
            draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fill)
            draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fill)
    return image.resize((config.image_size, config.image_size), Image.Resampling.LANCZOS)


# ------------------------------------------------------------------------------------------- generation


def _hard_distractors(target: Scene, focus_cell: int | None, forbidden: set[Scene], rng: random.Random, config: SyntheticCIRConfig) -> list[tuple[Edit, Scene]] | None:
    """Four distinct scenes one attribute away from ``target`` (colour, shape, size or position of one object),
    edits of the edited object first; ``None`` if the scene has too few valid variants."""
    edits = single_edits(target, config, kinds=("color", "shape", "size", "move"))
    rng.shuffle(edits)
    edits.sort(key=lambda e: e.cell != focus_cell)  # stable: shuffled order within each group
    chosen, seen = [], set(forbidden)
    for edit in edits:
        scene = apply_edit(target, edit)
        if scene not in seen:
            seen.add(scene)
            chosen.append((edit, scene))
        if len(chosen) == NUM_DISTRACTORS:
            return chosen
    return None


def _make_set(rng: random.Random, config: SyntheticCIRConfig, used: set[Scene]) -> tuple[list[Scene], list[tuple[int, int, Edit]]]:
    """One img_set: scenes [reference, target, d1..d4] and its pairs (source index, target index, edit)."""
    for _ in range(_MAX_ATTEMPTS):
        reference = random_scene(rng, config)
        kind = rng.choice(EDIT_KINDS)
        edits = single_edits(reference, config, kinds=(kind,))
        if not edits:
            continue
        edit = rng.choice(edits)
        target = apply_edit(reference, edit)
        # the edited object's cell in the target (none survives a removal)
        focus = {"add": getattr(edit.value, "cell", None), "move": edit.value, "remove": None}.get(edit.kind, edit.cell)
        distractors = _hard_distractors(target, focus, {reference, target}, rng, config)
        if distractors is None:
            continue
        scenes = [reference, target, *(s for _, s in distractors)]
        if any(s in used for s in scenes):
            continue  # keep every image of a split a distinct scene, so each query has one right answer
        pairs = [(0, 1, edit)]
        extra = list(range(NUM_DISTRACTORS))
        rng.shuffle(extra)
        for i in extra[: config.pairs_per_set - 1]:
            pairs.append((1, 2 + i, distractors[i][0]))  # target -> distractor: a one-attribute edit
        used.update(scenes)
        return scenes, pairs
    raise ValueError(
        f"could not draw a new img_set of distinct scenes in {_MAX_ATTEMPTS} tries: num_images={config.num_images} is too "
        f"large for a {config.grid_size}x{config.grid_size} grid with {config.min_objects}-{config.max_objects} objects"
    )


def _split_sizes(config: SyntheticCIRConfig) -> dict[str, int]:
    total_sets = config.num_images // SET_SIZE
    val = max(1, round(total_sets * config.val_fraction))
    test = max(1, round(total_sets * config.test_fraction))
    return {"train": max(1, total_sets - val - test), "val": val, "test1": test}


def _seeded_rng(seed: int, *parts: Any) -> random.Random:
    digest = hashlib.sha256("/".join(map(str, (seed, *parts))).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def generate_synthetic_cir(config: SyntheticCIRConfig) -> Path:
    """Write the benchmark to ``config.output_dir`` and return that path. Deterministic for a config."""
    root = Path(config.output_dir)
    sizes = _split_sizes(config)
    summary: dict[str, Any] = {}
    for split, num_sets in sizes.items():
        rng = _seeded_rng(config.seed, "scenes", split)
        used: set[Scene] = set()
        folder = SPLIT_FOLDERS[split]
        name_to_relpath: dict[str, str] = {}
        pairs_json: list[dict[str, Any]] = []
        hidden_targets: list[dict[str, Any]] = []
        captions: dict[str, dict[str, str]] = {}
        scenes_json: dict[str, list[dict[str, Any]]] = {}
        pair_edits: dict[str, str] = {}
        pair_id = 0
        for set_id in tqdm(range(num_sets), desc=f"csmcir-synth {split}", unit="set"):
            scenes, pairs = _make_set(rng, config, used)
            order = list(range(SET_SIZE))
            rng.shuffle(order)  # members are listed in random order, as in CIRR
            names = [""] * SET_SIZE
            for slot, member in enumerate(order):
                names[member] = f"{folder}-{set_id}-{slot}-img{slot}"
            members = [names[m] for m in order]
            for member, scene in enumerate(scenes):
                name = names[member]
                relpath = f"./{folder}/{set_id // 100}/{name}.png"
                name_to_relpath[name] = relpath
                image_rng = _seeded_rng(config.seed, "render", name)
                image = render_scene(scene, config, image_rng)
                path = root / relpath
                path.parent.mkdir(parents=True, exist_ok=True)
                image.save(path, format="PNG")
                captions[name] = describe_scene(scene, _seeded_rng(config.seed, "caption", name), config.caption_error_rate, config.grid_size)
                scenes_json[name] = [asdict(o) for o in scene]
            for source, target, edit in pairs:
                text = describe_edit(scenes[source], edit, rng, config.grid_size)
                entry: dict[str, Any] = {
                    "pairid": pair_id,
                    "reference": names[source],
                    "caption": text,
                    "img_set": {"id": set_id, "members": members, "reference_rank": members.index(names[source])},
                }
                if split == "test1":  # CIRR's test file hides the target; keep it aside for local scoring
                    hidden_targets.append({**entry, "target_hard": names[target], "target_soft": {names[target]: 1.0}})
                else:
                    entry["target_hard"] = names[target]
                    entry["target_soft"] = {names[target]: 1.0}
                pairs_json.append(entry)
                pair_edits[str(pair_id)] = edit.kind
                pair_id += 1
        write_json_atomically(root / "captions" / f"cap.rc2.{split}.json", pairs_json, indent=1)
        write_json_atomically(root / "image_splits" / f"split.rc2.{split}.json", name_to_relpath, indent=1)
        write_json_atomically(
            root / "scenes" / f"scenes.rc2.{split}.json", {"images": scenes_json, "pair_edits": pair_edits}, indent=None
        )
        save_caption_file(root / "target_captions" / f"captions.rc2.{split}.json", captions)
        if hidden_targets:
            write_json_atomically(root / "ground_truth" / f"cap.rc2.{split}.json", hidden_targets, indent=1)
        summary[split] = {"images": len(name_to_relpath), "pairs": len(pairs_json), "img_sets": num_sets}
    write_json_atomically(
        root / "metadata.json",
        {"generator": "csmcir-synth", "version": GENERATOR_VERSION, "layout": "cirr-rc2", "config": {k: v for k, v in asdict(config).items() if k != "output_dir"}, "splits": summary},
        indent=1,
    )
    logger.info(f"wrote synthetic CIR benchmark to {root}: {summary}")
    return root


# ------------------------------------------------------------------------------- scene/caption pairs


def scene_from_json(objects: Sequence[dict[str, Any]]) -> Scene:
    """The canonical :data:`Scene` of a ``scenes.rc2.{split}.json`` entry (a list of object dicts)."""
    return _canonical(SceneObject(int(o["cell"]), o["shape"], o["color"], o["size"]) for o in objects)


def load_benchmark_scenes(data_dir: str | Path, splits: Sequence[str] = ("val", "test1")) -> set[Scene]:
    """Every ground-truth scene of `splits` of a ``csmcir-synth`` benchmark (its ``scenes/scenes.rc2.{split}.json``),
    e.g. to keep a pretraining set disjoint from the benchmark's evaluation images."""
    import json

    scenes: set[Scene] = set()
    for split in splits:
        path = Path(data_dir) / "scenes" / f"scenes.rc2.{split}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no scene file (expected a csmcir-synth benchmark with split {split!r})")
        images = json.loads(path.read_text(encoding="utf-8")).get("images")
        if not isinstance(images, dict):
            raise ValueError(f"{path}: expected an object with an 'images' mapping, got {type(images).__name__}")
        scenes.update(scene_from_json(objects) for objects in images.values())
    return scenes


def scene_caption_pairs(
    num_pairs: int,
    *,
    seed: int = 0,
    image_size: int = 64,
    grid_size: int = 3,
    min_objects: int = 1,
    max_objects: int = 5,
    caption_error_rate: float = 0.0,
    position_jitter: int = 2,
    exclude: set[Scene] | frozenset[Scene] = frozenset(),
    stream: str = "pretrain",
) -> list[dict[str, Any]]:
    """`num_pairs` distinct rendered scenes with their captions: the image–text pretraining data.

    Scenes are drawn like the benchmark's (:func:`random_scene`, :func:`render_scene`) with
    ``min_objects``..``max_objects`` objects (the default 1..5 covers every benchmark image: references of 2..4
    objects and their one-edit targets); captions are :func:`describe_scene`'s ``Final_Caption`` with
    ``caption_error_rate`` noise. No scene appears twice, none is in `exclude` (e.g. :func:`load_benchmark_scenes`
    of the evaluation splits, or another stream's scenes for a held-out set). Deterministic for the arguments;
    different `stream` names give independent draws.

    Returns:
        ``[{"image": PIL.Image, "caption": str, "scene": Scene}, ...]``.
    """
    config = SyntheticCIRConfig(output_dir="", image_size=image_size, grid_size=grid_size, min_objects=min_objects,
                                max_objects=max_objects, caption_error_rate=caption_error_rate,
                                position_jitter=position_jitter)
    rng = _seeded_rng(seed, "scene-captions", stream)
    seen: set[Scene] = set(exclude)
    pairs: list[dict[str, Any]] = []
    attempts = 0
    while len(pairs) < num_pairs:
        attempts += 1
        if attempts > _MAX_ATTEMPTS + 20 * num_pairs:
            raise ValueError(f"could only draw {len(pairs)} distinct scenes of {num_pairs} ({min_objects}-{max_objects} "
                             f"objects on a {grid_size}x{grid_size} grid, {len(exclude)} excluded)")
        scene = random_scene(rng, config)
        if scene in seen:
            continue
        seen.add(scene)
        index = len(pairs)
        image = render_scene(scene, config, _seeded_rng(seed, "scene-render", stream, index))
        caption = describe_scene(scene, _seeded_rng(seed, "scene-caption", stream, index), caption_error_rate,
                                 grid_size)["Final_Caption"]
        pairs.append({"image": image, "caption": caption, "scene": scene})
    return pairs


__all__ = ["SyntheticCIRConfig", "generate_synthetic_cir", "load_benchmark_scenes", "scene_caption_pairs",
           "scene_from_json"]
