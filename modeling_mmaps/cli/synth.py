"""``mmaps-synth``: write the synthetic multimodal product-summarization set (CEPSUM layout) to a folder.

::

    mmaps-synth --output_dir data/synthetic_products [--language zh|en] [--num_products 600] [--seed 0]

The generator and the set it writes are :func:`~modeling_mmaps.data.synthetic.generate_synthetic_products`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from transformers import HfArgumentParser

from hub_cards.console import console_entry_point

from ..data.synthetic import generate_synthetic_products


@dataclass
class SynthArguments:
    """Arguments of ``mmaps-synth`` (the keyword arguments of ``generate_synthetic_products``)."""

    output_dir: str = field(metadata={"help": "Folder to write the CEPSUM-layout set into."})
    language: str = field(default="zh", metadata={"help": "zh (default, like CEPSUM) or en."})
    num_products: int = field(default=600, metadata={"help": "Products over all categories and splits."})
    seed: int = field(default=0, metadata={"help": "Random seed; the output is a pure function of it."})
    image_size: int = field(default=64, metadata={"help": "Side of the rendered square images, in pixels."})
    image_only_rate: float = field(default=0.5, metadata={"help": "Probability that the colour is left out of the text."})
    pattern_image_only_rate: float = field(default=0.3, metadata={"help": "Probability that the pattern is left out of the text."})
    region_features: bool = field(default=True, metadata={"help": "Also write frcnn_{cat}_{split}.h5 region features."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty output_dir."})


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv`` (default: the command line), write the set and return its summary info."""
    (args,) = HfArgumentParser(SynthArguments).parse_args_into_dataclasses(args=argv)
    info = generate_synthetic_products(**asdict(args))
    print(json.dumps(info, ensure_ascii=False))
    return info


console_main = console_entry_point(main, "mmaps-synth")


if __name__ == "__main__":
    console_main()
