"""The benchmark layouts the readers know, by name (no ``datasets`` import: the CLIs parse their arguments against
these before any data is read)."""

from __future__ import annotations

#: Layout names accepted by ``load_cir_dataset`` and the ``--dataset`` flags.
BENCHMARKS: tuple[str, ...] = ("fashioniq", "cirr", "circo", "shoes")
#: FashionIQ's three garment categories (one split file set each).
FASHIONIQ_CATEGORIES: tuple[str, ...] = ("dress", "shirt", "toptee")

__all__ = ["BENCHMARKS", "FASHIONIQ_CATEGORIES"]
