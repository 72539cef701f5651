"""Lazy package attributes (PEP 562): a public name is imported from its module on first use.

A package lists ``_LAZY = {name: "edgequant.x.module"}`` and sets
``__getattr__, __all__ = lazy_exports(__name__, _LAZY)``, so that importing the package stays cheap
(``import edgequant.eval`` must not import torch). ``tests/unit/test_architecture.py`` reads the module names
of such maps as imports of the package.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, names: Mapping[str, str]) -> tuple[Callable[[str], Any], list[str]]:
    """A module-level ``__getattr__`` for ``package`` and its ``__all__`` (the sorted names).

    ``__getattr__(name)`` imports ``names[name]`` and returns its attribute ``name``; any other name raises
    ``AttributeError`` worded as Python's own."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    return __getattr__, sorted(names)
