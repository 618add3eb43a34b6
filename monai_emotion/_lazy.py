"""Lazy submodules: bundle configs write ``$import monai_emotion`` then ``monai_emotion.a.b.X``."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, submodules: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` importing ``package.<submodules[name]>`` on first access.

    Keeps ``import monai_emotion`` light (no torch) while dotted config paths still resolve.
    """

    def __getattr__(name: str) -> Any:
        if name in submodules:
            return importlib.import_module(f"{package}.{submodules[name]}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
