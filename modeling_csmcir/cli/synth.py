"""``csmcir-synth``: write the embedded synthetic CIR benchmark (CIRR rc2 layout) to a folder.

::

    csmcir-synth --output_dir data/synthetic_cir [--num_images 3000] [--seed 0] [--image_size 64]

The arguments are the fields of :class:`~modeling_csmcir.data.synthetic.SyntheticCIRConfig`; the generator itself
is :func:`~modeling_csmcir.data.synthetic.generate_synthetic_cir`.
"""

from __future__ import annotations

from pathlib import Path

from transformers import HfArgumentParser

from hub_cards.console import console_entry_point

from ..data.synthetic import SyntheticCIRConfig, generate_synthetic_cir


def main(argv: list[str] | None = None) -> Path:
    """Parse ``argv`` (default: the command line), write the benchmark and return its folder."""
    (config,) = HfArgumentParser(SyntheticCIRConfig).parse_args_into_dataclasses(args=argv)
    return generate_synthetic_cir(config)


console_main = console_entry_point(main, "csmcir-synth")


if __name__ == "__main__":
    console_main()
