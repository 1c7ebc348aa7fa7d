"""Lazy exports for this package's ``__init__`` files (PEP 562): a name is imported from its defining module on
first access, so importing the package (or a sub-package) costs nothing until a name is used — the reason
``import modeling_mmaps`` and a console script's ``--help`` need neither ``datasets`` nor ``transformers.Trainer``.

    __getattr__, __dir__ = lazy_exports(__name__, {"load_cepsum": ".cepsum", ...})
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``'s ``__init__``: ``exports`` maps a public name to the module
    (relative to ``package``) that defines it. A resolved name is cached in the package's namespace."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__


__all__ = ["lazy_exports"]
