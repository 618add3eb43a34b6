"""monai-emotion: naturalistic emotion decoding from whole-brain 7T fMRI with MONAI."""

from __future__ import annotations

import importlib
from typing import Any

from monai_emotion.errors import install_excepthook

__version__ = "0.1.0"

# bundle runs reach our code only through `$import monai_emotion`: from then on an uncaught
# MonaiEmotionError (even wrapped by MONAI) prints its one or two lines, not a traceback
install_excepthook()

_SUBMODULES = {
    "checkpoints", "data", "errors", "experiment", "handlers", "inference", "metrics", "networks", "study",
    "transforms", "writers",
}


def __getattr__(name: str) -> Any:
    # lazy submodules: bundle configs can write `$import monai_emotion` then
    # `monai_emotion.networks.X` without importing torch-heavy modules up front
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
